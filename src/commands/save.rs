use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context as _;
use wharf_common::archive::ArchiveTarget;
use wharf_common::copy::ArchiveDest;
use wharf_common::copy::{CopyOptions, LocalSource, copy_image};
use wharf_common::reference::Reference;

use crate::cli::SaveArgs;
use crate::context::{Ctx, find_image};
use crate::printer::Hint;
use crate::progress::SAVE;

pub async fn run(ctx: &Ctx, args: SaveArgs) -> anyhow::Result<ExitCode> {
    let store = ctx.store().await?;
    // Resolve everything first: a missing image fails before anything is written.
    let mut images = Vec::new();
    for spec in &args.images {
        let rec = find_image(&store, spec).await?;
        // Saved by name: that name; by id: no name, as docker does.
        let names: Vec<Reference> = match Reference::parse_exact(spec) {
            Ok(r) if r.digest().is_none() && rec.names.contains(&r.tagged()) => vec![r.tagged()],
            _ => Vec::new(),
        };
        images.push((rec, names));
    }
    let mut tmp_file = None;
    let target = match (&args.output, args.dir) {
        (Some(dir), true) => ArchiveTarget::Dir(dir.clone()),
        (Some(path), false) => {
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let tmp = tempfile::Builder::new()
                .prefix(".wharf-save-")
                .tempfile_in(parent)
                .with_context(|| format!("creating a file in {}", parent.display()))?;
            let file = tmp
                .reopen()
                .with_context(|| format!("opening {}", tmp.path().display()))?;
            tmp_file = Some(tmp);
            ArchiveTarget::Tar(Box::new(std::io::BufWriter::with_capacity(1 << 20, file)))
        }
        (None, _) => {
            if std::io::stdout().is_terminal() {
                return Err(
                    anyhow::Error::new(Hint("use -o FILE, or redirect stdout".into()))
                        .context("refusing to write an archive to a terminal"),
                );
            }
            ArchiveTarget::Tar(Box::new(std::io::BufWriter::with_capacity(
                1 << 20,
                crate::printer::Stdout,
            )))
        }
    };
    let progress = ctx.progress(args.output.is_none(), SAVE)?;
    let dest = ArchiveDest::new(target)?;
    let opts = CopyOptions {
        platform: None,
        all_platforms: args.all_platforms,
    };
    for (rec, names) in &images {
        let src = LocalSource::for_image(store.clone(), rec.digest.clone());
        copy_image(&src, &dest, None, names, &opts, &progress)
            .await
            .with_context(|| format!("saving {}", rec.id()))?;
    }
    dest.finish().await.context("writing the archive")?;
    if let (Some(tmp), Some(path)) = (tmp_file, &args.output) {
        tmp.as_file()
            .sync_all()
            .with_context(|| format!("syncing {}", path.display()))?;
        tmp.persist(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
