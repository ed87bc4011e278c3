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

/// An HTTP/2 connection preface: a connection whose first bytes could still become one is not
/// yet a request hyper times.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection that must show, before a deadline, bytes that start an HTTP/1 request (or a
/// whole HTTP/2 preface): hyper's header timer starts only once it has a request's first byte
/// that is not part of a preface, so a client sending nothing, or half a preface, would hold
/// its connection forever.
struct FirstBytes<IO> {
    io: IO,
    /// Preface bytes matched so far; `None` once the connection showed what it is.
    seen: Option<usize>,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<IO> FirstBytes<IO> {
    fn new(io: IO, within: Duration) -> Self {
        FirstBytes {
            io,
            seen: Some(0),
            deadline: Box::pin(tokio::time::sleep(within)),
        }
    }
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstBytes<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if let Some(matched) = self.seen {
            if let Poll::Ready(Ok(())) = &polled {
                let new = &buf.filled()[before..];
                let mut m = matched;
                let mut decided = new.is_empty();
                for b in new {
                    if m >= H2_PREFACE.len() || H2_PREFACE[m] != *b {
                        decided = true;
                        break;
                    }
                    m += 1;
                }
                self.seen = if decided || m >= H2_PREFACE.len() {
                    None
                } else {
                    Some(m)
                };
            }
            if self.seen.is_some() && self.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no request within the header timeout",
                )));
            }
        }
        polled
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstBytes<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The router, with each request told its connection's client address (`api::Peer`): one
/// extension per request instead of a router wrapped per connection.
#[derive(Clone)]
struct WithPeer {
    app: Router,
    peer: std::net::SocketAddr,
}

impl<B> tower_service::Service<axum::http::Request<B>> for WithPeer
where
    Router: tower_service::Service<axum::http::Request<B>>,
{
    type Response = <Router as tower_service::Service<axum::http::Request<B>>>::Response;
    type Error = <Router as tower_service::Service<axum::http::Request<B>>>::Error;
    type Future = <Router as tower_service::Service<axum::http::Request<B>>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tower_service::Service::<axum::http::Request<B>>::poll_ready(&mut self.app, cx)
    }

    fn call(&mut self, mut req: axum::http::Request<B>) -> Self::Future {
        req.extensions_mut().insert(crate::api::Peer(self.peer));
        self.app.call(req)
    }
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
        // Handlers see where a request came from (the audit log names it).
        let service = TowerToHyperService::new(WithPeer {
            app: app.clone(),
            peer,
        });
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // A request line and headers fit in 64 KiB (distribution's Go server allows 1 MiB
            // of headers; hyper's default is ~400 KiB): more is refused before it is parsed.
            // The header timer runs from the moment hyper waits for a request, an idle
            // keep-alive connection's next one included.
            builder
                .http1()
                .max_buf_size(MAX_HEAD_BYTES)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(timeouts.header);
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(Some(timeouts.header))
                .keep_alive_timeout(timeouts.header);
            let result = match acceptor {
                None => {
                    // HTTP/1 only in the clear, as docker, containerd and distribution speak
                    // it: no sniffing for an HTTP/2 preface, which had no deadline.
                    let builder = builder.http1_only();
                    let stream = FirstBytes::new(stream, timeouts.header);
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
                            // The version ALPN chose, so nothing is sniffed without a deadline.
                            let builder = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                                builder.http2_only()
                            } else {
                                builder.http1_only()
                            };
                            let tls = FirstBytes::new(tls, timeouts.header);
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
