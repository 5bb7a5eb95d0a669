//! Running the storage tools (qemu-img, xorriso) with errors an operator can act on, and placing
//! what they produce atomically: written under a temporary name, renamed into place when complete.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::process::Command;

use crate::error::{ApiError, ApiResult};

pub mod untrusted;

/// A qcow2 image named for qemu-img with its format spelled out, so nothing is probed; `no_backing`
/// also keeps qemu-img from opening any backing file the header names (for every image but a
/// clone's overlay, which needs its base).
pub fn qcow2_image(path: &Path, no_backing: bool) -> String {
    let mut spec = serde_json::json!({"driver": "qcow2", "file": {"driver": "file", "filename": path}});
    if no_backing {
        spec["backing"] = serde_json::Value::Null;
    }
    format!("json:{spec}")
}

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

/// Whether a file or directory name is one of the controller's work-in-progress names: a `produce`
/// result not yet moved into place, an upload being received, a backup's or restore's work directory.
fn is_work_in_progress(name: &str) -> bool {
    name.starts_with('.')
        && (name.ends_with(".tmp")
            || [".backup-", ".restore-", ".upload-"].iter().any(|p| name.starts_with(p)))
}

/// Removes what operations cut short by a crash or a kill left behind in `dirs` and in the VM
/// directories under `vms_dir` (a half-written backup can be as big as the VM's disks). Only for
/// startup, before any operation runs. Returns what was removed.
pub fn sweep_leftovers(dirs: &[PathBuf], vms_dir: &Path) -> Vec<PathBuf> {
    let vm_dirs: Vec<PathBuf> = std::fs::read_dir(vms_dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    let mut removed = Vec::new();
    for dir in dirs.iter().chain(&vm_dirs) {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for entry in entries.filter_map(Result::ok) {
            if !is_work_in_progress(&entry.file_name().to_string_lossy()) {
                continue;
            }
            let path = entry.path();
            let gone =
                if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            match gone {
                Ok(()) => removed.push(path),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not remove a leftover"),
            }
        }
    }
    // A VM directory that held nothing but a leftover (a clone cut short before its VM existed).
    for dir in &vm_dirs {
        if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
            && std::fs::remove_dir(dir).is_ok()
        {
            removed.push(dir.clone());
        }
    }
    removed
}

/// Kept free on a filesystem whatever an upload or a restore brings.
const FREE_SPACE_RESERVE: u64 = 256 << 20;

/// Bytes an upload or a restore may still put on the filesystem holding `dir`: what an
/// unprivileged writer has, less a reserve.
pub fn room_for(dir: &Path) -> anyhow::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).with_context(|| format!("free space of {}", dir.display()))?;
    let free = (st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64);
    Ok(free.saturating_sub(FREE_SPACE_RESERVE))
}

/// Where a file is written before it is complete: hidden, `.tmp`, swept at start if left behind.
pub fn temporary_name(target: &Path) -> PathBuf {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    target.with_file_name(format!(".{name}.tmp"))
}

/// An empty disk image (thin: qcow2, or a sparse raw file).
pub async fn create_image(qemu_img: &Path, target: &Path, format: &str, size_gb: u64) -> ApiResult<()> {
    create_image_of(qemu_img, target, format, size_gb << 30).await
}

/// An empty disk image of exactly `bytes`.
pub async fn create_image_of(qemu_img: &Path, target: &Path, format: &str, bytes: u64) -> ApiResult<()> {
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    produce(target, "creating the disk image", |tmp| {
        let mut cmd = Command::new(qemu_img);
        cmd.args(["create", "-q", "-f", format]).arg(tmp).arg(bytes.to_string());
        cmd
    })
    .await
}

/// The size the guest sees of an image (`-U`: readable while a VM uses it), which can differ from
/// what its record says (a restored disk may be smaller).
pub async fn virtual_size(qemu_img: &Path, image: &Path, format: &str) -> anyhow::Result<u64> {
    let info = image_info_as(qemu_img, image, format).await?;
    info["virtual-size"]
        .as_u64()
        .with_context(|| format!("qemu-img info {}: no virtual size", image.display()))
}

/// Grows a disk image in place.
pub async fn grow_image(qemu_img: &Path, image: &Path, size_gb: u64) -> ApiResult<()> {
    let mut cmd = Command::new(qemu_img);
    cmd.args(["resize", "-f", "qcow2"]).arg(image).arg(format!("{size_gb}G"));
    run(cmd, "resizing the disk").await
}

/// `qemu-img info` of one qcow2 image (`-U`: readable while a VM uses it).
pub async fn image_info(qemu_img: &Path, image: &Path) -> anyhow::Result<serde_json::Value> {
    image_info_as(qemu_img, image, "qcow2").await
}

async fn image_info_as(qemu_img: &Path, image: &Path, format: &str) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(qemu_img)
        .args(["info", "-U", "-f", format, "--output=json"])
        .arg(image)
        .output()
        .await
        .with_context(|| format!("running {}", qemu_img.display()))?;
    if !out.status.success() {
        anyhow::bail!("qemu-img info {}: {}", image.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout).context("qemu-img info output")
}

/// The image `image` is stacked on, if any (`-U`: readable while a VM uses it). An error when it
/// cannot be told: "no backing file" is only said when qemu-img says so.
pub async fn backing_file(qemu_img: &Path, image: &Path) -> anyhow::Result<Option<PathBuf>> {
    let info = image_info(qemu_img, image).await?;
    let Some(backing) = info["full-backing-filename"].as_str().or(info["backing-filename"].as_str()) else {
        return Ok(None);
    };
    let path = PathBuf::from(backing);
    Ok(Some(if path.is_absolute() { path } else { image.parent().unwrap_or(Path::new("/")).join(path) }))
}

/// The names (tags) of the internal snapshots in a qcow2 image (`-U`: readable while a VM uses it).
pub async fn snapshot_names(qemu_img: &Path, image: &Path) -> anyhow::Result<Vec<String>> {
    let info = image_info(qemu_img, image).await?;
    Ok(info["snapshots"]
        .as_array()
        .map(|list| list.iter().filter_map(|s| s["name"].as_str().map(str::to_string)).collect())
        .unwrap_or_default())
}

/// Adds every image under `image` to `found`, stopping at one already there (so shared bases are
/// read once, and a cycle ends). A missing image ends the chain.
pub async fn add_backing_chain(
    qemu_img: &Path,
    image: &Path,
    found: &mut HashSet<PathBuf>,
) -> anyhow::Result<()> {
    let mut current = image.to_path_buf();
    while current.exists() {
        match backing_file(qemu_img, &current).await? {
            Some(b) if found.insert(b.clone()) => current = b,
            _ => break,
        }
    }
    Ok(())
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
    let mut needed = HashSet::new();
    for disk in disks {
        if let Err(e) = add_backing_chain(qemu_img, disk, &mut needed).await {
            // Not knowing what a disk needs must never read as "it needs nothing".
            tracing::warn!(disk = %disk.display(), error = %format!("{e:#}"), "base clean-up skipped");
            return Vec::new();
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_of_cut_short_operations_are_swept_and_nothing_else() -> anyhow::Result<()> {
        let data = tempfile::tempdir()?;
        let (vms, backups, images) =
            (data.path().join("vms"), data.path().join("backups"), data.path().join("images"));
        let vm = vms.join("0123456789ab");
        for dir in [&vm, &backups, &images] {
            std::fs::create_dir_all(dir)?;
        }
        let stale = [
            backups.join(".backup-x1"),
            backups.join(".upload-y2"),
            vms.join(".restore-z3"),
            vm.join(".backup-w4"),
        ];
        for dir in &stale {
            std::fs::create_dir_all(dir)?;
            std::fs::write(dir.join("copy-0"), b"half a disk")?;
        }
        let stale_files = [vm.join(".disk0.qcow2.tmp"), images.join(".upload-abc.tmp")];
        let kept = [
            vm.join("disk0.qcow2"),
            vm.join("OVMF_VARS.fd"),
            backups.join("fastvm-web-1-a.tar.zst"),
            images.join("debian.iso"),
            images.join(".hidden-by-the-operator"),
        ];
        for f in stale_files.iter().chain(&kept) {
            std::fs::write(f, b"x")?;
        }

        let removed = sweep_leftovers(&[vms.clone(), backups, images], &vms);
        assert_eq!(removed.len(), stale.len() + stale_files.len(), "{removed:?}");
        assert!(stale.iter().chain(&stale_files).all(|p| !p.exists()));
        assert!(kept.iter().all(|p| p.exists()));
        assert!(vm.is_dir());
        Ok(())
    }

    #[tokio::test]
    async fn bases_are_kept_when_what_a_disk_needs_cannot_be_told() -> anyhow::Result<()> {
        let data = tempfile::tempdir()?;
        let (base_dir, disk) = (data.path().join("base"), data.path().join("disk0.qcow2"));
        std::fs::create_dir_all(&base_dir)?;
        let base = base_dir.join("b.qcow2");
        std::fs::write(&base, b"base")?;
        std::fs::write(&disk, b"overlay")?;
        let broken_tool = data.path().join("no-such-qemu-img");
        let removed = collect_unused_bases(&broken_tool, &base_dir, std::slice::from_ref(&disk)).await;
        assert!(removed.is_empty() && base.exists(), "{removed:?}");
        // A disk that is gone needs nothing: with no disk left, the base goes.
        std::fs::remove_file(&disk)?;
        let removed = collect_unused_bases(&broken_tool, &base_dir, &[disk]).await;
        assert_eq!(removed, [base]);
        Ok(())
    }
}
