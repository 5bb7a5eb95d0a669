//! Many clients at once on the same things: every answer is a success or a clean refusal (409, or
//! 404 once deleted), there is never a second QEMU for a VM, and nothing is left of what was deleted.

mod common;

use std::sync::Arc;

use common::guest::{VmReaper, qemu_pids};
use common::{TestResult, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const CLIENTS: usize = 20;

async fn create(s: &TestServer, token: &str, name: &str, extra: Value) -> (StatusCode, Value) {
    let mut spec = json!({"name": name, "memory": 128, "cpus": 1, "disk_size": 1, "firmware": "bios"});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    s.post("/api/vms", token, spec).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_on_the_same_vms_get_answers_not_duplicates() -> TestResult {
    let s = Arc::new(TestServer::start().await);
    let _reaper = VmReaper(s.data_dir.path().to_path_buf());
    let admin = Arc::new(s.admin_token().await);
    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, body) = create(&s, &admin, &format!("shared-{i}"), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        ids.push(body["vm"]["id"].as_str().ok_or("id")?.to_string());
    }
    let ids = Arc::new(ids);

    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let (s, admin, ids) = (s.clone(), admin.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for round in 0..6 {
                let id = &ids[(client + round) % ids.len()];
                let (method, path, body) = match (client + round * 7) % 6 {
                    0 | 1 => (Method::POST, format!("/api/vms/{id}/start"), None),
                    2 => (Method::POST, format!("/api/vms/{id}/stop?force=true"), None),
                    3 => (Method::POST, format!("/api/vms/{id}/restart?timeout=1"), None),
                    4 => (
                        Method::POST,
                        format!("/api/vms/{id}/snapshots"),
                        Some(json!({"name": format!("c{client}r{round}")})),
                    ),
                    // Only the last VM is deleted, and only late.
                    _ if round >= 4 && id == &ids[2] => {
                        (Method::DELETE, format!("/api/vms/{id}?force=true"), None)
                    }
                    _ => (Method::GET, format!("/api/vms/{id}"), None),
                };
                let (status, answer) = s.call(method.clone(), &path, Some(&admin), body).await;
                answers.push((format!("{method} {path}"), status, answer));
            }
            answers
        }));
    }
    let mut counts = std::collections::BTreeMap::new();
    for task in tasks {
        for (what, status, answer) in task.await? {
            *counts.entry(status.as_u16()).or_insert(0) += 1;
            assert!(
                matches!(status, StatusCode::OK | StatusCode::CONFLICT | StatusCode::NOT_FOUND),
                "{what}: {status} {answer}"
            );
            if status == StatusCode::CONFLICT || status == StatusCode::NOT_FOUND {
                assert!(answer["detail"].as_str().is_some_and(|d| !d.is_empty()), "{what}: {answer}");
            }
        }
    }
    println!("answers by status: {counts:?}");
    // Most requests meet a VM busy starting or stopping (409 at once, by design); some get through.
    assert!(counts.get(&200).copied().unwrap_or(0) >= ids.len(), "work was done: {counts:?}");

    // Whatever the order was, each VM now has at most one QEMU, and the API says so.
    let (_, vms) = s.get("/api/vms", &admin).await;
    for vm in vms.as_array().into_iter().flatten() {
        let id = vm["id"].as_str().ok_or("id")?;
        let pids = qemu_pids(id);
        assert!(pids.len() <= 1, "VM {id} has {} QEMUs", pids.len());
        let running = vm["status"] == "running";
        assert_eq!(running, pids.len() == 1, "the API and the host agree on {id}: {vm}");
    }
    let deleted = !vms.as_array().into_iter().flatten().any(|vm| vm["id"] == ids[2].as_str());
    if deleted {
        assert!(qemu_pids(&ids[2]).is_empty(), "no QEMU of a deleted VM");
        assert!(!s.data_dir.path().join("vms").join(&ids[2]).exists(), "no files of a deleted VM");
    }
    for id in ids.iter() {
        let _ = s.call(Method::POST, &format!("/api/vms/{id}/stop?force=true"), Some(&admin), None).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_port_one_volume_one_snapshot_name_one_winner() -> TestResult {
    let s = Arc::new(TestServer::start().await);
    let _reaper = VmReaper(s.data_dir.path().to_path_buf());
    let admin = Arc::new(s.admin_token().await);

    // The same host port forwarded by ten creates at once: one VM gets it.
    let forward =
        json!({"networks": [{"type": "nat", "port_forwards": [{"host_port": 22022, "guest_port": 22}]}]});
    let creates = (0..10).map(|i| {
        let (s, admin, forward) = (s.clone(), admin.clone(), forward.clone());
        tokio::spawn(async move { create(&s, &admin, &format!("port-{i}"), forward).await })
    });
    let mut won = 0;
    for task in creates {
        let (status, body) = task.await?;
        match status {
            StatusCode::OK => won += 1,
            StatusCode::CONFLICT => {
                assert!(body["detail"].as_str().is_some_and(|d| d.contains("22022")), "{body}")
            }
            other => panic!("a create answered {other}: {body}"),
        }
    }
    assert_eq!(won, 1, "one VM has the port");

    // Ten creates with one name: names are labels (ids are unique), so each is a VM of its own,
    // with MACs of its own.
    let creates = (0..10).map(|_| {
        let (s, admin) = (s.clone(), admin.clone());
        tokio::spawn(async move { create(&s, &admin, "twin", json!({})).await })
    });
    let mut ids = std::collections::BTreeSet::new();
    let mut macs = std::collections::BTreeSet::new();
    for task in creates {
        let (status, body) = task.await?;
        assert_eq!(status, StatusCode::OK, "{body}");
        ids.insert(body["vm"]["id"].as_str().ok_or("id")?.to_string());
        macs.insert(body["vm"]["networks"][0]["mac_address"].as_str().ok_or("mac")?.to_string());
    }
    assert_eq!((ids.len(), macs.len()), (10, 10), "ten VMs, ten MACs");

    // Ten snapshots of one name on one VM at once: one is taken, the others are told why not.
    let twin = ids.iter().next().ok_or("a twin")?.clone();
    let dir = s.data_dir.path().join("vms").join(&twin);
    std::fs::create_dir_all(&dir)?;
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(dir.join("disk0.qcow2"))
        .arg("1G")
        .status()?;
    assert!(made.success());
    let snapshots = (0..10).map(|_| {
        let (s, admin, path) = (s.clone(), admin.clone(), format!("/api/vms/{twin}/snapshots"));
        tokio::spawn(async move { s.post(&path, &admin, json!({"name": "same"})).await })
    });
    let mut taken = 0;
    for task in snapshots {
        let (status, body) = task.await?;
        match status {
            StatusCode::OK => taken += 1,
            StatusCode::CONFLICT => {
                assert!(body["detail"].as_str().is_some_and(|d| d.contains("same")), "{body}")
            }
            other => panic!("a snapshot answered {other}: {body}"),
        }
    }
    assert_eq!(taken, 1, "one snapshot of that name");
    let (_, list) = s.get(&format!("/api/vms/{twin}/snapshots"), &admin).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");

    // One volume attached to two VMs at once: one gets it.
    let (status, vol) = s.post("/api/volumes", &admin, json!({"name": "contested", "size_gb": 1})).await;
    assert_eq!(status, StatusCode::OK, "{vol}");
    let vol = vol["volume"]["id"].as_str().ok_or("volume id")?.to_string();
    let mut vms = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let (status, body) = create(&s, &admin, name, json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        vms.push(body["vm"]["id"].as_str().ok_or("id")?.to_string());
    }
    let attaches = vms.iter().map(|vm| {
        let (s, admin, path) = (s.clone(), admin.clone(), format!("/api/vms/{vm}/volumes/{vol}"));
        tokio::spawn(async move { s.call(Method::POST, &path, Some(&admin), None).await })
    });
    let mut attached = 0;
    for task in attaches {
        let (status, body) = task.await?;
        match status {
            StatusCode::OK => attached += 1,
            StatusCode::CONFLICT => {}
            other => panic!("an attach answered {other}: {body}"),
        }
    }
    assert_eq!(attached, 1, "the volume is attached once");
    let (_, volume) = s.get(&format!("/api/volumes/{vol}"), &admin).await;
    assert!(volume["attached_to"].as_str().is_some_and(|v| vms.iter().any(|id| id == v)), "{volume}");
    Ok(())
}
