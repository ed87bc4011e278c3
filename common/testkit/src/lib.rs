//! wharf-testkit: what every crate's tests share, written once.
//!
//! - [`ci`], [`skip`], [`require`], [`require_root`]: one rule for a test that cannot run here.
//!   Under `CI=true` (or `CI=1`) it fails loudly; elsewhere it is skipped with one `SKIPPED:`
//!   line on stderr, written past the test harness's capture so it shows in a passing run.
//! - [`wait_until`], [`wait_for_log`]: polling with a deadline instead of fixed sleeps.
//! - [`Distribution`]: Debian's `docker-registry` (Distribution 2.8) on a port the kernel chose,
//!   its address read back from its log, its data in a temporary directory.
//!
//! A dev-dependency only: nothing here reaches the shipped binary. It depends on no wharf
//! crate, so `wharf-common`'s own tests can use it.

#![allow(clippy::print_stderr)]

mod distribution;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use distribution::Distribution;

/// Whether this is a CI run, where every test must run: `CI` is `true` or `1` (what docker's,
/// GitHub's and GitLab's runners set; `.ci/run` sets `true`).
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skips what cannot run here: a failure under [`ci`], else one `SKIPPED: {why}` line (once per
/// reason in this process).
#[track_caller]
pub fn skip(why: &str) {
    assert!(
        !ci(),
        "{why}, and under CI=true every test must run (.ci/install-deps)"
    );
    static SAID: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let first = SAID
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(why.to_owned());
    if first {
        // Not `eprintln!`, which libtest captures: a skip must show in a passing run.
        let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
    }
}

/// Whether `tool` (a path, or a name looked up in `PATH`) is an executable here; if not, the
/// test is [`skip`]ped.
#[track_caller]
pub fn require(tool: &str) -> bool {
    let found = if tool.contains('/') {
        is_executable(Path::new(tool))
    } else {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| is_executable(&d.join(tool))))
    };
    if !found {
        skip(&format!("{tool} is not installed"));
    }
    found
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether this process is root; if not, the test is [`skip`]ped.
#[track_caller]
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        skip("this test needs root");
    }
    root
}

/// Polls `ok` until it holds; panics naming `what` after `timeout`.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    while !ok() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Waits until the file at `log`, from byte `from` on, holds `marker`, and returns the word
/// that follows it (up to whitespace or a quote): how a server started on port 0 tells its
/// address.
#[track_caller]
pub fn wait_for_log(log: &Path, from: usize, marker: &str, timeout: Duration) -> String {
    let mut found = None;
    wait_until(&format!("{marker:?} in {}", log.display()), timeout, || {
        let text = std::fs::read(log).unwrap_or_default();
        let text = String::from_utf8_lossy(text.get(from..).unwrap_or_default());
        found = text.find(marker).map(|at| {
            text[at + marker.len()..]
                .split(|c: char| c.is_whitespace() || c == '"')
                .next()
                .unwrap_or_default()
                .to_owned()
        });
        found.is_some()
    });
    found.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_are_found_on_path_or_by_path() {
        assert!(is_executable(Path::new("/bin/sh")));
        assert!(!is_executable(Path::new("/etc/passwd")));
        assert!(!is_executable(Path::new("/no/such/tool")));
        // Outside CI a missing tool is a skip, not a failure.
        if !ci() {
            assert!(!require("wharf-testkit-no-such-tool"));
        }
        assert!(require("sh"));
    }

    #[test]
    fn logs_are_read_for_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::write(&log, "starting\nmsg=\"listening on 127.0.0.1:4321\" x=y\n").unwrap();
        let addr = wait_for_log(&log, 0, "listening on ", Duration::from_secs(1));
        assert_eq!(addr, "127.0.0.1:4321");
        let later = std::fs::metadata(&log).unwrap().len() as usize;
        let writer = {
            let log = log.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                let mut f = std::fs::OpenOptions::new().append(true).open(log).unwrap();
                writeln!(f, "listening on 127.0.0.1:5555").unwrap();
            })
        };
        let addr = wait_for_log(&log, later, "listening on ", Duration::from_secs(5));
        assert_eq!(addr, "127.0.0.1:5555");
        writer.join().unwrap();
    }
}
