//! wharf-registry: the registry server behind `wharf serve`, an OCI Distribution Spec v1.1
//! registry that docker, containerd, podman and skopeo use as their private registry.
//!
//! Layers, top to bottom: [`api`] (HTTP, the error envelope) → [`service`] (uploads, manifest
//! validation, tags, referrers) → [`storage`] (blob bytes) and [`metadata`] (the only SQL).

pub mod api;
pub mod config;
pub mod metadata;
pub mod metrics;
pub mod server;
pub mod service;
pub mod storage;
#[cfg(feature = "testing")]
pub mod testing;

use std::future::Future;

pub use config::RegistryConfig;
pub use service::{Registry, ServiceError};

/// Why `wharf serve` stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Opening the storage or database failed.
    #[error("opening the registry at {root}")]
    Open {
        /// The storage root.
        root: String,
        /// What failed.
        source: ServiceError,
    },
    /// The listener or TLS setup failed.
    #[error(transparent)]
    Serve(#[from] server::ServeError),
}

/// Runs a registry with `config` until `shutdown` completes: opens storage, binds, serves, and
/// purges expired uploads in the background. `on_ready` is told the bound address.
pub async fn run(
    config: RegistryConfig,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> Result<(), RunError> {
    let tls = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(c), Some(k)) => Some(server::tls_config(c, k)?),
        _ => None,
    };
    let registry = Registry::open(config.clone())
        .await
        .map_err(|source| RunError::Open {
            root: config.storage.root.display().to_string(),
            source,
        })?;
    let listener = tokio::net::TcpListener::bind(config.server.addr)
        .await
        .map_err(|source| server::ServeError::Io {
            what: format!("listening on {}", config.server.addr),
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| server::ServeError::Io {
            what: "reading the bound address".into(),
            source,
        })?;
    let purge = tokio::spawn(registry.clone().purge_loop());
    tracing::info!(%addr, root = %config.storage.root.display(), tls = tls.is_some(), "registry listening");
    on_ready(addr);
    let result = server::serve(
        listener,
        api::router(registry),
        tls,
        shutdown,
        config.server.shutdown_timeout,
    )
    .await;
    purge.abort();
    Ok(result?)
}
