//! The syscall seam: every call that changes the container's mount namespace or kernel
//! state during setup goes through [`Syscall`], so planning is testable without root.
//!
//! Paths named `(root, path)` are resolved inside `root` with openat2(RESOLVE_IN_ROOT):
//! a symlink in the container's file system can never lead a mount or a write outside it.

use std::cell::RefCell;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// What a path inside the root is, when it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Dir,
    Other,
}

/// The operations container setup performs on the kernel.
pub trait Syscall {
    /// Creates every missing directory of `path` inside `root`.
    fn mkdir_all(&self, root: &Path, path: &Path) -> io::Result<()>;
    /// Creates an empty regular file at `path` inside `root` (and its parents) unless something exists there.
    fn create_file(&self, root: &Path, path: &Path) -> io::Result<()>;
    /// What `path` inside `root` is; `None` when it does not exist.
    fn kind(&self, root: &Path, path: &Path) -> io::Result<Option<FileKind>>;
    /// mount(2) onto `path` resolved inside `root`.
    fn mount(
        &self,
        source: Option<&Path>,
        root: &Path,
        path: &Path,
        fstype: Option<&str>,
        flags: u64,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// mount_setattr(2) with AT_RECURSIVE on `path` inside `root`.
    fn mount_setattr(&self, root: &Path, path: &Path, set: u64, clear: u64) -> io::Result<()>;
    /// mknod(2) at `path` inside `root`, then chown to `uid:gid`.
    fn mknod(
        &self,
        root: &Path,
        path: &Path,
        mode: u32,
        dev: u64,
        uid: u32,
        gid: u32,
    ) -> io::Result<()>;
    /// A symlink at `path` inside `root` pointing to `target`; an existing entry is left alone.
    fn symlink(&self, root: &Path, target: &str, path: &Path) -> io::Result<()>;
    /// pivot_root(2) into `new_root` and detach the old root.
    fn pivot_root(&self, new_root: &Path) -> io::Result<()>;
    /// chroot(2) into `new_root`, leaving the working directory at the new root.
    fn chroot(&self, new_root: &Path) -> io::Result<()>;
    fn sethostname(&self, name: &str) -> io::Result<()>;
    fn setdomainname(&self, name: &str) -> io::Result<()>;
    /// Writes `value` to /proc/sys/<key with dots as slashes>.
    fn sysctl(&self, key: &str, value: &str) -> io::Result<()>;
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn cvt(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// openat2(dirfd, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) (the shared
/// implementation in `inroot`, for `Path`s).
pub fn openat2_in_root(dirfd: RawFd, path: &Path, flags: i32) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: callers pass an fd they keep open for the duration of the call.
    let dir = unsafe { std::os::fd::BorrowedFd::borrow_raw(dirfd) };
    inroot::openat2_in_root(dir, &c, flags)
}

fn open_root(root: &Path) -> io::Result<OwnedFd> {
    let c = cstr(root)?;
    // SAFETY: valid C string; open returns a new fd or -1.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `path` made relative (leading `/` dropped) for resolution under a root.
fn relative(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .collect()
}

/// Opens `path` inside `root` with O_PATH.
pub fn open_in_root(root: &Path, path: &Path) -> io::Result<OwnedFd> {
    let rootfd = open_root(root)?;
    let rel = relative(path);
    if rel.as_os_str().is_empty() {
        return Ok(rootfd);
    }
    openat2_in_root(rootfd.as_raw_fd(), &rel, libc::O_PATH)
}

/// The real kernel.
pub struct LinuxSyscall;

impl LinuxSyscall {
    /// The directory `path` inside `root` (resolved safely), created with its parents if missing.
    /// A dangling symlink on the way is followed inside the root and its target created.
    fn ensure_dir(root: &Path, path: &Path) -> io::Result<OwnedFd> {
        let rootfd = open_root(root)?;
        let mut rel = relative(path);
        let mut hops = 0;
        'restart: loop {
            let mut prefix = PathBuf::new();
            let mut cur = open_root(root)?;
            let comps: Vec<_> = rel.components().map(|c| c.as_os_str().to_owned()).collect();
            for (i, name) in comps.iter().enumerate() {
                prefix.push(name);
                match openat2_in_root(
                    rootfd.as_raw_fd(),
                    &prefix,
                    libc::O_PATH | libc::O_DIRECTORY,
                ) {
                    Ok(fd) => cur = fd,
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                        let c = CString::new(name.as_bytes())
                            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
                        // SAFETY: `cur` is an open directory fd and `c` a valid name.
                        let r = unsafe { libc::mkdirat(cur.as_raw_fd(), c.as_ptr(), 0o755) };
                        if r < 0 {
                            let e = io::Error::last_os_error();
                            if e.raw_os_error() != Some(libc::EEXIST) {
                                return Err(e);
                            }
                            // Something is there but does not resolve: a dangling symlink. Continue
                            // from its target, interpreted inside the root as the container would.
                            let target = readlinkat(&cur, &c)?;
                            hops += 1;
                            if hops > 40 {
                                return Err(io::Error::from_raw_os_error(libc::ELOOP));
                            }
                            let base = if target.is_absolute() {
                                PathBuf::new()
                            } else {
                                prefix.parent().map(Path::to_path_buf).unwrap_or_default()
                            };
                            let mut next = base.join(relative(&target));
                            for rest in &comps[i + 1..] {
                                next.push(rest);
                            }
                            rel = next;
                            continue 'restart;
                        }
                        cur = openat2_in_root(
                            rootfd.as_raw_fd(),
                            &prefix,
                            libc::O_PATH | libc::O_DIRECTORY,
                        )?;
                    }
                    Err(e) => return Err(e),
                }
            }
            return Ok(cur);
        }
    }

    /// Splits `path` into its resolved parent directory (created if missing) and final name.
    fn parent_and_name(root: &Path, path: &Path) -> io::Result<(OwnedFd, CString)> {
        let rel = relative(path);
        let name = rel
            .file_name()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let parent = Self::ensure_dir(root, rel.parent().unwrap_or(Path::new("")))?;
        let c = CString::new(name.as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        Ok((parent, c))
    }
}

/// The target of the symlink `name` in directory `dir`.
fn readlinkat(dir: &OwnedFd, name: &CString) -> io::Result<PathBuf> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: dir is an open fd, name a valid string, buf writable for its length.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(PathBuf::from(
        <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(buf),
    ))
}

fn proc_fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

impl Syscall for LinuxSyscall {
    fn mkdir_all(&self, root: &Path, path: &Path) -> io::Result<()> {
        Self::ensure_dir(root, path).map(drop)
    }

    fn create_file(&self, root: &Path, path: &Path) -> io::Result<()> {
        if self.kind(root, path)?.is_some() {
            return Ok(());
        }
        let (parent, name) = Self::parent_and_name(root, path)?;
        // SAFETY: `parent` is an open directory fd, `name` a valid single component.
        let fd = unsafe {
            libc::openat(
                parent.as_raw_fd(),
                name.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                0o644,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fd; File closes it.
        drop(unsafe { File::from_raw_fd(fd) });
        Ok(())
    }

    fn kind(&self, root: &Path, path: &Path) -> io::Result<Option<FileKind>> {
        match open_in_root(root, path) {
            Ok(fd) => {
                let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
                // SAFETY: fd is open; st is a writable stat buffer.
                if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: fstat succeeded and filled the buffer.
                let st = unsafe { st.assume_init() };
                Ok(Some(if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    FileKind::Dir
                } else {
                    FileKind::Other
                }))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn mount(
        &self,
        source: Option<&Path>,
        root: &Path,
        path: &Path,
        fstype: Option<&str>,
        flags: u64,
        data: Option<&str>,
    ) -> io::Result<()> {
        let target = open_in_root(root, path)?;
        // Mount onto the file we resolved, by its fd. After pivot_root a container may have no
        // /proc; there the root is the container's own, so the plain path cannot leave it.
        let target_path = if root == Path::new("/") && !Path::new("/proc/self/fd").exists() {
            cstr(&Path::new("/").join(relative(path)))?
        } else {
            cstr(&proc_fd_path(&target))?
        };
        let mut flags = flags;
        if flags & (libc::MS_REMOUNT | libc::MS_BIND) == (libc::MS_REMOUNT | libc::MS_BIND) {
            // A bind remount replaces the mount's flags: keep the restrictions it already has
            // (nosuid, nodev, noexec, atime), which a user namespace may not drop anyway.
            let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
            // SAFETY: target is an open fd; st is a writable statvfs.
            if unsafe { libc::fstatvfs(target.as_raw_fd(), st.as_mut_ptr()) } == 0 {
                // SAFETY: fstatvfs succeeded.
                let f = unsafe { st.assume_init() }.f_flag;
                for (st_flag, ms_flag) in [
                    (libc::ST_NOSUID, libc::MS_NOSUID),
                    (libc::ST_NODEV, libc::MS_NODEV),
                    (libc::ST_NOEXEC, libc::MS_NOEXEC),
                    (libc::ST_NOATIME, libc::MS_NOATIME),
                    (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
                    (libc::ST_RELATIME, libc::MS_RELATIME),
                ] {
                    if f & st_flag != 0 {
                        flags |= ms_flag;
                    }
                }
            }
        }
        let src = source.map(cstr).transpose()?;
        let fst = fstype
            .map(|s| CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL)))
            .transpose()?;
        let dat = data
            .map(|s| CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL)))
            .transpose()?;
        // SAFETY: every pointer is either null or a valid NUL-terminated string alive for the call.
        let r = unsafe {
            libc::mount(
                src.as_ref().map_or(c"none".as_ptr(), |s| s.as_ptr()),
                target_path.as_ptr(),
                fst.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
                flags as libc::c_ulong,
                dat.as_ref().map_or(std::ptr::null(), |s| s.as_ptr().cast()),
            )
        };
        cvt(r as libc::c_long).map(drop)
    }

    fn mount_setattr(&self, root: &Path, path: &Path, set: u64, clear: u64) -> io::Result<()> {
        #[repr(C)]
        struct MountAttr {
            attr_set: u64,
            attr_clr: u64,
            propagation: u64,
            userns_fd: u64,
        }
        let target = open_in_root(root, path)?;
        let attr = MountAttr {
            attr_set: set,
            attr_clr: clear,
            propagation: 0,
            userns_fd: 0,
        };
        const AT_RECURSIVE: libc::c_int = 0x8000;
        // SAFETY: target is an open fd, attr is a valid mount_attr of the size passed.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                target.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH | AT_RECURSIVE,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        cvt(r).map(drop)
    }

    fn mknod(
        &self,
        root: &Path,
        path: &Path,
        mode: u32,
        dev: u64,
        uid: u32,
        gid: u32,
    ) -> io::Result<()> {
        let (parent, name) = Self::parent_and_name(root, path)?;
        // SAFETY: parent is an open dir fd, name a valid component; unlinking a stale entry first.
        unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), 0) };
        // SAFETY: as above.
        if unsafe { libc::mknodat(parent.as_raw_fd(), name.as_ptr(), mode, dev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // mknod applies our umask: set the mode the spec asked for.
        // SAFETY: as above.
        if unsafe { libc::fchmodat(parent.as_raw_fd(), name.as_ptr(), mode & 0o7777, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above; AT_SYMLINK_NOFOLLOW so a racing symlink is not followed.
        if unsafe {
            libc::fchownat(
                parent.as_raw_fd(),
                name.as_ptr(),
                uid,
                gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn symlink(&self, root: &Path, target: &str, path: &Path) -> io::Result<()> {
        let (parent, name) = Self::parent_and_name(root, path)?;
        let t = CString::new(target).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: parent is an open dir fd; both strings valid.
        if unsafe { libc::symlinkat(t.as_ptr(), parent.as_raw_fd(), name.as_ptr()) } < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(e);
            }
        }
        Ok(())
    }

    fn pivot_root(&self, new_root: &Path) -> io::Result<()> {
        let old_root = open_root(Path::new("/"))?;
        let fd = open_root(new_root)?;
        // SAFETY: fd is an open directory.
        cvt(unsafe { libc::fchdir(fd.as_raw_fd()) } as libc::c_long)?;
        // SAFETY: "." strings are valid; pivot_root with both args "." stacks the old root under the new.
        cvt(unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) })?;
        // Our working directory still names the new root: step onto the old one explicitly, or
        // what follows would make the container's own mounts slaves.
        // SAFETY: old_root is an open directory fd.
        cvt(unsafe { libc::fchdir(old_root.as_raw_fd()) } as libc::c_long)?;
        // Keep the old root's unmount from propagating to the host, then detach it.
        // SAFETY: valid strings; flags only.
        cvt(unsafe {
            libc::mount(
                c"".as_ptr(),
                c".".as_ptr(),
                std::ptr::null(),
                libc::MS_SLAVE | libc::MS_REC,
                std::ptr::null(),
            )
        } as libc::c_long)?;
        // SAFETY: valid string.
        cvt(unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) } as libc::c_long)?;
        // SAFETY: valid string.
        cvt(unsafe { libc::chdir(c"/".as_ptr()) } as libc::c_long)?;
        Ok(())
    }

    fn chroot(&self, new_root: &Path) -> io::Result<()> {
        let fd = open_root(new_root)?;
        // SAFETY: fd is an open directory.
        cvt(unsafe { libc::fchdir(fd.as_raw_fd()) } as libc::c_long)?;
        // SAFETY: valid strings.
        cvt(unsafe { libc::chroot(c".".as_ptr()) } as libc::c_long)?;
        // SAFETY: valid string.
        cvt(unsafe { libc::chdir(c"/".as_ptr()) } as libc::c_long).map(drop)
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        // SAFETY: pointer and length describe `name`'s bytes.
        cvt(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } as libc::c_long)
            .map(drop)
    }

    fn setdomainname(&self, name: &str) -> io::Result<()> {
        // SAFETY: pointer and length describe `name`'s bytes.
        cvt(unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) } as libc::c_long)
            .map(drop)
    }

    fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let rel = key.replace('.', "/");
        let fd = openat2_in_root(
            open_root(Path::new("/proc/sys"))?.as_raw_fd(),
            Path::new(&rel),
            libc::O_WRONLY,
        )?;
        let mut f = File::from(fd);
        io::Write::write_all(&mut f, value.as_bytes())
    }
}

/// A test double that records each call as a line of text and performs nothing.
#[derive(Default)]
pub struct RecordingSyscall {
    pub calls: RefCell<Vec<String>>,
    /// Paths (inside the root) that report as existing directories or files.
    pub existing: Vec<(PathBuf, FileKind)>,
}

impl RecordingSyscall {
    fn push(&self, s: String) {
        self.calls.borrow_mut().push(s);
    }
}

fn show(root: &Path, path: &Path) -> String {
    Path::new(root).join(relative(path)).display().to_string()
}

impl Syscall for RecordingSyscall {
    fn mkdir_all(&self, root: &Path, path: &Path) -> io::Result<()> {
        self.push(format!("mkdir {}", show(root, path)));
        Ok(())
    }
    fn create_file(&self, root: &Path, path: &Path) -> io::Result<()> {
        self.push(format!("touch {}", show(root, path)));
        Ok(())
    }
    fn kind(&self, _root: &Path, path: &Path) -> io::Result<Option<FileKind>> {
        Ok(self
            .existing
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, k)| *k))
    }
    fn mount(
        &self,
        source: Option<&Path>,
        root: &Path,
        path: &Path,
        fstype: Option<&str>,
        flags: u64,
        data: Option<&str>,
    ) -> io::Result<()> {
        self.push(format!(
            "mount {} {} type={} flags={} data={}",
            source.map_or("none".into(), |s| s.display().to_string()),
            show(root, path),
            fstype.unwrap_or("-"),
            crate::mounts::flag_names(flags),
            data.unwrap_or("-")
        ));
        Ok(())
    }
    fn mount_setattr(&self, root: &Path, path: &Path, set: u64, clear: u64) -> io::Result<()> {
        self.push(format!(
            "setattr {} set={set:#x} clear={clear:#x}",
            show(root, path)
        ));
        Ok(())
    }
    fn mknod(
        &self,
        root: &Path,
        path: &Path,
        mode: u32,
        dev: u64,
        uid: u32,
        gid: u32,
    ) -> io::Result<()> {
        self.push(format!(
            "mknod {} {mode:o} {}:{} {uid}:{gid}",
            show(root, path),
            libc::major(dev),
            libc::minor(dev)
        ));
        Ok(())
    }
    fn symlink(&self, root: &Path, target: &str, path: &Path) -> io::Result<()> {
        self.push(format!("symlink {} -> {target}", show(root, path)));
        Ok(())
    }
    fn pivot_root(&self, new_root: &Path) -> io::Result<()> {
        self.push(format!("pivot_root {}", new_root.display()));
        Ok(())
    }
    fn chroot(&self, new_root: &Path) -> io::Result<()> {
        self.push(format!("chroot {}", new_root.display()));
        Ok(())
    }
    fn sethostname(&self, name: &str) -> io::Result<()> {
        self.push(format!("hostname {name}"));
        Ok(())
    }
    fn setdomainname(&self, name: &str) -> io::Result<()> {
        self.push(format!("domainname {name}"));
        Ok(())
    }
    fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        self.push(format!("sysctl {key}={value}"));
        Ok(())
    }
}
