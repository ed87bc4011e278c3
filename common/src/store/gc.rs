//! Garbage collection of the local store: a blob survives when an image reaches it, a live
//! lease names it, or the build cache keeps it.

use std::collections::HashSet;

use sqlx::Connection;

use crate::digest::Digest;
use crate::image::{Manifest, detect_media_type, manifest_blobs};
use crate::media_type;

use super::{LocalStore, StoreError};

/// What a collection removed.
#[derive(Debug, Default, Clone)]
pub struct GcReport {
    /// The blobs deleted.
    pub removed: Vec<Digest>,
    /// Their total size.
    pub bytes: u64,
}

impl LocalStore {
    /// Every blob reachable from `roots` (manifests or indexes) that is in the store.
    pub(crate) async fn reachable_from(
        &self,
        roots: &[Digest],
    ) -> Result<HashSet<Digest>, StoreError> {
        let mut seen = HashSet::new();
        let mut stack: Vec<Digest> = roots.to_vec();
        while let Some(d) = stack.pop() {
            if !seen.insert(d.clone()) {
                continue;
            }
            let bytes = match self.read_blob(&d).await {
                Ok(b) => b,
                Err(StoreError::BlobUnknown(_)) => continue,
                Err(e) => return Err(e),
            };
            let Ok(mt) = detect_media_type(&bytes, None, &d) else {
                continue;
            };
            match Manifest::parse(&bytes, &mt, &d) {
                Ok(Manifest::Image(m)) => {
                    let (config, layers) = manifest_blobs(&m, &d)?;
                    seen.insert(config.digest);
                    seen.extend(layers.into_iter().map(|l| l.digest));
                }
                Ok(Manifest::Index(i)) => {
                    for child in i.manifests() {
                        if let Ok(cd) = Digest::try_from(child.digest()) {
                            let cmt = child.media_type().to_string();
                            if media_type::is_manifest(&cmt) || media_type::is_index(&cmt) {
                                stack.push(cd);
                            } else {
                                seen.insert(cd);
                            }
                        }
                    }
                }
                Err(_) => {}
            }
        }
        Ok(seen)
    }

    /// Deletes unreachable, unleased blobs: all of them, or only those in `candidates`.
    pub async fn gc(&self, candidates: Option<Vec<Digest>>) -> Result<GcReport, StoreError> {
        self.clear_stale_leases().await?;
        let _w = self.write_guard().await;
        let mut conn = self
            .db()
            .acquire()
            .await
            .map_err(StoreError::db("starting garbage collection"))?;
        // BEGIN IMMEDIATE takes SQLite's write lock: no lease can be added while we decide.
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *conn)
            .await
            .map_err(StoreError::db("starting garbage collection"))?;
        let result = self.gc_locked(&mut conn, candidates).await;
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = sqlx::query(end).execute(&mut *conn).await;
        if ended.is_err() {
            // Do not hand a connection in an unknown transaction state back to the pool.
            let _ = conn.detach().close().await;
        }
        ended.map_err(StoreError::db("ending garbage collection"))?;
        result
    }

    async fn gc_locked(
        &self,
        conn: &mut sqlx::SqliteConnection,
        candidates: Option<Vec<Digest>>,
    ) -> Result<GcReport, StoreError> {
        let roots: Vec<String> = sqlx::query_scalar("SELECT digest FROM images")
            .fetch_all(&mut *conn)
            .await
            .map_err(StoreError::db("listing images"))?;
        let leased: Vec<String> = sqlx::query_scalar("SELECT DISTINCT digest FROM lease_blobs")
            .fetch_all(&mut *conn)
            .await
            .map_err(StoreError::db("listing leases"))?;
        let cached: Vec<String> = sqlx::query_scalar("SELECT DISTINCT layer FROM build_cache")
            .fetch_all(&mut *conn)
            .await
            .map_err(StoreError::db("listing the build cache"))?;
        let roots: Vec<Digest> = roots.iter().filter_map(|d| d.parse().ok()).collect();
        let mut keep = self.reachable_from(&roots).await?;
        keep.extend(leased.iter().filter_map(|d| d.parse().ok()));
        keep.extend(cached.iter().filter_map(|d| d.parse().ok()));

        let candidates = match candidates {
            Some(c) => c,
            None => self.all_blobs().await?,
        };
        let mut report = GcReport::default();
        for d in candidates {
            if keep.contains(&d) {
                continue;
            }
            let path = self.blob_path(&d);
            if let Ok(meta) = tokio::fs::metadata(&path).await {
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => {
                        report.bytes += meta.len();
                        report.removed.push(d);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io("removing blob", path)(e)),
                }
            }
        }
        Ok(report)
    }

    async fn all_blobs(&self) -> Result<Vec<Digest>, StoreError> {
        let mut out = Vec::new();
        for alg in [
            crate::digest::Algorithm::Sha256,
            crate::digest::Algorithm::Sha512,
        ] {
            let dir = self.blob_dir(alg);
            let mut rd = match tokio::fs::read_dir(&dir).await {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io("listing", dir)(e)),
            };
            while let Some(e) = rd
                .next_entry()
                .await
                .map_err(StoreError::io("listing", &dir))?
            {
                if let Ok(d) = Digest::from_parts(alg, &e.file_name().to_string_lossy()) {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }
}
