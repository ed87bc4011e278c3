//! Formatting shared by the listing commands: sizes, times, and reading an image's parts.

use anyhow::Context as _;
use serde_json::Value;
use wharf_common::digest::Digest;
use wharf_common::image::{Manifest, Platform, manifest_blobs};
use wharf_common::store::{ImageRecord, LocalStore};

/// docker's decimal sizes: `4.26MB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes}B")
    } else {
        let s = format!("{v:.3}");
        let s = if s.len() > 4 { &s[..4] } else { &s[..] };
        format!(
            "{}{}",
            s.trim_end_matches('0').trim_end_matches('.'),
            UNITS[i]
        )
    }
}

pub use wharf_common::time::{parse_rfc3339, rfc3339};

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// docker's "3 days ago".
pub fn ago(secs: i64) -> String {
    let d = (now_secs() - secs).max(0);
    let (n, unit) = match d {
        0..=59 => return "Less than a minute ago".into(),
        60..=3599 => (d / 60, "minute"),
        3600..=86_399 => (d / 3600, "hour"),
        86_400..=604_799 => (d / 86_400, "day"),
        604_800..=2_629_799 => (d / 604_800, "week"),
        2_629_800..=31_557_599 => (d / 2_629_800, "month"),
        _ => (d / 31_557_600, "year"),
    };
    if n == 1 {
        let article = if unit == "hour" { "An" } else { "A" };
        format!("{article} {unit} ago")
    } else {
        format!("{n} {unit}s ago")
    }
}

/// An image's single-platform parts: the manifest, its config JSON and its total size.
pub struct ImageParts {
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    pub manifest: Value,
    pub config_digest: Digest,
    pub config: Value,
    /// Each layer's digest and the size it unpacks to.
    pub layers: Vec<(Digest, u64)>,
    /// The image's size as docker counts it: what its layers unpack to.
    pub size: u64,
}

/// Reads an image's manifest (the host platform's entry of an index) and config.
pub async fn image_parts(store: &LocalStore, rec: &ImageRecord) -> anyhow::Result<ImageParts> {
    let mut digest = rec.digest.clone();
    let mut media_type = rec.media_type.clone();
    let mut bytes = store.read_blob(&digest).await?;
    if let Manifest::Index(index) = Manifest::parse(&bytes, &media_type, &digest)? {
        let platform = Platform::host();
        let entry = index
            .manifests()
            .iter()
            .filter(|e| store_has(store, e.digest()))
            .find(|e| Platform::of_descriptor(e).is_some_and(|p| platform.matches(&p)))
            .or_else(|| {
                index
                    .manifests()
                    .iter()
                    .find(|e| store_has(store, e.digest()))
            })
            .with_context(|| format!("index {digest} has no image in the local store"))?;
        digest = Digest::try_from(entry.digest())?;
        media_type = entry.media_type().to_string();
        bytes = store.read_blob(&digest).await?;
    }
    let Manifest::Image(m) = Manifest::parse(&bytes, &media_type, &digest)? else {
        anyhow::bail!("{digest} is a nested index, which wharf does not show");
    };
    let (config, layers) = manifest_blobs(&m, &digest)?;
    let config_bytes = store.read_blob(&config.digest).await?;
    // One definition of size, whatever the layers' compression (pulled gzip, loaded plain).
    let mut unpacked = Vec::with_capacity(layers.len());
    for l in &layers {
        unpacked.push((l.digest.clone(), store.unpacked_size(&l.digest).await?));
    }
    let size = unpacked.iter().map(|(_, n)| n).sum::<u64>();
    Ok(ImageParts {
        manifest: serde_json::from_slice(&bytes)?,
        manifest_digest: digest,
        manifest_media_type: media_type,
        config: serde_json::from_slice(&config_bytes)
            .with_context(|| format!("config {} is not JSON", config.digest))?,
        config_digest: config.digest,
        layers: unpacked,
        size,
    })
}

fn store_has(store: &LocalStore, d: &wharf_common::oci_spec::image::Digest) -> bool {
    Digest::try_from(d).is_ok_and(|d| store.blob_path(&d).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_times() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(4_261_000), "4.26MB");
        assert_eq!(human_size(1_000_000_000), "1GB");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20Z"), Some(1_700_000_000));
        assert_eq!(
            parse_rfc3339("2023-11-14T23:13:20.123456789+01:00"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_rfc3339("nonsense"), None);
    }
}
