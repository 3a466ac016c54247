//! Bringing back what a previous procnode left: every recorded pod, its observed state, its
//! logs and the containers still running under their supervisors; supervisors nobody claims
//! are stopped.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::layout::StateLayout;
use super::validate::NewPod;
use super::{process, records, supervisor, volumes, worker, Runtime};

impl Runtime {
    /// Brings back every pod recorded in the state directory: their JSON, their observed state,
    /// and the containers still running under their supervisors (re-attached; a container whose
    /// supervisor is gone is reported as such and restarted per its policy). Call before
    /// serving. Returns what could not be restored, for the caller to report.
    pub async fn restore(&self) -> Vec<String> {
        let (records, corrupt) = (
            self.settings.layout.records(),
            self.settings.layout.corrupt(),
        );
        let (mut loaded, mut problems) =
            tokio::task::spawn_blocking(move || records::load_all(&records, &corrupt))
                .await
                .unwrap_or_default();
        // Newest first: of two records of one name (a create that replaced a pod with another
        // uid, cut short by a crash before the old record was removed), the newer one is kept.
        let written = |l: &records::Loaded| {
            std::fs::metadata(records::pod_file(&l.base))
                .and_then(|m| m.modified())
                .ok()
        };
        loaded.sort_by_cached_key(|l| std::cmp::Reverse(written(l)));
        // Recorded pod uids first, so that a pod without one cannot take another's.
        for id in loaded.iter().filter_map(|p| p.status.as_ref()?.pod_id) {
            self.settings.pod_ids.claim(Some(id), "");
        }
        for pod in loaded {
            let new = match NewPod::from_json(&pod.raw) {
                Ok(new) => new,
                Err(e) => {
                    problems.push(format!(
                        "pod record {} is not a valid pod: {e}",
                        records::pod_file(&pod.base).display()
                    ));
                    continue;
                }
            };
            let admitted = pod.status.as_ref().is_none_or(|s| s.failure.is_none());
            let recorded = pod.status.as_ref().and_then(|s| s.pod_id);
            let pod_id = self.claim_pod_id(recorded, &new);
            let entry = Arc::new(self.new_entry(new, None, pod_id));
            // The logs of each container's current run come back even without a status record
            // (a create cut short before its first status write: every container at run 0),
            // so that a supervisor found again by name resumes after them.
            let mut runs: Vec<u64> = vec![0; entry.logs().len()];
            if let Some(saved) = pod.status {
                runs = entry.update_state(|st| {
                    st.start_time = saved.start_time;
                    st.failure = saved.failure;
                    for (c, s) in st.init.iter_mut().zip(saved.init) {
                        s.restore_into(c);
                    }
                    for (c, s) in st.containers.iter_mut().zip(saved.containers) {
                        s.restore_into(c);
                    }
                    st.init
                        .iter()
                        .chain(st.containers.iter())
                        .map(|c| c.restart_count.max(0) as u64)
                        .collect()
                });
            }
            // Bring the logs back from the log files (when kept), off the async threads.
            let slots = entry.logs().to_vec();
            let _ = tokio::task::spawn_blocking(move || {
                for (slot, run) in slots.iter().zip(runs) {
                    slot.update(|l| l.restore(run));
                }
            })
            .await;
            if let Err(newer) = self.store.insert_new(entry.clone()) {
                // The replaced pod: its record goes now (its supervisors, which no loaded pod
                // claims, are stopped below), or a delete of the name would leave it behind.
                problems.push(format!(
                    "pod {} (uid {}) was being replaced by uid {} when procnode stopped: its record is removed",
                    entry.key(), entry.uid(), newer.uid()
                ));
                if let Some(id) = entry.pod_id() {
                    self.settings.pod_ids.release(id);
                }
                if let Err(e) = records::remove(&pod.base) {
                    problems.push(format!("cannot remove {}: {e}", pod.base.display()));
                }
                let dirs = self.settings.pod_dirs(&entry);
                let _ = tokio::task::spawn_blocking(move || {
                    volumes::release(&dirs[0]);
                    for d in dirs {
                        let _ = std::fs::remove_dir_all(d);
                    }
                })
                .await;
                continue;
            }
            if admitted {
                tokio::spawn(worker::run_pod(entry, self.settings.clone(), true));
            } else {
                entry.mark_done();
            }
        }
        problems.extend(self.stop_unclaimed_supervisors().await);
        problems
    }

    /// After the records are loaded: a supervisor on this state directory that no loaded pod
    /// claims (its record was removed, lost or set aside) would keep its container running
    /// for nobody. Each is stopped (its container's group killed, its exit released) and
    /// reported by name; a socket no process holds any more is removed.
    async fn stop_unclaimed_supervisors(&self) -> Vec<String> {
        if !self.settings.supervise {
            return Vec::new();
        }
        let claimed: std::collections::HashSet<String> = self
            .store
            .list()
            .iter()
            .map(|e| StateLayout::supervisor_pod_part(e.key(), e.uid()))
            .collect();
        let layout = &self.settings.layout;
        let files: Vec<String> = layout
            .supervisor_files()
            .into_iter()
            .filter(|f| !claimed.contains(f.split(['-', '/']).next().unwrap_or_default()))
            .collect();
        let mut stops = JoinSet::new();
        for file in files {
            let name = format!("{}{file}", layout.supervisor_prefix());
            stops.spawn(async move {
                match supervisor::attach(&name, u64::MAX).await {
                    Ok(mut sup) => {
                        let pid = sup.pid;
                        process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                        let _ = tokio::time::timeout(Duration::from_secs(10), sup.events.next(None))
                            .await;
                        sup.release().await;
                        // Its socket goes now (the supervisor removes it too, when it gets to
                        // it), so that its pod's directory can go below.
                        let _ = std::fs::remove_file(&name);
                        Some(format!(
                            "supervisor {name} belonged to no recorded pod: its container (pid {pid}) was stopped"
                        ))
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                        ) =>
                    {
                        // A supervisor that was killed: only its socket file is left.
                        let _ = std::fs::remove_file(&name);
                        None
                    }
                    Err(e) => Some(format!(
                        "supervisor socket {name} belongs to no recorded pod and cannot be stopped: {e}"
                    )),
                }
            });
        }
        let mut problems = Vec::new();
        while let Some(done) = stops.join_next().await {
            problems.extend(done.ok().flatten());
        }
        // The socket directories of pods nobody claims, now empty.
        for e in std::fs::read_dir(layout.sup())
            .into_iter()
            .flatten()
            .flatten()
        {
            let part = e.file_name().to_string_lossy().into_owned();
            if !claimed.contains(&part) && e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = std::fs::remove_dir(e.path());
            }
        }
        problems
    }
}
