//! A chunked backup brought back as files: its disks (raw, sparse, then qcow2 where the disk was),
//! UEFI variables and TPM state, every chunk checked against its name on the way. What a restore
//! then moves into place, and what a download packs into one `.tar.zst`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::process::Command;

use super::archive::{self, Manifest};
use super::chunked::{self, ChunkedManifest};
use super::{Ctx, MANIFEST_SUFFIX};
use crate::error::{ApiError, ApiResult};
use crate::jobs::Progress;
use crate::storage;
use vmrunner::argv::DiskFormat;

fn damaged(e: anyhow::Error) -> ApiError {
    if crate::error::disk_full(&e) {
        ApiError::Internal(e)
    } else {
        ApiError::BadRequest(format!("The backup is damaged: {e:#}"))
    }
}

/// Writes the backup's files into `dir` (empty) and returns its manifest as an archive's, and the
/// names of the files written (relative to `dir`, sorted).
pub(super) async fn materialize(
    ctx: &Ctx,
    manifest_path: &Path,
    dir: &Path,
    progress: &Progress,
) -> ApiResult<(Manifest, Vec<String>)> {
    let path = manifest_path.to_path_buf();
    let m = tokio::task::spawn_blocking(move || ChunkedManifest::load(&path))
        .await
        .context("restore task")?
        .map_err(damaged)?;
    let mut names: Vec<String> =
        m.disks.iter().map(|d| &d.member).chain(m.files.iter().map(|f| &f.name)).cloned().collect();
    if let Some(name) = names.iter().find(|n| !archive::allowed_member(n)) {
        return Err(ApiError::BadRequest(format!("The backup is damaged: it names a file {name:?}")));
    }
    names.sort();
    progress.phase("reading and checking the chunks");
    let total: u64 = m.disks.iter().map(|d| d.size).sum::<u64>().max(1);
    let mut before = 0u64;
    for disk in &m.disks {
        let target = dir.join(&disk.member);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).context("creating the staging directory")?;
        }
        let raw = PathBuf::from(format!("{}.raw", target.display()));
        let (store, d, at, p) = (ctx.chunks.clone(), disk.clone(), raw.clone(), progress.clone());
        tokio::task::spawn_blocking(move || {
            chunked::restore_raw(&store, &d, &at, &|done| p.bytes(before + done, total, 0.0, 0.9))
        })
        .await
        .context("restore task")?
        .map_err(damaged)?;
        before += disk.size;
        if disk.format == DiskFormat::Qcow2 {
            progress.phase(&format!("writing {}", disk.member));
            let mut cmd = Command::new(&ctx.vms.qemu_img);
            cmd.args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&target);
            let converted = storage::run(cmd, &format!("writing {}", disk.member)).await;
            let _ = std::fs::remove_file(&raw);
            converted?;
        } else {
            std::fs::rename(&raw, &target).context("placing a restored disk")?;
        }
    }
    for file in &m.files {
        let target = dir.join(&file.name);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).context("creating the staging directory")?;
        }
        let (store, f) = (ctx.chunks.clone(), file.clone());
        tokio::task::spawn_blocking(move || chunked::restore_file(&store, &f, &target))
            .await
            .context("restore task")?
            .map_err(damaged)?;
    }
    progress.bytes_now(total, total, 0.0, 1.0);
    let manifest = Manifest {
        format: archive::FORMAT.into(),
        vm_id: m.vm_id,
        vm_name: m.vm_name,
        spec: m.spec,
        created_at: m.created_at,
        members: Vec::new(),
        volumes: m.volumes,
    };
    Ok((manifest, names))
}

/// Packs a chunked backup into one standalone `.tar.zst` (today's archive format, restorable by
/// upload) at `out`; the files it is built from are removed as it finishes.
pub(super) async fn pack(ctx: &Ctx, manifest_path: &Path, out: &Path, progress: &Progress) -> ApiResult<()> {
    debug_assert!(manifest_path.to_string_lossy().ends_with(MANIFEST_SUFFIX));
    let work = tempfile::Builder::new().prefix(".backup-").tempdir_in(&ctx.dir).context("work directory")?;
    let (manifest, names) = materialize(ctx, manifest_path, work.path(), progress).await?;
    let files: Vec<(String, PathBuf)> = names.into_iter().map(|n| (n.clone(), work.path().join(n))).collect();
    progress.phase("packing the archive");
    let (out, p) = (out.to_path_buf(), progress.clone());
    tokio::task::spawn_blocking(move || {
        archive::write(&out, &files, manifest, &|done, total| p.bytes(done, total, 0.0, 1.0))
    })
    .await
    .context("download task")??;
    Ok(())
}
