use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context as _;
use wharf_common::client::Credentials;
use wharf_common::reference::DOCKER_HUB;

use crate::cli::{LoginArgs, LogoutArgs};
use crate::context::Ctx;
use crate::printer::out;

/// `https://host/v1/` or `host` → `host`; nothing → Docker Hub.
fn server_host(server: Option<&str>) -> String {
    let Some(s) = server else {
        return DOCKER_HUB.to_owned();
    };
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or(s);
    match host {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
        h => h.to_owned(),
    }
}

/// Reads a line from the terminal, without echo when `secret`.
fn prompt(label: &str, secret: bool) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        anyhow::bail!(
            "cannot prompt for the {label} without a terminal; use --username and --password-stdin"
        );
    }
    let mut err = std::io::stderr();
    write!(err, "{label}: ")?;
    err.flush()?;
    let fd = libc::STDIN_FILENO;
    // SAFETY: termios is plain data; tcgetattr fills it for a terminal fd checked above.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr writes into `saved`; a descriptor that is no terminal is an error.
    let have_termios = secret && unsafe { libc::tcgetattr(fd, &mut saved) } == 0;
    if have_termios {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: sets attributes of the same terminal from a copy of its own settings.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if have_termios {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
        writeln!(err)?;
    }
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

pub async fn login(ctx: &Ctx, args: LoginArgs) -> anyhow::Result<ExitCode> {
    let host = server_host(args.server.as_deref());
    if args.password.is_some() && args.password_stdin {
        anyhow::bail!("--password and --password-stdin are mutually exclusive");
    }
    let username = match args.username {
        Some(u) => u,
        None => prompt("Username", false)?,
    };
    if username.is_empty() {
        anyhow::bail!("a user name is required to log in to {host}");
    }
    let password = match (args.password, args.password_stdin) {
        (Some(p), _) => {
            tracing::warn!(
                "using --password on the command line is insecure; use --password-stdin"
            );
            p
        }
        (None, true) => {
            let mut p = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut p)
                .context("reading the password from stdin")?;
            p.trim_end_matches(['\n', '\r']).to_owned()
        }
        (None, false) => prompt("Password", true)?,
    };
    if password.is_empty() {
        anyhow::bail!("a password is required to log in to {host}");
    }
    let creds = Credentials { username, password };
    let client = ctx.client(None)?;
    client
        .check_login(&host, &creds)
        .await
        .with_context(|| format!("logging in to {host}"))?;
    let store = ctx.credentials();
    store
        .store(&host, &creds)
        .await
        .with_context(|| format!("saving credentials for {host}"))?;
    out("Login Succeeded")?;
    Ok(ExitCode::SUCCESS)
}

pub async fn logout(ctx: &Ctx, args: LogoutArgs) -> anyhow::Result<ExitCode> {
    let host = server_host(args.server.as_deref());
    let store = ctx.credentials();
    if store.erase(&host).await? {
        out(format!("Removing login credentials for {host}"))?;
    } else {
        out(format!("Not logged in to {host}"))?;
    }
    Ok(ExitCode::SUCCESS)
}
