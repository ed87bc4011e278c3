//! One step: what each instruction does to the stage, and the key chain that follows it.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::dockerfile::instructions::{Instruction, Step};

use super::cache::{CacheKey, image_key};
use super::error::StepError;
use super::graph::stage_index;
use super::solver::Solver;
use super::stage::{Layer, StageState, clean_abs};
use super::{copy, run};

/// What a step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StepOutcome {
    /// It changed the image's config only.
    Config,
    /// Its layer came from the cache.
    Cached,
    /// It ran and wrote a layer.
    Ran,
}

impl Solver {
    /// Runs one step; returns whether its result came from the cache.
    pub(super) fn step(
        &self,
        s: &mut StageState,
        step: &Step,
        done: &BTreeMap<usize, StageState>,
        stage: usize,
    ) -> Result<StepOutcome, StepError> {
        let (args_before, layers_before) = (s.args.len(), s.layers.len());
        let outcome = self.step_inner(s, step, done, stage)?;
        // Everything a later step could depend on goes into the chain: the step as written, the
        // ARG values it set (`--build-arg`s are not in the text) and the layers it made. The
        // config follows from those and the base's, which the stage's first key holds; adding
        // only what this step changed keeps the key's cost independent of the stage's length.
        let layers = s
            .layers
            .get(layers_before..)
            .unwrap_or_default()
            .iter()
            .map(|l| match l {
                Layer::Base(b, _, _) => b.digest.as_str(),
                Layer::New(w, _) => w.diff_id.as_str(),
            });
        s.key = CacheKey::new("step")
            .digest(&s.key)
            .text(&step.original)
            .pairs(s.args.get(args_before..).unwrap_or_default())
            .texts(layers)
            .finish();
        Ok(outcome)
    }

    fn step_inner(
        &self,
        s: &mut StageState,
        step: &Step,
        done: &BTreeMap<usize, StageState>,
        stage: usize,
    ) -> Result<StepOutcome, StepError> {
        if self.rules().apply(s, &step.instruction, &step.original)? {
            return Ok(StepOutcome::Config);
        }
        match &step.instruction {
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
                let mut key = CacheKey::new("workdir");
                key.digest(&s.key).text(&recorded).opt_text(user.as_deref());
                self.layer_options(&mut key);
                let key = key.finish();
                if let Some(hit) = self.cached_layer(&key) {
                    s.layers.push(Layer::New(hit.layer, hit.file));
                    self.history(s, format!("WORKDIR {recorded}"), false);
                    return Ok(StepOutcome::Cached);
                }
                self.mount_root(s)?;
                let owner = user.and_then(|u| crate::user::Users::read(&s.rootfs).owner(&u).ok());
                let created = copy::mkdir_p(s, &path, owner, 0o755)?;
                // A layer even when the directory was there (an empty one), as BuildKit makes.
                copy::commit_layer(s, created, &self.opts)?;
                self.record(&key, s);
                self.commit_root(s)?;
                self.history(s, format!("WORKDIR {recorded}"), false);
                Ok(StepOutcome::Ran)
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
                let mut key = CacheKey::new("copy");
                key.digest(&s.key).text(&step.original);
                match (&from_root_name, named) {
                    (Some(f), _) => {
                        match stage_index(&self.df, f, stage).and_then(|j| done.get(&j)) {
                            Some(d) => key.text("stage").digest(&d.key),
                            None => match self.bases.get(f) {
                                Some(img) => key.text("image").digest(&image_key(img)),
                                None => key.text("unresolved image").text(f),
                            },
                        }
                    }
                    (None, Some(ctx)) => {
                        let sum = self.context_checksum(s, c, ctx)?;
                        key.text("named context").digest(&sum)
                    }
                    _ => {
                        let sum = self.context_checksum(s, c, &self.opts.context)?;
                        key.text("context").digest(&sum)
                    }
                };
                let workdir = s.workdir();
                key.pairs(&s.expansion_env()).text(&workdir);
                self.layer_options(&mut key);
                let key = key.finish();
                if let Some(hit) = self.cached_layer(&key) {
                    s.layers.push(Layer::New(hit.layer, hit.file));
                    s.time = hit.created_at;
                    self.history(s, format!("{word} {args} # buildkit"), false);
                    return Ok(StepOutcome::Cached);
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
                copy::commit_layer(s, entries, &self.opts)?;
                self.commit_root(s)?;
                s.time = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
                self.record(&key, s);
                self.history(s, format!("{word} {args} # buildkit"), false);
                Ok(StepOutcome::Ran)
            }
            Instruction::Run(r) => run::run(self, s, r, done, stage),
            // Every other instruction is a config rule, applied above.
            _ => Ok(StepOutcome::Config),
        }
    }
}
