//! The VM API without booting guests: validation, conflicts, ownership, host readings.

mod common;

use common::{TestResult, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn dir_is_empty(p: &std::path::Path) -> bool {
    std::fs::read_dir(p).map(|mut d| d.next().is_none()).unwrap_or(true)
}

#[tokio::test]
async fn create_list_get_update_delete() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let (status, body) = s
        .post("/api/vms", &admin, json!({"name": "Ubuntu Server", "memory": 256, "cpus": 1, "disk_size": 20}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true);
    let vm = &body["vm"];
    let id = vm["id"].as_str().ok_or("id")?.to_string();
    assert_eq!(id.len(), 12);
    assert_eq!(vm["status"], "stopped");
    assert_eq!(vm["owner"], "admin");
    assert_eq!(vm["firmware"], "uefi");
    assert_eq!(vm["display_type"], "qxl");
    assert_eq!(vm["networks"][0]["type"], "nat");
    assert_eq!(vm["networks"][0]["model"], "virtio");
    assert!(vm["networks"][0]["mac_address"].as_str().is_some_and(|m| m.starts_with("52:54:00:")));

    let (_, list) = s.get("/api/vms", &admin).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    let (status, got) = s.get(&format!("/api/vms/{id}"), &admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["name"], "Ubuntu Server");

    let (status, body) = s
        .call(Method::PUT, &format!("/api/vms/{id}"), Some(&admin), Some(json!({"memory": 512, "cpus": 2})))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["vm"]["memory"], 512);
    assert_eq!(body["vm"]["name"], "Ubuntu Server", "unchanged fields stay");
    assert_eq!(body["vm"]["networks"][0]["mac_address"], vm["networks"][0]["mac_address"], "MACs are kept");
    let (status, body) =
        s.call(Method::PUT, &format!("/api/vms/{id}"), Some(&admin), Some(json!({"disk_size": 10}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| d.starts_with("disk_size")));

    let (status, _) = s.call(Method::POST, &format!("/api/vms/{id}/stop"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "stopping a stopped VM");
    let (status, logs) = s.get(&format!("/api/vms/{id}/logs?lines=5"), &admin).await;
    assert_eq!(status, StatusCode::OK);
    assert!(logs["qemu_log"].is_string() && logs["serial_log"].is_string());

    let (status, _) = s.call(Method::DELETE, &format!("/api/vms/{id}"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.get(&format!("/api/vms/{id}"), &admin).await.0, StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test]
async fn bad_fields_are_refused_and_nothing_is_created() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let secret = s.data_dir.path().join("secret.iso");
    std::fs::write(&secret, b"not yours")?;
    let images = s.data_dir.path().join("images");
    std::os::unix::fs::symlink(&secret, images.join("escape.iso"))?;
    let base = json!({"name": "vm", "memory": 256, "cpus": 1, "disk_size": 1});
    let with = |patch: Value| {
        let mut v = base.clone();
        if let (Some(m), Some(p)) = (v.as_object_mut(), patch.as_object()) {
            m.extend(p.clone());
        }
        v
    };
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (with(json!({"name": "vm; rm -rf /"})), StatusCode::BAD_REQUEST, "name"),
        (with(json!({"name": "$(reboot)"})), StatusCode::BAD_REQUEST, "name"),
        (with(json!({"name": ""})), StatusCode::BAD_REQUEST, "name"),
        (with(json!({"memory": 64})), StatusCode::BAD_REQUEST, "memory"),
        (with(json!({"memory": 1u64 << 40})), StatusCode::BAD_REQUEST, "memory"),
        (with(json!({"cpus": 0})), StatusCode::BAD_REQUEST, "cpus"),
        (with(json!({"cpus": 4096})), StatusCode::BAD_REQUEST, "cpus"),
        (with(json!({"disk_size": 0})), StatusCode::BAD_REQUEST, "disk_size"),
        (with(json!({"disk_size": 5000})), StatusCode::BAD_REQUEST, "disk_size"),
        (with(json!({"iso_path": "/etc/passwd"})), StatusCode::BAD_REQUEST, "iso_path"),
        (
            with(json!({"iso_path": format!("{}/../secret.iso", images.display())})),
            StatusCode::BAD_REQUEST,
            "iso_path",
        ),
        (with(json!({"iso_path": images.join("escape.iso")})), StatusCode::BAD_REQUEST, "iso_path"),
        (with(json!({"secondary_iso_path": "relative.iso"})), StatusCode::BAD_REQUEST, "secondary_iso_path"),
        (with(json!({"boot_order": ["disk", "disk"]})), StatusCode::BAD_REQUEST, "boot_order"),
        (with(json!({"firmware": "bios", "secure_boot": true})), StatusCode::BAD_REQUEST, "secure_boot"),
        (
            with(json!({"networks": [{"type": "bridge", "bridge_name": "br0;reboot"}]})),
            StatusCode::BAD_REQUEST,
            "networks[0].bridge_name",
        ),
        (
            with(json!({"networks": [{"type": "macvtap", "parent_interface": "eth0 && id"}]})),
            StatusCode::BAD_REQUEST,
            "networks[0].parent_interface",
        ),
        (with(json!({"networks": [{"type": "bridge"}]})), StatusCode::BAD_REQUEST, "networks[0].bridge_name"),
        (
            with(json!({"networks": [{"mac_address": "zz:54:00:00:00:01"}]})),
            StatusCode::BAD_REQUEST,
            "networks[0].mac_address",
        ),
        (with(json!({"bogus": true})), StatusCode::UNPROCESSABLE_ENTITY, "bogus"),
        (with(json!({"cpu_model": "pentium"})), StatusCode::UNPROCESSABLE_ENTITY, "cpu_model"),
        (with(json!({"networks": [{"type": "wifi"}]})), StatusCode::UNPROCESSABLE_ENTITY, "type"),
        (with(json!({"memory": "lots"})), StatusCode::UNPROCESSABLE_ENTITY, "memory"),
        (
            with(json!({"networks": [{"port_forwards": [{"host_port": 70000, "guest_port": 22}]}]})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "host_port",
        ),
    ];
    for (body, expected, field) in cases {
        let (status, resp) = s.post("/api/vms", &admin, body.clone()).await;
        assert_eq!(status, expected, "{body}: {resp}");
        let detail = resp["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(field), "{body}: detail {detail:?} does not name {field}");
    }
    assert_eq!(s.get("/api/vms", &admin).await.1.as_array().map(Vec::len), Some(0));
    assert!(dir_is_empty(&s.data_dir.path().join("vms")));
    assert!(dir_is_empty(&s.data_dir.path().join("run")));
    assert_eq!(std::fs::read(&secret)?, b"not yours");
    Ok(())
}

#[tokio::test]
async fn macs_and_host_ports_are_unique_across_vms() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let vm = |name: &str, mac: &str, port: u16| {
        json!({"name": name, "memory": 256, "cpus": 1, "disk_size": 1,
               "networks": [{"mac_address": mac, "port_forwards": [{"host_port": port, "guest_port": 22}]}]})
    };
    assert_eq!(s.post("/api/vms", &admin, vm("a", "52:54:00:00:00:aa", 2222)).await.0, StatusCode::OK);
    let (status, body) = s.post("/api/vms", &admin, vm("b", "52:54:00:00:00:AA", 2223)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("mac_address")));
    let (status, body) = s.post("/api/vms", &admin, vm("c", "52:54:00:00:00:cc", 2222)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("host_port")));
    // Same port on another protocol is fine.
    let udp = json!({"name": "d", "memory": 256, "cpus": 1, "disk_size": 1,
        "networks": [{"port_forwards": [{"host_port": 2222, "guest_port": 53, "protocol": "udp"}]}]});
    assert_eq!(s.post("/api/vms", &admin, udp).await.0, StatusCode::OK);
    assert_eq!(s.get("/api/vms", &admin).await.1.as_array().map(Vec::len), Some(2));
    Ok(())
}

#[tokio::test]
async fn users_see_only_their_own_vms() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    s.create_user(&admin, "alice", "alice-password", false).await;
    s.create_user(&admin, "bob", "bob-password", false).await;
    let alice = s.token("alice", "alice-password").await;
    let bob = s.token("bob", "bob-password").await;
    let (_, body) = s
        .post("/api/vms", &alice, json!({"name": "alice vm", "memory": 256, "cpus": 1, "disk_size": 1}))
        .await;
    let id = body["vm"]["id"].as_str().ok_or("id")?.to_string();
    assert_eq!(body["vm"]["owner"], "alice");

    assert_eq!(s.get("/api/vms", &bob).await.1.as_array().map(Vec::len), Some(0));
    for (method, path) in [
        (Method::GET, format!("/api/vms/{id}")),
        (Method::PUT, format!("/api/vms/{id}")),
        (Method::DELETE, format!("/api/vms/{id}")),
        (Method::POST, format!("/api/vms/{id}/start")),
        (Method::POST, format!("/api/vms/{id}/stop")),
        (Method::POST, format!("/api/vms/{id}/restart")),
        (Method::GET, format!("/api/vms/{id}/logs")),
    ] {
        let (status, _) = s.call(method.clone(), &path, Some(&bob), Some(json!({"memory": 300}))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
    }
    assert_eq!(s.get(&format!("/api/vms/{id}"), &alice).await.1["memory"], 256, "bob changed nothing");
    assert_eq!(s.get("/api/vms", &admin).await.1.as_array().map(Vec::len), Some(1), "admins see all");

    let (status, _) =
        s.call(Method::PUT, &format!("/api/vms/{id}"), Some(&alice), Some(json!({"owner": "bob"}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "only admins hand VMs over");

    // Host networks are for admins; a user may keep (not change) the ones an admin gave their VM.
    let bridged =
        json!({"networks": [{"type": "bridge", "bridge_name": "br0", "mac_address": "52:54:00:00:01:01"}]});
    let (status, body) =
        s.call(Method::PUT, &format!("/api/vms/{id}"), Some(&alice), Some(bridged.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| d.starts_with("networks[0].type")));
    let mut new_vm = json!({"name": "x", "memory": 256, "cpus": 1, "disk_size": 1});
    new_vm["networks"] = bridged["networks"].clone();
    assert_eq!(s.post("/api/vms", &alice, new_vm).await.0, StatusCode::FORBIDDEN);
    let (status, _) = s.call(Method::PUT, &format!("/api/vms/{id}"), Some(&admin), Some(bridged)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) =
        s.call(Method::PUT, &format!("/api/vms/{id}"), Some(&alice), Some(json!({"memory": 300}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = s.call(Method::DELETE, "/api/auth/users/alice", Some(&admin), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "a user who owns VMs is not deleted");
    let (status, body) =
        s.call(Method::PUT, &format!("/api/vms/{id}"), Some(&admin), Some(json!({"owner": "bob"}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(s.get(&format!("/api/vms/{id}"), &bob).await.0, StatusCode::OK);
    assert_eq!(s.get(&format!("/api/vms/{id}"), &alice).await.0, StatusCode::NOT_FOUND);
    let (status, _) = s.call(Method::DELETE, "/api/auth/users/alice", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn host_readings_are_real() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let images = s.data_dir.path().join("images");
    std::fs::write(images.join("tiny.iso"), vec![0u8; 4096])?;
    std::fs::write(images.join("notes.txt"), b"not an iso")?;
    let (status, isos) = s.get("/api/isos", &admin).await;
    assert_eq!(status, StatusCode::OK);
    let tiny =
        isos.as_array().ok_or("array")?.iter().find(|i| i["name"] == "tiny.iso").ok_or("tiny.iso listed")?;
    assert_eq!(tiny["size"], 4096);
    assert!(tiny["path"].as_str().is_some_and(|p| p.ends_with("/images/tiny.iso")));
    assert!(isos.as_array().ok_or("array")?.iter().all(|i| i["name"] != "notes.txt"));

    let (_, interfaces) = s.get("/api/interfaces", &admin).await;
    let lo = interfaces.as_array().ok_or("array")?.iter().find(|i| i["name"] == "lo").ok_or("lo")?;
    assert_eq!(lo["kind"], "loopback");
    let (status, bridges) = s.get("/api/bridges", &admin).await;
    assert_eq!(status, StatusCode::OK);
    assert!(bridges.as_array().ok_or("array")?.iter().all(|b| b["kind"] == "bridge"));
    let (_, user) = s.get("/api/system/user", &admin).await;
    let uid = nix_uid();
    assert_eq!(user["uid"], uid);
    assert_eq!(user["is_root"], uid == 0);
    Ok(())
}

fn nix_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(u32::MAX)
}

#[tokio::test]
async fn iso_library_uploads_and_deletes_safely() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let upload = |name: &'static str, bytes: Vec<u8>| {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(name);
        let form = reqwest::multipart::Form::new().part("file", part);
        s.client.post(s.url("/api/isos")).bearer_auth(&admin).multipart(form).send()
    };
    let r = upload("tiny.iso", vec![7u8; 100_000]).await?;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await?;
    assert_eq!(body["iso"]["size"], 100_000);
    let path = body["iso"]["path"].as_str().ok_or("path")?.to_string();
    assert_eq!(std::fs::read(&path)?.len(), 100_000);
    let (_, jobs) = s.get("/api/jobs", &admin).await;
    let job = jobs.as_array().and_then(|l| l.iter().find(|j| j["kind"] == "upload")).ok_or("upload job")?;
    assert_eq!((job["state"].as_str(), job["result_id"].as_str()), (Some("succeeded"), Some("tiny.iso")));
    assert_eq!(job["bytes_done"], 100_000);
    assert_eq!(upload("tiny.iso", vec![1u8; 10]).await?.status(), StatusCode::CONFLICT);
    assert_eq!(std::fs::read(&path)?[0], 7, "the existing ISO was not overwritten");
    for bad in ["../escape.iso", "sub/dir.iso", "notes.txt", ".hidden.iso"] {
        assert_eq!(upload(bad, vec![0u8; 10]).await?.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let images = s.data_dir.path().join("images");
    let leftovers: Vec<_> =
        std::fs::read_dir(&images)?.filter_map(Result::ok).map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "only tiny.iso: {leftovers:?}");

    let (_, vm) = s
        .post(
            "/api/vms",
            &admin,
            json!({"name": "uses iso", "memory": 256, "cpus": 1, "disk_size": 1, "iso_path": path}),
        )
        .await;
    let vm_id = vm["vm"]["id"].as_str().ok_or("id")?.to_string();
    let (status, body) = s.call(Method::DELETE, "/api/isos/tiny.iso", Some(&admin), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    s.call(Method::DELETE, &format!("/api/vms/{vm_id}"), Some(&admin), None).await;
    let (status, _) = s.call(Method::DELETE, "/api/isos/tiny.iso", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!std::path::Path::new(&path).exists());
    let (status, _) = s.call(Method::DELETE, "/api/isos/tiny.iso", Some(&admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test]
async fn volumes_validate_and_follow_their_owner() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    for (body, field) in [
        (json!({"name": "v", "size_gb": 0}), "size_gb"),
        (json!({"name": "v", "size_gb": 2000}), "size_gb"),
        (json!({"name": "v;rm", "size_gb": 1}), "name"),
    ] {
        let (status, resp) = s.post("/api/volumes", &admin, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
        assert!(resp["detail"].as_str().is_some_and(|d| d.starts_with(field)));
    }
    let (status, _) =
        s.post("/api/volumes", &admin, json!({"name": "v", "size_gb": 1, "format": "vmdk"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(dir_is_empty(&s.data_dir.path().join("volumes")));

    s.create_user(&admin, "carl", "carl-password", false).await;
    let carl = s.token("carl", "carl-password").await;
    let (_, vol) = s.post("/api/volumes", &admin, json!({"name": "admin disk", "size_gb": 1})).await;
    let vol_id = vol["volume"]["id"].as_str().ok_or("id")?.to_string();
    assert_eq!(s.get("/api/volumes", &carl).await.1.as_array().map(Vec::len), Some(0));
    assert_eq!(s.get(&format!("/api/volumes/{vol_id}"), &carl).await.0, StatusCode::NOT_FOUND);
    let (_, vm) =
        s.post("/api/vms", &carl, json!({"name": "carl vm", "memory": 256, "cpus": 1, "disk_size": 1})).await;
    let vm_id = vm["vm"]["id"].as_str().ok_or("id")?.to_string();
    let (status, _) =
        s.call(Method::POST, &format!("/api/vms/{vm_id}/volumes/{vol_id}"), Some(&carl), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "carl cannot attach a volume he cannot see");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_volume_goes_to_one_vm_however_many_ask_at_once() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let mut vms = Vec::new();
    for name in ["first", "second", "third", "fourth"] {
        let (_, vm) =
            s.post("/api/vms", &admin, json!({"name": name, "memory": 256, "cpus": 1, "disk_size": 1})).await;
        vms.push(vm["vm"]["id"].as_str().ok_or("id")?.to_string());
    }
    for round in 0..5 {
        let (_, vol) =
            s.post("/api/volumes", &admin, json!({"name": format!("shared {round}"), "size_gb": 1})).await;
        let vol_id = vol["volume"]["id"].as_str().ok_or("id")?.to_string();
        // Every VM asks for it at once, and a delete races them.
        let attaches = vms.iter().map(|vm| {
            let path = format!("/api/vms/{vm}/volumes/{vol_id}");
            let (s, admin) = (&s, &admin);
            async move { (vm.clone(), s.call(Method::POST, &path, Some(admin), None).await) }
        });
        let delete_path = format!("/api/volumes/{vol_id}");
        let (results, (deleted, _)) = tokio::join!(
            futures::future::join_all(attaches),
            s.call(Method::DELETE, &delete_path, Some(&admin), None)
        );
        let winners: Vec<&String> =
            results.iter().filter(|(_, (status, _))| *status == StatusCode::OK).map(|(vm, _)| vm).collect();
        for (_, (status, body)) in &results {
            assert!(
                [StatusCode::OK, StatusCode::CONFLICT, StatusCode::NOT_FOUND].contains(status),
                "{status}: {body}"
            );
        }
        let (status, now) = s.get(&format!("/api/volumes/{vol_id}"), &admin).await;
        if deleted == StatusCode::OK {
            assert!(winners.is_empty(), "attached to {winners:?} and deleted");
            assert_eq!(status, StatusCode::NOT_FOUND);
        } else {
            assert_eq!(deleted, StatusCode::CONFLICT);
            assert_eq!(winners.len(), 1, "round {round}: attached to {winners:?}");
            assert_eq!(now["attached_to"], winners[0].as_str(), "{now}");
            let (status, _) = s
                .call(
                    Method::DELETE,
                    &format!("/api/vms/{}/volumes/{vol_id}", winners[0]),
                    Some(&admin),
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::OK);
        }
    }
    // Two deletes at once: one deletes, the other finds nothing.
    let (_, vol) = s.post("/api/volumes", &admin, json!({"name": "twice", "size_gb": 1})).await;
    let path = format!("/api/volumes/{}", vol["volume"]["id"].as_str().ok_or("id")?);
    let (a, b) = tokio::join!(
        s.call(Method::DELETE, &path, Some(&admin), None),
        s.call(Method::DELETE, &path, Some(&admin), None)
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::NOT_FOUND], "{a:?} {b:?}");
    Ok(())
}

/// A VM is defined whatever the size of the host it is defined on (the brief's examples ask for 2
/// and 4 vCPUs, 2 and 8 GiB); it starts only where it fits, and the refusal says what the host has.
#[tokio::test]
async fn a_vm_larger_than_the_host_is_defined_and_refused_at_start() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let images = s.data_dir.path().join("images");
    for iso in ["ubuntu.iso", "win11.iso", "virtio-win.iso"] {
        std::fs::write(images.join(iso), b"iso")?;
    }
    let iso = |name: &str| images.join(name).display().to_string();
    let nat = json!({"name": "Ubuntu Server", "memory": 2048, "cpus": 2, "disk_size": 20, "iso_path": iso("ubuntu.iso")});
    let bridge = json!({
        "name": "Windows 11", "memory": 8192, "cpus": 4, "disk_size": 60,
        "iso_path": iso("win11.iso"), "secondary_iso_path": iso("virtio-win.iso"),
        "networks": [{"type": "bridge", "bridge_name": "br0"}], "boot_order": ["cdrom", "disk"]
    });
    for body in [nat, bridge] {
        let (status, answer) = s.post("/api/vms", &admin, body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["success"], true);
    }

    let cpus = std::thread::available_parallelism()?.get() as u64;
    let (_, big) = s
        .post(
            "/api/vms",
            &admin,
            json!({"name": "many cpus", "memory": 256, "cpus": cpus + 1, "disk_size": 1}),
        )
        .await;
    let id = big["vm"]["id"].as_str().ok_or("id")?;
    let (status, answer) = s.call(Method::POST, &format!("/api/vms/{id}/start"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    let detail = answer["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!("{} vCPUs", cpus + 1)) && detail.contains(&format!("{cpus} CPUs")),
        "{detail}"
    );

    let (_, huge) = s
        .post(
            "/api/vms",
            &admin,
            json!({"name": "much ram", "memory": 4u64 << 20, "cpus": 1, "disk_size": 1}),
        )
        .await;
    let id = huge["vm"]["id"].as_str().ok_or("id")?;
    let (status, answer) = s.call(Method::POST, &format!("/api/vms/{id}/start"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(answer["detail"].as_str().is_some_and(|d| d.contains("MiB free")), "{answer}");
    let (_, vm) = s.get(&format!("/api/vms/{id}"), &admin).await;
    assert_eq!(
        (vm["status"].as_str(), vm["last_error"].as_str()),
        (Some("stopped"), None),
        "nothing was tried: {vm}"
    );
    Ok(())
}
