//! Docker's defaults for a container: capabilities, devices, masked paths and the seccomp profile.
//!
//! The seccomp profile is berth's own rendering of the policy of Docker's default profile: deny
//! (EPERM) by default, allow the syscalls ordinary programs make, and allow the privileged ones
//! only when the container holds the capability that the kernel would check anyway (so that
//! `--cap-add SYS_ADMIN` makes `mount` usable, as with Docker).

use std::collections::HashSet;

use oci_spec::runtime::{
    Arch, Capability, LinuxDeviceCgroup, LinuxDeviceType, LinuxSeccomp, LinuxSeccompAction,
    LinuxSeccompArg, LinuxSeccompArgBuilder, LinuxSeccompOperator, LinuxSyscall,
};

/// `PATH` of a container whose image sets none (Docker's value).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capabilities (bounding, effective and permitted sets).
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability Linux knows (up to CAP_CHECKPOINT_RESTORE, Linux 5.9): `--cap-add ALL` and
/// `--privileged`.
pub const ALL_CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Paths Docker hides from a container (bind-mounted over with an empty file or tmpfs).
pub const DEFAULT_MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths Docker makes read-only in a container.
pub const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Parses a capability name as `--cap-add` takes it: case-insensitive, with or without `CAP_`.
pub fn parse_capability(name: &str) -> Option<Capability> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if bare.is_empty() {
        return None;
    }
    // `Capability`'s `FromStr` takes the name without the prefix; check against the full list
    // so that only real capabilities are accepted.
    let full = format!("CAP_{bare}");
    if !ALL_CAPABILITIES.contains(&full.as_str()) {
        return None;
    }
    bare.parse().ok()
}

fn caps(names: &[&str]) -> HashSet<Capability> {
    names
        .iter()
        .map(|n| parse_capability(n).expect("capability tables hold valid names"))
        .collect()
}

/// Docker's default capability set.
pub fn default_capabilities() -> HashSet<Capability> {
    caps(&DEFAULT_CAPABILITIES)
}

/// Every capability.
pub fn all_capabilities() -> HashSet<Capability> {
    caps(&ALL_CAPABILITIES)
}

/// Every capability this process may grant: those in its bounding set (`--privileged` and
/// `--cap-add ALL` cannot give a container what the engine itself lacks, as on hosts that run
/// it without CAP_SYS_RESOURCE). `ALL_CAPABILITIES` is in the kernel's order, so a name's
/// index is its number.
pub fn grantable_capabilities() -> HashSet<Capability> {
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX);
    let names: Vec<&str> = ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(i, _)| bounding & (1u64 << i) != 0)
        .map(|(_, n)| *n)
        .collect();
    caps(&names)
}

fn dev(
    allow: bool,
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut d = LinuxDeviceCgroup::default();
    d.set_allow(allow);
    d.set_typ(Some(typ));
    d.set_major(major);
    d.set_minor(minor);
    d.set_access(Some(access.to_string()));
    d
}

/// The device cgroup rules of an unprivileged container: deny everything, then allow `mknod`
/// of any device and the use of Docker's default devices (null, zero, full, random, urandom,
/// tty, console, ptmx and the pty slaves).
pub fn default_device_rules() -> Vec<LinuxDeviceCgroup> {
    use LinuxDeviceType::{A, B, C};
    let mut rules = vec![
        dev(false, A, None, None, "rwm"),
        dev(true, C, None, None, "m"),
        dev(true, B, None, None, "m"),
    ];
    for (major, minor) in [
        (1, Some(3)),
        (1, Some(5)),
        (1, Some(7)),
        (1, Some(8)),
        (1, Some(9)),
        (5, Some(0)),
        (5, Some(1)),
        (5, Some(2)),
        (136, None),
    ] {
        rules.push(dev(true, C, Some(major), minor, "rwm"));
    }
    rules
}

/// The device cgroup rule of a privileged container: every device.
pub fn privileged_device_rules() -> Vec<LinuxDeviceCgroup> {
    let mut d = LinuxDeviceCgroup::default();
    d.set_allow(true);
    d.set_typ(None);
    d.set_access(Some("rwm".to_string()));
    vec![d]
}

/// Syscalls every container may make (names across x86_64, i386 and x32).
pub const SECCOMP_ALLOWED: &[&str] = &[
    "_llseek",
    "_newselect",
    "accept",
    "accept4",
    "access",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "modify_ldt",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Syscalls allowed only when the container holds a capability (Docker's `includes.caps`).
pub const SECCOMP_BY_CAPABILITY: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "finit_module", "init_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &[
            "adjtimex",
            "clock_adjtime",
            "clock_adjtime64",
            "clock_settime",
            "clock_settime64",
            "settimeofday",
            "stime",
        ],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &["get_mempolicy", "mbind", "move_pages", "set_mempolicy"],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
    (
        "CAP_DAC_READ_SEARCH",
        &["open_by_handle_at", "name_to_handle_at"],
    ),
];

/// `clone` flags that create namespaces (CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS,
/// CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET): `clone` with any of them needs
/// CAP_SYS_ADMIN.
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
/// `AF_VSOCK`: sockets of this family are refused by default.
pub const AF_VSOCK: u64 = 40;
/// `ENOSYS`, returned for `clone3` so that libc falls back to `clone`, whose flags can be checked.
pub const ENOSYS: u32 = 38;
/// `personality(2)` personas allowed by default: PER_LINUX, PER_LINUX32, UNAME26,
/// UNAME26|PER_LINUX32 and the query 0xffffffff.
pub const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

fn arg(
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: Option<u64>,
) -> LinuxSeccompArg {
    let b = LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value);
    match value_two {
        Some(v) => b.value_two(v),
        None => b,
    }
    .build()
    .expect("every field of the argument is set")
}

fn rule(
    names: &[&str],
    action: LinuxSeccompAction,
    args: Option<Vec<LinuxSeccompArg>>,
) -> LinuxSyscall {
    let mut r = LinuxSyscall::default();
    r.set_names(names.iter().map(|n| n.to_string()).collect());
    r.set_action(action);
    r.set_args(args);
    r
}

/// The default seccomp profile for a container holding the capabilities `caps`.
pub fn default_seccomp(caps: &HashSet<Capability>) -> LinuxSeccomp {
    use LinuxSeccompAction::{ScmpActAllow as Allow, ScmpActErrno as Errno};
    use LinuxSeccompOperator::{ScmpCmpEq, ScmpCmpMaskedEq, ScmpCmpNe};

    let mut rules = vec![rule(SECCOMP_ALLOWED, Allow, None)];
    rules.push(rule(
        &["socket"],
        Allow,
        Some(vec![arg(0, ScmpCmpNe, AF_VSOCK, None)]),
    ));
    for p in PERSONALITIES {
        rules.push(rule(
            &["personality"],
            Allow,
            Some(vec![arg(0, ScmpCmpEq, p, None)]),
        ));
    }
    let mut by_cap: Vec<&str> = Vec::new();
    for (cap, names) in SECCOMP_BY_CAPABILITY {
        let held = parse_capability(cap).is_some_and(|c| caps.contains(&c));
        if held {
            for n in names.iter() {
                if !by_cap.contains(n) {
                    by_cap.push(n);
                }
            }
        }
    }
    if !by_cap.is_empty() {
        rules.push(rule(&by_cap, Allow, None));
    }
    let sys_admin = caps.contains(&Capability::SysAdmin);
    if !sys_admin {
        // `clone` without namespace flags; `clone3` passes its flags in memory, which seccomp
        // cannot inspect, so it fails with ENOSYS and libc falls back to `clone`.
        rules.push(rule(
            &["clone"],
            Allow,
            Some(vec![arg(
                0,
                ScmpCmpMaskedEq,
                CLONE_NAMESPACE_FLAGS,
                Some(0),
            )]),
        ));
        let mut clone3 = rule(&["clone3"], Errno, None);
        clone3.set_errno_ret(Some(ENOSYS));
        rules.push(clone3);
    }

    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(Errno);
    profile.set_default_errno_ret(Some(1));
    profile.set_architectures(Some(vec![
        Arch::ScmpArchX86_64,
        Arch::ScmpArchX86,
        Arch::ScmpArchX32,
    ]));
    profile.set_syscalls(Some(rules));
    profile
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `name` is allowed by some rule of `profile`, and whether that rule is unconditional.
    fn allowed(profile: &LinuxSeccomp, name: &str) -> Option<bool> {
        let mut found = None;
        for r in profile.syscalls().as_deref().unwrap_or_default() {
            if r.action() == LinuxSeccompAction::ScmpActAllow && r.names().iter().any(|n| n == name)
            {
                let unconditional = r.args().as_ref().is_none_or(|a| a.is_empty());
                found = Some(found.unwrap_or(false) || unconditional);
            }
        }
        found
    }

    const COMMON: &[&str] = &[
        "read",
        "write",
        "openat",
        "open",
        "close",
        "mmap",
        "munmap",
        "mprotect",
        "brk",
        "execve",
        "exit_group",
        "futex",
        "rt_sigaction",
        "rt_sigprocmask",
        "rt_sigreturn",
        "fstat",
        "newfstatat",
        "statx",
        "lseek",
        "getdents64",
        "pipe2",
        "dup3",
        "wait4",
        "kill",
        "getpid",
        "gettid",
        "set_tid_address",
        "set_robust_list",
        "rseq",
        "prlimit64",
        "arch_prctl",
        "getrandom",
        "epoll_wait",
        "epoll_ctl",
        "accept4",
        "connect",
        "bind",
        "sendto",
        "recvfrom",
        "ioctl",
        "fcntl",
        "chdir",
        "uname",
        "nanosleep",
        "clock_gettime",
        "vfork",
        "chroot",
    ];

    const DANGEROUS: &[&str] = &[
        "mount",
        "umount2",
        "unshare",
        "setns",
        "pivot_root",
        "bpf",
        "perf_event_open",
        "ptrace",
        "kexec_load",
        "kexec_file_load",
        "init_module",
        "finit_module",
        "delete_module",
        "reboot",
        "swapon",
        "swapoff",
        "acct",
        "add_key",
        "keyctl",
        "request_key",
        "open_by_handle_at",
        "name_to_handle_at",
        "process_vm_readv",
        "process_vm_writev",
        "quotactl",
        "syslog",
        "umount",
        "uselib",
        "userfaultfd",
        "vm86",
        "vm86old",
        "lookup_dcookie",
        "mbind",
        "get_mempolicy",
        "set_mempolicy",
        "move_pages",
        "clock_settime",
        "settimeofday",
        "stime",
        "adjtimex",
        "clock_adjtime",
        "iopl",
        "ioperm",
        "fanotify_init",
        "nfsservctl",
        "create_module",
        "get_kernel_syms",
        "query_module",
        "_sysctl",
        "fsopen",
        "fsconfig",
        "fsmount",
        "move_mount",
        "open_tree",
        "fspick",
        "mount_setattr",
        "clone3",
    ];

    #[test]
    fn default_profile_serializes_and_round_trips() {
        let p = default_seccomp(&default_capabilities());
        let json = serde_json::to_string(&p).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["defaultErrnoRet"], 1);
        assert_eq!(
            v["architectures"],
            serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        let back: LinuxSeccomp = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn common_syscalls_are_allowed() {
        let p = default_seccomp(&default_capabilities());
        for name in COMMON {
            assert_eq!(
                allowed(&p, name),
                Some(true),
                "{name} should be allowed unconditionally"
            );
        }
        assert_eq!(
            allowed(&p, "socket"),
            Some(false),
            "socket is allowed with a condition"
        );
        assert_eq!(allowed(&p, "personality"), Some(false));
        assert_eq!(
            allowed(&p, "clone"),
            Some(false),
            "clone is allowed without namespace flags"
        );
    }

    #[test]
    fn dangerous_syscalls_are_not_allowed() {
        let p = default_seccomp(&default_capabilities());
        for name in DANGEROUS {
            assert_eq!(
                allowed(&p, name),
                None,
                "{name} must not be allowed by default"
            );
        }
    }

    #[test]
    fn clone_and_clone3_rules() {
        let p = default_seccomp(&default_capabilities());
        let rules = p.syscalls().as_ref().unwrap();
        let clone = rules.iter().find(|r| r.names() == &["clone"]).unwrap();
        let a = clone.args().as_ref().unwrap()[0];
        assert_eq!(
            (a.index(), a.op(), a.value(), a.value_two()),
            (
                0,
                LinuxSeccompOperator::ScmpCmpMaskedEq,
                0x7E02_0000,
                Some(0)
            )
        );
        let clone3 = rules.iter().find(|r| r.names() == &["clone3"]).unwrap();
        assert_eq!(
            (clone3.action(), clone3.errno_ret()),
            (LinuxSeccompAction::ScmpActErrno, Some(38))
        );
        let socket = rules.iter().find(|r| r.names() == &["socket"]).unwrap();
        let a = socket.args().as_ref().unwrap()[0];
        assert_eq!(
            (a.index(), a.op(), a.value()),
            (0, LinuxSeccompOperator::ScmpCmpNe, 40)
        );
        let personas: Vec<u64> = rules
            .iter()
            .filter(|r| r.names() == &["personality"])
            .map(|r| r.args().as_ref().unwrap()[0].value())
            .collect();
        assert_eq!(personas, PERSONALITIES);
    }

    #[test]
    fn capabilities_widen_the_profile() {
        let cases: &[(&str, &[&str])] = &[
            (
                "SYS_ADMIN",
                &[
                    "mount",
                    "umount2",
                    "unshare",
                    "setns",
                    "clone",
                    "clone3",
                    "sethostname",
                ],
            ),
            (
                "SYS_PTRACE",
                &["ptrace", "process_vm_readv", "process_vm_writev"],
            ),
            ("SYS_TIME", &["clock_settime", "settimeofday", "adjtimex"]),
            (
                "SYS_MODULE",
                &["init_module", "finit_module", "delete_module"],
            ),
            ("SYS_BOOT", &["reboot"]),
            ("SYS_NICE", &["mbind", "set_mempolicy"]),
        ];
        for (cap, names) in cases {
            let mut caps = default_capabilities();
            caps.insert(parse_capability(cap).unwrap());
            let p = default_seccomp(&caps);
            for name in *names {
                assert_eq!(allowed(&p, name), Some(true), "{name} with {cap}");
            }
            assert_eq!(allowed(&p, "kexec_load"), None);
        }
        // With SYS_ADMIN, clone is unconditional and clone3 no longer fails with ENOSYS.
        let mut caps = default_capabilities();
        caps.insert(Capability::SysAdmin);
        let p = default_seccomp(&caps);
        assert!(p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .all(|r| r.action() == LinuxSeccompAction::ScmpActAllow));
        // Dropping SYS_CHROOT takes chroot away.
        let mut caps = default_capabilities();
        caps.remove(&Capability::SysChroot);
        assert_eq!(allowed(&default_seccomp(&caps), "chroot"), None);
    }

    #[test]
    fn capability_names() {
        for (name, want) in [
            ("NET_ADMIN", Some(Capability::NetAdmin)),
            ("cap_net_admin", Some(Capability::NetAdmin)),
            ("CAP_SYSLOG", Some(Capability::Syslog)),
            ("checkpoint_restore", Some(Capability::CheckpointRestore)),
            ("NET_FOO", None),
            ("", None),
            ("CAP_", None),
        ] {
            assert_eq!(parse_capability(name), want, "{name}");
        }
        assert_eq!(all_capabilities().len(), 41);
        assert_eq!(default_capabilities().len(), 14);
    }

    #[test]
    fn device_rules() {
        let json = serde_json::to_value(default_device_rules()).unwrap();
        assert_eq!(
            json[0],
            serde_json::json!({"allow": false, "type": "a", "access": "rwm"})
        );
        assert!(json.as_array().unwrap().contains(
            &serde_json::json!({"allow": true, "type": "c", "major": 136, "access": "rwm"})
        ));
        assert!(json.as_array().unwrap().contains(&serde_json::json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"})));
        assert!(
            !json.to_string().contains("200"),
            "tun (10:200) is not a default device"
        );
        assert_eq!(
            serde_json::to_value(privileged_device_rules()).unwrap(),
            serde_json::json!([{"allow": true, "access": "rwm"}])
        );
    }
}
