//! Blobs on a local filesystem:
//!
//! ```text
//! <root>/blobs/<alg>/<hex[..2]>/<hex>   committed blobs, read-only once renamed in
//! <root>/uploads/<id>                   upload data, appended to; renamed into blobs/ on commit
//! ```
//!
//! Uploads and blobs share one filesystem, so a commit is fsync → rename → fsync(dir).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use wharf_common::digest::{Digest, Hasher};

use super::direct::UploadWriter;
use super::{Appended, BlobFile, BlobStorage, ByteStream, Placement, StorageError};

/// Read size when replaying an upload.
const READ_CHUNK: usize = 1 << 20;
/// Blobs up to this size are served from one read, not mapped.
const SMALL_BLOB: u64 = 1 << 20;
/// How much of a blob is mapped at once when serving it.
const MAP_WINDOW: u64 = 4 << 20;
/// Bytes of a request body handed to the hashing and writing threads at once.
const BATCH: usize = 1 << 20;
/// How long a batch waits for more before it goes anyway.
const BATCH_WAIT: Duration = Duration::from_millis(5);
/// Batches queued for each of those threads before receiving waits.
const BATCHES_IN_FLIGHT: usize = 8;

/// Filesystem blob storage under one root.
#[derive(Clone, Debug)]
pub struct FsStorage {
    blobs: PathBuf,
    uploads: PathBuf,
}

impl FsStorage {
    /// Opens (creating) the storage directories under `root`.
    pub fn open(root: &Path) -> Result<FsStorage, StorageError> {
        let blobs = root.join("blobs");
        let uploads = root.join("uploads");
        for d in [&blobs, &uploads] {
            std::fs::create_dir_all(d).map_err(StorageError::io("creating", d))?;
        }
        Ok(FsStorage { blobs, uploads })
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.blobs
            .join(d.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    fn upload_path(&self, id: &str) -> PathBuf {
        self.uploads.join(id)
    }
}

/// Runs blocking filesystem work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StorageError::Io {
            what: "running blocking IO",
            path: PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        })
    })
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StorageError::io("syncing directory", dir))
}

/// Advice to the kernel about a range of `file`; failure only costs speed.
fn fadvise(file: &File, offset: u64, len: u64, advice: libc::c_int) {
    // SAFETY: the fd is valid for the call; posix_fadvise touches no memory of ours.
    unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(file),
            offset as libc::off_t,
            len as libc::off_t,
            advice,
        );
    }
}

/// How far beyond the window being sent a large read has asked the kernel to read.
const READ_AHEAD: u64 = 256 << 20;
/// The size of each of those requests.
const READ_AHEAD_STEP: u64 = 32 << 20;

/// Maps `len` bytes of `file` at `offset` read-only and faults them in.
fn map_window(file: &File, offset: u64, len: u64) -> std::io::Result<Bytes> {
    let len = usize::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: committed blobs are never written or truncated (they arrive by rename and are
    // only ever unlinked, which leaves a mapping intact), so the mapped bytes cannot change.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(offset)
            .len(len)
            .map(file)?
    };
    if map.advise(memmap2::Advice::PopulateRead).is_err() {
        let _ = map.advise(memmap2::Advice::WillNeed);
    }
    Ok(Bytes::from_owner(map))
}

impl BlobStorage for FsStorage {
    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<u64>, StorageError>> {
        Box::pin(async move {
            let path = self.blob_path(digest);
            match tokio::fs::metadata(&path).await {
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(StorageError::io("reading metadata of", path)(e)),
            }
        })
    }

    fn read<'a>(
        &'a self,
        digest: &'a Digest,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'a, Result<ByteStream, StorageError>> {
        Box::pin(async move {
            let path = self.blob_path(digest);
            if len <= SMALL_BLOB {
                // Small blobs are read whole in one blocking call.
                let bytes = blocking(move || {
                    let mut f = File::open(&path).map_err(StorageError::io("opening", &path))?;
                    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
                    f.seek(SeekFrom::Start(offset))
                        .and_then(|_| f.read_exact(&mut buf))
                        .map_err(StorageError::io("reading", &path))?;
                    Ok(Bytes::from(buf))
                })
                .await?;
                return Ok(futures_util::stream::once(async move { Ok(bytes) }).boxed());
            }
            let file = blocking({
                let path = path.clone();
                move || File::open(&path).map_err(StorageError::io("opening", &path))
            })
            .await?;
            // One blocking reader per response maps the blob a window at a time and faults the
            // window in, a few windows ahead of the socket: the bytes go from the page cache to
            // the socket with one copy, and no window stays mapped once it is sent.
            let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(3);
            tokio::task::spawn_blocking(move || {
                let mut at = offset;
                let end = offset + len;
                // Large uploads are written around the page cache (see `direct`), so a blob
                // read soon after comes from the disk. The kernel's own readahead keeps one
                // request in flight, a third of the device's speed on the disks this runs on;
                // asking for READ_AHEAD beyond the window keeps its queue full.
                fadvise(&file, offset, len, libc::POSIX_FADV_SEQUENTIAL);
                let mut ahead = offset;
                while at < end {
                    while ahead < end && ahead < at + READ_AHEAD {
                        let n = (end - ahead).min(READ_AHEAD_STEP);
                        fadvise(&file, ahead, n, libc::POSIX_FADV_WILLNEED);
                        ahead += n;
                    }
                    let n = (end - at).min(MAP_WINDOW);
                    let r = map_window(&file, at, n).map_err(|e| {
                        std::io::Error::new(e.kind(), format!("mapping {}: {e}", path.display()))
                    });
                    let failed = r.is_err();
                    if tx.blocking_send(r).is_err() || failed {
                        return;
                    }
                    at += n;
                }
            });
            Ok(tokio_stream(rx))
        })
    }

    fn create_upload<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        let path = self.upload_path(id);
        Box::pin(blocking(move || {
            File::create(&path)
                .map(drop)
                .map_err(StorageError::io("creating", &path))
        }))
    }

    fn upload_len<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<u64>, StorageError>> {
        let path = self.upload_path(id);
        Box::pin(async move {
            match tokio::fs::metadata(&path).await {
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(StorageError::io("reading metadata of", path)(e)),
            }
        })
    }

    fn append<'a>(
        &'a self,
        id: &'a str,
        mut body: ByteStream,
        hasher: Option<Hasher>,
        placement: Placement,
    ) -> BoxFuture<'a, Result<Appended, StorageError>> {
        let path = self.upload_path(id);
        Box::pin(async move {
            let writer = blocking({
                let path = path.clone();
                let id = id.to_owned();
                move || match UploadWriter::open(&path, placement == Placement::Streamed) {
                    Ok(w) => Ok(w),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        Err(StorageError::UploadMissing(id))
                    }
                    Err(e) => Err(StorageError::io("opening", &path)(e)),
                }
            })
            .await?;
            // Receiving happens here, hashing and writing each on a blocking thread: the three
            // overlap (a chunk is shared, not copied). Chunks travel in batches of about
            // `BATCH` bytes, so the threads wake once per batch instead of once per socket read
            // (64 KiB on loopback), and several batches in flight keep the socket read while
            // the writer waits on a direct write.
            let (tx, mut rx) = mpsc::channel::<Vec<Bytes>>(BATCHES_IN_FLIGHT);
            let (htx, mut hrx) = mpsc::channel::<Vec<Bytes>>(BATCHES_IN_FLIGHT);
            let hashing = tokio::task::spawn_blocking(move || {
                let mut hasher = hasher;
                while let Some(batch) = hrx.blocking_recv() {
                    if let Some(h) = hasher.as_mut() {
                        batch.iter().for_each(|c| h.update(c));
                    }
                }
                hasher
            });
            let writer = tokio::task::spawn_blocking(move || -> Result<u64, StorageError> {
                let mut writer = writer;
                while let Some(batch) = rx.blocking_recv() {
                    for chunk in &batch {
                        writer.write(chunk)?;
                    }
                }
                writer.finish()
            });
            let mut received = 0u64;
            let mut body_error = None;
            let mut batch = Vec::new();
            let mut batched = 0usize;
            let mut due = tokio::time::Instant::now();
            loop {
                // A batch goes when it holds BATCH bytes, or BATCH_WAIT after its first
                // chunk came: a slow client's bytes still reach the disk as they arrive.
                let next = if batch.is_empty() {
                    Some(body.next().await)
                } else {
                    tokio::time::timeout_at(due, body.next()).await.ok()
                };
                let end = match next {
                    // Waited long enough: send what there is.
                    None => false,
                    Some(Some(Ok(c))) => {
                        if batch.is_empty() {
                            due = tokio::time::Instant::now() + BATCH_WAIT;
                        }
                        received += c.len() as u64;
                        batched += c.len();
                        batch.push(c);
                        if batched < BATCH {
                            continue;
                        }
                        false
                    }
                    Some(Some(Err(e))) => {
                        body_error = Some(e);
                        true
                    }
                    Some(None) => true,
                };
                if !batch.is_empty() {
                    batched = 0;
                    let out = std::mem::take(&mut batch);
                    let _ = htx.send(out.clone()).await;
                    if tx.send(out).await.is_err() {
                        // The writer failed (a full disk, say): read what the client is still
                        // sending, so that it gets the answer instead of a broken pipe.
                        if !end {
                            drain(&mut body).await;
                        }
                        break;
                    }
                }
                if end {
                    break;
                }
            }
            drop(tx);
            drop(htx);
            let len = writer.await.map_err(|e| StorageError::Io {
                what: "writing",
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })??;
            let hasher = hashing.await.map_err(|e| StorageError::Io {
                what: "hashing",
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
            if let Some(e) = body_error {
                return Err(StorageError::Body(e));
            }
            Ok(Appended {
                len,
                received,
                hasher,
            })
        })
    }

    fn replay<'a>(
        &'a self,
        id: &'a str,
        on_bytes: &'a mut (dyn FnMut(&[u8]) + Send),
    ) -> BoxFuture<'a, Result<u64, StorageError>> {
        let path = self.upload_path(id);
        Box::pin(async move {
            let (tx, mut rx) = mpsc::channel::<Result<Bytes, StorageError>>(4);
            tokio::task::spawn_blocking(move || {
                let mut f = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(StorageError::io("opening", &path)(e)));
                        return;
                    }
                };
                loop {
                    let mut buf = BytesMut::zeroed(READ_CHUNK);
                    match f.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            buf.truncate(n);
                            if tx.blocking_send(Ok(buf.freeze())).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx.blocking_send(Err(StorageError::io("reading", &path)(e)));
                            return;
                        }
                    }
                }
            });
            let mut total = 0u64;
            while let Some(chunk) = rx.recv().await {
                let chunk = chunk?;
                on_bytes(&chunk);
                total += chunk.len() as u64;
            }
            Ok(total)
        })
    }

    fn commit<'a>(
        &'a self,
        id: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        let from = self.upload_path(id);
        let to = self.blob_path(digest);
        let id = id.to_owned();
        Box::pin(blocking(move || {
            let dir = to.parent().map(Path::to_owned).unwrap_or_default();
            if to.exists() {
                // Someone committed the same content first: theirs stays, ours goes.
                return std::fs::remove_file(&from).map_err(StorageError::io("removing", &from));
            }
            let f = match File::open(&from) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StorageError::UploadMissing(id));
                }
                Err(e) => return Err(StorageError::io("opening", &from)(e)),
            };
            f.sync_all().map_err(StorageError::io("syncing", &from))?;
            drop(f);
            let created = !dir.exists();
            std::fs::create_dir_all(&dir).map_err(StorageError::io("creating", &dir))?;
            std::fs::rename(&from, &to).map_err(StorageError::io("renaming into place", &to))?;
            sync_dir(&dir)?;
            if created && let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
            Ok(())
        }))
    }

    fn read_upload<'a>(
        &'a self,
        id: &'a str,
        offset: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<Bytes, StorageError>> {
        let path = self.upload_path(id);
        let id = id.to_owned();
        Box::pin(blocking(move || {
            use std::os::unix::fs::FileExt;
            let f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StorageError::UploadMissing(id));
                }
                Err(e) => return Err(StorageError::io("opening", &path)(e)),
            };
            // Sized to what is written: readers of a growing upload often find nothing new.
            let written = f
                .metadata()
                .map_err(StorageError::io("reading metadata of", &path))?
                .len();
            let want = usize::try_from(written.saturating_sub(offset))
                .unwrap_or(max)
                .min(max);
            let mut buf = BytesMut::zeroed(want);
            let mut n = 0;
            while n < want {
                match f.read_at(&mut buf[n..], offset + n as u64) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(StorageError::io("reading", &path)(e)),
                }
            }
            buf.truncate(n);
            Ok(buf.freeze())
        }))
    }

    fn remove_upload<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        let path = self.upload_path(id);
        Box::pin(async move {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(StorageError::io("removing", path)(e)),
            }
        })
    }

    fn stale_uploads(&self, before: u64) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        let dir = self.uploads.clone();
        Box::pin(blocking(move || {
            let mut out = Vec::new();
            let entries = std::fs::read_dir(&dir).map_err(StorageError::io("listing", &dir))?;
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
                    .unwrap_or(Duration::ZERO);
                if modified.as_secs() < before
                    && let Some(name) = entry.file_name().to_str()
                {
                    out.push(name.to_owned());
                }
            }
            Ok(out)
        }))
    }

    fn delete<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<(), StorageError>> {
        let path = self.blob_path(digest);
        Box::pin(async move {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(StorageError::io("removing", path)(e)),
            }
        })
    }

    fn blob_files(&self) -> BoxFuture<'_, Result<Vec<BlobFile>, StorageError>> {
        let blobs = self.blobs.clone();
        Box::pin(blocking(move || list_blob_files(&blobs)))
    }
}

/// Reads and drops up to 16 MiB more of `body`, for up to 10 seconds.
async fn drain(body: &mut ByteStream) {
    let mut left: usize = 16 << 20;
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(c)) = body.next().await {
            left = left.saturating_sub(c.len());
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

/// The blob files under `blobs/<algorithm>/<xx>/<hex>`.
fn list_blob_files(blobs: &Path) -> Result<Vec<BlobFile>, StorageError> {
    let mut out = Vec::new();
    let read = |dir: &Path| -> Result<Vec<std::fs::DirEntry>, StorageError> {
        match std::fs::read_dir(dir) {
            Ok(entries) => Ok(entries.flatten().collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(StorageError::io("listing", dir)(e)),
        }
    };
    for alg in read(blobs)? {
        let Some(alg_name) = alg.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        for prefix in read(&alg.path())? {
            for file in read(&prefix.path())? {
                let Some(hex) = file.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let Ok(digest) = format!("{alg_name}:{hex}").parse::<Digest>() else {
                    continue;
                };
                let Ok(meta) = file.metadata() else { continue };
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                out.push(BlobFile {
                    digest,
                    size: meta.len(),
                    written: modified,
                });
            }
        }
    }
    Ok(out)
}

fn tokio_stream<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
) -> futures_util::stream::BoxStream<'static, T> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
        .boxed()
}
