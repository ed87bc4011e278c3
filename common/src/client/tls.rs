//! TLS to registries as docker and podman set it up: the system's roots, plus the CA
//! certificates and client certificates of a per-host directory
//! (`/etc/docker/certs.d/HOST:PORT/`, `$DOCKER_CONFIG/certs.d/…`, podman's
//! `/etc/containers/certs.d/…`: every `*.crt` is a CA, every `NAME.cert` with a `NAME.key` a
//! client certificate), plus `--ca-cert` files for every host; or no verification at all, for
//! an insecure registry or with `--tls-verify=false`.

use std::path::{Path, PathBuf};

use super::ClientError;

/// What one registry host's TLS needs.
#[derive(Clone, Debug, Default)]
pub(crate) struct HostTls {
    /// PEM CA certificates to trust besides the system's.
    pub cas: Vec<Vec<u8>>,
    /// A PEM client certificate followed by its key.
    pub identity: Option<Vec<u8>>,
    /// Accept any certificate (insecure registries, `--tls-verify=false`).
    pub accept_invalid: bool,
}

fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| ClientError::Protocol {
        url: path.display().to_string(),
        reason: format!("reading a certificate: {e}"),
    })
}

impl HostTls {
    /// The TLS set up for `host` (`name[:port]`): `ca_files` for every host, then what the
    /// first of `dirs` that has a `host` directory holds.
    pub(crate) fn for_host(
        host: &str,
        dirs: &[PathBuf],
        ca_files: &[PathBuf],
        accept_invalid: bool,
    ) -> Result<HostTls, ClientError> {
        let mut tls = HostTls {
            accept_invalid,
            ..HostTls::default()
        };
        for f in ca_files {
            tls.cas.push(read(f)?);
        }
        for dir in dirs {
            let here = dir.join(host);
            let Ok(list) = std::fs::read_dir(&here) else {
                continue;
            };
            let mut names: Vec<PathBuf> = list.flatten().map(|e| e.path()).collect();
            names.sort();
            for p in &names {
                match p.extension().and_then(|e| e.to_str()) {
                    Some("crt") => tls.cas.push(read(p)?),
                    Some("cert") => {
                        let key = p.with_extension("key");
                        if key.exists() && tls.identity.is_none() {
                            let mut pem = read(p)?;
                            pem.push(b'\n');
                            pem.extend(read(&key)?);
                            tls.identity = Some(pem);
                        }
                    }
                    _ => {}
                }
            }
            break;
        }
        Ok(tls)
    }

    /// Applies it to a client being built.
    pub(crate) fn apply(
        &self,
        mut b: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, ClientError> {
        for pem in &self.cas {
            for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(ClientError::Setup)? {
                b = b.add_root_certificate(cert);
            }
        }
        if let Some(id) = &self.identity {
            b = b.identity(reqwest::Identity::from_pem(id).map_err(ClientError::Setup)?);
        }
        if self.accept_invalid {
            b = b.danger_accept_invalid_certs(true);
        }
        Ok(b)
    }
}

/// Whether a request error is a TLS client meeting a server that spoke plain HTTP.
pub(crate) fn is_http_answer_to_tls(e: &reqwest::Error) -> bool {
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = src {
        let text = s.to_string();
        if text.contains("InvalidContentType") || text.contains("corrupt message") {
            return true;
        }
        src = s.source();
    }
    false
}
