//! The container side of `create`: what the cloned child does between clone and execve.
//! It never returns; every failure is sent to the runtime as [`Msg::Error`] and the child exits.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use oci_spec::runtime::Hooks;

use crate::hooks::{self, Point};
use crate::mounts::Op;
use crate::process::Prepared;
use crate::state::{OciState, Status};
use crate::sync::{Channel, Msg};
use crate::syscall::{LinuxSyscall, Syscall};

/// How the init learns that `start` was called.
pub enum StartSignal {
    /// `create`: a byte written to the exec fifo (opened O_RDWR before pivot_root).
    Fifo(File),
    /// `run`: a [`Msg::Start`] on the setup channel.
    Channel,
}

/// Where the pty master goes when the process has a terminal.
pub enum ConsoleTarget {
    None,
    /// The caller's --console-socket, already connected.
    Socket(OwnedFd),
    /// Back to the runtime over the setup channel (foreground run proxies the terminal).
    Channel,
}

/// Everything the child needs; built by the runtime before clone.
pub struct Init<'a> {
    pub channel: &'a Channel,
    pub ns: &'a crate::namespaces::Plan,
    pub rootfs: PathBuf,
    pub ops: Vec<Op>,
    pub after_pivot: Vec<Op>,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub sysctl: HashMap<String, String>,
    pub hooks: Option<Hooks>,
    pub process: &'a Prepared,
    pub start: StartSignal,
    pub console: ConsoleTarget,
    pub sigmask: libc::sigset_t,
    /// The cgroup the child moves itself into (v1 hierarchies) before anything else.
    pub join_cgroup: Option<&'a crate::cgroups::Cgroup>,
}

fn os(e: impl std::fmt::Display, what: &str) -> String {
    format!("{what}: {e}")
}

fn last(what: &str) -> String {
    os(std::io::Error::last_os_error(), what)
}

/// Joins the namespaces of the plan that are given by path.
pub fn join_namespaces(
    join: &[(oci_spec::runtime::LinuxNamespaceType, PathBuf)],
) -> Result<(), String> {
    // Open every namespace first: once in another user namespace, the others may be out of reach.
    let files = join
        .iter()
        .map(|(typ, path)| {
            File::open(path)
                .map_err(|e| os(e, &format!("linux.namespaces {typ}: {}", path.display())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for ((typ, path), f) in join.iter().zip(files) {
        // SAFETY: setns on an open namespace fd with the matching type flag.
        if unsafe { libc::setns(f.as_raw_fd(), crate::namespaces::flag(*typ) as libc::c_int) } < 0 {
            return Err(last(&format!(
                "linux.namespaces {typ}: setns {}",
                path.display()
            )));
        }
    }
    Ok(())
}

/// When the process has a terminal: allocates a pty from the container's /dev/ptmx, sends the
/// master where `console` says, and makes the slave the caller's controlling terminal and stdio.
pub fn open_terminal(
    p: &Prepared,
    console: &ConsoleTarget,
    channel: &Channel,
) -> Result<(), String> {
    if !p.terminal {
        return Ok(());
    }
    let (master, slave) =
        crate::console::open_pty().map_err(|e| os(e, "process.terminal: allocating a pty"))?;
    if let Some((rows, cols)) = p.console_size {
        let _ = crate::console::set_size(master.as_raw_fd(), rows, cols);
    }
    let (sock, name, what) = match console {
        ConsoleTarget::Socket(s) => (
            s.as_raw_fd(),
            "/dev/ptmx",
            "--console-socket: sending the pty",
        ),
        ConsoleTarget::Channel => (channel.raw(), "console", "sending the pty"),
        ConsoleTarget::None => {
            return Err("process.terminal is true but no console socket was given".into())
        }
    };
    crate::console::send_fd(sock, master.as_raw_fd(), name).map_err(|e| os(e, what))?;
    drop(master);
    crate::console::attach_slave(&slave).map_err(|e| os(e, "process.terminal"))
}

/// Forks; in the child returns Ok(0), in the parent the child's pid.
pub fn fork() -> Result<i32, String> {
    // SAFETY: the runtime is single-threaded here, so the child may keep running Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(last("fork"));
    }
    Ok(pid)
}

impl Init<'_> {
    /// Runs the child and exits the process.
    pub fn run(self, two_stage: bool) -> ! {
        // Signals were blocked around clone for the runtime's sake; the container's init takes
        // them as they come (kill of a created container works).
        // SAFETY: restoring the mask saved before clone.
        unsafe { libc::sigprocmask(libc::SIG_SETMASK, &self.sigmask, std::ptr::null_mut()) };
        let in_userns = self.ns.new_user()
            || self
                .ns
                .join
                .iter()
                .any(|(t, _)| *t == oci_spec::runtime::LinuxNamespaceType::User);
        if !in_userns {
            // Until execve, nothing in the container may read our memory or fds through /proc.
            // (In a user namespace this would lock us out of our own /proc/self.)
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
        }
        let code = match self.stages(two_stage) {
            Ok(never) => match never {},
            Err(e) => {
                let _ = self.channel.send(&Msg::Error(e));
                1
            }
        };
        // SAFETY: _exit never returns; skipping atexit handlers and destructors of the parent's state is intended.
        unsafe { libc::_exit(code) }
    }

    fn stages(&self, two_stage: bool) -> Result<std::convert::Infallible, String> {
        if let Some(c) = self.join_cgroup {
            c.join_v1_self().map_err(|e| e.to_string())?;
        }
        if two_stage {
            join_namespaces(&self.ns.join)?;
            let mut rest = self.ns.new;
            if self.ns.new_user() {
                // SAFETY: unshare with a namespace flag.
                if unsafe { libc::unshare(libc::CLONE_NEWUSER) } < 0 {
                    return Err(last("linux.namespaces user: unshare"));
                }
                self.channel
                    .send(&Msg::Maps)
                    .map_err(|e| os(e, "setup channel"))?;
                self.expect_go()?;
                rest &= !(libc::CLONE_NEWUSER as u64);
            }
            // SAFETY: unshare with namespace flags; CLONE_NEWPID applies to our next child.
            if rest != 0 && unsafe { libc::unshare(rest as libc::c_int) } < 0 {
                return Err(last("linux.namespaces: unshare"));
            }
            let pid = fork()?;
            if pid > 0 {
                let _ = self.channel.send(&Msg::Pid(pid));
                // SAFETY: the intermediate process is done.
                unsafe { libc::_exit(0) };
            }
        }
        self.expect_go()?;
        self.container()
    }

    fn expect_go(&self) -> Result<(), String> {
        match self.channel.recv() {
            Ok(Some(Msg::Go)) => Ok(()),
            Ok(other) => Err(format!("setup channel: expected go, got {other:?}")),
            Err(e) => Err(os(e, "setup channel")),
        }
    }

    fn container(&self) -> Result<std::convert::Infallible, String> {
        crate::log::trace("init: in the namespaces");
        let sys = LinuxSyscall;
        let joined_user = self
            .ns
            .join
            .iter()
            .any(|(t, _)| *t == oci_spec::runtime::LinuxNamespaceType::User);
        if self.ns.new_user() || joined_user {
            // Become root of the (new or joined) user namespace so files we create are owned by a mapped id.
            // SAFETY: plain syscalls.
            unsafe {
                libc::setresgid(0, 0, 0);
                libc::setresuid(0, 0, 0);
            }
        }
        // SAFETY: unshare with a namespace flag; we are already in the container's cgroup.
        if self.ns.new_cgroup && unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } < 0 {
            return Err(last("linux.namespaces cgroup: unshare"));
        }
        if let Some(h) = &self.hostname {
            sys.sethostname(h).map_err(|e| os(e, "hostname"))?;
        }
        if let Some(d) = &self.domainname {
            sys.setdomainname(d).map_err(|e| os(e, "domainname"))?;
        }
        let mut keys: Vec<_> = self.sysctl.iter().collect();
        keys.sort();
        for (k, v) in keys {
            sys.sysctl(k, v)
                .map_err(|e| os(e, &format!("linux.sysctl {k}")))?;
        }
        let (before, pivot) = self.ops.split_at(
            self.ops
                .iter()
                .position(|o| *o == Op::Pivot)
                .unwrap_or(self.ops.len()),
        );
        crate::mounts::apply(&sys, &self.rootfs, before).map_err(|e| e.to_string())?;
        crate::log::trace("init: mounts");

        self.channel
            .send(&Msg::Hooks)
            .map_err(|e| os(e, "setup channel"))?;
        let state_json = match self.channel.recv() {
            Ok(Some(Msg::Continue(s))) => s,
            Ok(other) => return Err(format!("setup channel: expected continue, got {other:?}")),
            Err(e) => return Err(os(e, "setup channel")),
        };
        hooks::run(self.hooks.as_ref(), Point::CreateContainer, &state_json)
            .map_err(|e| e.to_string())?;

        crate::mounts::apply(&sys, &self.rootfs, pivot).map_err(|e| e.to_string())?;
        crate::mounts::apply(&sys, Path::new("/"), &self.after_pivot).map_err(|e| e.to_string())?;
        crate::log::trace("init: pivot_root, masked and read-only paths");

        open_terminal(self.process, &self.console, self.channel)?;
        if let ConsoleTarget::Socket(s) = &self.console {
            // SAFETY: closing our copy of the console socket; the OwnedFd is not used afterwards.
            unsafe { libc::close(s.as_raw_fd()) };
        }

        let path = self.process.find_executable().map_err(|e| e.to_string())?;
        self.process.setup()?;
        crate::log::trace("init: process set up");
        self.channel
            .send(&Msg::Ready)
            .map_err(|e| os(e, "setup channel"))?;

        match &self.start {
            StartSignal::Fifo(f) => {
                let mut b = [0u8; 1];
                let mut f: &File = f;
                loop {
                    match f.read(&mut b) {
                        Ok(1) => break,
                        Ok(_) => return Err("exec fifo closed".into()),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(os(e, "exec fifo")),
                    }
                }
            }
            StartSignal::Channel => match self.channel.recv() {
                Ok(Some(Msg::Start)) => {}
                Ok(other) => return Err(format!("setup channel: expected start, got {other:?}")),
                Err(e) => return Err(os(e, "setup channel")),
            },
        }
        if let Some(h) = &self.hooks {
            let mut st: OciState = serde_json::from_str(&state_json).map_err(|e| os(e, "state"))?;
            st.status = Status::Running;
            let json = serde_json::to_string(&st).unwrap_or_default();
            hooks::run(Some(h), Point::StartContainer, &json).map_err(|e| e.to_string())?;
        }
        crate::log::trace("init: exec");
        Err(self.process.exec(&path, &self.sigmask))
    }
}
