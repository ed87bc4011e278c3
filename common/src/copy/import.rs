//! `import`: a root filesystem tarball becomes a one-layer image, as a copy source.

use std::io::{Read, Write};

use bytes::Bytes;
use serde_json::{Value, json};

use crate::digest::{Algorithm, Digest, HashingWriter};
use crate::image::{BlobRef, Platform};
use crate::media_type;
use crate::store::StagingDir;

use super::AssembledImage;
use crate::archive::ArchiveError;

/// What the imported image's config says besides its layer.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// The platform recorded in the config.
    pub platform: Platform,
    /// The `created` time, RFC 3339.
    pub created: String,
    /// The config's `config` object (Cmd, Env, …).
    pub config: Value,
    /// The history entry's comment.
    pub comment: String,
}

/// A one-layer image built from a rootfs tar, staged beside the store.
pub struct ImportSource {
    _staging: StagingDir,
    image: AssembledImage,
}

struct HashingReader<R> {
    inner: R,
    hasher: crate::digest::Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl ImportSource {
    /// Compresses the (uncompressed) tar `input` with gzip into `staging`, which it owns from
    /// now on, checking that it is a tar, and assembles config and manifest. Blocking.
    pub fn build_blocking(
        input: impl Read,
        staging: StagingDir,
        opts: &ImportOptions,
    ) -> Result<ImportSource, ArchiveError> {
        let layer_path = staging.path().join("layer.tar.gz");
        let staging_path = layer_path.as_path();
        let file = std::fs::File::create(staging_path)
            .map_err(ArchiveError::io("creating", staging_path))?;
        let compressed = HashingWriter::new(
            std::io::BufWriter::with_capacity(1 << 20, file),
            Algorithm::Sha256,
        );
        let mut gz = flate2::write::GzEncoder::new(compressed, flate2::Compression::default());
        let mut reader = HashingReader {
            inner: input,
            hasher: Algorithm::Sha256.hasher(),
        };
        // The tar reader walks the stream (proving it is a tar) while every byte it consumes is
        // copied to the compressor through the tee.
        {
            let tee = Tee {
                inner: &mut reader,
                out: &mut gz,
            };
            let mut tar = tar::Archive::new(tee);
            let entries = tar
                .entries()
                .map_err(|source| ArchiveError::Corrupt { at: None, source })?;
            let mut count = 0usize;
            for e in entries {
                let mut e = e.map_err(|source| ArchiveError::Corrupt { at: None, source })?;
                let at = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                std::io::copy(&mut e, &mut std::io::sink()).map_err(|source| {
                    ArchiveError::Corrupt {
                        at: Some(at.clone()),
                        source,
                    }
                })?;
                count += 1;
            }
            if count == 0 {
                return Err(ArchiveError::Corrupt {
                    at: None,
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "not a tar archive, or an empty one",
                    ),
                });
            }
            // Whatever follows the end-of-archive marker (padding) belongs to the layer too.
            let mut tee = tar.into_inner();
            std::io::copy(&mut tee, &mut std::io::sink())
                .map_err(|source| ArchiveError::Corrupt { at: None, source })?;
        }
        let diff_id = reader.hasher.finish();
        let compressed = gz
            .finish()
            .map_err(ArchiveError::io("compressing", staging_path))?;
        let (digest, size, inner) = compressed.finish();
        let f = inner
            .into_inner()
            .map_err(|e| ArchiveError::io("writing", staging_path)(e.into_error()))?;
        f.sync_all()
            .map_err(ArchiveError::io("syncing", staging_path))?;

        let mut config = json!({
            "architecture": opts.platform.architecture,
            "os": opts.platform.os,
        });
        if let Some(v) = &opts.platform.variant {
            config["variant"] = json!(v);
        }
        config["created"] = json!(opts.created);
        config["config"] = opts.config.clone();
        config["rootfs"] = json!({"type": "layers", "diff_ids": [diff_id.as_str()]});
        config["history"] = json!([{
            "created": opts.created,
            "created_by": "wharf import",
            "comment": opts.comment,
        }]);
        let layer = BlobRef {
            digest,
            size,
            media_type: media_type::OCI_LAYER_GZIP.to_owned(),
        };
        Ok(ImportSource {
            _staging: staging,
            image: AssembledImage::new(Bytes::from(config.to_string()), vec![(layer, layer_path)]),
        })
    }

    /// The imported image, as a copy source (valid while this lives).
    pub fn image(&self) -> &AssembledImage {
        &self.image
    }

    /// The config digest (the image id).
    pub fn config_digest(&self) -> &Digest {
        self.image.config_digest()
    }
}

struct Tee<'a, R, W> {
    inner: &'a mut R,
    out: &'a mut W,
}

impl<R: Read, W: Write> Read for Tee<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        Ok(n)
    }
}
