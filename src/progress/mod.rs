//! Rendering progress on stderr. Copies (pull, push, save, load) here: a bar per layer on a
//! terminal, docker-like plain lines otherwise, nothing when quiet. Builds: [`build`].

#![allow(clippy::print_stderr)]

pub(crate) mod build;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use wharf_common::digest::Digest;
use wharf_common::progress::{BlobKind, CopyEvent, Reporter, Skip};

use crate::cli::ProgressMode;

/// The words a copy uses for its steps (docker's, per command).
#[derive(Clone, Copy)]
pub struct Verbs {
    /// Shown when a layer transfer starts ("Pulling fs layer").
    pub start: &'static str,
    /// While bytes move ("Downloading").
    pub active: &'static str,
    /// When done ("Pull complete").
    pub done: &'static str,
    /// When the destination had it ("Already exists").
    pub exists: &'static str,
}

pub const PULL: Verbs = Verbs {
    start: "Pulling fs layer",
    active: "Downloading",
    done: "Pull complete",
    exists: "Already exists",
};

pub const PUSH: Verbs = Verbs {
    start: "Preparing",
    active: "Pushing",
    done: "Pushed",
    exists: "Layer already exists",
};

pub const SAVE: Verbs = Verbs {
    start: "Saving",
    active: "Writing",
    done: "Saved",
    exists: "Already written",
};

pub const LOAD: Verbs = Verbs {
    start: "Loading layer",
    active: "Loading",
    done: "Loaded",
    exists: "Already exists",
};

enum Mode {
    Quiet,
    Plain,
    Tty {
        multi: MultiProgress,
        bars: Mutex<HashMap<Digest, ProgressBar>>,
    },
}

/// A [`Reporter`] drawing on stderr.
pub struct Progress {
    mode: Mode,
    verbs: Verbs,
}

fn id(d: &Digest) -> &str {
    d.short()
}

impl Progress {
    /// Picks the rendering for `mode`; `quiet` forces silence (`-q`).
    pub fn new(mode: ProgressMode, quiet: bool, verbs: Verbs) -> anyhow::Result<Progress> {
        let tty = std::io::stderr().is_terminal();
        let mode = match (mode, quiet) {
            (_, true) | (ProgressMode::Quiet, _) => Mode::Quiet,
            (ProgressMode::Plain | ProgressMode::Json, _) => Mode::Plain,
            (ProgressMode::Auto, _) if !tty => Mode::Plain,
            (ProgressMode::Tty, _) if !tty => {
                anyhow::bail!("--progress tty needs stderr to be a terminal")
            }
            (ProgressMode::Auto | ProgressMode::Tty, _) => Mode::Tty {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)),
                bars: Mutex::new(HashMap::new()),
            },
        };
        Ok(Progress { mode, verbs })
    }

    /// Prints a status line (through the bars on a terminal).
    pub fn line(&self, text: &str) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Plain => eprintln!("{text}"),
            Mode::Tty { multi, .. } => {
                let _ = multi.println(text);
            }
        }
    }

    fn bar_style() -> ProgressStyle {
        ProgressStyle::with_template(
            "{prefix}: {msg:<12} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
    }
}

impl Reporter for Progress {
    fn report(&self, event: CopyEvent) {
        let v = self.verbs;
        match &self.mode {
            Mode::Quiet => {}
            Mode::Plain => match event {
                CopyEvent::BlobStarted {
                    digest,
                    kind: BlobKind::Layer,
                    offset,
                    ..
                } => {
                    if offset > 0 {
                        eprintln!("{}: {} (resuming at {offset} bytes)", id(&digest), v.start);
                    } else {
                        eprintln!("{}: {}", id(&digest), v.start);
                    }
                }
                CopyEvent::BlobSkipped {
                    digest,
                    kind: BlobKind::Layer,
                    why,
                    ..
                } => {
                    let what = match why {
                        Skip::Exists => v.exists,
                        Skip::Mounted => "Mounted from another repository",
                    };
                    eprintln!("{}: {what}", id(&digest));
                }
                CopyEvent::BlobDone {
                    digest,
                    kind: BlobKind::Layer,
                } => eprintln!("{}: {}", id(&digest), v.done),
                _ => {}
            },
            Mode::Tty { multi, bars } => {
                let Ok(mut bars) = bars.lock() else { return };
                match event {
                    CopyEvent::BlobStarted {
                        digest,
                        size,
                        offset,
                        ..
                    } => {
                        let bar = multi.add(ProgressBar::new(size));
                        bar.set_style(Self::bar_style());
                        bar.set_prefix(id(&digest).to_owned());
                        bar.set_message(v.active);
                        bar.set_position(offset);
                        bar.enable_steady_tick(Duration::from_millis(200));
                        bars.insert(digest, bar);
                    }
                    CopyEvent::BlobProgress { digest, done } => {
                        if let Some(b) = bars.get(&digest) {
                            b.set_position(done);
                        }
                    }
                    CopyEvent::BlobDone { digest, kind } => {
                        if let Some(b) = bars.remove(&digest) {
                            b.finish_and_clear();
                            multi.remove(&b);
                        }
                        if kind == BlobKind::Layer {
                            let _ = multi.println(format!("{}: {}", id(&digest), v.done));
                        }
                    }
                    CopyEvent::BlobSkipped {
                        digest, why, kind, ..
                    } => {
                        if let Some(b) = bars.remove(&digest) {
                            b.finish_and_clear();
                            multi.remove(&b);
                        }
                        if kind == BlobKind::Layer {
                            let what = match why {
                                Skip::Exists => v.exists,
                                Skip::Mounted => "Mounted from another repository",
                            };
                            let _ = multi.println(format!("{}: {what}", id(&digest)));
                        }
                    }
                    CopyEvent::Resolved { .. } | CopyEvent::ManifestWritten { .. } => {}
                }
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Mode::Tty { multi, bars } = &self.mode {
            if let Ok(mut bars) = bars.lock() {
                for (_, b) in bars.drain() {
                    b.abandon();
                }
            }
            let _ = multi.clear();
        }
    }
}
