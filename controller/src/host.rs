//! Readings of this host that VM management needs: limits, acceleration, binaries, network links.

use std::path::{Path, PathBuf};

use serde::Serialize;
use utoipa::ToSchema;
use vmrunner::argv::Accel;

use crate::system::find_in_path;

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

/// `FASTVM_ACCEL`: `kvm`, `tcg`, or `auto` (KVM when /dev/kvm is usable).
pub fn choose_accel(setting: &str) -> anyhow::Result<Accel> {
    match setting.trim().to_ascii_lowercase().as_str() {
        "kvm" => {
            anyhow::ensure!(kvm_usable(), "FASTVM_ACCEL=kvm but /dev/kvm is not usable");
            Ok(Accel::Kvm)
        }
        "tcg" => Ok(Accel::Tcg),
        "" | "auto" => Ok(if kvm_usable() { Accel::Kvm } else { Accel::Tcg }),
        other => anyhow::bail!("FASTVM_ACCEL must be auto, kvm or tcg, not {other:?}"),
    }
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
