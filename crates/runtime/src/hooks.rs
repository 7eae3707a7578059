//! OCI hooks: programs run at lifecycle points with the container's state on stdin.

use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Hooks};

/// A lifecycle point with hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl Point {
    pub fn name(self) -> &'static str {
        match self {
            Point::Prestart => "prestart",
            Point::CreateRuntime => "createRuntime",
            Point::CreateContainer => "createContainer",
            Point::StartContainer => "startContainer",
            Point::Poststart => "poststart",
            Point::Poststop => "poststop",
        }
    }

    #[allow(deprecated)]
    fn list(self, hooks: &Hooks) -> &[Hook] {
        let v = match self {
            Point::Prestart => hooks.prestart(),
            Point::CreateRuntime => hooks.create_runtime(),
            Point::CreateContainer => hooks.create_container(),
            Point::StartContainer => hooks.start_container(),
            Point::Poststart => hooks.poststart(),
            Point::Poststop => hooks.poststop(),
        };
        v.as_deref().unwrap_or(&[])
    }
}

/// Runs every hook of `point` in order, stopping at the first failure.
pub fn run(hooks: Option<&Hooks>, point: Point, state_json: &str) -> Result<(), crate::Error> {
    let Some(hooks) = hooks else { return Ok(()) };
    for (i, hook) in point.list(hooks).iter().enumerate() {
        run_one(hook, state_json).map_err(|e| {
            crate::Error::Hook(format!(
                "hooks.{}[{i}] ({}): {e}",
                point.name(),
                hook.path().display()
            ))
        })?;
    }
    Ok(())
}

fn run_one(hook: &Hook, state_json: &str) -> Result<(), String> {
    let mut cmd = Command::new(hook.path());
    if let Some(args) = hook.args() {
        if let Some((first, rest)) = args.split_first() {
            cmd.arg0(first).args(rest);
        }
    }
    cmd.env_clear();
    for kv in hook.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    // Feed stdin and drain stderr on threads: a hook that does not read its input, or writes
    // more than a pipe holds, must not block us past its timeout.
    let feeder = child.stdin.take().map(|mut stdin| {
        let state = state_json.to_string();
        std::thread::spawn(move || {
            let _ = stdin.write_all(state.as_bytes());
        })
    });
    let drainer = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut e, &mut buf);
            buf
        })
    });
    let deadline = hook
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("timed out after {}s", hook.timeout().unwrap_or(0)));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    if let Some(f) = feeder {
        let _ = f.join();
    }
    // A grandchild the hook left running may hold stderr open: read what is there, don't wait for it.
    let stderr = match drainer {
        Some(d)
            if d.is_finished() || {
                std::thread::sleep(Duration::from_millis(20));
                d.is_finished()
            } =>
        {
            String::from_utf8_lossy(&d.join().unwrap_or_default()).into_owned()
        }
        _ => String::new(),
    };
    if status.success() {
        return Ok(());
    }
    let how = match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (_, Some(s)) => format!("killed by signal {s}"),
        _ => "failed".into(),
    };
    // The tail is what explains a failure; a hook's whole output does not belong in an error.
    let stderr = stderr.trim();
    let stderr = match stderr.char_indices().rev().nth(2000) {
        Some((i, _)) => &stderr[i..],
        None => stderr,
    };
    Err(if stderr.is_empty() {
        how
    } else {
        format!("{how}: {stderr}")
    })
}
