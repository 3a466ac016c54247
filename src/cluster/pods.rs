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

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;

use super::events::Recorder;
use crate::runtime::Runtime;
use crate::runtime::{NewPod, PodEntry, PodKey};

/// What handling a pod needs.
struct Context {
    client: kube::Client,
    runtime: Arc<Runtime>,
    events: Recorder,
}

/// What to do with a pod the watch delivered ([`decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Start it.
    Create,
    /// The runtime runs it, with another spec, labels or annotations: apply the update.
    Update,
    /// The runtime runs it as it is (also after a restart of procnode: take it over).
    Keep,
    /// Terminal in the cluster and unknown here (it ran before, elsewhere or earlier): leave it.
    LeaveAlone,
    /// It has a deletion timestamp: stop it within `grace` (the pod's own when `None`), then
    /// remove its object.
    Stop { grace: Option<Duration> },
    /// Its stop is under way.
    Stopping,
}

/// What to do with `pod`, given the pod of the same key and uid the runtime runs (if any) and
/// whether its stop is under way. Pure: the watch loop carries it out.
pub(crate) fn decide(pod: &Pod, running: Option<&Pod>, stopping: bool) -> Action {
    if pod.metadata.deletion_timestamp.is_some() {
        if stopping {
            return Action::Stopping;
        }
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64));
        return Action::Stop { grace };
    }
    match running {
        // Compared with what the runtime runs, not with the last event seen: a change made
        // while procnode was away is applied when it comes back.
        Some(ours) if applied_differs(ours, pod) => Action::Update,
        Some(_) => Action::Keep,
        None if is_terminal(pod) => Action::LeaveAlone,
        None => Action::Create,
    }
}

/// Whether what the runtime applies of a pod (spec, labels, annotations; not its status or
/// resourceVersion) differs between the two.
fn applied_differs(a: &Pod, b: &Pod) -> bool {
    a.spec != b.spec
        || a.metadata.labels != b.metadata.labels
        || a.metadata.annotations != b.metadata.annotations
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

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

/// Watches the pods bound to `node` and runs them on `runtime` until aborted: the node
/// mode's pod sync (see the module's description).
pub async fn run(client: kube::Client, runtime: Arc<Runtime>, node: String) {
    let api: Api<Pod> = Api::all(client.clone());
    let cx = Context {
        events: Recorder::new(client.clone(), &node),
        runtime: runtime.clone(),
        client,
    };
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    // Pods whose stop is under way, and the pods (by key and uid) whose status is pushed.
    let mut stopping: HashSet<PodKey> = HashSet::new();
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
                    apply(&cx, &mut stopping, &mut pushers, key, pod).await;
                }
            }
            Event::InitDone => {
                // The cluster's list is complete: what the runtime runs beyond it was deleted
                // while procnode was away.
                for entry in runtime.list() {
                    if !listed.contains(entry.key()) {
                        tracing::info!(pod = %entry.key(), "gone from the cluster; stopping it");
                        let runtime = runtime.clone();
                        tokio::spawn(async move { runtime.delete(entry.key(), None).await });
                    }
                }
            }
            Event::Delete(pod) => {
                // Removed without a graceful delete (or its object removed after ours).
                let Some(key) = key_of(&pod) else { continue };
                stopping.remove(&key);
                let uid = pod.metadata.uid.unwrap_or_default();
                if runtime.get(&key).is_ok_and(|e| e.uid() == uid) {
                    let runtime = runtime.clone();
                    tokio::spawn(async move { runtime.delete(&key, None).await });
                }
            }
        }
    }
}

async fn apply(
    cx: &Context,
    stopping: &mut HashSet<PodKey>,
    pushers: &mut HashSet<(PodKey, String)>,
    key: PodKey,
    pod: Pod,
) {
    let runtime = &cx.runtime;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(cx.client.clone(), &key.namespace);
    let known = runtime.get(&key).ok().filter(|e| e.uid() == uid);
    let running = known.as_ref().map(|e| e.pod());
    let action = decide(&pod, running.as_deref(), stopping.contains(&key));
    tracing::debug!(pod = %key, ?action, "pod event");
    match action {
        Action::Stopping | Action::LeaveAlone => {}
        Action::Stop { grace } => {
            stopping.insert(key.clone());
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
                    Err(e) => {
                        tracing::warn!(pod = %key, error = %e, "cannot remove the pod object")
                    }
                }
            });
        }
        Action::Keep => {
            let entry = known.expect("decided on a running pod");
            start_pusher(pushers, cx, api, entry, &pod);
        }
        Action::Update => {
            let entry = known.expect("decided on a running pod");
            let updated = match NewPod::from_pod(pod.clone()) {
                Ok(new) => runtime.update(new).await.map(|_| ()),
                Err(e) => Err(e.into()),
            };
            if let Err(e) = updated {
                tracing::warn!(pod = %key, error = %e, "cannot apply the pod's update");
            }
            start_pusher(pushers, cx, api, entry, &pod);
        }
        Action::Create => {
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
                    start_pusher(pushers, cx, api, entry, &pod);
                }
                Err(e) => {
                    tracing::warn!(pod = %key, error = %e, "cannot run the pod");
                    let status = PodStatus {
                        phase: Some("Failed".into()),
                        reason: Some("ProviderFailed".into()),
                        message: Some(e.to_string()),
                        ..PodStatus::default()
                    };
                    // JSON is made here, for the API call only.
                    let patch = StatusPatch { status: &status };
                    let _ = api
                        .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
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
    if pushers.insert((entry.key().clone(), entry.uid().to_string())) {
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
                    &entry.key().name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {
                    let happened =
                        super::events::between(&written, &status, entry.key(), entry.uid());
                    events.record(entry.key(), entry.uid(), happened);
                    written = status.clone();
                    last = Some(status);
                }
                Err(kube::Error::Api(e)) if e.code == 404 => return,
                Err(e) => {
                    tracing::warn!(pod = %entry.key(), error = %e, "cannot write the pod status; retrying");
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
        events.record(entry.key(), entry.uid(), notes);
        // A finished pod's state does not change any more.
        let still_ours = runtime
            .get(entry.key())
            .is_ok_and(|e| Arc::ptr_eq(&e, &entry));
        if !still_ours || (entry.is_done() && Some(entry.status()) == last) {
            return;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("a Pod")
    }

    fn web(extra: serde_json::Value) -> Pod {
        let mut v = json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1",
                         "labels": {"app": "web"}, "resourceVersion": "1"},
            "spec": {"nodeName": "n", "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "300"]}]},
        });
        json_merge(&mut v, extra);
        pod(v)
    }

    fn json_merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    json_merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    #[test]
    fn a_new_pod_is_created_and_a_finished_unknown_one_left_alone() {
        assert_eq!(decide(&web(json!({})), None, false), Action::Create);
        let done = web(json!({"status": {"phase": "Succeeded"}}));
        assert_eq!(decide(&done, None, false), Action::LeaveAlone);
    }

    #[test]
    fn a_running_pod_is_updated_only_when_what_it_runs_changes() {
        let ours = web(json!({}));
        // Status and resourceVersion are the cluster's: no update.
        let seen =
            web(json!({"metadata": {"resourceVersion": "7"}, "status": {"phase": "Running"}}));
        assert_eq!(decide(&seen, Some(&ours), false), Action::Keep);
        for changed in [
            json!({"spec": {"activeDeadlineSeconds": 5}}),
            json!({"metadata": {"labels": {"app": "other"}}}),
            json!({"metadata": {"annotations": {"a": "b"}}}),
        ] {
            assert_eq!(
                decide(&web(changed.clone()), Some(&ours), false),
                Action::Update,
                "{changed}"
            );
        }
    }

    #[test]
    fn a_deleted_pod_is_stopped_once_with_its_grace_period() {
        let deleting = web(json!({"metadata": {
            "deletionTimestamp": "2026-01-01T00:00:00Z", "deletionGracePeriodSeconds": 7}}));
        let ours = web(json!({}));
        let stop = Action::Stop {
            grace: Some(Duration::from_secs(7)),
        };
        assert_eq!(decide(&deleting, Some(&ours), false), stop);
        // Unknown here (it never ran, or ran before a restart): its object is still removed.
        assert_eq!(decide(&deleting, None, false), stop);
        assert_eq!(decide(&deleting, Some(&ours), true), Action::Stopping);
    }
}
