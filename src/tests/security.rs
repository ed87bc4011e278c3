//! Issue 10: what a hostile Dockerfile, image, context or registry must not get. Each test here
//! reproduces one way in that worked before the fix.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

fn ready() -> bool {
    require_root() && have_busybox()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

/// Files under `dir` (not following links) for which `pick` holds.
fn find(dir: &Path, pick: &dyn Fn(&Path, &std::fs::Metadata) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                todo.push(p.clone());
            }
            if pick(&p, &m) {
                out.push(p);
            }
        }
    }
    out
}

/// Runs `sh -c script` as uid/gid 65534 with no supplementary groups.
fn as_nobody(script: &str) -> Run {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
        ])
        .arg(script)
        .output()
        .expect("running setpriv");
    run_output(out)
}

#[test]
fn issue_10_the_store_is_closed_to_other_users() {
    if !ready() || !require("setpriv") {
        return;
    }
    let w = Wharf::new();
    // The store's parent is open to everyone, as /var/lib is.
    std::fs::set_permissions(w.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    w.load_busybox();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/busybox", ctx.path().join("s")).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM busybox\nCOPY s /s\nRUN chmod 4755 /s\n",
    )
    .unwrap();
    w.run(&["build", "-t", "suid", ctx.path().to_str().unwrap()])
        .ok();
    w.run(&["run", "--rm", "suid", "true"]).ok();
    // The setuid root program sits in a snapshot, as the image has it.
    let suid = find(&w.root.join("snapshots"), &|p, m| {
        p.file_name() == Some("s".as_ref()) && m.mode() & 0o4000 != 0 && m.uid() == 0
    });
    assert!(!suid.is_empty(), "no setuid /s under the snapshots");
    for p in &suid {
        let r = as_nobody(&format!("test -e '{}' && echo REACHED", p.display()));
        assert!(
            !r.stdout.contains("REACHED"),
            "uid 65534 reaches {}",
            p.display()
        );
    }
    let r = as_nobody(&format!("ls '{}' && echo LISTED", w.root.display()));
    assert!(!r.stdout.contains("LISTED"), "uid 65534 lists the store");
    for d in ["", "snapshots", "containers", "cache-mounts"] {
        let p = w.root.join(d);
        assert_eq!(mode(&p) & 0o077, 0, "{} is {:o}", p.display(), mode(&p));
    }
    // A store made open by an older wharf (or by hand) is closed again when it is opened.
    for d in ["", "snapshots"] {
        std::fs::set_permissions(w.root.join(d), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    w.run(&["images"]).ok();
    assert_eq!(mode(&w.root), 0o700);
    w.run(&["run", "--rm", "suid", "true"]).ok();
    assert_eq!(mode(&w.root.join("snapshots")), 0o700);
}

#[test]
fn issue_10_the_busybox_fixture_root_is_0755() {
    if !have_busybox() || !require("tar") {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/busybox/make.sh");
    // A strict umask must not leak into the image either.
    let made = Command::new("sh")
        .arg("-c")
        .arg("umask 077; exec \"$0\" \"$1\"")
        .arg(&script)
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let file = std::fs::File::open(out.path().join("rootfs.tar")).unwrap();
    let mut modes = std::collections::BTreeMap::new();
    for e in tar::Archive::new(file).entries().unwrap() {
        let e = e.unwrap();
        let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        if e.header().entry_type().is_dir() {
            modes.insert(path, e.header().mode().unwrap() & 0o7777);
        }
    }
    assert_eq!(modes.get("./"), Some(&0o755), "{modes:?}");
    for (dir, want) in [
        ("./bin/", 0o755),
        ("./etc/", 0o755),
        ("./tmp/", 0o1777),
        ("./root/", 0o700),
    ] {
        assert_eq!(modes.get(dir), Some(&want), "{dir} in {modes:?}");
    }
}

/// Compiles fixtures/probe/probe.c (static) into `dir/probe`.
pub(crate) fn build_probe(dir: &Path) -> Option<PathBuf> {
    if !require("gcc") {
        return None;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/probe/probe.c");
    let out = dir.join("probe");
    let made = Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "compiling the probe (gcc -static needs libc6-dev): {}",
        String::from_utf8_lossy(&made.stderr)
    );
    Some(out)
}

/// A key in the calling user's keyring, unlinked when dropped.
struct HostKey(i64);

impl HostKey {
    fn add(desc: &str) -> HostKey {
        let d = std::ffi::CString::new(desc).unwrap();
        // SAFETY: valid C strings and a payload of the length given.
        let id = unsafe {
            libc::syscall(
                libc::SYS_add_key,
                c"user".as_ptr(),
                d.as_ptr(),
                c"host secret".as_ptr(),
                11usize,
                -4i32, // KEY_SPEC_USER_KEYRING
            )
        };
        assert!(id > 0, "add_key: {}", std::io::Error::last_os_error());
        HostKey(id)
    }

    /// Whether the user keyring holds a "user" key `desc`.
    fn exists(desc: &str) -> bool {
        let d = std::ffi::CString::new(desc).unwrap();
        // SAFETY: valid C strings.
        unsafe { libc::syscall(libc::SYS_keyctl, 10, -4i32, c"user".as_ptr(), d.as_ptr(), 0) > 0 }
    }
}

impl Drop for HostKey {
    fn drop(&mut self) {
        // SAFETY: KEYCTL_UNLINK (9) of our key from the user keyring.
        unsafe { libc::syscall(libc::SYS_keyctl, 9, self.0, -4i32) };
    }
}

#[test]
fn issue_10_seccomp_confines_run_and_wharf_run() {
    if !ready() {
        return;
    }
    let ctx = tempfile::tempdir().unwrap();
    let Some(_) = build_probe(ctx.path()) else {
        return;
    };
    let host_key = format!("wharf-host-{}", std::process::id());
    let planted = format!("wharf-planted-{}", std::process::id());
    let _key = HostKey::add(&host_key);
    let checks = format!("status key-read {host_key} key-add {planted} unshare-user");
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM busybox\nCOPY probe /probe\nRUN /probe {checks} > /from-run\n"),
    )
    .unwrap();
    let w = Wharf::new();
    w.load_busybox();
    w.run(&["build", "-t", "probe", ctx.path().to_str().unwrap()])
        .ok();
    let expected =
        "NoNewPrivs:\t1\nSeccomp:\t2\nkey-read errno=1\nkey-add errno=1\nunshare-user errno=1\n";
    let from_run = w.run(&["run", "--rm", "probe", "cat", "/from-run"]).ok();
    assert_eq!(from_run.stdout, expected, "RUN");
    let args: Vec<&str> = checks.split(' ').collect();
    let mut cmd = vec!["run", "--rm", "probe", "/probe"];
    cmd.extend(&args);
    assert_eq!(w.run(&cmd).ok().stdout, expected, "wharf run");
    assert!(
        !HostKey::exists(&planted),
        "a key planted from inside reached the host"
    );
    // docker's switch turns it off.
    let off = w
        .run(&[
            "run",
            "--rm",
            "--security-opt",
            "seccomp=unconfined",
            "probe",
            "/probe",
            "status",
        ])
        .ok();
    assert!(off.stdout.contains("Seccomp:\t0"), "{}", off.stdout);
    let bad = w
        .run(&[
            "run",
            "--rm",
            "--security-opt",
            "apparmor=x",
            "probe",
            "true",
        ])
        .fails();
    assert!(
        bad.stderr.contains("--security-opt \"apparmor=x\""),
        "{}",
        bad.stderr
    );
}

/// A tar member: raw name, type, mode, mtime, link target.
type Member<'a> = (&'a [u8], tar::EntryType, u32, u64, Option<&'a [u8]>);

fn tar_bytes(members: &[Member]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, mode, mtime, link) in members {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_mtime(*mtime);
        h.set_entry_type(*kind);
        h.set_size(0);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
        }
        h.set_cksum();
        b.append(&h, &b""[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn issue_10_hostile_layers_and_archives_change_nothing_outside() {
    if !ready() {
        return;
    }
    let w = Wharf::new();
    w.load_busybox();
    let host = tempfile::tempdir().unwrap();
    let victim = host.path().join("victim");
    std::fs::create_dir_all(victim.join("target")).unwrap();
    let victim_file = host.path().join("victim-file");
    std::fs::write(&victim_file, "host").unwrap();
    std::fs::set_permissions(&victim_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let before = mtime(&victim.join("target"));
    let v = victim.to_str().unwrap().as_bytes();
    let vf = victim_file.to_str().unwrap().as_bytes();
    // x/ and x/target/ (1977), then x becomes a link to the host directory.
    let times = tar_bytes(&[
        (b"x/", tar::EntryType::Directory, 0o755, 1000, None),
        (
            b"x/target/",
            tar::EntryType::Directory,
            0o755,
            222_222_222,
            None,
        ),
        (b"x", tar::EntryType::Symlink, 0o777, 1000, Some(v)),
    ]);
    // A link to a host file, and a setuid hard link to that link.
    let chmod = tar_bytes(&[
        (b"s", tar::EntryType::Symlink, 0o777, 1000, Some(vf)),
        (b"h", tar::EntryType::Link, 0o4777, 1000, Some(b"s")),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(ctx.join("evil.tar"), &times).unwrap();
    let check = |how: &str| {
        assert_eq!(
            mtime(&victim.join("target")),
            before,
            "{how} dated a host directory"
        );
        let mode = std::fs::metadata(&victim_file).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o644, "{how} made a host file {mode:o}");
    };
    // ADD of an archive.
    std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nADD evil.tar /dst/\n").unwrap();
    w.run(&["build", "-t", "added", ctx.to_str().unwrap()]).ok();
    check("ADD");
    // A context on stdin (the tar is the context).
    let mut stdin_ctx = tar::Builder::new(Vec::new());
    let df = b"FROM busybox\n";
    let mut h = tar::Header::new_gnu();
    h.set_path("Dockerfile").unwrap();
    h.set_size(df.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    stdin_ctx.append(&h, &df[..]).unwrap();
    let mut stdin_tar = stdin_ctx.into_inner().unwrap();
    stdin_tar.truncate(stdin_tar.len() - 1024);
    stdin_tar.extend_from_slice(&times);
    w.run_stdin(&["build", "-"], &stdin_tar).ok();
    check("a context on stdin");
    // Image layers: FROM (snapshots), -o type=local, and run.
    for (name, layer) in [("times", &times), ("chmod", &chmod)] {
        let f = dir.path().join(format!("{name}.tar"));
        std::fs::write(&f, layer).unwrap();
        w.run(&["import", f.to_str().unwrap(), &format!("evil-{name}:1")])
            .ok();
        std::fs::write(
            ctx.join("Dockerfile"),
            format!("FROM evil-{name}:1\nWORKDIR /w\n"),
        )
        .unwrap();
        let out = dir.path().join(format!("out-{name}"));
        w.run(&[
            "build",
            "-o",
            &format!("type=local,dest={}", out.display()),
            ctx.to_str().unwrap(),
        ])
        .ok();
        check(&format!("FROM and -o type=local of {name}"));
        let _ = w.run(&["run", "--rm", &format!("evil-{name}:1"), "/x"]);
        check(&format!("run of {name}"));
        let copy = w
            .cmd()
            .env("WHARF_SNAPSHOTTER", "copy")
            .args(["build", "--no-cache", ctx.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            copy.status.success(),
            "{}",
            String::from_utf8_lossy(&copy.stderr)
        );
        check(&format!("a copied root of {name}"));
    }
}

#[test]
fn issue_10_mount_points_and_image_files_never_lead_to_the_host() {
    if !ready() {
        return;
    }
    let w = Wharf::new();
    w.load_busybox();
    let host = tempfile::tempdir().unwrap();
    // Empty, as a mount point wharf made and would clean up.
    let hostdir = host.path().join("hostdir");
    std::fs::create_dir_all(hostdir.join("b")).unwrap();
    let hostdir2 = host.path().join("hostdir2");
    std::fs::create_dir_all(&hostdir2).unwrap();
    std::fs::write(hostdir2.join("b"), "").unwrap();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("f"), "").unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM busybox\n\
             RUN --mount=type=tmpfs,target=/mp/b mv /mp /mp2 && ln -s {} /mp\n\
             RUN --mount=type=bind,source=f,target=/mq/b mv /mq /mq2 && ln -s {} /mq\n",
            hostdir.display(),
            hostdir2.display()
        ),
    )
    .unwrap();
    for snapshotter in ["overlay", "copy"] {
        let r = w
            .cmd()
            .env("WHARF_SNAPSHOTTER", snapshotter)
            .args(["build", "--no-cache", ctx.path().to_str().unwrap()])
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        assert!(
            hostdir.join("b").is_dir(),
            "{snapshotter}: a host directory was removed"
        );
        assert!(
            hostdir2.join("b").is_file(),
            "{snapshotter}: a host file was removed"
        );
    }
    // An image whose /etc is a link to a host directory: `run -u` must not read the host's
    // passwd.
    let hostetc = host.path().join("hostetc");
    std::fs::create_dir_all(&hostetc).unwrap();
    std::fs::write(hostetc.join("passwd"), "hostonly:x:4242:4242::/:/bin/sh\n").unwrap();
    let layer = tar_bytes(&[(
        b"etc",
        tar::EntryType::Symlink,
        0o777,
        1000,
        Some(hostetc.to_str().unwrap().as_bytes()),
    )]);
    let f = host.path().join("etc.tar");
    std::fs::write(&f, layer).unwrap();
    w.run(&["import", f.to_str().unwrap(), "etclink:1"]).ok();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM busybox\nCOPY --from=etclink:1 /etc /etc-link\n",
    )
    .unwrap();
    let r = w.run(&["run", "--rm", "-u", "hostonly", "etclink:1", "/bin/true"]);
    assert!(
        r.stderr.contains("unable to find user hostonly"),
        "a user from the host's passwd: {} {}",
        r.status,
        r.stderr
    );
}

/// A host of the test's own ([`Netns`]) with an HTTP server (busybox httpd) in it: what a RUN
/// must reach through its NAT; never an outside address. Removed when dropped.
struct PeerHost {
    addr: String,
    server: std::process::Child,
    _www: tempfile::TempDir,
    _ns: Netns,
}

impl PeerHost {
    fn start() -> PeerHost {
        let ns = Netns::new();
        let addr = ns.addr.clone();
        let www = tempfile::tempdir().unwrap();
        std::fs::write(www.path().join("hello.txt"), "hello from the peer\n").unwrap();
        std::fs::write(www.path().join("index.html"), "index\n").unwrap();
        let server = ns
            .command("busybox")
            .args(["httpd", "-f", "-p"])
            .arg(format!("{addr}:8080"))
            .arg("-h")
            .arg(www.path())
            .spawn()
            .unwrap();
        wait_for_port(&format!("{addr}:8080"));
        PeerHost {
            addr,
            server,
            _www: www,
            _ns: ns,
        }
    }
}

impl Drop for PeerHost {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Services only the host's own network namespace has: a TCP server on 127.0.0.1 and an
/// abstract unix socket, both answering; and a client that keeps sending `marker` (as a
/// password would travel) to the TCP server over loopback until dropped.
struct HostServices {
    port: u16,
    abstract_name: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HostServices {
    fn start(marker: &str) -> HostServices {
        use std::io::{Read, Write};
        use std::os::linux::net::SocketAddrExt;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for c in tcp.incoming().flatten() {
                let mut c = c;
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf);
                let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\nhost loopback\n");
            }
        });
        let abstract_name = format!("wharf-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name).unwrap();
        let unix = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
        std::thread::spawn(move || for _ in unix.incoming() {});
        let (s, m) = (stop.clone(), marker.to_owned());
        std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                    let _ = write!(c, "GET / HTTP/1.0\r\nAuthorization: Basic {m}\r\n\r\n");
                    let mut sink = Vec::new();
                    let _ = c.read_to_end(&mut sink);
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        HostServices {
            port,
            abstract_name,
            stop,
        }
    }
}

impl Drop for HostServices {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn issue_10_run_gets_its_own_network_with_nat() {
    if !ready() || !require("ip") || !require("slirp4netns") {
        return;
    }
    let ctx = tempfile::tempdir().unwrap();
    let Some(_) = build_probe(ctx.path()) else {
        return;
    };
    let marker = format!("c2VjcmV0-{}", std::process::id());
    let host = HostServices::start(&marker);
    let peer = PeerHost::start();
    let checks = format!(
        "tcp 10.0.2.2:{port} tcp 127.0.0.1:{port} abstract {name} sniff 2 {marker} tcp {peer}:8080",
        port = host.port,
        name = host.abstract_name,
        peer = peer.addr,
    );
    // Each line of what the probe and wget print, as it must read: the host's loopback (through
    // the NAT's gateway or its own) and abstract socket unreachable, no host traffic seen, the
    // test's own host reached by address and by an --add-host name.
    type Check<'a> = Box<dyn Fn(&str) -> bool + 'a>;
    let want: Vec<Check> = vec![
        Box::new(|l| l.starts_with(&format!("tcp 10.0.2.2:{} errno=", host.port))),
        Box::new(|l| l == format!("tcp 127.0.0.1:{} errno=111", host.port)),
        Box::new(|l| l == "abstract errno=111"),
        Box::new(|l| l == "sniff quiet"),
        Box::new(|l| l == format!("tcp {}:8080 answered HTTP/1.1 200 OK", peer.addr)),
        Box::new(|l| l == "hello from the peer"),
    ];
    let check = |how: &str, out: &str| {
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), want.len(), "{how}: {out}");
        for (l, ok) in lines.iter().zip(&want) {
            assert!(ok(l), "{how}: {l:?} in\n{out}");
        }
    };
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM busybox\nCOPY probe /probe\n\
             RUN (/probe {checks}; wget -qO- http://peer.test:8080/hello.txt) > /from-run 2>&1\n"
        ),
    )
    .unwrap();
    let w = Wharf::new();
    w.load_busybox();
    let add_host = format!("peer.test:{}", peer.addr);
    w.run(&[
        "build",
        "--add-host",
        &add_host,
        "-t",
        "net",
        ctx.path().to_str().unwrap(),
    ])
    .ok();
    let from_run = w
        .run(&[
            "run",
            "--rm",
            "--network",
            "none",
            "net",
            "cat",
            "/from-run",
        ])
        .ok();
    check("RUN", &from_run.stdout);
    // wharf run, by default.
    let mut cmd = vec!["run", "--rm", "--add-host", &add_host, "net", "sh", "-c"];
    let script = format!("/probe {checks}; wget -qO- http://peer.test:8080/hello.txt");
    cmd.push(&script);
    check("wharf run", &w.run(&cmd).ok().stdout);
    // The host's network only when asked for, and for RUN only with the entitlement.
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM busybox\nRUN --network=host wget -qO- http://127.0.0.1:{}/\n",
            host.port
        ),
    )
    .unwrap();
    let refused = w.run(&["build", ctx.path().to_str().unwrap()]).fails();
    assert!(
        refused.stderr.contains("--allow network.host"),
        "{}",
        refused.stderr
    );
    let allowed = w
        .run(&[
            "build",
            "--allow",
            "network.host",
            "--no-cache",
            ctx.path().to_str().unwrap(),
        ])
        .ok();
    assert!(
        allowed.stderr.contains("host loopback"),
        "{}",
        allowed.stderr
    );
    let url = format!("http://127.0.0.1:{}/", host.port);
    let host_run = w
        .run(&[
            "run",
            "--rm",
            "--network",
            "host",
            "busybox",
            "wget",
            "-qO-",
            &url,
        ])
        .ok();
    assert_eq!(host_run.stdout, "host loopback\n");
}

#[test]
fn issue_10_dockerignore_cannot_be_bypassed() {
    if !ready() {
        return;
    }
    let w = Wharf::new();
    w.load_busybox();
    let ctx = tempfile::tempdir().unwrap();
    let c = ctx.path();
    std::fs::write(c.join(".dockerignore"), "secret.env\nprivate\n").unwrap();
    std::fs::write(c.join("secret.env"), "TOPSECRET\n").unwrap();
    std::fs::write(c.join("ok.txt"), "fine\n").unwrap();
    std::fs::create_dir_all(c.join("private")).unwrap();
    std::fs::write(c.join("private/key"), "KEY\n").unwrap();
    std::fs::create_dir_all(c.join("sub")).unwrap();
    std::os::unix::fs::symlink("secret.env", c.join("harmless.txt")).unwrap();
    std::os::unix::fs::symlink("..", c.join("sub/up")).unwrap();
    std::os::unix::fs::symlink("private", c.join("p")).unwrap();
    let build = |df: &str| {
        std::fs::write(c.join("Dockerfile"), df).unwrap();
        w.run(&["build", "--no-cache", "-t", "ign", c.to_str().unwrap()])
    };
    // Sources that reach excluded files through links: not found, as in BuildKit.
    for (df, source) in [
        ("FROM busybox\nCOPY harmless.txt /a\n", "harmless.txt"),
        (
            "FROM busybox\nCOPY sub/up/secret.env /b\n",
            "sub/up/secret.env",
        ),
        ("FROM busybox\nCOPY p/key /k\n", "p/key"),
        // A wildcard lists the link, which then leads nowhere (BuildKit: a dangling link).
        ("FROM busybox\nCOPY *.txt /x/\n", "harmless.txt"),
        (
            "FROM busybox\nRUN --mount=type=bind,source=harmless.txt,target=/m cat /m\n",
            "harmless.txt",
        ),
    ] {
        let r = build(df).fails();
        assert!(
            r.stderr
                .contains(&format!("{source}: not found in the build context")),
            "{df}: {}",
            r.stderr
        );
        assert!(
            !r.stderr.contains("TOPSECRET") && !r.stderr.contains("KEY"),
            "{}",
            r.stderr
        );
    }
    // A directory through a link, a wildcard through it, and bind mounts of the context
    // (read-only and rw) show only what is in the context.
    build(
        "FROM busybox\n\
         COPY sub/up/ /d/\n\
         COPY sub/up/*.env sub/up/o*.txt /w/\n\
         RUN --mount=type=bind,target=/ctx ls -a /ctx > /ls; \
             cat /ctx/secret.env /ctx/harmless.txt /ctx/private/key /ctx/p/key > /leak 2>/dev/null; \
             cat /ctx/ok.txt /ctx/sub/up/ok.txt > /seen\n\
         RUN --mount=type=bind,target=/ctx,rw ls -a /ctx > /ls-rw; cat /ctx/secret.env >> /leak 2>/dev/null; true\n",
    )
    .ok();
    let show = |cmd: &str| {
        w.run(&["run", "--rm", "--network", "none", "ign", "sh", "-c", cmd])
            .ok()
            .stdout
    };
    assert_eq!(
        show("cat /leak"),
        "",
        "excluded files were read through the bind mount"
    );
    assert_eq!(show("cat /seen"), "fine\nfine\n");
    for listing in ["/ls", "/ls-rw"] {
        let ls = show(&format!("cat {listing}"));
        assert!(ls.contains("ok.txt") && ls.contains("harmless.txt"), "{ls}");
        assert!(
            !ls.contains("secret.env") && !ls.contains("private"),
            "{listing}: {ls}"
        );
    }
    let copied = show("find /d /w | sort");
    assert!(
        copied.contains("/d/ok.txt") && copied.contains("/w/ok.txt"),
        "{copied}"
    );
    assert!(
        !copied.contains("secret.env") && !copied.contains("private"),
        "{copied}"
    );
}
