//! Live metrics: one collector task reads the host and every running VM each
//! `FASTVM_METRICS_INTERVAL` seconds, keeps history (see `history`), pushes each pass to
//! `/ws/metrics` (`api::metrics_push`) and serves it as JSON and in the Prometheus format (see
//! `prometheus`).

pub mod history;
pub mod host;
pub mod prometheus;
pub mod vm;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;
use utoipa::{IntoParams, ToSchema};

use crate::auth::users::SessionUser;
use crate::error::{ApiError, ApiResult};
use crate::guest_agent::{self, AgentLocks, GuestInterface};
use crate::qmp::{self, Command};
use crate::store::now_unix;
use crate::vms::manager::VmManager;
use crate::vms::model::{VmRecord, VmStatus};
use history::{HOST, Ring, vm_series};
use host::{HostMetrics, HostSampler};
use vm::{Reading, Readings, VmMetrics};

/// One collection pass: the host and every running VM.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Snapshot {
    pub ts: i64,
    pub host: HostMetrics,
    pub vms: Vec<VmMetrics>,
    /// Owner of each VM in `vms`, for filtering what a user may see.
    #[serde(skip)]
    pub owners: HashMap<String, String>,
}

impl Snapshot {
    /// The snapshot as `user` may see it.
    pub fn visible_to(&self, user: &SessionUser) -> Snapshot {
        let mut s = self.clone();
        if !user.is_admin {
            s.vms.retain(|m| self.owners.get(&m.vm_id) == Some(&user.username));
        }
        s
    }
}

#[derive(Default)]
struct Latest {
    snapshot: Option<Arc<Snapshot>>,
    host_ring: Ring<HostMetrics>,
    vm_rings: HashMap<String, Ring<VmMetrics>>,
    /// What each VM's guest agent last said about its interfaces.
    guests: HashMap<String, Vec<GuestInterface>>,
    /// VMs whose agent did not answer, and when to ask again: a guest without one must not hold
    /// every pass up for the agent timeout.
    agent_silent_until: HashMap<String, Instant>,
    last_stored: i64,
}

/// Everything the collector produces, for handlers to read.
pub struct Metrics {
    latest: Mutex<Latest>,
    pub passes: broadcast::Sender<Arc<Snapshot>>,
    pub agents: AgentLocks,
    pub http: prometheus::HttpStats,
    pub interval: Duration,
    /// Counts changes of what views show (guest addresses), for caches built from them.
    generation: std::sync::atomic::AtomicU64,
}

impl Metrics {
    pub fn new(interval: Duration) -> Self {
        Metrics {
            latest: Mutex::default(),
            passes: broadcast::channel(16).0,
            agents: AgentLocks::default(),
            http: prometheus::HttpStats::default(),
            interval,
            generation: Default::default(),
        }
    }

    /// Changes to guest addresses so far (any change gives a new number).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn latest(&self) -> MutexGuard<'_, Latest> {
        self.latest.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.latest().snapshot.clone()
    }

    /// Records what a VM's agent said outside a collection pass (a guest-info request).
    pub fn agent_answered(&self, vm_id: &str, interfaces: &[GuestInterface]) {
        let mut latest = self.latest();
        latest.agent_silent_until.remove(vm_id);
        latest.guests.insert(vm_id.to_string(), interfaces.to_vec());
        self.changed();
    }

    /// The addresses the VM's guest agent reported last (empty without an agent).
    pub fn guest_addresses(&self, vm_id: &str) -> Vec<String> {
        self.latest().guests.get(vm_id).map(|i| guest_agent::display_addresses(i)).unwrap_or_default()
    }
}

/// How long a pass waits for a guest agent: its usual bound, and at most half the interval.
fn agent_budget(interval: Duration) -> Duration {
    guest_agent::ANSWER_WITHIN.min(interval / 2)
}

/// How long the collector leaves a silent guest agent alone: three passes, at least 10 s
/// (guest-info requests still ask at once).
fn agent_retry(interval: Duration) -> Duration {
    (interval * 3).max(Duration::from_secs(10))
}

/// Raw counters of one running VM, read concurrently with the others.
async fn read_vm(metrics: &Metrics, vms: &VmManager, vm: &VmRecord) -> Reading {
    let usage = match vms.runtime_of(vm) {
        Some(rt) => rt.usage(&vm.id).await,
        None => None,
    };
    let at = Instant::now();
    let qmp_sock = vms.run_dirs.qmp(&vm.id);
    let (stats, balloon) = (Command::query_blockstats(), Command::query_balloon());
    let (stats, balloon) = tokio::join!(qmp::run(&qmp_sock, &stats), qmp::run(&qmp_sock, &balloon));
    let disks = stats.ok().map(|s| vm::disk_counters(&s));
    // Only VMs with a balloon device answer this.
    let guest_memory_bytes = balloon.ok().and_then(|b| b["actual"].as_u64());
    // Rates need the time the counters were read, before the agent (which may take seconds).
    let disks_at = Instant::now();
    let silent = metrics.latest().agent_silent_until.get(&vm.id).is_some_and(|t| *t > Instant::now());
    let interfaces = if silent {
        None
    } else {
        let qga_sock = vms.run_dirs.run(&vm.id).qga();
        // A silent agent must not hold the pass past its interval: the next pass is due then.
        let ask = guest_agent::with_agent(&metrics.agents, &vm.id, &qga_sock, async |agent| {
            agent.execute(&guest_agent::GuestCommand::network_interfaces()).await
        });
        let reply = tokio::time::timeout(agent_budget(metrics.interval), ask).await.ok().and_then(Result::ok);
        let mut latest = metrics.latest();
        match reply {
            Some(r) => {
                latest.agent_silent_until.remove(&vm.id);
                Some(guest_agent::interfaces(&r))
            }
            None => {
                let retry = agent_retry(metrics.interval);
                latest.agent_silent_until.insert(vm.id.clone(), Instant::now() + retry);
                None
            }
        }
    };
    Reading { at, disks_at, net_at: Instant::now(), usage, disks, guest_memory_bytes, interfaces }
}

/// One pass: reads everything, records it, and pushes it to listeners.
pub async fn collect(
    metrics: &Metrics,
    vm_manager: &VmManager,
    host: &mut HostSampler,
    readings: &mut Readings,
) -> anyhow::Result<()> {
    let ts = now_unix();
    let host_metrics = host.sample(ts);
    let running: Vec<VmRecord> = vm_manager
        .store
        .call(|c| Ok(crate::vms::store::list(c)?))
        .await?
        .into_iter()
        .filter(|vm| vm.status == VmStatus::Running)
        .collect();
    let fresh = join_all(running.iter().map(|vm| read_vm(metrics, vm_manager, vm))).await;
    let mut vms = Vec::with_capacity(running.len());
    let mut owners = HashMap::new();
    let mut guests = HashMap::new();
    let mut next = Readings::new();
    for (vm, reading) in running.iter().zip(fresh) {
        vms.push(vm::metrics(&vm.id, &vm.spec.name, ts, &reading, readings.get(&vm.id)));
        owners.insert(vm.id.clone(), vm.owner.clone());
        if let Some(i) = &reading.interfaces {
            guests.insert(vm.id.clone(), i.clone());
        }
        next.insert(vm.id.clone(), reading);
    }
    // Stopped VMs drop out, so a VM that runs again starts its rates afresh.
    *readings = next;
    let snapshot = Arc::new(Snapshot { ts, host: host_metrics, vms, owners });
    let store_now = {
        let mut latest = metrics.latest();
        latest.host_ring.push(ts, snapshot.host.clone());
        for m in &snapshot.vms {
            latest.vm_rings.entry(m.vm_id.clone()).or_default().push(ts, m.clone());
        }
        latest.vm_rings.retain(|id, _| snapshot.owners.contains_key(id));
        // Addresses are kept while the agent is merely slow to answer, dropped when the VM stops.
        latest.guests.retain(|id, _| snapshot.owners.contains_key(id));
        latest.agent_silent_until.retain(|id, _| snapshot.owners.contains_key(id));
        latest.guests.extend(guests);
        metrics.changed();
        latest.snapshot = Some(snapshot.clone());
        let due = ts - latest.last_stored >= history::STORED_EVERY;
        if due {
            latest.last_stored = ts;
        }
        due
    };
    if store_now {
        let mut points: Vec<(String, Value)> = vec![(HOST.into(), serde_json::to_value(&snapshot.host)?)];
        for m in &snapshot.vms {
            points.push((vm_series(&m.vm_id), serde_json::to_value(m)?));
        }
        vm_manager.store.call(move |c| history::store(c, ts, &points)).await?;
    }
    let _ = metrics.passes.send(snapshot);
    Ok(())
}

/// Starts the collector task.
pub fn start_collector(metrics: Arc<Metrics>, vms: Arc<VmManager>, data_dir: std::path::PathBuf) {
    tokio::spawn(async move {
        let mut host = HostSampler::new(data_dir);
        let mut readings = Readings::new();
        let mut tick = tokio::time::interval(metrics.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = collect(&metrics, &vms, &mut host, &mut readings).await {
                tracing::warn!(error = %format!("{e:#}"), "metrics collection failed");
            }
        }
    });
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct HistoryQuery {
    /// How far back, 1-1440 (default 10). Up to 10 minutes: every collection; beyond: one point a minute.
    pub minutes: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct History {
    pub host: Vec<HostMetrics>,
    pub vms: HashMap<String, Vec<VmMetrics>>,
}

pub fn window(q: &HistoryQuery) -> ApiResult<i64> {
    let minutes = q.minutes.unwrap_or(10);
    if !(1..=1440).contains(&minutes) {
        return Err(ApiError::BadRequest("minutes: must be 1 to 1440".into()));
    }
    Ok(minutes)
}

/// Host and VM series over the window: from memory for the last 10 minutes, else from the stored
/// one-per-minute history (which survives restarts).
pub async fn series(
    metrics: &Metrics,
    store: &crate::store::Store,
    minutes: i64,
    vm_filter: impl Fn(&str) -> bool,
) -> ApiResult<History> {
    let since = now_unix() - minutes * 60;
    if minutes * 60 <= history::RECENT_SECONDS {
        let latest = metrics.latest();
        if !latest.host_ring.since(since).is_empty() {
            let vms = latest
                .vm_rings
                .iter()
                .filter(|(id, _)| vm_filter(id))
                .map(|(id, ring)| (id.clone(), ring.since(since)))
                .collect();
            return Ok(History { host: latest.host_ring.since(since), vms });
        }
    }
    let (host, vms) = store
        .call(move |c| {
            let host: HashMap<String, Vec<HostMetrics>> = history::load(c, HOST, since)?;
            let vms: HashMap<String, Vec<VmMetrics>> = history::load(c, "vm:", since)?;
            Ok((host, vms))
        })
        .await?;
    let vms = vms
        .into_iter()
        .filter_map(|(series, points)| Some((series.strip_prefix("vm:")?.to_string(), points)))
        .filter(|(id, _)| vm_filter(id))
        .collect();
    Ok(History { host: host.into_values().next().unwrap_or_default(), vms })
}
