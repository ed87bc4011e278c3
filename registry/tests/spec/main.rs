//! A spec-walking conformance suite for the OCI Distribution Specification v1.1: one check per
//! MUST of the spec, plus the behaviours docker, containerd, podman and skopeo rely on.
//!
//! Every check runs against two targets (`harness.rs`): wharf's registry, and Debian's
//! `docker-registry` (Distribution 2.8), which validates the suite itself. Where the two differ
//! the spec decides: such a check is declared with `distribution_differs = "…"`, passes on wharf
//! and must fail on distribution, for the reason given.
//!
//! Layout: `harness.rs` starts the targets, `api.rs` is the HTTP client and the test content,
//! and one file per workflow category of the spec (§Pull, §Push, §Content Discovery,
//! §Content Management), plus `errors.rs` for error codes and hostile input.
//!
//! Where the spec leaves a choice open, the checks accept every reading:
//! - "lexical order (i.e. case-insensitive alphanumeric order)" for tags: byte order and
//!   case-folded order differ on mixed case, so the tag checks use lowercase tags only.
//! - The `Range` of an upload session holding no bytes yet (`0-<end-of-range>` with nothing to
//!   end): the checks only look for 204 and a `Location` then.
//! - "at least 4 megabytes" of manifest: read as 4 MiB, which wharf accepts exactly and exceeds
//!   by one byte with 413.
#![allow(clippy::print_stderr, clippy::print_stdout)]

/// Returns `Err` with the formatted message from the enclosing check when `cond` is false.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Declares the tests of one check: `<module>::<check>::wharf` and `…::distribution`. The check
/// is the `async fn <check>(t: &Target) -> Result<(), String>` beside it (a module and a function
/// may share a name), and each test runs it on its own runtime.
///
/// `spec!(check)` must pass on both targets. `spec!(check, distribution_differs = "…")` must
/// pass on wharf and fail on distribution, for the stated reason; if distribution starts to
/// pass, the test fails so the note gets removed.
macro_rules! spec {
    ($check:ident) => {
        mod $check {
            #[tokio::test]
            async fn wharf() {
                if let Some(t) = crate::harness::wharf() {
                    crate::harness::expect_pass(t, super::$check(t).await);
                }
            }

            #[tokio::test]
            async fn wharf_auth() {
                if let Some(t) = crate::harness::wharf_with_auth() {
                    crate::harness::expect_pass(t, super::$check(t).await);
                }
            }

            #[tokio::test]
            async fn distribution() {
                if let Some(t) = crate::harness::distribution() {
                    crate::harness::expect_pass(t, super::$check(t).await);
                }
            }
        }
    };
    ($check:ident, distribution_differs = $why:literal) => {
        mod $check {
            #[tokio::test]
            async fn wharf() {
                if let Some(t) = crate::harness::wharf() {
                    crate::harness::expect_pass(t, super::$check(t).await);
                }
            }

            #[tokio::test]
            async fn wharf_auth() {
                if let Some(t) = crate::harness::wharf_with_auth() {
                    crate::harness::expect_pass(t, super::$check(t).await);
                }
            }

            #[tokio::test]
            async fn distribution() {
                if let Some(t) = crate::harness::distribution() {
                    let failure = crate::harness::expect_failure(t, super::$check(t).await, $why);
                    println!("differs as documented ({}): {failure}", $why);
                }
            }
        }
    };
}

mod api;
mod discovery;
mod errors;
mod harness;
mod management;
mod pull;
mod push;
