//! HTTP: the routes of the OCI Distribution Spec v1.1 (and what docker, containerd, podman and
//! skopeo expect of the Docker Registry HTTP API v2), docker's `/v1/search`, `/healthz` and
//! `/metrics`.
//!
//! Repository names contain slashes, so everything under `/v2/` goes to one handler that reads
//! the path from its end (`…/manifests/<ref>`, `…/blobs/uploads/<id>`, `…/tags/list`,
//! `…/referrers/<digest>`) before validating the name.

mod blobs;
pub mod error;
mod lists;
mod manifests;
mod token;
mod uploads;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures_util::TryStreamExt;
use tower_http::trace::TraceLayer;
use wharf_common::digest::Digest;

use crate::auth::{Action, Auth, Identity};
use crate::service::{Registry, Repository, ServiceError, UploadId};
use crate::storage::ByteStream;
pub use error::{ApiError, Descriptor, OciErrorCode, RequestError};

/// The route a response came from, for metrics.
#[derive(Clone, Copy, Debug)]
struct RouteName(&'static str);

/// What the handlers share: the registry, and its access control when `[auth]` is on.
#[derive(Clone)]
struct App {
    reg: Registry,
    auth: Option<Arc<Auth>>,
}

/// The whole HTTP surface of the registry; with `auth`, requests are authenticated and
/// checked against its rules, and `/token` is served when wharf issues its own tokens.
pub fn router(registry: Registry, auth: Option<Arc<Auth>>) -> Router {
    let mut router = Router::new()
        .route("/v2/", get(base))
        .route("/v2", get(base))
        .route("/v2/{*path}", any(dispatch))
        .route("/v1/search", get(search))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics));
    if auth.as_ref().is_some_and(|a| a.issues_tokens()) {
        router = router.route("/token", get(token::get).post(token::post));
    }
    let app = App {
        reg: registry,
        auth,
    };
    router
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    tracing::debug_span!("request", method = %req.method(), path = %req.uri().path())
                })
                .on_request(())
                .on_response(
                    |resp: &Response, latency: std::time::Duration, _: &tracing::Span| {
                        tracing::debug!(status = resp.status().as_u16(), ?latency, "answered");
                    },
                ),
        )
        .with_state(app)
}

/// Adds the API version header to every response and counts requests and bytes.
async fn observe(State(app): State<App>, req: Request, next: Next) -> Response {
    let reg = &app.reg;
    let start = Instant::now();
    let method = req.method().clone();
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    let route = resp
        .extensions()
        .get::<RouteName>()
        .map_or("other", |r| r.0);
    if method != Method::HEAD
        && let Some(n) = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        reg.metrics().bytes_out(n);
    }
    reg.metrics().request(
        route,
        method.as_str(),
        resp.status().as_u16(),
        start.elapsed(),
    );
    resp
}

/// `/v2/`: with authentication on, a client without valid credentials is challenged here
/// first (this is where `docker login` learns how to log in).
async fn base(State(app): State<App>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let mut req = Req::new(
        parts.method,
        parts.headers,
        &parts.extensions,
        HashMap::new(),
    );
    if let Err(e) = identify(&app, &mut req).await.and_then(|()| {
        let Some(auth) = &app.auth else {
            return Ok(());
        };
        auth.require_login(&req.who, req.host(), None)
            .map_err(ApiError::from)
    }) {
        return named("base", e.into_response());
    }
    named(
        "base",
        ([(header::CONTENT_TYPE, "application/json")], "{}").into_response(),
    )
}

/// Sets `req.who` from its credentials (and `req.auth`), when authentication is on.
async fn identify(app: &App, req: &mut Req) -> Result<(), ApiError> {
    let Some(auth) = &app.auth else {
        return Ok(());
    };
    req.auth = Some(auth.clone());
    req.who = auth
        .identify(
            req.header(header::AUTHORIZATION),
            req.peer.map(|p| p.ip()),
            req.host(),
        )
        .await?;
    Ok(())
}

/// docker's `GET /v1/search`, which `docker search REGISTRY/TERM` asks.
async fn search(State(app): State<App>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    // A query that does not parse is refused: read as empty, it would match everything.
    let query = match Query::<HashMap<String, String>>::try_from_uri(&parts.uri) {
        Ok(q) => q.0,
        Err(_) => {
            let raw = parts.uri.query().unwrap_or_default().to_owned();
            return named(
                "search",
                ApiError::from(RequestError::Query(raw)).into_response(),
            );
        }
    };
    let mut req = Req::new(parts.method, parts.headers, &parts.extensions, query);
    let result = match identify(&app, &mut req).await {
        Ok(()) => lists::search(&app.reg, &req).await,
        Err(e) => Err(e),
    };
    named("search", result.unwrap_or_else(IntoResponse::into_response))
}

async fn healthz() -> Response {
    named("healthz", "ok\n".into_response())
}

async fn metrics(State(app): State<App>) -> Response {
    let reg = &app.reg;
    named(
        "metrics",
        (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            reg.metrics().render(),
        )
            .into_response(),
    )
}

async fn not_found(uri: Uri) -> Response {
    ApiError::from(RequestError::NoEndpoint(uri.path().to_owned())).into_response()
}

fn named(route: &'static str, mut resp: Response) -> Response {
    resp.extensions_mut().insert(RouteName(route));
    resp
}

/// An endpoint under `/v2/`, read from the path's end.
#[derive(Debug, PartialEq)]
enum Route<'a> {
    Catalog,
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    UploadStart(&'a str),
    Upload(&'a str, &'a str),
    Referrers(&'a str, &'a str),
}

impl Route<'_> {
    fn name(&self) -> &'static str {
        match self {
            Route::Catalog => "catalog",
            Route::Tags(_) => "tags",
            Route::Manifest(..) => "manifest",
            Route::Blob(..) => "blob",
            Route::UploadStart(_) | Route::Upload(..) => "upload",
            Route::Referrers(..) => "referrers",
        }
    }

    fn repo(&self) -> Option<&str> {
        match self {
            Route::Catalog => None,
            Route::Tags(n)
            | Route::Manifest(n, _)
            | Route::Blob(n, _)
            | Route::UploadStart(n)
            | Route::Upload(n, _)
            | Route::Referrers(n, _) => Some(n),
        }
    }
}

fn parse_route(path: &str) -> Option<Route<'_>> {
    if path == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = path.strip_suffix("/tags/list") {
        return Some(Route::Tags(name));
    }
    let (head, last) = path.rsplit_once('/')?;
    if let Some(name) = head.strip_suffix("/blobs/uploads") {
        return Some(if last.is_empty() {
            Route::UploadStart(name)
        } else {
            Route::Upload(name, last)
        });
    }
    if last.is_empty() {
        return None;
    }
    if let Some(name) = head.strip_suffix("/manifests") {
        return Some(Route::Manifest(name, last));
    }
    if let Some(name) = head.strip_suffix("/blobs") {
        return Some(if last == "uploads" {
            Route::UploadStart(name)
        } else {
            Route::Blob(name, last)
        });
    }
    if let Some(name) = head.strip_suffix("/referrers") {
        return Some(Route::Referrers(name, last));
    }
    None
}

/// What a handler gets: the parsed request.
struct Req {
    method: Method,
    headers: HeaderMap,
    query: HashMap<String, String>,
    /// Where the request came from, when the server knows it.
    peer: Option<std::net::SocketAddr>,
    /// Who sent it (anonymous until authentication says otherwise).
    who: Identity,
    /// The access control, when authentication is on.
    auth: Option<Arc<Auth>>,
}

/// The client address of a connection, added to its requests by the server.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub std::net::SocketAddr);

/// One audit log line (target `wharf::audit`): who did what to which repository, from where.
/// A client without credentials is `anonymous`.
fn audit(action: &'static str, repo: &Repository, reference: &str, digest: &str, req: &Req) {
    let client = req.peer.map(|p| p.ip().to_string()).unwrap_or_default();
    tracing::info!(
        target: "wharf::audit",
        action,
        user = req.who.name(),
        client = %client,
        repo = repo.as_str(),
        reference,
        digest,
        "audit"
    );
}

impl Req {
    /// A request's method, headers, parsed query and the client address the server recorded.
    fn new(
        method: Method,
        headers: HeaderMap,
        extensions: &axum::http::Extensions,
        query: HashMap<String, String>,
    ) -> Req {
        Req {
            method,
            headers,
            query,
            peer: extensions.get::<Peer>().map(|p| p.0),
            who: Identity::default(),
            auth: None,
        }
    }

    /// The `Host` the client addressed, for token realms: a host name or address with an
    /// optional port, nothing else (a realm is built from it).
    fn host(&self) -> Option<&str> {
        self.header(header::HOST).filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
        })
    }

    /// Whether the caller may pull `repo` (always, without authentication).
    fn may_pull(&self, repo: &str) -> bool {
        self.auth
            .as_ref()
            .is_none_or(|a| a.allows(&self.who, repo, Action::Pull))
    }

    /// Whether listings show `repo` to the caller (always, without authentication).
    fn may_list(&self, repo: &str) -> bool {
        self.auth
            .as_ref()
            .is_none_or(|a| a.may_list(&self.who, repo))
    }

    fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A request body as the storage layer reads it.
fn body_stream(body: Body) -> ByteStream {
    Box::pin(
        body.into_data_stream()
            .map_err(|e| std::io::Error::other(e.to_string())),
    )
}

async fn dispatch(State(app): State<App>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().strip_prefix("/v2/").unwrap_or("");
    let Some(route) = parse_route(path) else {
        return not_found(parts.uri.clone()).await;
    };
    let name = route.name();
    let query = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let mut req = Req::new(parts.method, parts.headers, &parts.extensions, query);
    let result = match authorize(&app, &route, &mut req).await {
        Ok(()) => handle(&app.reg, &route, req, body).await,
        Err(e) => {
            drain(body).await;
            Err(e)
        }
    };
    named(name, result.unwrap_or_else(IntoResponse::into_response))
}

/// Reads and drops what a refused client is still sending (up to 16 MiB, for up to 10 s):
/// answering before its body is read would close the connection under a client still
/// writing, which then sees a broken pipe instead of the 401 that tells it to log in.
async fn drain(body: Body) {
    const LIMIT: usize = 16 << 20;
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        axum::body::to_bytes(body, LIMIT),
    )
    .await;
}

/// The action a request needs on its repository.
fn needed(route: &Route<'_>, method: &Method) -> Action {
    match route {
        Route::Manifest(..) if method == Method::PUT => Action::Push,
        Route::Manifest(..) | Route::Blob(..) if method == Method::DELETE => Action::Delete,
        Route::UploadStart(_) | Route::Upload(..) => Action::Push,
        _ => Action::Pull,
    }
}

/// Identifies the caller and checks it may do what the route does.
async fn authorize(app: &App, route: &Route<'_>, req: &mut Req) -> Result<(), ApiError> {
    identify(app, req).await?;
    let Some(auth) = &app.auth else {
        return Ok(());
    };
    match route.repo() {
        None => auth.require_catalog(&req.who, req.host())?,
        Some(repo) => {
            // Only names of the spec's grammar reach a challenge (they hold no quotes).
            Repository::parse(repo).map_err(RequestError::from)?;
            // A mount's challenge also asks for pull on its source, so that the token the
            // client fetches can mount from there.
            let from = match route {
                Route::UploadStart(_) if req.query.contains_key("mount") => req
                    .query
                    .get("from")
                    .filter(|f| Repository::parse(f).is_ok())
                    .map(|f| format!("repository:{f}:pull")),
                _ => None,
            };
            let action = needed(route, &req.method);
            auth.require(&req.who, repo, action, req.host(), from.as_deref())?;
        }
    }
    Ok(())
}

async fn handle(
    reg: &Registry,
    route: &Route<'_>,
    req: Req,
    body: Body,
) -> Result<Response, ApiError> {
    let m = &req.method;
    let unsupported = || Err(RequestError::Method(req.method.clone()).into());
    let Some(name) = route.repo() else {
        return match route {
            Route::Catalog if m == Method::GET => lists::catalog(reg, &req).await,
            _ => unsupported(),
        };
    };
    let repo = &Repository::parse(name).map_err(RequestError::from)?;
    let mirrored = if reg.mirrors().is_empty() {
        None
    } else {
        reg.mirrors()
            .route(repo.as_str(), req.query.get("ns").map(String::as_str))
    };
    let reading = m == Method::GET || m == Method::HEAD;
    if let Some(t) = &mirrored
        && t.exclusive
    {
        if !reading {
            return Err(ServiceError::MirrorReadOnly {
                repo: repo.to_string(),
                upstream: t.upstream.name().to_owned(),
            }
            .into());
        }
        // Listings show what is kept.
        match *route {
            Route::Tags(_) => return lists::mirrored_tags(reg, repo, t, &req).await,
            Route::Referrers(_, d) => return lists::referrers(reg, &t.stored, d, &req).await,
            _ => {}
        }
    }
    match *route {
        Route::Tags(_) if m == Method::GET => lists::tags(reg, repo, &req).await,
        Route::Referrers(_, d) if m == Method::GET => lists::referrers(reg, repo, d, &req).await,
        Route::Manifest(_, r) if reading => {
            manifests::get(reg, repo, r, m == Method::HEAD, mirrored.as_ref()).await
        }
        Route::Manifest(_, r) if m == Method::PUT => {
            let resp = manifests::put(reg, repo, r, &req, body).await?;
            let digest = resp
                .headers()
                .get("Docker-Content-Digest")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let action = if r.contains(':') { "push" } else { "push+tag" };
            audit(action, repo, r, digest, &req);
            Ok(resp)
        }
        Route::Manifest(_, r) if m == Method::DELETE => {
            let resp = manifests::delete(reg, repo, r).await?;
            audit("delete", repo, r, "", &req);
            Ok(resp)
        }
        Route::Blob(_, d) if reading => blobs::get(reg, repo, d, &req, mirrored.as_ref()).await,
        Route::Blob(_, d) if m == Method::DELETE => {
            let resp = blobs::delete(reg, repo, d).await?;
            audit("delete blob", repo, d, d, &req);
            Ok(resp)
        }
        Route::UploadStart(_) if m == Method::POST => uploads::start(reg, repo, &req, body).await,
        Route::Upload(_, id) => {
            // An id of another form names no session, like one that expired.
            let id = &UploadId::parse(id).ok_or_else(|| ServiceError::UploadUnknown(id.into()))?;
            match *m {
                Method::GET => uploads::status(reg, repo, id).await,
                Method::PATCH => uploads::patch(reg, repo, id, &req, body).await,
                Method::PUT => uploads::put(reg, repo, id, &req, body).await,
                Method::DELETE => uploads::cancel(reg, repo, id).await,
                _ => unsupported(),
            }
        }
        _ => unsupported(),
    }
}

/// Parses a digest from a URL or query.
fn parse_digest(text: &str) -> Result<Digest, ApiError> {
    Ok(text.parse::<Digest>().map_err(RequestError::from)?)
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_read_from_the_end() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(parse_route("_catalog"), Some(Route::Catalog));
        assert_eq!(parse_route("a/b/tags/list"), Some(Route::Tags("a/b")));
        assert_eq!(
            parse_route("a/manifests/v1"),
            Some(Route::Manifest("a", "v1"))
        );
        assert_eq!(
            parse_route("blobs/manifests/blobs"),
            Some(Route::Manifest("blobs", "blobs"))
        );
        assert_eq!(
            parse_route(&format!("x/y/blobs/{d}")),
            Some(Route::Blob("x/y", d))
        );
        assert_eq!(
            parse_route("x/blobs/uploads/"),
            Some(Route::UploadStart("x"))
        );
        assert_eq!(
            parse_route("x/blobs/uploads"),
            Some(Route::UploadStart("x"))
        );
        assert_eq!(
            parse_route("x/blobs/uploads/abc"),
            Some(Route::Upload("x", "abc"))
        );
        assert_eq!(
            parse_route(&format!("x/referrers/{d}")),
            Some(Route::Referrers("x", d))
        );
        assert_eq!(parse_route("x/manifests/"), None);
        assert_eq!(parse_route("nothing"), None);
        assert_eq!(parse_route("x/unknown/y"), None);
    }
}
