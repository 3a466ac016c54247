//! Attacks on a root procnode that need the real binary (so that no procnode runs inside this
//! test process, whose child processes the test waits for itself): a squatter at a supervisor's
//! name after a crash, `procnode run`'s directory, a state directory others may write. See
//! `security.rs` for the rest.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::wait_until;

/// Reads `records/*.status.json` of the only pod in `state_dir`.
fn only_status_record(state_dir: &Path) -> Option<Value> {
    let records = state_dir.join("records");
    let file = std::fs::read_dir(&records)
        .ok()?
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".status.json"))?;
    serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()
}

/// After a crash of procnode, whatever answers at a recorded supervisor name is trusted only
/// when the kernel says it is procnode's own supervisor of that container: a squatter naming
/// another process gets nothing signalled.
#[tokio::test]
async fn a_squatted_supervisor_name_is_never_trusted() {
    if !support::is_root() {
        return;
    }
    let dir = support::StateDir::new();
    let args = ["--default-uid", "65534", "--allowed-uids", "65534"];
    let (mut first, addr) = support::start_binary(dir.path(), &args);
    let http = reqwest::Client::new();
    let p = support::bare_pod("victim", "exec sleep 300", "Never");
    let created = http
        .post(format!("http://{addr}/createPod"))
        .body(p.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let record = wait_until("the start on record", Duration::from_secs(20), || async {
        let r = only_status_record(dir.path())?;
        r["containers"][0]["supervisor"].is_string().then_some(r)
    })
    .await;
    let name = record["containers"][0]["supervisor"]
        .as_str()
        .unwrap()
        .to_string();
    let real = record["containers"][0]["pid"].as_i64().unwrap() as i32;
    // procnode dies; so do the real supervisor and its container.
    let _ = first.kill();
    let _ = first.wait();
    support::kill_pods_of(dir.path());
    wait_until(
        "the real container gone",
        Duration::from_secs(5),
        || async { (!support::pid_alive(real)).then_some(()) },
    )
    .await;
    // A process the squatter wants killed, and the squatter at the supervisor's name.
    let mut target = std::process::Command::new("sleep")
        .arg("300")
        .process_group(0)
        .spawn()
        .unwrap();
    let script = r#"
import os, socket, sys, time
name, pid = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
if name.startswith("/"):
    try: os.unlink(name)
    except FileNotFoundError: pass
    s.bind(name)
else:
    s.bind("\0" + name)
s.listen(8)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    hello = '{"hello":{"pid":%d,"started_ns":0}}\n' % pid
    r, w = os.pipe()
    socket.send_fds(c, [hello.encode()], [r, r])
"#;
    use std::io::BufRead;
    let mut squatter = std::process::Command::new("python3")
        .args(["-c", script, &name, &target.id().to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(squatter.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "listening");
    // procnode comes back, takes the pod back, and is asked to delete it.
    let (mut second, addr) = support::start_binary(dir.path(), &args);
    // (Bounded: a procnode that trusted the squatter waits for an exit it never sends.)
    let deleted = tokio::time::timeout(
        Duration::from_secs(30),
        http.delete(format!("http://{addr}/deletePod"))
            .body(p.to_string())
            .send(),
    )
    .await;
    let deleted = matches!(deleted, Ok(Ok(r)) if r.status() == 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still = matches!(
        nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(target.id() as i32),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG)
        ),
        Ok(nix::sys::wait::WaitStatus::StillAlive)
    );
    let _ = squatter.kill();
    let _ = squatter.wait();
    let _ = target.kill();
    let _ = target.wait();
    let _ = second.kill();
    let _ = second.wait();
    assert!(still, "procnode signalled the process a squatter named");
    assert!(deleted, "the delete finished");
    // No supervisor listens on an abstract name, which anyone could take first: its socket is
    // in a directory only root may write.
    let sup = dir.path().join("sup");
    assert!(name.starts_with(&format!("{}/", sup.display())), "{name}");
    let mode = std::fs::metadata(&sup).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

/// The status record of pod `name` (in `default`, uid `uid-NAME`) in `state_dir`.
fn status_record(state_dir: &Path, name: &str) -> Option<Value> {
    let file = state_dir.join(format!("records/default_{name}_uid-{name}.status.json"));
    serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()
}

/// The real uid of process `pid`.
fn uid_of(pid: i32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

/// A pod's own uid is recorded with it: after a crash of procnode the pod keeps it, and a pod
/// created afterwards gets another one.
#[tokio::test]
async fn a_pods_uid_is_kept_across_a_restart_of_procnode() {
    if !support::is_root() {
        return;
    }
    let dir = support::StateDir::new();
    let http = reqwest::Client::new();
    let create = |addr: String, p: Value| {
        let http = http.clone();
        async move {
            let r = http
                .post(format!("http://{addr}/createPod"))
                .body(p.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
    };
    let recorded = |name: &'static str| {
        let dir = dir.path().to_path_buf();
        async move {
            wait_until(
                "the pod's uid on record",
                Duration::from_secs(20),
                || async {
                    let r = status_record(&dir, name)?;
                    let pid = r["containers"][0]["pid"].as_i64()? as i32;
                    Some((r["podId"].as_u64()? as u32, pid))
                },
            )
            .await
        }
    };
    let (mut first, addr) = support::start_binary(dir.path(), &[]);
    let a = support::bare_pod("first", "exec sleep 300", "Never");
    create(addr, a.clone()).await;
    let (uid_a, pid_a) = recorded("first").await;
    assert_eq!(uid_of(pid_a), Some(uid_a));
    let _ = first.kill();
    let _ = first.wait();
    let (mut second, addr) = support::start_binary(dir.path(), &[]);
    let b = support::bare_pod("second", "exec sleep 300", "Never");
    create(addr.clone(), b.clone()).await;
    let (uid_b, pid_b) = recorded("second").await;
    assert_eq!(uid_of(pid_b), Some(uid_b));
    assert_ne!(uid_a, uid_b, "a new pod never gets a uid on record");
    // The first pod was taken back with its uid, and keeps it on record.
    let (again, _) = recorded("first").await;
    assert_eq!(again, uid_a);
    for p in [&a, &b] {
        let r = http
            .delete(format!("http://{addr}/deletePod"))
            .body(p.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let _ = second.kill();
    let _ = second.wait();
}

#[tokio::test]
async fn procnode_run_uses_a_fresh_private_directory_and_state_dirs_keep_their_mode() {
    if !support::is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let manifest = tmp.path().join("pod.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: where}\nspec:\n  restartPolicy: Never\n  containers:\n  - {name: main, image: busybox, command: [sh, -c, pwd]}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_procnode"))
        .args(["run", manifest.to_str().unwrap()])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let pwd = String::from_utf8_lossy(&out.stdout).to_string();
    let predictable = tmp.path().join("procnode-run-");
    assert!(pwd.starts_with(&predictable.display().to_string()), "{pwd}");
    let suffix = pwd[predictable.display().to_string().len()..]
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(
        suffix.len() == 6 && suffix.parse::<u32>().is_err(),
        "a random name, not a pid: {pwd}"
    );
    // A state dir that others may write is refused and left as it is.
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_procnode"))
        .args([
            "--state-dir",
            shared.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("writable by nobody else"), "{err}");
    let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o1777);
}
