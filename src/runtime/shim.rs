//! The per-container supervisor ("shim"): `procnode shim NAME`, one process per container run,
//! so that a container outlives a procnode crash or upgrade and its exit status is not lost.
//!
//! Its stdin is a unix socket to the procnode that started it. It reads the run's
//! [`SpawnRequest`] (one JSON line) from there, makes itself the child subreaper of the
//! container (orphans of the container are reaped here), creates the output pipes and starts the
//! container in a new process group. It answers with [`Message::Hello`], carrying the read ends
//! of the two output pipes (and the write end of its stdin pipe, or instead of all three a
//! terminal's master, when the spec asks for them: `kubectl attach`) (SCM_RIGHTS), or
//! [`Message::Failed`]. procnode's `close-stdin` (a `stdinOnce` container's first client is
//! done) closes the stdin pipe. It also listens on the abstract
//! unix socket `NAME` (a path in procnode's own `STATE_DIR/sup/`; only processes of its own uid are
//! served), where a
//! restarted procnode gets the same hello and the same pipes. Output written while no procnode
//! reads waits in the pipe (the writer blocks when it is full; nothing is dropped).
//!
//! When the container exits the shim ends what is left of its process group (and of its
//! cgroup, where it has one) and sends
//! [`Message::Exited`], then keeps the status until a procnode answers `release` (after
//! recording it), and exits.
//!
//! Plain blocking code: poll on a signalfd, the listening socket and the current connection; no
//! async runtime, no threads, no files.

use std::io::{self, BufRead, IoSlice, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{getsockopt, sendmsg, sockopt, ControlMessage, MsgFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::process::{self, ExitStatus, SpawnRequest};

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
    /// Sent on every connection, with the container's streams attached: the two pipe read
    /// ends (stdout, stderr), then the stdin pipe's write end (`console: stdin`); or the
    /// terminal's master alone (`console: terminal`).
    Hello {
        pid: i32,
        started_ns: i64,
        #[serde(default)]
        console: process::Console,
    },
    /// The container could not be started; the shim exits.
    Failed {
        message: String,
    },
    Exited(Exited),
}

pub fn line(m: &Message) -> String {
    let mut s = serde_json::to_string(m).expect("message serialises");
    s.push('\n');
    s
}

/// The socket address of the shim called `name`: the path `name` (in procnode's own
/// `STATE_DIR/sup/`), or, for a supervisor started by an older procnode, the abstract name.
pub fn address(name: &str) -> io::Result<SocketAddr> {
    if name.starts_with('/') {
        SocketAddr::from_pathname(name)
    } else {
        SocketAddr::from_abstract_name(name.as_bytes())
    }
}

/// Removes the socket file of the shim called `name` (nothing for an abstract name).
fn remove_socket(name: &str) {
    if name.starts_with('/') {
        let _ = std::fs::remove_file(name);
    }
}

/// Runs the shim; returns the process exit code.
pub fn main(name: &str) -> i32 {
    let Ok(first) = io::stdin().as_fd().try_clone_to_owned() else {
        return 2;
    };
    let mut first = UnixStream::from(first);
    match run(name, &mut first) {
        Ok(()) => 0,
        Err(e) => {
            let _ = first.write_all(
                line(&Message::Failed {
                    message: format!("supervisor: {e}"),
                })
                .as_bytes(),
            );
            1
        }
    }
}

fn run(name: &str, first: &mut UnixStream) -> io::Result<()> {
    process::close_inherited_fds_on_exec();
    let mut spec_line = String::new();
    io::BufReader::new(&*first).read_line(&mut spec_line)?;
    let spec: SpawnRequest = serde_json::from_str(&spec_line).map_err(io::Error::other)?;
    nix::sys::prctl::set_child_subreaper(true)?;
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block()?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
    // A file left by a supervisor of the same name that was killed (its directory is
    // procnode's alone: nobody else can have put it there).
    remove_socket(name);
    let listener = UnixListener::bind_addr(&address(name)?)?;

    let child = process::container_stdio(&spec).and_then(|([i, o, e], io)| {
        let mut cmd = process::command(&spec, i, o, e)?;
        let first = spec.argv.first().cloned().unwrap_or_default();
        let child = cmd
            .spawn()
            .map_err(|e| process::SpawnError::Exec(first, e))?;
        Ok((child, io))
    });
    let (pid, mut streams) = match child {
        Ok((child, io)) => (child.id() as i32, io),
        Err(e) => {
            remove_socket(name);
            first.write_all(
                line(&Message::Failed {
                    message: e.to_string(),
                })
                .as_bytes(),
            )?;
            return Ok(());
        }
    };
    let started_ns = crate::logs::now_ns();
    // The hello and the streams handed over: what is open now (stdin may have been closed).
    let hello = |streams: &process::ContainerIo| {
        let console = match (spec.console, &streams.stdin) {
            (process::Console::Terminal, _) => process::Console::Terminal,
            (process::Console::Stdin, Some(_)) => process::Console::Stdin,
            _ => process::Console::None,
        };
        let mut fds = vec![streams.stdout.as_raw_fd()];
        if console != process::Console::Terminal {
            fds.extend(streams.stderr.as_ref().map(|e| e.as_raw_fd()));
            fds.extend(streams.stdin.as_ref().map(|i| i.as_raw_fd()));
        }
        let text = line(&Message::Hello {
            pid,
            started_ns,
            console,
        });
        (text, fds)
    };
    let mut conn = greet(first.try_clone()?, &hello(&streams), None);
    let my_uid = nix::unistd::geteuid().as_raw();

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
            // While it holds an exit, it looks every second whether its state directory is
            // still there: once its socket file is gone with it, no procnode can ever
            // release it, and it must not wait forever.
            let wait = if exited.is_some() {
                PollTimeout::from(1000u16)
            } else {
                PollTimeout::NONE
            };
            match poll(&mut fds, wait) {
                Ok(0) if exited.is_some() && name.starts_with('/') => {
                    if !std::path::Path::new(name).exists() {
                        while reap_any() {}
                        return Ok(());
                    }
                    continue;
                }
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (
                ready(&fds[0]),
                ready(&fds[1]),
                fds.get(2).is_some_and(ready),
            )
        };
        if sig_ready {
            while let Ok(Some(_)) = sigfd.read_signal() {}
            if let Some(status) = reap(pid) {
                if exited.is_none() {
                    // Like a container runtime when a container's first process exits: end the
                    // rest of its process group.
                    process::signal_group(pid, Signal::SIGKILL);
                    // And what left the group but not the container's cgroup (setsid).
                    process::kill_cgroups(&spec.cgroups);
                    let e = Exited {
                        status,
                        finished_ns: crate::logs::now_ns(),
                    };
                    exited = Some(e);
                    if let Some(c) = conn.as_mut() {
                        if c.write_all(line(&Message::Exited(e)).as_bytes()).is_err() {
                            conn = None;
                        }
                    }
                }
            }
        }
        // The connection that was polled is read before a new one may replace it, and without
        // blocking: reading a replacement that has nothing to say would block this loop, and
        // with it the container's exit, forever.
        if conn_ready {
            let mut buf = [0u8; 64];
            let read = conn
                .as_ref()
                .map(|c| nix::sys::socket::recv(c.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT));
            match read {
                Some(Ok(n)) if n > 0 => {
                    let said = |what: &[u8]| buf[..n].windows(what.len()).any(|w| w == what);
                    if exited.is_some() && said(b"release") {
                        while reap_any() {}
                        remove_socket(name);
                        return Ok(());
                    }
                    // `stdinOnce`: the first attached client is done; the container's stdin
                    // ends (a terminal gets an end-of-file character instead: closing it
                    // would hang the session up).
                    if said(b"close-stdin") {
                        match spec.console {
                            process::Console::Terminal => {
                                if let Some(t) = &streams.stdin {
                                    let _ = nix::unistd::write(t, &[4]);
                                }
                            }
                            _ => streams.stdin = None,
                        }
                    }
                }
                Some(Err(nix::errno::Errno::EAGAIN)) | Some(Err(nix::errno::Errno::EINTR)) => {}
                _ => conn = None,
            }
        }
        if accept_ready {
            if let Ok((c, _)) = listener.accept() {
                // Only a process of our own user may take the pipes or release us.
                let same_user =
                    getsockopt(&c, sockopt::PeerCredentials).is_ok_and(|cred| cred.uid() == my_uid);
                if same_user {
                    // A newer procnode replaces an older connection.
                    conn = greet(c, &hello(&streams), exited).or(conn);
                }
            }
        }
    }
}

/// Sends the hello (with the pipes) and, if known, the exit. `None` if the peer is gone.
fn greet(
    mut c: UnixStream,
    (hello, fds): &(String, Vec<std::os::fd::RawFd>),
    exited: Option<Exited>,
) -> Option<UnixStream> {
    sendmsg::<()>(
        c.as_raw_fd(),
        &[IoSlice::new(hello.as_bytes())],
        &[ControlMessage::ScmRights(fds)],
        MsgFlags::empty(),
        None,
    )
    .ok()?;
    if let Some(e) = exited {
        c.write_all(line(&Message::Exited(e)).as_bytes()).ok()?;
    }
    Some(c)
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
