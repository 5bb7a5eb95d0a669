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

/// On first start (no users at all) creates `admin`/`admin`, flagged to change its password.
pub async fn ensure_default_admin(store: &Store, bcrypt_cost: u32) -> anyhow::Result<()> {
    if store.call(|c| Ok(users::count(c)?)).await? > 0 {
        return Ok(());
    }
    let hash = passwords::hash(DEFAULT_ADMIN.to_string(), bcrypt_cost).await?;
    let created =
        store.call(move |c| Ok(users::insert(c, DEFAULT_ADMIN, &hash, true, true, now_unix())?)).await?;
    if created {
        tracing::warn!("created the default user admin/admin: change its password now");
    }
    Ok(())
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
