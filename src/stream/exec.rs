//! An exec session (`kubectl exec`, `kubectl cp`): the remote command protocols over SPDY.
//!
//! The client opens one stream per channel, each named by its `streamType` header: `error`
//! (always), `stdin`, `stdout`, `stderr` (not with a tty: the terminal merges it into stdout)
//! and, with a tty from `v3.channel.k8s.io` on, `resize` (JSON `{"Width","Height"}` objects).
//! Once they are all open the process starts; when it has exited and its output is sent, the
//! result goes on the error stream: from `v4.channel.k8s.io` on a `metav1.Status` (a non-zero
//! exit is `NonZeroExitCode` with the code as an `ExitCode` cause), before that a plain
//! message, and nothing on success. Then every stream is finished and the connection closed.
//!
//! The process is killed when the client goes away or the container's run stops.

use std::os::fd::OwnedFd;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};

use super::spdy::{self, Session};
use super::{ws, Inbound, Sender};
use crate::runtime::exec::{ExecIo, ExecProcess, ExecSpec, ExecTarget};
use crate::runtime::process::{self, ExitStatus};

/// How long output is still read after the process exited (a process it left behind may hold
/// its pipes), as for a container's own output.
const DRAIN: Duration = Duration::from_secs(2);

/// What the client asked for, from the request's query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Options {
    /// Reads `command=…` (repeated), `stdin`, `stdout`, `stderr`, `tty` (or the older `input`,
    /// `output`, `error`), each `1` or `true`. At least one stream is required; a tty has no
    /// separate stderr.
    pub fn from_query(query: &str) -> Result<Options, String> {
        let o = Options::streams_from_query(query)?;
        if o.command.is_empty() {
            return Err("query parameter `command` is required".into());
        }
        Ok(o)
    }

    /// [`Options::from_query`] without a command: what an attach asks for.
    pub fn streams_from_query(query: &str) -> Result<Options, String> {
        let mut o = Options {
            command: Vec::new(),
            stdin: false,
            stdout: false,
            stderr: false,
            tty: false,
        };
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let on = v == "1" || v.eq_ignore_ascii_case("true");
            match &*k {
                "command" => o.command.push(v.into_owned()),
                "stdin" | "input" => o.stdin = on,
                "stdout" | "output" => o.stdout = on,
                "stderr" | "error" => o.stderr = on,
                "tty" => o.tty = on,
                _ => {}
            }
        }
        if o.tty {
            o.stderr = false;
        }
        if !o.stdin && !o.stdout && !o.stderr {
            return Err("you must specify at least 1 of stdin, stdout, stderr".into());
        }
        Ok(o)
    }

    fn spec(&self) -> ExecSpec {
        ExecSpec {
            command: self.command.clone(),
            stdin: self.stdin,
            stdout: self.stdout,
            stderr: self.stderr,
            tty: self.tty,
        }
    }
}

/// The client's SPDY streams, by type.
#[derive(Default)]
struct Streams {
    error: Option<spdy::Stream>,
    stdin: Option<spdy::Stream>,
    stdout: Option<spdy::Stream>,
    stderr: Option<spdy::Stream>,
    resize: Option<spdy::Stream>,
}

impl Streams {
    fn complete(&self, o: &Options, resize: bool) -> bool {
        self.error.is_some()
            && (!o.stdin || self.stdin.is_some())
            && (!o.stdout || self.stdout.is_some())
            && (!o.stderr || self.stderr.is_some())
            && (!(o.tty && resize) || self.resize.is_some())
    }

    fn take(&mut self, s: spdy::Stream) {
        let slot = match spdy::header(&s.headers, "streamtype") {
            Some("error") => &mut self.error,
            Some("stdin") => &mut self.stdin,
            Some("stdout") => &mut self.stdout,
            Some("stderr") => &mut self.stderr,
            Some("resize") => &mut self.resize,
            // A stream of no known type is left unread (and dropped).
            _ => return,
        };
        *slot = Some(s);
    }
}

/// A session's channels, whatever carries them: what the client sends (ending at its end of
/// the channel) and where procnode's output goes.
pub struct Channels {
    pub error: Sender,
    pub stdin: Option<Inbound>,
    pub stdout: Option<Sender>,
    pub stderr: Option<Sender>,
    pub resize: Option<Inbound>,
    /// Becomes true when the client has gone away.
    pub gone: watch::Receiver<bool>,
}

impl Channels {
    /// Ends the session's channels: `report` (if any) on the error channel, then every output
    /// channel finished.
    pub async fn end(self, report: &str) {
        if !report.is_empty() {
            self.error.send(report.as_bytes()).await;
        }
        self.error.finish().await;
        for s in [self.stdout, self.stderr].into_iter().flatten() {
            s.finish().await;
        }
    }
}

/// Opens a session's channels on an upgraded SPDY connection (the client opens one stream per
/// channel; at most [`STREAM_CREATION_TIMEOUT`](super::STREAM_CREATION_TIMEOUT) is given), runs
/// `session` on them, then closes the connection.
pub async fn on_spdy<F, Fut>(
    mut spdy: Session,
    protocol: &'static str,
    options: &Options,
    session: F,
) where
    F: FnOnce(Channels) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // v1 and v2 have no resize stream.
    let resize = !matches!(protocol, "channel.k8s.io" | "v2.channel.k8s.io");
    let mut streams = Streams::default();
    let opened = tokio::time::timeout(super::STREAM_CREATION_TIMEOUT, async {
        while !streams.complete(options, resize) {
            match spdy.incoming.recv().await {
                Some(s) => streams.take(s),
                None => return false,
            }
        }
        true
    })
    .await;
    if opened != Ok(true) {
        tracing::debug!("streaming: the client did not open its streams");
        if let Some(e) = &streams.error {
            let why = "timed out waiting for client to create streams";
            e.out.send(failure(protocol, why, None).as_bytes()).await;
        }
        spdy.close().await;
        return;
    }
    // Streams opened after the session's own are not used.
    let mut extra = std::mem::replace(&mut spdy.incoming, mpsc::channel(1).1);
    let drain = tokio::spawn(async move { while extra.recv().await.is_some() {} });
    let sender = |s: &spdy::Stream| Sender::Spdy(s.out.clone());
    let channels = Channels {
        error: sender(streams.error.as_ref().expect("complete")),
        stdin: streams.stdin.as_mut().map(take_data),
        stdout: streams.stdout.as_ref().map(sender),
        stderr: streams.stderr.as_ref().map(sender),
        resize: streams.resize.as_mut().map(take_data),
        gone: spdy.gone(),
    };
    session(channels).await;
    drain.abort();
    spdy.close().await;
}

/// Opens a session's channels on a WebSocket connection (0 stdin, 1 stdout, 2 stderr, 3 error,
/// 4 resize), runs `session` on them, then closes the connection. As the kubelet does, an
/// empty message on the first channel procnode writes tells the client the session is open.
pub async fn on_ws<F, Fut>(mut conn: ws::Connection, options: &Options, session: F)
where
    F: FnOnce(Channels) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let ready = match (options.stdout, options.stderr) {
        (true, _) => 1,
        (false, true) => 2,
        _ => 3,
    };
    conn.sender(ready).send(&[]).await;
    let sender = |ch: u8| Sender::Ws(conn.sender(ch));
    let channels = Channels {
        error: sender(3),
        stdout: options.stdout.then(|| sender(1)),
        stderr: options.stderr.then(|| sender(2)),
        stdin: if options.stdin {
            conn.take_inbound(0)
        } else {
            None
        },
        resize: if options.tty {
            conn.take_inbound(4)
        } else {
            None
        },
        gone: conn.gone(),
    };
    session(channels).await;
    conn.close().await;
}

/// Runs the command, pumps its streams, and reports its result on the error channel; every
/// output channel is finished at the end. The caller closes the connection.
pub async fn run_session(mut ch: Channels, protocol: &str, target: &ExecTarget, options: &Options) {
    tracing::info!(pod = %target.key(), protocol, command = ?options.command, tty = options.tty, "exec");
    let result = match target.spawn(&options.spec()).await {
        Ok(process) => Ok(run(target, process, &mut ch).await),
        Err(e) => Err(e.to_string()),
    };
    let report = match result {
        Ok(Some(status)) if status.exit_code() == 0 => success(protocol),
        Ok(Some(status)) => {
            let code = status.exit_code();
            let message = format!(
                "command terminated with non-zero exit code: error executing command {}, exit \
                 code {code}",
                go_list(&options.command)
            );
            failure(protocol, &message, Some(code))
        }
        Ok(None) => failure(protocol, "the command vanished", None),
        Err(why) => failure(
            protocol,
            &format!("error executing command in container: {why}"),
            None,
        ),
    };
    ch.end(&report).await;
}

/// Pumps the process's streams until it has exited and its output is sent; its exit.
async fn run(target: &ExecTarget, process: ExecProcess, ch: &mut Channels) -> Option<ExitStatus> {
    let ExecProcess { pid, io, mut exit } = process;
    let kill = || process::kill_session(pid);
    // A session dropped before its end (procnode shutting down) leaves no process behind.
    let mut guard = KillOnDrop(Some(pid));
    let mut outputs = tokio::task::JoinSet::new();
    let mut inputs = tokio::task::JoinSet::new();
    match io {
        ExecIo::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            if let (Some(fd), Some(data)) = (stdin, ch.stdin.take()) {
                if let Ok(w) = pipe::Sender::from_owned_fd(fd) {
                    inputs.spawn(copy_in(data, w));
                }
            }
            for (fd, s) in [(stdout, &ch.stdout), (stderr, &ch.stderr)] {
                if let (Some(fd), Some(s)) = (fd, s) {
                    if let Ok(r) = pipe::Receiver::from_owned_fd(fd) {
                        outputs.spawn(copy_out(r, s.clone()));
                    }
                }
            }
        }
        ExecIo::Terminal(master) => {
            let (reader, writer) = match terminal_halves(&master) {
                Ok(halves) => halves,
                Err(e) => {
                    tracing::warn!(error = %e, "exec: terminal");
                    kill();
                    return exit.await.ok();
                }
            };
            if let Some(s) = &ch.stdout {
                outputs.spawn(copy_out(reader, s.clone()));
            }
            if let Some(data) = ch.stdin.take() {
                inputs.spawn(copy_in(data, writer));
            }
            if let Some(data) = ch.resize.take() {
                inputs.spawn(resize(data, std::sync::Arc::new(master)));
            }
        }
    }
    let mut gone = ch.gone.clone();
    let mut killed = false;
    let status = loop {
        tokio::select! {
            status = &mut exit => break status.ok(),
            _ = gone.wait_for(|g| *g), if !killed => {
                kill();
                killed = true;
            }
            _ = target.stopped(), if !killed => {
                kill();
                killed = true;
            }
        }
    };
    // Whatever else is still in the group or session goes with it.
    kill();
    let drained = tokio::time::timeout(DRAIN, async {
        while outputs.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        outputs.abort_all();
    }
    inputs.abort_all();
    guard.0 = None;
    status
}

/// Kills an exec'd process's group and session when dropped armed.
struct KillOnDrop(Option<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            process::kill_session(pid);
        }
    }
}

fn take_data(s: &mut spdy::Stream) -> Inbound {
    std::mem::replace(&mut s.data, mpsc::channel(1).1)
}

/// Reading and writing halves of a terminal's master (non-blocking, EIO once the terminal is
/// hung up, read as the end).
fn terminal_halves(master: &OwnedFd) -> std::io::Result<(pipe::Receiver, pipe::Sender)> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    fcntl(master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    let reader = pipe::Receiver::from_owned_fd_unchecked(master.try_clone()?)?;
    let writer = pipe::Sender::from_owned_fd_unchecked(master.try_clone()?)?;
    Ok((reader, writer))
}

/// Copies what the client sends into the process; the process's stdin closes at the end.
pub(super) async fn copy_in(mut data: mpsc::Receiver<Bytes>, mut to: impl AsyncWrite + Unpin) {
    while let Some(chunk) = data.recv().await {
        if to.write_all(&chunk).await.is_err() {
            return;
        }
    }
}

/// Copies the process's output to the client and finishes the stream at its end.
async fn copy_out(mut from: impl AsyncRead + Unpin, to: Sender) {
    let mut buf = vec![0u8; spdy::MAX_DATA];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !to.send(&buf[..n]).await {
                    return;
                }
            }
        }
    }
    to.finish().await;
}

/// Applies the client's terminal sizes (`{"Width":W,"Height":H}`, one after another).
pub(super) async fn resize(mut data: mpsc::Receiver<Bytes>, master: std::sync::Arc<OwnedFd>) {
    #[derive(serde::Deserialize)]
    struct Size {
        #[serde(rename = "Width")]
        width: u16,
        #[serde(rename = "Height")]
        height: u16,
    }
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = data.recv().await {
        pending.extend_from_slice(&chunk);
        let mut sizes = serde_json::Deserializer::from_slice(&pending).into_iter::<Size>();
        let mut used = 0;
        loop {
            match sizes.next() {
                Some(Ok(size)) => {
                    used = sizes.byte_offset();
                    let _ = process::set_window_size(&master, size.width, size.height);
                }
                // An object cut in two: the rest comes with the next chunk.
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => return,
                None => {
                    used = sizes.byte_offset();
                    break;
                }
            }
        }
        pending.drain(..used);
        if pending.len() > 4096 {
            return;
        }
    }
}

/// A list as Go prints a `[]string`: `[sh -c exit 3]`.
fn go_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

pub(super) fn success(protocol: &str) -> String {
    match structured(protocol) {
        true => json!({"metadata": {}, "status": "Success"}).to_string(),
        false => String::new(),
    }
}

/// What the error stream says when the command failed: from v4 on a `metav1.Status` (with the
/// exit code as a cause when there is one), before that the message alone.
pub(super) fn failure(protocol: &str, message: &str, exit_code: Option<i32>) -> String {
    if !structured(protocol) {
        return message.to_string();
    }
    let status = match exit_code {
        Some(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        None => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("Internal error occurred: {message}"),
            "reason": "InternalError",
            "details": {"causes": [{"message": message}]},
            "code": 500,
        }),
    };
    status.to_string()
}

/// From v4 on (SPDY's `v4.channel.k8s.io`, WebSocket's `v4.…` and `v5.…` alike), results are
/// a `metav1.Status`.
fn structured(protocol: &str) -> bool {
    protocol.starts_with("v4.") || protocol.starts_with("v5.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_read_as_the_kubelet_reads_them() {
        let o = Options::from_query(
            "command=sh&command=-c&command=echo+%24FOO&stdin=1&stdout=true&stderr=1&tty=0",
        )
        .unwrap();
        assert_eq!(o.command, ["sh", "-c", "echo $FOO"]);
        assert!(o.stdin && o.stdout && o.stderr && !o.tty);
        // The older names, and a tty without stderr.
        let o = Options::from_query("command=sh&input=1&output=1&error=1&tty=1").unwrap();
        assert!(o.stdin && o.stdout && !o.stderr && o.tty);
        assert!(Options::from_query("stdout=1")
            .unwrap_err()
            .contains("command"));
        assert!(Options::from_query("command=ls")
            .unwrap_err()
            .contains("at least 1 of stdin, stdout, stderr"));
    }

    #[test]
    fn results_are_reported_per_protocol() {
        assert_eq!(
            success("v4.channel.k8s.io"),
            r#"{"metadata":{},"status":"Success"}"#
        );
        assert_eq!(success("v3.channel.k8s.io"), "");
        let v: serde_json::Value =
            serde_json::from_str(&failure("v5.channel.k8s.io", "exit", Some(3))).unwrap();
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        assert_eq!(failure("v2.channel.k8s.io", "boom", None), "boom");
        assert_eq!(
            go_list(&["sh".into(), "-c".into(), "exit 3".into()]),
            "[sh -c exit 3]"
        );
    }
}
