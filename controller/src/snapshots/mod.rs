//! Snapshots: internal qcow2 snapshots of every disk of the VM; on a running VM a live snapshot
//! that includes RAM (QMP `snapshot-save`), which restores to a running guest exactly where it was.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::process::Command;
use utoipa::ToSchema;
use vmrunner::argv::{DiskFormat, volume_ids};
use vmrunner::validate::validate_name;

use crate::error::{ApiError, ApiResult};
use crate::jobs::Progress;
use crate::qmp::Command as Qmp;
use crate::storage;
use crate::store::{now_unix, rfc3339};
use crate::vms::held::Held;
use crate::vms::lifecycle::Op;
use crate::vms::manager::VmManager;
use crate::vms::model::VmRecord;

/// Long enough to write a big guest's RAM to disk.
const JOB_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Snapshot {
    pub id: String,
    pub name: String,
    pub description: String,
    /// RFC 3339.
    pub created: String,
    /// Bytes of saved RAM (0 without `vm_state`).
    pub size: u64,
    /// Whether the guest's RAM was saved too (a live snapshot): restoring resumes the guest.
    pub vm_state: bool,
    #[serde(skip)]
    tag: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

/// A disk of the VM: its image and, while running, its QMP block node.
struct Disk {
    path: PathBuf,
    node: String,
}

impl Disk {
    /// The image for qemu-img, its format spelled out; only disk0 (a clone's overlay) may have a base.
    fn image_arg(&self) -> String {
        storage::qcow2_image(&self.path, self.node != "disk0")
    }
}

/// Every disk of the VM with its format: disk0, then the attached volumes.
async fn all_disks(vms: &VmManager, vm: &VmRecord) -> ApiResult<Vec<(Disk, DiskFormat, String)>> {
    let disk0 = Disk { path: vms.vm_dir(&vm.id).disk(), node: "disk0".into() };
    let mut list = vec![(disk0, DiskFormat::Qcow2, "disk0".to_string())];
    let id = vm.id.clone();
    for v in vms.store.call(move |c| Ok(crate::store::volumes::attached_to(c, &id)?)).await? {
        list.push((Disk { path: v.path.into(), node: volume_ids(&v.id).0 }, v.format, v.name));
    }
    Ok(list)
}

/// The disks a new snapshot goes into: all of them, which must all be able to hold one.
async fn disks(vms: &VmManager, vm: &VmRecord) -> ApiResult<Vec<Disk>> {
    let mut list = Vec::new();
    for (disk, format, name) in all_disks(vms, vm).await? {
        if format == DiskFormat::Raw {
            return Err(ApiError::Conflict(format!(
                "Volume {name} is raw: snapshots need qcow2 disks (detach it, or use a qcow2 volume)"
            )));
        }
        list.push(disk);
    }
    Ok(list)
}

/// The disks that hold snapshot `tag` (disk0 first), and the names of those that do not. A volume
/// attached after the snapshot was taken does not, and a disk replaced since (by a backup restore)
/// no longer does.
async fn holding(vms: &VmManager, vm: &VmRecord, tag: &str) -> ApiResult<(Vec<Disk>, Vec<String>)> {
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for (disk, format, name) in all_disks(vms, vm).await? {
        let holds = format != DiskFormat::Raw
            && disk.path.exists()
            && storage::snapshot_names(&vms.qemu_img, &disk.path).await?.iter().any(|n| n == tag);
        if holds {
            with.push(disk);
        } else {
            without.push(name);
        }
    }
    Ok((with, without))
}

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Snapshot> {
    Ok(Snapshot {
        id: r.get(0)?,
        name: r.get(1)?,
        description: r.get(2)?,
        tag: r.get(3)?,
        vm_state: r.get(4)?,
        created: rfc3339(r.get(5)?),
        size: 0,
    })
}

async fn load(vms: &VmManager, vm_id: &str, snap_id: &str) -> ApiResult<Snapshot> {
    let (v, s) = (vm_id.to_string(), snap_id.to_string());
    vms
        .store
        .call(move |c| {
            Ok(c.query_row(
                "SELECT id, name, description, tag, vm_state, created_at FROM snapshots WHERE vm_id = ?1 AND id = ?2",
                params![v, s],
                from_row,
            )
            .optional()?)
        })
        .await?
        .ok_or_else(|| ApiError::NotFound("Snapshot not found".into()))
}

/// `qemu-img snapshot` on every disk; on failure the disks already done are put back.
async fn offline(vms: &VmManager, disks: &[Disk], op: &str, tag: &str, undo: Option<&str>) -> ApiResult<()> {
    for (i, d) in disks.iter().enumerate() {
        let mut cmd = Command::new(&vms.qemu_img);
        cmd.args(["snapshot", op, tag]).arg(d.image_arg());
        if let Err(e) = storage::run(cmd, "qemu-img snapshot").await {
            if let Some(undo) = undo {
                for done in &disks[..i] {
                    let mut cmd = Command::new(&vms.qemu_img);
                    cmd.args(["snapshot", undo, tag]).arg(done.image_arg());
                    let _ = storage::run(cmd, "undoing qemu-img snapshot").await;
                }
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Runs a QMP snapshot job to its end.
async fn job(held: &Held<'_>, command: impl FnOnce(&str) -> Qmp) -> ApiResult<()> {
    job_reporting(held, command, &|_, _| {}).await
}

/// As `job`, telling `progress` how far QEMU is.
async fn job_reporting(
    held: &Held<'_>,
    command: impl FnOnce(&str) -> Qmp,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> ApiResult<()> {
    let result = held.qmp_job(command, JOB_TIMEOUT, progress).await;
    // The guest is paused while its RAM is written; whatever happened, it must not stay paused.
    if held.state == crate::vms::lifecycle::VmState::Running
        && crate::qmp::status(&held.monitor()).await.as_deref() == Some("paused")
    {
        let _ = held.qmp(&Qmp::cont()).await;
    }
    result.map_err(|e| ApiError::Operation(format!("{e:#}")))
}

/// Prefix of the tag of every internal snapshot the controller makes.
const TAG_PREFIX: &str = "fastvm-";

/// Removes internal snapshots of ours that no record names. A controller killed while QEMU saved a
/// live snapshot leaves one behind (QEMU finishes the save on its own): never listed, it would only
/// hold space. Runs under the VM's exclusive lock, so no snapshot of ours is between its save and
/// its record. How many went.
async fn sweep(vms: &VmManager, held: &Held<'_>) -> ApiResult<usize> {
    let live = held.live();
    if live {
        settle(held).await?;
    }
    let vm_id = held.vm.id.clone();
    let recorded: HashSet<String> = vms
        .store
        .call(move |c| {
            let mut stmt = c.prepare("SELECT tag FROM snapshots WHERE vm_id = ?1")?;
            let rows = stmt.query_map([vm_id], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await?;
    let mut removed = 0;
    for (disk, format, _) in all_disks(vms, &held.vm).await? {
        if format == DiskFormat::Raw || !disk.path.exists() {
            continue;
        }
        let names = storage::snapshot_names(&vms.qemu_img, &disk.path).await?;
        for tag in names.iter().filter(|n| n.starts_with(TAG_PREFIX) && !recorded.contains(*n)) {
            if live {
                job(held, |j| Qmp::snapshot_delete(j, tag, &[disk.node.as_str()])).await?;
            } else {
                offline(vms, std::slice::from_ref(&disk), "-d", tag, None).await?;
            }
            tracing::info!(vm_id = held.vm.id, tag, "removed a snapshot with no record (an interrupted one)");
            removed += 1;
        }
    }
    Ok(removed)
}

/// Waits until no snapshot job QEMU runs is left from before a restart, and dismisses those that
/// ended (no one else would).
async fn settle(held: &Held<'_>) -> ApiResult<()> {
    let failed = |e: anyhow::Error| ApiError::Operation(format!("{e:#}"));
    let deadline = Instant::now() + JOB_TIMEOUT;
    loop {
        let mut busy = false;
        for j in held.qmp(&Qmp::query_jobs()).await.map_err(failed)?.as_array().into_iter().flatten() {
            if !j["type"].as_str().is_some_and(|t| t.starts_with("snapshot-")) {
                continue;
            }
            match (j["status"].as_str(), j["id"].as_str()) {
                (Some("concluded"), Some(id)) => {
                    let _ = held.qmp(&Qmp::job_dismiss(id)).await;
                }
                (Some("null"), _) => {}
                _ => busy = true,
            }
        }
        if !busy {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(ApiError::Conflict(
                "QEMU is still writing a snapshot begun before the controller restarted: try again later"
                    .into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// After a restart, for a VM whose snapshot was cut short: its unrecorded snapshot goes.
pub async fn sweep_interrupted(vms: &VmManager, vm_id: &str) -> ApiResult<usize> {
    let held = vms.enter(vm_id, Op::DeleteSnapshot).await?;
    sweep(vms, &held).await
}

/// Snapshots of a VM, oldest first, with the size of their saved RAM.
pub async fn list(vms: &VmManager, vm: &VmRecord) -> ApiResult<Vec<Snapshot>> {
    let id = vm.id.clone();
    let mut snaps = vms
        .store
        .call(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, name, description, tag, vm_state, created_at FROM snapshots WHERE vm_id = ?1 ORDER BY created_at, name",
            )?;
            let rows = stmt.query_map([id], from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?;
    // Sizes of saved RAM, from the image itself (-U: readable while the VM runs).
    let disk = vms.vm_dir(&vm.id).disk();
    if let Ok(out) = Command::new(&vms.qemu_img)
        .args(["info", "-U", "-f", "qcow2", "--output=json"])
        .arg(&disk)
        .output()
        .await
    {
        let info: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        for s in &mut snaps {
            let found =
                info["snapshots"].as_array().and_then(|l| l.iter().find(|x| x["name"] == s.tag.as_str()));
            s.size = found.and_then(|x| x["vm-state-size"].as_u64()).unwrap_or(0);
        }
    }
    Ok(snaps)
}

/// Refuses (400) a request no VM could take.
pub fn check(req: &CreateSnapshot) -> ApiResult<()> {
    validate_name(&req.name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if req.description.len() > 1000 {
        return Err(ApiError::BadRequest("description: at most 1000 characters".into()));
    }
    Ok(())
}

/// Takes a snapshot: of the disks of a stopped VM, or live (disks and RAM) of a running one.
pub async fn take(
    vms: &VmManager,
    vm_id: &str,
    req: &CreateSnapshot,
    progress: &Progress,
) -> ApiResult<Snapshot> {
    check(req)?;
    let held = vms.enter(vm_id, Op::TakeSnapshot).await?;
    let vm = &held.vm;
    let (v, n) = (vm.id.clone(), req.name.clone());
    let taken: bool = vms
        .store
        .call(move |c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM snapshots WHERE vm_id = ?1 AND name = ?2",
                params![v, n],
                |r| r.get::<_, i64>(0),
            )? > 0)
        })
        .await?;
    if taken {
        return Err(ApiError::Conflict(format!("name: this VM already has a snapshot called {}", req.name)));
    }
    let disks = disks(vms, vm).await?;
    sweep(vms, &held).await?;
    let id = crate::store::new_id();
    let tag = format!("{TAG_PREFIX}{id}");
    let live = held.live();
    if live {
        let devices: Vec<&str> = disks.iter().map(|d| d.node.as_str()).collect();
        progress.phase("saving the guest's RAM and disks");
        let report = |done, total| progress.bytes(done, total, 0.0, 0.95);
        job_reporting(&held, |job| Qmp::snapshot_save(job, &tag, "disk0", &devices), &report).await?;
    } else {
        progress.phase("snapshotting the disks");
        if !disks[0].path.exists() {
            // Never started: its disk is created now, so the snapshot has something to hold.
            storage::create_image(&vms.qemu_img, &disks[0].path, "qcow2", vm.spec.disk_size).await?;
        }
        offline(vms, &disks, "-c", &tag, Some("-d")).await?;
    }
    let (i, v, n, d, t) = (id.clone(), vm.id.clone(), req.name.clone(), req.description.clone(), tag.clone());
    vms.store
        .call(move |c| {
            c.execute(
                "INSERT INTO snapshots (id, vm_id, name, description, tag, vm_state, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![i, v, n, d, t, live, now_unix()],
            )?;
            Ok(())
        })
        .await?;
    load(vms, vm_id, &id).await
}

/// Goes back to a snapshot (the VM must be stopped). A live snapshot brings the guest back running,
/// where it was when the snapshot was taken. The answer says which.
pub async fn restore(vms: &VmManager, vm_id: &str, snap_id: &str) -> ApiResult<String> {
    // A missing snapshot is a 404 before the VM's state is looked at.
    load(vms, vm_id, snap_id).await?;
    let mut held = vms.enter(vm_id, Op::RestoreSnapshot).await?;
    let snap = load(vms, vm_id, snap_id).await?;
    let (disks, missing) = holding(vms, &held.vm, &snap.tag).await?;
    if disks.first().is_none_or(|d| d.node != "disk0") {
        return Err(ApiError::Conflict(format!(
            "Snapshot {} is no longer in the VM's disk (was the disk restored from a backup?): delete it",
            snap.name
        )));
    }
    // QEMU resumes a saved guest only with every disk it has holding the snapshot.
    if snap.vm_state && !missing.is_empty() {
        return Err(ApiError::Conflict(format!(
            "Snapshot {} saved the running guest before these volumes were attached: detach {} to restore it",
            snap.name,
            missing.join(", ")
        )));
    }
    // The disks go back in time behind the backups' dirty bitmaps (and qemu-img refuses to revert
    // an image that has any): the next backup reads them whole.
    for d in &disks {
        crate::backups::bitmaps::reset_offline(&vms.qemu_img, &d.path, None).await?;
    }
    // Reverting the disks first makes both kinds of restore leave the same disks behind. Volumes
    // attached since the snapshot keep their data.
    offline(vms, &disks, "-a", &snap.tag, None).await?;
    if snap.vm_state {
        held.start_from_snapshot(&snap.tag).await?;
        return Ok(format!("Snapshot {} restored; the VM runs from it", snap.name));
    }
    Ok(format!("Snapshot {} restored", snap.name))
}

/// Deletes a snapshot (its data in the images is freed).
pub async fn delete(vms: &VmManager, vm_id: &str, snap_id: &str) -> ApiResult<Snapshot> {
    let held = vms.enter(vm_id, Op::DeleteSnapshot).await?;
    let snap = load(vms, vm_id, snap_id).await?;
    // Only where it is: a disk attached or replaced since never had it.
    let (disks, _) = holding(vms, &held.vm, &snap.tag).await?;
    if disks.is_empty() {
        // Nothing holds it any more: only the record is left to remove.
    } else if held.live() {
        let devices: Vec<&str> = disks.iter().map(|d| d.node.as_str()).collect();
        job(&held, |job| Qmp::snapshot_delete(job, &snap.tag, &devices)).await?;
    } else {
        offline(vms, &disks, "-d", &snap.tag, None).await?;
    }
    let s = snap_id.to_string();
    vms.store.call(move |c| Ok(c.execute("DELETE FROM snapshots WHERE id = ?1", [s])?)).await?;
    Ok(snap)
}
