//! The build context: a directory, or the tar a client sent, seen through its
//! `.dockerignore`; the sources a COPY or ADD names (wildcards, never outside the context);
//! and the content digest the build cache keys COPY/ADD steps on (content and metadata,
//! never modification times). A context tar is indexed, not extracted: an unchanged rebuild
//! only reads it.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::ignore::{clean, Ignore};

/// Why a source cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The path climbs out of the context.
    #[error("{0}: forbidden path outside the build context")]
    Outside(String),
    /// Nothing matches (or everything that does is excluded).
    #[error("{0}: not found in the build context (or excluded by .dockerignore)")]
    NotFound(String),
    /// Several sources into something that is not a directory.
    #[error("When using COPY with more than one source file, the destination must be a directory and end with a /")]
    NotADirectory,
    /// The file system said no.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// One entry of a context tar.
#[derive(Debug, Clone)]
struct TarEntry {
    /// `st_mode`: type and permission bits.
    mode: u32,
    uid: u64,
    gid: u64,
    /// Where the content starts in the tar file, and its length (regular files).
    offset: u64,
    size: u64,
    /// A symbolic or hard link's target.
    link: Option<String>,
    mtime: u64,
}

/// What a context path is: its `st_mode` (type and permission bits), owner, modification
/// time, size, and a symbolic link's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    /// Type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Seconds since the epoch.
    pub mtime: u64,
    /// Bytes (regular files).
    pub size: u64,
    /// A symbolic link's target.
    pub symlink: Option<String>,
}

impl EntryInfo {
    /// A directory.
    pub fn is_dir(&self) -> bool {
        self.mode & 0o170000 == S_IFDIR
    }

    /// A regular file.
    pub fn is_file(&self) -> bool {
        self.mode & 0o170000 == S_IFREG
    }
}

const S_IFDIR: u32 = 0o040000;

/// A directory an archive leaves implicit (a parent it has no entry for, or the root).
const IMPLICIT_DIR: TarEntry = TarEntry {
    mode: S_IFDIR | 0o755,
    uid: 0,
    gid: 0,
    offset: 0,
    size: 0,
    link: None,
    mtime: 0,
};
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// A build context on disk: a directory, or an indexed tar file.
pub struct Context {
    root: PathBuf,
    tar: Option<std::collections::BTreeMap<String, TarEntry>>,
    /// Paths (and what is under them) a context tar carries that are not the context's.
    hidden: Vec<String>,
    ignore: Ignore,
    /// `paths()`, walked once: a context does not change while it is used.
    listed: std::sync::OnceLock<Vec<String>>,
}

impl Context {
    /// The context at `root`, with its `.dockerignore` (or `<dockerfile>.dockerignore`, which
    /// wins, as Docker's rule is) applied.
    pub fn open(root: &Path, dockerfile: Option<&Path>) -> Result<Context, ContextError> {
        let specific = dockerfile.map(|d| {
            let mut s = d.as_os_str().to_owned();
            s.push(".dockerignore");
            PathBuf::from(s)
        });
        let file = specific
            .filter(|p| p.is_file())
            .unwrap_or_else(|| root.join(".dockerignore"));
        let ignore = match fs::read_to_string(&file) {
            Ok(t) => Ignore::parse(&t).map_err(|e| ContextError::Io {
                path: file.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            })?,
            Err(_) => Ignore::default(),
        };
        Ok(Context {
            root: root.to_path_buf(),
            tar: None,
            hidden: Vec::new(),
            ignore,
            listed: std::sync::OnceLock::new(),
        })
    }

    /// The context in the (uncompressed) tar file at `file`, indexed; its `.dockerignore`
    /// applied. Entries at or under one of `hidden` are not part of the context (`read` and
    /// `files_under` still reach them).
    pub fn from_tar(file: &Path, hidden: &[&str]) -> Result<Context, ContextError> {
        let io = |source| ContextError::Io {
            path: file.display().to_string(),
            source,
        };
        let mut index = std::collections::BTreeMap::new();
        let mut archive = tar::Archive::new(fs::File::open(file).map_err(io)?);
        for e in archive.entries().map_err(io)? {
            let e = e.map_err(io)?;
            let path = e.path().map_err(io)?.to_string_lossy().into_owned();
            let rel = clean(&path);
            if rel == "." || rel.starts_with("../") || rel == ".." {
                continue;
            }
            let h = e.header();
            let kind = h.entry_type();
            let type_bits = if kind.is_dir() {
                S_IFDIR
            } else if kind.is_symlink() {
                S_IFLNK
            } else if kind.is_file() || kind.is_hard_link() {
                S_IFREG
            } else {
                continue; // devices, fifos: not part of a build context
            };
            let link = e
                .link_name()
                .map_err(io)?
                .map(|l| l.to_string_lossy().into_owned());
            // Parent directories an archive leaves implicit.
            let mut parent = Path::new(&rel).parent();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                index
                    .entry(p.to_string_lossy().into_owned())
                    .or_insert(IMPLICIT_DIR);
                parent = p.parent();
            }
            index.insert(
                rel,
                TarEntry {
                    mode: type_bits | (h.mode().map_err(io)? & 0o7777),
                    uid: h.uid().unwrap_or(0),
                    gid: h.gid().unwrap_or(0),
                    offset: e.raw_file_position(),
                    size: if kind.is_file() { e.size() } else { 0 },
                    link,
                    mtime: h.mtime().unwrap_or(0),
                },
            );
        }
        let mut ctx = Context {
            root: file.to_path_buf(),
            tar: Some(index),
            hidden: hidden.iter().map(|h| clean(h)).collect(),
            ignore: Ignore::default(),
            listed: std::sync::OnceLock::new(),
        };
        if let Ok(text) = ctx.read(".dockerignore") {
            ctx.ignore =
                Ignore::parse(&String::from_utf8_lossy(&text)).map_err(|e| ContextError::Io {
                    path: ".dockerignore".into(),
                    source: std::io::Error::other(e.to_string()),
                })?;
        }
        Ok(ctx)
    }

    /// The regular files under the directory `dir` of a context tar, hidden ones included
    /// (relative to `dir`).
    pub fn files_under(&self, dir: &str) -> Vec<String> {
        let prefix = format!("{}/", clean(dir));
        self.tar
            .iter()
            .flat_map(|index| index.iter())
            .filter(|(p, e)| {
                e.mode & 0o170000 == S_IFREG && e.link.is_none() && p.starts_with(&prefix)
            })
            .map(|(p, _)| p[prefix.len()..].to_string())
            .collect()
    }

    /// What the context path `rel` is (a hard link in a tar reads as its target's file).
    pub fn entry(&self, rel: &str) -> Result<EntryInfo, ContextError> {
        let rel = clean(rel);
        match &self.tar {
            None => {
                let path = self.root.join(&rel);
                let md = fs::symlink_metadata(&path).map_err(|source| ContextError::Io {
                    path: rel.clone(),
                    source,
                })?;
                let symlink = if md.file_type().is_symlink() {
                    fs::read_link(&path)
                        .ok()
                        .map(|l| l.to_string_lossy().into_owned())
                } else {
                    None
                };
                Ok(EntryInfo {
                    mode: md.mode(),
                    uid: md.uid() as u64,
                    gid: md.gid() as u64,
                    mtime: md.mtime().max(0) as u64,
                    size: if md.is_file() { md.len() } else { 0 },
                    symlink,
                })
            }
            Some(_) => {
                let e = self.tar_entry(&rel)?;
                Ok(EntryInfo {
                    mode: e.mode,
                    uid: e.uid,
                    gid: e.gid,
                    mtime: e.mtime,
                    size: e.size,
                    symlink: e.link.clone().filter(|_| e.mode & 0o170000 == S_IFLNK),
                })
            }
        }
    }

    /// A tar entry, hard links followed to their target.
    fn tar_entry(&self, rel: &str) -> Result<&TarEntry, ContextError> {
        let index = self
            .tar
            .as_ref()
            .ok_or_else(|| ContextError::NotFound(rel.into()))?;
        // The context's root, which archives often leave implicit (docker-py's has no entry
        // for it).
        let mut e = match index.get(rel) {
            Some(e) => e,
            None if rel == "." => &IMPLICIT_DIR,
            None => return Err(ContextError::NotFound(rel.into())),
        };
        for _ in 0..8 {
            match &e.link {
                Some(target) if e.mode & 0o170000 == S_IFREG => {
                    e = index
                        .get(&clean(target))
                        .ok_or_else(|| ContextError::NotFound(target.clone()))?;
                }
                _ => return Ok(e),
            }
        }
        Err(ContextError::NotFound(rel.into()))
    }

    /// The content of the regular file `rel`, streamed.
    pub fn open_file(&self, rel: &str) -> Result<Box<dyn Read + Send>, ContextError> {
        let rel = clean(rel);
        let io = |source| ContextError::Io {
            path: rel.clone(),
            source,
        };
        match &self.tar {
            None => Ok(Box::new(fs::File::open(self.root.join(&rel)).map_err(io)?)),
            Some(_) => {
                let e = self.tar_entry(&rel)?;
                Ok(Box::new(self.tar_reader(e).map_err(io)?))
            }
        }
    }

    /// The content of the regular file `rel` (whatever the ignore file says).
    pub fn read(&self, rel: &str) -> Result<Vec<u8>, ContextError> {
        let rel = clean(rel);
        let io = |source| ContextError::Io {
            path: rel.clone(),
            source,
        };
        match &self.tar {
            None => fs::read(self.root.join(&rel)).map_err(io),
            Some(index) => {
                let e = index
                    .get(&rel)
                    .filter(|e| e.mode & 0o170000 == S_IFREG && e.link.is_none())
                    .ok_or_else(|| ContextError::NotFound(rel.clone()))?;
                let mut out = Vec::new();
                self.tar_reader(e)
                    .map_err(io)?
                    .read_to_end(&mut out)
                    .map_err(io)?;
                Ok(out)
            }
        }
    }

    fn tar_reader(&self, e: &TarEntry) -> std::io::Result<impl Read + Send + 'static> {
        use std::io::{Seek, SeekFrom};
        let mut f = fs::File::open(&self.root)?;
        f.seek(SeekFrom::Start(e.offset))?;
        Ok(f.take(e.size))
    }

    /// Every path (relative, `/`-separated) the context holds, excluded ones left out,
    /// sorted.
    pub fn paths(&self) -> Result<Vec<String>, ContextError> {
        Ok(self.listing()?.to_vec())
    }

    fn listing(&self) -> Result<&[String], ContextError> {
        if let Some(l) = self.listed.get() {
            return Ok(l);
        }
        let mut out = Vec::new();
        match &self.tar {
            None => self.walk("", &mut out)?,
            Some(index) => {
                // As the walk of a directory: an excluded directory hides what is under it
                // unless the ignore file has exceptions.
                let mut hidden: std::collections::HashSet<&str> = Default::default();
                for p in index.keys() {
                    let mut under_hidden = false;
                    let mut anc = p.as_str();
                    while let Some(i) = anc.rfind('/') {
                        anc = &anc[..i];
                        if hidden.contains(anc) {
                            under_hidden = true;
                            break;
                        }
                    }
                    let not_ours = self.hidden.iter().any(|h| {
                        p == h
                            || (p.starts_with(h.as_str())
                                && p.as_bytes().get(h.len()) == Some(&b'/'))
                    });
                    if under_hidden || not_ours {
                        continue;
                    }
                    if self.ignore.excluded(p) {
                        if !self.ignore.has_exceptions() {
                            hidden.insert(p);
                        }
                    } else {
                        out.push(p.clone());
                    }
                }
            }
        }
        out.sort();
        Ok(self.listed.get_or_init(|| out))
    }

    /// Whether the context holds `rel` (a cleaned relative path) after its ignore file.
    pub fn contains(&self, rel: &str) -> Result<bool, ContextError> {
        Ok(self
            .listing()?
            .binary_search_by(|p| p.as_str().cmp(rel))
            .is_ok())
    }

    fn walk(&self, rel: &str, out: &mut Vec<String>) -> Result<(), ContextError> {
        let dir = if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        };
        let entries = fs::read_dir(&dir).map_err(|source| ContextError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let excluded = self.ignore.excluded(&path);
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if !excluded {
                out.push(path.clone());
            }
            // An excluded directory is still walked when an exception may bring back
            // something under it.
            if is_dir && (!excluded || self.ignore.has_exceptions()) {
                self.walk(&path, out)?;
            }
        }
        Ok(())
    }

    /// The context paths a COPY/ADD source names: a path or a wildcard pattern (Go's
    /// syntax per component), relative to the context root whatever its leading `/`.
    pub fn resolve(&self, src: &str) -> Result<Vec<String>, ContextError> {
        let depth: i32 = src
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .map(|p| if p == ".." { -1 } else { 1 })
            .scan(0, |d, x| {
                *d += x;
                Some(*d)
            })
            .min()
            .unwrap_or(0);
        if depth < 0 {
            return Err(ContextError::Outside(src.to_string()));
        }
        let cleaned = clean(src);
        if cleaned == "." {
            return Ok(vec![".".into()]);
        }
        let all = self.listing()?;
        let pattern = Ignore::parse(&cleaned).unwrap_or_default();
        let wild = cleaned.contains(['*', '?', '[']);
        let hits: Vec<String> = if wild {
            all.iter()
                .filter(|p| {
                    p.matches('/').count() == cleaned.matches('/').count() && pattern.excluded(p)
                })
                .cloned()
                .collect()
        } else if self.contains(&cleaned)? {
            vec![cleaned.clone()]
        } else {
            Vec::new()
        };
        if hits.is_empty() {
            return Err(ContextError::NotFound(src.to_string()));
        }
        Ok(hits)
    }

    /// The cache key of `sources`: each path under them (not excluded), its type, mode,
    /// owner, content (or link target), in a stable order; never its modification time.
    pub fn digest(&self, sources: &[String]) -> Result<String, ContextError> {
        let all = self.listing()?;
        let mut h = Sha256::new();
        let mut sorted: Vec<&String> = sources.iter().collect();
        sorted.sort();
        for src in sorted {
            let prefix = format!("{src}/");
            let under: Vec<&String> = all
                .iter()
                .filter(|p| src == "." || *p == src || p.starts_with(&prefix))
                .collect();
            for rel in under {
                let path = self.root.join(rel);
                let io = |source| ContextError::Io {
                    path: rel.clone(),
                    source,
                };
                if let Some(index) = &self.tar {
                    let e = index
                        .get(rel.as_str())
                        .ok_or_else(|| ContextError::NotFound(rel.clone()))?;
                    h.update(rel.as_bytes());
                    h.update([0]);
                    h.update(format!("{:o} {} {}", e.mode, e.uid, e.gid).as_bytes());
                    if let Some(l) = &e.link {
                        h.update(l.as_bytes());
                    } else if e.mode & 0o170000 == S_IFREG {
                        let mut r = self.tar_reader(e).map_err(io)?;
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = r.read(&mut buf).map_err(io)?;
                            if n == 0 {
                                break;
                            }
                            h.update(&buf[..n]);
                        }
                    }
                    h.update([0xff]);
                    continue;
                }
                let md = fs::symlink_metadata(&path).map_err(io)?;
                h.update(rel.as_bytes());
                h.update([0]);
                h.update(format!("{:o} {} {}", md.mode(), md.uid(), md.gid()).as_bytes());
                if md.file_type().is_symlink() {
                    h.update(
                        fs::read_link(&path)
                            .map_err(io)?
                            .as_os_str()
                            .as_encoded_bytes(),
                    );
                } else if md.is_file() {
                    let mut f = fs::File::open(&path).map_err(io)?;
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = f.read(&mut buf).map_err(io)?;
                        if n == 0 {
                            break;
                        }
                        h.update(&buf[..n]);
                    }
                }
                h.update([0xff]);
            }
        }
        Ok(format!("sha256:{:x}", h.finalize()))
    }
}

/// Where COPY puts `source` (a file name or directory) for destination `dest`: into `dest`
/// when it ends with `/` (or there are several sources, which requires that), else as `dest`.
/// A directory source's content goes into the destination.
pub fn target(
    dest: &str,
    source_name: &str,
    source_is_dir: bool,
    several: bool,
) -> Result<String, ContextError> {
    let into = dest.ends_with('/') || dest == "." || dest.ends_with("/.");
    if several && !into {
        return Err(ContextError::NotADirectory);
    }
    if source_is_dir {
        return Ok(dest.trim_end_matches('/').to_string().replace("/.", "") + "/");
    }
    Ok(if into {
        format!(
            "{}/{source_name}",
            dest.trim_end_matches('/').trim_end_matches("/.")
        )
    } else {
        dest.to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        for dir in ["src/lib", "node_modules/x", "docs"] {
            fs::create_dir_all(p.join(dir)).unwrap();
        }
        for (f, c) in [
            ("Dockerfile", "FROM x"),
            ("src/main.rs", "fn main(){}"),
            ("src/lib/a.rs", "a"),
            ("src/lib/b.rs", "b"),
            ("node_modules/x/index.js", "js"),
            ("docs/keep.md", "k"),
            ("docs/drop.md", "d"),
            ("app.log", "log"),
        ] {
            fs::write(p.join(f), c).unwrap();
        }
        fs::write(
            p.join(".dockerignore"),
            "node_modules\n*.log\ndocs/*\n!docs/keep.md\n",
        )
        .unwrap();
        d
    }

    #[test]
    fn ignore_applies_and_sources_resolve() {
        let d = tree();
        let ctx = Context::open(d.path(), None).unwrap();
        let paths = ctx.paths().unwrap();
        assert!(paths.contains(&"src/lib/a.rs".to_string()));
        assert!(paths.contains(&"docs/keep.md".to_string()));
        assert!(
            !paths
                .iter()
                .any(|p| p.starts_with("node_modules") || p == "app.log" || p == "docs/drop.md"),
            "{paths:?}"
        );
        assert_eq!(ctx.resolve("/src/main.rs").unwrap(), ["src/main.rs"]);
        assert_eq!(
            ctx.resolve("src/lib/*.rs").unwrap(),
            ["src/lib/a.rs", "src/lib/b.rs"]
        );
        assert_eq!(
            ctx.resolve("./src/../src/lib/a.rs").unwrap(),
            ["src/lib/a.rs"]
        );
        assert!(matches!(
            ctx.resolve("../etc/passwd"),
            Err(ContextError::Outside(_))
        ));
        assert!(matches!(
            ctx.resolve("src/../../x"),
            Err(ContextError::Outside(_))
        ));
        assert!(
            matches!(ctx.resolve("app.log"), Err(ContextError::NotFound(_))),
            "excluded"
        );
        assert!(matches!(
            ctx.resolve("nope/*"),
            Err(ContextError::NotFound(_))
        ));
        // <Dockerfile>.dockerignore wins over .dockerignore.
        fs::write(d.path().join("Dockerfile.dockerignore"), "src\n").unwrap();
        let ctx2 = Context::open(d.path(), Some(&d.path().join("Dockerfile"))).unwrap();
        assert!(ctx2.paths().unwrap().contains(&"app.log".to_string()));
        assert!(matches!(
            ctx2.resolve("src/main.rs"),
            Err(ContextError::NotFound(_))
        ));
    }

    #[test]
    fn a_context_tar_reads_as_its_directory() {
        let d = tree();
        fs::create_dir_all(d.path().join(".secrets")).unwrap();
        fs::write(d.path().join(".secrets/token"), "t").unwrap();
        let t = tempfile::tempdir().unwrap();
        let tar_path = t.path().join("ctx.tar");
        let mut b = tar::Builder::new(fs::File::create(&tar_path).unwrap());
        b.append_dir_all(".", d.path()).unwrap();
        b.into_inner().unwrap();
        let dir = Context::open(d.path(), None).unwrap();
        let tar = Context::from_tar(&tar_path, &[".secrets"]).unwrap();
        let want: Vec<String> = dir
            .paths()
            .unwrap()
            .into_iter()
            .filter(|p| !p.starts_with(".secrets"))
            .collect();
        assert_eq!(tar.paths().unwrap(), want);
        assert_eq!(
            tar.resolve("src/lib/*.rs").unwrap(),
            ["src/lib/a.rs", "src/lib/b.rs"]
        );
        assert!(matches!(
            tar.resolve("app.log"),
            Err(ContextError::NotFound(_))
        ));
        assert!(matches!(
            tar.resolve(".secrets/token"),
            Err(ContextError::NotFound(_))
        ));
        assert_eq!(tar.read("src/main.rs").unwrap(), b"fn main(){}");
        let mut s = String::new();
        tar.open_file("src/lib/a.rs")
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "a");
        for p in ["src", "src/lib/a.rs", "docs/keep.md"] {
            let (a, b) = (dir.entry(p).unwrap(), tar.entry(p).unwrap());
            assert_eq!(
                (a.mode, a.size, a.mtime, a.is_dir()),
                (b.mode, b.size, b.mtime, b.is_dir()),
                "{p}"
            );
        }
        assert_eq!(tar.files_under(".secrets"), ["token"]);
        assert_eq!(tar.read(".secrets/token").unwrap(), b"t");
        // Digests change with content, as the directory's do.
        let before = tar.digest(&["src".into()]).unwrap();
        fs::write(d.path().join("src/lib/a.rs"), "A").unwrap();
        let mut b = tar::Builder::new(fs::File::create(&tar_path).unwrap());
        b.append_dir_all(".", d.path()).unwrap();
        b.into_inner().unwrap();
        let tar2 = Context::from_tar(&tar_path, &[]).unwrap();
        assert_ne!(tar2.digest(&["src".into()]).unwrap(), before);
        assert_eq!(
            tar2.digest(&["docs".into()]).unwrap(),
            tar.digest(&["docs".into()]).unwrap()
        );
        fs::remove_file(&tar_path).unwrap();
    }

    #[test]
    fn digests_follow_content_not_times() {
        let d = tree();
        let ctx = Context::open(d.path(), None).unwrap();
        let srcs = vec!["src".to_string()];
        let before = ctx.digest(&srcs).unwrap();
        // Touching the modification time alone: the same key.
        let f = fs::File::options()
            .write(true)
            .open(d.path().join("src/lib/a.rs"))
            .unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
            .unwrap();
        assert_eq!(ctx.digest(&srcs).unwrap(), before);
        // One byte: another key.
        fs::write(d.path().join("src/lib/a.rs"), "A").unwrap();
        let changed = ctx.digest(&srcs).unwrap();
        assert_ne!(changed, before);
        // Mode: another key.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(
            d.path().join("src/lib/a.rs"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        assert_ne!(ctx.digest(&srcs).unwrap(), changed);
        // Something excluded changing does not matter.
        let all = vec![".".to_string()];
        let k = ctx.digest(&all).unwrap();
        fs::write(d.path().join("app.log"), "more log").unwrap();
        assert_eq!(ctx.digest(&all).unwrap(), k);
    }

    #[test]
    fn destination_rules() {
        assert_eq!(target("/app/", "a.rs", false, false).unwrap(), "/app/a.rs");
        assert_eq!(target("/app", "a.rs", false, false).unwrap(), "/app");
        assert_eq!(target("/app/", "a.rs", false, true).unwrap(), "/app/a.rs");
        assert!(matches!(
            target("/app", "a.rs", false, true),
            Err(ContextError::NotADirectory)
        ));
        assert_eq!(target("/www", "site", true, false).unwrap(), "/www/");
        assert_eq!(target(".", "a", false, false).unwrap(), "./a");
    }
}
