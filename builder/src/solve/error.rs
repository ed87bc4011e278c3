//! How a build fails.

use crate::dockerfile::instructions::DockerfileError;

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

pub(super) fn step_error(file: &str, line: usize, original: &str, message: String) -> BuildError {
    BuildError::Step {
        file: file.to_owned(),
        line,
        instruction: original.to_owned(),
        message,
    }
}
