//! wharf's token service (Docker's registry token spec), served at `/token` when `[auth]` is in
//! token mode and no external token server is trusted:
//! - `GET /token?service=&scope=…&offline_token=true`, with basic credentials or none: what
//!   `docker login`, docker, podman, skopeo and containerd ask;
//! - `POST /token` with an OAuth2 form, `grant_type=password` or `grant_type=refresh_token`:
//!   what docker does with the refresh token (`identitytoken`) `docker login` kept.

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, App, Req, named};
use crate::auth::{Auth, Denial, Issued};

/// The largest token request body read.
const FORM_LIMIT: usize = 64 << 10;

/// An answer in the token spec's JSON (`token` and OAuth2's `access_token` both).
fn answer(issued: Issued) -> Response {
    let mut body = json!({
        "token": issued.token,
        "access_token": issued.token,
        "expires_in": issued.expires_in,
        "issued_at": issued.issued_at,
        "scope": issued.scope,
    });
    if let Some(r) = issued.refresh_token {
        body["refresh_token"] = json!(r);
    }
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// An OAuth2 error (RFC 6749 §5.2).
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"error": error, "error_description": description}).to_string(),
    )
        .into_response()
}

fn auth_of(app: &App) -> &Auth {
    // The route exists only when authentication is on.
    app.auth
        .as_deref()
        .unwrap_or_else(|| unreachable!("/token is routed only with [auth]"))
}

fn issue(auth: &Auth, user: Option<&str>, scopes: &[String], offline: bool) -> Response {
    match auth.issue(user, scopes, offline) {
        Ok(issued) => answer(issued),
        Err(e) => {
            tracing::error!(error = %e, "signing a token failed");
            oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "signing the token failed",
            )
        }
    }
}

/// A request for another service's token is refused (400).
fn other_service(auth: &Auth, asked: Option<&str>) -> Option<Response> {
    let asked = asked.filter(|s| *s != auth.service())?;
    Some(named(
        "token",
        oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!(
                "this token service is for {:?}, not {asked:?}",
                auth.service()
            ),
        ),
    ))
}

/// `GET /token`
pub async fn get(State(app): State<App>, req: Request) -> Response {
    let auth = auth_of(&app);
    let (parts, _) = req.into_parts();
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let r = Req::new(
        parts.method,
        parts.headers,
        &parts.extensions,
        Default::default(),
    );
    let value = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    if let Some(refused) = other_service(auth, value("service")) {
        return refused;
    }
    let user = match r.header(header::AUTHORIZATION) {
        Some(v) if v.len() > 6 && v[..6].eq_ignore_ascii_case("basic ") => {
            match auth
                .check_basic(v[6..].trim(), r.peer.map(|p| p.ip()), r.host())
                .await
            {
                Ok(u) => Some(u),
                Err(d) => return named("token", refusal(d)),
            }
        }
        _ => None,
    };
    let scopes: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.clone())
        .collect();
    let offline = value("offline_token") == Some("true");
    named("token", issue(auth, user.as_deref(), &scopes, offline))
}

/// A failed login: 401 (or 429) in the distribution error envelope, which docker prints.
fn refusal(d: Denial) -> Response {
    let d = match d {
        Denial::Unauthorized { detail, .. } => Denial::Unauthorized {
            challenge: "Basic realm=\"wharf\"".into(),
            detail,
        },
        other => other,
    };
    ApiError::from(d).into_response()
}

/// `POST /token`
pub async fn post(State(app): State<App>, req: Request) -> Response {
    let auth = auth_of(&app);
    let (parts, body) = req.into_parts();
    let r = Req::new(
        parts.method,
        parts.headers,
        &parts.extensions,
        Default::default(),
    );
    let Ok(bytes) = to_bytes(Body::new(body), FORM_LIMIT).await else {
        return named(
            "token",
            oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the form is unreadable or over 64 KiB",
            ),
        );
    };
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&bytes).into_owned().collect();
    let value = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    if let Some(refused) = other_service(auth, value("service")) {
        return refused;
    }
    let scopes: Vec<String> = value("scope").map(str::to_owned).into_iter().collect();
    let resp = match value("grant_type") {
        Some("password") => {
            let (Some(user), Some(password)) = (value("username"), value("password")) else {
                return named(
                    "token",
                    oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "grant_type=password needs username and password",
                    ),
                );
            };
            match auth
                .login(user, password, r.peer.map(|p| p.ip()), r.host())
                .await
            {
                Ok(u) => issue(
                    auth,
                    Some(&u),
                    &scopes,
                    value("access_type") == Some("offline"),
                ),
                Err(Denial::Throttled(wait)) => refusal(Denial::Throttled(wait)),
                Err(_) => oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_grant",
                    "incorrect username or password",
                ),
            }
        }
        Some("refresh_token") => match value("refresh_token").map(|t| auth.redeem(t)) {
            Some(Ok(user)) => issue(auth, Some(&user), &scopes, false),
            Some(Err(why)) => {
                tracing::warn!(
                    target: "wharf::audit",
                    action = "login failed",
                    user = "",
                    client = %r.peer.map(|p| p.ip().to_string()).unwrap_or_default(),
                    reason = %why,
                    "audit"
                );
                oauth_error(StatusCode::UNAUTHORIZED, "invalid_grant", &why)
            }
            None => oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type=refresh_token needs refresh_token",
            ),
        },
        other => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            &format!(
                "grant_type {:?}: password or refresh_token",
                other.unwrap_or_default()
            ),
        ),
    };
    named("token", resp)
}
