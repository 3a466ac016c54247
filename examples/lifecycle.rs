//! Drives a running procnode through a whole Job-like lifecycle over its HTTP API, the way the
//! Virtual Kubelet broker would, with no cluster: create a pod whose first run fails, watch
//! procnode restart it (restartPolicy OnFailure) until it succeeds, read both runs' logs,
//! delete the pod.
//!
//!     procnode --backoff-initial 1s &                       # or: cargo run -- --backoff-initial 1s
//!     cargo run --example lifecycle                         # talks to http://127.0.0.1:3000
//!     cargo run --example lifecycle -- http://127.0.0.1:3999
//!
//! Exits 0 once the pod has succeeded and is gone again; non-zero with a message otherwise.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let base = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:3000".to_string());
    if let Err(e) = lifecycle(base.trim_end_matches('/')).await {
        eprintln!("lifecycle: {e}");
        std::process::exit(1);
    }
}

async fn lifecycle(base: &str) -> Result<(), String> {
    let http = reqwest::Client::new();
    let name = format!("lifecycle-{}", std::process::id());
    // The first run finds no marker, leaves one in the pod's working directory (which lives as
    // long as the pod) and fails; the restart finds it and succeeds.
    let pod = json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": {
            "restartPolicy": "OnFailure",
            "containers": [{
                "name": "work",
                "image": "busybox",
                "command": ["sh", "-c",
                    "if [ -e marker ]; then echo 'second run: done'; else \
                     touch marker; echo 'first run: failing' >&2; exit 3; fi"],
            }],
        },
    });

    println!("POST /createPod {name}");
    let created = http
        .post(format!("{base}/createPod"))
        .json(&pod)
        .send()
        .await
        .map_err(|e| format!("cannot reach procnode at {base}: {e}"))?;
    if !created.status().is_success() {
        return Err(format!("createPod answered {}", created.status()));
    }

    let query = [("namespace", "default"), ("name", name.as_str())];
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = String::new();
    let status = loop {
        let status: Value = http
            .get(format!("{base}/getPodStatus"))
            .query(&query)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("getPodStatus: {e}"))?
            .json()
            .await
            .map_err(|e| format!("getPodStatus body: {e}"))?;
        let line = describe(&status);
        if line != last {
            println!("  {line}");
            last = line;
        }
        let phase = status["phase"].as_str().unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            break status;
        }
        if Instant::now() > deadline {
            return Err(format!("the pod did not finish within 2 minutes: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    for (label, previous) in [("previous run", "true"), ("last run", "false")] {
        let logs = http
            .get(format!("{base}/getContainerLogs"))
            .query(&[
                ("namespace", "default"),
                ("podName", name.as_str()),
                ("containerName", "work"),
                ("tail", "10"),
                ("previous", previous),
            ])
            .send()
            .await
            .map_err(|e| format!("getContainerLogs: {e}"))?
            .text()
            .await
            .map_err(|e| format!("getContainerLogs body: {e}"))?;
        println!("GET /getContainerLogs ({label}):");
        for line in logs.lines() {
            println!("  | {line}");
        }
    }

    println!("DELETE /deletePod {name}");
    let deleted = http
        .delete(format!("{base}/deletePod"))
        .json(&pod)
        .send()
        .await
        .map_err(|e| format!("deletePod: {e}"))?;
    if !deleted.status().is_success() {
        return Err(format!("deletePod answered {}", deleted.status()));
    }
    let after = http
        .get(format!("{base}/getPod"))
        .query(&query)
        .send()
        .await
        .map_err(|e| format!("getPod: {e}"))?;
    println!("GET /getPod after delete: {}", after.status());

    if status["phase"] != "Succeeded" {
        return Err(format!("the pod ended {}", status["phase"]));
    }
    Ok(())
}

/// One line for a status: phase, and the container's state, restarts and last termination.
fn describe(status: &Value) -> String {
    let phase = status["phase"].as_str().unwrap_or("?");
    let Some(c) = status["containerStatuses"].get(0) else {
        return format!("phase {phase}");
    };
    let state = match c["state"].as_object().and_then(|s| s.iter().next()) {
        Some((k, v)) => match v["reason"].as_str() {
            Some(reason) => format!("{k} ({reason})"),
            None => k.clone(),
        },
        None => "?".to_string(),
    };
    let mut line = format!(
        "phase {phase}, container {state}, restarts {}",
        c["restartCount"]
    );
    if let Some(t) = c["lastState"]["terminated"].as_object() {
        line.push_str(&format!(
            ", last exit {} ({})",
            t["exitCode"],
            t["reason"].as_str().unwrap_or("")
        ));
    }
    line
}
