//! Pod records on disk, so that pods and what happened to them survive a procnode restart
//! (also `kill -9`): `STATE_DIR/records/NS_NAME_UID.pod.json` is the pod JSON as last received
//! (desired state, written before a create or update is acknowledged) and
//! `NS_NAME_UID.status.json` the observed state (container states, exit codes, restart counts,
//! times, supervisors). Flat files, no directory per pod: creating directories is the costliest
//! file system operation on the create path.
//!
//! Every write is atomic (a temporary file renamed over the old one), which is all a procnode
//! crash needs: the page cache outlives the process. For a machine crash, `pod.json` and a
//! `status.json` that records a container's own exit are fsync'd first; a status that records a
//! start is not (a lost start is found again through the supervisor's well-known name), nor one
//! that records an exit procnode caused itself (delete, shutdown). A record that cannot be read back is
//! moved to `STATE_DIR/corrupt/` and reported; the others load.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::pod::PodEntry;
use super::settings::Settings;
use super::status::{reason, ContainerState, ContainerStatus, Termination};

pub const POD_SUFFIX: &str = ".pod.json";
pub const STATUS_SUFFIX: &str = ".status.json";

/// The pod file of the record at `base` (`records/NS_NAME_UID`).
pub fn pod_file(base: &Path) -> PathBuf {
    with_suffix(base, POD_SUFFIX)
}

/// The status file of the record at `base`.
pub fn status_file(base: &Path) -> PathBuf {
    with_suffix(base, STATUS_SUFFIX)
}

fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Removes a record (both files).
pub fn remove(base: &Path) -> io::Result<()> {
    for f in [pod_file(base), status_file(base)] {
        match std::fs::remove_file(&f) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Writes `data` to `path` atomically and durably (a temporary file beside it, fsync'd,
/// renamed over it).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_replacing(path, data, true)
}

/// Writes `data` to `path` by renaming a temporary file over it, so a reader (or a crash) sees
/// the old or the new content, never a mix; with `durable`, the data is fsync'd before the
/// rename, so it also survives a power loss.
pub fn write_replacing(path: &Path, data: &[u8], durable: bool) -> io::Result<()> {
    let tmp = temporary_name(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        if durable {
            f.sync_data()?;
        }
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A temporary name beside `path`, unique to this write: `.NAME.PID.N.tmp`. It starts with a
/// dot, which no record name can (it starts with a namespace, a DNS label), so a leftover one
/// is never taken for a record, whatever the pod is called; and concurrent writers of one
/// record never share one.
fn temporary_name(path: &Path) -> PathBuf {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// Whether a file in `records/` is the leftover of a write a crash interrupted: this version's
/// `.NAME.PID.N.tmp`, or an older version's `NAME.pod.tmpPID` / `NAME.status.tmpPID`.
fn is_leftover(name: &str) -> bool {
    if name.starts_with('.') {
        return true;
    }
    [".pod.tmp", ".status.tmp"].iter().any(|kind| {
        name.rsplit_once(kind)
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Writes the pod JSON of a new or updated pod (durably).
pub fn save_pod(base: &Path, raw: &str) -> io::Result<()> {
    let file = pod_file(base);
    match write_atomic(&file, raw.as_bytes()) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(base.parent().unwrap_or(base))?;
            write_atomic(&file, raw.as_bytes())
        }
        other => other,
    }
}

/// The observed state of a pod, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedStatus {
    /// The pod's own uid on the host, kept across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_id: Option<u32>,
    pub start_time: Option<Timestamp>,
    pub failure: Option<(String, String)>,
    pub init: Vec<SavedContainer>,
    pub containers: Vec<SavedContainer>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedContainer {
    pub name: String,
    pub state: SavedState,
    pub last_termination: Option<Termination>,
    pub restart_count: i32,
    pub pid: Option<i32>,
    pub container_id: Option<String>,
    pub supervisor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SavedState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated(Termination),
}

impl SavedContainer {
    pub fn from_status(c: &ContainerStatus) -> SavedContainer {
        SavedContainer {
            name: c.name.clone(),
            state: match &c.state {
                ContainerState::Waiting { reason, message } => SavedState::Waiting {
                    reason: reason.to_string(),
                    message: message.clone(),
                },
                ContainerState::Running { started_at } => SavedState::Running {
                    started_at: *started_at,
                },
                ContainerState::Terminated(t) => SavedState::Terminated(t.clone()),
            },
            last_termination: c.last_termination.clone(),
            restart_count: c.restart_count,
            pid: c.pid,
            container_id: c.container_id.clone(),
            supervisor: c.supervisor.clone(),
        }
    }

    /// Puts the saved state back into `c` (a freshly created status of the same container).
    pub fn restore_into(self, c: &mut ContainerStatus) {
        c.state = match self.state {
            SavedState::Waiting { reason, message } => ContainerState::Waiting {
                reason: reason::known(&reason),
                message,
            },
            SavedState::Running { started_at } => ContainerState::Running { started_at },
            SavedState::Terminated(t) => ContainerState::Terminated(t),
        };
        c.last_termination = self.last_termination;
        c.restart_count = self.restart_count;
        c.pid = self.pid;
        c.container_id = self.container_id;
        c.supervisor = self.supervisor;
        // Probes (if any) decide again once the run is taken back.
        c.ready = matches!(c.state, ContainerState::Running { .. });
        c.started = c.ready;
    }
}

/// Writes the observed state; `durable` (fsync) for what must not be lost: an exit about to be
/// released by its supervisor. Other changes (a container started) can be re-discovered from
/// the supervisors themselves after a crash.
fn write_status(base: &Path, status: &SavedStatus, durable: bool) -> io::Result<()> {
    let data = serde_json::to_vec(status).map_err(io::Error::other)?;
    write_replacing(&status_file(base), &data, durable)
}

/// A pod found on disk.
pub struct Loaded {
    pub base: PathBuf,
    pub raw: Vec<u8>,
    pub status: Option<SavedStatus>,
}

/// Reads every pod record under `records`. Unreadable ones are moved to `corrupt` and
/// reported in the second list.
pub fn load_all(records: &Path, corrupt: &Path) -> (Vec<Loaded>, Vec<String>) {
    let mut loaded = Vec::new();
    let mut problems = Vec::new();
    let Ok(entries) = std::fs::read_dir(records) else {
        return (loaded, problems);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // A write that a crash interrupted before its rename: the previous version still
        // stands, the temporary file is garbage.
        if is_leftover(&name) {
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        let Some(stem) = name.strip_suffix(POD_SUFFIX) else {
            // A status whose pod record never got in place (a create cut short by a crash:
            // its pod started while the record was written, and it was never answered).
            if let Some(stem) = name.strip_suffix(STATUS_SUFFIX) {
                if !pod_file(&records.join(stem)).exists() {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
            continue;
        };
        let base = records.join(stem);
        let raw = std::fs::read(pod_file(&base)).map_err(|e| e.to_string());
        let status = match std::fs::read(status_file(&base)) {
            Ok(bytes) => serde_json::from_slice::<SavedStatus>(&bytes)
                .map(Some)
                .map_err(|e| e.to_string()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.to_string()),
        };
        let valid_pod = raw.as_ref().map_err(Clone::clone).and_then(|r| {
            serde_json::from_slice::<serde_json::Value>(r)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        let set_aside = |f: &Path| {
            let _ = std::fs::create_dir_all(corrupt);
            let stamp = Timestamp::now().as_second();
            let to = corrupt.join(format!(
                "{}.{stamp}",
                f.file_name().unwrap_or_default().to_string_lossy()
            ));
            let _ = std::fs::rename(f, &to);
            to
        };
        match (raw, valid_pod, status) {
            (Ok(raw), Ok(()), Ok(status)) => loaded.push(Loaded { base, raw, status }),
            // The pod is intact, only what was observed of it is not: keep the pod (its
            // supervisors are found again by name), set aside just the status file.
            (Ok(raw), Ok(()), Err(why)) => {
                let to = set_aside(&status_file(&base));
                problems.push(format!(
                    "status record {} is unreadable ({why}); moved to {}; the pod is kept",
                    status_file(&base).display(),
                    to.display()
                ));
                loaded.push(Loaded {
                    base,
                    raw,
                    status: None,
                });
            }
            (_, pod, status) => {
                let why = pod.err().or(status.err()).unwrap_or_default();
                let _ = std::fs::create_dir_all(corrupt);
                let stamp = Timestamp::now().as_second();
                for f in [pod_file(&base), status_file(&base)] {
                    if let Some(file) = f.file_name() {
                        let _ = std::fs::rename(
                            &f,
                            corrupt.join(format!("{}.{stamp}", file.to_string_lossy())),
                        );
                    }
                }
                problems.push(format!(
                    "pod record {} is unreadable ({why}); moved to {}",
                    pod_file(&base).display(),
                    corrupt.display()
                ));
            }
        }
    }
    (loaded, problems)
}

impl SavedStatus {
    /// The observed state of `entry`, as recorded on disk.
    pub fn of(entry: &PodEntry) -> SavedStatus {
        entry.read_state(|st| SavedStatus {
            pod_id: entry.pod_id(),
            start_time: st.start_time,
            failure: st.failure.clone(),
            init: st.init.iter().map(SavedContainer::from_status).collect(),
            containers: st
                .containers
                .iter()
                .map(SavedContainer::from_status)
                .collect(),
        })
    }
}

/// Writes the pod's observed state (atomically; `durable` also fsyncs it); whether it was
/// written. Failures are logged: the supervisors still hold what a restart needs, and the next
/// change retries.
pub(crate) async fn save_status(entry: &PodEntry, settings: &Settings, durable: bool) -> bool {
    let _turn = entry.record_turn().await;
    let saved = SavedStatus::of(entry);
    let dir = settings.layout.record_base(entry.key(), entry.uid());
    let result = tokio::task::spawn_blocking(move || write_status(&dir, &saved, durable)).await;
    match result {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(pod = %entry.key(), error = %e, "could not record pod status");
            false
        }
        Err(_) => false,
    }
}

/// Records a container's exit before its supervisor may let it go: retried (1 s apart at
/// first, then every 5 s) until the state directory takes it, with the node reporting
/// DiskPressure meanwhile. Whether the supervisor may be released: also for a pod being
/// deleted (its record goes anyway); not when the pod is stopped (procnode exiting) before the
/// exit could be recorded, so that the supervisor keeps it for the next procnode.
pub(crate) async fn record_exit(entry: &PodEntry, settings: &Settings, container: &str) -> bool {
    if save_status(entry, settings, true).await {
        return true;
    }
    let held = &settings.unrecorded_exits;
    held.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(pod = %entry.key(), container, "the exit cannot be recorded (is the state directory full?): its supervisor holds it until it can");
    let mut delay = Duration::from_secs(1);
    let release = loop {
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
        if entry.is_being_removed() {
            break true;
        }
        if save_status(entry, settings, true).await {
            tracing::info!(pod = %entry.key(), container, "the held exit is recorded");
            break true;
        }
        if entry.stop_requested() {
            break false;
        }
    };
    held.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    release
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_leave_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    }

    #[test]
    fn concurrent_writers_of_one_record_never_share_a_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = std::sync::Arc::new(dir.path().join("x.status.json"));
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        write_replacing(&p, format!("{i}").as_bytes(), false).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn corrupt_records_are_set_aside_and_the_rest_loads() {
        let dir = tempfile::tempdir().unwrap();
        let records = dir.path().join("records");
        save_pod(&records.join("good"), r#"{"metadata":{"name":"a"}}"#).unwrap();
        save_pod(&records.join("bad"), r#"{"metadata":{"name":"#).unwrap();
        save_pod(&records.join("badstatus"), r#"{"metadata":{"name":"b"}}"#).unwrap();
        std::fs::write(status_file(&records.join("badstatus")), b"{trunc").unwrap();
        // Writes interrupted by a crash before their rename (this version's and an older one's).
        std::fs::write(records.join("good.status.tmp4242"), b"{\"half").unwrap();
        std::fs::write(records.join(".good.status.json.42.7.tmp"), b"{\"half").unwrap();
        // A pod whose name holds ".tmp" is a pod like any other.
        save_pod(
            &records.join("default_backup.tmp_u"),
            r#"{"metadata":{"name":"c"}}"#,
        )
        .unwrap();
        let (loaded, problems) = load_all(&records, &dir.path().join("corrupt"));
        let mut names: Vec<_> = loaded
            .iter()
            .map(|l| l.base.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["badstatus", "default_backup.tmp_u", "good"]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("badstatus.status.json")
                || problems[1].contains("badstatus.status.json"),
            "the file set aside is named: {problems:?}"
        );
        assert!(!pod_file(&records.join("bad")).exists());
        assert!(
            pod_file(&records.join("badstatus")).exists(),
            "the pod is kept"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("corrupt"))
                .unwrap()
                .count(),
            2
        );
        for r in ["good", "badstatus", "default_backup.tmp_u"] {
            remove(&records.join(r)).unwrap();
        }
        assert_eq!(std::fs::read_dir(&records).unwrap().count(), 0);
    }

    /// A status whose pod record never got in place (a create cut short: its pod starts while
    /// the record is written) is removed at load; a pod's own status is kept.
    #[test]
    fn a_status_without_its_pod_record_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let records = dir.path().join("records");
        save_pod(&records.join("kept"), r#"{"metadata":{"name":"a"}}"#).unwrap();
        std::fs::write(status_file(&records.join("orphan")), b"{}").unwrap();
        let (loaded, problems) = load_all(&records, &dir.path().join("corrupt"));
        assert_eq!(loaded.len(), 1, "{problems:?}");
        assert!(problems.is_empty(), "{problems:?}");
        assert!(!status_file(&records.join("orphan")).exists());
        assert!(pod_file(&records.join("kept")).exists());
    }
}
