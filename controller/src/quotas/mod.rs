//! Per-user quotas, set by admins (`api::quotas`). Enforced wherever a regular user's VMs, vCPUs, memory, disks and
//! backups grow: create, edit, clone, restore, volume create, backups (manual and scheduled).

pub mod store;

use serde::Serialize;
use utoipa::ToSchema;

pub use store::{Limits, Usage};

#[derive(Debug, Serialize, ToSchema)]
pub struct Quota {
    pub username: String,
    /// `null`: no limit. Admins are never limited.
    pub limits: Limits,
    pub usage: Usage,
}
