//! `mirror`: `wharf serve --mirror` against docker-registry 2.8 in proxy mode
//! (`proxy.remoteurl`), both mirroring the same upstream (a `wharf serve`, whose `/metrics`
//! counts the requests each mirror makes), pulled with the same client (wharf's, into a fresh
//! store in /dev/shm each time, so that the client's disk does not hide the servers). Per round, fresh random images: one with a 1 GiB layer and one with 200
//! layers of 100 KiB. Figures: a cold pull through wharf's mirror against a direct pull from
//! the upstream; warm pulls through each mirror (and the large layer's GET alone with curl,
//! which measures the servers rather than the pulling client); and the upstream requests each
//! mirror made
//! for a cold pull, a warm pull and 8 concurrent cold pulls.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::support::{Distribution, WharfServe, http_get};
use super::{Args, Figure, median, random_tar, run, settle, wharf_cmd};

/// Manifest and blob requests the upstream has answered so far.
fn upstream_requests(upstream: &WharfServe) -> u64 {
    let (_, _, body) = http_get(&upstream.addr, "/metrics").unwrap();
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| {
            l.starts_with("wharf_http_requests_total{route=\"manifest\"")
                || l.starts_with("wharf_http_requests_total{route=\"blob\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The digest of the first layer of `repo:1` on the registry at `addr`.
fn first_layer(addr: &str, repo: &str) -> String {
    let accept = "application/vnd.oci.image.manifest.v1+json, \
        application/vnd.docker.distribution.manifest.v2+json";
    let (status, _, body) = super::support::http(
        addr,
        "GET",
        &format!("/v2/{repo}/manifests/1"),
        &[("Accept", accept)],
        b"",
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    m["layers"][0]["digest"].as_str().unwrap().to_owned()
}

/// Pushes an image of `layers` to `reference` with wharf's client (not timed).
fn push_image(scratch: &Path, layers: &[Vec<u8>], reference: &str) {
    let dir = scratch.join("layout");
    let store = scratch.join("store");
    super::layout::write_layout_with(&dir, None, layers, "1", true);
    let id = super::load_image(&store, &dir);
    run(wharf_cmd(&store).args(["tag", &id, reference]));
    run(wharf_cmd(&store).args(["push", "-q", reference]));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&store);
}

/// A pull of `reference` into a fresh store in /dev/shm: how long it took.
fn pull(reference: &str) -> Duration {
    let root = tempfile::tempdir_in("/dev/shm").unwrap();
    settle();
    run(wharf_cmd(root.path()).args(["pull", "-q", reference]))
}

/// 8 pulls of `reference` at once, each into its own store.
fn pull_8(reference: &str) {
    let roots: Vec<_> = (0..8)
        .map(|_| tempfile::tempdir_in("/dev/shm").unwrap())
        .collect();
    let children: Vec<_> = roots
        .iter()
        .map(|r| {
            wharf_cmd(r.path())
                .args(["pull", "-q", reference])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a concurrent pull failed");
    }
}

struct Mirror {
    /// How a client names `repo` through it.
    prefix: String,
    cold: Vec<Duration>,
    warm: Vec<Duration>,
    /// The large layer's GET alone with curl, warm: the server, not the pulling client.
    warm_get: Vec<Duration>,
    small_warm: Vec<Duration>,
    /// Upstream requests for: a cold pull, a warm one, 8 concurrent cold ones (small image).
    requests: [Vec<u64>; 3],
}

pub fn bench(args: &Args) {
    assert!(
        super::support::require("docker-registry"),
        "the mirror benchmark needs docker-registry (run .ci/install-deps)"
    );
    let parent = std::env::var("WHARF_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let parent = Path::new(&parent);
    let upstream = WharfServe::start_in(parent);
    let up = upstream.addr.clone();
    let wharf = WharfServe::start_in_with(parent, &["--mirror", &format!("up=http://{up}")]);
    let dist = Distribution::start_with(parent, &format!("proxy:\n  remoteurl: http://{up}\n"))
        .expect("docker-registry");
    let mut mirrors = [
        Mirror {
            prefix: format!("{}/up", wharf.addr),
            cold: vec![],
            warm: vec![],
            warm_get: vec![],
            small_warm: vec![],
            requests: [vec![], vec![], vec![]],
        },
        Mirror {
            prefix: dist.addr.clone(),
            cold: vec![],
            warm: vec![],
            warm_get: vec![],
            small_warm: vec![],
            requests: [vec![], vec![], vec![]],
        },
    ];
    println!(
        "mirror: wharf serve --mirror vs docker-registry 2.8 proxy mode, one upstream (wharf \
         serve), pulls with wharf's client; median of {} rounds",
        args.rounds
    );
    let scratch = tempfile::tempdir_in("/dev/shm").unwrap();
    let mut direct = vec![];
    let big = args.big_mib << 20;
    for round in 0..args.rounds {
        eprintln!("mirror round {} …", round + 1);
        push_image(
            scratch.path(),
            &[random_tar("big.bin", big)],
            &format!("{up}/big/r{round}:1"),
        );
        let big_layer = first_layer(&up, &format!("big/r{round}"));
        let small: Vec<Vec<u8>> = (0..args.small_layers)
            .map(|i| random_tar(&format!("f{i}.bin"), 100 << 10))
            .collect();
        push_image(scratch.path(), &small, &format!("{up}/small/r{round}:1"));
        let conc: Vec<Vec<u8>> = (0..args.small_layers)
            .map(|i| random_tar(&format!("c{i}.bin"), 100 << 10))
            .collect();
        push_image(scratch.path(), &conc, &format!("{up}/conc/r{round}:1"));
        direct.push(pull(&format!("{up}/big/r{round}:1")));
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let m = &mut mirrors[i];
            let big_ref = format!("{}/big/r{round}:1", m.prefix);
            let small_ref = format!("{}/small/r{round}:1", m.prefix);
            let before = upstream_requests(&upstream);
            m.cold.push(pull(&big_ref));
            let after_cold = upstream_requests(&upstream);
            m.warm.push(pull(&big_ref));
            let after_warm = upstream_requests(&upstream);
            m.requests[0].push(after_cold - before);
            m.requests[1].push(after_warm - after_cold);
            let (host, path) = m.prefix.split_once('/').unwrap_or((&m.prefix, ""));
            let repo = if path.is_empty() {
                format!("big/r{round}")
            } else {
                format!("{path}/big/r{round}")
            };
            settle();
            m.warm_get.push(run(Command::new("curl")
                .args(["-sf", "-o", "/dev/null"])
                .arg(format!("http://{host}/v2/{repo}/blobs/{}", big_layer))));
            // Warm small: filled once first (not timed).
            pull(&small_ref);
            m.small_warm.push(pull(&small_ref));
            let before = upstream_requests(&upstream);
            pull_8(&format!("{}/conc/r{round}:1", m.prefix));
            m.requests[2].push(upstream_requests(&upstream) - before);
        }
    }
    let [w, d] = &mirrors;
    let bytes = big as u64;
    Figure {
        name: format!("cold pull {} MiB via mirror", args.big_mib),
        bytes,
        wharf: median(w.cold.clone()),
        peer: median(direct.clone()),
        peer_name: "direct",
    }
    .print();
    Figure {
        name: format!("cold pull {} MiB via mirror", args.big_mib),
        bytes,
        wharf: median(w.cold.clone()),
        peer: median(d.cold.clone()),
        peer_name: "distribution",
    }
    .print();
    Figure {
        name: format!("warm pull {} MiB via mirror", args.big_mib),
        bytes,
        wharf: median(w.warm.clone()),
        peer: median(d.warm.clone()),
        peer_name: "distribution",
    }
    .print();
    Figure {
        name: format!("warm GET {} MiB layer (curl)", args.big_mib),
        bytes,
        wharf: median(w.warm_get.clone()),
        peer: median(d.warm_get.clone()),
        peer_name: "distribution",
    }
    .print();
    Figure {
        name: format!("warm pull {} x 100 KiB", args.small_layers),
        bytes: (args.small_layers as u64) * (100 << 10),
        wharf: median(w.small_warm.clone()),
        peer: median(d.small_warm.clone()),
        peer_name: "distribution",
    }
    .print();
    println!(
        "cold pull through wharf's mirror takes {:.2}x a direct pull from the upstream",
        median(w.cold.clone()).as_secs_f64() / median(direct.clone()).as_secs_f64()
    );
    let med = |v: &Vec<u64>| {
        let mut v = v.clone();
        v.sort_unstable();
        v[v.len() / 2]
    };
    for (k, what) in [
        "upstream requests, cold pull (1 layer)",
        "upstream requests, warm pull",
        "upstream requests, 8 concurrent cold pulls",
    ]
    .iter()
    .enumerate()
    {
        println!(
            "{what:<44} wharf {:>6}   distribution {:>6}",
            med(&w.requests[k]),
            med(&d.requests[k])
        );
    }
}
