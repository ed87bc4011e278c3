//! What the registry's HTTP tests share: a registry in the test process, a small client, and
//! images to push.
#![allow(dead_code, reason = "each test binary uses part of it")]

use std::time::Duration;

use base64::Engine as _;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use wharf_registry::RegistryConfig;
use wharf_registry::testing::Spawned;

pub fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A registry running in this process, its data under `dir/root`.
pub struct Reg {
    pub base: String,
    pub http: Client,
    pub dir: tempfile::TempDir,
    pub server: Spawned,
}

/// HTTP basic credentials.
pub fn basic(user: &str, password: &str) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {b}")
}

#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn challenge(&self) -> String {
        self.headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    pub fn code(&self) -> &str {
        self.body["errors"][0]["code"].as_str().unwrap_or_default()
    }
}

impl Reg {
    /// Starts a registry rooted in `dir/root` on a loopback port, with `set` applied to its
    /// configuration.
    pub fn start(dir: tempfile::TempDir, set: impl FnOnce(&mut RegistryConfig)) -> Reg {
        let mut config = RegistryConfig::with_root(&dir.path().join("root"));
        config.server.addr = ([127, 0, 0, 1], 0).into();
        set(&mut config);
        let server = wharf_registry::testing::spawn_with(config);
        let _ = rustls::crypto::ring::default_provider().install_default();
        Reg {
            base: format!("http://{}", server.addr),
            http: Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            dir,
            server,
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        ctype: Option<&str>,
        body: Vec<u8>,
    ) -> Answer {
        let mut b = self.http.request(method, format!("{}{path}", self.base));
        if let Some(a) = auth {
            b = b.header("Authorization", a);
        }
        if let Some(t) = ctype {
            b = b.header("Content-Type", t);
        }
        let r = b.body(body).send().await.unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.unwrap();
        Answer {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    pub async fn get(&self, path: &str, auth: Option<&str>) -> Answer {
        self.send(Method::GET, path, auth, None, Vec::new()).await
    }

    /// A bearer token from `/token` for these scopes, as `user` (or anonymous).
    pub async fn token(&self, user: Option<(&str, &str)>, scopes: &[&str]) -> (String, Value) {
        let mut path = "/token?service=wharf".to_owned();
        for s in scopes {
            path.push_str(&format!("&scope={}", s.replace(' ', "%20")));
        }
        let auth = user.map(|(u, p)| basic(u, p));
        let a = self.get(&path, auth.as_deref()).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let t = a.body["token"].as_str().unwrap().to_owned();
        (format!("Bearer {t}"), a.body)
    }

    /// Pushes a one-layer image to `repo:tag` with `auth`; returns the layer's digest.
    pub async fn push(&self, repo: &str, tag: &str, auth: &str) -> String {
        let layer = format!("layer of {repo}:{tag}").into_bytes();
        self.push_image(repo, tag, Some(auth), &[layer])
            .await
            .expect("push")
            .1[0]
            .clone()
    }

    /// Uploads `blob` to `repo` in one request; whether it was stored (201).
    pub async fn push_blob(&self, repo: &str, blob: &[u8], auth: Option<&str>) -> Answer {
        self.send(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={}", digest(blob)),
            auth,
            Some("application/octet-stream"),
            blob.to_vec(),
        )
        .await
    }

    /// Pushes an image of `layers` (and an empty config) to `repo` under `reference` (a tag,
    /// or its own digest when `reference` is empty): the manifest's digest and the layers'
    /// digests, or the failed answer.
    pub async fn push_image(
        &self,
        repo: &str,
        reference: &str,
        auth: Option<&str>,
        layers: &[Vec<u8>],
    ) -> Result<(String, Vec<String>), Answer> {
        let config = b"{}".to_vec();
        for blob in layers.iter().chain([&config]) {
            let a = self.push_blob(repo, blob, auth).await;
            if a.status != 201 {
                return Err(a);
            }
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": digest(&config), "size": config.len()},
            "layers": layers.iter().map(|l| json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": digest(l), "size": l.len()})).collect::<Vec<_>>(),
        })
        .to_string();
        let m = digest(manifest.as_bytes());
        let reference = if reference.is_empty() {
            m.as_str()
        } else {
            reference
        };
        let a = self
            .put_manifest(repo, reference, auth, manifest.as_bytes(), OCI_MANIFEST)
            .await;
        if a.status != 201 {
            return Err(a);
        }
        Ok((m, layers.iter().map(|l| digest(l)).collect()))
    }

    /// `PUT` of a manifest.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        auth: Option<&str>,
        body: &[u8],
        media_type: &str,
    ) -> Answer {
        self.send(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            auth,
            Some(media_type),
            body.to_vec(),
        )
        .await
    }
}
