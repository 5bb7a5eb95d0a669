//! `/api/auth/*`: signing in and out, passwords, and users.

use axum::Json;
use axum::extract::{Path, Query, State};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit::Audit;
use super::session::{AdminUser, AuthUser};
use crate::auth::users::UserInfo;
use crate::auth::{
    ChangePasswordRequest, CreateUserRequest, LoginRequest, SetPasswordRequest, TokenResponse, owned,
};
use crate::error::{ApiJson, ApiResult, ErrorBody};
use crate::http::{ClientIp, Message};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(change_password))
        .routes(routes!(list_users, create_user))
        .routes(routes!(delete_user))
        .routes(routes!(set_user_password))
}

/// Sign in. Failed attempts are limited per client address and per username.
#[utoipa::path(post, path = "/api/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in", body = TokenResponse),
        (status = 401, description = "Wrong username or password", body = ErrorBody),
        (status = 429, description = "Too many failed attempts; see Retry-After", body = ErrorBody),
    ))]
async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    audit: Audit,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<Json<TokenResponse>> {
    audit.action("auth.login").user(&req.username).target(&req.username);
    let address = ip.map(|i| i.to_string()).unwrap_or_default();
    Ok(Json(state.accounts().login(&address, req).await?))
}

/// Revoke the token used for this request.
#[utoipa::path(post, path = "/api/auth/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = Message), (status = 401, body = ErrorBody)))]
async fn logout(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
) -> ApiResult<Json<Message>> {
    audit.action("auth.logout").target(&user.username);
    state.accounts().logout(user).await?;
    Ok(Message::ok("Logged out"))
}

/// The signed-in user.
#[utoipa::path(get, path = "/api/auth/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = UserInfo), (status = 401, body = ErrorBody)))]
async fn me(State(state): State<AppState>, AuthUser(user): AuthUser) -> ApiResult<Json<UserInfo>> {
    Ok(Json(state.accounts().info(&user.username).await?))
}

/// Change your own password. Every other token of yours stops working.
#[utoipa::path(post, path = "/api/auth/change-password", tag = "auth", security(("bearer" = [])),
    request_body = ChangePasswordRequest,
    responses(
        (status = 200, body = Message),
        (status = 400, description = "Current password is wrong", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 422, description = "New password is not 8 to 128 characters", body = ErrorBody),
    ))]
async fn change_password(
    State(state): State<AppState>,
    audit: Audit,
    AuthUser(user): AuthUser,
    ApiJson(req): ApiJson<ChangePasswordRequest>,
) -> ApiResult<Json<Message>> {
    audit.action("auth.change_password").target(&user.username);
    state.accounts().change_password(user, req).await?;
    state.default_password.refresh(&state.store, state.settings.bcrypt_cost).await;
    Ok(Message::ok("Password changed"))
}

/// Set another user's password (admin only). Every session of theirs is signed out, and they must
/// choose their own password when they next sign in.
#[utoipa::path(post, path = "/api/auth/users/{username}/password", tag = "users", security(("bearer" = [])),
    params(("username" = String, Path)), request_body = SetPasswordRequest,
    responses(
        (status = 200, body = Message),
        (status = 400, description = "Your own password: use change-password", body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, description = "New password is not 8 to 128 characters", body = ErrorBody),
    ))]
async fn set_user_password(
    State(state): State<AppState>,
    audit: Audit,
    AdminUser(admin): AdminUser,
    Path(username): Path<String>,
    ApiJson(req): ApiJson<SetPasswordRequest>,
) -> ApiResult<Json<Message>> {
    audit.action("user.set_password").target(&username);
    state.accounts().set_password(&admin, &username, req).await?;
    state.default_password.refresh(&state.store, state.settings.bcrypt_cost).await;
    Ok(Message::ok(format!("Password of {username} set; their sessions are signed out")))
}

/// All users (admin only).
#[utoipa::path(get, path = "/api/auth/users", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = Vec<UserInfo>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_users(State(state): State<AppState>, _admin: AdminUser) -> ApiResult<Json<Vec<UserInfo>>> {
    Ok(Json(state.accounts().list().await?))
}

/// Create a user (admin only).
#[utoipa::path(post, path = "/api/auth/users", tag = "users", security(("bearer" = [])),
    request_body = CreateUserRequest,
    responses(
        (status = 200, body = UserInfo),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, description = "Username taken", body = ErrorBody),
        (status = 422, description = "Invalid username or password", body = ErrorBody),
    ))]
async fn create_user(
    State(state): State<AppState>,
    audit: Audit,
    _admin: AdminUser,
    ApiJson(req): ApiJson<CreateUserRequest>,
) -> ApiResult<Json<UserInfo>> {
    audit.action("user.create").target(&req.username);
    Ok(Json(state.accounts().create(req).await?))
}

/// Delete a user (admin only). You cannot delete yourself or the last admin. What the user owns
/// (VMs, volumes, backups, cloud-init seeds) keeps the delete from happening unless `owned` says to
/// delete it too or to hand it over to you.
#[utoipa::path(delete, path = "/api/auth/users/{username}", tag = "users", security(("bearer" = [])),
    params(("username" = String, Path, description = "User to delete"), owned::DeleteUserQuery),
    responses(
        (status = 200, body = Message),
        (status = 400, description = "Yourself or the last admin", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The user still owns something", body = ErrorBody),
    ))]
async fn delete_user(
    State(state): State<AppState>,
    audit: Audit,
    AdminUser(admin): AdminUser,
    Path(username): Path<String>,
    Query(q): Query<owned::DeleteUserQuery>,
) -> ApiResult<Json<Message>> {
    audit.action("user.delete").target(&username);
    let how = q.owned.unwrap_or(owned::Owned::Refuse);
    crate::user_removal::delete_user(&state.backups(), &state.settings, &admin, &username, how).await?;
    Ok(Message::ok(format!("User {username} deleted")))
}
