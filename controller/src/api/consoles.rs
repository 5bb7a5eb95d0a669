//! `/api/vms/{vm_id}/spice|vnc|serial|screenshot`, `/api/spice-tools` and the console WebSockets `/ws/spice|vnc|serial/{vm_id}`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::audit::Audit;
use crate::api::session::AuthUser;
use crate::api::session::{current_user, session_from_token};
use crate::api::upgrade::Upgrade;
use crate::auth::users::SessionUser;
use crate::consoles::{
    Kind, ScreenshotQuery, SerialAccess, SpiceAccess, SpiceTools, VncAccess, relay, screenshot, serial,
};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::Message;
use crate::state::AppState;
use crate::vms::lifecycle::Op;
use crate::vms::model::{VmRecord, VmStatus};

#[derive(Debug, Deserialize)]
pub struct WsAuth {
    ticket: Option<String>,
    token: Option<String>,
}

/// Why a console WebSocket is refused, as a close code.
enum Refusal {
    Unauthenticated,
    Forbidden,
    NoSuchVm,
    NotRunning,
}

impl Refusal {
    fn close(&self) -> (u16, &'static str) {
        match self {
            Refusal::Unauthenticated => (4401, "a valid console ticket or token is required"),
            Refusal::Forbidden => (4403, "no access to this VM's console"),
            Refusal::NoSuchVm => (4404, "VM not found"),
            Refusal::NotRunning => (4409, "the VM is not running"),
        }
    }
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(spice))
        .routes(routes!(spice_disconnect))
        .routes(routes!(spice_vv))
        .routes(routes!(vnc))
        .routes(routes!(vnc_disconnect))
        .routes(routes!(spice_tools))
        .routes(routes!(spice_ws))
        .routes(routes!(vnc_ws))
        .routes(routes!(serial))
        .routes(routes!(serial_ws))
        .routes(routes!(screenshot))
}

/// The VM, when `user` may see it and it runs.
async fn running_vm(state: &AppState, user: &SessionUser, vm_id: &str) -> ApiResult<VmRecord> {
    state.vms.owned(user, vm_id).await?;
    Ok(state.vms.enter(vm_id, Op::Console).await?.vm)
}

/// Open the VM's SPICE console: a WebSocket path for the browser, and a port and password for
/// remote-viewer.
#[utoipa::path(get, path = "/api/vms/{vm_id}/spice", tag = "consoles", security(("bearer" = [])),
    params(("vm_id" = String, Path)),
    responses((status = 200, body = SpiceAccess), (status = 404, body = ErrorBody),
        (status = 409, description = "The VM is not running", body = ErrorBody)))]
async fn spice(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
) -> ApiResult<Json<SpiceAccess>> {
    state.vms.owned(&user, &vm_id).await?;
    let held = state.vms.enter(&vm_id, Op::Console).await?;
    let vm = &held.vm;
    let spice_port = state.consoles.remote_port(&state.vms, &vm.id).await?;
    let password = state.consoles.spice_password(&held).await?;
    let ticket = state.consoles.tickets.issue(&user.username, &vm.id, Kind::Spice);
    Ok(Json(SpiceAccess {
        status: "ready".into(),
        ws_url: format!("/ws/spice/{}?ticket={ticket}", vm.id),
        spice_port,
        password,
        vv_url: format!("/api/vms/{}/spice.vv", vm.id),
    }))
}

/// Open the VM's VNC console (for noVNC).
#[utoipa::path(get, path = "/api/vms/{vm_id}/vnc", tag = "consoles", security(("bearer" = [])),
    params(("vm_id" = String, Path)),
    responses((status = 200, body = VncAccess), (status = 404, body = ErrorBody),
        (status = 409, description = "The VM is not running", body = ErrorBody)))]
async fn vnc(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
) -> ApiResult<Json<VncAccess>> {
    let vm = running_vm(&state, &user, &vm_id).await?;
    let ticket = state.consoles.tickets.issue(&user.username, &vm.id, Kind::Vnc);
    Ok(Json(VncAccess { status: "ready".into(), ws_url: format!("/ws/vnc/{}?ticket={ticket}", vm.id) }))
}

async fn disconnect(
    state: &AppState,
    user: &SessionUser,
    vm_id: &str,
    kind: Kind,
) -> ApiResult<Json<Message>> {
    let vm = state.vms.owned(user, vm_id).await?;
    let closed = state.consoles.disconnect(&state.vms, &vm, kind).await;
    Ok(Message::ok(format!("Closed {closed} {} connection(s) of {}", kind.name(), vm.spec.name)))
}

/// Close every proxied SPICE connection of the VM (browser and remote-viewer).
#[utoipa::path(post, path = "/api/vms/{vm_id}/spice/disconnect", tag = "consoles", security(("bearer" = [])),
    params(("vm_id" = String, Path)), responses((status = 200, body = Message), (status = 404, body = ErrorBody)))]
async fn spice_disconnect(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
) -> ApiResult<Json<Message>> {
    audit.action("console.spice.disconnect").target(&vm_id);
    disconnect(&state, &user, &vm_id, Kind::Spice).await
}

/// Close every proxied VNC connection of the VM.
#[utoipa::path(post, path = "/api/vms/{vm_id}/vnc/disconnect", tag = "consoles", security(("bearer" = [])),
    params(("vm_id" = String, Path)), responses((status = 200, body = Message), (status = 404, body = ErrorBody)))]
async fn vnc_disconnect(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
) -> ApiResult<Json<Message>> {
    audit.action("console.vnc.disconnect").target(&vm_id);
    disconnect(&state, &user, &vm_id, Kind::Vnc).await
}

/// The host remote-viewer should connect to: the bind address when it is a specific one, else the
/// host name the client reached the controller by.
fn viewer_host(state: &AppState, headers: &HeaderMap) -> String {
    let bind = state.settings.spice_bind.trim();
    if bind != "0.0.0.0" && bind != "::" {
        return bind.to_string();
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name.to_string(),
        _ => host.to_string(),
    }
}

/// A virt-viewer connection file: opening it starts remote-viewer on this VM's console. It holds a
/// fresh SPICE password that expires shortly.
#[utoipa::path(get, path = "/api/vms/{vm_id}/spice.vv", tag = "consoles", security(("bearer" = [])),
    params(("vm_id" = String, Path)),
    responses((status = 200, description = "application/x-virt-viewer", content_type = "application/x-virt-viewer", body = String),
        (status = 404, body = ErrorBody), (status = 409, description = "The VM is not running", body = ErrorBody)))]
async fn spice_vv(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    state.vms.owned(&user, &vm_id).await?;
    let held = state.vms.enter(&vm_id, Op::Console).await?;
    let vm = &held.vm;
    let port = state.consoles.remote_port(&state.vms, &vm.id).await?;
    let password = state.consoles.spice_password(&held).await?;
    // The title is the VM's name, which validation keeps to letters, digits and ` _ . -`.
    let body = format!(
        "[virt-viewer]\ntype=spice\nhost={}\nport={port}\npassword={password}\ntitle={} - Fast VM\n\
         delete-this-file=1\ntoggle-fullscreen=shift+f11\nrelease-cursor=shift+f12\n\
         secure-attention=ctrl+alt+end\n",
        viewer_host(&state, &headers),
        vm.spec.name,
    );
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-virt-viewer"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}.vv\"", vm.id)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Whether SPICE guest tools (spice-guest-tools or virtio-win) are in the ISO library, to attach to a
/// Windows guest.
#[utoipa::path(get, path = "/api/spice-tools", tag = "consoles", security(("bearer" = [])),
    responses((status = 200, body = SpiceTools)))]
async fn spice_tools(State(state): State<AppState>, _user: AuthUser) -> Json<SpiceTools> {
    let seeds = crate::isos::seeds_dir(&state.settings);
    let found = crate::isos::library(&state.settings).into_iter().find(|iso| {
        let name = iso.name.to_ascii_lowercase();
        // A user's cloud-init seed is never offered to everyone, whatever its name.
        !crate::isos::in_dir(&iso.path, &seeds)
            && (name.starts_with("spice-guest-tools") || name.starts_with("virtio-win"))
    });
    Json(SpiceTools { available: found.is_some(), path: found.map(|iso| iso.path) })
}

/// Who may open this console: a ticket for this VM and kind, or a bearer token of a user who may
/// see the VM.
async fn authorize(state: &AppState, vm_id: &str, kind: Kind, auth: &WsAuth) -> Result<(), Refusal> {
    let user = if let Some(ticket) = auth.ticket.as_deref() {
        let t = state.consoles.tickets.check(ticket).ok_or(Refusal::Unauthenticated)?;
        if t.vm_id != vm_id || t.kind != kind {
            return Err(Refusal::Forbidden);
        }
        current_user(state, &t.username).await.ok_or(Refusal::Unauthenticated)?
    } else if let Some(token) = auth.token.as_deref() {
        session_from_token(state, token).await.map_err(|_| Refusal::Unauthenticated)?
    } else {
        return Err(Refusal::Unauthenticated);
    };
    let vm = match state.vms.get(vm_id).await {
        Ok(vm) => vm,
        Err(ApiError::NotFound(_)) => return Err(Refusal::NoSuchVm),
        Err(_) => return Err(Refusal::NotRunning),
    };
    if !user.is_admin && vm.owner != user.username {
        return Err(Refusal::Forbidden);
    }
    if vm.status != VmStatus::Running {
        return Err(Refusal::NotRunning);
    }
    Ok(())
}

async fn console_ws(state: AppState, vm_id: String, kind: Kind, auth: WsAuth, ws: Upgrade) -> Response {
    let verdict = authorize(&state, &vm_id, kind, &auth).await;
    ws.on_upgrade(move |socket| async move {
        match verdict {
            Err(refusal) => {
                let (code, reason) = refusal.close();
                relay::close(socket, code, reason).await;
            }
            Ok(()) => {
                let run = state.vms.run_dirs.run(&vm_id);
                let Some(target) = kind.socket(&run) else {
                    return relay::close(socket, 4403, "not a console").await;
                };
                let cut = state.consoles.connections.join(&vm_id, kind);
                if kind == Kind::Serial {
                    let paths = (target, run.serial_log());
                    serial::viewer(socket, &state.consoles.serial, &vm_id, paths, cut).await;
                } else {
                    relay::websocket(socket, &target, cut).await;
                }
            }
        }
    })
}

/// WebSocket relay to the VM's SPICE socket (one per SPICE channel), for spice-html5. Authenticate
/// with `?ticket=` (from `GET /api/vms/{vm_id}/spice`) or `?token=`. Refusals close the socket with
/// 4401 (no valid ticket or token), 4403 (no access), 4404 (no such VM) or 4409 (not running).
#[utoipa::path(get, path = "/ws/spice/{vm_id}", tag = "consoles",
    params(("vm_id" = String, Path), ("ticket" = Option<String>, Query), ("token" = Option<String>, Query)),
    responses((status = 101, description = "Switching to the WebSocket protocol")))]
async fn spice_ws(
    State(state): State<AppState>,
    Path(vm_id): Path<String>,
    Query(auth): Query<WsAuth>,
    ws: Upgrade,
) -> Response {
    console_ws(state, vm_id, Kind::Spice, auth, ws).await
}

/// The VM's serial console, shared by any number of viewers: the last 64 KiB of its output first,
/// then what the guest writes; binary frames from the browser are typed into it. Authentication and
/// refusals as for SPICE (`?ticket=` from `GET /api/vms/{vm_id}/serial`).
#[utoipa::path(get, path = "/ws/serial/{vm_id}", tag = "consoles",
    params(("vm_id" = String, Path), ("ticket" = Option<String>, Query), ("token" = Option<String>, Query)),
    responses((status = 101, description = "Switching to the WebSocket protocol")))]
async fn serial_ws(
    State(state): State<AppState>,
    Path(vm_id): Path<String>,
    Query(auth): Query<WsAuth>,
    ws: Upgrade,
) -> Response {
    console_ws(state, vm_id, Kind::Serial, auth, ws).await
}

/// Open the VM's serial console (for a terminal in the browser).
#[utoipa::path(get, path = "/api/vms/{vm_id}/serial", tag = "consoles", security(("bearer" = [])),
    params(("vm_id" = String, Path)),
    responses((status = 200, body = SerialAccess), (status = 404, body = ErrorBody),
        (status = 409, description = "The VM is not running", body = ErrorBody)))]
async fn serial(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
) -> ApiResult<Json<SerialAccess>> {
    let vm = running_vm(&state, &user, &vm_id).await?;
    let ticket = state.consoles.tickets.issue(&user.username, &vm.id, Kind::Serial);
    Ok(Json(SerialAccess { status: "ready".into(), ws_url: format!("/ws/serial/{}?ticket={ticket}", vm.id) }))
}

/// The guest's display as a PNG (QMP `screendump`), the same one for every request of a few
/// seconds.
#[utoipa::path(get, path = "/api/vms/{vm_id}/screenshot", tag = "consoles", security(("bearer" = [])),
    params(("vm_id" = String, Path), ScreenshotQuery),
    responses((status = 200, description = "image/png"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The VM is not running", body = ErrorBody)))]
async fn screenshot(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
    Query(q): Query<ScreenshotQuery>,
) -> ApiResult<Response> {
    if q.width.is_some_and(|w| w < screenshot::MIN_WIDTH) {
        return Err(ApiError::BadRequest(format!("width: must be at least {}", screenshot::MIN_WIDTH)));
    }
    let vm = running_vm(&state, &user, &vm_id).await?;
    let (qmp, dir) = (state.vms.run_dirs.qmp(&vm.id), state.vms.run_dirs.of(&vm.id));
    let png = state.consoles.screenshots.take(&qmp, &dir, &vm.id, q.width).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "image/png"), (axum::http::header::CACHE_CONTROL, "no-store")],
        png,
    )
        .into_response())
}

/// WebSocket relay to the VM's VNC socket, for noVNC. Authentication and refusals as for SPICE.
#[utoipa::path(get, path = "/ws/vnc/{vm_id}", tag = "consoles",
    params(("vm_id" = String, Path), ("ticket" = Option<String>, Query), ("token" = Option<String>, Query)),
    responses((status = 101, description = "Switching to the WebSocket protocol")))]
async fn vnc_ws(
    State(state): State<AppState>,
    Path(vm_id): Path<String>,
    Query(auth): Query<WsAuth>,
    ws: Upgrade,
) -> Response {
    console_ws(state, vm_id, Kind::Vnc, auth, ws).await
}
