//! Building OCI image layouts for tests and benchmarks: a base image plus extra layers.

use std::path::Path;

use serde_json::{Value, json};

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// A tar holding the given files (mode 0644, owned by root, mtime 0).
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).expect("building a tar");
    }
    b.into_inner().expect("finishing a tar")
}

fn write_blob(dir: &Path, data: &[u8]) -> String {
    let hex = sha256_hex(data);
    let p = dir.join("blobs/sha256").join(&hex);
    if !p.exists() {
        std::fs::write(&p, data).expect("writing a blob");
    }
    format!("sha256:{hex}")
}

/// Writes an OCI layout at `dir` with one image tagged `tag`: the layers of the image in the
/// `base` layout (if any) followed by `extra` uncompressed tar layers.
pub fn write_layout(dir: &Path, base: Option<&Path>, extra: &[Vec<u8>], tag: &str) {
    write_layout_with(dir, base, extra, tag, false);
}

/// Like [`write_layout`]; with `gzip`, the extra layers are stored gzip-wrapped (without
/// compressing: the stored deflate mode), as `tar+gzip` layers.
pub fn write_layout_with(
    dir: &Path,
    base: Option<&Path>,
    extra: &[Vec<u8>],
    tag: &str,
    gzip: bool,
) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let (mut config, mut layers): (Value, Vec<Value>) = match base {
        Some(b) => {
            let index: Value =
                serde_json::from_slice(&std::fs::read(b.join("index.json")).unwrap()).unwrap();
            let read = |d: &str| {
                std::fs::read(b.join("blobs/sha256").join(d.trim_start_matches("sha256:"))).unwrap()
            };
            let manifest: Value =
                serde_json::from_slice(&read(index["manifests"][0]["digest"].as_str().unwrap()))
                    .unwrap();
            let config: Value =
                serde_json::from_slice(&read(manifest["config"]["digest"].as_str().unwrap()))
                    .unwrap();
            let layers = manifest["layers"].as_array().unwrap().clone();
            for l in &layers {
                let d = l["digest"].as_str().unwrap();
                write_blob(dir, &read(d));
            }
            (config, layers)
        }
        None => (
            json!({"architecture": "amd64", "os": "linux", "config": {},
                   "rootfs": {"type": "layers", "diff_ids": []}, "history": []}),
            Vec::new(),
        ),
    };
    for (i, layer) in extra.iter().enumerate() {
        let diff_id = format!("sha256:{}", sha256_hex(layer));
        let (blob, media_type) = if gzip {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(
                Vec::with_capacity(layer.len() + 1024),
                flate2::Compression::none(),
            );
            gz.write_all(layer).unwrap();
            (
                gz.finish().unwrap(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        } else {
            (layer.clone(), "application/vnd.oci.image.layer.v1.tar")
        };
        let digest = write_blob(dir, &blob);
        config["rootfs"]["diff_ids"]
            .as_array_mut()
            .unwrap()
            .push(json!(diff_id));
        if let Some(h) = config["history"].as_array_mut() {
            h.push(
                json!({"created": "1970-01-01T00:00:00Z", "created_by": format!("test layer {i}")}),
            );
        }
        layers.push(json!({"mediaType": media_type, "digest": digest, "size": blob.len()}));
    }
    let config = config.to_string();
    let config_digest = write_blob(dir, config.as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layers,
    })
    .to_string();
    let manifest_digest = write_blob(dir, manifest.as_bytes());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// Writes an OCI layout at `dir` whose index, tagged `tag`, holds the image of the `base`
/// layout once per platform in `platforms` (`os/arch[/variant]`), each with its own config.
pub fn write_index_layout(dir: &Path, base: &Path, platforms: &[&str], tag: &str) -> String {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let index: Value =
        serde_json::from_slice(&std::fs::read(base.join("index.json")).unwrap()).unwrap();
    let read = |d: &str| {
        std::fs::read(
            base.join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    let manifest: Value =
        serde_json::from_slice(&read(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let config: Value =
        serde_json::from_slice(&read(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    for l in manifest["layers"].as_array().unwrap() {
        write_blob(dir, &read(l["digest"].as_str().unwrap()));
    }
    let mut entries = Vec::new();
    for p in platforms {
        let parts: Vec<&str> = p.split('/').collect();
        let mut c = config.clone();
        c["os"] = json!(parts[0]);
        c["architecture"] = json!(parts[1]);
        let mut platform = json!({"os": parts[0], "architecture": parts[1]});
        if let Some(v) = parts.get(2) {
            c["variant"] = json!(v);
            platform["variant"] = json!(v);
        }
        let c = c.to_string();
        let cd = write_blob(dir, c.as_bytes());
        let mut m = manifest.clone();
        m["config"]["digest"] = json!(cd);
        m["config"]["size"] = json!(c.len());
        let m = m.to_string();
        let md = write_blob(dir, m.as_bytes());
        entries.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": m.len(), "platform": platform,
        }));
    }
    let idx = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    })
    .to_string();
    let idx_digest = write_blob(dir, idx.as_bytes());
    let top = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": idx_digest, "size": idx.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("index.json"), top.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    idx_digest
}
