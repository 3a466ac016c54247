//! The runtime's settings, fixed at start ([`Settings`]), and what procnode's process and the
//! host can hold ([`Budget`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::layout::StateLayout;
use super::pod::{PodEntry, PodKey};
use super::{cgroup, safepath, users, volumes, NodeFacts};
use crate::config::Config;
use crate::logs::{FileConfig, LogBudget, LogConfig, OpenFiles};

/// What procnode's process and the host can hold at most (see [`Budget::refusal`]).
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// procnode's RLIMIT_NOFILE (raised to its hard limit at start-up).
    pub open_files: u64,
    /// `kernel.pid_max`.
    pub pids: u64,
    /// Descriptors procnode holds per running container: its supervisor's connection (which
    /// relays the output), or, without supervisors, the two output pipes.
    pub fds_per_container: u64,
    /// Log files kept open between writes, node-wide (see [`crate::logs::OpenFiles`]).
    pub open_log_files: u64,
}

/// What running containers take: how many, and how many of them have a stdin
/// (`kubectl attach`: procnode holds its pipe or terminal too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub containers: usize,
    pub consoles: usize,
}

impl std::ops::Add for Usage {
    type Output = Usage;

    fn add(self, o: Usage) -> Usage {
        Usage {
            containers: self.containers + o.containers,
            consoles: self.consoles + o.consoles,
        }
    }
}

impl std::iter::Sum for Usage {
    fn sum<I: Iterator<Item = Usage>>(all: I) -> Usage {
        all.fold(Usage::default(), |a, b| a + b)
    }
}

/// One resource admission counts per container: its name in the kubelet's refusal reason
/// (`OutOf<resource>`) and message, what each running container (and each stdin) takes of
/// it, what is kept for everything else, and where the capacity comes from.
struct Need {
    resource: &'static str,
    what: &'static str,
    per_container: fn(&Budget) -> u64,
    per_console: u64,
    reserve: fn(&Budget) -> u64,
    capacity: fn(&Budget) -> u64,
    source: &'static str,
}

/// Descriptors: per running container, what [`Budget::fds_per_container`] says, and one more
/// for a stdin; 256 are kept for listeners, connections, records and probes, beside the log
/// files kept open. Pids: a supervisor and a process per container; 1024 kept for the host.
const NEEDS: [Need; 2] = [
    Need {
        resource: "nofile",
        what: "open files",
        per_container: |b| b.fds_per_container,
        per_console: 1,
        reserve: |b| 256 + b.open_log_files,
        capacity: |b| b.open_files,
        source: "procnode's RLIMIT_NOFILE",
    },
    Need {
        resource: "pids",
        what: "pids",
        per_container: |_| 2,
        per_console: 0,
        reserve: |_| 1024,
        capacity: |b| b.pids,
        source: "kernel.pid_max",
    },
];

impl Budget {
    /// Raises RLIMIT_NOFILE to the hard limit (each running container holds a descriptor or
    /// two) and reads what this process and host can hold; `supervise` and `log_files` say
    /// what each container costs.
    pub fn of_this_process(supervise: bool, log_files: bool) -> Budget {
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
        Budget {
            open_files,
            pids,
            fds_per_container: if supervise { 1 } else { 2 },
            // A sixteenth of the descriptors, at most 1024.
            open_log_files: if log_files {
                (open_files / 16).min(1024)
            } else {
                0
            },
        }
    }

    /// Whether `wanted` more containers fit beside `running` ones: `None`, or the kubelet's
    /// reason and message of the refusal (`OutOfnofile`, `OutOfpids`).
    pub fn refusal(&self, running: Usage, wanted: Usage) -> Option<(String, String)> {
        NEEDS.iter().find_map(|need| {
            let take = |u: Usage| {
                u.containers as u64 * (need.per_container)(self) + u.consoles as u64 * need.per_console
            };
            let both = running + wanted;
            let capacity = (need.capacity)(self);
            let reserve = (need.reserve)(self);
            (take(both) + reserve > capacity).then(|| {
                (
                    format!("OutOf{}", need.resource),
                    format!(
                        "Node didn't have enough resource: {}, requested: {}, used: {}, capacity: {capacity} ({})",
                        need.what,
                        take(wanted),
                        take(running) + reserve,
                        need.source
                    ),
                )
            })
        })
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// Every path under the state directory.
    pub layout: StateLayout,
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
        let supervise = config.supervisor == crate::config::SupervisorMode::Shim;
        let budget = Budget::of_this_process(supervise, config.log_files);
        Settings {
            layout: StateLayout::new(config.state_dir()),
            metrics: Arc::default(),
            users: users::UserPolicy {
                allowed: config.allowed_uids.clone(),
                allowed_gids: config.allowed_gids.clone(),
                default_user: config.default_uid,
                pod_range: config.pod_uid_range,
                own_uid: nix::unistd::geteuid().as_raw(),
            },
            pod_ids: Arc::new(users::PodIds::new(config.pod_uid_range)),
            supervise,
            shim_exe: config.shim_exe(),
            logs: LogConfig {
                per_container: config.log_buffer_bytes,
                budget: Arc::new(LogBudget::new(config.log_total_bytes)),
                files: config.log_files.then(|| FileConfig {
                    max_size: config.log_file_max_size.to_bytes().unwrap_or(u64::MAX),
                    max_files: config.log_file_max_files,
                    open: Arc::new(OpenFiles::new(budget.open_log_files as usize)),
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
                overlay_root: config.pod_root == crate::config::PodRoot::Overlay
                    && nix::unistd::geteuid().is_root(),
            },
            volume_check_interval: config.volume_check_interval,
            objects: None,
            object_refresh_interval: config.object_refresh_interval,
            unrecorded_exits: Default::default(),
            budget,
            max_containers_per_pod: config.max_containers_per_pod as usize,
        }
    }

    /// The grace period: the delete's own, else the pod's, else 30 s; never above the cap.
    pub fn grace_period(&self, entry: &PodEntry, requested: Option<Duration>) -> Duration {
        let from_spec = entry
            .pod()
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .map(|s| Duration::from_secs(s.max(0) as u64));
        requested
            .or(from_spec)
            .unwrap_or(crate::config::DEFAULT_GRACE)
            .min(self.max_grace)
    }

    /// The name of the pod's cgroup (the kubelet's `pod<UID>`).
    pub fn pod_cgroup(&self, entry: &PodEntry) -> String {
        format!("pod{}", entry.uid())
    }

    /// Makes (if missing) and opens the pod directory, with its owner and mode set again (root,
    /// the pod's group, 0750). Blocking.
    pub fn open_pod_dir(&self, entry: &PodEntry) -> std::io::Result<safepath::Dir> {
        use safepath::{Dir, Links, Owner};
        // procnode's own directory (it may be a mount of its own: opened by path, not
        // beneath the state directory).
        let pods = match Dir::open_trusted(&self.layout.pods()) {
            Ok(pods) => pods,
            Err(_) => Dir::open_trusted(self.layout.root())?.make_dirs(
                Path::new("pods"),
                Owner::mode(0o711),
                Links::None,
            )?,
        };
        let owner = match entry.pod_id() {
            Some(gid) => Owner {
                mode: 0o750,
                ids: Some((self.users.own_uid, gid)),
            },
            None => Owner::mode(0o755),
        };
        let name = StateLayout::pod_dir_name(entry.key(), entry.uid());
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

    /// The name of the supervisor of run `run` of container `idx` (see
    /// [`StateLayout::supervisor_name`]).
    pub fn supervisor_name(&self, entry: &PodEntry, idx: usize, run: u64) -> String {
        self.layout
            .supervisor_name(entry.key(), entry.uid(), idx, run)
    }

    /// The pod's working directory (its containers' unless `workingDir` says otherwise).
    pub fn work_path(&self, entry: &PodEntry) -> PathBuf {
        self.layout.work_path(entry.key(), entry.uid())
    }

    /// The directory of run `run` of container `idx`'s own root, when runs get one.
    pub fn run_layer(&self, entry: &PodEntry, idx: usize, run: u64) -> Option<PathBuf> {
        self.volumes.overlay_root.then(|| {
            self.layout
                .pod_layers(entry.key(), entry.uid())
                .join(format!("{idx}-{run}"))
        })
    }

    /// Every directory the pod has under the state directory, its own (`pods/`) first, then its
    /// log files' and its runs' layers': what goes with the pod.
    pub fn pod_dirs(&self, entry: &PodEntry) -> Vec<PathBuf> {
        let (key, uid) = (entry.key(), entry.uid());
        std::iter::once(self.layout.pod_dir(key, uid))
            .chain(self.pod_log_dir(key, uid))
            .chain(std::iter::once(self.layout.pod_layers(key, uid)))
            .collect()
    }

    /// Where the pod's log files go (one subdirectory per container), when they are kept.
    pub fn pod_log_dir(&self, key: &PodKey, uid: &str) -> Option<PathBuf> {
        self.logs
            .files
            .as_ref()
            .map(|_| self.layout.pod_log_dir(key, uid))
    }
}
