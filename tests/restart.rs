//! Fault tests: the real binary killed with SIGKILL while pods run and while a Job finishes,
//! started again on the same state directory; supervisors killed under a running procnode;
//! corrupt records. Every test is bounded in time and ends with no process of its own left.

mod support;

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use support::{
    container, container_pid, group_members, parent_of, phase, pid_alive, pod, sh, wait_until,
};

/// A procnode process on 127.0.0.1:0 with the given state directory.
struct Procnode {
    pid: i32,
    base: String,
    http: reqwest::Client,
    /// Set once the test has stopped it itself.
    stopped: bool,
}

/// A test that fails half-way still stops procnode, and with it every pod it runs.
impl Drop for Procnode {
    fn drop(&mut self) {
        if !self.stopped && kill(Pid::from_raw(self.pid), Signal::SIGTERM).is_ok() {
            for _ in 0..500 {
                if reaped(self.pid) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Procnode {
    // The child is collected by the reaper thread started below, not by `Child::wait`
    // (waiting here would race with it).
    #[allow(clippy::zombie_processes)]
    fn start(state_dir: &std::path::Path, extra: &[&str]) -> Procnode {
        // Orphans (supervisors of a killed procnode) come back to this test process and are
        // reaped here; the real binary's own exit is collected the same way.
        procnode::runtime::process::become_subreaper().unwrap();
        procnode::runtime::process::start_reaper();
        let mut args = vec![
            "--backoff-initial",
            "100ms",
            "--default-uid",
            "0",
            "--allowed-uids",
            "any",
        ];
        // (--default-uid 0: the Job pod reads a file in this test's root-only temporary
        // directory.)
        args.extend_from_slice(extra);
        let (child, addr) = support::start_binary(state_dir, &args);
        Procnode {
            pid: child.id() as i32,
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            stopped: false,
        }
    }

    async fn post(&self, path: &str, body: &Value) -> u16 {
        self.http
            .post(format!("{}{path}", self.base))
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn delete(&self, body: &Value) -> u16 {
        self.http
            .delete(format!("{}/deletePod", self.base))
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn status_of(&self, name: &str) -> Option<Value> {
        let r = self
            .http
            .get(format!(
                "{}/getPodStatus?namespace=default&name={name}",
                self.base
            ))
            .send()
            .await
            .ok()?;
        if r.status() != 200 {
            return None;
        }
        r.json().await.ok()
    }

    async fn wait_status(&self, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_until(what, Duration::from_secs(20), || async {
            self.status_of(name).await.filter(|s| pred(s))
        })
        .await
    }

    async fn logs(&self, name: &str) -> String {
        self.http
            .get(format!(
                "{}/getContainerLogs?namespace=default&podName={name}&containerName=main",
                self.base
            ))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn kill9(self) {
        self.stop_with(Signal::SIGKILL, Duration::from_secs(10))
            .await
    }

    async fn terminate(self) {
        self.stop_with(Signal::SIGTERM, Duration::from_secs(30))
            .await
    }

    /// Sends `signal` and waits until procnode has exited and been reaped.
    async fn stop_with(mut self, signal: Signal, limit: Duration) {
        self.stopped = true;
        kill(Pid::from_raw(self.pid), signal).unwrap();
        wait_until("procnode to exit and be reaped", limit, || async {
            reaped(self.pid).then_some(())
        })
        .await;
    }
}

/// Gone entirely: exited and collected by this process's reaper (not even a zombie).
fn reaped(pid: i32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn pods_and_exit_codes_survive_kill_9_and_containers_are_reattached() {
    let dir = support::StateDir::new();
    let marks = tempfile::tempdir().unwrap();
    let go = marks.path().join("go");
    let a = Procnode::start(dir.path(), &[]);

    let sleeper = pod("sleeper", &sh("echo before; exec sleep 300"), "Always");
    // A Job-like pod that finishes while procnode is down, writing output then.
    let mut job = pod("job", &sh("echo started; while [ ! -f \"$GO\" ]; do sleep 0.05; done; echo finished-while-down; exit 3"), "Never");
    job["spec"]["containers"][0]["env"] = json!([{"name": "GO", "value": go.to_str().unwrap()}]);
    let done = pod("done", &sh("echo quick; exit 0"), "Never");
    for p in [&sleeper, &job, &done] {
        assert_eq!(a.post("/createPod", p).await, 201);
    }
    let s = a
        .wait_status("sleeper", "sleeper running", |s| phase(s) == "Running")
        .await;
    let sleeper_pid = container_pid(&s, "main").unwrap();
    let s = a
        .wait_status("job", "job running", |s| phase(s) == "Running")
        .await;
    let job_pid = container_pid(&s, "main").unwrap();
    a.wait_status("done", "done succeeded", |s| phase(s) == "Succeeded")
        .await;
    wait_until("job output", Duration::from_secs(10), || async {
        (a.logs("job").await == "started\n").then_some(())
    })
    .await;

    a.kill9().await;
    // While procnode is down: the long-running container keeps running, the job finishes.
    assert!(pid_alive(sleeper_pid), "containers outlive procnode");
    std::fs::write(&go, "").unwrap();
    wait_until(
        "job to finish while procnode is down",
        Duration::from_secs(10),
        || async { (!pid_alive(job_pid)).then_some(()) },
    )
    .await;

    let b = Procnode::start(dir.path(), &[]);
    let s = b
        .wait_status("sleeper", "sleeper restored", |s| phase(s) == "Running")
        .await;
    assert_eq!(
        b.logs("sleeper").await,
        "before\n",
        "output from before the crash, read back from the log file"
    );
    assert_eq!(b.logs("done").await, "quick\n");
    assert_eq!(
        container_pid(&s, "main"),
        Some(sleeper_pid),
        "re-attached, not restarted"
    );
    assert_eq!(container(&s, "main")["restartCount"], 0);
    let s = b
        .wait_status("job", "job's exit recorded", |s| phase(s) == "Failed")
        .await;
    let t = &container(&s, "main")["state"]["terminated"];
    assert_eq!(
        t["exitCode"], 3,
        "the exit code of a run that ended while procnode was down: {t}"
    );
    assert_eq!(t["reason"], "Error");
    assert_eq!(
        b.logs("job").await,
        "started\nfinished-while-down\n",
        "output from before the crash (log file) and from while procnode was down (pipe)"
    );
    let s = b
        .status_of("done")
        .await
        .expect("finished pods are restored too");
    assert_eq!(phase(&s), "Succeeded");
    assert_eq!(container(&s, "main")["state"]["terminated"]["exitCode"], 0);

    // The restored procnode still controls the re-attached container.
    assert_eq!(b.delete(&sleeper).await, 200);
    assert!(group_members(sleeper_pid).0.is_empty());
    for p in [&job, &done] {
        assert_eq!(b.delete(p).await, 200);
    }
    b.terminate().await;
    let left: Vec<_> = std::fs::read_dir(dir.path().join("records"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "deleted pods leave no record: {left:?}");
}

#[tokio::test]
async fn a_vanished_supervisor_is_reported_and_the_container_restarted() {
    let dir = support::StateDir::new();
    let p = Procnode::start(dir.path(), &[]);
    let always = pod("orphaned", &sh("sleep 300 & wait"), "Always");
    assert_eq!(p.post("/createPod", &always).await, 201);
    let s = p
        .wait_status("orphaned", "running", |s| phase(s) == "Running")
        .await;
    let pid = container_pid(&s, "main").unwrap();
    let shim = support::parent_of(pid);
    kill(Pid::from_raw(shim), Signal::SIGKILL).unwrap();
    let s = p
        .wait_status("orphaned", "restarted", |s| {
            container(s, "main")["restartCount"] == 1 && phase(s) == "Running"
        })
        .await;
    let last = &container(&s, "main")["lastState"]["terminated"];
    assert_eq!(last["reason"], "ContainerStatusUnknown", "{last}");
    assert!(last["message"].as_str().unwrap().contains("supervisor"));
    assert!(
        group_members(pid).0.is_empty(),
        "the unsupervised container was stopped"
    );
    assert_ne!(container_pid(&s, "main"), Some(pid));
    assert_eq!(p.delete(&always).await, 200);
    p.terminate().await;
}

#[tokio::test]
async fn corrupt_records_are_set_aside_and_the_rest_restores() {
    let dir = support::StateDir::new();
    let a = Procnode::start(dir.path(), &[]);
    let ok = pod("kept", &sh("exit 0"), "Never");
    assert_eq!(a.post("/createPod", &ok).await, 201);
    a.wait_status("kept", "done", |s| phase(s) == "Succeeded")
        .await;
    a.kill9().await;
    let broken = dir
        .path()
        .join("records/default_broken_uid-broken.pod.json");
    std::fs::write(&broken, "{\"metadata\": {\"na").unwrap();

    let b = Procnode::start(dir.path(), &[]);
    assert!(
        b.status_of("kept").await.is_some(),
        "the good record restores"
    );
    // (At once, or once its supervisor reports the exit again: a kill -9 can come between the
    // exit shown by the API and its record.)
    b.wait_status("kept", "Succeeded again", |s| phase(s) == "Succeeded")
        .await;
    assert!(b.status_of("broken").await.is_none());
    assert!(!broken.exists(), "the corrupt record was moved aside");
    assert_eq!(
        std::fs::read_dir(dir.path().join("corrupt"))
            .unwrap()
            .count(),
        1
    );
    assert_eq!(b.delete(&ok).await, 200);
    b.terminate().await;
}

#[tokio::test]
async fn a_start_missing_from_the_record_is_found_again_not_started_twice() {
    let dir = support::StateDir::new();
    let a = Procnode::start(dir.path(), &[]);
    let p = pod("unrecorded", &["sleep", "300"], "Always");
    assert_eq!(a.post("/createPod", &p).await, 201);
    let s = a
        .wait_status("unrecorded", "running", |s| phase(s) == "Running")
        .await;
    let pid = container_pid(&s, "main").unwrap();
    // The record of the start is written just after the API shows it: wait for it, so that
    // the edit below is what makes it missing.
    let status_file = dir
        .path()
        .join("records/default_unrecorded_uid-unrecorded.status.json");
    wait_until(
        "the start to be recorded",
        Duration::from_secs(10),
        || async {
            let saved: Value = serde_json::from_slice(&std::fs::read(&status_file).ok()?).ok()?;
            saved["containers"][0]["state"].get("running").map(|_| ())
        },
    )
    .await;
    a.kill9().await;
    // As if procnode had died between starting the container and recording it.
    let mut saved: Value = serde_json::from_slice(&std::fs::read(&status_file).unwrap()).unwrap();
    saved["containers"][0]["state"] =
        json!({"waiting": {"reason": "ContainerCreating", "message": null}});
    saved["containers"][0]["supervisor"] = Value::Null;
    saved["containers"][0]["pid"] = Value::Null;
    std::fs::write(&status_file, saved.to_string()).unwrap();

    let b = Procnode::start(dir.path(), &[]);
    let s = b
        .wait_status("unrecorded", "running again", |s| phase(s) == "Running")
        .await;
    assert_eq!(
        container_pid(&s, "main"),
        Some(pid),
        "the running container was adopted"
    );
    assert_eq!(container(&s, "main")["restartCount"], 0);
    let (live, _) = group_members(pid);
    assert_eq!(live.len(), 1);
    assert_eq!(b.delete(&p).await, 200);
    assert!(group_members(pid).0.is_empty());
    b.terminate().await;
}

/// A supervisor whose pod no record claims any more (the record was removed while procnode
/// was down) is stopped by the next procnode, with its container: no process runs for nobody.
#[tokio::test]
async fn supervisors_of_no_recorded_pod_are_stopped_after_a_restart() {
    let dir = support::StateDir::new();
    let a = Procnode::start(dir.path(), &[]);
    let p = pod("forgotten", &["sleep", "300"], "Always");
    assert_eq!(a.post("/createPod", &p).await, 201);
    let s = a
        .wait_status("forgotten", "running", |s| phase(s) == "Running")
        .await;
    let pid = container_pid(&s, "main").unwrap();
    let supervisor = parent_of(pid);
    a.kill9().await;
    for f in std::fs::read_dir(dir.path().join("records")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let b = Procnode::start(dir.path(), &[]);
    wait_until(
        "the unclaimed supervisor and its container to be gone",
        Duration::from_secs(15),
        || async { (!pid_alive(pid) && !pid_alive(supervisor)).then_some(()) },
    )
    .await;
    assert!(
        std::fs::read_dir(dir.path().join("sup"))
            .unwrap()
            .next()
            .is_none(),
        "no socket left"
    );
    b.terminate().await;
}

/// A container that exits while the state directory is full: its supervisor holds the exit
/// until it is on disk (the node reporting DiskPressure meanwhile), so that a crash of
/// procnode then loses nothing: the next one reports the real exit, not an unknown one.
#[tokio::test]
async fn an_exit_on_a_full_disk_is_held_until_recorded() {
    let Some(disk) = support::SmallDisk::new("2m") else {
        eprintln!("skipped: this machine does not allow mounting a tmpfs");
        return;
    };
    let state = disk.dir.path();
    let marks = tempfile::tempdir().unwrap();
    let go = marks.path().join("go");
    // (--disk-pressure-percent 0: only the held exit can make the node report DiskPressure.)
    let a = Procnode::start(
        state,
        &["--disk-pressure-percent", "0", "--host-refresh", "200ms"],
    );
    let mut p = pod(
        "full",
        &sh("while [ ! -f \"$GO\" ]; do sleep 0.05; done; kill -TERM $$$$"),
        "Never",
    );
    p["spec"]["containers"][0]["env"] = json!([{"name": "GO", "value": go.to_str().unwrap()}]);
    assert_eq!(a.post("/createPod", &p).await, 201);
    a.wait_status("full", "running", |s| phase(s) == "Running")
        .await;
    // Fill the state directory's file system, then let the container exit.
    {
        use std::io::Write;
        let mut filler = std::fs::File::create(state.join("filler")).unwrap();
        let block = vec![0u8; 64 * 1024];
        while filler.write_all(&block).is_ok() {}
        let _ = filler.flush();
    }
    std::fs::write(&go, "").unwrap();
    let s = a
        .wait_status("full", "the exit seen", |s| phase(s) == "Failed")
        .await;
    assert_eq!(
        container(&s, "main")["state"]["terminated"]["exitCode"],
        143,
        "{s} {}",
        a.logs("full").await
    );
    let pressure = wait_until("DiskPressure", Duration::from_secs(10), || async {
        let conditions: Value = a
            .http
            .get(format!("{}/nodeConditions", a.base))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        conditions
            .as_array()?
            .iter()
            .find(|c| c["type"] == "DiskPressure" && c["status"] == "True")
            .cloned()
    })
    .await;
    assert!(pressure["message"]
        .as_str()
        .unwrap()
        .contains("cannot be written"));
    a.kill9().await;
    std::fs::remove_file(state.join("filler")).unwrap();
    let b = Procnode::start(state, &[]);
    let s = b
        .wait_status("full", "restored", |s| phase(s) == "Failed")
        .await;
    let t = &container(&s, "main")["state"]["terminated"];
    assert_eq!(
        t["exitCode"], 143,
        "the real exit, held by the supervisor: {t}"
    );
    assert_eq!(t["reason"], "Error", "{t}");
    assert_eq!(b.delete(&p).await, 200);
    b.terminate().await;
}

/// A create that replaces a pod with another uid, cut short by a crash after the new record
/// was written and before the old one was removed, leaves two records of one name. The next
/// procnode keeps the newer, removes the older (and stops its container): a later delete of
/// the name leaves nothing to come back. (The chaos run found it.)
#[tokio::test]
async fn of_two_records_of_one_name_the_newer_is_kept_and_the_older_removed() {
    let dir = support::StateDir::new();
    let a = Procnode::start(dir.path(), &[]);
    let old = pod("twice", &["sleep", "300"], "Always");
    assert_eq!(a.post("/createPod", &old).await, 201);
    let s = a
        .wait_status("twice", "running", |s| phase(s) == "Running")
        .await;
    let old_pid = container_pid(&s, "main").unwrap();
    a.kill9().await;
    // The replacement's record, written just before the crash.
    let records = dir.path().join("records");
    let mut new = old.clone();
    new["metadata"]["uid"] = json!("uid-twice-2");
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(
        records.join("default_twice_uid-twice-2.pod.json"),
        new.to_string(),
    )
    .unwrap();
    let b = Procnode::start(dir.path(), &[]);
    let s = b
        .wait_status("twice", "the newer running", |s| {
            phase(s) == "Running" && container_pid(s, "main") != Some(old_pid)
        })
        .await;
    assert!(container_pid(&s, "main").is_some());
    wait_until(
        "the older pod's container stopped",
        Duration::from_secs(15),
        || async { (!pid_alive(old_pid)).then_some(()) },
    )
    .await;
    assert!(!records.join("default_twice_uid-twice.pod.json").exists());
    assert_eq!(b.delete(&new).await, 200);
    b.kill9().await;
    let c = Procnode::start(dir.path(), &[]);
    assert!(
        c.status_of("twice").await.is_none(),
        "deleted stays deleted"
    );
    c.terminate().await;
}

/// A plain SIGTERM (`systemctl restart`, an upgrade) leaves the pods to their supervisors, as
/// a kubelet restart leaves its containers; the next procnode re-adopts them unrestarted.
#[tokio::test]
async fn by_default_sigterm_leaves_pods_running_for_the_next_procnode() {
    let dir = support::StateDir::new();
    let a = Procnode::start(dir.path(), &["--stop-pods-on-exit=false"]);
    let p = pod("survivor", &["sleep", "300"], "Always");
    assert_eq!(a.post("/createPod", &p).await, 201);
    let s = a
        .wait_status("survivor", "running", |s| phase(s) == "Running")
        .await;
    let pid = container_pid(&s, "main").unwrap();
    a.terminate().await;
    assert!(pid_alive(pid), "SIGTERM left the pod running");
    let b = Procnode::start(dir.path(), &[]);
    let s = b
        .wait_status("survivor", "re-adopted", |s| phase(s) == "Running")
        .await;
    assert_eq!(container_pid(&s, "main"), Some(pid));
    assert_eq!(container(&s, "main")["restartCount"], 0, "not restarted");
    assert_eq!(b.delete(&p).await, 200);
    assert!(group_members(pid).0.is_empty());
    b.terminate().await;
}

/// A procnode that leaves pods to their supervisors keeps its cgroup parent for them; one
/// that leaves with no pod at all (every pod deleted) leaves no cgroup of its own on the host.
#[tokio::test]
async fn a_procnode_leaving_no_pod_leaves_no_cgroup() {
    if !support::is_root() {
        eprintln!("skipped: needs root for cgroups");
        return;
    }
    let dir = support::StateDir::new();
    let parent = support::cgroup_parent_for(dir.path());
    let a = Procnode::start(dir.path(), &["--stop-pods-on-exit=false"]);
    let p = pod("brief", &["sleep", "300"], "Always");
    assert_eq!(a.post("/createPod", &p).await, 201);
    a.wait_status("brief", "running", |s| phase(s) == "Running")
        .await;
    if support::cgroup_dirs(&parent).is_empty() {
        eprintln!("skipped: no cgroup hierarchy for pods here");
        a.terminate().await;
        return;
    }
    assert_eq!(a.delete(&p).await, 200);
    a.terminate().await;
    let left = support::cgroup_dirs(&parent);
    assert!(left.is_empty(), "cgroups left: {left:?}");
}

/// With --stop-pods-on-exit, a container stopped by procnode's exit and started again by the
/// next procnode is a restart like any other: its lastState says how the previous run ended.
#[tokio::test]
async fn a_container_stopped_by_a_graceful_exit_keeps_its_last_state() {
    let dir = support::StateDir::new();
    let a = Procnode::start(dir.path(), &["--stop-pods-on-exit"]);
    let p = pod("stopped", &["sleep", "300"], "Always");
    assert_eq!(a.post("/createPod", &p).await, 201);
    let s = a
        .wait_status("stopped", "running", |s| phase(s) == "Running")
        .await;
    let pid = container_pid(&s, "main").unwrap();
    a.terminate().await;
    assert!(!pid_alive(pid), "--stop-pods-on-exit stopped the pod");
    let b = Procnode::start(dir.path(), &[]);
    let s = b
        .wait_status("stopped", "started again", |s| {
            container_pid(s, "main").is_some_and(|p| p != pid)
        })
        .await;
    let c = container(&s, "main");
    assert_eq!(c["restartCount"], 1, "{c}");
    let last = &c["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 143, "SIGTERM'd by the stop: {c}");
    assert_eq!(last["reason"], "Error", "{c}");
    assert_eq!(b.delete(&p).await, 200);
    b.terminate().await;
}

/// What a service manager does on `systemctl stop` or restart, done by hand: SIGTERM to
/// procnode, then SIGKILL to whatever is left in procnode's own cgroup (the unit's). With an
/// absolute --cgroup-parent (as the systemd unit sets) neither the supervisors nor the
/// containers are in it, so every pod survives and the next procnode re-adopts it.
#[tokio::test]
async fn with_an_absolute_cgroup_parent_killing_procnodes_own_cgroup_kills_no_pod() {
    if !support::is_root() {
        eprintln!("skipped: needs root for cgroups");
        return;
    }
    // The "unit": a cgroup of the pids hierarchy (v1) or the unified one (v2).
    let Some((root, own)) = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
        .iter()
        .map(std::path::Path::new)
        .find(|r| r.join("cgroup.procs").exists() && !r.join("pids.max").exists())
        .and_then(|r| {
            let line = std::fs::read_to_string("/proc/self/cgroup").ok()?;
            let v2 = r.join("cgroup.controllers").exists();
            let own = line.lines().find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, c, path) = (f.next()?, f.next()?, f.next()?);
                let mine = if v2 {
                    c.is_empty()
                } else {
                    c.split(',').any(|x| x == "pids")
                };
                mine.then(|| path.trim_start_matches('/').to_string())
            })?;
            Some((r.to_path_buf(), own))
        })
    else {
        eprintln!("skipped: no pids or unified cgroup hierarchy");
        return;
    };
    let dir = support::StateDir::new();
    let parent = support::cgroup_parent_for(dir.path());
    let unit = root.join(&own).join(format!("{parent}-unit"));
    std::fs::create_dir_all(&unit).unwrap();
    let pods_parent = format!("--cgroup-parent=/{parent}");
    let a = Procnode::start(dir.path(), &[&pods_parent, "--stop-pods-on-exit=false"]);
    std::fs::write(unit.join("cgroup.procs"), a.pid.to_string()).unwrap();
    let p = pod("survivor", &["sleep", "300"], "Always");
    assert_eq!(a.post("/createPod", &p).await, 201);
    let s = a
        .wait_status("survivor", "running", |s| phase(s) == "Running")
        .await;
    let pid = container_pid(&s, "main").unwrap();
    let supervisor = parent_of(pid);
    a.terminate().await;
    let left = std::fs::read_to_string(unit.join("cgroup.procs")).unwrap();
    for p in left.lines().filter_map(|p| p.parse::<i32>().ok()) {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
    assert!(
        !left.lines().any(|p| p.trim() == supervisor.to_string()),
        "the supervisor was in procnode's own cgroup: {left}"
    );
    assert!(pid_alive(pid) && pid_alive(supervisor), "the pod survived");
    let b = Procnode::start(dir.path(), &[&pods_parent]);
    let s = b
        .wait_status("survivor", "re-adopted", |s| phase(s) == "Running")
        .await;
    assert_eq!(container_pid(&s, "main"), Some(pid));
    assert_eq!(b.delete(&p).await, 200);
    assert!(group_members(pid).0.is_empty());
    b.terminate().await;
    let _ = std::fs::remove_dir(&unit);
}

/// A container taken back after a restart of procnode does not run its postStart hook again
/// (the kubelet runs it once per container start).
#[tokio::test]
async fn post_start_hooks_run_once_per_start_not_per_procnode() {
    let dir = support::StateDir::new();
    let marks = tempfile::tempdir().unwrap();
    let trail = marks.path().join("post-start");
    let mut p = pod("hooked", &["sleep", "300"], "Always");
    p["spec"]["containers"][0]["lifecycle"] = json!({"postStart": {"exec": {"command":
        ["sh", "-c", format!("echo ran >> {}", trail.display())]}}});
    let a = Procnode::start(dir.path(), &[]);
    assert_eq!(a.post("/createPod", &p).await, 201);
    let s = a
        .wait_status("hooked", "running", |s| phase(s) == "Running")
        .await;
    let pid = container_pid(&s, "main").unwrap();
    wait_until("the hook ran", Duration::from_secs(10), || async {
        std::fs::read_to_string(&trail)
            .ok()
            .filter(|t| t == "ran\n")
    })
    .await;
    a.kill9().await;
    let b = Procnode::start(dir.path(), &[]);
    let s = b
        .wait_status("hooked", "re-attached", |s| phase(s) == "Running")
        .await;
    assert_eq!(container_pid(&s, "main"), Some(pid));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        std::fs::read_to_string(&trail).unwrap(),
        "ran\n",
        "not run again"
    );
    assert_eq!(b.delete(&p).await, 200);
    b.terminate().await;
}

/// The test support's own guarantee: a test that kills procnode on purpose and then fails
/// still leaves no supervisor, container or cgroup behind (its `StateDir` kills them).
#[tokio::test]
async fn a_test_failing_after_killing_procnode_leaves_nothing_behind() {
    let (tx, rx) = std::sync::mpsc::channel();
    let failed = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let dir = support::StateDir::new();
            let a = Procnode::start(dir.path(), &[]);
            let p = pod("orphaned", &["sleep", "300"], "Always");
            assert_eq!(a.post("/createPod", &p).await, 201);
            let s = a
                .wait_status("orphaned", "running", |s| phase(s) == "Running")
                .await;
            let pid = container_pid(&s, "main").unwrap();
            tx.send((
                pid,
                support::parent_of(pid),
                support::cgroup_parent_for(dir.path()),
            ))
            .unwrap();
            a.kill9().await;
            panic!("(on purpose) a test that fails after killing procnode");
        })
    })
    .join();
    assert!(failed.is_err(), "the inner test was meant to fail");
    let (pid, supervisor, cgroup_parent) = rx.recv().unwrap();
    support::assert_groups_gone(&[pid]).await;
    wait_until(
        "the supervisor to be gone",
        Duration::from_secs(5),
        || async { (!std::path::Path::new(&format!("/proc/{supervisor}")).exists()).then_some(()) },
    )
    .await;
    let left = support::cgroup_dirs(&cgroup_parent);
    assert!(left.is_empty(), "cgroups left: {left:?}");
}

/// An unreadable status record costs only itself: the pod stays, its running container (a
/// later run than the first) is taken back under its supervisor, not started a second time.
#[tokio::test]
async fn a_corrupt_status_record_keeps_the_pod_and_its_running_container() {
    let dir = support::StateDir::new();
    let a = Procnode::start(dir.path(), &[]);
    // The first run fails; the second (restartCount 1) runs on.
    let p = pod(
        "steady",
        &sh("if [ -f marker ]; then exec sleep 300; fi; touch marker; exit 1"),
        "Always",
    );
    assert_eq!(a.post("/createPod", &p).await, 201);
    let s = a
        .wait_status("steady", "its second run", |s| {
            phase(s) == "Running"
                && support::container(s, "main")["restartCount"] == 1
                && support::container(s, "main")["state"]["running"].is_object()
        })
        .await;
    let pid = container_pid(&s, "main").unwrap();
    let status_file = dir
        .path()
        .join("records/default_steady_uid-steady.status.json");
    wait_until("the run on record", Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(&status_file).ok()?;
        text.contains(&format!("\"pid\":{pid}")).then_some(())
    })
    .await;
    a.kill9().await;
    std::fs::write(&status_file, "{\"startTime\":").unwrap();

    let b = Procnode::start(dir.path(), &[]);
    let s = b
        .wait_status("steady", "taken back", |s| {
            support::container(s, "main")["state"]["running"].is_object()
        })
        .await;
    assert_eq!(
        container_pid(&s, "main"),
        Some(pid),
        "the same process: {s}"
    );
    assert_eq!(support::container(&s, "main")["restartCount"], 1);
    let aside: Vec<String> = std::fs::read_dir(dir.path().join("corrupt"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(
        aside[0].starts_with("default_steady_uid-steady.status.json."),
        "{aside:?}"
    );
    assert_eq!(b.delete(&p).await, 200);
    support::assert_groups_gone(&[pid]).await;
    b.terminate().await;
}

/// A supervisor whose connection is replaced while the old one still has something to read
/// (a procnode that died, or a connection that only looked whether it answers) keeps serving
/// the new one: it reports its container's exit there instead of blocking on a read of a
/// connection it did not poll. (Both are made ready for one wake-up of the supervisor by
/// stopping it while the first closes and the second connects.)
#[tokio::test]
async fn a_supervisor_reports_the_exit_on_a_connection_that_replaced_a_closed_one() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixStream;
    let dir = support::StateDir::new();
    let a = Procnode::start(dir.path(), &[]);
    let p = pod("handover", &["sleep", "300"], "Never");
    assert_eq!(a.post("/createPod", &p).await, 201);
    let s = a
        .wait_status("handover", "running", |s| phase(s) == "Running")
        .await;
    let pid = container_pid(&s, "main").unwrap();
    let supervisor = parent_of(pid);
    a.kill9().await;
    // sup/POD_PART/IDX-RUN
    let pod_sockets = std::fs::read_dir(dir.path().join("sup"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .expect("the pod's directory of supervisor sockets");
    let socket = std::fs::read_dir(pod_sockets)
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .expect("the supervisor's socket");
    let connect = || {
        let c = UnixStream::connect(&socket).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c
    };
    let first = connect();
    let mut hello = String::new();
    BufReader::new(&first).read_line(&mut hello).unwrap();
    assert!(hello.contains("hello"), "{hello}");
    kill(Pid::from_raw(supervisor), Signal::SIGSTOP).unwrap();
    drop(first);
    let second = connect();
    kill(Pid::from_raw(supervisor), Signal::SIGCONT).unwrap();
    let mut reader = BufReader::new(second.try_clone().unwrap());
    let mut hello = String::new();
    reader.read_line(&mut hello).unwrap();
    assert!(hello.contains("hello"), "{hello}");
    // (A procnode that connects says first how much of the output it holds: here, all.)
    (&second)
        .write_all(format!("resume {}\n", u64::MAX).as_bytes())
        .unwrap();
    // The container ends: its supervisor says so on the connection it has now (a frame:
    // kind 3, a little-endian length, the message).
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let exited = (|| {
        let mut header = [0u8; 5];
        reader.read_exact(&mut header)?;
        let len = u32::from_le_bytes(header[1..5].try_into().unwrap()) as usize;
        let mut message = vec![0u8; len];
        reader.read_exact(&mut message)?;
        Ok::<_, std::io::Error>((header[0], String::from_utf8_lossy(&message).into_owned()))
    })()
    .map_err(|e| e.to_string());
    let released = match &exited {
        Ok((3, message)) if message.contains("exited") => {
            (&second).write_all(b"release\n").unwrap();
            true
        }
        _ => false,
    };
    // (A supervisor stuck in a read is ended here, so that nothing outlives the test.)
    if !released {
        let _ = kill(Pid::from_raw(supervisor), Signal::SIGKILL);
    }
    wait_until("the supervisor gone", Duration::from_secs(10), || async {
        (!pid_alive(supervisor)).then_some(())
    })
    .await;
    assert!(
        released,
        "no exit reported on the new connection: {exited:?}"
    );
}

/// Output the container writes while procnode is killed (twice, the first time right after
/// the create's 201) and started again is all kept, once: its supervisor holds what procnode
/// has not acknowledged storing, and sends the next procnode what its log files lack.
#[tokio::test]
async fn output_written_across_kill_9s_of_procnode_is_all_kept() {
    const LINES: u32 = 200_000;
    let dir = support::StateDir::new();
    let args = ["--log-buffer-bytes", "16777216"];
    let a = Procnode::start(dir.path(), &args);
    let script = format!("seq 1 {LINES}; exec sleep 300");
    let p = pod("counter", &sh(&script), "Never");
    assert_eq!(a.post("/createPod", &p).await, 201);
    a.kill9().await;
    let b = Procnode::start(dir.path(), &args);
    b.wait_status("counter", "Running", |s| phase(s) == "Running")
        .await;
    b.kill9().await;
    let c = Procnode::start(dir.path(), &args);
    let logs = wait_until("all the output", Duration::from_secs(30), || async {
        let logs = c.logs("counter").await;
        logs.contains(&format!("\n{LINES}\n")).then_some(logs)
    })
    .await;
    let mut seen = vec![0u32; LINES as usize + 1];
    for line in logs.lines() {
        // (A line cut by a kill and sent again whole would read as two numbers run together.)
        let n: usize = line
            .parse()
            .ok()
            .filter(|n| *n <= LINES as usize)
            .unwrap_or_else(|| panic!("a line that was never written: {line:?}"));
        seen[n] += 1;
    }
    let missing: Vec<usize> = (1..=LINES as usize).filter(|n| seen[*n] == 0).collect();
    assert!(
        missing.is_empty(),
        "{} lines lost, the first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let twice: Vec<usize> = (1..=LINES as usize).filter(|n| seen[*n] > 1).collect();
    assert!(
        twice.is_empty(),
        "{} lines stored twice, the first {:?}",
        twice.len(),
        &twice[..twice.len().min(10)]
    );
    assert_eq!(c.delete(&p).await, 200);
    c.terminate().await;
}

/// procnode holds one descriptor per supervised container (its supervisor's connection, which
/// relays the output), not the output pipes too: what lets RLIMIT_NOFILE hold ten thousand
/// pods.
#[tokio::test]
async fn a_supervised_container_costs_procnode_one_descriptor() {
    const PODS: usize = 30;
    let dir = support::StateDir::new();
    let a = Procnode::start(dir.path(), &[]);
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", a.pid))
            .unwrap()
            .count()
    };
    // One pod first, so that what procnode opens once (its reader buffers, the first record
    // directories) is counted before.
    let first = pod("first", &["sleep", "300"], "Never");
    assert_eq!(a.post("/createPod", &first).await, 201);
    a.wait_status("first", "Running", |s| phase(s) == "Running")
        .await;
    let before = fds();
    let pods: Vec<Value> = (0..PODS)
        .map(|i| pod(&format!("idle-{i}"), &["sleep", "300"], "Never"))
        .collect();
    for p in &pods {
        assert_eq!(a.post("/createPod", p).await, 201);
    }
    for i in 0..PODS {
        a.wait_status(&format!("idle-{i}"), "Running", |s| phase(s) == "Running")
            .await;
    }
    let after = fds();
    assert!(
        after <= before + PODS + 4,
        "{PODS} pods took {} descriptors ({before} before, {after} after)",
        after - before
    );
    for p in pods.iter().chain([&first]) {
        assert_eq!(a.delete(p).await, 200);
    }
    a.terminate().await;
}
