//! The shipped artifacts agree with the code: the pre-rendered chart manifest, the example
//! manifests, the systemd unit and the Dockerfile are parsed into the real Kubernetes types (or
//! read field by field) and every procnode command line they contain is parsed by procnode's
//! own configuration loader. (`python3 charts/check.py` renders the chart with Helm's engine and
//! keeps charts/procnode.yaml in sync with it; `systemd-analyze verify` checks the unit.)

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize;
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn documents(path: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(&read(path))
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{path}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{}: {e}", v["kind"]))
}

/// Parses a procnode command line with procnode's loader; panics with its message if invalid.
fn procnode_accepts(args: &[String]) -> procnode::Config {
    let mut argv = vec!["procnode".to_string()];
    argv.extend(args.iter().skip_while(|a| *a == "serve").cloned());
    match procnode::Config::load(argv.clone()) {
        Ok(loaded) => loaded.config,
        Err(e) => panic!("procnode rejects {argv:?}: {e:?}"),
    }
}

fn container<'a>(spec: &'a PodSpec, name: &str) -> &'a Container {
    spec.containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

#[test]
fn the_chart_manifest_wires_the_broker_to_procnode_with_the_rbac_a_node_needs() {
    let docs = documents("charts/procnode.yaml");
    let of = |kind: &str| -> Vec<&Value> { docs.iter().filter(|d| d["kind"] == kind).collect() };
    let deployment: Deployment = typed(of("Deployment")[0]);
    let account: ServiceAccount = typed(of("ServiceAccount")[0]);
    let role: ClusterRole = typed(of("ClusterRole")[0]);
    let binding: ClusterRoleBinding = typed(of("ClusterRoleBinding")[0]);

    let spec = deployment.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        spec.service_account_name.as_ref(),
        account.metadata.name.as_ref()
    );
    assert_eq!(binding.role_ref.name, role.metadata.name.clone().unwrap());
    assert_eq!(
        binding.subjects.as_ref().unwrap()[0].name,
        account.metadata.name.clone().unwrap()
    );

    // procnode's arguments are valid procnode flags, and the broker points at its port.
    let procnode = container(&spec, "procnode");
    let config = procnode_accepts(procnode.args.as_ref().unwrap());
    let procnode::config::ListenAddr::Tcp(listen) = config.listen_addr() else {
        panic!("procnode should listen on TCP in the chart");
    };
    assert!(
        listen.ip().is_loopback(),
        "only the broker may reach procnode"
    );
    let broker = container(&spec, "broker");
    let env = |c: &Container, name: &str| {
        c.env
            .as_ref()
            .and_then(|e| e.iter().find(|v| v.name == name))
            .and_then(|v| v.value.clone())
    };
    assert_eq!(
        env(broker, "WEB_ENDPOINT_URL").as_deref(),
        Some(format!("http://localhost:{}", listen.port()).as_str())
    );
    let broker_args = broker.args.as_ref().unwrap().join(" ");
    assert!(broker_args.contains("--provider web"), "{broker_args}");

    // Both probes run `procnode health` against the address procnode listens on.
    for probe in [&procnode.liveness_probe, &procnode.readiness_probe] {
        let cmd = probe
            .as_ref()
            .unwrap()
            .exec
            .as_ref()
            .unwrap()
            .command
            .clone()
            .unwrap();
        assert_eq!(cmd[..2], ["procnode", "health"]);
        let probed = procnode_accepts(&cmd[2..]);
        assert_eq!(probed.listen_addr(), config.listen_addr());
    }
    assert_eq!(
        procnode.security_context.as_ref().unwrap().privileged,
        Some(true)
    );

    // What a virtual kubelet does, each allowed by some rule.
    let rules = role.rules.unwrap();
    let allowed = |group: &str, resource: &str, verb: &str| {
        rules.iter().any(|r| {
            r.api_groups
                .as_ref()
                .is_some_and(|g| g.iter().any(|g| g == group))
                && r.resources
                    .as_ref()
                    .is_some_and(|rs| rs.iter().any(|x| x == resource))
                && r.verbs.iter().any(|v| v == verb)
        })
    };
    for (group, resource, verb) in [
        ("", "nodes", "create"),
        ("", "nodes", "get"),
        ("", "nodes/status", "patch"),
        ("", "pods", "watch"),
        ("", "pods", "delete"),
        ("", "pods/status", "patch"),
        ("", "events", "create"),
        ("", "configmaps", "get"),
        ("", "secrets", "get"),
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "update"),
    ] {
        assert!(
            allowed(group, resource, verb),
            "{verb} {resource} not allowed"
        );
    }
}

#[test]
fn the_kubectl_examples_target_a_virtual_kubelet_node() {
    let job: Job = typed(&documents("examples/job.yaml")[0]);
    let deployment: Deployment = typed(&documents("examples/deployment.yaml")[0]);
    let crasher: Pod = typed(&documents("examples/crashloop.yaml")[0]);
    let specs = [
        ("job", job.spec.unwrap().template.spec.unwrap()),
        (
            "deployment",
            deployment.spec.unwrap().template.spec.unwrap(),
        ),
        ("crashloop", crasher.spec.unwrap()),
    ];
    for (name, spec) in specs {
        let selector = spec.node_selector.unwrap_or_default();
        assert_eq!(
            selector.get("type").map(String::as_str),
            Some("virtual-kubelet"),
            "{name}"
        );
        let tolerates = spec.tolerations.unwrap_or_default().iter().any(|t| {
            t.key.as_deref() == Some("virtual-kubelet.io/provider")
                && t.operator.as_deref() == Some("Exists")
        });
        assert!(tolerates, "{name} lacks the virtual-kubelet toleration");
        assert!(!spec.containers.is_empty(), "{name}");
    }
}

/// examples/node-rbac.yaml (what `procnode node` may do under RBAC; the e2e runs the node as
/// this ServiceAccount against a control plane that authorizes with RBAC) parses into the real
/// types, and its binding ties the role to the account its token belongs to.
#[test]
fn the_node_mode_rbac_example_binds_its_role_to_its_service_account() {
    let docs = documents("examples/node-rbac.yaml");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "Secret",
            "ClusterRole",
            "ClusterRoleBinding"
        ]
    );
    let account: ServiceAccount = typed(&docs[0]);
    let secret: k8s_openapi::api::core::v1::Secret = typed(&docs[1]);
    let role: ClusterRole = typed(&docs[2]);
    let binding: ClusterRoleBinding = typed(&docs[3]);
    let account_name = account.metadata.name.unwrap();
    assert_eq!(
        secret.metadata.annotations.unwrap()["kubernetes.io/service-account.name"],
        account_name
    );
    assert_eq!(
        secret.type_.as_deref(),
        Some("kubernetes.io/service-account-token")
    );
    assert_eq!(binding.role_ref.name, role.metadata.name.unwrap());
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (subject.kind.as_str(), subject.name.as_str()),
        ("ServiceAccount", account_name.as_str())
    );
    assert_eq!(subject.namespace, account.metadata.namespace);
    // Nothing broader than named verbs: no wildcard.
    for rule in role.rules.unwrap() {
        assert!(!rule.verbs.iter().any(|v| v == "*"), "{rule:?}");
        assert!(!rule.resources.unwrap_or_default().iter().any(|r| r == "*"));
    }
}

/// examples/debugger-rbac.yaml (who may exec, attach and port-forward; the e2e uses it) parses
/// into the real types, grants the streaming subresources of pods, and nothing on nodes (its
/// account has no `nodes/proxy`: straight to a kubelet port it is refused).
#[test]
fn the_debugger_rbac_example_grants_the_streaming_subresources_and_nothing_on_nodes() {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let docs = documents("examples/debugger-rbac.yaml");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ServiceAccount", "Secret", "Role", "RoleBinding"]);
    let account: ServiceAccount = typed(&docs[0]);
    let role: Role = typed(&docs[2]);
    let binding: RoleBinding = typed(&docs[3]);
    assert_eq!(binding.role_ref.name, role.metadata.name.clone().unwrap());
    assert_eq!(
        binding.subjects.unwrap()[0].name,
        account.metadata.name.unwrap()
    );
    let resources: Vec<String> = role
        .rules
        .unwrap()
        .into_iter()
        .flat_map(|r| r.resources.unwrap_or_default())
        .collect();
    for sub in ["pods/exec", "pods/attach", "pods/portforward"] {
        assert!(resources.iter().any(|r| r == sub), "{sub} in {resources:?}");
    }
    assert!(!resources.iter().any(|r| r.starts_with("nodes") || r == "*"));
}

#[test]
fn the_systemd_unit_starts_a_valid_command_and_waits_for_the_grace_periods() {
    let unit = read("systemd/procnode.service");
    let value = |key: &str| -> String {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("the unit sets no {key}"))
            .to_string()
    };
    assert_eq!(value("Type"), "notify");
    assert_eq!(value("Delegate"), "yes");
    assert_eq!(value("KillMode"), "mixed");
    assert_eq!(value("StateDirectory"), "procnode");
    // Room for far more than 10,000 pods: a descriptor or two and 2 tasks each.
    assert_eq!(value("LimitNOFILE"), "1048576");
    assert_eq!(value("TasksMax"), "infinity");
    let exec: Vec<String> = value("ExecStart")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(exec[0], "/usr/local/bin/procnode");
    let config = procnode_accepts(&exec[1..]);
    let stop = value("TimeoutStopSec").parse::<u64>().unwrap();
    assert!(
        stop > config.max_grace_period.as_secs(),
        "TimeoutStopSec={stop} must exceed the longest grace period ({:?})",
        config.max_grace_period
    );
}

#[test]
fn the_dockerfile_builds_this_crate_with_a_supported_toolchain() {
    let dockerfile = read("Dockerfile");
    let cargo: toml::Table = read("Cargo.toml").parse().unwrap();
    let needed = cargo["package"]["rust-version"].as_str().unwrap();
    let builder = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("FROM rust:"))
        .expect("a rust builder stage");
    let version = builder.split(['-', ' ']).next().unwrap();
    let parse = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap()).collect() };
    assert!(
        parse(version) >= parse(needed),
        "builder rust {version} < rust-version {needed}"
    );
    // Every COPY source exists, and the image's command is one procnode accepts.
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(
                std::path::Path::new(ROOT).join(src).exists(),
                "COPY {src}: no such file"
            );
        }
    }
    let cmd = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("a CMD");
    let args: Vec<String> = serde_json::from_str(cmd).unwrap();
    procnode_accepts(&args);
    assert!(dockerfile.contains("ENTRYPOINT [\"procnode\"]"));
    // The supervisor is linked statically and not position independent, the same way in the
    // image and in the host install (BENCHMARKS.md: half the memory per container).
    let flags = "-C target-feature=+crt-static -C relocation-model=static";
    let squeezed = |t: &str| {
        t.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .replace("\\ ", "")
    };
    for (file, text) in [
        ("Dockerfile", &dockerfile),
        ("docs/systemd.md", &read("docs/systemd.md")),
    ] {
        let text = squeezed(text);
        assert!(
            text.contains("--bin procnode-shim --") && text.contains(flags),
            "{file} does not link procnode-shim with {flags}"
        );
    }
}

/// Every setting `procnode --help` lists has a row in docs/configuration.md's table, with
/// its environment variable, and the table names no setting procnode does not have.
#[test]
fn the_readme_documents_every_setting_and_no_other() {
    use clap::CommandFactory;
    let section = read("docs/configuration.md");
    let rows: Vec<&str> = section.lines().filter(|l| l.starts_with("| `--")).collect();
    let command = procnode::Config::command();
    let mut settings = Vec::new();
    let mut missing = Vec::new();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        // (A hidden setting is one kept only so that old set-ups still start.)
        if matches!(long, "help" | "version") || arg.is_hide_set() {
            continue;
        }
        settings.push(long.to_string());
        let flag = format!("`--{long}");
        let row = rows.iter().find(|r| {
            ["`", " ", "["]
                .iter()
                .any(|end| r.contains(&format!("{flag}{end}")))
        });
        let Some(row) = row else {
            missing.push(format!("--{long}"));
            continue;
        };
        if let Some(env) = arg.get_env() {
            let env = env.to_string_lossy();
            assert!(
                row.contains(&format!("`{env}`")),
                "--{long}: {env} missing from {row}"
            );
        }
    }
    assert!(
        missing.is_empty(),
        "no row in docs/configuration.md's table: {missing:?}"
    );
    for row in rows {
        for flag in row.split('`').filter(|f| f.starts_with("--")) {
            let name = flag
                .trim_start_matches("--")
                .split([' ', '=', '['])
                .next()
                .unwrap();
            assert!(
                settings.iter().any(|s| s == name),
                "docs/configuration.md documents --{name}, which procnode does not have"
            );
        }
    }
}
