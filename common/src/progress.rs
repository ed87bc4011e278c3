//! Progress events of copies, for the CLI to render. Libraries report; they never print.

use crate::digest::Digest;

/// What a blob is, for display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobKind {
    /// An image config.
    Config,
    /// A filesystem layer.
    Layer,
    /// A manifest or index.
    Manifest,
}

/// Why a blob was not transferred.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// The destination already had it.
    Exists,
    /// The registry mounted it from another repository.
    Mounted,
}

/// One step of a copy.
#[derive(Clone, Debug)]
pub enum CopyEvent {
    /// The source reference resolved to a manifest or index.
    Resolved {
        /// What was asked for.
        reference: String,
        /// The digest it resolved to.
        digest: Digest,
    },
    /// A blob transfer began (`offset` > 0 when a partial download is resumed).
    BlobStarted {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
        /// What it is.
        kind: BlobKind,
        /// Bytes already present from an earlier attempt.
        offset: u64,
    },
    /// Bytes of a blob moved so far (cumulative, including any resumed offset).
    BlobProgress {
        /// The blob.
        digest: Digest,
        /// Bytes done.
        done: u64,
    },
    /// A blob needed no transfer.
    BlobSkipped {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
        /// What it is.
        kind: BlobKind,
        /// Why.
        why: Skip,
    },
    /// A blob transfer completed and was verified.
    BlobDone {
        /// The blob.
        digest: Digest,
        /// What it is.
        kind: BlobKind,
    },
    /// A manifest was written to the destination.
    ManifestWritten {
        /// Its digest.
        digest: Digest,
    },
}

/// Receives progress events. Implementations must be cheap: events come per chunk.
pub trait Reporter: Send + Sync {
    /// Called for each event.
    fn report(&self, event: CopyEvent);
}

/// A reporter that drops everything.
pub struct Silent;

impl Reporter for Silent {
    fn report(&self, _event: CopyEvent) {}
}
