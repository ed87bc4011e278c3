//! What a build gets before any stage runs: the ARGs before the first FROM, every base and
//! `--from` image (what can be slow, resolved first), and ADD's URLs (fetched up front, in the
//! scope their step will have, and checked against `--checksum`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;
use wharf_common::image::Platform;

use crate::dockerfile::instructions::{Dockerfile, Instruction};
use crate::dockerfile::shell::Lexer;

use super::api::{BaseImage, BuildOptions, Download, Images, is_url};
use super::config::build_arg;
use super::error::{BuildError, StepError};
use super::graph::{stage_index, step_sources};
use crate::error::IoContext;

/// The platform arguments every build defines.
fn platform_args(p: &Platform) -> Vec<(String, String)> {
    let full = match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    };
    let mut out = Vec::new();
    for prefix in ["BUILD", "TARGET"] {
        out.push((format!("{prefix}PLATFORM"), full.clone()));
        out.push((format!("{prefix}OS"), p.os.clone()));
        out.push((format!("{prefix}ARCH"), p.architecture.clone()));
        out.push((
            format!("{prefix}VARIANT"),
            p.variant.clone().unwrap_or_default(),
        ));
    }
    out
}

/// The ARGs before the first FROM: their defaults, overridden by `--build-arg`, plus the
/// platform ARGs.
pub(super) fn meta_args(
    df: &Dockerfile,
    opts: &BuildOptions,
    lexer: &Lexer,
) -> Vec<(String, String)> {
    let mut meta: Vec<(String, String)> = platform_args(&opts.platform);
    for (name, default) in &df.meta_args {
        let value = build_arg(&opts.build_args, name).or_else(|| {
            default
                .as_ref()
                .and_then(|d| lexer.process_word(d, &meta).ok())
        });
        if let Some(v) = value {
            meta.push((name.clone(), v));
        }
    }
    meta
}

/// Every image the `needed` stages start from or read (`FROM`, `COPY --from`, `RUN --mount
/// from=`), by name.
pub(super) async fn resolve_bases(
    df: &Dockerfile,
    needed: &[usize],
    opts: &BuildOptions,
    lexer: &Lexer,
    meta: &[(String, String)],
    images: &dyn Images,
) -> Result<BTreeMap<String, BaseImage>, BuildError> {
    let file = &opts.dockerfile_name;
    let meta = meta.to_vec();
    let mut bases: BTreeMap<String, BaseImage> = BTreeMap::new();
    for &i in needed {
        let stage = &df.stages[i];
        let base = lexer
            .process_word(&stage.base, &meta)
            .map_err(|e| BuildError::step(file, stage.location.line, &stage.original, e.into()))?;
        let mut wanted = vec![(base, stage.location.line)];
        for step in &stage.steps {
            for from in step_sources(step) {
                let from = lexer.process_word(&from, &meta).unwrap_or(from);
                wanted.push((from, step.location.line));
            }
        }
        for (name, line) in wanted {
            let is_stage = stage_index(df, &name, i).is_some();
            if is_stage
                || name == "scratch"
                || bases.contains_key(&name)
                || (line != stage.location.line && opts.named_contexts.contains_key(&name))
            {
                continue;
            }
            let img =
                images
                    .base(&name, &opts.platform)
                    .await
                    .map_err(|source| BuildError::Base {
                        file: file.clone(),
                        line,
                        reference: name.clone(),
                        source,
                    })?;
            bases.insert(name, img);
        }
    }
    Ok(bases)
}

/// ADD's URLs, fetched, by URL: the file and what the server said of it.
pub(super) async fn fetch_urls(
    df: &Dockerfile,
    needed: &[usize],
    opts: &BuildOptions,
    lexer: &Lexer,
    meta: &[(String, String)],
    bases: &BTreeMap<String, BaseImage>,
    images: &dyn Images,
) -> Result<BTreeMap<String, (PathBuf, Download)>, BuildError> {
    let file = &opts.dockerfile_name;
    let meta = meta.to_vec();
    // ADD's URLs are fetched up front too (and checked against --checksum), expanded with the
    // variables their step will have: the base's ENV, then the stage's ARG and ENV lines up to
    // the step (a stage built on another starts with that one's), as the step itself expands
    // them. Quotes are shell words, removed like any.
    let mut urls: BTreeMap<String, (PathBuf, Download)> = BTreeMap::new();
    let mut scopes: BTreeMap<usize, Vec<(String, String)>> = BTreeMap::new();
    for &i in needed {
        let stage = &df.stages[i];
        let mut scope: Vec<(String, String)> = match stage_index(df, &stage.base, i) {
            Some(j) => scopes.get(&j).cloned().unwrap_or_default(),
            None => bases
                .get(&stage.base)
                .and_then(|b| b.config.get("config"))
                .and_then(|c| c.get("Env"))
                .and_then(Value::as_array)
                .map(|env| {
                    env.iter()
                        .filter_map(|e| e.as_str()?.split_once('='))
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
        };
        for step in &stage.steps {
            match &step.instruction {
                Instruction::Arg(args) => {
                    for (name, default) in args {
                        let value = build_arg(&opts.build_args, name).or_else(|| match default {
                            Some(d) => lexer.process_word(d, &scope).ok(),
                            None => meta
                                .iter()
                                .rev()
                                .find(|(k, _)| k == name)
                                .map(|(_, v)| v.clone()),
                        });
                        if let Some(v) = value {
                            scope.push((name.clone(), v));
                        }
                    }
                }
                Instruction::Env(pairs) => {
                    let before = scope.clone();
                    for (k, v) in pairs {
                        if let (Ok(k), Ok(v)) = (
                            lexer.process_word(k, &before),
                            lexer.process_word(v, &before),
                        ) {
                            scope.push((k, v));
                        }
                    }
                }
                _ => {}
            }
            let Instruction::Add(c) = &step.instruction else {
                continue;
            };
            for src in &c.sources {
                let Ok(url) = lexer.process_word(src, &scope) else {
                    continue;
                };
                if !is_url(&url) || urls.contains_key(&url) {
                    continue;
                }
                let dir = opts.work_dir.join("urls");
                let failed =
                    |e: StepError| BuildError::step(file, step.location.line, &step.original, e);
                std::fs::create_dir_all(&dir)
                    .at(dir.display())
                    .map_err(|e| failed(e.into()))?;
                let path = dir.join(urls.len().to_string());
                let got = images.fetch(&url, &path).await.map_err(|source| {
                    failed(StepError::Caller {
                        what: format!("fetching {url}"),
                        source,
                    })
                })?;
                if let Some(want) = &c.checksum {
                    let want = lexer
                        .process_word(want, &scope)
                        .unwrap_or_else(|_| want.clone());
                    if want != got.digest.as_str() {
                        return Err(failed(StepError::Invalid(format!(
                            "{url}: content has digest {}, --checksum says {want}",
                            got.digest
                        ))));
                    }
                }
                urls.insert(url, (path, got));
            }
        }
        scopes.insert(i, scope);
    }
    Ok(urls)
}
