//! Host readings: CPU (total and per core), memory, the data directory's filesystem, disk and
//! network throughput, load and uptime. CPU, disk and network figures are rates since the previous
//! reading.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, Networks, RefreshKind, System};
use utoipa::ToSchema;

const GB: f64 = 1024.0 * 1024.0 * 1024.0;

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct HostMetrics {
    /// Unix seconds.
    pub ts: i64,
    pub cpu_percent: f64,
    pub cpu_per_core: Vec<f64>,
    pub memory_total_gb: f64,
    pub memory_used_gb: f64,
    pub memory_percent: f64,
    /// The filesystem of the data directory (where disks, backups and ISOs live).
    pub disk_total_gb: f64,
    pub disk_used_gb: f64,
    pub disk_percent: f64,
    /// All physical block devices (not loop, RAM or device-mapper ones, which would count twice).
    #[serde(default)]
    pub disk_read_bytes_per_s: f64,
    #[serde(default)]
    pub disk_write_bytes_per_s: f64,
    /// All interfaces but loopback.
    pub net_rx_bytes_per_s: f64,
    pub net_tx_bytes_per_s: f64,
    pub load_1: f64,
    pub load_5: f64,
    pub load_15: f64,
    pub uptime_seconds: u64,
}

pub struct HostSampler {
    system: System,
    networks: Networks,
    data_dir: PathBuf,
    last: Instant,
    /// Bytes (read, written) of the physical disks at the previous reading.
    disk_bytes: Option<(u64, u64)>,
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn percent(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { round2(part / whole * 100.0) } else { 0.0 }
}

/// Bytes (read, written) by whole physical disks since boot, from `/proc/diskstats` (sectors are
/// 512 bytes there whatever the device's own sector size).
fn disk_bytes() -> Option<(u64, u64)> {
    let stats = std::fs::read_to_string("/proc/diskstats").ok()?;
    Some(
        stats
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let name = f.get(2)?;
                // Partitions and virtual devices have no `device` link under /sys/block.
                if !Path::new("/sys/block").join(name).join("device").exists() {
                    return None;
                }
                Some((f.get(5)?.parse::<u64>().ok()? * 512, f.get(9)?.parse::<u64>().ok()? * 512))
            })
            .fold((0, 0), |(r, w), (dr, dw)| (r + dr, w + dw)),
    )
}

/// (total, used) bytes of the filesystem holding `path`.
fn filesystem(path: &Path) -> (f64, f64) {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => {
            let block = s.fragment_size() as f64;
            let total = s.blocks() as f64 * block;
            let free = s.blocks_free() as f64 * block;
            (total, total - free)
        }
        Err(_) => (0.0, 0.0),
    }
}

impl HostSampler {
    pub fn new(data_dir: PathBuf) -> Self {
        let kinds = RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing().with_cpu_usage())
            .with_memory(MemoryRefreshKind::nothing().with_ram());
        HostSampler {
            system: System::new_with_specifics(kinds),
            networks: Networks::new_with_refreshed_list(),
            data_dir,
            last: Instant::now(),
            disk_bytes: disk_bytes(),
        }
    }

    pub fn sample(&mut self, ts: i64) -> HostMetrics {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.networks.refresh(true);
        let elapsed = self.last.elapsed().as_secs_f64().max(0.001);
        self.last = Instant::now();
        let (rx, tx) = self
            .networks
            .iter()
            .filter(|(name, _)| name.as_str() != "lo")
            .fold((0u64, 0u64), |(r, t), (_, n)| (r + n.received(), t + n.transmitted()));
        let (disk_total, disk_used) = filesystem(&self.data_dir);
        let disks = disk_bytes();
        let (read, written) = match (self.disk_bytes, disks) {
            (Some((r0, w0)), Some((r1, w1))) => (r1.saturating_sub(r0), w1.saturating_sub(w0)),
            _ => (0, 0),
        };
        self.disk_bytes = disks;
        let total = self.system.total_memory() as f64;
        let used = total - self.system.available_memory() as f64;
        let load = System::load_average();
        HostMetrics {
            ts,
            cpu_percent: round2(self.system.global_cpu_usage() as f64),
            cpu_per_core: self.system.cpus().iter().map(|c| round2(c.cpu_usage() as f64)).collect(),
            memory_total_gb: round2(total / GB),
            memory_used_gb: round2(used / GB),
            memory_percent: percent(used, total),
            disk_total_gb: round2(disk_total / GB),
            disk_used_gb: round2(disk_used / GB),
            disk_percent: percent(disk_used, disk_total),
            disk_read_bytes_per_s: (read as f64 / elapsed).round(),
            disk_write_bytes_per_s: (written as f64 / elapsed).round(),
            net_rx_bytes_per_s: (rx as f64 / elapsed).round(),
            net_tx_bytes_per_s: (tx as f64 / elapsed).round(),
            load_1: load.one,
            load_5: load.five,
            load_15: load.fifteen,
            uptime_seconds: System::uptime(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_synced_write_shows_in_the_disk_counters() -> std::io::Result<()> {
        let before = disk_bytes().expect("/proc/diskstats lists a physical disk");
        let dir = tempfile::tempdir_in(std::env::current_dir()?)?;
        let mut f = std::fs::File::create(dir.path().join("blob"))?;
        f.write_all(&vec![7u8; 4 << 20])?;
        f.sync_all()?;
        let after = disk_bytes().expect("still readable");
        assert!(after.1 >= before.1 + (4 << 20), "{before:?} -> {after:?}");
        Ok(())
    }
}
