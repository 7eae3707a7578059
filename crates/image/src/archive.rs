//! `save` and `load`: image archives as `docker save` writes them and the OCI image layout.
//!
//! `save` writes the layout Docker 25+ writes: an OCI image layout (`oci-layout`,
//! `index.json`, `blobs/sha256/…`) plus Docker's `manifest.json`, so both OCI tools and older
//! `docker load` (which reads `manifest.json` and decompresses layers itself) accept it;
//! `--format oci` leaves out `manifest.json`. `load` reads all three kinds: OCI layouts, those
//! hybrids, and the legacy archives of older Docker (`<id>/layer.tar`, `<config>.json`).
//! Loading streams: every file that is not metadata goes straight into the blob store.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use serde_json::{json, Value};

use crate::digest::Digest;
use crate::images::{ImageError, ImageRecord, Images, MEDIA_CONFIG, MEDIA_MANIFEST};
use crate::model;
use crate::reference::Reference;

/// Archive flavours `save` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OCI image layout plus Docker's manifest.json (what `docker save` writes).
    Docker,
    /// OCI image layout only.
    Oci,
}

const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Metadata files larger than this are refused (they are read into memory).
const MAX_METADATA: u64 = 64 << 20;

fn bad(what: impl std::fmt::Display) -> ImageError {
    ImageError::Archive(what.to_string())
}

fn append(
    builder: &mut tar::Builder<impl Write>,
    path: &str,
    size: u64,
    data: impl Read,
) -> Result<(), ImageError> {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o444);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut h, path, data)
        .map_err(|e| bad(format!("writing {path}: {e}")))
}

impl Images {
    /// Writes the images `names` (references, digests or ids) as one archive to `out`.
    pub fn save(
        &self,
        names: &[String],
        format: Format,
        out: impl Write,
    ) -> Result<(), ImageError> {
        let mut images: Vec<(ImageRecord, Vec<Reference>)> = Vec::new();
        for n in names {
            let record = self.resolve(n)?;
            let tag = Reference::parse(n).ok().filter(|r| {
                r.digest().is_none()
                    && self
                        .names_of(&record.id)
                        .map(|ns| ns.contains(&r.to_string()))
                        .unwrap_or(false)
            });
            match images.iter_mut().find(|(r, _)| r.id == record.id) {
                Some((_, tags)) => tags.extend(tag.filter(|t| !tags.contains(t))),
                None => images.push((record, tag.into_iter().collect())),
            }
        }
        let mut builder = tar::Builder::new(out);
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        append(&mut builder, "oci-layout", layout.len() as u64, &layout[..])?;
        let mut written = std::collections::BTreeSet::new();
        let mut index = Vec::new();
        let mut docker = Vec::new();
        for (record, tags) in &images {
            for blob in [&record.id, &record.manifest]
                .into_iter()
                .chain(record.layers.iter())
            {
                if written.insert(blob.clone()) {
                    let size = self.store().size(blob)?;
                    append(
                        &mut builder,
                        &format!("blobs/sha256/{}", blob.hex()),
                        size,
                        self.store().open_blob(blob)?,
                    )?;
                }
            }
            let manifest_bytes = self.store().read(&record.manifest)?;
            let manifest_size = manifest_bytes.len();
            let manifest_media = serde_json::from_slice::<Value>(&manifest_bytes)
                .ok()
                .and_then(|m| m["mediaType"].as_str().map(str::to_string))
                .unwrap_or_else(|| MEDIA_MANIFEST.to_string());
            if tags.is_empty() {
                index.push(json!({"mediaType": manifest_media, "digest": record.manifest.to_string(), "size": manifest_size}));
            }
            for t in tags {
                index.push(json!({"mediaType": manifest_media, "digest": record.manifest.to_string(), "size": manifest_size,
                    "annotations": {CONTAINERD_NAME: t.to_string(), REF_NAME: t.tag().unwrap_or("latest")}}));
            }
            docker.push(json!({
                "Config": format!("blobs/sha256/{}", record.id.hex()),
                "RepoTags": tags.iter().map(|t| t.familiar()).collect::<Vec<_>>(),
                "Layers": record.layers.iter().map(|l| format!("blobs/sha256/{}", l.hex())).collect::<Vec<_>>(),
            }));
        }
        let index = serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": index}),
        )
        .map_err(bad)?;
        append(&mut builder, "index.json", index.len() as u64, &index[..])?;
        if format == Format::Docker {
            let manifest = serde_json::to_vec(&docker).map_err(bad)?;
            append(
                &mut builder,
                "manifest.json",
                manifest.len() as u64,
                &manifest[..],
            )?;
        }
        builder
            .into_inner()
            .map_err(|e| bad(format!("finishing the archive: {e}")))?
            .flush()
            .map_err(|e| bad(format!("finishing the archive: {e}")))?;
        Ok(())
    }

    /// Loads every image in an archive (OCI layout, `docker save` output old or new). Returns
    /// the names loaded (or ids for unnamed images). On failure, what this load stored and no
    /// image uses is removed again.
    pub fn load(&self, input: impl Read) -> Result<Vec<(String, Digest)>, ImageError> {
        let lease = self.lease(libc::LOCK_SH)?;
        let mut written: Vec<Digest> = Vec::new();
        let result = self.load_inner(input, &mut written, &lease);
        if result.is_err() {
            self.forget_unreferenced(&written, &[], &lease);
        }
        result
    }

    fn load_inner(
        &self,
        input: impl Read,
        written: &mut Vec<Digest>,
        lease: &crate::images::Lease,
    ) -> Result<Vec<(String, Digest)>, ImageError> {
        let mut preapplied = crate::images::Preapplied::new();
        let mut files: BTreeMap<String, Digest> = BTreeMap::new();
        let mut links: BTreeMap<String, String> = BTreeMap::new();
        let mut metadata: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        // docker load also takes compressed archives.
        let mut input = std::io::BufReader::new(input);
        let head = std::io::BufRead::fill_buf(&mut input)
            .map_err(|e| bad(format!("reading the archive: {e}")))?;
        let input: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::read::MultiGzDecoder::new(input))
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Box::new(
                zstd::stream::read::Decoder::new(input)
                    .map_err(|e| bad(format!("reading the archive: {e}")))?,
            )
        } else {
            Box::new(input)
        };
        // The outer tar's metadata headers are as untrusted as a layer's.
        let mut archive = tar::Archive::new(crate::layer::guard::TarGuard::new(
            input,
            crate::layer::guard::MAX_META,
        ));
        for entry in archive
            .entries()
            .map_err(|e| bad(format!("reading the archive: {e}")))?
        {
            let mut entry = entry.map_err(|e| bad(format!("reading the archive: {e}")))?;
            let path = entry
                .path()
                .map_err(|e| bad(format!("archive entry name: {e}")))?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {}
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    // Older docker save links duplicate layers to one copy.
                    let target = entry
                        .link_name()
                        .ok()
                        .flatten()
                        .map(|t| t.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let base = Path::new(&path).parent().unwrap_or(Path::new(""));
                    let resolved = if entry.header().entry_type() == tar::EntryType::Link {
                        target
                    } else {
                        normalize(&base.join(target))
                    };
                    links.insert(path, resolved);
                    continue;
                }
                _ => continue,
            }
            let name = Path::new(&path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let is_meta = matches!(
                path.as_str(),
                "manifest.json" | "index.json" | "oci-layout" | "repositories"
            ) || name == "json"
                || name == "VERSION";
            if is_meta {
                if entry.size() > MAX_METADATA {
                    return Err(bad(format!(
                        "archive entry {path}: {} bytes is too large for metadata",
                        entry.size()
                    )));
                }
                let mut buf = Vec::new();
                entry
                    .read_to_end(&mut buf)
                    .map_err(|e| bad(format!("reading archive entry {path}: {e}")))?;
                metadata.insert(path, buf);
                continue;
            }
            let mut entry = std::io::BufReader::with_capacity(1 << 16, entry);
            let head = std::io::BufRead::fill_buf(&mut entry)
                .map_err(|e| bad(format!("reading archive entry {path}: {e}")))?;
            let (digest, _) = match looks_like_layer(head) {
                // Probably a layer: store it and extract it in the same pass; the snapshot waits
                // for its chain id until an image claims the blob.
                Some(compression) => {
                    let (stored, applied) = self.store_and_apply(&mut entry, None, compression)?;
                    let (digest, size) =
                        stored.map_err(|e| bad(format!("archive entry {path}: {e}")))?;
                    preapplied.insert(digest.clone(), applied.map(|(p, a)| (p, a, compression)));
                    (digest, size)
                }
                None => self
                    .store()
                    .write(None, &mut entry)
                    .map_err(|e| bad(format!("archive entry {path}: {e}")))?,
            };
            written.push(digest.clone());
            // A blob in an OCI layout is named by its digest: the content must match.
            if let Some(hex) = path.strip_prefix("blobs/sha256/") {
                if hex != digest.hex() {
                    return Err(bad(format!("archive entry {path}: content has digest {digest}, not the one its name says")));
                }
            }
            files.insert(path, digest);
        }
        let lookup = |path: &str| -> Result<Digest, ImageError> {
            let p = links.get(path).map(String::as_str).unwrap_or(path);
            files.get(p).cloned().ok_or_else(|| {
                bad(format!(
                    "the archive names {path}, which it does not contain"
                ))
            })
        };
        let mut loaded = Vec::new();
        if let Some(index) = metadata.get("index.json") {
            let index: Value =
                serde_json::from_slice(index).map_err(|e| bad(format!("index.json: {e}")))?;
            for (i, desc) in index["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let digest: Digest = desc["digest"]
                    .as_str()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|e| bad(format!("index.json manifests[{i}]: {e}")))?;
                let mut manifest = lookup(&format!("blobs/sha256/{}", digest.hex()))?;
                let media = desc["mediaType"].as_str().unwrap_or_default();
                if media == MEDIA_INDEX || media == model::DOCKER_MANIFEST_LIST {
                    let bytes = self.store().read(&manifest)?;
                    if let model::Document::Index(idx) = model::parse_document(Some(media), &bytes)?
                    {
                        let chosen = model::select_platform(&idx, &model::Platform::host())?;
                        manifest = chosen
                            .digest()
                            .to_string()
                            .parse()
                            .map_err(|e| bad(format!("index {digest}: {e}")))?;
                    }
                }
                let name = desc["annotations"][CONTAINERD_NAME]
                    .as_str()
                    .or_else(|| {
                        desc["annotations"][REF_NAME]
                            .as_str()
                            .filter(|n| n.contains(':') || n.contains('/'))
                    })
                    .map(Reference::parse)
                    .transpose()?;
                let (record, _) =
                    self.register_with(&manifest, name.as_ref(), &mut preapplied, lease)?;
                loaded.push((
                    name.map(|n| n.familiar())
                        .unwrap_or_else(|| record.id.to_string()),
                    record.id,
                ));
            }
            // Names only docker's manifest.json carries (docker save of an id with tags).
            if let Some(m) = metadata.get("manifest.json") {
                self.tag_from_docker_manifest(m, &lookup, &mut loaded)?;
            }
            return Ok(loaded);
        }
        let Some(manifest) = metadata.get("manifest.json") else {
            return Err(bad(
                "the archive has neither index.json nor manifest.json: not an image archive",
            ));
        };
        let entries: Value =
            serde_json::from_slice(manifest).map_err(|e| bad(format!("manifest.json: {e}")))?;
        for (i, e) in entries.as_array().into_iter().flatten().enumerate() {
            let config = lookup(
                e["Config"]
                    .as_str()
                    .ok_or_else(|| bad(format!("manifest.json[{i}]: no Config")))?,
            )?;
            let mut layers = Vec::new();
            for l in e["Layers"].as_array().into_iter().flatten() {
                let d = lookup(l.as_str().unwrap_or_default())?;
                let media = match sniff(self.store().open_blob(&d)?)? {
                    crate::Compression::Gzip => model::OCI_LAYER_GZIP,
                    crate::Compression::Zstd => model::OCI_LAYER_ZSTD,
                    crate::Compression::None => model::OCI_LAYER,
                };
                layers.push(json!({"mediaType": media, "digest": d.to_string(), "size": self.store().size(&d)?}));
            }
            let manifest = json!({"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                "config": {"mediaType": MEDIA_CONFIG, "digest": config.to_string(), "size": self.store().size(&config)?}, "layers": layers});
            let bytes = serde_json::to_vec(&manifest).map_err(bad)?;
            let manifest = self.store().write_bytes(&bytes)?;
            written.push(manifest.clone());
            let tags: Vec<Reference> = e["RepoTags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str())
                .map(Reference::parse)
                .collect::<Result<_, _>>()?;
            let (record, _) =
                self.register_with(&manifest, tags.first(), &mut preapplied, lease)?;
            for t in tags.iter().skip(1) {
                self.tag(&record.id.to_string(), t)?;
            }
            if tags.is_empty() {
                loaded.push((record.id.to_string(), record.id.clone()));
            }
            loaded.extend(tags.iter().map(|t| (t.familiar(), record.id.clone())));
        }
        Ok(loaded)
    }

    fn tag_from_docker_manifest(
        &self,
        manifest: &[u8],
        lookup: &dyn Fn(&str) -> Result<Digest, ImageError>,
        loaded: &mut Vec<(String, Digest)>,
    ) -> Result<(), ImageError> {
        let entries: Value =
            serde_json::from_slice(manifest).map_err(|e| bad(format!("manifest.json: {e}")))?;
        for e in entries.as_array().into_iter().flatten() {
            let Some(config) = e["Config"].as_str() else {
                continue;
            };
            let id = lookup(config)?;
            for t in e["RepoTags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str())
            {
                let r = Reference::parse(t)?;
                if !loaded.iter().any(|(n, _)| *n == r.familiar()) {
                    self.tag(&id.to_string(), &r)?;
                    loaded.push((r.familiar(), id.clone()));
                }
            }
        }
        Ok(())
    }
}

/// Whether the start of a blob looks like a layer (gzip, zstd or a tar header), and how it is compressed.
fn looks_like_layer(head: &[u8]) -> Option<crate::Compression> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some(crate::Compression::Gzip)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(crate::Compression::Zstd)
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Some(crate::Compression::None)
    } else {
        None
    }
}

/// The compression of a stored blob, from its first bytes.
fn sniff(mut blob: crate::store::BlobReader) -> Result<crate::Compression, ImageError> {
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < head.len() {
        match blob.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(bad(format!("reading layer {}: {e}", blob.digest()))),
        }
    }
    Ok(if head[..n].starts_with(&[0x1f, 0x8b]) {
        crate::Compression::Gzip
    } else if head[..n].starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        crate::Compression::Zstd
    } else {
        crate::Compression::None
    })
}

/// `a/b/../c` → `a/c` (archive-internal paths only).
fn normalize(p: &Path) -> String {
    let mut out: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    out.join("/")
}
