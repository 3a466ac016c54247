//! `kubectl attach`: a client joins a running container's own streams.
//!
//! Its output comes from the capture that feeds the container's logs (followed from the moment
//! the client attaches), so nothing is read twice and nothing is lost from the logs. Its input
//! goes to the container's stdin, which the supervisor keeps open (a pipe, or with `tty: true`
//! a terminal) and hands to every procnode that connects to it, so attaching works after a
//! procnode restart too. With `stdinOnce`, the container's stdin is closed when the first
//! client that wrote to it is done, until the container restarts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::exec::RunningContainer;
use super::supervisor::Console;
use super::{PodKey, Runtime, RuntimeError};
use crate::logs::LogSlot;

/// A container run's stdin, as the container task publishes it for attaching clients.
#[derive(Clone)]
pub struct StdinPoint {
    pub console: Console,
    /// `stdinOnce`: the first client's end closes it.
    once: bool,
    /// Asks the container task to close the run's stdin.
    close: mpsc::Sender<()>,
    /// A client has had it (`stdinOnce`: no other may).
    taken: Arc<AtomicBool>,
}

impl StdinPoint {
    pub(super) fn new(console: Console, once: bool, close: mpsc::Sender<()>) -> StdinPoint {
        StdinPoint {
            console,
            once,
            close,
            taken: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// A running container a client attaches to ([`Runtime::attach_target`]).
pub struct AttachTarget {
    container: RunningContainer,
    /// The container's stdin, if it has one and the client may write to it (taken out when the
    /// client is done, so that a `stdinOnce` stdin is held by nobody once closed).
    stdin: std::sync::Mutex<Option<StdinPoint>>,
    /// Whether the container runs on a terminal (its output is all on stdout).
    pub tty: bool,
}

impl Runtime {
    /// The container `container` of pod `key`, if it is running now. A client that wants to
    /// write to its stdin needs a container started with `stdin: true` whose stdin is still
    /// open (`stdinOnce` closes it after the first client). (A run is listed Running a moment
    /// before its stdin is published, and after a restart of procnode before the run is taken
    /// back: a client asking for stdin then waits for it, up to a second.)
    pub async fn attach_target(
        &self,
        key: &PodKey,
        container: &str,
        stdin: bool,
    ) -> Result<AttachTarget, RuntimeError> {
        let running = self.running_container(key, container)?;
        let (entry, idx) = (running.entry(), running.idx());
        let spec = entry.container_spec(idx);
        let mut point = entry.stdin_point(idx);
        let has_stdin = super::container::console_of(&spec) != super::process::Console::None;
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
        while stdin && has_stdin && point.is_none() && tokio::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            point = entry.stdin_point(idx);
        }
        let tty = spec.tty == Some(true);
        let stdin = match (stdin, point) {
            (false, _) => None,
            (true, Some(p)) if !(p.once && p.taken.swap(true, Ordering::SeqCst)) => Some(p),
            (true, _) => {
                return Err(RuntimeError::NoStdin {
                    key: key.clone(),
                    container: container.to_string(),
                })
            }
        };
        Ok(AttachTarget {
            container: running,
            stdin: std::sync::Mutex::new(stdin),
            tty,
        })
    }
}

impl AttachTarget {
    pub fn key(&self) -> &PodKey {
        self.container.key()
    }

    /// The container's log capture, whose new output the client gets.
    pub fn logs(&self) -> Arc<LogSlot> {
        self.container.entry().log(self.container.idx()).clone()
    }

    /// The container's stdin (or terminal), when the client writes to it.
    pub fn stdin(&self) -> Option<Console> {
        self.point().as_ref().map(|p| p.console.clone())
    }

    fn point(&self) -> std::sync::MutexGuard<'_, Option<StdinPoint>> {
        self.stdin.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The client is done writing: with `stdinOnce`, the container's stdin closes (the
    /// caller has dropped what it had of it).
    pub async fn stdin_done(&self) {
        let point = self.point().take();
        if let Some(p) = point.filter(|p| p.once) {
            let close = p.close.clone();
            drop(p);
            let _ = close.send(()).await;
        }
    }

    /// Resolves once the run attached to has stopped (or the pod is gone).
    pub async fn stopped(&self) {
        self.container.stopped().await
    }
}
