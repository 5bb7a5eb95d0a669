//! The real `fastvm` binary as a child process, for tests of the command line and of restarts.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Fastvm {
    child: Child,
    pub addr: SocketAddr,
    /// Every line the server logged (JSON), collected in the background.
    pub logs: Arc<Mutex<Vec<String>>>,
    data_dir: PathBuf,
}

/// Where a test run keeps every server's log for `tests/logs/scan_secrets.py` (set by
/// scripts/test.sh): the logs of a whole run are searched for credentials.
fn kept_logs() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("FASTVM_TEST_LOGS")?);
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

pub type BoxError = Box<dyn std::error::Error>;

impl Fastvm {
    /// `fastvm serve` on 127.0.0.1:<random port> with JSON logs; returns once it listens.
    pub fn spawn(data_dir: &Path, env: &[(&str, &str)]) -> Result<Fastvm, BoxError> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fastvm"));
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .env("FASTVM_DATA_DIR", data_dir)
            .env("FASTVM_BCRYPT_COST", "4")
            .env("FASTVM_LOGIN_RATE_LIMIT", "off")
            .env("FASTVM_LOG_FORMAT", "json")
            .env("FASTVM_ACCEL", "tcg")
            .env("FASTVM_PORT_FORWARD_BIND", "127.0.0.1")
            .env("FASTVM_VMRUNNER", super::vmrunner_binary())
            .env_remove("JWT_SECRET_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let keep = kept_logs();
        if keep.is_some() && std::env::var_os("RUST_LOG").is_none() {
            // Every level of our own code (and the request spans) is searched.
            cmd.env("RUST_LOG", "info,controller=trace,fastvm=trace,tower_http=debug");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let mut kept = match &keep {
            Some(dir) => Some(std::fs::File::create(dir.join(format!("fastvm-{}.log", child.id())))?),
            None => None,
        };
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["fields"]["message"] == "Fast VM listening" {
                        let _ = tx.send(v["fields"]["address"].as_str().unwrap_or_default().to_string());
                    }
                }
                if let Some(file) = kept.as_mut() {
                    let _ = writeln!(file, "{line}");
                }
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a.parse()?,
            Err(_) => {
                let _ = child.kill();
                let logs = logs.lock().unwrap_or_else(|p| p.into_inner()).join("\n");
                return Err(format!("fastvm did not start listening:\n{logs}").into());
            }
        };
        Ok(Fastvm { child, addr, logs, data_dir: data_dir.to_path_buf() })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Signs in as admin/admin: the token.
    pub async fn admin_token(&self, client: &reqwest::Client) -> Result<String, BoxError> {
        let body: serde_json::Value = client
            .post(self.url("/api/auth/login"))
            .json(&serde_json::json!({"username": "admin", "password": "admin"}))
            .send()
            .await?
            .json()
            .await?;
        Ok(body["access_token"].as_str().ok_or("token")?.to_string())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits (at most 15 s) for a graceful exit.
    pub fn terminate(mut self) -> Result<ExitStatus, BoxError> {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Err("fastvm did not exit within 15 s of SIGTERM".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
    }
}

impl Drop for Fastvm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The secret its tokens were signed with: the search looks for it verbatim.
        if let (Some(dir), Ok(secret)) = (kept_logs(), std::fs::read(self.data_dir.join("jwt_secret"))) {
            let _ = std::fs::write(dir.join(format!("fastvm-{}.secrets", self.child.id())), secret);
        }
    }
}
