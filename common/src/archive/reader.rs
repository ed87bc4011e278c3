//! Reading docker and OCI archives, and OCI layout directories, as copy sources.
//!
//! A tar is read once, front to back (it may come from a pipe): each regular member is written
//! to a staging directory while it is hashed, small metadata files are also kept in memory, and
//! links are remembered as aliases. Nothing reaches the store until the whole archive has been
//! read and understood; the staging directory goes away with the [`StagedArchive`].
//! Member paths are only ever used as lookup keys, never as paths to write to.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use crate::blob::{BlobStream, Fetched, bytes_stream, file_stream};
use crate::digest::{Algorithm, Digest, HashingWriter};
use crate::image::{BlobRef, detect_media_type};
use crate::media_type::{self, Compression};
use crate::reference::Reference;
use crate::store::StagingDir;

use super::{ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, ArchiveError};

/// Metadata files larger than this are not kept in memory (and so cannot be metadata).
const SMALL_LIMIT: u64 = 8 << 20;

#[derive(Clone, Debug)]
struct StagedFile {
    path: PathBuf,
    size: u64,
    digest: Digest,
    head: [u8; 4],
}

/// An archive or layout directory, staged for copying.
pub struct StagedArchive {
    /// Staging directory (removed on drop), or `None` for a layout directory read in place.
    _staging: Option<StagingDir>,
    /// For a layout directory: its root.
    layout_root: Option<PathBuf>,
    /// Archive member path → staged content.
    files: HashMap<String, StagedFile>,
    /// Digest → staged content (content verified by construction).
    blobs: HashMap<Digest, StagedFile>,
    /// Small members kept in memory.
    small: HashMap<String, Bytes>,
    /// Synthesized manifests (from a classic docker-archive's manifest.json).
    synthesized: HashMap<Digest, Bytes>,
}

/// Normalises a member path: no leading `./` or `/`, no empty or `.` components. `..` is kept
/// (and simply never matches anything the metadata names).
fn normalize(p: &str) -> String {
    p.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

fn join_rel(base_dir: &str, target: &str) -> String {
    if target.starts_with('/') {
        return normalize(target);
    }
    let mut parts: Vec<&str> = base_dir.split('/').filter(|c| !c.is_empty()).collect();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// `blobs/<alg>/<hex>` → that digest.
fn digest_of_blob_path(p: &str) -> Option<Digest> {
    let rest = p.strip_prefix("blobs/")?;
    let (alg, hex) = rest.split_once('/')?;
    Digest::from_parts(
        match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return None,
        },
        hex,
    )
    .ok()
}

/// One image found in an archive, ready to copy.
pub struct StagedImage<'a> {
    archive: &'a StagedArchive,
    /// The top-level manifest.
    pub top: Fetched,
    /// The names the archive gives it.
    pub names: Vec<Reference>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

impl StagedArchive {
    /// Reads a tar (already decompressed) into `staging`, a directory on the store's
    /// filesystem that the archive owns from now on. Blocking.
    pub fn stage_tar(input: impl Read, staging: StagingDir) -> Result<StagedArchive, ArchiveError> {
        let dir = staging.path().to_owned();
        let staging_path = dir.as_path();
        let mut archive = StagedArchive {
            _staging: Some(staging),
            layout_root: None,
            files: HashMap::new(),
            blobs: HashMap::new(),
            small: HashMap::new(),
            synthesized: HashMap::new(),
        };
        let mut links: Vec<(String, String)> = Vec::new();
        let mut tar = tar::Archive::new(input);
        let entries = tar
            .entries()
            .map_err(|source| ArchiveError::Corrupt { at: None, source })?;
        let mut n = 0u64;
        for entry in entries {
            let mut entry = entry.map_err(|source| ArchiveError::Corrupt { at: None, source })?;
            let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let name = normalize(&raw_path);
            let corrupt = |source| ArchiveError::Corrupt {
                at: Some(raw_path.clone()),
                source,
            };
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {}
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default();
                    let resolved = if entry.header().entry_type() == tar::EntryType::Symlink {
                        let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                        join_rel(dir, &target)
                    } else {
                        normalize(&target)
                    };
                    links.push((name, resolved));
                    continue;
                }
                _ => continue,
            }
            let declared = digest_of_blob_path(&name);
            let algorithm = declared
                .as_ref()
                .map_or(Algorithm::Sha256, Digest::algorithm);
            n += 1;
            let path = staging_path.join(format!("{n}"));
            let file = std::fs::File::create(&path).map_err(ArchiveError::io("creating", &path))?;
            let mut w =
                HashingWriter::new(std::io::BufWriter::with_capacity(1 << 20, file), algorithm);
            let size = entry.header().size().map_err(corrupt)?;
            let mut small = (size <= SMALL_LIMIT).then(|| Vec::with_capacity(size as usize));
            let mut buf = vec![0u8; 1 << 20];
            let mut head = [0u8; 4];
            let mut got = 0u64;
            loop {
                let k = entry.read(&mut buf).map_err(corrupt)?;
                if k == 0 {
                    break;
                }
                if got < 4 {
                    let take = (4 - got as usize).min(k);
                    head[got as usize..got as usize + take].copy_from_slice(&buf[..take]);
                }
                got += k as u64;
                std::io::Write::write_all(&mut w, &buf[..k])
                    .map_err(ArchiveError::io("writing", &path))?;
                if let Some(s) = small.as_mut() {
                    s.extend_from_slice(&buf[..k]);
                }
            }
            if got != size {
                return Err(corrupt(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("member has {got} of {size} bytes"),
                )));
            }
            let (digest, size, inner) = w.finish();
            inner
                .into_inner()
                .map_err(|e| ArchiveError::io("writing", &path)(e.into_error()))?;
            if declared.as_ref().is_some_and(|d| d != &digest) {
                return Err(ArchiveError::BlobDigest {
                    member: name,
                    actual: digest,
                });
            }
            let staged = StagedFile {
                path,
                size,
                digest: digest.clone(),
                head,
            };
            if let Some(s) = small {
                archive.small.insert(name.clone(), Bytes::from(s));
            }
            archive
                .blobs
                .entry(digest)
                .or_insert_with(|| staged.clone());
            archive.files.insert(name, staged);
        }
        for (name, target) in links {
            if let Some(f) = archive.files.get(&target).cloned() {
                if let Some(s) = archive.small.get(&target).cloned() {
                    archive.small.insert(name.clone(), s);
                }
                archive.files.insert(name, f);
            }
        }
        Ok(archive)
    }

    /// Opens an OCI image layout directory in place. Its blobs are verified as they are copied.
    pub fn open_layout(dir: &Path) -> Result<StagedArchive, ArchiveError> {
        let mut small = HashMap::new();
        for name in ["index.json", "oci-layout", "manifest.json"] {
            let p = dir.join(name);
            match std::fs::read(&p) {
                Ok(b) => {
                    small.insert(name.to_owned(), Bytes::from(b));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ArchiveError::io("reading", p)(e)),
            }
        }
        Ok(StagedArchive {
            _staging: None,
            layout_root: Some(dir.to_owned()),
            files: HashMap::new(),
            blobs: HashMap::new(),
            small,
            synthesized: HashMap::new(),
        })
    }

    fn read_small(&self, member: &str) -> Option<Bytes> {
        self.small.get(member).cloned()
    }

    /// Reads a whole blob of the archive (manifests, configs).
    fn read_blob(&self, d: &Digest) -> Result<Bytes, ArchiveError> {
        if let Some(b) = self.synthesized.get(d) {
            return Ok(b.clone());
        }
        if let Some(root) = &self.layout_root {
            let p = root
                .join("blobs")
                .join(d.algorithm().as_str())
                .join(d.hex());
            return match std::fs::read(&p) {
                Ok(b) => Ok(Bytes::from(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ArchiveError::Missing(
                    format!("blobs/{}/{}", d.algorithm(), d.hex()),
                )),
                Err(e) => Err(ArchiveError::io("reading", p)(e)),
            };
        }
        let f = self
            .blobs
            .get(d)
            .ok_or_else(|| ArchiveError::Missing(format!("blob {d}")))?;
        let p = &f.path;
        std::fs::read(p)
            .map(Bytes::from)
            .map_err(ArchiveError::io("reading staged", p))
    }

    fn blob_file(&self, d: &Digest) -> Option<(PathBuf, bool)> {
        if let Some(root) = &self.layout_root {
            return Some((
                root.join("blobs")
                    .join(d.algorithm().as_str())
                    .join(d.hex()),
                false,
            ));
        }
        self.blobs.get(d).map(|f| (f.path.clone(), true))
    }

    fn member(&self, name: &str) -> Result<StagedFile, ArchiveError> {
        let name = normalize(name);
        if let Some(f) = self.files.get(&name) {
            return Ok(f.clone());
        }
        let Some(root) = &self.layout_root else {
            return Err(ArchiveError::Missing(name));
        };
        // A layout directory: blobs are named by digest (verified when copied); other files
        // (a classic docker layout unpacked to a directory) are hashed here.
        let path = root.join(&name);
        let mut f = std::fs::File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ArchiveError::Missing(name.clone()),
            _ => ArchiveError::io("opening", &path)(e),
        })?;
        let size = f
            .metadata()
            .map_err(ArchiveError::io("reading", &path))?
            .len();
        let mut head = [0u8; 4];
        let _ = f
            .read(&mut head)
            .map_err(ArchiveError::io("reading", &path))?;
        let digest = match digest_of_blob_path(&name) {
            Some(d) => d,
            None => {
                let mut w = HashingWriter::new(std::io::sink(), Algorithm::Sha256);
                let mut f =
                    std::fs::File::open(&path).map_err(ArchiveError::io("opening", &path))?;
                std::io::copy(&mut f, &mut w).map_err(ArchiveError::io("reading", &path))?;
                w.finish().0
            }
        };
        Ok(StagedFile {
            path,
            size,
            digest,
            head,
        })
    }

    /// The images the archive holds, with the names it gives them. A docker `manifest.json`
    /// wins over `index.json`, as with `docker load`; its manifests are taken from the OCI index
    /// when one matches, and otherwise written the way docker would have pushed them.
    pub fn images(&mut self) -> Result<Vec<StagedImage<'_>>, ArchiveError> {
        let mut found: Vec<(Fetched, Vec<Reference>)> = Vec::new();
        let index_tops = self.index_images()?;
        if let Some(mj) = self.read_small("manifest.json") {
            let entries: Vec<DockerEntry> =
                serde_json::from_slice(&mj).map_err(|source| ArchiveError::Metadata {
                    member: "manifest.json".into(),
                    source,
                })?;
            for e in entries {
                let mut names = Vec::new();
                for t in e.repo_tags.unwrap_or_default() {
                    names.push(
                        t.parse::<Reference>()
                            .map_err(|err| ArchiveError::BadName {
                                member: "manifest.json".into(),
                                reason: err.to_string(),
                            })?,
                    );
                }
                let config = self.member(&e.config)?;
                let layers = e
                    .layers
                    .iter()
                    .map(|l| self.member(l))
                    .collect::<Result<Vec<_>, _>>()?;
                let top = match self.matching_index_manifest(&index_tops, &config, &layers) {
                    Some(t) => t,
                    None => self.synthesize(&config, &layers)?,
                };
                found.push((top, names));
            }
            // A multi-platform index has no line in manifest.json (docker's list names one
            // config per image); take it from index.json so `load --all-platforms` sees it.
            for (top, names) in &index_tops {
                if media_type::is_index(&top.media_type)
                    && !found.iter().any(|(f, _)| f.digest == top.digest)
                {
                    found.push((top.clone(), names.clone()));
                }
            }
        } else if self.read_small("index.json").is_some() {
            found = index_tops;
        } else {
            return Err(ArchiveError::NotAnArchive);
        }
        for (top, _) in &found {
            self.check_complete(top)?;
        }
        Ok(found
            .into_iter()
            .map(|(top, names)| StagedImage {
                archive: self,
                top,
                names,
            })
            .collect())
    }

    fn has_blob(&self, d: &Digest) -> bool {
        self.synthesized.contains_key(d)
            || match &self.layout_root {
                Some(root) => root
                    .join("blobs")
                    .join(d.algorithm().as_str())
                    .join(d.hex())
                    .is_file(),
                None => self.blobs.contains_key(d),
            }
    }

    /// Checks that every blob an image needs is in the archive, before anything is copied.
    fn check_complete(&self, top: &Fetched) -> Result<(), ArchiveError> {
        let missing =
            |d: &Digest| ArchiveError::Missing(format!("blobs/{}/{}", d.algorithm(), d.hex()));
        let bad = |e: crate::image::ImageError| ArchiveError::BadName {
            member: format!("blobs/{}/{}", top.digest.algorithm(), top.digest.hex()),
            reason: crate::error::Chain(&e).to_string(),
        };
        match crate::image::Manifest::parse(&top.bytes, &top.media_type, &top.digest)
            .map_err(bad)?
        {
            crate::image::Manifest::Image(m) => {
                let (config, layers) =
                    crate::image::manifest_blobs(&m, &top.digest).map_err(bad)?;
                for b in std::iter::once(&config).chain(&layers) {
                    if !self.has_blob(&b.digest) {
                        return Err(missing(&b.digest));
                    }
                }
            }
            crate::image::Manifest::Index(index) => {
                let mut present = 0;
                for entry in index.manifests() {
                    let child = BlobRef::from_descriptor(entry, &top.digest).map_err(bad)?;
                    if !self.has_blob(&child.digest) || !media_type::is_manifest(&child.media_type)
                    {
                        continue;
                    }
                    let bytes = self.read_blob(&child.digest)?;
                    self.check_complete(&Fetched {
                        bytes,
                        media_type: child.media_type.clone(),
                        digest: child.digest.clone(),
                    })?;
                    present += 1;
                }
                if present == 0 {
                    return Err(ArchiveError::Missing(format!(
                        "every image of index {}",
                        top.digest
                    )));
                }
            }
        }
        Ok(())
    }

    fn index_images(&self) -> Result<Vec<(Fetched, Vec<Reference>)>, ArchiveError> {
        let Some(ij) = self.read_small("index.json") else {
            return Ok(Vec::new());
        };
        let index: oci_spec::image::ImageIndex =
            serde_json::from_slice(&ij).map_err(|source| ArchiveError::Metadata {
                member: "index.json".into(),
                source,
            })?;
        let mut out: Vec<(Fetched, Vec<Reference>)> = Vec::new();
        for entry in index.manifests() {
            let digest = Digest::try_from(entry.digest()).map_err(|e| ArchiveError::BadName {
                member: "index.json".into(),
                reason: crate::error::Chain(&e).to_string(),
            })?;
            let bytes = self.read_blob(&digest)?;
            let actual = Digest::of(digest.algorithm(), &bytes);
            if actual != digest {
                return Err(ArchiveError::BlobDigest {
                    member: format!("blobs/{}/{}", digest.algorithm(), digest.hex()),
                    actual,
                });
            }
            let media_type = match entry.media_type().to_string() {
                mt if media_type::is_manifest(&mt) || media_type::is_index(&mt) => mt,
                _ => {
                    detect_media_type(&bytes, None, &digest).map_err(|e| ArchiveError::BadName {
                        member: "index.json".into(),
                        reason: crate::error::Chain(&e).to_string(),
                    })?
                }
            };
            let ann = entry.annotations().clone().unwrap_or_default();
            let name = ann
                .get(ANNOTATION_IMAGE_NAME)
                .and_then(|n| n.parse::<Reference>().ok())
                .or_else(|| {
                    // skopeo and others put a full reference in ref.name; a bare tag names nothing.
                    ann.get(ANNOTATION_REF_NAME)
                        .filter(|n| n.contains(['/', ':']) || n.contains('@'))
                        .and_then(|n| n.parse::<Reference>().ok())
                });
            match out.iter_mut().find(|(f, _)| f.digest == digest) {
                Some((_, names)) => names.extend(name),
                None => out.push((
                    Fetched {
                        bytes,
                        media_type,
                        digest,
                    },
                    name.into_iter().collect(),
                )),
            }
        }
        Ok(out)
    }

    fn matching_index_manifest(
        &self,
        tops: &[(Fetched, Vec<Reference>)],
        config: &StagedFile,
        layers: &[StagedFile],
    ) -> Option<Fetched> {
        tops.iter()
            .map(|(f, _)| f)
            .find(|f| {
                let Ok(crate::image::Manifest::Image(m)) =
                    crate::image::Manifest::parse(&f.bytes, &f.media_type, &f.digest)
                else {
                    return false;
                };
                let Ok((c, ls)) = crate::image::manifest_blobs(&m, &f.digest) else {
                    return false;
                };
                c.digest == config.digest
                    && ls.len() == layers.len()
                    && ls.iter().zip(layers).all(|(a, b)| a.digest == b.digest)
            })
            .cloned()
    }

    /// Writes the manifest docker would have made for a classic archive entry.
    fn synthesize(
        &mut self,
        config: &StagedFile,
        layers: &[StagedFile],
    ) -> Result<Fetched, ArchiveError> {
        let any_zstd = layers
            .iter()
            .any(|l| Compression::sniff(&l.head) == Compression::Zstd);
        let (mt, config_mt) = if any_zstd {
            (media_type::OCI_MANIFEST, media_type::OCI_CONFIG)
        } else {
            (media_type::DOCKER_MANIFEST, media_type::DOCKER_CONFIG)
        };
        let layer_mt = |l: &StagedFile| match (Compression::sniff(&l.head), any_zstd) {
            (Compression::Gzip, false) => media_type::DOCKER_LAYER_GZIP,
            (Compression::None, false) => media_type::DOCKER_LAYER,
            (Compression::Gzip, true) => media_type::OCI_LAYER_GZIP,
            (Compression::Zstd, _) => media_type::OCI_LAYER_ZSTD,
            (Compression::None, true) => media_type::OCI_LAYER,
        };
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": mt,
            "config": {"mediaType": config_mt, "size": config.size, "digest": config.digest.as_str()},
            "layers": layers.iter().map(|l| json!({
                "mediaType": layer_mt(l), "size": l.size, "digest": l.digest.as_str(),
            })).collect::<Vec<_>>(),
        });
        let bytes = Bytes::from(serde_json::to_vec_pretty(&manifest).map_err(|source| {
            ArchiveError::Metadata {
                member: "manifest.json".into(),
                source,
            }
        })?);
        let digest = Digest::sha256(&bytes);
        self.synthesized.insert(digest.clone(), bytes.clone());
        Ok(Fetched {
            bytes,
            media_type: mt.to_owned(),
            digest,
        })
    }
}

impl StagedImage<'_> {
    /// A whole blob of the archive (a manifest, a config).
    pub fn read_blob(&self, digest: &Digest) -> Result<Bytes, ArchiveError> {
        self.archive.read_blob(digest)
    }

    /// Opens `blob`'s bytes from `offset` on.
    pub async fn open_blob(&self, blob: &BlobRef, offset: u64) -> Result<BlobStream, ArchiveError> {
        if let Some(b) = self.archive.synthesized.get(&blob.digest) {
            return Ok(bytes_stream(b, offset));
        }
        let (path, _) = self
            .archive
            .blob_file(&blob.digest)
            .ok_or_else(|| ArchiveError::Missing(format!("blob {}", blob.digest)))?;
        file_stream(&path, offset).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ArchiveError::Missing(format!(
                    "blobs/{}/{}",
                    blob.digest.algorithm(),
                    blob.digest.hex()
                ))
            } else {
                ArchiveError::io("reading", &path)(e)
            }
        })
    }

    /// The staged file holding `blob`, when staging verified it (a tar's members are hashed as
    /// they are staged; a layout directory's files are not).
    pub fn verified_file(&self, blob: &BlobRef) -> Option<PathBuf> {
        match self.archive.blobs.get(&blob.digest) {
            Some(f) if self.archive.layout_root.is_none() && f.size == blob.size => {
                Some(f.path.clone())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise_without_escaping() {
        assert_eq!(normalize("./blobs//sha256/ab"), "blobs/sha256/ab");
        assert_eq!(normalize("/manifest.json"), "manifest.json");
        assert_eq!(join_rel("abc", "../def/layer.tar"), "def/layer.tar");
        assert_eq!(join_rel("", "../../x"), "x");
        assert!(digest_of_blob_path("blobs/sha256/zz").is_none());
    }
}
