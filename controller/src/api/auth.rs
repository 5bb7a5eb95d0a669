//! `/api/auth/*`: signing in and out, passwords, and users.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit::Audit;
use super::session::{AdminUser, AuthUser};
use crate::auth::users::{self, UserInfo};
use crate::auth::{
    ChangePasswordRequest, CreateUserRequest, LoginRequest, SetPasswordRequest, TokenResponse, USERNAME_RE,
    owned, passwords, tokens,
};
use crate::error::{ApiError, ApiJson, ApiResult, ErrorBody};
use crate::http::{ClientIp, Message};
use crate::state::AppState;
use crate::store::now_unix;

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
    let (address, limited_user) =
        (ip.map(|i| i.to_string()).unwrap_or_default(), req.username.to_lowercase());
    // Counted as a failure before the password is checked, so parallel guesses cannot all slip
    // through before the first failure is recorded; forgiven below if it succeeds.
    if let Err(retry_after_secs) = state.login_limiter.begin_attempt(&address, &limited_user) {
        return Err(ApiError::TooManyRequests {
            detail: format!("Too many failed login attempts; try again in {retry_after_secs} s"),
            retry_after_secs,
        });
    }
    // bcrypt reads at most 72 bytes; refusing huge inputs early keeps hashing cheap for attackers' junk.
    let plausible = USERNAME_RE.is_match(&req.username) && req.password.len() <= 1024;
    let stored = if plausible {
        let username = req.username.clone();
        state.store.call(move |c| Ok(users::password_hash(c, &username)?)).await?
    } else {
        None
    };
    let (hash, is_admin) = match stored {
        Some((hash, is_admin)) => (Some(hash), is_admin),
        None => (None, false),
    };
    if !passwords::verify(req.password, hash, state.settings.bcrypt_cost).await? {
        return Err(ApiError::Unauthorized("Incorrect username or password".into()));
    }
    state.login_limiter.forgive(&address, &limited_user);
    let now = now_unix();
    let (token, claims) = state.tokens.issue(&req.username, is_admin, now)?;
    let username = req.username.clone();
    let user = state
        .store
        .call(move |c| {
            users::insert_session(c, &claims.jti, &claims.sub, claims.iat, claims.exp)?;
            Ok(users::get(c, &username)?)
        })
        .await?
        .ok_or_else(|| ApiError::Unauthorized("Incorrect username or password".into()))?;
    if user.must_change_password && !state.settings.production {
        tracing::warn!(
            user = user.username,
            "signed in with a password that must be changed; with FASTVM_PRODUCTION=1 this account could do \
             nothing else until it is"
        );
    }
    Ok(Json(TokenResponse {
        access_token: token,
        token_type: "bearer".into(),
        expires_in: tokens::TOKEN_LIFETIME_SECS,
        username: user.username,
        is_admin: user.is_admin,
        must_change_password: user.must_change_password,
    }))
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
    state.store.call(move |c| Ok(users::revoke_session(c, &user.jti, now_unix())?)).await?;
    Ok(Message::ok("Logged out"))
}

/// The signed-in user.
#[utoipa::path(get, path = "/api/auth/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = UserInfo), (status = 401, body = ErrorBody)))]
async fn me(State(state): State<AppState>, AuthUser(user): AuthUser) -> ApiResult<Json<UserInfo>> {
    let info = state.store.call(move |c| Ok(users::get(c, &user.username)?)).await?;
    info.map(Json).ok_or_else(|| ApiError::Unauthorized("User no longer exists".into()))
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
    passwords::validate_new("new_password", &req.new_password)?;
    let username = user.username.clone();
    let current =
        state.store.call(move |c| Ok(users::password_hash(c, &username)?)).await?.map(|(hash, _)| hash);
    if current.is_none()
        || !passwords::verify(req.current_password, current, state.settings.bcrypt_cost).await?
    {
        return Err(ApiError::BadRequest("current_password: incorrect".into()));
    }
    let hash = passwords::hash(req.new_password, state.settings.bcrypt_cost).await?;
    state
        .store
        .call(move |c| Ok(users::set_password(c, &user.username, &hash, false, Some(&user.jti), now_unix())?))
        .await?;
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
    if username == admin.username {
        return Err(ApiError::BadRequest(
            "Your own password is changed with POST /api/auth/change-password".into(),
        ));
    }
    passwords::validate_new("new_password", &req.new_password)?;
    let hash = passwords::hash(req.new_password, state.settings.bcrypt_cost).await?;
    let target = username.clone();
    let found = state
        .store
        .call(move |c| Ok(users::set_password(c, &target, &hash, true, None, now_unix())?))
        .await?;
    if !found {
        return Err(ApiError::NotFound(format!("User {username} not found")));
    }
    Ok(Message::ok(format!("Password of {username} set; their sessions are signed out")))
}

/// All users (admin only).
#[utoipa::path(get, path = "/api/auth/users", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = Vec<UserInfo>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_users(State(state): State<AppState>, _admin: AdminUser) -> ApiResult<Json<Vec<UserInfo>>> {
    Ok(Json(state.store.call(|c| Ok(users::list(c)?)).await?))
}

/// Create a user (admin only).
#[utoipa::path(post, path = "/api/auth/users", tag = "users", security(("bearer" = [])),
    request_body = CreateUserRequest,
    responses(
        (status = 201, body = UserInfo),
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
) -> ApiResult<(StatusCode, Json<UserInfo>)> {
    audit.action("user.create").target(&req.username);
    if !USERNAME_RE.is_match(&req.username) {
        return Err(ApiError::Unprocessable(
            "username: must be 3 to 50 characters of letters, digits, `_` or `-`".into(),
        ));
    }
    passwords::validate_new("password", &req.password)?;
    let hash = passwords::hash(req.password, state.settings.bcrypt_cost).await?;
    let username = req.username.clone();
    let created = state
        .store
        .call(move |c| {
            if !users::insert(c, &username, &hash, req.is_admin, false, now_unix())? {
                return Ok(None);
            }
            Ok(users::get(c, &username)?)
        })
        .await?;
    created
        .map(|u| (StatusCode::CREATED, Json(u)))
        .ok_or_else(|| ApiError::Conflict(format!("username: {} already exists", req.username)))
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
    if username == admin.username {
        return Err(ApiError::BadRequest("You cannot delete your own account".into()));
    }
    let how = q.owned.unwrap_or(owned::Owned::Refuse);
    let check = |c: &rusqlite::Connection, target: &str| -> anyhow::Result<Result<(), ApiError>> {
        let Some(user) = users::get(c, target)? else {
            return Ok(Err(ApiError::NotFound(format!("User {target} not found"))));
        };
        if user.is_admin && users::count_admins(c)? <= 1 {
            return Ok(Err(ApiError::BadRequest("You cannot delete the last admin".into())));
        }
        Ok(Ok(()))
    };
    let target = username.clone();
    state.store.call(move |c| check(c, &target)).await??;
    if how == owned::Owned::Delete {
        delete_all(&state, &username).await?;
    }
    let (target, to) = (username.clone(), admin.username.clone());
    state
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            if let Err(e) = check(&tx, &target)? {
                return Ok(Err(e));
            }
            if how == owned::Owned::HandOver {
                owned::hand_over(&tx, &target, &to)?;
            } else if let Some(refused) = owned::refusal(&target, owned::counts(&tx, &target)?) {
                return Ok(Err(refused));
            }
            users::delete(&tx, &target)?;
            tx.commit()?;
            Ok(Ok(()))
        })
        .await??;
    state.jobs.forget_owner(&username);
    Ok(Message::ok(format!("User {username} deleted")))
}

/// Deletes everything `user` owns. Each object goes on its own; the user is deleted after this
/// succeeds, so a failure (a volume attached to another user's VM, say) can be fixed and retried.
pub async fn delete_all(state: &AppState, user: &str) -> ApiResult<()> {
    let u = user.to_string();
    let vms: Vec<String> = state
        .store
        .call(move |c| {
            let mut stmt = c.prepare("SELECT id FROM vms WHERE owner = ?1")?;
            let rows = stmt.query_map([u], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?;
    for id in vms {
        match state.vms.delete(&id, true).await {
            Ok(()) | Err(ApiError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let u = user.to_string();
    let volumes = state
        .store
        .call(move |c| {
            let all = crate::store::volumes::list(c)?;
            Ok(all.into_iter().filter(|v| v.owner == u).collect::<Vec<_>>())
        })
        .await?;
    for v in volumes {
        let id = v.id.clone();
        if !state.store.call(move |c| Ok(crate::store::volumes::delete_unattached(c, &id)?)).await? {
            return Err(ApiError::Conflict(format!(
                "Volume {} is attached to VM {}: detach it first",
                v.name,
                v.attached_to.unwrap_or_default()
            )));
        }
        let _ = std::fs::remove_file(&v.path);
    }
    crate::backups::remove_all_of(&state.backups(), user).await?;
    let u = user.to_string();
    let seeds = state.store.call(move |c| Ok(crate::store::seeds::owned_by(c, &u)?)).await?;
    let dir = crate::isos::seeds_dir(&state.settings);
    for name in seeds {
        let _ = std::fs::remove_file(dir.join(&name));
        state.store.call(move |c| Ok(crate::store::seeds::delete(c, &name)?)).await?;
    }
    state.jobs.forget_owner(user);
    Ok(())
}
