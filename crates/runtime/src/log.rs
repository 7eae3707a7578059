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
