//! Authentication: credentials from docker's config, bearer tokens from the token server a
//! registry names in its challenge (Docker's token authentication spec), HTTP basic where a
//! registry asks for it. Authorization headers are cached per (registry origin, repository,
//! operation): `http://reg` and `https://reg` never share one. They are only ever sent to that
//! origin (see `Repository::send`); the credentials themselves go to that origin and to the
//! token server it names, never to a plain-HTTP token server named by an HTTPS registry.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use reqwest::header::HeaderValue;

use crate::reference::RepoName;

use super::{ClientConfig, ClientError, CredentialStore, Credentials, read_capped};

/// What a request needs access for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Reading.
    Pull,
    /// Writing (includes reading).
    Push,
    /// Listing the registry's repositories (`/v2/_catalog`, `/v1/search`); the repository in
    /// the cache key is a placeholder.
    Catalog,
}

impl Operation {
    fn scope(self, repo: &RepoName) -> String {
        match self {
            Operation::Pull => format!("repository:{}:pull", repo.path()),
            Operation::Push => format!("repository:{}:pull,push", repo.path()),
            Operation::Catalog => "registry:catalog:*".to_owned(),
        }
    }
}

type Key = (String, String, Operation);

pub(crate) struct Authenticator {
    credentials: Option<CredentialStore>,
    fixed: Vec<(String, Credentials)>,
    headers: Mutex<HashMap<Key, HeaderValue>>,
}

/// How much of a login check's error body is read.
const BODY_LIMIT: u64 = 1 << 20;

/// How much of a token server's answer is read: a token is a few kilobytes.
const TOKEN_LIMIT: u64 = 1 << 20;

/// A token server's answer. Docker's spec names the field `token`; OAuth2 servers send
/// `access_token`; either may be there.
#[derive(serde::Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

fn basic(creds: &Credentials) -> HeaderValue {
    let raw = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", creds.username, creds.password));
    // Base64 is always a valid header value.
    HeaderValue::from_str(&format!("Basic {raw}")).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Where the registry at `origin` sends us for a token: its challenge's realm, which must be an
/// http(s) URL, and not plain HTTP when the registry itself is reached over HTTPS (the
/// credentials would otherwise cross the network in the clear).
fn token_realm(origin: &str, realm: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(realm).map_err(|e| format!("the token realm {realm:?}: {e}"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if !origin.starts_with("https:") => Ok(url),
        "http" => Err(format!(
            "the registry names a plain-HTTP token server ({realm}); credentials are not sent there"
        )),
        other => Err(format!("the token realm {realm:?} is not HTTP ({other})")),
    }
}

impl Authenticator {
    pub(crate) fn new(config: &ClientConfig) -> Result<Authenticator, ClientError> {
        Ok(Authenticator {
            credentials: config.credentials.clone(),
            fixed: config.host_credentials.clone(),
            headers: Mutex::new(HashMap::new()),
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

    pub(crate) async fn credentials_for(
        &self,
        host: &str,
    ) -> Result<Option<Credentials>, ClientError> {
        if let Some((_, c)) = self.fixed.iter().find(|(h, _)| h == host) {
            return Ok(Some(c.clone()));
        }
        match &self.credentials {
            Some(store) => store.get(host).await,
            None => Ok(None),
        }
    }

    /// Answers a 401 of the registry at `origin` (`host`, reached with `http`): gets a bearer
    /// token from the token server its challenge names (or settles on basic auth) for the
    /// scope.
    pub(crate) async fn authenticate(
        &self,
        http: &reqwest::Client,
        host: &str,
        origin: &str,
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
        let Some(("bearer", params)) = challenge.and_then(parse_challenge) else {
            // Basic, or no challenge we know: the registry can only mean a user and password.
            let creds = creds.ok_or_else(|| {
                unauthorized(
                    "the registry wants a user name and password; run `wharf login`".into(),
                )
            })?;
            self.remember(origin, repo, op, basic(&creds));
            return Ok(());
        };
        let realm = params
            .get("realm")
            .ok_or_else(|| unauthorized("the registry's bearer challenge names no realm".into()))?;
        let mut url = token_realm(origin, realm).map_err(unauthorized)?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = params.get("service") {
                q.append_pair("service", service);
            }
            q.append_pair("scope", &scope);
            if let Some(c) = &creds {
                q.append_pair("account", &c.username);
            }
        }
        let mut req = http.get(url.clone());
        if let Some(c) = &creds {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = req.send().await.map_err(|source| ClientError::Http {
            url: url.to_string(),
            source,
        })?;
        let status = resp.status();
        let body = read_capped(resp, TOKEN_LIMIT, url.as_str(), "a token answer", false).await?;
        if !status.is_success() {
            let detail = super::error::parse_envelope(&body)
                .into_iter()
                .map(|e| e.message)
                .collect::<Vec<_>>()
                .join("; ");
            return Err(unauthorized(match (detail.is_empty(), &creds) {
                (false, _) => format!("the token server answered {status}: {detail}"),
                (true, Some(_)) => {
                    format!("the token server answered {status}: incorrect username or password?")
                }
                (true, None) => format!(
                    "the token server answered {status}; run `wharf login` if the repository is private"
                ),
            }));
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| unauthorized(format!("the token server's answer is not JSON: {e}")))?;
        let token = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("the token server's answer holds no token".into()))?;
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| unauthorized("the token server sent an unusable token".into()))?;
        self.remember(origin, repo, op, value);
        Ok(())
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
                let realm = token_realm(url, realm).map_err(unauthorized)?;
                let mut q: Vec<(&str, &str)> = vec![("account", creds.username.as_str())];
                if let Some(s) = p.get("service") {
                    q.push(("service", s));
                }
                http.get(realm)
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

    #[test]
    fn an_https_registry_cannot_send_credentials_to_a_plain_http_token_server() {
        let https = "https://reg.example:5000";
        let http = "http://127.0.0.1:5000";
        assert!(token_realm(https, "https://auth.example/token").is_ok());
        let e = token_realm(https, "http://auth.example/token").unwrap_err();
        assert!(e.contains("plain-HTTP token server"), "{e}");
        assert!(token_realm(http, "http://127.0.0.1:5000/token").is_ok());
        assert!(token_realm(http, "file:///etc/passwd").is_err());
        assert!(token_realm(http, "not a url").is_err());
    }
}
