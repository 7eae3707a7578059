//! Containers without a mount namespace of their own: they share the runtime's, or join one by
//! path (`linux.namespaces[]` of type `mount` with a `path`). Their mounts are made in a
//! namespace that outlives them, so the runtime must take them down itself.
//!
//! The init bind-mounts the rootfs onto itself, makes that mount private (nothing it mounts
//! propagates to the namespace's other mounts), mounts everything under it and enters it with
//! chroot(2). Every mount stacked on the rootfs path that was not there before create is the
//! container's; detaching it (MNT_DETACH) takes the whole tree under it along. That is done on
//! a failed create and at delete, from inside the namespace.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

/// What delete needs to find and take down a container's mounts in a shared namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedMounts {
    /// The namespace file the container joined; `None`: the runtime's own at create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns_path: Option<PathBuf>,
    /// The namespace's identity (nsfs device and inode), to tell it from a reused path.
    pub ns_dev: u64,
    pub ns_ino: u64,
    /// The rootfs, a canonical path in that namespace.
    pub root: PathBuf,
    /// Mount IDs already stacked on `root` before create: not the container's, kept.
    pub before: Vec<u64>,
}

impl SharedMounts {
    /// Records the namespace and what is mounted on `root` there now, before anything is made.
    /// `own_mountinfo`: the runtime's mount table, already read, used when the namespace is
    /// the runtime's own.
    pub fn prepare(
        ns_path: Option<&Path>,
        root: &Path,
        own_mountinfo: &str,
    ) -> Result<SharedMounts, Error> {
        let what = |p: &Path| format!("linux.namespaces mount: {}", p.display());
        let (ns_dev, ns_ino) = match ns_path {
            Some(p) => identity(p).map_err(|e| Error::io(what(p), e))?,
            None => identity(Path::new("/proc/self/ns/mnt"))
                .map_err(|e| Error::io("reading /proc/self/ns/mnt", e))?,
        };
        let mut m = SharedMounts {
            ns_path: ns_path.map(Path::to_path_buf),
            ns_dev,
            ns_ino,
            root: root.to_path_buf(),
            before: Vec::new(),
        };
        let ours = identity(Path::new("/proc/self/ns/mnt"))
            .map_err(|e| Error::io("reading /proc/self/ns/mnt", e))?
            == (ns_dev, ns_ino);
        let info = if ours {
            own_mountinfo.to_owned()
        } else {
            m.in_namespace(|| std::fs::read_to_string("/proc/self/mountinfo"))
                .map_err(|e| {
                    let p = m
                        .ns_path
                        .as_deref()
                        .unwrap_or(Path::new("/proc/self/ns/mnt"));
                    Error::io(format!("{}: reading its mounts", what(p)), e)
                })?
        };
        m.before = stacked_on(&info, root);
        Ok(m)
    }

    /// Detaches every mount the container stacked on its root (and so everything under it).
    /// A namespace that is gone took the mounts with it.
    pub fn release(&self) -> Result<(), Error> {
        let root = self.root.clone();
        let before = self.before.clone();
        let detach = move || -> io::Result<String> {
            let c = std::ffi::CString::new(root.as_os_str().as_encoded_bytes())
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            // Bounded: each round takes one mount off the stack, and a stack is short.
            for _ in 0..64 {
                let info = std::fs::read_to_string("/proc/self/mountinfo")?;
                if stacked_on(&info, &root)
                    .iter()
                    .all(|id| before.contains(id))
                {
                    return Ok(String::new());
                }
                // SAFETY: valid C string; flags only.
                if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) }
                    < 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            Err(io::Error::other("mounts keep appearing on the root"))
        };
        match self.in_namespace(detach) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(
                format!(
                    "detaching the container's mounts on {}",
                    self.root.display()
                ),
                e,
            )),
        }
    }

    /// Runs `f` in the namespace: here when it is ours, else in a child that joins it (setns of
    /// a mount namespace needs a process that shares no filesystem state, and must not move the
    /// runtime itself). NotFound when the namespace is gone.
    fn in_namespace(&self, f: impl FnOnce() -> io::Result<String>) -> io::Result<String> {
        if identity(Path::new("/proc/self/ns/mnt"))? == (self.ns_dev, self.ns_ino) {
            return f();
        }
        let Some(path) = &self.ns_path else {
            // The runtime's namespace at create, and this is another one: it is not reachable.
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the runtime's mount namespace at create is not this one",
            ));
        };
        let ns = match File::open(path) {
            Ok(f)
                if f.metadata().map(|m| (m.dev(), m.ino())).ok()
                    == Some((self.ns_dev, self.ns_ino)) =>
            {
                f
            }
            Ok(_) => return Err(io::ErrorKind::NotFound.into()),
            Err(e) => return Err(e),
        };
        let mut fds = [0; 2];
        // SAFETY: fds is a writable array of two ints.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fds from pipe2, owned by these Files only.
        let (mut rx, tx) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        // SAFETY: the runtime is single-threaded when it manages such containers (the command
        // line); the child joins, runs `f`, reports and exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            drop(rx);
            let mut tx = tx;
            // SAFETY: setns on an open mount namespace fd.
            let r = if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) } < 0 {
                Err(io::Error::last_os_error())
            } else {
                f()
            };
            let msg = match r {
                Ok(s) => format!("ok\n{s}"),
                Err(e) => format!("err\n{}", e.raw_os_error().unwrap_or(libc::EIO)),
            };
            let _ = tx.write_all(msg.as_bytes());
            // SAFETY: ending the child without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        drop(tx);
        let mut out = String::new();
        let read = rx.read_to_string(&mut out);
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        read?;
        match out.split_once('\n') {
            Some(("ok", rest)) => Ok(rest.to_string()),
            Some(("err", code)) => Err(io::Error::from_raw_os_error(
                code.trim().parse().unwrap_or(libc::EIO),
            )),
            _ => Err(io::Error::other(
                "the namespace helper ended without a report",
            )),
        }
    }
}

/// (device, inode) of a namespace file.
fn identity(path: &Path) -> io::Result<(u64, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// IDs of the mounts whose mount point is `root`, bottom first.
pub fn stacked_on(mountinfo: &str, root: &Path) -> Vec<u64> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let id = f.next()?.parse().ok()?;
            let point = f.nth(3)?;
            (Path::new(&crate::cgroups::unescape_mountinfo(point)) == root).then_some(id)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stack_on_a_path_is_read_from_mountinfo() {
        let info = "\
22 1 8:1 / / rw shared:1 - ext4 /dev/sda1 rw
40 22 0:50 / /var/lib/x\\040y rw shared:2 - overlay overlay rw
41 40 8:1 /var/lib/x\\040y /var/lib/x\\040y rw - ext4 /dev/sda1 rw
42 41 0:51 / /var/lib/x\\040y/proc rw - proc proc rw
";
        assert_eq!(stacked_on(info, Path::new("/var/lib/x y")), [40, 41]);
        assert_eq!(stacked_on(info, Path::new("/var/lib")), Vec::<u64>::new());
    }
}
