//! Attacks on a root procnode, each run as a real pod (or a real local process) against a real
//! server, with canary files and directories in the test's own temporary directory: a pod spec
//! alone, or a container helping it, must not reach anything on the host that Kubernetes would
//! not give it. Each test asserts that the canary is untouched, nothing was made outside the
//! state directory, and the request or the container got a clear error.
//!
//! These tests need root (CI runs as root); as another user each one says so and passes.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use support::{container, phase, sh, wait_until, Server};

/// A canary directory (mode 0700, one file in it) in a fresh temporary directory.
struct Canary {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Canary {
    fn new() -> Canary {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("canary");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("keep"), "canary").unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        Canary { _tmp: tmp, dir }
    }

    /// The canary as a path that climbs out of any directory (`/../../../..` then the path).
    fn climbing(&self) -> String {
        format!("{}{}", "../".repeat(12), self.dir.display())
    }

    fn assert_untouched(&self) {
        let mode = std::fs::metadata(&self.dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "the canary's mode changed");
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["keep"], "something was made in the canary");
        assert_eq!(
            std::fs::read_to_string(self.dir.join("keep")).unwrap(),
            "canary"
        );
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&self.dir.display().to_string()),
            "a mount was left on the canary"
        );
    }
}

/// A state directory as procnode makes one (0711), so that pods running as other users reach
/// their own directories by path: the attacks below then meet procnode's own defences, not a
/// closed test directory.
struct OpenStateDir(tempfile::TempDir);

impl OpenStateDir {
    fn new() -> OpenStateDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        OpenStateDir(dir)
    }

    fn arg(&self) -> String {
        self.0.path().display().to_string()
    }
}

async fn refused(srv: &Server, p: &Value, field: &str) {
    let r = srv.create(p).await;
    assert_eq!(r.status(), 400, "{p}");
    let body: Value = r.json().await.unwrap();
    let message = body["error"].as_str().unwrap();
    assert!(message.contains(field), "{field} not named in {message:?}");
    let name = p["metadata"]["name"].as_str().unwrap();
    assert!(srv.status(name).await.is_none(), "nothing stored");
}

#[tokio::test]
async fn volume_names_cannot_climb_out_of_the_pod_directory() {
    if !support::is_root() {
        return;
    }
    let canary = Canary::new();
    let srv = Server::start(&[]).await;
    let name = canary.climbing();
    let volumes = [
        json!({"name": name, "emptyDir": {}}),
        json!({"name": name, "emptyDir": {"medium": "Memory"}}),
        json!({"name": name, "downwardAPI": {"items": [
            {"path": "x", "fieldRef": {"fieldPath": "metadata.annotations"}}]}}),
    ];
    for v in volumes {
        let mut p = support::bare_pod("climber", "true", "Never");
        p["spec"]["volumes"] = json!([v]);
        refused(&srv, &p, "spec.volumes[0].name").await;
    }
    canary.assert_untouched();
    srv.stop().await;
}

#[tokio::test]
async fn mount_paths_and_sub_paths_with_backsteps_are_refused() {
    if !support::is_root() {
        return;
    }
    let canary = Canary::new();
    let srv = Server::start(&[]).await;
    let mut p = support::bare_pod("climber", "true", "Never");
    p["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "data",
        "mountPath": format!("/{}/newdir/link", canary.climbing())}]);
    refused(&srv, &p, "volumeMounts[0].mountPath").await;
    p["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "data", "mountPath": "/data", "subPath": "../../x"}]);
    refused(&srv, &p, "volumeMounts[0].subPath").await;
    p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "nope", "mountPath": "/data"}]);
    refused(&srv, &p, "volumeMounts[0].name").await;
    p["spec"]["containers"][0]["volumeMounts"] = json!([]);
    p["spec"]["volumes"] = json!([{"name": "d", "downwardAPI": {"items": [
        {"path": "../../../x", "fieldRef": {"fieldPath": "metadata.name"}}]}}]);
    refused(&srv, &p, "spec.volumes[0].downwardAPI.items[0].path").await;
    canary.assert_untouched();
    srv.stop().await;
}

/// CVE-2017-1002101's class: a container links its volume elsewhere, another mounts a subPath
/// through the link.
#[tokio::test]
async fn a_sub_path_never_follows_a_link_the_pod_made() {
    sub_path_through_a_link(&[]).await;
}

/// The same inside a root of the container's own: sources are resolved on the host as before;
/// only the mount point moves into the run's layer.
#[tokio::test]
async fn a_sub_path_never_follows_a_link_the_pod_made_in_its_own_root() {
    sub_path_through_a_link(&["--pod-root", "overlay"]).await;
}

async fn sub_path_through_a_link(args: &[&str]) {
    if !support::is_root() {
        return;
    }
    let canary = Canary::new();
    let srv = Server::start(args).await;
    let mut p = support::bare_pod("subpath", "echo ran", "Never");
    p["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    p["spec"]["initContainers"] = json!([{
        "name": "init-one", "image": "busybox",
        "command": sh(&format!("ln -s {} $PROCNODE_VOLUME_DATA/evil", canary.dir.display())),
        "volumeMounts": [{"name": "data", "mountPath": "/procnode-no-such-dir"}],
    }]);
    p["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "data", "mountPath": "/procnode-no-such-dir", "subPath": "evil/sub"}]);
    assert_eq!(srv.create(&p).await.status(), 201);
    let s = srv
        .wait_status("subpath", "the main container refused", |s| {
            let m = &container(s, "main")["state"];
            m["waiting"]["message"].is_string() || m["terminated"].is_object()
        })
        .await;
    let main = &container(&s, "main")["state"];
    let message = main["waiting"]["message"]
        .as_str()
        .or(main["terminated"]["message"].as_str())
        .unwrap_or_default();
    assert!(message.contains("symbolic link"), "{s}");
    let (_, logs) = srv.logs("subpath", "main", "").await;
    assert!(!logs.contains("ran"), "the container did not run: {logs}");
    canary.assert_untouched();
    assert_eq!(srv.delete(&p).await.status(), 200);
    canary.assert_untouched();
    srv.stop().await;
}

/// The pod directory is procnode's: a container cannot swap its `volumes/` for a link that a
/// later update (downwardAPI rewrite) or the delete (unmounts) would then follow as root.
#[tokio::test]
async fn a_pod_cannot_swap_its_volumes_directory() {
    if !support::is_root() {
        return;
    }
    let canary = Canary::new();
    // The canary must be writable by the pod's user for the attack to reach it at all.
    std::fs::set_permissions(
        canary.dir.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let state = OpenStateDir::new();
    let srv = Server::start(&[
        "--default-uid",
        "65534",
        "--allowed-uids",
        "65534",
        "--state-dir",
        &state.arg(),
    ])
    .await;
    let mut p = support::bare_pod(
        "swapper",
        &format!(
            "cd $PROCNODE_VOLUME_INFO/../..; mv volumes v.old && ln -s {} volumes; echo rc=$?; exec sleep 300",
            canary.dir.display()
        ),
        "Never",
    );
    p["spec"]["volumes"] = json!([{"name": "info", "downwardAPI": {"items": [
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}]);
    p["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "info", "mountPath": "/procnode-no-such-dir"}]);
    assert_eq!(srv.create(&p).await.status(), 201);
    wait_until("the swap attempt", Duration::from_secs(20), || async {
        let (_, logs) = srv.logs("swapper", "main", "").await;
        logs.contains("rc=").then_some(())
    })
    .await;
    let (_, logs) = srv.logs("swapper", "main", "").await;
    // (stdout and stderr are two pipes: busybox writes "mv: " apart from the rest of its
    // message, so "rc=1" may land between the two pieces.)
    assert!(
        logs.contains("cannot move 'volumes'") && logs.contains("Permission denied"),
        "{logs}"
    );
    // An update with new labels rewrites the downwardAPI file; the delete unmounts.
    p["metadata"]["labels"] = json!({"app": "swapper", "new": "label"});
    assert_eq!(srv.update(&p).await.0, 200);
    assert_eq!(srv.delete(&p).await.status(), 200);
    canary.assert_untouched();
    srv.stop().await;
}

#[tokio::test]
async fn the_termination_message_is_read_as_the_container_and_never_blocks() {
    if !support::is_root() {
        return;
    }
    let srv = Server::start(&["--default-uid", "65534", "--allowed-uids", "65534"]).await;
    let mut p = support::bare_pod("shadow", "exit 1", "Never");
    p["spec"]["containers"][0]["terminationMessagePath"] = json!("/etc/shadow");
    assert_eq!(srv.create(&p).await.status(), 201);
    let s = srv
        .wait_status("shadow", "Failed", |s| phase(s) == "Failed")
        .await;
    let t = &container(&s, "main")["state"]["terminated"];
    assert_eq!(t["exitCode"], 1);
    assert!(t["message"].is_null(), "root's file was read: {t}");
    // A FIFO: the pod finishes and is deleted, nothing hangs.
    let mut p = support::bare_pod("fifo", "mkfifo fifo; exit 0", "Never");
    p["spec"]["containers"][0]["terminationMessagePath"] = json!("fifo");
    assert_eq!(srv.create(&p).await.status(), 201);
    srv.wait_status("fifo", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    assert_eq!(srv.delete(&p).await.status(), 200);
    // A file the container wrote is still its message.
    let mut p = support::bare_pod("told", "echo done > msg", "Never");
    p["spec"]["containers"][0]["terminationMessagePath"] = json!("msg");
    assert_eq!(srv.create(&p).await.status(), 201);
    let s = srv
        .wait_status("told", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    assert_eq!(
        container(&s, "main")["state"]["terminated"]["message"],
        "done\n"
    );
    srv.stop().await;
}

/// In a root of its own (`--pod-root overlay`) the termination message is read from the run's
/// writable layer, which the container writes: a link it left there is still read with the
/// container's identity, so it reads nothing the container could not; its own file is read.
#[tokio::test]
async fn the_termination_message_in_a_root_of_its_own_is_read_as_the_container() {
    if !support::is_root() {
        return;
    }
    let srv = Server::start(&[
        "--default-uid",
        "65534",
        "--allowed-uids",
        "65534",
        "--pod-root",
        "overlay",
    ])
    .await;
    let mut p = support::bare_pod(
        "layer-link",
        "ln -s /etc/shadow /tmp/procnode-test-msg; exit 1",
        "Never",
    );
    p["spec"]["containers"][0]["terminationMessagePath"] = json!("/tmp/procnode-test-msg");
    assert_eq!(srv.create(&p).await.status(), 201);
    let s = srv
        .wait_status("layer-link", "Failed", |s| phase(s) == "Failed")
        .await;
    let t = &container(&s, "main")["state"]["terminated"];
    assert_eq!(t["exitCode"], 1);
    assert!(t["message"].is_null(), "root's file was read: {t}");
    let mut p = support::bare_pod("layer-told", "echo done > /tmp/procnode-test-told", "Never");
    p["spec"]["containers"][0]["terminationMessagePath"] = json!("/tmp/procnode-test-told");
    assert_eq!(srv.create(&p).await.status(), 201);
    let s = srv
        .wait_status("layer-told", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    assert_eq!(
        container(&s, "main")["state"]["terminated"]["message"],
        "done\n"
    );
    assert!(!std::path::Path::new("/tmp/procnode-test-told").exists());
    srv.stop().await;
}

#[tokio::test]
async fn groups_are_policed_like_users() {
    if !support::is_root() {
        return;
    }
    let srv = Server::start(&[
        "--default-uid",
        "65534",
        "--allowed-uids",
        "1000-60000,65534",
    ])
    .await;
    for (name, sc, field) in [
        (
            "gid-root",
            json!({"runAsUser": 65534, "runAsGroup": 0}),
            "runAsGroup 0",
        ),
        (
            "groups",
            json!({"runAsUser": 65534, "supplementalGroups": [0, 6, 42]}),
            "supplementalGroups 0",
        ),
        (
            "fs-group",
            json!({"runAsUser": 65534, "fsGroup": 42}),
            "fsGroup 42",
        ),
    ] {
        let mut p = support::bare_pod(name, "id; echo ran", "Never");
        p["spec"]["securityContext"] = sc;
        assert_eq!(srv.create(&p).await.status(), 201);
        let s = srv
            .wait_status(name, "refused", |s| {
                container(s, "main")["state"]["terminated"].is_object()
            })
            .await;
        let t = &container(&s, "main")["state"]["terminated"];
        let message = t["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(field) && message.contains("--allowed-gids"),
            "{t}"
        );
        let (_, logs) = srv.logs(name, "main", "").await;
        assert!(!logs.contains("ran"), "{logs}");
    }
    // Root is opt-in: not allowed by default.
    let dflt = Server::start(&["--default-uid", "65534"]).await;
    let mut p = support::bare_pod("as-root", "echo ran", "Never");
    p["spec"]["securityContext"] = json!({"runAsUser": 0});
    assert_eq!(dflt.create(&p).await.status(), 201);
    let s = dflt
        .wait_status("as-root", "refused", |s| {
            container(s, "main")["state"]["terminated"].is_object()
        })
        .await;
    let t = &container(&s, "main")["state"]["terminated"];
    assert!(
        t["message"]
            .as_str()
            .unwrap_or_default()
            .contains("runAsUser 0 is not allowed"),
        "{t}"
    );
    dflt.stop().await;
    srv.stop().await;
}

#[tokio::test]
async fn host_path_creation_never_follows_a_link() {
    if !support::is_root() {
        return;
    }
    let canary = Canary::new();
    let prefix = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&canary.dir, prefix.path().join("link")).unwrap();
    let srv = Server::start(&["--host-path-prefix", &prefix.path().display().to_string()]).await;
    for (i, (path, type_)) in [
        ("link/missing/new", "DirectoryOrCreate"),
        ("link/new-file", "FileOrCreate"),
        ("link", "Directory"),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("hostpath-{i}");
        let mut p = support::bare_pod(&name, "echo ran", "Never");
        p["spec"]["volumes"] = json!([{"name": "h", "hostPath": {
            "path": prefix.path().join(path).display().to_string(), "type": type_}}]);
        p["spec"]["containers"][0]["volumeMounts"] =
            json!([{"name": "h", "mountPath": "/procnode-no-such-dir"}]);
        assert_eq!(srv.create(&p).await.status(), 201);
        let s = srv
            .wait_status(&name, "Failed", |s| phase(s) == "Failed")
            .await;
        assert_eq!(s["reason"], "HostPathNotAllowed", "{s}");
    }
    canary.assert_untouched();
    srv.stop().await;
}

/// A thread with `uid`'s file system identity, whose sockets the kernel reports as `uid`'s.
fn as_user<T: Send + 'static>(uid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        procnode::runtime::process::take_fs_identity(uid, uid, &[uid]).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// One HTTP/1.1 request on a fresh connection; the status code and body.
fn raw_request(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_cannot_call_the_web_api() {
    if !support::is_root() {
        return;
    }
    let srv = Server::start(&[]).await;
    let addr = srv.base.trim_start_matches("http://").to_string();
    let mut p = support::bare_pod("escalate", "echo root", "Never");
    p["spec"]["securityContext"] = json!({"runAsUser": 0});
    let (a, body) = (addr.clone(), p.to_string());
    let (code, answer) = tokio::task::spawn_blocking(move || {
        as_user(65534, move || raw_request(&a, "POST", "/createPod", &body))
    })
    .await
    .unwrap();
    assert_eq!(code, 403, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert!(v["error"].as_str().unwrap().contains("uid 65534"), "{v}");
    assert!(srv.status("escalate").await.is_none(), "nothing stored");
    // Health stays open to everyone; root (this test) is served.
    let a = addr.clone();
    let (code, _) = tokio::task::spawn_blocking(move || {
        as_user(65534, move || raw_request(&a, "GET", "/healthz", ""))
    })
    .await
    .unwrap();
    assert_eq!(code, 200);
    assert_eq!(srv.get_json("/getPods").await, json!([]));
    srv.stop().await;
    // --api-allowed-uids widens it.
    let srv = Server::start(&["--api-allowed-uids", "65534"]).await;
    let a = srv.base.trim_start_matches("http://").to_string();
    let (code, _) = tokio::task::spawn_blocking(move || {
        as_user(65534, move || raw_request(&a, "GET", "/getPods", ""))
    })
    .await
    .unwrap();
    assert_eq!(code, 200);
    srv.stop().await;
}

#[tokio::test]
async fn each_pod_runs_as_a_uid_of_its_own() {
    if !support::is_root() {
        return;
    }
    let srv = Server::start(&["--default-uid", "pod", "--allowed-uids", "65534"]).await;
    let mut a = support::bare_pod("holder", "exec sleep 300", "Never");
    a["spec"]["containers"][0]["env"] = json!([{"name": "SECRET", "value": "holder-secret"}]);
    a["spec"]["volumes"] = json!([{"name": "scratch", "emptyDir": {}}]);
    a["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "scratch", "mountPath": "/procnode-no-such-dir"}]);
    assert_eq!(srv.create(&a).await.status(), 201);
    let s = srv
        .wait_status("holder", "Running", |s| phase(s) == "Running")
        .await;
    let pid = support::container_pid(&s, "main").unwrap();
    let b = support::bare_pod(
        "prier",
        &format!(
            "id -u; cat /proc/{pid}/environ || echo no-environ; kill -0 {pid} || echo no-signal"
        ),
        "Never",
    );
    assert_eq!(srv.create(&b).await.status(), 201);
    srv.wait_status("prier", "Succeeded", |s| phase(s) == "Succeeded")
        .await;
    let (_, logs) = srv.logs("prier", "main", "").await;
    assert!(!logs.contains("holder-secret"), "{logs}");
    assert!(
        logs.contains("no-environ") && logs.contains("no-signal"),
        "{logs}"
    );
    let uid_a = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .map(|v| v.split_whitespace().next().unwrap().to_string())
        })
        .unwrap();
    // (The line `id -u` wrote: stdout and stderr are read apart, so the order of lines from
    // the two may differ from the order they were written in.)
    let uid_b = logs
        .lines()
        .find(|l| l.parse::<u32>().is_ok())
        .unwrap_or_else(|| panic!("no uid in {logs:?}"));
    assert_ne!(uid_a, uid_b);
    // Its directories belong to it: the emptyDir and the working directory; the pod directory
    // around them is root's, closed to other pods.
    use std::os::unix::fs::MetadataExt;
    let pod_dir = srv.state_dir.path().join("pods/default_holder_uid-holder");
    for d in ["volumes/scratch", "work"] {
        let owner = std::fs::metadata(pod_dir.join(d)).unwrap().uid();
        assert_eq!(owner.to_string(), uid_a, "{d}");
    }
    let meta = std::fs::metadata(&pod_dir).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o750));
    assert_eq!(meta.gid().to_string(), uid_a);
    for uid in [&uid_a, uid_b] {
        let uid: u32 = uid.parse().unwrap();
        assert!((0x7000_0000..=0x7000_ffff).contains(&uid), "{uid}");
    }
    assert_eq!(srv.delete(&a).await.status(), 200);
    srv.stop().await;
}

/// Secret values reach the container's environment, and nothing else: not the record on disk,
/// not getPod. Node mode's ObjectSource is stood in for by a fixed one.
#[tokio::test]
async fn secret_values_are_resolved_at_start_and_never_stored_or_served() {
    if !support::is_root() {
        return;
    }
    #[derive(Debug)]
    struct Objects;
    impl procnode::runtime::volumes::ObjectSource for Objects {
        fn secret(
            &self,
            _: &str,
            name: &str,
        ) -> Option<std::collections::BTreeMap<String, Vec<u8>>> {
            (name == "db").then(|| [("password".to_string(), b"s3cret-value".to_vec())].into())
        }
        fn config_map(
            &self,
            _: &str,
            _: &str,
        ) -> Option<std::collections::BTreeMap<String, Vec<u8>>> {
            None
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let config = procnode::Config::parse_from_env_free([
        "procnode",
        "--state-dir",
        dir.path().to_str().unwrap(),
        "--shim-path",
        env!("CARGO_BIN_EXE_procnode"),
        "--default-uid",
        "65534",
        "--cgroups",
        "off",
    ]);
    procnode::runtime::StateLayout::new(dir.path())
        .prepare()
        .unwrap();
    let (runtime, _node) = procnode::build_with(&config, Some(std::sync::Arc::new(Objects)));
    let mut p = support::bare_pod("secretive", "echo $PASSWORD", "Never");
    p["spec"]["containers"][0]["env"] = json!([{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]);
    let created = runtime
        .create(procnode::runtime::NewPod::from_json(p.to_string().as_bytes()).unwrap())
        .await;
    assert!(created.is_ok());
    let key = procnode::runtime::PodKey {
        namespace: "default".into(),
        name: "secretive".into(),
    };
    let entry = runtime.get(&key).unwrap();
    wait_until("the run", Duration::from_secs(20), || async {
        entry.is_done().then_some(())
    })
    .await;
    let logs = runtime
        .logs(&key, "main", &procnode::logs::LogQuery::default(), false)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    assert_eq!(logs, "s3cret-value\n");
    assert!(
        !entry.raw().contains("s3cret")
            && !serde_json::to_string(&entry.status())
                .unwrap()
                .contains("s3cret"),
        "getPod serves no value"
    );
    for f in std::fs::read_dir(dir.path().join("records")).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        assert!(
            !text.contains("s3cret"),
            "the record holds no value: {text}"
        );
    }
    runtime.delete(&key, None).await;
    runtime.shutdown().await;
}
