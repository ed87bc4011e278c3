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

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::Context;

/// A filtered view of a context directory; unmounted when dropped.
#[derive(Debug)]
pub struct FilteredView {
    dir: tempfile::TempDir,
    root: PathBuf,
    mounts: Vec<PathBuf>,
}

fn io(what: &Path) -> impl FnOnce(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", what.display())
}

fn cpath(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{}: NUL in path", p.display()))
}

fn mount(source: &str, target: &Path, fstype: &str, flags: u64, data: &[u8]) -> Result<(), String> {
    let (s, t, f) = (
        CString::new(source).map_err(|e| e.to_string())?,
        cpath(target)?,
        CString::new(fstype).map_err(|e| e.to_string())?,
    );
    let d = CString::new(data).map_err(|e| e.to_string())?;
    // SAFETY: NUL-terminated strings that outlive the call.
    let r = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) };
    if r != 0 {
        return Err(format!(
            "mounting {fstype} on {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

impl FilteredView {
    /// Makes the view of `ctx` under `parent` (a scratch directory of the build).
    pub fn new(ctx: &Context, parent: &Path) -> Result<FilteredView, String> {
        let dir = tempfile::Builder::new()
            .prefix("ctx-")
            .tempdir_in(parent)
            .map_err(io(parent))?;
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
                std::fs::create_dir(&copy).map_err(io(&copy))?;
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

    fn overlay(&mut self, ctx: &Context) -> Result<(), String> {
        let hide = self.dir.path().join("hide");
        let merged = self.dir.path().join("merged");
        for d in [&hide, &merged] {
            std::fs::create_dir(d).map_err(io(d))?;
        }
        // The whiteouts on a tmpfs: character devices 0/0 mean "deleted" to overlayfs only in
        // a lower layer it reads, wherever the store itself lives.
        mount(
            "tmpfs",
            &hide,
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            b"mode=0755",
        )?;
        self.mounts.push(hide.clone());
        whiteouts(ctx, ctx.root(), Path::new(""), &hide)?;
        let fds = crate::sandbox::open_dirs(&[hide.clone(), ctx.root().to_owned()])
            .map_err(|e| e.to_string())?;
        let raw: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let opts = crate::sandbox::overlay_options(&raw, None).map_err(|e| e.to_string())?;
        mount(
            "overlay",
            &merged,
            "overlay",
            libc::MS_RDONLY | libc::MS_NODEV,
            opts.as_bytes(),
        )?;
        self.mounts.push(merged);
        Ok(())
    }

    fn unmount(&mut self) {
        for m in self.mounts.drain(..).rev() {
            if let Ok(c) = cpath(&m) {
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
fn names(dir: &Path) -> Result<Vec<std::ffi::OsString>, String> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    v.sort();
    Ok(v)
}

/// Puts a whiteout in `hide` for every hidden entry under the context directory `dir` (`rel`
/// from the root); returns whether it put any (then `hide/rel` is a directory with `dir`'s
/// attributes).
fn whiteouts(ctx: &Context, dir: &Path, rel: &Path, hide: &Path) -> Result<bool, String> {
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
                std::fs::create_dir_all(p).map_err(io(p))?;
            }
            let c = cpath(&target)?;
            // SAFETY: a NUL-terminated path.
            if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) } != 0 {
                return Err(format!(
                    "{}: {}",
                    target.display(),
                    std::io::Error::last_os_error()
                ));
            }
            any = true;
        } else if meta.is_dir() && whiteouts(ctx, &path, &child, hide)? {
            // A directory of the layer shows its own attributes over the context's: make them
            // the same.
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(meta.mode()))
                .map_err(io(&target))?;
            let _ = std::os::unix::fs::lchown(&target, Some(meta.uid()), Some(meta.gid()));
            let t = libc::timespec {
                tv_sec: meta.mtime() as libc::time_t,
                tv_nsec: meta.mtime_nsec() as libc::c_long,
            };
            let c = cpath(&target)?;
            // SAFETY: a NUL-terminated path and two timespecs.
            unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), 0) };
            any = true;
        }
    }
    Ok(any)
}

/// Copies the visible entries under the context directory `dir` (`rel` from the root) into
/// `to`, links as links.
fn copy_visible(ctx: &Context, dir: &Path, rel: &Path, to: &Path) -> Result<(), String> {
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
            let link = std::fs::read_link(&path).map_err(io(&path))?;
            std::os::unix::fs::symlink(link, &target).map_err(io(&target))?;
        } else if meta.is_dir() {
            std::fs::create_dir(&target).map_err(io(&target))?;
            copy_visible(ctx, &path, &child, &target)?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(meta.mode()))
                .map_err(io(&target))?;
        } else if meta.is_file() {
            std::fs::copy(&path, &target).map_err(io(&path))?;
        } else {
            continue;
        }
        let _ = std::os::unix::fs::lchown(&target, Some(meta.uid()), Some(meta.gid()));
    }
    Ok(())
}
