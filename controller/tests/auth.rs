//! Sign-in, tokens (and forgeries of them), sign-out and password changes, over real HTTP.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::{TestResult, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn login_returns_a_bearer_token_with_the_documented_claims() -> TestResult {
    let s = TestServer::start().await;
    let r = s.login("admin", "admin").await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await?;
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 86400);
    let token = body["access_token"].as_str().ok_or("no token")?;
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&B64.decode(parts[0])?)?;
    assert_eq!(header["alg"], "HS256");
    let claims: Value = serde_json::from_slice(&B64.decode(parts[1])?)?;
    assert_eq!(claims["sub"], "admin");
    assert_eq!(claims["is_admin"], true);
    assert_eq!(claims["exp"].as_i64().ok_or("exp")? - claims["iat"].as_i64().ok_or("iat")?, 86400);
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
    Ok(())
}

#[tokio::test]
async fn first_start_admin_must_change_password() -> TestResult {
    let s = TestServer::start().await;
    let token = s.admin_token().await;
    let (status, me) = s.get("/api/auth/me", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["username"], "admin");
    assert_eq!(me["is_admin"], true);
    assert_eq!(me["must_change_password"], true);
    assert!(me["created_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    Ok(())
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_401_with_detail() -> TestResult {
    let s = TestServer::start().await;
    for (user, pass) in [("admin", "nope"), ("ghost", "admin"), ("", ""), ("a;rm -rf /", "x")] {
        let r = s.login(user, pass).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{user}");
        let body: Value = r.json().await?;
        assert_eq!(body["detail"], "Incorrect username or password");
    }
    Ok(())
}

fn forge(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        B64.encode(serde_json::to_vec(header).unwrap_or_default()),
        B64.encode(serde_json::to_vec(claims).unwrap_or_default()),
        signature
    )
}

#[tokio::test]
async fn missing_malformed_and_forged_tokens_get_401() -> TestResult {
    let s = TestServer::start().await;
    let good = s.admin_token().await;
    let parts: Vec<&str> = good.split('.').collect();
    let claims: Value = serde_json::from_slice(&B64.decode(parts[1])?)?;
    let now = claims["iat"].as_i64().ok_or("iat")?;

    // alg=none with the same claims and no signature.
    let none = forge(&json!({"alg": "none", "typ": "JWT"}), &claims, "");
    // A payload changed after signing (a regular user pretending to be someone else).
    let mut tampered_claims = claims.clone();
    tampered_claims["sub"] = json!("root");
    let tampered = format!("{}.{}.{}", parts[0], B64.encode(serde_json::to_vec(&tampered_claims)?), parts[2]);
    // Signed with another key.
    let other_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"change-me-in-production"),
    )?;
    // Signed with the server's own key but expired: made by a second server that shares the secret.
    let secret = std::fs::read_to_string(s.data_dir.path().join("jwt_secret"))?;
    let mut expired_claims = claims.clone();
    expired_claims["iat"] = json!(now - 90_000);
    expired_claims["exp"] = json!(now - 3_600);
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &expired_claims,
        &jsonwebtoken::EncodingKey::from_secret(&hex::decode(secret.trim())?),
    )?;
    // Correctly signed and unexpired, but never issued (no session): a leaked secret alone is not enough
    // to mint tokens that pass revocation checks.
    let mut unissued_claims = claims.clone();
    unissued_claims["jti"] = json!("0123456789abcdef0123456789abcdef");
    let unissued = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &unissued_claims,
        &jsonwebtoken::EncodingKey::from_secret(&hex::decode(secret.trim())?),
    )?;

    for (what, token) in [
        ("garbage", "not-a-jwt".to_string()),
        ("alg=none", none),
        ("tampered payload", tampered),
        ("wrong key", other_key),
        ("expired", expired),
        ("never issued", unissued),
    ] {
        let (status, body) = s.get("/api/auth/me", &token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
        assert!(body["detail"].is_string(), "{what}: {body}");
    }
    let (status, body) = s.call(Method::GET, "/api/auth/me", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["detail"], "Not authenticated");
    // A non-bearer scheme is not accepted either.
    let r = s.client.get(s.url("/api/auth/me")).basic_auth("admin", Some("admin")).send().await?;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // And the genuine token still works.
    assert_eq!(s.get("/api/auth/me", &good).await.0, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn logout_revokes_only_that_token() -> TestResult {
    let s = TestServer::start().await;
    let a = s.admin_token().await;
    let b = s.admin_token().await;
    let (status, body) = s.call(Method::POST, "/api/auth/logout", Some(&a), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = s.get("/api/auth/me", &a).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["detail"], "Token has been revoked");
    assert_eq!(s.get("/api/auth/me", &b).await.0, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn change_password_validates_and_signs_out_other_sessions() -> TestResult {
    let s = TestServer::start().await;
    let current = s.admin_token().await;
    let other = s.admin_token().await;

    let (status, body) = s
        .post(
            "/api/auth/change-password",
            &current,
            json!({"current_password": "wrong", "new_password": "longenough"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("current_password")));

    for bad in ["short", &"x".repeat(129)] {
        let (status, body) = s
            .post(
                "/api/auth/change-password",
                &current,
                json!({"current_password": "admin", "new_password": bad}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body["detail"].as_str().is_some_and(|d| d.contains("new_password")));
    }
    // Nothing changed after the refusals.
    assert_eq!(s.get("/api/auth/me", &other).await.0, StatusCode::OK);

    let (status, body) = s
        .post(
            "/api/auth/change-password",
            &current,
            json!({"current_password": "admin", "new_password": "n3w-passw0rd"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(s.get("/api/auth/me", &other).await.0, StatusCode::UNAUTHORIZED);
    let (status, me) = s.get("/api/auth/me", &current).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["must_change_password"], false);
    assert_eq!(s.login("admin", "admin").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(s.login("admin", "n3w-passw0rd").await.status(), StatusCode::OK);
    Ok(())
}
