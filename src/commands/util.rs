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

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `2024-01-02T03:04:05Z`.
pub fn rfc3339(secs: i64) -> String {
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

/// Parses the RFC 3339 times configs carry (fractional seconds and offsets allowed).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        rest = frac.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "" | "Z" | "z" => 0,
        o => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let oh: i64 = o.get(1..3)?.parse().ok()?;
            let om: i64 = o.get(4..6)?.parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    // Days from civil date (inverse of `civil`).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se - offset)
}

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
    pub layers: Vec<(Digest, u64)>,
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
    let size = config.size + layers.iter().map(|l| l.size).sum::<u64>();
    Ok(ImageParts {
        manifest: serde_json::from_slice(&bytes)?,
        manifest_digest: digest,
        manifest_media_type: media_type,
        config: serde_json::from_slice(&config_bytes)
            .with_context(|| format!("config {} is not JSON", config.digest))?,
        config_digest: config.digest,
        layers: layers.into_iter().map(|l| (l.digest, l.size)).collect(),
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
