//! The HTTP API: the web-provider contract (see CONTRACT.md) and a few extras.
//!
//! The route table mirrors the contract table. Handlers only translate between HTTP and the
//! runtime/node modules; every error leaves through [`ApiError`].

mod error;
mod extract;
mod handlers;

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
}

/// The whole API; `main` and the tests both use it.
pub fn router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
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
        // health
        .route("/", get(handlers::health))
        .route("/healthz", get(handlers::health))
        .fallback(handlers::no_route)
        .layer(axum::middleware::from_fn(server_timing))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::Extension(extract::BodyLimit(limit)))
        .with_state(state)
}

/// Adds `Server-Timing: app;dur=MILLISECONDS` to every response: the time spent in procnode
/// for the request, so a client can tell server time from transport time.
async fn server_timing(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let start = std::time::Instant::now();
    let mut resp = next.run(req).await;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("app;dur={ms:.3}")) {
        resp.headers_mut().insert("server-timing", v);
    }
    resp
}
