//! The Node object: created (or taken over) at start, its status written at once when the
//! host's figures or conditions change and at least every `--node-status-interval`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node as NodeObject, Taint};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use crate::node::Node;

/// What the Node object says about itself.
#[derive(Debug, Clone)]
pub struct Settings {
    pub name: String,
    pub taint: Option<Taint>,
    pub kubelet_port: u16,
    pub status_interval: Duration,
}

impl Settings {
    pub fn from_config(config: &crate::Config, name: &str) -> Result<Settings, String> {
        Ok(Settings {
            name: name.to_string(),
            taint: parse_taint(&config.node_taint)?,
            kubelet_port: config.kubelet_port,
            status_interval: config.node_status_interval,
        })
    }
}

/// `KEY=VALUE:EFFECT` (or `KEY:EFFECT`), or `none`.
pub fn parse_taint(s: &str) -> Result<Option<Taint>, String> {
    if s.is_empty() || s == "none" {
        return Ok(None);
    }
    let bad = || format!("taint {s:?} is not KEY=VALUE:EFFECT or KEY:EFFECT (or none)");
    let (kv, effect) = s.rsplit_once(':').ok_or_else(bad)?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(format!(
            "taint {s:?}: effect {effect:?} is not NoSchedule, PreferNoSchedule or NoExecute"
        ));
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (kv, None),
    };
    if key.is_empty() {
        return Err(bad());
    }
    Ok(Some(Taint {
        key: key.to_string(),
        value,
        effect: effect.to_string(),
        time_added: None,
    }))
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The labels a kubelet (and Virtual Kubelet) put on their node.
pub fn labels(name: &str) -> BTreeMap<String, String> {
    [
        ("type", "virtual-kubelet"),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", arch()),
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/role", "agent"),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", arch()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `status.nodeInfo`: procnode as the kubelet, the host's OS and kernel.
fn node_info() -> Value {
    let os_image = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".to_string());
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let version = env!("CARGO_PKG_VERSION");
    json!({
        "machineID": read_trimmed("/etc/machine-id"),
        "systemUUID": read_trimmed("/sys/class/dmi/id/product_uuid"),
        "bootID": read_trimmed("/proc/sys/kernel/random/boot_id"),
        "kernelVersion": kernel,
        "osImage": os_image,
        "containerRuntimeVersion": format!("procnode://{version}"),
        // A semantic version (some clients parse it) that names procnode and its version.
        "kubeletVersion": format!("v1.20.0-procnode.{version}"),
        "kubeProxyVersion": "",
        "operatingSystem": "linux",
        "architecture": arch(),
    })
}

/// The status patch: capacity = allocatable (the host's figures less the reservations),
/// conditions, addresses, daemon endpoint, `info` (the host's facts, read once).
fn status(node: &Node, kubelet_port: u16, info: &Value) -> Value {
    let snap = node.snapshot();
    json!({
        "status": {
            "capacity": snap.capacity,
            "allocatable": snap.capacity,
            "conditions": snap.conditions,
            "addresses": snap.addresses,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
            "nodeInfo": info,
        }
    })
}

/// What decides whether the status must be written now: capacity and each condition's status.
fn fingerprint(node: &Node) -> Fingerprint {
    let snap = node.snapshot();
    let statuses = snap
        .conditions
        .iter()
        .map(|c| (c.type_.clone(), c.status.clone()))
        .collect();
    (snap.capacity.clone(), statuses)
}

/// Capacity, and each condition's type and status.
type Fingerprint = (
    std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    Vec<(String, String)>,
);

/// Creates the Node if it does not exist, else makes its labels and taint procnode's.
async fn ensure(api: &Api<NodeObject>, s: &Settings) -> Result<(), kube::Error> {
    let taints: Vec<Taint> = s.taint.iter().cloned().collect();
    match api.get_opt(&s.name).await? {
        None => {
            let object: NodeObject = serde_json::from_value(json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": s.name, "labels": labels(&s.name)},
                "spec": {"taints": taints},
            }))
            .expect("a valid Node");
            api.create(&PostParams::default(), &object).await?;
            tracing::info!(node = %s.name, "created the Node");
        }
        Some(existing) => {
            // Keep taints others added (not the previous procnode one), then ours.
            let mut all: Vec<Taint> = existing
                .spec
                .and_then(|sp| sp.taints)
                .unwrap_or_default()
                .into_iter()
                .filter(|t| {
                    !t.key.starts_with("virtual-kubelet.io/")
                        && !taints.iter().any(|o| o.key == t.key)
                })
                .collect();
            all.extend(taints);
            let patch = json!({"metadata": {"labels": labels(&s.name)}, "spec": {"taints": all}});
            api.patch(&s.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            tracing::info!(node = %s.name, "took over the existing Node");
        }
    }
    Ok(())
}

/// Keeps the Node and its status up to date until aborted.
pub async fn run(client: kube::Client, node: Arc<Node>, s: Settings) {
    let api: Api<NodeObject> = Api::all(client);
    let mut delay = Duration::from_secs(1);
    while let Err(e) = ensure(&api, &s).await {
        tracing::warn!(node = %s.name, error = %e, retry_in = ?delay, "cannot register the Node");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
    let info = node_info();
    let mut last_written: Option<(Fingerprint, tokio::time::Instant)> = None;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        check.tick().await;
        let print = fingerprint(&node);
        let due = match &last_written {
            None => true,
            Some((p, at)) => *p != print || at.elapsed() >= s.status_interval,
        };
        if !due {
            continue;
        }
        match api
            .patch_status(
                &s.name,
                &PatchParams::default(),
                &Patch::Merge(&status(&node, s.kubelet_port, &info)),
            )
            .await
        {
            Ok(_) => last_written = Some((print, tokio::time::Instant::now())),
            Err(kube::Error::Api(e)) if e.code == 404 => {
                tracing::warn!(node = %s.name, "the Node was deleted; registering it again");
                let _ = ensure(&api, &s).await;
            }
            Err(e) => tracing::warn!(node = %s.name, error = %e, "cannot write the node status"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_parse_like_kubectl_taint() {
        let t = parse_taint("virtual-kubelet.io/provider=procnode:NoSchedule")
            .unwrap()
            .unwrap();
        assert_eq!(
            (t.key.as_str(), t.value.as_deref(), t.effect.as_str()),
            (
                "virtual-kubelet.io/provider",
                Some("procnode"),
                "NoSchedule"
            )
        );
        let t = parse_taint("dedicated:NoExecute").unwrap().unwrap();
        assert_eq!(
            (t.key.as_str(), t.value, t.effect.as_str()),
            ("dedicated", None, "NoExecute")
        );
        assert_eq!(parse_taint("none").unwrap(), None);
        assert!(parse_taint("k=v:Sometimes").unwrap_err().contains("effect"));
        assert!(parse_taint("novalue").is_err());
    }

    #[test]
    fn labels_say_virtual_kubelet_agent() {
        let l = labels("n1");
        assert_eq!(l["type"], "virtual-kubelet");
        assert_eq!(l["kubernetes.io/hostname"], "n1");
        assert_eq!(l["kubernetes.io/role"], "agent");
        assert_eq!(l["kubernetes.io/os"], "linux");
    }
}
