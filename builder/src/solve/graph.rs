//! The stage graph: which stages a target needs, what each depends on, and running them, each
//! as soon as what it depends on is built.

use std::collections::{BTreeMap, HashSet};

use crate::dockerfile::instructions::{Dockerfile, Instruction, Step};

use super::error::step_error;
use super::output;
use super::solver::Solver;
use super::stage::StageState;
use super::{BuildError, Built};

/// The index of the stage `name` (a name or a number) defined before stage `before`.
pub(super) fn stage_index(df: &Dockerfile, name: &str, before: usize) -> Option<usize> {
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
pub(super) fn step_sources(step: &Step) -> Vec<String> {
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
pub(super) fn stage_deps(df: &Dockerfile, i: usize) -> Vec<usize> {
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
pub(super) fn needed_stages(df: &Dockerfile, target: usize) -> Vec<usize> {
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

impl Solver {
    pub(super) fn run_blocking(self, needed: &[usize], target: usize) -> Result<Built, BuildError> {
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
}
