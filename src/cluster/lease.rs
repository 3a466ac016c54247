//! The node heartbeat: a Lease named after the node in `kube-node-lease`, renewed every 10 s
//! (the kubelet's default), created when missing.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// How often the lease is renewed.
pub const RENEW_EVERY: Duration = Duration::from_secs(10);
/// How long the lease holds without renewal (the kubelet's 40 s).
pub const LEASE_SECONDS: i32 = 40;

async fn renew(api: &Api<Lease>, node: &str) -> Result<(), kube::Error> {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let spec = json!({"spec": {
        "holderIdentity": node,
        "leaseDurationSeconds": LEASE_SECONDS,
        "renewTime": now,
    }});
    match api
        .patch(node, &PatchParams::default(), &Patch::Merge(&spec))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let lease: Lease = serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": node, "namespace": "kube-node-lease"},
                "spec": spec["spec"],
            }))
            .expect("a valid Lease");
            api.create(&PostParams::default(), &lease).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Renews the lease until aborted.
pub async fn run(client: kube::Client, node: String) {
    let api: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let mut tick = tokio::time::interval(RENEW_EVERY);
    loop {
        tick.tick().await;
        if let Err(e) = renew(&api, &node).await {
            tracing::warn!(node = %node, error = %e, "cannot renew the node lease");
        }
    }
}
