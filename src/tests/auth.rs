//! `wharf serve` with authentication on, against the clients teams use: docker, podman,
//! skopeo, containerd's ctr and wharf itself (issue 13).

use std::path::Path;
use std::process::Command;

use crate::support::*;

/// An htpasswd file (written by apache2-utils' `htpasswd -B`, as users do) with these users.
fn htpasswd(dir: &Path, users: &[(&str, &str)]) -> std::path::PathBuf {
    let path = dir.join("htpasswd");
    let mut text = Vec::new();
    for (u, p) in users {
        let out = Command::new("htpasswd")
            .args(["-Bbn", u, p])
            .output()
            .unwrap();
        assert!(out.status.success());
        text.extend(out.stdout);
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// alice may do anything under `team/`, bob only pull there; everyone (anonymous too) may
/// pull `public/`, where alice may push.
const RULES: &str = r#"
[[auth.rules]]
repos = ["team/*"]
users = ["alice"]
actions = ["*"]

[[auth.rules]]
repos = ["team/*"]
groups = ["readers"]
actions = ["pull"]

[[auth.rules]]
repos = ["public/*"]
users = ["anonymous", "*"]
actions = ["pull"]

[[auth.rules]]
repos = ["public/*"]
users = ["alice"]
actions = ["push"]

[auth.groups]
readers = ["bob"]
"#;

fn serve_with_auth(dir: &Path, mode: &str) -> WharfServe {
    let users = htpasswd(dir, &[("alice", "wonder"), ("bob", "builder")]);
    let config = dir.join("registry.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nmode = \"{mode}\"\nhtpasswd = \"{}\"\n{RULES}",
            users.display()
        ),
    )
    .unwrap();
    WharfServe::start_with(&["--config", config.to_str().unwrap()])
}

fn docker_as(d: &Dockerd, config: &Path, args: &[&str]) -> Run {
    let out = d
        .command(args)
        .env("DOCKER_CONFIG", config)
        .output()
        .expect("running docker");
    run_output(out)
}

#[test]
fn issue_13_token_auth_for_docker_podman_skopeo_ctr_and_wharf() {
    if !require("htpasswd") || !require("skopeo") || !require("ctr") || !have_busybox() {
        return;
    }
    let Some(d) = Dockerd::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let serve = serve_with_auth(dir.path(), "token");
    let a = &serve.addr;

    // /v2/ challenges a client without credentials, naming the token service.
    let (status, head, _) = http(a, "GET", "/v2/", &[], b"");
    assert_eq!(status, 401);
    let challenge = header(&head, "www-authenticate").unwrap_or_default();
    assert!(
        challenge.contains(&format!("bearer realm=\"http://{a}/token\"")),
        "{challenge}"
    );

    // skopeo: refused without credentials, wrong ones, or the wrong user; pushes as alice.
    let src = format!("oci:{}:latest", busybox_layout().display());
    let team = format!("{a}/team/bb:1");
    let push = |creds: Option<&str>, dest: &str| {
        let mut args = vec!["copy", "--dest-tls-verify=false"];
        if let Some(c) = creds {
            args.extend(["--dest-creds", c]);
        }
        let dest = format!("docker://{dest}");
        args.extend([src.as_str(), dest.as_str()]);
        let out = Command::new("skopeo").args(&args).output().unwrap();
        run_output(out)
    };
    let r = push(None, &team).fails();
    assert!(r.stderr.contains("authentication required"), "{}", r.stderr);
    let r = push(Some("alice:nope"), &team).fails();
    assert!(r.stderr.contains("unauthorized"), "{}", r.stderr);
    let r = push(Some("bob:builder"), &team).fails();
    assert!(
        r.stderr.contains("denied") || r.stderr.contains("403"),
        "{}",
        r.stderr
    );
    push(Some("alice:wonder"), &team).ok();
    push(Some("alice:wonder"), &format!("{a}/public/bb:1")).ok();

    // docker: login keeps a refresh token; pull, tag and push as alice; bob may pull only.
    let alice = dir.path().join("docker-alice");
    let bob = dir.path().join("docker-bob");
    let bad = docker_as(&d, &alice, &["login", "-u", "alice", "-p", "nope", a]).fails();
    assert!(bad.stderr.contains("unauthorized"), "{}", bad.stderr);
    let ok = docker_as(&d, &alice, &["login", "-u", "alice", "-p", "wonder", a]).ok();
    assert!(ok.stdout.contains("Login Succeeded"), "{}", ok.stdout);
    let kept = std::fs::read_to_string(alice.join("config.json")).unwrap();
    assert!(kept.contains(a.as_str()), "{kept}");
    docker_as(&d, &alice, &["pull", &team]).ok();
    docker_as(&d, &alice, &["tag", &team, &format!("{a}/team/bb:2")]).ok();
    docker_as(&d, &alice, &["push", &format!("{a}/team/bb:2")]).ok();
    docker_as(&d, &bob, &["login", "-u", "bob", "-p", "builder", a]).ok();
    docker_as(&d, &bob, &["rmi", &team, &format!("{a}/team/bb:2")]).ok();
    docker_as(&d, &bob, &["pull", &format!("{a}/team/bb:2")]).ok();
    docker_as(
        &d,
        &bob,
        &[
            "tag",
            &format!("{a}/team/bb:2"),
            &format!("{a}/team/bb:bob"),
        ],
    )
    .ok();
    let denied = docker_as(&d, &bob, &["push", &format!("{a}/team/bb:bob")]).fails();
    assert!(denied.stderr.contains("denied"), "{}", denied.stderr);
    // Anonymous docker pulls a public repository, and not a team one.
    let nobody = dir.path().join("docker-nobody");
    docker_as(&d, &nobody, &["pull", &format!("{a}/public/bb:1")]).ok();
    // (docker asks the registry even for an image it has.)
    let r = docker_as(&d, &nobody, &["pull", &team]).fails();
    assert!(
        r.stderr.contains("unauthorized") || r.stderr.contains("authentication required"),
        "{}",
        r.stderr
    );

    // docker search shows each caller what it may pull.
    let search = |config: &Path| {
        let r = docker_as(
            &d,
            config,
            &["search", "--format", "{{.Name}}", &format!("{a}/bb")],
        )
        .ok();
        let mut names: Vec<String> = r.stdout.lines().map(str::to_owned).collect();
        names.sort();
        names
    };
    assert_eq!(search(&alice), ["public/bb", "team/bb"]);
    assert_eq!(search(&nobody), ["public/bb"]);

    // podman logs in and pulls.
    let pod = tempfile::tempdir().unwrap();
    let auth_file = pod.path().join("auth.json");
    let af = auth_file.to_str().unwrap();
    let r = podman(
        pod.path(),
        &[
            "login",
            "--tls-verify=false",
            "--authfile",
            af,
            "-u",
            "bob",
            "-p",
            "builder",
            a,
        ],
    )
    .ok();
    assert!(r.stdout.contains("Login Succeeded"), "{}", r.stdout);
    podman(
        pod.path(),
        &["pull", "--tls-verify=false", "--authfile", af, &team],
    )
    .ok();

    // containerd's ctr, with --user, against the daemon's own containerd.
    let ctr = Command::new("ctr")
        .args(["--address", &d.containerd_socket(), "-n", "wharf-test"])
        .args([
            "images",
            "pull",
            "--plain-http",
            "--user",
            "bob:builder",
            &team,
        ])
        .output()
        .unwrap();
    run_output(ctr).ok();

    // wharf: login, pull, push; the refusal names the registry.
    let w = Wharf::new();
    let r = w
        .run_stdin(&["login", "-u", "bob", "--password-stdin", a], b"nope\n")
        .fails();
    assert!(r.stderr.contains(a.as_str()), "{}", r.stderr);
    w.run_stdin(
        &["login", "-u", "alice", "--password-stdin", a],
        b"wonder\n",
    )
    .ok();
    w.run(&["pull", &team]).ok();
    w.run(&["tag", &team, &format!("{a}/team/from-wharf:1")])
        .ok();
    w.run(&["push", &format!("{a}/team/from-wharf:1")]).ok();
    // wharf search asks as the user logged in, and anonymously without a login.
    let found = |w: &Wharf| {
        let r = w
            .run(&["search", "--format", "json", &format!("{a}/bb")])
            .ok();
        let mut names: Vec<String> = r
            .stdout
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["Name"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        names.sort();
        names
    };
    assert_eq!(found(&w), ["public/bb", "team/bb"]);
    assert_eq!(found(&Wharf::new()), ["public/bb"]);

    // Every failed login left an audit line naming the user and where it came from.
    let log = serve.log();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("wharf::audit") && l.contains("login failed"))
        .collect();
    assert!(failed.len() >= 3, "{log}");
    assert!(
        failed
            .iter()
            .any(|l| l.contains("alice") && l.contains("127.0.0.1")),
        "{failed:?}"
    );
    let pushed = log
        .lines()
        .find(|l| l.contains("wharf::audit") && l.contains("team/from-wharf"))
        .unwrap_or_default();
    assert!(pushed.contains("alice"), "{log}");
}

#[test]
fn issue_13_basic_mode_for_clients_that_send_credentials_every_time() {
    if !require("htpasswd") || !require("skopeo") || !have_busybox() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let serve = serve_with_auth(dir.path(), "basic");
    let a = &serve.addr;
    let (status, head, _) = http(a, "GET", "/v2/", &[], b"");
    assert_eq!(status, 401);
    assert_eq!(
        header(&head, "www-authenticate").map(str::trim),
        Some("basic realm=\"wharf\"")
    );
    let src = format!("oci:{}:latest", busybox_layout().display());
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "alice:wonder",
        &src,
        &format!("docker://{a}/team/bb:1"),
    ])
    .ok();
    let r = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--creds", "bob:wrong"])
        .arg(format!("docker://{a}/team/bb:1"))
        .output()
        .unwrap();
    let r = run_output(r).fails();
    assert!(r.stderr.contains("unauthorized"), "{}", r.stderr);
    let w = Wharf::new();
    w.run_stdin(&["login", "-u", "bob", "--password-stdin", a], b"builder\n")
        .ok();
    w.run(&["pull", &format!("{a}/team/bb:1")]).ok();
    w.run(&["tag", &format!("{a}/team/bb:1"), &format!("{a}/team/bb:2")])
        .ok();
    let r = w.run(&["push", &format!("{a}/team/bb:2")]).fails();
    assert!(r.stderr.contains("denied"), "{}", r.stderr);
    assert!(
        !serve.root.join("auth").exists(),
        "basic mode keeps no token key"
    );
}
