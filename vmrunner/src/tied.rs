//! Children that die with vmrunner: QEMU and swtpm must not outlive their supervisor (killed, it
//! could no longer record how the run ended, and the controller would see a VM nobody supervises).

use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::signal::Signal;

/// Makes the child `cmd` spawns get SIGKILL when vmrunner dies. vmrunner spawns from its only
/// thread, so the signal follows the process (Linux ties it to the spawning thread).
// The project's one `unsafe`: std offers no safe way to run code between fork and exec.
#[allow(unsafe_code)]
pub fn dies_with_us(cmd: &mut Command) -> &mut Command {
    let parent = nix::unistd::getpid();
    // SAFETY: between fork and exec only async-signal-safe calls are made (prctl, getppid, _exit),
    // and nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // vmrunner died before the line above: nobody would send the signal now.
            if nix::unistd::getppid() != parent {
                nix::libc::_exit(1);
            }
            Ok(())
        })
    }
}
