//! Authentication and authorization of `wharf serve` over HTTP: rules, filtered listings,
//! mounts, the token service's grants, refresh tokens, throttling, and trusting an external
//! token server (issue 13). The real clients (docker, podman, skopeo, ctr, wharf) are in the
//! CLI's tests; the conformance suite runs with credentials in `tests/spec`.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use wharf_registry::config::{AccessRule, AuthConfig};

mod support;
use support::{Reg, basic};

fn rule(repos: &[&str], users: &[&str], groups: &[&str], actions: &[&str]) -> AccessRule {
    let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect();
    AccessRule {
        repos: v(repos),
        users: v(users),
        groups: v(groups),
        actions: v(actions),
    }
}

fn write_users(path: &Path, users: &[(&str, &str)]) {
    let text: String = users
        .iter()
        .map(|(u, p)| format!("{u}:{}\n", bcrypt::hash(p, 4).unwrap()))
        .collect();
    std::fs::write(path, text).unwrap();
}

/// alice: everything in `team/*`, push in `public/*`; bob (group readers): pull in `team/*`;
/// carol: everything in `carol/*`; everyone, anonymous included: pull in `public/*`.
fn start(set: impl FnOnce(&mut AuthConfig, &Path)) -> Reg {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("htpasswd");
    write_users(
        &users,
        &[("alice", "wonder"), ("bob", "builder"), ("carol", "c")],
    );
    let mut auth = AuthConfig {
        htpasswd: Some(users),
        groups: [("readers".to_owned(), vec!["bob".to_owned()])].into(),
        rules: vec![
            rule(&["team/*"], &["alice"], &[], &["*"]),
            rule(&["team/*"], &[], &["readers"], &["pull"]),
            rule(&["carol/*"], &["carol"], &[], &["*"]),
            rule(&["public/*"], &["anonymous", "*"], &[], &["pull"]),
            rule(&["public/*"], &["alice"], &[], &["push"]),
        ],
        ..AuthConfig::default()
    };
    set(&mut auth, dir.path());
    Reg::start(dir, |c| c.auth = Some(auth))
}

#[tokio::test]
async fn rules_decide_what_each_caller_may_do_and_see() {
    let reg = start(|_, _| {});
    let alice = basic("alice", "wonder");
    let layer = reg.push("team/app", "1", &alice).await;
    reg.push("public/tool", "1", &alice).await;
    reg.push("carol/own", "1", &basic("carol", "c")).await;

    // Anonymous: challenged for what it asked, with the scope to ask the token service for.
    let a = reg.get("/v2/team/app/tags/list", None).await;
    assert_eq!((a.status.as_u16(), a.code()), (401, "UNAUTHORIZED"));
    assert!(
        a.challenge().contains("scope=\"repository:team/app:pull\""),
        "{}",
        a.challenge()
    );
    // ... and public repositories are open to it, through a token or without one.
    assert_eq!(reg.get("/v2/public/tool/tags/list", None).await.status, 200);
    let (anon, _) = reg.token(None, &["repository:public/tool:pull"]).await;
    let a = reg.get("/v2/public/tool/manifests/1", Some(&anon)).await;
    assert_eq!(a.status, 200);

    // bob asks for push and is granted only pull; pushing with it is denied outright.
    let (bob, answer) = reg
        .token(Some(("bob", "builder")), &["repository:team/app:pull,push"])
        .await;
    assert_eq!(answer["scope"], "repository:team/app:pull");
    assert_eq!(
        reg.get("/v2/team/app/tags/list", Some(&bob)).await.status,
        200
    );
    let a = reg
        .send(
            Method::POST,
            "/v2/team/app/blobs/uploads/",
            Some(&bob),
            None,
            Vec::new(),
        )
        .await;
    assert_eq!((a.status.as_u16(), a.code()), (403, "DENIED"));
    // alice with a pull-only token is told to get a better one.
    let (alice_pull, _) = reg
        .token(Some(("alice", "wonder")), &["repository:team/app:pull"])
        .await;
    let a = reg
        .send(
            Method::POST,
            "/v2/team/app/blobs/uploads/",
            Some(&alice_pull),
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(a.status, 401);
    assert!(
        a.challenge().contains("error=\"insufficient_scope\""),
        "{}",
        a.challenge()
    );
    // Basic credentials the rules refuse: 403. Delete is a permission of its own.
    let a = reg
        .send(
            Method::DELETE,
            "/v2/team/app/manifests/1",
            Some(&basic("bob", "builder")),
            None,
            Vec::new(),
        )
        .await;
    assert_eq!((a.status.as_u16(), a.code()), (403, "DENIED"));

    // The catalog shows each caller what it may pull.
    let catalog = |auth: Option<String>| {
        let reg = &reg;
        async move {
            let a = reg.get("/v2/_catalog", auth.as_deref()).await;
            assert_eq!(a.status, 200, "{}", a.body);
            a.body["repositories"].clone()
        }
    };
    assert_eq!(
        catalog(Some(alice.clone())).await,
        json!(["public/tool", "team/app"])
    );
    assert_eq!(
        catalog(Some(basic("carol", "c"))).await,
        json!(["carol/own", "public/tool"])
    );
    assert_eq!(catalog(None).await, json!(["public/tool"]));
    let (bob_catalog, _) = reg
        .token(Some(("bob", "builder")), &["registry:catalog:*"])
        .await;
    assert_eq!(
        catalog(Some(bob_catalog)).await,
        json!(["public/tool", "team/app"])
    );
    // A token without the catalog scope is sent for one.
    let a = reg.get("/v2/_catalog", Some(&bob)).await;
    assert_eq!(a.status, 401);
    assert!(
        a.challenge().contains("registry:catalog:*"),
        "{}",
        a.challenge()
    );
    // So does search.
    let names = |v: &Value| -> Vec<String> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let a = reg.get("/v1/search?q=o", None).await;
    assert_eq!(names(&a.body), ["public/tool"]);
    assert_eq!(a.body["num_results"], 1);
    let a = reg.get("/v1/search?q=o", Some(&basic("carol", "c"))).await;
    assert_eq!(names(&a.body), ["carol/own", "public/tool"]);

    // Mounts link only from what the caller may pull; otherwise an upload starts (202).
    let (carol, _) = reg
        .token(
            Some(("carol", "c")),
            &["repository:carol/x:pull,push", "repository:team/app:pull"],
        )
        .await;
    for query in [
        format!("mount={layer}&from=team/app"),
        format!("mount={layer}"),
    ] {
        let a = reg
            .send(
                Method::POST,
                &format!("/v2/carol/x/blobs/uploads/?{query}"),
                Some(&carol),
                None,
                Vec::new(),
            )
            .await;
        assert_eq!(a.status, 202, "{query}: {}", a.body);
    }
    let a = reg
        .get(&format!("/v2/carol/x/blobs/{layer}"), Some(&carol))
        .await;
    assert_eq!(a.status, 404, "carol got team's blob");
    let a = reg
        .send(
            Method::POST,
            &format!("/v2/public/copy/blobs/uploads/?mount={layer}&from=team/app"),
            Some(&alice),
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    // Without `from`, a mount finds a repository alice may pull.
    let a = reg
        .send(
            Method::POST,
            &format!("/v2/public/copy2/blobs/uploads/?mount={layer}"),
            Some(&alice),
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
}

#[tokio::test]
async fn challenges_carry_only_what_the_grammar_allows() {
    let reg = start(|_, _| {});
    let layer = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    let a = reg
        .send(
            Method::POST,
            &format!(
                "/v2/team/x/blobs/uploads/?mount={layer}&from=x%22,realm=%22https://evil/token"
            ),
            None,
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(a.status, 401);
    let c = a.challenge();
    assert!(
        !c.contains("evil") && c.matches("realm=").count() == 1,
        "{c}"
    );
    // A Host that is not a host name does not become the realm.
    let r = reg
        .http
        .get(format!("{}/v2/", reg.base))
        .header("Host", "a\",realm=\"https://evil")
        .send()
        .await
        .unwrap();
    let c = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(!c.contains("evil"), "{c}");
}

#[tokio::test]
async fn refresh_tokens_follow_the_password() {
    let reg = start(|_, _| {});
    let form = |pairs: &[(&str, &str)]| -> Vec<u8> {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
            .into_bytes()
    };
    let post = |pairs: Vec<u8>| {
        let reg = &reg;
        async move {
            reg.send(
                Method::POST,
                "/token",
                None,
                Some("application/x-www-form-urlencoded"),
                pairs,
            )
            .await
        }
    };
    let a = post(form(&[
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", "wonder"),
        ("service", "wharf"),
        ("client_id", "docker"),
        ("access_type", "offline"),
        ("scope", "repository:team/app:pull,push"),
    ]))
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let refresh = a.body["refresh_token"].as_str().unwrap().to_owned();
    let access = format!("Bearer {}", a.body["access_token"].as_str().unwrap());
    // The refresh token itself is no access token.
    let a = reg.get("/v2/", Some(&format!("Bearer {refresh}"))).await;
    assert_eq!(a.status, 401);
    assert!(a.challenge().contains("invalid_token"), "{}", a.challenge());
    assert_eq!(reg.get("/v2/", Some(&access)).await.status, 200);
    // docker's second step: the refresh grant, for the scope it needs now.
    let a = post(form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh),
        ("service", "wharf"),
        ("client_id", "docker"),
        ("scope", "repository:team/app:pull"),
    ]))
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["scope"], "repository:team/app:pull");
    // A tampered token is refused.
    let t = a.body["access_token"].as_str().unwrap();
    // One character in the middle of the signature.
    let at = t.len() - 20;
    let swapped = if &t[at..=at] == "A" { "B" } else { "A" };
    let t = format!("{}{swapped}{}", &t[..at], &t[at + 1..]);
    let a = reg.get("/v2/", Some(&format!("Bearer {t}"))).await;
    assert_eq!(a.status, 401);
    // A new password ends the refresh token.
    write_users(
        &reg.dir.path().join("htpasswd"),
        &[("alice", "changed"), ("bob", "builder"), ("carol", "c")],
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = post(form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh),
        ("service", "wharf"),
    ]))
    .await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(a.body["error"], "invalid_grant");
    let a = post(form(&[
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", "wonder"),
    ]))
    .await;
    assert_eq!(a.status, 401);
}

#[tokio::test]
async fn failed_logins_are_throttled() {
    let reg = start(|_, _| {});
    for _ in 0..5 {
        let a = reg.get("/v2/", Some(&basic("alice", "guess"))).await;
        assert_eq!(a.status, 401);
    }
    // Even the right password waits now, and so does the token endpoint.
    let a = reg.get("/v2/", Some(&basic("alice", "wonder"))).await;
    assert_eq!((a.status.as_u16(), a.code()), (429, "TOOMANYREQUESTS"));
    assert!(a.headers.contains_key("retry-after"));
    let a = reg
        .get("/token?service=wharf", Some(&basic("alice", "wonder")))
        .await;
    assert_eq!(a.status, 429);
}

/// A key and a self-signed certificate for it, made by openssl as an operator would.
fn key_and_cert(
    dir: &Path,
    name: &str,
    algorithm: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.crt"));
    let ok = Command::new("openssl")
        .arg("genpkey")
        .args(algorithm)
        .arg("-out")
        .arg(&key)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let ok = Command::new("openssl")
        .args(["req", "-new", "-x509", "-days", "2", "-subj", "/CN=token"])
        .arg("-key")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    (key, cert)
}

#[tokio::test]
async fn an_external_token_server_is_trusted_by_its_certificates() {
    if !wharf_testkit::require("openssl") {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let (ec_key, ec_cert) = key_and_cert(
        keys.path(),
        "ec",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let (rsa_key, rsa_cert) = key_and_cert(
        keys.path(),
        "rsa",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let bundle = keys.path().join("bundle.pem");
    let text =
        std::fs::read_to_string(&ec_cert).unwrap() + &std::fs::read_to_string(&rsa_cert).unwrap();
    std::fs::write(&bundle, text).unwrap();
    let reg = start(|a, _| {
        a.htpasswd = None;
        a.trust_certificates = Some(bundle.clone());
        a.realm = Some("https://auth.example.com/token".into());
        a.issuer = "corp-auth".into();
        a.service = "registry.example.com".into();
    });
    // The registry challenges with the external realm and serves no /token itself.
    let a = reg.get("/v2/", None).await;
    assert!(
        a.challenge()
            .contains("realm=\"https://auth.example.com/token\",service=\"registry.example.com\""),
        "{}",
        a.challenge()
    );
    assert_eq!(reg.get("/token", None).await.status, 404);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = |iss: &str| {
        json!({
            "iss": iss, "sub": "dave", "aud": "registry.example.com",
            "exp": now + 300, "nbf": now - 1, "iat": now,
            "access": [{"type": "repository", "name": "anything/app", "actions": ["pull", "push"]}],
        })
    };
    for key in [&ec_key, &rsa_key] {
        let signer = wharf_registry::auth::jwt::Signer::load_or_generate(key, false).unwrap();
        let token = format!("Bearer {}", signer.sign(&claims("corp-auth")).unwrap());
        let a = reg
            .send(
                Method::POST,
                "/v2/anything/app/blobs/uploads/",
                Some(&token),
                None,
                Vec::new(),
            )
            .await;
        assert_eq!(a.status, 202, "{} {}", signer.alg(), a.body);
        // Scopes the token lacks are asked for again.
        let a = reg.get("/v2/other/app/tags/list", Some(&token)).await;
        assert_eq!(a.status, 401);
        // A token of another issuer is not trusted.
        let wrong = format!("Bearer {}", signer.sign(&claims("someone-else")).unwrap());
        assert_eq!(reg.get("/v2/", Some(&wrong)).await.status, 401);
    }
    // Nor one signed by a key whose certificate is not in the bundle.
    let stranger = wharf_registry::auth::jwt::Signer::load_or_generate(
        &reg.dir.path().join("stranger.pem"),
        true,
    )
    .unwrap();
    let token = format!("Bearer {}", stranger.sign(&claims("corp-auth")).unwrap());
    assert_eq!(reg.get("/v2/", Some(&token)).await.status, 401);
    // Basic credentials mean nothing here: the external server checks passwords.
    assert_eq!(
        reg.get("/v2/", Some(&basic("alice", "wonder")))
            .await
            .status,
        401
    );
}
