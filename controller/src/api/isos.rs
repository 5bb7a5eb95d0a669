//! `/api/isos`: the ISO library, uploads and deletes.

use anyhow::Context;
use axum::Json;
use axum::extract::{DefaultBodyLimit, Multipart, Path as UrlPath, State};
use axum::http::StatusCode;
use tokio::io::AsyncWriteExt;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::audit::Audit;
use crate::api::session::{AdminUser, AuthUser};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::Message;
use crate::isos::*;
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
    let mut isos = library(&state.settings);
    if !user.is_admin {
        // Seeds hold password hashes and keys: a regular user sees only their own.
        let name = user.username.clone();
        let mine = state.store.call(move |c| Ok(crate::store::seeds::owned_by(c, &name)?)).await?;
        let seeds = seeds_dir(&state.settings);
        isos.retain(|iso| !in_dir(&iso.path, &seeds) || mine.contains(&iso.name));
    }
    Ok(Json(isos))
}

/// Upload an ISO into the shared library (admin only; multipart field `file`, whose file name is
/// kept). At most `FASTVM_MAX_ISO_GB`, and only what fits on the disk; an image that is really of
/// another format (a qcow2 naming a backing file, say) is refused.
#[utoipa::path(post, path = "/api/isos", tag = "isos", security(("bearer" = [])),
    request_body(content_type = "multipart/form-data", description = "field `file`: the ISO image"),
    responses(
        (status = 201, body = IsoUploaded),
        (status = 400, description = "Bad name, no file, or not an ISO image", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 409, description = "An ISO of that name exists", body = ErrorBody),
        (status = 413, description = "Larger than the limit or the free space", body = ErrorBody),
    ))]
async fn upload_iso(
    State(state): State<AppState>,
    audit: Audit,
    AdminUser(user): AdminUser,
    headers: axum::http::HeaderMap,
    mut multipart: Multipart,
) -> ApiResult<(StatusCode, Json<IsoUploaded>)> {
    audit.action("iso.upload");
    // Progress is measured against the whole request body, the closest known total.
    let total = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);

    let images = state.settings.data_dir.join("images");
    let room = crate::storage::room_for(&images)?;
    let limit = room.min(state.settings.max_iso_gb.saturating_mul(1 << 30));
    if total > limit {
        return Err(too_large(limit));
    }
    while let Some(mut field) =
        multipart.next_field().await.map_err(|e| ApiError::BadRequest(format!("multipart: {e}")))?
    {
        if field.name() != Some("file") {
            continue;
        }
        let name = field.file_name().unwrap_or_default().to_string();
        audit.target(&name);
        check_name(&name)?;
        let target = images.join(&name);
        if target.exists() {
            return Err(ApiError::Conflict(format!("name: {name} already exists")));
        }
        let mut job = state.jobs.begin("upload", None, &user.username);
        let progress = job.progress();
        progress.phase(&format!("receiving {name}"));
        let tmp = images.join(format!(".upload-{}.tmp", uuid::Uuid::new_v4().simple()));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await.context("creating the upload file")?;
            let mut size: u64 = 0;
            while let Some(chunk) =
                field.chunk().await.map_err(|e| ApiError::BadRequest(format!("upload interrupted: {e}")))?
            {
                size += chunk.len() as u64;
                if size > limit {
                    return Err(too_large(limit));
                }
                file.write_all(&chunk).await.context("writing the upload")?;
                progress.bytes(size, total.max(size), 0.0, 1.0);
            }
            file.sync_all().await.context("syncing the upload")?;
            progress.bytes_now(size, size, 0.0, 1.0);
            crate::storage::untrusted::check(
                &state.vms.qemu_img,
                &name,
                &tmp,
                vmrunner::argv::DiskFormat::Raw,
                None,
            )
            .await?;
            // A hard link never replaces an existing file, unlike rename: a racing upload of the same
            // name loses with a 409 instead of overwriting.
            match std::fs::hard_link(&tmp, &target) {
                Ok(()) => Ok(size),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    Err(ApiError::Conflict(format!("name: {name} already exists")))
                }
                Err(e) => Err(ApiError::Internal(anyhow::Error::from(e).context("placing the upload"))),
            }
        }
        .await;
        let _ = std::fs::remove_file(&tmp);
        let size = match result {
            Ok(size) => size,
            Err(e) => {
                job.fail(&e.to_string());
                return Err(e);
            }
        };
        job.succeed(Some(name.clone()));
        return Ok((
            StatusCode::CREATED,
            Json(IsoUploaded {
                success: true,
                message: format!("{name} uploaded"),
                iso: IsoInfo { name, path: target.display().to_string(), size },
            }),
        ));
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
    check_name(&name)?;
    let path = state.settings.data_dir.join("images").join(&name);
    let canonical = path.canonicalize().map_err(|_| ApiError::NotFound(format!("ISO {name} not found")))?;
    let vms = state.store.call(|c| Ok(crate::vms::store::list(c)?)).await?;
    if let Some(vm) = vms.iter().find(|vm| {
        resolves_to(vm.spec.iso_path.as_deref(), &canonical)
            || resolves_to(vm.spec.secondary_iso_path.as_deref(), &canonical)
    }) {
        return Err(ApiError::Conflict(format!("ISO {name} is used by VM {} ({})", vm.spec.name, vm.id)));
    }
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok(Message::ok(format!("ISO {name} deleted")))
}
