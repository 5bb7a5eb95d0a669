//! A disk image read as its guest sees it, straight from the file: `qemu-img map` tells where each
//! extent's data lies (or that it reads as zeros), so holes cost nothing and no copy is made.
//!
//! It also tells which extents the image itself holds (`present`): in the sparse image a QMP
//! `blockdev-backup` with a dirty bitmap wrote, those are exactly the chunks that changed.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;
use tokio::process::Command;

#[derive(Debug, Clone, Deserialize)]
struct Extent {
    start: u64,
    length: u64,
    /// 0: this image; more: a backing file.
    depth: u32,
    /// Allocated in this image or a backing file (an unwritten region is not). Older QEMU lacks it.
    present: Option<bool>,
    data: bool,
    /// Where the data lies in the file (absent for compressed or encrypted clusters).
    offset: Option<u64>,
}

pub struct Mapped {
    file: File,
    extents: Vec<Extent>,
    size: u64,
}

impl Mapped {
    /// Maps `image` (`format`: qcow2 or raw; `-U`: QEMU may have it open, read-only). Only an image
    /// that holds all its own data uncompressed can be read this way: one with a backing file or
    /// compressed clusters is refused, and the caller copies it out through QEMU instead.
    pub async fn open(qemu_img: &Path, image: &Path, format: &str) -> anyhow::Result<Mapped> {
        let out = Command::new(qemu_img)
            .args(["map", "-U", "-f", format, "--output=json"])
            .arg(image)
            .output()
            .await
            .context("running qemu-img map")?;
        if !out.status.success() {
            bail!("qemu-img map {}: {}", image.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        let extents: Vec<Extent> = serde_json::from_slice(&out.stdout).context("reading qemu-img map")?;
        if let Some(e) = extents.iter().find(|e| e.depth > 0 && e.data) {
            bail!("{} has data in a backing file (at {})", image.display(), e.start);
        }
        if let Some(e) = extents.iter().find(|e| e.data && e.offset.is_none()) {
            bail!("{} has compressed or encrypted data (at {})", image.display(), e.start);
        }
        let size = extents.last().map(|e| e.start + e.length).unwrap_or(0);
        let file = File::open(image).with_context(|| format!("opening {}", image.display()))?;
        Ok(Mapped { file, extents, size })
    }

    /// The size the guest sees.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The extents overlapping `[start, start + len)`.
    fn overlapping(&self, start: u64, len: u64) -> impl Iterator<Item = &Extent> {
        let end = start + len;
        let first = self.extents.partition_point(|e| e.start + e.length <= start);
        self.extents[first..].iter().take_while(move |e| e.start < end)
    }

    /// Whether the image itself holds any of `[start, start + len)` (written, even as zeros).
    pub fn holds(&self, start: u64, len: u64) -> bool {
        self.overlapping(start, len).any(|e| e.depth == 0 && e.present.unwrap_or(e.data))
    }

    /// Reads `[start, start + buf.len())` as the guest sees it.
    pub fn read(&self, start: u64, buf: &mut [u8]) -> anyhow::Result<()> {
        buf.fill(0);
        let end = start + buf.len() as u64;
        for e in self.overlapping(start, buf.len() as u64) {
            let (Some(offset), true) = (e.offset, e.data) else { continue };
            let from = e.start.max(start);
            let to = (e.start + e.length).min(end);
            let slice = &mut buf[(from - start) as usize..(to - start) as usize];
            self.file
                .read_exact_at(slice, offset + (from - e.start))
                .with_context(|| format!("reading the image at {from}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu_io(image: &Path, commands: &[&str]) {
        let mut cmd = std::process::Command::new("qemu-io");
        for c in commands {
            cmd.args(["-c", c]);
        }
        let out = cmd.arg(image).output().expect("qemu-io");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    #[tokio::test]
    async fn reads_what_the_guest_sees_and_tells_what_the_image_holds() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let image = dir.path().join("d.qcow2");
        let qemu_img = Path::new("qemu-img");
        let out = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&image)
            .arg("64M")
            .output()?;
        assert!(out.status.success());
        qemu_io(&image, &["write -P 0x11 1M 64k", "write -z 8M 4M", "write -P 0x22 20M 3M"]);
        let mapped = Mapped::open(qemu_img, &image, "qcow2").await?;
        assert_eq!(mapped.size(), 64 << 20);
        let mut buf = vec![0xffu8; 4 << 20];
        mapped.read(0, &mut buf)?;
        assert!(buf[..1 << 20].iter().all(|&b| b == 0));
        assert!(buf[1 << 20..(1 << 20) + 65536].iter().all(|&b| b == 0x11));
        assert!(buf[(1 << 20) + 65536..].iter().all(|&b| b == 0));
        mapped.read(19 << 20, &mut buf)?;
        assert!(buf[..1 << 20].iter().all(|&b| b == 0) && buf[1 << 20..].iter().all(|&b| b == 0x22));
        assert!(mapped.holds(0, 4 << 20));
        assert!(mapped.holds(8 << 20, 4 << 20), "a region written as zeros is held");
        assert!(!mapped.holds(4 << 20, 4 << 20));
        assert!(!mapped.holds(40 << 20, 24 << 20));
        // An overlay's data in its backing file is not read from the overlay.
        let overlay = dir.path().join("o.qcow2");
        let out = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&image)
            .arg(&overlay)
            .output()?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let refused = Mapped::open(qemu_img, &overlay, "qcow2").await.err().map(|e| e.to_string());
        assert!(refused.is_some_and(|e| e.contains("backing file")));
        Ok(())
    }
}
