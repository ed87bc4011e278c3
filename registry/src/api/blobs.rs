//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`, with `Range`.

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ApiError, Req, RequestError, header_value, parse_digest};
use crate::metrics::MirrorMetric;
use crate::service::mirror::{MirroredBlob, Target};
use crate::service::{BlobFound, Registry, Repository, ServiceError};

/// Where a blob's bytes come from.
enum Source<'a> {
    /// Stored here.
    Found(BlobFound),
    /// Kept by a mirror (counted as served from its cache).
    Kept(BlobFound, &'a str),
    /// On its way from a mirror's upstream.
    Flight(std::sync::Arc<crate::service::mirror::Flight>),
}

/// A byte range to serve, inclusive.
#[derive(Debug, PartialEq)]
enum Wanted {
    All,
    Part(u64, u64),
    Unsatisfiable,
}

/// Reads a `Range: bytes=…` header against a blob of `size` bytes. Several ranges, or a unit
/// other than bytes, are answered with the whole blob, as HTTP allows.
fn wanted(range: Option<&str>, size: u64) -> Wanted {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return Wanted::All;
    };
    if spec.contains(',') {
        return Wanted::All;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Wanted::Unsatisfiable;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        (true, false) => b.parse::<u64>().ok().map(|n| {
            // The last n bytes.
            (size.saturating_sub(n), size.saturating_sub(1), n > 0)
        }),
        (false, _) => a.parse::<u64>().ok().and_then(|start| {
            let end = if b.is_empty() {
                size.saturating_sub(1)
            } else {
                b.parse::<u64>().ok()?.min(size.saturating_sub(1))
            };
            Some((
                start,
                end,
                start < size && b.parse::<u64>().map_or(true, |e| e >= start),
            ))
        }),
        (true, true) => None,
    };
    match parsed {
        Some((s, e, true)) if size > 0 && s <= e => Wanted::Part(s, e),
        _ => Wanted::Unsatisfiable,
    }
}

pub async fn get(
    reg: &Registry,
    repo: &Repository,
    digest: &str,
    req: &Req,
    mirrored: Option<&Target>,
) -> Result<Response, ApiError> {
    let digest = parse_digest(digest)?;
    let head = req.method == axum::http::Method::HEAD;
    let local = match mirrored {
        Some(t) if t.exclusive => None,
        None => Some(reg.blob(repo, &digest).await?),
        // Local first; the default upstream's when nothing local has it.
        Some(_) => match reg.blob(repo, &digest).await {
            Err(ServiceError::BlobUnknown(_)) => None,
            found => Some(found?),
        },
    };
    let source = match (local, mirrored) {
        (Some(found), _) => Source::Found(found),
        // A HEAD of a name that is local first is a push asking whether to upload: only what
        // is here answers it.
        (None, Some(t)) if head && !t.exclusive => {
            return Err(ServiceError::BlobUnknown(digest).into());
        }
        (None, Some(t)) if head => Source::Found(reg.mirrored_blob_size(t, &digest).await?),
        (None, Some(t)) => match reg.mirrored_blob(t, &digest).await? {
            MirroredBlob::Kept(found) => Source::Kept(found, t.upstream.name()),
            MirroredBlob::Fetching(f) => Source::Flight(f),
        },
        (None, None) => return Err(ServiceError::BlobUnknown(digest).into()),
    };
    let size = match &source {
        Source::Found(BlobFound::Stored(s)) | Source::Kept(BlobFound::Stored(s), _) => *s,
        Source::Found(BlobFound::Manifest(b)) | Source::Kept(BlobFound::Manifest(b), _) => {
            b.len() as u64
        }
        Source::Flight(f) => f.size,
    };
    let (status, start, len) = match wanted(req.header(header::RANGE), size) {
        Wanted::All => (StatusCode::OK, 0, size),
        Wanted::Part(s, e) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        Wanted::Unsatisfiable => {
            return Err(RequestError::Unsatisfiable {
                range: req.header(header::RANGE).unwrap_or("").to_owned(),
                size,
            }
            .into());
        }
    };
    let body = if head || len == 0 {
        Body::empty()
    } else {
        let found = match source {
            Source::Found(f) => f,
            Source::Kept(f, upstream) => {
                reg.metrics()
                    .mirror(MirrorMetric::CachedBytesServed, upstream, 0, len);
                f
            }
            Source::Flight(f) => {
                return Ok(blob_response(
                    status,
                    Body::from_stream(reg.read_flight(&f, start, len)),
                    &digest,
                    (start, len, size),
                ));
            }
        };
        match found {
            BlobFound::Stored(_) => Body::from_stream(reg.read_blob(&digest, start, len).await?),
            BlobFound::Manifest(b) => {
                let (s, e) = (
                    usize::try_from(start).unwrap_or(0),
                    usize::try_from(start + len).unwrap_or(0),
                );
                Body::from(b.slice(s..e))
            }
        }
    };
    Ok(blob_response(status, body, &digest, (start, len, size)))
}

/// A blob's response: `len` bytes from `start` of `size`.
fn blob_response(
    status: StatusCode,
    body: Body,
    digest: &wharf_common::digest::Digest,
    (start, len, size): (u64, u64, u64),
) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, header_value(&len.to_string()));
    h.insert(
        header::CONTENT_TYPE,
        header_value("application/octet-stream"),
    );
    h.insert("Docker-Content-Digest", header_value(digest.as_str()));
    h.insert(header::ETAG, header_value(&format!("\"{digest}\"")));
    h.insert(header::ACCEPT_RANGES, header_value("bytes"));
    h.insert(header::CACHE_CONTROL, header_value("max-age=31536000"));
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            header_value(&format!("bytes {start}-{}/{size}", start + len - 1)),
        );
    }
    resp
}

pub async fn delete(reg: &Registry, repo: &Repository, digest: &str) -> Result<Response, ApiError> {
    let digest = parse_digest(digest)?;
    reg.delete_blob(repo, &digest).await?;
    let mut resp = StatusCode::ACCEPTED.into_response();
    resp.headers_mut()
        .insert("Docker-Content-Digest", header_value(digest.as_str()));
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, header_value("0"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(wanted(None, 10), Wanted::All);
        assert_eq!(wanted(Some("bytes=0-4"), 10), Wanted::Part(0, 4));
        assert_eq!(wanted(Some("bytes=5-"), 10), Wanted::Part(5, 9));
        assert_eq!(wanted(Some("bytes=5-100"), 10), Wanted::Part(5, 9));
        assert_eq!(wanted(Some("bytes=-3"), 10), Wanted::Part(7, 9));
        assert_eq!(wanted(Some("bytes=10-"), 10), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=4-2"), 10), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=x-2"), 10), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=0-0"), 0), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=0-1,4-5"), 10), Wanted::All);
        assert_eq!(wanted(Some("items=0-1"), 10), Wanted::All);
    }
}
