//! `vmrunner`: prepares and supervises one VM. The controller starts it (as a child process, or as a
//! container's entry point) with the path of a `vmrunner.json`; it sets up firmware, TPM, disk and
//! taps, starts QEMU paused, resumes it, and exits with QEMU's exit code after cleaning up.

mod error;
mod net;
mod prepare;
mod supervise;
mod tied;

use std::process::ExitCode;

use vmrunner::run_config::RunConfig;

fn usage() -> ExitCode {
    eprintln!("usage: vmrunner run|argv <path/to/vmrunner.json> | vmrunner --version");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] | ["--version"] | ["-V"] | ["version"] => {
            println!("vmrunner {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        ["run", config] => match read_config(config) {
            Ok(config) => supervise::run(config),
            Err(code) => code,
        },
        // The QEMU command line a run would use (one argument per line), for debugging and benchmarks.
        ["argv", config] => match read_config(config) {
            Ok(config) => {
                println!("{}", config.qemu.display());
                for arg in vmrunner::argv::qemu_args(&config.spec, &config.launch) {
                    println!("{arg}");
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        _ => usage(),
    }
}

fn read_config(path: &str) -> Result<RunConfig, ExitCode> {
    std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| {
            eprintln!("vmrunner: cannot read {path}: {e}");
            ExitCode::from(2)
        })
}
