//! [`ApiError`]: the one place that knows HTTP status codes. The match below has no wildcard,
//! so a new error cause forces a decision about its status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::runtime::PodError;
use crate::runtime::RuntimeError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    /// What the runtime refused; its own error, mapped to a status below.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("no such endpoint: {0}")]
    NoRoute(String),
    /// No credentials, or ones that identify nobody.
    #[error("{0}")]
    Unauthorized(String),
    /// An identified caller who may not do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("too many log follow streams are open (see --max-follow-streams); try again later")]
    TooManyFollowers,
    /// A bug or a panic inside procnode, not the caller's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<PodError> for ApiError {
    fn from(e: PodError) -> ApiError {
        ApiError::Runtime(RuntimeError::InvalidPod(e))
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            // As the API server answers `kubectl logs --previous` for a container that never
            // restarted.
            ApiError::BadRequest(_)
            | ApiError::Runtime(RuntimeError::InvalidPod(_))
            | ApiError::Runtime(RuntimeError::NoPreviousRun { .. }) => StatusCode::BAD_REQUEST,
            // The broker maps exactly "404 Not Found" to "pod does not exist".
            ApiError::Runtime(RuntimeError::PodNotFound(_))
            | ApiError::Runtime(RuntimeError::ContainerNotFound { .. })
            | ApiError::NoRoute(_) => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            // The state directory is full or read-only: nothing was stored.
            ApiError::Runtime(RuntimeError::Storage { .. }) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyFollowers => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::json!({
            "error": self.to_string(),
            "status": status.as_u16(),
        });
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}
