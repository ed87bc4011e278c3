//! Users and their passwords: the htpasswd file (bcrypt only, as `htpasswd -B` writes it),
//! re-read when it changes; verified passwords remembered for a while, so bcrypt does not run
//! on every request; failed logins throttled per user and per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use ring::digest;
use subtle::ConstantTimeEq;

/// The users file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// It could not be read.
    #[error("reading the users file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `name:bcrypt-hash`.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// Why a password check did not let the caller in.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginError {
    /// Unknown user or wrong password (the caller is not told which).
    Invalid,
    /// Too many failures for this user or address: try again after this long.
    Throttled(Duration),
}

/// What the file said when it was last read.
struct Loaded {
    users: HashMap<String, String>,
    /// Modification time, size and inode: a change to any means the file is read again.
    stamp: Option<(SystemTime, u64, u64)>,
    checked: Instant,
}

/// How often the file's stamp is looked at.
const RECHECK: Duration = Duration::from_secs(1);

/// After this many failures in a row an address (or a user from an address) must wait before
/// trying again.
const FREE_FAILURES: u32 = 5;

/// A user's failures from every address together: higher, so that nobody locks a user out by
/// guessing wrong on purpose, but a distributed guesser still meets a wall.
const FREE_USER_FAILURES: u32 = 50;

/// bcrypt checks running at once; more wait (each takes a core for milliseconds).
const BCRYPT_SLOTS: usize = 4;

/// The longest wait a run of failures earns.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// A failure run older than this is forgotten.
const FAILURE_MEMORY: Duration = Duration::from_secs(900);

/// Entries beyond which stale throttle and cache entries are swept.
const SWEEP_AT: usize = 10_000;

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    until: Option<Instant>,
}

struct Remembered {
    /// The hash this password was checked against: a changed file forgets it.
    hash: String,
    /// SHA-256 of the process's secret and the password.
    digest: [u8; 32],
    at: Instant,
}

/// The users file with its caches.
pub struct Users {
    path: PathBuf,
    loaded: RwLock<Loaded>,
    /// Verified passwords, per user.
    remembered: Mutex<HashMap<String, Remembered>>,
    remember_for: Duration,
    /// Random per process: the remembered digests are of no use outside it.
    secret: [u8; 32],
    failures: Mutex<HashMap<String, Failures>>,
    /// Checked when a user does not exist, so that answering takes as long as for one who
    /// does: a hash at the highest cost the file uses.
    decoy: RwLock<String>,
    bcrypt_slots: tokio::sync::Semaphore,
}

/// The cost of a bcrypt hash (`$2y$05$…` → 5).
fn cost(hash: &str) -> Option<u32> {
    hash.get(4..6)?.parse().ok()
}

/// A hash of a random password at the highest cost among `users` (bcrypt's minimum, 4, when
/// there are none).
fn decoy_for(users: &HashMap<String, String>) -> String {
    let c = users.values().filter_map(|h| cost(h)).max().unwrap_or(4);
    bcrypt::hash(hex::encode(rand::random::<[u8; 16]>()), c).unwrap_or_default()
}

impl Users {
    /// Reads `path`; passwords verified are remembered for `remember_for`.
    pub fn open(path: &Path, remember_for: Duration) -> Result<Arc<Users>, UsersError> {
        let (users, stamp) = read(path)?;
        let secret = rand::random::<[u8; 32]>();
        let decoy = RwLock::new(decoy_for(&users));
        Ok(Arc::new(Users {
            path: path.to_owned(),
            loaded: RwLock::new(Loaded {
                users,
                stamp,
                checked: Instant::now(),
            }),
            remembered: Mutex::new(HashMap::new()),
            remember_for,
            secret,
            failures: Mutex::new(HashMap::new()),
            decoy,
            bcrypt_slots: tokio::sync::Semaphore::new(BCRYPT_SLOTS),
        }))
    }

    /// The user's bcrypt hash, reading the file again if it changed. A file that no longer
    /// parses is logged and the users it held before stay.
    pub fn hash_of(&self, user: &str) -> Option<String> {
        self.refresh();
        self.loaded
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .users
            .get(user)
            .cloned()
    }

    fn refresh(&self) {
        {
            let l = self
                .loaded
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if l.checked.elapsed() < RECHECK {
                return;
            }
        }
        let mut l = self
            .loaded
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if l.checked.elapsed() < RECHECK {
            return;
        }
        l.checked = Instant::now();
        if stamp(&self.path) == l.stamp {
            return;
        }
        match read(&self.path) {
            Ok((users, stamp)) => {
                tracing::info!(path = %self.path.display(), users = users.len(), "users file read again");
                *self
                    .decoy
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = decoy_for(&users);
                l.users = users;
                l.stamp = stamp;
            }
            Err(e) => {
                l.stamp = stamp(&self.path);
                tracing::error!(error = %wharf_common::error::Chain(&e), "users file changed but cannot be used; keeping the users read before");
            }
        }
    }

    /// Checks `user`'s `password`, remembering a success; `client` is throttled with the user.
    pub async fn check(
        self: &Arc<Users>,
        user: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<(), LoginError> {
        let hash = self.hash_of(user);
        let digest = self.digest(password);
        // The password verified before comes first: a user someone else guesses for is not
        // locked out of what it already proved.
        if let Some(h) = &hash
            && self.remembered_ok(user, h, &digest)
        {
            return Ok(());
        }
        let keys = throttle_keys(user, client);
        if let Some(wait) = self.throttled(&keys) {
            return Err(LoginError::Throttled(wait));
        }
        // Counted before bcrypt runs (and forgiven on success), so guesses sent in parallel
        // cannot all pass the check above.
        self.fail(&keys);
        let _slot = self.bcrypt_slots.acquire().await;
        let ok = {
            let password = password.to_owned();
            let hash = hash.clone();
            let decoy = self
                .decoy
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            tokio::task::spawn_blocking(move || match hash {
                Some(h) => bcrypt::verify(&password, &h).unwrap_or(false),
                None => {
                    let _ = bcrypt::verify(&password, &decoy);
                    false
                }
            })
            .await
            .unwrap_or(false)
        };
        if ok && let Some(h) = hash {
            self.forgive(&keys);
            let mut r = self
                .remembered
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if r.len() >= SWEEP_AT {
                let max = self.remember_for;
                r.retain(|_, v| v.at.elapsed() < max);
            }
            r.insert(
                user.to_owned(),
                Remembered {
                    hash: h,
                    digest,
                    at: Instant::now(),
                },
            );
            return Ok(());
        }
        Err(LoginError::Invalid)
    }

    fn digest(&self, password: &str) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&self.secret);
        ctx.update(password.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    fn remembered_ok(&self, user: &str, hash: &str, digest: &[u8; 32]) -> bool {
        let r = self
            .remembered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        r.get(user).is_some_and(|m| {
            m.hash == hash
                && m.at.elapsed() < self.remember_for
                && bool::from(m.digest.ct_eq(digest))
        })
    }

    fn throttled(&self, keys: &[String]) -> Option<Duration> {
        let f = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        keys.iter()
            .filter_map(|k| f.get(k)?.until)
            .filter(|u| *u > now)
            .map(|u| u - now)
            .max()
    }

    fn fail(&self, keys: &[String]) {
        let mut f = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if f.len() >= SWEEP_AT {
            f.retain(|_, v| now.duration_since(v.last) < FAILURE_MEMORY);
        }
        for k in keys {
            let e = f.entry(k.clone()).or_insert(Failures {
                count: 0,
                last: now,
                until: None,
            });
            if now.duration_since(e.last) >= FAILURE_MEMORY {
                e.count = 0;
            }
            e.count += 1;
            e.last = now;
            let free = if k.starts_with("user:") {
                FREE_USER_FAILURES
            } else {
                FREE_FAILURES
            };
            if e.count >= free {
                let doublings = (e.count - free).min(16);
                e.until = Some(now + Duration::from_secs(1 << doublings).min(MAX_WAIT));
            }
        }
    }

    fn forgive(&self, keys: &[String]) {
        let mut f = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for k in keys {
            f.remove(k);
        }
    }
}

/// What a failure counts against: the user everywhere (loosely), and the address and the
/// user from that address (tightly).
fn throttle_keys(user: &str, client: Option<IpAddr>) -> Vec<String> {
    let mut keys = vec![format!("user:{user}")];
    if let Some(ip) = client {
        keys.push(format!("client:{ip}"));
        keys.push(format!("pair:{user}@{ip}"));
    }
    keys
}

fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Type alias for what [`read`] gives.
type Read = (HashMap<String, String>, Option<(SystemTime, u64, u64)>);

fn read(path: &Path) -> Result<Read, UsersError> {
    let stamp = stamp(path);
    let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok((parse(path, &text)?, stamp))
}

/// `name:hash` lines; blank lines and `#` comments are skipped.
fn parse(path: &Path, text: &str) -> Result<HashMap<String, String>, UsersError> {
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |message: String| UsersError::Line {
            path: path.to_owned(),
            line: i + 1,
            message,
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, hash) = line
            .split_once(':')
            .ok_or_else(|| bad("not name:password-hash".into()))?;
        if name.is_empty() {
            return Err(bad("a user without a name".into()));
        }
        if name == "anonymous" || name == "*" {
            return Err(bad(format!(
                "the name {name:?} is reserved for rules (clients without credentials, every user)"
            )));
        }
        if !["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
            return Err(bad(format!(
                "{name}'s password is not hashed with bcrypt; write it with htpasswd -B"
            )));
        }
        if users.insert(name.to_owned(), hash.to_owned()).is_some() {
            return Err(bad(format!("{name} is listed twice")));
        }
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, lines: &[(&str, &str)]) -> PathBuf {
        let path = dir.join("htpasswd");
        let text: String = lines
            .iter()
            .map(|(u, p)| format!("{u}:{}\n", bcrypt::hash(p, 4).unwrap()))
            .collect();
        std::fs::write(&path, text).unwrap();
        path
    }

    #[tokio::test]
    async fn passwords_are_checked_remembered_and_reread() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), &[("alice", "wonder")]);
        let users = Users::open(&path, Duration::from_secs(60)).unwrap();
        assert_eq!(users.check("alice", "wonder", None).await, Ok(()));
        assert_eq!(users.check("alice", "wonder", None).await, Ok(()));
        assert_eq!(
            users.check("alice", "wrong", None).await,
            Err(LoginError::Invalid)
        );
        assert_eq!(
            users.check("nobody", "wonder", None).await,
            Err(LoginError::Invalid)
        );
        // A new password replaces the remembered one once the file is read again.
        std::thread::sleep(Duration::from_millis(20));
        file(dir.path(), &[("alice", "changed"), ("bob", "b")]);
        users.loaded.write().unwrap().checked = Instant::now() - RECHECK;
        assert_eq!(
            users.check("alice", "wonder", None).await,
            Err(LoginError::Invalid)
        );
        assert_eq!(users.check("alice", "changed", None).await, Ok(()));
        assert_eq!(users.check("bob", "b", None).await, Ok(()));
        // A broken file keeps the users read before.
        std::fs::write(&path, "bob:plaintext\n").unwrap();
        users.loaded.write().unwrap().checked = Instant::now() - RECHECK;
        assert!(users.hash_of("bob").is_some());
    }

    #[tokio::test]
    async fn failures_are_throttled_per_user_and_per_address() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), &[("alice", "wonder"), ("bob", "b")]);
        let users = Users::open(&path, Duration::from_secs(60)).unwrap();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..FREE_FAILURES {
            assert_eq!(
                users.check("alice", "x", Some(ip)).await,
                Err(LoginError::Invalid)
            );
        }
        // Now even the right password waits, from that address, for every user.
        assert!(matches!(
            users.check("alice", "wonder", Some(ip)).await,
            Err(LoginError::Throttled(_))
        ));
        assert!(matches!(
            users.check("bob", "b", Some(ip)).await,
            Err(LoginError::Throttled(_))
        ));
        // Elsewhere alice is not locked out by someone guessing her password.
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert_eq!(users.check("alice", "wonder", Some(other)).await, Ok(()));
        assert_eq!(users.check("bob", "b", None).await, Ok(()));
        // A password proved before passes even from the throttled address.
        assert_eq!(users.check("alice", "wonder", Some(ip)).await, Ok(()));
    }

    #[tokio::test]
    async fn parallel_guesses_are_counted_before_they_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), &[("alice", "wonder")]);
        let users = Users::open(&path, Duration::from_secs(60)).unwrap();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let guesses = (0..40).map(|i| {
            let users = users.clone();
            async move { users.check("alice", &format!("guess{i}"), Some(ip)).await }
        });
        let results = futures_util::future::join_all(guesses).await;
        let checked = results
            .iter()
            .filter(|r| **r == Err(LoginError::Invalid))
            .count();
        assert!(checked <= FREE_FAILURES as usize, "{checked} guesses ran");
    }

    #[test]
    fn the_decoy_costs_what_the_users_cost() {
        let users = HashMap::from([("a".to_owned(), bcrypt::hash("x", 6).unwrap())]);
        assert_eq!(cost(&decoy_for(&users)), Some(6));
    }

    #[test]
    fn only_bcrypt_lines_are_read() {
        let p = Path::new("/etc/htpasswd");
        assert!(
            parse(p, "# comment\n\na:$2y$05$abc\n")
                .unwrap()
                .contains_key("a")
        );
        let e = parse(p, "a:$2y$05$abc\nb:$apr1$xyz\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/htpasswd:2") && e.contains("htpasswd -B"),
            "{e}"
        );
        let e = parse(p, "justaname\n").unwrap_err().to_string();
        assert!(e.contains(":1:"), "{e}");
        let e = parse(p, "anonymous:$2y$05$abc\n").unwrap_err().to_string();
        assert!(e.contains("reserved"), "{e}");
    }
}
