//! Image archives and layouts: `docker save` tarballs (the classic layout and the newer one with
//! `blobs/` and `index.json`), OCI image layout directories and OCI archives.
//!
//! wharf writes one layout that is all of these at once, as docker 25 does: `blobs/<alg>/<hex>`
//! for every blob, `oci-layout` and `index.json` for OCI readers, and `manifest.json` for
//! `docker load`. [`unpack`] applies a layer onto a root filesystem directory, safely; [`layer`] writes
//! one deterministically. Reading stages the archive's files in the store's ingest directory, hashing
//! each as it is written, and serves them from there. Archives know nothing of the copy engine:
//! `copy/archive.rs` makes a staged image a copy source and an [`ArchiveWriter`] a destination.

pub mod gzip;
pub mod layer;
mod reader;
pub mod unpack;
mod writer;

use std::path::PathBuf;

use crate::digest::Digest;

pub use reader::{StagedArchive, StagedImage};
pub use writer::{ArchiveTarget, ArchiveWriter, ArchivedImage, BlobWriter, is_layout_dir};

/// Annotation naming an image in an OCI index (docker, containerd).
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// Annotation carrying the reference (usually the tag) in an OCI index.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Errors reading or writing archives. Each names the archive member or path involved.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading or writing failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file, directory or archive member.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The archive is damaged or truncated.
    #[error("archive is corrupt or truncated{}", at.as_ref().map(|m| format!(" at member {m}")).unwrap_or_default())]
    Corrupt {
        /// The member being read, if known.
        at: Option<String>,
        /// What the tar reader said.
        #[source]
        source: std::io::Error,
    },
    /// The archive is neither a docker nor an OCI archive.
    #[error("not an image archive: no manifest.json (docker) or index.json (OCI) found")]
    NotAnArchive,
    /// A member the archive's own metadata names is missing.
    #[error("archive is missing {0}, which its metadata refers to")]
    Missing(String),
    /// A member under `blobs/` whose content does not match its name.
    #[error("archive member {member} does not match its digest: content hashes to {actual}")]
    BlobDigest {
        /// The member.
        member: String,
        /// What it hashes to.
        actual: Digest,
    },
    /// A metadata file that does not parse.
    #[error("archive member {member} is invalid")]
    Metadata {
        /// The member.
        member: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A name in the archive's metadata is not a valid reference.
    #[error("archive member {member} names an invalid image: {reason}")]
    BadName {
        /// The member.
        member: String,
        /// Why.
        reason: String,
    },
    /// The archive's writer stopped.
    #[error("archive writer stopped")]
    WriterGone,
}

impl ArchiveError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> ArchiveError {
        let path = path.into();
        move |source| ArchiveError::Io { op, path, source }
    }
}
