//! save and load against docker and skopeo, and archives that are damaged.

use std::io::Write;

use crate::support::*;

fn config_and_layers(w: &Wharf, image: &str) -> (String, Vec<String>) {
    let v = w.inspect(image);
    let layers = v["RootFS"]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect();
    (v["Id"].as_str().unwrap().to_owned(), layers)
}

#[test]
fn issue_2_save_is_read_by_docker_load_and_skopeo() {
    if !require("skopeo") || !have_busybox() {
        return;
    }
    let w = Wharf::new();
    w.load_busybox();
    w.run(&["tag", "busybox", "example.com/team/app:2"]).ok();
    let (id, diff_ids) = config_and_layers(&w, "busybox");
    let archive = w.dir().join("saved.tar");
    w.run(&[
        "save",
        "-o",
        archive.to_str().unwrap(),
        "busybox",
        "example.com/team/app:2",
    ])
    .ok();

    let sk = skopeo(&[
        "inspect",
        &format!("docker-archive:{}:busybox:latest", archive.display()),
    ])
    .ok();
    let v: serde_json::Value = serde_json::from_str(&sk.stdout).unwrap();
    let sk_layers: Vec<String> = v["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        sk_layers, diff_ids,
        "skopeo reads the layers as docker would"
    );
    let raw = skopeo(&[
        "inspect",
        "--config",
        "--raw",
        &format!("docker-archive:{}:busybox:latest", archive.display()),
    ])
    .ok();
    assert_eq!(format!("sha256:{}", sha256_hex(raw.stdout.as_bytes())), id);

    // Saving to stdout gives the same bytes as saving to a file.
    let mut child = w
        .cmd()
        .args(["save", "busybox", "example.com/team/app:2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut piped = Vec::new();
    std::io::Read::read_to_end(child.stdout.as_mut().unwrap(), &mut piped).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(piped, std::fs::read(&archive).unwrap());

    let Some(docker) = Dockerd::start() else {
        return;
    };
    let loaded = docker
        .docker(&["load", "-i", archive.to_str().unwrap()])
        .ok();
    assert!(
        loaded.stdout.contains("Loaded image: busybox:latest"),
        "{}",
        loaded.stdout
    );
    assert!(
        loaded
            .stdout
            .contains("Loaded image: example.com/team/app:2"),
        "{}",
        loaded.stdout
    );
    let docker_id = docker
        .docker(&["image", "inspect", "--format", "{{.Id}}", "busybox:latest"])
        .ok();
    assert_eq!(docker_id.stdout.trim(), id);
    let run = docker
        .docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            "example.com/team/app:2",
            "echo",
            "ok",
        ])
        .ok();
    assert_eq!(run.stdout.trim(), "ok");

    // And the other way round: docker save → wharf load, same config and layers.
    let docker_archive = w.dir().join("docker-save.tar");
    docker
        .docker(&[
            "save",
            "-o",
            docker_archive.to_str().unwrap(),
            "example.com/team/app:2",
        ])
        .ok();
    let w2 = Wharf::new();
    let out = w2
        .run(&["load", "-i", docker_archive.to_str().unwrap()])
        .ok();
    assert_eq!(out.stdout.trim(), "Loaded image: example.com/team/app:2");
    assert_eq!(
        config_and_layers(&w2, "example.com/team/app:2"),
        (id.clone(), diff_ids.clone())
    );
}

#[test]
fn issue_2_loads_skopeo_oci_archives_and_compressed_streams() {
    if !require("skopeo") || !require("zstd") || !have_busybox() {
        return;
    }
    let w = Wharf::new();
    w.load_busybox();
    let (id, layers) = config_and_layers(&w, "busybox");
    let oci = w.dir().join("oci.tar");
    skopeo(&[
        "copy",
        &format!("oci:{}:latest", busybox_layout().display()),
        &format!("oci-archive:{}:example.org/oci/busybox:3", oci.display()),
    ])
    .ok();
    let w2 = Wharf::new();
    let out = w2.run(&["load", "-i", oci.to_str().unwrap()]).ok();
    assert_eq!(out.stdout.trim(), "Loaded image: example.org/oci/busybox:3");
    assert_eq!(
        config_and_layers(&w2, "example.org/oci/busybox:3"),
        (id.clone(), layers.clone())
    );

    // docker-archive written by skopeo (layers decompressed), fed through stdin with zstd.
    let da = w.dir().join("da.tar");
    skopeo(&[
        "copy",
        &format!("oci:{}:latest", busybox_layout().display()),
        &format!("docker-archive:{}:busybox:zst", da.display()),
    ])
    .ok();
    let compressed = std::process::Command::new("zstd")
        .args(["-q", "-c"])
        .arg(&da)
        .output()
        .unwrap()
        .stdout;
    let w3 = Wharf::new();
    let out = w3.run_stdin(&["load"], &compressed).ok();
    assert_eq!(out.stdout.trim(), "Loaded image: busybox:zst");
    assert_eq!(
        config_and_layers(&w3, "busybox:zst"),
        (id.clone(), layers.clone())
    );

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&std::fs::read(&da).unwrap()).unwrap();
    let w4 = Wharf::new();
    w4.run_stdin(&["load", "-q"], &gz.finish().unwrap()).ok();
    assert_eq!(config_and_layers(&w4, "busybox:zst"), (id, layers));
}

#[test]
fn issue_2_damaged_archives_fail_clearly_and_change_nothing() {
    if !have_busybox() {
        return;
    }
    let w = Wharf::new();
    w.load_busybox();
    let archive = w.dir().join("good.tar");
    w.run(&["save", "-o", archive.to_str().unwrap(), "busybox"])
        .ok();
    let good = std::fs::read(&archive).unwrap();
    let target = Wharf::new();
    target
        .run(&[
            "import",
            busybox_layout()
                .parent()
                .unwrap()
                .join("rootfs.tar")
                .to_str()
                .unwrap(),
            "other:1",
        ])
        .ok();
    let before = (
        target.store_files(),
        target.run(&["images", "--format", "json"]).ok().stdout,
    );

    // Cut in the middle of the layer.
    let truncated = &good[..good.len() / 2];
    let r = target.run_stdin(&["load"], truncated).fails();
    assert!(r.stderr.contains("corrupt or truncated"), "{}", r.stderr);

    // One byte of a blob changed: the member no longer matches its name.
    let mut flipped = good.clone();
    let at = good.len() / 3;
    flipped[at] ^= 0x55;
    let r = target.run_stdin(&["load"], &flipped).fails();
    assert!(
        r.stderr.contains("does not match its digest") || r.stderr.contains("corrupt"),
        "{}",
        r.stderr
    );

    // Not an archive at all.
    let r = target
        .run_stdin(&["load"], b"this is not a tar file, it is a sentence\n")
        .fails();
    assert!(r.stderr.contains("error:"), "{}", r.stderr);

    // A tar without image metadata.
    let r = target
        .run_stdin(&["load"], &crate::layout::tar_of(&[("hello.txt", b"hi")]))
        .fails();
    assert!(r.stderr.contains("not an image archive"), "{}", r.stderr);

    // A missing file.
    let r = target
        .run(&["load", "-i", "/nonexistent/archive.tar"])
        .fails();
    assert!(
        r.stderr.contains("/nonexistent/archive.tar"),
        "{}",
        r.stderr
    );

    let after = (
        target.store_files(),
        target.run(&["images", "--format", "json"]).ok().stdout,
    );
    assert_eq!(before, after, "a failed load leaves the store as it was");
}
