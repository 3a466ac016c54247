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
        let secret = api.get_opt(name).await.ok().flatten()?;
        let mut data: BTreeMap<String, Vec<u8>> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        for (k, v) in secret.string_data.unwrap_or_default() {
            data.insert(k, v.into_bytes());
        }
        Some(data)
    }

    pub async fn config_map_data(&self, ns: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        let cm = api.get_opt(name).await.ok().flatten()?;
        let mut data: BTreeMap<String, Vec<u8>> = cm
            .binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        for (k, v) in cm.data.unwrap_or_default() {
            data.insert(k, v.into_bytes());
        }
        Some(data)
    }

    /// Replaces `envFrom` and `valueFrom` Secret/ConfigMap references in every container of
    /// `pod` by plain values, as the kubelet resolves them. A reference that cannot be resolved
    /// stays as it is (the container then fails to start with that reference in its message);
    /// an `optional` one that cannot be resolved is dropped.
    pub async fn resolve_env(&self, pod: &mut Pod) {
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let Some(spec) = pod.spec.as_mut() else {
            return;
        };
        let containers = spec
            .init_containers
            .iter_mut()
            .flatten()
            .chain(spec.containers.iter_mut());
        for c in containers {
            let mut resolved: Vec<EnvVar> = Vec::new();
            for source in c.env_from.take().unwrap_or_default() {
                let prefix = source.prefix.clone().unwrap_or_default();
                let (data, optional, what) = if let Some(s) = &source.secret_ref {
                    (
                        self.secret_data(&ns, &s.name).await,
                        s.optional == Some(true),
                        format!("secret {:?}", s.name),
                    )
                } else if let Some(cm) = &source.config_map_ref {
                    (
                        self.config_map_data(&ns, &cm.name).await,
                        cm.optional == Some(true),
                        format!("configmap {:?}", cm.name),
                    )
                } else {
                    continue;
                };
                match data {
                    Some(data) => resolved.extend(data.into_iter().map(|(k, v)| EnvVar {
                        name: format!("{prefix}{k}"),
                        value: Some(String::from_utf8_lossy(&v).into_owned()),
                        value_from: None,
                    })),
                    None if optional => {}
                    None => {
                        tracing::warn!(pod = ?pod.metadata.name, container = %c.name, "envFrom {what} not found");
                        c.env_from.get_or_insert_with(Vec::new).push(source);
                    }
                }
            }
            for mut var in c.env.take().unwrap_or_default() {
                let from = var.value_from.as_ref();
                let lookup = if let Some(r) = from.and_then(|f| f.secret_key_ref.as_ref()) {
                    Some((
                        self.secret_data(&ns, &r.name).await,
                        r.key.clone(),
                        r.optional == Some(true),
                    ))
                } else if let Some(r) = from.and_then(|f| f.config_map_key_ref.as_ref()) {
                    Some((
                        self.config_map_data(&ns, &r.name).await,
                        r.key.clone(),
                        r.optional == Some(true),
                    ))
                } else {
                    None
                };
                match lookup {
                    None => resolved.push(var),
                    Some((data, key, optional)) => {
                        match data.and_then(|d| d.get(&key).cloned()) {
                            Some(v) => {
                                var.value = Some(String::from_utf8_lossy(&v).into_owned());
                                var.value_from = None;
                                resolved.push(var);
                            }
                            None if optional => {}
                            // Left unresolved: the container's start reports it.
                            None => resolved.push(var),
                        }
                    }
                }
            }
            c.env = Some(resolved);
        }
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
