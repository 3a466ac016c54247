//! Probes against real processes and real sockets: readiness flips `ready` and the Ready
//! condition both ways, a failing liveness probe restarts the container, a startup probe holds
//! the others back and kills a container that never starts, httpGet, tcpSocket and gRPC
//! handlers.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{container, phase, pod, sh, wait_until, Server};

fn ready_condition(s: &Value) -> String {
    s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .map(|c| c["status"].as_str().unwrap().to_string())
        .unwrap()
}

#[tokio::test]
async fn readiness_follows_an_exec_probe_both_ways() {
    let srv = Server::start(&[]).await;
    let marks = tempfile::tempdir().unwrap();
    let flag = marks.path().join("ready");
    let mut p = pod("ready", &["sleep", "300"], "Always");
    p["spec"]["containers"][0]["env"] = json!([{"name": "FLAG", "value": flag.to_str().unwrap()}]);
    p["spec"]["containers"][0]["readinessProbe"] = json!({"exec": {"command": ["sh", "-c", "test -f $(FLAG)"]}, "periodSeconds": 1, "failureThreshold": 1});
    srv.create(&p).await;
    let s = srv
        .wait_status("ready", "Running", |s| phase(s) == "Running")
        .await;
    assert_eq!(
        container(&s, "main")["ready"],
        false,
        "not ready before the probe passes"
    );
    assert_eq!(ready_condition(&s), "False");
    std::fs::write(&flag, "").unwrap();
    let s = srv
        .wait_status("ready", "ready", |s| container(s, "main")["ready"] == true)
        .await;
    assert_eq!(ready_condition(&s), "True");
    std::fs::remove_file(&flag).unwrap();
    let s = srv
        .wait_status("ready", "not ready again", |s| {
            container(s, "main")["ready"] == false
        })
        .await;
    assert_eq!(ready_condition(&s), "False");
    assert_eq!(
        container(&s, "main")["restartCount"],
        0,
        "readiness never restarts"
    );
    srv.delete(&p).await;
    srv.stop().await;
}

#[tokio::test]
async fn a_failing_liveness_probe_restarts_the_container() {
    let srv = Server::start(&[]).await;
    let mut p = pod("alive", &["sleep", "300"], "Always");
    p["spec"]["terminationGracePeriodSeconds"] = json!(1);
    p["spec"]["containers"][0]["livenessProbe"] =
        json!({"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 2});
    srv.create(&p).await;
    let s = srv
        .wait_status("alive", "a restart", |s| {
            container(s, "main")["restartCount"].as_i64() >= Some(1)
        })
        .await;
    let last = &container(&s, "main")["lastState"]["terminated"];
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("Liveness probe failed"),
        "{last}"
    );
    assert_eq!(last["exitCode"], 143, "stopped with SIGTERM");
    srv.delete(&p).await;
    srv.stop().await;
}

#[tokio::test]
async fn startup_probes_gate_the_others_and_kill_a_container_that_never_starts() {
    let srv = Server::start(&[]).await;
    let marks = tempfile::tempdir().unwrap();
    let flag = marks.path().join("started");
    let mut slow = pod("slow", &["sleep", "300"], "Always");
    slow["spec"]["containers"][0]["env"] =
        json!([{"name": "FLAG", "value": flag.to_str().unwrap()}]);
    slow["spec"]["containers"][0]["startupProbe"] = json!({"exec": {"command": ["sh", "-c", "test -f $(FLAG)"]}, "periodSeconds": 1, "failureThreshold": 30});
    // Would fail at once if it ran before the startup probe passed.
    slow["spec"]["containers"][0]["livenessProbe"] = json!({"exec": {"command": ["sh", "-c", "test -f $(FLAG)"]}, "periodSeconds": 1, "failureThreshold": 1});
    let mut never = pod("never", &["sleep", "300"], "Never");
    never["spec"]["terminationGracePeriodSeconds"] = json!(1);
    never["spec"]["containers"][0]["startupProbe"] =
        json!({"tcpSocket": {"port": 1}, "periodSeconds": 1, "failureThreshold": 2});
    srv.create(&slow).await;
    srv.create(&never).await;
    let s = srv
        .wait_status("slow", "Running", |s| phase(s) == "Running")
        .await;
    assert_eq!(container(&s, "main")["started"], false);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let s = srv.status("slow").await.unwrap();
    assert_eq!(
        container(&s, "main")["restartCount"],
        0,
        "liveness waits for startup"
    );
    std::fs::write(&flag, "").unwrap();
    srv.wait_status("slow", "started", |s| {
        container(s, "main")["started"] == true
    })
    .await;
    let s = srv
        .wait_status("never", "killed", |s| phase(s) == "Failed")
        .await;
    let t = &container(&s, "main")["state"]["terminated"];
    assert!(
        t["message"]
            .as_str()
            .unwrap()
            .contains("Startup probe failed"),
        "{t}"
    );
    srv.delete(&slow).await;
    srv.delete(&never).await;
    srv.stop().await;
}

#[tokio::test]
async fn http_and_tcp_probes_talk_to_real_sockets() {
    let srv = Server::start(&[]).await;
    let (port, server) = health_server(None, "500 Internal Server Error").await;
    let with_probe = |name: &str, probe: Value| {
        let mut p = pod(name, &["sleep", "300"], "Always");
        p["spec"]["containers"][0]["ports"] = json!([{"name": "web", "containerPort": port}]);
        p["spec"]["containers"][0]["readinessProbe"] = probe;
        p
    };
    let pods = [
        with_probe(
            "http-ok",
            json!({"httpGet": {"path": "/healthy", "port": "web"}, "periodSeconds": 1}),
        ),
        with_probe(
            "http-500",
            json!({"httpGet": {"path": "/broken", "port": port}, "periodSeconds": 1}),
        ),
        with_probe(
            "tcp-ok",
            json!({"tcpSocket": {"port": port}, "periodSeconds": 1}),
        ),
        with_probe(
            "tcp-closed",
            json!({"tcpSocket": {"port": 1}, "periodSeconds": 1}),
        ),
    ];
    for p in &pods {
        srv.create(p).await;
    }
    for name in ["http-ok", "tcp-ok"] {
        srv.wait_status(name, "ready", |s| container(s, "main")["ready"] == true)
            .await;
    }
    wait_until(
        "failing probes to have run",
        Duration::from_secs(10),
        || async {
            let mut all = true;
            for name in ["http-500", "tcp-closed"] {
                let s = srv.status(name).await?;
                all &= phase(&s) == "Running" && container(&s, "main")["ready"] == false;
            }
            all.then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for name in ["http-500", "tcp-closed"] {
        assert_eq!(
            container(&srv.status(name).await.unwrap(), "main")["ready"],
            false,
            "{name}"
        );
    }
    for p in &pods {
        srv.delete(p).await;
    }
    server.abort();
    srv.stop().await;
}

#[tokio::test]
async fn lifecycle_hooks_run_after_start_and_before_the_stop_signal() {
    let srv = Server::start(&[]).await;
    let marks = tempfile::tempdir().unwrap();
    let trail = marks.path().join("trail");
    let mut p = pod(
        "hooked",
        &[
            "sh",
            "-c",
            "trap 'echo term >> $TRAIL; exit 0' TERM; while :; do sleep 0.05; done",
        ],
        "Always",
    );
    p["spec"]["containers"][0]["env"] =
        json!([{"name": "TRAIL", "value": trail.to_str().unwrap()}]);
    p["spec"]["containers"][0]["lifecycle"] = json!({
        "postStart": {"exec": {"command": ["sh", "-c", "echo post-start >> $(TRAIL)"]}},
        "preStop": {"exec": {"command": ["sh", "-c", "echo pre-stop >> $(TRAIL); sleep 0.3"]}}
    });
    let mut failing = pod("bad-hook", &["sleep", "300"], "Never");
    failing["spec"]["terminationGracePeriodSeconds"] = json!(1);
    failing["spec"]["containers"][0]["lifecycle"] =
        json!({"postStart": {"exec": {"command": ["false"]}}});
    srv.create(&p).await;
    srv.create(&failing).await;
    srv.wait_status("hooked", "Running", |s| phase(s) == "Running")
        .await;
    wait_until("postStart", Duration::from_secs(10), || async {
        std::fs::read_to_string(&trail)
            .ok()
            .filter(|t| t == "post-start\n")
            .map(|_| ())
    })
    .await;
    assert_eq!(srv.delete(&p).await.status(), 200);
    assert_eq!(
        std::fs::read_to_string(&trail).unwrap(),
        "post-start\npre-stop\nterm\n",
        "preStop before TERM"
    );
    let s = srv
        .wait_status("bad-hook", "Failed", |s| phase(s) == "Failed")
        .await;
    let t = &container(&s, "main")["state"]["terminated"];
    assert!(
        t["message"]
            .as_str()
            .unwrap()
            .contains("PostStartHook failed"),
        "{t}"
    );
    srv.delete(&failing).await;
    srv.stop().await;
}

/// Bad input never leaves a pod stuck: a preStop hook that hangs is cut at the grace period,
/// a postStart hook that hangs does not keep a delete from finishing, and a runAsUser with no
/// entry in /etc/passwd runs as that uid (and as the group of the same number), as container
/// runtimes do.
#[tokio::test]
async fn hanging_hooks_and_unknown_users_end_in_precise_states() {
    let srv = Server::start(&[]).await;
    let mut pre = pod("hang-pre", &["sleep", "300"], "Always");
    pre["spec"]["terminationGracePeriodSeconds"] = json!(1);
    pre["spec"]["containers"][0]["lifecycle"] =
        json!({"preStop": {"exec": {"command": ["sleep", "300"]}}});
    let mut post = pod("hang-post", &["sleep", "300"], "Always");
    post["spec"]["terminationGracePeriodSeconds"] = json!(1);
    post["spec"]["containers"][0]["lifecycle"] =
        json!({"postStart": {"exec": {"command": ["sleep", "300"]}}});
    let mut user = pod(
        "no-passwd",
        &["sh", "-c", "echo $(id -u) $(id -g)"],
        "Never",
    );
    user["spec"]["securityContext"] = json!({"runAsUser": 4242});
    for p in [&pre, &post, &user] {
        assert_eq!(srv.create(p).await.status(), 201);
    }
    srv.wait_status("hang-pre", "Running", |s| phase(s) == "Running")
        .await;
    // While postStart runs the kubelet reports the container as ContainerCreating and the pod
    // as Pending, though its process runs.
    let s = srv
        .wait_status("hang-post", "started, hook running", |s| {
            container(s, "main")["containerID"].is_string()
        })
        .await;
    assert_eq!(phase(&s), "Pending", "{s}");
    assert_eq!(
        container(&s, "main")["state"]["waiting"]["reason"],
        "ContainerCreating"
    );
    for p in [&pre, &post] {
        // Answers once no process of the pod is left (grace 1 s; 2 s more after a hook).
        assert_eq!(srv.delete(p).await.status(), 200);
        assert!(srv
            .status(p["metadata"]["name"].as_str().unwrap())
            .await
            .is_none());
    }
    let s = srv
        .wait_status("no-passwd", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    assert_eq!(container(&s, "main")["state"]["terminated"]["exitCode"], 0);
    let (_, logs) = srv.logs("no-passwd", "main", "").await;
    assert_eq!(logs, "4242 4242\n");
    srv.stop().await;
}

/// httpGet with scheme HTTPS: TLS to a server with a self-signed certificate (the kubelet does
/// not verify probe certificates), 200 on /healthy only.
#[tokio::test]
async fn https_probes_skip_certificate_verification() {
    let srv = Server::start(&[]).await;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(certified.key_pair.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let (port, server) = health_server(Some(acceptor), "503 Service Unavailable").await;
    let probe = |path: &str| json!({"httpGet": {"scheme": "HTTPS", "path": path, "port": port}, "periodSeconds": 1});
    let mut good = pod("https-ok", &["sleep", "300"], "Always");
    good["spec"]["containers"][0]["readinessProbe"] = probe("/healthy");
    let mut bad = pod("https-503", &["sleep", "300"], "Always");
    bad["spec"]["containers"][0]["readinessProbe"] = probe("/other");
    srv.create(&good).await;
    srv.create(&bad).await;
    srv.wait_status("https-ok", "ready", |s| {
        container(s, "main")["ready"] == true
    })
    .await;
    let s = srv
        .wait_status("https-503", "Running", |s| phase(s) == "Running")
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        container(&srv.status("https-503").await.unwrap(), "main")["ready"],
        false,
        "{s}"
    );
    server.abort();
    srv.stop().await;
}

/// A small HTTP server on 127.0.0.1 (over TLS when given an acceptor) for probes to call:
/// `200 OK` for `GET /healthy`, the status `otherwise` for any other request. Returns its port
/// and its task (abort it when done).
async fn health_server(
    tls: Option<tokio_rustls::TlsAcceptor>,
    otherwise: &'static str,
) -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    async fn answer(mut s: impl AsyncRead + AsyncWrite + Unpin, otherwise: &str) {
        let mut buf = vec![0u8; 1024];
        let n = s.read(&mut buf).await.unwrap_or(0);
        let status = if buf[..n].starts_with(b"GET /healthy ") {
            "200 OK"
        } else {
            otherwise
        };
        let response = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
        let _ = s.write_all(response.as_bytes()).await;
        let _ = s.shutdown().await;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(tcp).await {
                            answer(s, otherwise).await
                        }
                    }
                    None => answer(tcp, otherwise).await,
                }
            });
        }
    });
    (port, task)
}

/// gRPC probes against a real HTTP/2 gRPC health server: SERVING is ready, NOT_SERVING and an
/// unknown service are not, nothing listening is not; a failing gRPC liveness probe restarts
/// the container with the answer in its message.
#[tokio::test]
async fn grpc_probes_speak_the_grpc_health_protocol() {
    let srv = Server::start(&[]).await;
    let (port, server, asked) = grpc_health_server().await;
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let with_probe = |name: &str, which: &str, port: u16, service: Option<&str>| {
        let mut p = pod(name, &["sleep", "300"], "Always");
        p["spec"]["terminationGracePeriodSeconds"] = json!(1);
        let mut grpc = json!({"port": port});
        if let Some(service) = service {
            grpc["service"] = json!(service);
        }
        p["spec"]["containers"][0][which] =
            json!({"grpc": grpc, "periodSeconds": 1, "failureThreshold": 1});
        p
    };
    let pods = [
        with_probe("grpc-default", "readinessProbe", port, None),
        with_probe("grpc-good", "readinessProbe", port, Some("good")),
        with_probe("grpc-bad", "readinessProbe", port, Some("bad")),
        with_probe("grpc-unknown", "readinessProbe", port, Some("nope")),
        with_probe("grpc-closed", "readinessProbe", closed_port, None),
        with_probe("grpc-dying", "livenessProbe", port, Some("bad")),
    ];
    for p in &pods {
        srv.create(p).await;
    }
    for name in ["grpc-default", "grpc-good"] {
        srv.wait_status(name, "ready", |s| container(s, "main")["ready"] == true)
            .await;
    }
    let s = srv
        .wait_status("grpc-dying", "a restart", |s| {
            container(s, "main")["restartCount"].as_i64() >= Some(1)
        })
        .await;
    let message = container(&s, "main")["lastState"]["terminated"]["message"].clone();
    assert!(
        message
            .as_str()
            .unwrap()
            .contains(r#"Liveness probe failed: service unhealthy (responded with "NOT_SERVING")"#),
        "{message}"
    );
    // Wait until the failing readiness probes have each run a few times (the closed port's
    // as often: they share the period).
    wait_until(
        "failing probes to have run",
        Duration::from_secs(10),
        || async {
            let asked = asked.lock().unwrap();
            let times = |service: &str| asked.iter().filter(|s| *s == service).count();
            (times("bad") >= 4 && times("nope") >= 3).then_some(())
        },
    )
    .await;
    for name in ["grpc-bad", "grpc-unknown", "grpc-closed"] {
        let s = srv.status(name).await.unwrap();
        assert_eq!(phase(&s), "Running", "{name}");
        assert_eq!(container(&s, "main")["ready"], false, "{name}");
    }
    for p in &pods {
        srv.delete(p).await;
    }
    server.abort();
    srv.stop().await;
}

/// A gRPC health server (`grpc.health.v1.Health/Check`) on 127.0.0.1 over plaintext HTTP/2:
/// SERVING for "" and "good", NOT_SERVING for "bad", grpc-status NOT_FOUND (5) for any other
/// service, as grpc-go's health server answers. The protobuf messages (one field each) are
/// encoded by hand.
async fn grpc_health_server() -> (
    u16,
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = asked.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((request, mut respond))) = connection.accept().await {
                    let log = log.clone();
                    tokio::spawn(async move {
                        let mut body = request.into_body();
                        let mut received = Vec::new();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            received.extend_from_slice(&chunk);
                        }
                        // [flag, 4-byte length, 0x0a, len, service...]
                        let service = received
                            .get(7..)
                            .map(|s| String::from_utf8_lossy(s).into_owned())
                            .unwrap_or_default();
                        log.lock().unwrap().push(service.clone());
                        let status = match service.as_str() {
                            "" | "good" => Some(1u8),
                            "bad" => Some(2),
                            _ => None,
                        };
                        let head = |grpc_status: Option<&str>| {
                            let mut r = axum::http::Response::builder()
                                .status(200)
                                .header("content-type", "application/grpc");
                            if let Some(code) = grpc_status {
                                r = r.header("grpc-status", code);
                            }
                            r.body(()).unwrap()
                        };
                        let Some(status) = status else {
                            let _ = respond.send_response(head(Some("5")), true);
                            return;
                        };
                        let Ok(mut stream) = respond.send_response(head(None), false) else {
                            return;
                        };
                        let message = [0u8, 0, 0, 0, 2, 0x08, status];
                        let _ = stream.send_data(message.to_vec().into(), false);
                        let mut trailers = axum::http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        let _ = stream.send_trailers(trailers);
                    });
                }
            });
        }
    });
    (port, task, asked)
}

/// A `sleep` preStop hook: the stop signal comes only after it (a process that records when it
/// got SIGTERM shows the wait), and a sleep longer than the grace period is cut at the grace
/// period, so the delete still ends.
#[tokio::test]
async fn a_sleep_pre_stop_hook_delays_the_stop_signal_within_the_grace_period() {
    let srv = Server::start(&[]).await;
    let marks = tempfile::tempdir().unwrap();
    let trail = marks.path().join("term-at");
    let script = format!(
        "trap 'date +%s.%N > {}; exit 0' TERM; while :; do sleep 0.05; done",
        trail.display()
    );
    let mut short = pod("sleep-hook", &sh(&script), "Always");
    short["spec"]["terminationGracePeriodSeconds"] = json!(30);
    short["spec"]["containers"][0]["lifecycle"] = json!({"preStop": {"sleep": {"seconds": 2}}});
    let mut long = pod("long-sleep-hook", &["sleep", "300"], "Always");
    long["spec"]["terminationGracePeriodSeconds"] = json!(1);
    long["spec"]["containers"][0]["lifecycle"] = json!({"preStop": {"sleep": {"seconds": 600}}});
    for p in [&short, &long] {
        assert_eq!(srv.create(p).await.status(), 201);
        srv.wait_status(p["metadata"]["name"].as_str().unwrap(), "Running", |s| {
            phase(s) == "Running"
        })
        .await;
    }
    let asked = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert_eq!(srv.delete(&short).await.status(), 200);
    let term_at: f64 = std::fs::read_to_string(&trail)
        .expect("the process got SIGTERM")
        .trim()
        .parse()
        .unwrap();
    assert!(
        term_at - asked >= 1.9,
        "SIGTERM came {:.2} s after the delete, before the 2 s preStop sleep ended",
        term_at - asked
    );
    // The 600 s sleep is cut at the 1 s grace period: the delete answers (the test harness's
    // own 20 s wait would fail long before 600 s).
    tokio::time::timeout(Duration::from_secs(20), srv.delete(&long))
        .await
        .expect("the delete ended within the grace period, not after the 600 s sleep");
    srv.stop().await;
}
