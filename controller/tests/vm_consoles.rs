//! Consoles on real QEMU: the WebSocket proxy reaches SPICE and VNC, refuses whoever may not look,
//! cuts connections on request, and the remote-viewer port enforces the SPICE password it hands out.

mod common;

use std::time::Duration;

use common::{TestResult, TestServer};
use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use rsa::pkcs8::DecodePublicKey;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Long enough for every check that needs a live ticket or SPICE password on a loaded machine
/// (two UEFI guests under TCG), short enough to wait out for the expiry checks.
const TICKET_TTL: u64 = 15;
const WAIT: Duration = Duration::from_secs(10);

/// Opens a console WebSocket asking for the `binary` subprotocol, and checks it is echoed.
async fn open(s: &TestServer, path: &str) -> Result<Ws, Box<dyn std::error::Error>> {
    let mut request = format!("ws://{}{path}", s.addr).into_client_request()?;
    request.headers_mut().insert("sec-websocket-protocol", "binary".parse()?);
    let (ws, response) = tokio_tungstenite::connect_async(request).await?;
    assert_eq!(
        response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()),
        Some("binary"),
        "the subprotocol is echoed"
    );
    Ok(ws)
}

/// The close code the server ends the socket with.
async fn close_code(ws: &mut Ws) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, ws.next()).await {
        match msg {
            Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
    None
}

async fn refused_with(s: &TestServer, path: &str) -> Option<u16> {
    let mut ws = open(s, path).await.ok()?;
    close_code(&mut ws).await
}

/// Reads binary frames until `n` bytes arrived.
async fn read_bytes(ws: &mut Ws, n: usize) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(WAIT, ws.next()).await? {
            Some(Ok(Message::Binary(b))) => got.extend_from_slice(&b),
            Some(Ok(_)) => {}
            other => return Err(format!("socket ended early: {other:?}").into()),
        }
    }
    Ok(got)
}

/// A SPICE link message for the main channel with no capabilities (the legacy ticket exchange).
fn spice_link() -> Vec<u8> {
    let mut m = b"REDQ".to_vec();
    for v in [2u32, 2, 18, 0] {
        m.extend_from_slice(&v.to_le_bytes()); // major, minor, size; then connection_id
    }
    m.extend_from_slice(&[1, 0]); // channel type main, channel id 0
    for v in [0u32, 0, 18] {
        m.extend_from_slice(&v.to_le_bytes()); // common caps, channel caps, caps offset
    }
    m
}

/// A full SPICE login over TCP with `password`; returns the server's link result (0 = OK, 7 = denied).
async fn spice_login(port: u16, password: &str) -> Result<u32, Box<dyn std::error::Error>> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await?;
    conn.write_all(&spice_link()).await?;
    let mut header = [0u8; 16];
    conn.read_exact(&mut header).await?;
    assert_eq!(&header[..4], b"REDQ");
    let size = u32::from_le_bytes(header[12..16].try_into()?) as usize;
    let mut reply = vec![0u8; size];
    conn.read_exact(&mut reply).await?;
    assert_eq!(u32::from_le_bytes(reply[..4].try_into()?), 0, "link accepted");
    let key = rsa::RsaPublicKey::from_public_key_der(&reply[4..4 + 162])?;
    let mut secret = password.as_bytes().to_vec();
    secret.push(0);
    let encrypted = key.encrypt(&mut rsa::rand_core::OsRng, rsa::Oaep::new::<sha1::Sha1>(), &secret)?;
    conn.write_all(&encrypted).await?;
    let mut result = [0u8; 4];
    conn.read_exact(&mut result).await?;
    // Hang up and wait for the other end to follow, so the controller's forwarder is gone before
    // the test counts what a disconnect closes.
    conn.shutdown().await?;
    let mut rest = Vec::new();
    let _ = timeout(WAIT, conn.read_to_end(&mut rest)).await;
    Ok(u32::from_le_bytes(result))
}

fn vv_field<'a>(vv: &'a str, key: &str) -> Option<&'a str> {
    vv.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consoles_proxy_spice_and_vnc_to_real_qemu_and_keep_strangers_out() -> TestResult {
    let s = TestServer::start_with(|c| {
        c.console_ticket_ttl = TICKET_TTL;
        c.spice_port_base = 25800;
    })
    .await;
    let admin = s.admin_token().await;
    s.create_user(&admin, "bob", "bob-password-1", false).await;
    let bob = s.token("bob", "bob-password-1").await;
    // QEMU serves SPICE and VNC from the start: the guest need not boot anything.
    let mut ids = Vec::new();
    for (token, name) in [(&admin, "screen"), (&bob, "bobs")] {
        let (status, body) =
            s.post("/api/vms", token, json!({"name": name, "memory": 256, "cpus": 1, "disk_size": 1})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        ids.push(body["vm"]["id"].as_str().ok_or("id")?.to_string());
    }
    let (id, bobs) = (ids[0].clone(), ids[1].clone());
    let (status, body) = s.get(&format!("/api/vms/{id}/spice"), &admin).await;
    assert_eq!(status, StatusCode::CONFLICT, "not running yet: {body}");
    for (vm, token) in [(&id, &admin), (&bobs, &bob)] {
        let (status, body) = s.call(Method::POST, &format!("/api/vms/{vm}/start"), Some(token), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    // SPICE through the proxy: the link reply comes from QEMU.
    let (status, spice) = s.get(&format!("/api/vms/{id}/spice"), &admin).await;
    assert_eq!(status, StatusCode::OK, "{spice}");
    assert_eq!(spice["status"], "ready");
    assert!(spice["password"].as_str().is_some_and(|p| p.len() >= 16));
    assert_eq!(spice["vv_url"], format!("/api/vms/{id}/spice.vv"));
    let ws_url = spice["ws_url"].as_str().ok_or("ws_url")?.to_string();
    let ticket = ws_url.split("ticket=").nth(1).ok_or("ticket")?.to_string();
    assert!(ticket.len() >= 32, "at least 128 bits");
    let mut spice_ws = open(&s, &ws_url).await?;
    spice_ws.send(Message::Binary(spice_link().into())).await?;
    let reply = read_bytes(&mut spice_ws, 20).await?;
    assert_eq!(&reply[..4], b"REDQ", "{reply:?}");
    assert_eq!(u32::from_le_bytes(reply[16..20].try_into()?), 0, "link accepted");
    // The same ticket opens the session's other channels.
    let mut second = open(&s, &ws_url).await?;
    second.send(Message::Binary(spice_link().into())).await?;
    assert_eq!(&read_bytes(&mut second, 4).await?[..4], b"REDQ");
    // Closed properly, so the controller is done with it before the disconnect count below.
    second.close(None).await?;
    assert_eq!(close_code(&mut second).await, Some(1000), "the close is answered");

    // VNC through the proxy, with a ticket and with a bearer token.
    let (status, vnc) = s.get(&format!("/api/vms/{id}/vnc"), &admin).await;
    assert_eq!(status, StatusCode::OK, "{vnc}");
    let vnc_url = vnc["ws_url"].as_str().ok_or("ws_url")?.to_string();
    let mut vnc_ws = open(&s, &vnc_url).await?;
    assert_eq!(read_bytes(&mut vnc_ws, 12).await?, b"RFB 003.008\n");
    let mut by_token = open(&s, &format!("/ws/vnc/{id}?token={admin}")).await?;
    assert_eq!(read_bytes(&mut by_token, 12).await?, b"RFB 003.008\n");
    // The relay speaks the control frames a browser uses: a ping is answered, a close echoed.
    by_token.send(Message::Ping(b"are you there".to_vec().into())).await?;
    match timeout(Duration::from_secs(5), by_token.next()).await? {
        Some(Ok(Message::Pong(payload))) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    by_token.send(Message::Close(None)).await?;
    match timeout(Duration::from_secs(5), by_token.next()).await? {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected the close echoed, got {other:?}"),
    }
    drop(by_token);
    let (status, body) = s.get(&format!("/ws/vnc/{id}"), &admin).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a plain GET is not an upgrade: {body}");
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("WebSocket")), "{body}");

    // Refusals, each with its close code.
    assert_eq!(refused_with(&s, &format!("/ws/vnc/{id}")).await, Some(4401), "no credentials");
    assert_eq!(refused_with(&s, &format!("/ws/vnc/{id}?ticket=forged")).await, Some(4401));
    assert_eq!(refused_with(&s, &format!("/ws/vnc/{id}?token=not.a.jwt")).await, Some(4401));
    assert_eq!(refused_with(&s, &format!("/ws/vnc/{id}?token={bob}")).await, Some(4403), "not bob's VM");
    let (_, bobs_vnc) = s.get(&format!("/api/vms/{bobs}/vnc"), &bob).await;
    let bobs_ticket = bobs_vnc["ws_url"].as_str().ok_or("ws_url")?.split("ticket=").nth(1).ok_or("t")?;
    assert_eq!(
        refused_with(&s, &format!("/ws/vnc/{id}?ticket={bobs_ticket}")).await,
        Some(4403),
        "another user's ticket"
    );
    assert_eq!(
        refused_with(&s, &format!("/ws/vnc/{id}?ticket={ticket}")).await,
        Some(4403),
        "a SPICE ticket"
    );
    assert_eq!(refused_with(&s, &format!("/ws/vnc/nosuchvm?token={admin}")).await, Some(4404));
    let (status, _) = s.get(&format!("/api/vms/{id}/spice"), &bob).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "bob cannot ask for a ticket to the admin's VM");

    // remote-viewer: the .vv file's password opens the TCP port; a wrong one does not.
    let response = s.client.get(s.url(&format!("/api/vms/{id}/spice.vv"))).bearer_auth(&admin).send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-virt-viewer");
    let vv = response.text().await?;
    assert!(vv.starts_with("[virt-viewer]\n"), "{vv}");
    assert_eq!(vv_field(&vv, "type"), Some("spice"));
    assert_eq!(vv_field(&vv, "host"), Some("127.0.0.1"));
    assert_eq!(vv_field(&vv, "delete-this-file"), Some("1"));
    assert!(vv_field(&vv, "title").is_some_and(|t| t.contains("screen")));
    let port: u16 = vv_field(&vv, "port").ok_or("port")?.parse()?;
    assert_eq!(spice["spice_port"].as_u64(), Some(port.into()), "one port per VM");
    let password = vv_field(&vv, "password").ok_or("password")?.to_string();
    assert_eq!(spice_login(port, "wrong-password").await?, 7, "a wrong password is refused");
    assert_eq!(spice_login(port, &password).await?, 0, "the .vv password is accepted");
    let mut viewer = TcpStream::connect(("127.0.0.1", port)).await?;
    viewer.write_all(&spice_link()).await?;
    let mut header = [0u8; 4];
    viewer.read_exact(&mut header).await?;

    // Disconnect closes what is open: browser sockets and remote-viewer connections.
    let (status, body) =
        s.call(Method::POST, &format!("/api/vms/{id}/vnc/disconnect"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(close_code(&mut vnc_ws).await, Some(1000), "the VNC client sees the close");
    let (status, body) =
        s.call(Method::POST, &format!("/api/vms/{id}/spice/disconnect"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("Closed 2")), "{body}");
    assert_eq!(close_code(&mut spice_ws).await, Some(1000), "the SPICE client sees the close");
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(WAIT, viewer.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the remote-viewer connection is closed");

    // An expired ticket no longer opens anything.
    let (_, vnc) = s.get(&format!("/api/vms/{id}/vnc"), &admin).await;
    let url = vnc["ws_url"].as_str().ok_or("ws_url")?.to_string();
    tokio::time::sleep(Duration::from_secs(TICKET_TTL + 1)).await;
    assert_eq!(refused_with(&s, &url).await, Some(4401), "expired ticket");
    let spice_url = format!("/ws/spice/{id}?ticket={ticket}");
    assert_eq!(refused_with(&s, &spice_url).await, Some(4401), "a ticket used before, reused after expiry");

    // SPICE guest tools: reported once such an ISO is in the library.
    let (_, tools) = s.get("/api/spice-tools", &admin).await;
    assert_eq!(tools["available"], false, "{tools}");
    std::fs::write(s.data_dir.path().join("images").join("virtio-win-0.1.240.iso"), b"iso")?;
    let (_, tools) = s.get("/api/spice-tools", &admin).await;
    assert_eq!(tools["available"], true, "{tools}");
    assert!(tools["path"].as_str().is_some_and(|p| p.ends_with("virtio-win-0.1.240.iso")));

    // A stopped VM has no console.
    let (status, _) =
        s.call(Method::POST, &format!("/api/vms/{id}/stop?force=true"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s.get(&format!("/api/vms/{id}/vnc"), &admin).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(refused_with(&s, &format!("/ws/vnc/{id}?token={admin}")).await, Some(4409));
    Ok(())
}
