//! The build context: which files a build may read ([`ignore`]: `.dockerignore` rules).

pub mod ignore;
