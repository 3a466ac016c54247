//! Sidecar containers (init containers with `restartPolicy: Always`, Kubernetes 1.28+) through
//! the web API with real processes: the next init container waits until the sidecar has
//! started (its startup probe passed); a Job-style pod with a logging sidecar completes
//! (Succeeded) and its sidecar is stopped; a crashing sidecar is restarted while the app
//! container keeps running. (The 1.20 API server of the e2e drops the field, so sidecars are
//! tested here and through `procnode run`, in binary.rs.)

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{container, container_pid, phase, pid_alive, sh, wait_until, Server};

#[tokio::test]
async fn a_jobs_pod_with_a_logging_sidecar_completes_and_the_sidecar_is_stopped() {
    let srv = Server::start(&[]).await;
    let marks = tempfile::tempdir().unwrap();
    let up = marks.path().join("sidecar-up");
    let up = up.to_str().unwrap();
    let p = json!({
        "metadata": {"name": "job-sidecar", "namespace": "default", "uid": "uid-job-sidecar"},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "initContainers": [
                // Up only after a second, so that a container started before the startup
                // probe passed would not find the mark.
                {"name": "logger", "restartPolicy": "Always",
                 "command": sh(&format!("sleep 1; touch {up}; trap 'echo stopping; exit 0' TERM; while true; do sleep 0.1; done")),
                 "startupProbe": {"exec": {"command": ["test", "-f", up]}, "periodSeconds": 1}},
                {"name": "setup", "command": ["test", "-f", up]},
            ],
            "containers": [{"name": "main", "command": sh("sleep 2; echo done")}],
        },
    });
    assert_eq!(srv.create(&p).await.status(), 201);
    let s = srv
        .wait_status("job-sidecar", "the app container running", |s| {
            container(s, "main")["state"]["running"].is_object()
        })
        .await;
    let logger = container(&s, "logger");
    assert!(logger["state"]["running"].is_object(), "{s}");
    assert_eq!(logger["started"], true, "{s}");
    assert_eq!(logger["ready"], true, "{s}");
    assert_eq!(
        container(&s, "setup")["state"]["terminated"]["exitCode"],
        0,
        "the next init container ran once the sidecar had started: {s}"
    );
    assert_eq!(phase(&s), "Running");
    let sidecar_pid = container_pid(&s, "logger").expect("the sidecar's pid");
    let s = wait_until("the pod Succeeded", Duration::from_secs(30), || async {
        srv.status("job-sidecar")
            .await
            .filter(|s| phase(s) == "Succeeded")
    })
    .await;
    let logger = container(&s, "logger");
    assert!(logger["state"]["terminated"].is_object(), "{s}");
    assert!(!pid_alive(sidecar_pid), "the sidecar was stopped");
    let (code, logs) = srv.logs("job-sidecar", "logger", "").await;
    assert_eq!(code, 200);
    assert!(logs.contains("stopping"), "it got TERM: {logs:?}");
    srv.delete(&p).await;
    srv.stop().await;
}

#[tokio::test]
async fn a_crashing_sidecar_is_restarted_while_the_app_container_keeps_running() {
    let srv = Server::start(&[]).await;
    let p = json!({
        "metadata": {"name": "crashy", "namespace": "default", "uid": "uid-crashy"},
        "spec": {
            // Never for the pod: the sidecar is restarted all the same.
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 2,
            "initContainers": [
                {"name": "helper", "restartPolicy": "Always", "command": sh("sleep 1; exit 3")},
            ],
            "containers": [{"name": "main", "command": ["sleep", "300"]}],
        },
    });
    assert_eq!(srv.create(&p).await.status(), 201);
    let s = srv
        .wait_status("crashy", "main running", |s| {
            container(s, "main")["state"]["running"].is_object()
        })
        .await;
    let main_pid = container_pid(&s, "main").unwrap();
    let s = wait_until(
        "the sidecar restarted twice",
        Duration::from_secs(30),
        || async {
            srv.status("crashy").await.filter(|s| {
                container(s, "helper")["restartCount"]
                    .as_i64()
                    .is_some_and(|n| n >= 2)
            })
        },
    )
    .await;
    assert_eq!(phase(&s), "Running", "{s}");
    assert_eq!(
        container_pid(&s, "main"),
        Some(main_pid),
        "the app container kept running"
    );
    assert_eq!(container(&s, "main")["restartCount"], 0);
    assert_eq!(
        container(&s, "helper")["lastState"]["terminated"]["exitCode"],
        3,
        "{s}"
    );
    srv.delete(&p).await;
    assert!(!pid_alive(main_pid));
    srv.stop().await;
}

#[tokio::test]
async fn a_restart_policy_the_api_server_refuses_is_refused_naming_the_field() {
    let srv = Server::start(&[]).await;
    let base = |init: Value, app: Value| {
        json!({"metadata": {"name": "bad-policy"}, "spec": {
            "initContainers": [init], "containers": [app]}})
    };
    let cases = [
        (
            base(
                json!({"name": "i", "command": ["true"], "restartPolicy": "OnFailure"}),
                json!({"name": "a", "command": ["true"]}),
            ),
            "spec.initContainers[0].restartPolicy",
        ),
        (
            base(
                json!({"name": "i", "command": ["true"]}),
                json!({"name": "a", "command": ["true"], "restartPolicy": "Always"}),
            ),
            "spec.containers[0].restartPolicy",
        ),
    ];
    for (pod, field) in cases {
        let r = srv.create(&pod).await;
        assert_eq!(r.status(), 400);
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains(field),
            "{field}: {body}"
        );
    }
    assert!(srv.status("bad-policy").await.is_none(), "nothing stored");
    srv.stop().await;
}

/// Sidecars are stopped after the app containers, the last started first, each waited for.
#[tokio::test]
async fn sidecars_stop_in_reverse_order_after_the_app_containers() {
    let srv = Server::start(&[]).await;
    let marks = tempfile::tempdir().unwrap();
    let order = marks.path().join("order");
    let order = order.to_str().unwrap();
    let sidecar = |name: &str| {
        // Slow to stop, so that one not waited for would be overtaken.
        json!({"name": name, "restartPolicy": "Always",
               "command": sh(&format!("trap 'sleep 0.3; echo {name} >> {order}; exit 0' TERM; while true; do sleep 0.1; done"))})
    };
    let p = json!({
        "metadata": {"name": "ordered", "namespace": "default", "uid": "uid-ordered"},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 10,
            "initContainers": [sidecar("first"), sidecar("second")],
            "containers": [{"name": "main", "command": sh(&format!("echo main >> {order}"))}],
        },
    });
    assert_eq!(srv.create(&p).await.status(), 201);
    wait_until("the pod Succeeded", Duration::from_secs(30), || async {
        srv.status("ordered")
            .await
            .filter(|s| phase(s) == "Succeeded")
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(order).unwrap(),
        "main\nsecond\nfirst\n"
    );
    srv.delete(&p).await;
    srv.stop().await;
}
