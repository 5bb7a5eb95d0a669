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
