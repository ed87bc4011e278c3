//! `import --change`: Dockerfile instructions applied to an image's config. Each change is
//! parsed by the Dockerfile parser and applied through the build's own config rules
//! (`solve::Rules`), so `EXPOSE 80-82`, `ENV B=$A` or a quoted `LABEL` mean what they mean in a
//! Dockerfile. As docker allows: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, USER, VOLUME,
//! WORKDIR and STOPSIGNAL; WORKDIR sets the config only (an import has no files to change).

use serde_json::{Map, Value, json};
use wharf_common::error::Chain;

use crate::dockerfile::instructions::{self, Instruction};
use crate::dockerfile::shell::Lexer;
use crate::solve::{Rules, StageState};

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

/// Applies `changes`, in order, to `config` (the `config` object of an image config), as one
/// Dockerfile stage would: a CMD given before an ENTRYPOINT is kept, as docker keeps it.
pub fn apply<S: AsRef<str>>(
    config: &mut Map<String, Value>,
    changes: &[S],
) -> Result<(), ChangeError> {
    let mut stage = StageState::for_config(std::mem::take(config));
    let result = changes
        .iter()
        .try_for_each(|c| apply_one(&mut stage, c.as_ref()));
    // The config comes back as far as the changes got; callers stop at the error.
    *config = std::mem::take(stage.config());
    result
}

fn apply_one(stage: &mut StageState, change: &str) -> Result<(), ChangeError> {
    let invalid = |reason: String| ChangeError::Invalid {
        change: change.to_owned(),
        reason,
    };
    if change.lines().count() > 1 {
        return Err(invalid("a --change is one instruction, on one line".into()));
    }
    let parsed = instructions::parse(&format!("FROM scratch\n{change}\n"), "--change")
        .map_err(|e| invalid(e.message))?;
    let step = match parsed.stages.first().map(|s| s.steps.as_slice()) {
        Some([step]) => step,
        _ => return Err(invalid("needs an instruction".into())),
    };
    let word = change
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    let lexer = Lexer::new(parsed.escape);
    let rules = Rules {
        lexer: &lexer,
        build_args: &[],
        meta: &[],
        source_date_epoch: None,
    };
    match &step.instruction {
        Instruction::Cmd(_)
        | Instruction::Entrypoint(_)
        | Instruction::Env(_)
        | Instruction::Expose(_)
        | Instruction::Label(_)
        | Instruction::Onbuild(_)
        | Instruction::User(_)
        | Instruction::Volume(_)
        | Instruction::StopSignal(_) => rules
            .apply(stage, &step.instruction, &step.original)
            .map(|_| ())
            .map_err(|e| invalid(Chain(&e).to_string())),
        Instruction::Workdir(w) => {
            let w = rules
                .expand(stage, w)
                .map_err(|e| invalid(Chain(&e).to_string()))?;
            // As a build records it: an absolute path as written, a relative one joined on.
            let recorded = if w.starts_with('/') {
                w
            } else {
                let current = stage.workdir();
                crate::solve::clean_abs(&format!("{current}/{w}"))
            };
            stage.config().insert("WorkingDir".into(), json!(recorded));
            Ok(())
        }
        _ => Err(ChangeError::Unsupported {
            change: change.to_owned(),
            instruction: word,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(changes: &[&str]) -> Value {
        let mut m = Map::new();
        apply(&mut m, changes).unwrap();
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
            json!(["PATH=/bin:/usr/bin", "A=z", "LEGACY=some value"])
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
    fn changes_mean_what_they_mean_in_a_dockerfile() {
        let v = run(&[
            "ENV A=one",
            "ENV B=${A}-two",
            "EXPOSE 80-82/tcp",
            "WORKDIR /srv",
            "WORKDIR app",
        ]);
        assert_eq!(v["Env"], json!(["A=one", "B=one-two"]));
        assert_eq!(
            v["ExposedPorts"],
            json!({"80/tcp": {}, "81/tcp": {}, "82/tcp": {}})
        );
        assert_eq!(v["WorkingDir"], "/srv/app");
    }

    #[test]
    fn rejects_with_the_change_named() {
        let mut m = Map::new();
        for c in [
            "RUN true",
            "COPY a b",
            "EXPOSE http",
            "LABEL x",
            "STOPSIGNAL SIGNOPE",
            "FROM busybox",
            "ENV A=1\nRUN true",
        ] {
            let e = apply(&mut m, &[c])
                .err()
                .unwrap_or_else(|| panic!("{c:?} was accepted"))
                .to_string();
            assert!(e.contains(&format!("{c:?}")), "{c}: {e}");
        }
        let e = apply(&mut m, &["RUN true"]).unwrap_err().to_string();
        assert!(e.contains("not supported by --change"), "{e}");
        let e = apply(&mut m, &["EXPOSE http"]).unwrap_err().to_string();
        assert!(e.contains("invalid port"), "{e}");
    }
}
