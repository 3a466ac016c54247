//! Everything that touches OS processes: resolving a command and building it for a new process
//! group, spawning the per-container supervisor, signals to a whole group, and the one reaper
//! that collects the exit status of every child procnode has. The crate's only `unsafe` (taking
//! ownership of received file descriptors) is here too.
//!
//! Why a reaper of our own instead of `tokio::process`: procnode makes itself a *child
//! subreaper*, so that a container's grandchildren, orphaned when the container's main process
//! exits, are re-parented to procnode rather than to PID 1 (which, in a container or a sandbox,
//! often reaps nothing and leaves zombies). Someone must then reap processes procnode never
//! spawned. One thread blocking in `waitpid(-1)` does that for everybody: exits of registered
//! pids are delivered on a oneshot channel, anything else is an orphan and is just collected.
//! It is also O(1) per exit, where a SIGCHLD-driven scheme polls every live child on each signal.
//! Consequence: nothing else in procnode may `wait` for a child (no `tokio::process`, no
//! `std::process::Command::output`); every spawn goes through [`spawn_shim`].

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// PATH used to find a command when the container's env does not set one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    /// The exit code a container runtime reports: the code, or 128 + the signal number.
    pub fn exit_code(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled(sig) => 128 + sig,
        }
    }

    pub fn signal(self) -> Option<i32> {
        match self {
            ExitStatus::Exited(_) => None,
            ExitStatus::Signaled(sig) => Some(sig),
        }
    }
}

/// What to run: argv, environment (the complete environment; nothing is inherited) and working dir.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SpawnRequest {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// The identity to take before exec; `None` keeps the spawner's.
    #[serde(default)]
    pub user: Option<super::users::UserSpec>,
    /// cgroup directories the process joins before exec (one per hierarchy).
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// Bind mounts made in a private mount namespace of the process before exec.
    #[serde(default)]
    pub mounts: Vec<BindMount>,
    /// `PR_SET_NO_NEW_PRIVS` before exec: no setuid binary or file capability raises what the
    /// process may do.
    #[serde(default)]
    pub no_new_privs: bool,
    /// A root of the process's own (`--pod-root overlay`); `None`: the host's.
    #[serde(default)]
    pub root: Option<RootSpec>,
    /// `securityContext.readOnlyRootFilesystem`: the root is mounted read-only for the process
    /// (volumes keep their own modes).
    #[serde(default)]
    pub read_only_root: bool,
    /// Run in the mount namespace (and so the root and mounts) of this running process: exec
    /// probes and hooks of a container that has a root of its own.
    #[serde(default)]
    pub join_mounts_of: Option<i32>,
    /// The process group (or session) the process starts in.
    #[serde(default)]
    pub group: Group,
    /// A container's stdin: none (/dev/null), a pipe, or a terminal for all three streams
    /// (`stdin` and `tty` in its spec, for `kubectl attach`).
    #[serde(default)]
    pub console: Console,
}

/// What a container's standard input is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Console {
    /// /dev/null; output on two pipes.
    #[default]
    None,
    /// A pipe procnode (through the supervisor) writes; output on two pipes.
    Stdin,
    /// A pseudo-terminal as stdin, stdout and stderr (the process leads a session on it).
    Terminal,
}

/// The spawner's ends of a container's standard streams.
pub struct ContainerIo {
    /// The output pipe's read end, or the terminal's master.
    pub stdout: OwnedFd,
    /// The error pipe's read end (none with a terminal: its output is all on stdout).
    pub stderr: Option<OwnedFd>,
    /// The stdin pipe's write end, or (a copy of) the terminal's master.
    pub stdin: Option<OwnedFd>,
}

/// Makes a container's standard streams as `req.console` asks: what the container gets, and
/// the spawner's ends.
pub fn container_stdio(req: &SpawnRequest) -> Result<([Stdio; 3], ContainerIo), SpawnError> {
    if req.console == Console::Terminal {
        let owner = req.user.as_ref().map(|u| (u.uid, u.gid));
        let (master, slave) = open_terminal(owner)?;
        let copy = |fd: &OwnedFd| fd.try_clone().map_err(SpawnError::Terminal);
        let theirs = [
            Stdio::from(copy(&slave)?),
            Stdio::from(copy(&slave)?),
            Stdio::from(slave),
        ];
        let stdin = Some(copy(&master)?);
        return Ok((
            theirs,
            ContainerIo {
                stdout: master,
                stderr: None,
                stdin,
            },
        ));
    }
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (stdin_theirs, stdin) = match req.console {
        Console::Stdin => {
            let (r, w) = pipe()?;
            (Stdio::from(r), Some(w))
        }
        _ => (Stdio::null(), None),
    };
    Ok((
        [stdin_theirs, Stdio::from(out_w), Stdio::from(err_w)],
        ContainerIo {
            stdout: out_r,
            stderr: Some(err_r),
            stdin,
        },
    ))
}

/// Where a spawned process stands among process groups and sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Group {
    /// A process group of its own (signals reach it and its children together).
    #[default]
    Own,
    /// A session of its own whose controlling terminal is its stdin (an exec with a tty): a
    /// shell's job control then works, and closing the terminal hangs the session up.
    Terminal,
    /// The spawner's group: the `exec-as` helper of a `Terminal` request, which makes the
    /// session itself (a group leader cannot).
    Inherit,
}

/// A container run's own root: an overlay whose lower layer is the host's root and whose
/// upper layer is the run's own, with the host's submounts (/proc, /sys, /dev, /run, ...)
/// bound in, and `binds` at their own paths; volume mount targets are then paths inside it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RootSpec {
    /// The run's directory (root's): `upper/` and `work/` of the overlay, `root/` its mount
    /// point. Made by procnode; removed when the run ends.
    pub layer: PathBuf,
    /// Host directories bound at their own path (the pod's directory: its working directory
    /// and volumes are the host's, not the layer's).
    pub binds: Vec<PathBuf>,
}

/// A volume made visible at a path, for one process (its own mount namespace). The source is
/// `sub` beneath the trusted directory `root`, opened without following links (see
/// [`super::safepath`]) just before the fork and mounted from its descriptor, so nothing can
/// swap it between the check and the mount.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BindMount {
    pub root: PathBuf,
    pub sub: PathBuf,
    pub links: super::safepath::Links,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Why a command could not be started. The messages follow the wording users know from
/// container runtimes, since they end up in the container's status.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("no command to run: the container has neither command nor image")]
    NoCommand,
    #[error("exec: \"{0}\": executable file not found in $PATH")]
    NotFound(String),
    #[error("exec: \"{0}\": permission denied (not an executable file)")]
    NotExecutable(String),
    #[error("chdir to working directory \"{0}\": {1}")]
    WorkingDir(PathBuf, io::Error),
    #[error("creating the pod directory {0}: {1}")]
    PodDir(PathBuf, io::Error),
    #[error("creating output pipes: {0}")]
    Pipe(Errno),
    #[error("opening a terminal: {0}")]
    Terminal(io::Error),
    #[error("starting \"{0}\": {1}")]
    Exec(String, io::Error),
    #[error("cgroup {0}: {1}")]
    Cgroup(PathBuf, io::Error),
    #[error("mounting volume at {0}: {1}")]
    Mount(PathBuf, String),
}

/// Builds the command for `req`: the program resolved (so that a missing or non-executable one
/// is a clear error, and the standard library can use posix_spawn instead of fork), the working
/// directory checked, the environment replaced, stdin from /dev/null, a new process group.
pub fn command(
    req: &SpawnRequest,
    stdin: Stdio,
    stdout: Stdio,
    stderr: Stdio,
) -> Result<Command, SpawnError> {
    let first = req.argv.first().ok_or(SpawnError::NoCommand)?;
    // In a root of its own the working directory is the container's (made there if missing,
    // below); on the host it must exist.
    let own_root = req.root.is_some() || req.join_mounts_of.is_some();
    match std::fs::metadata(&req.cwd) {
        _ if own_root => {}
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(SpawnError::WorkingDir(
                req.cwd.clone(),
                io::Error::other("not a directory"),
            ))
        }
        Err(e) => return Err(SpawnError::WorkingDir(req.cwd.clone(), e)),
    }
    let path_var = req
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or(DEFAULT_PATH);
    let program = resolve_program(first, path_var, &req.cwd)?;
    let mut cmd = Command::new(&program);
    cmd.arg0(first)
        .args(&req.argv[1..])
        .env_clear()
        .envs(req.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&req.cwd)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr);
    if req.group == Group::Own {
        cmd.process_group(0);
    }
    let terminal = req.group == Group::Terminal;
    // Everything the child does between fork and exec is prepared here, before the fork:
    // the child only makes system calls on this data (no allocation, no locks).
    let cgroup_files = req
        .cgroups
        .iter()
        .map(|dir| {
            let file = dir.join("cgroup.procs");
            if !file.exists() {
                return Err(SpawnError::Cgroup(
                    dir.clone(),
                    io::Error::from(io::ErrorKind::NotFound),
                ));
            }
            c_path(&file).map_err(|e| SpawnError::Cgroup(dir.clone(), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // A running container's namespace to join (its exec probes and hooks), opened now.
    let join = req
        .join_mounts_of
        .map(|pid| {
            nix::fcntl::open(
                format!("/proc/{pid}/ns/mnt").as_str(),
                OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| {
                SpawnError::Mount(PathBuf::from("/"), format!("the container's mounts: {e}"))
            })
        })
        .transpose()?;
    if !req.mounts.is_empty() || req.root.is_some() || req.read_only_root {
        // The mounts are made in a mount namespace of this process's own, made here before the
        // sources are opened: a bind mount's source must be in the namespace it is mounted
        // in. Only a process of the container's own gets here (its supervisor, or the
        // `exec-as` helper: `via_helper` routes every request with mounts there), so procnode's
        // namespace is never touched. Nothing mounted here propagates back to the host.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
            .and_then(|()| {
                nix::mount::mount(
                    None::<&std::ffi::CStr>,
                    c"/",
                    None::<&std::ffi::CStr>,
                    nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                    None::<&std::ffi::CStr>,
                )
            })
            .map_err(|e| SpawnError::Mount(PathBuf::from("/"), format!("mount namespace: {e}")))?;
    }
    let new_root = match &req.root {
        Some(root) => {
            let made = super::rootfs::build(root)?;
            let rel = req.cwd.strip_prefix("/").unwrap_or(&req.cwd);
            if !rel.as_os_str().is_empty() {
                super::safepath::mount_point_in_root(made.dir(), rel, false)
                    .map_err(|e| SpawnError::WorkingDir(req.cwd.clone(), e))?;
            }
            Some(made)
        }
        None => None,
    };
    let mounts = req
        .mounts
        .iter()
        .map(|m| {
            let problem = |what: String| SpawnError::Mount(m.target.clone(), what);
            let source_path = m.root.join(&m.sub);
            let fd = super::safepath::Dir::open_trusted(&m.root)
                .and_then(|root| root.open_path(&m.sub, m.links))
                .map_err(|e| problem(format!("source: {e}")))?;
            let is_dir = |fd: &OwnedFd| {
                nix::sys::stat::fstat(fd)
                    .map(|s| s.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR)
            };
            let source_is_dir = is_dir(&fd)
                .map_err(|e| problem(format!("source {}: {e}", source_path.display())))?;
            // In a root of its own, the mount point is made there (in the run's layer) as the
            // container would resolve it; on the host, it must exist.
            let rel = m.target.strip_prefix("/").unwrap_or(&m.target);
            let (mount_point, target_is_dir) = match &new_root {
                Some(root) => {
                    let at = super::safepath::mount_point_in_root(root.dir(), rel, !source_is_dir)
                        .map_err(|e| problem(format!("mount point: {e}")))?;
                    let at_dir = is_dir(&at).map_err(|e| problem(format!("mount point: {e}")))?;
                    (Some(at), at_dir)
                }
                None => {
                    let target = std::fs::metadata(&m.target)
                        .map_err(|e| problem(format!("mount point: {e}")))?;
                    (None, target.is_dir())
                }
            };
            if source_is_dir != target_is_dir {
                return Err(problem(format!(
                    "{} is a {} but the mount point is not",
                    source_path.display(),
                    if source_is_dir { "directory" } else { "file" }
                )));
            }
            if let (Some(root), Some(at)) = (&new_root, &mount_point) {
                // Mounted now, in this namespace (the source's; the child's own copy of it
                // keeps the mount).
                super::rootfs::mount_volume(root, &fd, at, rel, m.read_only)
                    .map_err(|e| problem(e.to_string()))?;
                return Ok(None);
            }
            let as_c = |p: &Path| c_path(p).map_err(|e| problem(e.to_string()));
            let from = as_c(&super::safepath::proc_fd_path(&fd))?;
            let target = as_c(&m.target)?;
            // The descriptors live in the closure, so they are open in the child until exec
            // (close-on-exec) and closed with the command.
            Ok(Some((fd, from, target, m.read_only)))
        })
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect::<Vec<_>>();
    let read_only_root = req.read_only_root;
    let pivot = new_root
        .as_ref()
        .map(|r| {
            c_path(r.path()).map_err(|e| SpawnError::Mount(r.path().to_path_buf(), e.to_string()))
        })
        .transpose()?;
    let cwd_c = c_path(&req.cwd).map_err(|e| SpawnError::WorkingDir(req.cwd.clone(), e))?;
    let user = req.user.clone().map(|user| {
        let groups: Vec<nix::unistd::Gid> = user
            .groups
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        (
            groups,
            nix::unistd::Gid::from_raw(user.gid),
            nix::unistd::Uid::from_raw(user.uid),
        )
    });
    let no_new_privs = req.no_new_privs;
    if !cgroup_files.is_empty()
        || !mounts.is_empty()
        || user.is_some()
        || no_new_privs
        || pivot.is_some()
        || join.is_some()
        || read_only_root
        || terminal
    {
        // SAFETY: runs in the forked child before exec; it only makes system calls (setsid,
        // ioctl, open, write, unshare, mount, setgroups, setgid, setuid) on data prepared
        // before the fork.
        unsafe {
            cmd.pre_exec(move || {
                use nix::mount::{mount, MsFlags};
                if terminal {
                    // A new session (this process is no group leader: see Group::Inherit),
                    // with stdin, the terminal, as its controlling terminal.
                    nix::unistd::setsid()?;
                    if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                for file in &cgroup_files {
                    let fd = nix::fcntl::open(
                        file.as_c_str(),
                        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                        nix::sys::stat::Mode::empty(),
                    )?;
                    nix::unistd::write(&fd, b"0")?;
                }
                if let Some(root) = &pivot {
                    // The new root becomes this process's alone: a namespace of its own (the
                    // supervisor keeps the host's root), then pivot_root into it and detach
                    // the old one (the volumes are mounted in it already).
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
                    nix::unistd::chdir(root.as_c_str())?;
                    nix::unistd::pivot_root(c".", c".")?;
                    nix::mount::umount2(c".", nix::mount::MntFlags::MNT_DETACH)?;
                }
                if !mounts.is_empty() {
                    for (_fd, source, target, read_only) in &mounts {
                        mount(
                            Some(source.as_c_str()),
                            target.as_c_str(),
                            None::<&std::ffi::CStr>,
                            MsFlags::MS_BIND | MsFlags::MS_REC,
                            None::<&std::ffi::CStr>,
                        )?;
                        if *read_only {
                            mount(
                                None::<&std::ffi::CStr>,
                                target.as_c_str(),
                                None::<&std::ffi::CStr>,
                                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                                None::<&std::ffi::CStr>,
                            )?;
                        }
                    }
                }
                if read_only_root {
                    // The root's own mount, once the volumes are mounted (a bind mount takes
                    // the read-only flag of the mount its source is on).
                    mount(
                        None::<&std::ffi::CStr>,
                        c"/",
                        None::<&std::ffi::CStr>,
                        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
                        None::<&std::ffi::CStr>,
                    )?;
                }
                if pivot.is_some() || !mounts.is_empty() {
                    // Into the working directory as it is now (a volume may be mounted on it).
                    nix::unistd::chdir(cwd_c.as_c_str())?;
                }
                if let Some(ns) = &join {
                    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNS)?;
                    nix::unistd::chdir(cwd_c.as_c_str())?;
                }
                if let Some((groups, gid, uid)) = &user {
                    nix::unistd::setgroups(groups)?;
                    nix::unistd::setgid(*gid)?;
                    nix::unistd::setuid(*uid)?;
                }
                if no_new_privs {
                    nix::sys::prctl::set_no_new_privs()?;
                }
                Ok(())
            });
        }
    }
    Ok(cmd)
}

/// The parent of process `pid`, from `/proc/PID/stat`.
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Gives the calling thread, and only it, the file system identity of a container (uid,
/// gid, groups), for a read made as the container would make it. Call it on a thread of its
/// own that ends afterwards: its credentials are not given back.
pub fn take_fs_identity(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    let list: Vec<nix::libc::gid_t> = groups.to_vec();
    // SAFETY: a system call given a valid pointer and its length. The raw call changes this
    // thread's groups only; the C library's setgroups would change every thread's.
    let r = unsafe { nix::libc::syscall(nix::libc::SYS_setgroups, list.len(), list.as_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid));
    nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
    // Neither call reports an error; each returns the value in force, so ask once more.
    let fsuid = nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid)).as_raw();
    let fsgid = nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid)).as_raw();
    if fsuid != uid || fsgid != gid {
        return Err(io::Error::other("cannot take the container's identity"));
    }
    Ok(())
}

fn c_path(p: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::other(format!("{} contains a NUL byte", p.display())))
}

/// A pair of pipe ends (read, write), both close-on-exec.
pub fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)
}

/// A supervisor process just started: its pid, its exit, and procnode's end of the socket
/// that is the supervisor's stdin (its first connection).
pub struct SpawnedShim {
    pub pid: i32,
    pub exit: oneshot::Receiver<ExitStatus>,
    pub socket: std::os::unix::net::UnixStream,
}

/// Starts `exe shim NAME` (the per-container supervisor) with one end of a fresh socket pair
/// as its stdin, in a process group of its own so that signals meant for procnode (a Ctrl-C in
/// a terminal) do not reach it. Blocks for the duration of posix_spawn; call it from a
/// blocking context.
pub fn spawn_shim(exe: &Path, name: &str) -> Result<SpawnedShim, SpawnError> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| SpawnError::Exec(exe.display().to_string(), e))?;
    let mut cmd = Command::new(exe);
    cmd.arg("shim")
        .arg(name)
        .env_clear()
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let reaper = Reaper::get();
    let ticket = reaper.begin_spawn();
    let child = cmd
        .spawn()
        .map_err(|e| SpawnError::Exec(exe.display().to_string(), e))?;
    // Dropping `cmd` closes our copy of the supervisor's end.
    drop(cmd);
    let pid = child.id() as i32;
    // A std Child does not wait on drop; the reaper owns the exit from here on.
    drop(child);
    Ok(SpawnedShim {
        pid,
        exit: reaper.register(pid, ticket),
        socket: ours,
    })
}

/// A request that switches user (or joins a cgroup, or mounts) cannot be spawned from a process that runs the reaper: the
/// standard library forks for it, and when exec then fails it waits for the failed child
/// itself, racing the reaper (and panicking when it loses). Such a request is routed through
/// `HELPER exec-as SPEC` (see [`exec_as_main`]): posix_spawn'd without a switch, the helper,
/// single-threaded, switches user and replaces itself with the command.
fn via_helper(req: &SpawnRequest, helper: &Path) -> SpawnRequest {
    if req.user.is_none()
        && req.cgroups.is_empty()
        && req.mounts.is_empty()
        && !req.no_new_privs
        && req.root.is_none()
        && !req.read_only_root
        && req.join_mounts_of.is_none()
        && req.group != Group::Terminal
    {
        return req.clone();
    }
    let spec = serde_json::to_string(req).expect("spawn request serialises");
    SpawnRequest {
        argv: vec![helper.display().to_string(), "exec-as".into(), spec],
        env: Vec::new(),
        cwd: PathBuf::from("/"),
        user: None,
        cgroups: Vec::new(),
        mounts: Vec::new(),
        no_new_privs: false,
        root: None,
        read_only_root: false,
        join_mounts_of: None,
        group: match req.group {
            Group::Terminal => Group::Inherit,
            _ => Group::Own,
        },
        console: Console::None,
    }
}

/// `procnode exec-as SPEC`: switch to the request's user and exec its command in place (no
/// fork, so no wait). Returns only on failure: 127 when the command cannot be found, 126 when
/// it cannot be executed, with the reason on stderr.
pub fn exec_as_main(spec: &str) -> i32 {
    let req: SpawnRequest = match serde_json::from_str(spec) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("procnode exec-as: bad spec: {e}");
            return 127;
        }
    };
    let mut cmd = match command(&req, Stdio::inherit(), Stdio::inherit(), Stdio::inherit()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("procnode exec-as: {e}");
            return 127;
        }
    };
    let err = cmd.exec();
    eprintln!(
        "procnode exec-as: {}: {err}",
        req.argv.first().map(String::as_str).unwrap_or("")
    );
    if err.kind() == io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

/// A container started directly as procnode's child (no supervisor).
pub struct SpawnedDirect {
    pub pid: i32,
    pub exit: oneshot::Receiver<ExitStatus>,
    pub io: ContainerIo,
}

/// Starts `req` as a direct child of procnode with its output on pipes (or a terminal). Blocks
/// for the duration of posix_spawn; call it from a blocking context.
pub fn spawn_direct(req: &SpawnRequest, helper: &Path) -> Result<SpawnedDirect, SpawnError> {
    let ([stdin, stdout, stderr], io) = container_stdio(req)?;
    let req = &via_helper(req, helper);
    let mut cmd = command(req, stdin, stdout, stderr)?;
    let reaper = Reaper::get();
    let ticket = reaper.begin_spawn();
    let first = req.argv.first().cloned().unwrap_or_default();
    let child = cmd.spawn().map_err(|e| SpawnError::Exec(first, e))?;
    // Dropping `cmd` closes our copies of the write ends, so EOF arrives when the group exits.
    drop(cmd);
    let pid = child.id() as i32;
    drop(child);
    Ok(SpawnedDirect {
        pid,
        exit: reaper.register(pid, ticket),
        io,
    })
}

/// Marks every open file descriptor above stderr close-on-exec, so that descriptors this
/// process inherited without that flag (from whatever started it) do not leak into containers.
/// Call it early, from a single thread, before any container is started.
pub fn close_inherited_fds_on_exec() {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: only the flags of `fd` are changed, for the duration of this call; a
        // descriptor that was the directory listing itself (now closed) just fails with EBADF.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let _ = nix::fcntl::fcntl(
            borrowed,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
}

/// Starts `req` as procnode's own child with its output discarded (probes, hooks): its pid and
/// its exit.
pub fn spawn_quiet(
    req: &SpawnRequest,
    helper: &Path,
) -> Result<(i32, oneshot::Receiver<ExitStatus>), SpawnError> {
    spawn_with(req, helper, [Stdio::null(), Stdio::null(), Stdio::null()])
}

/// Starts `req` as procnode's own child with `stdio` as its stdin, stdout and stderr (an exec
/// session's pipes or terminal): its pid and its exit.
pub fn spawn_with(
    req: &SpawnRequest,
    helper: &Path,
    stdio: [Stdio; 3],
) -> Result<(i32, oneshot::Receiver<ExitStatus>), SpawnError> {
    let req = &via_helper(req, helper);
    let [stdin, stdout, stderr] = stdio;
    let mut cmd = command(req, stdin, stdout, stderr)?;
    let reaper = Reaper::get();
    let ticket = reaper.begin_spawn();
    let first = req.argv.first().cloned().unwrap_or_default();
    let child = cmd.spawn().map_err(|e| SpawnError::Exec(first, e))?;
    let pid = child.id() as i32;
    drop(child);
    Ok((pid, reaper.register(pid, ticket)))
}

/// A pseudo-terminal for an exec session with a tty: procnode keeps the master (both
/// close-on-exec); the process gets the slave as its stdin, stdout and stderr. The slave is
/// handed to `owner` (uid, gid), as a login hands a terminal to its user.
pub fn open_terminal(owner: Option<(u32, u32)>) -> Result<(OwnedFd, OwnedFd), SpawnError> {
    let term = |e: Errno| SpawnError::Terminal(e.into());
    let pty = nix::pty::openpty(None, None).map_err(term)?;
    for fd in [&pty.master, &pty.slave] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(term)?;
    }
    if let Some((uid, gid)) = owner {
        nix::unistd::fchown(
            &pty.slave,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .map_err(term)?;
    }
    Ok((pty.master, pty.slave))
}

/// Sets a terminal's window size (its foreground process group gets SIGWINCH).
pub fn set_window_size(master: &OwnedFd, cols: u16, rows: u16) -> io::Result<()> {
    let size = nix::libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize through the pointer, which outlives the call; the
    // descriptor is borrowed from an OwnedFd, so it is open.
    let r = unsafe { nix::libc::ioctl(master.as_raw_fd(), nix::libc::TIOCSWINSZ, &size) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Kills process group `pgid` and every process of session `pgid` (what a shell on an exec
/// session's terminal started in groups of their own). ESRCH is "already gone".
pub fn kill_session(pgid: i32) {
    signal_group(pgid, Signal::SIGKILL);
    let _ = nix::sys::signal::kill(Pid::from_raw(pgid), Signal::SIGKILL);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command name: state, ppid, pgrp, session.
        let session = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(3)?.parse::<i32>().ok());
        if session == Some(pgid) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Takes ownership of file descriptors received from another process (SCM_RIGHTS).
pub fn own_received_fds(fds: &[RawFd]) -> Vec<OwnedFd> {
    // SAFETY: the kernel just installed these descriptors in this process for this message;
    // nothing else refers to them, so each becomes owned exactly once, here.
    fds.iter()
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect()
}

pub(crate) fn resolve_program(
    name: &str,
    path_var: &str,
    cwd: &Path,
) -> Result<PathBuf, SpawnError> {
    let check = |p: &Path| -> Result<(), SpawnError> {
        match std::fs::metadata(p) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
            Ok(_) => Err(SpawnError::NotExecutable(name.to_string())),
            Err(_) => Err(SpawnError::NotFound(name.to_string())),
        }
    };
    if name.contains('/') {
        let p = cwd.join(name);
        check(&p)?;
        return Ok(p);
    }
    if name.is_empty() {
        return Err(SpawnError::NotFound(name.to_string()));
    }
    let mut not_executable = false;
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let candidate = cwd.join(dir).join(name);
        match check(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(SpawnError::NotExecutable(_)) => not_executable = true,
            Err(_) => {}
        }
    }
    if not_executable {
        Err(SpawnError::NotExecutable(name.to_string()))
    } else {
        Err(SpawnError::NotFound(name.to_string()))
    }
}

/// Sends `sig` to every process of the group `pgid`. Returns false when the group is gone
/// (ESRCH: nothing left to signal, which is what a caller stopping it wanted).
pub fn signal_group(pgid: i32, sig: Signal) -> bool {
    match killpg(Pid::from_raw(pgid), sig) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        Err(e) => {
            tracing::warn!(pgid, ?sig, error = %e, "signal to process group failed");
            false
        }
    }
}

/// SIGKILLs every process in the cgroups `dirs` (one per hierarchy) and their descendants:
/// `cgroup.kill` where the kernel has it (v2); with cgroup v1 the freezer hierarchy's directory
/// (if there is one) goes first, frozen while its processes are signalled so that none can
/// fork meanwhile. Blocking.
pub fn kill_cgroups(dirs: &[PathBuf]) {
    let mut ordered: Vec<&PathBuf> = dirs.iter().collect();
    ordered.sort_by_key(|d| !d.join("freezer.state").exists());
    for dir in ordered {
        kill_cgroup(dir);
    }
}

/// SIGKILLs every process in the cgroup `dir` and its descendants until none is left (or a
/// second has passed): `cgroup.kill` where the kernel has it (v2), else each pid of
/// `cgroup.procs`, repeatedly, since a forking process may add more (a v1 freezer directory is
/// frozen first and thawed after, so that the signals are delivered). Blocking.
pub fn kill_cgroup(dir: &Path) {
    let kill_file = dir.join("cgroup.kill");
    if kill_file.exists() && std::fs::write(&kill_file, "1").is_ok() {
        return;
    }
    let freezer = dir.join("freezer.state");
    let frozen = freezer.exists() && std::fs::write(&freezer, "FROZEN").is_ok();
    if frozen {
        for _ in 0..100 {
            match std::fs::read_to_string(&freezer) {
                Ok(state) if state.trim() == "FROZEN" => break,
                Ok(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
                Err(_) => break,
            }
        }
    }
    for round in 0..100 {
        let mut any = false;
        let mut dirs = vec![dir.to_path_buf()];
        while let Some(d) = dirs.pop() {
            if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    any = true;
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            if let Ok(children) = std::fs::read_dir(&d) {
                dirs.extend(
                    children
                        .flatten()
                        .filter(|c| c.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|c| c.path()),
                );
            }
        }
        // Frozen processes die once thawed: thaw after the first round of signals.
        if frozen && round == 0 {
            let _ = std::fs::write(&freezer, "THAWED");
        }
        if !any {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    if frozen {
        let _ = std::fs::write(&freezer, "THAWED");
    }
}

/// Starts the reaper thread now (it otherwise starts with the first spawn). A process that
/// becomes a subreaper without spawning through this module (a test harness) needs it to
/// collect the orphans it inherits.
pub fn start_reaper() {
    Reaper::get();
}

/// Whether `pid` is a process that started within a couple of seconds of `started_ns` (Unix
/// nanoseconds): that it is still the process procnode recorded, not an unrelated one that got
/// the same pid since (after a reboot, say). Signals to a recorded group are sent only then.
pub fn is_same_process(pid: i32, started_ns: i64) -> bool {
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(_) => return false,
    };
    let start_ticks: Option<u64> = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19)?.parse().ok());
    let boot_secs: Option<u64> = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
    });
    let ticks_per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    match (start_ticks, boot_secs) {
        (Some(ticks), Some(boot)) => {
            let started = (boot as f64 + ticks as f64 / ticks_per_sec as f64) * 1e9;
            (started - started_ns as f64).abs() < 3e9
        }
        _ => false,
    }
}

/// Makes procnode the reaper of orphaned descendants (see the module docs).
pub fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

/// The one place that waits for children.
struct Reaper {
    state: Mutex<ReaperState>,
    wake: Condvar,
    /// Incremented before each spawn; see [`Reaper::register`].
    spawns_started: AtomicU64,
}

struct ReaperState {
    waiting: HashMap<i32, oneshot::Sender<ExitStatus>>,
    /// Exits of pids nobody had registered yet: either a child whose spawner has not yet called
    /// `register` (a race of microseconds), or an orphan. Tagged with the spawn counter at reap
    /// time, and dropped after a while.
    unclaimed: HashMap<i32, (ExitStatus, u64, Instant)>,
}

/// How long an unregistered exit is kept for a spawner that has not registered yet.
const UNCLAIMED_TTL: Duration = Duration::from_secs(10);

/// Proof that a spawn began at a given point of the spawn counter.
struct SpawnTicket(u64);

impl Reaper {
    fn get() -> &'static Reaper {
        static REAPER: OnceLock<&'static Reaper> = OnceLock::new();
        REAPER.get_or_init(|| {
            let reaper: &'static Reaper = Box::leak(Box::new(Reaper {
                state: Mutex::new(ReaperState {
                    waiting: HashMap::new(),
                    unclaimed: HashMap::new(),
                }),
                wake: Condvar::new(),
                spawns_started: AtomicU64::new(0),
            }));
            std::thread::Builder::new()
                .name("procnode-reaper".into())
                .spawn(move || reaper.run())
                .expect("start reaper thread");
            reaper
        })
    }

    fn begin_spawn(&self) -> SpawnTicket {
        let n = self.spawns_started.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
        SpawnTicket(n)
    }

    fn register(&self, pid: i32, ticket: SpawnTicket) -> oneshot::Receiver<ExitStatus> {
        let (tx, rx) = oneshot::channel();
        let mut st = self.state.lock().expect("reaper lock");
        // An exit reaped before we got here counts only if it was reaped after our spawn began:
        // an older entry with the same pid is an orphan whose pid was reused.
        match st.unclaimed.remove(&pid) {
            Some((status, seen, _)) if seen > ticket.0 => {
                let _ = tx.send(status);
            }
            _ => {
                st.waiting.insert(pid, tx);
            }
        }
        rx
    }

    fn run(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), None) {
                Ok(ws) => {
                    let (pid, status) = match ws {
                        WaitStatus::Exited(pid, code) => (pid, ExitStatus::Exited(code)),
                        WaitStatus::Signaled(pid, sig, _) => {
                            (pid, ExitStatus::Signaled(sig as i32))
                        }
                        _ => continue,
                    };
                    self.deliver(pid.as_raw(), status);
                }
                Err(Errno::EINTR) => continue,
                Err(_) => {
                    // ECHILD: no children right now. Sleep until a spawn begins (with a timeout,
                    // in case an orphan is re-parented to us meanwhile).
                    let st = self.state.lock().expect("reaper lock");
                    let _ = self.wake.wait_timeout(st, Duration::from_millis(200));
                }
            }
        }
    }

    fn deliver(&self, pid: i32, status: ExitStatus) {
        let mut st = self.state.lock().expect("reaper lock");
        if let Some(tx) = st.waiting.remove(&pid) {
            let _ = tx.send(status);
            return;
        }
        let now = Instant::now();
        st.unclaimed
            .retain(|_, (_, _, at)| now.duration_since(*at) < UNCLAIMED_TTL);
        let seen = self.spawns_started.load(Ordering::SeqCst);
        st.unclaimed.insert(pid, (status, seen, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_commands_like_exec_does() {
        let cwd = Path::new("/");
        assert!(resolve_program("sh", DEFAULT_PATH, cwd).is_ok());
        assert!(matches!(
            resolve_program("definitely-not-a-command-xyz", DEFAULT_PATH, cwd),
            Err(SpawnError::NotFound(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("data.txt");
        std::fs::write(&plain, "not a program").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            resolve_program(plain.to_str().unwrap(), DEFAULT_PATH, cwd),
            Err(SpawnError::NotExecutable(_))
        ));
        assert_eq!(
            resolve_program("bin/sh", DEFAULT_PATH, Path::new("/usr")).unwrap(),
            PathBuf::from("/usr/bin/sh")
        );
    }

    #[test]
    fn recognises_a_process_by_its_start_time() {
        let me = std::process::id() as i32;
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(!stat.is_empty());
        // This process started a moment ago (test binaries are short-lived) ...
        let now = crate::logs::now_ns();
        let uptime_of_me = (0..600).any(|s| is_same_process(me, now - s * 1_000_000_000));
        assert!(
            uptime_of_me,
            "the test process started within the last 10 minutes"
        );
        // ... and not in 1970.
        assert!(!is_same_process(me, 0));
        assert!(!is_same_process(i32::MAX, now));
    }

    #[test]
    fn exit_codes_follow_container_runtimes() {
        assert_eq!(ExitStatus::Exited(3).exit_code(), 3);
        assert_eq!(ExitStatus::Signaled(9).exit_code(), 137);
        assert_eq!(ExitStatus::Signaled(15).signal(), Some(15));
    }
}
