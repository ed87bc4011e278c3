//! Stopping builds: Ctrl-C kills every running RUN and fails the build.

/// Stopping a build (Ctrl-C): every running RUN is killed, and the build fails.
pub struct Cancel;

static CANCELLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static RUNNING: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// Removes a running sandbox from [`Cancel`]'s list when dropped.
pub(crate) struct Registered(i32);

impl Drop for Registered {
    fn drop(&mut self) {
        RUNNING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|p| *p != self.0);
    }
}

impl Cancel {
    /// Stops every build in this process: RUN steps are killed and fail as cancelled.
    pub fn cancel_all() {
        CANCELLED.store(true, std::sync::atomic::Ordering::SeqCst);
        for pid in RUNNING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            // SAFETY: kill has no memory preconditions; the pid is a sandbox not yet waited for.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
    }

    /// Whether [`Cancel::cancel_all`] was called.
    pub fn cancelled() -> bool {
        CANCELLED.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn register(pid: i32) -> Registered {
        let mut list = RUNNING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        list.push(pid);
        if Cancel::cancelled() {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        Registered(pid)
    }
}
