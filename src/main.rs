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

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
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
