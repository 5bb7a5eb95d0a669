//! Standalone volumes, and attaching them to VMs: on a stopped VM, or hot-plugged into a running
//! one.

use std::time::{Duration, Instant};

use serde::Deserialize;
use utoipa::ToSchema;
use vmrunner::argv::{
    DiskFormat, ROOT_PORTS, VolumeDisk, is_q35, volume_blockdev, volume_device, volume_ids,
};
use vmrunner::validate::{MAX_DISK_GB, validate_name};

use crate::auth::users::SessionUser;
use crate::error::{ApiError, ApiResult};
use crate::qmp::{self, Command};
use crate::store::now_unix;
use crate::store::volumes::{self as store, Volume};
use crate::vms::held::Held;
use crate::vms::lifecycle::Op;
use crate::vms::manager::VmManager;
use crate::vms::model::VmRecord;

/// How long a guest may take to let go of a hot-unplugged disk.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    /// 1-50 of letters, digits, space, `_ . -`.
    pub name: String,
    /// 1-1024.
    pub size_gb: u64,
    #[serde(default)]
    pub format: DiskFormat,
}

fn visible(user: &SessionUser, v: &Volume) -> bool {
    user.may_see(&v.owner)
}

/// The volume if `user` may see it; 404 otherwise.
pub async fn owned(vms: &VmManager, user: &SessionUser, id: &str) -> ApiResult<Volume> {
    let i = id.to_string();
    match vms.store.call(move |c| Ok(store::get(c, &i)?)).await? {
        Some(v) if visible(user, &v) => Ok(v),
        _ => Err(ApiError::NotFound("Volume not found".into())),
    }
}

/// Volumes `user` may see (all for admins).
pub async fn list(vms: &VmManager, user: &SessionUser) -> ApiResult<Vec<Volume>> {
    let all = vms.store.call(|c| Ok(store::list(c)?)).await?;
    Ok(all.into_iter().filter(|v| visible(user, v)).collect())
}

/// Creates an empty volume (thin: space is used as the guest writes), within `owner`'s quota.
pub async fn create(vms: &VmManager, owner: &str, req: CreateVolume) -> ApiResult<Volume> {
    validate_name(&req.name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if !(1..=MAX_DISK_GB).contains(&req.size_gb) {
        return Err(ApiError::BadRequest(format!("size_gb: must be 1 to {MAX_DISK_GB}")));
    }
    let id = crate::store::new_id();
    let path = vms.volumes_dir.join(format!("{id}.{}", req.format.as_str()));
    crate::storage::create_image(&vms.qemu_img, &path, req.format.as_str(), req.size_gb).await?;
    let (i, name, owner, p) = (id.clone(), req.name.clone(), owner.to_string(), path.display().to_string());
    let inserted = vms
        .store
        .call(move |c| {
            let need = crate::quotas::store::Usage::disk(req.size_gb as i64);
            if let Some(why) = crate::quotas::store::exceeded(c, &owner, need, None)? {
                return Ok(Err(why));
            }
            store::insert(c, &i, &name, &owner, req.size_gb, req.format, &p, now_unix())?;
            Ok(Ok(store::get(c, &i)?))
        })
        .await;
    let inserted = match inserted {
        Ok(Err(why)) => {
            let _ = std::fs::remove_file(&path);
            return Err(ApiError::Forbidden(why));
        }
        Ok(Ok(v)) => Ok(v),
        Err(e) => Err(e),
    };
    match inserted {
        Ok(Some(v)) => Ok(v),
        other => {
            // Nothing is kept of a volume the database does not know.
            let _ = std::fs::remove_file(&path);
            other?;
            Err(ApiError::Internal(anyhow::anyhow!("volume vanished after insert")))
        }
    }
}

/// Deletes a volume and its data. An attached volume is refused (detach it first).
pub async fn delete(vms: &VmManager, user: &SessionUser, vol_id: &str) -> ApiResult<Volume> {
    let volume = owned(vms, user, vol_id).await?;
    if let Some(vm) = &volume.attached_to {
        return Err(ApiError::Conflict(format!("Volume is attached to VM {vm}: detach it first")));
    }
    // Checked again as it is deleted: an attach may have claimed it since it was read.
    let i = vol_id.to_string();
    if !vms.store.call(move |c| Ok(store::delete_unattached(c, &i)?)).await? {
        // Attached since, or deleted by another request.
        owned(vms, user, vol_id).await?;
        return Err(ApiError::Conflict("Volume was attached meanwhile: detach it first".into()));
    }
    if let Err(e) = std::fs::remove_file(&volume.path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(volume = vol_id, error = %e, "could not remove the volume's file");
        }
    }
    Ok(volume)
}

/// Attaches a volume to a VM: at once when it is stopped, hot-plugged (the guest sees a new disk)
/// when it runs. The volume as it is now, and the VM.
pub async fn attach(
    vms: &VmManager,
    user: &SessionUser,
    vm_id: &str,
    vol_id: &str,
) -> ApiResult<(Volume, VmRecord)> {
    owned(vms, user, vol_id).await?;
    let held = vms.enter(vm_id, Op::AttachVolume).await?;
    let volume = owned(vms, user, vol_id).await?;
    if let Some(other) = &volume.attached_to {
        return Err(ApiError::Conflict(format!("Volume is already attached to VM {other}")));
    }
    let id = vm_id.to_string();
    let used: Vec<u32> = vms
        .store
        .call(move |c| Ok(store::attached_to(c, &id)?))
        .await?
        .iter()
        .filter_map(|v| v.slot)
        .collect();
    let slot = (1..=ROOT_PORTS)
        .find(|s| !used.contains(s))
        .ok_or_else(|| ApiError::Conflict(format!("A VM takes at most {ROOT_PORTS} volumes")))?;
    // Claimed before it is plugged in: another VM's attach (which holds a different VM lock) or a
    // delete cannot slip in between, and a failed hot-plug hands the claim back.
    let (v, i) = (vol_id.to_string(), vm_id.to_string());
    if !vms.store.call(move |c| Ok(store::claim(c, &v, &i, slot)?)).await? {
        return Err(ApiError::Conflict("Volume was attached elsewhere or deleted meanwhile".into()));
    }
    if let Err(e) = plug_if_running(&held, &volume, slot).await {
        let v = vol_id.to_string();
        if let Err(undo) = vms.store.call(move |c| Ok(store::set_attachment(c, &v, None, None)?)).await {
            tracing::error!(volume = vol_id, error = %undo, "could not hand back a volume's claim");
        }
        return Err(e);
    }
    let v = vol_id.to_string();
    let volume = vms
        .store
        .call(move |c| Ok(store::get(c, &v)?))
        .await?
        .ok_or_else(|| ApiError::NotFound("Volume not found".into()))?;
    Ok((volume, held.vm.clone()))
}

/// Hot-plugs the volume at `slot` when the VM runs (a stopped VM gets it at its next start).
async fn plug_if_running(held: &Held<'_>, volume: &Volume, slot: u32) -> ApiResult<()> {
    if !held.live() {
        return Ok(());
    }
    let disk =
        VolumeDisk { id: volume.id.clone(), path: volume.path.clone().into(), format: volume.format, slot };
    held.qmp(&Command::blockdev_add(volume_blockdev(&disk)))
        .await
        .map_err(|e| ApiError::Operation(format!("hot-plugging the volume: {e:#}")))?;
    if let Err(e) = held.qmp(&Command::device_add(volume_device(is_q35(&held.vm.spec), &disk))).await {
        let (node, _) = volume_ids(&volume.id);
        let _ = held.qmp(&Command::blockdev_del(&node)).await;
        return Err(ApiError::Operation(format!("hot-plugging the volume: {e:#}")));
    }
    Ok(())
}

/// Detaches a volume: at once from a stopped VM; from a running one once the guest lets go of the
/// disk.
pub async fn detach(vms: &VmManager, user: &SessionUser, vm_id: &str, vol_id: &str) -> ApiResult<Volume> {
    let held = vms.enter(vm_id, Op::DetachVolume).await?;
    let volume = owned(vms, user, vol_id).await?;
    if volume.attached_to.as_deref() != Some(vm_id) {
        return Err(ApiError::Conflict("Volume is not attached to this VM".into()));
    }
    if held.live() {
        let qmp_sock = held.monitor();
        let (node, dev) = volume_ids(&volume.id);
        // An error here is not the end: an earlier detach that timed out may have left the device
        // mid-unplug, or already gone. Whether the node can be released decides.
        let asked = qmp::run(&qmp_sock, &Command::device_del(&dev)).await;
        release_node(&qmp_sock, &node, asked.err()).await?;
    }
    let v = vol_id.to_string();
    vms.store
        .call(move |c| {
            store::set_attachment(c, &v, None, None)?;
            Ok(store::get(c, &v)?)
        })
        .await?
        .ok_or_else(|| ApiError::NotFound("Volume not found".into()))
}

/// Deletes a hot-unplugged volume's block node once QEMU lets go of it. `device_del` only asks the
/// guest; QEMU frees the node when it finalizes the device, which can be after the device has
/// left `query-block`, so the deletion itself is retried while the node is still in use.
async fn release_node(
    qmp_sock: &std::path::Path,
    node: &str,
    unplug_error: Option<anyhow::Error>,
) -> ApiResult<()> {
    let deadline = Instant::now() + UNPLUG_TIMEOUT;
    loop {
        let error = match qmp::run(qmp_sock, &Command::blockdev_del(node)).await {
            Ok(_) => return Ok(()),
            Err(e) => format!("{e:#}"),
        };
        // An earlier detach got this far and then failed to record it: nothing left to release.
        if error.contains("Failed to find node") {
            return Ok(());
        }
        if !error.contains("is in use") {
            return Err(ApiError::Operation(format!("releasing the volume: {error}")));
        }
        if Instant::now() >= deadline {
            return Err(ApiError::Conflict(match unplug_error {
                Some(e) => format!("The guest has not released the disk: unplugging it failed: {e:#}"),
                None => "The guest has not released the disk yet (is it still booting?); try again".into(),
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
