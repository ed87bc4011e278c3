//! `--change` instructions (`CMD`, `ENTRYPOINT`, `ENV`, `EXPOSE`, `LABEL`, `ONBUILD`, `USER`,
//! `VOLUME`, `WORKDIR`, `STOPSIGNAL`) applied to the `config` object of an image config, with
//! docker's forms: JSON arrays or shell form for commands, `k=v` pairs or the legacy `k v`.

use serde_json::{Map, Value, json};

/// Why a change could not be applied. Each names the change as written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChangeError {
    /// An instruction `--change` does not accept.
    #[error(
        "{change:?}: {instruction} is not supported by --change (use CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, USER, VOLUME, WORKDIR or STOPSIGNAL)"
    )]
    Unsupported {
        /// The whole change.
        change: String,
        /// Its instruction word.
        instruction: String,
    },
    /// The instruction's arguments are malformed.
    #[error("{change:?}: {reason}")]
    Invalid {
        /// The whole change.
        change: String,
        /// What is wrong.
        reason: String,
    },
}

/// Splits shell-like words, honouring single and double quotes and backslash escapes.
fn words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(n) => cur.push(n),
                    None => return Err("trailing backslash".into()),
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(n) => cur.push(n),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(n) => cur.push(n),
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(n) => cur.push(n),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// A JSON array of strings, if `s` is one.
fn json_array(s: &str) -> Option<Vec<String>> {
    if !s.trim_start().starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(s).ok()
}

fn command(args: &str) -> Value {
    match json_array(args) {
        Some(v) => json!(v),
        None => json!(["/bin/sh", "-c", args]),
    }
}

fn pairs(change: &str, args: &str, legacy_ok: bool) -> Result<Vec<(String, String)>, ChangeError> {
    let invalid = |reason: String| ChangeError::Invalid {
        change: change.to_owned(),
        reason,
    };
    let ws = words(args).map_err(invalid)?;
    if ws.is_empty() {
        return Err(invalid("needs at least one argument".into()));
    }
    if !ws[0].contains('=') {
        if !legacy_ok {
            return Err(invalid(format!("expected key=value, got {:?}", ws[0])));
        }
        // Legacy `ENV key value with spaces`.
        let (k, v) = args
            .trim()
            .split_once(char::is_whitespace)
            .unwrap_or((args.trim(), ""));
        return Ok(vec![(k.to_owned(), v.trim().to_owned())]);
    }
    ws.into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(invalid(format!("expected key=value, got {w:?}"))),
        })
        .collect()
}

fn object<'a>(config: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let v = config.entry(key).or_insert_with(|| json!({}));
    if !v.is_object() {
        *v = json!({});
    }
    match v {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

/// Applies one change to `config` (the `config` object of an image config).
pub fn apply(config: &mut Map<String, Value>, change: &str) -> Result<(), ChangeError> {
    let trimmed = change.trim();
    let (word, args) = trimmed
        .split_once(char::is_whitespace)
        .map_or((trimmed, ""), |(w, a)| (w, a.trim()));
    let instruction = word.to_ascii_uppercase();
    let invalid = |reason: &str| ChangeError::Invalid {
        change: change.to_owned(),
        reason: reason.to_owned(),
    };
    if args.is_empty() {
        return Err(invalid(&format!("{instruction} needs an argument")));
    }
    match instruction.as_str() {
        "CMD" => {
            config.insert("Cmd".into(), command(args));
        }
        "ENTRYPOINT" => {
            config.insert("Entrypoint".into(), command(args));
        }
        "ENV" => {
            let mut env: Vec<String> = config
                .get("Env")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            for (k, v) in pairs(change, args, true)? {
                env.retain(|e| e.split_once('=').map_or(e.as_str(), |(ek, _)| ek) != k);
                env.push(format!("{k}={v}"));
            }
            config.insert("Env".into(), json!(env));
        }
        "LABEL" => {
            let kv = pairs(change, args, false)?;
            let labels = object(config, "Labels");
            for (k, v) in kv {
                labels.insert(k, json!(v));
            }
        }
        "EXPOSE" => {
            let ports = words(args).map_err(|r| invalid(&r))?;
            let mut keys = Vec::new();
            for p in ports {
                let (num, proto) = p.split_once('/').unwrap_or((&p, "tcp"));
                let ok = !num.is_empty()
                    && num.split('-').all(|n| n.parse::<u16>().is_ok())
                    && matches!(proto.to_ascii_lowercase().as_str(), "tcp" | "udp" | "sctp");
                if !ok {
                    return Err(invalid(&format!("invalid port {p:?}")));
                }
                keys.push(format!("{num}/{}", proto.to_ascii_lowercase()));
            }
            let exposed = object(config, "ExposedPorts");
            for k in keys {
                exposed.insert(k, json!({}));
            }
        }
        "VOLUME" => {
            let vols = match json_array(args) {
                Some(v) => v,
                None => words(args).map_err(|r| invalid(&r))?,
            };
            let volumes = object(config, "Volumes");
            for v in vols {
                volumes.insert(v, json!({}));
            }
        }
        "USER" => {
            config.insert("User".into(), json!(args));
        }
        "WORKDIR" => {
            config.insert("WorkingDir".into(), json!(args));
        }
        "STOPSIGNAL" => {
            config.insert("StopSignal".into(), json!(args));
        }
        "ONBUILD" => {
            let list = config.entry("OnBuild").or_insert_with(|| json!([]));
            if let Value::Array(a) = list {
                a.push(json!(args));
            }
        }
        _ => {
            return Err(ChangeError::Unsupported {
                change: change.to_owned(),
                instruction,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(changes: &[&str]) -> Value {
        let mut m = Map::new();
        for c in changes {
            apply(&mut m, c).unwrap();
        }
        Value::Object(m)
    }

    #[test]
    fn applies_docker_forms() {
        let v = run(&[
            r#"CMD ["sh"]"#,
            "ENTRYPOINT echo hi",
            "ENV PATH=/bin:/usr/bin A=\"x y\"",
            "ENV LEGACY some value",
            "ENV A=z",
            "EXPOSE 80 53/udp",
            "LABEL a=b \"c d\"=e",
            "VOLUME /data /logs",
            "USER nobody",
            "WORKDIR /srv",
            "STOPSIGNAL SIGINT",
            "ONBUILD RUN true",
        ]);
        assert_eq!(v["Cmd"], json!(["sh"]));
        assert_eq!(v["Entrypoint"], json!(["/bin/sh", "-c", "echo hi"]));
        assert_eq!(
            v["Env"],
            json!(["PATH=/bin:/usr/bin", "LEGACY=some value", "A=z"])
        );
        assert_eq!(v["ExposedPorts"], json!({"80/tcp": {}, "53/udp": {}}));
        assert_eq!(v["Labels"], json!({"a": "b", "c d": "e"}));
        assert_eq!(v["Volumes"], json!({"/data": {}, "/logs": {}}));
        assert_eq!(v["User"], "nobody");
        assert_eq!(v["WorkingDir"], "/srv");
        assert_eq!(v["StopSignal"], "SIGINT");
        assert_eq!(v["OnBuild"], json!(["RUN true"]));
    }

    #[test]
    fn rejects_with_the_change_named() {
        let mut m = Map::new();
        for (c, want) in [
            ("RUN true", "not supported"),
            ("EXPOSE http", "invalid port"),
            ("LABEL x", "expected key=value"),
            ("ENV A=\"open", "unterminated double quote"),
            ("CMD", "needs an argument"),
        ] {
            let e = apply(&mut m, c).unwrap_err().to_string();
            assert!(
                e.contains(want) && e.contains(&format!("{c:?}")),
                "{c}: {e}"
            );
        }
    }
}
