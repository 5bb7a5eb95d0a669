//! remote-viewer access: while a VM runs, a TCP port on `FASTVM_SPICE_BIND` forwards to its SPICE
//! socket. Ports are handed out from `FASTVM_SPICE_PORT_BASE` on first use and released when the VM
//! stops. SPICE's own ticketing guards the port: the password is set per request (see `super`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use super::{Consoles, Kind, relay};
use crate::vms::manager::VmManager;
use crate::vms::model::VmStatus;

/// How often a listener checks that its VM still runs.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Ports tried past the base before giving up.
const PORT_RANGE: u16 = 1000;

pub struct Listeners {
    ports: Mutex<HashMap<String, u16>>,
    /// Where remote-viewer ports listen: an address, and the first port tried.
    bind: String,
    base: u16,
}

impl Listeners {
    pub fn new(bind: &str, base: u16) -> Listeners {
        Listeners { ports: Mutex::default(), bind: bind.to_string(), base }
    }

    fn ports(&self) -> std::sync::MutexGuard<'_, HashMap<String, u16>> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The VM's remote-viewer port, listening from now on if it was not yet.
    pub async fn ensure(consoles: &Arc<Consoles>, vms: &Arc<VmManager>, vm_id: &str) -> anyhow::Result<u16> {
        let me = &consoles.remote;
        if let Some(port) = me.ports().get(vm_id) {
            return Ok(*port);
        }
        let (listener, port) = me.listen().await?;
        {
            let mut ports = me.ports();
            if let Some(existing) = ports.get(vm_id) {
                return Ok(*existing); // Another request won the race; ours is dropped.
            }
            ports.insert(vm_id.to_string(), port);
        }
        let (consoles, vms, vm) = (consoles.clone(), vms.clone(), vm_id.to_string());
        tokio::spawn(async move {
            serve(&consoles, &vms, listener, &vm).await;
            consoles.remote.ports().remove(&vm);
        });
        Ok(port)
    }

    async fn listen(&self) -> anyhow::Result<(TcpListener, u16)> {
        let base = self.base;
        let taken: Vec<u16> = self.ports().values().copied().collect();
        for port in (base..=base.saturating_add(PORT_RANGE)).filter(|p| !taken.contains(p)) {
            let addr: SocketAddr = format!("{}:{port}", self.bind)
                .parse()
                .or_else(|_| format!("[{}]:{port}", self.bind).parse())
                .context("FASTVM_SPICE_BIND is not an IP address")?;
            if let Ok(listener) = TcpListener::bind(addr).await {
                return Ok((listener, port));
            }
        }
        anyhow::bail!("no free port for remote-viewer from {base} to {}", base.saturating_add(PORT_RANGE))
    }
}

async fn still_running(vms: &VmManager, vm_id: &str) -> bool {
    matches!(vms.get(vm_id).await, Ok(vm) if vm.status == VmStatus::Running)
}

async fn serve(consoles: &Consoles, vms: &VmManager, listener: TcpListener, vm_id: &str) {
    let socket = vms.run_dirs.run(vm_id).spice();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((client, _)) = accepted {
                    let cut = consoles.connections.join(vm_id, Kind::Spice);
                    let socket = socket.clone();
                    tokio::spawn(async move { relay::tcp(client, &socket, cut).await });
                }
            }
            _ = tokio::time::sleep(CHECK_EVERY) => {
                if !still_running(vms, vm_id).await {
                    return;
                }
            }
        }
    }
}
