//! The one error type of the HTTP API and its mapping to `{"detail": ...}` responses.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Body of every error response, as the original API shaped it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{detail}")]
    TooManyRequests { detail: String, retry_after_secs: u64 },
    #[error("{0}")]
    Unavailable(String),
    /// The data disk is full (507): the operator must free space; nothing was left half-made.
    #[error("{0}")]
    InsufficientStorage(String),
    /// An operation on a VM or host resource failed for a reason the operator must see (QEMU's own
    /// words, a missing bridge...).
    #[error("{0}")]
    Operation(String),
    /// Anything unexpected: logged in full, reported to the client without internals.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Operation(m) if says_disk_full(m) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Operation(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Internal(e) if disk_full(e) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl ApiError {
    /// 507 saying what to do, and `why` (e.g. how much was needed).
    pub fn disk_full_because(why: impl std::fmt::Display) -> ApiError {
        ApiError::InsufficientStorage(format!("{DISK_FULL} ({why})"))
    }
}

/// Whether `e` comes from a full disk (or quota) anywhere in its chain: a file write, or SQLite's own.
pub fn disk_full(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let io = cause.downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error);
        let sqlite = cause.downcast_ref::<rusqlite::Error>().and_then(rusqlite::Error::sqlite_error_code);
        matches!(io, Some(ENOSPC | EDQUOT)) || sqlite == Some(rusqlite::ErrorCode::DiskFull)
    })
}

/// Whether a tool's own words (qemu-img, QEMU) say the disk is full: its errno is gone by then.
fn says_disk_full(message: &str) -> bool {
    message.contains("No space left on device") || message.contains("Disk quota exceeded")
}

const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;

/// What a full disk answers: no internals, and what to do.
const DISK_FULL: &str =
    "No space left on the data disk: free some (old backups, ISOs, unused volumes) and try again";

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        ApiError::Internal(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            ApiError::Internal(e) if disk_full(e) => {
                tracing::error!(error = ?e, "the data disk is full");
                DISK_FULL.to_string()
            }
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                "Internal server error".to_string()
            }
            ApiError::Operation(m) if says_disk_full(m) => format!("{DISK_FULL} ({m})"),
            other => other.to_string(),
        };
        let mut response = (status, Json(ErrorBody { detail })).into_response();
        if let ApiError::TooManyRequests { retry_after_secs, .. } = self {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1)));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => {
                ApiError::Unprocessable(format!("Invalid request body: {}", e.body_text()))
            }
            JsonRejection::JsonSyntaxError(e) => {
                ApiError::BadRequest(format!("Malformed JSON: {}", e.body_text()))
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                "Expected a request with `Content-Type: application/json`".into(),
            ),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge("Request body is too large".into())
            }
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}

/// `Json` that reports a bad body as `{"detail": ...}` instead of axum's plain text.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;

    use super::*;

    async fn answer(e: ApiError) -> (StatusCode, Headers, String) {
        let response = e.into_response();
        let status = response.status();
        let headers = Headers {
            retry_after: response
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.to_str().unwrap_or("").to_string()),
            authenticate: response.headers().contains_key(header::WWW_AUTHENTICATE),
        };
        let body = to_bytes(response.into_body(), 1 << 16).await.unwrap_or_default();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        (status, headers, json["detail"].as_str().unwrap_or("<no detail>").to_string())
    }

    struct Headers {
        retry_after: Option<String>,
        authenticate: bool,
    }

    #[tokio::test]
    async fn every_error_has_its_status_and_a_detail() {
        let cases = [
            (ApiError::BadRequest("bad".into()), StatusCode::BAD_REQUEST),
            (ApiError::Unauthorized("who".into()), StatusCode::UNAUTHORIZED),
            (ApiError::Forbidden("no".into()), StatusCode::FORBIDDEN),
            (ApiError::NotFound("gone".into()), StatusCode::NOT_FOUND),
            (ApiError::Conflict("busy".into()), StatusCode::CONFLICT),
            (ApiError::Unprocessable("shape".into()), StatusCode::UNPROCESSABLE_ENTITY),
            (ApiError::UnsupportedMediaType("type".into()), StatusCode::UNSUPPORTED_MEDIA_TYPE),
            (ApiError::PayloadTooLarge("big".into()), StatusCode::PAYLOAD_TOO_LARGE),
            (
                ApiError::TooManyRequests { detail: "slow".into(), retry_after_secs: 0 },
                StatusCode::TOO_MANY_REQUESTS,
            ),
            (ApiError::Unavailable("later".into()), StatusCode::SERVICE_UNAVAILABLE),
            (ApiError::InsufficientStorage("full".into()), StatusCode::INSUFFICIENT_STORAGE),
            (ApiError::Operation("QEMU said no".into()), StatusCode::INTERNAL_SERVER_ERROR),
        ];
        for (error, status) in cases {
            let shown = error.to_string();
            let (got, _, detail) = answer(error).await;
            assert_eq!(got, status, "{shown}");
            assert_eq!(detail, shown, "the detail is the message");
        }
    }

    #[tokio::test]
    async fn internals_stay_inside_and_headers_go_with_their_statuses() {
        let (status, _, detail) = answer(ApiError::Internal(anyhow::anyhow!("/secret/path: EIO"))).await;
        assert_eq!((status, detail.as_str()), (StatusCode::INTERNAL_SERVER_ERROR, "Internal server error"));
        let (_, h, _) =
            answer(ApiError::TooManyRequests { detail: "slow".into(), retry_after_secs: 0 }).await;
        assert_eq!(h.retry_after.as_deref(), Some("1"), "Retry-After is at least a second");
        let (_, h, _) = answer(ApiError::Unauthorized("who".into())).await;
        assert!(h.authenticate, "401 says how to authenticate");
        let (_, h, _) = answer(ApiError::NotFound("gone".into())).await;
        assert!(!h.authenticate && h.retry_after.is_none());
    }

    #[tokio::test]
    async fn a_full_disk_is_a_507_that_says_what_to_do_and_no_more() {
        let full = anyhow::Error::from(std::io::Error::from_raw_os_error(28)).context("writing /secret/path");
        let (status, _, detail) = answer(ApiError::Internal(full)).await;
        assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
        assert!(
            detail.starts_with("No space left on the data disk") && !detail.contains("secret"),
            "{detail}"
        );
        let quota = anyhow::Error::from(std::io::Error::from_raw_os_error(122));
        assert_eq!(answer(ApiError::Internal(quota)).await.0, StatusCode::INSUFFICIENT_STORAGE);
        let sqlite = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("database or disk is full".into()),
        );
        assert_eq!(answer(ApiError::from(sqlite)).await.0, StatusCode::INSUFFICIENT_STORAGE);
        let tool = ApiError::Operation(
            "copying the disk: qemu-img: error while writing: No space left on device".into(),
        );
        let (status, _, detail) = answer(tool).await;
        assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
        assert!(
            detail.starts_with("No space left on the data disk") && detail.contains("qemu-img"),
            "{detail}"
        );
        let other = anyhow::Error::from(std::io::Error::from_raw_os_error(5));
        assert_eq!(answer(ApiError::Internal(other)).await.0, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
