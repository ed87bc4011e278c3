//! Root filesystems as overlays of layer snapshots.
//!
//! A snapshot is one layer extracted alone into `snapshots/<chain id>/`, whiteouts in
//! overlayfs's own form, so any stack of them is a valid overlay: each layer is extracted once
//! and shared by every build and `run` that uses it. A build step's root is a [`View`]: the
//! parent snapshots as lower directories under a fresh upper directory; afterwards the upper
//! directory is what the step changed ([`diff`] turns it into layer entries) and is adopted
//! as the new layer's snapshot by a rename, without copying.
//!
//! Views are mounted in the mount namespace of the thread that builds ([`private_mounts`]),
//! so the host never sees them and none outlives the process.

pub mod diff;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use wharf_common::archive::unpack::{UnpackOptions, apply_layer_file};
use wharf_common::digest::Digest;

/// The snapshot directory of a store.
#[derive(Clone, Debug)]
pub struct Snapshots {
    root: PathBuf,
}

/// The chain ids of a stack of layers (their diff ids, bottom first), as the image spec
/// defines them: the first is its diff id, each next `sha256(parent + " " + diff_id)`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => {
                let mut h = wharf_common::digest::Algorithm::Sha256.hasher();
                h.update(format!("{parent} {d}").as_bytes());
                h.finish()
            }
        };
        out.push(next);
    }
    out
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}

impl Snapshots {
    /// The snapshots under `root` (created when missing).
    pub fn new(root: impl Into<PathBuf>) -> Result<Snapshots, String> {
        let root = root.into();
        std::fs::create_dir_all(root.join("tmp")).map_err(io(root.display()))?;
        Ok(Snapshots { root })
    }

    /// Where the snapshot of `chain` lives.
    pub fn dir(&self, chain: &Digest) -> PathBuf {
        self.root.join(chain.hex())
    }

    /// A new empty directory on the snapshots' filesystem (for upper and work directories).
    pub fn scratch(&self) -> Result<tempfile::TempDir, String> {
        tempfile::Builder::new()
            .prefix("s-")
            .tempdir_in(self.root.join("tmp"))
            .map_err(io("a scratch directory for snapshots"))
    }

    /// The snapshot directories of a stack of layers (chain id, layer file), bottom first,
    /// extracting those not there yet.
    pub fn ensure(&self, layers: &[(Digest, PathBuf)]) -> Result<Vec<PathBuf>, String> {
        let mut out = Vec::with_capacity(layers.len());
        for (chain, file) in layers {
            let dir = self.dir(chain);
            if !dir.exists() {
                let tmp = self.scratch()?;
                let fs = tmp.path().join("fs");
                std::fs::create_dir(&fs).map_err(io(fs.display()))?;
                let opts = UnpackOptions {
                    overlay: true,
                    ..UnpackOptions::image_layers()
                };
                apply_layer_file(&fs, file, &opts)
                    .map_err(|e| format!("extracting layer {}: {e}", file.display()))?;
                self.adopt(chain, &fs)?;
            }
            out.push(dir);
        }
        Ok(out)
    }

    /// Makes `dir` (an upper directory, or an extracted layer) the snapshot of `chain`. If
    /// another build made it first, theirs is kept.
    pub fn adopt(&self, chain: &Digest, dir: &Path) -> Result<PathBuf, String> {
        let target = self.dir(chain);
        match std::fs::rename(dir, &target) {
            Ok(()) => Ok(target),
            Err(_) if target.is_dir() => {
                let _ = std::fs::remove_dir_all(dir);
                Ok(target)
            }
            Err(e) => Err(format!("keeping snapshot {}: {e}", target.display())),
        }
    }

    /// Removes every snapshot (`builder prune`); returns how many.
    pub fn prune(&self) -> Result<usize, String> {
        let mut n = 0;
        for e in std::fs::read_dir(&self.root)
            .map_err(io(self.root.display()))?
            .flatten()
        {
            if e.file_name() != "tmp" {
                std::fs::remove_dir_all(e.path()).map_err(io(e.path().display()))?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Gives the calling thread (and the threads and processes it starts) a private mount
/// namespace, so the overlays it mounts are seen by nobody else and vanish with it.
pub fn private_mounts() -> Result<(), String> {
    // SAFETY: unshare and mount take no pointers we own beyond static strings.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(format!(
                "a private mount namespace for the build: {}",
                std::io::Error::last_os_error()
            ));
        }
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) != 0
        {
            return Err(format!(
                "making the build's mounts private: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// A mounted overlay: lower snapshots, and (when writable) a fresh upper directory.
#[derive(Debug)]
pub struct View {
    dir: tempfile::TempDir,
    merged: PathBuf,
    writable: bool,
    mounted: bool,
}

impl View {
    /// Mounts `lowers` (bottom first) at a new mount point, writable or not.
    pub fn mount(
        snapshots: &Snapshots,
        lowers: &[PathBuf],
        writable: bool,
    ) -> Result<View, String> {
        let dir = snapshots.scratch()?;
        let merged = dir.path().join("merged");
        let empty = dir.path().join("empty");
        for d in ["merged", "empty", "upper", "work"] {
            std::fs::create_dir(dir.path().join(d)).map_err(io(d))?;
        }
        // Top first for overlayfs; an empty bottom so that any stack (even none) mounts.
        let mut stack: Vec<PathBuf> = lowers.iter().rev().cloned().collect();
        stack.push(empty);
        let fds = crate::sandbox::open_dirs(&stack).map_err(|e| e.to_string())?;
        let raw: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let upper = dir.path().join("upper");
        let work = dir.path().join("work");
        let opts = crate::sandbox::overlay_options(&raw, writable.then_some((&*upper, &*work)))
            .map_err(|e| e.to_string())?;
        let target = std::ffi::CString::new(merged.as_os_str().as_encoded_bytes())
            .map_err(|_| "NUL in a path".to_owned())?;
        let flags = if writable { 0 } else { libc::MS_RDONLY };
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let r = unsafe {
            libc::mount(
                c"overlay".as_ptr(),
                target.as_ptr(),
                c"overlay".as_ptr(),
                flags,
                opts.as_ptr().cast(),
            )
        };
        if r != 0 {
            return Err(format!(
                "mounting an overlay of {} layers: {}",
                lowers.len(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(View {
            dir,
            merged,
            writable,
            mounted: true,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.merged
    }

    /// The upper directory (what changed), once [`View::unmount`]ed.
    pub fn upper(&self) -> PathBuf {
        self.dir.path().join("upper")
    }

    /// Unmounts; the upper directory stays until the view is dropped.
    pub fn unmount(&mut self) -> Result<(), String> {
        if self.mounted {
            let c = std::ffi::CString::new(self.merged.as_os_str().as_encoded_bytes())
                .map_err(|_| "NUL in a path".to_owned())?;
            // SAFETY: c is a valid NUL-terminated path.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                return Err(format!(
                    "unmounting {}: {}",
                    self.merged.display(),
                    std::io::Error::last_os_error()
                ));
            }
            self.mounted = false;
        }
        Ok(())
    }

    /// Unmounts and makes the upper directory the snapshot of `chain`.
    pub fn commit(mut self, snapshots: &Snapshots, chain: &Digest) -> Result<PathBuf, String> {
        debug_assert!(self.writable);
        self.unmount()?;
        snapshots.adopt(chain, &self.upper())
    }
}

impl Drop for View {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}
