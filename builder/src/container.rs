//! What `wharf run` derives from an image config and docker's flags: the command (ENTRYPOINT
//! and CMD combined as docker does), the environment, the user's HOME, and files read from the
//! image's layers without mounting them.

use std::path::{Path, PathBuf};

use serde_json::Value;

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// docker's rule: `--entrypoint` (or the image's ENTRYPOINT), then the arguments given (or,
/// when none are, the image's CMD, unless `--entrypoint` was given, which drops it).
pub fn command(
    config: &Value,
    entrypoint: Option<&str>,
    args: &[String],
) -> Result<Vec<String>, String> {
    let c = config.get("config").unwrap_or(&Value::Null);
    let mut argv = match entrypoint {
        Some("") => Vec::new(),
        Some(e) => vec![e.to_owned()],
        None => strings(c.get("Entrypoint")),
    };
    if !args.is_empty() {
        argv.extend(args.iter().cloned());
    } else if entrypoint.is_none() {
        argv.extend(strings(c.get("Cmd")));
    }
    if argv.is_empty() {
        return Err("no command specified: the image has no ENTRYPOINT or CMD; give one".into());
    }
    Ok(argv)
}

/// The image's environment with `-e` values over it (`K=V`, or `K` for the caller's own
/// value, dropped when unset), plus `HOSTNAME`, `HOME` when missing, and `TERM` for a
/// terminal.
pub fn environment(
    config: &Value,
    extra: &[String],
    host_env: impl Fn(&str) -> Option<String>,
    hostname: &str,
    home: &str,
    tty: bool,
) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |k: &str, v: String, env: &mut Vec<(String, String)>| match env
        .iter_mut()
        .find(|(ek, _)| ek == k)
    {
        Some(slot) => slot.1 = v,
        None => env.push((k.to_owned(), v)),
    };
    set("PATH", crate::solve::DEFAULT_PATH.to_owned(), &mut env);
    set("HOSTNAME", hostname.to_owned(), &mut env);
    for e in strings(config.get("config").and_then(|c| c.get("Env"))) {
        if let Some((k, v)) = e.split_once('=') {
            set(k, v.to_owned(), &mut env);
        }
    }
    if tty {
        set("TERM", "xterm".into(), &mut env);
    }
    for e in extra {
        match e.split_once('=') {
            Some((k, v)) => set(k, v.to_owned(), &mut env),
            None => {
                if let Some(v) = host_env(e) {
                    set(e, v, &mut env);
                }
            }
        }
    }
    if !env.iter().any(|(k, _)| k == "HOME") {
        set("HOME", home.to_owned(), &mut env);
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// A file of the image, read from its layer snapshots (top first) as the overlay would show
/// it: the topmost that has the path wins, a whiteout or an opaque directory on the way hides
/// what is below. Nothing is followed: a path through a symbolic link reads as missing (a
/// link in an image must never lead to the host's files).
pub fn read_file(lowers_top_first: &[PathBuf], path: &str) -> Option<String> {
    use std::io::Read;
    let rel = Path::new(path.trim_start_matches('/'));
    for lower in lowers_top_first {
        let root = wharf_common::root::Root::open(lower).ok()?;
        match root.parent_without_links(rel) {
            Ok(p) => match p.lstat().ok()? {
                Some(m) if m.mode & libc::S_IFMT == libc::S_IFREG => {
                    let mut s = String::new();
                    p.open_file().ok()?.read_to_string(&mut s).ok()?;
                    return Some(s);
                }
                // A whiteout, a directory, a link: not a file the image has.
                Some(_) => return None,
                None => {}
            },
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(_) => return None,
        }
        // An opaque parent hides every layer below (the parents up to the missing one are
        // real directories: the walk refused links).
        let p = lower.join(rel);
        let mut dir = p.parent();
        while let Some(d) = dir {
            if d == lower.as_path() {
                break;
            }
            if xattr::get(d, "trusted.overlay.opaque")
                .ok()
                .flatten()
                .is_some_and(|v| v == b"y")
            {
                return None;
            }
            dir = d.parent();
        }
    }
    None
}

/// The home directory of `uid` in a passwd file, or `/`.
pub fn home_of(passwd: &str, uid: u32) -> String {
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.get(2).and_then(|s| s.parse::<u32>().ok()) == Some(uid))
        .and_then(|f| f.get(5).map(|h| (*h).to_owned()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn entrypoint_and_cmd_combine_as_docker_does() {
        let img = json!({"config": {"Entrypoint": ["/bin/app"], "Cmd": ["--serve"]}});
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            command(&img, None, &[]).unwrap(),
            s(&["/bin/app", "--serve"])
        );
        assert_eq!(
            command(&img, None, &s(&["-v"])).unwrap(),
            s(&["/bin/app", "-v"])
        );
        assert_eq!(command(&img, Some("sh"), &[]).unwrap(), s(&["sh"]));
        assert_eq!(
            command(&img, Some("sh"), &s(&["-c", "x"])).unwrap(),
            s(&["sh", "-c", "x"])
        );
        assert_eq!(command(&img, Some(""), &s(&["ls"])).unwrap(), s(&["ls"]));
        assert!(command(&json!({"config": {}}), None, &[]).is_err());
        let env = environment(
            &json!({"config": {"Env": ["PATH=/bin", "A=1"]}}),
            &s(&["A=2", "B", "C"]),
            |k| (k == "B").then(|| "host".to_owned()),
            "abc",
            "/root",
            true,
        );
        assert_eq!(
            env,
            s(&[
                "PATH=/bin",
                "HOSTNAME=abc",
                "A=2",
                "TERM=xterm",
                "B=host",
                "HOME=/root"
            ])
        );
        assert_eq!(home_of("root:x:0:0::/root:/bin/sh\n", 0), "/root");
        assert_eq!(home_of("", 5), "/");
    }
}
