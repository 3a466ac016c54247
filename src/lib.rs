//! procnode runs Kubernetes pods as plain supervised processes. It is the HTTP endpoint behind
//! a Virtual Kubelet "web" broker (`WEB_ENDPOINT_URL`).
//!
//! Layout:
//! - [`config`]: one [`Config`] from flags and environment, with its `DEFAULT_*` constants.
//! - [`api`]: HTTP only. The route table mirrors the wire contract; `ApiError` is the only
//!   place that knows status codes. Calls `runtime` and `node`; nothing calls `api`.
//! - [`runtime`]: child processes, typed in and out: `NewPod` in, `PodEntry` (status, logs,
//!   typed notes) out. One pod worker per pod, one task per container process;
//!   `runtime::process` is the only code that spawns, signals or reaps; `runtime::layout` the
//!   only one that knows the state directory's paths; `runtime::records` its records.
//! - [`logs`]: bounded per-container output buffers.
//! - [`node`]: capacity, conditions and addresses from live host metrics.
//! - [`tls`]: the TLS listener.
//! - [`cluster`]: `procnode node`, the second front end: Node, Lease, pod watch, status push,
//!   events and the kubelet API over the same runtime.
//! - [`batch`]: `procnode run FILE`, the third: one Pod or Job manifest, no HTTP.
//! - [`metrics`], [`quantity`]: Prometheus counters; Kubernetes quantities.
//!
//! Every mode starts through [`Started::start`] (state directory, runtime, restore) and ends
//! with [`Started::stop`]. [`run`] takes its listener and shutdown signal from the caller, so
//! tests drive the real server on port 0.

pub mod api;
pub mod batch;
pub mod cluster;
pub mod config;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod quantity;
pub mod runtime;
pub mod stream;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

pub use config::Config;

/// Builds the node monitor and the runtime for `config`.
pub fn build(config: &Config) -> (Arc<runtime::Runtime>, Arc<node::Node>) {
    build_with(config, None)
}

/// [`build`], with a source of Secret and ConfigMap contents for volumes (node mode).
pub fn build_with(
    config: &Config,
    objects: Option<Arc<dyn runtime::volumes::ObjectSource>>,
) -> (Arc<runtime::Runtime>, Arc<node::Node>) {
    let cgroups = Arc::new(runtime::cgroup::Cgroups::detect(
        config.cgroups,
        &config.cgroup_parent,
        config.pids_limit(),
    ));
    let node = node::Node::new(config, &cgroups);
    let mut settings = runtime::Settings::from_config(config, node.facts(), cgroups);
    settings.objects = objects;
    settings.unrecorded_exits = node.unrecorded_exits.clone();
    (Arc::new(runtime::Runtime::new(settings)), node)
}

/// What every mode (web API, node, `procnode run`) starts with, set up in one order: the state
/// directory prepared and locked (a second procnode on it is refused), cgroups detected, the
/// node monitor and the runtime built, the recorded pods restored, the host sampled in the
/// background. [`Started::stop`] undoes it in reverse.
pub struct Started {
    pub runtime: Arc<runtime::Runtime>,
    pub node: Arc<node::Node>,
    refresher: tokio::task::JoinHandle<()>,
    watchdog: Option<tokio::task::JoinHandle<()>>,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Started {
    /// Sets up `config`'s state directory and runtime; `objects` fills Secret and ConfigMap
    /// volumes (node mode).
    pub async fn start(
        config: &Config,
        objects: Option<Arc<dyn runtime::volumes::ObjectSource>>,
    ) -> std::io::Result<Started> {
        let layout = runtime::StateLayout::new(config.state_dir());
        layout.prepare()?;
        let lock = layout.lock()?;
        let (runtime, node) = build_with(config, objects);
        if config.pod_root == config::PodRoot::Overlay && !runtime.settings().volumes.overlay_root {
            tracing::warn!(
                "--pod-root overlay needs procnode to run as root: containers see the host's root"
            );
        }
        let cgroups = runtime.settings().cgroups.clone();
        if cgroups.available() {
            tracing::info!(cgroups = %cgroups.status(), "pods get cgroups");
            if cgroups.moves_wait() {
                tracing::warn!("no cgroup hierarchy is mounted with favordynmods: the first container start after a pause waits for an RCU grace period (milliseconds) to join its cgroup; see docs/systemd.md");
            }
        } else {
            tracing::warn!(
                cgroups = %cgroups.status(),
                "pods are tracked by process group only: resource limits are not enforced"
            );
        }
        for problem in runtime.restore().await {
            tracing::error!("{problem}");
        }
        let restored = runtime.list().len();
        if restored > 0 {
            tracing::info!(pods = restored, "restored pods from the state directory");
        }
        let refresher = tokio::spawn(node.clone().refresh_every(config.host_refresh));
        Ok(Started {
            runtime,
            node,
            refresher,
            watchdog: None,
            _lock: lock,
        })
    }

    /// Tells systemd (Type=notify) that procnode is ready, once its listeners are bound, and
    /// pings its watchdog from then on when it asks for that.
    pub fn ready(&mut self) {
        notify_service_manager(&[sd_notify::NotifyState::Ready]);
        self.watchdog = sd_notify::watchdog_enabled().map(|every| {
            tracing::info!(every = ?every, "pinging the systemd watchdog");
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every / 2);
                loop {
                    tick.tick().await;
                    notify_service_manager(&[sd_notify::NotifyState::Watchdog]);
                }
            })
        });
    }

    /// On the way out, once the servers are stopped: leave every pod running under its
    /// supervisor for the next procnode (the default, as a kubelet restart leaves its
    /// containers), or with `--stop-pods-on-exit` (or without supervisors, when nothing could
    /// keep them) stop each with its grace period. Then the state directory is released.
    pub async fn stop(self, config: &Config) {
        notify_service_manager(&[sd_notify::NotifyState::Stopping]);
        let pods = self.runtime.list().len();
        let keep = !config.stop_pods_on_exit && config.supervisor == config::SupervisorMode::Shim;
        if keep {
            if pods > 0 {
                tracing::info!(
                    pods,
                    "leaving every pod running under its supervisor; the next procnode re-adopts \
                     them (--stop-pods-on-exit stops them instead)"
                );
            } else {
                // Nothing to leave running: nothing of procnode's stays in the host's cgroups.
                self.runtime.remove_empty_cgroup_parent().await;
            }
        } else {
            tracing::info!(pods, "stopping every pod");
            self.runtime.shutdown().await;
            tracing::info!("all pods stopped");
        }
        self.refresher.abort();
        if let Some(w) = self.watchdog {
            w.abort();
        }
    }
}

/// Serves the API on `listener` (TCP, TLS or unix socket) until `shutdown` completes, then
/// leaves every pod to its supervisor (or, with `--stop-pods-on-exit`, stops each with its
/// grace period and returns once no pod process is left).
pub async fn run<L>(
    listener: L,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
    L::Io: api::peer::Identify,
{
    let mut started = Started::start(&config, None).await?;
    let state = api::AppState::new(started.runtime.clone(), started.node.clone(), &config)?;
    let addr = listener.local_addr()?;
    tracing::info!(addr = %format!("{addr:?}").trim_matches('"'), state_dir = %config.state_dir().display(), "procnode serving");
    started.ready();
    api::serve(listener, state, shutdown).await?;
    started.stop(&config).await;
    Ok(())
}

/// Tells systemd about a state change when it started procnode with `NOTIFY_SOCKET` (a no-op
/// otherwise; containers never see the variable, their environment is built from the pod).
fn notify_service_manager(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
