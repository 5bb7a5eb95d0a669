//! The embedded-default runtime: `vmrunner` as a child process in its own session, so stopping or
//! restarting the controller never takes a VM down with it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vmrunner::run_config::{CONFIG_FILE, PID_FILE, RunConfig};

use super::{Actual, RunDirs, Runtime, tail, wait_ready, write_run_config};

/// How long vmrunner may take to clean up (swtpm, taps) after QEMU exits.
const CLEANUP_GRACE: Duration = Duration::from_secs(10);

pub struct ProcessRuntime {
    pub vmrunner: std::path::PathBuf,
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
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    fn run_dirs(&self) -> &RunDirs {
        &self.dirs
    }

    async fn start(&self, config: &RunConfig) -> anyhow::Result<Actual> {
        let vm_id = config.launch.vm_id.clone();
        if !self.wait_runner_done(&vm_id).await {
            bail!("the previous run of this VM is still shutting down; try again");
        }
        let config_path = write_run_config(config)?;
        let log_path = config.launch.run().vmrunner_log();
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
        let ready = wait_ready(&config.launch.run_dir, || {
            let exited = child.try_wait();
            let reason = |status| {
                let why =
                    self.dirs.exit_record(&vm_id).and_then(|r| r.error).unwrap_or_else(|| tail(&log_path, 5));
                format!("({status}) {why}")
            };
            std::future::ready(exited.map(|s| s.map(reason)).map_err(anyhow::Error::from))
        })
        .await;
        if let Err(e) = ready {
            // vmrunner leads its own session and process group: end QEMU and swtpm with it, so a
            // start that failed never leaves a guest running behind the operator's back.
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            let _ = child.wait().await;
            return Err(e);
        }
        // Reap vmrunner when it ends so it does not linger as a zombie while the controller runs.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(Actual { vm_id: vm_id.clone(), running: true, pid: self.qemu_pid(&vm_id) })
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
            let pid = self.qemu_pid(&id);
            found.push(Actual { vm_id: id, running: pid.is_some(), pid });
        }
        Ok(found)
    }

    async fn kill(&self, vm_id: &str) -> anyhow::Result<()> {
        if let Some(pid) = self.qemu_pid(vm_id) {
            kill(Pid::from_raw(pid as i32), Signal::SIGKILL)
                .with_context(|| format!("killing QEMU {pid}"))?;
        }
        Ok(())
    }

    async fn finished(&self, vm_id: &str) {
        if !self.wait_runner_done(vm_id).await {
            tracing::warn!(vm_id, "vmrunner is still cleaning up after QEMU exited");
        }
    }
}
