//! The runtime side of the container lifecycle: create, start, run, state, kill, delete,
//! exec, list, ps and stats over a state root such as `/run/berth/runtime`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

use crate::cgroups::{Cgroup, Hierarchy, Stats};
use crate::hooks::{self, Point};
use crate::init::{ConsoleTarget, Init, StartSignal};
use crate::namespaces;
use crate::process::Prepared;
use crate::sharedmnt::SharedMounts;
use crate::state::{self, OciState, Record, Status, EXEC_FIFO};
use crate::sync::{Channel, Msg};
use crate::Error;

/// What `create` and `run` are given.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: i32,
}

/// What `exec` is given: the process (already merged with the container's defaults).
#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub process: Process,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: i32,
}

/// An OCI runtime whose container state lives under `root`.
#[derive(Debug, Clone)]
pub struct Runtime {
    root: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Create,
    Run { detach: bool },
}

/// A container whose init is set up and waiting for start.
struct Launched {
    record: Record,
    dir: PathBuf,
    channel: Channel,
    master: Option<OwnedFd>,
    sigmask: libc::sigset_t,
}

/// Undoes a half-made container when `create` fails: kills the init, removes the cgroup and the state directory.
struct Undo {
    dir: Option<PathBuf>,
    cgroup: Option<Cgroup>,
    pids: Vec<i32>,
    /// Mounts made in a mount namespace the container does not own.
    shared: Option<SharedMounts>,
}

impl Undo {
    fn disarm(&mut self) {
        self.dir = None;
        self.cgroup = None;
        self.pids.clear();
        self.shared = None;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        for pid in &self.pids {
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
                libc::waitpid(*pid, std::ptr::null_mut(), 0);
            }
        }
        if let Some(c) = &self.cgroup {
            let _ = c.kill_all(libc::SIGKILL);
            let _ = c.delete();
        }
        if let Some(m) = &self.shared {
            if let Err(e) = m.release() {
                warn(e);
            }
        }
        if let Some(d) = &self.dir {
            let _ = fs::remove_dir_all(d);
        }
    }
}

fn validate_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 1024
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-+".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "invalid container id {id:?}: use letters, digits, '_', '.', '-' and '+'"
        )))
    }
}

/// The mount point (from a mountinfo text) under which `path` lies.
fn mount_point_of(mountinfo: &str, path: &Path) -> PathBuf {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(crate::cgroups::unescape_mountinfo(m)))
        .filter(|m| path.starts_with(m))
        .max_by_key(|m| m.as_os_str().len())
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// The cgroup v1 hierarchies mounted on the host, for the container's cgroup mount: (directory
/// name, mount options — the controllers mounted there — and mount point).
fn cgroup_v1_mounts(hierarchy: &Hierarchy) -> Vec<(String, String, PathBuf)> {
    let Hierarchy::V1 { controllers, .. } = hierarchy else {
        return Vec::new();
    };
    let mut by_mount: std::collections::BTreeMap<&Path, Vec<&str>> =
        std::collections::BTreeMap::new();
    for (controller, mount) in controllers {
        by_mount
            .entry(&mount.mountpoint)
            .or_default()
            .push(controller);
    }
    by_mount
        .into_iter()
        .filter_map(|(mountpoint, names)| {
            let dir = mountpoint.file_name()?.to_string_lossy().into_owned();
            Some((dir, names.join(","), mountpoint.to_path_buf()))
        })
        .collect()
}

/// Where a new process is placed in its cgroup.
#[derive(Clone, Copy)]
struct Placement {
    /// The child moves itself into the v1 hierarchies (fast: no RCU grace period).
    v1_self: bool,
    /// clone3(CLONE_INTO_CGROUP) placed it in the unified hierarchy.
    unified_at_clone: bool,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// clone3 into `cgroup` (a cgroup v2 directory) when given; falls back to a plain clone when
/// the kernel refuses. Returns the pid (0 in the child) and whether the cgroup was used.
fn clone_into(flags: u64, cgroup: Option<&File>) -> Result<(i32, bool), Error> {
    if let Some(dir) = cgroup {
        match clone3(flags | CLONE_INTO_CGROUP, dir.as_raw_fd() as u64) {
            Ok(pid) => return Ok((pid, true)),
            Err(Error::Io { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(
                        libc::EINVAL | libc::EBUSY | libc::EOPNOTSUPP | libc::ENOSYS | libc::EBADF
                    )
                ) => {}
            Err(e) => return Err(e),
        }
    }
    clone3(flags, 0).map(|pid| (pid, false))
}

fn clone3(flags: u64, cgroup: u64) -> Result<i32, Error> {
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let args = CloneArgs {
        flags,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup,
    };
    // SAFETY: clone3 without a new stack behaves like fork: the child continues on a copy of
    // our (single-threaded) address space.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r < 0 {
        return Err(Error::io(
            "creating the container process (clone3)",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(r as i32)
}

fn write_id_maps(pid: i32, spec: &Spec) -> Result<(), Error> {
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    for (file, maps, field) in [
        ("uid_map", linux.uid_mappings(), "linux.uidMappings"),
        ("gid_map", linux.gid_mappings(), "linux.gidMappings"),
    ] {
        let text: String = maps
            .iter()
            .flatten()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect();
        fs::write(format!("/proc/{pid}/{file}"), text)
            .map_err(|e| Error::Spec(format!("{field}: {e}")))?;
    }
    Ok(())
}

fn forwarded_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local value.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for s in [
            libc::SIGKILL,
            libc::SIGSTOP,
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGABRT,
            libc::SIGTRAP,
            libc::SIGSYS,
        ] {
            libc::sigdelset(&mut set, s);
        }
        set
    }
}

fn block_signals() -> libc::sigset_t {
    let set = forwarded_signals();
    // SAFETY: sigprocmask with valid sets.
    unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        old
    }
}

fn restore_signals(old: &libc::sigset_t) {
    // SAFETY: restoring a mask saved by block_signals.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
}

fn expect(channel: &Channel, what: &str) -> Result<Msg, Error> {
    match channel.recv() {
        Ok(Some(Msg::Error(e))) => Err(Error::Setup(e)),
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(Error::Setup(format!(
            "container process exited while {what}"
        ))),
        Err(e) => Err(Error::io(format!("setup channel while {what}"), e)),
    }
}

fn write_pid_file(path: &Path, pid: i32) -> Result<(), Error> {
    let tmp = path.with_extension("berth-tmp");
    fs::write(&tmp, pid.to_string())
        .and_then(|_| fs::rename(&tmp, path))
        .map_err(|e| Error::io(format!("writing pid file {}", path.display()), e))
}

fn warn(msg: impl std::fmt::Display) {
    crate::log::warn(&msg.to_string());
}

impl Runtime {
    pub fn new(root: impl Into<PathBuf>) -> Runtime {
        Runtime { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, id: &str) -> Result<PathBuf, Error> {
        validate_id(id)?;
        Ok(self.root.join(id))
    }

    fn load(&self, id: &str) -> Result<(Record, PathBuf), Error> {
        let dir = self.dir(id)?;
        if !dir.join(state::STATE_FILE).exists() {
            return Err(Error::NotFound(id.to_string()));
        }
        Ok((Record::load(&dir)?, dir))
    }

    /// `create`: sets up the container and leaves its process waiting for `start`.
    pub fn create(&self, opts: &CreateOptions) -> Result<OciState, Error> {
        let l = self.launch(opts, Mode::Create)?;
        restore_signals(&l.sigmask);
        Ok(l.record.oci_state(&l.dir))
    }

    /// `run`: create and start; in the foreground, waits and returns the exit code (128+n for signal n).
    pub fn run(&self, opts: &CreateOptions, detach: bool) -> Result<i32, Error> {
        let l = self.launch(opts, Mode::Run { detach })?;
        // The channel closes when the process execs (it is close-on-exec); an error before that
        // is a failed startContainer hook or exec.
        let started = match l.channel.send(&Msg::Start) {
            Err(e) => Err(Error::io("starting the container", e)),
            Ok(()) => match l.channel.recv() {
                Ok(None) => Ok(()),
                Ok(Some(Msg::Error(e))) => Err(Error::Setup(e)),
                Ok(Some(m)) => Err(Error::Setup(format!("unexpected setup message {m:?}"))),
                Err(e) => Err(Error::io("setup channel", e)),
            },
        };
        if let Err(e) = started {
            restore_signals(&l.sigmask);
            // SAFETY: the init is verified ours (start time recorded at create).
            unsafe { libc::kill(l.record.pid, libc::SIGKILL) };
            let _ = self.destroy(&l.record, &l.dir);
            return Err(e);
        }
        crate::log::trace("started");
        let state = l.record.poststart_state(&l.dir);
        if let Err(e) = hooks::run(
            l.record.spec.hooks().as_ref(),
            Point::Poststart,
            &json(&state),
        ) {
            warn(e);
        }
        if detach {
            restore_signals(&l.sigmask);
            return Ok(0);
        }
        let code = wait_foreground(l.record.pid, l.master.as_ref());
        crate::log::trace("exited");
        restore_signals(&l.sigmask);
        self.destroy(&l.record, &l.dir)?;
        crate::log::trace("deleted");
        Ok(code)
    }

    fn launch(&self, opts: &CreateOptions, mode: Mode) -> Result<Launched, Error> {
        crate::log::trace("launch");
        validate_id(&opts.id)?;
        let bundle = fs::canonicalize(&opts.bundle)
            .map_err(|e| Error::io(format!("bundle {}", opts.bundle.display()), e))?;
        let spec = crate::spec::load_bundle(&bundle)?;
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| Error::Spec("process: missing".into()))?;
        let linux = spec
            .linux()
            .as_ref()
            .ok_or_else(|| Error::Spec("linux: missing".into()))?;
        let prepared = Prepared::new(process, linux.seccomp().as_ref(), opts.preserve_fds)?;
        let ns = namespaces::Plan::from_spec(&spec);
        let joins = |t: LinuxNamespaceType| ns.join.iter().any(|(j, _)| *j == t);
        if spec.hostname().as_deref().is_some_and(|h| !h.is_empty())
            && ns.new & libc::CLONE_NEWUTS as u64 == 0
            && !joins(LinuxNamespaceType::Uts)
        {
            return Err(Error::Spec(
                "hostname: setting a hostname needs a uts namespace".into(),
            ));
        }
        for key in linux.sysctl().iter().flat_map(|m| m.keys()) {
            check_sysctl(key, &ns)?;
        }
        // One read of the mount table serves the cgroup layout, the v1 mounts and the rootfs's parent.
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Error::io("reading /proc/self/mountinfo", e))?;
        // Without a mount namespace of its own, the container mounts in the runtime's or in
        // the one it joins, and those mounts must be found again at delete.
        let shared_mounts = if ns.new & libc::CLONE_NEWNS as u64 == 0 {
            let joined = ns
                .join
                .iter()
                .find(|(t, _)| *t == LinuxNamespaceType::Mount)
                .map(|(_, p)| p.as_path());
            let rootfs = crate::spec::rootfs_path(&spec, &bundle);
            let rootfs = fs::canonicalize(&rootfs)
                .map_err(|e| Error::io(format!("root.path {}", rootfs.display()), e))?;
            Some(SharedMounts::prepare(joined, &rootfs, &mountinfo)?)
        } else {
            None
        };
        let hierarchy = Hierarchy::from_mountinfo(&mountinfo)?;
        let cgroup = Cgroup::new(
            &hierarchy,
            linux.cgroups_path().as_ref().and_then(|p| p.to_str()),
            &opts.id,
        )?;
        let v1_mounts = cgroup_v1_mounts(&hierarchy);
        let own_cgroupns = ns.new_cgroup || joins(LinuxNamespaceType::Cgroup);
        let cgroup_own = (!own_cgroupns).then(|| {
            let dirs = cgroup.paths();
            if hierarchy.is_v2() {
                cgroup
                    .unified_path()
                    .map(|p| vec![(String::new(), p.to_path_buf())])
                    .unwrap_or_default()
            } else {
                v1_mounts
                    .iter()
                    .filter_map(|(name, _, mountpoint)| {
                        dirs.iter()
                            .find(|d| d.starts_with(mountpoint))
                            .map(|d| (name.clone(), d.clone()))
                    })
                    .collect()
            }
        });
        let ctx = crate::mounts::Context {
            bundle: bundle.clone(),
            userns: ns.new_user() || joins(LinuxNamespaceType::User),
            cgroup_v1: v1_mounts
                .into_iter()
                .map(|(name, options, _)| (name, options))
                .collect(),
            cgroup_own,
            rootfs_parent_mount: mount_point_of(
                &mountinfo,
                &crate::spec::rootfs_path(&spec, &bundle),
            ),
            shared_mount_ns: shared_mounts.is_some(),
        };
        let ops = crate::mounts::plan(&spec, &ctx)?;
        crate::log::trace("spec read and planned");
        let after_pivot = crate::mounts::plan_after_pivot(&spec);
        let rootfs = crate::spec::rootfs_path(&spec, &bundle);
        let console = match (prepared.terminal, &opts.console_socket, mode) {
            (false, _, _) => ConsoleTarget::None,
            (true, Some(p), _) => ConsoleTarget::Socket(OwnedFd::from(crate::console::connect(p).map_err(|e| Error::io(format!("--console-socket {}", p.display()), e))?)),
            (true, None, Mode::Run { detach: false }) => ConsoleTarget::Channel,
            (true, None, _) => return Err(Error::Usage("process.terminal is true: --console-socket is required when the runtime does not stay in the foreground".into())),
        };

        // From here on, everything made is undone on failure.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&self.root)
            .map_err(|e| Error::io(format!("creating {}", self.root.display()), e))?;
        let dir = self.root.join(&opts.id);
        match fs::DirBuilder::new().mode(0o711).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::Exists(opts.id.clone()))
            }
            Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
        }
        let mut undo = Undo {
            dir: Some(dir.clone()),
            cgroup: None,
            pids: Vec::new(),
            shared: shared_mounts,
        };
        undo.cgroup = Some(cgroup.clone());
        cgroup.create()?;
        crate::log::trace("cgroup created");

        let start = if mode == Mode::Create {
            let fifo = dir.join(EXEC_FIFO);
            let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())
                .map_err(|_| Error::Usage("state path contains NUL".into()))?;
            // SAFETY: valid C string path.
            if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } < 0 {
                return Err(Error::io(
                    "creating the exec fifo",
                    std::io::Error::last_os_error(),
                ));
            }
            // O_RDWR: opening does not block, and the init (holding it) counts as the reader `start` needs.
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&fifo)
                .map_err(|e| Error::io("opening the exec fifo", e))?;
            StartSignal::Fifo(f)
        } else {
            StartSignal::Channel
        };

        let (channel, child_channel) = Channel::pair().map_err(|e| Error::io("socketpair", e))?;
        let sigmask = block_signals();
        let two_stage = ns.two_stage();
        if two_stage || matches!(mode, Mode::Run { detach: false }) {
            // Processes forked by an intermediate stage become our children when it exits.
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        }
        // A process that starts in our user namespace moves itself into the v1 hierarchies; the
        // unified one is joined at clone time. Only a child born in a new user namespace lacks
        // the rights, and the runtime moves it instead.
        let v1_self = two_stage || !ns.new_user();
        let unified_dir = cgroup.unified_path().and_then(|p| File::open(p).ok());
        let flags = if two_stage { 0 } else { ns.new };
        let (pid, unified_at_clone) = match clone_into(flags, unified_dir.as_ref()) {
            Ok(p) => p,
            Err(e) => {
                restore_signals(&sigmask);
                return Err(e);
            }
        };
        if pid == 0 {
            drop(channel);
            // A host directory must not stay open in the container (CVE-2024-21626).
            drop(unified_dir);
            // A panic in the child must not unwind into the caller's frames, whose
            // destructors would undo the parent's work: the child ends here.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Init {
                    channel: &child_channel,
                    ns: &ns,
                    rootfs,
                    ops,
                    after_pivot,
                    hostname: spec.hostname().clone(),
                    domainname: spec.domainname().clone(),
                    sysctl: linux.sysctl().clone().unwrap_or_default(),
                    hooks: spec.hooks().clone(),
                    process: &prepared,
                    start,
                    console,
                    sigmask,
                    join_cgroup: v1_self.then_some(&cgroup),
                }
                .run(two_stage)
            }));
            // SAFETY: _exit ends the child without running any destructor.
            unsafe { libc::_exit(255) };
        }
        drop(child_channel);
        drop(start);
        drop(console);
        crate::log::trace("cloned");
        undo.pids.push(pid);
        let result = self.finish_launch(
            &spec,
            &bundle,
            &dir,
            &cgroup,
            &ns,
            &channel,
            pid,
            Placement {
                v1_self,
                unified_at_clone,
            },
            opts,
            prepared.terminal && opts.console_socket.is_none(),
            &mut undo,
        );
        match result {
            Ok((record, master)) => {
                undo.disarm();
                Ok(Launched {
                    record,
                    dir,
                    channel,
                    master,
                    sigmask,
                })
            }
            Err(e) => {
                drop(undo);
                restore_signals(&sigmask);
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_launch(
        &self,
        spec: &Spec,
        bundle: &Path,
        dir: &Path,
        cgroup: &Cgroup,
        ns: &namespaces::Plan,
        channel: &Channel,
        pid: i32,
        placement: Placement,
        opts: &CreateOptions,
        console_over_channel: bool,
        undo: &mut Undo,
    ) -> Result<(Record, Option<OwnedFd>), Error> {
        let init_pid = if ns.two_stage() {
            loop {
                match expect(channel, "joining namespaces")? {
                    Msg::Maps => {
                        write_id_maps(pid, spec)?;
                        channel
                            .send(&Msg::Go)
                            .map_err(|e| Error::io("setup channel", e))?;
                    }
                    Msg::Pid(p) => break p,
                    m => return Err(Error::Setup(format!("unexpected setup message {m:?}"))),
                }
            }
        } else {
            if ns.new_user() {
                write_id_maps(pid, spec)?;
            }
            pid
        };
        if init_pid != pid {
            // SAFETY: reaping the intermediate stage, which exits right after reporting.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            undo.pids = vec![init_pid];
        }
        if !placement.v1_self {
            cgroup.add_process(init_pid)?;
        } else if !placement.unified_at_clone {
            cgroup.add_process_unified(init_pid)?;
        }
        let resources = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().clone())
            .unwrap_or_default();
        cgroup.apply(&with_default_devices(&resources))?;
        if let Some(adj) = spec.process().as_ref().and_then(|p| p.oom_score_adj()) {
            fs::write(format!("/proc/{init_pid}/oom_score_adj"), adj.to_string())
                .map_err(|e| Error::Spec(format!("process.oomScoreAdj: {e}")))?;
        }
        channel
            .send(&Msg::Go)
            .map_err(|e| Error::io("setup channel", e))?;
        match expect(channel, "setting up mounts")? {
            Msg::Hooks => {}
            m => return Err(Error::Setup(format!("unexpected setup message {m:?}"))),
        }
        let start_time = state::proc_stat(init_pid).map(|s| s.1).unwrap_or(0);
        let record = Record {
            id: opts.id.clone(),
            pid: init_pid,
            start_time,
            bundle: bundle.to_path_buf(),
            rootfs: crate::spec::rootfs_path(spec, bundle),
            created: state::rfc3339_now(),
            cgroup: cgroup.clone(),
            spec: spec.clone(),
            shared_mounts: undo.shared.clone(),
        };
        let mut creating = record.oci_state(dir);
        creating.status = Status::Creating;
        let hooks = spec.hooks().as_ref();
        hooks::run(hooks, Point::Prestart, &json(&creating))?;
        hooks::run(hooks, Point::CreateRuntime, &json(&creating))?;
        channel
            .send(&Msg::Continue(json(&creating)))
            .map_err(|e| Error::io("setup channel", e))?;
        let master = if console_over_channel {
            Some(
                crate::console::recv_fd(channel.raw())
                    .map_err(|e| Error::io("receiving the container's pty", e))?,
            )
        } else {
            None
        };
        match expect(channel, "finishing setup")? {
            Msg::Ready => {}
            m => return Err(Error::Setup(format!("unexpected setup message {m:?}"))),
        }
        record.save(dir)?;
        crate::log::trace("created");
        if let Some(p) = &opts.pid_file {
            write_pid_file(p, init_pid)?;
        }
        Ok((record, master))
    }

    /// `start`: releases a created container's process.
    pub fn start(&self, id: &str) -> Result<(), Error> {
        let (record, dir) = self.load(id)?;
        let status = record.status(&dir);
        if status != Status::Created {
            return Err(Error::State(format!(
                "container {id} is {status}, not created"
            )));
        }
        let fifo = dir.join(EXEC_FIFO);
        let mut f = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&fifo)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ENXIO) {
                    Error::State(format!("container {id} is not running"))
                } else {
                    Error::io("opening the exec fifo", e)
                }
            })?;
        let before = fs::read_link(format!("/proc/{}/exe", record.pid)).ok();
        f.write_all(b"0")
            .map_err(|e| Error::io("writing the exec fifo", e))?;
        fs::remove_file(&fifo).map_err(|e| Error::io("removing the exec fifo", e))?;
        wait_exec(record.pid, record.start_time, before);
        let state = record.poststart_state(&dir);
        if let Err(e) = hooks::run(
            record.spec.hooks().as_ref(),
            Point::Poststart,
            &json(&state),
        ) {
            warn(e);
        }
        Ok(())
    }

    pub fn state(&self, id: &str) -> Result<OciState, Error> {
        let (record, dir) = self.load(id)?;
        Ok(record.oci_state(&dir))
    }

    /// The full record (spec, cgroup, pid) of a container, for the engine and `exec`.
    pub fn record(&self, id: &str) -> Result<Record, Error> {
        Ok(self.load(id)?.0)
    }

    /// `kill`: signals the init, or with `all` every process in the container's cgroup.
    pub fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), Error> {
        let (record, dir) = self.load(id)?;
        if record.status(&dir) == Status::Stopped {
            return Err(Error::State(format!("container {id} is not running")));
        }
        if all {
            return Ok(record.cgroup.kill_all(signal)?);
        }
        // SAFETY: kill with a pid we verified belongs to the container (start time checked).
        if unsafe { libc::kill(record.pid, signal) } < 0 {
            return Err(Error::io(
                format!("signalling container {id}"),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// `delete`: removes a stopped (or, with `force`, any) container: processes, cgroup, state.
    pub fn delete(&self, id: &str, force: bool) -> Result<(), Error> {
        let dir = self.dir(id)?;
        if !dir.join(state::STATE_FILE).exists() {
            // Forced, a missing container is already deleted (runc agrees; conmon and containerd
            // rely on it to clean up after a failed create). A directory without state is a
            // create that was killed before it wrote its state.
            if force {
                return match fs::remove_dir_all(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(Error::io(format!("removing {}", dir.display()), e))
                    }
                    _ => Ok(()),
                };
            }
            return Err(Error::NotFound(id.to_string()));
        }
        let record = Record::load(&dir)?;
        match record.status(&dir) {
            status @ (Status::Running | Status::Paused) if !force => {
                return Err(Error::State(format!(
                    "container {id} is {status}: stop it first or use --force"
                )))
            }
            Status::Stopped => {}
            _ => {
                let _ = record.cgroup.kill_all(libc::SIGKILL);
                // SAFETY: the pid is verified to be the container's init.
                unsafe { libc::kill(record.pid, libc::SIGKILL) };
            }
        }
        self.destroy(&record, &dir)
    }

    fn destroy(&self, record: &Record, dir: &Path) -> Result<(), Error> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while state::process_alive(record.pid, record.start_time) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Processes exec'd into a container without its own pid namespace outlive the init.
        if record
            .cgroup
            .procs()
            .map(|p| !p.is_empty())
            .unwrap_or(false)
        {
            let _ = record.cgroup.kill_all(libc::SIGKILL);
        }
        if let Some(m) = &record.shared_mounts {
            m.release()?;
        }
        record.cgroup.delete()?;
        let mut state = record.oci_state(dir);
        state.status = Status::Stopped;
        state.pid = 0;
        if let Err(e) = hooks::run(record.spec.hooks().as_ref(), Point::Poststop, &json(&state)) {
            warn(e);
        }
        fs::remove_dir_all(dir).map_err(|e| Error::io(format!("removing {}", dir.display()), e))
    }

    /// Every container under the root.
    pub fn list(&self) -> Result<Vec<OciState>, Error> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(format!("reading {}", self.root.display()), e)),
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            if let Ok(r) = Record::load(&dir) {
                out.push(r.oci_state(&dir));
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// `pause`: freezes every process of a running container.
    pub fn pause(&self, id: &str) -> Result<(), Error> {
        let (record, dir) = self.load(id)?;
        match record.status(&dir) {
            Status::Running => Ok(record.cgroup.freeze(true)?),
            status => Err(Error::State(format!(
                "container {id} is {status}, not running"
            ))),
        }
    }

    /// `resume`: thaws a paused container.
    pub fn resume(&self, id: &str) -> Result<(), Error> {
        let (record, dir) = self.load(id)?;
        match record.status(&dir) {
            Status::Paused => Ok(record.cgroup.freeze(false)?),
            status => Err(Error::State(format!(
                "container {id} is {status}, not paused"
            ))),
        }
    }

    /// The pids of every process in the container's cgroup.
    pub fn pids(&self, id: &str) -> Result<Vec<i32>, Error> {
        let (record, _) = self.load(id)?;
        Ok(record.cgroup.procs()?)
    }

    /// `update`: applies `resources` to a live container's cgroup (fields left out keep their
    /// values) and records them in its state.
    pub fn update(
        &self,
        id: &str,
        resources: &oci_spec::runtime::LinuxResources,
    ) -> Result<(), Error> {
        let (mut record, dir) = self.load(id)?;
        if record.status(&dir) == Status::Stopped {
            return Err(Error::State(format!("container {id} is not running")));
        }
        record.cgroup.apply(resources)?;
        // Merge into the recorded spec, field by field, so `state` and later updates see them.
        let mut linux = record.spec.linux().clone().unwrap_or_default();
        let mut merged = serde_json::to_value(linux.resources().clone().unwrap_or_default())
            .map_err(|e| Error::State(e.to_string()))?;
        merge(
            &mut merged,
            serde_json::to_value(resources).map_err(|e| Error::State(e.to_string()))?,
        );
        linux.set_resources(Some(
            serde_json::from_value(merged).map_err(|e| Error::State(e.to_string()))?,
        ));
        record.spec.set_linux(Some(linux));
        record.save(&dir)
    }

    /// The container's cgroup (to read its usage again and again without this lookup).
    pub fn cgroup(&self, id: &str) -> Result<crate::cgroups::Cgroup, Error> {
        Ok(self.load(id)?.0.cgroup)
    }

    pub fn stats(&self, id: &str) -> Result<Stats, Error> {
        let (record, _) = self.load(id)?;
        Ok(record.cgroup.stats()?)
    }

    /// `exec`: runs another process in a running container, in all its namespaces and its
    /// cgroup. In the foreground returns the exit code; detached, 0 once it started.
    pub fn exec(&self, id: &str, opts: &ExecOptions) -> Result<i32, Error> {
        let (record, dir) = self.load(id)?;
        match record.status(&dir) {
            Status::Stopped => return Err(Error::State(format!("container {id} is not running"))),
            Status::Paused => {
                return Err(Error::State(format!(
                    "container {id} is paused: resume it first"
                )))
            }
            _ => {}
        }
        let seccomp = record
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.seccomp().clone());
        let prepared = Prepared::new(&opts.process, seccomp.as_ref(), opts.preserve_fds)?;
        let mut join = Vec::new();
        for t in namespaces::EXEC_ORDER {
            let theirs = PathBuf::from(format!(
                "/proc/{}/ns/{}",
                record.pid,
                namespaces::proc_name(*t)
            ));
            let ours = PathBuf::from(format!("/proc/self/ns/{}", namespaces::proc_name(*t)));
            let same = match (fs::metadata(&theirs), fs::metadata(&ours)) {
                (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                (Err(e), _) => {
                    return Err(Error::io(
                        format!("container {id} namespace {}", namespaces::proc_name(*t)),
                        e,
                    ))
                }
                _ => true,
            };
            if !same {
                join.push((*t, theirs));
            }
        }
        let ns = namespaces::Plan {
            new: 0,
            new_cgroup: false,
            join,
        };
        let console = match (prepared.terminal, &opts.console_socket, opts.detach) {
            (false, _, _) => ConsoleTarget::None,
            (true, Some(p), _) => ConsoleTarget::Socket(OwnedFd::from(
                crate::console::connect(p)
                    .map_err(|e| Error::io(format!("--console-socket {}", p.display()), e))?,
            )),
            (true, None, false) => ConsoleTarget::Channel,
            (true, None, true) => {
                return Err(Error::Usage(
                    "--tty with --detach needs --console-socket".into(),
                ))
            }
        };
        let console_over_channel = matches!(console, ConsoleTarget::Channel);
        // A container in a shared mount namespace was entered by chroot: joining the namespace
        // is not enough, the process must enter the same root.
        let root = match &record.shared_mounts {
            Some(_) => Some(
                File::options()
                    .read(true)
                    .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
                    .open(format!("/proc/{}/root", record.pid))
                    .map_err(|e| Error::io(format!("container {id}: its root directory"), e))?,
            ),
            None => None,
        };
        let (channel, child_channel) = Channel::pair().map_err(|e| Error::io("socketpair", e))?;
        let sigmask = block_signals();
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let unified_dir = record
            .cgroup
            .unified_path()
            .and_then(|p| File::open(p).ok());
        let (pid, unified_at_clone) = match clone_into(0, unified_dir.as_ref()) {
            Ok(p) => p,
            Err(e) => {
                restore_signals(&sigmask);
                return Err(e);
            }
        };
        if pid == 0 {
            drop(channel);
            // A host directory must not stay open in the container (CVE-2024-21626).
            drop(unified_dir);
            // As in `launch`: a panic ends the child, never unwinds into the caller.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                exec_child(
                    &child_channel,
                    &ns,
                    &record.cgroup,
                    &prepared,
                    console,
                    &sigmask,
                    root,
                )
            }));
            // SAFETY: _exit ends the child without running any destructor.
            unsafe { libc::_exit(255) };
        }
        drop(child_channel);
        drop(console);
        let mut undo = Undo {
            dir: None,
            cgroup: None,
            pids: vec![pid],
            shared: None,
        };
        let started = (|| -> Result<(i32, Option<OwnedFd>), Error> {
            let target = match expect(&channel, "joining the container")? {
                Msg::Pid(p) => p,
                m => return Err(Error::Setup(format!("unexpected setup message {m:?}"))),
            };
            // SAFETY: reaping the intermediate stage.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            undo.pids = vec![target];
            if !unified_at_clone {
                record.cgroup.add_process_unified(target)?;
            }
            channel
                .send(&Msg::Go)
                .map_err(|e| Error::io("setup channel", e))?;
            let master = if console_over_channel {
                Some(
                    crate::console::recv_fd(channel.raw())
                        .map_err(|e| Error::io("receiving the pty", e))?,
                )
            } else {
                None
            };
            // The channel closes when the process execs; an error before that is a failed setup or exec.
            match channel.recv() {
                Ok(None) => {}
                Ok(Some(Msg::Error(e))) => return Err(Error::Setup(e)),
                Ok(Some(m)) => return Err(Error::Setup(format!("unexpected setup message {m:?}"))),
                Err(e) => return Err(Error::io("setup channel", e)),
            }
            if let Some(p) = &opts.pid_file {
                write_pid_file(p, target)?;
            }
            Ok((target, master))
        })();
        let (target, master) = match started {
            Ok(v) => v,
            Err(e) => {
                drop(undo);
                restore_signals(&sigmask);
                return Err(e);
            }
        };
        undo.disarm();
        if opts.detach {
            restore_signals(&sigmask);
            return Ok(0);
        }
        let code = wait_foreground(target, master.as_ref());
        restore_signals(&sigmask);
        Ok(code)
    }
}

/// The child of `exec`: joins the container, forks the process into its pid namespace,
/// reports its pid, and sets it up once the runtime placed it in the cgroup.
fn exec_child(
    channel: &Channel,
    ns: &namespaces::Plan,
    cgroup: &Cgroup,
    p: &Prepared,
    console: ConsoleTarget,
    sigmask: &libc::sigset_t,
    root: Option<File>,
) -> ! {
    let fail = |e: String| -> ! {
        let _ = channel.send(&Msg::Error(e));
        // SAFETY: exiting the child.
        unsafe { libc::_exit(1) }
    };
    // SAFETY: restoring the mask saved before clone.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, sigmask, std::ptr::null_mut()) };
    if !ns.join.iter().any(|(t, _)| *t == LinuxNamespaceType::User) {
        // Until execve, nothing in the container may read our memory or fds through /proc.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    }
    // Still in the host's namespaces: join the container's cgroup first; the process we fork
    // into the container inherits it.
    if let Err(e) = cgroup.join_v1_self() {
        fail(e.to_string());
    }
    if let Err(e) = crate::init::join_namespaces(&ns.join) {
        fail(e);
    }
    if let Some(root) = root {
        // SAFETY: fchdir on an open directory, then chroot to it; valid strings.
        let entered = unsafe {
            libc::fchdir(root.as_raw_fd()) == 0
                && libc::chroot(c".".as_ptr()) == 0
                && libc::chdir(c"/".as_ptr()) == 0
        };
        if !entered {
            fail(format!(
                "entering the container's root: {}",
                std::io::Error::last_os_error()
            ));
        }
        // A host-opened directory must not reach the container's process (CVE-2024-21626).
        drop(root);
    }
    match crate::init::fork() {
        Err(e) => fail(e),
        Ok(0) => {}
        Ok(pid) => {
            let _ = channel.send(&Msg::Pid(pid));
            // SAFETY: the intermediate stage is done.
            unsafe { libc::_exit(0) }
        }
    }
    match channel.recv() {
        Ok(Some(Msg::Go)) => {}
        _ => fail("setup channel: expected go".into()),
    }
    let run = || -> Result<std::ffi::CString, String> {
        crate::init::open_terminal(p, &console, channel)?;
        drop(console);
        let path = p.find_executable().map_err(|e| e.to_string())?;
        p.setup()?;
        Ok(path)
    };
    match run() {
        Ok(path) => fail(p.exec(&path, sigmask)),
        Err(e) => fail(e),
    }
}

/// The device rules every container gets after its own (as runc adds them): mknod of any
/// device, and use of the default device nodes and ptys the runtime creates.
fn with_default_devices(
    res: &oci_spec::runtime::LinuxResources,
) -> oci_spec::runtime::LinuxResources {
    // Deny everything first, so a spec without device rules gets only the defaults.
    let mut rules: Vec<oci_spec::runtime::LinuxDeviceCgroup> =
        serde_json::from_value(serde_json::json!([{"allow": false, "access": "rwm"}]))
            .unwrap_or_default();
    rules.extend(res.devices().iter().flatten().cloned());
    let defaults = [
        ("c", None, None, "m"),
        ("b", None, None, "m"),
        ("c", Some(1), Some(3), "rwm"),
        ("c", Some(1), Some(5), "rwm"),
        ("c", Some(1), Some(7), "rwm"),
        ("c", Some(1), Some(8), "rwm"),
        ("c", Some(1), Some(9), "rwm"),
        ("c", Some(5), Some(0), "rwm"),
        ("c", Some(5), Some(2), "rwm"),
        ("c", Some(136), None, "rwm"),
    ];
    for (typ, major, minor, access) in defaults {
        let rule = serde_json::json!({"allow": true, "type": typ, "major": major, "minor": minor, "access": access});
        if let Ok(r) = serde_json::from_value(rule) {
            rules.push(r);
        }
    }
    let mut out = res.clone();
    out.set_devices(Some(rules));
    out
}

/// sysctls a container may set: only those its own namespaces scope (as runc allows);
/// anything else would change the host.
fn check_sysctl(key: &str, ns: &namespaces::Plan) -> Result<(), Error> {
    let has = |t: LinuxNamespaceType| {
        ns.new & namespaces::flag(t) != 0 || ns.join.iter().any(|(j, _)| *j == t)
    };
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let (needs, what) = if IPC.contains(&key) || key.starts_with("fs.mqueue.") {
        (LinuxNamespaceType::Ipc, "an ipc")
    } else if key.starts_with("net.") {
        (LinuxNamespaceType::Network, "a network")
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        (LinuxNamespaceType::Uts, "a uts")
    } else {
        return Err(Error::Spec(format!(
            "linux.sysctl: {key:?} is not namespaced: setting it would change the host"
        )));
    };
    if key.contains('/') || key.split('.').any(|p| p.is_empty() || p == "..") {
        return Err(Error::Spec(format!("linux.sysctl: invalid key {key:?}")));
    }
    if !has(needs) {
        return Err(Error::Spec(format!(
            "linux.sysctl: {key:?} needs {what} namespace of the container's own"
        )));
    }
    Ok(())
}

/// Waits until `pid` no longer runs the runtime's own binary (it exec'd the container's
/// program) or exited, so poststart hooks run after the program started, as the spec asks.
fn wait_exec(pid: i32, start_time: u64, own: Option<PathBuf>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while state::process_alive(pid, start_time) && Instant::now() < deadline {
        if fs::read_link(format!("/proc/{pid}/exe")).ok() != own {
            return;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Overlays `new` on `base`: objects merge key by key, anything else (incl. null) in `new`
/// that is not null replaces.
fn merge(base: &mut serde_json::Value, new: serde_json::Value) {
    match (base, new) {
        (serde_json::Value::Object(b), serde_json::Value::Object(n)) => {
            for (k, v) in n {
                if v.is_null() {
                    continue;
                }
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, n) => *b = n,
    }
}

fn json(state: &OciState) -> String {
    serde_json::to_string(state).unwrap_or_default()
}

/// Waits for `target` while forwarding signals to it (and proxying the terminal when we hold its
/// pty master). Returns its exit code, 128+n when killed by signal n.
fn wait_foreground(target: i32, master: Option<&OwnedFd>) -> i32 {
    let set = forwarded_signals();
    // SAFETY: signalfd on a valid set; the signals are blocked in this thread.
    let sfd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
    // SAFETY: fresh fd (or -1, checked by callers of poll through revents).
    let sfd = unsafe { File::from_raw_fd(sfd) };
    let _raw = master.and_then(|_| crate::console::RawMode::enter(0));
    if let Some(m) = master {
        if let Some((rows, cols)) = crate::console::get_size(0) {
            let _ = crate::console::set_size(m.as_raw_fd(), rows, cols);
        }
    }
    let mut stdin_open = master.is_some();
    let mut buf = vec![0u8; 16384];
    let mut code = None;
    let mut master_open = master.is_some();
    loop {
        // Reap first: the child may have exited before we started waiting.
        loop {
            let mut status = 0;
            // SAFETY: waitpid with a valid status pointer.
            let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if r <= 0 {
                break;
            }
            if r == target {
                code = Some(if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                });
            }
        }
        if code.is_some() && !master_open {
            break;
        }
        let mut fds = vec![libc::pollfd {
            fd: sfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(m) = master.filter(|_| master_open) {
            fds.push(libc::pollfd {
                fd: m.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if stdin_open && master_open {
            fds.push(libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let timeout = if code.is_some() { 50 } else { -1 };
        // SAFETY: fds is a valid array of pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n == 0 && code.is_some() {
            break;
        }
        if n < 0 {
            continue;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            // SAFETY: signalfd_siginfo is plain data.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            // SAFETY: reading one siginfo into a buffer of its size.
            let r = unsafe {
                libc::read(
                    sfd.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    std::mem::size_of::<libc::signalfd_siginfo>(),
                )
            };
            if r > 0 {
                let sig = info.ssi_signo as i32;
                if sig == libc::SIGWINCH {
                    if let (Some(m), Some((rows, cols))) = (master, crate::console::get_size(0)) {
                        let _ = crate::console::set_size(m.as_raw_fd(), rows, cols);
                    }
                } else if sig != libc::SIGCHLD && code.is_none() {
                    // SAFETY: forwarding a signal to the container process.
                    unsafe { libc::kill(target, sig) };
                }
            }
        }
        for f in fds.iter().skip(1) {
            if f.revents == 0 {
                continue;
            }
            // SAFETY: reading into a valid buffer.
            let r = unsafe { libc::read(f.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if f.fd == 0 {
                if r <= 0 {
                    stdin_open = false;
                } else if let Some(m) = master {
                    // SAFETY: writing bytes we just read.
                    unsafe { libc::write(m.as_raw_fd(), buf.as_ptr().cast(), r as usize) };
                }
            } else if r <= 0 {
                master_open = false;
            } else {
                let _ = std::io::stdout().write_all(&buf[..r as usize]);
                let _ = std::io::stdout().flush();
            }
        }
    }
    code.unwrap_or(255)
}
