//! Races between calls on the same pod: whatever the interleaving, an acknowledged create is a
//! pod that exists (with its record on disk) until it is deleted.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{bare_pod, container_pid, phase, Server};

/// A pod whose delete takes about a second (it ignores SIGTERM; the grace period is 1 s).
fn slow_to_stop(name: &str) -> Value {
    let mut p = bare_pod(name, "trap '' TERM; while :; do sleep 0.1; done", "Always");
    p["spec"]["terminationGracePeriodSeconds"] = json!(1);
    p
}

fn record_exists(srv: &Server, p: &Value) -> bool {
    let name = format!(
        "default_{}_{}.pod.json",
        p["metadata"]["name"].as_str().unwrap(),
        p["metadata"]["uid"].as_str().unwrap()
    );
    srv.state_dir.path().join("records").join(name).exists()
}

/// A create of a pod whose delete is in flight waits for the delete and then creates the pod
/// anew: the create's answer is never followed by the pod vanishing.
#[tokio::test]
async fn a_create_during_the_delete_of_the_same_pod_waits_and_then_creates_it() {
    let srv = Server::start(&[]).await;
    for round in 0..3 {
        let p = slow_to_stop("phoenix");
        assert_eq!(srv.create(&p).await.status(), 201, "round {round}");
        let s = srv
            .wait_status("phoenix", "running", |s| phase(s) == "Running")
            .await;
        let first = container_pid(&s, "main").unwrap();
        let deleting = {
            let (http, url, body) = (srv.http.clone(), srv.url("/deletePod"), p.to_string());
            tokio::spawn(async move { http.delete(url).body(body).send().await.unwrap().status() })
        };
        // The delete is in flight: it cannot end before the grace period of 1 s.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let created = srv.create(&p).await.status();
        assert_eq!(deleting.await.unwrap(), 200);
        assert_eq!(created, 201, "created anew once the delete was done");
        let s = srv
            .wait_status("phoenix", "the new pod running", |s| {
                phase(s) == "Running" && container_pid(s, "main").is_some_and(|p| p != first)
            })
            .await;
        assert_eq!(phase(&s), "Running");
        assert!(record_exists(&srv, &p), "its record is on disk");
        // Deleted for the next round (and the end of the test).
        assert_eq!(srv.delete(&p).await.status(), 200);
        assert!(srv.status("phoenix").await.is_none());
        assert!(!record_exists(&srv, &p));
    }
    srv.stop().await;
}

/// Pods without a uid get one of their own: two pods of the same name, one without a uid and
/// one whose uid is a placeholder, are two pods, each with its own record.
#[tokio::test]
async fn a_pod_without_a_uid_gets_a_generated_one() {
    let srv = Server::start(&[]).await;
    let mut p = bare_pod("nameless", "exec sleep 300", "Always");
    p["metadata"].as_object_mut().unwrap().remove("uid");
    assert_eq!(srv.create(&p).await.status(), 201);
    let got = srv
        .get_json("/getPod?namespace=default&name=nameless")
        .await;
    let uid = got["metadata"]["uid"].as_str().unwrap().to_string();
    assert_eq!(uid.len(), 36, "a UUID: {uid}");
    assert_ne!(uid, "no-uid");
    // The same create again (still without a uid) is the same pod, and so is an update.
    assert_eq!(srv.create(&p).await.status(), 200);
    p["metadata"]["labels"]["changed"] = json!("yes");
    assert_eq!(srv.update(&p).await.0, 200);
    let got = srv
        .get_json("/getPod?namespace=default&name=nameless")
        .await;
    assert_eq!(got["metadata"]["uid"], uid.as_str(), "kept by the update");
    assert_eq!(got["metadata"]["labels"]["changed"], "yes");
    let mut with_uid = p.clone();
    with_uid["metadata"]["uid"] = json!(uid);
    assert!(record_exists(&srv, &with_uid));

    // A pod of the same name with a placeholder uid replaces it, with a record of its own.
    let mut other = bare_pod("nameless", "exec sleep 300", "Always");
    other["metadata"]["uid"] = json!("no-uid");
    assert_eq!(srv.create(&other).await.status(), 201);
    srv.wait_status("nameless", "the replacement running", |s| {
        phase(s) == "Running"
    })
    .await;
    assert!(record_exists(&srv, &other), "the new pod's record");
    assert!(!record_exists(&srv, &with_uid), "the old pod's is gone");
    assert_eq!(srv.delete(&other).await.status(), 200);
    srv.stop().await;
}
