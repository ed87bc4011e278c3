//! A full disk: pushes are refused before they start writing when the registry's filesystem
//! has no room, a push that runs out of room mid-way is dropped with its data, and the space
//! deletes and garbage collection need is kept in reserve (`<root>/headroom`, `storage.headroom`
//! bytes): when a delete or a collection cannot write, the reserve is given back and the
//! operation tried again; a collection that freed enough space takes the reserve again.

use std::path::{Path, PathBuf};

use super::ServiceError;

/// Below this much free space (besides what a push declares it brings), pushes are refused.
const MIN_FREE: u64 = 1 << 20;

/// The reserve file and the filesystem it is on.
pub(crate) struct Headroom {
    root: PathBuf,
    file: PathBuf,
    size: u64,
}

impl Headroom {
    pub(crate) fn new(root: &Path, size: u64) -> Headroom {
        Headroom {
            root: root.to_owned(),
            file: root.join("headroom"),
            size,
        }
    }

    /// Bytes the filesystem under the root has free for this process.
    pub(crate) fn available(&self) -> Option<u64> {
        let path = std::ffi::CString::new(self.root.as_os_str().as_encoded_bytes()).ok()?;
        // SAFETY: statvfs fills the zeroed struct it is given; the path is NUL-terminated.
        unsafe {
            let mut st: libc::statvfs = std::mem::zeroed();
            if libc::statvfs(path.as_ptr(), &raw mut st) != 0 {
                return None;
            }
            Some(st.f_bavail.saturating_mul(st.f_frsize))
        }
    }

    /// Refuses a push that would leave the disk without room (`incoming`: the bytes it says
    /// it brings, when it says). While the reserve is given back, pushes leave its size free,
    /// so that they cannot use up what deletes were given.
    pub(crate) fn admit(&self, incoming: u64) -> Result<(), ServiceError> {
        let reserve = if self.size > 0 && !self.file.exists() {
            self.size
        } else {
            0
        };
        let needed = incoming.saturating_add(MIN_FREE).saturating_add(reserve);
        match self.available() {
            Some(free) if free < needed => Err(ServiceError::DiskFull(Some(format!(
                "{free} bytes free, {needed} needed"
            )))),
            _ => Ok(()),
        }
    }

    /// Makes the reserve if it is missing and there is room for it twice over.
    pub(crate) fn take(&self) {
        if self.size == 0 || self.file.exists() {
            return;
        }
        if self
            .available()
            .is_none_or(|free| free < self.size.saturating_mul(2))
        {
            return;
        }
        let made = std::fs::File::create(&self.file).and_then(|f| {
            let len = libc::off_t::try_from(self.size).unwrap_or(libc::off_t::MAX);
            // SAFETY: posix_fallocate on a descriptor `f` keeps open.
            match unsafe { libc::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, len) } {
                0 => f.sync_all(),
                e => Err(std::io::Error::from_raw_os_error(e)),
            }
        });
        if let Err(e) = made {
            let _ = std::fs::remove_file(&self.file);
            tracing::warn!(error = %e, path = %self.file.display(), "cannot reserve space for deletes");
        }
    }

    /// Gives the reserve back; whether there was one.
    pub(crate) fn release(&self) -> bool {
        let released = std::fs::remove_file(&self.file).is_ok();
        if released {
            tracing::warn!(
                bytes = self.size,
                "the registry's disk is full: released the space kept for deletes"
            );
        }
        released
    }
}
