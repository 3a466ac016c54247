//! The pods bound to this node: a watch on `spec.nodeName`, turned into runtime calls, and
//! every status change pushed back at once.
//!
//! - A new pod is started (its Secret/ConfigMap env references resolved first); a pod the
//!   runtime already runs (restored after a restart of procnode) is taken over; a pod that is
//!   already terminal in the cluster and unknown here is left alone.
//! - A changed spec or metadata goes to [`Runtime::update`], which applies what Kubernetes
//!   lets change.
//! - A pod with a deletion timestamp is stopped with its grace period, then its object is
//!   deleted with grace 0 (as the kubelet does once the containers are gone).
//! - On every (re)list, pods the runtime runs that the cluster no longer has are stopped.
//! - One task per pod follows the runtime's status changes and patches `pods/status` whenever
//!   the status differs from the last one written, recording the events the change stands for
//!   ([`super::events`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;

use super::events::Recorder;
use crate::runtime::Runtime;
use crate::store::{NewPod, PodEntry, PodKey};

/// What handling a pod needs.
struct Context {
    client: kube::Client,
    runtime: Arc<Runtime>,
    events: Recorder,
}

/// What the watch loop knows of a pod it handed to the runtime.
struct Tracked {
    uid: String,
    /// Spec, labels and annotations as last applied (status and resourceVersion excluded).
    fingerprint: String,
    deleting: bool,
}

fn key_of(pod: &Pod) -> Option<PodKey> {
    Some(PodKey {
        namespace: pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: pod.metadata.name.clone()?,
    })
}

fn fingerprint(pod: &Pod) -> String {
    serde_json::to_string(&(&pod.spec, &pod.metadata.labels, &pod.metadata.annotations))
        .unwrap_or_default()
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

/// Watches the node's pods until aborted.
pub async fn run(client: kube::Client, runtime: Arc<Runtime>, node: String) {
    let api: Api<Pod> = Api::all(client.clone());
    let cx = Context {
        events: Recorder::new(client.clone(), &node),
        runtime: runtime.clone(),
        client,
    };
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut tracked: HashMap<PodKey, Tracked> = HashMap::new();
    let mut listed: HashSet<PodKey> = HashSet::new();
    let mut pushers: HashSet<(PodKey, String)> = HashSet::new();
    loop {
        let event = match events.try_next().await {
            Ok(Some(e)) => e,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "pod watch failed; retrying");
                continue;
            }
        };
        match event {
            Event::Init => listed.clear(),
            Event::InitApply(pod) | Event::Apply(pod) => {
                if let Some(key) = key_of(&pod) {
                    listed.insert(key.clone());
                    apply(&cx, &mut tracked, &mut pushers, key, pod).await;
                }
            }
            Event::InitDone => {
                // The cluster's list is complete: what the runtime runs beyond it was deleted
                // while procnode was away.
                for entry in runtime.list() {
                    if !listed.contains(&entry.key) {
                        tracing::info!(pod = %entry.key, "gone from the cluster; stopping it");
                        tracked.remove(&entry.key);
                        let runtime = runtime.clone();
                        tokio::spawn(async move { runtime.delete(&entry.key, None).await });
                    }
                }
            }
            Event::Delete(pod) => {
                if let Some(key) = key_of(&pod) {
                    if tracked.remove(&key).is_some() {
                        let runtime = runtime.clone();
                        tokio::spawn(async move { runtime.delete(&key, None).await });
                    }
                }
            }
        }
    }
}

async fn apply(
    cx: &Context,
    tracked: &mut HashMap<PodKey, Tracked>,
    pushers: &mut HashSet<(PodKey, String)>,
    key: PodKey,
    pod: Pod,
) {
    let runtime = &cx.runtime;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(cx.client.clone(), &key.namespace);
    let known = runtime.get(&key).ok().filter(|e| e.uid == uid);

    if pod.metadata.deletion_timestamp.is_some() {
        let t = tracked.entry(key.clone()).or_insert_with(|| Tracked {
            uid: uid.clone(),
            fingerprint: String::new(),
            deleting: false,
        });
        if t.deleting {
            return;
        }
        t.deleting = true;
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64));
        let runtime = runtime.clone();
        let events = cx.events.clone();
        tokio::spawn(async move {
            if let Some(entry) = known {
                events.record(&key, &uid, super::events::stopping(&entry.status()));
                runtime.delete(&key, grace).await;
            }
            // The containers are gone: remove the object, as the kubelet does.
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&key.name, &params).await {
                Ok(_) => tracing::info!(pod = %key, "stopped and removed"),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => tracing::warn!(pod = %key, error = %e, "cannot remove the pod object"),
            }
        });
        return;
    }

    let print = fingerprint(&pod);
    match known {
        Some(entry) => {
            let changed = tracked
                .get(&key)
                .is_some_and(|t| t.uid == uid && t.fingerprint != print);
            if changed {
                let updated = match NewPod::from_pod(pod.clone()) {
                    Ok(new) => runtime.update(new).await.map(|_| ()),
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = updated {
                    tracing::warn!(pod = %key, error = %e, "cannot apply the pod's update");
                }
            }
            tracked.insert(
                key.clone(),
                Tracked {
                    uid: uid.clone(),
                    fingerprint: print,
                    deleting: false,
                },
            );
            start_pusher(pushers, cx, api, entry, &pod);
        }
        None if is_terminal(&pod) => {}
        None => {
            // As received: Secret and ConfigMap references are resolved by the runtime when
            // each container starts, so no value is stored or served with the pod.
            let created = match NewPod::from_pod(pod.clone()) {
                Ok(new) => runtime.create(new).await,
                Err(e) => Err(e.into()),
            };
            match created {
                Ok(crate::runtime::Created::New(entry))
                | Ok(crate::runtime::Created::Existing(entry)) => {
                    tracing::info!(pod = %key, "started");
                    tracked.insert(
                        key.clone(),
                        Tracked {
                            uid,
                            fingerprint: print,
                            deleting: false,
                        },
                    );
                    start_pusher(pushers, cx, api, entry, &pod);
                }
                Err(e) => {
                    tracing::warn!(pod = %key, error = %e, "cannot run the pod");
                    let status = serde_json::json!({"status": {
                        "phase": "Failed", "reason": "ProviderFailed", "message": e.to_string()
                    }});
                    let _ = api
                        .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&status))
                        .await;
                }
            }
        }
    }
}

/// The merge patch of a pod's status subresource.
#[derive(Debug, serde::Serialize)]
struct StatusPatch<'a> {
    status: &'a PodStatus,
}

/// One status pusher per pod (by key and uid).
fn start_pusher(
    pushers: &mut HashSet<(PodKey, String)>,
    cx: &Context,
    api: Api<Pod>,
    entry: Arc<PodEntry>,
    pod: &Pod,
) {
    if pushers.insert((entry.key.clone(), entry.uid.clone())) {
        // The status the cluster has: what the first push compares with, for events.
        let cluster_status = pod.status.clone().unwrap_or_default();
        let (runtime, events) = (cx.runtime.clone(), cx.events.clone());
        tokio::spawn(push_status(api, entry, runtime, events, cluster_status));
    }
}

/// Patches `pods/status` on every change of the pod's state, until the runtime forgets the
/// pod or its object is gone; records the events each change stands for (compared with the
/// status last written, at first the one the cluster had).
async fn push_status(
    api: Api<Pod>,
    entry: Arc<PodEntry>,
    runtime: Arc<Runtime>,
    events: Recorder,
    cluster_status: PodStatus,
) {
    let mut changes = entry.status_changes();
    let mut last: Option<PodStatus> = None;
    let mut written = cluster_status;
    loop {
        let status = entry.status();
        if last.as_ref() != Some(&status) {
            // JSON is made here, for the API call only.
            let patch = StatusPatch { status: &status };
            match api
                .patch_status(
                    &entry.key.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {
                    let happened =
                        super::events::between(&written, &status, &entry.key, &entry.uid);
                    events.record(&entry.key, &entry.uid, happened);
                    written = status.clone();
                    last = Some(status);
                }
                Err(kube::Error::Api(e)) if e.code == 404 => return,
                Err(e) => {
                    tracing::warn!(pod = %entry.key, error = %e, "cannot write the pod status; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        // What the status does not show (failed probes and hooks).
        let notes: Vec<super::events::PodEvent> = entry
            .take_notes()
            .into_iter()
            .map(super::events::PodEvent::from)
            .collect();
        events.record(&entry.key, &entry.uid, notes);
        // A finished pod's state does not change any more.
        let still_ours = runtime
            .get(&entry.key)
            .is_ok_and(|e| Arc::ptr_eq(&e, &entry));
        if !still_ours || (entry.is_done() && Some(entry.status()) == last) {
            return;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}
