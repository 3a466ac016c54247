//! The per-container supervisor ("shim"): `procnode shim NAME`, one process per container run,
//! so that a container outlives a procnode crash or upgrade and neither its output nor its exit
//! status is lost.
//!
//! Its stdin is a unix socket to the procnode that started it. It reads the run's
//! [`SpawnRequest`] (one JSON line) from there, makes itself the child subreaper of the
//! container (orphans of the container are reaped here), creates the output pipes and starts the
//! container in a new process group. It answers with [`Message::Hello`] (carrying, when the spec
//! asks for one, the write end of the container's stdin pipe or its terminal's master, by
//! SCM_RIGHTS: `kubectl attach`), or [`Message::Failed`].
//!
//! Then it relays the container's output to procnode as [`frame`]s on the same connection, so
//! that procnode holds one descriptor per container, not three: that is what lets a host with
//! a modest RLIMIT_NOFILE run ten thousand pods. Output is kept until procnode acknowledges
//! it ([`Command::Ack`], sent once it is stored): a procnode killed at any moment loses none of
//! it. The next one says first how much of the run's output its log files hold
//! ([`Command::Resume`]) and is sent the rest, so nothing is stored twice either. While
//! 256 KiB wait unacknowledged the pipes are not read, so the container's writes block as
//! they would on a full pipe.
//!
//! It also listens on the unix socket `NAME` (a path in procnode's own `STATE_DIR/sup/`; only
//! processes of its own uid are served), where a restarted procnode gets the same hello and the
//! unacknowledged output. procnode's `close-stdin` (a `stdinOnce` container's first client is
//! done) closes the stdin pipe.
//!
//! When the container exits the shim ends what is left of its process group (and of its
//! cgroup, where it has one), reads what is left in the pipes, and sends
//! [`Message::Exited`] after all the output, then keeps both until a procnode answers `release`
//! (after recording them), and exits.
//!
//! Plain blocking code: poll on a signalfd, the listening socket, the current connection and
//! the pipes; no async runtime, no threads, no files.

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
        /// The output comes as frames on this connection ([`frame`]), not as pipes. (A
        /// supervisor started by an older procnode hands over its pipes instead.)
        #[serde(default)]
        relay: bool,
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
    let (pid, streams) = match child {
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
    let process::ContainerIo {
        stdout,
        stderr,
        mut stdin,
    } = streams;
    let mut relay = Relay::new(stdout, stderr)?;
    // The hello, and the container's stdin handed over (the pipe's write end, or the
    // terminal's master): what is open now (stdin may have been closed).
    let hello = |stdin: &Option<std::os::fd::OwnedFd>| {
        let console = match (spec.console, stdin) {
            (process::Console::Terminal, _) => process::Console::Terminal,
            (process::Console::Stdin, Some(_)) => process::Console::Stdin,
            _ => process::Console::None,
        };
        let fds: Vec<_> = stdin.iter().map(|i| i.as_raw_fd()).collect();
        let text = line(&Message::Hello {
            pid,
            started_ns,
            console,
            relay: true,
        });
        (text, fds)
    };
    let mut conn = greet(first.try_clone()?, &hello(&stdin));
    let my_uid = nix::unistd::geteuid().as_raw();

    let mut exited = false;
    let mut inbox: Vec<u8> = Vec::new();
    loop {
        let (sig_ready, accept_ready, conn_ready, pipes_ready) = {
            let mut fds = vec![
                PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            ];
            let conn_at = conn.as_ref().map(|c| {
                let mut flags = PollFlags::POLLIN;
                if relay.has_outgoing() {
                    flags |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(c.as_fd(), flags));
                fds.len() - 1
            });
            let pipes_at = fds.len();
            if relay.wants_input() {
                for (_, p) in &relay.pipes {
                    fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
                }
            }
            // While it holds an exit, it looks every second whether its state directory is
            // still there: once its socket file is gone with it, no procnode can ever
            // release it, and it must not wait forever.
            let wait = if exited {
                PollTimeout::from(1000u16)
            } else {
                PollTimeout::NONE
            };
            match poll(&mut fds, wait) {
                Ok(0) if exited && name.starts_with('/') => {
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
                conn_at.is_some_and(|i| ready(&fds[i])),
                fds[pipes_at..].iter().any(ready),
            )
        };
        if sig_ready {
            while let Ok(Some(_)) = sigfd.read_signal() {}
            if let Some(status) = reap(pid) {
                if !exited {
                    // Like a container runtime when a container's first process exits: end the
                    // rest of its process group.
                    process::signal_group(pid, Signal::SIGKILL);
                    // And what left the group but not the container's cgroup (setsid).
                    process::kill_cgroups(&spec.cgroups);
                    // What the container wrote before it ended goes before its exit.
                    relay.drain();
                    relay.exited(Exited {
                        status,
                        finished_ns: crate::logs::now_ns(),
                    });
                    exited = true;
                }
            }
        }
        if pipes_ready {
            relay.read_pipes();
        }
        // The connection that was polled is read before a new one may replace it, and without
        // blocking: reading a replacement that has nothing to say would block this loop, and
        // with it the container's exit, forever.
        if conn_ready {
            let mut buf = [0u8; 256];
            let read = conn
                .as_ref()
                .map(|c| nix::sys::socket::recv(c.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT));
            match read {
                Some(Ok(n)) if n > 0 => inbox.extend_from_slice(&buf[..n]),
                Some(Err(nix::errno::Errno::EAGAIN)) | Some(Err(nix::errno::Errno::EINTR)) => {}
                _ => conn = None,
            }
            while let Some(end) = inbox.iter().position(|b| *b == b'\n') {
                let command: Vec<u8> = inbox.drain(..=end).collect();
                match Command::parse(&command[..end]) {
                    Some(Command::Release) if exited => {
                        while reap_any() {}
                        remove_socket(name);
                        return Ok(());
                    }
                    Some(Command::Ack(n)) => relay.acknowledged(n),
                    Some(Command::Resume(n)) => relay.resume(n),
                    // `stdinOnce`: the first attached client is done; the container's stdin
                    // ends (a terminal gets an end-of-file character instead: closing it
                    // would hang the session up).
                    Some(Command::CloseStdin) => match spec.console {
                        process::Console::Terminal => {
                            if let Some(t) = &stdin {
                                let _ = nix::unistd::write(t, &[4]);
                            }
                        }
                        _ => stdin = None,
                    },
                    _ => {}
                }
            }
            // A peer that says nothing but garbage is not listened to.
            if inbox.len() > 4096 {
                inbox.clear();
                conn = None;
            }
        }
        if accept_ready {
            if let Ok((c, _)) = listener.accept() {
                // Only a process of our own user may take the pipes or release us.
                let same_user =
                    getsockopt(&c, sockopt::PeerCredentials).is_ok_and(|cred| cred.uid() == my_uid);
                if same_user {
                    // A newer procnode replaces an older connection; what it has not
                    // acknowledged is sent again, from the start.
                    if let Some(c) = greet(c, &hello(&stdin)) {
                        conn = Some(c);
                        inbox.clear();
                        relay.new_connection();
                    }
                }
            }
        }
        if let Some(c) = &conn {
            if relay.send(c).is_err() {
                conn = None;
            }
        }
    }
}

/// What procnode tells a supervisor, one line each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Its exit has been recorded: it may go.
    Release,
    /// The container's stdin is to be closed (`stdinOnce`).
    CloseStdin,
    /// procnode has stored the first N bytes of output frames sent on this connection.
    Ack(u64),
    /// Sent first by a procnode that connects to a running supervisor: it already holds the
    /// first N bytes of the run's output (from its log files); the relay goes on from there.
    /// Until then nothing is sent on that connection.
    Resume(u64),
}

impl Command {
    pub fn line(self) -> String {
        match self {
            Command::Release => "release\n".into(),
            Command::CloseStdin => "close-stdin\n".into(),
            Command::Ack(n) => format!("ack {n}\n"),
            Command::Resume(n) => format!("resume {n}\n"),
        }
    }

    fn parse(line: &[u8]) -> Option<Command> {
        match line {
            b"release" => Some(Command::Release),
            b"close-stdin" => Some(Command::CloseStdin),
            _ => {
                let number = |n: &[u8]| std::str::from_utf8(n).ok()?.parse().ok();
                if let Some(n) = line.strip_prefix(b"ack ") {
                    return number(n).map(Command::Ack);
                }
                number(line.strip_prefix(b"resume ")?).map(Command::Resume)
            }
        }
    }
}

/// The kinds of frame a supervisor sends after its hello: `[kind][length: u32 LE][payload]`.
pub mod frame {
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    /// A [`super::Message`] as JSON (the exit).
    pub const MESSAGE: u8 = 3;
    pub const HEADER: usize = 5;
    /// Longest payload: a bigger length means the stream is not what it should be.
    pub const MAX_PAYLOAD: usize = 1 << 20;

    /// The header of a frame of `kind` with `len` bytes of payload.
    pub fn header(kind: u8, len: usize) -> [u8; HEADER] {
        let [a, b, c, d] = (len as u32).to_le_bytes();
        [kind, a, b, c, d]
    }

    pub fn push<O: for<'a> Extend<&'a u8>>(out: &mut O, kind: u8, payload: &[u8]) {
        out.extend(&header(kind, payload.len()));
        // (A slice extends a Vec or a VecDeque by one copy.)
        out.extend(payload);
    }

    /// The whole length of the frame whose header starts `buf` (at least [`HEADER`] bytes).
    pub fn total_len(buf: &[u8]) -> Result<usize, String> {
        let len = u32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if !matches!(buf[0], STDOUT | STDERR | MESSAGE) || len > MAX_PAYLOAD {
            return Err(format!(
                "bad frame from the supervisor (kind {}, {len} bytes)",
                buf[0]
            ));
        }
        Ok(HEADER + len)
    }

    /// A frame read: its kind, its payload, and its whole length.
    pub type Parsed<'a> = (u8, &'a [u8], usize);

    /// The first frame in `buf`; `Ok(None)` when it is not all there yet.
    pub fn parse(buf: &[u8]) -> Result<Option<Parsed<'_>>, String> {
        if buf.len() < HEADER {
            return Ok(None);
        }
        let total = total_len(buf)?;
        Ok(buf
            .get(HEADER..total)
            .map(|payload| (buf[0], payload, total)))
    }
}

/// Output held for procnode until it says it has stored it; while this much waits, the pipes
/// are not read (the container's writes then block, as they would on a full pipe).
const UNACKED_MAX: usize = 256 * 1024;
/// Largest read from an output pipe.
const READ_CHUNK: usize = 64 * 1024;
/// What is read from the pipes after the container's exit, at most (an escaped process could
/// write forever).
const DRAIN_MAX: usize = 4 << 20;

/// The container's output on its way to procnode, kept until procnode acknowledges it: a
/// procnode killed at any moment loses none of it, the next one gets it again.
struct Relay {
    /// The output pipes still open (or the terminal's master), with their frame kinds.
    pipes: Vec<(u8, std::os::fd::OwnedFd)>,
    /// Frames procnode has not acknowledged, oldest first.
    unacked: std::collections::VecDeque<u8>,
    /// How much of `unacked` the current connection has been sent.
    sent: usize,
    /// The run's output bytes before the first frame in `unacked` (acknowledged, or skipped
    /// on a procnode's [`Command::Resume`]).
    output_before: u64,
    /// The current connection waits for its procnode's [`Command::Resume`] (a connection that
    /// replaced the first one).
    waiting: bool,
    /// What the current connection has acknowledged (its own count).
    acked: u64,
    /// The exit frame, sent after all output, and how much of it was sent.
    exit: Vec<u8>,
    exit_sent: usize,
    /// Read buffer, made on the first output (an idle container costs no memory for it).
    buf: Vec<u8>,
}

impl Relay {
    fn new(
        stdout: std::os::fd::OwnedFd,
        stderr: Option<std::os::fd::OwnedFd>,
    ) -> io::Result<Relay> {
        let mut pipes = vec![(frame::STDOUT, stdout)];
        pipes.extend(stderr.map(|e| (frame::STDERR, e)));
        for (_, p) in &pipes {
            nix::fcntl::fcntl(
                p,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )?;
        }
        Ok(Relay {
            pipes,
            unacked: Default::default(),
            sent: 0,
            output_before: 0,
            waiting: false,
            acked: 0,
            exit: Vec::new(),
            exit_sent: 0,
            buf: Vec::new(),
        })
    }

    fn wants_input(&self) -> bool {
        self.unacked.len() < UNACKED_MAX
    }

    fn has_outgoing(&self) -> bool {
        !self.waiting && (self.sent < self.unacked.len() || self.exit_sent < self.exit.len())
    }

    /// Reads one chunk from each readable pipe (closing those at their end).
    fn read_pipes(&mut self) {
        let mut open = Vec::with_capacity(self.pipes.len());
        for (kind, pipe) in std::mem::take(&mut self.pipes) {
            if self.read_one(kind, &pipe) != Read::End {
                open.push((kind, pipe));
            }
        }
        self.pipes = open;
    }

    fn read_one(&mut self, kind: u8, pipe: &std::os::fd::OwnedFd) -> Read {
        if self.buf.is_empty() {
            self.buf = vec![0; READ_CHUNK];
        }
        loop {
            match nix::unistd::read(pipe, &mut self.buf) {
                Ok(0) => return Read::End,
                Ok(n) => {
                    frame::push(&mut self.unacked, kind, &self.buf[..n]);
                    return Read::Some(n);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return Read::Nothing,
                // EIO: a terminal whose every process is gone.
                Err(_) => return Read::End,
            }
        }
    }

    /// Reads what is left in the pipes (bounded), then closes them.
    fn drain(&mut self) {
        let mut total = 0;
        for (kind, pipe) in std::mem::take(&mut self.pipes) {
            while total < DRAIN_MAX {
                match self.read_one(kind, &pipe) {
                    Read::Some(n) => total += n,
                    _ => break,
                }
            }
        }
        self.buf = Vec::new();
    }

    fn exited(&mut self, e: Exited) {
        let json = serde_json::to_vec(&Message::Exited(e)).expect("message serialises");
        frame::push(&mut self.exit, frame::MESSAGE, &json);
    }

    fn new_connection(&mut self) {
        self.sent = 0;
        self.acked = 0;
        self.exit_sent = 0;
        self.waiting = true;
    }

    /// The kind and payload length of the first frame held (frames held are whole: this
    /// process made them).
    fn first_frame(&self) -> Option<(u8, usize)> {
        let mut h = [0u8; frame::HEADER];
        if self.unacked.len() < frame::HEADER {
            return None;
        }
        for (to, from) in h.iter_mut().zip(&self.unacked) {
            *to = *from;
        }
        let total = frame::total_len(&h).expect("frames held are well formed");
        Some((h[0], total - frame::HEADER))
    }

    /// Drops the first frame held (its output counted as gone before).
    fn drop_first_frame(&mut self) -> usize {
        let Some((_, len)) = self.first_frame() else {
            return 0;
        };
        self.unacked.drain(..frame::HEADER + len);
        self.output_before += len as u64;
        frame::HEADER + len
    }

    /// procnode has stored the first `n` bytes of frames sent on this connection: the whole
    /// frames among them go.
    fn acknowledged(&mut self, n: u64) {
        let mut newly = n.saturating_sub(self.acked).min(self.sent as u64) as usize;
        while let Some((_, len)) = self.first_frame() {
            if frame::HEADER + len > newly {
                break;
            }
            let gone = self.drop_first_frame();
            newly -= gone;
            self.sent -= gone;
            self.acked += gone as u64;
        }
        if self.unacked.is_empty() && self.unacked.capacity() > 2 * READ_CHUNK {
            self.unacked = Default::default();
        }
    }

    /// A new procnode holds the run's output up to `output` already: what it holds is not
    /// sent again (a frame it holds part of is cut), and the relay starts.
    fn resume(&mut self, output: u64) {
        while let Some((kind, len)) = self.first_frame() {
            let end = self.output_before + len as u64;
            if end <= output {
                self.drop_first_frame();
                continue;
            }
            if self.output_before < output {
                let cut = (output - self.output_before) as usize;
                self.unacked.drain(frame::HEADER..frame::HEADER + cut);
                for (i, b) in frame::header(kind, len - cut).into_iter().enumerate() {
                    self.unacked[i] = b;
                }
                self.output_before = output;
            }
            break;
        }
        self.waiting = false;
    }

    /// Sends what it can without blocking: output, then (after all of it) the exit.
    fn send(&mut self, c: &UnixStream) -> Result<(), nix::errno::Errno> {
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        while self.has_outgoing() {
            let (buf, pos) = if self.sent < self.unacked.len() {
                let (a, b) = self.unacked.as_slices();
                let unsent = match self.sent < a.len() {
                    true => &a[self.sent..],
                    false => &b[self.sent - a.len()..],
                };
                (unsent, &mut self.sent)
            } else {
                (&self.exit[self.exit_sent..], &mut self.exit_sent)
            };
            match nix::sys::socket::send(c.as_raw_fd(), buf, flags) {
                Ok(n) => *pos += n,
                Err(nix::errno::Errno::EAGAIN) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    Some(usize),
    Nothing,
    End,
}

/// Sends the hello with the container's stdin attached. `None` if the peer is gone.
fn greet(c: UnixStream, (hello, fds): &(String, Vec<std::os::fd::RawFd>)) -> Option<UnixStream> {
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(
        c.as_raw_fd(),
        &[IoSlice::new(hello.as_bytes())],
        cmsgs,
        MsgFlags::empty(),
        None,
    )
    .ok()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn frames_parse_back_whole_and_only_whole() {
        let mut out = Vec::new();
        frame::push(&mut out, frame::STDOUT, b"hello\n");
        frame::push(&mut out, frame::STDERR, b"");
        frame::push(&mut out, frame::MESSAGE, b"{}");
        let (kind, payload, len) = frame::parse(&out).unwrap().unwrap();
        assert_eq!((kind, payload, len), (frame::STDOUT, &b"hello\n"[..], 11));
        for cut in 0..len {
            assert_eq!(frame::parse(&out[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (kind, payload, second) = frame::parse(&out[len..]).unwrap().unwrap();
        assert_eq!((kind, payload), (frame::STDERR, &b""[..]));
        let (kind, payload, _) = frame::parse(&out[len + second..]).unwrap().unwrap();
        assert_eq!((kind, payload), (frame::MESSAGE, &b"{}"[..]));
        assert!(
            frame::parse(b"\x09\x00\x00\x00\x00").is_err(),
            "unknown kind"
        );
        assert!(frame::parse(b"\x01\xff\xff\xff\x7f").is_err(), "too long");
    }

    #[test]
    fn commands_round_trip_and_garbage_is_none() {
        for c in [
            Command::Release,
            Command::CloseStdin,
            Command::Ack(123_456),
            Command::Resume(u64::MAX),
        ] {
            let line = c.line();
            assert_eq!(Command::parse(line.trim_end().as_bytes()), Some(c));
        }
        for bad in [&b"ack"[..], b"ack -1", b"ack x", b"releas", b""] {
            assert_eq!(Command::parse(bad), None);
        }
    }

    /// Output is sent and kept until acknowledged; a new connection gets nothing until its
    /// procnode says how much of the output it holds, then the rest (a frame it holds part of
    /// cut to what it lacks), and the exit after all of it.
    #[test]
    fn a_new_connection_resumes_where_its_procnode_left_off() {
        let (r, w) = process::pipe().unwrap();
        let mut relay = Relay::new(r, None).unwrap();
        nix::unistd::write(&w, b"one\n").unwrap();
        relay.read_pipes();
        nix::unistd::write(&w, b"two\n").unwrap();
        relay.read_pipes();
        let (a, mut a_peer) = UnixStream::pair().unwrap();
        relay.send(&a).unwrap();
        let mut got = vec![0u8; 18];
        a_peer.read_exact(&mut got).unwrap();
        assert_eq!(&got[5..9], b"one\n");
        assert_eq!(&got[14..18], b"two\n");
        // The first frame is acknowledged; the connection drops before the second is.
        relay.acknowledged(9);
        drop((a, a_peer));
        drop(w);
        relay.drain();
        relay.exited(Exited {
            status: ExitStatus::Exited(3),
            finished_ns: 7,
        });
        relay.new_connection();
        assert!(
            !relay.has_outgoing(),
            "nothing before the procnode says where it is"
        );
        // It stored "one\ntw" (its log files say so).
        relay.resume(6);
        let (b, mut b_peer) = UnixStream::pair().unwrap();
        relay.send(&b).unwrap();
        drop(b);
        let mut rest = Vec::new();
        b_peer.read_to_end(&mut rest).unwrap();
        let (kind, payload, len) = frame::parse(&rest).unwrap().unwrap();
        assert_eq!((kind, payload), (frame::STDOUT, &b"o\n"[..]));
        let (kind, payload, _) = frame::parse(&rest[len..]).unwrap().unwrap();
        assert_eq!(kind, frame::MESSAGE);
        let exit: Message = serde_json::from_slice(payload).unwrap();
        assert_eq!(
            exit,
            Message::Exited(Exited {
                status: ExitStatus::Exited(3),
                finished_ns: 7
            })
        );
        assert!(relay.pipes.is_empty(), "closed at their end");
        // A procnode that wants none of the output gets only the exit.
        relay.new_connection();
        relay.resume(u64::MAX);
        let (c, mut c_peer) = UnixStream::pair().unwrap();
        relay.send(&c).unwrap();
        drop(c);
        let mut only = Vec::new();
        c_peer.read_to_end(&mut only).unwrap();
        assert_eq!(frame::parse(&only).unwrap().unwrap().0, frame::MESSAGE);
    }
}
