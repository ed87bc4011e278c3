//! The listening loop: plain HTTP (HTTP/1.1 and h2c) or TLS (rustls, HTTP/1.1 and h2 by ALPN),
//! and graceful shutdown: stop accepting, let in-flight requests finish within a deadline.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The TLS certificate or key is unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// Binding or accepting failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Reads a PEM certificate chain and key into a rustls server config.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| ServeError::Tls(format!("reading {}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| ServeError::Tls(format!("reading {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!(
            "{} holds no certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ServeError::Tls(format!("reading the private key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(format!("{}: {e}", cert.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The most a request's line and headers may take, in bytes.
const MAX_HEAD_BYTES: usize = 64 << 10;

/// The server's time limits.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// For a request's line and headers, and for a TLS handshake.
    pub header: Duration,
    /// For requests in flight after shutdown begins.
    pub shutdown: Duration,
}

/// Raises this process's soft limit on open files to its hard limit, as Go's runtime does for
/// distribution: every connection is a descriptor, and the usual soft limit of 1,024 would let
/// a thousand slow clients lock everyone else out.
pub fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let before = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                tracing::debug!(
                    from = before,
                    to = lim.rlim_max,
                    "raised the open files limit"
                );
            }
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then waits up to
/// `timeouts.shutdown` for in-flight requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
    timeouts: Timeouts,
) -> Result<(), ServeError> {
    let grace = timeouts.shutdown;
    let graceful = GracefulShutdown::new();
    let acceptor = tls.map(TlsAcceptor::from);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // A request line and headers fit in 64 KiB (distribution's Go server allows 1 MiB
            // of headers; hyper's default is ~400 KiB): more is refused before it is parsed.
            builder
                .http1()
                .max_buf_size(MAX_HEAD_BYTES)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(timeouts.header);
            let result = match acceptor {
                None => {
                    // The first byte within the header timeout: hyper's own timer starts only
                    // once the HTTP version is known, which takes a byte.
                    let mut first = [0u8; 1];
                    match tokio::time::timeout(timeouts.header, stream.peek(&mut first)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => {
                            tracing::debug!(%peer, "no request within the header timeout");
                            return;
                        }
                    }
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(timeouts.header, acceptor.accept(stream))
                        .await
                        .unwrap_or_else(|_| {
                            Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "TLS handshake timed out",
                            ))
                        }) {
                        Ok(tls) => {
                            let conn =
                                builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                            watcher.watch(conn.into_owned()).await
                        }
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: waiting for requests in flight");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!(?grace, "grace period over; closing connections still open"),
    }
    Ok(())
}
