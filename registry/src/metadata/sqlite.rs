//! [`Metadata`] in an embedded SQLite database (`<root>/registry.db`, WAL). Writes go through one
//! connection, so writers queue in the pool instead of retrying on `SQLITE_BUSY`; reads use a
//! pool of their own. Commits are synchronous=FULL: what the server acknowledged survives a
//! power cut, not only a crash.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use wharf_common::digest::Digest;

use super::{
    GcRepo, GcSnapshot, ManifestRecord, Metadata, MetadataError, NewManifest, Page, Referrer,
    SearchHit, Unlink, UploadRecord, now,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// SQLite-backed metadata.
#[derive(Clone, Debug)]
pub struct SqliteMetadata {
    read: SqlitePool,
    write: SqlitePool,
    /// Beside a server (`wharf gc`): write transactions poll for the lock every fraction of a
    /// millisecond instead of SQLite's backing-off waits, which a busy server's writer would
    /// win every time.
    polling: bool,
}

impl SqliteMetadata {
    /// Opens (creating and migrating) the database at `path`.
    pub async fn open(path: &Path) -> Result<SqliteMetadata, MetadataError> {
        SqliteMetadata::open_as(path, false).await
    }

    /// Opens the database of a registry a server may be running on, for garbage collection:
    /// its write transactions poll for the lock (see [`SqliteMetadata::polling`]).
    pub async fn open_beside(path: &Path) -> Result<SqliteMetadata, MetadataError> {
        SqliteMetadata::open_as(path, true).await
    }

    async fn open_as(path: &Path, polling: bool) -> Result<SqliteMetadata, MetadataError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(60))
            .foreign_keys(true);
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await?;
        MIGRATOR.run(&write).await?;
        let write = if polling {
            write.close().await;
            SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(opts.clone().busy_timeout(Duration::ZERO))
                .await?
        } else {
            write
        };
        let read = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts.read_only(true))
            .await?;
        Ok(SqliteMetadata {
            read,
            write,
            polling,
        })
    }

    /// A write transaction: the pool's, or when polling, `BEGIN IMMEDIATE` tried every
    /// 200 µs for up to a minute.
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, MetadataError> {
        if !self.polling {
            return Ok(self.write.begin().await?);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match self.write.begin_with("BEGIN IMMEDIATE").await {
                Ok(tx) => return Ok(tx),
                Err(sqlx::Error::Database(e))
                    if e.code()
                        .and_then(|c| c.parse::<i32>().ok())
                        .map(|c| c & 0xff)
                        == Some(5)
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn digest(text: &str) -> Result<Digest, MetadataError> {
    Digest::from_str(text).map_err(|e| MetadataError::Corrupt(e.to_string()))
}

fn size(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

async fn repo_id(tx: &mut Transaction<'_, Sqlite>, repo: &str) -> Result<i64, MetadataError> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO repositories (name) VALUES (?1)
         ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING id",
    )
    .bind(repo)
    .fetch_one(&mut **tx)
    .await?;
    Ok(id)
}

async fn link(
    tx: &mut Transaction<'_, Sqlite>,
    repo: &str,
    d: &Digest,
    size: u64,
) -> Result<(), MetadataError> {
    let id = repo_id(tx, repo).await?;
    sqlx::query("INSERT OR IGNORE INTO blobs (digest, size, created_at) VALUES (?1, ?2, ?3)")
        .bind(d.as_str())
        .bind(i64::try_from(size).unwrap_or(i64::MAX))
        .bind(now())
        .execute(&mut **tx)
        .await?;
    // Linking again refreshes the time, so a collection leaves it alone for its grace period.
    sqlx::query(
        "INSERT INTO repo_blobs (repo_id, digest, linked_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (repo_id, digest) DO UPDATE SET linked_at = excluded.linked_at",
    )
    .bind(id)
    .bind(d.as_str())
    .bind(now())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The largest manifest a search reads for a description (an image manifest or an index with
/// its annotations is a few KiB): one request reads at most 100 of them.
const SEARCH_MANIFEST_MAX: i64 = 64 << 10;

/// Milliseconds since the epoch: when a tag was last pointed (so "the latest tag" is told apart
/// within a second; rows written before kept seconds, which are older by any measure).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn page(mut names: Vec<String>, n: u32) -> Page {
    let more = names.len() > n as usize;
    names.truncate(n as usize);
    Page { names, more }
}

impl Metadata for SqliteMetadata {
    fn repo_blob<'a>(
        &'a self,
        repo: &'a str,
        d: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<u64>, MetadataError>> {
        Box::pin(async move {
            let row: Option<i64> = sqlx::query_scalar(
                "SELECT b.size FROM repo_blobs rb
                 JOIN repositories r ON r.id = rb.repo_id
                 JOIN blobs b ON b.digest = rb.digest
                 WHERE r.name = ?1 AND rb.digest = ?2",
            )
            .bind(repo)
            .bind(d.as_str())
            .fetch_optional(&self.read)
            .await?;
            Ok(row.map(size))
        })
    }

    fn blob_repos<'a>(
        &'a self,
        d: &'a Digest,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<(String, u64)>, MetadataError>> {
        Box::pin(async move {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT r.name, b.size FROM repo_blobs rb
                 JOIN repositories r ON r.id = rb.repo_id
                 JOIN blobs b ON b.digest = rb.digest
                 WHERE rb.digest = ?1 ORDER BY r.name LIMIT ?2",
            )
            .bind(d.as_str())
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?;
            Ok(rows.into_iter().map(|(n, s)| (n, size(s))).collect())
        })
    }

    fn link_blob<'a>(
        &'a self,
        repo: &'a str,
        d: &'a Digest,
        sz: u64,
    ) -> BoxFuture<'a, Result<(), MetadataError>> {
        Box::pin(async move {
            let mut tx = self.write.begin().await?;
            link(&mut tx, repo, d, sz).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn unlink_blob<'a>(
        &'a self,
        repo: &'a str,
        d: &'a Digest,
    ) -> BoxFuture<'a, Result<Unlink, MetadataError>> {
        Box::pin(async move {
            // One writer connection: nothing can store a manifest between the check and the
            // delete.
            let mut tx = self.write.begin().await?;
            let referenced: Option<String> = sqlx::query_scalar(
                "SELECT f.manifest FROM manifest_refs f JOIN repositories r ON r.id = f.repo_id
                 WHERE r.name = ?1 AND f.child = ?2 LIMIT 1",
            )
            .bind(repo)
            .bind(d.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(m) = referenced {
                return Ok(Unlink::Referenced(digest(&m)?));
            }
            let r = sqlx::query(
                "DELETE FROM repo_blobs WHERE digest = ?2
                 AND repo_id = (SELECT id FROM repositories WHERE name = ?1)",
            )
            .bind(repo)
            .bind(d.as_str())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(if r.rows_affected() > 0 {
                Unlink::Unlinked
            } else {
                Unlink::NotLinked
            })
        })
    }

    fn missing<'a>(
        &'a self,
        repo: &'a str,
        digests: &'a [Digest],
    ) -> BoxFuture<'a, Result<Vec<Digest>, MetadataError>> {
        Box::pin(async move {
            let mut conn = self.read.acquire().await?;
            let id: Option<i64> = sqlx::query_scalar("SELECT id FROM repositories WHERE name = ?1")
                .bind(repo)
                .fetch_optional(&mut *conn)
                .await?;
            let Some(id) = id else {
                return Ok(digests.to_vec());
            };
            let mut out = Vec::new();
            for d in digests {
                let found: Option<i64> = sqlx::query_scalar(
                    "SELECT 1 FROM repo_blobs WHERE repo_id = ?1 AND digest = ?2
                     UNION ALL SELECT 1 FROM manifests WHERE repo_id = ?1 AND digest = ?2 LIMIT 1",
                )
                .bind(id)
                .bind(d.as_str())
                .fetch_optional(&mut *conn)
                .await?;
                if found.is_none() {
                    out.push(d.clone());
                }
            }
            Ok(out)
        })
    }

    fn put_manifest<'a>(
        &'a self,
        m: &'a NewManifest,
    ) -> BoxFuture<'a, Result<Option<Digest>, MetadataError>> {
        Box::pin(async move {
            let mut tx = self.write.begin().await?;
            let id = repo_id(&mut tx, &m.repo).await?;
            // The children again, inside the write: a blob unlinked (or a manifest deleted)
            // since the caller checked must not end up referenced.
            for child in &m.children {
                let present: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM repo_blobs WHERE repo_id = ?1 AND digest = ?2)
                     OR EXISTS (SELECT 1 FROM manifests WHERE repo_id = ?1 AND digest = ?2)",
                )
                .bind(id)
                .bind(child.as_str())
                .fetch_one(&mut *tx)
                .await?;
                if !present {
                    return Ok(Some(child.clone()));
                }
            }
            let t = now();
            let inserted = sqlx::query(
                "INSERT OR IGNORE INTO manifests
                 (repo_id, digest, media_type, content, artifact_type, subject, annotations, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .bind(id)
            .bind(m.digest.as_str())
            .bind(&m.media_type)
            .bind(m.content.as_ref())
            .bind(m.artifact_type.as_deref())
            .bind(m.subject.as_ref().map(Digest::as_str))
            .bind(m.annotations.as_deref())
            .bind(t)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            sqlx::query("UPDATE manifests SET pushed_at = ?3 WHERE repo_id = ?1 AND digest = ?2")
                .bind(id)
                .bind(m.digest.as_str())
                .bind(t)
                .execute(&mut *tx)
                .await?;
            if inserted {
                for child in m.children.iter().chain(&m.optional) {
                    sqlx::query(
                        "INSERT OR IGNORE INTO manifest_refs (repo_id, manifest, child) VALUES (?1, ?2, ?3)",
                    )
                    .bind(id)
                    .bind(m.digest.as_str())
                    .bind(child.as_str())
                    .execute(&mut *tx)
                    .await?;
                }
            }
            if let Some(tag) = &m.tag {
                sqlx::query(
                    "INSERT INTO tags (repo_id, name, digest, updated_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (repo_id, name) DO UPDATE SET digest = excluded.digest,
                     updated_at = excluded.updated_at",
                )
                .bind(id)
                .bind(tag)
                .bind(m.digest.as_str())
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(None)
        })
    }

    fn manifest_by_tag<'a>(
        &'a self,
        repo: &'a str,
        tag: &'a str,
    ) -> BoxFuture<'a, Result<Option<ManifestRecord>, MetadataError>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT m.digest, m.media_type, m.content FROM tags t
                 JOIN repositories r ON r.id = t.repo_id
                 JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.digest
                 WHERE r.name = ?1 AND t.name = ?2",
            )
            .bind(repo)
            .bind(tag)
            .fetch_optional(&self.read)
            .await?;
            row.map(|r| {
                Ok(ManifestRecord {
                    digest: digest(r.get::<&str, _>(0))?,
                    media_type: r.get(1),
                    content: Bytes::from(r.get::<Vec<u8>, _>(2)),
                })
            })
            .transpose()
        })
    }

    fn manifest_by_digest<'a>(
        &'a self,
        repo: &'a str,
        d: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<ManifestRecord>, MetadataError>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT m.media_type, m.content FROM manifests m
                 JOIN repositories r ON r.id = m.repo_id
                 WHERE r.name = ?1 AND m.digest = ?2",
            )
            .bind(repo)
            .bind(d.as_str())
            .fetch_optional(&self.read)
            .await?;
            Ok(row.map(|r| ManifestRecord {
                digest: d.clone(),
                media_type: r.get(0),
                content: Bytes::from(r.get::<Vec<u8>, _>(1)),
            }))
        })
    }

    fn delete_manifest<'a>(
        &'a self,
        repo: &'a str,
        d: &'a Digest,
    ) -> BoxFuture<'a, Result<bool, MetadataError>> {
        Box::pin(async move {
            // Tags and refs go with it (ON DELETE CASCADE).
            let r = sqlx::query(
                "DELETE FROM manifests WHERE digest = ?2
                 AND repo_id = (SELECT id FROM repositories WHERE name = ?1)",
            )
            .bind(repo)
            .bind(d.as_str())
            .execute(&self.write)
            .await?;
            Ok(r.rows_affected() > 0)
        })
    }

    fn delete_tag<'a>(
        &'a self,
        repo: &'a str,
        tag: &'a str,
    ) -> BoxFuture<'a, Result<bool, MetadataError>> {
        Box::pin(async move {
            let r = sqlx::query(
                "DELETE FROM tags WHERE name = ?2
                 AND repo_id = (SELECT id FROM repositories WHERE name = ?1)",
            )
            .bind(repo)
            .bind(tag)
            .execute(&self.write)
            .await?;
            Ok(r.rows_affected() > 0)
        })
    }

    fn repo_exists<'a>(&'a self, repo: &'a str) -> BoxFuture<'a, Result<bool, MetadataError>> {
        Box::pin(async move {
            let id: Option<i64> = sqlx::query_scalar("SELECT id FROM repositories WHERE name = ?1")
                .bind(repo)
                .fetch_optional(&self.read)
                .await?;
            Ok(id.is_some())
        })
    }

    fn tags<'a>(
        &'a self,
        repo: &'a str,
        n: u32,
        last: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Page, MetadataError>> {
        Box::pin(async move {
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repo_id
                 WHERE r.name = ?1 AND t.name > ?2 ORDER BY t.name LIMIT ?3",
            )
            .bind(repo)
            .bind(last.unwrap_or(""))
            .bind(i64::from(n) + 1)
            .fetch_all(&self.read)
            .await?;
            Ok(page(names, n))
        })
    }

    fn catalog<'a>(
        &'a self,
        n: u32,
        last: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Page, MetadataError>> {
        Box::pin(async move {
            // A repository shows once something was pushed into it and stays while it holds
            // a manifest or a blob.
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT r.name FROM repositories r WHERE r.name > ?1
                 AND r.id IN (SELECT m.repo_id FROM manifests m
                              UNION SELECT b.repo_id FROM repo_blobs b)
                 ORDER BY r.name LIMIT ?2",
            )
            .bind(last.unwrap_or(""))
            .bind(i64::from(n) + 1)
            .fetch_all(&self.read)
            .await?;
            Ok(page(names, n))
        })
    }

    fn search<'a>(
        &'a self,
        query: &'a str,
        offset: u32,
        limit: u32,
    ) -> BoxFuture<'a, Result<(u64, Vec<SearchHit>), MetadataError>> {
        Box::pin(async move {
            let total: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM repositories r WHERE instr(lower(r.name), lower(?1)) > 0
                 AND r.id IN (SELECT m.repo_id FROM manifests m)",
            )
            .bind(query)
            .fetch_one(&self.read)
            .await?;
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT r.name FROM repositories r WHERE instr(lower(r.name), lower(?)) > 0
                 AND r.id IN (SELECT m.repo_id FROM manifests m)
                 ORDER BY r.name LIMIT ? OFFSET ?",
            )
            .bind(query)
            .bind(i64::from(limit))
            .bind(i64::from(offset))
            .fetch_all(&self.read)
            .await?;
            // Each with the manifest of its most recently updated tag, if it has one.
            let mut hits = Vec::with_capacity(names.len());
            for name in names {
                let row = sqlx::query(
                    "SELECT m.digest, m.media_type,
                     CASE WHEN length(m.content) <= ?2 THEN m.content END FROM tags t
                     JOIN repositories r ON r.id = t.repo_id
                     JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.digest
                     WHERE r.name = ?1 ORDER BY t.updated_at DESC, t.name LIMIT 1",
                )
                .bind(&name)
                .bind(SEARCH_MANIFEST_MAX)
                .fetch_optional(&self.read)
                .await?;
                // The latest tag's manifest; none when it is too large to read for this.
                let manifest = match row {
                    Some(r) => match r.get::<Option<Vec<u8>>, _>(2) {
                        Some(content) => Some(ManifestRecord {
                            digest: digest(r.get::<&str, _>(0))?,
                            media_type: r.get(1),
                            content: Bytes::from(content),
                        }),
                        None => None,
                    },
                    None => None,
                };
                hits.push(SearchHit { name, manifest });
            }
            Ok((u64::try_from(total).unwrap_or(0), hits))
        })
    }

    fn referrers<'a>(
        &'a self,
        repo: &'a str,
        subject: &'a Digest,
    ) -> BoxFuture<'a, Result<Vec<Referrer>, MetadataError>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT m.digest, m.media_type, length(m.content), m.artifact_type, m.annotations
                 FROM manifests m JOIN repositories r ON r.id = m.repo_id
                 WHERE r.name = ?1 AND m.subject = ?2 ORDER BY m.created_at, m.digest",
            )
            .bind(repo)
            .bind(subject.as_str())
            .fetch_all(&self.read)
            .await?;
            rows.into_iter()
                .map(|r| {
                    Ok(Referrer {
                        digest: digest(r.get::<&str, _>(0))?,
                        media_type: r.get(1),
                        size: size(r.get(2)),
                        artifact_type: r.get(3),
                        annotations: r.get(4),
                    })
                })
                .collect()
        })
    }

    fn create_upload<'a>(
        &'a self,
        id: &'a str,
        repo: &'a str,
    ) -> BoxFuture<'a, Result<(), MetadataError>> {
        Box::pin(async move {
            let t = now();
            sqlx::query("INSERT INTO uploads (id, repo, started_at) VALUES (?1, ?2, ?3)")
                .bind(id)
                .bind(repo)
                .bind(t)
                .execute(&self.write)
                .await?;
            Ok(())
        })
    }

    fn upload<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<UploadRecord>, MetadataError>> {
        Box::pin(async move {
            let repo: Option<String> = sqlx::query_scalar("SELECT repo FROM uploads WHERE id = ?1")
                .bind(id)
                .fetch_optional(&self.read)
                .await?;
            Ok(repo.map(|repo| UploadRecord {
                id: id.to_owned(),
                repo,
            }))
        })
    }

    fn complete_upload<'a>(
        &'a self,
        id: &'a str,
        repo: &'a str,
        d: &'a Digest,
        size: u64,
    ) -> BoxFuture<'a, Result<(), MetadataError>> {
        Box::pin(async move {
            let mut tx = self.write.begin().await?;
            sqlx::query("DELETE FROM uploads WHERE id = ?1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            link(&mut tx, repo, d, size).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn delete_upload<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, MetadataError>> {
        Box::pin(async move {
            let r = sqlx::query("DELETE FROM uploads WHERE id = ?1")
                .bind(id)
                .execute(&self.write)
                .await?;
            Ok(r.rows_affected() > 0)
        })
    }

    fn uploads_started_before(
        &self,
        before: u64,
    ) -> BoxFuture<'_, Result<Vec<String>, MetadataError>> {
        Box::pin(async move {
            let ids: Vec<String> =
                sqlx::query_scalar("SELECT id FROM uploads WHERE started_at < ?1")
                    .bind(i64::try_from(before).unwrap_or(i64::MAX))
                    .fetch_all(&self.read)
                    .await?;
            Ok(ids)
        })
    }

    fn upload_count(&self) -> BoxFuture<'_, Result<u64, MetadataError>> {
        Box::pin(async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM uploads")
                .fetch_one(&self.read)
                .await?;
            Ok(size(n))
        })
    }

    fn gc_snapshot(&self) -> BoxFuture<'_, Result<GcSnapshot, MetadataError>> {
        Box::pin(async move {
            let mut tx = self.read.begin().await?;
            let repos: Vec<(i64, String)> =
                sqlx::query_as("SELECT id, name FROM repositories ORDER BY name")
                    .fetch_all(&mut *tx)
                    .await?;
            let mut by_id: HashMap<i64, GcRepo> = repos
                .into_iter()
                .map(|(id, name)| {
                    (
                        id,
                        GcRepo {
                            name,
                            ..GcRepo::default()
                        },
                    )
                })
                .collect();
            let tags: Vec<(i64, String, String, i64)> =
                sqlx::query_as("SELECT repo_id, name, digest, updated_at FROM tags")
                    .fetch_all(&mut *tx)
                    .await?;
            for (id, name, d, at) in tags {
                if let Some(r) = by_id.get_mut(&id) {
                    r.tags.push((name, d, at));
                }
            }
            let manifests: Vec<(i64, String, i64, Option<String>)> = sqlx::query_as(
                "SELECT repo_id, digest, max(created_at, pushed_at), subject FROM manifests",
            )
            .fetch_all(&mut *tx)
            .await?;
            for (id, d, at, subject) in manifests {
                if let Some(r) = by_id.get_mut(&id) {
                    r.manifests.push((d, at, subject));
                }
            }
            let refs: Vec<(i64, String, String)> =
                sqlx::query_as("SELECT repo_id, manifest, child FROM manifest_refs")
                    .fetch_all(&mut *tx)
                    .await?;
            for (id, m, c) in refs {
                if let Some(r) = by_id.get_mut(&id) {
                    r.refs.push((m, c));
                }
            }
            let links: Vec<(i64, String, i64)> =
                sqlx::query_as("SELECT repo_id, digest, linked_at FROM repo_blobs")
                    .fetch_all(&mut *tx)
                    .await?;
            for (id, d, at) in links {
                if let Some(r) = by_id.get_mut(&id) {
                    r.links.push((d, at));
                }
            }
            let blobs: Vec<(String, i64)> = sqlx::query_as("SELECT digest, size FROM blobs")
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            let mut repos: Vec<GcRepo> = by_id.into_values().collect();
            repos.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(GcSnapshot {
                repos,
                blobs: blobs.into_iter().map(|(d, s)| (d, size(s))).collect(),
            })
        })
    }

    fn gc_delete_tags<'a>(
        &'a self,
        tags: &'a [(String, String, String, i64)],
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, MetadataError>> {
        Box::pin(async move {
            let mut tx = self.begin_write().await?;
            let mut deleted = Vec::new();
            for (repo, name, digest, at) in tags {
                let r = sqlx::query(
                    "DELETE FROM tags WHERE name = ?2 AND digest = ?3 AND updated_at = ?4
                     AND repo_id = (SELECT id FROM repositories WHERE name = ?1)",
                )
                .bind(repo)
                .bind(name)
                .bind(digest)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                if r.rows_affected() > 0 {
                    deleted.push((repo.clone(), name.clone()));
                }
            }
            if !deleted.is_empty() {
                bump_epoch(&mut tx).await?;
            }
            tx.commit().await?;
            Ok(deleted)
        })
    }

    fn gc_delete_manifests<'a>(
        &'a self,
        work: &'a [(String, Vec<String>, i64)],
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, MetadataError>> {
        Box::pin(async move {
            let mut tx = self.begin_write().await?;
            let mut deleted = Vec::new();
            for (repo, digests, before) in work {
                let list = serde_json::to_string(digests).unwrap_or_else(|_| "[]".into());
                // Each round deletes what nothing left points at: parents before their
                // children, subjects before their referrers; a manifest tagged or referenced
                // meanwhile stays, and so does everything it holds.
                loop {
                    let round: Vec<String> = sqlx::query_scalar(
                        "DELETE FROM manifests AS m
                         WHERE m.repo_id = (SELECT id FROM repositories WHERE name = ?1)
                           AND m.digest IN (SELECT value FROM json_each(?2))
                           AND max(m.created_at, m.pushed_at) < ?3
                           AND NOT EXISTS (SELECT 1 FROM tags t
                                           WHERE t.repo_id = m.repo_id AND t.digest = m.digest)
                           AND NOT EXISTS (SELECT 1 FROM manifest_refs r
                                           WHERE r.repo_id = m.repo_id AND r.child = m.digest)
                           AND (m.subject IS NULL OR NOT EXISTS (
                                SELECT 1 FROM manifests s
                                WHERE s.repo_id = m.repo_id AND s.digest = m.subject))
                         RETURNING digest",
                    )
                    .bind(repo)
                    .bind(&list)
                    .bind(before)
                    .fetch_all(&mut *tx)
                    .await?;
                    if round.is_empty() {
                        break;
                    }
                    deleted.extend(round.into_iter().map(|d| (repo.clone(), d)));
                }
            }
            if !deleted.is_empty() {
                bump_epoch(&mut tx).await?;
            }
            tx.commit().await?;
            Ok(deleted)
        })
    }

    fn gc_unlink<'a>(
        &'a self,
        work: &'a [(String, Vec<String>)],
        before: i64,
    ) -> BoxFuture<'a, Result<usize, MetadataError>> {
        Box::pin(async move {
            let mut tx = self.begin_write().await?;
            let mut unlinked = 0;
            for (repo, digests) in work {
                let list = serde_json::to_string(digests).unwrap_or_else(|_| "[]".into());
                let r = sqlx::query(
                    "DELETE FROM repo_blobs AS b
                     WHERE b.repo_id = (SELECT id FROM repositories WHERE name = ?1)
                       AND b.digest IN (SELECT value FROM json_each(?2))
                       AND b.linked_at < ?3
                       AND NOT EXISTS (SELECT 1 FROM manifest_refs r
                                       WHERE r.repo_id = b.repo_id AND r.child = b.digest)",
                )
                .bind(repo)
                .bind(&list)
                .bind(before)
                .execute(&mut *tx)
                .await?;
                unlinked += usize::try_from(r.rows_affected()).unwrap_or(usize::MAX);
            }
            tx.commit().await?;
            Ok(unlinked)
        })
    }

    fn gc_delete_blobs<'a>(
        &'a self,
        digests: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<(String, u64)>, MetadataError>> {
        Box::pin(async move {
            let list = serde_json::to_string(digests).unwrap_or_else(|_| "[]".into());
            let mut tx = self.begin_write().await?;
            let deleted: Vec<(String, i64)> = sqlx::query_as(
                "DELETE FROM blobs AS b
                 WHERE b.digest IN (SELECT value FROM json_each(?1))
                   AND NOT EXISTS (SELECT 1 FROM repo_blobs l WHERE l.digest = b.digest)
                 RETURNING digest, size",
            )
            .bind(&list)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(deleted.into_iter().map(|(d, s)| (d, size(s))).collect())
        })
    }

    fn gc_epoch(&self) -> BoxFuture<'_, Result<i64, MetadataError>> {
        Box::pin(async move {
            let v: Option<i64> = sqlx::query_scalar("SELECT value FROM epochs WHERE name = 'gc'")
                .fetch_optional(&self.read)
                .await?;
            Ok(v.unwrap_or(0))
        })
    }

    fn blob_known<'a>(&'a self, d: &'a str) -> BoxFuture<'a, Result<bool, MetadataError>> {
        Box::pin(async move {
            let known: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM blobs WHERE digest = ?1)")
                    .bind(d)
                    .fetch_one(&self.write)
                    .await?;
            Ok(known)
        })
    }
}

async fn bump_epoch(tx: &mut Transaction<'_, Sqlite>) -> Result<(), MetadataError> {
    sqlx::query(
        "INSERT INTO epochs (name, value) VALUES ('gc', 1)
         ON CONFLICT (name) DO UPDATE SET value = value + 1",
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn new_manifest(repo: &str, content: &[u8], children: Vec<Digest>) -> NewManifest {
        NewManifest {
            repo: repo.into(),
            digest: Digest::sha256(content),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            content: Bytes::copy_from_slice(content),
            artifact_type: None,
            subject: None,
            annotations: None,
            children,
            optional: Vec::new(),
            tag: Some("v1".into()),
        }
    }

    /// A blob and the manifests that use it: the write that stores one checks the other, so a
    /// manifest never ends up pointing at a blob unlinked meanwhile, and a referenced blob is
    /// never unlinked.
    #[tokio::test]
    async fn manifests_and_blob_unlinks_check_each_other_in_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMetadata::open(&dir.path().join("registry.db"))
            .await
            .unwrap();
        let layer = Digest::sha256(b"layer");
        meta.link_blob("r", &layer, 5).await.unwrap();
        // Unlinked after the caller's check, before the manifest's write: nothing is stored.
        meta.unlink_blob("r", &layer).await.unwrap();
        let m = new_manifest("r", b"{\"m\":1}", vec![layer.clone()]);
        assert_eq!(meta.put_manifest(&m).await.unwrap(), Some(layer.clone()));
        assert!(meta.manifest_by_tag("r", "v1").await.unwrap().is_none());
        // Linked again: stored, and from then on the blob cannot be unlinked.
        meta.link_blob("r", &layer, 5).await.unwrap();
        assert_eq!(meta.put_manifest(&m).await.unwrap(), None);
        assert_eq!(
            meta.unlink_blob("r", &layer).await.unwrap(),
            Unlink::Referenced(m.digest.clone())
        );
        assert!(meta.delete_manifest("r", &m.digest).await.unwrap());
        assert_eq!(
            meta.unlink_blob("r", &layer).await.unwrap(),
            Unlink::Unlinked
        );
        assert_eq!(
            meta.unlink_blob("r", &layer).await.unwrap(),
            Unlink::NotLinked
        );
    }
}

#[cfg(test)]
mod search_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn search_pages_by_offset() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMetadata::open(&dir.path().join("registry.db"))
            .await
            .unwrap();
        for (i, repo) in ["x-a", "x-b", "x-c"].iter().enumerate() {
            let content = format!("{{\"n\":{i}}}");
            let m = NewManifest {
                repo: (*repo).into(),
                digest: Digest::sha256(content.as_bytes()),
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                content: Bytes::from(content.into_bytes()),
                artifact_type: None,
                subject: None,
                annotations: None,
                children: Vec::new(),
                optional: Vec::new(),
                tag: Some("v1".into()),
            };
            meta.put_manifest(&m).await.unwrap();
        }
        // A second tag on the first repository: still one row for it.
        let content = "{\"n\":9}";
        meta.put_manifest(&NewManifest {
            repo: "x-a".into(),
            digest: Digest::sha256(content.as_bytes()),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            content: Bytes::from(content),
            artifact_type: None,
            subject: None,
            annotations: None,
            children: Vec::new(),
            optional: Vec::new(),
            tag: Some("v2".into()),
        })
        .await
        .unwrap();
        // SQLite (3.51.3, bundled) returned x-a twice under LIMIT/OFFSET when the filter was an
        // EXISTS over its two manifests; the filter is an IN now.
        for (off, want) in [(0, "x-a"), (1, "x-b"), (2, "x-c")] {
            let (_, h) = meta.search("X-", off, 1).await.unwrap();
            assert_eq!(
                h.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(),
                [want]
            );
        }
        let page = meta.catalog(10, None).await.unwrap();
        // Paging by one: every name once, in order, `more` until the last.
        let mut last: Option<String> = None;
        let mut seen = Vec::new();
        loop {
            let page = meta.catalog(1, last.as_deref()).await.unwrap();
            seen.extend(page.names.clone());
            last = page.names.last().cloned();
            if !page.more {
                break;
            }
        }
        assert_eq!(seen, ["x-a", "x-b", "x-c"]);
        assert_eq!(
            page.names,
            ["x-a", "x-b", "x-c"],
            "the catalog lists each once"
        );
        let (total, hits) = meta.search("X-", 2, 2).await.unwrap();
        let names: Vec<_> = hits.iter().map(|h| h.name.as_str()).collect();
        assert_eq!((total, names), (3, vec!["x-c"]));
    }
}
