//! What the guest says about itself, through the QEMU guest agent: `GET /api/vms/{vm_id}/guest-info`,
//! and `POST /api/vms/{vm_id}/display/resize`.

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::Audit;
use crate::auth::AuthUser;
use crate::error::{ApiError, ApiJson, ApiResult, ErrorBody};
use crate::guest_agent::{self, GuestCommand, GuestInterface};
use crate::http::Message;
use crate::state::AppState;
use crate::store::now_unix;
use crate::vms::lifecycle::{self, Op, VmState};
use crate::vms::model::VmStatus;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(guest_info)).routes(routes!(resize_display))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GuestFilesystem {
    pub mountpoint: String,
    #[serde(rename = "type")]
    pub fs_type: String,
    pub used_bytes: Option<u64>,
    pub total_bytes: Option<u64>,
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct GuestInfo {
    /// Whether the guest agent answered.
    pub available: bool,
    /// Why not, when it did not.
    pub reason: Option<String>,
    pub hostname: Option<String>,
    /// `pretty-name` of `guest-get-osinfo`, e.g. "Debian GNU/Linux 12 (bookworm)".
    pub os: Option<String>,
    pub kernel: Option<String>,
    pub interfaces: Vec<GuestInterface>,
    /// IPv4 first, link-local addresses left out.
    pub ip_addresses: Vec<String>,
    pub filesystems: Vec<GuestFilesystem>,
    /// Seconds since the VM started.
    pub uptime_seconds: Option<i64>,
}

fn filesystems(reply: &Value) -> Vec<GuestFilesystem> {
    reply
        .as_array()
        .map(|list| {
            list.iter()
                .map(|f| GuestFilesystem {
                    mountpoint: f["mountpoint"].as_str().unwrap_or_default().to_string(),
                    fs_type: f["type"].as_str().unwrap_or_default().to_string(),
                    used_bytes: f["used-bytes"].as_u64(),
                    total_bytes: f["total-bytes"].as_u64(),
                })
                .collect()
        })
        .unwrap_or_default()
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
    let vm = super::owned(&state, &user, &vm_id).await?;
    if vm.status != VmStatus::Running {
        return Ok(Json(GuestInfo { reason: Some("The VM is not running".into()), ..GuestInfo::default() }));
    }
    let socket = state.vms.run_dirs.run(&vm.id).qga();
    let answer = guest_agent::with_agent(&state.metrics.agents, &vm.id, &socket, async |agent| {
        let hostname = agent.execute(&GuestCommand::host_name()).await?;
        // The rest is optional: older or restricted agents lack some commands.
        let os = agent.execute(&GuestCommand::os_info()).await.unwrap_or(Value::Null);
        let interfaces = agent.execute(&GuestCommand::network_interfaces()).await.unwrap_or(Value::Null);
        let fs = agent.execute(&GuestCommand::fs_info()).await.unwrap_or(Value::Null);
        Ok((hostname, os, interfaces, fs))
    })
    .await;
    let info = match answer {
        Ok((hostname, os, interfaces, fs)) => {
            let interfaces = guest_agent::interfaces(&interfaces);
            state.metrics.agent_answered(&vm.id, &interfaces);
            GuestInfo {
                available: true,
                reason: None,
                hostname: hostname["host-name"].as_str().map(String::from),
                os: os["pretty-name"].as_str().or(os["name"].as_str()).map(String::from),
                kernel: os["kernel-release"].as_str().map(String::from),
                ip_addresses: guest_agent::display_addresses(&interfaces),
                interfaces,
                filesystems: filesystems(&fs),
                uptime_seconds: vm.started_at.map(|t| now_unix() - t),
            }
        }
        Err(e) => GuestInfo { reason: Some(format!("{e:#}")), ..GuestInfo::default() },
    };
    Ok(Json(info))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resize {
    /// 640-7680.
    pub width: u32,
    /// 480-4320.
    pub height: u32,
}

/// Ask the guest to change its display resolution (through the guest agent running `xrandr` in the
/// guest's X session). 503 with the reason when no agent answers.
#[utoipa::path(post, path = "/api/vms/{vm_id}/display/resize", tag = "vms", security(("bearer" = [])),
    params(("vm_id" = String, Path)), request_body = Resize,
    responses((status = 200, body = Message), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Not running", body = ErrorBody),
        (status = 503, description = "No guest agent answered", body = ErrorBody)))]
async fn resize_display(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
    ApiJson(req): ApiJson<Resize>,
) -> ApiResult<Json<Message>> {
    audit.action("vm.display.resize").target(&vm_id);
    if !(640..=7680).contains(&req.width) {
        return Err(ApiError::BadRequest("width: must be 640 to 7680".into()));
    }
    if !(480..=4320).contains(&req.height) {
        return Err(ApiError::BadRequest("height: must be 480 to 4320".into()));
    }
    let vm = super::owned(&state, &user, &vm_id).await?;
    let now = if vm.status == VmStatus::Running { VmState::Running } else { VmState::Stopped };
    lifecycle::check(now, Op::Console)?;
    let socket = state.vms.run_dirs.run(&vm.id).qga();
    let mode = format!("{}x{}", req.width, req.height);
    let xrandr = GuestCommand::exec("/bin/sh", &["-c", "DISPLAY=:0 xrandr --size \"$1\"", "resize", &mode]);
    guest_agent::with_agent(&state.metrics.agents, &vm.id, &socket, async |agent| {
        agent.execute(&xrandr).await
    })
    .await
    .map_err(|e| ApiError::Unavailable(format!("{e:#}")))?;
    Ok(Message::ok(format!("Asked {} to switch to {mode}", vm.spec.name)))
}
