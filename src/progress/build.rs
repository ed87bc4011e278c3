//! Rendering a build's events on stderr, as `--progress` asks.
//!
//! - `plain` (and `auto` off a terminal): BuildKit's plain lines: `#3 [build 2/7] COPY . .`,
//!   `#3 DONE 0.4s`, `#3 CACHED`, `#4 <a line RUN printed>`, `WARN: <rule>: <message> (line N)`,
//!   and `naming to <name>` per tag at the end.
//! - `tty` (and `auto` on a terminal): a spinner per running step that turns into its DONE or
//!   CACHED line; output and warnings are printed above.
//! - `json`: one JSON object per line, `{"type": TYPE, "data": {…}}`, for tools; the types and
//!   their data are:
//!
//!   | type      | data                                                                     |
//!   |-----------|--------------------------------------------------------------------------|
//!   | `step`    | `id` (number, unique in the build), `stage` (name or `stage-N`), `index` and `total` (1-based, FROM is 1), `instruction` (as written) |
//!   | `cached`  | `id`: the step's result came from the build cache                        |
//!   | `done`    | `id`, `seconds` (float): the step ran                                    |
//!   | `output`  | `id`, `line`: a line a RUN step printed (stdout and stderr)             |
//!   | `warning` | `rule` (BuildKit's lint rule name), `message`, `line` (Dockerfile line)  |
//!   | `notice`  | `message`: something about how the build runs, said once                 |
//!   | `named`   | `name`: the image was stored under this name                            |
//!
//!   Steps of stages that run at once interleave; `id` ties the lines of one step together.
//! - `quiet` (or `-q`): nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use wharf_builder::solve::{BuildEvent, Events};

use crate::cli::ProgressMode;
use crate::printer::err_line;

/// Where a build's events go.
pub(crate) enum BuildProgress {
    /// Nothing is shown.
    Quiet,
    /// BuildKit's plain lines.
    Plain,
    /// JSON lines (see the module docs).
    Json,
    /// Spinners on a terminal.
    Live(LiveView),
}

impl BuildProgress {
    /// The rendering `mode` asks for (`quiet`: `-q`).
    pub(crate) fn new(mode: ProgressMode, quiet: bool) -> anyhow::Result<BuildProgress> {
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        if mode == ProgressMode::Tty && !terminal {
            anyhow::bail!("--progress tty needs stderr to be a terminal");
        }
        Ok(match mode {
            _ if quiet => BuildProgress::Quiet,
            ProgressMode::Quiet => BuildProgress::Quiet,
            ProgressMode::Json => BuildProgress::Json,
            ProgressMode::Tty => BuildProgress::Live(LiveView::new()),
            ProgressMode::Auto if terminal => BuildProgress::Live(LiveView::new()),
            _ => BuildProgress::Plain,
        })
    }

    /// Whether nothing is shown.
    pub(crate) fn is_quiet(&self) -> bool {
        matches!(self, BuildProgress::Quiet)
    }

    /// The build's event sink.
    pub(crate) fn events(self: &Arc<Self>) -> Events {
        let me = self.clone();
        Arc::new(move |e| me.show(e))
    }

    fn show(&self, e: BuildEvent) {
        match self {
            BuildProgress::Quiet => {}
            BuildProgress::Live(view) => view.show(e),
            BuildProgress::Plain => err_line(&plain_line(e)),
            BuildProgress::Json => err_line(&json_line(e)),
        }
    }

    /// The image was stored under `name`.
    pub(crate) fn named(&self, name: &str) {
        match self {
            BuildProgress::Quiet => {}
            BuildProgress::Json => {
                err_line(&json!({"type": "named", "data": {"name": name}}).to_string());
            }
            BuildProgress::Plain | BuildProgress::Live(_) => err_line(&format!("naming to {name}")),
        }
    }
}

/// BuildKit's plain line for a step: `#3 [build 2/7] COPY app/ ./`.
fn step_line(id: usize, stage: &str, index: usize, total: usize, text: &str) -> String {
    format!("#{id} [{stage} {index}/{total}] {text}")
}

fn plain_line(e: BuildEvent) -> String {
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
        BuildEvent::Warning(l) => format!("WARN: {}: {} (line {})", l.rule, l.message, l.line),
        BuildEvent::Output(id, line) => format!("#{id} {line}"),
        BuildEvent::Notice(message) => format!("WARN: {message}"),
    }
}

fn json_line(e: BuildEvent) -> String {
    let (kind, data) = match e {
        BuildEvent::Step {
            id,
            stage,
            index,
            total,
            text,
        } => (
            "step",
            json!({"id": id, "stage": stage, "index": index, "total": total, "instruction": text}),
        ),
        BuildEvent::Cached(id) => ("cached", json!({"id": id})),
        BuildEvent::Done(id, took) => ("done", json!({"id": id, "seconds": took.as_secs_f64()})),
        BuildEvent::Warning(l) => (
            "warning",
            json!({"rule": l.rule, "message": l.message, "line": l.line}),
        ),
        BuildEvent::Output(id, line) => ("output", json!({"id": id, "line": line})),
        BuildEvent::Notice(message) => ("notice", json!({"message": message})),
    };
    json!({"type": kind, "data": data}).to_string()
}

/// The live terminal view: a spinner per running step, which turns into its CACHED or DONE line.
pub(crate) struct LiveView {
    multi: MultiProgress,
    bars: Mutex<HashMap<usize, (ProgressBar, String)>>,
}

impl LiveView {
    fn new() -> LiveView {
        LiveView {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)),
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn finish(&self, id: usize, suffix: &str) {
        let mut bars = self.bars.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((bar, label)) = bars.remove(&id) {
            bar.set_style(
                ProgressStyle::with_template("{msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.finish_with_message(format!("{label}  {suffix}"));
        }
    }

    fn show(&self, e: BuildEvent) {
        match e {
            BuildEvent::Step { id, .. } => {
                let label = plain_line(e);
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_message(label.clone());
                bar.enable_steady_tick(Duration::from_millis(100));
                self.bars
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(id, (bar, label));
            }
            BuildEvent::Cached(id) => self.finish(id, "CACHED"),
            BuildEvent::Done(id, took) => {
                self.finish(id, &format!("DONE {:.1}s", took.as_secs_f64()));
            }
            other => {
                let _ = self.multi.println(plain_line(other));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_carry_a_type_and_its_data() {
        let line = json_line(BuildEvent::Step {
            id: 3,
            stage: "build".into(),
            index: 2,
            total: 7,
            text: "COPY . .".into(),
        });
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        assert_eq!(v["type"], "step");
        assert_eq!(v["data"]["instruction"], "COPY . .");
        assert_eq!(
            (v["data"]["index"].as_u64(), v["data"]["total"].as_u64()),
            (Some(2), Some(7))
        );
        assert_eq!(plain_line(BuildEvent::Cached(3)), "#3 CACHED");
        assert_eq!(
            plain_line(BuildEvent::Done(3, Duration::from_millis(420))),
            "#3 DONE 0.4s"
        );
    }
}
