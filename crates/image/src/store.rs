//! The content-addressable blob store: every blob lives at `<root>/blobs/<alg>/<hex>` and is
//! written atomically through a locked temp file in `<root>/ingest/`, so a crash never leaves a
//! blob whose content does not match its name.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::Digest as _;

use crate::digest::{Algorithm, Digest, Hasher};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system operation failed; `what` names the operation and the path or blob.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The content read does not hash to the digest it was stored or announced under.
    #[error("blob {expected}: content has digest {actual} ({size} bytes)")]
    Mismatch {
        expected: Digest,
        actual: Digest,
        size: u64,
    },
    #[error("blob {0} not found")]
    NotFound(Digest),
    /// Only sha256 content is written; other algorithms can only be read.
    #[error("blob {0}: only sha256 content can be written to the store")]
    UnsupportedAlgorithm(Digest),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

/// A content-addressable store rooted at a directory (e.g. `/var/lib/berth/content`).
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// Makes temp file names unique within this process (the pid and time make them unique across
/// processes; `O_EXCL` catches the rest).
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Opens (creating if needed) the store at `root`, and removes the ingest temp files that
    /// crashed writers left behind. A temp file whose writer is still alive is locked by it
    /// and kept.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let store = Store {
            root: root.to_path_buf(),
        };
        let sha256 = store.alg_dir(Algorithm::Sha256);
        fs::create_dir_all(&sha256).map_err(io_err(format!("create {}", sha256.display())))?;
        let ingest = store.ingest_dir();
        fs::create_dir_all(&ingest).map_err(io_err(format!("create {}", ingest.display())))?;
        store.clean_ingest()?;
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn alg_dir(&self, algorithm: Algorithm) -> PathBuf {
        let name = match algorithm {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        };
        self.root.join("blobs").join(name)
    }

    fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    /// Deletes every temp file in ingest/ that no live writer holds locked.
    fn clean_ingest(&self) -> Result<(), StoreError> {
        let ingest = self.ingest_dir();
        let entries =
            fs::read_dir(&ingest).map_err(io_err(format!("read {}", ingest.display())))?;
        for entry in entries {
            let entry = entry.map_err(io_err(format!("read {}", ingest.display())))?;
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue; // not ours: only files are made here
            }
            let file = match File::open(&path) {
                Ok(f) => f,
                // Its writer finished (and removed it) while we were listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(format!("open {}", path.display()))(e)),
            };
            if !try_lock(&file).map_err(io_err(format!("lock {}", path.display())))? {
                continue; // a live writer holds it
            }
            // We hold the lock, so no writer uses this file: delete it while still locked (a
            // writer that created it but lost the race for the lock notices and starts over).
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format!("remove {}", path.display()))(e)),
            }
        }
        Ok(())
    }

    /// Creates a new temp file in ingest/ (`O_CREAT|O_EXCL`, 0644) and locks it, so that a
    /// concurrent `open` does not take it for a crash leftover.
    fn create_temp(&self) -> Result<(File, PathBuf), StoreError> {
        let ingest = self.ingest_dir();
        loop {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = ingest.join(format!("{}-{n}-{nanos:08x}.tmp", std::process::id()));
            let file = match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(format!("create {}", path.display()))(e)),
            };
            // Between the create and the lock a concurrent `open` may have locked and deleted
            // the file: only keep it if we got the lock and the name still points at it.
            match try_lock(&file) {
                Ok(true) => {}
                // A concurrent `open` holds it and deletes it.
                Ok(false) => continue,
                Err(e) => {
                    let _ = fs::remove_file(&path);
                    return Err(io_err(format!("lock {}", path.display()))(e));
                }
            }
            let ours = file
                .metadata()
                .map_err(io_err(format!("stat {}", path.display())))?;
            match fs::metadata(&path) {
                Ok(m) if m.dev() == ours.dev() && m.ino() == ours.ino() => return Ok((file, path)),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(format!("stat {}", path.display()))(e)),
            }
        }
    }

    /// Streams `reader` into the store; `expected` (when given) must match or nothing is
    /// stored. Returns the content's digest and size. Writing a blob that is already stored
    /// keeps the stored file.
    pub fn write(
        &self,
        expected: Option<&Digest>,
        reader: impl Read,
    ) -> Result<(Digest, u64), StoreError> {
        if let Some(d) = expected {
            if d.algorithm() != Algorithm::Sha256 {
                return Err(StoreError::UnsupportedAlgorithm(d.clone()));
            }
        }
        let (file, temp) = self.create_temp()?;
        // Removes the temp file on every early return.
        let guard = TempGuard(Some(temp.clone()));
        let what = match expected {
            Some(d) => format!("write blob {d}"),
            None => "write blob".to_string(),
        };
        let (digest, size) = copy_hashing(reader, &file, &what)?;
        file.set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(io_err(format!("chmod {}", temp.display())))?;
        file.sync_all()
            .map_err(io_err(format!("fsync {}", temp.display())))?;
        if let Some(expected) = expected {
            if *expected != digest {
                return Err(StoreError::Mismatch {
                    expected: expected.clone(),
                    actual: digest,
                    size,
                });
            }
        }
        let dest = self.path(&digest);
        // A hard link never replaces an existing name: if the blob is already stored (by an
        // earlier or a concurrent writer), the stored file stays as it is.
        match fs::hard_link(&temp, &dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(io_err(format!(
                    "link {} to {}",
                    temp.display(),
                    dest.display()
                ))(e))
            }
        }
        drop(guard); // removes the temp name; the blob keeps its own
        let dir = self.alg_dir(Algorithm::Sha256);
        sync_dir(&dir)?;
        drop(file); // releases the lock last
        Ok((digest, size))
    }

    /// Stores `bytes`; returns their digest.
    pub fn write_bytes(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        self.write(None, bytes).map(|(d, _)| d)
    }

    /// Whether the blob is stored.
    pub fn contains(&self, d: &Digest) -> bool {
        fs::metadata(self.path(d)).is_ok_and(|m| m.is_file())
    }

    /// The stored blob's size in bytes.
    pub fn size(&self, d: &Digest) -> Result<u64, StoreError> {
        match fs::metadata(self.path(d)) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound(d.clone())),
            Err(e) => Err(io_err(format!("stat blob {d}"))(e)),
        }
    }

    /// Where the blob lives (it may not exist). Readers that use the path directly do not get
    /// the digest check that [`Store::open_blob`] does.
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.alg_dir(d.algorithm()).join(d.hex())
    }

    /// A reader of the blob that verifies the digest as it goes: reading to the end of a
    /// corrupted blob returns an error naming it.
    pub fn open_blob(&self, d: &Digest) -> Result<BlobReader, StoreError> {
        let file = match File::open(self.path(d)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(d.clone()))
            }
            Err(e) => return Err(io_err(format!("open blob {d}"))(e)),
        };
        Ok(BlobReader {
            file,
            verifier: Verifier::new(d.algorithm()),
            len: 0,
            digest: d.clone(),
            verified: false,
            mismatch: None,
        })
    }

    /// The whole blob, verified.
    pub fn read(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let mut reader = self.open_blob(d)?;
        let mut out = Vec::new();
        match reader.read_to_end(&mut out) {
            Ok(_) => Ok(out),
            Err(e) => match reader.mismatch.take() {
                Some(m) => Err(m),
                None => Err(io_err(format!("read blob {d}"))(e)),
            },
        }
    }

    /// Removes the blob; removing a missing blob is not an error.
    pub fn delete(&self, d: &Digest) -> Result<(), StoreError> {
        match fs::remove_file(self.path(d)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("delete blob {d}"))(e)),
        }
    }

    /// Every stored blob (files whose names are not digests are skipped), sorted.
    pub fn list(&self) -> Result<Vec<Digest>, StoreError> {
        let mut out = Vec::new();
        for (algorithm, name) in [(Algorithm::Sha256, "sha256"), (Algorithm::Sha512, "sha512")] {
            let dir = self.alg_dir(algorithm);
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(format!("read {}", dir.display()))(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io_err(format!("read {}", dir.display())))?;
                let Some(hex) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if let Ok(d) = format!("{name}:{hex}").parse::<Digest>() {
                    out.push(d);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Removes a temp file when dropped.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// `flock(LOCK_EX|LOCK_NB)`: Ok(false) when another open file description holds the lock.
fn try_lock(file: &File) -> io::Result<bool> {
    loop {
        // SAFETY: flock only takes an integer descriptor, which `file` keeps open for the
        // duration of the call; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("fsync {}", dir.display())))
}

/// Copies `reader` into `file` while hashing; errors say whether reading or writing failed.
fn copy_hashing(
    mut reader: impl Read,
    mut file: &File,
    what: &str,
) -> Result<(Digest, u64), StoreError> {
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(format!("{what}: read content"))(e)),
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(io_err(format!("{what}: write temp file")))?;
    }
    let len = hasher.len();
    Ok((hasher.finish(), len))
}

/// Hashes with the algorithm of the digest being verified.
enum Verifier {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Verifier {
    fn new(algorithm: Algorithm) -> Verifier {
        match algorithm {
            Algorithm::Sha256 => Verifier::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Verifier::Sha512(sha2::Sha512::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Verifier::Sha256(h) => h.update(bytes),
            Verifier::Sha512(h) => h.update(bytes),
        }
    }

    fn finish(&self) -> Option<Digest> {
        let (name, out) = match self {
            Verifier::Sha256(h) => ("sha256", h.clone().finalize().to_vec()),
            Verifier::Sha512(h) => ("sha512", h.clone().finalize().to_vec()),
        };
        let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
        format!("{name}:{hex}").parse().ok()
    }
}

/// A stored blob being read; hashes what it reads, and fails at the end of a blob whose
/// content does not match its digest (the error names the blob).
pub struct BlobReader {
    file: File,
    verifier: Verifier,
    len: u64,
    digest: Digest,
    verified: bool,
    /// Set when the end was reached and the content did not verify.
    mismatch: Option<StoreError>,
}

impl BlobReader {
    /// The digest the blob is expected to have.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The mismatch error, if the content read so far (the whole blob) does not verify.
    fn check(&self) -> Option<StoreError> {
        match self.verifier.finish() {
            Some(actual) if actual != self.digest => Some(StoreError::Mismatch {
                expected: self.digest.clone(),
                actual,
                size: self.len,
            }),
            _ => None,
        }
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.file.read(buf)?;
        if n > 0 {
            self.verifier.update(&buf[..n]);
            self.len += n as u64;
            return Ok(n);
        }
        if !self.verified {
            if let Some(e) = self.check() {
                let err = io::Error::new(io::ErrorKind::InvalidData, e.to_string());
                self.mismatch = Some(e);
                return Err(err);
            }
            self.verified = true;
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn ingest_files(root: &Path) -> Vec<PathBuf> {
        fs::read_dir(root.join("ingest"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    fn blob_files(root: &Path) -> Vec<PathBuf> {
        fs::read_dir(root.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let content = b"hello, berth".repeat(50_000);
        let (d, n) = store.write(None, &content[..]).unwrap();
        assert_eq!(d, Digest::of(&content));
        assert_eq!(n, content.len() as u64);
        assert!(store.contains(&d));
        assert_eq!(store.size(&d).unwrap(), n);
        assert_eq!(store.read(&d).unwrap(), content);
        let mut streamed = Vec::new();
        store
            .open_blob(&d)
            .unwrap()
            .read_to_end(&mut streamed)
            .unwrap();
        assert_eq!(streamed, content);
        assert_eq!(
            store.path(&d),
            dir.path().join("blobs/sha256").join(d.hex())
        );
        let mode = fs::metadata(store.path(&d)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o444);

        // With the right expected digest, and again (already stored: same answer).
        let small = store.write_bytes(b"{}").unwrap();
        assert_eq!(
            store.write(Some(&small), &b"{}"[..]).unwrap(),
            (small.clone(), 2)
        );
        assert_eq!(store.list().unwrap(), {
            let mut v = vec![d.clone(), small.clone()];
            v.sort();
            v
        });
        assert!(ingest_files(dir.path()).is_empty());

        store.delete(&d).unwrap();
        store.delete(&d).unwrap(); // missing is fine
        assert!(!store.contains(&d));
        assert!(matches!(store.read(&d), Err(StoreError::NotFound(_))));
        assert!(matches!(store.size(&d), Err(StoreError::NotFound(_))));
        let e = store.open_blob(&d).err().unwrap();
        assert_eq!(e.to_string(), format!("blob {d} not found"));

        // The empty blob is a blob too.
        let empty = store.write_bytes(b"").unwrap();
        assert_eq!(store.read(&empty).unwrap(), b"");
    }

    #[test]
    fn expected_digest_mismatch_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let expected = Digest::of(b"what the manifest promised");
        let err = store
            .write(Some(&expected), &b"what the registry sent"[..])
            .unwrap_err();
        let actual = Digest::of(b"what the registry sent");
        assert_eq!(
            err.to_string(),
            format!("blob {expected}: content has digest {actual} (22 bytes)")
        );
        assert!(!store.contains(&expected));
        assert!(!store.contains(&actual));
        assert!(blob_files(dir.path()).is_empty());
        assert!(ingest_files(dir.path()).is_empty());

        // A failing reader stores nothing either, and the error says what was being written.
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("connection reset"))
            }
        }
        let err = store.write(Some(&expected), Failing).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("write blob {expected}: read content: connection reset")
        );
        assert!(ingest_files(dir.path()).is_empty());

        // Only sha256 is written.
        let sha512: Digest = format!("sha512:{}", "ab".repeat(64)).parse().unwrap();
        let err = store.write(Some(&sha512), &b"x"[..]).unwrap_err();
        assert!(matches!(err, StoreError::UnsupportedAlgorithm(_)), "{err}");
        assert!(ingest_files(dir.path()).is_empty());
    }

    #[test]
    fn same_blob_written_by_eight_threads_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let content: Arc<Vec<u8>> = Arc::new((0..4_000_000u32).map(|i| (i % 251) as u8).collect());
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (store, content, barrier) = (store.clone(), content.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    store
                        .write(Some(&Digest::of(&content)), &content[..])
                        .unwrap()
                })
            })
            .collect();
        let expected = Digest::of(&content);
        for t in threads {
            assert_eq!(t.join().unwrap(), (expected.clone(), content.len() as u64));
        }
        assert_eq!(store.read(&expected).unwrap(), *content);
        assert_eq!(store.list().unwrap(), vec![expected]);
        assert_eq!(blob_files(dir.path()).len(), 1);
        assert!(ingest_files(dir.path()).is_empty());
    }

    #[test]
    fn corrupted_blob_fails_verification() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let content = b"layer bytes ".repeat(10_000);
        let d = store.write_bytes(&content).unwrap();
        let path = store.path(&d);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let mut bad = content.clone();
        bad[5000] ^= 1;
        fs::write(&path, &bad).unwrap();

        let err = store.read(&d).unwrap_err();
        let actual = Digest::of(&bad);
        let want = format!(
            "blob {d}: content has digest {actual} ({} bytes)",
            bad.len()
        );
        assert_eq!(err.to_string(), want);

        let mut reader = store.open_blob(&d).unwrap();
        let err = io::copy(&mut reader, &mut io::sink()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(err.to_string(), want);

        // Rewriting the right content does not repair it (a stored blob is never rewritten),
        // but deleting and writing again does.
        store.write_bytes(&content).unwrap();
        assert!(store.read(&d).is_err());
        store.delete(&d).unwrap();
        store.write_bytes(&content).unwrap();
        assert_eq!(store.read(&d).unwrap(), content);
    }

    /// Gives `limit` bytes, then blocks forever.
    struct StallingReader {
        given: usize,
        limit: usize,
    }

    impl Read for StallingReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.given >= self.limit {
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            let n = buf.len().min(self.limit - self.given);
            buf[..n].fill(b'x');
            self.given += n;
            Ok(n)
        }
    }

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn killed_writer_leaves_no_blob_and_open_cleans_ingest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        const HALF: usize = 8 << 20;
        // SAFETY: fork has no memory-safety preconditions. The child only writes through the
        // store (glibc keeps malloc usable after fork) and never returns into the test harness:
        // it blocks in the reader until killed, or leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            let _ = store.write(
                None,
                StallingReader {
                    given: 0,
                    limit: HALF,
                },
            );
            // SAFETY: _exit ends the child at once, running no destructors or atexit handlers.
            unsafe { libc::_exit(1) };
        }
        let start = Instant::now();
        let halfway = loop {
            let written = ingest_files(dir.path())
                .iter()
                .any(|p| fs::metadata(p).is_ok_and(|m| m.len() >= HALF as u64));
            if written || start.elapsed() > Duration::from_secs(60) {
                break written;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // While the child lives, its lock keeps its temp file from another process's `open`.
        let reopened = Store::open(dir.path()).map(|_| ingest_files(dir.path()).len());
        // SAFETY: kill and waitpid take plain integers and a pointer to a local int; pid is our
        // own child, not yet reaped.
        let (killed, reaped) = unsafe {
            let killed = libc::kill(pid, libc::SIGKILL);
            let mut status = 0;
            (killed, libc::waitpid(pid, &mut status, 0))
        };
        assert_eq!((killed, reaped), (0, pid));
        assert!(halfway, "the child did not write half the blob in 60 s");
        assert_eq!(reopened.unwrap(), 1);

        assert!(blob_files(dir.path()).is_empty());
        assert_eq!(ingest_files(dir.path()).len(), 1, "the crash leftover");
        let store = Store::open(dir.path()).unwrap();
        assert!(ingest_files(dir.path()).is_empty());
        assert!(blob_files(dir.path()).is_empty());
        assert!(store.list().unwrap().is_empty());
    }

    /// Gives `first` bytes, waits for a message, then gives `rest` more.
    struct GatedReader {
        first: usize,
        rest: usize,
        gate: mpsc::Receiver<()>,
    }

    impl Read for GatedReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.first == 0 && self.rest > 0 {
                let _ = self.gate.recv();
                self.first = std::mem::take(&mut self.rest);
            }
            let n = buf.len().min(self.first);
            buf[..n].fill(b'y');
            self.first -= n;
            Ok(n)
        }
    }

    #[test]
    fn open_keeps_the_temp_file_of_a_live_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (go, gate) = mpsc::channel();
        let writer = std::thread::spawn(move || {
            store
                .write(
                    None,
                    GatedReader {
                        first: 1 << 20,
                        rest: 1 << 20,
                        gate,
                    },
                )
                .unwrap()
        });
        wait_for("the writer's temp file", || {
            ingest_files(dir.path())
                .iter()
                .any(|p| fs::metadata(p).is_ok_and(|m| m.len() >= 1 << 20))
        });
        let before = ingest_files(dir.path());
        // A stale leftover next to it is removed.
        let stale = dir.path().join("ingest/stale.tmp");
        fs::write(&stale, b"half a blob").unwrap();

        let second = Store::open(dir.path()).unwrap();
        assert_eq!(
            ingest_files(dir.path()),
            before,
            "the live writer's temp file stays"
        );
        assert!(!stale.exists());

        go.send(()).unwrap();
        let (d, n) = writer.join().unwrap();
        assert_eq!(n, 2 << 20);
        assert_eq!(d, Digest::of(&vec![b'y'; 2 << 20]));
        assert_eq!(second.read(&d).unwrap().len(), 2 << 20);
        assert!(ingest_files(dir.path()).is_empty());
    }

    #[test]
    fn list_skips_foreign_files_and_reads_other_algorithms() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        fs::write(dir.path().join("blobs/sha256/not-a-digest"), b"x").unwrap();
        // A sha512 blob put there by someone else is listed and verified on read.
        let content = b"sha512 content";
        let hex: String = sha2::Sha512::digest(content)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let d: Digest = format!("sha512:{hex}").parse().unwrap();
        fs::create_dir_all(dir.path().join("blobs/sha512")).unwrap();
        fs::write(store.path(&d), content).unwrap();
        assert!(store.contains(&d));
        assert_eq!(store.read(&d).unwrap(), content);
        assert_eq!(store.list().unwrap(), vec![d.clone()]);
        fs::write(store.path(&d), b"tampered").unwrap();
        assert!(matches!(store.read(&d), Err(StoreError::Mismatch { .. })));
    }
}
