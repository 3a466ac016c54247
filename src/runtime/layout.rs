//! The state directory's layout: the one place that knows every path under it and every
//! supervisor's name.
//!
//! ```text
//! STATE_DIR/            0711, procnode's own (an existing one must not be writable by others)
//!   lock                held (flock) by the running procnode
//!   records/            0700: NAMESPACE_NAME_UID.pod.json / .status.json (records.rs)
//!   corrupt/            0700: records that could not be read, set aside
//!   logs/               0700: NAMESPACE_NAME_UID/CONTAINER/N.log (CRI format), when kept
//!   sup/                0700: supervisor sockets, HASH-INDEX-RUN (HASH: of namespace/name/uid)
//!   layers/             0700: NAMESPACE_NAME_UID/INDEX-RUN/{upper,work,root}: a run's own
//!                             root (--pod-root overlay), removed with the run
//!   pods/               0711: NAMESPACE_NAME_UID/ (root, the pod's group, 0750)
//!                              volumes/VOLUME/, work/ (the pod's own)
//!   kubelet.crt, .key   node mode's self-signed kubelet API certificate
//! ```

use std::io;
use std::path::{Path, PathBuf};

use super::validate::PodKey;

/// Paths under one state directory.
#[derive(Debug, Clone)]
pub struct StateLayout {
    root: PathBuf,
}

impl StateLayout {
    pub fn new(root: impl Into<PathBuf>) -> StateLayout {
        StateLayout { root: root.into() }
    }

    /// The state directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the state directory and its subdirectories with the modes procnode relies on,
    /// or refuses one that others could write (see [`prepare_state_dir`]).
    pub fn prepare(&self) -> io::Result<()> {
        prepare_state_dir(&self.root)
    }

    /// Holds the state directory for this procnode until the returned lock is dropped; a
    /// second procnode on the same directory is refused, naming the first.
    pub fn lock(&self) -> io::Result<nix::fcntl::Flock<std::fs::File>> {
        lock_state_dir(&self.root)
    }

    /// `pods/`: every pod's directory (it may be a mount of its own).
    pub fn pods(&self) -> PathBuf {
        self.root.join("pods")
    }

    /// The directory name of one pod (in `pods/`, `records/` and `logs/`).
    pub fn pod_dir_name(key: &PodKey, uid: &str) -> String {
        // Every pod gets a uid when it is created; only a record written by an older procnode
        // can lack one.
        let uid = if uid.is_empty() { "no-uid" } else { uid };
        format!("{}_{}_{}", key.namespace, key.name, uid)
    }

    /// The pod's own directory: procnode's, not writable by the pod, entered only by the
    /// pod's own group. It holds `volumes/` and `work/`.
    pub fn pod_dir(&self, key: &PodKey, uid: &str) -> PathBuf {
        self.pods().join(Self::pod_dir_name(key, uid))
    }

    /// The pod's working directory (its containers' unless `workingDir` says otherwise).
    pub fn work_path(&self, key: &PodKey, uid: &str) -> PathBuf {
        self.pod_dir(key, uid).join("work")
    }

    /// `records/`.
    pub fn records(&self) -> PathBuf {
        self.root.join("records")
    }

    /// `corrupt/`: where unreadable records are set aside.
    pub fn corrupt(&self) -> PathBuf {
        self.root.join("corrupt")
    }

    /// Where the pod's record files live (this path plus `.pod.json` / `.status.json`).
    pub fn record_base(&self, key: &PodKey, uid: &str) -> PathBuf {
        self.records().join(Self::pod_dir_name(key, uid))
    }

    /// Where the pod's log files go (one subdirectory per container), when they are kept.
    pub fn pod_log_dir(&self, key: &PodKey, uid: &str) -> PathBuf {
        self.root.join("logs").join(Self::pod_dir_name(key, uid))
    }

    /// The writable layers of a pod's container runs (`--pod-root overlay`), one directory per
    /// run: `layers/NAMESPACE_NAME_UID/INDEX-RUN`.
    pub fn pod_layers(&self, key: &PodKey, uid: &str) -> PathBuf {
        self.root.join("layers").join(Self::pod_dir_name(key, uid))
    }

    /// `sup/`: the supervisors' sockets, in a directory only procnode's user may write, so no
    /// other user can take a name first.
    pub fn sup(&self) -> PathBuf {
        self.root.join("sup")
    }

    /// What the names of every supervisor of this state directory begin with (their command
    /// line is `procnode shim NAME`).
    pub fn supervisor_prefix(&self) -> String {
        format!("{}/", self.sup().display())
    }

    /// The part of a supervisor's name that says which pod it belongs to: a hash of the pod's
    /// namespace, name and uid (socket paths are short).
    pub fn supervisor_pod_part(key: &PodKey, uid: &str) -> String {
        let id = format!("{}/{}/{}", key.namespace, key.name, uid);
        format!("{:016x}", super::hash::fnv1a(&id))
    }

    /// The name of the supervisor of run `run` of container `idx`: the path of its socket,
    /// unique per pod, container and run, in a directory of the pod's own
    /// (`sup/POD_PART/IDX-RUN`), so that finding or removing a pod's sockets reads only its
    /// own directory, however many pods the node runs. (procnode before this kept them all in
    /// `sup/` as `POD_PART-IDX-RUN`: those are still found by their recorded names, and
    /// [`StateLayout::supervisor_files`] lists them.)
    pub fn supervisor_name(&self, key: &PodKey, uid: &str, idx: usize, run: u64) -> String {
        format!(
            "{}{}/{idx}-{run}",
            self.supervisor_prefix(),
            Self::supervisor_pod_part(key, uid)
        )
    }

    /// The directory of the supervisor sockets of the pod whose name part is `pod_part`.
    pub fn supervisor_dir(&self, pod_part: &str) -> PathBuf {
        self.sup().join(pod_part)
    }

    /// The supervisor sockets of the pod whose name part is `pod_part`: container index, run
    /// and path of each. Blocking.
    pub fn supervisor_sockets(&self, pod_part: &str) -> Vec<(usize, u64, PathBuf)> {
        std::fs::read_dir(self.supervisor_dir(pod_part))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let (idx, run) = name.split_once('-')?;
                Some((idx.parse().ok()?, run.parse().ok()?, e.path()))
            })
            .collect()
    }

    /// Every supervisor socket's name below `sup/`, relative to it (`POD_PART/IDX-RUN`, or
    /// an older procnode's `POD_PART-IDX-RUN`); the pod part is what comes before the first
    /// `/` or `-`. Blocking.
    pub fn supervisor_files(&self) -> Vec<String> {
        let mut files = Vec::new();
        for e in std::fs::read_dir(self.sup())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                for s in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                    files.push(format!("{name}/{}", s.file_name().to_string_lossy()));
                }
            } else {
                files.push(name);
            }
        }
        files
    }

    /// Node mode's kubelet API certificate and key, when it makes its own.
    pub fn kubelet_cert(&self) -> (PathBuf, PathBuf) {
        (self.root.join("kubelet.crt"), self.root.join("kubelet.key"))
    }
}

/// Holds the state directory for this procnode: an exclusive `flock` on `STATE_DIR/lock`,
/// released when the returned file is dropped (or the process dies). A second procnode on
/// the same directory would take over the same supervisors and records: it is refused.
fn lock_state_dir(dir: &Path) -> io::Result<nix::fcntl::Flock<std::fs::File>> {
    use std::io::Read;
    let path = dir.join("lock");
    if !path.exists() {
        std::fs::write(&path, "")?;
    }
    // Held open read-only: a file open for writing would keep the state directory's file
    // system from being remounted read-only.
    let file = std::fs::File::open(&path)?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(held) => {
            // (Best effort: it only names the holder in the error a second procnode gets.)
            let _ = std::fs::write(&path, std::process::id().to_string());
            Ok(held)
        }
        Err((mut file, _)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "the state directory {} is in use by another procnode (pid {}); give each procnode a state directory of its own (--state-dir)",
                    dir.display(),
                    holder.trim()
                ),
            ))
        }
    }
}

/// Creates the state directory with the modes procnode relies on: the directory itself and
/// `pods/` traversable by everyone (0711: containers running as other users reach their pod's
/// directory and volumes, but cannot list what is there), `records/`, `logs/`, `corrupt/` and
/// `sup/` (the supervisors' sockets) procnode's alone (0700: pod specs may hold secrets).
///
/// A state directory that already exists keeps its mode: procnode refuses one that it does not
/// own or that others may write (a shared /tmp, say), since everything below it is trusted.
fn prepare_state_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let problem = |what: String| io::Error::new(io::ErrorKind::PermissionDenied, what);
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => {
            let me = nix::unistd::geteuid().as_raw();
            if !meta.is_dir() {
                return Err(problem(format!(
                    "state dir {} is not a directory (a link or a file is not used)",
                    dir.display()
                )));
            }
            if meta.uid() != me || meta.mode() & 0o022 != 0 {
                return Err(problem(format!(
                    "state dir {} belongs to uid {} with mode {:o}: it must be procnode's own (uid {me}) \
                     and writable by nobody else; choose another --state-dir, or fix it with \
                     `chown {me} {0}; chmod go-w {0}`",
                    dir.display(),
                    meta.uid(),
                    meta.mode() & 0o7777,
                )));
            }
            if me == 0 && meta.mode() & 0o001 == 0 {
                tracing::warn!(
                    state_dir = %dir.display(),
                    "pods running as other users cannot reach their volumes by path through this state dir (mode {:o}); `chmod o+x` it",
                    meta.mode() & 0o7777
                );
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)
                .and_then(|_| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)))
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("state dir {}: {e}", dir.display()))
                })?;
        }
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("state dir {}: {e}", dir.display()),
            ))
        }
    }
    let with_mode = |d: &Path, mode: u32| -> io::Result<()> {
        match std::fs::create_dir(d) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
            _ => std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)),
        }
        .map_err(|e| io::Error::new(e.kind(), format!("state dir {}: {e}", d.display())))
    };
    with_mode(&dir.join("pods"), 0o711)?;
    for private in ["records", "logs", "corrupt", "sup", "layers"] {
        with_mode(&dir.join(private), 0o700)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supervisor_names_are_found_again_by_their_pod_part() {
        let dir = tempfile::tempdir().unwrap();
        let layout = StateLayout::new(dir.path());
        std::fs::create_dir(layout.sup()).unwrap();
        let key = PodKey {
            namespace: "ns".into(),
            name: "a.b".into(),
        };
        let name = layout.supervisor_name(&key, "u1", 2, 7);
        assert!(name.starts_with(&layout.supervisor_prefix()));
        let part = StateLayout::supervisor_pod_part(&key, "u1");
        std::fs::create_dir(layout.supervisor_dir(&part)).unwrap();
        std::fs::write(&name, "").unwrap();
        let other = layout.supervisor_name(&key, "u2", 0, 0);
        std::fs::create_dir(std::path::Path::new(&other).parent().unwrap()).unwrap();
        std::fs::write(&other, "").unwrap();
        // An older procnode's flat name.
        std::fs::write(layout.sup().join(format!("{part}-0-3")), "").unwrap();
        let found = layout.supervisor_sockets(&part);
        assert_eq!(found, vec![(2, 7, PathBuf::from(&name))]);
        let mut files = layout.supervisor_files();
        files.sort();
        let mut want = vec![
            format!("{part}/2-7"),
            format!("{part}-0-3"),
            format!("{}/0-0", StateLayout::supervisor_pod_part(&key, "u2")),
        ];
        want.sort();
        assert_eq!(files, want);
        assert_eq!(
            layout.record_base(&key, "").file_name().unwrap(),
            "ns_a.b_no-uid"
        );
    }
}
