//! How VMs are run. The controller talks to a `Runtime`: `process` runs each VM's `vmrunner` as a
//! child process (the embedded default), `docker` runs it in a container of its own.
//! Either way everything about a running VM is reached through its run directory.

pub mod docker;
pub mod process;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use serde::Serialize;
use vmrunner::paths::RunDir;
use vmrunner::run_config::{CONFIG_FILE, EXIT_FILE, ExitRecord, READY_FILE, RunConfig};

use crate::qmp;

const QUIT_GRACE: Duration = Duration::from_secs(5);
/// Longer than vmrunner's own worst case (swtpm 10 s, QMP 30 s), so vmrunner reports its failures itself.
pub const START_TIMEOUT: Duration = Duration::from_secs(90);

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

/// What a running VM's QEMU costs the host right now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// CPU time used since QEMU (or its container) started, in seconds: rates come from differences.
    pub cpu_seconds: f64,
    /// Resident memory.
    pub memory_bytes: u64,
}

/// CPU time and resident memory of a process, from /proc.
pub fn process_usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may itself hold spaces and parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 =
        fields.get(11)?.parse::<u64>().ok()? as f64 + fields.get(12)?.parse::<u64>().ok()? as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 =
        status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(Usage { cpu_seconds: ticks / clock_ticks(), memory_bytes: rss_kb * 1024 })
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().filter(|t| *t > 0).unwrap_or(100)
        as f64
}

#[async_trait]
pub trait Runtime: Send + Sync {
    fn name(&self) -> &'static str;
    fn run_dirs(&self) -> &RunDirs;
    /// Starts the VM; returns once QEMU is set up and the guest resumed.
    async fn start(&self, config: &RunConfig) -> anyhow::Result<Actual>;
    async fn inspect(&self, vm_id: &str) -> anyhow::Result<Actual>;
    /// Every VM this runtime knows (running or not), for reconciliation.
    async fn list(&self) -> anyhow::Result<Vec<Actual>>;
    /// Ends QEMU at once (SIGKILL, or killing its container).
    async fn kill(&self, vm_id: &str) -> anyhow::Result<()>;
    /// Waits until what surrounds QEMU (vmrunner's clean-up, the container) is finished too.
    async fn finished(&self, _vm_id: &str) {}
    /// Forgets a deleted VM (removes its container).
    async fn remove(&self, _vm_id: &str) -> anyhow::Result<()> {
        Ok(())
    }
    /// Starts watching the runtime's own events (a container dying), waking `wake` on each, so the
    /// reconcile loop reacts at once rather than at its next tick.
    fn watch(&self, _wake: std::sync::Arc<tokio::sync::Notify>) {}
    /// The runtime's own account of how the last run ended (exit code, last log lines), if any.
    async fn exit_detail(&self, _vm_id: &str) -> Option<String> {
        None
    }
    /// CPU and memory of the running VM (its QEMU process, or its container).
    async fn usage(&self, vm_id: &str) -> Option<Usage> {
        process_usage(self.inspect(vm_id).await.ok()?.pid?)
    }

    /// ACPI power button (graceful), then QMP `quit`, then `kill`: each step only if the one before
    /// did not end QEMU in time.
    async fn stop(&self, vm_id: &str, mode: StopMode) -> anyhow::Result<()> {
        if self.inspect(vm_id).await?.running {
            let qmp = self.run_dirs().qmp(vm_id);
            let mut done = false;
            if let StopMode::Graceful { timeout } = mode {
                done = qmp::run(&qmp, &qmp::Command::system_powerdown()).await.is_ok()
                    && self.wait_gone(vm_id, timeout).await;
                if !done {
                    tracing::info!(vm_id, "guest did not power off in time; quitting QEMU");
                }
            }
            if !done {
                let _ = qmp::run(&qmp, &qmp::Command::quit()).await;
                done = self.wait_gone(vm_id, QUIT_GRACE).await;
            }
            if !done {
                tracing::warn!(vm_id, "QEMU did not quit; killing it");
                self.kill(vm_id).await?;
                if !self.wait_gone(vm_id, QUIT_GRACE).await {
                    bail!("QEMU of VM {vm_id} survived being killed");
                }
            }
        }
        self.finished(vm_id).await;
        Ok(())
    }

    async fn wait_gone(&self, vm_id: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if !self.inspect(vm_id).await.map(|a| a.running).unwrap_or(true) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Writes `vmrunner.json` (atomically) into a fresh run directory and returns its path.
pub fn write_run_config(config: &RunConfig) -> anyhow::Result<PathBuf> {
    let run_dir = &config.launch.run_dir;
    // Both exist before a container bind-mounts them.
    for dir in [run_dir, &config.launch.vm_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for stale in [READY_FILE, EXIT_FILE] {
        let _ = std::fs::remove_file(run_dir.join(stale));
    }
    let path = run_dir.join(CONFIG_FILE);
    let tmp = run_dir.join(format!("{CONFIG_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(config)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Waits for vmrunner's READY file; `failed` reports (with the reason) a run that ended first.
pub async fn wait_ready<F, Fut>(run_dir: &Path, mut failed: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<String>>>,
{
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if run_dir.join(READY_FILE).exists() {
            return Ok(());
        }
        if let Some(reason) = failed().await? {
            bail!("the VM did not start: {reason}");
        }
        if Instant::now() > deadline {
            bail!("the VM did not start within {} s", START_TIMEOUT.as_secs());
        }
        // Start-up latency is what operators feel, so poll finely.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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

    /// The files of the VM's current run.
    pub fn run(&self, vm_id: &str) -> RunDir {
        RunDir::new(self.of(vm_id))
    }

    /// The monitor the controller's commands go to.
    pub fn qmp(&self, vm_id: &str) -> PathBuf {
        let run = self.run(vm_id);
        qmp::socket_of(run.monitor(), run.qmp())
    }

    /// How the last run ended, if vmrunner recorded it.
    pub fn exit_record(&self, vm_id: &str) -> Option<ExitRecord> {
        let bytes = std::fs::read(self.of(vm_id).join(EXIT_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// At most this much of a log's end is read, however long the log has grown.
const TAIL_BYTES: u64 = 1 << 20;

/// The last `lines` lines of a text file (empty when it does not exist).
pub fn tail(path: &Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else { return String::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(TAIL_BYTES);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    // The first line of a window that starts mid-file is partial.
    let skip = usize::from(start > 0).max(all.len().saturating_sub(lines));
    all[skip.min(all.len())..].join("\n")
}
