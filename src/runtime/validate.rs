//! What a pod must be to run here, checked before anything is stored: the API server's own
//! rules for names, volumes, mounts and quantities (`ValidatePod`), and what procnode needs
//! (something to run, at most so many containers). A [`NewPod`] is the runtime's input: a
//! front end builds it from its wire format (`from_json` for the web API, `from_pod` for node
//! mode and `procnode run`).

use std::fmt;

use k8s_openapi::api::core::v1::Pod;

use super::status::RestartPolicy;

/// A pod's identity on the node: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why a pod body was rejected. Nothing is stored when one of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("request body is not valid pod JSON: {0}")]
    Json(serde_json::Error),
    #[error("request body must be a JSON object (a v1.Pod)")]
    NotAnObject,
    #[error("metadata.name is required")]
    MissingName,
    #[error("{field} {value:?} is invalid: {rule}")]
    InvalidName {
        field: &'static str,
        value: String,
        rule: &'static str,
    },
    #[error("spec.containers must name at least one container")]
    NoContainers,
    #[error("container name {0:?} is used more than once")]
    DuplicateContainer(String),
    #[error("spec.restartPolicy {0:?} is invalid: must be Always, OnFailure or Never")]
    RestartPolicy(String),
    #[error("container {0:?} has neither command nor image: nothing to run")]
    NothingToRun(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("pod updates may not add, remove or rename containers (had {had:?}, got {got:?})")]
    ContainersChanged { had: Vec<String>, got: Vec<String> },
}

/// A validated pod body, ready to be stored.
#[derive(Clone)]
pub struct NewPod {
    pub key: PodKey,
    pub uid: String,
    pub pod: Pod,
    pub restart_policy: RestartPolicy,
    /// The body as received, compact, without `status`.
    pub raw: String,
}

const DNS_LABEL_RULE: &str =
    "must be a DNS-1123 label: lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63 characters";
const DNS_SUBDOMAIN_RULE: &str =
    "must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters";
const UID_RULE: &str = "may hold only letters, digits and '-', at most 128 characters";

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

impl NewPod {
    /// A pod body from the wire (the web API, a record on disk): parsed, then validated as
    /// [`NewPod::from_pod`] does. The JSON is kept as received (without `status`), for getPod's
    /// byte-faithful answer and the record.
    pub fn from_json(body: &[u8]) -> Result<NewPod, PodError> {
        let mut value: serde_json::Value = serde_json::from_slice(body).map_err(PodError::Json)?;
        let obj = value.as_object_mut().ok_or(PodError::NotAnObject)?;
        obj.remove("status");
        let pod = <Pod as serde::Deserialize>::deserialize(&value).map_err(PodError::Json)?;
        let raw = serde_json::to_string(&value).map_err(PodError::Json)?;
        NewPod::validated(pod, raw)
    }

    /// A typed pod (node mode, `procnode run`), validated. Its JSON is made once, for the
    /// record on disk.
    pub fn from_pod(mut pod: Pod) -> Result<NewPod, PodError> {
        pod.status = None;
        let raw = serde_json::to_string(&pod).map_err(PodError::Json)?;
        NewPod::validated(pod, raw)
    }

    /// Validates a pod. Names that end up in paths are checked here, so that nothing later
    /// can escape the state directory.
    fn validated(pod: Pod, raw: String) -> Result<NewPod, PodError> {
        let name = pod
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or(PodError::MissingName)?;
        if !is_dns_subdomain(&name) {
            return Err(PodError::InvalidName {
                field: "metadata.name",
                value: name,
                rule: DNS_SUBDOMAIN_RULE,
            });
        }
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_string());
        if !is_dns_label(&namespace) {
            return Err(PodError::InvalidName {
                field: "metadata.namespace",
                value: namespace,
                rule: DNS_LABEL_RULE,
            });
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if uid.len() > 128 || !uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(PodError::InvalidName {
                field: "metadata.uid",
                value: uid,
                rule: UID_RULE,
            });
        }
        let spec = pod.spec.as_ref().ok_or(PodError::NoContainers)?;
        if spec.containers.is_empty() {
            return Err(PodError::NoContainers);
        }
        let mut seen = std::collections::HashSet::new();
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
        {
            if !is_dns_label(&c.name) {
                return Err(PodError::InvalidName {
                    field: "container name",
                    value: c.name.clone(),
                    rule: DNS_LABEL_RULE,
                });
            }
            if !seen.insert(c.name.as_str()) {
                return Err(PodError::DuplicateContainer(c.name.clone()));
            }
            let has_command = c.command.as_ref().is_some_and(|v| !v.is_empty());
            let has_image = c
                .image
                .as_deref()
                .and_then(crate::runtime::image_executable)
                .is_some();
            if !has_command && !has_image {
                return Err(PodError::NothingToRun(c.name.clone()));
            }
        }
        validate_restart_policies(spec)?;
        validate_volumes(spec)?;
        validate_quantities(spec)?;
        let restart_policy =
            RestartPolicy::parse(spec.restart_policy.as_deref()).ok_or_else(|| {
                PodError::RestartPolicy(spec.restart_policy.clone().unwrap_or_default())
            })?;
        Ok(NewPod {
            key: PodKey { namespace, name },
            uid,
            pod,
            restart_policy,
            raw,
        })
    }
}

impl NewPod {
    /// Gives a pod that came without `metadata.uid` the uid `uid` (in what getPod returns too).
    pub fn set_uid(&mut self, uid: &str) {
        self.uid = uid.to_string();
        self.pod.metadata.uid = Some(uid.to_string());
        if let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&self.raw) {
            if let Some(meta) = value
                .as_object_mut()
                .map(|o| o.entry("metadata").or_insert_with(|| serde_json::json!({})))
                .and_then(|m| m.as_object_mut())
            {
                meta.insert("uid".into(), uid.into());
                if let Ok(raw) = serde_json::to_string(&value) {
                    self.raw = raw;
                }
            }
        }
    }
}

/// A fresh random uid in the API server's format (a version 4 UUID), for a pod created
/// without one.
pub fn generate_uid() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        // No urandom: the time and the pid still make it unique on this host.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        b[..12].copy_from_slice(&t.to_le_bytes()[..12]);
        b[12..].copy_from_slice(&std::process::id().to_le_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A path with no `..` component (the API server's rule for mountPath and hostPath).
fn no_backsteps(p: &str) -> bool {
    !std::path::Path::new(p)
        .components()
        .any(|c| c == std::path::Component::ParentDir)
}

/// A relative path without `..` (subPath, item paths, keys).
fn relative_path(p: &str) -> bool {
    !p.is_empty() && !p.starts_with('/') && no_backsteps(p)
}

/// Volumes and mounts as the API server validates them (`ValidatePod`): volume names are
/// unique DNS-1123 labels, every mount names a volume, mountPath has no `..`, subPath and item
/// paths are relative without `..`, hostPath paths have no `..`.
fn validate_volumes(spec: &k8s_openapi::api::core::v1::PodSpec) -> Result<(), PodError> {
    let invalid = |field: String, message: &str| PodError::Invalid {
        field,
        message: message.to_string(),
    };
    let mut names = std::collections::HashSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let field = |f: &str| format!("spec.volumes[{i}]{f}");
        if !is_dns_label(&v.name) {
            return Err(invalid(
                field(".name"),
                &format!("{:?} {DNS_LABEL_RULE}", v.name),
            ));
        }
        if !names.insert(v.name.as_str()) {
            return Err(invalid(
                field(".name"),
                &format!("{:?} is used more than once", v.name),
            ));
        }
        if let Some(h) = &v.host_path {
            if !h.path.starts_with('/') || !no_backsteps(&h.path) {
                return Err(invalid(
                    field(".hostPath.path"),
                    "must be an absolute path without '..'",
                ));
            }
        }
        let mut items: Vec<(String, &str)> = Vec::new();
        if let Some(d) = &v.downward_api {
            for (j, it) in d.items.iter().flatten().enumerate() {
                items.push((field(&format!(".downwardAPI.items[{j}].path")), &it.path));
            }
        }
        if let Some(c) = &v.config_map {
            for (j, it) in c.items.iter().flatten().enumerate() {
                items.push((field(&format!(".configMap.items[{j}].path")), &it.path));
            }
        }
        if let Some(c) = &v.secret {
            for (j, it) in c.items.iter().flatten().enumerate() {
                items.push((field(&format!(".secret.items[{j}].path")), &it.path));
            }
        }
        for (k, src) in v
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
            .enumerate()
        {
            let base = field(&format!(".projected.sources[{k}]"));
            for (j, it) in src
                .config_map
                .iter()
                .flat_map(|c| c.items.iter().flatten())
                .chain(src.secret.iter().flat_map(|c| c.items.iter().flatten()))
                .enumerate()
            {
                items.push((format!("{base}.items[{j}].path"), &it.path));
            }
            for (j, it) in src
                .downward_api
                .iter()
                .flat_map(|d| d.items.iter().flatten())
                .enumerate()
            {
                items.push((format!("{base}.downwardAPI.items[{j}].path"), &it.path));
            }
            if let Some(t) = &src.service_account_token {
                items.push((format!("{base}.serviceAccountToken.path"), &t.path));
            }
        }
        for (f, path) in items {
            if !relative_path(path) {
                return Err(invalid(f, "must be a relative path without '..'"));
            }
        }
    }
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| ("initContainers", c))
        .chain(spec.containers.iter().map(|c| ("containers", c)));
    let mut counts: std::collections::HashMap<&str, usize> = Default::default();
    for (list, c) in containers {
        let i = {
            let n = counts.entry(list).or_default();
            *n += 1;
            *n - 1
        };
        for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
            let field = |f: &str| format!("spec.{list}[{i}].volumeMounts[{j}].{f}");
            if !names.contains(m.name.as_str()) {
                return Err(invalid(
                    field("name"),
                    &format!("{:?} is not a volume of the pod", m.name),
                ));
            }
            if m.mount_path.is_empty() {
                return Err(invalid(field("mountPath"), "is required"));
            }
            if !no_backsteps(&m.mount_path) {
                return Err(invalid(field("mountPath"), "must not contain '..'"));
            }
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                if !relative_path(sub) {
                    return Err(invalid(
                        field("subPath"),
                        "must be a relative path without '..'",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A container's own `restartPolicy`, as the API server allows it: `Always` on an init
/// container (a sidecar), nothing on an app container.
fn validate_restart_policies(spec: &k8s_openapi::api::core::v1::PodSpec) -> Result<(), PodError> {
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        match c.restart_policy.as_deref() {
            None | Some("Always") => {}
            Some(other) => {
                return Err(PodError::Invalid {
                    field: format!("spec.initContainers[{i}].restartPolicy"),
                    message: format!(
                        "{other:?} is not supported: an init container's may only be \"Always\" (a sidecar)"
                    ),
                })
            }
        }
    }
    for (i, c) in spec.containers.iter().enumerate() {
        if c.restart_policy.is_some() {
            return Err(PodError::Invalid {
                field: format!("spec.containers[{i}].restartPolicy"),
                message: "may not be set on an app container (only on init containers)".into(),
            });
        }
    }
    Ok(())
}

/// Whether an init container is a sidecar (`restartPolicy: Always`).
pub fn is_sidecar(c: &k8s_openapi::api::core::v1::Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// Resource requests and limits, and emptyDir size limits, are valid non-negative quantities
/// (the API server refuses others; procnode used to ignore them).
fn validate_quantities(spec: &k8s_openapi::api::core::v1::PodSpec) -> Result<(), PodError> {
    use crate::quantity::Quantity;
    let check = |field: String, q: &str| -> Result<(), PodError> {
        match q.parse::<Quantity>() {
            Ok(v) if v >= Quantity::default() => Ok(()),
            Ok(_) => Err(PodError::Invalid {
                field,
                message: format!("{q:?} must be greater than or equal to 0"),
            }),
            Err(e) => Err(PodError::Invalid {
                field,
                message: e.to_string(),
            }),
        }
    };
    let lists = [
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or_default(),
        ),
        ("containers", spec.containers.as_slice()),
    ];
    for (list, containers) in lists {
        for (i, c) in containers.iter().enumerate() {
            let Some(r) = &c.resources else { continue };
            for (kind, map) in [("limits", &r.limits), ("requests", &r.requests)] {
                for (name, q) in map.iter().flatten() {
                    check(format!("spec.{list}[{i}].resources.{kind}[{name}]"), &q.0)?;
                }
            }
        }
    }
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if let Some(q) = v.empty_dir.as_ref().and_then(|e| e.size_limit.as_ref()) {
            check(format!("spec.volumes[{i}].emptyDir.sizeLimit"), &q.0)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<NewPod, PodError> {
        NewPod::from_json(v.to_string().as_bytes())
    }

    #[test]
    fn keeps_unknown_fields_and_drops_status() {
        let p = parse(serde_json::json!({
            "metadata": {"name": "a", "namespace": "ns", "creationTimestamp": null, "x-unknown": 1},
            "spec": {"containers": [{"name": "c", "image": "busybox",
                      "ports": [{"containerPort": 80, "name": "http"}],
                      "readinessProbe": {"httpGet": {"port": "http"}},
                      "livenessProbe": {"tcpSocket": {"port": 8080}}}], "futureField": {"k": "v"}},
            "status": {"phase": "Pending"}
        }))
        .unwrap();
        assert_eq!(p.key.to_string(), "ns/a");
        assert!(p.raw.contains("\"x-unknown\":1"));
        assert!(p.raw.contains("\"futureField\":{\"k\":\"v\"}"));
        assert!(!p.raw.contains("status"));
    }

    #[test]
    fn rejects_what_cannot_run() {
        let c = |name: &str| serde_json::json!({"name": name, "command": ["true"]});
        let cases = [
            serde_json::json!([]),
            serde_json::json!({"spec": {"containers": [c("a")]}}),
            serde_json::json!({"metadata": {"name": "a"}, "spec": {"containers": []}}),
            serde_json::json!({"metadata": {"name": "a"}, "spec": {"containers": [c("x"), c("x")]}}),
            serde_json::json!({"metadata": {"name": "../etc"}, "spec": {"containers": [c("a")]}}),
            serde_json::json!({"metadata": {"name": "a", "namespace": "a/b"}, "spec": {"containers": [c("a")]}}),
            serde_json::json!({"metadata": {"name": "a"}, "spec": {"containers": [c("Bad_Name")]}}),
            serde_json::json!({"metadata": {"name": "a"}, "spec": {"restartPolicy": "Sometimes", "containers": [c("a")]}}),
            serde_json::json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "a"}]}}),
            serde_json::json!({"metadata": {"name": "a", "uid": "../x"}, "spec": {"containers": [c("a")]}}),
        ];
        for case in cases {
            assert!(parse(case.clone()).is_err(), "accepted {case}");
        }
    }

    #[test]
    fn bad_quantities_are_refused_naming_the_field() {
        let with = |limits: serde_json::Value| {
            serde_json::json!({"metadata": {"name": "q"}, "spec": {"containers": [
                {"name": "a", "command": ["true"], "resources": {"limits": limits}}]}})
        };
        for (bad, why) in [
            ("abc", "not a Kubernetes quantity"),
            ("-1Gi", "greater than or equal to 0"),
            ("1e100", "not a Kubernetes quantity"),
        ] {
            let err = parse(with(serde_json::json!({"memory": bad})))
                .err()
                .expect(bad)
                .to_string();
            assert!(
                err.contains("spec.containers[0].resources.limits[memory]") && err.contains(why),
                "{bad}: {err}"
            );
        }
        assert!(parse(with(serde_json::json!({"memory": "64Mi", "cpu": "500m"}))).is_ok());
        let sized = serde_json::json!({"metadata": {"name": "q"}, "spec": {
            "volumes": [{"name": "v", "emptyDir": {"sizeLimit": "lots"}}],
            "containers": [{"name": "a", "command": ["true"]}]}});
        let err = parse(sized).err().unwrap().to_string();
        assert!(err.contains("spec.volumes[0].emptyDir.sizeLimit"), "{err}");
    }

    #[test]
    fn names_are_checked_like_kubernetes_does() {
        assert!(is_dns_label("web-1"));
        assert!(!is_dns_label("-web"));
        assert!(!is_dns_label("Web"));
        assert!(is_dns_subdomain("web.example-1"));
        assert!(!is_dns_subdomain("web..x"));
        assert!(!is_dns_subdomain(".."));
    }
}
