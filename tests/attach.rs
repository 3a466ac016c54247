//! `kubectl attach` against the kubelet API: a client joins a running container's own stdin and
//! output (`stdin: true`, `stdinOnce`, `tty: true` in the pod spec), over SPDY as the API
//! server speaks it and over WebSocket with kube-rs's own client; and after procnode restarts,
//! the supervisor hands the container's stdin back.

mod support;

use std::time::Duration;

use procnode::stream::spdy::Frame;
use serde_json::{json, Value};
use support::spdy::{upgrade, Client};
use support::{bare_pod, phase, wait_until, Server};

const V4: &str = "v4.channel.k8s.io";

fn interactive(name: &str, script: &str, once: bool, tty: bool) -> Value {
    let mut p = bare_pod(name, script, "Always");
    let c = &mut p["spec"]["containers"][0];
    c["stdin"] = json!(true);
    c["stdinOnce"] = json!(once);
    c["tty"] = json!(tty);
    p
}

/// An attach over SPDY with stdin, stdout and stderr: the client and its stream ids.
async fn attach(srv: &Server, pod: &str) -> (Client, u32, u32, u32) {
    match try_attach(srv, pod).await {
        Ok(attached) => attached,
        Err(refusal) => panic!("{refusal}"),
    }
}

/// [`attach`], or the refusal (status and body).
async fn try_attach(srv: &Server, pod: &str) -> Result<(Client, u32, u32, u32), String> {
    let path = format!("/attach/default/{pod}/main?stdin=1&stdout=1&stderr=1");
    let up = upgrade(&srv.kubelet, &path, &[V4]).await;
    if up.status != 101 {
        return Err(format!("{}: {}", up.status, up.body));
    }
    let mut c = up.client.unwrap();
    let error = c.open(&[("streamType", "error")]).await;
    let stdin = c.open(&[("streamType", "stdin")]).await;
    let stdout = c.open(&[("streamType", "stdout")]).await;
    c.open(&[("streamType", "stderr")]).await;
    Ok((c, error, stdin, stdout))
}

/// Reads `stream`'s data until it contains `want`.
async fn read_until(c: &mut Client, stream: u32, want: &str) -> String {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !String::from_utf8_lossy(&got).contains(want) {
            match c.frame().await.expect("the session is open") {
                Frame::Data { id, data, .. } if id == stream => got.extend_from_slice(&data),
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{want:?} in time; got {:?}", String::from_utf8_lossy(&got)));
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn an_attached_client_writes_to_stdin_and_reads_what_the_logs_also_keep() {
    let srv = Server::start_with_kubelet_api(&[]).await;
    let p = interactive(
        "echo",
        r#"while read line; do echo "got $line"; echo "err $line" >&2; done"#,
        false,
        false,
    );
    srv.create_running(&p).await;
    let (mut c, _, stdin, stdout) = attach(&srv, "echo").await;
    c.send(stdin, b"one\n", false).await;
    read_until(&mut c, stdout, "got one").await;
    c.hang_up();
    // A second client, after the first left: stdin stays open (no stdinOnce).
    let (mut c, _, stdin, stdout) = attach(&srv, "echo").await;
    c.send(stdin, b"two\n", true).await;
    read_until(&mut c, stdout, "got two").await;
    // The logs have all of it, once.
    let (code, logs) = srv.logs("echo", "main", "").await;
    assert_eq!(code, 200);
    assert_eq!(logs.matches("got one").count(), 1, "{logs}");
    assert_eq!(logs.matches("got two").count(), 1, "{logs}");
    assert!(logs.contains("err two"), "{logs}");
    c.hang_up();
    srv.delete(&p).await;
    srv.stop().await;
}

#[tokio::test]
async fn stdin_once_closes_stdin_when_the_first_client_is_done() {
    let srv = Server::start_with_kubelet_api(&[]).await;
    let p = interactive(
        "once",
        "cat; echo stdin-closed; exec sleep 300",
        true,
        false,
    );
    srv.create_running(&p).await;
    let (mut c, _, stdin, stdout) = attach(&srv, "once").await;
    c.send(stdin, b"only once\n", true).await;
    let out = read_until(&mut c, stdout, "stdin-closed").await;
    assert!(out.contains("only once"), "{out:?}");
    c.hang_up();
    // Its stdin is closed now: another client cannot write to it (it may still watch).
    let up = upgrade(
        &srv.kubelet,
        "/attach/default/once/main?stdin=1&stdout=1",
        &[V4],
    )
    .await;
    assert_eq!(up.status, 400, "{}", up.body);
    assert!(up.body.contains("no stdin"), "{}", up.body);
    let up = upgrade(&srv.kubelet, "/attach/default/once/main?stdout=1", &[V4]).await;
    assert_eq!(up.status, 101, "{}", up.body);
    // A container without stdin: 400.
    let plain = bare_pod("plain", "exec sleep 300", "Always");
    srv.create_running(&plain).await;
    let up = upgrade(
        &srv.kubelet,
        "/attach/default/plain/main?stdin=1&stdout=1",
        &[V4],
    )
    .await;
    assert_eq!(up.status, 400, "{}", up.body);
    srv.delete(&p).await;
    srv.delete(&plain).await;
    srv.stop().await;
}

#[tokio::test]
async fn a_tty_container_is_attached_over_websocket_with_kube_rs() {
    use futures_util::SinkExt;
    use kube::api::{AttachParams, TerminalSize};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = Server::start_with_kubelet_api(&[]).await;
    let p = interactive("term", "exec sh", false, true);
    srv.create_running(&p).await;
    let pods = support::apiserver::kube_pods(&srv).await;
    let mut attached = pods
        .attach("term", &AttachParams::interactive_tty().container("main"))
        .await
        .expect("attach");
    let mut size = attached.terminal_size().unwrap();
    size.send(TerminalSize {
        width: 91,
        height: 33,
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut stdin = attached.stdin().unwrap();
    stdin
        .write_all(b"stty size; echo answer-$((6*7))\n")
        .await
        .unwrap();
    let mut stdout = attached.stdout().unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&out).contains("answer-42") {
            let n = stdout.read(&mut buf).await.unwrap();
            assert!(n > 0, "output ended: {:?}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("in time: {:?}", String::from_utf8_lossy(&out)));
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("33 91"), "{out:?}");
    // The shell exits: the session ends.
    stdin.write_all(b"exit\n").await.unwrap();
    let status = attached.take_status().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), status)
        .await
        .expect("the session ends with the run");
    assert_eq!(status.and_then(|s| s.status).as_deref(), Some("Success"));
    srv.delete(&p).await;
    srv.stop().await;
}

#[tokio::test]
async fn attach_works_after_procnode_restarts() {
    let dir = support::StateDir::new();
    let state = dir.path().to_str().unwrap().to_string();
    let args = ["--state-dir", &state, "--stop-pods-on-exit=false"];
    let srv = Server::start_with_kubelet_api(&args).await;
    let p = interactive(
        "survivor",
        r#"while read line; do echo "got $line"; done"#,
        false,
        false,
    );
    srv.create_running(&p).await;
    let before = srv.status("survivor").await.unwrap();
    srv.stop_leaving_pods().await;

    let srv = Server::start_with_kubelet_api(&args).await;
    srv.wait_status("survivor", "Running again", |s| phase(s) == "Running")
        .await;
    let after = srv.status("survivor").await.unwrap();
    assert_eq!(
        after["containerStatuses"][0]["containerID"], before["containerStatuses"][0]["containerID"],
        "the same run, taken back"
    );
    // (The run is listed Running from its record before procnode has taken it back and
    // published its stdin: until then an attach is refused.)
    let (mut c, _, stdin, stdout) = wait_until("an attach", Duration::from_secs(10), || async {
        try_attach(&srv, "survivor").await.ok()
    })
    .await;
    c.send(stdin, b"after the restart\n", false).await;
    read_until(&mut c, stdout, "got after the restart").await;
    c.hang_up();
    srv.delete(&p).await;
    srv.stop().await;
}

#[tokio::test]
async fn attach_works_without_supervisors_too() {
    let srv = Server::start_with_kubelet_api(&["--supervisor", "none"]).await;
    let p = interactive(
        "direct",
        r#"while read line; do echo "got $line"; done"#,
        false,
        false,
    );
    srv.create_running(&p).await;
    let (mut c, _, stdin, stdout) = attach(&srv, "direct").await;
    c.send(stdin, b"direct\n", false).await;
    read_until(&mut c, stdout, "got direct").await;
    c.hang_up();
    // A terminal: its output (echo included) is all on stdout.
    let t = interactive("direct-tty", "exec sh", false, true);
    srv.create_running(&t).await;
    let path = "/attach/default/direct-tty/main?stdin=1&stdout=1&tty=1";
    let mut c = upgrade(&srv.kubelet, path, &[V4]).await.client.unwrap();
    c.open(&[("streamType", "error")]).await;
    let stdin = c.open(&[("streamType", "stdin")]).await;
    let stdout = c.open(&[("streamType", "stdout")]).await;
    c.open(&[("streamType", "resize")]).await;
    c.send(stdin, b"echo tty-$((40+2))\n", false).await;
    read_until(&mut c, stdout, "tty-42").await;
    c.hang_up();
    srv.delete(&p).await;
    srv.delete(&t).await;
    srv.stop().await;
}
