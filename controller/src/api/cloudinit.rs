//! `POST /api/cloudinit`: a cloud-init seed ISO.

use anyhow::Context;
use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::audit::Audit;
use crate::api::session::AuthUser;
use crate::cloudinit::*;
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
    let instance_id = format!("fastvm-{}", crate::vms::manager::new_id());
    let hostname = req.hostname.clone();
    let (user_data, meta_data, network_config) = seed_files(req, &instance_id)?;
    let work = tempfile::tempdir().context("creating a work directory")?;
    for (name, content) in
        [("user-data", &user_data), ("meta-data", &meta_data), ("network-config", &network_config)]
    {
        std::fs::write(work.path().join(name), content).with_context(|| format!("writing {name}"))?;
    }
    let dir = state.settings.data_dir.join("cloudinit");
    let iso = dir.join(format!("{hostname}-{}.iso", &instance_id[7..]));
    let work_dir = work.path().to_path_buf();
    crate::storage::produce(&iso, "building the seed ISO", |tmp| {
        let mut cmd = tokio::process::Command::new("xorriso");
        cmd.args(["-as", "mkisofs", "-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
            .arg(tmp)
            .args(["user-data", "meta-data", "network-config"])
            .current_dir(&work_dir);
        cmd
    })
    .await?;
    let (name, owner) =
        (iso.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), user.username);
    if let Err(e) = state
        .store
        .call(move |c| Ok(crate::store::seeds::insert(c, &name, &owner, crate::store::now_unix())?))
        .await
    {
        let _ = std::fs::remove_file(&iso);
        return Err(e.into());
    }
    audit.details(&iso.display().to_string());
    Ok(Json(CloudInitResponse {
        success: true,
        message: format!("Cloud-init ISO for {hostname} created"),
        iso_path: iso.display().to_string(),
    }))
}
