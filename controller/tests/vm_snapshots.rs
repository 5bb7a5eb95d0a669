//! Snapshots on real images and a real guest: offline snapshots revert data (checked with qemu-io
//! patterns), and a live snapshot brings a running guest back exactly where it was.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::guest::{guest_iso, type_on_serial, wait_serial_async};
use common::{TestResult, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

fn qemu_io(disk: &std::path::Path, cmd: &str) -> Result<String, String> {
    let out = Command::new("qemu-io").arg("-c").arg(cmd).arg(disk).output().map_err(|e| e.to_string())?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && !text.contains("Pattern verification failed") { Ok(text) } else { Err(text) }
}

#[tokio::test]
async fn offline_snapshot_restore_reverts_the_data() -> TestResult {
    if controller::host::find_in_path("qemu-io").is_none() {
        assert!(std::env::var("CI").is_err(), "CI installs qemu-utils");
        return Ok(());
    }
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let (_, body) =
        s.post("/api/vms", &admin, json!({"name": "snap", "memory": 256, "cpus": 1, "disk_size": 1})).await;
    let id = body["vm"]["id"].as_str().ok_or("id")?.to_string();
    let base = format!("/api/vms/{id}/snapshots");

    // A snapshot of a VM that never ran creates its (empty) disk first.
    let (status, body) = s.post(&base, &admin, json!({"name": "empty"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let disk = s.data_dir.path().join("vms").join(&id).join("disk0.qcow2");
    assert!(disk.is_file());

    qemu_io(&disk, "write -P 0x11 0 64k")?;
    let (status, body) = s.post(&base, &admin, json!({"name": "s1", "description": "pattern 11"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["snapshot"]["vm_state"], false);
    let s1 = body["snapshot"]["id"].as_str().ok_or("id")?.to_string();
    let (status, _) = s.post(&base, &admin, json!({"name": "s1"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "names are unique per VM");

    qemu_io(&disk, "write -P 0x22 0 64k")?;
    assert!(qemu_io(&disk, "read -P 0x11 0 64k").is_err(), "the overwrite happened");
    let (status, body) = s.call(Method::POST, &format!("{base}/{s1}/restore"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    qemu_io(&disk, "read -P 0x11 0 64k")?;

    let (_, list) = s.get(&base, &admin).await;
    let names: Vec<&str> = list.as_array().ok_or("list")?.iter().filter_map(|x| x["name"].as_str()).collect();
    assert_eq!(names, ["empty", "s1"]);
    assert_eq!(list[1]["description"], "pattern 11");
    let (status, _) = s.call(Method::DELETE, &format!("{base}/{s1}"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let out = Command::new("qemu-img").args(["snapshot", "-l"]).arg(&disk).output()?;
    let listed = String::from_utf8_lossy(&out.stdout).matches("fastvm-").count();
    assert_eq!(listed, 1, "s1 is deleted from the image, `empty` is still there");

    // A raw volume cannot hold internal snapshots: a clear 409.
    let (_, vol) =
        s.post("/api/volumes", &admin, json!({"name": "raw one", "size_gb": 1, "format": "raw"})).await;
    let vol_id = vol["volume"]["id"].as_str().ok_or("id")?.to_string();
    s.call(Method::POST, &format!("/api/vms/{id}/volumes/{vol_id}"), Some(&admin), None).await;
    let (status, body) = s.post(&base, &admin, json!({"name": "s2"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("qcow2")), "{body}");

    // Volumes attached after a snapshot never had it: a restore leaves their data alone, a delete
    // does not stumble on them.
    let (_, vol) = s.post("/api/volumes", &admin, json!({"name": "later", "size_gb": 1})).await;
    let later = vol["volume"]["id"].as_str().ok_or("id")?.to_string();
    let (status, _) =
        s.call(Method::POST, &format!("/api/vms/{id}/volumes/{later}"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let (_, vol) = s.get(&format!("/api/volumes/{later}"), &admin).await;
    let later_path = std::path::PathBuf::from(vol["path"].as_str().ok_or("path")?);
    qemu_io(&later_path, "write -P 0x33 0 64k")?;
    let empty = list[0]["id"].as_str().ok_or("id")?.to_string();
    let (status, body) = s.call(Method::POST, &format!("{base}/{empty}/restore"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(qemu_io(&disk, "read -P 0x11 0 64k").is_err(), "disk0 went back to empty");
    qemu_io(&later_path, "read -P 0x33 0 64k")?;

    // A disk replaced since (as a backup restore does) no longer holds it: restoring says so, and
    // deleting removes the record.
    let out = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&disk).arg("1G").output()?;
    assert!(out.status.success());
    let (status, body) = s.call(Method::POST, &format!("{base}/{empty}/restore"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("no longer")), "{body}");
    let (status, body) = s.call(Method::DELETE, &format!("{base}/{empty}"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, list) = s.get(&base, &admin).await;
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_snapshot_restores_a_running_guest_where_it_was() -> TestResult {
    let Some(iso) = guest_iso() else { return Ok(()) };
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let (id, run_dir) = s.boot_guest(&admin, "live snap", &iso).await;

    // The marker lives in the guest's RAM only (its root is an initramfs).
    type_on_serial(&run_dir, "echo BEFORE-SNAP > /tmp/marker && echo MARKED-BEFORE")?;
    wait_serial_async(&run_dir, "\nMARKED-BEFORE", 1, Duration::from_secs(60)).await;
    let (status, body) = s.post(&format!("/api/vms/{id}/snapshots"), &admin, json!({"name": "live"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["snapshot"]["vm_state"], true);
    let snap = body["snapshot"]["id"].as_str().ok_or("id")?.to_string();
    let (_, list) = s.get(&format!("/api/vms/{id}/snapshots"), &admin).await;
    assert!(list[0]["size"].as_u64().is_some_and(|n| n > 0), "RAM was saved: {list}");
    type_on_serial(&run_dir, "echo AFTER-SNAP > /tmp/marker && echo MARKED-AFTER")?;
    wait_serial_async(&run_dir, "\nMARKED-AFTER", 1, Duration::from_secs(60)).await;

    let (status, _) =
        s.call(Method::POST, &format!("/api/vms/{id}/snapshots/{snap}/restore"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "restoring needs a stopped VM");
    let (status, _) =
        s.call(Method::POST, &format!("/api/vms/{id}/stop?force=true"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let before = std::fs::read(run_dir.join("serial.log"))?.len();
    let (status, body) =
        s.call(Method::POST, &format!("/api/vms/{id}/snapshots/{snap}/restore"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, vm) = s.get(&format!("/api/vms/{id}"), &admin).await;
    assert_eq!(vm["status"], "running", "a live snapshot restores to a running guest");

    // No reboot: the shell that was running answers at once, with the file as it was.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        type_on_serial(&run_dir, "cat /tmp/marker")?;
        let log = std::fs::read(run_dir.join("serial.log"))?;
        let new = String::from_utf8_lossy(&log[before.min(log.len())..]).into_owned();
        if new.lines().any(|l| l.trim() == "BEFORE-SNAP") {
            assert!(!new.contains("FASTVM-GUEST-BOOTED"), "the guest rebooted instead of resuming");
            assert!(!new.lines().any(|l| l.trim() == "AFTER-SNAP"));
            break;
        }
        assert!(Instant::now() < deadline, "the restored guest did not show the marker:\n{new}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // A volume attached since cannot be resumed with: restoring says which one to detach.
    let (status, _) =
        s.call(Method::POST, &format!("/api/vms/{id}/stop?force=true"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let (_, vol) = s.post("/api/volumes", &admin, json!({"name": "attached-later", "size_gb": 1})).await;
    let vol_id = vol["volume"]["id"].as_str().ok_or("id")?.to_string();
    let (status, _) =
        s.call(Method::POST, &format!("/api/vms/{id}/volumes/{vol_id}"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) =
        s.call(Method::POST, &format!("/api/vms/{id}/snapshots/{snap}/restore"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("attached-later")), "{body}");
    let (status, _) = s.call(Method::DELETE, &format!("/api/vms/{id}?force=true"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    Ok(())
}
