//! HTTP plumbing shared by every route: client address, security headers, CORS, and turning any
//! bodiless error response (404, 405, 413, panics...) into `{"detail": ...}`.

use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::ErrorBody;

/// The answer to an action that has nothing else to return.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Message {
    pub success: bool,
    pub message: String,
}

impl Message {
    pub fn ok(message: impl Into<String>) -> Json<Message> {
        Json(Message { success: true, message: message.into() })
    }
}

/// The largest value of a multipart form's text field (a name, an option): file fields stream to
/// disk, and nothing else is ever held in memory beyond this.
pub const MAX_FORM_FIELD: usize = 1024;

/// Reads a multipart text field of at most `MAX_FORM_FIELD` bytes, stopping at the first byte over.
pub async fn small_field(mut field: axum::extract::multipart::Field<'_>) -> crate::error::ApiResult<String> {
    let name = field.name().unwrap_or("field").to_string();
    let bad = |msg: String| crate::error::ApiError::BadRequest(format!("{name}: {msg}"));
    let mut value = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| bad(e.to_string()))? {
        if value.len() + chunk.len() > MAX_FORM_FIELD {
            return Err(bad(format!("longer than {MAX_FORM_FIELD} bytes")));
        }
        value.extend_from_slice(&chunk);
    }
    String::from_utf8(value).map_err(|_| bad("not UTF-8 text".into()))
}

/// The peer address of the connection (a reverse proxy's address when there is one).
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip())))
    }
}

/// What the dashboard needs and nothing more: its own scripts, styles (Tailwind and Alpine set
/// inline styles), images as data URLs, and WebSockets back to this origin.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self' ws: wss:; worker-src 'self' blob:; \
object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'";

pub async fn security_headers(production: bool, req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    let mut set = |name: HeaderName, value: &'static str| {
        h.entry(name).or_insert(HeaderValue::from_static(value));
    };
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::X_FRAME_OPTIONS, "SAMEORIGIN");
    set(header::REFERRER_POLICY, "strict-origin-when-cross-origin");
    if production {
        set(header::STRICT_TRANSPORT_SECURITY, "max-age=31536000; includeSubDomains");
        set(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    }
    response
}

/// `CORS_ORIGINS`: `*` for any origin (tokens travel in headers, not cookies, so no credentials are
/// allowed either way), or a comma-separated list of exact origins.
pub fn cors(origins: &str) -> CorsLayer {
    let base = CorsLayer::new()
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT])
        .expose_headers([header::RETRY_AFTER, header::CONTENT_DISPOSITION]);
    let list: Vec<HeaderValue> = origins
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty() && *o != "*")
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if origins.split(',').any(|o| o.trim() == "*") || list.is_empty() {
        base.allow_origin(AllowOrigin::any())
    } else {
        base.allow_origin(list)
    }
}

/// Errors produced outside our handlers (no route, wrong method, body too large) come without a JSON
/// body; give them the same `{"detail": ...}` shape as ours.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let detail = status.canonical_reason().unwrap_or("Error").to_string();
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = Json(ErrorBody { detail }).into_response();
    let (body_parts, body) = body.into_parts();
    parts.headers.extend(body_parts.headers);
    Response::from_parts(parts, body)
}

/// A panic in a handler becomes a plain 500 without internals.
pub fn panic_response(_err: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    tracing::error!("handler panicked");
    let mut r = Json(ErrorBody { detail: "Internal server error".into() }).into_response();
    *r.status_mut() = axum::http::StatusCode::INTERNAL_SERVER_ERROR;
    r
}
