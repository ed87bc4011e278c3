//! Side-by-side benchmarks: wharf and the peer tools in one run, on the same data, against the
//! same server, printing one line per figure and the ratio.
//!
//! ```text
//! cargo bench --bench compare -- transfer [--rounds N] [--big-mib N] [--small-layers N]
//! cargo bench --bench compare -- registry [--rounds N] [--big-mib N] [--small-layers N]
//! cargo bench --bench compare -- build [--rounds N]
//! cargo bench --bench compare -- gc [--blobs N] [--manifests N]
//! cargo bench --bench compare -- mirror [--rounds N] [--big-mib N] [--small-layers N]
//! ```
//! `mirror`: see `mirror.rs`: `wharf serve --mirror` against docker-registry's proxy mode,
//! cold and warm pulls, and the upstream requests each makes.
//! `build`: see `build.rs`: cold, no-op and one-file builds against BuildKit and buildah, and
//! the start of `run IMAGE true` against docker and podman.
//! `transfer`: push and pull, with wharf and with skopeo, of an image with one large random
//! layer (1 GiB by default) and of one with 200 layers of 100 KiB, against Debian's
//! docker-registry on a loopback port. Throughput ratios are wharf's over skopeo's (higher is
//! better for wharf).
//!
//! `registry`: `wharf serve` against docker-registry 2.8, both on loopback with storage under
//! `$WHARF_BENCH_DIR`, with the same clients: curl for one large blob (push: POST + PUT with
//! the body; pull: GET to /dev/null), skopeo for the 200-layer image, wrk (GET) and `ab -i`
//! (HEAD) for manifests (2 threads / 32 connections), and each server's peak RSS (VmHWM).
//!
//! `gc`: see `gc.rs`: `wharf gc` on 100,000 blobs in 10,000 manifests beside a server taking
//! 20 pushers, then every manifest pulled back.
//!
//! For `transfer`, the registry's storage and the images pushed from live in /dev/shm, so the server side is
//! never the disk's bottleneck; the pulling clients write to `$WHARF_BENCH_DIR` (default
//! /var/tmp), where wharf fsyncs every blob and skopeo does not. `WHARF_BENCH_VERBOSE=1` prints
//! every timed command.

#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

#[allow(dead_code)]
#[path = "../tests/layout.rs"]
mod layout;
#[allow(dead_code)]
#[path = "../tests/support.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::RngCore;

mod build;
mod gc;
mod mirror;
mod registry;

struct Args {
    what: Vec<String>,
    rounds: usize,
    big_mib: usize,
    small_layers: usize,
    blobs: usize,
    manifests: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        what: Vec::new(),
        rounds: 3,
        big_mib: 1024,
        small_layers: 200,
        blobs: 100_000,
        manifests: 10_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--rounds" => a.rounds = it.next().and_then(|v| v.parse().ok()).unwrap_or(3),
            "--big-mib" => a.big_mib = it.next().and_then(|v| v.parse().ok()).unwrap_or(1024),
            "--small-layers" => {
                a.small_layers = it.next().and_then(|v| v.parse().ok()).unwrap_or(200)
            }
            "--blobs" => a.blobs = it.next().and_then(|v| v.parse().ok()).unwrap_or(100_000),
            "--manifests" => a.manifests = it.next().and_then(|v| v.parse().ok()).unwrap_or(10_000),
            "--bench" => {}
            other if !other.starts_with('-') => a.what.push(other.to_owned()),
            _ => {}
        }
    }
    if a.what.is_empty() {
        a.what.push("transfer".into());
    }
    a
}

fn run(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let took = start.elapsed();
    if std::env::var_os("WHARF_BENCH_VERBOSE").is_some() {
        eprintln!(
            "  {:>8.3}s  {:?}",
            took.as_secs_f64(),
            cmd.get_args().collect::<Vec<_>>()
        );
    }
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn random_tar(name: &str, size: usize) -> Vec<u8> {
    let mut data = vec![0u8; size];
    rand::rng().fill_bytes(&mut data);
    layout::tar_of(&[(name, &data)])
}

struct Figure {
    name: String,
    bytes: u64,
    wharf: Duration,
    peer: Duration,
    peer_name: &'static str,
}

impl Figure {
    fn print(&self) {
        let mbs = |d: Duration| self.bytes as f64 / 1e6 / d.as_secs_f64();
        println!(
            "{:<28} wharf {:>8.3}s {:>8.1} MB/s   {} {:>8.3}s {:>8.1} MB/s   ratio {:>5.2}x",
            self.name,
            self.wharf.as_secs_f64(),
            mbs(self.wharf),
            self.peer_name,
            self.peer.as_secs_f64(),
            mbs(self.peer),
            self.peer.as_secs_f64() / self.wharf.as_secs_f64(),
        );
    }
}

/// Flushes dirty pages so one tool's writeback does not land on the next one's clock.
fn settle() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
}

/// The wharf binary on the store at `root`, without progress output.
fn wharf_cmd(root: &Path) -> Command {
    let mut c = Command::new(support::WHARF);
    c.env("WHARF_ROOT", root).args(["--progress", "quiet"]);
    c
}

/// Loads the OCI layout `dir` into the store at `root` (not timed); returns the image id.
fn load_image(root: &Path, dir: &Path) -> String {
    let loaded = wharf_cmd(root)
        .args(["load", "-i"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    String::from_utf8_lossy(&loaded.stdout)
        .trim()
        .trim_start_matches("Loaded image ID: ")
        .to_owned()
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

fn transfer(args: &Args) {
    for tool in ["skopeo", "docker-registry"] {
        assert!(
            support::require(tool),
            "the transfer benchmark needs {tool} (run .ci/install-deps)"
        );
    }
    // The server side lives in memory (/dev/shm): the registry's storage and the images the
    // clients push from. What is measured is the clients; pulls write to disk, under /var/tmp.
    let shm = Path::new(if Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    });
    let reg = support::Distribution::start_with(shm, "").unwrap();
    let a = reg.addr.clone();
    let server_side = tempfile::tempdir_in(shm).unwrap();
    let work = tempfile::tempdir_in(
        std::env::var("WHARF_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()),
    )
    .unwrap();
    let w = work.path();
    let s = server_side.path();
    println!(
        "transfer: wharf and skopeo against one docker-registry 2.8 at {a}; fresh random gzip layers each \
         round (nothing to mount or skip); registry storage in memory; median of {} rounds",
        args.rounds
    );
    type MakeLayers<'a> = Box<dyn Fn() -> Vec<Vec<u8>> + 'a>;
    let cases: [(String, &str, MakeLayers); 2] = [
        (
            format!("{} MiB layer", args.big_mib),
            "big",
            Box::new(|| vec![random_tar("big.bin", args.big_mib << 20)]),
        ),
        (
            format!("{} x 100 KiB layers", args.small_layers),
            "small",
            Box::new(|| {
                (0..args.small_layers)
                    .map(|i| random_tar(&format!("f{i}.bin"), 100 << 10))
                    .collect()
            }),
        ),
    ];
    for (label, name, make) in &cases {
        let (mut wp, mut sp, mut wl, mut sl) = (vec![], vec![], vec![], vec![]);
        let mut bytes = 0;
        for round in 0..args.rounds {
            eprintln!("{label}: round {} …", round + 1);
            let dir = s.join(format!("{name}-{round}"));
            // gzip-wrapped layers, as real images have: skopeo would compress plain tars on push.
            layout::write_layout_with(&dir, None, &make(), "1", true);
            bytes = dir_size(&dir);
            // wharf pushes from its local store, loaded beforehand (not timed).
            let store = s.join(format!("store-{name}-{round}"));
            let id = load_image(&store, &dir);
            let wref = format!("{a}/wharf-{name}-{round}/img:1");
            let sref = format!("{a}/skopeo-{name}-{round}/img:1");
            run(wharf_cmd(&store).args(["tag", &id, &wref]));

            // Each tool goes first in every other round, so neither always meets the disk's
            // leftover writeback from the other.
            let skopeo_first = round % 2 == 0;
            let skopeo_push = || {
                settle();
                run(Command::new("skopeo").args([
                    "copy",
                    "--quiet",
                    "--dest-tls-verify=false",
                    &format!("oci:{}:1", dir.display()),
                    &format!("docker://{sref}"),
                ]))
            };
            let wharf_push = || {
                settle();
                run(wharf_cmd(&store).args(["push", "-q", &wref]))
            };
            if skopeo_first {
                sp.push(skopeo_push());
                wp.push(wharf_push());
            } else {
                wp.push(wharf_push());
                sp.push(skopeo_push());
            }

            let out = w.join(format!("skopeo-out-{name}-{round}"));
            let pull_root = w.join(format!("pull-{name}-{round}"));
            let skopeo_pull = || {
                settle();
                run(Command::new("skopeo").args([
                    "copy",
                    "--quiet",
                    "--src-tls-verify=false",
                    &format!("docker://{sref}"),
                    &format!("oci:{}:1", out.display()),
                ]))
            };
            let wharf_pull = || {
                settle();
                run(wharf_cmd(&pull_root).args(["pull", "-q", &wref]))
            };
            if skopeo_first {
                sl.push(skopeo_pull());
                wl.push(wharf_pull());
            } else {
                wl.push(wharf_pull());
                sl.push(skopeo_pull());
            }
            for d in [&out, &pull_root, &store, &dir] {
                let _ = std::fs::remove_dir_all(d);
            }
        }
        let fig = |what: &str, wharf: Vec<Duration>, peer: Vec<Duration>| Figure {
            name: format!("{what} {label}"),
            bytes,
            wharf: median(wharf),
            peer: median(peer),
            peer_name: "skopeo",
        };
        fig("push", wp, sp).print();
        fig("pull", wl, sl).print();
    }
}

fn main() {
    let args = parse_args();
    for what in args.what.clone() {
        match what.as_str() {
            "transfer" => transfer(&args),
            "registry" => registry::bench(&args),
            "build" => build::bench(&args),
            "gc" => gc::bench(args.blobs, args.manifests),
            "mirror" => mirror::bench(&args),
            other => {
                eprintln!(
                    "unknown benchmark {other:?} (known: transfer, registry, build, gc, mirror)"
                )
            }
        }
    }
}
