//! An image in the store as a build or a container starts from it: its config and its layer
//! files, every blob protected by a lease before it is read.

use std::path::PathBuf;

use serde_json::Value;

use super::meta::ImageRecord;
use super::{Lease, LocalStore, StoreError};
use crate::digest::Digest;
use crate::image::{BlobRef, Manifest, Platform, manifest_blobs};

/// A stored image's config and layers (bottom first, with where each blob's file is).
#[derive(Clone, Debug)]
pub struct StoredImage {
    /// The image config, as JSON (a build edits it).
    pub config: Value,
    /// The layer blobs and their files in the store.
    pub layers: Vec<(BlobRef, PathBuf)>,
}

impl StoredImage {
    /// Each layer's diff id, as the config lists them (the blob digest where it does not).
    pub fn diff_ids(&self) -> Vec<Digest> {
        let listed: Vec<Option<Digest>> = self
            .config
            .get("rootfs")
            .and_then(|r| r.get("diff_ids"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|v| v.as_str().and_then(|s| s.parse().ok()))
                    .collect()
            })
            .unwrap_or_default();
        self.layers
            .iter()
            .enumerate()
            .map(|(i, (b, _))| {
                listed
                    .get(i)
                    .cloned()
                    .flatten()
                    .unwrap_or_else(|| b.digest.clone())
            })
            .collect()
    }
}

impl LocalStore {
    /// The image `rec` names, for `platform` when it is an index. Each blob is protected by
    /// `lease` before it is read, so an `rmi` or a prune beside the caller cannot take it
    /// away; a layer missing from the store is [`StoreError::BlobUnknown`] (an image removed
    /// meanwhile: the caller may look it up again).
    pub async fn leased_image(
        &self,
        rec: &ImageRecord,
        platform: &Platform,
        lease: &Lease,
    ) -> Result<StoredImage, StoreError> {
        lease.protect(&rec.digest).await?;
        let bytes = self.read_blob(&rec.digest).await?;
        let (digest, manifest) = match Manifest::parse(&bytes, &rec.media_type, &rec.digest)? {
            Manifest::Image(m) => (rec.digest.clone(), m),
            Manifest::Index(index) => {
                let entry =
                    BlobRef::from_descriptor(platform.select(&index, &rec.digest)?, &rec.digest)?;
                lease.protect(&entry.digest).await?;
                let bytes = self.read_blob(&entry.digest).await?;
                match Manifest::parse(&bytes, &entry.media_type, &entry.digest)? {
                    Manifest::Image(m) => (entry.digest, m),
                    Manifest::Index(_) => {
                        return Err(crate::image::ImageError::MediaType {
                            media_type: entry.media_type,
                            digest: entry.digest,
                        }
                        .into());
                    }
                }
            }
        };
        let (config, layers) = manifest_blobs(&manifest, &digest)?;
        let mut all: Vec<_> = layers.iter().map(|b| b.digest.clone()).collect();
        all.push(config.digest.clone());
        lease.protect_all(&all).await?;
        let bytes = self.read_blob(&config.digest).await?;
        let config: Value =
            serde_json::from_slice(&bytes).map_err(|source| crate::image::ImageError::Json {
                what: "config",
                digest: config.digest,
                source,
            })?;
        let mut out = Vec::with_capacity(layers.len());
        for b in layers {
            if self.blob_size(&b.digest).await.is_none() {
                return Err(StoreError::BlobUnknown(b.digest));
            }
            let path = self.blob_path(&b.digest);
            out.push((b, path));
        }
        Ok(StoredImage {
            config,
            layers: out,
        })
    }
}
