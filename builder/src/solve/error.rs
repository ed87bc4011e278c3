//! How a build fails: [`BuildError`] names the Dockerfile line, [`StepError`] is why the step
//! there failed, with every cause kept as a source (messages never repeat their source).

use crate::context::ContextError;
use crate::dockerfile::instructions::DockerfileError;
use crate::dockerfile::shell::ShellError;
use crate::error::IoError;
use crate::sandbox::SandboxError;
use crate::snapshot::SnapshotError;
use wharf_common::archive::unpack::UnpackError;

/// An error from the caller's side of the [`Images`](super::Images) trait (a registry, the
/// store), kept whole.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A build that failed, and where.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile does not parse or check.
    #[error(transparent)]
    Dockerfile(#[from] DockerfileError),
    /// A step failed.
    #[error("{file}:{line}: {instruction}")]
    Step {
        /// The Dockerfile.
        file: String,
        /// The step's line.
        line: usize,
        /// The instruction as written.
        instruction: String,
        /// Why (boxed: a step's causes are large, and builds fail rarely).
        #[source]
        source: Box<StepError>,
    },
    /// A base image could not be had.
    #[error("{file}:{line}: {reference}")]
    Base {
        /// The Dockerfile.
        file: String,
        /// The FROM or COPY --from line.
        line: usize,
        /// The image.
        reference: String,
        /// Why.
        #[source]
        source: Cause,
    },
    /// The target stage does not exist.
    #[error("target stage {0:?} could not be found")]
    NoTarget(String),
    /// Stages read each other in a circle.
    #[error("{file}: stages depend on each other in a cycle")]
    Cycle {
        /// The Dockerfile.
        file: String,
    },
    /// The build could not be set up or finished (its thread, its mount namespace, the
    /// image's config).
    #[error("{what}")]
    Internal {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: Cause,
    },
    /// The build was cancelled (Ctrl-C, or another stage failed first).
    #[error("build cancelled")]
    Cancelled,
}

impl BuildError {
    /// `source` as the failure of the step at `line` of `file` (`instruction` as written);
    /// a cancelled step is the build's cancellation.
    pub(crate) fn step(file: &str, line: usize, instruction: &str, source: StepError) -> Self {
        match source {
            StepError::Cancelled => BuildError::Cancelled,
            source => BuildError::Step {
                file: file.to_owned(),
                line,
                instruction: instruction.to_owned(),
                source: Box::new(source),
            },
        }
    }

    /// A failure outside any step.
    pub(crate) fn internal(what: &'static str, source: impl Into<Cause>) -> Self {
        BuildError::Internal {
            what,
            source: source.into(),
        }
    }
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The step asks for what its rules do not allow, or names what is not there (an unknown
    /// user, a stage that does not exist, a bad `--chmod`).
    #[error("{0}")]
    Invalid(String),
    /// A user or group the step names is not in the image.
    #[error(transparent)]
    User(#[from] crate::user::UserError),
    /// A file or system operation failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A word did not expand.
    #[error(transparent)]
    Expand(#[from] ShellError),
    /// A source in the build context.
    #[error(transparent)]
    Context(#[from] ContextError),
    /// A layer or archive could not be applied.
    #[error(transparent)]
    Layer(#[from] UnpackError),
    /// The sandbox could not run the command.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The step's root could not be had.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// RUN's command failed.
    #[error("process {command} did not complete successfully: exit code: {code}{}", last_output(.tail))]
    Exit {
        /// The command, as BuildKit shows it (JSON).
        command: String,
        /// Its exit code (128 + N for a signal).
        code: i32,
        /// Its last lines of output.
        tail: Vec<String>,
    },
    /// What the caller was asked for (a download) could not be had.
    #[error("{what}")]
    Caller {
        /// What was asked for.
        what: String,
        /// Why.
        #[source]
        source: Cause,
    },
    /// The build was cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// A rule's message (from the config rules, user lookups, flag checks) is an invalid step.
impl From<String> for StepError {
    fn from(message: String) -> Self {
        StepError::Invalid(message)
    }
}

fn last_output(tail: &[String]) -> String {
    let mut out = String::new();
    if !tail.is_empty() {
        out.push_str("\n  last output:");
        for l in tail {
            out.push_str("\n    ");
            out.push_str(l);
        }
    }
    out
}
