//! VM lifecycle: create, edit, start, stop, restart, delete. One lock per VM serialises every
//! operation on it, so concurrent requests can never leave two QEMUs or an orphan.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::OwnedMutexGuard;
use vmrunner::VmSpec;
use vmrunner::argv::{Accel, Launch, OvmfPaths};
use vmrunner::paths::VmDir;
use vmrunner::run_config::RunConfig;
use vmrunner::validate::{Limits, resolve_iso, validate};

use super::lifecycle::{self, Op, VmState};
use super::model::{VmRecord, VmStatus};
use super::phases::{Heard, Phases};
use super::store;
use crate::auth::users::SessionUser;
use crate::error::{ApiError, ApiResult};
use crate::quotas::store as quotas;
use crate::runtime::{RunDirs, Runtime, StopMode, tail};
use crate::store::{Store, new_id, now_unix};

pub struct VmManager {
    pub store: Store,
    /// Every runtime this controller can drive, by name; a VM keeps the runtime it was created with.
    runtimes: HashMap<&'static str, Arc<dyn Runtime>>,
    /// The runtime new VMs get.
    pub runtime: Arc<dyn Runtime>,
    pub run_dirs: RunDirs,
    pub vms_dir: PathBuf,
    pub volumes_dir: PathBuf,
    pub accel: Accel,
    /// Why VMs run with TCG although KVM was asked for (`FASTVM_ACCEL=auto` and no working KVM).
    pub accel_note: Option<String>,
    pub iso_roots: Vec<PathBuf>,
    pub port_forward_bind: String,
    /// Host ports regular users may forward (admins: any).
    pub port_forward_range: RangeInclusive<u16>,
    pub qemu: PathBuf,
    pub qemu_img: PathBuf,
    pub swtpm: PathBuf,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Held while a clone turns a disk into a shared base and while unused bases are collected: a
    /// base exists a moment before the overlays that need it, and must not be collected then.
    pub(super) bases: tokio::sync::Mutex<()>,
    /// Woken by runtime events so that reconciliation happens at once.
    pub wake: Arc<tokio::sync::Notify>,
    /// Every change of a VM's state, as it happens (pushed to browsers over /ws/metrics).
    pub events: tokio::sync::broadcast::Sender<VmStateEvent>,
    phases: Arc<Phases>,
    /// The VM list as last serialised (`api::vms`).
    pub listing: super::listing::Listing,
}

/// A VM started, stopped, crashed, was adopted or deleted.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct VmStateEvent {
    pub vm_id: String,
    pub name: String,
    /// `running` or `stopped` (deleted VMs: `stopped`); a paused guest is `running`.
    pub status: VmStatus,
    /// The lifecycle state it is in now (`crashed`, `paused`… as `state` of a VM).
    pub state: VmState,
    /// `started`, `stopped`, `crashed`, `start_failed`, `adopted`, `paused`, `resumed` or `deleted`.
    pub event: String,
    pub last_error: Option<String>,
    /// Unix seconds.
    pub ts: i64,
    #[serde(skip)]
    pub owner: String,
}

pub fn accel_name(a: Accel) -> &'static str {
    match a {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    }
}

fn random_mac() -> String {
    let b: [u8; 3] = rand::rng().random();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

impl VmManager {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        runtimes: Vec<Arc<dyn Runtime>>,
        runtime: Arc<dyn Runtime>,
        run_dirs: RunDirs,
        vms_dir: PathBuf,
        volumes_dir: PathBuf,
        accel: Accel,
        iso_roots: Vec<PathBuf>,
        port_forward_bind: String,
        port_forward_range: RangeInclusive<u16>,
        qemu: PathBuf,
        qemu_img: PathBuf,
        swtpm: PathBuf,
    ) -> VmManager {
        VmManager {
            store,
            runtimes: runtimes.into_iter().map(|r| (r.name(), r)).collect(),
            runtime,
            run_dirs,
            vms_dir,
            volumes_dir,
            accel,
            accel_note: None,
            iso_roots,
            port_forward_bind,
            port_forward_range,
            qemu,
            qemu_img,
            swtpm,
            locks: Mutex::new(HashMap::new()),
            bases: tokio::sync::Mutex::new(()),
            wake: Arc::new(tokio::sync::Notify::new()),
            events: tokio::sync::broadcast::channel(256).0,
            phases: Arc::default(),
            listing: Default::default(),
        }
    }

    fn emit(&self, vm: &VmRecord, state: VmState, event: &str, last_error: Option<String>) {
        // Nobody listening is fine.
        let _ = self.events.send(state_event(vm, state, event, last_error));
    }

    /// Follows the running VM's monitor (once per VM; again if it ended): pauses and resumes are
    /// pushed as they happen, and a shutdown wakes the reconcile loop at once.
    fn watch(&self, vm: &VmRecord) {
        let (events, wake, record) = (self.events.clone(), self.wake.clone(), vm.clone());
        let on_change = Box::new(move |heard: Heard| {
            let (state, event) = match heard {
                Heard::Paused => (VmState::Paused, "paused"),
                Heard::Resumed => (VmState::Running, "resumed"),
                Heard::ShutDown => return wake.notify_one(),
            };
            let _ = events.send(state_event(&record, state, event, None));
        });
        self.phases.watch(&vm.id, self.run_dirs.qmp(&vm.id), on_change);
    }

    /// The VM's lock for `op`. While the VM is starting or stopping (which can take minutes: a
    /// guest given an hour to power off), `op` is refused at once rather than queued behind it; a
    /// forced stop instead cuts a graceful one short and then takes over.
    pub(super) async fn lock_for(&self, id: &str, op: Op) -> ApiResult<OwnedMutexGuard<()>> {
        if let Some(phase) =
            self.phases.get(id).filter(|p| matches!(p, VmState::Starting | VmState::Stopping))
        {
            lifecycle::check(phase, op)?;
        }
        Ok(self.lock(id).await)
    }

    pub(super) async fn lock(&self, id: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(id.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    fn try_lock(&self, id: &str) -> Option<OwnedMutexGuard<()>> {
        let lock = {
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(id.to_string()).or_default().clone()
        };
        lock.try_lock_owned().ok()
    }

    fn forget_lock(&self, id: &str) {
        self.locks.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    pub async fn is_running(&self, vm: &VmRecord) -> ApiResult<bool> {
        Ok(self.rt(vm)?.inspect(&vm.id).await?.running)
    }

    /// The VM's state as its runtime reports it (a stopped VM whose last run failed: crashed), or
    /// as the manager and the monitor know it (starting, stopping, paused).
    pub async fn state_of(&self, vm: &VmRecord) -> ApiResult<VmState> {
        if let Some(phase) = self.phases.get(&vm.id) {
            return Ok(phase);
        }
        Ok(if self.is_running(vm).await? {
            VmState::Running
        } else if vm.last_error.is_some() {
            VmState::Crashed
        } else {
            VmState::Stopped
        })
    }

    /// Changes of the phases `shown` reads (for caches of views).
    pub fn phase_generation(&self) -> u64 {
        self.phases.generation()
    }

    /// The state to show for `vm` without asking its runtime: its record as last reconciled (at
    /// most 2 s old), or what the manager and the monitor know.
    pub fn shown(&self, vm: &VmRecord) -> VmState {
        match self.phases.get(&vm.id) {
            Some(phase) => phase,
            None if vm.status == VmStatus::Running => VmState::Running,
            None if vm.last_error.is_some() => VmState::Crashed,
            None => VmState::Stopped,
        }
    }

    /// Checks that `op` may be done to `vm` now (call it under the VM's lock); its state if so.
    pub(super) async fn require(&self, vm: &VmRecord, op: Op) -> ApiResult<VmState> {
        let state = self.state_of(vm).await?;
        lifecycle::check(state, op)?;
        Ok(state)
    }

    /// Subscribes to every runtime's events (call once, inside the async runtime).
    pub fn watch_runtimes(&self) {
        for rt in self.runtimes.values() {
            rt.watch(self.wake.clone());
        }
    }

    /// The runtime that runs `vm`.
    /// The runtime that runs `vm`, if this controller has it loaded.
    pub fn runtime_of(&self, vm: &VmRecord) -> Option<&Arc<dyn Runtime>> {
        self.rt(vm).ok()
    }

    fn rt(&self, vm: &VmRecord) -> ApiResult<&Arc<dyn Runtime>> {
        self.runtimes.get(vm.runtime.as_str()).ok_or_else(|| {
            ApiError::Unavailable(format!(
                "VM {} uses the {} runtime, which this controller is not running (FASTVM_RUNTIME)",
                vm.id, vm.runtime
            ))
        })
    }

    pub fn limits(&self) -> Limits {
        Limits { iso_roots: self.iso_roots.clone() }
    }

    /// Fills what the client may leave out (NIC ids, and MACs no other VM has), then validates.
    pub async fn normalize(&self, spec: &mut VmSpec) -> ApiResult<()> {
        let taken: std::collections::HashSet<String> =
            self.store.call(|c| Ok(store::macs_in_use(c)?)).await?.into_iter().collect();
        let mut mine = std::collections::HashSet::new();
        for (i, net) in spec.networks.iter_mut().enumerate() {
            if net.id.is_none() {
                net.id = Some(format!("net{i}"));
            }
            if net.mac_address.is_none() {
                // 24 random bits: among a thousand VMs a collision is a few percent likely.
                let fresh =
                    std::iter::repeat_with(random_mac).find(|m| !taken.contains(m) && !mine.contains(m));
                net.mac_address = fresh;
            }
            if let Some(mac) = &mut net.mac_address {
                *mac = mac.to_ascii_lowercase();
                mine.insert(mac.clone());
            }
        }
        for iso in [&mut spec.iso_path, &mut spec.secondary_iso_path] {
            if iso.as_deref() == Some("") {
                *iso = None;
            }
        }
        validate(spec, &self.limits()).map_err(|e| ApiError::BadRequest(e.to_string()))
    }

    /// The VM if `user` may see it; 404 otherwise, so other users' VMs are indistinguishable from
    /// absent ones.
    pub async fn owned(&self, user: &SessionUser, id: &str) -> ApiResult<VmRecord> {
        let vm = self.get(id).await?;
        if vm.visible_to(user) { Ok(vm) } else { Err(ApiError::NotFound("VM not found".into())) }
    }

    pub async fn get(&self, id: &str) -> ApiResult<VmRecord> {
        let id = id.to_string();
        self.store
            .call(move |c| Ok(store::get(c, &id)?))
            .await?
            .ok_or_else(|| ApiError::NotFound("VM not found".into()))
    }

    async fn check_conflicts(&self, id: &str, spec: &VmSpec) -> ApiResult<()> {
        let (id, spec) = (id.to_string(), spec.clone());
        match self.store.call(move |c| Ok(store::conflict(c, &id, &spec)?)).await? {
            Some(msg) => Err(ApiError::Conflict(msg)),
            None => Ok(()),
        }
    }

    /// The rules of who may have what, which every way to make or change a VM (create, edit, clone,
    /// restore) applies. Only admins put VMs on host networks, forward host ports outside
    /// `port_forward_range`, or attach another user's cloud-init seed; what an edit leaves as it was
    /// (`current` is the spec before it) stays allowed.
    pub async fn check_rules(
        &self,
        spec: &VmSpec,
        current: Option<&VmSpec>,
        user: &str,
        is_admin: bool,
    ) -> ApiResult<()> {
        if is_admin {
            return Ok(());
        }
        check_host_networks(spec, current)?;
        for (field, path, before) in [
            ("iso_path", &spec.iso_path, current.and_then(|c| c.iso_path.as_ref())),
            (
                "secondary_iso_path",
                &spec.secondary_iso_path,
                current.and_then(|c| c.secondary_iso_path.as_ref()),
            ),
        ] {
            match path {
                Some(p) if before != Some(p) => self.check_seed(field, p, user).await?,
                _ => {}
            }
        }
        for (i, net) in spec.networks.iter().enumerate() {
            let kept = |f: &vmrunner::PortForward| {
                current.is_some_and(|c| c.networks.iter().any(|n| n.port_forwards.contains(f)))
            };
            if let Some(f) =
                net.port_forwards.iter().find(|f| !self.port_forward_range.contains(&f.host_port) && !kept(f))
            {
                return Err(ApiError::Forbidden(format!(
                    "networks[{i}].port_forwards: host port {} is outside {}-{}, the ports regular users may forward",
                    f.host_port,
                    self.port_forward_range.start(),
                    self.port_forward_range.end()
                )));
            }
        }
        Ok(())
    }

    /// A path into `cloudinit/` may only name a seed `user` made: to anyone else it does not exist.
    async fn check_seed(&self, field: &str, path: &str, user: &str) -> ApiResult<()> {
        let seeds = self.vms_dir.with_file_name("cloudinit");
        let (Ok(seeds), Ok(resolved)) = (seeds.canonicalize(), Path::new(path).canonicalize()) else {
            return Ok(()); // Nothing to own: validation answers for a path that does not resolve.
        };
        if !resolved.starts_with(&seeds) {
            return Ok(());
        }
        let name = resolved.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let owner = self.store.call(move |c| Ok(crate::store::seeds::owner(c, &name)?)).await?;
        if owner.as_deref() != Some(user) {
            return Err(ApiError::BadRequest(format!(
                "{field}: {}",
                vmrunner::validate::iso_not_found(path)
            )));
        }
        Ok(())
    }

    /// Whether `user` may attach the ISO at `path` (another user's seed is not theirs to use).
    pub async fn may_use_iso(&self, path: &str, user: &str, is_admin: bool) -> bool {
        is_admin || self.check_seed("iso", path, user).await.is_ok()
    }

    pub async fn create(&self, mut spec: VmSpec, owner: &str, is_admin: bool) -> ApiResult<VmRecord> {
        self.check_rules(&spec, None, owner, is_admin).await?;
        let id = new_id();
        self.normalize(&mut spec).await?;
        self.check_conflicts(&id, &spec).await?;
        let record = VmRecord::new_stopped(id, owner, spec, self.runtime.name());
        self.insert_within_quota(&record).await?;
        Ok(record)
    }

    /// Refuses (403) what would take `user` past their quota; for operations whose write comes later.
    pub async fn check_quota(&self, user: &str, need: quotas::Usage) -> ApiResult<()> {
        let u = user.to_string();
        quotas::refuse(self.store.call(move |c| Ok(quotas::exceeded(c, &u, need, None)?)).await?)
    }

    /// Records a new VM, unless its owner's quota has no room for it (checked in the same database
    /// step, so two creates cannot both take the last place).
    pub async fn insert_within_quota(&self, record: &VmRecord) -> ApiResult<()> {
        let (r, need) = (record.clone(), quotas::of_vm(&record.spec));
        let refused = self
            .store
            .call(move |c| {
                if let Some(why) = quotas::exceeded(c, &r.owner, need, None)? {
                    return Ok(Some(why));
                }
                store::insert(c, &r)?;
                Ok(None)
            })
            .await
            .map_err(unique_to_conflict)?;
        quotas::refuse(refused)
    }

    /// Applies `changes` (fields of the spec, as JSON) and maybe a new owner to a stopped VM. The
    /// merge happens under the VM's lock, so concurrent edits never undo each other.
    pub async fn update(
        &self,
        id: &str,
        changes: serde_json::Map<String, serde_json::Value>,
        owner: Option<String>,
        is_admin: bool,
    ) -> ApiResult<VmRecord> {
        let _guard = self.lock_for(id, Op::Edit).await?;
        let current = self.get(id).await?;
        let mut merged = serde_json::to_value(&current.spec).map_err(anyhow::Error::from)?;
        if let serde_json::Value::Object(m) = &mut merged {
            m.extend(changes);
        }
        let mut spec: VmSpec = serde_json::from_value(merged)
            .map_err(|e| ApiError::Unprocessable(format!("Invalid request body: {e}")))?;
        self.check_rules(&spec, Some(&current.spec), &current.owner, is_admin).await?;
        self.require(&current, Op::Edit).await?;
        self.normalize(&mut spec).await?;
        if spec.disk_size < current.spec.disk_size {
            return Err(ApiError::BadRequest(format!(
                "disk_size: cannot shrink a disk ({} GB to {} GB)",
                current.spec.disk_size, spec.disk_size
            )));
        }
        self.check_conflicts(id, &spec).await?;
        let disk = self.vm_dir(id).disk();
        if spec.disk_size > current.spec.disk_size && disk.exists() {
            crate::storage::grow_image(&self.qemu_img, &disk, spec.disk_size).await?;
        }
        let owner = owner.unwrap_or(current.owner);
        // A regular user's edit may not grow the VM past their quota (an admin's may).
        let growth =
            (!is_admin).then(|| quotas::Usage::growth(quotas::of_vm(&spec), quotas::of_vm(&current.spec)));
        let (i, s) = (id.to_string(), spec);
        let refused = self
            .store
            .call(move |c| {
                if let Some(why) = growth.map(|g| quotas::exceeded(c, &owner, g, None)).transpose()?.flatten()
                {
                    return Ok(Some(why));
                }
                store::update_spec(c, &i, &s, &owner, now_unix())?;
                Ok(None)
            })
            .await
            .map_err(unique_to_conflict)?;
        quotas::refuse(refused)?;
        self.get(id).await
    }

    async fn run_config(&self, vm: &VmRecord) -> ApiResult<RunConfig> {
        let id = vm.id.clone();
        let volumes = self.store.call(move |c| Ok(crate::store::volumes::disks_of(c, &id)?)).await?;
        let iso = |field: &str, path: &Option<String>| -> ApiResult<Option<PathBuf>> {
            match path {
                None => Ok(None),
                Some(p) => resolve_iso(p, &self.iso_roots)
                    .map(Some)
                    .map_err(|m| ApiError::BadRequest(format!("{field}: {m}"))),
            }
        };
        let launch = Launch {
            vm_id: vm.id.clone(),
            uuid: vm.uuid.clone(),
            vm_dir: self.vms_dir.join(&vm.id),
            run_dir: self.run_dirs.of(&vm.id),
            accel: self.accel,
            ovmf: OvmfPaths::default(),
            nics: Vec::new(),
            port_forward_bind: self.port_forward_bind.clone(),
            iso: iso("iso_path", &vm.spec.iso_path)?,
            secondary_iso: iso("secondary_iso_path", &vm.spec.secondary_iso_path)?,
            volumes,
            volumes_dir: Some(self.volumes_dir.clone()),
            loadvm: None,
            backing_files: self.disk_bases(&vm.id).await?,
        };
        Ok(RunConfig {
            spec: vm.spec.clone(),
            launch,
            qemu: self.qemu.clone(),
            qemu_img: self.qemu_img.clone(),
            swtpm: self.swtpm.clone(),
        })
    }

    pub(super) async fn start_locked(&self, vm: &VmRecord, loadvm: Option<String>) -> ApiResult<()> {
        let rt = self.rt(vm)?;
        self.require(vm, Op::Start).await?;
        fits_this_host(&vm.spec)?;
        let _starting = self.phases.during(&vm.id, VmState::Starting);
        let mut config = self.run_config(vm).await?;
        config.launch.loadvm = loadvm;
        match rt.start(&config).await {
            Ok(_) => {
                let (id, accel) = (vm.id.clone(), accel_name(self.accel));
                self.store.call(move |c| Ok(store::set_running(c, &id, accel, now_unix())?)).await?;
                self.emit(vm, VmState::Running, "started", None);
                self.watch(vm);
                Ok(())
            }
            Err(e) => {
                let msg = format!("{e:#}");
                let (id, m) = (vm.id.clone(), msg.clone());
                self.store.call(move |c| Ok(store::set_stopped(c, &id, Some(&m), now_unix())?)).await?;
                self.emit(vm, VmState::Crashed, "start_failed", Some(msg.clone()));
                Err(ApiError::Operation(msg))
            }
        }
    }

    pub async fn start(&self, id: &str) -> ApiResult<VmRecord> {
        let _guard = self.lock_for(id, Op::Start).await?;
        let vm = self.get(id).await?;
        self.start_locked(&vm, None).await?;
        self.get(id).await
    }

    async fn stop_locked(&self, vm: &VmRecord, mode: StopMode) -> ApiResult<()> {
        let stopping = self.phases.during(&vm.id, VmState::Stopping);
        let rt = self.rt(vm)?;
        let hurry = self.phases.may_be_hurried(&vm.id);
        let stopped = tokio::select! {
            stopped = rt.stop(&vm.id, mode) => stopped,
            () = hurry.notified(), if mode != StopMode::Force => {
                tracing::info!(vm_id = vm.id, "a forced stop cut the graceful one short");
                rt.stop(&vm.id, StopMode::Force).await
            }
        };
        stopped.map_err(|e| ApiError::Operation(format!("{e:#}")))?;
        let i = vm.id.clone();
        self.store.call(move |c| Ok(store::set_stopped(c, &i, None, now_unix())?)).await?;
        self.phases.ended(&vm.id);
        drop(stopping);
        self.emit(vm, VmState::Stopped, "stopped", None);
        Ok(())
    }

    /// Pauses the guest (its QEMU stays, holding its RAM) or lets a paused one go on.
    pub async fn pause(&self, id: &str, pause: bool) -> ApiResult<VmRecord> {
        let held = self.enter(id, if pause { Op::Pause } else { Op::Resume }).await?;
        let command = if pause { crate::qmp::Command::stop() } else { crate::qmp::Command::cont() };
        held.qmp(&command).await.map_err(|e| ApiError::Operation(format!("{e:#}")))?;
        // The monitor's event says so too, a moment later; the answer must already.
        if pause {
            self.phases.set(id, VmState::Paused);
        } else {
            self.phases.resumed(id);
        }
        self.emit(
            &held.vm,
            if pause { VmState::Paused } else { VmState::Running },
            if pause { "paused" } else { "resumed" },
            None,
        );
        Ok(held.vm.clone())
    }

    pub async fn stop(&self, id: &str, mode: StopMode) -> ApiResult<VmRecord> {
        let hurried = mode == StopMode::Force && self.phases.get(id) == Some(VmState::Stopping);
        let _guard = if hurried {
            self.phases.hurry(id);
            self.lock(id).await
        } else {
            self.lock_for(id, Op::Stop).await?
        };
        let vm = self.get(id).await?;
        if hurried && !self.state_of(&vm).await?.has_qemu() {
            // The stop it cut short is done: what was asked for is so.
            return Ok(vm);
        }
        self.require(&vm, Op::Stop).await?;
        self.stop_locked(&vm, mode).await?;
        self.get(id).await
    }

    /// `hard`: QMP reset (the guest reboots at once). Otherwise a graceful stop and a fresh start, so
    /// configuration changes apply.
    pub async fn restart(&self, id: &str, hard: bool, timeout: Duration) -> ApiResult<VmRecord> {
        let _guard = self.lock_for(id, Op::Restart).await?;
        let vm = self.get(id).await?;
        self.require(&vm, Op::Restart).await?;
        if hard {
            crate::qmp::run(&self.run_dirs.qmp(id), &crate::qmp::Command::system_reset())
                .await
                .map_err(|e| ApiError::Operation(format!("{e:#}")))?;
        } else {
            self.stop_locked(&vm, StopMode::Graceful { timeout }).await?;
            self.start_locked(&vm, None).await?;
        }
        self.get(id).await
    }

    pub async fn delete(&self, id: &str, force: bool) -> ApiResult<()> {
        let guard = self.lock_for(id, Op::Delete).await?;
        let vm = self.get(id).await?;
        let rt = self.rt(&vm)?;
        let state = self.state_of(&vm).await?;
        if state.has_qemu() && force {
            self.stop_locked(&vm, StopMode::Force).await?;
        } else {
            lifecycle::check(state, Op::Delete)?;
        }
        rt.remove(id)
            .await
            .map_err(|e| ApiError::Operation(format!("removing the VM's container: {e:#}")))?;
        let i = id.to_string();
        self.store.call(move |c| Ok(store::delete(c, &i)?)).await?;
        self.phases.ended(id);
        self.emit(&vm, VmState::Stopped, "deleted", None);
        let run = self.run_dirs.run(id);
        for socket in [run.monitor(), run.qmp()] {
            crate::qmp::monitors().forget(&socket);
        }
        // Only the VM's own directories: ISOs live elsewhere and are never touched.
        for dir in [self.vms_dir.join(id), self.run_dirs.of(id)] {
            if let Err(e) = remove_dir_if_present(&dir) {
                tracing::warn!(vm_id = id, dir = %dir.display(), error = %e, "could not remove VM files");
            }
        }
        drop(guard);
        self.forget_lock(id);
        self.collect_bases().await;
        Ok(())
    }

    /// The files the VM keeps for its life (disk, firmware variables, TPM state).
    pub fn vm_dir(&self, id: &str) -> VmDir {
        VmDir::new(self.vms_dir.join(id))
    }

    pub fn logs(&self, id: &str, lines: usize) -> (String, String) {
        let run = self.run_dirs.run(id);
        (tail(&run.qemu_log(), lines), tail(&run.serial_log(), lines))
    }

    /// Brings the database in line with what is really running: VMs whose QEMU is gone become
    /// stopped (with the reason when it ended badly); running QEMUs are (re)adopted.
    pub async fn reconcile(&self) -> anyhow::Result<()> {
        let vms = self.store.call(|c| Ok(store::list(c)?)).await?;
        // One runtime or one VM failing (Docker down, say) must not stop the others being watched.
        for rt in self.runtimes.values().filter(|rt| rt.name() != "process") {
            if let Err(e) = self.remove_leftovers(rt.as_ref(), &vms).await {
                tracing::warn!(runtime = rt.name(), error = %format!("{e:#}"), "cleaning up leftovers failed");
            }
        }
        for vm in vms {
            if let Err(e) = self.reconcile_vm(&vm.id).await {
                tracing::warn!(vm_id = vm.id, error = %format!("{e:#}"), "reconciling VM failed");
            }
        }
        Ok(())
    }

    /// Removes containers of VMs that no longer exist. The database is asked again after listing: a
    /// VM's row is written before its container exists, so the container of a VM created since `vms`
    /// was read is never mistaken for a leftover.
    async fn remove_leftovers(&self, rt: &dyn Runtime, vms: &[VmRecord]) -> anyhow::Result<()> {
        for actual in rt.list().await? {
            let orphan = !vms.iter().any(|vm| vm.id == actual.vm_id)
                && matches!(self.get(&actual.vm_id).await, Err(ApiError::NotFound(_)));
            if orphan {
                tracing::info!(
                    vm_id = actual.vm_id,
                    runtime = rt.name(),
                    "removing leftovers of a deleted VM"
                );
                let _ = rt.kill(&actual.vm_id).await;
                rt.remove(&actual.vm_id).await?;
            }
        }
        Ok(())
    }

    async fn reconcile_vm(&self, id: &str) -> anyhow::Result<()> {
        // A VM in the middle of an operation is that operation's business.
        let Some(_guard) = self.try_lock(id) else { return Ok(()) };
        // Read again under the lock: an operation may have finished since the list was read.
        let vm = match self.get(id).await {
            Ok(vm) => vm,
            Err(ApiError::NotFound(_)) => return Ok(()),
            Err(e) => anyhow::bail!("{e}"),
        };
        let rt = match self.rt(&vm) {
            Ok(rt) => rt,
            Err(e) => {
                tracing::debug!(vm_id = id, error = %e, "runtime not loaded; VM not reconciled");
                return Ok(());
            }
        };
        let actual = rt.inspect(id).await?;
        let now = now_unix();
        match (vm.status, actual.running) {
            (VmStatus::Running, false) => {
                // QEMU is gone, but its supervisor may not have recorded why yet.
                rt.finished(id).await;
                let error = self.exit_error(id, rt.exit_detail(id).await);
                if let Some(e) = &error {
                    tracing::warn!(vm_id = id, error = e, "VM stopped unexpectedly");
                }
                let (i, e) = (id.to_string(), error.clone());
                self.store.call(move |c| Ok(store::set_stopped(c, &i, e.as_deref(), now)?)).await?;
                self.phases.ended(id);
                let (event, state) = if error.is_some() {
                    ("crashed", VmState::Crashed)
                } else {
                    ("stopped", VmState::Stopped)
                };
                self.emit(&vm, state, event, error);
            }
            (VmStatus::Stopped, true) => {
                tracing::info!(vm_id = id, "adopting running VM");
                let i = id.to_string();
                self.store.call(move |c| Ok(store::adopt_running(c, &i, now)?)).await?;
                self.emit(&vm, VmState::Running, "adopted", None);
                self.watch(&vm);
            }
            (VmStatus::Running, true) => self.watch(&vm),
            _ => {}
        }
        Ok(())
    }

    /// Why the last run ended, when it did not end cleanly. `runtime_detail` is the runtime's own
    /// account (a container's exit code and logs), used when vmrunner could not record anything.
    fn exit_error(&self, id: &str, runtime_detail: Option<String>) -> Option<String> {
        let last_lines = || tail(&self.run_dirs.run(id).qemu_log(), 5);
        match self.run_dirs.exit_record(id) {
            Some(r) if r.error.is_some() => r.error,
            Some(r) if r.code == Some(0) => None,
            Some(r) => Some(match (r.code, r.signal) {
                (_, Some(sig)) => format!("QEMU was killed by signal {sig}. {}", last_lines()),
                (code, _) => format!("QEMU exited with code {}. {}", code.unwrap_or(-1), last_lines()),
            }),
            // vmrunner itself was killed: it could not record anything.
            None => {
                Some(runtime_detail.unwrap_or_else(|| {
                    format!("the VM's supervisor ended without a record. {}", last_lines())
                }))
            }
        }
    }
}

/// A VM may be defined bigger than this host (configs move between hosts); it starts only where it
/// fits: no more vCPUs than the host has, no more memory than is free now.
fn fits_this_host(spec: &VmSpec) -> ApiResult<()> {
    let cpus = crate::host::cpus();
    if spec.cpus > cpus {
        return Err(ApiError::Conflict(format!(
            "The VM has {} vCPUs and this host {cpus} CPUs: give it at most {cpus} (PUT /api/vms/{{id}})",
            spec.cpus
        )));
    }
    let free = crate::host::available_memory_mib();
    if spec.memory > free {
        return Err(ApiError::Conflict(format!(
            "The VM needs {} MiB of memory and this host has {free} MiB free now: give it less, or stop other VMs",
            spec.memory
        )));
    }
    Ok(())
}

fn state_event(vm: &VmRecord, state: VmState, event: &str, last_error: Option<String>) -> VmStateEvent {
    VmStateEvent {
        vm_id: vm.id.clone(),
        name: vm.spec.name.clone(),
        status: if state.has_qemu() { VmStatus::Running } else { VmStatus::Stopped },
        state,
        event: event.into(),
        last_error,
        ts: now_unix(),
        owner: vm.owner.clone(),
    }
}

/// Bridge and macvtap NICs put a VM on the host's own networks, and only admins may do that (or keep
/// the ones an admin set up: `current` is the spec before an edit).
fn check_host_networks(spec: &VmSpec, current: Option<&VmSpec>) -> ApiResult<()> {
    for (i, net) in spec.networks.iter().enumerate() {
        let on_host = matches!(net.kind, vmrunner::NetworkType::Bridge | vmrunner::NetworkType::Macvtap);
        let unchanged = current.is_some_and(|c| c.networks.iter().any(|n| n == net));
        if on_host && !unchanged {
            return Err(ApiError::Forbidden(format!(
                "networks[{i}].type: only admins can attach VMs to host networks (bridge, macvtap)"
            )));
        }
    }
    Ok(())
}

fn remove_dir_if_present(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Two requests racing for the same MAC or host port: the UNIQUE constraint decides, and the loser
/// gets a 409 like any other conflict.
fn unique_to_conflict(e: anyhow::Error) -> ApiError {
    let is_unique = e
        .downcast_ref::<rusqlite::Error>()
        .is_some_and(|e| matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::ConstraintViolation)));
    if is_unique {
        ApiError::Conflict("a MAC address or forwarded host port is already used by another VM".into())
    } else {
        ApiError::Internal(e)
    }
}
