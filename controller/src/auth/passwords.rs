//! Password hashing (bcrypt, on blocking threads: a cost-12 hash takes a noticeable fraction of a second).

use std::sync::OnceLock;

use anyhow::Context;

use crate::error::{ApiError, ApiResult};

pub const MIN_LEN: usize = 8;
pub const MAX_LEN: usize = 128;

pub async fn hash(password: String, cost: u32) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
        .await
        .context("hashing task failed")?
        .context("hashing password")
}

/// `hash` of `None` still spends the bcrypt time (against a throw-away hash of the configured cost),
/// so that unknown users answer as slowly as known ones and usernames cannot be probed by timing.
pub async fn verify(password: String, hash: Option<String>, cost: u32) -> anyhow::Result<bool> {
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    tokio::task::spawn_blocking(move || match hash {
        Some(h) => bcrypt::verify(password, &h).unwrap_or(false),
        None => {
            if let Some(dummy) = DUMMY.get_or_init(|| bcrypt::hash("fastvm-dummy", cost).ok()) {
                let _ = bcrypt::verify(password, dummy);
            }
            false
        }
    })
    .await
    .context("verification task failed")
}

/// `field` names the request field in the error, so a client knows what to fix.
pub fn validate_new(field: &str, password: &str) -> ApiResult<()> {
    let len = password.chars().count();
    if !(MIN_LEN..=MAX_LEN).contains(&len) {
        return Err(ApiError::Unprocessable(format!(
            "{field}: must be {MIN_LEN} to {MAX_LEN} characters long"
        )));
    }
    Ok(())
}
