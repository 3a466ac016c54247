//! Pod and container cgroups: limits, OOM detection, and a kill that catches processes which
//! left their process group.
//!
//! Layout, under the cgroup procnode finds itself in at start-up (its systemd unit's, with
//! `Delegate=yes`, or a privileged pod's):
//!
//! ```text
//! BASE/procnode/                    procnode and the supervisors (cgroup v2 only: the "no
//!                                   internal processes" rule keeps processes out of BASE)
//! BASE/PARENT/pod<UID>/             one per pod: pids.max, and memory/CPU limits when every
//!                                   container has one (as the kubelet sets them)
//! BASE/PARENT/pod<UID>/<container>/ one per container, re-created for each run: its
//!                                   limits, its OOM kill count, its processes
//! ```
//!
//! PARENT is `--cgroup-parent` (`procnode-pods`); with cgroup v1, BASE is procnode's cgroup in
//! each controller's hierarchy.
//!
//! An absolute `--cgroup-parent` (`/procnode-pods`) is a path from the hierarchy's root
//! instead, outside procnode's own cgroup, and then the supervisors live in
//! `PARENT/supervisors/`: nothing of a pod is in procnode's cgroup, so a service manager that
//! kills what is left in procnode's unit on stop or restart kills no pod (as the kubelet's pods
//! live in `kubepods`, outside the kubelet's unit). procnode leaves its own cgroup alone then.
//!
//! cgroup v2 is used when the unified hierarchy offers the memory and pids controllers; cgroup
//! v1 (one hierarchy per controller: memory, pids, and cpu and freezer when mounted) otherwise.
//! Without either, pods are tracked by process group only; [`Cgroups::status`] says why.
//!
//! The container process joins its cgroups itself, between fork and exec (`process::command`),
//! so no process of it ever runs outside them.
//!
//! Such a move takes the kernel's cgroup-wide lock for writing, and unless a hierarchy is
//! mounted with `favordynmods` that waits for an RCU grace period whenever no other move
//! happened within the last one: on a 2-core host, 4 to 22 ms for the first start after a
//! pause (back-to-back starts share one). [`Cgroups::moves_wait`] says whether that is so here;
//! docs/systemd.md shows how to mount with the option.

use std::io;
use std::path::{Path, PathBuf};

/// Which cgroup hierarchy to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CgroupMode {
    /// v2 if the unified hierarchy has the controllers, else v1, else none.
    Auto,
    V2,
    V1,
    /// Process groups only.
    Off,
}

/// What a container's cgroup has used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupUsage {
    /// CPU time of every process that ran in it, exited ones included.
    pub cpu_ns: u64,
    pub memory_bytes: u64,
    /// Memory less inactive file cache (the kubelet's working set).
    pub working_set_bytes: u64,
    /// Anonymous memory.
    pub rss_bytes: u64,
}

/// What a container asks for (from `resources`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpu_millis: Option<u64>,
    pub cpu_request_millis: Option<u64>,
}

#[derive(Debug, Clone)]
enum Layout {
    V2 {
        pods: PathBuf,
        cpu: bool,
    },
    V1 {
        /// (controller, BASE/pods in that controller's hierarchy).
        pods: Vec<(&'static str, PathBuf)>,
    },
}

/// The name, under PARENT, of the supervisors' cgroup (pod cgroups are all `pod<UID>`).
const SUPERVISORS: &str = "supervisors";

impl Layout {
    fn parents(&self) -> Vec<&Path> {
        match self {
            Layout::V2 { pods, .. } => vec![pods],
            Layout::V1 { pods } => pods.iter().map(|(_, p)| p.as_path()).collect(),
        }
    }
}

/// procnode's cgroups, or the reason there are none.
#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: Option<Layout>,
    pids_limit: Option<u64>,
    status: String,
    /// Whether the supervisors have a cgroup of their own (an absolute parent).
    own_supervisors: bool,
}

impl Cgroups {
    /// No cgroups: process groups only.
    pub fn none(why: &str) -> Cgroups {
        Cgroups {
            layout: None,
            pids_limit: None,
            status: why.to_string(),
            own_supervisors: false,
        }
    }

    /// Finds (and prepares) procnode's cgroup subtree. Never fails: without a usable hierarchy
    /// the result says why in [`Cgroups::status`].
    pub fn detect(mode: CgroupMode, parent: &str, pids_limit: Option<u64>) -> Cgroups {
        let tried = match mode {
            CgroupMode::Off => return Cgroups::none("cgroups are off (--cgroups off)"),
            CgroupMode::V2 => setup_v2(parent),
            CgroupMode::V1 => setup_v1(parent),
            CgroupMode::Auto => setup_v2(parent).or_else(|v2| {
                setup_v1(parent).map_err(|v1| io::Error::other(format!("v2: {v2}; v1: {v1}")))
            }),
        };
        match tried {
            Ok(layout) => {
                let status = match &layout {
                    Layout::V2 { pods, .. } => format!("cgroup v2 at {}", pods.display()),
                    Layout::V1 { pods } => format!(
                        "cgroup v1 ({})",
                        pods.iter()
                            .map(|(c, p)| format!("{c} at {}", p.display()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                let mut cgroups = Cgroups {
                    layout: Some(layout),
                    pids_limit,
                    status,
                    own_supervisors: parent.starts_with('/'),
                };
                if cgroups.own_supervisors {
                    if let Err(e) = cgroups
                        .supervisor_dirs()
                        .iter()
                        .try_for_each(|d| make_dir(d))
                    {
                        return Cgroups::none(&format!("no cgroup for the supervisors ({e})"));
                    }
                    cgroups.status.push_str(", supervisors in it");
                }
                cgroups
            }
            Err(e) => Cgroups::none(&format!("no usable cgroup hierarchy ({e})")),
        }
    }

    pub fn available(&self) -> bool {
        self.layout.is_some()
    }

    /// Whether each move of a process into a cgroup may wait for an RCU grace period: no
    /// cgroup hierarchy of this host is mounted with `favordynmods` (which one does not
    /// matter: the lock is the kernel's, not a hierarchy's).
    pub fn moves_wait(&self) -> bool {
        self.layout.is_some()
            && !std::fs::read_to_string("/proc/self/mountinfo")
                .is_ok_and(|m| favours_dynamic_moves(&m))
    }

    /// One line: where the cgroups are, or why there are none.
    pub fn status(&self) -> &str {
        &self.status
    }

    /// The cgroup directories (one per hierarchy) a new supervisor is moved into, or none when
    /// supervisors stay in procnode's own cgroup.
    pub fn supervisor_dirs(&self) -> Vec<PathBuf> {
        match &self.layout {
            Some(l) if self.own_supervisors => {
                l.parents().iter().map(|p| p.join(SUPERVISORS)).collect()
            }
            _ => vec![],
        }
    }

    /// The pod's directories (one per hierarchy).
    fn pod_dirs(&self, pod: &str) -> Vec<PathBuf> {
        match &self.layout {
            None => vec![],
            Some(Layout::V2 { pods, .. }) => vec![pods.join(pod)],
            Some(Layout::V1 { pods }) => pods.iter().map(|(_, p)| p.join(pod)).collect(),
        }
    }

    /// The container's directories (one per hierarchy), which its processes join.
    pub fn container_dirs(&self, pod: &str, container: &str) -> Vec<PathBuf> {
        self.pod_dirs(pod)
            .into_iter()
            .map(|d| d.join(container))
            .collect()
    }

    /// Creates the pod's cgroup with the pids limit and, when every container has one, the sum
    /// of the containers' memory and CPU limits. Blocking.
    pub fn create_pod(&self, pod: &str, containers: &[Limits]) -> io::Result<()> {
        let Some(layout) = &self.layout else {
            return Ok(());
        };
        let sum = |f: fn(&Limits) -> Option<u64>| -> Option<u64> {
            containers.iter().map(f).sum::<Option<u64>>()
        };
        let total = Limits {
            memory_bytes: sum(|l| l.memory_bytes),
            cpu_millis: sum(|l| l.cpu_millis),
            cpu_request_millis: None,
        };
        match layout {
            Layout::V2 { pods, cpu } => {
                let controllers = if *cpu {
                    "+memory +pids +cpu"
                } else {
                    "+memory +pids"
                };
                // The parent too, in case another procnode leaving removed it meanwhile.
                if !pods.exists() {
                    make_dir(pods)?;
                    write(&pods.join("cgroup.subtree_control"), controllers)?;
                }
                let dir = pods.join(pod);
                make_dir(&dir)?;
                write(&dir.join("cgroup.subtree_control"), controllers)?;
                if let Some(max) = self.pids_limit {
                    write(&dir.join("pids.max"), &max.to_string())?;
                }
                apply_v2(&dir, &total, *cpu)
            }
            Layout::V1 { pods } => {
                for (controller, base) in pods {
                    make_dir(base)?;
                    let dir = base.join(pod);
                    make_dir(&dir)?;
                    match *controller {
                        "pids" => {
                            if let Some(max) = self.pids_limit {
                                write(&dir.join("pids.max"), &max.to_string())?;
                            }
                        }
                        c => apply_v1(c, &dir, &total)?,
                    }
                }
                Ok(())
            }
        }
    }

    /// A fresh cgroup for a container's new run (what an earlier run left is killed and
    /// removed first, so its OOM count starts at zero). Returns the directories to join.
    /// Blocking.
    pub fn create_container(
        &self,
        pod: &str,
        container: &str,
        limits: &Limits,
    ) -> io::Result<Vec<PathBuf>> {
        let Some(layout) = &self.layout else {
            return Ok(vec![]);
        };
        let dirs = self.container_dirs(pod, container);
        for dir in &dirs {
            remove_dir(dir)?;
            make_dir(dir)?;
        }
        match layout {
            Layout::V2 { cpu, .. } => apply_v2(&dirs[0], limits, *cpu)?,
            Layout::V1 { pods } => {
                for ((controller, _), dir) in pods.iter().zip(&dirs) {
                    apply_v1(controller, dir, limits)?;
                }
            }
        }
        Ok(dirs)
    }

    /// Applies new limits to a container's current cgroup (an in-place resize); a container
    /// that is not running has none, and gets the limits at its next start. Blocking.
    pub fn resize_container(&self, pod: &str, container: &str, limits: &Limits) -> io::Result<()> {
        let dirs = self.container_dirs(pod, container);
        if dirs.iter().any(|d| !d.exists()) {
            return Ok(());
        }
        match &self.layout {
            None => Ok(()),
            Some(Layout::V2 { cpu, .. }) => apply_v2(&dirs[0], limits, *cpu),
            Some(Layout::V1 { pods }) => {
                for ((controller, _), dir) in pods.iter().zip(&dirs) {
                    apply_v1(controller, dir, limits)?;
                }
                Ok(())
            }
        }
    }

    /// CPU and memory of the container's current cgroup, or `None` without cgroups (or when
    /// a figure is missing). Blocking.
    pub fn usage(&self, pod: &str, container: &str) -> Option<CgroupUsage> {
        let layout = self.layout.as_ref()?;
        let read = |p: PathBuf| std::fs::read_to_string(p).ok();
        let stat = |text: &str, key: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        };
        match layout {
            Layout::V2 { pods, .. } => {
                let dir = pods.join(pod).join(container);
                let cpu = read(dir.join("cpu.stat"))?;
                let memory = read(dir.join("memory.stat"))?;
                let current: u64 = read(dir.join("memory.current"))?.trim().parse().ok()?;
                Some(CgroupUsage {
                    cpu_ns: stat(&cpu, "usage_usec")? * 1000,
                    memory_bytes: current,
                    working_set_bytes: current
                        .saturating_sub(stat(&memory, "inactive_file").unwrap_or(0)),
                    rss_bytes: stat(&memory, "anon").unwrap_or(0),
                })
            }
            Layout::V1 { pods } => {
                let dir = |c: &str| {
                    pods.iter()
                        .find(|(name, _)| *name == c)
                        .map(|(_, d)| d.join(pod).join(container))
                };
                let cpuacct = dir("cpuacct").or_else(|| dir("cpu"))?;
                let cpu_ns: u64 = read(cpuacct.join("cpuacct.usage"))?.trim().parse().ok()?;
                let mem = dir("memory")?;
                let usage: u64 = read(mem.join("memory.usage_in_bytes"))?
                    .trim()
                    .parse()
                    .ok()?;
                let memory = read(mem.join("memory.stat"))?;
                let inactive = stat(&memory, "total_inactive_file")
                    .or_else(|| stat(&memory, "inactive_file"))
                    .unwrap_or(0);
                Some(CgroupUsage {
                    cpu_ns,
                    memory_bytes: usage,
                    working_set_bytes: usage.saturating_sub(inactive),
                    rss_bytes: stat(&memory, "total_rss")
                        .or_else(|| stat(&memory, "rss"))
                        .unwrap_or(0),
                })
            }
        }
    }

    /// How many processes of the container's current cgroup the kernel's OOM killer killed.
    pub fn oom_kills(&self, pod: &str, container: &str) -> u64 {
        let (file, dir) = match &self.layout {
            None => return 0,
            Some(Layout::V2 { pods, .. }) => ("memory.events", pods.join(pod).join(container)),
            Some(Layout::V1 { pods }) => match pods.iter().find(|(c, _)| *c == "memory") {
                Some((_, base)) => ("memory.oom_control", base.join(pod).join(container)),
                None => return 0,
            },
        };
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Removes the parent cgroup if no pod is left in it (for a procnode that leaves). Blocking.
    pub fn remove_parent_if_empty(&self) {
        for d in self.supervisor_dirs() {
            let _ = std::fs::remove_dir(d);
        }
        for p in self.layout.iter().flat_map(Layout::parents) {
            let _ = std::fs::remove_dir(p);
        }
    }

    /// Kills whatever is left in the pod's cgroups and removes them. Blocking.
    pub fn remove_pod(&self, pod: &str) -> io::Result<()> {
        for dir in self.pod_dirs(pod) {
            if let Ok(children) = std::fs::read_dir(&dir) {
                for child in children.flatten() {
                    if child.file_type().is_ok_and(|t| t.is_dir()) {
                        remove_dir(&child.path())?;
                    }
                }
            }
            remove_dir(&dir)?;
        }
        Ok(())
    }
}

/// Kills every process in `dir` (and below), then removes it; a missing `dir` is fine.
fn remove_dir(dir: &Path) -> io::Result<()> {
    for attempt in 0..50 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if attempt == 49 => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("removing cgroup {}: {e}", dir.display()),
                ))
            }
            Err(_) => {
                super::process::kill_cgroup(dir);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
    Ok(())
}

fn make_dir(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io::Error::new(
            e.kind(),
            format!("creating cgroup {}: {e}", dir.display()),
        )),
        _ => Ok(()),
    }
}

fn write(file: &Path, value: &str) -> io::Result<()> {
    std::fs::write(file, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing {value:?} to {}: {e}", file.display()),
        )
    })
}

/// Writes `value` to a CPU bandwidth file (`cpu.max`, `cpu.cfs_period_us`,
/// `cpu.cfs_quota_us`) unless it already reads so. Every write of one makes the kernel check
/// the bandwidth of every cgroup on the host under one lock, so writing the defaults into each
/// fresh cgroup, or the same limits again into every pod's at a restart, cost O(pods) each:
/// at 10,000 pods, most of a restart's 14 s.
fn write_bandwidth(file: &Path, value: &str) -> io::Result<()> {
    match std::fs::read_to_string(file) {
        Ok(now) if now.trim() == value => Ok(()),
        _ => write(file, value),
    }
}

/// CPU period of CFS quotas (the kubelet's).
const CPU_PERIOD_US: u64 = 100_000;

/// cgroup v1 `cpu.shares` for a CPU request, as the kubelet computes it.
fn cpu_shares(request_millis: u64) -> u64 {
    (request_millis * 1024 / 1000).max(2)
}

fn cpu_quota_us(limit_millis: u64) -> u64 {
    (limit_millis * CPU_PERIOD_US / 1000).max(1000)
}

/// Writes `l` into a v2 cgroup; an unset limit is written as "no limit" (so a resize can
/// lift one).
fn apply_v2(dir: &Path, l: &Limits, cpu: bool) -> io::Result<()> {
    match l.memory_bytes {
        Some(bytes) => {
            write(&dir.join("memory.max"), &bytes.to_string())?;
            // Without swap the limit is the limit (the kubelet's default NoSwap behaviour).
            if dir.join("memory.swap.max").exists() {
                write(&dir.join("memory.swap.max"), "0")?;
            }
        }
        None => write(&dir.join("memory.max"), "max")?,
    }
    if cpu {
        let quota = l
            .cpu_millis
            .map_or("max".to_string(), |m| cpu_quota_us(m).to_string());
        write_bandwidth(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
        if let Some(millis) = l.cpu_request_millis {
            let shares = cpu_shares(millis);
            let weight = 1 + ((shares.saturating_sub(2)) * 9999) / 262_142;
            write(
                &dir.join("cpu.weight"),
                &weight.clamp(1, 10_000).to_string(),
            )?;
        }
    }
    Ok(())
}

/// Writes `l` into a v1 cgroup of `controller`; an unset limit is written as "no limit".
fn apply_v1(controller: &str, dir: &Path, l: &Limits) -> io::Result<()> {
    match controller {
        "memory" => {
            let bytes = l.memory_bytes.map_or("-1".to_string(), |b| b.to_string());
            // memory + swap must stay at or above the memory limit: lift it first.
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                write(&memsw, "-1")?;
            }
            write(&dir.join("memory.limit_in_bytes"), &bytes)?;
            if memsw.exists() && l.memory_bytes.is_some() {
                write(&memsw, &bytes)?;
            }
        }
        "cpu" => {
            write_bandwidth(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
            let quota = l
                .cpu_millis
                .map_or("-1".to_string(), |m| cpu_quota_us(m).to_string());
            write_bandwidth(&dir.join("cpu.cfs_quota_us"), &quota)?;
            if let Some(millis) = l.cpu_request_millis {
                write(&dir.join("cpu.shares"), &cpu_shares(millis).to_string())?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The cgroup and cgroup2 mounts in `mountinfo`: file system type, mount point and super
/// options (`ID PARENT DEV ROOT MOUNT_POINT ... - TYPE SOURCE SUPER_OPTIONS`).
fn cgroup_mounts(mountinfo: &str) -> impl Iterator<Item = (&str, &str, &str)> {
    mountinfo.lines().filter_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut r = right.split_whitespace();
        let (fstype, _, options) = (r.next()?, r.next()?, r.next()?);
        let mount = left.split_whitespace().nth(4)?;
        matches!(fstype, "cgroup" | "cgroup2").then_some((fstype, mount, options))
    })
}

/// Whether a cgroup or cgroup2 mount in `mountinfo` has `favordynmods` among its super
/// options.
fn favours_dynamic_moves(mountinfo: &str) -> bool {
    cgroup_mounts(mountinfo).any(|(_, _, options)| options.split(',').any(|o| o == "favordynmods"))
}

/// This process's cgroup path in the hierarchy whose `/proc/self/cgroup` line matches.
fn own_path(matches: impl Fn(&str) -> bool) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        matches(controllers).then(|| path.to_string())
    })
}

/// Joins a cgroup path from `/proc/self/cgroup` (absolute, within the hierarchy) to a mount.
fn under(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

fn setup_v2(parent: &str) -> io::Result<Layout> {
    let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .find(|r| r.join("cgroup.controllers").exists())
        .ok_or_else(|| io::Error::other("no cgroup2 file system mounted"))?;
    if parent.starts_with('/') {
        return setup_v2_outside(&under(&root, parent));
    }
    let own = own_path(|c| c.is_empty()).ok_or_else(|| io::Error::other("no 0:: line"))?;
    setup_v2_in(&under(&root, &own), parent)
}

/// The controllers `dir` can hand down, as a `cgroup.subtree_control` line, and whether cpu is
/// among them; an error unless it offers memory and pids.
fn v2_controllers(dir: &Path) -> io::Result<(&'static str, bool)> {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers"))?;
    let has = |c: &str| available.split_whitespace().any(|x| x == c);
    if !has("memory") || !has("pids") {
        return Err(io::Error::other(format!(
            "{} offers controllers [{}], not memory and pids",
            dir.display(),
            available.trim()
        )));
    }
    Ok(if has("cpu") {
        ("+memory +pids +cpu", true)
    } else {
        ("+memory +pids", false)
    })
}

/// Prepares `pods` (an absolute parent, outside procnode's cgroup): its parent hands the
/// controllers down (the hierarchy's root always may; another cgroup only if it holds no
/// process), procnode's own cgroup is left as it is.
fn setup_v2_outside(pods: &Path) -> io::Result<Layout> {
    let above = pods
        .parent()
        .ok_or_else(|| io::Error::other("the cgroup parent cannot be the root"))?;
    std::fs::create_dir_all(above)?;
    let (controllers, cpu) = v2_controllers(above)?;
    write(&above.join("cgroup.subtree_control"), controllers)?;
    make_dir(pods)?;
    write(&pods.join("cgroup.subtree_control"), controllers)?;
    Ok(Layout::V2 {
        pods: pods.to_path_buf(),
        cpu,
    })
}

/// Prepares `base` (procnode's cgroup in a v2 hierarchy) for pods under `base/parent`.
fn setup_v2_in(base: &Path, parent: &str) -> io::Result<Layout> {
    let (controllers, cpu) = v2_controllers(base)?;
    // No processes may stay in a cgroup whose controllers are handed down: move procnode (and
    // whatever shares its cgroup) into BASE/procnode.
    let own_dir = base.join("procnode");
    make_dir(&own_dir)?;
    let procs = std::fs::read_to_string(base.join("cgroup.procs"))?;
    for pid in procs.lines().filter(|l| !l.trim().is_empty()) {
        // A process that exits meanwhile is fine.
        let _ = std::fs::write(own_dir.join("cgroup.procs"), pid.trim());
    }
    write(&base.join("cgroup.subtree_control"), controllers)?;
    let pods = base.join(parent);
    make_dir(&pods)?;
    write(&pods.join("cgroup.subtree_control"), controllers)?;
    Ok(Layout::V2 { pods, cpu })
}

fn setup_v1(parent: &str) -> io::Result<Layout> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut pods = Vec::new();
    for controller in ["memory", "pids", "cpu", "cpuacct", "freezer"] {
        let mount = cgroup_mounts(&mountinfo).find_map(|(fstype, mount, options)| {
            (fstype == "cgroup" && options.split(',').any(|o| o == controller))
                .then(|| PathBuf::from(mount))
        });
        let Some(mount) = mount else {
            if matches!(controller, "memory" | "pids") {
                return Err(io::Error::other(format!(
                    "no cgroup v1 {controller} hierarchy mounted"
                )));
            }
            continue;
        };
        let dir = if parent.starts_with('/') {
            under(&mount, parent)
        } else {
            let own = own_path(|c| c.split(',').any(|x| x == controller)).unwrap_or_default();
            under(&mount, &own).join(parent)
        };
        // Controllers mounted together (cpu,cpuacct) share one directory.
        if pods.iter().any(|(_, d)| *d == dir) {
            continue;
        }
        make_dir(&dir)?;
        pods.push((controller, dir));
    }
    Ok(Layout::V1 { pods })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_figures_match_the_kubelets() {
        assert_eq!(cpu_shares(0), 2);
        assert_eq!(cpu_shares(1000), 1024);
        assert_eq!(cpu_shares(250), 256);
        assert_eq!(cpu_quota_us(500), 50_000);
        assert_eq!(cpu_quota_us(1), 1000, "the kernel's minimum quota");
        assert_eq!(cpu_quota_us(2000), 200_000);
    }

    /// The v2 protocol against a directory shaped like a delegated cgroup (this test machine's
    /// unified hierarchy holds no memory or pids controller, so the kernel's side is exercised
    /// by the integration tests through v1 here, through v2 where the machine has it).
    #[test]
    fn an_absolute_parent_leaves_procnodes_own_cgroup_alone() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::write(r.join("cgroup.controllers"), "memory pids\n").unwrap();
        let layout = setup_v2_outside(&r.join("pods")).unwrap();
        let read = |p: &str| std::fs::read_to_string(r.join(p)).unwrap();
        assert_eq!(read("cgroup.subtree_control"), "+memory +pids");
        assert_eq!(read("pods/cgroup.subtree_control"), "+memory +pids");
        assert!(!r.join("procnode").exists(), "nothing moved");
        let c = Cgroups {
            layout: Some(layout),
            pids_limit: None,
            status: String::new(),
            own_supervisors: true,
        };
        assert_eq!(c.supervisor_dirs(), vec![r.join("pods/supervisors")]);
    }

    #[test]
    fn v2_writes_the_files_the_kernel_reads() {
        let base = tempfile::tempdir().unwrap();
        let b = base.path();
        std::fs::write(b.join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        std::fs::write(b.join("cgroup.procs"), "").unwrap();
        let layout = setup_v2_in(b, "pods").unwrap();
        let read = |p: &str| std::fs::read_to_string(b.join(p)).unwrap();
        assert_eq!(read("cgroup.subtree_control"), "+memory +pids +cpu");
        assert_eq!(read("pods/cgroup.subtree_control"), "+memory +pids +cpu");
        assert!(b.join("procnode").is_dir(), "procnode's own leaf");
        let c = Cgroups {
            layout: Some(layout),
            pids_limit: Some(100),
            status: String::new(),
            own_supervisors: false,
        };
        let main = Limits {
            memory_bytes: Some(32 << 20),
            cpu_millis: Some(250),
            cpu_request_millis: Some(250),
        };
        c.create_pod("podu1", &[main, main]).unwrap();
        assert_eq!(read("pods/podu1/pids.max"), "100");
        assert_eq!(read("pods/podu1/memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("pods/podu1/cpu.max"), "50000 100000");
        let dirs = c.create_container("podu1", "main", &main).unwrap();
        assert_eq!(dirs, vec![b.join("pods/podu1/main")]);
        assert_eq!(
            read("pods/podu1/main/memory.max"),
            (32u64 << 20).to_string()
        );
        assert_eq!(read("pods/podu1/main/cpu.max"), "25000 100000");
        assert_eq!(read("pods/podu1/main/cpu.weight"), "10");
        std::fs::write(
            b.join("pods/podu1/main/memory.events"),
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(c.oom_kills("podu1", "main"), 1);
        std::fs::write(
            b.join("pods/podu1/main/cpu.stat"),
            "usage_usec 2500\nuser_usec 2000\n",
        )
        .unwrap();
        std::fs::write(b.join("pods/podu1/main/memory.current"), "10485760\n").unwrap();
        std::fs::write(
            b.join("pods/podu1/main/memory.stat"),
            "anon 4194304\nfile 6291456\ninactive_file 2097152\n",
        )
        .unwrap();
        assert_eq!(
            c.usage("podu1", "main"),
            Some(CgroupUsage {
                cpu_ns: 2_500_000,
                memory_bytes: 10 << 20,
                working_set_bytes: 8 << 20,
                rss_bytes: 4 << 20,
            })
        );
        // A resize that lifts the limits writes "max".
        c.resize_container("podu1", "main", &Limits::default())
            .unwrap();
        assert_eq!(read("pods/podu1/main/memory.max"), "max");
        assert_eq!(read("pods/podu1/main/cpu.max"), "max 100000");
    }

    /// A CPU bandwidth file is written only when its value changes: each write makes the
    /// kernel check every cgroup on the host, so a restart that sets up every pod's cgroup
    /// again must not write them.
    #[test]
    fn cpu_bandwidth_is_written_only_when_it_changes() {
        let base = tempfile::tempdir().unwrap();
        let b = base.path();
        std::fs::write(b.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        std::fs::write(b.join("cgroup.procs"), "").unwrap();
        let c = Cgroups {
            layout: Some(setup_v2_in(b, "pods").unwrap()),
            pids_limit: None,
            status: String::new(),
            own_supervisors: false,
        };
        let limited = Limits {
            cpu_millis: Some(500),
            ..Limits::default()
        };
        c.create_pod("podu2", &[limited]).unwrap();
        let file = b.join("pods/podu2/cpu.max");
        let long_ago = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000);
        let mark = || {
            std::fs::File::options()
                .write(true)
                .open(&file)
                .unwrap()
                .set_modified(long_ago)
                .unwrap()
        };
        let modified = || std::fs::metadata(&file).unwrap().modified().unwrap();
        mark();
        c.create_pod("podu2", &[limited]).unwrap();
        assert_eq!(modified(), long_ago, "the same limit again is not written");
        c.create_pod("podu2", &[Limits::default()]).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "max 100000");
        assert_ne!(modified(), long_ago, "a changed one is");
    }

    #[test]
    fn a_v2_cgroup_without_the_controllers_is_refused_with_the_reason() {
        let base = tempfile::tempdir().unwrap();
        std::fs::write(base.path().join("cgroup.controllers"), "cpu io\n").unwrap();
        let err = setup_v2_in(base.path(), "pods").unwrap_err().to_string();
        assert!(
            err.contains("not memory and pids") && err.contains("[cpu io]"),
            "{err}"
        );
    }

    #[test]
    fn favordynmods_is_read_from_any_cgroup_mount() {
        let plain = "\
31 25 0:27 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
34 31 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
52 25 0:44 / /mnt/favordynmods rw - ext4 /dev/favordynmods rw,favordynmods
";
        assert!(!favours_dynamic_moves(plain));
        let favoured = plain.replace("rw,nsdelegate", "rw,nsdelegate,favordynmods");
        assert!(favours_dynamic_moves(&favoured));
        let v1 = plain.replace("rw,memory", "rw,memory,favordynmods");
        assert!(favours_dynamic_moves(&v1));
        assert!(!Cgroups::none("off").moves_wait());
    }

    #[test]
    fn none_reports_why() {
        let c = Cgroups::none("because");
        assert!(!c.available());
        assert_eq!(c.status(), "because");
        assert!(c.container_dirs("pod1", "main").is_empty());
        assert_eq!(c.oom_kills("pod1", "main"), 0);
        c.create_pod("pod1", &[Limits::default()]).unwrap();
    }
}
