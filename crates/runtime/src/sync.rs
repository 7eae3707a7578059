//! The channel between the runtime and the container's init while it is set up: a
//! SOCK_SEQPACKET socketpair carrying one short message per packet.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A message on the setup channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Runtime → init: you are mapped and in your cgroup, go on.
    Go,
    /// Init → runtime: write my uid/gid maps (two-stage start, new user namespace).
    Maps,
    /// Init (intermediate) → runtime: the container's init has this host pid.
    Pid(i32),
    /// Init → runtime: mounts done, run prestart and createRuntime hooks now.
    Hooks,
    /// Runtime → init: hooks done; carries the state JSON for the container's own hooks.
    Continue(String),
    /// Init → runtime: set up and waiting for start.
    Ready,
    /// Runtime → init: start (used by `run`, which needs no fifo).
    Start,
    /// Init → runtime: setup failed.
    Error(String),
}

impl Msg {
    fn encode(&self) -> String {
        match self {
            Msg::Go => "go".into(),
            Msg::Maps => "maps".into(),
            Msg::Pid(p) => format!("pid:{p}"),
            Msg::Hooks => "hooks".into(),
            Msg::Continue(s) => format!("continue:{s}"),
            Msg::Ready => "ready".into(),
            Msg::Start => "start".into(),
            Msg::Error(e) => format!("error:{e}"),
        }
    }

    fn decode(s: &str) -> Option<Msg> {
        Some(match s {
            "go" => Msg::Go,
            "maps" => Msg::Maps,
            "hooks" => Msg::Hooks,
            "ready" => Msg::Ready,
            "start" => Msg::Start,
            _ => {
                if let Some(p) = s.strip_prefix("pid:") {
                    Msg::Pid(p.parse().ok()?)
                } else if let Some(st) = s.strip_prefix("continue:") {
                    Msg::Continue(st.to_string())
                } else if let Some(e) = s.strip_prefix("error:") {
                    Msg::Error(e.to_string())
                } else {
                    return None;
                }
            }
        })
    }
}

/// One end of the channel.
pub struct Channel(OwnedFd);

impl Channel {
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid array of two ints for socketpair to fill.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds were just created and are owned by nobody else.
        Ok(unsafe {
            (
                Channel(OwnedFd::from_raw_fd(fds[0])),
                Channel(OwnedFd::from_raw_fd(fds[1])),
            )
        })
    }

    pub fn send(&self, msg: &Msg) -> io::Result<()> {
        let s = msg.encode();
        // SAFETY: the buffer is valid for its length; MSG_NOSIGNAL avoids SIGPIPE.
        let r = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                s.as_ptr().cast(),
                s.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The next message; `None` when the other end closed (init exec'd or died).
    pub fn recv(&self) -> io::Result<Option<Msg>> {
        loop {
            // Peek with MSG_TRUNC for the packet's real size, so nothing is cut off.
            // SAFETY: a zero-length peek needs no buffer.
            let size = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_PEEK | libc::MSG_TRUNC,
                )
            };
            if size < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut buf = vec![0u8; size as usize + 1];
            // SAFETY: buf is valid for writes of its length.
            let r =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if r == 0 {
                return Ok(None);
            }
            let s = String::from_utf8_lossy(&buf[..r as usize]);
            return Msg::decode(&s).map(Some).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected setup message {s:?}"),
                )
            });
        }
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
