//! Readings of this host that VM management needs: limits, acceleration, binaries, network links.

use std::path::{Path, PathBuf};

use serde::Serialize;
use utoipa::ToSchema;
use vmrunner::argv::Accel;

/// A line of /proc/meminfo, in MiB.
fn meminfo_mib(key: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        text.lines()
            .find(|l| l.strip_prefix(key).is_some_and(|rest| rest.starts_with(':')))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb / 1024)
    })
}

/// Total RAM in MiB.
pub fn memory_mib() -> u64 {
    meminfo_mib("MemTotal").unwrap_or(0)
}

/// RAM a new VM can have now without swapping others out, in MiB (the kernel's estimate).
pub fn available_memory_mib() -> u64 {
    meminfo_mib("MemAvailable").unwrap_or_else(memory_mib)
}

pub fn cpus() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
}

pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

/// Whether QEMU really runs guests with KVM here: /dev/kvm opening is not enough (under some
/// nested hypervisors QEMU with KVM and `-cpu host` aborts at once setting an MSR).
#[derive(Debug, Clone)]
pub struct KvmProbe {
    pub usable: bool,
    /// What was found, or why KVM cannot be used.
    pub detail: String,
}

static KVM_PROBE: tokio::sync::OnceCell<KvmProbe> = tokio::sync::OnceCell::const_new();

/// The probe's result, found once per process: a paused QEMU with KVM and the default CPU model
/// (`host`), asked `query-kvm`, then told to quit.
pub async fn kvm_probe(qemu: &Path) -> KvmProbe {
    KVM_PROBE.get_or_init(|| probe_kvm(qemu.to_path_buf())).await.clone()
}

/// The probe's result if it ran (it runs when the controller starts).
pub fn kvm_probed() -> Option<KvmProbe> {
    KVM_PROBE.get().cloned()
}

async fn probe_kvm(qemu: PathBuf) -> KvmProbe {
    let refused = |detail: String| KvmProbe { usable: false, detail };
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        return refused(format!("/dev/kvm: {e}"));
    }
    let Ok(dir) = tempfile::tempdir() else { return refused("no temporary directory for the probe".into()) };
    let socket = dir.path().join("probe.sock");
    let mut cmd = tokio::process::Command::new(&qemu);
    cmd.args(["-accel", "kvm", "-cpu", "host", "-machine", "q35", "-m", "64", "-S", "-nodefaults"])
        .args(["-no-user-config", "-display", "none", "-qmp"])
        .arg(format!("unix:{},server=on,wait=off", socket.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return refused(format!("{}: {e}", qemu.display())),
    };
    let asked = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while !socket.exists() {
            if child.try_wait().ok().flatten().is_some() {
                anyhow::bail!("QEMU exited");
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let mut qmp = crate::qmp::Qmp::connect(&socket).await?;
        let kvm = qmp.execute(&crate::qmp::Command::query_kvm()).await?;
        let _ = qmp.execute(&crate::qmp::Command::quit()).await;
        anyhow::Ok(kvm)
    })
    .await;
    let answer = match asked {
        Ok(Ok(kvm)) if kvm["enabled"] == true => {
            let _ = child.wait().await;
            return KvmProbe { usable: true, detail: "QEMU runs with KVM and -cpu host".into() };
        }
        Ok(Ok(kvm)) => format!("QEMU reports KVM {kvm}"),
        Ok(Err(e)) => format!("{e:#}"),
        Err(_) => "QEMU with KVM did not answer within 30 s".into(),
    };
    let _ = child.start_kill();
    let stderr = match child.wait_with_output().await {
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or_default().to_string(),
        Err(_) => String::new(),
    };
    refused(if stderr.is_empty() { answer } else { format!("{answer}: {stderr}") })
}

/// `FASTVM_ACCEL`: `kvm`, `tcg`, or `auto` (KVM when the probe found it working). With `auto` and no
/// working KVM, the reason goes with TCG, for the VMs that run with it.
pub fn choose_accel(setting: &str, kvm: &KvmProbe) -> anyhow::Result<(Accel, Option<String>)> {
    match setting.trim().to_ascii_lowercase().as_str() {
        "kvm" => {
            anyhow::ensure!(kvm.usable, "FASTVM_ACCEL=kvm but KVM does not work here: {}", kvm.detail);
            Ok((Accel::Kvm, None))
        }
        "tcg" => Ok((Accel::Tcg, None)),
        "" | "auto" if kvm.usable => Ok((Accel::Kvm, None)),
        "" | "auto" => {
            let note =
                format!("KVM does not work on this host ({}): running with TCG, much slower", kvm.detail);
            tracing::warn!("{note}");
            Ok((Accel::Tcg, Some(note)))
        }
        other => anyhow::bail!("FASTVM_ACCEL must be auto, kvm or tcg, not {other:?}"),
    }
}

/// First executable called `name` on the PATH.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| {
            m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
        })
    })
}

/// A program to run: an explicit path, else a file next to our own executable, else the PATH.
pub fn locate_program(explicit: Option<&Path>, name: &str) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    let sibling = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|d| d.join(name)));
    sibling.filter(|p| p.is_file()).or_else(|| find_in_path(name))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NetInterface {
    pub name: String,
    pub mac_address: Option<String>,
    /// `up`, `down`, `unknown`...
    pub state: String,
    /// `bridge`, `physical`, `virtual`, `loopback`.
    pub kind: String,
    pub mtu: Option<u32>,
}

fn read_trim(path: PathBuf) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// Network interfaces from /sys/class/net.
pub fn interfaces() -> Vec<NetInterface> {
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else { return Vec::new() };
    let mut list: Vec<NetInterface> = entries
        .filter_map(Result::ok)
        .map(|e| {
            let dir = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            let kind = if dir.join("bridge").is_dir() {
                "bridge"
            } else if name == "lo" {
                "loopback"
            } else if dir.join("device").exists() {
                "physical"
            } else {
                "virtual"
            };
            NetInterface {
                mac_address: read_trim(dir.join("address")).filter(|m| !m.is_empty()),
                state: read_trim(dir.join("operstate")).unwrap_or_else(|| "unknown".into()),
                mtu: read_trim(dir.join("mtu")).and_then(|m| m.parse().ok()),
                kind: kind.into(),
                name,
            }
        })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    list
}
