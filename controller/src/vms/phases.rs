//! What a VM is doing that its record does not say: `starting` or `stopping` while the manager
//! does that, and `paused` as QEMU's monitor reports it (its STOP and RESUME events, one watcher
//! per running VM on the shared monitor connection).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::lifecycle::VmState;
use crate::qmp;

#[derive(Default)]
pub struct Phases {
    now: Mutex<HashMap<String, VmState>>,
    watchers: Mutex<HashMap<String, JoinHandle<()>>>,
}

/// Holds a VM in a phase until dropped.
pub struct During {
    phases: Arc<Phases>,
    id: String,
    phase: VmState,
}

impl Drop for During {
    fn drop(&mut self) {
        let mut now = self.phases.now();
        if now.get(&self.id) == Some(&self.phase) {
            now.remove(&self.id);
        }
    }
}

/// A change the watcher saw: the guest was paused, or resumed.
pub type OnChange = Box<dyn Fn(VmState) + Send + Sync>;

impl Phases {
    fn now(&self) -> MutexGuard<'_, HashMap<String, VmState>> {
        self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn watchers(&self) -> MutexGuard<'_, HashMap<String, JoinHandle<()>>> {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, id: &str) -> Option<VmState> {
        self.now().get(id).copied()
    }

    pub fn set(&self, id: &str, phase: VmState) {
        self.now().insert(id.to_string(), phase);
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
        if let Some(w) = self.watchers().remove(id) {
            w.abort();
        }
        let mut now = self.now();
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
            let mut now = self.now();
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
            on_change(if paused { VmState::Paused } else { VmState::Running });
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
            [VmState::Paused, VmState::Running],
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
}
