//! `/api/backups`, `/api/vms/{vm_id}/backup`: taking, listing, downloading, uploading and restoring backups.

use anyhow::Context;
use axum::Json;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Multipart, Path as UrlPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;
use tower_http::services::ServeFile;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::audit::Audit;
use crate::api::session::{AdminUser, AuthUser};
use crate::auth::users::SessionUser;
use crate::backups::chunks::Collected;
use crate::backups::{
    Backup, BackupResponse, DownloadQuery, DownloadTicket, RestoreRequest, Verification, backup_vm,
    collect_garbage, list, owned, pack_for_download, remove, restore_job, restore_upload_job, verify_job,
};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::Message;
use crate::quotas::store as quotas;
use crate::state::AppState;
use crate::vms::model::VmActionResponse;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_backup))
        .routes(routes!(list_backups))
        .routes(routes!(download_backup))
        .routes(routes!(download_ticket))
        .routes(routes!(delete_backup))
        .routes(routes!(restore_backup))
        .routes(routes!(verify_backup))
        .routes(routes!(verify_all_backups))
        .routes(routes!(backup_gc))
        .merge(super::backup_schedules::routes())
        // Archives are gigabytes: no body limit on the upload, which streams to disk.
        .merge(OpenApiRouter::new().routes(routes!(upload_and_restore)).layer(DefaultBodyLimit::disable()))
}

/// Back up a VM, stopped or running (the guest keeps running).
#[utoipa::path(post, path = "/api/vms/{vm_id}/backup", tag = "backups", security(("bearer" = [])),
    params(("vm_id" = String, Path)),
    responses((status = 200, body = BackupResponse), (status = 404, body = ErrorBody)))]
async fn create_backup(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    UrlPath(vm_id): UrlPath<String>,
) -> ApiResult<Json<BackupResponse>> {
    audit.action("backup.create").target(&vm_id);
    state.vms.owned(&user, &vm_id).await?;
    state.vms.check_quota(&user.username, quotas::Usage::backups(1)).await?;
    let backup = backup_vm(&state.backups(), &vm_id, &user.username, false).await?;
    audit.details(&backup.id);
    Ok(Json(BackupResponse {
        success: true,
        message: format!("Backup of {} created", backup.vm_name),
        id: backup.id,
        backup_name: backup.backup_name,
        size_mb: backup.size_mb,
        vm_name: backup.vm_name,
        bytes_read: backup.bytes_read,
        bytes_written: backup.bytes_written,
        chunks_reused: backup.chunks_reused,
        incremental: backup.incremental,
        full_reason: backup.full_reason,
    }))
}

/// Re-read every chunk of a backup and check it against its name (an archive: read it through). A
/// damaged or missing chunk marks every backup that names it damaged.
#[utoipa::path(post, path = "/api/backups/{backup_id}/verify", tag = "backups", security(("bearer" = [])),
    params(("backup_id" = String, Path)),
    responses((status = 200, body = Verification), (status = 404, body = ErrorBody)))]
async fn verify_backup(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    UrlPath(backup_id): UrlPath<String>,
) -> ApiResult<Json<Verification>> {
    audit.action("backup.verify").target(&backup_id);
    let backup = owned(&state.backups(), &user, &backup_id).await?;
    Ok(Json(verify_job(&state.backups(), &user.username, Some(backup)).await?))
}

/// Verify every chunk in the store once (what the scheduled verification does).
#[utoipa::path(post, path = "/api/backups/verify", tag = "backups", security(("bearer" = [])),
    responses((status = 200, body = Verification), (status = 403, body = ErrorBody)))]
async fn verify_all_backups(
    State(state): State<AppState>,
    audit: Audit,
    AdminUser(admin): AdminUser,
) -> ApiResult<Json<Verification>> {
    audit.action("backup.verify_all");
    Ok(Json(verify_job(&state.backups(), &admin.username, None).await?))
}

/// Remove the chunks no backup names (done after each delete too); safe while backups run.
#[utoipa::path(post, path = "/api/backups/gc", tag = "backups", security(("bearer" = [])),
    responses((status = 200, body = Collected), (status = 403, body = ErrorBody)))]
async fn backup_gc(
    State(state): State<AppState>,
    audit: Audit,
    _admin: AdminUser,
) -> ApiResult<Json<Collected>> {
    audit.action("backup.gc");
    Ok(Json(collect_garbage(&state.backups()).await?))
}

/// Backups you may see, newest first.
#[utoipa::path(get, path = "/api/backups", tag = "backups", security(("bearer" = [])),
    responses((status = 200, body = Vec<Backup>)))]
async fn list_backups(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> ApiResult<Json<Vec<Backup>>> {
    Ok(Json(list(&state.backups(), &user).await?))
}

/// A short-lived ticket to download one backup without the bearer token (a browser link).
#[utoipa::path(post, path = "/api/backups/{backup_id}/download-ticket", tag = "backups", security(("bearer" = [])),
    params(("backup_id" = String, Path)),
    responses((status = 200, body = DownloadTicket), (status = 404, body = ErrorBody)))]
async fn download_ticket(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    UrlPath(backup_id): UrlPath<String>,
) -> ApiResult<Json<DownloadTicket>> {
    let backup = owned(&state.backups(), &user, &backup_id).await?;
    let ticket = state.consoles.tickets.issue(&user.username, &backup.id, crate::consoles::Kind::Download);
    Ok(Json(DownloadTicket {
        url: format!("/api/backups/{}/download?ticket={ticket}", backup.id),
        ticket,
        expires_in: state.consoles.tickets.ttl().as_secs(),
    }))
}

/// Who asks for a download: the bearer token's user, or the one a download ticket for this very
/// backup was issued to (as they are now).
async fn downloader(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    ticket: Option<&str>,
    backup_id: &str,
) -> ApiResult<SessionUser> {
    if let Some(token) = crate::api::session::bearer(headers) {
        return crate::api::session::session_from_token(state, token).await;
    }
    let refused =
        || ApiError::Unauthorized("Not authenticated: a bearer token or a download ticket is needed".into());
    let t = ticket
        .and_then(|t| state.consoles.tickets.check(t))
        .filter(|t| t.kind == crate::consoles::Kind::Download && t.vm_id == backup_id)
        .ok_or_else(refused)?;
    crate::api::session::current_user(state, &t.username).await.ok_or_else(refused)
}

/// Download a backup archive (supports `Range` for resuming), with the bearer token or a ticket.
#[utoipa::path(get, path = "/api/backups/{backup_id}/download", tag = "backups", security(("bearer" = [])),
    params(("backup_id" = String, Path), DownloadQuery),
    responses((status = 200, description = "The archive"), (status = 206, description = "Part of it"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn download_backup(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(q): axum::extract::Query<DownloadQuery>,
    UrlPath(backup_id): UrlPath<String>,
    request: Request,
) -> ApiResult<Response> {
    let user = downloader(&state, &headers, q.ticket.as_deref(), &backup_id).await?;
    let backup = owned(&state.backups(), &user, &backup_id).await?;
    // A chunked backup is packed into one archive first (removed once the answer has it open).
    let packed = if backup.chunked() {
        Some(pack_for_download(&state.backups(), &user, &backup).await?)
    } else {
        None
    };
    let file = packed.as_ref().map_or(std::path::Path::new(&backup.path), |p| p.path());
    let response = ServeFile::new(file).oneshot(request).await.context("reading the backup")?;
    drop(packed);
    let mut response = response.map(Body::new).into_response();
    let disposition = format!("attachment; filename=\"{}\"", backup.backup_name);
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        response.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/zstd"));
    Ok(response)
}

/// Delete a backup.
#[utoipa::path(delete, path = "/api/backups/{backup_id}", tag = "backups", security(("bearer" = [])),
    params(("backup_id" = String, Path)), responses((status = 200, body = Message), (status = 404, body = ErrorBody)))]
async fn delete_backup(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    UrlPath(backup_id): UrlPath<String>,
) -> ApiResult<Json<Message>> {
    audit.action("backup.delete").target(&backup_id);
    let backup = owned(&state.backups(), &user, &backup_id).await?;
    remove(&state.backups(), &backup).await?;
    Ok(Message::ok(format!("Backup {} deleted", backup.backup_name)))
}

/// Restore a backup, as a new VM or onto its (stopped) original VM. The archive is verified in full
/// first: a damaged one is refused and nothing changes.
#[utoipa::path(post, path = "/api/backups/{backup_id}/restore", tag = "backups", security(("bearer" = [])),
    params(("backup_id" = String, Path)), request_body = RestoreRequest,
    responses(
        (status = 200, body = VmActionResponse),
        (status = 400, description = "Damaged archive", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The original VM is running", body = ErrorBody),
    ))]
async fn restore_backup(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    UrlPath(backup_id): UrlPath<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<VmActionResponse>> {
    audit.action("backup.restore").target(&backup_id);
    // The body is optional: none (or `{}`) means "onto the original VM".
    let req: RestoreRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RestoreRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::Unprocessable(format!("Invalid request body: {e}")))?
    };
    let backup = owned(&state.backups(), &user, &backup_id).await?;
    let vm = restore_job(&state.backups(), user, backup, req.new_name).await?;
    audit.details(&vm.id);
    Ok(Json(VmActionResponse {
        success: true,
        message: format!("{} restored", vm.spec.name),
        vm: (&vm).into(),
    }))
}

/// Restore an uploaded backup archive as a new VM (multipart: `file`, optional `new_name`). The
/// archive is kept as a backup and verified in full before anything is created.
#[utoipa::path(post, path = "/api/vms/restore", tag = "backups", security(("bearer" = [])),
    request_body(content_type = "multipart/form-data", description = "`file`: the archive; `new_name`: optional"),
    responses(
        (status = 200, body = VmActionResponse),
        (status = 400, description = "No file, or a damaged archive", body = ErrorBody),
    ))]
async fn upload_and_restore(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    mut multipart: Multipart,
) -> ApiResult<Json<VmActionResponse>> {
    audit.action("backup.upload_restore");
    let backups_dir = state.backups().dir;
    let upload =
        tempfile::Builder::new().prefix(".upload-").tempfile_in(&backups_dir).context("upload file")?;
    let mut new_name: Option<String> = None;
    let mut received = false;
    while let Some(mut field) =
        multipart.next_field().await.map_err(|e| ApiError::BadRequest(format!("multipart: {e}")))?
    {
        match field.name() {
            Some("file") => {
                let mut out = tokio::fs::File::create(upload.path()).await.context("writing the upload")?;
                while let Some(chunk) = field
                    .chunk()
                    .await
                    .map_err(|e| ApiError::BadRequest(format!("upload interrupted: {e}")))?
                {
                    tokio::io::AsyncWriteExt::write_all(&mut out, &chunk)
                        .await
                        .context("writing the upload")?;
                }
                tokio::io::AsyncWriteExt::flush(&mut out).await.context("writing the upload")?;
                received = true;
            }
            Some("new_name") => new_name = Some(crate::http::small_field(field).await?),
            _ => {}
        }
    }
    if !received {
        return Err(ApiError::BadRequest("file: no archive in the upload (multipart field `file`)".into()));
    }
    let vm = restore_upload_job(&state.backups(), user, upload, new_name).await?;
    audit.target(&vm.id);
    Ok(Json(VmActionResponse {
        success: true,
        message: format!("Restored as {}", vm.spec.name),
        vm: (&vm).into(),
    }))
}
