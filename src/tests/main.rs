//! End-to-end tests of the `wharf` binary against the real tools it must interoperate with.
//! Issue numbers in test names point at what they check (issue_2: moving images).
#![allow(clippy::unwrap_used, clippy::print_stderr, clippy::print_stdout)]

mod archive;
mod auth;
mod build;
mod build_cases;
mod concurrency;
mod fake;
mod faults;
mod layout;
mod mirror;
mod registry;
mod run;
mod security;
mod serve;
mod store;
mod support;
mod tls;
