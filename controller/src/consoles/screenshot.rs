//! `GET /api/vms/{vm_id}/screenshot`: the guest's display as a PNG (QMP `screendump`), scaled down
//! to `?width=` when asked. Each size is kept for a few seconds per VM, so a dashboard full of
//! viewers costs one dump.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;

use crate::error::{ApiError, ApiResult};

/// How long one dump answers every request for the same VM and size.
const FRESH_FOR: Duration = Duration::from_secs(3);
/// The smallest width a screenshot is scaled to.
pub const MIN_WIDTH: u32 = 16;

/// A VM and the width asked for (`None`: its own).
type Key = (String, Option<u32>);

#[derive(Default)]
pub struct Screenshots {
    cache: Mutex<HashMap<Key, (Instant, Bytes)>>,
    /// One dump at a time: a request that waited takes what the one before it left in the cache.
    dumping: tokio::sync::Mutex<()>,
}

impl Screenshots {
    fn cached(&self, key: &Key) -> Option<Bytes> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(key).filter(|(at, _)| at.elapsed() < FRESH_FOR).map(|(_, png)| png.clone())
    }

    fn keep(&self, key: Key, png: Bytes) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|_, (at, _)| at.elapsed() < FRESH_FOR);
        cache.insert(key, (Instant::now(), png));
    }

    /// The VM's screen, `width` pixels wide at most (its own size without one).
    pub async fn take(
        &self,
        qmp: &std::path::Path,
        run_dir: &std::path::Path,
        vm_id: &str,
        width: Option<u32>,
    ) -> ApiResult<Bytes> {
        let key = (vm_id.to_string(), width);
        if let Some(png) = self.cached(&key) {
            return Ok(png);
        }
        let _one = self.dumping.lock().await;
        if let Some(png) = self.cached(&key) {
            return Ok(png);
        }
        let full = match self.cached(&(vm_id.to_string(), None)) {
            Some(png) => png,
            None => {
                let png = dump(qmp, run_dir).await?;
                self.keep((vm_id.to_string(), None), png.clone());
                png
            }
        };
        let png = match width {
            None => full,
            Some(w) => {
                let scaled =
                    tokio::task::spawn_blocking(move || scale(&full, w)).await.context("scaling task")??;
                self.keep(key, scaled.clone());
                scaled
            }
        };
        Ok(png)
    }
}

/// Has QEMU write its display to a file in the VM's run directory (where a container's QEMU can
/// write too) and reads it back.
async fn dump(qmp: &std::path::Path, run_dir: &std::path::Path) -> ApiResult<Bytes> {
    let file = run_dir.join(format!(".screendump-{}.png", uuid::Uuid::new_v4().simple()));
    let result = crate::qmp::run(qmp, &crate::qmp::Command::screendump(&file)).await;
    let png = result.map_err(|e| ApiError::Operation(format!("screendump: {e:#}"))).and_then(|_| {
        std::fs::read(&file)
            .map_err(|e| ApiError::Internal(anyhow::Error::from(e).context("reading the screendump")))
    });
    let _ = std::fs::remove_file(&file);
    Ok(Bytes::from(png?))
}

/// The PNG scaled to `width` (keeping its aspect), or as it is when it is that narrow already.
fn scale(png: &[u8], width: u32) -> anyhow::Result<Bytes> {
    let image = image::load_from_memory_with_format(png, image::ImageFormat::Png)
        .context("decoding the screendump")?;
    if width >= image.width() {
        return Ok(Bytes::copy_from_slice(png));
    }
    let height =
        (u64::from(image.height()) * u64::from(width) / u64::from(image.width().max(1))).max(1) as u32;
    let small = image.resize_exact(width, height, image::imageops::FilterType::Triangle);
    let mut out = Cursor::new(Vec::new());
    small.write_to(&mut out, image::ImageFormat::Png).context("encoding the screenshot")?;
    Ok(Bytes::from(out.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_keeps_the_aspect_and_never_grows() -> anyhow::Result<()> {
        let mut src = image::RgbImage::new(640, 400);
        for (x, _, p) in src.enumerate_pixels_mut() {
            *p = image::Rgb([(x % 256) as u8, 0, 0]);
        }
        let mut png = Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(src).write_to(&mut png, image::ImageFormat::Png)?;
        let png = png.into_inner();
        let small = image::load_from_memory(&scale(&png, 160)?)?;
        assert_eq!((small.width(), small.height()), (160, 100));
        assert_eq!(scale(&png, 2000)?.as_ref(), png.as_slice(), "no upscaling");
        Ok(())
    }
}
