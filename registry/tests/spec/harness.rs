//! The registries under test. Each is started once per test binary, on a free loopback port with
//! its data in a temporary directory, outside any test's runtime: tests run on their own threads
//! and runtimes and reach the servers over HTTP only. Every test uses repositories of its own.
//!
//! Under `CI=true` a target that cannot be started fails every test; elsewhere its tests are
//! skipped with a message saying why.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Target {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub base: String,
    pub kind: Kind,
}

#[derive(Debug)]
pub enum Kind {
    Wharf,
    Distribution,
}

/// wharf's registry, started in this process (on its own runtime thread) with its data in a
/// temporary directory. `WHARF_SPEC_URL` points the suite at a running `wharf serve` instead.
pub fn wharf() -> Option<&'static Target> {
    static WHARF: OnceLock<Target> = OnceLock::new();
    static SERVER: OnceLock<(tempfile::TempDir, wharf_registry::testing::Spawned)> =
        OnceLock::new();
    Some(WHARF.get_or_init(|| {
        if let Ok(url) = std::env::var("WHARF_SPEC_URL") {
            return Target {
                base: url.trim_end_matches('/').to_owned(),
                kind: Kind::Wharf,
            };
        }
        let (_, spawned) = SERVER.get_or_init(|| {
            let dir = tempfile::tempdir().expect("a temporary directory for wharf's registry");
            let spawned = wharf_registry::testing::spawn(dir.path());
            (dir, spawned)
        });
        Target {
            base: format!("http://{}", spawned.addr),
            kind: Kind::Wharf,
        }
    }))
}

/// Debian's `docker-registry` (Distribution 2.8).
pub fn distribution() -> Option<&'static Target> {
    static DISTRIBUTION: OnceLock<Option<Server>> = OnceLock::new();
    DISTRIBUTION
        .get_or_init(start_distribution)
        .as_ref()
        .map(|server| &server.target)
}

/// A server process that stops when this test binary exits, however it exits.
struct Server {
    target: Target,
    /// A shell wrapping the server. It reads its stdin, a pipe that only this process holds open:
    /// when the process exits the pipe closes, and the shell stops the server and removes its
    /// data.
    _wrapper: Child,
}

fn start_distribution() -> Option<Server> {
    const BIN: &str = "/usr/bin/docker-registry";
    if !Path::new(BIN).exists() {
        skip("distribution: docker-registry not installed (Debian package docker-registry)");
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("wharf-spec-distribution-")
        .tempdir()
        .unwrap_or_else(|e| panic!("creating the distribution data directory: {e}"))
        .keep();
    let port = free_port();
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
         delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.join("data").display()
    );
    let config_path = dir.join("config.yml");
    std::fs::write(&config_path, config)
        .unwrap_or_else(|e| panic!("writing {}: {e}", config_path.display()));
    let log_path = dir.join("log");
    let log = std::fs::File::create(&log_path)
        .unwrap_or_else(|e| panic!("creating {}: {e}", log_path.display()));
    let wrapper = Command::new("sh")
        .arg("-c")
        .arg(r#""$1" serve "$2" & pid=$!; read _; kill "$pid"; wait "$pid"; rm -rf "$3""#)
        .args(["sh", BIN])
        .arg(&config_path)
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {BIN}: {e}"));
    let address = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !answers_v2(&address) {
        assert!(
            Instant::now() < deadline,
            "docker-registry did not answer on {address}; see {}",
            log_path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Server {
        target: Target {
            base: format!("http://{address}"),
            kind: Kind::Distribution,
        },
        _wrapper: wrapper,
    })
}

/// Whether `GET /v2/` answers 200 (blocking, without any runtime).
fn answers_v2(address: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(address) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .is_err()
    {
        return false;
    }
    let request = format!("GET /v2/ HTTP/1.0\r\nHost: {address}\r\n\r\n");
    let mut response = String::new();
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_to_string(&mut response).is_ok()
        && response.split(' ').nth(1) == Some("200")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or_else(|e| panic!("finding a free port: {e}"))
}

/// Skips a target's tests with a message, or fails them under `CI=true`.
fn skip(why: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "{why}; CI must provide it");
    eprintln!("SKIPPED: {why}");
}

/// Fails the test if the check failed.
pub fn expect_pass(target: &Target, outcome: Result<(), String>) {
    if let Err(e) = outcome {
        panic!("{:?} at {}: {e}", target.kind, target.base);
    }
}

/// Fails the test if a check documented as failing on this target passed; returns the failure.
pub fn expect_failure(target: &Target, outcome: Result<(), String>, why: &str) -> String {
    match outcome {
        Ok(()) => panic!(
            "{:?} now passes a check documented as failing there ({why}): drop the note",
            target.kind
        ),
        Err(e) => e,
    }
}
