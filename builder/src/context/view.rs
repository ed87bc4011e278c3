//! The build context as `RUN --mount=type=bind` shows it: the context directory less what
//! `.dockerignore` leaves out, enforced by the kernel, as BuildKit's bind mounts show its
//! filtered copy of the context.
//!
//! The view is a read-only overlay: the context below, and above it a layer made on a small
//! tmpfs that holds a whiteout (a 0/0 character device) for every entry the context hides, at
//! the top of each hidden subtree; a directory that only holds hidden entries further down is
//! a directory there too, with the context directory's mode, owner and time. So a hidden file,
//! directory or link is simply not there, and a link in the view leads only to what the view
//! has. It is mounted once per build, in the build's private mount namespace, on the first RUN
//! that binds the context. Where overlayfs cannot be mounted, the view is a filtered copy.

use std::ffi::CStr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::Context;
use crate::error::{IoContext, IoError, c_path};

/// A filtered view of a context directory; unmounted when dropped.
#[derive(Debug)]
pub struct FilteredView {
    dir: tempfile::TempDir,
    root: PathBuf,
    mounts: Vec<PathBuf>,
}

fn mount(fstype: &CStr, target: &Path, flags: u64, data: &CStr) -> Result<(), IoError> {
    let t = c_path(target)?;
    // SAFETY: NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            fstype.as_ptr(),
            t.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(IoError::last(format_args!(
            "mounting {} on {}",
            fstype.to_string_lossy(),
            target.display()
        )));
    }
    Ok(())
}

impl FilteredView {
    /// Makes the view of `ctx` under `parent` (a scratch directory of the build).
    pub fn new(ctx: &Context, parent: &Path) -> Result<FilteredView, IoError> {
        let dir = tempfile::Builder::new()
            .prefix("ctx-")
            .tempdir_in(parent)
            .at(parent.display())?;
        let mut view = FilteredView {
            root: dir.path().join("merged"),
            dir,
            mounts: Vec::new(),
        };
        match view.overlay(ctx) {
            Ok(()) => Ok(view),
            Err(_) => {
                view.unmount();
                let copy = view.dir.path().join("copy");
                std::fs::create_dir(&copy).at(copy.display())?;
                copy_visible(ctx, ctx.root(), Path::new(""), &copy)?;
                view.root = copy;
                Ok(view)
            }
        }
    }

    /// The view's root: the context as the build may see it.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn overlay(&mut self, ctx: &Context) -> Result<(), IoError> {
        let hide = self.dir.path().join("hide");
        let merged = self.dir.path().join("merged");
        for d in [&hide, &merged] {
            std::fs::create_dir(d).at(d.display())?;
        }
        // The whiteouts on a tmpfs: character devices 0/0 mean "deleted" to overlayfs only in
        // a lower layer it reads, wherever the store itself lives.
        mount(
            c"tmpfs",
            &hide,
            libc::MS_NOSUID | libc::MS_NOEXEC,
            c"mode=0755",
        )?;
        self.mounts.push(hide.clone());
        whiteouts(ctx, ctx.root(), Path::new(""), &hide)?;
        let overlay_failed = |e: crate::sandbox::SandboxError| IoError {
            what: format!("an overlay of {}", ctx.root().display()),
            source: std::io::Error::other(e),
        };
        let fds = crate::sandbox::open_dirs(&[hide.clone(), ctx.root().to_owned()])
            .map_err(overlay_failed)?;
        let raw: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let opts = crate::sandbox::overlay_options(&raw, None).map_err(overlay_failed)?;
        mount(c"overlay", &merged, libc::MS_RDONLY | libc::MS_NODEV, &opts)?;
        self.mounts.push(merged);
        Ok(())
    }

    fn unmount(&mut self) {
        for m in self.mounts.drain(..).rev() {
            if let Ok(c) = c_path(&m) {
                // SAFETY: a NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

impl Drop for FilteredView {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Result<Vec<std::ffi::OsString>, IoError> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .at(dir.display())?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    v.sort();
    Ok(v)
}

/// Puts a whiteout in `hide` for every hidden entry under the context directory `dir` (`rel`
/// from the root); returns whether it put any (then `hide/rel` is a directory with `dir`'s
/// attributes).
fn whiteouts(ctx: &Context, dir: &Path, rel: &Path, hide: &Path) -> Result<bool, IoError> {
    let mut any = false;
    for name in names(dir)? {
        let path = dir.join(&name);
        let child = rel.join(&name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let target = hide.join(&child);
        if !ctx.visible(&child, meta.is_dir()) {
            if let Some(p) = target.parent() {
                std::fs::create_dir_all(p).at(p.display())?;
            }
            let c = c_path(&target)?;
            // SAFETY: a NUL-terminated path.
            if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) } != 0 {
                return Err(IoError::last(target.display()));
            }
            any = true;
        } else if meta.is_dir() && whiteouts(ctx, &path, &child, hide)? {
            // A directory of the layer shows its own attributes over the context's: make them
            // the same.
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(meta.mode()))
                .at(target.display())?;
            let _ = std::os::unix::fs::lchown(&target, Some(meta.uid()), Some(meta.gid()));
            let t = libc::timespec {
                tv_sec: meta.mtime() as libc::time_t,
                tv_nsec: meta.mtime_nsec() as libc::c_long,
            };
            let c = c_path(&target)?;
            // SAFETY: a NUL-terminated path and two timespecs.
            unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), 0) };
            any = true;
        }
    }
    Ok(any)
}

/// Copies the visible entries under the context directory `dir` (`rel` from the root) into
/// `to`, links as links.
fn copy_visible(ctx: &Context, dir: &Path, rel: &Path, to: &Path) -> Result<(), IoError> {
    for name in names(dir)? {
        let path = dir.join(&name);
        let child = rel.join(&name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !ctx.visible(&child, meta.is_dir()) {
            continue;
        }
        let target = to.join(&name);
        if meta.file_type().is_symlink() {
            let link = std::fs::read_link(&path).at(path.display())?;
            std::os::unix::fs::symlink(link, &target).at(target.display())?;
        } else if meta.is_dir() {
            std::fs::create_dir(&target).at(target.display())?;
            copy_visible(ctx, &path, &child, &target)?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(meta.mode()))
                .at(target.display())?;
        } else if meta.is_file() {
            std::fs::copy(&path, &target).at(path.display())?;
        } else {
            continue;
        }
        let _ = std::os::unix::fs::lchown(&target, Some(meta.uid()), Some(meta.gid()));
    }
    Ok(())
}
