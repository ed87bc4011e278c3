//! Issue 10: several wharf processes on one store, and stages of one build running at once.
//! Each pairing runs in a loop, bounded in time, and every failure is looked at: the only ones
//! allowed are those the other process caused for real (an image it removed is not there).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::fake::{Blobs, Fake};
use crate::support::*;

/// Runs `other` in a loop on another thread while `main` runs `rounds` times (or until
/// `limit`); returns the failures `main` reported that `allowed` does not excuse.
fn beside(
    rounds: usize,
    limit: Duration,
    main: impl Fn(usize) -> Run,
    other: impl Fn() + Send + 'static,
    allowed: impl Fn(&Run) -> bool,
) -> (usize, Vec<String>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let loop_thread = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            other();
        }
    });
    let started = Instant::now();
    let mut spurious = Vec::new();
    let mut done = 0;
    while done < rounds && started.elapsed() < limit {
        let r = main(done);
        if r.status != 0 && !allowed(&r) {
            spurious.push(r.stderr.lines().last().unwrap_or_default().to_owned());
        }
        done += 1;
    }
    stop.store(true, Ordering::Relaxed);
    loop_thread.join().unwrap();
    (done, spurious)
}

#[test]
fn issue_10_independent_stages_run_at_once_without_collisions() {
    if !require_root() || !have_busybox() {
        return;
    }
    let w = Wharf::new();
    w.load_busybox();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("a.txt"), "a\n").unwrap();
    // A FROM scratch stage with COPY beside a FROM busybox stage with WORKDIR, then a stage
    // copying from both: the two first write their layers at the same time.
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch AS a\nCOPY a.txt /a/\nCOPY a.txt /b/\n\
         FROM busybox AS b\nWORKDIR /x\nWORKDIR /y\n\
         FROM busybox\nCOPY --from=a /a /from-a\nCOPY --from=b /x /from-b\n",
    )
    .unwrap();
    let dir = ctx.path().to_str().unwrap();
    // The busybox snapshot exists before the loop, as in a store that holds other builds.
    w.run(&["build", "-q", dir]).ok();
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut n = 0;
    while n < 150 && started.elapsed() < Duration::from_secs(40) {
        let r = w.run(&["build", "-q", "--no-cache", dir]);
        if r.status != 0 {
            failures.push(r.stderr);
        }
        n += 1;
    }
    assert!(n >= 50, "only {n} builds in time");
    assert!(
        failures.is_empty(),
        "{} of {n} builds failed: {:?}",
        failures.len(),
        failures.first()
    );
}

#[test]
fn issue_10_pull_beside_rmi_of_the_same_image() {
    let layer: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let fake = Fake::new("race/app:1", layer, Blobs::Honest);
    let server = fake.start();
    let w = Arc::new(Wharf::new());
    let image = format!("{}/race/app:1", server.addr);
    let (w2, image2) = (w.clone(), image.clone());
    let (n, spurious) = beside(
        200,
        Duration::from_secs(40),
        |_| w.run(&["pull", "-q", &image]),
        move || {
            let _ = w2.run(&["rmi", &image2]);
        },
        |_| false,
    );
    assert!(n >= 50, "only {n} pulls in time");
    assert!(
        spurious.is_empty(),
        "{} of {n} pulls failed: {spurious:?}",
        spurious.len()
    );
}

#[test]
fn issue_10_builds_beside_rmi_of_their_base_and_builder_prune() {
    if !require_root() || !have_busybox() {
        return;
    }
    let w = Arc::new(Wharf::new());
    let layout = busybox_layout();
    let layout = layout.to_str().unwrap().to_owned();
    // base:1 is the base's only name, so removing it removes the image and its blobs.
    let make_base = {
        let (w, layout) = (w.clone(), layout.clone());
        move || {
            let _ = w.run(&["load", "-q", "-i", &layout]);
            let _ = w.run(&["tag", "busybox", "base:1"]);
            let _ = w.run(&["rmi", "busybox"]);
        }
    };
    make_base();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("f.txt"), "f\n").unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM base:1\nCOPY f.txt /f.txt\nRUN --network=none cat /f.txt > /g\nWORKDIR /w\n",
    )
    .unwrap();
    let dir = ctx.path().to_str().unwrap().to_owned();
    // The only failure the other side can cause: the base was removed before the build
    // looked for it, so it tries Docker Hub (unreachable here).
    let base_gone = |r: &Run| r.stderr.contains("pulling") && r.stderr.contains("base:1");
    let (w2, mb) = (w.clone(), make_base.clone());
    let (n, spurious) = beside(
        120,
        Duration::from_secs(45),
        |i| {
            let mut args = vec!["build", "-q"];
            if i % 2 == 0 {
                args.push("--no-cache");
            }
            args.push(&dir);
            w.run(&args)
        },
        move || {
            let _ = w2.run(&["rmi", "base:1"]);
            mb();
        },
        base_gone,
    );
    assert!(n >= 20, "only {n} builds in time");
    assert!(
        spurious.is_empty(),
        "beside rmi, {} of {n} builds failed: {spurious:?}",
        spurious.len()
    );
    let w3 = w.clone();
    let (n, spurious) = beside(
        120,
        Duration::from_secs(45),
        |_| w.run(&["build", "-q", &dir]),
        move || {
            let _ = w3.run(&["builder", "prune"]);
        },
        |_| false,
    );
    assert!(n >= 20, "only {n} builds in time");
    assert!(
        spurious.is_empty(),
        "beside prune, {} of {n} builds failed: {spurious:?}",
        spurious.len()
    );
    // With nothing running, prune removes the snapshots.
    w.run(&["builder", "prune"]).ok();
    let left: Vec<_> = std::fs::read_dir(w.root.join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "tmp" && n != ".lock")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
