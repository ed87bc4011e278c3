//! Credentials from docker's `config.json`: `auths` entries, `credsStore` and `credHelpers`
//! (the `docker-credential-<name>` protocol), read and written the way the docker CLI does.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use base64::Engine as _;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use super::ClientError;

/// The key docker files Docker Hub credentials under.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// A user name and a password (or token).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password, or a personal access token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// docker's credential configuration: a `config.json` file.
#[derive(Clone, Debug)]
pub struct CredentialStore {
    path: PathBuf,
    /// Where `docker-credential-*` helpers are looked up: `PATH` unless set.
    helper_path: Option<std::ffi::OsString>,
}

/// The key a registry host is filed under: Docker Hub's legacy URL, or the host itself.
pub fn server_key(host: &str) -> String {
    if host == "docker.io" || host == "index.docker.io" || host == "registry-1.docker.io" {
        DOCKER_HUB_KEY.to_owned()
    } else {
        host.to_owned()
    }
}

/// Reduces a config key (`https://host/v1/`, `host`, `http://host:5000`) to its host.
fn key_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

fn same_host(key: &str, host: &str) -> bool {
    let kh = key_host(key);
    let hub = |h: &str| matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    kh == host || (hub(kh) && hub(host))
}

impl CredentialStore {
    /// The store in `dir/config.json` (docker's `$DOCKER_CONFIG`, default `~/.docker`).
    pub fn new(dir: &Path) -> CredentialStore {
        CredentialStore {
            path: dir.join("config.json"),
            helper_path: None,
        }
    }

    /// Looks credential helpers up in `path` (a `PATH`-style list) instead of `PATH`.
    pub fn with_helper_path(mut self, path: impl Into<std::ffi::OsString>) -> CredentialStore {
        self.helper_path = Some(path.into());
        self
    }

    /// The config file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<Map<String, Value>, ClientError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Map::new()),
            Err(e) => {
                return Err(ClientError::CredentialsFile {
                    path: self.path.clone(),
                    reason: e.to_string(),
                });
            }
        };
        if text.trim().is_empty() {
            return Ok(Map::new());
        }
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(ClientError::CredentialsFile {
                path: self.path.clone(),
                reason: "not a JSON object".into(),
            }),
            Err(e) => Err(ClientError::CredentialsFile {
                path: self.path.clone(),
                reason: e.to_string(),
            }),
        }
    }

    fn write(&self, config: &Map<String, Value>) -> Result<(), ClientError> {
        let err = |e: std::io::Error| ClientError::CredentialsFile {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut text = serde_json::to_string_pretty(&Value::Object(config.clone()))
            .map_err(|e| err(std::io::Error::other(e)))?;
        text.push('\n');
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
        std::io::Write::write_all(&mut tmp, text.as_bytes()).map_err(err)?;
        tmp.as_file().sync_all().map_err(err)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o600))
                .map_err(err)?;
        }
        tmp.persist(&self.path).map_err(|e| err(e.error))?;
        Ok(())
    }

    fn helper_for(config: &Map<String, Value>, host: &str) -> Option<String> {
        if let Some(Value::Object(helpers)) = config.get("credHelpers") {
            for (k, v) in helpers {
                if same_host(k, host) {
                    return v.as_str().map(str::to_owned);
                }
            }
        }
        config
            .get("credsStore")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    }

    /// The credentials for registry `host`, if any are configured.
    pub async fn get(&self, host: &str) -> Result<Option<Credentials>, ClientError> {
        let config = self.read()?;
        if let Some(helper) = Self::helper_for(&config, host) {
            return helper_get(self.helper_path.as_deref(), &helper, &server_key(host)).await;
        }
        let Some(Value::Object(auths)) = config.get("auths") else {
            return Ok(None);
        };
        for (key, entry) in auths {
            if !same_host(key, host) {
                continue;
            }
            if let Some(auth) = entry
                .get("auth")
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
            {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| ClientError::CredentialsFile {
                        path: self.path.clone(),
                        reason: format!("auths[{key:?}].auth is not base64 of user:password"),
                    })?;
                let (u, p) =
                    decoded
                        .split_once(':')
                        .ok_or_else(|| ClientError::CredentialsFile {
                            path: self.path.clone(),
                            reason: format!(
                                "auths[{key:?}].auth has no ':' between user and password"
                            ),
                        })?;
                return Ok(Some(Credentials {
                    username: u.to_owned(),
                    password: p.to_owned(),
                }));
            }
            let u = entry.get("username").and_then(Value::as_str);
            let p = entry.get("password").and_then(Value::as_str);
            if let (Some(u), Some(p)) = (u, p) {
                return Ok(Some(Credentials {
                    username: u.to_owned(),
                    password: p.to_owned(),
                }));
            }
        }
        Ok(None)
    }

    /// Saves credentials for `host`: in the configured helper, else base64 in `auths`.
    pub async fn store(&self, host: &str, creds: &Credentials) -> Result<(), ClientError> {
        let mut config = self.read()?;
        let key = server_key(host);
        if let Some(helper) = Self::helper_for(&config, host) {
            let payload = serde_json::json!({
                "ServerURL": key, "Username": creds.username, "Secret": creds.password,
            });
            helper_run(
                self.helper_path.as_deref(),
                &helper,
                "store",
                payload.to_string().as_bytes(),
            )
            .await?;
            // docker keeps an empty entry so `docker info` lists the registry.
            let auths = config
                .entry("auths")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(a) = auths {
                a.insert(key, Value::Object(Map::new()));
            }
            return self.write(&config);
        }
        let encoded = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", creds.username, creds.password));
        let auths = config
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        if !auths.is_object() {
            *auths = Value::Object(Map::new());
        }
        if let Value::Object(a) = auths {
            a.retain(|k, _| !same_host(k, host) || *k == key);
            a.insert(key, serde_json::json!({ "auth": encoded }));
        }
        self.write(&config)
    }

    /// Removes credentials for `host`. Returns whether there were any.
    pub async fn erase(&self, host: &str) -> Result<bool, ClientError> {
        let mut config = self.read()?;
        let key = server_key(host);
        let mut found = false;
        if let Some(helper) = Self::helper_for(&config, host) {
            found = helper_run(
                self.helper_path.as_deref(),
                &helper,
                "erase",
                key.as_bytes(),
            )
            .await
            .is_ok();
        }
        if let Some(Value::Object(a)) = config.get_mut("auths") {
            let before = a.len();
            a.retain(|k, _| !same_host(k, host));
            found |= a.len() != before;
        }
        if found {
            self.write(&config)?;
        }
        Ok(found)
    }
}

async fn helper_run(
    path: Option<&std::ffi::OsStr>,
    helper: &str,
    verb: &str,
    input: &[u8],
) -> Result<Vec<u8>, ClientError> {
    let program = format!("docker-credential-{helper}");
    let fail = |reason: String| ClientError::Helper {
        helper: helper.to_owned(),
        reason,
    };
    let mut command = tokio::process::Command::new(&program);
    if let Some(p) = path {
        // The program is looked up in the child's PATH when one is set.
        command.env("PATH", p);
    }
    let mut child = command
        .arg(verb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .await
            .map_err(|e| fail(format!("writing to {program}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| fail(format!("waiting for {program}: {e}")))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let msg = if msg.is_empty() {
            String::from_utf8_lossy(&out.stderr).trim().to_owned()
        } else {
            msg
        };
        return Err(fail(format!("{verb} failed: {msg}")));
    }
    Ok(out.stdout)
}

async fn helper_get(
    path: Option<&std::ffi::OsStr>,
    helper: &str,
    key: &str,
) -> Result<Option<Credentials>, ClientError> {
    let out = match helper_run(path, helper, "get", key.as_bytes()).await {
        Ok(o) => o,
        Err(ClientError::Helper { reason, .. }) if reason.contains("credentials not found") => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let v: Value = serde_json::from_slice(&out).map_err(|e| ClientError::Helper {
        helper: helper.to_owned(),
        reason: format!("invalid answer to get: {e}"),
    })?;
    let user = v
        .get("Username")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let secret = v.get("Secret").and_then(Value::as_str).unwrap_or_default();
    if secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials {
        username: user.to_owned(),
        password: secret.to_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stores_reads_and_erases_auths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"experimental":"enabled"}"#,
        )
        .unwrap();
        let s = CredentialStore::new(dir.path());
        assert_eq!(s.get("localhost:5000").await.unwrap(), None);
        let c = Credentials {
            username: "alice".into(),
            password: "s3:cret".into(),
        };
        s.store("localhost:5000", &c).await.unwrap();
        s.store("docker.io", &c).await.unwrap();
        assert_eq!(s.get("localhost:5000").await.unwrap(), Some(c.clone()));
        assert_eq!(s.get("index.docker.io").await.unwrap(), Some(c.clone()));
        let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        assert!(
            text.contains("\"experimental\""),
            "other settings kept: {text}"
        );
        assert!(text.contains(DOCKER_HUB_KEY));
        assert!(s.erase("localhost:5000").await.unwrap());
        assert!(!s.erase("localhost:5000").await.unwrap());
        assert_eq!(s.get("localhost:5000").await.unwrap(), None);
    }

    #[tokio::test]
    async fn reads_docker_style_keys_and_reports_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:pw");
        std::fs::write(
            dir.path().join("config.json"),
            format!(r#"{{"auths":{{"https://reg.example.com/v1/":{{"auth":"{auth}"}}}}}}"#),
        )
        .unwrap();
        let s = CredentialStore::new(dir.path());
        let c = s.get("reg.example.com").await.unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("bob", "pw"));
        std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
        let err = s.get("reg.example.com").await.unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
    }

    #[tokio::test]
    async fn uses_credential_helpers() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let db = dir.path().join("helper-db");
        let script = format!(
            "#!/bin/sh\ncase \"$1\" in\n get) read k; if [ -f {db} ]; then cat {db}; else echo 'credentials not found in native keychain'; exit 1; fi;;\n store) cat > {db};;\n erase) rm -f {db};;\nesac\n",
            db = db.display()
        );
        let helper = bin.join("docker-credential-wharftest");
        std::fs::write(&helper, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The helper is found through a PATH-style list, as docker finds it (this process's
        // own PATH is left alone: other test threads read it).
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"credsStore":"wharftest"}"#,
        )
        .unwrap();
        let s = CredentialStore::new(dir.path()).with_helper_path(path);
        assert_eq!(s.get("r.example").await.unwrap(), None);
        let c = Credentials {
            username: "u".into(),
            password: "p".into(),
        };
        s.store("r.example", &c).await.unwrap();
        assert_eq!(s.get("r.example").await.unwrap(), Some(c));
        assert!(s.erase("r.example").await.unwrap());
        assert_eq!(s.get("r.example").await.unwrap(), None);
    }
}
