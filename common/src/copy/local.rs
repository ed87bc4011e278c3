//! The local store as a copy source and destination.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;

use crate::digest::Digest;
use crate::image::BlobRef;
use crate::progress::{BlobKind, CopyEvent, Reporter, Skip};
use crate::reference::{Reference, RepoName};
use crate::store::{IngestStart, Lease, LocalStore, StoreError};

use super::{CopiedImage, CopyError, CopyOptions, Dest, Source, Transfer, copy_image};
use crate::blob::{BlobStream, Fetched, file_stream};

/// Reads images from the local store.
pub struct LocalSource {
    store: LocalStore,
    image: Option<Digest>,
    origins: Vec<(String, RepoName)>,
}

impl LocalSource {
    /// A source resolving names in `store`.
    pub fn new(store: LocalStore) -> LocalSource {
        LocalSource {
            store,
            image: None,
            origins: Vec::new(),
        }
    }

    /// A source whose default image (`resolve(None)`) is the stored manifest `digest`.
    pub fn for_image(store: LocalStore, digest: Digest) -> LocalSource {
        LocalSource {
            store,
            image: Some(digest),
            origins: Vec::new(),
        }
    }

    /// Names repositories the image was pulled from or pushed to (its repo digests), so a push
    /// to the same registry can mount blobs instead of uploading them.
    pub fn with_origins(mut self, repos: impl IntoIterator<Item = RepoName>) -> LocalSource {
        self.origins = repos
            .into_iter()
            .map(|r| (crate::reference::api_host(r.domain()).to_owned(), r))
            .collect();
        self
    }
}

impl Source for LocalSource {
    fn resolve<'a>(
        &'a self,
        reference: Option<&'a Reference>,
    ) -> BoxFuture<'a, Result<Fetched, CopyError>> {
        Box::pin(async move {
            let (digest, media_type) = match (reference, &self.image) {
                (Some(r), _) => {
                    let found = self
                        .store
                        .resolve(r)
                        .await?
                        .ok_or_else(|| CopyError::NotFound(r.familiar()))?;
                    (found.digest, found.media_type)
                }
                (None, Some(d)) => {
                    let rec = self
                        .store
                        .image(d)
                        .await?
                        .ok_or_else(|| CopyError::NotFound(d.to_string()))?;
                    (rec.digest, rec.media_type)
                }
                (None, None) => return Err(CopyError::NotFound("(no image given)".into())),
            };
            let bytes = self.store.read_blob(&digest).await?;
            Ok(Fetched {
                bytes: Bytes::from(bytes),
                media_type,
                digest,
            })
        })
    }

    fn manifest<'a>(&'a self, blob: &'a BlobRef) -> BoxFuture<'a, Result<Bytes, CopyError>> {
        Box::pin(async move { Ok(Bytes::from(self.store.read_blob(&blob.digest).await?)) })
    }

    fn blob<'a>(
        &'a self,
        blob: &'a BlobRef,
        offset: u64,
    ) -> BoxFuture<'a, Result<BlobStream, CopyError>> {
        Box::pin(async move {
            let path = self.store.blob_path(&blob.digest);
            match file_stream(&path, offset).await {
                Ok(s) => Ok(s),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(StoreError::BlobUnknown(blob.digest.clone()).into())
                }
                Err(e) => Err(StoreError::io("reading blob", path)(e).into()),
            }
        })
    }

    fn verified_path(&self, blob: &BlobRef) -> Option<PathBuf> {
        let p = self.store.blob_path(&blob.digest);
        p.exists().then_some(p)
    }

    fn mount_candidates(&self) -> Vec<(String, RepoName)> {
        self.origins.clone()
    }
}

/// Copies an image from `src` into `store` under `names` as one transaction: when the copy
/// fails, what only it brought is removed again (a failed cleanup is logged; the copy's error
/// is the one returned). `record_repo_digest` as [`LocalDest::new`].
pub async fn copy_to_store(
    src: &dyn Source,
    store: &LocalStore,
    record_repo_digest: bool,
    reference: Option<&Reference>,
    names: &[Reference],
    opts: &CopyOptions,
    reporter: &dyn Reporter,
) -> Result<CopiedImage, CopyError> {
    let dest = LocalDest::new(store.clone(), record_repo_digest).await?;
    match copy_image(src, &dest, reference, names, opts, reporter).await {
        Ok(copied) => {
            dest.finish().await?;
            Ok(copied)
        }
        Err(e) => {
            if let Err(cleanup) = dest.abort().await {
                tracing::warn!(error = %crate::error::Chain(&cleanup), "cleaning up after a failed copy into the store");
            }
            Err(e)
        }
    }
}

/// Writes images into the local store, under a lease that keeps what it relies on from being
/// collected. Call [`LocalDest::finish`] after the copies, or [`LocalDest::abort`] after a
/// failure to remove what only the failed copy brought.
pub struct LocalDest {
    store: LocalStore,
    lease: Lease,
    record_repo_digest: bool,
    /// One permit per blob writer thread: `abort` takes them all, so no writer of this copy
    /// can still create or commit a file after it has cleaned up.
    writers: Arc<tokio::sync::Semaphore>,
}

/// More permits than writers can ever be running at once.
const WRITER_PERMITS: u32 = 1 << 20;

enum Msg {
    Data(Bytes),
    Finish,
}

impl LocalDest {
    /// A destination writing into `store`. `record_repo_digest`: remember the source
    /// repository's digest of each image (for pulls).
    pub async fn new(store: LocalStore, record_repo_digest: bool) -> Result<LocalDest, StoreError> {
        let lease = store.lease().await?;
        Ok(LocalDest {
            store,
            lease,
            record_repo_digest,
            writers: Arc::new(tokio::sync::Semaphore::new(WRITER_PERMITS as usize)),
        })
    }

    /// Ends the copy successfully.
    pub async fn finish(self) -> Result<(), StoreError> {
        self.lease.release().await
    }

    /// Ends a failed copy: once its blob writers have stopped, blobs it brought that no image
    /// uses are deleted, and so are its unfinished downloads (nothing of the image is kept).
    pub async fn abort(self) -> Result<(), StoreError> {
        let _all_stopped = self.writers.acquire_many(WRITER_PERMITS).await;
        let digests = self.lease.digests().await?;
        self.lease.release().await?;
        self.store.gc(Some(digests.clone())).await?;
        let store = self.store.clone();
        let root = store.root().to_owned();
        tokio::task::spawn_blocking(move || store.discard_partials_blocking(&digests))
            .await
            .map_err(|e| {
                StoreError::io("discarding unfinished downloads", root)(std::io::Error::other(e))
            })?;
        Ok(())
    }

    async fn ingest_once(
        &self,
        blob: &BlobRef,
        kind: BlobKind,
        src: &dyn Source,
        reporter: &dyn Reporter,
        resumed_at: &mut u64,
    ) -> Result<Transfer, CopyError> {
        let store = self.store.clone();
        let b = blob.clone();
        let permit = self.writers.clone().acquire_owned().await.ok();
        let start = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            store.ingest_known_blocking(&b)
        })
        .await
        .map_err(|e| join_error(blob, e))??;
        let mut ing = match start {
            IngestStart::Present => return Ok(Transfer::Skipped(Skip::Exists)),
            IngestStart::Write(ing) => ing,
        };
        let offset = ing.offset();
        *resumed_at = offset;
        reporter.report(CopyEvent::BlobStarted {
            digest: blob.digest.clone(),
            size: blob.size,
            kind,
            offset,
        });
        let mut stream = src.blob(blob, offset).await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(16);
        let expected = blob.clone();
        let permit = self.writers.clone().acquire_owned().await.ok();
        let writer = tokio::task::spawn_blocking(move || -> Result<Option<()>, StoreError> {
            let _permit = permit;
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    Msg::Data(b) => ing.write(&b)?,
                    Msg::Finish => {
                        ing.commit(Some((&expected.digest, expected.size)))?;
                        return Ok(Some(()));
                    }
                }
            }
            // The sender went away without finishing: keep the partial file for a resume.
            Ok(None)
        });
        let mut done = offset;
        let mut failure = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => {
                    done += c.len() as u64;
                    if done > blob.size {
                        failure = Some(CopyError::SizeMismatch {
                            digest: blob.digest.clone(),
                            expected: blob.size,
                            actual: done,
                        });
                        break;
                    }
                    reporter.report(CopyEvent::BlobProgress {
                        digest: blob.digest.clone(),
                        done,
                    });
                    if tx.send(Msg::Data(c)).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    failure = Some(CopyError::from_stream(&blob.digest, e));
                    break;
                }
            }
        }
        if failure.is_none() {
            let _ = tx.send(Msg::Finish).await;
        }
        drop(tx);
        let written = writer.await.map_err(|e| join_error(blob, e))?;
        match (written, failure) {
            (Err(e), _) => Err(e.into()),
            (Ok(_), Some(f)) => Err(f),
            (Ok(Some(())), None) => Ok(Transfer::Sent),
            (Ok(None), None) => Err(CopyError::Transfer {
                digest: blob.digest.clone(),
                source: std::io::Error::other("blob writer stopped"),
            }),
        }
    }
}

fn join_error(blob: &BlobRef, e: tokio::task::JoinError) -> CopyError {
    CopyError::Transfer {
        digest: blob.digest.clone(),
        source: std::io::Error::other(e),
    }
}

impl Dest for LocalDest {
    fn prepare<'a>(&'a self, blobs: &'a [BlobRef]) -> BoxFuture<'a, Result<(), CopyError>> {
        Box::pin(async move {
            let digests: Vec<Digest> = blobs.iter().map(|b| b.digest.clone()).collect();
            Ok(self.lease.protect_all(&digests).await?)
        })
    }

    fn has_blob<'a>(&'a self, blob: &'a BlobRef) -> BoxFuture<'a, Result<Option<Skip>, CopyError>> {
        Box::pin(async move {
            self.lease.protect(&blob.digest).await?;
            Ok(
                (self.store.blob_size(&blob.digest).await == Some(blob.size))
                    .then_some(Skip::Exists),
            )
        })
    }

    fn put_blob<'a>(
        &'a self,
        blob: &'a BlobRef,
        kind: BlobKind,
        src: &'a dyn Source,
        reporter: &'a dyn Reporter,
    ) -> BoxFuture<'a, Result<Transfer, CopyError>> {
        Box::pin(async move {
            self.lease.protect(&blob.digest).await?;
            if let Some(path) = src.verified_path(blob) {
                reporter.report(CopyEvent::BlobStarted {
                    digest: blob.digest.clone(),
                    size: blob.size,
                    kind,
                    offset: 0,
                });
                let store = self.store.clone();
                let b = blob.clone();
                tokio::task::spawn_blocking(move || store.adopt_verified_blocking(&path, &b))
                    .await
                    .map_err(|e| join_error(blob, e))??;
                reporter.report(CopyEvent::BlobProgress {
                    digest: blob.digest.clone(),
                    done: blob.size,
                });
                return Ok(Transfer::Sent);
            }
            let mut resumed_at = 0;
            match self
                .ingest_once(blob, kind, src, reporter, &mut resumed_at)
                .await
            {
                // Resumed content that turns out wrong (a crash can leave garbage in a partial
                // file): the partial file was removed, so this attempt starts from zero.
                Err(CopyError::Store(
                    StoreError::DigestMismatch { .. } | StoreError::SizeMismatch { .. },
                )) if resumed_at > 0 => {
                    self.ingest_once(blob, kind, src, reporter, &mut resumed_at)
                        .await
                }
                other => other,
            }
        })
    }

    fn put_manifest<'a>(&'a self, manifest: &'a Fetched) -> BoxFuture<'a, Result<(), CopyError>> {
        Box::pin(async move {
            self.lease.protect(&manifest.digest).await?;
            let d = self
                .store
                .write_blob_with(&manifest.bytes, manifest.digest.algorithm())
                .await?;
            if d != manifest.digest {
                return Err(CopyError::DigestMismatch {
                    expected: manifest.digest.clone(),
                    actual: d,
                });
            }
            Ok(())
        })
    }

    fn commit<'a>(
        &'a self,
        image: &'a CopiedImage,
        names: &'a [Reference],
        source_repo: Option<&'a RepoName>,
    ) -> BoxFuture<'a, Result<(), CopyError>> {
        Box::pin(async move {
            self.put_manifest(&image.top).await?;
            self.store.sync_blob_dirs().await?;
            let repo_digest = match source_repo {
                Some(repo) if self.record_repo_digest => Some((repo, &image.source_digest)),
                _ => None,
            };
            self.store
                .put_image(
                    &image.top.digest,
                    &image.top.media_type,
                    image.config.as_ref(),
                    names,
                    repo_digest,
                )
                .await?;
            Ok(())
        })
    }
}
