//! `/api/vms/{vm_id}/backup-schedule`: nightly (or any cron) backups of a VM.

use axum::Json;
use axum::extract::{Path, State};
use rusqlite::params;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::audit::Audit;
use crate::api::session::AuthUser;
use crate::backups::schedule::{
    MAX_KEEP, Schedule, ScheduleRequest, ScheduleResponse, check_spacing, load, next_run,
};
use crate::error::{ApiError, ApiJson, ApiResult, ErrorBody};
use crate::http::Message;
use crate::quotas::store as quotas;
use crate::state::AppState;
use crate::store::now_unix;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_schedule, set_schedule, delete_schedule))
}

/// The VM's backup schedule.
#[utoipa::path(get, path = "/api/vms/{vm_id}/backup-schedule", tag = "backups", security(("bearer" = [])),
    params(("vm_id" = String, Path)), responses((status = 200, body = Schedule), (status = 404, body = ErrorBody)))]
async fn get_schedule(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
) -> ApiResult<Json<Schedule>> {
    state.vms.owned(&user, &vm_id).await?;
    load(&state.backups(), &vm_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("No backup schedule".into()))
}

/// Set (or replace) the VM's backup schedule.
#[utoipa::path(post, path = "/api/vms/{vm_id}/backup-schedule", tag = "backups", security(("bearer" = [])),
    params(("vm_id" = String, Path)), request_body = ScheduleRequest,
    responses((status = 200, body = ScheduleResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_schedule(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
    ApiJson(req): ApiJson<ScheduleRequest>,
) -> ApiResult<Json<ScheduleResponse>> {
    audit.action("backup.schedule").target(&vm_id);
    state.vms.owned(&user, &vm_id).await?;
    if !(1..=MAX_KEEP).contains(&req.keep) {
        return Err(ApiError::BadRequest(format!("keep: must be 1 to {MAX_KEEP}")));
    }
    let next = next_run(req.cron.as_deref(), req.interval, now_unix()).map_err(ApiError::BadRequest)?;
    check_spacing(req.cron.as_deref(), req.interval, state.settings.backup_min_interval, now_unix())
        .map_err(ApiError::BadRequest)?;
    let u = user.username.clone();
    let limit = state.store.call(move |c| Ok(quotas::limits(c, &u)?.max_backups)).await?;
    if let Some(max) = limit.filter(|max| !user.is_admin && i64::from(req.keep) > *max) {
        return Err(ApiError::Forbidden(format!("keep: more than the {max} backups your quota allows")));
    }
    let (v, o) = (vm_id.clone(), user.username.clone());
    state
        .store
        .call(move |c| {
            c.execute(
                "INSERT INTO backup_schedules (vm_id, owner, cron, interval_secs, keep, next_run) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(vm_id) DO UPDATE SET owner = ?2, cron = ?3, interval_secs = ?4, keep = ?5, next_run = ?6, last_error = NULL",
                params![v, o, req.cron, req.interval.map(|i| i as i64), req.keep, next],
            )?;
            Ok(())
        })
        .await?;
    let schedule =
        load(&state.backups(), &vm_id).await?.ok_or_else(|| ApiError::NotFound("VM not found".into()))?;
    Ok(Json(ScheduleResponse { success: true, message: "Backup schedule set".into(), schedule }))
}

/// Remove the VM's backup schedule (its backups stay).
#[utoipa::path(delete, path = "/api/vms/{vm_id}/backup-schedule", tag = "backups", security(("bearer" = [])),
    params(("vm_id" = String, Path)), responses((status = 200, body = Message), (status = 404, body = ErrorBody)))]
async fn delete_schedule(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    Path(vm_id): Path<String>,
) -> ApiResult<Json<Message>> {
    audit.action("backup.unschedule").target(&vm_id);
    state.vms.owned(&user, &vm_id).await?;
    let v = vm_id.clone();
    let n = state
        .store
        .call(move |c| Ok(c.execute("DELETE FROM backup_schedules WHERE vm_id = ?1", [v])?))
        .await?;
    if n == 0 {
        return Err(ApiError::NotFound("No backup schedule".into()));
    }
    Ok(Message::ok("Backup schedule removed"))
}
