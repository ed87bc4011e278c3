//! wharf-builder: Dockerfile → image.
//!
//! # Layout
//! - [`change`]: Dockerfile instructions applied to an image config, as `import --change`
//!   takes them.
//! - [`dockerfile`]: the Dockerfile front end (parser, typed instructions).
//! - [`context`]: the build context (`.dockerignore` rules, confined source resolution).
//! - [`build`]: running a Dockerfile into an image.
//! - [`snapshot`]: what a build step changed, as layer entries.
//!
//! The instruction layer, build graph, cache and sandbox arrive with issues 4 and 5.

pub mod build;
pub mod change;
pub mod container;
pub mod context;
pub mod dockerfile;
pub mod sandbox;
pub mod snapshot;
