//! Paths inside a root directory, resolved as a chroot would resolve them: one resolver for
//! everything that reads or writes an image's root, a snapshot, a build context or an archive
//! being unpacked.
//!
//! A [`Root`] holds a descriptor of its directory. Paths given to it are resolved component by
//! component *inside* it: `..` stops at the root, an absolute symbolic link starts again at the
//! root, at most [`MAX_LINKS`] links are followed (the kernel's own limit, so a path resolves
//! the same here as for a process chrooted there). The kernel does it in one call where it can
//! (`openat2` with `RESOLVE_IN_ROOT`); otherwise, and wherever the canonical path is wanted, a
//! walk of `openat(O_PATH | O_NOFOLLOW)` calls does the same. What a caller then does to the
//! last component it does through a [`Parent`]: the directory's descriptor and the name, with
//! `*at` calls that never follow that name. Nothing is ever looked up again by a host path
//! that a later write inside the root could have redirected.
//!
//! Differences from the kernel's `RESOLVE_IN_ROOT`, all in the walk: [`Root::locate`] reports
//! where a missing path *would* be (its missing components kept as written), and
//! [`Root::parent`] can create missing directories on the way.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The most symbolic links one resolution follows (Linux's `MAXSYMLINKS`).
pub const MAX_LINKS: usize = 40;

/// A directory that paths are resolved inside of.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// Whether an entry (its canonical in-root path, whether it is a directory) is to be seen.
pub type Visible<'a> = &'a dyn Fn(&Path, bool) -> bool;

/// Why a filtered resolution found nothing: the entry on the way that the filter hides (its
/// canonical in-root path).
#[derive(Debug)]
pub struct Hidden(pub PathBuf);

impl std::fmt::Display for Hidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is hidden", self.0.display())
    }
}

impl std::error::Error for Hidden {}

/// The directory holding a path's last component, and that component.
#[derive(Debug)]
pub struct Parent {
    /// The directory (an `O_PATH` descriptor).
    pub dir: OwnedFd,
    /// The last component: never empty, `.` or `..`.
    pub name: OsString,
}

/// What is there at a name, not following it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// `st_mode`: type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
}

impl Stat {
    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    /// Whether it is a symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// `openat(2)` returning an owned descriptor.
fn openat(dir: BorrowedFd, name: &OsStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: a valid descriptor and NUL-terminated name; the result is a new descriptor we own.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstatat(dir: BorrowedFd, name: &OsStr, flags: libc::c_int) -> io::Result<Stat> {
    let c = cstr(name)?;
    // SAFETY: a zeroed stat is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is written by the call; a valid descriptor and a NUL-terminated name.
    check(unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr(), &mut st, flags) })?;
    Ok(Stat {
        mode: st.st_mode,
        uid: st.st_uid,
        gid: st.st_gid,
        size: u64::try_from(st.st_size).unwrap_or(0),
    })
}

/// The stat of the descriptor itself (`O_PATH` descriptors included).
fn fstat(fd: BorrowedFd) -> io::Result<Stat> {
    fstatat(
        fd,
        OsStr::new(""),
        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
    )
}

/// A symbolic link's target, from an `O_PATH | O_NOFOLLOW` descriptor of it.
fn readlink_fd(fd: BorrowedFd) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: buf has the length passed; an empty path reads the link fd refers to.
        let n = unsafe {
            libc::readlinkat(
                fd.as_raw_fd(),
                c"".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        buf.resize(buf.len() * 2, 0);
    }
}

/// A path's components as bytes: empty ones and `.` dropped, `..` kept.
fn components(path: &[u8]) -> Vec<OsString> {
    path.split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(|c| OsString::from_vec(c.to_vec()))
        .collect()
}

/// Whether the kernel's `openat2(RESOLVE_IN_ROOT)` works here; cleared at the first sign it
/// does not (an old kernel, or a seccomp filter that refuses it).
static OPENAT2: AtomicBool = AtomicBool::new(true);

/// `struct open_how` of `openat2(2)`.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2(dir, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | extra)`; `None` when
/// the call is not available and the walk must do it.
fn openat2_in_root(
    dir: BorrowedFd,
    path: &[u8],
    flags: libc::c_int,
    extra: u64,
) -> Option<io::Result<OwnedFd>> {
    if !OPENAT2.load(Ordering::Relaxed) {
        return None;
    }
    #[cfg(test)]
    if FORCE_WALK.with(std::cell::Cell::get) {
        return None;
    }
    let c = CString::new(path).ok()?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS | extra,
    };
    for _ in 0..4 {
        // SAFETY: valid descriptor, NUL-terminated path and an open_how of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                c.as_ptr(),
                &how as *const OpenHow,
                size_of::<OpenHow>(),
            )
        };
        if fd >= 0 {
            // SAFETY: a descriptor just returned to us.
            return Some(Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }));
        }
        let e = io::Error::last_os_error();
        match errno(&e) {
            // A rename or mount raced the lookup: try again, then walk.
            libc::EAGAIN => continue,
            libc::ENOSYS | libc::EPERM | libc::E2BIG | libc::EINVAL => {
                OPENAT2.store(false, Ordering::Relaxed);
                return None;
            }
            _ => return Some(Err(e)),
        }
    }
    None
}

/// What to do with a component that does not exist.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Missing {
    Fail,
    /// Make it a directory with this mode (only for components before the last).
    Create(u32),
    /// Keep it, and everything after it, as written: the result says where it would be.
    Keep,
}

/// A finished walk: the descriptor of what was reached (`None` when a component was missing
/// and kept), and the canonical components from the root.
struct Walked {
    fd: Option<OwnedFd>,
    names: Vec<OsString>,
}

impl Root {
    /// Opens `path` (a directory) as a root.
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = openat(
            // SAFETY: AT_FDCWD is a valid "descriptor" for *at calls.
            unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) },
            path.as_os_str(),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )?;
        Ok(Root {
            fd,
            path: path.to_owned(),
        })
    }

    /// The root's path on the host (for messages, and for callers that hand it on).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root directory's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Resolves `path`: every component inside the root, the last one followed or not. The
    /// returned descriptor has `flags` (add `O_PATH` to only point at it).
    pub fn open_at(&self, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
        let bytes = path.as_os_str().as_bytes();
        if let Some(r) = openat2_in_root(self.fd(), bytes, flags, 0) {
            return r;
        }
        let follow = flags & libc::O_NOFOLLOW == 0;
        let walked = self.walk(bytes, follow, true, Missing::Fail)?;
        let fd = walked
            .fd
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        if flags & libc::O_PATH != 0 && flags & libc::O_DIRECTORY == 0 {
            return Ok(fd);
        }
        // Reopen what the walk reached with the flags asked for.
        let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
        // SAFETY: AT_FDCWD is never closed; it names the current directory for *at calls.
        let cwd = unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) };
        openat(cwd, OsStr::new(&proc), flags & !libc::O_NOFOLLOW, 0)
    }

    /// Reads a whole file inside the root (symbolic links resolved inside it).
    pub fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let fd = self.open_at(path, libc::O_RDONLY)?;
        let mut out = Vec::new();
        io::Read::read_to_end(&mut File::from(fd), &mut out)?;
        Ok(out)
    }

    /// Where `path` is on the host: its components resolved inside the root (the last one
    /// only if `follow_last`), and any missing ones kept as written. The path is only good
    /// until the root changes: use [`Root::parent`] to change it.
    pub fn locate(&self, path: &Path, follow_last: bool) -> io::Result<PathBuf> {
        self.locate_with(path, follow_last, None)
    }

    fn locate_with(
        &self,
        path: &Path,
        follow_last: bool,
        visible: Option<Visible<'_>>,
    ) -> io::Result<PathBuf> {
        let walked = self.walk_visible(
            path.as_os_str().as_bytes(),
            follow_last,
            true,
            Missing::Keep,
            visible,
        )?;
        Ok(walked
            .names
            .iter()
            .fold(self.path.clone(), |p, n| p.join(n)))
    }

    /// As [`Root::locate`], seeing only what `visible` lets through: an entry it refuses (asked
    /// with its canonical in-root path and whether it is a directory, for every directory on
    /// the way, every link before it is followed, and the last entry) makes the path missing,
    /// an error of kind `NotFound` carrying [`Hidden`]. What a filtered view of a directory
    /// (a build context less its `.dockerignore`d files) would show.
    pub fn locate_visible(
        &self,
        path: &Path,
        follow_last: bool,
        visible: Visible<'_>,
    ) -> io::Result<PathBuf> {
        self.locate_with(path, follow_last, Some(visible))
    }

    /// The directory holding `path`'s last component, resolved inside the root, and the
    /// component. With `create`, missing directories on the way are made with that mode.
    pub fn parent(&self, path: &Path, create: Option<u32>) -> io::Result<Parent> {
        self.parent_with(path, create, true)
    }

    /// As [`Root::parent`], but any symbolic link on the way is an error (`ELOOP`): for
    /// cleaning up paths wharf made itself, where a link can only be a trap.
    pub fn parent_without_links(&self, path: &Path) -> io::Result<Parent> {
        self.parent_with(path, None, false)
    }

    fn parent_with(&self, path: &Path, create: Option<u32>, links: bool) -> io::Result<Parent> {
        let mut parts = components(path.as_os_str().as_bytes());
        let name = parts
            .pop()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the root has no parent"))?;
        if name == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} ends in ..", path.display()),
            ));
        }
        let dir_path = parts.iter().fold(Vec::new(), |mut v: Vec<u8>, c| {
            v.push(b'/');
            v.extend_from_slice(c.as_bytes());
            v
        });
        let extra = if links { 0 } else { libc::RESOLVE_NO_SYMLINKS };
        let fast = if dir_path.is_empty() {
            Some(openat(
                self.fd(),
                OsStr::new("."),
                libc::O_PATH | libc::O_DIRECTORY,
                0,
            ))
        } else {
            openat2_in_root(
                self.fd(),
                &dir_path,
                libc::O_PATH | libc::O_DIRECTORY,
                extra,
            )
        };
        let dir = match fast {
            Some(Ok(fd)) => fd,
            Some(Err(e)) if errno(&e) == libc::ENOENT && create.is_some() => {
                self.walk_dir(&dir_path, links, create)?
            }
            Some(Err(e)) => return Err(e),
            None => self.walk_dir(&dir_path, links, create)?,
        };
        Ok(Parent { dir, name })
    }

    fn walk_dir(&self, path: &[u8], links: bool, create: Option<u32>) -> io::Result<OwnedFd> {
        let missing = create.map_or(Missing::Fail, Missing::Create);
        let walked = self.walk(path, true, links, missing)?;
        let fd = walked
            .fd
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        if !fstat(fd.as_fd())?.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        Ok(fd)
    }

    /// The walk every resolution comes down to when `openat2` cannot do it (or the canonical
    /// path is wanted).
    fn walk(
        &self,
        path: &[u8],
        follow_last: bool,
        links: bool,
        missing: Missing,
    ) -> io::Result<Walked> {
        self.walk_visible(path, follow_last, links, missing, None)
    }

    /// The walk, asking `visible` about every entry it lands on (its canonical in-root path,
    /// whether it is a directory): each directory on the way, each link before it is
    /// followed, and the last entry. One it refuses ends the walk with [`Hidden`].
    fn walk_visible(
        &self,
        path: &[u8],
        follow_last: bool,
        links: bool,
        missing: Missing,
        visible: Option<Visible<'_>>,
    ) -> io::Result<Walked> {
        let mut stack: Vec<OwnedFd> = vec![self.fd.try_clone()?];
        let mut names: Vec<OsString> = Vec::new();
        let mut pending = components(path);
        pending.reverse();
        let mut followed = 0;
        // Components past a missing one (kept as written, with `Missing::Keep`).
        let mut beyond = 0usize;
        while let Some(c) = pending.pop() {
            let last = pending.is_empty();
            if c == ".." {
                if beyond > 0 {
                    beyond -= 1;
                    names.pop();
                } else if stack.len() > 1 {
                    stack.pop();
                    names.pop();
                }
                continue;
            }
            if beyond > 0 {
                beyond += 1;
                names.push(c);
                continue;
            }
            let top = stack.last().map(AsFd::as_fd).unwrap_or_else(|| self.fd());
            let fd = match openat(top, &c, libc::O_PATH | libc::O_NOFOLLOW, 0) {
                Ok(fd) => fd,
                Err(e) if errno(&e) == libc::ENOENT => match missing {
                    Missing::Fail => return Err(e),
                    Missing::Keep => {
                        beyond = 1;
                        names.push(c);
                        continue;
                    }
                    Missing::Create(mode) => {
                        let cn = cstr(&c)?;
                        // SAFETY: valid descriptor and name.
                        let r = unsafe {
                            libc::mkdirat(top.as_raw_fd(), cn.as_ptr(), mode as libc::mode_t)
                        };
                        if r != 0 {
                            let e = io::Error::last_os_error();
                            if errno(&e) != libc::EEXIST {
                                return Err(e);
                            }
                        }
                        pending.push(c);
                        continue;
                    }
                },
                Err(e) => return Err(e),
            };
            let st = fstat(fd.as_fd())?;
            if let Some(visible) = visible {
                let here = rel(&names, &c);
                if !visible(&here, st.is_dir()) {
                    return Err(io::Error::new(io::ErrorKind::NotFound, Hidden(here)));
                }
            }
            if st.is_symlink() && (!last || follow_last) {
                if !links {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                followed += 1;
                if followed > MAX_LINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = readlink_fd(fd.as_fd())?;
                if target.is_empty() {
                    return Err(io::Error::from_raw_os_error(libc::ENOENT));
                }
                if target[0] == b'/' {
                    stack.truncate(1);
                    names.clear();
                }
                let mut t = components(&target);
                t.reverse();
                pending.extend(t);
                continue;
            }
            if !last && !st.is_dir() {
                return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
            }
            stack.push(fd);
            names.push(c);
        }
        let fd = if beyond > 0 {
            None
        } else if names.is_empty() {
            Some(self.fd.try_clone()?)
        } else {
            stack.pop()
        };
        Ok(Walked { fd, names })
    }
}

fn rel(names: &[OsString], last: &OsStr) -> PathBuf {
    names
        .iter()
        .map(OsString::as_os_str)
        .chain([last])
        .collect()
}

impl Parent {
    fn c_name(&self) -> io::Result<CString> {
        cstr(&self.name)
    }

    fn raw(&self) -> RawFd {
        self.dir.as_raw_fd()
    }

    /// What is at the name, not following it; `None` when nothing is.
    pub fn lstat(&self) -> io::Result<Option<Stat>> {
        match fstatat(self.dir.as_fd(), &self.name, libc::AT_SYMLINK_NOFOLLOW) {
            Ok(s) => Ok(Some(s)),
            Err(e) if errno(&e) == libc::ENOENT => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes whatever is at the name (a directory with everything in it); nothing there is
    /// fine. Never follows a link.
    pub fn remove_all(&self) -> io::Result<()> {
        remove_all_at(self.dir.as_fd(), &self.name)
    }

    /// Removes the entry at the name: an empty directory (`dir`) or anything else.
    pub fn unlink(&self, dir: bool) -> io::Result<()> {
        let c = self.c_name()?;
        let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
        // SAFETY: valid descriptor and name.
        check(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), flags) })
    }

    /// Makes a directory at the name (no umask applied to `mode`) and opens it.
    pub fn mkdir(&self, mode: u32) -> io::Result<OwnedFd> {
        let c = self.c_name()?;
        // SAFETY: valid descriptor and name.
        check(unsafe { libc::mkdirat(self.raw(), c.as_ptr(), 0o700) })?;
        let fd = self.open_dir()?;
        // SAFETY: a descriptor we own.
        check(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) })?;
        Ok(fd)
    }

    /// Opens the directory at the name (not following a link).
    pub fn open_dir(&self) -> io::Result<OwnedFd> {
        openat(
            self.dir.as_fd(),
            &self.name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
    }

    /// Creates a new file at the name (fails if anything is there; never follows a link).
    pub fn create_file(&self, mode: u32) -> io::Result<File> {
        openat(
            self.dir.as_fd(),
            &self.name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            mode,
        )
        .map(File::from)
    }

    /// Opens the file at the name for reading (not following a link).
    pub fn open_file(&self) -> io::Result<File> {
        openat(
            self.dir.as_fd(),
            &self.name,
            libc::O_RDONLY | libc::O_NOFOLLOW,
            0,
        )
        .map(File::from)
    }

    /// Makes a symbolic link at the name.
    pub fn symlink(&self, target: &OsStr) -> io::Result<()> {
        let (c, t) = (self.c_name()?, cstr(target)?);
        // SAFETY: valid descriptor and NUL-terminated strings.
        check(unsafe { libc::symlinkat(t.as_ptr(), self.raw(), c.as_ptr()) })
    }

    /// Makes the name a hard link to `source`'s entry (a link itself is linked, not followed).
    pub fn hard_link_from(&self, source: &Parent) -> io::Result<()> {
        let (c, s) = (self.c_name()?, source.c_name()?);
        // SAFETY: valid descriptors and names.
        check(unsafe { libc::linkat(source.raw(), s.as_ptr(), self.raw(), c.as_ptr(), 0) })
    }

    /// Makes a device node or fifo at the name.
    pub fn mknod(&self, mode: u32, dev: libc::dev_t) -> io::Result<()> {
        let c = self.c_name()?;
        // SAFETY: valid descriptor and name.
        check(unsafe { libc::mknodat(self.raw(), c.as_ptr(), mode as libc::mode_t, dev) })
    }

    /// Sets the owner of the entry itself (a link is not followed).
    pub fn lchown(&self, uid: u32, gid: u32) -> io::Result<()> {
        let c = self.c_name()?;
        // SAFETY: valid descriptor and name.
        check(unsafe {
            libc::fchownat(self.raw(), c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW)
        })
    }

    /// Sets the permission bits, unless the entry is a symbolic link (whose mode means
    /// nothing, and which a plain chmod would follow; docker's `handleLChmod` does the same).
    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        match self.lstat()? {
            Some(s) if !s.is_symlink() => {
                let c = self.c_name()?;
                // SAFETY: valid descriptor and name; the entry is not a link, and nothing else
                // writes this root while wharf does.
                check(unsafe { libc::fchmodat(self.raw(), c.as_ptr(), mode as libc::mode_t, 0) })
            }
            _ => Ok(()),
        }
    }

    /// Sets the modification (and access) time of the entry itself.
    pub fn set_mtime(&self, secs: i64) -> io::Result<()> {
        let c = self.c_name()?;
        let t = libc::timespec {
            tv_sec: secs as libc::time_t,
            tv_nsec: 0,
        };
        let times = [t, t];
        // SAFETY: valid descriptor, name and a two-element timespec array.
        check(unsafe {
            libc::utimensat(
                self.raw(),
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
    }

    /// Sets an extended attribute on the entry itself (a link is not followed).
    pub fn set_xattr(&self, key: &str, value: &[u8]) -> io::Result<()> {
        let path = self.proc_path();
        xattr::set(&path, key, value)
    }

    /// The entry, named through this process's descriptor of its directory: the directory
    /// can no longer be swapped, and the name is never followed by `l*` calls.
    fn proc_path(&self) -> PathBuf {
        Path::new("/proc/self/fd")
            .join(self.raw().to_string())
            .join(&self.name)
    }
}

/// The names in the directory `dir` (an open, readable descriptor).
pub fn list_dir(dir: BorrowedFd) -> io::Result<Vec<OsString>> {
    let fd = openat(dir, OsStr::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    // SAFETY: fdopendir takes over the descriptor (closed by closedir).
    let d = unsafe { libc::fdopendir(fd.as_raw_fd()) };
    if d.is_null() {
        return Err(io::Error::last_os_error());
    }
    std::mem::forget(fd);
    let mut out = Vec::new();
    loop {
        // SAFETY: d is an open DIR stream; each entry is valid until the next readdir.
        let e = unsafe { libc::readdir(d) };
        if e.is_null() {
            break;
        }
        // SAFETY: d_name is NUL-terminated.
        let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) };
        let b = name.to_bytes();
        if b != b"." && b != b".." {
            out.push(OsString::from_vec(b.to_vec()));
        }
    }
    // SAFETY: closes the stream and its descriptor.
    unsafe { libc::closedir(d) };
    Ok(out)
}

fn remove_all_at(dir: BorrowedFd, name: &OsStr) -> io::Result<()> {
    let st = match fstatat(dir, name, libc::AT_SYMLINK_NOFOLLOW) {
        Ok(s) => s,
        Err(e) if errno(&e) == libc::ENOENT => return Ok(()),
        Err(e) => return Err(e),
    };
    let c = cstr(name)?;
    if st.is_dir() {
        let sub = openat(
            dir,
            name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        for child in list_dir(sub.as_fd())? {
            remove_all_at(sub.as_fd(), &child)?;
        }
        // SAFETY: valid descriptor and name.
        check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) })
    } else {
        // SAFETY: valid descriptor and name.
        check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) })
    }
}

#[cfg(test)]
thread_local! {
    /// This thread resolves with the walk, never `openat2` (tests run both).
    pub(crate) static FORCE_WALK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
mod tests;
