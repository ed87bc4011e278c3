//! `wharf serve` as the private registry of real clients: docker, podman, skopeo and wharf's
//! own client; then crashes and concurrency (issue 3).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::layout::write_layout;
use crate::support::*;

fn skopeo_inspect(reference: &str) -> serde_json::Value {
    let r = skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ])
    .ok();
    serde_json::from_str(&r.stdout).unwrap()
}

fn skopeo_raw(reference: &str) -> Vec<u8> {
    let out = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Pushes the busybox fixture to `reference` with skopeo.
fn seed_busybox(reference: &str) {
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:latest", busybox_layout().display()),
        &format!("docker://{reference}"),
    ])
    .ok();
}

/// The media type of the first layer of `reference`'s manifest.
fn first_layer_type(reference: &str) -> String {
    let m: serde_json::Value = serde_json::from_slice(&skopeo_raw(reference)).unwrap();
    m["layers"][0]["mediaType"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The busybox fixture recompressed with zstd into an OCI layout at `dir` (tag `1`). Written
/// to a layout first because skopeo and podman would otherwise reuse the gzip blobs the
/// registry already has.
fn zstd_busybox(dir: &std::path::Path) -> String {
    skopeo(&[
        "copy",
        "--dest-compress-format",
        "zstd",
        &format!("oci:{}:latest", busybox_layout().display()),
        &format!("oci:{}:1", dir.display()),
    ])
    .ok();
    format!("oci:{}:1", dir.display())
}

#[test]
fn issue_3_docker_pushes_and_pulls_through_wharf_serve() {
    if !require("skopeo") || !have_busybox() {
        return;
    }
    let Some(d) = Dockerd::start() else { return };
    let serve = WharfServe::start();
    let a = &serve.addr;
    seed_busybox(&format!("{a}/fixtures/busybox:1"));
    let seeded = skopeo_inspect(&format!("{a}/fixtures/busybox:1"))["Digest"].clone();

    let pulled = d.docker(&["pull", &format!("{a}/fixtures/busybox:1")]).ok();
    assert!(
        pulled.stdout.contains(seeded.as_str().unwrap()),
        "{}",
        pulled.stdout
    );
    let ran = d
        .docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            &format!("{a}/fixtures/busybox:1"),
            "echo",
            "ok",
        ])
        .ok();
    assert_eq!(ran.stdout.trim(), "ok");

    d.docker(&[
        "tag",
        &format!("{a}/fixtures/busybox:1"),
        &format!("{a}/docker/pushed:v2"),
    ])
    .ok();
    let pushed = d.docker(&["push", &format!("{a}/docker/pushed:v2")]).ok();
    let pushed_digest = pushed
        .stdout
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no digest in docker push output: {}", pushed.stdout))
        .to_owned();
    assert_eq!(
        skopeo_inspect(&format!("{a}/docker/pushed:v2"))["Digest"],
        pushed_digest.as_str()
    );

    // Pulled back by digest after removing it locally.
    d.docker(&[
        "rmi",
        &format!("{a}/docker/pushed:v2"),
        &format!("{a}/fixtures/busybox:1"),
    ])
    .ok();
    d.docker(&["pull", &format!("{a}/docker/pushed@{pushed_digest}")])
        .ok();
    let ran = d
        .docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            &format!("{a}/docker/pushed@{pushed_digest}"),
            "sh",
            "-c",
            "echo again",
        ])
        .ok();
    assert_eq!(ran.stdout.trim(), "again");
}

#[test]
fn issue_3_podman_pushes_and_pulls_through_wharf_serve() {
    if !require("skopeo") || !require("podman") || !have_busybox() || !require_root() {
        return;
    }
    let serve = WharfServe::start();
    let a = &serve.addr;
    seed_busybox(&format!("{a}/fixtures/busybox:1"));
    let tmp = tempfile::tempdir().unwrap();
    // What the README says podman needs (Debian 12's 4.3): --tls-verify=false (or an
    // `insecure = true` registries.conf entry) even on 127.0.0.1, unlike docker.
    let r = podman(tmp.path(), &["pull", &format!("{a}/fixtures/busybox:1")]).fails();
    assert!(
        r.stderr.contains("HTTP response to HTTPS client"),
        "{}",
        r.stderr
    );
    podman(
        tmp.path(),
        &[
            "pull",
            "--tls-verify=false",
            &format!("{a}/fixtures/busybox:1"),
        ],
    )
    .ok();
    podman(
        tmp.path(),
        &[
            "tag",
            &format!("{a}/fixtures/busybox:1"),
            &format!("{a}/podman/bb:2"),
        ],
    )
    .ok();
    podman(
        tmp.path(),
        &["push", "--tls-verify=false", &format!("{a}/podman/bb:2")],
    )
    .ok();
    // A second podman store pulls both back.
    let other = tempfile::tempdir().unwrap();
    podman(
        other.path(),
        &["pull", "--tls-verify=false", &format!("{a}/podman/bb:2")],
    )
    .ok();
    let listed = podman(
        other.path(),
        &["images", "--format", "{{.Repository}}:{{.Tag}}"],
    )
    .ok();
    assert!(
        listed.stdout.contains(&format!("{a}/podman/bb:2")),
        "{}",
        listed.stdout
    );
}

#[test]
fn issue_3_skopeo_both_ways_zstd_and_wharf_client() {
    if !require("skopeo") || !have_busybox() {
        return;
    }
    let serve = WharfServe::start();
    let a = &serve.addr;
    // zstd first, into an empty registry: skopeo would push the gzip blobs it knows the
    // registry has instead.
    let tmp = tempfile::tempdir().unwrap();
    let zstd = zstd_busybox(&tmp.path().join("zstd"));
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &zstd,
        &format!("docker://{a}/zstd/busybox:1"),
    ])
    .ok();
    seed_busybox(&format!("{a}/fixtures/busybox:1"));
    let seeded = skopeo_raw(&format!("{a}/fixtures/busybox:1"));

    // Out again with skopeo: the same manifest bytes, every blob verified by skopeo.
    let out = tmp.path().join("out");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{a}/fixtures/busybox:1"),
        &format!("oci:{}:x", out.display()),
    ])
    .ok();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"],
        format!("sha256:{}", sha256_hex(&seeded))
    );

    // zstd layers go in (pushed above) and out.
    let t = first_layer_type(&format!("{a}/zstd/busybox:1"));
    assert_eq!(t, "application/vnd.oci.image.layer.v1.tar+zstd");
    let zout = tmp.path().join("zout");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{a}/zstd/busybox:1"),
        &format!("oci:{}:x", zout.display()),
    ])
    .ok();

    // wharf's own client: pull, tag, push (blobs mounted from the source repository), pull.
    let w = Wharf::new();
    w.run(&["pull", &format!("{a}/zstd/busybox:1")]).ok();
    w.run(&[
        "tag",
        &format!("{a}/zstd/busybox:1"),
        &format!("{a}/wharf/copy:1"),
    ])
    .ok();
    let pushed = w.run(&["push", &format!("{a}/wharf/copy:1")]).ok();
    assert!(pushed.stderr.contains("Mounted from"), "{}", pushed.stderr);
    assert_eq!(
        skopeo_raw(&format!("{a}/wharf/copy:1")),
        skopeo_raw(&format!("{a}/zstd/busybox:1")),
        "pushed byte for byte"
    );
    let fresh = Wharf::new();
    fresh.run(&["pull", &format!("{a}/wharf/copy:1")]).ok();
    let tags = http_get(a, "/v2/wharf/copy/tags/list").unwrap();
    assert_eq!(
        String::from_utf8_lossy(&tags.2),
        r#"{"name":"wharf/copy","tags":["1"]}"#
    );
}

#[test]
fn issue_3_multi_platform_index_comes_back_identical() {
    if !require("skopeo") || !have_busybox() {
        return;
    }
    let serve = WharfServe::start();
    let a = &serve.addr;
    let tmp = tempfile::tempdir().unwrap();
    let index = push_index(
        tmp.path(),
        &["linux/amd64", "linux/arm64/v8", "linux/riscv64"],
        &format!("{a}/multi/bb:1"),
    );
    let raw = skopeo_raw(&format!("{a}/multi/bb:1"));
    assert_eq!(format!("sha256:{}", sha256_hex(&raw)), index);
    let back = tmp.path().join("back");
    skopeo(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{a}/multi/bb:1"),
        &format!("oci:{}:1", back.display()),
    ])
    .ok();
    let top: serde_json::Value =
        serde_json::from_slice(&std::fs::read(back.join("index.json")).unwrap()).unwrap();
    assert_eq!(top["manifests"][0]["digest"], index.as_str());
    // Each platform's manifest is there by digest with its own media type.
    let idx: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    for m in idx["manifests"].as_array().unwrap() {
        let d = m["digest"].as_str().unwrap();
        let got = skopeo_raw(&format!("{a}/multi/bb@{d}"));
        assert_eq!(format!("sha256:{}", sha256_hex(&got)), d);
    }
}

/// Random-content OCI layouts, one per pusher, sharing `shared` layers.
fn random_layouts(
    dir: &std::path::Path,
    n: usize,
    shared: &[Vec<u8>],
    own_size: usize,
) -> Vec<std::path::PathBuf> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("img{i}"));
            let mut layers = shared.to_vec();
            if own_size > 0 {
                let own: Vec<u8> = (0..own_size).map(|_| rand::random::<u8>()).collect();
                layers.push(crate::layout::tar_of(&[("own", &own)]));
            }
            write_layout(&p, None, &layers, "1");
            p
        })
        .collect()
}

fn spawn_push(layout: &std::path::Path, dest: &str) -> std::process::Child {
    Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false", "--retry-times", "0"])
        .arg(format!("oci:{}:1", layout.display()))
        .arg(format!("docker://{dest}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn issue_3_kill_9_during_20_pushes_loses_nothing_acknowledged() {
    if !require("skopeo") {
        return;
    }
    let mut serve = WharfServe::start();
    let a = serve.addr.clone();
    let tmp = tempfile::tempdir().unwrap();
    let layouts = random_layouts(tmp.path(), 20, &[], 6 << 20);
    let mut children: Vec<_> = layouts
        .iter()
        .enumerate()
        .map(|(i, l)| Some(spawn_push(l, &format!("{a}/crash/img{i}:1"))))
        .collect();
    // Let some finish, then crash the server under the rest.
    let start = Instant::now();
    let mut acknowledged = vec![false; layouts.len()];
    loop {
        for (i, c) in children.iter_mut().enumerate() {
            if let Some(child) = c
                && let Ok(Some(status)) = child.try_wait()
            {
                acknowledged[i] = status.success();
                *c = None;
            }
        }
        let done = acknowledged.iter().filter(|a| **a).count();
        if done >= 3 || start.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    serve.kill9();
    for c in children.iter_mut().flatten() {
        let _ = c.wait();
    }
    let acked: Vec<usize> = (0..layouts.len()).filter(|i| acknowledged[*i]).collect();
    assert!(
        !acked.is_empty() && acked.len() < layouts.len(),
        "crash must land mid-way: {acked:?}"
    );

    serve.restart();
    // No blob is visible that is not complete and correct.
    for (digest, bytes) in serve.blob_files() {
        assert_eq!(
            format!("sha256:{}", sha256_hex(&bytes)),
            digest,
            "partial blob visible"
        );
    }
    // Every acknowledged manifest is complete: skopeo copies it out, verifying every blob.
    for i in &acked {
        let out = tmp.path().join(format!("out{i}"));
        skopeo(&[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{a}/crash/img{i}:1"),
            &format!("oci:{}:1", out.display()),
        ])
        .ok();
    }
    // The interrupted pushes succeed when retried.
    for (i, l) in layouts.iter().enumerate() {
        if !acknowledged[i] {
            let out = spawn_push(l, &format!("{a}/crash/img{i}:1"))
                .wait_with_output()
                .unwrap();
            assert!(
                out.status.success(),
                "retry {i}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            skopeo_inspect(&format!("{a}/crash/img{i}:1"));
        }
    }
}

#[test]
fn issue_3_fifty_pushers_share_layers_stored_once() {
    if !require("skopeo") {
        return;
    }
    let serve = WharfServe::start();
    let a = &serve.addr;
    let tmp = tempfile::tempdir().unwrap();
    let shared: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            let data: Vec<u8> = (0..(512 << 10)).map(|_| rand::random::<u8>()).collect();
            crate::layout::tar_of(&[(&format!("shared{i}"), &data)])
        })
        .collect();
    let layouts = random_layouts(tmp.path(), 50, &shared, 1024);
    let children: Vec<_> = layouts
        .iter()
        .enumerate()
        .map(|(i, l)| spawn_push(l, &format!("{a}/many/repo{i}:1")))
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "pusher {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // 3 shared layers + 50 own layers + 50 configs, each once.
    let files = serve.blob_files();
    let mut digests: Vec<&String> = files.iter().map(|(d, _)| d).collect();
    digests.sort();
    digests.dedup();
    assert_eq!(digests.len(), files.len());
    assert_eq!(files.len(), 3 + 50 + 50, "each blob stored once");
    for i in [0, 17, 49] {
        let v = skopeo_inspect(&format!("{a}/many/repo{i}:1"));
        assert_eq!(v["Layers"].as_array().unwrap().len(), 4);
    }
    let catalog = http_get(a, "/v2/_catalog?n=100").unwrap();
    let v: serde_json::Value = serde_json::from_slice(&catalog.2).unwrap();
    assert_eq!(v["repositories"].as_array().unwrap().len(), 50);
}

#[test]
fn issue_3_serve_config_metrics_and_graceful_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("wharf.toml");
    std::fs::write(
        &file,
        "version = 1\n[server]\naddr = \"127.0.0.1:7000\"\n[uploads]\nmax_age = \"2h\"\n",
    )
    .unwrap();
    let shown = Command::new(WHARF)
        .args(["serve", "--show-config", "--config"])
        .arg(&file)
        .args(["--root", "/srv/reg"])
        .env("WHARF_LIMITS_MANIFEST_MAX_BYTES", "1000")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    for want in [
        "addr = \"127.0.0.1:7000\"",
        "max_age = \"2h\"",
        "root = \"/srv/reg\"",
        "manifest_max_bytes = 1000",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    std::fs::write(&file, "[server]\nadress = \"x\"\n").unwrap();
    let bad = Command::new(WHARF)
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("wharf.toml") && err.contains("adress"),
        "{err}"
    );

    let mut serve = WharfServe::start();
    let a = serve.addr.clone();
    assert_eq!(http_get(&a, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(&a, "/v2/nothing/here/tags/list").unwrap().0, 404);
    let (status, _, body) = http_get(&a, "/metrics").unwrap();
    let metrics = String::from_utf8_lossy(&body);
    assert_eq!(status, 200);
    assert!(
        metrics
            .contains("wharf_http_requests_total{route=\"tags\",method=\"GET\",status=\"404\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("wharf_uploads_open 0"), "{metrics}");
    let status = serve.terminate();
    assert!(
        status.success(),
        "SIGTERM ends serve cleanly: {status:?}\n{}",
        serve.log()
    );
}

#[test]
fn issue_3_tls_with_a_certificate_of_our_own() {
    if !require("openssl") || !require("curl") || !require("skopeo") || !have_busybox() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let serve = WharfServe::start_with(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let a = &serve.addr;
    let ok = Command::new("curl")
        .args([
            "-sf",
            "--cacert",
            cert.to_str().unwrap(),
            &format!("https://{a}/v2/"),
        ])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "HTTPS with our CA: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "{}");
    let plain = Command::new("curl")
        .args(["-sf", &format!("http://{a}/v2/")])
        .output()
        .unwrap();
    assert!(
        !plain.status.success(),
        "plain HTTP is refused on a TLS port"
    );
    // skopeo trusts the certificate through a cert dir.
    let certs = tmp.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(&cert, certs.join("ca.crt")).unwrap();
    skopeo(&[
        "copy",
        "--dest-cert-dir",
        certs.to_str().unwrap(),
        &format!("oci:{}:latest", busybox_layout().display()),
        &format!("docker://{a}/tls/busybox:1"),
    ])
    .ok();
    let r = skopeo(&[
        "inspect",
        "--cert-dir",
        certs.to_str().unwrap(),
        &format!("docker://{a}/tls/busybox:1"),
    ])
    .ok();
    assert!(r.stdout.contains("\"Digest\""), "{}", r.stdout);
}

#[test]
fn issue_3_sigterm_lets_an_upload_in_flight_finish() {
    use std::io::{Read, Write};
    let mut serve = WharfServe::start();
    let a = serve.addr.clone();
    let (status, head, _) = {
        let mut s = std::net::TcpStream::connect(&a).unwrap();
        write!(s, "POST /v2/slow/blob/blobs/uploads/ HTTP/1.1\r\nHost: {a}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        let status: u16 = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, buf, ())
    };
    assert_eq!(status, 202, "{head}");
    let location = head
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap()
        .trim()
        .to_owned();
    let body = vec![7u8; 1 << 20];
    let digest = format!("sha256:{}", sha256_hex(&body));
    let mut s = std::net::TcpStream::connect(&a).unwrap();
    write!(
        s,
        "PUT {location}?digest={digest} HTTP/1.1\r\nHost: {a}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body[..body.len() / 2]).unwrap();
    // The server holds the first half before it is told to stop.
    let id = location.rsplit('/').next().unwrap().to_owned();
    let part = serve.root.join("uploads").join(&id);
    let half = (body.len() / 2) as u64;
    wait_until("half the upload to arrive", Duration::from_secs(20), || {
        std::fs::metadata(&part).is_ok_and(|m| m.len() == half)
    });
    let pid = serve.pid().unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    // New connections are refused while the old one is still served.
    wait_until(
        "the listener to close after SIGTERM",
        Duration::from_secs(10),
        || std::net::TcpStream::connect(&a).is_err(),
    );
    s.write_all(&body[body.len() / 2..]).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
    let status = serve.wait();
    assert!(status.success(), "{status:?}\n{}", serve.log());
    // The blob is there after a restart.
    serve.restart();
    let (code, _, got) = http_get(&a, &format!("/v2/slow/blob/blobs/{digest}")).unwrap();
    assert_eq!(code, 200);
    assert_eq!(got, body);
}

#[test]
fn issue_3_upload_sessions_survive_a_restart_and_expire() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("wharf.toml");
    std::fs::write(
        &config,
        "[uploads]\nmax_age = \"2s\"\npurge_interval = \"1s\"\n",
    )
    .unwrap();
    let mut serve = WharfServe::start_with(&["--config", config.to_str().unwrap()]);
    let a = serve.addr.clone();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let digest = format!("sha256:{}", sha256_hex(&data));
    let (status, head, _) = http(&a, "POST", "/v2/keep/me/blobs/uploads/", &[], b"");
    assert_eq!(status, 202);
    let loc = header(&head, "location").unwrap().to_owned();
    let (status, head, _) = http(
        &a,
        "PATCH",
        &loc,
        &[("Content-Range", "0-99999")],
        &data[..100_000],
    );
    assert_eq!((status, header(&head, "range")), (202, Some("0-99999")));

    // A crash loses the hash state, not the session or its bytes.
    serve.restart();
    let (status, head, _) = http(&a, "GET", &loc, &[], b"");
    assert_eq!((status, header(&head, "range")), (204, Some("0-99999")));
    let (status, _, _) = http(
        &a,
        "PATCH",
        &loc,
        &[("Content-Range", "100000-199999")],
        &data[100_000..200_000],
    );
    assert_eq!(status, 202);
    let (status, _, body) = http(
        &a,
        "PUT",
        &format!("{loc}?digest={digest}"),
        &[],
        &data[200_000..],
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let (status, _, got) = http(&a, "GET", &format!("/v2/keep/me/blobs/{digest}"), &[], b"");
    assert_eq!(status, 200);
    assert!(
        got == data,
        "the blob assembled across the restart is the data sent"
    );

    // A session left alone expires, with its data.
    let (_, head, _) = http(&a, "POST", "/v2/keep/me/blobs/uploads/", &[], b"");
    let loc = header(&head, "location").unwrap().to_owned();
    http(&a, "PATCH", &loc, &[], b"abandoned");
    let uploads = serve.root.join("uploads");
    assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 1);
    wait_until("the session to expire", Duration::from_secs(15), || {
        http(&a, "GET", &loc, &[], b"").0 == 404
    });
    let (_, _, body) = http(&a, "GET", &loc, &[], b"");
    assert!(String::from_utf8_lossy(&body).contains("BLOB_UPLOAD_UNKNOWN"));
    assert_eq!(
        std::fs::read_dir(&uploads).unwrap().count(),
        0,
        "its data went with it"
    );
    let (_, _, metrics) = http(&a, "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("wharf_uploads_open 0"), "{metrics}");
    assert!(
        metrics.contains("wharf_uploads_completed_total 1"),
        "{metrics}"
    );
}

#[test]
fn issue_13_a_second_server_on_one_root_refuses_to_start() {
    let mut serve = WharfServe::start();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut second = Command::new(WHARF)
        .args(["serve", "--addr", "127.0.0.1:0", "--root"])
        .arg(&serve.root)
        .env_remove("WHARF_ROOT")
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!(
                "a second wharf serve on the same root started: {}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(log.path()).unwrap();
    assert!(!status.success(), "{stderr}");
    let pid = serve.pid().unwrap();
    assert!(
        stderr.contains(&format!(
            "another wharf serve (pid {pid}) is using the registry at"
        )),
        "{stderr}"
    );
    // The first one still serves.
    let (status, _, _) = http_get(&serve.addr, "/v2/").unwrap();
    assert_eq!(status, 200);
    // Once it is gone, however it ended, the root can be served again.
    serve.kill9();
    let mut again = Command::new(WHARF)
        .args(["serve", "--addr", "127.0.0.1:0", "--root"])
        .arg(&serve.root)
        .env_remove("WHARF_ROOT")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut err = std::io::BufReader::new(again.stderr.take().unwrap());
    while std::io::BufRead::read_line(&mut err, &mut first).unwrap_or(0) > 0
        && !first.contains("listening on")
    {
        first.clear();
    }
    let _ = again.kill();
    let _ = again.wait();
    assert!(first.contains("listening on"), "{first}");
}

/// What a raw request gets: the status line's code, or None when the server closed the
/// connection without an answer (a write the server stopped reading may fail too).
fn raw_status(addr: &str, request: &[u8]) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace().nth(1).and_then(|c| c.parse().ok())
}

#[test]
fn issue_13_huge_methods_and_heads_cannot_grow_the_server() {
    let serve = WharfServe::start();
    // Methods HTTP does not define share one label: 200 distinct ones leave one series.
    for i in 0..200 {
        let status = raw_status(
            &serve.addr,
            format!("BREW{i} /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert!(status.is_none_or(|s| s >= 400), "BREW{i}: {status:?}");
    }
    // A 300 KB method (and so a 300 KB request line) is refused before it is parsed.
    let huge = format!(
        "{} /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "M".repeat(300 << 10)
    );
    let status = raw_status(&serve.addr, huge.as_bytes());
    assert!(status.is_none_or(|s| s >= 400), "{status:?}");
    // So are 200 KB of headers.
    let headers = format!(
        "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "h".repeat(200 << 10)
    );
    let status = raw_status(&serve.addr, headers.as_bytes());
    assert!(status.is_none_or(|s| s == 431 || s == 400), "{status:?}");
    let (status, _, body) = http_get(&serve.addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains("BREW"), "a method became a label");
    assert!(text.contains("method=\"other\""), "{text}");
    assert!(text.len() < 16 << 10, "{} bytes of metrics", text.len());
}

#[test]
fn issue_13_the_registry_root_comes_from_its_own_settings() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("registry.toml");
    std::fs::write(&config, "[storage]\nroot = \"/from/file\"\n").unwrap();
    let show = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(WHARF)
            .args(args)
            .args(["serve", "--show-config"])
            .env_remove("WHARF_ROOT")
            .env_remove("WHARF_STORAGE_ROOT")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        run_output(out)
            .ok()
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("root = "))
            .map(|r| r.trim_matches('"').to_owned())
            .unwrap()
    };
    let cfg = ["--config", config.to_str().unwrap()];
    // WHARF_ROOT is the image store's: it does not move the registry.
    assert_eq!(show(&cfg, &[("WHARF_ROOT", "/image/store")]), "/from/file");
    assert_eq!(
        show(
            &cfg,
            &[
                ("WHARF_ROOT", "/image/store"),
                ("WHARF_STORAGE_ROOT", "/from/env")
            ]
        ),
        "/from/env"
    );
    // The flag wins, before or after the subcommand.
    let flagged = ["--config", config.to_str().unwrap(), "--root", "/from/flag"];
    assert_eq!(
        show(&flagged, &[("WHARF_STORAGE_ROOT", "/from/env")]),
        "/from/flag"
    );
    let after = Command::new(WHARF)
        .args(["serve", "--root", "/after/serve", "--show-config"])
        .env("WHARF_ROOT", "/image/store")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&after.stdout);
    assert!(text.contains("root = \"/after/serve\""), "{text}");
}

/// A server process, killed when dropped (a failed assertion included).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `wharf serve` under `prlimit --nofile=LIMIT` with `env`, on a fresh root; its address and
/// the process.
fn serve_limited(
    dir: &std::path::Path,
    nofile: &str,
    env: &[(&str, &str)],
) -> (String, KillOnDrop) {
    let log = dir.join("log");
    let child = Command::new("prlimit")
        .arg(format!("--nofile={nofile}"))
        .args(["--", WHARF, "serve", "--addr", "127.0.0.1:0", "--root"])
        .arg(dir.join("root"))
        .env_remove("WHARF_ROOT")
        .env("RUST_LOG", "warn,wharf=info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let child = KillOnDrop(child);
    let url = wharf_testkit::wait_for_log(&log, 0, "listening on ", Duration::from_secs(20));
    let addr = url
        .split_once("://")
        .map_or(url.as_str(), |x| x.1)
        .to_owned();
    (addr, child)
}

/// Opens `n` connections that send half a request and stop.
fn half_sent(addr: &str, n: usize) -> Vec<std::net::TcpStream> {
    use std::io::Write;
    (0..n)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: slow\r\n").unwrap();
            s
        })
        .collect()
}

/// How long a normal request takes to be answered 200.
fn served_in(addr: &str) -> Duration {
    let started = Instant::now();
    let (status, _, _) = http_get(addr, "/v2/").unwrap();
    assert_eq!(status, 200);
    started.elapsed()
}

#[test]
fn issue_13_slow_clients_do_not_lock_others_out() {
    if !require("prlimit") {
        return;
    }
    // This test holds many sockets itself.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    assert!(
        lim.rlim_cur >= 2048,
        "the test needs 2,048 descriptors: {}",
        lim.rlim_cur
    );
    // Started with a soft limit of 256 files: the server raises it to the hard limit, as Go's
    // runtime does for distribution, so 400 half-sent requests leave room for everyone else.
    let dir = tempfile::tempdir().unwrap();
    let (addr, server) = serve_limited(dir.path(), &format!("256:{}", lim.rlim_max), &[]);
    let slow = half_sent(&addr, 400);
    let took = served_in(&addr);
    assert!(
        took < Duration::from_secs(5),
        "a normal client waited {took:?}"
    );
    drop(slow);
    drop(server);
    // With no room to grow (a hard limit of 256), half-sent requests are cut off after the
    // header timeout, and the normal client is served then.
    let dir = tempfile::tempdir().unwrap();
    let (addr, _server) = serve_limited(
        dir.path(),
        "256:256",
        &[("WHARF_SERVER_HEADER_TIMEOUT", "2s")],
    );
    let mut slow = half_sent(&addr, 400);
    // One that sends the start of an HTTP/2 preface and stops, one that sends nothing.
    use std::io::{Read, Write};
    let mut preface = std::net::TcpStream::connect(&addr).unwrap();
    preface.write_all(b"PRI * HT").unwrap();
    slow.push(preface);
    slow.push(std::net::TcpStream::connect(&addr).unwrap());
    let took = served_in(&addr);
    assert!(
        took < Duration::from_secs(10),
        "a normal client waited {took:?}"
    );
    // And the server closed every slow one (EOF or a reset, not our read timing out).
    for i in [0, 400, 401] {
        let s = &mut slow[i];
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        match s.read_to_end(&mut buf) {
            Ok(_) => assert!(
                buf.is_empty() || String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"),
                "connection {i}: {}",
                String::from_utf8_lossy(&buf)
            ),
            Err(e) => assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset,
                "connection {i} was not closed: {e}"
            ),
        }
    }
}

#[test]
fn issue_13_docker_search_finds_repositories_in_wharf_serve() {
    if !require("skopeo") || !have_busybox() {
        return;
    }
    let Some(d) = Dockerd::start() else { return };
    let serve = WharfServe::start();
    let a = &serve.addr;
    seed_busybox(&format!("{a}/tools/busybox:1"));
    seed_busybox(&format!("{a}/apps/web:1"));
    let found = d
        .docker(&["search", "--format", "{{.Name}}", &format!("{a}/busy")])
        .ok();
    assert_eq!(found.stdout.trim(), "tools/busybox", "{}", found.stderr);
    let none = d.docker(&["search", &format!("{a}/nothing-like-it")]).ok();
    assert_eq!(
        none.stdout.lines().count(),
        1,
        "only the header: {}",
        none.stdout
    );
}

#[test]
fn issue_13_wharf_search_asks_the_search_api_or_reads_the_catalog() {
    if !require("skopeo") || !have_busybox() {
        return;
    }
    let w = Wharf::new();
    // wharf serve has docker's search API.
    let serve = WharfServe::start();
    let a = &serve.addr;
    seed_busybox(&format!("{a}/tools/busybox:1"));
    seed_busybox(&format!("{a}/apps/web:1"));
    let r = w.run(&["search", &format!("{a}/BUSY")]).ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", r.stdout);
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("DESCRIPTION"),
        "{}",
        r.stdout
    );
    assert!(lines[1].starts_with("tools/busybox"), "{}", r.stdout);
    let r = w
        .run(&["search", "--format", "json", &format!("{a}/web")])
        .ok();
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["Name"], "apps/web");
    // Distribution has none: its catalog, filtered here.
    let Some(reg) = Distribution::start() else {
        return;
    };
    let d = &reg.addr;
    seed_busybox(&format!("{d}/tools/busybox:1"));
    seed_busybox(&format!("{d}/apps/web:1"));
    let r = w.run(&["search", &format!("{d}/busy")]).ok();
    let names: Vec<&str> = r
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["tools/busybox"], "{}", r.stdout);
}

#[test]
fn issue_13_pushes_and_deletes_leave_audit_lines() {
    if !require("skopeo") || !have_busybox() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("registry.toml");
    std::fs::write(&config, "[storage]\ndelete = true\n").unwrap();
    let serve = WharfServe::start_with(&["--config", config.to_str().unwrap()]);
    let a = &serve.addr;
    seed_busybox(&format!("{a}/tools/busybox:1"));
    let digest = delete_manifest(a, "tools/busybox", "1");
    let log = serve.log();
    let audit = |action: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("wharf::audit") && l.contains(&format!("action=\"{action}\"")))
            .map(str::to_owned)
            .collect()
    };
    let pushed = audit("push+tag");
    assert_eq!(pushed.len(), 1, "{log}");
    for want in ["anonymous", "127.0.0.1", "tools/busybox", &digest] {
        assert!(pushed[0].contains(want), "{want} not in {}", pushed[0]);
    }
    let deleted = audit("delete");
    assert_eq!(deleted.len(), 1, "{log}");
    assert!(deleted[0].contains(&digest), "{}", deleted[0]);
}

/// The blob files under a registry root, and their total size.
fn blob_files(root: &std::path::Path) -> (usize, u64) {
    let mut n = (0, 0);
    let mut dirs = vec![root.join("blobs")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dirs.push(e.path());
            } else {
                n.0 += 1;
                n.1 += m.len();
            }
        }
    }
    n
}

/// Pushes two images to `a`, one under `keep/bb:1` and one (zstd, other blobs) under
/// `drop/bb:1`, then deletes the second's manifest; the deleted manifest's digest.
fn push_two_delete_one(a: &str, dir: &std::path::Path) -> String {
    seed_busybox(&format!("{a}/keep/bb:1"));
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &zstd_busybox(dir),
        &format!("docker://{a}/drop/bb:1"),
    ])
    .ok();
    delete_manifest(a, "drop/bb", "1")
}

/// Deletes the manifest `repo:tag` points at, by digest (deletes must be on); its digest.
fn delete_manifest(a: &str, repo: &str, tag: &str) -> String {
    let digest = skopeo_inspect(&format!("{a}/{repo}:{tag}"))["Digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _, _) = http(
        a,
        "DELETE",
        &format!("/v2/{repo}/manifests/{digest}"),
        &[],
        b"",
    );
    assert_eq!(status, 202);
    digest
}

#[test]
fn issue_13_wharf_gc_beside_a_running_server() {
    if !require("skopeo") || !have_busybox() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("registry.toml");
    std::fs::write(
        &config,
        "[storage]\ndelete = true\n[gc]\ninterval = \"0s\"\ngrace_period = \"0s\"\n",
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let serve = WharfServe::start_with(&["--config", cfg]);
    let a = &serve.addr;
    push_two_delete_one(a, dir.path());
    std::thread::sleep(Duration::from_millis(1100));
    let before = blob_files(&serve.root);
    let w = Wharf::new();
    let root = serve.root.to_str().unwrap();
    let dry = w
        .run(&["gc", "--config", cfg, "--root", root, "--dry-run"])
        .ok();
    assert!(
        dry.stdout.contains("would delete blob sha256:"),
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains("would free"), "{}", dry.stdout);
    assert_eq!(blob_files(&serve.root), before, "a dry run deletes nothing");
    let done = w.run(&["gc", "--config", cfg, "--root", root]).ok();
    assert!(
        done.stdout.contains("deleted blob sha256:"),
        "{}",
        done.stdout
    );
    let after = blob_files(&serve.root);
    assert!(
        after.0 < before.0 && after.1 < before.1,
        "{before:?} -> {after:?}\n{}",
        done.stdout
    );
    // The server goes on serving what is kept, whole.
    let out = dir.path().join("pulled");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{a}/keep/bb:1"),
        &format!("oci:{}:1", out.display()),
    ])
    .ok();
    // On a root that holds no registry, gc says so.
    let none = w
        .run(&["gc", "--root", dir.path().join("nothing").to_str().unwrap()])
        .fails();
    assert!(none.stderr.contains("no registry"), "{}", none.stderr);
}

#[test]
fn issue_13_wharf_serve_collects_garbage_on_its_own() {
    if !require("skopeo") || !have_busybox() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("registry.toml");
    std::fs::write(
        &config,
        "[storage]\ndelete = true\n[gc]\ninterval = \"1s\"\ngrace_period = \"0s\"\n",
    )
    .unwrap();
    let serve = WharfServe::start_with(&["--config", config.to_str().unwrap()]);
    let a = &serve.addr;
    let keep = blob_files(&serve.root);
    assert_eq!(keep.0, 0);
    push_two_delete_one(a, dir.path());
    let pushed = blob_files(&serve.root);
    wait_until("the server to collect", Duration::from_secs(20), || {
        serve
            .log()
            .lines()
            .any(|l| l.contains("garbage collected") && !l.contains("blobs=0"))
    });
    let after = blob_files(&serve.root);
    assert!(after.0 < pushed.0, "{pushed:?} -> {after:?}");
    skopeo_inspect(&format!("{a}/keep/bb:1"));
}

/// A tmpfs of `mib` MiB mounted for one test, unmounted when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u32) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs");
        SmallDisk { path, _dir: dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[test]
fn issue_13_a_full_disk_is_survived() {
    if !require_root() || !require("skopeo") || !have_busybox() {
        return;
    }
    let disk = SmallDisk::mount(40);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("registry.toml");
    std::fs::write(
        &config,
        "[storage]\ndelete = true\nheadroom = 4194304\n[gc]\ninterval = \"0s\"\ngrace_period = \"0s\"\n",
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let serve = WharfServe::start_in_with(&disk.path, &["--config", cfg]);
    let a = &serve.addr;
    assert!(serve.root.join("headroom").exists(), "the reserve is taken");
    // Images of one 6 MiB layer each, until the disk is full.
    let layouts = random_layouts(dir.path(), 8, &[], 6 << 20);
    let mut pushed = 0;
    let refusal = loop {
        let i = pushed;
        assert!(i < layouts.len(), "40 MiB never filled up");
        let out = Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:1", layouts[i].display()))
            .arg(format!("docker://{a}/full/img{i}:1"))
            .output()
            .unwrap();
        if !out.status.success() {
            break String::from_utf8_lossy(&out.stderr).into_owned();
        }
        pushed += 1;
    };
    assert!(pushed >= 2, "{pushed} pushed before: {refusal}");
    // skopeo shows the status of a failed chunk; wharf shows the registry's words too.
    assert!(refusal.contains("507 Insufficient Storage"), "{refusal}");
    let w = Wharf::new();
    let loaded = w
        .run(&["load", "-i", layouts[pushed].to_str().unwrap()])
        .ok();
    let id = loaded.stdout.trim().trim_start_matches("Loaded image ID: ");
    w.run(&["tag", id, &format!("{a}/full/by-wharf:1")]).ok();
    let r = w.run(&["push", &format!("{a}/full/by-wharf:1")]).fails();
    assert!(
        r.stderr.contains("no space left on the registry's disk"),
        "{}",
        r.stderr
    );
    // The partial upload was dropped with its data.
    let uploads: Vec<_> = std::fs::read_dir(serve.root.join("uploads"))
        .unwrap()
        .flatten()
        .map(|e| (e.file_name(), e.metadata().unwrap().len()))
        .collect();
    assert!(
        uploads.is_empty(),
        "partial uploads left behind: {uploads:?}\n{}",
        serve.log()
    );
    // Pulls go on.
    let out = dir.path().join("pulled");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{a}/full/img0:1"),
        &format!("oci:{}:1", out.display()),
    ])
    .ok();
    // Deletes and a collection run, and give the space back.
    for i in 0..pushed {
        delete_manifest(a, &format!("full/img{i}"), "1");
    }
    std::thread::sleep(Duration::from_millis(1100));
    let root = serve.root.to_str().unwrap();
    let done = w.run(&["gc", "--config", cfg, "--root", root]).ok();
    assert!(done.stdout.contains("deleted blob"), "{}", done.stdout);
    // Pushes work again, and the reserve is back.
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:1", layouts[pushed].display()),
        &format!("docker://{a}/full/again:1"),
    ])
    .ok();
    assert!(
        serve.root.join("headroom").exists(),
        "the reserve is taken again"
    );
}
