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
async fn guessing_at_a_username_never_locks_its_owner_out() -> TestResult {
    let s = TestServer::start_with(|c| {
        c.login_rate_limit = RateLimit::Failures { max: 5, window: Duration::from_secs(60) };
    })
    .await;
    // Five addresses fail on admin, one guess each (the per-address limit alone never trips).
    for i in 0..5u8 {
        let client = client_from(Ipv4Addr::new(127, 0, 1, 10 + i))?;
        assert_eq!(attempt(&s, &client, "admin", "guess").await.status(), StatusCode::UNAUTHORIZED);
    }
    // Those addresses are now held back on admin...
    let failed = client_from(Ipv4Addr::new(127, 0, 1, 10))?;
    let r = attempt(&s, &failed, "admin", "admin").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    // ...a new address gets one guess, and is held back after it fails...
    let sprayer = client_from(Ipv4Addr::new(127, 0, 3, 1))?;
    assert_eq!(attempt(&s, &sprayer, "admin", "guess").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(attempt(&s, &sprayer, "admin", "guess").await.status(), StatusCode::TOO_MANY_REQUESTS);
    // ...and the real admin, from an address that did not fail, signs in.
    let owner = client_from(Ipv4Addr::new(127, 0, 2, 1))?;
    assert_eq!(attempt(&s, &owner, "admin", "admin").await.status(), StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn forwarded_for_names_the_client_only_behind_a_trusted_proxy() -> TestResult {
    let s = TestServer::start_with(|c| {
        c.login_rate_limit = RateLimit::Failures { max: 2, window: Duration::from_secs(60) };
        c.trusted_proxies = "127.0.0.5".into();
    })
    .await;
    let proxy = client_from(Ipv4Addr::new(127, 0, 0, 5))?;
    let via = |client: &'static str, password: &'static str| {
        proxy
            .post(s.url("/api/auth/login"))
            .header("x-forwarded-for", client)
            .json(&json!({"username": "admin", "password": password}))
            .send()
    };
    // Two clients behind the one proxy: one guessing does not hold back the other.
    for _ in 0..2 {
        assert_eq!(via("198.51.100.1", "guess").await?.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(via("198.51.100.1", "admin").await?.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(via("198.51.100.2", "admin").await?.status(), StatusCode::OK);
    let admin = s.admin_token().await;
    let (_, logs) = s.get("/api/audit-logs?action=auth.login", &admin).await;
    assert!(
        logs.to_string().contains("198.51.100.1") && logs.to_string().contains("198.51.100.2"),
        "the audit log names the clients: {logs}"
    );
    // Anyone else's X-Forwarded-For is ignored: it cannot dodge the limit by naming a new address.
    let direct = client_from(Ipv4Addr::new(127, 0, 0, 9))?;
    for (i, fake) in ["203.0.113.1", "203.0.113.2", "203.0.113.3"].into_iter().enumerate() {
        let r = direct
            .post(s.url("/api/auth/login"))
            .header("x-forwarded-for", fake)
            .json(&json!({"username": "nobody", "password": "guess"}))
            .send()
            .await?;
        let expected = if i < 2 { StatusCode::UNAUTHORIZED } else { StatusCode::TOO_MANY_REQUESTS };
        assert_eq!(r.status(), expected, "attempt {i}");
    }
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
