//! `/api/vms/{vm_id}/snapshots[...]`.

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
use crate::snapshots::{self, CreateSnapshot, Snapshot};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_snapshots, create_snapshot))
        .routes(routes!(delete_snapshot))
        .routes(routes!(restore_snapshot))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotResponse {
    pub success: bool,
    pub message: String,
    pub snapshot: Snapshot,
}

/// Snapshots of a VM, oldest first.
#[utoipa::path(get, path = "/api/vms/{vm_id}/snapshots", tag = "snapshots", security(("bearer" = [])),
    params(("vm_id" = String, Path)), responses((status = 200, body = Vec<Snapshot>), (status = 404, body = ErrorBody)))]
async fn list_snapshots(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
) -> ApiResult<Json<Vec<Snapshot>>> {
    let vm = state.vms.owned(&user, &vm_id).await?;
    Ok(Json(snapshots::list(&state.vms, &vm).await?))
}

/// Take a snapshot: of the disks of a stopped VM, or live (disks and RAM) of a running one.
#[utoipa::path(post, path = "/api/vms/{vm_id}/snapshots", tag = "snapshots", security(("bearer" = [])),
    params(("vm_id" = String, Path)), request_body = CreateSnapshot,
    responses(
        (status = 200, body = SnapshotResponse),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Name taken, or a raw disk", body = ErrorBody),
    ))]
async fn create_snapshot(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
    ApiJson(req): ApiJson<CreateSnapshot>,
) -> ApiResult<Json<SnapshotResponse>> {
    audit.action("snapshot.create").target(&vm_id).details(&req.name);
    state.vms.owned(&user, &vm_id).await?;
    snapshots::check(&req)?;
    // A job: a live snapshot writes the guest's RAM, which takes a while, and it is journaled so
    // that a snapshot cut short by a kill is reported and its leftover removed at the next start.
    let vms = state.vms.clone();
    let id = vm_id.clone();
    let snapshot = state
        .jobs
        .run("snapshot", Some(&vm_id), &user.username, move |progress| async move {
            let snapshot = snapshots::take(&vms, &id, &req, &progress).await?;
            let sid = snapshot.id.clone();
            Ok((snapshot, Some(sid)))
        })
        .await?;
    audit.details(&snapshot.id);
    let message = format!("Snapshot {} created", snapshot.name);
    Ok(Json(SnapshotResponse { success: true, message, snapshot }))
}

/// Go back to a snapshot (the VM must be stopped). A live snapshot brings the guest back running,
/// where it was when the snapshot was taken.
#[utoipa::path(post, path = "/api/vms/{vm_id}/snapshots/{snap_id}/restore", tag = "snapshots", security(("bearer" = [])),
    params(("vm_id" = String, Path), ("snap_id" = String, Path)),
    responses((status = 200, body = Message), (status = 404, body = ErrorBody), (status = 409, description = "VM running", body = ErrorBody)))]
async fn restore_snapshot(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    Path((vm_id, snap_id)): Path<(String, String)>,
) -> ApiResult<Json<Message>> {
    audit.action("snapshot.restore").target(&vm_id).details(&snap_id);
    state.vms.owned(&user, &vm_id).await?;
    Ok(Message::ok(snapshots::restore(&state.vms, &vm_id, &snap_id).await?))
}

/// Delete a snapshot (its data in the images is freed).
#[utoipa::path(delete, path = "/api/vms/{vm_id}/snapshots/{snap_id}", tag = "snapshots", security(("bearer" = [])),
    params(("vm_id" = String, Path), ("snap_id" = String, Path)),
    responses((status = 200, body = Message), (status = 404, body = ErrorBody)))]
async fn delete_snapshot(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    Path((vm_id, snap_id)): Path<(String, String)>,
) -> ApiResult<Json<Message>> {
    audit.action("snapshot.delete").target(&vm_id).details(&snap_id);
    state.vms.owned(&user, &vm_id).await?;
    let snap = snapshots::delete(&state.vms, &vm_id, &snap_id).await?;
    Ok(Message::ok(format!("Snapshot {} deleted", snap.name)))
}
