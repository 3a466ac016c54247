//! Volumes with real processes: an emptyDir shared by two containers through a bind mount in
//! a private mount namespace (invisible to the host), links and env in the pod directory, a
//! hostPath under an allowed prefix (and read-only), hostPath and volume types that are refused
//! with a pod-level reason, downwardAPI files, the service-account volume every API-server pod
//! carries, and emptyDir size limits (eviction on disk, ENOSPC on tmpfs).

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{container, phase, pod, sh, wait_until, Server};

/// A pod without the fixture's service-account volume, with `volumes` and, for each
/// container, its script and mounts.
fn pod_with(name: &str, volumes: Value, containers: &[(&str, &str, Value)]) -> Value {
    let mut p = pod(name, &["true"], "Never");
    let template = p["spec"]["containers"][0].clone();
    p["spec"]["volumes"] = volumes;
    p["spec"]["containers"] = containers
        .iter()
        .map(|(cname, script, mounts)| {
            let mut c = template.clone();
            c["name"] = json!(cname);
            c["command"] = json!(sh(script));
            c["volumeMounts"] = mounts.clone();
            c
        })
        .collect();
    p
}

fn pod_dir(srv: &Server, name: &str) -> std::path::PathBuf {
    srv.state_dir
        .path()
        .join("pods")
        .join(format!("default_{name}_uid-{name}"))
}

#[tokio::test]
async fn an_empty_dir_is_shared_by_the_pods_containers_and_private_to_them() {
    let srv = Server::start(&[]).await;
    // A mount point that exists on the host: the containers see the volume there, the host
    // keeps seeing its own (empty) directory.
    let host = tempfile::tempdir().unwrap();
    let mnt = host.path().join("shared");
    std::fs::create_dir(&mnt).unwrap();
    let m = mnt.display().to_string();
    let p = pod_with(
        "share",
        json!([{"name": "scratch", "emptyDir": {}}]),
        &[
            (
                "writer",
                &format!(
                    "echo hello > {m}/.note; mv {m}/.note {m}/note; echo $PROCNODE_VOLUME_SCRATCH; ls -l {}",
                    m.trim_start_matches('/')
                ),
                json!([{"name": "scratch", "mountPath": m}]),
            ),
            (
                "reader",
                &format!("until [ -e {m}/note ]; do sleep 0.1; done; cat {m}/note"),
                json!([{"name": "scratch", "mountPath": m}]),
            ),
        ],
    );
    assert_eq!(srv.create(&p).await.status(), 201);
    let s = srv
        .wait_status("share", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    assert_eq!(
        container(&s, "reader")["state"]["terminated"]["exitCode"],
        0
    );
    let (_, read) = srv.logs("share", "reader", "").await;
    assert_eq!(read, "hello\n");
    let volume = pod_dir(&srv, "share").join("volumes/scratch");
    assert_eq!(
        std::fs::read_to_string(volume.join("note")).unwrap(),
        "hello\n"
    );
    let (_, written) = srv.logs("share", "writer", "").await;
    assert!(
        written.starts_with(&format!("{}\n", volume.display())),
        "{written}"
    );
    // The link in the pod directory (the writer's working directory).
    assert!(
        written.contains(&format!("-> {}", volume.display())),
        "{written}"
    );
    assert_eq!(
        std::fs::read_dir(&mnt).unwrap().count(),
        0,
        "the bind mount stayed in the containers' mount namespace"
    );
    // Deleting the pod removes the volume.
    assert_eq!(srv.delete(&p).await.status(), 200);
    assert!(!volume.exists());
    srv.stop().await;
}

#[tokio::test]
async fn host_paths_are_allowed_only_under_the_configured_prefixes() {
    let allowed = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let prefix = allowed.path().display().to_string();
    let srv = Server::start(&["--host-path-prefix", &prefix]).await;

    let data = allowed.path().join("data");
    let d = data.display().to_string();
    let p = pod_with(
        "hostpath",
        json!([{"name": "data", "hostPath": {"path": d, "type": "DirectoryOrCreate"}}]),
        &[
            ("rw", &format!("echo from-pod > {d}/out"), json!([{"name": "data", "mountPath": d}])),
            (
                "ro",
                &format!("until [ -e {d}/out ]; do sleep 0.1; done; echo x > {d}/ro 2>&1 || echo refused"),
                json!([{"name": "data", "mountPath": d, "readOnly": true}]),
            ),
        ],
    );
    assert_eq!(srv.create(&p).await.status(), 201);
    srv.wait_status("hostpath", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    assert_eq!(
        std::fs::read_to_string(data.join("out")).unwrap(),
        "from-pod\n"
    );
    let (_, ro) = srv.logs("hostpath", "ro", "").await;
    assert!(
        ro.contains("Read-only file system") && ro.contains("refused"),
        "{ro}"
    );
    assert!(!data.join("ro").exists());

    // Outside the prefix (directly, or through a link): Failed with a reason, nothing runs.
    std::os::unix::fs::symlink(outside.path(), allowed.path().join("link")).unwrap();
    for (name, path) in [
        ("outside", outside.path().display().to_string()),
        (
            "via-link",
            allowed.path().join("link").display().to_string(),
        ),
    ] {
        let marker = outside.path().join(format!("{name}-ran"));
        let p = pod_with(
            name,
            json!([{"name": "data", "hostPath": {"path": path}}]),
            &[(
                "main",
                &format!("touch {}", marker.display()),
                json!([{"name": "data", "mountPath": "/data"}]),
            )],
        );
        assert_eq!(srv.create(&p).await.status(), 201);
        let s = srv
            .wait_status(name, "Failed", |s| phase(s) == "Failed")
            .await;
        assert_eq!(s["reason"], "HostPathNotAllowed", "{s}");
        assert!(s["message"].as_str().unwrap().contains(&prefix), "{s}");
        assert!(!marker.exists(), "no container of a refused pod runs");
    }
    srv.stop().await;
}

#[tokio::test]
async fn volume_types_procnode_cannot_provide_fail_the_pod_with_a_reason() {
    let srv = Server::start(&[]).await;
    let cases = [
        (
            "pvc",
            json!({"name": "v", "persistentVolumeClaim": {"claimName": "c"}}),
            "persistentVolumeClaim",
        ),
        (
            "secret",
            json!({"name": "v", "secret": {"secretName": "db"}}),
            "web mode",
        ),
        (
            "configmap",
            json!({"name": "v", "configMap": {"name": "cfg"}}),
            "web mode",
        ),
    ];
    for (name, volume, says) in cases {
        let p = pod_with(
            name,
            json!([volume]),
            &[(
                "main",
                "echo ran",
                json!([{"name": "v", "mountPath": "/v"}]),
            )],
        );
        assert_eq!(srv.create(&p).await.status(), 201);
        let s = srv
            .wait_status(name, "Failed", |s| phase(s) == "Failed")
            .await;
        assert_eq!(s["reason"], "UnsupportedVolume", "{s}");
        // Its container never ran: reported with the pod's reason (kubectl's STATUS shows
        // UnsupportedVolume, not ContainerCreating).
        let state = &support::container(&s, "main")["state"];
        assert_eq!(state["terminated"]["reason"], "UnsupportedVolume", "{s}");
        assert!(state.get("waiting").is_none(), "{s}");
        let message = s["message"].as_str().unwrap();
        assert!(
            message.contains(says) && message.contains("\"v\""),
            "{message}"
        );
        let (_, logs) = srv.logs(name, "main", "").await;
        assert_eq!(logs, "");
    }
    // optional: an empty directory, and the pod runs.
    let p = pod_with(
        "optional",
        json!([{"name": "v", "secret": {"secretName": "db", "optional": true}}]),
        &[(
            "main",
            "ls -A $PROCNODE_VOLUME_V | wc -l",
            json!([{"name": "v", "mountPath": "/v"}]),
        )],
    );
    assert_eq!(srv.create(&p).await.status(), 201);
    srv.wait_status("optional", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    let (_, logs) = srv.logs("optional", "main", "").await;
    assert_eq!(logs.trim(), "0");
    srv.stop().await;
}

#[tokio::test]
async fn downward_api_and_service_account_volumes_hold_the_pods_facts() {
    let srv = Server::start(&[]).await;
    // The fixture pod carries the service-account secret volume an API server adds.
    let mut p = pod("facts", &["true"], "Never");
    let sa = p["spec"]["volumes"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    p["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "info", "downwardAPI": {"items": [
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "meta/labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "mem", "resourceFieldRef": {"containerName": "main", "resource": "limits.memory", "divisor": "1Mi"}}
        ]}}));
    p["spec"]["containers"][0]["resources"] = json!({"limits": {"memory": "64Mi"}});
    p["spec"]["containers"][0]["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "info", "mountPath": "/etc/podinfo"}));
    p["spec"]["containers"][0]["command"] = json!(sh(
        "cat etc/podinfo/name etc/podinfo/meta/labels etc/podinfo/mem; cat var/run/secrets/kubernetes.io/serviceaccount/namespace; echo"
    ));
    assert_eq!(srv.create(&p).await.status(), 201);
    let s = srv
        .wait_status("facts", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    assert_eq!(
        container(&s, "main")["state"]["terminated"]["exitCode"],
        0,
        "{s}"
    );
    let (_, logs) = srv.logs("facts", "main", "").await;
    assert_eq!(logs, "factsapp=\"facts\"\n64default\n");
    assert!(pod_dir(&srv, "facts")
        .join("volumes")
        .join(&sa)
        .join("namespace")
        .exists());
    srv.stop().await;
}

#[tokio::test]
async fn an_empty_dir_over_its_size_limit_evicts_the_pod() {
    let srv = Server::start(&["--volume-check-interval", "100ms"]).await;
    let p = pod_with(
        "grower",
        json!([{"name": "cache", "emptyDir": {"sizeLimit": "1Mi"}}]),
        &[(
            "main",
            "head -c 3000000 /dev/zero > $PROCNODE_VOLUME_CACHE/blob; exec sleep 300",
            json!([{"name": "cache", "mountPath": "/cache"}]),
        )],
    );
    assert_eq!(srv.create(&p).await.status(), 201);
    let s = srv
        .wait_status("grower", "Failed and stopped", |s| {
            phase(s) == "Failed" && container(s, "main")["state"]["terminated"].is_object()
        })
        .await;
    assert_eq!(s["reason"], "Evicted");
    assert_eq!(
        s["message"],
        "Usage of EmptyDir volume \"cache\" exceeds the limit \"1Mi\". "
    );
    let t = &container(&s, "main")["state"]["terminated"];
    assert_eq!(t["exitCode"], 137, "stopped at once: {t}");
    srv.stop().await;
}

#[tokio::test]
async fn a_memory_backed_empty_dir_is_a_tmpfs_of_its_size_limit() {
    let srv = Server::start(&[]).await;
    let p = pod_with(
        "ram",
        json!([{"name": "ram", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}]),
        &[(
            "main",
            "head -c 3000000 /dev/zero 2>&1 > $PROCNODE_VOLUME_RAM/blob; echo wrote $(wc -c < $PROCNODE_VOLUME_RAM/blob)",
            json!([{"name": "ram", "mountPath": "/ram"}]),
        )],
    );
    assert_eq!(srv.create(&p).await.status(), 201);
    srv.wait_status("ram", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    let (_, logs) = srv.logs("ram", "main", "").await;
    assert!(logs.contains("No space left on device"), "{logs}");
    assert!(logs.contains("wrote 1048576"), "{logs}");
    let volume = pod_dir(&srv, "ram").join("volumes/ram");
    assert_eq!(srv.delete(&p).await.status(), 200);
    assert!(!volume.exists(), "unmounted and removed with the pod");
    wait_until("nothing mounted there", Duration::from_secs(5), || async {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        (!mounts.contains(&volume.display().to_string())).then_some(())
    })
    .await;
    srv.stop().await;
}
