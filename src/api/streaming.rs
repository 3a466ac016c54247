//! The kubelet API's streaming routes (node mode): `exec`, `attach` and `portForward`.
//!
//! A request is checked here, before anything is upgraded: its query, its pod and container
//! (running), a free session place and a protocol both sides speak. Only then does the
//! connection switch (101) to SPDY/3.1 or to a WebSocket and go to [`crate::stream`]. Errors before the upgrade
//! are answered as the API server's `metav1.Status`, which kubectl prints as it prints the API
//! server's own (`Error from server (NotFound): …`).

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use hyper_util::rt::TokioIo;

use super::{ApiError, AppState};
use crate::runtime::PodKey;
use crate::stream::{self, attach, exec, portforward, spdy, ws};

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
        let how = Switch::of(&req, stream::EXEC_PROTOCOLS, ws::EXEC_PROTOCOLS)?;
        Ok::<_, ApiError>((options, target, permit, how))
    })();
    let (options, target, permit, how) = match prepared {
        Ok(p) => p,
        Err(e) => return e.into_status_response(),
    };
    let opts = options.clone();
    serve_channels(req, &how, options, move |ch, protocol| async move {
        let _permit = permit;
        exec::run_session(ch, protocol, &target, &opts).await
    })
}

/// `GET|POST /attach/{namespace}/{pod}/{container}?stdin=1&stdout=1&stderr=1&tty=1`
pub async fn attach(
    State(s): State<AppState>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    let key = PodKey {
        namespace,
        name: pod,
    };
    let prepared = (|| {
        let options = exec::Options::streams_from_query(req.uri().query().unwrap_or(""))
            .map_err(ApiError::BadRequest)?;
        let how = Switch::of(&req, stream::EXEC_PROTOCOLS, ws::EXEC_PROTOCOLS)?;
        let permit = s.sessions.open(&key).ok_or(ApiError::TooManySessions)?;
        Ok::<_, ApiError>((options, permit, how))
    })();
    let (options, permit, how) = match prepared {
        Ok(p) => p,
        Err(e) => return e.into_status_response(),
    };
    let target = match s
        .runtime
        .attach_target(&key, &container, options.stdin)
        .await
    {
        Ok(t) => t,
        Err(e) => return ApiError::from(e).into_status_response(),
    };
    serve_channels(req, &how, options, move |ch, protocol| async move {
        let _permit = permit;
        attach::run_session(ch, protocol, &target).await
    })
}

/// Switches to `how` and runs `session` on the client's exec/attach channels (opened as
/// `options` asks, whichever protocol carries them).
fn serve_channels<F, Fut>(
    req: Request,
    how: &Switch,
    options: exec::Options,
    session: F,
) -> Response
where
    F: FnOnce(exec::Channels, &'static str) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let protocol = how.protocol();
    match how {
        Switch::Spdy(_) => switch(req, how, move |io| async move {
            let spdy = spdy::Session::start(io);
            exec::on_spdy(spdy, protocol, &options, |ch| session(ch, protocol)).await
        }),
        Switch::WebSocket { .. } => switch(req, how, move |io| async move {
            let conn = ws::Connection::start(websocket(io).await, protocol, &[0, 4]);
            exec::on_ws(conn, &options, |ch| session(ch, protocol)).await
        }),
    }
}

/// `GET|POST /portForward/{namespace}/{pod}`: over SPDY (and SPDY tunnelled in WebSocket
/// messages) the ports come in each stream's headers; over the WebSocket channel protocols in
/// `port=` query parameters.
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
        let how = Switch::of(
            &req,
            stream::PORT_FORWARD_PROTOCOLS,
            ws::PORT_FORWARD_PROTOCOLS,
        )?;
        let ports = match &how {
            Switch::WebSocket { protocol, .. } if *protocol != ws::TUNNEL => {
                query_ports(req.uri().query().unwrap_or(""))?
            }
            _ => Vec::new(),
        };
        let permit = s.sessions.open(&key).ok_or(ApiError::TooManySessions)?;
        Ok::<_, ApiError>((target, permit, how, ports))
    })();
    let (target, permit, how, ports) = match prepared {
        Ok(p) => p,
        Err(e) => return e.into_status_response(),
    };
    tracing::info!(pod = %target.key(), protocol = how.protocol(), ?ports, "port-forward");
    match how {
        Switch::Spdy(_) => switch(req, &how, move |io| {
            portforward::serve_spdy(spdy::Session::start(io), target, permit)
        }),
        Switch::WebSocket { protocol, .. } if protocol == ws::TUNNEL => {
            switch(req, &how, move |io| async move {
                let tunnel = ws::tunnel(websocket(io).await);
                portforward::serve_spdy(spdy::Session::start(tunnel), target, permit).await
            })
        }
        Switch::WebSocket { protocol, .. } => switch(req, &how, move |io| async move {
            let reads: Vec<u8> = (0..ports.len()).map(|i| 2 * i as u8).collect();
            let conn = ws::Connection::start(websocket(io).await, protocol, &reads);
            portforward::serve_ws(conn, ports, target, permit).await
        }),
    }
}

/// The `port` query parameters of a WebSocket port-forward: at least one, each 1–65535, at
/// most 128 (two channels each, numbered in a byte).
fn query_ports(query: &str) -> Result<Vec<u16>, ApiError> {
    let mut ports = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == "port" {
            for p in v.split(',') {
                match p.trim().parse::<u16>() {
                    Ok(p) if p > 0 => ports.push(p),
                    _ => {
                        return Err(ApiError::BadRequest(format!(
                            "query parameter `port` must be a port number (1-65535), not {p:?}"
                        )))
                    }
                }
            }
        }
    }
    if ports.is_empty() {
        return Err(ApiError::BadRequest(
            "query parameter `port` is required".into(),
        ));
    }
    if ports.len() > 128 {
        return Err(ApiError::BadRequest(
            "query parameter `port`: at most 128 ports".into(),
        ));
    }
    Ok(ports)
}

/// How a request asks to switch protocols, and what procnode answers.
enum Switch {
    Spdy(&'static str),
    WebSocket {
        protocol: &'static str,
        accept: String,
    },
}

impl Switch {
    /// The protocol spoken once switched.
    fn protocol(&self) -> &'static str {
        match self {
            Switch::Spdy(p) | Switch::WebSocket { protocol: p, .. } => p,
        }
    }

    /// The switch the request asks for (`Upgrade: SPDY/3.1` or `websocket`), if it offers a
    /// protocol procnode speaks over it.
    fn of(
        req: &Request,
        spdy_ours: &[&'static str],
        ws_ours: &[&'static str],
    ) -> Result<Switch, ApiError> {
        let headers = req.headers();
        let all = |name: &str| -> Vec<&str> {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect()
        };
        let upgrade = headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if upgrade.eq_ignore_ascii_case("websocket") {
            if headers
                .get(header::SEC_WEBSOCKET_VERSION)
                .is_none_or(|v| v != "13")
            {
                return Err(ApiError::BadRequest(
                    "WebSocket: Sec-WebSocket-Version 13 is required".into(),
                ));
            }
            let key = headers
                .get(header::SEC_WEBSOCKET_KEY)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    ApiError::BadRequest("WebSocket: Sec-WebSocket-Key is required".into())
                })?;
            let protocol =
                ws::choose(&all("sec-websocket-protocol"), ws_ours).map_err(|message| {
                    ApiError::NoCommonProtocol {
                        message,
                        accepted: ws_ours.join(", "),
                    }
                })?;
            return Ok(Switch::WebSocket {
                protocol,
                accept: ws::accept_key(key),
            });
        }
        if !upgrade.eq_ignore_ascii_case("SPDY/3.1") {
            return Err(ApiError::BadRequest(
                "Upgrade request required: send Connection: Upgrade and Upgrade: SPDY/3.1 or \
                 websocket"
                    .into(),
            ));
        }
        stream::negotiate(&all(PROTOCOL_HEADER), spdy_ours)
            .map(Switch::Spdy)
            .map_err(|message| ApiError::NoCommonProtocol {
                message,
                accepted: spdy_ours.join(", "),
            })
    }
}

type Io = TokioIo<hyper::upgrade::Upgraded>;

/// The WebSocket on a switched connection (the handshake was the 101).
async fn websocket(io: Io) -> tokio_tungstenite::WebSocketStream<Io> {
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
    let config = WebSocketConfig::default()
        .max_message_size(Some(4 << 20))
        .max_frame_size(Some(1 << 20));
    tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await
}

/// Answers 101 and hands the connection, once switched, to `serve`.
fn switch<F, Fut>(mut req: Request, how: &Switch, serve: F) -> Response
where
    F: FnOnce(Io) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => serve(TokioIo::new(upgraded)).await,
            Err(e) => tracing::debug!(error = %e, "streaming: the upgrade did not complete"),
        }
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    match how {
        Switch::Spdy(protocol) => {
            h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
            h.insert(PROTOCOL_HEADER, HeaderValue::from_static(protocol));
        }
        Switch::WebSocket { protocol, accept } => {
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            if let Ok(v) = HeaderValue::from_str(accept) {
                h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
            }
            if !protocol.is_empty() {
                h.insert(
                    header::SEC_WEBSOCKET_PROTOCOL,
                    HeaderValue::from_static(protocol),
                );
            }
        }
    }
    resp
}
