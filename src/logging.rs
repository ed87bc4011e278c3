//! The only place a tracing subscriber is installed: stderr, `-v` = debug, `-vv` = trace,
//! `RUST_LOG` overrides.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// `serve` logs at info by default, and as JSON lines with `--log-format json`.
pub fn init(verbose: u8, serve: bool, json: bool) {
    let default = match verbose {
        0 if serve => "info",
        0 => "warn",
        1 => "wharf=debug,wharf_common=debug,wharf_builder=debug,wharf_registry=debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            !json && std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        )
        .with_target(verbose > 0 || serve);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
