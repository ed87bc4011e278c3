//! One module per command: arguments → options → one library call → render.

pub(crate) mod build;
mod gc;
mod history;
mod images;
mod import;
mod inspect;
mod load;
mod login;
mod pull;
pub(crate) mod push;
mod rmi;
mod run;
pub(crate) mod save;
mod search;
mod serve;
mod tag;
mod util;

use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::context::Ctx;

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ctx = Ctx { global: cli.global };
    match cli.command {
        Command::Pull(a) => pull::run(&ctx, a).await,
        Command::Push(a) => push::run(&ctx, a).await,
        Command::Tag(a) => tag::run(&ctx, a).await,
        Command::Images(a) => images::run(&ctx, a).await,
        Command::Rmi(a) => rmi::run(&ctx, a).await,
        Command::Inspect(a) => inspect::run(&ctx, a).await,
        Command::History(a) => history::run(&ctx, a).await,
        Command::Search(a) => search::run(&ctx, a).await,
        Command::Save(a) => save::run(&ctx, a).await,
        Command::Load(a) => load::run(&ctx, a).await,
        Command::Import(a) => import::run(&ctx, a).await,
        Command::Login(a) => login::login(&ctx, a).await,
        Command::Logout(a) => login::logout(&ctx, a).await,
        Command::Serve(a) => serve::run(&ctx, a).await,
        Command::Gc(a) => gc::run(&ctx, a).await,
        Command::Build(a) => build::run(&ctx, a).await,
        Command::Builder(a) => build::builder(&ctx, a).await,
        Command::Run(a) => run::run(&ctx, a).await,
    }
}
