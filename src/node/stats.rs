//! The kubelet's stats Summary (`/stats/summary` shape) measured from the real process trees.
//!
//! A container with a cgroup is measured from it (CPU of every process that ever ran in it,
//! working set = memory less inactive file cache, RSS = anonymous memory). Without one, a
//! container is its process group: one pass over `/proc` reads
//! every process's group, CPU ticks and resident memory, and sums them per group. CPU rates
//! (`usageNanoCores`) come from the difference to the previous call; the first time a container
//! is seen its rate is its average since it started. What this cannot see: processes that left
//! their group with `setsid` (a pod cgroup catches those), and CPU time of processes that
//! exited before anyone waited for them inside the group.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

/// One running container as the runtime knows it.
#[derive(Debug, Clone)]
pub struct ContainerRef {
    pub name: String,
    pub started_at: Timestamp,
    /// Its process group (the pid of its first process).
    pub pgid: i32,
    /// Its cgroup's figures, when it has a cgroup (preferred over the process group's).
    pub cgroup: Option<crate::runtime::cgroup::CgroupUsage>,
}

/// One pod as the runtime knows it.
#[derive(Debug, Clone)]
pub struct PodRef {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub start_time: Option<Timestamp>,
    pub containers: Vec<ContainerRef>,
}

/// Every pod the runtime holds with its running containers' process groups and cgroup
/// figures, for the Summary. Blocking (reads cgroup files).
pub fn pod_refs(runtime: &crate::runtime::Runtime) -> Vec<PodRef> {
    use crate::runtime::status::ContainerState;
    let settings = runtime.settings();
    runtime
        .list()
        .iter()
        .map(|entry| {
            // What runs, under the lock; the cgroup files are read after it.
            let (start_time, running) = entry.read_state(|state| {
                let running: Vec<(String, Timestamp, i32)> = state
                    .init
                    .iter()
                    .chain(state.containers.iter())
                    .filter_map(|c| match (&c.state, c.pid) {
                        (ContainerState::Running { started_at }, Some(pgid)) => {
                            Some((c.name.clone(), *started_at, pgid))
                        }
                        _ => None,
                    })
                    .collect();
                (state.start_time, running)
            });
            let pod_cgroup = settings.pod_cgroup(entry);
            let containers = running
                .into_iter()
                .map(|(name, started_at, pgid)| ContainerRef {
                    cgroup: settings.cgroups.usage(&pod_cgroup, &name),
                    name,
                    started_at,
                    pgid,
                })
                .collect();
            PodRef {
                name: entry.key().name.clone(),
                namespace: entry.key().namespace.clone(),
                uid: entry.uid().to_string(),
                start_time,
                containers,
            }
        })
        .collect()
}

/// Usage of one process group.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GroupUsage {
    /// CPU time of the live processes and of the children they have waited for.
    pub cpu_ns: u64,
    /// Memory in use (resident memory, or the cgroup's usage).
    pub usage_bytes: u64,
    /// Working set: resident memory, or the cgroup's usage less inactive file cache.
    pub rss_bytes: u64,
    /// Resident memory not backed by files (anonymous).
    pub anon_bytes: u64,
    pub processes: u32,
}

/// Whose CPU reading: (pod uid, container name, process group); the node is ("", "", 0).
type CpuKey = (String, String, i32);

/// Computes summaries and remembers the previous CPU readings for rates.
pub struct StatsCollector {
    node_name: String,
    /// CPU readings of the previous call: (pod uid, container, pgid) or the node → (when, ns).
    previous: Mutex<HashMap<CpuKey, (Instant, u64)>>,
}

impl StatsCollector {
    pub fn new(node_name: String) -> StatsCollector {
        StatsCollector {
            node_name,
            previous: Mutex::new(HashMap::new()),
        }
    }

    /// The Summary for `pods`, with node figures from `/proc` and `state_dir`'s file system.
    /// Blocking: reads `/proc` once.
    pub fn summary(&self, pods: &[PodRef], state_dir: &Path) -> Value {
        let now = Timestamp::now();
        let instant = Instant::now();
        let groups = scan_groups(Path::new("/proc"));
        let mut previous = self.previous.lock().expect("stats lock");
        let mut seen = HashMap::new();
        let mut rate = |key: CpuKey, cpu_ns: u64, since: Option<Timestamp>| {
            let nano_cores = match previous.get(&key) {
                Some(&(at, before)) if instant > at => {
                    let elapsed = instant.duration_since(at).as_nanos() as f64;
                    (cpu_ns.saturating_sub(before) as f64 / elapsed * 1e9) as u64
                }
                _ => since
                    .map(|s| now.duration_since(s).as_nanos().max(1) as f64)
                    .map_or(0, |elapsed| (cpu_ns as f64 / elapsed * 1e9) as u64),
            };
            seen.insert(key, (instant, cpu_ns));
            nano_cores
        };
        let time = now.to_string();
        let cpu = |nano_cores: u64, total: u64| json!({"time": time, "usageNanoCores": nano_cores, "usageCoreNanoSeconds": total});
        let memory = |u: &GroupUsage| {
            json!({"time": time, "usageBytes": u.usage_bytes, "workingSetBytes": u.rss_bytes,
                   "rssBytes": u.anon_bytes})
        };

        let mut pod_stats = Vec::with_capacity(pods.len());
        for pod in pods {
            let mut total = GroupUsage::default();
            let mut total_rate = 0u64;
            let mut containers = Vec::new();
            for c in &pod.containers {
                let usage = match c.cgroup {
                    Some(cg) => GroupUsage {
                        cpu_ns: cg.cpu_ns,
                        usage_bytes: cg.memory_bytes,
                        rss_bytes: cg.working_set_bytes,
                        anon_bytes: cg.rss_bytes,
                        processes: 0,
                    },
                    None => groups.get(&c.pgid).copied().unwrap_or_default(),
                };
                let key = (pod.uid.clone(), c.name.clone(), c.pgid);
                let nano_cores = rate(key, usage.cpu_ns, Some(c.started_at));
                total.cpu_ns += usage.cpu_ns;
                total.rss_bytes += usage.rss_bytes;
                total.usage_bytes += usage.usage_bytes;
                total.anon_bytes += usage.anon_bytes;
                total_rate += nano_cores;
                containers.push(json!({
                    "name": c.name,
                    "startTime": c.started_at.to_string(),
                    "cpu": cpu(nano_cores, usage.cpu_ns),
                    "memory": memory(&usage),
                }));
            }
            let mut stats = json!({
                "podRef": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid},
                "containers": containers,
                "cpu": cpu(total_rate, total.cpu_ns),
                "memory": memory(&total),
            });
            if let Some(start) = pod.start_time {
                stats["startTime"] = json!(start.to_string());
            }
            pod_stats.push(stats);
        }

        let host = host_usage();
        let node_rate = rate(
            (String::new(), String::new(), 0),
            host.cpu_ns,
            boot_time(now),
        );
        *previous = seen;
        drop(previous);
        let (fs_total, fs_free) = super::disk_space(state_dir);
        let mut node = json!({
            "nodeName": self.node_name,
            "cpu": cpu(node_rate, host.cpu_ns),
            "memory": {
                "time": time,
                "availableBytes": host.memory_available,
                "usageBytes": host.memory_total.saturating_sub(host.memory_free),
                "workingSetBytes": host.memory_total.saturating_sub(host.memory_available),
            },
            "fs": {
                "time": time,
                "capacityBytes": fs_total,
                "availableBytes": fs_free,
                "usedBytes": fs_total.saturating_sub(fs_free),
            },
        });
        if let Some(boot) = boot_time(now) {
            node["startTime"] = json!(boot.to_string());
        }
        json!({"node": node, "pods": pod_stats})
    }
}

/// The kubelet's resource metrics (`/metrics/resource`, Prometheus text), which metrics-server
/// 0.6 and later scrape instead of the Summary: cumulative CPU seconds and working set of the
/// node, of each pod and of each container, and each container's start time, all read from
/// one Summary (so both endpoints always agree). Samples carry the Summary's time in
/// milliseconds, as the kubelet's do.
pub fn resource_metrics(summary: &Value) -> String {
    use std::fmt::Write;
    let millis = |v: &Value| {
        v["time"]
            .as_str()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .map_or(0, |t| t.as_millisecond())
    };
    let label = |v: &Value| {
        v.as_str()
            .unwrap_or("")
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String, i64)>| {
        let _ = writeln!(out, "# HELP {name} [STABLE] {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value, at) in samples {
            let _ = writeln!(out, "{name}{labels} {value} {at}");
        }
    };
    // The two figures of every level (node, pod, container): (value, time in ms).
    let cpu = |v: &Value| {
        let seconds = v["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap_or(0) as f64 / 1e9;
        (seconds.to_string(), millis(&v["cpu"]))
    };
    let working_set = |v: &Value| {
        let bytes = v["memory"]["workingSetBytes"].as_u64().unwrap_or(0);
        (bytes.to_string(), millis(&v["memory"]))
    };
    let node = &summary["node"];
    let pods: &[Value] = summary["pods"].as_array().map_or(&[], Vec::as_slice);
    let pod_labels = |p: &Value| {
        format!(
            "namespace=\"{}\",pod=\"{}\"",
            label(&p["podRef"]["namespace"]),
            label(&p["podRef"]["name"])
        )
    };
    let per_container = |f: &dyn Fn(&Value) -> Option<(String, i64)>| {
        let mut samples = Vec::new();
        for p in pods {
            for c in p["containers"].as_array().into_iter().flatten() {
                if let Some((value, at)) = f(c) {
                    let labels =
                        format!("{{container=\"{}\",{}}}", label(&c["name"]), pod_labels(p));
                    samples.push((labels, value, at));
                }
            }
        }
        samples
    };
    let per_pod = |f: &dyn Fn(&Value) -> (String, i64)| {
        pods.iter()
            .map(|p| {
                let (value, at) = f(p);
                (format!("{{{}}}", pod_labels(p)), value, at)
            })
            .collect::<Vec<_>>()
    };
    let of_node = |(value, at): (String, i64)| vec![(String::new(), value, at)];
    family(
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the container in core-seconds",
        per_container(&|c| Some(cpu(c))),
    );
    family(
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set of the container in bytes",
        per_container(&|c| Some(working_set(c))),
    );
    family(
        "container_start_time_seconds",
        "gauge",
        "Start time of the container since unix epoch in seconds",
        per_container(&|c| {
            let start = c["startTime"].as_str()?.parse::<Timestamp>().ok()?;
            Some((
                (start.as_millisecond() as f64 / 1e3).to_string(),
                start.as_millisecond(),
            ))
        }),
    );
    family(
        "node_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the node in core-seconds",
        of_node(cpu(node)),
    );
    family(
        "node_memory_working_set_bytes",
        "gauge",
        "Current working set of the node in bytes",
        of_node(working_set(node)),
    );
    family(
        "pod_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the pod in core-seconds",
        per_pod(&cpu),
    );
    family(
        "pod_memory_working_set_bytes",
        "gauge",
        "Current working set of the pod in bytes",
        per_pod(&working_set),
    );
    out.push_str("# HELP scrape_error [ALPHA] 1 if there was an error while getting container metrics, 0 otherwise\n# TYPE scrape_error gauge\nscrape_error 0\n");
    out
}

/// Clock ticks per second, the unit of CPU times in `/proc`.
fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)
        .unwrap_or(100) as u64
}

/// Usage per process group, from one pass over `proc` (a `/proc`-like directory).
pub fn scan_groups(proc: &Path) -> HashMap<i32, GroupUsage> {
    let ticks = clock_ticks();
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .filter(|&p| p > 0)
        .unwrap_or(4096) as u64;
    let mut groups: HashMap<i32, GroupUsage> = HashMap::new();
    let Ok(dir) = std::fs::read_dir(proc) else {
        return groups;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        // A process may exit between the listing and the read: skip it.
        let Ok(stat) = std::fs::read_to_string(proc.join(pid).join("stat")) else {
            continue;
        };
        let Some(s) = parse_stat(&stat) else { continue };
        let (resident, shared) = std::fs::read_to_string(proc.join(pid).join("statm"))
            .ok()
            .and_then(|m| {
                let mut f = m.split_whitespace().skip(1);
                Some((
                    f.next()?.parse::<u64>().ok()?,
                    f.next()?.parse::<u64>().ok()?,
                ))
            })
            .unwrap_or((s.rss_pages, 0));
        let g = groups.entry(s.pgrp).or_default();
        g.cpu_ns += s.cpu_ticks * 1_000_000_000 / ticks;
        g.rss_bytes += resident * page;
        g.usage_bytes += resident * page;
        g.anon_bytes += resident.saturating_sub(shared) * page;
        g.processes += 1;
    }
    groups
}

#[derive(Debug, PartialEq)]
struct Stat {
    pgrp: i32,
    /// utime + stime + cutime + cstime.
    cpu_ticks: u64,
    rss_pages: u64,
}

/// Fields of `/proc/PID/stat` after the command name (which may hold spaces and parentheses).
fn parse_stat(stat: &str) -> Option<Stat> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // After ")": state(0) ppid(1) pgrp(2) ... utime(11) stime(12) cutime(13) cstime(14) ... rss(21)
    let n = |i: usize| f.get(i)?.parse::<i64>().ok();
    Some(Stat {
        pgrp: n(2)? as i32,
        cpu_ticks: [n(11)?, n(12)?, n(13)?, n(14)?]
            .iter()
            .map(|&v| v.max(0) as u64)
            .sum(),
        rss_pages: n(21)?.max(0) as u64,
    })
}

struct HostUsage {
    cpu_ns: u64,
    memory_total: u64,
    memory_free: u64,
    memory_available: u64,
}

/// Busy CPU time of the whole host (`/proc/stat`) and its memory (`/proc/meminfo`).
fn host_usage() -> HostUsage {
    let ticks = clock_ticks();
    let busy_ticks = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.strip_prefix("cpu ")?.to_string();
            let v: Vec<u64> = line
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal: all but idle and iowait.
            Some(
                v.iter()
                    .take(8)
                    .enumerate()
                    .filter(|(i, _)| *i != 3 && *i != 4)
                    .map(|(_, x)| x)
                    .sum(),
            )
        })
        .unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    HostUsage {
        cpu_ns: busy_ticks * 1_000_000_000 / ticks,
        memory_total: kib("MemTotal"),
        memory_free: kib("MemFree"),
        memory_available: kib("MemAvailable"),
    }
}

/// When the host booted (now minus `/proc/uptime`).
fn boot_time(now: Timestamp) -> Option<Timestamp> {
    let up: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    now.checked_sub(jiff::SignedDuration::from_secs_f64(up))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_metrics_carry_the_summarys_figures_in_the_kubelets_names() {
        let t = "2026-11-25T10:00:00Z";
        let summary = json!({
            "node": {"cpu": {"time": t, "usageCoreNanoSeconds": 2_500_000_000u64},
                     "memory": {"time": t, "workingSetBytes": 4096}},
            "pods": [{
                "podRef": {"name": "web", "namespace": "default", "uid": "u1"},
                "cpu": {"time": t, "usageCoreNanoSeconds": 1_500_000_000u64},
                "memory": {"time": t, "workingSetBytes": 2048},
                "containers": [{
                    "name": "main", "startTime": "2026-11-25T09:00:00Z",
                    "cpu": {"time": t, "usageCoreNanoSeconds": 1_500_000_000u64},
                    "memory": {"time": t, "workingSetBytes": 2048}
                }]
            }]
        });
        let text = resource_metrics(&summary);
        let at = "1795600800000";
        let labels = r#"{container="main",namespace="default",pod="web"}"#;
        for line in [
            format!("container_cpu_usage_seconds_total{labels} 1.5 {at}"),
            format!("container_memory_working_set_bytes{labels} 2048 {at}"),
            format!("container_start_time_seconds{labels} 1795597200 1795597200000"),
            format!("node_cpu_usage_seconds_total 2.5 {at}"),
            format!("node_memory_working_set_bytes 4096 {at}"),
            format!(r#"pod_cpu_usage_seconds_total{{namespace="default",pod="web"}} 1.5 {at}"#),
            format!(r#"pod_memory_working_set_bytes{{namespace="default",pod="web"}} 2048 {at}"#),
            "# TYPE node_cpu_usage_seconds_total counter".to_string(),
            "# TYPE container_memory_working_set_bytes gauge".to_string(),
            "scrape_error 0".to_string(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Label values are escaped as the text format wants.
        let mut odd = summary.clone();
        odd["pods"][0]["podRef"]["name"] = json!("a\"b\\c");
        assert!(resource_metrics(&odd).contains(r#"pod="a\"b\\c""#));
    }

    #[test]
    fn stat_lines_with_awkward_command_names_parse() {
        let line = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 7 3 20 0 1 0 12345 10000000 321 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                pgrp: 4242,
                cpu_ticks: 310,
                rss_pages: 321
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_group_is_found_with_its_memory() {
        let groups = scan_groups(Path::new("/proc"));
        let own = nix::unistd::getpgrp().as_raw();
        let usage = groups.get(&own).expect("own group");
        assert!(usage.processes >= 1);
        assert!(usage.rss_bytes > 1 << 20, "{usage:?}");
    }
}
