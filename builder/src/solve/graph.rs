//! The stage graph: which stages a target needs, what each depends on, and running them, each
//! as soon as what it depends on is built.

use crate::dockerfile::flags::Typed;
use std::collections::{BTreeMap, HashSet};

use crate::dockerfile::instructions::{Dockerfile, Instruction, Step};

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
            .flat_map(|m| match m {
                Typed::Parsed(spec) => spec.from.iter().cloned().collect::<Vec<_>>(),
                // Written with variables: the callers expand the name (with the ARGs before FROM).
                Typed::Deferred(text) => text
                    .split(',')
                    .filter_map(|f| f.trim().strip_prefix("from="))
                    .map(str::to_owned)
                    .collect(),
            })
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
    /// Runs the `needed` stages, each as soon as every stage it depends on is built (a ready
    /// queue, so a slow stage holds up only what depends on it), and assembles the target's
    /// image. The first failure cancels the stages still running and is the build's error.
    pub(super) fn run_blocking(self, needed: &[usize], target: usize) -> Result<Built, BuildError> {
        let file = &self.opts.dockerfile_name;
        let mut done: BTreeMap<usize, StageState> = BTreeMap::new();
        let mut waiting: Vec<usize> = needed.to_vec();
        let solver = &self;
        let scheduled = std::thread::scope(|scope| -> Result<(), BuildError> {
            let (tx, rx) = std::sync::mpsc::channel::<(usize, Result<StageState, BuildError>)>();
            let mut running = 0usize;
            loop {
                let (ready, rest): (Vec<usize>, Vec<usize>) = waiting
                    .iter()
                    .partition(|&&i| stage_deps(&self.df, i).iter().all(|d| done.contains_key(d)));
                waiting = rest;
                for i in ready {
                    // What the stage reads of the stages it depends on, as they ended.
                    let inputs: BTreeMap<usize, StageState> = stage_deps(&self.df, i)
                        .into_iter()
                        .filter_map(|d| done.get(&d).map(|st| (d, st.clone())))
                        .collect();
                    let tx = tx.clone();
                    running += 1;
                    scope.spawn(move || {
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            solver.run_stage(i, &inputs)
                        }))
                        .unwrap_or_else(|_| {
                            Err(BuildError::internal(
                                "running a stage",
                                "the stage's thread panicked",
                            ))
                        });
                        let _ = tx.send((i, result));
                    });
                }
                if running == 0 {
                    return if waiting.is_empty() {
                        Ok(())
                    } else {
                        Err(BuildError::Cycle { file: file.clone() })
                    };
                }
                let (i, result) = rx.recv().map_err(|_| {
                    BuildError::internal("running a stage", "a stage ended without a result")
                })?;
                running -= 1;
                match result {
                    Ok(state) => {
                        done.insert(i, state);
                    }
                    Err(e) => {
                        // The others stop at their next step; their RUNs are killed now.
                        self.opts.cancel.cancel();
                        return Err(e);
                    }
                }
            }
        });
        scheduled?;
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
        output::assemble(state, &self.opts, new_layers, hits)
            .map_err(|e| BuildError::internal("exporting the image", e))
    }
}
