//! The built image: config, manifest and layers, offered to the copy engine as a [`Source`] so
//! it is stored (or pushed, or saved) like any other image.

use std::path::PathBuf;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use wharf_common::copy::{BlobStream, CopyError, Fetched, Source, bytes_stream, file_stream};
use wharf_common::digest::Digest;
use wharf_common::image::BlobRef;
use wharf_common::media_type;
use wharf_common::reference::Reference;

use super::{BuildOptions, Layer, StageState};

/// An image a build produced.
pub struct Built {
    /// Layers this build wrote, with the keys of the steps that wrote them.
    pub new_layers: Vec<super::NewLayer>,
    config: Bytes,
    config_digest: Digest,
    manifest: Fetched,
    layers: Vec<(BlobRef, PathBuf)>,
}

impl Built {
    /// The image id (config digest).
    pub fn id(&self) -> &Digest {
        &self.config_digest
    }

    /// The manifest.
    pub fn manifest(&self) -> &Fetched {
        &self.manifest
    }

    /// The config JSON.
    pub fn config(&self) -> &[u8] {
        &self.config
    }
}

/// OCI media type for a layer blob, whatever the base image called it.
fn oci_layer_type(mt: &str) -> String {
    match mt {
        media_type::DOCKER_LAYER_GZIP => media_type::OCI_LAYER_GZIP.to_owned(),
        media_type::DOCKER_LAYER => media_type::OCI_LAYER.to_owned(),
        other => other.to_owned(),
    }
}

pub(crate) fn assemble(
    mut state: StageState,
    opts: &BuildOptions,
    new_layers: Vec<super::NewLayer>,
) -> std::io::Result<Built> {
    let base_ids: Vec<Value> = state
        .image
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let base_count = state
        .layers
        .iter()
        .filter(|l| matches!(l, Layer::Base(..)))
        .count();
    let mut diff_ids: Vec<Value> = base_ids.into_iter().take(base_count).collect();
    let mut layers = Vec::new();
    for l in &state.layers {
        match l {
            Layer::Base(b, p) => layers.push((
                BlobRef {
                    media_type: oci_layer_type(&b.media_type),
                    ..b.clone()
                },
                p.clone(),
            )),
            Layer::New(w, p) => {
                diff_ids.push(json!(w.diff_id.as_str()));
                layers.push((
                    BlobRef {
                        digest: w.digest.clone(),
                        size: w.size,
                        media_type: w.media_type.to_owned(),
                    },
                    p.clone(),
                ));
            }
        }
    }
    state.image.insert(
        "rootfs".into(),
        json!({"type": "layers", "diff_ids": diff_ids}),
    );
    let created = super::rfc3339(opts.source_date_epoch.unwrap_or(state.time));
    state.image.insert("created".into(), json!(created));
    state.image.remove("container");
    state.image.remove("container_config");
    state.image.remove("docker_version");
    let config = Bytes::from(Value::Object(state.image).to_string());
    let config_digest = Digest::sha256(&config);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": {"mediaType": media_type::OCI_CONFIG, "digest": config_digest.as_str(), "size": config.len()},
        "layers": layers.iter().map(|(b, _)| json!({"mediaType": b.media_type, "digest": b.digest.as_str(), "size": b.size})).collect::<Vec<_>>(),
    });
    let manifest = Bytes::from(manifest.to_string());
    Ok(Built {
        new_layers,
        config,
        config_digest,
        manifest: Fetched {
            digest: Digest::sha256(&manifest),
            bytes: manifest,
            media_type: media_type::OCI_MANIFEST.to_owned(),
        },
        layers,
    })
}

impl Source for Built {
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
                Err(CopyError::Transfer {
                    digest: blob.digest.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "not part of the built image",
                    ),
                })
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
                return Err(CopyError::Transfer {
                    digest: blob.digest.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "not part of the built image",
                    ),
                });
            };
            file_stream(path, offset)
                .await
                .map_err(|source| CopyError::Transfer {
                    digest: blob.digest.clone(),
                    source,
                })
        })
    }
}
