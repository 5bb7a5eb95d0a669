//! Clones. Copy-on-write where it can be: the source's disk is frozen as a read-only base image (a
//! rename: O(1) in the disk's size) and the source and the clone each get an empty overlay on it, so
//! neither ever sees the other's writes; bases are removed once no disk stacks on them any more. A
//! source with snapshots keeps its disk (the snapshots live in it): the clone gets a full, flattened
//! copy of its current state instead.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::params;
use vmrunner::VmSpec;
use vmrunner::paths::VmDir;

use super::lifecycle::Op;
use super::manager::VmManager;
use super::model::VmRecord;
use super::store;
use crate::error::{ApiError, ApiResult};
use crate::jobs::Progress;
use crate::storage;

/// How a clone got its disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneKind {
    /// An overlay on the source's frozen disk: instant whatever its size.
    CopyOnWrite,
    /// A full copy of the current state (the source has snapshots): takes as long as the data.
    Flattened,
}

/// Bytes a file takes on disk (what a copy has to write).
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

impl VmManager {
    fn base_dir(&self) -> PathBuf {
        self.vms_dir.with_file_name("base")
    }

    fn disk_of(&self, id: &str) -> PathBuf {
        self.vm_dir(id).disk()
    }

    /// The images a VM's disk is stacked on, each checked to be one of the shared bases clones make
    /// before it is read: a disk that names any other file (however it got here) is refused rather
    /// than started.
    pub(super) async fn disk_bases(&self, id: &str) -> ApiResult<Vec<PathBuf>> {
        let base_dir = self.base_dir().canonicalize().ok();
        let mut bases: Vec<PathBuf> = Vec::new();
        let mut current = self.disk_of(id);
        while current.exists() {
            let backing = storage::backing_file(&self.qemu_img, &current).await.map_err(|e| {
                ApiError::Operation(format!("reading what {} is stacked on: {e:#}", current.display()))
            })?;
            let Some(b) = backing else { break };
            let ours =
                base_dir.as_ref().zip(b.canonicalize().ok()).is_some_and(|(dir, b)| b.starts_with(dir));
            if !ours {
                return Err(ApiError::Conflict(format!(
                    "disk0.qcow2 is stacked on {}, which is not one of Fast VM's base images: not started",
                    b.display()
                )));
            }
            if bases.contains(&b) {
                break; // A cycle; QEMU will say what it thinks of it.
            }
            bases.push(b.clone());
            current = b;
        }
        Ok(bases)
    }

    /// Clones a stopped VM: new id, name, MACs and TPM; copied UEFI variables; no port forwards (their
    /// host ports belong to the source); attached volumes stay with the source.
    #[allow(clippy::too_many_arguments)]
    pub async fn clone_vm(
        &self,
        source_id: &str,
        name: String,
        memory: Option<u64>,
        cpus: Option<u32>,
        owner: &str,
        is_admin: bool,
        progress: &Progress,
    ) -> ApiResult<(VmRecord, CloneKind)> {
        let _guard = self.lock_for(source_id, Op::Clone).await?;
        let source = self.get(source_id).await?;
        self.require(&source, Op::Clone).await?;
        let sid = source_id.to_string();
        let snapshots: i64 = self
            .store
            .call(move |c| {
                Ok(c.query_row("SELECT COUNT(*) FROM snapshots WHERE vm_id = ?1", params![sid], |r| {
                    r.get(0)
                })?)
            })
            .await?;
        let kind = if snapshots > 0 { CloneKind::Flattened } else { CloneKind::CopyOnWrite };
        let mut spec: VmSpec = source.spec.clone();
        spec.name = name;
        spec.memory = memory.unwrap_or(spec.memory);
        spec.cpus = cpus.unwrap_or(spec.cpus);
        for net in &mut spec.networks {
            net.mac_address = None;
            net.port_forwards.clear();
        }
        self.check_rules(&spec, None, owner, is_admin).await?;
        self.normalize(&mut spec).await?;
        self.check_quota(owner, crate::quotas::store::of_vm(&spec)).await?;
        let clone_id = crate::store::new_id();
        let clone_dir = self.vms_dir.join(&clone_id);
        std::fs::create_dir_all(&clone_dir).map_err(anyhow::Error::from)?;
        let result = match kind {
            CloneKind::CopyOnWrite => {
                progress.phase("cloning (copy-on-write)");
                self.share_disk(source_id, &clone_id).await
            }
            CloneKind::Flattened => {
                progress
                    .phase("copying the disk (the source has snapshots: a full copy of its current state)");
                self.copy_disk(source_id, &clone_id, progress).await
            }
        };
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&clone_dir);
            return Err(e);
        }
        // UEFI variables (boot entries) are the machine's own settings: the clone starts with a copy.
        for file in VmDir::FIRMWARE_FILES {
            let from = self.vm_dir(source_id).path().join(file);
            if from.exists() {
                std::fs::copy(&from, clone_dir.join(file)).map_err(anyhow::Error::from)?;
            }
        }
        let record = VmRecord::new_stopped(clone_id, owner, spec, self.runtime.name());
        if let Err(e) = self.insert_within_quota(&record).await {
            let _ = std::fs::remove_dir_all(&clone_dir);
            return Err(e);
        }
        Ok((record, kind))
    }

    /// Copies the source's disk as it is now into the clone's, its snapshots left out and any base
    /// it stacks on (ours only, checked first) folded in. Progress: bytes written of the source's.
    async fn copy_disk(&self, source_id: &str, clone_id: &str, progress: &Progress) -> ApiResult<()> {
        let source_disk = self.disk_of(source_id);
        if !source_disk.exists() {
            return Ok(()); // never started: the clone gets its own empty disk at first start
        }
        let bases = self.disk_bases(source_id).await?;
        let total = allocated(&source_disk) + bases.iter().map(|b| allocated(b)).sum::<u64>();
        let target = self.disk_of(clone_id);
        let partial = crate::storage::temporary_name(&target);
        let mut cmd = tokio::process::Command::new(&self.qemu_img);
        cmd.args(["convert", "-O", "qcow2"])
            .arg(storage::qcow2_image(&source_disk, bases.is_empty()))
            .arg(&partial)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| ApiError::Operation(format!("running qemu-img convert: {e}")))?;
        let done = child.wait_with_output();
        tokio::pin!(done);
        let out = loop {
            tokio::select! {
                out = &mut done => break out,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {
                    progress.bytes(allocated(&partial).min(total), total, 0.0, 1.0);
                }
            }
        };
        let failed = |why: String| {
            let _ = std::fs::remove_file(&partial);
            ApiError::Operation(format!("copying the disk: {why}"))
        };
        let out = out.map_err(|e| failed(e.to_string()))?;
        if !out.status.success() {
            return Err(failed(String::from_utf8_lossy(&out.stderr).trim().to_string()));
        }
        std::fs::rename(&partial, &target).map_err(|e| failed(e.to_string()))?;
        progress.bytes_now(total, total, 0.0, 1.0);
        Ok(())
    }

    /// Freezes the source disk as a base and stacks an overlay for each VM on it; puts everything
    /// back as it was on failure.
    async fn share_disk(&self, source_id: &str, clone_id: &str) -> ApiResult<()> {
        let source_disk = self.disk_of(source_id);
        if !source_disk.exists() {
            return Ok(()); // never started: the clone gets its own empty disk at first start
        }
        let _bases = self.bases.lock().await;
        std::fs::create_dir_all(self.base_dir()).map_err(anyhow::Error::from)?;
        let base = self.base_dir().join(format!("{}.qcow2", uuid::Uuid::new_v4().simple()));
        std::fs::rename(&source_disk, &base).map_err(anyhow::Error::from)?;
        let undo = |e: ApiError| {
            let _ = std::fs::remove_file(&source_disk);
            let _ = std::fs::rename(&base, &source_disk);
            e
        };
        storage::create_overlay(&self.qemu_img, &base, &source_disk).await.map_err(undo)?;
        if let Err(e) = storage::create_overlay(&self.qemu_img, &base, &self.disk_of(clone_id)).await {
            return Err(undo(e));
        }
        Ok(())
    }

    /// Deletes base images nothing stacks on any more (after a VM's disk went away).
    pub async fn collect_bases(&self) {
        let _bases = self.bases.lock().await;
        let vms = match self.store.call(|c| Ok(store::list(c)?)).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "listing VMs for base clean-up failed");
                return;
            }
        };
        let disks: Vec<PathBuf> = vms.iter().map(|vm| self.disk_of(&vm.id)).collect();
        for removed in storage::collect_unused_bases(&self.qemu_img, &self.base_dir(), &disks).await {
            tracing::info!(base = %removed.display(), "removed a base image nothing uses any more");
        }
    }
}
