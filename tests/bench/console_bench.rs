//! Console proxy benchmark: throughput and round-trip latency through `/ws/vnc/{vm_id}`, compared
//! with a direct unix-socket connection and with Python `websockify` relaying the same socket, in
//! one run. Run it with `tests/bench/console_proxy.sh` (release build; needs QEMU and websockify).
//!
//! A real VM is started so the proxy path is the production one (ownership, status, socket path);
//! its `vnc.sock` is then replaced by a data server, because a VNC server cannot be asked for a
//! fixed amount of data. The data server answers `T` with `TOTAL` bytes and echoes after `E`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const TOTAL: usize = 1 << 30;
const ROUND_TRIPS: usize = 2000;
const MESSAGE: usize = 64;
const ROUNDS: usize = 5;

async fn data_server(listener: UnixListener) {
    let block = vec![0x5au8; 64 * 1024];
    while let Ok((mut conn, _)) = listener.accept().await {
        let block = block.clone();
        tokio::spawn(async move {
            let mut cmd = [0u8; 1];
            if conn.read_exact(&mut cmd).await.is_err() {
                return;
            }
            if cmd[0] == b'T' {
                let mut left = TOTAL;
                while left > 0 {
                    let n = left.min(block.len());
                    if conn.write_all(&block[..n]).await.is_err() {
                        return;
                    }
                    left -= n;
                }
                // Held open until the client has it all: websockify drops what it has not yet
                // relayed when its target closes.
                let _ = conn.read(&mut cmd).await;
            } else {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

#[derive(Default)]
struct Result {
    mib_s: f64,
    p50_us: f64,
    p99_us: f64,
}

fn median(mut runs: Vec<Result>) -> Result {
    let mid = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut mib: Vec<f64> = runs.iter().map(|r| r.mib_s).collect();
    let mut p50: Vec<f64> = runs.iter().map(|r| r.p50_us).collect();
    let mut p99: Vec<f64> = runs.drain(..).map(|r| r.p99_us).collect();
    Result { mib_s: mid(&mut mib), p50_us: mid(&mut p50), p99_us: mid(&mut p99) }
}

fn summarize(bytes: usize, elapsed: Duration, mut rtts: Vec<Duration>) -> Result {
    rtts.sort();
    let pick = |q: f64| rtts[((rtts.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    Result {
        mib_s: bytes as f64 / 1_048_576.0 / elapsed.as_secs_f64(),
        p50_us: pick(0.5),
        p99_us: pick(0.99),
    }
}

async fn direct(socket: &Path) -> std::result::Result<Result, Error> {
    let mut conn = UnixStream::connect(socket).await?;
    conn.write_all(b"T").await?;
    let start = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0;
    while got < TOTAL {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let elapsed = start.elapsed();
    let mut conn = UnixStream::connect(socket).await?;
    conn.write_all(b"E").await?;
    let msg = [7u8; MESSAGE];
    let mut rtts = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let t = Instant::now();
        conn.write_all(&msg).await?;
        conn.read_exact(&mut buf[..MESSAGE]).await?;
        rtts.push(t.elapsed());
    }
    Ok(summarize(got, elapsed, rtts))
}

async fn ws_open(url: &str) -> std::result::Result<Ws, Error> {
    let mut request = url.into_client_request()?;
    request.headers_mut().insert("sec-websocket-protocol", "binary".parse()?);
    Ok(tokio_tungstenite::connect_async(request).await?.0)
}

async fn ws_read(ws: &mut Ws, want: usize) -> std::result::Result<usize, Error> {
    let mut got = 0;
    while got < want {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => got += b.len(),
            Some(Ok(_)) => {}
            other => return Err(format!("socket ended after {got} bytes: {other:?}").into()),
        }
    }
    Ok(got)
}

/// Downstream throughput with a client that costs next to nothing: a hand-made handshake, then
/// frame headers are skipped in place and payload bytes counted, so the relay is what is measured.
async fn raw_download(addr: &str, path: &str) -> std::result::Result<(usize, Duration), Error> {
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: binary\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await?;
    let mut buf = vec![0u8; 1 << 20];
    let mut have = 0;
    let body_at = loop {
        let n = conn.read(&mut buf[have..]).await?;
        if n == 0 {
            return Err("handshake: connection closed".into());
        }
        have += n;
        if let Some(i) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        return Err(format!("handshake refused: {}", String::from_utf8_lossy(&buf[..body_at])).into());
    }
    // A masked binary frame with an all-zero key carries `T` as is.
    conn.write_all(&[0x82, 0x81, 0, 0, 0, 0, b'T']).await?;
    let start = Instant::now();
    // Walks frames in place: only the bytes of a header cut by a read are carried over.
    let (mut got, mut left_in_frame, mut carried) = (0usize, 0usize, have - body_at);
    buf.copy_within(body_at..have, 0);
    loop {
        let mut at = 0;
        while at < carried {
            if left_in_frame > 0 {
                let take = left_in_frame.min(carried - at);
                (left_in_frame, got, at) = (left_in_frame - take, got + take, at + take);
                continue;
            }
            // A frame header: 2 bytes, then a 2- or 8-byte length (server frames are not masked).
            let rest = &buf[at..carried];
            let (len, header) = match rest {
                [_, 126, a, b, ..] => (u16::from_be_bytes([*a, *b]) as usize, 4),
                [_, 127, ..] if rest.len() >= 10 => {
                    (u64::from_be_bytes(rest[2..10].try_into()?) as usize, 10)
                }
                [_, l, ..] if *l < 126 => ((*l & 0x7f) as usize, 2),
                _ => break, // An incomplete header: keep it for the next read.
            };
            (left_in_frame, at) = (len, at + header);
        }
        if got >= TOTAL {
            break;
        }
        buf.copy_within(at..carried, 0);
        carried -= at;
        let n = conn.read(&mut buf[carried..]).await?;
        if n == 0 {
            return Err(format!("{addr}{path}: closed after {got} bytes").into());
        }
        carried += n;
    }
    Ok((got.min(TOTAL), start.elapsed()))
}

async fn through_websocket(addr: &str, path: &str) -> std::result::Result<Result, Error> {
    let (got, elapsed) = raw_download(addr, path).await?;
    let url = format!("ws://{addr}{path}");
    let url = url.as_str();
    let mut ws = ws_open(url).await?;
    ws.send(Message::Binary(b"E".to_vec().into())).await?;
    let mut rtts = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let t = Instant::now();
        ws.send(Message::Binary(vec![7u8; MESSAGE].into())).await?;
        ws_read(&mut ws, MESSAGE).await?;
        rtts.push(t.elapsed());
    }
    Ok(summarize(got, elapsed, rtts))
}

async fn call(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    token: &str,
    body: Value,
) -> std::result::Result<Value, Error> {
    Ok(client
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

#[tokio::main]
async fn main() -> std::result::Result<(), Error> {
    let exe = std::env::current_exe()?;
    let release = exe.parent().and_then(Path::parent).ok_or("no target dir")?.to_path_buf();
    let data = tempfile::Builder::new().prefix("fvconsole-").tempdir_in("/var/tmp")?;
    // The controller runs as it does in production: its own process, beside websockify's.
    let port = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let base = format!("http://{addr}");
    let mut fastvm = std::process::Command::new(release.join("fastvm"))
        .args(["serve", "--listen", &addr])
        .env("FASTVM_DATA_DIR", data.path())
        .env("FASTVM_BCRYPT_COST", "4")
        .env("FASTVM_ACCEL", "tcg")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    for _ in 0..200 {
        if reqwest::get(format!("{base}/api/health")).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let client = reqwest::Client::new();
    let login: Value = client
        .post(format!("{base}/api/auth/login"))
        .json(&json!({"username": "admin", "password": "admin"}))
        .send()
        .await?
        .json()
        .await?;
    let token = login["access_token"].as_str().ok_or("no token")?.to_string();
    let vm = call(
        &client,
        &base,
        "/api/vms",
        &token,
        json!({"name": "bench", "memory": 256, "cpus": 1, "disk_size": 1}),
    )
    .await?;
    let id = vm["vm"]["id"].as_str().ok_or("no id")?.to_string();
    call(&client, &base, &format!("/api/vms/{id}/start"), &token, json!({})).await?;

    // The guest is paused so its emulation does not compete with the measurement for the CPU.
    controller::qmp::run(
        &data.path().join("run").join(&id).join("qmp.sock"),
        &controller::qmp::Command::stop(),
    )
    .await?;
    let socket: PathBuf = data.path().join("run").join(&id).join("vnc.sock");
    std::fs::remove_file(&socket)?;
    tokio::spawn(data_server(UnixListener::bind(&socket)?));

    let wsfy_port = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
    let mut websockify = std::process::Command::new("websockify")
        .arg(format!("--unix-target={}", socket.display()))
        .arg(format!("127.0.0.1:{wsfy_port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("websockify (apt-get install websockify): {e}"))?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Rounds alternate between the three paths, so a noisy neighbour hits them alike; medians.
    let (proxy_path, websockify_addr) =
        (format!("/ws/vnc/{id}?token={token}"), format!("127.0.0.1:{wsfy_port}"));
    let measured = async {
        let mut rounds: [Vec<Result>; 3] = Default::default();
        for _ in 0..ROUNDS {
            rounds[0].push(direct(&socket).await?);
            rounds[1].push(through_websocket(&addr, &proxy_path).await?);
            rounds[2].push(through_websocket(&websockify_addr, "/").await?);
        }
        Ok::<_, Error>(rounds)
    }
    .await;
    // Cleaned up whatever happened: the VM outlives a killed controller (by design), so it is
    // stopped through the API first.
    let _ = websockify.kill();
    let _ = websockify.wait();
    let _ = client.post(format!("{base}/api/vms/{id}/stop?force=true")).bearer_auth(&token).send().await;
    let _ = fastvm.kill();
    let _ = fastvm.wait();
    let names = ["direct unix socket", "fastvm /ws/vnc proxy", "websockify"];
    let runs: Vec<(&str, Result)> = names.into_iter().zip(measured?.into_iter().map(median)).collect();

    println!(
        "Console proxy benchmark ({} MiB downstream, {ROUND_TRIPS} round trips of {MESSAGE} bytes, \
         medians of {ROUNDS} rounds)",
        TOTAL >> 20
    );
    println!("{:<22} {:>12} {:>12} {:>12}", "", "MiB/s", "RTT p50", "RTT p99");
    for (name, r) in &runs {
        println!("{name:<22} {:>12.0} {:>10.0}us {:>10.0}us", r.mib_s, r.p50_us, r.p99_us);
    }
    let (proxy, wsfy) = (&runs[1].1, &runs[2].1);
    println!(
        "fastvm vs websockify: {:.1}x throughput, {:.1}x lower p50 latency",
        proxy.mib_s / wsfy.mib_s,
        wsfy.p50_us / proxy.p50_us
    );
    Ok(())
}
