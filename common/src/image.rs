//! Manifests, indexes and configs as wharf reads them: raw bytes kept byte-exact, parsed with
//! oci-spec's types for traversal.

use std::fmt;
use std::str::FromStr;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use serde::Deserialize;

use crate::digest::Digest;
use crate::media_type;

/// Why manifest or config bytes could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Not JSON of the expected shape.
    #[error("invalid {what} {digest}")]
    Json {
        /// "manifest", "index" or "config".
        what: &'static str,
        /// The blob's digest.
        digest: Digest,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A media type wharf does not handle as a manifest.
    #[error("unsupported manifest media type {media_type:?} for {digest}")]
    MediaType {
        /// The media type found.
        media_type: String,
        /// The manifest's digest.
        digest: Digest,
    },
    /// A descriptor whose digest is not valid.
    #[error("manifest {manifest} has an invalid descriptor digest")]
    Descriptor {
        /// The manifest holding the descriptor.
        manifest: Digest,
        /// Why it is invalid.
        #[source]
        source: crate::digest::DigestError,
    },
    /// No entry of an index matches the wanted platform.
    #[error("no image for platform {platform} in {digest} (available: {available})")]
    NoPlatform {
        /// The wanted platform.
        platform: Platform,
        /// The index.
        digest: Digest,
        /// The platforms the index offers.
        available: String,
    },
    /// A platform string that does not parse.
    #[error("invalid platform {0:?}: expected os/arch[/variant]")]
    PlatformSyntax(String),
}

/// A parsed manifest: a single-platform image or an index of them.
#[derive(Debug, Clone)]
pub enum Manifest {
    /// OCI image manifest or Docker schema 2 manifest.
    Image(Box<ImageManifest>),
    /// OCI index or Docker manifest list.
    Index(Box<ImageIndex>),
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
    config: Option<serde_json::Value>,
}

/// Determines a manifest's media type: the `mediaType` field, else the transport's content
/// type, else the document's shape.
pub fn detect_media_type(
    bytes: &[u8],
    content_type: Option<&str>,
    digest: &Digest,
) -> Result<String, ImageError> {
    let probe: Probe = serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
        what: "manifest",
        digest: digest.clone(),
        source,
    })?;
    let mt = match (probe.media_type, content_type) {
        (Some(mt), _) => mt,
        (None, Some(ct)) if media_type::is_index(ct) || media_type::is_manifest(ct) => {
            ct.to_owned()
        }
        (None, _) if probe.manifests.is_some() => media_type::OCI_INDEX.to_owned(),
        (None, _) if probe.config.is_some() => media_type::OCI_MANIFEST.to_owned(),
        (None, ct) => {
            return Err(ImageError::MediaType {
                media_type: ct.unwrap_or("").to_owned(),
                digest: digest.clone(),
            });
        }
    };
    Ok(mt)
}

impl Manifest {
    /// Parses manifest bytes of the given media type.
    pub fn parse(bytes: &[u8], media_type: &str, digest: &Digest) -> Result<Manifest, ImageError> {
        if media_type::is_index(media_type) {
            serde_json::from_slice(bytes)
                .map(|i| Manifest::Index(Box::new(i)))
                .map_err(|source| ImageError::Json {
                    what: "index",
                    digest: digest.clone(),
                    source,
                })
        } else if media_type::is_manifest(media_type) {
            serde_json::from_slice(bytes)
                .map(|m| Manifest::Image(Box::new(m)))
                .map_err(|source| ImageError::Json {
                    what: "manifest",
                    digest: digest.clone(),
                    source,
                })
        } else {
            Err(ImageError::MediaType {
                media_type: media_type.to_owned(),
                digest: digest.clone(),
            })
        }
    }
}

/// A descriptor reduced to what copying needs, with a typed digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRef {
    /// The blob's digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type.
    pub media_type: String,
}

impl BlobRef {
    /// Reads a descriptor found in `manifest`.
    pub fn from_descriptor(d: &Descriptor, manifest: &Digest) -> Result<BlobRef, ImageError> {
        Ok(BlobRef {
            digest: Digest::try_from(d.digest()).map_err(|source| ImageError::Descriptor {
                manifest: manifest.clone(),
                source,
            })?,
            size: d.size(),
            media_type: d.media_type().to_string(),
        })
    }
}

/// The config and layers of an image manifest, typed.
pub fn manifest_blobs(
    m: &ImageManifest,
    manifest: &Digest,
) -> Result<(BlobRef, Vec<BlobRef>), ImageError> {
    let config = BlobRef::from_descriptor(m.config(), manifest)?;
    let layers = m
        .layers()
        .iter()
        .map(|l| BlobRef::from_descriptor(l, manifest))
        .collect::<Result<_, _>>()?;
    Ok((config, layers))
}

/// Parses an image config.
pub fn parse_config(bytes: &[u8], digest: &Digest) -> Result<ImageConfiguration, ImageError> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
        what: "config",
        digest: digest.clone(),
        source,
    })
}

/// An OS/architecture/variant triple such as `linux/arm64/v8`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `linux`, `windows`, …
    pub os: String,
    /// GOARCH naming: `amd64`, `arm64`, `arm`, …
    pub architecture: String,
    /// `v7`, `v8`, … when it matters.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this process runs on.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    /// Whether an index entry for `other` satisfies a request for `self`.
    pub fn matches(&self, other: &Platform) -> bool {
        if self.os != other.os || self.architecture != other.architecture {
            return false;
        }
        let norm = |p: &Platform| match (p.architecture.as_str(), p.variant.as_deref()) {
            ("arm64", None) => Some("v8".to_owned()),
            (_, v) => v.map(str::to_owned),
        };
        match (norm(self), norm(other)) {
            (Some(want), Some(have)) => want == have,
            _ => true,
        }
    }

    /// The platform of an index entry, if it names one.
    pub fn of_descriptor(d: &Descriptor) -> Option<Platform> {
        d.platform().as_ref().map(|p| Platform {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
            variant: p.variant().clone(),
        })
    }

    /// Picks the entry of `index` for this platform.
    pub fn select<'a>(
        &self,
        index: &'a ImageIndex,
        digest: &Digest,
    ) -> Result<&'a Descriptor, ImageError> {
        index
            .manifests()
            .iter()
            .filter(|d| media_type::is_manifest(d.media_type().as_ref()))
            .find(|d| Platform::of_descriptor(d).is_some_and(|p| self.matches(&p)))
            .ok_or_else(|| ImageError::NoPlatform {
                platform: self.clone(),
                digest: digest.clone(),
                available: index
                    .manifests()
                    .iter()
                    .filter_map(Platform::of_descriptor)
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok =
            |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_ascii_lowercase(),
                architecture: arch.to_ascii_lowercase(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Platform {
                os: os.to_ascii_lowercase(),
                architecture: arch.to_ascii_lowercase(),
                variant: Some(v.to_ascii_lowercase()),
            }),
            _ => Err(ImageError::PlatformSyntax(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_and_match() {
        let p: Platform = "linux/arm64".parse().unwrap();
        assert!(p.matches(&"linux/arm64/v8".parse().unwrap()));
        assert!(!p.matches(&"linux/amd64".parse().unwrap()));
        let v7: Platform = "linux/arm/v7".parse().unwrap();
        assert!(!v7.matches(&"linux/arm/v6".parse().unwrap()));
        assert_eq!(v7.to_string(), "linux/arm/v7");
        assert!(
            "linux"
                .parse::<Platform>()
                .unwrap_err()
                .to_string()
                .contains("\"linux\"")
        );
        assert!("linux//x".parse::<Platform>().is_err());
    }

    #[test]
    fn detects_media_types() {
        let d = Digest::sha256(b"x");
        let idx = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(
            detect_media_type(idx, None, &d).unwrap(),
            media_type::OCI_INDEX
        );
        let m = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        assert_eq!(
            detect_media_type(m, None, &d).unwrap(),
            media_type::OCI_MANIFEST
        );
        let dm = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#;
        assert_eq!(
            detect_media_type(dm, Some(media_type::OCI_MANIFEST), &d).unwrap(),
            media_type::DOCKER_MANIFEST
        );
        assert!(detect_media_type(b"{}", Some("text/plain"), &d).is_err());
    }
}
