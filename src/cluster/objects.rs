//! Secrets and ConfigMaps from the API server: for volumes (the runtime's
//! [`ObjectSource`]) and for `env` / `envFrom` references, which are resolved before a pod
//! reaches the runtime (as Virtual Kubelet resolves them for the web front end).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
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
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn references_resolve_at_each_start_with_one_read_per_object() {
        use crate::runtime::env::{environment, NodeFacts};
        let (client, reads) = fake_api_server().await;
        let objects = ApiObjects::new(client);
        let secret_ref = |key: &str| json!({"secretKeyRef": {"name": "db", "key": key}});
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [
                {"name": "a", "envFrom": [{"prefix": "CM_", "configMapRef": {"name": "app"}}],
                 "env": [
                    {"name": "PASSWORD", "valueFrom": secret_ref("password")},
                    {"name": "USER", "valueFrom": secret_ref("user")},
                    {"name": "PLAIN", "value": "x"},
                    {"name": "GONE", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": true}}},
                 ]},
                {"name": "b", "env": [
                    {"name": "MISSING", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}},
                 ]},
            ]}
        }))
        .unwrap();
        let facts = NodeFacts {
            node_name: "n".into(),
            host_ip: "192.0.2.1".into(),
            cpu: "1".parse().unwrap(),
            memory: "1Gi".parse().unwrap(),
        };
        let (env, missing) = tokio::task::spawn_blocking(move || {
            let spec = pod.spec.as_ref().unwrap();
            (
                environment(&pod, &spec.containers[0], &facts, Some(&objects)),
                environment(&pod, &spec.containers[1], &facts, Some(&objects)),
            )
        })
        .await
        .unwrap();
        let env = env.unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("CM_mode"), Some("fast"));
        assert_eq!(get("PASSWORD"), Some("s3cret"));
        assert_eq!(get("USER"), Some("admin"));
        assert_eq!(get("PLAIN"), Some("x"));
        assert_eq!(
            get("GONE"),
            None,
            "an optional reference to nothing sets nothing"
        );
        // app, db and nope for the first container: each read once though named four times.
        assert_eq!(reads.load(Ordering::SeqCst), 4);
        let err = missing.unwrap_err().to_string();
        assert!(
            err.contains("MISSING") && err.contains("secretKeyRef"),
            "{err}"
        );
    }
}
