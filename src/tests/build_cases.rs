//! Data-driven build cases: every `fixtures/build/<case>/` with an `expect` file is built and
//! checked by the one checker here (as BuildKit's and rust-analyzer's data-driven tests are).
//! A case is its `Dockerfile`, a context in `ctx/` (empty when there is none) and `expect`,
//! one directive per line (`#` starts a comment):
//!
//! | directive                 | meaning                                                        |
//! |---------------------------|----------------------------------------------------------------|
//! | `build [flags…]`          | builds the case (`-t case-<name>:<n>` and `-o` are added, and `-f Dockerfile` unless the flags name one; `{case}` is the case's directory); the lines after it check this build |
//! | `fails`                   | this build must fail (otherwise it must succeed)              |
//! | `stderr <text>`           | stderr holds `<text>`                                          |
//! | `stderr-not <text>`       | stderr does not hold `<text>`                                  |
//! | `stderr-once <text>`      | stderr holds `<text>` exactly once                             |
//! | `file <path> <text>`      | the image has the file `<path>` holding `<text>`               |
//! | `mode <path> <octal>`     | its permission bits                                            |
//! | `absent <path>`           | the image has nothing at `<path>`                              |
//! | `config <Key> <json>`     | the image config's `<Key>` is `<json>`                         |
//! | `config-has <Key> <json>` | `<Key>` (a list) holds `<json>`, or (a map) has that key        |
//! | `stores-nothing`          | the store holds no image                                       |
//!
//! In `<text>`, `\n` is a newline and `\\` a backslash.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::support::*;

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some('n')) => {
                out.push('\n');
                chars.next();
            }
            ('\\', Some('\\')) => {
                out.push('\\');
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

/// One build of a case and what it gave.
struct Outcome {
    run: Run,
    files: PathBuf,
    tag: String,
}

/// Runs one case; returns what failed, each naming the `expect` line.
fn check_case(dir: &Path) -> Vec<String> {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let expect = std::fs::read_to_string(dir.join("expect")).unwrap();
    let w = Wharf::new();
    let empty = tempfile::tempdir().unwrap();
    let ctx = if dir.join("ctx").is_dir() {
        dir.join("ctx")
    } else {
        empty.path().to_owned()
    };
    let out_dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut current: Option<Outcome> = None;
    let mut builds = 0;
    let mut must_fail = false;
    let mut checked_outcome = true;
    for (n, line) in expect.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("{name}/expect:{}: {line}", n + 1);
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let mut fail = |why: String| failures.push(format!("{at}: {why}"));
        if word == "build" {
            if let Some(o) = &current
                && !checked_outcome
            {
                failures.extend(outcome_mismatch(&name, o, must_fail));
            }
            builds += 1;
            let tag = format!("case-{name}:{builds}");
            let files = out_dir.path().join(builds.to_string());
            let flags: Vec<String> = rest
                .split_whitespace()
                .map(|f| f.replace("{case}", &dir.to_string_lossy()))
                .collect();
            let mut args = vec![
                "build".to_owned(),
                "-t".to_owned(),
                tag.clone(),
                "-o".to_owned(),
                files.to_string_lossy().into_owned(),
            ];
            if !flags.iter().any(|f| f == "-f" || f == "--file") {
                args.push("-f".to_owned());
                args.push(dir.join("Dockerfile").to_string_lossy().into_owned());
            }
            args.extend(flags);
            args.push(ctx.to_string_lossy().into_owned());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            current = Some(Outcome {
                run: w.run(&args),
                files,
                tag,
            });
            must_fail = false;
            checked_outcome = false;
            continue;
        }
        let Some(o) = &current else {
            fail("a check before the first `build`".into());
            continue;
        };
        if word == "fails" {
            must_fail = true;
            continue;
        }
        // Every other check needs the outcome settled first.
        if !checked_outcome {
            checked_outcome = true;
            let wrong = outcome_mismatch(&name, o, must_fail);
            if !wrong.is_empty() {
                failures.extend(wrong);
                continue;
            }
        }
        let text = unescape(rest);
        let (path, value) = rest.split_once(' ').unwrap_or((rest, ""));
        let in_image = o.files.join(path.trim_start_matches('/'));
        match word {
            "stderr" if !o.run.stderr.contains(&text) => fail(format!("stderr:\n{}", o.run.stderr)),
            "stderr-not" if o.run.stderr.contains(&text) => {
                fail(format!("stderr:\n{}", o.run.stderr))
            }
            "stderr-once" if o.run.stderr.matches(&text).count() != 1 => {
                fail(format!("stderr:\n{}", o.run.stderr))
            }
            "stderr" | "stderr-not" | "stderr-once" => {}
            "file" => match std::fs::read_to_string(&in_image) {
                Ok(got) if got == unescape(value) => {}
                got => fail(format!("found {got:?}")),
            },
            "mode" => {
                let want = u32::from_str_radix(value, 8).unwrap();
                match std::fs::symlink_metadata(&in_image) {
                    Ok(m) if m.permissions().mode() & 0o7777 == want => {}
                    got => fail(format!(
                        "found {:?}",
                        got.map(|m| format!("{:o}", m.permissions().mode() & 0o7777))
                    )),
                }
            }
            "absent" => {
                if std::fs::symlink_metadata(&in_image).is_ok() {
                    fail("it is there".into());
                }
            }
            "config" | "config-has" => {
                let want: serde_json::Value =
                    serde_json::from_str(value).unwrap_or_else(|e| panic!("{at}: not JSON: {e}"));
                let got = w.inspect(&o.tag)["Config"][path].clone();
                let ok = match word {
                    "config" => got == want,
                    _ => match (&got, &want) {
                        (serde_json::Value::Array(a), _) => a.contains(&want),
                        (serde_json::Value::Object(m), serde_json::Value::String(k)) => {
                            m.contains_key(k)
                        }
                        _ => false,
                    },
                };
                if !ok {
                    fail(format!("found {got}"));
                }
            }
            "stores-nothing" => {
                let listed = w.run(&["images", "-q"]).ok().stdout;
                if !listed.is_empty() {
                    fail(format!("the store holds {listed}"));
                }
            }
            other => fail(format!("unknown directive {other:?}")),
        }
    }
    if let Some(o) = &current
        && !checked_outcome
    {
        failures.extend(outcome_mismatch(&name, o, must_fail));
    }
    if builds == 0 {
        failures.push(format!("{name}/expect: no `build` line"));
    }
    failures
}

fn outcome_mismatch(name: &str, o: &Outcome, must_fail: bool) -> Vec<String> {
    match (must_fail, o.run.status == 0) {
        (true, true) => vec![format!("{name}: the build should have failed")],
        (false, false) => vec![format!("{name}: the build failed:\n{}", o.run.stderr)],
        _ => Vec::new(),
    }
}

#[test]
fn build_cases_in_fixtures() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/build");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("expect").is_file())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 5,
        "cases under {}: {cases:?}",
        root.display()
    );
    let failures: Vec<String> = cases.iter().flat_map(|c| check_case(c)).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
