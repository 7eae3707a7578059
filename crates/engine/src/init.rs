//! `--init`: berth-init (a static binary built from `init/main.rs`) as the container's pid 1.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where berth-init appears in the container.
pub const PATH_IN_CONTAINER: &str = "/sbin/berth-init";

/// The binary.
pub const BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/berth-init"));

/// Writes berth-init under `dir` (once per content) and returns its path.
pub fn install(dir: &Path) -> Result<PathBuf, String> {
    let path = dir.join("berth-init");
    if fs::read(&path).is_ok_and(|b| b == BINARY) {
        return Ok(path);
    }
    let tmp = dir.join(format!(".berth-init.{}", std::process::id()));
    let r = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(BINARY)?;
        f.set_permissions(fs::Permissions::from_mode(0o755))?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    r.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("installing berth-init in {}: {e}", dir.display())
    })?;
    Ok(path)
}
