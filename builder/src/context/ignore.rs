//! `.dockerignore` files and their patterns, with Docker's rules: patterns are cleaned paths
//! relative to the context root; `*` and `?` stay within one path segment, `**` spans any
//! number of them; `[…]` classes and `\` escapes work as in Go's `filepath.Match`; a pattern
//! that matches a directory matches everything under it; `!pattern` re-includes; the last
//! matching pattern decides.

/// One pattern of a `.dockerignore`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: Vec<char>,
    exclusion: bool,
    original: String,
}

impl Pattern {
    /// Parses one line's pattern (already trimmed, not a comment); `!` marks an exception.
    pub fn new(line: &str) -> Option<Pattern> {
        let line = line.trim();
        let (exclusion, body) = match line.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, line),
        };
        if body.is_empty() {
            return None;
        }
        let cleaned = clean(body);
        let cleaned = match cleaned.strip_prefix('/') {
            Some(rest) if !rest.is_empty() => rest.to_owned(),
            _ => cleaned,
        };
        Some(Pattern {
            text: cleaned.chars().collect(),
            exclusion,
            original: line.to_owned(),
        })
    }

    /// The line it came from.
    pub fn as_str(&self) -> &str {
        &self.original
    }

    /// Whether it is an exception (`!pattern`).
    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    /// Whether the pattern matches `path` itself (slash-separated, relative).
    pub fn matches(&self, path: &str) -> bool {
        let s: Vec<char> = path.chars().collect();
        glob(&self.text, &s)
    }
}

/// The patterns of one `.dockerignore`, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Patterns {
    patterns: Vec<Pattern>,
}

impl Patterns {
    /// Reads a `.dockerignore`'s text: one pattern a line, `#` lines are comments.
    pub fn parse(text: &str) -> Patterns {
        Patterns {
            patterns: text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(Pattern::new)
                .collect(),
        }
    }

    /// From pattern strings (as `COPY --exclude` gives them).
    pub fn from_list<S: AsRef<str>>(list: &[S]) -> Patterns {
        Patterns {
            patterns: list
                .iter()
                .filter_map(|p| Pattern::new(p.as_ref()))
                .collect(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether any pattern is an exception: then an excluded directory must still be walked.
    pub fn has_exclusions(&self) -> bool {
        self.patterns.iter().any(|p| p.exclusion)
    }

    /// Whether `path` (slash-separated, relative to the context) is excluded: the last pattern
    /// that matches it or one of its parent directories decides.
    pub fn excludes(&self, path: &str) -> bool {
        let path = clean(path);
        let parents: Vec<&str> = match path.rfind('/') {
            Some(i) => {
                let dir = &path[..i];
                dir.match_indices('/')
                    .map(|(j, _)| &dir[..j])
                    .chain(std::iter::once(dir))
                    .collect()
            }
            None => Vec::new(),
        };
        let mut excluded = false;
        for p in &self.patterns {
            if p.matches(&path) || parents.iter().any(|d| p.matches(d)) {
                excluded = !p.exclusion;
            }
        }
        excluded
    }
}

/// Lexically cleans a slash path: no `.` segments, `..` resolved where possible, no doubled
/// or trailing slashes (Go's `filepath.Clean`).
pub fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// Docker's pattern semantics over characters.
fn glob(p: &[char], s: &[char]) -> bool {
    let Some(&c) = p.first() else {
        return s.is_empty();
    };
    match c {
        '*' if p.get(1) == Some(&'*') => {
            let mut rest = &p[2..];
            if rest.first() == Some(&'/') {
                rest = &rest[1..];
            }
            if rest.is_empty() {
                return true;
            }
            // `(.*/)?`: nothing, or any prefix that ends with a slash.
            if glob(rest, s) {
                return true;
            }
            (0..s.len()).any(|i| s[i] == '/' && glob(rest, &s[i + 1..]))
        }
        '*' => {
            let rest = &p[1..];
            let mut i = 0;
            loop {
                if glob(rest, &s[i..]) {
                    return true;
                }
                if i == s.len() || s[i] == '/' {
                    return false;
                }
                i += 1;
            }
        }
        '?' => s.first().is_some_and(|&x| x != '/') && glob(&p[1..], &s[1..]),
        '[' => match class(&p[1..], s.first().copied()) {
            Some((true, used)) => glob(&p[1 + used..], &s[1..]),
            _ => false,
        },
        '\\' => match p.get(1) {
            Some(&e) => s.first() == Some(&e) && glob(&p[2..], &s[1..]),
            None => s.first() == Some(&'\\') && glob(&p[1..], &s[1..]),
        },
        c => s.first() == Some(&c) && glob(&p[1..], &s[1..]),
    }
}

/// Matches `ch` against a class whose body starts at `p` (after `[`); returns whether it
/// matched and how many pattern characters the class used (through `]`).
fn class(p: &[char], ch: Option<char>) -> Option<(bool, usize)> {
    let ch = ch?;
    let mut i = 0;
    let negate = p.first() == Some(&'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let c = *p.get(i)?;
        if c == ']' && !first {
            i += 1;
            break;
        }
        first = false;
        let lo = if c == '\\' {
            i += 1;
            *p.get(i)?
        } else {
            c
        };
        i += 1;
        let hi = if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|&n| n != ']') {
            i += 1;
            let h = if p[i] == '\\' {
                i += 1;
                *p.get(i)?
            } else {
                p[i]
            };
            i += 1;
            h
        } else {
            lo
        };
        if lo <= ch && ch <= hi {
            matched = true;
        }
    }
    Some((matched != negate && ch != '/', i))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn docker_pattern_rules() {
        for (pattern, path, want) in [
            ("*.md", "README.md", true),
            ("*.md", "docs/README.md", false),
            ("**/*.md", "docs/a/README.md", true),
            ("**/*.md", "README.md", true),
            ("docs", "docs/a/b.txt", true),
            ("docs/**", "docs/a/b.txt", true),
            ("**", "anything/at/all", true),
            ("a/**/b", "a/b", true),
            ("a/**/b", "a/x/y/b", true),
            ("a/*/b", "a/x/y/b", false),
            ("?.txt", "a.txt", true),
            ("?.txt", "ab.txt", false),
            ("[a-c].txt", "b.txt", true),
            ("[^a-c].txt", "d.txt", true),
            ("[^a-c].txt", "a.txt", false),
            ("\\*.txt", "*.txt", true),
            ("\\*.txt", "a.txt", false),
            ("./build/../dist", "dist/x", true),
            ("/abs", "abs", true),
            ("node_modules", "src/node_modules", false),
        ] {
            let p = Patterns::parse(pattern);
            assert_eq!(p.excludes(path), want, "{pattern} vs {path}");
        }
    }

    #[test]
    fn last_match_wins_and_exceptions() {
        let p = Patterns::parse("# comment\n*.md\n!README.md\n\n  docs/  \n!docs/keep.txt\n");
        assert!(p.excludes("CHANGES.md"));
        assert!(!p.excludes("README.md"));
        assert!(p.excludes("docs/x.txt"));
        assert!(!p.excludes("docs/keep.txt"));
        assert!(p.has_exclusions());
        assert!(!p.excludes("src/main.rs"));
    }

    #[test]
    fn cleaning() {
        assert_eq!(clean("a/./b//c/"), "a/b/c");
        assert_eq!(clean("../x"), "../x");
        assert_eq!(clean("a/../../x"), "../x");
        assert_eq!(clean("/../x"), "/x");
        assert_eq!(clean(""), ".");
    }
}
