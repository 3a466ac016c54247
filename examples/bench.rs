//! procnode's benchmark: each figure next to the raw limit of this machine, measured in the
//! same run.
//!
//!     cargo run --release --example bench            # everything (about 2 minutes)
//!     cargo run --release --example bench -- quick   # fewer pods, for a smoke run
//!     BENCH_SERVER_ARGS=--log-files=false cargo run --release --example bench   # extra flags
//!     cargo run --release --example bench -- scale 10000   # N pods: memory, reads, kill -9
//!                                                          # and re-adoption, delete
//!     cargo run --release --example bench -- peers 200     # procnode beside runc + conmon
//!                                                          # (apt-get install runc conmon
//!                                                          # busybox-static), and the
//!                                                          # floors below
//!     cargo run --release --example bench -- floor 200     # the design's own floors: a
//!                                                          # supervisor alone, the least
//!                                                          # start, least pods per second
//!
//! It starts procnode as a child process (this same executable re-run with `--serve`, which
//! calls `procnode::run` exactly as the real binary does) on an ephemeral port and drives it
//! over real HTTP with keep-alive connections.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const SLEEPER: &str = include_str!("pod-sleeper.json");

mod common;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    common::run_as_procnode_if_asked(&args);
    let quick = args.get(1).map(String::as_str) == Some("quick");
    if args.get(1).map(String::as_str) == Some("peers") {
        let n = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(200);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(peers(n));
        return;
    }
    if args.get(1).map(String::as_str) == Some("floor") {
        let n = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(200);
        floor(n);
        return;
    }
    if args.get(1).map(String::as_str) == Some("scale") {
        let n = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(10_000);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(scale(n));
        return;
    }
    // The load generator runs on one thread, so on a small machine it takes one core and
    // leaves the rest to procnode (as a separate load tool would).
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench(if quick { Scale::QUICK } else { Scale::FULL }));
}

#[derive(Clone, Copy)]
struct Scale {
    create: usize,
    latency: usize,
    idle: usize,
    reads: usize,
    log_secs: u64,
}

impl Scale {
    const FULL: Scale = Scale {
        create: 500,
        latency: 200,
        idle: 1000,
        reads: 1000,
        log_secs: 5,
    };
    const QUICK: Scale = Scale {
        create: 100,
        latency: 50,
        idle: 200,
        reads: 200,
        log_secs: 2,
    };
}

struct Server {
    child: std::process::Child,
    base: String,
    pid: u32,
    _state_dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let state_dir = tempfile::tempdir().unwrap();
        // Extra procnode flags for a run, e.g. BENCH_SERVER_ARGS=--log-files=false
        let extra = std::env::var("BENCH_SERVER_ARGS").unwrap_or_default();
        let mut args: Vec<&std::ffi::OsStr> =
            ["--max-pods", "5000", "--stop-pods-on-exit", "--state-dir"]
                .map(std::ffi::OsStr::new)
                .to_vec();
        args.push(state_dir.path().as_os_str());
        args.extend(extra.split_whitespace().map(std::ffi::OsStr::new));
        let (child, base) = common::spawn_serving(&args, &[]);
        let pid = child.id();
        Server {
            child,
            base,
            pid,
            _state_dir: state_dir,
        }
    }

    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap();
        kb * 1024
    }

    /// Proportional set size (shared pages split among their users) of procnode and of
    /// every supervisor it started: what the pods cost in memory all told.
    fn pss_bytes(&self) -> (u64, u64, usize) {
        pss_of(self.pid, self._state_dir.path())
    }

    fn stop(self) {
        drop(self);
    }
}

/// PSS of procnode `pid` and of every supervisor of the state directory `state_dir`, and how
/// many supervisors there are.
fn pss_of(pid: u32, state_dir: &std::path::Path) -> (u64, u64, usize) {
    let own = pss(&pid.to_string()).unwrap_or(0);
    let prefix = format!("{}/sup/", state_dir.display());
    let (supervisors, count) = pss_of_processes(|args| {
        args.len() >= 3 && args[1] == b"shim" && args[2].starts_with(prefix.as_bytes())
    });
    (own, supervisors, count)
}

/// PSS (bytes) of process `pid`, from its smaps_rollup.
fn pss(pid: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let kb: u64 = text
        .lines()
        .find(|l| l.starts_with("Pss:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Total PSS (bytes) of every process whose arguments `select` picks, and how many there are.
fn pss_of_processes(select: impl Fn(&[&[u8]]) -> bool) -> (u64, usize) {
    let (mut total, mut count) = (0, 0);
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if select(&args) {
            total += pss(&pid).unwrap_or(0);
            count += 1;
        }
    }
    (total, count)
}

/// Stopping procnode (also when the benchmark panics): SIGTERM stops every pod, then it exits.
impl Drop for Server {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
}

/// One timed request: total wall time and the server's own `Server-Timing` figure.
struct Timed {
    status: u16,
    total: Duration,
    server: Duration,
    body: bytes::Bytes,
}

impl Client {
    fn new(base: &str) -> Client {
        Client {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(16)
                .build()
                .unwrap(),
            base: base.to_string(),
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<String>) -> Timed {
        let start = Instant::now();
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .header("Content-Type", "application/json");
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let server = resp
            .headers()
            .get("server-timing")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("app;dur="))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|ms| Duration::from_secs_f64(ms / 1000.0))
            .unwrap_or_default();
        let body = resp.bytes().await.expect("body");
        Timed {
            status,
            total: start.elapsed(),
            server,
            body,
        }
    }

    async fn create(&self, pod: &Value) -> Timed {
        let t = self
            .send(reqwest::Method::POST, "/createPod", Some(pod.to_string()))
            .await;
        assert!(t.status == 201 || t.status == 200, "create: {}", t.status);
        t
    }

    async fn delete(&self, pod: &Value) -> Timed {
        let t = self
            .send(reqwest::Method::DELETE, "/deletePod", Some(pod.to_string()))
            .await;
        assert_eq!(t.status, 200);
        t
    }

    async fn status(&self, ns: &str, name: &str) -> (Timed, Value) {
        let t = self
            .send(
                reqwest::Method::GET,
                &format!("/getPodStatus?namespace={ns}&name={name}"),
                None,
            )
            .await;
        let v = serde_json::from_slice(&t.body).unwrap_or(Value::Null);
        (t, v)
    }

    async fn wait_running(&self, ns: &str, names: &[String]) {
        let deadline = Instant::now() + Duration::from_secs(120);
        for name in names {
            loop {
                let (_, s) = self.status(ns, name).await;
                if s["phase"] == "Running" {
                    break;
                }
                assert!(Instant::now() < deadline, "{name} never ran: {s}");
                tokio::task::yield_now().await;
            }
        }
    }
}

fn pod(ns: &str, name: &str, command: &[&str]) -> Value {
    let mut p: Value = serde_json::from_str(SLEEPER).unwrap();
    p["metadata"]["name"] = json!(name);
    p["metadata"]["namespace"] = json!(ns);
    p["metadata"]["uid"] = json!(format!("{ns}-{name}"));
    p["spec"]["containers"][0]["command"] = json!(command);
    p["spec"]["terminationGracePeriodSeconds"] = json!(5);
    p
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

struct Row {
    figure: String,
    procnode: String,
    baseline: String,
    ratio: String,
    target: String,
}

/// A row of start latencies (sorted), p50 / p99, beside the raw spawns' p50 of the same run.
fn start_row(figure: &str, lat: &[Duration], base_lat: &[Duration]) -> Row {
    row(
        figure,
        format!("{} / {}", ms(pct(lat, 0.5)), ms(pct(lat, 0.99))),
        format!("{} (raw spawn)", ms(pct(base_lat, 0.5))),
        format!("+{}", ms(pct(lat, 0.5).saturating_sub(pct(base_lat, 0.5)))),
        "",
    )
}

fn row(figure: &str, procnode: String, baseline: String, ratio: String, target: &str) -> Row {
    Row {
        figure: figure.into(),
        procnode,
        baseline,
        ratio,
        target: target.into(),
    }
}

fn print_table(rows: &[Row]) {
    println!("| figure | procnode | baseline (same run) | ratio | target |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.figure, r.procnode, r.baseline, r.ratio, r.target
        );
    }
}

fn machine_facts() {
    let uname = nix::sys::utsname::uname().unwrap();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    println!(
        "machine: {} logical cores ({cpu}), kernel {} {}, {} MiB memory",
        std::thread::available_parallelism().unwrap().get(),
        uname.sysname().to_string_lossy(),
        uname.release().to_string_lossy(),
        procnode::node::sample_host(std::path::Path::new("/")).memory_total >> 20
    );
}

/// The raw spawn every start is measured against: `sleep 600` in a process group of its own,
/// its output piped, as procnode starts a container.
fn raw_sleeper() -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("600")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    cmd
}

/// Baseline for figures 1 and 2: spawn `n` `sleep 600` directly with tokio (own process group,
/// piped output, as procnode does), sequentially. Returns the spawn latencies; kills them after.
async fn baseline_spawn(n: usize) -> Vec<Duration> {
    let mut children = Vec::with_capacity(n);
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let child = tokio::process::Command::from(raw_sleeper())
            .spawn()
            .unwrap();
        lat.push(t.elapsed());
        children.push(child);
    }
    for mut c in children {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
    lat
}

/// `bench floor N`, run by `peers` as a process of its own (procnode's reaper, which the
/// supervisors need, waits for any child): what the design costs by itself, without procnode's
/// HTTP, status or volumes. N raw spawns of `sleep 600`; N supervisors started and greeted
/// (spawn, spec, hello); N least starts (see [`LeastPods`]) one after another; N supervisors
/// started beforehand and timed from the spec to the hello; then the rate of least pods, with
/// and without a supervisor, on one and on two threads, beside raw spawns. The supervisor
/// executable and the cgroups are those of the bench's procnode (its `BENCH_SERVER_ARGS` read
/// by procnode's own parser). Prints one line per figure: `NAME MICROSECONDS...` for
/// latencies, `rateT RAW BARE SUPERVISED` (per second) for rates.
fn floor(n: usize) {
    let extra = std::env::var("BENCH_SERVER_ARGS").unwrap_or_default();
    let config = procnode::Config::parse_from_env_free(
        std::iter::once("procnode").chain(extra.split_whitespace()),
    );
    let shim = config.shim_exe();
    // Raw spawns first, waited for here before procnode's reaper exists.
    let mut raw = Vec::new();
    let mut children = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        children.push(raw_sleeper().spawn().unwrap());
        raw.push(t.elapsed());
    }
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let dir = tempfile::tempdir().unwrap();
    let start = |name: &str| {
        let path = dir.path().join(name);
        procnode::runtime::process::spawn_shim(&shim, path.to_str().unwrap()).unwrap()
    };
    let (mut cold, mut warm, mut held) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let t = Instant::now();
        let mut s = start(&format!("c{i}"));
        let pid = greet(&mut s.socket, &[]);
        cold.push(t.elapsed());
        held.push((s, pid));
    }
    let least_pods = LeastPods::new(&config, &dir.path().join("least"), Some(&shim));
    let mut least = Vec::new();
    let mut least_started = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        least_started.push(least_pods.start(&format!("podleast{i}")));
        least.push(t.elapsed());
    }
    least_pods.stop(least_started);
    let mut spares: Vec<_> = (0..n).map(|i| start(&format!("w{i}"))).collect();
    std::thread::sleep(Duration::from_millis(500));
    for mut s in spares.drain(..) {
        let t = Instant::now();
        let pid = greet(&mut s.socket, &[]);
        warm.push(t.elapsed());
        held.push((s, pid));
    }
    for (s, pid) in &held {
        kill_supervised(s, *pid);
    }
    for (s, _) in held {
        let _ = s.exit.blocking_recv();
    }
    for (name, mut lat) in [
        ("raw", raw),
        ("cold", cold),
        ("warm", warm),
        ("least", least),
    ] {
        lat.sort();
        let us: Vec<String> = lat.iter().map(|d| d.as_micros().to_string()).collect();
        println!("{name} {}", us.join(" "));
    }
    for threads in [1, 2] {
        // Alternated, three times: this machine's speed drifts within seconds.
        let (mut raw, mut bare, mut supervised) = (0.0, 0.0, 0.0);
        for round in 0..3 {
            let dir = dir.path().join(format!("rate{threads}-{round}"));
            let (r, b) = least_pod_rate(n, threads, &LeastPods::new(&config, &dir, None));
            let (_, s) = least_pod_rate(n, threads, &LeastPods::new(&config, &dir, Some(&shim)));
            raw += r / 3.0;
            bare += b / 3.0;
            supervised += s / 3.0;
        }
        println!("rate{threads} {raw:.0} {bare:.0} {supervised:.0}");
    }
}

/// SIGKILL to a supervised container's process group (`pid` leads it) and to its supervisor,
/// whose exit the caller then waits for.
fn kill_supervised(s: &procnode::runtime::process::SpawnedShim, pid: i32) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
    let _ = kill(Pid::from_raw(s.pid), Signal::SIGKILL);
}

/// Sends a supervisor its spawn request (`argv` sleep 600, joining `cgroups`) and reads its
/// hello: returns the container's pid.
fn greet(socket: &mut std::os::unix::net::UnixStream, cgroups: &[std::path::PathBuf]) -> i32 {
    use std::io::{Read, Write};
    let mut spec = serde_json::to_vec(&json!({
        "argv": ["sleep", "600"], "env": [], "cwd": "/", "cgroups": cgroups,
    }))
    .unwrap();
    spec.push(b'\n');
    socket.write_all(&spec).unwrap();
    let mut hello = Vec::new();
    let mut byte = [0u8];
    while socket.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        hello.push(byte[0]);
    }
    let v: Value = serde_json::from_slice(&hello).expect("a hello");
    v["hello"]["pid"].as_i64().expect("the container's pid") as i32
}

/// The least work any pod's start needs besides HTTP, volumes and status, done as directly as
/// this machine allows, to bound what a start can reach here. A least pod is a record file
/// written and renamed (not fsync'd, as if one fsync served every pod), the pod's and its
/// container's cgroups made in every hierarchy procnode uses (those of the bench's procnode
/// flags; none with cgroups off), and its container: started by a supervisor that joins it to
/// them, or (without a supervisor executable) spawned and moved into them.
struct LeastPods<'a> {
    cgroups: procnode::runtime::cgroup::Cgroups,
    records: std::path::PathBuf,
    shim: Option<&'a std::path::Path>,
}

/// A least pod's container: spawned directly, or by its supervisor (and its pid).
enum Started {
    Bare(std::process::Child),
    Supervised(procnode::runtime::process::SpawnedShim, i32),
}

impl<'a> LeastPods<'a> {
    fn new(
        config: &procnode::Config,
        records: &std::path::Path,
        shim: Option<&'a std::path::Path>,
    ) -> Self {
        let cgroups = procnode::runtime::cgroup::Cgroups::detect(
            config.cgroups,
            "procnode-bench-floor",
            config.pids_limit(),
        );
        std::fs::create_dir_all(records).unwrap();
        LeastPods {
            cgroups,
            records: records.to_path_buf(),
            shim,
        }
    }

    fn start(&self, pod: &str) -> (String, Started) {
        let limits = procnode::runtime::cgroup::Limits::default();
        let tmp = self.records.join(format!(".{pod}.tmp"));
        std::fs::write(&tmp, SLEEPER).unwrap();
        std::fs::rename(&tmp, self.records.join(pod)).unwrap();
        self.cgroups.create_pod(pod, &[limits]).unwrap();
        let dirs = self
            .cgroups
            .create_container(pod, "sleeper", &limits)
            .unwrap();
        let started = match self.shim {
            Some(shim) => {
                let socket = self.records.join(format!("{pod}.sock"));
                let socket = socket.to_str().unwrap();
                let mut s = procnode::runtime::process::spawn_shim(shim, socket).unwrap();
                let pid = greet(&mut s.socket, &dirs);
                Started::Supervised(s, pid)
            }
            None => {
                let child = raw_sleeper().spawn().unwrap();
                for d in &dirs {
                    std::fs::write(d.join("cgroup.procs"), child.id().to_string()).unwrap();
                }
                Started::Bare(child)
            }
        };
        (pod.to_string(), started)
    }

    /// Kills the pods' processes and removes their cgroups.
    fn stop(&self, pods: Vec<(String, Started)>) {
        for (pod, started) in pods {
            match started {
                Started::Bare(mut child) => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                Started::Supervised(s, pid) => {
                    kill_supervised(&s, pid);
                    let _ = s.exit.blocking_recv();
                }
            }
            self.cgroups.remove_pod(&pod).unwrap();
        }
        self.cgroups.remove_parent_if_empty();
    }
}

/// `n` raw spawns of `sleep 600` (spawns per second), then `n` least pods on `threads`
/// threads (pods per second), to bound what a create rate can reach here.
fn least_pod_rate(n: usize, threads: usize, least_pods: &LeastPods) -> (f64, f64) {
    let t = Instant::now();
    let mut children: Vec<_> = (0..n).map(|_| raw_sleeper().spawn().unwrap()).collect();
    let raw_rate = n as f64 / t.elapsed().as_secs_f64();
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let t = Instant::now();
    let started: Vec<_> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|k| {
                s.spawn(move || {
                    (k..n)
                        .step_by(threads)
                        .map(|i| least_pods.start(&format!("podrate{threads}-{i}")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let pod_rate = n as f64 / t.elapsed().as_secs_f64();
    least_pods.stop(started);
    (raw_rate, pod_rate)
}

/// Runs `bench floor N` (with this run's `BENCH_SERVER_ARGS`) and returns its figures by
/// name: sorted latencies in microseconds, or rates.
fn floor_figures(n: usize) -> std::collections::HashMap<String, Vec<u64>> {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.arg("floor").arg(n.to_string());
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "bench floor: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next()?.to_string();
            Some((name, w.filter_map(|x| x.parse().ok()).collect()))
        })
        .collect()
}

/// A floor figure's microseconds as latencies.
fn micros(figures: &[u64]) -> Vec<Duration> {
    figures
        .iter()
        .map(|&us| Duration::from_micros(us))
        .collect()
}

/// The floor's least-pod rates (see [`least_pod_rate`]) as rows: pods per second beside the raw
/// spawns per second measured just before them.
fn least_pod_rows(floors: &std::collections::HashMap<String, Vec<u64>>) -> Vec<Row> {
    let mut rows = Vec::new();
    for threads in [1, 2] {
        let Some(rates) = floors.get(&format!("rate{threads}")) else {
            continue;
        };
        let raw = rates[0] as f64;
        for (what, pods) in [
            ("container spawned and moved", rates[1]),
            ("a supervisor started and greeted", rates[2]),
        ] {
            rows.push(row(
                &format!(
                    "floor: least pods (record, cgroups, {what}; no HTTP), {threads} \
                     thread(s): pods/s"
                ),
                format!("{pods}"),
                format!("{raw:.0} (raw spawns/s)"),
                format!("{:.2}×", pods as f64 / raw),
                if threads == 2 {
                    "bound for ≥ 0.8×"
                } else {
                    ""
                },
            ));
        }
    }
    rows
}

/// `n` fsync'd atomic writes of a pod record (as the create path makes them, before it
/// answers), `pause` apart, into a scratch directory of the temporary directory's file
/// system: their latencies, sorted.
fn fsynced_writes(n: usize, pause: Duration) -> Vec<Duration> {
    let scratch = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        std::thread::sleep(pause);
        let t = Instant::now();
        procnode::runtime::records::write_atomic(
            &scratch.path().join(format!("p{}", i % 20)),
            SLEEPER.as_bytes(),
        )
        .unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    lat
}

/// The create path's durable record write, one every [`ISOLATED_PAUSE`]: what an isolated
/// create must wait for before it is answered, whatever procnode does besides.
fn isolated_fsync_row() -> Row {
    let lat = fsynced_writes(20, ISOLATED_PAUSE);
    row(
        &format!(
            "fsync'd atomic write of a 2 KB pod record, one every {} ms: p50 / p99",
            ISOLATED_PAUSE.as_millis()
        ),
        format!("{} / {}", ms(pct(&lat, 0.5)), ms(pct(&lat, 0.99))),
        "-".into(),
        "-".into(),
        "",
    )
}

/// The pause between the pods of the isolated-start rows: longer than a few RCU grace periods,
/// so that each start pays whatever the kernel makes the first cgroup move after a pause wait
/// (see docs/systemd.md, `favordynmods`), as pods created now and then do.
const ISOLATED_PAUSE: Duration = Duration::from_millis(200);

/// Creates `n` sleeper pods in namespace `ns`, one after another and `pause` apart, each
/// polled until Running. Returns createPod → Running and the create request alone (both
/// sorted), and the pods.
async fn start_latencies(
    client: &Client,
    ns: &str,
    n: usize,
    pause: Duration,
) -> (Vec<Duration>, Vec<Duration>, Vec<Value>) {
    let (mut running, mut created, mut pods) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        tokio::time::sleep(pause).await;
        let name = format!("l{i}");
        let p = pod(ns, &name, &["sleep", "600"]);
        let t0 = Instant::now();
        created.push(client.create(&p).await.total);
        loop {
            let (_, s) = client.status(ns, &name).await;
            if s["phase"] == "Running" {
                break;
            }
        }
        running.push(t0.elapsed());
        pods.push(p);
    }
    running.sort();
    created.sort();
    (running, created, pods)
}

/// Figure 1 (and 8): creates `n` pods with `clients` concurrent clients until all Running.
/// Returns pods per second.
async fn create_run(base: &str, ns: &str, n: usize, clients: usize) -> (f64, Vec<Value>) {
    let pods: Vec<Value> = (0..n)
        .map(|i| pod(ns, &format!("p{i}"), &["sleep", "600"]))
        .collect();
    let pods = Arc::new(pods);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..clients {
        let client = Client::new(base);
        let pods = pods.clone();
        tasks.push(tokio::spawn(async move {
            let mine: Vec<&Value> = pods.iter().skip(k).step_by(clients).collect();
            for p in &mine {
                client.create(p).await;
            }
            let names: Vec<String> = mine
                .iter()
                .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
                .collect();
            let ns = mine[0]["metadata"]["namespace"]
                .as_str()
                .unwrap()
                .to_string();
            client.wait_running(&ns, &names).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    (rate, Arc::try_unwrap(pods).unwrap())
}

/// Deletes `pods` with `clients` concurrent clients; returns the total time.
async fn delete_all(base: &str, pods: Vec<Value>, clients: usize) -> Duration {
    let pods = Arc::new(pods);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..clients {
        let client = Client::new(base);
        let pods = pods.clone();
        tasks.push(tokio::spawn(async move {
            for p in pods.iter().skip(k).step_by(clients) {
                client.delete(p).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

/// Figure 4 (and 8): p50/p99 of a read path, `n` requests spread over `clients` clients.
async fn read_path(
    base: &str,
    path: &str,
    n: usize,
    clients: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let (totals, servers, _) = read_path_timed(base, path, n, clients).await;
    (totals, servers)
}

/// As [`read_path`], also returning the wall-clock time of the whole batch.
async fn read_path_timed(
    base: &str,
    path: &str,
    n: usize,
    clients: usize,
) -> (Vec<Duration>, Vec<Duration>, Duration) {
    let barrier = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = Client::new(base);
        let path = path.to_string();
        let per = n / clients;
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            client.send(reqwest::Method::GET, &path, None).await; // warm the connection
            barrier.wait().await;
            let mut totals = Vec::with_capacity(per);
            let mut servers = Vec::with_capacity(per);
            for _ in 0..per {
                let t = client.send(reqwest::Method::GET, &path, None).await;
                assert_eq!(t.status, 200, "{path}");
                totals.push(t.total);
                servers.push(t.server);
            }
            (totals, servers)
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let (mut totals, mut servers) = (Vec::new(), Vec::new());
    for t in tasks {
        let (a, b) = t.await.unwrap();
        totals.extend(a);
        servers.extend(b);
    }
    let wall = start.elapsed();
    totals.sort();
    servers.sort();
    (totals, servers, wall)
}

/// A shell script that writes `line` as fast as it can through dd for `secs` seconds; dd
/// reports the bytes it wrote on stderr when interrupted.
fn flood_script(secs: u64, sink: &str) -> String {
    let line = "x".repeat(99);
    format!("yes {line} | timeout --foreground -s INT {secs} dd bs=64k iflag=fullblock {sink}")
}

fn dd_bytes(stderr_text: &str) -> Option<u64> {
    stderr_text
        .lines()
        .rev()
        .find(|l| l.contains("bytes") && l.contains("copied"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
}

async fn bench(scale: Scale) {
    machine_facts();
    println!(
        "scale: {} pods for create/delete, {} idle pods for reads and memory\n",
        scale.create, scale.idle
    );
    let mut rows = Vec::new();

    let server = Server::start();
    let client = Client::new(&server.base);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 7. Memory, and the idle pods figure 4 reads against.
    let rss0 = server.rss_bytes();
    let idle: Vec<Value> = (0..scale.idle)
        .map(|i| pod("idle", &format!("i{i}"), &["sleep", "600"]))
        .collect();
    let hundred = 100.min(scale.idle);
    for p in &idle[..hundred] {
        client.create(p).await;
    }
    let names: Vec<String> = (0..hundred).map(|i| format!("i{i}")).collect();
    client.wait_running("idle", &names).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss100 = server.rss_bytes();
    let pss100 = server.pss_bytes();
    for p in &idle[hundred..] {
        client.create(p).await;
    }
    let names: Vec<String> = (0..scale.idle).map(|i| format!("i{i}")).collect();
    client.wait_running("idle", &names).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_full = server.rss_bytes();
    let (pss_own, pss_sups, sups) = server.pss_bytes();
    let per_pod = (rss_full.saturating_sub(rss0)) / scale.idle as u64;
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
    rows.push(row("7. RSS, 0 pods", mib(rss0), "-".into(), "-".into(), ""));
    rows.push(row(
        "7. RSS, 100 idle pods",
        mib(rss100),
        "-".into(),
        "-".into(),
        "",
    ));
    rows.push(row(
        &format!("7. RSS, {} idle pods", scale.idle),
        mib(rss_full),
        "-".into(),
        format!("{per_pod} B/pod"),
        "≤ 64 MiB at 1000",
    ));
    // Everything the pods cost: procnode's share and every supervisor's.
    let kb = |b: u64| format!("{:.0} KB", b as f64 / 1024.0);
    for (pods, (own, supervisors, n)) in
        [(hundred, pss100), (scale.idle, (pss_own, pss_sups, sups))]
    {
        rows.push(row(
            &format!("7. PSS, {pods} idle pods: procnode + {n} supervisors"),
            format!("{} + {}", mib(own), mib(supervisors)),
            "-".into(),
            format!(
                "{} / supervisor, {} / pod all told",
                kb(supervisors / n.max(1) as u64),
                kb((own + supervisors) / pods.max(1) as u64)
            ),
            "≤ 150 KB / supervisor, ≤ 250 KB / pod",
        ));
    }

    // 4. Read paths with the idle pods present.
    let reads: [(&str, String, usize, &str); 5] = [
        (
            "getPodStatus",
            "/getPodStatus?namespace=idle&name=i7".into(),
            scale.reads,
            "p50 ≤ 0.5 ms",
        ),
        ("capacity", "/capacity".into(), scale.reads, "p50 ≤ 0.5 ms"),
        ("nodeConditions", "/nodeConditions".into(), scale.reads, ""),
        (
            "getPods (short form past 1 MB)",
            "/getPods".into(),
            scale.reads / 10,
            "p50 ≤ 20 ms",
        ),
        (
            "getPods?full=true",
            "/getPods?full=true".into(),
            scale.reads / 10,
            "p50 ≤ 20 ms",
        ),
    ];
    // Baseline for reads: GET /healthz, the cheapest request the same server answers.
    let (health_total, health_server) = read_path(&server.base, "/healthz", scale.reads, 1).await;
    rows.push(row(
        "4. baseline GET /healthz (HTTP / server)",
        format!(
            "{} / {}",
            ms(pct(&health_total, 0.5)),
            ms(pct(&health_server, 0.5))
        ),
        "-".into(),
        "-".into(),
        "",
    ));
    for (name, path, n, target) in &reads {
        let (total, srv) = read_path(&server.base, path, *n, 1).await;
        rows.push(row(
            &format!("4. {name} with {} pods: p50 / p99 over HTTP", scale.idle),
            format!("{} / {}", ms(pct(&total, 0.5)), ms(pct(&total, 0.99))),
            format!(
                "{} / {}",
                ms(pct(&health_total, 0.5)),
                ms(pct(&health_total, 0.99))
            ),
            format!(
                "{:.2}×",
                pct(&total, 0.5).as_secs_f64() / pct(&health_total, 0.5).as_secs_f64()
            ),
            target,
        ));
        rows.push(row(
            &format!("4. {name}: p50 / p99 server-side"),
            format!("{} / {}", ms(pct(&srv, 0.5)), ms(pct(&srv, 0.99))),
            format!(
                "{} / {}",
                ms(pct(&health_server, 0.5)),
                ms(pct(&health_server, 0.99))
            ),
            "-".into(),
            target,
        ));
    }
    // 8. Read scaling with more clients.
    for clients in [1, 2, 4] {
        let (total, _) = read_path(
            &server.base,
            "/getPodStatus?namespace=idle&name=i7",
            scale.reads,
            clients,
        )
        .await;
        let wall: f64 = total.iter().map(|d| d.as_secs_f64()).sum::<f64>() / clients as f64;
        rows.push(row(
            &format!("8. getPodStatus, {clients} client(s): p50 / throughput"),
            format!(
                "{} / {:.0} req/s",
                ms(pct(&total, 0.5)),
                total.len() as f64 / wall
            ),
            "-".into(),
            "-".into(),
            "no worse with more clients",
        ));
    }
    let t = delete_all(&server.base, idle, 2).await;
    println!("(deleted {} idle pods in {})", scale.idle, ms(t));

    // 1 and 3. Create throughput and delete, against direct tokio spawns.
    let base_lat = {
        let mut l = baseline_spawn(scale.create).await;
        l.sort();
        l
    };
    let base_total: Duration = base_lat.iter().sum();
    let base_rate = scale.create as f64 / base_total.as_secs_f64();
    let (rate, pods) = create_run(&server.base, "c1", scale.create, 1).await;
    rows.push(row(
        &format!(
            "1. create {} pods until all Running (1 client)",
            scale.create
        ),
        format!("{rate:.0} pods/s"),
        format!("{base_rate:.0} spawns/s"),
        format!("{:.2}×", rate / base_rate),
        "≥ 0.8×",
    ));
    let del = delete_all(&server.base, pods, 1).await;
    rows.push(row(
        &format!("3. delete {} running pods (1 client)", scale.create),
        ms(del),
        "-".into(),
        "-".into(),
        "≤ 2 s",
    ));
    for clients in [2, 4] {
        let ns = format!("c{clients}");
        let (rate, pods) = create_run(&server.base, &ns, scale.create, clients).await;
        rows.push(row(
            &format!("8. create {} pods, {clients} clients", scale.create),
            format!("{rate:.0} pods/s"),
            format!("{base_rate:.0} spawns/s"),
            format!("{:.2}×", rate / base_rate),
            "no worse with more clients",
        ));
        let del = delete_all(&server.base, pods, clients).await;
        rows.push(row(
            &format!("8. delete {} pods, {clients} clients", scale.create),
            ms(del),
            "-".into(),
            "-".into(),
            "",
        ));
    }

    // What durability costs here: an fsync'd atomic write of a pod-sized file, alone.
    let fsync_lat = fsynced_writes(200, Duration::ZERO);
    rows.push(row(
        "2. baseline: fsync'd atomic write of a 2 KB file (the create path's pod record)",
        format!(
            "{} / {}",
            ms(pct(&fsync_lat, 0.5)),
            ms(pct(&fsync_lat, 0.99))
        ),
        "-".into(),
        "-".into(),
        "",
    ));
    rows.push(isolated_fsync_row());

    // 2. Start latency: create request → Running in getPodStatus.
    let (running_lat, create_lat, lat_pods) =
        start_latencies(&client, "lat", scale.latency, Duration::ZERO).await;
    rows.push(row(
        "2. createPod → Running seen: p50 / p99",
        format!(
            "{} / {}",
            ms(pct(&running_lat, 0.5)),
            ms(pct(&running_lat, 0.99))
        ),
        format!("{} / {}", ms(pct(&base_lat, 0.5)), ms(pct(&base_lat, 0.99))),
        format!(
            "+{}",
            ms(pct(&running_lat, 0.5).saturating_sub(pct(&base_lat, 0.5)))
        ),
        "p50 ≤ baseline + 1 ms; p99 ≤ 5 ms",
    ));
    rows.push(row(
        "2. createPod request alone: p50 / p99",
        format!(
            "{} / {}",
            ms(pct(&create_lat, 0.5)),
            ms(pct(&create_lat, 0.99))
        ),
        "-".into(),
        "-".into(),
        "",
    ));
    let (alone_lat, _, alone_pods) =
        start_latencies(&client, "alone", scale.latency / 10, ISOLATED_PAUSE).await;
    rows.push(start_row(
        &format!(
            "2. createPod → Running, one pod every {} ms: p50 / p99",
            ISOLATED_PAUSE.as_millis()
        ),
        &alone_lat,
        &base_lat,
    ));
    delete_all(&server.base, alone_pods, 1).await;
    delete_all(&server.base, lat_pods, 1).await;

    // 5. Log capture: a child writing as fast as it can, vs the same child into `cat > /dev/null`.
    let secs = scale.log_secs;
    let report = tempfile::NamedTempFile::new().unwrap();
    let script = format!(
        "{} 2>{} | cat > /dev/null; cat {}",
        flood_script(secs, ""),
        report.path().display(),
        report.path().display()
    );
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .await
        .unwrap();
    let base_bytes = dd_bytes(&String::from_utf8_lossy(&out.stdout)).expect("baseline dd report");
    let base_bps = base_bytes as f64 / secs as f64;

    // One child alone, then four at once (API latency while they flood).
    let mut flood_pods = Vec::new();
    for floods in [1usize, 4] {
        let pods: Vec<Value> = (0..floods)
            .map(|i| {
                let name = if floods == 1 {
                    "flood".to_string()
                } else {
                    format!("flood4-{i}")
                };
                let mut p = pod("logs", &name, &["sh", "-c", &flood_script(secs, "")]);
                p["spec"]["restartPolicy"] = json!("Never");
                p
            })
            .collect();
        for p in &pods {
            client.create(p).await;
        }
        let mut during = Vec::new();
        let until = Instant::now() + Duration::from_secs(secs);
        let probe = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
        while Instant::now() < until {
            let (t, _) = client.status("logs", &probe).await;
            during.push(t.total);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        during.sort();
        let mut captured = 0u64;
        for p in &pods {
            let name = p["metadata"]["name"].as_str().unwrap();
            loop {
                let (_, s) = client.status("logs", name).await;
                if s["phase"] == "Succeeded" || s["phase"] == "Failed" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let t = client
                .send(
                    reqwest::Method::GET,
                    &format!("/getContainerLogs?namespace=logs&podName={name}&containerName=sleeper&stream=stderr"),
                    None,
                )
                .await;
            captured +=
                dd_bytes(&String::from_utf8_lossy(&t.body)).expect("dd report in stderr log");
        }
        let bps = captured as f64 / secs as f64;
        let mbs = |b: f64| format!("{:.0} MB/s", b / 1e6);
        rows.push(row(
            &format!("5. log capture, {floods} child(ren) writing 100-byte lines flat out (total)"),
            mbs(bps),
            format!("{} (one child into cat > /dev/null)", mbs(base_bps)),
            format!("{:.2}×", bps / base_bps),
            if floods == 1 { "≥ 0.5×" } else { "" },
        ));
        rows.push(row(
            &format!("5. getPodStatus p50 / p99 while {floods} child(ren) flood"),
            format!("{} / {}", ms(pct(&during, 0.5)), ms(pct(&during, 0.99))),
            format!(
                "{} / {}",
                ms(pct(&health_total, 0.5)),
                ms(pct(&health_total, 0.99))
            ),
            "-".into(),
            "p99 ≤ 10 ms",
        ));
        flood_pods.extend(pods);
    }

    // 6. Tail on a full buffer (1 MiB of 100-byte lines).
    for (n, target) in [(100, "p50 ≤ 1 ms"), (10_000, "")] {
        let (total, srv) = read_path(
            &server.base,
            &format!(
                "/getContainerLogs?namespace=logs&podName=flood&containerName=sleeper&tail={n}"
            ),
            scale.reads / 5,
            1,
        )
        .await;
        rows.push(row(
            &format!("6. tail={n} on a full 1 MiB buffer: p50 HTTP / server"),
            format!("{} / {}", ms(pct(&total, 0.5)), ms(pct(&srv, 0.5))),
            "-".into(),
            "-".into(),
            target,
        ));
    }
    delete_all(&server.base, flood_pods, 1).await;

    server.stop();
    println!();
    print_table(&rows);
}

/// `bench -- scale N`: N sleeper pods on this machine, end to end. Creates them (4 clients),
/// measures memory (procnode and every supervisor) and the read paths with all of them
/// present, kills procnode with SIGKILL and times a new one re-adopting every pod (none lost,
/// none started twice), then times deleting them all.
async fn scale(n: usize) {
    machine_facts();
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    println!(
        "kernel limits: pid_max {}, fs.nr_open {}, fs.file-max {}; this shell's RLIMIT_NOFILE {:?}",
        read("/proc/sys/kernel/pid_max"),
        read("/proc/sys/fs/nr_open"),
        read("/proc/sys/fs/file-max"),
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap()
    );
    // A descriptor of procnode's per container: a shell's usual limit (1024) is too low for
    // 10,000 (the systemd unit sets LimitNOFILE=1048576). Raised here, as root may, for the
    // procnode started below (it raises its soft limit to the hard one itself).
    let nr_open: u64 = read("/proc/sys/fs/nr_open").parse().unwrap_or(1 << 20);
    let _ = nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
        nr_open,
        nr_open,
    );
    // The supervisors of the procnode killed below come back to this process, which reaps them.
    reap_orphans();
    let state_dir = tempfile::tempdir().unwrap();
    let extra = std::env::var("BENCH_SERVER_ARGS").unwrap_or_default();
    let max = (n + 100).to_string();
    let mut args: Vec<&std::ffi::OsStr> = ["--max-pods", &max, "--state-dir"]
        .map(std::ffi::OsStr::new)
        .to_vec();
    args.push(state_dir.path().as_os_str());
    args.extend(extra.split_whitespace().map(std::ffi::OsStr::new));
    let (mut child, base) = common::spawn_serving(&args, &[]);
    let mut rows = Vec::new();
    let started = Instant::now();
    let (rate, pods) = create_run(&base, "s", n, 4).await;
    let limits = read(&format!("/proc/{}/limits", child.id()));
    if let Some(l) = limits.lines().find(|l| l.starts_with("Max open files")) {
        println!(
            "procnode's {}",
            l.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
    rows.push(row(
        &format!("create {n} pods until all Running (4 clients)"),
        format!("{rate:.0} pods/s ({})", ms(started.elapsed())),
        "-".into(),
        "-".into(),
        "all Running",
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fds = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .map(|d| d.count())
        .unwrap_or(0);
    rows.push(row(
        &format!("procnode's open descriptors at {n} pods"),
        fds.to_string(),
        "-".into(),
        format!("{:.2} / pod", fds as f64 / n as f64),
        "within RLIMIT_NOFILE",
    ));
    let (own, sups, count) = pss_of(child.id(), state_dir.path());
    let mib = |b: u64| format!("{:.0} MiB", b as f64 / (1 << 20) as f64);
    rows.push(row(
        &format!("PSS at {n} pods: procnode + {count} supervisors"),
        format!("{} + {} = {}", mib(own), mib(sups), mib(own + sups)),
        "-".into(),
        format!("{:.0} KB / pod", (own + sups) as f64 / 1024.0 / n as f64),
        "≤ 2.5 GB",
    ));
    let (status, _) = read_path(&base, "/getPodStatus?namespace=s&name=p7", 1000, 1).await;
    rows.push(row(
        &format!("getPodStatus at {n} pods: p50 / p99"),
        format!("{} / {}", ms(pct(&status, 0.5)), ms(pct(&status, 0.99))),
        "-".into(),
        "-".into(),
        "p50 ≤ 0.5 ms",
    ));
    let (list, _) = read_path(&base, "/getPods", 20, 1).await;
    rows.push(row(
        &format!("getPods (short form) at {n} pods: p50 / p99"),
        format!("{} / {}", ms(pct(&list, 0.5)), ms(pct(&list, 0.99))),
        "-".into(),
        "-".into(),
        "p50 ≤ 100 ms",
    ));

    // kill -9, and a new procnode on the same state directory.
    child.kill().unwrap();
    let _ = child.wait();
    let restarted = Instant::now();
    let (mut child, base) = common::spawn_serving(&args, &[]);
    let client = Client::new(&base);
    let listening = restarted.elapsed();
    let all_running = loop {
        let t = client.send(reqwest::Method::GET, "/getPods", None).await;
        let list: Vec<Value> = serde_json::from_slice(&t.body).unwrap_or_default();
        let running = list
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .count();
        if list.len() == n && running == n {
            break restarted.elapsed();
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(300),
            "{running} of {n} running again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let t = client
        .send(reqwest::Method::GET, "/getPods?full=true", None)
        .await;
    let list: Vec<Value> = serde_json::from_slice(&t.body).unwrap();
    let restarts: i64 = list
        .iter()
        .map(|p| {
            p["status"]["containerStatuses"][0]["restartCount"]
                .as_i64()
                .unwrap_or(-1)
        })
        .sum();
    let (_, _, supervisors) = pss_of(child.id(), state_dir.path());
    rows.push(row(
        &format!("kill -9, restart: {n} pods re-adopted (listening / all Running)"),
        format!("{} / {}", ms(listening), ms(all_running)),
        "-".into(),
        format!(
            "{} pods, {supervisors} supervisors, {restarts} restarts",
            list.len()
        ),
        "≤ 10 s, none lost or duplicated",
    ));

    let deleting = Instant::now();
    let deleted = delete_all(&base, pods, 4).await;
    let gone = loop {
        let t = client.send(reqwest::Method::GET, "/getPods", None).await;
        let list: Vec<Value> = serde_json::from_slice(&t.body).unwrap_or_default();
        if list.is_empty() {
            break deleting.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (_, _, left) = pss_of(child.id(), state_dir.path());
    rows.push(row(
        &format!("delete all {n} pods (4 clients): requests / until none is listed"),
        format!("{} / {}", ms(deleted), ms(gone)),
        "-".into(),
        format!("{left} supervisors left"),
        "≤ 20 s",
    ));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    println!();
    print_table(&rows);
}

/// While set, the orphan reaper waits: commands run and awaited meanwhile keep their own exit.
static REAPING_PAUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Reaps whatever comes back to this process (a subreaper): supervisors of a killed procnode,
/// conmon's daemonised monitors.
fn reap_orphans() {
    procnode::runtime::process::become_subreaper().unwrap();
    std::thread::spawn(|| loop {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        if REAPING_PAUSED.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match waitpid(nix::unistd::Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => std::thread::sleep(Duration::from_millis(20)),
            Ok(_) => {}
        }
    });
}

/// PSS (bytes) of every process whose command line starts with `program`, and how many.
fn pss_of_program(program: &str) -> (u64, usize) {
    pss_of_processes(|args| args.first() == Some(&program.as_bytes()))
}

/// `bench -- peers N`: the start latency and the memory per container of procnode (N sleeper
/// pods, one after another, createPod → Running) beside runc + conmon from Debian starting the
/// same `sleep` N times in a root holding only busybox (conmon runs `runc create`, then `runc
/// start`, as podman and CRI-O drive them), and raw spawns, in one run. Skipped with a note
/// where runc, conmon or busybox is missing.
async fn peers(n: usize) {
    machine_facts();
    reap_orphans();
    let mut rows = Vec::new();
    let kb = |b: u64, n: usize| format!("{:.0} KB", b as f64 / 1024.0 / n.max(1) as f64);
    let base_lat = {
        let mut l = baseline_spawn(n).await;
        l.sort();
        l
    };
    rows.push(row(
        &format!("raw spawn of sleep ({n}, one after another): p50 / p99"),
        format!("{} / {}", ms(pct(&base_lat, 0.5)), ms(pct(&base_lat, 0.99))),
        "-".into(),
        "-".into(),
        "",
    ));

    // procnode.
    let server = Server::start();
    let client = Client::new(&server.base);
    let (lat, _, mut pods) = start_latencies(&client, "peer", n, Duration::ZERO).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (own, sups, count) = server.pss_bytes();
    rows.push(start_row(
        "procnode: createPod → Running: p50 / p99",
        &lat,
        &base_lat,
    ));
    let (alone, _, alone_pods) =
        start_latencies(&client, "alone", (n / 10).max(1), ISOLATED_PAUSE).await;
    rows.push(start_row(
        &format!(
            "procnode: createPod → Running, one pod every {} ms: p50 / p99",
            ISOLATED_PAUSE.as_millis()
        ),
        &alone,
        &base_lat,
    ));
    pods.extend(alone_pods);
    let floors = floor_figures(n);
    let floor_raw = &micros(&floors["raw"]);
    rows.push(start_row(
        "floor: raw spawn, in the floor's own process: p50 / p99",
        floor_raw,
        floor_raw,
    ));
    rows.push(start_row(
        "floor: a supervisor started and greeted, nothing else: p50 / p99",
        &micros(&floors["cold"]),
        floor_raw,
    ));
    rows.push(start_row(
        "floor: a supervisor started beforehand, spec → hello: p50 / p99",
        &micros(&floors["warm"]),
        floor_raw,
    ));
    rows.push(isolated_fsync_row());
    rows.push(start_row(
        "floor: least start (record, cgroups, a supervisor started and greeted; no HTTP, no \
         volumes): p50 / p99",
        &micros(&floors["least"]),
        floor_raw,
    ));
    rows.extend(least_pod_rows(&floors));
    rows.push(row(
        &format!("procnode: PSS per container ({count} supervisors; procnode's share)"),
        format!("{} (+ {})", kb(sups, count), kb(own, n)),
        "-".into(),
        "-".into(),
        "≤ 150 KB / supervisor",
    ));
    delete_all(&server.base, pods, 2).await;
    server.stop();

    // runc + conmon.
    let have = |p: &str| std::path::Path::new(p).exists();
    let (runc, conmon) = ("/usr/sbin/runc", "/usr/bin/conmon");
    if !(have(runc) && have(conmon) && have("/bin/busybox")) {
        println!("\n(runc + conmon skipped: apt-get install runc conmon busybox-static)");
    } else {
        match runc_conmon(n, runc, conmon) {
            Ok((lat, pss, count)) => {
                rows.push(start_row(
                    "runc 1.1 + conmon 2.1: conmon → runc create → runc start: p50 / p99",
                    &lat,
                    &base_lat,
                ));
                rows.push(row(
                    &format!("runc + conmon: PSS per container ({count} conmon)"),
                    kb(pss, count),
                    "-".into(),
                    "-".into(),
                    "",
                ));
            }
            Err(e) => println!("\n(runc + conmon skipped: {e})"),
        }
    }
    println!();
    print_table(&rows);
}

/// Starts `n` busybox `sleep 600` containers with conmon and runc; their start latencies, the
/// conmon processes' PSS and how many there were. Every container is removed after.
fn runc_conmon(n: usize, runc: &str, conmon: &str) -> Result<(Vec<Duration>, u64, usize), String> {
    use std::process::Command;
    use std::sync::atomic::Ordering;
    REAPING_PAUSED.store(true, Ordering::SeqCst);
    // (A reaper waiting meanwhile would take the exits of runc and conmon's first process.)
    std::thread::sleep(Duration::from_millis(50));
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let bundle = dir.path().join("bundle");
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
    std::fs::copy("/bin/busybox", bin.join("busybox")).map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink("busybox", bin.join("sleep")).map_err(|e| e.to_string())?;
    let ok = |out: std::io::Result<std::process::Output>, what: &str| -> Result<(), String> {
        match out {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(format!("{what}: {}", String::from_utf8_lossy(&o.stderr))),
            Err(e) => Err(format!("{what}: {e}")),
        }
    };
    ok(
        Command::new(runc).arg("spec").current_dir(&bundle).output(),
        "runc spec",
    )?;
    let config = bundle.join("config.json");
    let mut spec: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    spec["process"]["args"] = json!(["sleep", "600"]);
    spec["process"]["terminal"] = json!(false);
    std::fs::write(&config, spec.to_string()).unwrap();
    let (exits, sockets) = (dir.path().join("exits"), dir.path().join("sockets"));
    std::fs::create_dir_all(&exits).unwrap();
    std::fs::create_dir_all(&sockets).unwrap();
    let prefix = format!("bench-{}-", std::process::id());
    let mut lat = Vec::new();
    let mut started = Vec::new();
    let result = (|| {
        for i in 0..n {
            let id = format!("{prefix}{i}");
            let pidfile = dir.path().join(format!("{id}.pid"));
            let t0 = Instant::now();
            ok(
                Command::new(conmon)
                    .args([
                        "--api-version",
                        "1",
                        "-c",
                        &id,
                        "-u",
                        &id,
                        "-n",
                        &id,
                        "-r",
                        runc,
                    ])
                    .arg("-b")
                    .arg(&bundle)
                    .arg("-p")
                    .arg(&pidfile)
                    .arg("-l")
                    .arg(dir.path().join(format!("{id}.log")))
                    .arg("--exit-dir")
                    .arg(&exits)
                    .arg("--socket-dir-path")
                    .arg(&sockets)
                    .args(["--syslog=false", "--log-level", "error"])
                    .output(),
                "conmon",
            )?;
            started.push(id.clone());
            while !pidfile.exists() {
                if t0.elapsed() > Duration::from_secs(10) {
                    return Err(format!("{id}: runc create never wrote its pid file"));
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            ok(
                Command::new(runc).args(["start", &id]).output(),
                "runc start",
            )?;
            lat.push(t0.elapsed());
        }
        Ok(())
    })();
    std::thread::sleep(Duration::from_millis(500));
    let (pss, count) = pss_of_program(conmon);
    for id in &started {
        let _ = Command::new(runc).args(["kill", id, "KILL"]).output();
    }
    std::thread::sleep(Duration::from_millis(500));
    for id in &started {
        let _ = Command::new(runc).args(["delete", "-f", id]).output();
    }
    // Each conmon exits once its container is gone: wait for them, so that none is still
    // running (and so re-parented past this process) when the benchmark ends.
    let waiting = Instant::now();
    while pss_of_program(conmon).1 > 0 && waiting.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // And collect them now (they came back to this process), before anything can end it.
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    while !matches!(
        waitpid(nix::unistd::Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)),
        Ok(WaitStatus::StillAlive) | Err(_)
    ) {}
    REAPING_PAUSED.store(false, Ordering::SeqCst);
    result?;
    lat.sort();
    Ok((lat, pss, count))
}
