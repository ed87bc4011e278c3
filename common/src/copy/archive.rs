//! Archives as copy endpoints: an image staged from an archive is a [`Source`], and
//! [`ArchiveDest`] is a [`Dest`] that writes one (the formats themselves are `crate::archive`'s).

use std::collections::HashSet;
use std::path::PathBuf;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;

use super::{CopiedImage, CopyError, Dest, Source, Transfer, open_verified};
use crate::archive::{ArchiveError, ArchiveTarget, ArchiveWriter, ArchivedImage, StagedImage};
use crate::blob::{BlobStream, Fetched, bytes_stream, verified};
use crate::digest::Digest;
use crate::image::{BlobRef, Manifest, manifest_blobs};
use crate::progress::{BlobKind, CopyEvent, Reporter, Skip};
use crate::reference::{Reference, RepoName};

impl Source for StagedImage<'_> {
    fn resolve<'a>(
        &'a self,
        _reference: Option<&'a Reference>,
    ) -> BoxFuture<'a, Result<Fetched, CopyError>> {
        Box::pin(async move { Ok(self.top.clone()) })
    }

    fn manifest<'a>(&'a self, blob: &'a BlobRef) -> BoxFuture<'a, Result<Bytes, CopyError>> {
        Box::pin(async move { Ok(self.read_blob(&blob.digest)?) })
    }

    fn blob<'a>(
        &'a self,
        blob: &'a BlobRef,
        offset: u64,
    ) -> BoxFuture<'a, Result<BlobStream, CopyError>> {
        Box::pin(async move { Ok(self.open_blob(blob, offset).await?) })
    }

    fn verified_path(&self, blob: &BlobRef) -> Option<PathBuf> {
        self.verified_file(blob)
    }
}

/// A copy destination writing an archive. Blobs are written one at a time, in the order the
/// copies bring them; [`ArchiveDest::finish`] writes the metadata files and closes it.
pub struct ArchiveDest {
    writer: ArchiveWriter,
    written: std::sync::Mutex<HashSet<Digest>>,
    images: std::sync::Mutex<Vec<ArchivedImage>>,
}

impl ArchiveDest {
    /// Starts writing an archive to `target`.
    pub fn new(target: ArchiveTarget) -> Result<ArchiveDest, ArchiveError> {
        Ok(ArchiveDest {
            writer: ArchiveWriter::new(target)?,
            written: std::sync::Mutex::new(HashSet::new()),
            images: std::sync::Mutex::new(Vec::new()),
        })
    }

    fn mark_written(&self, d: &Digest) -> bool {
        self.written
            .lock()
            .map(|mut w| w.insert(d.clone()))
            .unwrap_or(false)
    }

    fn is_written(&self, d: &Digest) -> bool {
        self.written.lock().map(|w| w.contains(d)).unwrap_or(false)
    }

    async fn write_stream(
        &self,
        blob: &BlobRef,
        mut stream: BlobStream,
        reporter: &dyn Reporter,
    ) -> Result<(), CopyError> {
        let member = self.writer.blob(&blob.digest, blob.size).await?;
        let mut done = 0u64;
        let mut failure = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => {
                    done += c.len() as u64;
                    reporter.report(CopyEvent::BlobProgress {
                        digest: blob.digest.clone(),
                        done,
                    });
                    if !member.send(c).await {
                        break;
                    }
                }
                Err(e) => {
                    failure = Some(CopyError::from_stream(&blob.digest, e));
                    break;
                }
            }
        }
        let written = member.close().await;
        if let Some(f) = failure {
            return Err(f);
        }
        written?;
        Ok(())
    }

    async fn write_bytes(&self, digest: &Digest, bytes: &Bytes) -> Result<(), CopyError> {
        if !self.mark_written(digest) {
            return Ok(());
        }
        let blob = BlobRef {
            digest: digest.clone(),
            size: bytes.len() as u64,
            media_type: String::new(),
        };
        self.write_stream(
            &blob,
            verified(bytes_stream(bytes, 0), &blob),
            &crate::progress::Silent,
        )
        .await
    }

    /// Writes `oci-layout`, `index.json` and `manifest.json`, and closes the archive.
    pub async fn finish(self) -> Result<(), ArchiveError> {
        let images =
            std::mem::take(&mut *self.images.lock().map_err(|_| ArchiveError::WriterGone)?);
        self.writer.finish(&images).await
    }
}

impl Dest for ArchiveDest {
    fn has_blob<'a>(&'a self, blob: &'a BlobRef) -> BoxFuture<'a, Result<Option<Skip>, CopyError>> {
        Box::pin(async move { Ok(self.is_written(&blob.digest).then_some(Skip::Exists)) })
    }

    fn put_blob<'a>(
        &'a self,
        blob: &'a BlobRef,
        kind: BlobKind,
        src: &'a dyn Source,
        reporter: &'a dyn Reporter,
    ) -> BoxFuture<'a, Result<Transfer, CopyError>> {
        Box::pin(async move {
            if !self.mark_written(&blob.digest) {
                return Ok(Transfer::Skipped(Skip::Exists));
            }
            reporter.report(CopyEvent::BlobStarted {
                digest: blob.digest.clone(),
                size: blob.size,
                kind,
                offset: 0,
            });
            let stream = open_verified(src, blob).await?;
            self.write_stream(blob, stream, reporter).await?;
            Ok(Transfer::Sent)
        })
    }

    fn put_manifest<'a>(&'a self, manifest: &'a Fetched) -> BoxFuture<'a, Result<(), CopyError>> {
        Box::pin(async move { self.write_bytes(&manifest.digest, &manifest.bytes).await })
    }

    fn commit<'a>(
        &'a self,
        image: &'a CopiedImage,
        names: &'a [Reference],
        _source_repo: Option<&'a RepoName>,
    ) -> BoxFuture<'a, Result<(), CopyError>> {
        Box::pin(async move {
            self.write_bytes(&image.top.digest, &image.top.bytes)
                .await?;
            let (config, layers) = match Manifest::parse(
                &image.top.bytes,
                &image.top.media_type,
                &image.top.digest,
            )? {
                Manifest::Image(m) => {
                    let (c, l) = manifest_blobs(&m, &image.top.digest)?;
                    (Some(c.digest), l.into_iter().map(|l| l.digest).collect())
                }
                Manifest::Index(_) => (None, Vec::new()),
            };
            if let Ok(mut imgs) = self.images.lock() {
                imgs.push(ArchivedImage {
                    top: image.top.clone(),
                    config,
                    layers,
                    names: names.to_vec(),
                });
            }
            Ok(())
        })
    }

    fn concurrency(&self) -> usize {
        1
    }
}
