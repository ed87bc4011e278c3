//! What every command needs: the store, the registry client, credentials, progress.

use std::path::PathBuf;

use anyhow::Context as _;
use wharf_common::client::{Client, ClientConfig, CredentialStore};
use wharf_common::reference::Reference;
use wharf_common::store::{ImageRecord, LocalStore};

use crate::cli::GlobalArgs;
use crate::printer::Hint;
use crate::progress::{Progress, Verbs};

pub struct Ctx {
    pub global: GlobalArgs,
}

/// The store's default location: /var/lib/wharf for root, else under $XDG_DATA_HOME.
fn default_root() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/wharf");
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("wharf")
}

impl Ctx {
    pub fn root(&self) -> PathBuf {
        self.global.root.clone().unwrap_or_else(default_root)
    }

    pub async fn store(&self) -> anyhow::Result<LocalStore> {
        let root = self.root();
        LocalStore::open(&root)
            .await
            .with_context(|| format!("opening the local store at {}", root.display()))
    }

    /// docker's config directory: `--config`, `$DOCKER_CONFIG` or `~/.docker`.
    fn docker_config_dir(&self) -> Option<PathBuf> {
        self.global
            .docker_config
            .clone()
            .or_else(|| std::env::var_os("DOCKER_CONFIG").map(PathBuf::from))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
    }

    pub fn credentials(&self) -> CredentialStore {
        let dir = self
            .docker_config_dir()
            .unwrap_or_else(|| PathBuf::from(".docker"));
        CredentialStore::new(&dir)
    }

    pub fn client(&self, chunk_size: Option<u64>) -> anyhow::Result<Client> {
        let defaults = ClientConfig::default();
        // How long a download may deliver nothing before it is resumed (seconds).
        let stall_timeout = match std::env::var("WHARF_STALL_TIMEOUT") {
            Ok(v) => std::time::Duration::from_secs_f64(
                v.parse::<f64>().ok().filter(|s| *s > 0.0).ok_or_else(|| {
                    anyhow::anyhow!("WHARF_STALL_TIMEOUT={v:?}: expected a number of seconds")
                })?,
            ),
            Err(_) => defaults.stall_timeout,
        };
        // docker's and podman's per-host certificate directories, in docker's order.
        let mut certs_dirs = vec![PathBuf::from("/etc/docker/certs.d")];
        if let Some(d) = self.docker_config_dir() {
            certs_dirs.push(d.join("certs.d"));
        }
        certs_dirs.push(PathBuf::from("/etc/containers/certs.d"));
        Ok(Client::new(ClientConfig {
            insecure_registries: self.global.insecure_registries.clone(),
            credentials: Some(self.credentials()),
            chunk_size,
            stall_timeout,
            tls_verify: self.global.tls_verify,
            ca_certs: self.global.ca_certs.clone(),
            certs_dirs,
            ..defaults
        })?)
    }

    pub fn progress(&self, quiet: bool, verbs: Verbs) -> anyhow::Result<Progress> {
        Progress::new(self.global.progress, quiet, verbs)
    }
}

/// Whether `s` can only be an image id (hex, optionally with `sha256:`).
fn looks_like_id(s: &str) -> bool {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    !hex.is_empty()
        && hex.len() <= 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Finds a local image by name (tag or digest) or by (a prefix of) its id, as docker does.
pub async fn find_image(store: &LocalStore, spec: &str) -> anyhow::Result<ImageRecord> {
    let parsed = spec.parse::<Reference>();
    if let Ok(r) = &parsed
        && let Some(found) = store.resolve(r).await?
        && let Some(rec) = store.image(&found.digest).await?
    {
        return Ok(rec);
    }
    if looks_like_id(spec) {
        let mut matches = store.images_by_id_prefix(spec).await?;
        match matches.len() {
            1 => return Ok(matches.remove(0)),
            0 => {}
            n => anyhow::bail!("image id prefix {spec:?} is ambiguous: it matches {n} images"),
        }
    }
    if let Err(e) = parsed
        && !looks_like_id(spec)
    {
        return Err(anyhow::Error::new(e));
    }
    Err(anyhow::Error::new(Hint(
        "`wharf images` lists what the local store holds; `wharf pull` fetches an image".into(),
    ))
    .context(format!("no such image: {spec}")))
}
