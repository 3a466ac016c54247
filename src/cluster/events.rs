//! Events for `kubectl describe pod`, as a kubelet records them: `Pulled`, `Created` and
//! `Started` when a container starts, `BackOff` while it waits in CrashLoopBackOff, `Failed`
//! when it cannot start, `Unhealthy` and `Killing` when a liveness or startup probe stops it,
//! `Killing` when its pod is deleted, and what the runtime notes that no status shows:
//! `Unhealthy` for each failed probe, `FailedPostStartHook`, `FailedPreStopHook`.
//!
//! Most are read off the difference between two pod statuses ([`between`]): the one last
//! written to the API server and the new one, so a procnode that restarts and takes its pods
//! back (whose status in the cluster already shows them running) records nothing twice. The
//! rest come from [`PodEntry::take_notes`](crate::runtime::PodEntry::take_notes).
//! Recording is best effort: an event that cannot be written is logged, never retried, and
//! never holds up a status update; at most [`WRITERS`] batches are written at once.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{ContainerStatus, Event, EventSource, ObjectReference, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::runtime::PodKey;

/// One event about a container of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
    /// `spec.containers{NAME}` or `spec.initContainers{NAME}`.
    pub field_path: String,
}

impl From<crate::runtime::Note> for PodEvent {
    fn from(n: crate::runtime::Note) -> PodEvent {
        use crate::runtime::Happening;
        let (warning, reason, message) = match n.what {
            Happening::ProbeFailed { probe, message } => (
                true,
                "Unhealthy",
                format!("{} probe failed: {message}", probe.name()),
            ),
            Happening::KilledByProbe { probe } => (
                false,
                "Killing",
                format!(
                    "Container {} failed {} probe, will be restarted",
                    n.container,
                    probe.name().to_lowercase()
                ),
            ),
            Happening::PostStartHookFailed(m) => (true, "FailedPostStartHook", m),
            Happening::PreStopHookFailed(m) => (true, "FailedPreStopHook", m),
            Happening::VolumesNotMounted(paths) => (
                true,
                "VolumesNotMounted",
                format!(
                    "not mounted where the host has no such path: {} (--pod-root overlay mounts at any path; here they are linked under the working directory)",
                    paths.join(", ")
                ),
            ),
        };
        PodEvent {
            warning,
            reason,
            message,
            field_path: n.field_path,
        }
    }
}

/// The container statuses of a pod status, with the field path of each container.
fn containers(status: &PodStatus) -> Vec<(String, &ContainerStatus)> {
    let mut out = Vec::new();
    for (list, init) in [
        (&status.init_container_statuses, true),
        (&status.container_statuses, false),
    ] {
        for c in list.iter().flatten() {
            out.push((crate::runtime::field_path(init, &c.name), c));
        }
    }
    out
}

/// What happened between pod status `before` (as last written; the default if none) and
/// `after`.
pub fn between(before: &PodStatus, after: &PodStatus, key: &PodKey, uid: &str) -> Vec<PodEvent> {
    let earlier = containers(before);
    let mut events = Vec::new();
    let none = ContainerStatus::default();
    for (field_path, now) in containers(after) {
        let was = earlier
            .iter()
            .find(|(path, _)| *path == field_path)
            .map_or(&none, |(_, c)| *c);
        let name = &now.name;
        let event = |warning, reason, message: String| PodEvent {
            warning,
            reason,
            message,
            field_path: field_path.clone(),
        };
        let state = now.state.clone().unwrap_or_default();
        let was_state = was.state.clone().unwrap_or_default();
        let new_run = if state.running.is_some() {
            was_state.running.is_none() || was.container_id != now.container_id
        } else {
            // A run that began and ended between two writes of the status (a quick Job).
            state.terminated.is_some()
                && now.container_id.is_some()
                && was.container_id != now.container_id
        };
        if new_run {
            let image = &now.image;
            events.push(event(
                false,
                "Pulled",
                format!("Container image {image:?} already present on machine"),
            ));
            events.push(event(false, "Created", format!("Created container {name}")));
            events.push(event(false, "Started", format!("Started container {name}")));
        }
        let reason = state
            .waiting
            .as_ref()
            .and_then(|w| w.reason.as_deref())
            .unwrap_or_default();
        let changed = state.waiting != was_state.waiting || now.restart_count != was.restart_count;
        if reason == "CrashLoopBackOff" && changed {
            events.push(event(
                true,
                "BackOff",
                format!(
                    "Back-off restarting failed container {name} in pod {}_{}({uid})",
                    key.name, key.namespace
                ),
            ));
        }
        let cannot_start = matches!(
            reason,
            "RunContainerError" | "CreateContainerConfigError" | "CreateContainerError"
        );
        if cannot_start && changed {
            let message = state
                .waiting
                .as_ref()
                .and_then(|w| w.message.as_deref())
                .unwrap_or(reason);
            events.push(event(true, "Failed", format!("Error: {message}")));
        } else if let Some(t) = state.terminated.as_ref().filter(|t| {
            t.reason.as_deref() == Some("StartError") && was_state.terminated.as_ref() != Some(t)
        }) {
            let message = t.message.as_deref().unwrap_or("StartError");
            events.push(event(true, "Failed", format!("Error: {message}")));
        }
    }
    events
}

/// `Killing` for each running container of a pod that is being deleted.
pub fn stopping(status: &PodStatus) -> Vec<PodEvent> {
    containers(status)
        .into_iter()
        .filter(|(_, c)| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        .map(|(field_path, c)| PodEvent {
            warning: false,
            reason: "Killing",
            message: format!("Stopping container {}", c.name),
            field_path,
        })
        .collect()
}

/// At most this many batches of events are being written at once; past it (a slow or
/// unreachable API server), new ones are dropped rather than queued without bound.
const WRITERS: usize = 32;

/// A repeat of an event within this time raises the count of the one already written instead
/// of writing another (the kubelet's event correlator uses 10 minutes too).
const AGGREGATE_WITHIN: std::time::Duration = std::time::Duration::from_secs(600);
/// At most this many written events are remembered for aggregation.
const REMEMBERED: usize = 4096;

/// What makes two events the same: the pod (by uid), the container, the reason and message.
type Identity = (String, String, &'static str, String);

/// An event already written: its name, count and when it was last seen.
struct Written {
    name: String,
    count: i32,
    last: std::time::Instant,
}

/// Writes events about pods as this node's kubelet.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    node: String,
    writers: std::sync::Arc<tokio::sync::Semaphore>,
    written: std::sync::Arc<std::sync::Mutex<HashMap<Identity, Written>>>,
}

impl Recorder {
    pub fn new(client: kube::Client, node: &str) -> Recorder {
        Recorder {
            client,
            node: node.to_string(),
            writers: std::sync::Arc::new(tokio::sync::Semaphore::new(WRITERS)),
            written: Default::default(),
        }
    }

    /// Writes `events` about pod `key` (uid `uid`) in the background.
    pub fn record(&self, key: &PodKey, uid: &str, events: Vec<PodEvent>) {
        if events.is_empty() {
            return;
        }
        let Ok(permit) = self.writers.clone().try_acquire_owned() else {
            tracing::debug!(pod = %key, dropped = events.len(), "too many event writes under way");
            return;
        };
        let (recorder, key, uid) = (self.clone(), key.clone(), uid.to_string());
        tokio::spawn(async move {
            for e in events {
                recorder.write(&key, &uid, e).await;
            }
            drop(permit);
        });
    }

    /// Writes one event, or counts it on the same event written less than
    /// [`AGGREGATE_WITHIN`] ago (a crash loop's `BackOff` shows as one event "x5").
    async fn write(&self, key: &PodKey, uid: &str, e: PodEvent) {
        let now = k8s_openapi::jiff::Timestamp::now();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &key.namespace);
        let identity: Identity = (
            uid.to_string(),
            e.field_path.clone(),
            e.reason,
            e.message.clone(),
        );
        let repeat = {
            let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
            written
                .get(&identity)
                .filter(|w| w.last.elapsed() < AGGREGATE_WITHIN)
                .map(|w| (w.name.clone(), w.count + 1))
        };
        if let Some((name, count)) = repeat {
            let patch = serde_json::json!({"count": count, "lastTimestamp": Time(now)});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.remember(identity, name, count);
                    return;
                }
                // Gone (events expire): write it anew.
                Err(kube::Error::Api(a)) if a.code == 404 => {}
                Err(err) => {
                    tracing::debug!(pod = %key, error = %err, "cannot count an event");
                    return;
                }
            }
        }
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", key.name)),
                namespace: Some(key.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(key.name.clone()),
                namespace: Some(key.namespace.clone()),
                uid: Some(uid.to_string()),
                field_path: Some(e.field_path),
                ..Default::default()
            },
            reason: Some(e.reason.to_string()),
            message: Some(e.message),
            type_: Some(if e.warning { "Warning" } else { "Normal" }.into()),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(self.node.clone()),
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: None::<MicroTime>,
            count: Some(1),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.node.clone()),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &event).await {
            Ok(created) => {
                if let Some(name) = created.metadata.name {
                    self.remember(identity, name, 1);
                }
            }
            Err(e) => tracing::debug!(pod = %key, error = %e, "cannot record an event"),
        }
    }

    fn remember(&self, identity: Identity, name: String, count: i32) {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if written.len() >= REMEMBERED && !written.contains_key(&identity) {
            written.retain(|_, w| w.last.elapsed() < AGGREGATE_WITHIN);
            if written.len() >= REMEMBERED {
                written.clear();
            }
        }
        let last = std::time::Instant::now();
        written.insert(identity, Written { name, count, last });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::extract::{Path, State};
    use axum::routing::{patch, post};
    use axum::Json;
    use serde_json::{json, Value};

    use super::*;

    /// A pod status written as JSON, as an API server holds it.
    fn st(v: Value) -> PodStatus {
        serde_json::from_value(v).expect("a PodStatus")
    }

    /// An API server that stores events (POST names them) and applies merge patches to them.
    async fn fake_api_server() -> (kube::Client, Arc<Mutex<Vec<Value>>>) {
        type Events = Arc<Mutex<Vec<Value>>>;
        let events: Events = Default::default();
        let create = |State(events): State<Events>, Json(mut e): Json<Value>| async move {
            let mut events = events.lock().unwrap();
            let name = format!("web.{}", events.len());
            e["metadata"]["name"] = json!(name);
            events.push(e.clone());
            Json(e)
        };
        let update = |State(events): State<Events>,
                      Path(name): Path<String>,
                      Json(p): Json<Value>| async move {
            let mut events = events.lock().unwrap();
            let e = events
                .iter_mut()
                .find(|e| e["metadata"]["name"] == name.as_str())
                .unwrap();
            for (k, v) in p.as_object().unwrap() {
                e[k] = v.clone();
            }
            Json(e.clone())
        };
        let app = axum::Router::new()
            .route("/api/v1/namespaces/default/events", post(create))
            .route("/api/v1/namespaces/default/events/{name}", patch(update))
            .with_state(events.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        (client, events)
    }

    #[tokio::test]
    async fn a_repeated_event_is_counted_not_written_again() {
        let (client, stored) = fake_api_server().await;
        let recorder = Recorder::new(client, "node-1");
        let back_off = PodEvent {
            warning: true,
            reason: "BackOff",
            message: "Back-off restarting failed container main".into(),
            field_path: "spec.containers{main}".into(),
        };
        for _ in 0..3 {
            recorder.write(&key(), "u1", back_off.clone()).await;
        }
        let started = PodEvent {
            warning: false,
            reason: "Started",
            message: "Started container main".into(),
            field_path: "spec.containers{main}".into(),
        };
        recorder.write(&key(), "u1", started).await;
        // Another pod (uid) with the same words is another event.
        recorder.write(&key(), "u2", back_off).await;
        let stored = stored.lock().unwrap();
        let summary: Vec<(&str, i64, &str)> = stored
            .iter()
            .map(|e| {
                (
                    e["reason"].as_str().unwrap(),
                    e["count"].as_i64().unwrap(),
                    e["involvedObject"]["uid"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("BackOff", 3, "u1"),
                ("Started", 1, "u1"),
                ("BackOff", 1, "u2")
            ]
        );
        assert_eq!(stored[0]["source"]["component"], "kubelet");
        assert_eq!(stored[0]["source"]["host"], "node-1");
        assert_eq!(stored[0]["type"], "Warning");
        assert!(stored[0]["lastTimestamp"].is_string());
    }

    fn key() -> PodKey {
        PodKey {
            namespace: "default".into(),
            name: "web".into(),
        }
    }

    fn reasons(events: &[PodEvent]) -> Vec<&str> {
        events.iter().map(|e| e.reason).collect()
    }

    #[test]
    fn a_start_a_crash_loop_and_a_probe_kill_read_as_the_kubelet_records_them() {
        let pending = st(json!({"phase": "Pending", "containerStatuses": [
            {"name": "main", "image": "busybox", "restartCount": 0,
             "state": {"waiting": {"reason": "ContainerCreating"}}}]}));
        let running = st(json!({"phase": "Running", "containerStatuses": [
            {"name": "main", "image": "busybox", "restartCount": 0, "containerID": "procnode://10",
             "state": {"running": {"startedAt": "2026-11-25T10:00:00Z"}}}]}));
        let started = between(&pending, &running, &key(), "u1");
        assert_eq!(reasons(&started), ["Pulled", "Created", "Started"]);
        assert_eq!(
            started[0].message,
            r#"Container image "busybox" already present on machine"#
        );
        assert_eq!(started[2].message, "Started container main");
        assert_eq!(started[2].field_path, "spec.containers{main}");
        // The same status again, or first seen after a restart of procnode: nothing.
        assert!(between(&running, &running, &key(), "u1").is_empty());
        // A run that started and ended before the status was written: started all the same,
        // once.
        let done = st(json!({"phase": "Succeeded", "containerStatuses": [
            {"name": "main", "image": "busybox", "restartCount": 0, "containerID": "procnode://10",
             "state": {"terminated": {"exitCode": 0, "reason": "Completed", "containerID": "procnode://10"}}}]}));
        assert_eq!(
            reasons(&between(&pending, &done, &key(), "u1")),
            ["Pulled", "Created", "Started"]
        );
        assert!(between(&running, &done, &key(), "u1").is_empty());
        assert!(between(&done, &done, &key(), "u1").is_empty());

        let killed_json = json!({"phase": "Running", "containerStatuses": [
            {"name": "main", "image": "busybox", "restartCount": 1,
             "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
             "lastState": {"terminated": {"exitCode": 143, "reason": "Error",
                 "message": "Liveness probe failed: command exited with 1"}}}]});
        let killed = st(killed_json.clone());
        // (The probe's kill is the runtime's note, not read off the status.)
        let events = between(&running, &killed, &key(), "u1");
        assert_eq!(reasons(&events), ["BackOff"]);
        assert!(events[0].warning);
        assert_eq!(
            events[0].message,
            "Back-off restarting failed container main in pod web_default(u1)"
        );
        // Still backing off, nothing new.
        assert!(between(&killed, &killed, &key(), "u1").is_empty());

        let restarted = st(json!({"containerStatuses": [
            {"name": "main", "image": "busybox", "restartCount": 1, "containerID": "procnode://11",
             "state": {"running": {"startedAt": "2026-11-25T10:00:20Z"}},
             "lastState": killed_json["containerStatuses"][0]["lastState"]}]}));
        assert_eq!(
            reasons(&between(&killed, &restarted, &key(), "u1")),
            ["Pulled", "Created", "Started"]
        );
    }

    #[test]
    fn the_runtimes_notes_read_as_the_kubelets_events() {
        use crate::runtime::probe::Kind;
        use crate::runtime::{Happening, Note};
        let note = |what| Note {
            field_path: "spec.containers{main}".into(),
            container: "main".into(),
            what,
        };
        let e = PodEvent::from(note(Happening::KilledByProbe {
            probe: Kind::Liveness,
        }));
        assert_eq!(
            (e.warning, e.reason, e.message.as_str()),
            (
                false,
                "Killing",
                "Container main failed liveness probe, will be restarted"
            )
        );
        let e = PodEvent::from(note(Happening::ProbeFailed {
            probe: Kind::Readiness,
            message: "command exited with 1".into(),
        }));
        assert_eq!(
            (e.warning, e.reason, e.message.as_str()),
            (
                true,
                "Unhealthy",
                "Readiness probe failed: command exited with 1"
            )
        );
        assert_eq!(e.field_path, "spec.containers{main}");
    }

    #[test]
    fn containers_that_cannot_start_and_deletions() {
        let cannot = st(json!({"initContainerStatuses": [
            {"name": "setup", "restartCount": 0, "state": {"waiting": {
                "reason": "RunContainerError", "message": "exec: \"nope\": not found"}}}]}));
        let events = between(&PodStatus::default(), &cannot, &key(), "u1");
        assert_eq!(reasons(&events), ["Failed"]);
        assert_eq!(events[0].message, "Error: exec: \"nope\": not found");
        assert_eq!(events[0].field_path, "spec.initContainers{setup}");

        let status = st(json!({"containerStatuses": [
            {"name": "a", "image": "", "imageID": "", "ready": false, "restartCount": 0, "state": {"running": {}}},
            {"name": "b", "image": "", "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0}}}]}));
        let events = stopping(&status);
        assert_eq!(reasons(&events), ["Killing"]);
        assert_eq!(events[0].message, "Stopping container a");
    }
}
