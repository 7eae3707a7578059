//! Protection against a container overwriting the runtime binary (CVE-2019-5736).
//!
//! Every process that enters a container runs berth's code until it executes the
//! container's program, and a container can reach that binary through /proc/<pid>/exe (or
//! make its entrypoint `/proc/self/exe`). So before entering any container, berth makes sure
//! the binary it runs cannot be written through that reference:
//!
//! - already on a read-only mount: nothing to do;
//! - otherwise it re-executes itself through a read-only bind mount of its own binary, made in
//!   a private (slave) mount namespace so the host never sees it, then returns to the host's
//!   mount namespace. `/proc/self/exe` keeps pointing at the read-only mount, so reopening it
//!   for writing fails with EROFS whatever the container's privileges;
//! - where that is impossible, it re-executes from a sealed memfd copy (slower: it copies the
//!   whole binary).

use std::env;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const SEALS: libc::c_int =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// Carries "<host mount ns fd>,<cwd fd>" across the re-exec.
const RETURN_ENV: &str = "_BERTH_SELFEXE_RETURN";

/// True when the running binary is a sealed memfd copy.
pub fn is_sealed_copy() -> bool {
    let Ok(f) = File::open("/proc/self/exe") else {
        return false;
    };
    // SAFETY: fcntl on an open fd.
    let seals = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & SEALS == SEALS
}

/// True when the running binary sits on a read-only mount.
pub fn is_read_only() -> bool {
    let Ok(f) = File::open("/proc/self/exe") else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: f is open; st is a writable statvfs buffer.
    if unsafe { libc::fstatvfs(f.as_raw_fd(), st.as_mut_ptr()) } < 0 {
        return false;
    }
    // SAFETY: fstatvfs succeeded and filled st.
    unsafe { st.assume_init() }.f_flag & libc::ST_RDONLY != 0
}

/// Makes sure the running binary cannot be written through /proc/self/exe, re-executing
/// (same argv and environment) when needed. Returns once protected.
pub fn ensure_protected() -> io::Result<()> {
    if let Some(fds) = env::var_os(RETURN_ENV) {
        env::remove_var(RETURN_ENV);
        let r = return_to_host(&fds.to_string_lossy());
        crate::log::trace("re-executed from the read-only binary");
        return r;
    }
    if is_read_only() || is_sealed_copy() {
        return Ok(());
    }
    crate::log::trace("re-executing from a read-only bind");
    match reexec_read_only() {
        Ok(never) => match never {},
        Err(_) => ensure_sealed_copy(),
    }
}

fn cvt(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// After the re-exec: back into the host's mount namespace and working directory.
fn return_to_host(fds: &str) -> io::Result<()> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("{RETURN_ENV}={fds:?}"));
    let (mnt, cwd) = fds.split_once(',').ok_or_else(bad)?;
    let mnt: i32 = mnt.parse().map_err(|_| bad())?;
    let cwd: i32 = cwd.parse().map_err(|_| bad())?;
    // SAFETY: both fds were opened (without CLOEXEC) by our previous image for this purpose and
    // are owned by nothing else here.
    let (mnt, cwd) = unsafe { (File::from_raw_fd(mnt), File::from_raw_fd(cwd)) };
    // SAFETY: setns on a mount namespace fd; fchdir on a directory fd.
    cvt(unsafe { libc::setns(mnt.as_raw_fd(), libc::CLONE_NEWNS) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fchdir(cwd.as_raw_fd()) })
}

/// Our own argv, as C strings.
fn own_args() -> io::Result<Vec<CString>> {
    env::args_os()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// execve (by path) or fexecve (by fd) of ourselves with the same argv and environment;
/// returns only the error.
fn exec_self(target: Result<&Path, i32>) -> io::Error {
    let args = match own_args() {
        Ok(a) => a,
        Err(e) => return e,
    };
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    extern "C" {
        static environ: *const *const libc::c_char;
    }
    match target {
        Ok(path) => {
            let Ok(cpath) = CString::new(path.as_os_str().as_bytes()) else {
                return io::Error::from_raw_os_error(libc::EINVAL);
            };
            // SAFETY: argv is a NULL-terminated array of valid strings that outlive the call;
            // environ is the process environment maintained by libc.
            unsafe { libc::execve(cpath.as_ptr(), argv.as_ptr(), environ) };
        }
        // SAFETY: as above, with an fd we own.
        Err(fd) => unsafe {
            libc::fexecve(fd, argv.as_ptr(), environ);
        },
    }
    io::Error::last_os_error()
}

fn reexec_read_only() -> io::Result<std::convert::Infallible> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    if exe.to_string_lossy().ends_with(" (deleted)") {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    // Not close-on-exec: the next image uses them to come back.
    let mnt = File::open("/proc/self/ns/mnt")?;
    let cwd = File::open(".")?;
    let flags = |f: &File| {
        // SAFETY: fcntl on an open fd.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFD, 0) }
    };
    cvt(flags(&mnt))?;
    cvt(flags(&cwd))?;
    let c = CString::new(exe.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let attempt = || -> io::Result<io::Error> {
        // SAFETY: unshare and mount with valid strings; all within our new private namespace.
        unsafe {
            cvt(libc::unshare(libc::CLONE_NEWNS))?;
            // Slave: host mounts still reach us, ours never reach the host.
            cvt(libc::mount(
                c"".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ))?;
            cvt(libc::mount(
                c.as_ptr(),
                c.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ))?;
            cvt(libc::mount(
                c"".as_ptr(),
                c.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                std::ptr::null(),
            ))?;
        }
        env::set_var(
            RETURN_ENV,
            format!("{},{}", mnt.as_raw_fd(), cwd.as_raw_fd()),
        );
        Ok(exec_self(Ok(&exe)))
    };
    let err = match attempt() {
        Ok(e) | Err(e) => e,
    };
    // Failed somewhere: back to where we were, then let the caller fall back.
    env::remove_var(RETURN_ENV);
    // SAFETY: setns on our saved namespace fd (a no-op if we never left); fchdir on a directory fd.
    unsafe {
        libc::setns(mnt.as_raw_fd(), libc::CLONE_NEWNS);
        libc::fchdir(cwd.as_raw_fd());
    }
    Err(err)
}

/// Re-executes the current program (same argv and environment) from a sealed memfd copy,
/// unless it already runs from one. Returns only on error, or at once when already sealed.
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
    cvt(unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, SEALS) })?;
    Err(exec_self(Err(copy.into_raw_fd())))
}
