//! Per-VM readings: CPU and memory of its QEMU (or container), guest memory from the balloon, disk
//! throughput from QMP `query-blockstats`, and NIC throughput and addresses from the guest agent.

use std::collections::HashMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::guest_agent::GuestInterface;
use crate::runtime::Usage;

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct VmMetrics {
    /// Unix seconds.
    pub ts: i64,
    pub vm_id: String,
    pub name: String,
    /// Percent of one host core (several busy vCPUs go above 100), like `top`.
    pub cpu_percent: f64,
    /// Resident memory of QEMU (process runtime) or of the container (docker runtime).
    pub memory_bytes: u64,
    /// What the guest has, from the balloon device, when there is one.
    pub guest_memory_bytes: Option<u64>,
    pub disk_read_bytes_per_s: f64,
    pub disk_write_bytes_per_s: f64,
    pub disk_read_ops_per_s: f64,
    pub disk_write_ops_per_s: f64,
    pub disk_read_bytes_total: u64,
    pub disk_write_bytes_total: u64,
    /// From the guest agent's interface counters (absent without an agent).
    pub net_rx_bytes_per_s: Option<f64>,
    pub net_tx_bytes_per_s: Option<f64>,
}

/// Disk counters summed over the VM's devices.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DiskCounters {
    pub rd_bytes: u64,
    pub wr_bytes: u64,
    pub rd_ops: u64,
    pub wr_ops: u64,
}

/// Sums `query-blockstats` over the guest's devices (block jobs' nodes have no device).
pub fn disk_counters(blockstats: &Value) -> DiskCounters {
    let mut c = DiskCounters::default();
    for dev in blockstats.as_array().into_iter().flatten() {
        if dev["qdev"].as_str().is_none_or(str::is_empty) {
            continue;
        }
        let s = &dev["stats"];
        c.rd_bytes += s["rd_bytes"].as_u64().unwrap_or(0);
        c.wr_bytes += s["wr_bytes"].as_u64().unwrap_or(0);
        c.rd_ops += s["rd_operations"].as_u64().unwrap_or(0);
        c.wr_ops += s["wr_operations"].as_u64().unwrap_or(0);
    }
    c
}

/// One reading of a VM's raw counters.
#[derive(Debug, Clone)]
pub struct Reading {
    /// When CPU and memory were read.
    pub at: Instant,
    /// When the disk counters were read (QMP can take a while on a loaded host, so CPU and disk
    /// rates each use their own clock).
    pub disks_at: Instant,
    /// When the guest agent's interface counters were read.
    pub net_at: Instant,
    pub usage: Option<Usage>,
    pub disks: Option<DiskCounters>,
    pub guest_memory_bytes: Option<u64>,
    pub interfaces: Option<Vec<GuestInterface>>,
}

fn net_totals(interfaces: &Option<Vec<GuestInterface>>) -> Option<(u64, u64)> {
    let list = interfaces.as_ref()?;
    let mut any = false;
    let (mut rx, mut tx) = (0, 0);
    for i in list {
        if let (Some(r), Some(t)) = (i.rx_bytes, i.tx_bytes) {
            (rx, tx, any) = (rx + r, tx + t, true);
        }
    }
    any.then_some((rx, tx))
}

/// A counter's rate per second between two readings (a counter that went back, as after a restart,
/// gives 0).
fn rate(now: u64, before: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 { 0.0 } else { (now.saturating_sub(before) as f64 / seconds * 10.0).round() / 10.0 }
}

/// Turns this reading and the previous one into rates.
pub fn metrics(vm_id: &str, name: &str, ts: i64, now: &Reading, before: Option<&Reading>) -> VmMetrics {
    let seconds = before.map(|b| now.at.duration_since(b.at).as_secs_f64()).unwrap_or(0.0);
    let disk_seconds = before.map(|b| now.disks_at.duration_since(b.disks_at).as_secs_f64()).unwrap_or(0.0);
    let cpu_percent = match (now.usage, before.and_then(|b| b.usage)) {
        (Some(n), Some(b)) if seconds > 0.0 => {
            ((n.cpu_seconds - b.cpu_seconds).max(0.0) / seconds * 1000.0).round() / 10.0
        }
        _ => 0.0,
    };
    let disks = now.disks.unwrap_or_default();
    let prev_disks = before.and_then(|b| b.disks).unwrap_or(disks);
    let net = net_totals(&now.interfaces);
    let prev_net = before.and_then(|b| Some((net_totals(&b.interfaces)?, b.net_at)));
    let (net_rx, net_tx) = match (net, prev_net) {
        (Some((r, t)), Some(((pr, pt), then))) => {
            let s = now.net_at.duration_since(then).as_secs_f64();
            (Some(rate(r, pr, s)), Some(rate(t, pt, s)))
        }
        _ => (None, None),
    };
    VmMetrics {
        ts,
        vm_id: vm_id.into(),
        name: name.into(),
        cpu_percent,
        memory_bytes: now.usage.map(|u| u.memory_bytes).unwrap_or(0),
        guest_memory_bytes: now.guest_memory_bytes,
        disk_read_bytes_per_s: rate(disks.rd_bytes, prev_disks.rd_bytes, disk_seconds),
        disk_write_bytes_per_s: rate(disks.wr_bytes, prev_disks.wr_bytes, disk_seconds),
        disk_read_ops_per_s: rate(disks.rd_ops, prev_disks.rd_ops, disk_seconds),
        disk_write_ops_per_s: rate(disks.wr_ops, prev_disks.wr_ops, disk_seconds),
        disk_read_bytes_total: disks.rd_bytes,
        disk_write_bytes_total: disks.wr_bytes,
        net_rx_bytes_per_s: net_rx,
        net_tx_bytes_per_s: net_tx,
    }
}

/// The previous reading of every VM, for rates.
pub type Readings = HashMap<String, Reading>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn rates_come_from_two_readings() {
        let t0 = Instant::now();
        let before = Reading {
            at: t0,
            disks_at: t0,
            net_at: t0,
            usage: Some(Usage { cpu_seconds: 10.0, memory_bytes: 1 }),
            disks: Some(DiskCounters { rd_bytes: 1000, wr_bytes: 0, rd_ops: 1, wr_ops: 0 }),
            guest_memory_bytes: None,
            interfaces: None,
        };
        let now = Reading {
            at: t0 + Duration::from_secs(2),
            disks_at: t0 + Duration::from_secs(2),
            net_at: t0 + Duration::from_secs(2),
            usage: Some(Usage { cpu_seconds: 11.0, memory_bytes: 300 }),
            disks: Some(DiskCounters { rd_bytes: 5000, wr_bytes: 2000, rd_ops: 5, wr_ops: 2 }),
            guest_memory_bytes: Some(256 << 20),
            interfaces: None,
        };
        let m = metrics("v", "n", 0, &now, Some(&before));
        assert_eq!(m.cpu_percent, 50.0);
        assert_eq!(m.memory_bytes, 300);
        assert_eq!(m.disk_read_bytes_per_s, 2000.0);
        assert_eq!(m.disk_write_ops_per_s, 1.0);
        assert_eq!(m.net_rx_bytes_per_s, None);
        let first = metrics("v", "n", 0, &now, None);
        assert_eq!((first.cpu_percent, first.disk_read_bytes_per_s), (0.0, 0.0));
    }

    #[test]
    fn blockstats_sum_devices_only() {
        let stats = json!([
            {"device": "", "qdev": "/machine/peripheral/vd0/virtio-backend", "stats": {"rd_bytes": 10, "wr_bytes": 20, "rd_operations": 1, "wr_operations": 2}},
            {"device": "", "qdev": "/machine/peripheral/voldev-x/virtio-backend", "stats": {"rd_bytes": 5, "wr_bytes": 0, "rd_operations": 1, "wr_operations": 0}},
            {"device": "", "node-name": "backup-1", "stats": {"rd_bytes": 999, "wr_bytes": 999}}
        ]);
        assert_eq!(disk_counters(&stats), DiskCounters { rd_bytes: 15, wr_bytes: 20, rd_ops: 2, wr_ops: 2 });
    }
}
