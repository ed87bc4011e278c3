//! The config rules: what ARG, ENV, LABEL, MAINTAINER, EXPOSE, CMD, ENTRYPOINT, SHELL, USER,
//! STOPSIGNAL, VOLUME, HEALTHCHECK and ONBUILD do to an image's config, each with the history
//! entry BuildKit records. One set of rules for Dockerfiles and for `import --change`.

use super::error::StepError;
use crate::dockerfile::shell::ShellError;
use serde_json::{Value, json};

use crate::dockerfile::instructions::{CommandLine, Healthcheck, Instruction};
use crate::dockerfile::shell::Lexer;

use super::rfc3339;
use super::stage::StageState;

/// What the rules need besides the stage: the lexer words are expanded with, the ARG values
/// given from outside, and the time history entries get.
pub(crate) struct Rules<'a> {
    /// Expands words (with the Dockerfile's escape character).
    pub lexer: &'a Lexer,
    /// `--build-arg` values.
    pub build_args: &'a [(String, String)],
    /// The ARGs before the first FROM, with their values.
    pub meta: &'a [(String, String)],
    /// `SOURCE_DATE_EPOCH`: the time of every history entry when set.
    pub source_date_epoch: Option<i64>,
}

/// The value `--build-arg` gives `name` (the last one given wins).
pub(super) fn build_arg(build_args: &[(String, String)], name: &str) -> Option<String> {
    build_args
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

impl Rules<'_> {
    /// Records a history entry, as BuildKit writes it.
    pub(super) fn history(&self, s: &mut StageState, created_by: String, empty_layer: bool) {
        let mut h = json!({
            "created": rfc3339(self.source_date_epoch.unwrap_or(s.time)),
            "created_by": created_by,
            "comment": "buildkit.dockerfile.v0",
        });
        if empty_layer {
            h["empty_layer"] = json!(true);
        }
        let list = s.image.entry("history").or_insert_with(|| json!([]));
        if let Some(a) = list.as_array_mut() {
            a.push(h);
        }
    }

    /// `word` expanded with the stage's ARGs and ENV.
    pub(crate) fn expand(&self, s: &mut StageState, word: &str) -> Result<String, ShellError> {
        self.lexer.process_word(word, &s.scope())
    }

    /// Applies `instruction` (written as `original`) if it is a config rule; `Ok(false)` when it
    /// is not (it changes files: COPY, ADD, WORKDIR, RUN).
    pub(crate) fn apply(
        &self,
        s: &mut StageState,
        instruction: &Instruction,
        original: &str,
    ) -> Result<bool, StepError> {
        match instruction {
            Instruction::Arg(args) => {
                for (name, default) in args {
                    let value = build_arg(self.build_args, name).or_else(|| {
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
                    let k = self.lexer.process_word(k, &env)?;
                    let v = self.lexer.process_word(v, &env)?;
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
                            StepError::Invalid(format!(
                                "invalid port {word:?}: expected <port>[-<port>][/tcp|udp|sctp]"
                            ))
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
                let is_cmd = matches!(instruction, Instruction::Cmd(_));
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
                        return Err(StepError::Invalid(
                            "VOLUME specified can not be an empty string".into(),
                        ));
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
                                v[key] = json!(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
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
                        original
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
            _ => return Ok(false),
        }
        Ok(true)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::solve::{clean_abs, rfc3339};

    #[test]
    fn times_signals_and_paths() {
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
