use std::collections::BTreeSet;
use std::process::ExitCode;

use wharf_common::reference::Reference;
use wharf_common::store::{ImageRecord, LocalStore};

use crate::cli::RmiArgs;
use crate::context::{Ctx, find_image};
use crate::printer::{self, out};

pub async fn run(ctx: &Ctx, args: RmiArgs) -> anyhow::Result<ExitCode> {
    let store = ctx.store().await?;
    let mut failed = false;
    for spec in &args.images {
        if let Err(e) = remove(&store, spec, args.force).await {
            printer::report_error(&e);
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// docker's rules: a name is untagged, and the image goes when nothing names it any more; an id
/// removes the image with all its names, but only with `-f` when several repositories name it.
async fn remove(store: &LocalStore, spec: &str, force: bool) -> anyhow::Result<()> {
    if let Ok(r) = Reference::parse_exact(spec) {
        if r.digest().is_none() {
            let r = r.tagged();
            if let Some(image) = store.untag(&r).await? {
                out(format!("Untagged: {}", r.familiar()))?;
                // Deleted only if nothing names it, decided where it is deleted: a pull that
                // names it again meanwhile keeps it.
                if let Some(rec) = store.image(&image).await?
                    && rec.names.is_empty()
                    && let Some(report) = store.delete_image_if_unnamed(&rec.digest).await?
                {
                    deleted(&rec, report)?;
                }
                return Ok(());
            }
        } else if let Some(found) = store.resolve(&r).await? {
            // By digest: the image and every name it has.
            let rec = store
                .image(&found.digest)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no such image: {spec}"))?;
            return remove_record(store, &rec, spec, force).await;
        }
    }
    let rec = find_image(store, spec).await?;
    remove_record(store, &rec, spec, force).await
}

async fn remove_record(
    store: &LocalStore,
    rec: &ImageRecord,
    spec: &str,
    force: bool,
) -> anyhow::Result<()> {
    let repos: BTreeSet<_> = rec.names.iter().map(|n| n.repo().clone()).collect();
    if repos.len() > 1 && !force {
        anyhow::bail!(
            "conflict: unable to delete {spec} (must be forced) - image {} is referenced in multiple repositories",
            rec.id().short()
        );
    }
    for name in &rec.names {
        store.untag(name).await?;
        out(format!("Untagged: {}", name.familiar()))?;
    }
    delete(store, rec).await
}

async fn delete(store: &LocalStore, rec: &ImageRecord) -> anyhow::Result<()> {
    let report = store.delete_image(&rec.digest).await?;
    deleted(rec, report)
}

/// docker's lines for a deleted image: its repo digests untagged, then what went.
fn deleted(rec: &ImageRecord, report: wharf_common::store::GcReport) -> anyhow::Result<()> {
    for rd in &rec.repo_digests {
        out(format!("Untagged: {}", rd.familiar()))?;
    }
    out(format!("Deleted: {}", rec.id()))?;
    for d in report.removed {
        if &d != rec.id() {
            out(format!("Deleted: {d}"))?;
        }
    }
    Ok(())
}
