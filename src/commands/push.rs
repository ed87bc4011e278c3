use std::process::ExitCode;

use anyhow::Context as _;
use wharf_common::copy::{CopyOptions, LocalSource, RegistryDest, copy_image};
use wharf_common::reference::Reference;

use crate::cli::PushArgs;
use crate::context::{Ctx, find_image};
use crate::printer::out;
use crate::progress::PUSH;

pub async fn run(ctx: &Ctx, args: PushArgs) -> anyhow::Result<ExitCode> {
    let reference: Reference = args.image.parse()?;
    if reference.digest().is_some() {
        anyhow::bail!("cannot push {}: push a tag, not a digest", args.image);
    }
    let store = ctx.store().await?;
    let image = find_image(&store, &reference.to_string()).await?;
    let client = ctx.client(args.chunk_size)?;
    let progress = ctx.progress(args.quiet, PUSH)?;
    progress.line(&format!(
        "The push refers to repository [{}]",
        reference.repo()
    ));
    let src = LocalSource::for_image(store.clone(), image.digest.clone())
        .with_origins(image.repo_digests.iter().map(|r| r.repo().clone()));
    let dest = RegistryDest::new(client.repository(reference.repo()).await?, args.jobs.max(1));
    let opts = CopyOptions {
        platform: None,
        all_platforms: true,
    };
    let copied = copy_image(
        &src,
        &dest,
        None,
        std::slice::from_ref(&reference),
        &opts,
        &progress,
    )
    .await
    .with_context(|| format!("pushing {}", reference.familiar()))?;
    store
        .put_image(
            &image.digest,
            &image.media_type,
            image.config.as_ref(),
            &[],
            Some((reference.repo(), &copied.top.digest)),
        )
        .await?;
    let tag = reference.tag().map(|t| t.to_string()).unwrap_or_default();
    if args.quiet {
        out(&copied.top.digest)?;
    } else {
        out(format!(
            "{tag}: digest: {} size: {}",
            copied.top.digest,
            copied.top.bytes.len()
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
