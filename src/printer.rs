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

/// Writes one line of data to stdout.
pub fn out(line: impl std::fmt::Display) -> std::io::Result<()> {
    let mut o = std::io::stdout().lock();
    writeln!(o, "{line}")?;
    o.flush()
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Prints an error chain and returns exit code 1 (0 for a closed stdout pipe).
pub fn report_error(e: &anyhow::Error) -> ExitCode {
    if is_broken_pipe(e) {
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
