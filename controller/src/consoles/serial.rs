//! The serial console in the browser. QEMU's serial socket takes one client at a time, so the
//! controller holds one connection per VM while anyone watches and shares it: what the guest writes
//! goes to every viewer, what any viewer types goes to the guest. A viewer first gets the end of
//! `serial.log`, so it sees what happened before it came. The connection is let go with the last
//! viewer (tests and other tools can then use the socket again).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, watch};

use super::relay::close;
use wsframes::{Incoming, OP_BINARY, OP_PONG, Socket, read_frames, send_close, send_frame};

/// What a new viewer is shown of what came before.
pub const REPLAY_BYTES: u64 = 64 * 1024;
/// Output chunks a viewer may fall behind by before it misses some (it is told).
const BACKLOG: usize = 256;

/// One VM's shared serial connection.
pub struct Hub {
    output: broadcast::Sender<Bytes>,
    input: mpsc::Sender<Bytes>,
    /// Set when the guest side closed: the next viewer connects afresh.
    ended: Arc<AtomicBool>,
}

impl Hub {
    fn live(&self) -> bool {
        !self.ended.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub struct Hubs {
    open: Mutex<HashMap<String, Weak<Hub>>>,
}

impl Hubs {
    /// The VM's hub, connecting to its serial socket if nobody watches yet.
    pub async fn join(&self, vm_id: &str, socket: &Path) -> std::io::Result<Arc<Hub>> {
        if let Some(hub) = self.current(vm_id) {
            return Ok(hub);
        }
        let stream = UnixStream::connect(socket).await?;
        // Checked and recorded under one lock: a viewer that connected meanwhile keeps its hub, and
        // this connection is dropped.
        let mut open = self.lock();
        if let Some(hub) = open.get(vm_id).and_then(Weak::upgrade).filter(|h| h.live()) {
            return Ok(hub);
        }
        let (output, _) = broadcast::channel(BACKLOG);
        let (input, typed) = mpsc::channel(64);
        let ended = Arc::new(AtomicBool::new(false));
        let hub = Arc::new(Hub { output: output.clone(), input, ended: ended.clone() });
        tokio::spawn(async move {
            pump(stream, &output, typed).await;
            ended.store(true, Ordering::Relaxed);
            // An empty chunk tells the viewers the guest side is gone.
            let _ = output.send(Bytes::new());
        });
        open.retain(|_, h| h.strong_count() > 0);
        open.insert(vm_id.to_string(), Arc::downgrade(&hub));
        Ok(hub)
    }

    fn current(&self, vm_id: &str) -> Option<Arc<Hub>> {
        self.lock().get(vm_id).and_then(Weak::upgrade).filter(|h| h.live())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Weak<Hub>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Moves bytes between the serial socket and the viewers until the guest side closes or the last
/// viewer is gone (every input sender dropped).
async fn pump(stream: UnixStream, output: &broadcast::Sender<Bytes>, mut typed: mpsc::Receiver<Bytes>) {
    let (mut from_vm, mut to_vm) = stream.into_split();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            read = from_vm.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                // Nobody listening for a moment is fine.
                Ok(n) => { let _ = output.send(Bytes::copy_from_slice(&buf[..n])); }
            },
            keys = typed.recv() => match keys {
                Some(keys) => if to_vm.write_all(&keys).await.is_err() { return },
                None => return,
            },
        }
    }
}

/// The last `REPLAY_BYTES` of the serial log.
fn replay(log: &Path) -> Vec<u8> {
    let Ok(mut file) = std::fs::File::open(log) else { return Vec::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut tail = Vec::new();
    if file.seek(SeekFrom::Start(len.saturating_sub(REPLAY_BYTES))).is_ok() {
        let _ = file.take(REPLAY_BYTES).read_to_end(&mut tail);
    }
    tail
}

/// Serves one viewer: the replay, then the guest's output as binary frames, and what it types
/// (binary frames) to the guest, until it leaves, the guest side closes, or the console is cut.
pub async fn viewer(
    socket: Socket,
    hubs: &Hubs,
    vm_id: &str,
    paths: (PathBuf, PathBuf),
    mut cut: watch::Receiver<u64>,
) {
    let (serial_sock, serial_log) = paths;
    let hub = match hubs.join(vm_id, &serial_sock).await {
        Ok(hub) => hub,
        Err(e) => {
            tracing::warn!(vm_id, error = %e, "serial console unreachable");
            return close(socket, 1011, "the VM's serial console is not reachable").await;
        }
    };
    let mut output = hub.output.subscribe();
    let (mut reader, mut writer) = socket.stream.into_split();
    if send_frame(&mut writer, OP_BINARY, &replay(&serial_log)).await.is_err() {
        return;
    }
    let (asks, mut asked) = mpsc::channel(4);
    let (mut typed_in, mut typed_out) = tokio::io::duplex(4096);
    let input = hub.input.clone();
    let upstream = async {
        if let Ok(true) = read_frames(&mut reader, socket.early, &mut typed_in, &asks).await {
            std::future::pending::<()>().await;
        }
    };
    let forward = async {
        let mut keys = [0u8; 4096];
        while let Ok(n) = typed_out.read(&mut keys).await {
            if n == 0 || input.send(Bytes::copy_from_slice(&keys[..n])).await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await;
    };
    let downstream = async {
        let (code, reason) = loop {
            tokio::select! {
                out = output.recv() => match out {
                    Ok(chunk) if chunk.is_empty() => break (1000, "the VM closed the serial console"),
                    Ok(chunk) => if send_frame(&mut writer, OP_BINARY, &chunk).await.is_err() { return },
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let note = format!("\r\n[fast vm: {n} chunks of output were skipped for this slow viewer]\r\n");
                        if send_frame(&mut writer, OP_BINARY, note.as_bytes()).await.is_err() { return }
                    }
                    Err(broadcast::error::RecvError::Closed) => break (1000, "the VM closed the serial console"),
                },
                ask = asked.recv() => match ask {
                    Some(Incoming::Pong(payload)) => if send_frame(&mut writer, OP_PONG, &payload).await.is_err() { return },
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
        _ = forward => {}
        _ = downstream => {}
    }
}
