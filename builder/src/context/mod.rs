//! The build context: which files a build may read, and finding them safely.
//!
//! - [`ignore`]: `.dockerignore` rules.
//! - [`Context`]: a context directory with its ignore rules; resolves COPY/ADD sources (with
//!   wildcards) to files inside the context, following symlinks only as far as the context's
//!   root: a link that points outside is resolved as if the root were `/`, as BuildKit does, so
//!   no path can leave the context.
//! - [`resolve_in_root`], [`read_in_root`]: the same confinement for a stage's or an image's
//!   root.
//! - [`view`]: the filtered context RUN's bind mounts show.

pub mod ignore;
pub mod view;

use std::path::{Path, PathBuf};

use wharf_common::root::{Hidden, Root};

use ignore::Patterns;

/// A context source that cannot be used, naming it.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// Nothing in the context matches.
    #[error("{source_path}: not found in the build context{}", if *.excluded { " (excluded by .dockerignore)" } else { "" })]
    NotFound {
        /// The source as written.
        source_path: String,
        /// It exists but `.dockerignore` excludes it.
        excluded: bool,
    },
    /// Reading the context failed.
    #[error("{path}")]
    Io {
        /// Where.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Symlinks loop.
    #[error("{0}: too many levels of symbolic links")]
    Loop(String),
}

/// A build context directory.
#[derive(Clone, Debug)]
pub struct Context {
    root: PathBuf,
    ignore: Patterns,
}

impl Context {
    /// Opens `root` with the ignore file for `dockerfile`: `<Dockerfile>.dockerignore` next to
    /// it if there is one, else `.dockerignore` at the root.
    pub fn open(root: &Path, dockerfile: Option<&Path>) -> Result<Context, ContextError> {
        let root = std::fs::canonicalize(root).map_err(|source| ContextError::Io {
            path: root.to_owned(),
            source,
        })?;
        let specific = dockerfile.and_then(|d| {
            let name = d.file_name()?.to_str()?;
            Some(d.with_file_name(format!("{name}.dockerignore")))
        });
        let candidates = specific.into_iter().chain([root.join(".dockerignore")]);
        let mut ignore = Patterns::default();
        for c in candidates {
            match std::fs::read_to_string(&c) {
                Ok(text) => {
                    ignore = Patterns::parse(&text);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(ContextError::Io { path: c, source }),
            }
        }
        Ok(Context { root, ignore })
    }

    /// A directory read without ignore rules (an earlier stage's or an image's root).
    pub fn without_ignore(root: &Path) -> Context {
        Context {
            root: root.to_owned(),
            ignore: Patterns::default(),
        }
    }

    /// The context's root directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Its ignore rules.
    pub fn ignore(&self) -> &Patterns {
        &self.ignore
    }

    /// Whether an entry (its canonical path from the root) is in the context the build sees:
    /// not excluded by `.dockerignore`, or an excluded directory that `!` exceptions may
    /// reach into. As BuildKit's context transfer filters, so everything a build reads is
    /// filtered: links are followed inside the filtered context, never to what it left out.
    pub fn visible(&self, rel: &Path, is_dir: bool) -> bool {
        if self.ignore.is_empty() {
            return true;
        }
        let rel = rel.to_string_lossy();
        !self.ignore.excludes(&rel) || (is_dir && self.ignore.has_exclusions())
    }

    /// Resolves `path` (relative to the root, or absolute meaning the root) to a path on disk
    /// inside the root, following symlinks (each resolved within the root) and seeing only
    /// the context's visible entries ([`Context::visible`]): a path through an excluded entry,
    /// or a link to one, is not found. The last component's link is followed only with
    /// `follow_last`. Missing components are fine: the result says where the file would be.
    pub fn resolve(&self, path: &str, follow_last: bool) -> Result<PathBuf, ContextError> {
        let root = Root::open(&self.root).map_err(|source| ContextError::Io {
            path: self.root.clone(),
            source,
        })?;
        root.locate_visible(Path::new(path), follow_last, &|rel, dir| {
            self.visible(rel, dir)
        })
        .map_err(|source| {
            if source
                .get_ref()
                .is_some_and(|e| e.downcast_ref::<Hidden>().is_some())
            {
                ContextError::NotFound {
                    source_path: path.to_owned(),
                    excluded: true,
                }
            } else if source.raw_os_error() == Some(libc::ELOOP) {
                ContextError::Loop(path.to_owned())
            } else {
                ContextError::Io {
                    path: self.root.join(path.trim_start_matches('/')),
                    source,
                }
            }
        })
    }

    /// `disk`'s path from the root (for a path [`Context::resolve`] gave).
    pub fn relative(&self, disk: &Path) -> String {
        disk.strip_prefix(&self.root)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The context-relative paths a COPY/ADD source names: the path itself, or what a pattern
    /// with `*`, `?` or `[…]` matches, in sorted order, without excluded files. An empty list
    /// from a pattern is fine (BuildKit copies nothing); a plain path that does not exist is
    /// an error.
    pub fn select(&self, source: &str) -> Result<Vec<String>, ContextError> {
        let rel = ignore::clean(source.trim_start_matches('/'));
        let rel = if rel.starts_with("..") {
            // `COPY ../x` names something outside: confined, it is the root's `x`.
            ignore::clean(&format!("/{rel}"))
                .trim_start_matches('/')
                .to_owned()
        } else {
            rel
        };
        let rel = if rel.is_empty() { ".".to_owned() } else { rel };
        if !has_wildcards(&rel) {
            let not_found = |excluded| ContextError::NotFound {
                source_path: source.to_owned(),
                excluded,
            };
            let disk = match self.resolve(&rel, true) {
                Ok(d) => d,
                Err(ContextError::NotFound { excluded, .. }) => return Err(not_found(excluded)),
                Err(e) => return Err(e),
            };
            if std::fs::symlink_metadata(&disk).is_err() {
                return Err(not_found(false));
            }
            return Ok(vec![rel]);
        }
        let mut out = Vec::new();
        self.glob(&rel.split('/').collect::<Vec<_>>(), String::new(), &mut out)?;
        out.sort();
        Ok(out)
    }

    fn glob(
        &self,
        segs: &[&str],
        prefix: String,
        out: &mut Vec<String>,
    ) -> Result<(), ContextError> {
        let Some((seg, rest)) = segs.split_first() else {
            // The match itself must be visible where it really is.
            if !prefix.is_empty()
                && self
                    .resolve(&prefix, false)
                    .is_ok_and(|d| std::fs::symlink_metadata(d).is_ok())
            {
                out.push(prefix);
            }
            return Ok(());
        };
        let join = |name: &str| {
            if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}/{name}")
            }
        };
        if !has_wildcards(seg) {
            let next = join(seg);
            match self.resolve(&next, !rest.is_empty()) {
                Ok(d) if std::fs::symlink_metadata(&d).is_ok() => self.glob(rest, next, out)?,
                Ok(_) | Err(ContextError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            return Ok(());
        }
        let dir = match self.resolve(if prefix.is_empty() { "." } else { &prefix }, true) {
            Ok(d) => d,
            Err(ContextError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.kind() == std::io::ErrorKind::NotADirectory =>
            {
                return Ok(());
            }
            Err(source) => return Err(ContextError::Io { path: dir, source }),
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect();
        names.sort();
        for name in names {
            if ignore::Pattern::new(seg).is_some_and(|p| p.matches(&name)) {
                self.glob(rest, join(&name), out)?;
            }
        }
        Ok(())
    }
}

fn has_wildcards(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// A text file of the root directory `root` (an image's `/etc/passwd`, say), read through its
/// links inside the root; empty when it is missing or unreadable.
pub fn read_in_root(root: &Path, path: &str) -> String {
    Root::open(root)
        .and_then(|r| r.read(Path::new(path)))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Where `path` is under `root`, resolved as a chroot would resolve it (`..` stops at the
/// root, links are followed inside it; the last one only with `follow_last`): the one resolver
/// every root goes through, [`wharf_common::root::Root`]. Missing components are kept as
/// written, so the result also says where a new file would go.
pub fn resolve_in_root(
    root: &Path,
    path: impl AsRef<Path>,
    follow_last: bool,
) -> Result<PathBuf, ContextError> {
    let path = path.as_ref();
    let r = Root::open(root).map_err(|source| ContextError::Io {
        path: root.to_owned(),
        source,
    })?;
    r.locate(path, follow_last).map_err(|source| {
        if source.raw_os_error() == Some(libc::ELOOP) {
            ContextError::Loop(path.display().to_string())
        } else {
            ContextError::Io {
                path: root.join(path.strip_prefix("/").unwrap_or(path)),
                source,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::symlink;

    use super::*;

    fn tree() -> (tempfile::TempDir, Context) {
        let t = tempfile::tempdir().unwrap();
        let ctx = t.path().join("ctx");
        for d in ["src/a", "src/b", "docs"] {
            std::fs::create_dir_all(ctx.join(d)).unwrap();
        }
        for f in [
            "src/a/x.rs",
            "src/b/y.rs",
            "src/main.rs",
            "docs/r.md",
            "README.md",
            "notes.md",
        ] {
            std::fs::write(ctx.join(f), f).unwrap();
        }
        std::fs::write(t.path().join("secret"), "outside").unwrap();
        symlink("../../secret", ctx.join("src/escape")).unwrap();
        symlink("/etc/passwd", ctx.join("abs")).unwrap();
        symlink("src/a", ctx.join("alink")).unwrap();
        symlink("loop", ctx.join("loop")).unwrap();
        std::fs::write(ctx.join(".dockerignore"), "notes.md\ndocs\n!docs/keep\n").unwrap();
        let c = Context::open(&ctx, None).unwrap();
        (t, c)
    }

    #[test]
    fn symlinks_stay_inside_the_context() {
        let (_t, c) = tree();
        let root = c.root().to_owned();
        assert_eq!(c.resolve("src/escape", true).unwrap(), root.join("secret"));
        assert_eq!(c.resolve("abs", true).unwrap(), root.join("etc/passwd"));
        assert_eq!(c.resolve("abs", false).unwrap(), root.join("abs"));
        assert_eq!(c.resolve("../../x", true).unwrap(), root.join("x"));
        assert_eq!(
            c.resolve("alink/x.rs", false).unwrap(),
            root.join("src/a/x.rs")
        );
        assert!(matches!(
            c.resolve("loop", true),
            Err(ContextError::Loop(_))
        ));
    }

    #[test]
    fn sources_and_wildcards() {
        let (_t, c) = tree();
        assert_eq!(c.select("src/main.rs").unwrap(), ["src/main.rs"]);
        assert_eq!(c.select("/src/main.rs").unwrap(), ["src/main.rs"]);
        assert_eq!(
            c.select("src/*/*.rs").unwrap(),
            ["src/a/x.rs", "src/b/y.rs"]
        );
        assert_eq!(
            c.select("*.md").unwrap(),
            ["README.md"],
            "notes.md is ignored"
        );
        assert_eq!(
            c.select("../src/main.rs").unwrap(),
            ["src/main.rs"],
            "confined"
        );
        assert!(c.select("nothing*").unwrap().is_empty());
        let e = c.select("missing.txt").unwrap_err().to_string();
        assert!(e.contains("missing.txt: not found"), "{e}");
        let e = c.select("notes.md").unwrap_err().to_string();
        assert!(e.contains("excluded by .dockerignore"), "{e}");
        assert!(c.select("docs/r.md").is_err());
    }

    #[test]
    fn dockerfile_specific_ignore_file_wins() {
        let (t, _) = tree();
        let ctx = t.path().join("ctx");
        std::fs::write(ctx.join("Dockerfile.dockerignore"), "README.md\n").unwrap();
        let c = Context::open(&ctx, Some(&ctx.join("Dockerfile"))).unwrap();
        assert!(c.ignore().excludes("README.md"));
        assert!(!c.ignore().excludes("notes.md"));
    }
}
