//! `/api/system/metrics`, `/api/vms/{vm_id}/metrics` and their history.

use axum::Json;
use axum::extract::{Path, Query, State};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::session::AuthUser;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::metrics::host::HostMetrics;
use crate::metrics::vm::VmMetrics;
use crate::metrics::{History, HistoryQuery, series, window};
use crate::state::AppState;
use crate::store::now_unix;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(system_metrics))
        .routes(routes!(vm_metrics))
        .routes(routes!(metrics_history))
        .routes(routes!(vm_metrics_history))
        .routes(routes!(super::metrics_push::metrics_ws))
        .routes(routes!(super::metrics_push::metrics_ticket))
}

/// The host right now (the last collection).
#[utoipa::path(get, path = "/api/system/metrics", tag = "metrics", security(("bearer" = [])),
    responses((status = 200, body = HostMetrics), (status = 503, description = "No collection yet", body = ErrorBody)))]
async fn system_metrics(State(state): State<AppState>, _user: AuthUser) -> ApiResult<Json<HostMetrics>> {
    let snapshot = state
        .metrics
        .snapshot()
        .ok_or_else(|| ApiError::Unavailable("Metrics are not collected yet; try again shortly".into()))?;
    Ok(Json(snapshot.host.clone()))
}

/// A VM right now (the last collection); a stopped VM has all-zero readings.
#[utoipa::path(get, path = "/api/vms/{vm_id}/metrics", tag = "metrics", security(("bearer" = [])),
    params(("vm_id" = String, Path)), responses((status = 200, body = VmMetrics), (status = 404, body = ErrorBody)))]
async fn vm_metrics(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
) -> ApiResult<Json<VmMetrics>> {
    let vm = state.vms.owned(&user, &vm_id).await?;
    let current = state.metrics.snapshot().and_then(|s| s.vms.iter().find(|m| m.vm_id == vm.id).cloned());
    Ok(Json(current.unwrap_or_else(|| VmMetrics {
        ts: now_unix(),
        vm_id: vm.id.clone(),
        name: vm.spec.name.clone(),
        ..VmMetrics::default()
    })))
}

/// Metric history of the host and of the VMs you may see.
#[utoipa::path(get, path = "/api/metrics/history", tag = "metrics", security(("bearer" = [])),
    params(HistoryQuery), responses((status = 200, body = History), (status = 400, body = ErrorBody)))]
async fn metrics_history(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Json<History>> {
    let minutes = window(&q)?;
    let visible: Option<Vec<String>> = if user.is_admin {
        None
    } else {
        let all = state.store.call(|c| Ok(crate::vms::store::list(c)?)).await?;
        Some(all.into_iter().filter(|vm| vm.owner == user.username).map(|vm| vm.id).collect())
    };
    let filter = |id: &str| visible.as_ref().is_none_or(|v| v.iter().any(|x| x == id));
    Ok(Json(series(&state.metrics, &state.store, minutes, filter).await?))
}

/// Metric history of one VM.
#[utoipa::path(get, path = "/api/vms/{vm_id}/metrics/history", tag = "metrics", security(("bearer" = [])),
    params(("vm_id" = String, Path), HistoryQuery),
    responses((status = 200, body = Vec<VmMetrics>), (status = 404, body = ErrorBody)))]
async fn vm_metrics_history(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Json<Vec<VmMetrics>>> {
    let minutes = window(&q)?;
    let vm = state.vms.owned(&user, &vm_id).await?;
    let mut h = series(&state.metrics, &state.store, minutes, |id| id == vm.id).await?;
    Ok(Json(h.vms.remove(&vm.id).unwrap_or_default()))
}
