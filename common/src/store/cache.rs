//! The build cache's records in the store: step keys to layers, and content digests of
//! build-context files keyed by what `stat` says about them.

use crate::digest::Digest;

use super::{LocalStore, StoreError};

/// A cached step result: a layer in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    /// The layer blob.
    pub layer: Digest,
    /// Its uncompressed digest.
    pub diff_id: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size.
    pub size: u64,
    /// When the step first ran (seconds since the epoch): the time the image records for it.
    pub created_at: i64,
}

/// What `stat` says about a context file; its digest is reused while these are unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size.
    pub size: u64,
    /// Modification time, nanoseconds.
    pub mtime_ns: i64,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl LocalStore {
    /// The cached layer for `key`, if its blob is still present.
    pub async fn cache_get(&self, key: &Digest) -> Result<Option<CacheEntry>, StoreError> {
        let row: Option<(String, String, String, i64, i64)> = sqlx::query_as(
            "SELECT layer, diff_id, media_type, size, created_at FROM build_cache WHERE key = ?1",
        )
        .bind(key.as_str())
        .fetch_optional(self.db())
        .await
        .map_err(StoreError::db("reading the build cache"))?;
        let Some((layer, diff_id, media_type, size, created_at)) = row else {
            return Ok(None);
        };
        let (Ok(layer), Ok(diff_id)) = (layer.parse::<Digest>(), diff_id.parse::<Digest>()) else {
            return Ok(None);
        };
        let size = u64::try_from(size).unwrap_or(0);
        // A stat of a local file: done here rather than on the blocking pool, which would cost
        // two thread hand-offs per step of a cached build.
        if std::fs::metadata(self.blob_path(&layer))
            .map(|m| m.len())
            .ok()
            != Some(size)
        {
            return Ok(None);
        }
        Ok(Some(CacheEntry {
            layer,
            diff_id,
            media_type,
            size,
            created_at,
        }))
    }

    /// Marks entries as used now (for pruning by age), in one transaction.
    pub async fn cache_touch(&self, keys: &[Digest]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let _w = self.write_guard().await;
        let mut tx = self
            .db()
            .begin()
            .await
            .map_err(StoreError::db("updating the build cache"))?;
        let at = now();
        // One statement for all the keys (a JSON array): each statement is a round trip to
        // SQLite's thread.
        let list = serde_json::to_string(&keys.iter().map(Digest::as_str).collect::<Vec<_>>())
            .unwrap_or_else(|_| "[]".into());
        sqlx::query(
            "UPDATE build_cache SET used_at = ?1 WHERE key IN (SELECT value FROM json_each(?2))",
        )
        .bind(at)
        .bind(list)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::db("updating the build cache"))?;
        tx.commit()
            .await
            .map_err(StoreError::db("updating the build cache"))
    }

    /// Records step results (their layers must be in the store).
    pub async fn cache_put(&self, entries: &[(Digest, CacheEntry)]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let _w = self.write_guard().await;
        let mut tx = self
            .db()
            .begin()
            .await
            .map_err(StoreError::db("writing the build cache"))?;
        for (key, e) in entries {
            sqlx::query(
                "INSERT INTO build_cache (key, layer, diff_id, media_type, size, created_at, used_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (key) DO UPDATE SET layer = excluded.layer, diff_id = excluded.diff_id,
                 media_type = excluded.media_type, size = excluded.size, used_at = excluded.used_at",
            )
            .bind(key.as_str())
            .bind(e.layer.as_str())
            .bind(e.diff_id.as_str())
            .bind(&e.media_type)
            .bind(int(e.size))
            .bind(e.created_at)
            .bind(now())
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db("writing the build cache"))?;
        }
        tx.commit()
            .await
            .map_err(StoreError::db("writing the build cache"))?;
        Ok(())
    }

    /// Forgets the whole build cache and collects the layers only it kept. Returns the number
    /// of entries and the bytes freed.
    pub async fn cache_prune(&self) -> Result<(u64, u64), StoreError> {
        let layers: Vec<String> = sqlx::query_scalar("SELECT DISTINCT layer FROM build_cache")
            .fetch_all(self.db())
            .await
            .map_err(StoreError::db("reading the build cache"))?;
        let removed = {
            let _w = self.write_guard().await;
            let r = sqlx::query("DELETE FROM build_cache")
                .execute(self.db())
                .await
                .map_err(StoreError::db("pruning the build cache"))?;
            sqlx::query("DELETE FROM context_files")
                .execute(self.db())
                .await
                .map_err(StoreError::db("pruning the build cache"))?;
            r.rows_affected()
        };
        let candidates = layers.iter().filter_map(|l| l.parse().ok()).collect();
        let report = self.gc(Some(candidates)).await?;
        Ok((removed, report.bytes))
    }

    /// The remembered content digest of a context file, if its stamp is unchanged.
    pub async fn context_digest(
        &self,
        path: &str,
        stamp: FileStamp,
    ) -> Result<Option<Digest>, StoreError> {
        let row: Option<(i64, i64, i64, i64, String)> = sqlx::query_as(
            "SELECT dev, ino, size, mtime_ns, digest FROM context_files WHERE path = ?1",
        )
        .bind(path)
        .fetch_optional(self.db())
        .await
        .map_err(StoreError::db("reading context digests"))?;
        Ok(row.and_then(|(dev, ino, size, mtime_ns, digest)| {
            (dev == int(stamp.dev)
                && ino == int(stamp.ino)
                && size == int(stamp.size)
                && mtime_ns == stamp.mtime_ns)
                .then(|| digest.parse().ok())
                .flatten()
        }))
    }

    /// Every remembered digest of a file under the directory `prefix` (an absolute path), by
    /// path: one query instead of one per file.
    pub async fn context_digests_under(
        &self,
        prefix: &str,
    ) -> Result<std::collections::HashMap<String, (FileStamp, Digest)>, StoreError> {
        let dir = format!("{}/", prefix.trim_end_matches('/'));
        // Paths under `dir` sort between `dir` and `dir` with its last byte ('/') bumped.
        let end = format!("{}0", prefix.trim_end_matches('/'));
        let rows: Vec<(String, i64, i64, i64, i64, String)> = sqlx::query_as(
            "SELECT path, dev, ino, size, mtime_ns, digest FROM context_files \
             WHERE path >= ?1 AND path < ?2",
        )
        .bind(&dir)
        .bind(&end)
        .fetch_all(self.db())
        .await
        .map_err(StoreError::db("reading context digests"))?;
        Ok(rows
            .into_iter()
            .filter_map(|(path, dev, ino, size, mtime_ns, digest)| {
                let stamp = FileStamp {
                    dev: u64::try_from(dev).ok()?,
                    ino: u64::try_from(ino).ok()?,
                    size: u64::try_from(size).ok()?,
                    mtime_ns,
                };
                Some((path, (stamp, digest.parse().ok()?)))
            })
            .collect())
    }

    /// Remembers context files' content digests.
    pub async fn context_digests_put(
        &self,
        files: &[(String, FileStamp, Digest)],
    ) -> Result<(), StoreError> {
        if files.is_empty() {
            return Ok(());
        }
        let _w = self.write_guard().await;
        let mut tx = self
            .db()
            .begin()
            .await
            .map_err(StoreError::db("writing context digests"))?;
        for (path, s, d) in files {
            sqlx::query(
                "INSERT OR REPLACE INTO context_files (path, dev, ino, size, mtime_ns, digest)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(path)
            .bind(int(s.dev))
            .bind(int(s.ino))
            .bind(int(s.size))
            .bind(s.mtime_ns)
            .bind(d.as_str())
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db("writing context digests"))?;
        }
        tx.commit()
            .await
            .map_err(StoreError::db("writing context digests"))?;
        Ok(())
    }

    /// How many bytes the layer blob `digest` unpacks to (docker's size of a layer), measured
    /// the first time it is asked for (the blob decompressed and counted) and remembered.
    pub async fn unpacked_size(&self, digest: &Digest) -> Result<u64, StoreError> {
        let known: Option<i64> =
            sqlx::query_scalar("SELECT unpacked FROM layer_sizes WHERE digest = ?1")
                .bind(digest.as_str())
                .fetch_optional(self.db())
                .await
                .map_err(StoreError::db("reading layer sizes"))?;
        if let Some(n) = known {
            return Ok(u64::try_from(n).unwrap_or(0));
        }
        let path = self.blob_path(digest);
        let counted = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
            let f = std::fs::File::open(&path)?;
            let d = crate::media_type::decompress(std::io::BufReader::with_capacity(1 << 20, f))?;
            std::io::copy(&mut { d.reader }, &mut std::io::sink())
        })
        .await
        .map_err(|e| {
            StoreError::io("measuring a layer", self.blob_path(digest))(std::io::Error::other(e))
        })?
        .map_err(StoreError::io("measuring a layer", self.blob_path(digest)))?;
        let _w = self.write_guard().await;
        sqlx::query("INSERT OR REPLACE INTO layer_sizes (digest, unpacked) VALUES (?1, ?2)")
            .bind(digest.as_str())
            .bind(i64::try_from(counted).unwrap_or(i64::MAX))
            .execute(self.db())
            .await
            .map_err(StoreError::db("writing layer sizes"))?;
        Ok(counted)
    }
}
