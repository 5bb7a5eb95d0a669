//! Runs QEMU for one VM: prepare, start paused, resume once set up, wait, clean up, report.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use vmrunner::argv::qemu_args;
use vmrunner::qmp::{Command as Qmp, MAX_MESSAGE, Message};
use vmrunner::run_config::{EXIT_FILE, ExitRecord, PID_FILE, READY_FILE, RunConfig};

use crate::error::{Error, Result, io};
use crate::net::HostNics;
use crate::prepare;

const QMP_TIMEOUT: Duration = Duration::from_secs(30);

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn write_exit(cfg: &RunConfig, record: &ExitRecord) {
    let path = cfg.launch.run_dir.join(EXIT_FILE);
    let tmp = path.with_extension("tmp");
    let ok = serde_json::to_vec(record)
        .ok()
        .and_then(|b| std::fs::write(&tmp, b).ok())
        .and_then(|_| std::fs::rename(&tmp, &path).ok());
    if ok.is_none() {
        eprintln!("vmrunner: could not write {}", path.display());
    }
}

pub fn run(cfg: RunConfig) -> ExitCode {
    let run_dir = cfg.launch.run_dir.clone();
    let _ = std::fs::remove_file(run_dir.join(READY_FILE));
    let _ = std::fs::remove_file(run_dir.join(EXIT_FILE));
    if std::fs::create_dir_all(&run_dir)
        .and_then(|_| std::fs::write(run_dir.join(PID_FILE), std::process::id().to_string()))
        .is_err()
    {
        eprintln!("vmrunner: cannot write {}", run_dir.join(PID_FILE).display());
    }
    let outcome = start_and_wait(&cfg);
    let _ = std::fs::remove_file(run_dir.join(READY_FILE));
    for sock in cfg.launch.run().sockets() {
        let _ = std::fs::remove_file(sock);
    }
    // Last: whoever waits for this run to be completely over watches this file.
    let finish = |code: ExitCode| {
        let _ = std::fs::remove_file(run_dir.join(PID_FILE));
        code
    };
    match outcome {
        Ok(status) => {
            write_exit(
                &cfg,
                &ExitRecord { code: status.code(), signal: status.signal(), error: None, at: now() },
            );
            let code = status.code().unwrap_or(128 + status.signal().unwrap_or(0));
            eprintln!("vmrunner: QEMU exited ({status})");
            finish(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        Err(error) => {
            eprintln!("vmrunner: {error}");
            write_exit(
                &cfg,
                &ExitRecord { code: None, signal: None, error: Some(error.to_string()), at: now() },
            );
            finish(ExitCode::FAILURE)
        }
    }
}

fn start_and_wait(cfg: &RunConfig) -> Result<ExitStatus> {
    prepare::dirs(cfg)?;
    prepare::ovmf_vars(cfg)?;
    prepare::disk(cfg)?;
    // swtpm first: it must not inherit the macvtap descriptors that QEMU is meant to get.
    let mut swtpm = prepare::swtpm(cfg)?;
    let mut nics = match HostNics::prepare(cfg) {
        Ok(n) => n,
        Err(e) => {
            stop_child(swtpm.take());
            return Err(e);
        }
    };
    let mut launch = cfg.launch.clone();
    launch.nics = nics.backends.clone();
    let args = qemu_args(&cfg.spec, &launch);

    let log_path = cfg.launch.run().qemu_log();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io(format!("opening {}", log_path.display())))?;
    let log_err = log.try_clone().map_err(io("sharing the QEMU log"))?;
    let mut qemu = match crate::tied::dies_with_us(&mut Command::new(&cfg.qemu))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
    {
        Ok(q) => q,
        Err(e) => {
            stop_child(swtpm.take());
            return Err(io(format!("starting {}", cfg.qemu.display()))(e));
        }
    };
    // The macvtap descriptors now belong to QEMU; our copies would keep the queues open after it exits.
    nics.close_files();

    if let Err(e) = resume(cfg, &mut qemu) {
        let _ = qemu.kill();
        let _ = qemu.wait();
        stop_child(swtpm.take());
        let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(Error::Start(format!("{e}; QEMU said: {}", tail.join(" | "))));
    }
    if let Err(e) = std::fs::write(cfg.launch.run_dir.join(READY_FILE), b"") {
        let _ = qemu.kill();
        let _ = qemu.wait();
        stop_child(swtpm.take());
        return Err(io("writing the ready marker")(e));
    }

    let status = qemu.wait().map_err(io("waiting for QEMU"))?;
    if let Some(mut s) = swtpm {
        // --terminate ends swtpm when QEMU disconnects; this only catches a QEMU that never connected.
        let deadline = Instant::now() + Duration::from_secs(3);
        while s.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = s.kill();
        let _ = s.wait();
    }
    nics.teardown();
    Ok(status)
}

fn stop_child(child: Option<Child>) {
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Waits for QMP, negotiates, and resumes the guest (QEMU starts with `-S`).
fn resume(cfg: &RunConfig, qemu: &mut Child) -> Result<()> {
    let sock = cfg.launch.run().qmp();
    let deadline = Instant::now() + QMP_TIMEOUT;
    let stream = loop {
        if let Ok(Some(status)) = qemu.try_wait() {
            return Err(Error::Start(format!("QEMU exited at start ({status})")));
        }
        match UnixStream::connect(&sock) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(io(format!("QMP socket {} did not answer", sock.display()))(e)),
        }
    };
    stream.set_read_timeout(Some(QMP_TIMEOUT)).map_err(io("setting the QMP timeout"))?;
    let mut writer = stream.try_clone().map_err(io("sharing the QMP socket"))?;
    let mut reader = BufReader::new(stream);
    let mut read = || -> Result<Message> {
        let mut line = Vec::new();
        let limit = MAX_MESSAGE as u64 + 1;
        if (&mut reader).take(limit).read_until(b'\n', &mut line).map_err(io("QMP read"))? == 0 {
            return Err(Error::Qmp("QMP closed the connection".into()));
        }
        Message::parse(&line).map_err(|e| Error::Qmp(e.to_string()))
    };
    // Events QEMU kept for an earlier client may come before the greeting.
    loop {
        match read()? {
            Message::Greeting { .. } => break,
            Message::Event { .. } => continue,
            other => return Err(Error::Qmp(format!("QMP spoke before its greeting: {other:?}"))),
        }
    }
    for (id, command) in [Qmp::capabilities(), Qmp::cont()].iter().enumerate() {
        let id = id as u64 + 1;
        writer.write_all(&command.encode(id)).map_err(io("QMP write"))?;
        loop {
            match read()? {
                Message::Return { id: Some(got), .. } if got == id => break,
                Message::Error { id: Some(got), desc, .. } if got == id => {
                    return Err(Error::Qmp(format!("QMP {} failed: {desc}", command.name())));
                }
                _ => continue,
            }
        }
    }
    Ok(())
}
