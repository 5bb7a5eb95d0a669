//! User management and roles.

mod common;

use common::{TestResult, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn admin_creates_lists_and_deletes_users() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let (status, user) = s
        .post(
            "/api/auth/users",
            &admin,
            json!({"username": "alice_1", "password": "alice-pass", "is_admin": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert_eq!(user["username"], "alice_1");
    assert_eq!(user["is_admin"], false);

    let (status, list) = s.get("/api/auth/users", &admin).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> =
        list.as_array().ok_or("array")?.iter().filter_map(|u| u["username"].as_str()).collect();
    assert_eq!(names, ["admin", "alice_1"]);
    assert!(list[0].get("password_hash").is_none(), "hashes never leave the server");

    let alice = s.token("alice_1", "alice-pass").await;
    let (status, _) = s.call(Method::DELETE, "/api/auth/users/alice_1", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    // A deleted user's token dies with the user.
    assert_eq!(s.get("/api/auth/me", &alice).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(s.login("alice_1", "alice-pass").await.status(), StatusCode::UNAUTHORIZED);
    let (status, body) = s.call(Method::DELETE, "/api/auth/users/alice_1", Some(&admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    Ok(())
}

#[tokio::test]
async fn regular_users_get_403_on_admin_routes() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    s.create_user(&admin, "bob", "bob-password", false).await;
    let bob = s.token("bob", "bob-password").await;

    for (method, path, body) in [
        (Method::GET, "/api/auth/users", None),
        (Method::POST, "/api/auth/users", Some(json!({"username": "eve", "password": "eve-password"}))),
        (Method::DELETE, "/api/auth/users/admin", None),
        (Method::GET, "/api/audit-logs", None),
    ] {
        let (status, resp) = s.call(method.clone(), path, Some(&bob), body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(resp["detail"], "Admin privileges required");
    }
    // Nothing was created or deleted by the refused calls.
    assert_eq!(s.login("eve", "eve-password").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(s.get("/api/auth/users", &admin).await.1.as_array().map(Vec::len), Some(2));
    // Bob still manages his own account.
    assert_eq!(s.get("/api/auth/me", &bob).await.1["is_admin"], false);
    Ok(())
}

#[tokio::test]
async fn invalid_and_duplicate_users_are_refused() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    for bad in ["ab", "has space", "semi;colon", "../etc", &"x".repeat(51), "ünïcode"] {
        let (status, body) =
            s.post("/api/auth/users", &admin, json!({"username": bad, "password": "password1"})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert!(body["detail"].as_str().is_some_and(|d| d.starts_with("username")));
    }
    let (status, body) =
        s.post("/api/auth/users", &admin, json!({"username": "carol", "password": "short"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _) =
        s.post("/api/auth/users", &admin, json!({"username": "carol", "password": "x", "bogus": 1})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    s.create_user(&admin, "carol", "carol-password", false).await;
    let (status, body) =
        s.post("/api/auth/users", &admin, json!({"username": "carol", "password": "other-password"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // The duplicate did not overwrite the original's password.
    assert_eq!(s.login("carol", "carol-password").await.status(), StatusCode::OK);
    let (_, list) = s.get("/api/auth/users", &admin).await;
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    Ok(())
}

#[tokio::test]
async fn admins_cannot_delete_themselves_or_the_last_admin() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let (status, body) = s.call(Method::DELETE, "/api/auth/users/admin", Some(&admin), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("own account")));

    // With a second admin, one admin can remove the other, but then the survivor is the last one.
    s.create_user(&admin, "root2", "root2-password", true).await;
    let root2 = s.token("root2", "root2-password").await;
    let (status, _) = s.call(Method::DELETE, "/api/auth/users/admin", Some(&root2), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s.call(Method::DELETE, "/api/auth/users/root2", Some(&root2), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(s.get("/api/auth/me", &root2).await.1["is_admin"], true);
    Ok(())
}

#[tokio::test]
async fn an_admin_sets_a_users_password_and_signs_them_out() -> TestResult {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let dave = s.regular_user(&admin, "dave").await;
    let path = "/api/auth/users/dave/password";
    let (status, _) = s.post(path, &dave, json!({"new_password": "chosen-by-dave"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "only admins");
    let (status, body) = s.post(path, &admin, json!({"new_password": "short"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _) =
        s.post("/api/auth/users/nobody/password", &admin, json!({"new_password": "long enough"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) =
        s.post("/api/auth/users/admin/password", &admin, json!({"new_password": "long enough"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "your own goes through change-password");

    let (status, body) = s.post(path, &admin, json!({"new_password": "set-by-admin"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(s.get("/api/auth/me", &dave).await.0, StatusCode::UNAUTHORIZED, "signed out");
    assert_eq!(s.login("dave", "dave-password").await.status(), StatusCode::UNAUTHORIZED);
    let dave = s.token("dave", "set-by-admin").await;
    assert_eq!(s.get("/api/auth/me", &dave).await.1["must_change_password"], true);
    let (_, logs) = s.get("/api/audit-logs?action=user.set_password", &admin).await;
    assert_eq!(logs["total"], 4, "every attempt is audited: {logs}");
    Ok(())
}
