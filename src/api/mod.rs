//! The HTTP API: the web-provider contract (docs/api.md lists it) and a few extras.
//!
//! The route table mirrors the contract table. Handlers only translate between HTTP and the
//! runtime/node modules; every error leaves through [`ApiError`].

mod error;
mod extract;
mod handlers;
pub mod peer;
pub mod serve;
mod streaming;
mod wire;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use axum::Router;

pub use error::ApiError;

use crate::node::Node;
use crate::runtime::Runtime;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub runtime: Arc<Runtime>,
    pub node: Arc<Node>,
    pub max_body_bytes: usize,
    /// The bearer token every request (but health) must carry, when configured.
    pub token: Option<Arc<str>>,
    /// Permits for log follow streams; a stream holds one while it is open.
    pub follow_slots: Arc<tokio::sync::Semaphore>,
    /// Longest time a request may take to produce its response.
    pub request_timeout: std::time::Duration,
    /// Who may call without a token.
    pub callers: peer::CallerPolicy,
    /// Connection cap and header read timeout.
    pub limits: serve::Limits,
    /// Open exec and port-forward sessions (node mode's kubelet API).
    pub sessions: Arc<crate::stream::Sessions>,
}

impl AppState {
    /// The state `config` describes: its token, follow cap, request timeout, callers, limits.
    pub fn new(
        runtime: Arc<Runtime>,
        node: Arc<Node>,
        config: &crate::Config,
    ) -> std::io::Result<AppState> {
        Ok(AppState {
            runtime,
            node,
            max_body_bytes: config.max_body_bytes,
            token: config.token()?.map(Arc::from),
            follow_slots: Arc::new(tokio::sync::Semaphore::new(config.max_follow_streams)),
            request_timeout: config.request_timeout(),
            callers: peer::CallerPolicy {
                allowed: config.api_allowed_uids.clone(),
                own_uid: nix::unistd::geteuid().as_raw(),
            },
            limits: serve::Limits {
                max_connections: config.max_connections as usize,
                header_read_timeout: config.header_read_timeout,
            },
            sessions: Arc::default(),
        })
    }
}

/// The kubelet API a node-mode procnode serves on its kubelet port (the API server calls it for
/// `kubectl logs`; metrics-server for stats).
pub fn kubelet_router(state: AppState) -> Router {
    Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(handlers::kubelet_container_logs),
        )
        .route("/pods", get(handlers::kubelet_pods))
        .route(
            "/exec/{namespace}/{pod}/{container}",
            get(streaming::exec).post(streaming::exec),
        )
        .route(
            "/attach/{namespace}/{pod}/{container}",
            get(streaming::attach).post(streaming::attach),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            get(streaming::port_forward).post(streaming::port_forward),
        )
        .route("/healthz", get(handlers::health))
        .route("/stats/summary", get(handlers::stats_summary))
        .route("/metrics/resource", get(handlers::resource_metrics))
        .fallback(handlers::no_route)
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(state)
}

/// The whole API; `main` and the tests both use it.
pub fn router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    let timeout = state.request_timeout;
    Router::new()
        // pods
        .route("/createPod", post(handlers::create_pod))
        .route("/updatePod", put(handlers::update_pod))
        .route("/deletePod", delete(handlers::delete_pod))
        .route("/getPod", get(handlers::get_pod))
        .route("/getPodStatus", get(handlers::get_pod_status))
        .route("/getContainerLogs", get(handlers::get_container_logs))
        .route("/getPods", get(handlers::get_pods))
        // node
        .route("/capacity", get(handlers::capacity))
        .route("/nodeConditions", get(handlers::node_conditions))
        .route("/nodeAddresses", get(handlers::node_addresses))
        .route("/nodeDaemonEndpoints", get(handlers::node_daemon_endpoints))
        .route("/operatingSystem", get(handlers::operating_system))
        // metrics and health
        .route("/metrics", get(handlers::metrics))
        .route("/getStatsSummary", get(handlers::stats_summary))
        .route("/stats/summary", get(handlers::stats_summary))
        .route("/", get(handlers::health))
        .route("/healthz", get(handlers::health))
        .fallback(handlers::no_route)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            server_timing,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::Extension(extract::BodyLimit(limit)))
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(state)
}

/// Serves the web API on `listener` until `shutdown` completes. Every connection carries its
/// caller ([`peer::ApiPeer`]), which [`authorize`] checks: the one way the web API is served.
pub async fn serve<L>(
    listener: L,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Io: peer::Identify,
{
    let (limits, metrics) = (state.limits, state.runtime.settings().metrics.clone());
    serve::serve(
        listener,
        router(state),
        |io: &L::Io| peer::Identify::api_peer(io),
        limits,
        metrics,
        shutdown,
    )
    .await
}

/// Every error leaves as JSON: an error answer the router or a layer made without a body
/// (405 for a wrong method, 408 from the request timeout, 413 from the body limit) gets the
/// same `{"error", "status"}` body as [`ApiError`]'s.
async fn json_errors(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error())
        || resp
            .headers()
            .contains_key(axum::http::header::CONTENT_TYPE)
    {
        return resp;
    }
    let why = match status {
        axum::http::StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = resp
                .headers()
                .get(axum::http::header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            format!("{method} is not allowed on {path} (allowed: {allowed})")
        }
        axum::http::StatusCode::REQUEST_TIMEOUT => {
            format!("{method} {path} took longer than the request timeout (--request-timeout)")
        }
        other => format!(
            "{method} {path}: {}",
            other.canonical_reason().unwrap_or("error")
        ),
    };
    let (mut parts, _) = resp.into_parts();
    let body = serde_json::json!({"error": why, "status": status.as_u16()});
    let mut fresh = (status, axum::Json(body)).into_response();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    for (name, value) in fresh.headers() {
        parts.headers.insert(name.clone(), value.clone());
    }
    *fresh.headers_mut() = parts.headers;
    fresh
}

/// Adds `Server-Timing: app;dur=MILLISECONDS` to every response (the time spent in procnode for
/// the request, so a client can tell server time from transport time) and records it by route.
async fn server_timing(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let start = std::time::Instant::now();
    let path = req.uri().path().to_string();
    let mut resp = next.run(req).await;
    let elapsed = start.elapsed();
    state.runtime.settings().metrics.request(&path, elapsed);
    let ms = elapsed.as_secs_f64() * 1000.0;
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("app;dur={ms:.3}")) {
        resp.headers_mut().insert("server-timing", v);
    }
    resp
}

/// Every request but the health endpoints must come from an allowed caller: with a token
/// configured, one that carries `Authorization: Bearer TOKEN` (compared in the same time
/// whatever the guess); without one, a local caller running as root, as procnode's own uid or
/// as one of `--api-allowed-uids`, or a TLS client with a verified certificate (see
/// [`peer`]). A request that reached the router without a listener (a test calling it
/// in-process) has no peer and is procnode's own.
async fn authorize(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use subtle::ConstantTimeEq;
    if req.method() == axum::http::Method::GET && matches!(req.uri().path(), "/" | "/healthz") {
        return next.run(req).await;
    }
    let Some(token) = &state.token else {
        let peer = req
            .extensions()
            .get::<axum::extract::ConnectInfo<peer::ApiPeer>>()
            .map(|c| c.0);
        return match peer.map(|p| state.callers.check(&p)) {
            Some(Err(why)) => ApiError::Forbidden(why).into_response(),
            _ => next.run(req).await,
        };
    };
    let offered = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if offered.as_bytes().ct_eq(token.as_bytes()).into() {
        next.run(req).await
    } else {
        ApiError::Unauthorized("missing or wrong bearer token".into()).into_response()
    }
}
