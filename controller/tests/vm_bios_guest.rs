//! End to end on real QEMU with the real `fastvm` binary: a BIOS guest keeps running while the
//! controller is SIGKILLed and restarted, is restarted through the API, and a QEMU that dies is
//! reported as stopped with the reason.

mod common;

use std::time::{Duration, Instant};

use common::TestResult;
use common::guest::{guest_iso, qemu_pids, wait_serial};
use common::process::Fastvm;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const BOOT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bios_guest_survives_controller_restarts_and_reports_crashes() -> TestResult {
    let Some(iso) = guest_iso() else { return Ok(()) };
    let data = tempfile::tempdir()?;
    let _reaper = common::guest::VmReaper(data.path().to_path_buf());
    let iso_dir = iso.parent().ok_or("iso dir")?.display().to_string();
    let env = [("FASTVM_ISO_DIRS", iso_dir.as_str())];
    let client = Client::new();

    let first = Fastvm::spawn(data.path(), &env)?;
    let admin = first.admin_token(&client).await?;
    let created: Value = client
        .post(first.url("/api/vms"))
        .bearer_auth(&admin)
        .json(&json!({"name": "bios guest", "memory": 256, "cpus": 1, "disk_size": 1, "firmware": "bios",
                      "cpu_model": "qemu64", "iso_path": iso, "boot_order": ["cdrom", "disk"]}))
        .send()
        .await?
        .json()
        .await?;
    let id = created["vm"]["id"].as_str().ok_or("id")?.to_string();
    let run_dir = data.path().join("run").join(&id);
    let r = client.post(first.url(&format!("/api/vms/{id}/start"))).bearer_auth(&admin).send().await?;
    assert_eq!(r.status(), StatusCode::OK);
    let serial = tokio::task::spawn_blocking({
        let run_dir = run_dir.clone();
        move || wait_serial(&run_dir, "FASTVM-GUEST-READY", 1, BOOT)
    })
    .await?;
    assert!(serial.contains("FASTVM-EFI no"), "{serial}");
    assert!(serial.contains("firmware=bios"));
    let pid_before = qemu_pids(&id);
    assert_eq!(pid_before.len(), 1);

    // SIGKILL the controller: the VM must not notice.
    drop(first);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(qemu_pids(&id), pid_before, "the VM died with the controller");

    let second = Fastvm::spawn(data.path(), &env)?;
    let vm: Value =
        client.get(second.url(&format!("/api/vms/{id}"))).bearer_auth(&admin).send().await?.json().await?;
    assert_eq!(vm["status"], "running", "re-adopted: {vm}");

    // Still controllable: a graceful restart boots the guest a second time.
    let r = client
        .post(second.url(&format!("/api/vms/{id}/restart?timeout=60")))
        .bearer_auth(&admin)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await?);
    tokio::task::spawn_blocking({
        let run_dir = run_dir.clone();
        move || wait_serial(&run_dir, "FASTVM-GUEST-READY", 2, BOOT)
    })
    .await?;
    let pids = qemu_pids(&id);
    assert_eq!(pids.len(), 1);
    assert_ne!(pids, pid_before, "restart means a new QEMU");

    // QEMU dies: within seconds the VM shows stopped, with the reason.
    let status = std::process::Command::new("kill").args(["-KILL", &pids[0].to_string()]).status()?;
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let vm = loop {
        let vm: Value = client
            .get(second.url(&format!("/api/vms/{id}")))
            .bearer_auth(&admin)
            .send()
            .await?
            .json()
            .await?;
        if vm["status"] == "stopped" || Instant::now() > deadline {
            break vm;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(vm["status"], "stopped", "{vm}");
    assert!(vm["last_error"].as_str().is_some_and(|e| e.contains("signal 9")), "{vm}");

    let r = client.delete(second.url(&format!("/api/vms/{id}"))).bearer_auth(&admin).send().await?;
    assert_eq!(r.status(), StatusCode::OK);
    Ok(())
}
