//! `wharf build` against docker's BuildKit (issue 4): the same Dockerfile and context give the
//! same image config and the same file tree.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/build")
        .join(name)
}

/// Extracts a `docker save`-style archive's image (the first in manifest.json) into `root`,
/// layer by layer, with GNU tar (owners and modes kept), applying each layer's whiteouts and
/// opaque directories first. Returns the config's history as (created_by, empty_layer).
pub(crate) fn extract_image(archive: &Path, root: &Path) -> History {
    let tmp = tempfile::tempdir().unwrap();
    let ok = Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(tmp.path())
        .status()
        .unwrap();
    assert!(ok.success());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("manifest.json")).unwrap()).unwrap();
    std::fs::create_dir_all(root).unwrap();
    for layer in manifest[0]["Layers"].as_array().unwrap() {
        let path = tmp.path().join(layer.as_str().unwrap());
        let list = Command::new("tar").arg("-tf").arg(&path).output().unwrap();
        for name in String::from_utf8_lossy(&list.stdout).lines() {
            let name = name.trim_start_matches("./");
            let (dir, base) = name.rsplit_once('/').unwrap_or(("", name));
            if base == ".wh..wh..opq" {
                if let Ok(children) = std::fs::read_dir(root.join(dir)) {
                    for c in children.flatten() {
                        let p = c.path();
                        if p.is_dir() && !p.is_symlink() {
                            std::fs::remove_dir_all(&p).unwrap();
                        } else {
                            std::fs::remove_file(&p).unwrap();
                        }
                    }
                }
            } else if let Some(victim) = base.strip_prefix(".wh.") {
                let p = root.join(dir).join(victim);
                if p.is_dir() && !p.is_symlink() {
                    std::fs::remove_dir_all(&p).unwrap();
                } else if std::fs::symlink_metadata(&p).is_ok() {
                    std::fs::remove_file(&p).unwrap();
                }
            }
        }
        let ok = Command::new("tar")
            .args([
                "-x",
                "--same-owner",
                "--same-permissions",
                "--numeric-owner",
                "--exclude=.wh.*",
                "-f",
            ])
            .arg(&path)
            .arg("-C")
            .arg(root)
            .status()
            .unwrap();
        assert!(ok.success(), "extracting {}", path.display());
    }
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tmp.path().join(manifest[0]["Config"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    config["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|e| {
                    (
                        e["created_by"].as_str().unwrap_or("").to_owned(),
                        e["empty_layer"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every path under `root` with its type, mode, owner, size, content digest and link target.
pub(crate) fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let what = if m.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                "dir".to_owned()
            } else {
                format!(
                    "file {} sha256:{}",
                    m.len(),
                    sha256_hex(&std::fs::read(&p).unwrap())
                )
            };
            let mode = if m.file_type().is_symlink() {
                0
            } else {
                m.permissions().mode() & 0o7777
            };
            out.insert(
                rel,
                format!("{what} mode {mode:o} owner {}:{}", m.uid(), m.gid()),
            );
        }
    }
    out
}

const CONFIG_KEYS: [&str; 13] = [
    "ArgsEscaped",
    "Env",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "ExposedPorts",
    "Volumes",
    "Labels",
    "StopSignal",
    "Healthcheck",
    "Shell",
    "OnBuild",
];

#[test]
fn issue_4_build_without_run_matches_buildkit() {
    if !have_busybox() || !require("tar") {
        return;
    }
    let Some(d) = Dockerd::start() else { return };
    let w = Wharf::new();
    w.load_busybox();
    // docker gets the same busybox, from wharf's save.
    let base = w.dir().join("busybox.tar");
    w.run(&["save", "-o", base.to_str().unwrap(), "busybox"])
        .ok();
    d.docker(&["load", "-i", base.to_str().unwrap()]).ok();

    let ctx = fixture("no-run");
    // The final image, and a FROM scratch stage picked with --target.
    let ours = compare_with_buildkit(&d, &w, &ctx, &[], &[]).tree;
    assert!(!ours.contains_key("secret.txt") && ours.contains_key("srv/owned/s.txt"));
    let minimal = compare_with_buildkit(&d, &w, &ctx, &["--target", "minimal"], &[]).tree;
    assert!(
        minimal.contains_key("bin/hello") && minimal.contains_key("a.conf"),
        "{minimal:?}"
    );
}

/// An image's history: (created_by, empty_layer) per step.
pub(crate) type History = Vec<(String, bool)>;

/// What [`compare_with_buildkit`] found equal: wharf's tree, and both histories.
pub(crate) struct Compared {
    pub tree: BTreeMap<String, String>,
    pub history: (History, History),
}

/// A path whose result differs between docker's BuildKit (0.8, in Debian's dockerd) and wharf
/// because wharf follows BuildKit v0.32 there: (path, what v0.32 does).
pub(crate) type Known<'a> = (&'a str, &'a str);

/// Builds `ctx` with BuildKit and with wharf (same extra flags, `bk:1` and `wh:1`), compares
/// the configs and the file trees, and returns wharf's tree and both histories. The `known`
/// paths must differ (and are checked by the caller); any other difference fails.
pub(crate) fn compare_with_buildkit(
    d: &Dockerd,
    w: &Wharf,
    ctx: &Path,
    flags: &[&str],
    known: &[Known],
) -> Compared {
    let out = Command::new("/usr/bin/docker")
        .args([
            "-H",
            &format!("unix://{}", d.sock),
            "build",
            "-t",
            "bk:1",
            "--build-arg",
            "VERSION=2.5",
        ])
        .args(flags)
        .arg(ctx)
        .env("DOCKER_BUILDKIT", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "BuildKit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut args = vec!["build", "-t", "wh:1", "--build-arg", "VERSION=2.5"];
    args.extend_from_slice(flags);
    args.push(ctx.to_str().unwrap());
    let built = w.run(&args).ok();
    assert!(
        built.stdout.trim().starts_with("sha256:"),
        "{}",
        built.stdout
    );

    let bk = d.docker(&["inspect", "bk:1"]).ok();
    let bk: serde_json::Value = serde_json::from_str(&bk.stdout).unwrap();
    let wh = w.inspect("wh:1");
    for key in CONFIG_KEYS {
        let theirs = &bk[0]["Config"][key];
        let ours = &wh["Config"][key];
        let empty = |v: &serde_json::Value| {
            v.is_null()
                || v.as_object().is_some_and(|o| o.is_empty())
                || v.as_array().is_some_and(|a| a.is_empty())
                || v.as_str() == Some("")
        };
        assert!(
            theirs == ours || (empty(theirs) && empty(ours)),
            "{flags:?} Config.{key}: BuildKit {theirs} wharf {ours}"
        );
    }

    let tmp = tempfile::tempdir().unwrap();
    let (bk_tar, wh_tar) = (tmp.path().join("bk.tar"), tmp.path().join("wh.tar"));
    d.docker(&["save", "-o", bk_tar.to_str().unwrap(), "bk:1"])
        .ok();
    w.run(&["save", "-o", wh_tar.to_str().unwrap(), "wh:1"])
        .ok();
    let (bk_root, wh_root) = (tmp.path().join("bk"), tmp.path().join("wh"));
    let bk_history = extract_image(&bk_tar, &bk_root);
    let wh_history = extract_image(&wh_tar, &wh_root);
    let (theirs, ours) = (tree(&bk_root), tree(&wh_root));
    assert!(!theirs.is_empty(), "BuildKit's tree is empty");
    let mut diffs = Vec::new();
    let mut differed = Vec::new();
    for (path, t) in &theirs {
        match ours.get(path) {
            Some(o) if o == t => {}
            _ if known.iter().any(|(k, _)| k == path) => differed.push(path.as_str()),
            Some(o) => diffs.push(format!("{path}: BuildKit {t} / wharf {o}")),
            None => diffs.push(format!("{path}: only in BuildKit's ({t})")),
        }
    }
    for (path, o) in &ours {
        if !theirs.contains_key(path) {
            if known.iter().any(|(k, _)| k == path) {
                differed.push(path.as_str());
            } else {
                diffs.push(format!("{path}: only in wharf's ({o})"));
            }
        }
    }
    for (path, why) in known {
        assert!(
            differed.contains(path),
            "{path} was listed as a known difference from BuildKit 0.8 ({why}) but is the same"
        );
    }
    assert!(
        diffs.is_empty(),
        "{flags:?}: file trees differ:\n{}",
        diffs.join("\n")
    );
    Compared {
        tree: ours,
        history: (bk_history, wh_history),
    }
}

#[test]
fn issue_4_same_epoch_same_image_and_hostile_context_stays_inside() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(ctx.join("d")).unwrap();
    std::fs::write(tmp.path().join("outside"), "secret").unwrap();
    std::fs::write(ctx.join("d/f"), "inside").unwrap();
    std::os::unix::fs::symlink("../../outside", ctx.join("d/escape")).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY ../d/escape /x\nCOPY d /d/\n",
    )
    .unwrap();
    let ids: Vec<String> = (0..2)
        .map(|_| {
            let w = Wharf::new();
            let r = w
                .cmd()
                .args(["build", "-q", ctx.to_str().unwrap()])
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&r.stderr);
            // The link resolves inside the context: ../../outside from d/ is the context's outside.
            assert!(!r.status.success() && stderr.contains("escape"), "{stderr}");
            std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY d /d/\n").unwrap();
            let r = w
                .cmd()
                .args(["build", "-q", ctx.to_str().unwrap()])
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .output()
                .unwrap();
            assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
            std::fs::write(
                ctx.join("Dockerfile"),
                "FROM scratch\nCOPY ../d/escape /x\nCOPY d /d/\n",
            )
            .unwrap();
            String::from_utf8_lossy(&r.stdout).trim().to_owned()
        })
        .collect();
    assert_eq!(
        ids[0], ids[1],
        "same context, same SOURCE_DATE_EPOCH: same image"
    );
}

/// Each step's text and whether it was CACHED, from `wharf build`'s plain progress, in step
/// number order (`#N [stage i/n] TEXT`, then `#N CACHED` or `#N DONE`).
fn step_statuses(stderr: &str) -> Vec<(String, &'static str)> {
    let mut steps: BTreeMap<usize, (String, &'static str)> = BTreeMap::new();
    for line in stderr.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let Some((id, what)) = rest.split_once(' ') else {
            continue;
        };
        let Ok(id) = id.parse::<usize>() else {
            continue;
        };
        if let Some(step) = what.strip_prefix('[') {
            let text = step.split_once("] ").map_or("", |x| x.1);
            steps.insert(id, (text.to_owned(), "started"));
        } else if let Some(s) = steps.get_mut(&id) {
            s.1 = if what == "CACHED" { "CACHED" } else { "ran" };
        }
    }
    steps.into_values().collect()
}

#[test]
fn issue_4_cache_reuses_steps_and_reruns_from_the_changed_file() {
    let w = Wharf::new();
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path();
    for f in ["a.txt", "b.txt", "c.txt"] {
        std::fs::write(ctx.join(f), f).unwrap();
    }
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY a.txt /a.txt\nENV X=1\nCOPY b.txt /b.txt\nCOPY c.txt /c.txt\n",
    )
    .unwrap();
    let build = || {
        let r = w.run(&["build", ctx.to_str().unwrap()]).ok();
        (r.stdout.trim().to_owned(), step_statuses(&r.stderr))
    };
    let copies = |s: &[(String, &'static str)]| -> Vec<&'static str> {
        s.iter()
            .filter(|(t, _)| t.starts_with("COPY"))
            .map(|(_, st)| *st)
            .collect()
    };
    let (first, steps) = build();
    assert_eq!(copies(&steps), ["ran", "ran", "ran"]);
    // Another process, nothing changed: every step from the cache, the same image.
    let (again, steps) = build();
    assert_eq!(copies(&steps), ["CACHED", "CACHED", "CACHED"]);
    assert_eq!(again, first);
    // A new mtime alone changes nothing.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .append(true)
        .open(ctx.join("b.txt"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    let (touched, steps) = build();
    assert_eq!(copies(&steps), ["CACHED", "CACHED", "CACHED"]);
    assert_eq!(touched, first);
    // New content: the COPY that selects it and what follows run again.
    std::fs::write(ctx.join("b.txt"), "changed").unwrap();
    let (changed, steps) = build();
    assert_eq!(copies(&steps), ["CACHED", "ran", "ran"]);
    assert_ne!(changed, first);
    // --no-cache runs everything; prune forgets it all.
    let r = w.run(&["build", "--no-cache", ctx.to_str().unwrap()]).ok();
    assert_eq!(copies(&step_statuses(&r.stderr)), ["ran", "ran", "ran"]);
    let pruned = w.run(&["builder", "prune", "-f"]).ok();
    assert!(
        pruned.stdout.contains("Total reclaimed space"),
        "{}",
        pruned.stdout
    );
    let (_, steps) = build();
    assert_eq!(copies(&steps), ["ran", "ran", "ran"]);
}

#[test]
fn issue_4_outputs_push_and_a_context_on_stdin() {
    if !require("skopeo") || !require("tar") {
        return;
    }
    let serve = WharfServe::start();
    let w = Wharf::new();
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(ctx.join("etc")).unwrap();
    std::fs::write(ctx.join("etc/app.conf"), "x=1\n").unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY etc /etc/\nCMD [\"/app\"]\n",
    )
    .unwrap();
    let archive = tmp.path().join("out.tar");
    let files = tmp.path().join("files");
    let name = format!("{}/built/app:1", serve.addr);
    let r = w
        .run(&[
            "build",
            "-t",
            &name,
            "--push",
            "-o",
            &format!("type=oci,dest={}", archive.display()),
            "-o",
            &format!("type=local,dest={}", files.display()),
            ctx.to_str().unwrap(),
        ])
        .ok();
    let id = r.stdout.lines().last().unwrap().trim().to_owned();
    assert_eq!(
        std::fs::read_to_string(files.join("etc/app.conf")).unwrap(),
        "x=1\n"
    );
    let inspected = skopeo(&[
        "inspect",
        "--config",
        &format!("oci-archive:{}", archive.display()),
    ])
    .ok();
    assert!(
        inspected.stdout.contains("\"/app\""),
        "{}",
        inspected.stdout
    );
    let pushed = skopeo(&[
        "inspect",
        "--config",
        "--tls-verify=false",
        &format!("docker://{name}"),
    ])
    .ok();
    assert_eq!(
        format!("sha256:{}", sha256_hex(pushed.stdout.trim_end().as_bytes())).len(),
        id.len()
    );
    // The same context as a tar on stdin builds the same image.
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&ctx)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    let again = w.run_stdin(&["build", "-q", "-"], &tar.stdout).ok();
    assert_eq!(again.stdout.trim(), id);
}

#[test]
fn issue_4_progress_as_json_lines() {
    let w = Wharf::new();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("f"), "f").unwrap();
    std::fs::write(
        tmp.path().join("Dockerfile"),
        "FROM scratch\nMAINTAINER me\nCOPY f /f\n",
    )
    .unwrap();
    let out = Command::new(WHARF)
        .env("WHARF_ROOT", &w.root)
        .args(["--progress", "json", "build", "-t", "j:1"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(
        kinds.contains(&"warning") && kinds.contains(&"step") && kinds.contains(&"done"),
        "{kinds:?}"
    );
    let copy = events
        .iter()
        .find(|e| e["data"]["instruction"] == "COPY f /f")
        .unwrap();
    assert_eq!(copy["data"]["index"], 3);
    assert!(
        events
            .iter()
            .any(|e| e["data"]["rule"] == "MaintainerDeprecated")
    );
}

#[test]
fn issue_4_add_from_a_url_with_checksum() {
    use axum::http::header::LAST_MODIFIED;
    use axum::routing::get;
    let body = "#!/bin/sh\necho tool\n";
    let server = serve(axum::Router::new().route(
        "/files/tool.sh",
        get(move || async move { ([(LAST_MODIFIED, "Wed, 21 Oct 2015 07:28:00 GMT")], body) }),
    ));
    let url = format!("http://{}/files/tool.sh", server.addr);
    let sum = format!("sha256:{}", sha256_hex(body.as_bytes()));
    let w = Wharf::new();
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM scratch\nADD --checksum={sum} {url} /bin/\nADD {url} /named\n"),
    )
    .unwrap();
    let files = tmp.path().join("files");
    w.run(&[
        "build",
        "-o",
        files.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ])
    .ok();
    for p in ["bin/tool.sh", "named"] {
        let m = std::fs::metadata(files.join(p)).unwrap();
        assert_eq!(std::fs::read_to_string(files.join(p)).unwrap(), body);
        assert_eq!(
            m.permissions().mode() & 0o777,
            0o600,
            "{p}: files from URLs are 0600"
        );
        assert_eq!(m.mtime(), 1_445_412_480, "{p}: the server's Last-Modified");
    }
    let wrong = format!("sha256:{}", sha256_hex(b"something else"));
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM scratch\nADD --checksum={wrong} {url} /bin/\n"),
    )
    .unwrap();
    let r = w.run(&["build", ctx.to_str().unwrap()]).fails();
    assert!(
        r.stderr.contains(&sum) && r.stderr.contains(&wrong) && r.stderr.contains(":2:"),
        "{}",
        r.stderr
    );
}

#[test]
fn issue_4_live_view_on_a_terminal() {
    if !require("script") {
        return;
    }
    let w = Wharf::new();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("f"), "f").unwrap();
    std::fs::write(tmp.path().join("Dockerfile"), "FROM scratch\nCOPY f /f\n").unwrap();
    // `script` gives wharf a terminal; the view redraws, then leaves each step's final line.
    let cmd = format!("{WHARF} build {}", tmp.path().display());
    let run = || {
        let out = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("WHARF_ROOT", &w.root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = run();
    assert!(first.contains("[stage-0 2/2] COPY f /f  DONE"), "{first}");
    let second = run();
    assert!(
        second.contains("[stage-0 2/2] COPY f /f  CACHED"),
        "{second}"
    );
}

#[test]
fn issue_4_hostile_add_archive_and_two_checkouts() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    // A tar whose members try to leave: ../, an absolute path, a symlink then a file through it.
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, link, data) in [
        (
            "../../escaped.txt",
            tar::EntryType::Regular,
            None,
            &b"x"[..],
        ),
        ("/abs.txt", tar::EntryType::Regular, None, b"y"),
        ("up", tar::EntryType::Symlink, Some("../../.."), b""),
        ("up/through.txt", tar::EntryType::Regular, None, b"z"),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    let evil = b.into_inner().unwrap();
    let ctx_a = tmp.path().join("a/ctx");
    std::fs::create_dir_all(&ctx_a).unwrap();
    std::fs::File::create(ctx_a.join("evil.tar"))
        .unwrap()
        .write_all(&evil)
        .unwrap();
    std::fs::write(ctx_a.join("Dockerfile"), "FROM scratch\nADD evil.tar /x/\n").unwrap();
    let w = Wharf::new();
    let files = tmp.path().join("files");
    let r = w
        .cmd()
        .args([
            "build",
            "-q",
            "-o",
            files.to_str().unwrap(),
            ctx_a.to_str().unwrap(),
        ])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    for outside in ["escaped.txt", "a/escaped.txt", "abs.txt", "through.txt"] {
        assert!(
            !tmp.path().join(outside).exists(),
            "{outside} written outside"
        );
    }
    assert!(!Path::new("/abs.txt").exists() && !Path::new("/through.txt").exists());
    assert_eq!(
        std::fs::read_to_string(files.join("x/escaped.txt")).unwrap(),
        "x"
    );
    // A second checkout (new inodes and times), another store: the same image.
    let ctx_b = tmp.path().join("b/ctx");
    std::fs::create_dir_all(&ctx_b).unwrap();
    std::fs::File::create(ctx_b.join("evil.tar"))
        .unwrap()
        .write_all(&evil)
        .unwrap();
    std::fs::write(ctx_b.join("Dockerfile"), "FROM scratch\nADD evil.tar /x/\n").unwrap();
    // Other times than the first checkout's, without waiting for the clock.
    let other = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    for f in ["evil.tar", "Dockerfile"] {
        let file = std::fs::File::options()
            .write(true)
            .open(ctx_b.join(f))
            .unwrap();
        file.set_modified(other).unwrap();
    }
    let id_a = String::from_utf8_lossy(&r.stdout).trim().to_owned();
    let r = Wharf::new()
        .cmd()
        .args(["build", "-q", ctx_b.to_str().unwrap()])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), id_a);
}

#[test]
fn issue_4_symlinked_destinations_resolve_inside_the_image() {
    use std::os::unix::fs::symlink;
    let w = Wharf::new();
    let tmp = tempfile::tempdir().unwrap();
    // A host directory an absolute symlink in the image names: it must not be touched.
    let probe = tempfile::Builder::new()
        .prefix("wharf-probe")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(probe.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(ctx.join("base/real")).unwrap();
    symlink(probe.path(), ctx.join("base/link")).unwrap();
    std::fs::create_dir_all(ctx.join("rootfs/link")).unwrap();
    std::fs::set_permissions(
        ctx.join("rootfs/link"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    std::fs::write(ctx.join("rootfs/link/x"), "x").unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY base/ /\nCOPY rootfs/ /\n",
    )
    .unwrap();
    let files = tmp.path().join("files");
    w.run(&[
        "build",
        "-o",
        files.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ])
    .ok();
    let mode = std::fs::metadata(probe.path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(
        mode, 0o755,
        "the host directory behind the image's symlink was changed"
    );
    assert!(
        !probe.path().join("x").exists(),
        "a file was written on the host"
    );
    // Inside the image the link is followed: the file is under the link's target there.
    let inside = files
        .join(probe.path().strip_prefix("/").unwrap())
        .join("x");
    assert_eq!(std::fs::read_to_string(&inside).unwrap(), "x");
    assert!(
        std::fs::symlink_metadata(files.join("link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

/// The entries of layer `n` (negative: from the end) of `image` in `w`'s store, as (path bytes,
/// type, mode, uid, gid).
pub(crate) fn layer_entries(
    w: &Wharf,
    image: &str,
    n: isize,
) -> Vec<(Vec<u8>, char, u32, u64, u64)> {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("img.tar");
    w.run(&["save", "-o", archive.to_str().unwrap(), image])
        .ok();
    let x = tmp.path().join("x");
    std::fs::create_dir(&x).unwrap();
    let ok = Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap();
    assert!(ok.success());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(x.join("manifest.json")).unwrap()).unwrap();
    let layers = manifest[0]["Layers"].as_array().unwrap();
    let i = if n < 0 { layers.len() as isize + n } else { n } as usize;
    let data = std::fs::read(x.join(layers[i].as_str().unwrap())).unwrap();
    let mut plain = Vec::new();
    if data.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(data.as_slice())
            .read_to_end(&mut plain)
            .unwrap();
    } else {
        plain = data;
    }
    let mut out = Vec::new();
    for e in tar::Archive::new(plain.as_slice()).entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        let kind = match h.entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            _ => 'f',
        };
        out.push((
            e.path_bytes().into_owned(),
            kind,
            h.mode().unwrap() & 0o7777,
            h.uid().unwrap(),
            h.gid().unwrap(),
        ));
    }
    out
}

#[test]
fn issue_10_results_follow_buildkit_v0_32() {
    if !require_root() || !have_busybox() || !require("tar") {
        return;
    }
    let w = Wharf::new();
    w.load_busybox();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("a.txt"), "a\n").unwrap();
    std::fs::copy("/bin/busybox", ctx.path().join("bb")).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        r#"FROM busybox AS main
RUN echo "app:x:1000:1000::/home/app:/bin/sh" >> /etc/passwd \
 && echo "app:x:1000:" >> /etc/group
USER app
RUN id > /tmp/id
USER root
COPY --chmod=0640 a.txt /chmod/a
WORKDIR /work/myapp/

FROM main AS sub
WORKDIR sub/

FROM scratch AS bare
COPY bb /bin/busybox
RUN ["/bin/busybox", "true"]
"#,
    )
    .unwrap();
    let dir = ctx.path().to_str().unwrap();
    for target in ["main", "sub", "bare"] {
        w.run(&[
            "build",
            "--network",
            "none",
            "--target",
            target,
            "-t",
            target,
            dir,
        ])
        .ok();
    }
    // RUN as a user: the primary group among the supplementary ones.
    let id = w
        .run(&["run", "--rm", "--network", "none", "main", "cat", "/tmp/id"])
        .ok();
    assert_eq!(id.stdout, "uid=1000(app) gid=1000(app) groups=1000(app)\n");
    // COPY --chmod gives the parent it creates the same mode, umask or not.
    let entries = layer_entries(&w, "main", -2);
    let chmod_dir = entries.iter().find(|e| e.0 == b"chmod/" || e.0 == b"chmod");
    assert_eq!(
        chmod_dir.map(|e| (e.1, e.2, e.3, e.4)),
        Some(('d', 0o640, 0, 0)),
        "{entries:?}"
    );
    // WORKDIR keeps an absolute path as written and cleans a relative one.
    assert_eq!(w.inspect("main")["Config"]["WorkingDir"], "/work/myapp/");
    assert_eq!(w.inspect("sub")["Config"]["WorkingDir"], "/work/myapp/sub");
    // RUN on a base without /dev, /proc and /sys leaves those directories in its layer.
    let entries = layer_entries(&w, "bare", -1);
    for d in ["dev", "proc", "sys"] {
        let found = entries
            .iter()
            .find(|e| e.0.strip_suffix(b"/").unwrap_or(&e.0) == d.as_bytes());
        assert_eq!(
            found.map(|e| (e.1, e.2, e.3, e.4)),
            Some(('d', 0o755, 0, 0)),
            "{d} in {entries:?}"
        );
    }
}

#[test]
fn issue_10_expansion_is_bounded_and_env_is_linear() {
    let w = Wharf::new();
    let ctx = tempfile::tempdir().unwrap();
    // 24 ARGs, each twice the one before: A15 (2 MiB) passes the 1 MiB bound and fails, naming
    // its line.
    let mut df = String::from(
        "FROM scratch\nARG A0=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n",
    );
    for i in 1..=24 {
        df.push_str(&format!("ARG A{i}=${{A{}}}${{A{}}}\n", i - 1, i - 1));
    }
    df.push_str("ENV X=$A24\n");
    std::fs::write(ctx.path().join("Dockerfile"), &df).unwrap();
    let r = w.run(&["build", ctx.path().to_str().unwrap()]).fails();
    assert!(
        r.stderr.contains("Dockerfile:17") && r.stderr.contains("longer than 1048576 bytes"),
        "{}",
        r.stderr
    );
    // One replacement that would multiply a value by itself.
    let big = "x".repeat(64 << 10);
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM scratch\nARG B={big}\nENV C=${{B//?/$B}}\n"),
    )
    .unwrap();
    let r = w.run(&["build", ctx.path().to_str().unwrap()]).fails();
    assert!(
        r.stderr.contains("Dockerfile:3") && r.stderr.contains("longer than 1048576 bytes"),
        "{}",
        r.stderr.lines().last().unwrap_or_default()
    );
    // 20,000 ENV lines, half of them setting a name again: each keeps its place, the last value
    // wins, and references see the value before their line.
    let mut df = String::from("FROM scratch\n");
    for i in 0..10_000 {
        df.push_str(&format!("ENV V{i}={i}\n"));
    }
    for i in 0..10_000 {
        df.push_str(&format!("ENV V{i}=${{V{i}}}-again\n"));
    }
    std::fs::write(ctx.path().join("Dockerfile"), &df).unwrap();
    let started = std::time::Instant::now();
    w.run(&["build", "-q", "-t", "env", ctx.path().to_str().unwrap()])
        .ok();
    eprintln!("20,000 ENV lines built in {:?}", started.elapsed());
    let env = w.inspect("env")["Config"]["Env"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(env.len(), 10_001, "PATH and V0..V9999");
    assert_eq!(env[1], "V0=0-again");
    assert_eq!(env[10_000], "V9999=9999-again");
}

#[test]
fn issue_10_file_names_are_bytes_in_layers() {
    use std::os::unix::ffi::OsStrExt;
    if !require_root() || !have_busybox() || !require("tar") {
        return;
    }
    let w = Wharf::new();
    w.load_busybox();
    let ctx = tempfile::tempdir().unwrap();
    let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    std::fs::create_dir(ctx.path().join("d")).unwrap();
    std::fs::write(ctx.path().join("d").join(latin1), "latin-1\n").unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM busybox\nCOPY d/ /d/\nRUN touch \"/n$(printf '\\377')\" /plain\n",
    )
    .unwrap();
    w.run(&["build", "-t", "names", ctx.path().to_str().unwrap()])
        .ok();
    let copied = layer_entries(&w, "names", -2);
    assert!(
        copied.iter().any(|e| e.0 == b"d/caf\xe9.txt"),
        "COPY kept the name: {copied:?}"
    );
    let ran = layer_entries(&w, "names", -1);
    assert!(
        ran.iter().any(|e| e.0 == b"n\xff") && ran.iter().any(|e| e.0 == b"plain"),
        "RUN's layer kept the name: {ran:?}"
    );
}

#[test]
fn issue_11_add_urls_quoted_or_using_args_after_from() {
    use axum::routing::get;
    let server = serve(
        axum::Router::new()
            .route("/README.md", get(|| async { "readme\n" }))
            .route("/v2.0/tool", get(|| async { "tool 2.0\n" })),
    );
    let w = Wharf::new();
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    // A quoted URL, as the tutorials write it, and one built from an ARG declared after FROM
    // and from an ENV using it; --build-arg overrides the default.
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM scratch\n\
             ADD 'http://{addr}/README.md' ./test/\n\
             ARG HOST={addr}\n\
             ARG VERSION=1.0\n\
             ENV URL=http://$HOST/v$VERSION\n\
             ADD \"${{URL}}/tool\" /tool\n",
            addr = server.addr
        ),
    )
    .unwrap();
    let files = tmp.path().join("files");
    w.run(&[
        "build",
        "--build-arg",
        "VERSION=2.0",
        "-o",
        files.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(
        std::fs::read_to_string(files.join("test/README.md")).unwrap(),
        "readme\n"
    );
    assert_eq!(
        std::fs::read_to_string(files.join("tool")).unwrap(),
        "tool 2.0\n"
    );
}

// Cases that are a Dockerfile, a context and what the image must hold live in
// fixtures/build/<case>/ (build_cases.rs). What stays here needs more than one build of changed
// files, archives made at test time, servers, or a peer to compare with.

#[test]
fn issue_4_a_changed_heredoc_body_is_a_changed_step() {
    let w = Wharf::new();
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path();
    let df = "FROM scratch\nCOPY <<EOF /h.txt\none\nEOF\n";
    std::fs::write(ctx.join("Dockerfile"), df).unwrap();
    w.run(&["build", ctx.to_str().unwrap()]).ok();
    let r = w.run(&["build", ctx.to_str().unwrap()]).ok();
    let copy = |stderr: &str| {
        step_statuses(stderr)
            .into_iter()
            .find(|(t, _)| t.starts_with("COPY <<EOF"))
            .unwrap()
            .1
    };
    assert_eq!(copy(&r.stderr), "CACHED", "{}", r.stderr);
    std::fs::write(ctx.join("Dockerfile"), df.replace("one\n", "two\n")).unwrap();
    let r = w.run(&["build", ctx.to_str().unwrap()]).ok();
    assert_eq!(copy(&r.stderr), "ran", "{}", r.stderr);
}

#[test]
fn issue_4_add_unpacks_local_archives() {
    if !require("tar") {
        return;
    }
    let w = Wharf::new();
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(ctx.join("t")).unwrap();
    std::fs::write(ctx.join("t/inner.txt"), "inner").unwrap();
    for (flag, name) in [
        ("-czf", "d.tar.gz"),
        ("-cjf", "d.tar.bz2"),
        ("-cJf", "d.tar.xz"),
    ] {
        let ok = Command::new("tar")
            .arg("-C")
            .arg(ctx.join("t"))
            .arg(flag)
            .arg(ctx.join(name))
            .arg("inner.txt")
            .status()
            .unwrap();
        assert!(ok.success(), "tar {flag}");
    }
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nADD d.tar.gz /unpacked/\nADD d.tar.bz2 /bz2/\nADD d.tar.xz /xz/\n",
    )
    .unwrap();
    let files = tmp.path().join("files");
    w.run(&[
        "build",
        "-o",
        files.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ])
    .ok();
    for dir in ["unpacked", "bz2", "xz"] {
        assert_eq!(
            std::fs::read_to_string(files.join(dir).join("inner.txt")).unwrap(),
            "inner",
            "ADD unpacks a local archive into /{dir}"
        );
    }
}

#[test]
fn issue_4_ignored_files_do_not_invalidate_the_cache() {
    let w = Wharf::new();
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path();
    std::fs::create_dir_all(ctx.join("src")).unwrap();
    std::fs::write(ctx.join("src/main.rs"), "fn main() {}").unwrap();
    std::fs::write(ctx.join("src/secret.key"), "key").unwrap();
    std::fs::write(ctx.join(".dockerignore"), "**/*.key\n").unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY src /src/\n").unwrap();
    w.run(&["build", ctx.to_str().unwrap()]).ok();
    std::fs::write(ctx.join("src/secret.key"), "rotated").unwrap();
    let r = w.run(&["build", ctx.to_str().unwrap()]).ok();
    assert!(r.stderr.contains("CACHED"), "{}", r.stderr);
    std::fs::write(ctx.join("src/main.rs"), "fn main() { }").unwrap();
    let r = w.run(&["build", ctx.to_str().unwrap()]).ok();
    assert!(!r.stderr.contains("CACHED"), "{}", r.stderr);
}
