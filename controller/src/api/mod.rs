//! The HTTP API, one module per domain: each handler parses the request, checks who asks, calls
//! the domain function and shapes the answer. Domain modules know nothing of HTTP.

pub mod audit;
pub mod auth;
pub mod guest;
pub mod session;
pub mod snapshots;
pub mod vms;
pub mod volumes;

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(auth::routes())
        .merge(crate::quotas::routes())
        .merge(audit::routes())
        .merge(crate::system::routes())
        .merge(vms::routes())
        .merge(guest::routes())
        .merge(volumes::routes())
        .merge(crate::cloudinit::routes())
        .merge(crate::isos::routes())
        .merge(snapshots::routes())
        .merge(crate::backups::routes())
        .merge(crate::jobs::routes())
        .merge(crate::consoles::routes())
        .merge(crate::metrics::routes())
}
