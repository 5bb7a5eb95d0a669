//! The host's health: real checks of what running VMs depend on (QEMU, KVM, Docker, NAT
//! isolation), for `GET /api/health`.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
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
    pub fn ok(detail: impl Into<String>) -> Check {
        Check { ok: true, detail: detail.into() }
    }
    pub fn fail(detail: impl Into<String>) -> Check {
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

/// First executable called `name` on the PATH.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

pub fn check_qemu() -> Check {
    match find_in_path(QEMU_BINARY) {
        Some(p) => Check::ok(p.display().to_string()),
        None => Check::fail(format!("{QEMU_BINARY} not found on PATH")),
    }
}

pub fn check_kvm() -> Check {
    match std::fs::OpenOptions::new().read(true).write(true).open(KVM_DEVICE) {
        Ok(_) => Check::ok(format!("{KVM_DEVICE} is usable")),
        Err(e) => Check::fail(format!("{KVM_DEVICE}: {e}")),
    }
}

pub async fn check_docker() -> Check {
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
