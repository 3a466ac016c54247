//! Shared test support: a real procnode server on 127.0.0.1:0, pod builders shaped like the
//! API-server pods in `tests/fixtures/`, polling with a deadline, and /proc checks for leaks.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod apiserver;
pub mod spdy;
pub mod tls;

/// A pod as a Kubernetes API server stores it (the sleeper fixture), with `name`, `uid`,
/// `command` and `restartPolicy` replaced.
pub fn pod(name: &str, command: &[&str], restart_policy: &str) -> Value {
    let mut p: Value =
        serde_json::from_str(include_str!("../fixtures/pod-sleeper.json")).expect("fixture");
    p["metadata"]["name"] = json!(name);
    p["metadata"]["uid"] = json!(format!("uid-{name}"));
    p["metadata"]["labels"] = json!({ "app": name });
    p["spec"]["restartPolicy"] = json!(restart_policy);
    p["spec"]["terminationGracePeriodSeconds"] = json!(5);
    p["spec"]["containers"][0]["name"] = json!("main");
    p["spec"]["containers"][0]["command"] = json!(command);
    p
}

/// [`pod`] without the fixture's service-account volume, running `script` with `sh -c`.
pub fn bare_pod(name: &str, script: &str, restart_policy: &str) -> Value {
    let mut p = pod(name, &sh(script), restart_policy);
    p["spec"]["volumes"] = json!([]);
    p["spec"]["containers"][0]["volumeMounts"] = json!([]);
    p
}

/// Whether this test runs as root; says that it is skipped otherwise.
pub fn is_root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipped: this test needs root");
    }
    root
}

pub fn sh(script: &str) -> Vec<&str> {
    vec!["sh", "-c", script]
}

/// Polls `f` until it returns `Some`, failing the test after `limit`.
pub async fn wait_until<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every pid in /proc.
fn pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
}

/// The fields of `/proc/PID/stat` after the parenthesised command (state, ppid, pgrp, ...),
/// or `None` once the process is gone.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Pids of every live (non-zombie) process in process group `pgid`, and of zombies in it.
pub fn group_members(pgid: i32) -> (Vec<i32>, Vec<i32>) {
    let mut live = Vec::new();
    let mut zombies = Vec::new();
    for pid in pids() {
        let Some(f) = stat_fields(pid) else {
            continue;
        };
        if f.len() > 2 && f[2].parse::<i32>().ok() == Some(pgid) {
            if f[0] == "Z" {
                zombies.push(pid);
            } else {
                live.push(pid);
            }
        }
    }
    (live, zombies)
}

/// The parent pid of `pid`, from /proc.
pub fn parent_of(pid: i32) -> i32 {
    let f = stat_fields(pid).expect("stat");
    f.get(1).expect("ppid").parse().expect("ppid number")
}

pub fn pid_alive(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|state| state != "Z"))
}

/// Asserts that no process (live or zombie) is left in any of `pgids`, allowing a moment for
/// the kernel to finish tearing them down.
pub async fn assert_groups_gone(pgids: &[i32]) {
    for &pgid in pgids {
        wait_until(
            &format!("process group {pgid} to be gone"),
            Duration::from_secs(5),
            || async move {
                let (live, zombies) = group_members(pgid);
                (live.is_empty() && zombies.is_empty()).then_some(())
            },
        )
        .await;
    }
}

/// The pid in a `procnode://PID` container ID.
pub fn container_pid(status: &Value, container: &str) -> Option<i32> {
    let statuses = status["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            status["initContainerStatuses"]
                .as_array()
                .into_iter()
                .flatten(),
        );
    for s in statuses {
        if s["name"] == container {
            return s["containerID"]
                .as_str()?
                .strip_prefix("procnode://")?
                .parse()
                .ok();
        }
    }
    None
}

/// Starts the real `procnode` binary on 127.0.0.1:0 with `state_dir` and `extra` flags, and
/// returns it with the address it reports in its JSON start-up log (stderr keeps being drained
/// so it never blocks). Waiting for it is the caller's business.
#[allow(clippy::zombie_processes)]
/// A cgroup parent of a test server's own, stable for its state directory (so that a
/// restarted server finds its pods' cgroups again).
pub fn cgroup_parent_for(state_dir: &std::path::Path) -> String {
    let name: String = state_dir
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("procnode-test{name}")
}

pub fn start_binary(state_dir: &std::path::Path, extra: &[&str]) -> (std::process::Child, String) {
    start_binary_with(state_dir, extra, |_| {})
}

/// [`start_binary`], with `adjust` applied to the command before it is spawned.
pub fn start_binary_with(
    state_dir: &std::path::Path,
    extra: &[&str],
    adjust: impl FnOnce(&mut std::process::Command),
) -> (std::process::Child, String) {
    let (child, addr, _) = start_binary_logged(state_dir, extra, adjust);
    (child, addr)
}

/// The JSON log lines a procnode started by [`start_binary_logged`] has written so far.
pub type LogLines = std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>;

/// [`start_binary_with`], also keeping procnode's log lines.
#[allow(clippy::zombie_processes)]
pub fn start_binary_logged(
    state_dir: &std::path::Path,
    extra: &[&str],
    adjust: impl FnOnce(&mut std::process::Command),
) -> (std::process::Child, String, LogLines) {
    use std::io::{BufRead, BufReader};
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_procnode"));
    adjust(&mut command);
    let mut child = command
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(
            (!extra.iter().any(|a| a.starts_with("--cgroup-parent")))
                .then(|| format!("--cgroup-parent={}", cgroup_parent_for(state_dir))),
        )
        .args(stop_pods_unless_chosen(extra))
        .args(extra)
        .env("PROCNODE_STATE_DIR", state_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start procnode");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("procnode exited before serving")
            .expect("stderr line");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or(serde_json::Value::Null);
        if v["fields"]["message"] == "procnode serving" {
            break v["fields"]["addr"].as_str().expect("addr").to_string();
        }
    };
    let logs = LogLines::default();
    let kept = logs.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                kept.lock().unwrap().push(v);
            }
        }
    });
    (child, addr, logs)
}

/// Test servers stop their pods on exit (so that a test ends with nothing running) unless the
/// test chooses with `--stop-pods-on-exit=...` itself.
fn stop_pods_unless_chosen(extra: &[&str]) -> Option<&'static str> {
    (!extra.iter().any(|a| a.starts_with("--stop-pods-on-exit"))).then_some("--stop-pods-on-exit")
}

/// A procnode server running in this process on 127.0.0.1:0 with its own state dir.
pub struct Server {
    pub base: String,
    /// The kubelet API's address (host:port), when started with it.
    pub kubelet: String,
    pub http: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    pub state_dir: tempfile::TempDir,
    /// Process groups seen by this test; all must be gone when the test ends.
    pub pgids: std::sync::Mutex<Vec<i32>>,
}

impl Server {
    pub async fn start(extra_args: &[&str]) -> Server {
        let (config, state_dir) = Server::config(extra_args);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(procnode::run(listener, config, async {
            let _ = rx.await;
        }));
        Server {
            base: format!("http://{addr}"),
            kubelet: String::new(),
            http: reqwest::Client::new(),
            shutdown: Some(tx),
            task: Some(task),
            state_dir,
            pgids: Default::default(),
        }
    }

    /// [`Server::start`], with node mode's kubelet API (its streaming routes) served on a
    /// second port (plain HTTP, no authentication: `kubelet`), on the same runtime.
    pub async fn start_with_kubelet_api(extra_args: &[&str]) -> Server {
        let (config, state_dir) = Server::config(extra_args);
        let web = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let kubelet = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let (addr, kubelet_addr) = (web.local_addr().unwrap(), kubelet.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let started = procnode::Started::start(&config, None).await?;
            let state = procnode::api::AppState::new(
                started.runtime.clone(),
                started.node.clone(),
                &config,
            )?;
            let (stop, stopping) = tokio::sync::watch::channel(false);
            let kubelet_api = tokio::spawn(procnode::api::serve::serve(
                kubelet,
                procnode::api::kubelet_router(state.clone()),
                |_: &tokio::net::TcpStream| (),
                state.limits,
                started.runtime.settings().metrics.clone(),
                async move {
                    let mut stopping = stopping;
                    let _ = stopping.wait_for(|s| *s).await;
                },
            ));
            procnode::api::serve(web, state, async {
                let _ = rx.await;
            })
            .await?;
            stop.send_replace(true);
            let _ = kubelet_api.await;
            started.stop(&config).await;
            Ok(())
        });
        Server {
            base: format!("http://{addr}"),
            kubelet: kubelet_addr.to_string(),
            http: reqwest::Client::new(),
            shutdown: Some(tx),
            task: Some(task),
            state_dir,
            pgids: Default::default(),
        }
    }

    /// The configuration of a test server: `extra_args` over the tests' defaults.
    fn config(extra_args: &[&str]) -> (procnode::Config, tempfile::TempDir) {
        // Orphaned grandchildren of pods must come back to this process to be reaped.
        procnode::runtime::process::become_subreaper().expect("subreaper");
        let state_dir = tempfile::tempdir().expect("tempdir");
        let mut args = vec!["procnode".to_string()];
        if !extra_args.contains(&"--state-dir") {
            args.extend([
                "--state-dir".to_string(),
                state_dir.path().display().to_string(),
            ]);
        }
        args.extend([
            "--backoff-initial".into(),
            "100ms".into(),
            "--backoff-max".into(),
            "400ms".into(),
            "--shim-path".into(),
            env!("CARGO_BIN_EXE_procnode").into(),
        ]);
        // Pods of parallel tests reuse names and uids: each server gets cgroups of its own.
        if !extra_args.contains(&"--cgroup-parent") {
            let dir = match extra_args.iter().position(|a| *a == "--state-dir") {
                Some(i) => std::path::PathBuf::from(extra_args[i + 1]),
                None => state_dir.path().to_path_buf(),
            };
            args.extend(["--cgroup-parent".to_string(), cgroup_parent_for(&dir)]);
        }
        // Tests hand containers files in the test's own (root-only) temporary directories.
        // (Root is opt-in: allowing it is part of choosing it.)
        if !extra_args.contains(&"--default-uid") {
            args.extend(["--default-uid".to_string(), "0".to_string()]);
            if !extra_args.contains(&"--allowed-uids") {
                args.extend(["--allowed-uids".to_string(), "any".to_string()]);
            }
            if !extra_args.contains(&"--allowed-gids") {
                args.extend(["--allowed-gids".to_string(), "any".to_string()]);
            }
        }
        args.extend(stop_pods_unless_chosen(extra_args).map(String::from));
        args.extend(extra_args.iter().map(|s| s.to_string()));
        (procnode::Config::parse_from_env_free(args), state_dir)
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.base, path_and_query)
    }

    /// `GET path` answered with JSON (panics otherwise).
    pub async fn get_json(&self, path: &str) -> Value {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn create(&self, pod: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/createPod"))
            .header("Content-Type", "application/json")
            .body(pod.to_string())
            .send()
            .await
            .expect("createPod")
    }

    /// PUT /updatePod: the status code and the JSON answer (null if none).
    pub async fn update(&self, pod: &Value) -> (u16, Value) {
        let r = self
            .http
            .put(self.url("/updatePod"))
            .header("Content-Type", "application/json")
            .body(pod.to_string())
            .send()
            .await
            .expect("updatePod");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, pod: &Value) -> reqwest::Response {
        self.http
            .delete(self.url("/deletePod"))
            .header("Content-Type", "application/json")
            .body(pod.to_string())
            .send()
            .await
            .expect("deletePod")
    }

    pub async fn status(&self, name: &str) -> Option<Value> {
        let r = self
            .http
            .get(self.url(&format!("/getPodStatus?namespace=default&name={name}")))
            .header("Content-Type", "application/json")
            .send()
            .await
            .expect("getPodStatus");
        if r.status() == 404 {
            return None;
        }
        assert!(r.status().is_success(), "getPodStatus: {}", r.status());
        let s: Value = r.json().await.expect("status json");
        for c in ["main", "a", "b", "init-one", "init-two"] {
            if let Some(pid) = container_pid(&s, c) {
                let mut seen = self.pgids.lock().unwrap();
                if !seen.contains(&pid) {
                    seen.push(pid);
                }
            }
        }
        Some(s)
    }

    pub async fn logs(&self, pod: &str, container: &str, query: &str) -> (u16, String) {
        let r = self
            .http
            .get(self.url(&format!(
                "/getContainerLogs?namespace=default&podName={pod}&containerName={container}{query}"
            )))
            .send()
            .await
            .expect("getContainerLogs");
        (r.status().as_u16(), r.text().await.expect("text"))
    }

    /// Waits until `pred` holds for the pod's status and returns that status.
    pub async fn wait_status(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_until(what, Duration::from_secs(20), || async {
            self.status(name).await.filter(|s| pred(s))
        })
        .await
    }

    /// Shuts the server down without checking for what it left: a server started with
    /// `--stop-pods-on-exit=false` leaves its pods to the next one on its state directory.
    pub async fn stop_leaving_pods(mut self) {
        self.shut_down().await;
    }

    /// Shuts the server down (every pod stopped with its grace period) and checks that no
    /// process of any group this test saw is left, zombie or alive.
    pub async fn stop(mut self) {
        self.shut_down().await;
        let pgids = self.pgids.lock().unwrap().clone();
        assert_groups_gone(&pgids).await;
    }

    async fn shut_down(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("shutdown in time")
                .expect("server task")
                .expect("server result");
        }
    }

    /// Creates pod `p` and waits until it runs.
    pub async fn create_running(&self, p: &Value) -> Value {
        let name = p["metadata"]["name"].as_str().unwrap().to_string();
        let r = self.create(p).await;
        assert!(
            r.status().is_success(),
            "create: {}",
            r.text().await.unwrap()
        );
        self.wait_status(&name, "Running", |s| phase(s) == "Running")
            .await
    }
}

/// A test that panics never reaches [`Server::stop`]: its pods' supervisors (made to outlive
/// procnode) and containers would outlive the test binary too. Dropping an unstopped server
/// kills them and removes its cgroups, so that one failure does not leave processes behind.
impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            kill_pods_of(self.state_dir.path());
        }
    }
}

/// A temporary state directory for a test that runs the procnode binary. If the test panics,
/// whatever that procnode left is killed ([`kill_pods_of`]): a test that killed procnode on
/// purpose and then failed would otherwise leave its pods' supervisors running.
pub struct StateDir(tempfile::TempDir);

impl StateDir {
    pub fn new() -> StateDir {
        StateDir(tempfile::tempdir().expect("tempdir"))
    }

    pub fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            kill_pods_of(self.0.path());
        } else {
            // A binary the test killed (kill -9 or SIGKILL at the end) leaves its cgroup parent,
            // empty once its pods are gone: remove what is empty, touch nothing that is not
            // (a process left there is a leak the leftover check must see).
            remove_empty_cgroup_tree(&cgroup_parent_for(self.0.path()));
        }
    }
}

/// Kills the procnode binaries started on `state_dir` (by `start_binary`), every supervisor of
/// a procnode that used it, with its container's process group, and removes that procnode's
/// test cgroups. Synchronous: it runs from `Drop`.
pub fn kill_pods_of(state_dir: &std::path::Path) {
    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::{waitpid, WaitPidFlag};
    use nix::unistd::Pid;
    let prefixes: Vec<String> = [Some(state_dir.to_path_buf()), state_dir.canonicalize().ok()]
        .into_iter()
        .flatten()
        .map(|dir| procnode::runtime::StateLayout::new(dir).supervisor_prefix())
        .collect();
    // A binary from start_binary names its cgroup parent, made from the state dir, on its
    // command line.
    let parent = cgroup_parent_for(state_dir);
    for (pid, _, argv) in processes() {
        if argv.iter().any(|a| a.ends_with(&parent)) && !argv.iter().any(|a| a == "shim") {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::empty()));
        }
    }
    let procs = processes();
    let shims: Vec<i32> = procs
        .iter()
        .filter(|(_, _, argv)| {
            argv.get(1).is_some_and(|a| a == "shim")
                && argv
                    .get(2)
                    .is_some_and(|n| prefixes.iter().any(|p| n.starts_with(p)))
        })
        .map(|(pid, _, _)| *pid)
        .collect();
    // Each container leads its own group, a child of its supervisor, which reaps it.
    for (pid, ppid, _) in &procs {
        if shims.contains(ppid) {
            let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    for &pid in &shims {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        // The supervisors are this process's children (the server ran in it).
        let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::empty()));
    }
    remove_cgroup_tree(&cgroup_parent_for(state_dir));
}

/// Every process as (pid, parent pid, argv).
fn processes() -> Vec<(i32, i32, Vec<String>)> {
    let mut out = Vec::new();
    for pid in pids() {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let argv = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let ppid = stat_fields(pid)
            .and_then(|f| f.get(1)?.parse().ok())
            .unwrap_or(0);
        out.push((pid, ppid, argv));
    }
    out
}

/// Every cgroup directory called `name`, in every hierarchy (v1 controllers may nest it under
/// the cgroup this process runs in, as `memory/<parent>/.../name`).
pub fn cgroup_dirs(name: &str) -> Vec<std::path::PathBuf> {
    fn find(dir: &std::path::Path, name: &str, depth: u32, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if entry.file_name() == name {
                out.push(entry.path());
            } else if depth > 1 {
                find(&entry.path(), name, depth - 1, out);
            }
        }
    }
    let mut found = Vec::new();
    find(std::path::Path::new("/sys/fs/cgroup"), name, 8, &mut found);
    found
}

/// Every cgroup directory called `name` and every one below it, children before their parent.
fn cgroup_tree(name: &str) -> Vec<std::path::PathBuf> {
    fn below(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                below(&entry.path(), out);
            }
        }
        out.push(dir.to_path_buf());
    }
    let mut dirs = Vec::new();
    for top in cgroup_dirs(name) {
        below(&top, &mut dirs);
    }
    dirs
}

/// Removes every empty cgroup directory called `name`, and the empty ones below it.
pub fn remove_empty_cgroup_tree(name: &str) {
    for dir in cgroup_tree(name) {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Kills what is left in, and removes, every cgroup directory called `name` with everything
/// below it, deepest first.
pub fn remove_cgroup_tree(name: &str) {
    use nix::sys::signal::{kill, Signal};
    let dirs = cgroup_tree(name);
    for dir in &dirs {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|p| p.parse::<i32>().ok()) {
            let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    for dir in &dirs {
        for _ in 0..50 {
            if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn phase(s: &Value) -> &str {
    s["phase"].as_str().unwrap_or("")
}

pub fn container<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(s["initContainerStatuses"].as_array().into_iter().flatten())
        .find(|c| c["name"] == name)
        .unwrap_or(&Value::Null)
}

/// Mounts a small tmpfs at a fresh directory; `None` where mounting is not allowed. Uses the
/// mount system calls directly: this test process has procnode's reaper running, so it may not
/// wait for child processes of its own (such as `mount`).
pub struct SmallDisk {
    pub dir: tempfile::TempDir,
}

impl SmallDisk {
    pub fn new(size: &str) -> Option<SmallDisk> {
        use nix::mount::{mount, MsFlags};
        let dir = tempfile::tempdir().ok()?;
        // (A tmpfs root is 1777 unless told otherwise; procnode refuses a state dir others
        // may write.)
        let options = format!("size={size},mode=0711");
        mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .ok()?;
        Some(SmallDisk { dir })
    }

    pub fn remount_read_only(&self) {
        use nix::mount::{mount, MsFlags};
        mount(
            None::<&str>,
            self.dir.path(),
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .expect("remount read-only");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}
