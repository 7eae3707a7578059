//! Tests of applying and producing layers: round trips, compression, hostile layers, whiteouts.
//! They create devices, chown and set trusted xattrs, so they need root and fail without it.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::sys::{self, cstring};
use super::{apply, diff, tar_dir, Applied, LayerError};
use crate::digest::Digest;
use crate::Compression;

fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the layer tests need root (they chown, mknod and set trusted.* xattrs): run cargo test as root"
    );
}

const MTIME: u64 = 1_600_000_000;

/// Builds tars entry by entry with raw headers: names are written as given, `..` included.
struct TarBuf(tar::Builder<Vec<u8>>);

impl TarBuf {
    fn new() -> TarBuf {
        TarBuf(tar::Builder::new(Vec::new()))
    }

    fn raw(
        &mut self,
        path: &[u8],
        kind: EntryType,
        link: &[u8],
        data: &[u8],
        mode: u32,
    ) -> &mut TarBuf {
        let mut h = Header::new_ustar();
        h.as_old_mut().name[..path.len()].copy_from_slice(path);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h.set_size(data.len() as u64);
        h.set_entry_type(kind);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn file(&mut self, path: &str, data: &[u8]) -> &mut TarBuf {
        self.raw(path.as_bytes(), EntryType::Regular, b"", data, 0o644)
    }

    fn dir(&mut self, path: &str) -> &mut TarBuf {
        self.raw(path.as_bytes(), EntryType::Directory, b"", b"", 0o755)
    }

    fn symlink(&mut self, path: &str, target: &str) -> &mut TarBuf {
        self.raw(
            path.as_bytes(),
            EntryType::Symlink,
            target.as_bytes(),
            b"",
            0o777,
        )
    }

    fn hardlink(&mut self, path: &str, target: &str) -> &mut TarBuf {
        self.raw(
            path.as_bytes(),
            EntryType::Link,
            target.as_bytes(),
            b"",
            0o644,
        )
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut TarBuf {
        self.0
            .append_pax_extensions(records.iter().copied())
            .unwrap();
        self
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn apply_bytes(tar: &[u8], dest: &Path) -> Result<Applied, LayerError> {
    apply(tar, Compression::None, dest)
}

fn expect_err(r: Result<Applied, LayerError>) -> LayerError {
    match r {
        Err(e) => e,
        Ok(a) => panic!("expected an error, the layer applied: {a:?}"),
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// zstd with the frame checksum, as containerd's and BuildKit's encoders write it: without one a
/// corrupt block can decode to wrong bytes silently (and only the diff id would tell).
fn zstd(data: &[u8]) -> Vec<u8> {
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    enc.include_checksum(true).unwrap();
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn cpath(p: &Path) -> CString {
    cstring(p.as_os_str().as_bytes()).unwrap()
}

/// Runs `f` with an O_PATH fd of `path`'s parent and `path`'s file name.
fn at_parent<T>(path: &Path, f: impl FnOnce(std::os::fd::BorrowedFd<'_>, &CString) -> T) -> T {
    let parent = sys::open(
        &cpath(path.parent().unwrap()),
        libc::O_PATH | libc::O_DIRECTORY,
    )
    .unwrap();
    let name = cstring(path.file_name().unwrap().as_bytes()).unwrap();
    f(parent.as_fd(), &name)
}

fn set_mtime(path: &Path, secs: i64) {
    at_parent(path, |dir, name| {
        sys::lutimensat(dir, name, sys::timespec(secs, 0))
    })
    .unwrap();
}

fn mknod(path: &Path, ftype: u32, mode: u32, major: u32, minor: u32) {
    at_parent(path, |dir, name| {
        sys::mknodat(dir, name, ftype | mode, libc::makedev(major, minor))
    })
    .unwrap();
    at_parent(path, |dir, name| sys::lchmodat(dir, name, mode)).unwrap();
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let f = File::open(path).unwrap();
    sys::fsetxattr(f.as_fd(), &cstring(name.as_bytes()).unwrap(), value).unwrap();
}

fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let f = File::open(path).unwrap();
    sys::fgetxattr(f.as_fd(), &cstring(name.as_bytes()).unwrap()).unwrap()
}

/// Every file under `root` (itself excluded, and `skip` with what is under it) described as a
/// line: type, mode, owner, mtime, content or target or device, xattrs, and the other paths
/// sharing its inode.
fn describe(root: &Path, skip: Option<&Path>) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<PathBuf>> = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for ent in fs::read_dir(&dir).unwrap() {
            let path = ent.unwrap().path();
            if Some(path.as_path()) == skip {
                continue;
            }
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let md = fs::symlink_metadata(&path).unwrap();
            let ft = md.file_type();
            let what = if ft.is_dir() {
                todo.push(path.clone());
                "dir".to_string()
            } else if ft.is_file() {
                format!("file {:?}", Digest::of(&fs::read(&path).unwrap()))
            } else if ft.is_symlink() {
                format!("symlink -> {:?}", fs::read_link(&path).unwrap())
            } else if ft.is_char_device() {
                format!("char {}:{}", libc::major(md.rdev()), libc::minor(md.rdev()))
            } else if ft.is_block_device() {
                format!(
                    "block {}:{}",
                    libc::major(md.rdev()),
                    libc::minor(md.rdev())
                )
            } else if ft.is_fifo() {
                "fifo".to_string()
            } else {
                "socket".to_string()
            };
            let mut xattrs = Vec::new();
            if ft.is_dir() || ft.is_file() {
                let f = File::open(&path).unwrap();
                for name in sys::flistxattr(f.as_fd()).unwrap() {
                    let value = sys::fgetxattr(f.as_fd(), &name).unwrap();
                    xattrs.push(format!(
                        "{}={:?}",
                        name.to_string_lossy(),
                        value.map(|v| String::from_utf8_lossy(&v).into_owned())
                    ));
                }
                xattrs.sort();
            }
            if !ft.is_dir() && md.nlink() > 1 {
                inodes
                    .entry((md.dev(), md.ino()))
                    .or_default()
                    .push(rel.clone());
            }
            let mode = if ft.is_symlink() {
                0
            } else {
                md.mode() & 0o7777
            };
            out.insert(
                rel,
                format!(
                    "{what} mode={mode:o} owner={}:{} mtime={} xattrs={xattrs:?}",
                    md.uid(),
                    md.gid(),
                    md.mtime()
                ),
            );
        }
    }
    for paths in inodes.values() {
        for p in paths {
            let others: Vec<_> = paths.iter().filter(|o| *o != p).collect();
            if let Some(line) = out.get_mut(p) {
                line.push_str(&format!(" links={others:?}"));
            }
        }
    }
    out
}

/// The entries of a tar as (path, type byte, link target, size, PAX records).
fn list(tar: &[u8]) -> Vec<(String, char, String, u64, Vec<String>)> {
    let mut archive = tar::Archive::new(tar);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default();
        let kind = entry.header().entry_type().as_byte() as char;
        let size = entry.size();
        let pax = match entry.pax_extensions().unwrap() {
            Some(p) => p
                .map(|r| r.unwrap())
                .map(|r| {
                    format!(
                        "{}={}",
                        r.key().unwrap(),
                        String::from_utf8_lossy(r.value_bytes())
                    )
                })
                .collect(),
            None => Vec::new(),
        };
        out.push((path, kind, link, size, pax));
    }
    out
}

/// A tree with every kind of file and metadata a layer carries.
fn build_rich_tree(root: &Path) {
    let long_dir = root.join("d".repeat(60)).join("e".repeat(60));
    for d in [
        "etc", "bin", "tmp", "usr/bin", "usr/lib", "dev", "run", "data",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::create_dir_all(&long_dir).unwrap();
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(root.join("bin/su"), b"\x7fELF setuid").unwrap();
    fs::write(root.join("usr/bin/sgid"), b"setgid").unwrap();
    fs::write(root.join("usr/bin/a"), b"linked").unwrap();
    fs::hard_link(root.join("usr/bin/a"), root.join("usr/bin/b")).unwrap();
    fs::hard_link(root.join("usr/bin/a"), root.join("data/c")).unwrap();
    fs::write(root.join("data/empty"), b"").unwrap();
    let big: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(root.join("data/big"), &big).unwrap();
    fs::write(root.join("data/user"), b"owned by 1000").unwrap();
    fs::write(root.join("data/xattr"), b"has xattrs").unwrap();
    fs::write(long_dir.join("f".repeat(90)), b"long name").unwrap();
    std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("abs")).unwrap();
    std::os::unix::fs::symlink("x".repeat(150), root.join("longlink")).unwrap();
    mknod(&root.join("dev/null"), libc::S_IFCHR, 0o666, 1, 3);
    mknod(&root.join("dev/loop0"), libc::S_IFBLK, 0o660, 7, 0);
    mknod(&root.join("dev/zero-zero"), libc::S_IFCHR, 0o600, 0, 0);
    mknod(&root.join("run/fifo"), libc::S_IFIFO, 0o620, 0, 0);
    let _socket = std::os::unix::net::UnixListener::bind(root.join("run/sock")).unwrap();

    let modes: &[(&str, u32)] = &[
        ("bin/su", 0o4755),
        ("usr/bin/sgid", 0o2711),
        ("tmp", 0o1777),
        ("etc/passwd", 0o644),
        ("data/user", 0o600),
        ("data/xattr", 0o640),
        ("usr/lib", 0o2750),
        ("run", 0o700),
    ];
    std::os::unix::fs::lchown(root.join("data/user"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::lchown(root.join("usr/bin/sgid"), Some(0), Some(5)).unwrap();
    std::os::unix::fs::lchown(root.join("lib"), Some(33), Some(44)).unwrap();
    std::os::unix::fs::lchown(root.join("dev/loop0"), Some(0), Some(6)).unwrap();
    std::os::unix::fs::lchown(root.join("usr/lib"), Some(2), Some(3)).unwrap();
    for (p, mode) in modes {
        fs::set_permissions(root.join(p), fs::Permissions::from_mode(*mode)).unwrap();
    }
    set_xattr(&root.join("data/xattr"), "user.foo", b"bar");
    set_xattr(&root.join("data/xattr"), "user.empty", b"");
    set_xattr(&root.join("usr/lib"), "user.dir", b"\x00binary\xff");
    set_xattr(&root.join("bin/su"), "trusted.other", b"kept");

    // mtimes last, deepest first, so creating children does not change them again.
    let mut all: Vec<PathBuf> = describe(root, None).into_keys().collect();
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in all.iter().enumerate() {
        set_mtime(&root.join(p), 1_500_000_000 + i as i64 * 1000);
    }
}

#[test]
fn every_type_and_metadata_round_trips() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let dest = tmp.path().join("dest");
    fs::create_dir(&src).unwrap();
    fs::create_dir(&dest).unwrap();
    build_rich_tree(&src);

    let mut tar = Vec::new();
    let (digest, size) = tar_dir(&src, &mut tar).unwrap();
    assert_eq!(digest, Digest::of(&tar));
    assert_eq!(size, tar.len() as u64);
    assert_eq!(tar.len() % 512, 0);

    let applied = apply_bytes(&tar, &dest).unwrap();
    assert_eq!(applied.diff_id, digest);
    assert_eq!(applied.size, size);

    let mut want = describe(&src, None);
    assert!(
        want.remove(Path::new("run/sock")).is_some(),
        "the source has a socket"
    );
    let got = describe(&dest, None);
    assert_eq!(got, want);

    // Spot checks on what the comparison covers.
    let su = fs::metadata(dest.join("bin/su")).unwrap();
    assert_eq!(su.mode() & 0o7777, 0o4755);
    let (a, b) = (
        fs::metadata(dest.join("usr/bin/a")).unwrap(),
        fs::metadata(dest.join("data/c")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 3));
    assert_eq!(
        get_xattr(&dest.join("data/xattr"), "user.foo").as_deref(),
        Some(&b"bar"[..])
    );
    assert_eq!(
        fs::metadata(dest.join("dev/null")).unwrap().rdev(),
        libc::makedev(1, 3)
    );

    // The tar itself: relative paths, dirs with a trailing slash, PAX for long names and xattrs.
    let entries = list(&tar);
    assert_eq!(applied.entries, entries.len() as u64);
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert!(
        names.contains(&"etc/") && names.contains(&"etc/passwd"),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with('/') && !n.starts_with("./")),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.contains("sock")),
        "sockets are skipped: {names:?}"
    );
    let hard: Vec<_> = entries
        .iter()
        .filter(|e| e.1 == '1')
        .map(|e| (e.0.as_str(), e.2.as_str()))
        .collect();
    assert_eq!(hard, [("usr/bin/a", "data/c"), ("usr/bin/b", "data/c")]);
    let long = entries
        .iter()
        .find(|e| e.0.ends_with(&"f".repeat(90)))
        .unwrap();
    assert!(long.4.iter().any(|r| r.starts_with("path=")), "{long:?}");
    let x = entries.iter().find(|e| e.0 == "data/xattr").unwrap();
    assert_eq!(
        x.4,
        ["SCHILY.xattr.user.empty=", "SCHILY.xattr.user.foo=bar"]
    );
}

#[test]
fn layers_are_deterministic() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    fs::create_dir(&one).unwrap();
    fs::create_dir(&two).unwrap();
    build_rich_tree(&one);
    // The same tree, made in a different order (other inodes, other directory order).
    let mut first = Vec::new();
    tar_dir(&one, &mut first).unwrap();
    apply_bytes(&first, &two).unwrap();
    let mut again = Vec::new();
    let mut copy = Vec::new();
    let (d1, _) = tar_dir(&one, &mut again).unwrap();
    let (d2, _) = tar_dir(&two, &mut copy).unwrap();
    assert_eq!(first, again);
    assert_eq!(first, copy);
    assert_eq!(d1, d2);
}

#[test]
fn compressed_streams_give_the_uncompressed_diff_id() {
    require_root();
    let mut t = TarBuf::new();
    t.dir("a/")
        .file("a/one", b"1")
        .file("a/two", &vec![7u8; 100_000])
        .symlink("l", "a/one");
    let mut tar = t.finish();
    // Writers often pad to a 10 KiB record: the diff id covers the padding too.
    tar.resize(tar.len().div_ceil(10240) * 10240, 0);
    let want = Digest::of(&tar);
    let mut multi_member = gzip(&tar[..1000]);
    multi_member.extend(gzip(&tar[1000..]));
    let cases: &[(&str, Compression, Vec<u8>)] = &[
        ("plain", Compression::None, tar.clone()),
        ("gzip", Compression::Gzip, gzip(&tar)),
        ("gzip, two members", Compression::Gzip, multi_member),
        ("zstd", Compression::Zstd, zstd(&tar)),
    ];
    for (what, compression, blob) in cases {
        let dest = tempfile::tempdir().unwrap();
        let applied = apply(&blob[..], *compression, dest.path()).unwrap();
        assert_eq!(applied.diff_id, want, "{what}");
        assert_eq!(applied.size, tar.len() as u64, "{what}");
        assert_eq!(applied.entries, 4, "{what}");
        assert_eq!(
            fs::read(dest.path().join("a/two")).unwrap().len(),
            100_000,
            "{what}"
        );
    }
}

#[test]
fn an_empty_stream_is_an_empty_layer() {
    require_root();
    let dest = tempfile::tempdir().unwrap();
    let applied = apply_bytes(b"", dest.path()).unwrap();
    assert_eq!(
        (applied.diff_id, applied.size, applied.entries),
        (Digest::of(b""), 0, 0)
    );
}

fn big_tar() -> Vec<u8> {
    let data: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let mut t = TarBuf::new();
    t.file("small", b"x").file("big", &data).file("after", b"y");
    t.finish()
}

#[test]
fn a_truncated_or_corrupt_gzip_fails_clearly() {
    require_root();
    let blob = gzip(&big_tar());
    let mut corrupt = blob.clone();
    corrupt[blob.len() / 2] ^= 0xff;
    let mut trailer = blob.clone();
    let n = trailer.len();
    trailer[n - 6] ^= 1; // the CRC
    let half = blob.len() / 2;
    // (what, bytes, the message's start)
    let cases: &[(&str, &[u8], &str)] = &[
        (
            "header cut",
            &blob[..5],
            "corrupt or truncated gzip stream at the start of the layer: ",
        ),
        (
            "cut early",
            &blob[..100],
            "corrupt or truncated gzip stream at the start of the layer: ",
        ),
        (
            "cut in an entry",
            &blob[..half],
            "corrupt or truncated gzip stream while reading layer entry \"big\": ",
        ),
        (
            "trailer cut",
            &blob[..n - 4],
            "corrupt or truncated gzip stream after the last layer entry: ",
        ),
        ("corrupt", &corrupt, "corrupt or truncated gzip stream "),
        (
            "bad crc",
            &trailer,
            "corrupt or truncated gzip stream after the last layer entry: ",
        ),
    ];
    for (what, bytes, want) in cases {
        let dest = tempfile::tempdir().unwrap();
        let err = expect_err(apply(*bytes, Compression::Gzip, dest.path())).to_string();
        assert!(err.starts_with(want), "{what}: {err}");
    }
}

#[test]
fn a_corrupt_or_truncated_zstd_fails_clearly() {
    require_root();
    let blob = zstd(&big_tar());
    let mut corrupt = blob.clone();
    for b in &mut corrupt[blob.len() / 3..blob.len() / 3 + 64] {
        *b ^= 0x5a;
    }
    let mut bad_magic = blob.clone();
    bad_magic[0] ^= 0xff;
    let cases: &[(&str, &[u8])] = &[
        ("corrupt", &corrupt),
        ("bad magic", &bad_magic),
        ("truncated", &blob[..blob.len() / 2]),
        ("truncated end", &blob[..blob.len() - 3]),
    ];
    for (what, bytes) in cases {
        let dest = tempfile::tempdir().unwrap();
        let err = expect_err(apply(*bytes, Compression::Zstd, dest.path())).to_string();
        assert!(
            err.starts_with("corrupt or truncated zstd stream")
                || err.starts_with("truncated layer: the zstd stream ends"),
            "{what}: {err}"
        );
    }
}

#[test]
fn a_truncated_tar_names_the_entry() {
    require_root();
    let tar = big_tar();
    let cases: &[(usize, &str)] = &[
        (
            512 * 3 + 1000,
            "truncated layer: the tar stream ends while reading layer entry \"big\"",
        ),
        (
            512 * 2 + 100,
            "truncated layer: the tar stream ends after layer entry \"small\"",
        ),
    ];
    for (cut, want) in cases {
        let dest = tempfile::tempdir().unwrap();
        let err = expect_err(apply_bytes(&tar[..*cut], dest.path()));
        assert_eq!(err.to_string(), *want);
    }
}

#[test]
fn a_bad_header_checksum_is_a_malformed_tar() {
    require_root();
    let mut tar = big_tar();
    tar[0] ^= 1;
    let dest = tempfile::tempdir().unwrap();
    let err = expect_err(apply_bytes(&tar, dest.path())).to_string();
    assert!(
        err.starts_with(
            "malformed tar at the start of the layer: archive header checksum mismatch"
        ),
        "{err}"
    );
}

/// A gzip layer whose PAX header declares 8 GiB, followed by 8 GiB of zeros (multi-member gzip,
/// about 8 MB): applying it fails on the header, without reading the rest or allocating for it.
#[test]
fn a_huge_pax_header_is_refused_not_allocated() {
    require_root();
    let mut h = Header::new_ustar();
    h.as_old_mut().name[..4].copy_from_slice(b"huge");
    h.set_mode(0o644);
    h.set_mtime(MTIME);
    h.set_size(8 << 30);
    h.set_entry_type(EntryType::XHeader);
    h.set_cksum();
    let zeros = gzip(&vec![0; 1 << 20]);
    // (what, the tar before the huge header, the message)
    let cases: &[(&str, Vec<u8>, &str)] = &[
        (
            "first",
            Vec::new(),
            "malformed tar at the start of the layer: tar entry \"huge\": PAX header of \
             8589934592 bytes exceeds the 1 MiB limit",
        ),
        (
            "after a file",
            {
                let mut t = TarBuf::new();
                t.file("a", &[1; 700]);
                t.0.get_ref().clone() // no end-of-archive blocks
            },
            "malformed tar after layer entry \"a\": tar entry \"huge\": PAX header of \
             8589934592 bytes exceeds the 1 MiB limit",
        ),
    ];
    for (what, before, want) in cases {
        let mut blob = gzip(&[&before[..], h.as_bytes()].concat());
        for _ in 0..8192 {
            blob.extend_from_slice(&zeros);
        }
        let dest = tempfile::tempdir().unwrap();
        let start = std::time::Instant::now();
        let err = expect_err(apply(&blob[..], Compression::Gzip, dest.path())).to_string();
        assert_eq!(err, *want, "{what}");
        assert!(
            start.elapsed().as_secs() < 10,
            "{what}: read on after the header"
        );
    }
}

/// A destination deep inside a scratch directory, next to a sentinel directory; everything
/// outside the destination is described before and after applying.
struct Sandbox {
    base: tempfile::TempDir,
    dest: PathBuf,
    sentinel: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let base = tempfile::tempdir().unwrap();
        let dest = base.path().join("x/y/dest");
        let sentinel = base.path().join("sentinel");
        fs::create_dir_all(&dest).unwrap();
        fs::create_dir_all(sentinel.join("sub")).unwrap();
        fs::write(sentinel.join("keep"), "precious\n").unwrap();
        fs::write(sentinel.join("sub/inner"), "also precious\n").unwrap();
        fs::set_permissions(&sentinel, fs::Permissions::from_mode(0o700)).unwrap();
        fs::create_dir_all(base.path().join("x/etc")).unwrap();
        fs::write(base.path().join("x/etc/passwd"), "not for the layer\n").unwrap();
        Sandbox {
            base,
            dest,
            sentinel,
        }
    }

    fn outside(&self) -> BTreeMap<PathBuf, String> {
        describe(self.base.path(), Some(&self.dest))
    }

    /// Applies `tar` and checks nothing outside the destination changed or appeared.
    fn apply(&self, tar: &[u8]) -> Result<Applied, LayerError> {
        let before = self.outside();
        let r = apply_bytes(tar, &self.dest);
        assert_eq!(
            self.outside(),
            before,
            "the layer changed something outside its destination"
        );
        r
    }

    /// The sentinel's absolute path as a string (it is in the system's temporary directory).
    fn sentinel_str(&self) -> String {
        self.sentinel.to_str().unwrap().to_string()
    }
}

#[test]
fn escape_with_dotdot_is_refused() {
    require_root();
    let sb = Sandbox::new();
    let mut t = TarBuf::new();
    t.file("../escape", b"pwned");
    let err = expect_err(sb.apply(&t.finish()));
    assert_eq!(
        err.to_string(),
        r#"layer entry "../escape": path escapes the layer root"#
    );
}

#[test]
fn escape_with_nested_dotdot_is_refused() {
    require_root();
    let sb = Sandbox::new();
    let mut t = TarBuf::new();
    t.file("ok", b"fine").file("a/../../escape", b"pwned");
    let err = expect_err(sb.apply(&t.finish()));
    assert_eq!(
        err.to_string(),
        r#"layer entry "a/../../escape": path escapes the layer root"#
    );
    assert!(sb.dest.join("ok").exists());
}

#[test]
fn absolute_paths_land_inside_the_layer() {
    require_root();
    let sb = Sandbox::new();
    let unique = format!("berth-layer-test-{}", std::process::id());
    let mut t = TarBuf::new();
    t.file(&format!("/{unique}/file"), b"inside")
        .file("/etc/passwd-test", b"inside too");
    sb.apply(&t.finish()).unwrap();
    assert_eq!(
        fs::read(sb.dest.join(&unique).join("file")).unwrap(),
        b"inside"
    );
    assert_eq!(
        fs::read(sb.dest.join("etc/passwd-test")).unwrap(),
        b"inside too"
    );
    assert!(!Path::new("/").join(&unique).exists());
    assert!(!Path::new("/etc/passwd-test").exists());
}

#[test]
fn a_write_through_a_symlink_to_a_host_directory_stays_inside() {
    require_root();
    let sb = Sandbox::new();
    let mut t = TarBuf::new();
    t.symlink("link", &sb.sentinel_str())
        .file("link/pwned", b"pwned");
    let err = expect_err(sb.apply(&t.finish())).to_string();
    let want = r#"layer entry "link/pwned": parent directory "link": "link" is a symlink"#;
    assert!(err.starts_with(want), "{err}");
    assert!(
        err.ends_with("that leads nowhere inside the layer"),
        "{err}"
    );
    assert!(!sb.sentinel.join("pwned").exists());

    // When the layer itself has that directory, the write lands there, inside.
    let sb = Sandbox::new();
    let mut t = TarBuf::new();
    let inside = sb.sentinel_str();
    t.dir(&format!("{}/", &inside[1..]))
        .symlink("link", &inside)
        .file("link/pwned", b"pwned");
    sb.apply(&t.finish()).unwrap();
    assert_eq!(
        fs::read(sb.dest.join(&inside[1..]).join("pwned")).unwrap(),
        b"pwned"
    );
    assert!(!sb.sentinel.join("pwned").exists());
}

#[test]
fn a_write_through_a_symlink_climbing_up_stays_inside() {
    require_root();
    let sb = Sandbox::new();
    let mut t = TarBuf::new();
    t.symlink("up", "../../..")
        .file("up/pwned", b"pwned")
        .file("up/up/sentinel/keep", b"overwritten?");
    sb.apply(&t.finish()).unwrap();
    assert_eq!(fs::read(sb.dest.join("pwned")).unwrap(), b"pwned");
    assert_eq!(
        fs::read(sb.dest.join("sentinel/keep")).unwrap(),
        b"overwritten?"
    );
}

#[test]
fn a_hardlink_climbing_out_is_refused() {
    require_root();
    let sb = Sandbox::new();
    let mut t = TarBuf::new();
    t.hardlink("h", "../../etc/passwd");
    let err = expect_err(sb.apply(&t.finish()));
    assert_eq!(
        err.to_string(),
        r#"layer entry "h": hardlink target "../../etc/passwd" escapes the layer root"#
    );
    assert!(!sb.dest.join("h").exists());
}

#[test]
fn an_absolute_hardlink_resolves_inside_the_layer() {
    require_root();
    let sb = Sandbox::new();
    let mut t = TarBuf::new();
    t.hardlink("h", "/etc/passwd");
    let err = expect_err(sb.apply(&t.finish()));
    assert_eq!(
        err.to_string(),
        r#"layer entry "h": hardlink target "/etc/passwd" does not exist in the layer"#
    );

    // Through a symlink to a host directory: still resolved inside.
    let sb = Sandbox::new();
    let mut t = TarBuf::new();
    t.symlink("hostetc", "/etc").hardlink("h", "hostetc/passwd");
    let err = expect_err(sb.apply(&t.finish()));
    assert_eq!(
        err.to_string(),
        r#"layer entry "h": hardlink target "hostetc/passwd" does not exist in the layer"#
    );

    // A target the layer has: linked to the layer's file, not the host's.
    let sb = Sandbox::new();
    let mut t = TarBuf::new();
    t.file("etc/passwd", b"layer's")
        .hardlink("h", "/etc/passwd")
        .symlink("s", "/etc/passwd")
        .hardlink("hs", "s");
    sb.apply(&t.finish()).unwrap();
    let (h, p) = (
        fs::metadata(sb.dest.join("h")).unwrap(),
        fs::metadata(sb.dest.join("etc/passwd")).unwrap(),
    );
    assert_eq!((h.ino(), h.nlink()), (p.ino(), 2));
    assert_ne!(h.ino(), fs::metadata("/etc/passwd").unwrap().ino());
    // A hardlink to a symlink links the symlink itself.
    let (hs, s) = (
        fs::symlink_metadata(sb.dest.join("hs")).unwrap(),
        fs::symlink_metadata(sb.dest.join("s")).unwrap(),
    );
    assert!(hs.file_type().is_symlink());
    assert_eq!(hs.ino(), s.ino());
}

#[test]
fn whiteouts_never_escape() {
    require_root();
    // (entry, expected error or None when it applies inside the layer).
    let cases: &[(&str, Option<&str>)] = &[
        (".wh.../../x", None),
        (
            "../.wh.x",
            Some(r#"layer entry "../.wh.x": path escapes the layer root"#),
        ),
        (
            "a/../../.wh.x",
            Some(r#"layer entry "a/../../.wh.x": path escapes the layer root"#),
        ),
        (
            ".wh...",
            Some(r#"layer entry ".wh...": path escapes the layer root"#),
        ),
        (
            "a/.wh..",
            Some(r#"layer entry "a/.wh..": whiteout names no file"#),
        ),
        (
            "../.wh..wh..opq",
            Some(r#"layer entry "../.wh..wh..opq": path escapes the layer root"#),
        ),
    ];
    for (name, want) in cases {
        let sb = Sandbox::new();
        let mut t = TarBuf::new();
        t.file(name, b"");
        let r = sb.apply(&t.finish());
        match want {
            Some(want) => assert_eq!(expect_err(r).to_string(), *want, "{name}"),
            None => {
                r.unwrap();
                assert!(sb.dest.join("x").is_file(), "{name}");
            }
        }
    }
}

#[test]
fn a_symlink_replacing_a_directory_is_not_written_through() {
    require_root();
    let sb = Sandbox::new();
    let mut t = TarBuf::new();
    t.dir("d/")
        .file("d/f", b"first")
        .symlink("d", &sb.sentinel_str())
        .file("d/pwned", b"pwned");
    let err = expect_err(sb.apply(&t.finish())).to_string();
    assert!(
        err.starts_with(r#"layer entry "d/pwned": parent directory "d""#),
        "{err}"
    );
    assert!(fs::symlink_metadata(sb.dest.join("d"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn planted_symlinks_are_replaced_never_followed() {
    require_root();
    let sb = Sandbox::new();
    let keep = format!("{}/keep", sb.sentinel_str());
    let mut t = TarBuf::new();
    // A file, a directory, a device and a whiteout over symlinks to host files and directories.
    t.symlink("f", &keep).file("f", b"new content");
    t.symlink("d", &sb.sentinel_str())
        .raw(b"d/", EntryType::Directory, b"", b"", 0o777);
    t.symlink("n", &keep)
        .raw(b"n", EntryType::Fifo, b"", b"", 0o666);
    t.symlink("s", &keep).symlink("s", "/elsewhere");
    sb.apply(&t.finish()).unwrap();
    assert_eq!(fs::read(sb.dest.join("f")).unwrap(), b"new content");
    assert!(fs::symlink_metadata(sb.dest.join("d")).unwrap().is_dir());
    assert!(fs::symlink_metadata(sb.dest.join("n"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(
        fs::read_link(sb.dest.join("s")).unwrap(),
        Path::new("/elsewhere")
    );
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    require_root();
    let dest = tempfile::tempdir().unwrap();
    let mut t = TarBuf::new();
    t.file(".wh.foo", b"")
        .dir("dir/")
        .file("dir/.wh.bar", b"")
        .file("made/.wh.deep", b"");
    t.file("kept", b"same layer").file(".wh.kept", b"");
    t.dir("opq/")
        .file("opq/.wh..wh..opq", b"")
        .file("opq/new", b"n")
        .file("implicit/.wh..wh..opq", b"");
    t.file(".wh..wh.plnk/123", b"aufs")
        .file(".wh..wh.aufs", b"aufs");
    let applied = apply_bytes(&t.finish(), dest.path()).unwrap();
    assert_eq!(applied.entries, 12);
    for w in ["foo", "dir/bar", "made/deep"] {
        let md = fs::symlink_metadata(dest.path().join(w)).unwrap();
        assert!(md.file_type().is_char_device(), "{w}");
        assert_eq!(md.rdev(), 0, "{w}");
    }
    assert_eq!(fs::read(dest.path().join("kept")).unwrap(), b"same layer");
    for d in ["opq", "implicit"] {
        assert_eq!(
            get_xattr(&dest.path().join(d), "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..]),
            "{d}"
        );
    }
    assert_eq!(
        get_xattr(&dest.path().join("dir"), "trusted.overlay.opaque"),
        None
    );
    let mut names: Vec<_> = fs::read_dir(dest.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["dir", "foo", "implicit", "kept", "made", "opq"]);
}

#[test]
fn diff_translates_overlay_whiteouts_and_round_trips() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let upper = tmp.path().join("upper");
    fs::create_dir_all(upper.join("op")).unwrap();
    fs::create_dir_all(upper.join("sub")).unwrap();
    fs::write(upper.join("a"), b"changed").unwrap();
    fs::write(upper.join("op/x"), b"only this shows").unwrap();
    mknod(&upper.join("gone"), libc::S_IFCHR, 0, 0, 0);
    mknod(&upper.join("sub/w"), libc::S_IFCHR, 0, 0, 0);
    mknod(&upper.join("sub/tty"), libc::S_IFCHR, 0o620, 5, 0);
    // overlayfs may link whiteouts to one shared inode: each is still a whiteout, not a hardlink.
    fs::hard_link(upper.join("gone"), upper.join("sub/w2")).unwrap();
    set_xattr(&upper.join("op"), "trusted.overlay.opaque", b"y");
    set_xattr(&upper.join("sub"), "trusted.overlay.origin", b"\x00\xfb");
    set_xattr(&upper.join("sub"), "user.kept", b"1");
    for p in ["op/x", "op", "sub/w", "sub/tty", "sub", "a", "gone"] {
        set_mtime(&upper.join(p), 1_650_000_000);
    }

    let mut tar = Vec::new();
    let (digest, size) = diff(&upper, &mut tar).unwrap();
    assert_eq!((digest.clone(), size), (Digest::of(&tar), tar.len() as u64));
    let entries = list(&tar);
    let shown: Vec<(&str, char)> = entries.iter().map(|e| (e.0.as_str(), e.1)).collect();
    assert_eq!(
        shown,
        [
            ("a", '0'),
            (".wh.gone", '0'),
            ("op/", '5'),
            ("op/.wh..wh..opq", '0'),
            ("op/x", '0'),
            ("sub/", '5'),
            ("sub/tty", '3'),
            ("sub/.wh.w", '0'),
            ("sub/.wh.w2", '0'),
        ]
    );
    let sub = entries.iter().find(|e| e.0 == "sub/").unwrap();
    assert_eq!(
        sub.4,
        ["SCHILY.xattr.user.kept=1"],
        "trusted.overlay.* is not recorded"
    );
    assert!(entries.iter().find(|e| e.0 == "op/").unwrap().4.is_empty());

    // Applying the diff recreates the whiteouts, and diffing that gives the same bytes.
    let applied_dir = tmp.path().join("applied");
    fs::create_dir(&applied_dir).unwrap();
    let applied = apply_bytes(&tar, &applied_dir).unwrap();
    assert_eq!(applied.diff_id, digest);
    for w in ["gone", "sub/w", "sub/w2"] {
        let md = fs::symlink_metadata(applied_dir.join(w)).unwrap();
        assert!(md.file_type().is_char_device() && md.rdev() == 0, "{w}");
    }
    assert_eq!(
        get_xattr(&applied_dir.join("op"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    let mut again = Vec::new();
    diff(&applied_dir, &mut again).unwrap();
    assert_eq!(list(&again), entries);
    assert_eq!(again, tar);

    // tar_dir does no translation: the whiteout stays a 0/0 device, the opaque xattr is dropped.
    let mut plain = Vec::new();
    tar_dir(&upper, &mut plain).unwrap();
    let shown: Vec<(String, char)> = list(&plain).into_iter().map(|e| (e.0, e.1)).collect();
    assert!(
        shown.contains(&("gone".into(), '3')) && shown.contains(&("sub/w".into(), '3')),
        "{shown:?}"
    );
    assert!(!shown.iter().any(|(n, _)| n.contains(".wh.")), "{shown:?}");
}

#[test]
fn diff_refuses_overlay_metacopy_and_redirects() {
    require_root();
    for (attr, what) in [
        ("trusted.overlay.metacopy", "metacopy"),
        ("trusted.overlay.redirect", "redirect"),
    ] {
        let upper = tempfile::tempdir().unwrap();
        fs::create_dir(upper.path().join("d")).unwrap();
        fs::write(upper.path().join("d/f"), b"").unwrap();
        set_xattr(&upper.path().join("d/f"), attr, b"");
        let err = diff(upper.path(), std::io::sink()).unwrap_err().to_string();
        assert!(
            err.contains("d/f: overlayfs ") && err.contains(what),
            "{err}"
        );
    }
}

#[test]
fn unsupported_entry_types_are_refused_by_name() {
    require_root();
    let dest = tempfile::tempdir().unwrap();
    let mut t = TarBuf::new();
    t.raw(b"label", EntryType::new(b'V'), b"", b"", 0o644);
    assert_eq!(
        expect_err(apply_bytes(&t.finish(), dest.path())).to_string(),
        r#"layer entry "label": unsupported entry type: type flag 'V'"#
    );

    let mut h = Header::new_gnu();
    h.as_old_mut().name[..6].copy_from_slice(b"sparse");
    h.set_entry_type(EntryType::GNUSparse);
    h.as_gnu_mut().unwrap().set_real_size(0);
    h.set_size(0);
    h.set_mode(0o644);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b""[..]).unwrap();
    assert_eq!(
        expect_err(apply_bytes(&b.into_inner().unwrap(), dest.path())).to_string(),
        r#"layer entry "sparse": unsupported entry type: GNU sparse file"#
    );

    let mut t = TarBuf::new();
    t.pax(&[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")])
        .file("pax-sparse", b"");
    assert_eq!(
        expect_err(apply_bytes(&t.finish(), dest.path())).to_string(),
        r#"layer entry "pax-sparse": unsupported entry type: GNU sparse file (PAX format)"#
    );
}

#[test]
fn pax_and_gnu_long_names_links_and_xattrs_apply() {
    require_root();
    let dest = tempfile::tempdir().unwrap();
    let long_gnu = format!("{}/{}", "g".repeat(120), "h".repeat(120));
    let long_pax = format!("{}/{}", "p".repeat(120), "q".repeat(120));
    let target = "t".repeat(200);
    let mut b = tar::Builder::new(Vec::new());
    // GNU long names via the tar crate's builder.
    let mut h = Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o600);
    h.set_entry_type(EntryType::Regular);
    b.append_data(&mut h, &long_gnu, &b"gnu"[..]).unwrap();
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    b.append_link(&mut h, "gnulink", &target).unwrap();
    // PAX path, linkpath, xattrs, uid and sub-second mtime.
    b.append_pax_extensions([
        ("path", long_pax.as_bytes()),
        ("SCHILY.xattr.user.pax", &b"value"[..]),
        ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..]),
        ("uid", &b"3000000"[..]),
        ("mtime", &b"1234567890.25"[..]),
    ])
    .unwrap();
    let mut h = Header::new_ustar();
    h.as_old_mut().name[..9].copy_from_slice(b"truncated");
    h.set_size(3);
    h.set_mode(0o640);
    h.set_entry_type(EntryType::Regular);
    h.set_cksum();
    b.append(&h, &b"pax"[..]).unwrap();
    b.append_pax_extensions([("linkpath", target.as_bytes())])
        .unwrap();
    let mut h = Header::new_ustar();
    h.as_old_mut().name[..7].copy_from_slice(b"paxlink");
    h.set_entry_type(EntryType::Symlink);
    h.set_size(0);
    h.set_cksum();
    b.append(&h, &b""[..]).unwrap();
    let applied = apply_bytes(&b.into_inner().unwrap(), dest.path()).unwrap();
    assert_eq!(applied.entries, 4);

    assert_eq!(fs::read(dest.path().join(&long_gnu)).unwrap(), b"gnu");
    assert_eq!(
        fs::read_link(dest.path().join("gnulink")).unwrap(),
        Path::new(&target)
    );
    assert_eq!(
        fs::read_link(dest.path().join("paxlink")).unwrap(),
        Path::new(&target)
    );
    let pax = dest.path().join(&long_pax);
    assert_eq!(fs::read(&pax).unwrap(), b"pax");
    assert!(!dest.path().join("truncated").exists());
    let md = fs::metadata(&pax).unwrap();
    assert_eq!(
        (md.uid(), md.mode() & 0o7777, md.mtime(), md.mtime_nsec()),
        (3_000_000, 0o640, 1_234_567_890, 250_000_000)
    );
    assert_eq!(get_xattr(&pax, "user.pax").as_deref(), Some(&b"value"[..]));
    assert_eq!(
        get_xattr(&pax, "trusted.overlay.opaque"),
        None,
        "overlay xattrs from a layer are ignored"
    );
}

#[test]
fn existing_entries_are_replaced_or_updated() {
    require_root();
    let dest = tempfile::tempdir().unwrap();
    let mut t = TarBuf::new();
    t.dir("d/").file("d/f", b"kept");
    t.raw(b"d/", EntryType::Directory, b"", b"", 0o710); // an existing directory is kept and updated
    t.file("x", b"file").dir("x/"); // a file replaced by a directory
    t.dir("y/")
        .file("y/z/deep", b"gone")
        .file("y", b"now a file"); // a tree replaced by a file
    t.file("same", b"one")
        .file("same", b"two")
        .hardlink("same2", "same")
        .hardlink("same2", "same");
    t.raw(b"./", EntryType::Directory, b"", b"", 0o751); // the root's own metadata
    apply_bytes(&t.finish(), dest.path()).unwrap();
    let d = fs::metadata(dest.path().join("d")).unwrap();
    assert_eq!((d.mode() & 0o7777, d.mtime()), (0o710, MTIME as i64));
    assert_eq!(fs::read(dest.path().join("d/f")).unwrap(), b"kept");
    assert!(fs::metadata(dest.path().join("x")).unwrap().is_dir());
    assert_eq!(fs::read(dest.path().join("y")).unwrap(), b"now a file");
    assert_eq!(fs::read(dest.path().join("same2")).unwrap(), b"two");
    let root = fs::metadata(dest.path()).unwrap();
    assert_eq!((root.mode() & 0o7777, root.mtime()), (0o751, MTIME as i64));
}

#[test]
fn a_missing_destination_is_a_clear_error() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let err = expect_err(apply_bytes(b"", &missing)).to_string();
    assert_eq!(
        err,
        format!(
            "layer directory {}: No such file or directory",
            missing.display()
        )
    );
    let err = tar_dir(&missing, std::io::sink()).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "layer directory {}: No such file or directory",
            missing.display()
        )
    );
}
