//! COPY and ADD: sources from the context, an earlier stage or an image, with Docker's rules for
//! destinations, ownership and modes; the result is applied to the stage's root directory and
//! becomes the entries of a new layer.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use wharf_common::archive::layer::{LayerEntry, LayerOptions, LayerSource, write_layer};

use super::BuildOptions;
use super::error::StepError;
use super::solver::Solver;
use super::stage::{Layer, StageState, clean_abs};
use crate::context::{Context, resolve_in_root};
use crate::dockerfile::flags::Chmod;
use crate::dockerfile::instructions::CopySpec;
use crate::error::{IoContext, IoError};
use crate::user::{Owner, Users};

/// The owner a copied entry gets: `--chown`'s, else its own when copied from a stage or image
/// (`keep`), else root.
fn owner_of(chown: Option<Owner>, keep: bool, meta: &std::fs::Metadata) -> Owner {
    chown.unwrap_or(if keep {
        Owner {
            uid: meta.uid(),
            gid: meta.gid(),
        }
    } else {
        Owner::ROOT
    })
}

/// The mode a copied entry gets: its own, or `--chmod` applied to it.
fn mode_of(chmod: Option<&Chmod>, meta: &std::fs::Metadata, is_dir: bool) -> u32 {
    match chmod {
        Some(m) => m.apply(meta.mode(), is_dir),
        None => meta.mode() & 0o7777,
    }
}

/// Creates `path` and its missing parents in the root with `mode` (no umask); returns the
/// entries for those created.
pub(crate) fn mkdir_p(
    s: &mut StageState,
    path: &str,
    owner: Option<Owner>,
    mode: u32,
) -> Result<Vec<LayerEntry>, StepError> {
    let mut entries = Vec::new();
    let mut current = String::new();
    for seg in path.split('/').filter(|p| !p.is_empty()) {
        current = format!("{current}/{seg}");
        let disk = resolve_in_root(&s.rootfs, &current, true)?;
        match std::fs::symlink_metadata(&disk) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => {
                return Err(StepError::Invalid(format!(
                    "{current} exists and is not a directory"
                )));
            }
            Err(_) => {}
        }
        std::fs::create_dir(&disk).at(&current)?;
        std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(mode)).at(&current)?;
        let o = owner.unwrap_or(Owner::ROOT);
        chown(&disk, o);
        entries.push(LayerEntry {
            mode,
            uid: u64::from(o.uid),
            gid: u64::from(o.gid),
            ..LayerEntry::new(image_path(&s.rootfs, &disk), LayerSource::Dir)
        });
    }
    Ok(entries)
}

fn chown(path: &Path, o: Owner) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let _ = std::os::unix::fs::lchown(path, Some(o.uid), Some(o.gid));
    }
}

/// Writes the entries as the stage's next layer.
pub(crate) fn commit_layer(
    s: &mut StageState,
    entries: Vec<LayerEntry>,
    opts: &BuildOptions,
) -> Result<(), IoError> {
    let dir = opts.work_dir.join("layers");
    let writing = || format!("writing a layer in {}", dir.display());
    write_layer_file(s, entries, opts, &dir).at(writing())
}

fn write_layer_file(
    s: &mut StageState,
    entries: Vec<LayerEntry>,
    opts: &BuildOptions,
    dir: &Path,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // A name of its own, created exclusively: stages write layers at the same time.
    let tmp = tempfile::Builder::new()
        .prefix(".layer-")
        .tempfile_in(dir)?;
    let (file, path) = tmp.keep().map_err(|e| e.error)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let written = write_layer(
        entries,
        &mut w,
        LayerOptions {
            compression: opts.compression,
            source_date_epoch: opts.source_date_epoch,
        },
    )?;
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    let final_path = dir.join(written.digest.hex());
    std::fs::rename(&path, &final_path)?;
    s.layers.push(Layer::New(written, final_path));
    Ok(())
}

/// The image path of a file in the root directory (its place after symlinks were resolved).
fn image_path(rootfs: &Path, on_disk: &Path) -> PathBuf {
    on_disk
        .strip_prefix(rootfs)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// One thing to put in the image.
struct Item {
    /// Where it goes, absolute image path.
    dest: String,
    /// Where it is on disk (None for heredoc content).
    disk: Option<PathBuf>,
    content: Option<Vec<u8>>,
}

/// Where `COPY --from` reads.
pub(crate) enum From<'a> {
    /// An earlier stage's or an image's root: owners kept, no ignore rules.
    Root(&'a Path),
    /// A named context (`--build-context`): read like the build context.
    Context(&'a Context),
}

/// Runs a COPY or ADD: returns the layer's entries, the root updated.
pub(crate) fn copy(
    run: &Solver,
    s: &mut StageState,
    c: &CopySpec,
    add: bool,
    from: Option<From<'_>>,
) -> Result<Vec<LayerEntry>, StepError> {
    let from_root = match &from {
        Some(From::Root(p)) => Some(*p),
        _ => None,
    };
    let env = s.expansion_env();
    let lexer = run.lexer();
    let dest_raw = lexer.process_word(&c.dest, &env)?;
    let workdir = s.workdir();
    let dest_dir_form = dest_raw.ends_with('/') || dest_raw == "." || dest_raw.ends_with("/.");
    let dest = if dest_raw.starts_with('/') {
        clean_abs(&dest_raw)
    } else {
        clean_abs(&format!("{workdir}/{dest_raw}"))
    };
    let owner = match &c.chown {
        Some(spec) => Some(Users::read(&s.rootfs).owner(&lexer.process_word(spec, &env)?)?),
        None => None,
    };
    let chmod = match &c.chmod {
        Some(m) => Some(m.resolve(
            |t| lexer.process_word(t, &env).map_err(StepError::from),
            Chmod::parse,
        )?),
        None => None,
    };
    // Directories the copy creates get --chmod's mode too, as BuildKit (v0.32) makes them.
    let dir_mode = match &chmod {
        Some(m) => m.apply(0o755, true),
        None => 0o755,
    };
    // The sources, as (context-relative path, root they are in).
    let plain;
    let ctx: &Context = match from {
        Some(From::Root(root)) => {
            plain = Context::without_ignore(root);
            &plain
        }
        Some(From::Context(named)) => named,
        None => run.context(),
    };
    let excludes = crate::context::ignore::Patterns::from_list(&c.exclude);
    let mut items: Vec<Item> = Vec::new();
    // Files from URLs: (name, downloaded file, Last-Modified).
    let mut urls: Vec<(String, PathBuf, i64)> = Vec::new();
    let mut sources = 0usize;
    for src in &c.sources {
        if let Some(name) = src.strip_prefix("<<") {
            let name = name.trim_start_matches('-').trim_matches(['"', '\'']);
            let Some(h) = c.heredocs.iter().find(|h| h.name == name) else {
                return Err(StepError::Invalid(format!("heredoc {src} has no body")));
            };
            let content = if h.expand {
                lexer.process_word(&h.content, &env)?
            } else {
                h.content.clone()
            };
            sources += 1;
            items.push(Item {
                dest: name.to_owned(),
                disk: None,
                content: Some(content.into_bytes()),
            });
            continue;
        }
        let src = lexer.process_word(src, &env)?;
        if add && super::is_url(&src) {
            let (path, dl) = run
                .url(&src)
                .ok_or_else(|| {
                    StepError::Invalid(format!(
                        "{src}: this URL was not fetched when the build started: its variables have other values now (ADD URLs are fetched first, expanded with the ARG and ENV lines before their step)"
                    ))
                })?;
            sources += 1;
            let name = src
                .split(['?', '#'])
                .next()
                .unwrap_or(&src)
                .trim_end_matches('/');
            let name = name
                .rsplit('/')
                .next()
                .filter(|n| !n.is_empty() && !n.contains(':'))
                .unwrap_or("index.html");
            urls.push((name.to_owned(), path.clone(), dl.last_modified.unwrap_or(0)));
            continue;
        }
        let matched = ctx.select(&src)?;
        for rel in matched {
            if !excludes.is_empty() && excludes.excludes(&rel) {
                continue;
            }
            sources += 1;
            let disk = ctx.resolve(&rel, true)?;
            items.push(Item {
                dest: rel,
                disk: Some(disk),
                content: None,
            });
        }
    }
    let dest_is_dir = dest_dir_form
        || sources > 1
        || std::fs::metadata(resolve_in_root(&s.rootfs, &dest, true)?).is_ok_and(|m| m.is_dir());
    if sources > 1
        && !dest_dir_form
        && !std::fs::metadata(resolve_in_root(&s.rootfs, &dest, true)?).is_ok_and(|m| m.is_dir())
    {
        return Err(StepError::Invalid(format!(
            "when using {} with more than one source file, the destination must be a directory and end with a /",
            if add { "ADD" } else { "COPY" }
        )));
    }
    let mut entries = Vec::new();
    let parent_of = |p: &str| {
        p.rsplit_once('/')
            .map(|(a, _)| a.to_owned())
            .unwrap_or_default()
    };
    if dest_is_dir {
        entries.extend(mkdir_p(s, &dest, owner, dir_mode)?);
    } else {
        entries.extend(mkdir_p(s, &parent_of(&dest), owner, dir_mode)?);
    }
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    // A file from a URL: mode 0600 (unless --chmod), the server's Last-Modified, never unpacked.
    for (name, path, mtime) in urls {
        let target = if dest_is_dir {
            format!("{dest}/{name}")
        } else {
            dest.clone()
        };
        let content = std::fs::read(&path).at(&name)?;
        let mode = match &chmod {
            Some(m) => m.apply(0o600, false),
            None => 0o600,
        };
        put_bytes(
            s,
            &target,
            &content,
            mode,
            owner.unwrap_or(Owner::ROOT),
            &mut entries,
        )?;
        if let Some(last) = entries.last_mut() {
            last.mtime = mtime;
        }
    }
    for item in items {
        let base = item
            .dest
            .rsplit('/')
            .next()
            .unwrap_or(&item.dest)
            .to_owned();
        match (item.disk, item.content) {
            (_, Some(content)) => {
                let target = if dest_is_dir {
                    format!("{dest}/{base}")
                } else {
                    dest.clone()
                };
                let mode = match &chmod {
                    Some(m) => m.apply(0o644, false),
                    None => 0o644,
                };
                put_bytes(
                    s,
                    &target,
                    &content,
                    mode,
                    owner.unwrap_or(Owner::ROOT),
                    &mut entries,
                )?;
            }
            (Some(disk), None) => {
                let meta = std::fs::metadata(&disk).at(&item.dest)?;
                // --parents keeps the source's directories under the destination.
                let dest = if c.parents {
                    let sub = if meta.is_dir() {
                        item.dest.clone()
                    } else {
                        parent_of(&item.dest)
                    };
                    let d = clean_abs(&format!("{dest}/{sub}"));
                    entries.extend(mkdir_p(s, &d, owner, dir_mode)?);
                    d
                } else {
                    dest.clone()
                };
                let dest_is_dir = dest_is_dir || c.parents;
                if meta.is_dir() {
                    // A directory's contents go into the destination, which is made with the
                    // source directory's mode and time if it is not there.
                    let on_disk = resolve_in_root(&s.rootfs, &dest, true)?;
                    if !std::fs::symlink_metadata(&on_disk).is_ok_and(|m| m.is_dir()) {
                        entries.extend(mkdir_p(s, &parent_of(&dest), owner, dir_mode)?);
                        let _ = std::fs::remove_file(&on_disk);
                        std::fs::create_dir(&on_disk).at(&dest)?;
                        let mode = mode_of(chmod.as_ref(), &meta, true);
                        std::fs::set_permissions(&on_disk, std::fs::Permissions::from_mode(mode))
                            .at(&dest)?;
                        let o = owner_of(owner, from_root.is_some(), &meta);
                        chown(&on_disk, o);
                        entries.push(LayerEntry {
                            mode,
                            uid: u64::from(o.uid),
                            gid: u64::from(o.gid),
                            mtime: meta.mtime(),
                            ..LayerEntry::new(image_path(&s.rootfs, &on_disk), LayerSource::Dir)
                        });
                    }
                    // --exclude patterns are relative to the source directory; .dockerignore
                    // rules to the context, where the directory really is (it may have been
                    // reached through a link).
                    let base = ctx.relative(&disk);
                    let ignore = from_root.is_none().then(|| (ctx.ignore(), base.as_str()));
                    walk(
                        s,
                        &disk,
                        Path::new(&dest),
                        owner,
                        chmod.as_ref(),
                        from_root.is_some(),
                        &excludes,
                        "",
                        ignore,
                        &mut links,
                        &mut entries,
                    )?;
                } else {
                    let target = if dest_is_dir {
                        format!("{dest}/{base}")
                    } else {
                        dest.clone()
                    };
                    if add && let Some(tar) = open_tar(&disk) {
                        extract_archive(s, tar, &disk, &dest, &mut entries)?;
                        continue;
                    }
                    put_file(
                        s,
                        &disk,
                        &meta,
                        Path::new(&target),
                        owner,
                        chmod.as_ref(),
                        from_root.is_some(),
                        &mut links,
                        &mut entries,
                    )?;
                }
            }
            (None, None) => {}
        }
    }
    Ok(entries)
}

/// Whether an ADD source is a local tar archive (plain, gzip or zstd) to unpack.
/// A local ADD source as a tar stream, when it is a tar archive (plain or compressed); the
/// source is opened and decompressed once, its first block read back in front of the rest.
fn open_tar(path: &Path) -> Option<Box<dyn std::io::Read + Send>> {
    let mut r = open_archive(path).ok()?;
    let mut header = vec![0u8; 512];
    std::io::Read::read_exact(&mut r, &mut header).ok()?;
    if &header[257..262] != b"ustar" {
        return None;
    }
    Some(Box::new(std::io::Read::chain(
        std::io::Cursor::new(header),
        r,
    )))
}

/// An ADD source read through the decompressor its first bytes call for: gzip, zstd, bzip2,
/// xz, or none.
fn open_archive(path: &Path) -> std::io::Result<Box<dyn std::io::Read + Send>> {
    use std::io::{BufRead, Seek};
    let mut f = std::io::BufReader::new(std::fs::File::open(path)?);
    let head = f.fill_buf()?.to_vec();
    if head.starts_with(b"BZh") {
        return Ok(Box::new(bzip2::read::MultiBzDecoder::new(f)));
    }
    if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        // lzma-rs decodes whole streams: into an anonymous temporary file.
        let mut out = tempfile::tempfile()?;
        {
            let mut w = std::io::BufWriter::new(&mut out);
            lzma_rs::xz_decompress(&mut f, &mut w).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("xz: {e}"))
            })?;
        }
        out.seek(std::io::SeekFrom::Start(0))?;
        return Ok(Box::new(out));
    }
    Ok(wharf_common::media_type::decompress(f)?.reader)
}

/// ADD of a local archive: unpacked (safely) into the destination.
fn extract_archive(
    s: &mut StageState,
    reader: Box<dyn std::io::Read + Send>,
    archive: &Path,
    dest: &str,
    entries: &mut Vec<LayerEntry>,
) -> Result<(), StepError> {
    let tmp = tempfile::tempdir().at("a directory to unpack an archive in")?;
    // As Docker unpacks ADD archives: `.wh.` names are ordinary files here.
    let opts = wharf_common::archive::unpack::UnpackOptions {
        whiteouts: false,
        ..Default::default()
    };
    wharf_common::archive::unpack::apply_layer(tmp.path(), reader, &opts).map_err(|e| {
        StepError::Caller {
            what: format!("unpacking {}", archive.display()),
            source: e.into(),
        }
    })?;
    entries.extend(mkdir_p(s, dest, None, 0o755)?);
    let mut links = HashMap::new();
    walk(
        s,
        tmp.path(),
        Path::new(dest),
        None,
        None,
        true,
        &Default::default(),
        "",
        None,
        &mut links,
        entries,
    )
}

#[allow(clippy::too_many_arguments)]
fn walk(
    s: &mut StageState,
    dir: &Path,
    dest: &Path,
    owner: Option<Owner>,
    chmod: Option<&Chmod>,
    keep_owner: bool,
    excludes: &crate::context::ignore::Patterns,
    rel: &str,
    ignore: Option<(&crate::context::ignore::Patterns, &str)>,
    links: &mut HashMap<(u64, u64), PathBuf>,
    entries: &mut Vec<LayerEntry>,
) -> Result<(), StepError> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .at(dir.display())?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    // Names are bytes: every one is copied, UTF-8 or not (patterns see it lossily).
    for name in names {
        let n = name.to_string_lossy();
        let child_rel = if rel.is_empty() {
            n.clone().into_owned()
        } else {
            format!("{rel}/{n}")
        };
        if !excludes.is_empty() && excludes.excludes(&child_rel) {
            continue;
        }
        let ctx_rel = ignore.map(|(_, base)| {
            if base.is_empty() || base == "." {
                n.clone().into_owned()
            } else {
                format!("{base}/{n}")
            }
        });
        if let (Some((patterns, _)), Some(path)) = (ignore, &ctx_rel)
            && patterns.excludes(path)
            && !patterns.has_exclusions()
        {
            continue;
        }
        let disk = dir.join(&name);
        let meta = std::fs::symlink_metadata(&disk).at(disk.display())?;
        let target = dest.join(&name);
        if meta.is_dir() {
            let mode = mode_of(chmod, &meta, true);
            let o = owner_of(owner, keep_owner, &meta);
            // Symlinked destination directories are followed, inside the root, as BuildKit does;
            // nothing here follows a link with the host's view of the filesystem.
            let on_disk = resolve_in_root(&s.rootfs, &target, true)?;
            let existed = std::fs::symlink_metadata(&on_disk).is_ok_and(|m| m.is_dir());
            if !existed {
                let _ = std::fs::remove_file(&on_disk);
                std::fs::create_dir_all(&on_disk).at(target.display())?;
            }
            std::fs::set_permissions(&on_disk, std::fs::Permissions::from_mode(mode))
                .at(target.display())?;
            chown(&on_disk, o);
            // An ignored directory is walked only for exceptions (`!pattern`) inside it: it
            // stays out unless one of them is there.
            let ignored =
                matches!((ignore, &ctx_rel), (Some((p, _)), Some(path)) if p.excludes(path));
            let mark = entries.len();
            entries.push(LayerEntry {
                mode,
                uid: u64::from(o.uid),
                gid: u64::from(o.gid),
                mtime: meta.mtime(),
                ..LayerEntry::new(image_path(&s.rootfs, &on_disk), LayerSource::Dir)
            });
            let child_ignore = match (ignore, &ctx_rel) {
                (Some((p, _)), Some(path)) => Some((p, path.as_str())),
                _ => None,
            };
            walk(
                s,
                &disk,
                &target,
                owner,
                chmod,
                keep_owner,
                excludes,
                &child_rel,
                child_ignore,
                links,
                entries,
            )?;
            if ignored && entries.len() == mark + 1 {
                entries.truncate(mark);
                if !existed {
                    let _ = std::fs::remove_dir(&on_disk);
                }
            }
        } else {
            if let (Some((patterns, _)), Some(path)) = (ignore, &ctx_rel)
                && patterns.excludes(path)
            {
                continue;
            }
            put_file(
                s, &disk, &meta, &target, owner, chmod, keep_owner, links, entries,
            )?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn put_file(
    s: &mut StageState,
    disk: &Path,
    meta: &std::fs::Metadata,
    target: &Path,
    owner: Option<Owner>,
    chmod: Option<&Chmod>,
    keep_owner: bool,
    links: &mut HashMap<(u64, u64), PathBuf>,
    entries: &mut Vec<LayerEntry>,
) -> Result<(), StepError> {
    let o = owner_of(owner, keep_owner, meta);
    let on_disk = resolve_in_root(&s.rootfs, target, false)?;
    if std::fs::symlink_metadata(&on_disk).is_ok_and(|m| m.is_dir()) {
        return Err(StepError::Invalid(format!(
            "cannot copy to {}: it is a directory in the image",
            target.display()
        )));
    }
    let _ = std::fs::remove_file(&on_disk);
    let base = LayerEntry::new(image_path(&s.rootfs, &on_disk), LayerSource::Dir);
    let ft = std::fs::symlink_metadata(disk)
        .at(disk.display())?
        .file_type();
    if ft.is_symlink() {
        let link = std::fs::read_link(disk).at(disk.display())?;
        std::os::unix::fs::symlink(&link, &on_disk).at(target.display())?;
        chown(&on_disk, o);
        entries.push(LayerEntry {
            source: LayerSource::Symlink(link),
            mode: 0o777,
            uid: u64::from(o.uid),
            gid: u64::from(o.gid),
            mtime: meta.mtime(),
            ..base
        });
        return Ok(());
    }
    let mode = mode_of(chmod, meta, false);
    let key = (meta.dev(), meta.ino());
    if meta.nlink() > 1
        && let Some(first) = links.get(&key)
    {
        let first_disk = resolve_in_root(&s.rootfs, first, false)?;
        std::fs::hard_link(&first_disk, &on_disk).at(target.display())?;
        entries.push(LayerEntry {
            source: LayerSource::Hardlink(first.strip_prefix("/").unwrap_or(first).to_path_buf()),
            ..base
        });
        return Ok(());
    }
    links.insert(key, target.to_path_buf());
    std::fs::copy(disk, &on_disk).at(format_args!("copying {}", disk.display()))?;
    std::fs::set_permissions(&on_disk, std::fs::Permissions::from_mode(mode))
        .at(target.display())?;
    chown(&on_disk, o);
    entries.push(LayerEntry {
        source: LayerSource::File(on_disk),
        mode,
        uid: u64::from(o.uid),
        gid: u64::from(o.gid),
        mtime: meta.mtime(),
        ..base
    });
    Ok(())
}

fn put_bytes(
    s: &mut StageState,
    target: &str,
    content: &[u8],
    mode: u32,
    o: Owner,
    entries: &mut Vec<LayerEntry>,
) -> Result<(), StepError> {
    let on_disk = resolve_in_root(&s.rootfs, target, false)?;
    let _ = std::fs::remove_file(&on_disk);
    std::fs::write(&on_disk, content).at(target)?;
    std::fs::set_permissions(&on_disk, std::fs::Permissions::from_mode(mode)).at(target)?;
    chown(&on_disk, o);
    entries.push(LayerEntry {
        mode,
        uid: u64::from(o.uid),
        gid: u64::from(o.gid),
        ..LayerEntry::new(
            image_path(&s.rootfs, &on_disk),
            LayerSource::Bytes(content.to_vec()),
        )
    });
    Ok(())
}
