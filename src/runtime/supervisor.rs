//! procnode's side of the per-container supervisor ([`super::shim`]): start one for a container
//! run ([`launch`]), or attach to one that is already running ([`attach`], e.g. after a procnode
//! restart); then read its events and the container's output (relayed on the supervisor's
//! connection, acknowledged once stored). [`direct`] gives the same interface for a container
//! started as procnode's own child (`--supervisor none`), whose output pipes procnode reads.

use std::cell::RefCell;
use std::io::{self, IoSliceMut, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::pipe;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;

use super::process::{self, ExitStatus, SpawnRequest};
use super::shim::{self, frame, Command, Exited, Message};
use crate::logs::{now_ns, LogSlot, Stream};

/// A container run under a supervisor.
pub struct Supervised {
    /// The container's pid, also its process group id.
    pub pid: i32,
    pub started_ns: i64,
    /// Where its output comes from.
    pub output: Output,
    /// Its stdin, when its spec asks for one (`kubectl attach`).
    pub console: Option<Console>,
    pub events: Events,
}

/// Where a run's output comes from.
pub enum Output {
    /// Frames on the supervisor's connection, which [`Events::next`] stores as they come.
    Relayed,
    /// Pipes procnode reads itself: a container that is procnode's own child, or one under a
    /// supervisor started by an older procnode. (With a terminal, all output is on `stdout`,
    /// read from its master.)
    Pipes {
        stdout: pipe::Receiver,
        stderr: Option<pipe::Receiver>,
    },
}

impl Output {
    pub fn stdout(&self) -> Option<&pipe::Receiver> {
        match self {
            Output::Pipes { stdout, .. } => Some(stdout),
            Output::Relayed => None,
        }
    }

    pub fn stderr(&self) -> Option<&pipe::Receiver> {
        match self {
            Output::Pipes { stderr, .. } => stderr.as_ref(),
            Output::Relayed => None,
        }
    }
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
fn streams(io: process::ContainerIo, tty: bool) -> io::Result<(Output, Option<Console>)> {
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
        let output = Output::Pipes {
            stdout: reader,
            stderr: None,
        };
        return Ok((output, Some(console)));
    }
    let stdout = pipe::Receiver::from_owned_fd(io.stdout)?;
    let stderr = io.stderr.map(pipe::Receiver::from_owned_fd).transpose()?;
    let console = io.stdin.map(|fd| Console {
        fd: std::sync::Arc::new(fd),
        tty: false,
    });
    Ok((Output::Pipes { stdout, stderr }, console))
}

/// Where the container's exit comes from.
pub enum Events {
    /// A supervisor started by an older procnode: its messages after the greeting (JSON
    /// lines), and lines that arrived with it.
    Shim {
        lines: Lines<BufReader<OwnedReadHalf>>,
        pending: Vec<String>,
        writer: OwnedWriteHalf,
    },
    /// The supervisor's frames: output, then the exit.
    Relay(Box<Relay>),
    /// procnode's own reaper.
    Direct(Option<oneshot::Receiver<ExitStatus>>),
}

/// The connection to a relaying supervisor.
pub struct Relay {
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    /// The start of a frame not all read yet.
    partial: Vec<u8>,
    /// Bytes of output frames stored, and of those acknowledged.
    stored: u64,
    acked: u64,
    /// Commands not yet written (whole lines; never interleaved).
    outbox: Vec<u8>,
    /// The last read filled the buffer (more is likely there).
    more: bool,
    /// `partial` holds what came with the greeting, not looked at yet.
    fresh: bool,
}

/// Output stored before an acknowledgement is sent even while more keeps coming: half of what
/// a supervisor holds back before it stops reading its pipes.
const ACK_EVERY: u64 = 128 * 1024;

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

/// Connects to the running supervisor called `name` and takes the container's output from it
/// (or its pipes, from a supervisor of an older procnode). `output_held`: how much of the run's
/// output this procnode already holds (from its log files; `u64::MAX` for none of it): the
/// relay resumes after it, so nothing is stored twice.
pub async fn attach(name: &str, output_held: u64) -> io::Result<Supervised> {
    let shim_name = name.to_string();
    let (greeting, peer) = tokio::task::spawn_blocking(move || {
        let stream = std::os::unix::net::UnixStream::connect_addr(&shim::address(&shim_name)?)?;
        let peer =
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)?;
        Ok::<_, io::Error>((receive_greeting(stream)?, peer))
    })
    .await
    .map_err(io::Error::other)??;
    let mut sup = into_supervised(greeting).map_err(|e| match e {
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
    if matches!(sup.events, Events::Relay(_)) {
        sup.events.send(Command::Resume(output_held)).await;
    }
    Ok(sup)
}

struct Greeting {
    stream: std::os::unix::net::UnixStream,
    /// The hello line, and what came after it in the same read.
    data: Vec<u8>,
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
    Ok(Greeting { stream, data, fds })
}

fn into_supervised(g: Greeting) -> Result<Supervised, GreetingError> {
    let (first, rest) = match g.data.iter().position(|b| *b == b'\n') {
        Some(end) => (&g.data[..end], &g.data[end + 1..]),
        None => (&g.data[..], &[][..]),
    };
    let (pid, started_ns, console, relay) = match serde_json::from_slice::<Message>(first) {
        _ if g.data.is_empty() => {
            return Err(GreetingError::Failed(
                "supervisor exited before starting the container".into(),
            ))
        }
        Ok(Message::Hello {
            pid,
            started_ns,
            console,
            relay,
        }) => (pid, started_ns, console, relay),
        Ok(Message::Failed { message }) => return Err(GreetingError::Failed(message)),
        other => {
            return Err(GreetingError::Io(io::Error::other(format!(
                "unexpected supervisor greeting: {other:?}"
            ))))
        }
    };
    let io_err = GreetingError::Io;
    g.stream.set_nonblocking(true).map_err(io_err)?;
    let (read, write) = tokio::net::UnixStream::from_std(g.stream)
        .map_err(io_err)?
        .into_split();
    let tty = console == process::Console::Terminal;
    let mut fds = g.fds.into_iter();
    if relay {
        // Only the container's stdin came with the hello; the output follows as frames.
        let console = match console {
            process::Console::None => None,
            _ => fds.next().map(|fd| Console {
                fd: std::sync::Arc::new(fd),
                tty,
            }),
        };
        return Ok(Supervised {
            pid,
            started_ns,
            output: Output::Relayed,
            console,
            events: Events::Relay(Box::new(Relay {
                read,
                write,
                partial: rest.to_vec(),
                stored: 0,
                acked: 0,
                outbox: Vec::new(),
                more: false,
                fresh: true,
            })),
        });
    }
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
    let pending = String::from_utf8_lossy(rest)
        .lines()
        .map(str::to_string)
        .collect();
    let (output, console) = streams(container_io, tty).map_err(io_err)?;
    Ok(Supervised {
        pid,
        started_ns,
        output,
        console,
        events: Events::Shim {
            lines: BufReader::new(read).lines(),
            pending,
            writer: write,
        },
    })
}

/// Largest read from a supervisor's connection (several frames of a flood at once).
const READ_CHUNK: usize = 256 * 1024;

impl Events {
    /// The next event; relayed output that comes before it is stored in `logs` on the way
    /// (and dropped without them). Cancel-safe: usable as a `select!` branch.
    pub async fn next(&mut self, logs: Option<&LogSlot>) -> Event {
        match self {
            Events::Shim { lines, pending, .. } => loop {
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
            Events::Relay(relay) => relay.next(logs).await,
            Events::Direct(exit) => {
                let Some(rx) = exit.as_mut() else {
                    return std::future::pending().await;
                };
                let status = rx.await.unwrap_or(ExitStatus::Exited(255));
                *exit = None;
                Event::Exited(Exited {
                    status,
                    finished_ns: now_ns(),
                })
            }
        }
    }

    /// Tells the supervisor `command` (nothing without one).
    pub async fn send(&mut self, command: Command) {
        match self {
            Events::Shim { writer, .. } => {
                let _ = writer.write_all(command.line().as_bytes()).await;
            }
            Events::Relay(relay) => {
                relay.outbox.extend_from_slice(command.line().as_bytes());
                while !relay.outbox.is_empty() {
                    if relay.write.writable().await.is_err() || relay.flush().is_err() {
                        return;
                    }
                }
            }
            Events::Direct(_) => {}
        }
    }
}

impl Relay {
    async fn next(&mut self, logs: Option<&LogSlot>) -> Event {
        thread_local! {
            // One read buffer per worker thread, not per container.
            static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
        }
        // What a batch of frames ends in: an event to return, or nothing yet.
        let outcome = |taken: Result<Option<Event>, String>| {
            taken.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "supervisor connection dropped");
                Some(Event::Gone)
            })
        };
        // The frames that came with the greeting first.
        if std::mem::take(&mut self.fresh) {
            let kept = std::mem::take(&mut self.partial);
            if let Some(event) = outcome(self.take_frames(&kept, logs)) {
                return event;
            }
        }
        loop {
            // Acknowledged when reading would wait, or when half of what the supervisor
            // holds back is in: one ack per burst, not per read.
            let caught_up = !self.more;
            if self.stored > self.acked
                && (caught_up || self.stored - self.acked >= ACK_EVERY)
                && !self.outbox_has_ack()
            {
                self.outbox
                    .extend_from_slice(Command::Ack(self.stored).line().as_bytes());
                self.acked = self.stored;
            }
            if self.flush().is_err() {
                return Event::Gone;
            }
            // A flood does not keep this task to itself: after every read (up to 256 KiB) the
            // run's other branches (a stop, a probe) and other tasks get their turn.
            tokio::task::yield_now().await;
            // Both waits are cancel-safe; reading goes on while a command waits to be written.
            let ready = if self.outbox.is_empty() {
                self.read.readable().await
            } else {
                tokio::select! {
                    r = self.read.readable() => r,
                    r = self.write.writable() => { if r.is_err() { return Event::Gone; } continue }
                }
            };
            if ready.is_err() {
                return Event::Gone;
            }
            let read = BUF.with(|buf| {
                let mut buf = buf.borrow_mut();
                self.more = false;
                match self.read.try_read(&mut buf) {
                    Ok(0) => Err(()),
                    Ok(n) => {
                        // A full read: more is probably waiting.
                        self.more = n == buf.len();
                        Ok(self.take_frames(&buf[..n], logs))
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Ok(None)),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Ok(None)),
                    Err(_) => Err(()),
                }
            });
            match read {
                Err(()) => return Event::Gone,
                Ok(taken) => {
                    if let Some(event) = outcome(taken) {
                        return event;
                    }
                }
            }
        }
    }

    fn outbox_has_ack(&self) -> bool {
        self.outbox.starts_with(b"ack ")
    }

    /// Stores the output frames in what an earlier read left plus `more`, up to the first
    /// message, which it returns (as the exit). What does not make a whole frame yet is kept;
    /// only that is copied.
    fn take_frames(
        &mut self,
        mut more: &[u8],
        logs: Option<&LogSlot>,
    ) -> Result<Option<Event>, String> {
        let time_ns = now_ns();
        if !self.partial.is_empty() {
            // The frame an earlier read began: its header first, then the rest of it.
            let mut top_up = |partial: &mut Vec<u8>, to: usize| {
                let take = to.saturating_sub(partial.len()).min(more.len());
                partial.extend_from_slice(&more[..take]);
                more = &more[take..];
                partial.len() >= to
            };
            if !top_up(&mut self.partial, frame::HEADER) {
                return Ok(None);
            }
            let total = frame::total_len(&self.partial)?;
            if !top_up(&mut self.partial, total) {
                return Ok(None);
            }
            let whole = std::mem::take(&mut self.partial);
            let (event, _) = self.store_frames(&whole, logs, time_ns)?;
            if event.is_some() {
                self.partial = more.to_vec();
                return Ok(event);
            }
        }
        let (event, used) = self.store_frames(more, logs, time_ns)?;
        self.partial = more[used..].to_vec();
        Ok(event)
    }

    /// Stores the whole frames at the start of `data`, up to the first message; returns it
    /// (as the exit) and how many bytes were taken.
    fn store_frames(
        &mut self,
        data: &[u8],
        logs: Option<&LogSlot>,
        time_ns: i64,
    ) -> Result<(Option<Event>, usize), String> {
        let mut used = 0;
        while let Some((kind, payload, len)) = frame::parse(&data[used..])? {
            used += len;
            if kind == frame::MESSAGE {
                if let Ok(Message::Exited(e)) = serde_json::from_slice(payload) {
                    return Ok((Some(Event::Exited(e)), used));
                }
                continue;
            }
            let stream = match kind {
                frame::STDOUT => Stream::Stdout,
                _ => Stream::Stderr,
            };
            if let Some(logs) = logs {
                logs.update(|l| l.append(stream, payload, time_ns));
            }
            self.stored += len as u64;
        }
        Ok((None, used))
    }

    /// Writes what it can of the outbox without waiting.
    fn flush(&mut self) -> io::Result<()> {
        while !self.outbox.is_empty() {
            match self.write.try_write(&self.outbox) {
                Ok(n) => {
                    self.outbox.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
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
        Ok((output, console)) => Ok(Supervised {
            pid,
            started_ns: now_ns(),
            output,
            console,
            events: Events::Direct(Some(spawned.exit)),
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
        self.events.send(Command::CloseStdin).await;
    }

    /// Tells the supervisor its exit has been recorded; it then exits.
    pub async fn release(mut self) {
        self.events.send(Command::Release).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::{ContainerLogs, LogBudget, LogConfig, LogQuery};
    use std::sync::Arc;

    fn relay() -> Relay {
        let (ours, _theirs) = tokio::net::UnixStream::pair().unwrap();
        let (read, write) = ours.into_split();
        Relay {
            read,
            write,
            partial: Vec::new(),
            stored: 0,
            acked: 0,
            outbox: Vec::new(),
            more: false,
            fresh: false,
        }
    }

    /// However the frames are cut into reads, every byte is stored once, in order, and the
    /// exit comes after them.
    #[tokio::test]
    async fn frames_cut_anywhere_are_stored_whole_and_the_exit_comes_last() {
        let mut wire = Vec::new();
        frame::push(&mut wire, frame::STDOUT, b"out one\n");
        frame::push(&mut wire, frame::STDERR, b"err\n");
        frame::push(&mut wire, frame::STDOUT, b"out two\n");
        let data_len = wire.len() as u64;
        let exit = Exited {
            status: ExitStatus::Exited(2),
            finished_ns: 5,
        };
        frame::push(
            &mut wire,
            frame::MESSAGE,
            &serde_json::to_vec(&Message::Exited(exit)).unwrap(),
        );
        for a in 0..wire.len() {
            for b in a..wire.len() {
                let config = LogConfig {
                    per_container: 1 << 16,
                    budget: Arc::new(LogBudget::new(1 << 20)),
                    files: None,
                };
                let slot = LogSlot::new(ContainerLogs::new(&config, None));
                let mut r = relay();
                let mut event = None;
                for piece in [&wire[..a], &wire[a..b], &wire[b..]] {
                    assert!(event.is_none(), "the exit came early (cuts {a}, {b})");
                    event = r.take_frames(piece, Some(&slot)).unwrap();
                }
                assert_eq!(event, Some(Event::Exited(exit)), "cuts {a}, {b}");
                assert_eq!(r.stored, data_len);
                let logs = slot.update(|l| l.current.read(&LogQuery::default()));
                assert_eq!(logs, b"out one\nerr\nout two\n", "cuts {a}, {b}");
            }
        }
    }

    #[tokio::test]
    async fn a_frame_of_no_known_kind_ends_the_connection() {
        let mut r = relay();
        assert!(r.take_frames(b"\x07\x01\x00\x00\x00x", None).is_err());
    }
}
