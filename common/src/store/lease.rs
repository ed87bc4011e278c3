//! Leases: blobs an operation in progress relies on, spared by garbage collection.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::digest::Digest;

use super::{LocalStore, StoreError};

/// A lease held by this process. Release it when the operation ends; a lease left by a process
/// that died is cleared the next time the store is opened or collected.
pub struct Lease {
    store: LocalStore,
    id: i64,
    /// What this lease already protects, so repeated protection costs no write.
    protected: std::sync::Mutex<HashSet<Digest>>,
}

pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The start time of process `pid` in clock ticks since boot, from /proc, to tell a live
/// process from a later one that reused its pid.
pub(crate) fn process_start(pid: u32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

impl LocalStore {
    /// Takes a new lease for this process.
    pub async fn lease(&self) -> Result<Lease, StoreError> {
        let pid = std::process::id();
        let start = process_start(pid).unwrap_or(0);
        let _w = self.write_guard().await;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO leases (pid, pid_start, created_at) VALUES (?, ?, ?) RETURNING id",
        )
        .bind(pid as i64)
        .bind(start)
        .bind(now_secs())
        .fetch_one(self.db())
        .await
        .map_err(StoreError::db("taking a lease"))?;
        Ok(Lease {
            store: self.clone(),
            id,
            protected: std::sync::Mutex::new(HashSet::new()),
        })
    }

    /// Deletes leases whose process no longer runs.
    pub(crate) async fn clear_stale_leases(&self) -> Result<(), StoreError> {
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as("SELECT id, pid, pid_start FROM leases")
            .fetch_all(self.db())
            .await
            .map_err(StoreError::db("listing leases"))?;
        for (id, pid, start) in rows {
            let alive = u32::try_from(pid)
                .ok()
                .and_then(process_start)
                .is_some_and(|s| s == start);
            if !alive {
                let _w = self.write_guard().await;
                // Only that row: its id may have been cleared by another process meanwhile
                // and given to a new lease (SQLite reuses the highest rowid).
                sqlx::query("DELETE FROM leases WHERE id = ? AND pid = ? AND pid_start = ?")
                    .bind(id)
                    .bind(pid)
                    .bind(start)
                    .execute(self.db())
                    .await
                    .map_err(StoreError::db("clearing a stale lease"))?;
            }
        }
        Ok(())
    }
}

impl Lease {
    /// Protects `digest` for as long as the lease lives. Call before relying on the blob being
    /// present (and before writing it).
    pub async fn protect(&self, digest: &Digest) -> Result<(), StoreError> {
        self.protect_all(std::slice::from_ref(digest)).await
    }

    /// Protects several digests in one transaction.
    pub async fn protect_all(&self, digests: &[Digest]) -> Result<(), StoreError> {
        let fresh: Vec<&Digest> = match self.protected.lock() {
            Ok(set) => digests.iter().filter(|d| !set.contains(*d)).collect(),
            Err(_) => digests.iter().collect(),
        };
        if fresh.is_empty() {
            return Ok(());
        }
        let _w = self.store.write_guard().await;
        let mut tx = self
            .store
            .db()
            .begin()
            .await
            .map_err(StoreError::db("adding to a lease"))?;
        for d in &fresh {
            sqlx::query("INSERT OR IGNORE INTO lease_blobs (lease, digest) VALUES (?, ?)")
                .bind(self.id)
                .bind(d.as_str())
                .execute(&mut *tx)
                .await
                .map_err(StoreError::db("adding to a lease"))?;
        }
        tx.commit()
            .await
            .map_err(StoreError::db("adding to a lease"))?;
        if let Ok(mut set) = self.protected.lock() {
            set.extend(fresh.into_iter().cloned());
        }
        Ok(())
    }

    /// Ends the lease.
    pub async fn release(self) -> Result<(), StoreError> {
        let _w = self.store.write_guard().await;
        sqlx::query("DELETE FROM leases WHERE id = ?")
            .bind(self.id)
            .execute(self.store.db())
            .await
            .map_err(StoreError::db("releasing a lease"))?;
        Ok(())
    }

    /// The digests this lease protects.
    pub async fn digests(&self) -> Result<Vec<Digest>, StoreError> {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT digest FROM lease_blobs WHERE lease = ?")
                .bind(self.id)
                .fetch_all(self.store.db())
                .await
                .map_err(StoreError::db("reading a lease"))?;
        Ok(rows.iter().filter_map(|d| d.parse().ok()).collect())
    }
}
