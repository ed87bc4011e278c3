//! The distribution spec's error envelope: `{"errors":[{"code","message","detail"}]}` with the
//! status each code goes with. Every failure a handler can meet becomes one of these; nothing
//! the client sends can turn into a 500 (only the server's own IO can).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use wharf_common::error::Chain;

use crate::auth::Denial;
use crate::service::{NameError, ServiceError};

/// The error codes of the distribution spec (and `UNSUPPORTED`/`TOOMANYREQUESTS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OciErrorCode {
    /// Blob unknown to registry.
    BlobUnknown,
    /// Blob upload is invalid.
    BlobUploadInvalid,
    /// Blob upload is unknown to registry.
    BlobUploadUnknown,
    /// Provided digest did not match uploaded content.
    DigestInvalid,
    /// Manifest references a manifest or blob unknown to registry.
    ManifestBlobUnknown,
    /// Manifest invalid.
    ManifestInvalid,
    /// Manifest unknown to registry.
    ManifestUnknown,
    /// Invalid repository name.
    NameInvalid,
    /// Repository name not known to registry.
    NameUnknown,
    /// Provided length did not match content length.
    SizeInvalid,
    /// Authentication required.
    Unauthorized,
    /// Requested access to the resource is denied.
    Denied,
    /// The operation is unsupported.
    Unsupported,
    /// Too many requests.
    TooManyRequests,
    /// The server failed on its side (distribution's `UNKNOWN`).
    Unknown,
}

/// One row of the error register: what a code is called on the wire, its message, and the
/// status it goes with. Modelled on distribution's `errcode.Register`.
#[derive(Clone, Copy, Debug)]
pub struct Descriptor {
    /// The code as it is written in the envelope.
    pub code: &'static str,
    /// The message sent with it.
    pub message: &'static str,
    /// The status it is sent with unless the failure calls for another.
    pub status: StatusCode,
}

impl OciErrorCode {
    /// The code's row of the register: the one place a code's wire name, message and status
    /// are written.
    pub const fn descriptor(self) -> Descriptor {
        use OciErrorCode as C;
        use StatusCode as S;
        let (code, message, status) = match self {
            C::BlobUnknown => ("BLOB_UNKNOWN", "blob unknown to registry", S::NOT_FOUND),
            C::BlobUploadInvalid => ("BLOB_UPLOAD_INVALID", "blob upload invalid", S::BAD_REQUEST),
            C::BlobUploadUnknown => (
                "BLOB_UPLOAD_UNKNOWN",
                "blob upload unknown to registry",
                S::NOT_FOUND,
            ),
            C::DigestInvalid => (
                "DIGEST_INVALID",
                "provided digest did not match uploaded content",
                S::BAD_REQUEST,
            ),
            C::ManifestBlobUnknown => (
                "MANIFEST_BLOB_UNKNOWN",
                "manifest references a blob unknown to registry",
                S::BAD_REQUEST,
            ),
            C::ManifestInvalid => ("MANIFEST_INVALID", "manifest invalid", S::BAD_REQUEST),
            C::ManifestUnknown => ("MANIFEST_UNKNOWN", "manifest unknown", S::NOT_FOUND),
            C::NameInvalid => ("NAME_INVALID", "invalid repository name", S::BAD_REQUEST),
            C::NameUnknown => (
                "NAME_UNKNOWN",
                "repository name not known to registry",
                S::NOT_FOUND,
            ),
            C::SizeInvalid => (
                "SIZE_INVALID",
                "provided length did not match content length",
                S::BAD_REQUEST,
            ),
            C::Unauthorized => ("UNAUTHORIZED", "authentication required", S::UNAUTHORIZED),
            C::Denied => (
                "DENIED",
                "requested access to the resource is denied",
                S::FORBIDDEN,
            ),
            C::Unsupported => (
                "UNSUPPORTED",
                "the operation is unsupported",
                S::METHOD_NOT_ALLOWED,
            ),
            C::TooManyRequests => ("TOOMANYREQUESTS", "too many requests", S::TOO_MANY_REQUESTS),
            C::Unknown => ("UNKNOWN", "unknown error", S::INTERNAL_SERVER_ERROR),
        };
        Descriptor {
            code,
            message,
            status,
        }
    }
}

/// What is wrong with a request itself, found before the service is asked: its path, method,
/// headers or query. Which code and status each gets is decided in one place, the `From`
/// conversion below; handlers only say what they found.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No endpoint at this path.
    #[error("no such endpoint: {0}")]
    NoEndpoint(String),
    /// The endpoint does not take this method.
    #[error("{0} is not supported on this endpoint")]
    Method(axum::http::Method),
    /// A repository name in the path breaks the grammar.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The `from=` of a mount breaks the name grammar.
    #[error("{0} in from=")]
    MountFrom(NameError),
    /// A digest in the path or query does not parse.
    #[error(transparent)]
    Digest(#[from] wharf_common::digest::DigestError),
    /// A query string that does not parse.
    #[error("the query string {0:?} does not parse")]
    Query(String),
    /// Completing an upload without `?digest=`.
    #[error("completing an upload needs ?digest=<digest>")]
    NoDigest,
    /// A manifest pushed under a tag that breaks the tag grammar.
    #[error("invalid tag {0:?}: [A-Za-z0-9_] then up to 127 of [A-Za-z0-9_.-]")]
    Tag(String),
    /// The manifest body broke off.
    #[error("reading the manifest: {0}")]
    ManifestBody(String),
    /// `Content-Length` is not a number.
    #[error("Content-Length {0:?} is not a number")]
    ContentLength(String),
    /// `Content-Range` is not `<start>-<end>`.
    #[error("Content-Range {0:?} is not <start>-<end>")]
    ContentRange(String),
    /// `Content-Range` and `Content-Length` disagree.
    #[error("Content-Range {range:?} spans {span} bytes but Content-Length is {length}")]
    RangeLength {
        /// The header.
        range: String,
        /// The bytes it spans.
        span: u64,
        /// `Content-Length`.
        length: u64,
    },
    /// A `Range` outside the blob.
    #[error("range {range} is outside the blob's {size} bytes")]
    Unsatisfiable {
        /// The header.
        range: String,
        /// The blob's size.
        size: u64,
    },
    /// `n=` is not a number.
    #[error("n={0:?} is not a number of entries")]
    PageSize(String),
}

/// An error response: a code, its status, a detail for the client, and extra headers (a 416
/// carries the upload's `Range`). Made only by the conversions below, from a [`RequestError`]
/// or a [`ServiceError`]; a handler adds headers, never a code.
#[derive(Debug)]
pub struct ApiError {
    code: OciErrorCode,
    status: StatusCode,
    detail: String,
    headers: Vec<(header::HeaderName, HeaderValue)>,
    /// A failure on the server's side, logged when the response is made; the client gets
    /// only "internal error".
    internal: Option<String>,
}

impl ApiError {
    fn new(code: OciErrorCode, detail: impl Into<String>) -> ApiError {
        ApiError {
            code,
            status: code.descriptor().status,
            detail: detail.into(),
            headers: Vec::new(),
            internal: None,
        }
    }

    fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    /// Adds a header to the response.
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> ApiError {
        self.headers.push((name, value));
        self
    }

    /// The code.
    pub fn code(&self) -> OciErrorCode {
        self.code
    }

    /// The status it is sent with.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(e) = &self.internal {
            tracing::error!(error = %e, "request failed on the server's side");
        }
        let d = self.code.descriptor();
        let body = json!({
            "errors": [{
                "code": d.code,
                "message": d.message,
                "detail": self.detail,
            }]
        })
        .to_string();
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            body,
        )
            .into_response();
        for (k, v) in self.headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        use OciErrorCode as C;
        let detail = Chain(&e).to_string();
        match e {
            ServiceError::BlobUnknown(_) => ApiError::new(C::BlobUnknown, detail),
            ServiceError::ManifestUnknown(_) => ApiError::new(C::ManifestUnknown, detail),
            ServiceError::NameUnknown(_) => ApiError::new(C::NameUnknown, detail),
            ServiceError::UploadUnknown(_) => ApiError::new(C::BlobUploadUnknown, detail),
            ServiceError::DigestMismatch { .. } | ServiceError::BadDigest(_) => {
                ApiError::new(C::DigestInvalid, detail)
            }
            ServiceError::SizeMismatch { .. } => ApiError::new(C::SizeInvalid, detail),
            ServiceError::UploadOutOfOrder { offset, .. } => {
                let range = if offset == 0 {
                    "0-0".to_owned()
                } else {
                    format!("0-{}", offset - 1)
                };
                let mut err = ApiError::new(C::BlobUploadInvalid, detail)
                    .with_status(StatusCode::RANGE_NOT_SATISFIABLE);
                if let Ok(v) = HeaderValue::from_str(&range) {
                    err = err.with_header(header::RANGE, v);
                }
                err
            }
            ServiceError::ManifestInvalid(_) => ApiError::new(C::ManifestInvalid, detail),
            ServiceError::ManifestBlobUnknown(_) => ApiError::new(C::ManifestBlobUnknown, detail),
            ServiceError::TooLarge { .. } => {
                ApiError::new(C::SizeInvalid, detail).with_status(StatusCode::PAYLOAD_TOO_LARGE)
            }
            ServiceError::ClientGone(_) => ApiError::new(C::BlobUploadInvalid, detail),
            ServiceError::DeletesDisabled => ApiError::new(C::Unsupported, detail),
            // No code of the spec says it; 507 does, and the detail says what to do.
            ServiceError::DiskFull(_) => {
                ApiError::new(C::Unknown, detail).with_status(StatusCode::INSUFFICIENT_STORAGE)
            }
            // As zot answers it: the method is not allowed on this blob now.
            ServiceError::BlobReferenced { .. } => {
                ApiError::new(C::Denied, detail).with_status(StatusCode::METHOD_NOT_ALLOWED)
            }
            ServiceError::MirrorReadOnly { .. } => ApiError::new(C::Denied, detail),
            ServiceError::Upstream {
                throttled: true,
                retry_after,
                ..
            } => {
                let err = ApiError::new(C::TooManyRequests, detail);
                match retry_after.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
                    Some(v) => err.with_header(header::RETRY_AFTER, v),
                    None => err,
                }
            }
            // No code of the spec says it; 503 does.
            ServiceError::Upstream { .. } => {
                ApiError::new(C::Unknown, detail).with_status(StatusCode::SERVICE_UNAVAILABLE)
            }
            ServiceError::MirrorSetup { .. } => ApiError {
                internal: Some(detail),
                ..ApiError::new(C::Unknown, "internal error; see the server's log")
            },
            ServiceError::Storage(_) | ServiceError::Metadata(_) => ApiError {
                internal: Some(detail),
                ..ApiError::new(C::Unknown, "internal error; see the server's log")
            },
        }
    }
}

impl From<Denial> for ApiError {
    fn from(d: Denial) -> ApiError {
        use OciErrorCode as C;
        match d {
            Denial::Unauthorized { challenge, detail } => {
                let err = ApiError::new(C::Unauthorized, detail);
                match HeaderValue::from_str(&challenge) {
                    Ok(v) => err.with_header(header::WWW_AUTHENTICATE, v),
                    Err(_) => err,
                }
            }
            Denial::Denied(detail) => ApiError::new(C::Denied, detail),
            Denial::Throttled(wait) => {
                let secs = wait.as_secs().max(1);
                ApiError::new(
                    C::TooManyRequests,
                    format!("too many failed logins; try again in {secs}s"),
                )
                .with_header(header::RETRY_AFTER, HeaderValue::from(secs))
            }
        }
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> ApiError {
        use OciErrorCode as C;
        let detail = Chain(&e).to_string();
        match e {
            RequestError::NoEndpoint(_) => {
                ApiError::new(C::Unsupported, detail).with_status(StatusCode::NOT_FOUND)
            }
            RequestError::Method(_) => ApiError::new(C::Unsupported, detail),
            RequestError::Name(_) | RequestError::MountFrom(_) => {
                ApiError::new(C::NameInvalid, detail)
            }
            RequestError::Digest(_) | RequestError::NoDigest => {
                ApiError::new(C::DigestInvalid, detail)
            }
            RequestError::Tag(_) | RequestError::ManifestBody(_) => {
                ApiError::new(C::ManifestInvalid, detail)
            }
            RequestError::ContentLength(_) => ApiError::new(C::SizeInvalid, detail),
            RequestError::ContentRange(_) => ApiError::new(C::BlobUploadInvalid, detail)
                .with_status(StatusCode::RANGE_NOT_SATISFIABLE),
            RequestError::RangeLength { .. } => {
                ApiError::new(C::SizeInvalid, detail).with_status(StatusCode::RANGE_NOT_SATISFIABLE)
            }
            RequestError::Unsatisfiable { size, .. } => {
                let err = ApiError::new(C::BlobUnknown, detail)
                    .with_status(StatusCode::RANGE_NOT_SATISFIABLE);
                match HeaderValue::from_str(&format!("bytes */{size}")) {
                    Ok(v) => err.with_header(header::CONTENT_RANGE, v),
                    Err(_) => err,
                }
            }
            // Distribution answers PAGINATION_NUMBER_INVALID, which is not among the spec's
            // codes; clients only need the 400.
            RequestError::Query(_) => {
                ApiError::new(C::Unsupported, detail).with_status(StatusCode::BAD_REQUEST)
            }
            RequestError::PageSize(_) => {
                ApiError::new(C::Unsupported, detail).with_status(StatusCode::BAD_REQUEST)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_register_has_one_row_per_code() {
        use OciErrorCode as C;
        let all = [
            C::BlobUnknown,
            C::BlobUploadInvalid,
            C::BlobUploadUnknown,
            C::DigestInvalid,
            C::ManifestBlobUnknown,
            C::ManifestInvalid,
            C::ManifestUnknown,
            C::NameInvalid,
            C::NameUnknown,
            C::SizeInvalid,
            C::Unauthorized,
            C::Denied,
            C::Unsupported,
            C::TooManyRequests,
            C::Unknown,
        ];
        let mut names: Vec<&str> = all.iter().map(|c| c.descriptor().code).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        for c in all {
            let d = c.descriptor();
            assert!(d.code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'));
            assert!(!d.message.is_empty());
            assert!(d.status.is_client_error() || c == C::Unknown, "{c:?}");
        }
        // A request's own faults and the service's are 4xx with the register's codes; only
        // the server's failures are 5xx, and they say nothing of why to the client.
        let e = ApiError::from(RequestError::ContentRange("x".into()));
        assert_eq!((e.code(), e.status().as_u16()), (C::BlobUploadInvalid, 416));
        let e = ApiError::from(RequestError::Unsatisfiable {
            range: "bytes=9-".into(),
            size: 3,
        });
        assert_eq!((e.code(), e.status().as_u16()), (C::BlobUnknown, 416));
        let resp = e.into_response();
        assert_eq!(resp.headers()[header::CONTENT_RANGE], "bytes */3");
    }
}
