//! Images that come from outside (uploaded ISOs, disks and volumes of a restored archive) are hostile
//! until inspected: a qcow2 header may name a backing file or an external data file anywhere on the
//! host, which QEMU would hand to the guest and a later backup would copy out. Such images, and any
//! image whose format is not the one it is used as, are refused before they are used.

use std::path::Path;

use anyhow::Context;
use serde_json::Value;
use tokio::process::Command;
use vmrunner::argv::DiskFormat;

use crate::error::{ApiError, ApiResult};

/// `qemu-img info` of `image` read as `format` (`None`: let qemu-img probe; it never opens a backing
/// file for `info`). `Ok(Err(message))` when qemu-img cannot read it as that.
async fn info(qemu_img: &Path, image: &Path, format: Option<DiskFormat>) -> ApiResult<Result<Value, String>> {
    let mut cmd = Command::new(qemu_img);
    cmd.args(["info", "--output=json"]);
    if let Some(f) = format {
        cmd.args(["-f", f.as_str()]);
    }
    let out = cmd.arg(image).output().await.with_context(|| format!("running {}", qemu_img.display()))?;
    if !out.status.success() {
        return Ok(Err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(Ok(serde_json::from_slice(&out.stdout).context("qemu-img info output")?))
}

/// Why `info` (an image read as qcow2) may not be used, if it may not.
fn refusal(info: &Value, max_bytes: Option<u64>) -> Option<String> {
    if let Some(backing) = info["backing-filename"].as_str() {
        return Some(format!("it names a backing file ({backing:?})"));
    }
    if let Some(data) = info["format-specific"]["data"]["data-file"].as_str() {
        return Some(format!("it names an external data file ({data:?})"));
    }
    let size = info["virtual-size"].as_u64().unwrap_or(u64::MAX);
    match max_bytes {
        Some(max) if size > max => Some(format!("its virtual size ({size} bytes) exceeds {max} bytes")),
        _ => None,
    }
}

/// Refuses (400, naming `what` and the reason) an image from outside that is not a plain image of
/// `format`: a qcow2 must be one, with no backing file, no external data file, and a virtual size
/// of at most `max_bytes`; a raw image (an ISO, a raw volume) must not be an image of another format.
pub async fn check(
    qemu_img: &Path,
    what: &str,
    image: &Path,
    format: DiskFormat,
    max_bytes: Option<u64>,
) -> ApiResult<()> {
    let refuse = |why: String| Err(ApiError::BadRequest(format!("{what} is refused: {why}")));
    match format {
        DiskFormat::Qcow2 => match info(qemu_img, image, Some(DiskFormat::Qcow2)).await? {
            Err(e) => refuse(format!("it is not a valid qcow2 image ({e})")),
            Ok(info) => match refusal(&info, max_bytes) {
                Some(why) => refuse(why),
                None => Ok(()),
            },
        },
        DiskFormat::Raw => {
            let probed = info(qemu_img, image, None).await?;
            match probed.as_ref().map(|i| i["format"].as_str().unwrap_or("unknown")) {
                Ok("raw") => match max_bytes {
                    Some(max) if std::fs::metadata(image).map(|m| m.len()).unwrap_or(u64::MAX) > max => {
                        refuse(format!("it is larger than {max} bytes"))
                    }
                    _ => Ok(()),
                },
                Ok(other) => refuse(format!("it is a {other} image, not a raw one")),
                Err(e) => refuse(format!("it cannot be read ({e})")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn backing_and_data_files_and_oversize_are_refused() {
        let plain = json!({"format": "qcow2", "virtual-size": 1024});
        assert_eq!(refusal(&plain, Some(1024)), None);
        assert!(refusal(&plain, Some(1023)).is_some_and(|r| r.contains("virtual size")));
        let backed = json!({"virtual-size": 1, "backing-filename": "/data/jwt_secret"});
        assert!(refusal(&backed, None).is_some_and(|r| r.contains("backing file")));
        let data = json!({"virtual-size": 1, "format-specific": {"data": {"data-file": "/etc/shadow"}}});
        assert!(refusal(&data, None).is_some_and(|r| r.contains("external data file")));
        // A size qemu-img did not report is not taken as small.
        assert!(refusal(&json!({}), Some(1 << 30)).is_some());
    }
}
