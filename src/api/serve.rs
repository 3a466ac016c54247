//! The connection loop under the router: every HTTP connection procnode serves goes through
//! [`serve`], so every one gets the same limits.
//!
//! - A cap on open connections (`--max-connections`): one more is answered 503 (JSON) and
//!   closed at once, so a flood of idle or slow connections cannot take every descriptor.
//! - A header read timeout (`--header-read-timeout`): a client that has not sent a complete
//!   request head by then is disconnected (a dribbling "slowloris" client holds nothing for
//!   long).
//! - JSON for every error: hyper answers a request it cannot parse (400), a URI too long (414)
//!   or a head too large (431) itself, with an empty body and no hook to change it;
//!   [`JsonErrors`] rewrites exactly those automatic answers on their way out. (The router's
//!   own empty-bodied errors, such as 405, become JSON in `api::json_errors`.)
//!
//! Opened, refused and timed-out connections are counted in /metrics.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{watch, Semaphore};

use crate::metrics::Metrics;

/// The limits every connection gets.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` completes, then lets the open connections
/// finish their requests (for at most [`DRAIN`]) and returns. `who` names the caller of each connection; handlers get
/// it as `ConnectInfo<C>`.
pub async fn serve<L, C>(
    mut listener: L,
    router: Router,
    who: impl Fn(&L::Io) -> C + Send + 'static,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()>
where
    L: axum::serve::Listener,
    C: Clone + Send + Sync + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopping) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let io = tokio::select! {
            (io, _) = listener.accept() => io,
            () = &mut shutdown => break,
        };
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.http.refused.fetch_add(1, ORDER);
            connections.spawn(refuse(io, limits.max_connections));
            continue;
        };
        let caller = ConnectInfo(who(&io));
        let service = tower::ServiceExt::map_request(
            router.clone(),
            move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(caller.clone());
                req
            },
        );
        let (metrics, mut stopping) = (metrics.clone(), stopping.clone());
        connections.spawn(async move {
            let _slot = slot;
            let _open = Open::new(&metrics);
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let conn = http
                .serve_connection(
                    TokioIo::new(JsonErrors::new(io)),
                    TowerToHyperService::new(service),
                )
                .with_upgrades();
            tokio::pin!(conn);
            let stop = async move {
                let _ = stopping.wait_for(|s| *s).await;
            };
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = stop => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if result.is_err_and(|e| e.is_timeout()) {
                metrics.http.header_timeouts.fetch_add(1, ORDER);
            }
        });
    }
    stop.send_replace(true);
    drop(listener);
    // Requests being served get a few seconds to finish; a stream that would not end by
    // itself (a log follow) is cut then, so that a shutdown never waits on a client.
    let drained = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            open = connections.len(),
            "closing the connections still open"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// How long a shutdown waits for open connections to finish their requests.
const DRAIN: Duration = Duration::from_secs(5);

const ORDER: std::sync::atomic::Ordering = std::sync::atomic::Ordering::Relaxed;

/// Counts a connection as open while it lives.
struct Open<'a>(&'a Metrics);

impl<'a> Open<'a> {
    fn new(m: &'a Metrics) -> Open<'a> {
        m.http.open.fetch_add(1, ORDER);
        Open(m)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.http.open.fetch_sub(1, ORDER);
    }
}

/// Answers a connection past the cap with a 503 and closes it (within a second, whatever the
/// client does).
async fn refuse<I: AsyncWrite + Unpin>(mut io: I, cap: usize) {
    let body = serde_json::json!({
        "error": format!("too many open connections (the limit is {cap}, see --max-connections); try again later"),
        "status": 503,
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        io.write_all(answer.as_bytes()).await?;
        io.shutdown().await
    })
    .await;
}

/// A connection whose automatic error answers from hyper (400, 414, 431 with an empty body)
/// leave as JSON. Everything else passes through unchanged.
pub struct JsonErrors<I> {
    inner: I,
    /// A rewritten answer still to be written, and how much of it is written.
    pending: Option<(Vec<u8>, usize)>,
}

impl<I> JsonErrors<I> {
    pub fn new(inner: I) -> JsonErrors<I> {
        JsonErrors {
            inner,
            pending: None,
        }
    }
}

/// The JSON answer for one of hyper's automatic error heads, or `None` for anything else.
/// hyper's are the only bodiless 400/414/431 heads: every answer procnode makes itself has a
/// JSON body.
pub fn rewrite_automatic_error(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?;
    let why = match status {
        "400" => "the request could not be parsed as HTTP/1.1",
        "414" => "the request URI is too long",
        "431" => "the request's header fields are too large (or too many)",
        _ => return None,
    };
    let lower = text.to_ascii_lowercase();
    if !text.ends_with("\r\n\r\n") || !lower.contains("\r\ncontent-length: 0\r\n") {
        return None;
    }
    let line = text.lines().next()?;
    let body = serde_json::json!({"error": why, "status": status.parse::<u16>().ok()?}).to_string();
    Some(
        format!(
            "{line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<I: AsyncWrite + Unpin> JsonErrors<I> {
    /// Writes what is pending; Ready(Ok) once nothing is.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, done)) = &mut self.pending {
            if *done == bytes.len() {
                self.pending = None;
                break;
            }
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for JsonErrors<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for JsonErrors<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        if let Some(answer) = rewrite_automatic_error(buf) {
            self.pending = Some((answer, 0));
            // Taken whole; written by this and the next calls (flush, shutdown).
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_bodiless_error_heads_are_rewritten() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 01:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite_automatic_error(head).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["status"], 431);
        // Answers with a body (all of procnode's own) and other statuses pass through.
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n";
        assert!(rewrite_automatic_error(ours).is_none());
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert!(rewrite_automatic_error(ok).is_none());
    }
}
