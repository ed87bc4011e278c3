//! The default network's way out: slirp4netns, a userspace NAT, attached to the sandbox's own
//! network namespace. It gives the namespace a tap device (10.0.2.100/24, gateway 10.0.2.2,
//! DNS forwarder 10.0.2.3, MTU 65520) and makes every outbound connection from the host's
//! network namespace as an ordinary process would, so the sandbox reaches what the host
//! reaches except the host's loopback (`--disable-host-loopback`) and its abstract unix
//! sockets (those belong to a network namespace). It runs sandboxed itself (its own mount
//! namespace, no capabilities but binding low ports, a seccomp filter) and exits when wharf
//! closes its end of the exit pipe, or dies.
//!
//! Why slirp4netns rather than pasta (measured on Debian 12, see ARCHITECTURE.md): ready in
//! ~3–4 ms against ~20–25 ms, 3 MB against 30 MB, host loopback closed by one flag (pasta maps
//! it, and copies and publishes ports, unless told four times not to), and it reports refused
//! connections where Debian's pasta lets them hang.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The DNS forwarder slirp4netns answers on inside the namespace.
pub const DNS: &str = "10.0.2.3";

/// How long slirp4netns may take to configure the namespace.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// A running slirp4netns; dropping it lets it go (it exits when the exit pipe closes) and
/// reaps it in the background, off the step's path (tearing the tap down takes the kernel
/// tens of milliseconds).
#[derive(Debug)]
pub(super) struct Nat {
    child: Option<Child>,
    exit: Option<OwnedFd>,
}

impl Drop for Nat {
    fn drop(&mut self) {
        drop(self.exit.take());
        if let Some(mut c) = self.child.take() {
            std::thread::spawn(move || {
                let _ = c.wait();
            });
        }
    }
}

/// A descriptor duplicated to 10 or above, close-on-exec: safe to move onto 3..5 in the child.
fn high(fd: &OwnedFd) -> std::io::Result<OwnedFd> {
    // SAFETY: fcntl on a descriptor we own; the result is ours.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just created.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Waits up to `within` for one byte on `fd`: `Some(byte)`, or `None` at EOF or timeout.
fn read_byte(fd: &OwnedFd, within: Duration) -> Option<u8> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(within.as_millis()).unwrap_or(libc::c_int::MAX);
    loop {
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if r <= 0 {
            return None;
        }
        let mut b = 0u8;
        // SAFETY: one byte into b.
        let n = unsafe { libc::read(fd.as_raw_fd(), (&mut b as *mut u8).cast(), 1) };
        return (n == 1).then_some(b);
    }
}

/// Starts slirp4netns on the network namespace of process `pid` and waits until the
/// namespace is configured.
pub(super) fn attach(pid: libc::pid_t) -> std::io::Result<Nat> {
    let ns = OwnedFd::from(std::fs::File::open(format!("/proc/{pid}/ns/net"))?);
    attach_ns(&ns)
}

/// Starts slirp4netns on the network namespace `ns` and waits until it is configured.
fn attach_ns(ns: &OwnedFd) -> std::io::Result<Nat> {
    match start(ns, true) {
        Ok(nat) => Ok(nat),
        // Its own sandbox needs /etc/resolv.conf inside /etc or /run; without it, it still
        // works (what it can reach does not change).
        Err(first) => start(ns, false).map_err(|_| first),
    }
}

/// A network namespace with its NAT, made once and joined by many sandboxes: the RUN steps of
/// one build share one, as they share one trust (the Dockerfile), so a step does not pay for
/// starting the NAT. Nothing a step does outlives it there: its processes die with its PID
/// namespace, and without `CAP_NET_ADMIN` it cannot change the namespace's addresses or
/// routes. Dropping it lets the NAT go; the namespace goes with its last user.
#[derive(Debug)]
pub struct SharedNetwork {
    ns: OwnedFd,
    _nat: Nat,
}

impl SharedNetwork {
    /// A new namespace (made on a thread of its own, which leaves it at once) with slirp4netns
    /// attached and ready.
    pub fn new() -> std::io::Result<SharedNetwork> {
        let ns = std::thread::spawn(|| -> std::io::Result<OwnedFd> {
            // SAFETY: unshare affects this short-lived thread only.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(OwnedFd::from(std::fs::File::open(
                "/proc/thread-self/ns/net",
            )?))
        })
        .join()
        .map_err(|_| std::io::Error::other("the thread making a network namespace panicked"))??;
        let nat = attach_ns(&ns)?;
        Ok(SharedNetwork { ns, _nat: nat })
    }

    /// The namespace's descriptor.
    pub(super) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.ns)
    }
}

fn start(ns: &OwnedFd, sandboxed: bool) -> std::io::Result<Nat> {
    let (ready_r, ready_w) = super::pipe()?;
    let (exit_r, exit_w) = super::pipe()?;
    let moved = [high(&ready_w)?, high(&exit_r)?, high(ns)?];
    let raw: Vec<i32> = moved.iter().map(AsRawFd::as_raw_fd).collect();
    let mut cmd = Command::new("slirp4netns");
    cmd.args(["--configure", "--mtu=65520", "--disable-host-loopback"]);
    if sandboxed {
        cmd.args(["--enable-sandbox", "--enable-seccomp"]);
    }
    cmd.args([
        "--netns-type=path",
        "--ready-fd=3",
        "--exit-fd=4",
        "/proc/self/fd/5",
        "tap0",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    // SAFETY: only system calls between fork and exec: unshare, mount and dup2 (the sources
    // are 10 or above, so none is clobbered).
    unsafe {
        cmd.pre_exec(move || {
            // A mount namespace of its own, private through and through: slirp4netns's sandbox
            // detaches the old root when it pivots, and in the host's namespace that unmount
            // would reach every mount shared with it (a dockerd's, systemd's).
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            for (i, fd) in raw.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            std::io::Error::new(
                e.kind(),
                "slirp4netns is not installed: it gives RUN and `wharf run` their network \
                 (apt-get install slirp4netns), or use --network none",
            )
        } else {
            e
        }
    })?;
    drop(moved);
    drop(ready_w);
    drop(exit_r);
    // What it says, kept (bounded) for an error message.
    let said = child.stderr.take().map(|mut err| {
        std::thread::spawn(move || {
            let mut said = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if said.len() < 4096 {
                    said.extend_from_slice(&buf[..n]);
                }
            }
            said
        })
    });
    if read_byte(&ready_r, READY_WITHIN) == Some(b'1') {
        return Ok(Nat {
            child: Some(child),
            exit: Some(exit_w),
        });
    }
    let _ = child.kill();
    let _ = child.wait();
    let said = said.and_then(|t| t.join().ok()).unwrap_or_default();
    Err(std::io::Error::other(format!(
        "slirp4netns did not set up the network: {}",
        String::from_utf8_lossy(&said).trim()
    )))
}
