//! `wharf build`: a Dockerfile and its context into an image in the local store.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use wharf_builder::context::Context;
use wharf_builder::solve::{BuildOptions, CacheAccess, CancelToken, build};
use wharf_common::copy::{CopyOptions, copy_to_store};
use wharf_common::image::Platform;
use wharf_common::media_type::Compression;
use wharf_common::reference::Reference;
use wharf_common::store::{Lease, LocalStore, StagingDir};

use crate::bases::StoreImages;
use crate::cli::{BuildArgs, BuilderArgs, BuilderCommand, LayerCompression};
use crate::context::Ctx;
use crate::printer::out;
use crate::progress::build::BuildProgress;

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
    let source = BuildSource::open(&args).await?;
    let store = ctx.store().await?;
    // Everything the build relies on being in the store (its bases, cached layers, the layers
    // it writes) is protected by this lease from the first read to the last write.
    let lease = Arc::new(store.lease().await?);
    let staging = store.staging_dir_blocking()?;
    let cancel = CancelToken::new();
    let opts = options(&args, &source, platform, &store, &lease, &staging, &cancel)?;
    let progress = Arc::new(BuildProgress::new(ctx.global.progress, args.quiet)?);
    let images = StoreImages {
        ctx,
        store: store.clone(),
        lease: lease.clone(),
    };
    // Ctrl-C or SIGTERM stops the build: running RUN steps are killed, their mounts and
    // scratch directories go with the build.
    let fut = build(opts, &images, progress.events());
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
    // Layers of every stage go into the store and the build cache first, so later builds can
    // reuse them and the copy below finds them there.
    built.keep_layers(&store, &lease).await?;
    if !store.has_image_as(&built.manifest().digest, &names).await? {
        let silent = wharf_common::progress::Silent;
        copy_to_store(
            built.image(),
            &store,
            false,
            None,
            &names,
            &CopyOptions::default(),
            &silent,
        )
        .await
        .context("storing the built image")?;
    }
    drop(staging);
    drop(source);
    let id = built.id().to_string();
    if let Some(f) = &args.iidfile {
        std::fs::write(f, &id).with_context(|| format!("writing {}", f.display()))?;
    }
    for n in &names {
        progress.named(&n.familiar());
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
                    quiet: progress.is_quiet(),
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

/// The Dockerfile and the context a build reads.
struct BuildSource {
    dockerfile: String,
    dockerfile_path: PathBuf,
    context: Context,
    /// A context read from stdin is unpacked here; removed when this is dropped, after the
    /// build.
    _stdin_dir: Option<tempfile::TempDir>,
}

impl BuildSource {
    /// The context directory (or a tar on stdin, `-`, unpacked safely into a private
    /// directory) and the Dockerfile (`-f`, else `Dockerfile` in the context).
    async fn open(args: &BuildArgs) -> anyhow::Result<BuildSource> {
        let stdin_dir = if args.context.as_os_str() == "-" {
            let dir = tempfile::tempdir().context("creating a directory for the context")?;
            let target = dir.path().to_owned();
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let d = wharf_common::media_type::decompress(std::io::BufReader::new(
                    std::io::stdin(),
                ))?;
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
        let context_dir = stdin_dir
            .as_ref()
            .map_or_else(|| args.context.clone(), |d| d.path().to_owned());
        let dockerfile_path = match &args.file {
            Some(f) if stdin_dir.is_some() && f.is_relative() => context_dir.join(f),
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
        Ok(BuildSource {
            dockerfile,
            dockerfile_path,
            context,
            _stdin_dir: stdin_dir,
        })
    }
}

/// `--build-arg-file` lines, then `--build-arg`s (which win; `NAME` alone takes the
/// environment's value).
fn build_args(args: &BuildArgs) -> anyhow::Result<Vec<(String, String)>> {
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
    build_args.extend(
        args.build_args
            .iter()
            .filter_map(|a| match a.split_once('=') {
                Some((k, v)) => Some((k.to_owned(), v.to_owned())),
                None => std::env::var(a).ok().map(|v| (a.clone(), v)),
            }),
    );
    Ok(build_args)
}

/// Everything the build is given, from the flags, the environment and the store.
fn options(
    args: &BuildArgs,
    source: &BuildSource,
    platform: Platform,
    store: &LocalStore,
    lease: &Arc<Lease>,
    staging: &StagingDir,
    cancel: &CancelToken,
) -> anyhow::Result<BuildOptions> {
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
    let snapshots = wharf_builder::snapshot::Snapshots::new(store.root().join("snapshots"))?;
    let cache_mounts = store.root().join("cache-mounts");
    wharf_common::store::private_dir(&cache_mounts)
        .with_context(|| format!("creating {}", cache_mounts.display()))?;
    Ok(BuildOptions {
        dockerfile: source.dockerfile.clone(),
        dockerfile_name: source.dockerfile_path.display().to_string(),
        context: source.context.clone(),
        build_args: build_args(args)?,
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
    })
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
    use wharf_common::image::{Manifest, manifest_blobs};
    let Manifest::Image(m) =
        Manifest::parse(&manifest.bytes, &manifest.media_type, &manifest.digest)?
    else {
        anyhow::bail!("a build makes one image, not an index");
    };
    let (_, layers) = manifest_blobs(&m, &manifest.digest)?;
    let paths: Vec<_> = layers.iter().map(|l| store.blob_path(&l.digest)).collect();
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
