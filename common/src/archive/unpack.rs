//! Applying an image layer (an uncompressed tar stream) onto a root filesystem directory, safely:
//! every member lands inside the root whatever its name says (`../`, absolute paths, symlinked
//! parents are all resolved as in a chroot), hard links may only point inside the root, OCI
//! whiteouts (`.wh.name`, `.wh..wh..opq`) delete what lower layers put there, and device nodes
//! are refused unless asked for.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

/// Prefix of a whiteout member.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the opaque-directory marker.
pub const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";

/// Why a layer could not be applied, naming the member.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The tar stream is damaged.
    #[error("layer member {at}: {source}")]
    Corrupt {
        /// The member (or `(header)` when unknown).
        at: String,
        /// What failed.
        source: io::Error,
    },
    /// A member would be written outside the root or links out of it.
    #[error("layer member {at}: {reason}")]
    Refused {
        /// The member.
        at: String,
        /// Why.
        reason: String,
    },
    /// The layer file could not be opened or its compression read.
    #[error("layer {path}: {source}")]
    Open {
        /// The layer file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Writing the root failed.
    #[error("layer member {at}: writing {path}: {source}")]
    Io {
        /// The member.
        at: String,
        /// The file on disk.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// How to apply a layer.
#[derive(Clone, Debug)]
pub struct UnpackOptions {
    /// Set owners from the tar headers (needs root).
    pub owners: bool,
    /// Create device nodes and fifos (needs root); otherwise they are refused.
    pub devices: bool,
    /// Treat `.wh.` members as OCI whiteouts (image layers); off, they are ordinary files
    /// (archives unpacked by ADD).
    pub whiteouts: bool,
    /// Write whiteouts in overlayfs's own form instead of applying them: a 0/0 character
    /// device for a deleted path, `trusted.overlay.opaque` on an opaque directory. For a layer
    /// extracted alone, as an overlay lower directory (a snapshot).
    pub overlay: bool,
}

impl UnpackOptions {
    /// For image layers unpacked by this process: owners and device nodes as the tar says when
    /// running as root, otherwise neither.
    pub fn image_layers() -> UnpackOptions {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        UnpackOptions {
            owners: root,
            devices: root,
            whiteouts: true,
            overlay: false,
        }
    }
}

impl Default for UnpackOptions {
    fn default() -> UnpackOptions {
        UnpackOptions {
            owners: false,
            devices: false,
            whiteouts: true,
            overlay: false,
        }
    }
}

/// What applying a layer did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Members written.
    pub entries: usize,
    /// Paths removed by whiteouts.
    pub whiteouts: usize,
}

/// The member's path as clean, relative components; `..` cannot climb above the root.
fn clean_member(name: &str) -> Vec<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    parts
}

/// Resolves already-existing parents of `parts` within `root` (following symlinks as a chroot
/// would) and returns where the last component goes.
/// `None` when symlinks nest too deep to resolve (the member is then refused).
fn place(root: &Path, parts: &[String]) -> Option<PathBuf> {
    let Some((last, parents)) = parts.split_last() else {
        return Some(root.to_path_buf());
    };
    let mut dir: Vec<String> = Vec::new();
    let mut pending: Vec<String> = parents.iter().rev().cloned().collect();
    let mut links = 0;
    while let Some(p) = pending.pop() {
        if p == ".." {
            dir.pop();
            continue;
        }
        let candidate = dir
            .iter()
            .fold(root.to_path_buf(), |a, c| a.join(c))
            .join(&p);
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    return None;
                }
                let Ok(target) = fs::read_link(&candidate) else {
                    return None;
                };
                if target.is_absolute() {
                    dir.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(s) => pending.push(s.to_string_lossy().into_owned()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => dir.push(p),
        }
    }
    Some(
        dir.iter()
            .fold(root.to_path_buf(), |a, c| a.join(c))
            .join(last),
    )
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Applies the layer file at `path` (plain, gzip or zstd) onto `root`.
pub fn apply_layer_file(
    root: &Path,
    path: &Path,
    opts: &UnpackOptions,
) -> Result<Unpacked, UnpackError> {
    let open = |source| UnpackError::Open {
        path: path.to_owned(),
        source,
    };
    let f = File::open(path).map_err(open)?;
    let d = super::decompress(io::BufReader::with_capacity(1 << 20, f)).map_err(open)?;
    apply_layer(root, d.reader, opts)
}

/// Applies the tar stream `layer` onto `root`.
pub fn apply_layer(
    root: &Path,
    layer: impl Read,
    opts: &UnpackOptions,
) -> Result<Unpacked, UnpackError> {
    let mut archive = tar::Archive::new(layer);
    let entries = archive.entries().map_err(|source| UnpackError::Corrupt {
        at: "(header)".into(),
        source,
    })?;
    let mut done = Unpacked::default();
    // Paths this layer wrote: an opaque marker spares them.
    let mut written: HashSet<PathBuf> = HashSet::new();
    let mut dir_times: Vec<(PathBuf, i64)> = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(|source| UnpackError::Corrupt {
            at: "(header)".into(),
            source,
        })?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let io_err = |path: &Path| {
            let at = name.clone();
            let path = path.to_path_buf();
            move |source: io::Error| UnpackError::Io { at, path, source }
        };
        let parts = clean_member(&name);
        let Some(base) = parts.last().cloned() else {
            continue; // the root itself ("./")
        };
        let Some(target) = place(root, &parts) else {
            return Err(UnpackError::Refused {
                at: name,
                reason: "symbolic links nest too deep to resolve inside the root".into(),
            });
        };
        if !target.starts_with(root) {
            return Err(UnpackError::Refused {
                at: name,
                reason: "resolves outside the root".into(),
            });
        }
        let parent = target.parent().unwrap_or(root).to_path_buf();
        if base == WHITEOUT_OPAQUE && opts.whiteouts && opts.overlay {
            fs::create_dir_all(&parent).map_err(io_err(&parent))?;
            xattr::set(&parent, "trusted.overlay.opaque", b"y").map_err(io_err(&parent))?;
            done.whiteouts += 1;
            continue;
        }
        if base == WHITEOUT_OPAQUE && opts.whiteouts {
            if let Ok(children) = fs::read_dir(&parent) {
                for c in children.flatten() {
                    let p = c.path();
                    if !written.iter().any(|w| w.starts_with(&p)) {
                        remove_any(&p).map_err(io_err(&p))?;
                        done.whiteouts += 1;
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = base
            .strip_prefix(WHITEOUT_PREFIX)
            .filter(|_| opts.whiteouts)
        {
            if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.contains('/') {
                return Err(UnpackError::Refused {
                    at: name,
                    reason: format!(
                        "whiteout names {hidden:?}, which is not a file in this directory"
                    ),
                });
            }
            let victim = parent.join(hidden);
            remove_any(&victim).map_err(io_err(&victim))?;
            if opts.overlay {
                fs::create_dir_all(&parent).map_err(io_err(&parent))?;
                let c = std::ffi::CString::new(victim.as_os_str().as_encoded_bytes()).map_err(
                    |_| UnpackError::Refused {
                        at: name.clone(),
                        reason: "NUL in path".into(),
                    },
                )?;
                // SAFETY: `c` is a valid NUL-terminated path; mknod only reads it.
                if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) } != 0 {
                    return Err(io_err(&victim)(io::Error::last_os_error()));
                }
            }
            done.whiteouts += 1;
            continue;
        }
        fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        let header = entry.header().clone();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let kind = header.entry_type();
        // Whatever was there goes, unless both are directories (then it is merged).
        let existing = fs::symlink_metadata(&target).ok();
        if existing
            .as_ref()
            .is_some_and(|m| !(m.is_dir() && kind.is_dir()))
        {
            remove_any(&target).map_err(io_err(&target))?;
        }
        match kind {
            k if k.is_dir() => {
                if existing.as_ref().is_none_or(|m| !m.is_dir()) {
                    fs::create_dir(&target).map_err(io_err(&target))?;
                }
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(io_err(&target))?;
                if let Ok(t) = header.mtime() {
                    dir_times.push((target.clone(), i64::try_from(t).unwrap_or(0)));
                }
            }
            k if k.is_file() || k == tar::EntryType::Continuous => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .map_err(io_err(&target))?;
                io::copy(&mut entry, &mut f).map_err(|source| UnpackError::Corrupt {
                    at: name.clone(),
                    source,
                })?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(io_err(&target))?;
            }
            k if k.is_symlink() => {
                let link =
                    header
                        .link_name()
                        .ok()
                        .flatten()
                        .ok_or_else(|| UnpackError::Refused {
                            at: name.clone(),
                            reason: "symlink without a target".into(),
                        })?;
                symlink(&link, &target).map_err(io_err(&target))?;
            }
            k if k.is_hard_link() => {
                let link =
                    header
                        .link_name()
                        .ok()
                        .flatten()
                        .ok_or_else(|| UnpackError::Refused {
                            at: name.clone(),
                            reason: "hard link without a target".into(),
                        })?;
                let link_parts = clean_member(&link.to_string_lossy());
                let source = place(root, &link_parts).ok_or_else(|| UnpackError::Refused {
                    at: name.clone(),
                    reason: "hard link target nests symbolic links too deep".into(),
                })?;
                let meta = fs::symlink_metadata(&source).map_err(|_| UnpackError::Refused {
                    at: name.clone(),
                    reason: format!(
                        "hard link to {} which is not in the layer's root",
                        link.display()
                    ),
                })?;
                if !source.starts_with(root) || meta.is_dir() {
                    return Err(UnpackError::Refused {
                        at: name,
                        reason: format!(
                            "hard link to {} points outside the root or at a directory",
                            link.display()
                        ),
                    });
                }
                fs::hard_link(&source, &target).map_err(io_err(&target))?;
            }
            k if matches!(
                k,
                tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo
            ) =>
            {
                if !opts.devices {
                    return Err(UnpackError::Refused {
                        at: name,
                        reason: "device nodes and fifos are not allowed here".into(),
                    });
                }
                let kind_bits = match k {
                    tar::EntryType::Char => libc::S_IFCHR,
                    tar::EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let dev = libc::makedev(
                    header.device_major().ok().flatten().unwrap_or(0),
                    header.device_minor().ok().flatten().unwrap_or(0),
                );
                let c = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()).map_err(
                    |_| UnpackError::Refused {
                        at: name.clone(),
                        reason: "NUL in path".into(),
                    },
                )?;
                // SAFETY: `c` is a valid NUL-terminated path; mknod only reads it.
                if unsafe { libc::mknod(c.as_ptr(), kind_bits | mode, dev) } != 0 {
                    return Err(io_err(&target)(io::Error::last_os_error()));
                }
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => continue,
            other => {
                return Err(UnpackError::Refused {
                    at: name,
                    reason: format!("unsupported member type {other:?}"),
                });
            }
        }
        if opts.owners {
            let uid = header.uid().unwrap_or(0);
            let gid = header.gid().unwrap_or(0);
            std::os::unix::fs::lchown(&target, u32::try_from(uid).ok(), u32::try_from(gid).ok())
                .map_err(io_err(&target))?;
            if !kind.is_symlink() && mode & 0o7000 != 0 {
                // chown clears set-id bits: put them back.
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(io_err(&target))?;
            }
        }
        if opts.owners
            && let Ok(Some(exts)) = entry.pax_extensions()
        {
            // Extended attributes (security.capability and the like), as root only, after the
            // owner: chown clears a file capability.
            for ext in exts.flatten() {
                // Never overlayfs's own attributes: a layer must not steer the overlay.
                if let (Ok(key), value) = (ext.key(), ext.value_bytes())
                    && let Some(attr) = key.strip_prefix("SCHILY.xattr.")
                    && !attr.starts_with("trusted.overlay.")
                {
                    match xattr::set(&target, attr, value) {
                        Ok(()) => {}
                        // A filesystem without that namespace: the file is still right.
                        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
                        Err(e) => return Err(io_err(&target)(e)),
                    }
                }
            }
        }
        if !kind.is_dir()
            && let Ok(t) = header.mtime()
        {
            set_mtime(&target, i64::try_from(t).unwrap_or(0));
        }
        written.insert(target);
        done.entries += 1;
    }
    // Directory times last: writing into a directory changes its mtime.
    for (dir, t) in dir_times.into_iter().rev() {
        set_mtime(&dir, t);
    }
    Ok(done)
}

fn set_mtime(path: &Path, secs: i64) {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return;
    };
    let t = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: valid path and a two-element timespec array; utimensat does not keep them.
    unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        );
    }
}

/// Opens `path` for reading without following a final symlink.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    enum M<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Sym(&'a str, &'a str),
        Hard(&'a str, &'a str),
        Fifo(&'a str),
    }

    fn tar_of(members: &[M<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for m in members {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_mtime(1000);
            let (name, data, kind, link): (&str, &[u8], tar::EntryType, Option<&str>) = match m {
                M::File(n, d) => (n, d, tar::EntryType::Regular, None),
                M::Dir(n) => (n, b"", tar::EntryType::Directory, None),
                M::Sym(n, t) => (n, b"", tar::EntryType::Symlink, Some(t)),
                M::Hard(n, t) => (n, b"", tar::EntryType::Link, Some(t)),
                M::Fifo(n) => (n, b"", tar::EntryType::Fifo, None),
            };
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            // Raw names: the tar crate's own setters refuse `..`, which is what we test.
            let bytes = name.as_bytes();
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            if let Some(l) = link {
                h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn hostile_members_stay_inside() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        let outside = t.path().join("outside");
        let layer = tar_of(&[
            M::File("../../outside", b"x"),
            M::File("/etc/abs", b"abs"),
            M::Sym("up", "../.."),
            M::File("up/escaped", b"y"),
            M::Sym("etc2", "/etc"),
            M::File("etc2/passwd", b"mine"),
        ]);
        apply_layer(&root, &layer[..], &UnpackOptions::default()).unwrap();
        assert!(!outside.exists());
        assert_eq!(fs::read(root.join("outside")).unwrap(), b"x");
        assert_eq!(fs::read(root.join("etc/abs")).unwrap(), b"abs");
        assert_eq!(fs::read(root.join("escaped")).unwrap(), b"y");
        assert_eq!(fs::read(root.join("etc/passwd")).unwrap(), b"mine");
        assert!(!t.path().join("escaped").exists());
        let hard = tar_of(&[M::Hard("h", "../../../etc/shadow")]);
        let e = apply_layer(&root, &hard[..], &UnpackOptions::default()).unwrap_err();
        assert!(e.to_string().contains("layer member h"), "{e}");
        let fifo = tar_of(&[M::Fifo("f")]);
        let e = apply_layer(&root, &fifo[..], &UnpackOptions::default()).unwrap_err();
        assert!(e.to_string().contains("not allowed"), "{e}");
    }

    #[test]
    fn whiteouts_and_opaque_directories() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let lower = tar_of(&[
            M::Dir("a/"),
            M::File("a/keep", b"1"),
            M::File("a/gone", b"2"),
            M::Dir("o/"),
            M::File("o/old", b"3"),
            M::File("f", b"4"),
        ]);
        apply_layer(root, &lower[..], &UnpackOptions::default()).unwrap();
        let upper = tar_of(&[
            M::File("a/.wh.gone", b""),
            M::File("o/new", b"5"),
            M::File("o/.wh..wh..opq", b""),
            M::Hard("a/link", "a/keep"),
            M::Dir("f/"),
        ]);
        let done = apply_layer(root, &upper[..], &UnpackOptions::default()).unwrap();
        assert!(root.join("a/keep").exists() && !root.join("a/gone").exists());
        assert!(!root.join("o/old").exists(), "opaque hides the lower layer");
        assert_eq!(
            fs::read(root.join("o/new")).unwrap(),
            b"5",
            "but not this layer's"
        );
        assert!(root.join("f").is_dir(), "a directory replaces a file");
        assert_eq!(fs::read(root.join("a/link")).unwrap(), b"1");
        assert_eq!(done.whiteouts, 2);
    }

    #[test]
    fn deep_link_chains_and_bad_whiteouts_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        let mut members: Vec<(String, String)> = (0..300)
            .map(|i| (format!("s{i}"), format!("s{}", i + 1)))
            .collect();
        members.push(("s300".into(), "/etc".into()));
        let syms: Vec<M<'_>> = members.iter().map(|(n, t)| M::Sym(n, t)).collect();
        apply_layer(&root, &tar_of(&syms)[..], &UnpackOptions::default()).unwrap();
        let e = apply_layer(
            &root,
            &tar_of(&[M::File("s0/passwd", b"x")])[..],
            &UnpackOptions::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("too deep"), "{e}");
        for bad in [".wh...", ".wh.", "a/.wh.."] {
            let e = apply_layer(
                &root,
                &tar_of(&[M::File(bad, b"")])[..],
                &UnpackOptions::default(),
            )
            .unwrap_err();
            assert!(e.to_string().contains("whiteout"), "{bad}: {e}");
        }
        assert!(t.path().exists() && root.exists());
        // Unpacking an ADD archive: .wh. names are just files.
        let plain = UnpackOptions {
            whiteouts: false,
            ..UnpackOptions::default()
        };
        apply_layer(&root, &tar_of(&[M::File(".wh.keep", b"k")])[..], &plain).unwrap();
        assert_eq!(fs::read(root.join(".wh.keep")).unwrap(), b"k");
    }
}
