//! `cp`: `GET/HEAD/PUT /containers/{id}/archive?path=…`. Paths are resolved inside the
//! container's root file system with openat2(RESOLVE_IN_ROOT), so no symlink in the container
//! leads outside it; symlinks are archived as links, never followed.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use engine::engine::Engine;
use serde_json::json;

use crate::http::{Chunked, Head};
use crate::server::{bad_request, failure, Failure, Handled, Output};

use crate::STAT_HEADER;

fn open_in(engine: &Arc<Engine>, id: &str, path: &str, flags: i32) -> Result<OwnedFd, Failure> {
    if path.is_empty() {
        return Err(bad_request("a path is required"));
    }
    let rootfs = engine.rootfs(id)?;
    let root = File::open(&rootfs)
        .map_err(|e| failure(500, format!("opening the root file system: {e}")))?;
    let c = CString::new(Path::new(path).as_os_str().as_bytes())
        .map_err(|_| bad_request("the path contains a NUL byte"))?;
    inroot::openat2_in_root(root.as_fd(), &c, flags | libc::O_CLOEXEC).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            failure(
                404,
                format!("Could not find the file {path} in container {id}"),
            )
        } else {
            failure(400, format!("{path} in container {id}: {e}"))
        }
    })
}

fn base_name(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    match Path::new(trimmed).file_name() {
        Some(n) => n.to_string_lossy().into_owned(),
        None => ".".into(),
    }
}

/// The target of the symlink open (O_PATH | O_NOFOLLOW) as `fd`.
fn link_target(fd: &File) -> std::io::Result<std::path::PathBuf> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: readlinkat with an empty path reads the link `fd` refers to, into `buf`.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(std::path::PathBuf::from(std::ffi::OsString::from_vec(buf)))
}

/// Appends `rel` (a path inside `root`) to the archive as `name`, and what is below it. Every
/// entry is opened afresh with openat2(RESOLVE_IN_ROOT) and O_NOFOLLOW: a symlink is archived
/// as a link, a device or FIFO as its header only (never read), and a symlink swapped into
/// the tree meanwhile still resolves inside the container.
fn append_tree<W: Write>(
    b: &mut tar::Builder<W>,
    root: &File,
    rel: &Path,
    name: &Path,
) -> std::io::Result<()> {
    let open = |flags: i32| -> std::io::Result<File> {
        let c = CString::new(rel.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::other("a path contains a NUL byte"))?;
        inroot::openat2_in_root(root.as_fd(), &c, flags | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .map(File::from)
    };
    let node = open(libc::O_PATH)?;
    let md = node.metadata()?;
    let mut h = tar::Header::new_gnu();
    h.set_metadata(&md);
    let ft = md.file_type();
    if ft.is_file() {
        let f = open(libc::O_RDONLY)?;
        return b.append_data(&mut h, name, f.take(md.len()));
    }
    h.set_size(0);
    if ft.is_symlink() {
        let target = link_target(&node)?;
        return b.append_link(&mut h, name, target);
    }
    if !ft.is_dir() {
        // Devices and FIFOs as headers; sockets are not archivable.
        if ft.is_socket() {
            return Ok(());
        }
        return b.append_data(&mut h, name, std::io::empty());
    }
    b.append_data(&mut h, name, std::io::empty())?;
    let dir = open(libc::O_RDONLY | libc::O_DIRECTORY)?;
    let mut children: Vec<std::ffi::OsString> =
        std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
    children.sort();
    for c in children {
        append_tree(b, root, &rel.join(&c), &name.join(&c))?;
    }
    Ok(())
}

/// `GET` (a tar of the path) and `HEAD` (its stat only).
pub(crate) fn get(engine: &Arc<Engine>, id: &str, head: &Head, w: &mut UnixStream) -> Handled {
    let path = head.q("path").unwrap_or("").to_string();
    let root = File::open(engine.rootfs(id)?)
        .map_err(|e| failure(500, format!("opening the root file system: {e}")))?;
    let fd = open_in(engine, id, &path, libc::O_PATH | libc::O_NOFOLLOW)?;
    let file = File::from(fd);
    let md = file
        .metadata()
        .map_err(|e| failure(500, format!("stat {path}: {e}")))?;
    let link = if md.file_type().is_symlink() {
        link_target(&file).ok()
    } else {
        None
    };
    let name = base_name(&path);
    let stat = json!({
        "name": name,
        "size": md.len(),
        "mode": md.mode(),
        "mtime": md.mtime(),
        "linkTarget": link.as_ref().map(|l| l.display().to_string()).unwrap_or_default(),
    });
    // The docker CLI's form of the same: base64 JSON, Go's FileMode, an RFC 3339 time.
    let docker_stat = engine::distribution::base64(
        json!({
            "name": stat["name"],
            "size": md.len(),
            "mode": crate::docker::go_file_mode(md.mode()),
            "mtime": timefmt::rfc3339(md.mtime(), 0),
            "linkTarget": stat["linkTarget"],
        })
        .to_string()
        .as_bytes(),
    );
    let mut hdr = format!(
        "HTTP/1.1 200 OK\r\n{STAT_HEADER}: {stat}\r\nX-Docker-Container-Path-Stat: {docker_stat}\r\nApi-Version: {}\r\nConnection: close\r\nContent-Type: application/x-tar\r\n",
        crate::API_VERSION
    );
    if head.method == "HEAD" {
        hdr.push_str("Content-Length: 0\r\n\r\n");
        w.write_all(hdr.as_bytes())
            .map_err(|e| failure(500, e.to_string()))?;
        return Ok(Output::Done);
    }
    hdr.push_str("Transfer-Encoding: chunked\r\n\r\n");
    w.write_all(hdr.as_bytes())
        .map_err(|e| failure(500, e.to_string()))?;
    let out = Chunked(w.try_clone().map_err(|e| failure(500, e.to_string()))?);
    let mut b = tar::Builder::new(out);
    // A trailing "/." means the directory's content (docker cp's rule); otherwise the item.
    let base = if path.ends_with("/.") && md.is_dir() {
        "."
    } else {
        name.as_str()
    };
    let rel = Path::new("/").join(path.trim_start_matches('/'));
    let r = append_tree(&mut b, &root, &rel, Path::new(base));
    // A failure midway leaves the stream unterminated: the client sees a broken archive.
    if r.is_ok() {
        if let Ok(out) = b.into_inner() {
            let _ = out.finish();
        }
    }
    Ok(Output::Done)
}

/// `PUT`: extracts a tar into the directory at `path` (which must exist).
pub(crate) fn put(
    engine: &Arc<Engine>,
    id: &str,
    head: &Head,
    body: &mut (impl Read + ?Sized),
) -> Handled {
    let path = head.q("path").unwrap_or("").to_string();
    let fd = open_in(engine, id, &path, libc::O_PATH | libc::O_DIRECTORY)?;
    let dest = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let md = std::fs::metadata(&dest).map_err(|e| failure(500, e.to_string()))?;
    if !md.is_dir() {
        return Err(bad_request(format!("{path} is not a directory")));
    }
    let _ = md.permissions().mode();
    image::layer::apply(body, image::Compression::None, Path::new(&dest))
        .map_err(|e| bad_request(format!("extracting into {path}: {e}")))?;
    drop(fd);
    Ok(Output::Empty(200))
}

#[cfg(test)]
mod tests {
    #[test]
    fn base_names() {
        assert_eq!(super::base_name("/etc/hosts"), "hosts");
        assert_eq!(super::base_name("/etc/"), "etc");
        assert_eq!(super::base_name("/"), ".");
    }
}
