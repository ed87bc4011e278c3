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
    let mut partial = None;
    wait_until(
        "the pull to write part of the layer",
        Duration::from_secs(30),
        || {
            partial = std::fs::read_dir(w.root.join("ingest"))
                .ok()
                .and_then(|rd| {
                    rd.flatten().find(|e| {
                        e.file_name().to_string_lossy().ends_with(".partial")
                            && e.metadata().is_ok_and(|m| m.len() > 200_000)
                    })
                })
                .map(|e| e.path());
            partial.is_some()
        },
    );
    let partial = partial.unwrap();
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
fn issue_12_token_requests_carry_the_login_and_nothing_else_does() {
    let fake = Fake::build("team/app:1", random(1000), Blobs::Honest, true, None);
    let server = fake.start();
    let w = Wharf::new();
    let image = format!("{}/team/app:1", server.addr);
    // Anonymous: a token is asked for without credentials.
    w.run(&["pull", &image]).ok();
    let logins = fake.log(|l| l.token_logins.clone());
    assert!(!logins.is_empty());
    assert!(
        logins.iter().all(|(a, h)| a.is_none() && h.is_none()),
        "{logins:?}"
    );
    // Logged in: the token server gets them as basic auth with the account named, and the
    // registry itself only ever sees the bearer token.
    let addr = server.addr.to_string();
    w.run_stdin(
        &["login", "-u", "alice", "--password-stdin", &addr],
        b"s3cret\n",
    )
    .ok();
    w.run(&["rmi", &image]).ok();
    let before = fake.log(|l| l.token_logins.len());
    w.run(&["pull", &image]).ok();
    let logins = fake.log(|l| l.token_logins[before..].to_vec());
    let basic = "Basic YWxpY2U6czNjcmV0"; // base64("alice:s3cret")
    assert!(!logins.is_empty());
    assert!(
        logins
            .iter()
            .all(|(a, h)| a.as_deref() == Some("alice") && h.as_deref() == Some(basic)),
        "{logins:?}"
    );
    let sent: Vec<_> = fake.log(|l| l.requests.iter().filter_map(|r| r.2.clone()).collect());
    assert!(!sent.is_empty());
    assert!(
        sent.iter().all(|h| h.starts_with("Bearer tok-")),
        "{sent:?}"
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

#[test]
fn issue_10_a_stalled_download_resumes_with_range_then_fails_clearly() {
    let layer = random(2_000_000);
    let fake = Fake::new("stall/app:1", layer.clone(), Blobs::StallOnce);
    let server = fake.start();
    let w = Wharf::new();
    let started = Instant::now();
    let r = w
        .cmd()
        .env("WHARF_STALL_TIMEOUT", "1")
        .args(["pull", &format!("{}/stall/app:1", server.addr)])
        .output()
        .unwrap();
    let r = run_output(r).ok();
    assert!(started.elapsed() < Duration::from_secs(60), "{}", r.stderr);
    let ranges: Vec<String> = fake.log(|l| {
        l.requests
            .iter()
            .filter_map(|(_, r, _)| r.clone())
            .collect()
    });
    assert_eq!(
        ranges,
        [format!("bytes={}-", layer.len() / 2)],
        "resumed where it stalled"
    );
    // A registry that never sends anything: five resumes, then a clear error.
    let fake = Fake::new("dead/app:1", random(500_000), Blobs::StallAlways);
    let server = fake.start();
    let r = w
        .cmd()
        .env("WHARF_STALL_TIMEOUT", "0.5")
        .args(["pull", &format!("{}/dead/app:1", server.addr)])
        .output()
        .unwrap();
    let r = run_output(r).fails();
    assert!(
        r.stderr.contains("no data for 0.5s at byte 0 of 500000")
            && r.stderr.contains("5 resumes with Range"),
        "{}",
        r.stderr
    );
    assert!(w.ingest_files().is_empty(), "{:?}", w.ingest_files());
}

/// A registry whose manifest is served chunked (no Content-Length) and endless.
fn huge_manifest_registry() -> Server {
    use axum::body::{Body, Bytes};
    use axum::response::IntoResponse;
    use futures_util::StreamExt;
    let app = axum::Router::new()
        .route("/v2/", axum::routing::get(|| async { "{}" }))
        .route(
            "/v2/{*rest}",
            axum::routing::get(|| async {
                let chunk = Bytes::from(vec![b' '; 64 << 10]);
                let body = futures_util::stream::repeat_with(move || {
                    Ok::<_, std::io::Error>(chunk.clone())
                })
                .take(6400);
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/vnd.oci.image.manifest.v1+json",
                    )],
                    Body::from_stream(body),
                )
                    .into_response()
            }),
        );
    serve(app)
}

#[test]
fn issue_10_manifests_are_capped_while_they_are_read() {
    let server = huge_manifest_registry();
    let w = Wharf::new();
    let started = Instant::now();
    let r = w
        .run(&["pull", &format!("{}/big/app:1", server.addr)])
        .fails();
    assert!(
        r.stderr.contains("manifest larger than 4194304 bytes"),
        "{}",
        r.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// What a hostile registry's upload host saw: the Authorization header of every request.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>;

/// A registry that wants basic credentials and sends every upload to `elsewhere`.
fn redirecting_registry(elsewhere: String, seen_home: Seen) -> Server {
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    let auth_ok = |h: &HeaderMap| {
        h.get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Basic "))
    };
    let challenge = || {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"home\"")],
        )
            .into_response()
    };
    let app = axum::Router::new()
        .route(
            "/v2/",
            axum::routing::get(move |h: HeaderMap| async move {
                if auth_ok(&h) {
                    "{}".into_response()
                } else {
                    challenge()
                }
            }),
        )
        .route(
            "/v2/{*rest}",
            axum::routing::any(
                move |method: axum::http::Method,
                      axum::extract::Path(rest): axum::extract::Path<String>,
                      h: HeaderMap| {
                    let elsewhere = elsewhere.clone();
                    let seen_home = seen_home.clone();
                    async move {
                        seen_home.lock().unwrap().push(
                            h.get(header::AUTHORIZATION)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned),
                        );
                        if !auth_ok(&h) {
                            return challenge();
                        }
                        if method == axum::http::Method::HEAD && rest.contains("/blobs/") {
                            return StatusCode::NOT_FOUND.into_response();
                        }
                        if method == axum::http::Method::POST && rest.ends_with("/blobs/uploads/") {
                            return (
                                StatusCode::ACCEPTED,
                                [(header::LOCATION, format!("{elsewhere}/steal/upload"))],
                            )
                                .into_response();
                        }
                        StatusCode::CREATED.into_response()
                    }
                },
            ),
        );
    serve(app)
}

#[test]
fn issue_10_credentials_stay_with_the_registry_they_were_given_for() {
    if !have_busybox() {
        return;
    }
    // The upload host records every Authorization header and asks for basic credentials,
    // which a careless client would answer with the registry's.
    let stolen: Seen = Default::default();
    let s2 = stolen.clone();
    let thief = serve(
        axum::Router::new().fallback(move |h: axum::http::HeaderMap| {
            let s2 = s2.clone();
            async move {
                use axum::response::IntoResponse;
                s2.lock().unwrap().push(
                    h.get(axum::http::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                );
                (
                    axum::http::StatusCode::UNAUTHORIZED,
                    [(
                        axum::http::header::WWW_AUTHENTICATE,
                        "Basic realm=\"steal\"",
                    )],
                )
                    .into_response()
            }
        }),
    );
    let home: Seen = Default::default();
    let registry = redirecting_registry(format!("http://{}", thief.addr), home.clone());
    let w = Wharf::new();
    w.load_busybox();
    w.run_stdin(
        &[
            "login",
            "-u",
            "alice",
            "--password-stdin",
            &registry.addr.to_string(),
        ],
        b"s3cret\n",
    )
    .ok();
    let image = format!("{}/team/app:1", registry.addr);
    w.run(&["tag", "busybox", &image]).ok();
    let r = w.run(&["push", &image]).fails();
    let stolen = stolen.lock().unwrap().clone();
    assert!(
        !stolen.is_empty(),
        "the upload went to the other host: {}",
        r.stderr
    );
    assert!(
        stolen.iter().all(Option::is_none),
        "credentials reached another host: {stolen:?}"
    );
    assert!(
        home.lock().unwrap().iter().any(Option::is_some),
        "the registry itself got them"
    );
}
