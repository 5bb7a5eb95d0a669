//! A minimal QMP client: one connection per operation (QEMU serves one client per monitor socket,
//! and short connections leave the socket free for the next caller).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation done.
    pub async fn connect(socket: &Path) -> anyhow::Result<Qmp> {
        let stream = tokio::time::timeout(TIMEOUT, UnixStream::connect(socket))
            .await
            .context("QMP connect timed out")?
            .with_context(|| format!("connecting to {}", socket.display()))?;
        let (r, w) = stream.into_split();
        let mut qmp = Qmp { reader: BufReader::new(r), writer: w, next_id: 1 };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            bail!("not a QMP greeting: {greeting}");
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    async fn read_message(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        let n = tokio::time::timeout(TIMEOUT, self.reader.read_line(&mut line))
            .await
            .context("QMP read timed out")??;
        if n == 0 {
            bail!("QMP connection closed");
        }
        Ok(serde_json::from_str(&line)?)
    }

    /// Runs a command and returns its `return` value; events that arrive meanwhile are skipped.
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"execute": command, "id": id});
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut bytes = serde_json::to_vec(&msg)?;
        bytes.push(b'\n');
        self.writer.write_all(&bytes).await.context("QMP write")?;
        loop {
            let reply = self.read_message().await?;
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(err) = reply.get("error") {
                bail!("QMP {command}: {}", err.get("desc").and_then(Value::as_str).unwrap_or("error"));
            }
            return Ok(reply.get("return").cloned().unwrap_or(Value::Null));
        }
    }
}

/// `query-status`'s `status` (e.g. `running`, `paused`, `shutdown`), or None when QMP does not answer.
pub async fn status(socket: &Path) -> Option<String> {
    let mut q = Qmp::connect(socket).await.ok()?;
    let r = q.execute("query-status", None).await.ok()?;
    r.get("status").and_then(Value::as_str).map(String::from)
}

/// Sends one command on a fresh connection.
pub async fn command(socket: &Path, command: &str, arguments: Option<Value>) -> anyhow::Result<Value> {
    Qmp::connect(socket).await?.execute(command, arguments).await
}

/// Runs a QMP job command to its end: adds a `job-id` (and `auto-dismiss: false`, so a failure can
/// be read), polls `query-jobs` until the job concludes, dismisses it, and reports its error.
/// `progress` gets the job's (current, total) progress as QEMU reports it.
pub async fn run_job(
    socket: &Path,
    command: &str,
    mut arguments: Value,
    timeout: Duration,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> anyhow::Result<()> {
    let job_id = format!("fastvm-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    arguments["job-id"] = json!(job_id);
    if command == "blockdev-backup" {
        arguments["auto-dismiss"] = json!(false);
    }
    self::command(socket, command, Some(arguments)).await?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let jobs = self::command(socket, "query-jobs", None).await?;
        let job = jobs.as_array().and_then(|l| l.iter().find(|j| j["id"] == job_id.as_str())).cloned();
        match job {
            Some(j) if j["status"] == "concluded" => {
                let _ = self::command(socket, "job-dismiss", Some(json!({"id": job_id}))).await;
                return match j["error"].as_str() {
                    Some(e) => Err(anyhow::anyhow!("{command}: {e}")),
                    None => Ok(()),
                };
            }
            None => bail!("{command}: the job disappeared"),
            Some(j) if std::time::Instant::now() <= deadline => {
                if let (Some(cur), Some(total)) =
                    (j["current-progress"].as_u64(), j["total-progress"].as_u64())
                {
                    progress(cur, total);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some(_) => bail!("{command}: still running after {timeout:?}"),
        }
    }
}
