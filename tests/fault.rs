//! Fault tests under load and on a failing disk: 1000 concurrent API requests during 500 pod
//! creations; a state directory that fills up or turns read-only.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{phase, pod, wait_until, Server, SmallDisk};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_during_five_hundred_creations_lose_nothing() {
    let srv = std::sync::Arc::new(Server::start(&["--max-pods", "600"]).await);
    let pods: Vec<Value> = (0..500)
        .map(|i| pod(&format!("load-{i}"), &["sleep", "300"], "Always"))
        .collect();
    let mut creators = Vec::new();
    for k in 0..4 {
        let srv = srv.clone();
        let mine: Vec<Value> = pods.iter().skip(k).step_by(4).cloned().collect();
        creators.push(tokio::spawn(async move {
            for p in &mine {
                let status = srv.create(p).await.status().as_u16();
                assert_eq!(status, 201, "create {}", p["metadata"]["name"]);
            }
        }));
    }
    let mut readers = Vec::new();
    for k in 0..4 {
        let srv = srv.clone();
        readers.push(tokio::spawn(async move {
            for i in 0..250 {
                let path = match (i + k) % 4 {
                    0 => "/getPods".to_string(),
                    1 => format!("/getPodStatus?namespace=default&name=load-{}", i * 2),
                    2 => "/capacity".to_string(),
                    _ => "/nodeConditions".to_string(),
                };
                let r = srv.http.get(srv.url(&path)).send().await.expect("request");
                let code = r.status().as_u16();
                assert!(
                    code == 200 || (code == 404 && path.contains("getPodStatus")),
                    "{path}: {code}"
                );
            }
        }));
    }
    for t in creators.into_iter().chain(readers) {
        t.await.unwrap();
    }
    let listed: Vec<Value> = srv
        .http
        .get(srv.url("/getPods"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 500, "no pod lost");
    for i in (0..500).step_by(25) {
        srv.wait_status(&format!("load-{i}"), "Running", |s| phase(s) == "Running")
            .await;
    }
    let srv = std::sync::Arc::try_unwrap(srv).ok().expect("sole owner");
    // Shutdown stops all 500; `stop` checks no process of any group seen is left.
    srv.stop().await;
}

#[tokio::test]
async fn a_full_or_read_only_state_dir_is_a_clear_error_and_corrupts_nothing() {
    let Some(disk) = SmallDisk::new("256k") else {
        eprintln!("skipped: this machine does not allow mounting a tmpfs");
        return;
    };
    let state = disk.dir.path().to_str().unwrap().to_string();
    let srv = Server::start(&["--state-dir", &state, "--max-pods", "1000"]).await;
    let mut created = Vec::new();
    let mut refused = None;
    for i in 0..400 {
        let mut p = pod(&format!("fill-{i}"), &["true"], "Never");
        // No volume to set up on the full disk: these pods must run to completion.
        p["spec"]["volumes"] = json!([]);
        p["spec"]["containers"][0]["volumeMounts"] = json!([]);
        let r = srv.create(&p).await;
        match r.status().as_u16() {
            201 => created.push(p),
            507 => {
                refused = Some((p, r.json::<Value>().await.unwrap()));
                break;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let (p, body) = refused.expect("a 256 KiB state dir fills up");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("cannot record pod"),
        "{body}"
    );
    let name = p["metadata"]["name"].as_str().unwrap();
    assert!(
        srv.status(name).await.is_none(),
        "a refused pod is not stored"
    );
    let listed: Vec<Value> = srv
        .http
        .get(srv.url("/getPods"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), created.len());
    // No half-written record is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(disk.dir.path().join("records"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Free some room, then make the file system read-only: again a clear refusal.
    for p in created.drain(..20) {
        assert_eq!(srv.delete(&p).await.status(), 200);
    }
    disk.remount_read_only();
    let p = pod("readonly", &["true"], "Never");
    let r = srv.create(&p).await;
    assert_eq!(r.status().as_u16(), 507);
    assert!(srv.status("readonly").await.is_none());
    for p in &created {
        let name = p["metadata"]["name"].as_str().unwrap();
        wait_until(
            "existing pods keep their state",
            Duration::from_secs(10),
            || async { srv.status(name).await.filter(|s| phase(s) == "Succeeded") },
        )
        .await;
    }
    srv.stop().await;
}

#[tokio::test]
async fn a_fork_heavy_pod_is_stopped_completely() {
    let srv = Server::start(&[]).await;
    // 300 background processes, some of them forking again.
    let p = pod(
        "forky",
        &support::sh("i=0; while [ $i -lt 150 ]; do sleep 300 & sh -c 'sleep 300 & wait' & i=$((i+1)); done; echo spawned; wait"),
        "Always",
    );
    srv.create(&p).await;
    let s = srv
        .wait_status("forky", "Running", |s| phase(s) == "Running")
        .await;
    let pgid = support::container_pid(&s, "main").unwrap();
    wait_until("all children started", Duration::from_secs(30), || async {
        (support::group_members(pgid).0.len() > 400).then_some(())
    })
    .await;
    assert_eq!(srv.delete(&p).await.status(), 200);
    let (live, zombies) = support::group_members(pgid);
    assert!(
        live.is_empty() && zombies.is_empty(),
        "{} left, {} zombies",
        live.len(),
        zombies.len()
    );
    srv.stop().await;
}

/// The pods' directories on a file system of their own (an operator's dedicated disk mounted at
/// `STATE_DIR/pods`): pods and their volumes work as on one disk.
#[tokio::test]
async fn pods_on_a_file_system_of_their_own_run() {
    use nix::mount::{mount, MsFlags};
    let state = tempfile::tempdir().unwrap();
    let pods = state.path().join("pods");
    std::fs::create_dir(&pods).unwrap();
    if mount(
        Some("tmpfs"),
        &pods,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=8m,mode=0711"),
    )
    .is_err()
    {
        eprintln!("skipped: this machine does not allow mounting a tmpfs");
        return;
    }
    let srv = Server::start(&["--state-dir", state.path().to_str().unwrap()]).await;
    let mut p = pod(
        "own-disk",
        &[
            "sh",
            "-c",
            "echo hi > $PROCNODE_VOLUME_SCRATCH/f && cat $PROCNODE_VOLUME_SCRATCH/f",
        ],
        "Never",
    );
    p["spec"]["volumes"] = json!([{"name": "scratch", "emptyDir": {}}]);
    p["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "scratch", "mountPath": "/procnode-no-such-dir"}]);
    assert_eq!(srv.create(&p).await.status(), 201);
    let s = srv
        .wait_status("own-disk", "Succeeded", |s| {
            phase(s) == "Succeeded" || phase(s) == "Failed"
        })
        .await;
    assert_eq!(phase(&s), "Succeeded", "{s}");
    assert_eq!(srv.logs("own-disk", "main", "").await.1, "hi\n");
    assert_eq!(srv.delete(&p).await.status(), 200);
    srv.stop().await;
    let _ = nix::mount::umount2(&pods, nix::mount::MntFlags::MNT_DETACH);
}
