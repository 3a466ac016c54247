//! Router tests: every endpoint and every contract rule, through `tower::ServiceExt::oneshot`
//! on the real router (the same one `main` serves).

mod support;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use support::pod;

struct App {
    router: Router,
    _state_dir: tempfile::TempDir,
}

fn app_with(args: &[&str]) -> App {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec![
        "procnode",
        "--state-dir",
        dir.path().to_str().unwrap(),
        "--shim-path",
        env!("CARGO_BIN_EXE_procnode"),
    ];
    all.extend_from_slice(args);
    let config = procnode::Config::parse_from_env_free(all);
    procnode::runtime::StateLayout::new(dir.path())
        .prepare()
        .unwrap();
    let (runtime, node) = procnode::build(&config);
    let router =
        procnode::api::router(procnode::api::AppState::new(runtime, node, &config).unwrap());
    App {
        router,
        _state_dir: dir,
    }
}

fn app() -> App {
    app_with(&[])
}

/// The router's runtime is not shut down when a test ends: whatever its pods left (their
/// supervisors outlive the runtime by design) is killed with the state directory, rather than
/// left to notice that the directory is gone.
impl Drop for App {
    fn drop(&mut self) {
        support::kill_pods_of(self._state_dir.path());
    }
}

impl App {
    /// Sends a request the way the Go broker does: `Content-Type: application/json` always.
    async fn call(&self, method: Method, uri: &str, body: Option<String>) -> (StatusCode, Vec<u8>) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("Content-Type", "application/json")
            .header("Accept-Encoding", "gzip")
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, bytes)
    }

    async fn json(&self, method: Method, uri: &str, body: Option<String>) -> (StatusCode, Value) {
        let (status, bytes) = self.call(method, uri, body).await;
        let v = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!("{uri}: not JSON ({e}): {}", String::from_utf8_lossy(&bytes))
        });
        (status, v)
    }

    async fn create(&self, pod: &Value) -> StatusCode {
        self.call(Method::POST, "/createPod", Some(pod.to_string()))
            .await
            .0
    }

    async fn delete(&self, pod: &Value) -> StatusCode {
        self.call(Method::DELETE, "/deletePod", Some(pod.to_string()))
            .await
            .0
    }
}

fn without_status(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("status");
    v
}

#[tokio::test]
async fn health_and_fixed_endpoints_answer() {
    let app = app();
    for path in ["/", "/healthz"] {
        assert_eq!(
            app.call(Method::GET, path, None).await.0,
            StatusCode::OK,
            "{path}"
        );
    }
    let (s, body) = app.call(Method::GET, "/operatingSystem", None).await;
    assert_eq!((s, body.as_slice()), (StatusCode::OK, &b"linux"[..]));
    let (s, v) = app.json(Method::GET, "/nodeDaemonEndpoints", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["kubeletEndpoint"]["Port"], 10250);
    let (s, v) = app.json(Method::GET, "/nowhere", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["error"].as_str().unwrap().contains("/nowhere"));
}

#[tokio::test]
async fn node_endpoints_report_the_live_host() {
    let app = app_with(&[
        "--max-pods",
        "42",
        "--node-name",
        "node-x",
        "--node-ip",
        "10.9.8.7",
    ]);
    let (s, cap) = app.json(Method::GET, "/capacity", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(cap["pods"], "42");
    let cores = std::thread::available_parallelism()
        .unwrap()
        .get()
        .to_string();
    assert_eq!(cap["cpu"], cores.as_str());
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    let reported: u64 = cap["memory"]
        .as_str()
        .unwrap()
        .trim_end_matches("Ki")
        .parse()
        .unwrap();
    assert!(
        reported.abs_diff(mem_kib) <= 1024,
        "memory {reported}Ki vs MemTotal {mem_kib}Ki"
    );
    assert!(cap["ephemeral-storage"].as_str().unwrap().ends_with("Ki"));

    let (s, conds) = app.json(Method::GET, "/nodeConditions", None).await;
    assert_eq!(s, StatusCode::OK);
    let types: Vec<&str> = conds
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "Ready",
            "MemoryPressure",
            "DiskPressure",
            "PIDPressure",
            "PodResourceLimits"
        ]
    );
    assert_eq!(conds[0]["status"], "True");
    assert_eq!(conds[0]["reason"], "KubeletReady");
    for c in conds.as_array().unwrap() {
        let t = c["lastTransitionTime"].as_str().unwrap();
        assert!(t.parse::<jiff::Timestamp>().is_ok(), "RFC 3339: {t}");
    }

    let (s, addrs) = app.json(Method::GET, "/nodeAddresses", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        addrs,
        json!([{"type": "InternalIP", "address": "10.9.8.7"}, {"type": "Hostname", "address": "node-x"}])
    );
}

#[tokio::test]
async fn unknown_pods_are_exactly_404_and_delete_of_unknown_is_2xx() {
    let app = app();
    for uri in [
        "/getPod?namespace=default&name=nope",
        "/getPodStatus?namespace=default&name=nope",
        "/getContainerLogs?namespace=default&podName=nope&containerName=c&tail=10",
    ] {
        let (s, v) = app.json(Method::GET, uri, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(s.canonical_reason(), Some("Not Found"));
        assert!(v["error"].as_str().unwrap().contains("not found"));
    }
    let p = pod("ghost", &["sleep", "30"], "Never");
    assert!(app.delete(&p).await.is_success());
    let (s, _) = app
        .call(Method::PUT, "/updatePod", Some(p.to_string()))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn get_pod_returns_the_spec_exactly_as_received_with_live_status() {
    let app = app();
    // What the Go broker sends: no apiVersion/kind, null creationTimestamp, int-or-string ports,
    // and fields procnode does not know.
    let mut p: Value = serde_json::from_str(include_str!("fixtures/pod-full.json")).unwrap();
    let obj = p.as_object_mut().unwrap();
    obj.remove("apiVersion");
    obj.remove("kind");
    p["metadata"]["name"] = json!("lossless");
    p["metadata"]["creationTimestamp"] = Value::Null;
    p["metadata"]["futureMetadata"] = json!({"x": [1, 2, {"y": null}]});
    p["spec"]["nodeName"] = json!("virtual-kubelet");
    p["spec"]["someFutureField"] = json!("kept");
    // Keep it from running anything long: one init container that fails fast, policy Never.
    p["spec"]["restartPolicy"] = json!("Never");
    p["spec"]["initContainers"] =
        json!([{"name": "init-one", "image": "busybox", "command": ["false"]}]);
    assert_eq!(app.create(&p).await, StatusCode::CREATED);

    let (s, got) = app
        .json(Method::GET, "/getPod?namespace=default&name=lossless", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        without_status(got.clone()),
        without_status(p.clone()),
        "spec round-trips losslessly"
    );
    assert!(got["status"]["phase"].is_string());
    assert_eq!(got["status"]["qosClass"], "Burstable");

    let (_, list) = app.json(Method::GET, "/getPods", None).await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(without_status(list[0].clone()), without_status(p.clone()));

    // Typed decode as the Go side would do it.
    let _: k8s_openapi::api::core::v1::Pod = serde_json::from_value(got).unwrap();
    assert!(app.delete(&p).await.is_success());
}

#[tokio::test]
async fn create_is_idempotent_for_the_same_uid() {
    let app = app();
    let p = pod("twice", &["sleep", "30"], "Always");
    assert_eq!(app.create(&p).await, StatusCode::CREATED);
    assert_eq!(app.create(&p).await, StatusCode::OK);
    let (_, list) = app.json(Method::GET, "/getPods", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(app.delete(&p).await.is_success());
    let (s, _) = app
        .call(Method::GET, "/getPod?namespace=default&name=twice", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, list) = app.json(Method::GET, "/getPods", None).await;
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn pods_are_keyed_by_namespace_and_name() {
    let app = app();
    let a = pod("same", &["sleep", "30"], "Never");
    let mut b = a.clone();
    b["metadata"]["namespace"] = json!("other");
    b["metadata"]["uid"] = json!("uid-other");
    assert_eq!(app.create(&a).await, StatusCode::CREATED);
    assert_eq!(app.create(&b).await, StatusCode::CREATED);
    let (_, list) = app.json(Method::GET, "/getPods", None).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (s, got) = app
        .json(Method::GET, "/getPod?namespace=other&name=same", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["metadata"]["uid"], "uid-other");
    // Percent- and form-encoded query values decode like Go's url.QueryEscape produces them.
    let (s, _) = app
        .call(
            Method::GET,
            "/getPodStatus?namespace=oth%65r&name=same",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app
        .call(
            Method::GET,
            "/getPodStatus?namespace=oth+er&name=same",
            None,
        )
        .await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "+ is a space, so this names namespace 'oth er'"
    );
    assert!(app.delete(&a).await.is_success());
    assert!(app.delete(&b).await.is_success());
}

#[tokio::test]
async fn bad_input_is_400_with_a_message_and_changes_nothing() {
    let app = app_with(&["--max-body-bytes", "65536"]);
    let good = pod("keep", &["sleep", "30"], "Never");
    assert_eq!(app.create(&good).await, StatusCode::CREATED);
    let (_, before) = app
        .json(Method::GET, "/getPod?namespace=default&name=keep", None)
        .await;

    let mut no_name = good.clone();
    no_name["metadata"].as_object_mut().unwrap().remove("name");
    let mut no_containers = good.clone();
    no_containers["spec"]["containers"] = json!([]);
    let mut dup = good.clone();
    dup["spec"]["containers"] =
        json!([{"name": "x", "command": ["true"]}, {"name": "x", "command": ["true"]}]);
    let mut bad_policy = good.clone();
    bad_policy["spec"]["restartPolicy"] = json!("Sometimes");
    let mut bad_update = good.clone();
    bad_update["spec"]["containers"] = json!([]);

    let cases: Vec<(Method, &str, Option<String>, &str)> = vec![
        (Method::POST, "/createPod", Some("{not json".into()), "not valid pod JSON"),
        (Method::POST, "/createPod", Some("".into()), "not valid pod JSON"),
        (Method::POST, "/createPod", Some("[1,2]".into()), "JSON object"),
        (Method::POST, "/createPod", Some(no_name.to_string()), "metadata.name"),
        (Method::POST, "/createPod", Some(no_containers.to_string()), "at least one container"),
        (Method::POST, "/createPod", Some(dup.to_string()), "more than once"),
        (Method::POST, "/createPod", Some(bad_policy.to_string()), "restartPolicy"),
        (Method::PUT, "/updatePod", Some(bad_update.to_string()), "at least one container"),
        (Method::DELETE, "/deletePod", Some("{oops".into()), "not valid pod JSON"),
        (Method::GET, "/getPod?namespace=default", None, "`name` is required"),
        (Method::GET, "/getContainerLogs?namespace=default&podName=keep&containerName=main&tail=abc", None, "`tail`"),
        (Method::GET, "/getContainerLogs?namespace=default&podName=keep&containerName=main&sinceSeconds=5&sinceTime=2026-01-01T00:00:00Z", None, "at most one"),
        (Method::GET, "/getContainerLogs?namespace=default&podName=keep&containerName=main&stream=both", None, "`stream`"),
    ];
    for (method, uri, body, needle) in cases {
        let (s, v) = app.json(method.clone(), uri, body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {uri}");
        let msg = v["error"].as_str().unwrap();
        assert!(
            msg.contains(needle),
            "{method} {uri}: {msg:?} should mention {needle:?}"
        );
    }

    let (s, v) = app
        .json(
            Method::POST,
            "/createPod",
            Some(format!("{{\"pad\":\"{}\"}}", "x".repeat(70_000))),
        )
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(v["error"].as_str().unwrap().contains("65536"));

    let (_, after) = app
        .json(Method::GET, "/getPod?namespace=default&name=keep", None)
        .await;
    assert_eq!(without_status(before), without_status(after));
    let (_, list) = app.json(Method::GET, "/getPods", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "nothing else was stored");
    assert!(app.delete(&good).await.is_success());
}

#[tokio::test]
async fn update_records_the_new_spec() {
    let app = app();
    let p = pod("upd", &["sleep", "30"], "Never");
    assert_eq!(app.create(&p).await, StatusCode::CREATED);
    let mut changed = p.clone();
    changed["metadata"]["labels"] = json!({"app": "upd", "version": "2"});
    let (s, _) = app
        .call(Method::PUT, "/updatePod", Some(changed.to_string()))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, got) = app
        .json(Method::GET, "/getPod?namespace=default&name=upd", None)
        .await;
    assert_eq!(got["metadata"]["labels"]["version"], "2");
    assert!(app.delete(&p).await.is_success());
}

#[tokio::test]
async fn a_full_node_admits_no_more_pods_like_the_kubelet() {
    let app = app_with(&["--max-pods", "1"]);
    let a = pod("first", &["sleep", "30"], "Never");
    let b = pod("second", &["sleep", "30"], "Never");
    assert_eq!(app.create(&a).await, StatusCode::CREATED);
    assert_eq!(app.create(&b).await, StatusCode::CREATED);
    let (_, s) = app
        .json(
            Method::GET,
            "/getPodStatus?namespace=default&name=second",
            None,
        )
        .await;
    assert_eq!(s["phase"], "Failed");
    assert_eq!(s["reason"], "OutOfpods");
    let state = &s["containerStatuses"][0]["state"];
    assert_eq!(state["terminated"]["reason"], "OutOfpods", "{s}");
    assert!(state.get("waiting").is_none(), "{s}");
    assert!(app.delete(&a).await.is_success());
    assert!(app.delete(&b).await.is_success());
}

#[tokio::test]
async fn get_pods_stays_within_the_brokers_read_limit() {
    let app = app_with(&["--max-pods", "1000"]);
    let mut pods = Vec::new();
    for i in 0..700 {
        // Fixture-shaped pods are about 2 KB each in full: 700 of them exceed 1,000,000 bytes.
        let p = pod(&format!("big-{i}"), &["sleep", "30"], "Never");
        assert_eq!(app.create(&p).await, StatusCode::CREATED);
        pods.push(p);
    }
    let (s, body) = app.call(Method::GET, "/getPods", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.len() <= 1_000_000, "{} bytes", body.len());
    let list: Vec<Value> = serde_json::from_slice(&body).unwrap();
    assert_eq!(list.len(), 700);
    assert!(list[0]["spec"].get("volumes").is_none(), "short form");
    assert_eq!(list[0]["metadata"]["namespace"], "default");
    assert!(list[0]["metadata"]["uid"]
        .as_str()
        .unwrap()
        .starts_with("uid-big-"));
    assert!(list[0]["status"]["phase"].is_string());
    let (_, full) = app.call(Method::GET, "/getPods?full=true", None).await;
    assert!(full.len() > 1_000_000);
    for p in &pods {
        assert!(app.delete(p).await.is_success());
    }
}

#[tokio::test]
async fn with_a_token_every_request_but_health_needs_it_and_a_refused_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let app = app_with(&["--token-file", token_file.to_str().unwrap()]);
    let p = pod("guarded", &["sleep", "30"], "Never");
    let send =
        |auth: Option<&'static str>, method: Method, uri: &'static str, body: Option<String>| {
            let router = app.router.clone();
            async move {
                let mut req = Request::builder()
                    .method(method)
                    .uri(uri)
                    .header("Content-Type", "application/json");
                if let Some(a) = auth {
                    req = req.header("Authorization", a);
                }
                let resp = router
                    .oneshot(
                        req.body(body.map(Body::from).unwrap_or_else(Body::empty))
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                let status = resp.status();
                let challenge = resp.headers().get("www-authenticate").cloned();
                let bytes = resp.into_body().collect().await.unwrap().to_bytes();
                (status, challenge, bytes)
            }
        };
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cret-toke"),
        Some("s3cret-token"),
    ] {
        let (s, challenge, body) =
            send(auth, Method::POST, "/createPod", Some(p.to_string())).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(challenge.unwrap(), "Bearer");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v["error"].as_str().unwrap().contains("bearer token"));
        let (s, _, _) = send(auth, Method::GET, "/capacity", None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    for health in ["/", "/healthz"] {
        let (s, _, _) = send(None, Method::GET, health, None).await;
        assert_eq!(s, StatusCode::OK, "{health} stays open for probes");
    }
    let good = Some("Bearer s3cret-token");
    let (s, _, body) = send(good, Method::GET, "/getPods", None).await;
    assert_eq!(
        (s, &body[..]),
        (StatusCode::OK, &b"[]"[..]),
        "refused creates stored nothing"
    );
    let (s, _, _) = send(good, Method::POST, "/createPod", Some(p.to_string())).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _, _) = send(good, Method::DELETE, "/deletePod", Some(p.to_string())).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn metrics_count_pods_requests_and_runs() {
    let app = app();
    let p = pod("metered", &["sh", "-c", "echo out"], "Never");
    assert_eq!(app.create(&p).await, StatusCode::CREATED);
    // Wait for the run to end (the exit is counted then).
    for _ in 0..500 {
        let (_, s) = app
            .json(
                Method::GET,
                "/getPodStatus?namespace=default&name=metered",
                None,
            )
            .await;
        if s["phase"] == "Succeeded" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (s, body) = app.call(Method::GET, "/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    for needle in [
        "procnode_pods{phase=\"Succeeded\"} 1",
        "procnode_container_starts_total 1",
        "procnode_container_exits_total{reason=\"Completed\"} 1",
        "procnode_log_bytes_captured_total 4",
        "procnode_spawn_seconds_count 1",
        "procnode_http_request_seconds_count{route=\"/createPod\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert!(app.delete(&p).await.is_success());
}
