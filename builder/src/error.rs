//! The error every part of the builder wraps its OS errors in: what was being done, with the
//! system's error kept as the source (never repeated in the message, so the CLI prints it once,
//! as a cause).

use std::fmt::Display;

/// An OS error and what was being done (a path, or a few words).
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct IoError {
    /// What was being done or touched.
    pub what: String,
    /// The system's error.
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    /// The calling thread's last OS error (`errno`), doing `what`.
    pub fn last(what: impl Display) -> IoError {
        IoError {
            what: what.to_string(),
            source: std::io::Error::last_os_error(),
        }
    }
}

/// Names what an OS error happened on: `fs::read(&p).at(p.display())?`.
pub trait IoContext<T> {
    /// The error, as an [`IoError`] naming `what`.
    fn at(self, what: impl Display) -> Result<T, IoError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, what: impl Display) -> Result<T, IoError> {
        self.map_err(|source| IoError {
            what: what.to_string(),
            source,
        })
    }
}

/// A path as a C string, for system calls; a NUL in it is an `InvalidInput` error.
pub fn c_path(p: &std::path::Path) -> Result<std::ffi::CString, IoError> {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).map_err(|e| IoError {
        what: p.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    })
}
