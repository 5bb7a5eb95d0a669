//! The ISO library: every ISO in the allowed roots, uploads into the data dir's `images/`
//! (streamed to disk, never held in memory; `api::isos`) and deletions (refused while a VM uses
//! the ISO).

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use anyhow::Context;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use regex::Regex;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use utoipa::ToSchema;

use crate::auth::users::SessionUser;
use crate::config::Settings;
use crate::error::{ApiError, ApiResult};
use crate::jobs::Jobs;
use crate::store::Store;

static ISO_NAME_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[A-Za-z0-9][A-Za-z0-9._+ -]{0,200}\.[iI][sS][oO]$").unwrap_or_else(|_| unreachable!())
});

#[derive(Debug, Serialize, ToSchema)]
pub struct IsoInfo {
    pub name: String,
    /// Absolute path, as `iso_path` takes it.
    pub path: String,
    pub size: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IsoUploaded {
    pub success: bool,
    pub message: String,
    pub iso: IsoInfo,
}

/// Where cloud-init seeds are made.
pub fn seeds_dir(settings: &crate::config::Settings) -> PathBuf {
    settings.data_dir.join("cloudinit")
}

/// Whether `path` is a file directly in `dir`.
pub fn in_dir(path: &str, dir: &Path) -> bool {
    Path::new(path).parent() == Some(dir)
}

/// Every ISO image in the allowed directories, sorted by name.
pub fn library(settings: &crate::config::Settings) -> Vec<IsoInfo> {
    let mut isos = Vec::new();
    for root in settings.iso_roots() {
        let Ok(entries) = std::fs::read_dir(&root) else { continue };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let is_iso = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("iso"));
            // metadata() follows symlinks: a link is listed only if it points at a regular file.
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if is_iso && meta.is_file() {
                isos.push(IsoInfo {
                    name: entry.file_name().to_string_lossy().into_owned(),
                    path: path.display().to_string(),
                    size: meta.len(),
                });
            }
        }
    }
    isos.sort_by(|a, b| a.name.cmp(&b.name).then(a.path.cmp(&b.path)));
    isos
}

fn check_name(name: &str) -> ApiResult<()> {
    if !ISO_NAME_RE.is_match(name) || name.contains("..") {
        return Err(ApiError::BadRequest(format!(
            "name: {name:?} must be a plain file name ending in .iso (letters, digits, `. _ + -`, spaces)"
        )));
    }
    Ok(())
}

/// How much an upload may bring, and whether the free space or the configured maximum says so.
#[derive(Debug, Clone, Copy)]
pub struct UploadLimit {
    pub bytes: u64,
    pub by_space: bool,
}

impl UploadLimit {
    /// An upload over the limit: 413 for the configured maximum, 507 for a disk too full.
    pub fn refuse(self) -> ApiError {
        if self.by_space {
            ApiError::disk_full_because(format!(
                "the upload is larger than the {} MiB free",
                self.bytes >> 20
            ))
        } else {
            ApiError::PayloadTooLarge(format!(
                "file: larger than the {} bytes allowed (FASTVM_MAX_ISO_GB)",
                self.bytes
            ))
        }
    }
}

fn resolves_to(iso: Option<&str>, target: &Path) -> bool {
    iso.and_then(|p| std::fs::canonicalize(p).ok()).is_some_and(|p: PathBuf| p == target)
}

/// The ISOs `user` may use: the whole library, but of the cloud-init seeds (which hold password
/// hashes and keys) only their own unless they are an admin.
pub async fn visible_to(settings: &Settings, store: &Store, user: &SessionUser) -> ApiResult<Vec<IsoInfo>> {
    let mut isos = library(settings);
    if !user.is_admin {
        let name = user.username.clone();
        let mine = store.call(move |c| Ok(crate::store::seeds::owned_by(c, &name)?)).await?;
        let seeds = seeds_dir(settings);
        isos.retain(|iso| !in_dir(&iso.path, &seeds) || mine.contains(&iso.name));
    }
    Ok(isos)
}

/// The largest upload accepted now: `FASTVM_MAX_ISO_GB`, and no more than the free space.
pub fn upload_limit(settings: &Settings) -> ApiResult<UploadLimit> {
    let room = crate::storage::room_for(&settings.data_dir.join("images"))?;
    let max = settings.max_iso_gb.saturating_mul(1 << 30);
    Ok(UploadLimit { bytes: room.min(max), by_space: room < max })
}

/// What an upload into the library needs.
pub struct Upload<'a> {
    pub settings: &'a Settings,
    pub qemu_img: &'a Path,
    pub jobs: &'a std::sync::Arc<Jobs>,
}

impl Upload<'_> {
    /// Streams an upload called `name` into the library as a job (`total`: the request's size, for
    /// progress), refusing more than `limit` bytes, an image of another format and a name taken.
    /// Nothing of a failed upload is left behind.
    pub async fn receive<E: std::fmt::Display>(
        &self,
        name: &str,
        owner: &str,
        total: u64,
        limit: UploadLimit,
        mut chunks: impl Stream<Item = Result<Bytes, E>> + Unpin,
    ) -> ApiResult<IsoInfo> {
        check_name(name)?;
        let images = self.settings.data_dir.join("images");
        let target = images.join(name);
        if target.exists() {
            return Err(ApiError::Conflict(format!("name: {name} already exists")));
        }
        let mut job = self.jobs.begin("upload", None, owner);
        let progress = job.progress();
        progress.phase(&format!("receiving {name}"));
        let tmp = images.join(format!(".upload-{}.tmp", uuid::Uuid::new_v4().simple()));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await.context("creating the upload file")?;
            let mut size: u64 = 0;
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("upload interrupted: {e}")))?;
                size += chunk.len() as u64;
                if size > limit.bytes {
                    return Err(limit.refuse());
                }
                file.write_all(&chunk).await.context("writing the upload")?;
                progress.bytes(size, total.max(size), 0.0, 1.0);
            }
            file.sync_all().await.context("syncing the upload")?;
            progress.bytes_now(size, size, 0.0, 1.0);
            crate::storage::untrusted::check(
                self.qemu_img,
                name,
                &tmp,
                vmrunner::argv::DiskFormat::Raw,
                None,
            )
            .await?;
            // A hard link never replaces an existing file, unlike rename: a racing upload of the same
            // name loses with a 409 instead of overwriting.
            match std::fs::hard_link(&tmp, &target) {
                Ok(()) => Ok(size),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    Err(ApiError::Conflict(format!("name: {name} already exists")))
                }
                Err(e) => Err(ApiError::Internal(anyhow::Error::from(e).context("placing the upload"))),
            }
        }
        .await;
        let _ = std::fs::remove_file(&tmp);
        match result {
            Ok(size) => {
                job.succeed(Some(name.to_string()));
                Ok(IsoInfo { name: name.to_string(), path: target.display().to_string(), size })
            }
            Err(e) => {
                job.fail(&e.to_string());
                Err(e)
            }
        }
    }
}

/// Deletes an uploaded ISO; refused while any VM uses it.
pub async fn delete(settings: &Settings, store: &Store, name: &str) -> ApiResult<()> {
    check_name(name)?;
    let path = settings.data_dir.join("images").join(name);
    let canonical = path.canonicalize().map_err(|_| ApiError::NotFound(format!("ISO {name} not found")))?;
    let vms = store.call(|c| Ok(crate::vms::store::list(c)?)).await?;
    if let Some(vm) = vms.iter().find(|vm| {
        resolves_to(vm.spec.iso_path.as_deref(), &canonical)
            || resolves_to(vm.spec.secondary_iso_path.as_deref(), &canonical)
    }) {
        return Err(ApiError::Conflict(format!("ISO {name} is used by VM {} ({})", vm.spec.name, vm.id)));
    }
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok(())
}
