//! `wharf serve`: the registry server, configured from file, environment and flags.

use std::process::ExitCode;

use anyhow::Context as _;
use wharf_registry::RegistryConfig;
use wharf_registry::config::{AuthMode, MirrorConfig, Overrides};

use crate::cli::{AuthModeArg, ServeArgs};
use crate::context::Ctx;
use crate::printer::out;

pub async fn run(ctx: &Ctx, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let overrides = Overrides {
        htpasswd: args.htpasswd,
        auth_mode: args.auth_mode.map(|m| match m {
            AuthModeArg::Token => AuthMode::Token,
            AuthModeArg::Basic => AuthMode::Basic,
        }),
        addr: args.addr,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        mirrors: args
            .mirror
            .iter()
            .map(|m| MirrorConfig::from_flag(m))
            .collect::<Result<_, _>>()?,
        ..overrides(ctx)
    };
    let config = resolve(ctx, &overrides)?;
    if args.show_config {
        out(config.to_toml().trim_end())?;
        return Ok(ExitCode::SUCCESS);
    }
    let scheme = if config.server.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    wharf_registry::run(config, shutdown_signal(), |addr| {
        tracing::info!("wharf serve: listening on {scheme}://{addr}");
    })
    .await
    .context("wharf serve")?;
    Ok(ExitCode::SUCCESS)
}

/// What the global flags say of the registry: `--root` is the registry's data folder, not the
/// image store (main drops a root that came from WHARF_ROOT).
pub(crate) fn overrides(ctx: &Ctx) -> Overrides {
    Overrides {
        root: ctx.global.root.clone(),
        ..Overrides::default()
    }
}

/// The registry's configuration: `--config` file, environment, then `overrides`.
pub(crate) fn resolve(ctx: &Ctx, overrides: &Overrides) -> anyhow::Result<RegistryConfig> {
    Ok(RegistryConfig::resolve(
        ctx.global.docker_config.as_deref(),
        std::env::vars(),
        overrides,
    )?)
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        () = term => tracing::info!("SIGTERM: shutting down"),
    }
}
