//! A size limit on the tar headers that the `tar` crate reads whole into memory.
//!
//! `tar::Archive` reads the data of PAX extended headers (type flags `x` and `g`) and of GNU long
//! name and long link entries (`L`, `K`) into a `Vec` sized by the header alone, with no limit: a
//! gzip layer of a few MiB could declare an 8 GiB PAX header and make us allocate 8 GiB.
//! [`TarGuard`] sits below the tar reader and refuses such a header before the tar reader sees it
//! whole. The limit is that of Go's archive/tar (`maxSpecialFileSize`), which Docker and
//! containerd read layers with: a layer they can read has no bigger one.

use std::io::{self, Read};

/// The default limit on the size of PAX extended headers and GNU long names and link names.
pub const MAX_META: u64 = 1 << 20;

const BLOCK: usize = 512;

/// A reader placed between a (decompressed) tar stream and `tar::Archive`: it follows the tar
/// block structure (a 512-byte header, then `ceil(size / 512)` data blocks, …) and fails with an
/// [`io::ErrorKind::InvalidData`] error naming the entry (`tar entry "x": PAX header of 8589934592
/// bytes exceeds the 1 MiB limit`) as soon as a header of type `x`, `g`, `L` or `K` declares more
/// than `max_meta` bytes, before `tar::Archive` can allocate. Everything else passes through
/// unchanged: bytes are read straight into the caller's buffer, and only a header split across
/// reads is kept (at most one 512-byte block).
///
/// To stay in step with `tar::Archive` (0.4), the guard parses size fields exactly as it does
/// (octal, or base-256 when the first byte's high bit is set), applies a PAX `size` record to the
/// entry that follows, and skips the extension blocks of GNU sparse entries. A header whose size
/// field does not parse ends the checking: the tar reader fails on it. All-zero blocks (the end of
/// the archive) pass, and the checking goes on after them, as `tar::Archive::set_ignore_zeros`
/// reads on. The guard fails for good: the read that would complete a refused header fails
/// instead (or returns just the bytes before the header, and the next read fails), and so does
/// every later read.
pub struct TarGuard<R> {
    inner: R,
    max_meta: u64,
    state: State,
    /// The header (or GNU sparse extension block) being read.
    block: [u8; BLOCK],
    /// The `size` record of the last PAX header, for the next entry that is not an extension.
    pax_size: Option<u64>,
    /// The error returned by every read after a header was refused.
    failed: Option<String>,
}

enum State {
    /// Reading a header block; `filled` bytes of it are in `block`.
    Header { filled: usize },
    /// Reading a GNU sparse extension block, then `data` bytes of entry data.
    SparseExt { filled: usize, data: u64 },
    /// Passing `remaining` bytes of entry data and padding; the data of a PAX header is scanned
    /// for its `size` record.
    Data {
        remaining: u64,
        pax: Option<PaxScan>,
    },
    /// Lost step with the archive (a header the tar reader refuses): no more checks.
    Through,
}

/// Where and why a header is refused: its offset in the chunk being inspected, and the message.
struct Refusal {
    at: usize,
    message: String,
}

impl<R: Read> TarGuard<R> {
    /// Guards `inner`, a tar stream positioned at its first header, refusing extension headers
    /// of more than `max_meta` bytes.
    pub fn new(inner: R, max_meta: u64) -> Self {
        TarGuard {
            inner,
            max_meta,
            state: State::Header { filled: 0 },
            block: [0; BLOCK],
            pax_size: None,
            failed: None,
        }
    }

    /// Follows the archive through `chunk`, the bytes just read.
    fn inspect(&mut self, chunk: &[u8]) -> Result<(), Refusal> {
        let mut i = 0;
        while i < chunk.len() {
            match &mut self.state {
                State::Through => return Ok(()),
                State::Header { filled } | State::SparseExt { filled, .. } => {
                    let n = (BLOCK - *filled).min(chunk.len() - i);
                    self.block[*filled..*filled + n].copy_from_slice(&chunk[i..i + n]);
                    *filled += n;
                    i += n;
                    if *filled == BLOCK {
                        // Where the block starts in this chunk; 0 if it began in an earlier one.
                        let start = i.saturating_sub(BLOCK);
                        self.block_done()
                            .map_err(|message| Refusal { at: start, message })?;
                    }
                }
                State::Data { remaining, pax } => {
                    let n =
                        (chunk.len() - i).min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    if let Some(scan) = pax {
                        scan.feed(&chunk[i..i + n]);
                    }
                    *remaining -= n as u64;
                    i += n;
                    if *remaining == 0 {
                        self.data_done();
                    }
                }
            }
        }
        Ok(())
    }

    /// A whole header or sparse extension block is in `block`.
    fn block_done(&mut self) -> Result<(), String> {
        match self.state {
            State::Header { .. } => self.header(),
            State::SparseExt { data, .. } => {
                // GnuExtSparseHeader: 21 sparse entries of 24 bytes, then `isextended`.
                self.state = if self.block[504] == 1 {
                    State::SparseExt { filled: 0, data }
                } else {
                    data_state(data, None)
                };
                if matches!(self.state, State::Data { remaining: 0, .. }) {
                    self.data_done();
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn header(&mut self) -> Result<(), String> {
        let h = &self.block;
        if h.iter().all(|&b| b == 0) {
            // End of archive (or padding the tar reader is told to skip).
            self.state = State::Header { filled: 0 };
            return Ok(());
        }
        let Some(size) = parse_size(&h[124..136]) else {
            self.state = State::Through;
            return Ok(());
        };
        let flag = h[156];
        let what = match flag {
            b'x' => Some("PAX header"),
            b'g' => Some("PAX global header"),
            b'L' => Some("GNU long name"),
            b'K' => Some("GNU long link name"),
            _ => None,
        };
        if let Some(what) = what {
            if size > self.max_meta {
                let name = &h[..100];
                let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                return Err(format!(
                    "tar entry {:?}: {what} of {size} bytes exceeds the {} limit",
                    String::from_utf8_lossy(name),
                    show_limit(self.max_meta)
                ));
            }
        }
        // As tar::Archive: only ustar and GNU headers of type L, K and x describe the next
        // entry (others are entries of their own); a PAX `size` overrides the size field of the
        // next header that is not an extension header itself.
        let magic = &h[257..265];
        let ustar = magic == b"ustar\x0000";
        let gnu = magic == b"ustar  \x00";
        let extension = what.is_some();
        let size = if extension {
            size
        } else {
            self.pax_size.unwrap_or(size)
        };
        if !((ustar || gnu) && matches!(flag, b'x' | b'L' | b'K')) {
            self.pax_size = None;
        }
        let pax = ((ustar || gnu) && flag == b'x').then(|| PaxScan::new(size));
        if size.checked_add(BLOCK as u64 - 1).is_none() {
            // The tar reader fails with "size overflow".
            self.state = State::Through;
            return Ok(());
        }
        // GnuHeader: `isextended` at 482 says sparse extension blocks follow the header.
        self.state = if flag == b'S' && gnu && h[482] == 1 {
            State::SparseExt {
                filled: 0,
                data: size,
            }
        } else {
            data_state(size, pax)
        };
        if matches!(self.state, State::Data { remaining: 0, .. }) {
            self.data_done();
        }
        Ok(())
    }

    /// The data (and padding) of an entry has passed.
    fn data_done(&mut self) {
        if let State::Data {
            pax: Some(scan), ..
        } = &mut self.state
        {
            self.pax_size = scan.finish();
        }
        self.state = State::Header { filled: 0 };
    }
}

fn data_state(size: u64, pax: Option<PaxScan>) -> State {
    // The caller checked that rounding up does not overflow.
    let remaining = size.div_ceil(BLOCK as u64) * BLOCK as u64;
    State::Data { remaining, pax }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(message) = &self.failed {
            return Err(io::Error::new(io::ErrorKind::InvalidData, message.clone()));
        }
        let n = self.inner.read(buf)?;
        match self.inspect(&buf[..n]) {
            Ok(()) => Ok(n),
            Err(Refusal { at, message }) => {
                self.failed = Some(message.clone());
                if at > 0 {
                    // What precedes the refused header still passes; the next read fails.
                    Ok(at)
                } else {
                    Err(io::Error::new(io::ErrorKind::InvalidData, message))
                }
            }
        }
    }
}

/// A header's size field as tar 0.4 reads it: base-256 when the first byte's high bit is set
/// (the last 8 bytes, big-endian), else octal up to the first NUL, surrounding whitespace
/// trimmed. `None` where the tar reader fails too.
fn parse_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let tail: [u8; 8] = field[field.len() - 8..].try_into().ok()?;
        return Some(u64::from_be_bytes(tail));
    }
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let text = std::str::from_utf8(&field[..end]).ok()?;
    u64::from_str_radix(text.trim(), 8).ok()
}

fn show_limit(n: u64) -> String {
    const MIB: u64 = 1 << 20;
    const KIB: u64 = 1 << 10;
    if n >= MIB && n & (MIB - 1) == 0 {
        format!("{} MiB", n / MIB)
    } else if n >= KIB && n & (KIB - 1) == 0 {
        format!("{} KiB", n / KIB)
    } else if n == 1 {
        "1 byte".to_string()
    } else {
        format!("{n} bytes")
    }
}

/// A decimal number read a byte at a time, as `str::parse::<u64>` reads it: an optional leading
/// `+`, then at least one digit, no overflow.
#[derive(Default)]
struct Decimal {
    len: u64,
    plus: bool,
    value: Option<u64>,
    bad: bool,
}

impl Decimal {
    fn push(&mut self, b: u8) {
        self.len += 1;
        if self.bad {
            return;
        }
        if self.len == 1 && b == b'+' {
            self.plus = true;
            return;
        }
        if !b.is_ascii_digit() {
            self.bad = true;
            return;
        }
        let v = self.value.unwrap_or(0);
        match v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
        {
            Some(v) => self.value = Some(v),
            None => self.bad = true,
        }
    }

    fn get(&self) -> Option<u64> {
        if self.bad {
            None
        } else {
            self.value
        }
    }
}

/// Where a PAX record's line is.
#[derive(PartialEq, Eq)]
enum Part {
    Length,
    Key,
    Value,
}

/// Finds the `size` record in the data of a PAX header as it streams past, keeping no more than
/// a few counters: the value tar 0.4 takes from it (`pax_extensions_value`). Records are lines
/// `<length> <key>=<value>` whose length counts the whole line with its newline; the first
/// `size` record counts, and an empty or malformed line before it ends the search with nothing.
struct PaxScan {
    /// Data bytes not yet seen.
    left: u64,
    /// The answer, once known.
    done: Option<Option<u64>>,
    line_len: u64,
    part: Part,
    length: Decimal,
    /// How many bytes of the key match `size` (`None`: it is another key).
    key: Option<usize>,
    value: Decimal,
}

impl PaxScan {
    fn new(size: u64) -> PaxScan {
        PaxScan {
            left: size,
            done: None,
            line_len: 0,
            part: Part::Length,
            length: Decimal::default(),
            key: Some(0),
            value: Decimal::default(),
        }
    }

    /// Data and padding of the PAX header: only the first `left` bytes are data.
    fn feed(&mut self, bytes: &[u8]) {
        let n = bytes
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        self.left -= n as u64;
        for &b in &bytes[..n] {
            if self.done.is_some() {
                return;
            }
            if b == b'\n' {
                self.end_line();
                continue;
            }
            self.line_len += 1;
            match self.part {
                Part::Length if b == b' ' => self.part = Part::Key,
                Part::Length => self.length.push(b),
                Part::Key if b == b'=' => self.part = Part::Value,
                Part::Key => {
                    self.key = self
                        .key
                        .filter(|&k| k < 4 && b == b"size"[k])
                        .map(|k| k + 1);
                }
                Part::Value => {
                    if self.key == Some(4) {
                        self.value.push(b);
                    }
                }
            }
        }
    }

    fn end_line(&mut self) {
        let well_formed = self.line_len > 0
            && self.part == Part::Value
            && self
                .length
                .get()
                .and_then(|l| usize::try_from(l).ok())
                .is_some_and(|l| l as u64 == self.line_len + 1);
        if !well_formed {
            self.done = Some(None);
        } else if self.key == Some(4) {
            self.done = Some(self.value.get());
        }
        self.line_len = 0;
        self.part = Part::Length;
        self.length = Decimal::default();
        self.key = Some(0);
        self.value = Decimal::default();
    }

    /// The `size` record's value, once all the data has passed.
    fn finish(&mut self) -> Option<u64> {
        if self.done.is_none() {
            // The text after the last newline is a line too (an empty one ends the records).
            self.end_line();
        }
        self.done.flatten()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{self, Cursor, Read};

    use tar::{EntryType, Header};

    use super::{State, TarGuard, MAX_META};

    const GIB8: u64 = 8 << 30;

    /// Hands out at most `max` bytes per read and counts what it handed out.
    struct Chunked<R> {
        inner: R,
        max: usize,
        total: u64,
    }

    impl<R: Read> Read for Chunked<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.max);
            let n = self.inner.read(&mut buf[..n])?;
            self.total += n as u64;
            Ok(n)
        }
    }

    /// What came out of a guard, the error that ended it (if any), how much the guard read, and
    /// whether it ended in step with the archive (after a whole entry, no PAX size pending).
    struct Through {
        out: Vec<u8>,
        err: Option<io::Error>,
        read: u64,
        in_step: bool,
    }

    /// Reads `inner` through a guard, `chunk` bytes at a time (the inner reader hands out no more
    /// either).
    fn through<R: Read>(inner: R, chunk: usize, max_meta: u64) -> Through {
        let mut guard = TarGuard::new(
            Chunked {
                inner,
                max: chunk,
                total: 0,
            },
            max_meta,
        );
        let mut out = Vec::new();
        let mut buf = vec![0; chunk];
        let err = loop {
            match guard.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => break Some(e),
            }
            assert!(
                out.len() < 64 << 20,
                "the guard let an endless stream through"
            );
        };
        Through {
            out,
            err,
            read: guard.inner.total,
            in_step: matches!(guard.state, State::Header { filled: 0 }) && guard.pax_size.is_none(),
        }
    }

    const CHUNKS: [usize; 4] = [1, 7, 512, 4096];

    /// A header: `format` is `u` (ustar), `g` (GNU) or `o` (old, pre-POSIX).
    fn header(format: char, flag: u8, name: &str, size: u64) -> Header {
        let mut h = match format {
            'u' => Header::new_ustar(),
            'g' => Header::new_gnu(),
            _ => Header::new_old(),
        };
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_size(size);
        h.set_entry_type(EntryType::new(flag));
        h.set_cksum();
        h
    }

    /// A ustar header with its size field written as given.
    fn raw_size(flag: u8, name: &str, field: &[u8; 12]) -> Header {
        let mut h = header('u', flag, name, 0);
        h.as_old_mut().size = *field;
        h.set_cksum();
        h
    }

    /// A header then its data, padded to whole blocks.
    fn push(out: &mut Vec<u8>, h: &Header, data: &[u8]) {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    fn end(out: &mut Vec<u8>) {
        out.extend_from_slice(&[0; 1024]);
    }

    /// PAX records, each `<length> <key>=<value>\n`.
    fn records(recs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (key, value) in recs {
            let rest = key.len() + value.len() + 3;
            let mut len = rest + 1;
            while rest + len.to_string().len() != len {
                len = rest + len.to_string().len();
            }
            out.extend_from_slice(format!("{len} {key}=").as_bytes());
            out.extend_from_slice(value);
            out.push(b'\n');
        }
        out
    }

    fn pax(out: &mut Vec<u8>, format: char, recs: &[(&str, &[u8])]) {
        let data = records(recs);
        push(
            out,
            &header(format, b'x', "PaxHeaders/f", data.len() as u64),
            &data,
        );
    }

    /// A `x` header declaring 8 GiB: what must never be read whole.
    fn huge() -> Header {
        header('u', b'x', "huge", GIB8)
    }

    /// What tar::Archive makes of `tar`: each entry's path, type flag and content.
    fn list(tar: &[u8]) -> Vec<(String, char, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar);
        let mut out = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let kind = entry.header().entry_type().as_byte() as char;
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.push((path, kind, data));
        }
        out
    }

    fn assert_passes(what: &str, tar: &[u8]) {
        for chunk in CHUNKS {
            let Through {
                out, err, in_step, ..
            } = through(tar, chunk, MAX_META);
            assert!(err.is_none(), "{what}, chunks of {chunk}: {err:?}");
            assert!(out == tar, "{what}, chunks of {chunk}: the bytes changed");
            assert!(in_step, "{what}, chunks of {chunk}: the guard lost step");
        }
        // And the tar reader reads the same entries through the guard.
        let mut archive = tar::Archive::new(TarGuard::new(
            Chunked {
                inner: tar,
                max: 7,
                total: 0,
            },
            MAX_META,
        ));
        let mut n = 0;
        for entry in archive.entries().unwrap() {
            let mut data = Vec::new();
            entry.unwrap().read_to_end(&mut data).unwrap();
            n += 1;
        }
        assert_eq!(n, list(tar).len(), "{what}");
    }

    #[test]
    fn archives_from_tar_builder_pass_unchanged() {
        let long = "d/".repeat(80) + "file-with-a-long-name";
        let target = "t/".repeat(70) + "target";
        let mut b = tar::Builder::new(Vec::new());
        for (name, size) in [("empty", 0), ("one", 1), ("a", 511), ("b", 512), ("c", 513)] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let mut h = Header::new_gnu();
            h.set_size(size as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        let mut h = Header::new_gnu();
        h.set_size(5000);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &[0x55; 5000][..]).unwrap(); // a GNU 'L' entry
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "link", &target).unwrap(); // a GNU 'K' entry
        b.append_pax_extensions([
            ("SCHILY.xattr.user.a", &b"value"[..]),
            ("comment", &[b'c'; 3000][..]),
        ])
        .unwrap();
        let mut h = Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, "with-pax", &b"pax"[..]).unwrap();
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o755);
        b.append_data(&mut h, "dir/", io::empty()).unwrap();
        let tar = b.into_inner().unwrap();

        let entries = list(&tar);
        assert!(entries
            .iter()
            .any(|(p, _, d)| *p == long && d.len() == 5000));
        assert!(tar.chunks(512).any(|h| h[156] == b'L'));
        assert!(tar.chunks(512).any(|h| h[156] == b'K'));
        assert!(tar.chunks(512).any(|h| h[156] == b'x'));
        assert_passes("tar::Builder archive", &tar);
    }

    /// Archives that pass: the guard must follow them as the tar reader does. Each case says
    /// what the tar reader lists (path, type flag, content length).
    #[test]
    fn archives_the_tar_reader_accepts_pass() {
        let fake = huge();
        let fake = fake.as_bytes();
        let with_fake = |n: usize| {
            let mut d = fake.to_vec();
            d.resize(n, 0xaa);
            d
        };
        type Case = (&'static str, Vec<u8>, Vec<(&'static str, char, usize)>);
        let mut cases: Vec<Case> = Vec::new();

        // A PAX size larger than the header's: the fake header is content.
        let mut t = Vec::new();
        pax(&mut t, 'u', &[("size", b"1024")]);
        push(&mut t, &header('u', b'0', "f", 0), &with_fake(1024));
        end(&mut t);
        cases.push(("pax size over the header's", t, vec![("f", '0', 1024)]));

        // With a leading '+', which Rust's u64 parser takes.
        let mut t = Vec::new();
        pax(&mut t, 'u', &[("mtime", b"1.5"), ("size", b"+1024")]);
        push(&mut t, &header('u', b'0', "f", 512), &with_fake(1024));
        end(&mut t);
        cases.push(("pax size with a plus", t, vec![("f", '0', 1024)]));

        // The PAX size skips a GNU long name and applies to the entry after it.
        let long = "n".repeat(300);
        let mut t = Vec::new();
        pax(&mut t, 'u', &[("size", b"1024")]);
        push(
            &mut t,
            &header('g', b'L', "././@LongLink", 301),
            format!("{long}\0").as_bytes(),
        );
        push(&mut t, &header('g', b'0', "short", 0), &with_fake(1024));
        end(&mut t);
        cases.push(("pax size across a long name", t, vec![("nnn", '0', 1024)]));

        // A malformed record before `size`: the tar reader ignores the size.
        let mut t = Vec::new();
        let mut data = b"99 bad=1\n".to_vec();
        data.extend(records(&[("size", b"0")]));
        push(&mut t, &header('u', b'x', "p", data.len() as u64), &data);
        push(&mut t, &header('u', b'0', "f", 1024), &with_fake(1024));
        end(&mut t);
        cases.push(("malformed record first", t, vec![("f", '0', 1024)]));

        // The first `size` record counts.
        let mut t = Vec::new();
        pax(&mut t, 'u', &[("size", b"1024"), ("size", b"0")]);
        push(&mut t, &header('u', b'0', "f", 0), &with_fake(1024));
        end(&mut t);
        cases.push(("two size records", t, vec![("f", '0', 1024)]));

        // A bad size value: ignored.
        let mut t = Vec::new();
        pax(&mut t, 'u', &[("size", b"12x")]);
        push(&mut t, &header('u', b'0', "f", 1024), &with_fake(1024));
        end(&mut t);
        cases.push(("bad size value", t, vec![("f", '0', 1024)]));

        // An old-style header of type x is an entry of its own, not PAX records.
        let mut t = Vec::new();
        pax(&mut t, 'o', &[("size", b"0")]);
        push(&mut t, &header('u', b'0', "f", 1024), &with_fake(1024));
        end(&mut t);
        cases.push((
            "old-style x header",
            t,
            vec![("PaxHeaders/f", 'x', 9), ("f", '0', 1024)],
        ));

        // A global PAX header's size applies to nothing.
        let mut t = Vec::new();
        let data = records(&[("size", b"0")]);
        push(
            &mut t,
            &header('u', b'g', "global", data.len() as u64),
            &data,
        );
        push(&mut t, &header('u', b'0', "f", 1024), &with_fake(1024));
        end(&mut t);
        cases.push((
            "global size record",
            t,
            vec![("global", 'g', 9), ("f", '0', 1024)],
        ));

        // GNU sparse entries: extension blocks come between the header and the data.
        for exts in [1, 2] {
            let mut h = header('g', b'S', "sparse", 512);
            let gnu = h.as_gnu_mut().unwrap();
            gnu.sparse[0].set_offset(0);
            gnu.sparse[0].set_length(512);
            gnu.set_real_size(512);
            gnu.set_is_extended(true);
            h.set_cksum();
            let mut t = h.as_bytes().to_vec();
            for i in 0..exts {
                let mut ext = [0u8; 512];
                ext[504] = u8::from(i + 1 < exts);
                t.extend_from_slice(&ext);
            }
            t.extend_from_slice(fake);
            end(&mut t);
            cases.push((
                if exts == 1 {
                    "sparse, one extension block"
                } else {
                    "sparse, two extension blocks"
                },
                t,
                vec![("sparse", 'S', 512)],
            ));
        }

        // A PAX header of exactly the limit.
        let mut t = Vec::new();
        let value = vec![b'v'; MAX_META as usize - "1048576 comment=\n".len()];
        let data = records(&[("comment", &value)]);
        assert_eq!(data.len() as u64, MAX_META);
        push(&mut t, &header('u', b'x', "p", MAX_META), &data);
        push(&mut t, &header('u', b'0', "f", 2), b"hi");
        end(&mut t);
        cases.push(("pax header at the limit", t, vec![("f", '0', 2)]));

        // Trailing zero blocks after the end.
        let mut t = Vec::new();
        push(&mut t, &header('u', b'0', "f", 2), b"hi");
        end(&mut t);
        end(&mut t);
        cases.push(("extra zero blocks", t, vec![("f", '0', 2)]));

        for (what, tar, want) in cases {
            let got: Vec<(String, char, usize)> = list(&tar)
                .into_iter()
                .map(|(p, k, d)| (p, k, d.len()))
                .collect();
            let want: Vec<(String, char, usize)> = want
                .into_iter()
                .map(|(p, k, n)| {
                    let p = if p == "nnn" {
                        long.clone()
                    } else {
                        p.to_string()
                    };
                    (p, k, n)
                })
                .collect();
            assert_eq!(got, want, "{what}: the tar reader lists");
            assert_passes(what, &tar);
        }
    }

    /// Oversized extension headers, followed by endless zeros: the guard fails on the header
    /// without reading much further, and the tar reader with it.
    #[test]
    fn oversized_extension_headers_fail() {
        let octal_8g = b"100000000000";
        let b256_8g = &[0x80, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0];
        let cases: &[(&str, Header, &str)] = &[
            (
                "x, octal",
                raw_size(b'x', "x", octal_8g),
                r#"tar entry "x": PAX header of 8589934592 bytes exceeds the 1 MiB limit"#,
            ),
            (
                "x, base-256",
                raw_size(b'x', "x", b256_8g),
                r#"tar entry "x": PAX header of 8589934592 bytes exceeds the 1 MiB limit"#,
            ),
            (
                "x, base-256 all ones",
                raw_size(b'x', "x", &[0xff; 12]),
                r#"tar entry "x": PAX header of 18446744073709551615 bytes exceeds the 1 MiB limit"#,
            ),
            (
                "x, one byte over, leading spaces",
                raw_size(b'x', "PaxHeaders.0/f", b"   4000001\0\0"),
                r#"tar entry "PaxHeaders.0/f": PAX header of 1048577 bytes exceeds the 1 MiB limit"#,
            ),
            (
                "g, octal",
                raw_size(b'g', "pax_global_header", octal_8g),
                r#"tar entry "pax_global_header": PAX global header of 8589934592 bytes exceeds the 1 MiB limit"#,
            ),
            (
                "g, base-256",
                raw_size(b'g', "g", b256_8g),
                r#"tar entry "g": PAX global header of 8589934592 bytes exceeds the 1 MiB limit"#,
            ),
            (
                "L, octal",
                raw_size(b'L', "././@LongLink", octal_8g),
                r#"tar entry "././@LongLink": GNU long name of 8589934592 bytes exceeds the 1 MiB limit"#,
            ),
            (
                "L, base-256",
                raw_size(b'L', "././@LongLink", b256_8g),
                r#"tar entry "././@LongLink": GNU long name of 8589934592 bytes exceeds the 1 MiB limit"#,
            ),
            (
                "K, octal",
                raw_size(b'K', "k\u{e9}", octal_8g),
                "tar entry \"k\u{e9}\": GNU long link name of 8589934592 bytes exceeds the 1 MiB limit",
            ),
            (
                "K, base-256, old-style header",
                {
                    let mut h = header('o', b'K', "k", 0);
                    h.as_old_mut().size = *b256_8g;
                    h.set_cksum();
                    h
                },
                r#"tar entry "k": GNU long link name of 8589934592 bytes exceeds the 1 MiB limit"#,
            ),
        ];
        // Each alone, and after a regular entry.
        let mut first = Vec::new();
        push(&mut first, &header('u', b'0', "before", 700), &[1; 700]);
        for (what, h, want) in cases {
            for prefix in [&[][..], &first[..]] {
                for chunk in CHUNKS {
                    let stream = Cursor::new([prefix, h.as_bytes()].concat()).chain(io::repeat(0));
                    let Through { out, err, read, .. } = through(stream, chunk, MAX_META);
                    let err = err.unwrap_or_else(|| panic!("{what}: no error"));
                    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{what}");
                    assert_eq!(err.to_string(), *want, "{what}, chunks of {chunk}");
                    // Everything before the header came out, and no more than part of it.
                    let start = prefix.len();
                    assert!(out.len() >= start && out.len() < start + 512, "{what}");
                    assert!(out[..start] == *prefix, "{what}");
                    assert!(read <= (start + 512 + chunk) as u64, "{what}: read {read}");
                }
                let stream = Cursor::new([prefix, h.as_bytes()].concat()).chain(io::repeat(0));
                let mut archive = tar::Archive::new(TarGuard::new(stream, MAX_META));
                let err = archive
                    .entries()
                    .unwrap()
                    .find_map(|e| e.err())
                    .unwrap_or_else(|| panic!("{what}: the tar reader read it"));
                assert_eq!(err.to_string(), *want, "{what}");
            }
        }
    }

    /// Archives where only following the tar reader's sizes finds the oversized header.
    #[test]
    fn hidden_oversized_headers_fail() {
        let fake = huge();
        let want = r#"tar entry "huge": PAX header of 8589934592 bytes exceeds the 1 MiB limit"#;
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();

        // The PAX size is smaller than the header's: the tar reader reads `huge` as a header.
        let mut t = Vec::new();
        pax(&mut t, 'u', &[("size", b"0")]);
        t.extend_from_slice(header('u', b'0', "f", 512).as_bytes());
        cases.push(("pax size under the header's", t));

        // GNU format PAX header (as some writers make), size 0 with 00 padding digits.
        let mut t = Vec::new();
        pax(&mut t, 'g', &[("size", b"+000")]);
        t.extend_from_slice(header('u', b'0', "f", 1024).as_bytes());
        cases.push(("gnu pax size zero", t));

        // After a sparse entry's extension block.
        let mut h = header('g', b'S', "sparse", 512);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.sparse[0].set_offset(0);
        gnu.sparse[0].set_length(512);
        gnu.set_real_size(512);
        gnu.set_is_extended(true);
        h.set_cksum();
        let mut t = h.as_bytes().to_vec();
        t.extend_from_slice(&[0; 512]); // the extension block
        t.extend_from_slice(&[7; 512]); // the data
        cases.push(("after a sparse entry", t));

        // After end-of-archive blocks (tar::Archive::set_ignore_zeros reads on).
        let mut t = Vec::new();
        end(&mut t);
        cases.push(("after zero blocks", t));

        // The limit is the guard's.
        let mut t = Vec::new();
        push(
            &mut t,
            &header('u', b'L', "././@LongLink", 2000),
            &[b'n'; 2000],
        );
        cases.push(("small limit", t));

        for (what, prefix) in cases {
            let max_meta = if what == "small limit" {
                1024
            } else {
                MAX_META
            };
            let want = if what == "small limit" {
                r#"tar entry "././@LongLink": GNU long name of 2000 bytes exceeds the 1 KiB limit"#
            } else {
                want
            };
            for chunk in CHUNKS {
                let stream =
                    Cursor::new([&prefix[..], fake.as_bytes()].concat()).chain(io::repeat(0));
                let Through { out, err, .. } = through(stream, chunk, max_meta);
                let err = err.unwrap_or_else(|| panic!("{what}: no error"));
                assert_eq!(err.to_string(), *want, "{what}, chunks of {chunk}");
                if what != "small limit" {
                    assert!(out.len() >= prefix.len() && out.len() < prefix.len() + 512);
                }
            }
        }
    }

    #[test]
    fn a_pax_header_one_byte_over_the_limit_fails() {
        let value = vec![b'v'; MAX_META as usize + 1 - "1048577 comment=\n".len()];
        let data = records(&[("comment", &value)]);
        assert_eq!(data.len() as u64, MAX_META + 1);
        let mut t = Vec::new();
        push(&mut t, &header('u', b'x', "p", MAX_META + 1), &data);
        push(&mut t, &header('u', b'0', "f", 2), b"hi");
        end(&mut t);
        let err = through(&t[..], 4096, MAX_META).err;
        assert_eq!(
            err.unwrap().to_string(),
            r#"tar entry "p": PAX header of 1048577 bytes exceeds the 1 MiB limit"#
        );
        let r = through(&t[..], 4096, MAX_META + 1);
        assert!(r.err.is_none() && r.out == t && r.in_step);
    }

    #[test]
    fn errors_stick_and_inner_errors_pass() {
        let stream = Cursor::new(huge().as_bytes().to_vec()).chain(io::repeat(0));
        let mut g = TarGuard::new(stream, MAX_META);
        let mut buf = [0; 4096];
        for _ in 0..3 {
            assert_eq!(
                g.read(&mut buf).unwrap_err().kind(),
                io::ErrorKind::InvalidData
            );
        }

        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "cut"))
            }
        }
        let mut g = TarGuard::new(Failing, MAX_META);
        let e = g.read(&mut buf).unwrap_err();
        assert_eq!(
            (e.kind(), e.to_string()),
            (io::ErrorKind::UnexpectedEof, "cut".into())
        );
    }

    #[test]
    fn an_unparsable_size_passes_through() {
        let mut t = Vec::new();
        t.extend_from_slice(raw_size(b'x', "x", b"12345678901z").as_bytes());
        t.extend_from_slice(huge().as_bytes());
        let r = through(&t[..], 512, MAX_META);
        assert!(r.err.is_none() && r.out == t && !r.in_step);
        assert!(tar::Archive::new(&t[..])
            .entries()
            .unwrap()
            .next()
            .unwrap()
            .is_err());
    }
}
