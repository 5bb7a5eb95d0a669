//! Every route of the committed OpenAPI document, walked as a regular user against an admin's
//! things: each route naming an object answers 403 or 404, each list leaves the admin's objects
//! out, each console socket refuses, and afterwards the admin's things are as they were. A route
//! added to the document is walked without this file changing.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::{TestResult, TestServer};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn document() -> Result<Value, Box<dyn std::error::Error>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.json");
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

/// A value the schema accepts, as small as it allows: required fields only, the lowest number,
/// the first enum choice. Good enough that a handler gets past parsing to the ownership check.
fn sample(schema: &Value, doc: &Value) -> Value {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or_default();
        return sample(&doc["components"]["schemas"][name], doc);
    }
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(first) = schema[key].as_array().and_then(|e| e.iter().find(|s| s["type"] != "null")) {
            return sample(first, doc);
        }
    }
    let kind = match &schema["type"] {
        Value::Array(kinds) => kinds.iter().find(|k| *k != "null").cloned().unwrap_or(Value::Null),
        other => other.clone(),
    };
    match kind.as_str() {
        Some("object") => {
            let mut out = serde_json::Map::new();
            for field in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                out.insert(field.into(), sample(&schema["properties"][field], doc));
            }
            Value::Object(out)
        }
        Some("array") => json!([]),
        Some("integer") | Some("number") => json!(schema["minimum"].as_u64().unwrap_or(1).max(1)),
        Some("boolean") => json!(false),
        Some("string") => json!("walker-value-1"),
        _ => Value::Null,
    }
}

struct AdminThings {
    vm: String,
    snapshot: String,
    volume: String,
    backup: String,
    job: String,
}

impl AdminThings {
    fn ids(&self) -> [&str; 5] {
        [&self.vm, &self.snapshot, &self.volume, &self.backup, &self.job]
    }

    /// The route with every parameter naming one of the admin's things.
    fn fill(&self, route: &str) -> String {
        route
            .replace("{vm_id}", &self.vm)
            .replace("{snap_id}", &self.snapshot)
            .replace("{vol_id}", &self.volume)
            .replace("{backup_id}", &self.backup)
            .replace("{job_id}", &self.job)
            .replace("{username}", "admin")
            .replace("{name}", "fastvm-test-guest.iso")
    }
}

async fn admins_things(s: &TestServer, admin: &str) -> Result<AdminThings, Box<dyn std::error::Error>> {
    let (status, body) =
        s.post("/api/vms", admin, json!({"name": "secret", "memory": 256, "cpus": 1, "disk_size": 1})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let vm = body["vm"]["id"].as_str().ok_or("vm id")?.to_string();
    // The disk a first start would make, so that snapshots and backups have something to work on.
    let disk = s.data_dir.path().join("vms").join(&vm).join("disk0.qcow2");
    std::fs::create_dir_all(s.data_dir.path().join("vms").join(&vm))?;
    let out = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&disk).arg("1G").output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let (status, body) = s.post(&format!("/api/vms/{vm}/snapshots"), admin, json!({"name": "s1"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let snapshot = body["snapshot"]["id"].as_str().ok_or("snapshot id")?.to_string();
    let (status, body) = s.post("/api/volumes", admin, json!({"name": "secret-data", "size_gb": 1})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let volume = body["volume"]["id"].as_str().ok_or("volume id")?.to_string();
    let (status, body) = s.call(Method::POST, &format!("/api/vms/{vm}/backup"), Some(admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let backup = body["id"].as_str().ok_or("backup id")?.to_string();
    let (_, jobs) = s.get("/api/jobs", admin).await;
    let job =
        jobs.as_array().and_then(|j| j.first()).and_then(|j| j["id"].as_str()).ok_or("job id")?.to_string();
    Ok(AdminThings { vm, snapshot, volume, backup, job })
}

/// What the admin sees of their things, to compare before and after the walk.
async fn admins_view(s: &TestServer, admin: &str, t: &AdminThings) -> Vec<(StatusCode, Value)> {
    let mut out = Vec::new();
    for path in [
        format!("/api/vms/{}", t.vm),
        format!("/api/vms/{}/snapshots", t.vm),
        format!("/api/volumes/{}", t.volume),
        "/api/backups".to_string(),
        format!("/api/vms/{}/backup-schedule", t.vm),
        "/api/auth/users".to_string(),
    ] {
        let (status, mut body) = s.get(&path, admin).await;
        // Live numbers that change on their own.
        if let Some(vm) = body.as_object_mut() {
            vm.remove("ip_addresses");
        }
        out.push((status, body));
    }
    out
}

/// Routes a regular user may call on themselves, which the walk must not (it would sign itself
/// out or change its own password) or need not (nothing of anyone else's in them).
const ON_ONESELF: &[&str] = &["/api/auth/login", "/api/auth/logout", "/api/auth/change-password"];

#[tokio::test]
async fn a_regular_user_reaches_nothing_of_another_users_through_any_route() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let things = admins_things(&s, &admin).await?;
    let user = s.regular_user(&admin, "walker").await;
    let before = admins_view(&s, &admin, &things).await;
    // The walker's own VM, so that lists have something of theirs in them too.
    let (status, own) =
        s.post("/api/vms", &user, json!({"name": "mine", "memory": 256, "cpus": 1, "disk_size": 1})).await;
    assert_eq!(status, StatusCode::OK, "{own}");

    let doc = document()?;
    let mut wrong: BTreeMap<String, String> = BTreeMap::new();
    let mut walked = 0;
    for (route, ops) in doc["paths"].as_object().ok_or("paths")? {
        if ON_ONESELF.contains(&route.as_str()) || route.starts_with("/ws/") {
            continue;
        }
        for (method, op) in ops.as_object().ok_or("operations")? {
            let method = Method::from_bytes(method.to_uppercase().as_bytes())?;
            let path = things.fill(route);
            let body = op["requestBody"]["content"]["application/json"]["schema"].as_object().map(|schema| {
                let schema = Value::Object(schema.clone());
                sample(&schema, &doc)
            });
            let multipart = op["requestBody"]["content"]["multipart/form-data"].is_object();
            let (status, answer) = if multipart {
                let form = reqwest::multipart::Form::new()
                    .part("file", reqwest::multipart::Part::bytes(vec![0u8; 4096]).file_name("x.iso"));
                let r = s
                    .client
                    .request(method.clone(), s.url(&path))
                    .bearer_auth(&user)
                    .multipart(form)
                    .send()
                    .await?;
                let status = r.status();
                (status, r.json::<Value>().await.unwrap_or(Value::Null))
            } else {
                s.call(method.clone(), &path, Some(&user), body).await
            };
            walked += 1;
            let text = answer.to_string();
            let names_another = route.contains('{');
            let leaked = things.ids().iter().find(|id| text.contains(**id)).copied();
            let verdict = if let Some(id) = leaked {
                Some(format!("{status}: the answer names the admin's {id}"))
            } else if text.contains("secret") {
                Some(format!("{status}: the answer names an admin's thing: {text:.200}"))
            } else if names_another && !matches!(status, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND) {
                Some(format!("{status}, not 403/404: {text:.200}"))
            } else if status.is_server_error() {
                Some(format!("{status}: {text:.200}"))
            } else {
                None
            };
            if let Some(v) = verdict {
                wrong.insert(format!("{method} {route}"), v);
            }
        }
    }
    assert!(walked > 60, "only {walked} operations walked: is the document there?");

    // The console sockets: refused with "no access" or "no such VM", before anything is relayed.
    for route in
        doc["paths"].as_object().ok_or("paths")?.keys().filter(|r| r.starts_with("/ws/") && r.contains('{'))
    {
        let url = format!("ws://{}{}?token={user}", s.addr, things.fill(route));
        match tokio_tungstenite::connect_async(url).await {
            Err(e) => {
                wrong.insert(format!("WS {route}"), format!("handshake failed instead of a close code: {e}"));
            }
            Ok((mut ws, _)) => {
                let first = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
                let code = match first {
                    Ok(Some(Ok(Message::Close(Some(ref frame))))) => Some(u16::from(frame.code)),
                    _ => None,
                };
                if !matches!(code, Some(4403) | Some(4404)) {
                    wrong.insert(format!("WS {route}"), format!("not closed with 4403/4404: {first:?}"));
                }
            }
        }
    }
    // The metrics stream: a full collection pass and more, and never a word of the admin's VM.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws/metrics?token={user}", s.addr)).await?;
    let mut heard = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Some(message)) = tokio::time::timeout_at(until, ws.next()).await {
        let text = message?.into_text()?.to_string();
        heard += 1;
        if let Some(id) = things.ids().iter().find(|id| text.contains(**id)) {
            wrong.insert("WS /ws/metrics".into(), format!("names the admin's {id}: {text:.200}"));
        }
    }
    assert!(heard > 0, "the metrics stream said nothing to the walker");

    assert!(wrong.is_empty(), "{} of {walked} operations let the walker through:\n{wrong:#?}", wrong.len());
    assert_eq!(admins_view(&s, &admin, &things).await, before, "the admin's things changed under the walk");
    s.token("admin", "admin").await;
    Ok(())
}

/// Every GET route, as an admin with things of every kind around: no answer holds a password hash,
/// a token or the token secret.
#[tokio::test]
async fn no_answer_holds_a_password_hash_a_token_or_the_secret() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let things = admins_things(&s, &admin).await?;
    let user = s.regular_user(&admin, "walker").await;
    let secret = std::fs::read(s.data_dir.path().join("jwt_secret"))?;
    let secret_text = String::from_utf8_lossy(&secret).trim().to_string();
    assert!(secret_text.len() >= 16, "the secret is where the controller keeps it");
    let doc = document()?;
    let mut walked = 0;
    for (route, ops) in doc["paths"].as_object().ok_or("paths")? {
        if ops.get("get").is_none() || route.starts_with("/ws/") {
            continue;
        }
        for token in [&admin, &user] {
            let r = s.client.get(s.url(&things.fill(route))).bearer_auth(token).send().await?;
            let text = r.text().await?;
            walked += 1;
            for (what, needle) in [
                ("a bcrypt hash", "$2b$"),
                ("a bcrypt hash", "$2y$"),
                ("the admin's token", admin.as_str()),
                ("the user's token", user.as_str()),
                ("the token secret", secret_text.as_str()),
            ] {
                assert!(!text.contains(needle), "GET {route} answers with {what}: {text:.300}");
            }
        }
    }
    assert!(walked > 50, "only {walked} answers read");
    Ok(())
}
