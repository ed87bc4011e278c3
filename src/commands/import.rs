use std::io::BufReader;
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::{Map, Value};
use wharf_common::copy::{CopyOptions, copy_to_store};
use wharf_common::copy::{ImportOptions, ImportSource};
use wharf_common::image::Platform;
use wharf_common::media_type::decompress;
use wharf_common::reference::Reference;

use crate::cli::ImportArgs;
use crate::commands::util::{now_secs, rfc3339};
use crate::context::Ctx;
use crate::printer::out;

pub async fn run(ctx: &Ctx, args: ImportArgs) -> anyhow::Result<ExitCode> {
    let name = args
        .name
        .as_deref()
        .map(Reference::parse_exact)
        .transpose()?;
    if name.as_ref().is_some_and(|n| n.digest().is_some()) {
        anyhow::bail!(
            "cannot import to a digest reference: {}",
            args.name.unwrap_or_default()
        );
    }
    let mut config = Map::new();
    wharf_builder::change::apply(&mut config, &args.changes)?;
    // SOURCE_DATE_EPOCH makes imports reproducible, as it does builds.
    let created = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse::<i64>()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?,
        Err(_) => now_secs(),
    };
    let opts = ImportOptions {
        platform: match &args.platform {
            Some(p) => p.parse()?,
            None => Platform::host(),
        },
        created: rfc3339(created),
        config: Value::Object(config),
        comment: args
            .message
            .clone()
            .unwrap_or_else(|| format!("Imported from {}", args.file)),
    };
    let store = ctx.store().await?;
    let file = args.file.clone();
    let st = store.clone();
    let source = tokio::task::spawn_blocking(move || -> anyhow::Result<ImportSource> {
        let reader: Box<dyn std::io::Read + Send> = if file == "-" {
            Box::new(std::io::stdin())
        } else {
            Box::new(std::fs::File::open(&file).with_context(|| format!("opening {file}"))?)
        };
        let d = decompress(BufReader::with_capacity(1 << 20, reader))?;
        let staging = st.staging_dir_blocking()?;
        ImportSource::build_blocking(d.reader, staging, &opts)
            .with_context(|| format!("importing {file}"))
    })
    .await??;
    let names: Vec<Reference> = name.into_iter().map(|n| n.tagged()).collect();
    let progress = ctx.progress(true, crate::progress::LOAD)?;
    copy_to_store(
        source.image(),
        &store,
        false,
        None,
        &names,
        &CopyOptions::default(),
        &progress,
    )
    .await?;
    out(source.config_digest())?;
    Ok(ExitCode::SUCCESS)
}
