//! The monitor process, one per container and one per exec (containerd's shim, conmon): it
//! creates the container through the runtime, holds its stdio, writes its log, serves attach
//! clients, reaps it and records how it ended. It outlives the daemon, which finds it again
//! through its socket (live restore).
//!
//! Protocol on `<dir>/shim.sock`: the client writes one JSON request line and reads one reply
//! line (`ok`, `error: …`, or for `wait` the exit JSON). After `attach` the connection carries
//! the streams: output as Docker's multiplexed frames (8-byte header: stream, 0, 0, 0, u32 BE
//! length), raw with a TTY; bytes from the client are the container's stdin, and a half-close
//! closes it (when the container was created with `stdin_once`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::logfile::{self, Rotation};

/// The socket file name in a shim's directory.
pub const SOCKET: &str = "shim.sock";
const CONFIG: &str = "shim.json";
const EXIT: &str = "exit.json";
const CONSOLE: &str = "console.sock";
const PID: &str = "process.pid";

/// What a shim runs: written by the daemon as `shim.json` in the shim's directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimConfig {
    /// The runtime's container ID.
    pub id: String,
    /// The runtime's state root.
    pub runtime_root: PathBuf,
    /// The bundle (container mode).
    pub bundle: PathBuf,
    /// Exec mode: the process to run in the (running) container `id`.
    pub exec: Option<oci_spec::runtime::Process>,
    /// A pseudo-terminal instead of pipes.
    pub tty: bool,
    /// Keep a stdin open for attach clients.
    pub stdin: bool,
    /// Close stdin when the first attached client closes its side.
    pub stdin_once: bool,
    /// The json-file log (container mode).
    pub log: Option<PathBuf>,
    /// Log rotation.
    pub rotation: Rotation,
}

/// How the process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit status, 128+n for signal n; -1 when the shim vanished without recording it.
    pub code: i32,
    /// The OOM killer killed a process of the container.
    pub oom_killed: bool,
    /// RFC 3339.
    pub finished_at: String,
}

/// A request line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Stream the container's stdio over this connection.
    Attach {
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    /// Release the created process (container mode) or start it (exec mode).
    Start,
    /// Set the terminal's size.
    Resize { height: u16, width: u16 },
    /// Reply with the exit JSON when the process ends.
    Wait,
}

// ----- the daemon's side -----------------------------------------------------------------

/// Starts a shim for `config` in `dir` (created here) and waits until it has created the
/// container (container mode) or is listening (exec mode). Returns the shim's pid.
pub fn spawn(exe: &Path, dir: &Path, config: &ShimConfig) -> Result<i32, String> {
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let _ = fs::remove_file(dir.join(EXIT));
    let json = serde_json::to_vec(config).map_err(|e| e.to_string())?;
    crate::fsutil::write_replace(&dir.join(CONFIG), &json, 0o600)
        .map_err(|e| format!("writing {}: {e}", dir.join(CONFIG).display()))?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("shim.log"))
        .map_err(|e| format!("shim log: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("shim")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    // The shim must not inherit the daemon's signal mask or a pending SIGPIPE disposition
    // surprise; it resets what it needs itself.
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting the monitor {}: {e}", exe.display()))?;
    let mut out = child.stdout.take().expect("piped stdout");
    // One line: the pipe itself stays open in the container's process until it execs.
    let read = read_line(&mut out);
    // The first process forks the monitor and exits at once.
    let _ = child.wait();
    let reply = read.map_err(|e| format!("reading the monitor's reply: {e}"))?;
    let line = reply.as_str();
    if let Some(pid) = line.strip_prefix("ok ") {
        return pid
            .trim()
            .parse()
            .map_err(|_| format!("monitor said {line:?}"));
    }
    let err = line.strip_prefix("error: ").unwrap_or(line);
    Err(if err.is_empty() {
        let detail = fs::read_to_string(dir.join("shim.log")).unwrap_or_default();
        format!("the monitor exited without a reply: {}", detail.trim())
    } else {
        err.to_string()
    })
}

fn connect(dir: &Path) -> io::Result<UnixStream> {
    UnixStream::connect(dir.join(SOCKET))
}

/// Reads one `\n`-terminated line without reading past it.
pub fn read_line(s: &mut impl Read) -> io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => {
                line.push(b[0]);
                if line.len() > 64 * 1024 {
                    return Err(io::Error::other("line too long"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Sends a request and returns the connection after an `ok` reply.
pub fn request(dir: &Path, req: &Request) -> Result<UnixStream, String> {
    let mut s = connect(dir).map_err(|e| format!("connecting to the monitor: {e}"))?;
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    s.write_all(&line)
        .map_err(|e| format!("talking to the monitor: {e}"))?;
    let reply = read_line(&mut s).map_err(|e| format!("monitor reply: {e}"))?;
    match reply.as_str() {
        "ok" => Ok(s),
        "" => Err("the monitor closed the connection".into()),
        r => Err(r.strip_prefix("error: ").unwrap_or(r).to_string()),
    }
}

/// Whether a shim answers in `dir`.
pub fn alive(dir: &Path) -> bool {
    connect(dir).is_ok()
}

/// The exit the shim recorded, if it did.
pub fn read_exit(dir: &Path) -> Option<ExitInfo> {
    serde_json::from_slice(&fs::read(dir.join(EXIT)).ok()?).ok()
}

/// Blocks until the process in `dir` ends; `None` when the shim is gone and recorded nothing.
pub fn wait(dir: &Path) -> Option<ExitInfo> {
    if let Ok(mut s) = connect(dir) {
        if s.write_all(b"{\"op\":\"wait\"}\n").is_ok() {
            if let Ok(line) = read_line(&mut s) {
                if let Ok(e) = serde_json::from_str::<ExitInfo>(&line) {
                    return Some(e);
                }
            }
        }
    }
    // The shim is gone (or went while we waited): it writes the exit file before it goes.
    for _ in 0..50 {
        if let Some(e) = read_exit(dir) {
            return Some(e);
        }
        if !alive(dir) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    read_exit(dir)
}

// ----- the shim's side -------------------------------------------------------------------

struct Client {
    stream: UnixStream,
    stdout: bool,
    stderr: bool,
}

struct Shared {
    tty: bool,
    clients: Mutex<Vec<Client>>,
    waiters: Mutex<Vec<UnixStream>>,
    stdin: Mutex<Option<File>>,
    stdin_once: bool,
    master: Option<OwnedFd>,
    log: Option<Mutex<logfile::Writer>>,
    exit: Mutex<Option<ExitInfo>>,
}

impl Shared {
    fn output(&self, stream: u8, data: &[u8]) {
        if let Some(log) = &self.log {
            let _ = log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write(stream, data);
        }
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.retain_mut(|c| {
            let wants = if stream == 2 { c.stderr } else { c.stdout };
            if !wants {
                return true;
            }
            let r = if self.tty {
                c.stream.write_all(data)
            } else {
                let mut frame = Vec::with_capacity(8 + data.len());
                frame.extend_from_slice(&[stream, 0, 0, 0]);
                frame.extend_from_slice(&(data.len() as u32).to_be_bytes());
                frame.extend_from_slice(data);
                c.stream.write_all(&frame)
            };
            r.is_ok()
        });
    }

    fn resize(&self, height: u16, width: u16) -> Result<(), String> {
        match &self.master {
            Some(m) => runtime::console::set_size(m.as_raw_fd(), height, width)
                .map_err(|e| format!("resizing the terminal: {e}")),
            None => Err("the container has no terminal".into()),
        }
    }
}

fn reply(s: &mut UnixStream, r: Result<(), String>) {
    let line = match r {
        Ok(()) => "ok\n".to_string(),
        Err(e) => format!("error: {}\n", e.replace('\n', " ")),
    };
    let _ = s.write_all(line.as_bytes());
}

fn pipe() -> io::Result<(File, File)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    Ok((File::from(r), File::from(w)))
}

/// The container's ends of its stdio and ours.
struct Stdio3 {
    theirs: [OwnedFd; 3],
    stdin: Option<File>,
    stdout: Option<File>,
    stderr: Option<File>,
}

fn make_stdio(cfg: &ShimConfig) -> io::Result<Stdio3> {
    let null = || -> io::Result<OwnedFd> {
        Ok(File::options()
            .read(true)
            .write(true)
            .open("/dev/null")?
            .into())
    };
    if cfg.tty {
        // The terminal arrives through the console socket; stdio stays /dev/null.
        return Ok(Stdio3 {
            theirs: [null()?, null()?, null()?],
            stdin: None,
            stdout: None,
            stderr: None,
        });
    }
    let (in_r, in_w) = if cfg.stdin {
        let (r, w) = pipe()?;
        (OwnedFd::from(r), Some(w))
    } else {
        (null()?, None)
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    Ok(Stdio3 {
        theirs: [in_r, out_w.into(), err_w.into()],
        stdin: in_w,
        stdout: Some(out_r),
        stderr: Some(err_r),
    })
}

/// Runs `f` with fds 0, 1 and 2 set to `fds` (the runtime's child inherits them), then puts
/// /dev/null back.
fn with_stdio<T>(fds: &[OwnedFd; 3], f: impl FnOnce() -> T) -> T {
    for (i, fd) in fds.iter().enumerate() {
        // SAFETY: dup2 onto the standard descriptors; the sources are open fds we own.
        unsafe { libc::dup2(fd.as_raw_fd(), i as RawFd) };
    }
    let r = f();
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        for i in 0..3 {
            // SAFETY: as above.
            unsafe { libc::dup2(null.as_raw_fd(), i) };
        }
    }
    r
}

fn die(ready: &mut Option<File>, msg: &str) -> ! {
    if let Some(r) = ready.as_mut() {
        let _ = writeln!(r, "error: {}", msg.replace('\n', " "));
    }
    eprintln!("berth shim: {msg}");
    std::process::exit(1)
}

/// `berth shim DIR`: the monitor's main. Call it before the process starts any thread.
pub fn main(dir: &Path) -> ! {
    // The first process returns at once to the daemon; the monitor is its child, adopted by
    // init (or the daemon's subreaper) and in its own session, so it outlives the daemon.
    // SAFETY: single-threaded here; the child only continues this function.
    match unsafe { libc::fork() } {
        -1 => {
            println!("error: fork: {}", io::Error::last_os_error());
            std::process::exit(1)
        }
        0 => {}
        _ => std::process::exit(0),
    }
    // The daemon's threads block the signals it handles; the container must not inherit that.
    // SAFETY: sigprocmask with a valid, empty set.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
    // Everything the container leaves behind is reaped here, whoever its parent was.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    // Our stdout is the daemon's reply pipe: keep it aside and give stdio /dev/null.
    // SAFETY: dup of fd 1, which the daemon gave us.
    let ready_fd = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) };
    // SAFETY: ready_fd is a fresh descriptor we own.
    let mut ready = (ready_fd >= 0).then(|| unsafe { File::from_raw_fd(ready_fd) });
    let cfg: ShimConfig = match fs::read(dir.join(CONFIG))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => die(
            &mut ready,
            &format!("reading {}: {e}", dir.join(CONFIG).display()),
        ),
    };
    let rt = runtime::Runtime::new(&cfg.runtime_root);
    let stdio = match make_stdio(&cfg) {
        Ok(s) => s,
        Err(e) => die(&mut ready, &format!("creating stdio pipes: {e}")),
    };
    let _ = fs::remove_file(dir.join(SOCKET));
    let _ = fs::remove_file(dir.join(CONSOLE));
    let console = if cfg.tty {
        match UnixListener::bind(dir.join(CONSOLE)) {
            Ok(l) => Some(l),
            Err(e) => die(&mut ready, &format!("console socket: {e}")),
        }
    } else {
        None
    };
    let console_path = console.as_ref().map(|_| dir.join(CONSOLE));
    let receive_master = |console: &Option<UnixListener>| -> Option<OwnedFd> {
        let l = console.as_ref()?;
        let (s, _) = l.accept().ok()?;
        runtime::console::recv_fd(s.as_raw_fd()).ok()
    };

    let mut master = None;
    if cfg.exec.is_none() {
        let opts = runtime::CreateOptions {
            id: cfg.id.clone(),
            bundle: cfg.bundle.clone(),
            pid_file: None,
            console_socket: console_path.clone(),
            preserve_fds: 0,
        };
        if let Err(e) = with_stdio(&stdio.theirs, || rt.create(&opts)) {
            let _ = rt.delete(&cfg.id, true);
            die(&mut ready, &e.to_string());
        }
        master = receive_master(&console);
    }
    let listener = match UnixListener::bind(dir.join(SOCKET)) {
        Ok(l) => l,
        Err(e) => {
            let _ = rt.delete(&cfg.id, true);
            die(
                &mut ready,
                &format!("binding {}: {e}", dir.join(SOCKET).display()),
            );
        }
    };
    // A daemon that died while we were creating cannot take the answer (EPIPE): nobody will
    // start this container, so undo it.
    if let Some(r) = ready.as_mut() {
        if writeln!(r, "ok {}", std::process::id()).is_err() {
            let _ = rt.delete(&cfg.id, true);
            let _ = fs::remove_file(dir.join(SOCKET));
            std::process::exit(1);
        }
    }
    drop(ready);

    let log = cfg.log.as_ref().and_then(|p| {
        logfile::Writer::open(p, cfg.rotation)
            .map_err(|e| eprintln!("berth shim: log {}: {e}", p.display()))
            .ok()
            .map(Mutex::new)
    });
    let mut early_clients = Vec::new();
    let mut early_waiters = Vec::new();
    let mut pending_resize = None;
    // Before start: attach clients and waiters register, one connection at a time. A
    // container killed meanwhile (removed before it started), or never started, ends here.
    let created_pid = if cfg.exec.is_none() {
        rt.state(&cfg.id).map(|s| s.pid).unwrap_or(0)
    } else {
        0
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    let pid = loop {
        let mut fds = [libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let mut status = 0;
        // Checked on every pass, not only when idle: a client connecting often must not hide
        // that the container went (its engine removed it before it started).
        // SAFETY: waitpid with a valid out pointer, without blocking.
        let gone = created_pid > 0
            && unsafe { libc::waitpid(created_pid, &mut status, libc::WNOHANG) } == created_pid;
        let ready = if gone {
            0
        } else {
            // SAFETY: poll on one valid pollfd.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, 1000) }
        };
        if ready <= 0 {
            if gone || std::time::Instant::now() > deadline {
                let _ = rt.delete(&cfg.id, true);
                finish(
                    dir,
                    &early_waiters,
                    ExitInfo {
                        code: 137,
                        oom_killed: false,
                        finished_at: timefmt::now(),
                    },
                );
            }
            continue;
        }
        let Ok((mut s, _)) = listener.accept() else {
            continue;
        };
        let Some(request) = read_request(&mut s) else {
            continue;
        };
        match request {
            Ok(Request::Attach {
                stdin,
                stdout,
                stderr,
            }) => {
                reply(&mut s, Ok(()));
                early_clients.push((s, stdin, stdout, stderr));
            }
            Ok(Request::Wait) => early_waiters.push(s),
            Ok(Request::Resize { height, width }) => {
                pending_resize = Some((height, width));
                if let Some(m) = &master {
                    let _ = runtime::console::set_size(m.as_raw_fd(), height, width);
                }
                reply(&mut s, Ok(()));
            }
            Ok(Request::Start) => {
                let started = match &cfg.exec {
                    // The pid from before the start: a process that ends at once has none in
                    // its state afterwards.
                    None => rt
                        .start(&cfg.id)
                        .map(|_| created_pid)
                        .map_err(|e| e.to_string()),
                    Some(process) => {
                        let pid_file = dir.join(PID);
                        let _ = fs::remove_file(&pid_file);
                        let opts = runtime::ExecOptions {
                            process: process.clone(),
                            detach: true,
                            pid_file: Some(pid_file.clone()),
                            console_socket: console_path.clone(),
                            preserve_fds: 0,
                        };
                        with_stdio(&stdio.theirs, || rt.exec(&cfg.id, &opts))
                            .map_err(|e| e.to_string())
                            .and_then(|_| {
                                fs::read_to_string(&pid_file)
                                    .ok()
                                    .and_then(|p| p.trim().parse::<i32>().ok())
                                    .ok_or_else(|| "the exec'd process left no pid".to_string())
                            })
                    }
                };
                match started {
                    Ok(pid) => {
                        if cfg.exec.is_some() {
                            master = receive_master(&console);
                            if let (Some(m), Some((h, w))) = (&master, pending_resize) {
                                let _ = runtime::console::set_size(m.as_raw_fd(), h, w);
                            }
                        }
                        reply(&mut s, Ok(()));
                        break pid;
                    }
                    Err(e) => {
                        reply(&mut s, Err(e.clone()));
                        if cfg.exec.is_none() {
                            let _ = rt.delete(&cfg.id, true);
                        }
                        finish(
                            dir,
                            &early_waiters,
                            ExitInfo {
                                code: if e.contains("not found") { 127 } else { 126 },
                                oom_killed: false,
                                finished_at: timefmt::now(),
                            },
                        );
                    }
                }
            }
            Err(e) => reply(&mut s, Err(format!("bad request: {e}"))),
        }
    };
    drop(console);
    let _ = fs::remove_file(dir.join(CONSOLE));
    drop(stdio.theirs);

    let (stdin, reader_fds): (Option<File>, Vec<(u8, File)>) = match &master {
        Some(m) => {
            let dup = |fd: &OwnedFd| fd.try_clone().ok().map(File::from);
            (dup(m), dup(m).map(|f| vec![(1u8, f)]).unwrap_or_default())
        }
        None => {
            let mut v = Vec::new();
            if let Some(f) = stdio.stdout {
                v.push((1u8, f));
            }
            if let Some(f) = stdio.stderr {
                v.push((2u8, f));
            }
            (stdio.stdin, v)
        }
    };
    let shared = Arc::new(Shared {
        tty: cfg.tty,
        clients: Mutex::new(Vec::new()),
        waiters: Mutex::new(early_waiters),
        stdin: Mutex::new(stdin),
        stdin_once: cfg.stdin_once,
        master,
        log,
        exit: Mutex::new(None),
    });
    for (s, stdin, stdout, stderr) in early_clients {
        add_client(&shared, s, stdin, stdout, stderr);
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let mut pumps = 0;
    for (stream, mut f) in reader_fds {
        let shared = shared.clone();
        let done = done_tx.clone();
        pumps += 1;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => shared.output(stream, &buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break, // EIO: the terminal's last holder closed it
                }
            }
            let _ = done.send(());
        });
    }
    {
        let shared = shared.clone();
        std::thread::spawn(move || serve(listener, shared));
    }
    // The monitor idles from here on: what it ran to create and start the container need
    // not stay resident.
    trim_resident();
    let status = reap(pid);
    // Output still in the pipes belongs to the log; an exec's children may hold the pipes
    // open, so do not wait for them forever.
    let grace = if cfg.exec.is_some() { 2 } else { 10 };
    let deadline = std::time::Instant::now() + Duration::from_secs(grace);
    for _ in 0..pumps {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    if let Some(log) = &shared.log {
        let _ = log.lock().unwrap_or_else(|p| p.into_inner()).flush();
    }
    let mut oom_killed = false;
    if cfg.exec.is_none() {
        oom_killed = rt
            .stats(&cfg.id)
            .ok()
            .and_then(|s| s.oom_kill)
            .is_some_and(|n| n > 0);
        if let Err(e) = rt.delete(&cfg.id, true) {
            eprintln!("berth shim: deleting container {}: {e}", cfg.id);
        }
    }
    let info = ExitInfo {
        code: status,
        oom_killed,
        finished_at: timefmt::now(),
    };
    *shared.exit.lock().unwrap_or_else(|p| p.into_inner()) = Some(info.clone());
    // Recorded before the streams close: a client that sees its stream end finds the exit.
    record_exit(dir, &info);
    for c in shared
        .clients
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain(..)
    {
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
    }
    let waiters = std::mem::take(&mut *shared.waiters.lock().unwrap_or_else(|p| p.into_inner()));
    finish(dir, &waiters, info)
}

/// Records the exit, answers the waiters and ends the monitor.
fn finish(dir: &Path, waiters: &[UnixStream], info: ExitInfo) -> ! {
    record_exit(dir, &info);
    let json = serde_json::to_string(&info).unwrap_or_default();
    // The socket goes first, so that a daemon that cannot connect knows the exit is recorded.
    let _ = fs::remove_file(dir.join(SOCKET));
    for mut w in waiters {
        let _ = w.write_all(format!("{json}\n").as_bytes());
    }
    std::process::exit(0)
}

/// Reads a client's request line (a client that says nothing for 10 s is dropped).
fn read_request(s: &mut UnixStream) -> Option<serde_json::Result<Request>> {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let line = read_line(s).ok()?;
    let _ = s.set_read_timeout(None);
    Some(serde_json::from_str(&line))
}

fn record_exit(dir: &Path, info: &ExitInfo) {
    let json = serde_json::to_string(info).unwrap_or_default();
    // The exec root does not outlive a reboot (it is /run): no need to wait for the disk.
    if let Err(e) = crate::fsutil::write_replace(&dir.join(EXIT), json.as_bytes(), 0o600) {
        eprintln!("berth shim: writing the exit file: {e}");
    }
}

fn add_client(shared: &Arc<Shared>, s: UnixStream, stdin: bool, stdout: bool, stderr: bool) {
    // A client that stops reading is dropped rather than stalling the container's output.
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    if stdin {
        if let Ok(mut input) = s.try_clone() {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match input.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut guard = shared.stdin.lock().unwrap_or_else(|p| p.into_inner());
                    match guard.as_mut() {
                        Some(f) => {
                            if f.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        None => break,
                    }
                }
                if shared.stdin_once && !shared.tty {
                    shared
                        .stdin
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take();
                }
            });
        }
    }
    if stdout || stderr {
        shared
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Client {
                stream: s,
                stdout,
                stderr,
            });
    }
}

fn serve(listener: UnixListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let shared = shared.clone();
        std::thread::spawn(move || {
            let Some(request) = read_request(&mut s) else {
                return;
            };
            match request {
                Ok(Request::Attach {
                    stdin,
                    stdout,
                    stderr,
                }) => {
                    reply(&mut s, Ok(()));
                    add_client(&shared, s, stdin, stdout, stderr);
                }
                Ok(Request::Wait) => {
                    let done = shared
                        .exit
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    match done {
                        Some(info) => {
                            let json = serde_json::to_string(&info).unwrap_or_default();
                            let _ = s.write_all(format!("{json}\n").as_bytes());
                        }
                        None => shared
                            .waiters
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(s),
                    }
                }
                Ok(Request::Resize { height, width }) => {
                    let r = shared.resize(height, width);
                    reply(&mut s, r);
                }
                Ok(Request::Start) => reply(&mut s, Err("already started".into())),
                Err(e) => reply(&mut s, Err(format!("bad request: {e}"))),
            }
        });
    }
}

/// Drops the resident pages of read-only file mappings (program text and constants of berth
/// and libc) that were never written: they stay in the page cache and come back on use, so
/// an idle monitor holds only what its loops touch. Mappings with private (copied) pages, such
/// as relocated data, are left alone.
pub fn trim_resident() {
    let Ok(smaps) = fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    let mut current: Option<(usize, usize, bool)> = None;
    let flush = |m: Option<(usize, usize, bool)>| {
        if let Some((start, end, true)) = m {
            // SAFETY: the range is a whole read-only, file-backed mapping of this process with
            // no private pages: dropping its pages only makes later reads fault them in again.
            // Random access: a later fault brings back its page, not the 64 KiB around it.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_RANDOM);
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    };
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                flush(current.take());
                let perms = words.next().unwrap_or("");
                let path = words.nth(3).unwrap_or("");
                let eligible =
                    !perms.contains('w') && perms.ends_with('p') && path.starts_with('/');
                current = Some((start, end, eligible));
                continue;
            }
        }
        if first == "Anonymous:" && words.next() != Some("0") {
            if let Some(c) = current.as_mut() {
                c.2 = false;
            }
        }
    }
    flush(current);
}

/// Reaps children (we are a subreaper) until `pid` ends; returns its exit code.
fn reap(pid: i32) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out pointer.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // No children left: the process was reaped elsewhere; its code is unknown.
            return 255;
        }
        if r == pid {
            if libc::WIFEXITED(status) {
                return libc::WEXITSTATUS(status);
            }
            if libc::WIFSIGNALED(status) {
                return 128 + libc::WTERMSIG(status);
            }
        }
    }
}
