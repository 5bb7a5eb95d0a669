//! `/api/isos`: the ISO library, uploads and deletes.

use axum::Json;
use axum::extract::{DefaultBodyLimit, Multipart, Path as UrlPath, State};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::audit::Audit;
use crate::api::session::{AdminUser, AuthUser};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::Message;
use crate::isos::{self, IsoInfo, IsoUploaded, Upload, upload_limit, visible_to};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_isos))
        .routes(routes!(delete_iso))
        // ISOs are gigabytes: no body limit on the upload, which streams to disk.
        .merge(OpenApiRouter::new().routes(routes!(upload_iso)).layer(DefaultBodyLimit::disable()))
}

/// ISO images in the allowed directories (the data dir's `images/` and `cloudinit/`, and `FASTVM_ISO_DIRS`).
#[utoipa::path(get, path = "/api/isos", tag = "isos", security(("bearer" = [])),
    responses((status = 200, body = Vec<IsoInfo>), (status = 401, body = ErrorBody)))]
async fn list_isos(State(state): State<AppState>, AuthUser(user): AuthUser) -> ApiResult<Json<Vec<IsoInfo>>> {
    Ok(Json(visible_to(&state.settings, &state.store, &user).await?))
}

/// Upload an ISO into the shared library (admin only; multipart field `file`, whose file name is
/// kept). At most `FASTVM_MAX_ISO_GB`, and only what fits on the disk; an image that is really of
/// another format (a qcow2 naming a backing file, say) is refused.
#[utoipa::path(post, path = "/api/isos", tag = "isos", security(("bearer" = [])),
    request_body(content_type = "multipart/form-data", description = "field `file`: the ISO image"),
    responses(
        (status = 200, body = IsoUploaded),
        (status = 400, description = "Bad name, no file, or not an ISO image", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 409, description = "An ISO of that name exists", body = ErrorBody),
        (status = 413, description = "Larger than FASTVM_MAX_ISO_GB", body = ErrorBody),
        (status = 507, description = "Larger than the free space", body = ErrorBody),
    ))]
async fn upload_iso(
    State(state): State<AppState>,
    audit: Audit,
    AdminUser(user): AdminUser,
    headers: axum::http::HeaderMap,
    mut multipart: Multipart,
) -> ApiResult<Json<IsoUploaded>> {
    audit.action("iso.upload");
    // Progress is measured against the whole request body, the closest known total.
    let total = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);

    let limit = upload_limit(&state.settings)?;
    if total > limit.bytes {
        return Err(limit.refuse());
    }
    while let Some(field) =
        multipart.next_field().await.map_err(|e| ApiError::BadRequest(format!("multipart: {e}")))?
    {
        if field.name() != Some("file") {
            continue;
        }
        let name = field.file_name().unwrap_or_default().to_string();
        audit.target(&name);
        let upload = Upload { settings: &state.settings, qemu_img: &state.vms.qemu_img, jobs: &state.jobs };
        let iso = upload.receive(&name, &user.username, total, limit, field).await?;
        let message = format!("{name} uploaded");
        return Ok(Json(IsoUploaded { success: true, message, iso }));
    }
    Err(ApiError::BadRequest("file: no file in the upload (multipart field `file`)".into()))
}

/// Delete an uploaded ISO (admin only). Refused while any VM uses it.
#[utoipa::path(delete, path = "/api/isos/{name}", tag = "isos", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses(
        (status = 200, body = Message),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "In use by a VM", body = ErrorBody),
    ))]
async fn delete_iso(
    State(state): State<AppState>,
    audit: Audit,
    _admin: AdminUser,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<Message>> {
    audit.action("iso.delete").target(&name);
    isos::delete(&state.settings, &state.store, &name).await?;
    Ok(Message::ok(format!("ISO {name} deleted")))
}
