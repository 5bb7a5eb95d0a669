//! `/api/volumes`, and attaching them to VMs: `/api/vms/{vm_id}/volumes/{vol_id}`.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::audit::Audit;
use crate::api::session::AuthUser;
use crate::error::{ApiJson, ApiResult, ErrorBody};
use crate::http::Message;
use crate::state::AppState;
use crate::store::volumes::Volume;
use crate::volumes::{self, CreateVolume};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_volumes, create_volume))
        .routes(routes!(get_volume, delete_volume))
        .routes(routes!(attach_volume, detach_volume))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VolumeResponse {
    pub success: bool,
    pub message: String,
    pub volume: Volume,
}

fn respond(message: String, volume: Volume) -> Json<VolumeResponse> {
    Json(VolumeResponse { success: true, message, volume })
}

/// Volumes you may see (all for admins).
#[utoipa::path(get, path = "/api/volumes", tag = "volumes", security(("bearer" = [])),
    responses((status = 200, body = Vec<Volume>), (status = 401, body = ErrorBody)))]
async fn list_volumes(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> ApiResult<Json<Vec<Volume>>> {
    Ok(Json(volumes::list(&state.vms, &user).await?))
}

/// Create an empty volume (thin: space is used as the guest writes).
#[utoipa::path(post, path = "/api/volumes", tag = "volumes", security(("bearer" = [])), request_body = CreateVolume,
    responses((status = 200, body = VolumeResponse), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_volume(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    ApiJson(req): ApiJson<CreateVolume>,
) -> ApiResult<Json<VolumeResponse>> {
    audit.action("volume.create").details(&req.name);
    let volume = volumes::create(&state.vms, &user.username, req).await?;
    audit.target(&volume.id);
    Ok(respond(format!("Volume {} created", volume.name), volume))
}

/// One volume.
#[utoipa::path(get, path = "/api/volumes/{vol_id}", tag = "volumes", security(("bearer" = [])),
    params(("vol_id" = String, Path)), responses((status = 200, body = Volume), (status = 404, body = ErrorBody)))]
async fn get_volume(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(vol_id): Path<String>,
) -> ApiResult<Json<Volume>> {
    Ok(Json(volumes::owned(&state.vms, &user, &vol_id).await?))
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
    let volume = volumes::delete(&state.vms, &user, &vol_id).await?;
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
    state.vms.owned(&user, &vm_id).await?;
    let (volume, vm) = volumes::attach(&state.vms, &user, &vm_id, &vol_id).await?;
    Ok(respond(format!("Volume {} attached to {}", volume.name, vm.spec.name), volume))
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
    state.vms.owned(&user, &vm_id).await?;
    let volume = volumes::detach(&state.vms, &user, &vm_id, &vol_id).await?;
    Ok(respond(format!("Volume {} detached", volume.name), volume))
}
