//! The root filesystem: OCI mounts, devices, masked and read-only paths, pivot_root —
//! planned from the spec as a list of [`Op`]s (pure, unit-tested) and applied through the
//! [`Syscall`] seam.

use std::path::{Path, PathBuf};

use libc::{
    MS_BIND, MS_DIRSYNC, MS_LAZYTIME, MS_MANDLOCK, MS_NOATIME, MS_NODEV, MS_NODIRATIME, MS_NOEXEC,
    MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_RELATIME, MS_REMOUNT, MS_SHARED, MS_SILENT,
    MS_SLAVE, MS_STRICTATIME, MS_SYNCHRONOUS, MS_UNBINDABLE,
};
use oci_spec::runtime::{LinuxDeviceType, Spec};

use crate::syscall::{FileKind, Syscall};

const MS_NOSYMFOLLOW: u64 = 256;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const MOUNT_ATTR_NOATIME: u64 = 0x10;
const MOUNT_ATTR_NODIRATIME: u64 = 0x80;
const MOUNT_ATTR_NOSYMFOLLOW: u64 = 0x0020_0000;

/// Mount options split the way mount(2) wants them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Options {
    pub flags: u64,
    pub clear: u64,
    pub propagation: Vec<u64>,
    /// Recursive attributes for mount_setattr(2): (set, clear).
    pub rec_set: u64,
    pub rec_clear: u64,
    pub data: Vec<String>,
}

impl Options {
    pub fn is_bind(&self) -> bool {
        self.flags & MS_BIND != 0
    }
}

/// The propagation flag for a `rootfsPropagation` value or a propagation mount option.
pub fn propagation_flag(name: &str) -> Option<u64> {
    Some(match name {
        "private" => MS_PRIVATE,
        "rprivate" => MS_PRIVATE | MS_REC,
        "shared" => MS_SHARED,
        "rshared" => MS_SHARED | MS_REC,
        "slave" => MS_SLAVE,
        "rslave" => MS_SLAVE | MS_REC,
        "unbindable" => MS_UNBINDABLE,
        "runbindable" => MS_UNBINDABLE | MS_REC,
        _ => return None,
    })
}

/// Parses fstab-style options; unknown ones are file-system data (`mode=755`, `size=64m`).
pub fn parse_options(opts: &[String]) -> Options {
    let mut o = Options::default();
    for opt in opts {
        let (set, clear): (u64, u64) = match opt.as_str() {
            "ro" => (MS_RDONLY, 0),
            "rw" => (0, MS_RDONLY),
            "bind" => (MS_BIND, 0),
            "rbind" => (MS_BIND | MS_REC, 0),
            "nosuid" => (MS_NOSUID, 0),
            "suid" => (0, MS_NOSUID),
            "nodev" => (MS_NODEV, 0),
            "dev" => (0, MS_NODEV),
            "noexec" => (MS_NOEXEC, 0),
            "exec" => (0, MS_NOEXEC),
            "sync" => (MS_SYNCHRONOUS, 0),
            "async" => (0, MS_SYNCHRONOUS),
            "dirsync" => (MS_DIRSYNC, 0),
            "remount" => (MS_REMOUNT, 0),
            "mand" => (MS_MANDLOCK, 0),
            "nomand" => (0, MS_MANDLOCK),
            "atime" => (0, MS_NOATIME),
            "noatime" => (MS_NOATIME, 0),
            "diratime" => (0, MS_NODIRATIME),
            "nodiratime" => (MS_NODIRATIME, 0),
            "relatime" => (MS_RELATIME, 0),
            "norelatime" => (0, MS_RELATIME),
            "strictatime" => (MS_STRICTATIME, 0),
            "nostrictatime" => (0, MS_STRICTATIME),
            "lazytime" => (MS_LAZYTIME, 0),
            "nolazytime" => (0, MS_LAZYTIME),
            "silent" => (MS_SILENT, 0),
            "loud" => (0, MS_SILENT),
            "nosymfollow" => (MS_NOSYMFOLLOW, 0),
            "symfollow" => (0, MS_NOSYMFOLLOW),
            "tmpcopyup" => (0, 0),
            _ => {
                if let Some(p) = propagation_flag(opt) {
                    o.propagation.push(p);
                    continue;
                }
                let rec = match opt.as_str() {
                    "rro" => Some((MOUNT_ATTR_RDONLY, true)),
                    "rrw" => Some((MOUNT_ATTR_RDONLY, false)),
                    "rnosuid" => Some((MOUNT_ATTR_NOSUID, true)),
                    "rsuid" => Some((MOUNT_ATTR_NOSUID, false)),
                    "rnodev" => Some((MOUNT_ATTR_NODEV, true)),
                    "rdev" => Some((MOUNT_ATTR_NODEV, false)),
                    "rnoexec" => Some((MOUNT_ATTR_NOEXEC, true)),
                    "rexec" => Some((MOUNT_ATTR_NOEXEC, false)),
                    "rnoatime" => Some((MOUNT_ATTR_NOATIME, true)),
                    "rnodiratime" => Some((MOUNT_ATTR_NODIRATIME, true)),
                    "rdiratime" => Some((MOUNT_ATTR_NODIRATIME, false)),
                    "rnosymfollow" => Some((MOUNT_ATTR_NOSYMFOLLOW, true)),
                    "rsymfollow" => Some((MOUNT_ATTR_NOSYMFOLLOW, false)),
                    _ => None,
                };
                match rec {
                    Some((bit, true)) => o.rec_set |= bit,
                    Some((bit, false)) => o.rec_clear |= bit,
                    None => o.data.push(opt.clone()),
                }
                continue;
            }
        };
        o.flags = (o.flags & !clear) | set;
        o.clear = (o.clear & !set) | clear;
    }
    o
}

/// Names of the MS_* bits in `flags`, for messages and test expectations.
pub fn flag_names(flags: u64) -> String {
    const NAMES: &[(u64, &str)] = &[
        (MS_RDONLY, "ro"),
        (MS_NOSUID, "nosuid"),
        (MS_NODEV, "nodev"),
        (MS_NOEXEC, "noexec"),
        (MS_SYNCHRONOUS, "sync"),
        (MS_REMOUNT, "remount"),
        (MS_MANDLOCK, "mand"),
        (MS_DIRSYNC, "dirsync"),
        (MS_NOSYMFOLLOW, "nosymfollow"),
        (MS_NOATIME, "noatime"),
        (MS_NODIRATIME, "nodiratime"),
        (MS_BIND, "bind"),
        (MS_REC, "rec"),
        (MS_SILENT, "silent"),
        (MS_UNBINDABLE, "unbindable"),
        (MS_PRIVATE, "private"),
        (MS_SLAVE, "slave"),
        (MS_SHARED, "shared"),
        (MS_RELATIME, "relatime"),
        (MS_STRICTATIME, "strictatime"),
        (MS_LAZYTIME, "lazytime"),
    ];
    let v: Vec<&str> = NAMES
        .iter()
        .filter(|(b, _)| flags & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if v.is_empty() {
        "0".into()
    } else {
        v.join(",")
    }
}

/// One step of root filesystem setup. Paths are inside the root unless named `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Sets propagation of a host-side mount (not resolved in the root).
    Propagation {
        path: PathBuf,
        flags: u64,
    },
    /// Bind-mounts the root onto itself so it can be pivoted into.
    BindRoot,
    /// Makes the root's bind mount and everything under it private: in a mount namespace the
    /// container shares, what it mounts must not propagate to its owner's mounts.
    PrivateRoot,
    Mkdir {
        path: PathBuf,
    },
    /// Creates a file or directory to mount over, matching what `source` is.
    MountPoint {
        source: PathBuf,
        path: PathBuf,
    },
    Mount {
        source: Option<PathBuf>,
        path: PathBuf,
        fstype: Option<String>,
        flags: u64,
        data: Option<String>,
        index: usize,
    },
    /// A sysfs mount; falls back to a recursive bind of the host's /sys when sysfs cannot be mounted.
    Sysfs {
        path: PathBuf,
        flags: u64,
        index: usize,
    },
    Setattr {
        path: PathBuf,
        set: u64,
        clear: u64,
        index: usize,
    },
    Device {
        path: PathBuf,
        kind: char,
        major: u64,
        minor: u64,
        mode: u32,
        uid: u32,
        gid: u32,
        bind: bool,
    },
    Symlink {
        target: String,
        path: PathBuf,
    },
    Pivot,
    /// Without a mount namespace of its own the root is entered by chroot(2): pivot_root would
    /// move the root of every process in the namespace.
    Chroot,
    Mask {
        path: PathBuf,
    },
    Readonly {
        path: PathBuf,
    },
    /// Remounts the (pivoted) root read-only.
    RootReadonly,
}

/// What the plan needs to know about the host and the container besides the spec.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub bundle: PathBuf,
    /// The container has its own user namespace: devices are bind-mounted, not created.
    pub userns: bool,
    /// cgroup v1 hierarchies as (directory name under /sys/fs/cgroup, mount options); empty on v2.
    pub cgroup_v1: Vec<(String, String)>,
    /// Without a cgroup namespace of its own the container must not see the host's hierarchy:
    /// its own cgroup directories, as (directory name under the mount, host directory), are
    /// bind-mounted instead (one entry named "" on cgroup v2). `None`: it has a cgroup namespace.
    pub cgroup_own: Option<Vec<(String, PathBuf)>>,
    /// The host mount point under which the rootfs lies.
    pub rootfs_parent_mount: PathBuf,
    /// The container has no mount namespace of its own: it shares the runtime's or joins one by
    /// path. Its mounts then go on the rootfs's bind mount in that namespace, which delete detaches.
    pub shared_mount_ns: bool,
}

fn err(index: usize, msg: impl std::fmt::Display) -> crate::Error {
    crate::Error::Spec(format!("mounts[{index}]: {msg}"))
}

/// Setup steps before (and including) pivot_root.
pub fn plan(spec: &Spec, ctx: &Context) -> Result<Vec<Op>, crate::Error> {
    let mut ops = Vec::new();
    let linux = spec.linux().as_ref();
    let root_prop = linux
        .and_then(|l| l.rootfs_propagation().as_deref())
        .and_then(propagation_flag);
    // What we inherited becomes a slave of the host (or what the spec asks: "rshared" keeps
    // the peer groups, for mounts that must propagate both ways, as Kubernetes' Bidirectional).
    if ctx.shared_mount_ns {
        if root_prop.is_some() {
            return Err(crate::Error::Spec(
                "linux.rootfsPropagation: the container has no mount namespace of its own, and \
                 changing propagation there would change the mounts of the namespace's owner"
                    .into(),
            ));
        }
        // The namespace's propagation is its owner's: left as it is.
        ops.push(Op::BindRoot);
        ops.push(Op::PrivateRoot);
    } else {
        let host_prop = root_prop.unwrap_or(MS_SLAVE | MS_REC);
        ops.push(Op::Propagation {
            path: "/".into(),
            flags: host_prop,
        });
        if host_prop & MS_SHARED != 0 {
            // The mount holding the rootfs must not pass our mounts on to the host (and
            // pivot_root refuses a shared parent).
            ops.push(Op::Propagation {
                path: ctx.rootfs_parent_mount.clone(),
                flags: MS_PRIVATE,
            });
        }
        ops.push(Op::BindRoot);
    }

    let mut dev_mounted = false;
    for (index, m) in spec.mounts().iter().flatten().enumerate() {
        let dest = m.destination().clone();
        let typ = m.typ().as_deref().unwrap_or("");
        let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
        if dest == Path::new("/dev") {
            dev_mounted = true;
        }
        let data = (!opts.data.is_empty()).then(|| opts.data.join(","));
        if typ == "bind" || opts.is_bind() {
            let src = m
                .source()
                .clone()
                .ok_or_else(|| err(index, "bind mount without source"))?;
            let src = if src.is_absolute() {
                src
            } else {
                ctx.bundle.join(src)
            };
            ops.push(Op::MountPoint {
                source: src.clone(),
                path: dest.clone(),
            });
            ops.push(Op::Mount {
                source: Some(src),
                path: dest.clone(),
                fstype: None,
                flags: MS_BIND | (opts.flags & MS_REC),
                data: None,
                index,
            });
            let extra = opts.flags & !(MS_BIND | MS_REC | MS_REMOUNT);
            if extra != 0 {
                ops.push(Op::Mount {
                    source: None,
                    path: dest.clone(),
                    fstype: None,
                    flags: MS_BIND | MS_REMOUNT | extra,
                    data: None,
                    index,
                });
            }
        } else if typ == "cgroup" || typ == "cgroup2" {
            let flags = opts.flags & !MS_RDONLY;
            let v2 = ctx.cgroup_v1.is_empty() || typ == "cgroup2";
            ops.push(Op::Mkdir { path: dest.clone() });
            if !v2 {
                // v1: a tmpfs holding one directory per hierarchy.
                ops.push(cgroup_tmpfs(&dest, flags, index));
            }
            match &ctx.cgroup_own {
                // No cgroup namespace: only the container's own cgroup directories, bound.
                Some(own) => {
                    for (name, host) in own.iter().filter(|(n, _)| v2 == n.is_empty()) {
                        let sub = if name.is_empty() {
                            dest.clone()
                        } else {
                            dest.join(name)
                        };
                        ops.push(Op::Mkdir { path: sub.clone() });
                        ops.push(Op::Mount {
                            source: Some(host.clone()),
                            path: sub.clone(),
                            fstype: None,
                            flags: MS_BIND | MS_REC,
                            data: None,
                            index,
                        });
                        ops.push(Op::Mount {
                            source: None,
                            path: sub,
                            fstype: None,
                            flags: MS_BIND | MS_REMOUNT | opts.flags,
                            data: None,
                            index,
                        });
                    }
                }
                None if v2 => ops.push(Op::Mount {
                    source: Some("cgroup2".into()),
                    path: dest.clone(),
                    fstype: Some("cgroup2".into()),
                    flags: opts.flags,
                    data,
                    index,
                }),
                None => {
                    for (name, options) in &ctx.cgroup_v1 {
                        let sub = dest.join(name);
                        ops.push(Op::Mkdir { path: sub.clone() });
                        ops.push(Op::Mount {
                            source: Some("cgroup".into()),
                            path: sub,
                            fstype: Some("cgroup".into()),
                            flags: opts.flags,
                            data: Some(options.clone()),
                            index,
                        });
                    }
                }
            }
            if !v2 && opts.flags & MS_RDONLY != 0 {
                ops.push(Op::Mount {
                    source: None,
                    path: dest.clone(),
                    fstype: None,
                    flags: MS_REMOUNT | MS_BIND | flags | MS_RDONLY,
                    data: None,
                    index,
                });
            }
        } else {
            if typ.is_empty() {
                return Err(err(index, "type is missing (and it is not a bind mount)"));
            }
            ops.push(Op::Mkdir { path: dest.clone() });
            if typ == "sysfs" {
                ops.push(Op::Sysfs {
                    path: dest.clone(),
                    flags: opts.flags,
                    index,
                });
            } else {
                let source = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
                ops.push(Op::Mount {
                    source: Some(source),
                    path: dest.clone(),
                    fstype: Some(typ.to_string()),
                    flags: opts.flags,
                    data,
                    index,
                });
            }
        }
        for p in &opts.propagation {
            ops.push(Op::Mount {
                source: None,
                path: dest.clone(),
                fstype: None,
                flags: *p,
                data: None,
                index,
            });
        }
        if opts.rec_set | opts.rec_clear != 0 {
            ops.push(Op::Setattr {
                path: dest.clone(),
                set: opts.rec_set,
                clear: opts.rec_clear,
                index,
            });
        }
    }

    // Devices: the defaults every container gets, then the spec's own.
    let mut devices: Vec<Op> = DEFAULT_DEVICES
        .iter()
        .map(|(path, major, minor)| Op::Device {
            path: path.into(),
            kind: 'c',
            major: *major,
            minor: *minor,
            mode: 0o666,
            uid: 0,
            gid: 0,
            bind: ctx.userns,
        })
        .collect();
    for (i, d) in linux
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => 'c',
            LinuxDeviceType::B => 'b',
            LinuxDeviceType::P => 'p',
            LinuxDeviceType::A => {
                return Err(crate::Error::Spec(format!(
                    "linux.devices[{i}].type: \"a\" is not a device node type"
                )))
            }
        };
        let op = Op::Device {
            path: d.path().clone(),
            kind,
            major: d.major() as u64,
            minor: d.minor() as u64,
            mode: d.file_mode().unwrap_or(0o666),
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
            bind: ctx.userns,
        };
        devices.retain(|x| !matches!(x, Op::Device { path, .. } if path == d.path()));
        devices.push(op);
    }
    let _ = dev_mounted;
    ops.extend(devices);
    for (target, path) in DEV_SYMLINKS {
        ops.push(Op::Symlink {
            target: target.to_string(),
            path: path.into(),
        });
    }
    ops.push(if ctx.shared_mount_ns {
        Op::Chroot
    } else {
        Op::Pivot
    });
    Ok(ops)
}

/// The tmpfs that holds the cgroup v1 hierarchies at a cgroup mount's destination.
fn cgroup_tmpfs(dest: &Path, flags: u64, index: usize) -> Op {
    Op::Mount {
        source: Some("tmpfs".into()),
        path: dest.to_path_buf(),
        fstype: Some("tmpfs".into()),
        flags,
        data: Some("mode=755".into()),
        index,
    }
}

/// Setup steps after pivot_root: masked and read-only paths, read-only root, root propagation.
pub fn plan_after_pivot(spec: &Spec) -> Vec<Op> {
    let mut ops = Vec::new();
    if let Some(linux) = spec.linux() {
        for p in linux.masked_paths().iter().flatten() {
            ops.push(Op::Mask { path: p.into() });
        }
        for p in linux.readonly_paths().iter().flatten() {
            ops.push(Op::Readonly { path: p.into() });
        }
        if let Some(flags) = linux
            .rootfs_propagation()
            .as_deref()
            .and_then(propagation_flag)
        {
            ops.push(Op::Propagation {
                path: "/".into(),
                flags,
            });
        }
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        ops.push(Op::RootReadonly);
    }
    ops
}

const DEFAULT_DEVICES: &[(&str, u64, u64)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

const DEV_SYMLINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
    ("pts/ptmx", "/dev/ptmx"),
];

/// Where an op failed, for the error message.
fn describe(op: &Op) -> String {
    match op {
        Op::Mount { index, path, .. }
        | Op::Sysfs { index, path, .. }
        | Op::Setattr { index, path, .. } => {
            format!("mounts[{index}] ({})", path.display())
        }
        Op::Device { path, .. } => format!("device {}", path.display()),
        Op::Mask { path } => format!("maskedPaths {}", path.display()),
        Op::Readonly { path } => format!("readonlyPaths {}", path.display()),
        Op::Symlink { path, .. } | Op::Mkdir { path } | Op::MountPoint { path, .. } => {
            format!("creating {}", path.display())
        }
        Op::Propagation { path, .. } => format!("propagation of {}", path.display()),
        Op::BindRoot => "binding the root file system".into(),
        Op::PrivateRoot => "making the root's mounts private".into(),
        Op::Pivot => "pivot_root".into(),
        Op::Chroot => "chroot".into(),
        Op::RootReadonly => "root.readonly".into(),
    }
}

/// Applies `ops` with `root` as the container's root directory (the rootfs before pivot, `/` after).
pub fn apply(sys: &dyn Syscall, root: &Path, ops: &[Op]) -> Result<(), crate::Error> {
    for op in ops {
        apply_one(sys, root, op)
            .map_err(|e| crate::Error::Setup(format!("{}: {e}", describe(op))))?;
    }
    Ok(())
}

fn apply_one(sys: &dyn Syscall, root: &Path, op: &Op) -> std::io::Result<()> {
    let slash = Path::new("/");
    match op {
        Op::Propagation { path, flags } => sys.mount(None, slash, path, None, *flags, None),
        Op::BindRoot => sys.mount(Some(root), slash, root, None, MS_BIND | MS_REC, None),
        Op::PrivateRoot => sys.mount(None, slash, root, None, MS_PRIVATE | MS_REC, None),
        Op::Mkdir { path } => sys.mkdir_all(root, path),
        Op::MountPoint { source, path } => {
            if std::fs::metadata(source)
                .map(|m| m.is_dir())
                .unwrap_or(true)
            {
                sys.mkdir_all(root, path)
            } else {
                sys.create_file(root, path)
            }
        }
        Op::Mount {
            source,
            path,
            fstype,
            flags,
            data,
            ..
        } => sys.mount(
            source.as_deref(),
            root,
            path,
            fstype.as_deref(),
            *flags,
            data.as_deref(),
        ),
        Op::Sysfs { path, flags, .. } => match sys.mount(
            Some(Path::new("sysfs")),
            root,
            path,
            Some("sysfs"),
            *flags,
            None,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                sys.mount(
                    Some(Path::new("/sys")),
                    root,
                    path,
                    None,
                    MS_BIND | MS_REC,
                    None,
                )?;
                sys.mount(None, root, path, None, MS_BIND | MS_REMOUNT | *flags, None)
            }
            r => r,
        },
        Op::Setattr {
            path, set, clear, ..
        } => sys.mount_setattr(root, path, *set, *clear),
        Op::Device {
            path,
            kind,
            major,
            minor,
            mode,
            uid,
            gid,
            bind,
        } => {
            if *bind {
                sys.create_file(root, path)?;
                sys.mount(Some(path), root, path, None, MS_BIND, None)
            } else {
                let fmt = match kind {
                    'b' => libc::S_IFBLK,
                    'p' => libc::S_IFIFO,
                    _ => libc::S_IFCHR,
                };
                sys.mknod(
                    root,
                    path,
                    fmt | (mode & 0o7777),
                    libc::makedev(*major as u32, *minor as u32),
                    *uid,
                    *gid,
                )
            }
        }
        Op::Symlink { target, path } => sys.symlink(root, target, path),
        Op::Pivot => sys.pivot_root(root),
        Op::Chroot => sys.chroot(root),
        Op::Mask { path } => match sys.kind(root, path)? {
            None => Ok(()),
            Some(FileKind::Dir) => sys.mount(
                Some(Path::new("tmpfs")),
                root,
                path,
                Some("tmpfs"),
                MS_RDONLY,
                Some("size=0"),
            ),
            Some(FileKind::Other) => sys.mount(
                Some(Path::new("/dev/null")),
                root,
                path,
                None,
                MS_BIND,
                None,
            ),
        },
        Op::Readonly { path } => {
            if sys.kind(root, path)?.is_none() {
                return Ok(());
            }
            sys.mount(
                Some(&root.join(path.strip_prefix("/").unwrap_or(path))),
                root,
                path,
                None,
                MS_BIND | MS_REC,
                None,
            )?;
            sys.mount(
                None,
                root,
                path,
                None,
                MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                None,
            )
        }
        Op::RootReadonly => sys.mount(
            None,
            root,
            slash,
            None,
            MS_BIND | MS_REMOUNT | MS_RDONLY,
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::RecordingSyscall;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let cases: &[(&[&str], u64, &[u64], &str)] = &[
            (
                &["nosuid", "noexec", "nodev", "mode=755", "size=65536k"],
                MS_NOSUID | MS_NOEXEC | MS_NODEV,
                &[],
                "mode=755,size=65536k",
            ),
            (
                &["rbind", "ro", "rprivate"],
                MS_BIND | MS_REC | MS_RDONLY,
                &[MS_PRIVATE | MS_REC],
                "",
            ),
            (&["ro", "rw"], 0, &[], ""),
            (
                &["newinstance", "ptmxmode=0666", "gid=5"],
                0,
                &[],
                "newinstance,ptmxmode=0666,gid=5",
            ),
        ];
        for (opts, flags, prop, data) in cases {
            let o = parse_options(&opts.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(o.flags, *flags, "{opts:?}");
            assert_eq!(o.propagation, *prop, "{opts:?}");
            assert_eq!(o.data.join(","), *data, "{opts:?}");
        }
        let o = parse_options(&["rro".into(), "rnosuid".into()]);
        assert_eq!(
            (o.rec_set, o.rec_clear),
            (MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0)
        );
    }

    #[test]
    fn in_a_shared_mount_namespace_the_root_is_private_and_chrooted_into() {
        let s = spec(
            r#"{"ociVersion":"1.2.0","root":{"path":"rootfs"},
            "mounts":[{"destination":"/proc","type":"proc","source":"proc"}]}"#,
        );
        let ctx = Context {
            bundle: "/b".into(),
            rootfs_parent_mount: "/".into(),
            shared_mount_ns: true,
            ..Context::default()
        };
        let sys = RecordingSyscall::default();
        apply(&sys, Path::new("/b/rootfs"), &plan(&s, &ctx).unwrap()).unwrap();
        let got = sys.calls.borrow();
        // The namespace's own propagation is never touched; the root's bind is made private
        // before anything is mounted under it, and entered by chroot.
        assert_eq!(
            got[..3],
            [
                "mount /b/rootfs /b/rootfs type=- flags=bind,rec data=-",
                "mount none /b/rootfs type=- flags=rec,private data=-",
                "mkdir /b/rootfs/proc",
            ]
        );
        assert_eq!(got.last().unwrap(), "chroot /b/rootfs");
        assert!(!got
            .iter()
            .any(|c| c.contains("pivot_root") || c.contains(" / type")));
        let s = spec(
            r#"{"ociVersion":"1.2.0","root":{"path":"rootfs"},"linux":{"rootfsPropagation":"rslave"}}"#,
        );
        let e = plan(&s, &ctx).unwrap_err().to_string();
        assert!(e.contains("linux.rootfsPropagation"), "{e}");
    }

    #[test]
    fn spec_becomes_ordered_syscalls() {
        let s = spec(
            r#"{"ociVersion":"1.2.0","root":{"path":"rootfs","readonly":true},
            "mounts":[
              {"destination":"/proc","type":"proc","source":"proc"},
              {"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","strictatime","mode=755","size=65536k"]},
              {"destination":"/data","type":"bind","source":"/srv/data","options":["rbind","ro","rslave"]},
              {"destination":"/sys/fs/cgroup","type":"cgroup","source":"cgroup","options":["nosuid","noexec","nodev","relatime","ro"]}
            ],
            "linux":{"maskedPaths":["/proc/kcore","/proc/acpi"],"readonlyPaths":["/proc/sys"],
              "devices":[{"path":"/dev/fuse","type":"c","major":10,"minor":229,"fileMode":438}]}}"#,
        );
        let ctx = Context {
            bundle: "/b".into(),
            userns: false,
            cgroup_v1: vec![("memory".into(), "memory".into())],
            cgroup_own: None,
            rootfs_parent_mount: "/".into(),
            shared_mount_ns: false,
        };
        let sys = RecordingSyscall {
            existing: vec![
                ("/proc/kcore".into(), FileKind::Other),
                ("/proc/sys".into(), FileKind::Dir),
            ],
            ..Default::default()
        };
        apply(&sys, Path::new("/b/rootfs"), &plan(&s, &ctx).unwrap()).unwrap();
        apply(&sys, Path::new("/"), &plan_after_pivot(&s)).unwrap();
        let want = [
            "mount none / type=- flags=rec,slave data=-",
            "mount /b/rootfs /b/rootfs type=- flags=bind,rec data=-",
            "mkdir /b/rootfs/proc",
            "mount proc /b/rootfs/proc type=proc flags=0 data=-",
            "mkdir /b/rootfs/dev",
            "mount tmpfs /b/rootfs/dev type=tmpfs flags=nosuid,strictatime data=mode=755,size=65536k",
            "mkdir /b/rootfs/data",
            "mount /srv/data /b/rootfs/data type=- flags=bind,rec data=-",
            "mount none /b/rootfs/data type=- flags=ro,remount,bind data=-",
            "mount none /b/rootfs/data type=- flags=rec,slave data=-",
            "mkdir /b/rootfs/sys/fs/cgroup",
            "mount tmpfs /b/rootfs/sys/fs/cgroup type=tmpfs flags=nosuid,nodev,noexec,relatime data=mode=755",
            "mkdir /b/rootfs/sys/fs/cgroup/memory",
            "mount cgroup /b/rootfs/sys/fs/cgroup/memory type=cgroup flags=ro,nosuid,nodev,noexec,relatime data=memory",
            "mount none /b/rootfs/sys/fs/cgroup type=- flags=ro,nosuid,nodev,noexec,remount,bind,relatime data=-",
            "mknod /b/rootfs/dev/null 20666 1:3 0:0",
            "mknod /b/rootfs/dev/zero 20666 1:5 0:0",
            "mknod /b/rootfs/dev/full 20666 1:7 0:0",
            "mknod /b/rootfs/dev/random 20666 1:8 0:0",
            "mknod /b/rootfs/dev/urandom 20666 1:9 0:0",
            "mknod /b/rootfs/dev/tty 20666 5:0 0:0",
            "mknod /b/rootfs/dev/fuse 20666 10:229 0:0",
            "symlink /b/rootfs/dev/fd -> /proc/self/fd",
            "symlink /b/rootfs/dev/stdin -> /proc/self/fd/0",
            "symlink /b/rootfs/dev/stdout -> /proc/self/fd/1",
            "symlink /b/rootfs/dev/stderr -> /proc/self/fd/2",
            "symlink /b/rootfs/dev/ptmx -> pts/ptmx",
            "pivot_root /b/rootfs",
            "mount /dev/null /proc/kcore type=- flags=bind data=-",
            "mount /proc/sys /proc/sys type=- flags=bind,rec data=-",
            "mount none /proc/sys type=- flags=ro,nosuid,nodev,noexec,remount,bind data=-",
            "mount none / type=- flags=ro,remount,bind data=-",
        ];
        let got = sys.calls.borrow();
        assert_eq!(got.iter().map(String::as_str).collect::<Vec<_>>(), want);
    }

    #[test]
    fn user_namespaces_bind_devices_and_bad_mounts_are_named() {
        let s =
            spec(r#"{"ociVersion":"1.2.0","mounts":[{"destination":"/x","options":["nosuid"]}]}"#);
        let e = plan(&s, &Context::default()).unwrap_err().to_string();
        assert!(
            e.contains("mounts[0]") && e.contains("type is missing"),
            "{e}"
        );
        let s = spec(r#"{"ociVersion":"1.2.0"}"#);
        let ops = plan(
            &s,
            &Context {
                userns: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(ops
            .iter()
            .all(|o| !matches!(o, Op::Device { bind: false, .. })));
    }
}
