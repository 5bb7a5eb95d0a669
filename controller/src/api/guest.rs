//! `GET /api/vms/{vm_id}/guest-info` and `POST /api/vms/{vm_id}/display/resize`.

use axum::Json;
use axum::extract::{Path, State};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::audit::Audit;
use crate::api::session::AuthUser;
use crate::error::{ApiJson, ApiResult, ErrorBody};
use crate::http::Message;
use crate::state::AppState;
use crate::vms::guest::{self, GuestInfo, Resize};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(guest_info)).routes(routes!(resize_display))
}

/// The guest's hostname, OS, addresses and filesystems, from its agent; `available: false` with the
/// reason when no agent answers within 2 s.
#[utoipa::path(get, path = "/api/vms/{vm_id}/guest-info", tag = "vms", security(("bearer" = [])),
    params(("vm_id" = String, Path)), responses((status = 200, body = GuestInfo), (status = 404, body = ErrorBody)))]
async fn guest_info(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
) -> ApiResult<Json<GuestInfo>> {
    let vm = state.vms.owned(&user, &vm_id).await?;
    let info = guest::info(&state.vms, &state.metrics.agents, &vm).await;
    if info.available {
        state.metrics.agent_answered(&vm.id, &info.interfaces);
    }
    Ok(Json(info))
}

/// Ask the guest to change its display resolution (through the guest agent running `xrandr` in the
/// guest's X session). 409 with the reason when the VM does not run or no agent answers.
#[utoipa::path(post, path = "/api/vms/{vm_id}/display/resize", tag = "vms", security(("bearer" = [])),
    params(("vm_id" = String, Path)), request_body = Resize,
    responses((status = 200, body = Message), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Not running, or no guest agent answered", body = ErrorBody)))]
async fn resize_display(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
    ApiJson(req): ApiJson<Resize>,
) -> ApiResult<Json<Message>> {
    audit.action("vm.display.resize").target(&vm_id);
    let vm = state.vms.owned(&user, &vm_id).await?;
    let mode = guest::resize(&state.vms, &state.metrics.agents, &vm_id, &req).await?;
    Ok(Message::ok(format!("Asked {} to switch to {mode}", vm.spec.name)))
}
