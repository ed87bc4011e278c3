//! The built image: config, manifest and layers, offered to the copy engine as a [`Source`] so
//! it is stored (or pushed, or saved) like any other image.

use bytes::Bytes;
use serde_json::{Value, json};
use wharf_common::blob::Fetched;
use wharf_common::copy::AssembledImage;
use wharf_common::digest::Digest;
use wharf_common::image::BlobRef;
use wharf_common::media_type;
use wharf_common::store::{CacheEntry, Lease, LocalStore, StoreError};

use super::BuildOptions;
use super::stage::{Layer, StageState};

/// An image a build produced.
pub struct Built {
    /// Layers this build wrote, with the keys of the steps that wrote them.
    pub new_layers: Vec<super::NewLayer>,
    /// The cache entries this build used (to mark them used).
    pub cache_hits: Vec<Digest>,
    image: AssembledImage,
}

impl Built {
    /// The image id (config digest).
    pub fn id(&self) -> &Digest {
        self.image.config_digest()
    }

    /// The manifest.
    pub fn manifest(&self) -> &Fetched {
        self.image.manifest()
    }

    /// The config JSON.
    pub fn config(&self) -> &[u8] {
        self.image.config()
    }

    /// The image, as a copy source.
    pub fn image(&self) -> &AssembledImage {
        &self.image
    }

    /// Keeps what this build made for later builds; call it before the image is stored, so
    /// the copy finds the layers there. Each new layer goes into `store` (a hard link,
    /// protected by `lease` first) and into the build cache under its step's key; the cache
    /// entries the build used are marked used.
    pub async fn keep_layers(&self, store: &LocalStore, lease: &Lease) -> Result<(), StoreError> {
        let mut records = Vec::new();
        for new in &self.new_layers {
            let blob = BlobRef {
                digest: new.layer.digest.clone(),
                size: new.layer.size,
                media_type: new.layer.media_type.to_owned(),
            };
            lease.protect(&blob.digest).await?;
            let (st, file) = (store.clone(), new.file.clone());
            let adopting = blob.clone();
            tokio::task::spawn_blocking(move || st.adopt_verified_blocking(&file, &adopting))
                .await
                .map_err(|e| StoreError::Io {
                    op: "adopting a layer",
                    path: new.file.clone(),
                    source: std::io::Error::other(e),
                })??;
            records.push((
                new.key.clone(),
                CacheEntry {
                    layer: blob.digest,
                    diff_id: new.layer.diff_id.clone(),
                    media_type: blob.media_type,
                    size: blob.size,
                    created_at: new.created_at,
                },
            ));
        }
        if !records.is_empty() {
            store.sync_blob_dirs().await?;
            store.cache_put(&records).await?;
        }
        store.cache_touch(&self.cache_hits).await
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
    cache_hits: Vec<Digest>,
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
            Layer::Base(b, p, _) => layers.push((
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
    Ok(Built {
        new_layers,
        cache_hits,
        image: AssembledImage::new(config, layers),
    })
}
