//! Errors of the registry client, and the OCI error envelope registries answer with.

use serde::Deserialize;

use crate::digest::Digest;

/// One entry of a registry's `{"errors": [...]}` envelope.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct RegistryErrorEntry {
    /// The spec's code, e.g. `MANIFEST_UNKNOWN`.
    pub code: String,
    /// The registry's message.
    #[serde(default)]
    pub message: String,
    /// What the registry adds: any JSON; a string is shown with the message.
    #[serde(default)]
    pub detail: serde_json::Value,
}

#[derive(Deserialize)]
struct Envelope {
    errors: Vec<RegistryErrorEntry>,
}

/// Parses an error body, returning its entries (empty when it is not an envelope).
pub fn parse_envelope(body: &[u8]) -> Vec<RegistryErrorEntry> {
    serde_json::from_slice::<Envelope>(body)
        .map(|e| e.errors)
        .unwrap_or_default()
}

fn describe(entries: &[RegistryErrorEntry], body_text: &str) -> String {
    if entries.is_empty() {
        let t = body_text.trim();
        if t.is_empty() {
            "no details".to_owned()
        } else {
            t.chars().take(300).collect()
        }
    } else {
        entries
            .iter()
            .map(|e| {
                let mut text = if e.message.is_empty() {
                    e.code.clone()
                } else {
                    format!("{}: {}", e.code, e.message)
                };
                if let Some(d) = e
                    .detail
                    .as_str()
                    .filter(|d| !d.is_empty() && *d != e.message)
                {
                    text.push_str(&format!(" ({})", d.chars().take(300).collect::<String>()));
                }
                text
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Errors of talking to a registry. Each names the URL, repository or digest involved.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request could not be sent or its response read.
    #[error("request to {url} failed")]
    Http {
        /// The URL.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The registry answered with an error status.
    #[error("{method} {url}: {status} ({detail})")]
    Status {
        /// The method.
        method: &'static str,
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The registry's error entries.
        errors: Vec<RegistryErrorEntry>,
        /// A one-line description of them.
        detail: String,
    },
    /// Authentication was refused or is impossible.
    #[error("unauthorized: authentication to {host} for {scope} failed ({detail})")]
    Unauthorized {
        /// The registry.
        host: String,
        /// The scope asked for.
        scope: String,
        /// The reason given.
        detail: String,
    },
    /// The manifest or blob does not exist.
    #[error("{what} not found in {repo} on {host}")]
    NotFound {
        /// What was looked for.
        what: String,
        /// The repository.
        repo: String,
        /// The registry.
        host: String,
    },
    /// The registry answered something that breaks the protocol.
    #[error("invalid response from {url}: {reason}")]
    Protocol {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A manifest whose bytes do not match its digest.
    #[error("manifest digest mismatch from {url}: expected {expected}, content hashes to {actual}")]
    ManifestDigest {
        /// The URL.
        url: String,
        /// The digest asked for or announced.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// Reading or writing docker's credential file.
    #[error("credentials file {path}: {reason}")]
    CredentialsFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A credential helper failed.
    #[error("credential helper docker-credential-{helper}: {reason}")]
    Helper {
        /// The helper's name.
        helper: String,
        /// What went wrong.
        reason: String,
    },
    /// The HTTP client could not be set up.
    #[error("setting up the HTTP client")]
    Setup(#[source] reqwest::Error),
}

impl ClientError {
    /// Builds a status error from a response body.
    pub fn status(method: &'static str, url: &str, status: u16, body: &[u8]) -> ClientError {
        let errors = parse_envelope(body);
        let detail = describe(&errors, &String::from_utf8_lossy(body));
        ClientError::Status {
            method,
            url: url.to_owned(),
            status,
            errors,
            detail,
        }
    }

    /// Whether this is a transient failure worth retrying.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Http { .. } => true,
            ClientError::Status { status, .. } => {
                matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
            }
            _ => false,
        }
    }
}
