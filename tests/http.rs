//! The HTTP layer under the routes, over real TCP: every error is JSON (hyper's own automatic
//! answers included), slow clients are cut off, and the connection cap answers 503.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;
use support::{wait_until, Server};

/// Sends `request` on a fresh connection and reads the whole answer (the server closes it).
fn raw(base: &str, request: &[u8]) -> (u16, String, String) {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // A server that answers before reading everything may reset the rest: that is fine.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

fn assert_json_error(what: &str, (status, head, body): (u16, String, String), want: u16) {
    assert_eq!(status, want, "{what}: {head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{what}: {head}"
    );
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: {e}: {body:?}"));
    assert_eq!(v["status"], want, "{what}: {v}");
    assert!(!v["error"].as_str().unwrap().is_empty(), "{what}: {v}");
}

#[tokio::test]
async fn every_error_is_json_hypers_own_answers_included() {
    let srv = Server::start(&[]).await;
    let base = srv.base.clone();
    tokio::task::spawn_blocking(move || {
        let close = "Connection: close\r\n";
        assert_json_error(
            "wrong method",
            raw(
                &base,
                format!("GET /createPod HTTP/1.1\r\nHost: x\r\n{close}\r\n").as_bytes(),
            ),
            405,
        );
        let long = "a".repeat(70_000);
        assert_json_error(
            "URI too long",
            raw(
                &base,
                format!("GET /{long} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            ),
            414,
        );
        let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
        assert_json_error(
            "too many headers",
            raw(
                &base,
                format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
            ),
            431,
        );
        assert_json_error("not HTTP", raw(&base, b"NOT HTTP AT ALL\r\n\r\n"), 400);
    })
    .await
    .unwrap();
    srv.stop().await;
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_the_connection_cap_answers_503() {
    let srv = Server::start(&["--header-read-timeout", "1s", "--max-connections", "20"]).await;
    let addr = srv.base.trim_start_matches("http://").to_string();
    // 20 clients that dribble a request head and never finish it: they hold every slot.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .unwrap();
        slow.push(s);
    }
    // Until they are cut off, one more connection is refused at once, with JSON.
    let base = srv.base.clone();
    let refused = tokio::task::spawn_blocking(move || raw(&base, b""))
        .await
        .unwrap();
    assert_json_error("over the cap", refused, 503);
    // Within the header timeout (with a margin for a loaded machine) each slow one is closed.
    let closed = tokio::task::spawn_blocking(move || {
        slow.into_iter()
            .map(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut buf = [0u8; 512];
                // Dribbling on does not help: the head is still incomplete.
                let _ = s.write_all(b"a");
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return true,
                        Ok(_) => continue,
                    }
                }
            })
            .filter(|c| *c)
            .count()
    })
    .await
    .unwrap();
    assert_eq!(closed, 20);
    // And the server serves again; the metrics count what happened.
    let metrics = wait_until(
        "a request served again",
        Duration::from_secs(10),
        || async {
            let r = srv.http.get(srv.url("/metrics")).send().await.ok()?;
            r.status().is_success().then_some(())?;
            r.text().await.ok()
        },
    )
    .await;
    let figure = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    assert!(figure("procnode_http_connections_refused_total") >= 1);
    assert!(figure("procnode_http_header_timeouts_total") >= 20);
    srv.stop().await;
}

/// A shutdown does not wait on a client: a log follow stream still open is cut after a few
/// seconds, and the server returns.
#[tokio::test]
async fn an_open_follow_stream_does_not_hold_a_shutdown() {
    let srv = Server::start(&[]).await;
    let p = support::bare_pod("talker", "while :; do echo tick; sleep 0.2; done", "Always");
    assert_eq!(srv.create(&p).await.status(), 201);
    srv.wait_status("talker", "running", |s| support::phase(s) == "Running")
        .await;
    let mut follow = srv
        .http
        .get(srv.url(
            "/getContainerLogs?namespace=default&podName=talker&containerName=main&follow=true",
        ))
        .send()
        .await
        .unwrap();
    assert!(
        follow.chunk().await.unwrap().is_some(),
        "the stream is open"
    );
    // (Server::stop fails the test if the server has not returned within 30 s.)
    srv.stop().await;
    drop(follow);
}
