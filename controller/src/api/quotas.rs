//! `/api/auth/users/{username}/quota` and `/api/auth/me/quota`.

use axum::Json;
use axum::extract::{Path, State};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::audit::Audit;
use crate::api::session::{AdminUser, AuthUser};
use crate::error::{ApiJson, ApiResult, ErrorBody};
use crate::quotas::store::Limits;
use crate::quotas::{Quota, load, set};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_quota, set_quota)).routes(routes!(my_quota))
}

/// A user's limits and what they use (admin only).
#[utoipa::path(get, path = "/api/auth/users/{username}/quota", tag = "users", security(("bearer" = [])),
    params(("username" = String, Path)), responses((status = 200, body = Quota), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_quota(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(username): Path<String>,
) -> ApiResult<Json<Quota>> {
    Ok(Json(load(&state.store, &username).await?))
}

/// Set a user's limits (admin only); a field left out or `null` is no limit. What the user already
/// has above a new limit stays; only growth is refused.
#[utoipa::path(put, path = "/api/auth/users/{username}/quota", tag = "users", security(("bearer" = [])),
    params(("username" = String, Path)), request_body = Limits,
    responses((status = 200, body = Quota), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_quota(
    State(state): State<AppState>,
    audit: Audit,
    _admin: AdminUser,
    Path(username): Path<String>,
    ApiJson(limits): ApiJson<Limits>,
) -> ApiResult<Json<Quota>> {
    audit.action("user.quota").target(&username);
    Ok(Json(set(&state.store, &username, limits).await?))
}

/// Your own limits and what you use.
#[utoipa::path(get, path = "/api/auth/me/quota", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = Quota), (status = 401, body = ErrorBody)))]
async fn my_quota(State(state): State<AppState>, AuthUser(user): AuthUser) -> ApiResult<Json<Quota>> {
    Ok(Json(load(&state.store, &user.username).await?))
}
