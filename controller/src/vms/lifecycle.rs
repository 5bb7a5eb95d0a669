//! What may be done to a VM in each of its states: one table, and one error for everything it
//! refuses (409, naming why). Every operation on a VM checks it under the VM's lock.
//!
//! The states are those QEMU and the runtimes can tell apart: `running` and `stopped` as the
//! runtime reports them, `crashed` (stopped, its last run having ended badly), `starting` and
//! `stopping` while the manager does that, `paused` as QEMU's monitor reports it.

use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    Stopped,
    Starting,
    Running,
    Paused,
    Stopping,
    Crashed,
}

impl VmState {
    pub const ALL: [VmState; 6] = [
        VmState::Stopped,
        VmState::Starting,
        VmState::Running,
        VmState::Paused,
        VmState::Stopping,
        VmState::Crashed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopping => "stopping",
            VmState::Crashed => "crashed",
        }
    }

    /// Whether QEMU runs (a paused guest's QEMU does).
    pub fn has_qemu(self) -> bool {
        matches!(self, VmState::Running | VmState::Paused)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Start,
    Stop,
    Restart,
    Edit,
    Clone,
    /// Deleting without `?force=true` (with it, a running VM is stopped first).
    Delete,
    RestoreSnapshot,
    RestoreBackup,
    /// SPICE, VNC, serial, screenshot, guest display and agent calls: they need a live QEMU.
    Console,
    TakeSnapshot,
    DeleteSnapshot,
    Backup,
    AttachVolume,
    DetachVolume,
    Pause,
    Resume,
}

impl Op {
    pub const ALL: [Op; 16] = [
        Op::Start,
        Op::Stop,
        Op::Restart,
        Op::Edit,
        Op::Clone,
        Op::Delete,
        Op::RestoreSnapshot,
        Op::RestoreBackup,
        Op::Console,
        Op::TakeSnapshot,
        Op::DeleteSnapshot,
        Op::Backup,
        Op::AttachVolume,
        Op::DetachVolume,
        Op::Pause,
        Op::Resume,
    ];

    /// Whether the operation holds the VM to itself. Consoles and agent calls do not: a long backup
    /// must not keep the operator out of the console, and they change nothing that others rely on.
    pub fn exclusive(self) -> bool {
        self != Op::Console
    }

    /// The table: the states each operation may start from.
    fn allowed_in(self) -> &'static [VmState] {
        use VmState::*;
        match self {
            Op::Start => &[Stopped, Crashed],
            Op::Stop | Op::Restart | Op::Console => &[Running, Paused],
            Op::Pause => &[Running],
            Op::Resume => &[Paused],
            Op::Edit | Op::Clone | Op::Delete | Op::RestoreSnapshot | Op::RestoreBackup => {
                &[Stopped, Crashed]
            }
            // Live where QEMU runs, offline where it does not; never while it comes or goes.
            Op::TakeSnapshot | Op::DeleteSnapshot | Op::Backup | Op::AttachVolume | Op::DetachVolume => {
                &[Stopped, Crashed, Running, Paused]
            }
        }
    }

    /// Why `self` is refused in `state` (which the table does not allow).
    fn refusal(self, state: VmState) -> String {
        if matches!(state, VmState::Starting | VmState::Stopping) {
            return format!("The VM is {}: wait until it is done", state.as_str());
        }
        match self {
            Op::Start => "VM is already running".into(),
            Op::Stop | Op::Restart => "VM is not running".into(),
            Op::Console => "The VM is not running".into(),
            Op::Pause if state == VmState::Paused => "VM is already paused".into(),
            Op::Pause => "VM is not running".into(),
            Op::Resume => format!("VM is {}, not paused", state.as_str()),
            Op::Edit => "Stop the VM before changing its configuration".into(),
            Op::Clone => "Stop the VM before cloning it".into(),
            Op::Delete => "VM is running: stop it first or use ?force=true".into(),
            Op::RestoreSnapshot => "Stop the VM before restoring a snapshot".into(),
            Op::RestoreBackup => "Stop the VM before restoring a backup onto it".into(),
            _ => format!("Not possible while the VM is {}", state.as_str()),
        }
    }

    pub fn allowed(self, state: VmState) -> bool {
        self.allowed_in().contains(&state)
    }
}

/// `op` on a VM in `state`, or the conflict that says why not.
pub fn check(state: VmState, op: Op) -> ApiResult<()> {
    if op.allowed(state) { Ok(()) } else { Err(ApiError::Conflict(op.refusal(state))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refused_pair_is_a_conflict_that_says_why() {
        let mut refused = 0;
        for state in VmState::ALL {
            for op in Op::ALL {
                match check(state, op) {
                    Ok(()) => assert!(op.allowed(state)),
                    Err(e) => {
                        refused += 1;
                        assert_eq!(e.status().as_u16(), 409, "{op:?} in {state:?}");
                        assert!(!e.to_string().is_empty());
                    }
                }
            }
        }
        assert!(refused > 30, "the table refuses a good share of pairs ({refused})");
    }

    #[test]
    fn the_table_reads_as_an_operator_expects() {
        use VmState::*;
        assert!(Op::Start.allowed(Crashed), "a crashed VM can be started again");
        assert!(!Op::Start.allowed(Running) && !Op::Start.allowed(Starting));
        assert!(Op::Stop.allowed(Paused), "a paused guest can be stopped");
        assert!(!Op::Edit.allowed(Running));
        assert!(Op::Pause.allowed(Running) && !Op::Pause.allowed(Paused) && Op::Resume.allowed(Paused));
        assert!(Op::Console.allowed(Paused) && !Op::Console.exclusive() && Op::Backup.exclusive());
        assert!(Op::TakeSnapshot.allowed(Running) && Op::TakeSnapshot.allowed(Stopped));
        for op in Op::ALL {
            assert!(
                !op.allowed(Starting) && !op.allowed(Stopping),
                "{op:?} waits for a start or stop to end"
            );
        }
        assert!(matches!(check(Stopping, Op::Backup), Err(e) if e.to_string().contains("stopping")));
        // The original API's messages stay what they were.
        assert!(matches!(check(Running, Op::Start), Err(e) if e.to_string() == "VM is already running"));
        assert!(matches!(check(Stopped, Op::Console), Err(e) if e.to_string() == "The VM is not running"));
    }
}
