//! Attacks a regular user could try, each shown refused, and the legitimate path beside it still
//! working. No guest is booted: qemu-img and xorriso are enough.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{TestResult, TestServer};
use controller::backups::archive::{self, Manifest};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn qemu_img(args: &[&str]) -> TestResult {
    let out = Command::new("qemu-img").args(args).output()?;
    assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// A backup archive as our own writer makes it, holding `disk` as disk0.qcow2 and the VM `spec`.
fn archive_of(dir: &Path, disk: &Path, spec: Value) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let manifest = Manifest {
        format: archive::FORMAT.into(),
        vm_id: "0123456789ab".into(),
        vm_name: "evil".into(),
        spec: serde_json::from_value(spec)?,
        created_at: 0,
        members: Vec::new(),
        volumes: Vec::new(),
    };
    let out = dir.join("upload.tar.zst");
    archive::write(&out, &[("disk0.qcow2".into(), disk.to_path_buf())], manifest, &|_, _| {})?;
    Ok(std::fs::read(out)?)
}

async fn upload_restore(
    s: &TestServer,
    token: &str,
    data: Vec<u8>,
    new_name: Option<String>,
) -> (StatusCode, Value) {
    let mut form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(data).file_name("backup.tar.zst"));
    if let Some(n) = new_name {
        form = form.text("new_name", n);
    }
    let r = s.client.post(s.url("/api/vms/restore")).bearer_auth(token).multipart(form).send().await;
    let r = r.expect("restore upload");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn detail(body: &Value) -> &str {
    body["detail"].as_str().unwrap_or_default()
}

const SPEC: &str = r#"{"name": "evil", "memory": 256, "cpus": 1, "disk_size": 1}"#;

#[tokio::test]
async fn a_restored_disk_naming_a_host_file_is_refused() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let bob = s.regular_user(&admin, "bob").await;
    let work = tempfile::tempdir()?;
    let secret = s.data_dir.path().join("jwt_secret");
    assert!(secret.is_file(), "the file the attack is after");

    // Exactly the finding: a qcow2 whose header names the token secret as its raw backing file.
    let backed = work.path().join("backed.qcow2");
    let backed_str = backed.display().to_string();
    let secret_str = secret.display().to_string();
    qemu_img(&["create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", &secret_str, &backed_str, "1G"])?;
    let (status, body) =
        upload_restore(&s, &bob, archive_of(work.path(), &backed, serde_json::from_str(SPEC)?)?, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(detail(&body).contains("backing file") && detail(&body).contains("disk0.qcow2"), "{body}");

    // The same with an external data file.
    let data_file = work.path().join("data.qcow2");
    let opt = format!("data_file={secret_str}");
    // qemu-img would write to the data file it is given: hand it a copy, then point at the secret.
    let copy = work.path().join("copy-of-secret").display().to_string();
    std::fs::copy(&secret, &copy)?;
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={copy}"),
        &data_file.display().to_string(),
        "1M",
    ])?;
    qemu_img(&["amend", "-q", "-f", "qcow2", "-o", &opt, &data_file.display().to_string()])?;
    let (status, body) =
        upload_restore(&s, &bob, archive_of(work.path(), &data_file, serde_json::from_str(SPEC)?)?, None)
            .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(detail(&body).contains("external data file"), "{body}");
    // A disk larger than its VM says, and a "qcow2" that is not one.
    let big = work.path().join("big.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &big.display().to_string(), "2G"])?;
    let (status, body) =
        upload_restore(&s, &bob, archive_of(work.path(), &big, serde_json::from_str(SPEC)?)?, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(detail(&body).contains("virtual size"), "{body}");
    let raw = work.path().join("raw.img");
    std::fs::write(&raw, vec![0u8; 65536])?;
    let (status, body) =
        upload_restore(&s, &bob, archive_of(work.path(), &raw, serde_json::from_str(SPEC)?)?, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(detail(&body).contains("not a valid qcow2"), "{body}");

    // Nothing was made of any of them: no VM, no backup kept, no files left in vms/.
    assert_eq!(s.get("/api/vms", &bob).await.1, json!([]));
    assert_eq!(s.get("/api/backups", &bob).await.1, json!([]));
    let vms_dir = s.data_dir.path().join("vms");
    assert_eq!(std::fs::read_dir(&vms_dir)?.count(), 0, "leftovers in vms/");

    // The legitimate path: a plain disk restores, for a regular user too.
    let plain = work.path().join("plain.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &plain.display().to_string(), "1G"])?;
    let (status, body) = upload_restore(
        &s,
        &bob,
        archive_of(work.path(), &plain, serde_json::from_str(SPEC)?)?,
        Some("fine".into()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["vm"]["owner"], "bob");
    Ok(())
}

#[tokio::test]
async fn a_disk_stacked_on_a_host_file_is_not_started() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let (_, vm) = s.post("/api/vms", &admin, serde_json::from_str(SPEC)?).await;
    let id = vm["vm"]["id"].as_str().ok_or("id")?.to_string();
    // However it got there, a disk that names a file outside the base images never reaches QEMU.
    let dir = s.data_dir.path().join("vms").join(&id);
    std::fs::create_dir_all(&dir)?;
    let disk = dir.join("disk0.qcow2").display().to_string();
    qemu_img(&["create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", "/etc/hostname", &disk, "1G"])?;
    let (status, body) = s.call(Method::POST, &format!("/api/vms/{id}/start"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(detail(&body).contains("not one of Fast VM's base images"), "{body}");
    assert_eq!(s.get(&format!("/api/vms/{id}"), &admin).await.1["status"], "stopped");
    Ok(())
}

async fn upload_iso(s: &TestServer, token: &str, name: &'static str, bytes: Vec<u8>) -> (StatusCode, Value) {
    let part = reqwest::multipart::Part::bytes(bytes).file_name(name);
    let form = reqwest::multipart::Form::new().part("file", part);
    let r = s.client.post(s.url("/api/isos")).bearer_auth(token).multipart(form).send().await;
    let r = r.expect("iso upload");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_iso_library_takes_only_real_images_and_only_from_admins() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let bob = s.regular_user(&admin, "bob").await;
    let work = tempfile::tempdir()?;
    let fake = work.path().join("fake.iso");
    let fake_str = fake.display().to_string();
    qemu_img(&["create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", "/etc/shadow", &fake_str, "1G"])?;

    let (status, body) = upload_iso(&s, &admin, "tools.iso", std::fs::read(&fake)?).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(detail(&body).contains("qcow2 image"), "{body}");
    let images = s.data_dir.path().join("images");
    assert_eq!(std::fs::read_dir(&images)?.count(), 0, "nothing kept");

    // Regular users use the library read-only: no uploads (no squatting a name everyone trusts).
    let (status, body) = upload_iso(&s, &bob, "spice-guest-tools-latest.iso", vec![0u8; 4096]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(s.get("/api/spice-tools", &bob).await.1["available"], false);
    // An admin's real upload works and everyone can read it.
    let (status, body) = upload_iso(&s, &admin, "spice-guest-tools-latest.iso", vec![0u8; 4096]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(s.get("/api/spice-tools", &bob).await.1["available"], true);
    let (status, _) =
        s.call(Method::DELETE, "/api/isos/spice-guest-tools-latest.iso", Some(&bob), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    Ok(())
}

#[tokio::test]
async fn iso_paths_tell_nothing_about_host_files() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let mut answers = Vec::new();
    for path in ["/etc/passwd", "/no/such/file.iso", "/etc"] {
        let mut spec: Value = serde_json::from_str(SPEC)?;
        spec["iso_path"] = json!(path);
        let (status, body) = s.post("/api/vms", &admin, spec).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        answers.push(detail(&body).replace(path, "PATH"));
    }
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    Ok(())
}

#[tokio::test]
async fn create_time_rules_hold_on_restore_clone_and_port_forwards() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let bob = s.regular_user(&admin, "bob").await;
    let bridged = json!({"name": "bridged", "memory": 256, "cpus": 1, "disk_size": 1,
        "networks": [{"type": "bridge", "bridge_name": "br0"}, {"type": "macvtap", "parent_interface": "lo"}]});

    // Restore: a create of this spec is refused to bob, so is a restore of an archive holding it.
    assert_eq!(s.post("/api/vms", &bob, bridged.clone()).await.0, StatusCode::FORBIDDEN);
    let work = tempfile::tempdir()?;
    let plain = work.path().join("plain.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &plain.display().to_string(), "1G"])?;
    let (status, body) =
        upload_restore(&s, &bob, archive_of(work.path(), &plain, bridged.clone())?, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(detail(&body).contains("host networks"), "{body}");
    assert_eq!(s.get("/api/vms", &bob).await.1, json!([]));
    assert_eq!(s.get("/api/backups", &bob).await.1, json!([]), "a refused upload is not kept");
    // An admin may (the legitimate path).
    let (status, body) =
        upload_restore(&s, &admin, archive_of(work.path(), &plain, bridged.clone())?, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Clone: an admin hands bob a bridged VM; bob may keep using it, not multiply it.
    let (status, vm) = s.post("/api/vms", &admin, bridged).await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    let id = vm["vm"]["id"].as_str().ok_or("id")?.to_string();
    let path = format!("/api/vms/{id}");
    assert_eq!(
        s.call(Method::PUT, &path, Some(&admin), Some(json!({"owner": "bob"}))).await.0,
        StatusCode::OK
    );
    let (status, body) = s.call(Method::PUT, &path, Some(&bob), Some(json!({"memory": 512}))).await;
    assert_eq!(status, StatusCode::OK, "editing what an admin set up: {body}");
    let (status, body) = s.post(&format!("{path}/clone"), &bob, json!({"name": "copy"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(s.post(&format!("{path}/clone"), &admin, json!({"name": "copy"})).await.0, StatusCode::OK);

    // Port forwards: privileged host ports are for admins.
    let forward = |port: u16| {
        json!({"name": format!("fw{port}"), "memory": 256, "cpus": 1, "disk_size": 1,
               "networks": [{"type": "nat", "port_forwards": [{"host_port": port, "guest_port": 80}]}]})
    };
    let (status, body) = s.post("/api/vms", &bob, forward(80)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(detail(&body).contains("host port 80"), "{body}");
    assert_eq!(s.post("/api/vms", &bob, forward(18080)).await.0, StatusCode::OK);
    assert_eq!(s.post("/api/vms", &admin, forward(81)).await.0, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn a_huge_form_field_is_refused_without_being_held() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let work = tempfile::tempdir()?;
    let plain = work.path().join("plain.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &plain.display().to_string(), "1G"])?;
    let data = archive_of(work.path(), &plain, serde_json::from_str(SPEC)?)?;
    let (status, body) = upload_restore(&s, &admin, data.clone(), Some("x".repeat(64 << 10))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(detail(&body).starts_with("new_name"), "{body}");
    let (status, body) = upload_restore(&s, &admin, data, Some("right size".into())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    Ok(())
}

#[tokio::test]
async fn cloud_init_seeds_are_their_owners_only() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let (alice, bob) = (s.regular_user(&admin, "alice").await, s.regular_user(&admin, "bob").await);
    let (status, seed) = s
        .post("/api/cloudinit", &alice, json!({"hostname": "spice-guest-tools", "password": "alice-secret"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{seed}");
    let path = seed["iso_path"].as_str().ok_or("iso_path")?.to_string();

    let listed = |v: &Value| v.as_array().is_some_and(|l| l.iter().any(|i| i["path"] == path.as_str()));
    assert!(listed(&s.get("/api/isos", &alice).await.1));
    assert!(listed(&s.get("/api/isos", &admin).await.1));
    assert!(!listed(&s.get("/api/isos", &bob).await.1), "bob sees alice's seed");
    assert_eq!(s.get("/api/spice-tools", &bob).await.1["available"], false, "a seed offered as tools");

    let spec = |name: &str| json!({"name": name, "memory": 256, "cpus": 1, "disk_size": 1, "secondary_iso_path": path});
    let (status, body) = s.post("/api/vms", &bob, spec("steal")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let mut missing = spec("x");
    missing["secondary_iso_path"] = json!("/no/such/seed.iso");
    let (_, nothing) = s.post("/api/vms", &bob, missing).await;
    assert_eq!(
        detail(&body).replace(path.as_str(), "P"),
        detail(&nothing).replace("/no/such/seed.iso", "P"),
        "someone else's seed looks like no file at all"
    );
    // Nor by editing a VM of his own to point at it.
    let (_, mine) =
        s.post("/api/vms", &bob, json!({"name": "mine", "memory": 256, "cpus": 1, "disk_size": 1})).await;
    let mine = mine["vm"]["id"].as_str().ok_or("id")?.to_string();
    let (status, _) = s
        .call(Method::PUT, &format!("/api/vms/{mine}"), Some(&bob), Some(json!({"secondary_iso_path": path})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(s.post("/api/vms", &alice, spec("hers")).await.0, StatusCode::OK, "the owner may");
    Ok(())
}

async fn scheduled_backups_of(s: &TestServer, token: &str, vm: &str) -> usize {
    let (_, list) = s.get("/api/backups", token).await;
    list.as_array()
        .map(|l| l.iter().filter(|b| b["vm_id"] == vm && b["scheduled"] == true).count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_follow_the_vms_owner() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let (alice, bob) = (s.regular_user(&admin, "alice").await, s.regular_user(&admin, "bob").await);
    let (_, vm) = s.post("/api/vms", &alice, serde_json::from_str(SPEC)?).await;
    let id = vm["vm"]["id"].as_str().ok_or("id")?.to_string();
    let schedule = format!("/api/vms/{id}/backup-schedule");
    for bad in [json!({"interval": 3600, "keep": 101})] {
        assert_eq!(s.post(&schedule, &alice, bad).await.0, StatusCode::BAD_REQUEST);
    }
    assert_eq!(s.post(&schedule, &alice, json!({"interval": 1, "keep": 100})).await.0, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(60);
    while scheduled_backups_of(&s, &alice, &id).await < 1 {
        assert!(Instant::now() < deadline, "no scheduled backup for alice");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (status, _) =
        s.call(Method::PUT, &format!("/api/vms/{id}"), Some(&admin), Some(json!({"owner": "bob"}))).await;
    assert_eq!(status, StatusCode::OK);
    let before = scheduled_backups_of(&s, &bob, &id).await;
    assert!(before >= 1, "the VM's scheduled backups went with it");
    while scheduled_backups_of(&s, &bob, &id).await <= before {
        assert!(Instant::now() < deadline, "no new scheduled backup for bob");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(scheduled_backups_of(&s, &alice, &id).await, 0, "alice keeps receiving the VM's backups");
    Ok(())
}

#[tokio::test]
async fn backup_schedules_have_a_floor() -> TestResult {
    let s = TestServer::start_with(|c| c.backup_min_interval = 300).await;
    let admin = s.admin_token().await;
    let (_, vm) = s.post("/api/vms", &admin, serde_json::from_str(SPEC)?).await;
    let path = format!("/api/vms/{}/backup-schedule", vm["vm"]["id"].as_str().ok_or("id")?);
    for (bad, field) in [
        (json!({"interval": 1, "keep": 1}), "interval"),
        (json!({"cron": "* * * * *", "keep": 1}), "cron"),
        (json!({"interval": 300, "keep": 1000}), "keep"),
    ] {
        let (status, body) = s.post(&path, &admin, bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(detail(&body).starts_with(field), "{body}");
    }
    assert_eq!(s.post(&path, &admin, json!({"cron": "*/5 * * * *", "keep": 100})).await.0, StatusCode::OK);
    Ok(())
}

/// Something of each kind a user can own: a VM, a volume, a backup and a cloud-init seed.
async fn give_things_to(s: &TestServer, token: &str) -> Result<(String, String), Box<dyn std::error::Error>> {
    let (status, vm) = s.post("/api/vms", token, serde_json::from_str(SPEC)?).await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    let id = vm["vm"]["id"].as_str().ok_or("id")?.to_string();
    let (status, vol) = s.post("/api/volumes", token, json!({"name": "data", "size_gb": 1})).await;
    assert_eq!(status, StatusCode::OK, "{vol}");
    let (status, backup) = s.call(Method::POST, &format!("/api/vms/{id}/backup"), Some(token), None).await;
    assert_eq!(status, StatusCode::OK, "{backup}");
    let (status, seed) = s.post("/api/cloudinit", token, json!({"hostname": "mine"})).await;
    assert_eq!(status, StatusCode::OK, "{seed}");
    Ok((id, seed["iso_path"].as_str().ok_or("seed")?.to_string()))
}

async fn owned_counts(s: &TestServer, token: &str) -> [usize; 3] {
    let mut out = [0; 3];
    for (i, path) in ["/api/vms", "/api/volumes", "/api/backups"].into_iter().enumerate() {
        out[i] = s.get(path, token).await.1.as_array().map(Vec::len).unwrap_or(usize::MAX);
    }
    out
}

#[tokio::test]
async fn a_deleted_users_things_go_with_them_and_no_namesake_inherits_them() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let alice = s.regular_user(&admin, "alice").await;
    let (_, seed) = give_things_to(&s, &alice).await?;

    // By default nothing is lost by mistake: the delete is refused, naming what she owns.
    let (status, body) = s.call(Method::DELETE, "/api/auth/users/alice", Some(&admin), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(detail(&body).contains("1 backup(s)") && detail(&body).contains("1 cloud-init"), "{body}");

    // Handed over: the admin owns it all, and a new "alice" starts with nothing.
    let (status, body) =
        s.call(Method::DELETE, "/api/auth/users/alice?owned=hand_over", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let alice = s.regular_user(&admin, "alice").await;
    assert_eq!(owned_counts(&s, &alice).await, [0, 0, 0]);
    let isos = s.get("/api/isos", &alice).await.1;
    assert!(!isos.to_string().contains(&seed), "the new alice sees the old one's seed");
    let (_, vms) = s.get("/api/vms", &admin).await;
    assert!(vms.as_array().is_some_and(|l| l.len() == 1 && l[0]["owner"] == "admin"), "{vms}");

    // Deleted with the user: the new alice's things are gone, files too.
    let (_, seed) = give_things_to(&s, &alice).await?;
    let (_, vols) = s.get("/api/volumes", &alice).await;
    let vol_path = vols[0]["path"].as_str().ok_or("path")?.to_string();
    let (status, body) =
        s.call(Method::DELETE, "/api/auth/users/alice?owned=delete", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!Path::new(&seed).exists() && !Path::new(&vol_path).exists(), "files left behind");
    let alice = s.regular_user(&admin, "alice").await;
    assert_eq!(owned_counts(&s, &alice).await, [0, 0, 0]);
    assert_eq!(owned_counts(&s, &admin).await, [1, 1, 1], "only what was handed over before");
    Ok(())
}

#[tokio::test]
async fn quotas_stop_growth_everywhere_it_can_happen() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let bob = s.regular_user(&admin, "bob").await;
    let limits =
        json!({"max_vms": 1, "max_vcpus": 2, "max_memory_mib": 512, "max_disk_gb": 5, "max_backups": 1});
    let (status, q) =
        s.call(Method::PUT, "/api/auth/users/bob/quota", Some(&admin), Some(limits.clone())).await;
    assert_eq!(status, StatusCode::OK, "{q}");
    assert_eq!(
        s.call(Method::PUT, "/api/auth/users/bob/quota", Some(&bob), Some(limits)).await.0,
        StatusCode::FORBIDDEN
    );
    let bad = json!({"max_vms": -1});
    assert_eq!(
        s.call(Method::PUT, "/api/auth/users/bob/quota", Some(&admin), Some(bad)).await.0,
        StatusCode::BAD_REQUEST
    );

    let vm = |name: &str, cpus: u32, memory: u32, disk: u32| json!({"name": name, "memory": memory, "cpus": cpus, "disk_size": disk});
    assert_eq!(s.post("/api/vms", &bob, vm("too big", 1, 1024, 1)).await.0, StatusCode::FORBIDDEN);
    let (status, first) = s.post("/api/vms", &bob, vm("first", 1, 256, 2)).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let id = first["vm"]["id"].as_str().ok_or("id")?.to_string();
    let (status, body) = s.post("/api/vms", &bob, vm("second", 1, 256, 1)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(detail(&body).starts_with("quota") && detail(&body).contains("VMs"), "{body}");
    let path = format!("/api/vms/{id}");
    let (status, body) = s.call(Method::PUT, &path, Some(&bob), Some(json!({"memory": 1024}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(s.call(Method::PUT, &path, Some(&bob), Some(json!({"cpus": 2}))).await.0, StatusCode::OK);
    assert_eq!(
        s.post(&format!("{path}/clone"), &bob, json!({"name": "copy"})).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, body) = s.post("/api/volumes", &bob, json!({"name": "big", "size_gb": 4})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(s.post("/api/volumes", &bob, json!({"name": "fits", "size_gb": 3})).await.0, StatusCode::OK);
    assert!(
        std::fs::read_dir(s.data_dir.path().join("volumes"))?.count() == 1,
        "a refused volume's file stays"
    );

    let backup = format!("{path}/backup");
    assert_eq!(s.call(Method::POST, &backup, Some(&bob), None).await.0, StatusCode::OK);
    let (status, body) = s.call(Method::POST, &backup, Some(&bob), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(detail(&body).contains("backups"), "{body}");
    let (status, body) =
        s.post(&format!("{path}/backup-schedule"), &bob, json!({"interval": 3600, "keep": 2})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // A restore is a new VM like any other.
    let work = tempfile::tempdir()?;
    let plain = work.path().join("plain.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &plain.display().to_string(), "1G"])?;
    let (status, body) =
        upload_restore(&s, &bob, archive_of(work.path(), &plain, serde_json::from_str(SPEC)?)?, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let (status, mine) = s.get("/api/auth/me/quota", &bob).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mine["usage"], json!({"vms": 1, "vcpus": 2, "memory_mib": 256, "disk_gb": 5, "backups": 1}));
    // Admins are never limited, whatever they set for themselves.
    let own = json!({"max_vms": 0});
    assert_eq!(
        s.call(Method::PUT, "/api/auth/users/admin/quota", Some(&admin), Some(own)).await.0,
        StatusCode::OK
    );
    assert_eq!(s.post("/api/vms", &admin, vm("admins vm", 1, 256, 1)).await.0, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn the_data_directory_is_private_whatever_the_umask() -> TestResult {
    // An operator's lax umask at start; the server sets its own for the process (putting the old
    // one back after it started would be a change no operator can make, and made this test
    // depend on which tests ran before it).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let (_, vm) = s.post("/api/vms", &admin, serde_json::from_str(SPEC)?).await;
    let id = vm["vm"]["id"].as_str().ok_or("id")?;
    let (_, vol) = s.post("/api/volumes", &admin, json!({"name": "data", "size_gb": 1})).await;
    let (_, seed) = s.post("/api/cloudinit", &admin, json!({"hostname": "private"})).await;
    // A disk, so that the backup stores a chunk.
    let disk = s.data_dir.path().join("vms").join(id).join("disk0.qcow2");
    std::fs::create_dir_all(disk.parent().ok_or("vm dir")?)?;
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("1G")
        .status()?;
    assert!(made.success());
    let (status, _) = s.call(Method::POST, &format!("/api/vms/{id}/backup"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let data = s.data_dir.path();
    let in_dir = |dir: &Path| -> Result<std::path::PathBuf, Box<dyn std::error::Error>> {
        let first = std::fs::read_dir(dir)?.filter_map(Result::ok).find(|e| e.path().is_file());
        Ok(first.ok_or("no file")?.path())
    };
    let backup = in_dir(&data.join("backups"))?;
    let chunk_dir = std::fs::read_dir(data.join("backups/chunks"))?
        .filter_map(Result::ok)
        .next()
        .ok_or("chunk dir")?
        .path();
    let chunk = in_dir(&chunk_dir)?;
    let mode = |p: &Path| -> std::io::Result<u32> {
        Ok(std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p)?.permissions()) & 0o777)
    };
    for dir in ["", "vms", "volumes", "images", "backups", "backups/chunks", "cloudinit", "base", "run"] {
        assert_eq!(mode(&data.join(dir))?, 0o700, "{dir}/");
    }
    for file in [
        data.join("jwt_secret"),
        data.join("fastvm.db"),
        Path::new(vol["volume"]["path"].as_str().ok_or("vol")?).to_path_buf(),
        Path::new(seed["iso_path"].as_str().ok_or("seed")?).to_path_buf(),
        backup,
        chunk,
    ] {
        assert_eq!(mode(&file)?, 0o600, "{}", file.display());
    }
    Ok(())
}

#[tokio::test]
async fn in_production_a_password_to_change_opens_nothing_else() -> TestResult {
    let s = TestServer::start_with(|c| c.production = true).await;
    let first = s.admin_token().await;
    let (status, body) = s.get("/api/vms", &first).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(detail(&body).contains("change-password"), "{body}");
    assert_eq!(s.get("/api/auth/users", &first).await.0, StatusCode::FORBIDDEN);
    let (status, me) = s.get("/api/auth/me", &first).await;
    assert_eq!((status, me["must_change_password"].clone()), (StatusCode::OK, json!(true)));
    let (status, body) = s
        .post(
            "/api/auth/change-password",
            &first,
            json!({"current_password": "admin", "new_password": "a-better-one"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let admin = s.token("admin", "a-better-one").await;
    assert_eq!(s.get("/api/vms", &admin).await.0, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn an_iso_upload_larger_than_allowed_is_refused_before_it_is_received() -> TestResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start_with(|c| c.max_iso_gb = 1).await;
    let admin = s.admin_token().await;
    // Announces 2 GB and sends almost nothing: the answer comes from the announcement alone.
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await?;
    let head = format!(
        "POST /api/isos HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n\
         Content-Type: multipart/form-data; boundary=B\r\nContent-Length: {}\r\n\r\n--B\r\n",
        2u64 << 30
    );
    tcp.write_all(head.as_bytes()).await?;
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut answer)).await??;
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("FASTVM_MAX_ISO_GB"), "{answer}");
    Ok(())
}

#[tokio::test]
async fn a_decompression_bomb_upload_writes_nothing() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let bob = s.regular_user(&admin, "bob").await;
    // An archive of the old layout (manifest last, no index) whose disk member is 1 GiB of zeros
    // while its manifest says 4 KiB: a few hundred kilobytes on the wire.
    let manifest = json!({"format": archive::FORMAT, "vm_id": "0123456789ab", "vm_name": "bomb",
        "spec": serde_json::from_str::<Value>(SPEC)?, "created_at": 0,
        "members": [{"name": "disk0.qcow2", "size": 4096, "sha256": "0".repeat(64)}]});
    let mut tar = tar::Builder::new(zstd::Encoder::new(Vec::new(), 3)?);
    let mut header = tar::Header::new_gnu();
    header.set_size(1 << 30);
    header.set_mode(0o600);
    tar.append_data(&mut header, "disk0.qcow2", std::io::Read::take(std::io::repeat(0), 1 << 30))?;
    let bytes = serde_json::to_vec(&manifest)?;
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o600);
    tar.append_data(&mut header, "manifest.json", bytes.as_slice())?;
    let bomb = tar.into_inner()?.finish()?;
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());

    let watch = s.data_dir.path().join("vms");
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (p, w) = (peak.clone(), watch.clone());
    let watcher = tokio::spawn(async move {
        loop {
            p.fetch_max(bytes_under(&w), std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let (status, body) = upload_restore(&s, &bob, bomb, None).await;
    watcher.abort();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(detail(&body).contains("not the size"), "{body}");
    assert_eq!(
        peak.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "bytes were written while the bomb was read"
    );
    assert_eq!(s.get("/api/backups", &bob).await.1, json!([]));
    Ok(())
}

fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|e| {
            let p = e.path();
            if p.is_dir() { bytes_under(&p) } else { std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0) }
        })
        .sum()
}

#[tokio::test]
async fn a_download_ticket_opens_one_backup_for_its_holder_only() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let bob = s.regular_user(&admin, "bob").await;
    let (_, vm) = s.post("/api/vms", &bob, serde_json::from_str(SPEC)?).await;
    let id = vm["vm"]["id"].as_str().ok_or("id")?.to_string();
    let mut backups = Vec::new();
    for _ in 0..2 {
        let (status, b) = s.call(Method::POST, &format!("/api/vms/{id}/backup"), Some(&bob), None).await;
        assert_eq!(status, StatusCode::OK, "{b}");
        backups.push(b["id"].as_str().ok_or("id")?.to_string());
    }
    let (status, t) = s.post(&format!("/api/backups/{}/download-ticket", backups[0]), &bob, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{t}");
    let url = t["url"].as_str().ok_or("url")?.to_string();
    let ticket = t["ticket"].as_str().ok_or("ticket")?.to_string();

    let r = s.client.get(s.url(&url)).send().await?;
    assert_eq!(r.status(), StatusCode::OK);
    let bytes = r.bytes().await?;
    let with_token = s
        .client
        .get(s.url(&format!("/api/backups/{}/download", backups[0])))
        .bearer_auth(&bob)
        .send()
        .await?
        .bytes()
        .await?;
    assert_eq!(bytes, with_token, "the same archive either way");
    // Not for another backup, not without it, not with a made-up one.
    for path in [
        format!("/api/backups/{}/download?ticket={ticket}", backups[1]),
        format!("/api/backups/{}/download", backups[0]),
        format!("/api/backups/{}/download?ticket={}", backups[0], "0".repeat(64)),
    ] {
        assert_eq!(s.client.get(s.url(&path)).send().await?.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // Another user gets no ticket for bob's backup.
    let eve = s.regular_user(&admin, "eve").await;
    let (status, _) = s.post(&format!("/api/backups/{}/download-ticket", backups[0]), &eve, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    Ok(())
}
