//! VM records as stored, and as the API shows them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use vmrunner::VmSpec;

use super::lifecycle::VmState;
use crate::auth::users::SessionUser;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VmStatus {
    Stopped,
    Running,
}

impl VmStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VmStatus::Stopped => "stopped",
            VmStatus::Running => "running",
        }
    }

    pub fn parse(s: &str) -> VmStatus {
        if s == "running" { VmStatus::Running } else { VmStatus::Stopped }
    }
}

#[derive(Debug, Clone)]
pub struct VmRecord {
    pub id: String,
    pub owner: String,
    pub uuid: String,
    pub spec: VmSpec,
    pub runtime: String,
    pub status: VmStatus,
    pub accel: Option<String>,
    pub started_at: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl VmRecord {
    /// Whether `user` may see (and act on) it.
    pub fn visible_to(&self, user: &SessionUser) -> bool {
        user.may_see(&self.owner)
    }

    /// A new, stopped VM with a fresh UUID.
    pub fn new_stopped(id: String, owner: &str, spec: VmSpec, runtime: &str) -> VmRecord {
        let now = crate::store::now_unix();
        VmRecord {
            id,
            owner: owner.to_string(),
            uuid: uuid::Uuid::new_v4().to_string(),
            spec,
            runtime: runtime.to_string(),
            status: VmStatus::Stopped,
            accel: None,
            started_at: None,
            last_error: None,
            created_at: now,
            updated_at: now,
        }
    }
}

/// A VM as the API returns it: the spec's fields (as the client sent them, with generated MACs and
/// ids filled in) plus what the controller knows about it.
#[derive(Debug, Serialize, ToSchema)]
pub struct VmView {
    pub id: String,
    #[serde(flatten)]
    pub spec: VmSpec,
    /// `running` or `stopped`: what the runtime last reported (refreshed every 2 s and on runtime events).
    pub status: VmStatus,
    /// The lifecycle state: `stopped`, `starting`, `running`, `paused`, `stopping` or `crashed`
    /// (stopped, its last run having ended badly: `last_error` says why).
    pub state: VmState,
    pub owner: String,
    pub uuid: String,
    /// Which runtime runs it (`process` or `docker`).
    pub runtime: String,
    /// `kvm` or `tcg` for the current or last run.
    pub accel: Option<String>,
    /// Why it ran with `tcg` when KVM was asked for (no working KVM on this host).
    pub accel_note: Option<String>,
    /// Effective values (Windows VMs default both to true).
    pub secure_boot_enabled: bool,
    pub tpm_enabled: bool,
    /// Why the last run ended abnormally, if it did.
    pub last_error: Option<String>,
    pub started_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// What the guest agent last reported (IPv4 first); empty without an agent.
    pub ip_addresses: Vec<String>,
}

impl From<&VmRecord> for VmView {
    fn from(r: &VmRecord) -> VmView {
        use crate::store::rfc3339;
        VmView {
            id: r.id.clone(),
            secure_boot_enabled: r.spec.secure_boot_enabled(),
            tpm_enabled: r.spec.tpm_enabled(),
            spec: r.spec.clone(),
            status: r.status,
            state: match r.status {
                VmStatus::Running => VmState::Running,
                VmStatus::Stopped if r.last_error.is_some() => VmState::Crashed,
                VmStatus::Stopped => VmState::Stopped,
            },
            owner: r.owner.clone(),
            uuid: r.uuid.clone(),
            runtime: r.runtime.clone(),
            accel: r.accel.clone(),
            accel_note: None,
            last_error: r.last_error.clone(),
            started_at: r.started_at.map(rfc3339),
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
            ip_addresses: Vec::new(),
        }
    }
}

/// The original API's answer to a mutation.
#[derive(Debug, Serialize, ToSchema)]
pub struct VmActionResponse {
    pub success: bool,
    pub message: String,
    pub vm: VmView,
}
