//! The pod store: every pod by [`PodKey`] (namespace/name), with the JSON exactly as received
//! (unknown fields kept, `status` removed), the typed spec the runtime runs, the observed
//! [`PodState`] and each container's logs.
//!
//! Locks are `std::sync` ones: every critical section is a few map operations or a status
//! serialisation, never an `.await`, so an async mutex would only add cost.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;

use crate::logs::{ContainerLogs, LogConfig, LogSlot};
use crate::runtime::status::{PodState, RestartPolicy};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why a pod body was rejected. Nothing is stored when one of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("request body is not valid pod JSON: {0}")]
    Json(serde_json::Error),
    #[error("request body must be a JSON object (a v1.Pod)")]
    NotAnObject,
    #[error("metadata.name is required")]
    MissingName,
    #[error("{field} {value:?} is invalid: {rule}")]
    InvalidName {
        field: &'static str,
        value: String,
        rule: &'static str,
    },
    #[error("spec.containers must name at least one container")]
    NoContainers,
    #[error("container name {0:?} is used more than once")]
    DuplicateContainer(String),
    #[error("spec.restartPolicy {0:?} is invalid: must be Always, OnFailure or Never")]
    RestartPolicy(String),
    #[error("container {0:?} has neither command nor image: nothing to run")]
    NothingToRun(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("pod updates may not add, remove or rename containers (had {had:?}, got {got:?})")]
    ContainersChanged { had: Vec<String>, got: Vec<String> },
}

/// A validated pod body, ready to be stored.
#[derive(Clone)]
pub struct NewPod {
    pub key: PodKey,
    pub uid: String,
    pub pod: Pod,
    pub restart_policy: RestartPolicy,
    /// The body as received, compact, without `status`.
    pub raw: String,
}

const DNS_LABEL_RULE: &str =
    "must be a DNS-1123 label: lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63 characters";
const DNS_SUBDOMAIN_RULE: &str =
    "must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters";
const UID_RULE: &str = "may hold only letters, digits and '-', at most 128 characters";

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

impl NewPod {
    /// A pod body from the wire (the web API, a record on disk): parsed, then validated as
    /// [`NewPod::from_pod`] does. The JSON is kept as received (without `status`), for getPod's
    /// byte-faithful answer and the record.
    pub fn from_json(body: &[u8]) -> Result<NewPod, PodError> {
        let mut value: serde_json::Value = serde_json::from_slice(body).map_err(PodError::Json)?;
        let obj = value.as_object_mut().ok_or(PodError::NotAnObject)?;
        obj.remove("status");
        let pod = <Pod as serde::Deserialize>::deserialize(&value).map_err(PodError::Json)?;
        let raw = serde_json::to_string(&value).map_err(PodError::Json)?;
        NewPod::validated(pod, raw)
    }

    /// A typed pod (node mode, `procnode run`), validated. Its JSON is made once, for the
    /// record on disk.
    pub fn from_pod(mut pod: Pod) -> Result<NewPod, PodError> {
        pod.status = None;
        let raw = serde_json::to_string(&pod).map_err(PodError::Json)?;
        NewPod::validated(pod, raw)
    }

    /// Validates a pod. Names that end up in paths are checked here, so that nothing later
    /// can escape the state directory.
    fn validated(pod: Pod, raw: String) -> Result<NewPod, PodError> {
        let name = pod
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or(PodError::MissingName)?;
        if !is_dns_subdomain(&name) {
            return Err(PodError::InvalidName {
                field: "metadata.name",
                value: name,
                rule: DNS_SUBDOMAIN_RULE,
            });
        }
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_string());
        if !is_dns_label(&namespace) {
            return Err(PodError::InvalidName {
                field: "metadata.namespace",
                value: namespace,
                rule: DNS_LABEL_RULE,
            });
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if uid.len() > 128 || !uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(PodError::InvalidName {
                field: "metadata.uid",
                value: uid,
                rule: UID_RULE,
            });
        }
        let spec = pod.spec.as_ref().ok_or(PodError::NoContainers)?;
        if spec.containers.is_empty() {
            return Err(PodError::NoContainers);
        }
        let mut seen = std::collections::HashSet::new();
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
        {
            if !is_dns_label(&c.name) {
                return Err(PodError::InvalidName {
                    field: "container name",
                    value: c.name.clone(),
                    rule: DNS_LABEL_RULE,
                });
            }
            if !seen.insert(c.name.as_str()) {
                return Err(PodError::DuplicateContainer(c.name.clone()));
            }
            let has_command = c.command.as_ref().is_some_and(|v| !v.is_empty());
            let has_image = c
                .image
                .as_deref()
                .and_then(crate::runtime::image_executable)
                .is_some();
            if !has_command && !has_image {
                return Err(PodError::NothingToRun(c.name.clone()));
            }
        }
        validate_volumes(spec)?;
        validate_quantities(spec)?;
        let restart_policy =
            RestartPolicy::parse(spec.restart_policy.as_deref()).ok_or_else(|| {
                PodError::RestartPolicy(spec.restart_policy.clone().unwrap_or_default())
            })?;
        Ok(NewPod {
            key: PodKey { namespace, name },
            uid,
            pod,
            restart_policy,
            raw,
        })
    }
}

impl NewPod {
    /// Gives a pod that came without `metadata.uid` the uid `uid` (in what getPod returns too).
    pub fn set_uid(&mut self, uid: &str) {
        self.uid = uid.to_string();
        self.pod.metadata.uid = Some(uid.to_string());
        if let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&self.raw) {
            if let Some(meta) = value
                .as_object_mut()
                .map(|o| o.entry("metadata").or_insert_with(|| serde_json::json!({})))
                .and_then(|m| m.as_object_mut())
            {
                meta.insert("uid".into(), uid.into());
                if let Ok(raw) = serde_json::to_string(&value) {
                    self.raw = raw;
                }
            }
        }
    }
}

/// A fresh random uid in the API server's format (a version 4 UUID), for a pod created
/// without one.
pub fn generate_uid() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        // No urandom: the time and the pid still make it unique on this host.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        b[..12].copy_from_slice(&t.to_le_bytes()[..12]);
        b[12..].copy_from_slice(&std::process::id().to_le_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A path with no `..` component (the API server's rule for mountPath and hostPath).
fn no_backsteps(p: &str) -> bool {
    !std::path::Path::new(p)
        .components()
        .any(|c| c == std::path::Component::ParentDir)
}

/// A relative path without `..` (subPath, item paths, keys).
fn relative_path(p: &str) -> bool {
    !p.is_empty() && !p.starts_with('/') && no_backsteps(p)
}

/// Volumes and mounts as the API server validates them (`ValidatePod`): volume names are
/// unique DNS-1123 labels, every mount names a volume, mountPath has no `..`, subPath and item
/// paths are relative without `..`, hostPath paths have no `..`.
fn validate_volumes(spec: &k8s_openapi::api::core::v1::PodSpec) -> Result<(), PodError> {
    let invalid = |field: String, message: &str| PodError::Invalid {
        field,
        message: message.to_string(),
    };
    let mut names = std::collections::HashSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let field = |f: &str| format!("spec.volumes[{i}]{f}");
        if !is_dns_label(&v.name) {
            return Err(invalid(
                field(".name"),
                &format!("{:?} {DNS_LABEL_RULE}", v.name),
            ));
        }
        if !names.insert(v.name.as_str()) {
            return Err(invalid(
                field(".name"),
                &format!("{:?} is used more than once", v.name),
            ));
        }
        if let Some(h) = &v.host_path {
            if !h.path.starts_with('/') || !no_backsteps(&h.path) {
                return Err(invalid(
                    field(".hostPath.path"),
                    "must be an absolute path without '..'",
                ));
            }
        }
        let mut items: Vec<(String, &str)> = Vec::new();
        if let Some(d) = &v.downward_api {
            for (j, it) in d.items.iter().flatten().enumerate() {
                items.push((field(&format!(".downwardAPI.items[{j}].path")), &it.path));
            }
        }
        if let Some(c) = &v.config_map {
            for (j, it) in c.items.iter().flatten().enumerate() {
                items.push((field(&format!(".configMap.items[{j}].path")), &it.path));
            }
        }
        if let Some(c) = &v.secret {
            for (j, it) in c.items.iter().flatten().enumerate() {
                items.push((field(&format!(".secret.items[{j}].path")), &it.path));
            }
        }
        for (k, src) in v
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
            .enumerate()
        {
            let base = field(&format!(".projected.sources[{k}]"));
            for (j, it) in src
                .config_map
                .iter()
                .flat_map(|c| c.items.iter().flatten())
                .chain(src.secret.iter().flat_map(|c| c.items.iter().flatten()))
                .enumerate()
            {
                items.push((format!("{base}.items[{j}].path"), &it.path));
            }
            for (j, it) in src
                .downward_api
                .iter()
                .flat_map(|d| d.items.iter().flatten())
                .enumerate()
            {
                items.push((format!("{base}.downwardAPI.items[{j}].path"), &it.path));
            }
            if let Some(t) = &src.service_account_token {
                items.push((format!("{base}.serviceAccountToken.path"), &t.path));
            }
        }
        for (f, path) in items {
            if !relative_path(path) {
                return Err(invalid(f, "must be a relative path without '..'"));
            }
        }
    }
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| ("initContainers", c))
        .chain(spec.containers.iter().map(|c| ("containers", c)));
    let mut counts: std::collections::HashMap<&str, usize> = Default::default();
    for (list, c) in containers {
        let i = {
            let n = counts.entry(list).or_default();
            *n += 1;
            *n - 1
        };
        for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
            let field = |f: &str| format!("spec.{list}[{i}].volumeMounts[{j}].{f}");
            if !names.contains(m.name.as_str()) {
                return Err(invalid(
                    field("name"),
                    &format!("{:?} is not a volume of the pod", m.name),
                ));
            }
            if m.mount_path.is_empty() {
                return Err(invalid(field("mountPath"), "is required"));
            }
            if !no_backsteps(&m.mount_path) {
                return Err(invalid(field("mountPath"), "must not contain '..'"));
            }
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                if !relative_path(sub) {
                    return Err(invalid(
                        field("subPath"),
                        "must be a relative path without '..'",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Resource requests and limits, and emptyDir size limits, are valid non-negative quantities
/// (the API server refuses others; procnode used to ignore them).
fn validate_quantities(spec: &k8s_openapi::api::core::v1::PodSpec) -> Result<(), PodError> {
    use crate::quantity::Quantity;
    let check = |field: String, q: &str| -> Result<(), PodError> {
        match q.parse::<Quantity>() {
            Ok(v) if v >= Quantity::default() => Ok(()),
            Ok(_) => Err(PodError::Invalid {
                field,
                message: format!("{q:?} must be greater than or equal to 0"),
            }),
            Err(e) => Err(PodError::Invalid {
                field,
                message: e.to_string(),
            }),
        }
    };
    let lists = [
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or_default(),
        ),
        ("containers", spec.containers.as_slice()),
    ];
    for (list, containers) in lists {
        for (i, c) in containers.iter().enumerate() {
            let Some(r) = &c.resources else { continue };
            for (kind, map) in [("limits", &r.limits), ("requests", &r.requests)] {
                for (name, q) in map.iter().flatten() {
                    check(format!("spec.{list}[{i}].resources.{kind}[{name}]"), &q.0)?;
                }
            }
        }
    }
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if let Some(q) = v.empty_dir.as_ref().and_then(|e| e.size_limit.as_ref()) {
            check(format!("spec.volumes[{i}].emptyDir.sizeLimit"), &q.0)?;
        }
    }
    Ok(())
}

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

/// One stored pod.
pub struct PodEntry {
    pub key: PodKey,
    pub uid: String,
    /// The pod's own uid and gid on the host (procnode as root), from `--pod-uid-range`.
    pub pod_id: Option<u32>,
    /// The spec the runtime runs: as created, then as updated (see [`PodEntry::pod`]).
    pod: std::sync::RwLock<Arc<Pod>>,
    /// The JSON as last received (create or update), without status.
    raw: Mutex<Arc<str>>,
    pub state: Mutex<PodState>,
    /// Logs of init containers, then app containers, in spec order.
    pub logs: Box<[Arc<LogSlot>]>,
    stop: watch::Sender<Option<Duration>>,
    done: watch::Sender<bool>,
    /// Where a delete is: stays in the store until its record and directories are gone.
    removal: watch::Sender<Removal>,
    /// Serialises writes of this pod's status record.
    pub save_lock: tokio::sync::Mutex<()>,
    /// The pod's volumes, once prepared (before its first container starts).
    pub volumes: std::sync::OnceLock<crate::runtime::volumes::PodVolumes>,
    /// Bumped on every accepted update of the spec.
    generation: watch::Sender<u64>,
    /// Bumped whenever the observed state may have changed (for front ends that push status).
    status_version: watch::Sender<u64>,
    /// Per container: bumped when an update asks for its running process to be restarted.
    restarts: Box<[watch::Sender<u64>]>,
    /// What happened that the status does not show (a failed probe, a failed hook), for a front
    /// end that records events; kept only once one asked ([`PodEntry::take_notes`]).
    notes: Mutex<Option<std::collections::VecDeque<Note>>>,
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
        probe: crate::runtime::probe::Kind,
        message: String,
    },
    /// A liveness or startup probe failed often enough: the run is being stopped.
    KilledByProbe {
        probe: crate::runtime::probe::Kind,
    },
    PostStartHookFailed(String),
    PreStopHookFailed(String),
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
    pub fn new(
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
            done: watch::channel(false).0,
            removal: watch::channel(Removal::None).0,
            save_lock: tokio::sync::Mutex::new(()),
            volumes: std::sync::OnceLock::new(),
            generation: watch::channel(0).0,
            status_version: watch::channel(0).0,
            restarts: (0..n_containers).map(|_| watch::channel(0).0).collect(),
            notes: Mutex::new(None),
        }
    }

    /// Notes what happened to container `idx`, for [`PodEntry::take_notes`]; does nothing
    /// until a front end took notes once, so a pod nobody records events for keeps none.
    pub fn note(&self, idx: usize, what: Happening) {
        {
            // (The only place that holds both locks: notes, then state.)
            let mut notes = self.notes.lock().expect("notes lock");
            let Some(notes) = notes.as_mut() else {
                return;
            };
            let (field_path, container) = {
                let st = self.state.lock().expect("state lock");
                match idx.checked_sub(st.init.len()) {
                    None => (
                        field_path(true, &st.init[idx].name),
                        st.init[idx].name.clone(),
                    ),
                    Some(i) => (
                        field_path(false, &st.containers[i].name),
                        st.containers[i].name.clone(),
                    ),
                }
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

    /// Replaces the pod the runtime runs (an accepted update).
    pub fn set_pod(&self, pod: Pod) {
        *self.pod.write().expect("pod lock") = Arc::new(pod);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Changes with every accepted update of the spec.
    pub fn spec_changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Asks for the running process of container `idx` to be restarted (its definition
    /// changed).
    pub fn request_restart(&self, idx: usize) {
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

    /// Applies `f` to the status of container `idx` and recomputes the pod's phase and conditions.
    pub fn update_container<R>(
        &self,
        idx: usize,
        f: impl FnOnce(&mut crate::runtime::status::ContainerStatus) -> R,
    ) -> R {
        let mut st = self.state.lock().expect("state lock");
        let n_init = st.init.len();
        let c = if idx < n_init {
            &mut st.init[idx]
        } else {
            &mut st.containers[idx - n_init]
        };
        let r = f(c);
        st.refresh(k8s_openapi::jiff::Timestamp::now());
        drop(st);
        self.status_changed();
        r
    }

    /// Fails the pod with `reason` and `message` (the kubelet's pod-level failures: a deadline,
    /// an eviction, volumes that cannot be set up), unless `keep_terminal` and it has already
    /// ended. Returns whether it was failed.
    pub fn fail(&self, reason: &str, message: String, keep_terminal: bool) -> bool {
        {
            let mut st = self.state.lock().expect("state lock");
            if keep_terminal && st.phase().is_terminal() {
                return false;
            }
            st.failure = Some((reason.to_string(), message));
            st.refresh(k8s_openapi::jiff::Timestamp::now());
        }
        self.status_changed();
        true
    }

    /// Tells whoever follows [`PodEntry::status_changes`] that the state may have changed.
    pub fn status_changed(&self) {
        self.status_version.send_modify(|v| *v += 1);
    }

    /// Changes whenever the pod's observed state may have changed.
    pub fn status_changes(&self) -> watch::Receiver<u64> {
        self.status_version.subscribe()
    }

    pub fn set_raw(&self, raw: String) {
        *self.raw.lock().expect("raw lock") = Arc::from(raw);
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

    /// [`PodEntry::status`] as JSON, for the web API.
    pub fn status_json(&self) -> String {
        serde_json::to_string(&self.status()).expect("PodStatus serialises")
    }

    /// The pod as received, with procnode's live status in place of the one it came with.
    pub fn pod_json(&self) -> String {
        let raw = self.raw.lock().expect("raw lock").clone();
        let status = self.status_json();
        let body = raw.trim_end();
        let body = body.strip_suffix('}').unwrap_or(body);
        let sep = if body.trim_end().ends_with('{') {
            ""
        } else {
            ","
        };
        let mut out = String::with_capacity(body.len() + status.len() + 16);
        out.push_str(body);
        out.push_str(sep);
        out.push_str("\"status\":");
        out.push_str(&status);
        out.push('}');
        out
    }

    /// The observed state, as recorded on disk.
    pub fn saved_status(&self) -> crate::persist::SavedStatus {
        use crate::persist::{SavedContainer, SavedStatus};
        let st = self.state.lock().expect("state lock");
        SavedStatus {
            pod_id: self.pod_id,
            start_time: st.start_time,
            failure: st.failure.clone(),
            init: st.init.iter().map(SavedContainer::from_status).collect(),
            containers: st
                .containers
                .iter()
                .map(SavedContainer::from_status)
                .collect(),
        }
    }

    /// A short form of the pod (identity, container names and live phase) for listings that
    /// would not fit the broker's read limit in full.
    pub fn summary_json(&self) -> String {
        let phase = self.state.lock().expect("state lock").phase().as_str();
        let pod = self.pod();
        let spec = pod.spec.as_ref();
        let containers: Vec<serde_json::Value> = spec
            .map(|s| {
                s.containers
                    .iter()
                    .map(|c| serde_json::json!({"name": c.name}))
                    .collect()
            })
            .unwrap_or_default();
        serde_json::json!({
            "metadata": {"name": self.key.name, "namespace": self.key.namespace, "uid": self.uid},
            "spec": {"containers": containers},
            "status": {"phase": phase},
        })
        .to_string()
    }

    /// Asks the pod's worker to stop every container within `grace`. The first request wins.
    pub fn request_stop(&self, grace: Duration) {
        self.stop.send_if_modified(|slot| {
            if slot.is_none() {
                *slot = Some(grace);
                true
            } else {
                false
            }
        });
    }

    pub fn stop_receiver(&self) -> watch::Receiver<Option<Duration>> {
        self.stop.subscribe()
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.borrow().is_some()
    }

    /// Marks the worker finished: no process of this pod is left, so no container will write
    /// again (followers of containers that never ran stop too).
    pub fn mark_done(&self) {
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
    pub fn begin_removal(&self) {
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
    pub fn mark_gone(&self) {
        self.removal.send_replace(Removal::Gone);
    }

    /// Waits until a delete that has begun is complete.
    pub async fn wait_gone(&self) {
        let mut rx = self.removal.subscribe();
        let _ = rx.wait_for(|r| *r == Removal::Gone).await;
    }
}

/// All pods, by key.
#[derive(Default)]
pub struct Store {
    pods: RwLock<BTreeMap<PodKey, Arc<PodEntry>>>,
}

impl Store {
    pub fn get(&self, key: &PodKey) -> Option<Arc<PodEntry>> {
        self.pods.read().expect("store lock").get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.pods.read().expect("store lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inserts `entry` unless a pod with its key is stored; returns the stored one then.
    pub fn insert_new(&self, entry: Arc<PodEntry>) -> Result<(), Arc<PodEntry>> {
        let mut pods = self.pods.write().expect("store lock");
        if let Some(existing) = pods.get(&entry.key) {
            return Err(existing.clone());
        }
        pods.insert(entry.key.clone(), entry);
        Ok(())
    }

    /// Removes the pod under `key` if it is still `entry` (not a newer pod of the same name).
    pub fn remove_if_same(&self, entry: &Arc<PodEntry>) {
        let mut pods = self.pods.write().expect("store lock");
        if pods.get(&entry.key).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            pods.remove(&entry.key);
        }
    }

    pub fn list(&self) -> Vec<Arc<PodEntry>> {
        self.pods
            .read()
            .expect("store lock")
            .values()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<NewPod, PodError> {
        NewPod::from_json(v.to_string().as_bytes())
    }

    #[test]
    fn keeps_unknown_fields_and_drops_status() {
        let p = parse(serde_json::json!({
            "metadata": {"name": "a", "namespace": "ns", "creationTimestamp": null, "x-unknown": 1},
            "spec": {"containers": [{"name": "c", "image": "busybox",
                      "ports": [{"containerPort": 80, "name": "http"}],
                      "readinessProbe": {"httpGet": {"port": "http"}},
                      "livenessProbe": {"tcpSocket": {"port": 8080}}}], "futureField": {"k": "v"}},
            "status": {"phase": "Pending"}
        }))
        .unwrap();
        assert_eq!(p.key.to_string(), "ns/a");
        assert!(p.raw.contains("\"x-unknown\":1"));
        assert!(p.raw.contains("\"futureField\":{\"k\":\"v\"}"));
        assert!(!p.raw.contains("status"));
    }

    #[test]
    fn rejects_what_cannot_run() {
        let c = |name: &str| serde_json::json!({"name": name, "command": ["true"]});
        let cases = [
            serde_json::json!([]),
            serde_json::json!({"spec": {"containers": [c("a")]}}),
            serde_json::json!({"metadata": {"name": "a"}, "spec": {"containers": []}}),
            serde_json::json!({"metadata": {"name": "a"}, "spec": {"containers": [c("x"), c("x")]}}),
            serde_json::json!({"metadata": {"name": "../etc"}, "spec": {"containers": [c("a")]}}),
            serde_json::json!({"metadata": {"name": "a", "namespace": "a/b"}, "spec": {"containers": [c("a")]}}),
            serde_json::json!({"metadata": {"name": "a"}, "spec": {"containers": [c("Bad_Name")]}}),
            serde_json::json!({"metadata": {"name": "a"}, "spec": {"restartPolicy": "Sometimes", "containers": [c("a")]}}),
            serde_json::json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "a"}]}}),
            serde_json::json!({"metadata": {"name": "a", "uid": "../x"}, "spec": {"containers": [c("a")]}}),
        ];
        for case in cases {
            assert!(parse(case.clone()).is_err(), "accepted {case}");
        }
    }

    #[test]
    fn notes_are_kept_only_once_asked_for_and_bounded() {
        use crate::runtime::status::{ContainerStatus, PodState};
        let new = parse(serde_json::json!({
            "metadata": {"name": "a", "uid": "u"},
            "spec": {"initContainers": [{"name": "setup", "command": ["true"]}],
                     "containers": [{"name": "main", "command": ["true"]}]}
        }))
        .unwrap();
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
            probe: crate::runtime::probe::Kind::Liveness,
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

    #[test]
    fn bad_quantities_are_refused_naming_the_field() {
        let with = |limits: serde_json::Value| {
            serde_json::json!({"metadata": {"name": "q"}, "spec": {"containers": [
                {"name": "a", "command": ["true"], "resources": {"limits": limits}}]}})
        };
        for (bad, why) in [
            ("abc", "not a Kubernetes quantity"),
            ("-1Gi", "greater than or equal to 0"),
            ("1e100", "not a Kubernetes quantity"),
        ] {
            let err = parse(with(serde_json::json!({"memory": bad})))
                .err()
                .expect(bad)
                .to_string();
            assert!(
                err.contains("spec.containers[0].resources.limits[memory]") && err.contains(why),
                "{bad}: {err}"
            );
        }
        assert!(parse(with(serde_json::json!({"memory": "64Mi", "cpu": "500m"}))).is_ok());
        let sized = serde_json::json!({"metadata": {"name": "q"}, "spec": {
            "volumes": [{"name": "v", "emptyDir": {"sizeLimit": "lots"}}],
            "containers": [{"name": "a", "command": ["true"]}]}});
        let err = parse(sized).err().unwrap().to_string();
        assert!(err.contains("spec.volumes[0].emptyDir.sizeLimit"), "{err}");
    }

    #[test]
    fn names_are_checked_like_kubernetes_does() {
        assert!(is_dns_label("web-1"));
        assert!(!is_dns_label("-web"));
        assert!(!is_dns_label("Web"));
        assert!(is_dns_subdomain("web.example-1"));
        assert!(!is_dns_subdomain("web..x"));
        assert!(!is_dns_subdomain(".."));
    }
}
