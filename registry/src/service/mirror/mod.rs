//! The pull-through mirror: `[[mirror]]` upstreams whose images are fetched when a client asks
//! and kept in the registry's own storage, under `<mirror name>/<upstream path>`
//! (`docker.io/library/busybox`), whichever way the client named them.
//!
//! Routing (see [`Mirrors::route`]): containerd's `?ns=<upstream host>`, a path whose first
//! component is a mirror's name (`host:5000/docker.io/library/busybox`, podman's and skopeo's
//! mirrors), or no upstream at all (dockerd's `registry-mirrors`), which means the default
//! upstream. Names only a mirror can hold (a named upstream, and Docker Hub's `library/` and
//! one-component names) are read-only here; any other un-prefixed name is a local repository
//! first, and the default upstream's when nothing local has it, so pushes beside mirrored
//! content work.
//!
//! Filling: manifests by digest are immutable and never asked for again; a tag is served from
//! what was kept within its upstream's `tag_ttl`, then checked with a HEAD (free on Docker Hub)
//! and fetched only if it moved; when the upstream cannot answer, what was kept is served
//! (stale) and the event counted. Blobs: see [`fill`].

pub(super) mod fill;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use wharf_common::client::{Client, ClientConfig, ClientError, Credentials, Observer};
use wharf_common::reference::RepoName;

use super::{Manifest, ManifestRef, Registry, Repository, ServiceError, manifest};
use crate::config::{MirrorConfig, is_docker_hub};
use crate::metadata::{ManifestRecord, NewManifest};
use crate::metrics::{Metrics, MirrorMetric};

pub use fill::{Flight, MirroredBlob};

/// How long one upstream exchange (a manifest, or a blob's response headers) may take before
/// the client is answered without it.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// The configured upstreams.
#[derive(Default)]
pub struct Mirrors {
    upstreams: Vec<Arc<Upstream>>,
    default: Option<usize>,
}

/// One upstream registry.
pub struct Upstream {
    config: MirrorConfig,
    client: Client,
    /// Its host and port, as repository names of the client carry it.
    domain: String,
    hub: bool,
    metrics: Arc<Metrics>,
    /// The last `Retry-After` it sent with a 429, in seconds.
    retry_after: Arc<Mutex<Option<u64>>>,
    /// When each kept tag (stored repository, tag) was last confirmed upstream.
    checked: Mutex<HashMap<ManifestKey, Instant>>,
    /// One fetch at a time per manifest (stored repository, reference).
    fetching: Mutex<HashMap<ManifestKey, Arc<FetchLock>>>,
}

/// A manifest of a mirror: (stored repository, tag or digest).
type ManifestKey = (String, String);

/// Held while one manifest is fetched; keeps how the last attempt failed, so that clients
/// waiting behind it get that answer instead of waiting out the upstream one after another.
type FetchLock = tokio::sync::Mutex<Option<(Instant, Failure)>>;

/// How long a failed fetch's answer is given to clients that waited for it.
const FAILURE_REUSE: Duration = Duration::from_secs(5);

/// Where a mirrored request goes.
#[derive(Clone)]
pub struct Target {
    /// The upstream.
    pub upstream: Arc<Upstream>,
    /// Where its content is kept here.
    pub stored: Repository,
    /// Its name on the upstream.
    remote: String,
    /// Only the upstream can hold this name: nothing local is looked at, pushes are refused.
    pub exclusive: bool,
}

impl Mirrors {
    /// The upstreams of `configs` (password files are read now).
    pub fn new(configs: &[MirrorConfig], metrics: &Arc<Metrics>) -> Result<Mirrors, ServiceError> {
        let mut upstreams = Vec::new();
        for c in configs {
            upstreams.push(Arc::new(Upstream::new(c, metrics)?));
        }
        Ok(Mirrors {
            default: configs.iter().position(|c| c.default),
            upstreams,
        })
    }

    /// Whether any upstream is configured.
    pub fn is_empty(&self) -> bool {
        self.upstreams.is_empty()
    }

    /// Where a request for `repo` goes, `ns` being containerd's `?ns=`: `None` for a local
    /// repository.
    pub fn route(&self, repo: &str, ns: Option<&str>) -> Option<Target> {
        // A `ns` no upstream answers to (the mirror's own host, say) says nothing: the name
        // is routed as if it came without one.
        if let Some(up) = ns.and_then(|ns| self.upstreams.iter().find(|u| u.answers_to(ns))) {
            return up.target(repo, true);
        }
        if let Some((first, rest)) = repo.split_once('/')
            && let Some(up) = self.upstreams.iter().find(|u| u.config.name == first)
        {
            return up.target(rest, true);
        }
        let up = self.upstreams.get(self.default?)?;
        let exclusive = up.hub && (!repo.contains('/') || repo.starts_with("library/"));
        up.target(repo, exclusive)
    }
}

impl Upstream {
    fn new(c: &MirrorConfig, metrics: &Arc<Metrics>) -> Result<Upstream, ServiceError> {
        let setup = |reason: String| ServiceError::MirrorSetup {
            name: c.name.clone(),
            reason,
        };
        let url = url::Url::parse(&c.url).map_err(|e| setup(e.to_string()))?;
        let domain = c
            .authority()
            .ok_or_else(|| setup("the url names no host".into()))?;
        let scheme = if url.scheme() == "http" {
            "http"
        } else {
            "https"
        };
        let password = match (&c.password, &c.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| setup(format!("reading password_file {}: {e}", f.display())))?
                    .trim_end_matches(['\n', '\r'])
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let host_credentials = match (&c.username, password) {
            (Some(u), Some(p)) => vec![(
                domain.clone(),
                Credentials {
                    username: u.clone(),
                    password: p,
                },
            )],
            _ => Vec::new(),
        };
        let retry_after = Arc::new(Mutex::new(None));
        let observer = {
            let metrics = metrics.clone();
            let name = c.name.clone();
            let retry_after = retry_after.clone();
            Observer(Arc::new(move |status, headers: &HeaderMap| {
                observe(&metrics, &name, &retry_after, status, headers);
            }))
        };
        let client = Client::new(ClientConfig {
            schemes: vec![(domain.clone(), scheme)],
            host_credentials,
            observer: Some(observer),
            user_agent: format!("wharf-mirror/{}", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        })
        .map_err(|e| setup(wharf_common::error::Chain(&e).to_string()))?;
        Ok(Upstream {
            hub: c.is_docker_hub(),
            config: c.clone(),
            client,
            domain,
            metrics: metrics.clone(),
            retry_after,
            checked: Mutex::new(HashMap::new()),
            fetching: Mutex::new(HashMap::new()),
        })
    }

    /// Its name in the configuration.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    fn answers_to(&self, ns: &str) -> bool {
        ns == self.config.name || ns == self.domain || (self.hub && is_docker_hub(ns))
    }

    fn target(self: &Arc<Self>, path: &str, exclusive: bool) -> Option<Target> {
        let remote = if self.hub && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        let stored = Repository::parse(&format!("{}/{remote}", self.config.name)).ok()?;
        Some(Target {
            upstream: self.clone(),
            stored,
            remote,
            exclusive,
        })
    }

    /// `asked` within [`UPSTREAM_TIMEOUT`]: a client is answered, with or without the
    /// upstream.
    async fn within<T>(
        &self,
        asked: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        tokio::time::timeout(UPSTREAM_TIMEOUT, asked)
            .await
            .unwrap_or_else(|_| {
                Err(Failure {
                    kind: FailureKind::Unavailable,
                    reason: format!(
                        "upstream {}: no answer within {}s",
                        self.config.name,
                        UPSTREAM_TIMEOUT.as_secs()
                    ),
                })
            })
    }

    fn count(&self, what: MirrorMetric, n: u64) {
        self.metrics.mirror(what, &self.config.name, 0, n);
    }

    async fn repository(&self, remote: &str) -> Result<wharf_common::client::Repository, Failure> {
        let name = RepoName::new(&self.domain, remote).map_err(|e| Failure {
            kind: FailureKind::NotFound,
            reason: e.to_string(),
        })?;
        self.client
            .repository(&name)
            .await
            .map_err(|e| self.failure(&e))
    }

    fn fresh(&self, stored: &Repository, tag: &str) -> bool {
        let key = (stored.as_str().to_owned(), tag.to_owned());
        self.checked
            .lock()
            .ok()
            .and_then(|m| m.get(&key).copied())
            .is_some_and(|at| at.elapsed() < self.config.tag_ttl)
    }

    fn mark_fresh(&self, stored: &Repository, tag: &str) {
        if let Ok(mut m) = self.checked.lock() {
            // Entries past their TTL say nothing more than no entry.
            if m.len() >= 4096 {
                let ttl = self.config.tag_ttl;
                m.retain(|_, at| at.elapsed() < ttl);
            }
            m.insert((stored.as_str().to_owned(), tag.to_owned()), Instant::now());
        }
    }

    /// The lock one manifest's fetch holds.
    fn fetch_lock(&self, key: ManifestKey) -> Arc<FetchLock> {
        let mut map = self
            .fetching
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Locks nobody holds or waits for are dropped as others are taken.
        map.retain(|_, l| Arc::strong_count(l) > 1);
        map.entry(key).or_default().clone()
    }

    /// What a client error of the upstream means for the client of the mirror.
    fn failure(&self, e: &ClientError) -> Failure {
        let reason = format!(
            "upstream {}: {}",
            self.config.name,
            wharf_common::error::Chain(e)
        );
        let kind = match e {
            ClientError::NotFound { .. } => FailureKind::NotFound,
            // Docker Hub answers 401 for a repository that does not exist, but so does a token
            // server in trouble: not found for the client, yet kept content is still served.
            ClientError::Unauthorized { .. } => FailureKind::Denied,
            ClientError::Status { status: 404, .. } => FailureKind::NotFound,
            ClientError::Status { status: 429, .. } => {
                FailureKind::Throttled(self.retry_after.lock().ok().and_then(|r| *r))
            }
            ClientError::Http { .. } => {
                self.metrics
                    .mirror(MirrorMetric::UpstreamRequest, &self.config.name, 0, 1);
                FailureKind::Unavailable
            }
            _ => FailureKind::Unavailable,
        };
        Failure { kind, reason }
    }
}

/// Counts an upstream's answer; notes its rate limit and `Retry-After`.
fn observe(
    metrics: &Metrics,
    name: &str,
    retry_after: &Mutex<Option<u64>>,
    status: u16,
    headers: &HeaderMap,
) {
    metrics.mirror(MirrorMetric::UpstreamRequest, name, status, 1);
    let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    // Docker Hub: `ratelimit-remaining: 76;w=21600`.
    if let Some(left) = header("ratelimit-remaining")
        .and_then(|v| v.split(';').next())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        metrics.mirror_ratelimit(name, left);
        tracing::debug!(upstream = name, remaining = left, "upstream rate limit");
    }
    if status == 429 {
        let wait = header("retry-after").and_then(retry_after_secs);
        metrics.mirror(MirrorMetric::Throttled, name, 0, 1);
        tracing::warn!(upstream = name, retry_after = ?wait, "upstream throttles this mirror (429)");
        if let Ok(mut r) = retry_after.lock() {
            *r = wait;
        }
    }
}

/// A `Retry-After` value in seconds: a number of seconds, or an HTTP date (seconds from now,
/// at least 1).
fn retry_after_secs(value: &str) -> Option<u64> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(secs);
    }
    let at = wharf_common::time::parse_http_date(v)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(u64::try_from(at).ok()?.saturating_sub(now).max(1))
}

/// Why an upstream could not give what was asked; cloneable, so that every client sharing a
/// fetch gets it.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    kind: FailureKind,
    reason: String,
}

#[derive(Clone, Debug)]
enum FailureKind {
    NotFound,
    Denied,
    Throttled(Option<u64>),
    Unavailable,
}

impl Failure {
    fn into_service(self, not_found: impl FnOnce(String) -> ServiceError) -> ServiceError {
        match self.kind {
            FailureKind::NotFound | FailureKind::Denied => not_found(self.reason),
            FailureKind::Throttled(retry_after) => ServiceError::Upstream {
                reason: self.reason,
                throttled: true,
                retry_after,
            },
            FailureKind::Unavailable => ServiceError::Upstream {
                reason: self.reason,
                throttled: false,
                retry_after: None,
            },
        }
    }
}

impl Registry {
    /// The configured upstreams.
    pub fn mirrors(&self) -> &Mirrors {
        &self.inner.mirrors
    }

    /// A manifest of a mirrored repository: what is kept when it is fresh, else the
    /// upstream's (stored first), else what is kept, stale, when the upstream cannot answer.
    pub async fn mirrored_manifest(
        &self,
        t: &Target,
        r: &ManifestRef,
    ) -> Result<Manifest, ServiceError> {
        let up = &t.upstream;
        let key = (t.stored.as_str().to_owned(), r.key().to_owned());
        let lock = up.fetch_lock(key);
        let mut waited = false;
        let mut last_failure = match lock.try_lock() {
            Ok(g) => g,
            Err(_) => {
                waited = true;
                lock.lock().await
            }
        };
        let kept = match self.manifest(&t.stored, r).await {
            Ok(m) => Some(m),
            Err(ServiceError::ManifestUnknown(_)) => None,
            Err(e) => return Err(e),
        };
        if let Some(m) = &kept {
            let fresh = match r {
                ManifestRef::Digest(_) => true,
                // Whoever held the lock just asked the upstream, and it answered.
                ManifestRef::Tag(tag) => {
                    (waited && last_failure.is_none()) || up.fresh(&t.stored, tag)
                }
            };
            if fresh {
                up.count(MirrorMetric::Hit, 1);
                return Ok(m.clone());
            }
        }
        let recent = last_failure
            .as_ref()
            .filter(|(at, _)| waited && at.elapsed() < FAILURE_REUSE)
            .map(|(_, f)| f.clone());
        let fetched = match recent {
            Some(f) => Err(f),
            None => up.within(self.fetch_manifest(t, r, kept.as_ref())).await,
        };
        *last_failure = fetched.as_ref().err().map(|f| (Instant::now(), f.clone()));
        match (fetched, kept) {
            (Ok(m), _) => Ok(m),
            (Err(f), Some(m)) if !matches!(f.kind, FailureKind::NotFound) => {
                up.count(MirrorMetric::Stale, 1);
                tracing::warn!(repo = t.stored.as_str(), reference = r.key(), reason = %f.reason, "serving a kept manifest: the upstream could not be asked");
                Ok(m)
            }
            (Err(f), _) => Err(f.into_service(ServiceError::ManifestUnknown)),
        }
    }

    /// A mirrored repository's tags: the upstream's list, paged as the registry pages its own;
    /// what is kept when the upstream cannot answer.
    pub async fn mirrored_tags(
        &self,
        t: &Target,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<crate::metadata::Page, ServiceError> {
        let up = &t.upstream;
        let asked = async {
            let repo = up.repository(&t.remote).await?;
            repo.list_tags().await.map_err(|e| up.failure(&e))
        };
        match up.within(asked).await {
            Ok(mut tags) => {
                tags.sort();
                tags.dedup();
                let size = self.page_size(n) as usize;
                let mut after: Vec<String> = tags
                    .into_iter()
                    .filter(|tag| last.is_none_or(|l| tag.as_str() > l))
                    .collect();
                let more = after.len() > size;
                after.truncate(size);
                Ok(crate::metadata::Page { names: after, more })
            }
            Err(f) if matches!(f.kind, FailureKind::NotFound | FailureKind::Denied) => {
                Err(ServiceError::NameUnknown(f.reason))
            }
            Err(f) => {
                up.count(MirrorMetric::Stale, 1);
                tracing::warn!(repo = t.stored.as_str(), reason = %f.reason, "listing kept tags: the upstream could not be asked");
                self.tags(&t.stored, n, last).await
            }
        }
    }

    async fn fetch_manifest(
        &self,
        t: &Target,
        r: &ManifestRef,
        kept: Option<&Manifest>,
    ) -> Result<Manifest, Failure> {
        let up = &t.upstream;
        let repo = up.repository(&t.remote).await?;
        if let (ManifestRef::Tag(tag), Some(k)) = (r, kept) {
            // A HEAD, which Docker Hub does not count as a pull: fetched again only if moved.
            let now = repo.head_manifest(tag).await.map_err(|e| up.failure(&e))?;
            if now.as_ref() == Some(&k.digest) {
                up.mark_fresh(&t.stored, tag);
                up.count(MirrorMetric::Hit, 1);
                return Ok(k.clone());
            }
        }
        let fetched = repo
            .get_manifest(r.key())
            .await
            .map_err(|e| up.failure(&e))?;
        up.count(MirrorMetric::Miss, 1);
        let stored = self
            .keep_manifest(&t.stored, r, fetched)
            .await
            .map_err(|e| Failure {
                kind: FailureKind::Unavailable,
                reason: format!(
                    "keeping a manifest of upstream {}: {}",
                    up.name(),
                    wharf_common::error::Chain(&e)
                ),
            })?;
        if let ManifestRef::Tag(tag) = r {
            up.mark_fresh(&t.stored, tag);
        }
        Ok(stored)
    }

    /// Stores a manifest fetched from an upstream, byte for byte, under `r`. Its blobs and
    /// child manifests are recorded as references but not required: they are fetched when a
    /// client asks for them.
    async fn keep_manifest(
        &self,
        stored: &Repository,
        r: &ManifestRef,
        fetched: wharf_common::blob::Fetched,
    ) -> Result<Manifest, ServiceError> {
        let parsed = manifest::parse(&fetched.bytes, Some(&fetched.media_type))
            .map_err(ServiceError::ManifestInvalid)?;
        self.inner.headroom.admit(fetched.bytes.len() as u64)?;
        let mut optional = parsed.blobs;
        optional.extend(parsed.manifests);
        optional.extend(parsed.foreign);
        optional.sort();
        optional.dedup();
        let record = NewManifest {
            repo: stored.as_str().to_owned(),
            digest: fetched.digest.clone(),
            media_type: parsed.media_type.clone(),
            content: fetched.bytes.clone(),
            artifact_type: parsed.artifact_type,
            subject: parsed.subject,
            annotations: parsed.annotations,
            children: Vec::new(),
            optional,
            tag: match r {
                ManifestRef::Tag(t) => Some(t.clone()),
                ManifestRef::Digest(_) => None,
            },
        };
        self.inner.meta.put_manifest(&record).await?;
        self.inner.cache.invalidate(stored.as_str());
        tracing::info!(
            repo = stored.as_str(),
            reference = r.key(),
            digest = %fetched.digest,
            "mirrored manifest kept"
        );
        Ok(Arc::new(ManifestRecord {
            digest: fetched.digest,
            media_type: parsed.media_type,
            content: fetched.bytes,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirrors(flags: &[&str]) -> Mirrors {
        let mut configs: Vec<MirrorConfig> = flags
            .iter()
            .map(|f| MirrorConfig::from_flag(f).unwrap())
            .collect();
        configs[0].default = true;
        Mirrors::new(&configs, &Arc::new(Metrics::default())).unwrap()
    }

    fn route(m: &Mirrors, repo: &str, ns: Option<&str>) -> Option<(String, String, bool)> {
        m.route(repo, ns)
            .map(|t| (t.stored.as_str().to_owned(), t.remote.clone(), t.exclusive))
    }

    #[test]
    fn every_client_reaches_its_upstream() {
        let m = mirrors(&["docker.io", "up=http://127.0.0.1:5001"]);
        let hub = |s: &str, r: &str, e| Some((s.to_owned(), r.to_owned(), e));
        // dockerd's registry-mirrors: no upstream named.
        assert_eq!(
            route(&m, "library/busybox", None),
            hub("docker.io/library/busybox", "library/busybox", true)
        );
        assert_eq!(
            route(&m, "busybox", None),
            hub("docker.io/library/busybox", "library/busybox", true)
        );
        // Not library/: local first, then Docker Hub.
        assert_eq!(
            route(&m, "team/app", None),
            hub("docker.io/team/app", "team/app", false)
        );
        // containerd's ?ns=, by name, by Docker Hub's other names, by host and port.
        assert_eq!(
            route(&m, "library/busybox", Some("docker.io")),
            hub("docker.io/library/busybox", "library/busybox", true)
        );
        assert_eq!(
            route(&m, "team/app", Some("registry-1.docker.io")),
            hub("docker.io/team/app", "team/app", true)
        );
        assert_eq!(
            route(&m, "x/y", Some("127.0.0.1:5001")),
            hub("up/x/y", "x/y", true)
        );
        // A ns nobody mirrors says nothing: a local repository, or whatever the name says.
        assert_eq!(
            route(&m, "x/y", Some("quay.io")),
            hub("docker.io/x/y", "x/y", false)
        );
        assert_eq!(
            route(&m, "docker.io/library/busybox", Some("127.0.0.1:5000")),
            hub("docker.io/library/busybox", "library/busybox", true),
            "a mirrored name stays read-only whatever ns says"
        );
        // A path prefix (podman, skopeo, any client that can only change the host).
        assert_eq!(
            route(&m, "docker.io/busybox", None),
            hub("docker.io/library/busybox", "library/busybox", true)
        );
        assert_eq!(route(&m, "up/a/b", None), hub("up/a/b", "a/b", true));
        // No library/ for other upstreams.
        assert_eq!(
            route(&m, "up/alpine", None),
            hub("up/alpine", "alpine", true)
        );
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        assert_eq!(retry_after_secs(" 120 "), Some(120));
        assert_eq!(
            retry_after_secs("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(1),
            "past: 1 s"
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // 2026-12-08T01:45:00Z → "Tue, 08 Dec 2026 01:45:00 GMT" (the weekday is not read).
        let t = wharf_common::time::rfc3339(i64::try_from(now).unwrap() + 600);
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let month = months[t[5..7].parse::<usize>().unwrap() - 1];
        let later = format!("Mon, {} {month} {} {} GMT", &t[8..10], &t[..4], &t[11..19]);
        let secs = retry_after_secs(&later).unwrap();
        assert!((598..=600).contains(&secs), "{later}: {secs}");
        assert_eq!(retry_after_secs("soon"), None);
    }

    #[test]
    fn without_a_default_upstream_unnamed_repositories_are_local() {
        let configs = [MirrorConfig::from_flag("ghcr.io").unwrap()];
        let m = Mirrors::new(&configs, &Arc::new(Metrics::default())).unwrap();
        assert!(m.route("library/busybox", None).is_none());
        assert!(m.route("ghcr.io/owner/tool", None).is_some());
    }
}
