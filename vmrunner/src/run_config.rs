//! What the controller hands `vmrunner` for one run: written to `run/<id>/vmrunner.json`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::VmSpec;
use crate::argv::Launch;

pub const CONFIG_FILE: &str = "vmrunner.json";
/// Written by vmrunner once QEMU is set up and the guest resumed; removed when the run ends.
pub const READY_FILE: &str = "ready";
/// Written by vmrunner when QEMU has exited: `ExitRecord` as JSON.
pub const EXIT_FILE: &str = "exit.json";
/// vmrunner's own pid while it runs (it removes the file when it is done cleaning up).
pub const PID_FILE: &str = "vmrunner.pid";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    pub spec: VmSpec,
    pub launch: Launch,
    pub qemu: PathBuf,
    pub qemu_img: PathBuf,
    pub swtpm: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitRecord {
    /// QEMU's exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// Why the run failed, when it did before or while starting QEMU.
    pub error: Option<String>,
    /// Unix time.
    pub at: i64,
}
