//! Stopping a build: a token the caller keeps and the build carries in its options. Cancelling
//! kills every RUN the build is running and makes it fail as cancelled before its next step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Stops one build (Ctrl-C). Clones share the state; the default token is never cancelled
/// unless [`CancelToken::cancel`] is called on it or a clone.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    cancelled: AtomicBool,
    /// Sandboxes running for the build, killed on cancel.
    running: Mutex<Vec<i32>>,
}

/// Removes a running sandbox from its token's list when dropped.
pub(crate) struct Registered {
    token: CancelToken,
    pid: i32,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.token
            .0
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|p| *p != self.pid);
    }
}

impl CancelToken {
    /// A token not cancelled yet.
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Cancels the build: its RUN steps are killed and it fails as cancelled.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        for pid in self
            .0
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            // SAFETY: kill has no memory preconditions; the pid is a sandbox not yet waited for.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// Puts a running sandbox on the list `cancel` kills; killed at once if the build is
    /// cancelled already.
    pub(crate) fn register(&self, pid: i32) -> Registered {
        let mut list = self
            .0
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        list.push(pid);
        if self.is_cancelled() {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        Registered {
            token: self.clone(),
            pid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_per_build() {
        let a = CancelToken::new();
        let b = CancelToken::new();
        let a2 = a.clone();
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let guard = a.register(pid);
        a2.cancel();
        assert!(a.is_cancelled() && !b.is_cancelled());
        let mut child = child;
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        drop(guard);
        assert!(a.0.running.lock().unwrap().is_empty());
    }
}
