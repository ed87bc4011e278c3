//! Command-line arguments (clap derive). Flags follow docker's where docker has the same thing.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// wharf: a daemonless image builder and OCI registry.
#[derive(Debug, Parser)]
#[command(name = "wharf", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The local store [default: /var/lib/wharf as root, else $XDG_DATA_HOME/wharf]
    #[arg(long, global = true, env = "WHARF_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// Directory of docker's config.json, for credentials [default: $DOCKER_CONFIG or ~/.docker];
    /// for `serve`, the registry's TOML config file
    #[arg(long = "config", global = true, value_name = "PATH")]
    pub docker_config: Option<PathBuf>,

    /// An insecure registry: HTTPS without checking its certificate, or plain HTTP when it has
    /// no HTTPS (as registries on loopback addresses always are)
    #[arg(
        long = "insecure-registry",
        global = true,
        value_name = "HOST",
        env = "WHARF_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,

    /// Check registries' TLS certificates (--tls-verify=false: never, as podman's flag)
    #[arg(
        long = "tls-verify",
        global = true,
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub tls_verify: bool,

    /// Trust this CA certificate (PEM) for every registry, besides the system's and the
    /// certs.d directories' (/etc/docker/certs.d/HOST:PORT/, $DOCKER_CONFIG/certs.d/,
    /// /etc/containers/certs.d/)
    #[arg(long = "ca-cert", global = true, value_name = "FILE")]
    pub ca_certs: Vec<PathBuf>,

    /// More logging on stderr (--verbose debug, twice trace); RUST_LOG overrides. No short
    /// form: -v is `run`'s volume flag, as in docker
    #[arg(long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// How progress is shown: auto picks tty on a terminal, plain otherwise
    #[arg(long, global = true, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    Auto,
    Tty,
    Plain,
    /// JSON lines (`wharf build`; other commands print plain lines)
    Json,
    Quiet,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Download an image from a registry
    Pull(PullArgs),
    /// Upload an image to a registry
    Push(PushArgs),
    /// Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE
    Tag(TagArgs),
    /// List images
    Images(ImagesArgs),
    /// Remove one or more images
    Rmi(RmiArgs),
    /// Show the config and manifest of images as JSON
    Inspect(InspectArgs),
    /// Show the history of an image
    History(HistoryArgs),
    /// Search a registry for repositories (Docker Hub's index unless a registry is named)
    Search(SearchArgs),
    /// Save images to a tar archive (docker-archive and OCI layout in one)
    Save(SaveArgs),
    /// Load images from a tar archive (docker or OCI; plain, gzip or zstd) or an OCI layout directory
    Load(LoadArgs),
    /// Import a root filesystem tarball as a one-layer image
    Import(ImportArgs),
    /// Log in to a registry
    Login(LoginArgs),
    /// Log out from a registry
    Logout(LogoutArgs),
    /// Build an image from a Dockerfile
    Build(BuildArgs),
    /// Run a command in a new container from an image (pulled when missing)
    Run(RunArgs),
    /// Manage the build cache
    Builder(BuilderArgs),
    /// Run the registry server (OCI Distribution v1.1) [default: 0.0.0.0:5000, data in --root]
    Serve(ServeArgs),
    /// Collect the registry's garbage (what `wharf serve` does every [gc] interval), beside a
    /// running server or not
    Gc(GcArgs),
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Print what would be deleted; delete nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete untagged manifests older than the grace period
    #[arg(long)]
    pub delete_untagged: bool,
    /// Print the totals only
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct RunArgs {
    /// Print help (-h is --hostname, as in docker)
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    /// Remove the container when it exits (wharf always does; accepted for docker
    /// compatibility)
    #[arg(long)]
    pub rm: bool,
    /// Keep standard input open
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the container a terminal
    #[arg(short, long)]
    pub tty: bool,
    /// Run an init as PID 1 that reaps orphans and forwards signals
    #[arg(long)]
    pub init: bool,
    /// Set an environment variable: KEY=VALUE, or KEY to pass this one's value
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// The working directory inside
    #[arg(short, long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// The user: name|uid[:group|gid]
    #[arg(short, long)]
    pub user: Option<String>,
    /// The network: bridge (the default: its own, with outbound NAT), none, or host
    #[arg(long, default_value = "bridge")]
    pub network: String,
    /// Add a line to /etc/hosts: NAME:ADDRESS
    #[arg(long = "add-host", value_name = "NAME:ADDRESS")]
    pub add_hosts: Vec<String>,
    /// Bind mount a host path: HOST:CONTAINER[:ro]
    #[arg(short, long = "volume", value_name = "HOST:CONTAINER[:ro]")]
    pub volumes: Vec<String>,
    /// Override the image's ENTRYPOINT ("" clears it)
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// The container's hostname (default: its id)
    #[arg(short = 'h', long)]
    pub hostname: Option<String>,
    /// Security options: seccomp=unconfined (no seccomp filter), no-new-privileges (always on)
    #[arg(long = "security-opt", value_name = "OPT")]
    pub security_opt: Vec<String>,
    /// Seconds to wait after passing SIGTERM (or a first Ctrl-C) on before killing the
    /// container; a second Ctrl-C kills it at once
    #[arg(long = "stop-timeout", value_name = "SECONDS", default_value_t = 10)]
    pub stop_timeout: u64,
    /// docker flags wharf does not have, refused with what to do instead
    #[command(flatten)]
    pub unsupported: UnsupportedRunFlags,
    /// The image, then the command and its arguments (default: the image's CMD); everything
    /// after the image belongs to the container
    #[arg(
        value_name = "IMAGE [COMMAND [ARG...]]",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub image_and_command: Vec<String>,
}

impl RunArgs {
    /// The image.
    pub fn image(&self) -> &str {
        self.image_and_command.first().map_or("", String::as_str)
    }

    /// The command and its arguments.
    pub fn command(&self) -> &[String] {
        self.image_and_command.get(1..).unwrap_or_default()
    }
}

/// docker run flags wharf does not support: taken so they can be refused plainly (clap would
/// otherwise suggest passing them after `--`).
#[derive(Debug, Args)]
pub struct UnsupportedRunFlags {
    #[arg(short = 'd', long = "detach", hide = true)]
    pub detach: bool,
    #[arg(short = 'p', long = "publish", hide = true)]
    pub publish: Vec<String>,
    #[arg(short = 'P', long = "publish-all", hide = true)]
    pub publish_all: bool,
    #[arg(long = "name", hide = true)]
    pub name: Option<String>,
    #[arg(long = "restart", hide = true)]
    pub restart: Option<String>,
    #[arg(short = 'm', long = "memory", hide = true)]
    pub memory: Option<String>,
    #[arg(long = "cpus", hide = true)]
    pub cpus: Option<String>,
    #[arg(long = "privileged", hide = true)]
    pub privileged: bool,
    #[arg(long = "cap-add", hide = true)]
    pub cap_add: Vec<String>,
    #[arg(long = "cap-drop", hide = true)]
    pub cap_drop: Vec<String>,
    #[arg(long = "device", hide = true)]
    pub device: Vec<String>,
}

impl UnsupportedRunFlags {
    /// The first one given, with what to do instead.
    pub fn refusal(&self) -> Option<String> {
        let say = |flag: &str, instead: &str| {
            Some(format!(
                "docker's {flag} is not supported by wharf run: {instead}"
            ))
        };
        if self.detach {
            return say(
                "-d/--detach",
                "containers run in the foreground; put `wharf run …` in the background with your shell or a service manager",
            );
        }
        if !self.publish.is_empty() || self.publish_all {
            return say(
                "-p/--publish",
                "no ports are published; use --network host to reach the container's ports on the host",
            );
        }
        if self.name.is_some() {
            return say(
                "--name",
                "containers are not kept, so they have no names; --hostname sets the host name inside",
            );
        }
        if self.restart.is_some() {
            return say("--restart", "use a service manager (systemd) to restart it");
        }
        if self.memory.is_some() || self.cpus.is_some() {
            return say(
                "-m/--memory and --cpus",
                "wharf sets no cgroup limits; run it under systemd-run with the limits you need",
            );
        }
        if self.privileged || !self.cap_add.is_empty() || !self.cap_drop.is_empty() {
            return say(
                "--privileged, --cap-add and --cap-drop",
                "containers get docker's default capabilities",
            );
        }
        if !self.device.is_empty() {
            return say(
                "--device",
                "device nodes are not passed in; mount what you need with -v",
            );
        }
        None
    }
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The build context: a directory, or - for a tar on stdin (with the Dockerfile in it)
    pub context: PathBuf,
    /// Also push every -t name to its registry
    #[arg(long)]
    pub push: bool,
    /// Write the image out too: type=oci|docker,dest=FILE (an archive), type=local,dest=DIR
    /// (its files), or just DIR
    #[arg(short, long = "output", value_name = "SPEC")]
    pub outputs: Vec<String>,
    /// Name and optionally a tag (NAME[:TAG]); repeatable
    #[arg(short, long = "tag")]
    pub tags: Vec<String>,
    /// The Dockerfile [default: CONTEXT/Dockerfile]
    #[arg(short, long)]
    pub file: Option<PathBuf>,
    /// Set a build-time variable (NAME=VALUE, or NAME to take it from the environment)
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,
    /// Read build-time variables from a file: NAME=VALUE lines, # comments (before --build-arg)
    #[arg(long = "build-arg-file", value_name = "FILE")]
    pub build_arg_files: Vec<PathBuf>,
    /// Build up to this stage
    #[arg(long)]
    pub target: Option<String>,
    /// A named context COPY --from=NAME reads (NAME=DIR); repeatable
    #[arg(long = "build-context", value_name = "NAME=DIR")]
    pub build_contexts: Vec<String>,
    /// Layer compression
    #[arg(long, value_enum, default_value_t = LayerCompression::Gzip)]
    pub compression: LayerCompression,
    /// Write the image id to this file
    #[arg(long)]
    pub iidfile: Option<PathBuf>,
    /// Platform to build for (only the host's can be built)
    #[arg(long)]
    pub platform: Option<String>,
    /// Print only the image id
    #[arg(short, long)]
    pub quiet: bool,
    /// Run every step; do not use the build cache
    #[arg(long)]
    pub no_cache: bool,
    /// A secret for RUN --mount=type=secret: id=ID,src=FILE or id=ID,env=VAR
    #[arg(long = "secret", value_name = "id=ID,src=FILE|env=VAR")]
    pub secrets: Vec<String>,
    /// RUN's network unless a RUN says otherwise: default (its own, with outbound NAT), none,
    /// or host (which also allows RUN --network=host)
    #[arg(long, default_value = "default")]
    pub network: String,
    /// Grant an entitlement: network.host (RUN --network=host may use the host's network)
    #[arg(long = "allow", value_name = "ENTITLEMENT")]
    pub allow: Vec<String>,
    /// Add a line to RUN's /etc/hosts: NAME:ADDRESS
    #[arg(long = "add-host", value_name = "NAME:ADDRESS")]
    pub add_hosts: Vec<String>,
}

#[derive(Debug, Args)]
pub struct BuilderArgs {
    #[command(subcommand)]
    pub command: BuilderCommand,
}

#[derive(Debug, Subcommand)]
pub enum BuilderCommand {
    /// Remove the build cache
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Do not ask (wharf never asks; accepted for docker compatibility)
    #[arg(short, long)]
    pub force: bool,
    /// Remove all of it (the only mode; accepted for docker compatibility)
    #[arg(short, long)]
    pub all: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LayerCompression {
    Gzip,
    Zstd,
    Uncompressed,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 0.0.0.0:5000]
    #[arg(long, value_name = "ADDR")]
    pub addr: Option<std::net::SocketAddr>,
    /// PEM certificate chain: serve HTTPS (with --tls-key)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Users file (bcrypt, as `htpasswd -B` writes it): turns authentication on
    #[arg(long, value_name = "FILE")]
    pub htpasswd: Option<PathBuf>,
    /// How clients authenticate: docker's token flow or basic credentials on every request
    /// [default: token]
    #[arg(long, value_enum, value_name = "MODE")]
    pub auth_mode: Option<AuthModeArg>,
    /// Mirror an upstream registry (pull-through cache): `docker.io` (Docker Hub), a registry
    /// host, or NAME=URL; repeatable, the first is where dockerd's `registry-mirrors`
    /// requests go
    #[arg(long, value_name = "UPSTREAM")]
    pub mirror: Vec<String>,
    /// Print the resolved configuration as TOML and exit
    #[arg(long)]
    pub show_config: bool,
    /// Log lines as text or JSON
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthModeArg {
    Token,
    Basic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image to pull (NAME[:TAG|@DIGEST])
    pub image: String,
    /// Platform to pull from a multi-platform image (os/arch[/variant]) [default: the host's]
    #[arg(long)]
    pub platform: Option<String>,
    /// Pull every platform of a multi-platform image, and the index
    #[arg(short = 'a', long)]
    pub all_platforms: bool,
    /// Print only the image name
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Image to push (NAME[:TAG])
    pub image: String,
    /// Print only the pushed digest
    #[arg(short, long)]
    pub quiet: bool,
    /// Upload blobs in chunks of this many bytes instead of one request each
    #[arg(long, value_name = "BYTES")]
    pub chunk_size: Option<u64>,
    /// Blobs uploaded at once
    #[arg(long, default_value_t = 8)]
    pub jobs: usize,
}

#[derive(Debug, Args)]
pub struct TagArgs {
    /// Existing image (name or id)
    pub source: String,
    /// New name
    pub target: String,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Only images of this repository (REPO[:TAG])
    pub repository: Option<String>,
    /// Show all images, also untagged ones
    #[arg(short, long)]
    pub all: bool,
    /// Only show image ids
    #[arg(short, long)]
    pub quiet: bool,
    /// Show digests
    #[arg(long)]
    pub digests: bool,
    /// Do not truncate ids
    #[arg(long)]
    pub no_trunc: bool,
    /// Output format: table, or json (one JSON object per line)
    #[arg(long, default_value = "table")]
    pub format: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Images (names or ids)
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Remove an id referenced by several repositories, untagging all of them
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Images (names or ids)
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Image (name or id)
    pub image: String,
    /// Do not truncate output
    #[arg(long)]
    pub no_trunc: bool,
    /// Only show layer ids
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format: table, or json (one JSON object per line)
    #[arg(long, default_value = "table")]
    pub format: OutputFormat,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// What to look for, in a registry's repository names: TERM (Docker Hub) or REGISTRY/TERM
    pub term: String,
    /// Most results to show
    #[arg(long, default_value_t = 25)]
    pub limit: u32,
    /// Do not truncate descriptions
    #[arg(long)]
    pub no_trunc: bool,
    /// Output format: table, or json (one JSON object per line)
    #[arg(long, default_value = "table")]
    pub format: OutputFormat,
}

#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Images (names or ids)
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Write to this file (or, with --dir, this OCI layout directory) instead of stdout
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Write an OCI image layout directory instead of a tar
    #[arg(long, requires = "output")]
    pub dir: bool,
    /// Save every platform of a multi-platform image
    #[arg(long)]
    pub all_platforms: bool,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Read from this archive or OCI layout directory instead of stdin
    #[arg(short, long)]
    pub input: Option<PathBuf>,
    /// Suppress the load output
    #[arg(short, long)]
    pub quiet: bool,
    /// Load every platform of a multi-platform image
    #[arg(long)]
    pub all_platforms: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Root filesystem tarball (plain, gzip or zstd), or - for stdin
    pub file: String,
    /// Name for the image (NAME[:TAG])
    pub name: Option<String>,
    /// Apply a Dockerfile instruction to the image config (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, USER, VOLUME, WORKDIR, STOPSIGNAL)
    #[arg(short, long = "change")]
    pub changes: Vec<String>,
    /// Commit message recorded in the history
    #[arg(short, long)]
    pub message: Option<String>,
    /// Platform recorded in the config (os/arch[/variant]) [default: the host's]
    #[arg(long)]
    pub platform: Option<String>,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Registry [default: Docker Hub]
    pub server: Option<String>,
    /// User name
    #[arg(short, long)]
    pub username: Option<String>,
    /// Password (prefer --password-stdin)
    #[arg(short, long)]
    pub password: Option<String>,
    /// Read the password from stdin
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// Registry [default: Docker Hub]
    pub server: Option<String>,
}
