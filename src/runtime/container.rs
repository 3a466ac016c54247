//! One container's life: the task that owns its process. It starts the process, pumps its
//! output into the container's log buffer, records its exit, restarts it per the restart policy
//! with CrashLoopBackOff, and stops it (TERM to the group, KILL after the grace period) when the
//! pod's stop request arrives. Nothing else holds the process.

use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use nix::sys::signal::Signal;
use tokio::net::unix::pipe;
use tokio::sync::watch;

use super::attach::StdinPoint;
use super::backoff::Backoff;
use super::pod::{Happening, PodEntry};
use super::process::{self, SpawnRequest};
use super::status::{reason, ContainerState, RestartPolicy, Termination};
use super::supervisor::{self, Event, Supervised};
use super::{cgroup, env, probe, users, volumes, Settings};
use crate::logs::{now_ns, LogSlot, Stream};

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

/// How a container's supervision begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// Its first run.
    Fresh,
    /// A further run (it ran before; the restart count goes up).
    Restart,
    /// Its run is under way under the supervisor of this name (procnode restarted meanwhile).
    Resume(String),
    /// It was running without a supervisor when procnode stopped: it is gone.
    Lost,
}

/// Runs container `idx` of `entry` until it finishes for good or the pod is stopped.
/// `stop` carries the stop request this container obeys: the pod's
/// ([`PodEntry::stop_receiver`]), or for a sidecar, one its pod worker sends once the app
/// containers are done.
pub async fn supervise(
    entry: Arc<PodEntry>,
    idx: usize,
    policy: RestartPolicy,
    settings: Arc<Settings>,
    begin: Begin,
    mut stop: watch::Receiver<Option<Duration>>,
) -> Outcome {
    let mut backoff = Backoff::new(settings.backoff_initial, settings.backoff_max);
    let mut next = Some(begin);
    loop {
        let how = next.take().unwrap_or(Begin::Restart);
        let taking_back = matches!(how, Begin::Resume(_) | Begin::Lost);
        if stop.borrow().is_some() && !taking_back {
            return Outcome::Stopped;
        }
        if how == Begin::Restart {
            entry.log(idx).update(|l| l.rotate());
        }
        let started = Instant::now();
        let attempt = match how {
            Begin::Resume(name) => resume_run(&entry, idx, Some(&name)).await,
            Begin::Lost => resume_run(&entry, idx, None).await,
            Begin::Fresh => start(&entry, idx, &settings, false).await,
            Begin::Restart => start(&entry, idx, &settings, true).await,
        };
        let mut redefined = false;
        let (termination, supervised) = match attempt {
            Err(termination) => (termination, None),
            Ok(mut sup) => {
                let started_at = Timestamp::from_nanosecond(sup.started_ns as i128)
                    .unwrap_or_else(|_| Timestamp::now());
                let container_id = format!("procnode://{}", sup.pid);
                // A run taken back after a restart may have been recorded as not started yet.
                let spec = entry.container_spec(idx);
                let (probed_ready, probed_start) = (
                    probe::has(&spec, probe::Kind::Readiness),
                    probe::has(&spec, probe::Kind::Startup),
                );
                let post_start = !taking_back
                    && spec
                        .lifecycle
                        .as_ref()
                        .is_some_and(|l| l.post_start.is_some());
                entry.update_container(idx, |c| {
                    c.state = ContainerState::Running { started_at };
                    c.post_start_pending = post_start;
                    // Without a readiness (startup) probe a running container is ready (started).
                    c.ready = !probed_ready;
                    c.started = !probed_start;
                    c.pid = Some(sup.pid);
                    c.container_id = Some(container_id.clone());
                });
                tracing::info!(
                    pod = %entry.key(),
                    container = %spec.name,
                    pid = sup.pid,
                    "{}",
                    if taking_back { "container taken back" } else { "container started" }
                );
                // Off the async threads: it may read Secrets from the API server.
                let probes = {
                    let (e, s) = (entry.clone(), settings.clone());
                    tokio::task::spawn_blocking(move || exec_context(&e, idx, &s))
                        .await
                        .ok()
                        .flatten()
                };
                let (end, probe_failure, changed) = run(
                    &mut sup,
                    &entry,
                    idx,
                    &mut stop,
                    &settings,
                    probes,
                    taking_back,
                )
                .await;
                redefined = changed;
                let termination = match end {
                    Event::Exited(e) => {
                        let mut t = Termination::exited(
                            e.status,
                            Some(started_at),
                            Timestamp::from_nanosecond(e.finished_ns as i128)
                                .unwrap_or_else(|_| Timestamp::now()),
                            Some(container_id),
                        );
                        t.message = termination_message(&entry, idx, &settings, t.exit_code)
                            .await
                            .or(probe_failure);
                        let name = &entry.container_spec(idx).name;
                        if t.exit_code != 0
                            && settings
                                .cgroups
                                .oom_kills(&settings.pod_cgroup(&entry), name)
                                > 0
                        {
                            t.reason = reason::OOM_KILLED.into();
                        }
                        t
                    }
                    Event::Gone => {
                        Termination::supervisor_gone(Some(started_at), Some(container_id))
                    }
                };
                (termination, Some(sup))
            }
        };
        entry.log(idx).update(|l| l.finish());
        // The run's own root (its writable layer) goes with it, once its termination message
        // was read.
        let run = current_run(&entry, idx);
        if let Some(layer) = settings.run_layer(&entry, idx, run) {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(layer)).await;
        }
        settings.metrics.container_exited(&termination.reason);
        let code = termination.exit_code;
        tracing::info!(
            pod = %entry.key(),
            container = %entry.container_spec(idx).name,
            exit_code = code,
            reason = %termination.reason,
            detail = termination.message.as_deref().unwrap_or(""),
            "container exited"
        );
        let start_failed = termination.reason == reason::START_ERROR;
        let stopped = stop.borrow().is_some();
        // A changed definition restarts the container at once, whatever the policy (as the
        // kubelet does when a container's spec hash changes).
        let restarts = !stopped && (redefined || policy.restarts(code));
        let delay = if redefined {
            Duration::ZERO
        } else {
            backoff.next_delay(started.elapsed())
        };
        let message = termination.message.clone();
        entry.update_container(idx, |c| {
            c.pid = None;
            c.supervisor = None;
            c.ready = false;
            c.started = false;
            if redefined && restarts {
                c.last_termination = Some(termination);
                c.state = ContainerState::Waiting {
                    reason: reason::CONTAINER_CREATING,
                    message: None,
                };
            } else if restarts {
                let (reason, message) = if start_failed {
                    (reason::RUN_CONTAINER_ERROR, message)
                } else {
                    (
                        reason::CRASH_LOOP_BACK_OFF,
                        Some(format!(
                            "back-off {} restarting failed container={} pod={}_{}({})",
                            humantime::format_duration(delay),
                            c.name,
                            entry.key().name,
                            entry.key().namespace,
                            entry.uid()
                        )),
                    )
                };
                c.last_termination = Some(termination);
                c.state = ContainerState::Waiting { reason, message };
            } else {
                c.state = ContainerState::Terminated(termination);
            }
        });
        // Once the exit is on disk, the supervisor may go: it is retried until it is. An exit
        // the pod asked for (delete, shutdown) is not fsync'd: its record goes away next, or
        // it is re-created on start.
        let release = if stopped || supervised.is_none() {
            super::records::save_status(&entry, &settings, !stopped).await;
            true
        } else {
            super::records::record_exit(&entry, &settings, &entry.container_spec(idx).name).await
        };
        if let Some(sup) = supervised.filter(|_| release) {
            sup.release().await;
        }
        if stopped {
            return Outcome::Stopped;
        }
        if !restarts {
            return Outcome::Exited(code);
        }
        tracing::info!(
            pod = %entry.key(),
            container = %entry.container_spec(idx).name,
            after = %humantime::format_duration(delay),
            "restarting container"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(Option::is_some) => return Outcome::Stopped,
        }
    }
}

/// The number of container `idx`'s current (or last) run: its restart count.
fn current_run(entry: &PodEntry, idx: usize) -> u64 {
    entry.read_state(|st| st.container(idx).restart_count.max(0) as u64)
}

/// Default of `terminationMessagePath`. On a host it would name the host's own file, shared by
/// every container, so it is not read; a container that sets another path gets it read.
const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// The kubelet's bounds: 4 KiB from the file; from the logs, the last 80 lines up to 2 KiB.
const TERMINATION_MESSAGE_MAX: usize = 4096;
const FALLBACK_LOG_LINES: usize = 80;
const FALLBACK_LOG_BYTES: usize = 2048;

/// `terminated.message`: the file at `terminationMessagePath` (relative paths from the working
/// directory), or with `FallbackToLogsOnError` and a failed run, the end of the log.
async fn termination_message(
    entry: &Arc<PodEntry>,
    idx: usize,
    settings: &Arc<Settings>,
    exit_code: i32,
) -> Option<String> {
    let container = entry.container_spec(idx);
    let path = container
        .termination_message_path
        .as_deref()
        .filter(|p| !p.is_empty() && *p != DEFAULT_TERMINATION_MESSAGE_PATH)
        .map(|p| match container.working_dir.as_deref() {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir).join(p),
            _ => settings.work_path(entry).join(p),
        });
    // In a root of its own, a file the run wrote is in its writable layer.
    let layer = settings.run_layer(entry, idx, current_run(entry, idx));
    let from_file = match path {
        Some(path) => {
            let (entry, settings) = (entry.clone(), settings.clone());
            tokio::task::spawn_blocking(move || {
                // Read as the container would read it: with its identity (which may ask the
                // host's user database), only a regular file, without blocking, bounded (a
                // FIFO, a device or someone else's file gives no message).
                let container = entry.container_spec(idx);
                let user =
                    users::resolve(&entry.pod(), &container, &settings.users, entry.pod_id())
                        .ok()?;
                let reader = user.map(|u| (u.uid, u.gid, u.groups));
                // What the run wrote is in its layer's upper directory (procnode's, reached as
                // root; below it, only as the container); anything else is the host's.
                let rel = path.strip_prefix("/").unwrap_or(&path).to_path_buf();
                let upper = layer
                    .and_then(|l| super::safepath::Dir::open_trusted(&l.join("upper")).ok())
                    .filter(|upper| super::safepath::exists_in_root(upper, &rel));
                let read = match &upper {
                    Some(upper) => (Some(upper), rel.as_path()),
                    None => (None, path.as_path()),
                };
                super::safepath::read_as(read.0, read.1, reader, TERMINATION_MESSAGE_MAX)
                    .map(|buf| String::from_utf8_lossy(&buf).into_owned())
            })
            .await
            .ok()
            .flatten()
        }
        None => None,
    };
    let from_file = from_file.filter(|m| !m.is_empty());
    let fallback = container.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
    if from_file.is_some() || !fallback || exit_code == 0 {
        return from_file;
    }
    let tail =
        entry
            .log(idx)
            .logs
            .lock()
            .expect("logs lock")
            .current
            .read(&crate::logs::LogQuery {
                tail: Some(FALLBACK_LOG_LINES),
                ..Default::default()
            });
    let tail = &tail[tail.len().saturating_sub(FALLBACK_LOG_BYTES)..];
    (!tail.is_empty()).then(|| String::from_utf8_lossy(tail).into_owned())
}

fn start_error(message: String) -> Termination {
    Termination {
        exit_code: 128,
        signal: None,
        reason: reason::START_ERROR.into(),
        message: Some(message),
        started_at: None,
        finished_at: Timestamp::now(),
        container_id: None,
    }
}

/// Builds the process for container `idx` and starts it under a new supervisor.
async fn start(
    entry: &Arc<PodEntry>,
    idx: usize,
    settings: &Arc<Settings>,
    restart: bool,
) -> Result<Supervised, Termination> {
    let began = Instant::now();
    let container = entry.container_spec(idx);
    let run_no = entry.update_container(idx, |c| c.restart_count as u64 + u64::from(restart));
    let req = {
        let (entry, settings) = (entry.clone(), settings.clone());
        tokio::task::spawn_blocking(move || recipe(&entry, idx, &settings, For::Run(run_no)))
            .await
            .map_err(|e| start_error(e.to_string()))?
            .map_err(|e| start_error(e.to_string()))?
    };
    let metrics = &settings.metrics;
    metrics.start_step(crate::metrics::StartStep::Recipe, began.elapsed());
    let launched = Instant::now();
    // Said once per run, not silently: volumes the host has no mount point for.
    let unmounted: Vec<String> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.clone())
        .filter(|p| !req.mounts.iter().any(|b| b.target == Path::new(p)))
        .collect();
    if !unmounted.is_empty() {
        tracing::warn!(pod = %entry.key(), container = %container.name, paths = ?unmounted, "volumes not mounted: the host has no such path (--pod-root overlay mounts at any path); linked under the working directory");
        let notice = format!(
            "container {}: volumes not mounted at {} (the host has no such path; --pod-root overlay mounts at any path): linked under the working directory and named by PROCNODE_VOLUME_* instead",
            container.name,
            unmounted.join(", ")
        );
        entry.update_state(|st| st.notice = Some(notice));
        entry.note(idx, Happening::VolumesNotMounted(unmounted));
    }
    let (sup, name) = if settings.supervise {
        let name = settings.supervisor_name(entry, idx, run_no);
        let (sup, _shim_exit) = supervisor::launch(
            &settings.shim_exe,
            &name,
            &req,
            settings.cgroups.supervisor_dirs(),
        )
        .await
        .map_err(start_error)?;
        (sup, Some(name))
    } else {
        (
            supervisor::direct(req, &settings.shim_exe)
                .await
                .map_err(start_error)?,
            None,
        )
    };
    let started_at =
        Timestamp::from_nanosecond(sup.started_ns as i128).unwrap_or_else(|_| Timestamp::now());
    metrics.start_step(crate::metrics::StartStep::Supervisor, launched.elapsed());
    metrics.spawn_latency.observe(began.elapsed());
    metrics
        .container_starts
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if restart {
        metrics
            .container_restarts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    entry.update_container(idx, |c| {
        if restart {
            c.restart_count += 1;
        }
        // The image of this run (an update may have changed it).
        c.image = container.image.clone().unwrap_or_default();
        c.state = ContainerState::Running { started_at };
        // In the same change as the start, so that no reader sees the container running
        // before its postStart hook has run (the kubelet reports it ContainerCreating).
        c.post_start_pending = container
            .lifecycle
            .as_ref()
            .is_some_and(|l| l.post_start.is_some());
        c.pid = Some(sup.pid);
        c.supervisor = name;
        c.container_id = Some(format!("procnode://{}", sup.pid));
    });
    super::records::save_status(entry, settings, false).await;
    Ok(sup)
}

/// Takes back a run that was under way when procnode stopped: attach to its supervisor, or,
/// if that is gone (or there was none), report that the exit is unknown and stop what may be
/// left of it.
async fn resume_run(
    entry: &Arc<PodEntry>,
    idx: usize,
    name: Option<&str>,
) -> Result<Supervised, Termination> {
    // What the log files held of this run when procnode started: the relay goes on after it.
    // (A run adopted by its supervisor's name may be a later one than the logs brought back,
    // when its status record was lost: then nothing is known to be held.)
    let run = entry.update_container(idx, |c| c.restart_count.max(0) as u64);
    let held = entry.log(idx).update(|l| l.restored_output(run));
    let attached = match name {
        Some(name) => match supervisor::attach(name, held).await {
            Ok(sup) => Some(sup),
            Err(e) => {
                tracing::warn!(pod = %entry.key(), supervisor = name, error = %e, "cannot re-attach to the container's supervisor");
                None
            }
        },
        None => None,
    };
    match attached {
        Some(sup) => Ok(sup),
        None => {
            let (started_at, container_id, pid) = entry.update_container(idx, |c| {
                let started = match &c.state {
                    ContainerState::Running { started_at } => Some(*started_at),
                    _ => None,
                };
                (started, c.container_id.clone(), c.pid)
            });
            // Nobody supervises what may be left of it: stop it, if that pid is still it.
            if let (Some(pid), Some(started)) = (pid, started_at) {
                if process::is_same_process(pid, started.as_nanosecond() as i64) {
                    process::signal_group(pid, Signal::SIGKILL);
                }
            }
            Err(Termination::supervisor_gone(started_at, container_id))
        }
    }
}

/// Pumps output until the container exits or its supervisor goes away; on a stop request, a
/// failed liveness/startup probe or postStart hook, or a changed definition, stops the run
/// ([`Stop`]).
async fn run(
    sup: &mut Supervised,
    entry: &PodEntry,
    idx: usize,
    stop: &mut watch::Receiver<Option<Duration>>,
    settings: &Settings,
    probes: Option<probe::ExecContext>,
    resumed: bool,
) -> (Event, Option<String>, bool) {
    let grace = settings.grace_period(entry, None);
    let container = entry.container_spec(idx);
    // An update that changes this container's definition restarts its process.
    let mut respec = entry.restart_requests(idx);
    respec.borrow_and_update();
    let mut redefined = false;
    let sup_pid = sup.pid;
    let ctx = probes.clone();
    let probing = async {
        match probes {
            Some(ctx) => probe::watch(entry, idx, ctx).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(probing);
    let mut probe_failure: Option<String> = None;
    // postStart runs beside the process; if it fails the run is stopped. A run taken back
    // after a restart of procnode had its hook already (the kubelet does not run it again).
    let mut post_start = ctx.clone().filter(|_| !resumed).and_then(|ctx| {
        probe::hook(
            &container,
            probe::Hook::PostStart,
            ctx,
            grace.max(Duration::from_secs(30)),
        )
    });
    let mut stopping = Stop::Running;
    // Starts stopping the run (the one terminate path): preStop first if there is one, then
    // TERM, KILL at the end of the grace period.
    let begin_stop = |grace: Duration| {
        let hook = ctx
            .clone()
            .filter(|_| !grace.is_zero())
            .and_then(|ctx| probe::hook(&container, probe::Hook::PreStop, ctx, grace));
        Stop::begin(sup_pid, grace, hook)
    };
    let logs = entry.log(idx);
    let pump = |pipe: &pipe::Receiver, stream| read_available(pipe, stream, logs);
    let (mut out_open, mut err_open) =
        (sup.output.stdout().is_some(), sup.output.stderr().is_some());
    let mut read_output = false;
    // The run's stdin, for attaching clients, while it runs; a `stdinOnce` client's end asks
    // for it to be closed.
    let (close_stdin, mut stdin_closes) = tokio::sync::mpsc::channel(1);
    let mut close_requested = false;
    if let Some(console) = sup.console.clone() {
        let once = container.stdin_once == Some(true);
        entry.set_stdin_point(idx, Some(StdinPoint::new(console, once, close_stdin)));
    }
    let event = loop {
        let running = stopping.is_running();
        tokio::select! {
            biased;
            event = sup.events.next(Some(logs)) => break event,
            requested = stop.wait_for(Option::is_some), if running => {
                let requested = requested.ok().and_then(|g| *g).unwrap_or_default();
                stopping = begin_stop(requested);
            }
            changed = respec.changed(), if running && !redefined => {
                if changed.is_ok() {
                    tracing::info!(pod = %entry.key(), container = idx, "container definition changed; restarting it");
                    redefined = true;
                    stopping = begin_stop(grace);
                }
            }
            reason = &mut probing, if running && probe_failure.is_none() => {
                // A failed liveness or startup probe: stop this run, as the kubelet does.
                tracing::info!(pod = %entry.key(), container = idx, %reason, "stopping container");
                probe_failure = Some(reason);
                stopping = begin_stop(grace);
            }
            result = async { post_start.as_mut().expect("guarded").await }, if post_start.is_some() => {
                post_start = None;
                entry.update_container(idx, |c| c.post_start_pending = false);
                if let Err(reason) = result {
                    entry.note(idx, Happening::PostStartHookFailed(reason.clone()));
                    if stopping.is_running() && probe_failure.is_none() {
                        tracing::info!(pod = %entry.key(), container = idx, %reason, "stopping container");
                        probe_failure = Some(reason);
                        stopping = begin_stop(grace);
                    }
                }
            }
            hook = stopping.advance(), if !running => {
                if let Some(Err(reason)) = hook {
                    tracing::info!(pod = %entry.key(), container = idx, %reason, "preStop hook failed");
                    entry.note(idx, Happening::PreStopHookFailed(reason));
                }
            }
            r = readable(sup.output.stdout()), if out_open => {
                out_open = r.is_ok() && pump(sup.output.stdout().expect("open"), Stream::Stdout);
                read_output = true;
            }
            r = readable(sup.output.stderr()), if err_open => {
                err_open = r.is_ok() && pump(sup.output.stderr().expect("open"), Stream::Stderr);
                read_output = true;
            }
            Some(()) = stdin_closes.recv() => close_requested = true,
        }
        if std::mem::take(&mut close_requested) {
            entry.set_stdin_point(idx, None);
            sup.close_stdin().await;
        }
        if std::mem::take(&mut read_output) {
            tokio::task::yield_now().await;
        }
    };
    entry.set_stdin_point(idx, None);
    if event == Event::Gone {
        // Nobody supervises what may be left of the container: stop it.
        process::signal_group(sup_pid, Signal::SIGKILL);
    }
    if event == Event::Gone || !settings.supervise {
        // What left the process group but not the container's cgroup (a supervisor does this
        // itself).
        let dirs = settings
            .cgroups
            .container_dirs(&settings.pod_cgroup(entry), &entry.container_spec(idx).name);
        if !dirs.is_empty() {
            let _ = tokio::task::spawn_blocking(move || process::kill_cgroups(&dirs)).await;
        }
    }
    // The supervisor has ended what was left of the process group; collect the output still
    // in the pipes (bounded: a process that escaped the group may hold them open).
    let drain = async {
        while out_open || err_open {
            tokio::select! {
                r = readable(sup.output.stdout()), if out_open => {
                    out_open = r.is_ok() && pump(sup.output.stdout().expect("open"), Stream::Stdout)
                }
                r = readable(sup.output.stderr()), if err_open => {
                    err_open = r.is_ok() && pump(sup.output.stderr().expect("open"), Stream::Stderr)
                }
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, drain).await;
    (event, probe_failure, redefined)
}

/// How long the kubelet lets a container run after its preStop hook, at least.
const AFTER_PRE_STOP: Duration = Duration::from_secs(2);

/// Where the stop of one run is. Every stop takes the same path: [`Stop::begin`], then
/// [`Stop::advance`] until the supervisor reports the exit (which the select loop waits for
/// in every state, so a run that ends early ends the stop).
enum Stop {
    /// Nobody asked the run to stop.
    Running,
    /// The preStop hook runs; TERM follows when it ends, KILL no sooner than `deadline`.
    Hook {
        pgid: i32,
        hook: probe::HookRun,
        deadline: tokio::time::Instant,
    },
    /// TERM was sent to the process group; KILL at `kill_at`.
    Terminating {
        pgid: i32,
        kill_at: tokio::time::Instant,
    },
    /// KILL was sent; only the exit is awaited.
    Killed,
}

impl Stop {
    /// Begins stopping the process group `pgid` within `grace`: its preStop `hook` first when
    /// there is one, else TERM now. No grace at all (an eviction, a forced delete) is KILL at
    /// once and no hook, as a container runtime's stop with timeout 0.
    fn begin(pgid: i32, grace: Duration, hook: Option<probe::HookRun>) -> Stop {
        let deadline = tokio::time::Instant::now() + grace;
        if grace.is_zero() {
            process::signal_group(pgid, Signal::SIGKILL);
            return Stop::Killed;
        }
        match hook {
            Some(hook) => Stop::Hook {
                pgid,
                hook,
                deadline,
            },
            None => {
                process::signal_group(pgid, Signal::SIGTERM);
                Stop::Terminating {
                    pgid,
                    kill_at: deadline,
                }
            }
        }
    }

    fn is_running(&self) -> bool {
        matches!(self, Stop::Running)
    }

    /// Waits for the next step and takes it: the hook's end (then TERM; its result is
    /// returned), the grace period's end (then KILL). Never completes when running or killed.
    async fn advance(&mut self) -> Option<Result<(), String>> {
        match self {
            Stop::Running | Stop::Killed => std::future::pending().await,
            Stop::Hook {
                pgid,
                hook,
                deadline,
            } => {
                let result = hook.await;
                let (pgid, deadline) = (*pgid, *deadline);
                process::signal_group(pgid, Signal::SIGTERM);
                *self = Stop::Terminating {
                    pgid,
                    kill_at: deadline.max(tokio::time::Instant::now() + AFTER_PRE_STOP),
                };
                Some(result)
            }
            Stop::Terminating { pgid, kill_at } => {
                tokio::time::sleep_until(*kill_at).await;
                process::signal_group(*pgid, Signal::SIGKILL);
                *self = Stop::Killed;
                None
            }
        }
    }
}

/// What exec probes and hooks of container `idx` run with; `None` when it has neither.
fn exec_context(entry: &PodEntry, idx: usize, settings: &Settings) -> Option<probe::ExecContext> {
    let c = entry.container_spec(idx);
    let hooks = c
        .lifecycle
        .as_ref()
        .is_some_and(|l| l.post_start.is_some() || l.pre_stop.is_some());
    if c.startup_probe.is_none()
        && c.liveness_probe.is_none()
        && c.readiness_probe.is_none()
        && !hooks
    {
        return None;
    }
    let recipe = recipe(entry, idx, settings, For::Exec).ok()?;
    Some(probe::ExecContext {
        recipe,
        helper: settings.shim_exe.clone(),
    })
}

/// The recipe of a process exec'd into container `idx`'s current run (`kubectl exec`): that
/// of its exec probes, whose argv the caller replaces. Blocking.
pub(super) fn exec_recipe(
    entry: &PodEntry,
    idx: usize,
    settings: &Settings,
) -> Result<SpawnRequest, RecipeError> {
    recipe(entry, idx, settings, For::Exec)
}

/// Why a container's process recipe cannot be made: the run fails to start
/// (`StartError`, with this as its message).
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error(transparent)]
    Env(#[from] env::ConfigError),
    #[error(transparent)]
    User(#[from] users::UserError),
    #[error(transparent)]
    WorkingDir(#[from] process::SpawnError),
    #[error(transparent)]
    Volumes(#[from] volumes::VolumeError),
    #[error(transparent)]
    Cgroup(std::io::Error),
}

/// Which process a recipe is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum For {
    /// Run `N` of the container itself: a fresh cgroup, and its own root when runs get one.
    Run(u64),
    /// An exec probe or hook of the current run: its cgroup, and its root (by joining the
    /// running container's mount namespace) when it has one of its own.
    Exec,
}

/// The one recipe of container `idx`'s processes (its own, and its exec probes' and hooks'):
/// argv, environment (volume paths first, so that `env` and `args` can refer to them as
/// $(VAR)), working directory, user, cgroups (a fresh one for a new run, else the current
/// run's), volume mounts, and the run's own root (`--pod-root overlay`; exec probes and hooks
/// join it instead). Makes the working directory when the container runs in its pod's, and the
/// links and subPaths of its mounts. Blocking.
fn recipe(
    entry: &PodEntry,
    idx: usize,
    settings: &Settings,
    what: For,
) -> Result<SpawnRequest, RecipeError> {
    let new_run = matches!(what, For::Run(_));
    let c = entry.container_spec(idx);
    let pod = entry.pod();
    let env = env::environment(&pod, &c, &settings.node, settings.objects.as_deref())?;
    let user = users::resolve(&pod, &c, &settings.users, entry.pod_id())?;
    // What procnode makes for the container belongs to it (group: the pod's own).
    let owner = user
        .as_ref()
        .map(|u| (u.uid, entry.pod_id().unwrap_or(u.gid)));
    let work = match c.working_dir.as_deref() {
        Some(dir) if !dir.is_empty() => None,
        _ => Some(
            settings
                .work_dir(entry, owner)
                .map_err(|e| process::SpawnError::PodDir(settings.work_path(entry), e))?,
        ),
    };
    let cwd = match &work {
        Some(w) => w.path().to_path_buf(),
        None => PathBuf::from(c.working_dir.as_deref().unwrap_or("/")),
    };
    let empty = volumes::PodVolumes::new();
    let pod_volumes = entry.volumes().unwrap_or(&empty);
    let (mounts, mut full_env) =
        volumes::for_container(&c, pod_volumes, work.as_ref(), &settings.volumes, owner)?;
    let pod_cgroup = settings.pod_cgroup(entry);
    let cgroups = if new_run {
        settings
            .cgroups
            .create_container(&pod_cgroup, &c.name, &limits(&c))
            .map_err(RecipeError::Cgroup)?
    } else {
        settings.cgroups.container_dirs(&pod_cgroup, &c.name)
    };
    full_env.extend(env);
    let argv = env::argv(&c, &full_env);
    // A process on the host gains root through any setuid binary; in a mount namespace whose
    // volumes the pod controls (a /etc of its own) that is an escape. Only a container that
    // asks for it and has no such mounts may raise its privileges.
    let escalate = c
        .security_context
        .as_ref()
        .and_then(|s| s.allow_privilege_escalation)
        == Some(true);
    let no_new_privs = !escalate || !mounts.is_empty();
    let read_only_root = c
        .security_context
        .as_ref()
        .and_then(|s| s.read_only_root_filesystem)
        == Some(true);
    // The container's own run gets the stdin (or terminal) its spec asks for; its exec'd
    // processes get theirs from their client.
    let console = match new_run {
        true => console_of(&c),
        false => process::Console::None,
    };
    // A root of the run's own: the layer is made fresh (a leftover of a start that failed
    // goes), root's, in procnode's own directory; the pod's directory is bound in.
    let (root, join_mounts_of, mounts) = match what {
        For::Run(run) => match settings.run_layer(entry, idx, run) {
            Some(layer) => {
                let _ = std::fs::remove_dir_all(&layer);
                std::fs::create_dir_all(&layer).map_err(|e| {
                    RecipeError::WorkingDir(process::SpawnError::PodDir(layer.clone(), e))
                })?;
                let binds = vec![settings.layout.pod_dir(entry.key(), entry.uid())];
                (Some(process::RootSpec { layer, binds }), None, mounts)
            }
            None => (None, None, mounts),
        },
        // The running container's namespace has its root and mounts already.
        For::Exec if settings.volumes.overlay_root => {
            let pid = entry.read_state(|st| st.container(idx).pid);
            (None, pid, Vec::new())
        }
        For::Exec => (None, None, mounts),
    };
    Ok(SpawnRequest {
        argv,
        env: full_env,
        cwd,
        user,
        cgroups,
        mounts,
        no_new_privs,
        root,
        read_only_root: read_only_root && join_mounts_of.is_none(),
        join_mounts_of,
        group: match console {
            process::Console::Terminal => process::Group::Terminal,
            _ => process::Group::Own,
        },
        console,
    })
}

/// What a container's `resources` ask of its cgroup.
/// The stdin a container's spec asks for: a terminal (`tty`, for all three streams), a pipe
/// (`stdin`), or none.
pub(super) fn console_of(c: &k8s_openapi::api::core::v1::Container) -> process::Console {
    match (c.tty == Some(true), c.stdin == Some(true)) {
        (true, _) => process::Console::Terminal,
        (false, true) => process::Console::Stdin,
        _ => process::Console::None,
    }
}

pub(super) fn limits(c: &k8s_openapi::api::core::v1::Container) -> cgroup::Limits {
    let get = |which: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >,
               name: &str| {
        which
            .and_then(|m| m.get(name))
            .and_then(|q| q.0.parse::<crate::quantity::Quantity>().ok())
    };
    let r = c.resources.as_ref();
    let lim = r.and_then(|r| r.limits.as_ref());
    let req = r.and_then(|r| r.requests.as_ref());
    cgroup::Limits {
        memory_bytes: get(lim, "memory").and_then(|q| q.to_bytes()),
        cpu_millis: get(lim, "cpu").map(|q| q.milli().max(1) as u64),
        cpu_request_millis: get(req, "cpu")
            .or_else(|| get(lim, "cpu"))
            .map(|q| q.milli().max(0) as u64),
    }
}

/// Waits until `pipe` is readable; never, when there is none (a terminal has no stderr).
async fn readable(pipe: Option<&pipe::Receiver>) -> io::Result<()> {
    match pipe {
        Some(p) => p.readable().await,
        None => std::future::pending().await,
    }
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
