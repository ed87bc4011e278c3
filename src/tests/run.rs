//! RUN in wharf's sandbox and `wharf run` (issue 5): builds with RUN against BuildKit, runs
//! against `docker run`, containment, cache mounts, secrets, and cleanup after failures.

use std::process::{Command, Stdio};

use crate::build::{Known, compare_with_buildkit, fixture};
use crate::support::*;

/// Mounts visible on the host under the store of `w`.
fn host_mounts(w: &Wharf) -> Vec<String> {
    let root = w.root.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&root))
        .map(str::to_owned)
        .collect()
}

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) && !cmd.contains("cargo") {
                out.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// Entries under the store's scratch places (staging, snapshot temp, containers).
fn leftovers(w: &Wharf) -> Vec<String> {
    let mut out = Vec::new();
    for d in ["tmp", "snapshots/tmp", "containers"] {
        if let Ok(list) = std::fs::read_dir(w.root.join(d)) {
            for e in list.flatten() {
                out.push(format!("{d}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

fn ready() -> bool {
    require_root() && have_busybox() && require("tar")
}

#[test]
fn issue_5_builds_with_run_match_buildkit_and_run_like_docker() {
    if !ready() {
        return;
    }
    let Some(d) = Dockerd::start() else { return };
    let w = Wharf::new();
    w.load_busybox();
    let base = w.dir().join("busybox.tar");
    w.run(&["save", "-o", base.to_str().unwrap(), "busybox"])
        .ok();
    d.docker(&["load", "-i", base.to_str().unwrap()]).ok();
    // IMG stands for the image each built.
    let docker_run = |args: &[&str]| {
        let mut all = vec!["run", "--rm", "--network", "none"];
        all.extend(args.iter().map(|a| if *a == "IMG" { "bk:1" } else { a }));
        let out = Command::new("/usr/bin/docker")
            .args(["-H", &format!("unix://{}", d.sock)])
            .args(&all)
            .output()
            .unwrap();
        run_output(out)
    };
    let wharf_run = |args: &[&str]| {
        let mut all = vec!["run", "--rm", "--network", "none"];
        all.extend(args.iter().map(|a| if *a == "IMG" { "wh:1" } else { a }));
        w.run(&all)
    };

    for name in ["zookeeper", "webapp"] {
        // BuildKit 0.8 gives RUN no supplementary groups; v0.32 (and wharf) list the primary
        // one, so webapp's `id` output differs (checked below).
        let known: &[Known] = match name {
            "webapp" => &[(
                "srv/app/logs/id.txt",
                "RUN's groups include the primary group",
            )],
            _ => &[],
        };
        let c = compare_with_buildkit(&d, &w, &fixture(name), &["--network", "none"], known);
        // The same steps, each with a layer or not as BuildKit made it.
        assert_eq!(c.history.0, c.history.1, "{name}: histories differ");
        // The built images run the same.
        let (theirs, ours) = (docker_run(&["IMG"]), wharf_run(&["IMG"]));
        assert_eq!(
            (ours.status, ours.stdout.as_str()),
            (theirs.status, theirs.stdout.as_str()),
            "{name}: wharf run's stderr: {}",
            ours.stderr
        );
        assert!(!ours.stdout.is_empty());
        match name {
            "zookeeper" => {
                assert!(c.tree.contains_key("opt/zookeeper/conf/zoo.cfg"));
                assert!(!c.tree.contains_key("tmp/dist"), "rm -rf left it");
            }
            _ => {
                assert!(!c.tree.contains_key("bin/ash") && !c.tree.contains_key("var/spool"));
                assert!(
                    !c.tree.contains_key("usr/sbin/chroot"),
                    "the opaque /usr/sbin"
                );
                assert!(
                    c.tree["srv/app/data"].contains("mode 750 owner 1001:1001"),
                    "{:?}",
                    c.tree["srv/app/data"]
                );
                assert!(c.tree["srv/app/logs"].contains("mode 2775"));
                let id = wharf_run(&["--entrypoint", "cat", "IMG", "/srv/app/logs/id.txt"])
                    .ok()
                    .stdout;
                assert!(id.ends_with(" groups=1001(app)\n"), "{id}");
            }
        }
    }
    // Exit codes, env, user, workdir and output as docker's, flags and image defaults alike.
    for args in [
        &["busybox", "sh", "-c", "echo $A $HOME; pwd; id; exit 3"][..],
        &[
            "-e",
            "A=1",
            "-w",
            "/tmp",
            "-u",
            "33",
            "busybox",
            "sh",
            "-c",
            "echo $A $HOME; pwd; id; exit 3",
        ],
        &["-u", "nobody:users", "busybox", "id"],
        &["--entrypoint", "ls", "IMG", "-1", "/srv/app/static"],
        &["-u", "0", "IMG"],
        &["busybox", "sh", "-c", "kill -TERM $$"],
        &["busybox", "no-such-command"],
    ] {
        let (theirs, ours) = (docker_run(args), wharf_run(args));
        assert_eq!(
            (ours.status, ours.stdout.as_str()),
            (theirs.status, theirs.stdout.as_str()),
            "wharf run {args:?}: {}\ndocker: {}",
            ours.stderr,
            theirs.stderr
        );
    }
    // Why a command could not start is said once, not in the message and again as its cause.
    let r = wharf_run(&["busybox", "no-such-command"]);
    assert!(r.stderr.contains("no-such-command"), "{}", r.stderr);
    assert_eq!(
        r.stderr.matches("No such file or directory").count(),
        1,
        "{}",
        r.stderr
    );
    assert!(leftovers(&w).is_empty(), "{:?}", leftovers(&w));
}

#[test]
fn issue_5_run_cannot_reach_the_host() {
    if !ready() {
        return;
    }
    let w = Wharf::new();
    w.load_busybox();
    let ctx = tempfile::tempdir().unwrap();
    // Every attempt records what happened; none may succeed.
    let marker = format!("wharf-escape-{}", std::process::id());
    let host_file = std::env::temp_dir().join(&marker);
    let dev = std::os::unix::fs::MetadataExt::dev(&std::fs::metadata("/").unwrap());
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let df = format!(
        r#"FROM busybox
RUN ln -s / /hostroot && ln -s /proc/1/root /pid1root
RUN echo x > /hostroot/{marker}; echo x > /pid1root/{marker}; \
    (echo x > /proc/1/root/tmp/{marker}) 2>/dev/null && echo wrote-pid1-root >> /report; \
    (mount -t tmpfs t /mnt) 2>/dev/null && echo mounted >> /report; \
    (mount --bind / /mnt) 2>/dev/null && echo bind-mounted >> /report; \
    (cat /proc/1/environ) >/dev/null 2>&1 && echo read-pid1-environ >> /report; \
    (ls /proc/1/cwd/) >/dev/null 2>&1 && echo listed-pid1-cwd >> /report; \
    (readlink /proc/1/exe) >/dev/null 2>&1 && echo read-pid1-exe-link >> /report; \
    (cp /bin/busybox /proc/self/exe) 2>/dev/null && echo overwrote-self-exe >> /report; \
    (cp /bin/busybox /proc/1/exe) 2>/dev/null && echo overwrote-pid1-exe >> /report; \
    (echo 1 > /proc/sys/kernel/panic) 2>/dev/null && echo wrote-proc-sys >> /report; \
    (echo b > /proc/sysrq-trigger) 2>/dev/null && echo sysrq >> /report; \
    (mknod /dev/disk b {major} {minor} && head -c 1 /dev/disk) >/dev/null 2>&1 && echo read-disk >> /report; \
    (mknod /disk b {major} {minor} && head -c 1 /disk) >/dev/null 2>&1 && echo read-disk-in-root >> /report; \
    ls /proc | grep -cE '^[0-9]+$' > /pids; \
    ls /tmp/{marker} >/dev/null 2>&1 && echo sees-host-tmp >> /report; \
    touch /report
"#
    );
    std::fs::write(ctx.path().join("Dockerfile"), df).unwrap();
    w.run(&["build", "-t", "probe", ctx.path().to_str().unwrap()])
        .ok();
    assert!(!host_file.exists(), "a RUN wrote {}", host_file.display());
    assert!(!std::path::Path::new("/").join(&marker).exists());
    let report = w
        .run(&["run", "--rm", "probe", "sh", "-c", "cat /report; cat /pids"])
        .stdout;
    let mut lines = report.lines();
    let mut escapes = Vec::new();
    let pids = loop {
        match lines.next() {
            Some(l) if l.parse::<u32>().is_ok() => break l.parse::<u32>().unwrap(),
            Some(l) => escapes.push(l.to_owned()),
            None => panic!("no process count in {report:?}"),
        }
    };
    assert!(escapes.is_empty(), "escapes: {escapes:?}");
    assert!(pids <= 6, "RUN sees {pids} processes: the host's /proc");
    // The symlinks pointed inside the image: the writes landed there.
    let inside = w
        .run(&["run", "--rm", "probe", "cat", &format!("/{marker}")])
        .ok();
    assert_eq!(inside.stdout, "x\n");
}

#[test]
fn issue_5_failures_and_ctrl_c_leave_nothing_behind() {
    if !ready() {
        return;
    }
    let w = Wharf::new();
    w.load_busybox();
    let ctx = tempfile::tempdir().unwrap();
    let marker = format!("wharf-sleeper-{}", std::process::id());
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM busybox\nRUN echo started; (sleep 301; echo {marker}) & echo spawned; exit 7\n"
        ),
    )
    .unwrap();
    let failed = w
        .run(&["build", "-t", "f", ctx.path().to_str().unwrap()])
        .fails();
    assert!(
        failed.stderr.contains("Dockerfile:2")
            && failed.stderr.contains("exit code: 7")
            && failed.stderr.contains("spawned"),
        "{}",
        failed.stderr
    );
    // The step's orphans went with it.
    assert!(processes_with(&format!("echo {marker}")).is_empty());
    assert!(
        processes_with("sleep 301").is_empty(),
        "{:?}",
        processes_with("sleep 301")
    );
    assert!(host_mounts(&w).is_empty(), "{:?}", host_mounts(&w));
    assert!(leftovers(&w).is_empty(), "{:?}", leftovers(&w));

    // Ctrl-C in the middle of a RUN.
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM busybox\nRUN echo {marker}-running; sleep 302\n"),
    )
    .unwrap();
    let child = w
        .cmd()
        .args(["build", "-t", "c", ctx.path().to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        "the RUN to start",
        std::time::Duration::from_secs(30),
        || !processes_with("sleep 302").is_empty(),
    );
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cancelled"), "{stderr}");
    assert!(
        processes_with("sleep 302").is_empty(),
        "{:?}\n{stderr}",
        processes_with("sleep 302")
    );
    assert!(host_mounts(&w).is_empty(), "{:?}", host_mounts(&w));
    assert!(leftovers(&w).is_empty(), "{:?}", leftovers(&w));
}

#[test]
fn issue_5_cache_mounts_persist_and_secrets_stay_out() {
    if !ready() {
        return;
    }
    let w = Wharf::new();
    w.load_busybox();
    let ctx = tempfile::tempdir().unwrap();
    let secret = ctx.path().join("token.txt");
    std::fs::write(&secret, "s3cr3t-value").unwrap();
    std::fs::write(ctx.path().join("input"), "1\n").unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM busybox\n\
         COPY input /input\n\
         RUN --mount=type=cache,target=/cache,id=counter \
             n=$(cat /cache/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /cache/n; echo $n > /runs\n\
         RUN --mount=type=secret,id=token \
             test \"$(sha256sum < /run/secrets/token | cut -c1-64)\" = SUM && echo secret-ok > /secret-check\n\
         RUN --mount=type=secret,id=token,env=TOKEN test \"$(printf %s \"$TOKEN\" | sha256sum | cut -c1-64)\" = SUM\n\
         RUN --mount=type=tmpfs,target=/scratch echo t > /scratch/t && ls /scratch > /tmpfs-check\n\
         RUN --mount=type=bind,source=input,target=/in cat /in > /bound\n",
    )
    .unwrap();
    // The Dockerfile names the secret by its digest only.
    let df = std::fs::read_to_string(ctx.path().join("Dockerfile"))
        .unwrap()
        .replace("SUM", &sha256_hex(b"s3cr3t-value"));
    std::fs::write(ctx.path().join("Dockerfile"), df).unwrap();
    let src = format!("id=token,src={}", secret.display());
    let c = ctx.path().to_str().unwrap();
    w.run(&["build", "--secret", &src, "-t", "m:1", c]).ok();
    // Another input: the cache step runs again and finds the count it left.
    std::fs::write(ctx.path().join("input"), "2\n").unwrap();
    w.run(&["build", "--secret", &src, "-t", "m:2", c]).ok();
    let out = w
        .run(&["run", "--rm", "m:2", "sh", "-c", "cat /runs /secret-check /tmpfs-check /bound; ls -d /cache /run/secrets /scratch 2>/dev/null | wc -l"])
        .ok()
        .stdout;
    // Mount points made for the steps are not in the image.
    assert_eq!(
        out, "2\nsecret-ok\nt\n2\n0\n",
        "cache count, secret, tmpfs, bind"
    );
    // The secret is in no layer, no history line and no config.
    let archive = w.dir().join("m.tar");
    w.run(&["save", "-o", archive.to_str().unwrap(), "m:2"])
        .ok();
    let x = tempfile::tempdir().unwrap();
    assert!(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(x.path())
            .status()
            .unwrap()
            .success()
    );
    let mut stack = vec![x.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let raw = std::fs::read(&p).unwrap();
            let mut data = Vec::new();
            if flate2::read::GzDecoder::new(raw.as_slice())
                .read_to_end(&mut data)
                .is_err()
            {
                data = raw;
            }
            assert!(
                !data.windows(12).any(|w| w == b"s3cr3t-value"),
                "the secret is in {}",
                p.display()
            );
        }
    }
    // A secret the build needs but was not given fails clearly.
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM busybox\nRUN --mount=type=secret,id=absent,required cat /run/secrets/absent\n",
    )
    .unwrap();
    let e = w.run(&["build", c]).fails();
    assert!(
        e.stderr.contains("secret absent is required"),
        "{}",
        e.stderr
    );
    // builder prune drops the cache mounts: the count starts over.
    w.run(&["builder", "prune", "-f"]).ok();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM busybox\nRUN --mount=type=cache,target=/cache,id=counter ls /cache | wc -l > /n\n",
    )
    .unwrap();
    w.run(&["build", "-t", "p", c]).ok();
    assert_eq!(w.run(&["run", "p", "cat", "/n"]).ok().stdout, "0\n");
}

#[test]
fn issue_5_run_pulls_a_missing_image_and_passes_stdin() {
    if !ready() {
        return;
    }
    let Some(reg) = Distribution::start() else {
        return;
    };
    let w = Wharf::new();
    w.load_busybox();
    let name = format!("{}/lib/busybox:1", reg.addr);
    w.run(&["tag", "busybox", &name]).ok();
    w.run(&["push", &name]).ok();
    let fresh = Wharf::new();
    let out = fresh.run(&["run", "--rm", &name, "echo", "pulled"]).ok();
    assert_eq!(out.stdout, "pulled\n");
    let piped = fresh
        .run_stdin(&["run", "-i", &name, "tr", "a-z", "A-Z"], b"shout\n")
        .ok();
    assert_eq!(piped.stdout, "SHOUT\n");
    // A volume, read-only and read-write.
    let vol = tempfile::tempdir().unwrap();
    std::fs::write(vol.path().join("in"), "from host\n").unwrap();
    let spec = format!("{}:/data", vol.path().display());
    let ro = format!("{}:/ro:ro", vol.path().display());
    let out = fresh
        .run(&[
            "run",
            "-v",
            &spec,
            "-v",
            &ro,
            &name,
            "sh",
            "-c",
            "cat /data/in; echo new > /data/out; touch /ro/x 2>/dev/null || echo ro",
        ])
        .ok();
    assert_eq!(out.stdout, "from host\nro\n");
    assert_eq!(
        std::fs::read_to_string(vol.path().join("out")).unwrap(),
        "new\n"
    );
}

use std::io::Read as _;

/// The file tree and history of `image` in `w`'s store.
fn image_tree(
    w: &Wharf,
    image: &str,
) -> (
    std::collections::BTreeMap<String, String>,
    crate::build::History,
) {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("i.tar");
    w.run(&["save", "-o", archive.to_str().unwrap(), image])
        .ok();
    let root = tmp.path().join("root");
    let history = crate::build::extract_image(&archive, &root);
    (crate::build::tree(&root), history)
}

#[test]
fn issue_5_copies_where_overlayfs_cannot_be_mounted() {
    if !ready() {
        return;
    }
    let w = Wharf::new();
    w.load_busybox();
    for name in ["zookeeper", "webapp"] {
        let ctx = fixture(name);
        let c = ctx.to_str().unwrap();
        let ov = format!("ov-{name}");
        let cp = format!("cp-{name}");
        w.run(&["build", "--network", "none", "-t", &ov, c]).ok();
        let copied = w
            .cmd()
            .env("WHARF_SNAPSHOTTER", "copy")
            .args(["build", "--no-cache", "--network", "none", "-t", &cp, c])
            .output()
            .unwrap();
        assert!(
            copied.status.success(),
            "{}",
            String::from_utf8_lossy(&copied.stderr)
        );
        let (a, b) = (image_tree(&w, &ov), image_tree(&w, &cp));
        assert_eq!(a.1, b.1, "{name}: histories differ");
        assert!(
            a.0 == b.0,
            "{name}: trees differ:\noverlay {:?}\ncopy {:?}",
            a.0,
            b.0
        );
    }
    // A store on overlayfs (wharf inside a container): overlay cannot stack on it, so the
    // build says so once and copies; run copies too.
    let outer = tempfile::tempdir().unwrap();
    for d in ["l", "u", "w", "m"] {
        std::fs::create_dir(outer.path().join(d)).unwrap();
    }
    let p = |d: &str| outer.path().join(d).display().to_string();
    let opts = format!("lowerdir={},upperdir={},workdir={}", p("l"), p("u"), p("w"));
    let ok = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts, &p("m")])
        .status()
        .unwrap()
        .success();
    assert!(ok, "mounting an overlay for the store");
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(p("m"));
    let mut inner = Wharf::new();
    inner.root = outer.path().join("m/store");
    inner.load_busybox();
    let built = inner
        .run(&[
            "build",
            "--network",
            "none",
            "-t",
            "in-overlay",
            fixture("webapp").to_str().unwrap(),
        ])
        .ok();
    assert_eq!(
        built
            .stderr
            .matches("overlayfs cannot be mounted here")
            .count(),
        1,
        "{}",
        built.stderr
    );
    let ran = inner.run(&["run", "--rm", "in-overlay"]).ok();
    assert!(
        ran.stdout.starts_with("hello from web app 1.0"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stderr.contains("running on a full copy"),
        "{}",
        ran.stderr
    );
    let (a, b) = (
        image_tree(&w, "ov-webapp"),
        image_tree(&inner, "in-overlay"),
    );
    assert!(a.0 == b.0, "trees differ");
}

#[test]
fn issue_5_run_networks_and_file_capabilities() {
    if !ready() {
        return;
    }
    let w = Wharf::new();
    // A base whose busybox carries a file capability (cap_net_raw+ep), imported from a tar
    // with the attribute, as image layers carry them.
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    let target = rootfs.join("bin/ping");
    std::fs::copy("/bin/busybox", &target).unwrap();
    // vfs_cap_data v2: magic|effective, permitted (bit 13: CAP_NET_RAW), inheritable, and the
    // high words.
    let mut cap = Vec::new();
    for word in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
        cap.extend_from_slice(&word.to_le_bytes());
    }
    let c_path = std::ffi::CString::new(target.to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of the length given.
    let r = unsafe {
        libc::setxattr(
            c_path.as_ptr(),
            c"security.capability".as_ptr(),
            cap.as_ptr().cast(),
            cap.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setting a file capability");
    let tar = dir.path().join("base.tar");
    let ok = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=security.capability", "-cf"])
        .arg(&tar)
        .arg("-C")
        .arg(&rootfs)
        .arg(".")
        .status()
        .unwrap()
        .success();
    assert!(ok);
    w.run(&["import", tar.to_str().unwrap(), "capbase:1"]).ok();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM capbase:1\n\
         RUN busybox mkdir -p /out && busybox chmod 750 /bin/ping\n\
         RUN --network=none busybox ls /sys/class/net > /out/none\n\
         RUN busybox ls /sys/class/net > /out/default\n\
         RUN --network=host busybox ls /sys/class/net > /out/host\n",
    )
    .unwrap();
    // RUN --network=host needs the entitlement.
    let refused = w
        .run(&["build", "-t", "caps", ctx.path().to_str().unwrap()])
        .fails();
    assert!(
        refused.stderr.contains("--allow network.host"),
        "{}",
        refused.stderr
    );
    w.run(&[
        "build",
        "--allow",
        "network.host",
        "-t",
        "caps",
        ctx.path().to_str().unwrap(),
    ])
    .ok();
    let nets = w
        .run(&[
            "run",
            "--rm",
            "caps",
            "busybox",
            "sh",
            "-c",
            "busybox cat /out/none; echo -; busybox cat /out/default",
        ])
        .ok()
        .stdout;
    let (none, default) = nets.split_once("-\n").unwrap();
    assert_eq!(none, "lo\n", "--network=none has only loopback");
    assert_eq!(
        default, "lo\ntap0\n",
        "its own network, through the NAT, by default"
    );
    // The RUN that changed /bin/ping's mode kept its capability in its layer.
    let archive = dir.path().join("caps.tar");
    w.run(&["save", "-o", archive.to_str().unwrap(), "caps"])
        .ok();
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    assert!(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&x)
            .status()
            .unwrap()
            .success()
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(x.join("manifest.json")).unwrap()).unwrap();
    let layer = manifest[0]["Layers"][1].as_str().unwrap();
    let data = std::fs::read(x.join(layer)).unwrap();
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(data.as_slice())
        .read_to_end(&mut plain)
        .unwrap();
    let mut found = None;
    for e in tar::Archive::new(plain.as_slice()).entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some("bin/ping") {
            let mode = e.header().mode().unwrap();
            for ext in e.pax_extensions().unwrap().into_iter().flatten() {
                let ext = ext.unwrap();
                if ext.key() == Ok("SCHILY.xattr.security.capability") {
                    found = Some((mode & 0o7777, ext.value_bytes().to_vec()));
                }
            }
        }
    }
    assert_eq!(found, Some((0o750, cap)), "bin/ping in the RUN's layer");
}

#[test]
fn issue_5_heredocs_bind_from_a_stage_terminals_and_signals() {
    if !ready() || !require("script") {
        return;
    }
    let w = Wharf::new();
    w.load_busybox();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM busybox AS tools\n\
         RUN mkdir /kit && echo from-the-tools-stage > /kit/note\n\
         FROM busybox\n\
         ARG WHO=heredoc\n\
         RUN <<EOF\n\
         echo \"script run by $0 for $WHO\" > /script.txt\n\
         EOF\n\
         RUN <<EOF\n\
         #!/bin/sh\n\
         echo \"shebang: $0\" > /shebang.txt\n\
         EOF\n\
         RUN cat <<EOF > /inline.txt && echo after >> /inline.txt\n\
         inline $WHO\n\
         EOF\n\
         RUN --mount=type=bind,from=tools,source=/kit,target=/kit cp /kit/note /note.txt\n",
    )
    .unwrap();
    w.run(&["build", "-t", "hd", ctx.path().to_str().unwrap()])
        .ok();
    let out = w
        .run(&[
            "run",
            "--rm",
            "hd",
            "cat",
            "/script.txt",
            "/shebang.txt",
            "/inline.txt",
            "/note.txt",
        ])
        .ok()
        .stdout;
    assert_eq!(
        out,
        "script run by /dev/pipes/EOF for heredoc\nshebang: /dev/pipes/EOF\ninline heredoc\nafter\nfrom-the-tools-stage\n"
    );
    // -t: a terminal of the container's own, and the exit code through it.
    let cmd = format!(
        "{} --progress plain run -t --rm busybox sh -c 'tty; exit 4'",
        WHARF
    );
    let t = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("WHARF_ROOT", &w.root)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(t.status.code(), Some(4));
    assert!(
        String::from_utf8_lossy(&t.stdout).contains("/dev/pts/0"),
        "{}",
        String::from_utf8_lossy(&t.stdout)
    );
    // SIGTERM to wharf run reaches the command, whose exit code comes back.
    let mut child = w
        .cmd()
        .args([
            "run",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "trap 'echo got TERM; exit 3' TERM; echo ready; while true; do sleep 0.1; done",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 64];
    while !String::from_utf8_lossy(&seen).contains("ready") {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "the container never got ready");
        seen.extend_from_slice(&buf[..n]);
    }
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    stdout.read_to_end(&mut seen).unwrap();
    assert_eq!(status.code(), Some(3));
    assert!(String::from_utf8_lossy(&seen).contains("got TERM"));
}

#[test]
fn issue_11_run_takes_docker_users_flags_and_stops_as_docker_does() {
    if !ready() {
        return;
    }
    let w = Wharf::new();
    w.load_busybox();
    // -h is the hostname, as in docker; what follows the image is the container's.
    let r = w
        .run(&[
            "run",
            "--rm",
            "--network",
            "none",
            "-h",
            "myhost",
            "busybox",
            "hostname",
        ])
        .ok();
    assert_eq!(r.stdout, "myhost\n");
    let r = w
        .run(&[
            "run",
            "--rm",
            "--network",
            "none",
            "busybox",
            "echo",
            "--help",
            "-d",
        ])
        .ok();
    assert_eq!(r.stdout, "--help -d\n");
    // docker flags wharf does not have are refused plainly.
    let r = w.run(&["run", "-d", "busybox", "true"]).fails();
    assert!(
        r.stderr
            .contains("docker's -d/--detach is not supported by wharf run"),
        "{}",
        r.stderr
    );
    let r = w.run(&["run", "-p", "8080:80", "busybox", "true"]).fails();
    assert!(
        r.stderr.contains("-p/--publish is not supported"),
        "{}",
        r.stderr
    );
    // -it with input that is not a terminal: refused up front, as docker does.
    let r = w
        .run_stdin(&["run", "-it", "busybox", "sh"], b"echo hi\n")
        .fails();
    assert!(
        r.stderr.contains("the input device is not a TTY"),
        "{}",
        r.stderr
    );
    // A PID 1 that ignores SIGTERM is killed --stop-timeout seconds later, and what an
    // earlier killed run left in containers/ is cleaned up by the next.
    // Starts a container whose PID 1 sets `traps` (ignoring the stop signals) and returns once
    // it is running.
    let stubborn = |stop_timeout: &str, traps: &str| {
        let mut child = w
            .cmd()
            .args(["run", "--rm", "--network", "none", "--stop-timeout"])
            .args([stop_timeout, "busybox", "sh", "-c"])
            .arg(format!(
                "{traps}; echo ready; while true; do sleep 0.1; done"
            ))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut seen = [0u8; 6];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut seen).unwrap();
        assert_eq!(&seen, b"ready\n");
        child
    };
    let stale = w.root.join("containers").join("0123456789ab-stale");
    std::fs::create_dir_all(stale.join("upper")).unwrap();
    let mut child = stubborn("1", "trap '' TERM");
    assert!(
        !stale.exists(),
        "the stale container directory is still there"
    );
    let asked = std::time::Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(137), "killed after the stop timeout");
    assert!(asked.elapsed() < std::time::Duration::from_secs(8));
    let left: Vec<_> = std::fs::read_dir(w.root.join("containers"))
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // A second Ctrl-C kills it at once, long before the stop timeout.
    let mut child = stubborn("60", "trap 'echo got INT' INT; trap '' TERM");
    let asked = std::time::Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    // The first reached the container (which ignored it) before the second is sent.
    let mut got = [0u8; 8];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut got).unwrap();
    assert_eq!(&got, b"got INT\n");
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(137));
    assert!(asked.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn issue_11_first_errors_say_what_is_wrong() {
    let w = Wharf::new();
    let r = w.run(&["run", "--rm", "nosuchimage"]).fails();
    let first = r.stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains("nosuchimage is not in the local store"),
        "{}",
        r.stderr
    );
    let r = w.run(&["build", "/nonexistent/ctx"]).fails();
    assert!(
        r.stderr
            .contains("the context directory /nonexistent/ctx cannot be read"),
        "{}",
        r.stderr
    );
    if !ready() {
        return;
    }
    // builder prune reports what it freed: the snapshots and cache layers too.
    w.load_busybox();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM busybox\nRUN --network=none dd if=/dev/zero of=/big bs=1M count=8 2>/dev/null\n",
    )
    .unwrap();
    w.run(&["build", ctx.path().to_str().unwrap()]).ok();
    let r = w.run(&["builder", "prune", "-f"]).ok();
    let freed = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Total reclaimed space: "))
        .unwrap_or_default()
        .to_owned();
    assert!(
        freed.ends_with("MB") && freed.trim_end_matches("MB").parse::<f64>().unwrap() >= 8.0,
        "{}",
        r.stdout
    );
}

/// A build's JSON progress events, from `wharf --progress json build …`; fails the test unless
/// the build succeeds.
fn json_build(w: &Wharf, args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(WHARF)
        .env("WHARF_ROOT", &w.root)
        .env("DOCKER_CONFIG", &w.docker_config)
        .args(["--progress", "json", "build"])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn issue_12_a_slow_stage_holds_up_only_what_depends_on_it() {
    if !ready() {
        return;
    }
    let w = Wharf::new();
    w.load_busybox();
    let ctx = w.dir().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    // `slow` and `fast` are independent; `next` needs only `fast`, so it runs while `slow` is
    // still sleeping (run in waves, it waited for both).
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox AS slow\nRUN sleep 3 && echo slow > /s\n\
         FROM busybox AS fast\nRUN echo fast > /f\n\
         FROM fast AS next\nRUN echo next > /n\n\
         FROM busybox\nCOPY --from=slow /s /s\nCOPY --from=next /n /n\n",
    )
    .unwrap();
    let events = json_build(&w, &["--no-cache", "-t", "queue:1", ctx.to_str().unwrap()]);
    let id_of = |instruction: &str| {
        events
            .iter()
            .find(|e| e["type"] == "step" && e["data"]["instruction"] == instruction)
            .and_then(|e| e["data"]["id"].as_u64())
            .unwrap_or_else(|| panic!("no step {instruction:?} in {events:?}"))
    };
    let position = |kind: &str, id: u64| {
        events
            .iter()
            .position(|e| e["type"] == kind && e["data"]["id"].as_u64() == Some(id))
            .unwrap_or_else(|| panic!("no {kind} event for #{id}"))
    };
    let slow = id_of("RUN sleep 3 && echo slow > /s");
    let next = id_of("RUN echo next > /n");
    assert!(
        position("done", next) < position("done", slow),
        "the stage after `fast` waited for `slow`: {events:?}"
    );
}

#[test]
fn issue_12_run_mounts_from_an_image_are_keyed_by_its_content() {
    if !ready() {
        return;
    }
    let w = Wharf::new();
    w.load_busybox();
    let dir = w.dir().join("ctx");
    std::fs::create_dir_all(&dir).unwrap();
    let image = |word: &str| {
        std::fs::write(
            dir.join("Dockerfile"),
            format!("FROM busybox\nRUN echo {word} > /marker\n"),
        )
        .unwrap();
        w.run(&["build", "-q", "-t", "marker:1", dir.to_str().unwrap()])
            .ok();
    };
    let consumer = w.dir().join("consumer");
    std::fs::create_dir_all(&consumer).unwrap();
    std::fs::write(
        consumer.join("Dockerfile"),
        "FROM busybox\nRUN --mount=type=bind,from=marker:1,target=/m cat /m/marker > /seen\n",
    )
    .unwrap();
    let seen = || {
        w.run(&[
            "build",
            "-q",
            "-t",
            "consumer:1",
            consumer.to_str().unwrap(),
        ])
        .ok();
        w.run(&[
            "run",
            "--rm",
            "--network",
            "none",
            "consumer:1",
            "cat",
            "/seen",
        ])
        .ok()
        .stdout
    };
    image("first");
    assert_eq!(seen().trim(), "first");
    // The same name, other content: the RUN must run again, not reuse the first result.
    image("second");
    assert_eq!(seen().trim(), "second");
}
