//! Issue 10: what a hostile Dockerfile, image, context or registry must not get. Each test here
//! reproduces one way in that worked before the fix.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

fn ready() -> bool {
    have_root() && have_busybox()
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
    if !ready() || !have("setpriv") {
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
    if !have_busybox() || !have("tar") {
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
    if !have("gcc") {
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
