//! wharf-builder: Dockerfile → image.
//!
//! # Layout
//! - [`change`]: Dockerfile instructions applied to an image config, as `import --change`
//!   takes them.
//! - [`dockerfile`]: the Dockerfile front end (parser, typed instructions, word expansion).
//! - [`error`]: `IoError`, an OS error with what was being done, and `IoContext::at`.
//! - [`context`]: the build context (`.dockerignore` rules, confined source resolution).
//! - [`solve`]: solving a Dockerfile into an image (stages, steps, the cache).
//! - [`snapshot`]: layer snapshots, the views a step's root is mounted from, and what a step
//!   changed, as layer entries.
//! - [`sandbox`]: RUN's and `wharf run`'s Linux namespaces, capabilities and seccomp.
//! - [`container`]: what `wharf run` needs of an image besides its root.
//! - [`user`]: an image's users and groups, and docker's user specs resolved against them.

pub mod change;
pub mod container;
pub mod context;
pub mod dockerfile;
pub mod error;
pub mod sandbox;
pub mod snapshot;
pub mod solve;
pub mod user;
