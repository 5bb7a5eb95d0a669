//! The ISO library: every ISO in the allowed roots, uploads into the data dir's `images/`
//! (streamed to disk, never held in memory; `api::isos`) and deletions (refused while a VM uses
//! the ISO).

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};

static ISO_NAME_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[A-Za-z0-9][A-Za-z0-9._+ -]{0,200}\.[iI][sS][oO]$").unwrap_or_else(|_| unreachable!())
});

#[derive(Debug, Serialize, ToSchema)]
pub struct IsoInfo {
    pub name: String,
    /// Absolute path, as `iso_path` takes it.
    pub path: String,
    pub size: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IsoUploaded {
    pub success: bool,
    pub message: String,
    pub iso: IsoInfo,
}

/// Where cloud-init seeds are made.
pub fn seeds_dir(settings: &crate::config::Settings) -> PathBuf {
    settings.data_dir.join("cloudinit")
}

/// Whether `path` is a file directly in `dir`.
pub fn in_dir(path: &str, dir: &Path) -> bool {
    Path::new(path).parent() == Some(dir)
}

/// Every ISO image in the allowed directories, sorted by name.
pub fn library(settings: &crate::config::Settings) -> Vec<IsoInfo> {
    let mut isos = Vec::new();
    for root in settings.iso_roots() {
        let Ok(entries) = std::fs::read_dir(&root) else { continue };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let is_iso = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("iso"));
            // metadata() follows symlinks: a link is listed only if it points at a regular file.
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if is_iso && meta.is_file() {
                isos.push(IsoInfo {
                    name: entry.file_name().to_string_lossy().into_owned(),
                    path: path.display().to_string(),
                    size: meta.len(),
                });
            }
        }
    }
    isos.sort_by(|a, b| a.name.cmp(&b.name).then(a.path.cmp(&b.path)));
    isos
}

pub fn check_name(name: &str) -> ApiResult<()> {
    if !ISO_NAME_RE.is_match(name) || name.contains("..") {
        return Err(ApiError::BadRequest(format!(
            "name: {name:?} must be a plain file name ending in .iso (letters, digits, `. _ + -`, spaces)"
        )));
    }
    Ok(())
}

pub fn too_large(limit: u64) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "file: larger than the {limit} bytes allowed (FASTVM_MAX_ISO_GB, and the free space)"
    ))
}

pub fn resolves_to(iso: Option<&str>, target: &Path) -> bool {
    iso.and_then(|p| std::fs::canonicalize(p).ok()).is_some_and(|p: PathBuf| p == target)
}
