//! End to end on real QEMU: volumes attached cold and hot, and a cloud-init seed ISO read by the guest.

mod common;

use std::time::{Duration, Instant};

use common::guest::{guest_iso, wait_serial};
use common::{TestResult, TestServer};
use controller::qmp::Command;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const BOOT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volumes_and_cloud_init_reach_the_guest() -> TestResult {
    let Some(iso) = guest_iso() else { return Ok(()) };
    let s = TestServer::start().await;
    let admin = s.admin_token().await;

    let (status, seed) = s
        .post(
            "/api/cloudinit",
            &admin,
            json!({"hostname": "seedvm-7", "username": "ops", "password": "pw-1234567"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{seed}");
    let seed_path = seed["iso_path"].as_str().ok_or("iso_path")?.to_string();
    assert!(seed_path.starts_with(&s.data_dir.path().join("cloudinit").display().to_string()));
    let seed_bytes = std::fs::read(&seed_path)?;
    let contains = |needle: &[u8]| seed_bytes.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(b"pw-1234567"), "clear-text password in the seed");
    assert!(contains(b"$6$"), "the seed carries a SHA-512 crypt hash");

    let mut volumes = Vec::new();
    for (name, format) in [("data a", "qcow2"), ("data b", "raw")] {
        let (status, body) =
            s.post("/api/volumes", &admin, json!({"name": name, "size_gb": 1, "format": format})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(std::path::Path::new(body["volume"]["path"].as_str().ok_or("path")?).is_file());
        volumes.push(body["volume"]["id"].as_str().ok_or("id")?.to_string());
    }
    let (a, b) = (volumes[0].clone(), volumes[1].clone());

    let (_, body) = s
        .post(
            "/api/vms",
            &admin,
            json!({"name": "storage guest", "memory": 256, "cpus": 1, "disk_size": 1, "firmware": "bios",
                   "iso_path": iso, "secondary_iso_path": seed_path, "boot_order": ["cdrom", "disk"]}),
        )
        .await;
    let id = body["vm"]["id"].as_str().ok_or("id")?.to_string();
    let run_dir = s.data_dir.path().join("run").join(&id);
    let (status, body) =
        s.call(Method::POST, &format!("/api/vms/{id}/volumes/{a}"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["volume"]["attached_to"], id.as_str());

    let (status, body) = s.call(Method::POST, &format!("/api/vms/{id}/start"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let serial = tokio::task::spawn_blocking({
        let run_dir = run_dir.clone();
        move || wait_serial(&run_dir, "FASTVM-GUEST-READY", 1, BOOT)
    })
    .await?;
    assert!(serial.contains("FASTVM-CIDATA hostname=seedvm-7"), "{serial}");
    let disks = serial.lines().find(|l| l.starts_with("FASTVM-DISKS")).unwrap_or_default();
    assert!(disks.split_whitespace().any(|d| d == "vdb"), "attached volume not in the guest: {disks}");

    // Hot-plug onto the running guest.
    let (status, body) =
        s.call(Method::POST, &format!("/api/vms/{id}/volumes/{b}"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let blocks = controller::qmp::run(&run_dir.join("qmp.sock"), &Command::query_block()).await?;
    let plugged = blocks.as_array().is_some_and(|l| {
        l.iter().any(|b2| b2["qdev"].as_str().is_some_and(|q| q.contains(&format!("voldev-{b}"))))
    });
    assert!(plugged, "hot-plugged volume not in query-block: {blocks}");

    // An attached volume is not deleted.
    let (status, _) = s.call(Method::DELETE, &format!("/api/volumes/{a}"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Hot-unplug: the guest lets go, QEMU forgets the disk.
    let (status, body) =
        s.call(Method::DELETE, &format!("/api/vms/{id}/volumes/{b}"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let blocks = controller::qmp::run(&run_dir.join("qmp.sock"), &Command::query_block()).await?;
    assert!(!blocks.to_string().contains(&format!("voldev-{b}")));

    // A detach that QEMU already carried out (as when an earlier one got that far and then failed to
    // record it) still finishes: there is nothing left to release.
    let (status, body) =
        s.call(Method::POST, &format!("/api/vms/{id}/volumes/{b}"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let qmp_sock = run_dir.join("qmp.sock");
    controller::qmp::run(&qmp_sock, &Command::device_del(&format!("voldev-{b}"))).await?;
    let released = Instant::now() + Duration::from_secs(30);
    while let Err(e) = controller::qmp::run(&qmp_sock, &Command::blockdev_del(&format!("vol-{b}"))).await {
        assert!(Instant::now() < released, "the guest never let go of the volume: {e:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) =
        s.call(Method::DELETE, &format!("/api/vms/{id}/volumes/{b}"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["volume"]["attached_to"], Value::Null, "{body}");

    let (status, _) =
        s.call(Method::POST, &format!("/api/vms/{id}/stop?force=true"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s.call(Method::DELETE, &format!("/api/vms/{id}/volumes/{a}"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    for v in [&a, &b] {
        let (_, vol) = s.get(&format!("/api/volumes/{v}"), &admin).await;
        let path = vol["path"].as_str().ok_or("path")?.to_string();
        let (status, _) = s.call(Method::DELETE, &format!("/api/volumes/{v}"), Some(&admin), None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!std::path::Path::new(&path).exists());
    }
    Ok(())
}
