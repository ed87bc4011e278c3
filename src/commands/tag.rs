use std::process::ExitCode;

use wharf_common::reference::Reference;

use crate::cli::TagArgs;
use crate::context::{Ctx, find_image};

pub async fn run(ctx: &Ctx, args: TagArgs) -> anyhow::Result<ExitCode> {
    let target = Reference::parse_exact(&args.target)?;
    if target.digest().is_some() {
        anyhow::bail!(
            "refusing to create a tag with a digest reference: {}",
            args.target
        );
    }
    let target = target.tagged();
    let store = ctx.store().await?;
    let image = find_image(&store, &args.source).await?;
    store
        .put_image(
            &image.digest,
            &image.media_type,
            image.config.as_ref(),
            &[target],
            None,
        )
        .await?;
    Ok(ExitCode::SUCCESS)
}
