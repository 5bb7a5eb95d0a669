//! What the guest says about itself and what it is asked to do, through the QEMU guest agent.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::lifecycle::Op;
use super::manager::VmManager;
use super::model::{VmRecord, VmStatus};
use crate::error::{ApiError, ApiResult};
use crate::guest_agent::{self, AgentLocks, GuestCommand, GuestInterface};
use crate::store::now_unix;

#[derive(Debug, Serialize, ToSchema)]
pub struct GuestFilesystem {
    pub mountpoint: String,
    #[serde(rename = "type")]
    pub fs_type: String,
    pub used_bytes: Option<u64>,
    pub total_bytes: Option<u64>,
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct GuestInfo {
    /// Whether the guest agent answered.
    pub available: bool,
    /// Why not, when it did not.
    pub reason: Option<String>,
    pub hostname: Option<String>,
    /// `pretty-name` of `guest-get-osinfo`, e.g. "Debian GNU/Linux 12 (bookworm)".
    pub os: Option<String>,
    pub kernel: Option<String>,
    pub interfaces: Vec<GuestInterface>,
    /// IPv4 first, link-local addresses left out.
    pub ip_addresses: Vec<String>,
    pub filesystems: Vec<GuestFilesystem>,
    /// Seconds since the VM started.
    pub uptime_seconds: Option<i64>,
}

fn filesystems(reply: &Value) -> Vec<GuestFilesystem> {
    reply
        .as_array()
        .map(|list| {
            list.iter()
                .map(|f| GuestFilesystem {
                    mountpoint: f["mountpoint"].as_str().unwrap_or_default().to_string(),
                    fs_type: f["type"].as_str().unwrap_or_default().to_string(),
                    used_bytes: f["used-bytes"].as_u64(),
                    total_bytes: f["total-bytes"].as_u64(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The guest's hostname, OS, addresses and filesystems, from its agent; `available: false` with the
/// reason when no agent answers within 2 s.
pub async fn info(vms: &VmManager, agents: &AgentLocks, vm: &VmRecord) -> GuestInfo {
    if vm.status != VmStatus::Running {
        return GuestInfo { reason: Some("The VM is not running".into()), ..GuestInfo::default() };
    }
    let socket = vms.run_dirs.run(&vm.id).qga();
    let answer = guest_agent::with_agent(agents, &vm.id, &socket, async |agent| {
        let hostname = agent.execute(&GuestCommand::host_name()).await?;
        // The rest is optional: older or restricted agents lack some commands.
        let os = agent.execute(&GuestCommand::os_info()).await.unwrap_or(Value::Null);
        let interfaces = agent.execute(&GuestCommand::network_interfaces()).await.unwrap_or(Value::Null);
        let fs = agent.execute(&GuestCommand::fs_info()).await.unwrap_or(Value::Null);
        Ok((hostname, os, interfaces, fs))
    })
    .await;
    match answer {
        Ok((hostname, os, interfaces, fs)) => {
            let interfaces = guest_agent::interfaces(&interfaces);
            GuestInfo {
                available: true,
                reason: None,
                hostname: hostname["host-name"].as_str().map(String::from),
                os: os["pretty-name"].as_str().or(os["name"].as_str()).map(String::from),
                kernel: os["kernel-release"].as_str().map(String::from),
                ip_addresses: guest_agent::display_addresses(&interfaces),
                interfaces,
                filesystems: filesystems(&fs),
                uptime_seconds: vm.started_at.map(|t| now_unix() - t),
            }
        }
        Err(e) => GuestInfo { reason: Some(format!("{e:#}")), ..GuestInfo::default() },
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resize {
    /// 640-7680.
    pub width: u32,
    /// 480-4320.
    pub height: u32,
}

/// Asks the guest to change its display resolution (the guest agent runs `xrandr` in the guest's
/// X session); 409 with the reason when no agent answers (the guest's state, not the server's
/// fault). The answer names the mode.
pub async fn resize(vms: &VmManager, agents: &AgentLocks, vm_id: &str, req: &Resize) -> ApiResult<String> {
    if !(640..=7680).contains(&req.width) {
        return Err(ApiError::BadRequest("width: must be 640 to 7680".into()));
    }
    if !(480..=4320).contains(&req.height) {
        return Err(ApiError::BadRequest("height: must be 480 to 4320".into()));
    }
    let held = vms.enter(vm_id, Op::Console).await?;
    let socket = held.run_dir().qga();
    let mode = format!("{}x{}", req.width, req.height);
    let xrandr = GuestCommand::exec("/bin/sh", &["-c", "DISPLAY=:0 xrandr --size \"$1\"", "resize", &mode]);
    guest_agent::with_agent(agents, vm_id, &socket, async |agent| agent.execute(&xrandr).await)
        .await
        .map_err(|e| ApiError::Conflict(format!("{e:#}")))?;
    Ok(mode)
}
