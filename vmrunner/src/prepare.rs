//! Everything a VM needs on disk before QEMU starts. Each step leaves either its finished result or
//! nothing (temporary names, renamed into place), so a failed start can simply be retried.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmrunner::run_config::RunConfig;
use vmrunner::{Firmware, VmSpec};

use crate::error::{Error, Result, io};

pub fn dirs(cfg: &RunConfig) -> Result<()> {
    for dir in [&cfg.launch.vm_dir, &cfg.launch.run_dir] {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    Ok(())
}

fn copy_into_place(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).map_err(io(format!("copying {} to {}", from.display(), tmp.display())))?;
    std::fs::rename(&tmp, to).map_err(io(format!("renaming {}", tmp.display())))
}

/// The VM's own copy of the UEFI variable store, made once and kept for the VM's lifetime.
pub fn ovmf_vars(cfg: &RunConfig) -> Result<()> {
    let spec: &VmSpec = &cfg.spec;
    if spec.firmware != Firmware::Uefi {
        return Ok(());
    }
    let vars = cfg.launch.vm().ovmf_vars();
    let template = if spec.secure_boot_enabled() {
        &cfg.launch.ovmf.secboot_vars_template
    } else {
        &cfg.launch.ovmf.vars_template
    };
    // Which template the store came from: Secure Boot turned on (or off) later needs the store with
    // (or without) the Microsoft keys, so it is made afresh then. Otherwise the VM keeps its variables.
    let marker = vars.with_extension("template");
    let recorded = std::fs::read_to_string(&marker).ok();
    let wanted = template.display().to_string();
    if vars.exists() && recorded.as_deref().is_none_or(|r| r == wanted) {
        return Ok(());
    }
    copy_into_place(template, &vars)?;
    std::fs::write(&marker, wanted).map_err(io(format!("writing {}", marker.display())))
}

/// The boot disk, created empty (thin qcow2) when missing.
pub fn disk(cfg: &RunConfig) -> Result<()> {
    let disk = cfg.launch.vm().disk();
    if disk.exists() {
        return Ok(());
    }
    let tmp = disk.with_extension("qcow2.tmp");
    let out = Command::new(&cfg.qemu_img)
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&tmp)
        .arg(format!("{}G", cfg.spec.disk_size))
        .stdin(Stdio::null())
        .output()
        .map_err(io(format!("running {}", cfg.qemu_img.display())))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Tool {
            tool: "qemu-img create".into(),
            said: String::from_utf8_lossy(&out.stderr).trim().into(),
        });
    }
    std::fs::rename(&tmp, &disk).map_err(io(format!("renaming {}", tmp.display())))
}

/// Starts swtpm for a TPM VM and waits for its socket. `--terminate` makes it exit with QEMU.
pub fn swtpm(cfg: &RunConfig) -> Result<Option<Child>> {
    if !cfg.spec.tpm_enabled() {
        return Ok(None);
    }
    let state = cfg.launch.vm().tpm_state();
    std::fs::create_dir_all(&state).map_err(io(format!("creating {}", state.display())))?;
    let sock = cfg.launch.run().swtpm();
    let _ = std::fs::remove_file(&sock);
    let mut child = crate::tied::dies_with_us(&mut Command::new(&cfg.swtpm))
        .args(["socket", "--tpm2", "--terminate"])
        .arg("--tpmstate")
        .arg(format!("dir={}", state.display()))
        .arg("--ctrl")
        .arg(format!("type=unixio,path={}", sock.display()))
        .arg("--log")
        .arg(format!("file={},level=1", cfg.launch.run().swtpm_log().display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(io(format!("starting {}", cfg.swtpm.display())))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::Start(format!("swtpm exited at start ({status})")));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(Error::Start("swtpm did not create its socket within 10 s".into()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(Some(child))
}
