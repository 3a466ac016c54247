//! Observed pod state as explicit enums, the kubelet's rules that derive phase and conditions
//! from it, and the mapping to the Kubernetes `PodStatus` type sent over the wire.
//!
//! Everything here is pure: the container tasks mutate a [`PodState`] and call
//! [`PodState::refresh`]; readers serialise it with [`PodState::to_k8s`].

use k8s_openapi::api::core::v1 as k8s;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// Waiting reasons used by the kubelet.
pub mod reason {
    pub const CONTAINER_CREATING: &str = "ContainerCreating";
    pub const POD_INITIALIZING: &str = "PodInitializing";
    pub const CRASH_LOOP_BACK_OFF: &str = "CrashLoopBackOff";
    pub const RUN_CONTAINER_ERROR: &str = "RunContainerError";
    pub const COMPLETED: &str = "Completed";
    pub const ERROR: &str = "Error";
    pub const START_ERROR: &str = "StartError";
    pub const CONTAINER_STATUS_UNKNOWN: &str = "ContainerStatusUnknown";
    pub const OOM_KILLED: &str = "OOMKilled";

    /// The waiting reason `s` names, as a constant (read back from a saved record).
    pub fn known(s: &str) -> &'static str {
        [POD_INITIALIZING, CRASH_LOOP_BACK_OFF, RUN_CONTAINER_ERROR]
            .into_iter()
            .find(|r| *r == s)
            .unwrap_or(CONTAINER_CREATING)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn parse(s: Option<&str>) -> Option<RestartPolicy> {
        match s {
            None | Some("") | Some("Always") => Some(RestartPolicy::Always),
            Some("OnFailure") => Some(RestartPolicy::OnFailure),
            Some("Never") => Some(RestartPolicy::Never),
            Some(_) => None,
        }
    }

    /// Whether a container that ended with `exit_code` is started again.
    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// How one run of a container ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Termination {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Timestamp,
    pub container_id: Option<String>,
}

impl Termination {
    /// A run that ended by itself: reason `Completed` for exit code 0, else `Error`.
    pub fn exited(
        status: super::process::ExitStatus,
        started_at: Option<Timestamp>,
        finished_at: Timestamp,
        container_id: Option<String>,
    ) -> Termination {
        let exit_code = status.exit_code();
        Termination {
            exit_code,
            signal: status.signal(),
            reason: if exit_code == 0 {
                reason::COMPLETED
            } else {
                reason::ERROR
            }
            .into(),
            message: None,
            started_at,
            finished_at,
            container_id,
        }
    }

    /// A run whose supervisor vanished without reporting an exit.
    pub fn supervisor_gone(
        started_at: Option<Timestamp>,
        container_id: Option<String>,
    ) -> Termination {
        Termination {
            exit_code: 137,
            signal: None,
            reason: reason::CONTAINER_STATUS_UNKNOWN.into(),
            message: Some(
                "the container's supervisor process is gone, so its exit status is unknown; \
                 what was left of the container was stopped"
                    .into(),
            ),
            started_at,
            finished_at: Timestamp::now(),
            container_id,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ContainerState {
    Waiting {
        reason: &'static str,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated(Termination),
}

#[derive(Debug, Clone)]
pub struct ContainerStatus {
    pub name: String,
    pub image: String,
    pub state: ContainerState,
    pub last_termination: Option<Termination>,
    pub restart_count: i32,
    pub ready: bool,
    /// Running and past its startup probe (if any).
    pub started: bool,
    /// Pid (and process group id) of the current run, while it runs.
    pub pid: Option<i32>,
    /// `containerID` of the current or last run.
    pub container_id: Option<String>,
    /// The supervisor of the current run, while it runs.
    pub supervisor: Option<String>,
    /// The run's postStart hook has not finished yet: the kubelet reports such a container as
    /// waiting (ContainerCreating) and its pod as Pending.
    pub post_start_pending: bool,
    /// A sidecar: an init container with `restartPolicy: Always`, which keeps running beside
    /// the app containers (set from the spec, never recorded).
    pub sidecar: bool,
}

impl ContainerStatus {
    pub fn new(name: &str, image: &str, waiting_reason: &'static str) -> ContainerStatus {
        ContainerStatus {
            name: name.to_string(),
            image: image.to_string(),
            state: ContainerState::Waiting {
                reason: waiting_reason,
                message: None,
            },
            last_termination: None,
            restart_count: 0,
            ready: false,
            started: false,
            pid: None,
            container_id: None,
            supervisor: None,
            post_start_pending: false,
            sidecar: false,
        }
    }

    fn is_running(&self) -> bool {
        matches!(self.state, ContainerState::Running { .. })
    }

    /// A sidecar that runs and has passed its startup probe (if any): the next init container
    /// may start, and the pod counts as initialized.
    pub fn sidecar_started(&self) -> bool {
        self.sidecar && self.is_running() && self.started && !self.post_start_pending
    }

    /// An app container that ran, or runs: the pod has initialized.
    fn has_run(&self) -> bool {
        self.is_running()
            || self.last_termination.is_some()
            || matches!(self.state, ContainerState::Terminated(_))
    }

    fn to_k8s(&self) -> k8s::ContainerStatus {
        let running = matches!(self.state, ContainerState::Running { .. });
        if running && self.post_start_pending {
            return k8s::ContainerStatus {
                state: Some(state_to_k8s(&ContainerState::Waiting {
                    reason: reason::CONTAINER_CREATING,
                    message: None,
                })),
                ready: false,
                started: Some(false),
                ..self.with_state_of_run()
            };
        }
        self.with_state_of_run()
    }

    fn with_state_of_run(&self) -> k8s::ContainerStatus {
        let running = matches!(self.state, ContainerState::Running { .. });
        k8s::ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: String::new(),
            container_id: self.container_id.clone(),
            ready: self.ready,
            restart_count: self.restart_count,
            started: Some(running && self.started),
            state: Some(state_to_k8s(&self.state)),
            last_state: Some(
                self.last_termination
                    .as_ref()
                    .map(|t| k8s::ContainerState {
                        terminated: Some(termination_to_k8s(t)),
                        ..Default::default()
                    })
                    .unwrap_or_default(),
            ),
            ..Default::default()
        }
    }
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

fn termination_to_k8s(t: &Termination) -> k8s::ContainerStateTerminated {
    k8s::ContainerStateTerminated {
        exit_code: t.exit_code,
        signal: t.signal,
        reason: Some(t.reason.clone()),
        message: t.message.clone(),
        started_at: t.started_at.map(time),
        finished_at: Some(time(t.finished_at)),
        container_id: t.container_id.clone(),
    }
}

fn state_to_k8s(s: &ContainerState) -> k8s::ContainerState {
    match s {
        ContainerState::Waiting { reason, message } => k8s::ContainerState {
            waiting: Some(k8s::ContainerStateWaiting {
                reason: Some(reason.to_string()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        ContainerState::Running { started_at } => k8s::ContainerState {
            running: Some(k8s::ContainerStateRunning {
                started_at: Some(time(*started_at)),
            }),
            ..Default::default()
        },
        ContainerState::Terminated(t) => k8s::ContainerState {
            terminated: Some(termination_to_k8s(t)),
            ..Default::default()
        },
    }
}

/// One pod condition with the time its status last changed.
#[derive(Debug, Clone)]
struct Condition {
    type_: &'static str,
    status: bool,
    reason: Option<&'static str>,
    message: Option<String>,
    last_transition: Timestamp,
}

#[derive(Debug, Clone)]
pub struct PodState {
    pub restart_policy: RestartPolicy,
    pub start_time: Option<Timestamp>,
    pub init: Vec<ContainerStatus>,
    pub containers: Vec<ContainerStatus>,
    pub host_ip: String,
    pub qos_class: &'static str,
    /// Pod-level failure that overrides the derived phase (reason, message).
    pub failure: Option<(String, String)>,
    /// Something the pod's user should know that no other field shows (`status.message`
    /// unless the pod failed): volumes procnode could not mount where asked. Not recorded; said
    /// again at the next start.
    pub notice: Option<String>,
    phase: Phase,
    conditions: [Condition; 4],
}

const POD_SCHEDULED: usize = 0;
const INITIALIZED: usize = 1;
const CONTAINERS_READY: usize = 2;
const READY: usize = 3;

impl PodState {
    pub fn new(
        restart_policy: RestartPolicy,
        init: Vec<ContainerStatus>,
        containers: Vec<ContainerStatus>,
        host_ip: String,
        qos_class: &'static str,
        now: Timestamp,
    ) -> PodState {
        let cond = |type_| Condition {
            type_,
            status: false,
            reason: None,
            message: None,
            last_transition: now,
        };
        let mut state = PodState {
            restart_policy,
            start_time: None,
            init,
            containers,
            host_ip,
            qos_class,
            failure: None,
            notice: None,
            phase: Phase::Pending,
            conditions: [
                cond("PodScheduled"),
                cond("Initialized"),
                cond("ContainersReady"),
                cond("Ready"),
            ],
        };
        state.conditions[POD_SCHEDULED].status = true;
        state.refresh(now);
        state
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Container `idx` in the runtime's numbering: init containers first, then app containers.
    pub fn container(&self, idx: usize) -> &ContainerStatus {
        match idx.checked_sub(self.init.len()) {
            None => &self.init[idx],
            Some(i) => &self.containers[i],
        }
    }

    /// [`PodState::container`], to change.
    pub fn container_mut(&mut self, idx: usize) -> &mut ContainerStatus {
        match idx.checked_sub(self.init.len()) {
            None => &mut self.init[idx],
            Some(i) => &mut self.containers[i],
        }
    }

    /// Every regular init container succeeded and every sidecar started (or the app
    /// containers already ran: a restarting sidecar does not take a pod back to initializing).
    pub fn initialized(&self) -> bool {
        let app_ran = self.containers.iter().any(ContainerStatus::has_run);
        self.init.iter().all(|c| {
            if c.sidecar {
                app_ran || c.sidecar_started()
            } else {
                matches!(&c.state, ContainerState::Terminated(t) if t.exit_code == 0)
            }
        })
    }

    /// Recomputes phase and conditions after a change; condition times move only on transitions.
    pub fn refresh(&mut self, now: Timestamp) {
        self.phase = self.derive_phase();
        let terminal = self.phase.is_terminal();

        let initialized = self.initialized();
        let pending_init: Vec<&str> = self
            .init
            .iter()
            .filter(|c| {
                if c.sidecar {
                    !c.sidecar_started()
                } else {
                    !matches!(&c.state, ContainerState::Terminated(t) if t.exit_code == 0)
                }
            })
            .map(|c| c.name.as_str())
            .collect();
        // Sidecars count for readiness as app containers do.
        let unready: Vec<&str> = self
            .init
            .iter()
            .filter(|c| c.sidecar)
            .chain(self.containers.iter())
            .filter(|c| !c.ready)
            .map(|c| c.name.as_str())
            .collect();
        let ready = unready.is_empty();
        let unready_reason = if terminal {
            "PodCompleted"
        } else {
            "ContainersNotReady"
        };
        let unready_message = (!ready && !terminal)
            .then(|| format!("containers with unready status: [{}]", unready.join(" ")));

        let updates = [
            (
                INITIALIZED,
                initialized,
                (!initialized).then_some("ContainersNotInitialized"),
                (!initialized).then(|| {
                    format!(
                        "containers with incomplete status: [{}]",
                        pending_init.join(" ")
                    )
                }),
            ),
            (
                CONTAINERS_READY,
                ready,
                (!ready).then_some(unready_reason),
                unready_message.clone(),
            ),
            (
                READY,
                ready,
                (!ready).then_some(unready_reason),
                unready_message,
            ),
        ];
        for (i, status, reason, message) in updates {
            let c = &mut self.conditions[i];
            if c.status != status {
                c.last_transition = now;
            }
            c.status = status;
            c.reason = reason;
            c.message = message;
        }
    }

    /// The kubelet's phase rules (`getPhase`), with a pod-level failure taking precedence.
    fn derive_phase(&self) -> Phase {
        if self.failure.is_some() {
            return Phase::Failed;
        }
        let mut pending_init = 0;
        let mut failed_init = 0;
        for c in self.init.iter().filter(|c| !c.sidecar) {
            match &c.state {
                ContainerState::Terminated(t) if t.exit_code == 0 => {}
                ContainerState::Terminated(_) => failed_init += 1,
                ContainerState::Waiting { .. }
                    if c.last_termination
                        .as_ref()
                        .is_some_and(|t| t.exit_code != 0) =>
                {
                    failed_init += 1
                }
                _ => pending_init += 1,
            }
        }
        if failed_init > 0 && self.restart_policy == RestartPolicy::Never {
            return Phase::Failed;
        }
        if pending_init > 0 || failed_init > 0 {
            return Phase::Pending;
        }

        let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
        // Sidecars, as the kubelet counts them: a running one counts as running (not yet
        // started: the pod is still initializing); an ended one does not count at all, so a
        // Job's pod whose sidecars were stopped after its app containers is Succeeded.
        let mut pending_sidecars = 0;
        for c in self.init.iter().filter(|c| c.sidecar) {
            match &c.state {
                ContainerState::Running { .. } => {
                    running += 1;
                    if !c.sidecar_started() {
                        pending_sidecars += 1;
                    }
                }
                ContainerState::Terminated(_) => {}
                ContainerState::Waiting { .. } if c.last_termination.is_some() => {}
                ContainerState::Waiting { .. } => {
                    pending_sidecars += 1;
                    waiting += 1;
                }
            }
        }
        let app_ran = self.containers.iter().any(ContainerStatus::has_run);
        if pending_sidecars > 0 && !app_ran {
            return Phase::Pending;
        }
        for c in &self.containers {
            match &c.state {
                ContainerState::Running { .. } if c.post_start_pending => {
                    if c.last_termination.is_some() {
                        stopped += 1
                    } else {
                        waiting += 1
                    }
                }
                ContainerState::Running { .. } => running += 1,
                ContainerState::Terminated(t) => {
                    stopped += 1;
                    if t.exit_code == 0 {
                        succeeded += 1;
                    }
                }
                ContainerState::Waiting { .. } if c.last_termination.is_some() => stopped += 1,
                ContainerState::Waiting { .. } => waiting += 1,
            }
        }
        if waiting > 0 {
            Phase::Pending
        } else if running > 0 {
            Phase::Running
        } else if stopped > 0 {
            match self.restart_policy {
                RestartPolicy::Always => Phase::Running,
                _ if stopped == succeeded => Phase::Succeeded,
                RestartPolicy::Never => Phase::Failed,
                RestartPolicy::OnFailure => Phase::Running,
            }
        } else {
            Phase::Pending
        }
    }

    pub fn to_k8s(&self) -> k8s::PodStatus {
        let conditions = self
            .conditions
            .iter()
            .map(|c| k8s::PodCondition {
                type_: c.type_.to_string(),
                status: if c.status { "True" } else { "False" }.to_string(),
                reason: c.reason.map(str::to_string),
                message: c.message.clone(),
                last_transition_time: Some(time(c.last_transition)),
                ..Default::default()
            })
            .collect();
        // A failed pod runs nothing, so none of its containers waits for anything: one that
        // never ran (the pod failed before it could start: admission, volumes) or waited to
        // restart is reported terminated with the pod's reason, so that a client showing the
        // first container reason (kubectl's STATUS column) shows why the pod failed rather
        // than ContainerCreating.
        let settle = |mut k: k8s::ContainerStatus| {
            if let (Some((reason, message)), Some(state)) = (&self.failure, k.state.as_mut()) {
                if state.waiting.is_some() {
                    state.waiting = None;
                    state.terminated = Some(k8s::ContainerStateTerminated {
                        exit_code: NEVER_RAN_EXIT_CODE,
                        reason: Some(reason.clone()),
                        message: Some(message.clone()),
                        ..Default::default()
                    });
                }
            }
            k
        };
        let list = |v: &[ContainerStatus]| {
            (!v.is_empty()).then(|| v.iter().map(|c| settle(c.to_k8s())).collect())
        };
        let ip = (!self.host_ip.is_empty()).then(|| self.host_ip.clone());
        k8s::PodStatus {
            phase: Some(self.phase.as_str().to_string()),
            conditions: Some(conditions),
            container_statuses: list(&self.containers),
            init_container_statuses: list(&self.init),
            host_ip: ip.clone(),
            host_ips: ip.clone().map(|ip| vec![k8s::HostIP { ip }]),
            pod_ip: ip.clone(),
            pod_ips: ip.map(|ip| vec![k8s::PodIP { ip }]),
            start_time: self.start_time.map(time),
            qos_class: Some(self.qos_class.to_string()),
            reason: self.failure.as_ref().map(|(r, _)| r.clone()),
            message: self
                .failure
                .as_ref()
                .map(|(_, m)| m.clone())
                .or_else(|| self.notice.clone()),
            ..Default::default()
        }
    }
}

/// The exit code reported for a container of a failed pod that was never started (as a
/// runtime reports a container it could not start).
pub const NEVER_RAN_EXIT_CODE: i32 = 128;

/// The QoS class the API server assigns (`Guaranteed`, `Burstable`, `BestEffort`).
pub fn qos_class(spec: &k8s::PodSpec) -> &'static str {
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    let mut any = false;
    let mut guaranteed = true;
    for c in all {
        let r = c.resources.clone().unwrap_or_default();
        let req = r.requests.unwrap_or_default();
        let lim = r.limits.unwrap_or_default();
        if !req.is_empty() || !lim.is_empty() {
            any = true;
        }
        for res in ["cpu", "memory"] {
            match (lim.get(res), req.get(res)) {
                (Some(l), Some(q)) if l == q => {}
                (Some(_), None) => {} // requests default to limits
                _ => guaranteed = false,
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(exit: i32) -> Termination {
        Termination::exited(
            crate::runtime::process::ExitStatus::Exited(exit),
            None,
            Timestamp::UNIX_EPOCH,
            None,
        )
    }

    fn pod(policy: RestartPolicy, states: Vec<ContainerState>) -> PodState {
        let containers = states
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let mut c =
                    ContainerStatus::new(&format!("c{i}"), "img", reason::CONTAINER_CREATING);
                c.ready = matches!(s, ContainerState::Running { .. });
                c.state = s;
                c
            })
            .collect();
        PodState::new(
            policy,
            vec![],
            containers,
            "10.0.0.1".into(),
            "BestEffort",
            Timestamp::now(),
        )
    }

    fn running() -> ContainerState {
        ContainerState::Running {
            started_at: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_container_in_its_post_start_hook_is_creating_and_its_pod_pending() {
        let mut p = pod(RestartPolicy::Always, vec![running()]);
        p.containers[0].post_start_pending = true;
        p.refresh(Timestamp::now());
        assert_eq!(p.phase(), Phase::Pending);
        let k = p.containers[0].to_k8s();
        let waiting = k.state.unwrap().waiting.unwrap();
        assert_eq!(waiting.reason.as_deref(), Some("ContainerCreating"));
        assert!(!k.ready);
        p.containers[0].post_start_pending = false;
        p.refresh(Timestamp::now());
        assert_eq!(p.phase(), Phase::Running);
        assert!(p.containers[0].to_k8s().state.unwrap().running.is_some());
    }

    /// A Job's pod (restartPolicy Never) with one sidecar in `sidecar` and one app container
    /// in `app`.
    fn with_sidecar(sidecar: ContainerState, started: bool, app: ContainerState) -> PodState {
        let mut p = pod(RestartPolicy::Never, vec![app]);
        let mut s = ContainerStatus::new("log", "img", reason::POD_INITIALIZING);
        s.sidecar = true;
        s.started = started;
        s.ready = started;
        s.state = sidecar;
        p.init.push(s);
        p.refresh(Timestamp::now());
        p
    }

    #[test]
    fn sidecars_count_as_the_kubelet_counts_them() {
        use ContainerState::Terminated as T;
        let creating = || ContainerState::Waiting {
            reason: reason::POD_INITIALIZING,
            message: None,
        };
        // Not started yet (its startup probe pending): the pod is initializing.
        let p = with_sidecar(running(), false, creating());
        assert_eq!(p.phase(), Phase::Pending);
        assert!(!p.initialized());
        // Started: initialized, and Running with its app container.
        let p = with_sidecar(running(), true, running());
        assert!(p.initialized());
        assert_eq!(p.phase(), Phase::Running);
        // The app container succeeded while the sidecar still runs: Running until it is stopped.
        assert_eq!(
            with_sidecar(running(), true, T(t(0))).phase(),
            Phase::Running
        );
        // Stopped (TERM: 143) after the app container succeeded: the Job's pod Succeeded.
        let done = with_sidecar(T(t(143)), false, T(t(0)));
        assert_eq!(done.phase(), Phase::Succeeded);
        assert_eq!(
            with_sidecar(T(t(143)), false, T(t(1))).phase(),
            Phase::Failed
        );
        // A sidecar restarting after the app containers ran does not make the pod Pending.
        let mut restarting = with_sidecar(creating(), false, running());
        restarting.init[0].last_termination = Some(t(1));
        restarting.refresh(Timestamp::now());
        assert_eq!(restarting.phase(), Phase::Running);
        assert!(restarting.initialized());
        // An unready sidecar makes the pod unready.
        let mut unready = with_sidecar(running(), true, running());
        unready.init[0].ready = false;
        unready.refresh(Timestamp::now());
        let ready = unready.to_k8s().conditions.unwrap();
        let ready = ready.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "False");
        assert!(ready.message.as_deref().unwrap_or("").contains("log"));
    }

    #[test]
    fn phase_follows_the_kubelet() {
        use ContainerState::Terminated as T;
        use RestartPolicy::*;
        assert_eq!(pod(Never, vec![running()]).phase(), Phase::Running);
        assert_eq!(pod(Never, vec![T(t(0))]).phase(), Phase::Succeeded);
        assert_eq!(pod(Never, vec![T(t(0)), T(t(1))]).phase(), Phase::Failed);
        assert_eq!(pod(Never, vec![running(), T(t(1))]).phase(), Phase::Running);
        assert_eq!(pod(OnFailure, vec![T(t(0))]).phase(), Phase::Succeeded);
        assert_eq!(pod(OnFailure, vec![T(t(2))]).phase(), Phase::Running);
        assert_eq!(pod(Always, vec![T(t(0))]).phase(), Phase::Running);
        let waiting = ContainerState::Waiting {
            reason: reason::CONTAINER_CREATING,
            message: None,
        };
        assert_eq!(pod(Always, vec![waiting]).phase(), Phase::Pending);
    }

    #[test]
    fn failed_init_container_fails_a_never_pod_and_keeps_others_pending() {
        for (policy, phase) in [
            (RestartPolicy::Never, Phase::Failed),
            (RestartPolicy::OnFailure, Phase::Pending),
        ] {
            let mut init = ContainerStatus::new("i", "img", reason::CONTAINER_CREATING);
            init.state = ContainerState::Terminated(t(1));
            let app = ContainerStatus::new("a", "img", reason::POD_INITIALIZING);
            let s = PodState::new(
                policy,
                vec![init],
                vec![app],
                String::new(),
                "BestEffort",
                Timestamp::now(),
            );
            assert_eq!(s.phase(), phase, "{policy:?}");
        }
    }

    #[test]
    fn condition_times_change_only_on_transitions() {
        let t0 = Timestamp::UNIX_EPOCH;
        let t1 = Timestamp::from_second(100).unwrap();
        let t2 = Timestamp::from_second(200).unwrap();
        let mut s = pod(RestartPolicy::Always, vec![]);
        s.containers
            .push(ContainerStatus::new("a", "img", reason::CONTAINER_CREATING));
        s.refresh(t0);
        let ready_time = |s: &PodState| s.conditions[READY].last_transition;
        s.containers[0].state = running();
        s.containers[0].ready = true;
        s.refresh(t1);
        assert_eq!(ready_time(&s), t1);
        s.refresh(t2);
        assert_eq!(ready_time(&s), t1, "no transition, no new time");
        let k = s.to_k8s();
        let ready = k
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
    }

    #[test]
    fn qos_class_matches_the_api_server() {
        let spec: k8s::PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]
        }))
        .unwrap();
        assert_eq!(qos_class(&spec), "Guaranteed");
        let spec: k8s::PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]
        }))
        .unwrap();
        assert_eq!(qos_class(&spec), "Burstable");
        let spec: k8s::PodSpec =
            serde_json::from_value(serde_json::json!({"containers": [{"name": "a"}]})).unwrap();
        assert_eq!(qos_class(&spec), "BestEffort");
    }
}
