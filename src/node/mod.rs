//! The node as the broker sees it: capacity, conditions and addresses, from live host metrics.
//!
//! A background task samples the host every `host_refresh` and publishes a [`Snapshot`], so the
//! node endpoints never fail and never wait for the host: they read the last one (an `Arc`).

pub mod stats;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{NodeAddress, NodeCondition};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::config::Config;
use crate::quantity::Quantity;
use crate::runtime::NodeFacts;

/// What the node offers and how it is, as of the last sample: typed, made into JSON by the
/// front end that sends it (the web API's capacity/conditions/addresses answers, node mode's
/// Node status).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Allocatable resources: cpu, memory, ephemeral-storage, pods.
    pub capacity: BTreeMap<String, K8sQuantity>,
    pub conditions: Vec<NodeCondition>,
    pub addresses: Vec<NodeAddress>,
}

/// One sample of the host.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostSample {
    pub cpus: u64,
    pub memory_total: u64,
    pub memory_available: u64,
    pub disk_total: u64,
    pub disk_available: u64,
    pub pids_used: u64,
    pub pids_max: u64,
}

/// Thresholds and fixed facts that turn samples into answers.
#[derive(Debug, Clone)]
struct Policy {
    max_pods: u32,
    reserved_cpu: Quantity,
    reserved_memory: Quantity,
    memory_pressure_below: u64,
    disk_pressure_percent: u8,
    pid_pressure_percent: u8,
    node_name: String,
    node_ip: IpAddr,
    /// Whether pods get cgroups, and where (or why not), for the PodResourceLimits condition.
    cgroups: (bool, String),
}

struct ConditionState {
    status: bool,
    since: Timestamp,
}

pub struct Node {
    policy: Policy,
    state_dir: PathBuf,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Last status and transition time of Ready, MemoryPressure, DiskPressure, PIDPressure.
    transitions: std::sync::Mutex<[ConditionState; 4]>,
    facts: NodeFacts,
    stats: stats::StatsCollector,
    /// When this procnode started (the PodResourceLimits condition cannot change after).
    started: Timestamp,
    /// Container exits the runtime holds because the state directory cannot take them: the
    /// node reports DiskPressure while there are any.
    pub unrecorded_exits: Arc<std::sync::atomic::AtomicUsize>,
}

impl Node {
    /// Samples the host once (so the first answer is real), ready for [`Node::refresh_every`].
    pub fn new(config: &Config, cgroups: &crate::runtime::cgroup::Cgroups) -> Arc<Node> {
        let state_dir = config.state_dir();
        let node_name = config.node_name();
        let node_ip = config.node_ip.unwrap_or_else(primary_ip);
        let policy = Policy {
            max_pods: config.max_pods,
            reserved_cpu: config.reserved_cpu,
            reserved_memory: config.reserved_memory,
            memory_pressure_below: config.memory_pressure_below.to_bytes().unwrap_or(0),
            disk_pressure_percent: config.disk_pressure_percent,
            pid_pressure_percent: config.pid_pressure_percent,
            node_name: node_name.clone(),
            node_ip,
            cgroups: (cgroups.available(), cgroups.status().to_string()),
        };
        let sample = sample_host(&state_dir);
        let (cpu, memory) = allocatable(&policy, &sample);
        let now = Timestamp::now();
        let node = Node {
            facts: NodeFacts {
                node_name,
                host_ip: node_ip.to_string(),
                cpu,
                memory,
            },
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            transitions: std::sync::Mutex::new(std::array::from_fn(|_| ConditionState {
                status: false,
                since: now,
            })),
            stats: stats::StatsCollector::new(policy.node_name.clone()),
            started: now,
            policy,
            state_dir,
            unrecorded_exits: Default::default(),
        };
        node.publish(&sample, now);
        Arc::new(node)
    }

    pub fn facts(&self) -> NodeFacts {
        self.facts.clone()
    }

    /// The kubelet stats Summary for `pods` (blocking: reads `/proc`).
    pub fn stats_summary(&self, pods: &[stats::PodRef]) -> serde_json::Value {
        self.stats.summary(pods, &self.state_dir)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().expect("snapshot lock").clone()
    }

    /// Samples the host every `every` until the task is dropped.
    pub async fn refresh_every(self: Arc<Node>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let dir = self.state_dir.clone();
            if let Ok(sample) = tokio::task::spawn_blocking(move || sample_host(&dir)).await {
                self.publish(&sample, Timestamp::now());
            }
        }
    }

    fn publish(&self, s: &HostSample, now: Timestamp) {
        let p = &self.policy;
        let (cpu, memory) = allocatable(p, s);
        let capacity = [
            ("cpu", cpu.format_cpu()),
            ("memory", memory.format_bytes()),
            (
                "ephemeral-storage",
                Quantity::from_units(s.disk_total as i128).format_bytes(),
            ),
            ("pods", p.max_pods.to_string()),
        ]
        .into_iter()
        .map(|(name, q)| (name.to_string(), K8sQuantity(q)))
        .collect();

        let memory_pressure = s.memory_available < p.memory_pressure_below;
        let disk_pressure = (s.disk_total > 0
            && s.disk_available * 100 < s.disk_total * p.disk_pressure_percent as u64)
            || self
                .unrecorded_exits
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0;
        let pid_pressure =
            s.pids_max > 0 && s.pids_used * 100 > s.pids_max * p.pid_pressure_percent as u64;
        let wanted = [
            (
                "Ready",
                true,
                "KubeletReady",
                "procnode is ready to run pods",
                "KubeletNotReady",
                "",
            ),
            (
                "MemoryPressure",
                memory_pressure,
                "KubeletHasInsufficientMemory",
                "available memory is below the threshold",
                "KubeletHasSufficientMemory",
                "procnode has sufficient memory available",
            ),
            (
                "DiskPressure",
                disk_pressure,
                "KubeletHasDiskPressure",
                "the state directory's file system is low on space, or cannot be written",
                "KubeletHasNoDiskPressure",
                "procnode has no disk pressure",
            ),
            (
                "PIDPressure",
                pid_pressure,
                "KubeletHasInsufficientPID",
                "the host is close to its process limit",
                "KubeletHasSufficientPID",
                "procnode has sufficient PID available",
            ),
        ];
        let mut transitions = self.transitions.lock().expect("transitions lock");
        let mut conditions: Vec<NodeCondition> = wanted
            .iter()
            .zip(transitions.iter_mut())
            .map(
                |(&(type_, status, r_true, m_true, r_false, m_false), state)| {
                    if state.status != status {
                        state.status = status;
                        state.since = now;
                    }
                    let (reason, message) = if status {
                        (r_true, m_true)
                    } else {
                        (r_false, m_false)
                    };
                    NodeCondition {
                        type_: type_.into(),
                        status: if status { "True" } else { "False" }.into(),
                        reason: Some(reason.into()),
                        message: Some(message.into()),
                        last_heartbeat_time: Some(Time(now)),
                        last_transition_time: Some(Time(state.since)),
                    }
                },
            )
            .collect();
        drop(transitions);
        // Not a kubelet condition: tells whoever reads the node whether limits are enforced.
        let (limited, how) = &p.cgroups;
        conditions.push(NodeCondition {
            type_: "PodResourceLimits".into(),
            status: if *limited { "True" } else { "False" }.into(),
            reason: Some(if *limited { "PodCgroups" } else { "NoCgroups" }.into()),
            message: Some(if *limited {
                format!("limits.memory, limits.cpu and a pids limit are enforced: {how}")
            } else {
                format!(
                    "resource limits are not enforced, pods are tracked by process group: {how}"
                )
            }),
            last_heartbeat_time: Some(Time(now)),
            last_transition_time: Some(Time(self.started)),
        });
        let addresses = vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: p.node_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: p.node_name.clone(),
            },
        ];
        let snapshot = Snapshot {
            capacity,
            conditions,
            addresses,
        };
        *self.snapshot.write().expect("snapshot lock") = Arc::new(snapshot);
    }
}

/// CPU and memory the node offers pods: the host's, less the configured reserve.
fn allocatable(p: &Policy, s: &HostSample) -> (Quantity, Quantity) {
    (
        Quantity::from_units(s.cpus as i128).saturating_sub(&p.reserved_cpu),
        Quantity::from_units(s.memory_total as i128).saturating_sub(&p.reserved_memory),
    )
}

/// Reads the host's figures. Never fails: what cannot be read is reported as zero.
pub fn sample_host(state_dir: &Path) -> HostSample {
    use sysinfo::{MemoryRefreshKind, RefreshKind, System};
    let sys = System::new_with_specifics(
        RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let (disk_total, disk_available) = disk_space(state_dir);
    let pids_max = read_number("/proc/sys/kernel/pid_max").unwrap_or(0);
    // The fourth field of /proc/loadavg is "runnable/total" scheduling entities.
    let pids_used = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().nth(3)?.split('/').nth(1)?.parse().ok())
        .unwrap_or(0);
    HostSample {
        cpus,
        memory_total: sys.total_memory(),
        memory_available: sys.available_memory(),
        disk_total,
        disk_available,
        pids_used,
        pids_max,
    }
}

fn read_number(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Total and available bytes of the file system holding `dir` (or its nearest existing parent).
fn disk_space(dir: &Path) -> (u64, u64) {
    let mut dir = dir;
    loop {
        if let Ok(st) = nix::sys::statvfs::statvfs(dir) {
            let frag = st.fragment_size();
            return (st.blocks() * frag, st.blocks_available() * frag);
        }
        match dir.parent() {
            Some(parent) => dir = parent,
            None => return (0, 0),
        }
    }
}

/// The host's primary address: the one on the interface of the default route, else the first
/// non-loopback IPv4 address, else 127.0.0.1.
pub fn primary_ip() -> IpAddr {
    let default_iface = std::fs::read_to_string("/proc/net/route")
        .ok()
        .and_then(|table| {
            table.lines().skip(1).find_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
            })
        });
    let addrs: Vec<(String, std::net::Ipv4Addr)> = nix::ifaddrs::getifaddrs()
        .map(|it| {
            it.filter_map(|a| {
                let ip = a.address?.as_sockaddr_in()?.ip();
                Some((a.interface_name, ip))
            })
            .collect()
        })
        .unwrap_or_default();
    if let Some(iface) = default_iface {
        if let Some((_, ip)) = addrs.iter().find(|(name, _)| *name == iface) {
            return IpAddr::V4(*ip);
        }
    }
    addrs
        .iter()
        .find(|(_, ip)| !ip.is_loopback())
        .map(|(_, ip)| IpAddr::V4(*ip))
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_real_host_figures() {
        let s = sample_host(Path::new("/"));
        assert!(s.cpus >= 1);
        assert!(s.memory_total > 0 && s.memory_available <= s.memory_total);
        assert!(s.disk_total > 0);
        assert!(s.pids_max > 0 && s.pids_used > 0);
    }

    #[test]
    fn pressure_conditions_transition_with_their_own_time() {
        let config = Config::parse_from_env_free(["procnode", "--state-dir", "/tmp"]);
        let node = Node::new(&config, &crate::runtime::cgroup::Cgroups::none("test"));
        let healthy = HostSample {
            cpus: 2,
            memory_total: 8 << 30,
            memory_available: 4 << 30,
            disk_total: 100,
            disk_available: 50,
            pids_used: 10,
            pids_max: 1000,
        };
        let t1 = Timestamp::from_second(1_000).unwrap();
        let t2 = Timestamp::from_second(2_000).unwrap();
        let t3 = Timestamp::from_second(3_000).unwrap();
        node.publish(&healthy, t1);
        node.publish(&healthy, t2);
        let low = HostSample {
            memory_available: 1 << 20,
            ..healthy
        };
        node.publish(&low, t3);
        let conds = node.snapshot().conditions.clone();
        let mem = conds.iter().find(|c| c.type_ == "MemoryPressure").unwrap();
        assert_eq!(mem.status, "True");
        assert_eq!(mem.last_transition_time.as_ref().unwrap().0, t3);
        let ready = conds.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "True");
        assert_ne!(
            ready.last_transition_time.as_ref().unwrap().0,
            t3,
            "Ready did not change"
        );
        let cap = node.snapshot().capacity.clone();
        assert_eq!(cap["cpu"].0, "2");
        assert_eq!(cap["pods"].0, "110");
        assert_eq!(cap["memory"].0, "8388608Ki");
    }
}
