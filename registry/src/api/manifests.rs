//! `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`.

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use wharf_common::reference::Tag;

use super::{ApiError, Req, RequestError, header_value, parse_digest};
use crate::service::mirror::Target;
use crate::service::{ManifestRef, Registry, Repository, ServiceError};

/// How much of an oversized manifest is read and dropped before the 413.
const DRAIN_LIMIT: u64 = 16 << 20;

/// A digest or a tag; `None` for a tag that breaks the grammar.
fn reference(text: &str) -> Result<Option<ManifestRef>, ApiError> {
    if text.contains(':') {
        return Ok(Some(ManifestRef::Digest(parse_digest(text)?)));
    }
    Ok(Tag::is_valid(text).then(|| ManifestRef::Tag(text.to_owned())))
}

/// The reference a manifest is pushed or deleted under: a bad tag is a bad request.
fn target(text: &str) -> Result<ManifestRef, ApiError> {
    Ok(reference(text)?.ok_or_else(|| RequestError::Tag(text.to_owned()))?)
}

pub async fn get(
    reg: &Registry,
    repo: &Repository,
    r: &str,
    head: bool,
    mirrored: Option<&Target>,
) -> Result<Response, ApiError> {
    // A tag that cannot exist is simply not there.
    let r =
        reference(r)?.ok_or_else(|| ServiceError::ManifestUnknown(format!("invalid tag {r:?}")))?;
    let m = match mirrored {
        None => reg.manifest(repo, &r).await?,
        Some(t) if t.exclusive => reg.mirrored_manifest(t, &r).await?,
        // Local first; the default upstream's when nothing local has it.
        Some(t) => match reg.manifest(repo, &r).await {
            Err(ServiceError::ManifestUnknown(_)) => reg.mirrored_manifest(t, &r).await?,
            found => found?,
        },
    };
    let body = if head {
        Body::empty()
    } else {
        Body::from(m.content.clone())
    };
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, header_value(&m.media_type));
    h.insert(
        header::CONTENT_LENGTH,
        header_value(&m.content.len().to_string()),
    );
    h.insert("Docker-Content-Digest", header_value(m.digest.as_str()));
    h.insert(header::ETAG, header_value(&format!("\"{}\"", m.digest)));
    Ok(resp)
}

pub async fn put(
    reg: &Registry,
    repo: &Repository,
    r: &str,
    req: &Req,
    body: Body,
) -> Result<Response, ApiError> {
    let r = target(r)?;
    let limit = reg.config().limits.manifest_max_bytes;
    let too_large = || {
        ApiError::from(ServiceError::TooLarge {
            what: "the manifest",
            limit,
        })
    };
    let content_type = req.header(header::CONTENT_TYPE).map(str::to_owned);
    // An oversized body is read (up to a bound) and dropped before answering, so the client
    // gets the 413 instead of a connection reset halfway through its upload.
    let mut buf = Vec::new();
    let mut seen = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| RequestError::ManifestBody(e.to_string()))?;
        seen += chunk.len() as u64;
        if seen > limit.saturating_add(DRAIN_LIMIT) {
            break;
        }
        if seen <= limit {
            buf.extend_from_slice(&chunk);
        }
    }
    if seen > limit {
        return Err(too_large());
    }
    let body = bytes::Bytes::from(buf);
    reg.metrics().bytes_in(body.len() as u64);
    let (digest, subject) = reg
        .put_manifest(repo, &r, content_type.as_deref(), body)
        .await?;
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        header_value(&format!("/v2/{repo}/manifests/{digest}")),
    );
    h.insert("Docker-Content-Digest", header_value(digest.as_str()));
    h.insert(header::CONTENT_LENGTH, header_value("0"));
    if let Some(s) = subject {
        h.insert("OCI-Subject", header_value(s.as_str()));
    }
    Ok(resp)
}

pub async fn delete(reg: &Registry, repo: &Repository, r: &str) -> Result<Response, ApiError> {
    let r = target(r)?;
    reg.delete_manifest(repo, &r).await?;
    let mut resp = StatusCode::ACCEPTED.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, header_value("0"));
    Ok(resp)
}
