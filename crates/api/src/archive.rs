//! `cp`: `GET/HEAD/PUT /containers/{id}/archive?path=…`. Paths are resolved inside the
//! container's root file system with openat2(RESOLVE_IN_ROOT), so no symlink in the container
//! leads outside it; symlinks are archived as links, never followed.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
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

/// `GET` (a tar of the path) and `HEAD` (its stat only).
pub(crate) fn get(engine: &Arc<Engine>, id: &str, head: &Head, w: &mut UnixStream) -> Handled {
    let path = head.q("path").unwrap_or("").to_string();
    // A trailing "/." means the directory's content (docker cp's rule); otherwise the item.
    let fd = open_in(engine, id, &path, libc::O_PATH | libc::O_NOFOLLOW)?;
    let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let file = File::from(fd);
    let md = file
        .metadata()
        .map_err(|e| failure(500, format!("stat {path}: {e}")))?;
    let link = if md.file_type().is_symlink() {
        std::fs::read_link(&proc_path).ok()
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
    let mut hdr = format!(
        "HTTP/1.1 200 OK\r\n{STAT_HEADER}: {stat}\r\nApi-Version: {}\r\nContent-Type: application/x-tar\r\n",
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
    b.follow_symlinks(false);
    let contents_only = path.ends_with("/.");
    let r = if md.is_dir() {
        let base = if contents_only { "." } else { name.as_str() };
        b.append_dir_all(base, &proc_path)
    } else if let Some(target) = &link {
        let mut h = tar::Header::new_gnu();
        h.set_metadata(&md);
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, &name, target)
    } else {
        File::open(&proc_path).and_then(|mut f| b.append_file(&name, &mut f))
    };
    if r.is_ok() {
        if let Ok(out) = b.into_inner() {
            let _ = out.finish();
        }
    }
    Ok(Output::Done)
}

/// `PUT`: extracts a tar into the directory at `path` (which must exist).
pub(crate) fn put(engine: &Arc<Engine>, id: &str, head: &Head, body: &mut impl Read) -> Handled {
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
