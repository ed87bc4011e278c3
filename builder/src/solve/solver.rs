//! The state one build shares across its stages: the parsed Dockerfile, the options, resolved
//! bases and downloads, the layers written and cache entries used, and the views and network
//! namespace made on first use.

use crate::error::{IoContext, IoError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use wharf_common::digest::Digest;

use crate::context::Context;
use crate::dockerfile::instructions::Dockerfile;
use crate::dockerfile::shell::Lexer;
use crate::snapshot::View;

use super::api::{BaseImage, BuildOptions, Download, Events};
use super::cache::{ContextDigests, NewLayer};

pub(super) struct Solver {
    /// ADD's URLs, fetched.
    pub(super) urls: BTreeMap<String, (PathBuf, Download)>,
    pub(super) df: Dockerfile,
    pub(super) opts: BuildOptions,
    pub(super) meta: Vec<(String, String)>,
    pub(super) bases: BTreeMap<String, BaseImage>,
    pub(super) lexer: Lexer,
    pub(super) events: Events,
    /// Layers this build wrote, with their step keys, for the cache.
    pub(super) new_layers: std::sync::Mutex<Vec<NewLayer>>,
    /// Cache entries used.
    pub(super) cache_hits: std::sync::Mutex<Vec<Digest>>,
    /// Remembered context file digests, per context root.
    pub(super) context_memo: std::sync::Mutex<BTreeMap<String, ContextDigests>>,
    /// Numbers steps across stages running at once.
    pub(super) step_ids: std::sync::atomic::AtomicUsize,
    /// Read-only roots of stages and images that COPY --from and RUN --mount read.
    pub(super) from_views: std::sync::Mutex<BTreeMap<String, View>>,
    /// The context less what `.dockerignore` leaves out, for RUN's bind mounts: made on the
    /// first one that needs it.
    pub(super) context_view: std::sync::Mutex<Option<crate::context::view::FilteredView>>,
    /// The network namespace (and NAT) RUN steps on the default network share, made on the
    /// first one.
    pub(super) network: std::sync::Mutex<Option<std::sync::Arc<crate::sandbox::SharedNetwork>>>,
}

impl Solver {
    pub(crate) fn lexer(&self) -> &Lexer {
        &self.lexer
    }

    pub(crate) fn url(&self, url: &str) -> Option<&(PathBuf, Download)> {
        self.urls.get(url)
    }

    pub(crate) fn context(&self) -> &Context {
        &self.opts.context
    }

    /// The network namespace RUN steps with the default network join.
    pub(crate) fn shared_network(
        &self,
    ) -> Result<std::sync::Arc<crate::sandbox::SharedNetwork>, IoError> {
        let mut network = self
            .network
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = &*network {
            return Ok(n.clone());
        }
        let made =
            std::sync::Arc::new(crate::sandbox::SharedNetwork::new().at("giving RUN its network")?);
        *network = Some(made.clone());
        Ok(made)
    }

    /// Where the context's entry `rel` (canonical, from [`Context::resolve`]) is for a bind
    /// mount: in the filtered view when `.dockerignore` leaves anything out.
    pub(crate) fn context_for_mount(&self, disk: &Path) -> Result<PathBuf, IoError> {
        let ctx = self.context();
        if ctx.ignore().is_empty() {
            return Ok(disk.to_owned());
        }
        let mut view = self
            .context_view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let root = match &*view {
            Some(v) => v.root().to_owned(),
            None => {
                let made = crate::context::view::FilteredView::new(ctx, &self.opts.work_dir)?;
                let root = made.root().to_owned();
                *view = Some(made);
                root
            }
        };
        Ok(root.join(ctx.relative(disk)))
    }
}
