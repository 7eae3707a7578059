//! The image store: content (blobs), snapshots (layers applied, by ChainID) and names (tags
//! with their history). This is where images are versioned: moving a tag keeps the earlier
//! image addressable by digest and in the tag's history, and rolling back is re-tagging.
//!
//! Layout under the image root (default `/var/lib/berth`):
//! - `content/`: the blob store ([`Store`]);
//! - `snapshots/`: one directory per layer chain ([`Snapshots`]);
//! - `images.json`: names and image records, replaced atomically under a lock.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::digest::Digest;
use crate::layer;
use crate::model;
use crate::reference::Reference;
use crate::snapshot::Snapshots;
use crate::store::Store;
use crate::Compression;

pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Why an image operation failed; messages name the image, blob or reference.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error(transparent)]
    Layer(#[from] crate::layer::LayerError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Reference(#[from] crate::reference::ReferenceError),
    #[error("no such image: {0}")]
    NotFound(String),
    #[error("{0:?} matches more than one image: {1}")]
    Ambiguous(String, String),
    #[error("image {image} is in use by container {container}: remove the container or force")]
    InUse { image: String, container: String },
    #[error("image {image} has several names ({names}): untag them or force")]
    Tagged { image: String, names: String },
    #[error("{0}")]
    Archive(String),
    #[error("{0}")]
    Invalid(String),
    #[error("--change {change:?}: {reason}")]
    BadChange { change: String, reason: String },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ImageError + 'a {
    move |source| ImageError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What the store knows about one image (keyed by its config digest, Docker's image ID).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    pub id: Digest,
    pub manifest: Digest,
    /// Compressed layer blobs, bottom first.
    pub layers: Vec<Digest>,
    pub diff_ids: Vec<Digest>,
    /// When the image was created (from its config).
    pub created: String,
    /// Uncompressed size of all layers.
    pub size: u64,
}

/// A tag and what it pointed at before.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct TagEntry {
    pub image: Option<Digest>,
    /// Earlier targets, oldest first, with the time each was replaced.
    pub history: Vec<(Digest, String)>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Names {
    /// Normalized reference ("docker.io/library/busybox:latest") → tag entry.
    tags: BTreeMap<String, TagEntry>,
    /// Image id (config digest) → record.
    images: BTreeMap<Digest, ImageRecord>,
    /// Container → image id, for in-use checks.
    containers: BTreeMap<String, Digest>,
    /// Image made here (committed or built) → the image it was made from, as Docker's
    /// `Parent`.
    #[serde(default)]
    parents: BTreeMap<Digest, Digest>,
}

/// The image store.
pub struct Images {
    root: PathBuf,
    store: Store,
    snapshots: Snapshots,
}

/// A summary row, as `berth images` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub id: Digest,
    pub names: Vec<String>,
    pub manifest: Digest,
    pub created: String,
    pub size: u64,
}

impl Images {
    /// Opens (creating) the image store. The root is 0711 and content and snapshots 0700:
    /// layers may carry setuid files and device nodes that no host user may reach.
    pub fn open(root: &Path) -> Result<Images, ImageError> {
        use std::os::unix::fs::PermissionsExt;
        fs::create_dir_all(root).map_err(io_err("creating", root))?;
        fs::set_permissions(root, fs::Permissions::from_mode(0o711))
            .map_err(io_err("securing", root))?;
        let store = Store::open(&root.join("content"))?;
        fs::set_permissions(root.join("content"), fs::Permissions::from_mode(0o700))
            .map_err(io_err("securing", root))?;
        Ok(Images {
            root: root.to_path_buf(),
            store,
            snapshots: Snapshots::open(&root.join("snapshots"))?,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn snapshots(&self) -> &Snapshots {
        &self.snapshots
    }

    fn names_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    /// A lease against garbage collection: writers (import, load, commit) hold it shared from
    /// their first stored blob until their image is recorded; `gc` holds it exclusively.
    pub(crate) fn lease(&self, mode: libc::c_int) -> Result<Lease, ImageError> {
        let path = self.root.join("gc.lock");
        let f = File::create(&path).map_err(io_err("creating", &path))?;
        // SAFETY: flock on an fd we own; released when the file is dropped.
        if unsafe { libc::flock(f.as_raw_fd(), mode) } < 0 {
            return Err(io_err("locking", &path)(io::Error::last_os_error()));
        }
        Ok(Lease(f))
    }

    /// Runs `f` on the names under an exclusive lock and saves them atomically when it succeeds.
    fn with_names<T>(
        &self,
        f: impl FnOnce(&mut Names) -> Result<T, ImageError>,
    ) -> Result<T, ImageError> {
        let lock_path = self.root.join("images.lock");
        let lock = File::create(&lock_path).map_err(io_err("creating", &lock_path))?;
        // SAFETY: flock on an fd we own; released when `lock` is dropped.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } < 0 {
            return Err(io_err("locking", &lock_path)(io::Error::last_os_error()));
        }
        let mut names = self.read_names()?;
        let out = f(&mut names)?;
        let path = self.names_path();
        let tmp = self.root.join(".images.json.tmp");
        let bytes = serde_json::to_vec_pretty(&names)
            .map_err(|e| io_err("encoding", &path)(io::Error::other(e)))?;
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.root)?.sync_all()
        };
        write().map_err(io_err("writing", &path))?;
        Ok(out)
    }

    fn read_names(&self) -> Result<Names, ImageError> {
        let path = self.names_path();
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| io_err("reading", &path)(io::Error::other(e))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Names::default()),
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    /// Finds an image by reference, `name@digest`, full or short id (`sha256:…` or a hex prefix).
    pub fn resolve(&self, name: &str) -> Result<ImageRecord, ImageError> {
        let names = self.read_names()?;
        resolve_in(&names, name)
    }

    /// Imports a root file system tarball (plain, gzip or zstd: detected) as a one-layer image,
    /// with `changes` in Dockerfile syntax (CMD, ENTRYPOINT, ENV, WORKDIR, USER, EXPOSE, LABEL,
    /// VOLUME, STOPSIGNAL) applied to its config, and tags it as `tag` when given.
    pub fn import(
        &self,
        input: impl Read,
        changes: &[String],
        message: &str,
        tag: Option<&Reference>,
    ) -> Result<ImageRecord, ImageError> {
        let lease = self.lease(libc::LOCK_SH)?;
        let mut config = json!({});
        for c in changes {
            apply_change(&mut config, c)?;
        }
        // One pass: the input's bytes go into the store as they are (the layer blob) while the
        // same stream is decompressed, hashed (the diff id) and extracted into a snapshot.
        let mut input = io::BufReader::new(input);
        let compression = sniff(&mut input).map_err(io_err("reading", Path::new("-")))?;
        let (stored, applied) = self.store_and_apply(input, None, compression)?;
        let (pending, applied) = match applied {
            Ok(a) => a,
            Err(e) => {
                if let Ok((d, _)) = &stored {
                    self.forget_unreferenced(std::slice::from_ref(d), &[], &lease);
                }
                return Err(e.into());
            }
        };
        let (layer_digest, _) = stored?;
        let diff_id = applied.diff_id.clone();
        pending.commit_as(&diff_id, applied.size)?;
        let media = match compression {
            Compression::None => model::OCI_LAYER,
            Compression::Gzip => model::OCI_LAYER_GZIP,
            Compression::Zstd => model::OCI_LAYER_ZSTD,
        };
        let now = now();
        let platform = model::Platform::host();
        let mut image_config = json!({
            "created": now,
            "architecture": platform.architecture,
            "os": platform.os,
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
            "history": [{"created": now, "created_by": "berth image import", "comment": message}],
        });
        if let Some(v) = &platform.variant {
            image_config["variant"] = json!(v);
        }
        // On failure finish_image drops what this import stored (blobs and the snapshot).
        self.finish_image(
            image_config,
            vec![(layer_digest, media.to_string())],
            tag,
            &lease,
        )
        .map(|(record, _)| record)
    }

    /// Streams `input` into the store and, in the same pass, extracts it as a layer into a
    /// pending snapshot. Returns the store's result and the extraction's.
    #[allow(clippy::type_complexity)]
    pub(crate) fn store_and_apply(
        &self,
        input: impl Read,
        expected: Option<&Digest>,
        compression: Compression,
    ) -> Result<
        (
            Result<(Digest, u64), crate::store::StoreError>,
            Result<(crate::snapshot::Pending, layer::Applied), layer::LayerError>,
        ),
        ImageError,
    > {
        let (pipe_in, pipe_out) = io::pipe().map_err(io_err("creating a pipe for", &self.root))?;
        let pending = self.snapshots.prepare(&Digest::of(b"berth layer"), None)?;
        let mut tee = Tee {
            inner: input,
            out: Some(pipe_out),
        };
        let store = &self.store;
        let (stored, applied) = std::thread::scope(|s| {
            let storer = s.spawn(move || store.write(expected, pipe_in));
            let applied = layer::apply(&mut tee, compression, &pending.diff_dir());
            // Whatever the extraction left unread (padding, or all of it after an error) still
            // belongs to the blob.
            let _ = io::copy(&mut tee, &mut io::sink());
            drop(tee);
            (storer.join(), applied)
        });
        let stored = stored.map_err(|_| ImageError::Invalid("the blob writer panicked".into()))?;
        Ok((stored, applied.map(|a| (pending, a))))
    }

    /// A pull begins: blobs go into the store, and layers are extracted while they arrive
    /// (see [`Fetch`]), under a lease against garbage collection until the image is recorded.
    pub fn fetch(&self) -> Result<Fetch<'_>, ImageError> {
        Ok(Fetch {
            images: self,
            lease: self.lease(libc::LOCK_SH)?,
            applied: std::sync::Mutex::new(Preapplied::new()),
        })
    }

    /// Undoes what a failed import, load or commit stored: the `blobs` and snapshot `chains`
    /// no recorded image uses. Only when no other writer is in flight (our lease becomes
    /// exclusive): anything else stays for the next garbage collection.
    pub(crate) fn forget_unreferenced(&self, blobs: &[Digest], chains: &[Digest], lease: &Lease) {
        if !lease.exclusive() {
            return;
        }
        let Ok(names) = self.read_names() else { return };
        for b in blobs {
            let used = names
                .images
                .values()
                .any(|r| &r.id == b || &r.manifest == b || r.layers.contains(b));
            if !used {
                let _ = self.store.delete(b);
            }
        }
        let used_chains: BTreeSet<Digest> = names
            .images
            .values()
            .flat_map(|r| model::chain_ids(&r.diff_ids))
            .collect();
        for c in chains {
            if !used_chains.contains(c) {
                let _ = self.snapshots.remove(c);
            }
        }
    }

    /// Stores config and manifest for layers already in the store, unpacks the layers into
    /// snapshots, records the image and tags it.
    fn finish_image(
        &self,
        config: Value,
        layers: Vec<(Digest, String)>,
        tag: Option<&Reference>,
        lease: &Lease,
    ) -> Result<(ImageRecord, bool), ImageError> {
        let config_bytes = serde_json::to_vec(&config)
            .map_err(|e| io_err("encoding", Path::new("config"))(io::Error::other(e)))?;
        let config_digest = self.store.write_bytes(&config_bytes)?;
        let layer_blobs: Vec<Digest> = layers.iter().map(|(d, _)| d.clone()).collect();
        let layer_descs: Vec<Value> = layers
            .iter()
            .map(|(d, media)| Ok(json!({"mediaType": media, "digest": d.to_string(), "size": self.store.size(d)?})))
            .collect::<Result<_, ImageError>>()?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest.to_string(), "size": config_bytes.len()},
            "layers": layer_descs,
        });
        let manifest_bytes = serde_json::to_vec(&manifest)
            .map_err(|e| io_err("encoding", Path::new("manifest"))(io::Error::other(e)))?;
        let manifest_digest = self.store.write_bytes(&manifest_bytes)?;
        self.register_with(&manifest_digest, tag, &mut Preapplied::new(), lease)
            .inspect_err(|_| {
                let mut written = layer_blobs;
                written.extend([config_digest, manifest_digest.clone()]);
                let diff_ids: Vec<Digest> = config["rootfs"]["diff_ids"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|d| d.as_str()?.parse().ok())
                    .collect();
                self.forget_unreferenced(&written, &model::chain_ids(&diff_ids), lease);
            })
    }

    /// Records the image whose manifest is `manifest` (already in the store): verifies every
    /// blob it names, unpacks missing layer snapshots, and tags it. Returns the record and
    /// whether it was new.
    pub fn register(
        &self,
        manifest: &Digest,
        tag: Option<&Reference>,
    ) -> Result<(ImageRecord, bool), ImageError> {
        let lease = self.lease(libc::LOCK_SH)?;
        self.register_with(manifest, tag, &mut Preapplied::new(), &lease)
    }

    /// [`Images::register`], taking layers already extracted while they streamed in (`load`),
    /// under the caller's lease. On failure the snapshots it committed are removed again.
    pub(crate) fn register_with(
        &self,
        manifest: &Digest,
        tag: Option<&Reference>,
        preapplied: &mut Preapplied,
        lease: &Lease,
    ) -> Result<(ImageRecord, bool), ImageError> {
        let mut committed = Vec::new();
        let result = self.register_inner(manifest, tag, preapplied, &mut committed);
        if result.is_err() {
            self.forget_unreferenced(&[], &committed, lease);
        }
        result
    }

    fn register_inner(
        &self,
        manifest: &Digest,
        tag: Option<&Reference>,
        preapplied: &mut Preapplied,
        committed: &mut Vec<Digest>,
    ) -> Result<(ImageRecord, bool), ImageError> {
        let invalid = ImageError::Invalid;
        let bytes = self.store.read(manifest)?;
        let doc = model::parse_document(None, &bytes)?;
        let model::Document::Manifest(m) = doc else {
            return Err(invalid(format!(
                "{manifest} is an index, not an image manifest"
            )));
        };
        let config_digest: Digest = m.config().digest().to_string().parse().map_err(
            |e: crate::digest::InvalidDigest| invalid(format!("manifest {manifest}: {e}")),
        )?;
        if !self.store.contains(&config_digest) {
            return Err(invalid(format!(
                "manifest {manifest} references config {config_digest}, which is not in the store"
            )));
        }
        let config: Value = serde_json::from_slice(&self.store.read(&config_digest)?)
            .map_err(|e| invalid(format!("config {config_digest}: {e}")))?;
        let diff_ids: Vec<Digest> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().and_then(|s| s.parse().ok()))
                    .collect()
            })
            .unwrap_or_default();
        let mut layers = Vec::new();
        for l in m.layers() {
            let d: Digest =
                l.digest()
                    .to_string()
                    .parse()
                    .map_err(|e: crate::digest::InvalidDigest| {
                        invalid(format!("manifest {manifest}: {e}"))
                    })?;
            if !self.store.contains(&d) {
                return Err(invalid(format!(
                    "manifest {manifest} references layer {d}, which is not in the store"
                )));
            }
            layers.push((d, l.media_type().to_string()));
        }
        if diff_ids.len() != layers.len() {
            return Err(invalid(format!(
                "config {config_digest} lists {} diff ids for {} layers",
                diff_ids.len(),
                layers.len()
            )));
        }
        let chains = model::chain_ids(&diff_ids);
        for (i, ((blob, media), chain)) in layers.iter().zip(&chains).enumerate() {
            let compression = model::layer_compression(media)?;
            if self.snapshots.exists(chain) {
                continue;
            }
            let applied = match preapplied.remove(blob) {
                Some(Ok((pending, applied, sniffed))) => {
                    if sniffed != compression {
                        return Err(invalid(format!("layer {blob} is declared {media} but its content is {sniffed:?}-compressed")));
                    }
                    (pending, applied)
                }
                Some(Err(e)) => return Err(e.into()),
                None => {
                    let pending = self
                        .snapshots
                        .prepare(chain, i.checked_sub(1).map(|p| &chains[p]))?;
                    let applied = layer::apply(
                        self.store.open_blob(blob)?,
                        compression,
                        &pending.diff_dir(),
                    )?;
                    (pending, applied)
                }
            };
            let (pending, applied) = applied;
            if applied.diff_id != diff_ids[i] {
                return Err(invalid(format!(
                    "layer {blob} has diff id {}, but the config says {}",
                    applied.diff_id, diff_ids[i]
                )));
            }
            pending.commit_as(chain, applied.size)?;
            committed.push(chain.clone());
        }
        let record = ImageRecord {
            id: config_digest.clone(),
            manifest: manifest.clone(),
            layers: layers.into_iter().map(|(d, _)| d).collect(),
            diff_ids,
            created: config["created"].as_str().unwrap_or_default().to_string(),
            size: chains
                .iter()
                .map(|c| self.snapshots.size(c))
                .sum::<Result<u64, _>>()?,
        };
        self.with_names(|names| {
            let new = !names.images.contains_key(&record.id);
            names.images.insert(record.id.clone(), record.clone());
            if let Some(t) = tag {
                set_tag(names, t, &record.id);
            }
            Ok((record.clone(), new))
        })
    }

    /// Points `target` at the image `source` names (a reference, digest or id). The image it
    /// pointed at before stays addressable and is kept in the tag's history.
    pub fn tag(&self, source: &str, target: &Reference) -> Result<ImageRecord, ImageError> {
        self.with_names(|names| {
            let record = resolve_in(names, source)?;
            set_tag(names, target, &record.id);
            Ok(record)
        })
    }

    /// Every image with its names, newest first.
    pub fn list(&self) -> Result<Vec<Summary>, ImageError> {
        let names = self.read_names()?;
        let mut out: Vec<Summary> = names
            .images
            .values()
            .map(|r| Summary {
                id: r.id.clone(),
                names: names
                    .tags
                    .iter()
                    .filter(|(_, t)| t.image.as_ref() == Some(&r.id))
                    .map(|(n, _)| n.clone())
                    .collect(),
                manifest: r.manifest.clone(),
                created: r.created.clone(),
                size: r.size,
            })
            .collect();
        out.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Names pointing at an image.
    pub fn names_of(&self, id: &Digest) -> Result<Vec<String>, ImageError> {
        let names = self.read_names()?;
        Ok(names
            .tags
            .iter()
            .filter(|(_, t)| t.image.as_ref() == Some(id))
            .map(|(n, _)| n.clone())
            .collect())
    }

    /// The earlier targets of a tag, oldest first.
    pub fn tag_history(&self, tag: &Reference) -> Result<Vec<(Digest, String)>, ImageError> {
        let names = self.read_names()?;
        Ok(names
            .tags
            .get(&tag.to_string())
            .map(|t| t.history.clone())
            .unwrap_or_default())
    }

    /// The image's config document.
    pub fn config(&self, record: &ImageRecord) -> Result<Value, ImageError> {
        serde_json::from_slice(&self.store.read(&record.id)?)
            .map_err(|e| ImageError::NotFound(format!("config {}: {e}", record.id)))
    }

    /// `rmi`: removes a name; when `name` is the image's last name (or an id), the image too.
    /// Refuses an image a container uses, or an id with several names, unless forced. Returns
    /// what was untagged and what was deleted.
    pub fn remove(
        &self,
        name: &str,
        force: bool,
    ) -> Result<(Vec<String>, Option<Digest>), ImageError> {
        self.with_names(|names| {
            let record = resolve_in(names, name)?;
            let tags: Vec<String> = names
                .tags
                .iter()
                .filter(|(_, t)| t.image.as_ref() == Some(&record.id))
                .map(|(n, _)| n.clone())
                .collect();
            let by_name = Reference::parse(name)
                .ok()
                .map(|r| r.to_string())
                .filter(|r| tags.contains(r));
            if let Some(c) = names
                .containers
                .iter()
                .find(|(_, img)| **img == record.id)
                .map(|(c, _)| c.clone())
            {
                if !force && (by_name.is_none() || tags.len() == 1) {
                    return Err(ImageError::InUse {
                        image: name.to_string(),
                        container: c,
                    });
                }
            }
            let mut untagged = Vec::new();
            match by_name {
                Some(r) if tags.len() > 1 => {
                    untag(names, &r);
                    return Ok((vec![r], None));
                }
                Some(r) => {
                    untag(names, &r);
                    untagged.push(r);
                }
                // name@digest names the content, not a tag: while tags still name the image,
                // removing it takes --force (Docker drops only the digest reference).
                None if !force
                    && !tags.is_empty()
                    && Reference::parse(name).is_ok_and(|r| r.digest().is_some()) =>
                {
                    return Err(ImageError::Tagged {
                        image: name.to_string(),
                        names: tags.join(", "),
                    });
                }
                None if tags.len() > 1 && !force => {
                    return Err(ImageError::Tagged {
                        image: name.to_string(),
                        names: tags.join(", "),
                    });
                }
                None => {
                    for t in &tags {
                        untag(names, t);
                        untagged.push(t.clone());
                    }
                }
            }
            // A container still using the image keeps it (dangling, as Docker does): its layers
            // are that container's root file system.
            if names.containers.values().any(|img| *img == record.id) {
                return Ok((untagged, None));
            }
            names.images.remove(&record.id);
            names.parents.remove(&record.id);
            Ok((untagged, Some(record.id)))
        })
    }

    /// Records that `container` uses `image` (so `rmi` refuses it) and mounts its root file system.
    /// What a container changed in its image's file system, as `docker diff` reports it:
    /// `(path, kind)` with kind 0 changed, 1 added, 2 deleted, parents before children.
    /// Read from the container's upper directory: an overlay whiteout is a deletion, and an
    /// entry is a change when the image's layers have the same path, an addition otherwise.
    pub fn container_changes(
        &self,
        container: &str,
        image: &str,
    ) -> Result<Vec<(String, u8)>, ImageError> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let record = self.resolve(image)?;
        let lowers: Vec<PathBuf> = model::chain_ids(&record.diff_ids)
            .iter()
            .rev()
            .map(|c| self.snapshots.diff_dir(c))
            .collect::<Result<_, _>>()?;
        let upper = self.snapshots.container_upper(container)?;
        // Whether the image's layers (topmost first) have `rel`.
        let in_image = |rel: &Path| -> bool {
            for l in &lowers {
                let mut hidden = false;
                for a in rel
                    .ancestors()
                    .skip(1)
                    .filter(|a| !a.as_os_str().is_empty())
                {
                    if xattr_opaque(&l.join(a)) {
                        hidden = true;
                    }
                }
                match fs::symlink_metadata(l.join(rel)) {
                    Ok(m) if m.file_type().is_char_device() && m.rdev() == 0 => return false,
                    Ok(_) => return true,
                    Err(_) if hidden => return false,
                    Err(_) => {}
                }
            }
            false
        };
        let mut out = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let dir = upper.join(&rel);
            let mut entries: Vec<_> = match fs::read_dir(&dir) {
                Ok(e) => e.filter_map(|e| e.ok()).collect(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("reading", &dir)(e)),
            };
            entries.sort_by_key(|e| e.file_name());
            for e in entries.into_iter().rev() {
                let path = rel.join(e.file_name());
                let Ok(m) = e.metadata() else { continue };
                let shown = format!("/{}", path.display());
                if m.file_type().is_char_device() && m.rdev() == 0 {
                    out.push((shown, 2));
                    continue;
                }
                out.push((shown, if in_image(&path) { 0 } else { 1 }));
                if m.is_dir() {
                    stack.push(path);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn mount_container(
        &self,
        container: &str,
        image: &str,
    ) -> Result<(ImageRecord, PathBuf), ImageError> {
        let record = self.with_names(|names| {
            let record = resolve_in(names, image)?;
            if names.containers.contains_key(container) {
                return Err(ImageError::Snapshot(
                    crate::snapshot::SnapshotError::Exists(container.to_string()),
                ));
            }
            names
                .containers
                .insert(container.to_string(), record.id.clone());
            Ok(record)
        })?;
        let chains = model::chain_ids(&record.diff_ids);
        match self.snapshots.mount_container(container, &chains) {
            Ok(p) => Ok((record, p)),
            Err(e) => {
                let _ = self.with_names(|names| {
                    names.containers.remove(container);
                    Ok(())
                });
                Err(e.into())
            }
        }
    }

    /// `commit`: turns a container's changes (its overlay upper directory) into a new layer on
    /// top of its image, with `changes` applied to the config, and tags the result.
    pub fn commit(
        &self,
        container: &str,
        changes: &[String],
        message: &str,
        tag: Option<&Reference>,
    ) -> Result<ImageRecord, ImageError> {
        let lease = self.lease(libc::LOCK_SH)?;
        let base_id = self
            .read_names()?
            .containers
            .get(container)
            .cloned()
            .ok_or_else(|| {
                ImageError::NotFound(format!(
                    "container {container} (no root file system from an image)"
                ))
            })?;
        let base = self.resolve(&base_id.to_string())?;
        let mut config = self.config(&base)?;
        let upper = self.snapshots.container_upper(container)?;
        if !config["config"].is_object() {
            config["config"] = json!({});
        }
        for c in changes {
            apply_change(&mut config["config"], c)?;
        }
        drop(lease);
        self.derive(
            Some(&base),
            config,
            Some(&upper),
            "berth commit",
            message,
            tag,
        )
    }

    /// The config of an image with nothing in it (`FROM scratch`).
    pub fn scratch_config() -> Value {
        json!({
            "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": []},
            "history": [],
        })
    }

    /// A new image on top of `base` (`None`: from scratch) with `config` (the caller's edit
    /// of the base's config document), one more layer made from `layer` (an overlay upper
    /// directory, whiteouts included) or none, and one more history entry (`empty_layer`
    /// without a layer, as docker build writes them).
    pub fn derive(
        &self,
        base: Option<&ImageRecord>,
        mut config: Value,
        layer: Option<&Path>,
        created_by: &str,
        comment: &str,
        tag: Option<&Reference>,
    ) -> Result<ImageRecord, ImageError> {
        let lease = self.lease(libc::LOCK_SH)?;
        let mut new_layer = None;
        if let Some(upper) = layer {
            // The layer streams from the diff (on a thread) through gzip into the store.
            let (reader, writer) = io::pipe().map_err(io_err("creating a pipe for", upper))?;
            let walker = {
                let upper = upper.to_path_buf();
                std::thread::spawn(move || -> Result<Digest, ImageError> {
                    let mut gz = flate2::write::GzEncoder::new(writer, flate2::Compression::fast());
                    let (diff_id, _) = layer::diff(&upper, &mut gz)?;
                    gz.finish().map_err(io_err("compressing", &upper))?;
                    Ok(diff_id)
                })
            };
            let stored = self.store.write(None, reader);
            let walked = walker
                .join()
                .map_err(|_| ImageError::Invalid("the layer writer panicked".into()))
                .and_then(|r| r);
            let (blob, _) = stored?;
            // A failed walk still ends the gzip stream cleanly: that blob is not the layer.
            let diff_id = walked.inspect_err(|_| {
                self.forget_unreferenced(std::slice::from_ref(&blob), &[], &lease)
            })?;
            new_layer = Some((blob, diff_id));
        }
        let now = now();
        config["created"] = json!(now);
        if !config["rootfs"]["diff_ids"].is_array() {
            config["rootfs"] = json!({"type": "layers", "diff_ids": []});
        }
        let mut entry = json!({"created": now, "created_by": created_by});
        if !comment.is_empty() {
            entry["comment"] = json!(comment);
        }
        match &new_layer {
            Some((_, diff_id)) => {
                if let Some(ids) = config["rootfs"]["diff_ids"].as_array_mut() {
                    ids.push(json!(diff_id.to_string()));
                }
            }
            None => entry["empty_layer"] = json!(true),
        }
        match config["history"].as_array_mut() {
            Some(h) => h.push(entry),
            None => config["history"] = json!([entry]),
        }
        let mut layers: Vec<(Digest, String)> = Vec::new();
        if let Some(base) = base {
            let manifest = self.store.read(&base.manifest)?;
            let media: Vec<String> = match model::parse_document(None, &manifest)? {
                model::Document::Manifest(m) => m
                    .layers()
                    .iter()
                    .map(|l| l.media_type().to_string())
                    .collect(),
                model::Document::Index(_) => Vec::new(),
            };
            layers = base.layers.iter().cloned().zip(media).collect();
        }
        if let Some((blob, _)) = new_layer {
            layers.push((blob, MEDIA_LAYER_GZIP.to_string()));
        }
        let (record, _) = self.finish_image(config, layers, tag, &lease)?;
        if let Some(base) = base.filter(|b| b.id != record.id) {
            let (child, parent) = (record.id.clone(), base.id.clone());
            self.with_names(|names| {
                names.parents.insert(child, parent);
                Ok(())
            })?;
        }
        Ok(record)
    }

    /// The image `id` was made from here (commit or build), if it was.
    pub fn parent_of(&self, id: &Digest) -> Option<Digest> {
        self.parents().ok()?.remove(id)
    }

    /// Every image made here (commit or build) → the image it was made from, where that
    /// image is still here.
    pub fn parents(&self) -> Result<BTreeMap<Digest, Digest>, ImageError> {
        let names = self.read_names()?;
        Ok(names
            .parents
            .iter()
            .filter(|(_, p)| names.images.contains_key(*p))
            .map(|(c, p)| (c.clone(), p.clone()))
            .collect())
    }

    /// The containers that have a root file system here.
    pub fn container_names(&self) -> Result<Vec<String>, ImageError> {
        self.with_names(|names| Ok(names.containers.keys().cloned().collect()))
    }

    /// Unmounts and forgets a container's root file system.
    pub fn remove_container(&self, container: &str) -> Result<(), ImageError> {
        self.snapshots.remove_container(container)?;
        self.with_names(|names| {
            names.containers.remove(container);
            Ok(())
        })
    }

    /// Garbage collection: removes every blob and snapshot that no image, tag history or
    /// container references. Returns the blobs and snapshots removed.
    pub fn gc(&self) -> Result<(Vec<Digest>, Vec<Digest>), ImageError> {
        // Writers that have stored blobs but not yet recorded their image hold a shared lease.
        let _lease = self.lease(libc::LOCK_EX)?;
        self.with_names(|names| {
            let mut keep_blobs = BTreeSet::new();
            let mut keep_chains = BTreeSet::new();
            let mut keep_images: BTreeSet<Digest> = names.images.keys().cloned().collect();
            for t in names.tags.values() {
                keep_images.extend(t.history.iter().map(|(d, _)| d.clone()));
            }
            for id in &keep_images {
                if let Some(r) = names.images.get(id) {
                    keep_blobs.insert(r.id.clone());
                    keep_blobs.insert(r.manifest.clone());
                    keep_blobs.extend(r.layers.iter().cloned());
                    keep_chains.extend(model::chain_ids(&r.diff_ids));
                }
            }
            let mut removed_blobs = Vec::new();
            for d in self.store.list()? {
                if !keep_blobs.contains(&d) {
                    self.store.delete(&d)?;
                    removed_blobs.push(d);
                }
            }
            let mut removed_chains = Vec::new();
            for c in self.snapshots.list()? {
                if !keep_chains.contains(&c) {
                    self.snapshots.remove(&c)?;
                    removed_chains.push(c);
                }
            }
            Ok((removed_blobs, removed_chains))
        })
    }

    /// `image prune`: removes images without a name (all unused ones with `all`), then collects garbage.
    pub fn prune(&self, all: bool) -> Result<Vec<Digest>, ImageError> {
        self.prune_except(all, &BTreeSet::new())
    }

    /// `prune`, keeping the images of `keep` too (the build cache's).
    pub fn prune_except(
        &self,
        all: bool,
        keep: &BTreeSet<Digest>,
    ) -> Result<Vec<Digest>, ImageError> {
        let removed = self.with_names(|names| {
            let tagged: BTreeSet<Digest> = names
                .tags
                .values()
                .filter_map(|t| t.image.clone())
                .collect();
            let mut used: BTreeSet<Digest> = names.containers.values().cloned().collect();
            used.extend(keep.iter().cloned());
            // Earlier versions of a tag are versions, not garbage: only --all removes them.
            if !all {
                used.extend(
                    names
                        .tags
                        .values()
                        .flat_map(|t| t.history.iter().map(|(d, _)| d.clone())),
                );
            }
            let doomed: Vec<Digest> = names
                .images
                .keys()
                .filter(|id| !used.contains(*id) && (all || !tagged.contains(*id)))
                .cloned()
                .collect();
            for id in &doomed {
                names.images.remove(id);
                names.parents.remove(id);
                names.tags.retain(|_, t| t.image.as_ref() != Some(id));
                for t in names.tags.values_mut() {
                    t.history.retain(|(d, _)| d != id);
                }
            }
            Ok(doomed)
        })?;
        self.gc()?;
        Ok(removed)
    }
}

fn set_tag(names: &mut Names, tag: &Reference, id: &Digest) {
    let entry = names.tags.entry(tag.to_string()).or_default();
    if let Some(old) = &entry.image {
        if old != id {
            entry.history.push((old.clone(), now()));
        }
    }
    entry.image = Some(id.clone());
}

fn untag(names: &mut Names, tag: &str) {
    if let Some(entry) = names.tags.get_mut(tag) {
        if let Some(old) = entry.image.take() {
            entry.history.push((old, now()));
        }
    }
}

/// Whether `dir` is an opaque overlay directory (it hides what lower layers have under it).
fn xattr_opaque(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut buf = [0u8; 4];
    // SAFETY: valid NUL-terminated strings and a buffer of the length given.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

fn resolve_in(names: &Names, name: &str) -> Result<ImageRecord, ImageError> {
    // A full or short image id.
    let hex = name.strip_prefix("sha256:").unwrap_or(name);
    if hex.len() >= 4 && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let hits: Vec<&ImageRecord> = names
            .images
            .values()
            .filter(|r| r.id.hex().starts_with(hex))
            .collect();
        match hits.as_slice() {
            [one] => return Ok((*one).clone()),
            [] => {}
            many => {
                return Err(ImageError::Ambiguous(
                    name.to_string(),
                    many.iter()
                        .map(|r| r.id.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                ))
            }
        }
        if name.starts_with("sha256:") {
            return Err(ImageError::NotFound(name.to_string()));
        }
    }
    let reference = Reference::parse(name)?;
    if let Some(d) = reference.digest() {
        // name@digest: the manifest digest (or config digest) of an image we have, tagged or not.
        if let Some(r) = names
            .images
            .values()
            .find(|r| &r.manifest == d || &r.id == d)
        {
            return Ok(r.clone());
        }
        return Err(ImageError::NotFound(name.to_string()));
    }
    names
        .tags
        .get(&reference.to_string())
        .and_then(|t| t.image.as_ref())
        .and_then(|id| names.images.get(id))
        .cloned()
        .ok_or_else(|| ImageError::NotFound(name.to_string()))
}

/// Layers extracted while an archive streamed in, by blob digest: the snapshot waiting for its
/// chain id, or why extraction failed (reported only if an image uses that blob).
pub(crate) type Preapplied = BTreeMap<
    Digest,
    Result<(crate::snapshot::Pending, layer::Applied, Compression), layer::LayerError>,
>;

/// Blobs of one image arriving from elsewhere (a registry), any number at once from several
/// threads: each layer is stored and extracted in the same pass, so that recording the image
/// at the end has nothing left to unpack.
pub struct Fetch<'a> {
    images: &'a Images,
    lease: Lease,
    applied: std::sync::Mutex<Preapplied>,
}

impl Fetch<'_> {
    /// Streams a blob that must have `digest` into the store; a layer (by its `media_type`)
    /// is extracted meanwhile. Nothing is stored if the content is not `digest`. Returns the
    /// size.
    pub fn blob(
        &self,
        digest: &Digest,
        media_type: &str,
        input: impl Read,
    ) -> Result<u64, ImageError> {
        let Ok(compression) = model::layer_compression(media_type) else {
            return Ok(self.images.store.write(Some(digest), input)?.1);
        };
        let (stored, applied) = self
            .images
            .store_and_apply(input, Some(digest), compression)?;
        let (_, size) = stored?;
        // An extraction that failed is not kept: recording the image extracts the stored
        // blob again and reports the failure there, as for a blob that was already stored.
        if let Ok((pending, applied)) = applied {
            self.applied
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(digest.clone(), Ok((pending, applied, compression)));
        }
        Ok(size)
    }

    /// Records the image whose manifest (in the store) is `manifest`, as
    /// [`Images::register`] does, with the layers extracted on the way.
    pub fn register(
        self,
        manifest: &Digest,
        tag: Option<&Reference>,
    ) -> Result<(ImageRecord, bool), ImageError> {
        let mut applied = self.applied.into_inner().unwrap_or_else(|e| e.into_inner());
        self.images
            .register_with(manifest, tag, &mut applied, &self.lease)
    }
}

/// A lease against garbage collection (see [`Images::lease`]).
#[derive(Debug)]
pub(crate) struct Lease(File);

impl Lease {
    /// Turns the lease exclusive if no other writer holds one (without waiting); while it is,
    /// no writer can start, so removing what nothing records is safe.
    fn exclusive(&self) -> bool {
        // SAFETY: flock on the lease's own fd converts its lock.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
    }
}

/// Detects the compression of a stream from its magic bytes without consuming them.
fn sniff(r: &mut io::BufReader<impl Read>) -> io::Result<Compression> {
    let head = io::BufRead::fill_buf(r)?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    })
}

/// A reader that also copies what it reads to `out` (until `out` fails: the other side then
/// reports its own error).
struct Tee<R, W> {
    inner: R,
    out: Option<W>,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(out) = &mut self.out {
            if out.write_all(&buf[..n]).is_err() {
                self.out = None;
            }
        }
        Ok(n)
    }
}

fn now() -> String {
    timefmt::now()
}

/// Applies one `--change` (Dockerfile syntax) to an image config's `config` object.
pub fn apply_change(config: &mut Value, change: &str) -> Result<(), ImageError> {
    let bad = |reason: &str| ImageError::BadChange {
        change: change.to_string(),
        reason: reason.to_string(),
    };
    let (instr, rest) = change
        .trim()
        .split_once(char::is_whitespace)
        .map(|(a, b)| (a, b.trim()))
        .unwrap_or((change.trim(), ""));
    let exec_form = |rest: &str| -> Result<Value, ImageError> {
        if rest.starts_with('[') {
            let v: Vec<String> =
                serde_json::from_str(rest).map_err(|_| bad("not a JSON array of strings"))?;
            Ok(json!(v))
        } else {
            Ok(json!(["/bin/sh", "-c", rest]))
        }
    };
    let obj = config
        .as_object_mut()
        .ok_or_else(|| bad("config is not an object"))?;
    match instr.to_ascii_uppercase().as_str() {
        "CMD" if !rest.is_empty() => {
            obj.insert("Cmd".into(), exec_form(rest)?);
        }
        "ENTRYPOINT" if !rest.is_empty() => {
            obj.insert("Entrypoint".into(), exec_form(rest)?);
        }
        "ENV" => {
            let pairs: Vec<(String, String)> = if let Some((k, v)) = rest.split_once('=') {
                if k.contains(char::is_whitespace) {
                    return Err(bad("expected ENV KEY=value or ENV KEY value"));
                }
                vec![(k.to_string(), v.trim_matches('"').to_string())]
            } else if let Some((k, v)) = rest.split_once(char::is_whitespace) {
                vec![(k.to_string(), v.trim().to_string())]
            } else {
                return Err(bad("expected ENV KEY=value or ENV KEY value"));
            };
            let env = obj.entry("Env").or_insert_with(|| json!([]));
            let list = env.as_array_mut().ok_or_else(|| bad("Env is not a list"))?;
            for (k, v) in pairs {
                list.retain(|e| e.as_str().and_then(|s| s.split_once('=')).map(|(ek, _)| ek != k).unwrap_or(true));
                list.push(json!(format!("{k}={v}")));
            }
        }
        "WORKDIR" if !rest.is_empty() => {
            obj.insert("WorkingDir".into(), json!(rest));
        }
        "USER" if !rest.is_empty() => {
            obj.insert("User".into(), json!(rest));
        }
        "STOPSIGNAL" if !rest.is_empty() => {
            obj.insert("StopSignal".into(), json!(rest));
        }
        "EXPOSE" if !rest.is_empty() => {
            let ports = obj.entry("ExposedPorts").or_insert_with(|| json!({}));
            for p in rest.split_whitespace() {
                let (num, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                if num.parse::<u16>().is_err() || !matches!(proto, "tcp" | "udp" | "sctp") {
                    return Err(bad("expected EXPOSE <port>[/tcp|udp|sctp]"));
                }
                ports[format!("{num}/{proto}")] = json!({});
            }
        }
        "VOLUME" if !rest.is_empty() => {
            let vols = obj.entry("Volumes").or_insert_with(|| json!({}));
            let list: Vec<String> = if rest.starts_with('[') { serde_json::from_str(rest).map_err(|_| bad("not a JSON array"))? } else { rest.split_whitespace().map(str::to_string).collect() };
            for v in list {
                vols[v] = json!({});
            }
        }
        "LABEL" => {
            let (k, v) = rest.split_once('=').ok_or_else(|| bad("expected LABEL key=value"))?;
            let labels = obj.entry("Labels").or_insert_with(|| json!({}));
            labels[k.trim().trim_matches('"')] = json!(v.trim().trim_matches('"'));
        }
        "CMD" | "ENTRYPOINT" | "WORKDIR" | "USER" | "STOPSIGNAL" | "EXPOSE" | "VOLUME" => return Err(bad("needs an argument")),
        other => return Err(bad(&format!("{other} is not one of CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_become_config() {
        let mut c = json!({});
        for ch in [
            "CMD [\"sh\", \"-c\", \"echo hi\"]",
            "ENTRYPOINT /bin/init",
            "ENV A=1",
            "ENV B two",
            "ENV A=3",
            "WORKDIR /srv",
            "USER 1000:1000",
            "EXPOSE 80 53/udp",
            "LABEL org.example=\"yes\"",
            "VOLUME /data",
            "STOPSIGNAL SIGINT",
        ] {
            apply_change(&mut c, ch).unwrap();
        }
        assert_eq!(
            c,
            json!({"Cmd": ["sh", "-c", "echo hi"], "Entrypoint": ["/bin/sh", "-c", "/bin/init"], "Env": ["B=two", "A=3"], "WorkingDir": "/srv",
                   "User": "1000:1000", "ExposedPorts": {"80/tcp": {}, "53/udp": {}}, "Labels": {"org.example": "yes"}, "Volumes": {"/data": {}}, "StopSignal": "SIGINT"})
        );
        for bad in [
            "RUN make",
            "EXPOSE http",
            "CMD [\"unterminated\"",
            "ENV",
            "WORKDIR",
        ] {
            let e = apply_change(&mut c, bad).unwrap_err().to_string();
            assert!(
                e.contains(bad.split_whitespace().next().unwrap()) || e.contains("--change"),
                "{e}"
            );
        }
    }

    #[test]
    fn gc_waits_for_writers_and_keeps_what_they_stored() {
        let tmp = tempfile::tempdir().unwrap();
        let images = Images::open(tmp.path()).unwrap();
        // A writer (import, load, commit) holds a shared lease while its blobs are unrecorded.
        let lease = images.lease(libc::LOCK_SH).unwrap();
        let blob = images.store().write_bytes(b"in flight").unwrap();
        // Collection needs the lease exclusively: it cannot start now.
        let err = images
            .lease(libc::LOCK_EX | libc::LOCK_NB)
            .unwrap_err()
            .to_string();
        assert!(err.contains("gc.lock"), "{err}");
        assert!(images.store().contains(&blob));
        drop(lease);
        // Once the writer is done (and its image recorded, or not), collection proceeds.
        let (removed, _) = images.gc().unwrap();
        assert_eq!(removed, vec![blob]);
    }
}
