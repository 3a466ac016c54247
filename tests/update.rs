//! updatePod against running processes, field by field, as the kubelet treats a pod whose spec
//! Kubernetes changed: a new image restarts that container (whatever its restart policy) and
//! only it; labels, annotations and resources leave processes running (downwardAPI files and
//! cgroup limits follow); a new activeDeadlineSeconds applies at once; adding a container is
//! refused and changes nothing stored.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{container, container_pid, phase, pod, sh, wait_until, Server};

async fn get_pod(srv: &Server, name: &str) -> Value {
    srv.get_json(&format!("/getPod?namespace=default&name={name}"))
        .await
}

fn two_containers(name: &str, policy: &str) -> Value {
    let mut p = pod(name, &["sleep", "300"], policy);
    let mut side = p["spec"]["containers"][0].clone();
    side["name"] = json!("side");
    p["spec"]["containers"].as_array_mut().unwrap().push(side);
    p
}

#[tokio::test]
async fn a_new_image_restarts_that_container_only_even_under_never() {
    let srv = Server::start(&[]).await;
    let p = two_containers("images", "Never");
    assert_eq!(srv.create(&p).await.status(), 201);
    let s = srv
        .wait_status("images", "Running", |s| phase(s) == "Running")
        .await;
    let (main_pid, side_pid) = (
        container_pid(&s, "main").unwrap(),
        container_pid(&s, "side").unwrap(),
    );

    let mut changed = p.clone();
    changed["spec"]["containers"][0]["image"] = json!("busybox:1.37");
    assert_eq!(srv.update(&changed).await.0, 200);
    let s = srv
        .wait_status("images", "main restarted", |s| {
            container(s, "main")["restartCount"] == 1
                && container(s, "main")["state"]["running"].is_object()
        })
        .await;
    let main = container(&s, "main");
    assert_eq!(main["image"], "busybox:1.37");
    assert_ne!(container_pid(&s, "main").unwrap(), main_pid);
    assert!(main["lastState"]["terminated"].is_object(), "{main}");
    assert_eq!(
        container_pid(&s, "side").unwrap(),
        side_pid,
        "the other container keeps running"
    );
    assert_eq!(container(&s, "side")["restartCount"], 0);
    assert_eq!(phase(&s), "Running");
    srv.stop().await;
}

#[tokio::test]
async fn labels_and_resources_change_without_a_restart() {
    let srv = Server::start(&[]).await;
    let mut p = pod("meta", &["sleep", "300"], "Always");
    p["spec"]["volumes"] = json!([{"name": "info", "downwardAPI": {"items": [
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}]);
    p["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "info", "mountPath": "/etc/podinfo"}]);
    p["spec"]["containers"][0]["resources"] = json!({"limits": {"memory": "64Mi"}});
    assert_eq!(srv.create(&p).await.status(), 201);
    let s = srv
        .wait_status("meta", "Running", |s| phase(s) == "Running")
        .await;
    let pid = container_pid(&s, "main").unwrap();
    let labels_file = srv
        .state_dir
        .path()
        .join("pods/default_meta_uid-meta/volumes/info/labels");
    assert_eq!(
        std::fs::read_to_string(&labels_file).unwrap(),
        "app=\"meta\"\n"
    );

    let mut changed = p.clone();
    changed["metadata"]["labels"] = json!({"app": "meta", "tier": "batch"});
    changed["spec"]["containers"][0]["resources"] = json!({"limits": {"memory": "128Mi"}});
    assert_eq!(srv.update(&changed).await.0, 200);
    assert_eq!(
        get_pod(&srv, "meta").await["metadata"]["labels"]["tier"],
        "batch"
    );
    wait_until(
        "downwardAPI file rewritten",
        Duration::from_secs(10),
        || async {
            std::fs::read_to_string(&labels_file)
                .ok()
                .filter(|t| t == "app=\"meta\"\ntier=\"batch\"\n")
        },
    )
    .await;
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let limit = cgroup.lines().find_map(|l| {
        let path = l.split(':').nth(2)?;
        let controllers = l.split(':').nth(1)?;
        let file = if controllers.is_empty() {
            format!("/sys/fs/cgroup{path}/memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
        } else {
            return None;
        };
        std::fs::read_to_string(file).ok()
    });
    assert_eq!(
        limit.as_deref().map(str::trim),
        Some("134217728"),
        "resized in place"
    );
    let s = srv.status("meta").await.unwrap();
    assert_eq!(
        container_pid(&s, "main").unwrap(),
        pid,
        "still the same process"
    );
    assert_eq!(container(&s, "main")["restartCount"], 0);
    srv.stop().await;
}

#[tokio::test]
async fn a_deadline_set_by_an_update_applies_at_once() {
    let srv = Server::start(&[]).await;
    let p = pod("late", &["sleep", "300"], "Always");
    assert_eq!(srv.create(&p).await.status(), 201);
    srv.wait_status("late", "Running", |s| phase(s) == "Running")
        .await;
    let mut changed = p.clone();
    changed["spec"]["activeDeadlineSeconds"] = json!(1);
    assert_eq!(srv.update(&changed).await.0, 200);
    let s = srv
        .wait_status("late", "Failed", |s| phase(s) == "Failed")
        .await;
    assert_eq!(s["reason"], "DeadlineExceeded");
    srv.stop().await;
}

#[tokio::test]
async fn adding_a_container_is_refused_and_changes_nothing() {
    let srv = Server::start(&[]).await;
    let p = pod("fixed", &["sleep", "300"], "Always");
    assert_eq!(srv.create(&p).await.status(), 201);
    let s = srv
        .wait_status("fixed", "Running", |s| phase(s) == "Running")
        .await;
    let pid = container_pid(&s, "main").unwrap();
    let before = get_pod(&srv, "fixed").await;
    let mut changed = two_containers("fixed", "Always");
    changed["metadata"]["labels"] = json!({"changed": "yes"});
    let (status, body) = srv.update(&changed).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("may not add, remove or rename containers"),
        "{body}"
    );
    let after = get_pod(&srv, "fixed").await;
    assert_eq!(after["metadata"], before["metadata"]);
    assert_eq!(after["spec"], before["spec"]);
    let s = srv.status("fixed").await.unwrap();
    assert_eq!(container_pid(&s, "main").unwrap(), pid);
    // A changed command is recorded but, as Kubernetes never sends one, does not restart.
    let mut cmd = p.clone();
    cmd["spec"]["containers"][0]["command"] = json!(sh("exit 3"));
    assert_eq!(srv.update(&cmd).await.0, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = srv.status("fixed").await.unwrap();
    assert_eq!(container_pid(&s, "main").unwrap(), pid);
    srv.stop().await;
}
