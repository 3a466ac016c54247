//! The pod worker: one task per pod. It prepares the pod's volumes and cgroup, runs its init
//! containers in order, then one container task per app container ([`container::supervise`]),
//! and marks the pod done once every task has returned: no process of the pod is left.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tokio::task::JoinSet;

use super::container;
use super::layout::StateLayout;
use super::pod::PodEntry;
use super::settings::Settings;
use super::status::{self, reason, ContainerStatus, RestartPolicy};
use super::{cgroup, records, shim, volumes, watchers};

/// Prepares the pod's volumes and cgroup before its first container starts (again after a
/// restart of procnode: both are idempotent), and watches emptyDir size limits.
async fn prepare_pod(
    entry: &Arc<PodEntry>,
    settings: &Arc<Settings>,
) -> Result<(), volumes::VolumeError> {
    let (e, s) = (entry.clone(), settings.clone());
    let prepared = tokio::task::spawn_blocking(move || {
        let pod = e.pod();
        let spec = pod.spec.as_ref().expect("validated");
        let limits: Vec<cgroup::Limits> = spec.containers.iter().map(container::limits).collect();
        if let Err(err) = s.cgroups.create_pod(&s.pod_cgroup(&e), &limits) {
            // Each container start then fails with the cause.
            tracing::warn!(pod = %e.key(), error = %err, "cannot create the pod's cgroup");
        }
        watchers::prepare_volumes(&e, &s)
    })
    .await
    .map_err(|err| volumes::VolumeError::Setup {
        name: String::new(),
        message: err.to_string(),
    })??;
    let watched: Vec<(String, PathBuf, u64, String)> = prepared
        .iter()
        .filter(|(_, v)| !v.tmpfs)
        .filter_map(|(name, v)| {
            let (bytes, text) = v.size_limit.clone()?;
            Some((name.clone(), v.path.clone(), bytes, text))
        })
        .collect();
    entry.set_volumes(prepared);
    if !watched.is_empty() {
        tokio::spawn(watchers::watch_volume_sizes(
            entry.clone(),
            settings.clone(),
            watched,
        ));
    }
    let from_objects = entry.pod().spec.as_ref().is_some_and(|s| {
        s.volumes
            .iter()
            .flatten()
            .any(|v| v.secret.is_some() || v.config_map.is_some() || v.projected.is_some())
    });
    if settings.objects.is_some() && from_objects {
        tokio::spawn(watchers::refresh_object_volumes(
            entry.clone(),
            settings.clone(),
        ));
    }
    Ok(())
}

pub(super) fn has_deadline(entry: &PodEntry) -> bool {
    entry
        .pod()
        .spec
        .as_ref()
        .is_some_and(|s| s.active_deadline_seconds.is_some())
}

/// How a container's supervision begins, from its recorded state. A recorded exit that is
/// restarted (a run stopped by procnode's own exit, or one that ended while it was down)
/// becomes the container's lastState, as any restart's does.
fn begin(c: &mut ContainerStatus, policy: RestartPolicy) -> Option<container::Begin> {
    match (&c.state, &c.supervisor) {
        (status::ContainerState::Running { .. }, Some(name)) => {
            Some(container::Begin::Resume(name.clone()))
        }
        (status::ContainerState::Running { .. }, None) => Some(container::Begin::Lost),
        (status::ContainerState::Terminated(t), _) if !policy.restarts(t.exit_code) => None,
        (status::ContainerState::Terminated(t), _) => {
            c.last_termination = Some(t.clone());
            c.state = status::ContainerState::Waiting {
                reason: status::reason::CONTAINER_CREATING,
                message: None,
            };
            Some(container::Begin::Restart)
        }
        (status::ContainerState::Waiting { .. }, _) if c.last_termination.is_some() => {
            Some(container::Begin::Restart)
        }
        (status::ContainerState::Waiting { .. }, _) => Some(container::Begin::Fresh),
    }
}

/// The pod worker: init containers in order, then every app container concurrently. A pod
/// restored after a procnode restart continues where its record says it was: finished init
/// containers are not run again, running containers are re-attached. (The pod directory is
/// created by the first container start that uses it, off the async threads.)
///
/// Sidecars (init containers with `restartPolicy: Always`) start in their place among the init
/// containers, and the next one waits until the sidecar has started (running, past its startup
/// probe). They are restarted whatever the pod's policy, and stopped only once the app
/// containers are done (or the pod failed to initialize), in reverse order, within what is
/// left of the grace period.
pub(super) async fn run_pod(entry: Arc<PodEntry>, settings: Arc<Settings>, restored: bool) {
    let mut sidecars = Sidecars::default();
    run_containers(&entry, &settings, restored, &mut sidecars).await;
    // However the containers ended, the sidecars go last; then the final record.
    sidecars.stop_all(&entry, &settings).await;
    finish(&entry, &settings).await;
}

/// [`run_pod`] up to the end of its app containers (or of the first init container that
/// fails, or of a stop), starting sidecars into `sidecars` on the way.
async fn run_containers(
    entry: &Arc<PodEntry>,
    settings: &Arc<Settings>,
    restored: bool,
    sidecars: &mut Sidecars,
) {
    let (n_init, n_app, policy) = entry.update_state(|st| {
        st.start_time.get_or_insert_with(Timestamp::now);
        (st.init.len(), st.containers.len(), st.restart_policy)
    });
    if has_deadline(entry) {
        tokio::spawn(watchers::enforce_deadline(entry.clone(), settings.clone()));
    }
    let began = std::time::Instant::now();
    let prepared = prepare_pod(entry, settings).await;
    settings
        .metrics
        .start_step(crate::metrics::StartStep::Prepare, began.elapsed());
    if let Err(e) = prepared {
        tracing::warn!(pod = %entry.key(), error = %e, "the pod's volumes cannot be set up");
        entry.fail(e.reason(), e.to_string(), false);
        return;
    }
    // A pod that had ended before a restart of procnode does not start its sidecars again.
    let ended = restored && entry.phase().is_terminal();
    // Init containers are retried on failure unless the pod never restarts anything.
    let init_policy = match policy {
        RestartPolicy::Never => RestartPolicy::Never,
        _ => RestartPolicy::OnFailure,
    };
    for idx in 0..n_init {
        let sidecar = entry.read_state(|st| st.init[idx].sidecar);
        if sidecar {
            if ended {
                continue;
            }
            let how = entry.update_container(idx, |c| begin(c, RestartPolicy::Always));
            let how = match how {
                Some(how) if restored => adopt_unrecorded(entry, idx, how, settings),
                Some(how) => how,
                None => continue,
            };
            sidecars.start(entry, idx, settings, how);
            if !sidecars.wait_started(entry, idx).await {
                break;
            }
            continue;
        }
        let how = entry.update_container(idx, |c| begin(c, init_policy));
        let how = match how {
            Some(how) if restored => Some(adopt_unrecorded(entry, idx, how, settings)),
            how => how,
        };
        let outcome = match how {
            None => container::Outcome::Exited(entry.update_container(idx, |c| match &c.state {
                status::ContainerState::Terminated(t) => t.exit_code,
                _ => 1,
            })),
            Some(how) => {
                container::supervise(
                    entry.clone(),
                    idx,
                    init_policy,
                    settings.clone(),
                    how,
                    entry.stop_receiver(),
                )
                .await
            }
        };
        if outcome != container::Outcome::Exited(0) {
            return;
        }
    }
    if entry.stop_requested() {
        return;
    }
    if n_init > 0 {
        entry.update_state(|st| {
            for c in st.containers.iter_mut() {
                if c.state
                    == (status::ContainerState::Waiting {
                        reason: reason::POD_INITIALIZING,
                        message: None,
                    })
                {
                    c.state = status::ContainerState::Waiting {
                        reason: reason::CONTAINER_CREATING,
                        message: None,
                    };
                }
            }
        });
    }
    let mut tasks = JoinSet::new();
    for idx in n_init..n_init + n_app {
        if let Some(how) = entry.update_container(idx, |c| begin(c, policy)) {
            let how = if restored {
                adopt_unrecorded(entry, idx, how, settings)
            } else {
                how
            };
            tasks.spawn(container::supervise(
                entry.clone(),
                idx,
                policy,
                settings.clone(),
                how,
                entry.stop_receiver(),
            ));
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// The pod's running sidecars, in start order: each with the stop request only the pod worker
/// sends it, and its task.
#[derive(Default)]
struct Sidecars {
    running: Vec<(
        usize,
        tokio::sync::watch::Sender<Option<Duration>>,
        tokio::task::JoinHandle<container::Outcome>,
    )>,
}

impl Sidecars {
    fn start(
        &mut self,
        entry: &Arc<PodEntry>,
        idx: usize,
        settings: &Arc<Settings>,
        how: container::Begin,
    ) {
        let (stop, stopped) = tokio::sync::watch::channel(None);
        let task = tokio::spawn(container::supervise(
            entry.clone(),
            idx,
            RestartPolicy::Always,
            settings.clone(),
            how,
            stopped,
        ));
        self.running.push((idx, stop, task));
    }

    /// Waits until sidecar `idx` has started; false if the pod is stopped first.
    async fn wait_started(&self, entry: &PodEntry, idx: usize) -> bool {
        let mut changes = entry.status_changes();
        let mut stop = entry.stop_receiver();
        loop {
            if entry.read_state(|st| st.init[idx].sidecar_started()) {
                return true;
            }
            if stop.borrow_and_update().is_some() {
                return false;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return false },
                _ = stop.changed() => {}
            }
        }
    }

    /// Stops every sidecar, the last started first, each waited for, within what is left of
    /// the pod's grace period (counted from now unless the pod was asked to stop).
    async fn stop_all(&mut self, entry: &PodEntry, settings: &Settings) {
        if self.running.is_empty() {
            return;
        }
        let deadline = entry
            .stop_deadline()
            .unwrap_or_else(|| tokio::time::Instant::now() + settings.grace_period(entry, None));
        while let Some((idx, stop, task)) = self.running.pop() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            tracing::info!(pod = %entry.key(), container = idx, grace = ?left, "stopping sidecar");
            stop.send_replace(Some(left));
            let _ = task.await;
        }
    }
}

/// After a restart, a container about to be started may in fact be running already: its start
/// was not yet on disk when procnode stopped. Its supervisor answers at the name that run would
/// have; adopt it instead of starting a second copy.
fn adopt_unrecorded(
    entry: &PodEntry,
    idx: usize,
    how: container::Begin,
    settings: &Settings,
) -> container::Begin {
    let restart = match how {
        container::Begin::Fresh => false,
        container::Begin::Restart => true,
        other => return other,
    };
    if !settings.supervise {
        return how;
    }
    let run = entry.update_container(idx, |c| c.restart_count.max(0) as u64 + u64::from(restart));
    // That run's, or a later one's (a status record that was lost or set aside counted no
    // restarts): the latest run whose supervisor answers.
    let pod_part = StateLayout::supervisor_pod_part(entry.key(), entry.uid());
    let mut runs: Vec<u64> = settings
        .layout
        .supervisor_sockets(&pod_part)
        .into_iter()
        .filter(|(i, r, _)| *i == idx && *r >= run)
        .map(|(_, r, _)| r)
        .collect();
    runs.sort_unstable_by(|a, b| b.cmp(a));
    let found = runs
        .into_iter()
        .map(|r| (r, settings.supervisor_name(entry, idx, r)))
        .find(|(_, name)| {
            shim::address(name)
                .and_then(|addr| std::os::unix::net::UnixStream::connect_addr(&addr))
                .is_ok()
        });
    tracing::debug!(pod = %entry.key(), container = idx, found = ?found, "looking for an unrecorded supervisor");
    let Some((run, name)) = found else {
        return how;
    };
    entry.update_container(idx, |c| {
        c.restart_count = run as i32;
        c.supervisor = Some(name.clone());
    });
    container::Begin::Resume(name)
}

/// The pod worker's last step: record the final state, then let a waiting delete proceed
/// (which removes the record; saving after that would bring it back).
pub(super) async fn finish(entry: &PodEntry, settings: &Settings) {
    // Every exit was already recorded (durably) by its container task.
    records::save_status(entry, settings, false).await;
    entry.mark_done();
}
