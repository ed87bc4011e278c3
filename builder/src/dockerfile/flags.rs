//! Instruction flags: which an instruction accepts (`Flags`) and their values as types,
//! parsed with the Dockerfile: HEALTHCHECK's durations ([`parse_duration`]), `--chmod`
//! ([`Chmod`]) and RUN's `--mount` ([`MountSpec`]).
//!
//! A value that names variables (`--chmod=$MODE`, `--mount=target=$DIR`) can only be parsed
//! once the step expands it, as BuildKit defers those too: it is kept as [`Typed::Deferred`]
//! (a mount's keys are still checked now) and parsed by the same function when the step runs.
//! HEALTHCHECK's flags are never expanded, as in BuildKit.

use std::time::Duration;

use super::parser::Node;

/// A flag value parsed now, or, when it names variables, after the step expands it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Typed<T> {
    /// Parsed with the Dockerfile.
    Parsed(T),
    /// As written; parsed after expansion.
    Deferred(String),
}

impl<T: Clone> Typed<T> {
    /// `text` parsed by `parse` unless it names a variable.
    fn new(text: &str, parse: fn(&str) -> Result<T, String>) -> Result<Typed<T>, String> {
        if text.contains('$') {
            Ok(Typed::Deferred(text.to_owned()))
        } else {
            parse(text).map(Typed::Parsed)
        }
    }

    /// The value: the parsed one, or the deferred text expanded by `expand` and parsed by
    /// `parse`.
    pub fn resolve<E: From<String>>(
        &self,
        expand: impl FnOnce(&str) -> Result<String, E>,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<T, E> {
        match self {
            Typed::Parsed(v) => Ok(v.clone()),
            Typed::Deferred(text) => Ok(parse(&expand(text)?)?),
        }
    }
}

/// Builder flags of one instruction, checked against what it accepts; each error is the
/// column of the flag and a message.
pub(super) struct Flags<'a> {
    values: Vec<(String, Option<String>)>,
    node: &'a Node,
}

/// What is wrong with an instruction, and where in its line (0: the whole instruction); the
/// parser adds the file and line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Fault {
    /// The byte column in the instruction as written.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl Fault {
    pub(super) fn new(column: usize, message: String) -> Fault {
        Fault { column, message }
    }
}

impl<'a> Flags<'a> {
    pub(super) fn parse(node: &'a Node, allowed: &[&str]) -> Result<Flags<'a>, Fault> {
        let mut values = Vec::new();
        for raw in &node.flags {
            let Some(f) = raw.strip_prefix("--") else {
                return Err(Fault::new(0, format!("invalid flag {raw:?}")));
            };
            let (name, value) = match f.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (f, None),
            };
            if !allowed.contains(&name) {
                let keyword = node.value.to_ascii_uppercase();
                let col = node.original.find(raw.as_str()).unwrap_or(0);
                return Err(Fault::new(
                    col,
                    format!("unknown flag: --{name} (for {keyword})"),
                ));
            }
            values.push((name.to_owned(), value));
        }
        Ok(Flags { values, node })
    }

    /// The value of a flag given at most once.
    pub(super) fn string(&self, name: &str) -> Result<Option<String>, Fault> {
        let mut found = self.values.iter().filter(|(n, _)| n == name);
        let first = found.next();
        if found.next().is_some() {
            return Err(Fault::new(
                self.col(name),
                format!("--{name} is given more than once"),
            ));
        }
        match first {
            None => Ok(None),
            Some((_, Some(v))) => Ok(Some(v.clone())),
            Some((_, None)) => Err(Fault::new(
                self.col(name),
                format!("--{name} needs a value: --{name}=…"),
            )),
        }
    }

    /// Every value of a repeatable flag.
    pub(super) fn all(&self, name: &str) -> Result<Vec<String>, Fault> {
        self.values
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| {
                v.clone().ok_or_else(|| {
                    Fault::new(
                        self.col(name),
                        format!("--{name} needs a value: --{name}=…"),
                    )
                })
            })
            .collect()
    }

    /// A boolean flag: `--name`, `--name=true` or `--name=false`.
    pub(super) fn bool(&self, name: &str) -> Result<bool, Fault> {
        match self.values.iter().rev().find(|(n, _)| n == name) {
            None => Ok(false),
            Some((_, None)) => Ok(true),
            Some((_, Some(v))) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(Fault::new(
                    self.col(name),
                    format!("--{name}={v}: expected true or false"),
                )),
            },
        }
    }

    /// A flag whose value `parse` turns into a type, now or after expansion.
    pub(super) fn typed<T: Clone>(
        &self,
        name: &str,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<Option<Typed<T>>, Fault> {
        self.string(name)?
            .map(|v| Typed::new(&v, parse).map_err(|m| Fault::new(self.col(name), m)))
            .transpose()
    }

    /// A duration flag (HEALTHCHECK's): at least a millisecond, or 0 for the default.
    pub(super) fn duration(&self, name: &str) -> Result<Option<Duration>, Fault> {
        let Some(v) = self.string(name)? else {
            return Ok(None);
        };
        let d =
            parse_duration(&v).map_err(|m| Fault::new(self.col(name), format!("--{name}: {m}")))?;
        if d != Duration::ZERO && d < Duration::from_millis(1) {
            return Err(Fault::new(
                self.col(name),
                format!("--{name}={v}: cannot be less than 1ms"),
            ));
        }
        Ok(Some(d))
    }

    pub(super) fn col(&self, name: &str) -> usize {
        self.node.original.find(&format!("--{name}")).unwrap_or(0)
    }
}

/// Go durations (`1h30m`, `5s`, `250ms`, `1.5s`), as docker reads HEALTHCHECK's flags.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?}: expected a duration like 30s, 1m30s or 250ms");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    let mut rest = text;
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
        let nanos = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += n * nanos;
        rest = &rest[unit_len..];
    }
    if total > i64::MAX as f64 {
        return Err(bad());
    }
    Ok(Duration::from_nanos(total as u64))
}

/// `--chmod`: octal (`755`) or symbolic (`u+x,go=r`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chmod {
    /// An octal mode, set as is.
    Octal(u32),
    /// Clauses applied in turn to the entry's own mode.
    Symbolic(Vec<ChmodClause>),
}

/// One `who op perms` clause of a symbolic mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChmodClause {
    /// The bits `who` (`u`, `g`, `o`, `a`) may change.
    mask: u32,
    /// `+`, `-` or `=`.
    op: char,
    /// The permission letters (`rwxXst`).
    perms: String,
}

impl Chmod {
    /// Parses a `--chmod` value.
    pub fn parse(spec: &str) -> Result<Chmod, String> {
        let bad = || format!("invalid chmod {spec:?}");
        if !spec.is_empty() && spec.chars().all(|c| c.is_ascii_digit()) {
            return u32::from_str_radix(spec, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .map(Chmod::Octal)
                .ok_or_else(bad);
        }
        let mut clauses = Vec::new();
        for clause in spec.split(',') {
            let op_at = clause.find(['+', '-', '=']).ok_or_else(bad)?;
            let (who, rest) = clause.split_at(op_at);
            let who = if who.is_empty() { "a" } else { who };
            let mut mask = 0u32;
            for w in who.chars() {
                mask |= match w {
                    'u' => 0o4700,
                    'g' => 0o2070,
                    'o' => 0o0007,
                    'a' => 0o6777,
                    _ => return Err(bad()),
                };
            }
            let perms = &rest[1..];
            if !perms.chars().all(|p| "rwxXst".contains(p)) {
                return Err(bad());
            }
            clauses.push(ChmodClause {
                mask,
                op: rest.chars().next().unwrap_or('='),
                perms: perms.to_owned(),
            });
        }
        Ok(Chmod::Symbolic(clauses))
    }

    /// The mode an entry whose mode is `current` gets (`X` sets execute bits on directories
    /// and on files executable by someone).
    pub fn apply(&self, current: u32, is_dir: bool) -> u32 {
        let clauses = match self {
            Chmod::Octal(m) => return *m,
            Chmod::Symbolic(c) => c,
        };
        let mut mode = current & 0o7777;
        for c in clauses {
            let mut bits = 0u32;
            for p in c.perms.chars() {
                bits |= match p {
                    'r' => 0o444,
                    'w' => 0o222,
                    'x' => 0o111,
                    'X' if is_dir || current & 0o111 != 0 => 0o111,
                    's' => 0o6000,
                    't' => 0o1000,
                    _ => 0,
                };
            }
            let bits = bits & c.mask;
            match c.op {
                '+' => mode |= bits,
                '-' => mode &= !bits,
                _ => mode = (mode & !(c.mask & 0o7777)) | bits,
            }
        }
        mode
    }
}

/// One `RUN --mount`, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountSpec {
    /// `type`: bind (the default), cache, tmpfs or secret.
    pub kind: String,
    /// `target`: where it is mounted.
    pub target: Option<String>,
    /// `source`: the path in the context or in `from`.
    pub source: Option<String>,
    /// `from`: a stage or an image.
    pub from: Option<String>,
    /// `id`: a cache's or a secret's.
    pub id: Option<String>,
    /// `sharing`: shared, private or locked (caches).
    pub sharing: Option<String>,
    /// `mode`, octal.
    pub mode: Option<u32>,
    /// `uid`.
    pub uid: Option<u32>,
    /// `gid`.
    pub gid: Option<u32>,
    /// Read-only (binds are, unless `rw`).
    pub readonly: bool,
    /// `required` (secrets).
    pub required: bool,
    /// `size` in bytes (tmpfs).
    pub size: Option<u64>,
    /// `env`: a secret as an environment variable.
    pub env: Option<String>,
}

/// The keys a `--mount` takes.
const MOUNT_KEYS: &[&str] = &[
    "type",
    "target",
    "dst",
    "destination",
    "source",
    "src",
    "from",
    "id",
    "sharing",
    "mode",
    "uid",
    "gid",
    "ro",
    "readonly",
    "rw",
    "readwrite",
    "required",
    "env",
    "size",
];

/// A `--mount` as written, parsed now unless a value names a variable; its keys are checked
/// either way.
pub(super) fn mount_flag(text: &str) -> Result<Typed<MountSpec>, String> {
    for field in text.split(',').filter(|f| !f.is_empty()) {
        let key = field.split('=').next().unwrap_or("").trim().to_lowercase();
        if !MOUNT_KEYS.contains(&key.as_str()) {
            return Err(format!("--mount={text}: unknown option {key:?}"));
        }
    }
    Typed::new(text, MountSpec::parse)
}

impl MountSpec {
    /// Parses a `--mount` value (expanded).
    pub fn parse(text: &str) -> Result<MountSpec, String> {
        let mut m = MountSpec {
            kind: "bind".into(),
            ..MountSpec::default()
        };
        let bad = |why: String| format!("--mount={text}: {why}");
        for field in text.split(',').filter(|f| !f.is_empty()) {
            let (k, v) = match field.split_once('=') {
                Some((k, v)) => (k.trim().to_lowercase(), Some(v.trim().to_owned())),
                None => (field.trim().to_lowercase(), None),
            };
            let val = || v.clone().ok_or_else(|| bad(format!("{k} needs a value")));
            let flag = || -> Result<bool, String> {
                match v.as_deref() {
                    None | Some("true") | Some("1") => Ok(true),
                    Some("false") | Some("0") => Ok(false),
                    Some(o) => Err(bad(format!("{k}={o}: expected true or false"))),
                }
            };
            let num = |radix: u32| -> Result<u32, String> {
                let s = val()?;
                u32::from_str_radix(&s, radix).map_err(|_| bad(format!("{k}={s} is not a number")))
            };
            match k.as_str() {
                "type" => m.kind = val()?,
                "target" | "dst" | "destination" => m.target = Some(val()?),
                "source" | "src" => m.source = Some(val()?),
                "from" => m.from = Some(val()?),
                "id" => m.id = Some(val()?),
                "sharing" => {
                    let s = val()?;
                    if !matches!(s.as_str(), "shared" | "private" | "locked") {
                        return Err(bad(format!(
                            "sharing={s}: expected shared, private or locked"
                        )));
                    }
                    m.sharing = Some(s);
                }
                "mode" => m.mode = Some(num(8)?),
                "uid" => m.uid = Some(num(10)?),
                "gid" => m.gid = Some(num(10)?),
                "ro" | "readonly" => m.readonly = flag()?,
                "rw" | "readwrite" => m.readonly = !flag()?,
                "required" => m.required = flag()?,
                "env" => m.env = Some(val()?),
                "size" => {
                    let s = val()?;
                    m.size = Some(parse_size(&s).ok_or_else(|| bad(format!("size={s}")))?);
                }
                other => return Err(bad(format!("unknown option {other:?}"))),
            }
        }
        match m.kind.as_str() {
            "bind" => {
                // Bind mounts are read-only unless rw is given.
                if !text.split(',').any(|f| {
                    let k = f.split('=').next().unwrap_or("").trim().to_lowercase();
                    k == "rw" || k == "readwrite" || k == "ro" || k == "readonly"
                }) {
                    m.readonly = true;
                }
            }
            "cache" | "tmpfs" | "secret" => {}
            "ssh" => {
                return Err(bad(
                    "type=ssh is not supported: wharf build has no --ssh agent forwarding".into(),
                ));
            }
            other => {
                return Err(bad(format!(
                    "unknown type {other:?}: expected bind, cache, tmpfs or secret"
                )));
            }
        }
        if m.target.is_none() && m.kind != "secret" {
            return Err(bad("a target is required".into()));
        }
        Ok(m)
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let lower = s.to_lowercase();
    let (num, mult) = match lower.trim_end_matches('b').chars().last()? {
        'k' => (&lower[..lower.find('k')?], 1u64 << 10),
        'm' => (&lower[..lower.find('m')?], 1 << 20),
        'g' => (&lower[..lower.find('g')?], 1 << 30),
        _ => (lower.trim_end_matches('b'), 1),
    };
    num.parse::<u64>().ok().map(|n| n * mult)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["5", "", "s", "-1s", "5 s", "1d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn chmod_forms() {
        let apply = |spec: &str, current: u32, is_dir: bool| {
            Chmod::parse(spec).unwrap().apply(current, is_dir)
        };
        assert_eq!(apply("755", 0o644, false), 0o755);
        assert_eq!(apply("u+x", 0o644, false), 0o744);
        assert_eq!(apply("go-r", 0o644, false), 0o600);
        assert_eq!(apply("a=rX", 0o600, true), 0o555);
        assert_eq!(apply("a=rX", 0o600, false), 0o444);
        for bad in ["q+z", "u+q", "", "99999", "77777", "u"] {
            assert!(Chmod::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mount_options() {
        let m = MountSpec::parse(
            "type=cache,target=/root/.cache,id=pip,sharing=locked,mode=0700,uid=1",
        )
        .unwrap();
        assert_eq!(
            (
                m.kind.as_str(),
                m.target.as_deref(),
                m.id.as_deref(),
                m.mode,
                m.uid
            ),
            (
                "cache",
                Some("/root/.cache"),
                Some("pip"),
                Some(0o700),
                Some(1)
            )
        );
        assert!(
            MountSpec::parse("target=/src").unwrap().readonly,
            "bind is read-only by default"
        );
        assert!(
            !MountSpec::parse("type=bind,target=/src,rw")
                .unwrap()
                .readonly
        );
        assert_eq!(
            MountSpec::parse("type=tmpfs,target=/t,size=64m")
                .unwrap()
                .size,
            Some(64 << 20)
        );
        for bad in [
            "type=cache",
            "type=volume,target=/x",
            "type=cache,target=/x,sharing=sometimes",
            "type=ssh",
            "type=cache,target=/x,bogus=1",
        ] {
            let e = MountSpec::parse(bad).unwrap_err();
            assert!(e.starts_with(&format!("--mount={bad}: ")), "{e}");
        }
        // With a variable: kept for later, its keys checked now.
        assert_eq!(
            mount_flag("type=cache,target=$DIR").unwrap(),
            Typed::Deferred("type=cache,target=$DIR".into())
        );
        assert!(mount_flag("type=cache,bogus=$X").is_err());
    }
}
