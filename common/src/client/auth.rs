//! Authentication: credentials from docker's config, bearer tokens through oci-client's token
//! flow, HTTP basic where a registry asks for it. Authorization headers are cached per
//! (registry origin, repository, operation): `http://reg` and `https://reg` never share one.
//! They are only ever sent to that origin (see `Repository::send`).

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use oci_client::RegistryOperation;
use oci_client::client::{ClientConfig as OciConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use reqwest::header::HeaderValue;

use crate::reference::RepoName;

use super::{Client, ClientConfig, ClientError, CredentialStore, Credentials, read_capped};

/// What a request needs access for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Reading.
    Pull,
    /// Writing (includes reading).
    Push,
}

impl Operation {
    fn scope(self, repo: &RepoName) -> String {
        match self {
            Operation::Pull => format!("repository:{}:pull", repo.path()),
            Operation::Push => format!("repository:{}:pull,push", repo.path()),
        }
    }
}

type Key = (String, String, Operation);

pub(crate) struct Authenticator {
    credentials: Option<CredentialStore>,
    headers: Mutex<HashMap<Key, HeaderValue>>,
    oci: Mutex<HashMap<(String, bool, bool), oci_client::Client>>,
}

/// How much of a login check's error body is read.
const BODY_LIMIT: u64 = 1 << 20;

fn basic(creds: &Credentials) -> HeaderValue {
    let raw = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", creds.username, creds.password));
    // Base64 is always a valid header value.
    HeaderValue::from_str(&format!("Basic {raw}")).unwrap_or_else(|_| HeaderValue::from_static(""))
}

impl Authenticator {
    pub(crate) fn new(config: &ClientConfig) -> Result<Authenticator, ClientError> {
        Ok(Authenticator {
            credentials: config.credentials.clone(),
            headers: Mutex::new(HashMap::new()),
            oci: Mutex::new(HashMap::new()),
        })
    }

    /// A cached Authorization header for a request to the registry `origin`, if one was
    /// obtained before.
    pub(crate) fn cached(
        &self,
        origin: &str,
        repo: &RepoName,
        op: Operation,
    ) -> Option<HeaderValue> {
        let map = self.headers.lock().ok()?;
        let key = |op| (origin.to_owned(), repo.path().to_owned(), op);
        map.get(&key(op))
            .or_else(|| {
                (op == Operation::Pull)
                    .then(|| map.get(&key(Operation::Push)))
                    .flatten()
            })
            .cloned()
    }

    fn remember(&self, origin: &str, repo: &RepoName, op: Operation, value: HeaderValue) {
        if let Ok(mut map) = self.headers.lock() {
            map.insert((origin.to_owned(), repo.path().to_owned(), op), value);
        }
    }

    fn oci_client(&self, host: &str, plain_http: bool, accept_invalid: bool) -> oci_client::Client {
        let mut map = match self.oci.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.entry((host.to_owned(), plain_http, accept_invalid))
            .or_insert_with(|| {
                let protocol = if plain_http {
                    ClientProtocol::Http
                } else {
                    ClientProtocol::Https
                };
                oci_client::Client::new(OciConfig {
                    protocol,
                    accept_invalid_certificates: accept_invalid,
                    connect_timeout: Some(std::time::Duration::from_secs(30)),
                    ..Default::default()
                })
            })
            .clone()
    }

    async fn credentials_for(&self, host: &str) -> Result<Option<Credentials>, ClientError> {
        match &self.credentials {
            Some(store) => store.get(host).await,
            None => Ok(None),
        }
    }

    /// Answers a 401 of the registry at `origin` (`host`, over plain HTTP or not): gets a
    /// bearer token (or settles on basic auth) for the scope.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn authenticate(
        &self,
        _client: &Client,
        host: &str,
        origin: &str,
        (plain_http, accept_invalid): (bool, bool),
        repo: &RepoName,
        op: Operation,
        challenge: Option<&str>,
    ) -> Result<(), ClientError> {
        let creds = self.credentials_for(host).await?;
        let scope = op.scope(repo);
        let unauthorized = |detail: String| ClientError::Unauthorized {
            host: host.to_owned(),
            scope: scope.clone(),
            detail,
        };
        let is_basic =
            challenge.is_some_and(|c| c.trim_start().to_ascii_lowercase().starts_with("basic"));
        if is_basic {
            let creds = creds.ok_or_else(|| {
                unauthorized(
                    "the registry wants a user name and password; run `wharf login`".into(),
                )
            })?;
            self.remember(origin, repo, op, basic(&creds));
            return Ok(());
        }
        let reference = oci_client::Reference::with_tag(
            host.to_owned(),
            repo.path().to_owned(),
            "latest".to_owned(),
        );
        let registry_auth = match &creds {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        let operation = match op {
            Operation::Pull => RegistryOperation::Pull,
            Operation::Push => RegistryOperation::Push,
        };
        let oci = self.oci_client(host, plain_http, accept_invalid);
        match oci.auth(&reference, &registry_auth, operation).await {
            Ok(Some(token)) => {
                let value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| unauthorized("the token server sent an unusable token".into()))?;
                self.remember(origin, repo, op, value);
                Ok(())
            }
            Ok(None) => match creds {
                Some(c) => {
                    self.remember(origin, repo, op, basic(&c));
                    Ok(())
                }
                None => Err(unauthorized(
                    "authentication required; run `wharf login`".into(),
                )),
            },
            Err(e) => Err(unauthorized(e.to_string())),
        }
    }

    /// Verifies credentials the way `docker login` does: against `/v2/` directly (basic), or
    /// against the token server the registry names (bearer).
    pub(crate) async fn check_login(
        &self,
        http: &reqwest::Client,
        url: &str,
        host: &str,
        creds: &Credentials,
    ) -> Result<(), ClientError> {
        let send_err = |source| ClientError::Http {
            url: url.to_owned(),
            source,
        };
        let unauthorized = |detail: String| ClientError::Unauthorized {
            host: host.to_owned(),
            scope: "login".into(),
            detail,
        };
        let resp = http.get(url).send().await.map_err(send_err)?;
        if resp.status().is_success() {
            return Ok(());
        }
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
            let status = resp.status().as_u16();
            let body = read_capped(resp, BODY_LIMIT, url, "an error body", true)
                .await
                .unwrap_or_default();
            return Err(ClientError::status("GET", url, status, &body));
        }
        let challenge = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let params = parse_challenge(&challenge);
        let check = match params {
            Some(("bearer", p)) => {
                let realm = p
                    .get("realm")
                    .ok_or_else(|| unauthorized("bearer challenge without realm".into()))?;
                let mut q: Vec<(&str, &str)> = vec![("account", creds.username.as_str())];
                if let Some(s) = p.get("service") {
                    q.push(("service", s));
                }
                http.get(realm.as_str())
                    .query(&q)
                    .basic_auth(&creds.username, Some(&creds.password))
                    .send()
                    .await
            }
            _ => {
                http.get(url)
                    .basic_auth(&creds.username, Some(&creds.password))
                    .send()
                    .await
            }
        }
        .map_err(send_err)?;
        if check.status().is_success() {
            Ok(())
        } else {
            let status = check.status().as_u16();
            let body = read_capped(check, BODY_LIMIT, url, "an error body", true)
                .await
                .unwrap_or_default();
            let detail = super::error::parse_envelope(&body)
                .into_iter()
                .map(|e| e.message)
                .collect::<Vec<_>>()
                .join("; ");
            Err(unauthorized(if detail.is_empty() {
                format!("HTTP {status}: incorrect username or password")
            } else {
                detail
            }))
        }
    }
}

/// Splits `Scheme k="v",k2="v2"` into the lower-cased scheme and its parameters.
fn parse_challenge(header: &str) -> Option<(&'static str, HashMap<String, String>)> {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "bearer" => "bearer",
        "basic" => "basic",
        _ => return None,
    };
    let mut params = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let Some((k, after)) = s.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (q[..end].to_owned(), q.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.insert(k, v);
        s = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some((scheme, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let (s, p) = parse_challenge(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#).unwrap();
        assert_eq!(s, "bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/busybox:pull");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(s, "basic");
        assert_eq!(p["realm"], "Registry Realm");
        assert!(parse_challenge("Negotiate abc").is_none());
    }
}
