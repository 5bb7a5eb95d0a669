//! Standalone volumes: `/api/volumes`, and attaching them to VMs (`/api/vms/{vm_id}/volumes/{vol_id}`),
//! on a stopped VM or hot-plugged into a running one.

pub mod store;

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use vmrunner::argv::{
    DiskFormat, ROOT_PORTS, VolumeDisk, is_q35, volume_blockdev, volume_device, volume_ids,
};
use vmrunner::validate::{MAX_DISK_GB, validate_name};

use crate::audit::Audit;
use crate::auth::AuthUser;
use crate::auth::users::SessionUser;
use crate::error::{ApiError, ApiJson, ApiResult, ErrorBody};
use crate::http::Message;
use crate::qmp::{self, Command};
use crate::state::AppState;
use crate::store::now_unix;
use crate::vms::model::VmRecord;
use store::Volume;

/// How long a guest may take to let go of a hot-unplugged disk.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(15);

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_volumes, create_volume))
        .routes(routes!(get_volume, delete_volume))
        .routes(routes!(attach_volume, detach_volume))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    /// 1-50 of letters, digits, space, `_ . -`.
    pub name: String,
    /// 1-1024.
    pub size_gb: u64,
    #[serde(default)]
    pub format: DiskFormat,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VolumeResponse {
    pub success: bool,
    pub message: String,
    pub volume: Volume,
}

fn visible(user: &SessionUser, v: &Volume) -> bool {
    user.is_admin || v.owner == user.username
}

async fn owned(state: &AppState, user: &SessionUser, id: &str) -> ApiResult<Volume> {
    let i = id.to_string();
    match state.store.call(move |c| Ok(store::get(c, &i)?)).await? {
        Some(v) if visible(user, &v) => Ok(v),
        _ => Err(ApiError::NotFound("Volume not found".into())),
    }
}

/// Volumes you may see (all for admins).
#[utoipa::path(get, path = "/api/volumes", tag = "volumes", security(("bearer" = [])),
    responses((status = 200, body = Vec<Volume>), (status = 401, body = ErrorBody)))]
async fn list_volumes(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> ApiResult<Json<Vec<Volume>>> {
    let all = state.store.call(|c| Ok(store::list(c)?)).await?;
    Ok(Json(all.into_iter().filter(|v| visible(&user, v)).collect()))
}

/// Create an empty volume (thin: space is used as the guest writes).
#[utoipa::path(post, path = "/api/volumes", tag = "volumes", security(("bearer" = [])), request_body = CreateVolume,
    responses((status = 201, body = VolumeResponse), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_volume(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    ApiJson(req): ApiJson<CreateVolume>,
) -> ApiResult<(StatusCode, Json<VolumeResponse>)> {
    audit.action("volume.create").details(&req.name);
    validate_name(&req.name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if !(1..=MAX_DISK_GB).contains(&req.size_gb) {
        return Err(ApiError::BadRequest(format!("size_gb: must be 1 to {MAX_DISK_GB}")));
    }
    let id = crate::vms::manager::new_id();
    audit.target(&id);
    let path = state.settings.data_dir.join("volumes").join(format!("{id}.{}", req.format.as_str()));
    crate::storage::create_image(&state.vms.qemu_img, &path, req.format.as_str(), req.size_gb).await?;
    let (i, name, owner, p) =
        (id.clone(), req.name.clone(), user.username.clone(), path.display().to_string());
    let inserted = state
        .store
        .call(move |c| {
            let need = crate::quotas::store::Usage::disk(req.size_gb as i64);
            if let Some(why) = crate::quotas::store::exceeded(c, &owner, need, None)? {
                return Ok(Err(why));
            }
            store::insert(c, &i, &name, &owner, req.size_gb, req.format, &p, now_unix())?;
            Ok(Ok(store::get(c, &i)?))
        })
        .await;
    let inserted = match inserted {
        Ok(Err(why)) => {
            let _ = std::fs::remove_file(&path);
            return Err(ApiError::Forbidden(why));
        }
        Ok(Ok(v)) => Ok(v),
        Err(e) => Err(e),
    };
    let volume = match inserted {
        Ok(Some(v)) => v,
        other => {
            // Nothing is kept of a volume the database does not know.
            let _ = std::fs::remove_file(&path);
            other?;
            return Err(ApiError::Internal(anyhow::anyhow!("volume vanished after insert")));
        }
    };
    Ok((
        StatusCode::CREATED,
        Json(VolumeResponse { success: true, message: format!("Volume {} created", volume.name), volume }),
    ))
}

/// One volume.
#[utoipa::path(get, path = "/api/volumes/{vol_id}", tag = "volumes", security(("bearer" = [])),
    params(("vol_id" = String, Path)), responses((status = 200, body = Volume), (status = 404, body = ErrorBody)))]
async fn get_volume(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(vol_id): Path<String>,
) -> ApiResult<Json<Volume>> {
    Ok(Json(owned(&state, &user, &vol_id).await?))
}

/// Delete a volume and its data. An attached volume is refused (detach it first).
#[utoipa::path(delete, path = "/api/volumes/{vol_id}", tag = "volumes", security(("bearer" = [])),
    params(("vol_id" = String, Path)),
    responses((status = 200, body = Message), (status = 404, body = ErrorBody), (status = 409, description = "Attached", body = ErrorBody)))]
async fn delete_volume(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    Path(vol_id): Path<String>,
) -> ApiResult<Json<Message>> {
    audit.action("volume.delete").target(&vol_id);
    let volume = owned(&state, &user, &vol_id).await?;
    if let Some(vm) = &volume.attached_to {
        return Err(ApiError::Conflict(format!("Volume is attached to VM {vm}: detach it first")));
    }
    // Checked again as it is deleted: an attach may have claimed it since it was read.
    let i = vol_id.clone();
    if !state.store.call(move |c| Ok(store::delete_unattached(c, &i)?)).await? {
        // Attached since, or deleted by another request.
        owned(&state, &user, &vol_id).await?;
        return Err(ApiError::Conflict("Volume was attached meanwhile: detach it first".into()));
    }
    if let Err(e) = std::fs::remove_file(&volume.path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(volume = vol_id, error = %e, "could not remove the volume's file");
        }
    }
    Ok(Message::ok(format!("Volume {} deleted", volume.name)))
}

/// Attach a volume to a VM: at once when it is stopped, hot-plugged (the guest sees a new disk) when it runs.
#[utoipa::path(post, path = "/api/vms/{vm_id}/volumes/{vol_id}", tag = "volumes", security(("bearer" = [])),
    params(("vm_id" = String, Path), ("vol_id" = String, Path)),
    responses(
        (status = 200, body = VolumeResponse),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Attached elsewhere, or no free slot", body = ErrorBody),
    ))]
async fn attach_volume(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    Path((vm_id, vol_id)): Path<(String, String)>,
) -> ApiResult<Json<VolumeResponse>> {
    audit.action("volume.attach").target(&vol_id).details(&vm_id);
    let vm = crate::vms::owned(&state, &user, &vm_id).await?;
    owned(&state, &user, &vol_id).await?;
    let _guard = state.vms.lock(&vm_id).await;
    let volume = owned(&state, &user, &vol_id).await?;
    if let Some(other) = &volume.attached_to {
        return Err(ApiError::Conflict(format!("Volume is already attached to VM {other}")));
    }
    let id = vm_id.clone();
    let used: Vec<u32> = state
        .store
        .call(move |c| Ok(store::attached_to(c, &id)?))
        .await?
        .iter()
        .filter_map(|v| v.slot)
        .collect();
    let slot = (1..=ROOT_PORTS)
        .find(|s| !used.contains(s))
        .ok_or_else(|| ApiError::Conflict(format!("A VM takes at most {ROOT_PORTS} volumes")))?;
    // Claimed before it is plugged in: another VM's attach (which holds a different VM lock) or a
    // delete cannot slip in between, and a failed hot-plug hands the claim back.
    let (v, i) = (vol_id.clone(), vm_id.clone());
    if !state.store.call(move |c| Ok(store::claim(c, &v, &i, slot)?)).await? {
        return Err(ApiError::Conflict("Volume was attached elsewhere or deleted meanwhile".into()));
    }
    if let Err(e) = plug_if_running(&state, &vm, &volume, slot).await {
        let v = vol_id.clone();
        if let Err(undo) = state.store.call(move |c| Ok(store::set_attachment(c, &v, None, None)?)).await {
            tracing::error!(volume = vol_id, error = %undo, "could not hand back a volume's claim");
        }
        return Err(e);
    }
    let v = vol_id.clone();
    let volume = state
        .store
        .call(move |c| Ok(store::get(c, &v)?))
        .await?
        .ok_or_else(|| ApiError::NotFound("Volume not found".into()))?;
    Ok(Json(VolumeResponse {
        success: true,
        message: format!("Volume {} attached to {}", volume.name, vm.spec.name),
        volume,
    }))
}

/// Hot-plugs the volume at `slot` when the VM runs (a stopped VM gets it at its next start).
async fn plug_if_running(state: &AppState, vm: &VmRecord, volume: &Volume, slot: u32) -> ApiResult<()> {
    if !state.vms.is_running(vm).await? {
        return Ok(());
    }
    let disk =
        VolumeDisk { id: volume.id.clone(), path: volume.path.clone().into(), format: volume.format, slot };
    let qmp_sock = state.vms.run_dirs.qmp(&vm.id);
    qmp::run(&qmp_sock, &Command::blockdev_add(volume_blockdev(&disk)))
        .await
        .map_err(|e| ApiError::Operation(format!("hot-plugging the volume: {e:#}")))?;
    if let Err(e) = qmp::run(&qmp_sock, &Command::device_add(volume_device(is_q35(&vm.spec), &disk))).await {
        let (node, _) = volume_ids(&volume.id);
        let _ = qmp::run(&qmp_sock, &Command::blockdev_del(&node)).await;
        return Err(ApiError::Operation(format!("hot-plugging the volume: {e:#}")));
    }
    Ok(())
}

/// Detach a volume: at once from a stopped VM; from a running one once the guest lets go of the disk.
#[utoipa::path(delete, path = "/api/vms/{vm_id}/volumes/{vol_id}", tag = "volumes", security(("bearer" = [])),
    params(("vm_id" = String, Path), ("vol_id" = String, Path)),
    responses(
        (status = 200, body = VolumeResponse),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Not attached to this VM, or the guest did not release it", body = ErrorBody),
    ))]
async fn detach_volume(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    Path((vm_id, vol_id)): Path<(String, String)>,
) -> ApiResult<Json<VolumeResponse>> {
    audit.action("volume.detach").target(&vol_id).details(&vm_id);
    let vm = crate::vms::owned(&state, &user, &vm_id).await?;
    let _guard = state.vms.lock(&vm_id).await;
    let volume = owned(&state, &user, &vol_id).await?;
    if volume.attached_to.as_deref() != Some(vm_id.as_str()) {
        return Err(ApiError::Conflict("Volume is not attached to this VM".into()));
    }
    if state.vms.is_running(&vm).await? {
        let qmp_sock = state.vms.run_dirs.qmp(&vm_id);
        let (node, dev) = volume_ids(&volume.id);
        // An error here is not the end: an earlier detach that timed out may have left the device
        // mid-unplug, or already gone. Whether the node can be released decides.
        let asked = qmp::run(&qmp_sock, &Command::device_del(&dev)).await;
        release_node(&qmp_sock, &node, asked.err()).await?;
    }
    let v = vol_id.clone();
    let volume = state
        .store
        .call(move |c| {
            store::set_attachment(c, &v, None, None)?;
            Ok(store::get(c, &v)?)
        })
        .await?
        .ok_or_else(|| ApiError::NotFound("Volume not found".into()))?;
    Ok(Json(VolumeResponse { success: true, message: format!("Volume {} detached", volume.name), volume }))
}

/// Deletes a hot-unplugged volume's block node once QEMU lets go of it. `device_del` only asks the
/// guest; QEMU frees the node when it finalizes the device, which can be after the device has
/// left `query-block`, so the deletion itself is retried while the node is still in use.
async fn release_node(
    qmp_sock: &std::path::Path,
    node: &str,
    unplug_error: Option<anyhow::Error>,
) -> ApiResult<()> {
    let deadline = Instant::now() + UNPLUG_TIMEOUT;
    loop {
        let error = match qmp::run(qmp_sock, &Command::blockdev_del(node)).await {
            Ok(_) => return Ok(()),
            Err(e) => format!("{e:#}"),
        };
        // An earlier detach got this far and then failed to record it: nothing left to release.
        if error.contains("Failed to find node") {
            return Ok(());
        }
        if !error.contains("is in use") {
            return Err(ApiError::Operation(format!("releasing the volume: {error}")));
        }
        if Instant::now() >= deadline {
            return Err(ApiError::Conflict(match unplug_error {
                Some(e) => format!("The guest has not released the disk: unplugging it failed: {e:#}"),
                None => "The guest has not released the disk yet (is it still booting?); try again".into(),
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
