//! procnode's chaos run: clients create, update and delete a few dozen pods at random while
//! procnode is killed with SIGKILL at random moments and started again, and once the state
//! directory's file system (a small tmpfs) is filled for a while. After every restart and at
//! the end it checks what must hold whatever happened:
//!
//! - every acknowledged create that was not deleted is there, with its uid;
//! - every acknowledged delete stays deleted;
//! - every container process belongs to a pod procnode reports;
//! - no exit code of a finished container is lost or wrong (`exit K` reports K);
//! - no zombie is left, and at the end no process at all.
//!
//! ```text
//! cargo run --release --example chaos      # two minutes
//! cargo run --example chaos -- 60          # one minute (what CI runs)
//! ```
//!
//! Run as root (the tmpfs; pods run as root here). It prints its counts and exits non-zero if
//! any check failed. Like the benchmark, it re-runs its own executable as procnode.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    common::run_as_procnode_if_asked(&args);
    let seconds: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(120);
    let failed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(chaos(Duration::from_secs(seconds)));
    std::process::exit(i32::from(failed));
}

/// The pods a client may make of one name.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// `sleep 300`, restartPolicy Always.
    Sleeper,
    /// `exit K`, restartPolicy Never: its exit code must be reported as K.
    Exits(i32),
    /// `exit 1`, restartPolicy Always: a crash loop.
    CrashLoop,
    /// Prints, then `exit K`, restartPolicy OnFailure.
    Chatty(i32),
}

/// What the clients know of one name.
#[derive(Debug, Clone, PartialEq)]
enum Known {
    /// Acknowledged (2xx) and not deleted since.
    Present { uid: String, kind: Kind },
    /// Deleted (acknowledged), or never created.
    Absent,
    /// A request whose answer never came (procnode was killed): either.
    Unsure,
}

#[derive(Default, Debug)]
struct Counts {
    ops: BTreeMap<String, u64>,
    restarts: u64,
    checks: u64,
    failures: Vec<String>,
}

struct Shared {
    base: Mutex<Option<String>>,
    known: Mutex<BTreeMap<String, Known>>,
    counts: Mutex<Counts>,
    /// Clients pause while this is set (a check runs).
    paused: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn count(&self, what: &str) {
        *self
            .counts
            .lock()
            .unwrap()
            .ops
            .entry(what.to_string())
            .or_default() += 1;
    }

    fn fail(&self, what: String) {
        eprintln!("CHECK FAILED: {what}");
        self.counts.lock().unwrap().failures.push(what);
    }
}

/// A tmpfs for the state directory, or a plain directory where mounting is not allowed.
struct StateDisk {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl StateDisk {
    fn new() -> StateDisk {
        let dir = tempfile::tempdir().unwrap();
        let mounted = nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=16m,mode=0711"),
        )
        .is_ok();
        StateDisk { dir, mounted }
    }
}

impl Drop for StateDisk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

struct Procnode {
    child: std::process::Child,
}

impl Procnode {
    fn start(state: &Path) -> (Procnode, String) {
        let mut args: Vec<&std::ffi::OsStr> = vec!["--state-dir".as_ref(), state.as_os_str()];
        args.extend(
            [
                "--backoff-initial",
                "50ms",
                "--backoff-max",
                "500ms",
                "--default-uid",
                "0",
                "--allowed-uids",
                "any",
                "--allowed-gids",
                "any",
                "--cgroups",
                "off",
                "--max-pods",
                "1000",
                "--header-read-timeout",
                "2s",
            ]
            .map(std::ffi::OsStr::new),
        );
        let (child, base) = common::spawn_serving(&args, &[("PROCNODE_LOG", "error")]);
        (Procnode { child }, base)
    }

    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

fn pod(name: &str, uid: &str, kind: Kind) -> Value {
    let (script, policy) = match kind {
        Kind::Sleeper => ("exec sleep 300".to_string(), "Always"),
        Kind::Exits(k) => (format!("exit {k}"), "Never"),
        Kind::CrashLoop => ("echo crash; exit 1".to_string(), "Always"),
        Kind::Chatty(k) => (
            format!("for i in 1 2 3; do echo line-$i; done; exit {k}"),
            "OnFailure",
        ),
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": uid, "labels": {"gen": "0"}},
        "spec": {
            "restartPolicy": policy,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script]}]
        }
    })
}

/// A small random number generator (xorshift), seeded from the clock.
struct Rng(u64);

impl Rng {
    fn new(salt: u64) -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng(t ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One client: random operations on the names it owns (so that what it knows is exact).
async fn client(shared: Arc<Shared>, names: Vec<String>, until: Instant, salt: u64) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut rng = Rng::new(salt);
    let mut generation = 0u64;
    while Instant::now() < until {
        if shared.paused.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let Some(base) = shared.base.lock().unwrap().clone() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let name = &names[rng.below(names.len() as u64) as usize];
        let known = shared.known.lock().unwrap().get(name).cloned().unwrap();
        let op = rng.below(10);
        let action = match &known {
            Known::Present { .. } if op < 5 => "update",
            Known::Present { .. } if op < 8 => "delete",
            Known::Unsure if op < 5 => "delete",
            _ => "create",
        };
        let (what, request, outcome) = match (action, &known) {
            ("update", Known::Present { uid, kind }) => {
                generation += 1;
                let mut body = pod(name, uid, *kind);
                body["metadata"]["labels"]["gen"] = json!(generation.to_string());
                (
                    "update",
                    http.put(format!("{base}/updatePod")).body(body.to_string()),
                    known.clone(),
                )
            }
            ("delete", _) => (
                "delete",
                http.delete(format!("{base}/deletePod"))
                    .body(json!({"metadata": {"name": name, "namespace": "default"}}).to_string()),
                Known::Absent,
            ),
            _ => {
                let kind = match rng.below(4) {
                    0 => Kind::Sleeper,
                    1 => Kind::Exits(rng.below(4) as i32),
                    2 => Kind::CrashLoop,
                    _ => Kind::Chatty(rng.below(2) as i32),
                };
                let uid = format!("uid-{}-{}", name.replace('.', "-"), rng.below(1 << 30));
                (
                    "create",
                    http.post(format!("{base}/createPod"))
                        .body(pod(name, &uid, kind).to_string()),
                    Known::Present { uid, kind },
                )
            }
        };
        match request.send().await {
            Ok(r) if r.status().is_success() => {
                shared.count(&format!("{what} {}", r.status().as_u16()));
                shared.known.lock().unwrap().insert(name.clone(), outcome);
            }
            Ok(r) => {
                // Refused (a full state directory: 507): nothing changed.
                shared.count(&format!("{what} {}", r.status().as_u16()));
            }
            Err(_) => {
                // No answer: procnode was killed under the request.
                shared.count(&format!("{what} unanswered"));
                shared
                    .known
                    .lock()
                    .unwrap()
                    .insert(name.clone(), Known::Unsure);
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
    }
}

/// Processes as (pid, parent pid, state, argv).
fn processes() -> Vec<(i32, i32, char, Vec<String>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r.to_string()) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        out.push((pid, ppid, state, argv));
    }
    out
}

/// The supervisors of this state directory and their containers: (supervisor pids, container
/// pids, zombies among them or their children).
fn ours(state: &Path) -> (Vec<i32>, Vec<i32>, Vec<i32>) {
    let prefix = procnode::runtime::StateLayout::new(state).supervisor_prefix();
    let procs = processes();
    let shims: Vec<i32> = procs
        .iter()
        .filter(|(_, _, _, a)| {
            a.get(1).is_some_and(|x| x == "shim")
                && a.get(2).is_some_and(|n| n.starts_with(&prefix))
        })
        .map(|p| p.0)
        .collect();
    let containers: Vec<i32> = procs
        .iter()
        .filter(|p| shims.contains(&p.1) && p.2 != 'Z')
        .map(|p| p.0)
        .collect();
    let zombies: Vec<i32> = procs
        .iter()
        .filter(|p| {
            p.2 == 'Z'
                && (shims.contains(&p.1) || containers.contains(&p.1) || shims.contains(&p.0))
        })
        .map(|p| p.0)
        .collect();
    (shims, containers, zombies)
}

/// Waits until procnode answers with the list of pods.
async fn pods(http: &reqwest::Client, base: &str) -> Option<Vec<Value>> {
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{base}/getPods")).send().await {
            if let Ok(v) = r.json::<Vec<Value>>().await {
                return Some(v);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The invariants, with the clients paused.
async fn check(shared: &Shared, http: &reqwest::Client, base: &str, state: &Path, when: &str) {
    shared.counts.lock().unwrap().checks += 1;
    // Let what is under way settle (exits recorded, deletes finished).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let Some(listed) = pods(http, base).await else {
        shared.fail(format!("{when}: procnode does not list its pods"));
        return;
    };
    let present: BTreeMap<String, String> = listed
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    let known = shared.known.lock().unwrap().clone();
    let mut running = Vec::new();
    for (name, k) in &known {
        match k {
            Known::Present { uid, kind } => {
                if present.get(name) != Some(uid) {
                    shared.fail(format!(
                        "{when}: acknowledged pod {name} ({uid}) is missing (found {:?})",
                        present.get(name)
                    ));
                    continue;
                }
                let Ok(r) = http
                    .get(format!("{base}/getPodStatus?namespace=default&name={name}"))
                    .send()
                    .await
                else {
                    continue;
                };
                let Ok(s) = r.json::<Value>().await else {
                    continue;
                };
                let c = &s["containerStatuses"][0];
                if let Some(pid) = c["containerID"]
                    .as_str()
                    .and_then(|id| id.strip_prefix("procnode://"))
                    .and_then(|p| p.parse::<i32>().ok())
                {
                    running.push(pid);
                }
                if let (Kind::Exits(k), Some(t)) = (kind, c["state"].get("terminated")) {
                    if t["exitCode"] != json!(k) {
                        shared.fail(format!("{when}: pod {name} ran `exit {k}` but reports {t}"));
                    }
                }
            }
            Known::Absent => {
                if present.contains_key(name) {
                    shared.fail(format!("{when}: deleted pod {name} is back"));
                }
            }
            Known::Unsure => {}
        }
    }
    // Every container process belongs to a pod procnode reports (pods it knows of whose
    // fate the clients are unsure of included).
    for name in present.keys() {
        if matches!(known.get(name), Some(Known::Unsure) | None) {
            if let Ok(r) = http
                .get(format!("{base}/getPodStatus?namespace=default&name={name}"))
                .send()
                .await
            {
                if let Ok(s) = r.json::<Value>().await {
                    if let Some(pid) = s["containerStatuses"][0]["containerID"]
                        .as_str()
                        .and_then(|id| id.strip_prefix("procnode://"))
                        .and_then(|p| p.parse::<i32>().ok())
                    {
                        running.push(pid);
                    }
                }
            }
        }
    }
    let (_, containers, zombies) = ours(state);
    for pid in containers {
        if !running.contains(&pid) {
            // It may have just been started again: look once more.
            tokio::time::sleep(Duration::from_millis(500)).await;
            if std::path::Path::new(&format!("/proc/{pid}")).exists()
                && !running_now(http, base, pid).await
            {
                shared.fail(format!(
                    "{when}: container process {pid} belongs to no pod procnode reports"
                ));
            }
        }
    }
    if !zombies.is_empty() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, _, still) = ours(state);
        let lasting: Vec<_> = zombies.iter().filter(|z| still.contains(z)).collect();
        if !lasting.is_empty() {
            shared.fail(format!("{when}: zombies {lasting:?}"));
        }
    }
}

async fn running_now(http: &reqwest::Client, base: &str, pid: i32) -> bool {
    let Some(listed) = pods(http, base).await else {
        return false;
    };
    for p in listed {
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        if let Ok(r) = http
            .get(format!("{base}/getPodStatus?namespace=default&name={name}"))
            .send()
            .await
        {
            if let Ok(s) = r.json::<Value>().await {
                if s["containerStatuses"][0]["containerID"] == json!(format!("procnode://{pid}")) {
                    return true;
                }
            }
        }
    }
    false
}

async fn chaos(length: Duration) -> bool {
    procnode::runtime::process::become_subreaper().expect("subreaper");
    // Orphans (supervisors of a killed procnode) come back here: reap them.
    std::thread::spawn(|| loop {
        std::thread::sleep(Duration::from_millis(100));
        while let Ok(status) =
            nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
        {
            if status == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
    });
    let disk = StateDisk::new();
    let state: PathBuf = disk.dir.path().join("state");
    let names: Vec<String> = (0..32)
        .map(|i| match i % 4 {
            0 => format!("backup.tmp-{i}"),
            1 => format!("web.v{i}.example"),
            2 => format!("job-{i}.tmp"),
            _ => format!("plain-{i}"),
        })
        .collect();
    let shared = Arc::new(Shared {
        base: Mutex::new(None),
        known: Mutex::new(names.iter().map(|n| (n.clone(), Known::Absent)).collect()),
        counts: Mutex::new(Counts::default()),
        paused: false.into(),
    });
    let (mut procnode, base) = Procnode::start(&state);
    *shared.base.lock().unwrap() = Some(base.clone());
    let until = Instant::now() + length;
    let mut clients = tokio::task::JoinSet::new();
    for (i, chunk) in names.chunks(8).enumerate() {
        clients.spawn(client(shared.clone(), chunk.to_vec(), until, i as u64 + 1));
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut rng = Rng::new(99);
    let mut filled = false;
    let mut base = base;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(2000 + rng.below(4000))).await;
        if Instant::now() >= until {
            break;
        }
        if !filled && disk.mounted && rng.below(3) == 0 {
            // Fill the state directory's file system for a while.
            filled = true;
            let filler = disk.dir.path().join("filler");
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&filler).unwrap();
                let block = vec![0u8; 64 * 1024];
                while f.write_all(&block).is_ok() {}
            }
            shared.count("disk filled");
            tokio::time::sleep(Duration::from_secs(4)).await;
            std::fs::remove_file(&filler).unwrap();
            continue;
        }
        // kill -9 at a random moment, then start again and check.
        *shared.base.lock().unwrap() = None;
        procnode.kill9();
        shared.counts.lock().unwrap().restarts += 1;
        let (p, b) = Procnode::start(&state);
        procnode = p;
        base = b;
        shared
            .paused
            .store(true, std::sync::atomic::Ordering::SeqCst);
        check(&shared, &http, &base, &state, "after a restart").await;
        shared
            .paused
            .store(false, std::sync::atomic::Ordering::SeqCst);
        *shared.base.lock().unwrap() = Some(base.clone());
    }
    while clients.join_next().await.is_some() {}
    check(&shared, &http, &base, &state, "at the end").await;
    // Delete everything; then nothing of any pod may be left.
    for name in &names {
        let _ = http
            .delete(format!("{base}/deletePod"))
            .body(json!({"metadata": {"name": name, "namespace": "default"}}).to_string())
            .send()
            .await;
    }
    procnode.terminate();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (shims, containers, zombies) = ours(&state);
    if !(shims.is_empty() && containers.is_empty() && zombies.is_empty()) {
        shared.fail(format!("left at the end: supervisors {shims:?}, containers {containers:?}, zombies {zombies:?}"));
    }
    let counts = shared.counts.lock().unwrap();
    let total: u64 = counts.ops.values().sum();
    println!(
        "chaos: {} s, {total} operations, {} restarts (kill -9), {} checks, {} failures",
        length.as_secs(),
        counts.restarts,
        counts.checks,
        counts.failures.len()
    );
    for (what, n) in &counts.ops {
        println!("  {what:<22} {n}");
    }
    if !disk.mounted {
        println!("  (no tmpfs could be mounted: the full-disk phase was skipped)");
    }
    for f in &counts.failures {
        println!("  FAILED: {f}");
    }
    !counts.failures.is_empty()
}
