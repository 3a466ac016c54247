//! The kubelet API's streaming routes (node mode): `exec` and `portForward`.
//!
//! A request is checked here, before anything is upgraded: its query, its pod and container
//! (running), a free session place and a protocol both sides speak. Only then does the
//! connection switch to SPDY/3.1 (101) and go to [`crate::stream`]. Errors before the upgrade
//! are answered as the API server's `metav1.Status`, which kubectl prints as it prints the API
//! server's own (`Error from server (NotFound): …`).

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use hyper_util::rt::TokioIo;

use super::{ApiError, AppState};
use crate::runtime::PodKey;
use crate::stream::{self, exec, portforward, spdy};

const PROTOCOL_HEADER: &str = "x-stream-protocol-version";

/// `GET|POST /exec/{namespace}/{pod}/{container}?command=…&stdin=1&stdout=1&stderr=1&tty=1`
pub async fn exec(
    State(s): State<AppState>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    let key = PodKey {
        namespace,
        name: pod,
    };
    let prepared = (|| {
        let options = exec::Options::from_query(req.uri().query().unwrap_or(""))
            .map_err(ApiError::BadRequest)?;
        let target = s.runtime.exec_target(&key, &container)?;
        let permit = s.sessions.open(&key).ok_or(ApiError::TooManySessions)?;
        let protocol = upgrade_to_spdy(&req, stream::EXEC_PROTOCOLS)?;
        Ok::<_, ApiError>((options, target, permit, protocol))
    })();
    match prepared {
        Ok((options, target, permit, protocol)) => switch(req, protocol, move |session| {
            exec::serve_spdy(session, protocol, target, options, permit)
        }),
        Err(e) => e.into_status_response(),
    }
}

/// `GET|POST /portForward/{namespace}/{pod}` (the ports come in each stream's headers).
pub async fn port_forward(
    State(s): State<AppState>,
    Path((namespace, pod)): Path<(String, String)>,
    req: Request,
) -> Response {
    let key = PodKey {
        namespace,
        name: pod,
    };
    let prepared = (|| {
        let target = s.runtime.port_target(&key)?;
        let permit = s.sessions.open(&key).ok_or(ApiError::TooManySessions)?;
        let protocol = upgrade_to_spdy(&req, stream::PORT_FORWARD_PROTOCOLS)?;
        Ok::<_, ApiError>((target, permit, protocol))
    })();
    match prepared {
        Ok((target, permit, protocol)) => switch(req, protocol, move |session| {
            portforward::serve_spdy(session, target, permit)
        }),
        Err(e) => e.into_status_response(),
    }
}

/// The protocol to speak, if the request asks to switch to SPDY/3.1 and offers one of `ours`.
fn upgrade_to_spdy(req: &Request, ours: &[&'static str]) -> Result<&'static str, ApiError> {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if upgrade.eq_ignore_ascii_case("websocket") {
        return Err(ApiError::BadRequest(
            "WebSocket streaming is not supported yet; connect with Upgrade: SPDY/3.1".into(),
        ));
    }
    if !upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        return Err(ApiError::BadRequest(
            "Upgrade request required: send Connection: Upgrade and Upgrade: SPDY/3.1".into(),
        ));
    }
    let offered: Vec<&str> = req
        .headers()
        .get_all(PROTOCOL_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    stream::negotiate(&offered, ours).map_err(|message| ApiError::NoCommonProtocol {
        message,
        accepted: ours.join(", "),
    })
}

/// Answers 101 and hands the connection, once switched, to `serve`.
fn switch<F, Fut>(mut req: Request, protocol: &'static str, serve: F) -> Response
where
    F: FnOnce(spdy::Session) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => serve(spdy::Session::start(TokioIo::new(upgraded))).await,
            Err(e) => tracing::debug!(error = %e, "streaming: the upgrade did not complete"),
        }
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    h.insert(PROTOCOL_HEADER, HeaderValue::from_static(protocol));
    resp
}
