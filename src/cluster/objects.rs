//! Secrets and ConfigMaps from the API server: for volumes (the runtime's
//! [`ObjectSource`]) and for `env` / `envFrom` references, which are resolved before a pod
//! reaches the runtime (as Virtual Kubelet resolves them for the web front end).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, EnvVar, Pod, Secret};
use kube::api::Api;

use crate::runtime::volumes::ObjectSource;

/// Reads Secrets and ConfigMaps through the API server.
#[derive(Clone)]
pub struct ApiObjects {
    client: kube::Client,
    handle: tokio::runtime::Handle,
}

impl std::fmt::Debug for ApiObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiObjects")
    }
}

impl ApiObjects {
    /// Must be made inside the tokio runtime (volume preparation calls it from blocking
    /// threads, which then wait on that runtime).
    pub fn new(client: kube::Client) -> ApiObjects {
        ApiObjects {
            client,
            handle: tokio::runtime::Handle::current(),
        }
    }

    pub async fn secret_data(&self, ns: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let secret = logged(api.get_opt(name).await, "secret", ns, name)?;
        Some(contents(secret.data, secret.string_data))
    }

    pub async fn config_map_data(&self, ns: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        let cm = logged(api.get_opt(name).await, "configmap", ns, name)?;
        Some(contents(cm.binary_data, cm.data))
    }

    /// Replaces `envFrom` and `valueFrom` Secret/ConfigMap references in every container of
    /// `pod` by plain values, as the kubelet resolves them. A reference that cannot be resolved
    /// stays as it is (the container then fails to start with that reference in its message);
    /// an `optional` one that cannot be resolved is dropped. Each object the pod names is read
    /// once, however many references it has.
    pub async fn resolve_env(&self, pod: &mut Pod) {
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let Some(spec) = pod.spec.as_mut() else {
            return;
        };
        let mut fetched = Fetched::default();
        let containers = spec
            .init_containers
            .iter_mut()
            .flatten()
            .chain(spec.containers.iter_mut());
        for c in containers {
            let mut resolved: Vec<EnvVar> = Vec::new();
            for source in c.env_from.take().unwrap_or_default() {
                let prefix = source.prefix.clone().unwrap_or_default();
                let (object, optional) = if let Some(s) = &source.secret_ref {
                    (Object::Secret(&s.name), s.optional == Some(true))
                } else if let Some(cm) = &source.config_map_ref {
                    (Object::ConfigMap(&cm.name), cm.optional == Some(true))
                } else {
                    continue;
                };
                match fetched.get(self, &ns, object).await {
                    Some(data) => resolved.extend(data.iter().map(|(k, v)| EnvVar {
                        name: format!("{prefix}{k}"),
                        value: Some(String::from_utf8_lossy(v).into_owned()),
                        value_from: None,
                    })),
                    None if optional => {}
                    None => {
                        tracing::warn!(pod = ?pod.metadata.name, container = %c.name, "envFrom {object} not found");
                        c.env_from.get_or_insert_with(Vec::new).push(source);
                    }
                }
            }
            for mut var in c.env.take().unwrap_or_default() {
                let from = var.value_from.as_ref();
                let secret = from.and_then(|f| f.secret_key_ref.as_ref());
                let reference = secret
                    .map(|r| (Object::Secret(&r.name), &r.key, r.optional))
                    .or_else(|| {
                        let r = from.and_then(|f| f.config_map_key_ref.as_ref())?;
                        Some((Object::ConfigMap(&r.name), &r.key, r.optional))
                    });
                let Some((object, key, optional)) = reference else {
                    resolved.push(var);
                    continue;
                };
                let value = fetched
                    .get(self, &ns, object)
                    .await
                    .and_then(|d| d.get(key))
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                match value {
                    Some(v) => {
                        var.value = Some(v);
                        var.value_from = None;
                        resolved.push(var);
                    }
                    None if optional == Some(true) => {}
                    // Left unresolved: the container's start reports it.
                    None => resolved.push(var),
                }
            }
            c.env = Some(resolved);
        }
    }
}

/// An object's keys: its binary entries, then its text ones (which win on a clash, as the
/// API server's `stringData` does over `data`).
fn contents(
    bytes: Option<BTreeMap<String, k8s_openapi::ByteString>>,
    text: Option<BTreeMap<String, String>>,
) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = bytes
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in text.unwrap_or_default() {
        data.insert(k, v.into_bytes());
    }
    data
}

/// The object, or `None` when it does not exist or cannot be read; a read that failed for
/// another reason than absence (a refusal, an unreachable API server) is logged, since it
/// looks to the pod like a missing object.
fn logged<T>(read: Result<Option<T>, kube::Error>, kind: &str, ns: &str, name: &str) -> Option<T> {
    read.unwrap_or_else(|e| {
        tracing::warn!(kind, namespace = ns, name, error = %e, "cannot read the object");
        None
    })
}

/// A Secret or ConfigMap named by a pod.
#[derive(Clone, Copy)]
enum Object<'a> {
    Secret(&'a str),
    ConfigMap(&'a str),
}

impl std::fmt::Display for Object<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Object::Secret(name) => write!(f, "secret {name:?}"),
            Object::ConfigMap(name) => write!(f, "configmap {name:?}"),
        }
    }
}

type ObjectData = BTreeMap<String, Vec<u8>>;

/// The objects one resolution has read (absent ones too), so each is fetched once.
#[derive(Default)]
struct Fetched {
    secrets: BTreeMap<String, Option<ObjectData>>,
    config_maps: BTreeMap<String, Option<ObjectData>>,
}

impl Fetched {
    async fn get(&mut self, api: &ApiObjects, ns: &str, object: Object<'_>) -> Option<&ObjectData> {
        let (cache, name) = match object {
            Object::Secret(name) => (&mut self.secrets, name),
            Object::ConfigMap(name) => (&mut self.config_maps, name),
        };
        if !cache.contains_key(name) {
            let data = match object {
                Object::Secret(_) => api.secret_data(ns, name).await,
                Object::ConfigMap(_) => api.config_map_data(ns, name).await,
            };
            cache.insert(name.to_string(), data);
        }
        cache.get(name).and_then(Option::as_ref)
    }
}

impl ApiObjects {
    /// A bound token for `account` from the API server's TokenRequest.
    pub async fn token(
        &self,
        ns: &str,
        account: &str,
        audience: Option<&str>,
        expiration_seconds: Option<i64>,
    ) -> Option<String> {
        use k8s_openapi::api::authentication::v1::TokenRequest;
        use k8s_openapi::api::core::v1::ServiceAccount;
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        let request: TokenRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": audience.map(|a| vec![a.to_string()]).unwrap_or_default(),
                "expirationSeconds": expiration_seconds.unwrap_or(3600),
            }
        }))
        .ok()?;
        match api
            .create_subresource::<TokenRequest, TokenRequest>(
                "token",
                account,
                &Default::default(),
                &request,
            )
            .await
        {
            Ok(answer) => answer.status.map(|s| s.token),
            Err(e) => {
                tracing::warn!(namespace = ns, account, error = %e, "TokenRequest failed");
                None
            }
        }
    }
}

impl ObjectSource for ApiObjects {
    fn service_account_token(
        &self,
        namespace: &str,
        service_account: &str,
        audience: Option<&str>,
        expiration_seconds: Option<i64>,
    ) -> Option<String> {
        self.handle
            .block_on(self.token(namespace, service_account, audience, expiration_seconds))
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.handle.block_on(self.secret_data(namespace, name))
    }

    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.handle.block_on(self.config_map_data(namespace, name))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::routing::get;
    use serde_json::{json, Value};

    use super::*;

    /// An API server that knows one Secret and one ConfigMap in `default`, and counts reads.
    async fn fake_api_server() -> (kube::Client, Arc<AtomicUsize>) {
        let reads = Arc::new(AtomicUsize::new(0));
        let object = |State(reads): State<Arc<AtomicUsize>>,
                      Path((ns, kind, name)): Path<(String, String, String)>| async move {
            reads.fetch_add(1, Ordering::SeqCst);
            match (ns.as_str(), kind.as_str(), name.as_str()) {
                ("default", "secrets", "db") => Ok(axum::Json(json!({
                    "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
                    "data": {"password": "czNjcmV0", "user": "YWRtaW4="}
                }))),
                ("default", "configmaps", "app") => Ok(axum::Json(json!({
                    "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app"},
                    "data": {"mode": "fast"}
                }))),
                _ => Err((
                    StatusCode::NOT_FOUND,
                    axum::Json(json!({
                        "apiVersion": "v1", "kind": "Status", "status": "Failure",
                        "reason": "NotFound", "code": 404, "message": format!("{kind} {name:?} not found")
                    })),
                )),
            }
        };
        let app = axum::Router::new()
            .route("/api/v1/namespaces/{ns}/{kind}/{name}", get(object))
            .with_state(reads.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let config = kube::Config::new(url.parse().unwrap());
        (kube::Client::try_from(config).unwrap(), reads)
    }

    fn env_of(pod: &Pod, container: usize) -> Vec<(String, Value)> {
        let c = &pod.spec.as_ref().unwrap().containers[container];
        let mut env: Vec<(String, Value)> = c
            .env
            .iter()
            .flatten()
            .map(|v| (v.name.clone(), serde_json::to_value(v).unwrap()))
            .collect();
        env.sort_by(|a, b| a.0.cmp(&b.0));
        env
    }

    #[tokio::test]
    async fn references_resolve_with_one_read_per_object() {
        let (client, reads) = fake_api_server().await;
        let objects = ApiObjects::new(client);
        let secret_ref = |key: &str| json!({"secretKeyRef": {"name": "db", "key": key}});
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [
                {"name": "a", "envFrom": [{"prefix": "CM_", "configMapRef": {"name": "app"}}],
                 "env": [
                    {"name": "PASSWORD", "valueFrom": secret_ref("password")},
                    {"name": "USER", "valueFrom": secret_ref("user")},
                    {"name": "PLAIN", "value": "x"},
                 ]},
                {"name": "b", "envFrom": [{"secretRef": {"name": "db"}}],
                 "env": [
                    {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "app", "key": "mode"}}},
                    {"name": "GONE", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": true}}},
                    {"name": "MISSING", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}},
                 ]},
            ]}
        }))
        .unwrap();
        objects.resolve_env(&mut pod).await;

        let a = env_of(&pod, 0);
        let names: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["CM_mode", "PASSWORD", "PLAIN", "USER"]);
        for ((_, v), want) in a.iter().zip(["fast", "s3cret", "x", "admin"]) {
            assert_eq!(v["value"], want, "{v}");
            assert!(v.get("valueFrom").is_none(), "{v}");
        }
        let b = env_of(&pod, 1);
        let by_name = |n: &str| b.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(by_name("password").unwrap()["value"], "s3cret");
        assert_eq!(by_name("MODE").unwrap()["value"], "fast");
        // An optional reference to an absent object is dropped; a required one is kept for
        // the container's start to report.
        assert!(by_name("GONE").is_none());
        assert_eq!(
            by_name("MISSING").unwrap()["valueFrom"]["secretKeyRef"]["name"],
            "nope"
        );
        // db, app and nope: each read once, though named seven times.
        assert_eq!(reads.load(Ordering::SeqCst), 3);
    }
}
