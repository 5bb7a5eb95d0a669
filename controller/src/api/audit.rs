//! The audit trail of the API: the middleware that records every mutating request (so no handler
//! can forget to), the `Audit` handle handlers enrich it through (a semantic action name, the
//! target, the user a login was for), and `GET /api/audit-logs`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Query, Request, State};
use axum::http::Method;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::session::AdminUser;
use crate::audit::{self, AuditPage, NewEntry};
use crate::error::{ApiResult, ErrorBody};
use crate::state::AppState;

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
    if let Err(e) = state.store.call(move |c| audit::insert(c, &entry)).await {
        tracing::error!(error = ?e, "could not write audit record");
    }
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
    let page = state.store.call(move |c| audit::page(c, limit, offset, q.user, q.action)).await?;
    Ok(Json(page))
}
