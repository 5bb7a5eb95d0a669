//! End to end on real QEMU: a UEFI guest with a TPM and a NAT port forward, driven through the API.
//! One boot serves every check (guests run under TCG here and take ~20 s to boot).

mod common;

use std::time::Duration;

use common::guest::{free_port, guest_iso, qemu_pids, type_on_serial, wait_serial};
use common::{TestResult, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uefi_tpm_guest_boots_forwards_a_port_and_powers_off() -> TestResult {
    let Some(iso) = guest_iso() else { return Ok(()) };
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let port = free_port();
    let (status, body) = s
        .post(
            "/api/vms",
            &admin,
            json!({"name": "uefi guest", "memory": 256, "cpus": 1, "disk_size": 1,
                   "iso_path": iso, "boot_order": ["cdrom", "disk"], "tpm": true,
                   "networks": [{"port_forwards": [{"host_port": port, "guest_port": 8080}]}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["vm"]["id"].as_str().ok_or("id")?.to_string();
    let mac = body["vm"]["networks"][0]["mac_address"].as_str().ok_or("mac")?.to_string();
    let run_dir = s.data_dir.path().join("run").join(&id);

    let (status, body) = s.call(Method::POST, &format!("/api/vms/{id}/start"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["vm"]["status"], "running");
    assert_eq!(body["vm"]["accel"], "tcg");
    assert_eq!(qemu_pids(&id).len(), 1);

    let serial = tokio::task::spawn_blocking({
        let run_dir = run_dir.clone();
        move || wait_serial(&run_dir, "FASTVM-GUEST-READY", 1, BOOT)
    })
    .await?;
    assert!(serial.contains("FASTVM-EFI yes"), "{serial}");
    assert!(serial.contains("FASTVM-TPM yes version=2"), "{serial}");
    assert!(serial.contains(&format!("FASTVM-NIC eth0 {mac}")), "{serial}");
    assert!(s.data_dir.path().join("vms").join(&id).join("OVMF_VARS.fd").is_file());
    assert!(s.data_dir.path().join("vms").join(&id).join("disk0.qcow2").is_file());

    // While it runs: no second start, no edit, no plain delete.
    let (status, _) = s.call(Method::POST, &format!("/api/vms/{id}/start"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) =
        s.call(Method::PUT, &format!("/api/vms/{id}"), Some(&admin), Some(json!({"cpus": 2}))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = s.call(Method::DELETE, &format!("/api/vms/{id}"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::CONFLICT);

    // A web server in the guest, reached through the NAT forward on 127.0.0.1.
    type_on_serial(&run_dir, "httpd -p 8080 -h /")?;
    let url = format!("http://127.0.0.1:{port}/etc/os-release");
    let mut served = String::new();
    for _ in 0..60 {
        if let Ok(r) = reqwest::get(&url).await {
            if r.status().is_success() {
                served = r.text().await?;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(served.contains("Fast VM test guest"), "port forward did not reach the guest: {served:?}");

    // ACPI stop: the guest powers itself off.
    let (status, body) =
        s.call(Method::POST, &format!("/api/vms/{id}/stop?timeout=60"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["vm"]["status"], "stopped");
    assert!(body["vm"]["last_error"].is_null(), "{body}");
    let serial = std::fs::read_to_string(run_dir.join("serial.log"))?;
    assert!(serial.contains("FASTVM-POWERDOWN"), "the guest saw the power button");
    assert!(qemu_pids(&id).is_empty());

    // 20 concurrent start/stop calls never leave two QEMUs, and the state matches reality after.
    let paths: Vec<String> = (0..20)
        .map(|i| format!("/api/vms/{id}/{}", if i % 2 == 0 { "start" } else { "stop?force=true" }))
        .collect();
    let calls: Vec<_> = paths.iter().map(|p| s.call(Method::POST, p, Some(&admin), None)).collect();
    for (status, body) in futures::future::join_all(calls).await {
        assert!([StatusCode::OK, StatusCode::CONFLICT].contains(&status), "unexpected {status}: {body}");
    }
    let pids = qemu_pids(&id);
    assert!(pids.len() <= 1, "two QEMUs for one VM: {pids:?}");
    let (_, vm) = s.get(&format!("/api/vms/{id}"), &admin).await;
    assert_eq!(vm["status"], if pids.is_empty() { "stopped" } else { "running" });

    // Force delete removes the VM's files, never the ISO.
    let (status, _) = s.call(Method::DELETE, &format!("/api/vms/{id}?force=true"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(qemu_pids(&id).is_empty());
    assert!(!s.data_dir.path().join("vms").join(&id).exists());
    assert!(!run_dir.exists());
    assert!(iso.is_file());
    Ok(())
}
