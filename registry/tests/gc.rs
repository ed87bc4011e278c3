//! Garbage collection and retention (issue 13), run as `wharf gc` runs it: a second
//! `Registry` on the root of a server that keeps serving, over HTTP.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use reqwest::Method;
use serde_json::json;
use wharf_registry::RegistryConfig;
use wharf_registry::config::RetentionRule;
use wharf_registry::service::{GcOptions, Registry};

mod support;
use support::{OCI_MANIFEST, Reg, digest};

fn start() -> Reg {
    Reg::start(tempfile::tempdir().unwrap(), |c| {
        c.storage.delete = true;
        c.gc.interval = Duration::ZERO;
    })
}

/// A collector on the server's root, as `wharf gc` opens one.
async fn collector(reg: &Reg) -> Registry {
    Registry::open_beside(RegistryConfig::with_root(&reg.dir.path().join("root")))
        .await
        .unwrap()
}

fn blob_file(reg: &Reg, d: &str) -> std::path::PathBuf {
    let hex = d.trim_start_matches("sha256:");
    reg.dir
        .path()
        .join("root/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
}

/// Every tag of `repo` pulls: its manifest and every blob it names.
async fn pulls_whole(reg: &Reg, repo: &str) -> usize {
    let tags = reg.get(&format!("/v2/{repo}/tags/list"), None).await;
    let mut n = 0;
    for tag in tags.body["tags"].as_array().into_iter().flatten() {
        let tag = tag.as_str().unwrap();
        let m = reg.get(&format!("/v2/{repo}/manifests/{tag}"), None).await;
        assert_eq!(m.status, 200, "{repo}:{tag}");
        let mut blobs: Vec<String> = m.body["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| l["digest"].as_str().unwrap().to_owned())
            .collect();
        if let Some(c) = m.body["config"]["digest"].as_str() {
            blobs.push(c.to_owned());
        }
        for b in blobs {
            let r = reg
                .send(
                    Method::HEAD,
                    &format!("/v2/{repo}/blobs/{b}"),
                    None,
                    None,
                    Vec::new(),
                )
                .await;
            assert_eq!(r.status, 200, "{repo}:{tag} lost {b}");
            assert!(blob_file(reg, &b).exists(), "{repo}:{tag}: {b} has no file");
        }
        n += 1;
    }
    n
}

/// Links and manifests are dated in seconds: wait until what was just pushed is older than a
/// grace period of zero.
async fn age() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

#[tokio::test]
async fn collection_frees_what_nothing_references() {
    let reg = start();
    let shared = b"shared layer".to_vec();
    reg.push_image("r", "a", None, &[shared.clone(), b"only a".to_vec()])
        .await
        .unwrap();
    let (b, b_layers) = reg
        .push_image("r", "b", None, &[shared.clone(), b"only b".to_vec()])
        .await
        .unwrap();
    let a = reg
        .send(
            Method::DELETE,
            &format!("/v2/r/manifests/{b}"),
            None,
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(a.status, 202);
    // A blob uploaded and never referenced, and a file no row knows, written long ago.
    assert_eq!(reg.push_blob("r", b"loose", None).await.status, 201);
    let stray = digest(b"stray");
    let path = blob_file(&reg, &stray);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"stray").unwrap();
    let old = SystemTime::now() - Duration::from_secs(86400);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(old)
        .unwrap();
    age().await;

    let gc = collector(&reg).await;
    let dry = gc
        .collect(&GcOptions {
            dry_run: true,
            ..GcOptions::default()
        })
        .await
        .unwrap();
    let mut doomed: Vec<&str> = dry.blobs.iter().map(|b| b.0.as_str()).collect();
    doomed.sort_unstable();
    let loose = digest(b"loose");
    let mut want = vec![b_layers[1].as_str(), loose.as_str()];
    want.sort_unstable();
    assert_eq!(doomed, want);
    assert_eq!(dry.stray_files, [(stray.clone(), 5)]);
    assert!(
        path.exists() && blob_file(&reg, &b_layers[1]).exists(),
        "a dry run deletes nothing"
    );

    let done = gc.collect(&GcOptions::default()).await.unwrap();
    assert_eq!(done.blobs.len(), 2, "{done:?}");
    assert_eq!(done.freed(), "only b".len() as u64 + 5 + 5);
    assert!(!path.exists());
    assert!(!blob_file(&reg, &b_layers[1]).exists());
    assert!(blob_file(&reg, &digest(&shared)).exists());
    assert_eq!(pulls_whole(&reg, "r").await, 1);
    let gone = reg.get(&format!("/v2/r/blobs/{}", b_layers[1]), None).await;
    assert_eq!(gone.status, 404);
    // Nothing is left to collect.
    let again = gc.collect(&GcOptions::default()).await.unwrap();
    assert_eq!(
        (again.blobs.len(), again.links, again.stray_files.len()),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn untagged_manifests_go_by_retention_and_what_holds_them_stays() {
    let reg = start();
    let mut by_tag = Vec::new();
    for t in ["t1", "t2", "t3", "t4", "t5"] {
        let (m, _) = reg
            .push_image("ci/app", t, None, &[format!("layer {t}").into_bytes()])
            .await
            .unwrap();
        by_tag.push(m);
    }
    let (untagged, _) = reg
        .push_image("ci/app", "", None, &[b"untagged".to_vec()])
        .await
        .unwrap();
    // An index (tagged) of two manifests pushed by digest only.
    let mut children = Vec::new();
    for i in 0..2 {
        let (m, _) = reg
            .push_image("ci/app", "", None, &[format!("child {i}").into_bytes()])
            .await
            .unwrap();
        children.push(m);
    }
    let size = |d: &str| {
        let reg = &reg;
        let d = d.to_owned();
        async move {
            reg.get(&format!("/v2/ci/app/manifests/{d}"), None)
                .await
                .body
                .to_string()
                .len()
        }
    };
    let mut entries = Vec::new();
    for c in &children {
        entries.push(json!({"mediaType": OCI_MANIFEST, "digest": c, "size": size(c).await}));
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    })
    .to_string();
    let a = reg
        .put_manifest(
            "ci/app",
            "multi",
            None,
            index.as_bytes(),
            "application/vnd.oci.image.index.v1+json",
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    // A referrer (a signature, say) of t5, pushed by digest.
    let empty = b"{}".to_vec();
    let t5_size = size(&by_tag[4]).await;
    let referrer = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest(&empty), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest(&empty), "size": 2}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": by_tag[4], "size": t5_size},
    })
    .to_string();
    let referrer_digest = digest(referrer.as_bytes());
    let a = reg
        .put_manifest(
            "ci/app",
            &referrer_digest,
            None,
            referrer.as_bytes(),
            OCI_MANIFEST,
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    age().await;

    let gc = collector(&reg).await;
    let rules = vec![RetentionRule {
        repos: vec!["ci/*".into()],
        keep_last: Some(2),
        keep_tags: vec!["t1".into()],
        untagged_older_than: Some(Duration::ZERO),
    }];
    let opts = GcOptions {
        retention: rules,
        ..GcOptions::default()
    };
    let dry = gc
        .collect(&GcOptions {
            dry_run: true,
            ..opts.clone()
        })
        .await
        .unwrap();
    let mut tags: Vec<&str> = dry.tags.iter().map(|t| t.1.as_str()).collect();
    tags.sort_unstable();
    // multi and t5 are the newest two counted; t1 is kept by its pattern.
    assert_eq!(tags, ["t2", "t3", "t4"]);
    let mut manifests: Vec<&str> = dry.manifests.iter().map(|m| m.1.as_str()).collect();
    manifests.sort_unstable();
    let mut want = vec![
        by_tag[1].as_str(),
        by_tag[2].as_str(),
        by_tag[3].as_str(),
        untagged.as_str(),
    ];
    want.sort_unstable();
    assert_eq!(manifests, want);
    let listed = reg.get("/v2/ci/app/tags/list", None).await;
    assert_eq!(listed.body["tags"].as_array().unwrap().len(), 6, "dry run");

    let done = gc.collect(&opts).await.unwrap();
    assert_eq!(done.tags.len(), 3);
    assert_eq!(done.manifests.len(), 4);
    let listed = reg.get("/v2/ci/app/tags/list", None).await;
    assert_eq!(listed.body["tags"], json!(["multi", "t1", "t5"]));
    for kept in children
        .iter()
        .chain([&referrer_digest, &by_tag[0], &by_tag[4]])
    {
        let a = reg.get(&format!("/v2/ci/app/manifests/{kept}"), None).await;
        assert_eq!(a.status, 200, "{kept} was kept");
    }
    let a = reg
        .get(&format!("/v2/ci/app/manifests/{untagged}"), None)
        .await;
    assert_eq!(a.status, 404);
    let r = reg
        .get(&format!("/v2/ci/app/referrers/{}", by_tag[4]), None)
        .await;
    assert_eq!(r.body["manifests"][0]["digest"], json!(referrer_digest));
    assert_eq!(pulls_whole(&reg, "ci/app").await, 3);
}

/// Pushes `images` images of fresh layers (and one layer every pusher shares) to
/// `repo`; how many were refused with `MANIFEST_BLOB_UNKNOWN`.
async fn pusher(reg: &Reg, repo: String, images: usize) -> usize {
    let mut refused = 0;
    for i in 0..images {
        let layers = vec![
            b"the layer everyone has".to_vec(),
            format!("{repo} image {i} {:?}", SystemTime::now()).into_bytes(),
        ];
        match reg.push_image(&repo, &format!("v{i}"), None, &layers).await {
            Ok(_) => {}
            Err(a) if a.code() == "MANIFEST_BLOB_UNKNOWN" => refused += 1,
            Err(a) => panic!("{repo} v{i}: {} {}", a.status, a.body),
        }
    }
    refused
}

#[tokio::test]
async fn collections_racing_pushes_leave_no_manifest_broken() {
    let reg = start();
    let gc = collector(&reg).await;
    for (grace, phase) in [
        (Duration::ZERO, "no grace"),
        (Duration::from_secs(3600), "grace"),
    ] {
        let stop = std::sync::atomic::AtomicBool::new(false);
        let collecting = async {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let opts = GcOptions {
                    delete_untagged: true,
                    grace,
                    ..GcOptions::default()
                };
                gc.collect(&opts).await.unwrap();
                runs += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            runs
        };
        let pushing = async {
            let all = futures_util::future::join_all(
                (0..8).map(|p| pusher(&reg, format!("{phase}/p{p}").replace(' ', "-"), 12)),
            )
            .await;
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            all.into_iter().sum::<usize>()
        };
        let (runs, refused) = tokio::join!(collecting, pushing);
        assert!(runs > 1, "{phase}: the collector ran {runs} times");
        if grace > Duration::ZERO {
            assert_eq!(refused, 0, "{phase}: within the grace period no push fails");
        }
        // Whatever was acknowledged pulls whole, after one more collection too.
        gc.collect(&GcOptions {
            delete_untagged: true,
            grace,
            ..GcOptions::default()
        })
        .await
        .unwrap();
        let mut tagged = 0;
        for p in 0..8 {
            tagged += pulls_whole(&reg, &format!("{phase}/p{p}").replace(' ', "-")).await;
        }
        assert_eq!(tagged + refused, 8 * 12, "{phase}");
    }
}

#[tokio::test]
async fn a_manifest_pushed_again_is_young_again() {
    let reg = start();
    let layers = [b"pushed twice".to_vec()];
    let (m, _) = reg.push_image("again", "", None, &layers).await.unwrap();
    age().await;
    // Pushed again by digest (a platform's manifest before its index, say): a collection
    // now must not take it from under the index that is coming.
    reg.push_image("again", "", None, &layers).await.unwrap();
    let gc = collector(&reg).await;
    let opts = GcOptions {
        delete_untagged: true,
        ..GcOptions::default()
    };
    let r = gc.collect(&opts).await.unwrap();
    assert!(r.manifests.is_empty(), "{r:?}");
    age().await;
    let r = gc.collect(&opts).await.unwrap();
    assert_eq!(r.manifests, [("again".to_owned(), m)]);
}

#[tokio::test]
async fn foreign_layers_pushed_anyway_are_kept() {
    let reg = start();
    let foreign = b"a windows base layer, pushed to an air-gapped mirror".to_vec();
    let config = b"{}".to_vec();
    for blob in [&foreign, &config] {
        assert_eq!(reg.push_blob("mirror", blob, None).await.status, 201);
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                    "digest": digest(&foreign), "size": foreign.len(),
                    "urls": ["https://example.com/layer"]}],
    })
    .to_string();
    let a = reg
        .put_manifest(
            "mirror",
            "1",
            None,
            manifest.as_bytes(),
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    age().await;
    let r = collector(&reg)
        .await
        .collect(&GcOptions::default())
        .await
        .unwrap();
    assert!(r.blobs.is_empty(), "{r:?}");
    let got = reg
        .get(&format!("/v2/mirror/blobs/{}", digest(&foreign)), None)
        .await;
    assert_eq!(got.status, 200);
}
