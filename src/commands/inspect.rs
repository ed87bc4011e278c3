use std::process::ExitCode;

use serde_json::{Value, json};

use crate::cli::InspectArgs;
use crate::commands::util::image_parts;
use crate::context::{Ctx, find_image};
use crate::printer::{self, out};

pub async fn run(ctx: &Ctx, args: InspectArgs) -> anyhow::Result<ExitCode> {
    let store = ctx.store().await?;
    let mut found = Vec::new();
    let mut failed = false;
    for spec in &args.images {
        let item = async {
            let rec = find_image(&store, spec).await?;
            let parts = image_parts(&store, &rec).await?;
            let c = &parts.config;
            anyhow::Ok(json!({
                "Id": parts.config_digest,
                "RepoTags": rec.names.iter().map(|n| n.familiar()).collect::<Vec<_>>(),
                "RepoDigests": rec.repo_digests.iter().map(|n| n.familiar()).collect::<Vec<_>>(),
                "Created": c.get("created").cloned().unwrap_or(Value::Null),
                "Author": c.get("author").cloned().unwrap_or(Value::Null),
                "Architecture": c.get("architecture").cloned().unwrap_or(Value::Null),
                "Variant": c.get("variant").cloned().unwrap_or(Value::Null),
                "Os": c.get("os").cloned().unwrap_or(Value::Null),
                "Size": parts.size,
                "Config": c.get("config").cloned().unwrap_or(Value::Null),
                "RootFS": {
                    "Type": "layers",
                    "Layers": c.pointer("/rootfs/diff_ids").cloned().unwrap_or(json!([])),
                },
                "Descriptor": {
                    "mediaType": rec.media_type,
                    "digest": rec.digest,
                },
                "Manifest": {
                    "digest": parts.manifest_digest,
                    "mediaType": parts.manifest_media_type,
                    "content": parts.manifest,
                },
                "ImageConfig": c,
            }))
        };
        match item.await {
            Ok(v) => found.push(v),
            Err(e) => {
                printer::report_error(&e);
                failed = true;
            }
        }
    }
    out(serde_json::to_string_pretty(&Value::Array(found))?)?;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
