//! `/api/vms`: create, list, edit, start, stop, pause, resume, restart, delete VMs, and read their
//! logs.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use vmrunner::VmSpec;

use crate::api::audit::Audit;
use crate::api::session::AuthUser;
use crate::auth::users;
use crate::error::{ApiError, ApiJson, ApiResult, ErrorBody};
use crate::http::Message;
use crate::runtime::StopMode;
use crate::state::AppState;
use crate::vms::clone::CloneKind;
use crate::vms::listing::{self, Listing};
use crate::vms::model::{VmActionResponse, VmRecord, VmView};
use crate::vms::store;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_vms, create_vm))
        .routes(routes!(get_vm, update_vm, delete_vm))
        .routes(routes!(start_vm))
        .routes(routes!(stop_vm))
        .routes(routes!(restart_vm))
        .routes(routes!(pause_vm))
        .routes(routes!(resume_vm))
        .routes(routes!(vm_logs))
        .routes(routes!(clone_vm))
}

/// The API view of a VM, with the addresses its guest agent last reported.
pub(super) fn view(state: &AppState, vm: &VmRecord) -> VmView {
    let mut v = VmView::from(vm);
    v.state = state.vms.shown(vm);
    if vm.accel.as_deref() == Some("tcg") {
        v.accel_note = state.vms.accel_note.clone();
    }
    v.ip_addresses = state.metrics.guest_addresses(&vm.id);
    v
}

fn respond(state: &AppState, message: impl Into<String>, vm: &VmRecord) -> Json<VmActionResponse> {
    Json(VmActionResponse { success: true, message: message.into(), vm: view(state, vm) })
}

/// VMs you may see (all of them for admins).
#[utoipa::path(get, path = "/api/vms", tag = "vms", security(("bearer" = [])),
    responses((status = 200, body = Vec<VmView>), (status = 401, body = ErrorBody)))]
async fn list_vms(State(state): State<AppState>, AuthUser(user): AuthUser) -> ApiResult<Response> {
    // The key is read before the rows, so what is kept under it is never older than it says.
    let db = state.store.call(|c| Ok(listing::db_generation(c)?)).await?;
    let key = listing::Key { db, phases: state.vms.phase_generation(), guests: state.metrics.generation() };
    let entries = match state.vms.listing.get(key) {
        Some(entries) => entries,
        None => {
            let all = state.store.call(|c| Ok(store::list(c)?)).await?;
            let mut entries = Vec::with_capacity(all.len());
            for vm in &all {
                let json = serde_json::to_vec(&view(&state, vm)).map_err(anyhow::Error::from)?;
                entries.push(listing::Entry { owner: vm.owner.clone(), json });
            }
            state.vms.listing.put(key, entries)
        }
    };
    let body = Listing::join(&entries, |owner| user.may_see(owner));
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Create a VM (stopped). Its disk is created at first start.
#[utoipa::path(post, path = "/api/vms", tag = "vms", security(("bearer" = [])), request_body = VmSpec,
    responses(
        (status = 200, body = VmActionResponse),
        (status = 400, description = "A field is out of range or not allowed; the message names it", body = ErrorBody),
        (status = 403, description = "Bridge and macvtap NICs are for admins", body = ErrorBody),
        (status = 409, description = "A MAC or host port is used by another VM", body = ErrorBody),
        (status = 422, description = "Unknown field or wrong type", body = ErrorBody),
    ))]
async fn create_vm(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    ApiJson(spec): ApiJson<VmSpec>,
) -> ApiResult<Json<VmActionResponse>> {
    audit.action("vm.create").details(&spec.name);
    let vm = state.vms.create(spec, &user.username, user.is_admin).await?;
    audit.target(&vm.id);
    Ok(respond(&state, format!("VM {} created", vm.spec.name), &vm))
}

/// One VM.
#[utoipa::path(get, path = "/api/vms/{vm_id}", tag = "vms", security(("bearer" = [])),
    params(("vm_id" = String, Path)),
    responses((status = 200, body = VmView), (status = 404, body = ErrorBody)))]
async fn get_vm(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
) -> ApiResult<Json<VmView>> {
    Ok(Json(view(&state, &state.vms.owned(&user, &vm_id).await?)))
}

/// Change a stopped VM's configuration. Send only the fields to change; `owner` (admins only) hands
/// the VM to another user. The disk can grow, not shrink.
#[utoipa::path(put, path = "/api/vms/{vm_id}", tag = "vms", security(("bearer" = [])),
    params(("vm_id" = String, Path)), request_body = Object,
    responses(
        (status = 200, body = VmActionResponse),
        (status = 400, body = ErrorBody),
        (status = 403, description = "Only admins change owners", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The VM is running, or a MAC/port conflict", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ))]
async fn update_vm(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
    ApiJson(changes): ApiJson<Value>,
) -> ApiResult<Json<VmActionResponse>> {
    audit.action("vm.update").target(&vm_id);
    let current = state.vms.owned(&user, &vm_id).await?;
    let Value::Object(mut changes) = changes else {
        return Err(ApiError::Unprocessable("body: must be a JSON object".into()));
    };
    let owner = match changes.remove("owner") {
        None | Some(Value::Null) => None,
        Some(Value::String(o)) => {
            if !user.is_admin {
                return Err(ApiError::Forbidden("owner: only admins can give a VM to another user".into()));
            }
            let exists = {
                let o = o.clone();
                state.store.call(move |c| Ok(users::get(c, &o)?.is_some())).await?
            };
            if !exists {
                return Err(ApiError::BadRequest(format!("owner: no user called {o}")));
            }
            Some(o)
        }
        Some(_) => return Err(ApiError::Unprocessable("owner: must be a username".into())),
    };
    let vm = state.vms.update(&current.id, changes, owner, user.is_admin).await?;
    Ok(respond(&state, format!("VM {} updated", vm.spec.name), &vm))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Stop a running VM first (QMP quit) instead of refusing.
    pub force: Option<bool>,
}

/// Delete a VM with its disk, firmware variables, TPM state and logs. ISOs are never touched.
#[utoipa::path(delete, path = "/api/vms/{vm_id}", tag = "vms", security(("bearer" = [])),
    params(("vm_id" = String, Path), DeleteQuery),
    responses((status = 200, body = Message), (status = 404, body = ErrorBody), (status = 409, description = "Running", body = ErrorBody)))]
async fn delete_vm(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<Json<Message>> {
    audit.action("vm.delete").target(&vm_id);
    let vm = state.vms.owned(&user, &vm_id).await?;
    state.vms.delete(&vm_id, q.force.unwrap_or(false)).await?;
    Ok(Message::ok(format!("VM {} deleted", vm.spec.name)))
}

/// Start a stopped VM. Returns once QEMU runs the guest.
#[utoipa::path(post, path = "/api/vms/{vm_id}/start", tag = "vms", security(("bearer" = [])),
    params(("vm_id" = String, Path)),
    responses(
        (status = 200, body = VmActionResponse),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Already running", body = ErrorBody),
        (status = 500, description = "QEMU could not start; the message says why", body = ErrorBody),
    ))]
async fn start_vm(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
) -> ApiResult<Json<VmActionResponse>> {
    audit.action("vm.start").target(&vm_id);
    state.vms.owned(&user, &vm_id).await?;
    let vm = state.vms.start(&vm_id).await?;
    Ok(respond(&state, format!("VM {} started", vm.spec.name), &vm))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StopQuery {
    /// Seconds to wait for the guest to power off after the ACPI button (default 60).
    pub timeout: Option<u64>,
    /// Quit QEMU at once instead of asking the guest.
    pub force: Option<bool>,
}

/// Stop a VM: ACPI power button, then QMP quit after `timeout` seconds; `force=true` quits at once.
#[utoipa::path(post, path = "/api/vms/{vm_id}/stop", tag = "vms", security(("bearer" = [])),
    params(("vm_id" = String, Path), StopQuery),
    responses((status = 200, body = VmActionResponse), (status = 404, body = ErrorBody), (status = 409, description = "Not running", body = ErrorBody)))]
async fn stop_vm(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
    Query(q): Query<StopQuery>,
) -> ApiResult<Json<VmActionResponse>> {
    audit.action("vm.stop").target(&vm_id);
    state.vms.owned(&user, &vm_id).await?;
    let mode = if q.force.unwrap_or(false) {
        StopMode::Force
    } else {
        StopMode::Graceful { timeout: Duration::from_secs(q.timeout.unwrap_or(60).min(3600)) }
    };
    let vm = state.vms.stop(&vm_id, mode).await?;
    Ok(respond(&state, format!("VM {} stopped", vm.spec.name), &vm))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RestartQuery {
    /// Reset the VM at once (QMP system_reset) instead of a graceful stop and start.
    pub hard: Option<bool>,
    /// Seconds to wait for the guest to power off (default 60).
    pub timeout: Option<u64>,
}

/// Restart a VM: graceful stop and start (configuration changes apply), or `hard=true` for a reset.
#[utoipa::path(post, path = "/api/vms/{vm_id}/restart", tag = "vms", security(("bearer" = [])),
    params(("vm_id" = String, Path), RestartQuery),
    responses((status = 200, body = VmActionResponse), (status = 404, body = ErrorBody), (status = 409, description = "Not running", body = ErrorBody)))]
async fn restart_vm(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
    Query(q): Query<RestartQuery>,
) -> ApiResult<Json<VmActionResponse>> {
    audit.action("vm.restart").target(&vm_id);
    state.vms.owned(&user, &vm_id).await?;
    let timeout = Duration::from_secs(q.timeout.unwrap_or(60).min(3600));
    let vm = state.vms.restart(&vm_id, q.hard.unwrap_or(false), timeout).await?;
    Ok(respond(&state, format!("VM {} restarted", vm.spec.name), &vm))
}

/// Pause a running guest: its CPUs stop, QEMU keeps its RAM (`state`: `paused`; `status` stays
/// `running`).
#[utoipa::path(post, path = "/api/vms/{vm_id}/pause", tag = "vms", security(("bearer" = [])),
    params(("vm_id" = String, Path)),
    responses((status = 200, body = VmActionResponse), (status = 404, body = ErrorBody), (status = 409, description = "Not running, or paused already", body = ErrorBody)))]
async fn pause_vm(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
) -> ApiResult<Json<VmActionResponse>> {
    audit.action("vm.pause").target(&vm_id);
    state.vms.owned(&user, &vm_id).await?;
    let vm = state.vms.pause(&vm_id, true).await?;
    Ok(respond(&state, format!("VM {} paused", vm.spec.name), &vm))
}

/// Let a paused guest go on where it stopped.
#[utoipa::path(post, path = "/api/vms/{vm_id}/resume", tag = "vms", security(("bearer" = [])),
    params(("vm_id" = String, Path)),
    responses((status = 200, body = VmActionResponse), (status = 404, body = ErrorBody), (status = 409, description = "Not paused", body = ErrorBody)))]
async fn resume_vm(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
) -> ApiResult<Json<VmActionResponse>> {
    audit.action("vm.resume").target(&vm_id);
    state.vms.owned(&user, &vm_id).await?;
    let vm = state.vms.pause(&vm_id, false).await?;
    Ok(respond(&state, format!("VM {} resumed", vm.spec.name), &vm))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Lines from the end of each log (default 100, at most 10000).
    pub lines: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VmLogs {
    pub qemu_log: String,
    pub serial_log: String,
}

/// The end of QEMU's log and of the serial console's output.
#[utoipa::path(get, path = "/api/vms/{vm_id}/logs", tag = "vms", security(("bearer" = [])),
    params(("vm_id" = String, Path), LogsQuery),
    responses((status = 200, body = VmLogs), (status = 404, body = ErrorBody)))]
async fn vm_logs(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Json<VmLogs>> {
    state.vms.owned(&user, &vm_id).await?;
    let (qemu_log, serial_log) = state.vms.logs(&vm_id, q.lines.unwrap_or(100).clamp(1, 10_000));
    Ok(Json(VmLogs { qemu_log, serial_log }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneRequest {
    pub name: String,
    pub memory: Option<u64>,
    pub cpus: Option<u32>,
}

/// Clone a stopped VM: copy-on-write (instant whatever the disk size), or, when the source has
/// snapshots, a full copy of its current state (a job with progress); the message says which. The
/// clone gets new MACs, a copy of the UEFI variables, a fresh TPM, and no port forwards.
#[utoipa::path(post, path = "/api/vms/{vm_id}/clone", tag = "vms", security(("bearer" = [])),
    params(("vm_id" = String, Path)), request_body = CloneRequest,
    responses(
        (status = 200, body = VmActionResponse),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Running", body = ErrorBody),
    ))]
async fn clone_vm(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
    ApiJson(req): ApiJson<CloneRequest>,
) -> ApiResult<Json<VmActionResponse>> {
    audit.action("vm.clone").target(&vm_id).details(&req.name);
    state.vms.owned(&user, &vm_id).await?;
    let (vms, source, owner, is_admin) =
        (state.vms.clone(), vm_id.clone(), user.username.clone(), user.is_admin);
    let (vm, kind) = state
        .jobs
        .run("clone", Some(&vm_id), &user.username, move |progress| async move {
            let (vm, kind) =
                vms.clone_vm(&source, req.name, req.memory, req.cpus, &owner, is_admin, &progress).await?;
            let id = vm.id.clone();
            Ok(((vm, kind), Some(id)))
        })
        .await?;
    audit.details(&vm.id);
    let how = match kind {
        CloneKind::CopyOnWrite => "copy-on-write",
        CloneKind::Flattened => "a full copy of its current state: the source has snapshots",
    };
    Ok(respond(&state, format!("VM cloned as {} ({how})", vm.spec.name), &vm))
}
