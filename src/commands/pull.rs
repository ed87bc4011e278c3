use std::process::ExitCode;

use anyhow::Context as _;
use wharf_common::copy::{CopyOptions, RegistrySource, copy_to_store};
use wharf_common::reference::Reference;

use crate::cli::PullArgs;
use crate::context::Ctx;
use crate::printer::out;
use crate::progress::PULL;

pub async fn run(ctx: &Ctx, args: PullArgs) -> anyhow::Result<ExitCode> {
    let exact = Reference::parse_exact(&args.image)?;
    let reference: Reference = args.image.parse()?;
    let platform = args.platform.as_deref().map(str::parse).transpose()?;
    let store = ctx.store().await?;
    let client = ctx.client(None)?;
    let progress = ctx.progress(args.quiet, PULL)?;
    if exact.tag().is_none() && exact.digest().is_none() {
        progress.line("Using default tag: latest");
    }
    progress.line(&format!(
        "{}: Pulling from {}",
        reference.selector(),
        reference.repo().path()
    ));
    let before = store.resolve(&reference).await?;
    let names = if reference.tag().is_some() {
        vec![reference.tagged()]
    } else {
        vec![]
    };
    let src = RegistrySource::new(client.repository(reference.repo()).await?);
    let opts = CopyOptions {
        platform,
        all_platforms: args.all_platforms,
    };
    let copied = copy_to_store(
        &src,
        &store,
        true,
        Some(&reference),
        &names,
        &opts,
        &progress,
    )
    .await
    .with_context(|| format!("pulling {}", reference.familiar()))?;
    progress.line(&format!("Digest: {}", copied.source_digest));
    if before.is_some_and(|b| b.digest == copied.top.digest) {
        progress.line(&format!(
            "Status: Image is up to date for {}",
            reference.familiar()
        ));
    } else {
        progress.line(&format!(
            "Status: Downloaded newer image for {}",
            reference.familiar()
        ));
    }
    out(&reference)?;
    Ok(ExitCode::SUCCESS)
}
