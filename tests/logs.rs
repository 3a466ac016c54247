//! Logs the way `kubectl logs` users expect them, against a real server and real processes:
//! every option alone and combined, `previous`, `follow`, log files, and a server that stays
//! responsive while children flood their output.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use support::{container, phase, pod, sh, wait_until, Server};

fn stamp_and_text(line: &str) -> (jiff::Timestamp, &str) {
    let (stamp, text) = line.split_once(' ').expect("timestamped line");
    (stamp.parse().expect("RFC 3339 timestamp"), text)
}

#[tokio::test]
async fn every_option_alone_and_combined() {
    let srv = Server::start(&[]).await;
    let p = pod(
        "opts",
        // Stream switches are spaced out: two pipes written microseconds apart have no order.
        &sh("echo out-1; sleep 0.2; echo err-1 >&2; sleep 1.2; echo out-2; sleep 0.2; echo err-2 >&2; sleep 0.2; printf partial"),
        "Never",
    );
    srv.create(&p).await;
    srv.wait_status("opts", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    let get = |q: &'static str| srv.logs("opts", "main", q);

    assert_eq!(
        get("").await,
        (200, "out-1\nerr-1\nout-2\nerr-2\npartial".into())
    );
    assert_eq!(
        get("&tail=2").await.1,
        "err-2\npartial",
        "a partial last line counts as a line"
    );
    assert_eq!(
        get("&tail=-1").await.1,
        "out-1\nerr-1\nout-2\nerr-2\npartial"
    );
    assert_eq!(get("&stream=stdout").await.1, "out-1\nout-2\npartial");
    assert_eq!(get("&stream=stderr&tail=1").await.1, "err-2\n");
    assert_eq!(get("&limitBytes=8").await.1, "out-1\ner");
    assert_eq!(
        get("&sinceSeconds=3600").await.1,
        "out-1\nerr-1\nout-2\nerr-2\npartial"
    );

    let (_, stamped) = get("&timestamps=true").await;
    let lines: Vec<&str> = stamped.lines().collect();
    assert_eq!(lines.len(), 5, "{stamped}");
    let parsed: Vec<(jiff::Timestamp, &str)> = lines.iter().map(|l| stamp_and_text(l)).collect();
    let texts: Vec<&str> = parsed.iter().map(|(_, t)| *t).collect();
    assert_eq!(texts, ["out-1", "err-1", "out-2", "err-2", "partial"]);
    assert!(
        parsed[2].0.duration_since(parsed[0].0) >= jiff::SignedDuration::from_secs(1),
        "capture times are real: {stamped}"
    );

    // sinceTime at out-2's capture time: out-1/err-1 are older.
    let since = lines[2].split(' ').next().unwrap().to_string();
    let (code, text) = srv
        .logs("opts", "main", &format!("&sinceTime={since}"))
        .await;
    assert_eq!((code, text.as_str()), (200, "out-2\nerr-2\npartial"));
    let (_, text) = srv
        .logs(
            "opts",
            "main",
            &format!("&sinceTime={since}&stream=stderr&timestamps=true&tail=1"),
        )
        .await;
    let (_, t) = stamp_and_text(text.trim_end());
    assert_eq!(t, "err-2");

    let (code, text) = srv
        .logs(
            "opts",
            "main",
            "&sinceSeconds=5&sinceTime=2026-01-01T00:00:00Z",
        )
        .await;
    assert_eq!(code, 400);
    assert!(text.contains("at most one"), "{text}");
    let (code, text) = get("&previous=true").await;
    assert_eq!(code, 400);
    assert!(text.contains("previous terminated container"), "{text}");
    srv.delete(&p).await;
    srv.stop().await;
}

#[tokio::test]
async fn previous_returns_the_run_before_a_restart() {
    let srv = Server::start(&[]).await;
    let p = pod(
        "again",
        &sh("n=$(cat n 2>/dev/null || echo 0); n=$((n+1)); echo $n > n; echo run-$n; [ $n -ge 2 ] && exec sleep 300; exit 1"),
        "OnFailure",
    );
    srv.create(&p).await;
    srv.wait_status("again", "restarted and running", |s| {
        container(s, "main")["restartCount"] == 1 && phase(s) == "Running"
    })
    .await;
    wait_until("second run output", Duration::from_secs(10), || async {
        (srv.logs("again", "main", "").await.1 == "run-2\n").then_some(())
    })
    .await;
    assert_eq!(
        srv.logs("again", "main", "&previous=true").await,
        (200, "run-1\n".into())
    );
    srv.delete(&p).await;
    srv.stop().await;
}

#[tokio::test]
async fn follow_streams_later_output_and_ends_when_the_process_exits() {
    let srv = Server::start(&[]).await;
    let marks = tempfile::tempdir().unwrap();
    let go = marks.path().join("go");
    let mut p = pod(
        "follow",
        &sh("echo first; while [ ! -f \"$GO\" ]; do sleep 0.05; done; echo second; sleep 0.2; echo third"),
        "Never",
    );
    p["spec"]["containers"][0]["env"] = json!([{"name": "GO", "value": go.to_str().unwrap()}]);
    srv.create(&p).await;
    wait_until("first line", Duration::from_secs(10), || async {
        (srv.logs("follow", "main", "").await.1 == "first\n").then_some(())
    })
    .await;
    let resp = srv
        .http
        .get(srv.url(
            "/getContainerLogs?namespace=default&podName=follow&containerName=main&follow=true",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut got = Vec::new();
    while got != b"first\n" {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.extend_from_slice(&chunk);
    }
    std::fs::write(&go, "").unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = body.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
    })
    .await;
    assert!(rest.is_ok(), "the follow ended when the process exited");
    assert_eq!(String::from_utf8(got).unwrap(), "first\nsecond\nthird\n");
    srv.delete(&p).await;
    srv.stop().await;
}

#[tokio::test]
async fn a_client_leaving_mid_follow_leaks_no_task() {
    let srv = Server::start(&[]).await;
    let p = pod(
        "chatty",
        &sh("while :; do echo tick; sleep 0.05; done"),
        "Always",
    );
    srv.create(&p).await;
    srv.wait_status("chatty", "Running", |s| phase(s) == "Running")
        .await;
    let metrics = tokio::runtime::Handle::current().metrics();
    // Let the server settle: the one connection of `srv.http` is open and idle.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = metrics.num_alive_tasks();
    for _ in 0..3 {
        let client = reqwest::Client::new();
        let resp = client
            .get(srv.url("/getContainerLogs?namespace=default&podName=chatty&containerName=main&follow=true&tail=1"))
            .send()
            .await
            .unwrap();
        let mut body = resp.bytes_stream();
        for _ in 0..3 {
            tokio::time::timeout(Duration::from_secs(10), body.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
        drop(body);
        drop(client);
    }
    wait_until(
        "connection tasks to end",
        Duration::from_secs(10),
        || async { (metrics.num_alive_tasks() <= before).then_some(()) },
    )
    .await;
    srv.delete(&p).await;
    srv.stop().await;
}

#[tokio::test]
async fn log_files_keep_output_in_cri_format_and_go_with_the_pod() {
    let srv = Server::start(&["--log-files"]).await;
    let p = pod(
        "filed",
        &sh("echo hello; sleep 0.2; echo oops >&2; sleep 0.2; printf 'no newline'"),
        "Never",
    );
    srv.create(&p).await;
    srv.wait_status("filed", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    let dir = srv.state_dir.path().join("logs/default_filed_uid-filed");
    let text = std::fs::read_to_string(dir.join("main/0.log")).unwrap();
    let entries: Vec<(&str, &str, &str)> = text
        .lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let stamp = f.next().unwrap();
            assert!(stamp.parse::<jiff::Timestamp>().is_ok(), "{l}");
            (f.next().unwrap(), f.next().unwrap(), f.next().unwrap_or(""))
        })
        .collect();
    assert_eq!(
        entries,
        [
            ("stdout", "F", "hello"),
            ("stderr", "F", "oops"),
            ("stdout", "P", "no newline")
        ]
    );
    srv.delete(&p).await;
    assert!(!dir.exists(), "log files go with the pod");
    srv.stop().await;
}

#[tokio::test]
async fn procnode_stays_responsive_while_children_flood_their_output() {
    let srv = Server::start(&["--log-buffer-bytes", "262144"]).await;
    let line = "x".repeat(99);
    let floods: Vec<_> = (0..4)
        .map(|i| pod(&format!("flood-{i}"), &["yes", line.as_str()], "Always"))
        .collect();
    for p in &floods {
        srv.create(p).await;
    }
    for i in 0..4 {
        srv.wait_status(&format!("flood-{i}"), "Running", |s| phase(s) == "Running")
            .await;
    }
    for _ in 0..50 {
        assert!(srv.status("flood-0").await.is_some());
        let r = srv.http.get(srv.url("/capacity")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let (code, text) = srv.logs("flood-1", "main", "&tail=1").await;
        assert_eq!(code, 200);
        assert_eq!(text, format!("{line}\n"));
    }
    for p in &floods {
        assert_eq!(srv.delete(p).await.status(), 200);
    }
    srv.stop().await;
}

#[tokio::test]
async fn binary_output_and_very_long_lines_pass_through_untouched() {
    let srv = Server::start(&[]).await;
    // 256 distinct byte values, then one 200 000-byte line.
    let p = pod(
        "bytes",
        &sh("i=0; while [ $i -lt 256 ]; do printf \"\\\\$(printf %o $i)\"; i=$((i+1)); done; head -c 200000 /dev/zero | tr '\\0' y; echo"),
        "Never",
    );
    srv.create(&p).await;
    srv.wait_status("bytes", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    let body = srv
        .http
        .get(srv.url("/getContainerLogs?namespace=default&podName=bytes&containerName=main"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut want: Vec<u8> = (0..=255u8).collect();
    want.extend(std::iter::repeat_n(b'y', 200_000));
    want.push(b'\n');
    assert_eq!(body.len(), want.len());
    assert!(body[..] == want[..], "bytes differ");
    srv.delete(&p).await;
    srv.stop().await;
}

#[tokio::test]
async fn follow_streams_are_capped_and_a_closed_one_frees_its_slot() {
    let srv = Server::start(&["--max-follow-streams", "1"]).await;
    let p = pod(
        "capped",
        &sh("while :; do echo tick; sleep 0.05; done"),
        "Always",
    );
    srv.create(&p).await;
    srv.wait_status("capped", "Running", |s| phase(s) == "Running")
        .await;
    let url = srv.url(
        "/getContainerLogs?namespace=default&podName=capped&containerName=main&follow=true&tail=1",
    );
    let first = srv.http.get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let mut body = first.bytes_stream();
    tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let second = srv.http.get(&url).send().await.unwrap();
    assert_eq!(second.status(), 429);
    // Plain reads are not follow streams and are not capped.
    assert_eq!(srv.logs("capped", "main", "&tail=1").await.0, 200);
    drop(body);
    wait_until(
        "the slot to be free again",
        Duration::from_secs(10),
        || async {
            let r = reqwest::get(&url).await.ok()?;
            (r.status() == 200).then_some(())
        },
    )
    .await;
    srv.delete(&p).await;
    srv.stop().await;
}
