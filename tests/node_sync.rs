//! Node mode's pod sync (`cluster::pods::run`) against a fake API server (plain HTTP on
//! 127.0.0.1) that serves the node's pods as a list and a watch stream and records every write:
//! pods bound to the node are started and their status patched as it changes, an update is
//! applied, a graceful delete stops the pod and then removes its object (grace 0, uid
//! precondition), and after a restart the runtime's pods are reconciled with the cluster's list
//! (one deleted while procnode was away is stopped; one changed is updated). Real processes;
//! no control plane needed.

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::Router;
use procnode::runtime::{PodKey, Runtime};
use serde_json::{json, Value};
use support::wait_until;

/// What the fake API server holds and saw.
#[derive(Default)]
struct Cluster {
    pods: BTreeMap<String, Value>,
    /// Every write: method, path and JSON body.
    writes: Vec<(Method, String, Value)>,
    /// Open watch streams.
    watchers: Vec<tokio::sync::mpsc::UnboundedSender<Result<Bytes, Infallible>>>,
    version: u64,
}

type Shared = Arc<Mutex<Cluster>>;

impl Cluster {
    /// Stores `pod` (a new resourceVersion) and tells the watchers.
    fn put(&mut self, mut pod: Value) {
        self.version += 1;
        pod["metadata"]["resourceVersion"] = json!(self.version.to_string());
        let name = pod["metadata"]["name"].as_str().unwrap().to_string();
        let kind = if self.pods.contains_key(&name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.pods.insert(name, pod.clone());
        self.tell(kind, pod);
    }

    fn remove(&mut self, name: &str) -> Option<Value> {
        let mut pod = self.pods.remove(name)?;
        self.version += 1;
        pod["metadata"]["resourceVersion"] = json!(self.version.to_string());
        self.tell("DELETED", pod.clone());
        Some(pod)
    }

    fn tell(&mut self, kind: &str, object: Value) {
        let line = format!("{}\n", json!({"type": kind, "object": object}));
        self.watchers
            .retain(|w| w.send(Ok(Bytes::from(line.clone()))).is_ok());
    }

    /// The status patches written for pod `name`, oldest first.
    fn status_patches(&self, name: &str) -> Vec<Value> {
        let path = format!("/api/v1/namespaces/default/pods/{name}/status");
        self.writes
            .iter()
            .filter(|(m, p, _)| *m == Method::PATCH && *p == path)
            .map(|(_, _, body)| body["status"].clone())
            .collect()
    }

    fn deletes(&self, name: &str) -> Vec<Value> {
        let path = format!("/api/v1/namespaces/default/pods/{name}");
        self.writes
            .iter()
            .filter(|(m, p, _)| *m == Method::DELETE && *p == path)
            .map(|(_, _, body)| body.clone())
            .collect()
    }
}

async fn list_or_watch(
    State(c): State<Shared>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    assert_eq!(
        q.get("fieldSelector").map(String::as_str),
        Some("spec.nodeName=node-1"),
        "the watch asks for this node's pods only"
    );
    let mut c = c.lock().unwrap();
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        c.watchers.push(tx);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        return Response::new(Body::from_stream(stream));
    }
    let items: Vec<Value> = c.pods.values().cloned().collect();
    axum::Json(json!({
        "kind": "PodList", "apiVersion": "v1",
        "metadata": {"resourceVersion": c.version.to_string()},
        "items": items,
    }))
    .into_response()
}

async fn write(
    State(c): State<Shared>,
    method: Method,
    uri: Uri,
    Path(params): Path<BTreeMap<String, String>>,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut c = c.lock().unwrap();
    c.writes
        .push((method.clone(), uri.path().to_string(), body.clone()));
    let name = params.get("name").cloned().unwrap_or_default();
    if uri.path().contains("/events") {
        let mut event = body;
        event["metadata"]["name"] = json!(format!("event-{}", c.writes.len()));
        return (StatusCode::CREATED, axum::Json(event)).into_response();
    }
    let Some(mut pod) = c.pods.get(&name).cloned() else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                              "reason": "NotFound", "code": 404, "message": "not found"}),
            ),
        )
            .into_response();
    };
    if method == Method::DELETE {
        let pod = c.remove(&name).unwrap();
        return axum::Json(pod).into_response();
    }
    pod["status"] = body["status"].clone();
    c.pods.insert(name, pod.clone());
    axum::Json(pod).into_response()
}

async fn fake_api_server(cluster: Shared) -> String {
    let app = Router::new()
        .route("/api/v1/pods", get(list_or_watch))
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}",
            axum::routing::delete(write),
        )
        .route("/api/v1/namespaces/{ns}/pods/{name}/status", patch(write))
        .route("/api/v1/namespaces/{ns}/events", post(write))
        .route("/api/v1/namespaces/{ns}/events/{name}", patch(write))
        .with_state(cluster);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn bound_pod(name: &str, uid: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": uid},
        "spec": {
            "nodeName": "node-1",
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "300"]}],
        },
        "status": {"phase": "Pending"},
    })
}

/// A runtime like node mode's (no cgroups, supervisors from the built binary).
fn runtime(state_dir: &std::path::Path) -> Arc<Runtime> {
    let config = procnode::Config::parse_from_env_free([
        "procnode",
        "--state-dir",
        state_dir.to_str().unwrap(),
        "--cgroups",
        "off",
        "--shim-path",
        env!("CARGO_BIN_EXE_procnode"),
        "--default-uid",
        "0",
        "--allowed-uids",
        "any",
        "--allowed-gids",
        "any",
    ]);
    procnode::runtime::StateLayout::new(state_dir)
        .prepare()
        .unwrap();
    procnode::build(&config).0
}

fn key(name: &str) -> PodKey {
    PodKey {
        namespace: "default".into(),
        name: name.into(),
    }
}

fn phase_of(runtime: &Runtime, name: &str) -> Option<String> {
    let entry = runtime.get(&key(name)).ok()?;
    Some(entry.phase().as_str().to_string())
}

async fn start_sync(api_url: &str, runtime: Arc<Runtime>) -> tokio::task::JoinHandle<()> {
    let client = kube::Client::try_from(kube::Config::new(api_url.parse().unwrap())).unwrap();
    tokio::spawn(procnode::cluster::pods::run(
        client,
        runtime,
        "node-1".to_string(),
    ))
}

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_pods_run_their_updates_apply_and_a_delete_stops_then_removes_them() {
    if !support::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    procnode::runtime::process::become_subreaper().expect("subreaper");
    let dir = support::StateDir::new();
    let cluster: Shared = Default::default();
    cluster.lock().unwrap().put(bound_pod("web", "uid-web"));
    let url = fake_api_server(cluster.clone()).await;
    let runtime = runtime(dir.path());
    let sync = start_sync(&url, runtime.clone()).await;

    // Listed: started, and its status written back until the cluster sees it Running.
    wait_until("the pod Running in the runtime", LIMIT, || async {
        (phase_of(&runtime, "web").as_deref() == Some("Running")).then_some(())
    })
    .await;
    wait_until("a Running status patch", LIMIT, || async {
        let c = cluster.lock().unwrap();
        c.status_patches("web")
            .iter()
            .any(|s| s["phase"] == "Running" && s["containerStatuses"][0]["ready"] == true)
            .then_some(())
    })
    .await;

    // A pod added by the watch (not the list) starts too.
    cluster.lock().unwrap().put(bound_pod("late", "uid-late"));
    wait_until("the watched pod Running", LIMIT, || async {
        (phase_of(&runtime, "late").as_deref() == Some("Running")).then_some(())
    })
    .await;

    // An update: a deadline added to the running pod is applied (it fails the pod).
    {
        let mut c = cluster.lock().unwrap();
        let mut pod = c.pods["web"].clone();
        pod["spec"]["activeDeadlineSeconds"] = json!(1);
        c.put(pod);
    }
    wait_until("DeadlineExceeded patched", LIMIT, || async {
        let c = cluster.lock().unwrap();
        c.status_patches("web")
            .iter()
            .any(|s| s["phase"] == "Failed" && s["reason"] == "DeadlineExceeded")
            .then_some(())
    })
    .await;

    // A graceful delete: stopped, then the object removed with grace 0 and the uid as
    // precondition.
    {
        let mut c = cluster.lock().unwrap();
        let mut pod = c.pods["late"].clone();
        pod["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        pod["metadata"]["deletionGracePeriodSeconds"] = json!(2);
        c.put(pod);
    }
    let delete = wait_until("the object removed", LIMIT, || async {
        cluster.lock().unwrap().deletes("late").into_iter().next()
    })
    .await;
    assert_eq!(delete["gracePeriodSeconds"], 0, "{delete}");
    assert_eq!(delete["preconditions"]["uid"], "uid-late", "{delete}");
    assert!(
        runtime.get(&key("late")).is_err(),
        "the pod was stopped and forgotten before its object was removed"
    );

    sync.abort();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_runtime_is_reconciled_with_the_cluster() {
    if !support::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    procnode::runtime::process::become_subreaper().expect("subreaper");
    let dir = support::StateDir::new();
    // What the runtime runs when procnode comes back: two pods the cluster had then.
    let runtime = runtime(dir.path());
    for (name, uid) in [("kept", "uid-kept"), ("gone", "uid-gone")] {
        let new = procnode::runtime::NewPod::from_json(bound_pod(name, uid).to_string().as_bytes())
            .unwrap();
        runtime.create(new).await.unwrap();
    }
    wait_until("both running", LIMIT, || async {
        ["kept", "gone"]
            .iter()
            .all(|n| phase_of(&runtime, n).as_deref() == Some("Running"))
            .then_some(())
    })
    .await;
    let kept_pid = runtime
        .get(&key("kept"))
        .unwrap()
        .status()
        .container_statuses
        .unwrap()[0]
        .container_id
        .clone();

    // Meanwhile in the cluster: "gone" was deleted, "kept" got a label, and a Job's pod that
    // finished long ago is still listed.
    let cluster: Shared = Default::default();
    {
        let mut c = cluster.lock().unwrap();
        let mut kept = bound_pod("kept", "uid-kept");
        kept["metadata"]["labels"] = json!({"tier": "new"});
        c.put(kept);
        let mut done = bound_pod("done", "uid-done");
        done["status"] = json!({"phase": "Succeeded"});
        c.put(done);
    }
    let url = fake_api_server(cluster.clone()).await;
    let sync = start_sync(&url, runtime.clone()).await;

    wait_until("the deleted pod stopped", LIMIT, || async {
        runtime.get(&key("gone")).is_err().then_some(())
    })
    .await;
    wait_until("the label applied", LIMIT, || async {
        let entry = runtime.get(&key("kept")).ok()?;
        let labels = entry.pod().metadata.labels.clone()?;
        (labels.get("tier").map(String::as_str) == Some("new")).then_some(())
    })
    .await;
    let entry = runtime.get(&key("kept")).unwrap();
    assert_eq!(
        entry.status().container_statuses.unwrap()[0].container_id,
        kept_pid,
        "a label change does not restart the container"
    );
    assert!(
        runtime.get(&key("done")).is_err(),
        "a finished pod unknown here is not run again"
    );
    assert!(cluster.lock().unwrap().deletes("gone").is_empty());

    sync.abort();
    runtime.shutdown().await;
}
