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

mod backoff;
pub mod cgroup;
mod container;
pub mod env;
pub mod probe;
pub mod process;
pub mod safepath;
pub mod shim;
pub mod status;
mod supervisor;
pub mod users;
pub mod volumes;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tokio::task::JoinSet;

pub use env::{image_executable, NodeFacts};
use status::{reason, ContainerStatus, PodState, RestartPolicy};

use crate::config::{Config, DEFAULT_GRACE};
use crate::logs::{FileConfig, LogBudget, LogConfig, LogQuery, LogSlot};
use crate::store::{NewPod, PodEntry, PodError, PodKey, Store};

/// Runtime settings, fixed at start.
/// Descriptors procnode holds per running container: the supervisor's socket, the two output
/// pipes, the log file, and one to spare.
const FDS_PER_CONTAINER: u64 = 5;
/// Descriptors kept for everything else (listeners, connections, records, probes).
const FD_RESERVE: u64 = 256;
/// Pids per running container: its supervisor and its process.
const PIDS_PER_CONTAINER: u64 = 2;
/// Pids kept for the rest of the host.
const PID_RESERVE: u64 = 1024;

/// What procnode's process and the host can hold at most (see [`Runtime::admission`]).
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// procnode's RLIMIT_NOFILE (raised to its hard limit at start-up).
    pub open_files: u64,
    /// `kernel.pid_max`.
    pub pids: u64,
}

impl Budget {
    /// Raises RLIMIT_NOFILE to the hard limit (each running container holds a few of
    /// procnode's descriptors) and reads the host's pid space.
    pub fn of_this_process() -> Budget {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let open_files = match getrlimit(Resource::RLIMIT_NOFILE) {
            Ok((soft, hard)) if soft < hard => {
                match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                    Ok(()) => hard,
                    Err(_) => soft,
                }
            }
            Ok((soft, _)) => soft,
            Err(_) => 1024,
        };
        let pids = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(32_768);
        Budget { open_files, pids }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub state_dir: PathBuf,
    /// Counters and histograms for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Which users containers may run as.
    pub users: users::UserPolicy,
    /// The uids given to pods.
    pub pod_ids: Arc<users::PodIds>,
    /// Start each container under its own supervisor process (so it survives procnode).
    pub supervise: bool,
    /// The executable run as `EXE shim NAME` to supervise each container.
    pub shim_exe: PathBuf,
    pub logs: LogConfig,
    pub max_grace: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub max_pods: u32,
    pub node: NodeFacts,
    /// Pod and container cgroups, or why there are none.
    pub cgroups: Arc<cgroup::Cgroups>,
    pub volumes: volumes::VolumePolicy,
    pub volume_check_interval: Duration,
    /// Secret and ConfigMap contents, for a front end with API access (none in web mode).
    pub objects: Option<Arc<dyn volumes::ObjectSource>>,
    /// How often volumes filled from `objects` are refreshed.
    pub object_refresh_interval: Duration,
    /// Descriptors and pids pods may use (admission).
    pub budget: Budget,
    /// Containers (init containers included) a pod may have.
    pub max_containers_per_pod: usize,
    /// Container exits held (with their supervisors) until the state directory takes them;
    /// shared with the node, which reports DiskPressure meanwhile.
    pub unrecorded_exits: Arc<std::sync::atomic::AtomicUsize>,
}

impl Settings {
    pub fn from_config(
        config: &Config,
        node: NodeFacts,
        cgroups: Arc<cgroup::Cgroups>,
    ) -> Settings {
        Settings {
            state_dir: config.state_dir(),
            metrics: Arc::default(),
            users: users::UserPolicy {
                allowed: config.allowed_uids.clone(),
                allowed_gids: config.allowed_gids.clone(),
                default_user: config.default_uid,
                pod_range: config.pod_uid_range,
                own_uid: nix::unistd::geteuid().as_raw(),
            },
            pod_ids: Arc::new(users::PodIds::new(config.pod_uid_range)),
            supervise: config.supervisor == crate::config::SupervisorMode::Shim,
            shim_exe: config.shim_exe(),
            logs: LogConfig {
                per_container: config.log_buffer_bytes,
                budget: Arc::new(LogBudget::new(config.log_total_bytes)),
                files: config.log_files.then(|| FileConfig {
                    max_size: config.log_file_max_size.to_bytes().unwrap_or(u64::MAX),
                    max_files: config.log_file_max_files,
                }),
            },
            max_grace: config.max_grace_period,
            backoff_initial: config.backoff_initial,
            backoff_max: config.backoff_max,
            max_pods: config.max_pods,
            node,
            cgroups,
            volumes: volumes::VolumePolicy {
                host_path_prefixes: config.host_path_prefixes.clone(),
                can_mount: nix::unistd::geteuid().is_root(),
            },
            volume_check_interval: config.volume_check_interval,
            objects: None,
            object_refresh_interval: config.object_refresh_interval,
            unrecorded_exits: Default::default(),
            budget: Budget::of_this_process(),
            max_containers_per_pod: config.max_containers_per_pod as usize,
        }
    }

    /// The name of the pod's cgroup (the kubelet's `pod<UID>`).
    pub fn pod_cgroup(&self, entry: &PodEntry) -> String {
        format!("pod{}", entry.uid)
    }

    /// The pod's own directory: procnode's, not writable by the pod (so nothing in it can be
    /// swapped for a link), entered only by the pod's own group. It holds `volumes/` and
    /// `work/`.
    pub fn pod_dir(&self, entry: &PodEntry) -> PathBuf {
        self.state_dir
            .join("pods")
            .join(pod_dir_name(&entry.key, &entry.uid))
    }

    /// The pod's working directory (its containers' unless `workingDir` says otherwise).
    pub fn work_path(&self, entry: &PodEntry) -> PathBuf {
        self.pod_dir(entry).join("work")
    }

    /// Makes (if missing) and opens the pod directory, with its owner and mode set again (root,
    /// the pod's group, 0750). Blocking.
    pub fn open_pod_dir(&self, entry: &PodEntry) -> std::io::Result<safepath::Dir> {
        use safepath::{Dir, Links, Owner};
        // procnode's own directory (it may be a mount of its own: opened by path, not
        // beneath the state directory).
        let pods = match Dir::open_trusted(&self.state_dir.join("pods")) {
            Ok(pods) => pods,
            Err(_) => Dir::open_trusted(&self.state_dir)?.make_dirs(
                Path::new("pods"),
                Owner::mode(0o711),
                Links::None,
            )?,
        };
        let owner = match entry.pod_id {
            Some(gid) => Owner {
                mode: 0o750,
                ids: Some((self.users.own_uid, gid)),
            },
            None => Owner::mode(0o755),
        };
        let name = pod_dir_name(&entry.key, &entry.uid);
        let dir = pods.make_dirs(Path::new(&name), owner, Links::None)?;
        dir.set_owner(owner)?;
        Ok(dir)
    }

    /// Makes (if missing) and opens the pod's working directory, owned by `owner` (the
    /// container's uid and the pod's gid) and writable by the pod's group. Blocking.
    pub fn work_dir(
        &self,
        entry: &PodEntry,
        owner: Option<(u32, u32)>,
    ) -> std::io::Result<safepath::Dir> {
        use safepath::{Links, Owner};
        let owner = Owner {
            mode: 0o770,
            ids: owner,
        };
        let work = self
            .open_pod_dir(entry)?
            .make_dirs(Path::new("work"), owner, Links::None)?;
        work.set_owner(owner)?;
        Ok(work)
    }

    /// The name of the supervisor of run `run` of container `idx`: the path of its socket in
    /// `STATE_DIR/sup/` (procnode's alone, so no other user can take a name first), unique per
    /// pod, container and run.
    pub fn supervisor_name(&self, entry: &PodEntry, idx: usize, run: u64) -> String {
        format!(
            "{}{}-{idx}-{run}",
            supervisor_prefix(&self.state_dir),
            self.supervisor_pod_part(entry)
        )
    }

    fn supervisor_pod_part(&self, entry: &PodEntry) -> String {
        let id = format!("{}/{}/{}", entry.key.namespace, entry.key.name, entry.uid);
        format!("{:016x}", fnv1a(&id))
    }

    /// Where the pod's record files live (this path plus `.pod.json` / `.status.json`).
    pub fn record_base(&self, key: &PodKey, uid: &str) -> PathBuf {
        self.state_dir.join("records").join(pod_dir_name(key, uid))
    }

    /// Where the pod's log files go (one subdirectory per container), when they are enabled.
    pub fn pod_log_dir(&self, key: &PodKey, uid: &str) -> Option<PathBuf> {
        self.logs
            .files
            .map(|_| self.state_dir.join("logs").join(pod_dir_name(key, uid)))
    }
}

impl Settings {
    /// Writes the volumes of the spec `entry` runs into its pod directory. Blocking.
    fn prepare_volumes(
        &self,
        entry: &PodEntry,
    ) -> Result<volumes::PodVolumes, volumes::VolumeError> {
        let (pod, objects) = (entry.pod(), self.objects.as_deref());
        let pod_dir = self
            .open_pod_dir(entry)
            .map_err(|e| volumes::VolumeError::Setup {
                name: String::new(),
                message: format!("pod directory: {e}"),
            })?;
        volumes::prepare(
            &pod,
            &pod_dir,
            &self.volumes,
            &self.node,
            objects,
            entry.pod_id,
        )
    }

    /// [`Settings::prepare_volumes`] again for a running pod (changed labels, changed
    /// objects): a failure is logged, the pod keeps its files as they were. Blocking.
    fn refresh_volumes(&self, entry: &PodEntry) {
        if let Err(err) = self.prepare_volumes(entry) {
            tracing::warn!(pod = %entry.key, error = %err, "cannot refresh the pod's volumes");
        }
    }
}

/// What the names of every supervisor of the procnode using `state_dir` begin with (their
/// command line is `procnode shim NAME`).
pub fn supervisor_prefix(state_dir: &Path) -> String {
    format!("{}/", state_dir.join("sup").display())
}

/// The supervisor sockets in `sup_dir` of the pod whose name part is `pod_part` (see
/// [`Settings::supervisor_name`]): container index, run and path of each. Blocking.
fn supervisor_sockets(sup_dir: &Path, pod_part: &str) -> Vec<(usize, u64, PathBuf)> {
    std::fs::read_dir(sup_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (idx, run) = name
                .strip_prefix(pod_part)?
                .strip_prefix('-')?
                .split_once('-')?;
            Some((idx.parse().ok()?, run.parse().ok()?, e.path()))
        })
        .collect()
}

/// 64-bit FNV-1a: short, stable names from long paths.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn pod_dir_name(key: &PodKey, uid: &str) -> String {
    // Every pod gets a uid when it is created; only a record written by an older procnode
    // can lack one.
    let uid = if uid.is_empty() { "no-uid" } else { uid };
    format!("{}_{}_{}", key.namespace, key.name, uid)
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    InvalidPod(#[from] PodError),
    #[error("pod {0} not found")]
    PodNotFound(PodKey),
    #[error("container {container:?} not found in pod {key}")]
    ContainerNotFound { key: PodKey, container: String },
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

    /// Every pod with its running containers' process groups and cgroup figures, for the
    /// stats Summary. Blocking (reads cgroup files).
    pub fn stat_refs(&self) -> Vec<crate::node::stats::PodRef> {
        self.store
            .list()
            .iter()
            .map(|entry| {
                // What runs, under the lock; the cgroup files are read after it.
                let (start_time, running) = {
                    let state = entry.state.lock().expect("state lock");
                    let running: Vec<(String, Timestamp, i32)> = state
                        .init
                        .iter()
                        .chain(state.containers.iter())
                        .filter_map(|c| match (&c.state, c.pid) {
                            (status::ContainerState::Running { started_at }, Some(pgid)) => {
                                Some((c.name.clone(), *started_at, pgid))
                            }
                            _ => None,
                        })
                        .collect();
                    (state.start_time, running)
                };
                let pod_cgroup = self.settings.pod_cgroup(entry);
                let containers = running
                    .into_iter()
                    .map(
                        |(name, started_at, pgid)| crate::node::stats::ContainerRef {
                            cgroup: self.settings.cgroups.usage(&pod_cgroup, &name),
                            name,
                            started_at,
                            pgid,
                        },
                    )
                    .collect();
                crate::node::stats::PodRef {
                    name: entry.key.name.clone(),
                    namespace: entry.key.namespace.clone(),
                    uid: entry.uid.clone(),
                    start_time,
                    containers,
                }
            })
            .collect()
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
                if existing.uid == new.uid || new.uid.is_empty() {
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
                new.set_uid(&crate::store::generate_uid());
            }
            let refusal = self.admission(&new);
            let admitted = refusal.is_none();
            self.save_pod(&new.key, &new.uid, &new.raw).await?;
            let pod_id = self.claim_pod_id(None, &new);
            let entry = Arc::new(self.new_entry(new.clone(), refusal, pod_id));
            loop {
                match self.store.insert_new(entry.clone()) {
                    Ok(()) => break,
                    Err(existing) if existing.uid == entry.uid => {
                        if let Some(id) = entry.pod_id {
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
                tracing::info!(pod = %entry.key, uid = %entry.uid, "pod created");
                tokio::spawn(run_pod(entry.clone(), self.settings.clone(), false));
            } else {
                let why = entry.state.lock().expect("state lock").failure.clone();
                tracing::warn!(pod = %entry.key, uid = %entry.uid, reason = ?why.map(|w| w.0), "pod refused admission");
                finish(&entry, &self.settings).await;
            }
            return Ok(Created::New(entry));
        }
    }

    /// Writes the pod JSON record (fsync'd) before a create or update is acknowledged.
    async fn save_pod(&self, key: &PodKey, uid: &str, raw: &str) -> Result<(), RuntimeError> {
        let dir = self.settings.record_base(key, uid);
        let raw = raw.to_string();
        tokio::task::spawn_blocking(move || crate::persist::save_pod(&dir, &raw))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|source| RuntimeError::Storage {
                key: key.clone(),
                source,
            })
    }

    /// Brings back every pod recorded in the state directory: their JSON, their observed state,
    /// and the containers still running under their supervisors (re-attached; a container whose
    /// supervisor is gone is reported as such and restarted per its policy). Call before
    /// serving. Returns what could not be restored, for the caller to report.
    pub async fn restore(&self) -> Vec<String> {
        let records = self.settings.state_dir.join("records");
        let corrupt = self.settings.state_dir.join("corrupt");
        let (mut loaded, mut problems) =
            tokio::task::spawn_blocking(move || crate::persist::load_all(&records, &corrupt))
                .await
                .unwrap_or_default();
        // Newest first: of two records of one name (a create that replaced a pod with another
        // uid, cut short by a crash before the old record was removed), the newer one is kept.
        let written = |l: &crate::persist::Loaded| {
            std::fs::metadata(crate::persist::pod_file(&l.base))
                .and_then(|m| m.modified())
                .ok()
        };
        loaded.sort_by_cached_key(|l| std::cmp::Reverse(written(l)));
        // Recorded pod uids first, so that a pod without one cannot take another's.
        for id in loaded.iter().filter_map(|p| p.status.as_ref()?.pod_id) {
            self.settings.pod_ids.claim(Some(id), "");
        }
        for pod in loaded {
            let new = match NewPod::from_json(&pod.raw) {
                Ok(new) => new,
                Err(e) => {
                    problems.push(format!(
                        "pod record {} is not a valid pod: {e}",
                        crate::persist::pod_file(&pod.base).display()
                    ));
                    continue;
                }
            };
            let admitted = pod.status.as_ref().is_none_or(|s| s.failure.is_none());
            let recorded = pod.status.as_ref().and_then(|s| s.pod_id);
            let pod_id = self.claim_pod_id(recorded, &new);
            let entry = Arc::new(self.new_entry(new, None, pod_id));
            if let Some(saved) = pod.status {
                let runs: Vec<u64> = {
                    let mut st = entry.state.lock().expect("state lock");
                    st.start_time = saved.start_time;
                    st.failure = saved.failure;
                    for (c, s) in st.init.iter_mut().zip(saved.init) {
                        s.restore_into(c);
                    }
                    for (c, s) in st.containers.iter_mut().zip(saved.containers) {
                        s.restore_into(c);
                    }
                    st.refresh(Timestamp::now());
                    st.init
                        .iter()
                        .chain(st.containers.iter())
                        .map(|c| c.restart_count.max(0) as u64)
                        .collect()
                };
                // Bring the logs back from the log files (when kept), off the async threads.
                let slots = entry.logs.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    for (slot, run) in slots.iter().zip(runs) {
                        slot.update(|l| l.restore(run));
                    }
                })
                .await;
            }
            if let Err(newer) = self.store.insert_new(entry.clone()) {
                // The replaced pod: its record goes now (its supervisors, which no loaded pod
                // claims, are stopped below), or a delete of the name would leave it behind.
                problems.push(format!(
                    "pod {} (uid {}) was being replaced by uid {} when procnode stopped: its record is removed",
                    entry.key, entry.uid, newer.uid
                ));
                if let Some(id) = entry.pod_id {
                    self.settings.pod_ids.release(id);
                }
                if let Err(e) = crate::persist::remove(&pod.base) {
                    problems.push(format!("cannot remove {}: {e}", pod.base.display()));
                }
                let dirs: Vec<PathBuf> = std::iter::once(self.settings.pod_dir(&entry))
                    .chain(self.settings.pod_log_dir(&entry.key, &entry.uid))
                    .collect();
                let _ = tokio::task::spawn_blocking(move || {
                    volumes::release(&dirs[0]);
                    for d in dirs {
                        let _ = std::fs::remove_dir_all(d);
                    }
                })
                .await;
                continue;
            }
            if admitted {
                tokio::spawn(run_pod(entry, self.settings.clone(), true));
            } else {
                entry.mark_done();
            }
        }
        problems.extend(self.stop_unclaimed_supervisors().await);
        problems
    }

    /// After the records are loaded: a supervisor on this state directory that no loaded pod
    /// claims (its record was removed, lost or set aside) would keep its container running
    /// for nobody. Each is stopped (its container's group killed, its exit released) and
    /// reported by name; a socket no process holds any more is removed.
    async fn stop_unclaimed_supervisors(&self) -> Vec<String> {
        if !self.settings.supervise {
            return Vec::new();
        }
        let claimed: std::collections::HashSet<String> = self
            .store
            .list()
            .iter()
            .map(|e| self.settings.supervisor_pod_part(e))
            .collect();
        let sup_dir = self.settings.state_dir.join("sup");
        let files: Vec<String> = std::fs::read_dir(&sup_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| !claimed.contains(f.split('-').next().unwrap_or_default()))
            .collect();
        let mut stops = JoinSet::new();
        for file in files {
            let name = format!("{}{file}", supervisor_prefix(&self.settings.state_dir));
            stops.spawn(async move {
                match supervisor::attach(&name).await {
                    Ok(mut sup) => {
                        let pid = sup.pid;
                        process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                        let _ = tokio::time::timeout(Duration::from_secs(10), sup.events.next())
                            .await;
                        sup.release().await;
                        Some(format!(
                            "supervisor {name} belonged to no recorded pod: its container (pid {pid}) was stopped"
                        ))
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                        ) =>
                    {
                        // A supervisor that was killed: only its socket file is left.
                        let _ = std::fs::remove_file(&name);
                        None
                    }
                    Err(e) => Some(format!(
                        "supervisor socket {name} belongs to no recorded pod and cannot be stopped: {e}"
                    )),
                }
            });
        }
        let mut problems = Vec::new();
        while let Some(done) = stops.join_next().await {
            problems.extend(done.ok().flatten());
        }
        problems
    }

    /// The pod's own uid on the host: as recorded, or a free one (procnode as root only).
    fn claim_pod_id(&self, recorded: Option<u32>, new: &NewPod) -> Option<u32> {
        if self.settings.users.own_uid != 0 {
            return None;
        }
        let seed = format!("{}/{}/{}", new.key.namespace, new.key.name, new.uid);
        self.settings.pod_ids.claim(recorded, &seed)
    }

    /// Whether the node can take `new`, as the kubelet admits a pod: `None`, or the reason
    /// and message of the refusal (the pod is kept, Failed with them). Besides `--max-pods`,
    /// the containers of the pods still running must fit procnode's descriptor budget (each
    /// holds a supervisor socket, two output pipes and a log file) and the host's pid space
    /// (each is at least a supervisor and a process).
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
        let containers = |spec: &k8s_openapi::api::core::v1::PodSpec| {
            spec.containers.len() + spec.init_containers.as_ref().map_or(0, Vec::len)
        };
        let wanted = new.pod.spec.as_ref().map_or(0, containers);
        let running: usize = pods
            .iter()
            .filter(|e| !e.is_done())
            .map(|e| e.pod().spec.as_ref().map_or(0, containers))
            .sum();
        let budget = &self.settings.budget;
        let fds = |n: usize| n as u64 * FDS_PER_CONTAINER;
        if fds(running + wanted) + FD_RESERVE > budget.open_files {
            return Some((
                "OutOfnofile".into(),
                format!(
                    "Node didn't have enough resource: open files, requested: {}, used: {}, capacity: {} (procnode's RLIMIT_NOFILE)",
                    fds(wanted),
                    fds(running) + FD_RESERVE,
                    budget.open_files
                ),
            ));
        }
        let pids = |n: usize| n as u64 * PIDS_PER_CONTAINER;
        if pids(running + wanted) + PID_RESERVE > budget.pids {
            return Some((
                "OutOfpids".into(),
                format!(
                    "Node didn't have enough resource: pids, requested: {}, used: {}, capacity: {} (kernel.pid_max)",
                    pids(wanted),
                    pids(running) + PID_RESERVE,
                    budget.pids
                ),
            ));
        }
        None
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
                ContainerStatus::new(
                    &c.name,
                    c.image.as_deref().unwrap_or_default(),
                    reason::POD_INITIALIZING,
                )
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
            new.set_uid(&entry.uid);
        }
        if entry.uid != new.uid {
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
        self.save_pod(&new.key, &new.uid, &new.raw).await?;
        entry.set_raw(new.raw);
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
        let had_deadline = has_deadline(&entry);
        entry.set_pod(new.pod);
        if !had_deadline && has_deadline(&entry) && !entry.is_done() {
            // A deadline set by this update: watch it from now on.
            tokio::spawn(enforce_deadline(entry.clone(), self.settings.clone()));
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
                        tracing::warn!(pod = %e.key, error = %err, "cannot resize the pod's cgroup");
                    }
                    for c in &spec.containers {
                        if let Err(err) = s.cgroups.resize_container(&pod_cgroup, &c.name, &container::limits(c)) {
                            tracing::warn!(pod = %e.key, container = %c.name, error = %err, "cannot resize a container's cgroup");
                        }
                    }
                }
                if labels_changed {
                    s.refresh_volumes(&e);
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
        let record = self.settings.record_base(&entry.key, &entry.uid);
        let pod_dir = self.settings.pod_dir(entry);
        let dirs: Vec<PathBuf> = std::iter::once(pod_dir.clone())
            .chain(self.settings.pod_log_dir(&entry.key, &entry.uid))
            .collect();
        let key = entry.key.clone();
        let cgroups = self.settings.cgroups.clone();
        let pod_cgroup = self.settings.pod_cgroup(entry);
        let sup_dir = self.settings.state_dir.join("sup");
        let sup_part = self.settings.supervisor_pod_part(entry);
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = cgroups.remove_pod(&pod_cgroup) {
                tracing::warn!(pod = %key, error = %e, "could not remove the pod's cgroup");
            }
            volumes::release(&pod_dir);
            // Sockets of supervisors that were killed rather than released.
            for (_, _, socket) in supervisor_sockets(&sup_dir, &sup_part) {
                let _ = std::fs::remove_file(socket);
            }
            if let Err(e) = crate::persist::remove(&record) {
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
        if let Some(id) = entry.pod_id {
            self.settings.pod_ids.release(id);
        }
        self.store.remove_if_same(entry);
        entry.mark_gone();
        tracing::info!(pod = %entry.key, uid = %entry.uid, "pod deleted");
    }

    fn grace_for(&self, entry: &PodEntry, requested: Option<Duration>) -> Duration {
        grace_period(entry, &self.settings, requested)
    }

    /// The log slot of one container.
    pub fn log_slot(&self, key: &PodKey, container: &str) -> Result<Arc<LogSlot>, RuntimeError> {
        let entry = self.get(key)?;
        let idx =
            entry
                .container_index(container)
                .ok_or_else(|| RuntimeError::ContainerNotFound {
                    key: key.clone(),
                    container: container.to_string(),
                })?;
        Ok(entry.logs[idx].clone())
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

/// The grace period: the delete's own, else the pod's, else 30 s; never above the cap.
fn grace_period(entry: &PodEntry, settings: &Settings, requested: Option<Duration>) -> Duration {
    let from_spec = entry
        .pod()
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .map(|s| Duration::from_secs(s.max(0) as u64));
    requested
        .or(from_spec)
        .unwrap_or(DEFAULT_GRACE)
        .min(settings.max_grace)
}

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
            tracing::warn!(pod = %e.key, error = %err, "cannot create the pod's cgroup");
        }
        s.prepare_volumes(&e)
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
    let _ = entry.volumes.set(prepared);
    if !watched.is_empty() {
        tokio::spawn(watch_volume_sizes(entry.clone(), settings.clone(), watched));
    }
    let from_objects = entry.pod().spec.as_ref().is_some_and(|s| {
        s.volumes
            .iter()
            .flatten()
            .any(|v| v.secret.is_some() || v.config_map.is_some() || v.projected.is_some())
    });
    if settings.objects.is_some() && from_objects {
        tokio::spawn(refresh_object_volumes(entry.clone(), settings.clone()));
    }
    Ok(())
}

/// Rewrites the pod's Secret, ConfigMap and projected volumes every
/// `object_refresh_interval` while the pod runs, so that a changed object reaches its files.
async fn refresh_object_volumes(entry: Arc<PodEntry>, settings: Arc<Settings>) {
    let mut tick = tokio::time::interval(settings.object_refresh_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = entry.wait_done() => return,
            _ = tick.tick() => {}
        }
        let (e, s) = (entry.clone(), settings.clone());
        let _ = tokio::task::spawn_blocking(move || s.refresh_volumes(&e)).await;
    }
}

/// Evicts the pod when an emptyDir grows past its `sizeLimit`, as the kubelet's local storage
/// eviction does (checked every `--volume-check-interval`).
async fn watch_volume_sizes(
    entry: Arc<PodEntry>,
    settings: Arc<Settings>,
    watched: Vec<(String, PathBuf, u64, String)>,
) {
    let mut tick = tokio::time::interval(settings.volume_check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = entry.wait_done() => return,
            _ = tick.tick() => {}
        }
        let dirs = watched.clone();
        let over = tokio::task::spawn_blocking(move || {
            dirs.into_iter()
                .find(|(_, path, limit, _)| volumes::usage(path) > *limit)
        })
        .await
        .ok()
        .flatten();
        let Some((name, _, _, limit)) = over else {
            continue;
        };
        let message =
            format!("Usage of EmptyDir volume \"{name}\" exceeds the limit \"{limit}\". ");
        if !entry.fail("Evicted", message, true) {
            return;
        }
        tracing::info!(pod = %entry.key, volume = %name, "emptyDir over its sizeLimit; evicting the pod");
        entry.request_stop(Duration::ZERO);
        return;
    }
}

fn has_deadline(entry: &PodEntry) -> bool {
    entry
        .pod()
        .spec
        .as_ref()
        .is_some_and(|s| s.active_deadline_seconds.is_some())
}

/// `activeDeadlineSeconds`: once the pod has been active that long, it is stopped and Failed
/// with reason `DeadlineExceeded`, as the kubelet does. Ends early when the pod finishes.
async fn enforce_deadline(entry: Arc<PodEntry>, settings: Arc<Settings>) {
    // An update may set or shorten the deadline: recompute it on every change.
    let mut changes = entry.spec_changes();
    loop {
        changes.borrow_and_update();
        let seconds = entry
            .pod()
            .spec
            .as_ref()
            .and_then(|s| s.active_deadline_seconds);
        let start = entry.state.lock().expect("state lock").start_time;
        let left = match (seconds, start) {
            (Some(seconds), Some(start)) => {
                let deadline = start + jiff::SignedDuration::from_secs(seconds.max(0));
                let left = Timestamp::now().duration_until(deadline);
                Some(Duration::try_from(left).unwrap_or(Duration::ZERO))
            }
            _ => None,
        };
        let expired = async {
            match left {
                Some(left) => tokio::time::sleep(left).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = entry.wait_done() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = expired => break,
        }
    }
    let message = "Pod was active on the node longer than the specified deadline".to_string();
    if !entry.fail("DeadlineExceeded", message, true) {
        return;
    }
    tracing::info!(pod = %entry.key, "active deadline exceeded; stopping the pod");
    entry.request_stop(grace_period(&entry, &settings, None));
}

/// Writes the pod's observed state (atomically; `durable` also fsyncs it); whether it was
/// written. Failures are logged: the supervisors still hold what a restart needs, and the next
/// change retries.
pub(crate) async fn save_status(entry: &PodEntry, settings: &Settings, durable: bool) -> bool {
    let _turn = entry.save_lock.lock().await;
    let saved = entry.saved_status();
    let dir = settings.record_base(&entry.key, &entry.uid);
    let result =
        tokio::task::spawn_blocking(move || crate::persist::save_status(&dir, &saved, durable))
            .await;
    match result {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(pod = %entry.key, error = %e, "could not record pod status");
            false
        }
        Err(_) => false,
    }
}

/// Records a container's exit before its supervisor may let it go: retried (1 s apart at
/// first, then every 5 s) until the state directory takes it, with the node reporting
/// DiskPressure meanwhile. Whether the supervisor may be released: also for a pod being
/// deleted (its record goes anyway); not when the pod is stopped (procnode exiting) before the
/// exit could be recorded, so that the supervisor keeps it for the next procnode.
pub(crate) async fn record_exit(entry: &PodEntry, settings: &Settings, container: &str) -> bool {
    if save_status(entry, settings, true).await {
        return true;
    }
    let held = &settings.unrecorded_exits;
    held.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(pod = %entry.key, container, "the exit cannot be recorded (is the state directory full?): its supervisor holds it until it can");
    let mut delay = Duration::from_secs(1);
    let release = loop {
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
        if entry.is_being_removed() {
            break true;
        }
        if save_status(entry, settings, true).await {
            tracing::info!(pod = %entry.key, container, "the held exit is recorded");
            break true;
        }
        if entry.stop_requested() {
            break false;
        }
    };
    held.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    release
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
async fn run_pod(entry: Arc<PodEntry>, settings: Arc<Settings>, restored: bool) {
    let (n_init, n_app, policy) = {
        let mut st = entry.state.lock().expect("state lock");
        st.start_time.get_or_insert_with(Timestamp::now);
        (st.init.len(), st.containers.len(), st.restart_policy)
    };
    if has_deadline(&entry) {
        tokio::spawn(enforce_deadline(entry.clone(), settings.clone()));
    }
    if let Err(e) = prepare_pod(&entry, &settings).await {
        tracing::warn!(pod = %entry.key, error = %e, "the pod's volumes cannot be set up");
        entry.fail(e.reason(), e.to_string(), false);
        finish(&entry, &settings).await;
        return;
    }
    // Init containers are retried on failure unless the pod never restarts anything.
    let init_policy = match policy {
        RestartPolicy::Never => RestartPolicy::Never,
        _ => RestartPolicy::OnFailure,
    };
    for idx in 0..n_init {
        let how = entry.update_container(idx, |c| begin(c, init_policy));
        let how = match how {
            Some(how) if restored => Some(adopt_unrecorded(&entry, idx, how, &settings)),
            how => how,
        };
        let outcome = match how {
            None => container::Outcome::Exited(entry.update_container(idx, |c| match &c.state {
                status::ContainerState::Terminated(t) => t.exit_code,
                _ => 1,
            })),
            Some(how) => {
                container::supervise(entry.clone(), idx, init_policy, settings.clone(), how).await
            }
        };
        if outcome != container::Outcome::Exited(0) {
            finish(&entry, &settings).await;
            return;
        }
    }
    if n_init > 0 {
        let mut st = entry.state.lock().expect("state lock");
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
        st.refresh(Timestamp::now());
        drop(st);
        entry.status_changed();
    }
    let mut tasks = JoinSet::new();
    for idx in n_init..n_init + n_app {
        if let Some(how) = entry.update_container(idx, |c| begin(c, policy)) {
            let how = if restored {
                adopt_unrecorded(&entry, idx, how, &settings)
            } else {
                how
            };
            tasks.spawn(container::supervise(
                entry.clone(),
                idx,
                policy,
                settings.clone(),
                how,
            ));
        }
    }
    while tasks.join_next().await.is_some() {}
    finish(&entry, &settings).await;
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
    let sup_dir = settings.state_dir.join("sup");
    let mut runs: Vec<u64> = supervisor_sockets(&sup_dir, &settings.supervisor_pod_part(entry))
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
    tracing::debug!(pod = %entry.key, container = idx, found = ?found, "looking for an unrecorded supervisor");
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
async fn finish(entry: &PodEntry, settings: &Settings) {
    // Every exit was already recorded (durably) by its container task.
    save_status(entry, settings, false).await;
    entry.mark_done();
}
