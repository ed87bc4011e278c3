//! The registries under test. Each is started once per test binary, on a free loopback port with
//! its data in a temporary directory, outside any test's runtime: tests run on their own threads
//! and runtimes and reach the servers over HTTP only. Every test uses repositories of its own.
//!
//! Under `CI=true` a target that cannot be started fails every test; elsewhere its tests are
//! skipped with a message saying why (`wharf_testkit`'s rule).

use std::sync::OnceLock;

pub struct Target {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub base: String,
    pub kind: Kind,
    /// User and password to answer challenges with (the official suite's `OCI_USERNAME` and
    /// `OCI_PASSWORD`).
    pub creds: Option<(String, String)>,
}

#[derive(Debug)]
pub enum Kind {
    Wharf,
    Distribution,
}

/// wharf's registry, started in this process (on its own runtime thread) with its data in a
/// temporary directory. `WHARF_SPEC_URL` points the suite at a running `wharf serve` instead
/// (started with `WHARF_STORAGE_DELETE=true`, as the checks of deletes expect).
pub fn wharf() -> Option<&'static Target> {
    static WHARF: OnceLock<Target> = OnceLock::new();
    static SERVER: OnceLock<(tempfile::TempDir, wharf_registry::testing::Spawned)> =
        OnceLock::new();
    Some(WHARF.get_or_init(|| {
        if let Ok(url) = std::env::var("WHARF_SPEC_URL") {
            return Target {
                base: url.trim_end_matches('/').to_owned(),
                kind: Kind::Wharf,
                creds: None,
            };
        }
        let (_, spawned) = SERVER.get_or_init(|| spawn_wharf(true));
        Target {
            base: format!("http://{}", spawned.addr),
            kind: Kind::Wharf,
            creds: None,
        }
    }))
}

/// wharf's registry with authentication on (token mode, its own token service, one user who may
/// do everything), every check answering its challenges with that user's credentials, as the
/// official suite does with `OCI_USERNAME` and `OCI_PASSWORD`. With `WHARF_SPEC_AUTH_URL`, a
/// running `wharf serve` and those two variables instead.
pub fn wharf_with_auth() -> Option<&'static Target> {
    static TARGET: OnceLock<Target> = OnceLock::new();
    static SERVER: OnceLock<(tempfile::TempDir, wharf_registry::testing::Spawned)> =
        OnceLock::new();
    Some(TARGET.get_or_init(|| {
        if let Ok(url) = std::env::var("WHARF_SPEC_AUTH_URL") {
            let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
            return Target {
                base: url.trim_end_matches('/').to_owned(),
                kind: Kind::Wharf,
                creds: Some((var("OCI_USERNAME"), var("OCI_PASSWORD"))),
            };
        }
        let password = format!("pw-{}", std::process::id());
        let hash = bcrypt::hash(&password, 4).expect("bcrypt");
        let (_, spawned) = SERVER.get_or_init(|| {
            spawn_wharf_with(|c| {
                c.storage.delete = true;
                let users = c.storage.root.join("htpasswd");
                std::fs::write(&users, format!("conformance:{hash}\n")).expect("htpasswd");
                c.auth = Some(wharf_registry::config::AuthConfig {
                    htpasswd: Some(users),
                    ..Default::default()
                });
            })
        });
        Target {
            base: format!("http://{}", spawned.addr),
            kind: Kind::Wharf,
            creds: Some(("conformance".into(), password)),
        }
    }))
}

/// wharf's registry on its own temporary directory, deletes on (as the distribution the
/// checks compare with is configured) or off (wharf's default).
fn spawn_wharf(deletes: bool) -> (tempfile::TempDir, wharf_registry::testing::Spawned) {
    spawn_wharf_with(|c| c.storage.delete = deletes)
}

fn spawn_wharf_with(
    set: impl FnOnce(&mut wharf_registry::RegistryConfig),
) -> (tempfile::TempDir, wharf_registry::testing::Spawned) {
    let dir = tempfile::tempdir().expect("a temporary directory for wharf's registry");
    let mut config = wharf_registry::RegistryConfig::with_root(dir.path());
    config.server.addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    set(&mut config);
    let spawned = wharf_registry::testing::spawn_with(config);
    (dir, spawned)
}

/// A wharf registry of its own, kept for the test binary's life.
type Own = OnceLock<(tempfile::TempDir, wharf_registry::testing::Spawned, Target)>;

fn own_target(
    cell: &'static Own,
    set: impl FnOnce(&mut wharf_registry::RegistryConfig),
) -> Option<&'static Target> {
    let (_, _, target) = cell.get_or_init(|| {
        let (dir, spawned) = spawn_wharf_with(set);
        let target = Target {
            base: format!("http://{}", spawned.addr),
            kind: Kind::Wharf,
            creds: None,
        };
        (dir, spawned, target)
    });
    Some(target)
}

/// wharf's registry with listings of at most `limit` names a page (`limits.list_max_entries`),
/// for the one test that uses it.
pub fn wharf_with_page_limit(limit: u32) -> Option<&'static Target> {
    static OWN: Own = OnceLock::new();
    own_target(&OWN, |c| c.limits.list_max_entries = limit)
}

/// wharf's registry with its default configuration: deletes off.
pub fn wharf_without_deletes() -> Option<&'static Target> {
    static OWN: Own = OnceLock::new();
    own_target(&OWN, |c| c.storage.delete = false)
}

/// A started docker-registry, kept for the test binary's life.
type Started = OnceLock<Option<(wharf_testkit::Distribution, Target)>>;

fn distribution_target(
    cell: &'static Started,
    start: fn() -> Option<wharf_testkit::Distribution>,
) -> Option<&'static Target> {
    cell.get_or_init(|| {
        let server = start()?;
        let target = Target {
            base: format!("http://{}", server.addr),
            kind: Kind::Distribution,
            creds: None,
        };
        Some((server, target))
    })
    .as_ref()
    .map(|(_, target)| target)
}

/// Debian's `docker-registry` with its default of deletes off.
pub fn distribution_without_deletes() -> Option<&'static Target> {
    static STARTED: Started = OnceLock::new();
    distribution_target(&STARTED, wharf_testkit::Distribution::start_without_deletes)
}

/// Debian's `docker-registry` (Distribution 2.8), configured as every test of the project
/// starts it (`wharf_testkit::Distribution`).
pub fn distribution() -> Option<&'static Target> {
    static STARTED: Started = OnceLock::new();
    distribution_target(&STARTED, wharf_testkit::Distribution::start)
}

/// Fails the test if the check failed.
pub fn expect_pass(target: &Target, outcome: Result<(), String>) {
    if let Err(e) = outcome {
        panic!("{:?} at {}: {e}", target.kind, target.base);
    }
}

/// Fails the test if a check documented as failing on this target passed; returns the failure.
pub fn expect_failure(target: &Target, outcome: Result<(), String>, why: &str) -> String {
    match outcome {
        Ok(()) => panic!(
            "{:?} now passes a check documented as failing there ({why}): drop the note",
            target.kind
        ),
        Err(e) => e,
    }
}
