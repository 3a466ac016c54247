//! Real-process integration tests: a real server on 127.0.0.1:0, real HTTP, real children,
//! real signals. Every test ends by shutting the server down and checking that no process of
//! any process group it saw is left, alive or zombie.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{container, container_pid, group_members, phase, pod, sh, Server};

fn state<'a>(s: &'a Value, c: &str, which: &str) -> &'a Value {
    &container(s, c)["state"][which]
}

#[tokio::test]
async fn create_run_logs_delete() {
    let srv = Server::start(&[]).await;
    let p = pod(
        "web",
        &sh("for i in 1 2 3 4 5; do echo out-$i; done; echo err-1 >&2; exec sleep 300"),
        "Always",
    );
    assert_eq!(srv.create(&p).await.status(), 201);
    let s = srv
        .wait_status("web", "Running and ready", |s| {
            phase(s) == "Running" && container(s, "main")["ready"] == true
        })
        .await;
    let c = container(&s, "main");
    assert_eq!(c["ready"], true);
    // (A CI run once saw this pod Running but not ready: if it was an early exit and a
    // restart, this says so with the whole status.)
    assert_eq!(c["restartCount"], 0, "{s}");
    assert!(state(&s, "main", "running")["startedAt"].is_string());
    let cond = |t: &str| {
        s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(cond("Ready"), "True");
    assert_eq!(cond("ContainersReady"), "True");
    assert_eq!(cond("Initialized"), "True");
    assert_eq!(cond("PodScheduled"), "True");
    assert!(s["startTime"].is_string() && s["hostIP"].is_string() && s["podIP"].is_string());
    let pid = container_pid(&s, "main").unwrap();
    assert!(support::pid_alive(pid));

    // Logs: all six lines eventually; tail picks the last ones, stdout and stderr interleaved.
    support::wait_until("all output captured", Duration::from_secs(10), || async {
        let (_, text) = srv.logs("web", "main", "").await;
        (text.lines().count() == 6).then_some(())
    })
    .await;
    let (code, text) = srv.logs("web", "main", "&tail=2").await;
    assert_eq!(code, 200);
    assert_eq!(text, "out-5\nerr-1\n");
    let (_, text) = srv.logs("web", "main", "&tail=0").await;
    assert_eq!(text, "");
    let (_, text) = srv.logs("web", "main", "&tail=").await;
    assert!(text.starts_with("out-1\n"));
    let (code, _) = srv.logs("web", "nope", "&tail=2").await;
    assert_eq!(code, 404);

    assert_eq!(srv.delete(&p).await.status(), 200);
    assert!(
        srv.status("web").await.is_none(),
        "deleted pods are forgotten"
    );
    let (live, zombies) = group_members(pid);
    assert!(
        live.is_empty() && zombies.is_empty(),
        "left: {live:?} zombies: {zombies:?}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn init_containers_run_one_at_a_time_in_order_before_the_app() {
    let srv = Server::start(&[]).await;
    let mut p = pod(
        "inits",
        &sh("cat order; echo app >> order; exec sleep 300"),
        "Always",
    );
    p["spec"]["initContainers"] = json!([
        {"name": "init-one", "image": "busybox", "command": ["sh", "-c", "sleep 0.3; echo init-one > order"]},
        {"name": "init-two", "image": "busybox", "command": ["sh", "-c", "test -f order && echo init-two >> order"]}
    ]);
    srv.create(&p).await;
    let s = srv
        .wait_status("inits", "Running", |s| phase(s) == "Running")
        .await;
    for init in ["init-one", "init-two"] {
        let t = state(&s, init, "terminated");
        assert_eq!(t["exitCode"], 0, "{init}");
        assert_eq!(t["reason"], "Completed");
    }
    let one_done = state(&s, "init-one", "terminated")["finishedAt"]
        .as_str()
        .unwrap()
        .to_string();
    let two_start = state(&s, "init-two", "terminated")["startedAt"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        one_done <= two_start,
        "init-two started before init-one finished"
    );
    support::wait_until("app output", Duration::from_secs(10), || async {
        let (_, text) = srv.logs("inits", "main", "").await;
        (text == "init-one\ninit-two\n").then_some(())
    })
    .await;
    srv.delete(&p).await;
    srv.stop().await;
}

#[tokio::test]
async fn app_containers_wait_while_init_runs_and_a_failed_init_fails_a_never_pod() {
    let srv = Server::start(&[]).await;
    let mut p = pod("badinit", &["sleep", "300"], "Never");
    p["spec"]["initContainers"] = json!([
        {"name": "init-one", "image": "busybox", "command": ["sh", "-c", "exit 7"]}
    ]);
    srv.create(&p).await;
    let s = srv
        .wait_status("badinit", "Failed", |s| phase(s) == "Failed")
        .await;
    assert_eq!(state(&s, "init-one", "terminated")["exitCode"], 7);
    assert_eq!(state(&s, "main", "waiting")["reason"], "PodInitializing");
    let init_cond = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Initialized")
        .unwrap();
    assert_eq!(init_cond["status"], "False");
    assert!(init_cond["message"].as_str().unwrap().contains("init-one"));
    srv.delete(&p).await;
    srv.stop().await;
}

#[tokio::test]
async fn never_policy_keeps_exit_code_and_reason() {
    let srv = Server::start(&[]).await;
    let ok = pod("ok", &sh("echo done"), "Never");
    let bad = pod("bad", &sh("echo failing >&2; exit 3"), "Never");
    srv.create(&ok).await;
    srv.create(&bad).await;
    let s = srv
        .wait_status("ok", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    let t = state(&s, "main", "terminated");
    assert_eq!(
        (t["exitCode"].clone(), t["reason"].clone()),
        (json!(0), json!("Completed"))
    );
    assert!(t["startedAt"].is_string() && t["finishedAt"].is_string());
    let s = srv
        .wait_status("bad", "Failed", |s| phase(s) == "Failed")
        .await;
    let t = state(&s, "main", "terminated");
    assert_eq!(
        (t["exitCode"].clone(), t["reason"].clone()),
        (json!(3), json!("Error"))
    );
    assert_eq!(container(&s, "main")["restartCount"], 0);
    let ready = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["reason"], "PodCompleted");
    // Logs stay readable after exit, until the pod is deleted.
    assert_eq!(
        srv.logs("bad", "main", "&tail=10").await,
        (200, "failing\n".to_string())
    );
    srv.delete(&ok).await;
    srv.delete(&bad).await;
    srv.stop().await;
}

#[tokio::test]
async fn on_failure_restarts_until_success_with_backoff() {
    let srv = Server::start(&[]).await;
    // Fails twice (counted in a file in the pod's working directory), then succeeds.
    let p = pod(
        "retry",
        &sh("n=$(cat n 2>/dev/null || echo 0); n=$((n+1)); echo $n > n; echo run-$n; [ $n -ge 3 ]"),
        "OnFailure",
    );
    srv.create(&p).await;
    let saw_backoff = std::cell::Cell::new(false);
    let s = support::wait_until("Succeeded", Duration::from_secs(20), || async {
        let s = srv.status("retry").await?;
        if state(&s, "main", "waiting")["reason"] == "CrashLoopBackOff" {
            saw_backoff.set(true);
            let c = container(&s, "main");
            assert_eq!(c["lastState"]["terminated"]["exitCode"], 1);
            assert!(state(&s, "main", "waiting")["message"]
                .as_str()
                .unwrap()
                .contains("back-off"));
            assert_eq!(
                phase(&s),
                "Running",
                "OnFailure with a failed container is restarting"
            );
        }
        (phase(&s) == "Succeeded").then_some(s)
    })
    .await;
    assert!(
        saw_backoff.get(),
        "a waiting CrashLoopBackOff state was visible between runs"
    );
    let c = container(&s, "main");
    assert_eq!(c["restartCount"], 2);
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 1);
    assert_eq!(state(&s, "main", "terminated")["exitCode"], 0);
    assert_eq!(
        srv.logs("retry", "main", "").await.1,
        "run-3\n",
        "logs are of the current run"
    );
    srv.delete(&p).await;
    srv.stop().await;
}

#[tokio::test]
async fn always_restarts_even_after_success() {
    let srv = Server::start(&[]).await;
    let p = pod("again", &sh("echo hi"), "Always");
    srv.create(&p).await;
    let s = srv
        .wait_status("again", "two restarts", |s| {
            container(s, "main")["restartCount"].as_i64() >= Some(2)
        })
        .await;
    assert_eq!(phase(&s), "Running");
    assert_eq!(
        container(&s, "main")["lastState"]["terminated"]["reason"],
        "Completed"
    );
    srv.delete(&p).await;
    srv.stop().await;
}

#[tokio::test]
async fn a_command_that_cannot_start_is_pod_state_not_an_http_error() {
    let srv = Server::start(&[]).await;
    let missing = pod("missing", &["no-such-command-procnode"], "Never");
    let mut bad_dir = pod("baddir", &["true"], "Never");
    bad_dir["spec"]["containers"][0]["workingDir"] = json!("/no/such/dir");
    let retried = pod("retried", &["no-such-command-procnode"], "OnFailure");
    for p in [&missing, &bad_dir, &retried] {
        assert_eq!(srv.create(p).await.status(), 201);
    }
    let s = srv
        .wait_status("missing", "Failed", |s| phase(s) == "Failed")
        .await;
    let t = state(&s, "main", "terminated");
    assert_eq!(t["reason"], "StartError");
    assert_eq!(t["exitCode"], 128);
    assert!(
        t["message"]
            .as_str()
            .unwrap()
            .contains("executable file not found in $PATH"),
        "{t}"
    );
    let s = srv
        .wait_status("baddir", "Failed", |s| phase(s) == "Failed")
        .await;
    assert!(state(&s, "main", "terminated")["message"]
        .as_str()
        .unwrap()
        .contains("/no/such/dir"));
    let s = srv
        .wait_status("retried", "RunContainerError", |s| {
            state(s, "main", "waiting")["reason"] == "RunContainerError"
        })
        .await;
    assert!(state(&s, "main", "waiting")["message"]
        .as_str()
        .unwrap()
        .contains("not found"));
    for p in [&missing, &bad_dir, &retried] {
        srv.delete(p).await;
    }
    srv.stop().await;
}

#[tokio::test]
async fn delete_kills_the_whole_process_group_including_grandchildren() {
    let srv = Server::start(&[]).await;
    let p = pod("family", &sh("sleep 300 & sleep 300 & wait"), "Always");
    srv.create(&p).await;
    let s = srv
        .wait_status("family", "Running", |s| phase(s) == "Running")
        .await;
    let pgid = container_pid(&s, "main").unwrap();
    let live = support::wait_until(
        "three processes in the group",
        Duration::from_secs(10),
        || async {
            let (live, _) = group_members(pgid);
            (live.len() == 3).then_some(live)
        },
    )
    .await;
    assert_eq!(srv.delete(&p).await.status(), 200);
    let (left, zombies) = group_members(pgid);
    assert!(
        left.is_empty(),
        "still alive after delete: {left:?} (was {live:?})"
    );
    assert!(zombies.is_empty(), "zombies after delete: {zombies:?}");
    srv.stop().await;
}

/// The test support's own guarantee: a test that fails half-way (and so never calls
/// `stop`) still leaves no supervisor, container or cgroup behind.
#[tokio::test]
async fn a_test_server_dropped_without_stop_leaves_no_process() {
    let srv = Server::start(&[]).await;
    let p = pod("dropped", &sh("sleep 300 & sleep 300 & wait"), "Always");
    srv.create(&p).await;
    let s = srv
        .wait_status("dropped", "Running", |s| phase(s) == "Running")
        .await;
    let pgid = container_pid(&s, "main").unwrap();
    let supervisor = support::parent_of(pgid);
    support::wait_until(
        "three processes in the group",
        Duration::from_secs(10),
        || async { (group_members(pgid).0.len() == 3).then_some(()) },
    )
    .await;
    let cgroup_parent = support::cgroup_parent_for(srv.state_dir.path());
    drop(srv);
    support::assert_groups_gone(&[pgid]).await;
    assert!(
        !std::path::Path::new(&format!("/proc/{supervisor}")).exists(),
        "supervisor {supervisor} left (alive or zombie)"
    );
    let left = support::cgroup_dirs(&cgroup_parent);
    assert!(left.is_empty(), "cgroups left: {left:?}");
}

#[tokio::test]
async fn leftovers_in_the_group_are_ended_when_the_main_process_exits() {
    let srv = Server::start(&[]).await;
    // The main process exits at once, leaving a background sleeper in its group.
    let p = pod("orphans", &sh("sleep 300 & echo bye"), "Never");
    srv.create(&p).await;
    let s = srv
        .wait_status("orphans", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    let pgid = container_pid(&s, "main").unwrap();
    support::assert_groups_gone(&[pgid]).await;
    srv.delete(&p).await;
    srv.stop().await;
}

#[tokio::test]
async fn a_process_ignoring_sigterm_is_killed_after_the_grace_period() {
    let srv = Server::start(&[]).await;
    let mut p = pod(
        "stubborn",
        &sh("trap '' TERM; echo ready; while :; do sleep 0.05; done"),
        "Always",
    );
    p["spec"]["terminationGracePeriodSeconds"] = json!(1);
    srv.create(&p).await;
    let s = srv
        .wait_status("stubborn", "Running", |s| phase(s) == "Running")
        .await;
    let pgid = container_pid(&s, "main").unwrap();
    support::wait_until("trap installed", Duration::from_secs(10), || async {
        (srv.logs("stubborn", "main", "").await.1 == "ready\n").then_some(())
    })
    .await;
    let t0 = Instant::now();
    assert_eq!(srv.delete(&p).await.status(), 200);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "SIGTERM was ignored, so delete waits the grace period ({took:?})"
    );
    let (left, zombies) = group_members(pgid);
    assert!(
        left.is_empty() && zombies.is_empty(),
        "{left:?} {zombies:?}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_process_that_handles_sigterm_gets_to_run_its_handler() {
    let srv = Server::start(&[]).await;
    let marks = tempfile::tempdir().unwrap();
    let mark = marks.path().join("mark");
    let mut p = pod(
        "polite",
        &sh("trap 'echo got-term > \"$MARK\"; exit 0' TERM; echo up; while :; do sleep 0.05; done"),
        "Never",
    );
    p["spec"]["containers"][0]["env"] = json!([{"name": "MARK", "value": mark.to_str().unwrap()}]);
    srv.create(&p).await;
    support::wait_until("up", Duration::from_secs(10), || async {
        (srv.logs("polite", "main", "").await.1 == "up\n").then_some(())
    })
    .await;
    srv.status("polite").await;
    assert_eq!(srv.delete(&p).await.status(), 200);
    assert_eq!(
        std::fs::read_to_string(&mark).unwrap(),
        "got-term\n",
        "TERM reached the process first"
    );
    srv.stop().await;
}

#[tokio::test]
async fn env_downward_api_and_working_dir_reach_the_process() {
    let srv = Server::start(&["--node-name", "node-t", "--node-ip", "10.20.30.40"]).await;
    let mut p = pod("envy", &sh("echo $GREETING; echo $POD_NAME $POD_NAMESPACE $POD_UID $NODE_NAME $POD_IP $MEM; pwd; echo $(GREETING)"), "Never");
    p["spec"]["containers"][0]["args"] = json!([]);
    p["spec"]["containers"][0]["command"] = json!(["sh", "-c", "echo $GREETING; echo $POD_NAME $POD_NAMESPACE $POD_UID $NODE_NAME $POD_IP $MEM; pwd; echo \"$1\"", "sh", "$(GREETING)"]);
    p["spec"]["containers"][0]["workingDir"] = json!("/tmp");
    p["spec"]["containers"][0]["resources"] = json!({"limits": {"memory": "64Mi"}});
    p["spec"]["containers"][0]["env"] = json!([
        {"name": "GREETING", "value": "hello world"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}}
    ]);
    srv.create(&p).await;
    srv.wait_status("envy", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    let (_, text) = srv.logs("envy", "main", "").await;
    assert_eq!(
        text,
        "hello world\nenvy default uid-envy node-t 10.20.30.40 64\n/tmp\nhello world\n"
    );
    srv.delete(&p).await;
    srv.stop().await;
}

#[tokio::test]
async fn the_default_working_dir_is_the_pods_own_directory_removed_on_delete() {
    let srv = Server::start(&[]).await;
    let p = pod("home", &sh("pwd; echo data > file"), "Never");
    srv.create(&p).await;
    srv.wait_status("home", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    let (_, text) = srv.logs("home", "main", "").await;
    let dir = std::path::PathBuf::from(text.trim());
    assert!(dir.starts_with(srv.state_dir.path()), "{dir:?}");
    assert_eq!(std::fs::read_to_string(dir.join("file")).unwrap(), "data\n");
    srv.delete(&p).await;
    assert!(!dir.exists(), "pod directory removed with the pod");
    srv.stop().await;
}

#[tokio::test]
async fn a_repeated_create_starts_no_second_process() {
    let srv = Server::start(&[]).await;
    let p = pod("once", &["sleep", "300"], "Always");
    assert_eq!(srv.create(&p).await.status(), 201);
    let s = srv
        .wait_status("once", "Running", |s| phase(s) == "Running")
        .await;
    let pid = container_pid(&s, "main").unwrap();
    assert_eq!(srv.create(&p).await.status(), 200);
    let s = srv.status("once").await.unwrap();
    assert_eq!(container_pid(&s, "main"), Some(pid));
    assert_eq!(container(&s, "main")["restartCount"], 0);
    srv.delete(&p).await;
    srv.stop().await;
}

#[tokio::test]
async fn a_new_uid_under_the_same_name_replaces_the_old_pod() {
    let srv = Server::start(&[]).await;
    let old = pod("reborn", &["sleep", "300"], "Always");
    srv.create(&old).await;
    let s = srv
        .wait_status("reborn", "Running", |s| phase(s) == "Running")
        .await;
    let old_pid = container_pid(&s, "main").unwrap();
    let mut new = old.clone();
    new["metadata"]["uid"] = json!("uid-reborn-2");
    assert_eq!(srv.create(&new).await.status(), 201);
    assert!(
        group_members(old_pid).0.is_empty(),
        "old pod's process stopped"
    );
    let s = srv
        .wait_status("reborn", "Running again", |s| phase(s) == "Running")
        .await;
    assert_ne!(container_pid(&s, "main"), Some(old_pid));
    srv.delete(&new).await;
    srv.stop().await;
}

#[tokio::test]
async fn shutdown_stops_every_pod() {
    let srv = Server::start(&[]).await;
    let mut pgids = vec![];
    for i in 0..5 {
        let name = format!("many-{i}");
        srv.create(&pod(&name, &sh("sleep 300 & wait"), "Always"))
            .await;
        let s = srv
            .wait_status(&name, "Running", |s| phase(s) == "Running")
            .await;
        pgids.push(container_pid(&s, "main").unwrap());
    }
    srv.stop().await;
    for pgid in pgids {
        assert!(group_members(pgid).0.is_empty());
    }
}

#[tokio::test]
async fn without_supervisors_containers_are_procnodes_own_children() {
    let srv = Server::start(&["--supervisor", "none"]).await;
    let p = pod("direct", &sh("echo hi; sleep 300 & wait"), "Always");
    srv.create(&p).await;
    let s = srv
        .wait_status("direct", "Running", |s| phase(s) == "Running")
        .await;
    let pid = container_pid(&s, "main").unwrap();
    assert_eq!(
        support::parent_of(pid) as u32,
        std::process::id(),
        "the container's parent is procnode itself"
    );
    let once = pod("direct-once", &sh("exit 4"), "Never");
    srv.create(&once).await;
    let s = srv
        .wait_status("direct-once", "Failed", |s| phase(s) == "Failed")
        .await;
    assert_eq!(container(&s, "main")["state"]["terminated"]["exitCode"], 4);
    srv.delete(&p).await;
    srv.delete(&once).await;
    assert!(group_members(pid).0.is_empty());
    srv.stop().await;
}

#[tokio::test]
async fn each_container_runs_under_its_own_supervisor() {
    let srv = Server::start(&[]).await;
    let p = pod("shimmed", &["sleep", "300"], "Always");
    srv.create(&p).await;
    let s = srv
        .wait_status("shimmed", "Running", |s| phase(s) == "Running")
        .await;
    let pid = container_pid(&s, "main").unwrap();
    let parent = |pid: u32| support::parent_of(pid as i32) as u32;
    let shim = parent(pid as u32);
    assert_ne!(shim, std::process::id());
    assert_eq!(
        parent(shim),
        std::process::id(),
        "the supervisor is procnode's child"
    );
    let cmdline = std::fs::read_to_string(format!("/proc/{shim}/cmdline")).unwrap();
    assert!(cmdline.split('\0').nth(1) == Some("shim"), "{cmdline:?}");
    srv.delete(&p).await;
    support::wait_until("supervisor to exit", Duration::from_secs(10), || async {
        (!support::pid_alive(shim as i32)).then_some(())
    })
    .await;
    srv.stop().await;
}

#[tokio::test]
async fn a_container_gets_stdin_stdout_stderr_and_nothing_else() {
    // A descriptor without close-on-exec in procnode's process, as a careless parent leaves them.
    let inherited = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    let srv = Server::start(&[]).await;
    let p = pod("fds", &sh("ls /proc/self/fd"), "Never");
    srv.create(&p).await;
    srv.wait_status("fds", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    // ls itself opens one descriptor to read the directory.
    let (_, text) = srv.logs("fds", "main", "").await;
    let fds: Vec<&str> = text.lines().collect();
    assert_eq!(fds.len(), 4, "{fds:?}");
    assert_eq!(&fds[..3], ["0", "1", "2"]);
    srv.delete(&p).await;
    srv.stop().await;
    drop(inherited);
}

#[tokio::test]
async fn active_deadline_stops_the_pod_and_fails_it() {
    let srv = Server::start(&[]).await;
    let mut p = pod("deadline", &["sleep", "300"], "Always");
    p["spec"]["activeDeadlineSeconds"] = json!(1);
    srv.create(&p).await;
    let s = srv
        .wait_status("deadline", "Running", |s| phase(s) == "Running")
        .await;
    let pgid = container_pid(&s, "main").unwrap();
    // The pod is Failed as soon as the deadline passes; its container a moment later, once
    // stopped.
    let s = srv
        .wait_status("deadline", "Failed and stopped", |s| {
            phase(s) == "Failed" && container(s, "main")["state"]["terminated"].is_object()
        })
        .await;
    assert_eq!(s["reason"], "DeadlineExceeded");
    assert!(s["message"].as_str().unwrap().contains("deadline"));
    assert!(
        container(&s, "main")["state"]["terminated"].is_object(),
        "{s}"
    );
    support::assert_groups_gone(&[pgid]).await;
    srv.delete(&p).await;
    srv.stop().await;
}

#[tokio::test]
async fn termination_messages_come_from_the_file_or_the_log_tail() {
    let srv = Server::start(&[]).await;
    let marks = tempfile::tempdir().unwrap();
    let file = marks.path().join("why");
    let mut from_file = pod(
        "msg-file",
        &sh("printf 'all done' > \"$WHY\"; exit 0"),
        "Never",
    );
    from_file["spec"]["containers"][0]["env"] =
        json!([{"name": "WHY", "value": file.to_str().unwrap()}]);
    from_file["spec"]["containers"][0]["terminationMessagePath"] = json!(file.to_str().unwrap());
    let mut from_logs = pod(
        "msg-logs",
        &sh("echo first; echo 'fatal: it broke'; exit 2"),
        "Never",
    );
    from_logs["spec"]["containers"][0]["terminationMessagePolicy"] = json!("FallbackToLogsOnError");
    let mut quiet = pod("msg-none", &sh("echo fine; exit 0"), "Never");
    quiet["spec"]["containers"][0]["terminationMessagePolicy"] = json!("FallbackToLogsOnError");
    for p in [&from_file, &from_logs, &quiet] {
        srv.create(p).await;
    }
    let s = srv
        .wait_status("msg-file", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    assert_eq!(
        container(&s, "main")["state"]["terminated"]["message"],
        "all done"
    );
    let s = srv
        .wait_status("msg-logs", "Failed", |s| phase(s) == "Failed")
        .await;
    assert_eq!(
        container(&s, "main")["state"]["terminated"]["message"],
        "first\nfatal: it broke\n"
    );
    let s = srv
        .wait_status("msg-none", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    assert!(
        container(&s, "main")["state"]["terminated"]["message"].is_null(),
        "no fallback on success"
    );
    for p in [&from_file, &from_logs, &quiet] {
        srv.delete(p).await;
    }
    srv.stop().await;
}

#[tokio::test]
async fn security_context_users_are_applied_and_policed() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let srv = Server::start(&["--allowed-uids", "0,1000-2000,65534"]).await;
    let mut as_nobody = pod(
        "as-nobody",
        &sh("id -u; id -g; id -G; pwd; touch mine && echo wrote"),
        "Never",
    );
    as_nobody["spec"]["securityContext"] =
        json!({"runAsUser": 65534, "runAsGroup": 65534, "supplementalGroups": [1234]});
    let mut container_wins = pod("container-wins", &sh("id -u"), "Never");
    container_wins["spec"]["securityContext"] = json!({"runAsUser": 65534});
    container_wins["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 1500});
    let mut refused = pod("refused", &["true"], "Never");
    refused["spec"]["securityContext"] = json!({"runAsUser": 4242});
    let mut non_root = pod("non-root", &["true"], "Never");
    non_root["spec"]["securityContext"] = json!({"runAsNonRoot": true});
    for p in [&as_nobody, &container_wins, &refused, &non_root] {
        srv.create(p).await;
    }
    srv.wait_status("as-nobody", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    let (_, text) = srv.logs("as-nobody", "main", "").await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..2], ["65534", "65534"], "{text}");
    assert!(
        lines[2].split(' ').any(|g| g == "1234"),
        "supplementary groups: {text}"
    );
    assert_eq!(
        lines[4], "wrote",
        "the pod directory belongs to the container's user: {text}"
    );
    srv.wait_status("container-wins", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    assert_eq!(srv.logs("container-wins", "main", "").await.1, "1500\n");
    for (name, needle) in [("refused", "uid policy"), ("non-root", "runAsNonRoot")] {
        let s = srv
            .wait_status(name, "Failed", |s| phase(s) == "Failed")
            .await;
        let t = &container(&s, "main")["state"]["terminated"];
        assert_eq!(t["reason"], "StartError");
        assert!(t["message"].as_str().unwrap().contains(needle), "{t}");
    }
    for p in [&as_nobody, &container_wins, &refused, &non_root] {
        srv.delete(p).await;
    }
    srv.stop().await;
}

#[tokio::test]
async fn without_supervisors_a_user_switch_goes_through_the_exec_helper() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let srv = Server::start(&["--supervisor", "none"]).await;
    // A program the target user cannot reach (its directory is root-only).
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let prog = private.path().join("prog");
    std::fs::write(&prog, "#!/bin/sh\necho should-not-run\n").unwrap();
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut blocked = pod("blocked", &[prog.to_str().unwrap()], "Never");
    blocked["spec"]["securityContext"] = json!({"runAsUser": 65534});
    let mut switched = pod("switched", &sh("id -u"), "Never");
    switched["spec"]["securityContext"] = json!({"runAsUser": 65534});
    srv.create(&blocked).await;
    srv.create(&switched).await;
    let s = srv
        .wait_status("blocked", "Failed", |s| phase(s) == "Failed")
        .await;
    assert_eq!(
        container(&s, "main")["state"]["terminated"]["exitCode"],
        126
    );
    let (_, text) = srv.logs("blocked", "main", "").await;
    assert!(text.contains("Permission denied"), "{text}");
    srv.wait_status("switched", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    assert_eq!(srv.logs("switched", "main", "").await.1, "65534\n");
    // procnode is still fine.
    assert!(srv.status("switched").await.is_some());
    srv.delete(&blocked).await;
    srv.delete(&switched).await;
    srv.stop().await;
}

/// `GET /getStatsSummary` in the kubelet Summary shape, measured from the real processes: a busy
/// pod shows CPU that grows between calls, a pod holding memory shows it, a finished pod shows
/// no running container.
#[tokio::test]
async fn stats_summary_measures_the_pods_processes() {
    let srv = Server::start(&[]).await;
    let busy = pod("busy", &sh("while :; do :; done"), "Always");
    // 32 MiB held in a shell variable while the shell waits.
    let hog = pod(
        "hog",
        &sh("x=$(head -c 33554432 /dev/zero | tr '\\0' a); echo held; sleep 300 & wait"),
        "Always",
    );
    let done = pod("done", &sh("true"), "Never");
    for p in [&busy, &hog, &done] {
        assert_eq!(srv.create(p).await.status(), 201);
    }
    srv.wait_status("busy", "Running", |s| phase(s) == "Running")
        .await;
    srv.wait_status("done", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    support::wait_until("hog holds its memory", Duration::from_secs(20), || async {
        let (_, text) = srv.logs("hog", "main", "").await;
        text.contains("held").then_some(())
    })
    .await;

    let summary = || async {
        let r = srv
            .http
            .get(srv.url("/getStatsSummary"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()
    };
    let pod_stats = |s: &Value, name: &str| -> Value {
        s["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["podRef"]["name"] == name)
            .unwrap_or_else(|| panic!("no stats for {name}: {s}"))
            .clone()
    };
    let first = summary().await;
    assert!(first["node"]["nodeName"].is_string());
    assert!(
        first["node"]["cpu"]["usageCoreNanoSeconds"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(first["node"]["memory"]["workingSetBytes"].as_u64().unwrap() > 0);
    assert!(first["node"]["fs"]["capacityBytes"].as_u64().unwrap() > 0);
    let busy_cpu = |s: &Value| {
        let p = pod_stats(s, "busy");
        assert_eq!(p["podRef"]["namespace"], "default");
        assert!(p["podRef"]["uid"].is_string() && p["startTime"].is_string());
        let c = &p["containers"][0];
        assert_eq!(c["name"], "main");
        c["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap()
    };
    let before = busy_cpu(&first);
    // Wait for the busy loop to accumulate CPU time (no timing assertion: only "more").
    let second = support::wait_until("busy CPU grows", Duration::from_secs(20), || async {
        let s = summary().await;
        (busy_cpu(&s) > before).then_some(s)
    })
    .await;
    let busy = pod_stats(&second, "busy");
    assert!(
        busy["containers"][0]["cpu"]["usageNanoCores"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(
        busy["cpu"]["usageCoreNanoSeconds"],
        busy["containers"][0]["cpu"]["usageCoreNanoSeconds"]
    );
    let hog = pod_stats(&second, "hog");
    let ws = hog["memory"]["workingSetBytes"].as_u64().unwrap();
    assert!(ws > 32 << 20, "the hog holds 32 MiB, stats say {ws}");
    assert!(hog["containers"][0]["memory"]["rssBytes"].as_u64().unwrap() > 32 << 20);
    assert_eq!(pod_stats(&second, "done")["containers"], json!([]));
    srv.stop().await;
}
