//! Login rate limiting, per client address and per username, through the real listener.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::{TestResult, TestServer};
use controller::config::RateLimit;
use reqwest::{Client, StatusCode};
use serde_json::json;

fn client_from(ip: Ipv4Addr) -> Result<Client, reqwest::Error> {
    Client::builder().local_address(IpAddr::V4(ip)).build()
}

async fn attempt(s: &TestServer, client: &Client, user: &str, password: &str) -> reqwest::Response {
    client
        .post(s.url("/api/auth/login"))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .expect("login request")
}

#[tokio::test]
async fn five_failures_from_one_address_get_429_with_retry_after() -> TestResult {
    let s = TestServer::start_with(|c| {
        c.login_rate_limit = RateLimit::Failures { max: 5, window: Duration::from_secs(60) };
    })
    .await;
    let client = client_from(Ipv4Addr::new(127, 0, 0, 1))?;
    for i in 0..5 {
        let r = attempt(&s, &client, &format!("user{i}"), "wrong").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let r = attempt(&s, &client, "admin", "admin").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "even a right password waits");
    let retry: u64 = r.headers().get("retry-after").ok_or("no Retry-After")?.to_str()?.parse()?;
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let body: serde_json::Value = r.json().await?;
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("Too many")));

    // Another address is not affected for a user nobody attacked.
    let other = client_from(Ipv4Addr::new(127, 0, 0, 2))?;
    assert_eq!(attempt(&s, &other, "admin", "admin").await.status(), StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn failures_for_one_username_block_it_from_every_address() -> TestResult {
    let s = TestServer::start_with(|c| {
        c.login_rate_limit = RateLimit::Failures { max: 5, window: Duration::from_secs(60) };
    })
    .await;
    for i in 0..5u8 {
        let client = client_from(Ipv4Addr::new(127, 0, 1, 10 + i))?;
        assert_eq!(attempt(&s, &client, "admin", "guess").await.status(), StatusCode::UNAUTHORIZED);
    }
    let fresh = client_from(Ipv4Addr::new(127, 0, 2, 1))?;
    let r = attempt(&s, &fresh, "admin", "admin").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    Ok(())
}

#[tokio::test]
async fn the_limit_lifts_when_the_window_passes() -> TestResult {
    let s = TestServer::start_with(|c| {
        // Long enough for three logins (bcrypt in a debug build) on a loaded machine.
        c.login_rate_limit = RateLimit::Failures { max: 2, window: Duration::from_secs(3) };
    })
    .await;
    for _ in 0..2 {
        assert_eq!(s.login("admin", "bad").await.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(s.login("admin", "admin").await.status(), StatusCode::TOO_MANY_REQUESTS);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(s.login("admin", "admin").await.status(), StatusCode::OK);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_guesses_cannot_slip_past_the_limit() -> TestResult {
    let s = TestServer::start_with(|c| {
        c.login_rate_limit = RateLimit::Failures { max: 5, window: Duration::from_secs(60) };
    })
    .await;
    let client = client_from(Ipv4Addr::new(127, 0, 0, 1))?;
    let attempts: Vec<_> = (0..20).map(|_| attempt(&s, &client, "admin", "wrong")).collect();
    let statuses: Vec<StatusCode> =
        futures::future::join_all(attempts).await.iter().map(|r| r.status()).collect();
    let unauthorized = statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
    let limited = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((unauthorized, limited), (5, 15), "{statuses:?}");
    Ok(())
}
