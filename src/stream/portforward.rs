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
use super::SessionPermit;
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
        connections.spawn(forward(target.clone(), error, data));
    }
    connections.abort_all();
    session.close().await;
}

/// Forwards one connection.
async fn forward(target: Arc<PortTarget>, error: spdy::Stream, mut data: spdy::Stream) {
    let port = spdy::header(&data.headers, "port").and_then(|p| p.parse::<u16>().ok());
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
            error.out.send(message.as_bytes()).await;
            error.out.finish().await;
            data.out.finish().await;
            return;
        }
    };
    let (mut from_pod, mut to_pod) = conn.into_split();
    let out = data.out.clone();
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
        while let Some(chunk) = data.data.recv().await {
            if to_pod.write_all(&chunk).await.is_err() {
                break;
            }
        }
        // The client is done sending: so is the connection to the pod.
        let _ = to_pod.shutdown().await;
    };
    tokio::join!(upstream, downstream);
    error.out.finish().await;
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
