//! `kubectl exec` and `kubectl port-forward` against the kubelet API's streaming routes, the
//! way the API server reaches a kubelet: an HTTP upgrade to SPDY/3.1, then one stream per
//! channel. Real processes in real pods; every test ends with no process of its own left.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::spdy::{upgrade, Client, Transcript};
use support::{bare_pod, container, phase, pid_alive, wait_until, Server};

const V4: &str = "v4.channel.k8s.io";

fn exec_path(pod: &str, command: &[&str], streams: &str) -> String {
    let mut q: Vec<String> = command
        .iter()
        .map(|c| {
            format!(
                "command={}",
                form_urlencoded::byte_serialize(c.as_bytes()).collect::<String>()
            )
        })
        .collect();
    q.push(streams.to_string());
    format!("/exec/default/{pod}/main?{}", q.join("&"))
}

/// The ids of the streams a client opened for an exec, by type.
struct Opened {
    error: u32,
    stdin: Option<u32>,
    stdout: Option<u32>,
    stderr: Option<u32>,
    resize: Option<u32>,
}

async fn open_streams(c: &mut Client, stdin: bool, tty: bool) -> Opened {
    let error = c.open(&[("streamType", "error")]).await;
    let stdin = match stdin {
        true => Some(c.open(&[("streamType", "stdin")]).await),
        false => None,
    };
    let stdout = Some(c.open(&[("streamType", "stdout")]).await);
    let (stderr, resize) = match tty {
        false => (Some(c.open(&[("streamType", "stderr")]).await), None),
        true => (None, Some(c.open(&[("streamType", "resize")]).await)),
    };
    Opened {
        error,
        stdin,
        stdout,
        stderr,
        resize,
    }
}

fn status(t: &Transcript, error: u32) -> Value {
    serde_json::from_str(&t.text(error)).unwrap_or_else(|e| panic!("{e}: {:?}", t.text(error)))
}

#[tokio::test]
async fn exec_runs_with_the_containers_environment_user_and_directory_and_reports_the_exit() {
    let srv = Server::start_with_kubelet_api(&[]).await;
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut p = bare_pod("ex", "exec sleep 300", "Always");
    p["spec"]["containers"][0]["env"] = json!([{"name": "FOO", "value": "from-the-pod"}]);
    p["spec"]["containers"][0]["workingDir"] = json!(work.path());
    p["spec"]["securityContext"] = json!({"runAsUser": 4321, "runAsGroup": 4321});
    srv.create_running(&p).await;
    let before = srv.status("ex").await.unwrap();

    let path = exec_path(
        "ex",
        &["sh", "-c", "echo $FOO; id -u; pwd; echo oops >&2; exit 3"],
        "stdout=1&stderr=1",
    );
    let up = upgrade(&srv.kubelet, &path, &[V4, "v3.channel.k8s.io"]).await;
    assert_eq!(up.status, 101, "{}", up.body);
    assert_eq!(up.headers["x-stream-protocol-version"], V4);
    let mut c = up.client.unwrap();
    let ids = open_streams(&mut c, false, false).await;
    let t = c.read_to_end(Duration::from_secs(20)).await;
    let out = t.text(ids.stdout.unwrap());
    assert_eq!(
        out,
        format!("from-the-pod\n4321\n{}\n", work.path().display()),
        "{t:?}"
    );
    assert_eq!(t.text(ids.stderr.unwrap()), "oops\n");
    let s = status(&t, ids.error);
    assert_eq!(s["status"], "Failure");
    assert_eq!(s["reason"], "NonZeroExitCode");
    assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(s["details"]["causes"][0]["message"], "3");
    for id in [ids.error, ids.stdout.unwrap(), ids.stderr.unwrap()] {
        assert!(t.replied.contains(&id), "every stream is answered");
        assert!(t.finished.contains(&id), "every stream is finished: {t:?}");
    }
    assert!(t.goaway);

    // A success on v4 is a Success status; on v3 nothing at all.
    let path = exec_path("ex", &["true"], "stdout=1&stderr=1");
    let mut c = upgrade(&srv.kubelet, &path, &[V4]).await.client.unwrap();
    let ids = open_streams(&mut c, false, false).await;
    let t = c.read_to_end(Duration::from_secs(20)).await;
    assert_eq!(status(&t, ids.error)["status"], "Success");
    let up = upgrade(&srv.kubelet, &path, &["v3.channel.k8s.io"]).await;
    assert_eq!(up.headers["x-stream-protocol-version"], "v3.channel.k8s.io");
    let mut c = up.client.unwrap();
    let ids = open_streams(&mut c, false, false).await;
    let t = c.read_to_end(Duration::from_secs(20)).await;
    assert_eq!(t.text(ids.error), "");

    // The exec'd process's exit is not the container's.
    let after = srv.status("ex").await.unwrap();
    assert_eq!(phase(&after), "Running");
    assert_eq!(container(&after, "main")["restartCount"], 0);
    assert_eq!(
        container(&after, "main")["containerID"],
        container(&before, "main")["containerID"]
    );
    srv.delete(&p).await;
    srv.stop().await;
}

#[tokio::test]
async fn stdin_reaches_the_process_and_its_end_closes_it() {
    let srv = Server::start_with_kubelet_api(&[]).await;
    let p = bare_pod("cat", "exec sleep 300", "Always");
    srv.create_running(&p).await;
    let path = exec_path("cat", &["cat"], "stdin=1&stdout=1&stderr=1");
    let mut c = upgrade(&srv.kubelet, &path, &[V4]).await.client.unwrap();
    let ids = open_streams(&mut c, true, false).await;
    let stdin = ids.stdin.unwrap();
    c.send(stdin, b"hi\n", false).await;
    c.send(stdin, b"there\n", true).await;
    let t = c.read_to_end(Duration::from_secs(20)).await;
    assert_eq!(t.text(ids.stdout.unwrap()), "hi\nthere\n");
    assert_eq!(status(&t, ids.error)["status"], "Success");

    // A large input goes through whole (frames of many sizes, back-pressure on the pipe).
    let path = exec_path("cat", &["sh", "-c", "wc -c"], "stdin=1&stdout=1&stderr=1");
    let mut c = upgrade(&srv.kubelet, &path, &[V4]).await.client.unwrap();
    let ids = open_streams(&mut c, true, false).await;
    let chunk = vec![b'x'; 100_000];
    for _ in 0..20 {
        c.send(ids.stdin.unwrap(), &chunk, false).await;
    }
    c.send(ids.stdin.unwrap(), b"", true).await;
    let t = c.read_to_end(Duration::from_secs(30)).await;
    assert_eq!(t.text(ids.stdout.unwrap()).trim(), "2000000");
    srv.delete(&p).await;
    srv.stop().await;
}

#[tokio::test]
async fn a_tty_gets_a_terminal_of_the_clients_size() {
    let srv = Server::start_with_kubelet_api(&[]).await;
    let p = bare_pod("tty", "exec sleep 300", "Always");
    srv.create_running(&p).await;
    // The shell waits for a line, so the size is set before it asks for it.
    let path = exec_path(
        "tty",
        &["sh", "-c", "read go; stty size; test -t 0 && echo is-a-tty"],
        "stdin=1&stdout=1&tty=1",
    );
    let mut c = upgrade(&srv.kubelet, &path, &[V4]).await.client.unwrap();
    let ids = open_streams(&mut c, true, true).await;
    assert!(ids.stderr.is_none());
    c.send(ids.resize.unwrap(), br#"{"Width":100,"Height":40}"#, false)
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.send(ids.stdin.unwrap(), b"go\n", false).await;
    let t = c.read_to_end(Duration::from_secs(20)).await;
    let out = t.text(ids.stdout.unwrap());
    assert!(out.contains("40 100"), "{out:?}");
    assert!(out.contains("is-a-tty"), "{out:?}");
    assert_eq!(status(&t, ids.error)["status"], "Success");
    srv.delete(&p).await;
    srv.stop().await;
}

/// Reads the first line the exec'd process writes: its pid.
async fn first_line_pid(c: &mut Client, stdout: u32) -> i32 {
    let mut out = Vec::new();
    while !out.contains(&b'\n') {
        match c.frame().await.expect("output") {
            procnode::stream::spdy::Frame::Data { id, data, .. } if id == stdout => {
                out.extend_from_slice(&data)
            }
            _ => {}
        }
    }
    String::from_utf8(out).unwrap().trim().parse().unwrap()
}

#[tokio::test]
async fn a_client_that_leaves_or_a_container_that_stops_takes_the_process_with_it() {
    let srv = Server::start_with_kubelet_api(&[]).await;
    let p = bare_pod("leave", "exec sleep 300", "Always");
    srv.create_running(&p).await;
    let path = exec_path(
        "leave",
        &["sh", "-c", "echo $$; exec sleep 300"],
        "stdout=1",
    );
    // The client hangs up.
    let mut c = upgrade(&srv.kubelet, &path, &[V4]).await.client.unwrap();
    let error = c.open(&[("streamType", "error")]).await;
    let stdout = c.open(&[("streamType", "stdout")]).await;
    let _ = error;
    let pid = first_line_pid(&mut c, stdout).await;
    assert!(pid_alive(pid));
    c.hang_up();
    wait_until(
        "the exec'd process is killed",
        Duration::from_secs(10),
        || async { (!pid_alive(pid)).then_some(()) },
    )
    .await;

    // The container stops (the pod is deleted) while a session runs.
    let mut c = upgrade(&srv.kubelet, &path, &[V4]).await.client.unwrap();
    let error = c.open(&[("streamType", "error")]).await;
    let stdout = c.open(&[("streamType", "stdout")]).await;
    let pid = first_line_pid(&mut c, stdout).await;
    srv.delete(&p).await;
    let t = c.read_to_end(Duration::from_secs(20)).await;
    assert!(!pid_alive(pid));
    let s = status(&t, error);
    assert_eq!(s["reason"], "NonZeroExitCode", "{s}");
    assert_eq!(s["details"]["causes"][0]["message"], "137");
    srv.stop().await;
}

#[tokio::test]
async fn bad_requests_are_refused_before_the_upgrade_with_a_status() {
    let srv = Server::start_with_kubelet_api(&[]).await;
    let p = bare_pod("refuse", "exec sleep 300", "Always");
    srv.create_running(&p).await;
    let done = bare_pod("done", "true", "Never");
    srv.create(&done).await;
    srv.wait_status("done", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    let cases = [
        (
            "/exec/default/nope/main?command=ls&stdout=1",
            404,
            "not found",
        ),
        (
            "/exec/default/refuse/other?command=ls&stdout=1",
            404,
            "\"other\" not found",
        ),
        (
            "/exec/default/done/main?command=ls&stdout=1",
            400,
            "not running",
        ),
        ("/exec/default/refuse/main?stdout=1", 400, "command"),
        (
            "/exec/default/refuse/main?command=ls",
            400,
            "at least 1 of stdin",
        ),
        ("/portForward/default/nope", 404, "not found"),
    ];
    for (path, code, says) in cases {
        let up = upgrade(&srv.kubelet, path, &[V4, "portforward.k8s.io"]).await;
        assert_eq!(up.status, code, "{path}: {}", up.body);
        let s: Value = serde_json::from_str(&up.body).unwrap();
        assert_eq!(s["kind"], "Status", "{path}");
        assert_eq!(s["code"], code);
        assert!(s["message"].as_str().unwrap().contains(says), "{path}: {s}");
    }
    // No protocol in common: 403, with the ones procnode accepts.
    let up = upgrade(
        &srv.kubelet,
        "/exec/default/refuse/main?command=ls&stdout=1",
        &["v9.example"],
    )
    .await;
    assert_eq!(up.status, 403);
    assert!(up.headers["x-accepted-stream-protocol-versions"].contains(V4));
    // Not an upgrade at all.
    let plain = reqwest::Client::new()
        .post(format!(
            "http://{}/exec/default/refuse/main?command=ls&stdout=1",
            srv.kubelet
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);
    // A command that does not exist: the session opens, and the error says why.
    let path = exec_path("refuse", &["no-such-command"], "stdout=1");
    let mut c = upgrade(&srv.kubelet, &path, &[V4]).await.client.unwrap();
    let error = c.open(&[("streamType", "error")]).await;
    c.open(&[("streamType", "stdout")]).await;
    let t = c.read_to_end(Duration::from_secs(20)).await;
    let s = status(&t, error);
    assert_eq!(s["status"], "Failure");
    assert!(
        s["message"].as_str().unwrap().contains("no-such-command"),
        "{s}"
    );
    srv.delete(&p).await;
    srv.delete(&done).await;
    srv.stop().await;
}

#[tokio::test]
async fn port_forward_reaches_the_pods_port_and_no_other() {
    let srv = Server::start_with_kubelet_api(&[]).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let script = format!("cd /tmp && exec python3 -m http.server {port} --bind 127.0.0.1");
    let p = bare_pod("web", &script, "Always");
    srv.create_running(&p).await;
    wait_until("the pod listens", Duration::from_secs(20), || async {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .await;
    // A port of the host's that no process of the pod listens on.
    let host_only = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host_port = host_only.local_addr().unwrap().port().to_string();

    let up = upgrade(
        &srv.kubelet,
        "/portForward/default/web",
        &["portforward.k8s.io"],
    )
    .await;
    assert_eq!(up.status, 101, "{}", up.body);
    assert_eq!(
        up.headers["x-stream-protocol-version"],
        "portforward.k8s.io"
    );
    let mut c = up.client.unwrap();
    let port_s = port.to_string();
    // Two connections at once, and one to the host's port.
    let mut pairs = Vec::new();
    for request in ["0", "1"] {
        let e = c
            .open(&[
                ("streamType", "error"),
                ("port", &port_s),
                ("requestID", request),
            ])
            .await;
        let d = c
            .open(&[
                ("streamType", "data"),
                ("port", &port_s),
                ("requestID", request),
            ])
            .await;
        pairs.push((e, d));
    }
    let e2 = c
        .open(&[
            ("streamType", "error"),
            ("port", &host_port),
            ("requestID", "2"),
        ])
        .await;
    let d2 = c
        .open(&[
            ("streamType", "data"),
            ("port", &host_port),
            ("requestID", "2"),
        ])
        .await;
    for (_, d) in &pairs {
        c.send(*d, b"GET / HTTP/1.0\r\n\r\n", true).await;
    }
    // Read until both pages and the refusal are in.
    let mut t = Transcript::default();
    let done = |t: &Transcript| {
        pairs.iter().all(|(_, d)| t.finished.contains(d))
            && t.finished.contains(&e2)
            && t.finished.contains(&d2)
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        while !done(&t) {
            if let Some(procnode::stream::spdy::Frame::Data { id, fin, data }) = c.frame().await {
                t.data.entry(id).or_default().extend_from_slice(&data);
                if fin {
                    t.finished.push(id);
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("forwarded in time: {t:?}"));
    for (_, d) in &pairs {
        let page = t.text(*d);
        assert!(page.starts_with("HTTP/1.0 200"), "{page:?}");
    }
    let refusal = t.text(e2);
    assert!(
        refusal.contains(&format!(
            "no process of the pod listens on port {host_port}"
        )),
        "{refusal:?}"
    );
    assert!(t.finished.contains(&d2));
    c.hang_up();
    drop(host_only);
    srv.delete(&p).await;
    srv.stop().await;
}

async fn read_all(r: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = String::new();
    r.expect("the stream")
        .read_to_string(&mut out)
        .await
        .unwrap();
    out
}

#[tokio::test]
async fn kube_rs_execs_over_websocket() {
    use kube::api::AttachParams;
    use tokio::io::AsyncWriteExt;
    let srv = Server::start_with_kubelet_api(&[]).await;
    let mut p = bare_pod("ws", "exec sleep 300", "Always");
    p["spec"]["containers"][0]["env"] = json!([{"name": "FOO", "value": "over-websocket"}]);
    srv.create_running(&p).await;
    let pods = support::apiserver::kube_pods(&srv).await;

    // v5.channel.k8s.io: output, stderr, and the exit code as a Status.
    let ap = AttachParams::default().container("main").stderr(true);
    let mut run = pods
        .exec("ws", ["sh", "-c", "echo $FOO; echo oops >&2; exit 3"], &ap)
        .await
        .expect("exec");
    let status = run.take_status().unwrap();
    let (out, err) = tokio::join!(read_all(run.stdout()), read_all(run.stderr()));
    assert_eq!(out, "over-websocket\n");
    assert_eq!(err, "oops\n");
    let status = status.await.expect("a status");
    assert_eq!(status.reason.as_deref(), Some("NonZeroExitCode"));
    let cause = &status.details.unwrap().causes.unwrap()[0];
    assert_eq!(cause.reason.as_deref(), Some("ExitCode"));
    assert_eq!(cause.message.as_deref(), Some("3"));
    run.join().await.unwrap();

    // stdin, ended by v5's close signal.
    let ap = AttachParams::default()
        .container("main")
        .stdin(true)
        .stderr(false);
    let mut run = pods.exec("ws", ["cat"], &ap).await.expect("exec");
    let mut stdin = run.stdin().unwrap();
    stdin.write_all(b"through stdin\n").await.unwrap();
    stdin.shutdown().await.unwrap();
    drop(stdin);
    let status = run.take_status().unwrap();
    assert_eq!(read_all(run.stdout()).await, "through stdin\n");
    assert_eq!(status.await.unwrap().status.as_deref(), Some("Success"));

    // A tty: the size the client sets is the terminal's.
    let ap = AttachParams::interactive_tty().container("main");
    let mut run = pods
        .exec("ws", ["sh", "-c", "read go; stty size"], &ap)
        .await
        .expect("exec");
    let mut size = run.terminal_size().unwrap();
    use futures_util::SinkExt;
    size.send(kube::api::TerminalSize {
        width: 77,
        height: 22,
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut stdin = run.stdin().unwrap();
    stdin.write_all(b"go\n").await.unwrap();
    let out = read_all(run.stdout()).await;
    assert!(out.contains("22 77"), "{out:?}");
    srv.delete(&p).await;
    srv.stop().await;
}

#[tokio::test]
async fn kube_rs_port_forwards_over_websocket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = Server::start_with_kubelet_api(&[]).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let script = format!("cd /tmp && exec python3 -m http.server {port} --bind 127.0.0.1");
    let p = bare_pod("wsweb", &script, "Always");
    srv.create_running(&p).await;
    wait_until("the pod listens", Duration::from_secs(20), || async {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .await;
    let pods = support::apiserver::kube_pods(&srv).await;
    let mut pf = pods
        .portforward("wsweb", &[port])
        .await
        .expect("portforward");
    let mut conn = pf.take_stream(port).unwrap();
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut page = Vec::new();
    conn.read_to_end(&mut page).await.unwrap();
    let page = String::from_utf8_lossy(&page);
    assert!(page.starts_with("HTTP/1.0 200"), "{page:?}");
    // (The pod's end of the connection ended the session, as a kubelet ends it: the client
    // learns of it by the close, and has nothing left to join.)
    drop(conn);
    pf.abort();

    // A port no process of the pod listens on: the error channel says so.
    let host_only = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other = host_only.local_addr().unwrap().port();
    let mut pf = pods
        .portforward("wsweb", &[other])
        .await
        .expect("portforward");
    let error = pf.take_error(other).unwrap().await;
    assert!(
        error
            .as_deref()
            .unwrap_or("")
            .contains("no process of the pod listens"),
        "{error:?}"
    );
    pf.abort();
    srv.delete(&p).await;
    srv.stop().await;
}

/// A raw WebSocket exec: the messages procnode sends, and how it closes.
async fn ws_exec(
    srv: &Server,
    path: &str,
    protocol: &str,
) -> (Vec<tokio_tungstenite::tungstenite::Message>, Option<u16>) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let mut req = format!("ws://{}{path}", srv.kubelet)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(&srv.kubelet).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("handshake");
    assert_eq!(resp.headers()["sec-websocket-protocol"], protocol);
    let mut messages = Vec::new();
    let mut close = None;
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Close(frame) = &m {
            close = frame.as_ref().map(|f| u16::from(f.code));
            break;
        }
        messages.push(m);
    }
    (messages, close)
}

#[tokio::test]
async fn websocket_sessions_say_ready_encode_per_protocol_and_close_normally() {
    use tokio_tungstenite::tungstenite::Message;
    let srv = Server::start_with_kubelet_api(&[]).await;
    let p = bare_pod("raw", "exec sleep 300", "Always");
    srv.create_running(&p).await;
    let path = exec_path("raw", &["echo", "hi"], "stdout=1");
    let (messages, close) = ws_exec(&srv, &path, "v5.channel.k8s.io").await;
    // Go's clients read a close without status 1000 as an error on every channel.
    assert_eq!(close, Some(1000));
    let binary: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| m.clone().into_data().to_vec())
        .collect();
    assert_eq!(
        binary[0],
        [1u8],
        "an empty message on stdout first: the session is open"
    );
    assert_eq!(binary[1], b"\x01hi\n");
    assert_eq!(binary[2], b"\x03{\"metadata\":{},\"status\":\"Success\"}");
    // base64: text messages, the channel as a digit.
    let (messages, close) = ws_exec(&srv, &path, "v4.base64.channel.k8s.io").await;
    assert_eq!(close, Some(1000));
    assert_eq!(messages[1], Message::text("1aGkK"));
    srv.delete(&p).await;
    srv.stop().await;
}
