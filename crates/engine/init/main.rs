//! berth-init: the `--init` process, pid 1 of a container. It runs the command as its child,
//! forwards every signal it gets to it, reaps all zombies, and exits with the command's status
//! (128+n when a signal n ended it). Built as a static binary with std only (no crates), since
//! it runs inside images that have no C library.

use std::ffi::CString;
use std::os::raw::{c_char, c_int};

#[repr(C)]
struct SigSet([u64; 16]);

extern "C" {
    fn fork() -> c_int;
    fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    fn kill(pid: c_int, sig: c_int) -> c_int;
    fn sigfillset(set: *mut SigSet) -> c_int;
    fn sigemptyset(set: *mut SigSet) -> c_int;
    fn sigprocmask(how: c_int, set: *const SigSet, old: *mut SigSet) -> c_int;
    fn sigwait(set: *const SigSet, sig: *mut c_int) -> c_int;
    fn _exit(code: c_int) -> !;
    fn __errno_location() -> *mut c_int;
}

const SIG_SETMASK: c_int = 2;
const SIGCHLD: c_int = 17;
const WNOHANG: c_int = 1;
const ENOENT: c_int = 2;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--") {
        args.remove(0);
    }
    if args.is_empty() {
        eprintln!("berth-init: usage: berth-init -- command [arg…]");
        std::process::exit(125);
    }
    let cargs: Vec<CString> = match args.iter().map(|a| CString::new(a.as_bytes())).collect() {
        Ok(v) => v,
        Err(_) => {
            eprintln!("berth-init: an argument contains a NUL byte");
            std::process::exit(125);
        }
    };
    let mut argv: Vec<*const c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut all = SigSet([0; 16]);
    let mut none = SigSet([0; 16]);
    // SAFETY: libc calls with valid pointers to sigsets we own; fork in a single-threaded
    // process; the child only calls async-signal-safe functions before execvp or _exit.
    unsafe {
        sigfillset(&mut all);
        sigemptyset(&mut none);
        sigprocmask(SIG_SETMASK, &all, std::ptr::null_mut());
        let child = fork();
        if child < 0 {
            eprintln!("berth-init: fork: {}", std::io::Error::last_os_error());
            std::process::exit(125);
        }
        if child == 0 {
            sigprocmask(SIG_SETMASK, &none, std::ptr::null_mut());
            execvp(argv[0], argv.as_ptr());
            let err = *__errno_location();
            let msg = format!(
                "berth-init: exec {}: {}\n",
                args[0],
                std::io::Error::from_raw_os_error(err)
            );
            let _ = std::io::Write::write_all(&mut std::io::stderr(), msg.as_bytes());
            _exit(if err == ENOENT { 127 } else { 126 });
        }
        loop {
            let mut sig: c_int = 0;
            if sigwait(&all, &mut sig) != 0 {
                continue;
            }
            if sig != SIGCHLD {
                kill(child, sig);
                continue;
            }
            loop {
                let mut status: c_int = 0;
                let pid = waitpid(-1, &mut status, WNOHANG);
                if pid <= 0 {
                    break;
                }
                if pid == child {
                    let code = if status & 0x7f == 0 {
                        (status >> 8) & 0xff
                    } else {
                        128 + (status & 0x7f)
                    };
                    std::process::exit(code);
                }
            }
        }
    }
}
