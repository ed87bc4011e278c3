//! docker's default seccomp profile, and a compiler that turns it into the classic BPF program
//! the kernel runs on every system call of a sandboxed process.
//!
//! The profile is docker's (moby's `profiles/seccomp`, v0.2.3 as shipped by docker 29): the same
//! allow list, the same argument rules (`socket` without AF_ALG and AF_VSOCK, five
//! `personality` values, `clone` without namespace flags), `clone3` answered with ENOSYS so C
//! libraries fall back to `clone`, capability-gated rules kept or dropped against the
//! sandbox's capability set, and EPERM for everything else. As runc does, system calls numbered
//! above every number the profile names answer ENOSYS (they are newer than the profile, and a
//! C library may have a fallback), while unknown ones within the range answer EPERM.
//!
//! # The program
//! It checks the architecture first: on x86_64 hosts the filter covers x86_64, x32 (the same
//! audit architecture, numbers with bit 30 set) and i386; on aarch64 hosts, aarch64 alone. Any
//! other architecture kills the process, as libseccomp's filters do. Each architecture's
//! numbers become sorted intervals with one verdict each, found by a binary search of `jge`
//! nodes (long jumps through `ja`, since conditional jumps reach only 255 instructions). Argument
//! rules compare full 64-bit values on 64-bit ABIs (high and low words) and the low word on
//! 32-bit ones, as libseccomp does.
//!
//! # Deliberate differences
//! - On aarch64 hosts 32-bit ARM processes are refused (docker also allows the `arm` ABI).
//! - Rules for hosts wharf does not build for (s390, ppc64le, riscv64, loongarch64) are left
//!   out; they never apply on x86_64 or aarch64.

use std::collections::BTreeMap;

use super::syscalls::{Abi, number};

const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;

const EPERM: u16 = 1;
const ENOSYS: u16 = 38;

// Capabilities the profile's rules name.
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_MODULE: u32 = 16;
const CAP_SYS_RAWIO: u32 = 17;
const CAP_SYS_CHROOT: u32 = 18;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_PACCT: u32 = 20;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_BOOT: u32 = 22;
const CAP_SYS_NICE: u32 = 23;
const CAP_SYS_TIME: u32 = 25;
const CAP_SYS_TTY_CONFIG: u32 = 26;
const CAP_SYSLOG: u32 = 34;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What a rule does with the calls it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Allow,
    Errno(u16),
}

/// A comparison of one argument (all of a rule's must hold).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmp {
    Eq(u64),
    Lt(u64),
    Gt(u64),
    /// `(arg & mask) == value`.
    MaskedEq(u64, u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Arg {
    index: u32,
    cmp: Cmp,
}

/// When a rule applies: every capability in `caps` is in the bounding set, the host is one of
/// `arches` (docker's names; empty: any), and the kernel is at least `min_kernel`.
#[derive(Clone, Copy, Debug)]
struct Includes {
    caps: &'static [u32],
    arches: &'static [&'static str],
    min_kernel: Option<(u32, u32)>,
}

/// When a rule is dropped: any capability in `caps` is in the bounding set.
#[derive(Clone, Copy, Debug)]
struct Excludes {
    caps: &'static [u32],
}

#[derive(Clone, Copy, Debug)]
struct Rule {
    names: &'static [&'static str],
    action: Action,
    args: &'static [Arg],
    includes: Includes,
    excludes: Excludes,
}

const ANY: Includes = Includes {
    caps: &[],
    arches: &[],
    min_kernel: None,
};
const NONE: Excludes = Excludes { caps: &[] };

const fn allow(names: &'static [&'static str]) -> Rule {
    Rule {
        names,
        action: Action::Allow,
        args: &[],
        includes: ANY,
        excludes: NONE,
    }
}

const fn allow_with_cap(cap: &'static [u32], names: &'static [&'static str]) -> Rule {
    Rule {
        includes: Includes {
            caps: cap,
            arches: &[],
            min_kernel: None,
        },
        ..allow(names)
    }
}

const fn allow_if(names: &'static [&'static str], args: &'static [Arg]) -> Rule {
    Rule {
        args,
        ..allow(names)
    }
}

const fn arg0(cmp: Cmp) -> Arg {
    Arg { index: 0, cmp }
}

/// Namespace flags `clone` may not be given (NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
/// NEWPID, NEWNET).
const CLONE_NAMESPACES: u64 = 0x7e02_0000;

/// docker's default profile, its rules in docker's order.
static PROFILE: &[Rule] = &[
    allow(&[
        "accept",
        "accept4",
        "access",
        "adjtimex",
        "alarm",
        "bind",
        "brk",
        "cachestat",
        "capget",
        "capset",
        "chdir",
        "chmod",
        "chown",
        "chown32",
        "clock_adjtime",
        "clock_adjtime64",
        "clock_getres",
        "clock_getres_time64",
        "clock_gettime",
        "clock_gettime64",
        "clock_nanosleep",
        "clock_nanosleep_time64",
        "close",
        "close_range",
        "connect",
        "copy_file_range",
        "creat",
        "dup",
        "dup2",
        "dup3",
        "epoll_create",
        "epoll_create1",
        "epoll_ctl",
        "epoll_ctl_old",
        "epoll_pwait",
        "epoll_pwait2",
        "epoll_wait",
        "epoll_wait_old",
        "eventfd",
        "eventfd2",
        "execve",
        "execveat",
        "exit",
        "exit_group",
        "faccessat",
        "faccessat2",
        "fadvise64",
        "fadvise64_64",
        "fallocate",
        "fanotify_mark",
        "fchdir",
        "fchmod",
        "fchmodat",
        "fchmodat2",
        "fchown",
        "fchown32",
        "fchownat",
        "fcntl",
        "fcntl64",
        "fdatasync",
        "fgetxattr",
        "flistxattr",
        "flock",
        "fork",
        "fremovexattr",
        "fsetxattr",
        "fstat",
        "fstat64",
        "fstatat64",
        "fstatfs",
        "fstatfs64",
        "fsync",
        "ftruncate",
        "ftruncate64",
        "futex",
        "futex_requeue",
        "futex_time64",
        "futex_wait",
        "futex_waitv",
        "futex_wake",
        "futimesat",
        "getcpu",
        "getcwd",
        "getdents",
        "getdents64",
        "getegid",
        "getegid32",
        "geteuid",
        "geteuid32",
        "getgid",
        "getgid32",
        "getgroups",
        "getgroups32",
        "getitimer",
        "getpeername",
        "getpgid",
        "getpgrp",
        "getpid",
        "getppid",
        "getpriority",
        "getrandom",
        "getresgid",
        "getresgid32",
        "getresuid",
        "getresuid32",
        "getrlimit",
        "get_robust_list",
        "getrusage",
        "getsid",
        "getsockname",
        "getsockopt",
        "get_thread_area",
        "gettid",
        "gettimeofday",
        "getuid",
        "getuid32",
        "getxattr",
        "getxattrat",
        "inotify_add_watch",
        "inotify_init",
        "inotify_init1",
        "inotify_rm_watch",
        "io_cancel",
        "ioctl",
        "io_destroy",
        "io_getevents",
        "io_pgetevents",
        "io_pgetevents_time64",
        "ioprio_get",
        "ioprio_set",
        "io_setup",
        "io_submit",
        "ipc",
        "kill",
        "landlock_add_rule",
        "landlock_create_ruleset",
        "landlock_restrict_self",
        "lchown",
        "lchown32",
        "lgetxattr",
        "link",
        "linkat",
        "listen",
        "listmount",
        "listxattr",
        "listxattrat",
        "llistxattr",
        "_llseek",
        "lremovexattr",
        "lseek",
        "lsetxattr",
        "lstat",
        "lstat64",
        "madvise",
        "map_shadow_stack",
        "membarrier",
        "memfd_create",
        "memfd_secret",
        "mincore",
        "mkdir",
        "mkdirat",
        "mknod",
        "mknodat",
        "mlock",
        "mlock2",
        "mlockall",
        "mmap",
        "mmap2",
        "mprotect",
        "mq_getsetattr",
        "mq_notify",
        "mq_open",
        "mq_timedreceive",
        "mq_timedreceive_time64",
        "mq_timedsend",
        "mq_timedsend_time64",
        "mq_unlink",
        "mremap",
        "mseal",
        "msgctl",
        "msgget",
        "msgrcv",
        "msgsnd",
        "msync",
        "munlock",
        "munlockall",
        "munmap",
        "name_to_handle_at",
        "nanosleep",
        "newfstatat",
        "_newselect",
        "open",
        "openat",
        "openat2",
        "pause",
        "pidfd_open",
        "pidfd_send_signal",
        "pipe",
        "pipe2",
        "pkey_alloc",
        "pkey_free",
        "pkey_mprotect",
        "poll",
        "ppoll",
        "ppoll_time64",
        "prctl",
        "pread64",
        "preadv",
        "preadv2",
        "prlimit64",
        "process_mrelease",
        "pselect6",
        "pselect6_time64",
        "pwrite64",
        "pwritev",
        "pwritev2",
        "read",
        "readahead",
        "readlink",
        "readlinkat",
        "readv",
        "recv",
        "recvfrom",
        "recvmmsg",
        "recvmmsg_time64",
        "recvmsg",
        "remap_file_pages",
        "removexattr",
        "removexattrat",
        "rename",
        "renameat",
        "renameat2",
        "restart_syscall",
        "riscv_hwprobe",
        "rmdir",
        "rseq",
        "rt_sigaction",
        "rt_sigpending",
        "rt_sigprocmask",
        "rt_sigqueueinfo",
        "rt_sigreturn",
        "rt_sigsuspend",
        "rt_sigtimedwait",
        "rt_sigtimedwait_time64",
        "rt_tgsigqueueinfo",
        "sched_getaffinity",
        "sched_getattr",
        "sched_getparam",
        "sched_get_priority_max",
        "sched_get_priority_min",
        "sched_getscheduler",
        "sched_rr_get_interval",
        "sched_rr_get_interval_time64",
        "sched_setaffinity",
        "sched_setattr",
        "sched_setparam",
        "sched_setscheduler",
        "sched_yield",
        "seccomp",
        "select",
        "semctl",
        "semget",
        "semop",
        "semtimedop",
        "semtimedop_time64",
        "send",
        "sendfile",
        "sendfile64",
        "sendmmsg",
        "sendmsg",
        "sendto",
        "setfsgid",
        "setfsgid32",
        "setfsuid",
        "setfsuid32",
        "setgid",
        "setgid32",
        "setgroups",
        "setgroups32",
        "setitimer",
        "setpgid",
        "setpriority",
        "setregid",
        "setregid32",
        "setresgid",
        "setresgid32",
        "setresuid",
        "setresuid32",
        "setreuid",
        "setreuid32",
        "setrlimit",
        "set_robust_list",
        "setsid",
        "setsockopt",
        "set_thread_area",
        "set_tid_address",
        "setuid",
        "setuid32",
        "setxattr",
        "setxattrat",
        "shmat",
        "shmctl",
        "shmdt",
        "shmget",
        "shutdown",
        "sigaltstack",
        "signalfd",
        "signalfd4",
        "sigprocmask",
        "sigreturn",
        "socketcall",
        "socketpair",
        "splice",
        "stat",
        "stat64",
        "statfs",
        "statfs64",
        "statmount",
        "statx",
        "symlink",
        "symlinkat",
        "sync",
        "sync_file_range",
        "syncfs",
        "sysinfo",
        "tee",
        "tgkill",
        "time",
        "timer_create",
        "timer_delete",
        "timer_getoverrun",
        "timer_gettime",
        "timer_gettime64",
        "timer_settime",
        "timer_settime64",
        "timerfd_create",
        "timerfd_gettime",
        "timerfd_gettime64",
        "timerfd_settime",
        "timerfd_settime64",
        "times",
        "tkill",
        "truncate",
        "truncate64",
        "ugetrlimit",
        "umask",
        "uname",
        "unlink",
        "unlinkat",
        "uretprobe",
        "utime",
        "utimensat",
        "utimensat_time64",
        "utimes",
        "vfork",
        "vmsplice",
        "wait4",
        "waitid",
        "waitpid",
        "write",
        "writev",
    ]),
    Rule {
        includes: Includes {
            caps: &[],
            arches: &[],
            min_kernel: Some((4, 8)),
        },
        ..allow(&["process_vm_readv", "process_vm_writev", "ptrace"])
    },
    // Every address family but AF_ALG (38) and AF_VSOCK (40).
    allow_if(&["socket"], &[arg0(Cmp::Lt(38))]),
    allow_if(&["socket"], &[arg0(Cmp::Eq(39))]),
    allow_if(&["socket"], &[arg0(Cmp::Gt(40))]),
    // PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and the query.
    allow_if(&["personality"], &[arg0(Cmp::Eq(0))]),
    allow_if(&["personality"], &[arg0(Cmp::Eq(8))]),
    allow_if(&["personality"], &[arg0(Cmp::Eq(0x2_0000))]),
    allow_if(&["personality"], &[arg0(Cmp::Eq(0x2_0008))]),
    allow_if(&["personality"], &[arg0(Cmp::Eq(0xffff_ffff))]),
    Rule {
        includes: Includes {
            caps: &[],
            arches: &["amd64", "x32"],
            min_kernel: None,
        },
        ..allow(&["arch_prctl"])
    },
    Rule {
        includes: Includes {
            caps: &[],
            arches: &["amd64", "x32", "x86"],
            min_kernel: None,
        },
        ..allow(&["modify_ldt"])
    },
    allow_with_cap(&[CAP_DAC_READ_SEARCH], &["open_by_handle_at"]),
    allow_with_cap(
        &[CAP_SYS_ADMIN],
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "lsm_get_self_attr",
            "lsm_list_modules",
            "lsm_set_self_attr",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    Rule {
        excludes: Excludes {
            caps: &[CAP_SYS_ADMIN],
        },
        ..allow_if(&["clone"], &[arg0(Cmp::MaskedEq(CLONE_NAMESPACES, 0))])
    },
    Rule {
        action: Action::Errno(ENOSYS),
        excludes: Excludes {
            caps: &[CAP_SYS_ADMIN],
        },
        ..allow(&["clone3"])
    },
    allow_with_cap(&[CAP_SYS_BOOT], &["reboot"]),
    allow_with_cap(&[CAP_SYS_CHROOT], &["chroot"]),
    allow_with_cap(
        &[CAP_SYS_MODULE],
        &["delete_module", "init_module", "finit_module"],
    ),
    allow_with_cap(&[CAP_SYS_PACCT], &["acct"]),
    allow_with_cap(
        &[CAP_SYS_PTRACE],
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    allow_with_cap(&[CAP_SYS_RAWIO], &["iopl", "ioperm"]),
    allow_with_cap(
        &[CAP_SYS_TIME],
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    allow_with_cap(&[CAP_SYS_TTY_CONFIG], &["vhangup"]),
    allow_with_cap(
        &[CAP_SYS_NICE],
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    allow_with_cap(&[CAP_SYSLOG], &["syslog"]),
    allow_with_cap(&[CAP_BPF], &["bpf"]),
    allow_with_cap(&[CAP_PERFMON], &["perf_event_open"]),
];

/// docker's name for the host's architecture.
const fn host_arch() -> &'static str {
    if cfg!(target_arch = "x86_64") {
        "amd64"
    } else if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "unsupported"
    }
}

/// The running kernel's (major, minor).
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The rules that apply to a sandbox with bounding set `caps` (a bit per capability).
fn applicable(caps: u64, kernel: (u32, u32)) -> impl Iterator<Item = &'static Rule> {
    let has = move |c: &u32| caps & (1u64 << c) != 0;
    PROFILE.iter().filter(move |r| {
        r.includes.caps.iter().all(has)
            && (r.includes.arches.is_empty() || r.includes.arches.contains(&host_arch()))
            && r.includes.min_kernel.is_none_or(|min| kernel >= min)
            && !r.excludes.caps.iter().any(has)
    })
}

/// What the filter answers for one system call number.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    Ret(u32),
    /// Allowed when any of these argument lists holds (each list: all of it), else EPERM.
    Args(Vec<Vec<Arg>>),
}

/// The verdicts of one audit architecture, by system call number (the rest: EPERM up to the
/// highest number named, ENOSYS above).
fn verdicts(rules: &[&Rule], abis: &[Abi]) -> (BTreeMap<u32, Verdict>, Vec<(Abi, u32)>) {
    let mut map: BTreeMap<u32, Verdict> = BTreeMap::new();
    let mut highest = Vec::new();
    for abi in abis {
        let mut max = None;
        for rule in rules {
            for name in rule.names {
                let Some(nr) = number(name, *abi) else {
                    continue;
                };
                max = max.max(Some(nr));
                match (rule.action, rule.args.is_empty()) {
                    (Action::Allow, true) => {
                        map.insert(nr, Verdict::Ret(SECCOMP_RET_ALLOW));
                    }
                    (Action::Allow, false) => {
                        match map.entry(nr).or_insert(Verdict::Args(Vec::new())) {
                            Verdict::Args(alternatives) => alternatives.push(rule.args.to_vec()),
                            Verdict::Ret(_) => {}
                        }
                    }
                    (Action::Errno(e), _) => {
                        map.entry(nr)
                            .or_insert(Verdict::Ret(SECCOMP_RET_ERRNO | u32::from(e)));
                    }
                }
            }
        }
        if let Some(max) = max {
            highest.push((*abi, max));
        }
    }
    (map, highest)
}

/// Sorted intervals covering every number: (first number, verdict), each up to the next.
fn intervals(map: &BTreeMap<u32, Verdict>, highest: &[(Abi, u32)]) -> Vec<(u32, Verdict)> {
    let eperm = Verdict::Ret(SECCOMP_RET_ERRNO | u32::from(EPERM));
    let enosys = Verdict::Ret(SECCOMP_RET_ERRNO | u32::from(ENOSYS));
    // The ranges each ABI owns: [base, next base), numbers above its highest get ENOSYS.
    let mut fill: Vec<(u32, Verdict)> = Vec::new();
    for (abi, max) in highest {
        fill.push((abi.base(), eperm.clone()));
        if let Some(next) = max.checked_add(1) {
            fill.push((next, enosys.clone()));
        }
    }
    if fill.first().is_none_or(|(start, _)| *start != 0) {
        fill.insert(0, (0, enosys.clone()));
    }
    let mut out: Vec<(u32, Verdict)> = Vec::new();
    let mut push = |start: u32, v: Verdict| {
        if out.last().is_some_and(|(_, last)| *last == v) {
            return;
        }
        out.push((start, v));
    };
    // Walk every point where something changes, in order.
    let mut points: Vec<u32> = fill.iter().map(|(s, _)| *s).collect();
    for nr in map.keys() {
        points.push(*nr);
        if let Some(n) = nr.checked_add(1) {
            points.push(n);
        }
    }
    points.sort_unstable();
    points.dedup();
    for p in points {
        let v = match map.get(&p) {
            Some(v) => v.clone(),
            None => fill
                .iter()
                .rev()
                .find(|(s, _)| *s <= p)
                .map_or_else(|| enosys.clone(), |(_, v)| v.clone()),
        };
        push(p, v);
    }
    out
}

/// A jump target in [`Asm`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Label(usize);

/// One instruction before jump offsets are known.
#[derive(Clone, Copy, Debug)]
enum Ins {
    Load(u32),
    And(u32),
    Ret(u32),
    /// `if A <op> k goto t else goto f`, both short (≤ 255 instructions ahead).
    Jump(u16, u32, Label, Label),
    /// An unconditional jump of any length.
    Always(Label),
    Here(Label),
}

const JEQ: u16 = 0x15;
const JGT: u16 = 0x25;
const JGE: u16 = 0x35;
const LD_W_ABS: u16 = 0x20;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;
const JA: u16 = 0x05;

/// A tiny assembler for classic BPF with labels.
#[derive(Default)]
struct Asm {
    ins: Vec<Ins>,
    labels: usize,
}

impl Asm {
    fn label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels - 1)
    }

    fn emit(&mut self, i: Ins) {
        self.ins.push(i);
    }

    fn finish(self) -> Result<Vec<libc::sock_filter>, String> {
        let mut at = vec![usize::MAX; self.labels];
        let mut n = 0;
        for i in &self.ins {
            match i {
                Ins::Here(l) => at[l.0] = n,
                _ => n += 1,
            }
        }
        let mut out = Vec::with_capacity(n);
        for i in &self.ins {
            let pc = out.len();
            // Offsets count from the next instruction.
            let off = |l: Label| {
                at[l.0]
                    .checked_sub(pc + 1)
                    .ok_or_else(|| "a backward jump in the seccomp program".to_owned())
            };
            let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
            match *i {
                Ins::Here(_) => {}
                Ins::Load(offset) => out.push(op(LD_W_ABS, 0, 0, offset)),
                Ins::And(k) => out.push(op(AND_K, 0, 0, k)),
                Ins::Ret(k) => out.push(op(RET_K, 0, 0, k)),
                Ins::Always(l) => {
                    let k = u32::try_from(off(l)?).map_err(|e| e.to_string())?;
                    out.push(op(JA, 0, 0, k));
                }
                Ins::Jump(code, k, t, f) => {
                    let short = |o: usize| {
                        u8::try_from(o).map_err(|_| format!("a jump of {o} in the seccomp program"))
                    };
                    out.push(op(code, short(off(t)?)?, short(off(f)?)?, k));
                }
            }
        }
        // The kernel takes at most 4096 instructions.
        if out.len() > 4096 {
            return Err(format!("a seccomp program of {} instructions", out.len()));
        }
        Ok(out)
    }
}

/// Where `seccomp_data` keeps the number, the architecture and argument `i`'s low and high
/// words (little-endian).
const NR: u32 = 0;
const ARCH: u32 = 4;
fn arg_low(i: u32) -> u32 {
    16 + 8 * i
}
fn arg_high(i: u32) -> u32 {
    20 + 8 * i
}

/// Emits the checks of one argument list: to `ok` when all hold, to `fail` otherwise.
fn emit_args(a: &mut Asm, args: &[Arg], wide: bool, ok: Label, fail: Label) {
    for (n, arg) in args.iter().enumerate() {
        let next = if n + 1 == args.len() { ok } else { a.label() };
        let (hi, lo) = match arg.cmp {
            Cmp::Eq(v) | Cmp::Lt(v) | Cmp::Gt(v) | Cmp::MaskedEq(_, v) => {
                ((v >> 32) as u32, v as u32)
            }
        };
        let low_checks = |a: &mut Asm, after_high: Option<Label>| {
            if let Some(l) = after_high {
                a.emit(Ins::Here(l));
            }
            a.emit(Ins::Load(arg_low(arg.index)));
            match arg.cmp {
                Cmp::Eq(_) => a.emit(Ins::Jump(JEQ, lo, next, fail)),
                Cmp::MaskedEq(m, _) => {
                    a.emit(Ins::And(m as u32));
                    a.emit(Ins::Jump(JEQ, lo, next, fail));
                }
                Cmp::Lt(_) => a.emit(Ins::Jump(JGE, lo, fail, next)),
                Cmp::Gt(_) => a.emit(Ins::Jump(JGT, lo, next, fail)),
            }
        };
        if !wide {
            low_checks(a, None);
        } else {
            // High word first: it decides unless it equals the value's.
            let low = a.label();
            a.emit(Ins::Load(arg_high(arg.index)));
            match arg.cmp {
                Cmp::Eq(_) => a.emit(Ins::Jump(JEQ, hi, low, fail)),
                Cmp::MaskedEq(m, _) => {
                    a.emit(Ins::And((m >> 32) as u32));
                    a.emit(Ins::Jump(JEQ, hi, low, fail));
                }
                Cmp::Lt(_) => {
                    let eq = a.label();
                    a.emit(Ins::Jump(JGT, hi, fail, eq));
                    a.emit(Ins::Here(eq));
                    a.emit(Ins::Jump(JEQ, hi, low, next));
                }
                Cmp::Gt(_) => {
                    let eq = a.label();
                    a.emit(Ins::Jump(JGT, hi, next, eq));
                    a.emit(Ins::Here(eq));
                    a.emit(Ins::Jump(JEQ, hi, low, fail));
                }
            }
            low_checks(a, Some(low));
        }
        if n + 1 != args.len() {
            a.emit(Ins::Here(next));
        }
    }
}

/// Emits a verdict; A holds the number.
fn emit_verdict(a: &mut Asm, v: &Verdict, wide: bool) {
    match v {
        Verdict::Ret(k) => a.emit(Ins::Ret(*k)),
        Verdict::Args(alternatives) => {
            let ok = a.label();
            for alt in alternatives {
                let fail = a.label();
                emit_args(a, alt, wide, ok, fail);
                a.emit(Ins::Here(fail));
            }
            a.emit(Ins::Ret(SECCOMP_RET_ERRNO | u32::from(EPERM)));
            a.emit(Ins::Here(ok));
            a.emit(Ins::Ret(SECCOMP_RET_ALLOW));
        }
    }
}

/// Emits a binary search over `iv` (A holds the number).
fn emit_search(a: &mut Asm, iv: &[(u32, Verdict)], wide: &dyn Fn(u32) -> bool) {
    match iv {
        [] => a.emit(Ins::Ret(SECCOMP_RET_ERRNO | u32::from(ENOSYS))),
        [(start, v)] => emit_verdict(a, v, wide(*start)),
        _ => {
            // jge: on to the `ja` that reaches the upper half; else past it, into the lower.
            let mid = iv.len() / 2;
            let (high, low, upper) = (a.label(), a.label(), a.label());
            a.emit(Ins::Jump(JGE, iv[mid].0, high, low));
            a.emit(Ins::Here(high));
            a.emit(Ins::Always(upper));
            a.emit(Ins::Here(low));
            emit_search(a, &iv[..mid], wide);
            a.emit(Ins::Here(upper));
            emit_search(a, &iv[mid..], wide);
        }
    }
}

/// The filter for a sandbox whose bounding set is `caps`.
pub(super) fn compile(caps: u64) -> Result<Vec<libc::sock_filter>, String> {
    let rules: Vec<&Rule> = applicable(caps, kernel_version()).collect();
    let mut a = Asm::default();
    let sections: Vec<(u32, Vec<Abi>)> = if cfg!(target_arch = "x86_64") {
        vec![
            (AUDIT_ARCH_X86_64, vec![Abi::X86_64, Abi::X32]),
            (AUDIT_ARCH_I386, vec![Abi::I386]),
        ]
    } else if cfg!(target_arch = "aarch64") {
        vec![(AUDIT_ARCH_AARCH64, vec![Abi::Aarch64])]
    } else {
        return Err("seccomp filters are built for x86_64 and aarch64 hosts only".into());
    };
    a.emit(Ins::Load(ARCH));
    let mut bodies = Vec::new();
    for (arch, _) in &sections {
        let (hit, miss, body) = (a.label(), a.label(), a.label());
        a.emit(Ins::Jump(JEQ, *arch, hit, miss));
        a.emit(Ins::Here(hit));
        a.emit(Ins::Always(body));
        a.emit(Ins::Here(miss));
        bodies.push(body);
    }
    a.emit(Ins::Ret(SECCOMP_RET_KILL_PROCESS));
    for ((_, abis), body) in sections.iter().zip(bodies) {
        a.emit(Ins::Here(body));
        a.emit(Ins::Load(NR));
        let (map, highest) = verdicts(&rules, abis);
        let iv = intervals(&map, &highest);
        // x86_64 and aarch64 arguments are 64 bits wide; x32's and i386's are 32.
        let wide = |nr: u32| {
            abis.iter()
                .rev()
                .find(|abi| nr >= abi.base())
                .is_some_and(|abi| abi.wide())
        };
        emit_search(&mut a, &iv, &wide);
    }
    a.finish()
}

/// The filter for docker's default capability set, compiled once.
pub(super) fn default_filter(caps: u64) -> Result<&'static [libc::sock_filter], String> {
    static FILTER: std::sync::OnceLock<Result<Vec<libc::sock_filter>, String>> =
        std::sync::OnceLock::new();
    FILTER
        .get_or_init(|| compile(caps))
        .as_ref()
        .map(Vec::as_slice)
        .map_err(Clone::clone)
}

#[cfg(test)]
mod tests;
