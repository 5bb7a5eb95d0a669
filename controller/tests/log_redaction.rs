//! No log line, at any level, holds a credential from a query string (tokens, tickets, passwords).
//! Its own test binary: it installs the process's log subscriber.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{TestResult, TestServer};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn query_credentials_are_redacted_at_every_level() -> TestResult {
    let captured = Captured::default();
    let sink = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .try_init()
        .map_err(|e| format!("log subscriber: {e}"))?;
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    for path in [
        format!("/api/vms?token={admin}"),
        "/ws/metrics?ticket=SECRET-TICKET-1".to_string(),
        "/api/health?password=SECRET-PASSWORD-2".to_string(),
    ] {
        s.client.get(s.url(&path)).send().await?;
    }
    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    assert!(logs.contains("REDACTED"), "the request spans are logged: {}", &logs[..logs.len().min(2000)]);
    for secret in [admin.as_str(), "SECRET-TICKET-1", "SECRET-PASSWORD-2"] {
        assert!(!logs.contains(secret), "a credential reached the log: {secret}");
    }
    Ok(())
}
