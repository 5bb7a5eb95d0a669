//! Per-user quotas, set by admins (`api::quotas`). Enforced wherever a regular user's VMs, vCPUs,
//! memory, disks and backups grow: create, edit, clone, restore, volume create, backups (manual and scheduled).

pub mod store;

use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};
use crate::store::Store;
pub use store::{Limits, Usage};

#[derive(Debug, Serialize, ToSchema)]
pub struct Quota {
    pub username: String,
    /// `null`: no limit. Admins are never limited.
    pub limits: Limits,
    pub usage: Usage,
}

/// `username`'s limits and usage; 404 for no such user.
pub async fn load(store: &Store, username: &str) -> ApiResult<Quota> {
    let u = username.to_string();
    store
        .call(move |c| {
            if crate::auth::users::get(c, &u)?.is_none() {
                return Ok(None);
            }
            Ok(Some(Quota { limits: store::limits(c, &u)?, usage: store::usage(c, &u, None)?, username: u }))
        })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("User {username} not found")))
}

/// Sets `username`'s limits (`None`: no limit); what they already have above a new limit stays,
/// only growth is refused.
pub async fn set(store: &Store, username: &str, limits: Limits) -> ApiResult<Quota> {
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
    load(store, username).await?;
    let u = username.to_string();
    store.call(move |c| Ok(store::set_limits(c, &u, &limits)?)).await?;
    load(store, username).await
}
