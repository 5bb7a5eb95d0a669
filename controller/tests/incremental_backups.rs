//! Incremental, deduplicated backups on a real running guest (issue 18's acceptance): a full
//! backup, one with nothing changed, one after the guest wrote 10 MiB; each restores to a VM that
//! boots with exactly its disk; deleting one and collecting garbage spares the others; a damaged
//! chunk marks only the backups that name it; a stopped VM's backup reads through its bitmap too.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::guest::{BOOT_TIMEOUT, guest_iso, type_on_serial, wait_serial_async};
use common::{TestResult, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;
const DISK: u64 = 1 << 30;

fn run(program: &str, args: &[&str]) -> TestResult {
    let out = Command::new(program).args(args).output()?;
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// The disk as the guest sees it now (read beside the running QEMU), as a sparse raw file.
fn snapshot_of(disk: &Path, out: &Path) -> TestResult {
    run(
        "qemu-img",
        &[
            "convert",
            "-U",
            "-f",
            "qcow2",
            "-O",
            "raw",
            &disk.display().to_string(),
            &out.display().to_string(),
        ],
    )
}

/// Whether the image `disk` (qcow2) holds exactly what `reference` (raw) does.
fn same_disk(reference: &Path, disk: &Path) -> Result<bool, Box<dyn std::error::Error>> {
    let out = Command::new("qemu-img")
        .args(["compare", "-U", "-f", "raw", "-F", "qcow2"])
        .arg(reference)
        .arg(disk)
        .output()?;
    Ok(out.status.success())
}

async fn backup(
    s: &TestServer,
    token: &str,
    vm: &str,
) -> Result<(Value, Duration), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let (status, body) = s.call(Method::POST, &format!("/api/vms/{vm}/backup"), Some(token), None).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    Ok((body, took))
}

/// Restores `backup` as a new VM: its disk matches `reference`, and it boots.
async fn restores_exactly(
    s: &TestServer,
    token: &str,
    backup: &str,
    reference: &Path,
) -> Result<String, Box<dyn std::error::Error>> {
    let (status, restored) = s
        .post(&format!("/api/backups/{backup}/restore"), token, json!({"new_name": format!("from-{backup}")}))
        .await;
    assert_eq!(status, StatusCode::OK, "{restored}");
    let id = restored["vm"]["id"].as_str().ok_or("id")?.to_string();
    let disk = s.data_dir.path().join("vms").join(&id).join("disk0.qcow2");
    assert!(same_disk(reference, &disk)?, "the disk restored from {backup} is not the one backed up");
    let (status, body) = s.call(Method::POST, &format!("/api/vms/{id}/start"), Some(token), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_serial_async(&s.data_dir.path().join("run").join(&id), "FASTVM-GUEST-READY", 1, BOOT_TIMEOUT).await;
    let (status, _) =
        s.call(Method::POST, &format!("/api/vms/{id}/stop?force=true"), Some(token), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s.call(Method::DELETE, &format!("/api/vms/{id}"), Some(token), None).await;
    assert_eq!(status, StatusCode::OK);
    Ok(id)
}

fn chunk_path(data: &Path, id: &str) -> PathBuf {
    data.join("backups/chunks").join(&id[..2]).join(id)
}

fn manifest(data: &Path, backup: &Value) -> Result<Value, Box<dyn std::error::Error>> {
    let name = backup["backup_name"].as_str().ok_or("backup_name")?;
    let stem = name.strip_suffix(".tar.zst").ok_or("name")?;
    Ok(serde_json::from_slice(&std::fs::read(data.join("backups").join(format!("{stem}.manifest.json")))?)?)
}

fn disk_chunks(m: &Value) -> Vec<String> {
    m["disks"][0]["chunks"]
        .as_array()
        .map(|l| l.iter().filter_map(|c| c.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// The backups' bitmaps in a stopped VM's disk.
fn bitmaps_in(disk: &Path) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let out = Command::new("qemu-img").args(["info", "-U", "--output=json"]).arg(disk).output()?;
    let info: Value = serde_json::from_slice(&out.stdout)?;
    Ok(info["format-specific"]["data"]["bitmaps"]
        .as_array()
        .map(|l| l.iter().filter_map(|b| b["name"].as_str().map(str::to_string)).collect())
        .unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_guest_backs_up_only_what_changed_and_every_backup_restores_exactly() -> TestResult {
    let Some(iso) = guest_iso() else { return Ok(()) };
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let data = s.data_dir.path().to_path_buf();
    let (status, body) = s
        .post(
            "/api/vms",
            &admin,
            json!({"name": "incremental", "memory": 256, "cpus": 1, "disk_size": 1, "firmware": "bios",
                   "iso_path": iso, "boot_order": ["cdrom", "disk"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let vm = body["vm"]["id"].as_str().ok_or("id")?.to_string();
    // 256 MiB of incompressible data on the disk before the guest boots: a full backup has real
    // work to do.
    let disk = data.join("vms").join(&vm).join("disk0.qcow2");
    std::fs::create_dir_all(disk.parent().ok_or("vm dir")?)?;
    let noise = data.join("noise.bin");
    std::fs::write(
        &noise,
        (0..256 * MIB)
            .map(|i| (i.wrapping_mul(0x9e37_79b9) >> 13) as u8 ^ (i >> 20) as u8)
            .collect::<Vec<u8>>(),
    )?;
    run("qemu-img", &["create", "-q", "-f", "qcow2", &disk.display().to_string(), "1G"])?;
    run(
        "qemu-io",
        &["-f", "qcow2", "-c", &format!("write -s {} 0 256M", noise.display()), &disk.display().to_string()],
    )?;
    std::fs::remove_file(&noise)?;
    let (status, body) = s.call(Method::POST, &format!("/api/vms/{vm}/start"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let run_dir = data.join("run").join(&vm);
    wait_serial_async(&run_dir, "FASTVM-GUEST-READY", 1, BOOT_TIMEOUT).await;
    let refs = tempfile::tempdir_in(&data)?;

    // 1: full.
    let (first, first_took) = backup(&s, &admin, &vm).await?;
    assert_eq!(first["incremental"], false, "{first}");
    assert!(first["bytes_read"].as_u64() >= Some(256 * MIB), "{first}");
    snapshot_of(&disk, &refs.path().join("1.raw"))?;
    // 2: nothing changed.
    let (second, second_took) = backup(&s, &admin, &vm).await?;
    eprintln!("full backup {first_took:?}, nothing changed {second_took:?}");
    assert_eq!(second["incremental"], true, "{second}");
    assert!(second["bytes_read"].as_u64() <= Some(DISK / 50), "reads at most 2% of the disk: {second}");
    assert!(
        second_took.as_secs_f64() <= first_took.as_secs_f64() / 10.0,
        "takes at most a tenth of the full one's time: {second_took:?} against {first_took:?}"
    );
    assert_eq!(second["bytes_written"], 0, "{second}");
    snapshot_of(&disk, &refs.path().join("2.raw"))?;
    // 3: the guest writes 10 MiB.
    let write =
        "dd if=/dev/urandom of=/dev/vda bs=1M count=10 seek=600 conv=fsync 2>/dev/null && echo WROTE-10-MIB";
    type_on_serial(&run_dir, write)?;
    wait_serial_async(&run_dir, "\nWROTE-10-MIB", 1, Duration::from_secs(120)).await;
    let (third, _) = backup(&s, &admin, &vm).await?;
    assert_eq!(third["incremental"], true, "{third}");
    let written = third["bytes_written"].as_u64().ok_or("bytes_written")?;
    // 10 MiB at 600 MiB: three 4 MiB chunks, incompressible.
    assert!((10 * MIB..=13 * MIB).contains(&written), "about 10 MiB of new chunks: {third}");
    assert!(third["bytes_read"].as_u64() <= Some(12 * MIB), "{third}");
    snapshot_of(&disk, &refs.path().join("3.raw"))?;
    let ids: Vec<String> =
        [&first, &second, &third].iter().map(|b| b["id"].as_str().unwrap_or_default().to_string()).collect();
    let (_, list) = s.get("/api/backups", &admin).await;
    let listed = |id: &str| {
        list.as_array().and_then(|l| l.iter().find(|b| b["id"] == id)).cloned().unwrap_or_default()
    };
    let m2 = manifest(&data, &listed(&ids[1]))?;
    let m3 = manifest(&data, &listed(&ids[2]))?;
    let new_in_third: Vec<String> =
        disk_chunks(&m3).into_iter().filter(|c| !disk_chunks(&m2).contains(c)).collect();
    assert_eq!(new_in_third.len(), 3, "{new_in_third:?}");

    // Each restores exactly and boots; the first one's, then without it.
    restores_exactly(&s, &admin, &ids[0], &refs.path().join("1.raw")).await?;
    let (status, _) = s.call(Method::DELETE, &format!("/api/backups/{}", ids[0]), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, gc) = s.call(Method::POST, "/api/backups/gc", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{gc}");
    for id in disk_chunks(&m2).iter().chain(&new_in_third) {
        assert!(chunk_path(&data, id).is_file(), "a chunk the others name was collected");
    }
    restores_exactly(&s, &admin, &ids[1], &refs.path().join("2.raw")).await?;
    restores_exactly(&s, &admin, &ids[2], &refs.path().join("3.raw")).await?;

    // A damaged chunk that only the third names: verification marks the third, not the second.
    let victim = chunk_path(&data, &new_in_third[0]);
    let good = std::fs::read(&victim)?;
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0x5a;
    std::fs::write(&victim, &bad)?;
    let (status, found) = s.call(Method::POST, "/api/backups/verify", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["ok"], false, "{found}");
    assert_eq!(found["damaged_backups"], json!([ids[2]]), "{found}");
    assert_eq!(found["damaged_chunks"], json!([new_in_third[0]]), "{found}");
    let (_, list) = s.get("/api/backups", &admin).await;
    let damaged = |id: &str| {
        list.as_array().and_then(|l| l.iter().find(|b| b["id"] == id)).map(|b| b["damaged"].clone())
    };
    assert_eq!(damaged(&ids[1]), Some(json!(false)), "{list}");
    assert_eq!(damaged(&ids[2]), Some(json!(true)), "{list}");
    std::fs::write(&victim, &good)?;

    // The VM stopped: its next backup reads through the bitmap too (nothing changed since), and
    // leaves exactly one bitmap, its own.
    let (status, _) =
        s.call(Method::POST, &format!("/api/vms/{vm}/stop?force=true"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let (fourth, _) = backup(&s, &admin, &vm).await?;
    assert_eq!(fourth["incremental"], true, "{fourth}");
    assert_eq!(fourth["bytes_read"], 0, "{fourth}");
    let fourth_id = fourth["id"].as_str().ok_or("id")?;
    assert_eq!(bitmaps_in(&disk)?, vec![format!("fastvm-backup-{fourth_id}")]);
    let m4 = manifest(&data, &fourth)?;
    assert_eq!(disk_chunks(&m4), disk_chunks(&m3), "the same disk, the same chunks");

    // A snapshot restored goes back in time behind the bitmap's back: the restore drops it (QEMU
    // refuses to revert a disk with bitmaps), and the next backup reads everything, saying why.
    let (status, snap) = s.post(&format!("/api/vms/{vm}/snapshots"), &admin, json!({"name": "before"})).await;
    assert_eq!(status, StatusCode::OK, "{snap}");
    let snap = snap["snapshot"]["id"].as_str().ok_or("snapshot id")?.to_string();
    let (status, body) = s.post(&format!("/api/vms/{vm}/snapshots/{snap}/restore"), &admin, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(bitmaps_in(&disk)?, Vec::<String>::new());
    let (fifth, _) = backup(&s, &admin, &vm).await?;
    assert_eq!(fifth["incremental"], false, "{fifth}");
    assert!(fifth["full_reason"].as_str().is_some_and(|r| r.contains("gone")), "{fifth}");
    Ok(())
}
