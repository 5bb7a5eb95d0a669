//! `vmrunner`: one process per VM. For now it only reports its version; the lifecycle issue gives it
//! the job of preparing firmware, TPM, disks and taps and supervising QEMU.

fn main() {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        None | Some("--version") | Some("-V") | Some("version") => {
            println!("vmrunner {}", env!("CARGO_PKG_VERSION"));
        }
        Some(other) => {
            eprintln!("vmrunner: unknown argument {other:?} (only --version is supported yet)");
            std::process::exit(2);
        }
    }
}
