//! The Dockerfile line parser: text → [`Node`]s, one per instruction, shaped like BuildKit's
//! (`frontend/dockerfile/parser`) so that its test corpus applies unchanged.
//!
//! What happens here: parser directives (`# syntax=`, `# escape=`, `# check=`) at the top;
//! comment lines, also inside continuations; line continuation with the escape token; builder
//! flags (`--from=x`) split off; the arguments of each instruction split the way that
//! instruction reads them (JSON array or shell form, `KEY=value` lists, whitespace lists); and
//! heredoc bodies collected after RUN, COPY and ADD lines. What does not: variable expansion
//! and the meaning of instructions (the instruction layer does that).

use std::fmt::Write as _;

/// A parsed instruction, or one of its arguments: BuildKit's AST node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Node {
    /// The instruction keyword as written (on the instruction node), or an argument.
    pub value: String,
    /// The next argument.
    pub next: Option<Box<Node>>,
    /// A sub-instruction (ONBUILD's).
    pub children: Vec<Node>,
    /// Heredoc bodies that follow the line.
    pub heredocs: Vec<Heredoc>,
    /// The arguments were a JSON array.
    pub json: bool,
    /// The instruction's line, continuations joined.
    pub original: String,
    /// Builder flags (`--from=x`), as written.
    pub flags: Vec<String>,
    /// First line, 1-based.
    pub start_line: usize,
    /// Last line, 1-based (the heredoc terminator's, if any).
    pub end_line: usize,
    /// Comment lines right before the instruction.
    pub prev_comment: Vec<String>,
}

/// A heredoc (`<<EOF` … `EOF`) attached to an instruction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word, unquoted.
    pub name: String,
    /// The body, every line with its newline.
    pub content: String,
    /// Variables in the body are expanded (the delimiter was not quoted).
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from the body and the terminator.
    pub chomp: bool,
    /// The file descriptor (`3<<EOF`), 0 when none was written.
    pub file_descriptor: u32,
}

/// A parse that worked.
#[derive(Clone, Debug)]
pub struct Parsed {
    /// The instructions, in order.
    pub children: Vec<Node>,
    /// The escape token in effect (`\` or `` ` ``).
    pub escape: char,
    /// Parser directives found at the top, lower-cased names.
    pub directives: Vec<(String, String)>,
    /// Things that parse but deserve a warning.
    pub warnings: Vec<Warning>,
    /// The first instruction's line.
    pub start_line: usize,
    /// The last instruction's last line.
    pub end_line: usize,
}

/// A parser warning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// What is wrong.
    pub message: String,
    /// Where (1-based first line).
    pub line: usize,
}

/// A Dockerfile that does not parse: what is wrong, at which lines.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", lines(*start_line, *end_line))]
pub struct ParseError {
    /// What is wrong.
    pub message: String,
    /// First line involved, 1-based.
    pub start_line: usize,
    /// Last line involved.
    pub end_line: usize,
}

fn lines(start: usize, end: usize) -> String {
    if end > start {
        format!("lines {start}-{end}")
    } else {
        format!("line {start}")
    }
}

/// Parser directives and the escape token they set.
struct Directives {
    escape: char,
    done: bool,
    seen: Vec<(String, String)>,
}

const DIRECTIVES: [&str; 3] = ["syntax", "escape", "check"];

impl Directives {
    fn new() -> Directives {
        Directives {
            escape: '\\',
            done: false,
            seen: Vec::new(),
        }
    }

    /// Looks at one line while directives may still come: `# name = value`.
    fn observe(&mut self, line: &str) -> Result<(), String> {
        if self.done {
            return Ok(());
        }
        let Some((name, value)) = directive(line) else {
            self.done = true;
            return Ok(());
        };
        let name = name.to_ascii_lowercase();
        if !DIRECTIVES.contains(&name.as_str()) {
            self.done = true;
            return Ok(());
        }
        if self.seen.iter().any(|(n, _)| *n == name) {
            return Err(format!("only one {name} parser directive can be used"));
        }
        if name == "escape" {
            self.escape = match value.as_str() {
                "\\" => '\\',
                "`" => '`',
                other => {
                    return Err(format!(
                        "invalid escape token '{other}' does not match ` or \\"
                    ));
                }
            };
        }
        self.seen.push((name, value));
        Ok(())
    }
}

/// `#\s*name\s*=\s*value` with a name of letters and digits.
fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix('#')?.trim_start();
    let name_len = rest
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_alphabetic() || (*i > 0 && c.is_ascii_digit())))
        .map_or(rest.len(), |(i, _)| i);
    if name_len == 0 {
        return None;
    }
    let (name, rest) = rest.split_at(name_len);
    let value = rest.trim_start().strip_prefix('=')?.trim();
    if value.is_empty() {
        return None;
    }
    Some((name.to_owned(), value.to_owned()))
}

fn trim_newline(line: &str) -> &str {
    line.trim_end_matches(['\r', '\n'])
}

fn trim_leading_whitespace(line: &str) -> &str {
    line.trim_start_matches([' ', '\t'])
}

fn is_comment(line: &str) -> bool {
    trim_leading_whitespace(trim_newline(line)).starts_with('#')
}

/// Strips a trailing escape token (and blanks after it): the line continues. An escaped
/// escape token at the end (`\\`) does not continue the line.
fn trim_continuation(line: &str, escape: char) -> (String, bool) {
    let t = line.trim_end_matches([' ', '\t']);
    if let Some(before) = t.strip_suffix(escape) {
        match before.chars().last() {
            None => return (String::new(), false),
            Some(c) if c != escape => return (before.to_owned(), false),
            Some(_) => {}
        }
    }
    (line.to_owned(), true)
}

/// Splits a Dockerfile's text into lines, each without its line ending.
fn split_lines(text: &str) -> Vec<&str> {
    let mut out: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    if text.ends_with('\n') {
        out.pop();
    }
    out
}

/// Parses a Dockerfile.
pub fn parse(text: &str) -> Result<Parsed, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines = split_lines(text);
    let mut d = Directives::new();
    let mut children = Vec::new();
    let mut warnings = Vec::new();
    let mut comments: Vec<String> = Vec::new();
    let mut i = 0;
    let err = |message: String, start: usize, end: usize| ParseError {
        message,
        start_line: start,
        end_line: end,
    };
    while i < lines.len() {
        let raw = lines[i];
        if is_comment(raw) {
            let c = trim_leading_whitespace(raw)[1..].trim().to_owned();
            if c.is_empty() {
                comments.clear();
            } else {
                comments.push(c);
            }
        }
        let line = trim_leading_whitespace(raw);
        d.observe(line).map_err(|m| err(m, i + 1, i + 1))?;
        let line = if is_comment(line) { "" } else { line };
        i += 1;
        let start_line = i;
        let (first, mut ended) = trim_continuation(line, d.escape);
        if ended && first.is_empty() {
            continue;
        }
        let mut buf = first;
        let mut empty_continuation = false;
        while !ended && i < lines.len() {
            let raw = lines[i];
            d.observe(raw).map_err(|m| err(m, i + 1, i + 1))?;
            i += 1;
            if is_comment(raw) {
                continue;
            }
            if trim_leading_whitespace(raw).is_empty() {
                empty_continuation = true;
                continue;
            }
            let (part, end) = trim_continuation(raw, d.escape);
            buf.push_str(&part);
            ended = end;
        }
        if empty_continuation {
            warnings.push(Warning {
                message: format!("Empty continuation line found in: {buf}"),
                line: start_line,
            });
        }
        let mut node = node_from_line(&buf, d.escape, std::mem::take(&mut comments))
            .map_err(|m| err(m, start_line, i))?;
        if can_contain_heredoc(&node) && buf.contains("<<") {
            for mut heredoc in heredocs_from_line(&buf) {
                let mut terminated = false;
                while i < lines.len() {
                    let body = lines[i];
                    i += 1;
                    let candidate = if heredoc.chomp {
                        body.trim_start_matches('\t')
                    } else {
                        body
                    };
                    if candidate == heredoc.name {
                        terminated = true;
                        break;
                    }
                    // `<<-` strips leading tabs from the body too.
                    heredoc.content.push_str(candidate);
                    heredoc.content.push('\n');
                }
                if !terminated {
                    return Err(err(
                        format!("unterminated heredoc {}", heredoc.name),
                        start_line,
                        i,
                    ));
                }
                node.heredocs.push(heredoc);
            }
        }
        node.start_line = start_line;
        node.end_line = i;
        children.push(node);
    }
    let (Some(first), Some(last)) = (children.first(), children.last()) else {
        return Err(err(
            "file with no instructions".into(),
            lines.len().max(1),
            lines.len().max(1),
        ));
    };
    Ok(Parsed {
        start_line: first.start_line,
        end_line: last.end_line,
        children,
        escape: d.escape,
        directives: d.seen,
        warnings,
    })
}

fn can_contain_heredoc(node: &Node) -> bool {
    matches!(
        node.value.to_ascii_lowercase().as_str(),
        "run" | "copy" | "add"
    )
}

/// Heredoc openers among the line's words: `[fd]<<[-]WORD`, with WORD optionally quoted
/// (then the body is not expanded).
fn heredocs_from_line(line: &str) -> Vec<Heredoc> {
    let mut out = Vec::new();
    for word in raw_words(line) {
        let digits = word.bytes().take_while(u8::is_ascii_digit).count();
        let Some(rest) = word[digits..].strip_prefix("<<") else {
            continue;
        };
        let (chomp, rest) = match rest.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, rest),
        };
        if rest.is_empty() || rest.contains('<') {
            continue;
        }
        let quoted = rest.contains(['"', '\'']);
        let name: String = unquote(rest);
        if name.is_empty() {
            continue;
        }
        out.push(Heredoc {
            name,
            content: String::new(),
            expand: !quoted,
            chomp,
            file_descriptor: word[..digits].parse().unwrap_or(0),
        });
    }
    out
}

/// Words split on unquoted blanks, quotes kept.
fn raw_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            (None, '\\') => {
                word.push(c);
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                word.push(c);
            }
            (Some(q), c) if c == q => {
                quote = None;
                word.push(c);
            }
            (Some('"'), '\\') => {
                word.push(c);
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            _ => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// Removes quotes and backslash escapes from a heredoc delimiter.
fn unquote(word: &str) -> String {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None | Some('"'), '\\') => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Splits `KEYWORD [--flags] args` and parses the arguments as the keyword reads them.
fn node_from_line(line: &str, escape: char, comments: Vec<String>) -> Result<Node, String> {
    let trimmed = line.trim_matches(is_blank);
    let (cmd, rest) = match trimmed.find(is_blank) {
        Some(p) => (&trimmed[..p], trimmed[p..].trim_start_matches(is_blank)),
        None => (trimmed, ""),
    };
    let (args, flags) = extract_flags(rest);
    let args = args.trim();
    let (next, json, children) = parse_args(cmd, args, escape)?;
    Ok(Node {
        value: cmd.to_owned(),
        next: next.map(Box::new),
        children: Vec::new(),
        heredocs: Vec::new(),
        json,
        original: line.to_owned(),
        flags,
        start_line: 0,
        end_line: 0,
        prev_comment: comments,
    })
    .map(|mut n| {
        if let Some(child) = children {
            // ONBUILD: the sub-instruction hangs off an argument node.
            n.next = Some(Box::new(Node {
                children: vec![child],
                ..Node::default()
            }));
        }
        n
    })
}

fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\u{b}' | '\u{c}' | '\r')
}

type Args = (Option<Node>, bool, Option<Node>);

fn parse_args(cmd: &str, args: &str, escape: char) -> Result<Args, String> {
    let lower = cmd.to_ascii_lowercase();
    Ok(match lower.as_str() {
        "add" | "copy" | "volume" => match parse_json(args) {
            Json::Array(n) => (n, true, None),
            Json::NotStrings => return Err(NOT_STRINGS.into()),
            Json::No => (whitespace_list(args), false, None),
        },
        "cmd" | "entrypoint" | "run" | "shell" => maybe_json(args)?,
        "arg" => (chain(parse_words(args, escape)), false, None),
        "env" | "label" => (name_val(args, &lower, escape)?, false, None),
        "expose" | "from" => (whitespace_list(args), false, None),
        "healthcheck" => health(args)?,
        "maintainer" | "stopsignal" | "user" | "workdir" => (single(args), false, None),
        "onbuild" => {
            if args.is_empty() {
                (None, false, None)
            } else {
                let child = node_from_line(args, escape, Vec::new())?;
                (None, false, Some(child))
            }
        }
        _ => (Some(Node::default()), false, None),
    })
}

const NOT_STRINGS: &str =
    "dockerfile: when using JSON array syntax, arrays must be comprised of strings only";

enum Json {
    Array(Option<Node>),
    NotStrings,
    No,
}

fn parse_json(args: &str) -> Json {
    let t = args.trim_start();
    if !t.starts_with('[') {
        return Json::No;
    }
    match serde_json::from_str::<Vec<serde_json::Value>>(t) {
        Ok(values) => {
            let mut strings = Vec::new();
            for v in values {
                match v {
                    serde_json::Value::String(s) => strings.push(s),
                    _ => return Json::NotStrings,
                }
            }
            Json::Array(chain(strings))
        }
        Err(_) => Json::No,
    }
}

fn maybe_json(args: &str) -> Result<Args, String> {
    if args.is_empty() {
        return Ok((None, false, None));
    }
    match parse_json(args) {
        Json::Array(n) => Ok((n, true, None)),
        Json::NotStrings => Err(NOT_STRINGS.into()),
        Json::No => Ok((single(args), false, None)),
    }
}

fn single(args: &str) -> Option<Node> {
    (!args.is_empty()).then(|| Node {
        value: args.to_owned(),
        ..Node::default()
    })
}

fn chain(values: Vec<String>) -> Option<Node> {
    values.into_iter().rev().fold(None, |next, value| {
        Some(Node {
            value,
            next: next.map(Box::new),
            ..Node::default()
        })
    })
}

fn whitespace_list(args: &str) -> Option<Node> {
    if args.is_empty() {
        return None;
    }
    chain(
        args.split(is_blank)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

fn health(args: &str) -> Result<Args, String> {
    let sep = args.find(char::is_whitespace).unwrap_or(args.len());
    if sep == 0 {
        return Ok((None, false, None));
    }
    let (typ, rest) = args.split_at(sep);
    let (cmd, json, _) = maybe_json(rest.trim_start())?;
    Ok((
        Some(Node {
            value: typ.to_owned(),
            next: cmd.map(Box::new),
            ..Node::default()
        }),
        json,
        None,
    ))
}

/// `KEY value` (the old form, one pair) or `KEY=value …`: triples of key, value and separator.
fn name_val(args: &str, keyword: &str, escape: char) -> Result<Option<Node>, String> {
    let words = parse_words(args, escape);
    let Some(first) = words.first() else {
        return Ok(None);
    };
    let mut flat = Vec::new();
    if !first.contains('=') {
        let Some(p) = args.find(is_blank) else {
            return Err(format!(
                "{} must have two arguments",
                keyword.to_ascii_uppercase()
            ));
        };
        let (k, v) = (&args[..p], args[p..].trim_start_matches(is_blank));
        flat.extend([k.to_owned(), v.to_owned(), String::new()]);
        return Ok(chain(flat));
    }
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(format!(
                "Syntax error - can't find = in {w:?}. Must be of the form: name=value"
            ));
        };
        flat.extend([k.to_owned(), v.to_owned(), "=".to_owned()]);
    }
    Ok(chain(flat))
}

/// Splits on unquoted whitespace, keeping quotes and escapes as written (BuildKit's
/// `parseWords`).
fn parse_words(rest: &str, escape: char) -> Vec<String> {
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut blank_ok = false;
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        if !in_word && quote.is_none() {
            if ch.is_whitespace() {
                i += 1;
                continue;
            }
            in_word = true;
        }
        if let Some(q) = quote {
            if ch == q {
                quote = None;
            }
            if ch == escape && q != '\'' {
                if i + 1 == chars.len() {
                    quote = None;
                    i += 1;
                    continue;
                }
                word.push(ch);
                i += 1;
                word.push(chars[i]);
                i += 1;
                continue;
            }
            word.push(ch);
            i += 1;
            continue;
        }
        if ch.is_whitespace() {
            in_word = false;
            if blank_ok || !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            blank_ok = false;
            i += 1;
            continue;
        }
        if ch == '\'' || ch == '"' {
            quote = Some(ch);
            blank_ok = true;
        }
        if ch == escape {
            if i + 1 == chars.len() {
                i += 1;
                continue;
            }
            word.push(ch);
            i += 1;
            word.push(chars[i]);
            i += 1;
            continue;
        }
        word.push(ch);
        i += 1;
    }
    if (in_word || quote.is_some()) && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

/// Splits leading `--flag[=value]` words off; `--` alone ends the flags.
fn extract_flags(line: &str) -> (&str, Vec<String>) {
    let b = line.as_bytes();
    let mut words = Vec::new();
    let mut pos = 0;
    loop {
        while pos < b.len() && (b[pos] as char).is_ascii_whitespace() {
            pos += 1;
        }
        if pos >= b.len() {
            return ("", words);
        }
        if !(b[pos] == b'-' && b.get(pos + 1) == Some(&b'-')) {
            return (&line[pos..], words);
        }
        let mut word = Vec::new();
        let mut blank_ok = false;
        let mut quote: Option<u8> = None;
        while pos < b.len() {
            let c = b[pos];
            match quote {
                None if (c as char).is_ascii_whitespace() => break,
                None if c == b'\'' || c == b'"' => {
                    quote = Some(c);
                    blank_ok = true;
                }
                Some(q) if c == q => quote = None,
                _ if c == b'\\' => {
                    if pos + 1 == b.len() {
                        quote = None;
                    } else {
                        pos += 1;
                        word.push(b[pos]);
                    }
                }
                _ => word.push(c),
            }
            pos += 1;
        }
        let word = String::from_utf8_lossy(&word).into_owned();
        if word == "--" {
            let rest = if pos < b.len() { &line[pos..] } else { "" };
            return (rest, words);
        }
        if blank_ok || !word.is_empty() {
            words.push(word);
        }
    }
}

impl Node {
    /// BuildKit's s-expression dump: `(keyword ["--flag"] "arg" …)`.
    pub fn dump(&self) -> String {
        let mut s = self.value.to_lowercase();
        if !self.flags.is_empty() {
            s.push_str(" [");
            let quoted: Vec<String> = self.flags.iter().map(|f| go_quote(f)).collect();
            s.push_str(&quoted.join(" "));
            s.push(']');
        }
        for c in &self.children {
            let _ = writeln!(s, "({})", c.dump());
        }
        let mut n = self.next.as_deref();
        while let Some(node) = n {
            s.push(' ');
            if node.children.is_empty() {
                s.push_str(&go_quote(&node.value));
            } else {
                s.push_str(&node.dump());
            }
            n = node.next.as_deref();
        }
        s.trim().to_owned()
    }

    /// The arguments as a list of strings.
    pub fn args(&self) -> Vec<&str> {
        let mut out = Vec::new();
        let mut n = self.next.as_deref();
        while let Some(node) = n {
            out.push(node.value.as_str());
            n = node.next.as_deref();
        }
        out
    }
}

/// Go's `strconv.Quote`: printable characters as they are, the rest escaped.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_printable(c) => out.push(c),
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// An approximation of Go's `unicode.IsPrint` good for Dockerfiles: not a control, format or
/// non-ASCII space character.
fn is_printable(c: char) -> bool {
    if c.is_control() || (c.is_whitespace() && c != ' ') {
        return false;
    }
    !matches!(c, '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::print_stderr)]

    use std::path::PathBuf;

    use super::*;

    fn peer_dir() -> Option<PathBuf> {
        crate::dockerfile::peer::corpus("buildkit/parser")
    }

    #[test]
    fn buildkit_corpus_dumps_match() {
        let Some(dir) = peer_dir() else { return };
        let mut cases: Vec<_> = std::fs::read_dir(dir.join("testfiles"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        cases.sort();
        assert_eq!(cases.len(), 33, "the corpus has 33 cases");
        let mut failures = Vec::new();
        for case in &cases {
            let text = std::fs::read_to_string(case.join("Dockerfile")).unwrap();
            let want = std::fs::read_to_string(case.join("result")).unwrap();
            match parse(&text) {
                Ok(p) => {
                    let got: String = p
                        .children
                        .iter()
                        .map(|c| format!("({})\n", c.dump()))
                        .collect();
                    if got != want {
                        failures.push(format!("{}:\n got:\n{got}\n want:\n{want}", case.display()));
                    }
                }
                Err(e) => failures.push(format!("{}: {e}", case.display())),
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} differ:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn buildkit_negative_cases_are_refused() {
        let Some(dir) = peer_dir() else { return };
        let mut n = 0;
        for case in std::fs::read_dir(dir.join("testfiles-negative")).unwrap() {
            let case = case.unwrap().path();
            let text = std::fs::read_to_string(case.join("Dockerfile")).unwrap();
            assert!(parse(&text).is_err(), "{} parsed", case.display());
            n += 1;
        }
        assert_eq!(n, 4);
    }

    #[test]
    fn buildkit_line_numbers() {
        let Some(dir) = peer_dir() else { return };
        let text = std::fs::read_to_string(dir.join("testfile-line/Dockerfile")).unwrap();
        let p = parse(&text).unwrap();
        assert_eq!((p.start_line, p.end_line), (5, 31));
        let got: Vec<(usize, usize)> = p
            .children
            .iter()
            .map(|c| (c.start_line, c.end_line))
            .collect();
        assert_eq!(got, [(5, 5), (11, 12), (17, 31)]);
    }

    #[test]
    fn heredocs_are_collected() {
        let text = "FROM busybox\nRUN <<EOF\necho hi\nEOF\nCOPY <<-\"A\" /a <<B /b\n\tone $x\n\tA\ntwo\nB\nRUN 3<<X cat <&3\nx\nX\n";
        let p = parse(text).unwrap();
        assert_eq!(p.children.len(), 4);
        let run = &p.children[1];
        assert_eq!(
            run.heredocs,
            [Heredoc {
                name: "EOF".into(),
                content: "echo hi\n".into(),
                expand: true,
                chomp: false,
                file_descriptor: 0
            }]
        );
        assert_eq!((run.start_line, run.end_line), (2, 4));
        let copy = &p.children[2];
        assert_eq!(copy.heredocs.len(), 2);
        assert_eq!(copy.heredocs[0].name, "A");
        assert!(copy.heredocs[0].chomp && !copy.heredocs[0].expand);
        assert_eq!(
            copy.heredocs[0].content, "one $x\n",
            "<<- strips leading tabs"
        );
        assert_eq!(copy.heredocs[1].content, "two\n");
        assert_eq!(p.children[3].heredocs[0].file_descriptor, 3);
        let e = parse("FROM a\nRUN <<EOF\nno end\n").unwrap_err();
        assert!(e.to_string().contains("unterminated heredoc EOF"), "{e}");
        assert_eq!(e.start_line, 2);
    }

    #[test]
    fn directives_only_at_the_top() {
        let p = parse(
            "# syntax=docker/dockerfile:1\n# check=skip=all\nFROM a\n# escape=`\nRUN a \\\n b\n",
        )
        .unwrap();
        assert_eq!(p.escape, '\\');
        assert_eq!(p.directives.len(), 2);
        assert_eq!(p.children[1].dump(), "run \"a  b\"");
        let e = parse("# escape=x\nFROM a\n").unwrap_err();
        assert!(e.message.contains("invalid escape token"), "{e}");
        let e = parse("# syntax=a\n# syntax=b\nFROM a\n").unwrap_err();
        assert_eq!(e.start_line, 2);
    }

    #[test]
    fn go_quoting() {
        assert_eq!(go_quote("a\"b\\c\n\u{0}♥"), "\"a\\\"b\\\\c\\n\\x00♥\"");
        assert_eq!(go_quote("\u{a0}"), "\"\\u00a0\"");
    }
}
