//! stdout is data, stderr is for people: results go through [`out`], errors through
//! [`report_error`] as `error: …` with `Caused by:` lines and a hint when there is one.

#![allow(clippy::print_stderr)]

use std::io::Write;
use std::process::ExitCode;

/// A failure with advice for the user, shown after the error.
#[derive(Debug)]
pub struct Hint(pub String);

impl std::fmt::Display for Hint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Hint {}

/// A write to stdout after its reader went away (`wharf images | head -1`): the end of the
/// output, not a failure. Only writes to stdout are marked so; a broken pipe anywhere else (a
/// registry closing a connection mid-upload) is an error like any.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for StdoutClosed {}

fn mark_stdout(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::io::Error::new(std::io::ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        e
    }
}

/// Writes one line of data to stdout.
pub fn out(line: impl std::fmt::Display) -> std::io::Result<()> {
    let mut o = std::io::stdout().lock();
    writeln!(o, "{line}").map_err(mark_stdout)?;
    o.flush().map_err(mark_stdout)
}

/// stdout as a writer for data (an archive), its closing marked as [`StdoutClosed`].
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stdout().write(buf).map_err(mark_stdout)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush().map_err(mark_stdout)
    }
}

fn is_stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<StdoutClosed>()
            || c.downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .is_some_and(|inner| inner.is::<StdoutClosed>())
    })
}

/// Prints an error chain and returns exit code 1 (0 for a closed stdout pipe).
pub fn report_error(e: &anyhow::Error) -> ExitCode {
    if is_stdout_closed(e) {
        return ExitCode::SUCCESS;
    }
    let mut chain = e.chain().filter(|c| !c.is::<Hint>());
    if let Some(first) = chain.next() {
        eprintln!("error: {first}");
    }
    for cause in chain {
        eprintln!("  Caused by: {cause}");
    }
    if let Some(h) = e.chain().find_map(|c| c.downcast_ref::<Hint>()) {
        eprintln!("\nhint: {h}");
    }
    ExitCode::FAILURE
}

/// Writes one line for people to stderr.
pub fn err_line(line: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_closed_stdout_ends_quietly() {
        let stdout = anyhow::Error::new(mark_stdout(std::io::Error::from(
            std::io::ErrorKind::BrokenPipe,
        )))
        .context("listing images");
        assert!(is_stdout_closed(&stdout));
        // A registry hanging up while a blob is sent is a failed push.
        let network = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("pushing a layer");
        assert!(!is_stdout_closed(&network));
        assert_eq!(report_error(&network), ExitCode::FAILURE);
    }
}
