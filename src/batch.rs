//! `procnode run FILE`: the lightest batch runner. Runs one Pod or Job manifest (YAML or JSON,
//! as `kubectl apply -f` takes it) on this host without any cluster or HTTP server, streams its
//! containers' output, and exits with the result: 0 when the pod (or the Job) succeeded, else
//! the exit code of the first container that failed in the last failed pod (1 if none is known).
//!
//! A Job is run as the Job controller would: pods from its template until `completions` have
//! succeeded, at most `parallelism` at a time; a failed pod is replaced after a back-off
//! (`--backoff-initial`, doubling up to `--backoff-max`); failed pods plus container restarts
//! (restartPolicy OnFailure restarts containers in place, as the kubelet does) beyond
//! `backoffLimit` fail the Job with BackoffLimitExceeded; `activeDeadlineSeconds` bounds the
//! whole Job (DeadlineExceeded). A pod that never ends (restartPolicy Always) runs until Ctrl-C,
//! which stops it with its grace period.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::logs::{follow, LogQuery};
use crate::runtime::status::{ContainerState, Phase};
use crate::runtime::PodEntry;
use crate::runtime::Runtime;
use crate::Config;

/// What a manifest asks for: one pod, or a Job's pods.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The pod (for a Job: its template, named after the Job).
    pub pod: Value,
    pub job: Option<JobSpec>,
}

/// The parts of a Job's spec that `procnode run` applies.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub name: String,
    pub completions: u32,
    pub parallelism: u32,
    pub backoff_limit: u32,
    pub active_deadline: Option<Duration>,
}

/// Turns a manifest (the first Pod or Job document of the file) into pod JSON.
pub fn pod_from_manifest(text: &str) -> Result<Value, String> {
    manifest(text).map(|m| m.pod)
}

/// Reads the first Pod or Job document of a YAML or JSON manifest.
pub fn manifest(text: &str) -> Result<Manifest, String> {
    let docs: Vec<Value> = if text.trim_start().starts_with('{') {
        vec![serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?]
    } else {
        serde_norway::Deserializer::from_str(text)
            .map(|d| {
                <Value as serde::Deserialize>::deserialize(d)
                    .map_err(|e| format!("not valid YAML: {e}"))
            })
            .collect::<Result<_, _>>()?
    };
    let doc = docs
        .into_iter()
        .find(|d| matches!(d["kind"].as_str(), Some("Pod") | Some("Job") | None) && d.is_object())
        .ok_or("the file holds no Pod or Job")?;
    if doc["kind"] != "Job" {
        return Ok(Manifest {
            pod: doc,
            job: None,
        });
    }
    let name = doc["metadata"]["name"]
        .as_str()
        .ok_or("the Job has no metadata.name")?;
    let spec = &doc["spec"];
    let count = |field: &str, default: u32| -> Result<u32, String> {
        match &spec[field] {
            Value::Null => Ok(default),
            v => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| format!("the Job's spec.{field} is not a count: {v}")),
        }
    };
    let job = JobSpec {
        name: name.to_string(),
        completions: count("completions", 1)?,
        parallelism: count("parallelism", 1)?,
        backoff_limit: count("backoffLimit", 6)?,
        active_deadline: match &spec["activeDeadlineSeconds"] {
            Value::Null => None,
            v => Some(Duration::from_secs(
                v.as_u64().filter(|&n| n > 0).ok_or_else(|| {
                    format!("the Job's spec.activeDeadlineSeconds is not a positive count: {v}")
                })?,
            )),
        },
    };
    let mut template = spec["template"].clone();
    if !template.is_object() {
        return Err("the Job has no spec.template".into());
    }
    let mut meta = template["metadata"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    meta.insert("name".into(), json!(name));
    meta.insert("namespace".into(), doc["metadata"]["namespace"].clone());
    let mut labels = meta
        .get("labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    labels.insert("job-name".into(), json!(name));
    meta.insert("labels".into(), Value::Object(labels));
    template["metadata"] = Value::Object(meta);
    template["apiVersion"] = json!("v1");
    template["kind"] = json!("Pod");
    Ok(Manifest {
        pod: template,
        job: Some(job),
    })
}

/// Runs the manifest at `path`; returns the process exit code.
pub async fn run(path: &Path, config: Config) -> Result<i32, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let Manifest { mut pod, job } = manifest(&text)?;
    if pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or("")
        .is_empty()
    {
        pod["metadata"]["namespace"] = json!("default");
    }
    let state_dir = config.state_dir();
    let started = crate::Started::start(&config, None)
        .await
        .map_err(|e| e.to_string())?;
    let runtime = started.runtime.clone();
    let code = match job {
        None => run_pod(&runtime, pod).await,
        Some(job) => run_job(&runtime, &config, pod, &job).await,
    };
    // Every pod was deleted as it ended (or at Ctrl-C): nothing is left to stop or keep, and
    // leaving with no pod removes the cgroup parent too if no other procnode uses it.
    started.stop(&config).await;
    let _ = std::fs::remove_dir_all(&state_dir);
    code
}

/// One pod to its end (or Ctrl-C).
async fn run_pod(runtime: &Arc<Runtime>, mut pod: Value) -> Result<i32, String> {
    if pod["metadata"]["uid"].is_null() {
        pod["metadata"]["uid"] = json!(format!("run-{}", std::process::id()));
    }
    let running = Running::start(runtime, &pod).await?;
    let interrupted = tokio::select! {
        _ = running.entry.wait_done() => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    let code = running.finish(runtime, interrupted).await;
    Ok(if interrupted { 130 } else { code })
}

/// A Job's pods until `completions` succeed, the back-off limit is passed, the deadline passes
/// or Ctrl-C.
async fn run_job(
    runtime: &Arc<Runtime>,
    config: &Config,
    template: Value,
    job: &JobSpec,
) -> Result<i32, String> {
    let started = tokio::time::Instant::now();
    let deadline = job.active_deadline.map(|d| started + d);
    let mut active: Vec<Running> = Vec::new();
    let (mut created, mut succeeded, mut failed) = (0u32, 0u32, 0u32);
    let mut restarts: u32;
    let mut last_failure: Option<i32> = None;
    let mut next_start = started;
    let outcome: Result<(), &str> = loop {
        // Finished pods leave the active set.
        let mut i = 0;
        while i < active.len() {
            if active[i].entry.is_done() {
                let done = active.remove(i);
                let name = done.name.clone();
                match done.finish(runtime, false).await {
                    0 => succeeded += 1,
                    code => {
                        failed += 1;
                        last_failure = Some(code);
                        let delay = backoff(config, failed);
                        next_start = tokio::time::Instant::now() + delay;
                        if failed <= job.backoff_limit {
                            eprintln!(
                                "procnode run: job {}: pod {name} failed ({failed} so far); next pod in {delay:?}",
                                job.name
                            );
                        }
                    }
                }
            } else {
                i += 1;
            }
        }
        restarts = active.iter().map(|r| r.restarts()).sum();
        if succeeded >= job.completions {
            break Ok(());
        }
        if failed + restarts > job.backoff_limit {
            break Err("BackoffLimitExceeded");
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break Err("DeadlineExceeded");
        }
        // Start pods while there is room and work left (after a failure's back-off).
        while active.len() < job.parallelism as usize
            && succeeded + (active.len() as u32) < job.completions
            && tokio::time::Instant::now() >= next_start
        {
            created += 1;
            let mut pod = template.clone();
            let name = format!("{}-{created}", job.name);
            pod["metadata"]["name"] = json!(name);
            pod["metadata"]["uid"] = json!(format!("run-{}-{created}", std::process::id()));
            active.push(Running::start(runtime, &pod).await?);
        }
        // Wake on a pod's end, a back-off's end, the deadline, or now and then for restarts.
        let mut wake = tokio::time::Instant::now() + Duration::from_millis(200);
        if next_start > tokio::time::Instant::now() && active.is_empty() {
            wake = next_start;
        }
        if let Some(d) = deadline {
            wake = wake.min(d);
        }
        let mut waits: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>> =
            active
                .iter()
                .map(|r| Box::pin(r.entry.wait_done()) as _)
                .collect();
        waits.push(Box::pin(std::future::pending()));
        let any_done = futures_util::future::select_all(waits);
        let interrupted = tokio::select! {
            _ = any_done => false,
            _ = tokio::time::sleep_until(wake) => false,
            _ = tokio::signal::ctrl_c() => true,
        };
        if interrupted {
            for r in active.drain(..) {
                r.finish(runtime, true).await;
            }
            return Ok(130);
        }
    };
    match outcome {
        Ok(()) => {
            for r in active.drain(..) {
                r.finish(runtime, true).await;
            }
            if job.completions > 1 || failed > 0 {
                eprintln!(
                    "procnode run: job {} complete: {succeeded} succeeded, {failed} failed",
                    job.name
                );
            }
            Ok(0)
        }
        Err(reason) => {
            for r in active.drain(..) {
                let code = r.finish(runtime, true).await;
                if code != 0 {
                    last_failure = Some(code);
                }
            }
            eprintln!(
                "procnode run: job {} failed: {reason} ({succeeded} succeeded, {failed} pods failed, \
                 {restarts} container restarts)",
                job.name
            );
            Ok(last_failure.filter(|&c| c != 0).unwrap_or(1))
        }
    }
}

/// The Job controller's delay before replacing the `failures`-th failed pod.
fn backoff(config: &Config, failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(20);
    config
        .backoff_initial
        .saturating_mul(1 << shift)
        .min(config.backoff_max)
}

/// A pod started by `procnode run`, with its output followers.
struct Running {
    name: String,
    entry: Arc<PodEntry>,
    followers: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    async fn start(runtime: &Runtime, pod: &Value) -> Result<Running, String> {
        // The manifest is this mode's wire: typed once here.
        let pod: k8s_openapi::api::core::v1::Pod =
            serde_json::from_value(pod.clone()).map_err(|e| format!("not a valid pod: {e}"))?;
        let new = crate::runtime::NewPod::from_pod(pod).map_err(|e| e.to_string())?;
        let created = runtime.create(new).await.map_err(|e| e.to_string())?;
        let entry = match created {
            crate::runtime::Created::New(e) | crate::runtime::Created::Existing(e) => e,
        };
        // Every container's output as it arrives: each run to its end, then the next run.
        let followers = entry
            .logs()
            .iter()
            .cloned()
            .map(|slot| {
                tokio::spawn(async move {
                    let mut out = tokio::io::stdout();
                    loop {
                        let run = slot.logs.lock().expect("logs lock").run();
                        let mut stream = Box::pin(follow(slot.clone(), LogQuery::default()));
                        while let Some(chunk) = stream.next().await {
                            let _ = out.write_all(&chunk).await;
                            let _ = out.flush().await;
                        }
                        // Wait for a restart to start another run.
                        loop {
                            let notified = slot.changed.notified();
                            tokio::pin!(notified);
                            notified.as_mut().enable();
                            if slot.logs.lock().expect("logs lock").run() != run {
                                break;
                            }
                            notified.await;
                        }
                    }
                })
            })
            .collect();
        Ok(Running {
            name: entry.key().name.clone(),
            entry,
            followers,
        })
    }

    /// Container restarts so far (they count against a Job's backoffLimit).
    fn restarts(&self) -> u32 {
        // (A sidecar's restarts are not the pod's failures.)
        self.entry.read_state(|st| {
            st.init
                .iter()
                .filter(|c| !c.sidecar)
                .chain(st.containers.iter())
                .map(|c| c.restart_count.max(0) as u32)
                .sum()
        })
    }

    /// Stops the pod if `stop` (with its grace period), lets the followers write what is left,
    /// removes the pod, and returns its result code.
    async fn finish(self, runtime: &Runtime, stop: bool) -> i32 {
        if stop && !self.entry.is_done() {
            runtime.delete(self.entry.key(), None).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        for f in self.followers {
            f.abort();
        }
        let code = result(&self.entry);
        runtime.delete(self.entry.key(), None).await;
        code
    }
}

/// 0 for a pod that Succeeded, else the exit code of the first container that failed (or 1),
/// after saying on stderr why each failed container ended.
fn result(entry: &crate::runtime::PodEntry) -> i32 {
    entry.read_state(result_of)
}

fn result_of(st: &crate::runtime::status::PodState) -> i32 {
    if st.phase() == Phase::Succeeded {
        return 0;
    }
    // Sidecars are stopped when the rest ends: their exit says nothing of the pod's result.
    let containers = || {
        st.init
            .iter()
            .filter(|c| !c.sidecar)
            .chain(st.containers.iter())
    };
    for c in containers() {
        if let ContainerState::Terminated(t) = &c.state {
            if t.exit_code != 0 {
                let message = t
                    .message
                    .as_deref()
                    .map(|m| format!(": {}", m.trim_end()))
                    .unwrap_or_default();
                eprintln!(
                    "procnode run: container {} ended with {} ({}){message}",
                    c.name, t.exit_code, t.reason
                );
            }
        }
    }
    // The failed run's code; for a container stopped while it waited to be restarted, the code
    // of the run before.
    containers()
        .find_map(|c| match &c.state {
            ContainerState::Terminated(t) if t.exit_code != 0 => Some(t.exit_code),
            _ => None,
        })
        .or_else(|| {
            containers().find_map(|c| {
                c.last_termination
                    .as_ref()
                    .filter(|t| t.exit_code != 0)
                    .map(|t| t.exit_code)
            })
        })
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_become_their_pod_template() {
        let pod = pod_from_manifest(include_str!("../tests/fixtures/job-pi.yaml")).unwrap();
        assert_eq!(pod["kind"], "Pod");
        assert_eq!(pod["metadata"]["name"], "pi");
        assert_eq!(pod["metadata"]["labels"]["job-name"], "pi");
        assert_eq!(pod["spec"]["restartPolicy"], "Never");
        assert_eq!(pod["spec"]["containers"][0]["name"], "pi");
    }

    #[test]
    fn job_fields_have_kubernetes_defaults_and_bad_values_are_errors() {
        let m = manifest(include_str!("../tests/fixtures/job-pi.yaml")).unwrap();
        let job = m.job.unwrap();
        assert_eq!(
            (job.completions, job.parallelism, job.backoff_limit),
            (1, 1, 2)
        );
        assert_eq!(job.active_deadline, None);
        let text = "kind: Job\nmetadata: {name: j}\nspec:\n  completions: 3\n  parallelism: 2\n  activeDeadlineSeconds: 60\n  template: {spec: {containers: []}}\n";
        let job = manifest(text).unwrap().job.unwrap();
        assert_eq!(
            (job.completions, job.parallelism, job.backoff_limit),
            (3, 2, 6)
        );
        assert_eq!(job.active_deadline, Some(Duration::from_secs(60)));
        let bad = text.replace("completions: 3", "completions: -1");
        assert!(manifest(&bad).unwrap_err().contains("spec.completions"));
        let mut c = Config::defaults();
        c.backoff_initial = Duration::from_secs(10);
        c.backoff_max = Duration::from_secs(360);
        let delays: Vec<u64> = (1..=7).map(|n| backoff(&c, n).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 360]);
    }

    #[test]
    fn pods_in_json_or_multi_document_yaml() {
        let json =
            pod_from_manifest(r#"{"metadata":{"name":"a"},"spec":{"containers":[]}}"#).unwrap();
        assert_eq!(json["metadata"]["name"], "a");
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b}\nspec: {containers: []}\n";
        assert_eq!(pod_from_manifest(yaml).unwrap()["metadata"]["name"], "b");
        assert!(pod_from_manifest("kind: Deployment\nmetadata: {name: d}\n").is_err());
        assert!(pod_from_manifest("{not json").is_err());
    }
}
