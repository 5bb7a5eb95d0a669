//! `POST /api/cloudinit`: a cloud-init seed ISO.

use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::audit::Audit;
use crate::api::session::AuthUser;
use crate::cloudinit::{CloudInitRequest, CloudInitResponse, create_seed_iso};
use crate::error::{ApiJson, ApiResult, ErrorBody};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_seed))
}

/// Create a cloud-init (NoCloud) seed ISO in the data dir's `cloudinit/`; use it as a secondary ISO.
/// The seed is yours: other regular users neither see it in `/api/isos` nor can attach it.
#[utoipa::path(post, path = "/api/cloudinit", tag = "cloudinit", security(("bearer" = [])),
    request_body = CloudInitRequest,
    responses((status = 200, body = CloudInitResponse), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_seed(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    ApiJson(req): ApiJson<CloudInitRequest>,
) -> ApiResult<Json<CloudInitResponse>> {
    audit.action("cloudinit.create").target(&req.hostname);
    let hostname = req.hostname.clone();
    let iso = create_seed_iso(&state.settings.data_dir.join("cloudinit"), &state.store, &user.username, req)
        .await?;
    audit.details(&iso.display().to_string());
    Ok(Json(CloudInitResponse {
        success: true,
        message: format!("Cloud-init ISO for {hostname} created"),
        iso_path: iso.display().to_string(),
    }))
}
