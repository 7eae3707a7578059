//! What the fuzz targets share.

use std::path::PathBuf;

/// Where targets that touch the file system work: `BERTH_FUZZ_SCRATCH` (scripts/fuzz makes
/// one per run on tmpfs and removes it), else /dev/shm, else /tmp.
pub fn scratch() -> PathBuf {
    if let Some(d) = std::env::var_os("BERTH_FUZZ_SCRATCH") {
        return d.into();
    }
    ["/dev/shm", "/tmp"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}
