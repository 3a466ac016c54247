//! One pod's control block ([`PodEntry`]): its identity, the spec it runs, its observed
//! state, its containers' logs and the signals its tasks wait on. Every field is private: a
//! change of state and its notification are one method, so no caller can forget one.
//!
//! Locks are `std::sync` ones: every critical section is a few field updates, never an
//! `.await`, so an async mutex would only add cost.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;

use super::status::{ContainerStatus, PodState};
use super::validate::NewPod;
pub use super::validate::PodKey;
use crate::logs::{ContainerLogs, LogConfig, LogSlot};

/// One container's spec, holding the pod version it belongs to.
pub struct ContainerSpec {
    pod: Arc<Pod>,
    idx: usize,
}

impl std::ops::Deref for ContainerSpec {
    type Target = k8s_openapi::api::core::v1::Container;

    fn deref(&self) -> &Self::Target {
        let spec = self.pod.spec.as_ref().expect("validated pods have a spec");
        let init = spec.init_containers.as_deref().unwrap_or_default();
        init.get(self.idx)
            .unwrap_or_else(|| &spec.containers[self.idx - init.len()])
    }
}

/// One pod the runtime holds.
pub struct PodEntry {
    key: PodKey,
    uid: String,
    /// The pod's own uid and gid on the host (procnode as root), from `--pod-uid-range`.
    pod_id: Option<u32>,
    /// The spec the runtime runs: as created, then as updated (see [`PodEntry::pod`]).
    pod: std::sync::RwLock<Arc<Pod>>,
    /// The JSON as last received (create or update), without status.
    raw: Mutex<Arc<str>>,
    state: Mutex<PodState>,
    /// Logs of init containers, then app containers, in spec order.
    logs: Box<[Arc<LogSlot>]>,
    stop: watch::Sender<Option<Duration>>,
    /// When the first stop request's grace period ends.
    stop_deadline: std::sync::OnceLock<tokio::time::Instant>,
    done: watch::Sender<bool>,
    /// Where a delete is: stays in the store until its record and directories are gone.
    removal: watch::Sender<Removal>,
    /// Serialises writes of this pod's status record.
    save_lock: tokio::sync::Mutex<()>,
    /// Serialises writes of this pod's pod record (create, update) with its removal: a create
    /// writes it while its first container already starts.
    pod_record_lock: tokio::sync::Mutex<()>,
    /// The pod's volumes, once prepared (before its first container starts).
    volumes: std::sync::OnceLock<super::volumes::PodVolumes>,
    /// Bumped on every accepted update of the spec.
    generation: watch::Sender<u64>,
    /// Bumped whenever the observed state may have changed (for front ends that push status).
    status_version: watch::Sender<u64>,
    /// Per container: bumped when an update asks for its running process to be restarted.
    restarts: Box<[watch::Sender<u64>]>,
    /// What happened that the status does not show (a failed probe, a failed hook), for a front
    /// end that records events; kept only once one asked ([`PodEntry::take_notes`]).
    notes: Mutex<Option<std::collections::VecDeque<Note>>>,
    /// Per container: the current run's stdin, while it runs with one (`kubectl attach`).
    stdin_points: Box<[Mutex<Option<super::attach::StdinPoint>>]>,
}

/// How far a pod's delete has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    None,
    /// Stopping, then removing its record and directories; still in the store.
    Deleting,
    /// Out of the store, nothing of it left on disk.
    Gone,
}

/// Something that happened to a container that its status does not show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// `spec.containers{NAME}` or `spec.initContainers{NAME}`.
    pub field_path: String,
    pub container: String,
    pub what: Happening,
}

/// What a [`Note`] says happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happening {
    /// One probe failed (`message`: why).
    ProbeFailed {
        probe: ProbeKind,
        message: String,
    },
    /// A liveness or startup probe failed often enough: the run is being stopped.
    KilledByProbe {
        probe: ProbeKind,
    },
    PostStartHookFailed(String),
    PreStopHookFailed(String),
    /// With `--pod-root host`, these volume mounts have no mount point on the host: the
    /// container finds them only through the links in its working directory and the
    /// `PROCNODE_VOLUME_*` variables.
    VolumesNotMounted(Vec<String>),
}

/// A container's startup, liveness or readiness probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    /// As Kubernetes names it in messages: `Liveness`, `Readiness`, `Startup`.
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }
}

/// How Kubernetes names a container inside its pod (an event's `fieldPath`):
/// `spec.initContainers{NAME}` or `spec.containers{NAME}`.
pub fn field_path(init: bool, name: &str) -> String {
    let list = if init { "initContainers" } else { "containers" };
    format!("spec.{list}{{{name}}}")
}

/// Notes kept per pod until a front end takes them; older ones are dropped past this.
const NOTES_KEPT: usize = 8;

impl PodEntry {
    /// `log_dir`: the pod's directory for on-disk logs (one subdirectory per container).
    pub(super) fn new(
        new: NewPod,
        state: PodState,
        logs: &LogConfig,
        log_dir: Option<std::path::PathBuf>,
        pod_id: Option<u32>,
    ) -> PodEntry {
        let n_containers = state.init.len() + state.containers.len();
        let slots = state
            .init
            .iter()
            .chain(state.containers.iter())
            .map(|c| {
                let dir = log_dir.as_ref().map(|d| d.join(&c.name));
                Arc::new(LogSlot::new(ContainerLogs::new(logs, dir)))
            })
            .collect();
        PodEntry {
            key: new.key,
            uid: new.uid,
            pod_id,
            pod: std::sync::RwLock::new(Arc::new(new.pod)),
            raw: Mutex::new(Arc::from(new.raw)),
            state: Mutex::new(state),
            logs: slots,
            stop: watch::channel(None).0,
            stop_deadline: std::sync::OnceLock::new(),
            done: watch::channel(false).0,
            removal: watch::channel(Removal::None).0,
            save_lock: tokio::sync::Mutex::new(()),
            pod_record_lock: tokio::sync::Mutex::new(()),
            volumes: std::sync::OnceLock::new(),
            generation: watch::channel(0).0,
            status_version: watch::channel(0).0,
            restarts: (0..n_containers).map(|_| watch::channel(0).0).collect(),
            notes: Mutex::new(None),
            stdin_points: (0..n_containers).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Container `idx`'s stdin for attaching clients, while its run has one.
    pub(super) fn stdin_point(&self, idx: usize) -> Option<super::attach::StdinPoint> {
        self.stdin_points[idx]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Publishes (or withdraws) container `idx`'s stdin.
    pub(super) fn set_stdin_point(&self, idx: usize, point: Option<super::attach::StdinPoint>) {
        *self.stdin_points[idx]
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = point;
    }

    /// Notes what happened to container `idx`, for [`PodEntry::take_notes`]; does nothing
    /// until a front end took notes once, so a pod nobody records events for keeps none.
    pub(super) fn note(&self, idx: usize, what: Happening) {
        {
            // (The only place that holds both locks: notes, then state.)
            let mut notes = self.notes.lock().expect("notes lock");
            let Some(notes) = notes.as_mut() else {
                return;
            };
            let (field_path, container) = {
                let st = self.state.lock().expect("state lock");
                let name = st.container(idx).name.clone();
                (field_path(idx < st.init.len(), &name), name)
            };
            if notes.len() >= NOTES_KEPT {
                notes.pop_front();
            }
            notes.push_back(Note {
                field_path,
                container,
                what,
            });
        }
        self.status_changed();
    }

    /// The notes since the last call (and, from the first call on, notes are kept).
    pub fn take_notes(&self) -> Vec<Note> {
        let mut notes = self.notes.lock().expect("notes lock");
        notes
            .get_or_insert_with(Default::default)
            .drain(..)
            .collect()
    }

    /// The pod as the runtime runs it now (the latest accepted update).
    pub fn pod(&self) -> Arc<Pod> {
        self.pod.read().expect("pod lock").clone()
    }

    /// Replaces the pod the runtime runs and the JSON getPod answers with (an accepted
    /// update, recorded on disk first).
    pub(super) fn set_pod(&self, pod: Pod, raw: String) {
        *self.raw.lock().expect("raw lock") = Arc::from(raw);
        *self.pod.write().expect("pod lock") = Arc::new(pod);
        self.generation.send_modify(|g| *g += 1);
    }

    /// The pod's namespace and name.
    pub fn key(&self) -> &PodKey {
        &self.key
    }

    /// `metadata.uid` (every pod has one: a pod created without gets a generated one).
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// The pod's own uid and gid on the host, when procnode gives pods their own.
    pub fn pod_id(&self) -> Option<u32> {
        self.pod_id
    }

    /// The pod's JSON as last received (create or update), compact, without `status`: what
    /// the web API's getPod splices the live status into.
    pub fn raw(&self) -> Arc<str> {
        self.raw.lock().expect("raw lock").clone()
    }

    /// The log slot of container `idx` (init containers first, then app containers).
    pub fn log(&self, idx: usize) -> &Arc<LogSlot> {
        &self.logs[idx]
    }

    /// Every container's log slot, in the order of [`PodEntry::log`].
    pub fn logs(&self) -> &[Arc<LogSlot>] {
        &self.logs
    }

    /// Reads the observed state (under its lock: keep `f` short, never block in it).
    pub fn read_state<R>(&self, f: impl FnOnce(&PodState) -> R) -> R {
        f(&self.state.lock().expect("state lock"))
    }

    /// The pod's phase as the kubelet computes it.
    pub fn phase(&self) -> super::status::Phase {
        self.read_state(|st| st.phase())
    }

    /// Applies `f` to the observed state, re-derives phase and conditions and tells whoever
    /// follows [`PodEntry::status_changes`]: a change and its notification are one call.
    pub(super) fn update_state<R>(&self, f: impl FnOnce(&mut PodState) -> R) -> R {
        let r = {
            let mut st = self.state.lock().expect("state lock");
            let r = f(&mut st);
            st.refresh(k8s_openapi::jiff::Timestamp::now());
            r
        };
        self.status_changed();
        r
    }

    /// The pod's volumes, once they are prepared.
    pub(super) fn volumes(&self) -> Option<&super::volumes::PodVolumes> {
        self.volumes.get()
    }

    /// Keeps the pod's prepared volumes (the first preparation wins).
    pub(super) fn set_volumes(&self, volumes: super::volumes::PodVolumes) {
        let _ = self.volumes.set(volumes);
    }

    /// Waits for this pod's turn to write its status record (one writer at a time).
    pub(super) async fn record_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.save_lock.lock().await
    }

    /// Waits for this pod's turn to write or remove its pod record.
    pub(super) async fn pod_record_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.pod_record_lock.lock().await
    }

    /// Changes with every accepted update of the spec.
    pub fn spec_changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Asks for the running process of container `idx` to be restarted (its definition
    /// changed).
    pub(super) fn request_restart(&self, idx: usize) {
        self.restarts[idx].send_modify(|g| *g += 1);
    }

    /// Changes whenever a restart of container `idx` is requested.
    pub fn restart_requests(&self, idx: usize) -> watch::Receiver<u64> {
        self.restarts[idx].subscribe()
    }

    /// The spec of container `idx` (init containers first, then app containers), as it is now.
    pub fn container_spec(&self, idx: usize) -> ContainerSpec {
        ContainerSpec {
            pod: self.pod(),
            idx,
        }
    }

    /// Applies `f` to the status of container `idx`, as [`PodEntry::update_state`] does.
    pub(super) fn update_container<R>(
        &self,
        idx: usize,
        f: impl FnOnce(&mut ContainerStatus) -> R,
    ) -> R {
        self.update_state(|st| f(st.container_mut(idx)))
    }

    /// Fails the pod with `reason` and `message` (the kubelet's pod-level failures: a deadline,
    /// an eviction, volumes that cannot be set up), unless `keep_terminal` and it has already
    /// ended. Returns whether it was failed.
    pub(super) fn fail(&self, reason: &str, message: String, keep_terminal: bool) -> bool {
        self.update_state(|st| {
            if keep_terminal && st.phase().is_terminal() {
                return false;
            }
            st.failure = Some((reason.to_string(), message));
            true
        })
    }

    /// Tells whoever follows [`PodEntry::status_changes`] that the state may have changed.
    fn status_changed(&self) {
        self.status_version.send_modify(|v| *v += 1);
    }

    /// Changes whenever the pod's observed state may have changed.
    pub fn status_changes(&self) -> watch::Receiver<u64> {
        self.status_version.subscribe()
    }

    /// Index into `logs` of the container called `name`.
    pub fn container_index(&self, name: &str) -> Option<usize> {
        let st = self.state.lock().expect("state lock");
        st.init
            .iter()
            .chain(st.containers.iter())
            .position(|c| c.name == name)
    }

    /// The pod's status as Kubernetes shows it.
    pub fn status(&self) -> k8s_openapi::api::core::v1::PodStatus {
        self.state.lock().expect("state lock").to_k8s()
    }

    /// Asks the pod's worker to stop every container within `grace`. The first request wins.
    pub(super) fn request_stop(&self, grace: Duration) {
        self.stop.send_if_modified(|slot| {
            if slot.is_none() {
                *slot = Some(grace);
                let _ = self.stop_deadline.set(tokio::time::Instant::now() + grace);
                true
            } else {
                false
            }
        });
    }

    /// When the grace period of a stop request ends, once one was made.
    pub(super) fn stop_deadline(&self) -> Option<tokio::time::Instant> {
        self.stop_deadline.get().copied()
    }

    pub fn stop_receiver(&self) -> watch::Receiver<Option<Duration>> {
        self.stop.subscribe()
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.borrow().is_some()
    }

    /// Marks the worker finished: no process of this pod is left, so no container will write
    /// again (followers of containers that never ran stop too).
    pub(super) fn mark_done(&self) {
        for slot in self.logs.iter() {
            slot.update(|l| l.finish());
        }
        self.done.send_replace(true);
        self.status_changed();
    }

    /// Waits until the worker has finished.
    /// Whether the pod's worker has finished (no process of the pod is left).
    pub fn is_done(&self) -> bool {
        *self.done.borrow()
    }

    pub async fn wait_done(&self) {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Marks the pod as being deleted (a create of the same pod waits for the delete).
    pub(super) fn begin_removal(&self) {
        self.removal.send_if_modified(|r| {
            let first = *r == Removal::None;
            if first {
                *r = Removal::Deleting;
            }
            first
        });
    }

    pub fn is_being_removed(&self) -> bool {
        *self.removal.borrow() != Removal::None
    }

    /// Marks the delete as complete: the pod is out of the store and off the disk.
    pub(super) fn mark_gone(&self) {
        self.removal.send_replace(Removal::Gone);
    }

    /// Waits until a delete that has begun is complete.
    pub async fn wait_gone(&self) {
        let mut rx = self.removal.subscribe();
        let _ = rx.wait_for(|r| *r == Removal::Gone).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> NewPod {
        NewPod::from_json(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn notes_are_kept_only_once_asked_for_and_bounded() {
        let new = parse(serde_json::json!({
            "metadata": {"name": "a", "uid": "u"},
            "spec": {"initContainers": [{"name": "setup", "command": ["true"]}],
                     "containers": [{"name": "main", "command": ["true"]}]}
        }));
        let state = PodState::new(
            new.restart_policy,
            vec![ContainerStatus::new("setup", "", "PodInitializing")],
            vec![ContainerStatus::new("main", "", "PodInitializing")],
            String::new(),
            "BestEffort",
            k8s_openapi::jiff::Timestamp::now(),
        );
        let logs = LogConfig {
            per_container: 1024,
            budget: Arc::new(crate::logs::LogBudget::new(1 << 20)),
            files: None,
        };
        let entry = PodEntry::new(new, state, &logs, None, None);
        let changes = entry.status_changes();
        let failed = |m: String| Happening::ProbeFailed {
            probe: ProbeKind::Liveness,
            message: m,
        };
        entry.note(1, failed("dropped: nobody asked yet".into()));
        assert!(entry.take_notes().is_empty());
        entry.note(0, Happening::PostStartHookFailed("hook".into()));
        for i in 0..NOTES_KEPT + 2 {
            entry.note(1, failed(format!("failure {i}")));
        }
        assert!(
            changes.has_changed().unwrap(),
            "a note wakes status pushers"
        );
        let notes = entry.take_notes();
        assert_eq!(notes.len(), NOTES_KEPT, "the oldest are dropped");
        assert_eq!(notes[0].what, failed("failure 2".into()));
        assert_eq!(notes[0].field_path, "spec.containers{main}");
        assert_eq!(notes[0].container, "main");
        assert!(entry.take_notes().is_empty());
        entry.note(0, Happening::PreStopHookFailed("init".into()));
        assert_eq!(
            entry.take_notes()[0].field_path,
            "spec.initContainers{setup}"
        );
    }
}
