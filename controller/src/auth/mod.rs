//! Authentication and users: accounts and their passwords, tokens and sessions, the login rate
//! limit, and what a user owns when they are deleted.

pub mod accounts;
pub mod owned;
pub mod passwords;
pub mod rate_limit;
pub mod tokens;
pub mod users;

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::store::{Store, now_unix};

const DEFAULT_ADMIN: &str = "admin";

pub static USERNAME_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9_-]{3,50}$").unwrap_or_else(|_| unreachable!()));

/// On first start (no users at all) creates `admin`: with `password` when the operator gave one
/// (`FASTVM_ADMIN_PASSWORD`), else with `admin`, flagged to change its password.
pub async fn ensure_default_admin(
    store: &Store,
    bcrypt_cost: u32,
    password: Option<&str>,
) -> anyhow::Result<()> {
    if store.call(|c| Ok(users::count(c)?)).await? > 0 {
        return Ok(());
    }
    if let Some(p) = password {
        passwords::validate_new("FASTVM_ADMIN_PASSWORD", p).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let must_change = password.is_none();
    let hash = passwords::hash(password.unwrap_or(DEFAULT_ADMIN).to_string(), bcrypt_cost).await?;
    let created = store
        .call(move |c| Ok(users::insert(c, DEFAULT_ADMIN, &hash, true, must_change, now_unix())?))
        .await?;
    if created && must_change {
        tracing::warn!("created the default user admin/admin: change its password now");
    }
    Ok(())
}

/// Whether `admin` can still sign in with the password `admin`, as last looked at (a bcrypt check
/// each time: at start, every minute, and when a password changes; never per request).
#[derive(Default)]
pub struct DefaultPassword(std::sync::atomic::AtomicBool);

impl DefaultPassword {
    pub fn in_use(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub async fn refresh(&self, store: &Store, bcrypt_cost: u32) -> bool {
        let stored = store.call(|c| Ok(users::password_hash(c, DEFAULT_ADMIN)?)).await;
        let in_use = match stored {
            Ok(Some((hash, _))) => {
                passwords::verify(DEFAULT_ADMIN.to_string(), Some(hash), bcrypt_cost).await.unwrap_or(false)
            }
            Ok(None) => false,
            // Unknown: keep what was known.
            Err(_) => return self.in_use(),
        };
        self.0.store(in_use, std::sync::atomic::Ordering::Relaxed);
        in_use
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: i64,
    pub username: String,
    pub is_admin: bool,
    pub must_change_password: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    pub current_password: String,
    /// 8 to 128 characters.
    pub new_password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    /// 3 to 50 of `a-z A-Z 0-9 _ -`.
    pub username: String,
    /// 8 to 128 characters.
    pub password: String,
    #[serde(default)]
    pub is_admin: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPasswordRequest {
    /// 8 to 128 characters. The user must change it at their next sign-in.
    pub new_password: String,
}
