//! The test guest ISO and helpers to watch a real guest through its run directory.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the test command builds the guest (`FASTVM_TEST_GUEST_ISO` overrides).
pub const DEFAULT_GUEST_ISO: &str = "/var/cache/fastvm/guest/fastvm-test-guest.iso";

/// The guest ISO, or None (with a note) outside CI when it has not been built. Under CI a missing
/// ISO or QEMU is a failure, never a silent skip.
pub fn iso_path() -> PathBuf {
    PathBuf::from(std::env::var("FASTVM_TEST_GUEST_ISO").unwrap_or_else(|_| DEFAULT_GUEST_ISO.into()))
}

pub fn guest_iso() -> Option<PathBuf> {
    let path = iso_path();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let qemu = controller::host::find_in_path("qemu-system-x86_64").is_some();
    if path.is_file() && qemu {
        return Some(path);
    }
    if ci {
        panic!("CI needs QEMU and the test guest ISO at {} (scripts/test.sh builds it)", path.display());
    }
    eprintln!("SKIPPED: no QEMU or no test guest ISO at {} (run scripts/test.sh)", path.display());
    None
}

/// Waits until `serial.log` contains `marker` at least `count` times; returns the whole log.
pub fn wait_serial(run_dir: &Path, marker: &str, count: usize, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let log = std::fs::read(run_dir.join("serial.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if log.matches(marker).count() >= count {
            return log;
        }
        if Instant::now() > deadline {
            let qemu = std::fs::read_to_string(run_dir.join("qemu.log")).unwrap_or_default();
            panic!("{marker} x{count} not seen within {timeout:?}.\nserial:\n{log}\nqemu:\n{qemu}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How long a guest may take to boot under TCG on a busy two-core machine.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// `wait_serial` without blocking the async runtime.
pub async fn wait_serial_async(run_dir: &Path, marker: &str, count: usize, timeout: Duration) -> String {
    let (run_dir, marker) = (run_dir.to_path_buf(), marker.to_string());
    tokio::task::spawn_blocking(move || wait_serial(&run_dir, &marker, count, timeout))
        .await
        .expect("serial wait")
}

/// Types a command line into the guest's serial console.
pub fn type_on_serial(run_dir: &Path, line: &str) -> std::io::Result<()> {
    let mut s = UnixStream::connect(run_dir.join("serial.sock"))?;
    s.write_all(format!("{line}\n").as_bytes())?;
    s.flush()?;
    // Give the guest shell time to read before the connection goes away.
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

/// Pids of QEMU processes that belong to VM `vm_id`.
pub fn qemu_pids(vm_id: &str) -> Vec<u32> {
    let marker = format!("process=fastvm-{vm_id}");
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            !zombie && String::from_utf8_lossy(&cmd).contains(&marker)
        })
        .collect()
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// Kills every QEMU whose run directory is under `data_dir`: a failed test must not leave guests
/// running (they would slow every later test down).
pub fn kill_vms_under(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir.join("run")) else { return };
    for entry in entries.filter_map(Result::ok) {
        for pid in qemu_pids(&entry.file_name().to_string_lossy()) {
            let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

/// Calls `kill_vms_under` when dropped.
pub struct VmReaper(pub PathBuf);

impl Drop for VmReaper {
    fn drop(&mut self) {
        kill_vms_under(&self.0);
    }
}
