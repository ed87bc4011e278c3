//! The registry's configuration: a versioned TOML file, `WHARF_<SECTION>_<KEY>` environment
//! overrides, then command-line flags; each layer overrides the one before (CLI > env > file >
//! defaults). `wharf serve --show-config` prints the result.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The file format version this build reads.
pub const CONFIG_VERSION: u32 = 1;

/// Everything `wharf serve` can be told.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Format version of the file; only 1 exists.
    pub version: u32,
    /// Listening socket and TLS.
    pub server: ServerConfig,
    /// Where blobs and the metadata database live.
    pub storage: StorageConfig,
    /// Upload sessions.
    pub uploads: UploadConfig,
    /// Request limits.
    pub limits: LimitsConfig,
    /// Authentication and per-repository access; without it the registry is open to anyone
    /// who can reach it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// Garbage collection and retention.
    pub gc: GcConfig,
    /// `[[mirror]]`: upstream registries served as a pull-through cache.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirror: Vec<MirrorConfig>,
}

/// Docker Hub's registry API, the upstream of `--mirror docker.io`.
pub const DOCKER_HUB_URL: &str = "https://registry-1.docker.io";

/// One `[[mirror]]` table: an upstream registry whose images `wharf serve` fetches when a
/// client asks and keeps.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// What clients call the upstream: the first component of a mirrored path
    /// (`host:5000/docker.io/library/busybox`) and containerd's `?ns=`; mirrored content is
    /// kept under it. One path component (`docker.io`, `ghcr.io`, `upstream`).
    pub name: String,
    /// Where the upstream's API is (`https://registry-1.docker.io`).
    pub url: String,
    /// A user name on the upstream (its private repositories, higher pull limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// That user's password or access token (shown masked).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "masked"
    )]
    pub password: Option<String>,
    /// A file holding the password instead (read at start; a trailing newline is dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// How long a tag fetched from the upstream is served without asking it again.
    #[serde(default = "default_tag_ttl", with = "duration")]
    pub tag_ttl: Duration,
    /// Requests with no upstream named (dockerd's `registry-mirrors`) go here; the first
    /// mirror when none says so.
    #[serde(default)]
    pub default: bool,
}

fn default_tag_ttl() -> Duration {
    Duration::from_secs(300)
}

fn masked<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("********"),
        None => s.serialize_none(),
    }
}

impl MirrorConfig {
    /// A mirror of `url` called `name`, every other setting at its default.
    pub fn new(name: &str, url: &str) -> MirrorConfig {
        MirrorConfig {
            name: name.to_owned(),
            url: url.trim_end_matches('/').to_owned(),
            username: None,
            password: None,
            password_file: None,
            tag_ttl: default_tag_ttl(),
            default: false,
        }
    }

    /// A `--mirror` value: `NAME=URL`, or a registry host whose API is at `https://HOST`
    /// (Docker Hub's at [`DOCKER_HUB_URL`]).
    pub fn from_flag(flag: &str) -> Result<MirrorConfig, ConfigError> {
        let (name, url) = match flag.split_once('=') {
            Some((n, u)) => (n.trim().to_owned(), u.trim().to_owned()),
            None if is_docker_hub(flag) => ("docker.io".to_owned(), DOCKER_HUB_URL.to_owned()),
            None => (flag.to_owned(), format!("https://{flag}")),
        };
        Ok(MirrorConfig::new(&name, &url))
    }

    /// The upstream's host and port as clients name it (`registry-1.docker.io`,
    /// `127.0.0.1:5001`).
    pub fn authority(&self) -> Option<String> {
        let url = url::Url::parse(&self.url).ok()?;
        let host = url.host_str()?;
        Some(match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        })
    }

    /// Whether the upstream is Docker Hub (`library/` is added to one-component names).
    pub fn is_docker_hub(&self) -> bool {
        is_docker_hub(&self.name) || self.authority().is_some_and(|a| is_docker_hub(&a))
    }

    fn validate(&self, n: usize) -> Result<(), ConfigError> {
        let bad = |m: String| {
            Err(ConfigError::Invalid(format!(
                "mirror #{n} ({}): {m}",
                self.name
            )))
        };
        let component = !self.name.is_empty()
            && self.name.split(['.', '_', '-']).all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            });
        if !component {
            return bad(
                "name must be one repository path component (lowercase letters, digits, '.', '_', '-'), such as docker.io".into(),
            );
        }
        match url::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                if u.path() != "/" && !u.path().is_empty() {
                    return bad(format!(
                        "url {:?} must name the registry's host, without a path",
                        self.url
                    ));
                }
            }
            _ => return bad(format!("url {:?} is not an http(s) URL", self.url)),
        }
        if self.password.is_some() && self.password_file.is_some() {
            return bad("password and password_file exclude each other".into());
        }
        if (self.password.is_some() || self.password_file.is_some()) != self.username.is_some() {
            return bad("username and a password (or password_file) go together".into());
        }
        if self.tag_ttl.is_zero() {
            return bad("tag_ttl must be above 0".into());
        }
        Ok(())
    }
}

/// Docker Hub's names for itself.
pub fn is_docker_hub(host: &str) -> bool {
    matches!(
        host,
        "docker.io" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com"
    )
}

/// `[gc]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// How often `wharf serve` collects garbage; `0s` turns online collection off.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Nothing younger than this is collected: blob links and manifests a push is still
    /// assembling. Also the floor of every retention rule's `untagged_older_than`.
    #[serde(with = "duration")]
    pub grace_period: Duration,
    /// Whether untagged manifests older than the grace period are deleted (besides what
    /// retention rules delete); a manifest an index or a tag holds, or a referrer of a kept
    /// one, is never untagged garbage.
    pub delete_untagged: bool,
    /// Retention rules, the first matching a repository applying to it.
    pub retention: Vec<RetentionRule>,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval: Duration::from_secs(3600),
            grace_period: Duration::from_secs(3600),
            delete_untagged: false,
            retention: Vec::new(),
        }
    }
}

/// One `[[gc.retention]]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    /// Repository patterns (`*` matches anything, `/` included).
    pub repos: Vec<String>,
    /// Keep the N most recently pushed tags and delete the others (tags matching
    /// `keep_tags` are kept besides and do not count). Without it no tag is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// Tag patterns never deleted (`latest`, `v*`).
    #[serde(default)]
    pub keep_tags: Vec<String>,
    /// Delete untagged manifests older than this (at least the grace period).
    #[serde(
        default,
        with = "optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub untagged_older_than: Option<Duration>,
}

/// How clients prove who they are.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Docker's token authentication: `/v2/` challenges with `Bearer`, and clients fetch a
    /// signed token from wharf's token service (or from an external one being trusted).
    #[default]
    Token,
    /// HTTP basic credentials on every request (distribution's htpasswd mode).
    Basic,
}

/// `[auth]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `token` (the default) or `basic`.
    pub mode: AuthMode,
    /// The users file, as `htpasswd -B` writes it (bcrypt only); re-read when it changes.
    pub htpasswd: Option<PathBuf>,
    /// The token service's URL that challenges name; by default `/token` on the host and
    /// scheme the client used. Required when an external token server is trusted.
    pub realm: Option<String>,
    /// The service name tokens are issued for (their audience).
    pub service: String,
    /// The issuer written in (and required of) tokens.
    pub issuer: String,
    /// The key tokens are signed with: a PEM PKCS#8 P-256 (ES256) or RSA (RS256) key. By
    /// default a P-256 key is generated on first start and kept as `<root>/auth/token-key.pem`.
    pub token_key: Option<PathBuf>,
    /// How long an access token is valid.
    #[serde(with = "duration")]
    pub token_expiry: Duration,
    /// How long a refresh token (what `docker login` keeps) is valid.
    #[serde(with = "duration")]
    pub refresh_expiry: Duration,
    /// An external token server's certificates (PEM): tokens signed by their keys are
    /// trusted, and wharf issues none itself.
    pub trust_certificates: Option<PathBuf>,
    /// An external token server's keys as a JWKS file, instead of (or beside) certificates.
    pub trust_jwks: Option<PathBuf>,
    /// How long a verified password is remembered (then bcrypt runs again).
    #[serde(with = "duration")]
    pub password_cache: Duration,
    /// Groups of users, for rules: `ci = ["robot", "builder"]`.
    pub groups: std::collections::BTreeMap<String, Vec<String>>,
    /// Who may do what where. Without rules every authenticated user may pull, push and
    /// delete everywhere and anonymous clients nothing.
    pub rules: Vec<AccessRule>,
}

/// One `[[auth.rules]]`: the users and groups it is for may do `actions` in repositories
/// matching `repos`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// Repository patterns; `*` matches any run of characters, `/` included.
    pub repos: Vec<String>,
    /// User names; `*` is every authenticated user, `anonymous` a client without credentials.
    #[serde(default)]
    pub users: Vec<String>,
    /// Group names from `[auth.groups]`.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Some of `pull`, `push`, `delete`, or `*` for all three.
    pub actions: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Token,
            htpasswd: None,
            realm: None,
            service: "wharf".into(),
            issuer: "wharf".into(),
            token_key: None,
            token_expiry: Duration::from_secs(300),
            refresh_expiry: Duration::from_secs(30 * 86400),
            trust_certificates: None,
            trust_jwks: None,
            password_cache: Duration::from_secs(300),
            groups: Default::default(),
            rules: Vec::new(),
        }
    }
}

impl AuthConfig {
    /// Whether tokens come from an external server this registry trusts.
    pub fn external(&self) -> bool {
        self.trust_certificates.is_some() || self.trust_jwks.is_some()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.token_expiry.is_zero() || self.refresh_expiry.is_zero() {
            return bad("auth.token_expiry and auth.refresh_expiry must be above 0".into());
        }
        match (self.mode, self.external()) {
            (AuthMode::Basic, true) => {
                return bad("auth.trust_certificates/trust_jwks go with mode = \"token\"".into());
            }
            (_, true) if self.realm.is_none() => {
                return bad(
                    "auth.realm must name the external token server when it is trusted".into(),
                );
            }
            (_, true) if self.htpasswd.is_some() => {
                return bad(
                    "auth.htpasswd and an external token server exclude each other: the external server checks passwords".into(),
                );
            }
            (_, false) if self.htpasswd.is_none() => {
                return bad("auth.htpasswd must name the users file".into());
            }
            _ => {}
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let n = i + 1;
            if rule.repos.is_empty() || rule.actions.is_empty() {
                return bad(format!("auth.rules #{n} needs repos and actions"));
            }
            if rule.users.is_empty() && rule.groups.is_empty() {
                return bad(format!("auth.rules #{n} names no users or groups"));
            }
            if let Some(a) = rule
                .actions
                .iter()
                .find(|a| !matches!(a.as_str(), "pull" | "push" | "delete" | "*"))
            {
                return bad(format!(
                    "auth.rules #{n}: unknown action {a:?} (pull, push, delete or *)"
                ));
            }
            if let Some(g) = rule.groups.iter().find(|g| !self.groups.contains_key(*g)) {
                return bad(format!(
                    "auth.rules #{n}: group {g:?} is not defined in [auth.groups]"
                ));
            }
        }
        Ok(())
    }
}

/// `[server]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// PEM certificate chain; with `tls_key`, the server speaks HTTPS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// How long a client may take to send a request's line and headers (and a TLS client
    /// its handshake); a slower one is disconnected, so half-sent requests cannot hold
    /// connections forever.
    #[serde(with = "duration")]
    pub header_timeout: Duration,
}

/// `[storage]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Root directory: `blobs/`, `uploads/` and `registry.db` live here.
    pub root: PathBuf,
    /// Whether manifests, tags and blobs may be deleted through the API (off by default, as in
    /// distribution: `DELETE` answers 405 `UNSUPPORTED`). Cancelling an upload is always allowed.
    pub delete: bool,
    /// Bytes kept in reserve (`<root>/headroom`) so deletes and garbage collection can still
    /// write when the disk is full; 0 keeps none.
    pub headroom: u64,
}

/// `[uploads]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// An upload session untouched this long is removed, with its data.
    #[serde(with = "duration")]
    pub max_age: Duration,
    /// How often expired sessions are looked for.
    #[serde(with = "duration")]
    pub purge_interval: Duration,
}

/// `[limits]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest manifest accepted, in bytes (larger → 413).
    pub manifest_max_bytes: u64,
    /// Most names one tag list or catalog page holds (a larger `n` is lowered to it); a page
    /// with more after it always carries a `Link` to the next.
    pub list_max_entries: u32,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            version: CONFIG_VERSION,
            server: ServerConfig::default(),
            storage: StorageConfig::default(),
            uploads: UploadConfig::default(),
            limits: LimitsConfig::default(),
            auth: None,
            gc: GcConfig::default(),
            mirror: Vec::new(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            addr: SocketAddr::from(([0, 0, 0, 0], 5000)),
            tls_cert: None,
            tls_key: None,
            shutdown_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(20),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            root: default_root(),
            delete: false,
            headroom: 64 << 20,
        }
    }
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            max_age: Duration::from_secs(24 * 3600),
            purge_interval: Duration::from_secs(600),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            manifest_max_bytes: 4 << 20,
            list_max_entries: 10_000,
        }
    }
}

/// `/var/lib/wharf/registry` as root, else `$XDG_DATA_HOME/wharf/registry`.
pub fn default_root() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return PathBuf::from("/var/lib/wharf/registry");
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("wharf/registry")
}

/// A configuration that cannot be used, naming the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading the config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        source: toml::de::Error,
    },
    /// An environment override does not fit its setting.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// Why it does not fit.
        message: String,
    },
    /// A setting is out of range or inconsistent with another.
    #[error("config: {0}")]
    Invalid(String),
}

/// Command-line values; `None` leaves the setting alone.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--addr`
    pub addr: Option<SocketAddr>,
    /// `--root`
    pub root: Option<PathBuf>,
    /// `--tls-cert`
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`
    pub tls_key: Option<PathBuf>,
    /// `--htpasswd`: turns authentication on with this users file.
    pub htpasswd: Option<PathBuf>,
    /// `--auth-mode`
    pub auth_mode: Option<AuthMode>,
    /// `--mirror`, in order: added after the file's `[[mirror]]` tables, replacing one of the
    /// same name.
    pub mirrors: Vec<MirrorConfig>,
}

impl RegistryConfig {
    /// The defaults, then `file` (if any), then `WHARF_*` variables from `env`, then `cli`.
    pub fn resolve(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        cli: &Overrides,
    ) -> Result<RegistryConfig, ConfigError> {
        let text = match file {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        let mut table: toml::Table =
            toml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: file.map(Path::to_owned).unwrap_or_default(),
                source,
            })?;
        // Parse once as-is so file errors name the file, not the environment.
        if file.is_some() {
            RegistryConfig::deserialize(toml::Value::Table(table.clone())).map_err(|source| {
                ConfigError::Parse {
                    path: file.map(Path::to_owned).unwrap_or_default(),
                    source,
                }
            })?;
        }
        for (var, value) in env {
            let Some(rest) = var.strip_prefix("WHARF_") else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            let Some((section, key)) = SECTIONS
                .iter()
                .find_map(|s| Some((*s, rest.strip_prefix(s)?.strip_prefix('_')?)))
            else {
                continue;
            };
            let Some(kind) = setting_kind(section, key) else {
                continue;
            };
            let value = match kind {
                Kind::Int => toml::Value::Integer(value.parse().map_err(|_| ConfigError::Env {
                    var: var.clone(),
                    message: format!("{value:?} is not a whole number"),
                })?),
                Kind::Text => toml::Value::String(value),
                Kind::Bool => toml::Value::Boolean(match value.to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    _ => {
                        return Err(ConfigError::Env {
                            var: var.clone(),
                            message: format!("{value:?} is not true or false"),
                        });
                    }
                }),
            };
            let entry = table
                .entry(section.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(t) = entry {
                t.insert(key.to_owned(), value);
            }
        }
        let mut config = RegistryConfig::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(a) = cli.addr {
            config.server.addr = a;
        }
        if let Some(r) = &cli.root {
            config.storage.root.clone_from(r);
        }
        if cli.tls_cert.is_some() {
            config.server.tls_cert.clone_from(&cli.tls_cert);
        }
        if cli.tls_key.is_some() {
            config.server.tls_key.clone_from(&cli.tls_key);
        }
        if cli.htpasswd.is_some() || cli.auth_mode.is_some() {
            let auth = config.auth.get_or_insert_with(AuthConfig::default);
            if cli.htpasswd.is_some() {
                auth.htpasswd.clone_from(&cli.htpasswd);
            }
            if let Some(m) = cli.auth_mode {
                auth.mode = m;
            }
        }
        for m in &cli.mirrors {
            match config.mirror.iter_mut().find(|c| c.name == m.name) {
                Some(c) => {
                    c.url.clone_from(&m.url);
                }
                None => config.mirror.push(m.clone()),
            }
        }
        if !config.mirror.is_empty() && !config.mirror.iter().any(|m| m.default) {
            config.mirror[0].default = true;
        }
        config.validate()?;
        Ok(config)
    }

    /// A configuration rooted at `root` with every other setting at its default.
    pub fn with_root(root: &Path) -> RegistryConfig {
        let mut c = RegistryConfig::default();
        c.storage.root = root.to_owned();
        c
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.version != CONFIG_VERSION {
            return Err(ConfigError::Invalid(format!(
                "version = {} is not supported (this wharf reads version {CONFIG_VERSION})",
                self.version
            )));
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "server.tls_cert and server.tls_key go together: set both or neither".into(),
            ));
        }
        if self.limits.manifest_max_bytes == 0 {
            return Err(ConfigError::Invalid(
                "limits.manifest_max_bytes must be above 0".into(),
            ));
        }
        if self.limits.list_max_entries == 0 {
            return Err(ConfigError::Invalid(
                "limits.list_max_entries must be above 0".into(),
            ));
        }
        if self.server.header_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "server.header_timeout must be above 0".into(),
            ));
        }
        if let Some(auth) = &self.auth {
            auth.validate()?;
        }
        for (i, r) in self.gc.retention.iter().enumerate() {
            if r.repos.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "gc.retention #{} names no repos",
                    i + 1
                )));
            }
        }
        for (i, m) in self.mirror.iter().enumerate() {
            m.validate(i + 1)?;
            if self.mirror[..i].iter().any(|o| o.name == m.name) {
                return Err(ConfigError::Invalid(format!(
                    "mirror #{}: the name {:?} is used twice",
                    i + 1,
                    m.name
                )));
            }
        }
        if self.mirror.iter().filter(|m| m.default).count() > 1 {
            return Err(ConfigError::Invalid(
                "more than one [[mirror]] says default = true".into(),
            ));
        }
        if self.uploads.purge_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "uploads.purge_interval must be above 0".into(),
            ));
        }
        Ok(())
    }

    /// The resolved configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

const SECTIONS: [&str; 6] = ["server", "storage", "uploads", "limits", "auth", "gc"];

enum Kind {
    Int,
    Text,
    Bool,
}

fn setting_kind(section: &str, key: &str) -> Option<Kind> {
    match (section, key) {
        ("limits", "manifest_max_bytes" | "list_max_entries") | ("storage", "headroom") => {
            Some(Kind::Int)
        }
        ("storage", "delete") | ("gc", "delete_untagged") => Some(Kind::Bool),
        ("server", "addr" | "tls_cert" | "tls_key" | "shutdown_timeout" | "header_timeout")
        | ("storage", "root")
        | ("gc", "interval" | "grace_period")
        | (
            "auth",
            "mode" | "htpasswd" | "realm" | "service" | "issuer" | "token_key" | "token_expiry"
            | "refresh_expiry" | "trust_certificates" | "trust_jwks" | "password_cache",
        )
        | ("uploads", "max_age" | "purge_interval") => Some(Kind::Text),
        _ => None,
    }
}

/// An optional duration, written as [`duration`] writes one.
mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "super::duration")] Duration);
        Ok(Some(Wrapped::deserialize(d)?.0))
    }
}

/// Durations written as `90s`, `15m`, `24h`, `7d` or a plain number of seconds.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        let secs = d.as_secs();
        let text = match secs {
            s if s != 0 && s % 86400 == 0 => format!("{}d", s / 86400),
            s if s != 0 && s % 3600 == 0 => format!("{}h", s / 3600),
            s if s != 0 && s % 60 == 0 => format!("{}m", s / 60),
            s => format!("{s}s"),
        };
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => parse(&t).map_err(serde::de::Error::custom),
        }
    }

    pub fn parse(text: &str) -> Result<Duration, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{text:?} is not a duration like 90s, 15m, 24h or 7d"))?;
        let mult = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            _ => {
                return Err(format!(
                    "{text:?}: unknown unit {unit:?} (use s, m, h or d)"
                ));
            }
        };
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{text:?} is too long"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn cli_beats_env_beats_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wharf.toml");
        std::fs::write(
            &file,
            "version = 1\n[server]\naddr = \"127.0.0.1:6000\"\n[uploads]\nmax_age = \"2h\"\n[storage]\nroot = \"/from/file\"\n",
        )
        .unwrap();
        let c = RegistryConfig::resolve(
            Some(&file),
            env(&[
                ("WHARF_UPLOADS_MAX_AGE", "30m"),
                ("WHARF_STORAGE_ROOT", "/from/env"),
                ("PATH", "/bin"),
            ]),
            &Overrides {
                root: Some("/from/cli".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(c.server.addr, "127.0.0.1:6000".parse().unwrap());
        assert_eq!(c.uploads.max_age, Duration::from_secs(1800));
        assert_eq!(c.storage.root, PathBuf::from("/from/cli"));
        assert_eq!(c.limits.manifest_max_bytes, 4 << 20);
        let shown = c.to_toml();
        assert!(shown.contains("max_age = \"30m\""), "{shown}");
        let again: RegistryConfig = toml::from_str(&shown).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn deletes_are_off_unless_turned_on() {
        let c = RegistryConfig::resolve(None, env(&[]), &Overrides::default()).unwrap();
        assert!(
            !c.storage.delete,
            "deletes are off by default, as in distribution"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wharf.toml");
        std::fs::write(&file, "[storage]\ndelete = true\n").unwrap();
        let c = RegistryConfig::resolve(Some(&file), env(&[]), &Overrides::default()).unwrap();
        assert!(c.storage.delete);
        let c = RegistryConfig::resolve(
            Some(&file),
            env(&[("WHARF_STORAGE_DELETE", "false")]),
            &Overrides::default(),
        )
        .unwrap();
        assert!(!c.storage.delete, "the environment beats the file");
        let e = RegistryConfig::resolve(
            None,
            env(&[("WHARF_STORAGE_DELETE", "maybe")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("WHARF_STORAGE_DELETE"), "{e}");
    }

    #[test]
    fn the_deploy_example_is_valid() {
        let text = include_str!("../../deploy/registry.toml");
        let c: RegistryConfig = toml::from_str(text).unwrap();
        assert_eq!(c.server.addr, SocketAddr::from(([0, 0, 0, 0], 5000)));
        assert_eq!(c.uploads.max_age, Duration::from_secs(86400));
    }

    #[test]
    fn bad_settings_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wharf.toml");
        std::fs::write(&file, "[server]\nadress = \"x\"\n").unwrap();
        let e = RegistryConfig::resolve(Some(&file), env(&[]), &Overrides::default()).unwrap_err();
        let e = wharf_common::error::Chain(&e).to_string();
        assert!(e.contains("wharf.toml") && e.contains("adress"), "{e}");
        let e = RegistryConfig::resolve(
            None,
            env(&[("WHARF_LIMITS_MANIFEST_MAX_BYTES", "lots")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("WHARF_LIMITS_MANIFEST_MAX_BYTES"), "{e}");
        let e = RegistryConfig::resolve(
            None,
            env(&[("WHARF_UPLOADS_MAX_AGE", "3 weeks")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("3 weeks"), "{e}");
        let e = RegistryConfig::resolve(
            None,
            env(&[]),
            &Overrides {
                tls_cert: Some("/c.pem".into()),
                ..Overrides::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tls_key"), "{e}");
    }
}

#[cfg(test)]
mod mirror_tests {
    use super::*;

    fn resolve(file: &str, flags: &[&str]) -> Result<RegistryConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.toml");
        std::fs::write(&path, file).unwrap();
        let cli = Overrides {
            mirrors: flags
                .iter()
                .map(|f| MirrorConfig::from_flag(f).unwrap())
                .collect(),
            ..Overrides::default()
        };
        RegistryConfig::resolve(Some(&path), Vec::new(), &cli)
    }

    #[test]
    fn flags_name_docker_hub_a_host_or_name_and_url() {
        let c = resolve("", &["docker.io", "ghcr.io", "up=http://127.0.0.1:5001/"]).unwrap();
        let got: Vec<(&str, &str, bool)> = c
            .mirror
            .iter()
            .map(|m| (m.name.as_str(), m.url.as_str(), m.default))
            .collect();
        assert_eq!(
            got,
            [
                ("docker.io", DOCKER_HUB_URL, true),
                ("ghcr.io", "https://ghcr.io", false),
                ("up", "http://127.0.0.1:5001", false),
            ]
        );
        assert!(c.mirror[0].is_docker_hub());
        assert!(!c.mirror[2].is_docker_hub());
        assert_eq!(c.mirror[2].authority().as_deref(), Some("127.0.0.1:5001"));
        assert_eq!(c.mirror[0].tag_ttl, Duration::from_secs(300));
    }

    #[test]
    fn tables_carry_credentials_the_ttl_and_the_default_and_hide_the_password() {
        let c = resolve(
            r#"
[[mirror]]
name = "docker.io"
url = "https://registry-1.docker.io"
username = "me"
password = "s3cret"
tag_ttl = "10m"

[[mirror]]
name = "quay.io"
url = "https://quay.io"
default = true
"#,
            &["ghcr.io"],
        )
        .unwrap();
        let hub = &c.mirror[0];
        assert_eq!(hub.password.as_deref(), Some("s3cret"));
        assert_eq!(hub.tag_ttl, Duration::from_secs(600));
        assert!(!hub.default && c.mirror[1].default && !c.mirror[2].default);
        let shown = c.to_toml();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("password = \"********\""), "{shown}");
    }

    #[test]
    fn bad_mirrors_are_refused_naming_the_table_and_the_setting() {
        let cases = [
            (
                "name = \"Docker.io\"\nurl = \"https://x\"",
                "one repository path component",
            ),
            (
                "name = \"a/b\"\nurl = \"https://x\"",
                "one repository path component",
            ),
            ("name = \"up\"\nurl = \"ftp://x\"", "not an http(s) URL"),
            ("name = \"up\"\nurl = \"https://x/v2\"", "without a path"),
            (
                "name = \"up\"\nurl = \"https://x\"\npassword = \"p\"",
                "go together",
            ),
            (
                "name = \"up\"\nurl = \"https://x\"\ntag_ttl = \"0s\"",
                "tag_ttl",
            ),
        ];
        for (table, expect) in cases {
            let err = resolve(&format!("[[mirror]]\n{table}\n"), &[])
                .map(|_| ())
                .unwrap_err();
            let text = wharf_common::error::Chain(&err).to_string();
            assert!(text.contains(expect), "{table}: {text}");
        }
        let twice = resolve("", &["docker.io", "docker.io=https://mirror.gcr.io"]).unwrap();
        assert_eq!(
            twice.mirror.len(),
            1,
            "a flag replaces the mirror of its name"
        );
        assert_eq!(twice.mirror[0].url, "https://mirror.gcr.io");
        let two_defaults = "[[mirror]]\nname = \"a\"\nurl = \"https://a\"\ndefault = true\n\
            [[mirror]]\nname = \"b\"\nurl = \"https://b\"\ndefault = true\n";
        let err = resolve(two_defaults, &[]).unwrap_err().to_string();
        assert!(err.contains("more than one"), "{err}");
    }
}
