//! `/api/health`, `/api/bridges`, `/api/interfaces`, `/api/system/user`.

use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::session::AuthUser;
use crate::error::ErrorBody;
use crate::host::{self, NetInterface};
use crate::state::AppState;
use crate::system::{Health, SystemUser, check};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(list_bridges))
        .routes(routes!(list_interfaces))
        .routes(routes!(system_user))
}

/// Linux bridges on this host (for `bridge` networks).
#[utoipa::path(get, path = "/api/bridges", tag = "system", security(("bearer" = [])),
    responses((status = 200, body = Vec<NetInterface>), (status = 401, body = ErrorBody)))]
async fn list_bridges(_user: AuthUser) -> Json<Vec<NetInterface>> {
    Json(host::interfaces().into_iter().filter(|i| i.kind == "bridge").collect())
}

/// Network interfaces on this host (parents for `macvtap` networks).
#[utoipa::path(get, path = "/api/interfaces", tag = "system", security(("bearer" = [])),
    responses((status = 200, body = Vec<NetInterface>), (status = 401, body = ErrorBody)))]
async fn list_interfaces(_user: AuthUser) -> Json<Vec<NetInterface>> {
    Json(host::interfaces())
}

/// The operating-system account Fast VM runs as, and what it may do.
#[utoipa::path(get, path = "/api/system/user", tag = "system", security(("bearer" = [])),
    responses((status = 200, body = SystemUser), (status = 401, body = ErrorBody)))]
async fn system_user(_user: AuthUser) -> Json<SystemUser> {
    let uid = nix::unistd::Uid::current();
    let username =
        nix::unistd::User::from_uid(uid).ok().flatten().map(|u| u.name).unwrap_or_else(|| uid.to_string());
    Json(SystemUser { username, uid: uid.as_raw(), is_root: uid.is_root(), kvm_access: host::kvm_usable() })
}

/// Service health. No authentication, so load balancers and monitors can use it.
#[utoipa::path(get, path = "/api/health", tag = "system", responses((status = 200, body = Health)))]
async fn health(State(state): State<AppState>) -> Json<Health> {
    Json(check(&state.store, state.vms.runtime.name(), state.default_password.in_use()).await)
}
