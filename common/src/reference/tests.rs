use super::*;

const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[test]
fn normalises_like_docker() {
    let cases = [
        (
            "busybox",
            "docker.io/library/busybox:latest",
            "busybox:latest",
        ),
        (
            "busybox:1.36",
            "docker.io/library/busybox:1.36",
            "busybox:1.36",
        ),
        ("user/app", "docker.io/user/app:latest", "user/app:latest"),
        (
            "docker.io/busybox",
            "docker.io/library/busybox:latest",
            "busybox:latest",
        ),
        (
            "index.docker.io/library/busybox:1",
            "docker.io/library/busybox:1",
            "busybox:1",
        ),
        (
            "localhost/app",
            "localhost/app:latest",
            "localhost/app:latest",
        ),
        (
            "localhost:5000/a/b:1",
            "localhost:5000/a/b:1",
            "localhost:5000/a/b:1",
        ),
        (
            "127.0.0.1:5000/x",
            "127.0.0.1:5000/x:latest",
            "127.0.0.1:5000/x:latest",
        ),
        (
            "quay.io/org/sub/img:v1.2-rc_3",
            "quay.io/org/sub/img:v1.2-rc_3",
            "quay.io/org/sub/img:v1.2-rc_3",
        ),
        (
            "[::1]:5000/app",
            "[::1]:5000/app:latest",
            "[::1]:5000/app:latest",
        ),
        (
            "a__b/c.d/e---f",
            "docker.io/a__b/c.d/e---f:latest",
            "a__b/c.d/e---f:latest",
        ),
    ];
    for (input, full, familiar) in cases {
        let r: Reference = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(r.to_string(), full, "{input}");
        assert_eq!(r.familiar(), familiar, "{input}");
    }
}

#[test]
fn digests_and_tags_together() {
    let r: Reference = format!("busybox@{D}").parse().unwrap();
    assert_eq!(r.tag(), None);
    assert_eq!(r.digest().unwrap().as_str(), D);
    assert_eq!(r.selector(), D);
    assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));

    let r: Reference = format!("localhost:5000/a:1@{D}").parse().unwrap();
    assert_eq!(r.tag().unwrap().as_str(), "1");
    assert_eq!(r.selector(), D, "the digest wins when both are given");
    assert_eq!(r.tagged().to_string(), "localhost:5000/a:1");
}

#[test]
fn malformed_references_name_the_input() {
    let cases = [
        ("Busybox", "must be lowercase"),
        ("busybox:", "invalid tag"),
        ("busybox:-x", "invalid tag"),
        ("busybox@sha256:abc", "lowercase hex"),
        ("busybox@", "expected <algorithm>:<hex>"),
        ("/busybox", "invalid repository name"),
        ("busybox/", "invalid repository name"),
        ("a//b", "invalid repository name"),
        ("a/-b", "invalid repository name"),
        ("a/b_", "invalid repository name"),
        ("a/b...c", "invalid repository name"),
        ("localhost:abc/x", "invalid port"),
        ("-bad.io/x", "invalid domain"),
        ("a b", "invalid repository name"),
        (":tag", "missing repository name"),
    ];
    for (input, want) in cases {
        let err = input.parse::<Reference>().unwrap_err();
        let err = crate::error::Chain(&err).to_string();
        assert!(err.contains(want), "{input:?}: {err}");
        assert!(
            err.contains(&format!("{input:?}")),
            "{input:?} not shown in {err}"
        );
    }
    assert_eq!("".parse::<Reference>().unwrap_err(), ReferenceError::Empty);
    let long = format!("a/{}", "b".repeat(300));
    assert!(matches!(
        long.parse::<Reference>(),
        Err(ReferenceError::TooLong(_))
    ));
    let long_tag = format!("a:{}", "t".repeat(129));
    assert!(long_tag.parse::<Reference>().is_err());
}

#[test]
fn repository_paths_follow_the_spec() {
    for ok in ["a", "library/busybox", "a-b/c_d/e.f", "a--b", "a__b"] {
        assert!(RepoName::is_valid_path(ok), "{ok}");
    }
    for bad in ["", "A", "a/", "/a", "a..b", "a___b", "_a", "a:b"] {
        assert!(!RepoName::is_valid_path(bad), "{bad}");
    }
}

#[test]
fn docker_hub_is_served_from_its_api_host() {
    assert_eq!(api_host("docker.io"), "registry-1.docker.io");
    assert_eq!(api_host("quay.io"), "quay.io");
    assert_eq!(api_host("localhost:5000"), "localhost:5000");
}
