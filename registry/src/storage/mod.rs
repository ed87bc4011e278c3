//! Blob storage: the bytes of blobs and of upload sessions in progress, addressed by digest and
//! by upload id. No metadata lives here (that is `metadata`); a blob visible under its digest
//! is always complete and verified, because it arrives by rename from a verified upload.

mod direct;
mod fs;

use std::path::PathBuf;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use wharf_common::digest::{Digest, Hasher};

pub use fs::FsStorage;
pub(crate) use fs::blocking;

/// Bytes arriving from a client.
pub type ByteStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// A storage failure, naming the path or object involved.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An IO error on `path`.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The client's body failed midway (disconnect, bad chunk); what arrived is kept.
    #[error("reading the request body: {0}")]
    Body(std::io::Error),
    /// The upload's data is gone (expired or cancelled meanwhile).
    #[error("upload {0} has no data")]
    UploadMissing(String),
}

impl StorageError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> StorageError {
        let path = path.into();
        move |source| StorageError::Io { what, path, source }
    }
}

/// The result of appending to an upload.
pub struct Appended {
    /// The upload's length afterwards.
    pub len: u64,
    /// Bytes taken from this request's body.
    pub received: u64,
    /// The hasher given, having seen every byte.
    pub hasher: Option<Hasher>,
}

/// Where an upload's bytes go on their way to the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// A push: past its first MiBs, around the page cache (written once, seldom read at once).
    Streamed,
    /// A mirror's fetch: through the page cache, where the clients that asked read it next.
    Cached,
}

/// A stored blob's file.
#[derive(Clone, Debug)]
pub struct BlobFile {
    /// The blob.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// When its bytes were last written (seconds since the epoch).
    pub written: u64,
}

/// Where blobs and upload data live. Implementations: the filesystem ([`FsStorage`]).
pub trait BlobStorage: Send + Sync + 'static {
    /// The size of the stored blob, or `None`.
    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<u64>, StorageError>>;

    /// `len` bytes of the blob from `offset` on, as a stream.
    fn read<'a>(
        &'a self,
        digest: &'a Digest,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'a, Result<ByteStream, StorageError>>;

    /// Creates an empty upload.
    fn create_upload<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StorageError>>;

    /// The length of an upload's data, or `None` when it has none.
    fn upload_len<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<u64>, StorageError>>;

    /// Appends `body` to the upload, feeding every byte to `hasher` (the caller's, given back
    /// in [`Appended`]) in order. If the body fails midway, what arrived before stays appended.
    fn append<'a>(
        &'a self,
        id: &'a str,
        body: ByteStream,
        hasher: Option<Hasher>,
        placement: Placement,
    ) -> BoxFuture<'a, Result<Appended, StorageError>>;

    /// Reads the whole upload through `on_bytes` (to rebuild a hash state lost in a restart).
    fn replay<'a>(
        &'a self,
        id: &'a str,
        on_bytes: &'a mut (dyn FnMut(&[u8]) + Send),
    ) -> BoxFuture<'a, Result<u64, StorageError>>;

    /// Makes the upload's data durable and visible as `digest`; the upload is gone afterwards.
    /// If the blob already exists the upload is just removed.
    fn commit<'a>(
        &'a self,
        id: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Up to `max` bytes of an upload's data from `offset`, as far as they are written (empty
    /// at its end); `UploadMissing` once the upload is gone (committed or removed).
    fn read_upload<'a>(
        &'a self,
        id: &'a str,
        offset: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<Bytes, StorageError>>;

    /// Removes an upload's data (absent data is fine).
    fn remove_upload<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Upload ids whose data was last written before `before` (seconds since the epoch).
    fn stale_uploads(&self, before: u64) -> BoxFuture<'_, Result<Vec<String>, StorageError>>;

    /// Removes a blob's bytes (absent is fine).
    fn delete<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Every stored blob file. Files that are not blobs are skipped.
    fn blob_files(&self) -> BoxFuture<'_, Result<Vec<BlobFile>, StorageError>>;
}
