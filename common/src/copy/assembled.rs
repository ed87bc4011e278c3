//! An image made in this process (imported, or built): a config and layer files on disk,
//! with the OCI manifest over them, offered to the copy engine as a [`Source`].

use std::path::PathBuf;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde_json::json;

use super::{CopyError, Source};
use crate::blob::{BlobStream, Fetched, bytes_stream, file_stream};
use crate::digest::Digest;
use crate::image::BlobRef;
use crate::media_type;
use crate::reference::Reference;

/// A config, its layers' files, and the manifest naming them.
pub struct AssembledImage {
    manifest: Fetched,
    config: Bytes,
    config_digest: Digest,
    layers: Vec<(BlobRef, PathBuf)>,
}

impl AssembledImage {
    /// Writes the OCI manifest for `config` and `layers` (each a blob and the file holding it,
    /// whose content was verified as it was written).
    pub fn new(config: Bytes, layers: Vec<(BlobRef, PathBuf)>) -> AssembledImage {
        let config_digest = Digest::sha256(&config);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": {"mediaType": media_type::OCI_CONFIG, "digest": config_digest.as_str(), "size": config.len()},
            "layers": layers.iter().map(|(b, _)| json!({"mediaType": b.media_type, "digest": b.digest.as_str(), "size": b.size})).collect::<Vec<_>>(),
        });
        let manifest = Bytes::from(manifest.to_string());
        AssembledImage {
            manifest: Fetched {
                digest: Digest::sha256(&manifest),
                bytes: manifest,
                media_type: media_type::OCI_MANIFEST.to_owned(),
            },
            config,
            config_digest,
            layers,
        }
    }

    /// The config digest (the image id).
    pub fn config_digest(&self) -> &Digest {
        &self.config_digest
    }

    /// The config JSON.
    pub fn config(&self) -> &[u8] {
        &self.config
    }

    /// The manifest.
    pub fn manifest(&self) -> &Fetched {
        &self.manifest
    }
}

impl Source for AssembledImage {
    fn resolve<'a>(
        &'a self,
        _reference: Option<&'a Reference>,
    ) -> BoxFuture<'a, Result<Fetched, CopyError>> {
        Box::pin(async move { Ok(self.manifest.clone()) })
    }

    fn manifest<'a>(&'a self, blob: &'a BlobRef) -> BoxFuture<'a, Result<Bytes, CopyError>> {
        Box::pin(async move {
            if blob.digest == self.manifest.digest {
                Ok(self.manifest.bytes.clone())
            } else {
                Err(CopyError::NotFound(blob.digest.to_string()))
            }
        })
    }

    fn blob<'a>(
        &'a self,
        blob: &'a BlobRef,
        offset: u64,
    ) -> BoxFuture<'a, Result<BlobStream, CopyError>> {
        Box::pin(async move {
            if blob.digest == self.config_digest {
                return Ok(bytes_stream(&self.config, offset));
            }
            let Some((_, path)) = self.layers.iter().find(|(b, _)| b.digest == blob.digest) else {
                return Err(CopyError::NotFound(blob.digest.to_string()));
            };
            file_stream(path, offset)
                .await
                .map_err(|source| CopyError::Transfer {
                    digest: blob.digest.clone(),
                    source,
                })
        })
    }

    fn verified_path(&self, blob: &BlobRef) -> Option<PathBuf> {
        self.layers
            .iter()
            .find(|(b, _)| b.digest == blob.digest && b.size == blob.size)
            .map(|(_, p)| p.clone())
    }
}
