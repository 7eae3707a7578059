//! The build context: a directory seen through its `.dockerignore`, the sources a COPY or
//! ADD names (wildcards, never outside the context), and the content digest the build cache
//! keys COPY/ADD steps on (content and metadata, never modification times).

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

/// A build context on disk.
pub struct Context {
    root: PathBuf,
    ignore: Ignore,
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
            ignore,
        })
    }

    /// Every path (relative, `/`-separated) the context holds, excluded ones left out,
    /// sorted.
    pub fn paths(&self) -> Result<Vec<String>, ContextError> {
        let mut out = Vec::new();
        self.walk("", &mut out)?;
        out.sort();
        Ok(out)
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
        let all = self.paths()?;
        let pattern = Ignore::parse(&cleaned).unwrap_or_default();
        let wild = cleaned.contains(['*', '?', '[']);
        let hits: Vec<String> = if wild {
            all.into_iter()
                .filter(|p| {
                    p.matches('/').count() == cleaned.matches('/').count() && pattern.excluded(p)
                })
                .collect()
        } else {
            all.into_iter().filter(|p| *p == cleaned).collect()
        };
        if hits.is_empty() {
            return Err(ContextError::NotFound(src.to_string()));
        }
        Ok(hits)
    }

    /// The cache key of `sources`: each path under them (not excluded), its type, mode,
    /// owner, content (or link target), in a stable order; never its modification time.
    pub fn digest(&self, sources: &[String]) -> Result<String, ContextError> {
        let all = self.paths()?;
        let mut h = Sha256::new();
        let mut sorted: Vec<&String> = sources.iter().collect();
        sorted.sort();
        for src in sorted {
            let under: Vec<&String> = all
                .iter()
                .filter(|p| src == "." || *p == src || p.starts_with(&format!("{src}/")))
                .collect();
            for rel in under {
                let path = self.root.join(rel);
                let io = |source| ContextError::Io {
                    path: rel.clone(),
                    source,
                };
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
