//! What watches a running pod besides its containers: the active deadline, emptyDir size
//! limits and the refresh of volumes filled from API objects. Each ends when the pod is done.
//! The preparation of the pod's volumes lives here too, for the pod worker's first one and the
//! refreshes alike.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::pod::PodEntry;
use super::settings::Settings;
use super::volumes;

/// Rewrites the pod's Secret, ConfigMap and projected volumes every
/// `object_refresh_interval` while the pod runs, so that a changed object reaches its files.
pub(super) async fn refresh_object_volumes(entry: Arc<PodEntry>, settings: Arc<Settings>) {
    let mut tick = tokio::time::interval(settings.object_refresh_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = entry.wait_done() => return,
            _ = tick.tick() => {}
        }
        let (e, s) = (entry.clone(), settings.clone());
        let _ = tokio::task::spawn_blocking(move || refresh_volumes(&e, &s)).await;
    }
}

/// Evicts the pod when an emptyDir grows past its `sizeLimit`, as the kubelet's local storage
/// eviction does (checked every `--volume-check-interval`).
pub(super) async fn watch_volume_sizes(
    entry: Arc<PodEntry>,
    settings: Arc<Settings>,
    watched: Vec<(String, PathBuf, u64, String)>,
) {
    let mut tick = tokio::time::interval(settings.volume_check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = entry.wait_done() => return,
            _ = tick.tick() => {}
        }
        let dirs = watched.clone();
        let over = tokio::task::spawn_blocking(move || {
            dirs.into_iter()
                .find(|(_, path, limit, _)| volumes::usage(path) > *limit)
        })
        .await
        .ok()
        .flatten();
        let Some((name, _, _, limit)) = over else {
            continue;
        };
        let message =
            format!("Usage of EmptyDir volume \"{name}\" exceeds the limit \"{limit}\". ");
        if !entry.fail("Evicted", message, true) {
            return;
        }
        tracing::info!(pod = %entry.key(), volume = %name, "emptyDir over its sizeLimit; evicting the pod");
        entry.request_stop(Duration::ZERO);
        return;
    }
}

/// `activeDeadlineSeconds`: once the pod has been active that long, it is stopped and Failed
/// with reason `DeadlineExceeded`, as the kubelet does. Ends early when the pod finishes.
pub(super) async fn enforce_deadline(entry: Arc<PodEntry>, settings: Arc<Settings>) {
    // An update may set or shorten the deadline: recompute it on every change.
    let mut changes = entry.spec_changes();
    loop {
        changes.borrow_and_update();
        let seconds = entry
            .pod()
            .spec
            .as_ref()
            .and_then(|s| s.active_deadline_seconds);
        let start = entry.read_state(|st| st.start_time);
        let left = match (seconds, start) {
            (Some(seconds), Some(start)) => {
                let deadline = start + jiff::SignedDuration::from_secs(seconds.max(0));
                let left = Timestamp::now().duration_until(deadline);
                Some(Duration::try_from(left).unwrap_or(Duration::ZERO))
            }
            _ => None,
        };
        let expired = async {
            match left {
                Some(left) => tokio::time::sleep(left).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = entry.wait_done() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = expired => break,
        }
    }
    let message = "Pod was active on the node longer than the specified deadline".to_string();
    if !entry.fail("DeadlineExceeded", message, true) {
        return;
    }
    tracing::info!(pod = %entry.key(), "active deadline exceeded; stopping the pod");
    entry.request_stop(settings.grace_period(&entry, None));
}

/// Writes the volumes of the spec `entry` runs into its pod directory. Blocking.
pub(super) fn prepare_volumes(
    entry: &PodEntry,
    settings: &Settings,
) -> Result<volumes::PodVolumes, volumes::VolumeError> {
    let (pod, objects) = (entry.pod(), settings.objects.as_deref());
    let pod_dir = settings
        .open_pod_dir(entry)
        .map_err(|e| volumes::VolumeError::Setup {
            name: String::new(),
            message: format!("pod directory: {e}"),
        })?;
    volumes::prepare(
        &pod,
        &pod_dir,
        &settings.volumes,
        &settings.node,
        objects,
        entry.pod_id(),
    )
}

/// [`prepare_volumes`] again for a running pod (changed labels, changed objects): a failure
/// is logged, the pod keeps its files as they were. Blocking.
pub(super) fn refresh_volumes(entry: &PodEntry, settings: &Settings) {
    if let Err(err) = prepare_volumes(entry, settings) {
        tracing::warn!(pod = %entry.key(), error = %err, "cannot refresh the pod's volumes");
    }
}
