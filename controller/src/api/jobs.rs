//! `/api/jobs`: long operations and their progress.

use axum::Json;
use axum::extract::{Path, State};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::session::AuthUser;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::jobs::Job;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_jobs)).routes(routes!(get_job))
}

/// Jobs you may see: running ones first, then recently finished ones, newest first.
#[utoipa::path(get, path = "/api/jobs", tag = "jobs", security(("bearer" = [])),
    responses((status = 200, body = Vec<Job>), (status = 401, body = ErrorBody)))]
async fn list_jobs(State(state): State<AppState>, AuthUser(user): AuthUser) -> Json<Vec<Job>> {
    Json(state.jobs.visible(&user))
}

/// One job, with its progress.
#[utoipa::path(get, path = "/api/jobs/{job_id}", tag = "jobs", security(("bearer" = [])),
    params(("job_id" = String, Path)),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody)))]
async fn get_job(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(job_id): Path<String>,
) -> ApiResult<Json<Job>> {
    state
        .jobs
        .visible(&user)
        .into_iter()
        .find(|j| j.id == job_id)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("Job not found".into()))
}
