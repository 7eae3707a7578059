//! Named volumes (`berth volume …`, `-v name:/path`): directories under the data root that
//! outlive the containers using them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil;

/// `volume inspect`, shaped like Docker's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Its name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Always `local`.
    #[serde(rename = "Driver")]
    pub driver: String,
    /// Where its data is on the host.
    #[serde(rename = "Mountpoint")]
    pub mountpoint: PathBuf,
    /// RFC 3339.
    #[serde(rename = "CreatedAt")]
    pub created_at: String,
    /// User labels.
    #[serde(rename = "Labels")]
    pub labels: BTreeMap<String, String>,
    /// `local`.
    #[serde(rename = "Scope")]
    pub scope: String,
    /// Driver options (none for `local` here).
    #[serde(rename = "Options")]
    pub options: BTreeMap<String, String>,
    /// Created for one container (`-v /path` without a name): removed with it by `rm -v`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub anonymous: bool,
}

/// Why a volume operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// No such volume.
    #[error("no such volume: {0}")]
    NotFound(String),
    /// The name is not a valid volume name.
    #[error("invalid volume name {0:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, at least 2 characters")]
    InvalidName(String),
    /// Still used by containers.
    #[error("remove {name}: volume is in use - [{containers}]")]
    InUse {
        /// The volume.
        name: String,
        /// The containers using it.
        containers: String,
    },
    /// The file system said no.
    #[error("volume {name}: {source}")]
    Io {
        /// The volume.
        name: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Docker's rule for container and volume names.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// The volumes under `<root>/volumes`.
pub struct Volumes {
    dir: PathBuf,
}

impl Volumes {
    /// Opens (creating) the volume directory.
    pub fn open(root: &Path) -> std::io::Result<Volumes> {
        let dir = root.join("volumes");
        fs::create_dir_all(&dir)?;
        Ok(Volumes { dir })
    }

    fn meta(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("volume.json")
    }

    /// Creates `name` (or returns it when it exists). `None` makes an anonymous volume.
    pub fn create(
        &self,
        name: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<(Volume, bool), VolumeError> {
        let (name, anonymous) = match name {
            Some(n) => (n.to_string(), false),
            None => (fsutil::random_hex(32), true),
        };
        if !valid_name(&name) {
            return Err(VolumeError::InvalidName(name));
        }
        if let Ok(v) = self.inspect(&name) {
            return Ok((v, false));
        }
        let io = |source| VolumeError::Io {
            name: name.clone(),
            source,
        };
        let vdir = self.dir.join(&name);
        fs::create_dir_all(vdir.join("_data")).map_err(io)?;
        let v = Volume {
            name: name.clone(),
            driver: "local".into(),
            mountpoint: vdir.join("_data"),
            created_at: timefmt::now(),
            labels,
            scope: "local".into(),
            options: BTreeMap::new(),
            anonymous,
        };
        let json = serde_json::to_vec_pretty(&v).map_err(|e| io(std::io::Error::other(e)))?;
        fsutil::write_atomic(&self.meta(&name), &json, 0o600).map_err(io)?;
        Ok((v, true))
    }

    /// One volume.
    pub fn inspect(&self, name: &str) -> Result<Volume, VolumeError> {
        if !valid_name(name) {
            return Err(VolumeError::NotFound(name.into()));
        }
        let bytes = fs::read(self.meta(name)).map_err(|_| VolumeError::NotFound(name.into()))?;
        serde_json::from_slice(&bytes).map_err(|e| VolumeError::Io {
            name: name.into(),
            source: std::io::Error::other(e),
        })
    }

    /// Every volume, by name.
    pub fn list(&self) -> Vec<Volume> {
        let mut v: Vec<Volume> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| self.inspect(&e.file_name().to_string_lossy()).ok())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Removes a volume; `users` are the containers using it (removal is refused then).
    pub fn remove(&self, name: &str, users: &[String]) -> Result<(), VolumeError> {
        self.inspect(name)?;
        if !users.is_empty() {
            return Err(VolumeError::InUse {
                name: name.into(),
                containers: users.join(", "),
            });
        }
        // The metadata goes first: a crash mid-way leaves data without a volume, never a
        // volume without its data.
        let io = |source| VolumeError::Io {
            name: name.into(),
            source,
        };
        fs::remove_file(self.meta(name)).map_err(io)?;
        fs::remove_dir_all(self.dir.join(name)).map_err(io)
    }

    /// Bytes used by a volume.
    pub fn size(&self, name: &str) -> u64 {
        fsutil::dir_size(&self.dir.join(name).join("_data"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_and_names() {
        let root = tempfile::tempdir().unwrap();
        let vols = Volumes::open(root.path()).unwrap();
        let (v, created) = vols.create(Some("data"), BTreeMap::new()).unwrap();
        assert!(created && v.mountpoint.is_dir());
        fs::write(v.mountpoint.join("f"), "x").unwrap();
        let (again, created) = vols.create(Some("data"), BTreeMap::new()).unwrap();
        assert!(!created);
        assert_eq!(again.created_at, v.created_at);
        let (anon, _) = vols.create(None, BTreeMap::new()).unwrap();
        assert!(anon.anonymous);
        assert_eq!(vols.list().len(), 2);
        assert!(matches!(
            vols.remove("data", &["web".into()]),
            Err(VolumeError::InUse { .. })
        ));
        assert_eq!(vols.size("data"), 1);
        vols.remove("data", &[]).unwrap();
        assert!(matches!(
            vols.inspect("data"),
            Err(VolumeError::NotFound(_))
        ));
        for bad in ["", "a", "-x", "a/b", "../x", "a b"] {
            assert!(!valid_name(bad), "{bad}");
            assert!(vols.create(Some(bad), BTreeMap::new()).is_err(), "{bad}");
        }
    }
}
