//! Root filesystems as overlays of layer snapshots (or, where overlayfs cannot be mounted,
//! copies: [`Mode::Copy`]).
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
//!
//! Every user of the snapshots (a build, a `run`) holds a shared flock on
//! `snapshots/.lock` for as long as it lives; `builder prune` removes snapshots (and RUN's cache
//! mounts) only when it can take that lock exclusively, renaming each into `tmp/` before it
//! deletes it, so a snapshot that is there is always whole. A new snapshot is renamed into
//! place only if no other is there (`RENAME_NOREPLACE`): an empty one another stage is using
//! is never replaced under it.

pub mod diff;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use wharf_common::archive::unpack::{UnpackError, UnpackOptions, apply_layer_file};

use crate::error::{IoContext, IoError, c_path};
use wharf_common::digest::Digest;

/// The snapshot directory of a store.
#[derive(Clone, Debug)]
pub struct Snapshots {
    root: PathBuf,
    /// Roots are copies (see [`Mode::Copy`]); shared by the clones a build hands around.
    copy: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// `snapshots/.lock`, held shared while this lives (see the module docs).
    lock: std::sync::Arc<std::fs::File>,
}

/// `flock(2)` on `file`: `how` is `LOCK_SH` or `LOCK_EX`, with `LOCK_NB` or not; `false` when
/// a non-blocking lock is held by someone else.
fn flock(file: &std::fs::File, how: libc::c_int) -> std::io::Result<bool> {
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if how & libc::LOCK_NB != 0 => return Ok(false),
            _ => return Err(e),
        }
    }
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

/// Why a snapshot or a view could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file or mount operation failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A layer could not be extracted or applied.
    #[error("extracting layer {layer}")]
    Layer {
        /// The layer file.
        layer: PathBuf,
        /// Why.
        #[source]
        source: UnpackError,
    },
    /// `WHARF_SNAPSHOTTER` names no mode.
    #[error("WHARF_SNAPSHOTTER={0:?}: expected \"overlay\" or \"copy\"")]
    BadMode(String),
}

impl Snapshots {
    /// The snapshots under `root` (created when missing).
    pub fn new(root: impl Into<PathBuf>) -> Result<Snapshots, SnapshotError> {
        let root = root.into();
        // Snapshots keep image files' owners and setuid bits: other users must not reach them.
        wharf_common::store::private_dir(&root).at(root.display())?;
        std::fs::create_dir_all(root.join("tmp")).at(root.display())?;
        let lock_path = root.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .at(lock_path.display())?;
        flock(&lock, libc::LOCK_SH).at(lock_path.display())?;
        let copy = match std::env::var("WHARF_SNAPSHOTTER").as_deref() {
            Ok("copy") => true,
            Ok("overlay") | Err(_) => false,
            Ok(other) => {
                return Err(SnapshotError::BadMode(other.to_owned()));
            }
        };
        Ok(Snapshots {
            root,
            copy: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(copy)),
            lock: std::sync::Arc::new(lock),
        })
    }

    /// Where the snapshot of `chain` lives.
    pub fn dir(&self, chain: &Digest) -> PathBuf {
        self.root.join(chain.hex())
    }

    /// A new empty directory on the snapshots' filesystem (for upper and work directories).
    pub fn scratch(&self) -> Result<tempfile::TempDir, IoError> {
        tempfile::Builder::new()
            .prefix("s-")
            .tempdir_in(self.root.join("tmp"))
            .at("a scratch directory for snapshots")
    }

    /// The snapshot directories of a stack of layers (chain id, layer file), bottom first,
    /// extracting those not there yet.
    pub fn ensure(&self, layers: &[(Digest, PathBuf)]) -> Result<Vec<PathBuf>, SnapshotError> {
        let mut out = Vec::with_capacity(layers.len());
        for (chain, file) in layers {
            let dir = self.dir(chain);
            if !dir.exists() {
                let tmp = self.scratch()?;
                let fs = tmp.path().join("fs");
                std::fs::create_dir(&fs).at(fs.display())?;
                let opts = UnpackOptions {
                    overlay: true,
                    ..UnpackOptions::image_layers()
                };
                apply_layer_file(&fs, file, &opts).map_err(|source| SnapshotError::Layer {
                    layer: file.clone(),
                    source,
                })?;
                self.adopt(chain, &fs)?;
            }
            out.push(dir);
        }
        Ok(out)
    }

    /// Makes `dir` (an upper directory, or an extracted layer) the snapshot of `chain`. If
    /// another build made it first, theirs is kept.
    pub fn adopt(&self, chain: &Digest, dir: &Path) -> Result<PathBuf, IoError> {
        let target = self.dir(chain);
        let (from, to) = (c_path(dir)?, c_path(&target)?);
        // Never over another snapshot (a plain rename replaces an empty directory, which
        // another stage may be using as a lower layer).
        // SAFETY: NUL-terminated paths.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if r == 0 {
            return Ok(target);
        }
        let e = IoError::last(format_args!("keeping snapshot {}", target.display()));
        if target.is_dir() {
            let _ = std::fs::remove_dir_all(dir);
            return Ok(target);
        }
        Err(e)
    }

    /// Runs `f` if no build or container is using the snapshots (the exclusive lock), then
    /// goes back to sharing: `None` when they are in use.
    pub fn when_unused<T>(&self, f: impl FnOnce() -> T) -> Result<Option<T>, IoError> {
        let got = flock(&self.lock, libc::LOCK_EX | libc::LOCK_NB)
            .at(self.root.join(".lock").display())?;
        if !got {
            return Ok(None);
        }
        let out = f();
        flock(&self.lock, libc::LOCK_SH).at(self.root.join(".lock").display())?;
        Ok(Some(out))
    }

    /// Removes every snapshot (`builder prune`), unless a build or a container is using them;
    /// returns how many went and the disk space they held (`None`: in use, none removed).
    /// Each is renamed into `tmp/` first, so no half-removed snapshot is ever found in place.
    pub fn prune(&self) -> Result<Option<(usize, u64)>, IoError> {
        self.when_unused(|| {
            let mut n = 0;
            let mut bytes = 0;
            let tmp = self.root.join("tmp");
            for e in std::fs::read_dir(&self.root)
                .at(self.root.display())?
                .flatten()
            {
                let name = e.file_name();
                if name == "tmp" || name == ".lock" {
                    continue;
                }
                let gone = tmp.join(format!("gone-{}", name.to_string_lossy()));
                bytes += disk_usage(&e.path());
                std::fs::rename(e.path(), &gone).at(e.path().display())?;
                std::fs::remove_dir_all(&gone).at(gone.display())?;
                n += 1;
            }
            // What killed processes left in tmp/ (nobody uses the snapshots now).
            for e in std::fs::read_dir(&tmp).at(tmp.display())?.flatten() {
                bytes += disk_usage(&e.path());
                let _ = std::fs::remove_dir_all(e.path());
            }
            Ok((n, bytes))
        })?
        .transpose()
    }
}

/// The disk space under `path` (blocks allocated, each file once however many links it has),
/// not following links.
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut todo = vec![path.to_path_buf()];
    while let Some(p) = todo.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if seen.insert((m.dev(), m.ino())) {
            total += m.blocks() * 512;
        }
        if m.is_dir() {
            todo.extend(
                std::fs::read_dir(&p)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
        }
    }
    total
}

/// Makes `root` (a new directory) hold a stack of layers (chain id, layer file; bottom first),
/// each applied in turn: the copy a root is where overlays cannot be had.
pub fn copy_root(chain: &[(Digest, PathBuf)], root: &Path) -> Result<(), SnapshotError> {
    std::fs::create_dir(root).at(root.display())?;
    for (_, file) in chain {
        apply_layer_file(root, file, &UnpackOptions::image_layers()).map_err(|source| {
            SnapshotError::Layer {
                layer: file.clone(),
                source,
            }
        })?;
    }
    Ok(())
}

/// Gives the calling thread (and the threads and processes it starts) a private mount
/// namespace, so the overlays it mounts are seen by nobody else and vanish with it.
pub fn private_mounts() -> Result<(), IoError> {
    // SAFETY: unshare and mount take no pointers we own beyond static strings.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(IoError::last("a private mount namespace for the build"));
        }
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) != 0
        {
            return Err(IoError::last("making the build's mounts private"));
        }
    }
    Ok(())
}

/// How build steps get their roots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Overlays of snapshots (the default).
    Overlay,
    /// Full copies, and a full scan to find what a step changed: where overlayfs cannot be
    /// mounted (or `WHARF_SNAPSHOTTER=copy`). Slower, same results.
    Copy,
}

impl Snapshots {
    /// The mode roots are made in: `WHARF_SNAPSHOTTER` (`overlay` or `copy`), else overlay
    /// until a mount fails.
    pub fn mode(&self) -> Mode {
        match self.copy.load(std::sync::atomic::Ordering::Relaxed) {
            true => Mode::Copy,
            false => Mode::Overlay,
        }
    }

    /// Switches to copies; returns whether this call did (so the caller says so once).
    fn fall_back(&self) -> bool {
        !self.copy.swap(true, std::sync::atomic::Ordering::Relaxed)
    }
}

/// A step's root: an overlay (lower snapshots, and when writable a fresh upper directory), or
/// in [`Mode::Copy`] a directory with every layer applied.
#[derive(Debug)]
pub struct View {
    dir: tempfile::TempDir,
    root: PathBuf,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Overlay { mounted: bool },
    Copy { before: Option<diff::Scan> },
}

/// Why an overlay could not be mounted, when the error says overlayfs is unusable here (rather
/// than something wrong with this mount).
fn unusable(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENODEV | libc::EPERM | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS)
    )
}

impl View {
    /// The root of a stack of layers (chain id, layer file; bottom first), writable or not.
    /// The second value is a notice when this call switched the build to copies.
    pub fn mount(
        snapshots: &Snapshots,
        chain: &[(Digest, PathBuf)],
        writable: bool,
    ) -> Result<(View, Option<String>), SnapshotError> {
        if snapshots.mode() == Mode::Overlay {
            let lowers = snapshots.ensure(chain)?;
            match View::overlay(snapshots, &lowers, writable) {
                Ok(v) => return Ok((v, None)),
                Err(e) if unusable(&e) => {
                    let notice = snapshots.fall_back().then(|| {
                        format!(
                            "overlayfs cannot be mounted here ({e}): build steps use full copies of their roots, which is slower"
                        )
                    });
                    return Ok((View::copy(snapshots, chain)?, notice));
                }
                Err(source) => {
                    return Err(IoError {
                        what: format!("mounting an overlay of {} layers", chain.len()),
                        source,
                    }
                    .into());
                }
            }
        }
        Ok((View::copy(snapshots, chain)?, None))
    }

    fn overlay(snapshots: &Snapshots, lowers: &[PathBuf], writable: bool) -> std::io::Result<View> {
        let dir = snapshots.scratch().map_err(|e| e.source)?;
        let merged = dir.path().join("merged");
        let empty = dir.path().join("empty");
        for d in ["merged", "empty", "upper", "work"] {
            std::fs::create_dir(dir.path().join(d))?;
        }
        // Top first for overlayfs; an empty bottom so that any stack (even none) mounts.
        let mut stack: Vec<PathBuf> = lowers.iter().rev().cloned().collect();
        stack.push(empty);
        let fds = crate::sandbox::open_dirs(&stack).map_err(std::io::Error::other)?;
        let raw: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let upper = dir.path().join("upper");
        let work = dir.path().join("work");
        let opts = crate::sandbox::overlay_options(&raw, writable.then_some((&*upper, &*work)))
            .map_err(std::io::Error::other)?;
        let target = std::ffi::CString::new(merged.as_os_str().as_encoded_bytes())
            .map_err(std::io::Error::other)?;
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
            return Err(std::io::Error::last_os_error());
        }
        Ok(View {
            dir,
            root: merged,
            kind: Kind::Overlay { mounted: true },
        })
    }

    fn copy(snapshots: &Snapshots, chain: &[(Digest, PathBuf)]) -> Result<View, SnapshotError> {
        let dir = snapshots.scratch()?;
        let root = dir.path().join("root");
        copy_root(chain, &root)?;
        Ok(View {
            dir,
            root,
            kind: Kind::Copy { before: None },
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Before a step whose changes [`View::changes`] will be asked for (a copy scans its
    /// whole root now).
    pub fn begin_change(&mut self) -> Result<(), IoError> {
        if let Kind::Copy { before } = &mut self.kind {
            *before = Some(diff::Scan::of(&self.root).at("scanning the root")?);
        }
        Ok(())
    }

    /// What the step changed, as layer entries, less the mount points it was given
    /// (`made`: image paths, parents first). `lowers` are the snapshot directories under an
    /// overlay, top first. An overlay is unmounted.
    pub fn changes(
        &mut self,
        made: &[String],
        lowers: &[PathBuf],
    ) -> Result<Vec<diff::Entry>, IoError> {
        match &mut self.kind {
            Kind::Overlay { .. } => {
                self.unmount()?;
                let upper = self.dir.path().join("upper");
                diff::remove_made(&upper, made);
                diff::prune_copied_up(&upper, Path::new(""), lowers);
                diff::upper_entries(&upper).at("reading what the step changed")
            }
            Kind::Copy { before } => {
                diff::remove_made(&self.root, made);
                let before = before.take().unwrap_or_default();
                diff::scan_changes(&before, &self.root).at("finding what the step changed")
            }
        }
    }

    fn unmount(&mut self) -> Result<(), IoError> {
        if let Kind::Overlay { mounted } = &mut self.kind
            && *mounted
        {
            let c = c_path(&self.root)?;
            // SAFETY: c is a valid NUL-terminated path.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                return Err(IoError::last(format_args!(
                    "unmounting {}",
                    self.root.display()
                )));
            }
            *mounted = false;
        }
        Ok(())
    }

    /// After a step that added a layer (`chain` its chain id): an overlay's upper directory
    /// becomes the layer's snapshot and the view is done (None); a copy already shows the
    /// layer and is kept.
    pub fn commit(
        mut self,
        snapshots: &Snapshots,
        chain: &Digest,
    ) -> Result<Option<View>, IoError> {
        match self.kind {
            Kind::Overlay { .. } => {
                self.unmount()?;
                snapshots.adopt(chain, &self.dir.path().join("upper"))?;
                Ok(None)
            }
            Kind::Copy { .. } => Ok(Some(self)),
        }
    }
}

impl Drop for View {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn tar_with(name: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(if kind == tar::EntryType::Regular {
            1
        } else {
            0
        });
        h.set_mode(0o644);
        let body: &[u8] = if kind == tar::EntryType::Regular {
            b"x"
        } else {
            b""
        };
        match link {
            Some(l) => b.append_link(&mut h, name, l).unwrap(),
            None => {
                // Names tar::Builder would refuse are written into the header by hand.
                h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
                h.set_cksum();
                b.append(&h, body).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn hostile_layers_do_not_reach_outside_their_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = Snapshots::new(dir.path().join("snapshots")).unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let cases = [
            tar_with("../outside/escaped", tar::EntryType::Regular, None),
            tar_with("/../../outside/abs", tar::EntryType::Regular, None),
        ];
        for (i, layer) in cases.iter().enumerate() {
            let file = dir.path().join(format!("layer-{i}.tar"));
            std::fs::write(&file, layer).unwrap();
            let chain: Digest = format!("sha256:{:064x}", i + 1).parse().unwrap();
            // Whatever happens to the member, nothing lands outside the snapshot.
            let _ = snaps.ensure(&[(chain, file)]);
            assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "case {i}");
        }
        // A symlink to the outside and then a file through it: refused or kept inside.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "out", outside.to_str().unwrap())
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, "out/through", &b"x"[..]).unwrap();
        let file = dir.path().join("link.tar");
        std::fs::write(&file, b.into_inner().unwrap()).unwrap();
        let chain: Digest = format!("sha256:{:064x}", 99).parse().unwrap();
        let _ = snaps.ensure(&[(chain, file)]);
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }
}
