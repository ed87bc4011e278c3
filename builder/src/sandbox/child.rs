//! The sandbox's side of `clone(2)`. Everything here runs in a copy of a multi-threaded
//! process, so it only makes system calls on data the parent prepared: no allocation, no
//! locks, no glibc wrappers that talk to other threads (`setuid` and friends are raw system
//! calls for that reason). A failure writes `(step, errno)` to the status pipe and exits.

use std::ffi::CString;
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

/// Reports `step` with the current errno and exits.
unsafe fn fail(status: c_int, step: u32) -> ! {
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&step.to_ne_bytes());
    buf[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: buf is valid for 8 bytes; write and _exit are async-signal-safe.
    unsafe {
        libc::write(status, buf.as_ptr().cast(), buf.len());
        libc::_exit(127)
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

const NONE: *const c_char = std::ptr::null();

fn c(s: &'static [u8]) -> *const c_char {
    s.as_ptr().cast()
}

unsafe fn pid1(
    plan: &Plan,
    argv: &[*const c_char],
    env: &[*const c_char],
    groups: &[libc::gid_t],
) -> ! {
    let st = plan.status;
    // SAFETY (whole function): system calls on prepared, NUL-terminated strings and arrays.
    unsafe {
        let mut from: libc::c_uint = 0;
        for &fd in &plan.keep_fds {
            let fd = fd as libc::c_uint;
            if fd > from {
                libc::syscall(libc::SYS_close_range, from, fd - 1, 0u32);
            }
            from = fd + 1;
        }
        libc::syscall(libc::SYS_close_range, from, libc::c_uint::MAX, 0u32);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        // A network namespace to join: first, so that sysfs (mounted below) shows it.
        if plan.netns >= 0 {
            if libc::setns(plan.netns, libc::CLONE_NEWNET) != 0 {
                fail(st, STEP_NETWORK);
            }
            libc::close(plan.netns);
        }
        libc::umask(0);
        if libc::mount(
            NONE,
            c(b"/\0"),
            NONE,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            fail(st, STEP_PRIVATE);
        }
        let root = plan.root.as_ptr();
        for (path, &want) in plan.lower_paths.iter().zip(&plan.lower_fds) {
            let fd = libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            );
            if fd < 0 || libc::dup3(fd, want, libc::O_CLOEXEC) < 0 {
                fail(st, STEP_ROOT);
            }
            libc::close(fd);
        }
        let mounted = match &plan.overlay {
            Some(opts) => libc::mount(
                c(b"overlay\0"),
                root,
                c(b"overlay\0"),
                libc::MS_NODEV,
                opts.as_ptr().cast(),
            ),
            None => {
                if libc::mount(
                    root,
                    root,
                    NONE,
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ) == 0
                {
                    libc::mount(
                        NONE,
                        root,
                        NONE,
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NODEV,
                        std::ptr::null(),
                    )
                } else {
                    -1
                }
            }
        };
        if mounted != 0 {
            fail(st, STEP_ROOT);
        }
        if libc::chdir(root) != 0
            || libc::syscall(libc::SYS_pivot_root, c(b".\0"), c(b".\0")) != 0
            || libc::umount2(c(b".\0"), libc::MNT_DETACH) != 0
            || libc::chdir(c(b"/\0")) != 0
        {
            fail(st, STEP_PIVOT);
        }
        // From here on every path is inside the root: the host's tree is gone.
        libc::mkdir(c(b"/proc\0"), 0o555);
        if libc::mount(
            c(b"proc\0"),
            c(b"/proc\0"),
            c(b"proc\0"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ) != 0
        {
            fail(st, STEP_PROC);
        }
        make_dev(st, &plan.dev_trees);
        // A terminal from the sandbox's own devpts (so ttyname works inside): the slave
        // becomes the standard streams, the master goes back to the parent.
        let mut stdio = (plan.stdin, plan.stdout, plan.stderr);
        if plan.tty {
            let ptmx = libc::open(
                c(b"/dev/ptmx\0"),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            );
            let unlock: c_int = 0;
            if ptmx < 0 || libc::ioctl(ptmx, libc::TIOCSPTLCK, &unlock) != 0 {
                fail(st, STEP_TTY);
            }
            let slave = libc::ioctl(ptmx, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY);
            if slave < 0 || !send_fd(plan.console, ptmx) {
                fail(st, STEP_TTY);
            }
            libc::close(ptmx);
            libc::fchown(slave, plan.uid, u32::MAX);
            stdio = (slave, slave, slave);
        }
        libc::mkdir(c(b"/sys\0"), 0o555);
        // Read-only sysfs as docker gives; not essential, so a failure is ignored.
        libc::mount(
            c(b"sysfs\0"),
            c(b"/sys\0"),
            c(b"sysfs\0"),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        );
        for m in &plan.mounts {
            let n = m.parents.len();
            for (i, p) in m.parents.iter().enumerate() {
                if i + 1 < n || m.is_dir {
                    libc::mkdir(p.as_ptr(), 0o755);
                } else {
                    let fd = libc::open(
                        p.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                        0o644,
                    );
                    if fd >= 0 {
                        libc::close(fd);
                    }
                }
            }
            let Some(target) = m.parents.last() else {
                continue;
            };
            if m.tree >= 0 {
                if !attach(m.tree, target.as_ptr()) {
                    fail(st, STEP_MOUNT);
                }
                continue;
            }
            if libc::mount(
                m.source.as_ptr(),
                target.as_ptr(),
                m.fstype.as_ref().map_or(NONE, |f| f.as_ptr()),
                m.flags,
                m.data
                    .as_ref()
                    .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
            ) != 0
            {
                fail(st, STEP_MOUNT);
            }
            if m.readonly
                && libc::mount(
                    NONE,
                    target.as_ptr(),
                    NONE,
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC,
                    std::ptr::null(),
                ) != 0
            {
                fail(st, STEP_MOUNT);
            }
        }
        for p in &plan.masked {
            if libc::mount(
                c(b"/dev/null\0"),
                p.as_ptr(),
                NONE,
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
                && errno() == libc::ENOTDIR
            {
                libc::mount(
                    c(b"tmpfs\0"),
                    p.as_ptr(),
                    c(b"tmpfs\0"),
                    libc::MS_RDONLY,
                    std::ptr::null(),
                );
            }
        }
        for p in &plan.read_only {
            if libc::mount(
                p.as_ptr(),
                p.as_ptr(),
                NONE,
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ) == 0
            {
                libc::mount(
                    p.as_ptr(),
                    p.as_ptr(),
                    NONE,
                    libc::MS_BIND
                        | libc::MS_REMOUNT
                        | libc::MS_RDONLY
                        | libc::MS_REC
                        | libc::MS_NOSUID
                        | libc::MS_NODEV
                        | libc::MS_NOEXEC,
                    std::ptr::null(),
                );
            }
        }
        let host = plan.hostname.as_bytes();
        if !host.is_empty() && libc::sethostname(plan.hostname.as_ptr(), host.len()) != 0 {
            fail(st, STEP_HOSTNAME);
        }
        if plan.network_none {
            loopback_up();
        }
        if plan.go >= 0 {
            let mut b = 0u8;
            loop {
                let n = libc::read(plan.go, (&mut b as *mut u8).cast(), 1);
                if n == 1 {
                    break;
                }
                if n < 0 && errno() == libc::EINTR {
                    continue;
                }
                fail(st, STEP_NETWORK);
            }
            libc::close(plan.go);
        }
        for p in &plan.cwd_parents {
            libc::mkdir(p.as_ptr(), 0o755);
        }
        // Nothing inside may open this process's /proc entries (exe, root, fds).
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        // The standard streams, and no other descriptor but the status pipe.
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
            fail(st, STEP_FORK);
        }
        if st <= 2 {
            fail(st, STEP_FORK);
        }
        let max = c_ulong::MAX as libc::c_uint;
        libc::syscall(libc::SYS_close_range, 3u32, (st - 1) as libc::c_uint, 0u32);
        libc::syscall(libc::SYS_close_range, (st + 1) as libc::c_uint, max, 0u32);
        if !plan.init {
            // The command is PID 1 itself, as docker runs it without --init.
            command(plan, argv, env, groups, st);
        }
        for sig in FORWARDED {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
        let pid = libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        );
        if pid < 0 {
            fail(st, STEP_FORK);
        }
        if pid == 0 {
            command(plan, argv, env, groups, st);
        }
        MAIN.store(pid as i32, Ordering::Relaxed);
        libc::close(st);
        libc::close(0);
        libc::close(1);
        libc::close(2);
        loop {
            let mut status = 0;
            let r = libc::waitpid(-1, &mut status, 0);
            if r == pid as i32 {
                if libc::WIFEXITED(status) {
                    libc::_exit(libc::WEXITSTATUS(status));
                }
                if libc::WIFSIGNALED(status) {
                    libc::_exit(128 + libc::WTERMSIG(status));
                }
            } else if r < 0 && errno() != libc::EINTR {
                libc::_exit(255);
            }
        }
    }
}

/// A minimal /dev on a tmpfs: null, zero, full, random, urandom, tty, pts, shm and the fd links.
unsafe fn make_dev(st: c_int, nodes: &[(c_int, CString)]) {
    // SAFETY: system calls on static NUL-terminated strings and prepared descriptors.
    unsafe {
        libc::mkdir(c(b"/dev\0"), 0o755);
        // nodev: a node made here (CAP_MKNOD is in docker's set) cannot be opened.
        if libc::mount(
            c(b"tmpfs\0"),
            c(b"/dev\0"),
            c(b"tmpfs\0"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_STRICTATIME,
            c(b"mode=755,size=65536k\0").cast(),
        ) != 0
        {
            fail(st, STEP_DEV);
        }
        for (tree, path) in nodes {
            let fd = libc::open(
                path.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o666,
            );
            if fd < 0 {
                fail(st, STEP_DEV);
            }
            libc::close(fd);
            if !attach(*tree, path.as_ptr()) {
                fail(st, STEP_DEV);
            }
        }
        libc::mkdir(c(b"/dev/pts\0"), 0o755);
        if libc::mount(
            c(b"devpts\0"),
            c(b"/dev/pts\0"),
            c(b"devpts\0"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            c(b"newinstance,ptmxmode=0666,mode=0620,gid=5\0").cast(),
        ) != 0
        {
            fail(st, STEP_DEV);
        }
        libc::symlink(c(b"pts/ptmx\0"), c(b"/dev/ptmx\0"));
        libc::mkdir(c(b"/dev/shm\0"), 0o1777);
        if libc::mount(
            c(b"shm\0"),
            c(b"/dev/shm\0"),
            c(b"tmpfs\0"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c(b"mode=1777,size=65536k\0").cast(),
        ) != 0
        {
            fail(st, STEP_DEV);
        }
        libc::mkdir(c(b"/dev/mqueue\0"), 0o755);
        libc::symlink(c(b"/proc/self/fd\0"), c(b"/dev/fd\0"));
        libc::symlink(c(b"/proc/self/fd/0\0"), c(b"/dev/stdin\0"));
        libc::symlink(c(b"/proc/self/fd/1\0"), c(b"/dev/stdout\0"));
        libc::symlink(c(b"/proc/self/fd/2\0"), c(b"/dev/stderr\0"));
    }
}

/// Attaches the detached mount `tree` (from `open_tree(2)`) at `target` (`move_mount(2)`).
unsafe fn attach(tree: c_int, target: *const c_char) -> bool {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    // SAFETY: target is a NUL-terminated path the caller keeps alive; tree is ours.
    unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree,
            c(b"\0"),
            libc::AT_FDCWD,
            target,
            MOVE_MOUNT_F_EMPTY_PATH,
        ) == 0
    }
}

/// Sends descriptor `fd` over the unix socket `sock` (SCM_RIGHTS), without allocating.
unsafe fn send_fd(sock: c_int, fd: c_int) -> bool {
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
unsafe fn loopback_up() {
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

/// The command's process: capabilities, user, directory, then exec.
unsafe fn command(
    plan: &Plan,
    argv: &[*const c_char],
    env: &[*const c_char],
    groups: &[libc::gid_t],
    st: c_int,
) -> ! {
    // SAFETY (whole function): system calls on prepared data.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = libc::SIG_DFL;
        for sig in FORWARDED.iter().copied().chain([libc::SIGPIPE]) {
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::setsid();
        if plan.tty && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
            fail(st, STEP_TTY);
        }
        for cap in &plan.drop_caps {
            if libc::prctl(libc::PR_CAPBSET_DROP, *cap as c_ulong, 0, 0, 0) != 0
                && errno() != libc::EINVAL
            {
                fail(st, STEP_CAPS);
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
        if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) != 0 {
            fail(st, STEP_CAPS);
        }
        if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
            || libc::syscall(libc::SYS_setgid, plan.gid) != 0
            || libc::syscall(libc::SYS_setuid, plan.uid) != 0
        {
            fail(st, STEP_USER);
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(st, STEP_CAPS);
        }
        if libc::chdir(plan.cwd.as_ptr()) != 0 {
            fail(st, STEP_CWD);
        }
        libc::umask(0o022);
        // Last before exec (which the profile allows, as it does everything below), as runc
        // installs it.
        if let Some(filter) = plan.seccomp {
            let prog = libc::sock_fprog {
                len: filter.len() as libc::c_ushort,
                filter: filter.as_ptr().cast_mut(),
            };
            if libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0u32,
                &prog as *const libc::sock_fprog,
            ) != 0
            {
                fail(st, STEP_SECCOMP);
            }
        }
        let mut err = libc::ENOENT;
        for cand in &plan.candidates {
            let mut e = libc::ETXTBSY;
            // A file another process briefly holds open for writing: wait a little.
            for _ in 0..100 {
                libc::execve(cand.as_ptr(), argv.as_ptr(), env.as_ptr());
                e = errno();
                if e != libc::ETXTBSY {
                    break;
                }
                let pause = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 10_000_000,
                };
                libc::nanosleep(&pause, std::ptr::null_mut());
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
        *libc::__errno_location() = err;
        fail(st, STEP_EXEC)
    }
}
