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
use super::websocket::{
    HEADROOM, Incoming, OP_BINARY, OP_PONG, Socket, put_header, read_frames, send_close, send_frame,
};

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

/// Closes a WebSocket with an application close code (4401, 4403, ...) and a reason, then waits
/// briefly for the client's side of the close so the frame is not lost to a reset.
pub async fn close(socket: Socket, code: u16, reason: &str) {
    let (mut reader, mut writer) = socket.stream.into_split();
    if send_close(&mut writer, code, reason).await.is_ok() {
        let _ = writer.shutdown().await;
        let mut sink = [0u8; 512];
        let drain = async { while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {} };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
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
                _ = cut.changed() => break (1000, "disconnected by an operator"),
            }
        };
        let _ = send_close(&mut writer, code, reason).await;
        let _ = writer.shutdown().await;
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
