//! `procnode run FILE`: the lightest batch runner. Runs one Pod or Job manifest (YAML or JSON,
//! as `kubectl apply -f` takes it) on this host without any cluster or HTTP server, streams its
//! containers' output, and exits with the pod's result: 0 when it Succeeded, else the exit code
//! of the first container that failed (1 if none is known).
//!
//! A Job runs its pod template once (restartPolicy OnFailure restarts containers in place, as the
//! kubelet would; `backoffLimit` and `completions` are not applied). A pod that never ends
//! (restartPolicy Always) runs until Ctrl-C, which stops it with its grace period.

use std::path::Path;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::logs::{follow, LogQuery};
use crate::runtime::status::{ContainerState, Phase};
use crate::Config;

/// Turns a manifest (the first Pod or Job document of the file) into pod JSON.
pub fn pod_from_manifest(text: &str) -> Result<Value, String> {
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
    match doc["kind"].as_str() {
        Some("Job") => {
            let name = doc["metadata"]["name"]
                .as_str()
                .ok_or("the Job has no metadata.name")?;
            let mut template = doc["spec"]["template"].clone();
            if !template.is_object() {
                return Err("the Job has no spec.template".into());
            }
            let mut meta = template["metadata"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            meta.insert("name".into(), json!(format!("{name}-run")));
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
            Ok(template)
        }
        _ => Ok(doc),
    }
}

/// Runs the manifest at `path`; returns the process exit code.
pub async fn run(path: &Path, config: Config) -> Result<i32, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut pod = pod_from_manifest(&text)?;
    if pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or("")
        .is_empty()
    {
        pod["metadata"]["namespace"] = json!("default");
    }
    if pod["metadata"]["uid"].is_null() {
        pod["metadata"]["uid"] = json!(format!("run-{}", std::process::id()));
    }
    let state_dir = config.state_dir();
    std::fs::create_dir_all(&state_dir)
        .map_err(|e| format!("state dir {}: {e}", state_dir.display()))?;
    let (runtime, _node) = crate::build(&config);
    let created = runtime
        .create(pod.to_string().as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let entry = match created {
        crate::runtime::Created::New(e) | crate::runtime::Created::Existing(e) => e,
    };
    let key = entry.key.clone();

    // Every container's output as it arrives: each run to its end, then the next run.
    let followers = entry.logs.iter().cloned().map(|slot| {
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
    });
    let followers: Vec<_> = followers.collect();

    let interrupted = tokio::select! {
        _ = entry.wait_done() => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    if interrupted {
        runtime.delete(&key, None).await;
    }
    // Let the followers write what the last run left.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    for f in followers {
        f.abort();
    }
    let code = result(&entry);
    if !interrupted {
        runtime.delete(&key, None).await;
    }
    let _ = std::fs::remove_dir_all(&state_dir);
    Ok(code)
}

/// 0 for a pod that Succeeded, else the exit code of the first container that failed (or 1),
/// after saying on stderr why each failed container ended.
fn result(entry: &crate::store::PodEntry) -> i32 {
    let st = entry.state.lock().expect("state lock");
    if st.phase() == Phase::Succeeded {
        return 0;
    }
    for c in st.init.iter().chain(st.containers.iter()) {
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
    st.init
        .iter()
        .chain(st.containers.iter())
        .find_map(|c| match &c.state {
            ContainerState::Terminated(t) if t.exit_code != 0 => Some(t.exit_code),
            _ => None,
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
        assert_eq!(pod["metadata"]["name"], "pi-run");
        assert_eq!(pod["metadata"]["labels"]["job-name"], "pi");
        assert_eq!(pod["spec"]["restartPolicy"], "Never");
        assert_eq!(pod["spec"]["containers"][0]["name"], "pi");
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
