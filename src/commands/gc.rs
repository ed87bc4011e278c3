//! `wharf gc`: the registry's garbage collection from the command line, on the registry root
//! `wharf serve` would use (same `--config`, environment and `--root`), beside a running server
//! or not: the two coordinate through the root's sweep lock and the database.

use std::process::ExitCode;

use anyhow::Context as _;
use wharf_registry::service::{GcOptions, Registry};

use crate::cli::GcArgs;
use crate::commands::serve::{overrides, resolve};
use crate::commands::util::human_size;
use crate::context::Ctx;
use crate::printer::out;

pub async fn run(ctx: &Ctx, args: GcArgs) -> anyhow::Result<ExitCode> {
    let config = resolve(ctx, &overrides(ctx))?;
    let root = config.storage.root.clone();
    anyhow::ensure!(
        root.join("registry.db").exists(),
        "{} holds no registry (no registry.db): nothing to collect",
        root.display()
    );
    let opts = GcOptions {
        dry_run: args.dry_run,
        delete_untagged: args.delete_untagged || config.gc.delete_untagged,
        grace: config.gc.grace_period,
        retention: config.gc.retention.clone(),
    };
    let registry = Registry::open_beside(config)
        .await
        .with_context(|| format!("opening the registry at {}", root.display()))?;
    let report = registry
        .collect(&opts)
        .await
        .with_context(|| format!("collecting garbage in {}", root.display()))?;
    let verb = if report.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    if !args.quiet {
        for (repo, tag) in &report.tags {
            out(format!("{verb} tag {repo}:{tag}"))?;
        }
        for (repo, digest) in &report.manifests {
            out(format!("{verb} manifest {repo}@{digest}"))?;
        }
        for (digest, size) in &report.blobs {
            out(format!("{verb} blob {digest} ({})", human_size(*size)))?;
        }
        for (digest, size) in &report.stray_files {
            out(format!(
                "{verb} blob file {digest} ({}, known to no repository)",
                human_size(*size)
            ))?;
        }
    }
    let freed = if report.dry_run {
        "would free"
    } else {
        "freed"
    };
    out(format!(
        "{} tags, {} manifests, {} blob links, {} blobs and {} stray files: {freed} {} in {:.2}s",
        report.tags.len(),
        report.manifests.len(),
        report.links,
        report.blobs.len(),
        report.stray_files.len(),
        human_size(report.freed()),
        report.took.as_secs_f64()
    ))?;
    Ok(ExitCode::SUCCESS)
}
