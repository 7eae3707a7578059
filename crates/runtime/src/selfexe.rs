//! Protection against a container overwriting the runtime binary (CVE-2019-5736).
//!
//! Every process that enters a container runs berth's code until it executes the
//! container's program, and a container can reach that binary through /proc/<pid>/exe
//! (or make its entrypoint `/proc/self/exe`). So before entering any container, berth
//! re-executes itself from a sealed, anonymous copy (memfd): what the container can reach
//! is a copy that cannot be written, never the file on the host.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

const SEALS: libc::c_int =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// True when the running binary is a sealed memfd copy.
pub fn is_sealed_copy() -> bool {
    let Ok(f) = File::open("/proc/self/exe") else {
        return false;
    };
    // SAFETY: fcntl on an open fd.
    let seals = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & SEALS == SEALS
}

/// Re-executes the current program (same argv and environment) from a sealed memfd copy,
/// unless it already runs from one. Returns only on error.
pub fn ensure_sealed_copy() -> io::Result<()> {
    if is_sealed_copy() {
        return Ok(());
    }
    let mut src = File::open("/proc/self/exe")?;
    // SAFETY: valid C string name and flags; returns a new fd or -1.
    let fd = unsafe {
        libc::memfd_create(
            c"berth".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd owned by nobody else.
    let mut copy = unsafe { File::from_raw_fd(fd) };
    io::copy(&mut src, &mut copy)?;
    // SAFETY: fcntl on our memfd.
    if unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let args: Vec<std::ffi::CString> = std::env::args_os()
        .map(|a| std::ffi::CString::new(std::os::unix::ffi::OsStringExt::into_vec(a)))
        .collect::<Result<_, _>>()
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    extern "C" {
        static environ: *const *const libc::c_char;
    }
    // SAFETY: argv is a NULL-terminated array of valid strings that outlive the call;
    // environ is the process environment maintained by libc.
    unsafe { libc::fexecve(copy.as_raw_fd(), argv.as_ptr(), environ) };
    Err(io::Error::last_os_error())
}
