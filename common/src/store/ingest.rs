//! Writing blobs: a temporary file hashed while written, fsynced, verified, then renamed into
//! `blobs/`. Downloads of a known digest go to `ingest/<alg>-<hex>.partial`, flock'ed by their
//! one writer, so a second process waits instead of downloading twice and a killed download is
//! resumed from where it stopped.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::digest::{Algorithm, Digest, Hasher};
use crate::image::BlobRef;

use super::{LocalStore, StoreError};

/// How long an abandoned resumable download is kept.
const PARTIAL_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn flock(file: &File, nonblocking: bool) -> std::io::Result<bool> {
    let flags = libc::LOCK_EX | if nonblocking { libc::LOCK_NB } else { 0 };
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), flags) };
        if rc == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if nonblocking => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// Opens `path` (creating it) and takes an exclusive flock, waiting for it on a blocking thread.
pub(crate) async fn lock_file_blocking_async(path: PathBuf) -> Result<File, StoreError> {
    tokio::task::spawn_blocking(move || {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(StoreError::io("opening lock file", &path))?;
        flock(&f, false).map_err(StoreError::io("locking", &path))?;
        Ok(f)
    })
    .await
    .map_err(|e| StoreError::io("locking", "wharf.lock")(std::io::Error::other(e)))?
}

/// Removes temporary files whose writer is gone, and resumable downloads nobody resumed.
pub(crate) fn remove_orphans(dir: &Path) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return Err(StoreError::io("listing", dir)(e)),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let stale = if let Some(rest) = name.strip_prefix("tmp-") {
            // tmp-<pid>-<process start>-…: a live writer's is never touched, whatever its
            // lock says (it may not have taken it yet).
            let mut f = rest.split('-');
            let owner = f.next().and_then(|p| p.parse::<u32>().ok());
            let start = f.next().and_then(|s| s.parse::<i64>().ok());
            match (owner, start) {
                (Some(pid), Some(start)) => super::lease::process_start(pid) != Some(start),
                _ => true,
            }
        } else if name.ends_with(".partial") {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > PARTIAL_MAX_AGE)
        } else {
            false
        };
        if !stale {
            continue;
        }
        let Ok(f) = OpenOptions::new().read(true).open(&path) else {
            continue;
        };
        // Held by a live writer: leave it.
        if matches!(flock(&f, true), Ok(true)) {
            if path.is_dir() {
                let _ = std::fs::remove_dir_all(&path);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(())
}

/// What starting to write a known blob found.
pub enum IngestStart {
    /// The blob is already in the store (perhaps another process just finished it).
    Present,
    /// A writer, positioned at [`Ingest::offset`] (non-zero when resuming).
    Write(Box<Ingest>),
}

/// A blob being written. Dropping it without [`Ingest::commit`] removes a temporary file and
/// keeps a resumable partial download.
pub struct Ingest {
    file: File,
    path: PathBuf,
    final_dir: PathBuf,
    hasher: Hasher,
    written: u64,
    /// Bytes handed to the kernel's writeback so far (see `write`).
    flushed: u64,
    resumable: bool,
    done: bool,
}

/// Large blobs start writeback every this many bytes, so the fsync at the end finds little left.
const WRITEBACK_STEP: u64 = 16 << 20;

impl Ingest {
    /// Bytes already written (where a resumed download continues).
    pub fn offset(&self) -> u64 {
        self.written
    }

    /// The temporary file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all(bytes)
            .map_err(StoreError::io("writing", &self.path))?;
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        if self.written - self.flushed >= WRITEBACK_STEP {
            // SAFETY: asks the kernel to start writing back a range of our own open file; no
            // memory is shared. Failure only means the final fsync does all the work.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.flushed as libc::off64_t,
                    (self.written - self.flushed) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            self.flushed = self.written;
        }
        Ok(())
    }

    /// Discards what was written, including a resumable partial file.
    pub fn discard(mut self) {
        self.done = true;
        let _ = std::fs::remove_file(&self.path);
    }

    /// Fsyncs, verifies against `expected` (digest and size) when given, and moves the blob into
    /// place. Returns the content's digest and size. On a mismatch the file is removed.
    pub fn commit(mut self, expected: Option<(&Digest, u64)>) -> Result<(Digest, u64), StoreError> {
        self.done = true;
        let algorithm = match &self.hasher {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        };
        let hasher = std::mem::replace(&mut self.hasher, algorithm.hasher());
        let actual = hasher.finish();
        if let Some((digest, size)) = expected {
            if self.written != size {
                let _ = std::fs::remove_file(&self.path);
                return Err(StoreError::SizeMismatch {
                    digest: digest.clone(),
                    expected: size,
                    actual: self.written,
                });
            }
            if &actual != digest {
                let _ = std::fs::remove_file(&self.path);
                return Err(StoreError::DigestMismatch {
                    expected: digest.clone(),
                    actual,
                });
            }
        }
        let started = std::time::Instant::now();
        self.file
            .sync_all()
            .map_err(StoreError::io("syncing", &self.path))?;
        tracing::debug!(digest = %actual, size = self.written, fsync_ms = started.elapsed().as_millis() as u64, "blob synced");
        let dest = self.final_dir.join(actual.hex());
        // The directory is fsynced once per copy (`LocalStore::sync_blob_dirs`), before any
        // metadata names the blob.
        std::fs::rename(&self.path, &dest)
            .map_err(StoreError::io("moving blob into place", &dest))?;
        Ok((actual, self.written))
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if !self.done && !self.resumable {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("syncing directory", dir))
}

/// A private directory in the store's ingest area, flock'ed while it lives (so no other process
/// takes it for an orphan) and removed when dropped.
pub struct StagingDir {
    path: PathBuf,
    _lock: File,
}

impl StagingDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

impl LocalStore {
    /// Creates a staging directory on the store's filesystem. Blocking.
    pub fn staging_dir_blocking(&self) -> Result<StagingDir, StoreError> {
        let path = self.new_tmp_path();
        std::fs::create_dir(&path).map_err(StoreError::io("creating staging directory", &path))?;
        let lock = File::open(&path).map_err(StoreError::io("opening staging directory", &path))?;
        if !flock(&lock, true).map_err(StoreError::io("locking", &path))? {
            return Err(StoreError::io("locking", &path)(std::io::Error::from(
                std::io::ErrorKind::WouldBlock,
            )));
        }
        Ok(StagingDir { path, _lock: lock })
    }

    /// Removes the resumable downloads of `digests` that no writer holds. Blocking.
    pub fn discard_partials_blocking(&self, digests: &[Digest]) {
        for d in digests {
            let path = self
                .ingest_dir()
                .join(format!("{}-{}.partial", d.algorithm(), d.hex()));
            let Ok(f) = OpenOptions::new().read(true).open(&path) else {
                continue;
            };
            // Held by a live writer (another process): leave it.
            if matches!(flock(&f, true), Ok(true)) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Starts writing a blob whose digest and size are known. Waits while another process
    /// writes the same blob; resumes a partial file left by a process that died. Blocking.
    pub fn ingest_known_blocking(&self, blob: &BlobRef) -> Result<IngestStart, StoreError> {
        let digest = &blob.digest;
        let final_path = self.blob_path(digest);
        if final_path.exists() {
            return Ok(IngestStart::Present);
        }
        let path =
            self.ingest_dir()
                .join(format!("{}-{}.partial", digest.algorithm(), digest.hex()));
        // Lock, then check that the file locked is still the one at the path: a writer that
        // gave up may have removed it (under its lock) while we waited.
        let mut file = loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(StoreError::io("creating", &path))?;
            flock(&file, false).map_err(StoreError::io("locking", &path))?;
            let ours = file.metadata().map_err(StoreError::io("reading", &path))?;
            let linked = std::fs::metadata(&path)
                .is_ok_and(|m| m.ino() == ours.ino() && m.dev() == ours.dev());
            if linked && ours.nlink() > 0 {
                break file;
            }
            if final_path.exists() {
                return Ok(IngestStart::Present);
            }
        };
        if final_path.exists() {
            // Another writer finished while we waited. Our file is either theirs, renamed into
            // place (leave it), or one we just created (remove it).
            let ours = file.metadata().map(|m| m.ino()).ok();
            let at_path = std::fs::metadata(&path).map(|m| m.ino()).ok();
            if ours.is_some() && ours == at_path {
                let _ = std::fs::remove_file(&path);
            }
            return Ok(IngestStart::Present);
        }
        let mut hasher = digest.algorithm().hasher();
        let mut len = file
            .metadata()
            .map_err(StoreError::io("reading", &path))?
            .len();
        if len > blob.size {
            file.set_len(0)
                .map_err(StoreError::io("truncating", &path))?;
            len = 0;
        }
        if len > 0 {
            // Re-hash what a previous writer left, then continue after it.
            file.seek(SeekFrom::Start(0))
                .map_err(StoreError::io("reading", &path))?;
            let mut buf = vec![0u8; 1 << 20];
            let mut left = len;
            while left > 0 {
                let n = file
                    .read(&mut buf[..left.min(1 << 20) as usize])
                    .map_err(StoreError::io("reading", &path))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
            len -= left;
            file.set_len(len)
                .map_err(StoreError::io("truncating", &path))?;
        }
        file.seek(SeekFrom::Start(len))
            .map_err(StoreError::io("seeking", &path))?;
        Ok(IngestStart::Write(Box::new(Ingest {
            file,
            path,
            final_dir: self.blob_dir(digest.algorithm()),
            hasher,
            written: len,
            flushed: 0,
            resumable: true,
            done: false,
        })))
    }

    /// Starts writing content whose digest will be known at the end. Blocking.
    pub fn ingest_unknown_blocking(&self, algorithm: Algorithm) -> Result<Ingest, StoreError> {
        let path = self.new_tmp_path();
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(StoreError::io("creating", &path))?;
        if !flock(&file, true).map_err(StoreError::io("locking", &path))? {
            return Err(StoreError::io("locking", &path)(std::io::Error::from(
                std::io::ErrorKind::WouldBlock,
            )));
        }
        Ok(Ingest {
            file,
            path,
            final_dir: self.blob_dir(algorithm),
            hasher: algorithm.hasher(),
            written: 0,
            flushed: 0,
            resumable: false,
            done: false,
        })
    }

    /// A fresh, unique path in the ingest directory for temporary files and directories.
    pub fn new_tmp_path(&self) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let pid = std::process::id();
        let start = super::lease::process_start(pid).unwrap_or(0);
        self.ingest_dir()
            .join(format!("tmp-{pid}-{start}-{n}-{nanos:08x}"))
    }

    /// Takes into the store a file whose content is already verified to be `blob` (it was hashed
    /// as it was written by the caller), by hard link, or by copy across filesystems. Blocking.
    pub fn adopt_verified_blocking(&self, src: &Path, blob: &BlobRef) -> Result<(), StoreError> {
        let dest = self.blob_path(&blob.digest);
        if dest.exists() {
            return Ok(());
        }
        match std::fs::hard_link(src, &dest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) if e.raw_os_error() != Some(libc::EXDEV) => {
                return Err(StoreError::io("linking into the store", src)(e));
            }
            Err(_) => {
                // Another filesystem: copy through an ingest file, verifying again.
                let IngestStart::Write(mut ing) = self.ingest_known_blocking(blob)? else {
                    return Ok(());
                };
                let mut f = File::open(src).map_err(StoreError::io("opening", src))?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf).map_err(StoreError::io("reading", src))?;
                    if n == 0 {
                        break;
                    }
                    ing.write(&buf[..n])?;
                }
                ing.commit(Some((&blob.digest, blob.size)))?;
                return Ok(());
            }
        }
        File::open(&dest)
            .and_then(|f| f.sync_all())
            .map_err(StoreError::io("syncing", &dest))
    }
}
