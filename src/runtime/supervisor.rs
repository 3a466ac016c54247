//! procnode's side of the per-container supervisor ([`super::shim`]): start one for a container
//! run ([`launch`]), or attach to one that is already running ([`attach`], also after a procnode
//! restart), and then read its events and the container's output pipes.

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

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
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
    pub run_dir: PathBuf,
    pub events: Events,
    writer: OwnedWriteHalf,
}

/// The supervisor's messages after the greeting.
pub struct Events {
    lines: Lines<BufReader<OwnedReadHalf>>,
    /// Lines that arrived together with the greeting.
    pending: Vec<String>,
}

/// What a supervisor reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Exited(Exited),
    /// The connection closed without an exit: the supervisor is gone.
    Gone,
}

/// Starts a supervisor for `req` in `run_dir` and attaches to it. `Err` is the message to show
/// in the container's status when the container could not be started. Also returns the
/// supervisor's own exit, which procnode collects as its parent.
pub async fn launch(
    shim_exe: &Path,
    run_dir: &Path,
    req: &SpawnRequest,
) -> Result<(Supervised, oneshot::Receiver<ExitStatus>), String> {
    let spec = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    let (exe, dir) = (shim_exe.to_path_buf(), run_dir.to_path_buf());
    let spawned = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(dir.join(shim::SPEC_FILE), &spec))
            .map_err(|e| format!("preparing supervisor directory {}: {e}", dir.display()))?;
        process::spawn_shim(&exe, &dir).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())??;
    let answer = read_handshake(spawned.handshake)
        .await
        .map_err(|e| format!("supervisor handshake: {e}"))?;
    match answer.split_once(' ') {
        Some(("OK", _)) => {}
        Some(("ERR", message)) => return Err(message.to_string()),
        _ => return Err(format!("supervisor failed to start ({answer:?})")),
    }
    let sup = attach(run_dir)
        .await
        .map_err(|e| format!("attaching to supervisor: {e}"))?;
    Ok((sup, spawned.exit))
}

async fn read_handshake(fd: std::os::fd::OwnedFd) -> io::Result<String> {
    let rx = pipe::Receiver::from_owned_fd(fd)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        rx.readable().await?;
        match rx.try_read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.contains(&b'\n') {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    let text = String::from_utf8_lossy(&buf);
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// Connects to the supervisor in `run_dir` and takes the container's output pipes from it.
pub async fn attach(run_dir: &Path) -> io::Result<Supervised> {
    let dir = run_dir.to_path_buf();
    let (stream, hello, fds) = tokio::task::spawn_blocking(move || {
        let stream = std::os::unix::net::UnixStream::connect(dir.join(shim::SOCKET_FILE))?;
        let mut data = vec![0u8; 4096];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 2]);
        let (n, raw) = {
            let mut iov = [IoSliceMut::new(&mut data)];
            let msg = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
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
        io::Result::Ok((stream, data, fds))
    })
    .await
    .map_err(io::Error::other)??;
    let mut fds = fds.into_iter();
    let (Some(out), Some(err)) = (fds.next(), fds.next()) else {
        return Err(io::Error::other("supervisor sent no output pipes"));
    };
    let text = String::from_utf8_lossy(&hello).to_string();
    let mut lines = text.lines();
    let (pid, started_ns) = match lines.next().map(serde_json::from_str::<Message>) {
        Some(Ok(Message::Hello { pid, started_ns })) => (pid, started_ns),
        other => return Err(io::Error::other(format!("unexpected supervisor greeting: {other:?}"))),
    };
    let pending = lines.map(str::to_string).collect();
    stream.set_nonblocking(true)?;
    let (read, writer) = tokio::net::UnixStream::from_std(stream)?.into_split();
    Ok(Supervised {
        pid,
        started_ns,
        stdout: pipe::Receiver::from_owned_fd(out)?,
        stderr: pipe::Receiver::from_owned_fd(err)?,
        run_dir: run_dir.to_path_buf(),
        events: Events {
            lines: BufReader::new(read).lines(),
            pending,
        },
        writer,
    })
}

impl Events {
    /// The next event. Cancel-safe: usable as a `select!` branch.
    pub async fn next(&mut self) -> Event {
        loop {
            let line = if self.pending.is_empty() {
                match self.lines.next_line().await {
                    Ok(Some(line)) => line,
                    _ => return Event::Gone,
                }
            } else {
                self.pending.remove(0)
            };
            if let Ok(Message::Exited(e)) = serde_json::from_str(&line) {
                return Event::Exited(e);
            }
        }
    }
}

impl Supervised {
    /// Tells the supervisor its exit has been recorded; it then exits.
    pub async fn release(mut self) {
        let _ = self.writer.write_all(b"release\n").await;
    }
}
