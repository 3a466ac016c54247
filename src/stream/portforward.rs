//! A port-forward session (`kubectl port-forward`): `portforward.k8s.io` over SPDY.
//!
//! For every connection it forwards, the client opens two streams with the same `requestID`
//! and `port` headers: `streamType: error` and `streamType: data`. procnode dials the port on
//! 127.0.0.1 (then ::1): pods share the host's network. What the connection sends goes on the
//! data stream and back; a dial that fails, or a port no process of the pod listens on (see
//! [`crate::runtime::PortTarget`]), is reported on the error stream. Many connections run at
//! once on one session, each on tasks of its own.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::spdy::{self, Session};
use super::{ws, Inbound, Sender, SessionPermit};
use crate::runtime::PortTarget;

/// Connections one session forwards at once (their streams beyond this are reset).
pub const MAX_CONNECTIONS: usize = 128;

/// Runs one port-forward session on an upgraded SPDY connection, until the client leaves.
pub async fn serve_spdy(mut session: Session, target: PortTarget, _permit: SessionPermit) {
    let target = Arc::new(target);
    // Half-open pairs by request id: (error stream, data stream).
    type Half = Option<spdy::Stream>;
    let mut pairs: HashMap<String, (Half, Half, tokio::time::Instant)> = HashMap::new();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let next = tokio::select! {
            s = session.incoming.recv() => s,
            Some(_) = connections.join_next() => continue,
        };
        let Some(stream) = next else { break };
        // A pair not completed in time is dropped.
        let now = tokio::time::Instant::now();
        pairs.retain(|_, (_, _, at)| now.duration_since(*at) < super::STREAM_CREATION_TIMEOUT);
        let kind = spdy::header(&stream.headers, "streamtype").unwrap_or("");
        // Clients before request ids pair a data stream with the error stream before it.
        let id = match spdy::header(&stream.headers, "requestid") {
            Some(id) => id.to_string(),
            None if kind == "data" => stream.id.saturating_sub(2).to_string(),
            None => stream.id.to_string(),
        };
        let entry = pairs.entry(id.clone()).or_insert((None, None, now));
        match kind {
            "error" => entry.0 = Some(stream),
            "data" => entry.1 = Some(stream),
            _ => continue,
        }
        if entry.0.is_none() || entry.1.is_none() {
            continue;
        }
        let (Some(error), Some(data), _) = pairs.remove(&id).expect("present") else {
            continue;
        };
        if connections.len() >= MAX_CONNECTIONS {
            let why = "too many forwarded connections on this session";
            error.out.send(why.as_bytes()).await;
            error.out.finish().await;
            data.out.finish().await;
            continue;
        }
        let port = spdy::header(&data.headers, "port").and_then(|p| p.parse::<u16>().ok());
        let (mut data, error_out) = (data, Sender::Spdy(error.out.clone()));
        let inbound = std::mem::replace(&mut data.data, tokio::sync::mpsc::channel(1).1);
        connections.spawn(forward(
            target.clone(),
            port,
            inbound,
            Sender::Spdy(data.out.clone()),
            error_out,
        ));
    }
    connections.abort_all();
    session.close().await;
}

/// Runs one port-forward session on a WebSocket connection: `ports` (from the request's
/// query) on channels 2i (data) and 2i+1 (errors), each opened with the port; it ends when
/// every connection has.
pub async fn serve_ws(
    mut conn: ws::Connection,
    ports: Vec<u16>,
    target: PortTarget,
    _permit: SessionPermit,
) {
    let target = Arc::new(target);
    let mut connections = tokio::task::JoinSet::new();
    for (i, port) in ports.into_iter().enumerate() {
        let (data, error) = (2 * i as u8, 2 * i as u8 + 1);
        let (data_out, error_out) = (conn.sender(data), conn.sender(error));
        data_out.send(&port.to_le_bytes()).await;
        error_out.send(&port.to_le_bytes()).await;
        let Some(inbound) = conn.take_inbound(data) else {
            continue;
        };
        connections.spawn(forward(
            target.clone(),
            Some(port),
            inbound,
            Sender::Ws(data_out),
            Sender::Ws(error_out),
        ));
    }
    let mut gone = conn.gone();
    tokio::select! {
        _ = async { while connections.join_next().await.is_some() {} } => {}
        _ = gone.wait_for(|g| *g) => connections.abort_all(),
    }
    conn.close().await;
}

/// Forwards one connection: dials `port`, then copies both ways until both sides are done. A
/// failure goes on `error`.
async fn forward(
    target: Arc<PortTarget>,
    port: Option<u16>,
    mut inbound: Inbound,
    data: Sender,
    error: Sender,
) {
    let dialled = match port {
        None => Err("invalid or missing port header".to_string()),
        Some(port) => dial(&target, port).await,
    };
    let conn = match dialled {
        Ok(conn) => conn,
        Err(why) => {
            let message = format!(
                "error forwarding port {} to pod {}, uid {}: {why}",
                port.unwrap_or(0),
                target.key(),
                target.uid()
            );
            error.send(message.as_bytes()).await;
            error.finish().await;
            data.finish().await;
            return;
        }
    };
    let (mut from_pod, mut to_pod) = conn.into_split();
    let out = data.clone();
    let upstream = async move {
        let mut buf = vec![0u8; spdy::MAX_DATA];
        loop {
            match from_pod.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !out.send(&buf[..n]).await {
                        break;
                    }
                }
            }
        }
        out.finish().await;
    };
    let downstream = async move {
        while let Some(chunk) = inbound.recv().await {
            if to_pod.write_all(&chunk).await.is_err() {
                break;
            }
        }
        // The client is done sending: so is the connection to the pod.
        let _ = to_pod.shutdown().await;
    };
    // A WebSocket channel has no end of its own: there the pod's end of the connection ends it.
    match data {
        Sender::Spdy(_) => {
            tokio::join!(upstream, downstream);
        }
        Sender::Ws(_) => {
            tokio::select! {
                _ = upstream => {}
                _ = async { downstream.await; std::future::pending::<()>().await } => {}
            }
        }
    }
    error.finish().await;
}

/// Dials `port` on loopback, if a process of the pod listens on it.
async fn dial(target: &Arc<PortTarget>, port: u16) -> Result<TcpStream, String> {
    let t = target.clone();
    let listens = tokio::task::spawn_blocking(move || t.listens_on(port))
        .await
        .unwrap_or(false);
    if !listens {
        return Err(format!("no process of the pod listens on port {port}"));
    }
    match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(c) => Ok(c),
        Err(v4) => TcpStream::connect(("::1", port))
            .await
            .map_err(|_| format!("dial tcp 127.0.0.1:{port}: {v4}")),
    }
}
