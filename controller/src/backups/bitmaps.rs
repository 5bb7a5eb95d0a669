//! The persistent dirty bitmaps that make backups incremental: each backup leaves one bitmap per
//! qcow2 disk, started at the very point it copied, and named after it; the next backup reads only
//! what that bitmap marks. A bitmap is trusted only when it is the one the last backup recorded and
//! QEMU reports it consistent (a crash of QEMU leaves it marked in use, so inconsistent); anything
//! else means a full read.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;
use tokio::process::Command;

use crate::qmp;
use vmrunner::qmp::Command as Qmp;

/// Every bitmap the backups make is named so; others (an operator's own) are left alone.
pub const PREFIX: &str = "fastvm-backup-";
/// One bit per chunk: a dirty bit means exactly one chunk to read again.
pub const GRANULARITY: u64 = super::chunks::CHUNK_SIZE as u64;

pub fn name_for(backup_id: &str) -> String {
    format!("{PREFIX}{backup_id}")
}

/// A bitmap as QEMU reports it (`query-named-block-nodes`).
#[derive(Debug, Clone, Deserialize)]
pub struct Bitmap {
    pub name: String,
    #[serde(default)]
    pub recording: bool,
    #[serde(default)]
    pub persistent: bool,
    #[serde(default)]
    pub inconsistent: bool,
    #[serde(default)]
    pub granularity: u64,
}

impl Bitmap {
    /// Whether it can be read as "what changed since it was made".
    pub fn usable(&self) -> bool {
        self.recording && self.persistent && !self.inconsistent && self.granularity == GRANULARITY
    }
}

/// The bitmaps on block node `node` of the QEMU behind `monitor`.
pub async fn live(monitor: &Path, node: &str) -> anyhow::Result<Vec<Bitmap>> {
    let nodes = qmp::run(monitor, &Qmp::query_named_block_nodes()).await?;
    let found = nodes.as_array().and_then(|l| l.iter().find(|n| n["node-name"] == node)).cloned();
    let bitmaps = found.map(|n| n["dirty-bitmaps"].clone()).unwrap_or_default();
    if bitmaps.is_null() {
        return Ok(Vec::new());
    }
    serde_json::from_value(bitmaps).context("the dirty bitmaps QEMU reports")
}

/// Removes the backups' bitmaps of node `node` but `keep`, in the QEMU behind `monitor`.
pub async fn remove_live_except(monitor: &Path, node: &str, keep: Option<&str>) -> anyhow::Result<()> {
    for b in live(monitor, node).await? {
        if b.name.starts_with(PREFIX) && Some(b.name.as_str()) != keep {
            qmp::run(monitor, &Qmp::block_dirty_bitmap_remove(node, &b.name))
                .await
                .with_context(|| format!("removing dirty bitmap {}", b.name))?;
        }
    }
    Ok(())
}

/// The names of the backups' bitmaps in a qcow2 image that no QEMU has open.
pub async fn offline(qemu_img: &Path, image: &Path) -> anyhow::Result<Vec<String>> {
    let info = crate::storage::image_info(qemu_img, image).await?;
    let list = info["format-specific"]["data"]["bitmaps"].as_array().cloned().unwrap_or_default();
    Ok(list
        .iter()
        .filter_map(|b| b["name"].as_str())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_string)
        .collect())
}

async fn qemu_img_bitmap(qemu_img: &Path, image: &Path, args: &[&str], name: &str) -> anyhow::Result<()> {
    let out = Command::new(qemu_img)
        .args(["bitmap", "-f", "qcow2"])
        .args(args)
        .arg(image)
        .arg(name)
        .output()
        .await
        .with_context(|| format!("running {}", qemu_img.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "qemu-img bitmap {args:?} {name}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Removes the backups' bitmaps but `keep` from a qcow2 image no QEMU has open.
pub async fn keep_only_offline(qemu_img: &Path, image: &Path, keep: Option<&str>) -> anyhow::Result<()> {
    for name in offline(qemu_img, image).await? {
        if Some(name.as_str()) != keep {
            qemu_img_bitmap(qemu_img, image, &["--remove"], &name).await?;
        }
    }
    Ok(())
}

/// Removes every backup bitmap from a qcow2 image no QEMU has open (its content is about to change
/// behind the bitmaps' back: a snapshot reverted, a restore) and, with `new`, starts that one.
pub async fn reset_offline(qemu_img: &Path, image: &Path, new: Option<&str>) -> anyhow::Result<()> {
    keep_only_offline(qemu_img, image, None).await?;
    if let Some(name) = new {
        let granularity = GRANULARITY.to_string();
        qemu_img_bitmap(qemu_img, image, &["--add", "-g", &granularity], name).await?;
    }
    Ok(())
}
