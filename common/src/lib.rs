//! wharf-common: the OCI vocabulary and the storage both halves of wharf share.
//!
//! # Layout
//! - [`digest`], [`reference`](mod@reference), [`media_type`]: the vocabulary: `Digest`, `Reference`,
//!   `RepoName`, `Tag`, media-type constants. Parsed and validated at the edge.
//! - [`image`]: manifests, indexes and configs over `oci-spec`, and `Platform`.
//! - [`store`]: the local content store (`LocalStore`): blobs on disk, names in SQLite.
//! - [`client`]: the registry client (`Client`, `Repository`) and docker credentials.
//! - [`archive`]: docker-archive, OCI layout and OCI archive reading and writing.
//! - [`time`]: RFC 3339 and HTTP dates.
//! - [`blob`]: blob bytes in motion (`BlobStream`, `Fetched`, `verified`), below the client
//!   and the copy engine.
//! - [`error`]: [`error::Chain`], an error with its causes as one line.
//! - [`copy`]: the copy engine (`Source`, `Dest`, `copy_image`) every transfer goes through.
//! - [`progress`]: the events copies report (`CopyEvent`, `Reporter`).
//! - [`root`]: paths resolved inside a root directory, as a chroot would (`Root`, `Parent`).
//!
//! `common` knows nothing about Dockerfiles, HTTP servers or terminals.

#![warn(missing_docs)]

pub use oci_spec;

pub mod archive;
pub mod blob;
pub mod client;
pub mod copy;
pub mod digest;
pub mod error;
pub mod image;
pub mod media_type;
pub mod progress;
pub mod reference;
pub mod root;
pub mod store;
pub mod time;
