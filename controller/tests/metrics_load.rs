//! Load on the live metrics: 50 running tiny guests collected every second and 100 `/ws/metrics`
//! clients; every client hears every pass (no gap), and the controller's memory and CPU are
//! printed at idle and under that load (the README's numbers come from this test's output).

mod common;

use std::time::Duration;

use common::TestResult;
use common::guest::VmReaper;
use common::process::Fastvm;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

const VMS: usize = 50;
const CLIENTS: usize = 100;
const WINDOW: Duration = Duration::from_secs(10);

/// RSS in MiB and CPU seconds so far of a process.
fn usage(pid: u32) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or("VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit_once(')').ok_or("stat")?.1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok((rss_kib / 1024.0, ticks / 100.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_hear_every_pass_of_fifty_guests() -> TestResult {
    let data = tempfile::tempdir()?;
    let _reaper = VmReaper(data.path().to_path_buf());
    let server = Fastvm::spawn(data.path(), &[("FASTVM_METRICS_INTERVAL", "1")])?;
    let client = reqwest::Client::new();
    let token = server.admin_token(&client).await?;
    let call = |path: String, body: Option<Value>| {
        let req = client.post(server.url(&path)).bearer_auth(&token);
        let req = if let Some(b) = body { req.json(&b) } else { req };
        async move {
            let r = req.send().await?;
            let status = r.status();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            Ok::<_, reqwest::Error>((status, body))
        }
    };
    // Tiny guests: firmware with nothing to boot, paused once up so that fifty emulated CPUs leave
    // the two cores to the controller; a pass reads a paused guest as it reads a busy one.
    for i in 0..VMS {
        let spec = json!({"name": format!("tiny-{i}"), "memory": 128, "cpus": 1, "disk_size": 1, "firmware": "bios"});
        let (status, vm) = call("/api/vms".into(), Some(spec)).await?;
        assert_eq!(status, StatusCode::OK, "{vm}");
        let id = vm["vm"]["id"].as_str().ok_or("id")?.to_string();
        for action in ["start", "pause"] {
            let (status, body) = call(format!("/api/vms/{id}/{action}"), None).await?;
            assert_eq!(status, StatusCode::OK, "{action} {id}: {body}");
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (idle_rss, cpu0) = usage(server.pid())?;
    tokio::time::sleep(WINDOW).await;
    let idle_cpu = (usage(server.pid())?.1 - cpu0) / WINDOW.as_secs_f64();

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{}/ws/metrics?token={token}", server.addr))
                .await?;
        clients.push(ws);
    }
    let cpu0 = usage(server.pid())?.1;
    let until = tokio::time::Instant::now() + WINDOW;
    let heard = futures::future::join_all(clients.into_iter().map(|mut ws| async move {
        let mut passes = Vec::new();
        while let Ok(Some(Ok(message))) = tokio::time::timeout_at(until, ws.next()).await {
            let Ok(text) = message.into_text() else { continue };
            let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
            if v["type"] == "metrics" {
                passes.push((v["ts"].as_i64().unwrap_or_default(), v["vms"].as_array().map_or(0, Vec::len)));
            }
        }
        passes
    }))
    .await;
    let (load_rss, cpu1) = usage(server.pid())?;
    let load_cpu = (cpu1 - cpu0) / WINDOW.as_secs_f64();

    let least = heard.iter().map(Vec::len).min().unwrap_or(0);
    let first: Vec<i64> = heard.first().map(|p| p.iter().map(|p| p.0).collect()).unwrap_or_default();
    assert!(
        least >= WINDOW.as_secs() as usize - 2,
        "a client heard only {least} passes in {WINDOW:?}: {first:?}"
    );
    for passes in &heard {
        for pair in passes.windows(2) {
            assert!(
                pair[1].0 - pair[0].0 <= 2,
                "a pass was missed: {:?}",
                passes.iter().map(|p| p.0).collect::<Vec<_>>()
            );
        }
        assert!(passes.iter().all(|p| p.1 == VMS), "every pass holds every guest");
    }
    println!(
        "metrics load: {VMS} running guests at a 1 s interval; controller idle RSS {idle_rss:.1} MiB, CPU {:.1}%; \
         with {CLIENTS} /ws/metrics clients RSS {load_rss:.1} MiB, CPU {:.1}%; every client heard {least}+ passes in {} s, none missed",
        idle_cpu * 100.0,
        load_cpu * 100.0,
        WINDOW.as_secs()
    );
    drop(server);
    Ok(())
}
