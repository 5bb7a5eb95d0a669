//! The HTTP API, one module per domain: each handler parses the request, checks who asks, calls
//! the domain function and shapes the answer. Domain modules know nothing of HTTP.

pub mod audit;
pub mod auth;
pub mod backup_schedules;
pub mod backups;
pub mod cloudinit;
pub mod consoles;
pub mod guest;
pub mod isos;
pub mod jobs;
pub mod metrics;
pub mod metrics_push;
pub mod prometheus;
pub mod quotas;
pub mod session;
pub mod snapshots;
pub mod system;
pub mod upgrade;
pub mod vms;
pub mod volumes;

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(auth::routes())
        .merge(quotas::routes())
        .merge(audit::routes())
        .merge(system::routes())
        .merge(vms::routes())
        .merge(guest::routes())
        .merge(volumes::routes())
        .merge(cloudinit::routes())
        .merge(isos::routes())
        .merge(snapshots::routes())
        .merge(backups::routes())
        .merge(jobs::routes())
        .merge(consoles::routes())
        .merge(metrics::routes())
}
