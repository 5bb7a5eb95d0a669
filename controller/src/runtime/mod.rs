//! How VMs are run. The controller talks to a `Runtime`; `process` runs each VM's `vmrunner` as a
//! child process (the embedded default), and the docker runtime (its own issue) plugs in the same way.
//! Either way everything about a running VM is reached through its run directory.

pub mod process;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use vmrunner::run_config::{EXIT_FILE, ExitRecord, RunConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// ACPI power button; QMP `quit` if the guest has not powered off after the timeout; then SIGKILL.
    Graceful { timeout: Duration },
    /// QMP `quit` at once, then SIGKILL.
    Force,
}

/// What a runtime sees of one VM.
#[derive(Debug, Clone, Serialize)]
pub struct Actual {
    pub vm_id: String,
    pub running: bool,
    /// QEMU's process id (process runtime).
    pub pid: Option<u32>,
}

#[async_trait]
pub trait Runtime: Send + Sync {
    fn name(&self) -> &'static str;
    /// Starts the VM; returns once QEMU is set up and the guest resumed.
    async fn start(&self, config: &RunConfig) -> anyhow::Result<Actual>;
    async fn stop(&self, vm_id: &str, mode: StopMode) -> anyhow::Result<()>;
    async fn inspect(&self, vm_id: &str) -> anyhow::Result<Actual>;
    /// Every VM this runtime finds running, for reconciliation.
    async fn list(&self) -> anyhow::Result<Vec<Actual>>;
}

/// The run directory layout shared by every runtime.
#[derive(Debug, Clone)]
pub struct RunDirs {
    pub root: PathBuf,
}

impl RunDirs {
    pub fn of(&self, vm_id: &str) -> PathBuf {
        self.root.join(vm_id)
    }

    pub fn qmp(&self, vm_id: &str) -> PathBuf {
        self.of(vm_id).join("qmp.sock")
    }

    /// How the last run ended, if vmrunner recorded it.
    pub fn exit_record(&self, vm_id: &str) -> Option<ExitRecord> {
        let bytes = std::fs::read(self.of(vm_id).join(EXIT_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// The last `lines` lines of a text file (empty when it does not exist).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
