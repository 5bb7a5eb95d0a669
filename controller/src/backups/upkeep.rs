//! Keeping the chunk store sound: garbage collection (chunks no manifest names go), verification
//! (every chunk re-read and checked against its name; the backups naming a bad one are marked
//! damaged) and, at start, the manifests a crash left without a record.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use utoipa::ToSchema;

use super::chunked::ChunkedManifest;
use super::chunks::{ChunkId, ChunkStore, Collected};
use super::{Backup, Ctx, MANIFEST_SUFFIX};
use crate::error::ApiResult;
use crate::jobs::Progress;
use crate::store::now_unix;

fn is_manifest(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    !name.starts_with('.') && name.ends_with(MANIFEST_SUFFIX)
}

/// Every chunk the manifests in `dir` name. A manifest that cannot be read is an error: nothing
/// may be collected on a doubt.
fn named_chunks(dir: &Path) -> anyhow::Result<HashSet<ChunkId>> {
    let mut named = HashSet::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if is_manifest(&path) {
            named.extend(ChunkedManifest::load(&path)?.chunk_names().into_iter().cloned());
        }
    }
    Ok(named)
}

/// Removes the chunks no manifest names; safe while backups run (what they rely on is pinned).
pub async fn collect_garbage(ctx: &Ctx) -> ApiResult<Collected> {
    let (store, dir) = (ctx.chunks.clone(), ctx.dir.clone());
    let done = tokio::task::spawn_blocking(move || store.collect(|| named_chunks(&dir)))
        .await
        .context("garbage collection task")??;
    if done.removed > 0 {
        tracing::info!(
            removed = done.removed,
            bytes_freed = done.bytes_freed,
            "chunks no backup names removed"
        );
    }
    Ok(done)
}

/// At start after a backup was cut short: the chunks it wrote aside, a manifest it wrote but did not
/// record, and the chunks only that manifest named go.
pub async fn recover(ctx: &Ctx) -> ApiResult<()> {
    let store = ctx.chunks.clone();
    tokio::task::spawn_blocking(move || store.sweep_temporary()).await.context("recovery task")??;
    let recorded: HashSet<PathBuf> = ctx
        .vms
        .store
        .call(|c| {
            let mut stmt = c.prepare("SELECT path FROM backups")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?
        .into_iter()
        .map(PathBuf::from)
        .collect();
    let Ok(entries) = std::fs::read_dir(&ctx.dir) else { return Ok(()) };
    for path in entries.filter_map(Result::ok).map(|e| e.path()) {
        if is_manifest(&path) && !recorded.contains(&path) {
            tracing::info!(manifest = %path.display(), "removing a backup manifest that has no record");
            let _ = std::fs::remove_file(&path);
        }
    }
    collect_garbage(ctx).await?;
    Ok(())
}

/// What a verification found.
#[derive(Debug, Serialize, ToSchema)]
pub struct Verification {
    /// Whether every chunk the verified backup(s) name is there and matches its name.
    pub ok: bool,
    pub chunks_checked: u64,
    /// The chunks found damaged or missing.
    pub damaged_chunks: Vec<String>,
    /// The backups (ids) that name a damaged chunk, now marked damaged.
    pub damaged_backups: Vec<String>,
    pub message: String,
}

/// Re-reads and checks the chunks of `only` (one backup), or of every backup; marks damaged each
/// backup naming a bad chunk, and records when the checked ones were verified.
pub async fn verify(ctx: &Ctx, only: Option<&Backup>, progress: &Progress) -> ApiResult<Verification> {
    if let Some(b) = only.filter(|b| !b.chunked()) {
        return verify_archive(ctx, b, progress).await;
    }
    let all = super::all(ctx).await?;
    let chunked: Vec<Backup> = all.into_iter().filter(Backup::chunked).collect();
    let checked_ids: Vec<String> = match only {
        Some(b) => vec![b.id.clone()],
        None => chunked.iter().map(|b| b.id.clone()).collect(),
    };
    let (checked, others): (Vec<Backup>, Vec<Backup>) =
        chunked.into_iter().partition(|b| checked_ids.contains(&b.id));
    // Which backups name which chunks; a manifest that cannot be read is damage of its own.
    let (mut names, unreadable) = chunks_named_by(&checked).await?;
    let mut to_check: Vec<ChunkId> = checked_ids
        .iter()
        .filter_map(|id| names.get(id))
        .flatten()
        .cloned()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    to_check.sort();
    progress.phase("reading and checking every chunk");
    let (store, list, p) = (ctx.chunks.clone(), to_check.clone(), progress.clone());
    let bad: HashSet<ChunkId> =
        tokio::task::spawn_blocking(move || check_chunks(&store, &list, &p)).await.context("verify task")?;
    // The other backups matter only if they share a bad chunk.
    if !bad.is_empty() {
        names.extend(chunks_named_by(&others).await?.0);
    }
    let mut damaged: Vec<String> = names
        .iter()
        .filter(|(_, ids)| ids.iter().any(|id| bad.contains(id)))
        .map(|(id, _)| id.clone())
        .chain(unreadable.iter().cloned())
        .collect();
    damaged.sort();
    let now = now_unix();
    let (marked, checked) = (damaged.clone(), checked_ids.clone());
    ctx.vms
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            for id in &checked {
                tx.execute(
                    "UPDATE backups SET damaged = ?2, verified_at = ?3 WHERE id = ?1",
                    rusqlite::params![id, marked.contains(id), now],
                )?;
            }
            for id in marked.iter().filter(|id| !checked.contains(id)) {
                tx.execute("UPDATE backups SET damaged = 1 WHERE id = ?1", [id])?;
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
    let mut damaged_chunks: Vec<String> = bad.iter().map(|id| id.as_str().to_string()).collect();
    damaged_chunks.sort();
    let ok = damaged_chunks.is_empty() && !checked_ids.iter().any(|id| unreadable.contains(id));
    if !ok {
        // Each bad chunk was logged by name as it was found.
        tracing::warn!(chunks = damaged_chunks.len(), backups = ?damaged, "verification found damaged backups");
    }
    let message = if ok {
        format!("{} chunks checked: all sound", to_check.len())
    } else {
        format!(
            "{} of {} chunks damaged or missing; {} backup(s) marked damaged",
            damaged_chunks.len(),
            to_check.len(),
            damaged.len()
        )
    };
    Ok(Verification {
        ok,
        chunks_checked: to_check.len() as u64,
        damaged_chunks,
        damaged_backups: damaged,
        message,
    })
}

/// The chunks each of `backups` names, by backup id; and the ids of those whose manifest cannot be
/// read.
async fn chunks_named_by(backups: &[Backup]) -> ApiResult<(HashMap<String, HashSet<ChunkId>>, Vec<String>)> {
    let mut names = HashMap::new();
    let mut unreadable = Vec::new();
    for b in backups {
        let path = PathBuf::from(&b.path);
        match tokio::task::spawn_blocking(move || ChunkedManifest::load(&path))
            .await
            .context("verify task")?
        {
            Ok(m) => {
                names.insert(b.id.clone(), m.chunk_names().into_iter().cloned().collect());
            }
            Err(e) => {
                tracing::warn!(backup = b.id, error = %format!("{e:#}"), "a backup manifest cannot be read");
                unreadable.push(b.id.clone());
            }
        }
    }
    Ok((names, unreadable))
}

/// The chunks of `ids` that are missing or do not match their name, read on every core.
fn check_chunks(store: &ChunkStore, ids: &[ChunkId], progress: &Progress) -> HashSet<ChunkId> {
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let bad = std::sync::Mutex::new(HashSet::new());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(id) = ids.get(i) else { return };
                    if let Err(e) = store.get(id) {
                        tracing::warn!(error = %format!("{e:#}"), "verification");
                        bad.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone());
                    }
                    progress.bytes(i as u64 + 1, ids.len() as u64, 0.0, 1.0);
                }
            });
        }
    });
    bad.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// An archive is verified by reading it through, as a restore would (into a scratch directory).
async fn verify_archive(ctx: &Ctx, backup: &Backup, progress: &Progress) -> ApiResult<Verification> {
    let scratch =
        tempfile::Builder::new().prefix(".restore-").tempdir_in(&ctx.dir).context("scratch directory")?;
    progress.phase("reading the archive through");
    let (archive, dir, p) = (PathBuf::from(&backup.path), scratch.path().to_path_buf(), progress.clone());
    let read = tokio::task::spawn_blocking(move || {
        super::archive::extract_verified(&archive, &dir, &|done, total| p.bytes(done, total, 0.0, 1.0))
    })
    .await
    .context("verify task")?;
    drop(scratch);
    if let Err(e) = &read {
        if crate::error::disk_full(e) {
            return Err(crate::error::ApiError::disk_full_because("reading the archive through needs room"));
        }
    }
    let (id, damaged, now) = (backup.id.clone(), read.is_err(), now_unix());
    ctx.vms
        .store
        .call(move |c| {
            c.execute(
                "UPDATE backups SET damaged = ?2, verified_at = ?3 WHERE id = ?1",
                rusqlite::params![id, damaged, now],
            )?;
            Ok(())
        })
        .await?;
    Ok(match read {
        Ok(_) => Verification {
            ok: true,
            chunks_checked: 0,
            damaged_chunks: Vec::new(),
            damaged_backups: Vec::new(),
            message: "The archive reads through and matches its manifest".into(),
        },
        Err(e) => Verification {
            ok: false,
            chunks_checked: 0,
            damaged_chunks: Vec::new(),
            damaged_backups: vec![backup.id.clone()],
            message: format!("The archive is damaged: {e:#}"),
        },
    })
}
