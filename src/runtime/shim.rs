//! The per-container supervisor ("shim"): `procnode shim RUN_DIR`, one process per container
//! run, so that a container outlives a procnode crash or upgrade and its exit status is never
//! lost.
//!
//! It reads the run's [`SpawnRequest`] from `RUN_DIR/spec.json`, makes itself the child
//! subreaper of the container (orphans of the container are reaped here), creates the output
//! pipes, starts the container in a new process group, and reports `OK PID` or `ERR MESSAGE` on
//! its stdout. Then it serves `RUN_DIR/sock`: each procnode that connects receives a
//! [`Message::Hello`] carrying the read ends of the two output pipes (SCM_RIGHTS), so a
//! restarted procnode reads the same pipes; output written while no procnode reads waits in the
//! pipe (the writer blocks when it is full, nothing is dropped). When the container exits the
//! shim ends what is left of its process group, writes `RUN_DIR/exit.json` and sends
//! [`Message::Exited`]; it exits once procnode answers `release` (after recording the exit).
//!
//! The shim is plain blocking code (poll on a signalfd, the listening socket and the current
//! connection): no async runtime, no threads.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Stdio;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::process::{self, ExitStatus, SpawnRequest};

pub const SPEC_FILE: &str = "spec.json";
pub const SOCKET_FILE: &str = "sock";
pub const EXIT_FILE: &str = "exit.json";

/// The container's exit as the shim saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exited {
    pub status: ExitStatus,
    pub finished_ns: i64,
}

/// Messages from the shim to procnode, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Message {
    /// Sent on every connection, with the two pipe read ends (stdout, stderr) attached.
    Hello { pid: i32, started_ns: i64 },
    Exited(Exited),
}

/// Runs the shim; returns the process exit code.
pub fn main(run_dir: &Path) -> i32 {
    match run(run_dir) {
        Ok(()) => 0,
        Err(e) => {
            // Before the handshake this reaches procnode; after it, stdout is gone and the
            // error only shows in the exit code.
            let _ = writeln!(io::stdout(), "ERR supervisor: {e}");
            1
        }
    }
}

fn run(run_dir: &Path) -> io::Result<()> {
    let spec: SpawnRequest = serde_json::from_slice(&std::fs::read(run_dir.join(SPEC_FILE))?)
        .map_err(io::Error::other)?;
    nix::sys::prctl::set_child_subreaper(true)?;
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block()?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;

    let (out_r, out_w) = process::pipe().map_err(io::Error::other)?;
    let (err_r, err_w) = process::pipe().map_err(io::Error::other)?;
    let sock_path = run_dir.join(SOCKET_FILE);
    let _ = std::fs::remove_file(&sock_path);
    let listener = UnixListener::bind(&sock_path)?;

    let child = process::command(&spec, Stdio::from(out_w), Stdio::from(err_w))
        .and_then(|mut cmd| {
            let first = spec.argv.first().cloned().unwrap_or_default();
            cmd.spawn().map_err(|e| process::SpawnError::Exec(first, e))
        });
    let pid = match child {
        Ok(child) => child.id() as i32,
        Err(e) => {
            let mut out = io::stdout();
            writeln!(out, "ERR {e}")?;
            out.flush()?;
            return Ok(());
        }
    };
    let started_ns = crate::logs::now_ns();
    {
        let mut out = io::stdout();
        writeln!(out, "OK {pid}")?;
        out.flush()?;
    }
    let hello = line(&Message::Hello { pid, started_ns });

    let mut conn: Option<UnixStream> = None;
    let mut exited: Option<Exited> = None;
    loop {
        let (sig_ready, accept_ready, conn_ready) = {
            let mut fds = vec![
                PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            ];
            if let Some(c) = &conn {
                fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]), fds.get(2).is_some_and(ready))
        };
        if sig_ready {
            while let Ok(Some(_)) = sigfd.read_signal() {}
            if let Some(status) = reap(pid) {
                if exited.is_none() {
                    // Like a container runtime when a container's first process exits: end the
                    // rest of its process group.
                    process::signal_group(pid, Signal::SIGKILL);
                    let e = Exited {
                        status,
                        finished_ns: crate::logs::now_ns(),
                    };
                    write_atomic(&run_dir.join(EXIT_FILE), line(&Message::Exited(e)).as_bytes())?;
                    exited = Some(e);
                    if let Some(c) = conn.as_mut() {
                        if c.write_all(line(&Message::Exited(e)).as_bytes()).is_err() {
                            conn = None;
                        }
                    }
                }
            }
        }
        if accept_ready {
            if let Ok((mut c, _)) = listener.accept() {
                let fds = [out_r.as_raw_fd(), err_r.as_raw_fd()];
                let sent = sendmsg::<()>(
                    c.as_raw_fd(),
                    &[IoSlice::new(hello.as_bytes())],
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::empty(),
                    None,
                );
                let ok = sent.is_ok()
                    && exited.is_none_or(|e| c.write_all(line(&Message::Exited(e)).as_bytes()).is_ok());
                // A newer procnode replaces an older connection.
                conn = ok.then_some(c);
            }
        }
        if conn_ready {
            let mut buf = [0u8; 64];
            match conn.as_mut().map(|c| c.read(&mut buf)) {
                Some(Ok(n)) if n > 0 => {
                    if exited.is_some() && buf[..n].windows(7).any(|w| w == b"release") {
                        // Reap what is left (orphans) and go.
                        while reap_any() {}
                        return Ok(());
                    }
                }
                _ => conn = None,
            }
        }
    }
}

/// Reaps every exited child; returns the main child's status if it was among them.
fn reap(main: i32) -> Option<ExitStatus> {
    let mut found = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, code)) if p.as_raw() == main => {
                found = Some(ExitStatus::Exited(code))
            }
            Ok(WaitStatus::Signaled(p, sig, _)) if p.as_raw() == main => {
                found = Some(ExitStatus::Signaled(sig as i32))
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return found,
            Ok(_) => {}
        }
    }
}

fn reap_any() -> bool {
    matches!(
        waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)),
        Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..))
    )
}

fn line(m: &Message) -> String {
    let mut s = serde_json::to_string(m).expect("message serialises");
    s.push('\n');
    s
}

/// Writes `data` to `path` atomically: a temporary file, fsync, rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// The exit a shim recorded, if any (used when the shim itself is gone).
pub fn read_exit_file(run_dir: &Path) -> Option<Exited> {
    let text = std::fs::read_to_string(run_dir.join(EXIT_FILE)).ok()?;
    match serde_json::from_str(text.trim()).ok()? {
        Message::Exited(e) => Some(e),
        Message::Hello { .. } => None,
    }
}
