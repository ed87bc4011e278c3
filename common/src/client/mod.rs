//! The registry client: the OCI Distribution API as docker speaks it, over `reqwest`, with
//! one client per registry host (its TLS set up as docker does, `tls.rs`), bearer tokens and
//! basic auth answered in `auth.rs`, and docker's `config.json` and credential helpers read in
//! `credentials.rs`. See ARCHITECTURE.md for why none of it is a registry-client crate.

mod auth;
mod credentials;
mod error;
mod tls;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use reqwest::header::{
    ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderValue, LOCATION, RANGE,
};
use reqwest::{Method, StatusCode};

use crate::blob::{BlobStream, Fetched};
use crate::digest::Digest;
use crate::image::{BlobRef, detect_media_type};
use crate::media_type::MANIFEST_ACCEPT;
use crate::reference::{RepoName, api_host};

pub use auth::Operation;
pub use credentials::{CredentialStore, Credentials, DOCKER_HUB_KEY, server_key};
pub use error::{ClientError, RegistryErrorEntry, parse_envelope};

/// Manifests larger than this are refused while they are read, whatever `Content-Length`
/// says (4 MiB, as skopeo and containerd, and the distribution spec's servers).
pub const MANIFEST_LIMIT: u64 = 4 << 20;
/// How much of an error body is read (the rest is dropped).
const ERROR_BODY_LIMIT: u64 = 64 << 10;
/// How many times a blob download is resumed without any progress in between.
const BLOB_RETRIES: u32 = 5;

/// How the client behaves.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Registries reached over plain HTTP besides localhost and 127.0.0.0/8.
    pub insecure_registries: Vec<String>,
    /// Where credentials come from (`None`: anonymous only).
    pub credentials: Option<CredentialStore>,
    /// Upload in chunks of this size instead of one monolithic PUT.
    pub chunk_size: Option<u64>,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// A blob download that delivers nothing for this long is resumed with `Range`.
    pub stall_timeout: Duration,
    /// Verify registries' certificates (`--tls-verify=false` turns it off for every registry;
    /// insecure ones are never verified).
    pub tls_verify: bool,
    /// CA certificates (PEM files) to trust for every registry (`--ca-cert`).
    pub ca_certs: Vec<std::path::PathBuf>,
    /// Per-host certificate directories, first found wins (docker's and podman's `certs.d`).
    pub certs_dirs: Vec<std::path::PathBuf>,
    /// Hosts reached with a fixed scheme (`http` or `https`) instead of docker's rule: a
    /// mirror's upstream URL says which.
    pub schemes: Vec<(String, &'static str)>,
    /// Credentials for these hosts, before any from `credentials`.
    pub host_credentials: Vec<(String, Credentials)>,
    /// Sees every response a registry sends (rate-limit headers, `Retry-After`).
    pub observer: Option<Observer>,
}

/// What an [`Observer`] calls: with a response's status and headers.
pub type ObserveFn = dyn Fn(u16, &reqwest::header::HeaderMap) + Send + Sync;

/// A function that sees the status and headers of every registry response of a client.
#[derive(Clone)]
pub struct Observer(pub Arc<ObserveFn>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            insecure_registries: Vec::new(),
            credentials: None,
            chunk_size: None,
            user_agent: format!("wharf/{}", env!("CARGO_PKG_VERSION")),
            stall_timeout: Duration::from_secs(30),
            tls_verify: true,
            ca_certs: Vec::new(),
            certs_dirs: Vec::new(),
            schemes: Vec::new(),
            host_credentials: Vec::new(),
            observer: None,
        }
    }
}

/// A registry client, shared by every repository it opens.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    config: ClientConfig,
    auth: auth::Authenticator,
    /// How each registry host is reached, decided once.
    endpoints: tokio::sync::Mutex<std::collections::HashMap<String, Endpoint>>,
}

/// How one registry host is reached.
#[derive(Clone)]
struct Endpoint {
    scheme: &'static str,
    /// A client with the host's TLS set up (its CAs, client certificate, verification).
    http: reqwest::Client,
}

/// Whether `host` is reached over plain HTTP, as docker decides it: listed as insecure, or a
/// loopback registry: `localhost`, or an address or a name that resolves to a loopback
/// address (127.0.0.0/8, ::1). A name that merely looks like one (`127.example.com`) is
/// looked up like any other, and a name that does not resolve is not insecure.
pub async fn is_insecure(host: &str, listed: &[String]) -> bool {
    let bare = host_without_port(host);
    if listed.iter().any(|l| l == host || l == bare) || bare.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let addresses: Vec<std::net::IpAddr> = match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => match tokio::net::lookup_host((bare, 0)).await {
            Ok(found) => found.map(|a| a.ip()).collect(),
            Err(_) => Vec::new(),
        },
    };
    addresses.iter().any(|ip| ip.to_canonical().is_loopback())
}

/// Reads a response body into memory, never more than `limit` bytes whatever
/// `Content-Length` says: more is an error naming `what`, or with `truncate`, dropped.
pub(crate) async fn read_capped(
    mut resp: reqwest::Response,
    limit: u64,
    url: &str,
    what: &str,
    truncate: bool,
) -> Result<Bytes, ClientError> {
    let too_big = || ClientError::Protocol {
        url: url.to_owned(),
        reason: format!("{what} larger than {limit} bytes"),
    };
    if !truncate && resp.content_length().is_some_and(|n| n > limit) {
        return Err(too_big());
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|source| ClientError::Http {
        url: url.to_owned(),
        source,
    })? {
        let room = (limit as usize).saturating_sub(buf.len());
        if chunk.len() > room {
            if truncate {
                buf.extend_from_slice(&chunk[..room]);
                break;
            }
            return Err(too_big());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// The target of a response's `Link: <…>; rel="next"` header, as written (relative or not).
fn next_link(resp: &reqwest::Response) -> Option<&str> {
    resp.headers()
        .get(reqwest::header::LINK)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| l.split(';').next())
        .map(|l| l.trim().trim_start_matches('<').trim_end_matches('>'))
}

fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    })
}

/// A response's `WWW-Authenticate` challenge, if it has a readable one.
fn challenge_of(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

impl Client {
    /// A client with `config`.
    pub fn new(config: ClientConfig) -> Result<Client, ClientError> {
        // reqwest is built without a default crypto provider; ring is ours.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let everywhere = tls::HostTls::for_host("", &[], &config.ca_certs, !config.tls_verify)?;
        let http = everywhere
            .apply(Self::builder(&config))?
            .build()
            .map_err(ClientError::Setup)?;
        let auth = auth::Authenticator::new(&config)?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                config,
                auth,
                endpoints: tokio::sync::Mutex::new(std::collections::HashMap::new()),
            }),
        })
    }

    /// Downloads `url` (any HTTP(S) server, not a registry) into `to`, hashing it with sha256.
    /// Returns the digest, the size and the `Last-Modified` header, if any.
    pub async fn download(
        &self,
        url: &str,
        to: &std::path::Path,
    ) -> Result<(Digest, u64, Option<String>), ClientError> {
        use tokio::io::AsyncWriteExt;
        let http_err = |source| ClientError::Http {
            url: url.to_owned(),
            source,
        };
        let resp = self.inner.http.get(url).send().await.map_err(http_err)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(ClientError::Status {
                method: "GET",
                url: url.to_owned(),
                status: status.as_u16(),
                errors: Vec::new(),
                detail: status.canonical_reason().unwrap_or("error").to_owned(),
            });
        }
        let last_modified = resp
            .headers()
            .get(reqwest::header::LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let io = |source: std::io::Error| ClientError::Protocol {
            url: url.to_owned(),
            reason: format!("writing {}: {source}", to.display()),
        };
        let mut file = tokio::fs::File::create(to).await.map_err(io)?;
        let mut hasher = crate::digest::Algorithm::Sha256.hasher();
        let mut size = 0u64;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(http_err)?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        Ok((hasher.finish(), size, last_modified))
    }

    fn builder(config: &ClientConfig) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .connect_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(32)
    }

    /// How `domain` is reached, decided once per client. A secure registry over HTTPS, with its
    /// `certs.d` and `--ca-cert` CAs and client certificate. An insecure one (a loopback one, or
    /// listed) as docker does it: HTTPS first, with any certificate, and plain HTTP only if the
    /// HTTPS attempt got no answer at all.
    async fn endpoint(&self, domain: &str) -> Result<Endpoint, ClientError> {
        let mut known = self.inner.endpoints.lock().await;
        if let Some(e) = known.get(domain) {
            return Ok(e.clone());
        }
        let config = &self.inner.config;
        let insecure = is_insecure(domain, &config.insecure_registries).await;
        let host = api_host(domain);
        let accept_invalid = insecure || !config.tls_verify;
        let tls =
            tls::HostTls::for_host(host, &config.certs_dirs, &config.ca_certs, accept_invalid)?;
        let http = tls
            .apply(Self::builder(config))?
            .build()
            .map_err(ClientError::Setup)?;
        let pinned = config
            .schemes
            .iter()
            .find(|(h, _)| h == domain || h == host)
            .map(|(_, s)| *s);
        let scheme = if let Some(s) = pinned {
            s
        } else if insecure {
            let probe = http
                .get(format!("https://{host}/v2/"))
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match probe {
                Ok(_) => "https",
                Err(e) => {
                    tracing::debug!(host, error = %e, "no answer over HTTPS; using plain HTTP");
                    "http"
                }
            }
        } else {
            "https"
        };
        let e = Endpoint { scheme, http };
        known.insert(domain.to_owned(), e.clone());
        Ok(e)
    }

    /// `GET` of `path_and_query` on `domain`'s registry host (or `host` when given: Docker
    /// Hub's index is not its registry), reached as its repositories are (scheme, TLS), without
    /// credentials: the status, the `Link` header's next URL (absolute) and the body, read
    /// capped at 4 MiB. For endpoints outside a repository (`/v1/search`, `/v2/_catalog`).
    pub async fn get_anonymous(
        &self,
        domain: &str,
        host: Option<&str>,
        path_and_query: &str,
    ) -> Result<(u16, Option<String>, Vec<u8>), ClientError> {
        self.get_listing_as(domain, host, path_and_query, None)
            .await
    }

    /// `GET` of a listing outside any repository (`/v1/search`, `/v2/_catalog`, or a `Link`
    /// of one) as the user logged in to `domain`, when there is one: as docker does with a
    /// login, the registry's challenge is read from `/v2/` first and answered for
    /// `registry:catalog:*` (a token, or basic credentials), so the registry shows what that
    /// user may see. Without credentials, or without a challenge, [`Client::get_anonymous`].
    pub async fn get_listing(
        &self,
        domain: &str,
        path_and_query: &str,
    ) -> Result<(u16, Option<String>, Vec<u8>), ClientError> {
        let host = api_host(domain);
        let auth = &self.inner.auth;
        if auth.credentials_for(host).await?.is_none() {
            return self.get_anonymous(domain, None, path_and_query).await;
        }
        let endpoint = self.endpoint(domain).await?;
        let base = format!("{}://{host}", endpoint.scheme);
        let origin = url::Url::parse(&base)
            .map_err(|e| ClientError::Protocol {
                url: base.clone(),
                reason: e.to_string(),
            })?
            .origin();
        let key = origin.ascii_serialization();
        let placeholder = RepoName::new(domain, "catalog").map_err(|e| ClientError::Protocol {
            url: base.clone(),
            reason: e.to_string(),
        })?;
        if auth
            .cached(&key, &placeholder, Operation::Catalog)
            .is_none()
        {
            let url = format!("{base}/v2/");
            let ping = endpoint
                .http
                .get(&url)
                .send()
                .await
                .map_err(|source| ClientError::Http { url, source })?;
            if ping.status() != StatusCode::UNAUTHORIZED {
                return self.get_anonymous(domain, None, path_and_query).await;
            }
            let challenge = challenge_of(&ping);
            auth.authenticate(
                &endpoint.http,
                host,
                &key,
                &placeholder,
                Operation::Catalog,
                challenge.as_deref(),
            )
            .await?;
        }
        let header = auth
            .cached(&key, &placeholder, Operation::Catalog)
            .map(|h| (origin, h));
        self.get_listing_as(domain, None, path_and_query, header)
            .await
    }

    /// A listing `GET`, with `authorization` when the URL is on its origin.
    async fn get_listing_as(
        &self,
        domain: &str,
        host: Option<&str>,
        path_and_query: &str,
        authorization: Option<(url::Origin, HeaderValue)>,
    ) -> Result<(u16, Option<String>, Vec<u8>), ClientError> {
        let endpoint = self.endpoint(domain).await?;
        let host = host.unwrap_or_else(|| api_host(domain));
        let url = if path_and_query.starts_with("http://") || path_and_query.starts_with("https://")
        {
            path_and_query.to_owned()
        } else {
            format!("{}://{host}{path_and_query}", endpoint.scheme)
        };
        let mut req = endpoint.http.get(&url);
        if let Some((origin, value)) = authorization
            && url::Url::parse(&url).is_ok_and(|u| u.origin() == origin)
        {
            req = req.header(reqwest::header::AUTHORIZATION, value);
        }
        let resp = req.send().await.map_err(|source| ClientError::Http {
            url: url.clone(),
            source,
        })?;
        let status = resp.status().as_u16();
        let next = next_link(&resp)
            .and_then(|l| url::Url::parse(&url).ok()?.join(l).ok())
            .map(|u| u.to_string());
        let body = read_capped(resp, MANIFEST_LIMIT, &url, "a listing", false).await?;
        Ok((status, next, body.to_vec()))
    }

    /// The scheme used for `domain` (decided once per client).
    pub async fn scheme(&self, domain: &str) -> Result<&'static str, ClientError> {
        Ok(self.endpoint(domain).await?.scheme)
    }

    /// A handle on one repository.
    pub async fn repository(&self, name: &RepoName) -> Result<Repository, ClientError> {
        let host = api_host(name.domain()).to_owned();
        let endpoint = self.endpoint(name.domain()).await?;
        let scheme = endpoint.scheme;
        let base = format!("{scheme}://{host}/v2/{}", name.path());
        let origin = url::Url::parse(&base)
            .map(|u| u.origin())
            .unwrap_or_else(|_| url::Origin::new_opaque());
        Ok(Repository {
            client: self.clone(),
            name: name.clone(),
            origin_key: origin.ascii_serialization(),
            origin,
            http: endpoint.http,
            host,
            base,
        })
    }

    /// Checks credentials against a registry (what `login` does before saving them).
    pub async fn check_login(&self, domain: &str, creds: &Credentials) -> Result<(), ClientError> {
        let host = api_host(domain);
        let endpoint = self.endpoint(domain).await?;
        let url = format!("{}://{}/v2/", endpoint.scheme, host);
        self.inner
            .auth
            .check_login(&endpoint.http, &url, host, creds)
            .await
    }
}

/// One repository on one registry.
#[derive(Clone)]
pub struct Repository {
    client: Client,
    name: RepoName,
    host: String,
    base: String,
    /// Where the registry is (scheme, host, port): credentials go there and nowhere else.
    origin: url::Origin,
    origin_key: String,
    /// A client with the host's TLS.
    http: reqwest::Client,
}

/// How an upload ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uploaded {
    /// The bytes were sent.
    Sent,
    /// The registry mounted the blob from another repository.
    Mounted,
}

impl Repository {
    /// The repository's name.
    pub fn name(&self) -> &RepoName {
        &self.name
    }

    /// The registry host the API is served from.
    pub fn host(&self) -> &str {
        &self.host
    }

    fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn not_found(&self, what: impl Into<String>) -> ClientError {
        ClientError::NotFound {
            what: what.into(),
            repo: self.name.path().to_owned(),
            host: self.name.domain().to_owned(),
        }
    }

    /// Sends a request built by `build`, authenticating and retrying once on a 401. The
    /// registry's credentials go only to its own origin (scheme, host and port), as
    /// containerd drops its authorizer when a Location changes either: a URL the registry
    /// names elsewhere (an upload location, a page link) gets the request without them, and a
    /// 401 from elsewhere is an answer, not a reason to authenticate.
    async fn send(
        &self,
        op: Operation,
        url: &str,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
        method: Method,
    ) -> Result<reqwest::Response, ClientError> {
        let auth = &self.client.inner.auth;
        let home = url::Url::parse(url).is_ok_and(|u| u.origin() == self.origin);
        let mut attempt = 0;
        loop {
            let mut req = build(self.http().request(method.clone(), url));
            if home && let Some(h) = auth.cached(&self.origin_key, &self.name, op) {
                req = req.header(reqwest::header::AUTHORIZATION, h);
            }
            let resp = req.send().await.map_err(|source| {
                if tls::is_http_answer_to_tls(&source) {
                    // docker's words, and the way out.
                    ClientError::Protocol {
                        url: url.to_owned(),
                        reason: format!(
                            "server gave HTTP response to HTTPS client: if {host} is a plain-HTTP registry, name it with --insecure-registry {host}",
                            host = self.host
                        ),
                    }
                } else {
                    ClientError::Http {
                        url: url.to_owned(),
                        source,
                    }
                }
            })?;
            if let Some(o) = &self.client.inner.config.observer {
                (o.0)(resp.status().as_u16(), resp.headers());
            }
            if resp.status() != StatusCode::UNAUTHORIZED
                || attempt > 0
                || !home
                || resp.url().origin() != self.origin
            {
                return Ok(resp);
            }
            attempt += 1;
            let challenge = challenge_of(&resp);
            auth.authenticate(
                self.http(),
                &self.host,
                &self.origin_key,
                &self.name,
                op,
                challenge.as_deref(),
            )
            .await?;
        }
    }

    async fn error_from(
        &self,
        method: &'static str,
        url: &str,
        resp: reqwest::Response,
    ) -> ClientError {
        let status = resp.status().as_u16();
        let body = read_capped(resp, ERROR_BODY_LIMIT, url, "an error body", true)
            .await
            .unwrap_or_default();
        if status == 401 || status == 403 {
            let detail = parse_envelope(&body)
                .into_iter()
                .map(|e| format!("{}: {}", e.code, e.message))
                .collect::<Vec<_>>()
                .join("; ");
            return ClientError::Unauthorized {
                host: self.host.clone(),
                scope: format!("repository:{}", self.name.path()),
                detail: if detail.is_empty() {
                    format!("HTTP {status}")
                } else {
                    detail
                },
            };
        }
        ClientError::status(method, url, status, &body)
    }

    /// A GET or HEAD of a manifest, accepting every manifest type: the URL and the response.
    async fn ask_manifest(
        &self,
        selector: &str,
        method: Method,
    ) -> Result<(String, reqwest::Response), ClientError> {
        let url = format!("{}/manifests/{selector}", self.base);
        let resp = self
            .send(
                Operation::Pull,
                &url,
                |r| r.header(ACCEPT, MANIFEST_ACCEPT.join(", ")),
                method,
            )
            .await?;
        Ok((url, resp))
    }

    /// Fetches a manifest by tag or digest, verifying its digest.
    pub async fn get_manifest(&self, selector: &str) -> Result<Fetched, ClientError> {
        let (url, resp) = self.ask_manifest(selector, Method::GET).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(self.not_found(format!("manifest {selector}")));
        }
        if !resp.status().is_success() {
            return Err(self.error_from("GET", &url, resp).await);
        }
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_owned());
        let announced = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<Digest>().ok());
        let bytes = read_capped(resp, MANIFEST_LIMIT, &url, "manifest", false).await?;
        let expected = selector.parse::<Digest>().ok().or(announced);
        let digest = match expected {
            Some(e) => {
                let actual = Digest::of(e.algorithm(), &bytes);
                if actual != e {
                    return Err(ClientError::ManifestDigest {
                        url,
                        expected: e,
                        actual,
                    });
                }
                e
            }
            None => Digest::sha256(&bytes),
        };
        let media_type =
            detect_media_type(&bytes, content_type.as_deref(), &digest).map_err(|e| {
                ClientError::Protocol {
                    url: url.clone(),
                    reason: crate::error::Chain(&e).to_string(),
                }
            })?;
        Ok(Fetched {
            bytes,
            media_type,
            digest,
        })
    }

    /// The digest a tag (or digest) names now, from a HEAD (which Docker Hub does not count
    /// against its pull limit); `None` when the registry does not have it, or answers without
    /// `Docker-Content-Digest`.
    pub async fn head_manifest(&self, selector: &str) -> Result<Option<Digest>, ClientError> {
        let (url, resp) = self.ask_manifest(selector, Method::HEAD).await?;
        match resp.status() {
            s if s.is_success() => Ok(resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.parse::<Digest>().ok())),
            StatusCode::NOT_FOUND => Err(self.not_found(format!("manifest {selector}"))),
            _ => Err(self.error_from("HEAD", &url, resp).await),
        }
    }

    /// Uploads a manifest under `selector` (a tag or its digest). Returns the registry's digest.
    pub async fn put_manifest(
        &self,
        selector: &str,
        bytes: &Bytes,
        media_type: &str,
    ) -> Result<Digest, ClientError> {
        let url = format!("{}/manifests/{selector}", self.base);
        let resp = self
            .send(
                Operation::Push,
                &url,
                |r| r.header(CONTENT_TYPE, media_type).body(bytes.clone()),
                Method::PUT,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(self.error_from("PUT", &url, resp).await);
        }
        let ours = Digest::sha256(bytes);
        match resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<Digest>().ok())
        {
            Some(theirs) if theirs.algorithm() == ours.algorithm() && theirs != ours => {
                Err(ClientError::ManifestDigest {
                    url,
                    expected: ours,
                    actual: theirs,
                })
            }
            _ => Ok(ours),
        }
    }

    /// The size of a blob if the repository has it.
    pub async fn blob_exists(
        &self,
        digest: &Digest,
        op: Operation,
    ) -> Result<Option<u64>, ClientError> {
        let url = format!("{}/blobs/{digest}", self.base);
        let resp = self.send(op, &url, |r| r, Method::HEAD).await?;
        match resp.status() {
            // The header itself: for a HEAD, the body's length (what content_length() gives)
            // is 0.
            s if s.is_success() => Ok(Some(
                resp.headers()
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0),
            )),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.error_from("HEAD", &url, resp).await),
        }
    }

    /// Opens a blob from `offset`. A connection that breaks, ends early or delivers nothing for
    /// the stall timeout is resumed with `Range`, up to five times in a row without progress;
    /// then the stream fails saying where and why. The bytes are not verified here (wrap in
    /// [`crate::blob::verified`] or ingest).
    pub async fn get_blob(&self, blob: &BlobRef, offset: u64) -> Result<BlobStream, ClientError> {
        let (first, _) = self.open_within_stall(blob, offset).await?;
        Ok(self.resumable(blob.clone(), offset, first))
    }

    /// Opens a blob whose size the caller does not know (a mirror asked for a digest): the
    /// size the registry announces, and the bytes, resumed as [`Repository::get_blob`] does.
    pub async fn get_blob_sized(&self, digest: &Digest) -> Result<(u64, BlobStream), ClientError> {
        let blob = BlobRef {
            digest: digest.clone(),
            size: 0,
            media_type: String::new(),
        };
        let (first, size) = self.open_within_stall(&blob, 0).await?;
        let size = match size {
            Some(s) => s,
            // A chunked answer (some CDNs): the registry's HEAD says the size.
            None => self
                .blob_exists(digest, Operation::Pull)
                .await?
                .filter(|s| *s > 0)
                .ok_or_else(|| ClientError::Protocol {
                    url: format!("{}/blobs/{digest}", self.base),
                    reason: "the blob's size is announced neither by its GET nor its HEAD".into(),
                })?,
        };
        let blob = BlobRef { size, ..blob };
        Ok((size, self.resumable(blob, 0, first)))
    }

    async fn open_within_stall(
        &self,
        blob: &BlobRef,
        offset: u64,
    ) -> Result<((BlobStream, u64), Option<u64>), ClientError> {
        let idle = self.client.inner.config.stall_timeout;
        match tokio::time::timeout(idle, self.open_blob_at(blob, offset)).await {
            Ok(r) => r.map(|(body, skip, len)| ((body, skip), len)),
            Err(_) => Err(ClientError::Protocol {
                url: format!("{}/blobs/{}", self.base, blob.digest),
                reason: format!("no answer within {}s", idle.as_secs_f64()),
            }),
        }
    }

    fn resumable(&self, blob: BlobRef, offset: u64, first: (BlobStream, u64)) -> BlobStream {
        let idle = self.client.inner.config.stall_timeout;
        struct State {
            repo: Repository,
            blob: BlobRef,
            pos: u64,
            body: Option<(BlobStream, u64)>,
            retries: u32,
            idle: Duration,
            /// Why the last attempt ended, for the error when there are no more.
            last: String,
        }
        let state = State {
            repo: self.clone(),
            blob,
            pos: offset,
            body: Some(first),
            retries: BLOB_RETRIES,
            idle,
            last: String::new(),
        };
        let give_up = |st: &State| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "downloading {}: {} at byte {} of {}, and {BLOB_RETRIES} resumes with Range brought nothing more",
                    st.blob.digest, st.last, st.pos, st.blob.size
                ),
            )
        };
        let s = stream::unfold(state, move |mut st| async move {
            loop {
                if st.body.is_none() {
                    if st.pos >= st.blob.size {
                        return None;
                    }
                    if st.retries == 0 {
                        let e = give_up(&st);
                        st.pos = u64::MAX;
                        return Some((Err(e), st));
                    }
                    st.retries -= 1;
                    tokio::time::sleep(Duration::from_millis(
                        200 * u64::from(BLOB_RETRIES - st.retries - 1),
                    ))
                    .await;
                    match tokio::time::timeout(st.idle, st.repo.open_blob_at(&st.blob, st.pos))
                        .await
                    {
                        Ok(Ok((body, skip, _))) => st.body = Some((body, skip)),
                        Ok(Err(e)) if e.is_transient() => {
                            st.last = crate::error::Chain(&e).to_string();
                            continue;
                        }
                        Ok(Err(e)) => {
                            st.pos = u64::MAX;
                            return Some((Err(std::io::Error::other(e)), st));
                        }
                        Err(_) => {
                            st.last = format!("no answer for {}s", st.idle.as_secs_f64());
                            continue;
                        }
                    }
                }
                let Some((body, skip)) = st.body.as_mut() else {
                    continue;
                };
                match tokio::time::timeout(st.idle, body.next()).await {
                    Ok(Some(Ok(mut chunk))) => {
                        if *skip > 0 {
                            // The server ignored Range: drop what we already have.
                            let n = (*skip).min(chunk.len() as u64) as usize;
                            *skip -= n as u64;
                            chunk = chunk.slice(n..);
                            if chunk.is_empty() {
                                continue;
                            }
                        }
                        st.pos += chunk.len() as u64;
                        // Progress: the next trouble gets all its retries again.
                        st.retries = BLOB_RETRIES;
                        return Some((Ok(chunk), st));
                    }
                    Ok(Some(Err(e))) => {
                        tracing::debug!(digest = %st.blob.digest, pos = st.pos, error = %e, "blob download broke; resuming");
                        st.last = format!("the connection broke ({e})");
                        st.body = None;
                    }
                    Ok(None) if st.pos < st.blob.size => {
                        tracing::debug!(digest = %st.blob.digest, pos = st.pos, "blob download ended early; resuming");
                        st.last = "the connection ended early".into();
                        st.body = None;
                    }
                    Ok(None) => return None,
                    Err(_) => {
                        tracing::debug!(digest = %st.blob.digest, pos = st.pos, "blob download stalled; resuming");
                        st.last = format!("no data for {}s", st.idle.as_secs_f64());
                        st.body = None;
                    }
                }
            }
        });
        Box::pin(s)
    }

    /// Issues the GET for a blob at `offset`; returns the body, how many leading bytes to
    /// drop (when the server answers 200 to a Range request) and the length of a 200's body.
    async fn open_blob_at(
        &self,
        blob: &BlobRef,
        offset: u64,
    ) -> Result<(BlobStream, u64, Option<u64>), ClientError> {
        let url = format!("{}/blobs/{}", self.base, blob.digest);
        let resp = self
            .send(
                Operation::Pull,
                &url,
                |r| {
                    if offset > 0 {
                        r.header(RANGE, format!("bytes={offset}-"))
                    } else {
                        r
                    }
                },
                Method::GET,
            )
            .await?;
        let skip = match resp.status() {
            StatusCode::PARTIAL_CONTENT if offset > 0 => 0,
            StatusCode::OK => offset,
            StatusCode::NOT_FOUND => return Err(self.not_found(format!("blob {}", blob.digest))),
            _ => return Err(self.error_from("GET", &url, resp).await),
        };
        let whole = (resp.status() == StatusCode::OK)
            .then(|| resp.content_length())
            .flatten();
        let body = resp
            .bytes_stream()
            .map(|r| r.map_err(std::io::Error::other));
        Ok((Box::pin(body), skip, whole))
    }

    fn upload_url(&self, location: &str, url: &str) -> Result<url::Url, ClientError> {
        let base = url::Url::parse(url).map_err(|e| ClientError::Protocol {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        base.join(location).map_err(|e| ClientError::Protocol {
            url: url.to_owned(),
            reason: format!("bad upload location {location:?}: {e}"),
        })
    }

    fn location(&self, url: &str, resp: &reqwest::Response) -> Result<url::Url, ClientError> {
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ClientError::Protocol {
                url: url.to_owned(),
                reason: "upload response without Location".into(),
            })?;
        self.upload_url(loc, url)
    }

    /// Starts an upload session, or mounts `digest` from `from` when given and possible.
    async fn start_upload(
        &self,
        mount: Option<(&Digest, &RepoName)>,
    ) -> Result<Result<url::Url, Uploaded>, ClientError> {
        let mut url = format!("{}/blobs/uploads/", self.base);
        if let Some((d, from)) = mount {
            url.push_str(&format!("?mount={d}&from={}", from.path()));
        }
        let resp = self
            .send(
                Operation::Push,
                &url,
                |r| r.header(CONTENT_LENGTH, "0"),
                Method::POST,
            )
            .await?;
        match resp.status() {
            StatusCode::CREATED if mount.is_some() => Ok(Err(Uploaded::Mounted)),
            StatusCode::ACCEPTED => Ok(Ok(self.location(&url, &resp)?)),
            _ => Err(self.error_from("POST", &url, resp).await),
        }
    }

    /// Uploads a blob from `body` (which the caller verifies), mounting it from `mount_from` in
    /// the same registry when it can. Monolithic unless the client is set to chunk.
    pub async fn push_blob(
        &self,
        blob: &BlobRef,
        body: BlobStream,
        mount_from: Option<&RepoName>,
    ) -> Result<Uploaded, ClientError> {
        let session = match self
            .start_upload(mount_from.map(|f| (&blob.digest, f)))
            .await
        {
            Ok(s) => s,
            // A refused mount (no pull access to the source) is retried as a plain upload.
            Err(ClientError::Unauthorized { .. }) if mount_from.is_some() => {
                self.start_upload(None).await?
            }
            Err(e) => return Err(e),
        };
        let location = match session {
            Err(done) => return Ok(done),
            Ok(l) => l,
        };
        match self.client.inner.config.chunk_size {
            Some(chunk) => self.push_chunked(blob, body, location, chunk).await,
            None => self.push_monolithic(blob, body, location).await,
        }
    }

    fn with_digest(mut location: url::Url, digest: &Digest) -> url::Url {
        location
            .query_pairs_mut()
            .append_pair("digest", digest.as_str());
        location
    }

    async fn push_monolithic(
        &self,
        blob: &BlobRef,
        body: BlobStream,
        location: url::Url,
    ) -> Result<Uploaded, ClientError> {
        let url = Self::with_digest(location, &blob.digest).to_string();
        let body = std::sync::Mutex::new(Some(body));
        let resp = self
            .send(
                Operation::Push,
                &url,
                |r| {
                    let b = body.lock().ok().and_then(|mut g| g.take());
                    let r = r
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_LENGTH, blob.size);
                    match b {
                        Some(b) => r.body(reqwest::Body::wrap_stream(b)),
                        None => r.body(Bytes::new()),
                    }
                },
                Method::PUT,
            )
            .await?;
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            return Err(self.error_from("PUT", &url, resp).await);
        }
        Ok(Uploaded::Sent)
    }

    async fn push_chunked(
        &self,
        blob: &BlobRef,
        mut body: BlobStream,
        mut location: url::Url,
        chunk_size: u64,
    ) -> Result<Uploaded, ClientError> {
        let mut sent: u64 = 0;
        let mut buf = bytes::BytesMut::new();
        let mut ended = false;
        loop {
            while !ended && (buf.len() as u64) < chunk_size {
                match body.next().await {
                    Some(Ok(c)) => buf.extend_from_slice(&c),
                    Some(Err(e)) => {
                        return Err(ClientError::Protocol {
                            url: location.to_string(),
                            reason: format!("reading {}: {e}", blob.digest),
                        });
                    }
                    None => ended = true,
                }
            }
            if buf.is_empty() {
                break;
            }
            let take = buf.len().min(chunk_size as usize);
            let chunk = buf.split_to(take).freeze();
            let end = sent + chunk.len() as u64 - 1;
            let url = location.to_string();
            let resp = self
                .send(
                    Operation::Push,
                    &url,
                    |r| {
                        r.header(CONTENT_TYPE, "application/octet-stream")
                            .header(CONTENT_RANGE, format!("{sent}-{end}"))
                            .header(CONTENT_LENGTH, chunk.len())
                            .body(chunk.clone())
                    },
                    Method::PATCH,
                )
                .await?;
            if resp.status() != StatusCode::ACCEPTED && !resp.status().is_success() {
                return Err(self.error_from("PATCH", &url, resp).await);
            }
            location = self.location(&url, &resp)?;
            sent = end + 1;
        }
        let url = Self::with_digest(location, &blob.digest).to_string();
        let resp = self
            .send(
                Operation::Push,
                &url,
                |r| r.header(CONTENT_LENGTH, "0"),
                Method::PUT,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(self.error_from("PUT", &url, resp).await);
        }
        Ok(Uploaded::Sent)
    }

    /// Every tag of the repository, following `Link` pagination.
    pub async fn list_tags(&self) -> Result<Vec<String>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Tags {
            tags: Option<Vec<String>>,
        }
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut url = format!("{}/tags/list", self.base);
        loop {
            let resp = self.send(Operation::Pull, &url, |r| r, Method::GET).await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Err(self.not_found("repository"));
            }
            if !resp.status().is_success() {
                return Err(self.error_from("GET", &url, resp).await);
            }
            let next = next_link(&resp).map(str::to_owned);
            let body = read_capped(resp, MANIFEST_LIMIT, &url, "a tag list page", false).await?;
            let page: Tags = serde_json::from_slice(&body).map_err(|e| ClientError::Protocol {
                url: url.clone(),
                reason: format!("tag list: {e}"),
            })?;
            out.extend(page.tags.unwrap_or_default());
            match next {
                Some(n) if seen.insert(n.clone()) => url = self.upload_url(&n, &url)?.to_string(),
                _ => break,
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_and_listed_registries_use_http() {
        let listed = vec!["reg.internal:5000".to_owned(), "plain.example".to_owned()];
        for host in [
            "localhost",
            "localhost:5000",
            "LocalHost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "reg.internal:5000",
            "plain.example:443",
        ] {
            assert!(is_insecure(host, &listed).await, "{host}");
        }
        // Names are resolved, never judged by how they look (issue 10): these do not
        // resolve here, so they are reached over HTTPS.
        for host in [
            "docker.io.invalid",
            "reg.internal:5001",
            "localhost.example.invalid",
            "127.attacker.invalid",
            "127.0.0.1.attacker.invalid:5000",
            "128.0.0.1",
        ] {
            assert!(!is_insecure(host, &listed).await, "{host}");
        }
    }
}
