//! Many operations at once on one running guest: the controller's commands share its one monitor
//! connection instead of queueing for QEMU's single-client socket, and none fails.

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
    Ok(())
}
