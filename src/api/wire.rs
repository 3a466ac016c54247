//! The web contract's JSON forms of a pod and of the node's figures, made here at the edge from the runtime's typed
//! values: the pod as received with the live status spliced in (getPod is byte-faithful to
//! what the broker sent), the status alone, and the short form of listings.

use crate::runtime::PodEntry;

/// JSON of a typed value made inside procnode (node figures, statuses): it always serialises.
pub fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("procnode's own values serialise")
}

/// The pod's status as the contract's getPodStatus answers it.
pub fn status_json(entry: &PodEntry) -> String {
    to_json(&entry.status())
}

/// The pod as received, with procnode's live status in place of the one it came with. The
/// stored JSON is spliced, not re-serialised, so key order and unknown fields are kept.
pub fn pod_json(entry: &PodEntry) -> String {
    let raw = entry.raw();
    let status = status_json(entry);
    let body = raw.trim_end();
    let body = body.strip_suffix('}').unwrap_or(body);
    let sep = if body.trim_end().ends_with('{') {
        ""
    } else {
        ","
    };
    let mut out = String::with_capacity(body.len() + status.len() + 16);
    out.push_str(body);
    out.push_str(sep);
    out.push_str("\"status\":");
    out.push_str(&status);
    out.push('}');
    out
}

/// A short form of the pod (identity, container names and live phase) for listings that
/// would not fit the broker's read limit in full.
pub fn summary_json(entry: &PodEntry) -> String {
    let phase = entry.phase().as_str();
    let pod = entry.pod();
    let containers: Vec<serde_json::Value> = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .map(|c| serde_json::json!({"name": c.name}))
        .collect();
    let key = entry.key();
    serde_json::json!({
        "metadata": {"name": key.name, "namespace": key.namespace, "uid": entry.uid()},
        "spec": {"containers": containers},
        "status": {"phase": phase},
    })
    .to_string()
}
