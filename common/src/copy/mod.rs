//! The copy engine: one operation moves an image (or an index with its platforms) from any
//! [`Source`] to any [`Dest`]. pull, push, save, load and import are all copies.
//!
//! A copy resolves the source reference, picks one platform of an index (or keeps them all),
//! transfers the config and layers the destination lacks (concurrently where the destination
//! allows it), writes child manifests, and finally commits the top manifest under the wanted
//! names. Every byte is verified against its digest before it is committed: the local store
//! verifies as it ingests, and other destinations wrap their input in [`verified`].

mod archive;
mod assembled;
mod import;
mod local;
mod registry;

use std::collections::HashSet;
use std::io;
use std::path::PathBuf;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt, TryStreamExt};

use crate::archive::ArchiveError;
use crate::blob::{BlobStream, Fetched, Mismatch, verified};
use crate::client::ClientError;
use crate::digest::Digest;
use crate::image::{BlobRef, ImageError, Manifest, Platform, manifest_blobs};
use crate::media_type;
use crate::progress::{BlobKind, CopyEvent, Reporter, Skip};
use crate::reference::{Reference, RepoName};
use crate::store::StoreError;

pub use archive::ArchiveDest;
pub use assembled::AssembledImage;
pub use import::{ImportOptions, ImportSource};
pub use local::{LocalDest, LocalSource, copy_to_store};
pub use registry::{RegistryDest, RegistrySource};

/// Errors of a copy, from whichever store failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The local store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A registry.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// An archive.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// A manifest or config.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Content that does not match its digest.
    #[error("digest mismatch for {expected}: received content hashes to {actual}")]
    DigestMismatch {
        /// The digest it should have.
        expected: Digest,
        /// What it hashes to.
        actual: Digest,
    },
    /// Content of another size than its descriptor says.
    #[error("size mismatch for {digest}: expected {expected} bytes, received {actual}")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// Its descriptor's size.
        expected: u64,
        /// What arrived.
        actual: u64,
    },
    /// The source has no such image.
    #[error("image not found: {0}")]
    NotFound(String),
    /// Reading or writing a blob stream.
    #[error("transferring {digest}")]
    Transfer {
        /// The blob.
        digest: Digest,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
}

impl CopyError {
    /// Turns a stream error back into the mismatch it reports, if it is one.
    pub fn from_stream(digest: &Digest, e: io::Error) -> CopyError {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<Mismatch>())
        {
            Some(Mismatch::Digest(expected, actual)) => CopyError::DigestMismatch {
                expected: expected.clone(),
                actual: actual.clone(),
            },
            Some(Mismatch::Size(digest, expected, actual)) => CopyError::SizeMismatch {
                digest: digest.clone(),
                expected: *expected,
                actual: *actual,
            },
            None => CopyError::Transfer {
                digest: digest.clone(),
                source: e,
            },
        }
    }
}

/// Where images come from.
pub trait Source: Send + Sync {
    /// Finds the top-level manifest for `reference` (`None`: the source's only image).
    fn resolve<'a>(
        &'a self,
        reference: Option<&'a Reference>,
    ) -> BoxFuture<'a, Result<Fetched, CopyError>>;
    /// Fetches a manifest by descriptor. The engine verifies the digest.
    fn manifest<'a>(&'a self, blob: &'a BlobRef) -> BoxFuture<'a, Result<Bytes, CopyError>>;
    /// Opens a blob, starting at `offset`.
    fn blob<'a>(
        &'a self,
        blob: &'a BlobRef,
        offset: u64,
    ) -> BoxFuture<'a, Result<BlobStream, CopyError>>;
    /// A local file that is already verified to hold `blob`, if the source has one.
    fn verified_path(&self, _blob: &BlobRef) -> Option<PathBuf> {
        None
    }
    /// Registry repositories (API host, name) that likely hold this source's blobs, for
    /// cross-repository mounts: the registry it reads, or where a local image came from.
    fn mount_candidates(&self) -> Vec<(String, RepoName)> {
        Vec::new()
    }
}

/// What the copy of one image produced.
#[derive(Clone, Debug)]
pub struct CopiedImage {
    /// The top-level manifest written to the destination (one platform's, or the index).
    pub top: Fetched,
    /// The digest the source reference resolved to (an index when one platform was picked).
    pub source_digest: Digest,
    /// The config digest: of the image, or of the host platform's entry of a copied index.
    pub config: Option<Digest>,
}

/// Where images go.
pub trait Dest: Send + Sync {
    /// Called with every blob of a manifest before any is transferred (the local store leases
    /// them all at once).
    fn prepare<'a>(&'a self, _blobs: &'a [BlobRef]) -> BoxFuture<'a, Result<(), CopyError>> {
        Box::pin(async { Ok(()) })
    }
    /// Whether the destination already has the blob. Local stores also protect it from
    /// collection for the rest of the copy.
    fn has_blob<'a>(&'a self, blob: &'a BlobRef) -> BoxFuture<'a, Result<Option<Skip>, CopyError>>;
    /// Transfers a blob from `src`, verified, reporting progress.
    fn put_blob<'a>(
        &'a self,
        blob: &'a BlobRef,
        kind: BlobKind,
        src: &'a dyn Source,
        reporter: &'a dyn Reporter,
    ) -> BoxFuture<'a, Result<Transfer, CopyError>>;
    /// Writes a child manifest (of an index) by digest.
    fn put_manifest<'a>(&'a self, manifest: &'a Fetched) -> BoxFuture<'a, Result<(), CopyError>>;
    /// Writes the top-level manifest and names it.
    fn commit<'a>(
        &'a self,
        image: &'a CopiedImage,
        names: &'a [Reference],
        source_repo: Option<&'a RepoName>,
    ) -> BoxFuture<'a, Result<(), CopyError>>;
    /// How many blobs may be transferred at once.
    fn concurrency(&self) -> usize {
        8
    }
}

/// How a blob arrived at the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transfer {
    /// Its bytes were transferred.
    Sent,
    /// It needed no transfer after all.
    Skipped(Skip),
}

/// Options of a copy.
#[derive(Clone, Debug, Default)]
pub struct CopyOptions {
    /// The platform to pick from an index (default: the host's).
    pub platform: Option<Platform>,
    /// Copy every platform of an index, and the index itself.
    pub all_platforms: bool,
}

/// Opens `blob` in `src` for a destination that does not verify by itself: wrapped in
/// [`verified`], unless the source holds it in a file it already verified (the local store
/// verifies blobs as it writes them; hashing them again on every push would only cost CPU).
pub async fn open_verified(src: &dyn Source, blob: &BlobRef) -> Result<BlobStream, CopyError> {
    let stream = src.blob(blob, 0).await?;
    Ok(if src.verified_path(blob).is_some() {
        stream
    } else {
        verified(stream, blob)
    })
}

/// Copies the image `reference` names in `src` to `dst` under `names`.
pub async fn copy_image(
    src: &dyn Source,
    dst: &dyn Dest,
    reference: Option<&Reference>,
    names: &[Reference],
    opts: &CopyOptions,
    reporter: &dyn Reporter,
) -> Result<CopiedImage, CopyError> {
    let top = src.resolve(reference).await?;
    reporter.report(CopyEvent::Resolved {
        reference: reference.map(|r| r.to_string()).unwrap_or_default(),
        digest: top.digest.clone(),
    });
    let source_digest = top.digest.clone();
    let platform = opts.platform.clone().unwrap_or_else(Platform::host);
    let parsed = Manifest::parse(&top.bytes, &top.media_type, &top.digest)?;
    let copied = match parsed {
        Manifest::Image(m) => {
            let (config, _) = manifest_blobs(&m, &top.digest)?;
            copy_blobs(src, dst, &top.digest, &m, reporter).await?;
            CopiedImage {
                top,
                source_digest,
                config: Some(config.digest),
            }
        }
        Manifest::Index(index) if opts.all_platforms => {
            let mut host_config = None;
            for entry in index.manifests() {
                let child = BlobRef::from_descriptor(entry, &top.digest)?;
                if !media_type::is_manifest(&child.media_type) {
                    continue;
                }
                let fetched = fetch_child(src, &child).await?;
                let Manifest::Image(m) =
                    Manifest::parse(&fetched.bytes, &fetched.media_type, &fetched.digest)?
                else {
                    continue;
                };
                copy_blobs(src, dst, &fetched.digest, &m, reporter).await?;
                let (config, _) = manifest_blobs(&m, &fetched.digest)?;
                if host_config.is_none()
                    && Platform::of_descriptor(entry).is_some_and(|p| platform.matches(&p))
                {
                    host_config = Some(config.digest);
                }
                dst.put_manifest(&fetched).await?;
                reporter.report(CopyEvent::ManifestWritten {
                    digest: fetched.digest.clone(),
                });
            }
            CopiedImage {
                top,
                source_digest,
                config: host_config,
            }
        }
        Manifest::Index(index) => {
            let entry = platform.select(&index, &top.digest)?;
            let child = BlobRef::from_descriptor(entry, &top.digest)?;
            let fetched = fetch_child(src, &child).await?;
            let Manifest::Image(m) =
                Manifest::parse(&fetched.bytes, &fetched.media_type, &fetched.digest)?
            else {
                return Err(ImageError::MediaType {
                    media_type: fetched.media_type.clone(),
                    digest: fetched.digest.clone(),
                }
                .into());
            };
            let (config, _) = manifest_blobs(&m, &fetched.digest)?;
            copy_blobs(src, dst, &fetched.digest, &m, reporter).await?;
            CopiedImage {
                top: fetched,
                source_digest,
                config: Some(config.digest),
            }
        }
    };
    let source_repo = reference.map(Reference::repo);
    dst.commit(&copied, names, source_repo).await?;
    reporter.report(CopyEvent::ManifestWritten {
        digest: copied.top.digest.clone(),
    });
    Ok(copied)
}

async fn fetch_child(src: &dyn Source, child: &BlobRef) -> Result<Fetched, CopyError> {
    let bytes = src.manifest(child).await?;
    let actual = Digest::of(child.digest.algorithm(), &bytes);
    if actual != child.digest {
        return Err(CopyError::DigestMismatch {
            expected: child.digest.clone(),
            actual,
        });
    }
    Ok(Fetched {
        bytes,
        media_type: child.media_type.clone(),
        digest: child.digest.clone(),
    })
}

async fn copy_blobs(
    src: &dyn Source,
    dst: &dyn Dest,
    manifest_digest: &Digest,
    m: &oci_spec::image::ImageManifest,
    reporter: &dyn Reporter,
) -> Result<(), CopyError> {
    let (config, layers) = manifest_blobs(m, manifest_digest)?;
    let mut seen = HashSet::new();
    let mut work = Vec::new();
    for (blob, kind) in layers
        .into_iter()
        .map(|l| (l, BlobKind::Layer))
        .chain(std::iter::once((config, BlobKind::Config)))
    {
        if seen.insert(blob.digest.clone()) {
            work.push((blob, kind));
        }
    }
    let blobs: Vec<BlobRef> = work.iter().map(|(b, _)| b.clone()).collect();
    dst.prepare(&blobs).await?;
    stream::iter(work.into_iter().map(Ok::<_, CopyError>))
        .try_for_each_concurrent(dst.concurrency().max(1), |(blob, kind)| async move {
            if let Some(why) = dst.has_blob(&blob).await? {
                reporter.report(CopyEvent::BlobSkipped {
                    digest: blob.digest.clone(),
                    size: blob.size,
                    kind,
                    why,
                });
                return Ok(());
            }
            match dst.put_blob(&blob, kind, src, reporter).await? {
                Transfer::Sent => reporter.report(CopyEvent::BlobDone {
                    digest: blob.digest.clone(),
                    kind,
                }),
                Transfer::Skipped(why) => reporter.report(CopyEvent::BlobSkipped {
                    digest: blob.digest.clone(),
                    size: blob.size,
                    kind,
                    why,
                }),
            }
            Ok(())
        })
        .await
}

/// Reads a whole stream into memory (for manifests and configs), up to `limit` bytes.
pub async fn collect_stream(
    mut s: BlobStream,
    limit: u64,
    digest: &Digest,
) -> Result<Bytes, CopyError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| CopyError::from_stream(digest, e))?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(CopyError::SizeMismatch {
                digest: digest.clone(),
                expected: limit,
                actual: (buf.len() + chunk.len()) as u64,
            });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}
