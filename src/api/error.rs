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
    #[error(
        "too many exec and port-forward sessions are open on this node or pod; try again later"
    )]
    TooManySessions,
    /// A streaming request that offers no protocol procnode speaks.
    #[error("{message}")]
    NoCommonProtocol { message: String, accepted: String },
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
            | ApiError::Runtime(RuntimeError::NoPreviousRun { .. })
            | ApiError::Runtime(RuntimeError::ContainerNotRunning { .. })
            | ApiError::Runtime(RuntimeError::PodNotRunning(_))
            | ApiError::Runtime(RuntimeError::NoStdin { .. }) => StatusCode::BAD_REQUEST,
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
            ApiError::TooManyFollowers | ApiError::TooManySessions => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NoCommonProtocol { .. } => StatusCode::FORBIDDEN,
        }
    }
}

impl ApiError {
    /// The error as the API server words one, a `metav1.Status`: what the kubelet API's
    /// streaming routes answer, so that kubectl shows the message as it shows the API
    /// server's own.
    pub fn into_status_response(self) -> Response {
        let status = self.status();
        let reason = match status {
            StatusCode::BAD_REQUEST => "BadRequest",
            StatusCode::UNAUTHORIZED => "Unauthorized",
            StatusCode::FORBIDDEN => "Forbidden",
            StatusCode::NOT_FOUND => "NotFound",
            StatusCode::TOO_MANY_REQUESTS => "TooManyRequests",
            _ => "InternalError",
        };
        let body = serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": reason,
            "code": status.as_u16(),
        });
        let mut resp = (status, axum::Json(body)).into_response();
        self.add_headers(&mut resp);
        resp
    }

    fn add_headers(&self, resp: &mut Response) {
        if let ApiError::NoCommonProtocol { accepted, .. } = self {
            if let Ok(v) = axum::http::HeaderValue::from_str(accepted) {
                resp.headers_mut()
                    .insert("x-accepted-stream-protocol-versions", v);
            }
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
        self.add_headers(&mut resp);
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}
