//! Solving a Dockerfile into an image: stages in the order their dependencies allow (in
//! parallel where they can), each from its base (scratch, an image, or an earlier stage),
//! every step looked up in the content-addressed cache before it runs; RUN in the sandbox. The
//! result is an image ([`Built`]) that the copy engine stores like any other source.
//!
//! - `api.rs`: what a build is given and reports (`BuildOptions`, `Images`, `BuildEvent`).
//! - `cancel.rs`: stopping builds.
//! - `graph.rs`: the stage graph and its scheduling.
//! - `prefetch.rs`: the ARGs before FROM, base images and ADD's URLs, before any stage runs.
//! - `solver.rs`: the state one build shares across stages.
//! - `stage.rs`: one stage's state and run; its root mounted as a view of snapshots.
//! - `step.rs`: what each instruction does; `config.rs`: the config rules (ENV, CMD, …), shared
//!   with `import --change`.
//! - `cache.rs`: step keys, cache lookups, context digests.
//! - `copy.rs`: COPY/ADD (and the helpers WORKDIR uses); `run.rs`: RUN.
//! - `error.rs`: `BuildError` (where) and `StepError` (why).
//! - `output.rs`: the image assembled from the target stage.

mod api;
mod cache;
mod cancel;
mod config;
mod copy;
mod error;
mod graph;
mod output;
mod prefetch;
mod run;
mod solver;
mod stage;
mod step;

use std::collections::BTreeMap;

use crate::dockerfile::instructions::{self, Instruction};
use crate::dockerfile::shell::Lexer;

pub(crate) use api::is_url;
pub use api::{BaseImage, BuildEvent, BuildOptions, CacheAccess, Download, Events, Images};
pub use cache::NewLayer;
pub use cancel::CancelToken;
pub(crate) use config::Rules;
pub use error::{BuildError, Cause, StepError};
use graph::needed_stages;
pub use output::Built;
use solver::Solver;
pub use stage::base_chain;
pub(crate) use stage::{DEFAULT_PATH, StageState, clean_abs};
pub(crate) use wharf_common::time::rfc3339;

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
    let meta = prefetch::meta_args(&df, &opts, &lexer);
    // Stage bases (and --from names) are expanded with the ARGs before the first FROM, so
    // `FROM ${BASE}` can name a stage.
    let mut df = df;
    for stage in &mut df.stages {
        stage.base = lexer
            .process_word(&stage.base, &meta)
            .map_err(|e| BuildError::step(&file, stage.location.line, &stage.original, e.into()))?;
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
    let bases = prefetch::resolve_bases(&df, &needed, &opts, &lexer, &meta, images).await?;
    let urls = prefetch::fetch_urls(&df, &needed, &opts, &lexer, &meta, &bases, images).await?;
    let run = Solver {
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
        context_view: std::sync::Mutex::new(None),
        network: std::sync::Mutex::new(None),
    };
    // The build's own thread, in a mount namespace of its own: the overlays it mounts are
    // seen by nobody else and go away with it, whatever happens.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("wharf-build".into())
        .spawn(move || {
            let result = match crate::snapshot::private_mounts() {
                Ok(()) => run.run_blocking(&needed, target),
                Err(e) => Err(BuildError::internal("preparing the build", e)),
            };
            let _ = tx.send(result);
        });
    spawned.map_err(|e| BuildError::internal("starting the build's thread", e))?;
    rx.await.map_err(|_| {
        BuildError::internal("running the build", "its thread ended without a result")
    })?
}
