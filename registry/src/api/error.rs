//! The distribution spec's error envelope: `{"errors":[{"code","message","detail"}]}` with the
//! status each code goes with. Every failure a handler can meet becomes one of these; nothing
//! the client sends can turn into a 500 (only the server's own IO can).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::service::ServiceError;

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

impl OciErrorCode {
    /// The code as it is written in the envelope.
    pub fn as_str(self) -> &'static str {
        match self {
            OciErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            OciErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            OciErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            OciErrorCode::DigestInvalid => "DIGEST_INVALID",
            OciErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            OciErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            OciErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            OciErrorCode::NameInvalid => "NAME_INVALID",
            OciErrorCode::NameUnknown => "NAME_UNKNOWN",
            OciErrorCode::SizeInvalid => "SIZE_INVALID",
            OciErrorCode::Unauthorized => "UNAUTHORIZED",
            OciErrorCode::Denied => "DENIED",
            OciErrorCode::Unsupported => "UNSUPPORTED",
            OciErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            OciErrorCode::Unknown => "UNKNOWN",
        }
    }

    /// The status the code is sent with unless a handler knows better.
    pub fn status(self) -> StatusCode {
        match self {
            OciErrorCode::BlobUnknown
            | OciErrorCode::BlobUploadUnknown
            | OciErrorCode::ManifestUnknown
            | OciErrorCode::NameUnknown => StatusCode::NOT_FOUND,
            OciErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            OciErrorCode::Denied => StatusCode::FORBIDDEN,
            OciErrorCode::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            OciErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            OciErrorCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn message(self) -> &'static str {
        match self {
            OciErrorCode::BlobUnknown => "blob unknown to registry",
            OciErrorCode::BlobUploadInvalid => "blob upload invalid",
            OciErrorCode::BlobUploadUnknown => "blob upload unknown to registry",
            OciErrorCode::DigestInvalid => "provided digest did not match uploaded content",
            OciErrorCode::ManifestBlobUnknown => "manifest references a blob unknown to registry",
            OciErrorCode::ManifestInvalid => "manifest invalid",
            OciErrorCode::ManifestUnknown => "manifest unknown",
            OciErrorCode::NameInvalid => "invalid repository name",
            OciErrorCode::NameUnknown => "repository name not known to registry",
            OciErrorCode::SizeInvalid => "provided length did not match content length",
            OciErrorCode::Unauthorized => "authentication required",
            OciErrorCode::Denied => "requested access to the resource is denied",
            OciErrorCode::Unsupported => "the operation is unsupported",
            OciErrorCode::TooManyRequests => "too many requests",
            OciErrorCode::Unknown => "unknown error",
        }
    }
}

/// An error response: a code, its status, a detail for the client, and extra headers (a 416
/// carries the upload's `Range`).
#[derive(Debug)]
pub struct ApiError {
    code: OciErrorCode,
    status: StatusCode,
    detail: String,
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    /// `code` with its usual status and `detail`.
    pub fn new(code: OciErrorCode, detail: impl Into<String>) -> ApiError {
        ApiError {
            code,
            status: code.status(),
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    /// The same error sent with another status.
    pub fn with_status(mut self, status: StatusCode) -> ApiError {
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
        let body = json!({
            "errors": [{
                "code": self.code.as_str(),
                "message": self.code.message(),
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
        let detail = e.to_string();
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
            ServiceError::Storage(_) | ServiceError::Metadata(_) => {
                tracing::error!(error = %detail, "request failed on the server's side");
                ApiError::new(C::Unknown, "internal error; see the server's log")
            }
        }
    }
}
