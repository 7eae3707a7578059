//! Producing layer tars, deterministically: from an overlayfs upper directory ([`diff`]) or from a
//! plain directory tree ([`tar_dir`]).

use std::collections::HashMap;
use std::ffi::CString;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::sys::{self, cstring};
use super::{LayerError, OVERLAY_OPAQUE_XATTR, WHITEOUT_OPAQUE, WHITEOUT_PREFIX};
use crate::digest::{Digest, HashingWriter};

/// Writes the changes in an overlayfs upper directory as a layer tar (uncompressed) to `out`:
/// overlay whiteouts (0/0 character devices) become `.wh.<name>` entries and opaque directories
/// (xattr `trusted.overlay.opaque=y`) get a `.wh..wh..opq` entry right after their own.
///
/// Deterministic: names are walked in byte order and headers have a fixed format (ustar, with
/// PAX records only for long names and link targets, large ids and sizes, and xattrs; empty
/// user and group names, whole-second mtimes), so the same change gives the same diff id.
/// Entries: regular files, directories (with a trailing `/`), symlinks, hardlinks (the second
/// path of an inode becomes a link to the first), devices and fifos, with uid, gid, mode and
/// mtime; the extended attributes of regular files and directories as PAX `SCHILY.xattr.*`
/// records, except `trusted.overlay.*`. Sockets are skipped, and so is the top directory itself.
/// An upper directory holding overlayfs metacopy or redirect files (mounts with `metacopy=on` or
/// `redirect_dir=on`) is refused: their content lives in the lower layers.
///
/// Returns the diff id (sha256 of the tar) and its size in bytes.
pub fn diff(upper: &Path, out: impl Write) -> Result<(Digest, u64), LayerError> {
    write_tree(upper, out, true)
}

/// Builds a layer tar (uncompressed) from a plain directory tree, e.g. for `image import` of a
/// root file system: the same as [`diff`], but character devices 0/0 stay devices and no
/// directory is opaque.
pub fn tar_dir(dir: &Path, out: impl Write) -> Result<(Digest, u64), LayerError> {
    write_tree(dir, out, false)
}

const BLOCK: usize = 512;
/// The largest value a ustar uid/gid field holds in octal.
const MAX_OCTAL_ID: u64 = 0o7777777;
/// The largest value a ustar size field holds in octal.
const MAX_OCTAL_SIZE: u64 = 0o77777777777;

/// One directory being walked: its fd, its path in the layer (with a trailing `/`, empty for the
/// top), and the names still to visit, sorted with the first to visit last.
struct Level {
    fd: OwnedFd,
    prefix: Vec<u8>,
    names: Vec<CString>,
}

fn sorted_names(fd: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    let mut names = sys::read_dir(fd)?;
    names.sort_unstable_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
    Ok(names)
}

fn write_tree<W: Write>(top: &Path, out: W, overlay: bool) -> Result<(Digest, u64), LayerError> {
    let dir_err = |cause| LayerError::Dir {
        path: top.to_path_buf(),
        cause,
    };
    let root = sys::open(
        &cstring(top.as_os_str().as_bytes()).map_err(dir_err)?,
        libc::O_RDONLY | libc::O_DIRECTORY,
    )
    .map_err(dir_err)?;
    let mut w = TarWriter {
        out: HashingWriter::new(BufWriter::with_capacity(128 * 1024, out)),
        buf: vec![0; 64 * 1024],
    };
    let source_err = |path: &[u8], op: &str| {
        let path = top.join(Path::new(std::ffi::OsStr::from_bytes(path)));
        let op = op.to_string();
        move |cause| LayerError::Source { path, op, cause }
    };

    if overlay {
        let (_, opaque) = xattrs(root.as_fd(), true).map_err(|e| e.at(top.to_path_buf()))?;
        if opaque {
            let st = sys::fstat(root.as_fd()).map_err(source_err(b"", "stat"))?;
            w.entry(
                &Entry::new(WHITEOUT_OPAQUE.as_bytes().to_vec(), EntryType::Regular, &st)
                    .mode(st.st_mode & 0o777),
            )?;
        }
    }

    let names = sorted_names(root.as_fd()).map_err(source_err(b"", "reading the directory"))?;
    let mut stack = vec![Level {
        fd: root,
        prefix: Vec::new(),
        names,
    }];
    let mut inodes: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    while let Some(level) = stack.last_mut() {
        let Some(name) = level.names.pop() else {
            stack.pop();
            continue;
        };
        let dirfd = level.fd.as_fd();
        let mut rel = level.prefix.clone();
        rel.extend_from_slice(name.as_bytes());
        let st = match sys::lstatat(dirfd, &name) {
            Ok(st) => st,
            // Gone since the directory was read.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(source_err(&rel, "stat")(e)),
        };
        let ftype = st.st_mode & libc::S_IFMT;
        if ftype == libc::S_IFSOCK {
            continue;
        }
        if ftype == libc::S_IFDIR {
            let fd = sys::openat(
                dirfd,
                &name,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )
            .map_err(source_err(&rel, "opening the directory"))?;
            let st = sys::fstat(fd.as_fd()).map_err(source_err(&rel, "stat"))?;
            let (attrs, opaque) = xattrs(fd.as_fd(), overlay)
                .map_err(|e| e.at(top.join(std::ffi::OsStr::from_bytes(&rel))))?;
            let mut path = rel.clone();
            path.push(b'/');
            w.entry(&Entry::new(path.clone(), EntryType::Directory, &st).xattrs(attrs))?;
            if opaque {
                let mut marker = path.clone();
                marker.extend_from_slice(WHITEOUT_OPAQUE.as_bytes());
                w.entry(&Entry::new(marker, EntryType::Regular, &st).mode(st.st_mode & 0o777))?;
            }
            let names =
                sorted_names(fd.as_fd()).map_err(source_err(&rel, "reading the directory"))?;
            stack.push(Level {
                fd,
                prefix: path,
                names,
            });
            continue;
        }
        if overlay && ftype == libc::S_IFCHR && st.st_rdev == 0 {
            // An overlayfs whiteout.
            let mut path = level.prefix.clone();
            path.extend_from_slice(WHITEOUT_PREFIX.as_bytes());
            path.extend_from_slice(name.as_bytes());
            w.entry(&Entry::new(path, EntryType::Regular, &st).mode(0o600))?;
            continue;
        }
        if st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = inodes.get(&key) {
                let mut e = Entry::new(rel, EntryType::Link, &st);
                e.link = Some(first.clone());
                w.entry(&e)?;
                continue;
            }
            inodes.insert(key, rel.clone());
        }
        match ftype {
            libc::S_IFREG => {
                // O_NONBLOCK: should a fifo have taken the file's place, opening it must not hang.
                let fd = sys::openat(
                    dirfd,
                    &name,
                    libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
                    0,
                )
                .map_err(source_err(&rel, "opening the file"))?;
                let st = sys::fstat(fd.as_fd()).map_err(source_err(&rel, "stat"))?;
                if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                    return Err(LayerError::Unrepresentable {
                        path: top.join(std::ffi::OsStr::from_bytes(&rel)),
                        reason: "changed while the layer was written".into(),
                    });
                }
                let (attrs, _) = xattrs(fd.as_fd(), overlay)
                    .map_err(|e| e.at(top.join(std::ffi::OsStr::from_bytes(&rel))))?;
                let mut e = Entry::new(rel.clone(), EntryType::Regular, &st).xattrs(attrs);
                e.size = st.st_size as u64;
                w.entry(&e)?;
                w.content(
                    std::fs::File::from(fd),
                    e.size,
                    &top.join(std::ffi::OsStr::from_bytes(&rel)),
                )?;
            }
            libc::S_IFLNK => {
                let target = sys::readlinkat(dirfd, &name)
                    .map_err(source_err(&rel, "reading the symlink"))?;
                let mut e = Entry::new(rel, EntryType::Symlink, &st);
                e.link = Some(target);
                w.entry(&e)?;
            }
            libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO => {
                let kind = match ftype {
                    libc::S_IFCHR => EntryType::Char,
                    libc::S_IFBLK => EntryType::Block,
                    _ => EntryType::Fifo,
                };
                let mut e = Entry::new(rel, kind, &st);
                if ftype != libc::S_IFIFO {
                    e.dev = Some((libc::major(st.st_rdev), libc::minor(st.st_rdev)));
                }
                w.entry(&e)?;
            }
            _ => {
                return Err(LayerError::Unrepresentable {
                    path: top.join(std::ffi::OsStr::from_bytes(&rel)),
                    reason: format!("unknown file type {ftype:o}"),
                })
            }
        }
    }
    w.finish()
}

/// An xattr problem, before the path is known to the caller.
enum XattrError {
    Io(io::Error),
    Overlay(&'static str),
}

impl XattrError {
    fn at(self, path: PathBuf) -> LayerError {
        match self {
            XattrError::Io(cause) => LayerError::Source {
                path,
                op: "reading xattrs".into(),
                cause,
            },
            XattrError::Overlay(what) => LayerError::Unrepresentable {
                path,
                reason: format!(
                    "overlayfs {what} file: its content lives in a lower layer \
                     (mount without metacopy/redirect_dir)"
                ),
            },
        }
    }
}

/// The xattrs of `fd` to record (sorted, without `trusted.overlay.*`), and whether it is an
/// opaque overlay directory (only looked at when `overlay`).
fn xattrs(fd: BorrowedFd<'_>, overlay: bool) -> Result<(Xattrs, bool), XattrError> {
    let mut out = Vec::new();
    let mut opaque = false;
    for name in sys::flistxattr(fd).map_err(XattrError::Io)? {
        let bytes = name.as_bytes();
        if bytes.starts_with(b"trusted.overlay.") {
            if overlay {
                match bytes {
                    b"trusted.overlay.metacopy" => return Err(XattrError::Overlay("metacopy")),
                    b"trusted.overlay.redirect" => return Err(XattrError::Overlay("redirect")),
                    _ if bytes == OVERLAY_OPAQUE_XATTR.as_bytes() => {
                        opaque = sys::fgetxattr(fd, &name)
                            .map_err(XattrError::Io)?
                            .as_deref()
                            == Some(b"y");
                    }
                    _ => {}
                }
            }
            continue;
        }
        if let Some(value) = sys::fgetxattr(fd, &name).map_err(XattrError::Io)? {
            out.push((bytes.to_vec(), value));
        }
    }
    out.sort();
    Ok((out, opaque))
}

/// Extended attributes as (name, value), sorted by name.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// One tar entry to write.
struct Entry {
    path: Vec<u8>,
    kind: EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    size: u64,
    link: Option<Vec<u8>>,
    dev: Option<(u32, u32)>,
    xattrs: Xattrs,
}

impl Entry {
    fn new(path: Vec<u8>, kind: EntryType, st: &libc::stat) -> Entry {
        Entry {
            path,
            kind,
            mode: st.st_mode & 0o7777,
            uid: u64::from(st.st_uid),
            gid: u64::from(st.st_gid),
            mtime: u64::try_from(st.st_mtime).unwrap_or(0),
            size: 0,
            link: None,
            dev: None,
            xattrs: Vec::new(),
        }
    }

    fn mode(mut self, mode: u32) -> Entry {
        self.mode = mode;
        self
    }

    fn xattrs(mut self, xattrs: Xattrs) -> Entry {
        self.xattrs = xattrs;
        self
    }
}

struct TarWriter<W: Write> {
    out: HashingWriter<BufWriter<W>>,
    buf: Vec<u8>,
}

/// A PAX record: `<len> <key>=<value>\n`, where `<len>` counts the whole record.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let rest = 3 + key.len() + value.len();
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// A ustar header with the fields every entry shares.
fn header(
    name: &[u8],
    kind: EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    size: u64,
) -> Header {
    let mut h = Header::new_ustar();
    let n = name.len().min(100);
    h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
    h.set_mode(mode);
    h.set_uid(uid.min(MAX_OCTAL_ID));
    h.set_gid(gid.min(MAX_OCTAL_ID));
    h.set_mtime(mtime);
    h.set_size(size.min(MAX_OCTAL_SIZE));
    h.set_entry_type(kind);
    h
}

impl<W: Write> TarWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), LayerError> {
        self.out.write_all(bytes).map_err(LayerError::Write)
    }

    fn pad(&mut self, len: u64) -> Result<(), LayerError> {
        let rem = (len % BLOCK as u64) as usize;
        if rem != 0 {
            self.write(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    /// Writes `e`'s header (preceded by a PAX header when needed); content follows separately.
    fn entry(&mut self, e: &Entry) -> Result<(), LayerError> {
        let mut pax = Vec::new();
        if e.path.len() > 100 {
            pax_record(&mut pax, b"path", &e.path);
        }
        if let Some(link) = e.link.as_ref().filter(|l| l.len() > 100) {
            pax_record(&mut pax, b"linkpath", link);
        }
        if e.uid > MAX_OCTAL_ID {
            pax_record(&mut pax, b"uid", e.uid.to_string().as_bytes());
        }
        if e.gid > MAX_OCTAL_ID {
            pax_record(&mut pax, b"gid", e.gid.to_string().as_bytes());
        }
        if e.size > MAX_OCTAL_SIZE {
            pax_record(&mut pax, b"size", e.size.to_string().as_bytes());
        }
        for (name, value) in &e.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(name);
            pax_record(&mut pax, &key, value);
        }
        if !pax.is_empty() {
            // Named as Go's archive/tar names them: <dir>/PaxHeaders.0/<base>.
            let trimmed = e.path.strip_suffix(b"/").unwrap_or(&e.path);
            let (dir, base) = match trimmed.iter().rposition(|&b| b == b'/') {
                Some(i) => (&trimmed[..=i], &trimmed[i + 1..]),
                None => (&b""[..], trimmed),
            };
            let mut name = dir.to_vec();
            name.extend_from_slice(b"PaxHeaders.0/");
            name.extend_from_slice(base);
            let mut h = header(&name, EntryType::XHeader, 0o644, 0, 0, 0, pax.len() as u64);
            h.set_cksum();
            self.write(h.as_bytes())?;
            self.write(&pax)?;
            self.pad(pax.len() as u64)?;
        }
        let mut h = header(&e.path, e.kind, e.mode, e.uid, e.gid, e.mtime, e.size);
        if let Some(link) = &e.link {
            let n = link.len().min(100);
            h.as_old_mut().linkname[..n].copy_from_slice(&link[..n]);
        }
        if let Some(ustar) = h.as_ustar_mut() {
            let (major, minor) = e.dev.unwrap_or((0, 0));
            ustar.set_device_major(major);
            ustar.set_device_minor(minor);
        }
        h.set_cksum();
        self.write(h.as_bytes())
    }

    /// Copies exactly `size` bytes of `file` and pads to a block.
    fn content(
        &mut self,
        mut file: std::fs::File,
        size: u64,
        path: &Path,
    ) -> Result<(), LayerError> {
        let source_err = |cause| LayerError::Source {
            path: path.to_path_buf(),
            op: "reading".into(),
            cause,
        };
        let mut left = size;
        let mut buf = std::mem::take(&mut self.buf);
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match file.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(LayerError::Unrepresentable {
                        path: path.to_path_buf(),
                        reason: "the file shrank while the layer was written".into(),
                    })
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(source_err(e)),
            };
            self.write(&buf[..n])?;
            left -= n as u64;
        }
        self.buf = buf;
        self.pad(size)
    }

    /// The end-of-archive marker (two zero blocks); flushes and returns the digest and size.
    fn finish(mut self) -> Result<(Digest, u64), LayerError> {
        self.write(&[0u8; 2 * BLOCK])?;
        let (buffered, digest, size) = self.out.finish();
        let mut out = buffered
            .into_inner()
            .map_err(|e| LayerError::Write(e.into_error()))?;
        out.flush().map_err(LayerError::Write)?;
        Ok((digest, size))
    }
}
