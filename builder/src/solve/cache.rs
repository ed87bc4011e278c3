//! The build cache: step keys, the lookup of a step's layer, what a build recorded, and the
//! digest of the context files a COPY selects (remembered in the store by file stamp).

use super::error::StepError;
use crate::error::IoContext;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use wharf_common::archive::layer::WrittenLayer;
use wharf_common::digest::{Algorithm, Digest, Hasher};
use wharf_common::media_type::Compression;

use crate::context::Context;
use crate::dockerfile::instructions;

use super::api::{BaseImage, is_url};
use super::solver::Solver;
use super::stage::{Layer, StageState};

/// Context files' remembered digests: absolute path → (stamp, digest).
pub(super) type ContextDigests = HashMap<String, (wharf_common::store::FileStamp, Digest)>;

/// A layer a build wrote, for the cache.
#[derive(Clone, Debug)]
pub struct NewLayer {
    /// The key of the step that wrote it.
    pub key: Digest,
    /// The layer.
    pub layer: WrittenLayer,
    /// Its file.
    pub file: PathBuf,
    /// When it was made (seconds since the epoch): what a cached rebuild records again.
    pub created_at: i64,
}

/// A cache key under construction: typed parts, each written as a tag byte, its length and its
/// bytes, after a kind that keeps keys of different steps apart. Two different sequences of
/// parts never encode alike, as strings joined by a separator could (a separator can be in a
/// part).
pub(super) struct CacheKey(Hasher);

impl CacheKey {
    /// A key of `kind` (`"run"`, `"copy"`, …).
    pub(super) fn new(kind: &str) -> CacheKey {
        let mut k = CacheKey(Algorithm::Sha256.hasher());
        k.part(b'k', kind.as_bytes());
        k
    }

    fn part(&mut self, tag: u8, bytes: &[u8]) -> &mut CacheKey {
        self.0.update(&[tag]);
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    /// A string.
    pub(super) fn text(&mut self, s: &str) -> &mut CacheKey {
        self.part(b's', s.as_bytes())
    }

    /// Bytes.
    pub(super) fn bytes(&mut self, b: &[u8]) -> &mut CacheKey {
        self.part(b'b', b)
    }

    /// A digest (another key, a layer, a file's contents).
    pub(super) fn digest(&mut self, d: &Digest) -> &mut CacheKey {
        self.part(b'd', d.as_str().as_bytes())
    }

    /// A number.
    pub(super) fn number(&mut self, n: i64) -> &mut CacheKey {
        self.part(b'i', &n.to_le_bytes())
    }

    /// A string that may be absent (absent and empty differ).
    pub(super) fn opt_text(&mut self, s: Option<&str>) -> &mut CacheKey {
        match s {
            Some(s) => self.text(s),
            None => self.part(b'n', &[]),
        }
    }

    /// A number that may be absent.
    pub(super) fn opt_number(&mut self, n: Option<i64>) -> &mut CacheKey {
        match n {
            Some(n) => self.number(n),
            None => self.part(b'n', &[]),
        }
    }

    /// A list of strings: its length, then each.
    pub(super) fn texts<'a>(&mut self, items: impl IntoIterator<Item = &'a str>) -> &mut CacheKey {
        let items: Vec<&str> = items.into_iter().collect();
        self.part(b'l', &(items.len() as u64).to_le_bytes());
        for i in items {
            self.text(i);
        }
        self
    }

    /// A list of name/value pairs (ARGs, an environment).
    pub(super) fn pairs(&mut self, items: &[(String, String)]) -> &mut CacheKey {
        self.part(b'p', &(items.len() as u64).to_le_bytes());
        for (k, v) in items {
            self.text(k).text(v);
        }
        self
    }

    /// The key.
    pub(super) fn finish(&mut self) -> Digest {
        std::mem::replace(&mut self.0, Algorithm::Sha256.hasher()).finish()
    }
}

/// The key of an image as a base or a `--from` source: its config and its layers.
pub(super) fn image_key(img: &BaseImage) -> Digest {
    let mut k = CacheKey::new("image");
    k.text(&img.config.to_string())
        .texts(img.layers.iter().map(|(b, _)| b.digest.as_str()));
    k.finish()
}

fn hash_file(path: &Path) -> std::io::Result<Digest> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Algorithm::Sha256.hasher();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}

impl Solver {
    /// Adds to `key` what a layer's bytes depend on besides its files.
    pub(crate) fn layer_options(&self, key: &mut CacheKey) {
        let compression = match self.opts.compression {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        };
        key.opt_number(self.opts.source_date_epoch)
            .text(compression);
    }

    /// Remembers the layer the step keyed `key` just wrote (the stage's newest), for the cache.
    pub(crate) fn record(&self, key: &Digest, s: &StageState) {
        if let Some(Layer::New(w, p)) = s.layers.last() {
            self.new_layers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(NewLayer {
                    key: key.clone(),
                    layer: w.clone(),
                    file: p.clone(),
                    created_at: s.time,
                });
        }
    }

    /// The cached layer for `key`, unless the cache is off.
    pub(super) fn cached_layer(&self, key: &Digest) -> Option<NewLayer> {
        if self.opts.no_cache {
            return None;
        }
        let cache = self.opts.cache.as_ref()?;
        let entry = cache.runtime.block_on(cache.store.cache_get(key)).ok()??;
        // Protected, then checked: a prune beside the build then spares it, or it was gone
        // already and this is a miss.
        cache
            .runtime
            .block_on(cache.lease.protect(&entry.layer))
            .ok()?;
        cache.store.blob_path(&entry.layer).exists().then_some(())?;
        self.cache_hits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(key.clone());
        let path = cache.store.blob_path(&entry.layer);
        let media_type = match entry.media_type.as_str() {
            wharf_common::media_type::OCI_LAYER_GZIP => wharf_common::media_type::OCI_LAYER_GZIP,
            wharf_common::media_type::OCI_LAYER_ZSTD => wharf_common::media_type::OCI_LAYER_ZSTD,
            _ => wharf_common::media_type::OCI_LAYER,
        };
        Some(NewLayer {
            key: key.clone(),
            layer: WrittenLayer {
                diff_id: entry.diff_id,
                digest: entry.layer,
                size: entry.size,
                media_type,
            },
            file: path,
            created_at: entry.created_at,
        })
    }

    /// A digest of exactly what a COPY/ADD from the context selects: paths, types, modes,
    /// sizes, link targets and contents, never times. File contents are hashed once per
    /// (device, inode, size, mtime) and remembered in the store.
    pub(super) fn context_checksum(
        &self,
        s: &mut StageState,
        c: &instructions::CopySpec,
        ctx: &Context,
    ) -> Result<Digest, StepError> {
        use std::os::unix::fs::MetadataExt;
        let env = s.expansion_env();
        let excludes = crate::context::ignore::Patterns::from_list(&c.exclude);
        let mut key = CacheKey::new("context");
        let mut remember = Vec::new();
        // (context-relative path, path relative to the source it was found under; empty for a
        // source itself): --exclude applies to the second, .dockerignore to the first.
        let mut stack: Vec<(String, String)> = Vec::new();
        for h in &c.heredocs {
            key.text("heredoc")
                .text(&h.name)
                .number(i64::from(h.expand))
                .text(&h.content);
        }
        for src in &c.sources {
            if src.starts_with("<<") {
                continue;
            }
            let src = self.lexer.process_word(src, &env)?;
            if is_url(&src) {
                let digest = self
                    .urls
                    .get(&src)
                    .map(|(_, d)| d.digest.to_string())
                    .unwrap_or_default();
                key.text("url").text(&src).text(&digest);
                continue;
            }
            let mut matched = ctx.select(&src)?;
            matched.reverse();
            stack.extend(matched.into_iter().map(|m| (m, String::new())));
            key.text("source").text(&src);
        }
        while let Some((rel, src_rel)) = stack.pop() {
            let excluded_by_flag = if src_rel.is_empty() { &rel } else { &src_rel };
            if !excludes.is_empty() && excludes.excludes(excluded_by_flag) {
                continue;
            }
            // A source itself is followed if it is a link (COPY copies what it points at); what
            // .dockerignore leaves out is not there, wherever a link led.
            let disk = match ctx.resolve(&rel, src_rel.is_empty()) {
                Ok(d) => d,
                Err(crate::context::ContextError::NotFound { .. }) if !src_rel.is_empty() => {
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let meta = std::fs::symlink_metadata(&disk).at(&rel)?;
            let mode = meta.mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&disk).at(&rel)?;
                key.text("link")
                    .text(&rel)
                    .number(i64::from(mode))
                    .bytes(target.as_os_str().as_encoded_bytes());
            } else if meta.is_dir() {
                key.text("dir").text(&rel).number(i64::from(mode));
                let mut names: Vec<String> = std::fs::read_dir(&disk)
                    .at(&rel)?
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect();
                names.sort();
                for n in names.into_iter().rev() {
                    let child = if rel == "." {
                        n.clone()
                    } else {
                        format!("{rel}/{n}")
                    };
                    let child_src = if src_rel.is_empty() {
                        n
                    } else {
                        format!("{src_rel}/{n}")
                    };
                    stack.push((child, child_src));
                }
            } else {
                let stamp = wharf_common::store::FileStamp {
                    dev: meta.dev(),
                    ino: meta.ino(),
                    size: meta.len(),
                    mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                };
                let abs = disk.to_string_lossy().into_owned();
                let known = self.remembered(ctx, &abs, stamp);
                let digest = match known {
                    Some(d) => d,
                    None => {
                        let d = hash_file(&disk).at(&rel)?;
                        remember.push((abs, stamp, d.clone()));
                        d
                    }
                };
                key.text("file")
                    .text(&rel)
                    .number(i64::from(mode))
                    .number(i64::try_from(meta.len()).unwrap_or(i64::MAX))
                    .digest(&digest);
            }
        }
        if let Some(c) = &self.opts.cache {
            let _ = c.runtime.block_on(c.store.context_digests_put(&remember));
        }
        Ok(key.finish())
    }

    /// The digest remembered for the context file `abs` if it still has `stamp`. The store's
    /// digests for a context are read in one query, the first time one is asked for.
    fn remembered(
        &self,
        ctx: &Context,
        abs: &str,
        stamp: wharf_common::store::FileStamp,
    ) -> Option<Digest> {
        let cache = self.opts.cache.as_ref()?;
        let root = ctx.root().to_string_lossy().into_owned();
        let mut memo = self
            .context_memo
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !memo.contains_key(&root) {
            let known = cache
                .runtime
                .block_on(cache.store.context_digests_under(&root))
                .unwrap_or_default();
            memo.insert(root.clone(), known);
        }
        memo.get(&root)?
            .get(abs)
            .filter(|(s, _)| *s == stamp)
            .map(|(_, d)| d.clone())
    }
}
