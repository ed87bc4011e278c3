//! `wharf run`: an image's command in wharf's sandbox, on an overlay of its layer snapshots
//! (shared with builds) under a throwaway upper directory, the way `docker run --rm` does.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use wharf_builder::container;
use wharf_builder::sandbox::{self, Mount, Network, Root, SandboxError, Spec};
use wharf_builder::snapshot::{self, Snapshots};
use wharf_common::image::Platform;

use crate::bases::StoreImages;
use crate::cli::RunArgs;
use crate::context::Ctx;

/// Removes the container's directory however `run` ends.
/// `containers/<id>/`, flock'ed while its container runs and removed when it ends.
struct ContainerDir(
    PathBuf,
    #[allow(dead_code, reason = "held for its lock")] std::fs::File,
);

impl ContainerDir {
    /// Makes `containers/<id>/` and locks it.
    fn create(containers: &std::path::Path, id: &str) -> anyhow::Result<ContainerDir> {
        let dir = containers.join(id);
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let lock =
            std::fs::File::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            anyhow::bail!(
                "locking {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(ContainerDir(dir, lock))
    }

    /// Removes what runs that were killed left in `containers/`: every directory nobody holds.
    fn clean_stale(containers: &std::path::Path) {
        for e in std::fs::read_dir(containers)
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(f) = std::fs::File::open(e.path()) else {
                continue;
            };
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

impl Drop for ContainerDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Puts the terminal back as it was.
struct RawMode(libc::termios);

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restoring attributes read from the same descriptor.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.0) };
    }
}

fn dup(fd: i32) -> anyhow::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor of this process; the result is checked.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).context("duplicating a standard stream");
    }
    // SAFETY: n was just created and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

fn copy_winsize(from: i32, to: i32) {
    // SAFETY: ioctl with a winsize out-pointer and in-pointer of the right type.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(from, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(to, libc::TIOCSWINSZ, &ws);
        }
    }
}

/// Whether `--security-opt` leaves docker's seccomp profile on.
fn seccomp_enabled(options: &[String]) -> anyhow::Result<bool> {
    let mut on = true;
    for opt in options {
        // docker takes `seccomp:unconfined` too (the old separator).
        let (key, value) = opt
            .split_once(['=', ':'])
            .map_or((opt.as_str(), None), |(k, v)| (k, Some(v)));
        match (key, value) {
            ("seccomp", Some("unconfined")) => on = false,
            ("no-new-privileges", None | Some("true")) => {}
            _ => anyhow::bail!(
                "--security-opt {opt:?}: wharf knows seccomp=unconfined and no-new-privileges"
            ),
        }
    }
    Ok(on)
}

pub async fn run(ctx: &Ctx, args: RunArgs) -> anyhow::Result<ExitCode> {
    if let Some(refused) = args.unsupported.refusal() {
        anyhow::bail!(refused);
    }
    if args.interactive && args.tty && !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        // docker's words: -it needs a terminal on stdin.
        anyhow::bail!("the input device is not a TTY (drop -t to pipe input in with -i)");
    }
    let network: Network = args
        .network
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--network: {e}"))?;
    let seccomp = seccomp_enabled(&args.security_opt)?;
    let add_hosts = args
        .add_hosts
        .iter()
        .map(|h| sandbox::parse_host_entry(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--add-host {e}"))?;
    let store = ctx.store().await?;
    // The image stays while the container runs, whatever rmi or prune do beside it.
    let lease = std::sync::Arc::new(store.lease().await?);
    let images = StoreImages {
        ctx,
        store: store.clone(),
        lease: lease.clone(),
    };
    let img = images.load(args.image(), &Platform::host()).await?;
    let config = &img.config;
    // The layers' snapshots, extracted once and shared with builds.
    let chain = wharf_builder::solve::base_chain(&img);
    let snapshots = Snapshots::new(store.root().join("snapshots"))?;
    let id = hex::encode(rand::random::<[u8; 32]>());
    let containers = store.root().join("containers");
    wharf_common::store::private_dir(&containers)
        .with_context(|| format!("creating {}", containers.display()))?;
    ContainerDir::clean_stale(&containers);
    let dir = ContainerDir::create(&containers, &id)?;
    for d in ["upper", "work", "merged"] {
        std::fs::create_dir_all(dir.0.join(d))
            .with_context(|| format!("creating {}", dir.0.join(d).display()))?;
    }
    // The root: an overlay of the snapshots, or where they cannot be had, a full copy.
    let copy_at = dir.0.join("rootfs");
    let make_copy = {
        let (chain, copy_at) = (chain.clone(), copy_at.clone());
        move || -> anyhow::Result<Base> {
            snapshot::copy_root(&chain, &copy_at)?;
            Ok(Base::Copy(copy_at))
        }
    };
    let mut base = if snapshots.mode() == snapshot::Mode::Overlay {
        let snaps = snapshots.clone();
        let chain = chain.clone();
        match tokio::task::spawn_blocking(move || snaps.ensure(&chain)).await? {
            Ok(lowers) => Base::Lowers(lowers.into_iter().rev().collect()),
            Err(e) => {
                crate::printer::err_line(&format!(
                    "wharf: WARN: layer snapshots cannot be made here ({e}); running on a full copy"
                ));
                tokio::task::spawn_blocking(make_copy.clone()).await??
            }
        }
    } else {
        tokio::task::spawn_blocking(make_copy.clone()).await??
    };

    let c = &config["config"];
    let user = args
        .user
        .clone()
        .or_else(|| c["User"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let passwd = base.read("/etc/passwd");
    let group = base.read("/etc/group");
    let identity = wharf_builder::user::Users::parse(&passwd, &group).identity(&user)?;
    let hostname = args.hostname.clone().unwrap_or_else(|| id[..12].to_owned());
    let env = container::environment(
        config,
        &args.env,
        |k| std::env::var(k).ok(),
        &hostname,
        &container::home_of(&passwd, identity.uid),
        args.tty,
    );
    let argv = container::command(config, args.entrypoint.as_deref(), args.command())
        .map_err(anyhow::Error::msg)?;
    let cwd = args
        .workdir
        .clone()
        .or_else(|| c["WorkingDir"].as_str().map(str::to_owned))
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        anyhow::bail!("the working directory {cwd:?} is invalid: it needs to be an absolute path");
    }

    // The files the container gets at /etc.
    let mut mounts = sandbox::etc_files(&dir.0, &hostname, network, &add_hosts)
        .context("writing the container's /etc files")?;
    mounts.extend(volume_mounts(&args.volumes)?);

    let spec = |base: &Base| -> anyhow::Result<Spec> {
        // Standard streams: ours (with -t the sandbox makes a terminal and they go unused).
        let stdin = if args.interactive && !args.tty {
            Some(dup(0)?)
        } else {
            None
        };
        Ok(Spec {
            root: match base {
                Base::Lowers(lowers) => Root::Overlay {
                    lowers: lowers.clone(),
                    upper: dir.0.join("upper"),
                    work: dir.0.join("work"),
                    target: dir.0.join("merged"),
                },
                Base::Copy(root) => Root::Dir(root.clone()),
            },
            argv: argv.clone(),
            env: env.clone(),
            cwd: cwd.clone(),
            user: identity.clone(),
            hostname: hostname.clone(),
            network,
            mounts: mounts.clone(),
            stdin,
            stdout: dup(1)?,
            stderr: dup(2)?,
            tty: args.tty,
            init: args.init,
            seccomp,
            shared_network: None,
        })
    };
    // Signals are caught from before the command starts: one that arrives while the sandbox
    // is being set up is passed on, not taken for wharf's own death.
    let streams = signal_streams();
    let mut running = match sandbox::start(spec(&base)?) {
        Ok(r) => r,
        Err(e) if matches!(base, Base::Lowers(_)) && e.is_root_mount() => {
            crate::printer::err_line(&format!(
                "wharf: WARN: overlayfs cannot be mounted here ({e}); running on a full copy"
            ));
            base = tokio::task::spawn_blocking(make_copy).await??;
            match sandbox::start(spec(&base)?) {
                Ok(r) => r,
                Err(e) => return Ok(start_failed(&e)),
            }
        }
        Err(e) => return Ok(start_failed(&e)),
    };
    let pid = running.pid();
    let pty_master = running.take_terminal();
    if let Some(m) = &pty_master {
        copy_winsize(1, m.as_raw_fd());
    }
    // The terminal, raw, relayed both ways.
    let _raw = match &pty_master {
        Some(m) => relay_terminal(m, args.interactive)?,
        None => None,
    };
    // Signals go to the container (its PID 1 passes them to the command).
    let master_fd = pty_master.as_ref().map(AsRawFd::as_raw_fd);
    let forward = tokio::spawn(forward_signals(
        streams,
        pid,
        master_fd,
        Duration::from_secs(args.stop_timeout),
    ));
    let result = tokio::task::spawn_blocking(move || running.wait()).await?;
    forward.abort();
    drop(_raw);
    match result {
        Ok(code) => Ok(ExitCode::from(u8::try_from(code).unwrap_or(255))),
        Err(e) => Ok(start_failed(&e)),
    }
}

/// `-v HOST:CONTAINER[:ro|rw]` as bind mounts (a missing host directory is created, as
/// docker does).
fn volume_mounts(volumes: &[String]) -> anyhow::Result<Vec<Mount>> {
    let mut mounts = Vec::new();
    for v in volumes {
        let parts: Vec<&str> = v.split(':').collect();
        let (host, target, readonly) = match parts.as_slice() {
            [h, t] => (*h, *t, false),
            [h, t, "ro"] => (*h, *t, true),
            [h, t, "rw"] => (*h, *t, false),
            _ => anyhow::bail!("-v {v}: expected HOST:CONTAINER[:ro]"),
        };
        if !host.starts_with('/') {
            anyhow::bail!(
                "-v {v}: {host:?} is not an absolute host path (named volumes are not supported)"
            );
        }
        if !target.starts_with('/') {
            anyhow::bail!("-v {v}: the container path {target:?} must be absolute");
        }
        if !std::path::Path::new(host).exists() {
            // As docker: a missing host directory is created.
            std::fs::create_dir_all(host).with_context(|| format!("-v {v}: creating {host}"))?;
        }
        mounts.push(Mount::Bind {
            source: PathBuf::from(host),
            target: target.to_owned(),
            readonly,
        });
    }
    Ok(mounts)
}

/// The signals passed on to the container, caught from before the command starts: one that
/// arrives while the sandbox is being set up is passed on, not taken for wharf's own death.
fn signal_streams() -> Vec<(tokio::signal::unix::Signal, libc::c_int)> {
    use tokio::signal::unix::{SignalKind, signal};
    let kinds = [
        (SignalKind::interrupt(), libc::SIGINT),
        (SignalKind::terminate(), libc::SIGTERM),
        (SignalKind::hangup(), libc::SIGHUP),
        (SignalKind::quit(), libc::SIGQUIT),
        (SignalKind::user_defined1(), libc::SIGUSR1),
        (SignalKind::user_defined2(), libc::SIGUSR2),
        (SignalKind::window_change(), libc::SIGWINCH),
    ];
    kinds
        .into_iter()
        .filter_map(|(k, n)| signal(k).ok().map(|s| (s, n)))
        .collect()
}

/// With `-t`: our terminal made raw (restored when the returned guard drops) and the
/// container's terminal `master` relayed to stdout, and from stdin with `-i`.
fn relay_terminal(master: &OwnedFd, interactive: bool) -> anyhow::Result<Option<RawMode>> {
    let raw = if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        // SAFETY: termios is plain data filled by tcgetattr; the calls only touch fd 0.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) == 0 {
                let saved = t;
                libc::cfmakeraw(&mut t);
                libc::tcsetattr(0, libc::TCSANOW, &t);
                Some(RawMode(saved))
            } else {
                None
            }
        }
    } else {
        None
    };
    let (to_in, from_out) = (master.try_clone()?, master.try_clone()?);
    if interactive {
        std::thread::spawn(move || {
            let mut w = std::fs::File::from(to_in);
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut w);
        });
    }
    std::thread::spawn(move || {
        let mut r = std::fs::File::from(from_out);
        let _ = std::io::copy(&mut r, &mut std::io::stdout().lock());
    });
    Ok(raw)
}

/// Passes signals to the container (its PID 1 passes them to the command), as docker does:
/// SIGTERM or a first Ctrl-C is passed on and the container is killed if it has not ended
/// `stop_timeout` later; a second Ctrl-C kills it at once. A window change resizes the
/// container's terminal (`master`).
async fn forward_signals(
    mut streams: Vec<(tokio::signal::unix::Signal, libc::c_int)>,
    pid: libc::pid_t,
    master: Option<std::os::fd::RawFd>,
    stop_timeout: Duration,
) {
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let futs = streams.iter_mut().map(|(s, n)| {
            let n = *n;
            Box::pin(async move {
                s.recv().await;
                n
            })
        });
        let sig = match deadline {
            Some(d) => {
                match tokio::time::timeout_at(d, futures_util::future::select_all(futs)).await {
                    Ok((sig, _, _)) => sig,
                    Err(_) => libc::SIGKILL,
                }
            }
            None => futures_util::future::select_all(futs).await.0,
        };
        if sig == libc::SIGWINCH
            && let Some(m) = master
        {
            copy_winsize(1, m);
        }
        let stopping = sig == libc::SIGINT || sig == libc::SIGTERM;
        let sig = if stopping && deadline.is_some() && sig == libc::SIGINT {
            libc::SIGKILL
        } else {
            sig
        };
        if stopping && deadline.is_none() {
            deadline = Some(tokio::time::Instant::now() + stop_timeout);
        }
        // SAFETY: kill has no memory preconditions; pid is our child until it is reaped.
        unsafe { libc::kill(pid, sig) };
        if sig == libc::SIGKILL {
            return;
        }
    }
}

/// The container's root before its writable part: snapshot directories (top first) for an
/// overlay, or a full copy.
#[derive(Clone)]
enum Base {
    Lowers(Vec<PathBuf>),
    Copy(PathBuf),
}

impl Base {
    /// A file of the image (for /etc/passwd and /etc/group), empty when missing.
    fn read(&self, path: &str) -> String {
        match self {
            Base::Lowers(l) => container::read_file(l, path).unwrap_or_default(),
            Base::Copy(root) => wharf_builder::context::read_in_root(root, path),
        }
    }
}

/// docker's exit codes when the command cannot start: 127 not found, 126 not executable, 125
/// anything else.
fn start_failed(e: &SandboxError) -> ExitCode {
    crate::printer::err_line(&format!("wharf: {}", wharf_common::error::Chain(e)));
    match e {
        SandboxError::Exec { source, .. } => match source.raw_os_error() {
            Some(libc::ENOENT | libc::ENOTDIR) => ExitCode::from(127),
            _ => ExitCode::from(126),
        },
        _ => ExitCode::from(125),
    }
}
