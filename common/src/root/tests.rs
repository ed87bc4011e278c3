#![allow(clippy::unwrap_used)]

use std::os::unix::fs::symlink;

use super::*;

/// A root with: `d/f` (a file), `abs -> /d` and `rel -> d` (links to a directory),
/// `up -> ../../..` (climbing), `loop1 <-> loop2`, `empty -> ""` is impossible (the kernel
/// refuses empty targets), `dangling -> nowhere`, `file/`… a file used as a directory, and a
/// chain of `n` links `c0 -> c1 -> … -> d`.
fn tree(chain: usize) -> (tempfile::TempDir, Root) {
    let t = tempfile::tempdir().unwrap();
    let r = t.path().join("root");
    std::fs::create_dir_all(r.join("d")).unwrap();
    std::fs::write(r.join("d/f"), "in").unwrap();
    std::fs::write(r.join("file"), "x").unwrap();
    symlink("/d", r.join("abs")).unwrap();
    symlink("d", r.join("rel")).unwrap();
    symlink("../../..", r.join("up")).unwrap();
    symlink("loop2", r.join("loop1")).unwrap();
    symlink("loop1", r.join("loop2")).unwrap();
    symlink("nowhere", r.join("dangling")).unwrap();
    // Outside the root: what an escape would reach.
    std::fs::create_dir_all(t.path().join("d")).unwrap();
    std::fs::write(t.path().join("d/f"), "OUT").unwrap();
    for i in 0..chain {
        let next = if i + 1 == chain {
            "d".to_owned()
        } else {
            format!("c{}", i + 1)
        };
        symlink(next, r.join(format!("c{i}"))).unwrap();
    }
    let root = Root::open(&r).unwrap();
    (t, root)
}

/// Runs `f` once with `openat2` and once with the walk.
fn both(f: impl Fn(&str)) {
    for walk in [false, true] {
        FORCE_WALK.with(|c| c.set(walk));
        f(if walk { "walk" } else { "openat2" });
    }
    FORCE_WALK.with(|c| c.set(false));
}

fn read(root: &Root, p: &str) -> Result<String, i32> {
    root.read(Path::new(p))
        .map(|b| String::from_utf8(b).unwrap())
        .map_err(|e| e.raw_os_error().unwrap_or(-1))
}

#[test]
fn paths_resolve_inside_the_root() {
    let (_t, root) = tree(MAX_LINKS - 1);
    both(|how| {
        for p in [
            "d/f",
            "/d/f",
            "abs/f",
            "rel/f",
            "up/d/f",
            "../../d/f",
            "d/../../d/f",
            "c0/f",
        ] {
            assert_eq!(read(&root, p), Ok("in".into()), "{how}: {p}");
        }
        assert_eq!(read(&root, "dangling"), Err(libc::ENOENT), "{how}");
        assert_eq!(read(&root, "missing/f"), Err(libc::ENOENT), "{how}");
        assert_eq!(read(&root, "file/f"), Err(libc::ENOTDIR), "{how}");
        assert_eq!(read(&root, "loop1"), Err(libc::ELOOP), "{how}");
    });
}

#[test]
fn link_limit_is_the_kernels() {
    // MAX_LINKS links resolve; one more does not, with either resolver.
    let (_t, root) = tree(MAX_LINKS);
    let (_t2, over) = tree(MAX_LINKS + 1);
    both(|how| {
        assert_eq!(read(&root, "c0/f"), Ok("in".into()), "{how}");
        assert_eq!(read(&over, "c0/f"), Err(libc::ELOOP), "{how}");
    });
}

#[test]
fn parents_locations_and_made_directories() {
    let (t, root) = tree(0);
    both(|how| {
        // The parent of a path through links is the directory inside.
        let p = root.parent(Path::new("up/abs/new"), None).unwrap();
        assert_eq!(p.name, "new", "{how}");
        p.create_file(0o600).unwrap();
        assert!(t.path().join("root/d/new").exists(), "{how}");
        std::fs::remove_file(t.path().join("root/d/new")).unwrap();
        // Missing parents: an error, or made when asked.
        assert!(root.parent(Path::new("x/y/z"), None).is_err(), "{how}");
        let p = root.parent(Path::new("abs/x/y/z"), Some(0o755)).unwrap();
        assert_eq!(p.name, "z");
        assert!(t.path().join("root/d/x/y").is_dir(), "{how}");
        std::fs::remove_dir_all(t.path().join("root/d/x")).unwrap();
        // No links at all, when asked.
        let e = root.parent_without_links(Path::new("abs/f")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{how}");
        assert!(root.parent_without_links(Path::new("d/f")).is_ok(), "{how}");
    });
    // Where a path would be: links resolved, missing components kept.
    let rel = |p: &str, follow: bool| {
        root.locate(Path::new(p), follow)
            .unwrap()
            .strip_prefix(t.path().join("root"))
            .unwrap()
            .to_owned()
    };
    assert_eq!(rel("abs/missing/../g", true), Path::new("d/g"));
    assert_eq!(rel("up/rel", false), Path::new("rel"));
    assert_eq!(rel("up/rel", true), Path::new("d"));
    assert_eq!(rel("/abs", true), Path::new("d"));
}

#[test]
fn entries_are_changed_without_following_them() {
    let (t, root) = tree(0);
    let outside = t.path().join("d/f");
    let before = std::fs::metadata(&outside).unwrap();
    symlink(&outside, t.path().join("root/hostlink")).unwrap();
    let p = root.parent(Path::new("hostlink"), None).unwrap();
    p.chmod(0o4777).unwrap();
    p.set_mtime(222_222_222).unwrap();
    let after = std::fs::metadata(&outside).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&after.permissions()),
        std::os::unix::fs::PermissionsExt::mode(&before.permissions())
    );
    assert_eq!(after.modified().unwrap(), before.modified().unwrap());
    // remove_all removes the link, not what it points at.
    symlink(t.path().join("d"), t.path().join("root/hostdir")).unwrap();
    root.parent(Path::new("hostdir"), None)
        .unwrap()
        .remove_all()
        .unwrap();
    assert!(outside.exists());
    assert!(std::fs::symlink_metadata(t.path().join("root/hostdir")).is_err());
    // A directory goes with its contents.
    root.parent(Path::new("d"), None)
        .unwrap()
        .remove_all()
        .unwrap();
    assert!(!t.path().join("root/d").exists());
}
