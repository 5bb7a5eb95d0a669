//! Backups on a real guest: a live backup restores as a new VM that boots with the data that was
//! on the disk; downloads are byte-exact and resumable; a damaged archive changes nothing.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::guest::{guest_iso, type_on_serial, wait_serial};
use common::{TestResult, TestServer};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_backup_restores_as_a_new_vm_that_boots_with_the_data() -> TestResult {
    let Some(iso) = guest_iso() else { return Ok(()) };
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let (id, run_dir) = s.boot_guest(&admin, "backed up", &iso).await;
    // Data written by the running guest straight onto its disk.
    type_on_serial(&run_dir, "echo FASTVM-BACKUP-MARK | dd of=/dev/vda conv=fsync && echo WROTE-MARK")?;
    tokio::task::spawn_blocking({
        let run_dir = run_dir.clone();
        move || wait_serial(&run_dir, "\nWROTE-MARK", 1, Duration::from_secs(30))
    })
    .await?;
    // A volume with data, hot-plugged: the live backup copies it too.
    let (_, vol) = s.post("/api/volumes", &admin, json!({"name": "live-data", "size_gb": 1})).await;
    let vol_id = vol["volume"]["id"].as_str().ok_or("id")?.to_string();
    let vol_path = vol["volume"]["path"].as_str().ok_or("path")?.to_string();
    assert!(
        Command::new("qemu-io").args(["-c", "write -P 0x33 0 4M"]).arg(&vol_path).output()?.status.success()
    );
    let (status, body) =
        s.call(Method::POST, &format!("/api/vms/{id}/volumes/{vol_id}"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, backup) = s.call(Method::POST, &format!("/api/vms/{id}/backup"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{backup}");
    assert_eq!(backup["vm_name"], "backed up");
    let backup_id = backup["id"].as_str().ok_or("id")?.to_string();
    let (_, vm) = s.get(&format!("/api/vms/{id}"), &admin).await;
    assert_eq!(vm["status"], "running", "the guest kept running");

    let (_, list) = s.get("/api/backups", &admin).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_eq!(list[0]["storage"], "chunks", "{list}");
    assert_eq!(list[0]["incremental"], false, "the first backup reads everything");
    let manifest = manifest_of(s.data_dir.path(), &list[0])?;
    let chunk = first_chunk(s.data_dir.path(), &manifest, "volumes/")?;
    let chunk_bytes = std::fs::read(&chunk)?;

    // Download: one standalone archive of today's format, built from the chunks, and resumable.
    let url = s.url(&format!("/api/backups/{backup_id}/download"));
    let full = s.client.get(&url).bearer_auth(&admin).send().await?;
    assert_eq!(full.status(), StatusCode::OK);
    let length: usize = full.headers()["content-length"].to_str()?.parse()?;
    assert!(full.headers()["content-disposition"].to_str()?.contains(".tar.zst"));
    let downloaded = full.bytes().await?.to_vec();
    assert_eq!(downloaded.len(), length);
    let part = s.client.get(&url).bearer_auth(&admin).header("range", "bytes=10-19").send().await?;
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.bytes().await?.as_ref(), &downloaded[10..20]);
    let unpacked = tempfile::tempdir()?;
    let archive = unpacked.path().join("download.tar.zst");
    std::fs::write(&archive, &downloaded)?;
    let extracted = unpacked.path().join("x");
    std::fs::create_dir(&extracted)?;
    let read = controller::backups::archive::extract_verified(&archive, &extracted, &|_, _| {})?;
    assert_eq!(read.vm_name, "backed up");
    assert!(extracted.join("disk0.qcow2").is_file() && extracted.join("volumes").is_dir());
    let leftovers = std::fs::read_dir(s.data_dir.path().join("backups"))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(leftovers, 0, "the packed download is not kept");

    // Restore as a new VM; it boots, and its disk holds what the guest wrote.
    let (status, restored) =
        s.post(&format!("/api/backups/{backup_id}/restore"), &admin, json!({"new_name": "restored"})).await;
    assert_eq!(status, StatusCode::OK, "{restored}");
    let new_id = restored["vm"]["id"].as_str().ok_or("id")?.to_string();
    assert_ne!(new_id, id);
    let new_disk = s.data_dir.path().join("vms").join(&new_id).join("disk0.qcow2");
    let out = Command::new("qemu-io").args(["-r", "-U", "-c", "read -v 0 32"]).arg(&new_disk).output()?;
    let dump = String::from_utf8_lossy(&out.stdout);
    // qemu-io prints non-alphanumeric bytes as dots in its text column.
    assert!(dump.contains("FASTVM.BACKUP.MA"), "restored disk lacks the data: {dump}");
    let (_, volumes) = s.get("/api/volumes", &admin).await;
    let theirs = volumes
        .as_array()
        .and_then(|l| l.iter().find(|v| v["attached_to"] == new_id.as_str()))
        .ok_or("the restored VM has no volume")?;
    assert!(holds_pattern(std::path::Path::new(theirs["path"].as_str().ok_or("path")?), 0x33, "4M")?);
    let (status, _) =
        s.call(Method::POST, &format!("/api/vms/{id}/stop?force=true"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = s.call(Method::POST, &format!("/api/vms/{new_id}/start"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new_run = s.data_dir.path().join("run").join(&new_id);
    tokio::task::spawn_blocking(move || wait_serial(&new_run, "FASTVM-GUEST-READY", 1, BOOT)).await?;

    // A damaged chunk is refused and nothing is created; so is a missing one.
    let mut damaged = chunk_bytes.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(&chunk, &damaged)?;
    let (status, body) =
        s.post(&format!("/api/backups/{backup_id}/restore"), &admin, json!({"new_name": "never"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("damaged")), "{body}");
    // Verification finds it and marks the backup damaged.
    let (status, found) =
        s.call(Method::POST, &format!("/api/backups/{backup_id}/verify"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["ok"], false, "{found}");
    assert_eq!(found["damaged_backups"], json!([backup_id]), "{found}");
    let (_, list) = s.get("/api/backups", &admin).await;
    assert_eq!(list[0]["damaged"], true, "{list}");
    std::fs::remove_file(&chunk)?;
    let (status, _) =
        s.post(&format!("/api/backups/{backup_id}/restore"), &admin, json!({"new_name": "never"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a missing chunk is refused");
    std::fs::write(&chunk, &chunk_bytes)?;
    let (_, found) =
        s.call(Method::POST, &format!("/api/backups/{backup_id}/verify"), Some(&admin), None).await;
    assert_eq!(found["ok"], true, "the chunk is back: {found}");
    let (_, list) = s.get("/api/backups", &admin).await;
    assert_eq!(list[0]["damaged"], false, "{list}");
    assert!(list[0]["verified"].is_string(), "{list}");
    let (_, vms) = s.get("/api/vms", &admin).await;
    assert_eq!(vms.as_array().map(Vec::len), Some(2), "no VM from a damaged archive");
    let leftovers = std::fs::read_dir(s.data_dir.path().join("vms"))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".restore"))
        .count();
    assert_eq!(leftovers, 0, "staging directories are cleaned up");

    let (status, _) = s.call(Method::DELETE, &format!("/api/backups/{backup_id}"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!manifest.exists());
    assert!(!chunk.exists(), "its chunks go with the last backup that names them");
    Ok(())
}

/// A chunked backup's manifest file (`backup`: an entry of the list).
fn manifest_of(data: &std::path::Path, backup: &serde_json::Value) -> Result<std::path::PathBuf, String> {
    let name = backup["backup_name"].as_str().ok_or("backup_name")?;
    let stem = name.strip_suffix(".tar.zst").ok_or("name")?;
    Ok(data.join("backups").join(format!("{stem}.manifest.json")))
}

/// The file of the first chunk of the first disk whose name starts with `member`.
fn first_chunk(
    data: &std::path::Path,
    manifest: &std::path::Path,
    member: &str,
) -> Result<std::path::PathBuf, Box<dyn std::error::Error>> {
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest)?)?;
    let disks = m["disks"].as_array().ok_or("disks")?;
    let disk =
        disks.iter().find(|d| d["member"].as_str().is_some_and(|n| n.starts_with(member))).ok_or("disk")?;
    let id = disk["chunks"][0].as_str().ok_or("chunk")?;
    Ok(data.join("backups/chunks").join(&id[..2]).join(id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_take_backups_and_prune_to_keep() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let (_, body) =
        s.post("/api/vms", &admin, json!({"name": "sched", "memory": 256, "cpus": 1, "disk_size": 1})).await;
    let id = body["vm"]["id"].as_str().ok_or("id")?.to_string();
    let path = format!("/api/vms/{id}/backup-schedule");
    for (bad, field) in [
        (json!({"cron": "0 3 * * *", "interval": 60, "keep": 2}), "cron"),
        (json!({"cron": "not a cron", "keep": 2}), "cron"),
        (json!({"interval": 0, "keep": 2}), "interval"),
        (json!({"interval": 60, "keep": 0}), "keep"),
    ] {
        let (status, resp) = s.post(&path, &admin, bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {resp}");
        assert!(resp["detail"].as_str().is_some_and(|d| d.contains(field)), "{resp}");
    }
    let (status, resp) = s.post(&path, &admin, json!({"cron": "0 3 * * *", "keep": 7})).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert!(resp["schedule"]["next_run"].as_str().is_some_and(|t| t.ends_with("03:00:00Z")), "{resp}");

    let (status, manual) = s.call(Method::POST, &format!("/api/vms/{id}/backup"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{manual}");
    let (status, _) = s.post(&path, &admin, json!({"interval": 1, "keep": 2})).await;
    assert_eq!(status, StatusCode::OK);
    // Several ticks: more scheduled backups are taken than kept (the manual one and three more).
    let deadline = Instant::now() + Duration::from_secs(60);
    while succeeded_backups(&s, &admin, &id).await < 4 {
        assert!(Instant::now() < deadline, "fewer than three scheduled backups in 60 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, sched) = s.get(&path, &admin).await;
    assert!(sched["last_run"].is_string() && sched["last_error"].is_null(), "{sched}");
    let (status, _) = s.call(Method::DELETE, &path, Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);

    // Retention follows each scheduled run, which may still be in flight: wait for it to settle.
    let archives = || -> std::io::Result<usize> {
        Ok(std::fs::read_dir(s.data_dir.path().join("backups"))?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".manifest.json"))
            .count())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, list) = s.get("/api/backups", &admin).await;
        let list = list.as_array().ok_or("list")?;
        let scheduled = list.iter().filter(|b| b["scheduled"] == true).count();
        let files = archives()?;
        if scheduled == 2 && files == 3 {
            assert!(list.iter().any(|b| b["id"] == manual["id"]), "manual backups are never pruned");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not pruned to keep=2 (plus the manual one): {scheduled} scheduled, {files} archives: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// How many backup jobs of the VM have succeeded.
async fn succeeded_backups(s: &TestServer, token: &str, vm_id: &str) -> usize {
    let (_, jobs) = s.get("/api/jobs", token).await;
    jobs.as_array().map_or(0, |jobs| {
        jobs.iter()
            .filter(|j| j["kind"] == "backup" && j["vm_id"] == vm_id && j["state"] == "succeeded")
            .count()
    })
}

#[tokio::test]
async fn an_uploaded_archive_restores_as_a_new_vm_and_a_damaged_one_is_refused() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let (id, disk) = stopped_vm_with_disk(&s, &admin, "exported", 1).await?;
    assert!(Command::new("qemu-io").args(["-c", "write -P 0x5a 0 1M"]).arg(&disk).output()?.status.success());
    let (_, backup) = s.call(Method::POST, &format!("/api/vms/{id}/backup"), Some(&admin), None).await;
    let backup_id = backup["id"].as_str().ok_or("id")?.to_string();
    let bytes = s
        .client
        .get(s.url(&format!("/api/backups/{backup_id}/download")))
        .bearer_auth(&admin)
        .send()
        .await?
        .bytes()
        .await?
        .to_vec();

    let upload = |data: Vec<u8>, name: Option<&'static str>| {
        let mut form = reqwest::multipart::Form::new()
            .part("file", reqwest::multipart::Part::bytes(data).file_name("backup.tar.zst"));
        if let Some(n) = name {
            form = form.text("new_name", n);
        }
        s.client.post(s.url("/api/vms/restore")).bearer_auth(&admin).multipart(form).send()
    };
    let mut damaged = bytes.clone();
    let last = damaged.len() - 1;
    damaged.truncate(last / 2);
    let r = upload(damaged, Some("broken")).await?;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(s.get("/api/vms", &admin).await.1.as_array().map(Vec::len), Some(1));
    assert_eq!(s.get("/api/backups", &admin).await.1.as_array().map(Vec::len), Some(1));

    let bytes_kept = bytes.clone();
    let r = upload(bytes, Some("imported")).await?;
    assert_eq!(r.status(), StatusCode::OK);
    let restored: serde_json::Value = r.json().await?;
    assert_eq!(restored["vm"]["name"], "imported");
    let new_disk =
        s.data_dir.path().join("vms").join(restored["vm"]["id"].as_str().ok_or("id")?).join("disk0.qcow2");
    let out = Command::new("qemu-io").args(["-r", "-c", "read -P 0x5a 0 1M"]).arg(&new_disk).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("read 1048576/1048576")
            && !text.contains("Pattern verification failed"),
        "{text}"
    );
    let (_, list) = s.get("/api/backups", &admin).await;
    assert_eq!(list.as_array().map(Vec::len), Some(2), "the upload is kept as a backup");
    // Kept as the archive it is (the format of backups from before the chunk store): listed,
    // verified by reading it through, downloaded byte for byte, restorable.
    let kept =
        list.as_array().and_then(|l| l.iter().find(|b| b["id"] != backup_id.as_str())).ok_or("kept")?;
    assert_eq!(kept["storage"], "archive", "{kept}");
    assert!(kept["bytes_read"].is_null() && kept["incremental"] == false, "{kept}");
    let kept_id = kept["id"].as_str().ok_or("id")?;
    let (status, found) =
        s.call(Method::POST, &format!("/api/backups/{kept_id}/verify"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["ok"], true, "{found}");
    let again =
        s.client.get(s.url(&format!("/api/backups/{kept_id}/download"))).bearer_auth(&admin).send().await?;
    assert!(again.bytes().await?.to_vec() == bytes_kept, "the archive comes back as it was uploaded");
    let (status, body) =
        s.post(&format!("/api/backups/{kept_id}/restore"), &admin, json!({"new_name": "from-archive"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    Ok(())
}

/// A stopped VM whose (empty) qcow2 disk exists already, so data can be put on it with qemu-io.
async fn stopped_vm_with_disk(
    s: &TestServer,
    admin: &str,
    name: &str,
    gb: u64,
) -> Result<(String, std::path::PathBuf), Box<dyn std::error::Error>> {
    let spec = json!({"name": name, "memory": 256, "cpus": 1, "disk_size": gb});
    let (_, body) = s.post("/api/vms", admin, spec).await;
    let id = body["vm"]["id"].as_str().ok_or("id")?.to_string();
    let disk = s.data_dir.path().join("vms").join(&id).join("disk0.qcow2");
    std::fs::create_dir_all(disk.parent().ok_or("dir")?)?;
    let mut create = Command::new("qemu-img");
    create.args(["create", "-q", "-f", "qcow2"]).arg(&disk).arg(format!("{gb}G"));
    assert!(create.status()?.success());
    Ok((id, disk))
}

/// Reads `len` bytes at 0 of an image and checks they all are `pattern`.
fn holds_pattern(image: &std::path::Path, pattern: u8, len: &str) -> Result<bool, std::io::Error> {
    let out = Command::new("qemu-io")
        .args(["-r", "-U", "-c", &format!("read -P {pattern:#x} 0 {len}")])
        .arg(image)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(out.status.success() && !text.contains("Pattern verification failed") && text.contains("read "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_progress_is_readable_and_attached_volumes_come_back() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let (id, disk) = stopped_vm_with_disk(&s, &admin, "with-vol", 2).await?;
    // Enough data that archiving takes a moment, so its progress can be watched.
    assert!(
        Command::new("qemu-io").args(["-c", "write -P 0x5a 0 384M"]).arg(&disk).output()?.status.success()
    );
    let (status, vol) = s.post("/api/volumes", &admin, json!({"name": "data", "size_gb": 1})).await;
    assert_eq!(status, StatusCode::OK, "{vol}");
    let vol_id = vol["volume"]["id"].as_str().ok_or("id")?.to_string();
    let vol_path = std::path::PathBuf::from(vol["volume"]["path"].as_str().ok_or("path")?);
    let (status, _) =
        s.call(Method::POST, &format!("/api/vms/{id}/volumes/{vol_id}"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        Command::new("qemu-io").args(["-c", "write -P 0x11 0 4M"]).arg(&vol_path).output()?.status.success()
    );

    // The backup runs while the test watches its job, over the API and pushed on /ws/metrics.
    let (mut pushed, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws/metrics?token={admin}", s.addr)).await?;
    let backup_path = format!("/api/vms/{id}/backup");
    let backup_call = s.call(Method::POST, &backup_path, Some(&admin), None);
    let watch = async {
        let mut seen_running = Vec::new();
        for _ in 0..3000 {
            let (_, jobs) = s.get("/api/jobs", &admin).await;
            let job = jobs.as_array().and_then(|l| l.iter().find(|j| j["vm_id"] == id.as_str())).cloned();
            if let Some(j) = job {
                if j["state"] == "running" {
                    seen_running.push(j);
                } else {
                    return (seen_running, Some(j));
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (seen_running, None)
    };
    let ((status, backup), (running, finished)) = tokio::join!(backup_call, watch);
    assert_eq!(status, StatusCode::OK, "{backup}");
    assert!(!running.is_empty(), "the job was never seen running");
    assert!(
        running.iter().any(|j| j["bytes_total"].as_u64().unwrap_or(0) > 384 << 20
            && j["progress"].as_f64().is_some_and(|p| (0.0..1.0).contains(&p))),
        "progress was readable while it ran: {running:?}"
    );
    let progresses: Vec<f64> = running.iter().filter_map(|j| j["progress"].as_f64()).collect();
    assert!(progresses.windows(2).all(|w| w[0] <= w[1]), "progress only grows: {progresses:?}");
    let finished = finished.ok_or("the job never finished")?;
    assert_eq!(finished["state"], "succeeded", "{finished}");
    assert_eq!(finished["kind"], "backup");
    assert_eq!(finished["progress"], 1.0);
    assert_eq!(finished["result_id"], backup["id"]);
    let (status, one) = s.get(&format!("/api/jobs/{}", finished["id"].as_str().ok_or("id")?), &admin).await;
    assert_eq!(status, StatusCode::OK, "{one}");
    let mut job_messages = Vec::new();
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(2), pushed.next()).await {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(&t)?;
            if v["type"] == "job" && v["job"]["id"] == finished["id"] {
                let done = v["job"]["state"] == "succeeded";
                job_messages.push(v);
                if done {
                    break;
                }
            }
        }
    }
    assert!(job_messages.len() >= 3, "progress pushed as it happened: {job_messages:?}");
    assert_eq!(job_messages.last().map(|m| m["job"]["state"].clone()), Some(json!("succeeded")));
    let backup_id = backup["id"].as_str().ok_or("id")?.to_string();

    // Onto the original VM: the attached volume's data comes back too.
    assert!(
        Command::new("qemu-io").args(["-c", "write -P 0x22 0 4M"]).arg(&vol_path).output()?.status.success()
    );
    let (status, body) =
        s.call(Method::POST, &format!("/api/backups/{backup_id}/restore"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(holds_pattern(&vol_path, 0x11, "4M")?, "the volume was restored in place");
    assert!(holds_pattern(&disk, 0x5a, "384M")?, "the disk was restored");

    // As a new VM: it gets a volume of its own holding the data; the original keeps its volume.
    let (status, restored) =
        s.post(&format!("/api/backups/{backup_id}/restore"), &admin, json!({"new_name": "copy"})).await;
    assert_eq!(status, StatusCode::OK, "{restored}");
    let new_id = restored["vm"]["id"].as_str().ok_or("id")?.to_string();
    let (_, volumes) = s.get("/api/volumes", &admin).await;
    let volumes = volumes.as_array().ok_or("list")?;
    assert_eq!(volumes.len(), 2, "{volumes:?}");
    let theirs =
        volumes.iter().find(|v| v["attached_to"] == new_id.as_str()).ok_or("no volume for the copy")?;
    assert_eq!(theirs["name"], "data");
    assert_ne!(theirs["id"], vol_id.as_str());
    assert!(holds_pattern(std::path::Path::new(theirs["path"].as_str().ok_or("path")?), 0x11, "4M")?);
    assert!(volumes.iter().any(|v| v["id"] == vol_id.as_str() && v["attached_to"] == id.as_str()));

    // A failed restore is a failed job, with the reason.
    let (_, list) = s.get("/api/backups", &admin).await;
    let entry =
        list.as_array().and_then(|l| l.iter().find(|b| b["id"] == backup_id.as_str())).ok_or("listed")?;
    let chunk = first_chunk(s.data_dir.path(), &manifest_of(s.data_dir.path(), entry)?, "volumes/")?;
    let bytes = std::fs::read(&chunk)?;
    std::fs::write(&chunk, &bytes[..bytes.len() / 2])?;
    let (status, _) =
        s.post(&format!("/api/backups/{backup_id}/restore"), &admin, json!({"new_name": "never"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, jobs) = s.get("/api/jobs", &admin).await;
    let failed =
        jobs.as_array().and_then(|l| l.iter().find(|j| j["kind"] == "restore")).ok_or("no restore job")?;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(failed["message"].as_str().is_some_and(|m| m.contains("damaged")), "{failed}");
    Ok(())
}

#[tokio::test]
async fn a_restart_sweeps_what_an_interrupted_backup_left_and_keeps_the_backups() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let (id, _) = stopped_vm_with_disk(&s, &admin, "interrupted", 1).await?;
    let (status, backup) = s.call(Method::POST, &format!("/api/vms/{id}/backup"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{backup}");
    let data = s.data_dir.path().to_path_buf();
    // What a controller killed mid-way leaves: a backup's work directory, a live copy in the VM's
    // directory, a restore's staging directory, an upload being received.
    let leftovers = [
        data.join("backups/.backup-AbC123"),
        data.join(format!("vms/{id}/.backup-DeF456")),
        data.join("vms/.restore-GhI789"),
    ];
    for dir in &leftovers {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("copy-0"), vec![0u8; 1 << 20])?;
    }
    let upload = data.join("backups/.upload-JkL012");
    std::fs::write(&upload, b"half an archive")?;

    let s = TestServer::start_in(s.stop().await, |_| {}).await;
    assert!(leftovers.iter().all(|d| !d.exists()) && !upload.exists(), "leftovers swept at startup");
    let (_, list) = s.get("/api/backups", &admin).await;
    let kept =
        list.as_array().and_then(|l| l.iter().find(|b| b["id"] == backup["id"])).ok_or("backup kept")?;
    assert!(manifest_of(&data, kept)?.is_file(), "{kept}");
    let (status, vm) = s.get(&format!("/api/vms/{id}"), &admin).await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    assert!(data.join(format!("vms/{id}/disk0.qcow2")).is_file());
    Ok(())
}
