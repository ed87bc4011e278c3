//! The sandbox's side of `clone(2)`. Everything here runs in a copy of a multi-threaded
//! process, so it only makes system calls on data the parent prepared: no allocation, no
//! locks, no glibc wrappers that talk to other threads (`setuid` and friends are raw system
//! calls for that reason). A failure writes `(step, errno)` to the status pipe and exits.
//!
//! [`pid1`] is a sequence of steps, each a function with its own contract. The steps that
//! build the sandbox's mount tree make their system calls through [`Sys`]: [`Kernel`] makes
//! them, and the tests run the same steps against a recorder (youki's pattern), so the order
//! and flags of every mount are checked without root.

use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_ulong};
use std::sync::atomic::{AtomicI32, Ordering};

/// One mount inside, prepared.
pub(super) struct MountPlan {
    /// A detached mount tree to attach (`move_mount`), or -1 to mount `source`.
    pub tree: c_int,
    pub source: CString,
    pub fstype: Option<CString>,
    pub data: Option<CString>,
    /// The target's ancestors and the target, outermost first.
    pub parents: Vec<CString>,
    pub is_dir: bool,
    pub flags: c_ulong,
    pub readonly: bool,
}

/// Everything the child needs, prepared by the parent.
pub(super) struct Plan {
    /// The descriptors the child needs, sorted; every other is closed at once, so that no
    /// file another thread is writing stays open here (exec would fail with ETXTBSY).
    pub keep_fds: Vec<c_int>,
    pub root: CString,
    pub overlay: Option<CString>,
    /// Detached mounts of the host's device nodes, and where each goes in /dev.
    pub dev_trees: Vec<(c_int, CString)>,
    /// The overlay's lower directories, and the descriptor number each must be opened on.
    pub lower_paths: Vec<CString>,
    pub lower_fds: Vec<c_int>,
    pub mounts: Vec<MountPlan>,
    pub masked: Vec<CString>,
    pub read_only: Vec<CString>,
    pub hostname: CString,
    pub network_none: bool,
    pub cwd: CString,
    pub cwd_parents: Vec<CString>,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub candidates: Vec<CString>,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    pub stdin: c_int,
    pub stdout: c_int,
    pub stderr: c_int,
    pub status: c_int,
    pub tty: bool,
    /// PID 1 stays ours (reaping, forwarding signals) and the command runs as PID 2.
    pub init: bool,
    /// With `tty`: a socket to send the terminal's master side back on.
    pub console: c_int,
    pub drop_caps: Vec<u32>,
    pub keep_mask: u64,
    /// The seccomp program the command runs under, if any.
    pub seccomp: Option<&'static [libc::sock_filter]>,
    /// A pipe to wait on (one byte) before the command starts: the network is being set up
    /// from outside. -1: none.
    pub go: c_int,
    /// A network namespace to join (set up already). -1: none.
    pub netns: c_int,
}

const STEP_PRIVATE: u32 = 1;
pub(super) const STEP_ROOT: u32 = 2;
const STEP_PIVOT: u32 = 3;
const STEP_PROC: u32 = 4;
const STEP_DEV: u32 = 5;
const STEP_MOUNT: u32 = 6;
const STEP_HOSTNAME: u32 = 7;
const STEP_FORK: u32 = 8;
const STEP_CAPS: u32 = 9;
const STEP_USER: u32 = 10;
const STEP_CWD: u32 = 11;
const STEP_TTY: u32 = 12;
const STEP_SECCOMP: u32 = 13;
const STEP_NETWORK: u32 = 14;
/// The command could not be executed.
pub(super) const STEP_EXEC: u32 = 99;

/// What a step was, for errors.
pub(super) fn step_name(step: u32) -> &'static str {
    match step {
        STEP_PRIVATE => "making the mount namespace private",
        STEP_ROOT => "mounting the root",
        STEP_PIVOT => "entering the root (pivot_root)",
        STEP_PROC => "mounting /proc",
        STEP_DEV => "making /dev",
        STEP_MOUNT => "mounting into the sandbox",
        STEP_HOSTNAME => "setting the hostname",
        STEP_FORK => "starting the command's process",
        STEP_CAPS => "dropping capabilities",
        STEP_USER => "switching to the image's user",
        STEP_CWD => "entering the working directory",
        STEP_TTY => "making the terminal the controlling one",
        STEP_SECCOMP => "installing the seccomp filter",
        STEP_NETWORK => "joining or waiting for the network",
        _ => "setting up",
    }
}

/// The command's pid, as PID 1 sees it, for forwarding signals.
static MAIN: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: c_int) {
    let pid = MAIN.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

const FORWARDED: [c_int; 7] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

/// Clones the sandbox's PID 1 in new namespaces (`flags`); returns its pid.
pub(super) fn spawn(plan: &Plan, flags: c_int) -> std::io::Result<libc::pid_t> {
    let mut argv: Vec<*const c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut env: Vec<*const c_char> = plan.env.iter().map(|a| a.as_ptr()).collect();
    env.push(std::ptr::null());
    let groups: Vec<libc::gid_t> = plan.groups.clone();
    let clone_flags = clone_flags(flags)?;
    // SAFETY: a fork-like clone (no new stack): the child gets a copy of this memory and runs
    // `pid1`, which never returns and only makes system calls on data prepared above.
    let pid =
        unsafe { libc::syscall(libc::SYS_clone, clone_flags, 0usize, 0usize, 0usize, 0usize) };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: we are the child of a fork-like clone; see above.
        unsafe { pid1(plan, &argv, &env, &groups) }
    }
    child_pid(pid)
}

/// `clone(2)`'s flags with SIGCHLD as the exit signal. Flags that do not convert are refused:
/// falling back to 0 would start the sandbox in no namespaces at all.
pub(super) fn clone_flags(flags: c_int) -> std::io::Result<c_ulong> {
    c_ulong::try_from(flags | libc::SIGCHLD)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

/// The pid `clone(2)` returned to the parent. Anything but a positive pid is an error: a -1
/// reaching kill(2) would signal every process.
pub(super) fn child_pid(pid: libc::c_long) -> std::io::Result<libc::pid_t> {
    libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| std::io::Error::other(format!("clone returned pid {pid}")))
}

/// A step that failed, and the system's error number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Failure {
    /// One of the `STEP_` numbers.
    pub step: u32,
    /// `errno` when it failed.
    pub errno: c_int,
}

impl Failure {
    /// `step` failed with the calling thread's `errno`.
    fn at(step: u32) -> Failure {
        Failure {
            step,
            errno: errno(),
        }
    }
}

/// Writes `failure` to the status pipe and exits.
fn fail(status: c_int, failure: Failure) -> ! {
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&failure.step.to_ne_bytes());
    buf[4..].copy_from_slice(&failure.errno.to_ne_bytes());
    // SAFETY: buf is valid for 8 bytes; a short or failed write only loses the report.
    unsafe { libc::write(status, buf.as_ptr().cast(), buf.len()) };
    // SAFETY: _exit ends the process without running anything of the parent's copy.
    unsafe { libc::_exit(127) }
}

fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The system calls the mount steps make. Every path is a NUL-terminated C string; an error is
/// `errno`.
pub(super) trait Sys {
    /// `mount(2)`.
    fn mount(
        &mut self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: c_ulong,
        data: Option<&CStr>,
    ) -> Result<(), c_int>;
    /// `move_mount(2)` of a detached tree onto `target`.
    fn attach(&mut self, tree: c_int, target: &CStr) -> Result<(), c_int>;
    /// `mkdir(2)`; a directory that is there already is no error to the steps.
    fn mkdir(&mut self, path: &CStr, mode: libc::mode_t);
    /// Creates an empty file (not following a final link) to mount over.
    fn create_file(&mut self, path: &CStr, mode: libc::mode_t) -> Result<(), c_int>;
    /// `symlink(2)`.
    fn symlink(&mut self, target: &CStr, link: &CStr);
    /// `chdir(2)`.
    fn chdir(&mut self, path: &CStr) -> Result<(), c_int>;
    /// `pivot_root(".", ".")` then the old root detached: the current directory becomes `/`.
    fn pivot_here(&mut self) -> Result<(), c_int>;
}

/// [`Sys`] as system calls.
pub(super) struct Kernel;

/// `Ok` when a system call returned 0, else the errno.
fn check(r: impl Into<libc::c_long>) -> Result<(), c_int> {
    if r.into() == 0 { Ok(()) } else { Err(errno()) }
}

fn ptr(s: Option<&CStr>) -> *const c_char {
    s.map_or(std::ptr::null(), CStr::as_ptr)
}

impl Sys for Kernel {
    fn mount(
        &mut self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: c_ulong,
        data: Option<&CStr>,
    ) -> Result<(), c_int> {
        // SAFETY: every pointer is null or a NUL-terminated string borrowed for the call.
        check(unsafe {
            libc::mount(
                ptr(source),
                target.as_ptr(),
                ptr(fstype),
                flags,
                ptr(data).cast(),
            )
        })
    }

    fn attach(&mut self, tree: c_int, target: &CStr) -> Result<(), c_int> {
        if attach(tree, target) {
            Ok(())
        } else {
            Err(errno())
        }
    }

    fn mkdir(&mut self, path: &CStr, mode: libc::mode_t) {
        // SAFETY: a NUL-terminated path borrowed for the call.
        unsafe { libc::mkdir(path.as_ptr(), mode) };
    }

    fn create_file(&mut self, path: &CStr, mode: libc::mode_t) -> Result<(), c_int> {
        // SAFETY: a NUL-terminated path; the descriptor is ours and closed at once.
        unsafe {
            let fd = libc::open(
                path.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                mode,
            );
            if fd < 0 {
                return Err(errno());
            }
            libc::close(fd);
        }
        Ok(())
    }

    fn symlink(&mut self, target: &CStr, link: &CStr) {
        // SAFETY: NUL-terminated paths borrowed for the call.
        unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) };
    }

    fn chdir(&mut self, path: &CStr) -> Result<(), c_int> {
        // SAFETY: a NUL-terminated path borrowed for the call.
        check(unsafe { libc::chdir(path.as_ptr()) })
    }

    fn pivot_here(&mut self) -> Result<(), c_int> {
        // SAFETY: static NUL-terminated paths.
        check(unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) })?;
        // SAFETY: a static NUL-terminated path.
        check(unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) })
    }
}

/// Closes every descriptor but `keep` (sorted), so that no file another thread of the parent
/// is writing stays open here (exec would fail with ETXTBSY).
///
/// # Safety
/// Only in the child of [`spawn`]'s clone: descriptors the parent's copy of memory still
/// names as owned (`OwnedFd`s, files) are closed under them, so nothing of the parent's may
/// run in this process afterwards.
unsafe fn close_all_but(keep: &[c_int]) {
    let mut from: libc::c_uint = 0;
    for &fd in keep {
        let fd = fd as libc::c_uint;
        if fd > from {
            // SAFETY: see the function's contract.
            unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0u32) };
        }
        from = fd + 1;
    }
    // SAFETY: see the function's contract.
    unsafe { libc::syscall(libc::SYS_close_range, from, libc::c_uint::MAX, 0u32) };
}

/// Joins the network namespace the sandbox shares (first, so that sysfs shows it).
fn join_network(netns: c_int) -> Result<(), Failure> {
    if netns < 0 {
        return Ok(());
    }
    // SAFETY: setns on a descriptor the plan hands over; closed once joined.
    unsafe {
        if libc::setns(netns, libc::CLONE_NEWNET) != 0 {
            return Err(Failure::at(STEP_NETWORK));
        }
        libc::close(netns);
    }
    Ok(())
}

/// Reopens the overlay's lower directories on the descriptor numbers the overlay options name
/// (`/proc/self/fd/N`), from inside the new mount namespace.
fn reopen_lowers(plan: &Plan) -> Result<(), Failure> {
    for (path, &want) in plan.lower_paths.iter().zip(&plan.lower_fds) {
        // SAFETY: a NUL-terminated path; `want` is a number the child closed (close_all_but)
        // and reserves for this directory.
        unsafe {
            let fd = libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            );
            if fd < 0 || libc::dup3(fd, want, libc::O_CLOEXEC) < 0 {
                return Err(Failure::at(STEP_ROOT));
            }
            libc::close(fd);
        }
    }
    Ok(())
}

/// Mounts the root (an overlay with options `overlay`, or a bind of the directory `root`,
/// `nodev` either way) and makes it `/` with a fresh /proc: after this, every path is inside
/// the root and the host's tree is gone.
pub(super) fn enter_root(
    sys: &mut impl Sys,
    root: &CStr,
    overlay: Option<&CStr>,
) -> Result<(), Failure> {
    let fail = |step| move |errno| Failure { step, errno };
    sys.mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)
        .map_err(fail(STEP_PRIVATE))?;
    match overlay {
        Some(opts) => sys.mount(
            Some(c"overlay"),
            root,
            Some(c"overlay"),
            libc::MS_NODEV,
            Some(opts),
        ),
        None => sys
            .mount(Some(root), root, None, libc::MS_BIND | libc::MS_REC, None)
            .and_then(|()| {
                sys.mount(
                    None,
                    root,
                    None,
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NODEV,
                    None,
                )
            }),
    }
    .map_err(fail(STEP_ROOT))?;
    sys.chdir(root)
        .and_then(|()| sys.pivot_here())
        .and_then(|()| sys.chdir(c"/"))
        .map_err(fail(STEP_PIVOT))?;
    sys.mkdir(c"/proc", 0o555);
    sys.mount(
        Some(c"proc"),
        c"/proc",
        Some(c"proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
    .map_err(fail(STEP_PROC))
}

/// A minimal /dev on a `nodev` tmpfs: the host's null, zero, full, random, urandom and tty
/// attached from detached mounts, devpts, shm, mqueue and the fd links.
pub(super) fn make_dev(sys: &mut impl Sys, nodes: &[(c_int, CString)]) -> Result<(), Failure> {
    let fail = |errno| Failure {
        step: STEP_DEV,
        errno,
    };
    sys.mkdir(c"/dev", 0o755);
    // nodev: a node made here (CAP_MKNOD is in docker's set) cannot be opened.
    sys.mount(
        Some(c"tmpfs"),
        c"/dev",
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_STRICTATIME,
        Some(c"mode=755,size=65536k"),
    )
    .map_err(fail)?;
    for (tree, path) in nodes {
        sys.create_file(path, 0o666).map_err(fail)?;
        sys.attach(*tree, path).map_err(fail)?;
    }
    sys.mkdir(c"/dev/pts", 0o755);
    sys.mount(
        Some(c"devpts"),
        c"/dev/pts",
        Some(c"devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(c"newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )
    .map_err(fail)?;
    sys.symlink(c"pts/ptmx", c"/dev/ptmx");
    sys.mkdir(c"/dev/shm", 0o1777);
    sys.mount(
        Some(c"shm"),
        c"/dev/shm",
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(c"mode=1777,size=65536k"),
    )
    .map_err(fail)?;
    sys.mkdir(c"/dev/mqueue", 0o755);
    sys.symlink(c"/proc/self/fd", c"/dev/fd");
    sys.symlink(c"/proc/self/fd/0", c"/dev/stdin");
    sys.symlink(c"/proc/self/fd/1", c"/dev/stdout");
    sys.symlink(c"/proc/self/fd/2", c"/dev/stderr");
    Ok(())
}

/// A terminal from the sandbox's own devpts (so ttyname works inside): the slave becomes the
/// standard streams, the master goes back to the parent over `plan.console`.
fn open_terminal(plan: &Plan) -> Result<(c_int, c_int, c_int), Failure> {
    if !plan.tty {
        return Ok((plan.stdin, plan.stdout, plan.stderr));
    }
    // SAFETY: ioctls on descriptors opened here, with the argument types they take.
    unsafe {
        let ptmx = libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        let unlock: c_int = 0;
        if ptmx < 0 || libc::ioctl(ptmx, libc::TIOCSPTLCK, &unlock) != 0 {
            return Err(Failure::at(STEP_TTY));
        }
        let slave = libc::ioctl(ptmx, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY);
        if slave < 0 || !send_fd(plan.console, ptmx) {
            return Err(Failure::at(STEP_TTY));
        }
        libc::close(ptmx);
        libc::fchown(slave, plan.uid, u32::MAX);
        Ok((slave, slave, slave))
    }
}

/// Read-only sysfs, as docker gives; not essential, so a failure is ignored.
pub(super) fn mount_sysfs(sys: &mut impl Sys) {
    sys.mkdir(c"/sys", 0o555);
    let _ = sys.mount(
        Some(c"sysfs"),
        c"/sys",
        Some(c"sysfs"),
        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    );
}

/// The plan's mounts (binds, caches, tmpfs, secrets, /etc files): each target and its
/// missing parents made first (a file when the source is one), then a detached tree attached
/// or a mount made, read-only by a remount when asked.
pub(super) fn mount_all(sys: &mut impl Sys, mounts: &[MountPlan]) -> Result<(), Failure> {
    let fail = |errno| Failure {
        step: STEP_MOUNT,
        errno,
    };
    for m in mounts {
        let n = m.parents.len();
        for (i, p) in m.parents.iter().enumerate() {
            if i + 1 < n || m.is_dir {
                sys.mkdir(p, 0o755);
            } else {
                // Made if missing; a failure shows in the mount below.
                let _ = sys.create_file(p, 0o644);
            }
        }
        let Some(target) = m.parents.last() else {
            continue;
        };
        if m.tree >= 0 {
            sys.attach(m.tree, target).map_err(fail)?;
            continue;
        }
        sys.mount(
            Some(&m.source),
            target,
            m.fstype.as_deref(),
            m.flags,
            m.data.as_deref(),
        )
        .map_err(fail)?;
        if m.readonly {
            sys.mount(
                None,
                target,
                None,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC,
                None,
            )
            .map_err(fail)?;
        }
    }
    Ok(())
}

/// docker's masked paths (/dev/null over a file, an empty read-only tmpfs over a directory)
/// and read-only paths (bound onto themselves, remounted read-only, nosuid, nodev, noexec).
/// A path the image lacks is skipped.
pub(super) fn mask_paths(sys: &mut impl Sys, masked: &[CString], read_only: &[CString]) {
    for p in masked {
        if sys.mount(Some(c"/dev/null"), p, None, libc::MS_BIND, None) == Err(libc::ENOTDIR) {
            let _ = sys.mount(Some(c"tmpfs"), p, Some(c"tmpfs"), libc::MS_RDONLY, None);
        }
    }
    for p in read_only {
        if sys
            .mount(Some(p), p, None, libc::MS_BIND | libc::MS_REC, None)
            .is_ok()
        {
            let _ = sys.mount(
                Some(p),
                p,
                None,
                libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_REC
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                None,
            );
        }
    }
}

fn set_hostname(name: &CStr) -> Result<(), Failure> {
    let len = name.to_bytes().len();
    // SAFETY: the name's bytes, valid for `len`.
    if len > 0 && unsafe { libc::sethostname(name.as_ptr(), len) } != 0 {
        return Err(Failure::at(STEP_HOSTNAME));
    }
    Ok(())
}

/// Waits for one byte on `go`: the parent sets the network up from outside first.
fn wait_for_network(go: c_int) -> Result<(), Failure> {
    if go < 0 {
        return Ok(());
    }
    let mut b = 0u8;
    loop {
        // SAFETY: reads one byte into `b`.
        let n = unsafe { libc::read(go, (&mut b as *mut u8).cast(), 1) };
        if n == 1 {
            break;
        }
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        return Err(Failure::at(STEP_NETWORK));
    }
    // SAFETY: the plan hands `go` over to the child.
    unsafe { libc::close(go) };
    Ok(())
}

/// Makes `stdio` descriptors 0, 1 and 2 and closes every other but the status pipe `st`.
///
/// # Safety
/// As [`close_all_but`]: only in the sandbox's child.
unsafe fn set_stdio(stdio: (c_int, c_int, c_int), st: c_int) -> Result<(), Failure> {
    // SAFETY: see the function's contract; the descriptors are the plan's.
    unsafe {
        let (i, o, e) = (
            libc::fcntl(stdio.0, libc::F_DUPFD_CLOEXEC, 10),
            libc::fcntl(stdio.1, libc::F_DUPFD_CLOEXEC, 10),
            libc::fcntl(stdio.2, libc::F_DUPFD_CLOEXEC, 10),
        );
        if i < 0
            || o < 0
            || e < 0
            || libc::dup2(i, 0) < 0
            || libc::dup2(o, 1) < 0
            || libc::dup2(e, 2) < 0
        {
            return Err(Failure::at(STEP_FORK));
        }
        if st <= 2 {
            return Err(Failure::at(STEP_FORK));
        }
        let max = c_ulong::MAX as libc::c_uint;
        libc::syscall(libc::SYS_close_range, 3u32, (st - 1) as libc::c_uint, 0u32);
        libc::syscall(libc::SYS_close_range, (st + 1) as libc::c_uint, max, 0u32);
    }
    Ok(())
}

/// The sandbox's PID 1: builds the sandbox step by step, then runs the command as PID 2 and
/// reaps (or, without `init`, becomes the command).
///
/// # Safety
/// Only as the child of [`spawn`]'s fork-like clone, with `argv`, `env` and `groups` the
/// NUL-terminated arrays `spawn` prepared from `plan`: the process is a copy of a
/// multi-threaded one, so nothing may allocate, lock or run the parent's code, and it never
/// returns.
unsafe fn pid1(
    plan: &Plan,
    argv: &[*const c_char],
    env: &[*const c_char],
    groups: &[libc::gid_t],
) -> ! {
    let st = plan.status;
    // SAFETY: we are that child (the function's contract).
    unsafe { close_all_but(&plan.keep_fds) };
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0) };
    let sys = &mut Kernel;
    let built = (|| {
        join_network(plan.netns)?;
        reopen_lowers(plan)?;
        enter_root(sys, &plan.root, plan.overlay.as_deref())?;
        make_dev(sys, &plan.dev_trees)?;
        let stdio = open_terminal(plan)?;
        mount_sysfs(sys);
        mount_all(sys, &plan.mounts)?;
        mask_paths(sys, &plan.masked, &plan.read_only);
        set_hostname(&plan.hostname)?;
        if plan.network_none {
            loopback_up();
        }
        wait_for_network(plan.go)?;
        for p in &plan.cwd_parents {
            sys.mkdir(p, 0o755);
        }
        // Nothing inside may open this process's /proc entries (exe, root, fds).
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
        // SAFETY: we are the sandbox's child (the function's contract).
        unsafe { set_stdio(stdio, st) }
    })();
    if let Err(f) = built {
        fail(st, f);
    }
    if !plan.init {
        // The command is PID 1 itself, as docker runs it without --init.
        // SAFETY: the function's contract, passed on.
        unsafe { command(plan, argv, env, groups, st) };
    }
    // SAFETY: the function's contract, passed on.
    unsafe { supervise(plan, argv, env, groups, st) }
}

/// PID 1 with `init`: forwards signals to the command (PID 2) and reaps every child until it
/// exits, then exits with its status (128 + N for a signal).
///
/// # Safety
/// As [`pid1`], after the sandbox is built.
unsafe fn supervise(
    plan: &Plan,
    argv: &[*const c_char],
    env: &[*const c_char],
    groups: &[libc::gid_t],
    st: c_int,
) -> ! {
    for sig in FORWARDED {
        // SAFETY: a zeroed sigaction is valid; `forward` only loads an atomic and calls kill.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    // SAFETY: a fork-like clone; the child runs `command`, which only execs.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        fail(st, Failure::at(STEP_FORK));
    }
    if pid == 0 {
        // SAFETY: the function's contract, passed on to the command's process.
        unsafe { command(plan, argv, env, groups, st) };
    }
    MAIN.store(pid as i32, Ordering::Relaxed);
    // SAFETY: the status pipe and the standard streams are the command's now.
    unsafe {
        libc::close(st);
        libc::close(0);
        libc::close(1);
        libc::close(2);
    }
    loop {
        let mut status = 0;
        // SAFETY: waitpid into a local.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r == pid as i32 {
            if libc::WIFEXITED(status) {
                // SAFETY: exits this process.
                unsafe { libc::_exit(libc::WEXITSTATUS(status)) };
            }
            if libc::WIFSIGNALED(status) {
                // SAFETY: exits this process.
                unsafe { libc::_exit(128 + libc::WTERMSIG(status)) };
            }
        } else if r < 0 && errno() != libc::EINTR {
            // SAFETY: exits this process.
            unsafe { libc::_exit(255) };
        }
    }
}

/// Attaches the detached mount `tree` (from `open_tree(2)`) at `target` (`move_mount(2)`).
fn attach(tree: c_int, target: &CStr) -> bool {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    // SAFETY: NUL-terminated paths borrowed for the call; a bad descriptor is an error.
    unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree,
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        ) == 0
    }
}

/// Sends descriptor `fd` over the unix socket `sock` (SCM_RIGHTS), without allocating.
fn send_fd(sock: c_int, fd: c_int) -> bool {
    // SAFETY: msghdr points at stack buffers that live through the call; the control buffer
    // is aligned (u64) and large enough for one descriptor.
    unsafe {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut control = [0u64; 4];
        let space = libc::CMSG_SPACE(size_of::<c_int>() as u32) as usize;
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return false;
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<c_int>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<c_int>(), fd);
        libc::sendmsg(sock, &msg, 0) == 1
    }
}

/// Brings `lo` up in a new network namespace.
fn loopback_up() {
    // SAFETY: ifreq is plain data; ioctl on a socket we own.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as c_char;
        req.ifr_name[1] = b'o' as c_char;
        if libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(sock, libc::SIOCSIFFLAGS, &mut req);
        }
        libc::close(sock);
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The command's process: signals reset, session, capabilities, user, directory, seccomp, then
/// exec of the first candidate path that runs.
///
/// # Safety
/// As [`pid1`]: only in the sandbox's child, after [`set_stdio`], with the arrays `spawn`
/// prepared.
unsafe fn command(
    plan: &Plan,
    argv: &[*const c_char],
    env: &[*const c_char],
    groups: &[libc::gid_t],
    st: c_int,
) -> ! {
    reset_signals();
    // SAFETY: setsid has no preconditions.
    unsafe { libc::setsid() };
    // SAFETY: TIOCSCTTY takes an integer.
    if plan.tty && unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        fail(st, Failure::at(STEP_TTY));
    }
    let ready = drop_privileges(plan, groups)
        .and_then(|()| {
            // SAFETY: a NUL-terminated path the plan keeps alive.
            if unsafe { libc::chdir(plan.cwd.as_ptr()) } != 0 {
                return Err(Failure::at(STEP_CWD));
            }
            // SAFETY: umask has no preconditions.
            unsafe { libc::umask(0o022) };
            Ok(())
        })
        // Last before exec (which the profile allows, as it does everything below), as runc
        // installs it.
        .and_then(|()| plan.seccomp.map_or(Ok(()), install_seccomp));
    if let Err(f) = ready {
        fail(st, f);
    }
    // SAFETY: argv and env are null-terminated arrays of strings `spawn` keeps alive (the
    // function's contract).
    let errno = unsafe { exec_first(&plan.candidates, argv, env) };
    fail(
        st,
        Failure {
            step: STEP_EXEC,
            errno,
        },
    )
}

/// Default dispositions for the signals PID 1 forwards (and SIGPIPE), nothing blocked.
fn reset_signals() {
    // SAFETY: zeroed sigaction and sigset_t are valid values; the calls only read them.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = libc::SIG_DFL;
        for sig in FORWARDED.iter().copied().chain([libc::SIGPIPE]) {
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

/// docker's capabilities (the bounding set dropped to them, then the sets), the image's user
/// and groups (raw system calls: glibc's wrappers would talk to threads this copy lacks), and
/// no new privileges.
fn drop_privileges(plan: &Plan, groups: &[libc::gid_t]) -> Result<(), Failure> {
    for cap in &plan.drop_caps {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, *cap as c_ulong, 0, 0, 0) } != 0
            && errno() != libc::EINVAL
        {
            return Err(Failure::at(STEP_CAPS));
        }
    }
    let mut header = CapHeader {
        version: 0x2008_0522,
        pid: 0,
    };
    let low = (plan.keep_mask & 0xffff_ffff) as u32;
    let high = (plan.keep_mask >> 32) as u32;
    let data = [
        CapData {
            effective: low,
            permitted: low,
            inheritable: low,
        },
        CapData {
            effective: high,
            permitted: high,
            inheritable: high,
        },
    ];
    // SAFETY: capset reads a version-3 header and two data structs, as laid out above.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return Err(Failure::at(STEP_CAPS));
    }
    // SAFETY: setgroups reads `groups.len()` ids from the slice; the others take integers.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
            || libc::syscall(libc::SYS_setgid, plan.gid) != 0
            || libc::syscall(libc::SYS_setuid, plan.uid) != 0
        {
            return Err(Failure::at(STEP_USER));
        }
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(Failure::at(STEP_CAPS));
    }
    Ok(())
}

/// Installs the seccomp program the command runs under.
fn install_seccomp(filter: &'static [libc::sock_filter]) -> Result<(), Failure> {
    let prog = libc::sock_fprog {
        len: filter.len() as libc::c_ushort,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: the kernel copies the program `prog` points at; the filter is static.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0u32,
            &prog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        return Err(Failure::at(STEP_SECCOMP));
    }
    Ok(())
}

/// Execs the first of `candidates` that runs (PATH's directories in order); returns the errno
/// to report when none does: EACCES if one was found but not executable, else the first other
/// error, else ENOENT.
///
/// # Safety
/// `argv` and `env` are null-terminated arrays of NUL-terminated strings that outlive the call.
unsafe fn exec_first(
    candidates: &[CString],
    argv: &[*const c_char],
    env: &[*const c_char],
) -> c_int {
    let mut err = libc::ENOENT;
    for cand in candidates {
        let mut e = libc::ETXTBSY;
        // A file another process briefly holds open for writing: wait a little.
        for _ in 0..100 {
            // SAFETY: the function's contract; execve only returns on failure.
            unsafe { libc::execve(cand.as_ptr(), argv.as_ptr(), env.as_ptr()) };
            e = errno();
            if e != libc::ETXTBSY {
                break;
            }
            let pause = libc::timespec {
                tv_sec: 0,
                tv_nsec: 10_000_000,
            };
            // SAFETY: reads `pause`.
            unsafe { libc::nanosleep(&pause, std::ptr::null_mut()) };
        }
        match e {
            libc::ENOENT | libc::ENOTDIR => {}
            libc::EACCES => err = e,
            _ => {
                err = e;
                break;
            }
        }
    }
    err
}

#[cfg(test)]
mod tests {
    //! The mount steps run against a recorder: what the sandbox's mount tree is made of, in
    //! order, without root.
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Call {
        Mount(
            Option<String>,
            String,
            Option<String>,
            c_ulong,
            Option<String>,
        ),
        Attach(c_int, String),
        Mkdir(String, libc::mode_t),
        File(String),
        Symlink(String, String),
        Chdir(String),
        Pivot,
    }

    /// Records every call; a mount onto a target in `refuse` fails with its errno.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<Call>,
        refuse: Vec<(String, c_int)>,
    }

    fn text(s: &CStr) -> String {
        s.to_string_lossy().into_owned()
    }

    impl Sys for Recorder {
        fn mount(
            &mut self,
            source: Option<&CStr>,
            target: &CStr,
            fstype: Option<&CStr>,
            flags: c_ulong,
            data: Option<&CStr>,
        ) -> Result<(), c_int> {
            self.calls.push(Call::Mount(
                source.map(text),
                text(target),
                fstype.map(text),
                flags,
                data.map(text),
            ));
            match self.refuse.iter().find(|(t, _)| *t == text(target)) {
                Some((_, errno)) => Err(*errno),
                None => Ok(()),
            }
        }
        fn attach(&mut self, tree: c_int, target: &CStr) -> Result<(), c_int> {
            self.calls.push(Call::Attach(tree, text(target)));
            Ok(())
        }
        fn mkdir(&mut self, path: &CStr, mode: libc::mode_t) {
            self.calls.push(Call::Mkdir(text(path), mode));
        }
        fn create_file(&mut self, path: &CStr, _mode: libc::mode_t) -> Result<(), c_int> {
            self.calls.push(Call::File(text(path)));
            Ok(())
        }
        fn symlink(&mut self, target: &CStr, link: &CStr) {
            self.calls.push(Call::Symlink(text(target), text(link)));
        }
        fn chdir(&mut self, path: &CStr) -> Result<(), c_int> {
            self.calls.push(Call::Chdir(text(path)));
            Ok(())
        }
        fn pivot_here(&mut self) -> Result<(), c_int> {
            self.calls.push(Call::Pivot);
            Ok(())
        }
    }

    fn mount(source: Option<&str>, target: &str, fstype: Option<&str>, flags: c_ulong) -> Call {
        Call::Mount(
            source.map(str::to_owned),
            target.to_owned(),
            fstype.map(str::to_owned),
            flags,
            None,
        )
    }

    #[test]
    fn the_root_is_mounted_nodev_then_pivoted_into_before_proc() {
        let mut sys = Recorder::default();
        enter_root(&mut sys, c"/r", Some(c"lowerdir=/proc/self/fd/5")).unwrap();
        let proc_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        assert_eq!(
            sys.calls,
            [
                mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE),
                Call::Mount(
                    Some("overlay".into()),
                    "/r".into(),
                    Some("overlay".into()),
                    libc::MS_NODEV,
                    Some("lowerdir=/proc/self/fd/5".into())
                ),
                Call::Chdir("/r".into()),
                Call::Pivot,
                Call::Chdir("/".into()),
                Call::Mkdir("/proc".into(), 0o555),
                mount(Some("proc"), "/proc", Some("proc"), proc_flags),
            ]
        );
        // A directory root: bound onto itself, then made nodev.
        let mut sys = Recorder::default();
        enter_root(&mut sys, c"/r", None).unwrap();
        assert_eq!(
            sys.calls[1..3],
            [
                mount(Some("/r"), "/r", None, libc::MS_BIND | libc::MS_REC),
                mount(
                    None,
                    "/r",
                    None,
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NODEV
                ),
            ]
        );
    }

    #[test]
    fn a_root_that_does_not_mount_stops_before_the_pivot() {
        let mut sys = Recorder {
            refuse: vec![("/r".into(), libc::EINVAL)],
            ..Recorder::default()
        };
        let failed = enter_root(&mut sys, c"/r", Some(c"x")).unwrap_err();
        assert_eq!(
            failed,
            Failure {
                step: STEP_ROOT,
                errno: libc::EINVAL
            }
        );
        assert!(!sys.calls.contains(&Call::Pivot), "{:?}", sys.calls);
    }

    #[test]
    fn dev_is_a_nodev_tmpfs_with_the_hosts_nodes_attached() {
        let mut sys = Recorder::default();
        make_dev(&mut sys, &[(7, c"/dev/null".to_owned())]).unwrap();
        assert_eq!(sys.calls[0], Call::Mkdir("/dev".into(), 0o755));
        let Call::Mount(_, target, Some(fs), flags, _) = &sys.calls[1] else {
            panic!("{:?}", sys.calls[1])
        };
        assert_eq!((target.as_str(), fs.as_str()), ("/dev", "tmpfs"));
        assert!(flags & libc::MS_NODEV != 0 && flags & libc::MS_NOSUID != 0);
        assert_eq!(
            sys.calls[2..4],
            [
                Call::File("/dev/null".into()),
                Call::Attach(7, "/dev/null".into())
            ]
        );
        assert!(sys.calls.iter().any(|c| matches!(
            c,
            Call::Mount(_, t, Some(fs), _, Some(data))
                if t == "/dev/pts" && fs == "devpts" && data.starts_with("newinstance,")
        )));
        assert!(
            sys.calls
                .contains(&Call::Symlink("pts/ptmx".into(), "/dev/ptmx".into()))
        );
    }

    fn plan(parents: &[&CStr], is_dir: bool, tree: c_int, readonly: bool) -> MountPlan {
        MountPlan {
            tree,
            source: c"/host/src".to_owned(),
            fstype: None,
            data: None,
            parents: parents.iter().map(|p| (*p).to_owned()).collect(),
            is_dir,
            flags: libc::MS_BIND | libc::MS_REC,
            readonly,
        }
    }

    #[test]
    fn mounts_get_their_parents_then_a_read_only_remount() {
        let mut sys = Recorder::default();
        let mounts = [
            plan(&[c"/a", c"/a/b"], true, -1, true),
            plan(&[c"/etc", c"/etc/hosts"], false, -1, false),
            plan(&[c"/ctx"], true, 9, true),
        ];
        mount_all(&mut sys, &mounts).unwrap();
        let bind = libc::MS_BIND | libc::MS_REC;
        assert_eq!(
            sys.calls,
            [
                Call::Mkdir("/a".into(), 0o755),
                Call::Mkdir("/a/b".into(), 0o755),
                mount(Some("/host/src"), "/a/b", None, bind),
                mount(
                    None,
                    "/a/b",
                    None,
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC
                ),
                Call::Mkdir("/etc".into(), 0o755),
                Call::File("/etc/hosts".into()),
                mount(Some("/host/src"), "/etc/hosts", None, bind),
                // A detached tree is attached as it is (made read-only before it came).
                Call::Mkdir("/ctx".into(), 0o755),
                Call::Attach(9, "/ctx".into()),
            ]
        );
        let mut sys = Recorder {
            refuse: vec![("/a/b".into(), libc::ENOENT)],
            ..Recorder::default()
        };
        assert_eq!(
            mount_all(&mut sys, &mounts[..1]).unwrap_err(),
            Failure {
                step: STEP_MOUNT,
                errno: libc::ENOENT
            }
        );
    }

    #[test]
    fn masked_directories_get_an_empty_tmpfs_and_read_only_paths_a_remount() {
        let mut sys = Recorder {
            refuse: vec![
                ("/proc/acpi".into(), libc::ENOTDIR),
                ("/proc/missing".into(), libc::ENOENT),
            ],
            ..Recorder::default()
        };
        mask_paths(
            &mut sys,
            &[c"/proc/kcore".to_owned(), c"/proc/acpi".to_owned()],
            &[c"/proc/sys".to_owned(), c"/proc/missing".to_owned()],
        );
        let strict = libc::MS_BIND
            | libc::MS_REMOUNT
            | libc::MS_RDONLY
            | libc::MS_REC
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC;
        assert_eq!(
            sys.calls,
            [
                mount(Some("/dev/null"), "/proc/kcore", None, libc::MS_BIND),
                mount(Some("/dev/null"), "/proc/acpi", None, libc::MS_BIND),
                mount(Some("tmpfs"), "/proc/acpi", Some("tmpfs"), libc::MS_RDONLY),
                mount(
                    Some("/proc/sys"),
                    "/proc/sys",
                    None,
                    libc::MS_BIND | libc::MS_REC
                ),
                mount(Some("/proc/sys"), "/proc/sys", None, strict),
                // Not in the image: skipped after the bind fails.
                mount(
                    Some("/proc/missing"),
                    "/proc/missing",
                    None,
                    libc::MS_BIND | libc::MS_REC
                ),
            ]
        );
    }
}
