//! Cross-cutting HTTP behaviour: security headers, CORS, error shapes, static files, Swagger UI.

mod common;

use common::{TestResult, TestServer};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::Value;

fn assert_base_headers(r: &reqwest::Response, what: &str) {
    let h = r.headers();
    assert_eq!(h.get("x-content-type-options").map(|v| v.as_bytes()), Some(&b"nosniff"[..]), "{what}");
    assert_eq!(h.get("x-frame-options").map(|v| v.as_bytes()), Some(&b"SAMEORIGIN"[..]), "{what}");
    assert!(h.contains_key("referrer-policy"), "{what}");
}

#[tokio::test]
async fn every_kind_of_response_carries_security_headers() -> TestResult {
    let s = TestServer::start().await;
    for path in ["/api/health", "/api/auth/me", "/login.html", "/no/such/file", "/docs/"] {
        let r = s.client.get(s.url(path)).send().await?;
        assert_base_headers(&r, path);
        assert!(!r.headers().contains_key("strict-transport-security"), "HSTS only in production");
        assert!(!r.headers().contains_key("content-security-policy"));
    }
    Ok(())
}

#[tokio::test]
async fn production_mode_adds_hsts_and_csp() -> TestResult {
    let s = TestServer::start_with(|c| c.production = true).await;
    for path in ["/api/health", "/", "/login.html"] {
        let r = s.client.get(s.url(path)).send().await?;
        assert_base_headers(&r, path);
        assert!(
            r.headers()
                .get("strict-transport-security")
                .is_some_and(|v| v.as_bytes().starts_with(b"max-age="))
        );
        let csp = r.headers().get("content-security-policy").ok_or("no CSP")?.to_str()?.to_string();
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-eval"), "{csp}");
    }
    // The pages the server ships satisfy that policy: no inline scripts.
    for page in ["/", "/login.html"] {
        let html = s.client.get(s.url(page)).send().await?.text().await?;
        for tag in html.split("<script").skip(1) {
            assert!(tag.trim_start().starts_with("src="), "inline script in {page}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn cors_allows_configured_origins_only() -> TestResult {
    let s = TestServer::start_with(|c| c.cors_origins = "https://ops.example, https://admin.example".into())
        .await;
    let preflight = |origin: &'static str| {
        s.client
            .request(Method::OPTIONS, s.url("/api/auth/login"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,authorization")
            .send()
    };
    let ok = preflight("https://admin.example").await?;
    assert_eq!(
        ok.headers().get("access-control-allow-origin").map(|v| v.as_bytes()),
        Some(&b"https://admin.example"[..])
    );
    let denied = preflight("https://evil.example").await?;
    assert!(!denied.headers().contains_key("access-control-allow-origin"));

    let any = TestServer::start().await;
    let r = any.client.get(any.url("/api/health")).header("origin", "https://x.example").send().await?;
    assert_eq!(r.headers().get("access-control-allow-origin").map(|v| v.as_bytes()), Some(&b"*"[..]));
    Ok(())
}

#[tokio::test]
async fn malformed_requests_get_json_errors_and_change_nothing() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let send = |body: &'static str, content_type: Option<&'static str>| {
        let mut req = s.client.post(s.url("/api/auth/users")).bearer_auth(&admin).body(body);
        if let Some(ct) = content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        req.send()
    };
    for (body, ct, expected) in [
        ("{not json", Some("application/json"), StatusCode::BAD_REQUEST),
        ("", Some("application/json"), StatusCode::BAD_REQUEST),
        (
            r#"{"username": 5, "password": "password1"}"#,
            Some("application/json"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (r#"{"username": "zed"}"#, Some("application/json"), StatusCode::UNPROCESSABLE_ENTITY),
        (r#"[1, 2, 3]"#, Some("application/json"), StatusCode::UNPROCESSABLE_ENTITY),
        (r#"{"username": "zed", "password": "password1"}"#, None, StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (
            r#"{"username": "zed", "password": "password1"}"#,
            Some("text/plain"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
    ] {
        let r = send(body, ct).await?;
        assert_eq!(r.status(), expected, "{body:?} {ct:?}");
        assert!(r.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json")));
        let json: Value = r.json().await?;
        assert!(json["detail"].as_str().is_some_and(|d| !d.is_empty()), "{body:?}: {json}");
    }
    assert_eq!(s.login("zed", "password1").await.status(), StatusCode::UNAUTHORIZED);

    // A body over the limit is refused with JSON, not buffered.
    let huge = "x".repeat(3 * 1024 * 1024);
    let r = s
        .client
        .post(s.url("/api/auth/login"))
        .header(CONTENT_TYPE, "application/json")
        .body(huge)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.json::<Value>().await?["detail"].is_string());
    Ok(())
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_json() -> TestResult {
    let s = TestServer::start().await;
    let (status, body) = s.call(Method::GET, "/api/no-such-thing", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["detail"], "Not Found");
    let (status, body) = s.call(Method::DELETE, "/api/health", None, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body["detail"].is_string());
    Ok(())
}

#[tokio::test]
async fn dashboard_pages_and_swagger_ui_are_served() -> TestResult {
    let s = TestServer::start().await;
    for (path, needle) in
        [("/", "Fast VM"), ("/login.html", "/api/auth/login"), ("/js/login.js", "access_token")]
    {
        let r = s.client.get(s.url(path)).send().await?;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let text = r.text().await?;
        let text = if path == "/login.html" {
            s.client.get(s.url("/js/login.js")).send().await?.text().await?
        } else {
            text
        };
        assert!(text.contains(needle), "{path} lacks {needle}");
    }
    let css = s.client.get(s.url("/style.css")).send().await?;
    assert!(css.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/css")));
    let docs = s.client.get(s.url("/docs/")).send().await?;
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await?.contains("swagger"));
    let spec: Value = s.client.get(s.url("/api/openapi.json")).send().await?.json().await?;
    assert!(spec["paths"]["/api/auth/login"]["post"].is_object());
    // Path traversal does not escape the embedded files.
    let r = s.client.get(s.url("/..%2f..%2fCargo.toml")).send().await?;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    Ok(())
}
