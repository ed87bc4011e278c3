//! `gc`: `wharf gc --delete-untagged` on a registry of `--blobs` blobs in `--manifests`
//! manifests (half of them untagged), beside the `wharf serve` that holds it while 20 clients
//! keep pushing; then every tagged manifest is pulled whole. There is no peer to compare with:
//! distribution collects only with the registry stopped. The registry lives in /dev/shm, so
//! what is timed is the collection's own work, not the disk.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use reqwest::Client;
use serde_json::json;

use super::support::{self, WharfServe};

const PUSHERS: usize = 20;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", support::sha256_hex(data))
}

/// Pushes an image of `blobs` (and an empty config) to `repo`, tagged `tag` or by digest when
/// `tag` is empty; whether every request succeeded.
async fn push(http: &Client, base: &str, repo: &str, tag: &str, blobs: &[Vec<u8>]) -> bool {
    let config = b"{}".to_vec();
    for b in blobs.iter().chain([&config]) {
        let url = format!("{base}/v2/{repo}/blobs/uploads/?digest={}", digest(b));
        match http.post(&url).body(b.clone()).send().await {
            Ok(r) if r.status().as_u16() == 201 => {}
            _ => return false,
        }
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(&config), "size": config.len()},
        "layers": blobs.iter().map(|l| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest(l), "size": l.len()})).collect::<Vec<_>>(),
    })
    .to_string();
    let reference = if tag.is_empty() {
        digest(manifest.as_bytes())
    } else {
        tag.to_owned()
    };
    let url = format!("{base}/v2/{repo}/manifests/{reference}");
    matches!(
        http.put(&url)
            .header("Content-Type", OCI_MANIFEST)
            .body(manifest)
            .send()
            .await,
        Ok(r) if r.status().as_u16() == 201
    )
}

/// A JSON answer.
async fn get_json(http: &Client, url: String) -> serde_json::Value {
    let bytes = http
        .get(&url)
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{url}: {e}"))
}

fn random_blobs(n: usize, size: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            let mut b = vec![0u8; size];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
            b
        })
        .collect()
}

/// Every tag of every repository: its manifest and each blob it names answer 200. The count
/// of manifests checked and of blobs missing.
async fn pull_everything(http: &Client, base: &str) -> (usize, usize) {
    let catalog = get_json(http, format!("{base}/v2/_catalog?n=100000")).await;
    let mut targets = Vec::new();
    for repo in catalog["repositories"].as_array().into_iter().flatten() {
        let repo = repo.as_str().unwrap().to_owned();
        let tags = get_json(http, format!("{base}/v2/{repo}/tags/list?n=100000")).await;
        for t in tags["tags"].as_array().into_iter().flatten() {
            targets.push((repo.clone(), t.as_str().unwrap().to_owned()));
        }
    }
    let missing = AtomicUsize::new(0);
    let checked = futures_util::stream::iter(targets)
        .map(|(repo, tag)| {
            let missing = &missing;
            async move {
                let m = get_json(http, format!("{base}/v2/{repo}/manifests/{tag}")).await;
                let blobs = m["layers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .chain([&m["config"]])
                    .filter_map(|d| d["digest"].as_str());
                for b in blobs {
                    let r = http
                        .head(format!("{base}/v2/{repo}/blobs/{b}"))
                        .send()
                        .await
                        .unwrap();
                    if r.status().as_u16() != 200 {
                        missing.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
        .buffer_unordered(32)
        .count()
        .await;
    (checked, missing.load(Ordering::Relaxed))
}

pub fn bench(blobs: usize, manifests: usize) {
    let shm = Path::new("/dev/shm");
    let dir = tempfile::tempdir_in(if shm.is_dir() { shm } else { Path::new("/tmp") }).unwrap();
    let config = dir.path().join("registry.toml");
    let grace = 3;
    std::fs::write(
        &config,
        format!("[gc]\ninterval = \"0s\"\ngrace_period = \"{grace}s\"\n"),
    )
    .unwrap();
    let cfg = config.to_str().unwrap().to_owned();
    let serve = WharfServe::start_in_with(dir.path(), &["--config", &cfg]);
    let base = format!("http://{}", serve.addr);
    let root = serve.root.clone();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = Client::builder().build().unwrap();
    let per = blobs.div_ceil(manifests).max(1);
    println!(
        "gc: {manifests} manifests of {per} blobs each ({} blobs), half untagged, in 100 repositories under {}",
        manifests * per,
        dir.path().display()
    );
    let start = Instant::now();
    let failed = rt.block_on(async {
        futures_util::stream::iter(0..manifests)
            .map(|m| {
                let http = &http;
                let base = &base;
                async move {
                    let tag = if m % 2 == 0 {
                        format!("t{m}")
                    } else {
                        String::new()
                    };
                    !push(
                        http,
                        base,
                        &format!("repo{}", m % 100),
                        &tag,
                        &random_blobs(per, 512),
                    )
                    .await
                }
            })
            .buffer_unordered(32)
            .filter(|failed| std::future::ready(*failed))
            .count()
            .await
    });
    assert_eq!(failed, 0, "filling the registry");
    println!("filled in {:.1}s", start.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_secs(grace + 1));

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let pushers: Vec<_> = (0..PUSHERS)
        .map(|p| {
            let (stop, ok, refused) = (stop.clone(), ok.clone(), refused.clone());
            let (http, base) = (http.clone(), base.clone());
            rt.spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let good = push(
                        &http,
                        &base,
                        &format!("pushers/p{p}"),
                        &format!("v{i}"),
                        &random_blobs(2, 512),
                    )
                    .await;
                    let counter = if good { &ok } else { &refused };
                    counter.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = (ok.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
    let start = Instant::now();
    let out = Command::new(support::WHARF)
        .args(["--verbose", "gc", "--config", &cfg, "--root"])
        .arg(&root)
        .args(["--delete-untagged", "-q"])
        .env_remove("WHARF_ROOT")
        .output()
        .unwrap();
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "wharf gc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = (ok.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for p in pushers {
            let _ = p.await;
        }
    });
    println!("wharf gc: {}", String::from_utf8_lossy(&out.stdout).trim());
    eprintln!(
        "{}",
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.contains("gc:"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!(
        "{:<28} {:>8.2}s   pushes during it {} ok, {} failed (all run: {} ok, {} failed)",
        "gc beside 20 pushers",
        took.as_secs_f64(),
        after.0 - before.0,
        after.1 - before.1,
        ok.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    let (checked, missing) = rt.block_on(pull_everything(&http, &base));
    println!(
        "{:<28} {checked} tagged manifests pulled, {missing} blobs missing",
        "after"
    );
    drop(serve);
}
