//! Pull, tag and push against Debian's docker-registry, read back by skopeo and docker.

use std::process::Command;

use crate::layout::{tar_of, write_layout};
use crate::support::*;

fn skopeo_digest(reference: &str) -> String {
    let r = skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ])
    .ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    v["Digest"].as_str().unwrap().to_owned()
}

#[test]
fn issue_2_pull_tag_push_roundtrip_read_by_skopeo_and_docker() {
    if !require("skopeo") || !have_busybox() {
        return;
    }
    let Some(reg) = Distribution::start() else {
        return;
    };
    let layout = busybox_layout();
    let a = &reg.addr;
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:latest", layout.display()),
        &format!("docker://{a}/fixtures/busybox:latest"),
    ])
    .ok();
    let original = skopeo_digest(&format!("{a}/fixtures/busybox:latest"));

    let w = Wharf::new();
    let pulled = w
        .run(&["pull", &format!("{a}/fixtures/busybox:latest")])
        .ok();
    assert_eq!(pulled.stdout.trim(), format!("{a}/fixtures/busybox:latest"));
    assert!(
        pulled.stderr.contains(&format!("Digest: {original}")),
        "{}",
        pulled.stderr
    );
    let info = w.inspect(&format!("{a}/fixtures/busybox"));
    assert_eq!(
        info["Descriptor"]["digest"],
        original.as_str(),
        "stored byte-exact"
    );
    assert_eq!(
        info["RepoDigests"][0],
        format!("{a}/fixtures/busybox@{original}")
    );

    w.run(&[
        "tag",
        &format!("{a}/fixtures/busybox:latest"),
        &format!("{a}/copies/busybox:v1"),
    ])
    .ok();
    let pushed = w.run(&["push", &format!("{a}/copies/busybox:v1")]).ok();
    assert!(
        pushed.stdout.contains(&format!("v1: digest: {original}")),
        "{}",
        pushed.stdout
    );
    assert_eq!(skopeo_digest(&format!("{a}/copies/busybox:v1")), original);

    // A second pull changes nothing and says so.
    let again = w
        .run(&["pull", &format!("{a}/fixtures/busybox:latest")])
        .ok();
    assert!(
        again.stderr.contains("Image is up to date"),
        "{}",
        again.stderr
    );

    let Some(docker) = Dockerd::start() else {
        return;
    };
    let image = format!("{a}/copies/busybox:v1");
    docker.docker(&["pull", &image]).ok();
    let digests = docker
        .docker(&[
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            &image,
        ])
        .ok();
    assert!(digests.stdout.contains(&original), "{}", digests.stdout);
    let run = docker
        .docker(&["run", "--rm", "--network", "none", &image, "echo", "ok"])
        .ok();
    assert_eq!(run.stdout.trim(), "ok");
}

#[test]
fn issue_2_chunked_push_and_cross_repository_mount() {
    if !require("skopeo") || !have_busybox() {
        return;
    }
    let Some(reg) = Distribution::start() else {
        return;
    };
    let a = &reg.addr;
    let w = Wharf::new();
    w.load_busybox();
    w.run(&["tag", "busybox", &format!("{a}/one/bb:1")]).ok();
    let pushed = w
        .run(&["push", "--chunk-size", "65536", &format!("{a}/one/bb:1")])
        .ok();
    let digest = pushed.stdout.split_whitespace().nth(2).unwrap().to_owned();
    assert_eq!(skopeo_digest(&format!("{a}/one/bb:1")), digest);
    let out = tempfile::tempdir().unwrap();
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{a}/one/bb:1"),
        &format!("dir:{}", out.path().display()),
    ])
    .ok();

    // The image now has a repo digest in one/bb: pushing it to two/bb mounts its layer.
    w.run(&["tag", "busybox", &format!("{a}/two/bb:1")]).ok();
    let second = w.run(&["push", &format!("{a}/two/bb:1")]).ok();
    assert!(
        second.stderr.contains("Mounted from another repository"),
        "{}",
        second.stderr
    );
    assert_eq!(skopeo_digest(&format!("{a}/two/bb:1")), digest);
    let out2 = tempfile::tempdir().unwrap();
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{a}/two/bb:1"),
        &format!("dir:{}", out2.path().display()),
    ])
    .ok();
}

#[test]
fn issue_2_concurrent_pulls_sharing_layers() {
    if !require("skopeo") || !have_busybox() {
        return;
    }
    let Some(reg) = Distribution::start() else {
        return;
    };
    let a = &reg.addr;
    let base = busybox_layout();
    let tmp = tempfile::tempdir().unwrap();
    let shared: Vec<Vec<u8>> = (0..4)
        .map(|i| tar_of(&[(&format!("shared/{i}"), &vec![i as u8; 300_000][..])]))
        .collect();
    for (name, own) in [("first", 1u8), ("second", 2u8)] {
        let mut layers = shared.clone();
        layers.push(tar_of(&[(&format!("own/{name}"), &vec![own; 200_000][..])]));
        let dir = tmp.path().join(name);
        write_layout(&dir, Some(&base), &layers, "latest");
        skopeo(&[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:latest", dir.display()),
            &format!("docker://{a}/shared/{name}:latest"),
        ])
        .ok();
    }
    let w = Wharf::new();
    let children: Vec<_> = ["first", "second"]
        .iter()
        .map(|name| {
            w.cmd()
                .args(["pull", &format!("{a}/shared/{name}:latest")])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        w.ingest_files().is_empty(),
        "stray files: {:?}",
        w.ingest_files()
    );
    // Every blob of both images is present and verifies: saving reads and checks them all.
    for name in ["first", "second"] {
        let out = w.dir().join(format!("{name}.tar"));
        w.run(&[
            "save",
            "-o",
            out.to_str().unwrap(),
            &format!("{a}/shared/{name}:latest"),
        ])
        .ok();
    }
    let listed = w.run(&["images", "--format", "json"]).ok();
    assert_eq!(listed.stdout.lines().count(), 2, "{}", listed.stdout);
    // Shared blobs are stored once: base layer + 4 shared + 2 own + 2 configs + 2 manifests.
    let blobs = w
        .store_files()
        .into_iter()
        .filter(|f| f.starts_with("blobs/"))
        .count();
    assert_eq!(blobs, 1 + 4 + 2 + 2 + 2);
}

#[test]
fn issue_2_basic_auth_login_push_logout() {
    if !require("htpasswd") || !have_busybox() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    let out = Command::new("htpasswd")
        .args(["-Bbn", "alice", "s3cret"])
        .output()
        .unwrap();
    std::fs::write(&htpasswd, out.stdout).unwrap();
    let auth = format!(
        "auth:\n  htpasswd:\n    realm: wharf-test\n    path: {}\n",
        htpasswd.display()
    );
    let Some(reg) = Distribution::start_with(&std::env::temp_dir(), &auth) else {
        return;
    };
    let a = &reg.addr;
    let w = Wharf::new();
    w.load_busybox();
    w.run(&["tag", "busybox", &format!("{a}/private/bb:1")])
        .ok();
    let denied = w.run(&["push", &format!("{a}/private/bb:1")]).fails();
    assert!(denied.stderr.contains("unauthorized"), "{}", denied.stderr);
    let bad = w
        .run_stdin(&["login", "-u", "alice", "--password-stdin", a], b"wrong\n")
        .fails();
    assert!(bad.stderr.contains(a.as_str()), "{}", bad.stderr);
    let ok = w
        .run_stdin(
            &["login", "-u", "alice", "--password-stdin", a],
            b"s3cret\n",
        )
        .ok();
    assert_eq!(ok.stdout.trim(), "Login Succeeded");
    let config = std::fs::read_to_string(w.docker_config.join("config.json")).unwrap();
    assert!(config.contains(a.as_str()), "{config}");
    w.run(&["push", &format!("{a}/private/bb:1")]).ok();
    let other = Wharf::new();
    std::fs::copy(
        w.docker_config.join("config.json"),
        other.docker_config.join("config.json"),
    )
    .unwrap();
    other.run(&["pull", &format!("{a}/private/bb:1")]).ok();
    let out = w.run(&["logout", a]).ok();
    assert!(
        out.stdout.contains("Removing login credentials"),
        "{}",
        out.stdout
    );
    let fresh = Wharf::new();
    std::fs::copy(
        w.docker_config.join("config.json"),
        fresh.docker_config.join("config.json"),
    )
    .unwrap();
    let denied = fresh.run(&["pull", &format!("{a}/private/bb:1")]).fails();
    assert!(denied.stderr.contains("unauthorized"), "{}", denied.stderr);
}

#[test]
fn issue_2_multi_platform_index_one_platform_or_all() {
    if !require("skopeo") || !have_busybox() {
        return;
    }
    let Some(reg) = Distribution::start() else {
        return;
    };
    let a = &reg.addr;
    let tmp = tempfile::tempdir().unwrap();
    let index = push_index(
        tmp.path(),
        &["linux/amd64", "linux/arm64/v8", "linux/arm/v7"],
        &format!("{a}/multi/bb:1"),
    );
    assert_eq!(
        skopeo_digest(&format!("{a}/multi/bb:1")),
        index,
        "skopeo keeps the index as is"
    );
    let image = format!("{a}/multi/bb:1");

    // Default: the host's platform, recorded under the index digest.
    let host = Wharf::new();
    let r = host.run(&["pull", &image]).ok();
    assert!(
        r.stderr.contains(&format!("Digest: {index}")),
        "{}",
        r.stderr
    );
    let v = host.inspect(&image);
    assert_eq!(v["Architecture"], "amd64");
    assert_eq!(v["RepoDigests"][0], format!("{a}/multi/bb@{index}"));
    assert_eq!(
        v["Descriptor"]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );

    // --platform picks another one; a missing one is named with what there is.
    let arm = Wharf::new();
    arm.run(&["pull", "--platform", "linux/arm64", &image]).ok();
    assert_eq!(arm.inspect(&image)["Architecture"], "arm64");
    let r = arm
        .run(&["pull", "--platform", "linux/s390x", &image])
        .fails();
    assert!(
        r.stderr.contains("linux/s390x") && r.stderr.contains("linux/arm/v7"),
        "{}",
        r.stderr
    );

    // --all-platforms keeps the index; save and push give it back byte for byte.
    let all = Wharf::new();
    all.run(&["pull", "--all-platforms", &image]).ok();
    let v = all.inspect(&image);
    assert_eq!(v["Descriptor"]["digest"], index.as_str());
    assert_eq!(v["Architecture"], "amd64", "inspect shows the host's entry");
    let archive = all.dir().join("all.tar");
    all.run(&[
        "save",
        "--all-platforms",
        "-o",
        archive.to_str().unwrap(),
        &image,
    ])
    .ok();
    let raw = skopeo(&[
        "inspect",
        "--raw",
        &format!("oci-archive:{}", archive.display()),
    ])
    .ok();
    assert_eq!(
        format!("sha256:{}", sha256_hex(raw.stdout.as_bytes())),
        index
    );
    all.run(&["tag", &image, &format!("{a}/copy/bb:1")]).ok();
    all.run(&["push", &format!("{a}/copy/bb:1")]).ok();
    assert_eq!(skopeo_digest(&format!("{a}/copy/bb:1")), index);
    let loaded = Wharf::new();
    loaded
        .run(&["load", "--all-platforms", "-i", archive.to_str().unwrap()])
        .ok();
    assert_eq!(
        loaded.inspect(&image)["Descriptor"]["digest"],
        index.as_str()
    );

    // By digest: kept untagged, under its repository.
    let by_digest = Wharf::new();
    by_digest
        .run(&["pull", &format!("{a}/multi/bb@{index}")])
        .ok();
    let listed = by_digest.run(&["images", "--digests"]).ok().stdout;
    assert!(
        listed.contains(&format!("{a}/multi/bb")) && listed.contains("<none>"),
        "{listed}"
    );
    assert!(listed.contains(&index), "{listed}");
}
