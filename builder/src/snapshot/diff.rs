//! An overlayfs upper directory as layer entries: what a RUN step changed. Overlay marks a
//! deleted path with a 0/0 character device and a directory that replaced a lower one with the
//! `trusted.overlay.opaque` attribute; they become OCI whiteouts and opaque directories. Files
//! keep their mode, owner, times, extended attributes (such as `security.capability`) and hard
//! links.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use wharf_common::archive::layer::{LayerEntry, LayerSource};

/// Attributes overlay keeps for itself; never part of a layer.
const OVERLAY_PREFIXES: [&str; 2] = ["trusted.overlay.", "user.overlay."];

/// A layer entry (what the diff functions return).
pub use wharf_common::archive::layer::LayerEntry as Entry;

/// The entries for everything under `upper`.
pub fn upper_entries(upper: &Path) -> std::io::Result<Vec<LayerEntry>> {
    let mut out = Vec::new();
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    walk(upper, Path::new(""), &mut out, &mut links)?;
    Ok(out)
}

fn walk(
    dir: &Path,
    rel: &Path,
    out: &mut Vec<LayerEntry>,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    // Names are bytes: every one is kept, UTF-8 or not.
    for name in names {
        let path = dir.join(&name);
        let image_path = rel.join(&name);
        let is_dir = entry_for(&path, &image_path, true, out, links)?;
        if is_dir {
            walk(&path, &image_path, out, links)?;
        }
    }
    Ok(())
}

/// Pushes the entry for the file at `path` (image path `image_path`); returns whether it is a
/// directory. With `overlay`, a 0/0 character device is a whiteout and an opaque directory is
/// marked so.
fn entry_for(
    path: &Path,
    image_path: &Path,
    overlay: bool,
    out: &mut Vec<LayerEntry>,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> std::io::Result<bool> {
    let m = std::fs::symlink_metadata(path)?;
    let ft = m.file_type();
    let base = LayerEntry {
        mode: m.mode() & 0o7777,
        uid: u64::from(m.uid()),
        gid: u64::from(m.gid()),
        mtime: m.mtime(),
        xattrs: xattrs(path),
        ..LayerEntry::new(image_path, LayerSource::Dir)
    };
    if overlay && ft.is_char_device() && m.rdev() == 0 {
        out.push(LayerEntry {
            source: LayerSource::Whiteout,
            xattrs: Vec::new(),
            ..base
        });
    } else if ft.is_dir() {
        let opaque = overlay && get_xattr(path, "trusted.overlay.opaque").as_deref() == Some(b"y");
        out.push(LayerEntry {
            source: if opaque {
                LayerSource::OpaqueDir
            } else {
                LayerSource::Dir
            },
            ..base
        });
        return Ok(true);
    } else if ft.is_symlink() {
        let target = std::fs::read_link(path)?;
        out.push(LayerEntry {
            source: LayerSource::Symlink(target),
            ..base
        });
    } else if ft.is_file() {
        let key = (m.dev(), m.ino());
        let source = match links.get(&key) {
            Some(first) if m.nlink() > 1 => LayerSource::Hardlink(first.clone()),
            _ => {
                if m.nlink() > 1 {
                    links.insert(key, image_path.to_path_buf());
                }
                LayerSource::File(path.to_owned())
            }
        };
        out.push(LayerEntry { source, ..base });
    }
    // Sockets, fifos and devices made by a build step are not kept (as BuildKit).
    Ok(false)
}

/// Every path under a root with what tells a change: type, mode, owner, inode, and for
/// non-directories size and change time (a directory's own times move with its children).
#[derive(Debug, Default)]
pub struct Scan(BTreeMap<PathBuf, Stamp>);

/// Mode (with type), uid, gid, inode, size, ctime seconds and nanoseconds.
type Stamp = (u32, u32, u32, u64, u64, i64, i64);

impl Scan {
    /// Scans `root`.
    pub fn of(root: &Path) -> std::io::Result<Scan> {
        let mut map = BTreeMap::new();
        let mut stack = vec![(root.to_path_buf(), PathBuf::new())];
        while let Some((dir, rel)) = stack.pop() {
            for e in std::fs::read_dir(&dir)?.flatten() {
                let n = e.file_name();
                let path = dir.join(&n);
                let image_path = rel.join(&n);
                let m = std::fs::symlink_metadata(&path)?;
                let stamp = if m.is_dir() {
                    stack.push((path, image_path.clone()));
                    (m.mode(), m.uid(), m.gid(), m.ino(), 0, 0, 0)
                } else {
                    (
                        m.mode(),
                        m.uid(),
                        m.gid(),
                        m.ino(),
                        m.size(),
                        m.ctime(),
                        m.ctime_nsec(),
                    )
                };
                map.insert(image_path, stamp);
            }
        }
        Ok(Scan(map))
    }
}

/// What changed under `root` since `before` was scanned, as layer entries: new and changed
/// paths with their parent directories, and a whiteout for each path removed (the topmost
/// of a removed tree).
pub fn scan_changes(before: &Scan, root: &Path) -> std::io::Result<Vec<LayerEntry>> {
    let after = Scan::of(root)?;
    let mut emit: BTreeSet<PathBuf> = BTreeSet::new();
    let mut whiteouts: Vec<PathBuf> = Vec::new();
    let parents = |p: &Path, emit: &mut BTreeSet<PathBuf>| {
        let mut cur = p;
        while let Some(parent) = cur.parent().filter(|q| !q.as_os_str().is_empty()) {
            emit.insert(parent.to_path_buf());
            cur = parent;
        }
    };
    for (path, stamp) in &after.0 {
        if before.0.get(path) != Some(stamp) {
            emit.insert(path.clone());
            parents(path, &mut emit);
        }
    }
    for path in before.0.keys() {
        if after.0.contains_key(path) {
            continue;
        }
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        // Only the topmost removed path: a removed parent covers it, unless the parent is
        // there again (replaced), when each old child needs its own.
        if parent.is_none_or(|p| after.0.contains_key(p)) {
            whiteouts.push(path.clone());
            parents(path, &mut emit);
        }
    }
    let mut out = Vec::new();
    let mut links = HashMap::new();
    for path in &emit {
        entry_for(&root.join(path), path, false, &mut out, &mut links)?;
    }
    out.extend(
        whiteouts
            .iter()
            .map(|p| LayerEntry::new(p, LayerSource::Whiteout)),
    );
    Ok(out)
}

/// Takes out of `dir` the mount points made for a step (image paths, parents first), if they
/// are still empty (the step may have put files under a parent it needed). A path the step
/// turned into a symbolic link is left alone: it could point anywhere on the host.
pub fn remove_made(dir: &Path, made: &[String]) {
    let Ok(root) = wharf_common::root::Root::open(dir) else {
        return;
    };
    for rel in made.iter().rev() {
        let Ok(p) = root.parent_without_links(Path::new(rel)) else {
            continue;
        };
        match p.lstat() {
            Ok(Some(m)) if m.is_dir() => {
                let _ = p.unlink(true);
            }
            Ok(Some(m)) if m.mode & libc::S_IFMT == libc::S_IFREG && m.size == 0 => {
                let _ = p.unlink(false);
            }
            _ => {}
        }
    }
}

/// Removes the directories of `upper` that overlay only copied up (to hold a mount point
/// removed since, or because something inside was touched and put back): empty, not opaque,
/// and with the mode and owner of the same directory below (`lowers`, top first). Returns
/// whether `rel` is empty now.
pub fn prune_copied_up(upper: &Path, rel: &Path, lowers: &[PathBuf]) -> bool {
    let dir = upper.join(rel);
    let Ok(list) = std::fs::read_dir(&dir) else {
        return false;
    };
    let mut empty = true;
    for e in list.flatten() {
        let child = rel.join(e.file_name());
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if !(is_dir && prune_copied_up(upper, &child, lowers)) {
            empty = false;
            continue;
        }
        let Ok(mine) = std::fs::symlink_metadata(upper.join(&child)) else {
            continue;
        };
        let opaque =
            get_xattr(&upper.join(&child), "trusted.overlay.opaque").as_deref() == Some(b"y");
        let below = lowers
            .iter()
            .find_map(|l| std::fs::symlink_metadata(l.join(&child)).ok());
        let same = below.is_some_and(|b| {
            b.is_dir() && b.mode() == mine.mode() && b.uid() == mine.uid() && b.gid() == mine.gid()
        });
        if !opaque && same && std::fs::remove_dir(upper.join(&child)).is_ok() {
            continue;
        }
        empty = false;
    }
    empty
}

fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = CString::new(name).ok()?;
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a buffer of the length given.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return None;
    }
    buf.truncate(usize::try_from(len).ok()?);
    Some(buf)
}

/// The extended attributes of `path` that belong in a layer.
fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(p) = CString::new(path.as_os_str().as_bytes()) else {
        return Vec::new();
    };
    let mut names = vec![0u8; 4096];
    // SAFETY: valid path and a buffer of the length given.
    let len = unsafe { libc::llistxattr(p.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let Ok(len) = usize::try_from(len) else {
        return Vec::new();
    };
    names.truncate(len);
    let mut out = Vec::new();
    for raw in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(raw) else {
            continue;
        };
        if OVERLAY_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        if let Some(v) = get_xattr(path, name) {
            out.push((name.to_owned(), v));
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::process::Command;

    use super::*;

    #[test]
    fn overlay_changes_become_whiteouts_opaque_dirs_and_links() {
        if !wharf_testkit::require_root() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let (lower, upper, work, merged) = (
            t.path().join("l"),
            t.path().join("u"),
            t.path().join("w"),
            t.path().join("m"),
        );
        for d in [&lower, &upper, &work, &merged] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(lower.join("gone"), "1").unwrap();
        std::fs::create_dir_all(lower.join("d")).unwrap();
        std::fs::write(lower.join("d/old"), "2").unwrap();
        let script = format!(
            "mount -t overlay overlay -o lowerdir={},upperdir={},workdir={} {m} && rm {m}/gone && rm -r {m}/d && mkdir {m}/d && echo x > {m}/d/new && echo b > {m}/b && ln {m}/b {m}/b2 && ln -s b {m}/s",
            lower.display(),
            upper.display(),
            work.display(),
            m = merged.display()
        );
        let ok = Command::new("unshare")
            .args(["-m", "sh", "-ec", &script])
            .status()
            .unwrap();
        assert!(ok.success(), "overlay in a private mount namespace");
        let entries = upper_entries(&upper).unwrap();
        let find = |p: &str| {
            entries
                .iter()
                .find(|e| e.path == Path::new(p))
                .unwrap_or_else(|| panic!("{p} missing: {entries:?}"))
        };
        assert_eq!(find("gone").source, LayerSource::Whiteout);
        assert_eq!(find("d").source, LayerSource::OpaqueDir);
        assert!(matches!(find("d/new").source, LayerSource::File(_)));
        assert!(matches!(find("b").source, LayerSource::File(_)));
        assert_eq!(find("b2").source, LayerSource::Hardlink("b".into()));
        assert_eq!(find("s").source, LayerSource::Symlink("b".into()));
        assert!(entries.iter().all(|e| {
            e.xattrs
                .iter()
                .all(|(k, _)| !k.starts_with("trusted.overlay."))
        }));
    }
}
