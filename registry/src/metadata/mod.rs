//! Registry metadata: repositories, tags, manifests, blob links, upload sessions and referrers.
//! The only module with SQL. [`Metadata`] is the interface the service uses; SQLite implements
//! it ([`SqliteMetadata`]); the trait leaves room for another backend.

mod sqlite;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use wharf_common::digest::Digest;

pub use sqlite::SqliteMetadata;

/// A metadata failure.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The database refused or failed.
    #[error("metadata database")]
    Db(#[from] sqlx::Error),
    /// Migrations could not be applied.
    #[error("migrating the metadata database")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value does not parse (a damaged database).
    #[error("metadata database holds a bad value: {0}")]
    Corrupt(String),
}

impl MetadataError {
    /// Whether the database could not write for want of disk space (`SQLITE_FULL`, or the OS's
    /// `ENOSPC` through it).
    pub fn is_full(&self) -> bool {
        match self {
            MetadataError::Db(sqlx::Error::Database(e)) => e
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| c & 0xff == 13),
            MetadataError::Db(sqlx::Error::Io(e)) => e.raw_os_error() == Some(libc::ENOSPC),
            _ => false,
        }
    }
}

/// A repository a search found.
#[derive(Clone, Debug)]
pub struct SearchHit {
    /// Its name.
    pub name: String,
    /// The manifest its most recently updated tag points at, if it has a tag.
    pub manifest: Option<ManifestRecord>,
}

/// What unlinking a blob did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unlink {
    /// It was linked and is not any more.
    Unlinked,
    /// It was not linked into the repository.
    NotLinked,
    /// A manifest of the repository references it (this one); it stays.
    Referenced(Digest),
}

/// One repository as garbage collection sees it.
#[derive(Clone, Debug, Default)]
pub struct GcRepo {
    /// Its name.
    pub name: String,
    /// Tags: name, digest, when last pointed (milliseconds, or seconds for old rows).
    pub tags: Vec<(String, String, i64)>,
    /// Manifests: digest, when stored or last pushed again (seconds), subject.
    pub manifests: Vec<(String, i64, Option<String>)>,
    /// What each manifest references: (manifest, child).
    pub refs: Vec<(String, String)>,
    /// Blob links: digest, when last linked (seconds).
    pub links: Vec<(String, i64)>,
}

/// Everything garbage collection decides from, read in one transaction.
#[derive(Clone, Debug, Default)]
pub struct GcSnapshot {
    /// Every repository.
    pub repos: Vec<GcRepo>,
    /// Every blob: digest, size.
    pub blobs: Vec<(String, u64)>,
}

/// A stored manifest.
#[derive(Clone, Debug)]
pub struct ManifestRecord {
    /// Its digest.
    pub digest: Digest,
    /// The media type it was pushed with.
    pub media_type: String,
    /// The exact bytes pushed.
    pub content: Bytes,
}

/// A manifest to store, with what was learnt validating it.
#[derive(Clone, Debug)]
pub struct NewManifest {
    /// Repository.
    pub repo: String,
    /// Digest of `content`.
    pub digest: Digest,
    /// Media type.
    pub media_type: String,
    /// Exact bytes.
    pub content: Bytes,
    /// `artifactType`, or the config's media type for an image manifest.
    pub artifact_type: Option<String>,
    /// The `subject` it refers to.
    pub subject: Option<Digest>,
    /// Its `annotations`, as JSON text.
    pub annotations: Option<String>,
    /// Blobs and manifests it references, which must be in the repository.
    pub children: Vec<Digest>,
    /// Blobs it references without needing them here (foreign layers): recorded as
    /// references, so a collection keeps them if they were pushed, but never required.
    pub optional: Vec<Digest>,
    /// Tag to point at it.
    pub tag: Option<String>,
}

/// One entry of a referrers list.
#[derive(Clone, Debug)]
pub struct Referrer {
    /// The referring manifest's digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size.
    pub size: u64,
    /// Its artifact type.
    pub artifact_type: Option<String>,
    /// Its annotations, as JSON text.
    pub annotations: Option<String>,
}

/// An upload session.
#[derive(Clone, Debug)]
pub struct UploadRecord {
    /// Session id.
    pub id: String,
    /// Repository it uploads into.
    pub repo: String,
}

/// A page of a sorted name list.
#[derive(Clone, Debug, Default)]
pub struct Page {
    /// The names, sorted.
    pub names: Vec<String>,
    /// Whether more follow the last one.
    pub more: bool,
}

/// What the service needs from a metadata database. Each method is one transaction.
pub trait Metadata: Send + Sync + 'static {
    /// Size of `digest` if it is linked into `repo`.
    fn repo_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<u64>, MetadataError>>;

    /// The repositories that link `digest` (at most `limit`, by name), with its size.
    fn blob_repos<'a>(
        &'a self,
        digest: &'a Digest,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<(String, u64)>, MetadataError>>;

    /// Records the blob (if new) and links it into `repo` (creating the repository).
    fn link_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        size: u64,
    ) -> BoxFuture<'a, Result<(), MetadataError>>;

    /// Unlinks the blob from `repo`, unless a manifest of `repo` references it (checked in the
    /// same write, so a manifest stored meanwhile cannot lose it).
    fn unlink_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Unlink, MetadataError>>;

    /// Those of `digests` that are neither blobs linked into `repo` nor manifests in it.
    fn missing<'a>(
        &'a self,
        repo: &'a str,
        digests: &'a [Digest],
    ) -> BoxFuture<'a, Result<Vec<Digest>, MetadataError>>;

    /// Stores a manifest (kept as is when already there) and points its tag at it, if every
    /// child is still in the repository when it is written; else nothing is written and the
    /// first missing child is returned (a blob unlinked since it was checked).
    fn put_manifest<'a>(
        &'a self,
        m: &'a NewManifest,
    ) -> BoxFuture<'a, Result<Option<Digest>, MetadataError>>;

    /// The manifest a tag points at.
    fn manifest_by_tag<'a>(
        &'a self,
        repo: &'a str,
        tag: &'a str,
    ) -> BoxFuture<'a, Result<Option<ManifestRecord>, MetadataError>>;

    /// A manifest by digest.
    fn manifest_by_digest<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<ManifestRecord>, MetadataError>>;

    /// Deletes a manifest and every tag on it; whether it existed.
    fn delete_manifest<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<bool, MetadataError>>;

    /// Deletes a tag, leaving its manifest; whether it existed.
    fn delete_tag<'a>(
        &'a self,
        repo: &'a str,
        tag: &'a str,
    ) -> BoxFuture<'a, Result<bool, MetadataError>>;

    /// Whether the repository exists.
    fn repo_exists<'a>(&'a self, repo: &'a str) -> BoxFuture<'a, Result<bool, MetadataError>>;

    /// Up to `n` tags of `repo` after `last`, sorted.
    fn tags<'a>(
        &'a self,
        repo: &'a str,
        n: u32,
        last: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Page, MetadataError>>;

    /// Up to `n` repositories after `last`, sorted.
    fn catalog<'a>(
        &'a self,
        n: u32,
        last: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Page, MetadataError>>;

    /// Repositories holding a manifest whose name contains `query` (any case), sorted: how many
    /// there are, and `limit` of them from `offset`, each with the manifest its most recently
    /// updated tag points at (for a description).
    fn search<'a>(
        &'a self,
        query: &'a str,
        offset: u32,
        limit: u32,
    ) -> BoxFuture<'a, Result<(u64, Vec<SearchHit>), MetadataError>>;

    /// Manifests in `repo` whose subject is `subject`.
    fn referrers<'a>(
        &'a self,
        repo: &'a str,
        subject: &'a Digest,
    ) -> BoxFuture<'a, Result<Vec<Referrer>, MetadataError>>;

    /// Records a new upload session.
    fn create_upload<'a>(
        &'a self,
        id: &'a str,
        repo: &'a str,
    ) -> BoxFuture<'a, Result<(), MetadataError>>;

    /// An upload session.
    fn upload<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<UploadRecord>, MetadataError>>;

    /// Ends a session whose data became `digest`, linking the blob into `repo`, in one
    /// transaction.
    fn complete_upload<'a>(
        &'a self,
        id: &'a str,
        repo: &'a str,
        digest: &'a Digest,
        size: u64,
    ) -> BoxFuture<'a, Result<(), MetadataError>>;

    /// Forgets a session; whether it existed.
    fn delete_upload<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, MetadataError>>;

    /// Sessions started before `before` (seconds since the epoch).
    fn uploads_started_before(
        &self,
        before: u64,
    ) -> BoxFuture<'_, Result<Vec<String>, MetadataError>>;

    /// How many sessions are open.
    fn upload_count(&self) -> BoxFuture<'_, Result<u64, MetadataError>>;

    /// Garbage collection's view of everything, from one read transaction.
    fn gc_snapshot(&self) -> BoxFuture<'_, Result<GcSnapshot, MetadataError>>;

    /// Deletes these tags, (repository, name, digest, when last pointed), each only if it was
    /// not pointed again since; the (repository, name) deleted. One transaction.
    fn gc_delete_tags<'a>(
        &'a self,
        tags: &'a [(String, String, String, i64)],
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, MetadataError>>;

    /// For each (repository, digests, before): deletes those digests that are (still)
    /// untagged, stored before `before` (seconds), referenced by no manifest left, and whose
    /// subject is gone; children go after their parents. The (repository, digest) deleted.
    /// One transaction.
    fn gc_delete_manifests<'a>(
        &'a self,
        work: &'a [(String, Vec<String>, i64)],
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, MetadataError>>;

    /// For each (repository, digests): unlinks those digests no manifest of the repository
    /// references that were last linked before `before` (seconds); how many. One transaction.
    fn gc_unlink<'a>(
        &'a self,
        work: &'a [(String, Vec<String>)],
        before: i64,
    ) -> BoxFuture<'a, Result<usize, MetadataError>>;

    /// Forgets those of `digests` that no repository links; the digests and sizes forgotten.
    fn gc_delete_blobs<'a>(
        &'a self,
        digests: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<(String, u64)>, MetadataError>>;

    /// How many collections have deleted tags or manifests (any process's).
    fn gc_epoch(&self) -> BoxFuture<'_, Result<i64, MetadataError>>;

    /// Whether a blob row exists for `digest`.
    fn blob_known<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Result<bool, MetadataError>>;
}

/// Seconds since the epoch.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
