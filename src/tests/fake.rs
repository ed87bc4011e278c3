//! An in-process registry that misbehaves on purpose: wrong bytes, broken and slow downloads,
//! token auth, redirects to a storage host. It speaks only the read side of the API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::support::{Server, serve, sha256_hex};

/// How the fake serves blob bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blobs {
    /// Correctly.
    Honest,
    /// The layer's bytes with one byte changed.
    Corrupt,
    /// The first GET of each layer breaks after half the bytes.
    BreakOnce,
    /// In small chunks with pauses (to be killed midway).
    Slow,
    /// The first GET of each layer sends half the bytes, then nothing, the connection kept
    /// open; later ones are served.
    StallOnce,
    /// Every GET of a layer sends its headers, then nothing, the connection kept open.
    StallAlways,
}

#[derive(Default)]
pub struct Log {
    /// (path, Range header, Authorization header) of every request.
    pub requests: Vec<(String, Option<String>, Option<String>)>,
    /// Scopes asked of the token endpoint.
    pub token_scopes: Vec<String>,
    /// (`account` parameter, Authorization header) of every token request.
    pub token_logins: Vec<(Option<String>, Option<String>)>,
}

struct Inner {
    manifests: HashMap<String, (String, Bytes)>,
    blobs: HashMap<String, Bytes>,
    layers: Vec<String>,
    mode: Mutex<Blobs>,
    broken: Mutex<Vec<String>>,
    token: bool,
    redirect_to: Option<String>,
    log: Mutex<Log>,
    addr: Mutex<String>,
    /// Answer every API request 429 with this `Retry-After`, as Docker Hub past its limit.
    throttle: Mutex<Option<u64>>,
    /// The token realm, when tokens come from another host (as Docker Hub's auth.docker.io).
    realm: Mutex<Option<String>>,
}

#[derive(Clone)]
pub struct Fake(Arc<Inner>);

/// A one-layer image: (manifest bytes, config bytes, layer bytes).
pub fn image(layer: Vec<u8>) -> (Bytes, Bytes, Bytes) {
    let diff = format!("sha256:{}", sha256_hex(&layer));
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff]},
        "config": {"Cmd": ["sh"]},
    })
    .to_string();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{}", sha256_hex(config.as_bytes())), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{}", sha256_hex(&layer)), "size": layer.len()}],
    })
    .to_string();
    (
        Bytes::from(manifest),
        Bytes::from(config),
        Bytes::from(layer),
    )
}

impl Fake {
    pub fn new(repo_tag: &str, layer: Vec<u8>, mode: Blobs) -> Fake {
        Self::build(repo_tag, layer, mode, false, None)
    }

    pub fn build(
        repo_tag: &str,
        layer: Vec<u8>,
        mode: Blobs,
        token: bool,
        redirect_to: Option<String>,
    ) -> Fake {
        let (manifest, config, layer) = image(layer);
        let md = format!("sha256:{}", sha256_hex(&manifest));
        let cd = format!("sha256:{}", sha256_hex(&config));
        let ld = format!("sha256:{}", sha256_hex(&layer));
        let mt = "application/vnd.oci.image.manifest.v1+json".to_owned();
        let mut manifests = HashMap::new();
        manifests.insert(repo_tag.to_owned(), (mt.clone(), manifest.clone()));
        let repo = repo_tag.split(':').next().unwrap_or(repo_tag);
        manifests.insert(format!("{repo}:{md}"), (mt, manifest));
        let mut blobs = HashMap::new();
        blobs.insert(cd, config);
        blobs.insert(ld.clone(), layer);
        Fake(Arc::new(Inner {
            manifests,
            blobs,
            layers: vec![ld],
            mode: Mutex::new(mode),
            broken: Mutex::new(Vec::new()),
            token,
            redirect_to,
            log: Mutex::new(Log::default()),
            addr: Mutex::new(String::new()),
            throttle: Mutex::new(None),
            realm: Mutex::new(None),
        }))
    }

    pub fn layer_digest(&self) -> String {
        self.0.layers[0].clone()
    }

    /// Starts a token service of its own on another port and names it as the realm, as
    /// Docker Hub sends clients to auth.docker.io.
    pub fn start_token_host(&self) -> Server {
        let server = serve(
            Router::new()
                .route("/token", get(token))
                .with_state(self.clone()),
        );
        *self.0.realm.lock().unwrap() = Some(format!("http://{}/token", server.addr));
        server
    }

    /// From now on every API request gets 429 with `Retry-After: secs` (`None`: served).
    pub fn set_throttle(&self, secs: Option<u64>) {
        *self.0.throttle.lock().unwrap() = secs;
    }

    pub fn set_mode(&self, mode: Blobs) {
        *self.0.mode.lock().unwrap() = mode;
    }

    pub fn log<T>(&self, f: impl FnOnce(&Log) -> T) -> T {
        f(&self.0.log.lock().unwrap())
    }

    pub fn start(&self) -> Server {
        let app = Router::new()
            .route("/v2/", get(ping))
            .route("/token", get(token))
            .route("/v2/{*rest}", get(dispatch).head(dispatch))
            .with_state(self.clone());
        let server = serve(app);
        *self.0.addr.lock().unwrap() = server.addr.to_string();
        server
    }
}

fn unauthorized(fake: &Fake) -> Response {
    let addr = fake.0.addr.lock().unwrap().clone();
    let realm = fake.0.realm.lock().unwrap().clone();
    let realm = realm.unwrap_or_else(|| format!("http://{addr}/token"));
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            format!("Bearer realm=\"{realm}\",service=\"fake\""),
        )],
        r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
    )
        .into_response()
}

async fn ping(State(fake): State<Fake>, headers: HeaderMap) -> Response {
    if fake.0.token && headers.get(header::AUTHORIZATION).is_none() {
        return unauthorized(&fake);
    }
    (StatusCode::OK, "{}").into_response()
}

async fn token(
    State(fake): State<Fake>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let scope = q.get("scope").cloned().unwrap_or_default();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut log = fake.0.log.lock().unwrap();
    log.token_scopes.push(scope.clone());
    log.token_logins
        .push((q.get("account").cloned(), authorization));
    drop(log);
    axum::Json(json!({"token": format!("tok-{scope}")})).into_response()
}

async fn dispatch(
    State(fake): State<Fake>,
    Path(rest): Path<String>,
    headers: HeaderMap,
) -> Response {
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    fake.0
        .log
        .lock()
        .unwrap()
        .requests
        .push((rest.clone(), range.clone(), auth.clone()));
    if fake.0.token {
        let (repo, _) = rest
            .rsplit_once("/blobs/")
            .or_else(|| rest.rsplit_once("/manifests/"))
            .unwrap_or((&rest, ""));
        let want = format!("Bearer tok-repository:{repo}:pull");
        if auth.as_deref() != Some(want.as_str()) {
            return unauthorized(&fake);
        }
    }
    if let Some(secs) = *fake.0.throttle.lock().unwrap() {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [
                (header::RETRY_AFTER, secs.to_string()),
                (
                    header::HeaderName::from_static("ratelimit-remaining"),
                    "0;w=21600".to_owned(),
                ),
            ],
            r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit"}]}"#,
        )
            .into_response();
    }
    if let Some((repo, reference)) = rest.rsplit_once("/manifests/") {
        return match fake.0.manifests.get(&format!("{repo}:{reference}")) {
            Some((mt, bytes)) => (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, mt.clone()),
                    (
                        header::HeaderName::from_static("docker-content-digest"),
                        format!("sha256:{}", sha256_hex(bytes)),
                    ),
                    // As Docker Hub counts a manifest GET against the pull limit.
                    (
                        header::HeaderName::from_static("ratelimit-remaining"),
                        "42;w=21600".to_owned(),
                    ),
                ],
                bytes.clone(),
            )
                .into_response(),
            None => (
                StatusCode::NOT_FOUND,
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            )
                .into_response(),
        };
    }
    let Some((_, digest)) = rest.rsplit_once("/blobs/") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(bytes) = fake.0.blobs.get(digest).cloned() else {
        return (
            StatusCode::NOT_FOUND,
            r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}"#,
        )
            .into_response();
    };
    if let Some(target) = &fake.0.redirect_to {
        return (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, format!("{target}/storage/{digest}"))],
        )
            .into_response();
    }
    let is_layer = fake.0.layers.iter().any(|l| l == digest);
    let mode = *fake.0.mode.lock().unwrap();
    let start: usize = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse().ok())
        .unwrap_or(0)
        .min(bytes.len());
    let status = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let body_bytes = bytes.slice(start..);
    let len = body_bytes.len();
    let mut resp_headers = vec![(header::CONTENT_LENGTH, len.to_string())];
    if range.is_some() {
        resp_headers.push((
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{}", bytes.len() - 1, bytes.len()),
        ));
    }
    let body = match mode {
        Blobs::Corrupt if is_layer => {
            let mut v = body_bytes.to_vec();
            if let Some(b) = v.last_mut() {
                *b ^= 0xff;
            }
            Body::from(v)
        }
        Blobs::BreakOnce
            if is_layer && !fake.0.broken.lock().unwrap().contains(&digest.to_owned()) =>
        {
            fake.0.broken.lock().unwrap().push(digest.to_owned());
            let half = body_bytes.slice(..len / 2);
            let stream = futures_stream(
                vec![
                    Ok(half),
                    Err(std::io::Error::other("connection reset by fake")),
                ],
                Duration::ZERO,
            );
            Body::from_stream(stream)
        }
        Blobs::StallOnce
            if is_layer && !fake.0.broken.lock().unwrap().contains(&digest.to_owned()) =>
        {
            fake.0.broken.lock().unwrap().push(digest.to_owned());
            Body::from_stream(stalling(Some(body_bytes.slice(..len / 2))))
        }
        Blobs::StallAlways if is_layer => Body::from_stream(stalling(None)),
        Blobs::Slow if is_layer => {
            let chunks: Vec<Result<Bytes, std::io::Error>> = body_bytes
                .chunks(16 * 1024)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            Body::from_stream(futures_stream(chunks, Duration::from_millis(25)))
        }
        _ => Body::from(body_bytes),
    };
    let mut resp = Response::builder().status(status);
    for (k, v) in resp_headers {
        resp = resp.header(k, v);
    }
    resp.body(body).unwrap()
}

fn futures_stream(
    items: Vec<Result<Bytes, std::io::Error>>,
    pause: Duration,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        for item in items {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            if tx.send(item).await.is_err() {
                return;
            }
        }
    });
    tokio_stream_from(rx)
}

/// `first` (if any), then nothing for a very long time, the stream left open.
fn stalling(
    first: Option<Bytes>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures_util::stream::unfold(first, |first| async move {
        match first {
            Some(b) => Some((Ok(b), None)),
            None => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                None
            }
        }
    })
}

/// A storage host a registry redirects blob downloads to; it records Authorization headers.
pub fn storage(blobs: HashMap<String, Bytes>) -> (Server, Arc<Mutex<Vec<Option<String>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let blobs = Arc::new(blobs);
    let app = Router::new().route(
        "/storage/{digest}",
        get(move |Path(d): Path<String>, headers: HeaderMap| {
            let seen = s2.clone();
            let blobs = blobs.clone();
            async move {
                seen.lock().unwrap().push(
                    headers
                        .get(header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                );
                match blobs.get(&d) {
                    Some(b) => (StatusCode::OK, b.clone()).into_response(),
                    None => StatusCode::NOT_FOUND.into_response(),
                }
            }
        }),
    );
    (serve(app), seen)
}

impl Fake {
    pub fn blobs(&self) -> HashMap<String, Bytes> {
        self.0.blobs.clone()
    }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
