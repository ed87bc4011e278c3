//! Blobs of mirrored repositories. A blob kept under any name is linked into the asking
//! repository; one kept nowhere is fetched once, whoever asks for it meanwhile: the first
//! request starts a *flight* (the upstream's response written into an upload file, hashed on
//! the way, committed when the digest checks), and every request for the digest while it flies
//! follows it, Range requests included: from the last [`WINDOW`] bytes received, kept in
//! memory, or from the upload file for a client further behind. The last byte of the blob is
//! held back until the digest is checked, so a client whose bytes do not match gets a broken response,
//! never a complete wrong one, and nothing is stored. The flight runs on its own task: a client
//! that goes away does not stop it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use futures_util::{StreamExt, stream};
use tokio::sync::watch;
use wharf_common::digest::Digest;

use super::{Failure, FailureKind, Target};
use crate::metrics::MirrorMetric;
use crate::service::{BlobFound, Registry, ServiceError, UploadId};
use crate::storage::{ByteStream, Placement, StorageError};

/// How much of a growing upload one read takes.
const READ_STEP: usize = 1 << 20;
/// How many of the latest bytes received a flight keeps in memory for its readers: well
/// beyond what the upload's writer holds before it writes (its batches and aligned buffer), so
/// a reader outside the window finds its bytes in the file.
const WINDOW: u64 = 32 << 20;

/// What a blob request of a mirrored repository finds.
pub enum MirroredBlob {
    /// Kept here (under this name now).
    Kept(BlobFound),
    /// Being fetched.
    Fetching(Arc<Flight>),
}

/// One blob on its way from an upstream.
pub struct Flight {
    /// The blob.
    pub digest: Digest,
    /// Its size, as the upstream announced it.
    pub size: u64,
    /// The repository it is linked into when kept.
    stored: crate::service::Repository,
    id: String,
    state: watch::Receiver<State>,
    window: Mutex<Window>,
}

/// The latest bytes received, in the chunks they came in: `start..end` of the blob.
#[derive(Default)]
struct Window {
    start: u64,
    end: u64,
    chunks: std::collections::VecDeque<Bytes>,
}

impl Window {
    fn push(&mut self, chunk: Bytes) {
        self.end += chunk.len() as u64;
        self.chunks.push_back(chunk);
        while self.end - self.start > WINDOW {
            let Some(first) = self.chunks.pop_front() else {
                break;
            };
            self.start += first.len() as u64;
        }
    }

    /// Up to `max` bytes at `pos`, if the window holds them.
    fn read(&self, pos: u64, max: usize) -> Option<Bytes> {
        if pos < self.start || pos >= self.end {
            return None;
        }
        let mut at = self.start;
        for c in &self.chunks {
            let next = at + c.len() as u64;
            if pos < next {
                let from = usize::try_from(pos - at).ok()?;
                let to = c.len().min(from.saturating_add(max));
                return Some(c.slice(from..to));
            }
            at = next;
        }
        None
    }
}

#[derive(Clone, Debug)]
enum State {
    /// Bytes are arriving (sent again for every chunk, so readers wake).
    Receiving,
    /// All received and the digest checked; being committed.
    Verified,
    /// Verified and committed: the blob is in storage.
    Done,
    Failed(String),
}

type Start = Shared<BoxFuture<'static, Result<Arc<Flight>, Failure>>>;

/// A flight's key: the upstream (whose credentials fetch it) and the digest.
type FlightKey = (String, Digest);

/// The flights under way.
#[derive(Default)]
pub(crate) struct Flights(Mutex<HashMap<FlightKey, Start>>);

/// Removes a flight from [`Flights`] when dropped.
struct Forget {
    reg: Registry,
    key: FlightKey,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.reg.inner.flights.lock().remove(&self.key);
    }
}

impl Flights {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FlightKey, Start>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Registry {
    /// A blob of a mirrored repository: kept, or on its way (one upstream fetch however many
    /// ask).
    pub async fn mirrored_blob(
        &self,
        t: &Target,
        digest: &Digest,
    ) -> Result<MirroredBlob, ServiceError> {
        let up = &t.upstream;
        match self.blob(&t.stored, digest).await {
            Ok(found) => {
                up.count(MirrorMetric::Hit, 1);
                return Ok(MirroredBlob::Kept(found));
            }
            Err(ServiceError::BlobUnknown(_)) => {}
            Err(e) => return Err(e),
        }
        // The same layer kept from this upstream for another image: linked here, nothing
        // fetched. (Only from this upstream's names: a digest alone must not open local
        // repositories, or other upstreams' private ones, to whoever pulls through the mirror.)
        let prefix = format!("{}/", up.name());
        let holder = self
            .inner
            .meta
            .blob_repos(digest, super::super::MOUNT_CANDIDATES)
            .await?
            .into_iter()
            .find(|(repo, _)| repo.starts_with(&prefix));
        if let Some((_, size)) = holder {
            // Under the sweep lock, so a collection cannot take the file between the check
            // and the link.
            let _sweep = self.inner.sweep.shared().await?;
            if self.inner.storage.stat(digest).await?.is_some() {
                self.inner
                    .meta
                    .link_blob(t.stored.as_str(), digest, size)
                    .await?;
                up.count(MirrorMetric::Hit, 1);
                return Ok(MirroredBlob::Kept(BlobFound::Stored(size)));
            }
        }
        let key = (up.name().to_owned(), digest.clone());
        let start = self
            .inner
            .flights
            .lock()
            .entry(key)
            .or_insert_with(|| {
                // The start runs on its own task: a client that goes away does not leave it
                // half done for the next one.
                let reg = self.clone();
                let t = t.clone();
                let digest = digest.clone();
                let started = tokio::spawn(async move { reg.start_flight(t, digest).await });
                async move {
                    started.await.unwrap_or_else(|e| {
                        Err(Failure {
                            kind: FailureKind::Unavailable,
                            reason: format!("starting a fetch: {e}"),
                        })
                    })
                }
                .boxed()
                .shared()
            })
            .clone();
        match start.await {
            Ok(f) => {
                if f.stored != t.stored {
                    // Joined a fetch for another image: linked here too once it is kept.
                    self.link_when_kept(&f, t);
                }
                Ok(MirroredBlob::Fetching(f))
            }
            Err(f) => Err(f.into_service(|_| ServiceError::BlobUnknown(digest.clone()))),
        }
    }

    fn link_when_kept(&self, f: &Arc<Flight>, t: &Target) {
        let reg = self.clone();
        let mut state = f.state.clone();
        let (digest, size, repo) = (f.digest.clone(), f.size, t.stored.clone());
        tokio::spawn(async move {
            loop {
                let now = state.borrow_and_update().clone();
                match now {
                    State::Done => break,
                    State::Failed(_) => return,
                    State::Receiving | State::Verified => {
                        if state.changed().await.is_err() && !matches!(*state.borrow(), State::Done)
                        {
                            return;
                        }
                    }
                }
            }
            let Ok(_sweep) = reg.inner.sweep.shared().await else {
                return;
            };
            if let Err(e) = reg.inner.meta.link_blob(repo.as_str(), &digest, size).await {
                tracing::warn!(repo = repo.as_str(), %digest, error = %e, "linking a mirrored blob");
            }
        });
    }

    /// The size of a blob of a mirrored repository, asking the upstream (a HEAD, nothing
    /// fetched) when it is not kept.
    pub async fn mirrored_blob_size(
        &self,
        t: &Target,
        digest: &Digest,
    ) -> Result<BlobFound, ServiceError> {
        match self.blob(&t.stored, digest).await {
            Ok(found) => return Ok(found),
            Err(ServiceError::BlobUnknown(_)) => {}
            Err(e) => return Err(e),
        }
        let key = (t.upstream.name().to_owned(), digest.clone());
        let flying = self
            .inner
            .flights
            .lock()
            .get(&key)
            .and_then(|s| s.peek().cloned());
        if let Some(Ok(f)) = flying {
            return Ok(BlobFound::Stored(f.size));
        }
        let up = &t.upstream;
        let asked = async {
            let repo = up.repository(&t.remote).await?;
            repo.blob_exists(digest, wharf_common::client::Operation::Pull)
                .await
                .map_err(|e| up.failure(&e))
        };
        match up.within(asked).await {
            Ok(Some(size)) => Ok(BlobFound::Stored(size)),
            Ok(None) => Err(ServiceError::BlobUnknown(digest.clone())),
            Err(f) => Err(f.into_service(|_| ServiceError::BlobUnknown(digest.clone()))),
        }
    }

    /// Opens the upstream's blob and starts writing it; the flight is forgotten (so a later
    /// request starts afresh) when it fails or ends.
    async fn start_flight(&self, t: Target, digest: Digest) -> Result<Arc<Flight>, Failure> {
        let opened = self.open_flight(&t, &digest).await;
        if opened.is_err() {
            self.inner
                .flights
                .lock()
                .remove(&(t.upstream.name().to_owned(), digest));
        }
        opened
    }

    async fn open_flight(&self, t: &Target, digest: &Digest) -> Result<Arc<Flight>, Failure> {
        let up = t.upstream.clone();
        let open = async {
            let repo = up.repository(&t.remote).await?;
            repo.get_blob_sized(digest)
                .await
                .map_err(|e| up.failure(&e))
        };
        let (size, body) = up.within(open).await?;
        let local = |e: ServiceError| Failure {
            kind: FailureKind::Unavailable,
            reason: format!(
                "keeping a blob of upstream {}: {}",
                up.name(),
                wharf_common::error::Chain(&e)
            ),
        };
        self.inner.headroom.admit(size).map_err(local)?;
        let id = format!("mirror-{}", UploadId::new());
        self.inner
            .storage
            .create_upload(&id)
            .await
            .map_err(|e| local(e.into()))?;
        up.count(MirrorMetric::Miss, 1);
        tracing::info!(upstream = up.name(), repo = t.stored.as_str(), %digest, size, "fetching a blob for the mirror");
        let (tx, rx) = watch::channel(State::Receiving);
        let flight = Arc::new(Flight {
            digest: digest.clone(),
            size,
            stored: t.stored.clone(),
            id: id.clone(),
            state: rx,
            window: Mutex::new(Window::default()),
        });
        let reg = self.clone();
        let t = t.clone();
        let digest = digest.clone();
        let flight_of_task = flight.clone();
        tokio::spawn(async move {
            // Forgotten however the task ends (a panic included), so the next request for the
            // digest starts afresh instead of joining a flight nobody flies.
            let _forget = Forget {
                reg: reg.clone(),
                key: (t.upstream.name().to_owned(), digest.clone()),
            };
            let tx = Arc::new(tx);
            let end = match reg.fly(&t, &flight_of_task, body, tx.clone()).await {
                Ok(()) => State::Done,
                Err(reason) => {
                    tracing::warn!(upstream = t.upstream.name(), %digest, %reason, "a mirrored blob was not kept");
                    let _ = reg.inner.storage.remove_upload(&id).await;
                    State::Failed(reason)
                }
            };
            tx.send_replace(end);
        });
        Ok(flight)
    }

    /// Receives, hashes and writes the upstream's bytes, then commits them if they are the
    /// blob.
    async fn fly(
        &self,
        t: &Target,
        flight: &Arc<Flight>,
        body: wharf_common::blob::BlobStream,
        tx: Arc<watch::Sender<State>>,
    ) -> Result<(), String> {
        let (digest, size, id) = (&flight.digest, flight.size, flight.id.as_str());
        let up = t.upstream.clone();
        let (seen, wake) = (flight.clone(), tx.clone());
        let counted: ByteStream = body
            .map(move |chunk| {
                if let Ok(c) = &chunk {
                    up.count(MirrorMetric::UpstreamBytes, c.len() as u64);
                    if let Ok(mut w) = seen.window.lock() {
                        w.push(c.clone());
                    }
                    wake.send_replace(State::Receiving);
                }
                chunk
            })
            .boxed();
        let storage = &self.inner.storage;
        let appended = storage
            .append(
                id,
                counted,
                Some(digest.algorithm().hasher()),
                Placement::Cached,
            )
            .await
            .map_err(|e| format!("receiving it: {}", wharf_common::error::Chain(&e)))?;
        let actual = appended
            .hasher
            .unwrap_or_else(|| digest.algorithm().hasher())
            .finish();
        if actual != *digest || appended.len != size {
            return Err(format!(
                "the upstream sent {} bytes hashing to {actual}, not the {size} bytes of {digest}",
                appended.len
            ));
        }
        // Readers may send the last byte now; the file stays readable until the commit
        // renames it, and then the blob is in storage.
        tx.send_replace(State::Verified);
        let _sweep = self.inner.sweep.shared().await.map_err(|e| e.to_string())?;
        storage
            .commit(id, digest)
            .await
            .map_err(|e| format!("storing it: {}", wharf_common::error::Chain(&e)))?;
        self.inner
            .meta
            .link_blob(t.stored.as_str(), digest, size)
            .await
            .map_err(|e| format!("recording it: {}", wharf_common::error::Chain(&e)))?;
        tracing::info!(upstream = t.upstream.name(), repo = t.stored.as_str(), %digest, size, "mirrored blob kept");
        Ok(())
    }

    /// `len` bytes of a flying blob from `offset`, as they arrive.
    pub fn read_flight(&self, flight: &Arc<Flight>, offset: u64, len: u64) -> ByteStream {
        struct Reader {
            reg: Registry,
            flight: Arc<Flight>,
            state: watch::Receiver<State>,
            pos: u64,
            end: u64,
            tail: Option<ByteStream>,
        }
        let reader = Reader {
            reg: self.clone(),
            state: flight.state.clone(),
            flight: flight.clone(),
            pos: offset,
            end: offset + len,
            tail: None,
        };
        stream::unfold(reader, |mut r| async move {
            loop {
                if let Some(tail) = r.tail.as_mut() {
                    let next = tail.next().await;
                    return next.map(|chunk| (chunk, r));
                }
                if r.pos >= r.end {
                    return None;
                }
                let state = r.state.borrow_and_update().clone();
                match state {
                    State::Failed(reason) => {
                        r.pos = r.end;
                        let e = std::io::Error::other(format!(
                            "the mirror could not fetch {}: {reason}",
                            r.flight.digest
                        ));
                        return Some((Err(e), r));
                    }
                    State::Done => {
                        match r
                            .reg
                            .inner
                            .storage
                            .read(&r.flight.digest, r.pos, r.end - r.pos)
                            .await
                        {
                            Ok(s) => r.tail = Some(s),
                            Err(e) => {
                                r.pos = r.end;
                                return Some((Err(std::io::Error::other(e)), r));
                            }
                        }
                        continue;
                    }
                    State::Receiving | State::Verified => {
                        let verified = matches!(state, State::Verified);
                        // The blob's last byte waits for the digest check.
                        let limit = if verified {
                            r.end
                        } else {
                            r.end.min(r.flight.size.saturating_sub(1))
                        };
                        if r.pos < limit {
                            let want = usize::try_from(limit - r.pos)
                                .unwrap_or(READ_STEP)
                                .min(READ_STEP);
                            let (recent, behind) = match r.flight.window.lock() {
                                Ok(w) => (w.read(r.pos, want), r.pos < w.start),
                                Err(_) => (None, true),
                            };
                            if let Some(b) = recent {
                                r.pos += b.len() as u64;
                                return Some((Ok::<Bytes, _>(b), r));
                            }
                            if behind {
                                match r
                                    .reg
                                    .inner
                                    .storage
                                    .read_upload(&r.flight.id, r.pos, want)
                                    .await
                                {
                                    Ok(b) if !b.is_empty() => {
                                        r.pos += b.len() as u64;
                                        return Some((Ok(b), r));
                                    }
                                    // Not written yet, or committed meanwhile: the state says
                                    // which.
                                    Ok(_) | Err(StorageError::UploadMissing(_)) => {}
                                    Err(e) => {
                                        r.pos = r.end;
                                        return Some((Err(std::io::Error::other(e)), r));
                                    }
                                }
                            }
                        }
                        if r.state.changed().await.is_err()
                            && matches!(*r.state.borrow(), State::Receiving | State::Verified)
                        {
                            r.pos = r.end;
                            let e = std::io::Error::other("the mirror's fetch ended unfinished");
                            return Some((Err(e), r));
                        }
                    }
                }
            }
        })
        .boxed()
    }
}
