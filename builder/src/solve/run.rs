//! RUN: the command in the sandbox on the stage's root (an overlay of its snapshots under a
//! fresh upper directory); the upper directory becomes the layer and the new snapshot.
//!
//! `--mount` types: `cache` (a directory kept between builds under the store, never in a
//! layer), `bind` (from the context or another stage, read-only unless `rw`, and then the
//! writes are discarded), `tmpfs`, `secret` (from `wharf build --secret`; in no layer, no
//! cache key and no history). /etc/hosts, /etc/hostname and /etc/resolv.conf are provided and
//! left out of the layer, as are the mount points the sandbox had to create.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use wharf_common::digest::Digest;

use super::BuildEvent;
use super::cache::CacheKey;
use super::copy;
use super::error::StepError;
use super::solver::Solver;
use super::stage::{Layer, StageState, clean_abs};
use super::step::StepOutcome;
use crate::context::ContextError;
use crate::dockerfile::flags::MountSpec;
use crate::dockerfile::instructions::{CommandLine, RunSpec};
use crate::error::{IoContext, IoError};
use crate::sandbox::{self, Mount, Network, Root, Spec};

/// The hostname RUN sees.
const HOSTNAME: &str = "buildkitsandbox";

/// A heredoc RUN runs as a file under /dev/pipes: (name, content).
type PipeFile = (String, Vec<u8>);

/// The command line, and the files heredocs become.
fn command_line(s: &mut StageState, r: &RunSpec) -> Result<(Vec<String>, Vec<PipeFile>), String> {
    match &r.command {
        CommandLine::Exec(argv) => {
            if !r.heredocs.is_empty() {
                return Err("heredocs need the shell form of RUN".into());
            }
            if argv.is_empty() {
                return Err("RUN needs a command".into());
            }
            Ok((argv.clone(), Vec::new()))
        }
        CommandLine::Shell(cmd) => {
            let mut shell = s.shell();
            let single = r.heredocs.len() == 1
                && cmd
                    .trim()
                    .trim_start_matches("<<")
                    .trim_start_matches('-')
                    .trim_matches(['"', '\''])
                    == r.heredocs[0].name;
            if single {
                // As BuildKit: the body is a file under /dev/pipes, run through the shell
                // (so a #! line picks the interpreter).
                let h = &r.heredocs[0];
                let body = if h.chomp {
                    h.content
                        .lines()
                        .map(|l| format!("{}\n", l.trim_start_matches('\t')))
                        .collect()
                } else {
                    h.content.clone()
                };
                shell.push(format!("/dev/pipes/{}", h.name));
                return Ok((shell, vec![(h.name.clone(), body.into_bytes())]));
            }
            let mut script = cmd.clone();
            for h in &r.heredocs {
                script.push('\n');
                script.push_str(&h.content);
                script.push_str(&h.name);
            }
            shell.push(script);
            Ok((shell, Vec::new()))
        }
    }
}

/// The environment RUN gets: the image's, with the ARGs in scope that ENV does not set.
fn run_env(s: &mut StageState) -> Vec<String> {
    let mut env: Vec<String> = s
        .config()
        .get("Env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let set: Vec<String> = env
        .iter()
        .filter_map(|e| e.split_once('=').map(|(k, _)| k.to_owned()))
        .collect();
    let mut seen = Vec::new();
    for (k, v) in s.args.iter().rev() {
        if !set.contains(k) && !seen.contains(k) {
            seen.push(k.clone());
            env.push(format!("{k}={v}"));
        }
    }
    env
}

/// BuildKit's history line for RUN: `|N A=1 B=2 argv…`.
fn history_text(s: &mut StageState, argv: &[String]) -> String {
    let env = s.expansion_env();
    let mut args: Vec<(String, String)> = Vec::new();
    for (k, v) in &s.args {
        let v = env
            .iter()
            .rev()
            .find(|(ek, _)| ek == k)
            .map_or_else(|| v.clone(), |(_, ev)| ev.clone());
        match args.iter_mut().find(|(ak, _)| ak == k) {
            Some(slot) => slot.1 = v,
            None => args.push((k.clone(), v)),
        }
    }
    let mut parts = Vec::new();
    if !args.is_empty() {
        parts.push(format!("|{}", args.len()));
        parts.extend(args.iter().map(|(k, v)| format!("{k}={v}")));
    }
    parts.extend(argv.iter().cloned());
    parts.join(" ")
}

/// Runs a RUN step; returns whether it came from the cache.
pub(super) fn run(
    run: &Solver,
    s: &mut StageState,
    r: &RunSpec,
    done: &BTreeMap<usize, StageState>,
    stage: usize,
) -> Result<StepOutcome, StepError> {
    if r.security.as_deref() == Some("insecure") {
        return Err(StepError::Invalid(
            "--security=insecure needs an entitlement wharf does not grant".into(),
        ));
    }
    let env_words = s.expansion_env();
    let expand = |w: &str| run.lexer().process_word(w, &env_words);
    let network = match r.network.as_deref() {
        None | Some("default") => run.opts.network,
        Some(n) => n.parse::<Network>()?,
    };
    if network == Network::Host && !run.opts.allow_network_host {
        return Err(StepError::Invalid(
            "RUN --network=host is not allowed: it needs `wharf build --allow network.host` \
             (BuildKit's network.host entitlement)"
                .into(),
        ));
    }
    let mut mounts = Vec::new();
    for m in &r.mounts {
        mounts.push(m.resolve(|t| expand(t).map_err(StepError::from), MountSpec::parse)?);
    }
    let (argv, pipes) = command_line(s, r)?;
    let env = run_env(s);
    let workdir = s.workdir();
    let user = s
        .config()
        .get("User")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let key = run_key(
        run,
        s,
        &Command {
            argv: &argv,
            env: &env,
            workdir: &workdir,
            user: &user,
            network,
            pipes: &pipes,
        },
        &mounts,
        stage,
        done,
    )?;
    let created_by = format!("RUN {} # buildkit", history_text(s, &argv));
    if let Some(hit) = run.cached_layer(&key) {
        s.layers.push(Layer::New(hit.layer, hit.file));
        s.time = hit.created_at;
        run.history(s, created_by, false);
        return Ok(StepOutcome::Cached);
    }
    run.mount_root(s)?;
    let root = s.rootfs.clone();
    let identity = { crate::user::Users::read(&root).identity(&user)? };
    // Files the sandbox mounts: under the build's scratch directory.
    let scratch = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&run.opts.work_dir)
        .at("a directory for the step")?;
    let mut sandbox_mounts =
        sandbox::etc_files(scratch.path(), HOSTNAME, network, &run.opts.add_hosts)
            .at("/etc/hosts and resolv.conf for the step")?;
    for (name, content) in &pipes {
        sandbox_mounts.push(Mount::Bind {
            source: write_file(
                scratch.path(),
                &format!("pipe-{}", sandbox_mounts.len()),
                content,
                0o755,
            )?,
            target: format!("/dev/pipes/{name}"),
            readonly: true,
        });
    }
    let mut env = env;
    let held = mount_options(
        run,
        &mounts,
        &workdir,
        scratch.path(),
        &mut sandbox_mounts,
        &mut env,
        stage,
        done,
    )?;
    // Mount points the image lacks are made now and taken out of the layer after, except
    // /proc, /dev and /sys: those stay in the layer (0755, root), as BuildKit (v0.32) leaves
    // them.
    let mut points: Vec<(String, bool)> = Vec::new();
    for m in &sandbox_mounts {
        let is_dir = match m {
            Mount::Bind { source, .. } => source.is_dir(),
            Mount::Tmpfs { .. } => true,
        };
        if !m.target().starts_with("/dev/") {
            points.push((m.target().to_owned(), is_dir));
        }
    }
    // (A copy is scanned before the mount points are made, so they never count as changes.)
    if let Some((view, _)) = s.view.0.as_mut() {
        view.begin_change()?;
    }
    make_mount_points(
        &root,
        &[
            ("/proc".into(), true),
            ("/dev".into(), true),
            ("/sys".into(), true),
        ],
    )?;
    let created = make_mount_points(&root, &points)?;
    let shared_network = if network == Network::Nat {
        Some(run.shared_network()?)
    } else {
        None
    };
    // Output streams to progress, line by line.
    let (out_r, out_w) = sandbox::pipe().at("a pipe for the step's output")?;
    let err_w = out_w.try_clone().at("a pipe for the step's output")?;
    let ran = execute(
        run,
        s.step_id,
        out_r,
        Spec {
            root: Root::Dir(root.clone()),
            argv: argv.clone(),
            env,
            cwd: workdir,
            user: identity,
            hostname: HOSTNAME.into(),
            network,
            mounts: sandbox_mounts,
            stdin: None,
            stdout: out_w,
            stderr: err_w,
            tty: false,
            init: true,
            seccomp: true,
            shared_network,
        },
    );
    drop(held);
    let (code, tail) = ran?;
    let shown = serde_json::to_string(&argv).unwrap_or_default();
    if run.opts.cancel.is_cancelled() {
        return Err(StepError::Cancelled);
    }
    if code != 0 {
        return Err(StepError::Exit {
            command: shown,
            code,
            tail,
        });
    }
    // The layer: what the step changed, less the mount points made above.
    let Some((mut view, n)) = s.view.0.take() else {
        unreachable!("mount_root mounted the step's root");
    };
    let lowers: Vec<PathBuf> = super::stage::chain_of(&s.layers)
        .iter()
        .rev()
        .map(|(c, _)| run.opts.snapshots.dir(c))
        .collect();
    let entries = view.changes(&created, &lowers)?;
    // A layer even when nothing changed (an empty one), as BuildKit makes.
    copy::commit_layer(s, entries, &run.opts)?;
    s.time = now();
    run.record(&key, s);
    s.view.0 = Some((view, n));
    run.commit_root(s)?;
    run.history(s, created_by, false);
    Ok(StepOutcome::Ran)
}

/// Runs the command in the sandbox, its output (read from `output`, the other end of the
/// spec's stdout and stderr) streamed to progress line by line; returns its exit code and its
/// last lines of output. The build's cancel token kills it.
fn execute(
    run: &Solver,
    id: usize,
    output: std::os::fd::OwnedFd,
    spec: Spec,
) -> Result<(i32, Vec<String>), StepError> {
    let events = run.events.clone();
    let reader = std::thread::spawn(move || {
        let mut tail: Vec<String> = Vec::new();
        for line in BufReader::new(std::fs::File::from(output)).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line).into_owned();
            (*events)(BuildEvent::Output(id, text.clone()));
            tail.push(text);
            if tail.len() > 10 {
                tail.remove(0);
            }
        }
        tail
    });
    let code = match sandbox::start(spec) {
        Ok(running) => {
            let guard = run.opts.cancel.register(running.pid());
            let code = running.wait();
            drop(guard);
            code
        }
        Err(e) => Err(e),
    };
    let tail = reader.join().unwrap_or_default();
    Ok((code?, tail))
}

/// What a RUN step runs and with what, as its cache key holds it.
struct Command<'a> {
    argv: &'a [String],
    env: &'a [String],
    workdir: &'a str,
    user: &'a str,
    network: Network,
    pipes: &'a [PipeFile],
}

/// RUN's cache key: the chain, the command, and everything it runs with, secrets excepted (a
/// bind mount by the content of its source).
fn run_key(
    run: &Solver,
    s: &mut StageState,
    cmd: &Command<'_>,
    mounts: &[MountSpec],
    stage: usize,
    done: &BTreeMap<usize, StageState>,
) -> Result<Digest, StepError> {
    let Command {
        argv,
        env,
        workdir,
        user,
        network,
        pipes,
    } = cmd;
    let mut key = CacheKey::new("run");
    key.digest(&s.key)
        .texts(argv.iter().map(String::as_str))
        .texts(env.iter().map(String::as_str))
        .text(workdir)
        .text(user)
        .text(match network {
            Network::Nat => "default",
            Network::Host => "host",
            Network::None => "none",
        });
    for m in mounts {
        let num = |n: Option<u32>| n.map(i64::from);
        key.text("mount")
            .text(&m.kind)
            .opt_text(m.target.as_deref())
            .opt_text(m.source.as_deref())
            .opt_text(m.id.as_deref())
            .opt_text(m.sharing.as_deref())
            .opt_number(num(m.mode))
            .opt_number(num(m.uid))
            .opt_number(num(m.gid))
            .number(i64::from(m.readonly));
        if m.kind == "bind" {
            match bind_key(run, s, m, stage, done)? {
                BindFrom::Stage(d) => key.text("stage").digest(&d),
                BindFrom::Image(d) => key.text("image").digest(&d),
                BindFrom::UnresolvedImage(name) => key.text("unresolved image").text(&name),
                BindFrom::Context(d) => key.text("context").digest(&d),
            };
        }
    }
    for (name, content) in pipes.iter() {
        key.text("heredoc").text(name).bytes(content);
    }
    run.layer_options(&mut key);
    Ok(key.finish())
}

/// What a step's `--mount`s hold on to while it runs: cache locks and private cache
/// directories.
struct Held {
    _locks: Vec<std::fs::File>,
    _private_dirs: Vec<tempfile::TempDir>,
}

/// The sandbox mounts of a step's `--mount`s (caches, tmpfs, secrets, binds), with the files
/// they need written under `scratch`; secrets given as `env=` go into `env`.
#[allow(clippy::too_many_arguments)]
fn mount_options(
    run: &Solver,
    mounts: &[MountSpec],
    workdir: &str,
    scratch: &Path,
    sandbox_mounts: &mut Vec<Mount>,
    env: &mut Vec<String>,
    stage: usize,
    done: &BTreeMap<usize, StageState>,
) -> Result<Held, StepError> {
    let mut locks = Vec::new();
    let mut private_dirs = Vec::new();
    for (n, m) in mounts.iter().enumerate() {
        let target = m.target.as_deref().map(|t| {
            if t.starts_with('/') {
                clean_abs(t)
            } else {
                clean_abs(&format!("{workdir}/{t}"))
            }
        });
        match m.kind.as_str() {
            "cache" => {
                let target = target.unwrap_or_default();
                let id = m.id.clone().unwrap_or_else(|| target.clone());
                let name = CacheKey::new("cache mount")
                    .text(&id)
                    .finish()
                    .hex()
                    .to_owned();
                let mut dir = run.opts.cache_mounts.join(&name);
                let lock = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(run.opts.cache_mounts.join(format!("{name}.lock")))
                    .at(format_args!("cache mount {id}"))?;
                match m.sharing.as_deref().unwrap_or("shared") {
                    "locked" => {
                        // SAFETY: flock on a descriptor we own.
                        unsafe {
                            libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX)
                        };
                        locks.push(lock);
                    }
                    "private" => {
                        // SAFETY: flock on a descriptor we own.
                        let free = unsafe {
                            libc::flock(
                                std::os::fd::AsRawFd::as_raw_fd(&lock),
                                libc::LOCK_EX | libc::LOCK_NB,
                            )
                        } == 0;
                        if free {
                            locks.push(lock);
                        } else {
                            // In use: this step gets a fresh one of its own.
                            let t = tempfile::Builder::new()
                                .prefix("private-")
                                .tempdir_in(&run.opts.cache_mounts)
                                .at(format_args!("cache mount {id}"))?;
                            dir = t.path().join("d");
                            private_dirs.push(t);
                        }
                    }
                    _ => {}
                }
                if !dir.exists() {
                    std::fs::create_dir_all(&dir).at(format_args!("cache mount {id}"))?;
                    std::fs::set_permissions(
                        &dir,
                        std::fs::Permissions::from_mode(m.mode.unwrap_or(0o755)),
                    )
                    .at(format_args!("cache mount {id}"))?;
                    let _ = std::os::unix::fs::chown(&dir, m.uid.or(Some(0)), m.gid.or(Some(0)));
                }
                sandbox_mounts.push(Mount::Bind {
                    source: dir,
                    target,
                    readonly: m.readonly,
                });
            }
            "tmpfs" => sandbox_mounts.push(Mount::Tmpfs {
                target: target.unwrap_or_default(),
                size: m.size,
            }),
            "secret" => {
                let id =
                    m.id.clone()
                        .or_else(|| {
                            m.target
                                .as_deref()
                                .and_then(|t| t.rsplit('/').next().map(str::to_owned))
                        })
                        .ok_or_else(|| {
                            StepError::Invalid("a secret mount needs an id or a target".into())
                        })?;
                let Some(value) = run.opts.secrets.get(&id) else {
                    if m.required {
                        return Err(StepError::Invalid(format!(
                            "secret {id} is required but was not given (wharf build --secret id={id},src=…)"
                        )));
                    }
                    continue;
                };
                if let Some(var) = &m.env {
                    env.push(format!("{var}={}", String::from_utf8_lossy(value)));
                    if m.target.is_none() {
                        continue;
                    }
                }
                let file = write_file(
                    scratch,
                    &format!("secret-{n}"),
                    value,
                    m.mode.unwrap_or(0o400),
                )?;
                let _ = std::os::unix::fs::chown(&file, m.uid.or(Some(0)), m.gid.or(Some(0)));
                sandbox_mounts.push(Mount::Bind {
                    source: file,
                    target: target.unwrap_or_else(|| format!("/run/secrets/{id}")),
                    readonly: true,
                });
            }
            _ => {
                let source = bind_source(run, m, stage, done)?;
                let source = if m.readonly {
                    source
                } else {
                    // rw: writes are thrown away, as BuildKit does.
                    let copy_to = scratch.join(format!("rw-{n}"));
                    let ok = std::process::Command::new("cp")
                        .arg("-a")
                        .arg(&source)
                        .arg(&copy_to)
                        .status()
                        .at("running cp for a rw mount")?
                        .success();
                    if !ok {
                        return Err(StepError::Invalid(format!(
                            "copying {} for a rw mount failed",
                            source.display()
                        )));
                    }
                    copy_to
                };
                sandbox_mounts.push(Mount::Bind {
                    source,
                    target: target.unwrap_or_default(),
                    readonly: m.readonly,
                });
            }
        }
    }
    Ok(Held {
        _locks: locks,
        _private_dirs: private_dirs,
    })
}

/// Writes a file the sandbox mounts (a heredoc script, a secret) into `dir`.
fn write_file(dir: &Path, name: &str, content: &[u8], mode: u32) -> Result<PathBuf, IoError> {
    let p = dir.join(name);
    std::fs::write(&p, content).at(p.display())?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).at(p.display())?;
    Ok(p)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// The content key of a bind mount's source.
fn bind_key(
    run: &Solver,
    s: &mut StageState,
    m: &MountSpec,
    stage: usize,
    done: &BTreeMap<usize, StageState>,
) -> Result<BindFrom, StepError> {
    match &m.from {
        Some(f) => match super::graph::stage_index(&run.df, f, stage).and_then(|j| done.get(&j)) {
            Some(d) => Ok(BindFrom::Stage(d.key.clone())),
            // An image by what it holds, as COPY --from keys it: a name retagged to other
            // content must not find the old result.
            None => Ok(match run.bases.get(f) {
                Some(img) => BindFrom::Image(super::cache::image_key(img)),
                None => BindFrom::UnresolvedImage(f.clone()),
            }),
        },
        None => {
            let spec = crate::dockerfile::instructions::CopySpec {
                sources: vec![m.source.clone().unwrap_or_else(|| ".".into())],
                ..Default::default()
            };
            Ok(BindFrom::Context(run.context_checksum(
                s,
                &spec,
                run.context(),
            )?))
        }
    }
}

/// What a bind mount's key holds of its source.
enum BindFrom {
    /// An earlier stage, by its key.
    Stage(Digest),
    /// An image, by its config and layers.
    Image(Digest),
    /// An image the build did not resolve, by name.
    UnresolvedImage(String),
    /// Files of the context, by their checksum.
    Context(Digest),
}

/// Where a bind mount's source is on the host.
fn bind_source(
    run: &Solver,
    m: &MountSpec,
    stage: usize,
    done: &BTreeMap<usize, StageState>,
) -> Result<PathBuf, StepError> {
    let rel = m.source.clone().unwrap_or_else(|| ".".into());
    match &m.from {
        Some(f) => {
            let root = run.other_root(f, stage, done)?;
            Ok(crate::context::resolve_in_root(&root, &rel, true)?)
        }
        None => {
            // The filtered context: what .dockerignore leaves out is not there, wherever a
            // link points, and the mount shows none of it.
            let disk = run.context().resolve(&rel, true)?;
            if std::fs::symlink_metadata(&disk).is_err() {
                return Err(ContextError::NotFound {
                    source_path: rel,
                    excluded: false,
                }
                .into());
            }
            Ok(run.context_for_mount(&disk)?)
        }
    }
}

/// Creates the mount points (absolute paths, directory or file) missing in `root`, with their
/// missing parents; returns the image paths created, parents first.
fn make_mount_points(root: &Path, points: &[(String, bool)]) -> Result<Vec<String>, StepError> {
    let mut created = Vec::new();
    for (target, is_dir) in points {
        let parts: Vec<&str> = target.split('/').filter(|p| !p.is_empty()).collect();
        let mut cur = String::new();
        for (i, part) in parts.iter().enumerate() {
            cur.push('/');
            cur.push_str(part);
            let disk = crate::context::resolve_in_root(root, &cur, true)?;
            if std::fs::symlink_metadata(&disk).is_ok() {
                continue;
            }
            let last = i + 1 == parts.len();
            let made = if last && !is_dir {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&disk)
                    .map(|_| ())
            } else {
                std::fs::create_dir(&disk).and_then(|()| {
                    std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o755))
                })
            };
            made.at(format_args!("mount point {cur}"))?;
            let rel = disk
                .strip_prefix(root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            created.push(rel);
        }
    }
    Ok(created)
}
