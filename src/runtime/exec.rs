//! Processes started in a running container on a client's behalf (`kubectl exec`, and `kubectl
//! cp`, which is an exec of `tar`).
//!
//! An exec'd process is made from the container's own process recipe (the one its runs, exec
//! probes and hooks use: environment, working directory, user and groups, cgroup, mounts or the
//! run's own root) with the client's command in place of the argv, unexpanded, as the kubelet
//! runs it. It is procnode's child, not the supervisor's: its exit is the session's, never the
//! container's. It starts in a process group of its own (with a tty: a session of its own on a
//! fresh pseudo-terminal), and [`ExecProcess::kill`] kills that group or session. It lives in
//! the container's cgroup, so it also dies with the container's run.

use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::process::{self, ExitStatus, Group, SpawnError};
use super::status::ContainerState;
use super::{PodEntry, PodKey, Runtime, RuntimeError};

/// What a client asks to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    pub command: Vec<String>,
    /// Give the process a stdin procnode writes (else /dev/null).
    pub stdin: bool,
    /// Read the process's stdout, and its stderr (else they go to /dev/null).
    pub stdout: bool,
    pub stderr: bool,
    /// A pseudo-terminal as stdin, stdout and stderr.
    pub tty: bool,
}

/// A container's run that was running when a client asked for it
/// ([`Runtime::running_container`]): what exec and attach sessions are bound to.
pub struct RunningContainer {
    entry: Arc<PodEntry>,
    idx: usize,
    /// The run asked for; a session outlives it by no more than its end.
    run: Option<String>,
}

impl RunningContainer {
    pub fn key(&self) -> &PodKey {
        self.entry.key()
    }

    pub(super) fn entry(&self) -> &Arc<PodEntry> {
        &self.entry
    }

    pub(super) fn idx(&self) -> usize {
        self.idx
    }

    /// Whether that run is still the container's running run.
    pub fn still_running(&self) -> bool {
        self.entry.read_state(|st| {
            let c = st.container(self.idx);
            matches!(c.state, ContainerState::Running { .. }) && c.container_id == self.run
        })
    }

    /// Resolves once that run has stopped (or the pod is gone).
    pub async fn stopped(&self) {
        let mut changes = self.entry.status_changes();
        while self.still_running() && !self.entry.is_done() {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }
}

/// A running container that can be exec'd into: found and checked by
/// [`Runtime::exec_target`], before a client's connection is upgraded.
pub struct ExecTarget {
    pub container: RunningContainer,
    settings: Arc<super::Settings>,
}

/// The process's end of the client's streams.
pub enum ExecIo {
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    },
    /// The pseudo-terminal's master: the process's input and its (merged) output.
    Terminal(OwnedFd),
}

/// An exec'd process.
pub struct ExecProcess {
    pub pid: i32,
    pub io: ExecIo,
    pub exit: oneshot::Receiver<ExitStatus>,
}

impl ExecProcess {
    /// Kills the process's group (and with a tty its session). Idempotent.
    pub fn kill(&self) {
        process::kill_session(self.pid);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Recipe(#[from] super::container::RecipeError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("the command is empty")]
    NoCommand,
    #[error("internal error: {0}")]
    Internal(String),
}

impl Runtime {
    /// The container `container` of pod `key`, if it is running now.
    pub fn running_container(
        &self,
        key: &PodKey,
        container: &str,
    ) -> Result<RunningContainer, RuntimeError> {
        let (entry, idx) = self.container(key, container)?;
        let run = entry.read_state(|st| {
            let c = st.container(idx);
            match (&c.state, c.pid) {
                (ContainerState::Running { .. }, Some(_)) => Some(c.container_id.clone()),
                _ => None,
            }
        });
        match run {
            Some(run) => Ok(RunningContainer { entry, idx, run }),
            None => Err(RuntimeError::ContainerNotRunning {
                key: key.clone(),
                container: container.to_string(),
            }),
        }
    }

    /// [`Runtime::running_container`], to exec into.
    pub fn exec_target(&self, key: &PodKey, container: &str) -> Result<ExecTarget, RuntimeError> {
        Ok(ExecTarget {
            container: self.running_container(key, container)?,
            settings: self.settings.clone(),
        })
    }
}

impl ExecTarget {
    pub fn key(&self) -> &PodKey {
        self.container.key()
    }

    /// Resolves once the run exec'd into has stopped (or the pod is gone).
    pub async fn stopped(&self) {
        self.container.stopped().await
    }

    /// Starts `spec.command` in the container.
    pub async fn spawn(&self, spec: &ExecSpec) -> Result<ExecProcess, ExecError> {
        if spec.command.is_empty() {
            return Err(ExecError::NoCommand);
        }
        let (entry, idx) = (self.container.entry.clone(), self.container.idx);
        let settings = self.settings.clone();
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || {
            let mut req = super::container::exec_recipe(&entry, idx, &settings)?;
            req.argv = spec.command.clone();
            let helper = &settings.shim_exe;
            if spec.tty {
                let owner = req.user.as_ref().map(|u| (u.uid, u.gid));
                let (master, slave) = process::open_terminal(owner)?;
                req.group = Group::Terminal;
                let stdio = [
                    Stdio::from(slave.try_clone().map_err(SpawnError::Terminal)?),
                    Stdio::from(slave.try_clone().map_err(SpawnError::Terminal)?),
                    Stdio::from(slave),
                ];
                let (pid, exit) = process::spawn_with(&req, helper, stdio)?;
                return Ok(ExecProcess {
                    pid,
                    io: ExecIo::Terminal(master),
                    exit,
                });
            }
            // Each stream the client asked for is a pipe; the others are /dev/null.
            let pipe = |wanted: bool, ours_reads: bool| -> Result<_, SpawnError> {
                if !wanted {
                    return Ok((Stdio::null(), None));
                }
                let (r, w) = process::pipe()?;
                Ok(match ours_reads {
                    true => (Stdio::from(w), Some(r)),
                    false => (Stdio::from(r), Some(w)),
                })
            };
            let (stdin_theirs, stdin) = pipe(spec.stdin, false)?;
            let (stdout_theirs, stdout) = pipe(spec.stdout, true)?;
            let (stderr_theirs, stderr) = pipe(spec.stderr, true)?;
            let stdio = [stdin_theirs, stdout_theirs, stderr_theirs];
            let (pid, exit) = process::spawn_with(&req, helper, stdio)?;
            Ok(ExecProcess {
                pid,
                io: ExecIo::Pipes {
                    stdin,
                    stdout,
                    stderr,
                },
                exit,
            })
        })
        .await
        .unwrap_or_else(|e| Err(ExecError::Internal(e.to_string())))
    }
}
