//! Writing image layers deterministically: the same files give the same bytes, whatever the
//! order they were found in or when they were touched. Entries are sorted by path component,
//! carry no user or group names, no access or change times, and with `SOURCE_DATE_EPOCH` no
//! modification time later than it. The tar is hashed (the diff id) and compressed (gzip
//! through `gzip.rs`: zlib-rs, with stored blocks for chunks that do not compress; or zstd, or
//! not at all) and hashed again (the digest) in one pass.

use std::cmp::Ordering;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::digest::{Algorithm, Digest, HashingWriter};
use crate::media_type::{self, Compression};

/// What a layer entry holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerSource {
    /// A directory.
    Dir,
    /// A regular file whose content is read from this path when the layer is written.
    File(PathBuf),
    /// A regular file with this content.
    Bytes(Vec<u8>),
    /// A symbolic link to this target.
    Symlink(PathBuf),
    /// A hard link to another entry of the layer (its path).
    Hardlink(PathBuf),
    /// A whiteout: the path is deleted from lower layers.
    Whiteout,
    /// A directory that hides everything lower layers put in it (`.wh..wh..opq` inside).
    OpaqueDir,
}

/// One entry of a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerEntry {
    /// Path in the image, relative (`usr/bin/x`); any bytes but NUL, as names are.
    pub path: PathBuf,
    /// What it is.
    pub source: LayerSource,
    /// Permission bits (and set-id/sticky bits).
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Extended attributes (`security.capability`, …).
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl LayerEntry {
    /// An entry with mode 0644 (files) or 0755 (directories), root-owned, at time 0.
    pub fn new(path: impl AsRef<Path>, source: LayerSource) -> LayerEntry {
        let mode = if matches!(source, LayerSource::Dir | LayerSource::OpaqueDir) {
            0o755
        } else {
            0o644
        };
        LayerEntry {
            path: trim_slashes(path.as_ref()),
            source,
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: Vec::new(),
        }
    }
}

/// How to write a layer.
#[derive(Clone, Copy, Debug)]
pub struct LayerOptions {
    /// Compression of the blob.
    pub compression: Compression,
    /// Clamp modification times to this (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: Option<i64>,
}

/// A written layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenLayer {
    /// Digest of the uncompressed tar (the config's diff id).
    pub diff_id: Digest,
    /// Digest of the blob as written.
    pub digest: Digest,
    /// Size of the blob as written.
    pub size: u64,
    /// Its media type.
    pub media_type: &'static str,
}

/// `path` without leading and trailing slashes (bytes, not re-encoded).
fn trim_slashes(path: &Path) -> PathBuf {
    let b = path.as_os_str().as_bytes();
    let start = b.iter().position(|c| *c != b'/').unwrap_or(b.len());
    let end = b.iter().rposition(|c| *c != b'/').map_or(start, |i| i + 1);
    PathBuf::from(std::ffi::OsStr::from_bytes(&b[start..end.max(start)]))
}

fn by_components(a: &Path, b: &Path) -> Ordering {
    let (a, b) = (a.as_os_str().as_bytes(), b.as_os_str().as_bytes());
    a.split(|c| *c == b'/').cmp(b.split(|c| *c == b'/'))
}

/// `path` with `suffix` appended to its bytes.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut b = path.as_os_str().as_bytes().to_vec();
    b.extend_from_slice(suffix.as_bytes());
    PathBuf::from(std::ffi::OsString::from_vec(b))
}

/// Writes `entries` as a layer to `out`.
pub fn write_layer(
    mut entries: Vec<LayerEntry>,
    out: impl Write,
    opts: LayerOptions,
) -> io::Result<WrittenLayer> {
    // The last entry for a path wins, as a later COPY source overwrites an earlier one: reverse,
    // then a stable sort keeps it first among equals, and dedup keeps the first.
    entries.reverse();
    entries.sort_by(|a, b| by_components(&a.path, &b.path));
    entries.dedup_by(|b, a| a.path == b.path);
    link_to_first(&mut entries);
    let blob = HashingWriter::new(out, Algorithm::Sha256);
    let (diff_id, blob) = match opts.compression {
        Compression::Gzip => {
            // Incompressible stretches (random data, files compressed already) are stored.
            let gz = super::gzip::GzipWriter::new(blob);
            let (diff_id, gz) = write_tar(&entries, gz, opts)?;
            (diff_id, gz.finish()?)
        }
        Compression::Zstd => {
            let z = zstd::stream::write::Encoder::new(blob, 3)?;
            let (diff_id, z) = write_tar(&entries, z, opts)?;
            (diff_id, z.finish()?)
        }
        Compression::None => write_tar(&entries, blob, opts)?,
    };
    let (digest, size, _) = blob.finish();
    Ok(WrittenLayer {
        diff_id,
        digest,
        size,
        media_type: match opts.compression {
            Compression::Gzip => media_type::OCI_LAYER_GZIP,
            Compression::Zstd => media_type::OCI_LAYER_ZSTD,
            Compression::None => media_type::OCI_LAYER,
        },
    })
}

/// A hard link must follow its target in the tar: in each group of linked paths, the one that
/// sorts first carries the content and the others link to it.
fn link_to_first(entries: &mut [LayerEntry]) {
    let index: std::collections::HashMap<PathBuf, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.path.clone(), i))
        .collect();
    for i in 0..entries.len() {
        let LayerSource::Hardlink(target) = &entries[i].source else {
            continue;
        };
        let target = trim_slashes(target);
        let Some(&t) = index.get(&target) else {
            continue;
        };
        if t > i && !matches!(entries[t].source, LayerSource::Hardlink(_)) {
            // Move the content to the earlier path; the later one links back.
            let content = std::mem::replace(
                &mut entries[t].source,
                LayerSource::Hardlink(entries[i].path.clone()),
            );
            let meta = entries[t].clone();
            let e = &mut entries[i];
            e.source = content;
            e.mode = meta.mode;
            e.uid = meta.uid;
            e.gid = meta.gid;
            e.mtime = meta.mtime;
            e.xattrs = meta.xattrs;
            // Other links to the old target now go through the new first path.
            let first = e.path.clone();
            for other in entries.iter_mut().skip(i + 1) {
                if other.source == LayerSource::Hardlink(target.clone()) {
                    other.source = LayerSource::Hardlink(first.clone());
                }
            }
        }
    }
}

fn write_tar<W: Write>(
    entries: &[LayerEntry],
    out: W,
    opts: LayerOptions,
) -> io::Result<(Digest, W)> {
    let mut b = tar::Builder::new(HashingWriter::new(out, Algorithm::Sha256));
    b.follow_symlinks(false);
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let mtime = match opts.source_date_epoch {
            Some(clamp) => e.mtime.min(clamp),
            None => e.mtime,
        };
        h.set_mtime(u64::try_from(mtime).unwrap_or(0));
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mode(e.mode);
        if !e.xattrs.is_empty() {
            let records: Vec<(String, &[u8])> = e
                .xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
                .collect();
            b.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))?;
        }
        match &e.source {
            LayerSource::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, with_suffix(&e.path, "/"), io::empty())?;
            }
            LayerSource::OpaqueDir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, with_suffix(&e.path, "/"), io::empty())?;
                let mut m = tar::Header::new_gnu();
                m.set_entry_type(tar::EntryType::Regular);
                m.set_size(0);
                // As containerd writes it: the directory's mode.
                m.set_mode(h.mode().unwrap_or(0o755));
                m.set_mtime(h.mtime().unwrap_or(0));
                b.append_data(&mut m, e.path.join(".wh..wh..opq"), io::empty())?;
            }
            LayerSource::Bytes(data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, &e.path, data.as_slice())?;
            }
            LayerSource::File(p) => {
                // Never through a symlink: the path must still be the file it was.
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(p)
                    .map_err(|err| io::Error::new(err.kind(), format!("{}: {err}", p.display())))?;
                let len = f.metadata()?.len();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(len);
                // Exactly the size in the header, even if the file changes meanwhile.
                b.append_data(
                    &mut h,
                    &e.path,
                    ExactReader {
                        inner: f.take(len),
                        left: len,
                    },
                )?;
            }
            LayerSource::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, &e.path, target)?;
            }
            LayerSource::Hardlink(target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                b.append_link(&mut h, &e.path, target)?;
            }
            LayerSource::Whiteout => {
                let name = e.path.file_name().unwrap_or_default().as_bytes();
                let mut wh = b".wh.".to_vec();
                wh.extend_from_slice(name);
                let path = e
                    .path
                    .parent()
                    .unwrap_or(Path::new(""))
                    .join(std::ffi::OsString::from_vec(wh));
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(0);
                // As containerd writes it.
                h.set_mode(0o600);
                b.append_data(&mut h, path, io::empty())?;
            }
        }
    }
    let hashed = b.into_inner()?;
    let (diff_id, _, out) = hashed.finish();
    Ok((diff_id, out))
}

/// Reads exactly `left` bytes: a file that shrank is an error, not a short member.
struct ExactReader<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being read",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::archive::unpack::{UnpackOptions, apply_layer};

    fn sample(shuffled: bool) -> Vec<LayerEntry> {
        let mut v = vec![
            LayerEntry::new("a", LayerSource::Dir),
            LayerEntry {
                mtime: 2_000_000_000,
                mode: 0o755,
                ..LayerEntry::new("a/run.sh", LayerSource::Bytes(b"#!/bin/sh\n".to_vec()))
            },
            LayerEntry::new("a.txt", LayerSource::Bytes(b"x".to_vec())),
            LayerEntry::new("a/link", LayerSource::Symlink("run.sh".into())),
            LayerEntry::new("a/hard", LayerSource::Hardlink("a/run.sh".into())),
            LayerEntry::new("old", LayerSource::Whiteout),
            LayerEntry::new("long/".repeat(40), LayerSource::Bytes(b"deep".to_vec())),
        ];
        if shuffled {
            v.reverse();
        }
        v
    }

    #[test]
    fn same_files_same_bytes_in_any_order() {
        for compression in [Compression::Gzip, Compression::Zstd, Compression::None] {
            let opts = LayerOptions {
                compression,
                source_date_epoch: Some(1_700_000_000),
            };
            let mut a = Vec::new();
            let mut b = Vec::new();
            let la = write_layer(sample(false), &mut a, opts).unwrap();
            let lb = write_layer(sample(true), &mut b, opts).unwrap();
            assert_eq!(la, lb);
            assert_eq!(a, b);
            assert_eq!(la.digest, Digest::sha256(&a));
            assert_eq!(la.size, a.len() as u64);
        }
    }

    #[test]
    fn order_times_and_round_trip() {
        let mut out = Vec::new();
        let l = write_layer(
            sample(false),
            &mut out,
            LayerOptions {
                compression: Compression::None,
                source_date_epoch: Some(1_700_000_000),
            },
        )
        .unwrap();
        assert_eq!(l.diff_id, l.digest, "uncompressed: the blob is the tar");
        let mut ar = tar::Archive::new(&out[..]);
        let names: Vec<(String, u64)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().mtime().unwrap(),
                )
            })
            .collect();
        let order: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            &order[..6],
            [
                "a/",
                "a/hard",
                "a/link",
                "a/run.sh",
                "a.txt",
                "long/long/long/long/long/long/long/long/long/long/long/long/long/long/long/long/long/long/long/long/long/long/long/long/long/long/long/long/long/long/long/long/long/long/long/long/long/long/long/long"
            ]
        );
        assert_eq!(order[6], ".wh.old");
        assert_eq!(names[3].1, 1_700_000_000, "clamped to SOURCE_DATE_EPOCH");
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("old"), "lower").unwrap();
        apply_layer(t.path(), &out[..], &UnpackOptions::default()).unwrap();
        assert!(!t.path().join("old").exists());
        assert_eq!(
            std::fs::read(t.path().join("a/hard")).unwrap(),
            b"#!/bin/sh\n"
        );
        assert_eq!(
            std::fs::read_link(t.path().join("a/link")).unwrap(),
            PathBuf::from("run.sh")
        );
    }

    #[test]
    fn opaque_directories_hide_lower_contents() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("o")).unwrap();
        std::fs::write(t.path().join("o/old"), "lower").unwrap();
        let mut out = Vec::new();
        write_layer(
            vec![
                LayerEntry::new("o", LayerSource::OpaqueDir),
                LayerEntry::new("o/new", LayerSource::Bytes(b"upper".to_vec())),
            ],
            &mut out,
            LayerOptions {
                compression: Compression::None,
                source_date_epoch: None,
            },
        )
        .unwrap();
        apply_layer(t.path(), &out[..], &UnpackOptions::default()).unwrap();
        assert!(!t.path().join("o/old").exists());
        assert_eq!(std::fs::read(t.path().join("o/new")).unwrap(), b"upper");
    }
}
