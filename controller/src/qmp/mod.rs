//! The QMP client, speaking the typed commands and messages of `vmrunner::qmp`: the wire (a
//! connection, its greeting and capabilities, replies matched by id) and, in `monitor`, the one
//! shared connection per VM that every command of the controller goes through.

mod monitor;

use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use anyhow::{Context, bail};
pub use monitor::{Event, Monitors, socket_of};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
pub use vmrunner::qmp::Command;
use vmrunner::qmp::{MAX_MESSAGE, Message};

const TIMEOUT: Duration = Duration::from_secs(10);

/// The controller's monitor connections (one per VM socket, opened on first use).
static MONITORS: LazyLock<Monitors> = LazyLock::new(Monitors::default);

pub fn monitors() -> &'static Monitors {
    &MONITORS
}

/// Reads one message, however long it takes (a monitor connection is quiet between commands).
async fn read_message(reader: &mut BufReader<OwnedReadHalf>) -> anyhow::Result<Message> {
    let mut line = Vec::new();
    let limit = MAX_MESSAGE as u64 + 1;
    if reader.take(limit).read_until(b'\n', &mut line).await? == 0 {
        bail!("QMP connection closed");
    }
    // JSON allows the line's trailing newline.
    Ok(Message::parse(&line)?)
}

pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
}

impl Qmp {
    /// Connects, reads the greeting (past any events QEMU kept for an earlier client) and leaves
    /// capabilities negotiation done.
    pub async fn connect(socket: &Path) -> anyhow::Result<Qmp> {
        let stream = tokio::time::timeout(TIMEOUT, UnixStream::connect(socket))
            .await
            .context("QMP connect timed out")?
            .with_context(|| format!("connecting to {}", socket.display()))?;
        let (r, w) = stream.into_split();
        let mut qmp = Qmp { reader: BufReader::new(r), writer: w, next_id: 1 };
        loop {
            match qmp.read_message().await? {
                Message::Greeting { .. } => break,
                Message::Event { .. } => continue,
                other => bail!("QMP spoke before its greeting: {other:?}"),
            }
        }
        qmp.execute(&Command::capabilities()).await?;
        Ok(qmp)
    }

    async fn read_message(&mut self) -> anyhow::Result<Message> {
        tokio::time::timeout(TIMEOUT, read_message(&mut self.reader)).await.context("QMP read timed out")?
    }

    /// The connection's halves, for a monitor that reads and writes at once.
    fn into_parts(self) -> (BufReader<OwnedReadHalf>, OwnedWriteHalf) {
        (self.reader, self.writer)
    }

    /// Runs a command and returns its `return` value; events that arrive meanwhile are skipped.
    pub async fn execute(&mut self, command: &Command) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        self.writer.write_all(&command.encode(id)).await.context("QMP write")?;
        loop {
            match self.read_message().await? {
                Message::Return { id: Some(got), value } if got == id => return Ok(value),
                Message::Error { id: Some(got), desc, .. } if got == id => {
                    bail!("QMP {}: {}", command.name(), if desc.is_empty() { "error" } else { &desc })
                }
                _ => continue,
            }
        }
    }
}

/// QEMU's run state (e.g. `running`, `paused`, `shutdown`), or None when QMP does not answer.
pub async fn status(socket: &Path) -> Option<String> {
    let reply = run(socket, &Command::query_status()).await.ok()?;
    vmrunner::qmp::run_state(&reply).map(String::from)
}

/// Runs one command on the shared connection to `socket`.
pub async fn run(socket: &Path, command: &Command) -> anyhow::Result<Value> {
    MONITORS.execute(socket, command).await
}

/// How often a running job's progress is read between its status changes.
const JOB_PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Runs a QMP job to its end: `command` gets a fresh job id; the job is looked at whenever QEMU
/// reports a change of its status (and every `JOB_PROGRESS_EVERY` for its progress) until it
/// concludes, which dismisses it, and its error is reported. `progress` gets the job's (current,
/// total) as QEMU reports it.
pub async fn run_job(
    socket: &Path,
    command: impl FnOnce(&str) -> Command,
    timeout: Duration,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> anyhow::Result<()> {
    let job_id = format!("fastvm-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let command = command(&job_id);
    let name = command.name();
    // Before the job exists, so that no change of its status goes unheard.
    let mut events = MONITORS.subscribe(socket).await?;
    run(socket, &command).await?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let jobs = run(socket, &Command::query_jobs()).await?;
        let job = jobs.as_array().and_then(|l| l.iter().find(|j| j["id"] == job_id.as_str())).cloned();
        match job {
            Some(j) if j["status"] == "concluded" => {
                let _ = run(socket, &Command::job_dismiss(&job_id)).await;
                return match j["error"].as_str() {
                    Some(e) => Err(anyhow::anyhow!("{name}: {e}")),
                    None => Ok(()),
                };
            }
            None => bail!("{name}: the job disappeared"),
            Some(j) if std::time::Instant::now() <= deadline => {
                if let (Some(cur), Some(total)) =
                    (j["current-progress"].as_u64(), j["total-progress"].as_u64())
                {
                    progress(cur, total);
                }
                let _ = tokio::time::timeout(JOB_PROGRESS_EVERY, status_change(&mut events, &job_id)).await;
            }
            Some(_) => bail!("{name}: still running after {timeout:?}"),
        }
    }
}

/// Returns at the next status change of job `job_id` (or when events were missed).
async fn status_change(events: &mut tokio::sync::broadcast::Receiver<Event>, job_id: &str) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(e) if e.name == "JOB_STATUS_CHANGE" && e.data["id"] == job_id => return,
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => return,
            // No more events: the caller's timeout decides.
            Err(RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::UnixListener;

    use super::*;

    /// A fake monitor: sends `before` on connect, then answers each command with `answer(n, line)`;
    /// no answer closes the connection.
    async fn monitor(
        before: &'static [&'static str],
        answer: fn(u64, &Value) -> Vec<String>,
    ) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (r, mut w) = stream.into_split();
            for line in before {
                let _ = w.write_all(format!("{line}\n").as_bytes()).await;
            }
            let mut lines = BufReader::new(r).lines();
            let mut n = 0;
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else { return };
                let replies = answer(n, &v);
                if replies.is_empty() {
                    return;
                }
                for reply in replies {
                    let _ = w.write_all(format!("{reply}\n").as_bytes()).await;
                }
                n += 1;
            }
        });
        (dir, path)
    }

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}}"#;
    const LEFTOVER: &str = r#"{"event": "JOB_STATUS_CHANGE", "data": {"status": "null", "id": "old"}}"#;

    fn ok_with_status(_: u64, v: &Value) -> Vec<String> {
        let id = &v["id"];
        match v["execute"].as_str() {
            // An event between the command and its reply, and a reply to someone else's id.
            Some("query-status") => vec![
                r#"{"event": "STOP"}"#.into(),
                serde_json::json!({"return": {"status": "wrong"}, "id": 999}).to_string(),
                serde_json::json!({"return": {"status": "paused"}, "id": id}).to_string(),
            ],
            Some("cont") => vec![
                serde_json::json!({"error": {"class": "GenericError", "desc": "nope"}, "id": id}).to_string(),
            ],
            _ => vec![serde_json::json!({"return": {}, "id": id}).to_string()],
        }
    }

    #[tokio::test]
    async fn events_before_the_greeting_and_before_a_reply_are_passed_over() {
        let (_dir, path) = monitor(&[LEFTOVER, LEFTOVER, GREETING], ok_with_status).await;
        assert_eq!(status(&path).await.as_deref(), Some("paused"));
    }

    #[tokio::test]
    async fn an_error_reply_names_the_command() {
        let (_dir, path) = monitor(&[GREETING], ok_with_status).await;
        let err = run(&path, &Command::cont()).await.expect_err("refused");
        assert_eq!(format!("{err:#}"), "QMP cont: nope");
    }

    #[tokio::test]
    async fn a_closed_socket_and_a_reply_too_large_are_errors() {
        let (_dir, path) = monitor(&[GREETING], |_, _| vec![]).await;
        let closed = Qmp::connect(&path).await.map(|_| ()).expect_err("closed before replying");
        assert!(format!("{closed:#}").contains("QMP connection closed"), "{closed:#}");
        let (_dir2, path2) = monitor(&[GREETING], |_, v| {
            vec![format!(r#"{{"return": "{}", "id": {}}}"#, "x".repeat(MAX_MESSAGE), v["id"])]
        })
        .await;
        let err = Qmp::connect(&path2).await.map(|_| ()).expect_err("too large");
        assert!(format!("{err:#}").contains("more than"), "{err:#}");
    }

    static JOB: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

    /// A job that runs, reports progress, and concludes with an error, announced by an event.
    fn failing_job(_: u64, v: &Value) -> Vec<String> {
        let id = &v["id"];
        let job = || JOB.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let ok = serde_json::json!({"return": {}, "id": id}).to_string();
        match v["execute"].as_str() {
            Some("snapshot-save") => {
                *JOB.lock().unwrap_or_else(|e| e.into_inner()) =
                    v["arguments"]["job-id"].as_str().unwrap_or_default().to_string();
                vec![ok]
            }
            Some("query-jobs") if v["arguments"].is_null() && job().ends_with("-seen") => {
                let j = job().trim_end_matches("-seen").to_string();
                vec![serde_json::json!({"return": [{"id": j, "status": "concluded", "error": "No space left"}], "id": id}).to_string()]
            }
            Some("query-jobs") => {
                let j = job();
                *JOB.lock().unwrap_or_else(|e| e.into_inner()) = format!("{j}-seen");
                vec![
                    serde_json::json!({"return": [{"id": j, "status": "running", "current-progress": 1, "total-progress": 2}], "id": id}).to_string(),
                    serde_json::json!({"event": "JOB_STATUS_CHANGE", "data": {"id": j, "status": "concluded"}}).to_string(),
                ]
            }
            _ => vec![ok],
        }
    }

    #[tokio::test]
    async fn a_job_is_followed_to_its_end_and_its_error_reported() {
        let (_dir, path) = monitor(&[GREETING], failing_job).await;
        let seen = std::sync::Mutex::new(Vec::new());
        let progress = |cur, total| seen.lock().unwrap_or_else(|e| e.into_inner()).push((cur, total));
        let save = |job: &str| Command::snapshot_save(job, "tag", "disk0", &["disk0"]);
        let err = run_job(&path, save, Duration::from_secs(30), &progress).await.expect_err("failed job");
        assert_eq!(format!("{err:#}"), "snapshot-save: No space left");
        assert_eq!(*seen.lock().unwrap_or_else(|e| e.into_inner()), [(1, 2)]);
    }
}
