//! Manifest validation: what a pushed manifest is, what it references, and whether it is
//! acceptable. No IO here; the service checks the references against metadata.

use std::str::FromStr;

use serde_json::Value;
use wharf_common::digest::Digest;
use wharf_common::media_type;

/// Layer media types a registry need not hold (foreign / non-distributable layers).
const NON_DISTRIBUTABLE: [&str; 4] = [
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
];

/// What was learnt from a manifest's bytes.
#[derive(Debug)]
pub struct Parsed {
    /// The media type it is stored and served with.
    pub media_type: String,
    /// Blobs (config, layers) that must be in the repository.
    pub blobs: Vec<Digest>,
    /// Manifests (an index's entries) that must be in the repository.
    pub manifests: Vec<Digest>,
    /// Foreign or non-distributable layers: not required, but kept by garbage collection if
    /// a client pushed them anyway.
    pub foreign: Vec<Digest>,
    /// The artifact type for referrers listings.
    pub artifact_type: Option<String>,
    /// `subject`, if any.
    pub subject: Option<Digest>,
    /// `annotations` as JSON text.
    pub annotations: Option<String>,
}

/// Parses and checks a manifest. `content_type` is the request's `Content-Type`, if any.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Parsed, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object().ok_or("a manifest is a JSON object")?;
    let declared = match obj.get("mediaType") {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err("mediaType must be a string".into()),
    };
    let header = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| !c.is_empty() && *c != "application/octet-stream" && *c != "application/json");
    if let (Some(h), Some(d)) = (header, declared)
        && h != d
    {
        return Err(format!(
            "Content-Type {h} does not match the manifest's mediaType {d}"
        ));
    }
    let media_type = match header.or(declared) {
        Some(t) => t.to_owned(),
        None if obj.contains_key("manifests") => media_type::OCI_INDEX.to_owned(),
        None => media_type::OCI_MANIFEST.to_owned(),
    };
    if media_type.starts_with("application/vnd.docker.distribution.manifest.v1") {
        return Err(format!(
            "{media_type}: Docker schema 1 manifests are not accepted; push schema 2 or OCI"
        ));
    }
    match obj.get("schemaVersion") {
        Some(Value::Number(n)) if n.as_u64() == Some(2) => {}
        other => {
            return Err(format!(
                "schemaVersion must be 2, found {}",
                other.map_or_else(|| "none".to_owned(), Value::to_string)
            ));
        }
    }
    let subject = obj
        .get("subject")
        .map(|s| descriptor(s, "subject").map(|(d, _)| d))
        .transpose()?;
    let annotations = match obj.get("annotations") {
        None | Some(Value::Null) => None,
        Some(a @ Value::Object(_)) => Some(a.to_string()),
        Some(_) => return Err("annotations must be an object".into()),
    };
    let artifact_type = match obj.get("artifactType") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("artifactType must be a string".into()),
    };
    let mut parsed = Parsed {
        media_type: media_type.clone(),
        blobs: Vec::new(),
        manifests: Vec::new(),
        foreign: Vec::new(),
        artifact_type,
        subject,
        annotations,
    };
    if media_type::is_index(&media_type) {
        let list = obj
            .get("manifests")
            .and_then(Value::as_array)
            .ok_or("an index needs a manifests array")?;
        for (i, m) in list.iter().enumerate() {
            let (d, _) = descriptor(m, &format!("manifests[{i}]"))?;
            parsed.manifests.push(d);
        }
    } else if media_type::is_manifest(&media_type) {
        let config = obj
            .get("config")
            .ok_or("an image manifest needs a config")?;
        let (cd, config_type) = descriptor(config, "config")?;
        parsed.blobs.push(cd);
        if parsed.artifact_type.is_none() {
            parsed.artifact_type = config_type;
        }
        let layers = match obj.get("layers") {
            Some(Value::Array(l)) => l.as_slice(),
            None if media_type == media_type::OCI_MANIFEST => &[],
            _ => return Err("an image manifest needs a layers array".into()),
        };
        for (i, l) in layers.iter().enumerate() {
            let (d, mt) = descriptor(l, &format!("layers[{i}]"))?;
            let foreign = mt
                .as_deref()
                .is_some_and(|t| NON_DISTRIBUTABLE.contains(&t))
                || l.get("urls")
                    .is_some_and(|u| u.as_array().is_some_and(|a| !a.is_empty()));
            if foreign {
                parsed.foreign.push(d);
            } else {
                parsed.blobs.push(d);
            }
        }
    } else {
        return Err(format!(
            "unsupported manifest media type {media_type} (OCI image manifest or index, Docker schema 2 manifest or manifest list)"
        ));
    }
    Ok(parsed)
}

/// A descriptor's digest and media type; `at` names it in errors.
fn descriptor(v: &Value, at: &str) -> Result<(Digest, Option<String>), String> {
    let o = v
        .as_object()
        .ok_or_else(|| format!("{at} must be a descriptor object"))?;
    let d = o
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{at} has no digest"))?;
    let d = Digest::from_str(d).map_err(|e| format!("{at}: {e}"))?;
    match o.get("size") {
        Some(Value::Number(n)) if n.as_u64().is_some() => {}
        _ => return Err(format!("{at} needs a size, a whole number")),
    }
    let mt = match o.get("mediaType") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(format!("{at}.mediaType must be a string")),
    };
    Ok((d, mt))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn image_manifest_references_and_artifact_type() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{{"mediaType":"application/vnd.example+json","digest":"{D}","size":0}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{D}","size":0}},
                      {{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar","digest":"{D}","size":0}}],
            "subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D}","size":0}}}}"#
        );
        let p = parse(
            m.as_bytes(),
            Some("application/vnd.oci.image.manifest.v1+json"),
        )
        .unwrap();
        assert_eq!(
            p.blobs.len(),
            2,
            "the non-distributable layer is not required"
        );
        assert_eq!(
            p.artifact_type.as_deref(),
            Some("application/vnd.example+json")
        );
        assert_eq!(p.subject.unwrap().as_str(), D);
    }

    #[test]
    fn bad_manifests_say_why() {
        for (body, ct, want) in [
            ("[]", None, "JSON object"),
            ("{", None, "not JSON"),
            (r#"{"schemaVersion":1}"#, None, "schemaVersion"),
            (
                r#"{"schemaVersion":2,"mediaType":"a/b"}"#,
                Some("c/d"),
                "does not match",
            ),
            (
                r#"{"schemaVersion":2,"config":{"digest":"sha256:00","size":1}}"#,
                None,
                "config",
            ),
            (
                r#"{"schemaVersion":2,"manifests":[{"size":1}]}"#,
                None,
                "manifests[0] has no digest",
            ),
            (
                r#"{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+prettyjws"}"#,
                None,
                "schema 1",
            ),
        ] {
            let e = parse(body.as_bytes(), ct).unwrap_err();
            assert!(e.contains(want), "{body}: {e}");
        }
    }
}
