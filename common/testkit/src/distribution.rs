//! Debian's `docker-registry` (Distribution 2.8) for a test: one configuration for every test
//! (filesystem storage, deletes enabled unless asked otherwise, the in-memory blob descriptor
//! cache that the
//! `registry:2` image ships with, no access log), listening on a port the kernel chose.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

const BIN: &str = "/usr/bin/docker-registry";

/// A running `docker-registry`. It stops, and its data is removed, when this is dropped or when
/// the test process exits, however it exits (a shell between them reads a pipe only this
/// process holds open).
pub struct Distribution {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The registry process.
    pub pid: u32,
    log: PathBuf,
    wrapper: Child,
    stdin: Option<ChildStdin>,
}

impl Distribution {
    /// Starts one with its data under the system's temporary directory; `None` (a failure
    /// under CI) when docker-registry is not installed.
    pub fn start() -> Option<Distribution> {
        Self::start_with(&std::env::temp_dir(), "")
    }

    /// Starts one as [`Distribution::start`] does, but with deletes off (distribution's
    /// default): for checks of what a registry that refuses deletes answers.
    pub fn start_without_deletes() -> Option<Distribution> {
        Self::start_configured(&std::env::temp_dir(), false, "")
    }

    /// Starts one with its data under `parent` and `extra` YAML appended to the configuration
    /// (an `auth:` section, say).
    pub fn start_with(parent: &Path, extra: &str) -> Option<Distribution> {
        Self::start_configured(parent, true, extra)
    }

    fn start_configured(parent: &Path, deletes: bool, extra: &str) -> Option<Distribution> {
        if !crate::require(BIN) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("wharf-test-distribution-")
            .tempdir_in(parent)
            .unwrap_or_else(|e| {
                panic!(
                    "a directory for docker-registry under {}: {e}",
                    parent.display()
                )
            })
            .keep();
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: {deletes}\nhttp:\n  addr: 127.0.0.1:0\n{extra}",
            dir.join("data").display()
        );
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config)
            .unwrap_or_else(|e| panic!("writing {}: {e}", config_path.display()));
        let log = dir.join("log");
        let log_file = std::fs::File::create(&log)
            .unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let mut wrapper = Command::new("sh")
            .arg("-c")
            .arg(r#""$1" serve "$2" & pid=$!; echo "$pid"; read _; kill "$pid"; wait "$pid"; rm -rf "$3""#)
            .args(["sh", BIN])
            .arg(&config_path)
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {BIN}: {e}"));
        let mut first = String::new();
        if let Some(out) = wrapper.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut first);
        }
        let pid = first
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("docker-registry did not start; see {}", log.display()));
        let addr = crate::wait_for_log(&log, 0, "listening on ", Duration::from_secs(20));
        let stdin = wrapper.stdin.take();
        Some(Distribution {
            addr,
            pid,
            log,
            wrapper,
            stdin,
        })
    }

    /// What it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        // Closing the pipe tells the shell to stop the registry and remove its data.
        drop(self.stdin.take());
        let _ = self.wrapper.wait();
    }
}
