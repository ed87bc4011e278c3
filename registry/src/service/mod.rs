//! The registry's behaviour, free of HTTP: upload sessions, blob links, manifest validation,
//! tags, referrers and the expiry of abandoned uploads. The api module translates requests
//! into calls here and [`ServiceError`]s into the spec's error envelope.

mod cache;
mod disk;
pub mod gc;
pub mod manifest;
pub mod mirror;
mod names;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use wharf_common::digest::{Algorithm, Digest, Hasher};

use crate::config::RegistryConfig;
use crate::metadata::{
    ManifestRecord, Metadata, MetadataError, NewManifest, Page, Referrer, SqliteMetadata, Unlink,
    now,
};
use crate::metrics::Metrics;
use crate::storage::{BlobStorage, ByteStream, FsStorage, Placement, StorageError};
use cache::ManifestCache;
pub use gc::{GcOptions, GcReport};
pub use names::{NameError, Repository, UploadId};

/// Why an operation failed; the api module maps each to an error code.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The blob is not in the repository.
    #[error("blob {0} is not in this repository")]
    BlobUnknown(Digest),
    /// No manifest under that tag or digest.
    #[error("manifest {0} is not in this repository")]
    ManifestUnknown(String),
    /// The repository does not exist.
    #[error("repository {0} is not known")]
    NameUnknown(String),
    /// No such upload session (never was, finished, cancelled or expired).
    #[error("upload {0} is not known (finished, cancelled or expired?)")]
    UploadUnknown(String),
    /// Content does not hash to the digest given.
    #[error("content hashes to {actual}, not {expected}")]
    DigestMismatch {
        /// The digest the client named.
        expected: Digest,
        /// What the content hashes to.
        actual: Digest,
    },
    /// A digest the client sent does not parse.
    #[error("{0}")]
    BadDigest(String),
    /// Content length differs from what the client declared.
    #[error("received {actual} bytes, declared {declared}")]
    SizeMismatch {
        /// Declared length.
        declared: u64,
        /// Received length.
        actual: u64,
    },
    /// A chunk does not start where the upload ends.
    #[error("chunk starts at {start}, but the upload holds {offset} bytes")]
    UploadOutOfOrder {
        /// The upload's length.
        offset: u64,
        /// Where the chunk claimed to start.
        start: u64,
    },
    /// The manifest is not acceptable.
    #[error("{0}")]
    ManifestInvalid(String),
    /// Deletes are turned off (`[storage] delete`).
    #[error(
        "deletes are disabled on this registry ([storage] delete = true, or WHARF_STORAGE_DELETE=true, enables them)"
    )]
    DeletesDisabled,
    /// A blob a manifest still references cannot be deleted.
    #[error("blob {blob} is referenced by manifest {manifest}: delete the manifest first")]
    BlobReferenced {
        /// The blob.
        blob: Digest,
        /// A manifest referencing it.
        manifest: Digest,
    },
    /// The manifest references something the repository lacks.
    #[error("manifest references {0}, which is not in this repository")]
    ManifestBlobUnknown(Digest),
    /// A body is over its limit.
    #[error("{what} is over the limit of {limit} bytes")]
    TooLarge {
        /// What.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// The client's body broke off; what arrived was kept.
    #[error("the request body broke off: {0}")]
    ClientGone(String),
    /// The registry's disk is full (or the space kept for deletes is all that is left).
    #[error(
        "no space left on the registry's disk{}: pushes fail until space is freed (delete images, then collect garbage)",
        .0.as_deref().map(|w| format!(" ({w})")).unwrap_or_default()
    )]
    DiskFull(Option<String>),
    /// A push, tag or delete in a name the registry mirrors.
    #[error(
        "{repo} is mirrored from upstream {upstream} and read-only here: push to the upstream, or to a name outside the mirror"
    )]
    MirrorReadOnly {
        /// The name as the client wrote it.
        repo: String,
        /// The upstream's name.
        upstream: String,
    },
    /// A mirror's upstream could not give what a client asked for, and nothing was kept.
    #[error("{reason}")]
    Upstream {
        /// What happened, naming the upstream.
        reason: String,
        /// The upstream answered 429.
        throttled: bool,
        /// Its `Retry-After`, in seconds.
        retry_after: Option<u64>,
    },
    /// A `[[mirror]]` cannot be set up.
    #[error("mirror {name}: {reason}")]
    MirrorSetup {
        /// Its name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Blob storage failed.
    #[error(transparent)]
    Storage(StorageError),
    /// The metadata database failed.
    #[error(transparent)]
    Metadata(MetadataError),
}

impl From<StorageError> for ServiceError {
    fn from(e: StorageError) -> ServiceError {
        match e {
            StorageError::Body(e) => ServiceError::ClientGone(e.to_string()),
            StorageError::UploadMissing(id) => ServiceError::UploadUnknown(id),
            StorageError::Io { source, path, .. }
                if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) =>
            {
                ServiceError::DiskFull(Some(format!("writing {}", path.display())))
            }
            e => ServiceError::Storage(e),
        }
    }
}

impl From<MetadataError> for ServiceError {
    fn from(e: MetadataError) -> ServiceError {
        if e.is_full() {
            return ServiceError::DiskFull(Some("the metadata database cannot grow".into()));
        }
        ServiceError::Metadata(e)
    }
}

/// What a blob request finds.
pub enum BlobFound {
    /// A blob in storage, of this size.
    Stored(u64),
    /// A manifest of the repository, asked for through the blobs endpoint.
    Manifest(Bytes),
}

/// The result of a mount request.
pub enum Mounted {
    /// The blob is now linked into the repository.
    Linked,
    /// Not mountable; an upload session was opened instead.
    Session(UploadId),
}

/// A stored manifest as served.
pub type Manifest = Arc<ManifestRecord>;

/// Hash state of an upload session kept between its requests. Lost in a restart, then rebuilt
/// from the data when the upload completes.
struct SessionState {
    hasher: Option<Hasher>,
    len: u64,
}

/// The registry service. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

/// How many repositories holding a blob a mount without `from` looks through for one the
/// caller may pull.
const MOUNT_CANDIDATES: u32 = 1000;

struct Inner {
    meta: Arc<dyn Metadata>,
    storage: Arc<dyn BlobStorage>,
    config: RegistryConfig,
    metrics: Arc<Metrics>,
    sessions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<SessionState>>>>,
    cache: ManifestCache,
    sweep: gc::SweepLock,
    headroom: disk::Headroom,
    mirrors: mirror::Mirrors,
    flights: mirror::fill::Flights,
}

/// A manifest or tag reference from a URL.
#[derive(Clone, Debug)]
pub enum ManifestRef {
    /// A tag.
    Tag(String),
    /// A digest.
    Digest(Digest),
}

impl ManifestRef {
    fn key(&self) -> &str {
        match self {
            ManifestRef::Tag(t) => t,
            ManifestRef::Digest(d) => d.as_str(),
        }
    }
}

impl Registry {
    /// Opens the embedded default: SQLite metadata and filesystem blobs under the configured root.
    pub async fn open(config: RegistryConfig) -> Result<Registry, ServiceError> {
        Registry::open_as(config, false).await
    }

    /// Opens the registry at the configured root as `wharf gc` does, beside a server that may
    /// be running on it: its collections get the database's write lock between the server's
    /// writes instead of waiting for a pause.
    pub async fn open_beside(config: RegistryConfig) -> Result<Registry, ServiceError> {
        Registry::open_as(config, true).await
    }

    async fn open_as(config: RegistryConfig, beside: bool) -> Result<Registry, ServiceError> {
        let root = config.storage.root.clone();
        std::fs::create_dir_all(&root).map_err(|source| {
            ServiceError::Storage(StorageError::Io {
                what: "creating",
                path: root.clone(),
                source,
            })
        })?;
        let storage = FsStorage::open(&root)?;
        let db = root.join("registry.db");
        let meta = if beside {
            SqliteMetadata::open_beside(&db).await?
        } else {
            SqliteMetadata::open(&db).await?
        };
        Registry::with_parts(config, Arc::new(meta), Arc::new(storage)).await
    }

    /// A registry over the given metadata and storage.
    pub async fn with_parts(
        config: RegistryConfig,
        meta: Arc<dyn Metadata>,
        storage: Arc<dyn BlobStorage>,
    ) -> Result<Registry, ServiceError> {
        let metrics = Arc::new(Metrics::default());
        metrics.set_uploads_open(meta.upload_count().await?);
        let sweep = gc::SweepLock::new(&config.storage.root);
        let headroom = disk::Headroom::new(&config.storage.root, config.storage.headroom);
        headroom.take();
        let mirrors = mirror::Mirrors::new(&config.mirror, &metrics)?;
        Ok(Registry {
            inner: Arc::new(Inner {
                meta,
                storage,
                config,
                metrics,
                sessions: Mutex::new(HashMap::new()),
                cache: ManifestCache::default(),
                sweep,
                headroom,
                mirrors,
                flights: mirror::fill::Flights::default(),
            }),
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    /// Its metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.config.storage.root
    }

    // ---- blobs ----

    /// Finds a blob (or a manifest by digest) in `repo`.
    pub async fn blob(
        &self,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<BlobFound, ServiceError> {
        let repo = repo.as_str();
        if let Some(size) = self.inner.meta.repo_blob(repo, digest).await? {
            return Ok(BlobFound::Stored(size));
        }
        match self.inner.meta.manifest_by_digest(repo, digest).await? {
            Some(m) => Ok(BlobFound::Manifest(m.content)),
            None => Err(ServiceError::BlobUnknown(digest.clone())),
        }
    }

    /// Streams `len` bytes of a stored blob from `offset`.
    pub async fn read_blob(
        &self,
        digest: &Digest,
        offset: u64,
        len: u64,
    ) -> Result<ByteStream, ServiceError> {
        Ok(self.inner.storage.read(digest, offset, len).await?)
    }

    /// Runs a delete (or a collection's step), and if the disk is too full for it to write,
    /// gives back the space kept in reserve and runs it again.
    pub(crate) async fn freeing<T, F, Fut>(&self, f: F) -> Result<T, ServiceError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ServiceError>>,
    {
        match f().await {
            Err(ServiceError::DiskFull(_)) if self.inner.headroom.release() => f().await,
            other => other,
        }
    }

    /// Unlinks a blob from `repo`.
    pub async fn delete_blob(
        &self,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<(), ServiceError> {
        if !self.inner.config.storage.delete {
            return Err(ServiceError::DeletesDisabled);
        }
        let repo = repo.as_str();
        let unlinked = self
            .freeing(|| async { Ok(self.inner.meta.unlink_blob(repo, digest).await?) })
            .await?;
        match unlinked {
            Unlink::Unlinked => {
                tracing::info!(repo, %digest, "blob unlinked");
                Ok(())
            }
            Unlink::NotLinked => Err(ServiceError::BlobUnknown(digest.clone())),
            Unlink::Referenced(manifest) => Err(ServiceError::BlobReferenced {
                blob: digest.clone(),
                manifest,
            }),
        }
    }

    // ---- uploads ----

    /// Opens an upload session in `repo`.
    pub async fn start_upload(&self, repo: &Repository) -> Result<UploadId, ServiceError> {
        self.inner.headroom.admit(0)?;
        let id = UploadId::new();
        let key = id.as_str();
        self.inner.storage.create_upload(key).await?;
        if let Err(e) = self.inner.meta.create_upload(key, repo.as_str()).await {
            let _ = self.inner.storage.remove_upload(key).await;
            return Err(e.into());
        }
        self.lock_sessions().insert(
            key.to_owned(),
            Arc::new(tokio::sync::Mutex::new(SessionState {
                hasher: Some(Algorithm::Sha256.hasher()),
                len: 0,
            })),
        );
        self.inner.metrics.upload_started();
        Ok(id)
    }

    /// Links `digest` into `repo` from `from` (or, when `from` is `None`, from any repository
    /// holding it), if the caller `may_pull` that repository; otherwise opens a session, and
    /// the client uploads the blob.
    pub async fn mount(
        &self,
        repo: &Repository,
        digest: &Digest,
        from: Option<&Repository>,
        may_pull: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Mounted, ServiceError> {
        // Held from reading the source's link to writing ours: a collection cannot delete the
        // blob in between.
        let _sweep = self.inner.sweep.shared().await?;
        let size = match from {
            Some(from) if may_pull(from.as_str()) => {
                self.inner.meta.repo_blob(from.as_str(), digest).await?
            }
            Some(_) => None,
            None => self
                .inner
                .meta
                .blob_repos(digest, MOUNT_CANDIDATES)
                .await?
                .into_iter()
                .find(|(r, _)| may_pull(r))
                .map(|(_, size)| size),
        };
        if let Some(size) = size
            && self.inner.storage.stat(digest).await?.is_some()
        {
            self.inner
                .meta
                .link_blob(repo.as_str(), digest, size)
                .await?;
            return Ok(Mounted::Linked);
        }
        Ok(Mounted::Session(self.start_upload(repo).await?))
    }

    /// Stores a whole blob sent in one request, verifying `digest`.
    pub async fn put_blob(
        &self,
        repo: &Repository,
        digest: &Digest,
        body: ByteStream,
        declared: Option<u64>,
    ) -> Result<u64, ServiceError> {
        let repo = repo.as_str();
        self.inner.headroom.admit(declared.unwrap_or(0))?;
        let id = format!("mono-{}", UploadId::new());
        let storage = &self.inner.storage;
        storage.create_upload(&id).await?;
        let result = storage
            .append(
                &id,
                body,
                Some(digest.algorithm().hasher()),
                Placement::Streamed,
            )
            .await;
        self.inner
            .metrics
            .bytes_in(result.as_ref().map_or(0, |a| a.received));
        let checked = match result {
            Ok(a) => {
                let actual = a
                    .hasher
                    .unwrap_or_else(|| digest.algorithm().hasher())
                    .finish();
                check_content(digest, actual, a.len, declared).map(|()| a.len)
            }
            Err(e) => Err(e.into()),
        };
        let size = match checked {
            Ok(s) => s,
            Err(e) => {
                let _ = storage.remove_upload(&id).await;
                return Err(e);
            }
        };
        // A collection deletes no blob between its commit and its link.
        let sweep = self.inner.sweep.shared().await?;
        storage.commit(&id, digest).await?;
        self.inner.meta.link_blob(repo, digest, size).await?;
        drop(sweep);
        tracing::debug!(repo, %digest, size, "blob stored");
        Ok(size)
    }

    async fn session(
        &self,
        repo: &str,
        id: &str,
    ) -> Result<Arc<tokio::sync::Mutex<SessionState>>, ServiceError> {
        match self.inner.meta.upload(id).await? {
            Some(u) if u.repo == repo => {}
            _ => return Err(ServiceError::UploadUnknown(id.to_owned())),
        }
        let mut sessions = self.lock_sessions();
        Ok(sessions
            .entry(id.to_owned())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(SessionState {
                    hasher: None,
                    len: u64::MAX,
                }))
            })
            .clone())
    }

    fn lock_sessions(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<SessionState>>>> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many bytes an upload holds.
    pub async fn upload_status(
        &self,
        repo: &Repository,
        id: &UploadId,
    ) -> Result<u64, ServiceError> {
        let repo = repo.as_str();
        let id = id.as_str();
        let state = self.session(repo, id).await?;
        let _guard = state.lock().await;
        self.inner
            .storage
            .upload_len(id)
            .await?
            .ok_or_else(|| ServiceError::UploadUnknown(id.to_owned()))
    }

    /// Appends a chunk. `start`, from `Content-Range`, must equal the upload's length.
    pub async fn append(
        &self,
        repo: &Repository,
        id: &UploadId,
        start: Option<u64>,
        body: ByteStream,
    ) -> Result<u64, ServiceError> {
        let repo = repo.as_str();
        let id = id.as_str();
        let state = self.session(repo, id).await?;
        let mut st = state.lock().await;
        self.append_locked(id, &mut st, start, body).await
    }

    async fn append_locked(
        &self,
        id: &str,
        st: &mut SessionState,
        start: Option<u64>,
        body: ByteStream,
    ) -> Result<u64, ServiceError> {
        let len = self
            .inner
            .storage
            .upload_len(id)
            .await?
            .ok_or_else(|| ServiceError::UploadUnknown(id.to_owned()))?;
        if st.len != len {
            // Restarted, or an earlier chunk broke off: the hash state no longer matches.
            st.hasher = None;
            st.len = len;
        }
        if let Some(start) = start
            && start != len
        {
            return Err(ServiceError::UploadOutOfOrder { offset: len, start });
        }
        self.inner.headroom.admit(0)?;
        let hasher = st.hasher.take();
        let result = self
            .inner
            .storage
            .append(id, body, hasher, Placement::Streamed)
            .await;
        match result {
            Ok(a) => {
                self.inner.metrics.bytes_in(a.received);
                st.hasher = a.hasher;
                st.len = a.len;
                Ok(a.len)
            }
            Err(e) => {
                st.len = u64::MAX;
                let e = ServiceError::from(e);
                if matches!(e, ServiceError::DiskFull(_)) {
                    // What arrived is of no use to anyone and holds the space others need.
                    tracing::warn!(upload = id, "disk full: upload dropped with its data");
                    self.drop_session(id).await?;
                }
                Err(e)
            }
        }
    }

    /// Completes an upload with an optional last chunk, verifying `digest`. On a mismatch the
    /// session and its data are removed and nothing is stored.
    pub async fn finish_upload(
        &self,
        repo: &Repository,
        id: &UploadId,
        digest: &Digest,
        start: Option<u64>,
        body: ByteStream,
    ) -> Result<u64, ServiceError> {
        let repo = repo.as_str();
        let id = id.as_str();
        let state = self.session(repo, id).await?;
        let mut st = state.lock().await;
        let len = self.append_locked(id, &mut st, start, body).await?;
        let actual = match st.hasher.take() {
            Some(h) if digest.algorithm() == Algorithm::Sha256 => h.finish(),
            _ => {
                let mut h = digest.algorithm().hasher();
                self.inner
                    .storage
                    .replay(id, &mut |b: &[u8]| h.update(b))
                    .await?;
                h.finish()
            }
        };
        if let Err(e) = check_content(digest, actual, len, None) {
            drop(st);
            self.drop_session(id).await?;
            return Err(e);
        }
        let sweep = self.inner.sweep.shared().await?;
        self.inner.storage.commit(id, digest).await?;
        self.inner
            .meta
            .complete_upload(id, repo, digest, len)
            .await?;
        drop(sweep);
        self.lock_sessions().remove(id);
        self.inner.metrics.upload_ended(true);
        drop(st);
        tracing::debug!(repo, %digest, size = len, "upload completed");
        Ok(len)
    }

    /// Cancels an upload, removing its data.
    pub async fn cancel_upload(
        &self,
        repo: &Repository,
        id: &UploadId,
    ) -> Result<(), ServiceError> {
        let repo = repo.as_str();
        let id = id.as_str();
        let state = self.session(repo, id).await?;
        let _guard = state.lock().await;
        self.drop_session(id).await
    }

    /// Ends a session without a blob: cancelled, failed verification or expired.
    async fn drop_session(&self, id: &str) -> Result<(), ServiceError> {
        self.lock_sessions().remove(id);
        // The data first: on a full disk, removing it is what makes room for the row's delete
        // (a row without data is an unknown upload, and expires).
        self.inner.storage.remove_upload(id).await?;
        let existed = self
            .freeing(|| async { Ok(self.inner.meta.delete_upload(id).await?) })
            .await?;
        if existed {
            self.inner.metrics.upload_ended(false);
        }
        Ok(())
    }

    /// Removes upload sessions (and stray upload data) unused for longer than
    /// `uploads.max_age`: their data was last written before then, or they have none and
    /// started before then. Returns how many were removed.
    pub async fn purge_expired_uploads(&self) -> Result<usize, ServiceError> {
        let max_age = self.inner.config.uploads.max_age.as_secs();
        let before = u64::try_from(now()).unwrap_or(0).saturating_sub(max_age);
        let mut ids = self.inner.storage.stale_uploads(before).await?;
        for id in self.inner.meta.uploads_started_before(before).await? {
            if self.inner.storage.upload_len(&id).await?.is_none() {
                ids.push(id);
            }
        }
        ids.sort();
        ids.dedup();
        let mut removed = 0;
        for id in &ids {
            let state = self.lock_sessions().get(id).cloned();
            let _guard = match &state {
                Some(s) => Some(s.lock().await),
                None => None,
            };
            // A chunk may have arrived while we waited for the session.
            if state.is_some()
                && !self.inner.storage.stale_uploads(before).await?.contains(id)
                && self.inner.storage.upload_len(id).await?.is_some()
            {
                continue;
            }
            self.drop_session(id).await?;
            removed += 1;
            tracing::info!(upload = %id, "expired upload removed");
        }
        Ok(removed)
    }

    /// Runs [`Registry::purge_expired_uploads`] every `uploads.purge_interval`, forever.
    pub async fn purge_loop(self) {
        let every = self.inner.config.uploads.purge_interval;
        loop {
            if let Err(e) = self.purge_expired_uploads().await {
                tracing::error!(error = %wharf_common::error::Chain(&e), "removing expired uploads");
            }
            // Space may have come back (deletes, or room made outside the registry).
            self.inner.headroom.take();
            tokio::time::sleep(every.max(Duration::from_secs(1))).await;
        }
    }

    // ---- manifests ----

    /// Validates and stores a manifest; returns its digest and subject.
    pub async fn put_manifest(
        &self,
        repo: &Repository,
        reference: &ManifestRef,
        content_type: Option<&str>,
        content: Bytes,
    ) -> Result<(Digest, Option<Digest>), ServiceError> {
        let repo = repo.as_str();
        let limit = self.inner.config.limits.manifest_max_bytes;
        if content.len() as u64 > limit {
            return Err(ServiceError::TooLarge {
                what: "the manifest",
                limit,
            });
        }
        self.inner.headroom.admit(content.len() as u64)?;
        let parsed =
            manifest::parse(&content, content_type).map_err(ServiceError::ManifestInvalid)?;
        let (digest, tag) = match reference {
            ManifestRef::Digest(d) => {
                let actual = Digest::of(d.algorithm(), &content);
                if &actual != d {
                    return Err(ServiceError::DigestMismatch {
                        expected: d.clone(),
                        actual,
                    });
                }
                (actual, None)
            }
            ManifestRef::Tag(t) => (Digest::sha256(&content), Some(t.clone())),
        };
        let mut wanted = parsed.blobs.clone();
        wanted.extend(parsed.manifests.iter().cloned());
        wanted.sort();
        wanted.dedup();
        if let Some(missing) = self
            .inner
            .meta
            .missing(repo, &wanted)
            .await?
            .into_iter()
            .next()
        {
            return Err(ServiceError::ManifestBlobUnknown(missing));
        }
        let record = NewManifest {
            repo: repo.to_owned(),
            digest: digest.clone(),
            media_type: parsed.media_type,
            content,
            artifact_type: parsed.artifact_type,
            subject: parsed.subject.clone(),
            annotations: parsed.annotations,
            children: wanted,
            optional: parsed.foreign,
            tag,
        };
        if let Some(gone) = self.inner.meta.put_manifest(&record).await? {
            return Err(ServiceError::ManifestBlobUnknown(gone));
        }
        self.inner.cache.invalidate(repo);
        tracing::info!(repo, reference = reference.key(), %digest, "manifest stored");
        Ok((digest, parsed.subject))
    }

    /// A manifest by tag or digest.
    pub async fn manifest(
        &self,
        repo: &Repository,
        reference: &ManifestRef,
    ) -> Result<Manifest, ServiceError> {
        let repo = repo.as_str();
        if let Some(m) = self.inner.cache.get(repo, reference.key()) {
            return Ok(m);
        }
        let generation = self.inner.cache.generation(repo);
        let found = match reference {
            ManifestRef::Tag(t) => self.inner.meta.manifest_by_tag(repo, t).await?,
            ManifestRef::Digest(d) => self.inner.meta.manifest_by_digest(repo, d).await?,
        };
        let m = Arc::new(
            found.ok_or_else(|| ServiceError::ManifestUnknown(reference.key().to_owned()))?,
        );
        self.inner
            .cache
            .insert(repo, reference.key(), generation, m.clone());
        Ok(m)
    }

    /// Deletes a manifest (by digest, with its tags) or a tag (by tag, the manifest stays).
    pub async fn delete_manifest(
        &self,
        repo: &Repository,
        reference: &ManifestRef,
    ) -> Result<(), ServiceError> {
        if !self.inner.config.storage.delete {
            return Err(ServiceError::DeletesDisabled);
        }
        let repo = repo.as_str();
        let existed = self
            .freeing(|| async {
                Ok(match reference {
                    ManifestRef::Tag(t) => self.inner.meta.delete_tag(repo, t).await?,
                    ManifestRef::Digest(d) => self.inner.meta.delete_manifest(repo, d).await?,
                })
            })
            .await?;
        self.inner.cache.invalidate(repo);
        if existed {
            tracing::info!(repo, reference = reference.key(), "manifest deleted");
            Ok(())
        } else {
            Err(ServiceError::ManifestUnknown(reference.key().to_owned()))
        }
    }

    /// A page of `repo`'s tags.
    pub async fn tags(
        &self,
        repo: &Repository,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<Page, ServiceError> {
        let repo = repo.as_str();
        if !self.inner.meta.repo_exists(repo).await? {
            return Err(ServiceError::NameUnknown(repo.to_owned()));
        }
        Ok(self.inner.meta.tags(repo, self.page_size(n), last).await?)
    }

    /// A page of the repository names the caller may see (`visible`): pages are read until
    /// this one is full or the names run out, so hidden repositories do not shorten it.
    pub async fn catalog(
        &self,
        n: Option<u32>,
        last: Option<&str>,
        visible: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Page, ServiceError> {
        let want = self.page_size(n) as usize;
        let mut names = Vec::new();
        let mut cursor = last.map(str::to_owned);
        loop {
            let page = self
                .inner
                .meta
                .catalog(self.page_size(n), cursor.as_deref())
                .await?;
            cursor = page.names.last().cloned();
            let mut rest = page.names.into_iter().filter(|r| visible(r));
            names.extend(rest.by_ref().take(want - names.len()));
            if names.len() == want {
                let more = rest.next().is_some() || page.more;
                return Ok(Page { names, more });
            }
            if !page.more {
                return Ok(Page { names, more: false });
            }
        }
    }

    /// The size of a listing page: `n`, at most `limits.list_max_entries` (also the size when
    /// the client names none).
    fn page_size(&self, n: Option<u32>) -> u32 {
        let max = self.inner.config.limits.list_max_entries;
        n.unwrap_or(max).min(max)
    }

    /// Repositories whose name contains `query` (any case), for docker's `/v1/search`: how
    /// many match, and page `page` (from 1) of `page_size`, each with a description: the
    /// `org.opencontainers.image.description` annotation of the manifest its latest tag points
    /// at, else that image's label of the same name.
    /// With `visible`, only the repositories it lets through are counted and shown.
    pub async fn search(
        &self,
        query: &str,
        page: u32,
        page_size: u32,
        visible: Option<&(dyn Fn(&str) -> bool + Sync)>,
    ) -> Result<(u64, Vec<(String, String)>), ServiceError> {
        let offset = page.saturating_sub(1).saturating_mul(page_size);
        let (total, hits) = match visible {
            None => self.inner.meta.search(query, offset, page_size).await?,
            Some(visible) => {
                let (_, all) = self.inner.meta.search(query, 0, u32::MAX).await?;
                let shown: Vec<_> = all.into_iter().filter(|h| visible(&h.name)).collect();
                let total = shown.len() as u64;
                let page = shown
                    .into_iter()
                    .skip(offset as usize)
                    .take(page_size as usize)
                    .collect();
                (total, page)
            }
        };
        let mut out = Vec::with_capacity(hits.len());
        for hit in hits {
            let description = match &hit.manifest {
                Some(m) => self.description(&hit.name, m).await,
                None => String::new(),
            };
            out.push((hit.name, description));
        }
        Ok((total, out))
    }

    /// An image's description: its manifest's annotation, else its config's label.
    async fn description(&self, repo: &str, m: &ManifestRecord) -> String {
        const KEY: &str = "org.opencontainers.image.description";
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.content) else {
            return String::new();
        };
        if let Some(d) = v["annotations"][KEY].as_str() {
            return d.to_owned();
        }
        let Some(config) = v["config"]["digest"]
            .as_str()
            .and_then(|d| d.parse::<Digest>().ok())
        else {
            return String::new();
        };
        let Ok(Some(size)) = self.inner.meta.repo_blob(repo, &config).await else {
            return String::new();
        };
        // Configs are a few KiB; a large one is not read for a description (a search reads
        // up to 100 of them).
        if size > 64 << 10 {
            return String::new();
        }
        let Ok(stream) = self.inner.storage.read(&config, 0, size).await else {
            return String::new();
        };
        let bytes: Vec<u8> = futures_util::TryStreamExt::try_concat(
            futures_util::TryStreamExt::map_ok(stream, |b| b.to_vec()),
        )
        .await
        .unwrap_or_default();
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|c| c["config"]["Labels"][KEY].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Manifests in `repo` whose subject is `subject`, optionally of one artifact type.
    pub async fn referrers(
        &self,
        repo: &Repository,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>, ServiceError> {
        let repo = repo.as_str();
        let mut all = self.inner.meta.referrers(repo, subject).await?;
        if let Some(t) = artifact_type {
            all.retain(|r| r.artifact_type.as_deref() == Some(t));
        }
        Ok(all)
    }
}

/// Compares content against what the client claimed.
fn check_content(
    expected: &Digest,
    actual: Digest,
    len: u64,
    declared: Option<u64>,
) -> Result<(), ServiceError> {
    if let Some(declared) = declared
        && declared != len
    {
        return Err(ServiceError::SizeMismatch {
            declared,
            actual: len,
        });
    }
    if &actual != expected {
        return Err(ServiceError::DigestMismatch {
            expected: expected.clone(),
            actual,
        });
    }
    Ok(())
}
