//! The KVM path on a real QEMU: guests here boot under TCG (nested paravirtual KVM is too slow for
//! a guest kernel), but QEMU itself must start with KVM and report it enabled.

mod common;

use common::guest::qemu_pids;
use common::{TestResult, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kvm_vm_runs_qemu_with_kvm_enabled() -> TestResult {
    let Some(qemu) = controller::host::find_in_path("qemu-system-x86_64") else {
        assert!(std::env::var("CI").is_err(), "CI machines have QEMU");
        eprintln!("SKIPPED: no QEMU");
        return Ok(());
    };
    // What this host really does with KVM decides what is checked: a QEMU with KVM and `-cpu host`
    // aborts at once on some nested hypervisors although /dev/kvm opens.
    let probe = controller::host::kvm_probe(&qemu).await;
    if !probe.usable {
        assert!(std::env::var("CI").is_err() || !probe.detail.is_empty(), "the probe says why");
        eprintln!("KVM does not work here ({}): checking the fallback", probe.detail);
        return kvm_refused_and_auto_falls_back(&probe.detail).await;
    }
    let s = TestServer::start_with(|c| c.accel = "kvm".into()).await;
    let admin = s.admin_token().await;
    let (_, body) = s
        .post(
            "/api/vms",
            &admin,
            json!({"name": "kvm", "memory": 256, "cpus": 1, "disk_size": 1, "cpu_model": "host"}),
        )
        .await;
    let id = body["vm"]["id"].as_str().ok_or("id")?.to_string();
    let (status, body) = s.call(Method::POST, &format!("/api/vms/{id}/start"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["vm"]["accel"], "kvm");

    let qmp = s.data_dir.path().join("run").join(&id).join("qmp.sock");
    let kvm = controller::qmp::run(&qmp, &controller::qmp::Command::query_kvm()).await?;
    assert_eq!(kvm, json!({"enabled": true, "present": true}));
    // Resumed after set-up (not left in `prelaunch` or `paused`). Under the nested paravirtual KVM of
    // the machines we test on, the guest's first instructions sometimes stop its vCPU at once with a
    // KVM emulation failure (`internal-error`), which also shows it was resumed.
    let status = controller::qmp::status(&qmp).await;
    assert!(
        matches!(status.as_deref(), Some("running" | "internal-error")),
        "resumed after set-up: {status:?}"
    );

    let (status, _) =
        s.call(Method::POST, &format!("/api/vms/{id}/stop?force=true"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(qemu_pids(&id).is_empty());
    Ok(())
}

/// Without a working KVM, `FASTVM_ACCEL=kvm` refuses to start (naming why), and `auto` runs VMs
/// with TCG and says so on each of them.
async fn kvm_refused_and_auto_falls_back(why: &str) -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut settings = common::test_settings(dir.path());
    settings.accel = "kvm".into();
    let refused = controller::app::prepare(settings).await.err().ok_or("kvm was accepted")?;
    assert!(format!("{refused:#}").contains(why), "{refused:#}");
    let s = TestServer::start_with(|c| c.accel = "auto".into()).await;
    let admin = s.admin_token().await;
    let (_, body) =
        s.post("/api/vms", &admin, json!({"name": "auto", "memory": 256, "cpus": 1, "disk_size": 1})).await;
    let id = body["vm"]["id"].as_str().ok_or("id")?.to_string();
    let (status, body) = s.call(Method::POST, &format!("/api/vms/{id}/start"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["vm"]["accel"], "tcg");
    assert!(body["vm"]["accel_note"].as_str().is_some_and(|n| n.contains(why)), "{body}");
    let (status, _) =
        s.call(Method::POST, &format!("/api/vms/{id}/stop?force=true"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    Ok(())
}
