//! A guest that ignores the power button (firmware with nothing to boot) given an hour to power
//! off: while it is stopping, other operations are refused at once instead of queueing behind it
//! for the hour, and a forced stop cuts it short. Found by the API fuzzer, whose VM held every
//! later request to it this way.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::guest::{VmReaper, qemu_pids};
use common::{TestResult, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_stop_cuts_a_long_graceful_one_short_and_nothing_queues_behind_it() -> TestResult {
    let s = Arc::new(TestServer::start().await);
    let _reaper = VmReaper(s.data_dir.path().to_path_buf());
    let admin = s.admin_token().await;
    let (status, body) = s
        .post(
            "/api/vms",
            &admin,
            json!({"name": "deaf", "memory": 128, "cpus": 1, "disk_size": 1, "firmware": "bios"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["vm"]["id"].as_str().ok_or("id")?.to_string();
    let (status, body) = s.call(Method::POST, &format!("/api/vms/{id}/start"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let graceful = {
        let (s, admin, id) = (s.clone(), admin.clone(), id.clone());
        tokio::spawn(async move {
            s.call(Method::POST, &format!("/api/vms/{id}/stop?timeout=3600"), Some(&admin), None).await
        })
    };
    // The list shows the new state as soon as it is (its cache follows the phases).
    let mut stopping = false;
    for _ in 0..100 {
        let (_, list) = s.get("/api/vms", &admin).await;
        if list[0]["state"] == "stopping" {
            stopping = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stopping, "the VM shows as stopping");

    for (method, path, body) in [
        (Method::POST, format!("/api/vms/{id}/snapshots"), Some(json!({"name": "s"}))),
        (Method::POST, format!("/api/vms/{id}/backup"), None),
        (Method::POST, format!("/api/vms/{id}/restart"), None),
        (Method::POST, format!("/api/vms/{id}/stop"), None),
        (Method::PUT, format!("/api/vms/{id}"), Some(json!({"memory": 256}))),
    ] {
        let answer =
            tokio::time::timeout(Duration::from_secs(10), s.call(method.clone(), &path, Some(&admin), body))
                .await
                .map_err(|_| format!("{method} {path} queued behind the stop"))?;
        assert_eq!(answer.0, StatusCode::CONFLICT, "{method} {path}: {}", answer.1);
        assert!(answer.1["detail"].as_str().is_some_and(|d| d.contains("stopping")), "{}", answer.1);
    }

    let forced = tokio::time::timeout(
        Duration::from_secs(30),
        s.call(Method::POST, &format!("/api/vms/{id}/stop?force=true"), Some(&admin), None),
    )
    .await
    .map_err(|_| "the forced stop waited for the graceful one")?;
    assert_eq!(forced.0, StatusCode::OK, "{}", forced.1);
    assert_eq!(forced.1["vm"]["state"], "stopped", "{}", forced.1);
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), graceful).await??;
    assert_eq!(status, StatusCode::OK, "the graceful stop ends with the VM stopped: {body}");
    assert!(qemu_pids(&id).is_empty(), "no QEMU left");
    let (status, body) = s.call(Method::POST, &format!("/api/vms/{id}/start"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "it starts again: {body}");
    let (status, body) =
        s.call(Method::POST, &format!("/api/vms/{id}/stop?force=true"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    Ok(())
}

/// Pids of the vmrunner supervising VM `vm_id` (its command line names the VM's run directory).
fn vmrunner_pids(run_dir: &std::path::Path) -> Vec<i32> {
    let marker = run_dir.join("vmrunner.json").display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.contains("vmrunner") && cmd.contains(&marker)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_vmrunner_takes_its_qemu_along_and_the_controller_says_so() -> TestResult {
    let s = TestServer::start().await;
    let _reaper = VmReaper(s.data_dir.path().to_path_buf());
    let admin = s.admin_token().await;
    let (status, body) = s
        .post(
            "/api/vms",
            &admin,
            json!({"name": "orphan", "memory": 128, "cpus": 1, "disk_size": 1, "firmware": "bios"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["vm"]["id"].as_str().ok_or("id")?.to_string();
    let (status, body) = s.call(Method::POST, &format!("/api/vms/{id}/start"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(qemu_pids(&id).len(), 1);
    let runners = vmrunner_pids(&s.data_dir.path().join("run").join(&id));
    assert_eq!(runners.len(), 1, "one vmrunner supervises the VM");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(runners[0]), nix::sys::signal::Signal::SIGKILL)?;

    let mut vm = json!(null);
    for _ in 0..100 {
        vm = s.get(&format!("/api/vms/{id}"), &admin).await.1;
        if vm["status"] == "stopped" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(qemu_pids(&id).is_empty(), "QEMU does not linger without its supervisor");
    assert_eq!(vm["status"], "stopped", "the controller noticed: {vm}");
    assert_eq!(vm["state"], "crashed", "and says it ended badly: {vm}");
    assert!(vm["last_error"].as_str().is_some_and(|e| !e.is_empty()), "with a reason: {vm}");
    let (status, body) = s.call(Method::POST, &format!("/api/vms/{id}/start"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "it starts again: {body}");
    let (status, body) =
        s.call(Method::POST, &format!("/api/vms/{id}/stop?force=true"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    Ok(())
}
