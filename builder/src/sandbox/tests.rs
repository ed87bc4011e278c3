#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use super::*;

/// A root with the host's static busybox, or None (a failure under CI=true) without root or
/// busybox.
fn busybox_root() -> Option<tempfile::TempDir> {
    if !wharf_testkit::require_root() || !wharf_testkit::require("/bin/busybox") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    for d in ["bin", "etc", "tmp", "root", "home/u"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "echo", "id", "cat", "ls", "pwd", "hostname", "mount", "touch", "ps", "sleep",
        "mknod", "head", "wc", "mkdir", "grep", "sort",
    ] {
        std::os::unix::fs::symlink("busybox", r.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        r.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nu:x:1000:1000::/home/u:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        r.join("etc/group"),
        "root:x:0:\nu:x:1000:\nextra:x:2000:u\n",
    )
    .unwrap();
    Some(dir)
}

/// Runs `script` with `sh -c` in `root`; returns (exit code, stdout, stderr).
fn sh(root: &Path, script: &str, tweak: impl FnOnce(&mut Spec)) -> (i32, String, String) {
    let (out_r, out_w) = pipe().unwrap();
    let (err_r, err_w) = pipe().unwrap();
    let mut spec = Spec {
        root: Root::Dir(root.to_owned()),
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into(), "GREETING=hello there".into()],
        cwd: "/tmp".into(),
        user: Identity::default(),
        hostname: "sandboxed".into(),
        network: Network::Host,
        mounts: Vec::new(),
        stdin: None,
        stdout: out_w,
        stderr: err_w,
        tty: false,
        init: true,
        seccomp: true,
        shared_network: None,
    };
    tweak(&mut spec);
    let running = start(spec).unwrap();
    let read_all = |fd: OwnedFd| {
        std::thread::spawn(move || {
            let mut s = String::new();
            std::fs::File::from(fd).read_to_string(&mut s).unwrap();
            s
        })
    };
    let (o, e) = (read_all(out_r), read_all(err_r));
    let code = running.wait().unwrap();
    (code, o.join().unwrap(), e.join().unwrap())
}

#[test]
fn runs_with_env_cwd_hostname_and_exit_code() {
    let Some(root) = busybox_root() else { return };
    let (code, out, _) = sh(
        root.path(),
        "echo \"$GREETING\"; pwd; hostname; echo $$; exit 7",
        |_| {},
    );
    assert_eq!(code, 7);
    // The command is PID 2: PID 1 is the reaper.
    assert_eq!(out, "hello there\n/tmp\nsandboxed\n2\n");
    let (code, _, err) = sh(root.path(), "kill -TERM $$", |_| {});
    assert_eq!(code, 128 + 15, "{err}");
    // Without init the command is PID 1, which a signal it has no handler for leaves alone.
    let (code, out, err) = sh(root.path(), "echo $$; kill -TERM $$; echo alive", |s| {
        s.init = false;
    });
    assert_eq!((code, out.as_str()), (0, "1\nalive\n"), "{err}");
}

#[test]
fn users_and_groups_come_from_the_image() {
    let Some(root) = busybox_root() else { return };
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    let users = crate::user::Users::parse(&passwd, &group);
    let who = users.identity("u").unwrap();
    assert_eq!(
        who,
        Identity {
            uid: 1000,
            gid: 1000,
            groups: vec![1000, 2000]
        }
    );
    let explicit = users.identity("5:7").unwrap();
    assert_eq!((explicit.gid, explicit.groups), (7, vec![7]));
    assert!(users.identity("nobody").is_err());
    let (code, out, err) = sh(root.path(), "id -u; id -g; id -G; touch /root/x", |s| {
        s.user = who.clone();
    });
    assert_eq!(out, "1000\n1000\n1000 2000\n", "{err}");
    assert_ne!(code, 0, "an unprivileged user cannot write root's home");
}

#[test]
fn contained_processes_network_and_mounts() {
    let Some(root) = busybox_root() else { return };
    // Only the sandbox's processes are visible.
    let (code, out, err) = sh(
        root.path(),
        "ls /proc | grep -E '^[0-9]+$' | sort -n | head -3",
        |_| {},
    );
    assert_eq!(code, 0, "{err}");
    let pids: Vec<u32> = out.lines().filter_map(|l| l.parse().ok()).collect();
    assert!(
        pids.iter().all(|p| *p < 10),
        "host processes visible: {out}"
    );
    // Mounting needs CAP_SYS_ADMIN, which is dropped.
    let (code, _, _) = sh(root.path(), "mkdir -p /m && mount -t tmpfs t /m", |_| {});
    assert_ne!(code, 0, "mount succeeded inside the sandbox");
    // PID 1 is not dumpable: its exe, root and fds are out of reach.
    let (code, out, _) = sh(
        root.path(),
        "cat /proc/1/exe >/dev/null 2>&1 && echo readable; ls /proc/1/root/ >/dev/null 2>&1 && echo listable; true",
        |_| {},
    );
    assert_eq!((code, out.as_str()), (0, ""));
    // A device node made inside cannot be opened: the host's disk stays out of reach.
    let dev = std::os::unix::fs::MetadataExt::dev(&std::fs::metadata("/").unwrap());
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    for at in ["/tmp/disk", "/dev/disk"] {
        let (_, out, _) = sh(
            root.path(),
            &format!(
                "mknod {at} b {major} {minor} && head -c 1 {at} >/dev/null 2>&1 && echo read; true"
            ),
            |_| {},
        );
        assert_eq!(out, "", "read the host's disk through {at}");
    }
    let (code, out, _) = sh(
        root.path(),
        "head -c 4 /dev/zero | wc -c; echo x > /dev/null",
        |_| {},
    );
    assert_eq!((code, out.trim()), (0, "4"), "the standard nodes work");
    // docker's default capabilities, and no new privileges.
    let (_, out, _) = sh(
        root.path(),
        "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status",
        |_| {},
    );
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        [
            "CapEff:",
            "00000000a80425fb",
            "CapBnd:",
            "00000000a80425fb",
            "NoNewPrivs:",
            "1"
        ],
        "{out}"
    );
    // With no network, only loopback, and it is up.
    let (code, out, err) = sh(root.path(), "ls /sys/class/net", |s| {
        s.network = Network::None
    });
    assert_eq!((code, out.trim()), (0, "lo"), "{err}");
    // The host's root is not reachable; writes stay in the sandbox's root.
    let (code, _, _) = sh(
        root.path(),
        "echo x > /escaped; ls /work /home/u >/dev/null",
        |_| {},
    );
    assert_ne!(code, 0);
    assert!(root.path().join("escaped").exists());
    assert!(!Path::new("/escaped").exists());
    // A missing command is an error naming it.
    let (_, w) = pipe().unwrap();
    let (_, w2) = pipe().unwrap();
    let e = run(Spec {
        root: Root::Dir(root.path().to_owned()),
        argv: vec!["no-such-command".into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        user: Identity::default(),
        hostname: String::new(),
        network: Network::Host,
        mounts: Vec::new(),
        stdin: None,
        stdout: w,
        stderr: w2,
        tty: false,
        init: true,
        seccomp: true,
        shared_network: None,
    })
    .unwrap_err();
    // The command is the message; why it could not run is the source, said once.
    assert_eq!(e.to_string(), "no-such-command", "{e:?}");
    let cause = std::error::Error::source(&e).map(ToString::to_string);
    assert!(
        cause
            .as_deref()
            .is_some_and(|c| c.contains("No such file or directory")),
        "{e:?}"
    );
}

#[test]
fn bind_and_tmpfs_mounts() {
    let Some(root) = busybox_root() else { return };
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("f"), "from host\n").unwrap();
    let (code, out, err) = sh(
        root.path(),
        "cat /data/f; echo new > /data/g; touch /ro/x 2>/dev/null || echo read-only; echo t > /scratch/t",
        |s| {
            s.mounts = vec![
                Mount::Bind {
                    source: host.path().to_owned(),
                    target: "/data".into(),
                    readonly: false,
                },
                Mount::Bind {
                    source: host.path().to_owned(),
                    target: "/ro".into(),
                    readonly: true,
                },
                Mount::Tmpfs {
                    target: "/scratch".into(),
                    size: None,
                },
            ];
        },
    );
    assert_eq!((code, out.as_str()), (0, "from host\nread-only\n"), "{err}");
    assert_eq!(
        std::fs::read_to_string(host.path().join("g")).unwrap(),
        "new\n"
    );
    assert!(
        !root.path().join("scratch/t").exists(),
        "tmpfs contents stay out of the root"
    );
}

#[test]
fn issue_10_clone_fallbacks_fail_closed() {
    // A flag word that does not convert must not become "no namespaces".
    assert!(child::clone_flags(i32::MIN).is_err());
    assert_eq!(
        child::clone_flags(libc::CLONE_NEWNS).unwrap(),
        (libc::CLONE_NEWNS | libc::SIGCHLD) as libc::c_ulong
    );
    // A pid that does not fit, or is not positive, must never become -1 (kill(-1) signals
    // every process).
    for bad in [i64::from(i32::MAX) + 1, -1, 0] {
        assert!(child::child_pid(bad).is_err(), "{bad}");
    }
    assert_eq!(child::child_pid(42).unwrap(), 42);
}

/// The host side's plan, without root: what the child will be told to mount and run.
#[test]
fn the_plan_for_mounts_commands_and_capabilities() {
    let mut keep = Vec::new();
    let plans = mount_plans(
        &[Mount::Tmpfs {
            target: "/run/cache".into(),
            size: Some(64 << 20),
        }],
        &mut keep,
    )
    .unwrap();
    assert_eq!(plans.len(), 1);
    let tmpfs = &plans[0];
    assert_eq!(tmpfs.tree, -1, "a tmpfs is mounted inside, not attached");
    assert_eq!(
        tmpfs.parents,
        [c"/run".to_owned(), c"/run/cache".to_owned()],
        "the target's parents are made first"
    );
    assert_eq!(tmpfs.flags, libc::MS_NOSUID | libc::MS_NODEV);
    assert_eq!(
        tmpfs.data.as_deref(),
        Some(c"mode=1777,size=67108864"),
        "{:?}",
        tmpfs.data
    );
    assert!(keep.is_empty());
    let relative = mount_plans(
        &[Mount::Tmpfs {
            target: "run".into(),
            size: None,
        }],
        &mut keep,
    );
    assert!(relative.is_err(), "a relative target is refused");
    // The command along PATH, docker's default PATH when the environment has none.
    let found = candidates("sh", &["PATH=/a::/b/".into()]).unwrap();
    assert_eq!(
        found,
        [c"/a/sh".to_owned(), c"./sh".to_owned(), c"/b/sh".to_owned()]
    );
    assert_eq!(candidates("/bin/x", &[]).unwrap(), [c"/bin/x".to_owned()]);
    assert_eq!(candidates("sh", &[]).unwrap().len(), 6);
    assert!(candidates("a\0b", &[]).is_err(), "a NUL is refused");
    // docker's 14 capabilities are kept; every other one the kernel knows is dropped.
    let (drop, keep_mask) = capabilities(40);
    assert_eq!(keep_mask.count_ones(), 14);
    assert_eq!(drop.len(), 41 - 14);
    assert!(drop.contains(&21), "CAP_SYS_ADMIN is dropped");
    assert!(keep_mask & (1 << 0) != 0, "CAP_CHOWN is kept");
}
