//! `wharf build`: a Dockerfile and its context into an image in the local store.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use serde_json::Value;
use wharf_builder::context::Context;
use wharf_builder::solve::{
    BaseImage, BuildEvent, BuildOptions, CacheAccess, CancelToken, Cause, Download, Images, build,
};
use wharf_common::copy::{CopyOptions, LocalDest, RegistrySource, copy_image};
use wharf_common::image::{BlobRef, Manifest, Platform};
use wharf_common::media_type::Compression;
use wharf_common::reference::Reference;
use wharf_common::store::{CacheEntry, Lease, LocalStore, StoreError};

use crate::cli::{BuildArgs, BuilderArgs, BuilderCommand, LayerCompression};
use crate::context::{Ctx, find_image};
use crate::printer::out;

/// Base images from the local store, pulled when missing. Everything a base needs is protected
/// by the lease before it is read, so an `rmi` or a `builder prune` beside the build cannot
/// take it away while the build uses it.
pub(crate) struct StoreImages<'a> {
    pub(crate) ctx: &'a Ctx,
    pub(crate) store: LocalStore,
    pub(crate) lease: Arc<Lease>,
}

impl StoreImages<'_> {
    pub(crate) async fn load(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> anyhow::Result<BaseImage> {
        // An image removed between finding it and protecting it is found (or pulled) again.
        let mut tries = 0;
        loop {
            match self.try_load(reference, platform).await {
                Err(e)
                    if tries < 5
                        && e.downcast_ref::<StoreError>()
                            .is_some_and(|s| matches!(s, StoreError::BlobUnknown(_))) =>
                {
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    async fn try_load(&self, reference: &str, platform: &Platform) -> anyhow::Result<BaseImage> {
        let rec = match find_image(&self.store, reference).await {
            Ok(r) => r,
            Err(_) => {
                let r: Reference = reference.parse()?;
                let client = self.ctx.client(None)?;
                let src = RegistrySource::new(client.repository(r.repo()).await?);
                let dest = LocalDest::new(self.store.clone(), true).await?;
                let names = if r.tag().is_some() {
                    vec![r.tagged()]
                } else {
                    vec![]
                };
                let opts = CopyOptions {
                    platform: Some(platform.clone()),
                    all_platforms: false,
                };
                let silent = wharf_common::progress::Silent;
                match copy_image(&src, &dest, Some(&r), &names, &opts, &silent).await {
                    Ok(_) => dest.finish().await?,
                    Err(e) => {
                        let _ = dest.abort().await;
                        // What the user needs first: it is not here; then why fetching it
                        // failed.
                        return Err(e).with_context(|| {
                            format!(
                                "{reference} is not in the local store, and pulling {} failed",
                                r.familiar()
                            )
                        });
                    }
                }
                find_image(&self.store, reference).await?
            }
        };
        self.lease.protect(&rec.digest).await?;
        let bytes = self.store.read_blob(&rec.digest).await?;
        let manifest_bytes = match Manifest::parse(&bytes, &rec.media_type, &rec.digest)? {
            Manifest::Image(_) => bytes,
            Manifest::Index(idx) => {
                let child = idx
                    .manifests()
                    .iter()
                    .find(|m| {
                        m.platform().as_ref().is_some_and(|p| {
                            p.os().to_string() == platform.os
                                && p.architecture().to_string() == platform.architecture
                        })
                    })
                    .with_context(|| {
                        format!(
                            "{reference} has no image for {}/{}",
                            platform.os, platform.architecture
                        )
                    })?;
                let d: wharf_common::digest::Digest = child.digest().to_string().parse()?;
                self.lease.protect(&d).await?;
                self.store.read_blob(&d).await?
            }
        };
        let m: Value = serde_json::from_slice(&manifest_bytes)?;
        let config_digest: wharf_common::digest::Digest = m["config"]["digest"]
            .as_str()
            .context("manifest without a config")?
            .parse()?;
        let mut layers = Vec::new();
        for l in m["layers"].as_array().cloned().unwrap_or_default() {
            let digest: wharf_common::digest::Digest = l["digest"]
                .as_str()
                .context("layer without a digest")?
                .parse()?;
            let path = self.store.blob_path(&digest);
            layers.push((
                BlobRef {
                    digest,
                    size: l["size"].as_u64().unwrap_or(0),
                    media_type: l["mediaType"].as_str().unwrap_or_default().to_owned(),
                },
                path,
            ));
        }
        let mut all: Vec<_> = layers.iter().map(|(b, _)| b.digest.clone()).collect();
        all.push(config_digest.clone());
        self.lease.protect_all(&all).await?;
        let config: Value = serde_json::from_slice(&self.store.read_blob(&config_digest).await?)?;
        for (b, _) in &layers {
            if self.store.blob_size(&b.digest).await.is_none() {
                return Err(StoreError::BlobUnknown(b.digest.clone()).into());
            }
        }
        Ok(BaseImage { config, layers })
    }
}

impl Images for StoreImages<'_> {
    fn fetch<'a>(
        &'a self,
        url: &'a str,
        to: &'a std::path::Path,
    ) -> BoxFuture<'a, Result<Download, Cause>> {
        Box::pin(async move {
            let client = self.ctx.client(None)?;
            let (digest, _, last_modified) = client.download(url, to).await?;
            Ok(Download {
                digest,
                last_modified: last_modified
                    .as_deref()
                    .and_then(wharf_common::time::parse_http_date),
            })
        })
    }

    fn base<'a>(
        &'a self,
        reference: &'a str,
        platform: &'a Platform,
    ) -> BoxFuture<'a, Result<BaseImage, Cause>> {
        Box::pin(async move { Ok(self.load(reference, platform).await?) })
    }
}

pub async fn run(ctx: &Ctx, args: BuildArgs) -> anyhow::Result<ExitCode> {
    let platform = Platform::host();
    if let Some(p) = &args.platform {
        let wanted: Platform = p.parse()?;
        if wanted.os != platform.os || wanted.architecture != platform.architecture {
            anyhow::bail!(
                "--platform {p}: only the host's platform ({}/{}) can be built here",
                platform.os,
                platform.architecture
            );
        }
    }
    let names: Vec<Reference> = args
        .tags
        .iter()
        .map(|t| Reference::parse_exact(t).map(|r| r.tagged()))
        .collect::<Result<_, _>>()?;
    let outputs = args
        .outputs
        .iter()
        .map(|o| parse_output(o))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.push && names.is_empty() {
        anyhow::bail!("--push needs at least one -t name to push to");
    }
    // A context on stdin is unpacked (safely) into a private directory first.
    let stdin_context = if args.context.as_os_str() == "-" {
        let dir = tempfile::tempdir().context("creating a directory for the context")?;
        let target = dir.path().to_owned();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let d =
                wharf_common::media_type::decompress(std::io::BufReader::new(std::io::stdin()))?;
            // A context is files, not a layer: `.wh.` names are ordinary files in it.
            let opts = wharf_common::archive::unpack::UnpackOptions {
                whiteouts: false,
                ..Default::default()
            };
            wharf_common::archive::unpack::apply_layer(&target, d.reader, &opts)
                .context("reading the build context from stdin")?;
            Ok(())
        })
        .await??;
        Some(dir)
    } else {
        None
    };
    let context_dir = stdin_context
        .as_ref()
        .map_or_else(|| args.context.clone(), |d| d.path().to_owned());
    let dockerfile_path = match &args.file {
        Some(f) if stdin_context.is_some() && f.is_relative() => context_dir.join(f),
        Some(f) => f.clone(),
        None => context_dir.join("Dockerfile"),
    };
    // docker's words for a missing context, before anything is read from it.
    match std::fs::metadata(&context_dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => anyhow::bail!(
            "unable to prepare context: {} is not a directory (give a directory, or - for a tar on stdin)",
            context_dir.display()
        ),
        Err(e) => anyhow::bail!(
            "unable to prepare context: the context directory {} cannot be read: {e}",
            context_dir.display()
        ),
    }
    let dockerfile = std::fs::read_to_string(&dockerfile_path)
        .with_context(|| format!("reading the Dockerfile {}", dockerfile_path.display()))?;
    let context = Context::open(&context_dir, Some(&dockerfile_path))?;
    let mut build_args: Vec<(String, String)> = Vec::new();
    for f in &args.build_arg_files {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading --build-arg-file {}", f.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once('=').with_context(|| {
                format!(
                    "{}:{}: expected NAME=VALUE, found {line:?}",
                    f.display(),
                    n + 1
                )
            })?;
            build_args.push((k.trim().to_owned(), v.to_owned()));
        }
    }
    // --build-arg wins over the files.
    build_args.extend(
        args.build_args
            .iter()
            .filter_map(|a| match a.split_once('=') {
                Some((k, v)) => Some((k.to_owned(), v.to_owned())),
                None => std::env::var(a).ok().map(|v| (a.clone(), v)),
            }),
    );
    let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => Some(
            v.trim()
                .parse::<i64>()
                .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?,
        ),
        Err(_) => None,
    };
    let mut named_contexts = std::collections::BTreeMap::new();
    for spec in &args.build_contexts {
        let (name, dir) = spec
            .split_once('=')
            .with_context(|| format!("--build-context {spec}: expected NAME=DIR"))?;
        let dir = dir.strip_prefix("local:").unwrap_or(dir);
        let named = Context::open(std::path::Path::new(dir), None)
            .with_context(|| format!("--build-context {name}"))?;
        named_contexts.insert(name.to_owned(), named);
    }
    let mut secrets = std::collections::BTreeMap::new();
    for spec in &args.secrets {
        let (id, value) = read_secret(spec)?;
        secrets.insert(id, value);
    }
    let network: wharf_builder::sandbox::Network = args
        .network
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--network: {e}"))?;
    // Asking for the host's network on the command line grants it, as `docker build` does.
    let mut allow_network_host = network == wharf_builder::sandbox::Network::Host;
    for a in &args.allow {
        match a.as_str() {
            "network.host" => allow_network_host = true,
            other => anyhow::bail!(
                "--allow {other}: wharf grants only network.host (security.insecure is not available)"
            ),
        }
    }
    let add_hosts = args
        .add_hosts
        .iter()
        .map(|h| wharf_builder::sandbox::parse_host_entry(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--add-host {e}"))?;
    let store = ctx.store().await?;
    // Everything the build relies on being in the store (its bases, cached layers, the layers
    // it writes) is protected by this lease from the first read to the last write.
    let lease = Arc::new(store.lease().await?);
    let staging = store.staging_dir_blocking()?;
    let snapshots = wharf_builder::snapshot::Snapshots::new(store.root().join("snapshots"))?;
    let cache_mounts = store.root().join("cache-mounts");
    wharf_common::store::private_dir(&cache_mounts)
        .with_context(|| format!("creating {}", cache_mounts.display()))?;
    let cancel = CancelToken::new();
    let opts = BuildOptions {
        dockerfile,
        dockerfile_name: dockerfile_path.display().to_string(),
        context,
        build_args,
        target: args.target.clone(),
        source_date_epoch,
        compression: match args.compression {
            LayerCompression::Gzip => Compression::Gzip,
            LayerCompression::Zstd => Compression::Zstd,
            LayerCompression::Uncompressed => Compression::None,
        },
        platform,
        work_dir: PathBuf::from(staging.path()),
        cache: Some(CacheAccess {
            store: store.clone(),
            runtime: tokio::runtime::Handle::current(),
            lease: lease.clone(),
        }),
        no_cache: args.no_cache,
        named_contexts,
        snapshots,
        cache_mounts,
        secrets,
        network,
        allow_network_host,
        add_hosts,
        cancel: cancel.clone(),
    };
    let quiet = args.quiet || ctx.global.progress == crate::cli::ProgressMode::Quiet;
    let json = ctx.global.progress == crate::cli::ProgressMode::Json;
    let tty = match ctx.global.progress {
        crate::cli::ProgressMode::Tty => {
            if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                anyhow::bail!("--progress tty needs stderr to be a terminal");
            }
            true
        }
        crate::cli::ProgressMode::Auto => std::io::IsTerminal::is_terminal(&std::io::stderr()),
        _ => false,
    };
    let live = (tty && !quiet).then(LiveView::new);
    let events: wharf_builder::solve::Events = Arc::new(move |e| {
        if quiet {
            return;
        }
        if let Some(view) = &live {
            view.show(e);
            return;
        }
        let line = if json {
            // JSON lines, tagged {"type": …, "data": {…}}.
            let (kind, data) = match e {
                BuildEvent::Step {
                    id,
                    stage,
                    index,
                    total,
                    text,
                } => (
                    "step",
                    serde_json::json!({"id": id, "stage": stage, "index": index, "total": total, "instruction": text}),
                ),
                BuildEvent::Cached(id) => ("cached", serde_json::json!({"id": id})),
                BuildEvent::Done(id, took) => (
                    "done",
                    serde_json::json!({"id": id, "seconds": took.as_secs_f64()}),
                ),
                BuildEvent::Warning(l) => (
                    "warning",
                    serde_json::json!({"rule": l.rule, "message": l.message, "line": l.line}),
                ),
                BuildEvent::Output(id, line) => {
                    ("output", serde_json::json!({"id": id, "line": line}))
                }
                BuildEvent::Notice(message) => ("notice", serde_json::json!({"message": message})),
            };
            serde_json::json!({"type": kind, "data": data}).to_string()
        } else {
            match e {
                BuildEvent::Step {
                    id,
                    stage,
                    index,
                    total,
                    text,
                } => step_line(id, &stage, index, total, &text),
                BuildEvent::Cached(id) => format!("#{id} CACHED"),
                BuildEvent::Done(id, took) => format!("#{id} DONE {:.1}s", took.as_secs_f64()),
                BuildEvent::Warning(l) => {
                    format!("WARN: {}: {} (line {})", l.rule, l.message, l.line)
                }
                BuildEvent::Output(id, line) => format!("#{id} {line}"),
                BuildEvent::Notice(message) => format!("WARN: {message}"),
            }
        };
        crate::printer::err_line(&line);
    });
    let images = StoreImages {
        ctx,
        store: store.clone(),
        lease: lease.clone(),
    };
    // Ctrl-C or SIGTERM stops the build: running RUN steps are killed, their mounts and
    // scratch directories go with the build.
    let fut = build(opts, &images, events);
    tokio::pin!(fut);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let built = tokio::select! {
        r = &mut fut => r,
        _ = tokio::signal::ctrl_c() => {
            cancel.cancel();
            let _ = fut.await;
            drop(staging);
            anyhow::bail!("build cancelled");
        }
        _ = term.recv() => {
            cancel.cancel();
            let _ = fut.await;
            drop(staging);
            anyhow::bail!("build cancelled");
        }
    }?;
    // Layers of every stage go into the store (by hard link, before the image is stored, so
    // the copy finds them there), so later builds can reuse them.
    let mut records = Vec::new();
    for new in &built.new_layers {
        let (key, layer, path) = (&new.key, &new.layer, &new.file);
        let blob = BlobRef {
            digest: layer.digest.clone(),
            size: layer.size,
            media_type: layer.media_type.to_owned(),
        };
        lease.protect(&blob.digest).await?;
        let (st, p, b) = (store.clone(), path.clone(), blob.clone());
        tokio::task::spawn_blocking(move || st.adopt_verified_blocking(&p, &b)).await??;
        records.push((
            key.clone(),
            CacheEntry {
                layer: layer.digest.clone(),
                diff_id: layer.diff_id.clone(),
                media_type: layer.media_type.to_owned(),
                size: layer.size,
                created_at: new.created_at,
            },
        ));
    }
    // Nothing to store when the image is there already under every name asked for (a
    // cached rebuild): the copy would only rewrite what is there.
    let manifest_digest = built.manifest().digest.clone();
    let mut stored = store.image(&manifest_digest).await?.is_some();
    for n in &names {
        stored = stored
            && store
                .resolve(n)
                .await?
                .is_some_and(|found| found.digest == manifest_digest);
    }
    if !stored {
        let dest = LocalDest::new(store.clone(), false).await?;
        let silent = wharf_common::progress::Silent;
        match copy_image(
            built.image(),
            &dest,
            None,
            &names,
            &CopyOptions::default(),
            &silent,
        )
        .await
        {
            Ok(_) => dest.finish().await?,
            Err(e) => {
                let _ = dest.abort().await;
                return Err(e).context("storing the built image");
            }
        }
    }
    if !records.is_empty() {
        store.sync_blob_dirs().await?;
        store.cache_put(&records).await?;
    }
    store.cache_touch(&built.cache_hits).await?;
    drop(staging);
    let id = built.id().to_string();
    if let Some(f) = &args.iidfile {
        std::fs::write(f, &id).with_context(|| format!("writing {}", f.display()))?;
    }
    if !quiet {
        for n in &names {
            let line = if json {
                serde_json::json!({"type": "named", "data": {"name": n.familiar()}}).to_string()
            } else {
                format!("naming to {}", n.familiar())
            };
            crate::printer::err_line(&line);
        }
    }
    for o in outputs {
        match o {
            Output::Archive(dest) => {
                crate::commands::save::run(
                    ctx,
                    crate::cli::SaveArgs {
                        images: vec![
                            names
                                .first()
                                .map_or_else(|| id.clone(), Reference::to_string),
                        ],
                        output: Some(dest),
                        dir: false,
                        all_platforms: false,
                    },
                )
                .await?;
            }
            Output::Local(dir) => export_files(&store, built.manifest(), &dir).await?,
        }
    }
    if args.push {
        for n in &names {
            crate::commands::push::run(
                ctx,
                crate::cli::PushArgs {
                    image: n.to_string(),
                    quiet,
                    chunk_size: None,
                    jobs: 8,
                },
            )
            .await?;
        }
    }
    out(&id)?;
    Ok(ExitCode::SUCCESS)
}

/// Where `-o` writes.
enum Output {
    /// An archive (docker and OCI in one, as `wharf save` writes).
    Archive(PathBuf),
    /// The image's files.
    Local(PathBuf),
}

fn parse_output(spec: &str) -> anyhow::Result<Output> {
    if !spec.contains('=') {
        return Ok(Output::Local(PathBuf::from(spec)));
    }
    let mut kind = None;
    let mut dest = None;
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("type", t)) => kind = Some(t.to_owned()),
            Some(("dest", d)) => dest = Some(PathBuf::from(d)),
            _ => anyhow::bail!("-o {spec}: expected type=oci|docker|local,dest=PATH"),
        }
    }
    let dest = dest.with_context(|| format!("-o {spec}: dest=PATH is missing"))?;
    match kind.as_deref() {
        Some("oci" | "docker" | "tar") => Ok(Output::Archive(dest)),
        Some("local") | None => Ok(Output::Local(dest)),
        Some(other) => {
            anyhow::bail!("-o {spec}: unknown output type {other:?} (oci, docker or local)")
        }
    }
}

/// Writes the image's files (its layers applied in order) into `dir`.
async fn export_files(
    store: &LocalStore,
    manifest: &wharf_common::blob::Fetched,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let m: Value = serde_json::from_slice(&manifest.bytes)?;
    let mut paths = Vec::new();
    for l in m["layers"].as_array().cloned().unwrap_or_default() {
        let d: wharf_common::digest::Digest = l["digest"]
            .as_str()
            .context("layer without a digest")?
            .parse()?;
        paths.push(store.blob_path(&d));
    }
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for p in paths {
            wharf_common::archive::unpack::apply_layer_file(&dir, &p, &Default::default())
                .with_context(|| format!("writing the image's files into {}", dir.display()))?;
        }
        Ok(())
    })
    .await?
}

/// `--secret id=ID,src=FILE` (or `source=`, `type=file`) and `id=ID,env=VAR`: the id and the
/// secret's bytes.
fn read_secret(spec: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let (mut id, mut src, mut env) = (None, None, None);
    for field in spec.split(',') {
        match field.split_once('=') {
            Some(("id", v)) => id = Some(v.to_owned()),
            Some(("src" | "source", v)) => src = Some(v.to_owned()),
            Some(("env", v)) => env = Some(v.to_owned()),
            Some(("type", "file" | "env")) => {}
            _ => anyhow::bail!("--secret {spec}: expected id=ID,src=FILE or id=ID,env=VAR"),
        }
    }
    let id = id
        .or_else(|| env.clone())
        .with_context(|| format!("--secret {spec}: an id is required"))?;
    let value = match (src, env) {
        (Some(f), _) => std::fs::read(&f).with_context(|| format!("--secret {id}: reading {f}"))?,
        (None, Some(v)) => std::env::var(&v)
            .with_context(|| format!("--secret {id}: environment variable {v} is not set"))?
            .into_bytes(),
        // As docker: with neither, an environment variable named like the id.
        (None, None) => std::env::var(&id)
            .with_context(|| format!("--secret {id}: give src=FILE or env=VAR"))?
            .into_bytes(),
    };
    Ok((id, value))
}

/// `wharf builder prune`.
pub async fn builder(ctx: &Ctx, args: BuilderArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        BuilderCommand::Prune(_) => {
            let store = ctx.store().await?;
            // Layers a running build holds are spared (its lease), the rest of the cache goes.
            let (mut entries, mut bytes) = store.cache_prune().await?;
            // Snapshots and RUN cache mounts are build cache too, removed only while no build or
            // container uses them (a running one holds the snapshots' lock).
            let snapshots =
                wharf_builder::snapshot::Snapshots::new(store.root().join("snapshots"))?;
            match snapshots.prune()? {
                Some((n, freed)) => {
                    entries += n as u64;
                    bytes += freed;
                }
                None => crate::printer::err_line(
                    "snapshots and cache mounts are in use by a running build or container: kept",
                ),
            }
            let mounts = store.root().join("cache-mounts");
            let removed = snapshots.when_unused(|| -> anyhow::Result<u64> {
                let mut n = 0;
                if let Ok(list) = std::fs::read_dir(&mounts) {
                    for e in list.flatten() {
                        let p = e.path();
                        bytes += wharf_builder::snapshot::disk_usage(&p);
                        let gone = if p.is_dir() {
                            std::fs::remove_dir_all(&p)
                        } else {
                            std::fs::remove_file(&p)
                        };
                        gone.with_context(|| format!("removing {}", p.display()))?;
                        n += 1;
                    }
                }
                Ok(n)
            })?;
            if let Some(n) = removed {
                entries += n?;
            }
            out(format!(
                "Deleted build cache objects: {entries}\nTotal reclaimed space: {}",
                crate::commands::util::human_size(bytes)
            ))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// BuildKit's plain line for a step: `#3 [build 2/7] COPY app/ ./`.
fn step_line(id: usize, stage: &str, index: usize, total: usize, text: &str) -> String {
    format!("#{id} [{stage} {index}/{total}] {text}")
}

/// The live terminal view: a spinner per running step, which turns into its CACHED or DONE line.
struct LiveView {
    multi: indicatif::MultiProgress,
    bars: std::sync::Mutex<std::collections::HashMap<usize, (indicatif::ProgressBar, String)>>,
}

impl LiveView {
    fn new() -> LiveView {
        LiveView {
            multi: indicatif::MultiProgress::with_draw_target(
                indicatif::ProgressDrawTarget::stderr_with_hz(10),
            ),
            bars: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn show(&self, e: BuildEvent) {
        let mut bars = self
            .bars
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match e {
            BuildEvent::Step {
                id,
                stage,
                index,
                total,
                text,
            } => {
                let label = step_line(id, &stage, index, total, &text);
                let bar = self.multi.add(indicatif::ProgressBar::new_spinner());
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                );
                bar.set_message(label.clone());
                bar.enable_steady_tick(std::time::Duration::from_millis(100));
                bars.insert(id, (bar, label));
            }
            BuildEvent::Cached(id) => {
                if let Some((bar, label)) = bars.remove(&id) {
                    bar.set_style(
                        indicatif::ProgressStyle::with_template("{msg}")
                            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                    );
                    bar.finish_with_message(format!("{label}  CACHED"));
                }
            }
            BuildEvent::Done(id, took) => {
                if let Some((bar, label)) = bars.remove(&id) {
                    bar.set_style(
                        indicatif::ProgressStyle::with_template("{msg}")
                            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                    );
                    bar.finish_with_message(format!("{label}  DONE {:.1}s", took.as_secs_f64()));
                }
            }
            BuildEvent::Warning(l) => {
                let _ = self
                    .multi
                    .println(format!("WARN: {}: {} (line {})", l.rule, l.message, l.line));
            }
            BuildEvent::Output(id, line) => {
                let _ = self.multi.println(format!("#{id} {line}"));
            }
            BuildEvent::Notice(message) => {
                let _ = self.multi.println(format!("WARN: {message}"));
            }
        }
    }
}
