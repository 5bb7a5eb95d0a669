//! Backups: taking, removing and restoring them (the routes are `api::backups`). A backup is one verified archive (see `archive`) of the VM's disk, UEFI variables and TPM state,
//! taken from a stopped VM or, consistently, from a running one (QMP `blockdev-backup`).

pub mod archive;
pub mod bitmaps;
pub mod chunked;
pub mod chunks;
mod helper;
pub mod mapped;
mod materialize;
pub mod schedule;
mod take;
mod upkeep;
mod write_behind;

pub use helper::kill_strays as kill_stray_helpers;
pub use upkeep::{Verification, collect_garbage, recover, verify};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::users::SessionUser;
use crate::error::{ApiError, ApiResult};
use crate::jobs::Progress;
use crate::quotas::store as quotas;
use crate::storage;
use crate::store::{now_unix, rfc3339};
use crate::vms::lifecycle::Op;
use crate::vms::manager::VmManager;
use crate::vms::model::VmRecord;
use archive::Manifest;
use vmrunner::VmSpec;
use vmrunner::argv::DiskFormat;
use vmrunner::paths::VmDir;

const JOB_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Backup {
    /// Made by a schedule (and so subject to its retention).
    pub scheduled: bool,
    pub id: String,
    pub vm_id: String,
    pub vm_name: String,
    pub backup_name: String,
    pub size_mb: f64,
    pub size_bytes: u64,
    /// RFC 3339.
    pub created: String,
    /// Bytes read from the VM's disks (null: an archive from before chunked backups).
    pub bytes_read: Option<u64>,
    /// Bytes of new chunks this backup added to the store (compressed).
    pub bytes_written: Option<u64>,
    /// Chunks it names that were already stored (unchanged, or the same data elsewhere).
    pub chunks_reused: Option<u64>,
    /// Only what changed since the VM's previous backup was read.
    pub incremental: bool,
    /// Why it read everything although the VM had an earlier backup (a bitmap gone or untrusted).
    pub full_reason: Option<String>,
    /// A verification found a chunk of it damaged or missing: it cannot be restored whole.
    pub damaged: bool,
    /// When it was last verified (RFC 3339).
    pub verified: Option<String>,
    /// `chunks` (a manifest in the chunk store) or `archive` (one `.tar.zst`: uploaded, or from
    /// before chunked backups).
    pub storage: String,
    #[serde(skip)]
    pub path: String,
    #[serde(skip)]
    pub owner: String,
}

impl Backup {
    pub fn chunked(&self) -> bool {
        self.path.ends_with(MANIFEST_SUFFIX)
    }
}

/// How a chunked backup's manifest file is named: `<name>` + this (its download is `<name>.tar.zst`).
pub const MANIFEST_SUFFIX: &str = ".manifest.json";

/// Where the chunks of the backups in `backups_dir` are.
pub fn chunks_dir(backups_dir: &Path) -> PathBuf {
    backups_dir.join("chunks")
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BackupResponse {
    pub success: bool,
    pub message: String,
    pub id: String,
    pub backup_name: String,
    pub size_mb: f64,
    pub vm_name: String,
    pub bytes_read: Option<u64>,
    pub bytes_written: Option<u64>,
    pub chunks_reused: Option<u64>,
    pub incremental: bool,
    pub full_reason: Option<String>,
}

pub(crate) fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Backup> {
    let path: String = r.get(4)?;
    let size: i64 = r.get(5)?;
    let file_name =
        Path::new(&path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let chunked = file_name.strip_suffix(MANIFEST_SUFFIX).map(|stem| format!("{stem}.tar.zst"));
    let count = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(r.get::<_, Option<i64>>(i)?.map(|n| n.max(0) as u64))
    };
    Ok(Backup {
        scheduled: r.get(7)?,
        id: r.get(0)?,
        vm_id: r.get(1)?,
        vm_name: r.get(2)?,
        owner: r.get(3)?,
        storage: if chunked.is_some() { "chunks" } else { "archive" }.into(),
        backup_name: chunked.unwrap_or(file_name),
        path,
        size_bytes: size.max(0) as u64,
        size_mb: (size.max(0) as f64 / 1_048_576.0 * 100.0).round() / 100.0,
        created: rfc3339(r.get(6)?),
        bytes_read: count(8)?,
        bytes_written: count(9)?,
        chunks_reused: count(10)?,
        incremental: r.get(11)?,
        damaged: r.get(12)?,
        verified: r.get::<_, Option<i64>>(13)?.map(rfc3339),
        full_reason: r.get(14)?,
    })
}

const COLUMNS: &str = "id, vm_id, vm_name, owner, path, size_bytes, created_at";

/// What backups work with: the VMs (and through them the store and qemu-img), the jobs that run
/// them, and the directory the archives live in.
#[derive(Clone)]
pub struct Ctx {
    pub vms: Arc<VmManager>,
    pub jobs: Arc<crate::jobs::Jobs>,
    pub dir: PathBuf,
    pub chunks: Arc<chunks::ChunkStore>,
}

/// What `from_row` reads.
pub(crate) const SELECT: &str = "id, vm_id, vm_name, owner, path, size_bytes, created_at, scheduled, \
    bytes_read, bytes_written, chunks_reused, incremental, damaged, verified_at, full_reason";

pub(crate) async fn owned(ctx: &Ctx, user: &SessionUser, id: &str) -> ApiResult<Backup> {
    let i = id.to_string();
    let found = ctx
        .vms
        .store
        .call(move |c| {
            Ok(c.query_row(&format!("SELECT {SELECT} FROM backups WHERE id = ?1"), [i], from_row)
                .optional()?)
        })
        .await?;
    match found {
        Some(b) if user.may_see(&b.owner) => Ok(b),
        _ => Err(ApiError::NotFound("Backup not found".into())),
    }
}

/// A file name part made of the VM's name.
fn slug(name: &str) -> String {
    let s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    s.chars().take(40).collect()
}

/// Takes one backup of a VM (under its lock), as a job whose progress can be read while it runs, and
/// records it. `scheduled` backups are the ones a schedule's retention may prune.
pub async fn backup_vm(ctx: &Ctx, vm_id: &str, owner: &str, scheduled: bool) -> ApiResult<Backup> {
    let (st, v, o) = (ctx.clone(), vm_id.to_string(), owner.to_string());
    ctx.jobs
        .run("backup", Some(vm_id), owner, move |progress| async move {
            let backup = take::take_backup(&st, &v, &o, scheduled, &progress).await?;
            let id = backup.id.clone();
            Ok((backup, Some(id)))
        })
        .await
}

/// The archive member a volume's data goes in.
fn volume_member(v: &crate::store::volumes::Volume) -> String {
    format!("volumes/{}.{}", v.id, v.format.as_str())
}

/// A volume as a backup's manifest records it.
fn archived_volume(v: &crate::store::volumes::Volume) -> archive::ArchivedVolume {
    archive::ArchivedVolume {
        id: v.id.clone(),
        name: v.name.clone(),
        size_gb: v.size_gb,
        format: v.format,
        slot: v.slot,
        member: volume_member(v),
    }
}

async fn get(ctx: &Ctx, id: &str) -> ApiResult<Option<Backup>> {
    let i = id.to_string();
    Ok(ctx
        .vms
        .store
        .call(move |c| {
            Ok(c.query_row(&format!("SELECT {SELECT} FROM backups WHERE id = ?1"), [i], from_row)
                .optional()?)
        })
        .await?)
}

/// Removes a backup's record and archive or manifest (and then the chunks no other backup names).
pub async fn remove(ctx: &Ctx, backup: &Backup) -> ApiResult<()> {
    let i = backup.id.clone();
    ctx.vms.store.call(move |c| Ok(c.execute("DELETE FROM backups WHERE id = ?1", [i])?)).await?;
    let _ = std::fs::remove_file(&backup.path);
    if backup.chunked() {
        if let Err(e) = collect_garbage(ctx).await {
            tracing::warn!(error = %e, "garbage collection after a backup was deleted");
        }
    }
    Ok(())
}

/// Removes every backup `owner` has (their account is being deleted).
pub async fn remove_all_of(ctx: &Ctx, owner: &str) -> ApiResult<()> {
    let o = owner.to_string();
    let theirs = ctx
        .vms
        .store
        .call(move |c| {
            let mut stmt = c.prepare(&format!("SELECT {SELECT} FROM backups WHERE owner = ?1"))?;
            let rows = stmt.query_map([o], from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?;
    for backup in &theirs {
        remove(ctx, backup).await?;
    }
    Ok(())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DownloadQuery {
    /// A ticket from `POST /api/backups/{backup_id}/download-ticket`, for clients (a browser's plain
    /// link) that cannot send the bearer token.
    pub ticket: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DownloadTicket {
    pub ticket: String,
    /// Where to download it with the ticket, while it is valid.
    pub url: String,
    pub expires_in: u64,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// Restore as a new VM with this name. Without it the backup goes back onto its original VM,
    /// which must exist and be stopped.
    pub new_name: Option<String>,
}

/// Verifies and extracts `archive` (or a chunked backup's manifest) into a fresh staging directory
/// next to the VMs' own.
async fn extract(ctx: &Ctx, archive: &Path, progress: &Progress) -> ApiResult<(tempfile::TempDir, Manifest)> {
    let staging = tempfile::Builder::new()
        .prefix(".restore-")
        .tempdir_in(&ctx.vms.vms_dir)
        .context("staging directory")?;
    if archive.to_string_lossy().ends_with(MANIFEST_SUFFIX) {
        let (manifest, _) = materialize::materialize(ctx, archive, staging.path(), progress).await?;
        check_images(ctx, &manifest, staging.path()).await?;
        return Ok((staging, manifest));
    }
    progress.phase("verifying and extracting");
    let (archive, dir, p) = (archive.to_path_buf(), staging.path().to_path_buf(), progress.clone());
    let manifest = tokio::task::spawn_blocking(move || {
        archive::extract_verified(&archive, &dir, &|done, total| p.bytes(done, total, 0.0, 1.0))
    })
    .await
    .context("restore task failed")?
    .map_err(|e| {
        if let Some(no_room) = e.downcast_ref::<archive::NoRoom>() {
            ApiError::disk_full_because(no_room)
        } else if crate::error::disk_full(&e) {
            ApiError::Internal(e)
        } else {
            ApiError::BadRequest(format!("The backup archive is damaged: {e:#}"))
        }
    })?;
    check_images(ctx, &manifest, staging.path()).await?;
    Ok((staging, manifest))
}

/// The disk images of an archive came from whoever made it: each must be a plain image of the format
/// and at most the size its VM or volume record says (see `storage::untrusted`).
async fn check_images(ctx: &Ctx, manifest: &Manifest, dir: &Path) -> ApiResult<()> {
    const GIB: u64 = 1 << 30;
    let max_disk = manifest.spec.disk_size.min(vmrunner::validate::MAX_DISK_GB) * GIB;
    let mut images = vec![(VmDir::DISK.to_string(), DiskFormat::Qcow2, max_disk)];
    images.extend(manifest.volumes.iter().map(|v| (v.member.clone(), v.format, v.size_gb * GIB)));
    for (member, format, max) in images {
        let path = dir.join(&member);
        if path.exists() {
            let what = format!("The backup archive's {member}");
            storage::untrusted::check(&ctx.vms.qemu_img, &what, &path, format, Some(max)).await?;
        }
    }
    Ok(())
}

async fn restore(
    ctx: &Ctx,
    user: &SessionUser,
    backup: &Backup,
    new_name: Option<String>,
    progress: &Progress,
) -> ApiResult<VmRecord> {
    let (staging, manifest) = extract(ctx, Path::new(&backup.path), progress).await?;
    if let Some(name) = new_name {
        let spec = restored_spec(ctx, user, &manifest, name, false).await?;
        return restore_as_new(ctx, user, manifest, spec, staging.path()).await;
    }
    let vm = ctx.vms.owned(user, &manifest.vm_id).await.map_err(|_| {
        ApiError::NotFound("The original VM no longer exists: give a new_name to restore as a new VM".into())
    })?;
    let _held = ctx.vms.enter(&vm.id, Op::RestoreBackup).await?;
    progress.phase("replacing the VM's files");
    let vm_dir = ctx.vms.vm_dir(&vm.id);
    std::fs::create_dir_all(vm_dir.path()).context("creating the VM directory")?;
    restore_volumes(ctx, &vm.owner, &vm.id, &manifest, staging.path()).await?;
    replace_files(staging.path(), &vm_dir)?;
    Ok(vm)
}

/// Brings the archived volumes back attached to `vm_id`: a volume still attached to it gets its data
/// replaced; any other becomes a new volume (the original may since belong to another VM). Leaves
/// the staging directory without its `volumes/`.
async fn restore_volumes(
    ctx: &Ctx,
    owner: &str,
    vm_id: &str,
    manifest: &Manifest,
    staging: &Path,
) -> ApiResult<()> {
    use crate::store::volumes;
    let (archived, o, vm, dir) =
        (manifest.volumes.clone(), owner.to_string(), vm_id.to_string(), ctx.vms.volumes_dir.clone());
    // All database work first, in one transaction: either every volume has its record (and
    // attachment) or none does. Files move only after it committed.
    let moves: Vec<(String, PathBuf)> = ctx
        .vms
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let mut moves = Vec::new();
            for a in &archived {
                let current = volumes::get(&tx, &a.id)?;
                if let Some(v) = current.as_ref().filter(|v| v.attached_to.as_deref() == Some(vm.as_str())) {
                    moves.push((a.member.clone(), PathBuf::from(&v.path)));
                    continue;
                }
                // The original id when it is free (the volume was deleted), so restoring the same
                // backup again replaces this volume instead of adding another.
                let id = if current.is_none() { a.id.clone() } else { crate::store::new_id() };
                let path = dir.join(format!("{id}.{}", a.format.as_str()));
                volumes::insert(
                    &tx,
                    &id,
                    &a.name,
                    &o,
                    a.size_gb,
                    a.format,
                    &path.display().to_string(),
                    now_unix(),
                )?;
                let used: Vec<u32> = volumes::attached_to(&tx, &vm)?.iter().filter_map(|v| v.slot).collect();
                let slot = a
                    .slot
                    .filter(|s| !used.contains(s))
                    .or_else(|| (1..=vmrunner::argv::ROOT_PORTS).find(|s| !used.contains(s)));
                // With every slot taken the volume is still restored, just not attached.
                if slot.is_some() {
                    volumes::set_attachment(&tx, &id, Some(&vm), slot)?;
                }
                moves.push((a.member.clone(), path));
            }
            tx.commit()?;
            Ok(moves)
        })
        .await?;
    for (member, target) in moves {
        std::fs::rename(staging.join(&member), &target).context("moving a restored volume into place")?;
    }
    let _ = std::fs::remove_dir_all(staging.join("volumes"));
    Ok(())
}

/// Moves every restored file over the VM's own (renames within one filesystem).
fn replace_files(from: &Path, to: &VmDir) -> ApiResult<()> {
    let _ = std::fs::remove_dir_all(to.tpm_state());
    let to = to.path();
    for entry in std::fs::read_dir(from).context("reading the staging directory")?.filter_map(Result::ok) {
        std::fs::rename(entry.path(), to.join(entry.file_name()))
            .context("moving a restored file into place")?;
    }
    Ok(())
}

/// The spec a restore as a new VM gets: the archived one under a new name, with new MACs, no host
/// ports, only the ISOs that are there and the user's to use, and every rule a create applies.
async fn restored_spec(
    ctx: &Ctx,
    user: &SessionUser,
    manifest: &Manifest,
    name: String,
    keeps_upload: bool,
) -> ApiResult<VmSpec> {
    let mut spec = manifest.spec.clone();
    spec.name = name;
    // New MACs and no host ports: the original VM may still be using its own.
    for net in &mut spec.networks {
        net.mac_address = None;
        net.port_forwards.clear();
    }
    // ISOs that are gone, or not the user's to use (another user's seed), are dropped rather than
    // blocking the restore.
    for iso in [&mut spec.iso_path, &mut spec.secondary_iso_path] {
        let usable = match iso.as_deref() {
            Some(p) => Path::new(p).is_file() && ctx.vms.may_use_iso(p, &user.username, user.is_admin).await,
            None => true,
        };
        if !usable {
            *iso = None;
        }
    }
    ctx.vms.check_rules(&spec, None, &user.username, user.is_admin).await?;
    ctx.vms.normalize(&mut spec).await?;
    let volumes: u64 = manifest.volumes.iter().map(|v| v.size_gb).sum();
    let need = quotas::of_vm(&spec)
        + quotas::Usage::disk(volumes as i64)
        + quotas::Usage::backups(i64::from(keeps_upload));
    ctx.vms.check_quota(&user.username, need).await?;
    Ok(spec)
}

async fn restore_as_new(
    ctx: &Ctx,
    user: &SessionUser,
    manifest: Manifest,
    spec: VmSpec,
    staging: &Path,
) -> ApiResult<VmRecord> {
    let id = crate::store::new_id();
    // Volumes wait in the staging directory until the VM they attach to exists.
    let volumes_staging = tempfile::Builder::new()
        .prefix(".restore-volumes-")
        .tempdir_in(&ctx.vms.vms_dir)
        .context("staging directory")?;
    if staging.join("volumes").exists() {
        std::fs::rename(staging.join("volumes"), volumes_staging.path().join("volumes"))
            .context("staging the restored volumes")?;
    }
    std::fs::rename(staging, ctx.vms.vms_dir.join(&id)).context("moving the restored files into place")?;
    let record = VmRecord::new_stopped(id.clone(), &user.username, spec, ctx.vms.runtime.name());
    let r = record.clone();
    if let Err(e) = ctx.vms.store.call(move |c| Ok(crate::vms::store::insert(c, &r)?)).await {
        let _ = std::fs::remove_dir_all(ctx.vms.vms_dir.join(&id));
        return Err(e.into());
    }
    if let Err(e) = restore_volumes(ctx, &user.username, &id, &manifest, volumes_staging.path()).await {
        let i = id.clone();
        let _ = ctx.vms.store.call(move |c| Ok(crate::vms::store::delete(c, &i)?)).await;
        let _ = std::fs::remove_dir_all(ctx.vms.vms_dir.join(&id));
        return Err(e);
    }
    Ok(record)
}

/// Verifies the uploaded archive, keeps it as a backup of its own, and restores it as a new VM.
async fn restore_upload(
    ctx: &Ctx,
    user: &SessionUser,
    upload: tempfile::NamedTempFile,
    new_name: Option<String>,
    progress: &Progress,
) -> ApiResult<VmRecord> {
    let (staging, manifest) = extract(ctx, upload.path(), progress).await?;
    // Checked before the upload is kept: a refused archive leaves nothing behind.
    let name = new_name.filter(|n| !n.trim().is_empty()).unwrap_or_else(|| manifest.vm_name.clone());
    let spec = restored_spec(ctx, user, &manifest, name, true).await?;
    let id = crate::store::new_id();
    let stamp = now_unix();
    let backups_dir = ctx.dir.clone();
    let target = backups_dir.join(format!("fastvm-{}-{stamp}-{id}.tar.zst", slug(&manifest.vm_name)));
    upload.persist(&target).map_err(|e| ApiError::Internal(anyhow::Error::from(e.error)))?;
    let size = std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
    let (i, v, n, o, p) = (
        id.clone(),
        manifest.vm_id.clone(),
        manifest.vm_name.clone(),
        user.username.clone(),
        target.display().to_string(),
    );
    ctx.vms
        .store
        .call(move |c| {
            c.execute(
                &format!("INSERT INTO backups ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
                params![i, v, n, o, p, size as i64, stamp],
            )?;
            Ok(())
        })
        .await?;
    restore_as_new(ctx, user, manifest, spec, staging.path()).await
}

/// Every backup, newest first.
async fn all(ctx: &Ctx) -> ApiResult<Vec<Backup>> {
    Ok(ctx
        .vms
        .store
        .call(|c| {
            let mut stmt =
                c.prepare(&format!("SELECT {SELECT} FROM backups ORDER BY created_at DESC, id"))?;
            let rows = stmt.query_map([], from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?)
}

/// The backups `user` may see (all of them for admins), newest first.
pub async fn list(ctx: &Ctx, user: &SessionUser) -> ApiResult<Vec<Backup>> {
    Ok(all(ctx).await?.into_iter().filter(|b| user.may_see(&b.owner)).collect())
}

/// A chunked backup packed into one standalone `.tar.zst`, as a job: a temporary file, gone when
/// dropped.
pub async fn pack_for_download(
    ctx: &Ctx,
    user: &SessionUser,
    backup: &Backup,
) -> ApiResult<tempfile::NamedTempFile> {
    let (st, b) = (ctx.clone(), backup.clone());
    ctx.jobs
        .run("download", Some(&backup.vm_id), &user.username, move |progress| async move {
            let out = tempfile::Builder::new()
                .prefix(".backup-")
                .suffix(".tar.zst")
                .tempfile_in(&st.dir)
                .context("download file")?;
            materialize::pack(&st, Path::new(&b.path), out.path(), &progress).await?;
            Ok((out, Some(b.id)))
        })
        .await
}

/// Verifies one backup (`only`) or all of them, as a job.
pub async fn verify_job(ctx: &Ctx, owner: &str, only: Option<Backup>) -> ApiResult<Verification> {
    let st = ctx.clone();
    let vm_id = only.as_ref().map(|b| b.vm_id.clone());
    ctx.jobs
        .run("verify", vm_id.as_deref(), owner, move |progress| async move {
            let found = verify(&st, only.as_ref(), &progress).await?;
            let id = only.map(|b| b.id);
            Ok((found, id))
        })
        .await
}

/// Restores `backup` (as a new VM called `new_name`, or onto its stopped original) as a job whose
/// progress can be read while it runs.
pub async fn restore_job(
    ctx: &Ctx,
    user: SessionUser,
    backup: Backup,
    new_name: Option<String>,
) -> ApiResult<VmRecord> {
    let (st, vm_id, owner) = (ctx.clone(), backup.vm_id.clone(), user.username.clone());
    ctx.jobs
        .run("restore", Some(&vm_id), &owner, move |progress| async move {
            let vm = restore(&st, &user, &backup, new_name, &progress).await?;
            let id = vm.id.clone();
            Ok((vm, Some(id)))
        })
        .await
}

/// Restores an uploaded archive as a new VM, as a job (the archive is verified in full first and
/// kept as a backup).
pub async fn restore_upload_job(
    ctx: &Ctx,
    user: SessionUser,
    upload: tempfile::NamedTempFile,
    new_name: Option<String>,
) -> ApiResult<VmRecord> {
    let (st, owner) = (ctx.clone(), user.username.clone());
    ctx.jobs
        .run("restore", None, &owner, move |progress| async move {
            let vm = restore_upload(&st, &user, upload, new_name, &progress).await?;
            let id = vm.id.clone();
            Ok((vm, Some(id)))
        })
        .await
}
