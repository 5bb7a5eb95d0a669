//! The embedded-default runtime: `vmrunner` as a child process in its own session, so stopping or
//! restarting the controller never takes a VM down with it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vmrunner::run_config::{CONFIG_FILE, PID_FILE, READY_FILE, RunConfig};

use super::{Actual, RunDirs, Runtime, StopMode, tail};
use crate::qmp;

const START_TIMEOUT: Duration = Duration::from_secs(60);
const QUIT_GRACE: Duration = Duration::from_secs(5);
/// How long vmrunner may take to clean up (swtpm, taps) after QEMU exits.
const CLEANUP_GRACE: Duration = Duration::from_secs(10);

pub struct ProcessRuntime {
    pub vmrunner: PathBuf,
    pub dirs: RunDirs,
}

impl ProcessRuntime {
    /// QEMU's pid if it is alive and really this VM's QEMU (pids get reused).
    fn qemu_pid(&self, vm_id: &str) -> Option<u32> {
        let pid: u32 =
            std::fs::read_to_string(self.dirs.of(vm_id).join("qemu.pid")).ok()?.trim().parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let marker = format!("process=fastvm-{vm_id}");
        let ours = cmdline.split(|b| *b == 0).any(|arg| String::from_utf8_lossy(arg).contains(&marker));
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
            .unwrap_or(false);
        (ours && !zombie).then_some(pid)
    }

    /// Whether this VM's vmrunner is still alive (it may outlive QEMU briefly while it cleans up).
    fn runner_alive(&self, vm_id: &str) -> bool {
        let Some(pid) = std::fs::read_to_string(self.dirs.of(vm_id).join(PID_FILE))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        else {
            return false;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let config = self.dirs.of(vm_id).join(CONFIG_FILE);
        String::from_utf8_lossy(&cmdline).contains(&*config.to_string_lossy())
    }

    /// Waits for the previous run to be completely over, so its clean-up cannot undo the next run's set-up.
    async fn wait_runner_done(&self, vm_id: &str) -> bool {
        let deadline = Instant::now() + CLEANUP_GRACE;
        while self.runner_alive(vm_id) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    async fn wait_gone(&self, vm_id: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.qemu_pid(vm_id).is_none() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// ACPI (for a graceful stop), then QMP quit, then SIGKILL: each step only if the one before failed.
    async fn stop_qemu(&self, vm_id: &str, mode: StopMode) -> anyhow::Result<()> {
        let Some(pid) = self.qemu_pid(vm_id) else { return Ok(()) };
        let qmp = self.dirs.qmp(vm_id);
        if let StopMode::Graceful { timeout } = mode {
            if qmp::command(&qmp, "system_powerdown", None).await.is_ok()
                && self.wait_gone(vm_id, timeout).await
            {
                return Ok(());
            }
            tracing::info!(vm_id, "guest did not power off in time; quitting QEMU");
        }
        let _ = qmp::command(&qmp, "quit", None).await;
        if self.wait_gone(vm_id, QUIT_GRACE).await {
            return Ok(());
        }
        tracing::warn!(vm_id, pid, "QEMU did not quit; killing it");
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        if !self.wait_gone(vm_id, QUIT_GRACE).await {
            bail!("QEMU (pid {pid}) survived SIGKILL");
        }
        Ok(())
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn start(&self, config: &RunConfig) -> anyhow::Result<Actual> {
        let vm_id = config.launch.vm_id.clone();
        let run_dir = config.launch.run_dir.clone();
        if !self.wait_runner_done(&vm_id).await {
            bail!("the previous run of this VM is still shutting down; try again");
        }
        std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
        for stale in [READY_FILE, vmrunner::run_config::EXIT_FILE] {
            let _ = std::fs::remove_file(run_dir.join(stale));
        }
        let config_path = run_dir.join(CONFIG_FILE);
        let tmp = run_dir.join(format!("{CONFIG_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(config)?)?;
        std::fs::rename(&tmp, &config_path)?;

        let log_path = run_dir.join("vmrunner.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut cmd = tokio::process::Command::new(&self.vmrunner);
        cmd.arg("run").arg(&config_path).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        // A session of its own: no signal aimed at the controller's terminal or process group
        // (Ctrl-C, a service manager stopping the controller) reaches the VM.
        #[allow(unsafe_code)]
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {}", self.vmrunner.display()))?;

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if run_dir.join(READY_FILE).exists() {
                break;
            }
            if let Some(status) = child.try_wait()? {
                let reason =
                    self.dirs.exit_record(&vm_id).and_then(|r| r.error).unwrap_or_else(|| tail(&log_path, 5));
                bail!("the VM did not start ({status}): {reason}");
            }
            if Instant::now() > deadline {
                let _ = child.start_kill();
                bail!("the VM did not start within {} s: {}", START_TIMEOUT.as_secs(), tail(&log_path, 5));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Reap vmrunner when it ends so it does not linger as a zombie while the controller runs.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(Actual { vm_id: vm_id.clone(), running: true, pid: self.qemu_pid(&vm_id) })
    }

    async fn stop(&self, vm_id: &str, mode: StopMode) -> anyhow::Result<()> {
        self.stop_qemu(vm_id, mode).await?;
        if !self.wait_runner_done(vm_id).await {
            tracing::warn!(vm_id, "vmrunner is still cleaning up after QEMU exited");
        }
        Ok(())
    }
    async fn inspect(&self, vm_id: &str) -> anyhow::Result<Actual> {
        let pid = self.qemu_pid(vm_id);
        Ok(Actual { vm_id: vm_id.to_string(), running: pid.is_some(), pid })
    }

    async fn list(&self) -> anyhow::Result<Vec<Actual>> {
        let mut found = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dirs.root) else { return Ok(found) };
        for entry in entries.filter_map(Result::ok) {
            let id = entry.file_name().to_string_lossy().to_string();
            if let Some(pid) = self.qemu_pid(&id) {
                found.push(Actual { vm_id: id, running: true, pid: Some(pid) });
            }
        }
        Ok(found)
    }
}
