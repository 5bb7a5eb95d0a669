//! What a VM is doing that its record does not say: `starting` or `stopping` while the manager
//! does that, and `paused` as QEMU's monitor reports it (its STOP and RESUME events, one watcher
//! per running VM on the shared monitor connection).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::lifecycle::VmState;
use crate::qmp;

#[derive(Default)]
pub struct Phases {
    now: Mutex<HashMap<String, VmState>>,
    /// Counts changes, so that what was built from the phases knows when it is out of date.
    generation: AtomicU64,
    watchers: Mutex<HashMap<String, JoinHandle<()>>>,
    /// Told when a forced stop wants a graceful one under way to give up waiting for the guest.
    hurry: Mutex<HashMap<String, Arc<Notify>>>,
}

/// Holds a VM in a phase until dropped.
pub struct During {
    phases: Arc<Phases>,
    id: String,
    phase: VmState,
}

impl Drop for During {
    fn drop(&mut self) {
        let mut now = self.phases.changing();
        if now.get(&self.id) == Some(&self.phase) {
            now.remove(&self.id);
        }
    }
}

/// What the watcher heard from QEMU that the manager acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    Paused,
    Resumed,
    /// The guest powered off or QEMU was told to quit: the VM is about to stop.
    ShutDown,
}

pub type OnChange = Box<dyn Fn(Heard) + Send + Sync>;

impl Phases {
    fn now(&self) -> MutexGuard<'_, HashMap<String, VmState>> {
        self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn watchers(&self) -> MutexGuard<'_, HashMap<String, JoinHandle<()>>> {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changing(&self) -> MutexGuard<'_, HashMap<String, VmState>> {
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.now()
    }

    /// Changes so far (any change gives a new number).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// A stop of `id` begins: what `hurry` will tell it (a fresh one, so that nothing said to an
    /// earlier stop carries over; `ended` forgets it).
    pub fn may_be_hurried(&self, id: &str) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        self.hurry.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_string(), notify.clone());
        notify
    }

    /// Tells the stop of `id` under way, if any, to stop waiting for the guest (kept for it if it
    /// is not waiting yet).
    pub fn hurry(&self, id: &str) {
        if let Some(notify) = self.hurry.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            notify.notify_one();
        }
    }

    pub fn get(&self, id: &str) -> Option<VmState> {
        self.now().get(id).copied()
    }

    pub fn set(&self, id: &str, phase: VmState) {
        self.changing().insert(id.to_string(), phase);
    }

    pub fn during(self: &Arc<Self>, id: &str, phase: VmState) -> During {
        self.set(id, phase);
        During { phases: self.clone(), id: id.to_string(), phase }
    }

    /// Follows a running VM's monitor events, unless that is done already. A watcher that ended
    /// (the socket was not there yet) is started again.
    pub fn watch(self: &Arc<Self>, id: &str, socket: PathBuf, on_change: OnChange) {
        let mut watchers = self.watchers();
        if watchers.get(id).is_some_and(|w| !w.is_finished()) {
            return;
        }
        let (phases, vm) = (self.clone(), id.to_string());
        watchers.insert(
            id.to_string(),
            tokio::spawn(async move { phases.follow(&vm, &socket, on_change).await }),
        );
    }

    /// The VM no longer runs: its watcher and its phase go.
    pub fn ended(&self, id: &str) {
        self.hurry.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        if let Some(w) = self.watchers().remove(id) {
            w.abort();
        }
        self.resumed(id);
    }

    /// The guest runs again (its watcher stays).
    pub fn resumed(&self, id: &str) {
        let mut now = self.changing();
        if now.get(id) == Some(&VmState::Paused) {
            now.remove(id);
        }
    }

    async fn follow(&self, id: &str, socket: &std::path::Path, on_change: OnChange) {
        let mut events = match qmp::monitors().subscribe(socket).await {
            Ok(rx) => rx,
            Err(e) => {
                tracing::debug!(vm_id = id, error = %format!("{e:#}"), "not watching the monitor yet");
                return;
            }
        };
        // Paused before anyone watched (a controller restarted under a paused guest).
        self.settle(id, socket, &on_change).await;
        loop {
            match events.recv().await {
                Ok(event) if event.name == "STOP" => self.mark(id, true, &on_change),
                Ok(event) if event.name == "RESUME" => self.mark(id, false, &on_change),
                Ok(event) if event.name == "SHUTDOWN" => on_change(Heard::ShutDown),
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => self.settle(id, socket, &on_change).await,
                Err(RecvError::Closed) => return,
            }
        }
    }

    async fn settle(&self, id: &str, socket: &std::path::Path, on_change: &OnChange) {
        if let Some(status) = qmp::status(socket).await {
            self.mark(id, status == "paused", on_change);
        }
    }

    fn mark(&self, id: &str, paused: bool, on_change: &OnChange) {
        let changed = {
            let mut now = self.changing();
            match (now.get(id).copied(), paused) {
                // A start or stop under way says more than the monitor.
                (Some(VmState::Starting | VmState::Stopping), _) => false,
                (Some(VmState::Paused), true) | (None, false) => false,
                (_, true) => {
                    now.insert(id.to_string(), VmState::Paused);
                    true
                }
                (_, false) => {
                    now.remove(id);
                    true
                }
            }
        };
        if changed {
            on_change(if paused { Heard::Paused } else { Heard::Resumed });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_lasts_while_it_is_held_and_the_monitor_does_not_override_it() {
        let phases = Arc::new(Phases::default());
        let starting = phases.during("a", VmState::Starting);
        assert_eq!(phases.get("a"), Some(VmState::Starting));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let on_change: OnChange = Box::new(move |s| log.lock().unwrap_or_else(|e| e.into_inner()).push(s));
        // QEMU starts paused and is resumed: not news while the start is under way.
        phases.mark("a", true, &on_change);
        assert_eq!(phases.get("a"), Some(VmState::Starting));
        drop(starting);
        assert_eq!(phases.get("a"), None);
        phases.mark("a", true, &on_change);
        phases.mark("a", true, &on_change);
        assert_eq!(phases.get("a"), Some(VmState::Paused));
        phases.mark("a", false, &on_change);
        assert_eq!(
            *seen.lock().unwrap_or_else(|e| e.into_inner()),
            [Heard::Paused, Heard::Resumed],
            "each change once"
        );
        // A held phase that was replaced is not removed by its guard.
        let stopping = phases.during("a", VmState::Stopping);
        phases.set("a", VmState::Paused);
        drop(stopping);
        assert_eq!(phases.get("a"), Some(VmState::Paused));
        phases.ended("a");
        assert_eq!(phases.get("a"), None);
    }

    #[tokio::test]
    async fn the_watcher_hears_pauses_resumes_and_shutdowns_from_the_monitor() {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("monitor.sock");
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        // A QEMU that is asked its status once, then is paused, resumed and shut down.
        tokio::spawn(async move {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (r, mut w) = stream.into_split();
            let _ = w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n").await;
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                let id = &v["id"];
                let status = v["execute"] == "query-status";
                let reply = if status {
                    serde_json::json!({"return": {"status": "running", "running": true}, "id": id})
                } else {
                    serde_json::json!({"return": {}, "id": id})
                };
                let _ = w.write_all(format!("{reply}\n").as_bytes()).await;
                if status {
                    for event in ["STOP", "RESUME", "SHUTDOWN"] {
                        let _ = w.write_all(format!("{{\"event\": \"{event}\"}}\n").as_bytes()).await;
                    }
                }
            }
        });
        let phases = Arc::new(Phases::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        phases.watch(
            "w",
            socket,
            Box::new(move |h| {
                let _ = tx.send(h);
            }),
        );
        let mut heard = Vec::new();
        while heard.len() < 3 {
            match tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await {
                Ok(Some(h)) => heard.push(h),
                other => panic!("heard only {heard:?} ({other:?})"),
            }
        }
        assert_eq!(heard, [Heard::Paused, Heard::Resumed, Heard::ShutDown]);
        assert_eq!(phases.get("w"), None, "resumed");
        phases.ended("w");
    }
}
