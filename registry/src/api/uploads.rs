//! Blob uploads: `POST /v2/<name>/blobs/uploads/` (session, monolithic with `?digest=`, or
//! mount with `?mount=&from=`), `PATCH`/`PUT`/`GET`/`DELETE /v2/<name>/blobs/uploads/<id>`.

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use wharf_common::digest::Digest;

use super::{ApiError, Req, RequestError, body_stream, header_value, parse_digest};
use crate::service::{Mounted, Registry, Repository, UploadId};

fn session_response(status: StatusCode, repo: &Repository, id: &UploadId, len: u64) -> Response {
    let mut resp = status.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        header_value(&format!("/v2/{repo}/blobs/uploads/{id}")),
    );
    // An empty upload is `0-0`, as distribution says it.
    let end = len.saturating_sub(1);
    h.insert(header::RANGE, header_value(&format!("0-{end}")));
    h.insert("Docker-Upload-UUID", header_value(id.as_str()));
    h.insert(header::CONTENT_LENGTH, header_value("0"));
    resp
}

fn created(repo: &Repository, digest: &Digest) -> Response {
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
            v.trim()
                .parse::<u64>()
                .map_err(|_| RequestError::ContentLength(v.to_owned()).into())
        })
        .transpose()
}

/// The start of a `Content-Range: <start>-<end>` (the spec's form, digits only). A range whose
/// length disagrees with `Content-Length` is refused.
fn chunk_start(req: &Req) -> Result<Option<u64>, ApiError> {
    let Some(raw) = req.header(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || ApiError::from(RequestError::ContentRange(raw.to_owned()));
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
        return Err(RequestError::RangeLength {
            range: raw.to_owned(),
            span: end - start + 1,
            length: len,
        }
        .into());
    }
    Ok(Some(start))
}

pub async fn start(
    reg: &Registry,
    repo: &Repository,
    req: &Req,
    body: Body,
) -> Result<Response, ApiError> {
    if let Some(mount) = req.query.get("mount") {
        let digest = parse_digest(mount)?;
        let from = req
            .query
            .get("from")
            .filter(|f| !f.is_empty())
            .map(|f| Repository::parse(f).map_err(RequestError::MountFrom))
            .transpose()?;
        return Ok(
            match reg
                .mount(repo, &digest, from.as_ref(), &|r| req.may_pull(r))
                .await?
            {
                Mounted::Linked => created(repo, &digest),
                Mounted::Session(id) => session_response(StatusCode::ACCEPTED, repo, &id, 0),
            },
        );
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

pub async fn status(
    reg: &Registry,
    repo: &Repository,
    id: &UploadId,
) -> Result<Response, ApiError> {
    let len = reg.upload_status(repo, id).await?;
    Ok(session_response(StatusCode::NO_CONTENT, repo, id, len))
}

pub async fn patch(
    reg: &Registry,
    repo: &Repository,
    id: &UploadId,
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
fn with_session(e: ApiError, repo: &Repository, id: &UploadId) -> ApiError {
    if e.status() != StatusCode::RANGE_NOT_SATISFIABLE {
        return e;
    }
    e.with_header(
        header::LOCATION,
        header_value(&format!("/v2/{repo}/blobs/uploads/{id}")),
    )
    .with_header(
        header::HeaderName::from_static("docker-upload-uuid"),
        header_value(id.as_str()),
    )
}

pub async fn put(
    reg: &Registry,
    repo: &Repository,
    id: &UploadId,
    req: &Req,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(d) = req.query.get("digest") else {
        return Err(RequestError::NoDigest.into());
    };
    let digest = parse_digest(d)?;
    let start = chunk_start(req)?;
    reg.finish_upload(repo, id, &digest, start, body_stream(body))
        .await
        .map_err(|e| with_session(e.into(), repo, id))?;
    Ok(created(repo, &digest))
}

pub async fn cancel(
    reg: &Registry,
    repo: &Repository,
    id: &UploadId,
) -> Result<Response, ApiError> {
    reg.cancel_upload(repo, id).await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, header_value("0"));
    Ok(resp)
}
