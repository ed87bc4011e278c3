//! wharf: the command-line interface. Parses arguments, sets up logging, calls one library
//! operation per command and renders its result. Exit codes: 0 success, 1 failure, 2 usage.

mod bases;
mod cli;
mod commands;
mod context;
mod logging;
mod printer;
mod progress;

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

fn main() -> ExitCode {
    let matches = cli::Cli::command().get_matches();
    let mut cli = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // For `serve` and `gc`, `--root` names the registry's storage; `WHARF_ROOT` is the image store's and
    // must not override the registry's own config file and WHARF_STORAGE_ROOT.
    if let Some(("serve" | "gc", sub)) = matches.subcommand() {
        let from_flag =
            |m: &clap::ArgMatches| m.value_source("root") == Some(ValueSource::CommandLine);
        if !from_flag(&matches) && !from_flag(sub) {
            cli.global.root = None;
        }
    }
    let (serve, json) = match &cli.command {
        cli::Command::Serve(a) => (true, a.log_format == cli::LogFormat::Json),
        _ => (false, false),
    };
    logging::init(cli.global.verbose, serve, json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return printer::report_error(
                &anyhow::Error::new(e).context("starting the async runtime"),
            );
        }
    };
    let result = runtime.block_on(commands::run(cli));
    // Blocking tasks (tar writers, file hashing) are done once their results were awaited.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(code) => code,
        Err(e) => printer::report_error(&e),
    }
}
