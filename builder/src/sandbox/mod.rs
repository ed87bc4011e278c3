//! wharf's own sandbox: runs one command in a root directory (or an overlay it mounts) inside
//! new mount, PID, UTS, IPC and network namespaces (the network reached through slirp4netns,
//! see `nat.rs`, or loopback only; the host's only with [`Network::Host`]),
//! entered by `pivot_root`, with a fresh /proc, a minimal /dev, docker's masked and read-only
//! /proc paths, docker's default capability set, `no_new_privs`, and a PID 1 that reaps
//! children and forwards signals. No daemon and no runtime binary: the parent prepares every
//! string and file descriptor, then `clone(2)`s a child that only makes system calls (it must
//! not allocate: the parent is multi-threaded), see `child.rs`.
//!
//! With [`Spec::init`] (RUN, `run --init`) the container's PID 1 is a copy of this process that
//! never `exec`s: it reaps orphans and passes signals on to the command. It makes itself
//! non-dumpable, so nothing inside can open `/proc/1/exe`, `/proc/1/root` or its descriptors
//! (the runc `/proc/self/exe` escape), and it closes every descriptor except the command's
//! standard streams before starting it. Without, the command itself is PID 1, as in
//! `docker run`.

mod child;
mod nat;

use crate::user::Identity;
pub use nat::SharedNetwork;
mod seccomp;
mod syscalls;

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The network a sandbox gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Network {
    /// A network namespace of its own with outbound connections through a userspace NAT
    /// (slirp4netns) and no way to the host's loopback: what docker gives RUN and
    /// `docker run` by default (there through a bridge).
    #[default]
    Nat,
    /// The host's network namespace (BuildKit's `network.host` entitlement; `run --network
    /// host`).
    Host,
    /// A new network namespace with only loopback.
    None,
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Network, String> {
        match s {
            "default" | "bridge" => Ok(Network::Nat),
            "host" => Ok(Network::Host),
            "none" => Ok(Network::None),
            other => Err(format!(
                "network {other:?} is not supported: use \"default\" (or \"bridge\"), \"host\" or \"none\""
            )),
        }
    }
}

/// A mount inside the sandbox.
#[derive(Clone, Debug)]
pub enum Mount {
    /// A host file or directory at `target`.
    Bind {
        /// The host path.
        source: PathBuf,
        /// The absolute path inside.
        target: String,
        /// Mounted read-only.
        readonly: bool,
    },
    /// An empty tmpfs at `target`.
    Tmpfs {
        /// The absolute path inside.
        target: String,
        /// Its size limit in bytes.
        size: Option<u64>,
    },
}

impl Mount {
    /// The absolute path inside the sandbox.
    pub fn target(&self) -> &str {
        match self {
            Mount::Bind { target, .. } | Mount::Tmpfs { target, .. } => target,
        }
    }
}

/// What becomes the sandbox's `/`.
#[derive(Clone, Debug)]
pub enum Root {
    /// A directory, used as it is (writes land in it).
    Dir(PathBuf),
    /// An overlay the sandbox mounts on `target`: `lowers` (top first) under `upper`.
    Overlay {
        /// Read-only layers, the topmost first.
        lowers: Vec<PathBuf>,
        /// Where writes go.
        upper: PathBuf,
        /// overlayfs's work directory (same filesystem as `upper`, empty).
        work: PathBuf,
        /// The mount point.
        target: PathBuf,
    },
}

/// One command to run.
#[derive(Debug)]
pub struct Spec {
    /// The root.
    pub root: Root,
    /// The command; `argv[0]` is looked up in the PATH of `env` when it has no `/`.
    pub argv: Vec<String>,
    /// `KEY=value` pairs.
    pub env: Vec<String>,
    /// The working directory inside.
    pub cwd: String,
    /// The user.
    pub user: Identity,
    /// The UTS hostname.
    pub hostname: String,
    /// The network.
    pub network: Network,
    /// Extra mounts, in order (/etc/hosts, caches, secrets, volumes…).
    pub mounts: Vec<Mount>,
    /// Standard input (None: /dev/null).
    pub stdin: Option<OwnedFd>,
    /// Standard output.
    pub stdout: OwnedFd,
    /// Standard error.
    pub stderr: OwnedFd,
    /// Keep a PID 1 of wharf's that reaps orphans and passes signals on, the command running
    /// under it (RUN; `run --init`); otherwise the command is PID 1, as `docker run` has it.
    pub init: bool,
    /// Give the command a terminal of the sandbox's own devpts as its standard streams (and
    /// controlling terminal); its master side is [`Running::take_terminal`]. The three streams
    /// above are then unused.
    pub tty: bool,
    /// Filter the command's system calls with docker's default seccomp profile (off only for
    /// `run --security-opt seccomp=unconfined`).
    pub seccomp: bool,
    /// With [`Network::Nat`]: join this namespace (and its NAT) instead of making one.
    pub shared_network: Option<std::sync::Arc<SharedNetwork>>,
}

/// Why a sandbox could not run its command.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A string holds a NUL byte.
    #[error("{0:?} contains a NUL byte")]
    Nul(String),
    /// Preparing on the host side failed.
    #[error("{what}")]
    Prepare {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A step inside failed before the command started.
    #[error("sandbox: {step}")]
    Setup {
        /// The step.
        step: String,
        /// The system's error.
        source: std::io::Error,
    },
    /// The command was not found or could not be executed.
    #[error("{command}")]
    Exec {
        /// argv\[0\].
        command: String,
        /// Why.
        source: std::io::Error,
    },
}

impl SandboxError {
    /// Whether mounting the root failed (an overlay where overlayfs cannot be used).
    pub fn is_root_mount(&self) -> bool {
        matches!(self, SandboxError::Setup { step, .. } if step == child::step_name(child::STEP_ROOT))
    }
}

/// A started sandbox.
#[derive(Debug)]
pub struct Running {
    /// PID 1 of the sandbox, as the host sees it.
    pid: libc::pid_t,
    /// Closed when the command starts; carries an error before that.
    status: OwnedFd,
    /// argv\[0\], for errors.
    command: String,
    /// The terminal's master side, with `tty`.
    terminal: Option<OwnedFd>,
    /// The NAT of [`Network::Nat`], let go when the sandbox ends.
    nat: Option<nat::Nat>,
    waited: bool,
}

/// docker's (and containerd's) default capabilities.
const DEFAULT_CAPS: [u32; 14] = [
    0,  // CHOWN
    1,  // DAC_OVERRIDE
    3,  // FOWNER
    4,  // FSETID
    5,  // KILL
    6,  // SETGID
    7,  // SETUID
    8,  // SETPCAP
    10, // NET_BIND_SERVICE
    13, // NET_RAW
    18, // SYS_CHROOT
    27, // MKNOD
    29, // AUDIT_WRITE
    31, // SETFCAP
];

/// The device nodes a sandbox's /dev has (besides its own pts, ptmx and shm).
const DEV_NODES: [&str; 6] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];

/// /proc and /sys paths docker hides (a file gets /dev/null, a directory an empty tmpfs).
const MASKED: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// /proc paths docker makes read-only.
const READ_ONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The overlayfs mount options for `lowers` (top first) under `upper`, naming each lower
/// by an open descriptor (`/proc/self/fd/N`) so that a hundred layers fit in one page.
pub fn overlay_options(
    lowers: &[RawFd],
    upper: Option<(&Path, &Path)>,
) -> Result<CString, SandboxError> {
    let mut opts = String::from("lowerdir=");
    let names: Vec<String> = lowers
        .iter()
        .map(|fd| format!("/proc/self/fd/{fd}"))
        .collect();
    opts.push_str(&names.join(":"));
    if let Some((upper, work)) = upper {
        opts.push_str(&format!(
            ",upperdir={},workdir={}",
            upper.display(),
            work.display()
        ));
    }
    // Hard links in the upper directory stay links; no inode index is needed.
    opts.push_str(",index=off,redirect_dir=off,metacopy=off");
    if opts.len() >= 4096 {
        return Err(SandboxError::Prepare {
            what: format!("an overlay of {} layers", lowers.len()),
            source: std::io::Error::other("the mount options exceed one page"),
        });
    }
    CString::new(opts.clone()).map_err(|_| SandboxError::Nul(opts))
}

/// Opens directories with `O_PATH` for [`overlay_options`].
pub fn open_dirs(dirs: &[PathBuf]) -> Result<Vec<OwnedFd>, SandboxError> {
    dirs.iter()
        .map(|d| open_path(d, libc::O_DIRECTORY))
        .collect()
}

fn open_path(p: &Path, extra: i32) -> Result<OwnedFd, SandboxError> {
    let c = cstr(p.as_os_str().as_bytes())?;
    // SAFETY: c is a valid NUL-terminated string; the result is checked.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC | extra) };
    if fd < 0 {
        return Err(SandboxError::Prepare {
            what: format!("opening {}", p.display()),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A detached copy of the mount tree at `source` (`open_tree(2)`), which the sandbox attaches
/// inside its own mount namespace with `move_mount(2)`; read-only when asked.
fn detached_tree(source: &Path, readonly: bool, nodev: bool) -> Result<OwnedFd, SandboxError> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    const MOUNT_ATTR_RDONLY: u64 = 1;
    const MOUNT_ATTR_NODEV: u64 = 4;
    #[repr(C)]
    struct MountAttr {
        set: u64,
        clear: u64,
        propagation: u64,
        userns: u64,
    }
    let err = |what: &str| SandboxError::Prepare {
        what: format!("{what} {}", source.display()),
        source: std::io::Error::last_os_error(),
    };
    let c = cstr(source.as_os_str().as_bytes())?;
    // SAFETY: c is NUL-terminated; the result is checked.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(err("cloning the mount of"));
    }
    // SAFETY: fd was just returned to us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let set =
        if readonly { MOUNT_ATTR_RDONLY } else { 0 } | if nodev { MOUNT_ATTR_NODEV } else { 0 };
    if set != 0 {
        let attr = MountAttr {
            set,
            clear: 0,
            propagation: 0,
            userns: 0,
        };
        // SAFETY: attr is a valid mount_attr of the size given.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                fd.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
                &attr,
                size_of::<MountAttr>(),
            )
        };
        if r != 0 {
            return Err(err("making read-only the mount of"));
        }
    }
    Ok(fd)
}

fn cstr(b: &[u8]) -> Result<CString, SandboxError> {
    CString::new(b).map_err(|_| SandboxError::Nul(String::from_utf8_lossy(b).into_owned()))
}

/// The parent directories of an absolute path, outermost first, and the path itself.
fn ancestors(target: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for part in target.split('/').filter(|p| !p.is_empty()) {
        cur.push('/');
        cur.push_str(part);
        out.push(cur.clone());
    }
    out
}

/// The last capability this kernel knows.
fn cap_last() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// The root as the child mounts it: a directory, or an overlay whose lower directories are
/// opened here (their descriptors kept in `keep`) and named in the options by number; the
/// child reopens each lower onto the same number, because overlayfs needs them in its own
/// mount namespace. Returns (root, overlay options, lower paths, lower descriptor numbers).
type PreparedRoot = (PathBuf, Option<CString>, Vec<CString>, Vec<RawFd>);

fn prepare_root(root: &Root, keep: &mut Vec<OwnedFd>) -> Result<PreparedRoot, SandboxError> {
    match root {
        Root::Dir(d) => Ok((d.clone(), None, Vec::new(), Vec::new())),
        Root::Overlay {
            lowers,
            upper,
            work,
            target,
        } => {
            let fds = open_dirs(lowers)?;
            let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
            let opts = overlay_options(&raw, Some((upper, work)))?;
            let paths = lowers
                .iter()
                .map(|l| cstr(l.as_os_str().as_bytes()))
                .collect::<Result<_, _>>()?;
            keep.extend(fds);
            Ok((target.clone(), Some(opts), paths, raw))
        }
    }
}

/// The child's plan for each mount: a bind is an `open_tree(2)` clone of its source made here
/// (read-only and `nodev` set on it: without a device cgroup, that is what keeps a mknod'd
/// disk out of reach), kept in `keep` and attached inside; a tmpfs is mounted inside,
/// `nosuid` and `nodev`.
fn mount_plans(
    mounts: &[Mount],
    keep: &mut Vec<OwnedFd>,
) -> Result<Vec<child::MountPlan>, SandboxError> {
    let mut plans = Vec::new();
    for m in mounts {
        let target = m.target();
        if !target.starts_with('/') {
            return Err(SandboxError::Prepare {
                what: format!("mount target {target:?}"),
                source: std::io::Error::other("must be an absolute path"),
            });
        }
        let parents: Vec<CString> = ancestors(target)
            .iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<Result<_, _>>()?;
        match m {
            Mount::Bind {
                source, readonly, ..
            } => {
                let meta = std::fs::metadata(source).map_err(|e| SandboxError::Prepare {
                    what: format!("mount source {}", source.display()),
                    source: e,
                })?;
                let fd = detached_tree(source, *readonly, true)?;
                plans.push(child::MountPlan {
                    tree: fd.as_raw_fd(),
                    source: CString::default(),
                    fstype: None,
                    data: None,
                    parents,
                    is_dir: meta.is_dir(),
                    flags: 0,
                    readonly: false,
                });
                keep.push(fd);
            }
            Mount::Tmpfs { size, .. } => {
                let data = match size {
                    Some(s) => format!("mode=1777,size={s}"),
                    None => "mode=1777".to_owned(),
                };
                plans.push(child::MountPlan {
                    tree: -1,
                    source: c"tmpfs".to_owned(),
                    fstype: Some(c"tmpfs".to_owned()),
                    data: Some(cstr(data.as_bytes())?),
                    parents,
                    is_dir: true,
                    flags: libc::MS_NOSUID | libc::MS_NODEV,
                    readonly: false,
                });
            }
        }
    }
    Ok(plans)
}

/// Where the command may be: `argv0` itself when it has a slash, else each directory of the
/// environment's `PATH` (docker's default when it sets none) in order, an empty entry meaning
/// the working directory.
fn candidates(argv0: &str, env: &[String]) -> Result<Vec<CString>, SandboxError> {
    if argv0.contains('/') {
        return Ok(vec![cstr(argv0.as_bytes())?]);
    }
    env.iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .split(':')
        .map(|d| if d.is_empty() { "." } else { d })
        .map(|d| cstr(format!("{}/{argv0}", d.trim_end_matches('/')).as_bytes()))
        .collect()
}

/// docker's default capabilities: the ones to drop from the bounding set (every other the
/// kernel knows, up to `last`) and the mask of those kept.
fn capabilities(last: u32) -> (Vec<u32>, u64) {
    let drop_caps = (0..=last).filter(|c| !DEFAULT_CAPS.contains(c)).collect();
    let keep_mask = DEFAULT_CAPS.iter().fold(0u64, |m, c| m | (1 << c));
    (drop_caps, keep_mask)
}

/// A socket pair the child sends its terminal's master side back on: (ours, theirs).
fn console_pair() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    let mut sv = [0; 2];
    // SAFETY: sv has room for two descriptors.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    } != 0
    {
        return Err(SandboxError::Prepare {
            what: "creating a socket for the terminal".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: both were just created and are ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) })
}

/// The standard device nodes: the host's, each a detached mount (kept in `keep`) the child
/// attaches on the sandbox's /dev (which, like the root, is mounted nodev).
fn dev_trees(keep: &mut Vec<OwnedFd>) -> Result<Vec<(RawFd, CString)>, SandboxError> {
    let mut trees = Vec::new();
    for node in DEV_NODES {
        let fd = detached_tree(Path::new(node), false, false)?;
        trees.push((fd.as_raw_fd(), cstr(node.as_bytes())?));
        keep.push(fd);
    }
    Ok(trees)
}

/// Starts `spec`'s command. The caller waits with [`Running::wait`]; dropping a `Running`
/// that was not waited for kills the sandbox.
pub fn start(spec: Spec) -> Result<Running, SandboxError> {
    let mut keep: Vec<OwnedFd> = Vec::new();
    let (root_dir, overlay, lower_paths, lower_fds) = prepare_root(&spec.root, &mut keep)?;
    let mounts = mount_plans(&spec.mounts, &mut keep)?;
    // The command, looked up in the sandbox's PATH.
    let argv0 = spec
        .argv
        .first()
        .cloned()
        .ok_or_else(|| SandboxError::Exec {
            command: String::new(),
            source: std::io::Error::other("no command given"),
        })?;
    let candidates = candidates(&argv0, &spec.env)?;
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| cstr(a.as_bytes()))
        .collect::<Result<_, _>>()?;
    let env: Vec<CString> = spec
        .env
        .iter()
        .map(|a| cstr(a.as_bytes()))
        .collect::<Result<_, _>>()?;
    let masked: Vec<CString> = MASKED
        .iter()
        .map(|p| cstr(p.as_bytes()))
        .collect::<Result<_, _>>()?;
    let read_only: Vec<CString> = READ_ONLY
        .iter()
        .map(|p| cstr(p.as_bytes()))
        .collect::<Result<_, _>>()?;
    let null = std::fs::File::open("/dev/null").map_err(|e| SandboxError::Prepare {
        what: "opening /dev/null".into(),
        source: e,
    })?;
    let stdin: OwnedFd = match spec.stdin {
        Some(fd) => fd,
        None => null.into(),
    };
    // The status pipe: the child writes (step, errno) on failure; close-on-exec otherwise.
    let (status_r, status_w) = pipe().map_err(|source| SandboxError::Prepare {
        what: "creating a pipe".into(),
        source,
    })?;
    // With the NAT: the child waits on this before it starts the command (unless it joins a
    // namespace whose NAT is running already).
    let shared = spec
        .shared_network
        .as_ref()
        .filter(|_| spec.network == Network::Nat);
    let go = if spec.network == Network::Nat && shared.is_none() {
        Some(pipe().map_err(|source| SandboxError::Prepare {
            what: "creating a pipe".into(),
            source,
        })?)
    } else {
        None
    };
    let (drop_caps, keep_mask) = capabilities(cap_last());
    let console = if spec.tty {
        Some(console_pair()?)
    } else {
        None
    };
    let dev_trees = dev_trees(&mut keep)?;
    let mut keep_fds: Vec<RawFd> = keep.iter().map(AsRawFd::as_raw_fd).collect();
    if let Some((_, theirs)) = &console {
        keep_fds.push(theirs.as_raw_fd());
    }
    if let Some((r, _)) = &go {
        keep_fds.push(r.as_raw_fd());
    }
    if let Some(s) = shared {
        keep_fds.push(s.fd().as_raw_fd());
    }
    keep_fds.extend([
        stdin.as_raw_fd(),
        spec.stdout.as_raw_fd(),
        spec.stderr.as_raw_fd(),
        status_w.as_raw_fd(),
    ]);
    keep_fds.sort_unstable();
    keep_fds.dedup();
    let plan = child::Plan {
        keep_fds,
        root: cstr(root_dir.as_os_str().as_bytes())?,
        overlay,
        dev_trees,
        lower_paths,
        lower_fds,
        mounts,
        masked,
        read_only,
        hostname: cstr(spec.hostname.as_bytes())?,
        network_none: spec.network == Network::None,
        cwd: cstr(spec.cwd.as_bytes())?,
        cwd_parents: ancestors(&spec.cwd)
            .iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<Result<_, _>>()?,
        uid: spec.user.uid,
        gid: spec.user.gid,
        groups: spec.user.groups.clone(),
        candidates,
        argv,
        env,
        stdin: stdin.as_raw_fd(),
        stdout: spec.stdout.as_raw_fd(),
        stderr: spec.stderr.as_raw_fd(),
        status: status_w.as_raw_fd(),
        tty: spec.tty,
        init: spec.init,
        console: console
            .as_ref()
            .map_or(-1, |(_, theirs)| theirs.as_raw_fd()),
        drop_caps,
        keep_mask,
        go: go.as_ref().map_or(-1, |(r, _)| r.as_raw_fd()),
        netns: shared.map_or(-1, |s| s.fd().as_raw_fd()),
        seccomp: if spec.seccomp {
            Some(
                seccomp::default_filter(keep_mask).map_err(|e| SandboxError::Prepare {
                    what: "compiling the seccomp profile".into(),
                    source: std::io::Error::other(e),
                })?,
            )
        } else {
            None
        },
    };
    let mut flags =
        libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    if spec.network != Network::Host && shared.is_none() {
        flags |= libc::CLONE_NEWNET;
    }
    let pid = child::spawn(&plan, flags).map_err(|e| SandboxError::Prepare {
        what: "creating the sandbox's namespaces (clone)".into(),
        source: e,
    })?;
    // The NAT attaches while the child sets up its mounts; the child waits for the go
    // before it starts the command.
    let nat = match go {
        Some((go_r, go_w)) => {
            drop(go_r);
            match nat::attach(pid) {
                Ok(n) => {
                    // SAFETY: one byte from a valid buffer to a pipe we own.
                    unsafe { libc::write(go_w.as_raw_fd(), b"1".as_ptr().cast(), 1) };
                    Some(n)
                }
                Err(e) => {
                    // SAFETY: our child, not yet waited for.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                        libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL);
                    }
                    return Err(SandboxError::Prepare {
                        what: "giving the sandbox its network".into(),
                        source: e,
                    });
                }
            }
        }
        None => None,
    };
    drop(status_w);
    drop(keep);
    drop(stdin);
    drop(spec.stdout);
    drop(spec.stderr);
    let terminal = match console {
        Some((ours, theirs)) => {
            drop(theirs);
            // None when the child failed first; wait() reports why.
            recv_fd(&ours)
        }
        None => None,
    };
    Ok(Running {
        pid,
        status: status_r,
        command: argv0,
        terminal,
        nat,
        waited: false,
    })
}

/// Receives one descriptor sent with SCM_RIGHTS.
fn recv_fd(sock: &OwnedFd) -> Option<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; 4];
    // SAFETY: msghdr points at buffers that outlive the call; CMSG_* read within them.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control);
        if libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) != 1 {
            return None;
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return None;
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
        Some(OwnedFd::from_raw_fd(fd))
    }
}

impl Running {
    /// The terminal's master side (with [`Spec::tty`]): what the command writes is read here,
    /// what is written here is its input.
    pub fn take_terminal(&mut self) -> Option<OwnedFd> {
        self.terminal.take()
    }

    /// PID 1 of the sandbox, as the host sees it.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `signal` to the sandbox's PID 1, which passes INT, TERM, HUP, QUIT, USR1 and USR2
    /// on to the command (KILL ends the sandbox).
    pub fn signal(&self, signal: i32) {
        if !self.waited && self.pid > 0 {
            // SAFETY: kill has no memory preconditions; pid is our child until waited for.
            unsafe { libc::kill(self.pid, signal) };
        }
    }

    /// Waits for the command: its exit code, or 128 + the signal that ended it.
    pub fn wait(mut self) -> Result<i32, SandboxError> {
        // First: did the command start? The pipe closes at exec, or carries an error.
        let mut buf = [0u8; 8];
        let mut got = 0;
        while got < buf.len() {
            // SAFETY: buf has room for the rest.
            let n = unsafe {
                libc::read(
                    self.status.as_raw_fd(),
                    buf[got..].as_mut_ptr().cast(),
                    buf.len() - got,
                )
            };
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            if n <= 0 {
                break;
            }
            got += n as usize;
        }
        let code = self.reap();
        if got == buf.len() {
            let step = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
            let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
            let source = std::io::Error::from_raw_os_error(errno);
            return Err(if step == child::STEP_EXEC {
                SandboxError::Exec {
                    command: std::mem::take(&mut self.command),
                    source,
                }
            } else {
                SandboxError::Setup {
                    step: child::step_name(step).to_owned(),
                    source,
                }
            });
        }
        Ok(code)
    }

    fn reap(&mut self) -> i32 {
        let mut st = 0;
        loop {
            // SAFETY: st is a valid out-pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut st, libc::__WALL) };
            if r == self.pid {
                break;
            }
            if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return 255;
            }
        }
        self.waited = true;
        self.nat = None;
        if libc::WIFEXITED(st) {
            libc::WEXITSTATUS(st)
        } else if libc::WIFSIGNALED(st) {
            128 + libc::WTERMSIG(st)
        } else {
            255
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.waited {
            self.signal(libc::SIGKILL);
            self.reap();
        }
    }
}

/// Runs `spec` to the end: the exit code.
pub fn run(spec: Spec) -> Result<i32, SandboxError> {
    start(spec)?.wait()
}

/// `/etc/hosts` (with `extra_hosts`, docker's `--add-host` as (name, address)),
/// `/etc/hostname` and `/etc/resolv.conf` for a sandbox named `hostname` on `network`:
/// written into `dir`, as bind mounts. resolv.conf is the host's; with [`Network::Nat`] its
/// name servers are replaced by the NAT's forwarder (which asks the host's, loopback ones
/// included).
pub fn etc_files(
    dir: &Path,
    hostname: &str,
    network: Network,
    extra_hosts: &[(String, String)],
) -> std::io::Result<Vec<Mount>> {
    let mut hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.0.1\t{hostname}\n"
    );
    for (name, address) in extra_hosts {
        hosts.push_str(&format!("{address}\t{name}\n"));
    }
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let resolv = if network == Network::Nat {
        let mut out: String = host_resolv
            .lines()
            .filter(|l| !l.trim_start().starts_with("nameserver"))
            .map(|l| format!("{l}\n"))
            .collect();
        out.push_str(&format!("nameserver {}\n", nat::DNS));
        out
    } else {
        host_resolv
    };
    let files = [
        ("hosts", hosts.into_bytes()),
        ("hostname", format!("{hostname}\n").into_bytes()),
        ("resolv.conf", resolv.into_bytes()),
    ];
    let mut mounts = Vec::new();
    for (name, content) in files {
        let source = dir.join(name);
        std::fs::write(&source, content)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", source.display())))?;
        mounts.push(Mount::Bind {
            source,
            target: format!("/etc/{name}"),
            readonly: false,
        });
    }
    Ok(mounts)
}

/// docker's `--add-host NAME:ADDRESS` (or `NAME=ADDRESS`): (name, address); the address
/// must be an IP address (IPv6 ones may be in brackets).
pub fn parse_host_entry(spec: &str) -> Result<(String, String), String> {
    let (name, address) = spec
        .split_once(['=', ':'])
        .ok_or_else(|| format!("{spec:?}: expected NAME:ADDRESS"))?;
    let address = address.trim_start_matches('[').trim_end_matches(']');
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(format!("{spec:?}: {name:?} is not a host name"));
    }
    let ip: std::net::IpAddr = address
        .parse()
        .map_err(|_| format!("{spec:?}: {address:?} is not an IP address"))?;
    Ok((name.to_owned(), ip.to_string()))
}

/// A pipe: (read end, write end), close-on-exec.
pub fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut p = [0; 2];
    // SAFETY: p has room for two descriptors.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) })
}

#[cfg(test)]
mod tests;
