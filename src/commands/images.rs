use std::process::ExitCode;

use serde_json::json;
use wharf_common::reference::Reference;

use crate::cli::{ImagesArgs, OutputFormat};
use crate::commands::util::{ago, human_size, image_parts, parse_rfc3339};
use crate::context::Ctx;
use crate::printer::out;

struct Row {
    repository: String,
    tag: String,
    digest: String,
    id: String,
    created: Option<i64>,
    size: u64,
}

pub async fn run(ctx: &Ctx, args: ImagesArgs) -> anyhow::Result<ExitCode> {
    let filter = args
        .repository
        .as_deref()
        .map(Reference::parse_exact)
        .transpose()?;
    let store = ctx.store().await?;
    let mut rows = Vec::new();
    for rec in store.list_images().await? {
        let parts = match image_parts(&store, &rec).await {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(image = %rec.digest, error = %e, "cannot read image");
                None
            }
        };
        let created = parts
            .as_ref()
            .and_then(|p| p.config.get("created")?.as_str().and_then(parse_rfc3339));
        let size = parts.as_ref().map_or(0, |p| p.size);
        let id = rec.id().clone();
        let digest_for = |repo: &wharf_common::reference::RepoName| {
            rec.repo_digests
                .iter()
                .find(|d| d.repo() == repo)
                .and_then(|d| d.digest())
                .map_or_else(|| "<none>".to_owned(), |d| d.to_string())
        };
        if rec.names.is_empty() {
            if filter.is_some() {
                continue;
            }
            let (repository, digest) = match rec.repo_digests.first() {
                Some(r) => (
                    r.repo().familiar(),
                    r.digest().map_or("<none>".into(), |d| d.to_string()),
                ),
                None => ("<none>".to_owned(), "<none>".to_owned()),
            };
            rows.push(Row {
                repository,
                tag: "<none>".into(),
                digest,
                id: id.to_string(),
                created,
                size,
            });
            continue;
        }
        for name in &rec.names {
            if let Some(f) = &filter
                && (f.repo() != name.repo() || f.tag().is_some_and(|t| Some(t) != name.tag()))
            {
                continue;
            }
            rows.push(Row {
                repository: name.repo().familiar(),
                tag: name.tag().map_or("<none>".into(), |t| t.to_string()),
                digest: digest_for(name.repo()),
                id: id.to_string(),
                created,
                size,
            });
        }
    }
    let short = |id: &str| -> String {
        if args.no_trunc {
            id.to_owned()
        } else {
            id.split_once(':')
                .map_or(id, |(_, h)| h)
                .chars()
                .take(12)
                .collect()
        }
    };
    if args.quiet {
        let mut seen = std::collections::HashSet::new();
        for r in &rows {
            if seen.insert(r.id.clone()) {
                out(short(&r.id))?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    match args.format {
        OutputFormat::Json => {
            for r in &rows {
                out(json!({
                    "Repository": r.repository,
                    "Tag": r.tag,
                    "Digest": r.digest,
                    "ID": short(&r.id),
                    "CreatedAt": r.created.map(crate::commands::util::rfc3339),
                    "CreatedSince": r.created.map(ago),
                    "Size": human_size(r.size),
                    "SizeBytes": r.size,
                }))?;
            }
        }
        OutputFormat::Table => {
            let mut table: Vec<Vec<String>> = vec![];
            let mut header = vec!["REPOSITORY", "TAG"];
            if args.digests {
                header.push("DIGEST");
            }
            header.extend(["IMAGE ID", "CREATED", "SIZE"]);
            table.push(header.iter().map(|s| (*s).to_owned()).collect());
            for r in &rows {
                let mut line = vec![r.repository.clone(), r.tag.clone()];
                if args.digests {
                    line.push(r.digest.clone());
                }
                line.extend([
                    short(&r.id),
                    r.created.map_or_else(|| "N/A".into(), ago),
                    human_size(r.size),
                ]);
                table.push(line);
            }
            print_table(&table)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints rows as columns separated by at least three spaces, as docker does.
pub fn print_table(rows: &[Vec<String>]) -> anyhow::Result<()> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        out(line.trim_end())?;
    }
    Ok(())
}
