//! procnode's side of the per-container supervisor ([`super::shim`]): start one for a container
//! run ([`launch`]), or attach to one that is already running ([`attach`], e.g. after a procnode
//! restart); then read its events and the container's output pipes. [`direct`] gives the same
//! interface for a container started as procnode's own child (`--supervisor none`).

use std::io::{self, IoSliceMut, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::pipe;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;

use super::process::{self, ExitStatus, SpawnRequest};
use super::shim::{self, Exited, Message};

/// A container run under a supervisor.
pub struct Supervised {
    /// The container's pid, also its process group id.
    pub pid: i32,
    pub started_ns: i64,
    /// The container's output (with a terminal: all of it, read from the master).
    pub stdout: pipe::Receiver,
    /// Its error output (none with a terminal).
    pub stderr: Option<pipe::Receiver>,
    /// Its stdin, when its spec asks for one (`kubectl attach`).
    pub console: Option<Console>,
    pub events: Events,
    writer: Option<OwnedWriteHalf>,
}

/// A running container's stdin as procnode holds it: the stdin pipe's write end, or the
/// terminal's master (whose size a client also sets).
#[derive(Clone)]
pub struct Console {
    pub fd: std::sync::Arc<std::os::fd::OwnedFd>,
    pub tty: bool,
}

/// The container's streams, as received: `io`'s output ends become readers (a terminal's
/// master made non-blocking first, as the pipes are by `from_owned_fd`).
fn streams(
    io: process::ContainerIo,
    tty: bool,
) -> io::Result<(pipe::Receiver, Option<pipe::Receiver>, Option<Console>)> {
    if tty {
        let master = io.stdout;
        nix::fcntl::fcntl(
            &master,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        let reader = pipe::Receiver::from_owned_fd_unchecked(master.try_clone()?)?;
        let console = Console {
            fd: std::sync::Arc::new(master),
            tty: true,
        };
        return Ok((reader, None, Some(console)));
    }
    let stdout = pipe::Receiver::from_owned_fd(io.stdout)?;
    let stderr = io.stderr.map(pipe::Receiver::from_owned_fd).transpose()?;
    let console = io.stdin.map(|fd| Console {
        fd: std::sync::Arc::new(fd),
        tty: false,
    });
    Ok((stdout, stderr, console))
}

/// Where the container's exit comes from.
pub enum Events {
    /// The supervisor's messages after the greeting, and lines that arrived with it.
    Shim {
        lines: Lines<BufReader<OwnedReadHalf>>,
        pending: Vec<String>,
    },
    /// procnode's own reaper.
    Direct(Option<oneshot::Receiver<ExitStatus>>),
}

/// What a supervisor reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Exited(Exited),
    /// The connection closed without an exit: the supervisor is gone.
    Gone,
}

/// Starts a supervisor called `name` for `req` and takes the container's pipes from it. `Err`
/// is the message to show in the container's status when the container could not be started.
/// Also returns the supervisor's own exit, which procnode collects as its parent. The
/// supervisor is moved into `cgroups` (one per hierarchy, none to stay in procnode's) before
/// it is sent its container.
pub async fn launch(
    shim_exe: &Path,
    name: &str,
    req: &SpawnRequest,
    cgroups: Vec<std::path::PathBuf>,
) -> Result<(Supervised, oneshot::Receiver<ExitStatus>), String> {
    let mut spec = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    spec.push(b'\n');
    let (exe, shim_name) = (shim_exe.to_path_buf(), name.to_string());
    let (greeting, exit) = tokio::task::spawn_blocking(move || {
        // The pod's directory of sockets (root's alone, as `sup/` is).
        if let Some(dir) = Path::new(&shim_name).parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("making {}: {e}", dir.display()))?;
        }
        let mut spawned = process::spawn_shim(&exe, &shim_name).map_err(|e| e.to_string())?;
        // It waits for its spec before it does anything, so it starts nothing outside them.
        for dir in &cgroups {
            std::fs::write(dir.join("cgroup.procs"), spawned.pid.to_string()).map_err(|e| {
                format!(
                    "moving the supervisor into the cgroup {}: {e}",
                    dir.display()
                )
            })?;
        }
        spawned
            .socket
            .write_all(&spec)
            .map_err(|e| format!("sending the container spec to its supervisor: {e}"))?;
        let greeting = receive_greeting(spawned.socket)
            .map_err(|e| format!("supervisor did not start the container: {e}"))?;
        Ok::<_, String>((greeting, spawned.exit))
    })
    .await
    .map_err(|e| e.to_string())??;
    let sup = into_supervised(greeting).map_err(|e| match e {
        GreetingError::Failed(message) => message,
        GreetingError::Io(e) => format!("supervisor: {e}"),
    })?;
    Ok((sup, exit))
}

/// Connects to the running supervisor called `name` and takes the container's pipes from it.
pub async fn attach(name: &str) -> io::Result<Supervised> {
    let shim_name = name.to_string();
    let (greeting, peer) = tokio::task::spawn_blocking(move || {
        let stream = std::os::unix::net::UnixStream::connect_addr(&shim::address(&shim_name)?)?;
        let peer =
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)?;
        Ok::<_, io::Error>((receive_greeting(stream)?, peer))
    })
    .await
    .map_err(io::Error::other)??;
    let sup = into_supervised(greeting).map_err(|e| match e {
        GreetingError::Failed(message) => io::Error::other(message),
        GreetingError::Io(e) => e,
    })?;
    // Trusted only when the kernel says it is one of ours: a process of procnode's own uid,
    // and the parent of the container it names. Anything else (a squatter) is refused, and
    // nothing it named is ever signalled.
    let own = nix::unistd::geteuid().as_raw();
    // (A container that has exited is nobody's child any more: a pid that no longer exists
    // names no one else's process either.)
    let parent = process::parent_of(sup.pid);
    if peer.uid() != own || parent.is_some_and(|p| p != peer.pid()) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the socket {name} is held by pid {} (uid {}), which is not the supervisor of the container pid {} it names: not trusted",
                peer.pid(),
                peer.uid(),
                sup.pid
            ),
        ));
    }
    Ok(sup)
}

struct Greeting {
    stream: std::os::unix::net::UnixStream,
    text: String,
    fds: Vec<std::os::fd::OwnedFd>,
}

enum GreetingError {
    Failed(String),
    Io(io::Error),
}

/// Reads the first message (with any file descriptors) from a supervisor socket.
fn receive_greeting(stream: std::os::unix::net::UnixStream) -> io::Result<Greeting> {
    let mut data = vec![0u8; 8192];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 3]);
    let (n, raw) = {
        let mut iov = [IoSliceMut::new(&mut data)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut raw = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                raw.extend(fds);
            }
        }
        (msg.bytes, raw)
    };
    let fds = process::own_received_fds(&raw);
    data.truncate(n);
    Ok(Greeting {
        stream,
        text: String::from_utf8_lossy(&data).into_owned(),
        fds,
    })
}

fn into_supervised(g: Greeting) -> Result<Supervised, GreetingError> {
    let mut lines = g.text.lines();
    let (pid, started_ns, console) = match lines.next().map(serde_json::from_str::<Message>) {
        Some(Ok(Message::Hello {
            pid,
            started_ns,
            console,
        })) => (pid, started_ns, console),
        Some(Ok(Message::Failed { message })) => return Err(GreetingError::Failed(message)),
        None => {
            return Err(GreetingError::Failed(
                "supervisor exited before starting the container".into(),
            ))
        }
        other => {
            return Err(GreetingError::Io(io::Error::other(format!(
                "unexpected supervisor greeting: {other:?}"
            ))))
        }
    };
    let tty = console == process::Console::Terminal;
    let mut fds = g.fds.into_iter();
    let no_pipes = || GreetingError::Io(io::Error::other("supervisor sent no output pipes"));
    let container_io = process::ContainerIo {
        stdout: fds.next().ok_or_else(no_pipes)?,
        stderr: match tty {
            true => None,
            false => Some(fds.next().ok_or_else(no_pipes)?),
        },
        stdin: match console {
            process::Console::Stdin => fds.next(),
            _ => None,
        },
    };
    let pending = lines.map(str::to_string).collect();
    let io_err = GreetingError::Io;
    g.stream.set_nonblocking(true).map_err(io_err)?;
    let (read, writer) = tokio::net::UnixStream::from_std(g.stream)
        .map_err(io_err)?
        .into_split();
    let (stdout, stderr, console) = streams(container_io, tty).map_err(io_err)?;
    Ok(Supervised {
        pid,
        started_ns,
        stdout,
        stderr,
        console,
        events: Events::Shim {
            lines: BufReader::new(read).lines(),
            pending,
        },
        writer: Some(writer),
    })
}

impl Events {
    /// The next event. Cancel-safe: usable as a `select!` branch.
    pub async fn next(&mut self) -> Event {
        match self {
            Events::Shim { lines, pending } => loop {
                let line = if pending.is_empty() {
                    match lines.next_line().await {
                        Ok(Some(line)) => line,
                        _ => return Event::Gone,
                    }
                } else {
                    pending.remove(0)
                };
                if let Ok(Message::Exited(e)) = serde_json::from_str(&line) {
                    return Event::Exited(e);
                }
            },
            Events::Direct(exit) => {
                let Some(rx) = exit.as_mut() else {
                    return std::future::pending().await;
                };
                let status = rx.await.unwrap_or(ExitStatus::Exited(255));
                *exit = None;
                Event::Exited(Exited {
                    status,
                    finished_ns: crate::logs::now_ns(),
                })
            }
        }
    }
}

/// Starts `req` as procnode's own child, without a supervisor: faster to start, but the
/// container does not survive procnode.
pub async fn direct(req: SpawnRequest, helper: &Path) -> Result<Supervised, String> {
    let helper = helper.to_path_buf();
    let tty = req.console == process::Console::Terminal;
    let spawned = tokio::task::spawn_blocking(move || process::spawn_direct(&req, &helper))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let pid = spawned.pid;
    match streams(spawned.io, tty) {
        Ok((stdout, stderr, console)) => Ok(Supervised {
            pid,
            started_ns: crate::logs::now_ns(),
            stdout,
            stderr,
            console,
            events: Events::Direct(Some(spawned.exit)),
            writer: None,
        }),
        Err(e) => {
            // The process started but its output cannot be watched: do not leave it behind.
            process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
            Err(format!("watching output: {e}"))
        }
    }
}

impl Supervised {
    /// Ends the container's stdin (`stdinOnce`, once its first client is done): procnode's
    /// copy goes, and the supervisor closes its own.
    pub async fn close_stdin(&mut self) {
        self.console = None;
        if let Some(w) = self.writer.as_mut() {
            let _ = w.write_all(b"close-stdin\n").await;
        }
    }

    /// Tells the supervisor its exit has been recorded; it then exits.
    pub async fn release(mut self) {
        if let Some(w) = self.writer.as_mut() {
            let _ = w.write_all(b"release\n").await;
        }
    }
}
