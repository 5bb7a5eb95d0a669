//! End to end with a real Docker engine: each VM is a `fastvm-<id>` container from the vmrunner
//! image, driven by the real `fastvm` binary with FASTVM_RUNTIME=docker.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::TestResult;
use common::guest::{free_port, guest_iso, type_on_serial, wait_serial};
use common::process::Fastvm;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const BOOT: Duration = Duration::from_secs(180);
const IMAGE: &str = "fastvm/vmrunner:latest";

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker").args(args).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn container(name: &str) -> Option<Value> {
    docker(&["inspect", name]).ok().and_then(|s| serde_json::from_str::<Value>(&s).ok()).map(|v| v[0].clone())
}

/// Docker and the vmrunner image, or None outside CI (where they must be there).
fn docker_ready() -> bool {
    if docker(&["image", "inspect", IMAGE]).is_ok() {
        return true;
    }
    assert!(std::env::var("CI").is_err(), "CI needs dockerd and {IMAGE} (scripts/test.sh builds it)");
    eprintln!("SKIPPED: no Docker engine or no {IMAGE} (run scripts/build-images.sh)");
    false
}

/// Removes the test's containers however it ends.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = docker(&["rm", "-f", name]);
        }
    }
}

async fn call(
    client: &Client,
    server: &Fastvm,
    token: &str,
    method: reqwest::Method,
    path: &str,
) -> (StatusCode, Value) {
    let r = client.request(method, server.url(path)).bearer_auth(token).send().await.expect("request");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn wait_status(
    client: &Client,
    server: &Fastvm,
    token: &str,
    id: &str,
    want: &str,
    within: Duration,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (_, vm) = call(client, server, token, reqwest::Method::GET, &format!("/api/vms/{id}")).await;
        if vm["status"] == want || Instant::now() > deadline {
            return vm;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_vm_lifecycle_survives_controller_restarts_and_reports_kills() -> TestResult {
    let Some(iso) = guest_iso() else { return Ok(()) };
    if !docker_ready() {
        return Ok(());
    }
    let data = tempfile::tempdir()?;
    let iso_dir = iso.parent().ok_or("iso dir")?.display().to_string();
    let env = [
        ("FASTVM_RUNTIME", "docker"),
        ("FASTVM_ISO_DIRS", iso_dir.as_str()),
        ("FASTVM_METRICS_INTERVAL", "1"),
    ];
    let client = Client::new();
    let stranger = format!("fvtest-unlabeled-{}", std::process::id());
    let mut cleanup = Cleanup(vec![stranger.clone()]);
    docker(&["create", "--name", &stranger, IMAGE, "--version"])?;

    let first = Fastvm::spawn(data.path(), &env)?;
    let health: Value = client.get(first.url("/api/health")).send().await?.json().await?;
    assert_eq!(health["runtime"], "docker");
    let body: Value = client
        .post(first.url("/api/auth/login"))
        .json(&json!({"username": "admin", "password": "admin"}))
        .send()
        .await?
        .json()
        .await?;
    let token = body["access_token"].as_str().ok_or("token")?.to_string();
    let port = free_port();
    let created: Value = client
        .post(first.url("/api/vms"))
        .bearer_auth(&token)
        .json(&json!({"name": "docker guest", "memory": 256, "cpus": 1, "disk_size": 1, "firmware": "bios",
                      "iso_path": iso, "boot_order": ["cdrom", "disk"],
                      "networks": [{"port_forwards": [{"host_port": port, "guest_port": 8080}]}]}))
        .send()
        .await?
        .json()
        .await?;
    let id = created["vm"]["id"].as_str().ok_or("id")?.to_string();
    assert_eq!(created["vm"]["runtime"], "docker");
    let name = format!("fastvm-{id}");
    cleanup.0.push(name.clone());
    let run_dir = data.path().join("run").join(&id);

    let (status, body) =
        call(&client, &first, &token, reqwest::Method::POST, &format!("/api/vms/{id}/start")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let c = container(&name).ok_or("no container")?;
    assert_eq!(c["Config"]["Labels"]["fastvm.managed"], "true");
    assert_eq!(c["Config"]["Labels"]["fastvm.vm_id"], id.as_str());
    assert_eq!(c["Config"]["Image"], IMAGE);
    assert_eq!(c["HostConfig"]["NetworkMode"], "bridge");
    assert!(c["HostConfig"]["Privileged"] == false);
    // Tests run guests under TCG, so no /dev/kvm is passed (the KVM case is a unit test of the body).
    assert!(
        c["HostConfig"]["Devices"].as_array().is_none_or(|d| d.is_empty()),
        "{}",
        c["HostConfig"]["Devices"]
    );
    let binding = &c["HostConfig"]["PortBindings"][format!("{port}/tcp")][0];
    assert_eq!(binding["HostIp"], "127.0.0.1");

    wait_serial_async(&run_dir, 1).await?;
    // CPU and memory come from the container's stats: the whole VM (QEMU with a 256 MiB guest), not
    // the container's first process (vmrunner, a few MiB).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, reading) =
        call(&client, &first, &token, reqwest::Method::GET, &format!("/api/vms/{id}/metrics")).await;
    assert!(reading["memory_bytes"].as_u64().unwrap_or(0) > 64 << 20, "{reading}");
    assert!(reading["cpu_percent"].as_f64().is_some_and(|c| c > 0.0), "{reading}");
    // NAT port forward, published by Docker on 127.0.0.1.
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
    assert!(served.contains("Fast VM test guest"), "published port did not reach the guest: {served:?}");

    // SIGKILL the controller; the container keeps running and is re-adopted.
    drop(first);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(container(&name).ok_or("container")?["State"]["Running"], true);
    let second = Fastvm::spawn(data.path(), &env)?;
    let vm = wait_status(&client, &second, &token, &id, "running", Duration::from_secs(5)).await;
    assert_eq!(vm["status"], "running", "{vm}");

    // The stranger container survives reconciles.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(container(&stranger).is_some(), "an unlabeled container was touched");

    // A live backup: QEMU inside the container writes the copy.
    let (status, body) =
        call(&client, &second, &token, reqwest::Method::POST, &format!("/api/vms/{id}/backup")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["size_mb"].as_f64().is_some(), "{body}");

    // ACPI stop ends the container.
    let (status, body) =
        call(&client, &second, &token, reqwest::Method::POST, &format!("/api/vms/{id}/stop?timeout=60"))
            .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["vm"]["status"], "stopped");
    assert!(body["vm"]["last_error"].is_null(), "{body}");
    assert_eq!(container(&name).ok_or("container kept for its logs")?["State"]["Running"], false);
    let serial = std::fs::read_to_string(run_dir.join("serial.log"))?;
    assert!(serial.contains("FASTVM-POWERDOWN"));

    // A clone shares the source's disk as a base outside both VMs' directories: the clone's
    // container sees it (read-only), and so does the source's on its next start below.
    let cloned: Value = client
        .post(second.url(&format!("/api/vms/{id}/clone")))
        .bearer_auth(&token)
        .json(&json!({"name": "docker clone"}))
        .send()
        .await?
        .json()
        .await?;
    let clone_id = cloned["vm"]["id"].as_str().ok_or_else(|| format!("clone: {cloned}"))?.to_string();
    cleanup.0.push(format!("fastvm-{clone_id}"));
    let (status, body) =
        call(&client, &second, &token, reqwest::Method::POST, &format!("/api/vms/{clone_id}/start")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) =
        call(&client, &second, &token, reqwest::Method::DELETE, &format!("/api/vms/{clone_id}?force=true"))
            .await;
    assert_eq!(status, StatusCode::OK);

    // docker kill: within 10 s the VM shows stopped with a reason.
    let (status, body) =
        call(&client, &second, &token, reqwest::Method::POST, &format!("/api/vms/{id}/start")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    docker(&["kill", &name])?;
    let vm = wait_status(&client, &second, &token, &id, "stopped", Duration::from_secs(10)).await;
    assert_eq!(vm["status"], "stopped", "{vm}");
    assert!(vm["last_error"].as_str().is_some_and(|e| e.contains("137")), "{vm}");

    // Delete removes the container.
    let (status, _) =
        call(&client, &second, &token, reqwest::Method::DELETE, &format!("/api/vms/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(container(&name).is_none(), "container left after delete");
    assert!(container(&stranger).is_some());
    Ok(())
}

async fn wait_serial_async(
    run_dir: &std::path::Path,
    count: usize,
) -> Result<String, tokio::task::JoinError> {
    let run_dir = run_dir.to_path_buf();
    tokio::task::spawn_blocking(move || wait_serial(&run_dir, "FASTVM-GUEST-READY", count, BOOT)).await
}
