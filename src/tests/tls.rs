//! Issue 11: registries over TLS and plain HTTP, reached as docker reaches them: loopback and
//! insecure registries HTTPS first (any certificate) then plain HTTP; others over HTTPS only,
//! with docker's and podman's certs.d, --ca-cert or --tls-verify=false.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// A CA, and a server certificate it signed for `ip`, 127.0.0.1 and localhost: (CA
/// certificate, server certificate, server key).
fn certificates(dir: &Path, ip: &str) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("running openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=wharf test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "req.csr",
        "-subj",
        "/CN=registry",
    ]);
    std::fs::write(
        dir.join("ext"),
        format!(
            "subjectAltName=IP:{ip},IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        ),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "req.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    (
        dir.join("ca.crt"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

/// `wharf serve` inside `ns` on port `port`, with extra flags; killed when dropped.
struct ServeIn(std::process::Child, #[allow(dead_code)] tempfile::TempDir);

impl ServeIn {
    fn start(ns: &Netns, port: u16, flags: &[&str]) -> ServeIn {
        let dir = tempfile::tempdir().unwrap();
        let child = ns
            .command(WHARF)
            .args(["serve", "--addr", &format!("{}:{port}", ns.addr), "--root"])
            .arg(dir.path().join("data"))
            .args(flags)
            .env_remove("WHARF_ROOT")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(&format!("{}:{port}", ns.addr));
        ServeIn(child, dir)
    }
}

impl Drop for ServeIn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn issue_11_registries_over_tls_and_plain_http() {
    if !require_root() || !have_busybox() || !require("openssl") || !require("ip") {
        return;
    }
    let ns = Netns::new();
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(tmp.path(), &ns.addr);
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let w = Wharf::new();
    w.load_busybox();

    // On localhost, a TLS registry is used over HTTPS (whatever its certificate), as docker
    // tries HTTPS first; a plain one over HTTP.
    let local_tls = WharfServe::start_with(&["--tls-cert", cert, "--tls-key", key]);
    let port = local_tls.addr.rsplit(':').next().unwrap().to_owned();
    let image = format!("localhost:{port}/tls/app:1");
    w.run(&["tag", "busybox", &image]).ok();
    w.run(&["push", &image]).ok();
    w.run(&["rmi", &image]).ok();
    w.run(&["pull", &image]).ok();

    // Elsewhere, HTTPS only, and the certificate must be trusted.
    let remote = ServeIn::start(&ns, 5000, &["--tls-cert", cert, "--tls-key", key]);
    let image = format!("{}:5000/tls/app:1", ns.addr);
    w.run(&["tag", "busybox", &image]).ok();
    let r = w.run(&["push", &image]).fails();
    assert!(
        r.stderr.to_lowercase().contains("certificate"),
        "{}",
        r.stderr
    );
    // Trusted through docker's certs.d (here $DOCKER_CONFIG's), --ca-cert, or not checked.
    let certs_d = w
        .docker_config
        .join("certs.d")
        .join(format!("{}:5000", ns.addr));
    std::fs::create_dir_all(&certs_d).unwrap();
    std::fs::copy(&ca, certs_d.join("ca.crt")).unwrap();
    w.run(&["push", &image]).ok();
    std::fs::remove_dir_all(w.docker_config.join("certs.d")).unwrap();
    w.run(&["push", "--ca-cert", ca.to_str().unwrap(), &image])
        .ok();
    w.run(&["push", "--tls-verify=false", &image]).ok();
    drop(remote);

    // A plain-HTTP registry elsewhere: docker's message, and the way out.
    let _plain = ServeIn::start(&ns, 5001, &[]);
    let image = format!("{}:5001/plain/app:1", ns.addr);
    w.run(&["tag", "busybox", &image]).ok();
    let r = w.run(&["push", &image]).fails();
    assert!(
        r.stderr
            .contains("server gave HTTP response to HTTPS client")
            && r.stderr
                .contains(&format!("--insecure-registry {}:5001", ns.addr)),
        "{}",
        r.stderr
    );
    w.run(&[
        "push",
        "--insecure-registry",
        &format!("{}:5001", ns.addr),
        &image,
    ])
    .ok();
}
