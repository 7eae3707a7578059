//! The runtime's own log (`--log`, `--log-format text|json`), as runc writes it: one line per
//! message; containerd reads the JSON form to report why a runtime call failed.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

struct Sink {
    path: Option<PathBuf>,
    json: bool,
}

static SINK: Mutex<Sink> = Mutex::new(Sink {
    path: None,
    json: false,
});

/// Sends later messages to `path` (stderr when `None`), as JSON lines when `json`.
pub fn init(path: Option<PathBuf>, json: bool) {
    if let Ok(mut s) = SINK.lock() {
        *s = Sink { path, json };
    }
}

pub fn warn(msg: &str) {
    write("warning", msg);
}

pub fn error(msg: &str) {
    write("error", msg);
}

fn write(level: &str, msg: &str) {
    let Ok(s) = SINK.lock() else { return };
    let time = crate::state::rfc3339_now();
    let line = if s.json {
        format!(
            "{}\n",
            serde_json::json!({ "level": level, "msg": msg, "time": time })
        )
    } else {
        format!("time=\"{time}\" level={level} msg={msg:?}\n")
    };
    match &s.path {
        Some(p) => {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
            {
                let _ = f.write_all(line.as_bytes());
            }
        }
        None => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

/// Whether `BERTH_TRACE` is set: then [`trace`] marks the phases of a start on stderr.
fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("BERTH_TRACE").is_some())
}

/// With `BERTH_TRACE` set, writes `berth-trace <monotonic seconds> <pid> <phase>` to stderr:
/// the phases of a container start, from the runtime and from the container's init, on one
/// clock (bench/runtime-start.sh --breakdown sums them). One write(2), no lock, no allocation
/// beyond the line: it is also called between fork and exec.
pub fn trace(phase: &str) {
    if !tracing() {
        return;
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec; getpid has no preconditions.
    let pid = unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        libc::getpid()
    };
    let line = format!(
        "berth-trace {}.{:09} {pid} {phase}\n",
        ts.tv_sec, ts.tv_nsec
    );
    // SAFETY: writing a valid buffer to fd 2.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
}
