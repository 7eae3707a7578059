//! Opening a path inside a root directory so that it can never leave it: openat2(2) with
//! RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS. The runtime resolves container root file systems
//! with it, the image crate layer snapshots; this is the one implementation.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

/// openat2(root, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS): `path` (and every symlink
/// met on the way, absolute ones included) is resolved as if `root` were `/`, so it cannot leave
/// `root`. With O_NOFOLLOW a final symlink is not followed.
pub fn openat2_in_root(root: BorrowedFd<'_>, path: &CStr, flags: i32) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    // With RESOLVE_IN_ROOT the kernel answers EAGAIN when a rename or mount anywhere raced a `..`
    // (from a symlink target) during resolution: try again a few times.
    let mut tries = 0;
    loop {
        // SAFETY: `path` is NUL-terminated and `how` a properly sized open_how; both outlive
        // the call, and the kernel returns a new fd or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        match owned(fd) {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && tries < 64 => tries += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "openat2(2) is not available: berth needs Linux 5.6 or later",
                ))
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn paths_and_symlinks_stay_inside_and_magic_links_are_refused() {
        let dir = std::env::temp_dir().join(format!("inroot-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/passwd"), "inside").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc/passwd", dir.join("up")).unwrap();
        let root = std::fs::File::open(&dir).unwrap();
        for path in [
            c"etc/passwd",
            c"/etc/passwd",
            c"../../etc/passwd",
            c"abs",
            c"up",
        ] {
            let fd = openat2_in_root(root.as_fd(), path, libc::O_RDONLY).unwrap();
            let text = std::io::read_to_string(std::fs::File::from(fd)).unwrap();
            assert_eq!(text, "inside", "{path:?} left the root");
        }
        // A magic link (here /proc/self/exe, from the real root) is refused, not followed.
        let slash = std::fs::File::open("/").unwrap();
        let err = openat2_in_root(slash.as_fd(), c"proc/self/exe", libc::O_PATH).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
