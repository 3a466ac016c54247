//! What a container's process is given: argv from `command`/`args` (or from the image name) and
//! the environment from `env` with the downward API, with `$(VAR)` references expanded as the
//! kubelet expands them.

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, ResourceFieldSelector};

use crate::quantity::Quantity;

/// Contents of Secrets and ConfigMaps, for a front end that can read them from the API server.
pub trait ObjectSource: Send + Sync + std::fmt::Debug {
    /// The Secret's data, or `None` if it does not exist.
    fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<std::collections::BTreeMap<String, Vec<u8>>>;
    /// The ConfigMap's data (binaryData included), or `None` if it does not exist.
    fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<std::collections::BTreeMap<String, Vec<u8>>>;
    /// A token for the service account (the API server's TokenRequest), or `None`.
    fn service_account_token(
        &self,
        _namespace: &str,
        _service_account: &str,
        _audience: Option<&str>,
        _expiration_seconds: Option<i64>,
    ) -> Option<String> {
        None
    }
}

/// Node facts the downward API can refer to.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub node_name: String,
    pub host_ip: String,
    /// Allocatable CPU and memory: what `limits.*` resolve to when a container sets no limit.
    pub cpu: Quantity,
    pub memory: Quantity,
}

/// Why a container's configuration cannot be turned into a process (reported as the kubelet's
/// `CreateContainerConfigError`).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("env {var}: fieldRef {path:?} is not supported (supported: metadata.name, metadata.namespace, metadata.uid, metadata.labels['KEY'], metadata.annotations['KEY'], spec.nodeName, spec.serviceAccountName, status.hostIP, status.podIP, status.podIPs, status.hostIPs)")]
    FieldPath { var: String, path: String },
    #[error("env {var}: resourceFieldRef {resource:?} is not supported")]
    Resource { var: String, resource: String },
    #[error("env {var}: resourceFieldRef names unknown container {container:?}")]
    ResourceContainer { var: String, container: String },
    #[error("env {var}: invalid quantity: {detail}")]
    Quantity { var: String, detail: String },
    #[error("env {var}: the {kind} reference could not be resolved (the object or key does not exist, or, in web mode, Virtual Kubelet did not resolve it)")]
    Unresolved { var: String, kind: &'static str },
}

/// The executable an image names when a container has no `command`: the last path component,
/// without tag or digest (`docker.io/library/busybox:1.36` → `busybox`).
pub fn image_executable(image: &str) -> Option<&str> {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let name = last.split(':').next().unwrap_or(last);
    (!name.is_empty()).then_some(name)
}

/// argv for a container: `command` + `args`, or the image's executable + `args`, with `$(VAR)`
/// references expanded from `env`.
pub fn argv(container: &Container, env: &[(String, String)]) -> Vec<String> {
    let mut argv: Vec<String> = match container.command.as_deref() {
        Some(cmd) if !cmd.is_empty() => cmd.to_vec(),
        _ => container
            .image
            .as_deref()
            .and_then(image_executable)
            .map(|s| vec![s.to_string()])
            .unwrap_or_default(),
    };
    argv.extend(container.args.iter().flatten().cloned());
    argv.into_iter().map(|a| expand(&a, env)).collect()
}

/// The full environment of a container's process: a small base (PATH, HOME, HOSTNAME) followed
/// by the container's `env` in order, each value expanded against the variables before it.
type ObjectData = std::collections::BTreeMap<String, Vec<u8>>;

/// Secret and ConfigMap contents for env, each object read once per container start (keyed by
/// whether it is a Secret, and its name).
struct Lookup<'a> {
    objects: Option<&'a dyn ObjectSource>,
    namespace: String,
    read: std::collections::BTreeMap<(bool, String), Option<ObjectData>>,
}

impl Lookup<'_> {
    fn get(&mut self, secret: bool, name: &str) -> Option<&ObjectData> {
        let objects = self.objects?;
        let ns = self.namespace.clone();
        self.read
            .entry((secret, name.to_string()))
            .or_insert_with(|| {
                if secret {
                    objects.secret(&ns, name)
                } else {
                    objects.config_map(&ns, name)
                }
            })
            .as_ref()
    }
}

/// The container's environment. References to Secrets and ConfigMaps (`envFrom`,
/// `secretKeyRef`, `configMapKeyRef`) are resolved here, at each start, from `objects` (node
/// mode): the values are never stored with the pod, and a restarted container sees the
/// current ones. Without `objects` (web mode, where Virtual Kubelet resolves them into plain
/// values) `envFrom` is left alone and a reference is an error. Blocking when `objects` reads
/// from the API server.
pub fn environment(
    pod: &Pod,
    container: &Container,
    node: &NodeFacts,
    objects: Option<&dyn ObjectSource>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut env: Vec<(String, String)> = vec![
        // A standard PATH, not procnode's: root's own (a version manager's shims, a user's
        // bin) is neither what a pod expects nor readable by the pod's user.
        ("PATH".into(), super::process::DEFAULT_PATH.to_string()),
        (
            "HOME".into(),
            std::env::var("HOME").unwrap_or_else(|_| "/".into()),
        ),
        ("HOSTNAME".into(), node.node_name.clone()),
    ];
    let mut lookup = Lookup {
        objects,
        namespace: pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        read: Default::default(),
    };
    // As the kubelet: envFrom first, in order, then env (which wins).
    if objects.is_some() {
        for source in container.env_from.iter().flatten() {
            let prefix = source.prefix.clone().unwrap_or_default();
            let (secret, name, optional, kind) = if let Some(s) = &source.secret_ref {
                (true, &s.name, s.optional == Some(true), "secretRef")
            } else if let Some(c) = &source.config_map_ref {
                (false, &c.name, c.optional == Some(true), "configMapRef")
            } else {
                continue;
            };
            match lookup.get(secret, name) {
                Some(data) => {
                    for (k, v) in data {
                        set(
                            &mut env,
                            &format!("{prefix}{k}"),
                            String::from_utf8_lossy(v).into_owned(),
                        );
                    }
                }
                None if optional => {}
                None => {
                    return Err(ConfigError::Unresolved {
                        var: format!("envFrom {name}"),
                        kind,
                    })
                }
            }
        }
    }
    for var in container.env.iter().flatten() {
        let Some(value) = env_value(pod, container, var, node, &mut lookup)? else {
            continue;
        };
        let value = expand(&value, &env);
        set(&mut env, &var.name, value);
    }
    Ok(env)
}

fn set(env: &mut Vec<(String, String)>, name: &str, value: String) {
    match env.iter_mut().find(|(k, _)| k == name) {
        Some(slot) => slot.1 = value,
        None => env.push((name.to_string(), value)),
    }
}

/// A variable's value; `None` for an optional reference to something missing (not set).
fn env_value(
    pod: &Pod,
    container: &Container,
    var: &EnvVar,
    node: &NodeFacts,
    lookup: &mut Lookup,
) -> Result<Option<String>, ConfigError> {
    let Some(from) = &var.value_from else {
        return Ok(Some(var.value.clone().unwrap_or_default()));
    };
    if let Some(field) = &from.field_ref {
        return field_value(pod, &field.field_path, node)
            .map(Some)
            .ok_or_else(|| ConfigError::FieldPath {
                var: var.name.clone(),
                path: field.field_path.clone(),
            });
    }
    if let Some(res) = &from.resource_field_ref {
        return resource_value(pod, container, res, node, &var.name).map(Some);
    }
    let reference = from
        .secret_key_ref
        .as_ref()
        .map(|r| (true, &r.name, &r.key, r.optional))
        .or_else(|| {
            let r = from.config_map_key_ref.as_ref()?;
            Some((false, &r.name, &r.key, r.optional))
        });
    if let Some((secret, name, key, optional)) = reference {
        if lookup.objects.is_some() {
            let value = lookup
                .get(secret, name)
                .and_then(|d| d.get(key))
                .map(|v| String::from_utf8_lossy(v).into_owned());
            match value {
                Some(v) => return Ok(Some(v)),
                None if optional == Some(true) => return Ok(None),
                None => {}
            }
        }
    }
    let kind = if from.secret_key_ref.is_some() {
        "secretKeyRef"
    } else if from.config_map_key_ref.is_some() {
        "configMapKeyRef"
    } else {
        "valueFrom"
    };
    Err(ConfigError::Unresolved {
        var: var.name.clone(),
        kind,
    })
}

pub(crate) fn field_value(pod: &Pod, path: &str, node: &NodeFacts) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let map_key = |prefix: &str| -> Option<String> {
        let rest = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(rest.to_string())
    };
    Some(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_else(|| "default".into()),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| node.node_name.clone()),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.podIP" | "status.hostIPs" | "status.podIPs" => {
            node.host_ip.clone()
        }
        _ => {
            if let Some(k) = map_key("metadata.labels['") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(&k).cloned())
                    .unwrap_or_default()
            } else if let Some(k) = map_key("metadata.annotations['") {
                meta.annotations
                    .as_ref()
                    .and_then(|a| a.get(&k).cloned())
                    .unwrap_or_default()
            } else {
                return None;
            }
        }
    })
}

pub(crate) fn resource_value(
    pod: &Pod,
    container: &Container,
    sel: &ResourceFieldSelector,
    node: &NodeFacts,
    var: &str,
) -> Result<String, ConfigError> {
    let target = match sel.container_name.as_deref() {
        None | Some("") => container,
        Some(name) => pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == name))
            .ok_or_else(|| ConfigError::ResourceContainer {
                var: var.to_string(),
                container: name.to_string(),
            })?,
    };
    let (kind, resource) = sel
        .resource
        .split_once('.')
        .ok_or_else(|| ConfigError::Resource {
            var: var.to_string(),
            resource: sel.resource.clone(),
        })?;
    let res = target.resources.clone().unwrap_or_default();
    let parse = |q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| {
        q.0.parse::<Quantity>().map_err(|e| ConfigError::Quantity {
            var: var.to_string(),
            detail: e.to_string(),
        })
    };
    let node_default = match resource {
        "cpu" => node.cpu,
        "memory" => node.memory,
        "ephemeral-storage" => Quantity::default(),
        _ => {
            return Err(ConfigError::Resource {
                var: var.to_string(),
                resource: sel.resource.clone(),
            })
        }
    };
    let value = match kind {
        "limits" => match res.limits.as_ref().and_then(|l| l.get(resource)) {
            Some(q) => parse(q)?,
            None => node_default,
        },
        "requests" => match res.requests.as_ref().and_then(|r| r.get(resource)) {
            Some(q) => parse(q)?,
            None => Quantity::default(),
        },
        _ => {
            return Err(ConfigError::Resource {
                var: var.to_string(),
                resource: sel.resource.clone(),
            })
        }
    };
    let divisor = match &sel.divisor {
        Some(d) if !d.0.is_empty() => parse(d)?,
        _ => Quantity::from_units(1),
    };
    value
        .div_ceil_by(&divisor)
        .map(|v| v.to_string())
        .ok_or_else(|| ConfigError::Quantity {
            var: var.to_string(),
            detail: "divisor must be positive".into(),
        })
}

/// Expands `$(VAR)` from `env` (`$$` is a literal `$`; unknown references stay as written),
/// following the kubelet's expansion rules.
pub fn expand(input: &str, env: &[(String, String)]) -> String {
    if !input.contains('$') {
        return input.to_string();
    }
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            match bytes[i + 1] {
                b'$' => {
                    out.push('$');
                    i += 2;
                    continue;
                }
                b'(' => {
                    if let Some(close) = input[i + 2..].find(')') {
                        let name = &input[i + 2..i + 2 + close];
                        match env.iter().rev().find(|(k, _)| k == name) {
                            Some((_, v)) => out.push_str(v),
                            None => out.push_str(&input[i..i + 3 + close]),
                        }
                        i += 3 + close;
                        continue;
                    }
                }
                _ => {}
            }
        }
        let ch = input[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_is_a_standard_one_unless_the_pod_sets_it() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [
                {"name": "a"},
                {"name": "b", "env": [{"name": "PATH", "value": "/opt/bin"}]}]}
        }))
        .unwrap();
        let spec = pod.spec.as_ref().unwrap();
        let path = |c| {
            environment(&pod, c, &facts(), None)
                .unwrap()
                .into_iter()
                .find(|(k, _)| k == "PATH")
                .map(|(_, v)| v)
        };
        assert_eq!(
            path(&spec.containers[0]).as_deref(),
            Some(super::super::process::DEFAULT_PATH)
        );
        assert_eq!(path(&spec.containers[1]).as_deref(), Some("/opt/bin"));
    }

    fn facts() -> NodeFacts {
        NodeFacts {
            node_name: "node-a".into(),
            host_ip: "10.1.2.3".into(),
            cpu: Quantity::from_units(2),
            memory: Quantity::from_units(8 << 30),
        }
    }

    #[test]
    fn image_names_map_to_executables() {
        assert_eq!(image_executable("busybox"), Some("busybox"));
        assert_eq!(image_executable("busybox:1.36"), Some("busybox"));
        assert_eq!(
            image_executable("docker.io/library/python:3.12"),
            Some("python")
        );
        assert_eq!(
            image_executable("localhost:5000/tools/jq@sha256:abc"),
            Some("jq")
        );
        assert_eq!(image_executable(""), None);
    }

    #[test]
    fn expansion_follows_the_kubelet() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &env), "x-$(B)-$(A)-$");
        assert_eq!(expand("plain", &env), "plain");
        assert_eq!(expand("ünï $(A)", &env), "ünï x");
    }

    #[test]
    fn downward_api_and_resources_resolve() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "web"}},
            "spec": {"serviceAccountName": "sa", "containers": [{
                "name": "c", "command": ["echo", "$(POD_NAME)"],
                "resources": {"limits": {"memory": "256Mi"}},
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                    {"name": "GREETING", "value": "hi $(POD_NAME)"}
                ]}]}
        }))
        .unwrap();
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let env = environment(&pod, c, &facts(), None).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("POD_NAME"), Some("p"));
        assert_eq!(get("NS"), Some("ns"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(get("NODE"), Some("node-a"));
        assert_eq!(get("IP"), Some("10.1.2.3"));
        assert_eq!(get("MEM"), Some("256"));
        assert_eq!(get("CPU"), Some("2"), "no limit: node allocatable");
        assert_eq!(get("GREETING"), Some("hi p"));
        assert_eq!(argv(c, &env), vec!["echo", "p"]);
    }

    #[test]
    fn unsupported_references_are_errors_not_empty_values() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "env": [
                {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]}
        }))
        .unwrap();
        let c = &pod.spec.as_ref().unwrap().containers[0];
        assert!(matches!(
            environment(&pod, c, &facts(), None),
            Err(ConfigError::Unresolved { .. })
        ));
    }
}
