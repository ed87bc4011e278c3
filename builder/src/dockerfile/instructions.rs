//! Typed instructions: parser [`Node`]s → [`Instruction`]s grouped in [`Stage`]s, with every
//! flag checked, before anything runs. Variables are not expanded here; the build expands them
//! with the ARG and ENV values in scope at each step.
//!
//! Errors name the file, line and column and show the line ([`DockerfileError`]); lint warnings
//! follow BuildKit's rule names ([`Lint`]).

use std::fmt;
use std::time::Duration;

use super::flags::{Chmod, Fault, Flags, MountSpec, Typed, mount_flag};
use super::parser::{self, Heredoc, Node, ParseError};

/// Where an instruction is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Location {
    /// First line, 1-based.
    pub line: usize,
    /// Last line.
    pub end_line: usize,
}

/// A Dockerfile that cannot be built, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct DockerfileError {
    /// The file, as the user named it.
    pub file: String,
    /// The line, 1-based.
    pub line: usize,
    /// The column, 1-based (1 when the whole line is at fault).
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// The line's text, shown under the message.
    pub source_line: String,
}

impl fmt::Display for DockerfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )?;
        if !self.source_line.is_empty() {
            let n = self.line.to_string();
            write!(f, "\n {n} | {}", self.source_line)?;
            let pad = " ".repeat(self.column.saturating_sub(1));
            write!(f, "\n {} | {pad}^", " ".repeat(n.len()))?;
        }
        Ok(())
    }
}

/// A lint warning, named as BuildKit names its rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lint {
    /// The rule, e.g. `MaintainerDeprecated`.
    pub rule: &'static str,
    /// What to do about it.
    pub message: String,
    /// Where.
    pub line: usize,
}

/// A command in exec form (JSON array) or shell form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandLine {
    /// `["executable", "arg"]`, run as is.
    Exec(Vec<String>),
    /// `command string`, run through the SHELL.
    Shell(String),
}

/// `HEALTHCHECK`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`.
    None,
    /// `HEALTHCHECK [flags] CMD …`.
    Cmd {
        /// The test command.
        command: CommandLine,
        /// `--interval`.
        interval: Option<Duration>,
        /// `--timeout`.
        timeout: Option<Duration>,
        /// `--start-period`.
        start_period: Option<Duration>,
        /// `--start-interval`.
        start_interval: Option<Duration>,
        /// `--retries`.
        retries: Option<u32>,
    },
}

/// `COPY` and `ADD`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopySpec {
    /// Sources, as written.
    pub sources: Vec<String>,
    /// Destination, as written.
    pub dest: String,
    /// `--from` (COPY only).
    pub from: Option<String>,
    /// `--chown`.
    pub chown: Option<String>,
    /// `--chmod`.
    pub chmod: Option<Typed<Chmod>>,
    /// `--link`.
    pub link: bool,
    /// `--parents`.
    pub parents: bool,
    /// `--exclude`, each pattern.
    pub exclude: Vec<String>,
    /// `--checksum` (ADD only).
    pub checksum: Option<String>,
    /// `--keep-git-dir` (ADD only).
    pub keep_git_dir: bool,
    /// Heredoc sources (`COPY <<EOF /dst`).
    pub heredocs: Vec<Heredoc>,
}

/// `RUN`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSpec {
    /// What to run.
    pub command: CommandLine,
    /// `--mount`, each.
    pub mounts: Vec<Typed<MountSpec>>,
    /// `--network`.
    pub network: Option<String>,
    /// `--security`.
    pub security: Option<String>,
    /// Heredocs after the line.
    pub heredocs: Vec<Heredoc>,
}

/// One Dockerfile instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Instruction {
    /// `ADD`.
    Add(CopySpec),
    /// `ARG name[=default] …`.
    Arg(Vec<(String, Option<String>)>),
    /// `CMD`.
    Cmd(CommandLine),
    /// `COPY`.
    Copy(CopySpec),
    /// `ENTRYPOINT`.
    Entrypoint(CommandLine),
    /// `ENV key=value …`.
    Env(Vec<(String, String)>),
    /// `EXPOSE port[/proto] …`.
    Expose(Vec<String>),
    /// `HEALTHCHECK`.
    Healthcheck(Healthcheck),
    /// `LABEL key=value …`.
    Label(Vec<(String, String)>),
    /// `MAINTAINER name`.
    Maintainer(String),
    /// `ONBUILD instruction`, kept as text and checked now.
    Onbuild(String),
    /// `RUN`.
    Run(RunSpec),
    /// `SHELL ["executable", "arg"]`.
    Shell(Vec<String>),
    /// `STOPSIGNAL signal`.
    StopSignal(String),
    /// `USER user[:group]`.
    User(String),
    /// `VOLUME path …`.
    Volume(Vec<String>),
    /// `WORKDIR path`.
    Workdir(String),
}

/// An instruction with where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The instruction.
    pub instruction: Instruction,
    /// The line as written (continuations joined), for history and progress.
    pub original: String,
    /// Where.
    pub location: Location,
}

/// A build stage: `FROM base [AS name]` and what follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage {
    /// `AS name`, lower-cased.
    pub name: Option<String>,
    /// The base, as written (`scratch`, an image, or an earlier stage's name).
    pub base: String,
    /// `--platform`, as written.
    pub platform: Option<String>,
    /// The FROM line's location.
    pub location: Location,
    /// The FROM line as written.
    pub original: String,
    /// The steps after FROM.
    pub steps: Vec<Step>,
}

/// A whole Dockerfile, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dockerfile {
    /// `ARG`s before the first FROM.
    pub meta_args: Vec<(String, Option<String>)>,
    /// The stages, in order.
    pub stages: Vec<Stage>,
    /// Lint warnings.
    pub lints: Vec<Lint>,
    /// The escape token.
    pub escape: char,
}

/// Parses and checks a Dockerfile. `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Dockerfile, DockerfileError> {
    let lines: Vec<&str> = text.lines().collect();
    let error = |line: usize, column: usize, message: String| DockerfileError {
        file: file.to_owned(),
        line,
        column: column + 1,
        message,
        source_line: lines
            .get(line.saturating_sub(1))
            .map(|l| (*l).to_owned())
            .unwrap_or_default(),
    };
    let parsed = parser::parse(text).map_err(|e: ParseError| error(e.start_line, 0, e.message))?;
    let mut df = Dockerfile {
        meta_args: Vec::new(),
        stages: Vec::new(),
        lints: Vec::new(),
        escape: parsed.escape,
    };
    for w in &parsed.warnings {
        df.lints.push(Lint {
            rule: "NoEmptyContinuation",
            message: w.message.clone(),
            line: w.line,
        });
    }
    for node in &parsed.children {
        let location = Location {
            line: node.start_line,
            end_line: node.end_line,
        };
        // Columns in errors count from the instruction's first line as written.
        let indent = lines
            .get(node.start_line.saturating_sub(1))
            .map_or(0, |l| l.len() - l.trim_start().len());
        let at = |f: Fault| error(node.start_line, indent + f.column, f.message);
        let keyword = node.value.to_ascii_lowercase();
        if keyword == "from" {
            df.stages
                .push(from(node, location, &mut df.lints).map_err(at)?);
            continue;
        }
        let instruction = instruction(node, &mut df.lints).map_err(at)?;
        match df.stages.last_mut() {
            Some(stage) => stage.steps.push(Step {
                instruction,
                original: node.original.trim().to_owned(),
                location,
            }),
            None => match instruction {
                Instruction::Arg(args) => df.meta_args.extend(args),
                _ => {
                    return Err(at(Fault::new(
                        0,
                        format!(
                            "{} before the first FROM: only ARG may come before FROM",
                            node.value.to_ascii_uppercase()
                        ),
                    )));
                }
            },
        }
    }
    if df.stages.is_empty() {
        return Err(error(
            parsed.end_line,
            0,
            "no FROM instruction: a Dockerfile starts its first stage with FROM".into(),
        ));
    }
    check_stage_names(&df, &error)?;
    Ok(df)
}

fn check_stage_names(
    df: &Dockerfile,
    error: &dyn Fn(usize, usize, String) -> DockerfileError,
) -> Result<(), DockerfileError> {
    for (i, s) in df.stages.iter().enumerate() {
        let Some(name) = &s.name else { continue };
        if let Some(earlier) = df.stages[..i]
            .iter()
            .find(|e| e.name.as_ref() == Some(name))
        {
            return Err(error(
                s.location.line,
                0,
                format!(
                    "duplicate stage name {name:?}: line {} names a stage so already",
                    earlier.location.line
                ),
            ));
        }
    }
    Ok(())
}

fn from(node: &Node, location: Location, lints: &mut Vec<Lint>) -> Result<Stage, Fault> {
    let flags = Flags::parse(node, &["platform"])?;
    let args = node.args();
    let (base, name) = match args.as_slice() {
        [base] => (base.to_string(), None),
        [base, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
            let from_upper = node.value == node.value.to_uppercase();
            let from_lower = node.value == node.value.to_lowercase();
            if (from_upper && *as_kw != "AS") || (from_lower && *as_kw != "as") {
                lints.push(Lint {
                    rule: "FromAsCasing",
                    message: format!(
                        "'{as_kw}' and '{}' keywords' casing do not match",
                        node.value
                    ),
                    line: location.line,
                });
            }
            if !valid_stage_name(name) {
                return Err(Fault::new(
                    node.original.find(name).unwrap_or(0),
                    format!(
                        "invalid name for build stage: {name:?}, name can't start with a number or contain symbols"
                    ),
                ));
            }
            if name.to_lowercase() != *name {
                lints.push(Lint {
                    rule: "StageNameCasing",
                    message: format!("Stage name '{name}' should be lowercase"),
                    line: location.line,
                });
            }
            (base.to_string(), Some(name.to_lowercase()))
        }
        [] => {
            return Err(Fault::new(
                0,
                "FROM requires an image: FROM <image> [AS <name>]".into(),
            ));
        }
        _ => {
            return Err(Fault::new(
                0,
                "FROM takes an image and optionally AS <name>: FROM <image> [AS <name>]".into(),
            ));
        }
    };
    Ok(Stage {
        name,
        base,
        platform: flags.string("platform")?,
        location,
        original: node.original.trim().to_owned(),
        steps: Vec::new(),
    })
}

fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn command_line(node: &Node) -> CommandLine {
    if node.json {
        CommandLine::Exec(node.args().into_iter().map(str::to_owned).collect())
    } else {
        CommandLine::Shell(
            node.args()
                .first()
                .map(|s| (*s).to_owned())
                .unwrap_or_default(),
        )
    }
}

fn pairs(node: &Node) -> Vec<(String, String)> {
    node.args()
        .chunks(3)
        .map(|c| {
            (
                c[0].to_owned(),
                c.get(1).map(|v| (*v).to_owned()).unwrap_or_default(),
            )
        })
        .collect()
}

fn one_arg(node: &Node, what: &str) -> Result<String, Fault> {
    match node.args().as_slice() {
        [one] => Ok((*one).to_owned()),
        _ => Err(Fault::new(
            0,
            format!(
                "{} requires exactly one argument: {what}",
                node.value.to_ascii_uppercase()
            ),
        )),
    }
}

/// One instruction's node, checked: the keyword picks its parser.
fn instruction(node: &Node, lints: &mut Vec<Lint>) -> Result<Instruction, Fault> {
    let keyword = node.value.to_ascii_lowercase();
    let parse: fn(&Node, &mut Vec<Lint>) -> Result<Instruction, Fault> = match keyword.as_str() {
        "add" => add,
        "arg" => arg,
        "cmd" => cmd,
        "copy" => copy,
        "entrypoint" => entrypoint,
        "env" => env,
        "expose" => expose,
        "healthcheck" => healthcheck,
        "label" => label,
        "maintainer" => maintainer,
        "onbuild" => onbuild,
        "run" => run,
        "shell" => shell,
        "stopsignal" => stopsignal,
        "user" => user,
        "volume" => volume,
        "workdir" => workdir,
        _ => {
            return Err(Fault::new(
                0,
                format!("unknown instruction: {}", node.value),
            ));
        }
    };
    parse(node, lints)
}

fn no_flags(node: &Node) -> Result<(), Fault> {
    Flags::parse(node, &[]).map(|_| ())
}

fn add(node: &Node, _: &mut Vec<Lint>) -> Result<Instruction, Fault> {
    let flags = Flags::parse(
        node,
        &[
            "chown",
            "chmod",
            "link",
            "exclude",
            "checksum",
            "keep-git-dir",
            "parents",
        ],
    )?;
    let spec = CopySpec {
        checksum: flags.string("checksum")?,
        keep_git_dir: flags.bool("keep-git-dir")?,
        ..copy_spec(node, &flags)?
    };
    Ok(Instruction::Add(spec))
}

fn copy(node: &Node, _: &mut Vec<Lint>) -> Result<Instruction, Fault> {
    let flags = Flags::parse(
        node,
        &["from", "chown", "chmod", "link", "exclude", "parents"],
    )?;
    let spec = CopySpec {
        from: flags.string("from")?,
        ..copy_spec(node, &flags)?
    };
    Ok(Instruction::Copy(spec))
}

/// What COPY and ADD share: sources, destination, heredocs and the common flags.
fn copy_spec(node: &Node, flags: &Flags<'_>) -> Result<CopySpec, Fault> {
    let mut args: Vec<String> = node.args().into_iter().map(str::to_owned).collect();
    let min = if node.heredocs.is_empty() { 2 } else { 1 };
    if args.len() < min {
        return Err(Fault::new(
            0,
            format!(
                "{} requires at least two arguments, but only one was provided. Destination could not be determined",
                node.value.to_ascii_uppercase()
            ),
        ));
    }
    let dest = args.pop().unwrap_or_default();
    Ok(CopySpec {
        sources: args,
        dest,
        chown: flags.string("chown")?,
        chmod: flags.typed("chmod", Chmod::parse)?,
        link: flags.bool("link")?,
        parents: flags.bool("parents")?,
        exclude: flags.all("exclude")?,
        heredocs: node.heredocs.clone(),
        ..CopySpec::default()
    })
}

fn arg(node: &Node, _: &mut Vec<Lint>) -> Result<Instruction, Fault> {
    no_flags(node)?;
    let args = node.args();
    if args.is_empty() {
        return Err(Fault::new(
            0,
            "ARG requires at least one argument: ARG <name>[=<default>]".into(),
        ));
    }
    Ok(Instruction::Arg(
        args.into_iter()
            .map(|a| match a.split_once('=') {
                Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                None => (a.to_owned(), None),
            })
            .collect(),
    ))
}

fn cmd(node: &Node, lints: &mut Vec<Lint>) -> Result<Instruction, Fault> {
    Ok(Instruction::Cmd(command_form(node, lints)?))
}

fn entrypoint(node: &Node, lints: &mut Vec<Lint>) -> Result<Instruction, Fault> {
    Ok(Instruction::Entrypoint(command_form(node, lints)?))
}

/// CMD's and ENTRYPOINT's command, with BuildKit's lint for the shell form.
fn command_form(node: &Node, lints: &mut Vec<Lint>) -> Result<CommandLine, Fault> {
    no_flags(node)?;
    if !node.json && !node.args().is_empty() {
        lints.push(Lint {
            rule: "JSONArgsRecommended",
            message: format!(
                "JSON arguments recommended for {} to prevent unintended behavior related to OS signals",
                node.value.to_ascii_uppercase()
            ),
            line: node.start_line,
        });
    }
    Ok(command_line(node))
}

fn env(node: &Node, lints: &mut Vec<Lint>) -> Result<Instruction, Fault> {
    Ok(Instruction::Env(key_values(node, lints)?))
}

fn label(node: &Node, lints: &mut Vec<Lint>) -> Result<Instruction, Fault> {
    Ok(Instruction::Label(key_values(node, lints)?))
}

/// ENV's and LABEL's pairs, with BuildKit's lint for the legacy `KEY value` form.
fn key_values(node: &Node, lints: &mut Vec<Lint>) -> Result<Vec<(String, String)>, Fault> {
    no_flags(node)?;
    let word = node.value.to_ascii_uppercase();
    let p = pairs(node);
    if p.is_empty() {
        return Err(Fault::new(
            0,
            format!("{word} requires at least one argument: {word} <key>=<value>"),
        ));
    }
    if node.args().get(2).is_some_and(|s| s.is_empty()) {
        lints.push(Lint {
            rule: "LegacyKeyValueFormat",
            message: format!(
                "\"{word} key=value\" should be used instead of legacy \"{word} key value\" format"
            ),
            line: node.start_line,
        });
    }
    Ok(p)
}

fn expose(node: &Node, _: &mut Vec<Lint>) -> Result<Instruction, Fault> {
    no_flags(node)?;
    let ports: Vec<String> = node.args().into_iter().map(str::to_owned).collect();
    if ports.is_empty() {
        return Err(Fault::new(
            0,
            "EXPOSE requires at least one argument: EXPOSE <port>[/<protocol>]".into(),
        ));
    }
    Ok(Instruction::Expose(ports))
}

fn healthcheck(node: &Node, _: &mut Vec<Lint>) -> Result<Instruction, Fault> {
    let flags = Flags::parse(
        node,
        &[
            "interval",
            "timeout",
            "start-period",
            "start-interval",
            "retries",
        ],
    )?;
    let args = node.args();
    let check = match args.first().map(|t| t.to_ascii_uppercase()).as_deref() {
        Some("NONE") => {
            if args.len() > 1 || !node.flags.is_empty() {
                return Err(Fault::new(
                    0,
                    "HEALTHCHECK NONE takes no other arguments".into(),
                ));
            }
            Healthcheck::None
        }
        Some("CMD") => {
            if args.len() < 2 {
                return Err(Fault::new(0, "HEALTHCHECK CMD requires a command".into()));
            }
            let command = match node.next.as_deref().and_then(|t| t.next.as_deref()) {
                Some(_) if node.json => {
                    CommandLine::Exec(args[1..].iter().map(|s| (*s).to_owned()).collect())
                }
                _ => CommandLine::Shell(args[1].to_owned()),
            };
            let retries = match flags.string("retries")? {
                None => None,
                Some(r) => Some(r.parse::<u32>().map_err(|_| {
                    Fault::new(
                        flags.col("retries"),
                        format!("--retries={r}: expected a whole number"),
                    )
                })?),
            };
            Healthcheck::Cmd {
                command,
                interval: flags.duration("interval")?,
                timeout: flags.duration("timeout")?,
                start_period: flags.duration("start-period")?,
                start_interval: flags.duration("start-interval")?,
                retries,
            }
        }
        Some(other) => {
            return Err(Fault::new(
                0,
                format!("unknown type {other:?} for HEALTHCHECK (try CMD or NONE)"),
            ));
        }
        None => {
            return Err(Fault::new(
                0,
                "HEALTHCHECK requires CMD <command> or NONE".into(),
            ));
        }
    };
    Ok(Instruction::Healthcheck(check))
}

fn maintainer(node: &Node, lints: &mut Vec<Lint>) -> Result<Instruction, Fault> {
    no_flags(node)?;
    lints.push(Lint {
        rule: "MaintainerDeprecated",
        message: "Maintainer instruction is deprecated in favor of using label".into(),
        line: node.start_line,
    });
    Ok(Instruction::Maintainer(one_arg(node, "MAINTAINER <name>")?))
}

fn onbuild(node: &Node, _: &mut Vec<Lint>) -> Result<Instruction, Fault> {
    no_flags(node)?;
    let Some(child) = node.next.as_deref().and_then(|n| n.children.first()) else {
        return Err(Fault::new(
            0,
            "ONBUILD requires an instruction: ONBUILD <INSTRUCTION>".into(),
        ));
    };
    match child.value.to_ascii_lowercase().as_str() {
        "onbuild" => {
            return Err(Fault::new(
                0,
                "chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into(),
            ));
        }
        "from" | "maintainer" => {
            return Err(Fault::new(
                0,
                format!(
                    "{} isn't allowed as an ONBUILD trigger",
                    child.value.to_ascii_uppercase()
                ),
            ));
        }
        _ => {}
    }
    // The trigger is checked now and kept as text: it runs in the images built on this one.
    instruction(child, &mut Vec::new())
        .map_err(|f| Fault::new(0, format!("ONBUILD: {}", f.message)))?;
    let text = node.original.trim();
    let trigger = text[text.find(char::is_whitespace).unwrap_or(text.len())..].trim();
    Ok(Instruction::Onbuild(trigger.to_owned()))
}

fn run(node: &Node, _: &mut Vec<Lint>) -> Result<Instruction, Fault> {
    let flags = Flags::parse(node, &["mount", "network", "security", "device"])?;
    if node.args().is_empty() && node.heredocs.is_empty() {
        return Err(Fault::new(
            0,
            "RUN requires a command: RUN <command> or RUN [\"executable\", …]".into(),
        ));
    }
    let network = flags.string("network")?;
    if let Some(n) = &network
        && !matches!(n.as_str(), "default" | "none" | "host")
    {
        return Err(Fault::new(
            flags.col("network"),
            format!("--network={n}: expected default, none or host"),
        ));
    }
    let security = flags.string("security")?;
    if let Some(s) = &security
        && !matches!(s.as_str(), "sandbox" | "insecure")
    {
        return Err(Fault::new(
            flags.col("security"),
            format!("--security={s}: expected sandbox or insecure"),
        ));
    }
    let mounts = flags
        .all("mount")?
        .iter()
        .map(|m| mount_flag(m).map_err(|e| Fault::new(flags.col("mount"), e)))
        .collect::<Result<_, _>>()?;
    Ok(Instruction::Run(RunSpec {
        command: command_line(node),
        mounts,
        network,
        security,
        heredocs: node.heredocs.clone(),
    }))
}

fn shell(node: &Node, _: &mut Vec<Lint>) -> Result<Instruction, Fault> {
    no_flags(node)?;
    if !node.json {
        return Err(Fault::new(
            0,
            "SHELL requires the arguments to be in JSON form: SHELL [\"executable\", \"parameters\"]"
                .into(),
        ));
    }
    let args: Vec<String> = node.args().into_iter().map(str::to_owned).collect();
    if args.is_empty() {
        return Err(Fault::new(0, "SHELL requires at least one argument".into()));
    }
    Ok(Instruction::Shell(args))
}

fn stopsignal(node: &Node, _: &mut Vec<Lint>) -> Result<Instruction, Fault> {
    no_flags(node)?;
    Ok(Instruction::StopSignal(one_arg(
        node,
        "STOPSIGNAL <signal>",
    )?))
}

fn user(node: &Node, _: &mut Vec<Lint>) -> Result<Instruction, Fault> {
    no_flags(node)?;
    Ok(Instruction::User(one_arg(node, "USER <user>[:<group>]")?))
}

fn volume(node: &Node, _: &mut Vec<Lint>) -> Result<Instruction, Fault> {
    no_flags(node)?;
    let paths: Vec<String> = node.args().into_iter().map(str::to_owned).collect();
    if paths.is_empty() || paths.iter().any(String::is_empty) {
        return Err(Fault::new(
            0,
            "VOLUME requires at least one non-empty path".into(),
        ));
    }
    Ok(Instruction::Volume(paths))
}

fn workdir(node: &Node, _: &mut Vec<Lint>) -> Result<Instruction, Fault> {
    no_flags(node)?;
    Ok(Instruction::Workdir(one_arg(node, "WORKDIR <path>")?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn stages_steps_and_flags() {
        let df = parse(
            "ARG BASE=busybox\nFROM --platform=$BUILDPLATFORM ${BASE} AS Build\nCOPY --chown=1:1 --chmod=644 --exclude=*.md --exclude=x a b /dst/\nRUN --mount=type=cache,target=/c --network=none make\nFROM scratch\nCOPY --from=build --link /out /\nCMD [\"/out\"]\nHEALTHCHECK --interval=5s --retries=3 CMD [\"/out\", \"-h\"]\nONBUILD RUN echo hi\n",
            "Dockerfile",
        )
        .unwrap();
        assert_eq!(
            df.meta_args,
            [("BASE".to_owned(), Some("busybox".to_owned()))]
        );
        assert_eq!(df.stages.len(), 2);
        let build = &df.stages[0];
        assert_eq!(
            (
                build.name.as_deref(),
                build.base.as_str(),
                build.platform.as_deref()
            ),
            (Some("build"), "${BASE}", Some("$BUILDPLATFORM"))
        );
        assert!(df.lints.iter().any(|l| l.rule == "StageNameCasing"));
        let Instruction::Copy(c) = &build.steps[0].instruction else {
            panic!()
        };
        assert_eq!(
            (c.sources.as_slice(), c.dest.as_str()),
            (&["a".to_owned(), "b".to_owned()][..], "/dst/")
        );
        assert_eq!(c.exclude, ["*.md", "x"]);
        assert_eq!(
            (c.chown.as_deref(), c.chmod.as_ref()),
            (Some("1:1"), Some(&Typed::Parsed(Chmod::Octal(0o644))))
        );
        let Instruction::Run(r) = &build.steps[1].instruction else {
            panic!()
        };
        let Typed::Parsed(m) = &r.mounts[0] else {
            panic!("{:?}", r.mounts)
        };
        assert_eq!(
            (m.kind.as_str(), m.target.as_deref()),
            ("cache", Some("/c"))
        );
        assert_eq!(r.command, CommandLine::Shell("make".into()));
        let last = &df.stages[1];
        let Instruction::Copy(c) = &last.steps[0].instruction else {
            panic!()
        };
        assert!(c.link && c.from.as_deref() == Some("build"));
        assert_eq!(
            last.steps[1].instruction,
            Instruction::Cmd(CommandLine::Exec(vec!["/out".into()]))
        );
        let Instruction::Healthcheck(Healthcheck::Cmd {
            command,
            interval,
            retries,
            ..
        }) = &last.steps[2].instruction
        else {
            panic!()
        };
        assert_eq!(
            command,
            &CommandLine::Exec(vec!["/out".into(), "-h".into()])
        );
        assert_eq!(
            (*interval, *retries),
            (Some(Duration::from_secs(5)), Some(3))
        );
        assert_eq!(
            last.steps[3].instruction,
            Instruction::Onbuild("RUN echo hi".into())
        );
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let e = parse("FROM a\n  COPY --form=x a /b\n", "ctx/Dockerfile").unwrap_err();
        assert_eq!((e.line, e.column), (2, 8));
        let shown = e.to_string();
        assert!(
            shown.starts_with("ctx/Dockerfile:2:8: unknown flag: --form (for COPY)"),
            "{shown}"
        );
        assert!(
            shown.contains(" 2 |   COPY --form=x a /b\n   |        ^"),
            "{shown}"
        );
        for (text, want) in [
            ("RUN x\n", "only ARG may come before FROM"),
            ("FROM a\nFOO bar\n", "unknown instruction: FOO"),
            ("FROM a AS 1x\n", "invalid name for build stage"),
            ("FROM a AS x\nFROM b AS x\n", "duplicate stage name"),
            ("FROM a\nCOPY onlyone\n", "requires at least two arguments"),
            ("FROM a\nSHELL sh -c\n", "JSON form"),
            ("FROM a\nONBUILD ONBUILD RUN x\n", "chaining ONBUILD"),
            ("FROM a\nRUN --network=bridge x\n", "--network=bridge"),
            ("FROM a\nHEALTHCHECK --retries=x CMD y\n", "--retries=x"),
            // Flag values are checked with the Dockerfile, before anything runs.
            (
                "FROM a\nHEALTHCHECK --interval=5 CMD y\n",
                "invalid duration \"5\"",
            ),
            (
                "FROM a\nHEALTHCHECK --timeout=10us CMD y\n",
                "less than 1ms",
            ),
            ("FROM a\nCOPY --chmod=u+q a /b\n", "invalid chmod \"u+q\""),
            ("FROM a\nRUN --mount=type=cache x\n", "a target is required"),
            (
                "FROM a\nRUN --mount=type=cache,bogus=$X x\n",
                "unknown option \"bogus\"",
            ),
            (
                "FROM a\nCMD [\"a\", 1]\n",
                "arrays must be comprised of strings",
            ),
            ("ARG x\n", "no FROM instruction"),
        ] {
            let e = parse(text, "Dockerfile").unwrap_err();
            assert!(e.message.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn lints_where_buildkit_warns() {
        let df = parse(
            "FROM a as B\nMAINTAINER me\nCMD run me\nENV k v\n",
            "Dockerfile",
        )
        .unwrap();
        let rules: Vec<&str> = df.lints.iter().map(|l| l.rule).collect();
        for r in [
            "MaintainerDeprecated",
            "JSONArgsRecommended",
            "LegacyKeyValueFormat",
            "StageNameCasing",
            "FromAsCasing",
        ] {
            assert!(rules.contains(&r), "{r} missing from {rules:?}");
        }
    }
}
