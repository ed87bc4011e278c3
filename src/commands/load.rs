use std::io::BufReader;
use std::process::ExitCode;

use anyhow::Context as _;
use wharf_common::archive::{StagedArchive, is_layout_dir};
use wharf_common::copy::{CopyOptions, LocalDest, copy_image};
use wharf_common::media_type::decompress;

use crate::cli::LoadArgs;
use crate::context::Ctx;
use crate::printer::out;
use crate::progress::LOAD;

pub async fn run(ctx: &Ctx, args: LoadArgs) -> anyhow::Result<ExitCode> {
    let store = ctx.store().await?;
    let what = args
        .input
        .as_ref()
        .map_or_else(|| "standard input".to_owned(), |p| p.display().to_string());
    let mut archive = match &args.input {
        Some(dir) if dir.is_dir() => {
            if !is_layout_dir(dir) {
                anyhow::bail!(
                    "{} is a directory but not an OCI image layout (no oci-layout and index.json)",
                    dir.display()
                );
            }
            StagedArchive::open_layout(dir)?
        }
        input => {
            let input = input.clone();
            let store = store.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<StagedArchive> {
                let reader: Box<dyn std::io::Read + Send> = match &input {
                    Some(p) => Box::new(
                        std::fs::File::open(p)
                            .with_context(|| format!("opening {}", p.display()))?,
                    ),
                    None => Box::new(std::io::stdin()),
                };
                let d = decompress(BufReader::with_capacity(1 << 20, reader))?;
                let staging = store.staging_dir_blocking()?;
                Ok(StagedArchive::stage_tar(d.reader, staging)?)
            })
            .await??
        }
    };
    let images = archive
        .images()
        .with_context(|| format!("reading the archive from {what}"))?;
    let progress = ctx.progress(args.quiet, LOAD)?;
    let dest = LocalDest::new(store.clone(), false).await?;
    let opts = CopyOptions {
        platform: None,
        all_platforms: args.all_platforms,
    };
    let mut loaded = Vec::new();
    for image in &images {
        match copy_image(image, &dest, None, &image.names, &opts, &progress).await {
            Ok(c) => loaded.push((c, image.names.clone())),
            Err(e) => {
                if let Err(cleanup) = dest.abort().await {
                    tracing::warn!(error = %cleanup, "cleaning up after a failed load");
                }
                return Err(e).with_context(|| format!("loading from {what}"));
            }
        }
    }
    dest.finish().await?;
    if !args.quiet {
        for (c, names) in loaded {
            if names.is_empty() {
                let id = c.config.as_ref().unwrap_or(&c.top.digest);
                out(format!("Loaded image ID: {id}"))?;
            }
            for n in names {
                out(format!("Loaded image: {}", n.familiar()))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
