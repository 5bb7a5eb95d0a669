//! Audit log: a record of every mutating request and every login attempt. The API layer writes
//! the rows (`api::audit`: its middleware, so no handler can forget to).

use rusqlite::{Connection, params_from_iter};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::{now_unix, rfc3339};

pub struct NewEntry {
    pub username: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub result: &'static str,
    pub status_code: u16,
    pub client_ip: Option<String>,
    pub details: Option<String>,
}

/// Writes one record; also used by CLI commands that change state outside HTTP.
pub fn insert(conn: &mut Connection, e: &NewEntry) -> anyhow::Result<()> {
    conn.execute(
        "INSERT INTO audit_log (timestamp, username, action, target, result, status_code, client_ip, details)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        rusqlite::params![
            now_unix(),
            e.username,
            e.action,
            e.target,
            e.result,
            e.status_code,
            e.client_ip,
            e.details
        ],
    )?;
    Ok(())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    /// RFC 3339.
    pub timestamp: String,
    pub username: Option<String>,
    pub action: String,
    pub target: Option<String>,
    /// `success` or `failure`.
    pub result: String,
    pub status_code: u16,
    pub client_ip: Option<String>,
    pub details: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub logs: Vec<AuditEntry>,
    /// Matching records in all pages.
    pub total: i64,
    pub limit: u32,
    pub offset: u32,
}

/// One page of records, newest first, optionally of one user or one action.
pub fn page(
    c: &Connection,
    limit: u32,
    offset: u32,
    user: Option<String>,
    action: Option<String>,
) -> anyhow::Result<AuditPage> {
    let mut filters = Vec::new();
    let mut args: Vec<String> = Vec::new();
    if let Some(user) = user {
        filters.push("username = ?");
        args.push(user);
    }
    if let Some(action) = action {
        filters.push("action = ?");
        args.push(action);
    }
    let clause = if filters.is_empty() { String::new() } else { format!("WHERE {}", filters.join(" AND ")) };
    let total: i64 = c.query_row(
        &format!("SELECT COUNT(*) FROM audit_log {clause}"),
        params_from_iter(args.iter()),
        |r| r.get(0),
    )?;
    let mut stmt = c.prepare(&format!(
        "SELECT id, timestamp, username, action, target, result, status_code, client_ip, details
         FROM audit_log {clause} ORDER BY id DESC LIMIT {limit} OFFSET {offset}"
    ))?;
    let logs = stmt
        .query_map(params_from_iter(args.iter()), |r| {
            Ok(AuditEntry {
                id: r.get(0)?,
                timestamp: rfc3339(r.get(1)?),
                username: r.get(2)?,
                action: r.get(3)?,
                target: r.get(4)?,
                result: r.get(5)?,
                status_code: r.get(6)?,
                client_ip: r.get(7)?,
                details: r.get(8)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AuditPage { logs, total, limit, offset })
}
