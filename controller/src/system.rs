//! The host's health: real checks of what running VMs depend on (QEMU, KVM, Docker, NAT
//! isolation), for `GET /api/health`.

use std::time::Duration;

use serde::Serialize;
use utoipa::ToSchema;

pub const QEMU_BINARY: &str = "qemu-system-x86_64";
const KVM_DEVICE: &str = "/dev/kvm";
const DOCKER_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, ToSchema)]
pub struct Check {
    pub ok: bool,
    /// What was found, or why it is not usable.
    pub detail: String,
}

impl Check {
    fn ok(detail: impl Into<String>) -> Check {
        Check { ok: true, detail: detail.into() }
    }
    fn fail(detail: impl Into<String>) -> Check {
        Check { ok: false, detail: detail.into() }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthChecks {
    pub database: Check,
    /// `qemu-system-x86_64` on the PATH.
    pub qemu: Check,
    /// `/dev/kvm` can be opened for reading and writing (without it VMs fall back to slow TCG).
    pub kvm: Check,
    /// A Docker engine answers (needed only by the docker runtime).
    pub docker: Check,
    /// Whether NAT guests are kept from the host's loopback services. Not part of `status`: QEMU
    /// 7.2's user network has no option for it, so with the process runtime they are not.
    pub nat_guest_isolation: Check,
    /// Whether `admin` can still sign in with the password `admin`. Not part of `status`.
    pub default_password: Check,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `healthy` when the database, QEMU and KVM all work; `degraded` otherwise.
    pub status: String,
    pub service: String,
    pub version: String,
    /// The runtime new VMs get: `process` or `docker`.
    pub runtime: String,
    pub checks: HealthChecks,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SystemUser {
    /// The account the controller runs as.
    pub username: String,
    pub uid: u32,
    pub is_root: bool,
    /// Whether that account can use /dev/kvm.
    pub kvm_access: bool,
}

fn check_qemu() -> Check {
    match crate::host::find_in_path(QEMU_BINARY) {
        Some(p) => Check::ok(p.display().to_string()),
        None => Check::fail(format!("{QEMU_BINARY} not found on PATH")),
    }
}

/// What the start-up probe found (a QEMU with KVM really run), else whether the device opens.
fn check_kvm() -> Check {
    match crate::host::kvm_probed() {
        Some(p) if p.usable => Check::ok(p.detail),
        Some(p) => Check::fail(p.detail),
        None => match std::fs::OpenOptions::new().read(true).write(true).open(KVM_DEVICE) {
            Ok(_) => Check::ok(format!("{KVM_DEVICE} opens (QEMU not tried yet)")),
            Err(e) => Check::fail(format!("{KVM_DEVICE}: {e}")),
        },
    }
}

async fn check_docker() -> Check {
    let docker = match bollard::Docker::connect_with_defaults() {
        Ok(d) => d,
        Err(e) => return Check::fail(format!("no Docker engine: {e}")),
    };
    match tokio::time::timeout(DOCKER_TIMEOUT, docker.version()).await {
        Ok(Ok(v)) => Check::ok(format!("Docker engine {}", v.version.unwrap_or_default())),
        Ok(Err(e)) => Check::fail(format!("Docker engine does not answer: {e}")),
        Err(_) => Check::fail("Docker engine did not answer within 2 s"),
    }
}

/// What a NAT guest can reach on this host: with the process runtime, QEMU's user network maps
/// 10.0.2.2 to the host's loopback (QEMU 7.2 has no option against it); in a container it is the
/// container's own loopback.
fn nat_isolation(runtime: &str) -> Check {
    if runtime == "docker" {
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

/// Every check, on the database in `store` and a controller running VMs with `runtime`
/// (`default_password`: whether `admin`/`admin` still signs in).
pub async fn check(store: &crate::store::Store, runtime: &str, default_password: bool) -> Health {
    let database = async {
        match store.call(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?)).await {
            Ok(1) => Check::ok("SQLite answers"),
            Ok(_) => Check::fail("unexpected answer"),
            Err(e) => Check::fail(format!("{e:#}")),
        }
    };
    let (database, docker) = tokio::join!(database, check_docker());
    let qemu = check_qemu();
    let kvm = check_kvm();
    let healthy = database.ok && qemu.ok && kvm.ok;
    Health {
        status: if healthy { "healthy" } else { "degraded" }.into(),
        service: "Fast VM".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        runtime: runtime.into(),
        checks: HealthChecks {
            database,
            qemu,
            kvm,
            docker,
            nat_guest_isolation: nat_isolation(runtime),
            default_password: if default_password {
                Check::fail("admin still has the password admin: change it now")
            } else {
                Check::ok("the first admin password was changed (or set at install)")
            },
        },
    }
}
