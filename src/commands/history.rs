use std::process::ExitCode;

use serde_json::json;

use crate::cli::{HistoryArgs, OutputFormat};
use crate::commands::images::print_table;
use crate::commands::util::{ago, human_size, image_parts, parse_rfc3339};
use crate::context::{Ctx, find_image};
use crate::printer::out;

pub async fn run(ctx: &Ctx, args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let store = ctx.store().await?;
    let rec = find_image(&store, &args.image).await?;
    let parts = image_parts(&store, &rec).await?;
    let history = parts
        .config
        .get("history")
        .and_then(|h| h.as_array())
        .cloned()
        .unwrap_or_default();
    // Each non-empty history entry owns the next layer, in order.
    let mut layers = parts.layers.iter();
    let mut rows = Vec::new();
    for h in &history {
        let empty = h
            .get("empty_layer")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let size = if empty {
            0
        } else {
            layers.next().map_or(0, |(_, s)| *s)
        };
        rows.push((h.clone(), size, empty));
    }
    rows.reverse();
    let id = parts.config_digest.to_string();
    let short = |s: &str| -> String {
        if args.no_trunc {
            s.to_owned()
        } else {
            s.split_once(':')
                .map_or(s, |(_, h)| h)
                .chars()
                .take(12)
                .collect()
        }
    };
    let field =
        |h: &serde_json::Value, k: &str| h.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
    if args.quiet {
        for (i, _) in rows.iter().enumerate() {
            out(if i == 0 {
                short(&id)
            } else {
                "<missing>".into()
            })?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    match args.format {
        OutputFormat::Json => {
            for (i, (h, size, empty)) in rows.iter().enumerate() {
                let created = field(h, "created");
                out(json!({
                    "ID": if i == 0 { short(&id) } else { "<missing>".into() },
                    "CreatedAt": created,
                    "CreatedSince": parse_rfc3339(&created).map(ago),
                    "CreatedBy": field(h, "created_by"),
                    "Size": human_size(*size),
                    "SizeBytes": size,
                    "Comment": field(h, "comment"),
                    "EmptyLayer": empty,
                }))?;
            }
        }
        OutputFormat::Table => {
            let mut table = vec![
                vec!["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]
                    .into_iter()
                    .map(str::to_owned)
                    .collect::<Vec<_>>(),
            ];
            for (i, (h, size, _)) in rows.iter().enumerate() {
                let created = field(h, "created");
                let mut by = field(h, "created_by");
                if !args.no_trunc && by.chars().count() > 45 {
                    by = by.chars().take(44).collect::<String>() + "…";
                }
                table.push(vec![
                    if i == 0 {
                        short(&id)
                    } else {
                        "<missing>".into()
                    },
                    parse_rfc3339(&created).map_or_else(|| "N/A".into(), ago),
                    by,
                    human_size(*size),
                    field(h, "comment"),
                ]);
            }
            print_table(&table)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
