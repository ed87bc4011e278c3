//! The images builds and `wharf run` start from: found in the local store, pulled when
//! missing, read with every blob protected by the command's lease (so an `rmi` or a `builder
//! prune` beside it cannot take them away). Also what a build fetches for ADD's URLs.

use std::sync::Arc;

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use wharf_builder::solve::{BaseImage, Cause, Download, Images};
use wharf_common::copy::{CopyOptions, RegistrySource, copy_to_store};
use wharf_common::image::Platform;
use wharf_common::reference::Reference;
use wharf_common::store::{Lease, LocalStore, StoreError};

use crate::context::{Ctx, find_image};

/// Base images from the local store, pulled when missing.
pub(crate) struct StoreImages<'a> {
    pub(crate) ctx: &'a Ctx,
    pub(crate) store: LocalStore,
    pub(crate) lease: Arc<Lease>,
}

impl StoreImages<'_> {
    /// The image `reference` for `platform`.
    pub(crate) async fn load(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> anyhow::Result<BaseImage> {
        // An image removed between finding it and protecting it is found (or pulled) again.
        let mut tries = 0;
        loop {
            let rec = self.find_or_pull(reference, platform).await?;
            match self.store.leased_image(&rec, platform, &self.lease).await {
                Err(StoreError::BlobUnknown(_)) if tries < 5 => tries += 1,
                other => return Ok(other?),
            }
        }
    }

    async fn find_or_pull(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> anyhow::Result<wharf_common::store::ImageRecord> {
        if let Ok(rec) = find_image(&self.store, reference).await {
            return Ok(rec);
        }
        let r: Reference = reference.parse()?;
        let client = self.ctx.client(None)?;
        let src = RegistrySource::new(client.repository(r.repo()).await?);
        let names = if r.tag().is_some() {
            vec![r.tagged()]
        } else {
            vec![]
        };
        let opts = CopyOptions {
            platform: Some(platform.clone()),
            all_platforms: false,
        };
        let silent = wharf_common::progress::Silent;
        copy_to_store(&src, &self.store, true, Some(&r), &names, &opts, &silent)
            .await
            // What the user needs first: it is not here; then why fetching it failed.
            .with_context(|| {
                format!(
                    "{reference} is not in the local store, and pulling {} failed",
                    r.familiar()
                )
            })?;
        find_image(&self.store, reference).await
    }
}

impl Images for StoreImages<'_> {
    fn fetch<'a>(
        &'a self,
        url: &'a str,
        to: &'a std::path::Path,
    ) -> BoxFuture<'a, Result<Download, Cause>> {
        Box::pin(async move {
            let client = self.ctx.client(None)?;
            let (digest, _, last_modified) = client.download(url, to).await?;
            Ok(Download {
                digest,
                last_modified: last_modified
                    .as_deref()
                    .and_then(wharf_common::time::parse_http_date),
            })
        })
    }

    fn base<'a>(
        &'a self,
        reference: &'a str,
        platform: &'a Platform,
    ) -> BoxFuture<'a, Result<BaseImage, Cause>> {
        Box::pin(async move { Ok(self.load(reference, platform).await?) })
    }
}
