//! The controller SIGKILLed in the middle of long work (a full clone, a backup, a restore, an ISO
//! upload, a live backup and snapshot, a volume create, an incremental backup, a garbage
//! collection), then started again: nothing half-made is visible, the database and the files agree,
//! the interrupted job shows as failed with the reason, and the same operation then succeeds.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::TestResult;
use common::process::Fastvm;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

type BoxError = Box<dyn std::error::Error>;

async fn get(client: &Client, server: &Fastvm, token: &str, path: &str) -> Result<Value, BoxError> {
    Ok(client.get(server.url(path)).bearer_auth(token).send().await?.json().await?)
}

async fn post(
    client: &Client,
    server: &Fastvm,
    token: &str,
    path: &str,
    body: Value,
) -> Result<(StatusCode, Value), BoxError> {
    let r = client.post(server.url(path)).bearer_auth(token).json(&body).send().await?;
    let status = r.status();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

/// Creates a VM: its id.
async fn create_vm(client: &Client, server: &Fastvm, token: &str, spec: Value) -> Result<String, BoxError> {
    let (status, vm) = post(client, server, token, "/api/vms", spec).await?;
    assert_eq!(status, StatusCode::OK, "{vm}");
    Ok(vm["vm"]["id"].as_str().ok_or("id")?.to_string())
}

/// The data directory's files, but for the database, the job journal and the run directory.
fn files(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeSet<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).map(Path::to_path_buf).unwrap_or_default();
            let top = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned());
            if matches!(top.as_deref(), Some("run" | "jobs"))
                || rel.to_string_lossy().starts_with("fastvm.db")
            {
                continue;
            }
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                out.insert(rel);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// Waits until a job answers to `wanted`.
async fn wait_for_job(
    client: &Client,
    server: &Fastvm,
    token: &str,
    what: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Result<(), BoxError> {
    for _ in 0..4000 {
        let jobs = get(client, server, token, "/api/jobs").await?;
        if jobs.as_array().into_iter().flatten().any(&wanted) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(format!("no job {what}").into())
}

/// Waits until a job of `kind` runs.
async fn job_under_way(client: &Client, server: &Fastvm, token: &str, kind: &str) -> Result<(), BoxError> {
    wait_for_job(client, server, token, &format!("{kind} ran"), |j| {
        j["kind"] == kind && j["state"] == "running"
    })
    .await
}

/// Sends POST `path` (no body), SIGKILLs the controller once a job of `kind` runs, and starts it
/// again on the same data.
async fn kill_during_job(
    client: &Client,
    server: Fastvm,
    token: &str,
    path: &str,
    kind: &str,
    data: &Path,
) -> Result<Fastvm, BoxError> {
    let request = {
        let (client, url, token) = (client.clone(), server.url(path), token.to_string());
        tokio::spawn(async move { client.post(url).bearer_auth(token).send().await })
    };
    job_under_way(client, &server, token, kind).await?;
    drop(server);
    let _ = request.await;
    Fastvm::spawn(data, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_cut_short_by_a_kill_leaves_nothing_half_made_and_can_be_done_again() -> TestResult {
    let data = tempfile::tempdir()?;
    let client = Client::new();
    let mut server = Fastvm::spawn(data.path(), &[])?;
    let admin = server.admin_token(&client).await?;
    let (status, vm) = post(
        &client,
        &server,
        &admin,
        "/api/vms",
        json!({"name": "src", "memory": 256, "cpus": 1, "disk_size": 2}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{vm}");
    let id = vm["vm"]["id"].as_str().ok_or("id")?.to_string();
    // 512 MiB of incompressible data: long enough to be killed in the middle of.
    let vm_dir = data.path().join("vms").join(&id);
    std::fs::create_dir_all(&vm_dir)?;
    let raw = data.path().join("random.raw");
    let out = Command::new("head").args(["-c", "512M", "/dev/urandom"]).output()?;
    std::fs::write(&raw, &out.stdout)?;
    let disk = vm_dir.join("disk0.qcow2");
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&disk)
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_file(&raw)?;
    let (status, body) =
        post(&client, &server, &admin, &format!("/api/vms/{id}/snapshots"), json!({"name": "s"})).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) =
        post(&client, &server, &admin, &format!("/api/vms/{id}/backup"), json!(null)).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let backup = body["id"].as_str().ok_or("backup id")?.to_string();

    let operations: [(&str, String, Value); 3] = [
        ("clone", format!("/api/vms/{id}/clone"), json!({"name": "copy"})),
        ("backup", format!("/api/vms/{id}/backup"), json!(null)),
        ("restore", format!("/api/backups/{backup}/restore"), json!({"new_name": "restored"})),
    ];
    for (kind, path, body) in operations {
        let before = files(data.path());
        let vms_before = get(&client, &server, &admin, "/api/vms").await?.as_array().map(Vec::len);
        let backups_before = get(&client, &server, &admin, "/api/backups").await?.as_array().map(Vec::len);
        let request = {
            let (client, url, admin, body) = (client.clone(), server.url(&path), admin.clone(), body.clone());
            tokio::spawn(async move { client.post(url).bearer_auth(admin).json(&body).send().await })
        };
        job_under_way(&client, &server, &admin, kind).await?;
        drop(server); // SIGKILL
        let _ = request.await;
        server = Fastvm::spawn(data.path(), &[])?;
        let admin = server.admin_token(&client).await?;

        assert_eq!(files(data.path()), before, "{kind} killed: files left or lost");
        let vms = get(&client, &server, &admin, "/api/vms").await?;
        assert_eq!(vms.as_array().map(Vec::len), vms_before, "{kind} killed: no half-made VM: {vms}");
        let backups = get(&client, &server, &admin, "/api/backups").await?;
        assert_eq!(backups.as_array().map(Vec::len), backups_before, "{kind} killed: no half-made backup");
        let jobs = get(&client, &server, &admin, "/api/jobs").await?;
        let cut = jobs.as_array().into_iter().flatten().find(|j| j["kind"] == kind && j["state"] == "failed");
        let cut = cut.ok_or_else(|| format!("{kind} killed: no failed job in {jobs}"))?;
        assert!(cut["message"].as_str().is_some_and(|m| m.starts_with("interrupted")), "{cut}");

        let (status, answer) = post(&client, &server, &admin, &path, body).await?;
        assert_eq!(status, StatusCode::OK, "{kind} again after the kill: {answer}");
    }

    // An ISO upload, killed while its bytes still arrive.
    let before = files(data.path());
    let admin = server.admin_token(&client).await?;
    let slow = futures::stream::unfold(0u32, |sent| async move {
        if sent >= 600 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        Some((Ok::<_, std::io::Error>(vec![0u8; 1 << 16]), sent + 1))
    });
    let form = || {
        let part = reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(slow));
        reqwest::multipart::Form::new().part("file", part.file_name("cut.iso"))
    };
    let upload =
        tokio::spawn(client.post(server.url("/api/isos")).bearer_auth(&admin).multipart(form()).send());
    job_under_way(&client, &server, &admin, "upload").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(server);
    let _ = upload.await;
    let server = Fastvm::spawn(data.path(), &[])?;
    let admin = server.admin_token(&client).await?;
    assert_eq!(files(data.path()), before, "upload killed: files left");
    let jobs = get(&client, &server, &admin, "/api/jobs").await?;
    assert!(
        jobs.as_array().into_iter().flatten().any(|j| j["kind"] == "upload" && j["state"] == "failed"),
        "{jobs}"
    );
    let whole = reqwest::multipart::Part::bytes(vec![0u8; 4 << 20]).file_name("cut.iso");
    let r = client
        .post(server.url("/api/isos"))
        .bearer_auth(&admin)
        .multipart(reqwest::multipart::Form::new().part("file", whole))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK, "the upload again: {}", r.text().await?);
    Ok(())
}

/// Live work, cut short: the controller killed while QEMU copies a running VM's disk out for a
/// backup. The VM keeps running and is re-adopted, nothing half-made stays, and the next backup
/// works although QEMU may still have been busy with the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_backup_cut_short_leaves_the_vm_running_and_the_next_one_works() -> TestResult {
    let data = tempfile::tempdir()?;
    let _reaper = common::guest::VmReaper(data.path().to_path_buf());
    let client = Client::new();
    let server = Fastvm::spawn(data.path(), &[])?;
    let admin = server.admin_token(&client).await?;
    let spec = json!({"name": "live", "memory": 128, "cpus": 1, "disk_size": 2, "firmware": "bios"});
    let id = create_vm(&client, &server, &admin, spec).await?;
    let vm_dir = data.path().join("vms").join(&id);
    std::fs::create_dir_all(&vm_dir)?;
    // 512 MiB, smaller than the 2 GB its record says, as a restored disk may be: the live copy
    // must take the size of the image QEMU has open (it once took the record's, and QEMU refused).
    let raw = data.path().join("random.raw");
    std::fs::write(&raw, Command::new("head").args(["-c", "512M", "/dev/urandom"]).output()?.stdout)?;
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(vm_dir.join("disk0.qcow2"))
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_file(&raw)?;
    let (status, body) = post(&client, &server, &admin, &format!("/api/vms/{id}/start"), json!(null)).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let qemu = common::guest::qemu_pids(&id);
    assert_eq!(qemu.len(), 1);

    let before = files(data.path());
    let path = format!("/api/vms/{id}/backup");
    let server = kill_during_job(&client, server, &admin, &path, "backup", data.path()).await?;
    let admin = server.admin_token(&client).await?;

    assert_eq!(common::guest::qemu_pids(&id), qemu, "the VM kept running through the kill");
    let vm = get(&client, &server, &admin, &format!("/api/vms/{id}")).await?;
    assert_eq!(vm["status"], "running", "re-adopted: {vm}");
    assert_eq!(files(data.path()), before, "nothing half-made stays");
    let backups = get(&client, &server, &admin, "/api/backups").await?;
    assert_eq!(backups.as_array().map(Vec::len), Some(0), "{backups}");
    let jobs = get(&client, &server, &admin, "/api/jobs").await?;
    assert!(
        jobs.as_array().into_iter().flatten().any(|j| j["kind"] == "backup" && j["state"] == "failed"),
        "{jobs}"
    );
    let (status, body) =
        post(&client, &server, &admin, &format!("/api/vms/{id}/backup"), json!(null)).await?;
    assert_eq!(status, StatusCode::OK, "a backup after the kill: {body}");
    let (status, body) =
        post(&client, &server, &admin, &format!("/api/vms/{id}/stop?force=true"), json!(null)).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    Ok(())
}

/// The names of the internal snapshots in an image (`-U`: while its VM runs).
fn image_snapshots(image: &Path) -> Result<Vec<String>, BoxError> {
    let out =
        Command::new("qemu-img").args(["info", "-U", "-f", "qcow2", "--output=json"]).arg(image).output()?;
    let info: Value = serde_json::from_slice(&out.stdout)?;
    let names = info["snapshots"].as_array().into_iter().flatten();
    Ok(names.filter_map(|s| s["name"].as_str().map(String::from)).collect())
}

/// A live snapshot, cut short while QEMU writes the guest's RAM: QEMU finishes the save on its own,
/// which leaves a snapshot in the image that no record names. The next start removes it, the guest
/// keeps running (not left paused), and the next snapshot works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_snapshot_cut_short_leaves_no_unrecorded_snapshot_and_the_next_one_works() -> TestResult {
    let data = tempfile::tempdir()?;
    let _reaper = common::guest::VmReaper(data.path().to_path_buf());
    let client = Client::new();
    let server = Fastvm::spawn(data.path(), &[])?;
    let admin = server.admin_token(&client).await?;
    // Much RAM (untouched, so it costs the host nothing), so that its save lasts long enough
    // (half a second) to be killed in the middle of.
    let spec = json!({"name": "snap", "memory": 8192, "cpus": 1, "disk_size": 1, "firmware": "bios"});
    let id = create_vm(&client, &server, &admin, spec).await?;
    let (status, body) = post(&client, &server, &admin, &format!("/api/vms/{id}/start"), json!(null)).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let qemu = common::guest::qemu_pids(&id);
    assert_eq!(qemu.len(), 1);
    let disk = data.path().join("vms").join(&id).join("disk0.qcow2");

    let before = files(data.path());
    let request = {
        let url = server.url(&format!("/api/vms/{id}/snapshots"));
        let (client, admin) = (client.clone(), admin.clone());
        tokio::spawn(
            async move { client.post(url).bearer_auth(admin).json(&json!({"name": "a"})).send().await },
        )
    };
    let saving = "saving the guest's RAM and disks";
    wait_for_job(&client, &server, &admin, saving, |j| j["kind"] == "snapshot" && j["phase"] == saving)
        .await?;
    tokio::time::sleep(Duration::from_millis(30)).await;
    drop(server);
    let _ = request.await;
    let server = Fastvm::spawn(data.path(), &[])?;
    let admin = server.admin_token(&client).await?;

    assert_eq!(common::guest::qemu_pids(&id), qemu, "the VM kept running through the kill");
    let jobs = get(&client, &server, &admin, "/api/jobs").await?;
    let cut =
        jobs.as_array().into_iter().flatten().find(|j| j["kind"] == "snapshot" && j["state"] == "failed");
    let cut = cut.ok_or_else(|| format!("no failed snapshot job in {jobs}"))?;
    assert!(cut["message"].as_str().is_some_and(|m| m.starts_with("interrupted")), "{cut}");
    // QEMU's save ends on its own; then the start's sweep removes what it made.
    let mut left = image_snapshots(&disk)?;
    for _ in 0..600 {
        if left.is_empty() && server.log_text().contains("removed a snapshot with no record") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = image_snapshots(&disk)?;
    }
    assert!(left.is_empty(), "an unrecorded snapshot stays in the image: {left:?}");
    assert!(
        server.log_text().contains("removed a snapshot with no record"),
        "the kill came before QEMU began the save: the test did not test the leftover"
    );
    let snapshots = get(&client, &server, &admin, &format!("/api/vms/{id}/snapshots")).await?;
    assert_eq!(snapshots.as_array().map(Vec::len), Some(0), "{snapshots}");
    assert_eq!(files(data.path()), before, "nothing half-made stays");
    let vm = get(&client, &server, &admin, &format!("/api/vms/{id}")).await?;
    assert_eq!(
        (&vm["status"], &vm["state"]),
        (&json!("running"), &json!("running")),
        "not left paused: {vm}"
    );

    let (status, body) =
        post(&client, &server, &admin, &format!("/api/vms/{id}/snapshots"), json!({"name": "a"})).await?;
    assert_eq!(status, StatusCode::OK, "the snapshot again after the kill: {body}");
    let tag = format!("fastvm-{}", body["snapshot"]["id"].as_str().ok_or("snapshot id")?);
    assert_eq!(image_snapshots(&disk)?, vec![tag], "the image holds exactly the recorded snapshot");
    let (status, body) =
        post(&client, &server, &admin, &format!("/api/vms/{id}/stop?force=true"), json!(null)).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    Ok(())
}

/// A volume create cut short while its image is written (a qemu-img slowed down on purpose): no
/// volume is listed, no image is left, and the same create then works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_create_cut_short_leaves_no_image_and_can_be_done_again() -> TestResult {
    let data = tempfile::tempdir()?;
    let real = Command::new("sh").args(["-c", "command -v qemu-img"]).output()?;
    let real = String::from_utf8(real.stdout)?.trim().to_string();
    assert!(!real.is_empty(), "qemu-img is needed");
    // The image is complete, and then qemu-img lingers: the kill comes before it is in place.
    let bin = data.path().join("slow-bin");
    std::fs::create_dir_all(&bin)?;
    let wrapper = bin.join("qemu-img");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\n\"{real}\" \"$@\" || exit $?\n[ \"$1\" = create ] && sleep 5\nexit 0\n"),
    )?;
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let data_dir = data.path().join("data");
    std::fs::create_dir_all(&data_dir)?;
    let client = Client::new();
    let server = Fastvm::spawn(&data_dir, &[("PATH", path.as_str())])?;
    let admin = server.admin_token(&client).await?;
    let before = files(&data_dir);
    let request = {
        let (client, url, admin) = (client.clone(), server.url("/api/volumes"), admin.clone());
        let body = json!({"name": "v", "size_gb": 1});
        tokio::spawn(async move { client.post(url).bearer_auth(admin).json(&body).send().await })
    };
    let volumes_dir = data_dir.join("volumes");
    let mut partial = false;
    for _ in 0..500 {
        partial = std::fs::read_dir(&volumes_dir).into_iter().flatten().flatten().next().is_some();
        if partial {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(partial, "the image was being written");
    drop(server);
    let _ = request.await;
    let server = Fastvm::spawn(&data_dir, &[])?;
    let admin = server.admin_token(&client).await?;
    assert_eq!(files(&data_dir), before, "the half-made image is gone");
    let volumes = get(&client, &server, &admin, "/api/volumes").await?;
    assert_eq!(volumes.as_array().map(Vec::len), Some(0), "{volumes}");
    let (status, body) =
        post(&client, &server, &admin, "/api/volumes", json!({"name": "v", "size_gb": 1})).await?;
    assert_eq!(status, StatusCode::OK, "the create again: {body}");
    let volumes = get(&client, &server, &admin, "/api/volumes").await?;
    assert_eq!(volumes.as_array().map(Vec::len), Some(1), "{volumes}");
    Ok(())
}

/// Every chunk every backup manifest names is in the store.
fn no_chunk_missing(data: &Path) -> TestResult {
    for entry in std::fs::read_dir(data.join("backups"))?.filter_map(Result::ok) {
        let path = entry.path();
        if !path.to_string_lossy().ends_with(".manifest.json") {
            continue;
        }
        let m: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        let names =
            m["disks"].as_array().into_iter().flatten().chain(m["files"].as_array().into_iter().flatten());
        for id in names.flat_map(|d| d["chunks"].as_array().cloned().unwrap_or_default()) {
            let id = id.as_str().ok_or("chunk name")?;
            let chunk = data.join("backups/chunks").join(&id[..2]).join(id);
            assert!(chunk.is_file(), "{} names a missing chunk {id}", path.display());
        }
    }
    Ok(())
}

/// Writes `mib` MiB of random data into a qcow2 image at `at_mib` (qemu-io opens it with its
/// persistent bitmaps, which record the write as QEMU would).
fn write_random(image: &Path, at_mib: u64, mib: u64) -> TestResult {
    let noise = image.with_extension("noise");
    std::fs::write(
        &noise,
        Command::new("head").args(["-c", &format!("{mib}M"), "/dev/urandom"]).output()?.stdout,
    )?;
    let write = format!("write -s {} {at_mib}M {mib}M", noise.display());
    let out = Command::new("qemu-io").args(["-f", "qcow2", "-c", &write]).arg(image).output()?;
    std::fs::remove_file(&noise)?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Restores `backup` as a new VM whose disk must be `expected`'s data.
async fn restores_to(
    client: &Client,
    server: &Fastvm,
    token: &str,
    data: &Path,
    backup: &str,
    expected: &Path,
) -> TestResult {
    let (status, r) = post(
        client,
        server,
        token,
        &format!("/api/backups/{backup}/restore"),
        json!({"new_name": format!("r-{backup}")}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{r}");
    let disk = data.join("vms").join(r["vm"]["id"].as_str().ok_or("id")?).join("disk0.qcow2");
    let same = Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "qcow2"])
        .arg(expected)
        .arg(&disk)
        .output()?;
    assert!(
        same.status.success(),
        "backup {backup} restores another disk: {}",
        String::from_utf8_lossy(&same.stdout)
    );
    Ok(())
}

/// Whether a process still has `path` on its command line (a helper QEMU left behind).
fn process_holding(path: &Path) -> bool {
    let wanted = path.to_string_lossy().into_owned();
    std::fs::read_dir("/proc").into_iter().flatten().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&wanted))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_backup_or_a_collection_cut_short_loses_no_chunk_and_the_next_backup_is_right()
-> TestResult {
    let data = tempfile::tempdir()?;
    let client = Client::new();
    let mut server = Fastvm::spawn(data.path(), &[])?;
    let admin = server.admin_token(&client).await?;
    let spec = json!({"name": "incr", "memory": 128, "cpus": 1, "disk_size": 1, "firmware": "bios"});
    let id = create_vm(&client, &server, &admin, spec).await?;
    let disk = data.path().join("vms").join(&id).join("disk0.qcow2");
    std::fs::create_dir_all(disk.parent().ok_or("vm dir")?)?;
    let out = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&disk).arg("1G").output()?;
    assert!(out.status.success());
    write_random(&disk, 0, 64)?;
    let (status, body) =
        post(&client, &server, &admin, &format!("/api/vms/{id}/backup"), json!(null)).await?;
    assert_eq!(status, StatusCode::OK, "{body}");

    // An incremental backup (384 MiB changed since), killed while it copies.
    write_random(&disk, 128, 384)?;
    let before = files(data.path());
    let path = format!("/api/vms/{id}/backup");
    server = kill_during_job(&client, server, &admin, &path, "backup", data.path()).await?;
    let admin = server.admin_token(&client).await?;
    for _ in 0..50 {
        if !process_holding(&disk) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!process_holding(&disk), "no QEMU of the cut backup holds the disk");
    no_chunk_missing(data.path())?;
    // The chunks it stored before the kill go at start.
    for _ in 0..100 {
        if files(data.path()) == before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(files(data.path()), before, "nothing of the cut backup stays");
    let backups = get(&client, &server, &admin, "/api/backups").await?;
    assert_eq!(backups.as_array().map(Vec::len), Some(1), "{backups}");
    let (status, again) =
        post(&client, &server, &admin, &format!("/api/vms/{id}/backup"), json!(null)).await?;
    assert_eq!(status, StatusCode::OK, "{again}");
    // The bitmap the cut backup had open may no longer be trusted: then a full read, saying so.
    if again["incremental"] == false {
        assert!(again["full_reason"].as_str().is_some_and(|r| r.contains("bitmap")), "{again}");
    }
    restores_to(&client, &server, &admin, data.path(), again["id"].as_str().ok_or("id")?, &disk).await?;

    // A garbage collection killed half-way through 30000 chunks no backup names.
    let garbage = data.path().join("backups/chunks/00");
    std::fs::create_dir_all(&garbage)?;
    for i in 0..30000u64 {
        std::fs::write(garbage.join(format!("{:064x}", i)), b"no backup names this")?;
    }
    let count = || std::fs::read_dir(&garbage).map(|d| d.count()).unwrap_or(0);
    let request = {
        let (client, url, admin) = (client.clone(), server.url("/api/backups/gc"), admin.clone());
        tokio::spawn(async move { client.post(url).bearer_auth(admin).send().await })
    };
    for _ in 0..2000 {
        if count() < 30000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(server);
    let _ = request.await;
    let left = count();
    assert!(left < 30000, "the collection had begun");
    no_chunk_missing(data.path())?;
    let server = Fastvm::spawn(data.path(), &[])?;
    let admin = server.admin_token(&client).await?;
    write_random(&disk, 700, 8)?;
    let (status, next) =
        post(&client, &server, &admin, &format!("/api/vms/{id}/backup"), json!(null)).await?;
    assert_eq!(status, StatusCode::OK, "{next}");
    assert_eq!(next["incremental"], true, "{next}");
    restores_to(&client, &server, &admin, data.path(), next["id"].as_str().ok_or("id")?, &disk).await?;
    no_chunk_missing(data.path())?;
    eprintln!("garbage left by the cut collection: {left} of 30000");
    Ok(())
}
