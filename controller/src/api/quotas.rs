//! `/api/auth/users/{username}/quota` and `/api/auth/me/quota`.

use axum::Json;
use axum::extract::{Path, State};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::audit::Audit;
use crate::api::session::{AdminUser, AuthUser};
use crate::error::{ApiError, ApiJson, ApiResult, ErrorBody};
use crate::quotas::store::Limits;
use crate::quotas::*;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_quota, set_quota)).routes(routes!(my_quota))
}

async fn load(state: &AppState, username: &str) -> ApiResult<Quota> {
    let u = username.to_string();
    state
        .store
        .call(move |c| {
            if crate::auth::users::get(c, &u)?.is_none() {
                return Ok(None);
            }
            Ok(Some(Quota { limits: store::limits(c, &u)?, usage: store::usage(c, &u, None)?, username: u }))
        })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("User {username} not found")))
}

/// A user's limits and what they use (admin only).
#[utoipa::path(get, path = "/api/auth/users/{username}/quota", tag = "users", security(("bearer" = [])),
    params(("username" = String, Path)), responses((status = 200, body = Quota), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_quota(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(username): Path<String>,
) -> ApiResult<Json<Quota>> {
    Ok(Json(load(&state, &username).await?))
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
    let values = [
        ("max_vms", limits.max_vms),
        ("max_vcpus", limits.max_vcpus),
        ("max_memory_mib", limits.max_memory_mib),
        ("max_disk_gb", limits.max_disk_gb),
        ("max_backups", limits.max_backups),
    ];
    if let Some((field, _)) = values.iter().find(|(_, v)| v.is_some_and(|v| v < 0)) {
        return Err(ApiError::BadRequest(format!("{field}: must be 0 or more (or null for no limit)")));
    }
    load(&state, &username).await?;
    let u = username.clone();
    state.store.call(move |c| Ok(store::set_limits(c, &u, &limits)?)).await?;
    Ok(Json(load(&state, &username).await?))
}

/// Your own limits and what you use.
#[utoipa::path(get, path = "/api/auth/me/quota", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = Quota), (status = 401, body = ErrorBody)))]
async fn my_quota(State(state): State<AppState>, AuthUser(user): AuthUser) -> ApiResult<Json<Quota>> {
    Ok(Json(load(&state, &user.username).await?))
}
