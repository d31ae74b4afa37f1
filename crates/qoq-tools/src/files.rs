//! Atomic file writes for the binaries: a temporary sibling, then a rename, so a failed or
//! killed run never leaves a partial file or clobbers an older one.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// `.NAME.tmp-PID` beside `path`: hidden, and the same file system, so the rename is atomic.
pub fn temporary_sibling(path: &Path) -> Result<PathBuf> {
    let name = path.file_name().with_context(|| format!("{} is not a file path", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    Ok(path.with_file_name(tmp_name))
}

/// Writes `bytes` to `path` through a [`temporary_sibling`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary_sibling(path)?;
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}
