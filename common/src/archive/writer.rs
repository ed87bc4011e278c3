//! Writing images as a docker-archive that is also an OCI image layout (tar or directory).
//!
//! ```text
//! blobs/sha256/<hex>   every manifest, config and layer, byte-exact as stored
//! oci-layout           {"imageLayoutVersion":"1.0.0"}
//! index.json           one entry per image and name (io.containerd.image.name, …ref.name)
//! manifest.json        docker load's list: [{"Config", "RepoTags", "Layers"}]
//! ```

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::copy::{
    BlobStream, CopiedImage, CopyError, Dest, Fetched, Source, Transfer, bytes_stream,
    open_verified, verified,
};
use crate::digest::Digest;
use crate::image::{BlobRef, Manifest, manifest_blobs};
use crate::media_type;
use crate::progress::{BlobKind, CopyEvent, Reporter, Skip};
use crate::reference::{Reference, RepoName};

use super::{ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, ArchiveError};

/// Where an archive goes.
pub enum ArchiveTarget {
    /// A tar stream (a file, or standard output).
    Tar(Box<dyn Write + Send>),
    /// An OCI image layout directory.
    Dir(PathBuf),
}

enum Cmd {
    Blob {
        digest: Digest,
        size: u64,
        data: mpsc::Receiver<Bytes>,
        done: oneshot::Sender<Result<(), ArchiveError>>,
    },
    Finish {
        files: Vec<(String, Vec<u8>)>,
        done: oneshot::Sender<Result<(), ArchiveError>>,
    },
}

struct SavedImage {
    top: Fetched,
    config: Option<Digest>,
    layers: Vec<Digest>,
    names: Vec<Reference>,
}

/// A copy destination writing an archive. Blobs are written one at a time, in the order the
/// copies bring them; [`ArchiveDest::finish`] writes the metadata files and closes it.
pub struct ArchiveDest {
    tx: mpsc::Sender<Cmd>,
    written: std::sync::Mutex<HashSet<Digest>>,
    images: std::sync::Mutex<Vec<SavedImage>>,
    worker: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Reads bytes arriving over a channel, failing if fewer than announced arrive.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
    left: u64,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            if self.left == 0 {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "blob stream ended early",
                    ));
                }
            }
        }
        let n = buf.len().min(self.cur.len());
        if n as u64 > self.left {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "blob longer than announced",
            ));
        }
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        self.left -= n as u64;
        Ok(n)
    }
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm(), d.hex())
}

trait Sink {
    fn file(&mut self, path: &str, size: u64, data: &mut dyn Read) -> Result<(), ArchiveError>;
    fn dir(&mut self, path: &str) -> Result<(), ArchiveError>;
    fn finish(&mut self) -> Result<(), ArchiveError>;
}

struct TarSink(tar::Builder<Box<dyn Write + Send>>);

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

impl Sink for TarSink {
    fn file(&mut self, path: &str, size: u64, data: &mut dyn Read) -> Result<(), ArchiveError> {
        let mut h = header(tar::EntryType::Regular, size, 0o644);
        self.0
            .append_data(&mut h, path, data)
            .map_err(ArchiveError::io("writing archive member", path))
    }

    fn dir(&mut self, path: &str) -> Result<(), ArchiveError> {
        let mut h = header(tar::EntryType::Directory, 0, 0o755);
        self.0
            .append_data(&mut h, path, std::io::empty())
            .map_err(ArchiveError::io("writing archive member", path))
    }

    fn finish(&mut self) -> Result<(), ArchiveError> {
        self.0
            .finish()
            .map_err(ArchiveError::io("finishing archive", "(archive)"))?;
        self.0
            .get_mut()
            .flush()
            .map_err(ArchiveError::io("flushing archive", "(archive)"))
    }
}

struct DirSink(PathBuf);

impl Sink for DirSink {
    fn file(&mut self, path: &str, size: u64, data: &mut dyn Read) -> Result<(), ArchiveError> {
        let dest = self.0.join(path);
        let dir = dest.parent().unwrap_or(&self.0).to_owned();
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)
            .map_err(ArchiveError::io("creating file in", &dir))?;
        let n = std::io::copy(data, &mut tmp).map_err(ArchiveError::io("writing", &dest))?;
        if n != size {
            return Err(ArchiveError::io("writing", &dest)(std::io::Error::other(
                format!("expected {size} bytes, got {n}"),
            )));
        }
        tmp.as_file()
            .sync_all()
            .map_err(ArchiveError::io("syncing", &dest))?;
        tmp.persist(&dest)
            .map_err(|e| ArchiveError::io("writing", &dest)(e.error))?;
        Ok(())
    }

    fn dir(&mut self, path: &str) -> Result<(), ArchiveError> {
        let d = self.0.join(path);
        std::fs::create_dir_all(&d).map_err(ArchiveError::io("creating directory", d))
    }

    fn finish(&mut self) -> Result<(), ArchiveError> {
        Ok(())
    }
}

fn run_worker(mut sink: Box<dyn Sink + Send>, mut rx: mpsc::Receiver<Cmd>) {
    let mut dirs: HashSet<String> = HashSet::new();
    while let Some(cmd) = rx.blocking_recv() {
        match cmd {
            Cmd::Blob {
                digest,
                size,
                data,
                done,
            } => {
                let path = blob_path(&digest);
                let mut result = Ok(());
                for d in ["blobs".to_owned(), format!("blobs/{}", digest.algorithm())] {
                    if result.is_ok() && dirs.insert(d.clone()) {
                        result = sink.dir(&d);
                    }
                }
                if result.is_ok() {
                    let mut reader = ChannelReader {
                        rx: data,
                        cur: Bytes::new(),
                        left: size,
                    };
                    result = sink.file(&path, size, &mut reader);
                }
                let failed = result.is_err();
                let _ = done.send(result);
                if failed {
                    // A half-written member leaves the tar unusable: stop here.
                    return;
                }
            }
            Cmd::Finish { files, done } => {
                let mut result = Ok(());
                for (name, bytes) in &files {
                    if result.is_ok() {
                        result = sink.file(name, bytes.len() as u64, &mut &bytes[..]);
                    }
                }
                if result.is_ok() {
                    result = sink.finish();
                }
                let _ = done.send(result);
                return;
            }
        }
    }
}

impl ArchiveDest {
    /// Starts writing an archive to `target`.
    pub fn new(target: ArchiveTarget) -> Result<ArchiveDest, ArchiveError> {
        let sink: Box<dyn Sink + Send> = match target {
            ArchiveTarget::Tar(w) => Box::new(TarSink(tar::Builder::new(w))),
            ArchiveTarget::Dir(d) => {
                std::fs::create_dir_all(&d).map_err(ArchiveError::io("creating directory", &d))?;
                Box::new(DirSink(d))
            }
        };
        let (tx, rx) = mpsc::channel(4);
        let worker = tokio::task::spawn_blocking(move || run_worker(sink, rx));
        Ok(ArchiveDest {
            tx,
            written: std::sync::Mutex::new(HashSet::new()),
            images: std::sync::Mutex::new(Vec::new()),
            worker: std::sync::Mutex::new(Some(worker)),
        })
    }

    fn mark_written(&self, d: &Digest) -> bool {
        self.written
            .lock()
            .map(|mut w| w.insert(d.clone()))
            .unwrap_or(false)
    }

    fn is_written(&self, d: &Digest) -> bool {
        self.written.lock().map(|w| w.contains(d)).unwrap_or(false)
    }

    async fn write_stream(
        &self,
        blob: &BlobRef,
        mut stream: BlobStream,
        reporter: &dyn Reporter,
    ) -> Result<(), CopyError> {
        let (data_tx, data_rx) = mpsc::channel(8);
        let (done_tx, done_rx) = oneshot::channel();
        self.tx
            .send(Cmd::Blob {
                digest: blob.digest.clone(),
                size: blob.size,
                data: data_rx,
                done: done_tx,
            })
            .await
            .map_err(|_| ArchiveError::WriterGone)?;
        let mut done = 0u64;
        let mut failure = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => {
                    done += c.len() as u64;
                    reporter.report(CopyEvent::BlobProgress {
                        digest: blob.digest.clone(),
                        done,
                    });
                    if data_tx.send(c).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    failure = Some(CopyError::from_stream(&blob.digest, e));
                    break;
                }
            }
        }
        drop(data_tx);
        let written = done_rx.await.map_err(|_| ArchiveError::WriterGone)?;
        if let Some(f) = failure {
            return Err(f);
        }
        written?;
        Ok(())
    }

    async fn write_bytes(&self, digest: &Digest, bytes: &Bytes) -> Result<(), CopyError> {
        if !self.mark_written(digest) {
            return Ok(());
        }
        let blob = BlobRef {
            digest: digest.clone(),
            size: bytes.len() as u64,
            media_type: String::new(),
        };
        self.write_stream(
            &blob,
            verified(bytes_stream(bytes, 0), &blob),
            &crate::progress::Silent,
        )
        .await
    }

    /// Writes `oci-layout`, `index.json` and `manifest.json`, and closes the archive.
    pub async fn finish(self) -> Result<(), ArchiveError> {
        let images =
            std::mem::take(&mut *self.images.lock().map_err(|_| ArchiveError::WriterGone)?);
        let mut index_entries = Vec::new();
        let mut docker_entries = Vec::new();
        for img in &images {
            let base = json!({
                "mediaType": img.top.media_type,
                "digest": img.top.digest.as_str(),
                "size": img.top.bytes.len(),
            });
            if img.names.is_empty() {
                index_entries.push(base.clone());
            }
            for name in &img.names {
                let mut e = base.clone();
                e["annotations"] = json!({
                    ANNOTATION_IMAGE_NAME: name.to_string(),
                    ANNOTATION_REF_NAME: name.tag().map(|t| t.to_string()).unwrap_or_default(),
                });
                index_entries.push(e);
            }
            if let Some(config) = &img.config {
                docker_entries.push(json!({
                    "Config": blob_path(config),
                    "RepoTags": img.names.iter().map(Reference::familiar).collect::<Vec<_>>(),
                    "Layers": img.layers.iter().map(blob_path).collect::<Vec<_>>(),
                }));
            }
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_INDEX,
            "manifests": index_entries,
        });
        let files = vec![
            (
                "oci-layout".to_owned(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            ("index.json".to_owned(), index.to_string().into_bytes()),
            (
                "manifest.json".to_owned(),
                serde_json::Value::Array(docker_entries)
                    .to_string()
                    .into_bytes(),
            ),
        ];
        let (done_tx, done_rx) = oneshot::channel();
        self.tx
            .send(Cmd::Finish {
                files,
                done: done_tx,
            })
            .await
            .map_err(|_| ArchiveError::WriterGone)?;
        let result = done_rx.await.map_err(|_| ArchiveError::WriterGone)?;
        let worker = self.worker.lock().ok().and_then(|mut w| w.take());
        if let Some(w) = worker {
            let _ = w.await;
        }
        result
    }
}

impl Dest for ArchiveDest {
    fn has_blob<'a>(&'a self, blob: &'a BlobRef) -> BoxFuture<'a, Result<Option<Skip>, CopyError>> {
        Box::pin(async move { Ok(self.is_written(&blob.digest).then_some(Skip::Exists)) })
    }

    fn put_blob<'a>(
        &'a self,
        blob: &'a BlobRef,
        kind: BlobKind,
        src: &'a dyn Source,
        reporter: &'a dyn Reporter,
    ) -> BoxFuture<'a, Result<Transfer, CopyError>> {
        Box::pin(async move {
            if !self.mark_written(&blob.digest) {
                return Ok(Transfer::Skipped(Skip::Exists));
            }
            reporter.report(CopyEvent::BlobStarted {
                digest: blob.digest.clone(),
                size: blob.size,
                kind,
                offset: 0,
            });
            let stream = open_verified(src, blob).await?;
            self.write_stream(blob, stream, reporter).await?;
            Ok(Transfer::Sent)
        })
    }

    fn put_manifest<'a>(&'a self, manifest: &'a Fetched) -> BoxFuture<'a, Result<(), CopyError>> {
        Box::pin(async move { self.write_bytes(&manifest.digest, &manifest.bytes).await })
    }

    fn commit<'a>(
        &'a self,
        image: &'a CopiedImage,
        names: &'a [Reference],
        _source_repo: Option<&'a RepoName>,
    ) -> BoxFuture<'a, Result<(), CopyError>> {
        Box::pin(async move {
            self.write_bytes(&image.top.digest, &image.top.bytes)
                .await?;
            let (config, layers) = match Manifest::parse(
                &image.top.bytes,
                &image.top.media_type,
                &image.top.digest,
            )? {
                Manifest::Image(m) => {
                    let (c, l) = manifest_blobs(&m, &image.top.digest)?;
                    (Some(c.digest), l.into_iter().map(|l| l.digest).collect())
                }
                Manifest::Index(_) => (None, Vec::new()),
            };
            if let Ok(mut imgs) = self.images.lock() {
                imgs.push(SavedImage {
                    top: image.top.clone(),
                    config,
                    layers,
                    names: names.to_vec(),
                });
            }
            Ok(())
        })
    }

    fn concurrency(&self) -> usize {
        1
    }
}

/// Whether `path` looks like an OCI image layout directory.
pub fn is_layout_dir(path: &Path) -> bool {
    path.join("oci-layout").is_file() && path.join("index.json").is_file()
}
