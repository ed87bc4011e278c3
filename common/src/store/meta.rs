//! Images, tags and repo digests: their tables (the build cache's are `cache.rs`'s, the leases'
//! `lease.rs`'s).

use sqlx::Row;

use crate::digest::Digest;
use crate::reference::{Reference, RepoName};

use super::lease::now_secs;
use super::{LocalStore, StoreError};

/// An image the store keeps, with every name pointing at it.
#[derive(Clone, Debug)]
pub struct ImageRecord {
    /// The stored manifest (or index) digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// The config digest: docker's image id.
    pub config: Option<Digest>,
    /// When it was added (seconds since the epoch).
    pub added_at: i64,
    /// Tags pointing at it.
    pub names: Vec<Reference>,
    /// `repo@digest` forms it was pulled or pushed as.
    pub repo_digests: Vec<Reference>,
}

impl ImageRecord {
    /// The image id docker would show: the config digest, else the manifest's.
    pub fn id(&self) -> &Digest {
        self.config.as_ref().unwrap_or(&self.digest)
    }
}

/// A name resolved in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The stored manifest or index.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
}

fn parse_digest(s: &str) -> Result<Digest, StoreError> {
    s.parse().map_err(|e| StoreError::Db {
        op: "reading a stored digest",
        source: sqlx::Error::Decode(Box::new(e)),
    })
}

impl LocalStore {
    /// Records an image and points `names` at it, in one transaction. The blobs it references
    /// must already be in the store.
    pub async fn put_image(
        &self,
        digest: &Digest,
        media_type: &str,
        config: Option<&Digest>,
        names: &[Reference],
        repo_digest: Option<(&RepoName, &Digest)>,
    ) -> Result<(), StoreError> {
        let _w = self.write_guard().await;
        let mut tx = self
            .db()
            .begin()
            .await
            .map_err(StoreError::db("recording an image"))?;
        let now = now_secs();
        sqlx::query(
            "INSERT INTO images (digest, media_type, config, added_at) VALUES (?, ?, ?, ?)
             ON CONFLICT(digest) DO UPDATE SET config = COALESCE(excluded.config, images.config)",
        )
        .bind(digest.as_str())
        .bind(media_type)
        .bind(config.map(Digest::as_str))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::db("recording an image"))?;
        for name in names {
            let name = name.tagged().to_string();
            sqlx::query(
                "INSERT INTO refs (name, image, updated_at) VALUES (?, ?, ?)
                 ON CONFLICT(name) DO UPDATE SET image = excluded.image, updated_at = excluded.updated_at",
            )
            .bind(&name)
            .bind(digest.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db("tagging an image"))?;
        }
        if let Some((repo, d)) = repo_digest {
            sqlx::query(
                "INSERT INTO repo_digests (repo, digest, image) VALUES (?, ?, ?)
                 ON CONFLICT(repo, digest) DO UPDATE SET image = excluded.image",
            )
            .bind(repo.to_string())
            .bind(d.as_str())
            .bind(digest.as_str())
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db("recording a repo digest"))?;
        }
        tx.commit()
            .await
            .map_err(StoreError::db("recording an image"))?;
        Ok(())
    }

    /// Finds what a reference names: by digest (a stored image or a repo digest of that
    /// repository) or by tag.
    pub async fn resolve(&self, r: &Reference) -> Result<Option<Resolved>, StoreError> {
        let row = if let Some(d) = r.digest() {
            sqlx::query(
                "SELECT digest, media_type FROM images WHERE digest = ?1
                 UNION ALL
                 SELECT i.digest, i.media_type FROM repo_digests rd JOIN images i ON i.digest = rd.image
                   WHERE rd.repo = ?2 AND rd.digest = ?1
                 LIMIT 1",
            )
            .bind(d.as_str())
            .bind(r.repo().to_string())
            .fetch_optional(self.db())
            .await
        } else {
            sqlx::query(
                "SELECT i.digest, i.media_type FROM refs r JOIN images i ON i.digest = r.image WHERE r.name = ?",
            )
            .bind(r.tagged().to_string())
            .fetch_optional(self.db())
            .await
        }
        .map_err(StoreError::db("resolving a name"))?;
        row.map(|row| {
            Ok(Resolved {
                digest: parse_digest(row.get::<&str, _>(0))?,
                media_type: row.get(1),
            })
        })
        .transpose()
    }

    /// Whether the image `digest` is stored and every one of `names` resolves to it (a
    /// cached rebuild: storing it again would only rewrite what is there).
    pub async fn has_image_as(
        &self,
        digest: &Digest,
        names: &[Reference],
    ) -> Result<bool, StoreError> {
        if self.image(digest).await?.is_none() {
            return Ok(false);
        }
        for n in names {
            if self
                .resolve(n)
                .await?
                .is_none_or(|found| found.digest != *digest)
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Every image, newest first, with its names.
    pub async fn list_images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        self.query_images(None).await
    }

    /// One image by manifest digest.
    pub async fn image(&self, digest: &Digest) -> Result<Option<ImageRecord>, StoreError> {
        Ok(self
            .query_images(Some(digest.as_str()))
            .await?
            .into_iter()
            .next())
    }

    async fn query_images(&self, arg: Option<&str>) -> Result<Vec<ImageRecord>, StoreError> {
        macro_rules! images_query {
            ($filter:literal) => {
                concat!(
                    "SELECT i.digest, i.media_type, i.config, i.added_at,
                        (SELECT group_concat(name, char(10)) FROM (SELECT name FROM refs WHERE image = i.digest ORDER BY name)),
                        (SELECT group_concat(repo || '@' || digest, char(10)) FROM
                            (SELECT repo, digest FROM repo_digests WHERE image = i.digest ORDER BY repo, digest))
                     FROM images i ",
                    $filter,
                    " ORDER BY i.added_at DESC, i.digest"
                )
            };
        }
        let q = match arg {
            Some(a) => sqlx::query(images_query!("WHERE i.digest = ?")).bind(a),
            None => sqlx::query(images_query!("")),
        };
        let rows = q
            .fetch_all(self.db())
            .await
            .map_err(StoreError::db("listing images"))?;
        rows.into_iter()
            .map(|row| {
                let split = |s: Option<String>| -> Vec<Reference> {
                    s.unwrap_or_default()
                        .lines()
                        .filter_map(|l| Reference::parse_exact(l).ok())
                        .collect()
                };
                Ok(ImageRecord {
                    digest: parse_digest(row.get::<&str, _>(0))?,
                    media_type: row.get(1),
                    config: row
                        .get::<Option<&str>, _>(2)
                        .map(parse_digest)
                        .transpose()?,
                    added_at: row.get(3),
                    names: split(row.get(4)),
                    repo_digests: split(row.get(5)),
                })
            })
            .collect()
    }

    /// Images whose id (config digest) or manifest digest starts with `prefix` (hex, with or
    /// without the algorithm).
    pub async fn images_by_id_prefix(&self, prefix: &str) -> Result<Vec<ImageRecord>, StoreError> {
        let pattern = if prefix.contains(':') {
            format!("{prefix}%")
        } else {
            format!("sha256:{prefix}%")
        };
        let all = self.list_images().await?;
        let like = |d: &Digest| d.as_str().starts_with(pattern.trim_end_matches('%'));
        let mut by_config: Vec<ImageRecord> = all
            .iter()
            .filter(|i| i.config.as_ref().is_some_and(like))
            .cloned()
            .collect();
        if by_config.is_empty() {
            by_config = all.into_iter().filter(|i| like(&i.digest)).collect();
        }
        Ok(by_config)
    }

    /// Removes a tag, returning the image it pointed at.
    pub async fn untag(&self, name: &Reference) -> Result<Option<Digest>, StoreError> {
        let name = name.tagged().to_string();
        let _w = self.write_guard().await;
        let row: Option<String> =
            sqlx::query_scalar("DELETE FROM refs WHERE name = ? RETURNING image")
                .bind(&name)
                .fetch_optional(self.db())
                .await
                .map_err(StoreError::db("removing a tag"))?;
        row.as_deref().map(parse_digest).transpose()
    }

    /// Removes a repo digest (`repo@digest`) from an image.
    pub async fn remove_repo_digest(&self, r: &Reference) -> Result<(), StoreError> {
        if let Some(d) = r.digest() {
            let _w = self.write_guard().await;
            sqlx::query("DELETE FROM repo_digests WHERE repo = ? AND digest = ?")
                .bind(r.repo().to_string())
                .bind(d.as_str())
                .execute(self.db())
                .await
                .map_err(StoreError::db("removing a repo digest"))?;
        }
        Ok(())
    }

    /// Forgets an image (its tags and repo digests with it) and collects the blobs only it used.
    pub async fn delete_image(&self, digest: &Digest) -> Result<super::GcReport, StoreError> {
        self.delete_image_where(digest, false)
            .await
            .map(Option::unwrap_or_default)
    }

    /// As [`LocalStore::delete_image`], but only if no name points at the image, decided in
    /// the same statement that deletes: a pull that names it again meanwhile keeps it. `None`
    /// when it was named (and kept).
    pub async fn delete_image_if_unnamed(
        &self,
        digest: &Digest,
    ) -> Result<Option<super::GcReport>, StoreError> {
        self.delete_image_where(digest, true).await
    }

    async fn delete_image_where(
        &self,
        digest: &Digest,
        unnamed: bool,
    ) -> Result<Option<super::GcReport>, StoreError> {
        let blobs = self.reachable_from(std::slice::from_ref(digest)).await?;
        let deleted = {
            let _w = self.write_guard().await;
            let sql = if unnamed {
                "DELETE FROM images WHERE digest = ?1 AND NOT EXISTS (SELECT 1 FROM refs WHERE image = ?1)"
            } else {
                "DELETE FROM images WHERE digest = ?1"
            };
            sqlx::query(sql)
                .bind(digest.as_str())
                .execute(self.db())
                .await
                .map_err(StoreError::db("deleting an image"))?
                .rows_affected()
        };
        if deleted == 0 && unnamed {
            return Ok(None);
        }
        self.gc(Some(blobs.into_iter().collect())).await.map(Some)
    }
}
