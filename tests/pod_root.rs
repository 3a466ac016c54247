//! `--pod-root overlay`: each container run gets a root of its own (the host's file system
//! below a writable layer of the run's own), so manifests written for container runtimes run
//! unchanged, as root with real processes: a volume at a mountPath the host does not have, a
//! mountPath under an existing host directory, writes outside volumes kept from the host and
//! gone with the run, readOnlyRootFilesystem, and exec probes that see the container's root.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::{container, phase, sh, wait_until, Server};

const LIMIT: Duration = Duration::from_secs(30);

async fn overlay_server() -> Option<Server> {
    if !support::is_root() {
        eprintln!("skipped: needs root");
        return None;
    }
    Some(Server::start(&["--pod-root", "overlay"]).await)
}

fn pod_with(name: &str, spec: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")}, "spec": spec})
}

/// The pod's status once it has ended.
async fn finished(srv: &Server, name: &str) -> Value {
    wait_until("the pod done", LIMIT, || async {
        srv.status(name)
            .await
            .filter(|s| matches!(phase(s), "Succeeded" | "Failed"))
    })
    .await
}

async fn logs_of(srv: &Server, pod: &str, container: &str) -> String {
    srv.logs(pod, container, "").await.1
}

#[tokio::test]
async fn an_init_container_writes_a_volume_at_a_path_the_host_does_not_have() {
    let Some(srv) = overlay_server().await else {
        return;
    };
    // A path no host has, so that nothing can have made it but procnode.
    let shared = "/procnode-test-shared";
    assert!(!Path::new(shared).exists());
    let p = pod_with(
        "shared",
        json!({
            "restartPolicy": "Never",
            "volumes": [{"name": "data", "emptyDir": {}}],
            "initContainers": [{"name": "write", "command": sh(&format!("echo hello from init > {shared}/msg")),
                                "volumeMounts": [{"name": "data", "mountPath": shared}]}],
            // Read-only for the reader: its write is refused, the file reads.
            "containers": [{"name": "read",
                            "command": sh(&format!("cat {shared}/msg; if (echo x > {shared}/other) 2>/dev/null; then echo writable; fi")),
                            "volumeMounts": [{"name": "data", "mountPath": shared, "readOnly": true}]}],
        }),
    );
    assert_eq!(srv.create(&p).await.status(), 201);
    let s = finished(&srv, "shared").await;
    assert_eq!(phase(&s), "Succeeded", "{s}");
    assert_eq!(logs_of(&srv, "shared", "read").await, "hello from init\n");
    assert!(!Path::new(shared).exists(), "the host has no {shared}");
    srv.delete(&p).await;
    srv.stop().await;
}

#[tokio::test]
async fn a_mount_under_a_host_directory_and_writes_elsewhere_stay_with_the_run() {
    let Some(srv) = overlay_server().await else {
        return;
    };
    let conf = "/etc/procnode-test-conf.d";
    assert!(!Path::new(conf).exists());
    let stray = "/var/tmp/procnode-test-stray";
    let before: Vec<_> = std::fs::read_dir("/etc")
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let p = pod_with(
        "conf",
        json!({
            "restartPolicy": "Always",
            "volumes": [{"name": "conf", "emptyDir": {}}],
            "containers": [{"name": "main",
                "command": sh(&format!(
                    "echo x > {conf}/app.conf; ls /etc/hostname {conf}; \
                     if [ -e {stray} ]; then echo stray-seen; fi; echo written > {stray}; sleep 300")),
                "volumeMounts": [{"name": "conf", "mountPath": conf}]}],
        }),
    );
    assert_eq!(srv.create(&p).await.status(), 201);
    wait_until("the first run's output", LIMIT, || async {
        let logs = logs_of(&srv, "conf", "main").await;
        logs.contains(&format!("{conf}:")).then_some(logs)
    })
    .await;
    let logs = logs_of(&srv, "conf", "main").await;
    assert!(
        logs.contains("/etc/hostname"),
        "the host's /etc below: {logs}"
    );
    assert!(
        logs.contains("app.conf"),
        "the volume at its mountPath: {logs}"
    );
    assert!(!Path::new(conf).exists(), "the host's /etc is unchanged");
    assert!(
        !Path::new(stray).exists(),
        "a write outside volumes stays with the run"
    );
    let after: Vec<_> = std::fs::read_dir("/etc")
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before.len(), after.len());
    // The next run starts from a fresh layer: the stray file of the first is gone.
    let s = srv.status("conf").await.unwrap();
    let pid = support::container_pid(&s, "main").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let s = srv
        .wait_status("conf", "restarted", |s| {
            container(s, "main")["restartCount"] == 1
                && container(s, "main")["state"]["running"].is_object()
        })
        .await;
    assert_eq!(phase(&s), "Running");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logs = logs_of(&srv, "conf", "main").await;
    assert!(!logs.contains("stray-seen"), "{logs}");
    srv.delete(&p).await;
    srv.stop().await;
}

#[tokio::test]
async fn a_read_only_root_refuses_writes_but_its_volumes_take_them() {
    let Some(srv) = overlay_server().await else {
        return;
    };
    let p = pod_with(
        "readonly",
        json!({
            "restartPolicy": "Never",
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "containers": [{"name": "main",
                "securityContext": {"readOnlyRootFilesystem": true},
                "command": sh("if (echo no > /var/tmp/procnode-test-ro) 2>/dev/null; then echo root-writable; else echo root-refused; fi; \
                               echo yes > /scratch/ok && cat /scratch/ok"),
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}],
        }),
    );
    assert_eq!(srv.create(&p).await.status(), 201);
    let s = finished(&srv, "readonly").await;
    assert_eq!(phase(&s), "Succeeded", "{s}");
    let logs = logs_of(&srv, "readonly", "main").await;
    assert_eq!(logs, "root-refused\nyes\n");
    assert!(!Path::new("/var/tmp/procnode-test-ro").exists());
    srv.delete(&p).await;
    srv.stop().await;
}

#[tokio::test]
async fn exec_probes_see_the_containers_own_root() {
    let Some(srv) = overlay_server().await else {
        return;
    };
    // The container makes a file in its own root; its readiness probe finds it there.
    let p = pod_with(
        "probed",
        json!({
            "containers": [{"name": "main",
                "command": sh("sleep 1; touch /procnode-test-ready; sleep 300"),
                "readinessProbe": {"exec": {"command": ["test", "-f", "/procnode-test-ready"]}, "periodSeconds": 1}}],
        }),
    );
    assert_eq!(srv.create(&p).await.status(), 201);
    srv.wait_status("probed", "ready", |s| container(s, "main")["ready"] == true)
        .await;
    assert!(!Path::new("/procnode-test-ready").exists());
    srv.delete(&p).await;
    srv.stop().await;
}

/// With the host's root (`--pod-root host`, the default), readOnlyRootFilesystem makes the
/// root read-only for the container alone (a private mount namespace): its volumes take writes.
#[tokio::test]
async fn on_the_hosts_root_read_only_is_the_containers_alone() {
    if !support::is_root() {
        return;
    }
    let srv = Server::start(&[]).await;
    let p = pod_with(
        "host-ro",
        json!({
            "restartPolicy": "Never",
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "containers": [{"name": "main",
                "securityContext": {"readOnlyRootFilesystem": true},
                "command": sh("if (echo no > /var/tmp/procnode-test-host-ro) 2>/dev/null; then echo root-writable; else echo root-refused; fi; \
                               echo yes > /var/tmp/procnode-test-scratch/ok && cat /var/tmp/procnode-test-scratch/ok"),
                "volumeMounts": [{"name": "scratch", "mountPath": "/var/tmp/procnode-test-scratch"}]}],
        }),
    );
    // The mount point exists on the host (host mode mounts only there); it is left as it was.
    std::fs::create_dir_all("/var/tmp/procnode-test-scratch").unwrap();
    assert_eq!(srv.create(&p).await.status(), 201);
    let s = finished(&srv, "host-ro").await;
    let logs = logs_of(&srv, "host-ro", "main").await;
    let _ = std::fs::remove_dir("/var/tmp/procnode-test-scratch");
    assert_eq!(phase(&s), "Succeeded", "{s} {logs}");
    assert_eq!(logs, "root-refused\nyes\n");
    assert!(!Path::new("/var/tmp/procnode-test-host-ro").exists());
    // The host's root is as writable as before.
    std::fs::write("/var/tmp/procnode-test-host-ro", "").unwrap();
    std::fs::remove_file("/var/tmp/procnode-test-host-ro").unwrap();
    srv.delete(&p).await;
    srv.stop().await;
}

/// With the host's root, a volume whose mountPath the host does not have is not mounted (the
/// host is not changed for it), and the pod's status says so instead of failing silently; the
/// container still reaches it through its working directory.
#[tokio::test]
async fn on_the_hosts_root_a_mount_without_a_mount_point_is_said() {
    if !support::is_root() {
        return;
    }
    let srv = Server::start(&[]).await;
    let missing = "/procnode-test-missing";
    let p = pod_with(
        "unmounted",
        json!({
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{"name": "main",
                "command": sh("echo via-link > procnode-test-missing/f && cat procnode-test-missing/f; sleep 300"),
                "volumeMounts": [{"name": "data", "mountPath": missing}]}],
        }),
    );
    assert_eq!(srv.create(&p).await.status(), 201);
    let s = srv
        .wait_status("unmounted", "running", |s| phase(s) == "Running")
        .await;
    let message = s["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(missing) && message.contains("--pod-root overlay"),
        "{s}"
    );
    wait_until("the output", LIMIT, || async {
        (logs_of(&srv, "unmounted", "main").await == "via-link\n").then_some(())
    })
    .await;
    assert!(!Path::new(missing).exists());
    srv.delete(&p).await;
    srv.stop().await;
}
