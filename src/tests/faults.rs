//! A registry that lies, breaks, stalls, demands tokens or redirects, and what wharf does.

use std::time::{Duration, Instant};

use crate::fake::{Blobs, Fake, storage};
use crate::support::*;

fn random(n: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

#[test]
fn issue_2_wrong_blob_bytes_fail_the_pull_and_store_nothing() {
    let fake = Fake::new("evil/app:1", random(300_000), Blobs::Corrupt);
    let server = fake.start();
    let w = Wharf::new();
    let r = w
        .run(&["pull", &format!("{}/evil/app:1", server.addr)])
        .fails();
    assert!(
        r.stderr.contains(&fake.layer_digest()),
        "names the digest: {}",
        r.stderr
    );
    assert!(r.stderr.contains("mismatch"), "{}", r.stderr);
    assert_eq!(
        w.store_files(),
        Vec::<String>::new(),
        "nothing of the image is stored"
    );
    assert_eq!(w.run(&["images", "-q"]).ok().stdout, "");
}

#[test]
fn issue_2_broken_download_resumes_with_range() {
    let layer = random(2_000_000);
    let fake = Fake::new("flaky/app:1", layer, Blobs::BreakOnce);
    let server = fake.start();
    let w = Wharf::new();
    w.run(&["pull", &format!("{}/flaky/app:1", server.addr)])
        .ok();
    let ranges: Vec<String> = fake.log(|l| {
        l.requests
            .iter()
            .filter_map(|(_, r, _)| r.clone())
            .collect()
    });
    assert_eq!(ranges.len(), 1, "one resumed request: {ranges:?}");
    let offset: u64 = ranges[0]
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(offset > 0, "{ranges:?}");
    assert!(w.ingest_files().is_empty());
}

#[test]
fn issue_2_killed_pull_resumes_and_leaves_no_stray_files() {
    let fake = Fake::new("slow/app:1", random(3_000_000), Blobs::Slow);
    let server = fake.start();
    let w = Wharf::new();
    let image = format!("{}/slow/app:1", server.addr);
    let mut child = w
        .cmd()
        .args(["pull", &image])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until part of the layer is on disk, then kill -9.
    let start = Instant::now();
    let partial = loop {
        let found = std::fs::read_dir(w.root.join("ingest"))
            .ok()
            .and_then(|rd| {
                rd.flatten().find(|e| {
                    e.file_name().to_string_lossy().ends_with(".partial")
                        && e.metadata().is_ok_and(|m| m.len() > 200_000)
                })
            });
        if let Some(e) = found {
            break e.path();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the pull never wrote a partial layer"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(partial.exists());

    fake.set_mode(Blobs::Honest);
    w.run(&["pull", &image]).ok();
    let resumed = fake.log(|l| {
        l.requests
            .iter()
            .filter_map(|(_, r, _)| r.as_deref())
            .filter_map(|r| {
                r.trim_start_matches("bytes=")
                    .trim_end_matches('-')
                    .parse::<u64>()
                    .ok()
            })
            .max()
    });
    assert!(
        resumed.is_some_and(|o| o >= 200_000),
        "the second pull resumed the partial file: {resumed:?}"
    );
    assert!(w.ingest_files().is_empty(), "stray: {:?}", w.ingest_files());
    // Exactly the image's manifest, config and layer remain.
    let blobs: Vec<_> = w
        .store_files()
        .into_iter()
        .filter(|f| f.starts_with("blobs/"))
        .collect();
    assert_eq!(blobs.len(), 3, "{blobs:?}");
    let out = w.dir().join("check.tar");
    w.run(&["save", "-o", out.to_str().unwrap(), &image]).ok();
}

#[test]
fn issue_2_token_auth_and_redirects_keep_the_token_at_home() {
    let layer = random(100_000);
    let probe = Fake::new("x/y:1", layer.clone(), Blobs::Honest);
    let (store_server, seen) = storage(probe.blobs());
    let fake = Fake::build(
        "team/app:1",
        layer,
        Blobs::Honest,
        true,
        Some(format!("http://{}", store_server.addr)),
    );
    let server = fake.start();
    let w = Wharf::new();
    w.run(&["pull", &format!("{}/team/app:1", server.addr)])
        .ok();
    let scopes = fake.log(|l| l.token_scopes.clone());
    assert!(
        scopes.iter().any(|s| s == "repository:team/app:pull"),
        "{scopes:?}"
    );
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "blobs were fetched from the storage host");
    assert!(
        seen.iter().all(Option::is_none),
        "no Authorization header crossed the redirect: {seen:?}"
    );
}

#[test]
fn issue_2_malformed_references_are_shown() {
    let w = Wharf::new();
    for bad in [
        "Busybox:latest",
        "busybox:-bad",
        "localhost:5000/a//b",
        "busybox@sha256:123",
    ] {
        let r = w.run(&["pull", bad]).fails();
        assert!(
            r.stderr.contains(&format!("{bad:?}")),
            "{bad}: {}",
            r.stderr
        );
    }
    let r = w.run(&["tag", "nothing-here", "x:1"]).fails();
    assert!(
        r.stderr.contains("no such image: nothing-here"),
        "{}",
        r.stderr
    );
}
