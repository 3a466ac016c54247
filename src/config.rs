//! Configuration: one [`Config`] built from command-line flags, environment variables and an
//! optional TOML file.
//!
//! Precedence is flag > environment variable > config file > built-in default. Every default is
//! a named `DEFAULT_*` constant so that docs/configuration.md, `--help` and the code cannot drift apart.
//! The file's keys are the flags' long names (`max-pods = 50`; `max_pods` is accepted too): a
//! file setting is passed to clap as the flag it names, unless the same flag or its environment
//! variable is set, so one parser validates every source alike.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::quantity::Quantity;

/// Port served when neither `--listen`, `PROCNODE_LISTEN` nor `PORT` says otherwise.
pub const DEFAULT_PORT: u16 = 3000;
/// Pods advertised in the node's capacity (the kubelet's default `maxPods`).
pub const DEFAULT_MAX_PODS: u32 = 110;
/// Upper bound on any pod's `terminationGracePeriodSeconds`.
pub const DEFAULT_MAX_GRACE: Duration = Duration::from_secs(300);
/// Grace period of a pod that does not set one (Kubernetes' default).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Bytes of output kept per container run (stdout and stderr together).
pub const DEFAULT_LOG_BUFFER_BYTES: usize = 1024 * 1024;
/// Longest state directory with supervisors: 107 bytes of socket path, less `/sup/`, a pod's
/// 16 hex digits, `/`, and up to 14 for `<container>-<run>`.
pub const MAX_STATE_DIR_BYTES: usize = 107 - 5 - 16 - 1 - 14;
/// Bytes of output kept in memory by all containers together.
pub const DEFAULT_LOG_TOTAL_BYTES: usize = 256 * 1024 * 1024;
/// Size at which a container's log file is rotated (the kubelet's containerLogMaxSize).
pub const DEFAULT_LOG_FILE_MAX_SIZE: &str = "10Mi";
/// Log files kept per container run, the current one included (the kubelet's containerLogMaxFiles).
pub const DEFAULT_LOG_FILE_MAX_FILES: usize = 5;
/// uids and gids a pod may ask for by number: `nobody` / `nogroup` only.
pub const DEFAULT_ALLOWED_IDS: &str = "65534";
/// The uids handed out to pods (see [`crate::runtime::users::DEFAULT_POD_UID_RANGE`]).
pub const DEFAULT_POD_UID_RANGE: &str = "1879048192-1879113727";
/// Containers a pod may have.
pub const DEFAULT_MAX_CONTAINERS_PER_POD: u32 = 200;
/// HTTP connections a server keeps open at once.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
/// Log follow streams open at once.
pub const DEFAULT_MAX_FOLLOW_STREAMS: usize = 64;
/// Largest request body accepted; larger ones get 413.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// First CrashLoopBackOff delay (the kubelet's).
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// CrashLoopBackOff cap (the kubelet's).
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How often host metrics (memory, disk, pids) are sampled.
pub const DEFAULT_HOST_REFRESH: Duration = Duration::from_secs(5);
/// MemoryPressure when available memory falls below this (the kubelet's hard eviction default).
pub const DEFAULT_MEMORY_PRESSURE_BELOW: &str = "100Mi";
/// DiskPressure when the state dir's file system has less than this percentage free.
pub const DEFAULT_DISK_PRESSURE_PERCENT: u8 = 10;
/// PIDPressure when more than this percentage of `kernel.pid_max` is in use.
pub const DEFAULT_PID_PRESSURE_PERCENT: u8 = 90;
/// Processes a pod may have at once, where cgroups exist (0: no limit).
pub const DEFAULT_POD_PIDS_LIMIT: u64 = 4096;
/// The taint of a procnode node (Virtual Kubelet's convention).
pub const DEFAULT_NODE_TAINT: &str = "virtual-kubelet.io/provider=procnode:NoSchedule";
/// Port of the kubelet API in node mode (the kubelet's).
pub const DEFAULT_KUBELET_PORT: u16 = 10250;
/// The cgroup under which pod cgroups are made.
pub const DEFAULT_CGROUP_PARENT: &str = "procnode-pods";

/// The subcommands, for `--help` (the flags above apply to each).
pub const SUBCOMMANDS: &str = "\
Subcommands:
  procnode [serve] [FLAGS]     serve the web API for a Virtual Kubelet web broker (the default)
  procnode run FILE [FLAGS]    run one Pod or Job manifest on this host and exit with its result
  procnode node [FLAGS]        join a Kubernetes cluster as a node (kubelet API on --kubelet-port)
  procnode health [FLAGS]      exit 0 if the procnode these settings describe answers /healthz
  procnode help                this text";

/// procnode: runs Kubernetes pods as plain supervised processes behind a Virtual Kubelet web broker.
#[derive(Debug, Clone, Parser)]
#[command(name = "procnode", version, about, long_about = None, after_help = SUBCOMMANDS)]
pub struct Config {
    /// TOML file of settings, keyed by flag name (`max-pods = 50`); flags and environment
    /// variables override it.
    #[arg(long, env = "PROCNODE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Print the effective settings, each with where it came from, and exit (0 if valid).
    #[arg(long)]
    pub print_config: bool,

    /// Address to listen on: `HOST:PORT`, just `PORT` (127.0.0.1 is used then), or
    /// `unix:PATH` for a unix socket (created with mode 0600).
    /// Default: 127.0.0.1 and the port from `PORT`, else 3000.
    #[arg(long, env = "PROCNODE_LISTEN", value_parser = parse_listen)]
    pub listen: Option<ListenAddr>,

    /// Port used when no --listen is given.
    #[arg(long, env = "PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Directory for procnode's files (per-pod working directories).
    /// Default: /var/lib/procnode as root, else $XDG_STATE_HOME/procnode or ~/.local/state/procnode.
    #[arg(long, env = "PROCNODE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Node name, used for `spec.nodeName` in the downward API and the Hostname address. Default: the host name.
    #[arg(long, env = "PROCNODE_NODE_NAME")]
    pub node_name: Option<String>,

    /// InternalIP reported for the node and as every pod's hostIP/podIP. Default: the address of the
    /// interface holding the default route, else the first non-loopback IPv4, else 127.0.0.1.
    #[arg(long, env = "PROCNODE_NODE_IP")]
    pub node_ip: Option<std::net::IpAddr>,

    /// Pods advertised in capacity.
    #[arg(long, env = "PROCNODE_MAX_PODS", default_value_t = DEFAULT_MAX_PODS)]
    pub max_pods: u32,

    /// CPU held back from allocatable (a quantity such as `500m`).
    #[arg(long, env = "PROCNODE_RESERVED_CPU", default_value = "0")]
    pub reserved_cpu: Quantity,

    /// Memory held back from allocatable (a quantity such as `512Mi`).
    #[arg(long, env = "PROCNODE_RESERVED_MEMORY", default_value = "0")]
    pub reserved_memory: Quantity,

    /// Upper bound on a pod's termination grace period.
    #[arg(long, env = "PROCNODE_MAX_GRACE_PERIOD", default_value = "300s", value_parser = parse_duration)]
    pub max_grace_period: Duration,

    /// Output bytes kept in memory per container run; the oldest output is dropped first.
    #[arg(long, env = "PROCNODE_LOG_BUFFER_BYTES", default_value_t = DEFAULT_LOG_BUFFER_BYTES)]
    pub log_buffer_bytes: usize,

    /// Output bytes kept in memory by all containers together; past it, a writing container
    /// drops its previous run, then its oldest output (keeping at least its newest 64 KiB).
    #[arg(long, env = "PROCNODE_LOG_TOTAL_BYTES", default_value_t = DEFAULT_LOG_TOTAL_BYTES)]
    pub log_total_bytes: usize,

    /// Also write every container's output to files under STATE_DIR/logs (CRI format, rotated),
    /// so that `kubectl logs` still shows it after procnode crashed or restarted (the
    /// in-memory buffers keep serving tails). `--log-files=false`: memory only.
    #[arg(long, env = "PROCNODE_LOG_FILES", num_args = 0..=1, default_value_t = true,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub log_files: bool,

    /// Size at which a container's log file is rotated.
    #[arg(long, env = "PROCNODE_LOG_FILE_MAX_SIZE", default_value = DEFAULT_LOG_FILE_MAX_SIZE)]
    pub log_file_max_size: Quantity,

    /// Log files kept per container run, the current one included.
    #[arg(long, env = "PROCNODE_LOG_FILE_MAX_FILES", default_value_t = DEFAULT_LOG_FILE_MAX_FILES,
          value_parser = parse_max_files)]
    pub log_file_max_files: usize,

    /// Uids besides root and procnode's own whose local processes may call the API without a
    /// token (`any`, or a list like `1000-1999`). Pods share the host's loopback: by default
    /// they cannot call it.
    #[arg(long, env = "PROCNODE_API_ALLOWED_UIDS")]
    pub api_allowed_uids: Option<crate::runtime::users::UidPolicy>,

    /// File holding a bearer token; when set, every request but `GET /` and `GET /healthz` must
    /// carry `Authorization: Bearer TOKEN` (401 otherwise).
    #[arg(long, env = "PROCNODE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "PROCNODE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "PROCNODE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Require a client certificate signed by this CA (PEM); connections without one are
    /// refused during the TLS handshake.
    #[arg(long, env = "PROCNODE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Longest time a request may take before 408 (follow streams are not limited once they
    /// have started). Default: the maximum grace period plus 60 s, so a delete always fits.
    #[arg(long, env = "PROCNODE_REQUEST_TIMEOUT", value_parser = parse_duration)]
    pub request_timeout: Option<Duration>,

    /// Containers (init containers included) a pod may have; a pod with more is refused (400).
    #[arg(long, env = "PROCNODE_MAX_CONTAINERS_PER_POD", default_value_t = DEFAULT_MAX_CONTAINERS_PER_POD,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_containers_per_pod: u32,

    /// HTTP connections open at once (web and kubelet API each); one more is answered 503
    /// and closed.
    #[arg(long, env = "PROCNODE_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// A connection that has not sent a complete request head within this time is closed.
    #[arg(long, env = "PROCNODE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Log follow streams open at once; more get 429.
    #[arg(long, env = "PROCNODE_MAX_FOLLOW_STREAMS", default_value_t = DEFAULT_MAX_FOLLOW_STREAMS)]
    pub max_follow_streams: usize,

    /// Largest request body accepted (413 above it).
    #[arg(long, env = "PROCNODE_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// First restart delay of a crashing container; doubles on each crash up to --backoff-max.
    #[arg(long, env = "PROCNODE_BACKOFF_INITIAL", default_value = "10s", value_parser = parse_duration)]
    pub backoff_initial: Duration,

    /// Longest restart delay of a crashing container.
    #[arg(long, env = "PROCNODE_BACKOFF_MAX", default_value = "300s", value_parser = parse_duration)]
    pub backoff_max: Duration,

    /// How often host metrics are sampled for capacity and node conditions.
    #[arg(long, env = "PROCNODE_HOST_REFRESH", default_value = "5s", value_parser = parse_duration)]
    pub host_refresh: Duration,

    /// MemoryPressure when available memory is below this quantity.
    #[arg(long, env = "PROCNODE_MEMORY_PRESSURE_BELOW", default_value = DEFAULT_MEMORY_PRESSURE_BELOW)]
    pub memory_pressure_below: Quantity,

    /// DiskPressure when the state dir's file system has less than this percent free.
    #[arg(long, env = "PROCNODE_DISK_PRESSURE_PERCENT", default_value_t = DEFAULT_DISK_PRESSURE_PERCENT,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub disk_pressure_percent: u8,

    /// PIDPressure when more than this percent of kernel.pid_max is in use.
    #[arg(long, env = "PROCNODE_PID_PRESSURE_PERCENT", default_value_t = DEFAULT_PID_PRESSURE_PERCENT,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub pid_pressure_percent: u8,

    /// Uids a container may ask for with `runAsUser` (and a fixed --default-uid must be in):
    /// `any`, or a list like `1000-1999,65534`. Root on the host is far more than root in a
    /// container (no user namespace, every capability), so 0 is refused unless listed (or
    /// `any`). A container asking for another uid fails to start with a message saying so.
    #[arg(long, env = "PROCNODE_ALLOWED_UIDS", default_value = DEFAULT_ALLOWED_IDS)]
    pub allowed_uids: crate::runtime::users::UidPolicy,

    /// Gids a container may ask for with `runAsGroup`, `supplementalGroups` and `fsGroup`:
    /// `any` or a list. gid 0 and the host's privileged groups (shadow, disk, ...) only when
    /// listed.
    #[arg(long, env = "PROCNODE_ALLOWED_GIDS", default_value = DEFAULT_ALLOWED_IDS)]
    pub allowed_gids: crate::runtime::users::UidPolicy,

    /// When procnode runs as root: what containers that set no `runAsUser` run as. `pod`: a
    /// uid (and gid) of the pod's own from --pod-uid-range, kept across procnode restarts and
    /// freed on delete, so that pods cannot read or signal each other; or a fixed uid (65534 is
    /// `nobody`), which must be allowed by --allowed-uids.
    #[arg(long, env = "PROCNODE_DEFAULT_UID", default_value = "pod")]
    pub default_uid: crate::runtime::users::DefaultUser,

    /// The uids (and gids) procnode hands out to pods, `FIRST-LAST`. No pod may name one of
    /// them in `runAsUser`.
    #[arg(long, env = "PROCNODE_POD_UID_RANGE", default_value = DEFAULT_POD_UID_RANGE, value_parser = parse_range)]
    pub pod_uid_range: (u32, u32),

    /// How containers are held: `shim` starts each under its own small supervisor process, so
    /// it keeps running (and its exit status is kept) across a procnode crash or upgrade;
    /// `none` makes each container procnode's own child: faster to start, but it does not
    /// survive procnode.
    #[arg(long, env = "PROCNODE_SUPERVISOR", value_enum, default_value_t = SupervisorMode::Shim)]
    pub supervisor: SupervisorMode,

    /// What a container sees as its root: `host` is the host's own file system (a volume is
    /// mounted at its mountPath only where that path exists on the host); `overlay` gives each
    /// container run a root of its own (procnode as root): the host's file system below a
    /// writable layer of the run's own, so any mountPath works and nothing the container
    /// writes outside its volumes reaches the host.
    #[arg(long, env = "PROCNODE_POD_ROOT", value_enum, default_value_t = PodRoot::Host)]
    pub pod_root: PodRoot,

    /// On SIGTERM/SIGINT, stop every pod (preStop, SIGTERM, grace period, SIGKILL) before
    /// exiting. Default: leave them to their supervisors, as a kubelet restart leaves its
    /// containers; the next procnode re-adopts them. (`procnode run`, and `--supervisor none`,
    /// always stop their pods.)
    #[arg(long, env = "PROCNODE_STOP_PODS_ON_EXIT", num_args = 0..=1, default_value_t = false,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub stop_pods_on_exit: bool,

    /// What SIGTERM does by default now (kept so that existing set-ups still start).
    #[arg(long, env = "PROCNODE_KEEP_PODS_ON_EXIT", hide = true, num_args = 0..=1,
          default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub keep_pods_on_exit: bool,

    /// The executable started as `EXE shim NAME` to supervise each container: by default
    /// `procnode-shim` beside this binary, else this binary itself.
    #[arg(long, env = "PROCNODE_SHIM_PATH")]
    pub shim_path: Option<PathBuf>,

    /// cgroups for pods (limits.memory, limits.cpu, pids limit, OOMKilled, a kill that reaches
    /// every process): `auto` uses v2 where the unified hierarchy has the memory and pids
    /// controllers, else v1; `off` tracks pods by process group only.
    #[arg(long, env = "PROCNODE_CGROUPS", value_enum, default_value_t = crate::runtime::cgroup::CgroupMode::Auto)]
    pub cgroups: crate::runtime::cgroup::CgroupMode,

    /// The cgroup that holds the pod cgroups: a NAME under procnode's own cgroup, or an absolute
    /// path in the hierarchy (`/procnode-pods`), outside procnode's own cgroup. With an absolute
    /// path the supervisors live there too (in `supervisors/`), so that a service manager
    /// stopping or restarting procnode's unit never kills a pod (the systemd unit sets one).
    #[arg(long, env = "PROCNODE_CGROUP_PARENT", default_value = DEFAULT_CGROUP_PARENT,
          value_parser = parse_cgroup_name)]
    pub cgroup_parent: String,

    /// Processes (and threads) a pod may have at once, where cgroups exist; 0 for no limit.
    #[arg(long, env = "PROCNODE_POD_PIDS_LIMIT", default_value_t = DEFAULT_POD_PIDS_LIMIT)]
    pub pod_pids_limit: u64,

    /// Directory under which hostPath volumes may point (repeat the flag, or separate with
    /// commas in the variable). None by default: every hostPath volume is refused.
    #[arg(
        long = "host-path-prefix",
        env = "PROCNODE_HOST_PATH_PREFIXES",
        value_delimiter = ','
    )]
    pub host_path_prefixes: Vec<PathBuf>,

    /// How often emptyDir volumes with a sizeLimit are measured (a pod past it is evicted).
    #[arg(long, env = "PROCNODE_VOLUME_CHECK_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub volume_check_interval: Duration,

    /// Node mode (`procnode node`): the kubeconfig to reach the API server. Default:
    /// `KUBECONFIG`, then ~/.kube/config, then the in-cluster service account.
    #[arg(long, env = "PROCNODE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Node mode: the taint of the node (`KEY=VALUE:EFFECT`, or `none`).
    #[arg(long, env = "PROCNODE_NODE_TAINT", default_value = DEFAULT_NODE_TAINT)]
    pub node_taint: String,

    /// Node mode: port of the kubelet API (logs, pods, stats) on the node IP.
    #[arg(long, env = "PROCNODE_KUBELET_PORT", default_value_t = DEFAULT_KUBELET_PORT)]
    pub kubelet_port: u16,

    /// Node mode: certificate chain (PEM) of the kubelet API; default: a self-signed one kept
    /// in the state directory.
    #[arg(long, env = "PROCNODE_KUBELET_TLS_CERT", requires = "kubelet_tls_key")]
    pub kubelet_tls_cert: Option<PathBuf>,

    /// Node mode: the private key (PEM) of --kubelet-tls-cert.
    #[arg(long, env = "PROCNODE_KUBELET_TLS_KEY", requires = "kubelet_tls_cert")]
    pub kubelet_tls_key: Option<PathBuf>,

    /// Node mode: who may use the kubelet API. `webhook`: a client certificate signed by
    /// --kubelet-client-ca or a bearer token the API server vouches for (TokenReview), then a
    /// SubjectAccessReview for nodes/proxy, nodes/stats, ... (as a kubelet with webhook
    /// authentication and authorization); `none`: anyone who reaches the port.
    #[arg(long, env = "PROCNODE_KUBELET_AUTH", value_enum, default_value_t = KubeletAuthMode::Webhook)]
    pub kubelet_auth: KubeletAuthMode,

    /// Node mode: CA (PEM) whose client certificates the kubelet API accepts (the API server
    /// shows one for `kubectl logs`); default: the cluster CA of the kubeconfig, if it has one.
    #[arg(long, env = "PROCNODE_KUBELET_CLIENT_CA")]
    pub kubelet_client_ca: Option<PathBuf>,

    /// Node mode: the node's status is written at least this often (and at once on a change).
    #[arg(long, env = "PROCNODE_NODE_STATUS_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub node_status_interval: Duration,

    /// Node mode: how often Secret, ConfigMap and projected volumes are read again from the
    /// API server (files change in place, as with the kubelet's periodic sync).
    #[arg(long, env = "PROCNODE_OBJECT_REFRESH_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub object_refresh_interval: Duration,

    /// Log format of procnode's own logs on stderr.
    #[arg(long, env = "PROCNODE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// A parsed configuration and where each setting came from.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// `(flag name, raw value, source)` for every setting, in `--help` order.
    pub sources: Vec<(String, Option<String>, &'static str)>,
}

impl Loaded {
    /// The effective settings as TOML, each commented with its source (for `--print-config`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (key, value, source) in &self.sources {
            match value {
                Some(v) => out.push_str(&format!(
                    "{key} = {}  # {source}\n",
                    toml::Value::String(v.clone())
                )),
                None => out.push_str(&format!("# {key} is not set\n")),
            }
        }
        out
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug)]
pub enum ConfigError {
    /// Help or version was asked for: print it and exit 0.
    Exit(clap::Error),
    /// One line saying what is wrong.
    Invalid(String),
}

/// `--config PATH`, `--config=PATH`, else `PROCNODE_CONFIG`.
fn config_file_path(args: &[std::ffi::OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os("PROCNODE_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Where the API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SupervisorMode {
    Shim,
    None,
}

/// What a container sees as its root (`--pod-root`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PodRoot {
    Host,
    Overlay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KubeletAuthMode {
    Webhook,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// The configuration with every default, as if started with no flags and an empty environment.
    pub fn defaults() -> Config {
        Config::parse_from_env_free(["procnode"])
    }

    /// Parses flags only, ignoring the environment (tests use it to stay hermetic).
    pub fn parse_from_env_free<I, T>(args: I) -> Config
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut cmd = <Config as clap::CommandFactory>::command();
        // Detach every env var so that only flags and defaults apply.
        let ids: Vec<_> = cmd.get_arguments().map(|a| a.get_id().clone()).collect();
        for id in ids {
            cmd = cmd.mut_arg(id, |a| a.env(None::<&str>));
        }
        let matches = cmd.get_matches_from(args);
        <Config as clap::FromArgMatches>::from_arg_matches(&matches).expect("valid defaults")
    }

    /// Parses `args` (program name first), the process environment and the TOML file named by
    /// `--config` or `PROCNODE_CONFIG`. An invalid setting from any source is one line of
    /// error; `--help` and `--version` come back as [`ConfigError::Exit`].
    pub fn load<I, T>(args: I) -> Result<Loaded, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let cmd = <Config as clap::CommandFactory>::command();
        let file = config_file_path(&args);
        let mut from_file = Vec::new();
        let mut injected = Vec::new();
        if let Some(path) = &file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::Invalid(format!("config file {}: {e}", path.display()))
            })?;
            let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                let msg = e.message().to_string();
                let line = e
                    .span()
                    .map(|r| text[..r.start].matches('\n').count() + 1)
                    .map(|l| format!(" (line {l})"))
                    .unwrap_or_default();
                ConfigError::Invalid(format!("config file {}{line}: {msg}", path.display()))
            })?;
            for (key, value) in &table {
                let flag = key.replace('_', "-");
                let bad = |why: &str| {
                    ConfigError::Invalid(format!("config file {}: `{key}` {why}", path.display()))
                };
                let Some(arg) = cmd
                    .get_arguments()
                    .find(|a| a.get_long() == Some(flag.as_str()))
                    .filter(|a| !matches!(a.get_long(), Some("config" | "print-config")))
                else {
                    return Err(bad(
                        "is not a setting (the keys are the long flag names of procnode --help)",
                    ));
                };
                let env_set = arg
                    .get_env()
                    .is_some_and(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
                let on_command_line = args.iter().skip(1).any(|a| {
                    let a = a.to_string_lossy();
                    a == format!("--{flag}") || a.starts_with(&format!("--{flag}="))
                });
                if env_set || on_command_line {
                    continue;
                }
                // Boolean settings take `--flag=true|false` (a bare `--flag` is true).
                let is_bool = arg.get_num_args() == Some((0..=1).into());
                match value {
                    toml::Value::Boolean(v) if is_bool => injected.push(format!("--{flag}={v}")),
                    _ if is_bool => return Err(bad("takes true or false")),
                    toml::Value::String(v) => injected.push(format!("--{flag}={v}")),
                    toml::Value::Integer(v) => injected.push(format!("--{flag}={v}")),
                    toml::Value::Float(v) => injected.push(format!("--{flag}={v}")),
                    toml::Value::Boolean(v) => injected.push(format!("--{flag}={v}")),
                    _ => return Err(bad("must be a string, number or boolean")),
                }
                from_file.push(arg.get_id().to_string());
            }
        }
        let mut all = Vec::with_capacity(args.len() + injected.len());
        all.extend(args.first().cloned());
        all.extend(injected.into_iter().map(Into::into));
        all.extend(args.iter().skip(1).cloned());
        let matches = cmd.try_get_matches_from(all).map_err(|e| {
            use clap::error::{ContextKind, ContextValue, ErrorKind};
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                return ConfigError::Exit(e);
            }
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid configuration");
            let first = first.trim_start_matches("error: ").to_string();
            let arg_from_file = match e.get(ContextKind::InvalidArg) {
                Some(ContextValue::String(a)) => from_file
                    .iter()
                    .any(|id| a.starts_with(&format!("--{} ", id.replace('_', "-")))),
                _ => false,
            };
            match (&file, arg_from_file) {
                (Some(path), true) => {
                    ConfigError::Invalid(format!("config file {}: {first}", path.display()))
                }
                _ => ConfigError::Invalid(first),
            }
        })?;
        let config = <Config as clap::FromArgMatches>::from_arg_matches(&matches)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let mut sources = Vec::new();
        for arg in <Config as clap::CommandFactory>::command().get_arguments() {
            let id = arg.get_id().as_str();
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "print-config" | "help" | "version") {
                continue;
            }
            let value = matches.get_raw(id).map(|vals| {
                vals.map(|v| v.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(",")
            });
            let source = match matches.value_source(id) {
                _ if from_file.iter().any(|f| f == id) => "config file",
                Some(clap::parser::ValueSource::CommandLine) => "flag",
                Some(clap::parser::ValueSource::EnvVariable) => "environment",
                Some(clap::parser::ValueSource::DefaultValue) => "default",
                _ => "unset",
            };
            sources.push((long.to_string(), value, source));
        }
        if config.state_dir.is_none() && config.default_state_dir().is_none() {
            return Err(ConfigError::Invalid(
                "no state directory: set --state-dir (PROCNODE_STATE_DIR), or HOME or XDG_STATE_HOME \
                 (a shared default such as /tmp/procnode would let other users of this host read \
                 and change procnode's records)"
                    .into(),
            ));
        }
        // Each supervisor's socket is STATE_DIR/sup/<16 hex digits>/<container>-<run>, and a
        // unix socket path holds at most 107 bytes: a longer state directory would fail every
        // pod's start, so it is refused here.
        let state_dir_len = config.state_dir().as_os_str().len();
        if config.supervisor == SupervisorMode::Shim && state_dir_len > MAX_STATE_DIR_BYTES {
            return Err(ConfigError::Invalid(format!(
                "--state-dir {} is {state_dir_len} bytes long: with supervisors it may be at most                  {MAX_STATE_DIR_BYTES} (their unix socket paths live under it, and a socket path                  holds at most 107 bytes)",
                config.state_dir().display()
            )));
        }
        Ok(Loaded { config, sources })
    }

    /// Where to listen.
    pub fn listen_addr(&self) -> ListenAddr {
        self.listen
            .clone()
            .unwrap_or_else(|| ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], self.port))))
    }

    /// The request timeout, resolved to its default.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
            .unwrap_or(self.max_grace_period + Duration::from_secs(60))
    }

    /// The bearer token from `--token-file`, if one is configured.
    pub fn token(&self) -> std::io::Result<Option<String>> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let token = std::fs::read_to_string(path).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("reading token file {}: {e}", path.display()),
            )
        })?;
        let token = token.trim().to_string();
        if token.is_empty() {
            return Err(std::io::Error::other(format!(
                "token file {} is empty",
                path.display()
            )));
        }
        Ok(Some(token))
    }

    /// The state directory, resolved to its default when not configured.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        // (A loaded configuration always has one: `load` refuses to go on without.)
        self.default_state_dir()
            .unwrap_or_else(|| std::env::temp_dir().join("procnode"))
    }

    /// Where the state lives when `--state-dir` is not set: `/var/lib/procnode` for root, else
    /// under XDG_STATE_HOME or HOME; `None` without either.
    fn default_state_dir(&self) -> Option<PathBuf> {
        if nix::unistd::geteuid().is_root() {
            return Some(PathBuf::from("/var/lib/procnode"));
        }
        if let Some(xdg) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
            return Some(PathBuf::from(xdg).join("procnode"));
        }
        std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .map(|home| PathBuf::from(home).join(".local/state/procnode"))
    }

    /// The pids limit of each pod's cgroup: `--pod-pids-limit`, none when 0.
    pub fn pids_limit(&self) -> Option<u64> {
        (self.pod_pids_limit > 0).then_some(self.pod_pids_limit)
    }

    /// The supervisor executable when not configured: `procnode-shim` installed beside this
    /// binary (the supervisor alone, a fraction of procnode's size: one runs per container),
    /// else this binary itself (`procnode shim NAME` works as well).
    pub fn shim_exe(&self) -> PathBuf {
        if let Some(path) = &self.shim_path {
            return path.clone();
        }
        let own = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("procnode"));
        let beside = own.with_file_name("procnode-shim");
        let executable = std::fs::metadata(&beside).is_ok_and(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.is_file() && m.permissions().mode() & 0o111 != 0
        });
        if executable {
            beside
        } else {
            own
        }
    }

    /// The node name, resolved to the host name when not configured.
    pub fn node_name(&self) -> String {
        self.node_name.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "procnode".to_string())
        })
    }
}

fn parse_range(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("`{s}` is not a range FIRST-LAST of uids (FIRST >= 1)");
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    let (lo, hi): (u32, u32) = (
        lo.trim().parse().map_err(|_| bad())?,
        hi.trim().parse().map_err(|_| bad())?,
    );
    if lo == 0 || lo > hi || hi == u32::MAX {
        return Err(bad());
    }
    Ok((lo, hi))
}

fn parse_listen(s: &str) -> Result<ListenAddr, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("`unix:` needs a path, for example unix:/run/procnode.sock".into());
        }
        return Ok(ListenAddr::Unix(PathBuf::from(path)));
    }
    if let Ok(port) = s.parse::<u16>() {
        return Ok(ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
    }
    let bad = || format!("`{s}` is not HOST:PORT, PORT or unix:PATH (for example 127.0.0.1:3000)");
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(ListenAddr::Tcp(addr));
    }
    // A host name (`localhost:3000`): its first address.
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .map_err(|_| bad())?
        .next()
        .map(ListenAddr::Tcp)
        .ok_or_else(bad)
}

fn parse_cgroup_name(s: &str) -> Result<String, String> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n != "."
            && n != ".."
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    let ok = match s.strip_prefix('/') {
        Some(path) => path.split('/').all(name_ok),
        None => name_ok(s),
    };
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{s}` is not a cgroup name (letters, digits, '-', '_', '.') or an absolute cgroup path (/NAME/...)"
        ))
    }
}

fn parse_max_files(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{s}` is not a count of at least 1")),
    }
}

/// Parses durations such as `10s`, `250ms`, `5m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 10s or 250ms: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_uid_range_default_is_the_runtimes() {
        assert_eq!(
            parse_range(DEFAULT_POD_UID_RANGE),
            Ok(crate::runtime::users::DEFAULT_POD_UID_RANGE)
        );
    }

    /// A state directory too long for the supervisors' socket paths is refused at start, not
    /// at every pod's start.
    #[test]
    fn a_state_dir_too_long_for_socket_paths_is_refused_with_supervisors_only() {
        let ok = "/".to_string() + &"d".repeat(MAX_STATE_DIR_BYTES - 1);
        let long = "/".to_string() + &"d".repeat(MAX_STATE_DIR_BYTES);
        assert!(Config::load(["procnode", "--state-dir", &ok]).is_ok());
        match Config::load(["procnode", "--state-dir", &long]) {
            Err(ConfigError::Invalid(m)) => assert!(m.contains("--state-dir"), "{m}"),
            other => panic!("accepted: {:?}", other.map(|_| ())),
        }
        assert!(Config::load(["procnode", "--state-dir", &long, "--supervisor", "none"]).is_ok());
        // The longest socket path such a directory can have fits.
        let socket = format!("{ok}/sup/{:016x}/999-{}", u64::MAX, 9_999_999_999u64);
        assert!(
            std::os::unix::net::SocketAddr::from_pathname(&socket).is_ok(),
            "{socket}"
        );
    }

    #[test]
    fn defaults_listen_on_loopback_3000() {
        let c = Config::defaults();
        assert_eq!(
            c.listen_addr(),
            ListenAddr::Tcp("127.0.0.1:3000".parse().unwrap())
        );
        assert_eq!(c.max_pods, DEFAULT_MAX_PODS);
        assert_eq!(
            c.request_timeout(),
            DEFAULT_MAX_GRACE + Duration::from_secs(60)
        );
        assert_eq!(c.max_grace_period, DEFAULT_MAX_GRACE);
        assert_eq!(c.backoff_initial, DEFAULT_BACKOFF_INITIAL);
        assert_eq!(c.backoff_max, DEFAULT_BACKOFF_MAX);
        assert_eq!(c.host_refresh, DEFAULT_HOST_REFRESH);
    }

    #[test]
    fn listen_flag_beats_port_and_accepts_a_bare_port() {
        let tcp = |s: &str| ListenAddr::Tcp(s.parse().unwrap());
        let c =
            Config::parse_from_env_free(["procnode", "--port", "4000", "--listen", "0.0.0.0:5000"]);
        assert_eq!(c.listen_addr(), tcp("0.0.0.0:5000"));
        let c = Config::parse_from_env_free(["procnode", "--listen", "7000"]);
        assert_eq!(c.listen_addr(), tcp("127.0.0.1:7000"));
        let c = Config::parse_from_env_free(["procnode", "--port", "4000"]);
        assert_eq!(c.listen_addr(), tcp("127.0.0.1:4000"));
        let c = Config::parse_from_env_free(["procnode", "--listen", "unix:/run/p.sock"]);
        assert_eq!(c.listen_addr(), ListenAddr::Unix("/run/p.sock".into()));
    }

    #[test]
    fn durations_and_quantities_parse() {
        let c = Config::parse_from_env_free([
            "procnode",
            "--backoff-initial",
            "250ms",
            "--reserved-memory",
            "1Gi",
        ]);
        assert_eq!(c.backoff_initial, Duration::from_millis(250));
        assert_eq!(c.reserved_memory.to_bytes(), Some(1 << 30));
    }

    fn load_with_file(toml: &str, flags: &[&str]) -> Result<Loaded, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("procnode.toml");
        std::fs::write(&path, toml).unwrap();
        let mut args = vec![
            "procnode".to_string(),
            format!("--config={}", path.display()),
        ];
        args.extend(flags.iter().map(|s| s.to_string()));
        Config::load(args)
    }

    fn invalid(r: Result<Loaded, ConfigError>) -> String {
        match r {
            Err(ConfigError::Invalid(msg)) => msg,
            other => panic!("expected an invalid configuration, got {other:?}"),
        }
    }

    #[test]
    fn config_file_fills_what_flags_do_not_set() {
        let toml = "max-pods = 50\nbackoff_initial = \"2s\"\nlog-files = true\nreserved-memory = \"1Gi\"\n";
        let loaded = load_with_file(toml, &["--max-pods", "7"]).unwrap();
        let c = &loaded.config;
        assert_eq!(c.max_pods, 7, "a flag beats the file");
        assert_eq!(c.backoff_initial, Duration::from_secs(2));
        assert!(c.log_files);
        assert_eq!(c.reserved_memory.to_bytes(), Some(1 << 30));
        let source = |k: &str| loaded.sources.iter().find(|s| s.0 == k).unwrap().2;
        assert_eq!(source("max-pods"), "flag");
        assert_eq!(source("backoff-initial"), "config file");
        assert_eq!(source("backoff-max"), "default");
        let rendered = loaded.render();
        assert!(
            rendered.contains("backoff-initial = \"2s\"  # config file"),
            "{rendered}"
        );
    }

    #[test]
    fn bad_config_files_are_one_clear_line() {
        let msg = invalid(load_with_file("port = \"abc\"\n", &[]));
        assert!(
            msg.contains("config file") && msg.contains("'abc'") && msg.contains("--port"),
            "{msg}"
        );
        let msg = invalid(load_with_file("no-such-setting = 1\n", &[]));
        assert!(msg.contains("`no-such-setting` is not a setting"), "{msg}");
        let msg = invalid(load_with_file("max-pods = [\n", &[]));
        assert!(msg.contains("line 1"), "{msg}");
        let msg = invalid(load_with_file("log-files = \"yes\"\n", &[]));
        assert!(msg.contains("takes true or false"), "{msg}");
        let msg = invalid(load_with_file("port = { a = 1 }\n", &[]));
        assert!(msg.contains("must be a string, number or boolean"), "{msg}");
        for msg in [
            invalid(load_with_file("port = 1\n", &["--max-pods=-3"])),
            invalid(Config::load([
                "procnode",
                "--config",
                "/nonexistent/procnode.toml",
            ])),
        ] {
            assert!(!msg.contains('\n'), "one line: {msg}");
        }
    }
}
