//! Backups: `POST /api/vms/{vm_id}/backup`, `GET /api/backups`, download, delete and restore.
//! A backup is one verified archive (see `archive`) of the VM's disk, UEFI variables and TPM state,
//! taken from a stopped VM or, consistently, from a running one (QMP `blockdev-backup`).

pub mod archive;
pub mod schedule;
mod write_behind;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use axum::Json;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Multipart, Path as UrlPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::process::Command;
use tower::ServiceExt;
use tower_http::services::ServeFile;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::audit::Audit;
use crate::api::session::AuthUser;
use crate::auth::users::SessionUser;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::Message;
use crate::jobs::Progress;
use crate::quotas::store as quotas;
use crate::state::AppState;
use crate::store::{now_unix, rfc3339};
use crate::vms::held::Held;
use crate::vms::lifecycle::Op;
use crate::vms::manager::VmManager;
use crate::vms::model::{VmActionResponse, VmRecord};
use crate::{qmp, storage};
use archive::Manifest;
use vmrunner::VmSpec;
use vmrunner::argv::DiskFormat;
use vmrunner::paths::VmDir;

const JOB_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_backup))
        .routes(routes!(list_backups))
        .routes(routes!(download_backup))
        .routes(routes!(download_ticket))
        .routes(routes!(delete_backup))
        .routes(routes!(restore_backup))
        .merge(schedule::routes())
        // Archives are gigabytes: no body limit on the upload, which streams to disk.
        .merge(OpenApiRouter::new().routes(routes!(upload_and_restore)).layer(DefaultBodyLimit::disable()))
}

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
    #[serde(skip)]
    path: String,
    #[serde(skip)]
    owner: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BackupResponse {
    pub success: bool,
    pub message: String,
    pub id: String,
    pub backup_name: String,
    pub size_mb: f64,
    pub vm_name: String,
}

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Backup> {
    let path: String = r.get(4)?;
    let size: i64 = r.get(5)?;
    Ok(Backup {
        scheduled: r.get(7)?,
        id: r.get(0)?,
        vm_id: r.get(1)?,
        vm_name: r.get(2)?,
        owner: r.get(3)?,
        backup_name: Path::new(&path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        path,
        size_bytes: size.max(0) as u64,
        size_mb: (size.max(0) as f64 / 1_048_576.0 * 100.0).round() / 100.0,
        created: rfc3339(r.get(6)?),
    })
}

const COLUMNS: &str = "id, vm_id, vm_name, owner, path, size_bytes, created_at";
/// What `from_row` reads.
const SELECT: &str = "id, vm_id, vm_name, owner, path, size_bytes, created_at, scheduled";

async fn owned(state: &AppState, user: &SessionUser, id: &str) -> ApiResult<Backup> {
    let i = id.to_string();
    let found = state
        .store
        .call(move |c| {
            Ok(c.query_row(&format!("SELECT {SELECT} FROM backups WHERE id = ?1"), [i], from_row)
                .optional()?)
        })
        .await?;
    match found {
        Some(b) if user.is_admin || b.owner == user.username => Ok(b),
        _ => Err(ApiError::NotFound("Backup not found".into())),
    }
}

/// A file name part made of the VM's name.
fn slug(name: &str) -> String {
    let s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    s.chars().take(40).collect()
}

/// A disk to copy out of a running VM: its block node, and what the copy is made as.
struct LiveDisk {
    node: String,
    format: &'static str,
    size_gb: u64,
    member: String,
}

/// Copies one disk of the running VM with a QMP `blockdev-backup` job into `target` (a consistent
/// point-in-time copy; the guest keeps running).
async fn live_copy(
    vms: &VmManager,
    held: &Held<'_>,
    disk: &LiveDisk,
    target: &Path,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> ApiResult<()> {
    storage::create_image(&vms.qemu_img, target, disk.format, disk.size_gb).await?;
    let node = format!("backup-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let failed = |e: anyhow::Error| ApiError::Operation(format!("live backup of {}: {e:#}", disk.member));
    let file =
        json!({"driver": disk.format, "node-name": node, "file": {"driver": "file", "filename": target}});
    held.qmp(&qmp::Command::blockdev_add(file)).await.map_err(failed)?;
    let backup = |job: &str| qmp::Command::blockdev_backup(job, &disk.node, &node);
    let result = held.qmp_job(backup, JOB_TIMEOUT, progress).await.map_err(failed);
    let _ = held.qmp(&qmp::Command::blockdev_del(&node)).await;
    result
}

/// Back up a VM, stopped or running (the guest keeps running).
#[utoipa::path(post, path = "/api/vms/{vm_id}/backup", tag = "backups", security(("bearer" = [])),
    params(("vm_id" = String, Path)),
    responses((status = 200, body = BackupResponse), (status = 404, body = ErrorBody)))]
async fn create_backup(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    UrlPath(vm_id): UrlPath<String>,
) -> ApiResult<Json<BackupResponse>> {
    audit.action("backup.create").target(&vm_id);
    state.vms.owned(&user, &vm_id).await?;
    state.vms.check_quota(&user.username, quotas::Usage::backups(1)).await?;
    let backup = backup_vm(&state, &vm_id, &user.username, false).await?;
    audit.details(&backup.id);
    Ok(Json(BackupResponse {
        success: true,
        message: format!("Backup of {} created", backup.vm_name),
        id: backup.id,
        backup_name: backup.backup_name,
        size_mb: backup.size_mb,
        vm_name: backup.vm_name,
    }))
}

/// Takes one backup of a VM (under its lock), as a job whose progress can be read while it runs, and
/// records it. `scheduled` backups are the ones a schedule's retention may prune.
pub async fn backup_vm(state: &AppState, vm_id: &str, owner: &str, scheduled: bool) -> ApiResult<Backup> {
    let (st, v, o) = (state.clone(), vm_id.to_string(), owner.to_string());
    state
        .jobs
        .run("backup", Some(vm_id), owner, move |progress| async move {
            let backup = take_backup(&st, &v, &o, scheduled, &progress).await?;
            let id = backup.id.clone();
            Ok((backup, Some(id)))
        })
        .await
}

/// The archive member a volume's data goes in.
fn volume_member(v: &crate::volumes::store::Volume) -> String {
    format!("volumes/{}.{}", v.id, v.format.as_str())
}

async fn take_backup(
    state: &AppState,
    vm_id: &str,
    owner: &str,
    scheduled: bool,
    progress: &Progress,
) -> ApiResult<Backup> {
    let held = state.vms.enter(vm_id, Op::Backup).await?;
    let vm = held.vm.clone();
    let id = crate::vms::manager::new_id();
    let backups_dir = state.settings.data_dir.join("backups");
    let work =
        tempfile::Builder::new().prefix(".backup-").tempdir_in(&backups_dir).context("work directory")?;
    let vm_dir = state.vms.vm_dir(&vm.id);
    let v = vm.id.clone();
    let volumes = state.store.call(move |c| Ok(crate::volumes::store::attached_to(c, &v)?)).await?;
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    let disk = vm_dir.disk();
    let running = held.live();
    // Live copies are written by QEMU, so they go where QEMU can write even inside its container:
    // the VM's own directory (removed with the work directory, as they are).
    let copies = if running {
        Some(
            tempfile::Builder::new()
                .prefix(".backup-")
                .tempdir_in(vm_dir.path())
                .context("copy directory")?,
        )
    } else {
        None
    };
    if let Some(copies) = &copies {
        let mut disks = Vec::new();
        if disk.exists() {
            disks.push(LiveDisk {
                node: "disk0".into(),
                format: "qcow2",
                size_gb: vm.spec.disk_size,
                member: VmDir::DISK.into(),
            });
        }
        for v in &volumes {
            disks.push(LiveDisk {
                node: vmrunner::argv::volume_ids(&v.id).0,
                format: v.format.as_str(),
                size_gb: v.size_gb,
                member: volume_member(v),
            });
        }
        // Copying is the first half of the job, archiving the second.
        let share = 0.5 / disks.len().max(1) as f64;
        for (i, d) in disks.iter().enumerate() {
            progress.phase(&format!("copying {}", d.member));
            let copy = copies.path().join(format!("copy-{i}"));
            let from = share * i as f64;
            live_copy(&state.vms, &held, d, &copy, &|done, total| {
                progress.bytes(done, total, from, from + share)
            })
            .await?;
            files.push((d.member.clone(), copy));
        }
    } else {
        if disk.exists() {
            if storage::backing_file(&state.vms.qemu_img, &disk).await?.is_some() {
                // A clone's overlay needs its base: archive one self-contained image instead.
                progress.phase(&format!("flattening {}", VmDir::DISK));
                let copy = work.path().join(VmDir::DISK);
                let mut cmd = Command::new(&state.vms.qemu_img);
                cmd.args(["convert", "-f", "qcow2", "-O", "qcow2"]).arg(&disk).arg(&copy);
                storage::run(cmd, "flattening the disk").await?;
                files.push((VmDir::DISK.into(), copy));
            } else {
                files.push((VmDir::DISK.into(), disk));
            }
        }
        for v in &volumes {
            files.push((volume_member(v), PathBuf::from(&v.path)));
        }
    }
    for name in VmDir::FIRMWARE_FILES {
        let file = vm_dir.path().join(name);
        if file.is_file() {
            files.push((name.into(), file));
        }
    }
    if let Ok(entries) = std::fs::read_dir(vm_dir.tpm_state()) {
        for e in entries.filter_map(Result::ok).filter(|e| e.path().is_file()) {
            files.push((format!("tpm/{}", e.file_name().to_string_lossy()), e.path()));
        }
    }
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let target = backups_dir.join(format!("fastvm-{}-{stamp}-{id}.tar.zst", slug(&vm.spec.name)));
    let tmp = work.path().join("archive.tar.zst");
    let manifest = Manifest {
        format: archive::FORMAT.into(),
        vm_id: vm.id.clone(),
        vm_name: vm.spec.name.clone(),
        spec: vm.spec.clone(),
        created_at: stamp,
        members: Vec::new(),
        volumes: volumes
            .iter()
            .map(|v| archive::ArchivedVolume {
                id: v.id.clone(),
                name: v.name.clone(),
                size_gb: v.size_gb,
                format: v.format,
                slot: v.slot,
                member: volume_member(v),
            })
            .collect(),
    };
    progress.phase("archiving");
    let out = tmp.clone();
    let p = progress.clone();
    let from = if running { 0.5 } else { 0.0 };
    tokio::task::spawn_blocking(move || {
        archive::write(&out, &files, manifest, &|done, total| p.bytes(done, total, from, 1.0))
    })
    .await
    .context("backup task failed")??;
    std::fs::rename(&tmp, &target).context("moving the backup into place")?;
    let size = std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
    let (i, v, n, o, p) =
        (id.clone(), vm.id.clone(), vm.spec.name.clone(), owner.to_string(), target.display().to_string());
    let inserted = state
        .store
        .call(move |c| {
            c.execute(
                &format!(
                    "INSERT INTO backups ({COLUMNS}, scheduled) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                ),
                params![i, v, n, o, p, size as i64, stamp, scheduled],
            )?;
            Ok(())
        })
        .await;
    if let Err(e) = inserted {
        let _ = std::fs::remove_file(&target);
        return Err(e.into());
    }
    get(state, &id).await?.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("backup vanished")))
}

async fn get(state: &AppState, id: &str) -> ApiResult<Option<Backup>> {
    let i = id.to_string();
    Ok(state
        .store
        .call(move |c| {
            Ok(c.query_row(&format!("SELECT {SELECT} FROM backups WHERE id = ?1"), [i], from_row)
                .optional()?)
        })
        .await?)
}

/// Removes a backup's record and archive.
pub async fn remove(state: &AppState, backup: &Backup) -> ApiResult<()> {
    let i = backup.id.clone();
    state.store.call(move |c| Ok(c.execute("DELETE FROM backups WHERE id = ?1", [i])?)).await?;
    let _ = std::fs::remove_file(&backup.path);
    Ok(())
}

/// Removes every backup `owner` has (their account is being deleted).
pub async fn remove_all_of(state: &AppState, owner: &str) -> ApiResult<()> {
    let o = owner.to_string();
    let theirs = state
        .store
        .call(move |c| {
            let mut stmt = c.prepare(&format!("SELECT {SELECT} FROM backups WHERE owner = ?1"))?;
            let rows = stmt.query_map([o], from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?;
    for backup in &theirs {
        remove(state, backup).await?;
    }
    Ok(())
}

/// Backups you may see, newest first.
#[utoipa::path(get, path = "/api/backups", tag = "backups", security(("bearer" = [])),
    responses((status = 200, body = Vec<Backup>)))]
async fn list_backups(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> ApiResult<Json<Vec<Backup>>> {
    let all = state
        .store
        .call(|c| {
            let mut stmt =
                c.prepare(&format!("SELECT {SELECT} FROM backups ORDER BY created_at DESC, id"))?;
            let rows = stmt.query_map([], from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?;
    Ok(Json(all.into_iter().filter(|b| user.is_admin || b.owner == user.username).collect()))
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

/// A short-lived ticket to download one backup without the bearer token (a browser link).
#[utoipa::path(post, path = "/api/backups/{backup_id}/download-ticket", tag = "backups", security(("bearer" = [])),
    params(("backup_id" = String, Path)),
    responses((status = 200, body = DownloadTicket), (status = 404, body = ErrorBody)))]
async fn download_ticket(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    UrlPath(backup_id): UrlPath<String>,
) -> ApiResult<Json<DownloadTicket>> {
    let backup = owned(&state, &user, &backup_id).await?;
    let ticket = state.consoles.tickets.issue(&user.username, &backup.id, crate::consoles::Kind::Download);
    Ok(Json(DownloadTicket {
        url: format!("/api/backups/{}/download?ticket={ticket}", backup.id),
        ticket,
        expires_in: state.consoles.tickets.ttl().as_secs(),
    }))
}

/// Who asks for a download: the bearer token's user, or the one a download ticket for this very
/// backup was issued to (as they are now).
async fn downloader(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    ticket: Option<&str>,
    backup_id: &str,
) -> ApiResult<SessionUser> {
    if let Some(token) = crate::api::session::bearer(headers) {
        return crate::api::session::session_from_token(state, token).await;
    }
    let refused =
        || ApiError::Unauthorized("Not authenticated: a bearer token or a download ticket is needed".into());
    let t = ticket
        .and_then(|t| state.consoles.tickets.check(t))
        .filter(|t| t.kind == crate::consoles::Kind::Download && t.vm_id == backup_id)
        .ok_or_else(refused)?;
    crate::api::session::current_user(state, &t.username).await.ok_or_else(refused)
}

/// Download a backup archive (supports `Range` for resuming), with the bearer token or a ticket.
#[utoipa::path(get, path = "/api/backups/{backup_id}/download", tag = "backups", security(("bearer" = [])),
    params(("backup_id" = String, Path), DownloadQuery),
    responses((status = 200, description = "The archive"), (status = 206, description = "Part of it"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn download_backup(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(q): axum::extract::Query<DownloadQuery>,
    UrlPath(backup_id): UrlPath<String>,
    request: Request,
) -> ApiResult<Response> {
    let user = downloader(&state, &headers, q.ticket.as_deref(), &backup_id).await?;
    let backup = owned(&state, &user, &backup_id).await?;
    let response = ServeFile::new(&backup.path).oneshot(request).await.context("reading the backup")?;
    let mut response = response.map(Body::new).into_response();
    let disposition = format!("attachment; filename=\"{}\"", backup.backup_name);
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        response.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/zstd"));
    Ok(response)
}

/// Delete a backup.
#[utoipa::path(delete, path = "/api/backups/{backup_id}", tag = "backups", security(("bearer" = [])),
    params(("backup_id" = String, Path)), responses((status = 200, body = Message), (status = 404, body = ErrorBody)))]
async fn delete_backup(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    UrlPath(backup_id): UrlPath<String>,
) -> ApiResult<Json<Message>> {
    audit.action("backup.delete").target(&backup_id);
    let backup = owned(&state, &user, &backup_id).await?;
    remove(&state, &backup).await?;
    Ok(Message::ok(format!("Backup {} deleted", backup.backup_name)))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// Restore as a new VM with this name. Without it the backup goes back onto its original VM,
    /// which must exist and be stopped.
    pub new_name: Option<String>,
}

/// Restore a backup, as a new VM or onto its (stopped) original VM. The archive is verified in full
/// first: a damaged one is refused and nothing changes.
#[utoipa::path(post, path = "/api/backups/{backup_id}/restore", tag = "backups", security(("bearer" = [])),
    params(("backup_id" = String, Path)), request_body = RestoreRequest,
    responses(
        (status = 200, body = VmActionResponse),
        (status = 400, description = "Damaged archive", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The original VM is running", body = ErrorBody),
    ))]
async fn restore_backup(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    UrlPath(backup_id): UrlPath<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<VmActionResponse>> {
    audit.action("backup.restore").target(&backup_id);
    // The body is optional: none (or `{}`) means "onto the original VM".
    let req: RestoreRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RestoreRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::Unprocessable(format!("Invalid request body: {e}")))?
    };
    let backup = owned(&state, &user, &backup_id).await?;
    let (st, vm_id, owner) = (state.clone(), backup.vm_id.clone(), user.username.clone());
    let vm = state
        .jobs
        .run("restore", Some(&vm_id), &owner, move |progress| async move {
            let vm = restore(&st, &user, &backup, req.new_name, &progress).await?;
            let id = vm.id.clone();
            Ok((vm, Some(id)))
        })
        .await?;
    audit.details(&vm.id);
    Ok(Json(VmActionResponse {
        success: true,
        message: format!("{} restored", vm.spec.name),
        vm: (&vm).into(),
    }))
}

/// Verifies and extracts `archive` into a fresh staging directory next to the VMs' own.
async fn extract(
    state: &AppState,
    archive: &Path,
    progress: &Progress,
) -> ApiResult<(tempfile::TempDir, Manifest)> {
    let staging = tempfile::Builder::new()
        .prefix(".restore-")
        .tempdir_in(&state.vms.vms_dir)
        .context("staging directory")?;
    progress.phase("verifying and extracting");
    let (archive, dir, p) = (archive.to_path_buf(), staging.path().to_path_buf(), progress.clone());
    let manifest = tokio::task::spawn_blocking(move || {
        archive::extract_verified(&archive, &dir, &|done, total| p.bytes(done, total, 0.0, 1.0))
    })
    .await
    .context("restore task failed")?
    .map_err(|e| ApiError::BadRequest(format!("The backup archive is damaged: {e:#}")))?;
    check_images(state, &manifest, staging.path()).await?;
    Ok((staging, manifest))
}

/// The disk images of an archive came from whoever made it: each must be a plain image of the format
/// and at most the size its VM or volume record says (see `storage::untrusted`).
async fn check_images(state: &AppState, manifest: &Manifest, dir: &Path) -> ApiResult<()> {
    const GIB: u64 = 1 << 30;
    let max_disk = manifest.spec.disk_size.min(vmrunner::validate::MAX_DISK_GB) * GIB;
    let mut images = vec![(VmDir::DISK.to_string(), DiskFormat::Qcow2, max_disk)];
    images.extend(manifest.volumes.iter().map(|v| (v.member.clone(), v.format, v.size_gb * GIB)));
    for (member, format, max) in images {
        let path = dir.join(&member);
        if path.exists() {
            let what = format!("The backup archive's {member}");
            storage::untrusted::check(&state.vms.qemu_img, &what, &path, format, Some(max)).await?;
        }
    }
    Ok(())
}

async fn restore(
    state: &AppState,
    user: &SessionUser,
    backup: &Backup,
    new_name: Option<String>,
    progress: &Progress,
) -> ApiResult<VmRecord> {
    let (staging, manifest) = extract(state, Path::new(&backup.path), progress).await?;
    if let Some(name) = new_name {
        let spec = restored_spec(state, user, &manifest, name, false).await?;
        return restore_as_new(state, user, manifest, spec, staging.path()).await;
    }
    let vm = state.vms.owned(user, &manifest.vm_id).await.map_err(|_| {
        ApiError::NotFound("The original VM no longer exists: give a new_name to restore as a new VM".into())
    })?;
    let _held = state.vms.enter(&vm.id, Op::RestoreBackup).await?;
    progress.phase("replacing the VM's files");
    let vm_dir = state.vms.vm_dir(&vm.id);
    std::fs::create_dir_all(vm_dir.path()).context("creating the VM directory")?;
    restore_volumes(state, &vm.owner, &vm.id, &manifest, staging.path()).await?;
    replace_files(staging.path(), &vm_dir)?;
    Ok(vm)
}

/// Brings the archived volumes back attached to `vm_id`: a volume still attached to it gets its data
/// replaced; any other becomes a new volume (the original may since belong to another VM). Leaves
/// the staging directory without its `volumes/`.
async fn restore_volumes(
    state: &AppState,
    owner: &str,
    vm_id: &str,
    manifest: &Manifest,
    staging: &Path,
) -> ApiResult<()> {
    use crate::volumes::store as volumes;
    let (archived, o, vm, dir) =
        (manifest.volumes.clone(), owner.to_string(), vm_id.to_string(), state.vms.volumes_dir.clone());
    // All database work first, in one transaction: either every volume has its record (and
    // attachment) or none does. Files move only after it committed.
    let moves: Vec<(String, PathBuf)> = state
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
                let id = if current.is_none() { a.id.clone() } else { crate::vms::manager::new_id() };
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
    state: &AppState,
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
            Some(p) => {
                Path::new(p).is_file() && state.vms.may_use_iso(p, &user.username, user.is_admin).await
            }
            None => true,
        };
        if !usable {
            *iso = None;
        }
    }
    state.vms.check_rules(&spec, None, &user.username, user.is_admin).await?;
    state.vms.normalize(&mut spec)?;
    let volumes: u64 = manifest.volumes.iter().map(|v| v.size_gb).sum();
    let need = quotas::of_vm(&spec)
        + quotas::Usage::disk(volumes as i64)
        + quotas::Usage::backups(i64::from(keeps_upload));
    state.vms.check_quota(&user.username, need).await?;
    Ok(spec)
}

async fn restore_as_new(
    state: &AppState,
    user: &SessionUser,
    manifest: Manifest,
    spec: VmSpec,
    staging: &Path,
) -> ApiResult<VmRecord> {
    let id = crate::vms::manager::new_id();
    // Volumes wait in the staging directory until the VM they attach to exists.
    let volumes_staging = tempfile::Builder::new()
        .prefix(".restore-volumes-")
        .tempdir_in(&state.vms.vms_dir)
        .context("staging directory")?;
    if staging.join("volumes").exists() {
        std::fs::rename(staging.join("volumes"), volumes_staging.path().join("volumes"))
            .context("staging the restored volumes")?;
    }
    std::fs::rename(staging, state.vms.vms_dir.join(&id)).context("moving the restored files into place")?;
    let record = VmRecord::new_stopped(id.clone(), &user.username, spec, state.vms.runtime.name());
    let r = record.clone();
    if let Err(e) = state.store.call(move |c| Ok(crate::vms::store::insert(c, &r)?)).await {
        let _ = std::fs::remove_dir_all(state.vms.vms_dir.join(&id));
        return Err(e.into());
    }
    if let Err(e) = restore_volumes(state, &user.username, &id, &manifest, volumes_staging.path()).await {
        let i = id.clone();
        let _ = state.store.call(move |c| Ok(crate::vms::store::delete(c, &i)?)).await;
        let _ = std::fs::remove_dir_all(state.vms.vms_dir.join(&id));
        return Err(e);
    }
    Ok(record)
}

/// Restore an uploaded backup archive as a new VM (multipart: `file`, optional `new_name`). The
/// archive is kept as a backup and verified in full before anything is created.
#[utoipa::path(post, path = "/api/vms/restore", tag = "backups", security(("bearer" = [])),
    request_body(content_type = "multipart/form-data", description = "`file`: the archive; `new_name`: optional"),
    responses(
        (status = 200, body = VmActionResponse),
        (status = 400, description = "No file, or a damaged archive", body = ErrorBody),
    ))]
async fn upload_and_restore(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    mut multipart: Multipart,
) -> ApiResult<Json<VmActionResponse>> {
    audit.action("backup.upload_restore");
    let backups_dir = state.settings.data_dir.join("backups");
    let upload =
        tempfile::Builder::new().prefix(".upload-").tempfile_in(&backups_dir).context("upload file")?;
    let mut new_name: Option<String> = None;
    let mut received = false;
    while let Some(mut field) =
        multipart.next_field().await.map_err(|e| ApiError::BadRequest(format!("multipart: {e}")))?
    {
        match field.name() {
            Some("file") => {
                let mut out = tokio::fs::File::create(upload.path()).await.context("writing the upload")?;
                while let Some(chunk) = field
                    .chunk()
                    .await
                    .map_err(|e| ApiError::BadRequest(format!("upload interrupted: {e}")))?
                {
                    tokio::io::AsyncWriteExt::write_all(&mut out, &chunk)
                        .await
                        .context("writing the upload")?;
                }
                tokio::io::AsyncWriteExt::flush(&mut out).await.context("writing the upload")?;
                received = true;
            }
            Some("new_name") => new_name = Some(crate::http::small_field(field).await?),
            _ => {}
        }
    }
    if !received {
        return Err(ApiError::BadRequest("file: no archive in the upload (multipart field `file`)".into()));
    }
    let st = state.clone();
    let vm = state
        .jobs
        .run("restore", None, &user.username.clone(), move |progress| async move {
            let vm = restore_upload(&st, &user, upload, new_name, &progress).await?;
            let id = vm.id.clone();
            Ok((vm, Some(id)))
        })
        .await?;
    audit.target(&vm.id);
    Ok(Json(VmActionResponse {
        success: true,
        message: format!("Restored as {}", vm.spec.name),
        vm: (&vm).into(),
    }))
}

/// Verifies the uploaded archive, keeps it as a backup of its own, and restores it as a new VM.
async fn restore_upload(
    state: &AppState,
    user: &SessionUser,
    upload: tempfile::NamedTempFile,
    new_name: Option<String>,
    progress: &Progress,
) -> ApiResult<VmRecord> {
    let (staging, manifest) = extract(state, upload.path(), progress).await?;
    // Checked before the upload is kept: a refused archive leaves nothing behind.
    let name = new_name.filter(|n| !n.trim().is_empty()).unwrap_or_else(|| manifest.vm_name.clone());
    let spec = restored_spec(state, user, &manifest, name, true).await?;
    let id = crate::vms::manager::new_id();
    let stamp = now_unix();
    let backups_dir = state.settings.data_dir.join("backups");
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
    state
        .store
        .call(move |c| {
            c.execute(
                &format!("INSERT INTO backups ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
                params![i, v, n, o, p, size as i64, stamp],
            )?;
            Ok(())
        })
        .await?;
    restore_as_new(state, user, manifest, spec, staging.path()).await
}
