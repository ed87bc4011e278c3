//! `wharf serve --mirror`: a pull-through cache of another registry, asserted from the
//! upstream's own request counts (issue 14). The upstream is a second `wharf serve`, whose
//! `/metrics` counts every request it answers.

use std::time::Duration;

use crate::support::*;

/// Requests `serve` answered for `route` and `method` with `status`, from its `/metrics`.
fn answered(serve: &WharfServe, route: &str, method: &str, status: u16) -> u64 {
    let (code, _, body) = http_get(&serve.addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    let want = format!(
        "wharf_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} "
    );
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(&want).map(|n| n.trim().parse().unwrap()))
        .unwrap_or(0)
}

/// A counter of the mirror's `/metrics` (summed over labels that start with `labels`).
fn mirror_metric(serve: &WharfServe, name: &str) -> u64 {
    let (_, _, body) = http_get(&serve.addr, "/metrics").unwrap();
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The digest of a manifest a registry serves, from a GET with every media type accepted.
fn manifest_digest(addr: &str, path: &str) -> (u16, Option<String>) {
    let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
        application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
    let (status, head, _) = http(addr, "GET", path, &[("Accept", accept)], b"");
    (
        status,
        header(&head, "docker-content-digest").map(str::to_owned),
    )
}

fn seed(addr: &str, name: &str) {
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:latest", busybox_layout().display()),
        &format!("docker://{addr}/{name}"),
    ])
    .ok();
}

/// An upstream `wharf serve` holding the busybox fixture as `name:tag`: the server, the
/// manifest's digest, and how many manifest and blob GETs the setup itself asked of it.
fn upstream_with(name: &str, tag: &str) -> (WharfServe, String, (u64, u64)) {
    let upstream = WharfServe::start();
    seed(&upstream.addr, &format!("{name}:{tag}"));
    let (_, want) = manifest_digest(&upstream.addr, &format!("/v2/{name}/manifests/{tag}"));
    let asked = (
        answered(&upstream, "manifest", "GET", 200),
        answered(&upstream, "blob", "GET", 200),
    );
    (upstream, want.unwrap(), asked)
}

fn pull_with_skopeo(reference: &str, dir: &std::path::Path) -> Run {
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{reference}"),
        &format!("oci:{}:1", dir.display()),
    ])
}

#[test]
fn issue_14_mirror_fills_once_serves_warm_and_refuses_pushes() {
    if !require("skopeo") || !have_busybox() {
        return;
    }
    let (upstream, want, (m0, b0)) = upstream_with("team/bb", "1");
    let mirror = WharfServe::start_with(&["--mirror", &format!("up=http://{}", upstream.addr)]);
    let m = &mirror.addr;
    let tmp = tempfile::tempdir().unwrap();

    // Cold: through the path prefix, as podman's and skopeo's mirrors ask.
    pull_with_skopeo(&format!("{m}/up/team/bb:1"), &tmp.path().join("cold")).ok();
    assert_eq!(
        manifest_digest(m, "/v2/up/team/bb/manifests/1"),
        (200, Some(want.clone()))
    );
    let manifests = answered(&upstream, "manifest", "GET", 200);
    let blobs = answered(&upstream, "blob", "GET", 200);
    assert_eq!(manifests - m0, 1, "one manifest GET upstream");
    assert_eq!(blobs - b0, 2, "config and layer fetched once");

    // Warm, and through containerd's ?ns= and wharf's own client: nothing asked upstream.
    pull_with_skopeo(&format!("{m}/up/team/bb:1"), &tmp.path().join("warm")).ok();
    assert_eq!(
        manifest_digest(m, &format!("/v2/team/bb/manifests/1?ns={}", upstream.addr)),
        (200, Some(want.clone()))
    );
    let w = Wharf::new();
    w.run(&["pull", "-q", &format!("{m}/up/team/bb:1")]).ok();
    assert_eq!(answered(&upstream, "manifest", "GET", 200), manifests);
    assert_eq!(answered(&upstream, "manifest", "HEAD", 200), 0);
    assert_eq!(answered(&upstream, "blob", "GET", 200), blobs);
    assert!(mirror_metric(&mirror, "wharf_mirror_hits_total") > 0);
    assert!(mirror_metric(&mirror, "wharf_mirror_upstream_bytes_total") > 0);

    // The pulled image is the upstream's, byte for byte.
    let back: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("warm").join("index.json")).unwrap())
            .unwrap();
    assert_eq!(back["manifests"][0]["digest"], want.as_str());

    // A push into the mirror's names is refused, saying why; beside it, pushes work, and
    // nothing reaches the upstream.
    let uploads = answered(&upstream, "upload", "POST", 202);
    let (status, _, body) = http(m, "POST", "/v2/up/team/bb/blobs/uploads/", &[], b"");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("DENIED") && body.contains("mirrored from upstream up"),
        "{body}"
    );
    seed(m, "local/app:1");
    assert_eq!(manifest_digest(m, "/v2/local/app/manifests/1").0, 200);
    assert_eq!(answered(&upstream, "upload", "POST", 202), uploads);

    // A name the upstream does not have: 404, and nothing kept.
    assert_eq!(manifest_digest(m, "/v2/up/team/nothing/manifests/1").0, 404);

    // Tag lists are the upstream's, a tag not fetched yet included, paged here.
    seed(&upstream.addr, "team/bb:2");
    let (status, _, body) = http(m, "GET", "/v2/up/team/bb/tags/list", &[], b"");
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list["name"], "up/team/bb");
    assert_eq!(list["tags"], serde_json::json!(["1", "2"]));
    let (_, head, body) = http(m, "GET", "/v2/up/team/bb/tags/list?n=1", &[], b"");
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list["tags"], serde_json::json!(["1"]));
    assert!(
        header(&head, "link").is_some_and(|l| l.contains("last=1")),
        "{head}"
    );
}

#[test]
fn issue_14_eight_cold_pulls_fetch_each_blob_once() {
    if !require("skopeo") || !have_busybox() {
        return;
    }
    let upstream = WharfServe::start();
    seed(&upstream.addr, "team/bb:1");
    let mirror = WharfServe::start_with(&["--mirror", &format!("up=http://{}", upstream.addr)]);
    let tmp = tempfile::tempdir().unwrap();
    let pulls: Vec<std::process::Child> = (0..8)
        .map(|i| {
            std::process::Command::new("skopeo")
                .args([
                    "copy",
                    "--quiet",
                    "--src-tls-verify=false",
                    &format!("docker://{}/up/team/bb:1", mirror.addr),
                    &format!("oci:{}:1", tmp.path().join(format!("p{i}")).display()),
                ])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut p in pulls {
        assert!(p.wait().unwrap().success());
    }
    assert_eq!(answered(&upstream, "manifest", "GET", 200), 1);
    // The busybox fixture: a config and one layer.
    assert_eq!(answered(&upstream, "blob", "GET", 200), 2);
}

#[test]
fn issue_14_kept_content_outlives_its_upstream() {
    if !require("skopeo") || !have_busybox() {
        return;
    }
    let mut upstream = WharfServe::start();
    seed(&upstream.addr, "team/bb:1");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mirror.toml");
    std::fs::write(
        &config,
        format!(
            "[[mirror]]\nname = \"up\"\nurl = \"http://{}\"\ntag_ttl = \"1s\"\n",
            upstream.addr
        ),
    )
    .unwrap();
    let mirror = WharfServe::start_with(&["--config", config.to_str().unwrap()]);
    let m = &mirror.addr;
    let (_, want) = manifest_digest(m, "/v2/up/team/bb/manifests/1");
    pull_with_skopeo(&format!("{m}/up/team/bb:1"), &dir.path().join("a")).ok();

    // Past the TTL, the tag is checked with a HEAD and, unmoved, not fetched again.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(manifest_digest(m, "/v2/up/team/bb/manifests/1").1, want);
    assert_eq!(answered(&upstream, "manifest", "HEAD", 200), 1);
    assert_eq!(answered(&upstream, "manifest", "GET", 200), 1);

    // Upstream gone: kept tags are served stale, kept images pull whole.
    upstream.terminate();
    let (status, _, body) = http(m, "GET", "/v2/up/team/bb/tags/list", &[], b"");
    assert_eq!(status, 200, "the kept tags are listed");
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list["tags"], serde_json::json!(["1"]));
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(manifest_digest(m, "/v2/up/team/bb/manifests/1").1, want);
    pull_with_skopeo(&format!("{m}/up/team/bb:1"), &dir.path().join("b")).ok();
    assert!(mirror_metric(&mirror, "wharf_mirror_stale_served_total") >= 1);

    // Nothing kept: the spec's envelope with 503, promptly.
    let start = std::time::Instant::now();
    let (status, _, body) = http(m, "GET", "/v2/up/team/other/manifests/1", &[], b"");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("\"errors\"") && body.contains("upstream up"),
        "{body}"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn issue_14_dockerd_containerd_and_podman_pull_through_the_mirror_unchanged() {
    if !require("skopeo") || !require("ctr") || !require("podman") || !have_busybox() {
        return;
    }
    // A stand-in for Docker Hub: busybox as library/busybox.
    let (upstream, want, (m0, b0)) = upstream_with("library/busybox", "latest");
    let mirror =
        WharfServe::start_with(&["--mirror", &format!("docker.io=http://{}", upstream.addr)]);
    let m = &mirror.addr;
    let Some(d) = Dockerd::start_with(&["--registry-mirror", &format!("http://{m}")]) else {
        return;
    };

    // dockerd's registry-mirrors: the name as on Docker Hub, no upstream in the path.
    d.docker(&["pull", "busybox"]).ok();
    let digests = d.docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        "busybox",
    ]);
    assert!(
        digests.ok().stdout.contains(&want),
        "dockerd's image is the upstream's"
    );
    assert_eq!(answered(&upstream, "manifest", "GET", 200) - m0, 1);
    let blobs = answered(&upstream, "blob", "GET", 200);
    assert_eq!(blobs - b0, 2, "config and layer, once");

    // containerd's hosts.toml: ?ns=docker.io.
    let hosts = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(hosts.path().join("docker.io")).unwrap();
    std::fs::write(
        hosts.path().join("docker.io/hosts.toml"),
        format!(
            "server = \"https://registry-1.docker.io\"\n[host.\"http://{m}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .unwrap();
    let ctr = std::process::Command::new("ctr")
        .args(["--address", &d.containerd_socket(), "-n", "wharf-mirror"])
        .args(["images", "pull", "--hosts-dir"])
        .arg(hosts.path())
        .arg("docker.io/library/busybox:latest")
        .output()
        .unwrap();
    run_output(ctr).ok();

    // podman's registries.conf mirror: the upstream's name as the path's first component.
    let pod = tempfile::tempdir().unwrap();
    let conf = pod.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n\
             [[registry.mirror]]\nlocation = \"{m}/docker.io\"\ninsecure = true\n"
        ),
    )
    .unwrap();
    podman_with(
        pod.path(),
        &[("CONTAINERS_REGISTRIES_CONF", &conf)],
        &["pull", "docker.io/library/busybox:latest"],
    )
    .ok();

    // Three clients, three routes, one fill: nothing more was asked upstream than a manifest
    // and two blobs (a tag inside its TTL is not even checked).
    assert_eq!(answered(&upstream, "manifest", "GET", 200) - m0, 1);
    assert_eq!(answered(&upstream, "blob", "GET", 200), blobs);
}

/// A mirror of `fake` as Docker Hub (the default upstream), tags re-checked after a second.
fn hub_mirror(fake_addr: &std::net::SocketAddr) -> (WharfServe, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mirror.toml");
    std::fs::write(
        &config,
        format!(
            "[[mirror]]\nname = \"docker.io\"\nurl = \"http://{fake_addr}\"\ntag_ttl = \"1s\"\n"
        ),
    )
    .unwrap();
    (
        WharfServe::start_with(&["--config", config.to_str().unwrap()]),
        dir,
    )
}

/// A gauge or counter line of `/metrics`, whole.
fn metric_line(serve: &WharfServe, prefix: &str) -> Option<String> {
    let (_, _, body) = http_get(&serve.addr, "/metrics").unwrap();
    String::from_utf8_lossy(&body)
        .lines()
        .find(|l| l.starts_with(prefix))
        .map(str::to_owned)
}

#[test]
fn issue_14_docker_hub_protocol_token_host_cdn_redirects_and_rate_limits() {
    use crate::fake::{Blobs, Fake, storage};
    let layer: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (_, _, layer_bytes) = crate::fake::image(layer.clone());
    // Tokens from another port, blobs redirected to a "CDN" that records Authorization.
    let (cdn, seen) = {
        let probe = Fake::new("library/app:1", layer.clone(), Blobs::Honest);
        storage(probe.blobs())
    };
    let fake = Fake::build(
        "library/app:1",
        layer,
        Blobs::Honest,
        true,
        Some(format!("http://{}", cdn.addr)),
    );
    let hub = fake.start();
    let _auth = fake.start_token_host();
    let (mirror, _dir) = hub_mirror(&hub.addr);
    let m = &mirror.addr;

    // dockerd's form of the name: library/app, no upstream in the path.
    let (status, _, manifest) = http(m, "GET", "/v2/library/app/manifests/1", &[], b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&manifest));
    let layer_digest = fake.layer_digest();
    let (status, _, got) = http(
        m,
        "GET",
        &format!("/v2/library/app/blobs/{layer_digest}"),
        &[],
        b"",
    );
    assert_eq!(status, 200);
    assert!(got == layer_bytes.as_ref(), "the layer, byte for byte");
    // The token came from the token host, for the repository's pull scope; the CDN never saw
    // the registry's Authorization.
    let scopes = fake.log(|l| l.token_scopes.clone());
    assert!(
        scopes.iter().any(|s| s == "repository:library/app:pull"),
        "{scopes:?}"
    );
    let cdn_auth = seen.lock().unwrap().clone();
    assert!(!cdn_auth.is_empty(), "the blob came through the CDN");
    assert!(cdn_auth.iter().all(Option::is_none), "{cdn_auth:?}");
    // Docker Hub's remaining pulls, exported.
    assert_eq!(
        metric_line(&mirror, "wharf_mirror_ratelimit_remaining").as_deref(),
        Some("wharf_mirror_ratelimit_remaining{upstream=\"docker.io\"} 42")
    );

    // Past the limit: a kept tag past its TTL is served stale; anything not kept gets 429
    // with the upstream's Retry-After.
    fake.set_throttle(Some(7));
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        http(m, "GET", "/v2/library/app/manifests/1", &[], b"").0,
        200
    );
    let (status, head, body) = http(m, "GET", "/v2/library/other/manifests/1", &[], b"");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("TOOMANYREQUESTS"), "{body}");
    assert_eq!(header(&head, "retry-after"), Some("7"));
    assert!(mirror_metric(&mirror, "wharf_mirror_throttled_total") >= 2);
    assert!(mirror_metric(&mirror, "wharf_mirror_stale_served_total") >= 1);
}

#[test]
fn issue_14_corrupted_upstream_bytes_break_the_response_and_keep_nothing() {
    use crate::fake::{Blobs, Fake};
    let layer: Vec<u8> = (0..2_000_000u32).map(|i| (i * 13 % 253) as u8).collect();
    let fake = Fake::new("library/app:1", layer.clone(), Blobs::Corrupt);
    let hub = fake.start();
    let (mirror, _dir) = hub_mirror(&hub.addr);
    let path = format!("/v2/library/app/blobs/{}", fake.layer_digest());
    let fetches = || {
        fake.log(|l| {
            l.requests
                .iter()
                .filter(|(p, _, _)| p.ends_with(&fake.layer_digest()))
                .count()
        })
    };
    for round in 1..=2 {
        let (status, head, got) = http(&mirror.addr, "GET", &path, &[], b"");
        assert_eq!(status, 200);
        assert_eq!(header(&head, "content-length"), Some("2000000"));
        assert!(
            got.len() < layer.len(),
            "round {round}: a complete wrong blob was sent ({} bytes)",
            got.len()
        );
        // Nothing kept: the next request asks the upstream again.
        assert_eq!(fetches(), round);
        assert!(
            !mirror
                .blob_files()
                .iter()
                .any(|(d, _)| *d == fake.layer_digest()),
            "the corrupt blob was kept"
        );
    }
    // Honest again: a download that breaks halfway is resumed, and the blob kept.
    fake.set_mode(Blobs::BreakOnce);
    let (status, _, got) = http(&mirror.addr, "GET", &path, &[], b"");
    assert_eq!(status, 200);
    assert!(got == layer, "the resumed download is the blob");
    let resumed = fake.log(|l| {
        l.requests
            .iter()
            .any(|(p, range, _)| p.ends_with(&fake.layer_digest()) && range.is_some())
    });
    assert!(resumed, "resumed with Range");
    // The client has the last byte once the digest checks; the commit follows.
    wait_until("the blob to be kept", Duration::from_secs(10), || {
        mirror
            .blob_files()
            .iter()
            .any(|(d, data)| *d == fake.layer_digest() && *data == layer)
    });
}

#[test]
fn issue_14_local_pushes_beside_a_default_mirror_never_ask_the_upstream() {
    if !require("skopeo") || !have_busybox() {
        return;
    }
    // Docker Hub's stand-in is down: pushes and pulls of local names do not need it.
    let (mut upstream, _, _) = upstream_with("library/busybox", "latest");
    let up = upstream.addr.clone();
    upstream.terminate();
    let mirror = WharfServe::start_with(&["--mirror", &format!("docker.io=http://{up}")]);
    let m = &mirror.addr;
    seed(m, "team/app:1");
    let tmp = tempfile::tempdir().unwrap();
    pull_with_skopeo(&format!("{m}/team/app:1"), &tmp.path().join("a")).ok();
    // A blob the repository lacks: 404 at once (a push then uploads it), not the upstream's
    // 503.
    let absent = format!("sha256:{}", "0".repeat(64));
    let (status, _, _) = http(m, "HEAD", &format!("/v2/team/app/blobs/{absent}"), &[], b"");
    assert_eq!(status, 404);
    // An unknown ?ns= does not make a mirrored name writable.
    let (status, _, body) = http(
        m,
        "POST",
        "/v2/docker.io/library/busybox/blobs/uploads/?ns=example.org",
        &[],
        b"",
    );
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn issue_14_an_index_is_kept_whole_and_each_platform_fetched_when_asked() {
    if !require("skopeo") || !have_busybox() {
        return;
    }
    let upstream = WharfServe::start();
    let tmp = tempfile::tempdir().unwrap();
    let index = push_index(
        tmp.path(),
        &["linux/amd64", "linux/arm64", "linux/riscv64"],
        &format!("{}/multi/bb:1", upstream.addr),
    );
    let (m0, b0) = (
        answered(&upstream, "manifest", "GET", 200),
        answered(&upstream, "blob", "GET", 200),
    );
    let mirror = WharfServe::start_with(&["--mirror", &format!("up=http://{}", upstream.addr)]);
    for arch in ["amd64", "arm64"] {
        skopeo(&[
            "copy",
            "--override-os",
            "linux",
            "--override-arch",
            arch,
            "--src-tls-verify=false",
            &format!("docker://{}/up/multi/bb:1", mirror.addr),
            &format!("oci:{}:1", tmp.path().join(arch).display()),
        ])
        .ok();
    }
    // The index once, by tag, byte for byte; two platforms' manifests and configs; the layer
    // they share once; nothing of riscv64.
    assert_eq!(
        manifest_digest(&mirror.addr, "/v2/up/multi/bb/manifests/1").1,
        Some(index)
    );
    assert_eq!(answered(&upstream, "manifest", "GET", 200) - m0, 3);
    assert_eq!(answered(&upstream, "blob", "GET", 200) - b0, 3);
}
