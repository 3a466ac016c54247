//! The real `procnode` binary, driven the way the README's quick start drives it: started with
//! `PORT`/`PROCNODE_STATE_DIR`, the example pod posted over HTTP, status, logs, delete, and a
//! SIGTERM that stops every pod and exits 0.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_procnode");

fn start(state_dir: &std::path::Path, extra: &[&str]) -> (Child, String) {
    support::start_binary(state_dir, extra)
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "procnode did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn quick_start_then_sigterm_stops_pods_and_exits_zero() {
    let dir = support::StateDir::new();
    let (mut child, addr) = start(dir.path(), &[]);
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let hello = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/pod-hello.json"
    ))
    .unwrap();
    let sleeper = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/pod-sleeper.json"
    ))
    .unwrap();
    for body in [&hello, &sleeper] {
        let r = http
            .post(format!("{base}/createPod"))
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let status = |name: &'static str| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let r = http
                .get(format!("{base}/getPodStatus?namespace=default&name={name}"))
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()
        }
    };
    support::wait_until("hello to succeed", Duration::from_secs(20), || async {
        (status("hello").await["phase"] == "Succeeded").then_some(())
    })
    .await;
    let logs = http
        .get(format!(
            "{base}/getContainerLogs?namespace=default&podName=hello&containerName=hello&tail=10"
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(logs, "hello from hello\nto-stderr\nbye\n");
    let r = http
        .delete(format!("{base}/deletePod"))
        .header("Content-Type", "application/json")
        .body(hello)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let s = support::wait_until("sleeper to run", Duration::from_secs(20), || async {
        let s = status("sleeper").await;
        (s["phase"] == "Running").then_some(s)
    })
    .await;
    let pgid = support::container_pid(&s, "sleeper").unwrap();

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exit = wait_exit(&mut child, Duration::from_secs(30));
    assert!(exit.success(), "procnode exits 0 on SIGTERM, got {exit}");
    support::assert_groups_gone(&[pgid]).await;
}

#[test]
fn help_lists_every_setting_with_its_default() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "--listen",
        "PORT",
        "PROCNODE_STATE_DIR",
        "--max-pods",
        "[default: 110]",
        "--max-grace-period",
        "--config",
        "PROCNODE_CONFIG",
    ] {
        assert!(help.contains(needle), "--help should mention {needle}");
    }
}

#[test]
fn help_names_the_subcommands_and_each_gives_usage_not_an_error() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for sub in [
        "procnode run FILE",
        "procnode node",
        "procnode health",
        "procnode help",
    ] {
        assert!(help.contains(sub), "--help should name {sub}");
    }
    let out = Command::new(BIN).arg("help").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), help);
    let out = Command::new(BIN).arg("run").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("usage: procnode run FILE"));
    let out = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("usage: procnode run FILE"));
    // A host name resolves.
    let out = Command::new(BIN)
        .args(["--listen", "localhost:3000", "--print-config"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn invalid_configuration_exits_non_zero_with_a_clear_message() {
    let out = Command::new(BIN)
        .args(["--listen", "not-an-address"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("not-an-address"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
}

#[test]
fn flags_beat_environment_beats_config_file_beats_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("procnode.toml");
    std::fs::write(
        &file,
        "max-pods = 50\nbackoff-initial = \"2s\"\nhost-refresh = \"7s\"\nport = 4100\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--print-config", "--port", "4200"])
        .env("PROCNODE_CONFIG", &file)
        .env("PROCNODE_MAX_PODS", "9")
        .env("PROCNODE_HOST_REFRESH", "")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    for line in [
        "max-pods = \"9\"  # environment",
        "backoff-initial = \"2s\"  # config file",
        "host-refresh = \"7s\"  # config file",
        "port = \"4200\"  # flag",
        "backoff-max = \"300s\"  # default",
    ] {
        assert!(printed.contains(line), "expected {line:?} in:\n{printed}");
    }
    // A bad value in the file names the file; the exit code is non-zero.
    std::fs::write(&file, "max-grace-period = \"soon\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("procnode.toml") && err.contains("soon"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
}

/// Under systemd with `Type=notify`: READY=1 only once the API answers, watchdog pings at half
/// the interval, STOPPING=1 on SIGTERM.
#[tokio::test]
async fn tells_systemd_when_ready_pings_the_watchdog_and_says_when_stopping() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .env("PROCNODE_STATE_DIR", dir.path().join("state"))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "300000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("procnode exited").unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if v["fields"]["message"] == "procnode serving" {
            break v["fields"]["addr"].as_str().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let recv = || {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification within 20 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(recv(), "READY=1\n");
    // Ready means serving: the health check answers at once.
    let health = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // The exec probe of the chart: `procnode health` with the same listen setting.
    let probe = Command::new(BIN)
        .args(["health", "--listen", &addr])
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let started = Instant::now();
    assert_eq!(recv(), "WATCHDOG=1\n");
    assert_eq!(recv(), "WATCHDOG=1\n");
    assert!(started.elapsed() < Duration::from_secs(10));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stopping = loop {
        let msg = recv();
        if msg != "WATCHDOG=1\n" {
            break msg;
        }
    };
    assert_eq!(stopping, "STOPPING=1\n");
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
    let probe = Command::new(BIN)
        .args(["health", "--listen", &addr])
        .output()
        .unwrap();
    assert_eq!(probe.status.code(), Some(1), "nothing listens any more");
    assert!(String::from_utf8_lossy(&probe.stderr).contains(&addr));
}

#[tokio::test]
async fn serves_on_a_unix_socket_only_its_user_can_open() {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("procnode.sock");
    let listen = format!("unix:{}", sock.display());
    let mut child = Command::new(BIN)
        .args(["--listen", &listen])
        .env("PROCNODE_STATE_DIR", dir.path().join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    support::wait_until("the socket", Duration::from_secs(10), || async {
        sock.exists().then_some(())
    })
    .await;
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    s.write_all(b"GET /operatingSystem HTTP/1.1\r\nHost: procnode\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("linux"), "{answer}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
}

#[tokio::test]
async fn a_root_agent_runs_pods_without_run_as_user_as_a_uid_of_their_own() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the default user applies when procnode runs as root");
        return;
    }
    let dir = support::StateDir::new();
    let (mut child, addr) = start(dir.path(), &[]);
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let mut p: Value = serde_json::from_str(include_str!("fixtures/pod-hello.json")).unwrap();
    p["spec"]["containers"][0]["command"] =
        serde_json::json!(["sh", "-c", "id -u; touch here && echo can-write-own-dir"]);
    assert_eq!(
        http.post(format!("{base}/createPod"))
            .body(p.to_string())
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    let logs = support::wait_until("output", Duration::from_secs(20), || async {
        let text = http
            .get(format!(
                "{base}/getContainerLogs?namespace=default&podName=hello&containerName=hello"
            ))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (text.lines().count() == 2).then_some(text)
    })
    .await;
    let (uid, rest) = logs.split_once('\n').unwrap();
    let uid: u32 = uid.parse().unwrap();
    assert!(
        (0x7000_0000..=0x7000_ffff).contains(&uid),
        "a uid from the default --pod-uid-range: {logs}"
    );
    assert_eq!(rest, "can-write-own-dir\n");
    http.delete(format!("{base}/deletePod"))
        .body(p.to_string())
        .send()
        .await
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
}

#[test]
fn run_executes_a_job_manifest_and_exits_with_the_pods_result() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.yaml");
    std::fs::write(
        &job,
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: hello}\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: main\n        image: busybox\n        command: [sh, -c, 'echo computing; echo 3.14159']\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", job.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "computing\n3.14159\n");

    let failing = dir.path().join("pod.json");
    let mut p: Value = serde_json::from_str(include_str!("fixtures/pod-hello.json")).unwrap();
    p["spec"]["containers"][0]["command"] = serde_json::json!(["sh", "-c", "echo trying; exit 3"]);
    std::fs::write(&failing, p.to_string()).unwrap();
    let out = Command::new(BIN)
        .args(["run", failing.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "trying\n");

    let out = Command::new(BIN)
        .args(["run", "/no/such/file.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/file.yaml"));
}

/// examples/lifecycle.rs against the real binary: the README's "drive the API directly" path.
#[test]
fn the_lifecycle_example_runs_a_job_like_pod_to_success() {
    // cargo test builds the examples next to the test binaries: target/debug/examples/.
    let example = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("examples/lifecycle"))
        .unwrap();
    assert!(example.exists(), "{} not built", example.display());
    let dir = support::StateDir::new();
    let (mut child, addr) = start(dir.path(), &["--backoff-initial", "200ms"]);
    let out = Command::new(&example)
        .arg(format!("http://{addr}"))
        .output()
        .unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "waiting (CrashLoopBackOff), restarts 0, last exit 3 (Error)",
        "phase Succeeded, container terminated (Completed), restarts 1",
        "| first run: failing",
        "| second run: done",
        "GET /getPod after delete: 404",
    ] {
        assert!(
            printed.contains(needle),
            "expected {needle:?} in:\n{printed}"
        );
    }
}

fn run_manifest(dir: &std::path::Path, yaml: &str) -> (Option<i32>, String, String) {
    let file = dir.join(format!("job-{}.yaml", yaml.len()));
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(BIN)
        .args(["run", file.to_str().unwrap(), "--backoff-initial", "50ms"])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `procnode run` applies a Job's completions, parallelism, backoffLimit (failed pods and
/// container restarts) and activeDeadlineSeconds as the Job controller does.
#[test]
fn run_applies_the_job_controllers_rules() {
    let dir = tempfile::tempdir().unwrap();
    let job = |spec: &str, policy: &str, script: &str| {
        format!(
            "kind: Job\nmetadata: {{name: j}}\nspec:\n{spec}  template:\n    spec:\n      restartPolicy: {policy}\n      terminationGracePeriodSeconds: 2\n      containers:\n      - name: c\n        image: busybox\n        command: [sh, -c, '{script}']\n        env: [{{name: POD, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]\n"
        )
    };

    // Three completions, two at a time: three pods, each printing its name once.
    let (code, out, err) = run_manifest(
        dir.path(),
        &job(
            "  completions: 3\n  parallelism: 2\n",
            "Never",
            "echo ran $POD; sleep 0.2",
        ),
    );
    assert_eq!(code, Some(0), "{err}");
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(lines, ["ran j-1", "ran j-2", "ran j-3"]);

    // Always failing with restartPolicy Never: backoffLimit 2 allows three pods.
    let (code, out, err) = run_manifest(
        dir.path(),
        &job("  backoffLimit: 2\n", "Never", "echo try $POD; exit 7"),
    );
    assert_eq!(code, Some(7), "{err}");
    assert_eq!(out, "try j-1\ntry j-2\ntry j-3\n");
    assert!(err.contains("BackoffLimitExceeded"), "{err}");

    // OnFailure: restarts in place count against the limit.
    let (code, out, err) = run_manifest(
        dir.path(),
        &job("  backoffLimit: 1\n", "OnFailure", "echo again; exit 5"),
    );
    assert_eq!(code, Some(5), "{err}");
    assert!(out.lines().count() >= 2, "{out}");
    assert!(
        err.contains("BackoffLimitExceeded") && err.contains("container restarts"),
        "{err}"
    );

    // A failure, then success: the second pod completes the Job.
    // (Pods run as nobody when procnode is root: give them a directory they may write.)
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let marker = shared.join("first-done");
    let script = format!(
        "if [ -e {m} ]; then echo second; else touch {m}; exit 1; fi",
        m = marker.display()
    );
    let (code, out, err) = run_manifest(dir.path(), &job("", "Never", &script));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "second\n");

    // The deadline stops a Job that would run for minutes.
    let (code, _, err) = run_manifest(
        dir.path(),
        &job("  activeDeadlineSeconds: 1\n", "Never", "exec sleep 300"),
    );
    assert_eq!(code, Some(143), "SIGTERM ends the sleep: {err}");
    assert!(err.contains("DeadlineExceeded"), "{err}");
}

/// The shipped kubectl Job example runs unchanged under `procnode run`.
#[test]
fn the_job_example_runs_under_procnode_run() {
    let out = Command::new(BIN)
        .args([
            "run",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/job.yaml"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("hello from ") && stdout.contains("the answer is 42"),
        "{stdout}"
    );
}

/// A pod is admitted only if its containers fit procnode's descriptor budget: with a small
/// RLIMIT_NOFILE, the pod that would not fit is Failed with reason OutOfnofile (as the
/// kubelet reports OutOfpods), the others run, and everything still answers and deletes. A
/// pod with more containers than --max-containers-per-pod is refused with a 400.
#[tokio::test]
async fn pods_past_the_descriptor_budget_are_refused_admission_and_nothing_breaks() {
    use std::os::unix::process::CommandExt;
    let dir = support::StateDir::new();
    let (mut child, addr) = support::start_binary_with(
        dir.path(),
        &["--max-containers-per-pod", "30"],
        |cmd| unsafe {
            cmd.pre_exec(|| {
                let limit = 400;
                nix::sys::resource::setrlimit(
                    nix::sys::resource::Resource::RLIMIT_NOFILE,
                    limit,
                    limit,
                )
                .map_err(std::io::Error::from)
            });
        },
    );
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let many = |name: &str, n: usize| {
        let mut p = support::bare_pod(name, "exec sleep 300", "Always");
        let c = p["spec"]["containers"][0].clone();
        p["spec"]["containers"] = Value::Array(
            (0..n)
                .map(|i| {
                    let mut c = c.clone();
                    c["name"] = Value::from(format!("c{i}"));
                    c
                })
                .collect(),
        );
        p
    };
    let too_many = many("crowd", 31);
    let r = http
        .post(format!("{base}/createPod"))
        .body(too_many.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("spec.containers"),
        "{body}"
    );
    // 400 - 256 reserved - 25 log files kept open (a sixteenth), one descriptor per
    // container (its supervisor's connection): 119 containers fit, so the fourth pod of 30
    // does not.
    let mut failed = None;
    for i in 0..4 {
        let p = many(&format!("part-{i}"), 30);
        let r = http
            .post(format!("{base}/createPod"))
            .body(p.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let s: Value = http
            .get(format!(
                "{base}/getPodStatus?namespace=default&name=part-{i}"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if s["phase"] == "Failed" {
            failed = Some((i, s));
        }
    }
    let (i, s) = failed.expect("a pod past the budget");
    assert_eq!(i, 3, "the first three fit");
    assert_eq!(s["reason"], "OutOfnofile", "{s}");
    assert!(s["message"].as_str().unwrap().contains("open files"), "{s}");
    for i in 0..4 {
        let r = http
            .delete(format!("{base}/deletePod"))
            .body(many(&format!("part-{i}"), 30).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
}

/// An operator reading procnode's log sees each pod's life at info level: created, container
/// started, exited (with its exit code and reason), restarted, deleted.
#[tokio::test]
async fn the_log_tells_each_pods_life_at_info_level() {
    let dir = support::StateDir::new();
    let (mut child, addr, logs) =
        support::start_binary_logged(dir.path(), &["--backoff-initial", "100ms"], |cmd| {
            cmd.env("PROCNODE_LOG", "info");
        });
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let p = support::bare_pod("chatty", "exit 3", "OnFailure");
    let r = http
        .post(format!("{base}/createPod"))
        .body(p.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let said = |message: &str, extra: &dyn Fn(&Value) -> bool| {
        logs.lock().unwrap().iter().any(|l| {
            l["level"] == "INFO" && l["fields"]["message"] == message && extra(&l["fields"])
        })
    };
    support::wait_until("a restart logged", Duration::from_secs(20), || async {
        (said("container exited", &|f| {
            f["exit_code"] == 3 && f["reason"] == "Error"
        }) && said("restarting container", &|f| f["container"] == "main"))
        .then_some(())
    })
    .await;
    assert!(said("pod created", &|f| f["pod"] == "default/chatty"));
    assert!(said("container started", &|f| f["container"] == "main"));
    let r = http
        .delete(format!("{base}/deletePod"))
        .body(p.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    support::wait_until("the delete logged", Duration::from_secs(10), || async {
        said("pod deleted", &|f| f["pod"] == "default/chatty").then_some(())
    })
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
}

/// Without HOME (and not root), procnode does not fall back to a state directory other users
/// could share: it says what to set.
#[test]
fn without_home_a_non_root_procnode_says_where_to_keep_its_state() {
    use std::os::unix::process::CommandExt;
    if !support::is_root() {
        return;
    }
    let out = Command::new(BIN)
        .arg("--print-config")
        .env_clear()
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("no state directory") && err.contains("--state-dir"),
        "{err}"
    );
    let out = Command::new(BIN)
        .arg("--print-config")
        .env_clear()
        .env("HOME", "/nonexistent-home")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Node mode with a kubeconfig that names no cluster CA (insecure-skip-tls-verify) and no
/// --kubelet-client-ca: the kubelet API could not verify the API server's client certificate,
/// and procnode says so at start, naming the flag.
#[test]
fn node_mode_warns_when_it_cannot_verify_the_api_servers_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
    )
    .unwrap();
    let log = dir.path().join("log");
    let mut child = Command::new(BIN)
        .args([
            "node",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--kubelet-port",
            "0",
        ])
        .env("PROCNODE_STATE_DIR", dir.path().join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("--kubelet-client-ca") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = wait_exit(&mut child, Duration::from_secs(30));
    assert!(
        text.contains("no cluster CA") && text.contains("--kubelet-client-ca"),
        "{text}"
    );
}

/// Two procnodes on one state directory would take over each other's supervisors and
/// records: the second is refused, naming the first.
#[tokio::test]
async fn a_second_procnode_on_the_same_state_directory_is_refused() {
    let dir = support::StateDir::new();
    let (mut first, _) = start(dir.path(), &[]);
    let second = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0"])
        .env("PROCNODE_STATE_DIR", dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{err}");
    assert!(
        err.contains("in use by another procnode") && err.contains(&first.id().to_string()),
        "{err}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(wait_exit(&mut first, Duration::from_secs(30)).success());
}

/// `procnode run` treats a sidecar (an init container with `restartPolicy: Always`) as the
/// kubelet does: it runs beside the Job's container, does not hold the pod from completing,
/// and is stopped once the Job's container is done; the result is the Job container's.
#[test]
fn run_completes_a_job_whose_pod_has_a_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: with-sidecar}\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      terminationGracePeriodSeconds: 5\n      initContainers:\n      - name: logger\n        restartPolicy: Always\n        command: [sh, -c, 'echo sidecar up; trap \"echo sidecar stopping; exit 0\" TERM; while true; do sleep 0.1; done']\n      containers:\n      - name: main\n        command: [sh, -c, 'sleep 0.5; echo job done']\n";
    let (code, stdout, stderr) = run_manifest(dir.path(), yaml);
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("sidecar up"), "{stdout}");
    assert!(stdout.contains("job done"), "{stdout}");
    // Stopped with TERM once the Job's container was done.
    assert!(stdout.contains("sidecar stopping"), "{stdout}");
    let failing = yaml.replace("echo job done", "echo job failed; exit 4");
    let (code, stdout, _) = run_manifest(dir.path(), &failing);
    assert_eq!(code, Some(4), "the Job container's code: {stdout}");
}

/// procnode starts `procnode-shim` (the supervisor alone) beside itself for each container,
/// and the supervisor does its job: the pod runs, is deleted, and nothing is left.
#[tokio::test]
async fn the_supervisor_installed_beside_procnode_is_the_one_started() {
    let dir = support::StateDir::new();
    let (mut child, addr) = start(dir.path(), &[]);
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let p = support::bare_pod("small-sup", "exec sleep 300", "Always");
    let created = http
        .post(format!("{base}/createPod"))
        .body(p.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let s: Value = support::wait_until("running", Duration::from_secs(20), || async {
        let s: Value = http
            .get(format!(
                "{base}/getPodStatus?namespace=default&name=small-sup"
            ))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (support::phase(&s) == "Running").then_some(s)
    })
    .await;
    let pid = support::container_pid(&s, "main").unwrap();
    let supervisor = support::parent_of(pid);
    let exe = std::fs::read_link(format!("/proc/{supervisor}/exe")).unwrap();
    assert_eq!(
        exe,
        std::path::Path::new(BIN).with_file_name("procnode-shim"),
        "the small supervisor"
    );
    let deleted = http
        .delete(format!("{base}/deletePod"))
        .body(p.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert!(!support::pid_alive(pid) && !support::pid_alive(supervisor));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
}
