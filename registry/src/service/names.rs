//! The names a request carries into the service, checked once at the edge: a repository's
//! path and an upload session's id. The service takes these types, never a bare `&str`, so a
//! name it handles has always passed the grammar.

use std::fmt;

use wharf_common::reference::RepoName;

/// A repository name as the distribution spec's grammar allows it (`a/b-c/d_e`, at most 255
/// characters).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Repository(String);

/// A repository name that breaks the grammar.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid repository name {name:?}: lowercase components [a-z0-9] joined by . _ __ - or /, at most 255 characters"
)]
pub struct NameError {
    /// The name as sent.
    pub name: String,
}

impl Repository {
    /// Checks `name` against the grammar.
    pub fn parse(name: &str) -> Result<Repository, NameError> {
        if RepoName::is_valid_path(name) {
            Ok(Repository(name.to_owned()))
        } else {
            Err(NameError {
                name: name.to_owned(),
            })
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An upload session's id: a random UUID (`8-4-4-4-12` lowercase hex digits), which is also
/// the name of its file under `uploads/`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UploadId(String);

impl UploadId {
    /// A new random id.
    pub fn new() -> UploadId {
        let h = hex::encode(rand::random::<[u8; 16]>());
        UploadId(format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        ))
    }

    /// `text` as an id, if it has an id's form (anything else names no session).
    pub fn parse(text: &str) -> Option<UploadId> {
        let groups: Vec<&str> = text.split('-').collect();
        let well_formed = groups.len() == 5
            && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| {
                g.len() == n
                    && g.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            });
        well_formed.then(|| UploadId(text.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for UploadId {
    fn default() -> UploadId {
        UploadId::new()
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids_are_checked_at_the_edge() {
        assert_eq!(
            Repository::parse("a/b-c/d_e").unwrap().as_str(),
            "a/b-c/d_e"
        );
        for bad in ["", "A", "a//b", "../x", "a/", &"a".repeat(256)] {
            assert!(Repository::parse(bad).is_err(), "{bad:?}");
        }
        let id = UploadId::new();
        assert_eq!(UploadId::parse(id.as_str()), Some(id.clone()));
        assert_ne!(UploadId::new(), id);
        for bad in [
            "",
            "..",
            "00000000-0000-0000-0000-00000000000",
            "00000000-0000-0000-0000-0000000000000",
            "0000000G-0000-0000-0000-000000000000",
            "00000000-0000-0000-0000-00000000000A",
            "mono-00000000-0000-0000-0000-000000000000",
        ] {
            assert!(UploadId::parse(bad).is_none(), "{bad:?}");
        }
        assert!(UploadId::parse("00000000-0000-0000-0000-000000000000").is_some());
    }
}
