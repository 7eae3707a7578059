//! The registry's storage on the file system: blobs deduplicated across repositories and
//! verified before they become visible, uploads that survive a restart, manifests and tags
//! per repository, the referrers of a subject, and garbage collection.
//!
//! ```text
//! <root>/blobs/sha256/<hex>                  content (manifests too), immutable
//! <root>/uploads/<uuid>                      an upload's bytes so far
//! <root>/uploads/<uuid>.repo                 the repository it is for
//! <root>/repos/<name>/_blobs/<hex>           the blob is in the repository (empty)
//! <root>/repos/<name>/_manifests/<hex>       the manifest is in the repository (its media type)
//! <root>/repos/<name>/_tags/<tag>            the digest the tag names
//! <root>/repos/<name>/_referrers/<subject-hex>/<hex>  a referrer's descriptor
//! ```
//!
//! Every file that becomes visible is written to a temporary name, synced and renamed: a
//! registry killed at any instant restarts with no partial blob, manifest or tag.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use image::digest::{Digest, Hasher};
use serde_json::{json, Value};

use crate::error::RegError;
use crate::names;

/// Media types of image manifests and of indexes.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Layers a registry does not hold (Windows foreign layers): not checked on manifest PUT.
const FOREIGN: [&str; 2] = [
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
];

/// An upload this process has seen: the hash of the bytes written so far, or a request
/// writing it now.
enum Upload {
    Idle(Hasher),
    Busy,
}

/// The storage.
pub struct Storage {
    root: PathBuf,
    /// Hash state of uploads this process has seen (others are re-hashed from their file).
    uploads: Mutex<HashMap<String, Upload>>,

    /// The largest manifest accepted.
    pub max_manifest: usize,
}

/// What a garbage collection did.
#[derive(Debug, Default, serde::Serialize)]
pub struct GcReport {
    /// Blobs kept (referenced).
    pub kept: usize,
    /// Blobs removed.
    pub removed: Vec<String>,
    /// Abandoned uploads removed.
    pub uploads_removed: usize,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Removes temporary files a crash left: only those an hour old, since a registry serving
/// next to this one (`gc` opens the storage too) may be writing the young ones.
fn sweep_temps(dir: &Path) -> io::Result<()> {
    let cutoff = SystemTime::now() - std::time::Duration::from_secs(3600);
    for e in fs::read_dir(dir)?.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < cutoff);
        if old && e.file_name().to_string_lossy().starts_with(".tmp-") {
            let _ = fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// Writes `data` to `path` through a synced temporary file and a rename.
fn write_durable(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().ok_or_else(|| io::Error::other("no parent"))?;
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), random_hex(8)));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// `n` random bytes as hex, from the kernel.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    let mut f = fs::File::open("/dev/urandom").expect("/dev/urandom");
    f.read_exact(&mut buf).expect("reading /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn io_err(e: io::Error) -> RegError {
    RegError::internal(e.to_string())
}

impl Storage {
    /// Opens (creating) the storage at `root`; temporary files a crash left are removed.
    pub fn open(root: &Path) -> io::Result<Storage> {
        for d in ["blobs/sha256", "uploads", "repos"] {
            fs::create_dir_all(root.join(d))?;
        }
        sweep_temps(&root.join("blobs/sha256"))?;
        Ok(Storage {
            root: root.to_path_buf(),
            uploads: Mutex::new(HashMap::new()),
            max_manifest: 4 << 20,
        })
    }

    /// The garbage-collection lock (`<root>/gc.lock`): taken shared by what makes content
    /// reachable (blob commits, mounts, manifest PUTs) and exclusively by a sweep, in this
    /// process or another (`berth registry gc` next to `serve`). A new open file each time:
    /// flock belongs to the open file, not the thread.
    fn lock(&self, how: libc::c_int) -> Result<fs::File, RegError> {
        use std::os::fd::AsRawFd;
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("gc.lock"))
            .map_err(io_err)?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(f.as_raw_fd(), how) } != 0 {
            return Err(io_err(io::Error::last_os_error()));
        }
        Ok(f)
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.root.join("repos").join(repo)
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(d.algorithm_name())
            .join(d.hex())
    }

    /// A blob's size, if the storage has it.
    pub fn blob_size(&self, d: &Digest) -> Option<u64> {
        fs::metadata(self.blob_path(d)).ok().map(|m| m.len())
    }

    /// Whether `repo` holds the blob (uploaded, mounted or referenced by a manifest in it).
    pub fn repo_has_blob(&self, repo: &str, d: &Digest) -> bool {
        (self.repo_dir(repo).join("_blobs").join(d.hex()).exists() && self.blob_size(d).is_some())
            || self
                .repo_dir(repo)
                .join("_manifests")
                .join(d.hex())
                .exists()
    }

    /// The blob's content, for reading from `offset`.
    pub fn open_blob(&self, d: &Digest) -> Result<fs::File, RegError> {
        fs::File::open(self.blob_path(d)).map_err(|_| RegError::blob_unknown(d))
    }

    fn link_blob(&self, repo: &str, d: &Digest) -> Result<(), RegError> {
        let dir = self.repo_dir(repo).join("_blobs");
        fs::create_dir_all(&dir).map_err(io_err)?;
        let p = dir.join(d.hex());
        if !p.exists() {
            write_durable(&p, b"").map_err(io_err)?;
        }
        Ok(())
    }

    /// DELETE of a blob: it leaves the repository (the garbage collector frees it).
    pub fn delete_blob(&self, repo: &str, d: &Digest) -> Result<(), RegError> {
        let p = self.repo_dir(repo).join("_blobs").join(d.hex());
        fs::remove_file(&p).map_err(|_| RegError::blob_unknown(d))
    }

    /// Cross-repository mount: true when `from` has the blob (it is then in `repo` too).
    pub fn mount(&self, repo: &str, from: &str, d: &Digest) -> Result<bool, RegError> {
        if names::validate(from).is_err() || !self.repo_has_blob(from, d) {
            return Ok(false);
        }
        let _gc = self.lock(libc::LOCK_SH)?;
        if self.blob_size(d).is_none() {
            return Ok(false);
        }
        // Dated now, as a blob uploaded again is: the collector leaves it to the manifest the
        // client is about to push.
        let _ = fs::OpenOptions::new()
            .write(true)
            .open(self.blob_path(d))
            .and_then(|f| f.set_modified(SystemTime::now()));
        self.link_blob(repo, d)?;
        Ok(true)
    }

    fn upload_path(&self, uuid: &str) -> Result<PathBuf, RegError> {
        // A UUID is ours only if it is hex and dashes: nothing else reaches a path.
        if uuid.is_empty()
            || uuid.len() > 64
            || !uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        {
            return Err(RegError::upload_unknown());
        }
        Ok(self.root.join("uploads").join(uuid))
    }

    /// POST of an upload: its UUID.
    pub fn start_upload(&self, repo: &str) -> Result<String, RegError> {
        let h = random_hex(16);
        let uuid = format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        );
        let path = self.upload_path(&uuid)?;
        fs::File::create(&path).map_err(io_err)?;
        write_durable(&path.with_extension("repo"), repo.as_bytes()).map_err(io_err)?;
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uuid.clone(), Upload::Idle(Hasher::new()));
        Ok(uuid)
    }

    /// The upload's file, checked to belong to `repo`, and its length.
    fn upload_file(&self, repo: &str, uuid: &str) -> Result<(PathBuf, u64), RegError> {
        let path = self.upload_path(uuid)?;
        let owner = fs::read_to_string(path.with_extension("repo"))
            .map_err(|_| RegError::upload_unknown())?;
        if owner != repo {
            return Err(RegError::upload_unknown());
        }
        let len = fs::metadata(&path)
            .map_err(|_| RegError::upload_unknown())?
            .len();
        Ok((path, len))
    }

    /// GET of an upload: the bytes received so far.
    pub fn upload_status(&self, repo: &str, uuid: &str) -> Result<u64, RegError> {
        Ok(self.upload_file(repo, uuid)?.1)
    }

    /// PATCH (or the body of the closing PUT): appends `body` at `start` (which must be the
    /// current length when given). Returns the new length. At most `limit` bytes in all.
    pub fn upload_append(
        &self,
        repo: &str,
        uuid: &str,
        start: Option<u64>,
        body: &mut dyn Read,
        limit: u64,
    ) -> Result<u64, RegError> {
        let (path, len) = self.upload_file(repo, uuid)?;
        if let Some(s) = start {
            if s != len {
                return Err(RegError::range_invalid(len));
            }
        }
        let mut hasher = self.take_upload(uuid, &path, len)?;
        let opened = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.seek(SeekFrom::Start(len)).map(|_| f));
        let mut f = match opened {
            Ok(f) => f,
            Err(e) => {
                // Not busy any more: the next request hashes the file afresh.
                self.uploads
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(uuid);
                return Err(io_err(e));
            }
        };
        // A long upload stays known: its marker is as young as its data.
        let _ = fs::OpenOptions::new()
            .write(true)
            .open(path.with_extension("repo"))
            .and_then(|m| m.set_modified(SystemTime::now()));
        let mut buf = vec![0u8; 1 << 20];
        let mut total = len;
        let result = loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(RegError::upload_invalid(format!("reading the body: {e}"))),
            };
            total += n as u64;
            if total > limit {
                break Err(RegError::size_invalid(format!(
                    "the blob is larger than the limit of {limit} bytes"
                )));
            }
            if let Err(e) = f.write_all(&buf[..n]) {
                break Err(io_err(e));
            }
            hasher.update(&buf[..n]);
        };
        let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = result {
            // What was written of a failed chunk is not part of the upload.
            let _ = f.set_len(len);
            uploads.remove(uuid);
            return Err(e);
        }
        uploads.insert(uuid.to_string(), Upload::Idle(hasher));
        Ok(total)
    }

    /// The hash state of an upload of `len` bytes, the upload marked busy meanwhile: a
    /// second request writing the same upload at once is refused.
    fn take_upload(&self, uuid: &str, path: &Path, len: u64) -> Result<Hasher, RegError> {
        let known = {
            let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
            match uploads.insert(uuid.to_string(), Upload::Busy) {
                Some(Upload::Busy) => {
                    return Err(RegError::upload_invalid(
                        "another request is writing this upload".into(),
                    ));
                }
                Some(Upload::Idle(h)) if h.len() == len => Some(h),
                _ => None,
            }
        };
        match known {
            Some(h) => Ok(h),
            None => {
                // Not seen by this process (a restart): hash what is there.
                let mut h = Hasher::new();
                let hashed = fs::File::open(path)
                    .and_then(|mut f| io::copy(&mut f, &mut HashWriter(&mut h)));
                if let Err(e) = hashed {
                    self.uploads
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(uuid);
                    return Err(io_err(e));
                }
                Ok(h)
            }
        }
    }

    /// The closing PUT: the upload's digest must be `digest`; the blob becomes visible in
    /// `repo`.
    pub fn upload_finish(&self, repo: &str, uuid: &str, digest: &Digest) -> Result<(), RegError> {
        let (path, len) = self.upload_file(repo, uuid)?;
        if digest.algorithm_name() != "sha256" {
            return Err(RegError::unsupported(format!(
                "digest algorithm {}",
                digest.algorithm_name()
            )));
        }
        // Busy until the blob is in place: a PATCH in between would write into it.
        let got = self.take_upload(uuid, &path, len)?.finish();
        let result = self.commit_upload(repo, &path, &got, digest);
        // Done with the hash state: a failed finish re-hashes if the client goes on.
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uuid);
        result
    }

    /// The rest of [`Storage::upload_finish`], with the upload held busy.
    fn commit_upload(
        &self,
        repo: &str,
        path: &Path,
        got: &Digest,
        digest: &Digest,
    ) -> Result<(), RegError> {
        if got != digest {
            // The upload stays, as the spec lets a client go on with it.
            return Err(RegError::digest_invalid(format!(
                "the upload's digest is {got}, not {digest}"
            )));
        }
        let _gc = self.lock(libc::LOCK_SH)?;
        let dest = self.blob_path(digest);
        if dest.exists() {
            // Stored already (another repository, or a client pushing twice): kept, and
            // dated now as a new blob would be, so the collector leaves it to the manifest
            // that the client is about to push.
            let _ = fs::remove_file(path);
            fs::OpenOptions::new()
                .write(true)
                .open(&dest)
                .and_then(|f| f.set_modified(SystemTime::now()))
                .map_err(io_err)?;
        } else {
            // Synced, and dated now: a blob just committed is young for the collector.
            fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| {
                    f.set_modified(SystemTime::now())?;
                    f.sync_all()
                })
                .map_err(io_err)?;
            fs::rename(path, &dest).map_err(io_err)?;
            sync_dir(dest.parent().unwrap_or(&self.root)).map_err(io_err)?;
        }
        let _ = fs::remove_file(path.with_extension("repo"));
        self.link_blob(repo, digest)
    }

    /// DELETE of an upload.
    pub fn upload_cancel(&self, repo: &str, uuid: &str) -> Result<(), RegError> {
        let (path, _) = self.upload_file(repo, uuid)?;
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uuid);
        let _ = fs::remove_file(&path);
        let _ = fs::remove_file(path.with_extension("repo"));
        Ok(())
    }

    /// Stores `body` as a blob (a manifest), verified to be `digest`.
    fn put_content(&self, body: &[u8]) -> Result<Digest, RegError> {
        let d = Digest::of(body);
        let p = self.blob_path(&d);
        if !p.exists() {
            write_durable(&p, body).map_err(io_err)?;
        }
        Ok(d)
    }

    /// PUT of a manifest under `reference` (a tag or its digest). Checks that what it
    /// references is in the repository; returns its digest and its subject.
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<(Digest, Option<Digest>), RegError> {
        if body.len() > self.max_manifest {
            return Err(RegError::size_invalid(format!(
                "the manifest is larger than {} bytes",
                self.max_manifest
            )));
        }
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| RegError::manifest_invalid(format!("not JSON: {e}")))?;
        let field = v["mediaType"].as_str();
        let media = match (field, content_type.filter(|c| !c.is_empty())) {
            (Some(f), Some(c)) if !c.starts_with(f) && c != "application/json" => {
                return Err(RegError::manifest_invalid(format!(
                    "mediaType {f} but Content-Type {c}"
                )));
            }
            (Some(f), _) => f.to_string(),
            (None, Some(c)) => c.split(';').next().unwrap_or(c).trim().to_string(),
            (None, None) => {
                if v["manifests"].is_array() {
                    OCI_INDEX.to_string()
                } else {
                    OCI_MANIFEST.to_string()
                }
            }
        };
        let digest_ref = reference.contains(':');
        let computed = Digest::of(body);
        if digest_ref {
            let want: Digest = reference
                .parse()
                .map_err(|e: image::digest::InvalidDigest| {
                    RegError::digest_invalid(e.to_string())
                })?;
            if want != computed {
                return Err(RegError::digest_invalid(format!(
                    "the manifest's digest is {computed}, not {want}"
                )));
            }
        } else {
            names::validate_tag(reference)?;
        }
        if v["schemaVersion"].as_i64() != Some(2) {
            return Err(RegError::manifest_invalid(
                "schemaVersion must be 2 (schema 1 is not supported)".into(),
            ));
        }
        let _gc = self.lock(libc::LOCK_SH)?;
        // What it references must be here.
        let mut missing: Vec<String> = Vec::new();
        match media.as_str() {
            OCI_INDEX | DOCKER_LIST => {
                for m in v["manifests"].as_array().into_iter().flatten() {
                    let d = descriptor_digest(m)?;
                    if !self
                        .repo_dir(repo)
                        .join("_manifests")
                        .join(d.hex())
                        .exists()
                    {
                        missing.push(d.to_string());
                    }
                }
            }
            _ => {
                if !v["config"].is_object() {
                    return Err(RegError::manifest_invalid(
                        "an image manifest needs a config".into(),
                    ));
                }
                let config = descriptor_digest(&v["config"])?;
                let mut blobs = vec![config];
                for l in v["layers"].as_array().into_iter().flatten() {
                    if FOREIGN.contains(&l["mediaType"].as_str().unwrap_or_default()) {
                        continue;
                    }
                    blobs.push(descriptor_digest(l)?);
                }
                for d in blobs {
                    if !self.repo_has_blob(repo, &d) {
                        missing.push(d.to_string());
                    }
                }
            }
        }
        if !missing.is_empty() {
            return Err(RegError::manifest_blob_unknown(missing));
        }
        let subject = match v.get("subject") {
            Some(s) if !s.is_null() => Some(descriptor_digest(s)?),
            _ => None,
        };
        let d = self.put_content(body)?;
        let dir = self.repo_dir(repo);
        write_durable(&dir.join("_manifests").join(d.hex()), media.as_bytes()).map_err(io_err)?;
        if let Some(s) = &subject {
            let mut desc = json!({"mediaType": media, "digest": d.to_string(), "size": body.len()});
            // Empty or missing: the config's media type, as the spec says.
            let artifact = v["artifactType"]
                .as_str()
                .filter(|a| !a.is_empty())
                .or_else(|| v["config"]["mediaType"].as_str());
            if let Some(a) = artifact {
                desc["artifactType"] = json!(a);
            }
            if let Some(a) = v.get("annotations").filter(|a| a.is_object()) {
                desc["annotations"] = a.clone();
            }
            let bytes = serde_json::to_vec(&desc).map_err(|e| RegError::internal(e.to_string()))?;
            write_durable(&dir.join("_referrers").join(s.hex()).join(d.hex()), &bytes)
                .map_err(io_err)?;
        }
        if !digest_ref {
            write_durable(&dir.join("_tags").join(reference), d.to_string().as_bytes())
                .map_err(io_err)?;
        }
        Ok((d, subject))
    }

    /// The digest `reference` names in `repo`.
    fn resolve(&self, repo: &str, reference: &str) -> Result<Digest, RegError> {
        if reference.contains(':') {
            reference
                .parse()
                .map_err(|e: image::digest::InvalidDigest| RegError::digest_invalid(e.to_string()))
        } else {
            // A name that cannot be a tag names no manifest (404, as the conformance suite
            // expects), and never reaches the file system.
            names::validate_tag(reference).map_err(|_| RegError::manifest_unknown(reference))?;
            let t = fs::read_to_string(self.repo_dir(repo).join("_tags").join(reference))
                .map_err(|_| RegError::manifest_unknown(reference))?;
            t.trim()
                .parse()
                .map_err(|_| RegError::manifest_unknown(reference))
        }
    }

    /// GET of a manifest: its digest, media type and content.
    pub fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<(Digest, String, Vec<u8>), RegError> {
        let d = self.resolve(repo, reference)?;
        let media = fs::read_to_string(self.repo_dir(repo).join("_manifests").join(d.hex()))
            .map_err(|_| RegError::manifest_unknown(reference))?;
        let body =
            fs::read(self.blob_path(&d)).map_err(|_| RegError::manifest_unknown(reference))?;
        Ok((d, media, body))
    }

    /// DELETE of a manifest: by digest, the manifest and every tag naming it; by tag, the tag.
    pub fn delete_manifest(&self, repo: &str, reference: &str) -> Result<(), RegError> {
        let dir = self.repo_dir(repo);
        if !reference.contains(':') {
            names::validate_tag(reference).map_err(|_| RegError::manifest_unknown(reference))?;
            return fs::remove_file(dir.join("_tags").join(reference))
                .map_err(|_| RegError::manifest_unknown(reference));
        }
        let d = self.resolve(repo, reference)?;
        fs::remove_file(dir.join("_manifests").join(d.hex()))
            .map_err(|_| RegError::manifest_unknown(reference))?;
        for e in fs::read_dir(dir.join("_tags"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if fs::read_to_string(e.path()).is_ok_and(|t| t.trim() == d.to_string()) {
                let _ = fs::remove_file(e.path());
            }
        }
        // It no longer refers to its subject.
        for e in fs::read_dir(dir.join("_referrers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = fs::remove_file(e.path().join(d.hex()));
        }
        Ok(())
    }

    /// Whether the repository exists.
    pub fn repo_exists(&self, repo: &str) -> bool {
        self.repo_dir(repo).join("_manifests").is_dir()
            || self.repo_dir(repo).join("_blobs").is_dir()
    }

    /// The repository's tags, sorted.
    pub fn tags(&self, repo: &str) -> Result<Vec<String>, RegError> {
        if !self.repo_exists(repo) {
            return Err(RegError::name_unknown(repo));
        }
        let mut tags: Vec<String> = fs::read_dir(self.repo_dir(repo).join("_tags"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|t| !t.starts_with(".tmp-"))
            .collect();
        tags.sort();
        Ok(tags)
    }

    /// Every repository, sorted.
    pub fn catalog(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![(self.root.join("repos"), String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('_') || !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let full = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                };
                if self.repo_exists(&full) {
                    out.push(full.clone());
                }
                stack.push((e.path(), full));
            }
        }
        out.sort();
        out
    }

    /// The descriptors of the manifests whose subject is `subject`, sorted by digest.
    pub fn referrers(&self, repo: &str, subject: &Digest) -> Vec<Value> {
        let dir = self.repo_dir(repo).join("_referrers").join(subject.hex());
        let mut out: Vec<(String, Value)> = fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with(".tmp-"))
            .filter_map(|e| {
                let v: Value = serde_json::from_slice(&fs::read(e.path()).ok()?).ok()?;
                Some((e.file_name().to_string_lossy().into_owned(), v))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.into_iter().map(|(_, v)| v).collect()
    }

    /// Garbage collection: removes blobs no manifest of any repository references (and that
    /// are older than `grace`), and uploads untouched for a day (or `grace`, if longer). Serving goes on: only the
    /// final sweep excludes blob commits and manifest PUTs, and it marks again what they
    /// made since the first mark.
    pub fn gc(&self, grace: std::time::Duration) -> Result<GcReport, RegError> {
        // The start as the file system dates files (its clock is coarser than the system's,
        // so a file made just after may otherwise look older).
        let stamp = self.root.join("gc.started");
        write_durable(&stamp, b"").map_err(io_err)?;
        let started = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .map_err(io_err)?;
        let mut marked = self.mark(None)?;
        let _sweep = self.lock(libc::LOCK_EX)?;
        marked.extend(self.mark(Some(started))?);
        sweep_temps(&self.root.join("blobs/sha256")).map_err(io_err)?;
        let mut report = GcReport::default();
        let cutoff = started.checked_sub(grace).unwrap_or(SystemTime::UNIX_EPOCH);
        let blobs = self.root.join("blobs/sha256");
        for e in fs::read_dir(&blobs).map_err(io_err)?.flatten() {
            let hex = e.file_name().to_string_lossy().into_owned();
            if hex.starts_with(".tmp-") {
                continue;
            }
            let young = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= cutoff);
            if marked.contains(&hex) || young {
                report.kept += 1;
                continue;
            }
            fs::remove_file(e.path()).map_err(io_err)?;
            report.removed.push(format!("sha256:{hex}"));
        }
        // Repository links to removed blobs go too.
        let gone: BTreeSet<&str> = report.removed.iter().map(|d| &d[7..]).collect();
        for repo in self.catalog() {
            for e in fs::read_dir(self.repo_dir(&repo).join("_blobs"))
                .into_iter()
                .flatten()
                .flatten()
            {
                if gone.contains(e.file_name().to_string_lossy().as_ref()) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        // An upload is abandoned only after a day without a byte (at least), whatever the
        // blobs' grace: a push in progress may pause between its chunks.
        let upload_cutoff = started
            .checked_sub(grace.max(std::time::Duration::from_secs(24 * 3600)))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        for e in fs::read_dir(self.root.join("uploads"))
            .map_err(io_err)?
            .flatten()
        {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t <= upload_cutoff);
            if old {
                let _ = fs::remove_file(e.path());
                if e.path().extension().is_none() {
                    report.uploads_removed += 1;
                }
            }
        }
        sync_dir(&blobs).map_err(io_err)?;
        Ok(report)
    }

    /// The hex digests every manifest of every repository holds or references (only the
    /// manifests linked at or after `since`, when given).
    fn mark(&self, since: Option<SystemTime>) -> Result<BTreeSet<String>, RegError> {
        let mut marked = BTreeSet::new();
        for repo in self.catalog() {
            for e in fs::read_dir(self.repo_dir(&repo).join("_manifests"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let hex = e.file_name().to_string_lossy().into_owned();
                if hex.starts_with(".tmp-") {
                    continue;
                }
                if let Some(s) = since {
                    if e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < s) {
                        continue;
                    }
                }
                let Ok(body) = fs::read(self.root.join("blobs/sha256").join(&hex)) else {
                    continue;
                };
                marked.insert(hex);
                let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                let descs = v["layers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .chain(v["manifests"].as_array().into_iter().flatten())
                    .chain(std::iter::once(&v["config"]));
                for d in descs {
                    if let Some(h) = d["digest"].as_str().and_then(|d| d.strip_prefix("sha256:")) {
                        marked.insert(h.to_string());
                    }
                }
            }
        }
        Ok(marked)
    }

    /// Byte counts of the storage, for metrics.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        let blobs = fs::read_dir(self.root.join("blobs/sha256"))
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        let uploads = fs::read_dir(self.root.join("uploads"))
            .map(|d| d.count() as u64 / 2)
            .unwrap_or(0);
        BTreeMap::from([("blobs", blobs), ("uploads", uploads)])
    }
}

/// A descriptor's digest, or MANIFEST_INVALID.
fn descriptor_digest(v: &Value) -> Result<Digest, RegError> {
    v["digest"]
        .as_str()
        .ok_or_else(|| RegError::manifest_invalid("a descriptor without a digest".into()))?
        .parse()
        .map_err(|e: image::digest::InvalidDigest| RegError::manifest_invalid(e.to_string()))
}

/// Feeds what is written to a hasher.
struct HashWriter<'a>(&'a mut Hasher);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
