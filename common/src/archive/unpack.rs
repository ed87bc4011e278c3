//! Applying an image layer (an uncompressed tar stream) onto a root filesystem directory, safely:
//! every member lands inside the root whatever its name says (`../`, absolute paths, symlinked
//! parents are all resolved as in a chroot), hard links may only point inside the root, OCI
//! whiteouts (`.wh.name`, `.wh..wh..opq`) delete what lower layers put there, and device nodes
//! are refused unless asked for.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::root::{Parent, Root, list_dir};

/// Prefix of a whiteout member.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the opaque-directory marker.
pub const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";

/// Why a layer could not be applied, naming the member.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The tar stream is damaged.
    #[error("layer member {at}")]
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
    #[error("layer {path}")]
    Open {
        /// The layer file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Writing the root failed.
    #[error("layer member {at}: writing {path}")]
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

/// The member's path as clean, relative components (bytes, as the archive has them); `..`
/// cannot climb above the root.
fn clean_member(name: &[u8]) -> Vec<OsString> {
    let mut parts: Vec<OsString> = Vec::new();
    for c in name.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(OsString::from_vec(c.to_vec())),
        }
    }
    parts
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
    let d =
        crate::media_type::decompress(io::BufReader::with_capacity(1 << 20, f)).map_err(open)?;
    apply_layer(root, d.reader, opts)
}

/// Applies the tar stream `layer` onto `root`. Every member is placed through one
/// [`Root`]: its parent directory resolved inside the root, the member itself created,
/// changed and timed with calls that never follow it; directory times, set last, are resolved
/// again the same way, so a later member that turned a parent into a link cannot send them
/// outside.
pub fn apply_layer(
    root: &Path,
    layer: impl Read,
    opts: &UnpackOptions,
) -> Result<Unpacked, UnpackError> {
    let dir = Root::open(root).map_err(|source| UnpackError::Io {
        at: "(root)".into(),
        path: root.to_owned(),
        source,
    })?;
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
        let name_bytes = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&name_bytes).into_owned();
        let parts = clean_member(&name_bytes);
        let Some(base) = parts.last().cloned() else {
            continue; // the root itself ("./")
        };
        let rel: PathBuf = parts.iter().collect();
        let io_err = |source: io::Error| {
            if source.raw_os_error() == Some(libc::ELOOP) {
                return UnpackError::Refused {
                    at: name.clone(),
                    reason: "symbolic links nest too deep to resolve inside the root".into(),
                };
            }
            UnpackError::Io {
                at: name.clone(),
                path: root.join(&rel),
                source,
            }
        };
        let base = base.as_bytes();
        if base == WHITEOUT_OPAQUE.as_bytes() && opts.whiteouts {
            let parent = dir.parent(&rel, Some(0o755)).map_err(io_err)?;
            if opts.overlay {
                set_dir_xattr(parent.dir.as_fd(), "trusted.overlay.opaque", b"y")
                    .map_err(io_err)?;
                done.whiteouts += 1;
                continue;
            }
            let here = rel.parent().unwrap_or(Path::new("")).to_path_buf();
            for child in list_dir(parent.dir.as_fd()).map_err(io_err)? {
                let p = here.join(&child);
                if !written.iter().any(|w| w.starts_with(&p)) {
                    let victim = Parent {
                        dir: parent.dir.try_clone().map_err(io_err)?,
                        name: child,
                    };
                    victim.remove_all().map_err(io_err)?;
                    done.whiteouts += 1;
                }
            }
            continue;
        }
        if let Some(hidden) = base
            .strip_prefix(WHITEOUT_PREFIX.as_bytes())
            .filter(|_| opts.whiteouts)
        {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(UnpackError::Refused {
                    at: name.clone(),
                    reason: format!(
                        "whiteout names {:?}, which is not a file in this directory",
                        String::from_utf8_lossy(hidden)
                    ),
                });
            }
            let victim_rel = rel.with_file_name(OsStr::from_bytes(hidden));
            let victim = match dir.parent(&victim_rel, opts.overlay.then_some(0o755)) {
                Ok(v) => v,
                // Nothing below to hide.
                Err(e) if !opts.overlay && e.kind() == io::ErrorKind::NotFound => {
                    done.whiteouts += 1;
                    continue;
                }
                Err(e) => return Err(io_err(e)),
            };
            victim.remove_all().map_err(io_err)?;
            if opts.overlay {
                victim.mknod(libc::S_IFCHR, 0).map_err(io_err)?;
            }
            done.whiteouts += 1;
            continue;
        }
        let place = dir.parent(&rel, Some(0o755)).map_err(io_err)?;
        let header = entry.header().clone();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let kind = header.entry_type();
        // Whatever was there goes, unless both are directories (then it is merged).
        let existing = place.lstat().map_err(io_err)?;
        if existing.is_some_and(|m| !(m.is_dir() && kind.is_dir())) {
            place.remove_all().map_err(io_err)?;
        }
        match kind {
            k if k.is_dir() => {
                if existing.is_none_or(|m| !m.is_dir()) {
                    place.mkdir(mode).map_err(io_err)?;
                } else {
                    place.chmod(mode).map_err(io_err)?;
                }
                if let Ok(t) = header.mtime() {
                    dir_times.push((rel.clone(), i64::try_from(t).unwrap_or(0)));
                }
            }
            k if k.is_file() || k == tar::EntryType::Continuous => {
                let mut f = place.create_file(mode).map_err(io_err)?;
                io::copy(&mut entry, &mut f).map_err(|source| UnpackError::Corrupt {
                    at: name.clone(),
                    source,
                })?;
                f.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(io_err)?;
            }
            k if k.is_symlink() => {
                let link = header
                    .link_name_bytes()
                    .ok_or_else(|| UnpackError::Refused {
                        at: name.clone(),
                        reason: "symlink without a target".into(),
                    })?;
                place.symlink(OsStr::from_bytes(&link)).map_err(io_err)?;
            }
            k if k.is_hard_link() => {
                let link = header
                    .link_name_bytes()
                    .ok_or_else(|| UnpackError::Refused {
                        at: name.clone(),
                        reason: "hard link without a target".into(),
                    })?;
                let shown = String::from_utf8_lossy(&link).into_owned();
                let link_rel: PathBuf = clean_member(&link).iter().collect();
                let refused = |why: &str| UnpackError::Refused {
                    at: name.clone(),
                    reason: format!("hard link to {shown} {why}"),
                };
                let source = match dir.parent(&link_rel, None) {
                    Ok(s) => s,
                    Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                        return Err(refused("nests symbolic links too deep"));
                    }
                    Err(_) => return Err(refused("which is not in the layer's root")),
                };
                match source.lstat().map_err(io_err)? {
                    None => return Err(refused("which is not in the layer's root")),
                    Some(m) if m.is_dir() => return Err(refused("points at a directory")),
                    Some(_) => {}
                }
                place.hard_link_from(&source).map_err(io_err)?;
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
                place.mknod(kind_bits | mode, dev).map_err(io_err)?;
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
            place
                .lchown(
                    u32::try_from(uid).unwrap_or(u32::MAX),
                    u32::try_from(gid).unwrap_or(u32::MAX),
                )
                .map_err(io_err)?;
            if mode & 0o7000 != 0 {
                // chown clears set-id bits: put them back (never through a link, not even
                // one this member hard-linked).
                place.chmod(mode).map_err(io_err)?;
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
                    match place.set_xattr(attr, value) {
                        Ok(()) => {}
                        // A filesystem without that namespace: the file is still right.
                        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
                        Err(e) => return Err(io_err(e)),
                    }
                }
            }
        }
        if !kind.is_dir()
            && let Ok(t) = header.mtime()
        {
            let _ = place.set_mtime(i64::try_from(t).unwrap_or(0));
        }
        written.insert(rel);
        done.entries += 1;
    }
    // Directory times last (writing into a directory changes its mtime), each directory found
    // again inside the root: whatever a later member made of its path, it stays inside.
    for (rel, t) in dir_times.into_iter().rev() {
        if let Ok(p) = dir.parent(&rel, None)
            && p.lstat().ok().flatten().is_some_and(|m| m.is_dir())
        {
            let _ = p.set_mtime(t);
        }
    }
    Ok(done)
}

/// Sets an extended attribute on the directory `dir` (an `O_PATH` descriptor).
fn set_dir_xattr(dir: std::os::fd::BorrowedFd, key: &str, value: &[u8]) -> io::Result<()> {
    let proc = format!("/proc/self/fd/{}", dir.as_raw_fd());
    let (p, k) = (
        std::ffi::CString::new(proc).map_err(io::Error::other)?,
        std::ffi::CString::new(key).map_err(io::Error::other)?,
    );
    // SAFETY: valid NUL-terminated strings and a value of the length given; the path is this
    // process's own descriptor of the directory, which setxattr follows to it.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            k.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

    /// A tar member with a raw name, type, mode, mtime and link target.
    fn member(
        b: &mut tar::Builder<Vec<u8>>,
        name: &[u8],
        kind: tar::EntryType,
        mode: u32,
        mtime: u64,
        link: Option<&[u8]>,
    ) {
        let mut h = tar::Header::new_gnu();
        h.set_mode(mode);
        h.set_mtime(mtime);
        h.set_entry_type(kind);
        h.set_size(0);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
        }
        h.set_cksum();
        b.append(&h, &b""[..]).unwrap();
    }

    #[test]
    fn issue_10_deferred_directory_times_stay_inside() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        let victim = t.path().join("victim");
        fs::create_dir_all(victim.join("target")).unwrap();
        let before = fs::metadata(victim.join("target"))
            .unwrap()
            .modified()
            .unwrap();
        // x/ and x/target/ (dated 1977), then x becomes a link to the victim.
        let mut b = tar::Builder::new(Vec::new());
        member(&mut b, b"x/", tar::EntryType::Directory, 0o755, 1000, None);
        member(
            &mut b,
            b"x/target/",
            tar::EntryType::Directory,
            0o755,
            222_222_222,
            None,
        );
        let link = victim.to_str().unwrap().as_bytes().to_vec();
        member(
            &mut b,
            b"x",
            tar::EntryType::Symlink,
            0o777,
            1000,
            Some(&link),
        );
        let layer = b.into_inner().unwrap();
        for opts in [UnpackOptions::default(), UnpackOptions::image_layers()] {
            let _ = fs::remove_dir_all(&root);
            fs::create_dir(&root).unwrap();
            apply_layer(&root, &layer[..], &opts).unwrap();
            let after = fs::metadata(victim.join("target"))
                .unwrap()
                .modified()
                .unwrap();
            assert_eq!(after, before, "a directory time reached outside the root");
        }
    }

    #[test]
    fn issue_10_a_hard_link_to_a_link_is_never_chmodded_through() {
        if !wharf_testkit::require_root() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        let host = t.path().join("host-file");
        fs::write(&host, "host").unwrap();
        fs::set_permissions(&host, fs::Permissions::from_mode(0o644)).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let link = host.to_str().unwrap().as_bytes().to_vec();
        member(
            &mut b,
            b"s",
            tar::EntryType::Symlink,
            0o777,
            1000,
            Some(&link),
        );
        member(&mut b, b"h", tar::EntryType::Link, 0o4777, 1000, Some(b"s"));
        let layer = b.into_inner().unwrap();
        apply_layer(&root, &layer[..], &UnpackOptions::image_layers()).unwrap();
        let mode = fs::metadata(&host).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o644, "the layer made a host file {mode:o}");
        assert!(
            fs::symlink_metadata(root.join("h"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn issue_10_names_are_bytes() {
        let t = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        member(
            &mut b,
            b"caf\xe9/",
            tar::EntryType::Directory,
            0o755,
            1000,
            None,
        );
        member(
            &mut b,
            b"caf\xe9/n\xff",
            tar::EntryType::Regular,
            0o644,
            1000,
            None,
        );
        let layer = b.into_inner().unwrap();
        apply_layer(t.path(), &layer[..], &UnpackOptions::default()).unwrap();
        let dir = t.path().join(OsStr::from_bytes(b"caf\xe9"));
        assert!(dir.join(OsStr::from_bytes(b"n\xff")).is_file());
    }
}
