//! Test harness: the real application served over HTTP on 127.0.0.1:<random port> with its own
//! temporary data directory.
#![allow(dead_code)]

use std::net::SocketAddr;

use controller::app;
use controller::config::{RateLimit, Settings};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

pub struct TestServer {
    pub addr: SocketAddr,
    pub client: Client,
    pub data_dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// Settings for a fast test: cheap bcrypt, no login limit unless a test asks for one, backups as
/// often as a schedule asks, guests under
/// TCG (see the README on nested KVM), port forwards on loopback only, and ISOs from the test guest's folder.
pub fn test_settings(dir: &std::path::Path) -> Settings {
    let mut s = Settings::for_data_dir(dir);
    s.bcrypt_cost = 4;
    s.login_rate_limit = RateLimit::Off;
    s.accel = "tcg".into();
    s.port_forward_bind = "127.0.0.1".into();
    s.iso_dirs = guest::iso_path().parent().map(|p| p.display().to_string());
    s.vmrunner = Some(vmrunner_binary());
    // Schedule tests take several backups within seconds.
    s.backup_min_interval = 1;
    s
}

/// The workspace's built `vmrunner` (target/<profile>/vmrunner, beside this test's deps/ folder).
pub fn vmrunner_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target dir");
    let path = profile_dir.join("vmrunner");
    if !path.is_file() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "vmrunner", "--bin", "vmrunner"])
            .status()
            .expect("cargo build vmrunner");
        assert!(status.success(), "building vmrunner failed");
    }
    path
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> TestServer {
        let data_dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(data_dir, tweak).await
    }

    pub async fn start_in(data_dir: tempfile::TempDir, tweak: impl FnOnce(&mut Settings)) -> TestServer {
        let mut settings = test_settings(data_dir.path());
        tweak(&mut settings);
        keep_logs();
        let state = app::prepare(settings).await.expect("prepare app");
        if let Some(dir) = std::env::var_os("FASTVM_TEST_LOGS") {
            let id =
                data_dir.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if let Ok(secret) = std::fs::read(data_dir.path().join("jwt_secret")) {
                let _ =
                    std::fs::write(std::path::Path::new(&dir).join(format!("inproc-{id}.secrets")), secret);
            }
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app::serve(listener, state, async {
            let _ = rx.await;
        }));
        TestServer { addr, client: Client::new(), data_dir, shutdown: Some(tx), task: Some(task) }
    }

    /// Stops the server and hands back its data directory (for restart tests).
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server result");
        }
        let dir = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.data_dir, dir)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn login(&self, username: &str, password: &str) -> reqwest::Response {
        self.client
            .post(self.url("/api/auth/login"))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .expect("login request")
    }

    /// Signs in and returns the token; panics when sign-in fails.
    pub async fn token(&self, username: &str, password: &str) -> String {
        let r = self.login(username, password).await;
        assert_eq!(r.status(), StatusCode::OK, "login of {username}");
        let body: Value = r.json().await.expect("login json");
        body["access_token"].as_str().expect("access_token").to_string()
    }

    pub async fn admin_token(&self) -> String {
        self.token("admin", "admin").await
    }

    /// Sends a request with an optional bearer token and JSON body; returns status and JSON body
    /// (`Value::Null` when the body is not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("request");
        let status = r.status();
        let text = r.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// Creates a small BIOS VM booting the test guest ISO, starts it and waits for the guest to be
    /// READY; returns its id and run directory.
    pub async fn boot_guest(
        &self,
        token: &str,
        name: &str,
        iso: &std::path::Path,
    ) -> (String, std::path::PathBuf) {
        let (status, body) = self
            .post(
                "/api/vms",
                token,
                json!({"name": name, "memory": 256, "cpus": 1, "disk_size": 1, "firmware": "bios",
                       "iso_path": iso, "boot_order": ["cdrom", "disk"]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let id = body["vm"]["id"].as_str().expect("vm id").to_string();
        let run_dir = self.data_dir.path().join("run").join(&id);
        let (status, body) =
            self.call(Method::POST, &format!("/api/vms/{id}/start"), Some(token), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        guest::wait_serial_async(&run_dir, "FASTVM-GUEST-READY", 1, guest::BOOT_TIMEOUT).await;
        (id, run_dir)
    }

    /// A new regular user (password `<name>-password`), signed in: their token.
    pub async fn regular_user(&self, admin: &str, username: &str) -> String {
        let password = format!("{username}-password");
        self.create_user(admin, username, &password, false).await;
        self.token(username, &password).await
    }

    pub async fn create_user(&self, admin: &str, username: &str, password: &str, is_admin: bool) {
        let (status, body) = self
            .post(
                "/api/auth/users",
                admin,
                json!({"username": username, "password": password, "is_admin": is_admin}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "create {username}: {body}");
    }
}
/// In a test run that keeps logs (FASTVM_TEST_LOGS, set by scripts/test.sh), this test binary's
/// in-process servers log at every level of our code into one file there, which
/// `tests/logs/scan_secrets.py` searches for credentials. The first call installs it.
fn keep_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Some(dir) = std::env::var_os("FASTVM_TEST_LOGS") else { return };
        let dir = std::path::PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        let binary = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let Ok(file) = std::fs::File::create(dir.join(format!("inproc-{binary}-{}.log", std::process::id())))
        else {
            return;
        };
        // A test that installed its own subscriber first keeps it.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,controller=trace,tower_http=debug"))
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .try_init();
    });
}

pub mod guest;
pub mod process;

impl Drop for TestServer {
    fn drop(&mut self) {
        guest::kill_vms_under(self.data_dir.path());
    }
}
