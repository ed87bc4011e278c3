//! Starting a registry inside a test process: on a free loopback port, on its own runtime
//! thread, so tests on any runtime (or none) can talk to it over HTTP.

use std::net::SocketAddr;
use std::path::Path;

use crate::config::RegistryConfig;

/// A registry running in this process; stops when dropped.
pub struct Spawned {
    /// Where it listens.
    pub addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Starts a registry with its storage at `root` on 127.0.0.1 and an ephemeral port.
pub fn spawn(root: &Path) -> Spawned {
    let mut config = RegistryConfig::with_root(root);
    config.server.addr = SocketAddr::from(([127, 0, 0, 1], 0));
    spawn_with(config)
}

/// Starts a registry with `config`; panics if it cannot (this is for tests).
pub fn spawn_with(config: RegistryConfig) -> Spawned {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("test registry runtime: {e}"));
        let ready = ready_tx.clone();
        let result = rt.block_on(crate::run(
            config,
            async {
                let _ = stop_rx.await;
            },
            move |addr| {
                let _ = ready.send(Ok(addr));
            },
        ));
        if let Err(e) = result {
            let _ = ready_tx.send(Err(e.to_string()));
        }
    });
    let addr = match ready_rx.recv() {
        Ok(Ok(addr)) => addr,
        Ok(Err(e)) => panic!("test registry did not start: {e}"),
        Err(_) => panic!("test registry thread ended before starting"),
    };
    Spawned {
        addr,
        _stop: stop_tx,
    }
}
