//! A QEMU with no guest (`-machine none`) holding only a stopped VM's disk, so that a backup of a
//! stopped VM runs the very block jobs a running VM's QEMU does: an incremental copy through the
//! disk's persistent dirty bitmap, and a new bitmap started in the same transaction. Quitting it
//! writes the bitmaps back into the image.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

use crate::qmp;

pub struct BlockHelper {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl BlockHelper {
    /// Opens `disk` (qcow2; a base it names is opened read-only with it) as block node `node`.
    /// `work`: a directory for its monitor socket.
    pub async fn start(qemu: &Path, disk: &Path, node: &str, work: &Path) -> anyhow::Result<BlockHelper> {
        let dir = tempfile::Builder::new().prefix(".backup-").tempdir_in(work).context("helper directory")?;
        let socket = dir.path().join("qmp.sock");
        let blockdev = serde_json::json!({"driver": "qcow2", "node-name": node, "file": {"driver": "file", "filename": disk}});
        let child = Command::new(qemu)
            .args(["-machine", "none", "-nodefaults", "-display", "none", "-S", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", socket.display()))
            .arg("-blockdev")
            .arg(blockdev.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", qemu.display()))?;
        let mut helper = BlockHelper { child, socket, _dir: dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if helper.socket.exists() && qmp::run(&helper.socket, &qmp::Command::query_status()).await.is_ok()
            {
                return Ok(helper);
            }
            if let Some(status) = helper.child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = helper.child.stderr.take() {
                    let _ = tokio::io::AsyncReadExt::read_to_string(&mut e, &mut err).await;
                }
                anyhow::bail!("QEMU could not open the disk ({status}): {}", err.trim());
            }
            anyhow::ensure!(std::time::Instant::now() < deadline, "QEMU did not answer on its monitor");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn monitor(&self) -> &Path {
        &self.socket
    }

    /// Quits QEMU, which writes the persistent bitmaps into the image; killed if it does not go.
    pub async fn quit(mut self) {
        let _ = qmp::run(&self.socket, &qmp::Command::quit()).await;
        qmp::monitors().forget(&self.socket);
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.is_err() {
            tracing::warn!("the backup's helper QEMU did not quit: killed");
            let _ = self.child.kill().await;
        }
    }
}

/// Kills the helper QEMUs a controller killed mid-backup left holding disks under `vms_dir` (at the
/// next start; a controller that stops normally kills its helper as it drops it).
pub fn kill_strays(vms_dir: &Path) {
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    let ours = format!("{}/", vms_dir.display());
    for entry in entries.filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> =
            cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let helper = args.windows(2).any(|w| w[0] == "-machine" && w[1] == "none")
            && args.iter().any(|a| a.starts_with("unix:") && a.contains(&ours) && a.contains("/.backup-"));
        if helper {
            tracing::info!(pid, "killing a backup's helper QEMU left by an earlier run");
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}
