//! Moving console bytes: browser WebSockets and remote-viewer TCP connections to the VM's unix
//! sockets, and the registry that lets an operator cut every proxied connection of a VM.
//!
//! Back-pressure comes from awaiting each write: while a slow browser has not taken a frame, the
//! relay reads nothing more from QEMU, so nothing piles up in the controller.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, watch};

use super::Kind;
use wsframes::{
    HEADROOM, Incoming, OP_BINARY, OP_PONG, Socket, put_header, read_frames, send_close, send_frame,
};

/// Largest chunk read from QEMU per frame: big frames keep per-frame costs low on bulk transfers
/// (a display update), while a small read still goes out at once.
const CHUNK: usize = 256 * 1024;
/// How long a browser has to take its close frame (and answer it) before the connection is dropped.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Live proxied connections per (VM, console kind). Each connection holds a receiver; a disconnect
/// bumps the generation, which every receiver of that VM and kind sees.
#[derive(Default)]
pub struct Connections {
    sessions: Mutex<HashMap<(String, Kind), watch::Sender<u64>>>,
}

impl Connections {
    /// Registers a connection; it ends when the returned receiver sees a change.
    pub fn join(&self, vm_id: &str, kind: Kind) -> watch::Receiver<u64> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.receiver_count() > 0);
        sessions.entry((vm_id.to_string(), kind)).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Ends every connection of that VM and kind; returns how many there were.
    pub fn disconnect(&self, vm_id: &str, kind: Kind) -> usize {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match sessions.get(&(vm_id.to_string(), kind)) {
            Some(s) => {
                let n = s.receiver_count();
                s.send_modify(|g| *g += 1);
                n
            }
            None => 0,
        }
    }
}

/// Closes a WebSocket with an application close code (4401, 4403, ...) and a reason, then waits
/// briefly for the client's side of the close so the frame is not lost to a reset.
pub async fn close(socket: Socket, code: u16, reason: &str) {
    let (mut reader, mut writer) = socket.stream.into_split();
    if send_close(&mut writer, code, reason).await.is_ok() {
        let _ = writer.shutdown().await;
        let mut sink = [0u8; 512];
        let drain = async { while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {} };
        let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
    }
}

/// Relays binary frames between a browser and the VM's console socket until either side ends or
/// the connection is cut.
pub async fn websocket(socket: Socket, path: &Path, mut cut: watch::Receiver<u64>) {
    let vm = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(socket = %path.display(), error = %e, "console socket unreachable");
            return close(socket, 1011, "the VM's console is not reachable").await;
        }
    };
    let (mut from_vm, mut to_vm) = vm.into_split();
    let (mut reader, mut writer) = socket.stream.into_split();
    let (asks, mut asked) = mpsc::channel(4);
    // Set on a disconnect; the sending side then closes the socket.
    let closing = tokio::sync::Notify::new();
    let upstream = async {
        // After a close the sending side answers it and ends the relay; after an error it is over.
        if let Ok(true) = read_frames(&mut reader, socket.early, &mut to_vm, &asks).await {
            std::future::pending::<()>().await;
        }
    };
    let downstream = async {
        // Bytes from QEMU land after room for the frame header, so one write sends the frame.
        let mut buf = vec![0u8; HEADROOM + CHUNK];
        let (code, reason) = loop {
            tokio::select! {
                read = from_vm.read(&mut buf[HEADROOM..]) => match read {
                    Ok(0) | Err(_) => break (1000, "the VM closed the console"),
                    Ok(n) => {
                        let Some(headroom) = buf.first_chunk_mut::<HEADROOM>() else { return };
                        let start = put_header(headroom, OP_BINARY, n);
                        if writer.write_all(&buf[start..HEADROOM + n]).await.is_err() {
                            return;
                        }
                    }
                },
                ask = asked.recv() => match ask {
                    Some(Incoming::Pong(payload)) => {
                        if send_frame(&mut writer, OP_PONG, &payload).await.is_err() {
                            return;
                        }
                    }
                    Some(Incoming::Close(code)) => break (code, ""),
                    None => return,
                },
                () = closing.notified() => break (1000, "disconnected by an operator"),
            }
        };
        let _ = send_close(&mut writer, code, reason).await;
        let _ = writer.shutdown().await;
    };
    let relay = async {
        tokio::select! {
            _ = upstream => {}
            _ = downstream => {}
        }
    };
    tokio::pin!(relay);
    tokio::select! {
        () = &mut relay => {}
        _ = cut.changed() => {
            // A browser that reads nothing keeps the sending side waiting in a write: it gets a
            // moment to take the close frame, then the connection is dropped.
            closing.notify_one();
            let _ = tokio::time::timeout(CLOSE_GRACE, relay).await;
        }
    }
}

/// Forwards a remote-viewer TCP connection to the VM's SPICE socket until either side ends or the
/// connection is cut.
pub async fn tcp(mut client: TcpStream, socket: &Path, mut cut: watch::Receiver<u64>) {
    let Ok(mut vm) = UnixStream::connect(socket).await else { return };
    let _ = client.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut vm) => {}
        _ = cut.changed() => {}
    }
    let _ = client.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use bytes::BytesMut;
    use tokio::net::{TcpListener, UnixListener};

    use super::*;

    /// A console that never stops sending, counting what relays have taken from it.
    async fn endless_console(listener: UnixListener, taken: Arc<AtomicU64>) {
        while let Ok((mut conn, _)) = listener.accept().await {
            let taken = taken.clone();
            tokio::spawn(async move {
                let block = vec![0x42u8; 64 * 1024];
                while conn.write_all(&block).await.is_ok() {
                    taken.fetch_add(block.len() as u64, Ordering::Relaxed);
                }
            });
        }
    }

    /// A browser's TCP connection with a relay to `path` behind it.
    async fn relayed(
        path: &Path,
        cut: watch::Receiver<u64>,
    ) -> anyhow::Result<(TcpStream, tokio::task::JoinHandle<()>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let browser = TcpStream::connect(listener.local_addr()?).await?;
        let (server_side, _) = listener.accept().await?;
        let path = path.to_path_buf();
        let relay = tokio::spawn(async move {
            websocket(Socket { stream: server_side, early: BytesMut::new() }, &path, cut).await
        });
        Ok((browser, relay))
    }

    /// Waits until a relay to a browser that reads nothing has taken some data from the console
    /// (more than the `start` count, read before the relay was made) and then stopped taking
    /// more; fails if it takes without bound. Sampled until it settles, so a loaded machine that
    /// fills the buffers slowly is not mistaken for a relay that never stops.
    async fn settles(taken: &AtomicU64, start: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let mut before = start;
        loop {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let now = taken.load(Ordering::Relaxed);
            let total = now - start;
            assert!(total < 64 << 20, "the relay took {total} bytes for a browser that reads nothing");
            if now > start && now - before <= 1 << 20 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still taking data from the console: {before} -> {now}"
            );
            before = now;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_browser_that_does_not_read_holds_the_console_back() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("vnc.sock");
        let taken = Arc::new(AtomicU64::new(0));
        tokio::spawn(endless_console(UnixListener::bind(&path)?, taken.clone()));
        let (cut_tx, cut) = watch::channel(0u64);
        let (mut browser, relay) = relayed(&path, cut).await?;

        // The browser reads nothing: once the socket buffers on the way are full, the relay
        // stops taking from the console.
        settles(&taken, 0).await;

        // Once the browser reads, frames flow again: binary frames, unmasked, of console bytes.
        let mut head = [0u8; 10];
        browser.read_exact(&mut head[..2]).await?;
        assert_eq!(head[0], 0x82, "a final binary frame");
        let len = match head[1] {
            126 => {
                browser.read_exact(&mut head[2..4]).await?;
                u64::from(u16::from_be_bytes([head[2], head[3]]))
            }
            127 => {
                browser.read_exact(&mut head[2..10]).await?;
                u64::from_be_bytes(head[2..10].try_into()?)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; usize::try_from(len)?];
        browser.read_exact(&mut payload).await?;
        assert!(!payload.is_empty() && payload.iter().all(|&b| b == 0x42));

        // An operator's disconnect ends the relay, whose last frame is a close.
        cut_tx.send_modify(|g| *g += 1);
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), browser.read_to_end(&mut rest)).await??;
        tokio::time::timeout(Duration::from_secs(5), relay).await??;
        let close = b"disconnected by an operator";
        assert!(rest.windows(close.len()).any(|w| w == close), "no close frame at the end");

        // A browser that never reads cannot hold a disconnect off: it is dropped after the grace.
        let start = taken.load(Ordering::Relaxed);
        let (_stuck, relay) = relayed(&path, cut_tx.subscribe()).await?;
        // Buffers full first: a close frame that still fits would end the relay at once.
        settles(&taken, start).await;
        let started = std::time::Instant::now();
        cut_tx.send_modify(|g| *g += 1);
        tokio::time::timeout(CLOSE_GRACE + Duration::from_secs(3), relay).await??;
        assert!(started.elapsed() >= CLOSE_GRACE, "dropped only after the grace, not at once");
        Ok(())
    }
}
