//! The process runtime: turns stored pods into supervised processes.
//!
//! Tasks: one *pod worker* per pod runs its init containers one at a time, in order, each to
//! success, then starts one *container task* per app container ([`container::supervise`]) and
//! waits for them. A container task is the only owner of its process. Stopping a pod is one
//! message: [`PodEntry::request_stop`] with a grace period, seen by every container task of the
//! pod; the worker marks the pod done once every task has returned, i.e. once no process of the
//! pod is left.
//!
//! This module never imports axum: the HTTP layer calls it, never the other way round.

pub mod attach;
mod backoff;
pub mod cgroup;
mod container;
pub mod env;
pub mod exec;
mod hash;
pub mod layout;
mod pod;
mod ports;
pub mod probe;
pub mod process;
pub mod records;
mod restore;
mod rootfs;
pub mod safepath;
mod settings;
pub mod shim;
pub mod status;
mod store;
mod supervisor;
pub mod users;
mod validate;
pub mod volumes;
mod watchers;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tokio::task::JoinSet;

pub use env::{image_executable, NodeFacts};
pub use layout::StateLayout;
pub use pod::{field_path, ContainerSpec, Happening, Note, PodEntry, PodKey};
pub use ports::PortTarget;
pub use settings::{Budget, Settings, Usage};
use status::{reason, ContainerStatus, PodState};
use store::Store;
pub use validate::{generate_uid, NewPod, PodError};

use crate::logs::{LogQuery, LogSlot};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    InvalidPod(#[from] PodError),
    #[error("pod {0} not found")]
    PodNotFound(PodKey),
    #[error("container {container:?} not found in pod {key}")]
    ContainerNotFound { key: PodKey, container: String },
    #[error("pod {0} is not running")]
    PodNotRunning(PodKey),
    #[error("container {container:?} in pod {key} has no stdin to attach to (stdin: true in its spec, and with stdinOnce only the first client gets it)")]
    NoStdin { key: PodKey, container: String },
    #[error("container {container:?} in pod {key} is not running")]
    ContainerNotRunning { key: PodKey, container: String },
    #[error("previous terminated container {container:?} in pod {key} not found")]
    NoPreviousRun { key: PodKey, container: String },
    #[error("cannot record pod {key} in the state directory: {source}")]
    Storage { key: PodKey, source: std::io::Error },
}

/// The result of a create: a new pod, or the same pod (same uid) already there.
pub enum Created {
    New(Arc<PodEntry>),
    Existing(Arc<PodEntry>),
}

pub struct Runtime {
    store: Store,
    settings: Arc<Settings>,
}

impl Runtime {
    pub fn new(settings: Settings) -> Runtime {
        Runtime {
            store: Store::default(),
            settings: Arc::new(settings),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn get(&self, key: &PodKey) -> Result<Arc<PodEntry>, RuntimeError> {
        self.store
            .get(key)
            .ok_or_else(|| RuntimeError::PodNotFound(key.clone()))
    }

    pub fn list(&self) -> Vec<Arc<PodEntry>> {
        self.store.list()
    }

    /// Stores and starts a pod. Idempotent: the same namespace/name/uid again is the same pod.
    /// A different uid under the same name replaces the old pod (stopped with its grace period
    /// first), as happens when a pod is deleted and re-created faster than the delete arrives.
    pub async fn create(&self, mut new: NewPod) -> Result<Created, RuntimeError> {
        let spec = new.pod.spec.as_ref().expect("validated");
        let n = spec.containers.len() + spec.init_containers.as_ref().map_or(0, Vec::len);
        if n > self.settings.max_containers_per_pod {
            return Err(PodError::Invalid {
                field: "spec.containers".into(),
                message: format!(
                    "{n} containers (init containers included), more than the {} a pod may have here (--max-containers-per-pod)",
                    self.settings.max_containers_per_pod
                ),
            }
            .into());
        }
        'create: loop {
            if let Some(existing) = self.store.get(&new.key) {
                // A pod without a uid is the pod of that name (as for a repeated create).
                if existing.uid() == new.uid || new.uid.is_empty() {
                    if existing.is_being_removed() {
                        // A create of a pod whose delete is in flight waits for the delete,
                        // then creates it anew (never an answer for a pod about to vanish).
                        existing.wait_gone().await;
                        continue 'create;
                    }
                    return Ok(Created::Existing(existing));
                }
            }
            if new.uid.is_empty() {
                new.set_uid(&generate_uid());
            }
            let refusal = self.admission(&new);
            let admitted = refusal.is_none();
            let pod_id = self.claim_pod_id(None, &new);
            let entry = Arc::new(self.new_entry(new.clone(), refusal, pod_id));
            // The record is written while the pod starts (its write and fsync are a good part
            // of a start), and the answer waits for both. A delete or update of the pod waits
            // for it. Killed before the record is in place, procnode never answered, and the
            // next one stops the container as no recorded pod's.
            let record_turn = entry.pod_record_turn().await;
            loop {
                match self.store.insert_new(entry.clone()) {
                    Ok(()) => break,
                    Err(existing) if existing.uid() == entry.uid() => {
                        if let Some(id) = entry.pod_id() {
                            self.settings.pod_ids.release(id);
                        }
                        if existing.is_being_removed() {
                            // Its delete removes the record just written: write it again.
                            existing.wait_gone().await;
                            continue 'create;
                        }
                        return Ok(Created::Existing(existing));
                    }
                    Err(old) => self.stop_and_forget(&old, None).await,
                }
            }
            if admitted {
                tokio::spawn(worker::run_pod(entry.clone(), self.settings.clone(), false));
            }
            let saved = self.save_pod(&new.key, &new.uid, &new.raw).await;
            drop(record_turn);
            if let Err(e) = saved {
                // Nothing of it may stay: stop what started, remove what was written.
                self.stop_and_forget(&entry, Some(Duration::ZERO)).await;
                return Err(e);
            }
            if admitted {
                tracing::info!(pod = %entry.key(), uid = %entry.uid(), "pod created");
            } else {
                let why = entry.read_state(|st| st.failure.clone());
                tracing::warn!(pod = %entry.key(), uid = %entry.uid(), reason = ?why.map(|w| w.0), "pod refused admission");
                worker::finish(&entry, &self.settings).await;
            }
            return Ok(Created::New(entry));
        }
    }

    /// Writes the pod JSON record (fsync'd) before a create or update is acknowledged.
    async fn save_pod(&self, key: &PodKey, uid: &str, raw: &str) -> Result<(), RuntimeError> {
        let dir = self.settings.layout.record_base(key, uid);
        let raw = raw.to_string();
        let began = std::time::Instant::now();
        let saved = tokio::task::spawn_blocking(move || records::save_pod(&dir, &raw))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|source| RuntimeError::Storage {
                key: key.clone(),
                source,
            });
        self.settings
            .metrics
            .start_step(crate::metrics::StartStep::Record, began.elapsed());
        saved
    }

    /// The pod's own uid on the host: as recorded, or a free one (procnode as root only). A free
    /// one is checked against the host's user database, which may be a directory service on
    /// the network: the lookup runs where blocking is allowed, without a hand-off to another
    /// thread on the create's own path (see [`blocking_here`]).
    fn claim_pod_id(&self, recorded: Option<u32>, new: &NewPod) -> Option<u32> {
        if self.settings.users.own_uid != 0 {
            return None;
        }
        let seed = format!("{}/{}/{}", new.key.namespace, new.key.name, new.uid);
        blocking_here(|| self.settings.pod_ids.claim(recorded, &seed))
    }

    /// Whether the node can take `new`, as the kubelet admits a pod: `None`, or the reason
    /// and message of the refusal (the pod is kept, Failed with them). Besides `--max-pods`,
    /// the containers of the pods still running must fit procnode's descriptor budget (each
    /// holds its supervisor's connection, and its stdin when it has one) and the host's pid
    /// space (each is at least a supervisor and a process).
    fn admission(&self, new: &NewPod) -> Option<(String, String)> {
        let pods = self.store.list();
        if pods.len() >= self.settings.max_pods as usize {
            // The kubelet's admission failure when the node is full.
            return Some((
                "OutOfpods".into(),
                format!(
                    "Node didn't have enough resource: pods, requested: 1, used: {}, capacity: {}",
                    pods.len(),
                    self.settings.max_pods
                ),
            ));
        }
        let usage = |spec: Option<&k8s_openapi::api::core::v1::PodSpec>| {
            let all = spec.into_iter().flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            });
            all.map(|c| Usage {
                containers: 1,
                consoles: usize::from(container::console_of(c) != process::Console::None),
            })
            .sum::<Usage>()
        };
        let wanted = usage(new.pod.spec.as_ref());
        let running = pods
            .iter()
            .filter(|e| !e.is_done())
            .map(|e| usage(e.pod().spec.as_ref()))
            .sum();
        self.settings.budget.refusal(running, wanted)
    }

    fn new_entry(
        &self,
        new: NewPod,
        refusal: Option<(String, String)>,
        pod_id: Option<u32>,
    ) -> PodEntry {
        let spec = new.pod.spec.as_ref().expect("validated");
        let init: Vec<ContainerStatus> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| {
                let mut status = ContainerStatus::new(
                    &c.name,
                    c.image.as_deref().unwrap_or_default(),
                    reason::POD_INITIALIZING,
                );
                status.sidecar = validate::is_sidecar(c);
                status
            })
            .collect();
        let app_reason = if init.is_empty() {
            reason::CONTAINER_CREATING
        } else {
            reason::POD_INITIALIZING
        };
        let containers = spec
            .containers
            .iter()
            .map(|c| {
                ContainerStatus::new(&c.name, c.image.as_deref().unwrap_or_default(), app_reason)
            })
            .collect();
        let now = Timestamp::now();
        let mut state = PodState::new(
            new.restart_policy,
            init,
            containers,
            self.settings.node.host_ip.clone(),
            status::qos_class(spec),
            now,
        );
        if let Some(failure) = refusal {
            state.failure = Some(failure);
            state.refresh(now);
        }
        let log_dir = self.settings.pod_log_dir(&new.key, &new.uid);
        PodEntry::new(new, state, &self.settings.logs, log_dir, pod_id)
    }

    /// Records a new version of a pod (returned by getPod from now on) and applies what
    /// Kubernetes lets change on a running pod, as the kubelet does: a container whose image
    /// changed is restarted (at once, whatever the restart policy); a new
    /// `activeDeadlineSeconds` or `terminationGracePeriodSeconds` applies from now on; changed
    /// resources are applied to the cgroups in place; downwardAPI volume files are rewritten.
    /// Other processes keep running. Adding, removing or renaming containers is refused (400),
    /// as the API server refuses it.
    pub async fn update(&self, mut new: NewPod) -> Result<Arc<PodEntry>, RuntimeError> {
        let entry = self.get(&new.key)?;
        if new.uid.is_empty() {
            // An update without a uid is one of the pod of that name.
            new.set_uid(entry.uid());
        }
        if entry.uid() != new.uid {
            return Err(RuntimeError::PodNotFound(new.key));
        }
        let old = entry.pod();
        let names = |p: &k8s_openapi::api::core::v1::Pod| -> Vec<String> {
            let spec = p.spec.as_ref().expect("validated");
            spec.init_containers
                .iter()
                .flatten()
                .chain(spec.containers.iter())
                .map(|c| c.name.clone())
                .collect()
        };
        let (had, got) = (names(&old), names(&new.pod));
        if had != got {
            return Err(PodError::ContainersChanged { had, got }.into());
        }
        {
            let _turn = entry.pod_record_turn().await;
            if entry.is_being_removed() {
                return Err(RuntimeError::PodNotFound(new.key));
            }
            self.save_pod(&new.key, &new.uid, &new.raw).await?;
        }
        let containers =
            |p: &k8s_openapi::api::core::v1::Pod| -> Vec<k8s_openapi::api::core::v1::Container> {
                let spec = p.spec.as_ref().expect("validated");
                spec.init_containers
                    .iter()
                    .flatten()
                    .chain(spec.containers.iter())
                    .cloned()
                    .collect()
            };
        let (before, after) = (containers(&old), containers(&new.pod));
        let labels_changed = old.metadata.labels != new.pod.metadata.labels
            || old.metadata.annotations != new.pod.metadata.annotations;
        let had_deadline = worker::has_deadline(&entry);
        entry.set_pod(new.pod, new.raw);
        if !had_deadline && worker::has_deadline(&entry) && !entry.is_done() {
            // A deadline set by this update: watch it from now on.
            tokio::spawn(watchers::enforce_deadline(
                entry.clone(),
                self.settings.clone(),
            ));
        }
        let mut resized = false;
        for (idx, (b, a)) in before.iter().zip(after.iter()).enumerate() {
            if b.image != a.image {
                entry.request_restart(idx);
            }
            resized |= b.resources != a.resources;
        }
        if resized || labels_changed {
            let (e, s) = (entry.clone(), self.settings.clone());
            let _ = tokio::task::spawn_blocking(move || {
                let pod = e.pod();
                let spec = pod.spec.as_ref().expect("validated");
                if resized {
                    let limits: Vec<cgroup::Limits> =
                        spec.containers.iter().map(container::limits).collect();
                    let pod_cgroup = s.pod_cgroup(&e);
                    if let Err(err) = s.cgroups.create_pod(&pod_cgroup, &limits) {
                        tracing::warn!(pod = %e.key(), error = %err, "cannot resize the pod's cgroup");
                    }
                    for c in &spec.containers {
                        if let Err(err) = s.cgroups.resize_container(&pod_cgroup, &c.name, &container::limits(c)) {
                            tracing::warn!(pod = %e.key(), container = %c.name, error = %err, "cannot resize a container's cgroup");
                        }
                    }
                }
                if labels_changed {
                    watchers::refresh_volumes(&e, &s);
                }
            })
            .await;
        }
        Ok(entry)
    }

    /// Stops every process of the pod (TERM, grace period, KILL) and forgets the pod.
    /// Returns the pod as it was last seen, or `None` if there was no such pod.
    pub async fn delete(&self, key: &PodKey, grace: Option<Duration>) -> Option<Arc<PodEntry>> {
        let entry = self.store.get(key)?;
        self.stop_and_forget(&entry, grace).await;
        Some(entry)
    }

    /// Stops the pod, removes its record, directories and cgroups, then takes it out of the
    /// store (so that until then a create of the same pod waits, see [`Runtime::create`]).
    async fn stop_and_forget(&self, entry: &Arc<PodEntry>, grace: Option<Duration>) {
        entry.begin_removal();
        entry.request_stop(self.grace_for(entry, grace));
        entry.wait_done().await;
        // A create or update still writing the pod record finishes first (it would put the
        // record back after its removal).
        let _record_turn = entry.pod_record_turn().await;
        let layout = &self.settings.layout;
        let record = layout.record_base(entry.key(), entry.uid());
        let dirs = self.settings.pod_dirs(entry);
        let key = entry.key().clone();
        let cgroups = self.settings.cgroups.clone();
        let pod_cgroup = self.settings.pod_cgroup(entry);
        let layout = layout.clone();
        let sup_part = StateLayout::supervisor_pod_part(entry.key(), entry.uid());
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = cgroups.remove_pod(&pod_cgroup) {
                tracing::warn!(pod = %key, error = %e, "could not remove the pod's cgroup");
            }
            volumes::release(&dirs[0]);
            // Sockets of supervisors that were killed rather than released: the pod's own
            // directory of them.
            let _ = std::fs::remove_dir_all(layout.supervisor_dir(&sup_part));
            if let Err(e) = records::remove(&record) {
                tracing::warn!(pod = %key, error = %e, "could not remove pod record");
            }
            for dir in dirs {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(pod = %key, dir = %dir.display(), error = %e, "could not remove pod directory");
                    }
                }
            }
        })
        .await;
        // Only once its files are gone may another pod get its uid.
        if let Some(id) = entry.pod_id() {
            self.settings.pod_ids.release(id);
        }
        self.store.remove_if_same(entry);
        entry.mark_gone();
        tracing::info!(pod = %entry.key(), uid = %entry.uid(), "pod deleted");
    }

    fn grace_for(&self, entry: &PodEntry, requested: Option<Duration>) -> Duration {
        self.settings.grace_period(entry, requested)
    }

    /// Pod `key` and the index of its container called `container`.
    fn container(
        &self,
        key: &PodKey,
        container: &str,
    ) -> Result<(Arc<PodEntry>, usize), RuntimeError> {
        let entry = self.get(key)?;
        let idx =
            entry
                .container_index(container)
                .ok_or_else(|| RuntimeError::ContainerNotFound {
                    key: key.clone(),
                    container: container.to_string(),
                })?;
        Ok((entry, idx))
    }

    /// The log slot of one container.
    pub fn log_slot(&self, key: &PodKey, container: &str) -> Result<Arc<LogSlot>, RuntimeError> {
        let (entry, idx) = self.container(key, container)?;
        Ok(entry.log(idx).clone())
    }

    /// The output of one container's current run (or, with `previous`, of the run before), as
    /// `query` selects it.
    pub fn logs(
        &self,
        key: &PodKey,
        container: &str,
        query: &LogQuery,
        previous: bool,
    ) -> Result<Vec<u8>, RuntimeError> {
        let slot = self.log_slot(key, container)?;
        let logs = slot.logs.lock().expect("logs lock");
        if !previous {
            return Ok(logs.current.read(query));
        }
        logs.previous
            .as_ref()
            .map(|b| b.read(query))
            .ok_or_else(|| RuntimeError::NoPreviousRun {
                key: key.clone(),
                container: container.to_string(),
            })
    }

    /// Removes procnode's cgroup parent (and the supervisors' cgroup) where no pod or
    /// supervisor is left in it, for a procnode that leaves with no pod. The next start makes
    /// it again.
    pub async fn remove_empty_cgroup_parent(&self) {
        let cgroups = self.settings.cgroups.clone();
        let _ = tokio::task::spawn_blocking(move || cgroups.remove_parent_if_empty()).await;
    }

    /// Stops every pod with its grace period and waits until no pod process is left; then
    /// removes the (empty) pod cgroups, which the next start makes again.
    pub async fn shutdown(&self) {
        let mut stops = JoinSet::new();
        let pods = self.store.list();
        for entry in &pods {
            entry.request_stop(self.grace_for(entry, None));
            let entry = entry.clone();
            stops.spawn(async move { entry.wait_done().await });
        }
        while stops.join_next().await.is_some() {}
        let names: Vec<String> = pods.iter().map(|e| self.settings.pod_cgroup(e)).collect();
        let cgroups = self.settings.cgroups.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for name in names {
                let _ = cgroups.remove_pod(&name);
            }
            cgroups.remove_parent_if_empty();
        })
        .await;
    }
}

/// Runs `f`, which may block, on the current thread: on a multi-threaded runtime the worker
/// first hands its other tasks to another thread (`block_in_place`), so that they go on while
/// `f` blocks and the caller does not wait for a thread to wake; elsewhere (a test's
/// single-threaded runtime, no runtime) it simply runs.
fn blocking_here<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
