//! Running a Dockerfile: stages in order, each from its base (scratch, an image, or an earlier
//! stage), instructions applied to the image config and, for COPY/ADD/WORKDIR, to a root
//! directory and a new deterministic layer. The result is an image ([`Built`]) that the copy
//! engine stores like any other source.
//!
//! Not here yet (issue 4 continues): the build graph with parallel stages and the
//! content-addressed cache; RUN needs the sandbox of issue 5.

mod copy;
mod output;
mod run;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use futures_util::future::BoxFuture;
use serde_json::{Map, Value, json};
use wharf_common::archive::layer::WrittenLayer;
use wharf_common::digest::Digest;
use wharf_common::image::{BlobRef, Platform};
use wharf_common::media_type::Compression;

use crate::context::Context;
use crate::dockerfile::instructions::{
    self, CommandLine, Dockerfile, DockerfileError, Healthcheck, Instruction, Lint, Step,
};
use crate::dockerfile::shell::Lexer;
use crate::sandbox::Network;
use crate::snapshot::{Snapshots, View};

pub use output::Built;

/// An image a build starts from or copies from, as the local store holds it.
#[derive(Clone, Debug)]
pub struct BaseImage {
    /// The image config JSON.
    pub config: Value,
    /// Its layers (blobs, in order) and where their bytes are.
    pub layers: Vec<(BlobRef, PathBuf)>,
}

/// A file `ADD` fetched from a URL.
#[derive(Clone, Debug)]
pub struct Download {
    /// Its sha256 digest.
    pub digest: Digest,
    /// The server's `Last-Modified` time, seconds since the epoch.
    pub last_modified: Option<i64>,
}

/// What a build needs from outside: base images (the CLI: the local store, pulling when
/// missing) and files from URLs.
pub trait Images: Send + Sync {
    /// The image `reference` for `platform`.
    fn base<'a>(
        &'a self,
        reference: &'a str,
        platform: &'a Platform,
    ) -> BoxFuture<'a, Result<BaseImage, String>>;

    /// Downloads `url` into the file `to`.
    fn fetch<'a>(&'a self, url: &'a str, to: &'a Path) -> BoxFuture<'a, Result<Download, String>>;
}

/// Whether an ADD source is a URL.
pub(crate) fn is_url(src: &str) -> bool {
    src.starts_with("http://") || src.starts_with("https://")
}

/// What to build.
pub struct BuildOptions {
    /// The Dockerfile's text.
    pub dockerfile: String,
    /// Its name, for errors.
    pub dockerfile_name: String,
    /// The context.
    pub context: Context,
    /// `--build-arg` values.
    pub build_args: Vec<(String, String)>,
    /// `--target`.
    pub target: Option<String>,
    /// `SOURCE_DATE_EPOCH`: clamps file times and sets `created`.
    pub source_date_epoch: Option<i64>,
    /// Layer compression.
    pub compression: Compression,
    /// The platform to build for (the host's).
    pub platform: Platform,
    /// A scratch directory for root filesystems and layers; removed by the caller.
    pub work_dir: PathBuf,
    /// The build cache: where step results are looked up (unless `no_cache`) and context file
    /// digests remembered.
    pub cache: Option<CacheAccess>,
    /// `--no-cache`: run every step (results are still recorded).
    pub no_cache: bool,
    /// `--build-context NAME=DIR`: directories `COPY --from=NAME` reads.
    pub named_contexts: BTreeMap<String, Context>,
    /// Where layer snapshots are kept (the store's), shared by builds.
    pub snapshots: Snapshots,
    /// Where `RUN --mount=type=cache` directories are kept between builds.
    pub cache_mounts: PathBuf,
    /// `--secret id=…`: what `RUN --mount=type=secret` gives, by id.
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// `--network`: RUN's network unless a RUN says otherwise.
    pub network: Network,
    /// `--allow network.host`: a RUN may use the host's network (BuildKit's entitlement).
    pub allow_network_host: bool,
    /// `--add-host NAME:ADDRESS`: extra `/etc/hosts` lines for RUN, as (name, address).
    pub add_hosts: Vec<(String, String)>,
}

/// The local store as the build cache, reached from the build's blocking thread.
#[derive(Clone)]
pub struct CacheAccess {
    /// The store.
    pub store: wharf_common::store::LocalStore,
    /// The runtime to reach it on.
    pub runtime: tokio::runtime::Handle,
    /// The build's lease: a cached layer is protected by it before it is used.
    pub lease: std::sync::Arc<wharf_common::store::Lease>,
}

/// A build that failed, and where.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile does not parse or check.
    #[error(transparent)]
    Dockerfile(#[from] DockerfileError),
    /// A step failed.
    #[error("{file}:{line}: {instruction}: {message}")]
    Step {
        /// The Dockerfile.
        file: String,
        /// The step's line.
        line: usize,
        /// The instruction as written.
        instruction: String,
        /// What went wrong.
        message: String,
    },
    /// A base image could not be had.
    #[error("{file}:{line}: {reference}: {message}")]
    Base {
        /// The Dockerfile.
        file: String,
        /// The FROM or COPY --from line.
        line: usize,
        /// The image.
        reference: String,
        /// Why.
        message: String,
    },
    /// The target stage does not exist.
    #[error("target stage {0:?} could not be found")]
    NoTarget(String),
}

/// Progress of a build, for the CLI to render.
#[derive(Clone, Debug)]
pub enum BuildEvent {
    /// A step starts: `[stage i/n] INSTRUCTION`.
    Step {
        /// The step's number in this build (`#N`), unique across stages.
        id: usize,
        /// Stage name or index.
        stage: String,
        /// 1-based step number within the stage (FROM is 1).
        index: usize,
        /// Steps in the stage.
        total: usize,
        /// The instruction as written.
        text: String,
    },
    /// Step `id` was found in the cache.
    Cached(usize),
    /// Step `id` finished after this long.
    Done(usize, std::time::Duration),
    /// A lint warning.
    Warning(Lint),
    /// A line step `id` printed (RUN's output).
    Output(usize, String),
    /// Something the user should know about how the build runs (said once).
    Notice(String),
}

/// Stopping a build (Ctrl-C): every running RUN is killed, and the build fails.
pub struct Cancel;

static CANCELLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static RUNNING: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// Removes a running sandbox from [`Cancel`]'s list when dropped.
pub(crate) struct Registered(i32);

impl Drop for Registered {
    fn drop(&mut self) {
        RUNNING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|p| *p != self.0);
    }
}

impl Cancel {
    /// Stops every build in this process: RUN steps are killed and fail as cancelled.
    pub fn cancel_all() {
        CANCELLED.store(true, std::sync::atomic::Ordering::SeqCst);
        for pid in RUNNING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            // SAFETY: kill has no memory preconditions; the pid is a sandbox not yet waited for.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
    }

    /// Whether [`Cancel::cancel_all`] was called.
    pub fn cancelled() -> bool {
        CANCELLED.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn register(pid: i32) -> Registered {
        let mut list = RUNNING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        list.push(pid);
        if Cancel::cancelled() {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        Registered(pid)
    }
}

/// The platform arguments every build defines.
fn platform_args(p: &Platform) -> Vec<(String, String)> {
    let full = match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    };
    let mut out = Vec::new();
    for prefix in ["BUILD", "TARGET"] {
        out.push((format!("{prefix}PLATFORM"), full.clone()));
        out.push((format!("{prefix}OS"), p.os.clone()));
        out.push((format!("{prefix}ARCH"), p.architecture.clone()));
        out.push((
            format!("{prefix}VARIANT"),
            p.variant.clone().unwrap_or_default(),
        ));
    }
    out
}

/// The PATH a stage gets when its base sets none.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// ARGs docker lets `--build-arg` set without a declaration.
const PREDEFINED: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// Builds the Dockerfile in `opts`, reporting through `events`.
pub async fn build(
    opts: BuildOptions,
    images: &dyn Images,
    events: Events,
) -> Result<Built, BuildError> {
    let df = instructions::parse(&opts.dockerfile, &opts.dockerfile_name)?;
    for l in &df.lints {
        (*events)(BuildEvent::Warning(l.clone()));
    }
    let file = opts.dockerfile_name.clone();
    let lexer = Lexer::new(df.escape);
    // Meta ARGs: defaults, overridden by --build-arg, plus the platform args.
    let mut meta: Vec<(String, String)> = platform_args(&opts.platform);
    for (name, default) in &df.meta_args {
        let value = opts
            .build_args
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| {
                default
                    .as_ref()
                    .and_then(|d| lexer.process_word(d, &meta).ok())
            });
        if let Some(v) = value {
            meta.push((name.clone(), v));
        }
    }
    // Stage bases (and --from names) are expanded with the ARGs before the first FROM, so
    // `FROM ${BASE}` can name a stage.
    let mut df = df;
    for stage in &mut df.stages {
        stage.base = lexer
            .process_word(&stage.base, &meta)
            .map_err(|e| step_error(&file, stage.location.line, &stage.original, e.to_string()))?;
        for step in &mut stage.steps {
            if let Instruction::Copy(c) = &mut step.instruction
                && let Some(f) = c.from.as_mut()
                && let Ok(expanded) = lexer.process_word(f, &meta)
            {
                *f = expanded;
            }
        }
    }
    let target = match &opts.target {
        Some(t) => df
            .stages
            .iter()
            .position(|s| s.name.as_deref() == Some(t.to_lowercase().as_str()))
            .ok_or_else(|| BuildError::NoTarget(t.clone()))?,
        None => df.stages.len() - 1,
    };
    let needed = needed_stages(&df, target);
    // Resolve every base and COPY --from image first: they are what can be slow.
    let mut bases: BTreeMap<String, BaseImage> = BTreeMap::new();
    for &i in &needed {
        let stage = &df.stages[i];
        let base = lexer
            .process_word(&stage.base, &meta)
            .map_err(|e| step_error(&file, stage.location.line, &stage.original, e.to_string()))?;
        let mut wanted = vec![(base, stage.location.line)];
        for step in &stage.steps {
            for from in step_sources(step) {
                let from = lexer.process_word(&from, &meta).unwrap_or(from);
                wanted.push((from, step.location.line));
            }
        }
        for (name, line) in wanted {
            let is_stage = stage_index(&df, &name, i).is_some();
            if is_stage
                || name == "scratch"
                || bases.contains_key(&name)
                || (line != stage.location.line && opts.named_contexts.contains_key(&name))
            {
                continue;
            }
            let img = images
                .base(&name, &opts.platform)
                .await
                .map_err(|message| BuildError::Base {
                    file: file.clone(),
                    line,
                    reference: name.clone(),
                    message,
                })?;
            bases.insert(name, img);
        }
    }
    // ADD's URLs are fetched up front too (and checked against --checksum), expanded with the
    // variables their step will have: the base's ENV, then the stage's ARG and ENV lines up to
    // the step (a stage built on another starts with that one's), as the step itself expands
    // them. Quotes are shell words, removed like any.
    let mut urls: BTreeMap<String, (PathBuf, Download)> = BTreeMap::new();
    let mut scopes: BTreeMap<usize, Vec<(String, String)>> = BTreeMap::new();
    for &i in &needed {
        let stage = &df.stages[i];
        let mut scope: Vec<(String, String)> = match stage_index(&df, &stage.base, i) {
            Some(j) => scopes.get(&j).cloned().unwrap_or_default(),
            None => bases
                .get(&stage.base)
                .and_then(|b| b.config.get("config"))
                .and_then(|c| c.get("Env"))
                .and_then(Value::as_array)
                .map(|env| {
                    env.iter()
                        .filter_map(|e| e.as_str()?.split_once('='))
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
        };
        for step in &stage.steps {
            match &step.instruction {
                Instruction::Arg(args) => {
                    for (name, default) in args {
                        let value = opts
                            .build_args
                            .iter()
                            .rev()
                            .find(|(k, _)| k == name)
                            .map(|(_, v)| v.clone())
                            .or_else(|| match default {
                                Some(d) => lexer.process_word(d, &scope).ok(),
                                None => meta
                                    .iter()
                                    .rev()
                                    .find(|(k, _)| k == name)
                                    .map(|(_, v)| v.clone()),
                            });
                        if let Some(v) = value {
                            scope.push((name.clone(), v));
                        }
                    }
                }
                Instruction::Env(pairs) => {
                    let before = scope.clone();
                    for (k, v) in pairs {
                        if let (Ok(k), Ok(v)) = (
                            lexer.process_word(k, &before),
                            lexer.process_word(v, &before),
                        ) {
                            scope.push((k, v));
                        }
                    }
                }
                _ => {}
            }
            let Instruction::Add(c) = &step.instruction else {
                continue;
            };
            for src in &c.sources {
                let Ok(url) = lexer.process_word(src, &scope) else {
                    continue;
                };
                if !is_url(&url) || urls.contains_key(&url) {
                    continue;
                }
                let dir = opts.work_dir.join("urls");
                std::fs::create_dir_all(&dir).map_err(|e| {
                    step_error(&file, step.location.line, &step.original, e.to_string())
                })?;
                let path = dir.join(urls.len().to_string());
                let got = images.fetch(&url, &path).await.map_err(|m| {
                    step_error(
                        &file,
                        step.location.line,
                        &step.original,
                        format!("fetching {url}: {m}"),
                    )
                })?;
                if let Some(want) = &c.checksum {
                    let want = lexer
                        .process_word(want, &scope)
                        .unwrap_or_else(|_| want.clone());
                    if want != got.digest.as_str() {
                        return Err(step_error(
                            &file,
                            step.location.line,
                            &step.original,
                            format!(
                                "{url}: content has digest {}, --checksum says {want}",
                                got.digest
                            ),
                        ));
                    }
                }
                urls.insert(url, (path, got));
            }
        }
        scopes.insert(i, scope);
    }
    let run = Run {
        urls,
        df,
        opts,
        meta,
        bases,
        lexer,
        events,
        new_layers: std::sync::Mutex::new(Vec::new()),
        cache_hits: std::sync::Mutex::new(Vec::new()),
        context_memo: std::sync::Mutex::new(BTreeMap::new()),
        step_ids: std::sync::atomic::AtomicUsize::new(0),
        from_views: std::sync::Mutex::new(BTreeMap::new()),
        context_view: std::sync::OnceLock::new(),
        network: std::sync::OnceLock::new(),
    };
    // The build's own thread, in a mount namespace of its own: the overlays it mounts are
    // seen by nobody else and go away with it, whatever happens.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("wharf-build".into())
        .spawn(move || {
            let result = match crate::snapshot::private_mounts() {
                Ok(()) => run.run_blocking(&needed, target),
                Err(message) => Err(BuildError::Step {
                    file: run.opts.dockerfile_name.clone(),
                    line: 0,
                    instruction: "preparing the build".into(),
                    message,
                }),
            };
            let _ = tx.send(result);
        });
    let failed = |message: String| BuildError::Step {
        file: file.clone(),
        line: 0,
        instruction: String::new(),
        message,
    };
    spawned.map_err(|e| failed(e.to_string()))?;
    rx.await
        .map_err(|_| failed("the build's thread ended without a result".into()))?
}

/// Where build events go.
pub type Events = std::sync::Arc<dyn Fn(BuildEvent) + Send + Sync>;

fn step_error(file: &str, line: usize, original: &str, message: String) -> BuildError {
    BuildError::Step {
        file: file.to_owned(),
        line,
        instruction: original.to_owned(),
        message,
    }
}

/// The index of the stage `name` (a name or a number) defined before stage `before`.
fn stage_index(df: &Dockerfile, name: &str, before: usize) -> Option<usize> {
    let lower = name.to_lowercase();
    if let Some(i) = df.stages[..before]
        .iter()
        .position(|s| s.name.as_deref() == Some(lower.as_str()))
    {
        return Some(i);
    }
    name.parse::<usize>().ok().filter(|i| *i < before)
}

/// What a step reads from another stage or image: COPY --from, RUN --mount=…,from=.
fn step_sources(step: &Step) -> Vec<String> {
    match &step.instruction {
        Instruction::Copy(c) | Instruction::Add(c) => c.from.iter().cloned().collect(),
        Instruction::Run(r) => r
            .mounts
            .iter()
            .flat_map(|m| m.split(','))
            .filter_map(|f| f.trim().strip_prefix("from="))
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// The earlier stages stage `i` reads (its FROM, its COPY --from, its RUN mounts from one).
fn stage_deps(df: &Dockerfile, i: usize) -> Vec<usize> {
    let s = &df.stages[i];
    let mut deps: Vec<usize> = stage_index(df, &s.base, i).into_iter().collect();
    for step in &s.steps {
        deps.extend(
            step_sources(step)
                .iter()
                .filter_map(|f| stage_index(df, f, i)),
        );
    }
    deps
}

/// The stages `target` depends on (FROM a stage, COPY --from a stage), and itself, in order.
fn needed_stages(df: &Dockerfile, target: usize) -> Vec<usize> {
    let mut needed = HashSet::new();
    let mut todo = vec![target];
    while let Some(i) = todo.pop() {
        if needed.insert(i) {
            todo.extend(stage_deps(df, i));
        }
    }
    let mut v: Vec<usize> = needed.into_iter().collect();
    v.sort_unstable();
    v
}

/// A layer of the image being built.
#[derive(Clone, Debug)]
pub(crate) enum Layer {
    /// From the base image, as stored, with its diff id.
    Base(BlobRef, PathBuf, Digest),
    /// Written by this build.
    New(WrittenLayer, PathBuf),
}

/// The state of one stage while it runs.
#[derive(Clone, Debug)]
pub(crate) struct StageState {
    /// The cache key of everything so far.
    pub key: Digest,
    /// A CMD came earlier in this stage (then ENTRYPOINT keeps it).
    pub cmd_set: bool,
    /// The time the image records for its latest change (seconds): the base's, then that of
    /// each layer step when it first ran, so a fully cached rebuild gives the same image.
    pub time: i64,
    pub image: Map<String, Value>,
    pub layers: Vec<Layer>,
    /// Where the stage's root is mounted, while [`Run::mount_root`]'s view is.
    pub rootfs: PathBuf,
    pub view: ViewSlot,
    /// ARGs declared in the stage, with their values.
    pub args: Vec<(String, String)>,
    /// The number (`#N`) of the step running, for its output.
    pub step_id: usize,
    /// Where each ENV name sits in the config's `Env` list; `None` until first used (and after
    /// the config is replaced). Keeps a Dockerfile of many ENV lines linear.
    pub env_index: Option<HashMap<String, usize>>,
}

/// The variables in scope for expansion: ENV over ARGs, as [`StageState::expansion_env`]
/// lists them, looked up without copying.
pub(crate) struct Scope<'a> {
    args: &'a [(String, String)],
    env: &'a [Value],
    index: &'a HashMap<String, usize>,
}

impl crate::dockerfile::shell::Env for Scope<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        if let Some(&i) = self.index.get(name) {
            return self
                .env
                .get(i)
                .and_then(Value::as_str)
                .and_then(|e| e.split_once('='))
                .map(|(_, v)| v);
        }
        self.args
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A stage's mounted root and the number of layers it shows; never cloned (a stage built on
/// another mounts its own).
#[derive(Debug, Default)]
pub(crate) struct ViewSlot(Option<(View, usize)>);

impl Clone for ViewSlot {
    fn clone(&self) -> ViewSlot {
        ViewSlot(None)
    }
}

impl Layer {
    fn diff_id(&self) -> &Digest {
        match self {
            Layer::Base(_, _, d) => d,
            Layer::New(w, _) => &w.diff_id,
        }
    }

    fn file(&self) -> &Path {
        match self {
            Layer::Base(_, p, _) | Layer::New(_, p) => p,
        }
    }
}

/// The layers of a stack as (chain id, layer file), bottom first.
fn chain_of(layers: &[Layer]) -> Vec<(Digest, PathBuf)> {
    let ids: Vec<Digest> = layers.iter().map(|l| l.diff_id().clone()).collect();
    crate::snapshot::chain_ids(&ids)
        .into_iter()
        .zip(layers.iter().map(|l| l.file().to_owned()))
        .collect()
}

impl BaseImage {
    /// Each layer's diff id, as the config lists them (the blob digest where it does not).
    pub fn diff_ids(&self) -> Vec<Digest> {
        let listed: Vec<Option<Digest>> = self
            .config
            .get("rootfs")
            .and_then(|r| r.get("diff_ids"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|v| v.as_str().and_then(|s| s.parse().ok()))
                    .collect()
            })
            .unwrap_or_default();
        self.layers
            .iter()
            .enumerate()
            .map(|(i, (b, _))| {
                listed
                    .get(i)
                    .cloned()
                    .flatten()
                    .unwrap_or_else(|| b.digest.clone())
            })
            .collect()
    }

    /// The layers as (chain id, layer file), bottom first: what snapshots are keyed by.
    pub fn chain(&self) -> Vec<(Digest, PathBuf)> {
        chain_of(&base_layers(self))
    }
}

/// A base image's layers, with their diff ids.
fn base_layers(img: &BaseImage) -> Vec<Layer> {
    img.layers
        .iter()
        .zip(img.diff_ids())
        .map(|((b, p), d)| Layer::Base(b.clone(), p.clone(), d))
        .collect()
}

impl StageState {
    pub(crate) fn config(&mut self) -> &mut Map<String, Value> {
        let c = self
            .image
            .entry("config")
            .or_insert_with(|| Value::Object(Map::new()));
        if !c.is_object() {
            *c = Value::Object(Map::new());
        }
        c.as_object_mut()
            .unwrap_or_else(|| unreachable!("made an object above"))
    }

    /// The config's `Env` list, and an index of it by name.
    fn env_list(&mut self) -> (&mut Vec<Value>, &mut HashMap<String, usize>) {
        let config = self
            .image
            .entry("config")
            .or_insert_with(|| Value::Object(Map::new()));
        if !config.is_object() {
            *config = Value::Object(Map::new());
        }
        let list = config
            .as_object_mut()
            .unwrap_or_else(|| unreachable!("made an object above"))
            .entry("Env")
            .or_insert_with(|| json!([]));
        if !list.is_array() {
            *list = json!([]);
            self.env_index = None;
        }
        let list = list
            .as_array_mut()
            .unwrap_or_else(|| unreachable!("made an array above"));
        let index = self.env_index.get_or_insert_with(|| {
            let mut index = HashMap::new();
            for (i, e) in list.iter().enumerate() {
                if let Some((k, _)) = e.as_str().and_then(|e| e.split_once('=')) {
                    index.insert(k.to_owned(), i);
                }
            }
            index
        });
        (list, index)
    }

    /// Sets an ENV variable in place (or appends it), as docker does.
    pub(crate) fn set_env(&mut self, key: &str, value: &str) {
        let (list, index) = self.env_list();
        let entry = json!(format!("{key}={value}"));
        match index.get(key) {
            Some(&i) if i < list.len() => list[i] = entry,
            _ => {
                index.insert(key.to_owned(), list.len());
                list.push(entry);
            }
        }
    }

    /// The variables words are expanded with (see [`Scope`]).
    pub(crate) fn scope(&mut self) -> Scope<'_> {
        self.env_list();
        let env = self
            .image
            .get("config")
            .and_then(|c| c.get("Env"))
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        Scope {
            args: &self.args,
            env,
            index: self
                .env_index
                .as_ref()
                .unwrap_or_else(|| unreachable!("env_list made the index")),
        }
    }

    /// The environment variables words are expanded with: ARGs, then ENV over them.
    pub(crate) fn expansion_env(&mut self) -> Vec<(String, String)> {
        let mut env = self.args.clone();
        if let Some(list) = self.config().get("Env").and_then(Value::as_array) {
            for e in list.iter().filter_map(Value::as_str) {
                if let Some((k, v)) = e.split_once('=') {
                    env.push((k.to_owned(), v.to_owned()));
                }
            }
        }
        env
    }

    pub(crate) fn workdir(&mut self) -> String {
        self.config()
            .get("WorkingDir")
            .and_then(Value::as_str)
            .filter(|w| !w.is_empty())
            .unwrap_or("/")
            .to_owned()
    }

    fn shell(&mut self) -> Vec<String> {
        self.config()
            .get("Shell")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .filter(|v: &Vec<String>| !v.is_empty())
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }
}

struct Run {
    /// ADD's URLs, fetched.
    urls: BTreeMap<String, (PathBuf, Download)>,
    df: Dockerfile,
    opts: BuildOptions,
    meta: Vec<(String, String)>,
    bases: BTreeMap<String, BaseImage>,
    lexer: Lexer,
    events: Events,
    /// Layers this build wrote, with their step keys, for the cache.
    new_layers: std::sync::Mutex<Vec<NewLayer>>,
    /// Cache entries used.
    cache_hits: std::sync::Mutex<Vec<Digest>>,
    /// Remembered context file digests, per context root.
    context_memo: std::sync::Mutex<BTreeMap<String, ContextDigests>>,
    /// Numbers steps across stages running at once.
    step_ids: std::sync::atomic::AtomicUsize,
    /// Read-only roots of stages and images that COPY --from and RUN --mount read.
    from_views: std::sync::Mutex<BTreeMap<String, View>>,
    /// The context less what `.dockerignore` leaves out, for RUN's bind mounts: made on the
    /// first one that needs it.
    context_view: std::sync::OnceLock<Result<crate::context::view::FilteredView, String>>,
    /// The network namespace (and NAT) RUN steps on the default network share, made on the
    /// first one.
    network: std::sync::OnceLock<Result<std::sync::Arc<crate::sandbox::SharedNetwork>, String>>,
}

impl Run {
    fn run_blocking(self, needed: &[usize], target: usize) -> Result<Built, BuildError> {
        let mut done: BTreeMap<usize, StageState> = BTreeMap::new();
        let mut pending: Vec<usize> = needed.to_vec();
        // Stages whose dependencies are all built run at the same time.
        while !pending.is_empty() {
            let (ready, wait): (Vec<usize>, Vec<usize>) = pending
                .iter()
                .partition(|&&i| stage_deps(&self.df, i).iter().all(|d| done.contains_key(d)));
            if ready.is_empty() {
                return Err(step_error(
                    &self.opts.dockerfile_name,
                    0,
                    "scheduling stages",
                    "stages depend on each other in a cycle".into(),
                ));
            }
            let results: Vec<(usize, Result<StageState, BuildError>)> =
                std::thread::scope(|scope| {
                    let handles: Vec<_> = ready
                        .iter()
                        .map(|&i| {
                            let done = &done;
                            let run = &self;
                            (i, scope.spawn(move || run.run_stage(i, done)))
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|(i, h)| {
                            (
                                i,
                                h.join().unwrap_or_else(|_| {
                                    Err(step_error(
                                        &self.opts.dockerfile_name,
                                        0,
                                        "running a stage",
                                        "the stage's thread panicked".into(),
                                    ))
                                }),
                            )
                        })
                        .collect()
                });
            for (i, r) in results {
                done.insert(i, r?);
            }
            pending = wait;
        }
        let state = done
            .remove(&target)
            .unwrap_or_else(|| unreachable!("the target stage ran"));
        let new_layers = std::mem::take(
            &mut *self
                .new_layers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let hits = std::mem::take(
            &mut *self
                .cache_hits
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        output::assemble(state, &self.opts, new_layers, hits).map_err(|e| {
            step_error(
                &self.opts.dockerfile_name,
                0,
                "exporting the image",
                e.to_string(),
            )
        })
    }

    fn run_stage(
        &self,
        i: usize,
        done: &BTreeMap<usize, StageState>,
    ) -> Result<StageState, BuildError> {
        let stage = &self.df.stages[i];
        let file = &self.opts.dockerfile_name;
        let label = stage.name.clone().unwrap_or_else(|| format!("stage-{i}"));
        let total = stage.steps.len() + 1;
        let emit = |e: BuildEvent| (*self.events)(e);
        let next_id = || {
            self.step_ids
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1
        };
        let from_id = next_id();
        let from_started = std::time::Instant::now();
        emit(BuildEvent::Step {
            id: from_id,
            stage: label.clone(),
            index: 1,
            total,
            text: stage.original.clone(),
        });
        let base = self
            .lexer
            .process_word(&stage.base, &self.meta)
            .map_err(|e| step_error(file, stage.location.line, &stage.original, e.to_string()))?;
        if let Some(p) = &stage.platform {
            let p = self.lexer.process_word(p, &self.meta).map_err(|e| {
                step_error(file, stage.location.line, &stage.original, e.to_string())
            })?;
            let host = &self.opts.platform;
            let mut parts = p.split('/');
            if parts.next() != Some(host.os.as_str())
                || parts.next() != Some(host.architecture.as_str())
            {
                return Err(step_error(
                    file,
                    stage.location.line,
                    &stage.original,
                    format!(
                        "--platform={p}: only the host's platform ({}/{}) can be built here",
                        host.os, host.architecture
                    ),
                ));
            }
        }
        let rootfs = PathBuf::new();
        let mut state = match stage_index(&self.df, &base, i) {
            Some(j) => {
                let parent = done
                    .get(&j)
                    .unwrap_or_else(|| unreachable!("stages run in order"));
                StageState {
                    rootfs,
                    cmd_set: false,
                    // ARGs of the stage built on carry over.
                    args: parent.args.clone(),
                    key: key_of(&[parent.key.as_str(), "stage"]),
                    ..parent.clone()
                }
            }
            None if base == "scratch" => {
                // BuildKit's empty image: WorkingDir "/" (and a PATH, added below).
                let mut image = Map::new();
                image.insert("config".into(), json!({"WorkingDir": "/"}));
                StageState {
                    cmd_set: false,
                    time: 0,
                    key: key_of(&["scratch"]),
                    image,
                    layers: Vec::new(),
                    rootfs,
                    view: ViewSlot::default(),
                    args: Vec::new(),
                    step_id: from_id,
                    env_index: None,
                }
            }
            None => {
                let img = self
                    .bases
                    .get(&base)
                    .unwrap_or_else(|| unreachable!("bases resolved first"));
                let mut image = img.config.as_object().cloned().unwrap_or_default();
                // ONBUILD triggers of the base run first.
                let triggers: Vec<String> = image
                    .get("config")
                    .and_then(|c| c.get("OnBuild"))
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|t| t.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                if let Some(c) = image.get_mut("config").and_then(Value::as_object_mut) {
                    c.remove("OnBuild");
                }
                let mut ids: Vec<&str> = vec!["image"];
                let config_text = img.config.to_string();
                ids.push(&config_text);
                ids.extend(img.layers.iter().map(|(b, _)| b.digest.as_str()));
                let time = img
                    .config
                    .get("created")
                    .and_then(Value::as_str)
                    .and_then(wharf_common::time::parse_rfc3339)
                    .unwrap_or(0);
                let mut s = StageState {
                    cmd_set: false,
                    time,
                    key: key_of(&ids),
                    image,
                    layers: base_layers(img),
                    rootfs,
                    view: ViewSlot::default(),
                    args: Vec::new(),
                    step_id: from_id,
                    env_index: None,
                };
                for t in triggers {
                    let parsed = instructions::parse(&format!("FROM scratch\n{t}\n"), "ONBUILD")
                        .map_err(|e| {
                            step_error(
                                file,
                                stage.location.line,
                                &stage.original,
                                format!("ONBUILD trigger {t:?}: {}", e.message),
                            )
                        })?;
                    for step in &parsed.stages[0].steps {
                        self.step(&mut s, step, done, i).map_err(|m| {
                            step_error(file, stage.location.line, &format!("ONBUILD {t}"), m)
                        })?;
                    }
                }
                s
            }
        };
        self.set_platform(&mut state);
        emit(BuildEvent::Done(from_id, from_started.elapsed()));
        // As BuildKit does: every stage has a PATH, scratch ones included.
        let has_path = state
            .config()
            .get("Env")
            .and_then(Value::as_array)
            .is_some_and(|a| {
                a.iter()
                    .any(|e| e.as_str().is_some_and(|s| s.starts_with("PATH=")))
            });
        if !has_path {
            state.set_env("PATH", DEFAULT_PATH);
        }
        // Proxy ARGs need no declaration.
        for (k, v) in &self.opts.build_args {
            if PREDEFINED.contains(&k.as_str()) {
                state.args.push((k.clone(), v.clone()));
            }
        }
        for (n, step) in stage.steps.iter().enumerate() {
            let id = next_id();
            emit(BuildEvent::Step {
                id,
                stage: label.clone(),
                index: n + 2,
                total,
                text: step.original.clone(),
            });
            let started = std::time::Instant::now();
            state.step_id = id;
            if Cancel::cancelled() {
                return Err(step_error(
                    file,
                    step.location.line,
                    &step.original,
                    "cancelled".into(),
                ));
            }
            let cached = self
                .step(&mut state, step, done, i)
                .map_err(|m| step_error(file, step.location.line, &step.original, m))?;
            emit(if cached {
                BuildEvent::Cached(id)
            } else {
                BuildEvent::Done(id, started.elapsed())
            });
        }
        Ok(state)
    }

    fn set_platform(&self, s: &mut StageState) {
        let p = &self.opts.platform;
        s.image.insert("architecture".into(), json!(p.architecture));
        s.image.insert("os".into(), json!(p.os));
        match &p.variant {
            Some(v) => {
                s.image.insert("variant".into(), json!(v));
            }
            None => {
                s.image.remove("variant");
            }
        }
    }

    fn history(&self, s: &mut StageState, created_by: String, empty_layer: bool) {
        let mut h = json!({
            "created": rfc3339(self.opts.source_date_epoch.unwrap_or(s.time)),
            "created_by": created_by,
            "comment": "buildkit.dockerfile.v0",
        });
        if empty_layer {
            h["empty_layer"] = json!(true);
        }
        let list = s.image.entry("history").or_insert_with(|| json!([]));
        if let Some(a) = list.as_array_mut() {
            a.push(h);
        }
    }

    fn expand(&self, s: &mut StageState, word: &str) -> Result<String, String> {
        self.lexer
            .process_word(word, &s.scope())
            .map_err(|e| e.to_string())
    }

    /// Runs one step; returns whether its result came from the cache.
    fn step(
        &self,
        s: &mut StageState,
        step: &Step,
        done: &BTreeMap<usize, StageState>,
        stage: usize,
    ) -> Result<bool, String> {
        let (args_before, layers_before) = (s.args.len(), s.layers.len());
        let cached = self.step_inner(s, step, done, stage)?;
        // Everything a later step could depend on goes into the chain: the step as written, the
        // ARG values it set (`--build-arg`s are not in the text) and the layers it made. The
        // config follows from those and the base's, which the stage's first key holds; adding
        // only what this step changed keeps the key's cost independent of the stage's length.
        let args = serde_json::to_string(s.args.get(args_before..).unwrap_or_default())
            .unwrap_or_default();
        let layers: Vec<&str> = s
            .layers
            .get(layers_before..)
            .unwrap_or_default()
            .iter()
            .map(|l| match l {
                Layer::Base(b, _, _) => b.digest.as_str(),
                Layer::New(w, _) => w.diff_id.as_str(),
            })
            .collect();
        s.key = key_of(&[s.key.as_str(), &step.original, &args, &layers.join(",")]);
        Ok(cached)
    }

    fn step_inner(
        &self,
        s: &mut StageState,
        step: &Step,
        done: &BTreeMap<usize, StageState>,
        stage: usize,
    ) -> Result<bool, String> {
        match &step.instruction {
            Instruction::Arg(args) => {
                for (name, default) in args {
                    let value = self
                        .opts
                        .build_args
                        .iter()
                        .rev()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                        .or_else(|| {
                            // A meta ARG re-declared without a default takes the meta value.
                            default
                                .is_none()
                                .then(|| {
                                    self.meta
                                        .iter()
                                        .rev()
                                        .find(|(k, _)| k == name)
                                        .map(|(_, v)| v.clone())
                                })
                                .flatten()
                        });
                    let value = match (value, default) {
                        (Some(v), _) => Some(v),
                        (None, Some(d)) => Some(self.expand(s, d)?),
                        (None, None) => None,
                    };
                    if let Some(v) = value {
                        s.args.push((name.clone(), v));
                    }
                }
                let text = args.iter().map(|(k, d)| match d {
                    Some(d) => format!("{k}={d}"),
                    None => k.clone(),
                });
                self.history(
                    s,
                    format!("ARG {}", text.collect::<Vec<_>>().join(" ")),
                    true,
                );
            }
            Instruction::Env(pairs) => {
                // Every pair sees the environment from before this ENV, as Docker documents.
                let mut expanded = Vec::new();
                let mut values = Vec::new();
                let env = s.scope();
                for (k, v) in pairs {
                    let k = self
                        .lexer
                        .process_word(k, &env)
                        .map_err(|e| e.to_string())?;
                    let v = self
                        .lexer
                        .process_word(v, &env)
                        .map_err(|e| e.to_string())?;
                    expanded.push(format!("{k}={v}"));
                    values.push((k, v));
                }
                for (k, v) in values {
                    s.set_env(&k, &v);
                }
                self.history(s, format!("ENV {}", expanded.join(" ")), true);
            }
            Instruction::Label(pairs) => {
                let mut expanded = Vec::new();
                for (k, v) in pairs {
                    let k = self.expand(s, k)?;
                    let v = self.expand(s, v)?;
                    let labels = s.config().entry("Labels").or_insert_with(|| json!({}));
                    if !labels.is_object() {
                        *labels = json!({});
                    }
                    labels[&k] = json!(v);
                    expanded.push(format!("{k}={v}"));
                }
                self.history(s, format!("LABEL {}", expanded.join(" ")), true);
            }
            Instruction::Maintainer(m) => {
                let m = self.expand(s, m)?;
                s.image.insert("author".into(), json!(m));
                self.history(s, format!("MAINTAINER {m}"), true);
            }
            Instruction::Expose(ports) => {
                let mut list = Vec::new();
                for p in ports {
                    for word in self.expand(s, p)?.split_whitespace() {
                        let port = if word.contains('/') {
                            word.to_lowercase()
                        } else {
                            format!("{word}/tcp")
                        };
                        let (num, proto) = port.split_once('/').unwrap_or((&port, "tcp"));
                        let bad = || {
                            format!(
                                "invalid port {word:?}: expected <port>[-<port>][/tcp|udp|sctp]"
                            )
                        };
                        if !matches!(proto, "tcp" | "udp" | "sctp") {
                            return Err(bad());
                        }
                        // A range is every port in it, as docker records it.
                        let (lo, hi) = match num.split_once('-') {
                            Some((a, b)) => (
                                a.parse::<u16>().map_err(|_| bad())?,
                                b.parse::<u16>().map_err(|_| bad())?,
                            ),
                            None => {
                                let p = num.parse::<u16>().map_err(|_| bad())?;
                                (p, p)
                            }
                        };
                        if lo > hi {
                            return Err(bad());
                        }
                        for p in lo..=hi {
                            list.push(format!("{p}/{proto}"));
                        }
                    }
                }
                let exposed = s
                    .config()
                    .entry("ExposedPorts")
                    .or_insert_with(|| json!({}));
                if !exposed.is_object() {
                    *exposed = json!({});
                }
                for p in &list {
                    exposed[p] = json!({});
                }
                // Go prints a map with its keys sorted.
                list.sort();
                list.dedup();
                let shown: Vec<String> = list.iter().map(|p| format!("{p}:{{}}")).collect();
                self.history(s, format!("EXPOSE map[{}]", shown.join(" ")), true);
            }
            Instruction::Cmd(c) | Instruction::Entrypoint(c) => {
                let is_cmd = matches!(step.instruction, Instruction::Cmd(_));
                let argv = match c {
                    CommandLine::Exec(v) => v.clone(),
                    CommandLine::Shell(cmd) => {
                        let mut v = s.shell();
                        v.push(cmd.clone());
                        v
                    }
                };
                let key = if is_cmd { "Cmd" } else { "Entrypoint" };
                s.config().insert(key.into(), json!(argv));
                if is_cmd {
                    s.cmd_set = true;
                    // BuildKit marks every CMD so (a field docker's image spec keeps).
                    s.config().insert("ArgsEscaped".into(), json!(true));
                } else if !s.cmd_set {
                    // ENTRYPOINT resets a CMD inherited from the base.
                    s.config().insert("Cmd".into(), Value::Null);
                }
                let word = if is_cmd { "CMD" } else { "ENTRYPOINT" };
                // BuildKit records Go's %q of the list: ["a" "b"].
                self.history(s, format!("{word} {}", go_list(&argv)), true);
            }
            Instruction::Shell(v) => {
                s.config().insert("Shell".into(), json!(v));
                self.history(
                    s,
                    format!("SHELL {}", serde_json::to_string(v).unwrap_or_default()),
                    true,
                );
            }
            Instruction::User(u) => {
                let u = self.expand(s, u)?;
                s.config().insert("User".into(), json!(u));
                self.history(s, format!("USER {u}"), true);
            }
            Instruction::StopSignal(sig) => {
                let sig = self.expand(s, sig)?;
                check_signal(&sig)?;
                s.config().insert("StopSignal".into(), json!(sig));
                self.history(s, format!("STOPSIGNAL {sig}"), true);
            }
            Instruction::Volume(paths) => {
                let mut list = Vec::new();
                for p in paths {
                    let p = self.expand(s, p)?;
                    if p.is_empty() {
                        return Err("VOLUME specified can not be an empty string".into());
                    }
                    list.push(p);
                }
                let vols = s.config().entry("Volumes").or_insert_with(|| json!({}));
                if !vols.is_object() {
                    *vols = json!({});
                }
                for p in &list {
                    vols[p] = json!({});
                }
                self.history(
                    s,
                    format!(
                        "VOLUME {}",
                        serde_json::to_string(&list).unwrap_or_default()
                    ),
                    true,
                );
            }
            Instruction::Workdir(w) => {
                let w = self.expand(s, w)?;
                let current = s.workdir();
                // BuildKit records an absolute path as written (`/app/` keeps its slash) and
                // joins a relative one onto the current directory, cleaned.
                let recorded = if w.starts_with('/') {
                    w.clone()
                } else {
                    clean_abs(&format!("{current}/{w}"))
                };
                let path = clean_abs(&recorded);
                s.config().insert("WorkingDir".into(), json!(recorded));
                // Created as the image's USER, as BuildKit does.
                let user = s
                    .config()
                    .get("User")
                    .and_then(Value::as_str)
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned);
                let key = key_of(&[
                    s.key.as_str(),
                    "workdir",
                    &recorded,
                    user.as_deref().unwrap_or(""),
                    &self.layer_options(),
                ]);
                if let Some((layer, file, _)) = self.cached_layer(&key) {
                    s.layers.push(Layer::New(layer, file));
                    self.history(s, format!("WORKDIR {recorded}"), false);
                    return Ok(true);
                }
                self.mount_root(s)?;
                let owner = user.and_then(|u| copy::resolve_owner(&s.rootfs, &u).ok());
                let created = copy::mkdir_p(s, &path, owner, 0o755).map_err(|e| e.to_string())?;
                // A layer even when the directory was there (an empty one), as BuildKit makes.
                copy::commit_layer(s, created, &self.opts).map_err(|e| e.to_string())?;
                self.record(&key, s);
                self.commit_root(s)?;
                self.history(s, format!("WORKDIR {recorded}"), false);
            }
            Instruction::Healthcheck(h) => {
                let value = match h {
                    Healthcheck::None => json!({"Test": ["NONE"]}),
                    Healthcheck::Cmd {
                        command,
                        interval,
                        timeout,
                        start_period,
                        start_interval,
                        retries,
                    } => {
                        let test = match command {
                            CommandLine::Exec(v) => std::iter::once("CMD".to_owned())
                                .chain(v.iter().cloned())
                                .collect::<Vec<_>>(),
                            CommandLine::Shell(c) => vec!["CMD-SHELL".to_owned(), c.clone()],
                        };
                        let mut v = json!({"Test": test});
                        for (key, d) in [
                            ("Interval", interval),
                            ("Timeout", timeout),
                            ("StartPeriod", start_period),
                            ("StartInterval", start_interval),
                        ] {
                            if let Some(d) = d {
                                v[key] = json!(parse_duration_ns(d)?);
                            }
                        }
                        if let Some(r) = retries {
                            v["Retries"] = json!(r);
                        }
                        v
                    }
                };
                s.config().insert("Healthcheck".into(), value.clone());
                self.history(
                    s,
                    format!(
                        "HEALTHCHECK {}",
                        step.original
                            .split_once(char::is_whitespace)
                            .map_or("", |x| x.1)
                            .trim()
                    ),
                    true,
                );
            }
            Instruction::Onbuild(trigger) => {
                let list = s.config().entry("OnBuild").or_insert_with(|| json!([]));
                if !list.is_array() {
                    *list = json!([]);
                }
                if let Some(a) = list.as_array_mut() {
                    a.push(json!(trigger));
                }
                self.history(s, format!("ONBUILD {trigger}"), true);
            }
            Instruction::Copy(c) | Instruction::Add(c) => {
                let add = matches!(step.instruction, Instruction::Add(_));
                let from_name = match &c.from {
                    Some(f) => Some(self.expand(s, f)?),
                    None => None,
                };
                let named = from_name
                    .as_ref()
                    .filter(|f| stage_index(&self.df, f, stage).is_none())
                    .and_then(|f| self.opts.named_contexts.get(f));
                // Another stage's or an image's root, mounted only if the step runs.
                let from_root_name = match (&from_name, named) {
                    (Some(f), None) => Some(f.clone()),
                    _ => None,
                };
                let word = if add { "ADD" } else { "COPY" };
                // BuildKit's history: the sources and the destination, expanded, no flags.
                let mut shown = Vec::new();
                for w in c.sources.iter().chain(std::iter::once(&c.dest)) {
                    shown.push(if w.starts_with("<<") {
                        w.clone()
                    } else {
                        self.expand(s, w)?
                    });
                }
                let args = shown.join(" ");
                // The key: the chain so far, the instruction, and what its sources hold.
                let sources = match (&from_root_name, named) {
                    (Some(f), _) => {
                        match stage_index(&self.df, f, stage).and_then(|j| done.get(&j)) {
                            Some(d) => d.key.to_string(),
                            None => match self.bases.get(f) {
                                Some(img) => {
                                    let config = img.config.to_string();
                                    let mut parts = vec!["image", config.as_str()];
                                    parts.extend(img.layers.iter().map(|(b, _)| b.digest.as_str()));
                                    key_of(&parts).to_string()
                                }
                                None => format!("image {f}"),
                            },
                        }
                    }
                    (None, Some(ctx)) => {
                        format!("context {}", self.context_checksum(s, c, ctx)?)
                    }
                    _ => self.context_checksum(s, c, &self.opts.context)?.to_string(),
                };
                let env = serde_json::to_string(&s.expansion_env()).unwrap_or_default();
                let workdir = s.workdir();
                let layer_opts = self.layer_options();
                let key = key_of(&[
                    s.key.as_str(),
                    &step.original,
                    &sources,
                    &env,
                    &workdir,
                    &layer_opts,
                ]);
                if let Some((layer, path, created_at)) = self.cached_layer(&key) {
                    s.layers.push(Layer::New(layer, path));
                    s.time = created_at;
                    self.history(s, format!("{word} {args} # buildkit"), false);
                    return Ok(true);
                }
                let from_root = match &from_root_name {
                    Some(f) => Some(self.other_root(f, stage, done)?),
                    None => None,
                };
                let from = match (&from_root, named) {
                    (Some(root), _) => Some(copy::From::Root(root)),
                    (None, Some(ctx)) => Some(copy::From::Context(ctx)),
                    (None, None) => None,
                };
                self.mount_root(s)?;
                let entries = copy::copy(self, s, c, add, from)?;
                copy::commit_layer(s, entries, &self.opts).map_err(|e| e.to_string())?;
                self.commit_root(s)?;
                s.time = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
                self.record(&key, s);
                self.history(s, format!("{word} {args} # buildkit"), false);
            }
            Instruction::Run(r) => return run::run(self, s, r, done, stage),
        }
        Ok(false)
    }

    /// What a layer's bytes depend on besides its files, for cache keys.
    pub(crate) fn layer_options(&self) -> String {
        format!(
            "{:?} {:?}",
            self.opts.source_date_epoch, self.opts.compression
        )
    }

    /// Remembers the layer the step keyed `key` just wrote (the stage's newest), for the cache.
    pub(crate) fn record(&self, key: &Digest, s: &StageState) {
        if let Some(Layer::New(w, p)) = s.layers.last() {
            self.new_layers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((key.clone(), w.clone(), p.clone(), s.time));
        }
    }

    /// Mounts the stage's root (its layers' snapshots under a fresh upper directory) at
    /// `s.rootfs`, unless it is mounted already.
    pub(crate) fn mount_root(&self, s: &mut StageState) -> Result<(), String> {
        if s.view.0.as_ref().is_some_and(|(_, n)| *n == s.layers.len()) {
            return Ok(());
        }
        s.view.0 = None;
        let (view, notice) = View::mount(&self.opts.snapshots, &chain_of(&s.layers), true)?;
        if let Some(n) = notice {
            (*self.events)(BuildEvent::Notice(n));
        }
        s.rootfs = view.root().to_owned();
        s.view.0 = Some((view, s.layers.len()));
        Ok(())
    }

    /// After a step added a layer: what the step changed (the view's upper directory)
    /// becomes that layer's snapshot.
    pub(crate) fn commit_root(&self, s: &mut StageState) -> Result<(), String> {
        if let Some((view, _)) = s.view.0.take()
            && let Some((chain, _)) = chain_of(&s.layers).pop()
            && let Some(kept) = view.commit(&self.opts.snapshots, &chain)?
        {
            // A copy already shows the new layer.
            s.view.0 = Some((kept, s.layers.len()));
            return Ok(());
        }
        s.rootfs = PathBuf::new();
        Ok(())
    }

    /// The root of an earlier stage or of an image (`--from`), mounted read-only once.
    pub(crate) fn other_root(
        &self,
        name: &str,
        stage: usize,
        done: &BTreeMap<usize, StageState>,
    ) -> Result<PathBuf, String> {
        let (key, layers) = match stage_index(&self.df, name, stage) {
            Some(j) => (
                format!("stage {j}"),
                done.get(&j)
                    .map(|d| d.layers.clone())
                    .ok_or_else(|| format!("stage {name} did not run"))?,
            ),
            None => (
                format!("image {name}"),
                base_layers(
                    self.bases
                        .get(name)
                        .ok_or_else(|| format!("image {name} was not resolved"))?,
                ),
            ),
        };
        // Under a lock: stages run in parallel and may ask for the same one.
        let mut views = self
            .from_views
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(v) = views.get(&key) {
            return Ok(v.root().to_owned());
        }
        let (view, notice) = View::mount(&self.opts.snapshots, &chain_of(&layers), false)?;
        if let Some(n) = notice {
            (*self.events)(BuildEvent::Notice(n));
        }
        let root = view.root().to_owned();
        views.insert(key, view);
        Ok(root)
    }

    /// The cached layer for `key`, unless the cache is off.
    fn cached_layer(&self, key: &Digest) -> Option<(WrittenLayer, PathBuf, i64)> {
        if self.opts.no_cache {
            return None;
        }
        let cache = self.opts.cache.as_ref()?;
        let entry = cache.runtime.block_on(cache.store.cache_get(key)).ok()??;
        // Protected, then checked: a prune beside the build then spares it, or it was gone
        // already and this is a miss.
        cache
            .runtime
            .block_on(cache.lease.protect(&entry.layer))
            .ok()?;
        cache.store.blob_path(&entry.layer).exists().then_some(())?;
        self.cache_hits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(key.clone());
        let path = cache.store.blob_path(&entry.layer);
        let media_type = match entry.media_type.as_str() {
            wharf_common::media_type::OCI_LAYER_GZIP => wharf_common::media_type::OCI_LAYER_GZIP,
            wharf_common::media_type::OCI_LAYER_ZSTD => wharf_common::media_type::OCI_LAYER_ZSTD,
            _ => wharf_common::media_type::OCI_LAYER,
        };
        Some((
            WrittenLayer {
                diff_id: entry.diff_id,
                digest: entry.layer,
                size: entry.size,
                media_type,
            },
            path,
            entry.created_at,
        ))
    }

    /// A digest of exactly what a COPY/ADD from the context selects: paths, types, modes,
    /// sizes, link targets and contents, never times. File contents are hashed once per
    /// (device, inode, size, mtime) and remembered in the store.
    fn context_checksum(
        &self,
        s: &mut StageState,
        c: &instructions::CopySpec,
        ctx: &Context,
    ) -> Result<Digest, String> {
        use std::os::unix::fs::MetadataExt;
        let env = s.expansion_env();
        let excludes = crate::context::ignore::Patterns::from_list(&c.exclude);
        let mut lines: Vec<String> = Vec::new();
        let mut remember = Vec::new();
        // (context-relative path, path relative to the source it was found under; empty for a
        // source itself): --exclude applies to the second, .dockerignore to the first.
        let mut stack: Vec<(String, String)> = Vec::new();
        for h in &c.heredocs {
            lines.push(format!("heredoc {} {} {}", h.name, h.expand, h.content));
        }
        for src in &c.sources {
            if src.starts_with("<<") {
                continue;
            }
            let src = self
                .lexer
                .process_word(src, &env)
                .map_err(|e| e.to_string())?;
            if is_url(&src) {
                let digest = self
                    .urls
                    .get(&src)
                    .map(|(_, d)| d.digest.to_string())
                    .unwrap_or_default();
                lines.push(format!("url {src} {digest}"));
                continue;
            }
            let mut matched = ctx.select(&src).map_err(|e| e.to_string())?;
            matched.reverse();
            stack.extend(matched.into_iter().map(|m| (m, String::new())));
            lines.push(format!("source {src}"));
        }
        while let Some((rel, src_rel)) = stack.pop() {
            let excluded_by_flag = if src_rel.is_empty() { &rel } else { &src_rel };
            if !excludes.is_empty() && excludes.excludes(excluded_by_flag) {
                continue;
            }
            // A source itself is followed if it is a link (COPY copies what it points at); what
            // .dockerignore leaves out is not there, wherever a link led.
            let disk = match ctx.resolve(&rel, src_rel.is_empty()) {
                Ok(d) => d,
                Err(crate::context::ContextError::NotFound { .. }) if !src_rel.is_empty() => {
                    continue;
                }
                Err(e) => return Err(e.to_string()),
            };
            let meta = std::fs::symlink_metadata(&disk).map_err(|e| format!("{rel}: {e}"))?;
            let mode = meta.mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&disk).map_err(|e| e.to_string())?;
                lines.push(format!("link {rel} {mode:o} {}", target.display()));
            } else if meta.is_dir() {
                lines.push(format!("dir {rel} {mode:o}"));
                let mut names: Vec<String> = std::fs::read_dir(&disk)
                    .map_err(|e| format!("{rel}: {e}"))?
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect();
                names.sort();
                for n in names.into_iter().rev() {
                    let child = if rel == "." {
                        n.clone()
                    } else {
                        format!("{rel}/{n}")
                    };
                    let child_src = if src_rel.is_empty() {
                        n
                    } else {
                        format!("{src_rel}/{n}")
                    };
                    stack.push((child, child_src));
                }
            } else {
                let stamp = wharf_common::store::FileStamp {
                    dev: meta.dev(),
                    ino: meta.ino(),
                    size: meta.len(),
                    mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                };
                let abs = disk.to_string_lossy().into_owned();
                let known = self.remembered(ctx, &abs, stamp);
                let digest = match known {
                    Some(d) => d,
                    None => {
                        let d = hash_file(&disk).map_err(|e| format!("{rel}: {e}"))?;
                        remember.push((abs, stamp, d.clone()));
                        d
                    }
                };
                lines.push(format!("file {rel} {mode:o} {} {digest}", meta.len()));
            }
        }
        if let Some(c) = &self.opts.cache {
            let _ = c.runtime.block_on(c.store.context_digests_put(&remember));
        }
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        Ok(key_of(&refs))
    }

    /// The digest remembered for the context file `abs` if it still has `stamp`. The store's
    /// digests for a context are read in one query, the first time one is asked for.
    fn remembered(
        &self,
        ctx: &Context,
        abs: &str,
        stamp: wharf_common::store::FileStamp,
    ) -> Option<Digest> {
        let cache = self.opts.cache.as_ref()?;
        let root = ctx.root().to_string_lossy().into_owned();
        let mut memo = self
            .context_memo
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !memo.contains_key(&root) {
            let known = cache
                .runtime
                .block_on(cache.store.context_digests_under(&root))
                .unwrap_or_default();
            memo.insert(root.clone(), known);
        }
        memo.get(&root)?
            .get(abs)
            .filter(|(s, _)| *s == stamp)
            .map(|(_, d)| d.clone())
    }

    pub(crate) fn lexer(&self) -> &Lexer {
        &self.lexer
    }

    pub(crate) fn url(&self, url: &str) -> Option<&(PathBuf, Download)> {
        self.urls.get(url)
    }

    pub(crate) fn context(&self) -> &Context {
        &self.opts.context
    }

    /// The network namespace RUN steps with the default network join.
    pub(crate) fn shared_network(
        &self,
    ) -> Result<std::sync::Arc<crate::sandbox::SharedNetwork>, String> {
        self.network
            .get_or_init(|| {
                crate::sandbox::SharedNetwork::new()
                    .map(std::sync::Arc::new)
                    .map_err(|e| format!("giving RUN its network: {e}"))
            })
            .clone()
    }

    /// Where the context's entry `rel` (canonical, from [`Context::resolve`]) is for a bind
    /// mount: in the filtered view when `.dockerignore` leaves anything out.
    pub(crate) fn context_for_mount(&self, disk: &Path) -> Result<PathBuf, String> {
        let ctx = self.context();
        if ctx.ignore().is_empty() {
            return Ok(disk.to_owned());
        }
        let view = self
            .context_view
            .get_or_init(|| crate::context::view::FilteredView::new(ctx, &self.opts.work_dir))
            .as_ref()
            .map_err(|e| format!("a filtered view of the build context: {e}"))?;
        Ok(view.root().join(ctx.relative(disk)))
    }
}

/// Context files' remembered digests: absolute path → (stamp, digest).
type ContextDigests = HashMap<String, (wharf_common::store::FileStamp, Digest)>;

/// A layer a build wrote: the key of its step, the layer, its file, and when it was made.
pub type NewLayer = (Digest, WrittenLayer, PathBuf, i64);

/// A cache key: the sha256 of the parts, each length-prefixed.
fn key_of(parts: &[&str]) -> Digest {
    let mut h = wharf_common::digest::Algorithm::Sha256.hasher();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finish()
}

fn hash_file(path: &Path) -> std::io::Result<Digest> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = wharf_common::digest::Algorithm::Sha256.hasher();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}

fn check_signal(sig: &str) -> Result<(), String> {
    let name = sig.trim_start_matches("SIG");
    let known = [
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
        "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
        "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
    ];
    if sig.parse::<u32>().is_ok_and(|n| (1..=64).contains(&n))
        || known.contains(&name)
        || name.starts_with("RTMIN")
        || name.starts_with("RTMAX")
    {
        Ok(())
    } else {
        Err(format!("invalid signal: {sig}"))
    }
}

/// Go's `%q` of a string list: `["a" "b"]`.
fn go_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|i| crate::dockerfile::parser::go_quote(i))
        .collect();
    format!("[{}]", quoted.join(" "))
}

/// Go durations (`1h30m`, `5s`, `250ms`) in nanoseconds.
fn parse_duration_ns(text: &str) -> Result<i64, String> {
    let bad = || format!("invalid duration {text:?}: expected a duration like 30s, 1m30s or 250ms");
    let mut total: f64 = 0.0;
    let mut rest = text;
    if rest.is_empty() {
        return Err(bad());
    }
    if rest == "0" {
        return Ok(0);
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += n * mult;
        rest = &rest[unit_len..];
    }
    Ok(total as i64)
}

/// Cleans an absolute path.
pub(crate) fn clean_abs(p: &str) -> String {
    let c = crate::context::ignore::clean(&format!("/{}", p.trim_start_matches('/')));
    if c.is_empty() { "/".to_owned() } else { c }
}

pub(crate) use wharf_common::time::rfc3339;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn durations_and_times() {
        assert_eq!(parse_duration_ns("5s").unwrap(), 5_000_000_000);
        assert_eq!(parse_duration_ns("1m30s").unwrap(), 90_000_000_000);
        assert_eq!(parse_duration_ns("250ms").unwrap(), 250_000_000);
        assert!(parse_duration_ns("5").is_err());
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert!(
            check_signal("SIGTERM").is_ok()
                && check_signal("9").is_ok()
                && check_signal("SIGFOO").is_err()
        );
        assert_eq!(clean_abs("a/../b/./c/"), "/b/c");
    }
}
