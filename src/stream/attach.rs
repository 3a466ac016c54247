//! An attach session (`kubectl attach`): the container's own streams, over the same channel
//! protocols as exec ([`super::exec::on_spdy`], [`super::exec::on_ws`]).
//!
//! Output is followed from the container's log capture (see [`crate::runtime::attach`]); input
//! goes to its stdin or terminal. The session ends when the container's run stops (after what
//! it wrote is sent), with a Success status on the error channel, or when the client leaves.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::unix::pipe;

use super::exec::{self, Channels};
use crate::logs::{LogQuery, Stream, StreamFilter};
use crate::runtime::attach::AttachTarget;

/// How long output is still sent after the run stopped.
const DRAIN: Duration = Duration::from_secs(2);

/// Runs one attach session on the client's channels; the caller closes the connection.
pub async fn run_session(mut ch: Channels, protocol: &str, target: &AttachTarget) {
    tracing::info!(pod = %target.key(), protocol, stdin = target.stdin().is_some(), tty = target.tty, "attach");
    let slot = target.logs();
    // From now on: what the container writes after the client attached.
    let follow = |stream| {
        crate::logs::follow(
            slot.clone(),
            LogQuery {
                tail: Some(0),
                stream: StreamFilter::Only(stream),
                ..LogQuery::default()
            },
        )
    };
    let mut outputs = tokio::task::JoinSet::new();
    let mut streams = vec![(Stream::Stdout, ch.stdout.clone())];
    // With a terminal everything is on stdout.
    if !target.tty {
        streams.push((Stream::Stderr, ch.stderr.clone()));
    }
    for (stream, to) in streams {
        if let Some(to) = to {
            let output = follow(stream);
            outputs.spawn(async move {
                let mut output = std::pin::pin!(output);
                while let Some(chunk) = output.next().await {
                    if !to.send(&chunk).await {
                        return;
                    }
                }
            });
        }
    }
    let stdin = ch.stdin.take();
    let input = async {
        if let (Some(data), Some(console)) = (stdin, target.stdin()) {
            match writer(&console.fd, console.tty) {
                Ok(w) => exec::copy_in(data, w).await,
                Err(e) => tracing::warn!(error = %e, "attach: the container's stdin"),
            }
            // Nothing of the stdin is held here any more when it is closed.
            drop(console);
            target.stdin_done().await;
        }
        std::future::pending::<()>().await
    };
    let resize = async {
        if let (Some(data), Some(console)) = (ch.resize.take(), target.stdin()) {
            if console.tty {
                exec::resize(data, console.fd.clone()).await;
            }
        }
        std::future::pending::<()>().await
    };
    let mut gone = ch.gone.clone();
    let stopped = tokio::select! {
        _ = target.stopped() => true,
        _ = async { let _ = gone.wait_for(|g| *g).await; } => false,
        _ = input => false,
        _ = resize => false,
    };
    if stopped {
        let drained = tokio::time::timeout(DRAIN, async {
            while outputs.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            outputs.abort_all();
        }
    } else {
        outputs.abort_all();
    }
    ch.end(&exec::success(protocol)).await;
}

/// A writer on (a copy of) the container's stdin pipe or terminal master.
fn writer(fd: &std::os::fd::OwnedFd, tty: bool) -> std::io::Result<pipe::Sender> {
    let copy = fd.try_clone()?;
    if tty {
        // The master is non-blocking already (its reader made it so).
        return pipe::Sender::from_owned_fd_unchecked(copy);
    }
    pipe::Sender::from_owned_fd(copy)
}
