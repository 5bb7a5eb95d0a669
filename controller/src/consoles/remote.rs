//! remote-viewer access: while a VM runs, a TCP port on `FASTVM_SPICE_BIND` forwards to its SPICE
//! socket. Ports are handed out from `FASTVM_SPICE_PORT_BASE` on first use and released when the VM
//! stops. SPICE's own ticketing guards the port: the password is set per request (see `super`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use super::{Kind, relay};
use crate::state::AppState;
use crate::vms::model::VmStatus;

/// How often a listener checks that its VM still runs.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Ports tried past the base before giving up.
const PORT_RANGE: u16 = 1000;

#[derive(Default)]
pub struct Listeners {
    ports: Mutex<HashMap<String, u16>>,
}

impl Listeners {
    fn ports(&self) -> std::sync::MutexGuard<'_, HashMap<String, u16>> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The VM's remote-viewer port, listening from now on if it was not yet.
    pub async fn ensure(self: &Arc<Self>, state: &AppState, vm_id: &str) -> anyhow::Result<u16> {
        if let Some(port) = self.ports().get(vm_id) {
            return Ok(*port);
        }
        let (listener, port) = self.bind(state).await?;
        {
            let mut ports = self.ports();
            if let Some(existing) = ports.get(vm_id) {
                return Ok(*existing); // Another request won the race; ours is dropped.
            }
            ports.insert(vm_id.to_string(), port);
        }
        let (me, state, vm) = (self.clone(), state.clone(), vm_id.to_string());
        tokio::spawn(async move {
            serve(&state, listener, &vm).await;
            me.ports().remove(&vm);
        });
        Ok(port)
    }

    async fn bind(&self, state: &AppState) -> anyhow::Result<(TcpListener, u16)> {
        let base = state.settings.spice_port_base;
        let taken: Vec<u16> = self.ports().values().copied().collect();
        for port in (base..=base.saturating_add(PORT_RANGE)).filter(|p| !taken.contains(p)) {
            let addr: SocketAddr = format!("{}:{port}", state.settings.spice_bind)
                .parse()
                .or_else(|_| format!("[{}]:{port}", state.settings.spice_bind).parse())
                .context("FASTVM_SPICE_BIND is not an IP address")?;
            if let Ok(listener) = TcpListener::bind(addr).await {
                return Ok((listener, port));
            }
        }
        anyhow::bail!("no free port for remote-viewer from {base} to {}", base.saturating_add(PORT_RANGE))
    }
}

async fn still_running(state: &AppState, vm_id: &str) -> bool {
    matches!(state.vms.get(vm_id).await, Ok(vm) if vm.status == VmStatus::Running)
}

async fn serve(state: &AppState, listener: TcpListener, vm_id: &str) {
    let socket = state.vms.run_dirs.run(vm_id).spice();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((client, _)) = accepted {
                    let cut = state.consoles.connections.join(vm_id, Kind::Spice);
                    let socket = socket.clone();
                    tokio::spawn(async move { relay::tcp(client, &socket, cut).await });
                }
            }
            _ = tokio::time::sleep(CHECK_EVERY) => {
                if !still_running(state, vm_id).await {
                    return;
                }
            }
        }
    }
}
