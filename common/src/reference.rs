//! Image references with docker's normalisation.
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] path
//! domain     := host [ ":" port ]            (a first component with "." or ":", or "localhost")
//! path       := component ( "/" component )*
//! component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! ```
//! `busybox` normalises to `docker.io/library/busybox:latest`, `index.docker.io` to `docker.io`.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// The registry host every unqualified name refers to.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API actually lives.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The host the registry API of `domain` is served from (Docker Hub's is not `docker.io`).
pub fn api_host(domain: &str) -> &str {
    if domain == DOCKER_HUB {
        DOCKER_HUB_API
    } else {
        domain
    }
}

/// The tag a reference gets when it names none.
pub const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;

/// Why a string is not an image reference. Every variant names the input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    /// Nothing to parse.
    #[error("invalid reference format: empty reference")]
    Empty,
    /// The name part breaks the grammar.
    #[error("invalid reference format {input:?}: {reason}")]
    Invalid {
        /// The reference as given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Upper-case letters in the repository path.
    #[error("invalid reference format {0:?}: repository name must be lowercase")]
    Uppercase(String),
    /// Longer than 255 characters.
    #[error("invalid reference format {0:?}: repository name must not be more than 255 characters")]
    TooLong(String),
    /// The tag breaks the grammar.
    #[error("invalid reference format {input:?}: invalid tag {tag:?}")]
    Tag {
        /// The reference as given.
        input: String,
        /// The tag as given.
        tag: String,
    },
    /// The digest after `@` is not a digest.
    #[error("invalid reference format {input:?}")]
    Digest {
        /// The reference as given.
        input: String,
        /// Why the digest is invalid.
        source: DigestError,
    },
}

/// A repository name: the registry domain and the path inside it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName {
    domain: String,
    path: String,
}

impl RepoName {
    /// The registry host (and port), e.g. `docker.io` or `localhost:5000`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path inside the registry, e.g. `library/busybox`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The name the way docker prints it: `busybox`, `user/app`, `localhost:5000/app`.
    pub fn familiar(&self) -> String {
        if self.domain == DOCKER_HUB {
            self.path
                .strip_prefix("library/")
                .filter(|rest| !rest.contains('/'))
                .unwrap_or(&self.path)
                .to_owned()
        } else {
            format!("{}/{}", self.domain, self.path)
        }
    }

    /// Builds a name from a domain and a path, validating both.
    pub fn new(domain: &str, path: &str) -> Result<RepoName, ReferenceError> {
        let input = format!("{domain}/{path}");
        check_domain(domain, &input)?;
        check_path(path, &input)?;
        if input.len() > MAX_NAME_LEN {
            return Err(ReferenceError::TooLong(input));
        }
        Ok(RepoName {
            domain: domain.to_owned(),
            path: path.to_owned(),
        })
    }

    /// Whether `path` is a valid repository path (the distribution spec's `<name>`).
    pub fn is_valid_path(path: &str) -> bool {
        path.len() <= MAX_NAME_LEN && check_path(path, path).is_ok()
    }

    /// The same repository with `tag`.
    pub fn with_tag(&self, tag: Tag) -> Reference {
        Reference {
            repo: self.clone(),
            tag: Some(tag),
            digest: None,
        }
    }

    /// The same repository at `digest`.
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            repo: self.clone(),
            tag: None,
            digest: Some(digest),
        }
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)
    }
}

/// A validated tag.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// The tag text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `s` matches the tag grammar.
    pub fn is_valid(s: &str) -> bool {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b[1..]
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
    }

    /// `latest`.
    pub fn latest() -> Tag {
        Tag(DEFAULT_TAG.to_owned())
    }
}

impl FromStr for Tag {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if Tag::is_valid(s) {
            Ok(Tag(s.to_owned()))
        } else {
            Err(ReferenceError::Tag {
                input: s.to_owned(),
                tag: s.to_owned(),
            })
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A normalised image reference: a repository and a tag, a digest, or both.
///
/// Parsing fills in `latest` when neither a tag nor a digest is given.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    repo: RepoName,
    tag: Option<Tag>,
    digest: Option<Digest>,
}

impl Reference {
    /// The repository.
    pub fn repo(&self) -> &RepoName {
        &self.repo
    }

    /// The registry domain.
    pub fn domain(&self) -> &str {
        &self.repo.domain
    }

    /// The tag, if the reference has one.
    pub fn tag(&self) -> Option<&Tag> {
        self.tag.as_ref()
    }

    /// The digest, if the reference has one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What to ask a registry for: the digest when there is one, else the tag.
    pub fn selector(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_string(),
            (None, None) => DEFAULT_TAG.to_owned(),
        }
    }

    /// This reference without its digest (keeping or defaulting the tag).
    pub fn tagged(&self) -> Reference {
        Reference {
            repo: self.repo.clone(),
            tag: Some(self.tag.clone().unwrap_or_else(Tag::latest)),
            digest: None,
        }
    }

    /// Parses without filling in a default tag.
    pub fn parse_exact(input: &str) -> Result<Reference, ReferenceError> {
        parse(input)
    }

    /// The reference the way docker prints it: `busybox:latest`.
    pub fn familiar(&self) -> String {
        let mut s = self.repo.familiar();
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t.as_str());
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d.as_str());
        }
        s
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let mut r = parse(input)?;
        if r.tag.is_none() && r.digest.is_none() {
            r.tag = Some(Tag::latest());
        }
        Ok(r)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repo)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn invalid(input: &str, reason: &'static str) -> ReferenceError {
    ReferenceError::Invalid {
        input: input.to_owned(),
        reason,
    }
}

fn parse(input: &str) -> Result<Reference, ReferenceError> {
    if input.is_empty() {
        return Err(ReferenceError::Empty);
    }
    let (rest, digest) = match input.split_once('@') {
        Some((rest, d)) => {
            let digest = d
                .parse::<Digest>()
                .map_err(|source| ReferenceError::Digest {
                    input: input.to_owned(),
                    source,
                })?;
            (rest, Some(digest))
        }
        None => (input, None),
    };
    // A tag is what follows the last ':' that comes after the last '/'.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => {
            let tag = &rest[last_slash + i + 1..];
            if !Tag::is_valid(tag) {
                return Err(ReferenceError::Tag {
                    input: input.to_owned(),
                    tag: tag.to_owned(),
                });
            }
            (&rest[..last_slash + i], Some(Tag(tag.to_owned())))
        }
        None => (rest, None),
    };
    if name.is_empty() {
        return Err(invalid(input, "missing repository name"));
    }
    let (domain, path) = split_domain(name);
    check_domain(&domain, input)?;
    check_path(&path, input)?;
    if domain.len() + 1 + path.len() > MAX_NAME_LEN {
        return Err(ReferenceError::TooLong(input.to_owned()));
    }
    Ok(Reference {
        repo: RepoName { domain, path },
        tag,
        digest,
    })
}

/// Docker's rule: the first component is a domain when it contains a dot or a colon, or is
/// `localhost`, or has an upper-case letter (so it cannot be a path).
fn split_domain(name: &str) -> (String, String) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            let domain = if first == "index.docker.io" {
                DOCKER_HUB
            } else {
                first
            };
            let path = if domain == DOCKER_HUB && !rest.contains('/') {
                format!("library/{rest}")
            } else {
                rest.to_owned()
            };
            (domain.to_owned(), path)
        }
        Some(_) => (DOCKER_HUB.to_owned(), name.to_owned()),
        None => (DOCKER_HUB.to_owned(), format!("library/{name}")),
    }
}

fn check_domain(domain: &str, input: &str) -> Result<(), ReferenceError> {
    let (host, port) = if let Some(v6) = domain.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return Err(invalid(input, "invalid IPv6 address in domain"));
        };
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return Err(invalid(input, "invalid IPv6 address in domain"));
        }
        match after {
            "" => return Ok(()),
            p => (
                "",
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| invalid(input, "invalid domain"))?,
                ),
            ),
        }
    } else {
        match domain.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (domain, None),
        }
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return Err(invalid(input, "invalid port in domain"));
    }
    if host.is_empty() && port.is_some() && domain.starts_with('[') {
        return Ok(());
    }
    let ok = !host.is_empty()
        && host.split('.').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(input, "invalid domain"))
    }
}

fn check_path(path: &str, input: &str) -> Result<(), ReferenceError> {
    if path.is_empty() {
        return Err(invalid(input, "missing repository name"));
    }
    for component in path.split('/') {
        if component.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase(input.to_owned()));
        }
        if !valid_component(component) {
            return Err(invalid(input, "invalid repository name"));
        }
    }
    Ok(())
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: ".", "_", "__" or a run of "-", always between alphanumerics.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !is_alnum(b[i]) {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

#[cfg(test)]
mod tests;
