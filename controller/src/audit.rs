//! Audit log: a record of every mutating request and every login attempt, and `GET /api/audit-logs`.
//!
//! The middleware writes the row, so no handler can forget to; handlers only enrich it through the
//! `Audit` extractor (a semantic action name, the target, the user a login was for).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Query, Request, State};
use axum::http::Method;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rusqlite::{Connection, params_from_iter};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::AdminUser;
use crate::error::{ApiResult, ErrorBody};
use crate::state::AppState;
use crate::store::{now_unix, rfc3339};

#[derive(Default)]
struct Note {
    user: Option<String>,
    action: Option<String>,
    target: Option<String>,
    details: Option<String>,
}

/// Handle to the audit record of the current request.
#[derive(Clone, Default)]
pub struct Audit(Arc<Mutex<Note>>);

impl Audit {
    /// The request's handle; a detached one (written nowhere) outside the audit middleware.
    pub fn from_parts(parts: &Parts) -> Audit {
        parts.extensions.get::<Audit>().cloned().unwrap_or_default()
    }

    fn with(&self, f: impl FnOnce(&mut Note)) -> &Self {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
        self
    }

    pub fn user(&self, user: &str) -> &Self {
        self.with(|n| n.user = Some(user.to_string()))
    }

    pub fn action(&self, action: &str) -> &Self {
        self.with(|n| n.action = Some(action.to_string()))
    }

    pub fn target(&self, target: &str) -> &Self {
        self.with(|n| n.target = Some(target.to_string()))
    }

    pub fn details(&self, details: &str) -> &Self {
        self.with(|n| n.details = Some(details.to_string()))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Audit {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Audit::from_parts(parts))
    }
}

fn is_mutating(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

pub async fn middleware(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if !is_mutating(req.method()) {
        return next.run(req).await;
    }
    let audit = Audit::default();
    req.extensions_mut().insert(audit.clone());
    let fallback_action = match req.extensions().get::<MatchedPath>() {
        Some(path) => format!("{} {}", req.method(), path.as_str()),
        None => format!("{} {}", req.method(), req.uri().path()),
    };
    let client_ip =
        req.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip().to_string());

    // A mutation runs to completion in its own task, audit record included, even if the client goes
    // away halfway: half a delete (row gone, disks left) or an unrecorded change is worse than a
    // response nobody reads.
    let task = tokio::spawn(async move {
        let response = next.run(req).await;
        record(&state, &audit, fallback_action, client_ip, response.status().as_u16()).await;
        response
    });
    match task.await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(error = %e, "request task failed");
            crate::error::ApiError::Internal(anyhow::anyhow!("request task failed")).into_response()
        }
    }
}

async fn record(
    state: &AppState,
    audit: &Audit,
    fallback_action: String,
    client_ip: Option<String>,
    status: u16,
) {
    let note = std::mem::take(&mut *audit.0.lock().unwrap_or_else(|p| p.into_inner()));
    let entry = NewEntry {
        username: note.user,
        action: note.action.unwrap_or(fallback_action),
        target: note.target,
        result: if status < 400 { "success" } else { "failure" },
        status_code: status,
        client_ip,
        details: note.details,
    };
    if let Err(e) = state.store.call(move |c| insert(c, &entry)).await {
        tracing::error!(error = ?e, "could not write audit record");
    }
}

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

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// At most this many records, newest first (1-1000, default 100).
    pub limit: Option<u32>,
    pub offset: Option<u32>,
    /// Only this user's records.
    pub user: Option<String>,
    /// Only this action, e.g. `auth.login` or `user.create`.
    pub action: Option<String>,
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit_logs))
}

/// Audit records, newest first (admin only).
#[utoipa::path(get, path = "/api/audit-logs", tag = "audit", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_audit_logs(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let offset = q.offset.unwrap_or(0);
    let page = state
        .store
        .call(move |c| {
            let mut filters = Vec::new();
            let mut args: Vec<String> = Vec::new();
            if let Some(user) = q.user {
                filters.push("username = ?");
                args.push(user);
            }
            if let Some(action) = q.action {
                filters.push("action = ?");
                args.push(action);
            }
            let clause =
                if filters.is_empty() { String::new() } else { format!("WHERE {}", filters.join(" AND ")) };
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
        })
        .await?;
    Ok(Json(page))
}
