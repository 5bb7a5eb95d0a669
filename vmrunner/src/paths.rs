//! The one layout of a VM's files, for both crates: its directory (disk, firmware variables, TPM
//! state), kept for the VM's life, and its run directory (sockets and logs of the current run). No
//! file name of this layout is written anywhere else.

use std::path::{Path, PathBuf};

/// A VM's directory, under the data directory's `vms/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDir(PathBuf);

impl VmDir {
    /// The system disk; also its name inside a backup archive.
    pub const DISK: &'static str = "disk0.qcow2";
    /// UEFI variables (a copy of the firmware's template, written by the guest).
    pub const OVMF_VARS: &'static str = "OVMF_VARS.fd";
    /// Which template the variables were copied from (Secure Boot or not).
    pub const OVMF_TEMPLATE: &'static str = "OVMF_VARS.template";
    /// The firmware files a backup carries beside the disk.
    pub const FIRMWARE_FILES: [&'static str; 2] = [Self::OVMF_VARS, Self::OVMF_TEMPLATE];
    const TPM: &'static str = "tpm";

    pub fn new(dir: impl Into<PathBuf>) -> VmDir {
        VmDir(dir.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn disk(&self) -> PathBuf {
        self.0.join(Self::DISK)
    }

    pub fn ovmf_vars(&self) -> PathBuf {
        self.0.join(Self::OVMF_VARS)
    }

    pub fn ovmf_template(&self) -> PathBuf {
        self.0.join(Self::OVMF_TEMPLATE)
    }

    /// swtpm's state directory.
    pub fn tpm_state(&self) -> PathBuf {
        self.0.join(Self::TPM)
    }
}

/// A VM's run directory: what QEMU, swtpm and vmrunner create for one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir(PathBuf);

impl RunDir {
    pub fn new(dir: impl Into<PathBuf>) -> RunDir {
        RunDir(dir.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// QEMU's monitor (QMP).
    pub fn qmp(&self) -> PathBuf {
        self.0.join("qmp.sock")
    }

    /// QEMU's second monitor, which the controller holds open for the whole run.
    pub fn monitor(&self) -> PathBuf {
        self.0.join("monitor.sock")
    }

    /// The QEMU guest agent's channel.
    pub fn qga(&self) -> PathBuf {
        self.0.join("qga.sock")
    }

    pub fn serial(&self) -> PathBuf {
        self.0.join("serial.sock")
    }

    pub fn spice(&self) -> PathBuf {
        self.0.join("spice.sock")
    }

    pub fn vnc(&self) -> PathBuf {
        self.0.join("vnc.sock")
    }

    pub fn swtpm(&self) -> PathBuf {
        self.0.join("swtpm.sock")
    }

    /// Every socket of a run, which a new run removes first.
    pub fn sockets(&self) -> [PathBuf; 7] {
        [self.qmp(), self.monitor(), self.qga(), self.serial(), self.spice(), self.vnc(), self.swtpm()]
    }

    /// QEMU's own output.
    pub fn qemu_log(&self) -> PathBuf {
        self.0.join("qemu.log")
    }

    /// Everything the guest wrote on its serial port.
    pub fn serial_log(&self) -> PathBuf {
        self.0.join("serial.log")
    }

    /// QEMU's pid (`-pidfile`).
    pub fn qemu_pid(&self) -> PathBuf {
        self.0.join("qemu.pid")
    }

    pub fn swtpm_log(&self) -> PathBuf {
        self.0.join("swtpm.log")
    }

    /// vmrunner's own output.
    pub fn vmrunner_log(&self) -> PathBuf {
        self.0.join("vmrunner.log")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_lives_in_its_directory_under_a_distinct_name() {
        let vm = VmDir::new("/data/vms/abc");
        let files = [vm.disk(), vm.ovmf_vars(), vm.ovmf_template(), vm.tpm_state()];
        let run = RunDir::new("/run/fastvm/abc");
        let mut run_files = run.sockets().to_vec();
        run_files.extend([
            run.qemu_log(),
            run.serial_log(),
            run.vmrunner_log(),
            run.qemu_pid(),
            run.swtpm_log(),
        ]);
        for f in &files {
            assert_eq!(f.parent(), Some(vm.path()));
        }
        for f in &run_files {
            assert_eq!(f.parent(), Some(run.path()));
        }
        let mut names: Vec<_> = files.iter().chain(&run_files).filter_map(|f| f.file_name()).collect();
        let all = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all, "no two files share a name");
        // Backups name their members after these; old archives must keep restoring.
        assert_eq!(VmDir::DISK, "disk0.qcow2");
        assert_eq!(VmDir::FIRMWARE_FILES, ["OVMF_VARS.fd", "OVMF_VARS.template"]);
    }
}
