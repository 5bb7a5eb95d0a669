//! Moving console bytes: browser WebSockets and remote-viewer TCP connections to the VM's unix
//! sockets, and the registry that lets an operator cut every proxied connection of a VM.
//!
//! Back-pressure comes from awaiting each write: while a slow browser has not taken a frame, the
//! relay reads nothing more from QEMU, so nothing piles up in the controller.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::watch;

use super::Kind;

/// Largest chunk read from QEMU per frame: big frames keep per-frame costs low on bulk transfers
/// (a display update), while a small read still goes out at once.
const CHUNK: usize = 256 * 1024;

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

/// Closes a WebSocket with an application close code (4401, 4403, ...) and a reason.
pub async fn close(mut ws: WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame { code, reason: reason.into() };
    let _ = ws.send(Message::Close(Some(frame))).await;
}

/// Relays binary frames between a browser and the VM's console socket until either side ends or
/// the connection is cut.
pub async fn websocket(ws: WebSocket, socket: &Path, mut cut: watch::Receiver<u64>) {
    let stream = match UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(socket = %socket.display(), error = %e, "console socket unreachable");
            return close(ws, 1011, "the VM's console is not reachable").await;
        }
    };
    let (mut from_vm, mut to_vm) = stream.into_split();
    let (mut to_browser, mut from_browser) = ws.split();
    let upstream = async {
        while let Some(Ok(msg)) = from_browser.next().await {
            match msg {
                Message::Binary(data) if to_vm.write_all(&data).await.is_err() => break,
                Message::Close(_) => break,
                // Pings are answered by axum; text has no meaning on a console channel.
                _ => {}
            }
        }
    };
    let downstream = async {
        let mut buf = BytesMut::with_capacity(CHUNK);
        loop {
            if buf.capacity() < CHUNK / 4 {
                buf.reserve(CHUNK);
            }
            tokio::select! {
                read = from_vm.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => {
                        let _ = to_browser.send(Message::Close(Some(CloseFrame {
                            code: 1000,
                            reason: "the VM closed the console".into(),
                        }))).await;
                        break;
                    }
                    Ok(_) => {
                        // The frame takes the bytes as they are: no copy.
                        if to_browser.send(Message::Binary(buf.split().freeze())).await.is_err() {
                            break;
                        }
                    }
                },
                _ = cut.changed() => {
                    let _ = to_browser.send(Message::Close(Some(CloseFrame {
                        code: 1000,
                        reason: "disconnected by an operator".into(),
                    }))).await;
                    break;
                }
            }
        }
    };
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
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
