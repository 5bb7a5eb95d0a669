//! Accounts: signing in, passwords and users, on top of the user store, the token keys and the
//! login rate limit.

use crate::auth::rate_limit::LoginLimiter;
use crate::auth::tokens::{self, TokenKeys};
use crate::auth::users::{self, SessionUser, UserInfo};
use crate::auth::{
    ChangePasswordRequest, CreateUserRequest, LoginRequest, SetPasswordRequest, TokenResponse, USERNAME_RE,
    passwords,
};
use crate::error::{ApiError, ApiResult};
use crate::store::{Store, now_unix};

pub struct Accounts<'a> {
    pub store: &'a Store,
    pub tokens: &'a TokenKeys,
    pub limiter: &'a LoginLimiter,
    pub bcrypt_cost: u32,
    /// `FASTVM_PRODUCTION`: only relevant to what is logged here.
    pub production: bool,
}

impl Accounts<'_> {
    /// Signs `req.username` in from `address`: a token, or 401 (429 after too many failures from
    /// this address or for this user).
    pub async fn login(&self, address: &str, req: LoginRequest) -> ApiResult<TokenResponse> {
        let limited_user = req.username.to_lowercase();
        // Counted as a failure before the password is checked, so parallel guesses cannot all slip
        // through before the first failure is recorded; forgiven below if it succeeds.
        if let Err(retry_after_secs) = self.limiter.begin_attempt(address, &limited_user) {
            return Err(ApiError::TooManyRequests {
                detail: format!("Too many failed login attempts; try again in {retry_after_secs} s"),
                retry_after_secs,
            });
        }
        // bcrypt reads at most 72 bytes; refusing huge inputs early keeps hashing cheap for attackers' junk.
        let plausible = USERNAME_RE.is_match(&req.username) && req.password.len() <= 1024;
        let stored = if plausible {
            let username = req.username.clone();
            self.store.call(move |c| Ok(users::password_hash(c, &username)?)).await?
        } else {
            None
        };
        let (hash, is_admin) = match stored {
            Some((hash, is_admin)) => (Some(hash), is_admin),
            None => (None, false),
        };
        if !passwords::verify(req.password, hash, self.bcrypt_cost).await? {
            return Err(ApiError::Unauthorized("Incorrect username or password".into()));
        }
        self.limiter.forgive(address, &limited_user);
        let (token, claims) = self.tokens.issue(&req.username, is_admin, now_unix())?;
        let username = req.username.clone();
        let user = self
            .store
            .call(move |c| {
                users::insert_session(c, &claims.jti, &claims.sub, claims.iat, claims.exp)?;
                Ok(users::get(c, &username)?)
            })
            .await?
            .ok_or_else(|| ApiError::Unauthorized("Incorrect username or password".into()))?;
        if user.must_change_password && !self.production {
            tracing::warn!(
                user = user.username,
                "signed in with a password that must be changed; with FASTVM_PRODUCTION=1 this account could do \
                 nothing else until it is"
            );
        }
        Ok(TokenResponse {
            access_token: token,
            token_type: "bearer".into(),
            expires_in: tokens::TOKEN_LIFETIME_SECS,
            username: user.username,
            is_admin: user.is_admin,
            must_change_password: user.must_change_password,
        })
    }

    /// Revokes the session `user` signed in with.
    pub async fn logout(&self, user: SessionUser) -> ApiResult<()> {
        self.store.call(move |c| Ok(users::revoke_session(c, &user.jti, now_unix())?)).await?;
        Ok(())
    }

    pub async fn info(&self, username: &str) -> ApiResult<UserInfo> {
        let u = username.to_string();
        let info = self.store.call(move |c| Ok(users::get(c, &u)?)).await?;
        info.ok_or_else(|| ApiError::Unauthorized("User no longer exists".into()))
    }

    pub async fn list(&self) -> ApiResult<Vec<UserInfo>> {
        Ok(self.store.call(|c| Ok(users::list(c)?)).await?)
    }

    /// Changes `user`'s own password; every other session of theirs is signed out.
    pub async fn change_password(&self, user: SessionUser, req: ChangePasswordRequest) -> ApiResult<()> {
        passwords::validate_new("new_password", &req.new_password)?;
        let username = user.username.clone();
        let current =
            self.store.call(move |c| Ok(users::password_hash(c, &username)?)).await?.map(|(hash, _)| hash);
        if current.is_none() || !passwords::verify(req.current_password, current, self.bcrypt_cost).await? {
            return Err(ApiError::BadRequest("current_password: incorrect".into()));
        }
        let hash = passwords::hash(req.new_password, self.bcrypt_cost).await?;
        self.store
            .call(move |c| {
                Ok(users::set_password(c, &user.username, &hash, false, Some(&user.jti), now_unix())?)
            })
            .await?;
        Ok(())
    }

    /// Sets another user's password (`admin` asks): their sessions are signed out, and they must
    /// choose their own at their next sign-in.
    pub async fn set_password(
        &self,
        admin: &SessionUser,
        username: &str,
        req: SetPasswordRequest,
    ) -> ApiResult<()> {
        if username == admin.username {
            return Err(ApiError::BadRequest(
                "Your own password is changed with POST /api/auth/change-password".into(),
            ));
        }
        passwords::validate_new("new_password", &req.new_password)?;
        let hash = passwords::hash(req.new_password, self.bcrypt_cost).await?;
        let target = username.to_string();
        let found = self
            .store
            .call(move |c| Ok(users::set_password(c, &target, &hash, true, None, now_unix())?))
            .await?;
        if !found {
            return Err(ApiError::NotFound(format!("User {username} not found")));
        }
        Ok(())
    }

    pub async fn create(&self, req: CreateUserRequest) -> ApiResult<UserInfo> {
        if !USERNAME_RE.is_match(&req.username) {
            return Err(ApiError::Unprocessable(
                "username: must be 3 to 50 characters of letters, digits, `_` or `-`".into(),
            ));
        }
        passwords::validate_new("password", &req.password)?;
        let hash = passwords::hash(req.password, self.bcrypt_cost).await?;
        let username = req.username.clone();
        let created = self
            .store
            .call(move |c| {
                if !users::insert(c, &username, &hash, req.is_admin, false, now_unix())? {
                    return Ok(None);
                }
                Ok(users::get(c, &username)?)
            })
            .await?;
        created.ok_or_else(|| ApiError::Conflict(format!("username: {} already exists", req.username)))
    }
}
