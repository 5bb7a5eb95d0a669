//! The `fastvm` binary: restarts keep state, SIGTERM stops gracefully, admin helpers work.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use common::TestResult;
use common::process::Fastvm;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

async fn login(
    client: &Client,
    server: &Fastvm,
    user: &str,
    password: &str,
) -> Result<(StatusCode, Value), reqwest::Error> {
    let r = client
        .post(server.url("/api/auth/login"))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await?;
    let status = r.status();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

async fn me(client: &Client, server: &Fastvm, token: &str) -> Result<StatusCode, reqwest::Error> {
    Ok(client.get(server.url("/api/auth/me")).bearer_auth(token).send().await?.status())
}

#[tokio::test]
async fn restart_keeps_users_revoked_tokens_and_the_generated_secret() -> TestResult {
    let data = tempfile::tempdir()?;
    let client = Client::new();

    let first = Fastvm::spawn(data.path(), &[])?;
    let (_, body) = login(&client, &first, "admin", "admin").await?;
    let admin = body["access_token"].as_str().ok_or("token")?.to_string();
    let r = client
        .post(first.url("/api/auth/users"))
        .bearer_auth(&admin)
        .json(&json!({"username": "erin", "password": "erin-password"}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    let (_, body) = login(&client, &first, "erin", "erin-password").await?;
    let revoked = body["access_token"].as_str().ok_or("token")?.to_string();
    assert_eq!(
        client.post(first.url("/api/auth/logout")).bearer_auth(&revoked).send().await?.status(),
        StatusCode::OK
    );

    let secret_path = data.path().join("jwt_secret");
    let secret = std::fs::read(&secret_path)?;
    assert_eq!(std::fs::metadata(&secret_path)?.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(data.path().join("fastvm.db"))?.permissions().mode() & 0o077,
        0,
        "database is private"
    );
    for dir in ["vms", "run", "volumes", "images", "backups", "base"] {
        assert!(data.path().join(dir).is_dir(), "{dir} missing from the data dir layout");
    }
    let status = first.terminate()?;
    assert!(status.success(), "graceful shutdown exits 0, got {status}");

    let second = Fastvm::spawn(data.path(), &[])?;
    assert_eq!(std::fs::read(&secret_path)?, secret, "the secret is generated once");
    assert_eq!(me(&client, &second, &admin).await?, StatusCode::OK, "tokens survive a restart");
    assert_eq!(
        me(&client, &second, &revoked).await?,
        StatusCode::UNAUTHORIZED,
        "revocations survive a restart"
    );
    assert_eq!(login(&client, &second, "erin", "erin-password").await?.0, StatusCode::OK, "users survive");
    // The default admin is created only once, and not again after a restart.
    assert!(!second.log_text().contains("created the default user"));
    Ok(())
}

#[tokio::test]
async fn jwt_secret_key_overrides_the_generated_secret() -> TestResult {
    let data = tempfile::tempdir()?;
    let client = Client::new();
    let key = "a-long-operator-chosen-secret-of-more-than-32-bytes";
    let server = Fastvm::spawn(data.path(), &[("JWT_SECRET_KEY", key)])?;
    let (_, body) = login(&client, &server, "admin", "admin").await?;
    let token = body["access_token"].as_str().ok_or("token")?;
    let claims = jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(key.as_bytes()),
        &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
    );
    assert!(claims.is_ok(), "token is signed with JWT_SECRET_KEY");
    assert!(!data.path().join("jwt_secret").exists(), "no secret file when the key is configured");
    Ok(())
}

#[tokio::test]
async fn admin_reset_password_unlocks_and_signs_out() -> TestResult {
    let data = tempfile::tempdir()?;
    let client = Client::new();
    let server = Fastvm::spawn(data.path(), &[])?;
    let (_, body) = login(&client, &server, "admin", "admin").await?;
    let old = body["access_token"].as_str().ok_or("token")?.to_string();

    let reset = |user: &str, input: &str| -> std::io::Result<std::process::Output> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fastvm"))
            .args(["admin", "reset-password", user, "--password-stdin"])
            .env("FASTVM_DATA_DIR", data.path())
            .env("FASTVM_BCRYPT_COST", "4")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().map(|mut s| s.write_all(input.as_bytes()));
        child.wait_with_output()
    };
    let out = reset("nobody", "whatever-long\n")?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user"));
    let out = reset("admin", "short\n")?;
    assert!(!out.status.success(), "too short a password is refused");

    let out = reset("admin", "recovered-pass\n")?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(me(&client, &server, &old).await?, StatusCode::UNAUTHORIZED, "old sessions are signed out");
    assert_eq!(login(&client, &server, "admin", "admin").await?.0, StatusCode::UNAUTHORIZED);
    let (status, body) = login(&client, &server, "admin", "recovered-pass").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["must_change_password"], false);
    let token = body["access_token"].as_str().ok_or("token")?;
    let logs: Value = client
        .get(server.url("/api/audit-logs?action=admin.reset_password"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(logs["total"], 1);
    Ok(())
}

#[test]
fn openapi_command_prints_the_committed_document() -> TestResult {
    let out = Command::new(env!("CARGO_BIN_EXE_fastvm")).arg("openapi").output()?;
    assert!(out.status.success());
    let printed: Value = serde_json::from_slice(&out.stdout)?;
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../openapi/openapi.json"
    ))?)?;
    assert_eq!(
        printed, committed,
        "openapi/openapi.json is stale: run `cargo run -q --bin fastvm -- openapi > openapi/openapi.json`"
    );
    Ok(())
}

#[tokio::test]
async fn json_log_format_emits_one_json_object_per_line() -> TestResult {
    let data = tempfile::tempdir()?;
    let server = Fastvm::spawn(data.path(), &[])?;
    reqwest::get(server.url("/api/health")).await?;
    let text = server.log_text();
    assert!(!text.is_empty());
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {line}: {e}"))?;
        assert!(v["level"].is_string() && v["timestamp"].is_string());
    }
    Ok(())
}
