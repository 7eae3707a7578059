//! The container process itself: user, groups, capabilities, rlimits, no_new_privs,
//! seccomp, working directory and the final execve — shared by a container's init and `exec`.
//!
//! [`Prepared`] is computed (and validated, with errors naming the field) before any fork,
//! so a bad spec fails early and leaves nothing behind.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::{LinuxSeccomp, Process};

use crate::seccomp;

/// The five capability sets of the process.
#[derive(Debug, Clone, Default)]
pub struct CapSets {
    pub bounding: CapsHashSet,
    pub effective: CapsHashSet,
    pub permitted: CapsHashSet,
    pub inheritable: CapsHashSet,
    pub ambient: CapsHashSet,
}

/// A process ready to be started in a container.
pub struct Prepared {
    pub args: Vec<CString>,
    pub env: Vec<CString>,
    pub path_env: String,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
    pub caps: Option<CapSets>,
    pub no_new_privileges: bool,
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
    pub seccomp: Option<(seccomp::Filter, LinuxSeccomp)>,
    pub oom_score_adj: Option<i32>,
    pub terminal: bool,
    pub console_size: Option<(u16, u16)>,
    /// Extra fds (3..3+n) passed into the container, like runc's --preserve-fds.
    pub preserve_fds: i32,
    /// An LSM label for the program: (attr file, value, OCI field).
    pub exec_label: Option<(PathBuf, String, &'static str)>,
}

/// The attribute file and value that set the AppArmor profile or SELinux label the next
/// execve takes on; an error naming the field when the host has no such LSM.
fn exec_label(process: &Process) -> Result<Option<(PathBuf, String, &'static str)>, crate::Error> {
    if let Some(profile) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        let enabled = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|s| s.trim() == "Y");
        if !enabled {
            return Err(invalid(
                "process.apparmorProfile",
                format!("{profile:?}: AppArmor is not enabled on this host"),
            ));
        }
        let file = if Path::new("/proc/self/attr/apparmor/exec").exists() {
            "/proc/self/attr/apparmor/exec"
        } else {
            "/proc/self/attr/exec"
        };
        return Ok(Some((
            file.into(),
            format!("exec {profile}"),
            "process.apparmorProfile",
        )));
    }
    if let Some(label) = process.selinux_label().as_deref().filter(|l| !l.is_empty()) {
        if !Path::new("/sys/fs/selinux/enforce").exists() {
            return Err(invalid(
                "process.selinuxLabel",
                format!("{label:?}: SELinux is not enabled on this host"),
            ));
        }
        return Ok(Some((
            "/proc/self/attr/exec".into(),
            label.to_string(),
            "process.selinuxLabel",
        )));
    }
    Ok(None)
}

fn invalid(field: &str, msg: impl std::fmt::Display) -> crate::Error {
    crate::Error::Spec(format!("{field}: {msg}"))
}

fn cap_set(
    field: &str,
    list: Option<&HashSet<oci_spec::runtime::Capability>>,
) -> Result<CapsHashSet, crate::Error> {
    let mut out = CapsHashSet::new();
    for c in list.into_iter().flatten() {
        let name = serde_json::to_value(c)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let cap: Capability = name
            .parse()
            .map_err(|_| invalid(field, format!("unknown capability {name:?}")))?;
        out.insert(cap);
    }
    Ok(out)
}

fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
}

fn cstring(field: &str, s: &str) -> Result<CString, crate::Error> {
    CString::new(s).map_err(|_| invalid(field, "contains a NUL byte"))
}

impl Prepared {
    /// Validates `process` and turns it into what the container's process needs.
    pub fn new(
        process: &Process,
        seccomp_profile: Option<&LinuxSeccomp>,
        preserve_fds: i32,
    ) -> Result<Prepared, crate::Error> {
        let args = process
            .args()
            .as_ref()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| invalid("process.args", "must name the program to run"))?
            .iter()
            .enumerate()
            .map(|(i, a)| cstring(&format!("process.args[{i}]"), a))
            .collect::<Result<Vec<_>, _>>()?;
        let env_list = process.env().clone().unwrap_or_default();
        let env = env_list
            .iter()
            .enumerate()
            .map(|(i, e)| cstring(&format!("process.env[{i}]"), e))
            .collect::<Result<Vec<_>, _>>()?;
        let path_env = env_list
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .to_string();
        let caps = match process.capabilities() {
            None => None,
            Some(c) => {
                let mut sets = CapSets {
                    bounding: cap_set("process.capabilities.bounding", c.bounding().as_ref())?,
                    effective: cap_set("process.capabilities.effective", c.effective().as_ref())?,
                    permitted: cap_set("process.capabilities.permitted", c.permitted().as_ref())?,
                    inheritable: cap_set(
                        "process.capabilities.inheritable",
                        c.inheritable().as_ref(),
                    )?,
                    ambient: cap_set("process.capabilities.ambient", c.ambient().as_ref())?,
                };
                if let Some(c) = sets.effective.difference(&sets.permitted).next() {
                    return Err(invalid(
                        "process.capabilities.effective",
                        format!("{c} is not in the permitted set"),
                    ));
                }
                // The kernel raises an ambient capability only when it is permitted and
                // inheritable; as runc, the others are skipped (said in the log), since
                // `runc spec`'s own config.json asks for ambient capabilities it does not make
                // inheritable.
                let skipped: Vec<_> = sets
                    .ambient
                    .iter()
                    .filter(|c| !sets.permitted.contains(c) || !sets.inheritable.contains(c))
                    .cloned()
                    .collect();
                if !skipped.is_empty() {
                    let names: Vec<String> = skipped.iter().map(|c| c.to_string()).collect();
                    crate::log::warn(&format!(
                        "process.capabilities.ambient: {} skipped: an ambient capability must also be permitted and inheritable",
                        names.join(", ")
                    ));
                    for c in &skipped {
                        sets.ambient.remove(c);
                    }
                }
                Some(sets)
            }
        };
        let mut rlimits = Vec::new();
        let mut seen = HashSet::new();
        for (i, r) in process.rlimits().iter().flatten().enumerate() {
            let name = serde_json::to_value(r.typ())
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let field = format!("process.rlimits[{i}]");
            let res = rlimit_resource(&name).ok_or_else(|| {
                invalid(&format!("{field}.type"), format!("unknown rlimit {name:?}"))
            })?;
            if !seen.insert(name.clone()) {
                return Err(invalid(
                    &format!("{field}.type"),
                    format!("{name} listed twice"),
                ));
            }
            if r.soft() > r.hard() {
                return Err(invalid(
                    &field,
                    format!("soft limit {} is above hard limit {}", r.soft(), r.hard()),
                ));
            }
            rlimits.push((res, r.soft(), r.hard()));
        }
        let seccomp = match seccomp_profile {
            Some(p) => Some((
                seccomp::compile(p).map_err(|e| crate::Error::Spec(e.to_string()))?,
                p.clone(),
            )),
            None => None,
        };
        let user = process.user();
        Ok(Prepared {
            args,
            env,
            path_env,
            cwd: process.cwd().clone(),
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
            umask: user.umask(),
            caps,
            no_new_privileges: process.no_new_privileges().unwrap_or(false),
            rlimits,
            seccomp,
            oom_score_adj: process.oom_score_adj(),
            terminal: process.terminal().unwrap_or(false),
            console_size: process
                .console_size()
                .map(|b| (b.height() as u16, b.width() as u16)),
            preserve_fds,
            exec_label: exec_label(process)?,
        })
    }

    /// Resolves args[0] against the container's PATH, from inside the container.
    pub fn find_executable(&self) -> Result<CString, crate::Error> {
        let arg0 = Path::new(std::ffi::OsStr::from_bytes(self.args[0].as_bytes()));
        let candidates: Vec<PathBuf> = if arg0.as_os_str().as_bytes().contains(&b'/') {
            vec![if arg0.is_absolute() {
                arg0.to_path_buf()
            } else {
                self.cwd.join(arg0)
            }]
        } else {
            self.path_env
                .split(':')
                .filter(|d| !d.is_empty())
                .map(|d| Path::new(d).join(arg0))
                .collect()
        };
        // Resolved inside the (pivoted) root without magic links: a path through
        // /proc/self/fd/<n> or /proc/self/exe must not lead to a host file (CVE-2024-21626).
        let explicit = candidates.len() == 1 && arg0.as_os_str().as_bytes().contains(&b'/');
        for c in &candidates {
            let Ok(fd) = crate::syscall::open_in_root(Path::new("/"), c) else {
                if explicit {
                    return Err(invalid(
                        "process.args[0]",
                        format!(
                            "{:?}: stat {}: no such file or directory",
                            arg0.display().to_string(),
                            c.display()
                        ),
                    ));
                }
                continue;
            };
            if let Ok(m) = File::from(fd).metadata() {
                if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                    return CString::new(c.as_os_str().as_bytes())
                        .map_err(|_| invalid("process.args[0]", "contains a NUL byte"));
                }
                if explicit {
                    // As Go's exec (and so runc and docker) says it: exit status 126.
                    return Err(invalid(
                        "process.args[0]",
                        format!("{:?}: permission denied", arg0.display().to_string()),
                    ));
                }
            }
        }
        Err(invalid(
            "process.args[0]",
            format!(
                "{:?}: executable file not found in $PATH",
                arg0.display().to_string()
            ),
        ))
    }

    /// Everything up to (not including) the wait for `start`: rlimits, fds, cwd, umask,
    /// no_new_privs, seccomp (when no_new_privs is unset it must go in while we still hold
    /// CAP_SYS_ADMIN), user and capabilities.
    pub fn setup(&self) -> Result<(), String> {
        for (res, soft, hard) in &self.rlimits {
            let l = libc::rlimit {
                rlim_cur: *soft,
                rlim_max: *hard,
            };
            // SAFETY: setrlimit with a valid rlimit struct.
            if unsafe { libc::setrlimit(*res, &l) } < 0 {
                return Err(format!(
                    "process.rlimits: setrlimit({res}): {}",
                    io::Error::last_os_error()
                ));
            }
        }
        // No host fd may reach the container: everything above the preserved range closes on exec.
        // SAFETY: close_range with the CLOEXEC flag only marks fds.
        if unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3 + self.preserve_fds as u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        } < 0
        {
            return Err(format!("close_range: {}", io::Error::last_os_error()));
        }
        std::env::set_current_dir(&self.cwd)
            .map_err(|e| format!("process.cwd: {}: {e}", self.cwd.display()))?;
        // A working directory reached through a leaked host fd is outside our root (CVE-2024-21626):
        // getcwd then reports it as unreachable.
        match std::env::current_dir() {
            Ok(p) if p.is_absolute() => {}
            _ => {
                return Err(format!(
                    "process.cwd: {} is outside the container",
                    self.cwd.display()
                ))
            }
        }
        self.hand_over_stdio();
        if let Some(m) = self.umask {
            // SAFETY: umask cannot fail.
            unsafe { libc::umask(m as libc::mode_t) };
        }
        if self.no_new_privileges {
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
                return Err(format!(
                    "process.noNewPrivileges: {}",
                    io::Error::last_os_error()
                ));
            }
        } else if let Some((filter, profile)) = &self.seccomp {
            seccomp::install(filter, profile).map_err(|e| format!("linux.seccomp: {e}"))?;
        }
        self.set_user_and_caps()
    }

    /// Gives the container's user its stdio (as runc does), so a non-root process can reopen
    /// /dev/stdout or its terminal; /dev/null and what cannot be changed are left alone.
    fn hand_over_stdio(&self) {
        if self.uid == 0 {
            return;
        }
        for fd in 0..3 {
            let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
            // SAFETY: fstat into a writable buffer.
            if unsafe { libc::fstat(fd, st.as_mut_ptr()) } < 0 {
                continue;
            }
            // SAFETY: fstat succeeded.
            let st = unsafe { st.assume_init() };
            let is_null =
                st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == libc::makedev(1, 3);
            if is_null || st.st_uid == self.uid {
                continue;
            }
            // SAFETY: fchown on one of our stdio fds; failure (read-only file system, a file we
            // may not change) is tolerated as runc does.
            unsafe { libc::fchown(fd, self.uid, st.st_gid) };
        }
    }

    fn set_user_and_caps(&self) -> Result<(), String> {
        if let Some(c) = &self.caps {
            for cap in caps::all() {
                if !c.bounding.contains(&cap) {
                    match caps::drop(None, CapSet::Bounding, cap) {
                        Ok(()) => {}
                        // A capability the kernel does not know is not in the bounding set either.
                        Err(_)
                            if !caps::runtime::procfs_all_supported(None)
                                .map(|s| s.contains(&cap))
                                .unwrap_or(true) => {}
                        Err(e) => {
                            return Err(format!(
                                "process.capabilities.bounding: dropping {cap}: {e}"
                            ))
                        }
                    }
                }
            }
        }
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
        // SAFETY: the pointer and length describe the vector.
        if unsafe { libc::setgroups(self.additional_gids.len(), self.additional_gids.as_ptr()) } < 0
        {
            let e = io::Error::last_os_error();
            // In a user namespace where setgroups is denied, only an empty list is acceptable.
            if !(self.additional_gids.is_empty() && e.raw_os_error() == Some(libc::EPERM)) {
                return Err(format!("process.user.additionalGids: {e}"));
            }
        }
        // SAFETY: plain syscalls.
        if unsafe { libc::setresgid(self.gid, self.gid, self.gid) } < 0 {
            return Err(format!(
                "process.user.gid {}: {}",
                self.gid,
                io::Error::last_os_error()
            ));
        }
        // SAFETY: plain syscall.
        if unsafe { libc::setresuid(self.uid, self.uid, self.uid) } < 0 {
            return Err(format!(
                "process.user.uid {}: {}",
                self.uid,
                io::Error::last_os_error()
            ));
        }
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
        if let Some(c) = &self.caps {
            caps::set(None, CapSet::Inheritable, &c.inheritable)
                .map_err(|e| format!("process.capabilities.inheritable: {e}"))?;
            caps::set(None, CapSet::Effective, &c.effective)
                .map_err(|e| format!("process.capabilities.effective: {e}"))?;
            caps::set(None, CapSet::Permitted, &c.permitted)
                .map_err(|e| format!("process.capabilities.permitted: {e}"))?;
            caps::clear(None, CapSet::Ambient)
                .map_err(|e| format!("process.capabilities.ambient: {e}"))?;
            for cap in &c.ambient {
                caps::raise(None, CapSet::Ambient, *cap)
                    .map_err(|e| format!("process.capabilities.ambient: {cap}: {e}"))?;
            }
        }
        Ok(())
    }

    /// The last steps: seccomp under no_new_privs (as late as possible, so setup needs no
    /// syscall the profile may forbid), the original signal mask, and execve.
    pub fn exec(&self, path: &CString, sigmask: &libc::sigset_t) -> String {
        if self.no_new_privileges {
            if let Some((filter, profile)) = &self.seccomp {
                if let Err(e) = seccomp::install(filter, profile) {
                    return format!("linux.seccomp: {e}");
                }
            }
        }
        if let Some(label) = &self.exec_label {
            if let Err(e) = std::fs::write(&label.0, &label.1) {
                return format!("{}: {e}", label.2);
            }
        }
        // The runtime's own dispositions (Rust ignores SIGPIPE) must not reach the program:
        // ignored signals stay ignored across execve.
        // The raw syscall: glibc refuses to touch the real-time signals it reserves.
        #[repr(C)]
        struct KernelSigaction {
            handler: usize,
            flags: u64,
            restorer: usize,
            mask: u64,
        }
        let dfl = KernelSigaction {
            handler: libc::SIG_DFL,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                // SAFETY: rt_sigaction with a valid kernel sigaction and the kernel's sigset size.
                unsafe {
                    libc::syscall(
                        libc::SYS_rt_sigaction,
                        sig,
                        &dfl as *const KernelSigaction,
                        0usize,
                        8usize,
                    )
                };
            }
        }
        let mut argv: Vec<*const libc::c_char> = self.args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = self.env.iter().map(|a| a.as_ptr()).collect();
        envp.push(std::ptr::null());
        // SAFETY: restoring a signal mask saved earlier; argv/envp are NULL-terminated arrays of
        // valid strings that outlive the call.
        unsafe {
            libc::sigprocmask(libc::SIG_SETMASK, sigmask, std::ptr::null_mut());
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        }
        format!(
            "process.args[0]: exec {}: {}",
            path.to_string_lossy(),
            io::Error::last_os_error()
        )
    }
}
