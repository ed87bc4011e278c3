//! A small HTTP client for the registry API, and the content the checks push: blobs of unique
//! bytes, and images, indexes and artifacts built from them. Nothing here follows redirects or
//! retries, so each check sees exactly what the registry answered, with one exception: against
//! a target with credentials (the official suite's `OCI_USERNAME`/`OCI_PASSWORD`), a 401 is
//! answered as docker does (a token from the challenge's realm, or basic credentials) and the
//! request sent once more.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use reqwest::{Client, Method};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256, Sha512};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::Target;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Sent on every manifest GET and HEAD: Distribution serves OCI types and lists only to clients
/// that ask for them, as containerd and docker do.
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub fn sha512(data: &[u8]) -> String {
    format!("sha512:{}", hex::encode(Sha512::digest(data)))
}

/// A number no other call in this process returns, mixed with the clock so that runs sharing a
/// registry's data do not collide either.
fn unique() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let seed = format!(
        "{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let hash = Sha256::digest(seed.as_bytes());
    u64::from_le_bytes(hash[..8].try_into().unwrap_or_default())
}

/// A fresh repository name, `spec/<label>-<hex>`; `label` is lowercase words and dashes.
pub fn repo(label: &str) -> String {
    format!("spec/{label}-{:016x}", unique())
}

/// `len` bytes that no other call returns (for `len` of 8 and more).
pub fn blob(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = Sha256::digest(unique().to_le_bytes());
    while out.len() < len {
        out.extend_from_slice(&block);
        block = Sha256::digest(block);
    }
    out.truncate(len);
    out
}

/// A response, read whole.
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// `METHOD url`, for messages.
    pub request: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The header, or an error naming the request.
    pub fn require(&self, name: &str) -> Result<&str, String> {
        self.header(name)
            .ok_or_else(|| format!("{}: no {name} header ({})", self.request, self.status))
    }

    /// Fails unless the status is `want`.
    pub fn expect(&self, want: u16) -> Result<&Self, String> {
        if self.status == want {
            Ok(self)
        } else {
            Err(format!(
                "{}: status {}, want {want}; body: {}",
                self.request,
                self.status,
                self.text()
            ))
        }
    }

    pub fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        text.chars().take(400).collect()
    }

    pub fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body)
            .map_err(|e| format!("{}: body is not JSON ({e}): {}", self.request, self.text()))
    }

    /// The `code` of each error in the body's error envelope.
    pub fn error_codes(&self) -> Result<Vec<String>, String> {
        let body = self.json()?;
        let errors = body["errors"]
            .as_array()
            .filter(|errors| !errors.is_empty())
            .ok_or_else(|| format!("{}: no `errors` array in {body}", self.request))?;
        errors
            .iter()
            .map(|e| {
                e["code"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{}: error without a code: {e}", self.request))
            })
            .collect()
    }

    /// Fails unless the status is `status` and the error envelope holds `code`.
    pub fn expect_error(&self, status: u16, code: &str) -> Result<(), String> {
        self.expect(status)?;
        let codes = self.error_codes()?;
        ensure!(
            codes.iter().any(|c| c == code),
            "{}: error codes {codes:?}, want {code}",
            self.request
        );
        Ok(())
    }

    /// Fails on a server error: hostile input must be answered with a 4xx.
    pub fn expect_client_error(&self) -> Result<(), String> {
        ensure!(
            (400..500).contains(&self.status),
            "{}: status {}, want a 4xx; body: {}",
            self.request,
            self.status,
            self.text()
        );
        Ok(())
    }
}

/// A blob upload session: the `Location` to use next.
pub struct Session {
    pub location: String,
}

/// What `push_image` pushed.
pub struct Image {
    pub config: Vec<u8>,
    pub layer: Vec<u8>,
    pub manifest: Vec<u8>,
    pub digest: String,
}

pub struct Api {
    http: Client,
    base: String,
    creds: Option<(String, String)>,
}

impl Api {
    pub fn new(target: &Target) -> Result<Api, String> {
        // The workspace builds reqwest without a default crypto provider, and the client wants
        // one even for plain HTTP; an Err means another test installed it first.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(Api {
            http,
            base: target.base.clone(),
            creds: target.creds.clone(),
        })
    }

    /// `path` if it is absolute, else `path` under the registry's base URL.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Resp, String> {
        let first = self
            .send_once(method.clone(), path, headers, body.clone(), None)
            .await?;
        if first.status != 401 || self.creds.is_none() {
            return Ok(first);
        }
        let challenge = first
            .header("www-authenticate")
            .unwrap_or_default()
            .to_owned();
        let authorization = self.authorize(&challenge).await?;
        self.send_once(method, path, headers, body, Some(&authorization))
            .await
    }

    /// The `Authorization` a challenge asks for, made from the target's credentials.
    async fn authorize(&self, challenge: &str) -> Result<String, String> {
        use base64::Engine as _;
        let (user, password) = self.creds.clone().unwrap_or_default();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            return Ok(format!("Basic {basic}"));
        };
        // `key="value"` pairs; values are quoted and may hold commas (`pull,push`).
        let param = |name: &str| {
            let start = params.find(&format!("{name}=\""))? + name.len() + 2;
            let len = params[start..].find('"')?;
            Some(params[start..start + len].to_owned())
        };
        let realm = param("realm").ok_or_else(|| format!("no realm in {challenge:?}"))?;
        let mut query = vec![("service", param("service").unwrap_or_default())];
        if let Some(scope) = param("scope") {
            query.push(("scope", scope));
        }
        let resp = self
            .http
            .get(&realm)
            .query(&query)
            .header("Authorization", format!("Basic {basic}"))
            .send()
            .await
            .map_err(|e| format!("GET {realm}: {e}"))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("GET {realm}: {status}: {e}"))?;
        let body: Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("GET {realm}: {status}: {e}"))?;
        let token = body["token"]
            .as_str()
            .ok_or_else(|| format!("GET {realm}: {status}: no token in {body}"))?;
        Ok(format!("Bearer {token}"))
    }

    async fn send_once(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        authorization: Option<&str>,
    ) -> Result<Resp, String> {
        let url = self.url(path);
        let request = format!("{method} {url}");
        // Go clients (docker, containerd) send `Content-Length: 0` with an empty POST, PUT or
        // PATCH, and a chunked upload's POST MUST carry it (§Pushing a blob in chunks).
        let empty_upload =
            body.is_empty() && [Method::POST, Method::PUT, Method::PATCH].contains(&method);
        let mut builder = self.http.request(method, &url);
        if empty_upload {
            builder = builder.header("Content-Length", "0");
        }
        if let Some(a) = authorization {
            builder = builder.header("Authorization", a);
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let response = builder
            .body(body)
            .send()
            .await
            .map_err(|e| format!("{request}: {e}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("{request}: reading the body: {e}"))?
            .to_vec();
        Ok(Resp {
            status,
            headers,
            body,
            request,
        })
    }

    /// Sends `METHOD target HTTP/1.1` byte for byte, bypassing URL normalisation (which would
    /// resolve `..` and percent-encoded dots); returns the status and the body.
    pub async fn raw(&self, method: &str, target: &str) -> Result<(u16, String), String> {
        let address = self.base.trim_start_matches("http://");
        let request = format!("{method} {target}");
        let mut stream = TcpStream::connect(address)
            .await
            .map_err(|e| format!("{request}: connecting to {address}: {e}"))?;
        let authorization = match &self.creds {
            Some((u, p)) => {
                use base64::Engine as _;
                let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                format!("Authorization: Basic {b}\r\n")
            }
            None => String::new(),
        };
        let head = format!(
            "{request} HTTP/1.1\r\nHost: {address}\r\n{authorization}Connection: close\r\n\r\n"
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("{request}: {e}"))?;
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut response))
            .await
            .map_err(|_| format!("{request}: no complete response in 60 s"))?
            .map_err(|e| format!("{request}: {e}"))?;
        let response = String::from_utf8_lossy(&response);
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("{request}: not an HTTP response: {response:.200}"))?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    pub async fn get(&self, path: &str) -> Result<Resp, String> {
        self.send(Method::GET, path, &[], Vec::new()).await
    }

    pub async fn head(&self, path: &str) -> Result<Resp, String> {
        self.send(Method::HEAD, path, &[], Vec::new()).await
    }

    pub async fn delete(&self, path: &str) -> Result<Resp, String> {
        self.send(Method::DELETE, path, &[], Vec::new()).await
    }

    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Result<Resp, String> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let accept = [("Accept", ACCEPT_MANIFESTS)];
        self.send(Method::GET, &path, &accept, Vec::new()).await
    }

    pub async fn head_manifest(&self, repo: &str, reference: &str) -> Result<Resp, String> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let accept = [("Accept", ACCEPT_MANIFESTS)];
        self.send(Method::HEAD, &path, &accept, Vec::new()).await
    }

    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<Resp, String> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let headers = [("Content-Type", media_type)];
        self.send(Method::PUT, &path, &headers, body.to_vec()).await
    }

    /// Starts an upload session (end-4a), requiring `202 Accepted` and a `Location`.
    pub async fn start_upload(&self, repo: &str) -> Result<Session, String> {
        let path = format!("/v2/{repo}/blobs/uploads/");
        let resp = self.send(Method::POST, &path, &[], Vec::new()).await?;
        resp.expect(202)?;
        Ok(Session {
            location: resp.require("Location")?.to_owned(),
        })
    }

    /// Sends a chunk with its `Content-Range` (end-5); a successful response moves the session
    /// to the returned `Location`.
    pub async fn patch(
        &self,
        session: &mut Session,
        offset: usize,
        chunk: &[u8],
    ) -> Result<Resp, String> {
        let range = format!("{offset}-{}", (offset + chunk.len()).saturating_sub(1));
        let headers = [
            ("Content-Type", "application/octet-stream"),
            ("Content-Range", range.as_str()),
        ];
        let resp = self
            .send(Method::PATCH, &session.location, &headers, chunk.to_vec())
            .await?;
        if resp.status == 202
            && let Some(location) = resp.header("Location")
        {
            session.location = location.to_owned();
        }
        Ok(resp)
    }

    /// Closes the session with `PUT <location>?digest=` (end-6), optionally with a last chunk.
    pub async fn finish(
        &self,
        session: &Session,
        digest: &str,
        last: &[u8],
    ) -> Result<Resp, String> {
        let url = with_query(&session.location, &format!("digest={digest}"));
        let headers = [("Content-Type", "application/octet-stream")];
        self.send(Method::PUT, &url, &headers, last.to_vec()).await
    }

    /// Pushes a blob with POST then PUT, requiring `201 Created`; returns its sha256 digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> Result<String, String> {
        let digest = sha256(data);
        let session = self.start_upload(repo).await?;
        self.finish(&session, &digest, data).await?.expect(201)?;
        Ok(digest)
    }

    /// Pushes a manifest, requiring `201 Created`; returns the digest of `body`.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<String, String> {
        self.put_manifest(repo, reference, media_type, body)
            .await?
            .expect(201)?;
        Ok(sha256(body))
    }

    /// Pushes a config, a layer and an OCI image manifest tagged `tag`.
    pub async fn push_image(&self, repo: &str, tag: &str) -> Result<Image, String> {
        let config = config_blob();
        let layer = blob(1000);
        self.push_blob(repo, &config).await?;
        self.push_blob(repo, &layer).await?;
        let manifest = image_manifest(&config, &layer);
        let digest = self
            .push_manifest(repo, tag, OCI_MANIFEST, &manifest)
            .await?;
        Ok(Image {
            config,
            layer,
            manifest,
            digest,
        })
    }

    /// The tags of `repo` from `GET /v2/<repo>/tags/list<query>`, requiring `200 OK`.
    pub async fn tags(&self, repo: &str, query: &str) -> Result<(Vec<String>, Resp), String> {
        let resp = self.get(&format!("/v2/{repo}/tags/list{query}")).await?;
        resp.expect(200)?;
        let body = resp.json()?;
        ensure!(
            body["name"] == repo,
            "{}: name {}, want {repo}",
            resp.request,
            body["name"]
        );
        let tags = strings(&body["tags"]);
        Ok((tags, resp))
    }
}

/// `url` with `query` appended, after `?` or `&`.
pub fn with_query(url: &str, query: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{query}")
}

/// The strings of a JSON array; null and other values give an empty list.
pub fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The target of a `Link: <url>; rel="next"` header.
pub fn next_link(resp: &Resp) -> Result<Option<String>, String> {
    let Some(link) = resp.header("Link") else {
        return Ok(None);
    };
    let target = link
        .strip_prefix('<')
        .and_then(|rest| rest.split_once('>'))
        .filter(|(_, params)| params.replace(' ', "").contains("rel=\"next\""))
        .map(|(url, _)| url.to_owned());
    target
        .map(Some)
        .ok_or_else(|| format!("{}: malformed Link header {link:?}", resp.request))
}

/// An image config, unique to this call.
pub fn config_blob() -> Vec<u8> {
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Labels": { "spec.nonce": hex::encode(blob(8)) } },
        "rootfs": { "type": "layers", "diff_ids": [] },
    });
    config.to_string().into_bytes()
}

pub fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": sha256(data), "size": data.len() })
}

/// An OCI image manifest of `config` and one `layer`.
pub fn image_manifest(config: &[u8], layer: &[u8]) -> Vec<u8> {
    json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer)],
    })
    .to_string()
    .into_bytes()
}

/// An OCI index of `manifests` (each an OCI image manifest), for linux/amd64.
pub fn image_index(manifests: &[&[u8]]) -> Vec<u8> {
    let entries: Vec<Value> = manifests
        .iter()
        .map(|m| {
            let mut d = descriptor(OCI_MANIFEST, m);
            d["platform"] = json!({ "architecture": "amd64", "os": "linux" });
            d
        })
        .collect();
    json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries })
        .to_string()
        .into_bytes()
}

/// An OCI artifact manifest referring to `subject` (an image manifest), with an empty `{}`
/// config of `config_type` and an annotation; `artifact_type` is set when given.
pub fn artifact(subject: &[u8], artifact_type: Option<&str>, config_type: &str) -> Vec<u8> {
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(config_type, b"{}"),
        "layers": [descriptor("application/vnd.oci.empty.v1+json", b"{}")],
        "subject": descriptor(OCI_MANIFEST, subject),
        "annotations": { "spec.nonce": hex::encode(blob(8)) },
    });
    if let Some(artifact_type) = artifact_type {
        manifest["artifactType"] = json!(artifact_type);
    }
    manifest.to_string().into_bytes()
}
