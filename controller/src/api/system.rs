//! `/api/health`, `/api/bridges`, `/api/interfaces`, `/api/system/user`.

use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::session::AuthUser;
use crate::error::ErrorBody;
use crate::host::{self, NetInterface};
use crate::state::AppState;
use crate::system::*;

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

/// What a NAT guest can reach on this host: with the process runtime, QEMU's user network maps
/// 10.0.2.2 to the host's loopback (QEMU 7.2 has no option against it); in a container it is the
/// container's own loopback.
fn nat_isolation(state: &AppState) -> Check {
    if state.vms.runtime.name() == "docker" {
        Check::ok(
            "NAT guests run in their own containers: 10.0.2.2 is the container's loopback, not the host's \
             (except in VMs that also have a bridge or macvtap NIC, whose containers use the host's network)",
        )
    } else {
        Check::fail(
            "NAT guests of the process runtime reach this host's loopback services as 10.0.2.2 (QEMU 7.2's \
             user network cannot prevent it): keep every loopback service authenticated, or use the docker runtime",
        )
    }
}

/// Service health. No authentication, so load balancers and monitors can use it.
#[utoipa::path(get, path = "/api/health", tag = "system", responses((status = 200, body = Health)))]
async fn health(State(state): State<AppState>) -> Json<Health> {
    let database = async {
        match state.store.call(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?)).await {
            Ok(1) => Check::ok("SQLite answers"),
            Ok(_) => Check::fail("unexpected answer"),
            Err(e) => Check::fail(format!("{e:#}")),
        }
    };
    let (database, docker) = tokio::join!(database, check_docker());
    let qemu = check_qemu();
    let kvm = check_kvm();
    let healthy = database.ok && qemu.ok && kvm.ok;
    Json(Health {
        status: if healthy { "healthy" } else { "degraded" }.into(),
        service: "Fast VM".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        runtime: state.vms.runtime.name().into(),
        checks: HealthChecks { database, qemu, kvm, docker, nat_guest_isolation: nat_isolation(&state) },
    })
}
