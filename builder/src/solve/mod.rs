//! Solving a Dockerfile into an image: stages in the order their dependencies allow (in
//! parallel where they can), each from its base (scratch, an image, or an earlier stage),
//! every step looked up in the content-addressed cache before it runs; RUN in the sandbox. The
//! result is an image ([`Built`]) that the copy engine stores like any other source.
//!
//! - `api.rs`: what a build is given and reports (`BuildOptions`, `Images`, `BuildEvent`).
//! - `cancel.rs`: stopping builds.
//! - `graph.rs`: the stage graph and its scheduling.
//! - `solver.rs`: the state one build shares across stages.
//! - `stage.rs`: one stage's state and run; its root mounted as a view of snapshots.
//! - `step.rs`: what each instruction does.
//! - `cache.rs`: step keys, cache lookups, context digests.
//! - `copy.rs`, `run.rs`: COPY/ADD/WORKDIR and RUN.
//! - `output.rs`: the image assembled from the target stage.

mod api;
mod cache;
mod cancel;
mod copy;
mod error;
mod graph;
mod output;
mod run;
mod solver;
mod stage;
mod step;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;
use wharf_common::image::Platform;

use crate::dockerfile::instructions::{self, Instruction};
use crate::dockerfile::shell::Lexer;

pub(crate) use api::is_url;
pub use api::{BaseImage, BuildEvent, BuildOptions, CacheAccess, Download, Events, Images};
pub use cache::NewLayer;
pub use cancel::Cancel;
pub use error::BuildError;
use error::step_error;
use graph::{needed_stages, stage_index, step_sources};
pub use output::Built;
use solver::Solver;
pub(crate) use stage::DEFAULT_PATH;
pub(crate) use wharf_common::time::rfc3339;

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
