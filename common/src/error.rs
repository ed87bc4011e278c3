//! Errors as text. Our error types keep their causes as `source()` and leave them out of their
//! own message (the CLI prints each cause on a line of its own); where an error has to become a
//! single string (a log field, a detail sent to a client), [`Chain`] writes it with its causes.

use std::fmt;

/// An error and its causes, written `message: cause: cause`.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading {0}")]
    struct Reading(&'static str, #[source] std::io::Error);

    #[test]
    fn causes_follow_the_message() {
        let e = Reading("a.txt", std::io::Error::other("disk on fire"));
        assert_eq!(Chain(&e).to_string(), "reading a.txt: disk on fire");
    }
}
