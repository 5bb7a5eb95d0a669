//! The WebSocket upgrade of a console relay (RFC 6455's handshake; the frames are
//! `consoles::websocket`'s), without axum's WebSocket, which copies every payload.

use std::future::Future;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::error::ApiError;
use wsframes::Socket;

/// A request to open a WebSocket, checked; answering it with [`Upgrade::on_upgrade`] switches
/// protocols.
pub struct Upgrade {
    accept: String,
    binary: bool,
    on_upgrade: OnUpgrade,
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        let bad = |message: &str| ApiError::BadRequest(message.into()).into_response();
        if parts.method != Method::GET
            || !header_has(&parts.headers, header::CONNECTION, "upgrade")
            || !header_has(&parts.headers, header::UPGRADE, "websocket")
        {
            return Err(bad("this is a WebSocket endpoint: send a WebSocket upgrade request"));
        }
        if parts.headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
            let mut response = bad("only WebSocket version 13 is spoken here");
            response.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            return Err(response);
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(bad("Sec-WebSocket-Key is missing"));
        };
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let binary = header_has(&parts.headers, header::SEC_WEBSOCKET_PROTOCOL, "binary");
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(bad("this connection cannot be upgraded"));
        };
        Ok(Upgrade { accept, binary, on_upgrade })
    }
}

impl Upgrade {
    /// Answers `101 Switching Protocols` (echoing the `binary` subprotocol, which spice-html5 and
    /// noVNC ask for and without which a browser drops the socket) and runs `serve` on the socket.
    pub fn on_upgrade<F, Fut>(self, serve: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Upgrade { accept, binary, on_upgrade } = self;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => return tracing::debug!(error = %e, "WebSocket upgrade failed"),
            };
            // The controller's own server (crate::server) serves plain TCP connections.
            match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) => {
                    serve(Socket {
                        stream: parts.io.into_inner(),
                        early: BytesMut::from(&parts.read_buf[..]),
                    })
                    .await
                }
                Err(_) => tracing::error!("a WebSocket upgrade on a connection that is not plain TCP"),
            }
        });
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if binary {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("binary"));
        }
        response
    }
}
