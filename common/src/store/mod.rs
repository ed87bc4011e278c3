//! The local image store at `$WHARF_ROOT`.
//!
//! ```text
//! $WHARF_ROOT/
//!   blobs/sha256/<hex>          verified content, written once (temp → fsync → verify → rename)
//!   blobs/sha512/<hex>
//!   ingest/sha256-<hex>.partial a download in progress, flock'ed by its writer; resumable
//!   ingest/tmp-<pid>-<start>-…  content whose digest is known only at the end (archives, layers);
//!                               removed as an orphan only once its process (pid and start
//!                               time) is gone
//!   wharf.db                    SQLite (WAL): images, refs, repo digests, leases, build cache,
//!                               context file digests, layer sizes
//!   wharf.lock                  flock'ed while the schema is created or migrated
//! ```
//!
//! The root is closed to other users (mode 0700, tightened when an older store is opened), as
//! docker closes `/var/lib/docker` since CVE-2021-41091: snapshots under it hold image files with
//! their setuid bits and root ownership, which another user must not be able to reach. The
//! directories builds and `run` add (`snapshots/`, `containers/`, `cache-mounts/`) are made with
//! [`private_dir`] too.
//!
//! Several wharf processes may use one store at once: blobs are immutable and appear by atomic
//! rename, a blob being written has one writer (the flock on its partial file), and SQLite
//! serialises metadata writes. Garbage collection runs inside a write transaction and spares
//! every blob named by an image or by a live lease, which each copy takes before it relies on a
//! blob being present.

mod cache;
mod gc;
mod ingest;
mod lease;
mod meta;
mod stored;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::digest::{Algorithm, Digest};
use crate::image::ImageError;

pub use cache::{CacheEntry, FileStamp};
pub use gc::GcReport;
pub use ingest::{Ingest, IngestStart, StagingDir};
pub use lease::Lease;
pub use meta::{ImageRecord, Resolved};
pub use stored::StoredImage;

/// Errors of the local store. Each names the path, digest or name involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The metadata database failed.
    #[error("store database: {op}")]
    Db {
        /// What was being done.
        op: &'static str,
        /// The database error.
        #[source]
        source: sqlx::Error,
    },
    /// Migrating the database failed.
    #[error("migrating the store database {path}")]
    Migrate {
        /// The database file.
        path: PathBuf,
        /// The migration error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// Content did not hash to the digest it was stored under.
    #[error("digest mismatch for {expected}: content hashes to {actual}")]
    DigestMismatch {
        /// The digest the content was announced with.
        expected: Digest,
        /// What it actually hashes to.
        actual: Digest,
    },
    /// Content had another size than announced.
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// The announced size.
        expected: u64,
        /// The size received.
        actual: u64,
    },
    /// A blob the operation needs is not in the store.
    #[error("blob {0} is not in the local store")]
    BlobUnknown(Digest),
    /// No image by that name or id.
    #[error("no such image: {0}")]
    ImageUnknown(String),
    /// A manifest or config in the store could not be parsed.
    #[error(transparent)]
    Image(#[from] ImageError),
}

impl StoreError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { op, path, source }
    }

    pub(crate) fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Db { op, source }
    }
}

/// Makes `path` a directory only its owner can enter: creates it with mode 0700 (missing
/// parents get the default mode), or takes the group's and others' bits off an existing one
/// this process owns. A directory owned by another user is left as it is.
pub fn private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            match std::fs::DirBuilder::new().mode(0o700).create(path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        return Err(std::io::Error::from(std::io::ErrorKind::NotADirectory));
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let mode = meta.mode() & 0o7777;
    if meta.uid() == me && mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & !0o077))?;
    }
    Ok(())
}

/// The local image store. Cheap to clone; all clones share one database pool.
#[derive(Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    db: SqlitePool,
    /// Serialises this process's writes: concurrent writers on several pooled connections
    /// would make SQLite answer BUSY and back off in milliseconds.
    write: tokio::sync::Mutex<()>,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl LocalStore {
    /// Opens (creating if needed) the store at `root`, and clears what dead processes left:
    /// their leases and their unfinished temporary files.
    pub async fn open(root: &Path) -> Result<LocalStore, StoreError> {
        private_dir(root).map_err(StoreError::io("creating the store directory", root))?;
        for dir in ["blobs/sha256", "blobs/sha512", "ingest"] {
            let p = root.join(dir);
            tokio::fs::create_dir_all(&p)
                .await
                .map_err(StoreError::io("creating store directory", &p))?;
        }
        let db_path = root.join("wharf.db");
        let opts = SqliteConnectOptions::new()
            .filename(&db_path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(120))
            .foreign_keys(true);
        // Opening (which switches a new database to WAL, taking an exclusive lock SQLite's busy
        // handler does not wait for) and migrating run under an exclusive flock, so two first
        // runs cannot race.
        let lock_path = root.join("wharf.lock");
        let lock = ingest::lock_file_blocking_async(lock_path.clone()).await?;
        let db = match SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
        {
            Ok(db) => db,
            Err(e) => {
                drop(lock);
                return Err(StoreError::db("opening the database")(e));
            }
        };
        // A store already at this binary's schema skips the migrator, which would take a
        // write transaction on every open.
        let applied: Vec<(i64,)> = sqlx::query_as(
            "SELECT version FROM _sqlx_migrations WHERE success = 1 ORDER BY version",
        )
        .fetch_all(&db)
        .await
        .unwrap_or_default();
        let current = applied
            .iter()
            .map(|(v,)| *v)
            .eq(MIGRATOR.iter().map(|m| m.version));
        let migrated = if current {
            Ok(())
        } else {
            MIGRATOR.run(&db).await
        };
        drop(lock);
        migrated.map_err(|source| StoreError::Migrate {
            path: db_path.clone(),
            source,
        })?;
        let store = LocalStore {
            inner: Arc::new(Inner {
                root: root.to_owned(),
                db,
                write: tokio::sync::Mutex::new(()),
            }),
        };
        store.clear_stale_leases().await?;
        let ingest_dir = store.ingest_dir();
        tokio::task::spawn_blocking(move || ingest::remove_orphans(&ingest_dir))
            .await
            .map_err(|e| {
                StoreError::io("cleaning ingest directory", root)(std::io::Error::other(e))
            })??;
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub(crate) fn db(&self) -> &SqlitePool {
        &self.inner.db
    }

    /// Held while writing metadata (see `Inner::write`).
    pub(crate) async fn write_guard(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.write.lock().await
    }

    /// Makes blob renames durable: fsyncs the blob directories. Copies call it once before they
    /// record an image, instead of once per blob.
    pub async fn sync_blob_dirs(&self) -> Result<(), StoreError> {
        let dirs = [
            self.blob_dir(Algorithm::Sha256),
            self.blob_dir(Algorithm::Sha512),
        ];
        tokio::task::spawn_blocking(move || dirs.iter().try_for_each(|d| ingest::sync_dir(d)))
            .await
            .map_err(|e| {
                StoreError::io("syncing", self.blob_dir(Algorithm::Sha256))(std::io::Error::other(
                    e,
                ))
            })?
    }

    /// Where a blob lives (whether or not it is present).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.inner
            .root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    fn blob_dir(&self, algorithm: Algorithm) -> PathBuf {
        self.inner.root.join("blobs").join(algorithm.as_str())
    }

    fn ingest_dir(&self) -> PathBuf {
        self.inner.root.join("ingest")
    }

    /// The size of a blob if it is present.
    pub async fn blob_size(&self, digest: &Digest) -> Option<u64> {
        tokio::fs::metadata(self.blob_path(digest))
            .await
            .ok()
            .map(|m| m.len())
    }

    /// Reads a whole (small) blob, verifying it against its digest.
    pub async fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::BlobUnknown(digest.clone()));
            }
            Err(e) => return Err(StoreError::io("reading blob", path)(e)),
        };
        let actual = Digest::of(digest.algorithm(), &bytes);
        if &actual != digest {
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Writes a small blob held in memory, returning its sha256 digest.
    pub async fn write_blob(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        self.write_blob_with(bytes, Algorithm::Sha256).await
    }

    /// Writes a small blob held in memory, hashed with `algorithm`.
    pub async fn write_blob_with(
        &self,
        bytes: &[u8],
        algorithm: Algorithm,
    ) -> Result<Digest, StoreError> {
        let digest = Digest::of(algorithm, bytes);
        if self.blob_size(&digest).await == Some(bytes.len() as u64) {
            return Ok(digest);
        }
        let store = self.clone();
        let data = bytes.to_vec();
        let expected = digest.clone();
        tokio::task::spawn_blocking(move || {
            let mut ing = store.ingest_unknown_blocking(algorithm)?;
            ing.write(&data)?;
            ing.commit(Some((&expected, data.len() as u64)))
        })
        .await
        .map_err(|e| {
            StoreError::io("writing blob", self.ingest_dir())(std::io::Error::other(e))
        })??;
        Ok(digest)
    }
}
