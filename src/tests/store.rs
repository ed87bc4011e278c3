//! The local store's names: tag, images, rmi with docker's rules, import, history.

use crate::support::*;

#[test]
fn issue_2_rmi_follows_docker_rules() {
    if !have_busybox() {
        return;
    }
    let w = Wharf::new();
    w.load_busybox();
    let id = w.inspect("busybox")["Id"].as_str().unwrap().to_owned();
    let short = &id["sha256:".len().."sha256:".len() + 12];
    w.run(&["tag", "busybox", "busybox:other"]).ok();
    w.run(&["tag", "busybox", "example.com/mirror/busybox:1"])
        .ok();
    let listed = w.run(&["images"]).ok().stdout;
    assert_eq!(listed.lines().count(), 4, "{listed}");

    // By name: only untagged while other names remain.
    let r = w.run(&["rmi", "busybox:other"]).ok();
    assert_eq!(r.stdout.trim(), "Untagged: busybox:other");
    // By id with names in two repositories: refused without -f.
    let r = w.run(&["rmi", short]).fails();
    assert!(
        r.stderr.contains("must be forced") && r.stderr.contains(short),
        "{}",
        r.stderr
    );
    let blobs_before = w.store_files().len();
    assert!(blobs_before >= 3);
    let r = w.run(&["rmi", "-f", short]).ok();
    assert!(
        r.stdout.contains("Untagged: busybox:latest"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("Untagged: example.com/mirror/busybox:1"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains(&format!("Deleted: {id}")), "{}", r.stdout);
    assert_eq!(w.run(&["images", "-q"]).ok().stdout, "");
    assert_eq!(
        w.store_files(),
        Vec::<String>::new(),
        "blobs are collected with the image"
    );

    // The last name of an image takes the image with it; a missing one is an error.
    w.load_busybox();
    let r = w.run(&["rmi", "busybox"]).ok();
    assert!(r.stdout.contains("Deleted:"), "{}", r.stdout);
    let r = w.run(&["rmi", "busybox"]).fails();
    assert!(r.stderr.contains("no such image: busybox"), "{}", r.stderr);
}

#[test]
fn issue_2_import_applies_changes_and_history() {
    if !have_busybox() {
        return;
    }
    let rootfs = busybox_layout().parent().unwrap().join("rootfs.tar");
    let import = |w: &Wharf| {
        w.cmd()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args([
                "import",
                rootfs.to_str().unwrap(),
                "mine:1",
                "-m",
                "from a test",
            ])
            .args([
                "-c",
                "CMD [\"echo\", \"hi\"]",
                "-c",
                "ENV A=1 B=2",
                "-c",
                "EXPOSE 8080",
                "-c",
                "WORKDIR /srv",
            ])
            .args([
                "-c",
                "LABEL org.example=yes",
                "-c",
                "USER nobody",
                "-c",
                "VOLUME /data",
            ])
            .args(["-c", "ENTRYPOINT [\"/bin/sh\", \"-c\"]"])
            .output()
            .unwrap()
    };
    let w = Wharf::new();
    let r = import(&w);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let id = String::from_utf8_lossy(&r.stdout).trim().to_owned();
    let v = w.inspect("mine:1");
    assert_eq!(v["Id"], id.as_str());
    let c = &v["Config"];
    assert_eq!(c["Cmd"], serde_json::json!(["echo", "hi"]));
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(c["Env"], serde_json::json!(["A=1", "B=2"]));
    assert_eq!(c["ExposedPorts"], serde_json::json!({"8080/tcp": {}}));
    assert_eq!(c["WorkingDir"], "/srv");
    assert_eq!(c["User"], "nobody");
    assert_eq!(c["Labels"]["org.example"], "yes");
    assert_eq!(c["Volumes"], serde_json::json!({"/data": {}}));
    assert_eq!(v["Created"], "2023-11-14T22:13:20Z");
    // The layer is the tar, byte for byte: its diff id is the tar's sha256.
    let tar = std::fs::read(&rootfs).unwrap();
    assert_eq!(
        v["RootFS"]["Layers"][0],
        format!("sha256:{}", sha256_hex(&tar))
    );
    let h = w.run(&["history", "--format", "json", "mine:1"]).ok();
    let first: serde_json::Value = serde_json::from_str(h.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(first["Comment"], "from a test");
    assert_eq!(first["CreatedBy"], "wharf import");

    // The same input and time give the same image: imports are reproducible.
    let r2 = import(&Wharf::new());
    assert_eq!(String::from_utf8_lossy(&r2.stdout).trim(), id);

    let bad = w
        .run(&["import", rootfs.to_str().unwrap(), "x:1", "-c", "RUN true"])
        .fails();
    assert!(bad.stderr.contains("RUN true"), "{}", bad.stderr);
    let notar = w.dir().join("not.tar");
    std::fs::write(&notar, b"definitely not a tar archive").unwrap();
    let bad = w.run(&["import", notar.to_str().unwrap(), "x:1"]).fails();
    assert!(bad.stderr.contains("not.tar"), "{}", bad.stderr);
}

#[test]
fn issue_2_images_and_history_output() {
    if !have_busybox() {
        return;
    }
    let w = Wharf::new();
    w.load_busybox();
    let table = w.run(&["images"]).ok().stdout;
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("REPOSITORY   TAG      IMAGE ID       CREATED"),
        "{header}"
    );
    assert!(
        lines.next().unwrap().starts_with("busybox      latest   "),
        "{table}"
    );
    let json = w.run(&["images", "--format", "json"]).ok().stdout;
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["Repository"], "busybox");
    assert_eq!(v["Tag"], "latest");
    assert_eq!(v["ID"].as_str().unwrap().len(), 12);
    let q = w.run(&["images", "-q", "--no-trunc"]).ok().stdout;
    assert!(q.trim().starts_with("sha256:"), "{q}");
    let h = w.run(&["history", "busybox"]).ok().stdout;
    assert!(h.starts_with("IMAGE"), "{h}");
    assert!(h.contains("wharf import"), "{h}");
}

#[test]
fn issue_11_image_size_is_what_the_layers_unpack_to() {
    let w = Wharf::new();
    let ctx = tempfile::tempdir().unwrap();
    // Half compressible, half not: gzip changes the blob's size a lot, not the content's.
    let mut data = vec![b'a'; 200_000];
    data.extend((0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    std::fs::write(ctx.path().join("data"), &data).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY data /data\n",
    )
    .unwrap();
    let dir = ctx.path().to_str().unwrap();
    w.run(&["build", "-q", "-t", "gz:1", dir]).ok();
    w.run(&[
        "build",
        "-q",
        "--no-cache",
        "--compression",
        "uncompressed",
        "-t",
        "plain:1",
        dir,
    ])
    .ok();
    let listed = w.run(&["images", "--format", "json"]).ok().stdout;
    let sizes: Vec<(String, u64)> = listed
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["Repository"].as_str().unwrap_or_default().to_owned(),
                v["SizeBytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(sizes.len(), 2, "{listed}");
    assert_eq!(sizes[0].1, sizes[1].1, "{sizes:?}");
    // docker's size: the layer's tar, a little over the file it holds.
    assert!(sizes[0].1 > 400_000 && sizes[0].1 < 420_000, "{sizes:?}");
    let inspected = w.inspect("gz:1")["Size"].as_u64().unwrap();
    assert_eq!(inspected, sizes[0].1);
}
