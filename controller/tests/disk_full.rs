//! A full data disk: requests that need space answer 507 with what to do, reads keep working,
//! nothing is left half-made, and the server carries on by itself once there is room again.

mod common;

use std::process::Command;

use common::{TestResult, TestServer};
use reqwest::StatusCode;
use serde_json::json;

/// A size-limited tmpfs on `dir` (root only), unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status();
        status.ok().filter(|s| s.success()).map(|_| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_data_disk_answers_507_and_recovers_by_itself() -> TestResult {
    let data = tempfile::tempdir()?;
    let Some(_tmpfs) = Tmpfs::mount(data.path(), "24m") else {
        assert!(std::env::var("CI").is_err(), "CI runs as root, where a tmpfs can be mounted");
        eprintln!("SKIPPED: cannot mount a tmpfs (not root)");
        return Ok(());
    };
    let s = TestServer::start_in(data, |_| {}).await;
    let admin = s.admin_token().await;
    let vm = |i: usize| json!({"name": format!("vm {i}"), "memory": 256, "cpus": 1, "disk_size": 1});
    let (status, body) = s.post("/api/vms", &admin, vm(0)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Fill the disk to the last byte.
    let filler = s.data_dir.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler)?;
        let block = vec![0u8; 1 << 16];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let mut refused = 0;
    for i in 1..200 {
        let (status, body) = s.post("/api/vms", &admin, vm(i)).await;
        match status {
            StatusCode::OK => continue,
            StatusCode::INSUFFICIENT_STORAGE => {
                assert!(body["detail"].as_str().is_some_and(|d| d.starts_with("No space left")), "{body}");
                refused += 1;
                break;
            }
            other => panic!("a full disk answered {other}: {body}"),
        }
    }
    assert_eq!(refused, 1, "the disk filled up and a create was refused with 507");
    let (status, listed) = s.get("/api/vms", &admin).await;
    assert_eq!(status, StatusCode::OK, "reads work on a full disk: {listed}");
    let before = listed.as_array().map(Vec::len).unwrap_or(0);

    std::fs::remove_file(&filler)?;
    let (status, body) = s.post("/api/vms", &admin, vm(999)).await;
    assert_eq!(status, StatusCode::OK, "room again: the server carries on by itself: {body}");
    let (_, listed) = s.get("/api/vms", &admin).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(before + 1), "the refused create left nothing behind");
    let (_, health) = s.get("/api/health", &admin).await;
    assert_eq!(health["checks"]["database"]["ok"], true, "{health}");
    Ok(())
}
