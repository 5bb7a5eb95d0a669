//! The one door to a VM for an operation: `VmManager::enter` takes the VM's lock (for the
//! operations that hold it), reads its record again under the lock and checks the lifecycle table.
//! Snapshots, volumes, backups, consoles and the guest agent reach a VM's QEMU through what it
//! hands back.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::OwnedMutexGuard;
use vmrunner::paths::{RunDir, VmDir};

use super::lifecycle::{Op, VmState};
use super::manager::VmManager;
use super::model::VmRecord;
use crate::error::ApiResult;
use crate::qmp::{self, Command};

pub struct Held<'a> {
    pub vm: VmRecord,
    /// The state the operation began in.
    pub state: VmState,
    manager: &'a VmManager,
    _guard: Option<OwnedMutexGuard<()>>,
}

impl VmManager {
    /// `op` on VM `id`: refused (409) when the VM's state does not allow it; else the VM, held to
    /// this operation until the answer is dropped when `op` is exclusive.
    pub async fn enter(&self, id: &str, op: Op) -> ApiResult<Held<'_>> {
        let guard = if op.exclusive() { Some(self.lock_for(id, op).await?) } else { None };
        let vm = self.get(id).await?;
        let state = self.require(&vm, op).await?;
        Ok(Held { vm, state, manager: self, _guard: guard })
    }
}

impl Held<'_> {
    /// Whether QEMU runs: live work goes through its monitor, offline work through the files.
    pub fn live(&self) -> bool {
        self.state.has_qemu()
    }

    pub fn vm_dir(&self) -> VmDir {
        self.manager.vm_dir(&self.vm.id)
    }

    pub fn run_dir(&self) -> RunDir {
        self.manager.run_dirs.run(&self.vm.id)
    }

    /// The monitor socket the controller's commands go through.
    pub fn monitor(&self) -> PathBuf {
        self.manager.run_dirs.qmp(&self.vm.id)
    }

    pub async fn qmp(&self, command: &Command) -> anyhow::Result<Value> {
        qmp::run(&self.monitor(), command).await
    }

    /// A QMP job to its end; `progress` gets (current, total) as QEMU reports it.
    pub async fn qmp_job(
        &self,
        command: impl FnOnce(&str) -> Command,
        timeout: Duration,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> anyhow::Result<()> {
        qmp::run_job(&self.monitor(), command, timeout, progress).await
    }

    /// Starts the (stopped) VM from a live snapshot's saved state.
    pub async fn start_from_snapshot(&mut self, tag: &str) -> ApiResult<()> {
        self.manager.start_locked(&self.vm, Some(tag.to_string())).await?;
        self.state = VmState::Running;
        Ok(())
    }
}
