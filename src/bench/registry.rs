//! `registry`: wharf serve and docker-registry side by side, same clients, same data. The small
//! layers are moved twice: with skopeo, whose own per-blob work (a bolt database write per
//! blob) bounds it, and with wharf's client, which overlaps requests and so measures the servers.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::support::{self, Distribution, WharfServe};
use super::{Args, Figure, median, random_tar, run, settle};

const ACCEPT: &str = "Accept: application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

struct Server {
    addr: String,
    pid: u32,
}

/// POST a session, then PUT the whole file to it; the digest is computed beforehand.
fn curl_push(addr: &str, repo: &str, file: &Path, digest: &str) -> Duration {
    let start = std::time::Instant::now();
    let out = Command::new("curl")
        .args(["-sf", "-X", "POST", "-D", "-", "-o", "/dev/null"])
        .arg(format!("http://{addr}/v2/{repo}/blobs/uploads/"))
        .output()
        .unwrap();
    assert!(out.status.success(), "POST to {addr} failed");
    let head = String::from_utf8_lossy(&out.stdout);
    let loc = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location")
                .then(|| v.trim().to_owned())
        })
        .expect("Location header");
    let url = if loc.starts_with('/') {
        format!("http://{addr}{loc}")
    } else {
        loc
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    run(Command::new("curl")
        .args([
            "-sf",
            "-o",
            "/dev/null",
            "-H",
            "Content-Type: application/octet-stream",
            "-T",
        ])
        .arg(file)
        .arg(format!("{url}{sep}digest={digest}")));
    start.elapsed()
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Requests per second from wrk's summary.
fn wrk(url: &str) -> f64 {
    wrk_as(url, None)
}

/// [`wrk`] with an `Authorization` header.
fn wrk_as(url: &str, authorization: Option<&str>) -> f64 {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c32", "-d5s", "-H", ACCEPT]);
    if let Some(a) = authorization {
        cmd.args(["-H", &format!("Authorization: {a}")]);
    }
    let out = cmd.arg(url).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("Non-2xx"),
        "wrk saw errors from {url}:\n{text}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec from wrk:\n{text}"))
}

/// Requests per second of HEAD requests, from ab's summary.
fn ab_head(url: &str) -> f64 {
    let out = Command::new("ab")
        .args([
            "-q", "-i", "-k", "-c", "32", "-n", "20000", "-H", ACCEPT, url,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("Non-2xx responses"),
        "ab saw errors from {url}:\n{text}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix("Requests per second:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no requests per second from ab:\n{text}"))
}

/// Each target's median rate over `rounds` turns in which every target is measured once, in an
/// order that alternates, so that a slow moment of the machine does not fall on one side.
fn alternating(rounds: usize, targets: &[&dyn Fn() -> f64]) -> Vec<f64> {
    let mut rates = vec![Vec::new(); targets.len()];
    for round in 0..rounds.max(1) {
        for k in 0..targets.len() {
            let i = if round % 2 == 0 {
                k
            } else {
                targets.len() - 1 - k
            };
            rates[i].push(targets[i]());
        }
    }
    rates
        .into_iter()
        .map(|mut r| {
            r.sort_by(f64::total_cmp);
            r[r.len() / 2]
        })
        .collect()
}

fn rate_line(what: &str, wharf: f64, peer: f64) {
    println!(
        "{what:<28} wharf {wharf:>10.0} req/s   distribution {peer:>10.0} req/s   ratio {:>5.2}x",
        wharf / peer
    );
}

pub fn bench(args: &Args) {
    for tool in ["skopeo", "docker-registry", "curl", "wrk", "ab"] {
        assert!(
            support::require(tool),
            "the registry benchmark needs {tool} (run .ci/install-deps)"
        );
    }
    let parent = std::env::var("WHARF_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let parent = Path::new(&parent);
    let shm = Path::new(if Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    });
    let dist = Distribution::start_with(parent, "").unwrap();
    let wharf = WharfServe::start_in(parent);
    let servers = [
        Server {
            addr: wharf.addr.clone(),
            pid: wharf.pid().unwrap(),
        },
        Server {
            addr: dist.addr.clone(),
            pid: dist.pid,
        },
    ];
    println!(
        "registry: wharf serve vs docker-registry 2.8, storage under {}; median of {} rounds",
        parent.display(),
        args.rounds
    );
    let data = tempfile::tempdir_in(shm).unwrap();

    // One large blob with curl.
    let (mut push, mut pull) = ([vec![], vec![]], [vec![], vec![]]);
    let mut again = [vec![], vec![]];
    let big = args.big_mib << 20;
    for round in 0..args.rounds {
        eprintln!("{} MiB blob: round {} …", args.big_mib, round + 1);
        let file = data.path().join("big.bin");
        let mut bytes = vec![0u8; big];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        let digest = format!("sha256:{}", support::sha256_hex(&bytes));
        std::fs::write(&file, &bytes).unwrap();
        drop(bytes);
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            settle();
            push[i].push(curl_push(
                &servers[i].addr,
                &format!("big/r{round}"),
                &file,
                &digest,
            ));
        }
        // The first pull reads what the push left (distribution's unsynced writes are in the
        // page cache; wharf's went to the disk); the second reads the page cache on both.
        for i in order {
            for times in [&mut pull, &mut again] {
                settle();
                times[i].push(run(Command::new("curl")
                    .args(["-sf", "-o", "/dev/null"])
                    .arg(format!(
                        "http://{}/v2/big/r{round}/blobs/{digest}",
                        servers[i].addr
                    ))));
            }
        }
        std::fs::remove_file(&file).unwrap();
    }
    let fig = |name: String, bytes: u64, t: &[Vec<Duration>; 2]| Figure {
        name,
        bytes,
        wharf: median(t[0].clone()),
        peer: median(t[1].clone()),
        peer_name: "distribution",
    };
    fig(
        format!("curl push {} MiB blob", args.big_mib),
        big as u64,
        &push,
    )
    .print();
    fig(
        format!("curl pull {} MiB blob", args.big_mib),
        big as u64,
        &pull,
    )
    .print();
    fig(
        format!("curl pull {} MiB again", args.big_mib),
        big as u64,
        &again,
    )
    .print();

    // Many small layers with skopeo.
    let (mut push, mut pull) = ([vec![], vec![]], [vec![], vec![]]);
    let (mut wpush, mut wpull) = ([vec![], vec![]], [vec![], vec![]]);
    let mut bytes = 0;
    for round in 0..args.rounds {
        eprintln!("{} x 100 KiB: round {} …", args.small_layers, round + 1);
        let dir = data.path().join(format!("small-{round}"));
        let layers: Vec<Vec<u8>> = (0..args.small_layers)
            .map(|i| random_tar(&format!("f{i}.bin"), 100 << 10))
            .collect();
        bytes = layers.iter().map(|l| l.len() as u64).sum();
        super::layout::write_layout_with(&dir, None, &layers, "1", true);
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            settle();
            push[i].push(run(Command::new("skopeo").args([
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                &format!("oci:{}:1", dir.display()),
                &format!("docker://{}/small/r{round}:1", servers[i].addr),
            ])));
        }
        for i in order {
            let out = data.path().join(format!("out-{round}-{i}"));
            settle();
            pull[i].push(run(Command::new("skopeo").args([
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                &format!("docker://{}/small/r{round}:1", servers[i].addr),
                &format!("oci:{}:1", out.display()),
            ])));
            let _ = std::fs::remove_dir_all(&out);
        }
        // wharf's client, which overlaps its requests, so the servers are what is measured.
        let store = data.path().join(format!("store-{round}"));
        let id = super::load_image(&store, &dir);
        for i in order {
            let name = format!("{}/wsmall/r{round}:1", servers[i].addr);
            run(super::wharf_cmd(&store).args(["tag", &id, &name]));
            settle();
            wpush[i].push(run(super::wharf_cmd(&store).args(["push", "-q", &name])));
        }
        for i in order {
            let root = data.path().join(format!("pull-{round}-{i}"));
            settle();
            wpull[i].push(run(super::wharf_cmd(&root).args([
                "pull",
                "-q",
                &format!("{}/wsmall/r{round}:1", servers[i].addr),
            ])));
            let _ = std::fs::remove_dir_all(&root);
        }
        let _ = std::fs::remove_dir_all(&store);
        if round + 1 < args.rounds {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    fig(
        format!("skopeo push {} x 100 KiB", args.small_layers),
        bytes,
        &push,
    )
    .print();
    fig(
        format!("skopeo pull {} x 100 KiB", args.small_layers),
        bytes,
        &pull,
    )
    .print();
    fig(
        format!("wharf push {} x 100 KiB", args.small_layers),
        bytes,
        &wpush,
    )
    .print();
    fig(
        format!("wharf pull {} x 100 KiB", args.small_layers),
        bytes,
        &wpull,
    )
    .print();

    // Manifest GET and HEAD: a one-layer manifest and the 200-layer one just pushed.
    let one = data.path().join("one");
    super::layout::write_layout_with(&one, None, &[random_tar("x", 1024)], "1", true);
    for s in &servers {
        run(Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci:{}:1", one.display()),
            &format!("docker://{}/one/img:1", s.addr),
        ]));
    }
    let last = args.rounds - 1;
    let mut anonymous_url = String::new();
    for (label, path) in [
        (
            "1-layer manifest".to_owned(),
            "one/img/manifests/1".to_owned(),
        ),
        (
            format!("{}-layer manifest", args.small_layers),
            format!("small/r{last}/manifests/1"),
        ),
    ] {
        let url = |s: &Server| format!("http://{}/v2/{path}", s.addr);
        let (u0, u1) = (url(&servers[0]), url(&servers[1]));
        let get = alternating(args.rounds, &[&|| wrk(&u0), &|| wrk(&u1)]);
        rate_line(&format!("GET {label} (wrk)"), get[0], get[1]);
        if anonymous_url.is_empty() {
            anonymous_url = u0.clone();
        }
        let head = alternating(args.rounds, &[&|| ab_head(&u0), &|| ab_head(&u1)]);
        rate_line(&format!("HEAD {label} (ab -i)"), head[0], head[1]);
    }
    let rss: Vec<u64> = servers.iter().map(|s| peak_rss_kib(s.pid)).collect();
    let rss_line = (rss[0], rss[1]);
    authenticated(parent, &one, &anonymous_url, args.rounds);
    let rss = [rss_line.0, rss_line.1];
    println!(
        "{:<28} wharf {:>8.1} MiB   distribution {:>8.1} MiB   ratio {:>5.2}x",
        "server peak RSS",
        rss[0] as f64 / 1024.0,
        rss[1] as f64 / 1024.0,
        rss[0] as f64 / rss[1] as f64
    );
}

/// Manifest GETs with credentials: wharf in basic mode against docker-registry with the same
/// htpasswd file (it runs bcrypt on every request; wharf remembers a verified password), and
/// wharf's token mode against anonymous GETs of the same manifest on the first wharf server.
fn authenticated(parent: &Path, image: &Path, anonymous_url: &str, rounds: usize) {
    let dir = tempfile::tempdir_in(parent).unwrap();
    let users = dir.path().join("htpasswd");
    let out = Command::new("htpasswd")
        .args(["-Bbn", "bench", "bench-password"])
        .output()
        .unwrap();
    std::fs::write(&users, out.stdout).unwrap();
    let users_arg = users.to_str().unwrap();
    let auth = format!("auth:\n  htpasswd:\n    realm: bench\n    path: {users_arg}\n");
    let dist = Distribution::start_with(parent, &auth).unwrap();
    let basic = WharfServe::start_with(&["--htpasswd", users_arg, "--auth-mode", "basic"]);
    let token = WharfServe::start_with(&["--htpasswd", users_arg]);
    for addr in [&basic.addr, &dist.addr, &token.addr] {
        run(Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-creds",
            "bench:bench-password",
            &format!("oci:{}:1", image.display()),
            &format!("docker://{addr}/one/img:1"),
        ]));
    }
    // base64 of bench:bench-password
    let credentials = "Basic YmVuY2g6YmVuY2gtcGFzc3dvcmQ=";
    let path = "/v2/one/img/manifests/1";
    let (b, d) = (
        format!("http://{}{path}", basic.addr),
        format!("http://{}{path}", dist.addr),
    );
    let rates = alternating(
        rounds,
        &[&|| wrk_as(&b, Some(credentials)), &|| {
            wrk_as(&d, Some(credentials))
        }],
    );
    rate_line("GET 1-layer, basic auth", rates[0], rates[1]);
    let out = Command::new("curl")
        .args(["-sf", "-u", "bench:bench-password"])
        .arg(format!(
            "http://{}/token?service=wharf&scope=repository:one/img:pull",
            token.addr
        ))
        .output()
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bearer = format!("Bearer {}", answer["token"].as_str().unwrap());
    let t = format!("http://{}{path}", token.addr);
    let rates = alternating(
        rounds,
        &[&|| wrk_as(&t, Some(&bearer)), &|| wrk(anonymous_url)],
    );
    println!(
        "{:<28} wharf {:>10.0} req/s   anonymous  {:>10.0} req/s   ratio {:>5.2}x",
        "GET 1-layer, bearer token",
        rates[0],
        rates[1],
        rates[0] / rates[1]
    );
}
