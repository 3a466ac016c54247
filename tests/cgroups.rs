//! Pod cgroups with real processes: memory limits and OOMKilled, the CPU quota, the pods limit,
//! a process that left its process group with setsid, and the node condition that says whether
//! limits are enforced. These need a cgroup hierarchy procnode may write (v2 delegated, or v1);
//! without one the first test fails and says so.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{container, container_pid, phase, pod, sh, wait_until, Server};

async fn node_condition(srv: &Server) -> Value {
    let conds = srv.get_json("/nodeConditions").await;
    conds
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "PodResourceLimits")
        .cloned()
        .expect("a PodResourceLimits condition")
}

/// The cgroup directories a process is in, from /proc/PID/cgroup and the mounts.
fn cgroup_file(pid: i32, controller: &str, file: &str) -> Option<String> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let v2 = controllers.is_empty();
        if !v2 && !controllers.split(',').any(|c| c == controller) {
            continue;
        }
        let mount = mountinfo.lines().find_map(|m| {
            let (left, right) = m.split_once(" - ")?;
            let mut r = right.split_whitespace();
            let (fstype, _, options) = (r.next()?, r.next()?, r.next()?);
            let hit = if v2 {
                fstype == "cgroup2"
            } else {
                fstype == "cgroup" && options.split(',').any(|o| o == controller)
            };
            hit.then(|| left.split_whitespace().nth(4).map(String::from))?
        })?;
        let dir = format!("{mount}{path}");
        if let Ok(text) = std::fs::read_to_string(format!("{dir}/{file}")) {
            return Some(text.trim().to_string());
        }
    }
    None
}

fn with_limits(mut p: Value, limits: Value) -> Value {
    p["spec"]["containers"][0]["resources"] = json!({ "limits": limits });
    p
}

#[tokio::test]
async fn a_container_over_its_memory_limit_is_oom_killed() {
    let srv = Server::start(&[]).await;
    let cond = node_condition(&srv).await;
    assert_eq!(
        cond["status"], "True",
        "this test needs a writable cgroup hierarchy: {cond}"
    );
    // 200 MB into a shell variable under a 50 MiB limit.
    let p = with_limits(
        pod(
            "hog",
            &sh("echo start; x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"),
            "Never",
        ),
        json!({"memory": "50Mi"}),
    );
    assert_eq!(srv.create(&p).await.status(), 201);
    let s = srv
        .wait_status("hog", "Failed", |s| phase(s) == "Failed")
        .await;
    let t = &container(&s, "main")["state"]["terminated"];
    assert_eq!(t["reason"], "OOMKilled", "{t}");
    assert_eq!(t["exitCode"], 137);
    let (_, logs) = srv.logs("hog", "main", "").await;
    assert!(!logs.contains("survived"), "{logs}");

    // The same pod under a limit it fits in: Completed, not OOMKilled.
    let mut fits = with_limits(
        pod(
            "fits",
            &sh("x=$(head -c 1000000 /dev/zero | tr '\\0' a); echo fine"),
            "Never",
        ),
        json!({"memory": "200Mi"}),
    );
    fits["metadata"]["uid"] = json!("uid-fits");
    assert_eq!(srv.create(&fits).await.status(), 201);
    let s = srv
        .wait_status("fits", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    assert_eq!(
        container(&s, "main")["state"]["terminated"]["reason"],
        "Completed"
    );
    srv.stop().await;
}

#[tokio::test]
async fn cpu_limits_and_requests_become_the_cgroup_quota_and_weight() {
    let srv = Server::start(&[]).await;
    let mut p = with_limits(
        pod("cpu", &["sleep", "300"], "Always"),
        json!({"cpu": "500m"}),
    );
    p["spec"]["containers"][0]["resources"]["requests"] = json!({"cpu": "250m"});
    assert_eq!(srv.create(&p).await.status(), 201);
    let s = srv
        .wait_status("cpu", "Running", |s| phase(s) == "Running")
        .await;
    let pid = container_pid(&s, "main").unwrap();
    match cgroup_file(pid, "cpu", "cpu.max") {
        Some(max) => assert_eq!(max, "50000 100000"),
        None => {
            assert_eq!(
                cgroup_file(pid, "cpu", "cpu.cfs_quota_us").as_deref(),
                Some("50000")
            );
            assert_eq!(
                cgroup_file(pid, "cpu", "cpu.cfs_period_us").as_deref(),
                Some("100000")
            );
            assert_eq!(
                cgroup_file(pid, "cpu", "cpu.shares").as_deref(),
                Some("256")
            );
        }
    }
    srv.stop().await;
}

#[tokio::test]
async fn a_pod_cannot_fork_past_its_pids_limit() {
    let srv = Server::start(&["--pod-pids-limit", "20"]).await;
    // Each round says how many children it has started; the shell dies at the fork the
    // limit refuses.
    let p = pod(
        "forker",
        &sh("i=0; while [ $i -lt 40 ]; do echo started $i; sleep 300 & i=$((i+1)); done; wait"),
        "Never",
    );
    assert_eq!(srv.create(&p).await.status(), 201);
    let s = srv
        .wait_status("forker", "Failed", |s| phase(s) == "Failed")
        .await;
    assert_eq!(
        container(&s, "main")["state"]["terminated"]["reason"],
        "Error"
    );
    let (_, logs) = srv.logs("forker", "main", "").await;
    assert!(
        logs.contains("fork"),
        "the shell reports the refused fork: {logs}"
    );
    let started = logs
        .lines()
        .filter_map(|l| l.strip_prefix("started "))
        .filter_map(|n| n.parse::<u32>().ok())
        .max()
        .unwrap();
    // The shell and its children: 20 at most, and the limit (not something else) stopped it.
    assert!((10..20).contains(&started), "{started} children: {logs}");
    srv.stop().await;
}

#[tokio::test]
async fn a_process_that_left_its_group_is_killed_with_the_pod() {
    let srv = Server::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("escaped.pid");
    // `$$$$` is the shell's `$$` after the kubelet's `$(VAR)` expansion (`$$` → `$`).
    let script = format!(
        "setsid sh -c 'echo $$$$ > {f}; exec sleep 300' & exec sleep 300",
        f = pidfile.display()
    );
    let p = pod("escape", &sh(&script), "Always");
    assert_eq!(srv.create(&p).await.status(), 201);
    srv.wait_status("escape", "Running", |s| phase(s) == "Running")
        .await;
    let escaped: i32 = wait_until(
        "the escapee wrote its pid",
        Duration::from_secs(10),
        || async {
            std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok())
        },
    )
    .await;
    assert!(support::pid_alive(escaped));
    assert_eq!(srv.delete(&p).await.status(), 200);
    wait_until("the escapee is gone", Duration::from_secs(10), || async {
        (!support::pid_alive(escaped)).then_some(())
    })
    .await;
    srv.stop().await;
}

#[tokio::test]
async fn without_cgroups_the_node_says_limits_are_not_enforced() {
    let srv = Server::start(&["--cgroups", "off"]).await;
    let cond = node_condition(&srv).await;
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "NoCgroups");
    assert!(
        cond["message"].as_str().unwrap().contains("--cgroups off"),
        "{cond}"
    );
    // Pods still run, limits or not.
    let p = with_limits(
        pod("plain", &sh("echo ok"), "Never"),
        json!({"memory": "50Mi"}),
    );
    assert_eq!(srv.create(&p).await.status(), 201);
    srv.wait_status("plain", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    srv.stop().await;
}

/// With cgroups the stats Summary measures the container's cgroup: memory held by a process
/// that left the process group (setsid) still counts.
#[tokio::test]
async fn stats_come_from_the_cgroup_and_include_processes_outside_the_group() {
    let srv = Server::start(&[]).await;
    let p = pod(
        "escaped-hog",
        &sh("setsid sh -c 'x=$(head -c 33554432 /dev/zero | tr \"\\0\" a); echo held; sleep 300 & wait' & exec sleep 300"),
        "Always",
    );
    assert_eq!(srv.create(&p).await.status(), 201);
    srv.wait_status("escaped-hog", "Running", |s| phase(s) == "Running")
        .await;
    wait_until(
        "the escapee holds its memory",
        Duration::from_secs(20),
        || async {
            let (_, logs) = srv.logs("escaped-hog", "main", "").await;
            logs.contains("held").then_some(())
        },
    )
    .await;
    let summary = srv.get_json("/getStatsSummary").await;
    let pod = summary["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podRef"]["name"] == "escaped-hog")
        .unwrap();
    let ws = pod["containers"][0]["memory"]["workingSetBytes"]
        .as_u64()
        .unwrap();
    assert!(
        ws > 32 << 20,
        "the cgroup holds the escapee's 32 MiB, stats say {ws}"
    );
    assert_eq!(srv.delete(&p).await.status(), 200);
    srv.stop().await;
}
