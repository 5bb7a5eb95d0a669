//! `GET /api/health` reports real checks.

mod common;

use common::{TestResult, TestServer};
use reqwest::StatusCode;
use serde_json::Value;

/// Under CI every dependency is installed and started by the test command, so all must pass there.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

#[tokio::test]
async fn health_needs_no_auth_and_reports_each_check() -> TestResult {
    let s = TestServer::start().await;
    let r = s.client.get(s.url("/api/health")).send().await?;
    assert_eq!(r.status(), StatusCode::OK);
    let h: Value = r.json().await?;
    assert_eq!(h["service"], "Fast VM");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(h["checks"]["database"]["ok"], true);

    let qemu_present = controller::host::find_in_path("qemu-system-x86_64").is_some();
    assert_eq!(h["checks"]["qemu"]["ok"], qemu_present, "{h}");
    // What the start-up probe found: a QEMU really run with KVM, not only /dev/kvm opening.
    let probe = controller::host::kvm_probed().ok_or("probed at start-up")?;
    let kvm_usable = probe.usable;
    assert_eq!(h["checks"]["kvm"]["ok"], kvm_usable, "{h}");
    assert_eq!(h["checks"]["kvm"]["detail"], probe.detail.as_str());
    let expected = if qemu_present && kvm_usable { "healthy" } else { "degraded" };
    assert_eq!(h["status"], expected);
    // The process runtime cannot keep NAT guests from the host's loopback, and says so.
    assert_eq!(h["checks"]["nat_guest_isolation"]["ok"], false, "{h}");
    assert!(h["checks"]["nat_guest_isolation"]["detail"].as_str().is_some_and(|d| d.contains("10.0.2.2")));
    for check in ["database", "qemu", "kvm", "docker"] {
        assert!(h["checks"][check]["detail"].is_string(), "{check}");
    }
    if in_ci() {
        assert_eq!(h["checks"]["qemu"]["ok"], true, "CI installs QEMU: {h}");
        assert_eq!(h["checks"]["docker"]["ok"], true, "the test command starts dockerd: {h}");
        assert_eq!(h["status"] == "healthy", kvm_usable, "healthy where KVM works: {h}");
    }
    Ok(())
}

#[tokio::test]
async fn docker_check_fails_when_no_engine_answers() -> TestResult {
    // DOCKER_HOST points at a socket path where nothing listens; the server must say so, not hang.
    let dir = tempfile::tempdir()?;
    let fake = format!("unix://{}/docker.sock", dir.path().display());
    let server = common::process::Fastvm::spawn(dir.path(), &[("DOCKER_HOST", &fake)])?;
    let started = std::time::Instant::now();
    let h: Value = reqwest::get(server.url("/api/health")).await?.json().await?;
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(h["checks"]["docker"]["ok"], false, "{h}");
    assert!(h["checks"]["docker"]["detail"].as_str().is_some_and(|d| !d.is_empty()));
    assert_eq!(h["checks"]["database"]["ok"], true);
    Ok(())
}

#[tokio::test]
async fn the_first_admin_password_shows_until_it_is_changed() -> TestResult {
    let s = TestServer::start().await;
    let health = || async { s.client.get(s.url("/api/health")).send().await?.json::<Value>().await };
    let h = health().await?;
    assert_eq!(h["checks"]["default_password"]["ok"], false, "admin/admin still signs in: {h}");
    assert_eq!(h["status"], health().await?["status"], "not part of the status");
    let admin = s.admin_token().await;
    let body = serde_json::json!({"current_password": "admin", "new_password": "a-better-one-1"});
    let (status, answer) = s.post("/api/auth/change-password", &admin, body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let h = health().await?;
    assert_eq!(h["checks"]["default_password"]["ok"], true, "changed: {h}");

    // An installer gives the first admin its password: no admin/admin at any time.
    let s =
        TestServer::start_with(|settings| settings.admin_password = Some("set-by-installer".into())).await;
    assert_eq!(s.login("admin", "admin").await.status(), StatusCode::UNAUTHORIZED);
    let r = s.login("admin", "set-by-installer").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await?["must_change_password"], false);
    let h: Value = s.client.get(s.url("/api/health")).send().await?.json().await?;
    assert_eq!(h["checks"]["default_password"]["ok"], true, "{h}");
    Ok(())
}
