//! Configuration: one [`Config`] built from command-line flags and environment variables.
//!
//! Precedence is flag > environment variable > built-in default. Every default is a named
//! `DEFAULT_*` constant so that the README, `--help` and the code cannot drift apart.

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
/// Bytes of output kept in memory by all containers together.
pub const DEFAULT_LOG_TOTAL_BYTES: usize = 256 * 1024 * 1024;
/// Size at which a container's log file is rotated (the kubelet's containerLogMaxSize).
pub const DEFAULT_LOG_FILE_MAX_SIZE: &str = "10Mi";
/// Log files kept per container run, the current one included (the kubelet's containerLogMaxFiles).
pub const DEFAULT_LOG_FILE_MAX_FILES: usize = 5;
/// uid of containers without `runAsUser` when procnode runs as root (`nobody`).
pub const DEFAULT_UID: u32 = 65534;
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

/// procnode: runs Kubernetes pods as plain supervised processes behind a Virtual Kubelet web broker.
#[derive(Debug, Clone, Parser)]
#[command(name = "procnode", version, about, long_about = None)]
pub struct Config {
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

    /// Also write every container's output to files under STATE_DIR/logs (CRI format, rotated).
    #[arg(long, env = "PROCNODE_LOG_FILES")]
    pub log_files: bool,

    /// Size at which a container's log file is rotated.
    #[arg(long, env = "PROCNODE_LOG_FILE_MAX_SIZE", default_value = DEFAULT_LOG_FILE_MAX_SIZE)]
    pub log_file_max_size: Quantity,

    /// Log files kept per container run, the current one included.
    #[arg(long, env = "PROCNODE_LOG_FILE_MAX_FILES", default_value_t = DEFAULT_LOG_FILE_MAX_FILES,
          value_parser = parse_max_files)]
    pub log_file_max_files: usize,

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

    /// Uids containers may run as: `any`, or a list like `1000-1999,65534`. A container asking
    /// for another one fails to start with a message saying so.
    #[arg(long, env = "PROCNODE_ALLOWED_UIDS", default_value = "any")]
    pub allowed_uids: crate::runtime::users::UidPolicy,

    /// When procnode runs as root: the uid of containers that set no `runAsUser` (`nobody` by
    /// default, so that a root agent does not run every pod as root; 0 restores that).
    #[arg(long, env = "PROCNODE_DEFAULT_UID", default_value_t = DEFAULT_UID)]
    pub default_uid: u32,

    /// How containers are held: `shim` starts each under its own small supervisor process, so
    /// it keeps running (and its exit status is kept) across a procnode crash or upgrade;
    /// `none` makes each container procnode's own child: faster to start, but it does not
    /// survive procnode.
    #[arg(long, env = "PROCNODE_SUPERVISOR", value_enum, default_value_t = SupervisorMode::Shim)]
    pub supervisor: SupervisorMode,

    /// On SIGTERM/SIGINT, exit without stopping the pods: with supervisors they keep running and
    /// the next procnode re-adopts them (for upgrades). Default: stop every pod first.
    #[arg(long, env = "PROCNODE_KEEP_PODS_ON_EXIT")]
    pub keep_pods_on_exit: bool,

    /// The executable started as `EXE shim NAME` to supervise each container (this procnode
    /// binary by default).
    #[arg(long, env = "PROCNODE_SHIM_PATH")]
    pub shim_path: Option<PathBuf>,

    /// Log format of procnode's own logs on stderr.
    #[arg(long, env = "PROCNODE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
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
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/lib/procnode");
        }
        if let Some(xdg) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(xdg).join("procnode");
        }
        match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => PathBuf::from(home).join(".local/state/procnode"),
            None => std::env::temp_dir().join("procnode"),
        }
    }

    /// The supervisor executable, resolved to this binary when not configured.
    pub fn shim_exe(&self) -> PathBuf {
        self.shim_path
            .clone()
            .or_else(|| std::env::current_exe().ok())
            .unwrap_or_else(|| PathBuf::from("procnode"))
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
    s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
        format!("`{s}` is not HOST:PORT, PORT or unix:PATH (for example 127.0.0.1:3000)")
    })
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
}
