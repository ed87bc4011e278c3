//! Garbage collection and retention, online inside `wharf serve` (`[gc] interval`) and from
//! `wharf gc` on a registry root, with or without a server running on it.
//!
//! A collection reads everything once ([`GcSnapshot`]), decides in memory what goes
//! ([`plan`]), then deletes with conditions that re-check each row in the deleting
//! transaction, so a push racing it either keeps what it references or fails with
//! `MANIFEST_BLOB_UNKNOWN`; nothing is left pointing at a missing blob:
//! 1. retention: tags beyond a rule's `keep_last` (tags matching `keep_tags` stay);
//! 2. untagged manifests older than the grace period (with `delete_untagged`, or a rule's
//!    `untagged_older_than`): what no tag, no kept index and no kept subject holds;
//! 3. blob links no remaining manifest of the repository references, last linked before the
//!    grace period;
//! 4. blobs no repository links any more, rows then bytes, under the sweep lock (below);
//! 5. blob files no row knows (left by a crash, or by blob deletes before collection existed),
//!    written before the grace period.
//!
//! The sweep lock is `<root>/gc.lock`: committing a blob (rename into place, then link) holds
//! it shared, deleting blobs holds it exclusively, so a blob being pushed again is never
//! deleted between its commit and its link. It is an `flock`, so a `wharf gc` process and a
//! server exclude each other too; inside one process a write-preferring lock in front of it
//! keeps a busy server's commits from starving its own collection.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use wharf_common::digest::Digest;

use super::{Registry, ServiceError};
use crate::auth::rules::matches;
use crate::config::RetentionRule;
use crate::metadata::{GcRepo, GcSnapshot};
use crate::storage::{StorageError, blocking};

/// What to collect.
#[derive(Clone, Debug, Default)]
pub struct GcOptions {
    /// Report what would go; delete nothing.
    pub dry_run: bool,
    /// Delete untagged manifests older than the grace period everywhere.
    pub delete_untagged: bool,
    /// Nothing younger is collected.
    pub grace: Duration,
    /// Retention rules; the first matching a repository applies.
    pub retention: Vec<RetentionRule>,
}

/// What a collection deleted (or, dry, would delete).
#[derive(Clone, Debug, Default)]
pub struct GcReport {
    /// Whether nothing was deleted.
    pub dry_run: bool,
    /// Tags deleted by retention: (repository, tag).
    pub tags: Vec<(String, String)>,
    /// Manifests deleted: (repository, digest).
    pub manifests: Vec<(String, String)>,
    /// Blob links removed from repositories.
    pub links: usize,
    /// Blobs deleted: digest and size.
    pub blobs: Vec<(String, u64)>,
    /// Blob files no row knew, deleted: digest and size.
    pub stray_files: Vec<(String, u64)>,
    /// How long it took.
    pub took: Duration,
}

impl GcReport {
    /// Bytes freed (or that would be).
    pub fn freed(&self) -> u64 {
        self.blobs
            .iter()
            .chain(&self.stray_files)
            .map(|b| b.1)
            .sum()
    }
}

/// What one repository loses.
#[derive(Debug, Default, PartialEq)]
pub struct RepoPlan {
    /// The repository.
    pub name: String,
    /// Tags to delete, with the digest and time they were last pointed at (the delete
    /// re-checks both).
    pub tags: Vec<(String, String, i64)>,
    /// Manifests to delete, and the time before which they must have been stored.
    pub manifests: Vec<String>,
    /// The `before` for manifests.
    pub manifest_cutoff: i64,
    /// Blob links to remove.
    pub links: Vec<String>,
}

/// The whole decision.
#[derive(Debug, Default)]
pub struct Plan {
    /// Per repository, those with something to delete.
    pub repos: Vec<RepoPlan>,
    /// Blobs that no repository will link.
    pub blobs: Vec<String>,
}

/// Decides what goes, at `now` (seconds).
pub fn plan(snapshot: &GcSnapshot, opts: &GcOptions, now: i64) -> Plan {
    let grace = i64::try_from(opts.grace.as_secs()).unwrap_or(i64::MAX);
    let link_cutoff = now.saturating_sub(grace);
    let mut still_linked: HashSet<&str> = HashSet::new();
    let mut repos = Vec::new();
    for repo in &snapshot.repos {
        let rule = opts
            .retention
            .iter()
            .find(|r| r.repos.iter().any(|p| matches(p, &repo.name)));
        let p = plan_repo(repo, rule, opts.delete_untagged, grace, now, link_cutoff);
        let dropped: HashSet<&str> = p.links.iter().map(String::as_str).collect();
        still_linked.extend(
            repo.links
                .iter()
                .map(|(d, _)| d.as_str())
                .filter(|d| !dropped.contains(d)),
        );
        if !p.tags.is_empty() || !p.manifests.is_empty() || !p.links.is_empty() {
            repos.push(p);
        }
    }
    let blobs = snapshot
        .blobs
        .iter()
        .filter(|(d, _)| !still_linked.contains(d.as_str()))
        .map(|(d, _)| d.clone())
        .collect();
    Plan { repos, blobs }
}

fn plan_repo(
    repo: &GcRepo,
    rule: Option<&RetentionRule>,
    delete_untagged: bool,
    grace: i64,
    now: i64,
    link_cutoff: i64,
) -> RepoPlan {
    // 1. Retention of tags.
    let mut doomed_tags = Vec::new();
    if let Some(keep_last) = rule.and_then(|r| r.keep_last) {
        let keep_pattern =
            |t: &str| rule.is_some_and(|r| r.keep_tags.iter().any(|p| matches(p, t)));
        let mut counted: Vec<&(String, String, i64)> =
            repo.tags.iter().filter(|t| !keep_pattern(&t.0)).collect();
        counted.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        doomed_tags = counted
            .into_iter()
            .skip(keep_last as usize)
            .map(|t| (t.0.clone(), t.1.clone(), t.2))
            .collect();
    }
    let doomed_tag_names: HashSet<&str> = doomed_tags.iter().map(|t| t.0.as_str()).collect();
    // 2. Untagged manifests.
    let older_than = match rule.and_then(|r| r.untagged_older_than) {
        Some(d) => Some(i64::try_from(d.as_secs()).unwrap_or(i64::MAX).max(grace)),
        None if delete_untagged => Some(grace),
        None => None,
    };
    let manifest_cutoff = older_than.map_or(i64::MIN, |d| now.saturating_sub(d));
    let mut kept: HashSet<&str> = HashSet::new();
    let all: HashSet<&str> = repo.manifests.iter().map(|m| m.0.as_str()).collect();
    if older_than.is_some() {
        kept.extend(
            repo.tags
                .iter()
                .filter(|t| !doomed_tag_names.contains(t.0.as_str()))
                .map(|t| t.1.as_str()),
        );
        kept.extend(
            repo.manifests
                .iter()
                .filter(|m| m.1 >= manifest_cutoff)
                .map(|m| m.0.as_str()),
        );
        let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
        for (m, c) in &repo.refs {
            if all.contains(c.as_str()) {
                children.entry(m.as_str()).or_default().push(c.as_str());
            }
        }
        let mut referrers: HashMap<&str, Vec<&str>> = HashMap::new();
        for (d, _, subject) in &repo.manifests {
            if let Some(s) = subject {
                referrers.entry(s.as_str()).or_default().push(d.as_str());
            }
        }
        let mut todo: Vec<&str> = kept.iter().copied().collect();
        while let Some(m) = todo.pop() {
            let next = children
                .get(m)
                .into_iter()
                .flatten()
                .chain(referrers.get(m).into_iter().flatten());
            for n in next {
                if kept.insert(n) {
                    todo.push(n);
                }
            }
        }
    } else {
        kept = all.clone();
    }
    let doomed_manifests: Vec<String> = repo
        .manifests
        .iter()
        .filter(|m| !kept.contains(m.0.as_str()))
        .map(|m| m.0.clone())
        .collect();
    // 3. Links nothing kept references.
    let referenced: HashSet<&str> = repo
        .refs
        .iter()
        .filter(|(m, _)| kept.contains(m.as_str()))
        .map(|(_, c)| c.as_str())
        .collect();
    let links = repo
        .links
        .iter()
        .filter(|(d, at)| !referenced.contains(d.as_str()) && *at < link_cutoff)
        .map(|(d, _)| d.clone())
        .collect();
    RepoPlan {
        name: repo.name.clone(),
        tags: doomed_tags,
        manifests: doomed_manifests,
        manifest_cutoff,
        links,
    }
}

/// The sweep lock (see the module's documentation). Two files: `gc.lock` is the lock itself,
/// `gc.gate` a turnstile in front of it, so a collector waiting for the lock is not starved
/// by a server whose commits always overlap: a committer passes the gate (shared, for an
/// instant) before taking the lock shared; a collector closes the gate (exclusive) and then
/// waits only for the commits already inside.
pub(crate) struct SweepLock {
    lock: PathBuf,
    gate: PathBuf,
    local: tokio::sync::RwLock<()>,
}

/// Held while the lock is: the in-process guard and the locked file(s).
pub(crate) struct SweepGuard<'a> {
    _local: Guard<'a>,
    _files: Vec<std::fs::File>,
}

enum Guard<'a> {
    Shared(#[allow(dead_code, reason = "held for its drop")] tokio::sync::RwLockReadGuard<'a, ()>),
    Exclusive(
        #[allow(dead_code, reason = "held for its drop")] tokio::sync::RwLockWriteGuard<'a, ()>,
    ),
}

impl SweepLock {
    pub(crate) fn new(root: &std::path::Path) -> SweepLock {
        SweepLock {
            lock: root.join("gc.lock"),
            gate: root.join("gc.gate"),
            local: tokio::sync::RwLock::new(()),
        }
    }

    /// Held while a blob is committed and linked.
    pub(crate) async fn shared(&self) -> Result<SweepGuard<'_>, StorageError> {
        let local = Guard::Shared(self.local.read().await);
        let (lock, gate) = (self.lock.clone(), self.gate.clone());
        let file = blocking(move || {
            let gate = flock(&gate, libc::LOCK_SH)?;
            let file = flock(&lock, libc::LOCK_SH)?;
            drop(gate);
            Ok(file)
        })
        .await?;
        Ok(SweepGuard {
            _local: local,
            _files: vec![file],
        })
    }

    /// Held while blobs are deleted.
    pub(crate) async fn exclusive(&self) -> Result<SweepGuard<'_>, StorageError> {
        let local = Guard::Exclusive(self.local.write().await);
        let (lock, gate) = (self.lock.clone(), self.gate.clone());
        let files = blocking(move || {
            let gate = flock(&gate, libc::LOCK_EX)?;
            let file = flock(&lock, libc::LOCK_EX)?;
            Ok(vec![file, gate])
        })
        .await?;
        Ok(SweepGuard {
            _local: local,
            _files: files,
        })
    }
}

/// Opens `path` (creating it) and `flock`s it `how`; unlocked when the file is closed.
fn flock(path: &std::path::Path, how: i32) -> Result<std::fs::File, StorageError> {
    let err = |e| StorageError::io("locking", path)(e);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(err)?;
    // SAFETY: flock on a descriptor `file` keeps open while it is in use.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), how) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(file)
}

/// Blobs deleted per hold of the sweep lock, so pushes are not held up for long.
const BLOB_BATCH: usize = 5000;

/// Blob links removed per transaction.
const LINK_BATCH: usize = 20_000;

impl Registry {
    /// Collects garbage as `opts` says (see the module's documentation).
    pub async fn collect(&self, opts: &GcOptions) -> Result<GcReport, ServiceError> {
        let start = Instant::now();
        let now = crate::metadata::now();
        let meta = &self.inner.meta;
        let snapshot = meta.gc_snapshot().await?;
        let plan = plan(&snapshot, opts, now);
        let mut report = GcReport {
            dry_run: opts.dry_run,
            ..GcReport::default()
        };
        let grace = i64::try_from(opts.grace.as_secs()).unwrap_or(i64::MAX);
        let stray = self
            .stray_files(&snapshot, now.saturating_sub(grace))
            .await?;
        if opts.dry_run {
            for r in &plan.repos {
                report
                    .tags
                    .extend(r.tags.iter().map(|t| (r.name.clone(), t.0.clone())));
                report
                    .manifests
                    .extend(r.manifests.iter().map(|m| (r.name.clone(), m.clone())));
                report.links += r.links.len();
            }
            let sizes: HashMap<&str, u64> = snapshot
                .blobs
                .iter()
                .map(|(d, s)| (d.as_str(), *s))
                .collect();
            report.blobs = plan
                .blobs
                .iter()
                .map(|d| (d.clone(), sizes.get(d.as_str()).copied().unwrap_or(0)))
                .collect();
            report.stray_files = stray;
            report.took = start.elapsed();
            return Ok(report);
        }
        // Few transactions, each over every repository: a `wharf gc` beside a busy server
        // waits for the database's write lock once per transaction.
        let tags: Vec<(String, String, String, i64)> = plan
            .repos
            .iter()
            .flat_map(|r| {
                r.tags
                    .iter()
                    .map(|(t, d, at)| (r.name.clone(), t.clone(), d.clone(), *at))
            })
            .collect();
        if !tags.is_empty() {
            report.tags = self
                .freeing(|| async { Ok(meta.gc_delete_tags(&tags).await?) })
                .await?;
        }
        let manifests: Vec<(String, Vec<String>, i64)> = plan
            .repos
            .iter()
            .filter(|r| !r.manifests.is_empty())
            .map(|r| (r.name.clone(), r.manifests.clone(), r.manifest_cutoff))
            .collect();
        if !manifests.is_empty() {
            report.manifests = self
                .freeing(|| async { Ok(meta.gc_delete_manifests(&manifests).await?) })
                .await?;
        }
        let touched: HashSet<&str> = report
            .tags
            .iter()
            .chain(&report.manifests)
            .map(|(r, _)| r.as_str())
            .collect();
        for repo in touched {
            self.inner.cache.invalidate(repo);
        }
        let mut batch: Vec<(String, Vec<String>)> = Vec::new();
        let mut in_batch = 0;
        for r in plan.repos.iter().filter(|r| !r.links.is_empty()) {
            for chunk in r.links.chunks(LINK_BATCH) {
                batch.push((r.name.clone(), chunk.to_vec()));
                in_batch += chunk.len();
                if in_batch >= LINK_BATCH {
                    report.links += self.unlink(&batch, now.saturating_sub(grace)).await?;
                    batch.clear();
                    in_batch = 0;
                }
            }
        }
        if !batch.is_empty() {
            report.links += self.unlink(&batch, now.saturating_sub(grace)).await?;
        }
        // The plan's blobs are those whose every link it meant to remove; a link that stayed
        // (re-pushed meanwhile) keeps its blob, which the delete re-checks.
        let candidates = plan.blobs;
        for chunk in candidates.chunks(BLOB_BATCH) {
            let _lock = self.inner.sweep.exclusive().await?;
            let gone = self
                .freeing(|| async { Ok(meta.gc_delete_blobs(chunk).await?) })
                .await?;
            for (d, _) in &gone {
                if let Ok(d) = d.parse::<Digest>() {
                    self.inner.storage.delete(&d).await?;
                }
            }
            report.blobs.extend(gone);
        }
        tracing::debug!(elapsed = ?start.elapsed(), "gc: blobs done");
        if !stray.is_empty() {
            let _lock = self.inner.sweep.exclusive().await?;
            for (d, size) in stray {
                if meta.blob_known(&d).await? {
                    continue;
                }
                if let Ok(digest) = d.parse::<Digest>() {
                    self.inner.storage.delete(&digest).await?;
                    report.stray_files.push((d, size));
                }
            }
        }
        // With space back, keep the reserve for the next full disk.
        self.inner.headroom.take();
        report.took = start.elapsed();
        Ok(report)
    }

    async fn unlink(
        &self,
        batch: &[(String, Vec<String>)],
        before: i64,
    ) -> Result<usize, ServiceError> {
        self.freeing(|| async { Ok(self.inner.meta.gc_unlink(batch, before).await?) })
            .await
    }

    /// Blob files no row of `snapshot` knows, written before `before`.
    async fn stray_files(
        &self,
        snapshot: &GcSnapshot,
        before: i64,
    ) -> Result<Vec<(String, u64)>, ServiceError> {
        let known: HashSet<&str> = snapshot.blobs.iter().map(|(d, _)| d.as_str()).collect();
        let before = u64::try_from(before).unwrap_or(0);
        Ok(self
            .inner
            .storage
            .blob_files()
            .await?
            .into_iter()
            .filter(|f| f.written < before && !known.contains(f.digest.as_str()))
            .map(|f| (f.digest.as_str().to_owned(), f.size))
            .collect())
    }

    /// Collects every `interval` as the configuration says, logging what each run freed.
    pub async fn gc_loop(self) {
        let gc = self.inner.config.gc.clone();
        if gc.interval.is_zero() {
            return;
        }
        let opts = GcOptions {
            dry_run: false,
            delete_untagged: gc.delete_untagged,
            grace: gc.grace_period,
            retention: gc.retention,
        };
        let mut tick = tokio::time::interval(gc.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match self.collect(&opts).await {
                Ok(r) => tracing::info!(
                    tags = r.tags.len(),
                    manifests = r.manifests.len(),
                    links = r.links,
                    blobs = r.blobs.len(),
                    stray_files = r.stray_files.len(),
                    freed_bytes = r.freed(),
                    took_ms = u64::try_from(r.took.as_millis()).unwrap_or(u64::MAX),
                    "garbage collected"
                ),
                Err(e) => {
                    tracing::error!(error = %wharf_common::error::Chain(&e), "garbage collection failed")
                }
            }
        }
    }

    /// Forgets cached manifests whenever a collection in another process deleted some.
    pub async fn watch_collections(self) {
        let mut seen = self.inner.meta.gc_epoch().await.unwrap_or(0);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if let Ok(now) = self.inner.meta.gc_epoch().await
                && now != seen
            {
                seen = now;
                self.inner.cache.invalidate_all();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(name: &str) -> GcRepo {
        GcRepo {
            name: name.into(),
            ..GcRepo::default()
        }
    }

    #[test]
    fn untagged_manifests_go_unless_something_kept_holds_them() {
        let mut r = repo("a");
        // tagged index I -> child C; untagged old U with referrer R; young Y; old referrer
        // S of the tagged index.
        r.manifests = vec![
            ("I".into(), 0, None),
            ("C".into(), 0, None),
            ("U".into(), 0, None),
            ("R".into(), 0, Some("U".into())),
            ("Y".into(), 990, None),
            ("S".into(), 0, Some("I".into())),
        ];
        r.tags = vec![("v1".into(), "I".into(), 5)];
        r.refs = vec![
            ("I".into(), "C".into()),
            ("C".into(), "blob-c".into()),
            ("U".into(), "blob-u".into()),
        ];
        r.links = vec![
            ("blob-c".into(), 0),
            ("blob-u".into(), 0),
            ("fresh".into(), 999),
        ];
        let snap = GcSnapshot {
            repos: vec![r],
            blobs: vec![
                ("blob-c".into(), 1),
                ("blob-u".into(), 2),
                ("fresh".into(), 3),
                ("orphan".into(), 4),
            ],
        };
        let opts = GcOptions {
            delete_untagged: true,
            grace: Duration::from_secs(100),
            ..GcOptions::default()
        };
        let p = plan(&snap, &opts, 1000);
        let mut m = p.repos[0].manifests.clone();
        m.sort();
        assert_eq!(m, ["R", "U"]);
        assert_eq!(p.repos[0].links, ["blob-u"]);
        let mut b = p.blobs.clone();
        b.sort();
        assert_eq!(b, ["blob-u", "orphan"]);
        // Without delete_untagged only unreferenced links and unlinked blobs go.
        let p = plan(
            &snap,
            &GcOptions {
                delete_untagged: false,
                ..opts
            },
            1000,
        );
        assert!(p.repos.is_empty(), "{p:?}");
        assert_eq!(p.blobs, ["orphan"]);
    }

    #[test]
    fn retention_keeps_the_newest_and_the_patterns() {
        let mut r = repo("ci/app");
        for (i, t) in ["a", "b", "c", "d", "latest", "v1"].iter().enumerate() {
            r.tags.push(((*t).into(), format!("M{i}"), i as i64));
            r.manifests.push((format!("M{i}"), 0, None));
        }
        let snap = GcSnapshot {
            repos: vec![r, repo("other")],
            blobs: vec![],
        };
        let opts = GcOptions {
            grace: Duration::from_secs(10),
            retention: vec![RetentionRule {
                repos: vec!["ci/*".into()],
                keep_last: Some(2),
                keep_tags: vec!["latest".into(), "v*".into()],
                untagged_older_than: Some(Duration::from_secs(1)),
            }],
            ..GcOptions::default()
        };
        let p = plan(&snap, &opts, 1000);
        let tags: Vec<&str> = p.repos[0].tags.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(tags, ["b", "a"], "c and d are the two newest counted");
        let mut m = p.repos[0].manifests.clone();
        m.sort();
        assert_eq!(m, ["M0", "M1"]);
        // The grace period is the floor of untagged_older_than.
        assert_eq!(p.repos[0].manifest_cutoff, 990);
    }
}
