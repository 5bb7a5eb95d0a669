//! One long-lived QMP connection per VM monitor socket, shared by every task of the controller:
//! commands from any number of tasks go out on it at once and come back matched by id (so the
//! reconcile loop, the metrics collector and an API call no longer queue behind each other's
//! connections), and events go to whoever subscribed. When the connection drops (QEMU stopped or
//! restarted), what was waiting fails and the next command connects again.
//!
//! The controller holds the VM's own `monitor.sock`; `qmp.sock` stays free for vmrunner's start-up
//! and for an operator's QMP client.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::anyhow;
use serde_json::Value;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{broadcast, oneshot};
use vmrunner::qmp::{Command, Message};

use super::{Qmp, TIMEOUT, read_message};

/// Something QEMU reported (`STOP`, `RESET`, `SHUTDOWN`, `JOB_STATUS_CHANGE`…).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub data: Value,
}

type Reply = Result<Value, String>;

/// A socket's connection, if one is open; connecting happens under its lock.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Link>>>>;

/// One open connection.
struct Link {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next_id: AtomicU64,
    alive: AtomicBool,
}

impl Link {
    fn waiting(&self) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<Reply>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn execute(&self, command: &Command) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting().insert(id, tx);
        // The connection may have ended between being handed out and now: nobody would answer.
        if !self.alive.load(Ordering::Relaxed) {
            self.waiting().remove(&id);
            return Err(anyhow!("QMP connection closed"));
        }
        let sent = self.writer.lock().await.write_all(&command.encode(id)).await;
        if let Err(e) = sent {
            self.waiting().remove(&id);
            self.alive.store(false, Ordering::Relaxed);
            return Err(anyhow!(e).context("QMP write"));
        }
        match tokio::time::timeout(TIMEOUT, rx).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(desc))) => Err(anyhow!("QMP {}: {desc}", command.name())),
            Ok(Err(_)) => Err(anyhow!("QMP connection closed")),
            Err(_) => {
                self.waiting().remove(&id);
                Err(anyhow!("QMP {} timed out", command.name()))
            }
        }
    }
}

/// Every monitor connection of the controller, by socket.
#[derive(Default)]
pub struct Monitors {
    /// One slot per socket: connecting happens under its lock, so two tasks never open two
    /// connections to a socket that serves one client at a time.
    slots: Mutex<HashMap<PathBuf, Slot>>,
    /// Outlive connections, so a subscriber keeps hearing across a reconnect.
    events: Mutex<HashMap<PathBuf, broadcast::Sender<Event>>>,
    /// Connections opened so far, all sockets together.
    opened: AtomicU64,
}

impl Monitors {
    /// Runs `command` on the connection to `socket`, opening it when there is none.
    pub async fn execute(&self, socket: &Path, command: &Command) -> anyhow::Result<Value> {
        let link = self.link(socket).await?;
        link.execute(command).await
    }

    /// Events from `socket`'s QEMU from now on (this opens the connection if needed).
    pub async fn subscribe(&self, socket: &Path) -> anyhow::Result<broadcast::Receiver<Event>> {
        let rx = self.events_of(socket).subscribe();
        self.link(socket).await?;
        Ok(rx)
    }

    fn events_of(&self, socket: &Path) -> broadcast::Sender<Event> {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events.entry(socket.to_path_buf()).or_insert_with(|| broadcast::channel(256).0).clone()
    }

    async fn link(&self, socket: &Path) -> anyhow::Result<Arc<Link>> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.entry(socket.to_path_buf()).or_default().clone()
        };
        let mut slot = slot.lock().await;
        if let Some(link) = slot.as_ref().filter(|l| l.alive.load(Ordering::Relaxed)) {
            return Ok(link.clone());
        }
        let (reader, writer) = Qmp::connect(socket).await?.into_parts();
        self.opened.fetch_add(1, Ordering::Relaxed);
        let link = Arc::new(Link {
            writer: tokio::sync::Mutex::new(writer),
            waiting: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            alive: AtomicBool::new(true),
        });
        tokio::spawn(dispatch(reader, link.clone(), self.events_of(socket)));
        *slot = Some(link.clone());
        Ok(link)
    }

    /// How many connections have been opened (a reconnect counts again).
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Drops the connection to `socket` (its VM is gone), failing whatever waits on it.
    pub fn forget(&self, socket: &Path) {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).remove(socket);
        let slot = self.slots.lock().unwrap_or_else(|e| e.into_inner()).remove(socket);
        if let Some(slot) = slot {
            if let Ok(mut slot) = slot.try_lock() {
                if let Some(link) = slot.take() {
                    link.alive.store(false, Ordering::Relaxed);
                    link.waiting().clear();
                }
            }
        }
    }
}

/// Reads the connection until it ends: replies to whoever waits for their id, events to the
/// subscribers. At the end every waiting command fails at once.
async fn dispatch(mut reader: BufReader<OwnedReadHalf>, link: Arc<Link>, events: broadcast::Sender<Event>) {
    loop {
        let message = match read_message(&mut reader).await {
            Ok(m) => m,
            Err(e) if e.downcast_ref::<vmrunner::qmp::ParseError>().is_some() => continue,
            Err(_) => break,
        };
        let (id, reply) = match message {
            Message::Return { id: Some(id), value } => (id, Ok(value)),
            Message::Error { id: Some(id), desc, .. } => {
                (id, Err(if desc.is_empty() { "error".to_string() } else { desc }))
            }
            Message::Event { name, data } => {
                let _ = events.send(Event { name, data });
                continue;
            }
            _ => continue,
        };
        if let Some(waiter) = link.waiting().remove(&id) {
            let _ = waiter.send(reply);
        }
    }
    link.alive.store(false, Ordering::Relaxed);
    link.waiting().clear();
}

/// The monitor socket a command for `run_dir`'s VM goes to: its own `monitor.sock` when QEMU
/// serves one (VMs started before it existed only have `qmp.sock`).
pub fn socket_of(monitor: PathBuf, qmp: PathBuf) -> PathBuf {
    if monitor.exists() { monitor } else { qmp }
}

impl std::fmt::Debug for Monitors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitors").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use serde_json::json;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    use super::*;

    /// A fake QEMU monitor: greets every connection (after an event left over from an earlier
    /// client), answers `query-status` after a delay that makes replies come back out of order,
    /// answers `stop` with a `STOP` event first, and hangs up on `quit` (as QEMU exiting does).
    /// Returns how many connections it has taken.
    fn fake_qemu(path: &Path) -> Arc<AtomicUsize> {
        let listener = UnixListener::bind(path).expect("bind");
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (r, w) = stream.into_split();
                    let w = Arc::new(tokio::sync::Mutex::new(w));
                    let hello =
                        "{\"event\": \"RESUME\"}\n{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n";
                    let _ = w.lock().await.write_all(hello.as_bytes()).await;
                    let mut lines = BufReader::new(r).lines();
                    let mut n = 0u64;
                    while let Ok(Some(line)) = lines.next_line().await {
                        let Ok(v) = serde_json::from_str::<Value>(&line) else { return };
                        let id = v["id"].clone();
                        n += 1;
                        match v["execute"].as_str() {
                            Some("quit") => return,
                            Some("query-status") => {
                                let w = w.clone();
                                let delay = Duration::from_millis(40 - (n % 4) * 10);
                                tokio::spawn(async move {
                                    tokio::time::sleep(delay).await;
                                    let reply =
                                        json!({"return": {"status": "running", "asked": id}, "id": id});
                                    let _ = w.lock().await.write_all(format!("{reply}\n").as_bytes()).await;
                                });
                            }
                            Some("stop") => {
                                let reply =
                                    format!("{{\"event\": \"STOP\"}}\n{}\n", json!({"return": {}, "id": id}));
                                let _ = w.lock().await.write_all(reply.as_bytes()).await;
                            }
                            _ => {
                                let reply = json!({"return": {}, "id": id});
                                let _ = w.lock().await.write_all(format!("{reply}\n").as_bytes()).await;
                            }
                        }
                    }
                });
            }
        });
        connections
    }

    #[tokio::test]
    async fn many_tasks_share_one_connection_and_each_gets_its_own_reply() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("monitor.sock");
        let connections = fake_qemu(&socket);
        let monitors = Arc::new(Monitors::default());
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (m, s) = (monitors.clone(), socket.clone());
                tokio::spawn(async move { m.execute(&s, &Command::query_status()).await })
            })
            .collect();
        let mut asked = Vec::new();
        for t in tasks {
            let reply = t.await.expect("task").expect("reply");
            assert_eq!(reply["status"], "running");
            asked.push(reply["asked"].as_u64().expect("id"));
        }
        asked.sort_unstable();
        asked.dedup();
        assert_eq!(asked.len(), 50, "every task got the reply to its own command");
        assert_eq!(connections.load(Ordering::SeqCst), 1, "one connection for all of them");
    }

    #[tokio::test]
    async fn events_reach_every_subscriber() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("monitor.sock");
        fake_qemu(&socket);
        let monitors = Monitors::default();
        let mut first = monitors.subscribe(&socket).await.expect("subscribe");
        let mut second = monitors.subscribe(&socket).await.expect("subscribe");
        monitors.execute(&socket, &Command::stop()).await.expect("stop");
        for rx in [&mut first, &mut second] {
            let event = tokio::time::timeout(TIMEOUT, rx.recv()).await.expect("in time").expect("an event");
            assert_eq!(event.name, "STOP");
        }
    }

    #[tokio::test]
    async fn after_qemu_goes_away_the_next_command_connects_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("monitor.sock");
        let connections = fake_qemu(&socket);
        let monitors = Monitors::default();
        let mut events = monitors.subscribe(&socket).await.expect("subscribe");
        monitors.execute(&socket, &Command::query_status()).await.expect("first QEMU");
        let gone = monitors.execute(&socket, &Command::quit()).await.expect_err("QEMU hung up");
        assert!(format!("{gone:#}").contains("closed"), "{gone:#}");
        let reply = monitors.execute(&socket, &Command::query_status()).await.expect("the next QEMU");
        assert_eq!(reply["status"], "running");
        assert_eq!(connections.load(Ordering::SeqCst), 2);
        monitors.execute(&socket, &Command::stop()).await.expect("stop");
        let event = tokio::time::timeout(TIMEOUT, events.recv()).await.expect("in time").expect("an event");
        assert_eq!(event.name, "STOP", "a subscriber keeps hearing across the reconnect");
    }
}
