//! wharf-registry: the registry server behind `wharf serve`, an OCI Distribution Spec v1.1
//! registry that docker, containerd, podman and skopeo use as their private registry.
//!
//! Layers, top to bottom: [`api`] (HTTP, the error envelope) → [`service`] (uploads, manifest
//! validation, tags, referrers) → [`storage`] (blob bytes) and [`metadata`] (the only SQL).

pub mod api;
pub mod auth;
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
    /// Another server is using the storage root: two on one root would each cache what the
    /// other changes.
    #[error(
        "another wharf serve{} is using the registry at {root}: one server per root (stop it, or give this one another --root)",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    InUse {
        /// The storage root.
        root: String,
        /// The other server's pid, as it wrote it in the lock file.
        pid: Option<u32>,
    },
    /// The users file or a token key cannot be used.
    #[error("setting up authentication")]
    Auth(#[from] auth::AuthError),
    /// The listener or TLS setup failed.
    #[error(transparent)]
    Serve(#[from] server::ServeError),
}

/// Takes `<root>/serve.lock` for this process (an exclusive `flock`, released when the
/// returned file is closed, however the process ends) and writes its pid there.
fn lock_root(root: &std::path::Path) -> Result<std::fs::File, RunError> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    let io = |what: &str, source| {
        RunError::Serve(server::ServeError::Io {
            what: format!("{what} {}", root.join("serve.lock").display()),
            source,
        })
    };
    std::fs::create_dir_all(root).map_err(|e| io("creating the directory of", e))?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(root.join("serve.lock"))
        .map_err(|e| io("opening", e))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io("locking", e));
        }
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        return Err(RunError::InUse {
            root: root.display().to_string(),
            pid: text.trim().parse().ok(),
        });
    }
    file.set_len(0).map_err(|e| io("writing", e))?;
    file.rewind().map_err(|e| io("writing", e))?;
    writeln!(file, "{}", std::process::id()).map_err(|e| io("writing", e))?;
    Ok(file)
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
    let _lock = lock_root(&config.storage.root)?;
    let auth = match &config.auth {
        Some(a) => Some(std::sync::Arc::new(auth::Auth::open(
            a,
            &config.storage.root,
            tls.is_some(),
        )?)),
        None => None,
    };
    server::raise_open_files_limit();
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
    let gc = tokio::spawn(registry.clone().gc_loop());
    let watch = tokio::spawn(registry.clone().watch_collections());
    tracing::info!(%addr, root = %config.storage.root.display(), tls = tls.is_some(), "registry listening");
    on_ready(addr);
    let result = server::serve(
        listener,
        api::router(registry, auth),
        tls,
        shutdown,
        server::Timeouts {
            header: config.server.header_timeout,
            shutdown: config.server.shutdown_timeout,
        },
    )
    .await;
    purge.abort();
    gc.abort();
    watch.abort();
    Ok(result?)
}
