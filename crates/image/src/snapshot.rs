//! Snapshots: one directory per layer chain (OCI ChainID) holding that layer's files as an
//! overlayfs "diff" directory, shared by every image with that chain; and container root file
//! systems as an overlay of a chain plus a writable upper directory.
//!
//! Layout under the snapshot root:
//! - `<chain hex>/diff`: the layer's files (whiteouts as overlayfs whiteouts);
//! - `<chain hex>/parent`: the parent chain id (absent for a base layer);
//! - `.tmp-*`: layers being applied; renamed into place only when complete, so a crash never
//!   leaves a snapshot that claims a chain id it does not have (swept at open);
//! - `containers/<id>/{upper,work,merged}`: a container's writable layer and mount point.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::digest::Digest;

/// Why a snapshot operation failed; messages name the chain or container.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("snapshot {0} does not exist")]
    Missing(Digest),
    #[error("container rootfs {0:?} already exists")]
    Exists(String),
    #[error("invalid container id {0:?}")]
    InvalidId(String),
    #[error("mounting the overlay for {id} ({layers} layers)")]
    Mount {
        id: String,
        layers: usize,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The snapshot store.
#[derive(Debug, Clone)]
pub struct Snapshots {
    root: PathBuf,
}

/// A snapshot being filled; becomes the chain's snapshot on [`Pending::commit`], is removed on drop otherwise.
pub struct Pending {
    /// Holds an flock on `dir` while it is filled, so `open` elsewhere leaves it alone.
    lock: fs::File,
    dir: PathBuf,
    target: PathBuf,
    parent: Option<Digest>,
    done: bool,
}

impl Pending {
    /// The directory to extract the layer into.
    pub fn diff_dir(&self) -> PathBuf {
        self.dir.join("diff")
    }

    /// Makes the snapshot visible under `chain` (known only once the layer is applied: a base
    /// layer's chain id is its diff id), recording the layer's uncompressed `size`. If another
    /// writer got there first, theirs is kept.
    pub fn commit_as(mut self, chain: &Digest, size: u64) -> Result<(), SnapshotError> {
        self.target = self.target.with_file_name(chain.hex());
        fs::write(self.dir.join("size"), size.to_string()).map_err(io_err("writing", &self.dir))?;
        // Durable before visible: a snapshot that exists under its chain id is complete.
        // SAFETY: syncfs on our open directory fd.
        if unsafe { libc::syncfs(self.lock.as_raw_fd()) } < 0 {
            return Err(io_err("syncing", &self.dir)(io::Error::last_os_error()));
        }
        if let Some(p) = &self.parent {
            fs::write(self.dir.join("parent"), p.to_string())
                .map_err(io_err("writing", &self.dir))?;
        }
        match fs::rename(&self.dir, &self.target) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::ENOTEMPTY)) => {
                let _ = fs::remove_dir_all(&self.dir);
            }
            Err(e) => return Err(io_err("renaming", &self.dir)(e)),
        }
        self.done = true;
        sync_dir(self.target.parent().unwrap_or(Path::new("/")));
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// flock on `f`; true when taken.
fn lock(f: &fs::File, mode: libc::c_int) -> bool {
    // SAFETY: flock on an open fd; released when the file is closed.
    unsafe { libc::flock(f.as_raw_fd(), mode) == 0 }
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

impl Snapshots {
    /// Opens (creating, mode 0700: layers may hold setuid files and device nodes) the snapshot
    /// root and sweeps layers a crash left half-applied — those no live writer holds locked.
    pub fn open(root: &Path) -> Result<Snapshots, SnapshotError> {
        fs::create_dir_all(root.join("containers")).map_err(io_err("creating", root))?;
        fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(io_err("securing", root))?;
        for entry in fs::read_dir(root)
            .map_err(io_err("reading", root))?
            .flatten()
        {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                if let Ok(f) = fs::File::open(entry.path()) {
                    if lock(&f, libc::LOCK_EX | libc::LOCK_NB) {
                        let _ = fs::remove_dir_all(entry.path());
                    }
                }
            }
        }
        Ok(Snapshots {
            root: root.to_path_buf(),
        })
    }

    fn dir(&self, chain: &Digest) -> PathBuf {
        self.root.join(chain.hex())
    }

    pub fn exists(&self, chain: &Digest) -> bool {
        self.dir(chain).join("diff").is_dir()
    }

    /// The diff directory of a chain's snapshot.
    pub fn diff_dir(&self, chain: &Digest) -> Result<PathBuf, SnapshotError> {
        if !self.exists(chain) {
            return Err(SnapshotError::Missing(chain.clone()));
        }
        Ok(self.dir(chain).join("diff"))
    }

    /// Starts a snapshot for `chain` on top of `parent`.
    pub fn prepare(
        &self,
        chain: &Digest,
        parent: Option<&Digest>,
    ) -> Result<Pending, SnapshotError> {
        if let Some(p) = parent {
            if !self.exists(p) {
                return Err(SnapshotError::Missing(p.clone()));
            }
        }
        let nonce = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let dir = self
            .root
            .join(format!(".tmp-{}-{nonce}", &chain.hex()[..12]));
        fs::create_dir_all(dir.join("diff")).map_err(io_err("creating", &dir))?;
        let lock_file = fs::File::open(&dir).map_err(io_err("opening", &dir))?;
        lock(&lock_file, libc::LOCK_EX);
        Ok(Pending {
            lock: lock_file,
            dir,
            target: self.dir(chain),
            parent: parent.cloned(),
            done: false,
        })
    }

    /// The uncompressed size of the layer a chain's snapshot holds (recorded at commit).
    pub fn size(&self, chain: &Digest) -> Result<u64, SnapshotError> {
        let path = self.dir(chain).join("size");
        let text = fs::read_to_string(&path).map_err(io_err("reading", &path))?;
        text.trim().parse().map_err(|_| {
            io_err("reading", &path)(io::Error::new(io::ErrorKind::InvalidData, "not a size"))
        })
    }

    /// Every chain id that has a snapshot.
    pub fn list(&self) -> Result<Vec<Digest>, SnapshotError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root)
            .map_err(io_err("reading", &self.root))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Ok(d) = format!("sha256:{name}").parse::<Digest>() {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes a chain's snapshot (the caller checks nothing uses it).
    pub fn remove(&self, chain: &Digest) -> Result<(), SnapshotError> {
        let dir = self.dir(chain);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", &dir)(e)),
            _ => Ok(()),
        }
    }

    fn container_dir(&self, id: &str) -> Result<PathBuf, SnapshotError> {
        if !valid_id(id) {
            return Err(SnapshotError::InvalidId(id.to_string()));
        }
        Ok(self.root.join("containers").join(id))
    }

    /// Creates a container's root file system: an overlay of `chain` (top layer last in
    /// `chain`, as diff ids are ordered) plus a fresh upper directory, mounted at the returned path.
    pub fn mount_container(&self, id: &str, chain: &[Digest]) -> Result<PathBuf, SnapshotError> {
        let dir = self.container_dir(id)?;
        if dir.exists() {
            return Err(SnapshotError::Exists(id.to_string()));
        }
        let lowers = chain
            .iter()
            .rev()
            .map(|c| self.diff_dir(c))
            .collect::<Result<Vec<_>, _>>()?;
        for sub in ["upper", "work", "merged"] {
            fs::create_dir_all(dir.join(sub)).map_err(io_err("creating", &dir))?;
        }
        let merged = dir.join("merged");
        let result = if lowers.is_empty() {
            // An image without layers (FROM scratch with nothing added): the upper alone.
            bind(&dir.join("upper"), &merged)
        } else {
            mount_overlay(&lowers, &dir.join("upper"), &dir.join("work"), &merged)
        };
        if let Err(source) = result {
            let _ = fs::remove_dir_all(&dir);
            return Err(SnapshotError::Mount {
                id: id.to_string(),
                layers: lowers.len(),
                source,
            });
        }
        Ok(merged)
    }

    /// The writable (upper) directory of a container, whose changes `layer::diff` turns into a layer.
    pub fn container_upper(&self, id: &str) -> Result<PathBuf, SnapshotError> {
        Ok(self.container_dir(id)?.join("upper"))
    }

    /// Unmounts and removes a container's root file system (missing is fine).
    pub fn remove_container(&self, id: &str) -> Result<(), SnapshotError> {
        let dir = self.container_dir(id)?;
        let merged = dir.join("merged");
        if let Ok(c) = CString::new(merged.as_os_str().as_bytes()) {
            // SAFETY: umount2 with a valid path; EINVAL (not mounted) is fine.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", &dir)(e)),
            _ => Ok(()),
        }
    }

    /// Containers that have a root file system here.
    pub fn containers(&self) -> Result<Vec<String>, SnapshotError> {
        let dir = self.root.join("containers");
        let mut out: Vec<String> = fs::read_dir(&dir)
            .map_err(io_err("reading", &dir))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        Ok(out)
    }
}

static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn bind(src: &Path, dst: &Path) -> io::Result<()> {
    let (s, d) = (cstr(src)?, cstr(dst)?);
    // SAFETY: valid strings; a plain bind mount.
    if unsafe {
        libc::mount(
            s.as_ptr(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

const FSCONFIG_SET_STRING: u32 = 1;
const FSCONFIG_CMD_CREATE: u32 = 6;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;

/// Mounts an overlay with `lowers` (topmost first). The new mount API adds one lower directory
/// at a time ("lowerdir+", Linux 6.8+), so any number of layers fits; older kernels get the
/// classic `lowerdir=a:b:c` option, which is limited to one page.
fn mount_overlay(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> io::Result<()> {
    match mount_overlay_fsconfig(lowers, upper, work, target) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EINVAL)) => {}
        r => return r,
    }
    let lower: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={},index=off",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    if data.len() >= 4096 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} layers do not fit in one overlay mount option on this kernel (Linux 6.8 or later lifts the limit)", lowers.len())));
    }
    let (t, d) = (
        cstr(target)?,
        CString::new(data).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
    );
    // SAFETY: valid strings for an overlay mount.
    if unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            t.as_ptr(),
            c"overlay".as_ptr(),
            0,
            d.as_ptr().cast(),
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn mount_overlay_fsconfig(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> io::Result<()> {
    // SAFETY: fsopen with a valid string; returns a new fd or -1.
    let fs_fd = unsafe {
        libc::syscall(
            libc::SYS_fsopen,
            c"overlay".as_ptr(),
            0x1, /* FSOPEN_CLOEXEC */
        )
    };
    if fs_fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    let fs_fd = unsafe { OwnedFd::from_raw_fd(fs_fd as i32) };
    let set = |key: &std::ffi::CStr, value: &Path| -> io::Result<()> {
        let v = cstr(value)?;
        // SAFETY: fsconfig with valid key/value strings on our fs context fd.
        if unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs_fd.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                v.as_ptr(),
                0,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    for l in lowers {
        set(c"lowerdir+", l)?;
    }
    set(c"upperdir", upper)?;
    set(c"workdir", work)?;
    // SAFETY: fsconfig with a string option.
    if unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs_fd.as_raw_fd(),
            FSCONFIG_SET_STRING,
            c"index".as_ptr(),
            c"off".as_ptr(),
            0,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fsconfig create command.
    if unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs_fd.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<u8>(),
            std::ptr::null::<u8>(),
            0,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fsmount on a created context.
    let mnt = unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs_fd.as_raw_fd(),
            0x1, /* FSMOUNT_CLOEXEC */
            0,
        )
    };
    if mnt < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    let mnt = unsafe { OwnedFd::from_raw_fd(mnt as i32) };
    let t = cstr(target)?;
    // SAFETY: move_mount of our detached mount onto the target path.
    if unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn require_root() {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "overlay mounts need root (CI runs as root)");
    }

    fn chain(n: u8) -> Digest {
        Digest::of(&[n])
    }

    #[test]
    fn three_layer_overlay_with_whiteouts_and_an_opaque_dir() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let s = Snapshots::open(tmp.path()).unwrap();
        let (c1, c2, c3) = (chain(1), chain(2), chain(3));
        // Layer 1: a, d/x, d/y, e/z
        let p = s.prepare(&c1, None).unwrap();
        let d = p.diff_dir();
        fs::write(d.join("a"), "1").unwrap();
        fs::create_dir_all(d.join("d")).unwrap();
        fs::write(d.join("d/x"), "x").unwrap();
        fs::write(d.join("d/y"), "y").unwrap();
        fs::create_dir_all(d.join("e")).unwrap();
        fs::write(d.join("e/z"), "z").unwrap();
        p.commit_as(&c1, 0).unwrap();
        // Layer 2: whiteout a, whiteout d/x, new b
        let p = s.prepare(&c2, Some(&c1)).unwrap();
        let d = p.diff_dir();
        let wh = |path: &Path| {
            let c = cstr(path).unwrap();
            // SAFETY: mknod of an overlay whiteout (char 0/0) at a valid path.
            let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) };
            assert_eq!(r, 0);
        };
        wh(&d.join("a"));
        fs::create_dir_all(d.join("d")).unwrap();
        wh(&d.join("d/x"));
        fs::write(d.join("b"), "2").unwrap();
        p.commit_as(&c2, 0).unwrap();
        // Layer 3: e is opaque (only e/new survives), a comes back
        let p = s.prepare(&c3, Some(&c2)).unwrap();
        let d = p.diff_dir();
        fs::create_dir_all(d.join("e")).unwrap();
        fs::write(d.join("e/new"), "n").unwrap();
        let e = cstr(&d.join("e")).unwrap();
        // SAFETY: setxattr with valid strings and a value buffer of the given length.
        let r = unsafe {
            libc::setxattr(
                e.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        };
        assert_eq!(r, 0);
        fs::write(d.join("a"), "3").unwrap();
        p.commit_as(&c3, 0).unwrap();
        assert_eq!(s.list().unwrap().len(), 3);

        let merged = s
            .mount_container("c1", &[c1.clone(), c2.clone(), c3.clone()])
            .unwrap();
        let names = |p: &Path| {
            let mut v: Vec<String> = fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&merged), ["a", "b", "d", "e"]);
        assert_eq!(fs::read_to_string(merged.join("a")).unwrap(), "3");
        assert_eq!(names(&merged.join("d")), ["y"]);
        assert_eq!(names(&merged.join("e")), ["new"]);
        // Writes go to the upper directory only.
        fs::write(merged.join("b"), "changed").unwrap();
        assert_eq!(
            fs::read_to_string(s.diff_dir(&c2).unwrap().join("b")).unwrap(),
            "2"
        );
        assert_eq!(
            fs::read_to_string(s.container_upper("c1").unwrap().join("b")).unwrap(),
            "changed"
        );
        assert!(s.mount_container("c1", std::slice::from_ref(&c1)).is_err());
        s.remove_container("c1").unwrap();
        assert!(!fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(merged.to_str().unwrap()));
        assert!(s.containers().unwrap().is_empty());
    }

    #[test]
    fn more_layers_than_fit_in_one_mount_option() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let s = Snapshots::open(tmp.path()).unwrap();
        let mut chain_ids = Vec::new();
        for i in 0..120u8 {
            let c = chain(i);
            let p = s.prepare(&c, chain_ids.last()).unwrap();
            fs::write(p.diff_dir().join(format!("f{i}")), [i]).unwrap();
            p.commit_as(&c, 0).unwrap();
            chain_ids.push(c);
        }
        let merged = s.mount_container("many", &chain_ids).unwrap();
        assert_eq!(fs::read_dir(&merged).unwrap().count(), 120);
        s.remove_container("many").unwrap();
    }

    #[test]
    fn interrupted_snapshots_never_appear() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Snapshots::open(tmp.path()).unwrap();
        // A crash mid-layer: a child fills a pending snapshot and dies without cleaning up.
        // SAFETY: the test process forks; the child only prepares, writes and _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let p = s.prepare(&chain(9), None).unwrap();
            fs::write(p.diff_dir().join("half"), "x").unwrap();
            // SAFETY: exiting the child without running destructors, as a crash would.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: reaping our child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            2,
            "the crash left its temporary directory"
        );
        // A live writer's pending snapshot is not swept.
        let live = s.prepare(&chain(8), None).unwrap();
        fs::write(live.diff_dir().join("busy"), "x").unwrap();
        assert!(!s.exists(&chain(9)));
        let s = Snapshots::open(tmp.path()).unwrap();
        assert!(s.list().unwrap().is_empty());
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            2,
            "containers/ and the live writer's directory are left"
        );
        assert!(live.diff_dir().join("busy").exists());
        live.commit_as(&chain(8), 0).unwrap();
        assert!(s.exists(&chain(8)));
        assert!(
            s.prepare(&chain(2), Some(&chain(1))).is_err(),
            "a missing parent is refused"
        );
        assert!(matches!(
            s.mount_container("../x", &[]),
            Err(SnapshotError::InvalidId(_))
        ));
    }
}
