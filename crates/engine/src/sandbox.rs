//! Sandboxes: network, IPC and UTS namespaces pinned by bind mounts under the exec root, so
//! they exist without any process and containers can join them and come and go — how the
//! node agent will run a Kubernetes pod.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil;

/// The namespaces a sandbox pins, by their /proc/<pid>/ns names.
pub const KINDS: [&str; 3] = ["net", "ipc", "uts"];

/// A sandbox's record (`<root>/sandboxes/<name>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    /// Its name.
    #[serde(rename = "Name")]
    pub name: String,
    /// The hostname of its UTS namespace.
    #[serde(rename = "Hostname")]
    pub hostname: String,
    /// RFC 3339.
    #[serde(rename = "Created")]
    pub created: String,
    /// Where its namespaces are pinned: `<dir>/net`, `<dir>/ipc`, `<dir>/uts`.
    #[serde(rename = "Path")]
    pub path: PathBuf,
    /// Its network attachments (the engine's record of them), when it is on networks.
    #[serde(rename = "Network", default, skip_serializing_if = "Option::is_none")]
    pub net: Option<serde_json::Value>,
}

/// The sandboxes of one engine.
pub struct Sandboxes {
    records: PathBuf,
    pins: PathBuf,
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::other("path contains NUL"))
}

fn last_err<T>(what: &str) -> io::Result<T> {
    let e = io::Error::last_os_error();
    Err(io::Error::new(e.kind(), format!("{what}: {e}")))
}

impl Sandboxes {
    /// Records under `<root>/sandboxes`, pins under `<exec_root>/sandboxes`.
    pub fn open(root: &Path, exec_root: &Path) -> io::Result<Sandboxes> {
        let s = Sandboxes {
            records: root.join("sandboxes"),
            pins: exec_root.join("sandboxes"),
        };
        fs::create_dir_all(&s.records)?;
        fs::create_dir_all(&s.pins)?;
        Ok(s)
    }

    /// Every sandbox, pinning again those whose pins went (a reboot clears the exec root).
    pub fn list(&self) -> Vec<Sandbox> {
        let mut v: Vec<Sandbox> = fs::read_dir(&self.records)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| serde_json::from_slice(&fs::read(e.path()).ok()?).ok())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// One sandbox, with its pins in place.
    pub fn get(&self, name: &str) -> io::Result<Sandbox> {
        check_name(name)?;
        let bytes = fs::read(self.records.join(format!("{name}.json"))).map_err(|_| {
            io::Error::new(io::ErrorKind::NotFound, format!("no such sandbox: {name}"))
        })?;
        let s: Sandbox = serde_json::from_slice(&bytes).map_err(io::Error::other)?;
        if !Self::pinned(&s.path) {
            self.pin(&s.path, &s.hostname)?;
        }
        Ok(s)
    }

    fn pinned(dir: &Path) -> bool {
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        KINDS.iter().all(|k| {
            let p = dir.join(k);
            mounts
                .lines()
                .any(|l| l.split(' ').nth(4) == Some(&*p.to_string_lossy()))
        })
    }

    /// Creates a sandbox: new network (loopback up), IPC and UTS (`hostname`) namespaces,
    /// pinned. Nothing is left behind on failure.
    pub fn create(&self, name: &str, hostname: &str) -> io::Result<Sandbox> {
        check_name(name)?;
        let record = self.records.join(format!("{name}.json"));
        if record.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("sandbox {name} already exists"),
            ));
        }
        let dir = self.pins.join(name);
        let s = Sandbox {
            name: name.into(),
            hostname: if hostname.is_empty() {
                name.into()
            } else {
                hostname.into()
            },
            created: timefmt::now(),
            path: dir.clone(),
            net: None,
        };
        self.pin(&dir, &s.hostname)?;
        let json = serde_json::to_vec_pretty(&s).map_err(io::Error::other)?;
        if let Err(e) = fsutil::write_atomic(&record, &json, 0o600) {
            let _ = Self::unpin(&dir);
            return Err(e);
        }
        Ok(s)
    }

    /// Makes the namespaces on a thread of their own (unshare of these three is per thread)
    /// and bind-mounts them onto `<dir>/{net,ipc,uts}`.
    fn pin(&self, dir: &Path, hostname: &str) -> io::Result<()> {
        pin(dir, &KINDS, Some(hostname))
    }

    fn unpin(dir: &Path) -> io::Result<()> {
        unpin(dir)
    }

    /// Records a sandbox again (after the engine attached it).
    pub fn save(&self, s: &Sandbox) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(s).map_err(io::Error::other)?;
        fsutil::write_atomic(&self.records.join(format!("{}.json", s.name)), &json, 0o600)
    }

    /// Removes a sandbox (the engine checks that no container uses it).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        let s = self.get_record(name)?;
        fs::remove_file(self.records.join(format!("{name}.json")))?;
        Self::unpin(&s.path)
    }

    fn get_record(&self, name: &str) -> io::Result<Sandbox> {
        check_name(name)?;
        let bytes = fs::read(self.records.join(format!("{name}.json"))).map_err(|_| {
            io::Error::new(io::ErrorKind::NotFound, format!("no such sandbox: {name}"))
        })?;
        serde_json::from_slice(&bytes).map_err(io::Error::other)
    }
}

/// Makes new namespaces of `kinds` (of net, ipc, uts) on a thread of its own (unshare of
/// these is per thread), sets the hostname (uts) and brings loopback up (net), and
/// bind-mounts each onto `<dir>/<kind>`, where they stay without any process. Nothing is left
/// on failure.
pub fn pin(dir: &Path, kinds: &[&'static str], hostname: Option<&str>) -> io::Result<()> {
    let _ = unpin(dir);
    fs::create_dir_all(dir)?;
    for k in kinds {
        fs::File::create(dir.join(k))?;
    }
    let dir2 = dir.to_path_buf();
    let hostname = hostname.map(String::from);
    let kinds2: Vec<&'static str> = kinds.to_vec();
    let r = std::thread::spawn(move || -> io::Result<()> {
        let mut flags = 0;
        for k in &kinds2 {
            flags |= match *k {
                "net" => libc::CLONE_NEWNET,
                "ipc" => libc::CLONE_NEWIPC,
                "uts" => libc::CLONE_NEWUTS,
                _ => return Err(io::Error::other(format!("cannot pin a {k} namespace"))),
            };
        }
        // SAFETY: unshare of net, ipc and uts namespaces affects only this thread.
        if unsafe { libc::unshare(flags) } != 0 {
            return last_err("unshare");
        }
        if let (Some(h), true) = (&hostname, kinds2.contains(&"uts")) {
            // SAFETY: a valid buffer and its length.
            if unsafe { libc::sethostname(h.as_ptr().cast(), h.len()) } != 0 {
                return last_err("sethostname");
            }
        }
        if kinds2.contains(&"net") {
            loopback_up_here()?;
        }
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        for k in &kinds2 {
            let src = cpath(Path::new(&format!(
                "/proc/{}/task/{tid}/ns/{k}",
                std::process::id()
            )))?;
            let dst = cpath(&dir2.join(k))?;
            // SAFETY: mount with valid C strings.
            if unsafe {
                libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            } != 0
            {
                return last_err(&format!("pinning the {k} namespace"));
            }
        }
        Ok(())
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?;
    if r.is_err() {
        let _ = unpin(dir);
    }
    r
}

/// Unmounts what `pin` mounted under `dir` and removes it (missing is fine).
pub fn unpin(dir: &Path) -> io::Result<()> {
    for k in KINDS {
        let p = dir.join(k);
        if !p.exists() {
            continue;
        }
        if let Ok(c) = cpath(&p) {
            // SAFETY: umount2 with a valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A sandbox name is a path component of the engine's own choosing: never `..` or a path.
fn check_name(name: &str) -> io::Result<()> {
    if crate::volumes::valid_name(name) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid sandbox name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"),
        ))
    }
}

/// Sets `lo` up in the calling thread's network namespace.
fn loopback_up_here() -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return last_err("socket");
    }
    // SAFETY: the kernel just returned fd.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    crate::netns::set_up(&sock, "lo")
}
