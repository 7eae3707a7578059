//! Container logs in Docker's json-file format: one JSON object per line
//! (`{"log":"…\n","stream":"stdout","time":"…"}`), rotated by size into `path.1`, `path.2`, …
//! The monitor process writes them; the engine reads, filters and follows them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Docker splits messages longer than 16 KiB into partial lines.
const MAX_LINE: usize = 16 * 1024;

/// Rotation settings from `--log-opt max-size=… max-file=…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rotation {
    /// Rotate when the file would grow past this many bytes; 0 = never.
    pub max_size: u64,
    /// How many files to keep, the current one included (at least 1).
    pub max_file: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_size: 0,
            max_file: 1,
        }
    }
}

/// One log entry as stored.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// The text, with its newline when it ended one.
    pub log: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// RFC 3339 with nanoseconds.
    pub time: String,
}

/// Writes one container's log, splitting output into lines per stream and rotating by size.
pub struct Writer {
    path: PathBuf,
    rotation: Rotation,
    file: File,
    size: u64,
    partial: [Vec<u8>; 2],
}

impl Writer {
    /// Opens (appending) the log at `path`.
    pub fn open(path: &Path, rotation: Rotation) -> io::Result<Writer> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Writer {
            path: path.to_path_buf(),
            rotation,
            file,
            size,
            partial: [Vec::new(), Vec::new()],
        })
    }

    /// Adds output of stream 1 (stdout) or 2 (stderr): complete lines are written, a trailing
    /// partial line waits for its newline (or for 16 KiB).
    pub fn write(&mut self, stream: u8, data: &[u8]) -> io::Result<()> {
        let idx = usize::from(stream == 2);
        let mut buf = std::mem::take(&mut self.partial[idx]);
        buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + nl + 1;
            self.entry(stream, &buf[start..end])?;
            start = end;
        }
        while buf.len() - start >= MAX_LINE {
            self.entry(stream, &buf[start..start + MAX_LINE])?;
            start += MAX_LINE;
        }
        buf.drain(..start);
        self.partial[idx] = buf;
        Ok(())
    }

    /// Writes what waits for a newline (at the end of the output).
    pub fn flush(&mut self) -> io::Result<()> {
        for (idx, stream) in [(0usize, 1u8), (1, 2)] {
            let buf = std::mem::take(&mut self.partial[idx]);
            if !buf.is_empty() {
                self.entry(stream, &buf)?;
            }
        }
        Ok(())
    }

    fn entry(&mut self, stream: u8, text: &[u8]) -> io::Result<()> {
        let e = Entry {
            log: String::from_utf8_lossy(text).into_owned(),
            stream: if stream == 2 { "stderr" } else { "stdout" }.to_string(),
            time: timefmt::now(),
        };
        let mut line = serde_json::to_vec(&e).map_err(io::Error::other)?;
        line.push(b'\n');
        if self.rotation.max_size > 0
            && self.size > 0
            && self.size + line.len() as u64 > self.rotation.max_size
        {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let keep = self.rotation.max_file.max(1);
        if keep > 1 {
            for n in (1..keep).rev() {
                let from = rotated(&self.path, n - 1);
                if from.exists() {
                    fs::rename(&from, rotated(&self.path, n))?;
                }
            }
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
        } else {
            self.file.set_len(0)?;
            self.file.seek(SeekFrom::Start(0))?;
        }
        self.size = 0;
        Ok(())
    }
}

/// The path of the `n`th file of a log (0 = the current one).
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    if n == 0 {
        path.to_path_buf()
    } else {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }
}

/// What `logs` asks for.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only entries at or after this time (ns since the epoch).
    pub since: Option<i128>,
    /// Only entries before this time (ns since the epoch).
    pub until: Option<i128>,
    /// Only the last `n` entries (of those the time filters keep).
    pub tail: Option<usize>,
    /// Keep reading as the container writes, until it stops.
    pub follow: bool,
    /// Include stdout / stderr.
    pub stdout: bool,
    /// Include stderr.
    pub stderr: bool,
}

/// Reads a container's log from the oldest rotated file to the current one and passes each
/// matching entry to `out`. Following, it waits for new entries (surviving rotation) until
/// `running()` turns false and everything written is read.
pub fn read(
    path: &Path,
    max_file: u32,
    q: &Query,
    running: &dyn Fn() -> bool,
    out: &mut dyn FnMut(&Entry) -> io::Result<()>,
) -> io::Result<()> {
    let wanted = |e: &Entry| -> bool {
        let stream_ok = match e.stream.as_str() {
            "stderr" => q.stderr,
            _ => q.stdout,
        };
        if !stream_ok {
            return false;
        }
        if q.since.is_some() || q.until.is_some() {
            let t = timefmt::parse_rfc3339(&e.time).unwrap_or(0);
            if q.since.is_some_and(|s| t < s) || q.until.is_some_and(|u| t >= u) {
                return false;
            }
        }
        true
    };
    // Past entries: read every file, keeping only the tail when one is asked for.
    let mut tail: std::collections::VecDeque<Entry> = Default::default();
    let mut current: Option<(BufReader<File>, u64)> = None;
    for n in (0..max_file.max(1)).rev() {
        let p = rotated(path, n);
        let Ok(f) = File::open(&p) else { continue };
        let ino = f.metadata()?.ino();
        let mut r = BufReader::new(f);
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                break;
            }
            if !line.ends_with('\n') {
                // A line being written: read it again when following.
                let back = line.len() as i64;
                r.seek_relative(-back)?;
                break;
            }
            let Ok(e) = serde_json::from_str::<Entry>(&line) else {
                continue;
            };
            if !wanted(&e) {
                continue;
            }
            match q.tail {
                Some(0) => {}
                Some(t) => {
                    if tail.len() == t {
                        tail.pop_front();
                    }
                    tail.push_back(e);
                }
                None => out(&e)?,
            }
        }
        if n == 0 {
            current = Some((r, ino));
        }
    }
    for e in tail.drain(..) {
        out(&e)?;
    }
    if !q.follow {
        return Ok(());
    }
    let mut line = String::new();
    let mut drain = |r: &mut BufReader<File>, line: &mut String| -> io::Result<bool> {
        let mut progressed = false;
        loop {
            let n = r.read_line(line)?;
            if n == 0 || !line.ends_with('\n') {
                return Ok(progressed);
            }
            progressed = true;
            if let Ok(e) = serde_json::from_str::<Entry>(line) {
                if wanted(&e) {
                    out(&e)?;
                }
            }
            line.clear();
        }
    };
    loop {
        let alive = running();
        let mut progressed = false;
        if let Some((r, _)) = current.as_mut() {
            progressed = drain(r, &mut line)?;
        }
        // Rotated away: switch to the new current file once the old one is drained (again:
        // the writer may have added to it between our read and its rename).
        let now_ino = fs::metadata(path).ok().map(|m| m.ino());
        let stale = match (&current, now_ino) {
            (Some((_, ino)), Some(now)) => *ino != now,
            (None, Some(_)) => true,
            _ => false,
        };
        if stale {
            if let Some((r, _)) = current.as_mut() {
                drain(r, &mut line)?;
            }
            // The file after ours: one step newer than where ours went, or, when ours is gone
            // (rotated out), the oldest one left.
            let old = current.as_ref().map(|(_, ino)| *ino);
            let ino_at = |n: u32| fs::metadata(rotated(path, n)).ok().map(|m| m.ino());
            let next = match (1..max_file.max(1)).find(|&n| old.is_some() && ino_at(n) == old) {
                Some(k) => k - 1,
                None => (0..max_file.max(1))
                    .rev()
                    .find(|&n| ino_at(n).is_some())
                    .unwrap_or(0),
            };
            if let Ok(f) = File::open(rotated(path, next)) {
                let ino = f.metadata()?.ino();
                current = Some((BufReader::new(f), ino));
                line.clear();
                continue;
            }
        }
        // A truncating rotation (max-file=1): start over at the beginning.
        if let Some((r, _)) = current.as_mut() {
            let len = r.get_ref().metadata()?.len();
            if r.stream_position()? > len {
                r.seek(SeekFrom::Start(0))?;
                line.clear();
                continue;
            }
        }
        if !alive && !progressed {
            return Ok(());
        }
        if !progressed {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(path: &Path, max_file: u32, q: &Query) -> Vec<(String, String)> {
        let mut v = Vec::new();
        read(path, max_file, q, &|| false, &mut |e| {
            v.push((e.stream.clone(), e.log.clone()));
            Ok(())
        })
        .unwrap();
        v
    }

    fn all() -> Query {
        Query {
            stdout: true,
            stderr: true,
            ..Default::default()
        }
    }

    #[test]
    fn lines_split_per_stream_and_partial_lines_wait() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c-json.log");
        let mut w = Writer::open(&p, Rotation::default()).unwrap();
        w.write(1, b"hel").unwrap();
        w.write(2, b"oops\n").unwrap();
        w.write(1, b"lo\nwor").unwrap();
        w.flush().unwrap();
        let got = collect(&p, 1, &all());
        assert_eq!(
            got,
            vec![
                ("stderr".into(), "oops\n".into()),
                ("stdout".into(), "hello\n".into()),
                ("stdout".into(), "wor".into()),
            ]
        );
        let text = fs::read_to_string(&p).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["stream"], "stderr");
        assert!(timefmt::parse_rfc3339(first["time"].as_str().unwrap()).is_some());
        let only_err = Query {
            stdout: false,
            ..all()
        };
        assert_eq!(collect(&p, 1, &only_err).len(), 1);
    }

    #[test]
    fn rotation_keeps_max_file_files_and_reads_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c-json.log");
        let rot = Rotation {
            max_size: 200,
            max_file: 3,
        };
        let mut w = Writer::open(&p, rot).unwrap();
        for i in 0..40 {
            w.write(1, format!("line {i}\n").as_bytes()).unwrap();
        }
        assert!(rotated(&p, 2).exists() && !rotated(&p, 3).exists());
        for n in 0..3 {
            assert!(fs::metadata(rotated(&p, n)).unwrap().len() <= 200);
        }
        let got = collect(&p, 3, &all());
        assert_eq!(got.last().unwrap().1, "line 39\n");
        let nums: Vec<u32> = got
            .iter()
            .map(|(_, l)| l.trim().strip_prefix("line ").unwrap().parse().unwrap())
            .collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");
        let tail = collect(
            &p,
            3,
            &Query {
                tail: Some(2),
                ..all()
            },
        );
        assert_eq!(tail.len(), 2);
        assert_eq!(tail[0].1, "line 38\n");
    }

    #[test]
    fn follow_continues_across_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c-json.log");
        let rot = Rotation {
            max_size: 300,
            max_file: 3,
        };
        let mut w = Writer::open(&p, rot).unwrap();
        w.write(1, b"first\n").unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let done = done.clone();
            std::thread::spawn(move || {
                for i in 0..30 {
                    w.write(1, format!("more {i}\n").as_bytes()).unwrap();
                    std::thread::sleep(Duration::from_millis(25));
                }
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            })
        };
        let mut seen = Vec::new();
        let q = Query {
            follow: true,
            ..all()
        };
        read(
            &p,
            3,
            &q,
            &|| !done.load(std::sync::atomic::Ordering::SeqCst),
            &mut |e| {
                seen.push(e.log.clone());
                Ok(())
            },
        )
        .unwrap();
        writer.join().unwrap();
        assert_eq!(seen.first().unwrap(), "first\n");
        assert_eq!(seen.last().unwrap(), "more 29\n");
        assert_eq!(seen.len(), 31, "{seen:?}");
    }
}
