//! An overlayfs upper directory as layer entries: what a RUN step changed. Overlay marks a
//! deleted path with a 0/0 character device and a directory that replaced a lower one with the
//! `trusted.overlay.opaque` attribute; they become OCI whiteouts and opaque directories. Files
//! keep their mode, owner, times, extended attributes (such as `security.capability`) and hard
//! links.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use wharf_common::archive::layer::{LayerEntry, LayerSource};

/// Attributes overlay keeps for itself; never part of a layer.
const OVERLAY_PREFIXES: [&str; 2] = ["trusted.overlay.", "user.overlay."];

/// The entries for everything under `upper`.
pub fn upper_entries(upper: &Path) -> std::io::Result<Vec<LayerEntry>> {
    let mut out = Vec::new();
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    walk(upper, "", &mut out, &mut links)?;
    Ok(out)
}

fn walk(
    dir: &Path,
    rel: &str,
    out: &mut Vec<LayerEntry>,
    links: &mut HashMap<(u64, u64), String>,
) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for name in names {
        let Some(n) = name.to_str() else { continue };
        let path = dir.join(n);
        let image_path = if rel.is_empty() {
            n.to_owned()
        } else {
            format!("{rel}/{n}")
        };
        let m = std::fs::symlink_metadata(&path)?;
        let ft = m.file_type();
        let base = LayerEntry {
            mode: m.mode() & 0o7777,
            uid: u64::from(m.uid()),
            gid: u64::from(m.gid()),
            mtime: m.mtime(),
            xattrs: xattrs(&path),
            ..LayerEntry::new(&image_path, LayerSource::Dir)
        };
        if ft.is_char_device() && m.rdev() == 0 {
            out.push(LayerEntry {
                source: LayerSource::Whiteout,
                xattrs: Vec::new(),
                ..base
            });
        } else if ft.is_dir() {
            let opaque = get_xattr(&path, "trusted.overlay.opaque").as_deref() == Some(b"y");
            out.push(LayerEntry {
                source: if opaque {
                    LayerSource::OpaqueDir
                } else {
                    LayerSource::Dir
                },
                ..base
            });
            walk(&path, &image_path, out, links)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path)?;
            out.push(LayerEntry {
                source: LayerSource::Symlink(target.to_string_lossy().into_owned()),
                ..base
            });
        } else if ft.is_file() {
            let key = (m.dev(), m.ino());
            let source = match links.get(&key) {
                Some(first) if m.nlink() > 1 => LayerSource::Hardlink(first.clone()),
                _ => {
                    if m.nlink() > 1 {
                        links.insert(key, image_path.clone());
                    }
                    LayerSource::File(path.clone())
                }
            };
            out.push(LayerEntry { source, ..base });
        }
        // Sockets, fifos and devices made by a build step are not kept (as BuildKit).
    }
    Ok(())
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
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            assert!(!ci, "mounting overlayfs needs root under CI=true");
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
                .find(|e| e.path == p)
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
