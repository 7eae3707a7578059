//! What the engine does inside a container's own network namespace before it starts: bring
//! the loopback interface up (Docker's `none` network has a working `lo`).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// Sets `lo` up in the network namespace of `pid`. Runs on a thread of its own, which enters
/// the namespace (setns of a network namespace is per thread) and ends.
pub fn loopback_up(pid: i32) -> io::Result<()> {
    let ns = File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::spawn(move || -> io::Result<()> {
        // SAFETY: setns with a namespace fd we opened; only this thread changes namespace.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: socket(2) with constant arguments.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned fd, nothing else owns it.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        set_up(&sock, "lo")
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// Sets the interface `name` up, through `sock` (a socket in the namespace concerned).
pub fn set_up(sock: &impl AsFd, name: &str) -> io::Result<()> {
    // SAFETY: an all-zero ifreq is valid storage.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    let fd = sock.as_fd().as_raw_fd();
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we pass.
    unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
