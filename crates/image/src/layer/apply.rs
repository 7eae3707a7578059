//! Applying a layer tar into an empty overlayfs "diff" directory, resolving every path inside it.

use std::cell::{Cell, RefCell};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;

use tar::EntryType;

use super::guard;
use super::sys::{self, cstring};
use super::{
    Applied, At, LayerError, OVERLAY_OPAQUE_XATTR, WHITEOUT_META_PREFIX, WHITEOUT_OPAQUE,
    WHITEOUT_PREFIX,
};
use crate::digest::HashingReader;
use crate::Compression;

/// Extracts a layer (a tar, optionally gzip or zstd compressed) into `dest`, an empty directory
/// that becomes an overlayfs "diff" directory: whiteout entries (`.wh.<name>`) become overlayfs
/// whiteouts (a 0/0 character device `<name>`), and `.wh..wh..opq` makes its directory opaque
/// (xattr `trusted.overlay.opaque=y`).
///
/// Streams: decompression, hashing and extraction happen in one pass, with no temporary copy.
/// After the last entry the rest of the stream is read too, so the returned `diff_id` covers the
/// whole uncompressed tar, end-of-archive blocks included.
///
/// Every path is resolved inside `dest` (openat2 RESOLVE_IN_ROOT): absolute paths are taken
/// relative to it, a `..` that would climb above it is an error, a symlink in the layer is
/// followed only within it, and nothing is created, linked or changed through a final symlink.
/// Missing parent directories are created (0755, owned by root). Owners, modes (setuid, setgid
/// and sticky included), mtimes (whole seconds, or the PAX `mtime` record) and the PAX
/// `SCHILY.xattr.*` records are applied; extended attributes are set on regular files and
/// directories only (a symlink or device node has no fd to set them through safely), and
/// `trusted.overlay.*` attributes from the layer are ignored (only whiteout entries may make
/// overlayfs metadata); as with Docker, an attribute the file system does not support or that we
/// may not set (ENOTSUP, EPERM) is skipped. Per the OCI spec a whiteout hides only lower
/// layers: one naming a file this same layer already created leaves that file alone. aufs
/// metadata (`.wh..wh.plnk` and the like) is skipped. Files are written as root: the process
/// needs CAP_CHOWN, CAP_FOWNER, CAP_MKNOD and, for opaque directories, CAP_SYS_ADMIN.
///
/// On error `dest` may be partly filled: the caller removes it.
pub fn apply(
    reader: impl Read,
    compression: Compression,
    dest: &Path,
) -> Result<Applied, LayerError> {
    match compression {
        Compression::None => {
            // The tar reader reads headers 512 bytes at a time.
            let buffered = io::BufReader::with_capacity(64 * 1024, reader);
            apply_stream(buffered, "tar", false, dest)
        }
        Compression::Gzip => apply_stream(
            flate2::read::MultiGzDecoder::new(reader),
            "gzip",
            true,
            dest,
        ),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(reader).map_err(|cause| {
                LayerError::Decompress {
                    format: "zstd",
                    at: At::Start,
                    cause,
                }
            })?;
            apply_stream(decoder, "zstd", true, dest)
        }
    }
}

/// What happened to the (decompressed) stream below the tar reader: lets an error that surfaces
/// through the `tar` crate be told apart as a decoder failure, an early end, or a broken tar.
#[derive(Default)]
struct StreamState {
    failed: RefCell<Option<io::Error>>,
    eof: Cell<bool>,
}

struct Watched<R> {
    inner: R,
    state: Rc<StreamState>,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(0) if !buf.is_empty() => {
                self.state.eof.set(true);
                Ok(0)
            }
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                *self.state.failed.borrow_mut() = Some(e);
                Err(copy)
            }
        }
    }
}

struct Stream {
    format: &'static str,
    compressed: bool,
    state: Rc<StreamState>,
}

impl Stream {
    /// Classifies an error from reading the tar (headers or content) at `at`.
    fn error(&self, at: At, e: io::Error) -> LayerError {
        if let Some(cause) = self.state.failed.borrow_mut().take() {
            if self.compressed {
                LayerError::Decompress {
                    format: self.format,
                    at,
                    cause,
                }
            } else {
                LayerError::Read { at, cause }
            }
        } else if self.state.eof.get() {
            LayerError::Truncated {
                format: self.format,
                at,
            }
        } else {
            LayerError::Tar { at, cause: e }
        }
    }
}

fn apply_stream<R: Read>(
    reader: R,
    format: &'static str,
    compressed: bool,
    dest: &Path,
) -> Result<Applied, LayerError> {
    let dir_err = |cause| LayerError::Dir {
        path: dest.to_path_buf(),
        cause,
    };
    let root = sys::open(
        &cstring(dest.as_os_str().as_bytes()).map_err(dir_err)?,
        libc::O_PATH | libc::O_DIRECTORY,
    )
    .map_err(dir_err)?;
    let state = Rc::new(StreamState::default());
    let stream = Stream {
        format,
        compressed,
        state: state.clone(),
    };
    // The guard refuses oversized PAX and GNU long-name headers before the tar reader reads
    // them whole into memory; it passes every byte on unchanged, so all of them are hashed.
    let mut archive = tar::Archive::new(HashingReader::new(guard::TarGuard::new(
        Watched {
            inner: reader,
            state,
        },
        guard::MAX_META,
    )));
    let mut ex = Extractor {
        root,
        stream,
        dir_times: Vec::new(),
        buf: vec![0; 64 * 1024],
    };
    let mut entries = 0u64;
    let result = (|| {
        let mut iter = archive
            .entries()
            .map_err(|e| ex.stream.error(At::Start, e))?;
        let mut last: Option<String> = None;
        loop {
            let mut entry = match iter.next() {
                None => return Ok(()),
                Some(Ok(entry)) => entry,
                Some(Err(e)) => {
                    let at = last.map_or(At::Start, At::After);
                    return Err(ex.stream.error(at, e));
                }
            };
            entries += 1;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            ex.entry(&mut entry, &name)?;
            last = Some(name);
        }
    })();
    let mut rest = archive.into_inner();
    match result {
        Ok(()) => {}
        Err(LayerError::Tar { at, cause }) if compressed => {
            // Garbage out of a decoder often shows first as a broken tar header; the decoder's
            // own check (gzip CRC, zstd checksum) tells the real story once the stream is read.
            let _ = io::copy(&mut rest, &mut io::sink());
            return Err(match ex.stream.state.failed.borrow_mut().take() {
                Some(cause) => LayerError::Decompress { format, at, cause },
                None => LayerError::Tar { at, cause },
            });
        }
        Err(e) => return Err(e),
    }
    io::copy(&mut rest, &mut io::sink()).map_err(|e| ex.stream.error(At::End, e))?;
    ex.finish()?;
    let (diff_id, size) = rest.finish();
    Ok(Applied {
        diff_id,
        size,
        entries,
    })
}

/// A path inside the layer root, as its components (no `.`, `..` or empty ones).
type Components<'a> = Vec<&'a [u8]>;

/// The components of `raw` with leading `/` and `./`, empty and `.` components dropped and `..`
/// applied; `None` when a `..` would climb above the root.
fn normalize(raw: &[u8]) -> Option<Components<'_>> {
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop()?;
            }
            _ => out.push(c),
        }
    }
    Some(out)
}

fn join(components: &[&[u8]]) -> io::Result<CString> {
    if components.is_empty() {
        return Ok(c".".to_owned());
    }
    cstring(&components.join(&b'/'))
}

fn show(components: &[&[u8]]) -> String {
    String::from_utf8_lossy(&components.join(&b'/')).into_owned()
}

/// The metadata an entry's header and PAX records carry.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: libc::timespec,
    xattrs: Vec<(CString, Vec<u8>)>,
}

/// A PAX time (`1234567890.5`, possibly negative) as seconds and nanoseconds.
fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
    }
    Some(match (neg, nanos) {
        (false, _) => (secs, nanos),
        (true, 0) => (-secs, 0),
        (true, n) => (-secs - 1, 1_000_000_000 - n),
    })
}

struct Extractor {
    /// O_PATH fd of the destination: the root every path is resolved in.
    root: OwnedFd,
    stream: Stream,
    /// Directory mtimes, set at the end (deepest first): later entries change them.
    dir_times: Vec<(Vec<u8>, String, libc::timespec)>,
    buf: Vec<u8>,
}

fn invalid(entry: &str, reason: impl Into<String>) -> LayerError {
    LayerError::Invalid {
        entry: entry.to_string(),
        reason: reason.into(),
    }
}

fn op_err(entry: &str, op: impl Into<String>) -> impl FnOnce(io::Error) -> LayerError + '_ {
    let op = op.into();
    move |cause| LayerError::Entry {
        entry: entry.to_string(),
        op,
        cause,
    }
}

/// A header number field: as Go's archive/tar, a field of only NULs and spaces is 0.
fn number(
    field: &[u8],
    parsed: io::Result<u64>,
    entry: &str,
    what: &str,
) -> Result<u64, LayerError> {
    if field.iter().all(|&b| b == 0 || b == b' ') {
        return Ok(0);
    }
    parsed.map_err(|_| {
        let shown = String::from_utf8_lossy(field);
        invalid(
            entry,
            format!("bad {what} field {:?}", shown.trim_end_matches('\0')),
        )
    })
}

/// A device entry's major and minor numbers (0 where the header has no such fields).
fn device_numbers(header: &tar::Header, entry: &str) -> Result<(u32, u32), LayerError> {
    let (major, minor) = if let Some(h) = header.as_ustar() {
        (&h.dev_major, &h.dev_minor)
    } else if let Some(h) = header.as_gnu() {
        (&h.dev_major, &h.dev_minor)
    } else {
        return Ok((0, 0));
    };
    let parsed = |r: std::io::Result<Option<u32>>| r.map(|n| u64::from(n.unwrap_or(0)));
    let major = number(major, parsed(header.device_major()), entry, "device major")?;
    let minor = number(minor, parsed(header.device_minor()), entry, "device minor")?;
    let fit = |n: u64| {
        u32::try_from(n).map_err(|_| invalid(entry, format!("device number {n} is out of range")))
    };
    Ok((fit(major)?, fit(minor)?))
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

impl Extractor {
    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<(), LayerError> {
        let header = entry.header().clone();
        let kind = header.entry_type();
        if kind == EntryType::XGlobalHeader {
            // Global PAX records (comments, mostly) describe no file.
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let link = entry.link_name_bytes().map(|l| l.into_owned());

        let mut xattrs = Vec::new();
        let mut pax_mtime = None;
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(|e| self.stream.error(At::Entry(name.to_string()), e))?
        {
            for rec in pax {
                let rec = rec.map_err(|_| invalid(name, "malformed PAX record"))?;
                let key = rec.key_bytes();
                if let Some(attr) = key.strip_prefix(b"SCHILY.xattr.") {
                    if attr.starts_with(b"trusted.overlay.") {
                        continue;
                    }
                    let attr = cstring(attr)
                        .map_err(|_| invalid(name, "xattr name contains a NUL byte"))?;
                    xattrs.push((attr, rec.value_bytes().to_vec()));
                } else if key == b"mtime" {
                    pax_mtime = parse_pax_time(rec.value_bytes());
                } else if key.starts_with(b"GNU.sparse.") {
                    return Err(LayerError::Unsupported {
                        entry: name.to_string(),
                        kind: "GNU sparse file (PAX format)".into(),
                    });
                }
            }
        }

        let comps = normalize(&raw).ok_or_else(|| LayerError::Escape {
            entry: name.to_string(),
        })?;

        // aufs metadata at the top (`.wh..wh.plnk/…`, `.wh..wh.aufs`): not part of the tree.
        if let Some(first) = comps.first() {
            let opaque_marker = comps.len() == 1 && *first == WHITEOUT_OPAQUE.as_bytes();
            if first.starts_with(WHITEOUT_META_PREFIX.as_bytes()) && !opaque_marker {
                return Ok(());
            }
        }

        match kind {
            EntryType::GNUSparse => {
                return Err(LayerError::Unsupported {
                    entry: name.to_string(),
                    kind: "GNU sparse file".into(),
                })
            }
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link
            | EntryType::Char
            | EntryType::Block
            | EntryType::Fifo => {}
            other => {
                return Err(LayerError::Unsupported {
                    entry: name.to_string(),
                    kind: format!("type flag {:?}", other.as_byte() as char),
                })
            }
        }

        let old = header.as_old();
        let uid = number(&old.uid, header.uid(), name, "uid")?;
        let gid = number(&old.gid, header.gid(), name, "gid")?;
        let uid =
            u32::try_from(uid).map_err(|_| invalid(name, format!("uid {uid} is out of range")))?;
        let gid =
            u32::try_from(gid).map_err(|_| invalid(name, format!("gid {gid} is out of range")))?;
        let mode = number(&old.mode, header.mode().map(u64::from), name, "mode")? as u32 & 0o7777;
        let (secs, nanos) = match pax_mtime {
            Some(t) => t,
            None => {
                let m = number(&old.mtime, header.mtime(), name, "mtime")?;
                (i64::try_from(m).unwrap_or(i64::MAX), 0)
            }
        };
        let meta = Meta {
            uid,
            gid,
            mode,
            mtime: sys::timespec(secs, nanos),
            xattrs,
        };

        let Some((last, parent_comps)) = comps.split_last() else {
            // The layer root itself.
            let is_dir_entry =
                kind == EntryType::Directory || (kind == EntryType::Regular && raw.ends_with(b"/"));
            if !is_dir_entry {
                return Err(invalid(name, "the layer root can only be a directory"));
            }
            return self.root_dir(&meta, name);
        };

        if last.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(parent_comps, last, &meta, name);
        }

        let fname = cstring(last).map_err(|_| invalid(name, "path contains a NUL byte"))?;
        let parent = self.ensure_dir(parent_comps, name)?;
        let parent = parent.as_fd();

        match kind {
            EntryType::Directory => self.dir(parent, &fname, &comps, &meta, name),
            EntryType::Regular if header.as_old().linkflag[0] == 0 && raw.ends_with(b"/") => {
                // Pre-POSIX tars mark directories with a trailing slash only.
                self.dir(parent, &fname, &comps, &meta, name)
            }
            EntryType::Regular | EntryType::Continuous => {
                let size = entry.size();
                self.regular(parent, &fname, entry, size, &meta, name)
            }
            EntryType::Symlink => {
                let target = link
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| invalid(name, "symlink without a target"))?;
                let target = cstring(&target)
                    .map_err(|_| invalid(name, "symlink target contains a NUL byte"))?;
                clear(parent, &fname, false).map_err(op_err(name, "removing what was there"))?;
                sys::symlinkat(&target, parent, &fname)
                    .map_err(op_err(name, "creating the symlink"))?;
                sys::lchownat(parent, &fname, meta.uid, meta.gid).map_err(op_err(name, "chown"))?;
                sys::lutimensat(parent, &fname, meta.mtime)
                    .map_err(op_err(name, "setting the mtime"))
            }
            EntryType::Link => {
                let target = link.ok_or_else(|| invalid(name, "hardlink without a target"))?;
                self.hardlink(parent, &fname, &target, name)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (ftype, dev) = match kind {
                    EntryType::Fifo => (libc::S_IFIFO, 0),
                    _ => {
                        let (major, minor) = device_numbers(&header, name)?;
                        let ftype = if kind == EntryType::Char {
                            libc::S_IFCHR
                        } else {
                            libc::S_IFBLK
                        };
                        (ftype, libc::makedev(major, minor))
                    }
                };
                clear(parent, &fname, false).map_err(op_err(name, "removing what was there"))?;
                sys::mknodat(parent, &fname, ftype | meta.mode, dev)
                    .map_err(op_err(name, "mknod"))?;
                sys::lchownat(parent, &fname, meta.uid, meta.gid).map_err(op_err(name, "chown"))?;
                sys::lchmodat(parent, &fname, meta.mode).map_err(op_err(name, "chmod"))?;
                sys::lutimensat(parent, &fname, meta.mtime)
                    .map_err(op_err(name, "setting the mtime"))
            }
            _ => Err(LayerError::Unsupported {
                entry: name.to_string(),
                kind: format!("type flag {:?}", kind.as_byte() as char),
            }),
        }
    }

    /// The directory `comps` inside the root (O_PATH), its missing components created 0755.
    /// Symlinks on the way are followed, but only within the root.
    fn ensure_dir(&self, comps: &[&[u8]], entry: &str) -> Result<OwnedFd, LayerError> {
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        let fail = |cause| LayerError::Entry {
            entry: entry.to_string(),
            op: format!("parent directory {:?}", show(comps)),
            cause,
        };
        let path = join(comps).map_err(|_| invalid(entry, "path contains a NUL byte"))?;
        match sys::openat2_in_root(self.root.as_fd(), &path, flags) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(fail(e)),
        }
        let mut cur = sys::openat2_in_root(self.root.as_fd(), c".", flags).map_err(fail)?;
        let mut creating = false;
        for (i, comp) in comps.iter().enumerate() {
            let name = cstring(comp).map_err(fail)?;
            if !creating {
                let prefix = join(&comps[..=i]).map_err(fail)?;
                match sys::openat2_in_root(self.root.as_fd(), &prefix, flags) {
                    Ok(fd) => {
                        cur = fd;
                        continue;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => creating = true,
                    Err(e) => return Err(fail(e)),
                }
            }
            if let Err(e) = sys::mkdirat(cur.as_fd(), &name, 0o755) {
                if e.raw_os_error() == Some(libc::EEXIST) {
                    // Something is there that does not resolve to a directory inside the root:
                    // a symlink leading nowhere (or outside, which is nowhere for us).
                    return Err(fail(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!(
                            "{:?} is a symlink that leads nowhere inside the layer",
                            show(&comps[..=i])
                        ),
                    )));
                }
                return Err(fail(e));
            }
            let made = sys::openat(
                cur.as_fd(),
                &name,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )
            .map_err(fail)?;
            // Exactly 0755, whatever the umask.
            sys::fchmod(made.as_fd(), 0o755).map_err(fail)?;
            cur = made;
        }
        Ok(cur)
    }

    fn root_dir(&mut self, meta: &Meta, name: &str) -> Result<(), LayerError> {
        let fd = sys::openat2_in_root(self.root.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(op_err(name, "opening the layer root"))?;
        set_fd_meta(fd.as_fd(), meta, name)?;
        self.dir_times
            .push((Vec::new(), name.to_string(), meta.mtime));
        Ok(())
    }

    fn dir(
        &mut self,
        parent: BorrowedFd<'_>,
        fname: &CStr,
        comps: &[&[u8]],
        meta: &Meta,
        name: &str,
    ) -> Result<(), LayerError> {
        let exists = clear(parent, fname, true).map_err(op_err(name, "removing what was there"))?;
        if !exists {
            sys::mkdirat(parent, fname, 0o700).map_err(op_err(name, "creating the directory"))?;
        }
        let fd = sys::openat(
            parent,
            fname,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .map_err(op_err(name, "opening the directory"))?;
        set_fd_meta(fd.as_fd(), meta, name)?;
        self.dir_times
            .push((comps.join(&b'/'), name.to_string(), meta.mtime));
        Ok(())
    }

    fn regular<R: Read>(
        &mut self,
        parent: BorrowedFd<'_>,
        fname: &CStr,
        data: &mut R,
        size: u64,
        meta: &Meta,
        name: &str,
    ) -> Result<(), LayerError> {
        clear(parent, fname, false).map_err(op_err(name, "removing what was there"))?;
        let fd = sys::openat(
            parent,
            fname,
            libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_WRONLY,
            0o600,
        )
        .map_err(op_err(name, "creating the file"))?;
        let mut file = File::from(fd);
        let mut written = 0u64;
        loop {
            let n = match data.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.stream.error(At::Entry(name.to_string()), e)),
            };
            file.write_all(&self.buf[..n])
                .map_err(op_err(name, "writing the file"))?;
            written += n as u64;
        }
        if written < size {
            return Err(LayerError::Truncated {
                format: self.stream.format,
                at: At::Entry(name.to_string()),
            });
        }
        set_fd_meta(file.as_fd(), meta, name)?;
        sys::futimens(file.as_fd(), meta.mtime).map_err(op_err(name, "setting the mtime"))
    }

    fn hardlink(
        &mut self,
        parent: BorrowedFd<'_>,
        fname: &CStr,
        target: &[u8],
        name: &str,
    ) -> Result<(), LayerError> {
        let shown = String::from_utf8_lossy(target).into_owned();
        let escape = || LayerError::LinkEscape {
            entry: name.to_string(),
            target: shown.clone(),
        };
        let missing = || LayerError::LinkMissing {
            entry: name.to_string(),
            target: shown.clone(),
        };
        let tcomps = normalize(target).ok_or_else(escape)?;
        let Some((tlast, tparent)) = tcomps.split_last() else {
            return Err(invalid(name, "hardlink to the layer root"));
        };
        let tparent_path =
            join(tparent).map_err(|_| invalid(name, "hardlink target contains a NUL byte"))?;
        let tname =
            cstring(tlast).map_err(|_| invalid(name, "hardlink target contains a NUL byte"))?;
        let tdir = match sys::openat2_in_root(
            self.root.as_fd(),
            &tparent_path,
            libc::O_PATH | libc::O_DIRECTORY,
        ) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Err(missing())
            }
            Err(e) => return Err(op_err(name, "resolving the hardlink target")(e)),
        };
        let tst = sys::lstatat_opt(tdir.as_fd(), &tname)
            .map_err(op_err(name, "resolving the hardlink target"))?
            .ok_or_else(missing)?;
        if is_dir(&tst) {
            return Err(invalid(
                name,
                format!("hardlink target {shown:?} is a directory"),
            ));
        }
        if let Some(st) =
            sys::lstatat_opt(parent, fname).map_err(op_err(name, "inspecting what was there"))?
        {
            if st.st_dev == tst.st_dev && st.st_ino == tst.st_ino {
                return Ok(());
            }
        }
        clear(parent, fname, false).map_err(op_err(name, "removing what was there"))?;
        sys::linkat(tdir.as_fd(), &tname, parent, fname)
            .map_err(op_err(name, "creating the hardlink"))
    }

    fn whiteout(
        &mut self,
        parent_comps: &[&[u8]],
        last: &[u8],
        meta: &Meta,
        name: &str,
    ) -> Result<(), LayerError> {
        if last == WHITEOUT_OPAQUE.as_bytes() {
            let fail = op_err(name, "marking the directory opaque");
            // Created if missing: an opaque directory may list no entry of its own before this one.
            drop(self.ensure_dir(parent_comps, name)?);
            let path = join(parent_comps).map_err(|_| invalid(name, "path contains a NUL byte"))?;
            let dir = match sys::openat2_in_root(
                self.root.as_fd(),
                &path,
                libc::O_RDONLY | libc::O_DIRECTORY,
            ) {
                Ok(fd) => fd,
                Err(e) => return Err(fail(e)),
            };
            return sys::fsetxattr(dir.as_fd(), &xattr_name(OVERLAY_OPAQUE_XATTR), b"y")
                .map_err(fail);
        }
        if last.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
            return Ok(());
        }
        let hidden = &last[WHITEOUT_PREFIX.len()..];
        match hidden {
            b"" | b"." => return Err(invalid(name, "whiteout names no file")),
            b".." => {
                return Err(LayerError::Escape {
                    entry: name.to_string(),
                })
            }
            _ => {}
        }
        let hidden = cstring(hidden).map_err(|_| invalid(name, "path contains a NUL byte"))?;
        let parent = self.ensure_dir(parent_comps, name)?;
        let parent = parent.as_fd();
        if sys::lstatat_opt(parent, &hidden)
            .map_err(op_err(name, "inspecting what was there"))?
            .is_some()
        {
            // Created by this same layer: a whiteout hides only the layers below.
            return Ok(());
        }
        sys::mknodat(parent, &hidden, libc::S_IFCHR, libc::makedev(0, 0))
            .map_err(op_err(name, "creating the whiteout"))?;
        sys::lchownat(parent, &hidden, meta.uid, meta.gid).map_err(op_err(name, "chown"))?;
        sys::lutimensat(parent, &hidden, meta.mtime).map_err(op_err(name, "setting the mtime"))
    }

    /// Sets the directories' mtimes, deepest first; directories replaced since are skipped.
    fn finish(&mut self) -> Result<(), LayerError> {
        let mut times = std::mem::take(&mut self.dir_times);
        times.sort_by_key(|(path, _, _)| {
            std::cmp::Reverse(
                path.iter().filter(|&&b| b == b'/').count() + usize::from(!path.is_empty()),
            )
        });
        for (path, name, time) in times {
            let comps = normalize(&path).unwrap_or_default();
            let Some((last, parent)) = comps.split_last() else {
                sys::lutimensat(self.root.as_fd(), c".", time)
                    .map_err(op_err(&name, "setting the mtime"))?;
                continue;
            };
            let Ok(parent_path) = join(parent) else {
                continue;
            };
            let Ok(last) = cstring(last) else { continue };
            let dir = match sys::openat2_in_root(
                self.root.as_fd(),
                &parent_path,
                libc::O_PATH | libc::O_DIRECTORY,
            ) {
                Ok(fd) => fd,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                    continue
                }
                Err(e) => return Err(op_err(&name, "setting the mtime")(e)),
            };
            match sys::lstatat_opt(dir.as_fd(), &last) {
                Ok(Some(st)) if is_dir(&st) => {}
                _ => continue,
            }
            sys::lutimensat(dir.as_fd(), &last, time)
                .map_err(op_err(&name, "setting the mtime"))?;
        }
        Ok(())
    }
}

fn xattr_name(s: &str) -> CString {
    // The names passed here are constants without NUL bytes.
    CString::new(s).unwrap_or_default()
}

/// Owner, mode and xattrs on an open regular file or directory (chown first: it clears setuid
/// bits and file capabilities).
fn set_fd_meta(fd: BorrowedFd<'_>, meta: &Meta, name: &str) -> Result<(), LayerError> {
    sys::fchown(fd, meta.uid, meta.gid).map_err(op_err(name, "chown"))?;
    sys::fchmod(fd, meta.mode).map_err(op_err(name, "chmod"))?;
    for (attr, value) in &meta.xattrs {
        match sys::fsetxattr(fd, attr, value) {
            Ok(()) => {}
            // The snapshot's file system does not take this kind of xattr, or we may not set it
            // (security.* in a user namespace): as Docker, go on without it.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP | libc::EPERM)) => {}
            Err(e) => {
                return Err(op_err(
                    name,
                    format!("setting xattr {:?}", attr.to_string_lossy()),
                )(e))
            }
        }
    }
    Ok(())
}

/// Makes room for a new entry `name` in `dir`: removes a non-directory, and a directory unless
/// `keep_dir`. Returns whether a directory is (still) there.
fn clear(dir: BorrowedFd<'_>, name: &CStr, keep_dir: bool) -> io::Result<bool> {
    match sys::lstatat_opt(dir, name)? {
        None => Ok(false),
        Some(st) if is_dir(&st) => {
            if keep_dir {
                return Ok(true);
            }
            remove_all(dir, name)?;
            Ok(false)
        }
        Some(_) => {
            sys::unlinkat(dir, name, 0)?;
            Ok(false)
        }
    }
}

/// Removes the directory `name` in `dir` and everything under it, never following a symlink.
fn remove_all(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let dir_flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    let top = sys::openat(dir, name, dir_flags, 0)?;
    let names = sys::read_dir(top.as_fd())?;
    // Each level: its fd, the names still to remove in it, and its own name in the level above.
    let mut stack: Vec<(OwnedFd, Vec<CString>, CString)> = vec![(top, names, name.to_owned())];
    while let Some((fd, names, _)) = stack.last_mut() {
        match names.pop() {
            Some(child) => {
                let Some(st) = sys::lstatat_opt(fd.as_fd(), &child)? else {
                    continue;
                };
                if is_dir(&st) {
                    let sub = sys::openat(fd.as_fd(), &child, dir_flags, 0)?;
                    let sub_names = sys::read_dir(sub.as_fd())?;
                    stack.push((sub, sub_names, child));
                } else {
                    sys::unlinkat(fd.as_fd(), &child, 0)?;
                }
            }
            None => {
                let Some((_, _, own)) = stack.pop() else {
                    break;
                };
                let above = stack.last().map_or(dir, |(fd, _, _)| fd.as_fd());
                sys::unlinkat(above, &own, libc::AT_REMOVEDIR)?;
            }
        }
    }
    Ok(())
}
