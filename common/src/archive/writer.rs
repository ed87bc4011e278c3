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
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::blob::Fetched;
use crate::digest::Digest;
use crate::media_type;
use crate::reference::Reference;

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

/// An image written into an archive, as its metadata files list it.
pub struct ArchivedImage {
    /// Its top-level manifest.
    pub top: Fetched,
    /// Its config (`None` for an index).
    pub config: Option<Digest>,
    /// Its layers, in order.
    pub layers: Vec<Digest>,
    /// The names it is saved under.
    pub names: Vec<Reference>,
}

/// Writes an archive: blobs one at a time on a blocking worker, in the order they are given;
/// [`ArchiveWriter::finish`] writes the metadata files and closes it.
pub struct ArchiveWriter {
    tx: mpsc::Sender<Cmd>,
    worker: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// One blob being written: its bytes go through [`BlobWriter::send`], then
/// [`BlobWriter::close`] says whether the member was written whole.
pub struct BlobWriter {
    data: mpsc::Sender<Bytes>,
    done: oneshot::Receiver<Result<(), ArchiveError>>,
}

impl BlobWriter {
    /// Sends the next bytes; `false` when the writer stopped taking them (it failed: `close`
    /// says why).
    pub async fn send(&self, bytes: Bytes) -> bool {
        self.data.send(bytes).await.is_ok()
    }

    /// Ends the blob and waits for the member to be written.
    pub async fn close(self) -> Result<(), ArchiveError> {
        drop(self.data);
        self.done.await.map_err(|_| ArchiveError::WriterGone)?
    }
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

impl ArchiveWriter {
    /// Starts writing an archive to `target`.
    pub fn new(target: ArchiveTarget) -> Result<ArchiveWriter, ArchiveError> {
        let sink: Box<dyn Sink + Send> = match target {
            ArchiveTarget::Tar(w) => Box::new(TarSink(tar::Builder::new(w))),
            ArchiveTarget::Dir(d) => {
                std::fs::create_dir_all(&d).map_err(ArchiveError::io("creating directory", &d))?;
                Box::new(DirSink(d))
            }
        };
        let (tx, rx) = mpsc::channel(4);
        let worker = tokio::task::spawn_blocking(move || run_worker(sink, rx));
        Ok(ArchiveWriter {
            tx,
            worker: std::sync::Mutex::new(Some(worker)),
        })
    }

    /// Starts the member of the blob `digest`, `size` bytes long.
    pub async fn blob(&self, digest: &Digest, size: u64) -> Result<BlobWriter, ArchiveError> {
        let (data_tx, data_rx) = mpsc::channel(8);
        let (done_tx, done_rx) = oneshot::channel();
        self.tx
            .send(Cmd::Blob {
                digest: digest.clone(),
                size,
                data: data_rx,
                done: done_tx,
            })
            .await
            .map_err(|_| ArchiveError::WriterGone)?;
        Ok(BlobWriter {
            data: data_tx,
            done: done_rx,
        })
    }

    /// Writes `oci-layout`, `index.json` and `manifest.json` for `images`, and closes the
    /// archive.
    pub async fn finish(self, images: &[ArchivedImage]) -> Result<(), ArchiveError> {
        let mut index_entries = Vec::new();
        let mut docker_entries = Vec::new();
        for img in images {
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

/// Whether `path` looks like an OCI image layout directory.
pub fn is_layout_dir(path: &Path) -> bool {
    path.join("oci-layout").is_file() && path.join("index.json").is_file()
}
