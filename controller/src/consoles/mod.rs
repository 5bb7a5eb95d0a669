//! Consoles: a VM's screen in the browser (SPICE through spice-html5, or VNC through noVNC) over
//! the controller's own WebSocket proxy, and in remote-viewer over a per-VM TCP port. Nothing but
//! the controller's port needs to be reachable, and nobody without rights to the VM gets in.

pub mod relay;
pub mod remote;
pub mod screenshot;
pub mod serial;
pub mod tickets;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use vmrunner::paths::RunDir;

use crate::error::{ApiError, ApiResult};
use crate::qmp::Command;
use crate::vms::held::Held;
use crate::vms::manager::VmManager;
use crate::vms::model::{VmRecord, VmStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Spice,
    Vnc,
    /// The `/ws/metrics` push (tickets of this kind are bound to a user, not to a VM).
    Metrics,
    /// One backup's download (bound to the backup's id where the others name a VM).
    Download,
    /// The VM's serial console.
    Serial,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Spice => "spice",
            Kind::Vnc => "vnc",
            Kind::Metrics => "metrics",
            Kind::Download => "download",
            Kind::Serial => "serial",
        }
    }

    /// The run's socket this kind of console relays (none for tickets of other kinds).
    pub fn socket(self, run: &RunDir) -> Option<PathBuf> {
        match self {
            Kind::Spice => Some(run.spice()),
            Kind::Vnc => Some(run.vnc()),
            Kind::Serial => Some(run.serial()),
            Kind::Metrics | Kind::Download => None,
        }
    }
}

/// Everything the consoles share.
pub struct Consoles {
    pub tickets: tickets::Tickets,
    pub connections: relay::Connections,
    pub remote: Arc<remote::Listeners>,
    /// The shared serial connections, one per VM that someone watches.
    pub serial: serial::Hubs,
    pub screenshots: screenshot::Screenshots,
    /// The SPICE password handed out per VM and until when it admits new connections: one that is
    /// still valid is handed out again, so a second viewer does not lock out the first one's channels.
    spice_passwords: Mutex<HashMap<String, (String, Instant)>>,
}

impl Consoles {
    /// `spice_bind` and `spice_port_base`: where remote-viewer ports listen.
    pub fn new(ticket_ttl: Duration, spice_bind: &str, spice_port_base: u16) -> Self {
        Consoles {
            tickets: tickets::Tickets::new(ticket_ttl),
            connections: relay::Connections::default(),
            remote: Arc::new(remote::Listeners::new(spice_bind, spice_port_base)),
            serial: serial::Hubs::default(),
            screenshots: screenshot::Screenshots::default(),
            spice_passwords: Mutex::default(),
        }
    }

    fn passwords(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.spice_passwords.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The VM's remote-viewer port, listening from now on if it was not yet.
    pub async fn remote_port(self: &Arc<Self>, vms: &Arc<VmManager>, vm_id: &str) -> anyhow::Result<u16> {
        remote::Listeners::ensure(self, vms, vm_id).await
    }

    /// Sets the running VM's SPICE password (the current one while it is valid, else a fresh one)
    /// so that it admits new connections for the ticket lifetime from now; open connections keep
    /// going.
    pub async fn spice_password(&self, vm: &Held<'_>) -> ApiResult<String> {
        let ttl = self.tickets.ttl();
        let vm_id = vm.vm.id.as_str();
        let reusable = self.passwords().get(vm_id).filter(|(_, until)| *until > Instant::now()).cloned();
        let password = match reusable {
            Some((p, _)) => p,
            None => rand::rng().sample_iter(&Alphanumeric).take(24).map(char::from).collect(),
        };
        let failed = |e: anyhow::Error| ApiError::Operation(format!("setting the SPICE password: {e:#}"));
        vm.qmp(&Command::set_password("spice", &password)).await.map_err(failed)?;
        let expire = format!("+{}", ttl.as_secs().max(1));
        vm.qmp(&Command::expire_password("spice", &expire)).await.map_err(failed)?;
        self.passwords().insert(vm_id.to_string(), (password.clone(), Instant::now() + ttl));
        Ok(password)
    }

    /// Closes every proxied connection of this kind to the VM; a SPICE password handed out stops
    /// admitting new ones too. How many were closed.
    pub async fn disconnect(&self, vms: &VmManager, vm: &VmRecord, kind: Kind) -> usize {
        let closed = self.connections.disconnect(&vm.id, kind);
        if kind == Kind::Spice {
            self.passwords().remove(&vm.id);
        }
        if kind == Kind::Spice && vm.status == VmStatus::Running {
            let sock = vms.run_dirs.qmp(&vm.id);
            let _ = crate::qmp::run(&sock, &Command::expire_password("spice", "now")).await;
        }
        closed
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SpiceAccess {
    /// Always `ready`.
    pub status: String,
    /// WebSocket path for spice-html5, with a ticket valid for opening this session's channels.
    pub ws_url: String,
    /// TCP port for remote-viewer on the controller's host.
    pub spice_port: u16,
    /// SPICE password, valid for a short while (the console ticket's lifetime).
    pub password: String,
    /// A virt-viewer connection file for remote-viewer.
    pub vv_url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VncAccess {
    /// Always `ready`.
    pub status: String,
    /// WebSocket path for noVNC, with a ticket valid for opening this session.
    pub ws_url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SerialAccess {
    /// Always `ready`.
    pub status: String,
    /// WebSocket path for a terminal, with a ticket valid for opening it.
    pub ws_url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SpiceTools {
    /// Whether a spice-guest-tools or virtio-win ISO is in the ISO library.
    pub available: bool,
    pub path: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ScreenshotQuery {
    /// Scale down to this width in pixels (16 or more; the aspect is kept).
    pub width: Option<u32>,
}
