//! Where the cgroup hierarchies are: parsing `/proc/self/mountinfo` and `/proc/self/cgroup`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::CgroupError;

/// One mounted cgroup filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Where it is mounted, e.g. `/sys/fs/cgroup/memory`.
    pub mountpoint: PathBuf,
    /// The cgroup of the hierarchy the mount shows (mountinfo's "root" field): `/` unless a
    /// subtree was bind-mounted (e.g. in a container without a cgroup namespace).
    pub root: String,
}

/// The host's cgroup layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hierarchy {
    /// cgroup v1 (legacy), or hybrid when `unified` is set.
    V1 {
        /// Hierarchy name → mount. Controllers are keyed by subsystem ("cpu", "cpuacct", ...;
        /// co-mounted ones share a mount), named hierarchies as "name=systemd".
        controllers: BTreeMap<String, Mount>,
        /// The cgroup2 mount of a hybrid host (usually `/sys/fs/cgroup/unified`).
        unified: Option<Mount>,
    },
    /// Pure cgroup v2 (unified).
    V2 {
        /// The cgroup2 mountpoint, usually `/sys/fs/cgroup`.
        root: PathBuf,
        /// The cgroup the mount shows (mountinfo's root field), usually `/`.
        mount_root: String,
    },
}

/// Mount options of a v1 cgroup mount that are not controllers.
const NON_CONTROLLER_OPTIONS: &[&str] = &[
    "rw",
    "ro",
    "xattr",
    "noprefix",
    "clone_children",
    "cpuset_v2_mode",
    "favordynmods",
    "none",
];

/// Undoes mountinfo's octal escapes (`\040` for space, `\011` tab, `\012` newline, `\134` `\`).
pub fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Hierarchy {
    /// Reads `/proc/self/mountinfo` and works out the layout.
    pub fn detect() -> Result<Hierarchy, CgroupError> {
        let text =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(|cause| CgroupError::Io {
                op: "reading",
                path: PathBuf::from("/proc/self/mountinfo"),
                cause,
            })?;
        Hierarchy::from_mountinfo(&text)
    }

    /// Works out the layout from the text of a mountinfo file:
    /// - a cgroup2 mount on `/sys/fs/cgroup` → [`Hierarchy::V2`];
    /// - else any v1 controller mount → [`Hierarchy::V1`], with the cgroup2 mount (preferring
    ///   `/sys/fs/cgroup/unified`) as `unified`;
    /// - else a cgroup2 mount elsewhere → [`Hierarchy::V2`].
    pub fn from_mountinfo(text: &str) -> Result<Hierarchy, CgroupError> {
        let mut v1: BTreeMap<String, Mount> = BTreeMap::new();
        let mut v2: Vec<Mount> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |reason: &str| CgroupError::Parse {
                file: "/proc/self/mountinfo".into(),
                line: i + 1,
                reason: reason.into(),
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let sep = fields
                .iter()
                .position(|f| *f == "-")
                .ok_or_else(|| bad("no \"-\" separator"))?;
            if sep < 6 || fields.len() < sep + 2 {
                return Err(bad("too few fields"));
            }
            let fstype = fields[sep + 1];
            if fstype != "cgroup" && fstype != "cgroup2" {
                continue;
            }
            let mount = Mount {
                root: unescape_mountinfo(fields[3]),
                mountpoint: PathBuf::from(unescape_mountinfo(fields[4])),
            };
            if fstype == "cgroup2" {
                v2.push(mount);
                continue;
            }
            let options = fields.get(sep + 3).copied().unwrap_or("");
            for opt in options.split(',') {
                let is_controller = !opt.is_empty()
                    && !NON_CONTROLLER_OPTIONS.contains(&opt)
                    && (!opt.contains('=') || opt.starts_with("name="));
                if is_controller {
                    v1.entry(opt.to_string()).or_insert_with(|| mount.clone());
                }
            }
        }
        let v2_at = |p: &str| v2.iter().find(|m| m.mountpoint == Path::new(p));
        if let Some(m) = v2_at("/sys/fs/cgroup") {
            return Ok(Hierarchy::V2 {
                root: m.mountpoint.clone(),
                mount_root: m.root.clone(),
            });
        }
        let unified = v2_at("/sys/fs/cgroup/unified").or(v2.first()).cloned();
        if v1.keys().any(|k| !k.starts_with("name=")) {
            return Ok(Hierarchy::V1 {
                controllers: v1,
                unified,
            });
        }
        match unified {
            Some(m) => Ok(Hierarchy::V2 {
                root: m.mountpoint,
                mount_root: m.root,
            }),
            None if !v1.is_empty() => Ok(Hierarchy::V1 {
                controllers: v1,
                unified: None,
            }),
            None => Err(CgroupError::NoCgroupMounts),
        }
    }

    /// True for pure cgroup v2.
    pub fn is_v2(&self) -> bool {
        matches!(self, Hierarchy::V2 { .. })
    }
}

/// The calling process's cgroups, from `/proc/self/cgroup`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcCgroups {
    /// v1 hierarchy name ("memory", "cpu", "name=systemd", ...) → cgroup path.
    pub v1: BTreeMap<String, String>,
    /// The cgroup in the unified hierarchy (the "0::" line).
    pub unified: Option<String>,
}

/// Parses `/proc/<pid>/cgroup`: lines "hierarchy-id:controller,list:/path".
pub fn parse_proc_cgroup(text: &str) -> Result<ProcCgroups, CgroupError> {
    let mut out = ProcCgroups::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: &str| CgroupError::Parse {
            file: "/proc/self/cgroup".into(),
            line: i + 1,
            reason: reason.into(),
        };
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected \"id:controllers:path\""));
        };
        if id.parse::<u32>().is_err() {
            return Err(bad("hierarchy id is not a number"));
        }
        if !path.starts_with('/') {
            return Err(bad("cgroup path is not absolute"));
        }
        if controllers.is_empty() {
            out.unified = Some(path.to_string());
        } else {
            for c in controllers.split(',').filter(|c| !c.is_empty()) {
                out.v1.insert(c.to_string(), path.to_string());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's layout: v1 controllers with cpu and cpuacct apart, cgroup2 at unified.
    const HYBRID: &str = "\
22 28 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A classic pure-v1 systemd host: cpu,cpuacct and net_cls,net_prio co-mounted.
    const PURE_V1: &str = "\
25 0 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
26 25 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
27 26 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
30 26 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct
31 26 0:28 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,net_cls,net_prio
32 26 0:29 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
33 26 0:30 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpuset,clone_children
34 26 0:31 / /sys/fs/cgroup/hugetlb rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,hugetlb
";

    const PURE_V2: &str = "\
25 0 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    fn mount(p: &str) -> Mount {
        Mount {
            mountpoint: PathBuf::from(p),
            root: "/".into(),
        }
    }

    #[test]
    fn hybrid() {
        let h = Hierarchy::from_mountinfo(HYBRID).unwrap();
        let Hierarchy::V1 {
            controllers,
            unified,
        } = &h
        else {
            panic!("expected v1: {h:?}")
        };
        assert!(!h.is_v2());
        assert_eq!(unified.as_ref(), Some(&mount("/sys/fs/cgroup/unified")));
        let names: Vec<&str> = controllers.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "blkio",
                "cpu",
                "cpuacct",
                "cpuset",
                "devices",
                "freezer",
                "memory",
                "name=systemd",
                "pids"
            ]
        );
        assert_eq!(controllers["cpu"], mount("/sys/fs/cgroup/cpu"));
        assert_eq!(controllers["cpuacct"], mount("/sys/fs/cgroup/cpuacct"));
        assert_eq!(controllers["name=systemd"], mount("/sys/fs/cgroup/systemd"));
    }

    #[test]
    fn pure_v1_comounted() {
        let h = Hierarchy::from_mountinfo(PURE_V1).unwrap();
        let Hierarchy::V1 {
            controllers,
            unified,
        } = &h
        else {
            panic!("expected v1: {h:?}")
        };
        assert_eq!(unified, &None);
        assert_eq!(controllers["cpu"], mount("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(controllers["cpuacct"], mount("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(
            controllers["net_prio"],
            mount("/sys/fs/cgroup/net_cls,net_prio")
        );
        assert_eq!(controllers["cpuset"], mount("/sys/fs/cgroup/cpuset"));
        assert!(!controllers.contains_key("clone_children"));
        assert!(!controllers.contains_key("xattr"));
        assert!(!controllers.keys().any(|k| k.starts_with("release_agent")));
        assert_eq!(controllers["name=systemd"], mount("/sys/fs/cgroup/systemd"));
    }

    #[test]
    fn pure_v2() {
        let h = Hierarchy::from_mountinfo(PURE_V2).unwrap();
        assert!(h.is_v2());
        assert_eq!(
            h,
            Hierarchy::V2 {
                root: PathBuf::from("/sys/fs/cgroup"),
                mount_root: "/".into()
            }
        );
    }

    #[test]
    fn v2_wins_over_stray_v1_named_mount_and_other_layouts() {
        // A pure v2 host where a tool mounted a name=systemd v1 hierarchy.
        let text = format!(
            "{PURE_V2}40 35 0:40 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n"
        );
        assert!(Hierarchy::from_mountinfo(&text).unwrap().is_v2());
        // Only a cgroup2 somewhere else (e.g. a container's bind mount) with a subtree root.
        let text = "50 1 0:30 /docker/abc /mnt/cg\\040two rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            Hierarchy::from_mountinfo(text).unwrap(),
            Hierarchy::V2 {
                root: PathBuf::from("/mnt/cg two"),
                mount_root: "/docker/abc".into()
            }
        );
    }

    #[test]
    fn errors() {
        assert!(matches!(
            Hierarchy::from_mountinfo("25 0 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"),
            Err(CgroupError::NoCgroupMounts)
        ));
        let e = Hierarchy::from_mountinfo("25 0 8:1 / / rw cgroup2\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "/proc/self/mountinfo line 1: no \"-\" separator");
        let e = Hierarchy::from_mountinfo("\n25 0 - cgroup2 x rw\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "/proc/self/mountinfo line 2: too few fields");
    }

    #[test]
    fn unescape_octal() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/a\\134b"), "/a\\b");
        assert_eq!(unescape_mountinfo("/a\\04"), "/a\\04");
        assert_eq!(unescape_mountinfo("/a\\x41"), "/a\\x41");
        assert_eq!(unescape_mountinfo("\\011"), "\t");
    }

    #[test]
    fn proc_cgroup() {
        let hybrid =
            "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/368d\n2:cpuacct:/\n1:cpu:/\n0::/\n";
        let p = parse_proc_cgroup(hybrid).unwrap();
        assert_eq!(p.v1["memory"], "/process_api/368d");
        assert_eq!(p.v1["name=systemd"], "/");
        assert_eq!(p.unified.as_deref(), Some("/"));

        let v1 = "4:cpu,cpuacct:/user.slice\n3:net_cls,net_prio:/\n1:name=systemd:/user.slice/user-0.slice/session-1.scope\n";
        let p = parse_proc_cgroup(v1).unwrap();
        assert_eq!(p.v1["cpu"], "/user.slice");
        assert_eq!(p.v1["cpuacct"], "/user.slice");
        assert_eq!(p.v1["net_prio"], "/");
        assert_eq!(p.unified, None);

        let v2 = "0::/user.slice/user-0.slice/session-3.scope\n";
        let p = parse_proc_cgroup(v2).unwrap();
        assert!(p.v1.is_empty());
        assert_eq!(
            p.unified.as_deref(),
            Some("/user.slice/user-0.slice/session-3.scope")
        );
        // A path with a colon stays whole.
        let p = parse_proc_cgroup("0::/a:b\n").unwrap();
        assert_eq!(p.unified.as_deref(), Some("/a:b"));

        for (text, msg) in [
            ("garbage\n", "line 1: expected \"id:controllers:path\""),
            ("x:memory:/\n", "line 1: hierarchy id is not a number"),
            ("0::/\n1:cpu:rel\n", "line 2: cgroup path is not absolute"),
        ] {
            let e = parse_proc_cgroup(text).unwrap_err().to_string();
            assert_eq!(e, format!("/proc/self/cgroup {msg}"));
        }
    }

    #[test]
    fn this_machine_parses() {
        // Whatever the host is, its own files must parse.
        let h = Hierarchy::detect().unwrap();
        let own =
            parse_proc_cgroup(&std::fs::read_to_string("/proc/self/cgroup").unwrap()).unwrap();
        match h {
            Hierarchy::V2 { .. } => assert!(own.unified.is_some()),
            Hierarchy::V1 { controllers, .. } => assert!(!controllers.is_empty()),
        }
    }
}
