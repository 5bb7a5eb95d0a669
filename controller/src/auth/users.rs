//! Store queries for users and their login sessions.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::rfc3339;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserInfo {
    pub username: String,
    pub is_admin: bool,
    pub must_change_password: bool,
    /// RFC 3339 time of creation.
    pub created_at: String,
}

/// What a valid session says about its user right now (roles come from the database, not the token,
/// so a demotion takes effect at once).
#[derive(Debug, Clone)]
pub struct SessionUser {
    pub username: String,
    pub is_admin: bool,
    pub jti: String,
    /// Still on a password an admin set (or admin/admin): in production mode, only signing out and
    /// changing it are allowed.
    pub must_change_password: bool,
}

impl SessionUser {
    /// The one ownership rule: admins see everything, others what they own.
    pub fn may_see(&self, owner: &str) -> bool {
        self.is_admin || owner == self.username
    }
}

fn user_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<UserInfo> {
    Ok(UserInfo {
        username: row.get(0)?,
        is_admin: row.get(1)?,
        must_change_password: row.get(2)?,
        created_at: rfc3339(row.get(3)?),
    })
}

pub fn get(conn: &Connection, username: &str) -> rusqlite::Result<Option<UserInfo>> {
    conn.query_row(
        "SELECT username, is_admin, must_change_password, created_at FROM users WHERE username = ?1",
        [username],
        user_from_row,
    )
    .optional()
}

pub fn list(conn: &Connection) -> rusqlite::Result<Vec<UserInfo>> {
    let mut stmt = conn.prepare(
        "SELECT username, is_admin, must_change_password, created_at FROM users ORDER BY created_at, username",
    )?;
    let rows = stmt.query_map([], user_from_row)?;
    rows.collect()
}

pub fn password_hash(conn: &Connection, username: &str) -> rusqlite::Result<Option<(String, bool)>> {
    conn.query_row("SELECT password_hash, is_admin FROM users WHERE username = ?1", [username], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .optional()
}

pub fn count(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))
}

pub fn count_admins(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT COUNT(*) FROM users WHERE is_admin = 1", [], |r| r.get(0))
}

/// Returns false when the username is taken.
pub fn insert(
    conn: &Connection,
    username: &str,
    hash: &str,
    is_admin: bool,
    must_change_password: bool,
    now: i64,
) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "INSERT INTO users (username, password_hash, is_admin, must_change_password, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(username) DO NOTHING",
        params![username, hash, is_admin, must_change_password, now],
    )?;
    Ok(n == 1)
}

pub fn delete(conn: &Connection, username: &str) -> rusqlite::Result<bool> {
    Ok(conn.execute("DELETE FROM users WHERE username = ?1", [username])? == 1)
}

/// Sets a new password and revokes every session of the user but `keep_jti`.
pub fn set_password(
    conn: &mut Connection,
    username: &str,
    hash: &str,
    must_change_password: bool,
    keep_jti: Option<&str>,
    now: i64,
) -> rusqlite::Result<bool> {
    let tx = conn.transaction()?;
    let n = tx.execute(
        "UPDATE users SET password_hash = ?2, must_change_password = ?3 WHERE username = ?1",
        params![username, hash, must_change_password],
    )?;
    tx.execute(
        "UPDATE sessions SET revoked_at = ?3
         WHERE username = ?1 AND revoked_at IS NULL AND jti IS NOT ?2",
        params![username, keep_jti, now],
    )?;
    tx.commit()?;
    Ok(n == 1)
}

pub fn insert_session(
    conn: &Connection,
    jti: &str,
    username: &str,
    issued_at: i64,
    expires_at: i64,
) -> rusqlite::Result<()> {
    // Expired rows are of no use to anyone; dropping them here keeps the table small without a timer.
    conn.execute("DELETE FROM sessions WHERE expires_at < ?1", [issued_at])?;
    conn.execute(
        "INSERT INTO sessions (jti, username, issued_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
        params![jti, username, issued_at, expires_at],
    )?;
    Ok(())
}

pub fn active_session(
    conn: &Connection,
    jti: &str,
    username: &str,
    now: i64,
) -> rusqlite::Result<Option<SessionUser>> {
    conn.query_row(
        "SELECT u.username, u.is_admin, s.jti, u.must_change_password FROM sessions s
         JOIN users u ON u.username = s.username
         WHERE s.jti = ?1 AND s.username = ?2 AND s.revoked_at IS NULL AND s.expires_at > ?3",
        params![jti, username, now],
        |r| {
            Ok(SessionUser {
                username: r.get(0)?,
                is_admin: r.get(1)?,
                jti: r.get(2)?,
                must_change_password: r.get(3)?,
            })
        },
    )
    .optional()
}

pub fn revoke_session(conn: &Connection, jti: &str, now: i64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE sessions SET revoked_at = ?2 WHERE jti = ?1 AND revoked_at IS NULL",
        params![jti, now],
    )?;
    Ok(())
}
