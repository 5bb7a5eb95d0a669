//! Taking a backup into the chunk store. Disks are copied by QEMU at one point in time
//! (`blockdev-backup`: the running VM's own QEMU, or for a stopped VM one that holds only its
//! disk), only what changed since the VM's last backup when that backup's dirty bitmap is still
//! there and sound; a stopped VM's first backup reads its files directly. Each qcow2 disk is left
//! with a new bitmap started at this backup's point, recorded in its manifest.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rusqlite::params;
use tokio::process::Command;

use super::bitmaps;
use super::chunked::{self, ChunkedDisk, ChunkedManifest, Stats};
use super::chunks::{ChunkId, Writer};
use super::helper::BlockHelper;
use super::mapped::Mapped;
use super::{Backup, Ctx, JOB_TIMEOUT, MANIFEST_SUFFIX, get, slug, volume_member};
use crate::error::{ApiError, ApiResult};
use crate::jobs::Progress;
use crate::storage;
use crate::vms::held::Held;
use crate::vms::lifecycle::Op;
use crate::{qmp, store};
use vmrunner::argv::DiskFormat;
use vmrunner::paths::VmDir;

/// One disk to back up: disk0 or an attached volume.
struct Target {
    node: String,
    format: DiskFormat,
    path: PathBuf,
    member: String,
}

impl Target {
    /// Whether it keeps dirty bitmaps (qcow2 does; a raw volume is read whole every time).
    fn marks(&self) -> bool {
        self.format == DiskFormat::Qcow2
    }

    /// Its entry in the manifest: its chunks and, if it keeps bitmaps, the one from this backup on.
    fn stored(&self, size: u64, chunks: Vec<ChunkId>, bitmap: &str) -> ChunkedDisk {
        ChunkedDisk {
            member: self.member.clone(),
            format: self.format,
            size,
            chunks,
            bitmap: self.marks().then(|| bitmap.to_string()),
        }
    }
}

/// What backing up one disk gave.
struct DiskDone {
    disk: ChunkedDisk,
    stats: Stats,
    /// Why it was read whole although an earlier backup exists.
    full_because: Option<String>,
}

pub(super) async fn take_backup(
    ctx: &Ctx,
    vm_id: &str,
    owner: &str,
    scheduled: bool,
    progress: &Progress,
) -> ApiResult<Backup> {
    let held = ctx.vms.enter(vm_id, Op::Backup).await?;
    let id = store::new_id();
    let writer = ctx.chunks.writer();
    let taken = take(ctx, &held, &writer, &id, owner, scheduled, progress).await;
    drop(writer);
    if taken.is_err() {
        // The chunks it stored that no backup names give their space back.
        if let Err(e) = super::collect_garbage(ctx).await {
            tracing::warn!(error = %e, "garbage collection after a failed backup");
        }
    }
    taken?;
    get(ctx, &id).await?.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("backup vanished")))
}

async fn take(
    ctx: &Ctx,
    held: &Held<'_>,
    writer: &Writer,
    id: &str,
    owner: &str,
    scheduled: bool,
    progress: &Progress,
) -> ApiResult<()> {
    let vm = held.vm.clone();
    let vm_dir = ctx.vms.vm_dir(&vm.id);
    let v = vm.id.clone();
    let volumes = ctx.vms.store.call(move |c| Ok(store::volumes::attached_to(c, &v)?)).await?;
    let mut targets = Vec::new();
    if vm_dir.disk().exists() {
        targets.push(Target {
            node: "disk0".into(),
            format: DiskFormat::Qcow2,
            path: vm_dir.disk(),
            member: VmDir::DISK.into(),
        });
    }
    for v in &volumes {
        targets.push(Target {
            node: vmrunner::argv::volume_ids(&v.id).0,
            format: v.format,
            path: PathBuf::from(&v.path),
            member: volume_member(v),
        });
    }
    let base = previous(ctx, writer, &vm.id).await;
    let bitmap = bitmaps::name_for(id);
    let running = held.live();
    // Work files: QEMU writes live copies, so they go where it can write even inside its
    // container, the VM's own directory; a flattened copy of a stopped disk goes there too.
    std::fs::create_dir_all(vm_dir.path()).context("creating the VM directory")?;
    let work =
        tempfile::Builder::new().prefix(".backup-").tempdir_in(vm_dir.path()).context("copy directory")?;
    let mut disks = Vec::new();
    let mut stats = Stats { incremental: !targets.is_empty(), ..Stats::default() };
    let mut full_because = Vec::new();
    let share = 1.0 / targets.len().max(1) as f64;
    for (i, t) in targets.iter().enumerate() {
        progress.phase(&format!("backing up {}", t.member));
        let from = share * i as f64;
        let report = Share { progress: progress.clone(), from, to: from + share };
        let earlier = base.as_ref().and_then(|m| m.disks.iter().find(|d| d.member == t.member));
        let copy = work.path().join(format!("copy-{i}.qcow2"));
        let done = if running {
            qemu_disk(ctx, &held.monitor(), writer, t, earlier, &bitmap, &copy, report).await?
        } else if t.marks() && earlier.is_some_and(|d| d.bitmap.is_some()) {
            stopped_incremental(ctx, writer, t, earlier, &bitmap, &copy, report).await?
        } else {
            stopped_disk(ctx, writer, t, &bitmap, &copy, report).await?
        };
        let _ = std::fs::remove_file(&copy);
        stats.bytes_read += done.stats.bytes_read;
        stats.bytes_written += done.stats.bytes_written;
        stats.chunks_reused += done.stats.chunks_reused;
        stats.incremental &= done.stats.incremental;
        if let Some(why) = done.full_because {
            full_because.push(format!("{}: {why}", t.member));
        }
        disks.push(done.disk);
    }
    progress.phase("backing up the firmware state");
    let mut files = Vec::new();
    let mut small: Vec<(String, PathBuf)> = Vec::new();
    for name in VmDir::FIRMWARE_FILES {
        let file = vm_dir.path().join(name);
        if file.is_file() {
            small.push((name.to_string(), file));
        }
    }
    if let Ok(entries) = std::fs::read_dir(vm_dir.tpm_state()) {
        for e in entries.filter_map(Result::ok).filter(|e| e.path().is_file()) {
            small.push((format!("tpm/{}", e.file_name().to_string_lossy()), e.path()));
        }
    }
    for (name, path) in small {
        let w = writer.clone();
        let file = blocking(move || chunked::store_file(&w, &name, &path)).await?;
        stats.bytes_read += file.size;
        files.push(file);
    }
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let manifest = ChunkedManifest {
        format: chunked::FORMAT.into(),
        vm_id: vm.id.clone(),
        vm_name: vm.spec.name.clone(),
        spec: vm.spec.clone(),
        created_at: stamp,
        volumes: volumes.iter().map(super::archived_volume).collect(),
        disks,
        files,
        stats: stats.clone(),
    };
    let ids: Vec<ChunkId> = manifest.chunk_names().into_iter().cloned().collect();
    let size = writer.store().stored_size(&ids);
    let path = ctx.dir.join(format!("fastvm-{}-{stamp}-{id}{MANIFEST_SUFFIX}", slug(&vm.spec.name)));
    let (m, at) = (manifest, path.clone());
    blocking(move || m.save(&at)).await?;
    let note = (!full_because.is_empty()).then(|| full_because.join("; "));
    if let Some(why) = &note {
        tracing::info!(vm_id = %vm.id, why, "backup read in full");
    }
    let (i, v, n, o, p) =
        (id.to_string(), vm.id.clone(), vm.spec.name.clone(), owner.to_string(), path.display().to_string());
    let inserted = ctx
        .vms
        .store
        .call(move |c| {
            c.execute(
                "INSERT INTO backups (id, vm_id, vm_name, owner, path, size_bytes, created_at, scheduled, \
                 bytes_read, bytes_written, chunks_reused, incremental, full_reason) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    i,
                    v,
                    n,
                    o,
                    p,
                    size as i64,
                    stamp,
                    scheduled,
                    stats.bytes_read as i64,
                    stats.bytes_written as i64,
                    stats.chunks_reused as i64,
                    stats.incremental,
                    note,
                ],
            )?;
            Ok(())
        })
        .await;
    if let Err(e) = inserted {
        let _ = std::fs::remove_file(&path);
        return Err(e.into());
    }
    // The bitmaps of the backup before are spent: this one's are the point to read from next.
    for t in targets.iter().filter(|t| t.marks()) {
        let removed = if running {
            bitmaps::remove_live_except(&held.monitor(), &t.node, Some(&bitmap)).await
        } else {
            bitmaps::keep_only_offline(&ctx.vms.qemu_img, &t.path, Some(&bitmap)).await
        };
        if let Err(e) = removed {
            tracing::warn!(vm_id = %vm.id, disk = t.member, error = %format!("{e:#}"), "an old dirty bitmap stays");
        }
    }
    Ok(())
}

/// The VM's newest backup in the chunk store, its chunks pinned (the next backup names them for
/// what did not change). None when there is none, or it cannot be read (then: a full read).
async fn previous(ctx: &Ctx, writer: &Writer, vm_id: &str) -> Option<ChunkedManifest> {
    let v = vm_id.to_string();
    let like = format!("%{MANIFEST_SUFFIX}");
    let path: Option<String> = ctx
        .vms
        .store
        .call(move |c| {
            use rusqlite::OptionalExtension;
            Ok(c.query_row(
                "SELECT path FROM backups WHERE vm_id = ?1 AND path LIKE ?2 ORDER BY created_at DESC, rowid DESC LIMIT 1",
                params![v, like],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
        .ok()
        .flatten();
    let (path, w) = (PathBuf::from(path?), writer.clone());
    let loaded = blocking(move || {
        w.pin_loaded(|| ChunkedManifest::load(&path), |m| m.chunk_names().into_iter().cloned().collect())
    })
    .await;
    match loaded {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(vm_id, error = %format!("{e:#}"), "the last backup's manifest cannot be read: a full read");
            None
        }
    }
}

/// A disk of the stopped VM that has a bitmap from its last backup: opened in a QEMU of its own,
/// which copies what the bitmap marks as a running VM's would. Should that QEMU not start, a full
/// read, saying why.
async fn stopped_incremental(
    ctx: &Ctx,
    writer: &Writer,
    t: &Target,
    earlier: Option<&ChunkedDisk>,
    new_bitmap: &str,
    copy: &Path,
    progress: Share,
) -> ApiResult<DiskDone> {
    let work = copy.parent().unwrap_or(Path::new("/tmp"));
    match BlockHelper::start(&ctx.vms.qemu, &t.path, &t.node, work).await {
        Ok(helper) => {
            let done = qemu_disk(ctx, helper.monitor(), writer, t, earlier, new_bitmap, copy, progress).await;
            helper.quit().await;
            done
        }
        Err(e) => {
            tracing::warn!(disk = %t.path.display(), error = %format!("{e:#}"), "no incremental read of a stopped disk");
            let mut done = stopped_disk(ctx, writer, t, new_bitmap, copy, progress).await?;
            done.full_because = Some(format!("QEMU could not open the disk to read its bitmap: {e:#}"));
            Ok(done)
        }
    }
}

/// A disk open in the QEMU behind `monitor` (the running VM's, or a helper's): QEMU copies it at this
/// instant into `copy` (a sparse qcow2), whole, or only what the earlier backup's bitmap marks; then
/// the copy is chunked.
#[allow(clippy::too_many_arguments)]
async fn qemu_disk(
    ctx: &Ctx,
    monitor: &Path,
    writer: &Writer,
    t: &Target,
    earlier: Option<&ChunkedDisk>,
    new_bitmap: &str,
    copy: &Path,
    progress: Share,
) -> ApiResult<DiskDone> {
    let failed = |e: anyhow::Error| ApiError::Operation(format!("live backup of {}: {e:#}", t.member));
    // The copy has the size of the image QEMU has open (a restored disk may differ from the record).
    let size = storage::virtual_size(&ctx.vms.qemu_img, &t.path, t.format.as_str()).await.map_err(failed)?;
    let marks = t.marks();
    let (since, full_because) = if marks {
        let live = bitmaps::live(monitor, &t.node).await.map_err(failed)?;
        let (since, why) = trusted_bitmap(earlier, size, &live);
        // Strays (a backup cut short, a bitmap QEMU found inconsistent) go: at most one stays.
        bitmaps::remove_live_except(monitor, &t.node, since.as_deref()).await.map_err(failed)?;
        (since, why)
    } else {
        (None, earlier.map(|_| "a raw volume keeps no dirty bitmap".to_string()))
    };
    storage::create_image_of(&ctx.vms.qemu_img, copy, "qcow2", size).await?;
    let node = format!("backup-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let file = serde_json::json!({"driver": "qcow2", "node-name": node, "file": {"driver": "file", "filename": copy}});
    qmp::run(monitor, &qmp::Command::blockdev_add(file)).await.map_err(failed)?;
    let backup = |job: &str| {
        if marks {
            qmp::Command::blockdev_backup_marked(
                job,
                &t.node,
                &node,
                new_bitmap,
                bitmaps::GRANULARITY,
                since.as_deref(),
            )
        } else {
            qmp::Command::blockdev_backup(job, &t.node, &node)
        }
    };
    // Copying is the first half of this disk's share, chunking the second.
    let copied =
        qmp::run_job(monitor, backup, JOB_TIMEOUT, &|done, total| progress.report(done / 2, total.max(1)))
            .await
            .map_err(failed);
    let _ = qmp::run(monitor, &qmp::Command::blockdev_del(&node)).await;
    let chunked = async {
        copied?;
        let image = Mapped::open(&ctx.vms.qemu_img, copy, "qcow2").await.map_err(failed)?;
        let base = since.as_ref().and(earlier).map(|d| d.chunks.clone());
        let (w, p) = (writer.clone(), progress.clone());
        blocking(move || {
            chunked::store_image(&w, &image, base.as_deref(), &|done| {
                p.report(size / 2 + done / 2, size.max(1))
            })
        })
        .await
    }
    .await;
    let (chunks, stats) = match chunked {
        Ok(done) => done,
        Err(e) => {
            // The new bitmap marks a point no backup records: the old one stays the one to read from.
            if marks {
                let _ = bitmaps::remove_live_except(monitor, &t.node, since.as_deref()).await;
            }
            return Err(e);
        }
    };
    Ok(DiskDone { disk: t.stored(size, chunks, new_bitmap), stats, full_because })
}

/// The bitmap a backup may read changes from: the one the earlier backup of this disk recorded, if
/// QEMU still has it sound and the disk kept its size. Otherwise none, and why.
fn trusted_bitmap(
    earlier: Option<&ChunkedDisk>,
    size: u64,
    live: &[bitmaps::Bitmap],
) -> (Option<String>, Option<String>) {
    let Some(earlier) = earlier else { return (None, None) };
    let Some(name) = &earlier.bitmap else {
        return (None, Some("the last backup left no dirty bitmap".into()));
    };
    if earlier.size != size {
        return (None, Some("the disk changed size since the last backup".into()));
    }
    match live.iter().find(|b| &b.name == name) {
        Some(b) if b.usable() => (Some(name.clone()), None),
        Some(_) => {
            (None, Some("its dirty bitmap cannot be trusted (QEMU stopped without saving it?)".into()))
        }
        None => (None, Some("its dirty bitmap is gone (a snapshot restored, or the disk replaced)".into())),
    }
}

/// A disk of the stopped VM, read straight from its file (a copy first when the image has a base or
/// compressed clusters); a qcow2 disk then gets the bitmap the next backup of the running VM reads.
async fn stopped_disk(
    ctx: &Ctx,
    writer: &Writer,
    t: &Target,
    new_bitmap: &str,
    copy: &Path,
    progress: Share,
) -> ApiResult<DiskDone> {
    let qemu_img = &ctx.vms.qemu_img;
    let format = t.format.as_str();
    let image = match Mapped::open(qemu_img, &t.path, format).await {
        Ok(image) => image,
        Err(why) => {
            tracing::debug!(disk = %t.path.display(), why = %format!("{why:#}"), "copying the disk before reading it");
            let mut cmd = Command::new(qemu_img);
            cmd.args(["convert", "-f", format, "-O", "qcow2"]).arg(&t.path).arg(copy);
            storage::run(cmd, &format!("copying {}", t.member)).await?;
            Mapped::open(qemu_img, copy, "qcow2").await?
        }
    };
    let size = image.size();
    let w = writer.clone();
    let (chunks, stats) =
        blocking(move || chunked::store_image(&w, &image, None, &|done| progress.report(done, size.max(1))))
            .await?;
    if t.marks() {
        bitmaps::reset_offline(qemu_img, &t.path, Some(new_bitmap)).await?;
    }
    Ok(DiskDone { disk: t.stored(size, chunks, new_bitmap), stats, full_because: None })
}

/// The part of a job's progress one disk's backup fills.
#[derive(Clone)]
struct Share {
    progress: Progress,
    from: f64,
    to: f64,
}

impl Share {
    fn report(&self, done: u64, total: u64) {
        self.progress.bytes(done, total, self.from, self.to);
    }
}

/// Runs chunk work (hashing, compressing, file I/O) off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> ApiResult<T> {
    Ok(tokio::task::spawn_blocking(work).await.context("backup task failed")??)
}
