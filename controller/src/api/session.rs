//! Extractors that authenticate a request: `AuthUser` for any signed-in user, `AdminUser` for admins.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::audit::Audit;
use crate::auth::users::{self, SessionUser};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::now_unix;

pub struct AuthUser(pub SessionUser);

pub struct AdminUser(pub SessionUser);

/// The token of an `Authorization: Bearer …` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// A user as they are now, for holders of a ticket issued to them: None once the user is deleted,
/// and only the rights they have today.
pub async fn current_user(state: &AppState, username: &str) -> Option<SessionUser> {
    let name = username.to_string();
    let info = state.store.call(move |c| Ok(users::get(c, &name)?)).await.ok()??;
    let user = SessionUser {
        username: info.username,
        is_admin: info.is_admin,
        jti: String::new(),
        must_change_password: info.must_change_password,
    };
    refuse_pending(state, &user).is_ok().then_some(user)
}

/// What a user who must change their password may still reach in production mode.
const PENDING_ALLOWED: [&str; 3] = ["/api/auth/me", "/api/auth/change-password", "/api/auth/logout"];

/// In production mode, a user who has not yet replaced the password an admin gave them (or
/// admin/admin) can do nothing else.
fn refuse_pending(state: &AppState, user: &SessionUser) -> Result<(), ApiError> {
    if state.settings.production && user.must_change_password {
        return Err(ApiError::Forbidden(
            "Change your password first (POST /api/auth/change-password): this account still has the \
             password it was given"
                .into(),
        ));
    }
    Ok(())
}

/// The signed-in user a bearer token stands for (valid signature, not expired, session not revoked),
/// who may use the API (see `refuse_pending`).
pub async fn session_from_token(state: &AppState, token: &str) -> Result<SessionUser, ApiError> {
    let user = any_session(state, token).await?;
    refuse_pending(state, &user)?;
    Ok(user)
}

async fn any_session(state: &AppState, token: &str) -> Result<SessionUser, ApiError> {
    let claims = state
        .tokens
        .verify(token)
        .ok_or_else(|| ApiError::Unauthorized("Invalid or expired token".into()))?;
    state
        .store
        .call(move |c| Ok(users::active_session(c, &claims.jti, &claims.sub, now_unix())?))
        .await?
        .ok_or_else(|| ApiError::Unauthorized("Token has been revoked".into()))
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token =
            bearer(&parts.headers).ok_or_else(|| ApiError::Unauthorized("Not authenticated".into()))?;
        let session = any_session(state, token).await?;
        Audit::from_parts(parts).user(&session.username);
        if !PENDING_ALLOWED.contains(&parts.uri.path()) {
            refuse_pending(state, &session)?;
        }
        Ok(AuthUser(session))
    }
}

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let AuthUser(user) = AuthUser::from_request_parts(parts, state).await?;
        if !user.is_admin {
            return Err(ApiError::Forbidden("Admin privileges required".into()));
        }
        Ok(AdminUser(user))
    }
}
