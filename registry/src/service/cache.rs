//! Manifests by repository and reference, kept in memory so a GET or HEAD costs no database
//! round trip. Every write to a repository's manifests or tags bumps its generation and empties
//! its entries; a read that started before the bump does not insert, so nothing stale is kept.
//! This is correct for one server process per database, which is what SQLite metadata means.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::metadata::ManifestRecord;

/// Entries kept in all, beyond which a repository's entries are dropped before adding more.
const MAX_ENTRIES: usize = 50_000;

#[derive(Default)]
pub struct ManifestCache {
    repos: RwLock<HashMap<String, RepoEntries>>,
    /// Bumped when everything is forgotten; part of every generation.
    everything: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct RepoEntries {
    generation: u64,
    by_reference: HashMap<String, Arc<ManifestRecord>>,
}

impl ManifestCache {
    pub fn get(&self, repo: &str, reference: &str) -> Option<Arc<ManifestRecord>> {
        let repos = self.repos.read().ok()?;
        repos.get(repo)?.by_reference.get(reference).cloned()
    }

    /// The repository's generation, read before looking in the database.
    pub fn generation(&self, repo: &str) -> u64 {
        let everything = self.everything.load(std::sync::atomic::Ordering::Acquire);
        self.repos
            .read()
            .ok()
            .and_then(|r| r.get(repo).map(|e| e.generation))
            .unwrap_or(0)
            + everything
    }

    pub fn insert(&self, repo: &str, reference: &str, generation: u64, m: Arc<ManifestRecord>) {
        let Ok(mut repos) = self.repos.write() else {
            return;
        };
        let total: usize = repos.values().map(|e| e.by_reference.len()).sum();
        if total >= MAX_ENTRIES {
            repos.retain(|_, e| {
                e.by_reference.clear();
                e.generation > 0
            });
        }
        let everything = self.everything.load(std::sync::atomic::Ordering::Acquire);
        let entries = repos.entry(repo.to_owned()).or_default();
        if entries.generation + everything == generation {
            entries.by_reference.insert(reference.to_owned(), m);
        }
    }

    /// Forgets every repository's entries (another process changed the database).
    pub fn invalidate_all(&self) {
        if let Ok(mut repos) = self.repos.write() {
            self.everything
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            for e in repos.values_mut() {
                e.by_reference.clear();
            }
        }
    }

    pub fn invalidate(&self, repo: &str) {
        if let Ok(mut repos) = self.repos.write() {
            let e = repos.entry(repo.to_owned()).or_default();
            e.generation += 1;
            e.by_reference.clear();
        }
    }
}
