//! Many operations at once on one running guest: the controller's commands share its one monitor
//! connection instead of queueing for QEMU's single-client socket, and none fails. Then pause and
//! resume, through the monitor's events and through the API.

mod common;

use common::guest::guest_iso;
use common::{TestResult, TestServer};
use controller::qmp::{self, Command};
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_operations_at_once_on_one_guest() -> TestResult {
    let Some(iso) = guest_iso() else { return Ok(()) };
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let (id, run_dir) = s.boot_guest(&admin, "busy", &iso).await;
    let monitor = run_dir.join("monitor.sock");
    assert!(monitor.exists(), "QEMU serves the controller's own monitor");
    // One command first, so the connection is open before the burst.
    qmp::run(&monitor, &Command::query_status()).await?;
    let opened = qmp::monitors().opened();

    let (s, admin) = (std::sync::Arc::new(s), std::sync::Arc::new(admin));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (s, admin, id, monitor) = (s.clone(), admin.clone(), id.clone(), monitor.clone());
        tasks.push(tokio::spawn(async move {
            match i % 5 {
                0 => {
                    let status =
                        qmp::run(&monitor, &Command::query_status()).await.map_err(|e| e.to_string())?;
                    if vmrunner::qmp::run_state(&status) != Some("running") {
                        return Err(format!("status {status}"));
                    }
                }
                1 => {
                    let stats =
                        qmp::run(&monitor, &Command::query_blockstats()).await.map_err(|e| e.to_string())?;
                    if stats.as_array().is_none_or(|a| a.is_empty()) {
                        return Err(format!("blockstats {stats}"));
                    }
                }
                2 => {
                    let (status, body) = s.get(&format!("/api/vms/{id}/snapshots"), &admin).await;
                    if status != StatusCode::OK {
                        return Err(format!("snapshots: {status} {body}"));
                    }
                }
                3 => {
                    // Sets the SPICE password through QMP.
                    let (status, body) = s.get(&format!("/api/vms/{id}/spice"), &admin).await;
                    if status != StatusCode::OK || body["password"].as_str().map(str::len) != Some(24) {
                        return Err(format!("console password: {status} {body}"));
                    }
                }
                _ => {
                    let (status, body) = s.get(&format!("/api/vms/{id}/metrics"), &admin).await;
                    if status != StatusCode::OK {
                        return Err(format!("metrics: {status} {body}"));
                    }
                }
            }
            Ok::<(), String>(())
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        if let Err(e) = t.await? {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{} of 50 failed: {failures:?}", failures.len());
    assert_eq!(qmp::monitors().opened(), opened, "no operation opened a connection of its own");

    // The lifecycle hears the monitor: a guest paused behind the API's back shows as paused.
    qmp::run(&monitor, &Command::stop()).await?;
    let vm = wait_state(&s, &admin, &id, "paused").await;
    assert_eq!(vm["status"], "running", "the original's field keeps saying running: {vm}");
    let (status, body) = s.get(&format!("/api/vms/{id}/spice"), &admin).await;
    assert_eq!(status, StatusCode::OK, "a paused guest's console opens: {body}");
    let (status, body) =
        s.call(reqwest::Method::POST, &format!("/api/vms/{id}/pause"), Some(admin.as_str()), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["detail"], "VM is already paused");
    let (status, body) =
        s.call(reqwest::Method::POST, &format!("/api/vms/{id}/resume"), Some(admin.as_str()), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["vm"]["state"], "running", "{body}");
    let reply = qmp::run(&monitor, &Command::query_status()).await?;
    assert_eq!(vmrunner::qmp::run_state(&reply), Some("running"));

    // And through the API, both ways.
    let (status, body) =
        s.call(reqwest::Method::POST, &format!("/api/vms/{id}/pause"), Some(admin.as_str()), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["vm"]["state"], "paused", "{body}");
    let reply = qmp::run(&monitor, &Command::query_status()).await?;
    assert_eq!(vmrunner::qmp::run_state(&reply), Some("paused"));
    let (status, body) =
        s.call(reqwest::Method::POST, &format!("/api/vms/{id}/resume"), Some(admin.as_str()), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_state(&s, &admin, &id, "running").await;
    // A resumed guest resumed for real: a stop is a stop of a running guest.
    let (status, body) = s
        .call(reqwest::Method::POST, &format!("/api/vms/{id}/stop?force=true"), Some(admin.as_str()), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["vm"]["state"], "stopped", "{body}");
    let (status, body) =
        s.call(reqwest::Method::POST, &format!("/api/vms/{id}/resume"), Some(admin.as_str()), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    Ok(())
}

/// The VM once its `state` is `want` (within 10 s; the test fails otherwise).
async fn wait_state(s: &TestServer, token: &str, id: &str, want: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, vm) = s.get(&format!("/api/vms/{id}"), token).await;
        if vm["state"] == want {
            return vm;
        }
        assert!(std::time::Instant::now() < deadline, "state never became {want}: {vm}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
