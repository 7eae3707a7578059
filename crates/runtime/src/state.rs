//! A container's persisted state under the runtime root: `<root>/<id>/state.json`, written
//! atomically (temp file + rename), and the status derived from the live process.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::cgroups::Cgroup;

/// The OCI status of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    /// Frozen by `pause` (runc's extension of the OCI statuses).
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// The state the OCI runtime spec defines (`berth runtime state` prints this).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pid: i32,
    pub bundle: PathBuf,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
    /// RFC 3339 creation time (runc prints it too; tools such as containerd read it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub created: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
}

fn is_zero(p: &i32) -> bool {
    *p == 0
}

/// Everything the runtime keeps about a container between commands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub pid: i32,
    /// Start time of `pid` in clock ticks since boot, to tell it from a reused pid.
    pub start_time: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub cgroup: Cgroup,
    /// The spec the container was created with (hooks, process defaults for exec, seccomp).
    pub spec: Spec,
    /// Set when the container has no mount namespace of its own: its mounts, to take down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_mounts: Option<crate::sharedmnt::SharedMounts>,
}

pub const STATE_FILE: &str = "state.json";
pub const EXEC_FIFO: &str = "exec.fifo";

impl Record {
    pub fn load(dir: &Path) -> Result<Record, crate::Error> {
        let path = dir.join(STATE_FILE);
        let text = fs::read_to_string(&path)
            .map_err(|e| crate::Error::io(format!("reading {}", path.display()), e))?;
        serde_json::from_str(&text)
            .map_err(|e| crate::Error::State(format!("{}: {e}", path.display())))
    }

    pub fn save(&self, dir: &Path) -> Result<(), crate::Error> {
        let tmp = dir.join(".state.json.tmp");
        let json = serde_json::to_vec(self).map_err(|e| crate::Error::State(e.to_string()))?;
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            // No fsync: runtime state lives on tmpfs (/run) and means nothing after a reboot;
            // the rename alone makes each write all-or-nothing for readers and crashes.
            f.write_all(&json)?;
            fs::rename(&tmp, dir.join(STATE_FILE))
        };
        write()
            .map_err(|e| crate::Error::io(format!("writing {}", dir.join(STATE_FILE).display()), e))
    }

    /// The live status: stopped when the process is gone (or a zombie, or a reused pid).
    pub fn status(&self, dir: &Path) -> Status {
        if self.pid <= 0 || !process_alive(self.pid, self.start_time) {
            return Status::Stopped;
        }
        if dir.join(EXEC_FIFO).exists() {
            Status::Created
        } else if self.cgroup.is_frozen() {
            Status::Paused
        } else {
            Status::Running
        }
    }

    /// The state poststart hooks get: `running`, with the process's pid. They run once the
    /// process has executed the container's program (start's exec observed), so that is what
    /// it was; a program that has already exited must not make them see `stopped`.
    pub fn poststart_state(&self, dir: &Path) -> OciState {
        OciState {
            status: Status::Running,
            pid: self.pid,
            ..self.oci_state(dir)
        }
    }

    pub fn oci_state(&self, dir: &Path) -> OciState {
        let status = self.status(dir);
        OciState {
            oci_version: crate::OCI_VERSION.into(),
            id: self.id.clone(),
            status,
            pid: if status == Status::Stopped {
                0
            } else {
                self.pid
            },
            bundle: self.bundle.clone(),
            annotations: self.spec.annotations().clone().unwrap_or_default(),
            created: self.created.clone(),
            owner: String::new(),
        }
    }
}

/// Field 22 (starttime) and field 3 (state) of /proc/<pid>/stat.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

pub fn process_alive(pid: i32, start_time: u64) -> bool {
    match proc_stat(pid) {
        Some((state, start)) => {
            state != 'Z' && state != 'X' && (start_time == 0 || start == start_time)
        }
        None => false,
    }
}

/// `now` as RFC 3339 UTC with nanoseconds.
pub fn rfc3339_now() -> String {
    timefmt::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_start_time_guards_reuse() {
        let pid = std::process::id() as i32;
        let (_, start) = proc_stat(pid).unwrap();
        assert!(process_alive(pid, start));
        assert!(!process_alive(pid, start + 1));
    }
}
