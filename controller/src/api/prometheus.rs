//! `GET /metrics` in the Prometheus text format (readable from the addresses in
//! `FASTVM_METRICS_ALLOW`, loopback by default, or with an admin's bearer token), and the middleware
//! that times every API request.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ApiResult};
use crate::http::ClientIp;
use crate::metrics::prometheus::render;
use crate::state::AppState;

/// Counts every API request (a layer on the routed API, so the route template is known).
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    let route = route.unwrap_or_else(|| "unmatched".into());
    state.metrics.http.record(&method, &route, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// Prometheus scrape endpoint.
pub async fn scrape(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let from_allowed = ip.is_some_and(|ip| crate::http::in_list(&state.settings.metrics_allow, ip));
    if !from_allowed {
        let token = crate::api::session::bearer(&headers).ok_or_else(|| {
            ApiError::Unauthorized(
                "Not an allowed address (FASTVM_METRICS_ALLOW): a bearer token is required".into(),
            )
        })?;
        let user = crate::api::session::session_from_token(&state, token).await?;
        if !user.is_admin {
            return Err(ApiError::Forbidden("Admin privileges required".into()));
        }
    }
    let mut response = render(&state.metrics).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    Ok(response)
}
