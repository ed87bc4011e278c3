//! One stage while it runs: its state (config, layers, ARGs, the mounted root), and the run
//! of its steps from its base (scratch, an image, or an earlier stage).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};
use wharf_common::archive::layer::WrittenLayer;
use wharf_common::digest::Digest;
use wharf_common::image::BlobRef;

use crate::dockerfile::instructions;
use crate::dockerfile::shell::ShellError;
use crate::error::IoError;
use crate::snapshot::{SnapshotError, View};

use super::BuildError;
use super::api::{BaseImage, BuildEvent};
use super::cache::{CacheKey, image_key};
use super::config::Rules;
use super::error::StepError;
use super::graph::stage_index;
use super::solver::Solver;
use super::step::StepOutcome;

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
    /// Where the stage's root is mounted, while [`Solver::mount_root`]'s view is.
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

impl StageState {
    /// A stage of nothing but `config` (the `config` object of an image config): what
    /// `import --change` applies the config rules to.
    pub(crate) fn for_config(config: Map<String, Value>) -> StageState {
        let mut image = Map::new();
        image.insert("config".into(), Value::Object(config));
        StageState {
            key: CacheKey::new("config only").finish(),
            cmd_set: false,
            time: 0,
            image,
            layers: Vec::new(),
            rootfs: PathBuf::new(),
            view: ViewSlot::default(),
            args: Vec::new(),
            step_id: 0,
            env_index: None,
        }
    }
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
pub(crate) struct ViewSlot(pub(super) Option<(View, usize)>);

impl Clone for ViewSlot {
    fn clone(&self) -> ViewSlot {
        ViewSlot(None)
    }
}

impl Layer {
    pub(super) fn diff_id(&self) -> &Digest {
        match self {
            Layer::Base(_, _, d) => d,
            Layer::New(w, _) => &w.diff_id,
        }
    }

    pub(super) fn file(&self) -> &Path {
        match self {
            Layer::Base(_, p, _) | Layer::New(_, p) => p,
        }
    }
}

/// The layers of a stack as (chain id, layer file), bottom first.
pub(super) fn chain_of(layers: &[Layer]) -> Vec<(Digest, PathBuf)> {
    let ids: Vec<Digest> = layers.iter().map(|l| l.diff_id().clone()).collect();
    crate::snapshot::chain_ids(&ids)
        .into_iter()
        .zip(layers.iter().map(|l| l.file().to_owned()))
        .collect()
}

/// A base image's layers as (chain id, layer file), bottom first: what snapshots are keyed by.
pub fn base_chain(img: &BaseImage) -> Vec<(Digest, PathBuf)> {
    chain_of(&base_layers(img))
}

/// A base image's layers, with their diff ids.
pub(super) fn base_layers(img: &BaseImage) -> Vec<Layer> {
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
    pub(super) fn env_list(&mut self) -> (&mut Vec<Value>, &mut HashMap<String, usize>) {
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

    pub(super) fn shell(&mut self) -> Vec<String> {
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

impl Solver {
    pub(super) fn run_stage(
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
        let failed = |e: StepError| BuildError::step(file, stage.location.line, &stage.original, e);
        let base = self
            .lexer
            .process_word(&stage.base, &self.meta)
            .map_err(|e| failed(e.into()))?;
        if let Some(p) = &stage.platform {
            let p = self
                .lexer
                .process_word(p, &self.meta)
                .map_err(|e| failed(e.into()))?;
            let host = &self.opts.platform;
            let mut parts = p.split('/');
            if parts.next() != Some(host.os.as_str())
                || parts.next() != Some(host.architecture.as_str())
            {
                return Err(failed(StepError::Invalid(format!(
                    "--platform={p}: only the host's platform ({}/{}) can be built here",
                    host.os, host.architecture
                ))));
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
                    key: CacheKey::new("from stage").digest(&parent.key).finish(),
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
                    key: CacheKey::new("scratch").finish(),
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
                let time = img
                    .config
                    .get("created")
                    .and_then(Value::as_str)
                    .and_then(wharf_common::time::parse_rfc3339)
                    .unwrap_or(0);
                let mut s = StageState {
                    cmd_set: false,
                    time,
                    key: image_key(img),
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
                            failed(StepError::Invalid(format!(
                                "ONBUILD trigger {t:?}: {}",
                                e.message
                            )))
                        })?;
                    for step in &parsed.stages[0].steps {
                        self.step(&mut s, step, done, i).map_err(|e| {
                            BuildError::step(file, stage.location.line, &format!("ONBUILD {t}"), e)
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
            if self.opts.cancel.is_cancelled() {
                return Err(BuildError::Cancelled);
            }
            let outcome = self
                .step(&mut state, step, done, i)
                .map_err(|e| BuildError::step(file, step.location.line, &step.original, e))?;
            emit(match outcome {
                StepOutcome::Cached => BuildEvent::Cached(id),
                StepOutcome::Config | StepOutcome::Ran => BuildEvent::Done(id, started.elapsed()),
            });
        }
        Ok(state)
    }

    pub(super) fn set_platform(&self, s: &mut StageState) {
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

    /// The config rules with this build's lexer, ARGs and time.
    pub(super) fn rules(&self) -> Rules<'_> {
        Rules {
            lexer: &self.lexer,
            build_args: &self.opts.build_args,
            meta: &self.meta,
            source_date_epoch: self.opts.source_date_epoch,
        }
    }

    pub(super) fn history(&self, s: &mut StageState, created_by: String, empty_layer: bool) {
        self.rules().history(s, created_by, empty_layer);
    }

    pub(super) fn expand(&self, s: &mut StageState, word: &str) -> Result<String, ShellError> {
        self.rules().expand(s, word)
    }

    /// Mounts the stage's root (its layers' snapshots under a fresh upper directory) at
    /// `s.rootfs`, unless it is mounted already.
    pub(crate) fn mount_root(&self, s: &mut StageState) -> Result<(), SnapshotError> {
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
    pub(crate) fn commit_root(&self, s: &mut StageState) -> Result<(), IoError> {
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
    ) -> Result<PathBuf, StepError> {
        let (key, layers) =
            match stage_index(&self.df, name, stage) {
                Some(j) => (
                    format!("stage {j}"),
                    done.get(&j)
                        .map(|d| d.layers.clone())
                        .ok_or_else(|| StepError::Invalid(format!("stage {name} did not run")))?,
                ),
                None => (
                    format!("image {name}"),
                    base_layers(self.bases.get(name).ok_or_else(|| {
                        StepError::Invalid(format!("image {name} was not resolved"))
                    })?),
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
}

/// Cleans an absolute path.
pub(crate) fn clean_abs(p: &str) -> String {
    let c = crate::context::ignore::clean(&format!("/{}", p.trim_start_matches('/')));
    if c.is_empty() { "/".to_owned() } else { c }
}
