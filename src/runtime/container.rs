//! One container's life: the task that owns its process. It starts the process, pumps its
//! output into the container's log buffer, records its exit, restarts it per the restart policy
//! with CrashLoopBackOff, and stops it (TERM to the group, KILL after the grace period) when the
//! pod's stop request arrives. Nothing else holds the process.

use std::cell::RefCell;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use nix::sys::signal::Signal;
use tokio::net::unix::pipe;
use tokio::sync::watch;

use super::backoff::Backoff;
use super::process::{self, ExitStatus, SpawnRequest, Spawned};
use super::status::{reason, ContainerState, RestartPolicy, Termination};
use super::{env, Settings};
use crate::logs::{now_ns, LogSlot, Stream};
use crate::store::PodEntry;

/// How long output is still read after a container's process group is gone (a process that
/// escaped the group may hold the pipe open; it does not keep the container alive).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// Reads per wake-up of one pipe before the task yields, so that a child writing flat out
/// cannot starve API requests or other containers on the same worker thread.
const READS_PER_WAKE: usize = 4;
const READ_CHUNK: usize = 64 * 1024;

/// How a container's supervision ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The last run exited with this code and the policy does not restart it.
    Exited(i32),
    /// The pod was asked to stop.
    Stopped,
}

/// Runs container `idx` of `entry` until it finishes for good or the pod is stopped.
pub async fn supervise(
    entry: Arc<PodEntry>,
    idx: usize,
    policy: RestartPolicy,
    settings: Arc<Settings>,
) -> Outcome {
    let mut stop = entry.stop_receiver();
    let mut backoff = Backoff::new(settings.backoff_initial, settings.backoff_max);
    let mut first_run = true;
    loop {
        if stop.borrow().is_some() {
            return Outcome::Stopped;
        }
        if !first_run {
            entry.logs[idx].update(|l| l.rotate());
        }
        let started = Instant::now();
        let started_at = Timestamp::now();
        let termination = match start(&entry, idx, &settings).await {
            Err(message) => Termination {
                exit_code: 128,
                signal: None,
                reason: reason::START_ERROR.into(),
                message: Some(message),
                started_at: None,
                finished_at: Timestamp::now(),
                container_id: None,
            },
            Ok(spawned) => {
                let pid = spawned.pid;
                let container_id = format!("procnode://{pid}");
                entry.update_container(idx, |c| {
                    if !first_run {
                        c.restart_count += 1;
                    }
                    c.state = ContainerState::Running { started_at };
                    c.pid = Some(pid);
                    c.container_id = Some(container_id.clone());
                    // Without a readiness probe, a running container is ready.
                    c.ready = true;
                });
                let status = run(spawned, &entry, idx, &mut stop).await;
                let code = status.exit_code();
                Termination {
                    exit_code: code,
                    signal: status.signal(),
                    reason: if code == 0 {
                        reason::COMPLETED
                    } else {
                        reason::ERROR
                    }
                    .into(),
                    message: None,
                    started_at: Some(started_at),
                    finished_at: Timestamp::now(),
                    container_id: Some(container_id),
                }
            }
        };
        entry.logs[idx].update(|l| l.finish());
        let code = termination.exit_code;
        let start_failed = termination.reason == reason::START_ERROR;
        let stopped = stop.borrow().is_some();
        let restarts = !stopped && policy.restarts(code);
        let delay = backoff.next_delay(started.elapsed());
        let message = termination.message.clone();
        entry.update_container(idx, |c| {
            c.pid = None;
            c.ready = false;
            if restarts {
                let (reason, message) = if start_failed {
                    (reason::RUN_CONTAINER_ERROR, message)
                } else {
                    (
                        reason::CRASH_LOOP_BACK_OFF,
                        Some(format!(
                            "back-off {} restarting failed container={} pod={}_{}({})",
                            humantime::format_duration(delay),
                            c.name,
                            entry.key.name,
                            entry.key.namespace,
                            entry.uid
                        )),
                    )
                };
                c.last_termination = Some(termination);
                c.state = ContainerState::Waiting { reason, message };
            } else {
                c.state = ContainerState::Terminated(termination);
            }
        });
        if stopped {
            return Outcome::Stopped;
        }
        if !restarts {
            return Outcome::Exited(code);
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(Option::is_some) => return Outcome::Stopped,
        }
        first_run = false;
    }
}

/// Builds the process for container `idx` and starts it. Errors are the message users see.
async fn start(
    entry: &Arc<PodEntry>,
    idx: usize,
    settings: &Arc<Settings>,
) -> Result<Spawned, String> {
    let container = entry.container_spec(idx);
    let env = env::environment(&entry.pod, container, &settings.node).map_err(|e| e.to_string())?;
    let argv = env::argv(container, &env);
    let (cwd, in_pod_dir) = match container.working_dir.as_deref() {
        Some(dir) if !dir.is_empty() => (dir.into(), false),
        _ => (settings.pod_dir(entry), true),
    };
    let req = SpawnRequest { argv, env, cwd };
    let spawned = tokio::task::spawn_blocking(move || {
        if in_pod_dir {
            std::fs::create_dir_all(&req.cwd)
                .map_err(|e| process::SpawnError::PodDir(req.cwd.clone(), e))?;
        }
        process::spawn(&req)
    })
    .await
    .map_err(|e| format!("spawn task failed: {e}"))?
    .map_err(|e| e.to_string())?;
    let pid = spawned.pid;
    spawned.into_async().map_err(|e| {
        // The process started but its output cannot be watched: do not leave it behind.
        process::signal_group(pid, Signal::SIGKILL);
        format!("watching output: {e}")
    })
}

/// Pumps output until the process exits or a stop request arrives (then TERM, and KILL after
/// the grace period). Returns the exit status.
async fn run(
    mut p: Spawned,
    entry: &PodEntry,
    idx: usize,
    stop: &mut watch::Receiver<Option<Duration>>,
) -> ExitStatus {
    let logs = &entry.logs[idx];
    let pump = |pipe: &pipe::Receiver, stream| read_available(pipe, stream, logs);
    let (mut out_open, mut err_open) = (true, true);
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut read_output = false;
    let status = loop {
        let kill_timer = async {
            match kill_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            status = &mut p.exit => break status.unwrap_or(ExitStatus::Exited(255)),
            grace = stop.wait_for(Option::is_some), if kill_at.is_none() => {
                let grace = grace.ok().and_then(|g| *g).unwrap_or_default();
                process::signal_group(p.pid, Signal::SIGTERM);
                kill_at = Some(tokio::time::Instant::now() + grace);
            }
            _ = kill_timer => {
                process::signal_group(p.pid, Signal::SIGKILL);
                kill_at = Some(tokio::time::Instant::now() + Duration::from_secs(3600));
            }
            r = p.stdout.readable(), if out_open => {
                out_open = r.is_ok() && pump(&p.stdout, Stream::Stdout);
                read_output = true;
            }
            r = p.stderr.readable(), if err_open => {
                err_open = r.is_ok() && pump(&p.stderr, Stream::Stderr);
                read_output = true;
            }
        }
        if std::mem::take(&mut read_output) {
            tokio::task::yield_now().await;
        }
    };
    // The main process is gone: like a container runtime when a container's init exits, end
    // whatever else is left in its process group, then collect the output still in the pipes.
    process::signal_group(p.pid, Signal::SIGKILL);
    let drain = async {
        while out_open || err_open {
            tokio::select! {
                r = p.stdout.readable(), if out_open => out_open = r.is_ok() && pump(&p.stdout, Stream::Stdout),
                r = p.stderr.readable(), if err_open => err_open = r.is_ok() && pump(&p.stderr, Stream::Stderr),
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, drain).await;
    status
}

/// Reads what is available on `pipe` into the logs. Returns false at EOF or on error.
fn read_available(pipe: &pipe::Receiver, stream: Stream, logs: &LogSlot) -> bool {
    thread_local! {
        // One read buffer per worker thread, not per container: idle containers cost nothing.
        static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
    }
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        for _ in 0..READS_PER_WAKE {
            match pipe.try_read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => logs.update(|l| l.append(stream, &buf[..n], now_ns())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        true
    })
}
