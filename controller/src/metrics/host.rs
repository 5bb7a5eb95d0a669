//! Host readings: CPU (total and per core), memory, the data directory's filesystem, network
//! throughput, load and uptime. CPU and network figures are rates since the previous reading.

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
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn percent(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { round2(part / whole * 100.0) } else { 0.0 }
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
            net_rx_bytes_per_s: (rx as f64 / elapsed).round(),
            net_tx_bytes_per_s: (tx as f64 / elapsed).round(),
            load_1: load.one,
            load_5: load.five,
            load_15: load.fifteen,
            uptime_seconds: System::uptime(),
        }
    }
}
