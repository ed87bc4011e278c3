//! Finding the peer corpus (BuildKit's parser and shell test data, `../shared/peer` in CI) for
//! the tests that run it. A fresh clone has no corpus: those tests then skip, saying so in one
//! line each, and fail only under `CI=true`, where the corpus must be there.

use std::ffi::OsStr;
use std::path::PathBuf;

/// Where `relative` is in the corpus at `dir` (`$WHARF_PEER_DIR`): `Ok(None)` when it is not
/// there and `ci` is off, an error naming what is missing when `ci` is on.
pub(crate) fn locate(
    dir: Option<&OsStr>,
    ci: bool,
    relative: &str,
) -> Result<Option<PathBuf>, String> {
    let found = dir.map(|d| PathBuf::from(d).join(relative));
    let why = match &found {
        Some(p) if p.exists() => return Ok(found),
        Some(p) => format!("{} does not exist", p.display()),
        None => "WHARF_PEER_DIR is not set".to_owned(),
    };
    if ci {
        return Err(format!(
            "the peer corpus {relative} is required under CI=true, but {why} (.ci/run sets WHARF_PEER_DIR)"
        ));
    }
    Ok(None)
}

/// The corpus path of `relative` for this test run, or `None` after printing why the test
/// skips. Panics under `CI=true` when the corpus is missing.
pub(crate) fn corpus(relative: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("WHARF_PEER_DIR");
    match locate(dir.as_deref(), wharf_testkit::ci(), relative) {
        Ok(Some(p)) => Some(p),
        Ok(None) => {
            wharf_testkit::skip(&format!(
                "the peer corpus {relative} is not here (WHARF_PEER_DIR={}), so its cases did not run",
                dir.as_deref()
                    .map_or("unset".into(), |d| d.to_string_lossy())
            ));
            None
        }
        Err(e) => panic!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_missing_corpus_skips_outside_ci_and_fails_in_it() {
        let t = tempfile::tempdir().unwrap();
        let missing = t.path().join("no-such-peer");
        for dir in [None, Some(missing.as_os_str())] {
            assert_eq!(locate(dir, false, "buildkit/parser").unwrap(), None);
            let e = locate(dir, true, "buildkit/parser").unwrap_err();
            assert!(e.contains("required under CI=true"), "{e}");
        }
        std::fs::create_dir_all(t.path().join("buildkit/parser")).unwrap();
        assert_eq!(
            locate(Some(t.path().as_os_str()), true, "buildkit/parser").unwrap(),
            Some(t.path().join("buildkit/parser"))
        );
    }
}
