//! Blob uploads: `POST /v2/<name>/blobs/uploads/` (session, monolithic with `?digest=`, or
//! mount with `?mount=&from=`), `PATCH`/`PUT`/`GET`/`DELETE /v2/<name>/blobs/uploads/<id>`.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use wharf_common::digest::Digest;
use wharf_common::reference::RepoName;

use axum::body::Body;

use super::{ApiError, OciErrorCode, Req, body_stream, header_value, parse_digest};
use crate::service::{Mounted, Registry};

fn session_response(status: StatusCode, repo: &str, id: &str, len: u64) -> Response {
    let mut resp = status.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        header_value(&format!("/v2/{repo}/blobs/uploads/{id}")),
    );
    // An empty upload is `0-0`, as distribution says it.
    let end = len.saturating_sub(1);
    h.insert(header::RANGE, header_value(&format!("0-{end}")));
    h.insert("Docker-Upload-UUID", header_value(id));
    h.insert(header::CONTENT_LENGTH, header_value("0"));
    resp
}

fn created(repo: &str, digest: &Digest) -> Response {
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        header_value(&format!("/v2/{repo}/blobs/{digest}")),
    );
    h.insert("Docker-Content-Digest", header_value(digest.as_str()));
    h.insert(header::CONTENT_LENGTH, header_value("0"));
    resp
}

fn declared_length(req: &Req) -> Result<Option<u64>, ApiError> {
    req.header(header::CONTENT_LENGTH)
        .map(|v| {
            v.trim().parse::<u64>().map_err(|_| {
                ApiError::new(
                    OciErrorCode::SizeInvalid,
                    format!("Content-Length {v:?} is not a number"),
                )
            })
        })
        .transpose()
}

/// The start of a `Content-Range: <start>-<end>` (the spec's form, digits only). A range whose
/// length disagrees with `Content-Length` is refused.
fn chunk_start(req: &Req) -> Result<Option<u64>, ApiError> {
    let Some(raw) = req.header(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            OciErrorCode::BlobUploadInvalid,
            format!("Content-Range {raw:?} is not <start>-<end>"),
        )
        .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
    };
    let (a, b) = raw.trim().split_once('-').ok_or_else(bad)?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(a) || !digits(b) {
        return Err(bad());
    }
    let start: u64 = a.parse().map_err(|_| bad())?;
    let end: u64 = b.parse().map_err(|_| bad())?;
    if end < start {
        return Err(bad());
    }
    if let Some(len) = declared_length(req)?
        && len != end - start + 1
    {
        return Err(ApiError::new(
            OciErrorCode::SizeInvalid,
            format!(
                "Content-Range {raw:?} spans {} bytes but Content-Length is {len}",
                end - start + 1
            ),
        )
        .with_status(StatusCode::RANGE_NOT_SATISFIABLE));
    }
    Ok(Some(start))
}

pub async fn start(
    reg: &Registry,
    repo: &str,
    req: &Req,
    body: Body,
) -> Result<Response, ApiError> {
    if let Some(mount) = req.query.get("mount") {
        let digest = parse_digest(mount)?;
        let from = req
            .query
            .get("from")
            .map(String::as_str)
            .filter(|f| !f.is_empty());
        if let Some(f) = from
            && !RepoName::is_valid_path(f)
        {
            return Err(ApiError::new(
                OciErrorCode::NameInvalid,
                format!("invalid repository name {f:?} in from="),
            ));
        }
        return Ok(match reg.mount(repo, &digest, from).await? {
            Mounted::Linked => created(repo, &digest),
            Mounted::Session(id) => session_response(StatusCode::ACCEPTED, repo, &id, 0),
        });
    }
    if let Some(d) = req.query.get("digest") {
        let digest = parse_digest(d)?;
        let declared = declared_length(req)?;
        reg.put_blob(repo, &digest, body_stream(body), declared)
            .await?;
        return Ok(created(repo, &digest));
    }
    let id = reg.start_upload(repo).await?;
    Ok(session_response(StatusCode::ACCEPTED, repo, &id, 0))
}

pub async fn status(reg: &Registry, repo: &str, id: &str) -> Result<Response, ApiError> {
    let len = reg.upload_status(repo, id).await?;
    Ok(session_response(StatusCode::NO_CONTENT, repo, id, len))
}

pub async fn patch(
    reg: &Registry,
    repo: &str,
    id: &str,
    req: &Req,
    body: Body,
) -> Result<Response, ApiError> {
    let start = chunk_start(req).map_err(|e| with_session(e, repo, id))?;
    let len = reg
        .append(repo, id, start, body_stream(body))
        .await
        .map_err(|e| with_session(e.into(), repo, id))?;
    Ok(session_response(StatusCode::ACCEPTED, repo, id, len))
}

/// A refused chunk (416) says where the session is, so the client can go on from there.
fn with_session(e: ApiError, repo: &str, id: &str) -> ApiError {
    if e.status() != StatusCode::RANGE_NOT_SATISFIABLE {
        return e;
    }
    e.with_header(
        header::LOCATION,
        header_value(&format!("/v2/{repo}/blobs/uploads/{id}")),
    )
    .with_header(
        header::HeaderName::from_static("docker-upload-uuid"),
        header_value(id),
    )
}

pub async fn put(
    reg: &Registry,
    repo: &str,
    id: &str,
    req: &Req,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(d) = req.query.get("digest") else {
        return Err(ApiError::new(
            OciErrorCode::DigestInvalid,
            "completing an upload needs ?digest=<digest>",
        ));
    };
    let digest = parse_digest(d)?;
    let start = chunk_start(req)?;
    reg.finish_upload(repo, id, &digest, start, body_stream(body))
        .await
        .map_err(|e| with_session(e.into(), repo, id))?;
    Ok(created(repo, &digest))
}

pub async fn cancel(reg: &Registry, repo: &str, id: &str) -> Result<Response, ApiError> {
    reg.cancel_upload(repo, id).await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, header_value("0"));
    Ok(resp)
}
