//! Clones: copy-on-write ones isolated both ways (qemu-io patterns), the source deletable while the
//! clone lives on and boots, shared bases removed once unused; a source with snapshots cloned as a
//! full copy of its current state.

mod common;

use std::process::Command;
use std::time::Duration;

use common::guest::{guest_iso, wait_serial};
use common::{TestResult, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

fn qemu_io(disk: &std::path::Path, cmd: &str) -> Result<(), String> {
    let out = Command::new("qemu-io").arg("-c").arg(cmd).arg(disk).output().map_err(|e| e.to_string())?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && !text.contains("Pattern verification failed") { Ok(()) } else { Err(text) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clones_are_isolated_outlive_their_source_and_boot() -> TestResult {
    let Some(iso) = guest_iso() else { return Ok(()) };
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let (_, body) = s
        .post(
            "/api/vms",
            &admin,
            json!({"name": "source", "memory": 256, "cpus": 1, "disk_size": 2, "firmware": "bios",
                   "iso_path": iso, "boot_order": ["cdrom", "disk"],
                   "networks": [{"port_forwards": [{"host_port": common::guest::free_port(), "guest_port": 22}]}]}),
        )
        .await;
    let src = body["vm"]["id"].as_str().ok_or("id")?.to_string();
    let src_mac = body["vm"]["networks"][0]["mac_address"].clone();
    let vms = s.data_dir.path().join("vms");
    let src_disk = vms.join(&src).join("disk0.qcow2");
    std::fs::create_dir_all(vms.join(&src))?;
    let out =
        Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&src_disk).arg("2G").output()?;
    assert!(out.status.success());
    qemu_io(&src_disk, "write -P 0x33 0 1G")?;

    let (status, body) =
        s.post(&format!("/api/vms/{src}/clone"), &admin, json!({"name": "clone", "memory": 300})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let clone = body["vm"]["id"].as_str().ok_or("id")?.to_string();
    assert_eq!(body["vm"]["memory"], 300);
    let (_, jobs) = s.get("/api/jobs", &admin).await;
    let job = jobs.as_array().and_then(|l| l.iter().find(|j| j["kind"] == "clone")).ok_or("clone job")?;
    assert_eq!((job["state"].as_str(), job["result_id"].as_str()), (Some("succeeded"), Some(clone.as_str())));
    assert_ne!(body["vm"]["networks"][0]["mac_address"], src_mac, "new MAC");
    assert_eq!(body["vm"]["networks"][0]["port_forwards"], json!([]), "host ports stay with the source");
    let clone_disk = vms.join(&clone).join("disk0.qcow2");
    // The overlays hold no data of their own yet: the 1 GiB stayed in the shared base.
    assert!(std::fs::metadata(&clone_disk)?.len() < 4 << 20);
    assert!(std::fs::metadata(&src_disk)?.len() < 4 << 20);

    qemu_io(&src_disk, "write -P 0xaa 0 64k")?;
    qemu_io(&clone_disk, "write -P 0xbb 0 64k")?;
    qemu_io(&src_disk, "read -P 0xaa 0 64k")?;
    qemu_io(&clone_disk, "read -P 0xbb 0 64k")?;
    for disk in [&src_disk, &clone_disk] {
        qemu_io(disk, "read -P 0x33 64k 64k")?;
    }

    // The source goes; the clone keeps its base and boots.
    let (status, _) = s.call(Method::DELETE, &format!("/api/vms/{src}"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let bases = s.data_dir.path().join("base");
    assert_eq!(std::fs::read_dir(&bases)?.count(), 1, "the clone still needs the base");
    qemu_io(&clone_disk, "read -P 0x33 64k 64k")?;
    let (status, body) = s.call(Method::POST, &format!("/api/vms/{clone}/start"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let run_dir = s.data_dir.path().join("run").join(&clone);
    let serial = tokio::task::spawn_blocking(move || {
        wait_serial(&run_dir, "FASTVM-GUEST-READY", 1, Duration::from_secs(180))
    })
    .await?;
    assert!(serial.contains("FASTVM-DISK vda bytes=2147483648"), "{serial}");
    let (status, _) = s.post(&format!("/api/vms/{clone}/clone"), &admin, json!({"name": "nope"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "a running VM is not cloned");

    let (status, _) =
        s.call(Method::DELETE, &format!("/api/vms/{clone}?force=true"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(std::fs::read_dir(&bases)?.count(), 0, "an unused base is removed");
    Ok(())
}

#[tokio::test]
async fn bad_names_are_refused_and_a_vm_with_snapshots_is_cloned_in_full() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let (_, body) =
        s.post("/api/vms", &admin, json!({"name": "src", "memory": 256, "cpus": 1, "disk_size": 1})).await;
    let id = body["vm"]["id"].as_str().ok_or("id")?.to_string();
    let (status, body) = s.post(&format!("/api/vms/{id}/clone"), &admin, json!({"name": "bad;name"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(s.get("/api/vms", &admin).await.1.as_array().map(Vec::len), Some(1), "nothing made");

    // A snapshot lives in the source's disk, which therefore cannot become a shared base: the
    // clone is a full copy of the disk as it is now, without the snapshot.
    let src_disk = s.data_dir.path().join("vms").join(&id).join("disk0.qcow2");
    let (status, body) = s.post(&format!("/api/vms/{id}/snapshots"), &admin, json!({"name": "keep"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    qemu_io(&src_disk, "write -P 0x5a 1M 2M")?;
    let (status, body) = s.post(&format!("/api/vms/{id}/clone"), &admin, json!({"name": "c"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains("full copy")),
        "the answer says which: {body}"
    );
    let clone = body["vm"]["id"].as_str().ok_or("id")?.to_string();
    let clone_disk = s.data_dir.path().join("vms").join(&clone).join("disk0.qcow2");
    qemu_io(&clone_disk, "read -P 0x5a 1M 2M")?;
    let info = |disk: &std::path::Path| -> Result<serde_json::Value, Box<dyn std::error::Error>> {
        let out = Command::new("qemu-img").args(["info", "-U", "--output=json"]).arg(disk).output()?;
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let copied = info(&clone_disk)?;
    assert!(copied["snapshots"].as_array().is_none_or(|l| l.is_empty()), "no snapshot copied: {copied}");
    assert!(copied["backing-filename"].is_null(), "a standalone disk: {copied}");
    let kept = info(&src_disk)?;
    assert_eq!(kept["snapshots"].as_array().map(Vec::len), Some(1), "the source keeps its snapshot");
    assert!(
        !s.data_dir.path().join("base").exists()
            || std::fs::read_dir(s.data_dir.path().join("base"))?.count() == 0
    );
    // Each goes its own way.
    qemu_io(&clone_disk, "write -P 0x77 1M 64k")?;
    qemu_io(&src_disk, "read -P 0x5a 1M 64k")?;
    let (_, jobs) = s.get("/api/jobs", &admin).await;
    let job = jobs.as_array().and_then(|l| l.iter().find(|j| j["kind"] == "clone")).ok_or("clone job")?;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(job["bytes_total"].as_u64().is_some_and(|t| t > 2 << 20), "progress in bytes copied: {job}");
    assert_eq!(job["bytes_done"], job["bytes_total"], "{job}");
    Ok(())
}
