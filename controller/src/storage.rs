//! Running the storage tools (qemu-img, xorriso) with errors an operator can act on, and placing
//! what they produce atomically: written under a temporary name, renamed into place when complete.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::process::Command;

use crate::error::{ApiError, ApiResult};

/// Runs a tool; its own error output becomes the message of a failure.
pub async fn run(mut cmd: Command, what: &str) -> ApiResult<()> {
    let out = cmd.output().await.with_context(|| format!("{what}: could not run the tool"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ApiError::Operation(format!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// Has `make(tmp)` build a command that writes `tmp`, runs it, and renames `tmp` to `target`. On any
/// failure nothing is left behind.
pub async fn produce(target: &Path, what: &str, make: impl FnOnce(&Path) -> Command) -> ApiResult<()> {
    let tmp = temporary_name(target);
    let result = async {
        run(make(&tmp), what).await?;
        std::fs::rename(&tmp, target).with_context(|| format!("{what}: moving the result into place"))?;
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn temporary_name(target: &Path) -> PathBuf {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    target.with_file_name(format!(".{name}.tmp"))
}

/// An empty disk image (thin: qcow2, or a sparse raw file).
pub async fn create_image(qemu_img: &Path, target: &Path, format: &str, size_gb: u64) -> ApiResult<()> {
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    produce(target, "creating the disk image", |tmp| {
        let mut cmd = Command::new(qemu_img);
        cmd.args(["create", "-q", "-f", format]).arg(tmp).arg(format!("{size_gb}G"));
        cmd
    })
    .await
}

/// Grows a disk image in place.
pub async fn grow_image(qemu_img: &Path, image: &Path, size_gb: u64) -> ApiResult<()> {
    let mut cmd = Command::new(qemu_img);
    cmd.arg("resize").arg(image).arg(format!("{size_gb}G"));
    run(cmd, "resizing the disk").await
}

/// The image `image` is stacked on, if any (`-U`: readable while a VM uses it).
pub async fn backing_file(qemu_img: &Path, image: &Path) -> Option<PathBuf> {
    let out = Command::new(qemu_img).args(["info", "-U", "--output=json"]).arg(image).output().await.ok()?;
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let backing = info["full-backing-filename"].as_str().or(info["backing-filename"].as_str())?;
    let path = PathBuf::from(backing);
    Some(if path.is_absolute() { path } else { image.parent().unwrap_or(Path::new("/")).join(path) })
}

/// Every image under `image`, nearest first (empty for a standalone image or a missing one).
pub async fn backing_chain(qemu_img: &Path, image: &Path) -> Vec<PathBuf> {
    let mut chain = Vec::new();
    let mut current = image.to_path_buf();
    // Bounded in case of a cycle.
    while chain.len() < 64 {
        match backing_file(qemu_img, &current).await {
            Some(b) if !chain.contains(&b) => {
                chain.push(b.clone());
                current = b;
            }
            _ => break,
        }
    }
    chain
}

/// An overlay on `base` at `target`: it starts out reading everything from the base and writes only
/// to itself.
pub async fn create_overlay(qemu_img: &Path, base: &Path, target: &Path) -> ApiResult<()> {
    produce(target, "creating the overlay image", |tmp| {
        let mut cmd = Command::new(qemu_img);
        cmd.args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"]).arg(base).arg(tmp);
        cmd
    })
    .await
}

/// Removes the shared base images that no VM disk needs any more, directly or through another base.
/// `disks` are every VM's disk images.
pub async fn collect_unused_bases(qemu_img: &Path, base_dir: &Path, disks: &[PathBuf]) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(base_dir) else { return Vec::new() };
    let bases: Vec<PathBuf> =
        entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect();
    let mut needed = std::collections::HashSet::new();
    for disk in disks.iter().filter(|d| d.exists()) {
        needed.extend(backing_chain(qemu_img, disk).await);
    }
    let mut removed = Vec::new();
    for base in bases {
        let canonical = base.canonicalize().unwrap_or_else(|_| base.clone());
        if !needed.contains(&base) && !needed.contains(&canonical) && std::fs::remove_file(&base).is_ok() {
            removed.push(base);
        }
    }
    removed
}
