//! A registry repository as a copy source and destination.

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;

use crate::client::{Operation, Repository, Uploaded};
use crate::image::BlobRef;
use crate::progress::{BlobKind, CopyEvent, Reporter, Skip};
use crate::reference::{Reference, RepoName};

use super::{CopiedImage, CopyError, Dest, Source, Transfer, open_verified};
use crate::blob::{BlobStream, Fetched};

/// Reads images from a registry repository.
pub struct RegistrySource {
    repo: Repository,
}

impl RegistrySource {
    /// A source reading `repo`.
    pub fn new(repo: Repository) -> RegistrySource {
        RegistrySource { repo }
    }
}

impl Source for RegistrySource {
    fn resolve<'a>(
        &'a self,
        reference: Option<&'a Reference>,
    ) -> BoxFuture<'a, Result<Fetched, CopyError>> {
        Box::pin(async move {
            let selector = reference.map_or_else(|| "latest".to_owned(), Reference::selector);
            Ok(self.repo.get_manifest(&selector).await?)
        })
    }

    fn manifest<'a>(&'a self, blob: &'a BlobRef) -> BoxFuture<'a, Result<Bytes, CopyError>> {
        Box::pin(async move { Ok(self.repo.get_manifest(blob.digest.as_str()).await?.bytes) })
    }

    fn blob<'a>(
        &'a self,
        blob: &'a BlobRef,
        offset: u64,
    ) -> BoxFuture<'a, Result<BlobStream, CopyError>> {
        Box::pin(async move { Ok(self.repo.get_blob(blob, offset).await?) })
    }

    fn mount_candidates(&self) -> Vec<(String, RepoName)> {
        vec![(self.repo.host().to_owned(), self.repo.name().clone())]
    }
}

/// Writes images into a registry repository.
pub struct RegistryDest {
    repo: Repository,
    concurrency: usize,
}

impl RegistryDest {
    /// A destination writing to `repo`, with up to `concurrency` blob uploads at once.
    pub fn new(repo: Repository, concurrency: usize) -> RegistryDest {
        RegistryDest { repo, concurrency }
    }
}

impl Dest for RegistryDest {
    fn has_blob<'a>(&'a self, blob: &'a BlobRef) -> BoxFuture<'a, Result<Option<Skip>, CopyError>> {
        Box::pin(async move {
            Ok(self
                .repo
                .blob_exists(&blob.digest, Operation::Push)
                .await?
                .map(|_| Skip::Exists))
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
            let mount_from = src
                .mount_candidates()
                .into_iter()
                .find(|(host, name)| host == self.repo.host() && name != self.repo.name())
                .map(|(_, name)| name);
            reporter.report(CopyEvent::BlobStarted {
                digest: blob.digest.clone(),
                size: blob.size,
                kind,
                offset: 0,
            });
            // The registry verifies the digest when the upload completes (DIGEST_INVALID).
            let inner = open_verified(src, blob).await?;
            let (tx, mut rx) = tokio::sync::watch::channel(0u64);
            let counted: BlobStream = Box::pin(inner.scan(0u64, move |done, chunk| {
                if let Ok(c) = &chunk {
                    *done += c.len() as u64;
                    let _ = tx.send(*done);
                }
                futures_util::future::ready(Some(chunk))
            }));
            let push = self.repo.push_blob(blob, counted, mount_from.as_ref());
            let progress = async {
                while rx.changed().await.is_ok() {
                    let done = *rx.borrow_and_update();
                    reporter.report(CopyEvent::BlobProgress {
                        digest: blob.digest.clone(),
                        done,
                    });
                }
            };
            let (pushed, ()) = futures_util::future::join(push, progress).await;
            match pushed {
                Ok(Uploaded::Sent) => Ok(Transfer::Sent),
                Ok(Uploaded::Mounted) => Ok(Transfer::Skipped(Skip::Mounted)),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn put_manifest<'a>(&'a self, manifest: &'a Fetched) -> BoxFuture<'a, Result<(), CopyError>> {
        Box::pin(async move {
            self.repo
                .put_manifest(
                    manifest.digest.as_str(),
                    &manifest.bytes,
                    &manifest.media_type,
                )
                .await?;
            Ok(())
        })
    }

    fn commit<'a>(
        &'a self,
        image: &'a CopiedImage,
        names: &'a [Reference],
        _source_repo: Option<&'a RepoName>,
    ) -> BoxFuture<'a, Result<(), CopyError>> {
        Box::pin(async move {
            let top = &image.top;
            let tags: Vec<String> = names
                .iter()
                .filter_map(|n| n.tag().map(|t| t.to_string()))
                .collect();
            if tags.is_empty() {
                self.repo
                    .put_manifest(top.digest.as_str(), &top.bytes, &top.media_type)
                    .await?;
            }
            for tag in tags {
                self.repo
                    .put_manifest(&tag, &top.bytes, &top.media_type)
                    .await?;
            }
            Ok(())
        })
    }

    fn concurrency(&self) -> usize {
        self.concurrency
    }
}
