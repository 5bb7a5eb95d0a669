//! The serial console through the controller's WebSocket on a real guest: several viewers share it,
//! each first sees what came before, what one types runs in the guest, and whoever may not look is
//! refused. The serial socket is let go with the last viewer. And the screen as a PNG.

mod common;

use std::time::Duration;

use common::guest::{guest_iso, type_on_serial, wait_serial_async};
use common::{TestResult, TestServer};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(30);

async fn open(s: &TestServer, path: &str) -> Result<Ws, Box<dyn std::error::Error>> {
    Ok(tokio_tungstenite::connect_async(format!("ws://{}{path}", s.addr)).await?.0)
}

/// Reads output until `needle` shows up; returns everything read.
async fn read_until(ws: &mut Ws, needle: &str) -> Result<String, Box<dyn std::error::Error>> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !String::from_utf8_lossy(&seen).contains(needle) {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => seen.extend_from_slice(&b),
            Ok(Some(Ok(_))) => {}
            other => {
                return Err(
                    format!("no {needle:?} ({other:?}); saw: {}", String::from_utf8_lossy(&seen)).into()
                );
            }
        }
    }
    Ok(String::from_utf8_lossy(&seen).into_owned())
}

async fn close_code(ws: &mut Ws) -> Option<u16> {
    while let Ok(Some(msg)) = tokio::time::timeout(WAIT, ws.next()).await {
        match msg {
            Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_share_the_serial_console() -> TestResult {
    let Some(iso) = guest_iso() else { return Ok(()) };
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let bob = s.regular_user(&admin, "bob").await;
    let (id, run_dir) = s.boot_guest(&admin, "serial", &iso).await;

    let (status, access) = s.get(&format!("/api/vms/{id}/serial"), &admin).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{access}");
    let url = access["ws_url"].as_str().ok_or("ws_url")?.to_string();
    let mut first = open(&s, &url).await?;
    let mut second = open(&s, &url).await?;
    // Each viewer first sees what the guest wrote before it came.
    read_until(&mut first, "FASTVM-GUEST-READY").await?;
    read_until(&mut second, "FASTVM-GUEST-READY").await?;
    // What one types runs in the guest, and both see what it prints.
    first.send(Message::Binary(b"echo FASTVM-SERIAL-$((40+2))\n".to_vec().into())).await?;
    read_until(&mut first, "FASTVM-SERIAL-42").await?;
    read_until(&mut second, "FASTVM-SERIAL-42").await?;
    wait_serial_async(&run_dir, "FASTVM-SERIAL-42", 1, WAIT).await;

    // Refused: no ticket, a made-up one, a ticket of another kind, another user's VM.
    assert_eq!(close_code(&mut open(&s, &format!("/ws/serial/{id}")).await?).await, Some(4401));
    let fake = format!("/ws/serial/{id}?ticket={}", "0".repeat(64));
    assert_eq!(close_code(&mut open(&s, &fake).await?).await, Some(4401));
    let (_, vnc) = s.get(&format!("/api/vms/{id}/vnc"), &admin).await;
    let vnc_ticket = vnc["ws_url"].as_str().and_then(|u| u.split("ticket=").nth(1)).ok_or("vnc ticket")?;
    let other_kind = format!("/ws/serial/{id}?ticket={vnc_ticket}");
    assert_eq!(close_code(&mut open(&s, &other_kind).await?).await, Some(4403));
    assert_eq!(close_code(&mut open(&s, &format!("/ws/serial/{id}?token={bob}")).await?).await, Some(4403));
    assert_eq!(s.get(&format!("/api/vms/{id}/serial"), &bob).await.0, reqwest::StatusCode::NOT_FOUND);

    // The screen as a PNG: the guest's resolution, or the width asked for; many viewers, one dump.
    let shot = |query: &str| {
        let url = s.url(&format!("/api/vms/{id}/screenshot{query}"));
        s.client.get(url).bearer_auth(&admin).send()
    };
    let r = shot("").await?;
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "image/png");
    let full = image::load_from_memory(&r.bytes().await?)?.to_rgb8();
    assert!(full.width() >= 640 && full.height() >= 400, "{}x{}", full.width(), full.height());
    let colours: std::collections::HashSet<[u8; 3]> = full.pixels().map(|p| p.0).collect();
    assert!(colours.len() > 1, "a blank screen");
    let small = image::load_from_memory(&shot("?width=160").await?.bytes().await?)?;
    assert_eq!(small.width(), 160);
    let many = futures::future::join_all((0..10).map(|_| shot("?width=160"))).await;
    let mut bodies = std::collections::HashSet::new();
    for r in many {
        bodies.insert(r?.bytes().await?);
    }
    assert_eq!(bodies.len(), 1, "ten viewers within a few seconds get one dump");
    assert_eq!(shot("?width=2").await?.status(), reqwest::StatusCode::BAD_REQUEST);
    let (status, _) = s.get(&format!("/api/vms/{id}/screenshot"), &bob).await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND, "not another user's screen");

    // With the last viewer gone, the socket is free for anyone else again.
    first.close(None).await?;
    second.close(None).await?;
    drop((first, second));
    type_on_serial(&run_dir, "echo AFTER-$((1+1))-VIEWERS")?;
    wait_serial_async(&run_dir, "AFTER-2-VIEWERS", 1, WAIT).await;

    let stop = format!("/api/vms/{id}/stop?force=true");
    assert_eq!(s.call(reqwest::Method::POST, &stop, Some(&admin), None).await.0, reqwest::StatusCode::OK);
    assert_eq!(shot("").await?.status(), reqwest::StatusCode::CONFLICT, "a stopped VM has no screen");
    Ok(())
}
