//! Test support: the wharf binary against a private store, real peer tools started on loopback
//! ports (the Distribution registry, dockerd), in-process hostile servers, and the busybox
//! fixture. Under `CI=true` a missing tool is a failure, never a skip (`wharf_testkit`'s rule,
//! which every crate's tests share).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const WHARF: &str = env!("CARGO_BIN_EXE_wharf");

pub use wharf_testkit::{Distribution, require, require_root, wait_until};

/// A wharf invocation on a private store.
pub struct Wharf {
    pub root: PathBuf,
    pub docker_config: PathBuf,
    _dir: tempfile::TempDir,
}

pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.status, 0,
            "wharf failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn fails(self) -> Run {
        assert_ne!(
            self.status, 0,
            "wharf should have failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

pub fn run_output(out: Output) -> Run {
    Run {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Wharf {
    pub fn new() -> Wharf {
        let dir = tempfile::tempdir().expect("temp dir");
        let docker_config = dir.path().join("docker-config");
        std::fs::create_dir_all(&docker_config).unwrap();
        Wharf {
            root: dir.path().join("store"),
            docker_config,
            _dir: dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(WHARF);
        c.env("WHARF_ROOT", &self.root)
            .env("DOCKER_CONFIG", &self.docker_config)
            .env_remove("WHARF_INSECURE_REGISTRIES")
            .env_remove("RUST_LOG")
            .arg("--progress")
            .arg("plain");
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let out = self
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running wharf");
        run_output(out)
    }

    pub fn run_stdin(&self, args: &[&str], input: &[u8]) -> Run {
        let mut child = self
            .cmd()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running wharf");
        let mut stdin = child.stdin.take().unwrap();
        let data = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        run_output(out)
    }

    /// Loads the busybox fixture into this store as `busybox:latest`.
    pub fn load_busybox(&self) {
        let layout = busybox_layout();
        self.run(&["load", "-q", "-i", layout.to_str().unwrap()])
            .ok();
    }

    /// Every file under the store's blobs/ and ingest/ directories, sorted.
    pub fn store_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["blobs/sha256", "blobs/sha512", "ingest"] {
            if let Ok(rd) = std::fs::read_dir(self.root.join(sub)) {
                for e in rd.flatten() {
                    out.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
                }
            }
        }
        out.sort();
        out
    }

    pub fn ingest_files(&self) -> Vec<String> {
        self.store_files()
            .into_iter()
            .filter(|f| f.starts_with("ingest/"))
            .collect()
    }

    pub fn inspect(&self, image: &str) -> serde_json::Value {
        let r = self.run(&["inspect", image]).ok();
        let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("inspect prints JSON");
        v[0].clone()
    }
}

/// The busybox image built from Debian's busybox-static by fixtures/busybox/make.sh, saved as
/// an OCI layout directory. Built once per test run.
pub fn busybox_layout() -> PathBuf {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    extern "C" fn remove_fixture() {
        let _ = std::fs::remove_dir_all(fixture_base());
    }
    LAYOUT
        .get_or_init(|| {
            let base = fixture_base();
            let _ = std::fs::remove_dir_all(&base);
            std::fs::create_dir_all(&base).unwrap();
            // SAFETY: registers a plain function to run at process exit.
            unsafe { libc::atexit(remove_fixture) };
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/busybox/make.sh");
            let store = base.join("store");
            let out = Command::new(&script)
                .arg(&base)
                .arg(WHARF)
                .env("WHARF_ROOT", &store)
                .output()
                .expect("running fixtures/busybox/make.sh");
            assert!(
                out.status.success(),
                "make.sh failed (is busybox-static installed?): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let layout = base.join("layout");
            let out = Command::new(WHARF)
                .env("WHARF_ROOT", &store)
                .args(["save", "--dir", "-o"])
                .arg(&layout)
                .arg("busybox:latest")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            layout
        })
        .clone()
}

fn fixture_base() -> PathBuf {
    std::env::temp_dir().join(format!("wharf-test-busybox-{}", std::process::id()))
}

/// Whether the busybox fixture can be built here (busybox-static installed).
pub fn have_busybox() -> bool {
    let ok = Command::new("/bin/busybox")
        .arg("--list-full")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && !Command::new("ldd")
            .arg("/bin/busybox")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        wharf_testkit::skip("busybox-static is not installed");
    }
    ok
}

/// A plain HTTP GET over a fresh connection: (status, headers, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, head, buf[split + 4..].to_vec()))
}

/// Debian's dockerd, started by hand on a private socket and data root.
pub struct Dockerd {
    pub sock: String,
    child: Child,
    dir: PathBuf,
}

impl Dockerd {
    pub fn start() -> Option<Dockerd> {
        Dockerd::start_with(&[])
    }

    /// A daemon started with extra flags (`--registry-mirror`, say).
    pub fn start_with(flags: &[&str]) -> Option<Dockerd> {
        if !require_root() || !require("dockerd") || !require("/usr/bin/docker") {
            return None;
        }
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Short paths: the socket path must fit in sockaddr_un.
        let dir = std::env::temp_dir().join(format!("wd-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = format!("{}/d.sock", dir.display());
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let child = Command::new("dockerd")
            .args(["--iptables=false", "--ip-masq=false", "--bridge=none"])
            .args(flags)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("pid"))
            .arg("-H")
            .arg(format!("unix://{sock}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting dockerd");
        let d = Dockerd { sock, child, dir };
        wait_until("dockerd to answer", Duration::from_secs(60), || {
            Command::new("/usr/bin/docker")
                .args(["-H", &format!("unix://{}", d.sock), "version"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        Some(d)
    }

    /// The docker CLI against this daemon, not started.
    #[allow(dead_code, reason = "used by the benchmark harness (src/bench)")]
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("/usr/bin/docker");
        c.args(["-H", &format!("unix://{}", self.sock)]).args(args);
        c
    }

    /// The socket of the containerd this daemon uses: the one it started itself under its
    /// exec root, or the system's.
    #[allow(dead_code, reason = "used by some test binaries only")]
    pub fn containerd_socket(&self) -> String {
        let own = self.dir.join("exec/containerd/containerd.sock");
        if own.exists() {
            return own.display().to_string();
        }
        "/run/containerd/containerd.sock".into()
    }

    pub fn docker(&self, args: &[&str]) -> Run {
        let out = Command::new("/usr/bin/docker")
            .args(["-H", &format!("unix://{}", self.sock)])
            .args(args)
            .output()
            .expect("running docker");
        run_output(out)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SAFETY: sending SIGTERM to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.join("data"))
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn skopeo(args: &[&str]) -> Run {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("running skopeo");
    run_output(out)
}

/// An axum app served on a loopback port from a background thread, for hostile-server tests.
pub struct Server {
    pub addr: SocketAddr,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

pub fn serve(app: axum::Router) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
    });
    Server {
        addr,
        _shutdown: tx,
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// `wharf serve` as a child process on a loopback port, its data in a private directory.
pub struct WharfServe {
    pub addr: String,
    pub root: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    flags: Vec<String>,
    _dir: tempfile::TempDir,
}

impl WharfServe {
    pub fn start() -> WharfServe {
        Self::start_in(&std::env::temp_dir())
    }

    /// Starts with extra flags (e.g. TLS).
    pub fn start_with(flags: &[&str]) -> WharfServe {
        Self::start_in_with(&std::env::temp_dir(), flags)
    }

    /// Starts with its data in a fresh directory under `parent`.
    pub fn start_in(parent: &Path) -> WharfServe {
        Self::start_in_with(parent, &[])
    }

    /// Starts with extra flags and its data in a fresh directory under `parent`.
    pub fn start_in_with(parent: &Path, flags: &[&str]) -> WharfServe {
        let dir = tempfile::tempdir_in(parent).unwrap();
        let mut s = WharfServe {
            addr: "127.0.0.1:0".into(),
            root: dir.path().join("registry"),
            child: None,
            log: dir.path().join("log"),
            flags: flags.iter().map(|f| (*f).to_owned()).collect(),
            _dir: dir,
        };
        s.spawn();
        s
    }

    /// Starts the server on `self.addr`: the first time port 0, the kernel's choice, read back
    /// from the server's log; after that the port it got.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let from = log.metadata().map_or(0, |m| m.len() as usize);
        let child = Command::new(WHARF)
            .args(["serve", "--addr", &self.addr, "--root"])
            .arg(&self.root)
            .args(&self.flags)
            .env_remove("WHARF_ROOT")
            .env("RUST_LOG", "warn,wharf=info,wharf_registry=info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting wharf serve");
        self.child = Some(child);
        let url =
            wharf_testkit::wait_for_log(&self.log, from, "listening on ", Duration::from_secs(20));
        self.addr = url
            .split_once("://")
            .map_or(url.as_str(), |(_, a)| a)
            .to_owned();
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same root and port.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let c = self.child.as_ref().expect("server running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        self.wait()
    }

    /// Waits for the server to exit by itself.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.take().expect("server running").wait().unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Every file under blobs/, as (digest, file bytes).
    pub fn blob_files(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let base = self.root.join("blobs/sha256");
        for prefix in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(prefix.path()).unwrap().flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                out.push((format!("sha256:{name}"), std::fs::read(f.path()).unwrap()));
            }
        }
        out
    }
}

impl Drop for WharfServe {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One HTTP/1.1 request on a fresh connection: (status, head with lowercase names, body).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..split]).to_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, buf[split + 4..].to_vec())
}

/// A header's value from a head returned by [`http`].
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// A host of the test's own: a network namespace joined to this one by a veth pair (this side
/// 10.213.N.1, the other `addr`), for what must be reached at an address that is not loopback;
/// never an outside address. Removed, with what runs in it, when dropped.
pub struct Netns {
    pub name: String,
    pub addr: String,
}

impl Netns {
    pub fn new() -> Netns {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = (std::process::id() % 10_000) * 10 + n;
        let (ns, host_if, peer_if) = (format!("wt{id}"), format!("wt{id}h"), format!("wt{id}p"));
        let subnet = 100 + (id % 150);
        let addr = format!("10.213.{subnet}.2");
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("running ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ]);
        ip(&["link", "set", &peer_if, "netns", &ns]);
        ip(&[
            "addr",
            "add",
            &format!("10.213.{subnet}.1/24"),
            "dev",
            &host_if,
        ]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &peer_if,
        ]);
        ip(&["-n", &ns, "link", "set", &peer_if, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        Netns { name: ns, addr }
    }

    /// `program` to run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Waits (up to 20 s) until something listens at `addr`.
pub fn wait_for_port(addr: &str) {
    wait_until(
        &format!("{addr} to listen"),
        Duration::from_secs(20),
        || TcpStream::connect(addr).is_ok(),
    );
}

/// podman with its storage under `dir` (vfs, no systemd), as the tests run it.
#[allow(dead_code, reason = "used by some test modules only")]
pub fn podman(dir: &Path, args: &[&str]) -> Run {
    podman_with(dir, &[], args)
}

/// [`podman`] with environment variables (`CONTAINERS_REGISTRIES_CONF`, say).
pub fn podman_with(dir: &Path, env: &[(&str, &Path)], args: &[&str]) -> Run {
    let out = Command::new("podman")
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "none",
        ])
        .args(args)
        .output()
        .expect("running podman");
    run_output(out)
}

/// Writes a multi-platform index of the busybox fixture (one manifest and config per platform,
/// the layer shared) under `tmp`, and pushes it whole to `dest` (`host/repo:tag`) with skopeo;
/// returns the index's digest.
pub fn push_index(tmp: &Path, platforms: &[&str], dest: &str) -> String {
    let dir = tmp.join("multi");
    let index = crate::layout::write_index_layout(&dir, &busybox_layout(), platforms, "1");
    skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:1", dir.display()),
        &format!("docker://{dest}"),
    ])
    .ok();
    index
}
