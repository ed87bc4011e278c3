//! What a build is given and what it reports: options, the images and downloads it asks the
//! caller for, and its events.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures_util::future::BoxFuture;
use wharf_common::digest::Digest;
use wharf_common::image::Platform;
use wharf_common::media_type::Compression;

use super::error::Cause;
use crate::context::Context;
use crate::dockerfile::instructions::Lint;
use crate::sandbox::Network;
use crate::snapshot::Snapshots;

/// An image a build starts from or copies from: its config and layer files, as the local
/// store holds it.
pub type BaseImage = wharf_common::store::StoredImage;

/// A file `ADD` fetched from a URL.
#[derive(Clone, Debug)]
pub struct Download {
    /// Its sha256 digest.
    pub digest: Digest,
    /// The server's `Last-Modified` time, seconds since the epoch.
    pub last_modified: Option<i64>,
}

/// What a build needs from outside: base images (the CLI: the local store, pulling when
/// missing) and files from URLs.
pub trait Images: Send + Sync {
    /// The image `reference` for `platform`.
    fn base<'a>(
        &'a self,
        reference: &'a str,
        platform: &'a Platform,
    ) -> BoxFuture<'a, Result<BaseImage, Cause>>;

    /// Downloads `url` into the file `to`.
    fn fetch<'a>(&'a self, url: &'a str, to: &'a Path) -> BoxFuture<'a, Result<Download, Cause>>;
}

/// Whether an ADD source is a URL.
pub(crate) fn is_url(src: &str) -> bool {
    src.starts_with("http://") || src.starts_with("https://")
}

/// What to build.
pub struct BuildOptions {
    /// The Dockerfile's text.
    pub dockerfile: String,
    /// Its name, for errors.
    pub dockerfile_name: String,
    /// The context.
    pub context: Context,
    /// `--build-arg` values.
    pub build_args: Vec<(String, String)>,
    /// `--target`.
    pub target: Option<String>,
    /// `SOURCE_DATE_EPOCH`: clamps file times and sets `created`.
    pub source_date_epoch: Option<i64>,
    /// Layer compression.
    pub compression: Compression,
    /// The platform to build for (the host's).
    pub platform: Platform,
    /// A scratch directory for root filesystems and layers; removed by the caller.
    pub work_dir: PathBuf,
    /// The build cache: where step results are looked up (unless `no_cache`) and context file
    /// digests remembered.
    pub cache: Option<CacheAccess>,
    /// `--no-cache`: run every step (results are still recorded).
    pub no_cache: bool,
    /// `--build-context NAME=DIR`: directories `COPY --from=NAME` reads.
    pub named_contexts: BTreeMap<String, Context>,
    /// Where layer snapshots are kept (the store's), shared by builds.
    pub snapshots: Snapshots,
    /// Where `RUN --mount=type=cache` directories are kept between builds.
    pub cache_mounts: PathBuf,
    /// `--secret id=…`: what `RUN --mount=type=secret` gives, by id.
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// `--network`: RUN's network unless a RUN says otherwise.
    pub network: Network,
    /// `--allow network.host`: a RUN may use the host's network (BuildKit's entitlement).
    pub allow_network_host: bool,
    /// `--add-host NAME:ADDRESS`: extra `/etc/hosts` lines for RUN, as (name, address).
    pub add_hosts: Vec<(String, String)>,
    /// Stops the build when cancelled (the caller keeps a clone).
    pub cancel: super::CancelToken,
}

/// The local store as the build cache, reached from the build's blocking thread.
#[derive(Clone)]
pub struct CacheAccess {
    /// The store.
    pub store: wharf_common::store::LocalStore,
    /// The runtime to reach it on.
    pub runtime: tokio::runtime::Handle,
    /// The build's lease: a cached layer is protected by it before it is used.
    pub lease: std::sync::Arc<wharf_common::store::Lease>,
}

/// Progress of a build, for the CLI to render.
#[derive(Clone, Debug)]
pub enum BuildEvent {
    /// A step starts: `[stage i/n] INSTRUCTION`.
    Step {
        /// The step's number in this build (`#N`), unique across stages.
        id: usize,
        /// Stage name or index.
        stage: String,
        /// 1-based step number within the stage (FROM is 1).
        index: usize,
        /// Steps in the stage.
        total: usize,
        /// The instruction as written.
        text: String,
    },
    /// Step `id` was found in the cache.
    Cached(usize),
    /// Step `id` finished after this long.
    Done(usize, std::time::Duration),
    /// A lint warning.
    Warning(Lint),
    /// A line step `id` printed (RUN's output).
    Output(usize, String),
    /// Something the user should know about how the build runs (said once).
    Notice(String),
}

/// Where build events go.
pub type Events = std::sync::Arc<dyn Fn(BuildEvent) + Send + Sync>;
