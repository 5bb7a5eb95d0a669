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

/// Whether `ip` is in the comma-separated list of addresses and CIDR blocks.
pub fn in_list(list: &str, ip: IpAddr) -> bool {
    list.split(',').map(str::trim).filter(|e| !e.is_empty()).any(|entry| {
        let (addr, bits) = match entry.split_once('/') {
            Some((a, b)) => (a, b.parse::<u32>().ok()),
            None => (entry, None),
        };
        match (addr.parse::<IpAddr>(), ip) {
            (Ok(IpAddr::V4(net)), IpAddr::V4(ip)) => {
                let bits = bits.unwrap_or(32).min(32);
                let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (Ok(IpAddr::V6(net)), IpAddr::V6(ip)) => {
                let bits = bits.unwrap_or(128).min(128);
                let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    })
}

/// The client a request comes from: the peer, or, when the peer is one of the `trusted` proxies,
/// the address it names in `X-Forwarded-For` (the nearest one that is not itself a trusted proxy).
/// Anyone else's `X-Forwarded-For` is ignored.
pub fn client_of(peer: IpAddr, forwarded: &[&str], trusted: &str) -> IpAddr {
    if !in_list(trusted, peer) {
        return peer;
    }
    let hops: Vec<IpAddr> =
        forwarded.iter().flat_map(|v| v.split(',')).filter_map(|h| h.trim().parse().ok()).collect();
    hops.iter().rev().find(|h| !in_list(trusted, **h)).or(hops.first()).copied().unwrap_or(peer)
}

/// Puts the real client in `ConnectInfo` (see `client_of`) before anything reads it: the login
/// limiter, the audit log and the `/metrics` allow-list.
pub async fn client_address(trusted: std::sync::Arc<str>, mut req: Request, next: Next) -> Response {
    if !trusted.is_empty() {
        if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() {
            let forwarded: Vec<&str> =
                req.headers().get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
            let client = client_of(peer.ip(), &forwarded, &trusted);
            req.extensions_mut().insert(ConnectInfo(SocketAddr::new(client, peer.port())));
        }
    }
    next.run(req).await
}

/// A request's URI as logs may show it: the values of `token`, `ticket` and `password` query
/// parameters are replaced, so no log line at any level holds a credential.
pub fn redacted_uri(uri: &axum::http::Uri) -> String {
    let Some(query) = uri.query() else { return uri.to_string() };
    let secret = |key: &str| {
        let key = key.to_ascii_lowercase();
        ["token", "ticket", "password", "access_token"].contains(&key.as_str())
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if secret(k) => format!("{k}=REDACTED"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{}?{}", uri.path(), query.join("&"))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn address_lists_take_addresses_and_blocks() {
        let list = "127.0.0.1/8, ::1, 10.1.0.0/16";
        for (addr, inside) in
            [("127.9.9.9", true), ("10.1.200.3", true), ("10.2.0.1", false), ("::1", true), ("::2", false)]
        {
            assert_eq!(in_list(list, ip(addr)), inside, "{addr}");
        }
        assert!(!in_list("", ip("127.0.0.1")));
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let trusted = "10.0.0.0/8";
        assert_eq!(client_of(ip("192.0.2.7"), &["198.51.100.1"], trusted), ip("192.0.2.7"), "untrusted peer");
        assert_eq!(client_of(ip("10.1.1.1"), &["198.51.100.1"], trusted), ip("198.51.100.1"));
        // A client cannot choose its address by adding hops: the nearest untrusted hop wins.
        assert_eq!(
            client_of(ip("10.1.1.1"), &["1.2.3.4, 198.51.100.1, 10.2.2.2"], trusted),
            ip("198.51.100.1")
        );
        assert_eq!(client_of(ip("10.1.1.1"), &["junk"], trusted), ip("10.1.1.1"));
        assert_eq!(client_of(ip("10.1.1.1"), &["198.51.100.1"], ""), ip("10.1.1.1"), "no proxies trusted");
    }

    #[test]
    fn credentials_never_reach_a_log() {
        let uri: axum::http::Uri =
            "/ws/metrics?token=eyJsecret&x=1&Ticket=abc&password=pw".parse().unwrap_or_default();
        let shown = redacted_uri(&uri);
        assert_eq!(shown, "/ws/metrics?token=REDACTED&x=1&Ticket=REDACTED&password=REDACTED");
        let plain: axum::http::Uri = "/api/vms?limit=5".parse().unwrap_or_default();
        assert_eq!(redacted_uri(&plain), "/api/vms?limit=5");
    }
}
