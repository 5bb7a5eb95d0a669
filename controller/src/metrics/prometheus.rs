//! The Prometheus text format of `GET /metrics` (`api::prometheus`): host and VM gauges from the
//! last collection, and the controller's own HTTP request counters and latency histogram.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// Requests by (method, route, status).
type Counts = HashMap<(String, String, u16), u64>;
/// Latencies by (method, route).
type Latencies = HashMap<(String, String), Histogram>;

/// Request counts and latencies. Routes are the matched templates (`/api/vms/{vm_id}`), so the
/// number of series stays bounded.
#[derive(Default)]
pub struct HttpStats {
    inner: Mutex<(Counts, Latencies)>,
}

impl HttpStats {
    pub fn record(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (counts, latencies) = &mut *guard;
        *counts.entry((method.into(), route.into(), status)).or_default() += 1;
        let h = latencies.entry((method.into(), route.into())).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The metrics page, in the Prometheus text exposition format (version 0.0.4).
pub fn render(metrics: &super::Metrics) -> String {
    let mut out = String::with_capacity(8192);
    if let Some(s) = metrics.snapshot() {
        let h = &s.host;
        let gauges: [(&str, &str, f64); 11] = [
            ("fastvm_host_cpu_percent", "Host CPU use, percent of all cores.", h.cpu_percent),
            ("fastvm_host_memory_total_bytes", "Host memory.", h.memory_total_gb * 1073741824.0),
            ("fastvm_host_memory_used_bytes", "Host memory in use.", h.memory_used_gb * 1073741824.0),
            (
                "fastvm_host_disk_total_bytes",
                "Size of the data directory's filesystem.",
                h.disk_total_gb * 1073741824.0,
            ),
            (
                "fastvm_host_disk_used_bytes",
                "Used space on the data directory's filesystem.",
                h.disk_used_gb * 1073741824.0,
            ),
            (
                "fastvm_host_network_receive_bytes_per_second",
                "Host network receive rate.",
                h.net_rx_bytes_per_s,
            ),
            (
                "fastvm_host_network_transmit_bytes_per_second",
                "Host network transmit rate.",
                h.net_tx_bytes_per_s,
            ),
            ("fastvm_host_load1", "Load average over 1 minute.", h.load_1),
            ("fastvm_host_load5", "Load average over 5 minutes.", h.load_5),
            ("fastvm_host_load15", "Load average over 15 minutes.", h.load_15),
            ("fastvm_host_uptime_seconds", "Host uptime.", h.uptime_seconds as f64),
        ];
        for (name, help, value) in gauges {
            family(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
        family(&mut out, "fastvm_vms_running", "gauge", "Running VMs.");
        let _ = writeln!(out, "fastvm_vms_running {}", s.vms.len());
        type Field = fn(&super::vm::VmMetrics) -> f64;
        let vm_series: [(&str, &str, &str, Field); 8] = [
            ("fastvm_vm_cpu_percent", "gauge", "QEMU CPU use, percent of one core.", |m| m.cpu_percent),
            ("fastvm_vm_memory_bytes", "gauge", "Resident memory of QEMU or its container.", |m| {
                m.memory_bytes as f64
            }),
            ("fastvm_vm_disk_read_bytes_total", "counter", "Bytes the guest read from its disks.", |m| {
                m.disk_read_bytes_total as f64
            }),
            ("fastvm_vm_disk_written_bytes_total", "counter", "Bytes the guest wrote to its disks.", |m| {
                m.disk_write_bytes_total as f64
            }),
            ("fastvm_vm_disk_read_bytes_per_second", "gauge", "Disk read rate.", |m| m.disk_read_bytes_per_s),
            ("fastvm_vm_disk_write_bytes_per_second", "gauge", "Disk write rate.", |m| {
                m.disk_write_bytes_per_s
            }),
            (
                "fastvm_vm_network_receive_bytes_per_second",
                "gauge",
                "Guest NIC receive rate (guest agent).",
                |m| m.net_rx_bytes_per_s.unwrap_or(0.0),
            ),
            (
                "fastvm_vm_network_transmit_bytes_per_second",
                "gauge",
                "Guest NIC transmit rate (guest agent).",
                |m| m.net_tx_bytes_per_s.unwrap_or(0.0),
            ),
        ];
        for (name, kind, help, field) in vm_series {
            family(&mut out, name, kind, help);
            for m in &s.vms {
                let _ = writeln!(
                    out,
                    "{name}{{vm_id=\"{}\",vm_name=\"{}\"}} {}",
                    escape(&m.vm_id),
                    escape(&m.name),
                    field(m)
                );
            }
        }
    }
    let guard = metrics.http.inner.lock().unwrap_or_else(|e| e.into_inner());
    let (counts, latencies) = &*guard;
    family(&mut out, "fastvm_http_requests_total", "counter", "API requests by method, route and status.");
    let mut counts: Vec<_> = counts.iter().collect();
    counts.sort();
    for ((method, route, status), n) in counts {
        let _ = writeln!(
            out,
            "fastvm_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
            escape(method),
            escape(route)
        );
    }
    let name = "fastvm_http_request_duration_seconds";
    family(&mut out, name, "histogram", "API request latency by method and route.");
    let mut latencies: Vec<_> = latencies.iter().collect();
    latencies.sort_by(|a, b| a.0.cmp(b.0));
    for ((method, route), h) in latencies {
        let labels = format!("method=\"{}\",route=\"{}\"", escape(method), escape(route));
        for (bound, n) in BUCKETS.iter().zip(h.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
    }
    out
}
