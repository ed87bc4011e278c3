//! Root filesystem snapshots for build steps: [`diff`] turns what a step changed (an overlayfs
//! upper directory) into layer entries.

pub mod diff;
