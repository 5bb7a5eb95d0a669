//! `WS /ws/metrics`: the current snapshot on connect, then every collection pass, VM state changes
//! and job progress as they happen, each a JSON text message with a `type`. Users who are not
//! admins only hear about their own VMs and jobs. A client that falls behind is dropped rather than
//! buffered for.

use std::time::Duration;

use axum::Json;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use utoipa::ToSchema;

use crate::api::session::AuthUser;
use crate::api::session::{current_user, session_from_token};
use crate::auth::users::SessionUser;
use crate::consoles::Kind;
use crate::error::ErrorBody;
use crate::jobs::may_see;
use crate::state::AppState;

/// How often a connection's rights are checked again.
const RECHECK_EVERY: Duration = Duration::from_secs(30);

/// A message the client has not taken within this time ends the connection.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
pub struct WsAuth {
    token: Option<String>,
    ticket: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MetricsTicket {
    /// Opens `/ws/metrics` for a short while (`FASTVM_CONSOLE_TICKET_TTL`), so the bearer token
    /// need not go into a URL.
    pub ticket: String,
    pub ws_url: String,
}

fn sees_vm(state_owner: &str, user: &SessionUser) -> bool {
    user.may_see(state_owner)
}

/// A short-lived ticket for `/ws/metrics`.
#[utoipa::path(get, path = "/api/metrics/ticket", tag = "metrics", security(("bearer" = [])),
    responses((status = 200, body = MetricsTicket), (status = 401, body = ErrorBody)))]
pub async fn metrics_ticket(State(state): State<AppState>, AuthUser(user): AuthUser) -> Json<MetricsTicket> {
    let ticket = state.consoles.tickets.issue(&user.username, "", Kind::Metrics);
    Json(MetricsTicket { ws_url: format!("/ws/metrics?ticket={ticket}"), ticket })
}

/// The user a ticket of the metrics kind stands for (as they are now).
async fn ticket_user(state: &AppState, ticket: &str) -> Option<SessionUser> {
    let t = state.consoles.tickets.check(ticket).filter(|t| t.kind == Kind::Metrics)?;
    current_user(state, &t.username).await
}

/// Live metrics, VM state changes and job progress. Authenticate with `?token=` or `?ticket=` (from
/// `GET /api/metrics/ticket`); without a valid one the socket is closed with 4401.
#[utoipa::path(get, path = "/ws/metrics", tag = "metrics",
    params(("token" = Option<String>, Query), ("ticket" = Option<String>, Query)),
    responses((status = 101, description = "Switching to the WebSocket protocol; messages are JSON with a `type`: \
        `snapshot`, `metrics`, `vm_state` or `job`")))]
pub async fn metrics_ws(
    State(state): State<AppState>,
    Query(auth): Query<WsAuth>,
    ws: WebSocketUpgrade,
) -> Response {
    let user = match (auth.token.as_deref(), auth.ticket.as_deref()) {
        (Some(token), _) => session_from_token(&state, token).await.ok(),
        (None, Some(ticket)) => ticket_user(&state, ticket).await,
        (None, None) => None,
    };
    ws.on_upgrade(move |mut socket| async move {
        match user {
            Some(user) => serve(state, socket, user, auth.token).await,
            None => {
                let frame = CloseFrame { code: 4401, reason: "a valid token is required".into() };
                let _ = socket.send(Message::Close(Some(frame))).await;
            }
        }
    })
}

/// The user as they are now: a revoked token or a deleted user ends the stream, a changed role
/// changes what it shows.
async fn still_allowed(state: &AppState, user: &SessionUser, token: Option<&str>) -> Option<SessionUser> {
    match token {
        Some(token) => session_from_token(state, token).await.ok(),
        None => current_user(state, &user.username).await,
    }
}

async fn serve(state: AppState, ws: WebSocket, mut user: SessionUser, token: Option<String>) {
    let mut passes = state.metrics.passes.subscribe();
    let mut vm_events = state.vms.events.subscribe();
    let mut jobs = state.jobs.subscribe();
    let (mut tx, mut rx) = ws.split();
    if let Some(s) = state.metrics.snapshot() {
        let mut first = serde_json::to_value(s.visible_to(&user)).unwrap_or(Value::Null);
        first["type"] = json!("snapshot");
        if tx.send(Message::Text(first.to_string().into())).await.is_err() {
            return;
        }
    }
    let mut recheck = tokio::time::interval(RECHECK_EVERY);
    recheck.tick().await;
    loop {
        let message: Value = tokio::select! {
            _ = recheck.tick() => match still_allowed(&state, &user, token.as_deref()).await {
                Some(now) => {
                    user = now;
                    continue;
                }
                None => {
                    let frame = CloseFrame { code: 4401, reason: "the session has ended".into() };
                    let _ = tokio::time::timeout(SEND_TIMEOUT, tx.send(Message::Close(Some(frame)))).await;
                    return;
                }
            },
            pass = passes.recv() => match pass {
                Ok(s) => {
                    let mut m = serde_json::to_value(s.visible_to(&user)).unwrap_or(Value::Null);
                    m["type"] = json!("metrics");
                    m
                }
                Err(RecvError::Lagged(_)) => break,
                Err(RecvError::Closed) => return,
            },
            event = vm_events.recv() => match event {
                Ok(e) if sees_vm(&e.owner, &user) => {
                    let mut m = serde_json::to_value(&e).unwrap_or(Value::Null);
                    m["type"] = json!("vm_state");
                    m
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) => break,
                Err(RecvError::Closed) => return,
            },
            job = jobs.recv() => match job {
                Ok(j) if may_see(&user, &j) => json!({"type": "job", "job": j}),
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) => break,
                Err(RecvError::Closed) => return,
            },
            incoming = rx.next() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
        };
        let sent =
            tokio::time::timeout(SEND_TIMEOUT, tx.send(Message::Text(message.to_string().into()))).await;
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
    }
    // Fell behind: say why, then let go.
    let frame = CloseFrame { code: 1008, reason: "the client fell behind".into() };
    let _ = tokio::time::timeout(SEND_TIMEOUT, tx.send(Message::Close(Some(frame)))).await;
}
