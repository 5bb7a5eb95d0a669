//! Every mutating request and every login leaves an audit record.

mod common;

use common::{TestResult, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The oldest record of `action` on `target` (the list is newest first).
fn find<'a>(logs: &'a Value, action: &str, target: &str) -> Option<&'a Value> {
    logs["logs"].as_array()?.iter().rev().find(|e| e["action"] == action && e["target"] == target)
}

#[tokio::test]
async fn mutations_and_logins_are_recorded_with_who_what_result_and_address() -> TestResult {
    let s = TestServer::start().await;
    assert_eq!(s.login("admin", "wrong").await.status(), StatusCode::UNAUTHORIZED);
    let admin = s.admin_token().await;
    s.create_user(&admin, "dave", "dave-password", false).await;
    let (status, _) =
        s.post("/api/auth/users", &admin, json!({"username": "dave", "password": "dave-password"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let dave = s.token("dave", "dave-password").await;
    s.post(
        "/api/auth/change-password",
        &dave,
        json!({"current_password": "dave-password", "new_password": "dave-password2"}),
    )
    .await;
    s.call(Method::POST, "/api/auth/logout", Some(&dave), None).await;
    s.call(Method::DELETE, "/api/auth/users/dave", Some(&admin), None).await;
    // Unauthenticated and malformed mutations are recorded too.
    s.call(Method::POST, "/api/auth/users", None, Some(json!({"username": "x"}))).await;

    let (status, logs) = s.get("/api/audit-logs?limit=1000", &admin).await;
    assert_eq!(status, StatusCode::OK);
    let failed = logs["logs"]
        .as_array()
        .ok_or("logs")?
        .iter()
        .find(|e| e["action"] == "auth.login" && e["result"] == "failure")
        .ok_or("failed login not audited")?;
    assert_eq!(failed["username"], "admin");
    assert_eq!(failed["status_code"], 401);
    assert_eq!(failed["client_ip"], "127.0.0.1");
    assert!(failed["timestamp"].as_str().is_some_and(|t| t.starts_with("20")));

    let created = find(&logs, "user.create", "dave").ok_or("user.create")?;
    assert_eq!(created["username"], "admin");
    assert_eq!(created["result"], "success");
    let dup = logs["logs"]
        .as_array()
        .ok_or("logs")?
        .iter()
        .find(|e| e["action"] == "user.create" && e["status_code"] == 409)
        .ok_or("duplicate create not audited")?;
    assert_eq!(dup["result"], "failure");
    assert_eq!(find(&logs, "auth.change_password", "dave").ok_or("change_password")?["username"], "dave");
    assert_eq!(find(&logs, "auth.logout", "dave").ok_or("logout")?["result"], "success");
    assert_eq!(find(&logs, "user.delete", "dave").ok_or("delete")?["username"], "admin");
    let anon = logs["logs"]
        .as_array()
        .ok_or("logs")?
        .iter()
        .find(|e| e["status_code"] == 401 && e["action"] == "POST /api/auth/users")
        .ok_or("unauthenticated mutation not audited")?;
    assert!(anon["username"].is_null());
    // Reads are not mutations.
    assert!(
        logs["logs"]
            .as_array()
            .ok_or("logs")?
            .iter()
            .all(|e| !e["action"].as_str().unwrap_or("").starts_with("GET"))
    );
    Ok(())
}

#[tokio::test]
async fn audit_log_filters_and_pages() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    for name in ["u1x", "u2x", "u3x"] {
        s.create_user(&admin, name, "password123", false).await;
    }
    s.token("u1x", "password123").await;

    let (_, by_action) = s.get("/api/audit-logs?action=user.create", &admin).await;
    assert_eq!(by_action["total"], 3);
    let targets: Vec<&str> =
        by_action["logs"].as_array().ok_or("logs")?.iter().filter_map(|e| e["target"].as_str()).collect();
    assert_eq!(targets, ["u3x", "u2x", "u1x"], "newest first");

    let (_, by_user) = s.get("/api/audit-logs?user=u1x", &admin).await;
    assert_eq!(by_user["total"], 1);
    assert_eq!(by_user["logs"][0]["action"], "auth.login");

    let (_, page) = s.get("/api/audit-logs?action=user.create&limit=1&offset=1", &admin).await;
    assert_eq!(page["logs"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["logs"][0]["target"], "u2x");
    assert_eq!(page["total"], 3);

    let (status, body) = s.get("/api/audit-logs?limit=abc", &admin).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["detail"].is_string());
    // Quotes in a filter are data, not SQL.
    let (status, none) = s.get("/api/audit-logs?user=x'%20OR%20'1'='1", &admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(none["total"], 0);
    Ok(())
}
