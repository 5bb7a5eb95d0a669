//! A full data disk: requests that need space answer 507 with what to do, reads keep working,
//! nothing is left half-made, and the server carries on by itself once there is room again.

mod common;

use std::process::Command;

use common::{TestResult, TestServer};
use reqwest::StatusCode;
use serde_json::json;

/// A size-limited tmpfs on `dir` (root only), unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status();
        status.ok().filter(|s| s.success()).map(|_| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_data_disk_answers_507_and_recovers_by_itself() -> TestResult {
    let data = tempfile::tempdir()?;
    let Some(_tmpfs) = Tmpfs::mount(data.path(), "24m") else {
        assert!(std::env::var("CI").is_err(), "CI runs as root, where a tmpfs can be mounted");
        eprintln!("SKIPPED: cannot mount a tmpfs (not root)");
        return Ok(());
    };
    let s = TestServer::start_in(data, |_| {}).await;
    let admin = s.admin_token().await;
    let vm = |i: usize| json!({"name": format!("vm {i}"), "memory": 256, "cpus": 1, "disk_size": 1});
    let (status, body) = s.post("/api/vms", &admin, vm(0)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Fill the disk to the last byte.
    let filler = s.data_dir.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler)?;
        let block = vec![0u8; 1 << 16];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let mut refused = 0;
    for i in 1..200 {
        let (status, body) = s.post("/api/vms", &admin, vm(i)).await;
        match status {
            StatusCode::OK => continue,
            StatusCode::INSUFFICIENT_STORAGE => {
                assert!(body["detail"].as_str().is_some_and(|d| d.starts_with("No space left")), "{body}");
                refused += 1;
                break;
            }
            other => panic!("a full disk answered {other}: {body}"),
        }
    }
    assert_eq!(refused, 1, "the disk filled up and a create was refused with 507");
    let (status, listed) = s.get("/api/vms", &admin).await;
    assert_eq!(status, StatusCode::OK, "reads work on a full disk: {listed}");
    let before = listed.as_array().map(Vec::len).unwrap_or(0);

    std::fs::remove_file(&filler)?;
    let (status, body) = s.post("/api/vms", &admin, vm(999)).await;
    assert_eq!(status, StatusCode::OK, "room again: the server carries on by itself: {body}");
    let (_, listed) = s.get("/api/vms", &admin).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(before + 1), "the refused create left nothing behind");
    let (_, health) = s.get("/api/health", &admin).await;
    assert_eq!(health["checks"]["database"]["ok"], true, "{health}");
    Ok(())
}

/// Fills `dir`'s file system but for `leave` bytes; the filler is removed to give the room back.
fn fill(dir: &std::path::Path, leave: u64) -> std::io::Result<std::path::PathBuf> {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler)?;
    let block = vec![0u8; 1 << 16];
    while free_bytes(dir)? > leave + block.len() as u64 {
        f.write_all(&block)?;
    }
    f.sync_all()?;
    Ok(filler)
}

fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// Bytes the files under `dir` take on disk, the database's own files aside.
/// The space files take, but the database's and the source disk's (whose metadata may move).
fn used_outside_database(dir: &std::path::Path, disk: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let disk = disk.display().to_string();
    files_under(dir)
        .iter()
        .filter(|f| !f.contains("fastvm.db") && **f != disk)
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out.sort();
    out
}

/// Long work that writes a lot (a backup, a restore, the full copy of a VM with snapshots, an ISO
/// upload of unknown size) runs into a full disk: 507 with the reason, the source intact, the
/// partial file gone and its space given back; with room again, each succeeds.
#[tokio::test]
async fn long_work_that_fills_the_disk_is_refused_whole_and_gives_the_space_back() -> TestResult {
    let data = tempfile::tempdir()?;
    let Some(_tmpfs) = Tmpfs::mount(data.path(), "384m") else {
        assert!(std::env::var("CI").is_err(), "CI runs as root, where a tmpfs can be mounted");
        eprintln!("SKIPPED: cannot mount a tmpfs (not root)");
        return Ok(());
    };
    let s = TestServer::start_in(data, |_| {}).await;
    let admin = s.admin_token().await;
    let root = s.data_dir.path().to_path_buf();
    let (status, body) =
        s.post("/api/vms", &admin, json!({"name": "full", "memory": 256, "cpus": 1, "disk_size": 1})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let vm = body["vm"]["id"].as_str().ok_or("id")?.to_string();
    // 12 MiB of incompressible data on its disk, and a snapshot: a clone must copy it all.
    let disk = root.join("vms").join(&vm).join("disk0.qcow2");
    std::fs::create_dir_all(root.join("vms").join(&vm))?;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let random: Vec<u8> = (0..12u32 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    let raw = root.join("random.raw");
    std::fs::write(&raw, &random)?;
    for args in [vec!["convert", "-f", "raw", "-O", "qcow2"], vec!["resize", "-q"]] {
        let mut cmd = Command::new("qemu-img");
        cmd.args(&args);
        if args[0] == "convert" {
            cmd.arg(&raw).arg(&disk);
        } else {
            cmd.arg(&disk).arg("1G");
        }
        let out = cmd.output()?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let (status, body) = s.post(&format!("/api/vms/{vm}/snapshots"), &admin, json!({"name": "s1"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) =
        s.call(reqwest::Method::POST, &format!("/api/vms/{vm}/backup"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let backup = body["id"].as_str().ok_or("backup id")?.to_string();
    std::fs::remove_file(&raw)?;
    // New data since: a backup now has chunks to store (one of unchanged data stores none, and
    // succeeds on a full disk).
    let reversed: Vec<u8> = random.iter().rev().map(|b| b ^ 0xa5).collect();
    let changed = root.join("changed.raw");
    std::fs::write(&changed, &reversed)?;
    let write = format!("write -s {} 0 12M", changed.display());
    let out = Command::new("qemu-io").args(["-f", "qcow2", "-c", &write]).arg(&disk).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_file(&changed)?;
    // The disk as it is now, kept outside the small filesystem: a refused backup may leave its
    // metadata rewritten (the QEMU that reads a stopped disk's dirty bitmap opens it writable),
    // never what the guest sees.
    let kept = tempfile::tempdir()?;
    let disk_before = kept.path().join("disk0.qcow2");
    std::fs::copy(&disk, &disk_before)?;

    let filler = fill(&root, 4 << 20)?;
    let files = files_under(&root);
    let used = used_outside_database(&root, &disk);
    let iso_stream = || {
        let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(vec![0x5au8; 1 << 20]));
        let part =
            reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(futures::stream::iter(chunks)));
        reqwest::multipart::Form::new().part("file", part.file_name("big.iso"))
    };
    let attempts: Vec<(&str, StatusCode, serde_json::Value)> = vec![
        {
            let (status, body) =
                s.call(reqwest::Method::POST, &format!("/api/vms/{vm}/backup"), Some(&admin), None).await;
            ("backup", status, body)
        },
        {
            let (status, body) = s
                .post(&format!("/api/backups/{backup}/restore"), &admin, json!({"new_name": "restored"}))
                .await;
            ("restore", status, body)
        },
        {
            let (status, body) =
                s.post(&format!("/api/vms/{vm}/clone"), &admin, json!({"name": "copy"})).await;
            ("clone", status, body)
        },
        {
            let r =
                s.client.post(s.url("/api/isos")).bearer_auth(&admin).multipart(iso_stream()).send().await?;
            let status = r.status();
            ("iso upload", status, r.json().await.unwrap_or_default())
        },
    ];
    for (what, status, body) in &attempts {
        assert_eq!(*status, StatusCode::INSUFFICIENT_STORAGE, "{what} on a full disk: {body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.starts_with("No space left"), "{what}: {body}");
    }
    assert_eq!(files_under(&root), files, "a refused operation left a file behind");
    // The database grows by its audit and job rows; every other byte is as it was.
    assert_eq!(used_outside_database(&root, &disk), used, "the partial files' space was given back");
    let same = Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "qcow2"])
        .arg(&disk_before)
        .arg(&disk)
        .output()?;
    assert!(same.status.success(), "the source disk is intact: {}", String::from_utf8_lossy(&same.stdout));
    let (_, vms) = s.get("/api/vms", &admin).await;
    assert_eq!(vms.as_array().map(Vec::len), Some(1), "no half-made VM: {vms}");
    let (_, backups) = s.get("/api/backups", &admin).await;
    assert_eq!(backups.as_array().map(Vec::len), Some(1), "no half-made backup: {backups}");
    let (_, jobs) = s.get("/api/jobs", &admin).await;
    let failed = jobs.as_array().map(|j| j.iter().filter(|j| j["state"] == "failed").count());
    assert!(failed >= Some(3), "the refused jobs show as failed: {jobs}");

    std::fs::remove_file(&filler)?;
    let (status, body) =
        s.call(reqwest::Method::POST, &format!("/api/vms/{vm}/backup"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "backup with room: {body}");
    let (status, body) =
        s.post(&format!("/api/backups/{backup}/restore"), &admin, json!({"new_name": "restored"})).await;
    assert_eq!(status, StatusCode::OK, "restore with room: {body}");
    let (status, body) = s.post(&format!("/api/vms/{vm}/clone"), &admin, json!({"name": "copy"})).await;
    assert_eq!(status, StatusCode::OK, "clone with room: {body}");
    Ok(())
}
