//! `build`: `wharf build` against docker's BuildKit and buildah on the same context, in one
//! run: the Dockerfile of the no-RUN fixture plus ten small RUN steps and one writing 100 MiB.
//! Cold build (no cache, base image present), no-op rebuild, and rebuild after one COPYed file
//! changed; the cost of one `RUN true` step (twenty of them, less the same build without them)
//! against BuildKit's; then the time to start `run IMAGE true` against `docker run --rm` and
//! `podman run --rm`. Ratios are the peer's time over wharf's.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{Args, median, run, support, wharf_cmd};

/// The benchmark's Dockerfile: the previous issue's, with the RUN steps in its last stage.
fn dockerfile() -> String {
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/build/no-run/Dockerfile"),
    )
    .unwrap();
    let mut runs = String::new();
    for i in 1..=10 {
        runs.push_str(&format!("RUN echo step {i} > /srv/step-{i}\n"));
    }
    runs.push_str("RUN dd if=/dev/urandom of=/srv/big bs=1M count=100 2>/dev/null\n");
    // The RUN steps go after the stage's first COPY, before the one of the file that changes.
    base.replacen(
        "FROM busybox\nCOPY --from=build /app /srv\n",
        &format!("FROM busybox\nCOPY --from=build /app /srv\n{runs}"),
        1,
    )
}

fn copy_dir(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

struct Line {
    name: &'static str,
    wharf: Duration,
    peers: Vec<(&'static str, Duration)>,
}

impl Line {
    fn print(&self) {
        let mut s = format!("{:<24} wharf {:>7.3}s", self.name, self.wharf.as_secs_f64());
        for (n, d) in &self.peers {
            s.push_str(&format!(
                "   {n} {:>7.3}s (ratio {:>5.2}x)",
                d.as_secs_f64(),
                d.as_secs_f64() / self.wharf.as_secs_f64()
            ));
        }
        println!("{s}");
    }
}

pub fn bench(args: &Args) {
    for tool in ["buildah", "podman", "dockerd"] {
        assert!(
            support::require(tool),
            "the build benchmark needs {tool} (run .ci/install-deps)"
        );
    }
    let base = std::env::var("WHARF_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let dir = tempfile::tempdir_in(&base).unwrap();
    let d = support::Dockerd::start().expect("starting dockerd");
    let ctx = dir.path().join("ctx");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/build/no-run"),
        &ctx,
    );
    std::fs::write(ctx.join("Dockerfile"), dockerfile()).unwrap();
    let changed = ctx.join("a.conf");
    let original = std::fs::read_to_string(&changed).unwrap();

    // The busybox base for everyone (not timed).
    let layout = support::busybox_layout();
    let root = dir.path().join("wharf");
    super::load_image(&root, &layout);
    let archive = dir.path().join("busybox.tar");
    assert!(
        wharf_cmd(&root)
            .args(["save", "-o"])
            .arg(&archive)
            .arg("busybox")
            .status()
            .unwrap()
            .success()
    );
    d.docker(&["load", "-i", archive.to_str().unwrap()]).ok();
    let buildah = |sub: &[&str]| {
        let mut c = Command::new("buildah");
        c.arg("--root")
            .arg(dir.path().join("buildah/root"))
            .arg("--runroot")
            .arg(dir.path().join("buildah/run"))
            .args(["--storage-driver", "overlay"])
            .args(sub);
        c
    };
    let podman = |sub: &[&str]| {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(dir.path().join("podman/root"))
            .arg("--runroot")
            .arg(dir.path().join("podman/run"))
            .args([
                "--storage-driver",
                "overlay",
                "--runtime",
                "runc",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .args(sub);
        c
    };
    let from = format!("docker-archive:{}", archive.display());
    run(&mut buildah(&["pull", "-q", &from]));
    run(&mut podman(&[
        "load",
        "-q",
        "-i",
        archive.to_str().unwrap(),
    ]));
    let id = String::from_utf8_lossy(&buildah(&["images", "-q"]).output().unwrap().stdout)
        .lines()
        .next()
        .unwrap()
        .to_owned();
    run(&mut buildah(&["tag", &id, "busybox"]));

    let c = ctx.to_str().unwrap();
    let wharf_build = || {
        let mut cmd = wharf_cmd(&root);
        cmd.args(["build", "--network", "none", "-t", "bench", c]);
        cmd
    };
    let docker_build = || {
        let mut cmd = Command::new("/usr/bin/docker");
        cmd.args(["-H", &format!("unix://{}", d.sock)])
            .args(["build", "-q", "--network", "none", "-t", "bench", c])
            .env("DOCKER_BUILDKIT", "1");
        cmd
    };
    let buildah_build = || {
        buildah(&[
            "bud",
            "-q",
            "--layers",
            "--runtime",
            "runc",
            "--network",
            "none",
            "-t",
            "bench",
            c,
        ])
    };
    let (mut cold, mut noop, mut one) = (
        [Vec::new(), Vec::new(), Vec::new()],
        [Vec::new(), Vec::new(), Vec::new()],
        [Vec::new(), Vec::new(), Vec::new()],
    );
    for round in 0..args.rounds {
        std::fs::write(&changed, &original).unwrap();
        // Cold: every tool's build cache emptied first (the base image stays).
        let _ = wharf_cmd(&root).args(["builder", "prune", "-f"]).output();
        let _ = wharf_cmd(&root).args(["rmi", "bench"]).output();
        let _ = d.docker(&["rmi", "-f", "bench"]);
        let _ = d.docker(&["builder", "prune", "-af"]);
        let _ = buildah(&["rmi", "-f", "bench"]).output();
        let _ = buildah(&["rmi", "--prune"]).output();
        super::settle();
        cold[0].push(run(&mut wharf_build()));
        super::settle();
        cold[1].push(run(&mut docker_build()));
        super::settle();
        cold[2].push(run(&mut buildah_build()));
        // No-op.
        noop[0].push(run(&mut wharf_build()));
        noop[1].push(run(&mut docker_build()));
        noop[2].push(run(&mut buildah_build()));
        // One COPYed file changed.
        std::fs::write(&changed, format!("{original}# round {round}\n")).unwrap();
        super::settle();
        one[0].push(run(&mut wharf_build()));
        super::settle();
        one[1].push(run(&mut docker_build()));
        super::settle();
        one[2].push(run(&mut buildah_build()));
    }
    std::fs::write(&changed, &original).unwrap();
    for (name, v) in [
        ("cold build", cold),
        ("no-op rebuild", noop),
        ("one-file rebuild", one),
    ] {
        let [w, b, h] = v;
        Line {
            name,
            wharf: median(w),
            peers: vec![("buildkit", median(b)), ("buildah", median(h))],
        }
        .print();
    }

    // One `RUN true` step: twenty of them, less the same build without them, per step. wharf's
    // RUN has its default network (its own namespace and slirp4netns); BuildKit's has none,
    // because this dockerd runs without a bridge.
    let steps = dir.path().join("steps");
    std::fs::create_dir_all(steps.join("with")).unwrap();
    std::fs::create_dir_all(steps.join("without")).unwrap();
    let runs: String = (1..=20).map(|i| format!("RUN true # {i}\n")).collect();
    std::fs::write(
        steps.join("with/Dockerfile"),
        format!("FROM busybox\n{runs}"),
    )
    .unwrap();
    std::fs::write(
        steps.join("without/Dockerfile"),
        "FROM busybox\nLABEL x=1\n",
    )
    .unwrap();
    let mut per_step = [Vec::new(), Vec::new()];
    for _ in 0..args.rounds {
        let mut t = [[Duration::ZERO; 2]; 2];
        for (i, which) in ["with", "without"].iter().enumerate() {
            let c = steps.join(which);
            let c = c.to_str().unwrap();
            super::settle();
            t[0][i] = run(wharf_cmd(&root).args(["build", "--no-cache", "-q", c]));
            super::settle();
            t[1][i] = run(d
                .command(&["build", "-q", "--no-cache", "--network", "none", c])
                .env("DOCKER_BUILDKIT", "1"));
        }
        for tool in 0..2 {
            per_step[tool].push(t[tool][0].saturating_sub(t[tool][1]) / 20);
        }
    }
    let [w, b] = per_step;
    Line {
        name: "RUN true (one step)",
        wharf: median(w),
        peers: vec![("buildkit", median(b))],
    }
    .print();

    // Starting a container: `run IMAGE true`, ten times each, median.
    let mut starts = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..10.max(args.rounds) {
        starts[0].push(run(
            wharf_cmd(&root).args(["run", "--rm", "busybox", "true"])
        ));
        starts[1].push(run(&mut d.command(&[
            "run",
            "--rm",
            "--network",
            "none",
            "busybox",
            "true",
        ])));
        starts[2].push(run(&mut podman(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=32768:32768",
            "busybox",
            "true",
        ])));
    }
    let [w, dk, pm] = starts;
    Line {
        name: "run IMAGE true",
        wharf: median(w),
        peers: vec![("docker", median(dk)), ("podman", median(pm))],
    }
    .print();
}
