//! Metrics on a real guest: CPU follows a busy loop, disk counters follow reads, memory matches the
//! QEMU process, the guest agent reports the guest's hostname and address, /ws/metrics pushes passes
//! and state changes, /metrics parses as Prometheus text and is guarded, and history survives a
//! restart.

mod common;

use std::time::{Duration, Instant};

use common::guest::{guest_iso, type_on_serial, wait_serial_async};
use common::{TestResult, TestServer};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON message on the socket whose `type` is `kind` (and that `pick` accepts), within `within`.
async fn next_of(ws: &mut Ws, kind: &str, within: Duration, pick: impl Fn(&Value) -> bool) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Text(text) = msg {
            let v: Value = serde_json::from_str(&text).ok()?;
            if v["type"] == kind && pick(&v) {
                return Some(v);
            }
        }
    }
    None
}

async fn vm_reading(s: &TestServer, token: &str, id: &str) -> Value {
    s.get(&format!("/api/vms/{id}/metrics"), token).await.1
}

/// Mean CPU % of the VM over `n` collection passes.
async fn cpu_over(s: &TestServer, token: &str, id: &str, n: usize) -> f64 {
    let mut total = 0.0;
    for _ in 0..n {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        total += vm_reading(s, token, id).await["cpu_percent"].as_f64().unwrap_or(0.0);
    }
    total / n as f64
}

/// The VM's CPU % once the guest has gone quiet: the mean of three passes below `quiet`, waiting up to
/// a minute for it. A guest just after boot may still be busy for a while (more so under TCG on a
/// loaded host), and a busy loop can only be told apart from a guest at rest.
async fn cpu_at_rest(s: &TestServer, token: &str, id: &str, run_dir: &std::path::Path, quiet: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        last.push(vm_reading(s, token, id).await["cpu_percent"].as_f64().unwrap_or(0.0));
        let recent = &last[last.len().saturating_sub(3)..];
        let mean = recent.iter().sum::<f64>() / recent.len() as f64;
        if recent.len() == 3 && mean < quiet {
            return mean;
        }
        if Instant::now() > deadline {
            panic!("the guest never went quiet: CPU {last:?}\nserial tail:\n{}", serial_tail(run_dir));
        }
    }
}

fn serial_tail(run_dir: &std::path::Path) -> String {
    let log = std::fs::read(run_dir.join("serial.log")).unwrap_or_default();
    String::from_utf8_lossy(&log[log.len().saturating_sub(2000)..]).into_owned()
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .unwrap_or(0)
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_follow_a_real_guest_and_are_pushed() -> TestResult {
    let Some(iso) = guest_iso() else { return Ok(()) };
    let s = TestServer::start_with(|c| c.metrics_interval = 1).await;
    let admin = s.admin_token().await;

    // A socket without a token is refused; with one, a message arrives within two intervals.
    let (mut anonymous, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws/metrics", s.addr)).await?;
    let refused = tokio::time::timeout(Duration::from_secs(5), anonymous.next()).await?;
    assert!(
        matches!(&refused, Some(Ok(Message::Close(Some(f)))) if u16::from(f.code) == 4401),
        "{refused:?}"
    );
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws/metrics?token={admin}", s.addr)).await?;
    let started = Instant::now();
    let first =
        next_of(&mut ws, "metrics", Duration::from_secs(3), |_| true).await.ok_or("no metrics message")?;
    assert!(
        started.elapsed() <= Duration::from_secs(2) + Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        first["host"]["cpu_percent"].is_number() && first["host"]["memory_total_gb"].as_f64() > Some(0.0)
    );
    // A ticket opens it too, so the token need not go into a URL.
    let (_, ticket) = s.get("/api/metrics/ticket", &admin).await;
    let url = format!("ws://{}{}", s.addr, ticket["ws_url"].as_str().ok_or("ws_url")?);
    let (mut by_ticket, _) = tokio_tungstenite::connect_async(url).await?;
    next_of(&mut by_ticket, "metrics", Duration::from_secs(3), |_| true)
        .await
        .ok_or("no message by ticket")?;
    drop(by_ticket);
    let (status, host) = s.get("/api/system/metrics", &admin).await;
    assert_eq!(status, StatusCode::OK);
    for field in
        ["cpu_percent", "memory_used_gb", "memory_percent", "disk_total_gb", "disk_used_gb", "disk_percent"]
    {
        assert!(host[field].is_number(), "{field}: {host}");
    }
    assert!(host["cpu_per_core"].as_array().is_some_and(|c| !c.is_empty()));

    let (id, run_dir) = s.boot_guest(&admin, "measured", &iso).await;
    wait_serial_async(&run_dir, "FASTVM-IP eth0", 1, Duration::from_secs(60)).await;
    // The guest reaches the host's loopback as 10.0.2.2 (QEMU 7.2's user network has no option
    // against it): /metrics, like the API, answers it only with a token.
    let wget = format!(
        "wget -O- http://10.0.2.2:{}/metrics 2>&1 | head -c 300; echo; echo WGET-DONE",
        s.addr.port()
    );
    type_on_serial(&run_dir, &wget)?;
    wait_serial_async(&run_dir, "\nWGET-DONE", 1, Duration::from_secs(60)).await;
    let serial = std::fs::read_to_string(run_dir.join("serial.log"))?;
    assert!(
        serial.contains("401 Unauthorized") && !serial.contains("fastvm_host_cpu_percent"),
        "a guest read /metrics: {}",
        serial.get(serial.len().saturating_sub(600)..).unwrap_or(&serial)
    );

    // Memory: within 10% of what the kernel says QEMU's resident set is (a reading is from the last
    // pass and the resident set moves, so a few passes are allowed to agree).
    let pid: u32 = std::fs::read_to_string(run_dir.join("qemu.pid"))?.trim().parse()?;
    let mut compared = Vec::new();
    let mut agreed = false;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let ours = vm_reading(&s, &admin, &id).await["memory_bytes"].as_f64().unwrap_or(0.0);
        let kernel = rss_bytes(pid) as f64;
        compared.push((ours, kernel));
        agreed = kernel > 0.0 && (ours - kernel).abs() / kernel < 0.10;
        if agreed {
            break;
        }
    }
    assert!(agreed, "metrics vs VmRSS: {compared:?}");

    // CPU rises with a busy loop in the guest and falls once it is killed.
    let idle = cpu_at_rest(&s, &admin, &id, &run_dir, 30.0).await;
    type_on_serial(&run_dir, "while :; do :; done &")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy = cpu_over(&s, &admin, &id, 3).await;
    type_on_serial(&run_dir, "kill $!")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = cpu_over(&s, &admin, &id, 3).await;
    let tail = || serial_tail(&run_dir);
    assert!(busy > idle + 30.0 && busy > 60.0, "idle {idle}%, busy {busy}%\n{}", tail());
    assert!(after < busy - 30.0, "busy {busy}%, after {after}%\n{}", tail());

    // Disk counters grow when the guest reads its disk.
    let before = vm_reading(&s, &admin, &id).await["disk_read_bytes_total"].as_u64().unwrap_or(0);
    type_on_serial(&run_dir, "dd if=/dev/vda of=/dev/null bs=1M count=64 && echo READ-DONE")?;
    wait_serial_async(&run_dir, "\nREAD-DONE", 1, Duration::from_secs(60)).await;
    let counted = Instant::now() + Duration::from_secs(30);
    loop {
        let reading = vm_reading(&s, &admin, &id).await;
        let grown = reading["disk_read_bytes_total"].as_u64().unwrap_or(0).saturating_sub(before);
        if grown >= 64 << 20 {
            break;
        }
        assert!(Instant::now() < counted, "read counter grew by {grown}: {reading}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The guest agent: hostname and the NIC's address, also in the VM list.
    // A TCG guest on a loaded host can miss the agent's answer window once; it is asked again.
    let answered = Instant::now() + Duration::from_secs(30);
    let info = loop {
        let (status, info) = s.get(&format!("/api/vms/{id}/guest-info"), &admin).await;
        assert_eq!(status, StatusCode::OK);
        if info["available"] == true {
            break info;
        }
        assert!(Instant::now() < answered, "the guest agent never answered: {info}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(info["hostname"].as_str().is_some_and(|h| !h.is_empty()), "{info}");
    assert!(info["ip_addresses"].as_array().is_some_and(|a| a.iter().any(|ip| ip == "10.0.2.15")), "{info}");
    let (_, vms) = s.get("/api/vms", &admin).await;
    let listed = vms.as_array().and_then(|l| l.iter().find(|v| v["id"] == id.as_str())).ok_or("listed")?;
    assert!(
        listed["ip_addresses"].as_array().is_some_and(|a| a.iter().any(|ip| ip == "10.0.2.15")),
        "{listed}"
    );

    // A VM without an agent answers quickly that there is none.
    let (_, quiet) = s
        .post("/api/vms", &admin, json!({"name": "no-agent", "memory": 256, "cpus": 1, "disk_size": 1}))
        .await;
    let quiet_id = quiet["vm"]["id"].as_str().ok_or("id")?.to_string();
    let (status, _) = s.call(Method::POST, &format!("/api/vms/{quiet_id}/start"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let asked = Instant::now();
    let (_, info) = s.get(&format!("/api/vms/{quiet_id}/guest-info"), &admin).await;
    assert_eq!(info["available"], false, "{info}");
    assert!(info["reason"].is_string());
    assert!(asked.elapsed() < Duration::from_secs(5), "took {:?}", asked.elapsed());

    // Resizing the display needs the agent too: out-of-range sizes are refused first.
    let resize = format!("/api/vms/{quiet_id}/display/resize");
    let (status, body) = s.post(&resize, &admin, json!({"width": 100, "height": 768})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("width")), "{body}");
    let (status, body) = s.post(&resize, &admin, json!({"width": 1024, "height": 768})).await;
    assert_eq!(status, StatusCode::CONFLICT, "no agent is the guest's state, not a server error: {body}");
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("guest agent")), "{body}");

    // A stop is pushed within 2 s.
    let stop_path = format!("/api/vms/{quiet_id}/stop?force=true");
    let (status, _) = s.call(Method::POST, &stop_path, Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let stopped_at = Instant::now();
    let stopped = |v: &Value| v["vm_id"] == quiet_id.as_str() && v["event"] == "stopped";
    let event =
        next_of(&mut ws, "vm_state", Duration::from_secs(2), stopped).await.ok_or("no vm_state event")?;
    assert_eq!(event["status"], "stopped");
    assert!(stopped_at.elapsed() < Duration::from_secs(2));

    // Prometheus text that a parser accepts, with host, VM and HTTP series.
    let text = s.client.get(s.url("/metrics")).bearer_auth(&admin).send().await?.text().await?;
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines)?;
    let names: Vec<&str> = scrape.samples.iter().map(|x| x.metric.as_str()).collect();
    for name in ["fastvm_host_cpu_percent", "fastvm_vm_cpu_percent", "fastvm_http_requests_total"] {
        assert!(names.contains(&name), "{name} missing");
    }
    assert!(
        scrape.samples.iter().any(|x| x.metric == "fastvm_vm_memory_bytes"
            && x.labels.get("vm_id") == Some(id.as_str())
            && x.labels.get("vm_name") == Some("measured")),
        "VM labels"
    );
    assert!(names.contains(&"fastvm_http_request_duration_seconds_count"), "histogram");

    // The last ten minutes come from memory and never span more than ten minutes.
    let (_, history) = s.get(&format!("/api/vms/{id}/metrics/history?minutes=10"), &admin).await;
    let points = history.as_array().ok_or("history")?;
    assert!(points.len() >= 5, "{} points", points.len());
    let span =
        points.last().and_then(|p| p["ts"].as_i64()).unwrap_or(0) - points[0]["ts"].as_i64().unwrap_or(0);
    assert!(span <= 600);
    let (status, _) = s.get("/api/metrics/history?minutes=1441", &admin).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_a_restart_and_metrics_are_guarded() -> TestResult {
    let s = TestServer::start_with(|c| {
        c.metrics_interval = 1;
        c.metrics_allow = "10.99.0.0/16".into();
    })
    .await;
    let admin = s.admin_token().await;
    s.create_user(&admin, "carol", "carol-password-1", false).await;
    let carol = s.token("carol", "carol-password-1").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // Not an allowed address: a token is needed, and only an admin's will do.
    let r = s.client.get(s.url("/metrics")).send().await?;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = s.client.get(s.url("/metrics")).bearer_auth(&carol).send().await?;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = s.client.get(s.url("/metrics")).bearer_auth(&admin).send().await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"].to_str()?.starts_with("text/plain; version=0.0.4"));

    let (_, stored) = s.get("/api/metrics/history?minutes=60", &admin).await;
    let first_ts = stored["host"][0]["ts"].as_i64().ok_or("no stored host point")?;
    let dir = s.stop().await;
    let s = TestServer::start_in(dir, |c| c.metrics_interval = 1).await;
    let admin = s.admin_token().await;
    let (_, after) = s.get("/api/metrics/history?minutes=60", &admin).await;
    let points = after["host"].as_array().ok_or("host")?;
    assert!(points.iter().any(|p| p["ts"].as_i64() == Some(first_ts)), "the stored point survived: {after}");
    Ok(())
}
