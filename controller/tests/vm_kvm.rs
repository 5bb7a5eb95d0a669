//! The KVM path on a real QEMU: guests here boot under TCG (nested paravirtual KVM is too slow for
//! a guest kernel), but QEMU itself must start with KVM and report it enabled.

mod common;

use common::guest::qemu_pids;
use common::{TestResult, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kvm_vm_runs_qemu_with_kvm_enabled() -> TestResult {
    let qemu = controller::system::find_in_path("qemu-system-x86_64").is_some();
    if !(qemu && controller::host::kvm_usable()) {
        assert!(std::env::var("CI").is_err(), "CI machines have QEMU and a usable /dev/kvm");
        eprintln!("SKIPPED: no QEMU or no usable /dev/kvm");
        return Ok(());
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
