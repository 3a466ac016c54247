//! A container run's own root (`--pod-root overlay`), made by the process that spawns it (the
//! supervisor, or the `exec-as` helper) in its own mount namespace before the fork:
//!
//! - an overlay at `LAYER/root` whose lower layer is the host's root and whose upper layer is
//!   `LAYER/upper` (the run's writable layer, on the state directory's disk);
//! - every submount of the host's root (/proc, /sys, /dev, /run, /tmp when it is a mount, a
//!   dedicated pods disk, ...) bound in recursively at its own path, since an overlay shows one
//!   file system only;
//! - the pod's directory bound at its own path (its working directory and volumes are the
//!   host's, shared with its other containers and procnode);
//!
//! then the volume mounts are made on mount points created in the layer (`process::command`),
//! and the child pivots into it. Nothing is created, hidden or changed on the host; the layer
//! goes with the run.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use super::process::{RootSpec, SpawnError};
use std::os::fd::OwnedFd;

use super::safepath::{mount_point_in_root, proc_fd_path, Dir};

/// The mounted root of a run.
pub struct NewRoot {
    dir: Dir,
}

impl NewRoot {
    /// The root's mount point, as the spawner sees it.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A handle on it, for paths resolved as the container resolves them.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }
}

fn problem(path: &Path, what: impl std::fmt::Display) -> SpawnError {
    SpawnError::Mount(path.to_path_buf(), what.to_string())
}

fn c(path: &Path) -> Result<CString, SpawnError> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(|_| problem(path, "contains a NUL byte"))
}

/// Mounts the overlay and binds the host's submounts and `spec.binds` into it. The caller is
/// in a mount namespace of its own whose mounts are private.
pub fn build(spec: &RootSpec) -> Result<NewRoot, SpawnError> {
    let (upper, work, root) = (
        spec.layer.join("upper"),
        spec.layer.join("work"),
        spec.layer.join("root"),
    );
    for dir in [&upper, &work, &root] {
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(problem(dir, format!("the run's layer: {e}"))),
        }
    }
    for dir in [&upper, &work] {
        let text = dir.to_string_lossy();
        if text.contains([',', ':', '\\']) {
            return Err(problem(
                dir,
                "the state directory's path may not hold ',', ':' or '\\' for an overlay",
            ));
        }
    }
    let options = format!(
        "lowerdir=/,upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    mount(
        Some(c"overlay"),
        c(&root)?.as_c_str(),
        Some(c"overlay"),
        MsFlags::empty(),
        Some(c(Path::new(&options))?.as_c_str()),
    )
    .map_err(|e| problem(&root, format!("overlay: {e}")))?;
    for sub in host_submounts(&spec.layer)? {
        let target = root.join(sub.strip_prefix("/").unwrap_or(&sub));
        // A mount point the overlay does not show (hidden below another mount) is left out.
        if std::fs::symlink_metadata(&target).is_err() {
            continue;
        }
        bind(&sub, &target)?;
    }
    for host in &spec.binds {
        let target = root.join(host.strip_prefix("/").unwrap_or(host));
        bind(host, &target)?;
    }
    let dir = Dir::open_trusted(&root).map_err(|e| problem(&root, e))?;
    Ok(NewRoot { dir })
}

fn bind(source: &Path, target: &Path) -> Result<(), SpawnError> {
    mount(
        Some(c(source)?.as_c_str()),
        c(target)?.as_c_str(),
        None::<&std::ffi::CStr>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&std::ffi::CStr>,
    )
    .map_err(|e| problem(target, format!("binding {}: {e}", source.display())))
}

/// Mounts the volume open at `source` on the mount point `at` (made in `root` at `rel` by
/// [`mount_point_in_root`]), read-only when asked.
pub fn mount_volume(
    root: &NewRoot,
    source: &OwnedFd,
    at: &OwnedFd,
    rel: &Path,
    read_only: bool,
) -> std::io::Result<()> {
    mount(
        Some(proc_fd_path(source).as_path()),
        proc_fd_path(at).as_path(),
        None::<&Path>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&Path>,
    )?;
    if read_only {
        // `at` is the mount point below the new mount: resolve the path again to reach the
        // mount itself (it exists now, so nothing is made).
        let mounted = mount_point_in_root(root.dir(), rel, false)?;
        mount(
            None::<&Path>,
            proc_fd_path(&mounted).as_path(),
            None::<&Path>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&Path>,
        )?;
    }
    Ok(())
}

/// The mount points of the mounts right below the root mount (from /proc/self/mountinfo), but
/// those inside `layer` (the new root itself).
fn host_submounts(layer: &Path) -> Result<Vec<PathBuf>, SpawnError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| problem(Path::new("/proc/self/mountinfo"), e))?;
    Ok(submounts_of_root(&info)
        .into_iter()
        .filter(|p| !p.starts_with(layer))
        .collect())
}

/// Mountinfo lines: `ID PARENT MAJ:MIN ROOT MOUNTPOINT ...`; mount points escape space, tab,
/// newline and backslash as octal.
fn submounts_of_root(info: &str) -> Vec<PathBuf> {
    let lines: Vec<Vec<&str>> = info
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .filter(|f| f.len() > 4)
        .collect();
    // The root mount: the last one mounted at "/" (a later one hides an earlier one).
    let Some(root_id) = lines.iter().rev().find(|f| f[4] == "/").map(|f| f[0]) else {
        return Vec::new();
    };
    let mut seen = std::collections::HashSet::new();
    lines
        .iter()
        .filter(|f| f[1] == root_id && f[4] != "/")
        .map(|f| PathBuf::from(unescape(f[4])))
        .filter(|p| seen.insert(p.clone()))
        .collect()
}

fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let octal = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok());
            if let Some(v) = octal {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submounts_are_the_root_mounts_children_unescaped() {
        let info = "\
21 1 0:20 / / rw - ext4 /dev/vda rw
22 21 0:5 / /proc rw - proc proc rw
23 21 0:6 / /sys rw - sysfs sysfs rw
24 23 0:7 / /sys/fs/cgroup rw - tmpfs tmpfs rw
25 21 0:8 / /mnt/a\\040b rw - tmpfs tmpfs rw
";
        assert_eq!(
            submounts_of_root(info),
            vec![
                PathBuf::from("/proc"),
                PathBuf::from("/sys"),
                PathBuf::from("/mnt/a b")
            ]
        );
    }
}
