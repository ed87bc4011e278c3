//! Blob bytes in motion: the stream type every source and destination speaks, a manifest as
//! fetched (bytes, media type, digest), and the check that bytes match their descriptor.
//! Below both the registry client and the copy engine, so neither has to know the other.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::stream::{self, Stream};

use crate::digest::{Digest, Hasher};
use crate::image::BlobRef;

/// A stream of blob bytes.
pub type BlobStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// A manifest fetched from a source.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The exact bytes.
    pub bytes: Bytes,
    /// Its media type.
    pub media_type: String,
    /// Its digest (of `bytes`).
    pub digest: Digest,
}

/// Why a [`verified`] stream failed (carried inside its `io::Error`).
#[derive(Debug)]
pub(crate) enum Mismatch {
    Digest(Digest, Digest),
    Size(Digest, u64, u64),
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::Digest(e, a) => write!(f, "digest mismatch for {e}: content hashes to {a}"),
            Mismatch::Size(d, e, a) => {
                write!(f, "size mismatch for {d}: expected {e} bytes, got {a}")
            }
        }
    }
}

impl std::error::Error for Mismatch {}

/// Wraps a blob stream so it fails at its end unless the bytes match `blob`'s digest and size.
pub fn verified(inner: BlobStream, blob: &BlobRef) -> BlobStream {
    Box::pin(Verified {
        inner,
        hasher: Some(blob.digest.algorithm().hasher()),
        blob: blob.clone(),
        seen: 0,
    })
}

struct Verified {
    inner: BlobStream,
    hasher: Option<Hasher>,
    blob: BlobRef,
    seen: u64,
}

impl Stream for Verified {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.seen += chunk.len() as u64;
                if this.seen > this.blob.size {
                    this.hasher = None;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        Mismatch::Size(this.blob.digest.clone(), this.blob.size, this.seen),
                    ))));
                }
                if let Some(h) = this.hasher.as_mut() {
                    h.update(&chunk);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(None) => {
                let Some(h) = this.hasher.take() else {
                    return Poll::Ready(None);
                };
                if this.seen != this.blob.size {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        Mismatch::Size(this.blob.digest.clone(), this.blob.size, this.seen),
                    ))));
                }
                let actual = h.finish();
                if actual != this.blob.digest {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        Mismatch::Digest(this.blob.digest.clone(), actual),
                    ))));
                }
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

/// A stream of `bytes` from `offset` on.
pub fn bytes_stream(bytes: &Bytes, offset: u64) -> BlobStream {
    let b = bytes.slice((offset as usize).min(bytes.len())..);
    Box::pin(stream::once(async move { Ok(b) }))
}

/// A stream of a file's bytes from `offset` on, read in 1 MiB chunks.
pub async fn file_stream(path: &std::path::Path, offset: u64) -> io::Result<BlobStream> {
    use tokio::io::AsyncSeekExt;
    let mut f = tokio::fs::File::open(path).await?;
    if offset > 0 {
        f.seek(io::SeekFrom::Start(offset)).await?;
    }
    Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(
        f,
        1 << 20,
    )))
}
