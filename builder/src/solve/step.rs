//! One step: what each instruction does to the stage, and the key chain that follows it.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::dockerfile::instructions::{CommandLine, Healthcheck, Instruction, Step};

use super::cache::{CacheKey, image_key};
use super::graph::stage_index;
use super::solver::Solver;
use super::stage::{Layer, StageState, clean_abs};
use super::{copy, run};

/// What a step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StepOutcome {
    /// It changed the image's config only.
    Config,
    /// Its layer came from the cache.
    Cached,
    /// It ran and wrote a layer.
    Ran,
}

impl Solver {
    /// Runs one step; returns whether its result came from the cache.
    pub(super) fn step(
        &self,
        s: &mut StageState,
        step: &Step,
        done: &BTreeMap<usize, StageState>,
        stage: usize,
    ) -> Result<StepOutcome, String> {
        let (args_before, layers_before) = (s.args.len(), s.layers.len());
        let outcome = self.step_inner(s, step, done, stage)?;
        // Everything a later step could depend on goes into the chain: the step as written, the
        // ARG values it set (`--build-arg`s are not in the text) and the layers it made. The
        // config follows from those and the base's, which the stage's first key holds; adding
        // only what this step changed keeps the key's cost independent of the stage's length.
        let layers = s
            .layers
            .get(layers_before..)
            .unwrap_or_default()
            .iter()
            .map(|l| match l {
                Layer::Base(b, _, _) => b.digest.as_str(),
                Layer::New(w, _) => w.diff_id.as_str(),
            });
        s.key = CacheKey::new("step")
            .digest(&s.key)
            .text(&step.original)
            .pairs(s.args.get(args_before..).unwrap_or_default())
            .texts(layers)
            .finish();
        Ok(outcome)
    }

    fn step_inner(
        &self,
        s: &mut StageState,
        step: &Step,
        done: &BTreeMap<usize, StageState>,
        stage: usize,
    ) -> Result<StepOutcome, String> {
        match &step.instruction {
            Instruction::Arg(args) => {
                for (name, default) in args {
                    let value = self
                        .opts
                        .build_args
                        .iter()
                        .rev()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                        .or_else(|| {
                            // A meta ARG re-declared without a default takes the meta value.
                            default
                                .is_none()
                                .then(|| {
                                    self.meta
                                        .iter()
                                        .rev()
                                        .find(|(k, _)| k == name)
                                        .map(|(_, v)| v.clone())
                                })
                                .flatten()
                        });
                    let value = match (value, default) {
                        (Some(v), _) => Some(v),
                        (None, Some(d)) => Some(self.expand(s, d)?),
                        (None, None) => None,
                    };
                    if let Some(v) = value {
                        s.args.push((name.clone(), v));
                    }
                }
                let text = args.iter().map(|(k, d)| match d {
                    Some(d) => format!("{k}={d}"),
                    None => k.clone(),
                });
                self.history(
                    s,
                    format!("ARG {}", text.collect::<Vec<_>>().join(" ")),
                    true,
                );
            }
            Instruction::Env(pairs) => {
                // Every pair sees the environment from before this ENV, as Docker documents.
                let mut expanded = Vec::new();
                let mut values = Vec::new();
                let env = s.scope();
                for (k, v) in pairs {
                    let k = self
                        .lexer
                        .process_word(k, &env)
                        .map_err(|e| e.to_string())?;
                    let v = self
                        .lexer
                        .process_word(v, &env)
                        .map_err(|e| e.to_string())?;
                    expanded.push(format!("{k}={v}"));
                    values.push((k, v));
                }
                for (k, v) in values {
                    s.set_env(&k, &v);
                }
                self.history(s, format!("ENV {}", expanded.join(" ")), true);
            }
            Instruction::Label(pairs) => {
                let mut expanded = Vec::new();
                for (k, v) in pairs {
                    let k = self.expand(s, k)?;
                    let v = self.expand(s, v)?;
                    let labels = s.config().entry("Labels").or_insert_with(|| json!({}));
                    if !labels.is_object() {
                        *labels = json!({});
                    }
                    labels[&k] = json!(v);
                    expanded.push(format!("{k}={v}"));
                }
                self.history(s, format!("LABEL {}", expanded.join(" ")), true);
            }
            Instruction::Maintainer(m) => {
                let m = self.expand(s, m)?;
                s.image.insert("author".into(), json!(m));
                self.history(s, format!("MAINTAINER {m}"), true);
            }
            Instruction::Expose(ports) => {
                let mut list = Vec::new();
                for p in ports {
                    for word in self.expand(s, p)?.split_whitespace() {
                        let port = if word.contains('/') {
                            word.to_lowercase()
                        } else {
                            format!("{word}/tcp")
                        };
                        let (num, proto) = port.split_once('/').unwrap_or((&port, "tcp"));
                        let bad = || {
                            format!(
                                "invalid port {word:?}: expected <port>[-<port>][/tcp|udp|sctp]"
                            )
                        };
                        if !matches!(proto, "tcp" | "udp" | "sctp") {
                            return Err(bad());
                        }
                        // A range is every port in it, as docker records it.
                        let (lo, hi) = match num.split_once('-') {
                            Some((a, b)) => (
                                a.parse::<u16>().map_err(|_| bad())?,
                                b.parse::<u16>().map_err(|_| bad())?,
                            ),
                            None => {
                                let p = num.parse::<u16>().map_err(|_| bad())?;
                                (p, p)
                            }
                        };
                        if lo > hi {
                            return Err(bad());
                        }
                        for p in lo..=hi {
                            list.push(format!("{p}/{proto}"));
                        }
                    }
                }
                let exposed = s
                    .config()
                    .entry("ExposedPorts")
                    .or_insert_with(|| json!({}));
                if !exposed.is_object() {
                    *exposed = json!({});
                }
                for p in &list {
                    exposed[p] = json!({});
                }
                // Go prints a map with its keys sorted.
                list.sort();
                list.dedup();
                let shown: Vec<String> = list.iter().map(|p| format!("{p}:{{}}")).collect();
                self.history(s, format!("EXPOSE map[{}]", shown.join(" ")), true);
            }
            Instruction::Cmd(c) | Instruction::Entrypoint(c) => {
                let is_cmd = matches!(step.instruction, Instruction::Cmd(_));
                let argv = match c {
                    CommandLine::Exec(v) => v.clone(),
                    CommandLine::Shell(cmd) => {
                        let mut v = s.shell();
                        v.push(cmd.clone());
                        v
                    }
                };
                let key = if is_cmd { "Cmd" } else { "Entrypoint" };
                s.config().insert(key.into(), json!(argv));
                if is_cmd {
                    s.cmd_set = true;
                    // BuildKit marks every CMD so (a field docker's image spec keeps).
                    s.config().insert("ArgsEscaped".into(), json!(true));
                } else if !s.cmd_set {
                    // ENTRYPOINT resets a CMD inherited from the base.
                    s.config().insert("Cmd".into(), Value::Null);
                }
                let word = if is_cmd { "CMD" } else { "ENTRYPOINT" };
                // BuildKit records Go's %q of the list: ["a" "b"].
                self.history(s, format!("{word} {}", go_list(&argv)), true);
            }
            Instruction::Shell(v) => {
                s.config().insert("Shell".into(), json!(v));
                self.history(
                    s,
                    format!("SHELL {}", serde_json::to_string(v).unwrap_or_default()),
                    true,
                );
            }
            Instruction::User(u) => {
                let u = self.expand(s, u)?;
                s.config().insert("User".into(), json!(u));
                self.history(s, format!("USER {u}"), true);
            }
            Instruction::StopSignal(sig) => {
                let sig = self.expand(s, sig)?;
                check_signal(&sig)?;
                s.config().insert("StopSignal".into(), json!(sig));
                self.history(s, format!("STOPSIGNAL {sig}"), true);
            }
            Instruction::Volume(paths) => {
                let mut list = Vec::new();
                for p in paths {
                    let p = self.expand(s, p)?;
                    if p.is_empty() {
                        return Err("VOLUME specified can not be an empty string".into());
                    }
                    list.push(p);
                }
                let vols = s.config().entry("Volumes").or_insert_with(|| json!({}));
                if !vols.is_object() {
                    *vols = json!({});
                }
                for p in &list {
                    vols[p] = json!({});
                }
                self.history(
                    s,
                    format!(
                        "VOLUME {}",
                        serde_json::to_string(&list).unwrap_or_default()
                    ),
                    true,
                );
            }
            Instruction::Workdir(w) => {
                let w = self.expand(s, w)?;
                let current = s.workdir();
                // BuildKit records an absolute path as written (`/app/` keeps its slash) and
                // joins a relative one onto the current directory, cleaned.
                let recorded = if w.starts_with('/') {
                    w.clone()
                } else {
                    clean_abs(&format!("{current}/{w}"))
                };
                let path = clean_abs(&recorded);
                s.config().insert("WorkingDir".into(), json!(recorded));
                // Created as the image's USER, as BuildKit does.
                let user = s
                    .config()
                    .get("User")
                    .and_then(Value::as_str)
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned);
                let mut key = CacheKey::new("workdir");
                key.digest(&s.key).text(&recorded).opt_text(user.as_deref());
                self.layer_options(&mut key);
                let key = key.finish();
                if let Some(hit) = self.cached_layer(&key) {
                    s.layers.push(Layer::New(hit.layer, hit.file));
                    self.history(s, format!("WORKDIR {recorded}"), false);
                    return Ok(StepOutcome::Cached);
                }
                self.mount_root(s)?;
                let owner = user.and_then(|u| copy::resolve_owner(&s.rootfs, &u).ok());
                let created = copy::mkdir_p(s, &path, owner, 0o755).map_err(|e| e.to_string())?;
                // A layer even when the directory was there (an empty one), as BuildKit makes.
                copy::commit_layer(s, created, &self.opts).map_err(|e| e.to_string())?;
                self.record(&key, s);
                self.commit_root(s)?;
                self.history(s, format!("WORKDIR {recorded}"), false);
                return Ok(StepOutcome::Ran);
            }
            Instruction::Healthcheck(h) => {
                let value = match h {
                    Healthcheck::None => json!({"Test": ["NONE"]}),
                    Healthcheck::Cmd {
                        command,
                        interval,
                        timeout,
                        start_period,
                        start_interval,
                        retries,
                    } => {
                        let test = match command {
                            CommandLine::Exec(v) => std::iter::once("CMD".to_owned())
                                .chain(v.iter().cloned())
                                .collect::<Vec<_>>(),
                            CommandLine::Shell(c) => vec!["CMD-SHELL".to_owned(), c.clone()],
                        };
                        let mut v = json!({"Test": test});
                        for (key, d) in [
                            ("Interval", interval),
                            ("Timeout", timeout),
                            ("StartPeriod", start_period),
                            ("StartInterval", start_interval),
                        ] {
                            if let Some(d) = d {
                                v[key] = json!(parse_duration_ns(d)?);
                            }
                        }
                        if let Some(r) = retries {
                            v["Retries"] = json!(r);
                        }
                        v
                    }
                };
                s.config().insert("Healthcheck".into(), value.clone());
                self.history(
                    s,
                    format!(
                        "HEALTHCHECK {}",
                        step.original
                            .split_once(char::is_whitespace)
                            .map_or("", |x| x.1)
                            .trim()
                    ),
                    true,
                );
            }
            Instruction::Onbuild(trigger) => {
                let list = s.config().entry("OnBuild").or_insert_with(|| json!([]));
                if !list.is_array() {
                    *list = json!([]);
                }
                if let Some(a) = list.as_array_mut() {
                    a.push(json!(trigger));
                }
                self.history(s, format!("ONBUILD {trigger}"), true);
            }
            Instruction::Copy(c) | Instruction::Add(c) => {
                let add = matches!(step.instruction, Instruction::Add(_));
                let from_name = match &c.from {
                    Some(f) => Some(self.expand(s, f)?),
                    None => None,
                };
                let named = from_name
                    .as_ref()
                    .filter(|f| stage_index(&self.df, f, stage).is_none())
                    .and_then(|f| self.opts.named_contexts.get(f));
                // Another stage's or an image's root, mounted only if the step runs.
                let from_root_name = match (&from_name, named) {
                    (Some(f), None) => Some(f.clone()),
                    _ => None,
                };
                let word = if add { "ADD" } else { "COPY" };
                // BuildKit's history: the sources and the destination, expanded, no flags.
                let mut shown = Vec::new();
                for w in c.sources.iter().chain(std::iter::once(&c.dest)) {
                    shown.push(if w.starts_with("<<") {
                        w.clone()
                    } else {
                        self.expand(s, w)?
                    });
                }
                let args = shown.join(" ");
                // The key: the chain so far, the instruction, and what its sources hold.
                let mut key = CacheKey::new("copy");
                key.digest(&s.key).text(&step.original);
                match (&from_root_name, named) {
                    (Some(f), _) => {
                        match stage_index(&self.df, f, stage).and_then(|j| done.get(&j)) {
                            Some(d) => key.text("stage").digest(&d.key),
                            None => match self.bases.get(f) {
                                Some(img) => key.text("image").digest(&image_key(img)),
                                None => key.text("unresolved image").text(f),
                            },
                        }
                    }
                    (None, Some(ctx)) => {
                        let sum = self.context_checksum(s, c, ctx)?;
                        key.text("named context").digest(&sum)
                    }
                    _ => {
                        let sum = self.context_checksum(s, c, &self.opts.context)?;
                        key.text("context").digest(&sum)
                    }
                };
                let workdir = s.workdir();
                key.pairs(&s.expansion_env()).text(&workdir);
                self.layer_options(&mut key);
                let key = key.finish();
                if let Some(hit) = self.cached_layer(&key) {
                    s.layers.push(Layer::New(hit.layer, hit.file));
                    s.time = hit.created_at;
                    self.history(s, format!("{word} {args} # buildkit"), false);
                    return Ok(StepOutcome::Cached);
                }
                let from_root = match &from_root_name {
                    Some(f) => Some(self.other_root(f, stage, done)?),
                    None => None,
                };
                let from = match (&from_root, named) {
                    (Some(root), _) => Some(copy::From::Root(root)),
                    (None, Some(ctx)) => Some(copy::From::Context(ctx)),
                    (None, None) => None,
                };
                self.mount_root(s)?;
                let entries = copy::copy(self, s, c, add, from)?;
                copy::commit_layer(s, entries, &self.opts).map_err(|e| e.to_string())?;
                self.commit_root(s)?;
                s.time = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
                self.record(&key, s);
                self.history(s, format!("{word} {args} # buildkit"), false);
                return Ok(StepOutcome::Ran);
            }
            Instruction::Run(r) => return run::run(self, s, r, done, stage),
        }
        Ok(StepOutcome::Config)
    }
}

fn check_signal(sig: &str) -> Result<(), String> {
    let name = sig.trim_start_matches("SIG");
    let known = [
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
        "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
        "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
    ];
    if sig.parse::<u32>().is_ok_and(|n| (1..=64).contains(&n))
        || known.contains(&name)
        || name.starts_with("RTMIN")
        || name.starts_with("RTMAX")
    {
        Ok(())
    } else {
        Err(format!("invalid signal: {sig}"))
    }
}

/// Go's `%q` of a string list: `["a" "b"]`.
fn go_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|i| crate::dockerfile::parser::go_quote(i))
        .collect();
    format!("[{}]", quoted.join(" "))
}

/// Go durations (`1h30m`, `5s`, `250ms`) in nanoseconds.
fn parse_duration_ns(text: &str) -> Result<i64, String> {
    let bad = || format!("invalid duration {text:?}: expected a duration like 30s, 1m30s or 250ms");
    let mut total: f64 = 0.0;
    let mut rest = text;
    if rest.is_empty() {
        return Err(bad());
    }
    if rest == "0" {
        return Ok(0);
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += n * mult;
        rest = &rest[unit_len..];
    }
    Ok(total as i64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::solve::rfc3339;

    #[test]
    fn durations_and_times() {
        assert_eq!(parse_duration_ns("5s").unwrap(), 5_000_000_000);
        assert_eq!(parse_duration_ns("1m30s").unwrap(), 90_000_000_000);
        assert_eq!(parse_duration_ns("250ms").unwrap(), 250_000_000);
        assert!(parse_duration_ns("5").is_err());
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert!(
            check_signal("SIGTERM").is_ok()
                && check_signal("9").is_ok()
                && check_signal("SIGFOO").is_err()
        );
        assert_eq!(clean_abs("a/../b/./c/"), "/b/c");
    }
}
