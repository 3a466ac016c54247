//! Probes, as the kubelet runs them: `startupProbe` first (liveness and readiness wait for it),
//! then `livenessProbe` and `readinessProbe` side by side; each with an exec, httpGet,
//! tcpSocket or grpc handler and `initialDelaySeconds`, `periodSeconds`, `timeoutSeconds`,
//! `successThreshold`, `failureThreshold`.
//!
//! [`watch`] is a future the container task polls next to the process it runs (no task of its
//! own: it ends with the run). Readiness and startup are written into the container's status; a
//! failed liveness or startup probe makes the future return the reason, and the container task
//! then stops the run (TERM, grace period, KILL), after which the restart policy applies.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::pod::{Happening, PodEntry};
use super::process::{self, SpawnRequest};

/// Which probe (defined with the pods' notes, which name it).
pub use super::pod::ProbeKind as Kind;

#[derive(Debug, Clone)]
enum Handler {
    Exec(Vec<String>),
    Http {
        host: String,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
        /// scheme HTTPS: TLS without certificate verification, as the kubelet probes.
        https: bool,
    },
    Tcp {
        host: String,
        port: u16,
    },
    /// The gRPC health-checking protocol (`grpc.health.v1.Health/Check`) over plaintext
    /// HTTP/2, as the kubelet's gRPC probe.
    Grpc {
        port: u16,
        service: String,
    },
    /// A hook that only waits (`lifecycle.*.sleep`).
    Sleep(Duration),
}

#[derive(Debug, Clone)]
struct Spec {
    kind: Kind,
    handler: Handler,
    initial_delay: Duration,
    period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
}

fn secs(v: Option<i32>, default: i32, min: i32) -> Duration {
    Duration::from_secs(v.unwrap_or(default).max(min) as u64)
}

fn port(p: &IntOrString, c: &Container) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} is out of range")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .ok_or_else(|| format!("no container port named {name:?}")),
    }
}

/// The handlers a probe or a hook may name (probes have `grpc`, hooks `sleep`).
struct Handlers<'a> {
    exec: &'a Option<k8s_openapi::api::core::v1::ExecAction>,
    http_get: &'a Option<k8s_openapi::api::core::v1::HTTPGetAction>,
    tcp_socket: &'a Option<k8s_openapi::api::core::v1::TCPSocketAction>,
    grpc: Option<&'a k8s_openapi::api::core::v1::GRPCAction>,
    sleep: Option<&'a k8s_openapi::api::core::v1::SleepAction>,
}

impl<'a> Handlers<'a> {
    fn of_probe(p: &'a Probe) -> Self {
        Handlers {
            exec: &p.exec,
            http_get: &p.http_get,
            tcp_socket: &p.tcp_socket,
            grpc: p.grpc.as_ref(),
            sleep: None,
        }
    }

    fn of_hook(h: &'a k8s_openapi::api::core::v1::LifecycleHandler) -> Self {
        Handlers {
            exec: &h.exec,
            http_get: &h.http_get,
            tcp_socket: &h.tcp_socket,
            grpc: None,
            sleep: h.sleep.as_ref(),
        }
    }
}

fn handler(h: Handlers<'_>, c: &Container) -> Result<Handler, String> {
    let Handlers {
        exec,
        http_get,
        tcp_socket,
        grpc,
        sleep,
    } = h;
    Ok(if let Some(exec) = exec {
        Handler::Exec(exec.command.clone().unwrap_or_default())
    } else if let Some(h) = http_get {
        let https = match h.scheme.as_deref() {
            None | Some("") => false,
            Some(s) if s.eq_ignore_ascii_case("http") => false,
            Some(s) if s.eq_ignore_ascii_case("https") => true,
            Some(other) => return Err(format!("httpGet scheme {other:?} is not HTTP or HTTPS")),
        };
        Handler::Http {
            https,
            host: h
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "127.0.0.1".into()),
            port: port(&h.port, c)?,
            path: h
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into()),
            headers: h
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        }
    } else if let Some(t) = tcp_socket {
        Handler::Tcp {
            host: t
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "127.0.0.1".into()),
            port: port(&t.port, c)?,
        }
    } else if let Some(g) = grpc {
        Handler::Grpc {
            port: u16::try_from(g.port).map_err(|_| format!("port {} is out of range", g.port))?,
            service: g.service.clone().unwrap_or_default(),
        }
    } else if let Some(s) = sleep {
        Handler::Sleep(Duration::from_secs(s.seconds.max(0) as u64))
    } else {
        return Err("no handler: exec, httpGet, tcpSocket, grpc (probes) or sleep (hooks)".into());
    })
}

fn spec(kind: Kind, p: &Probe, c: &Container) -> Result<Spec, String> {
    let handler = handler(Handlers::of_probe(p), c)?;
    Ok(Spec {
        kind,
        handler,
        initial_delay: secs(p.initial_delay_seconds, 0, 0),
        period: secs(p.period_seconds, 10, 1),
        timeout: secs(p.timeout_seconds, 1, 1),
        // Liveness and startup probes must use 1 (the API server enforces it).
        success_threshold: match kind {
            Kind::Readiness => p.success_threshold.unwrap_or(1).max(1) as u32,
            _ => 1,
        },
        failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
    })
}

/// What exec probes run with: the container's environment, user and working directory.
#[derive(Debug, Clone)]
pub struct ExecContext {
    /// The container's own process recipe (environment, working directory, user, cgroups,
    /// volume mounts), which exec probes and hooks share; its argv is replaced.
    pub recipe: SpawnRequest,
    /// procnode's executable, which switches user for an exec probe (`exec-as`).
    pub helper: std::path::PathBuf,
}

/// Runs one check. `Err` carries what the kubelet would put in its event.
async fn check(handler: &Handler, timeout: Duration, ctx: &ExecContext) -> Result<(), String> {
    match handler {
        Handler::Exec(argv) => {
            let mut req = ctx.recipe.clone();
            req.argv = argv
                .iter()
                .map(|a| super::env::expand(a, &req.env))
                .collect();
            let helper = ctx.helper.clone();
            let spawned = tokio::task::spawn_blocking(move || process::spawn_quiet(&req, &helper))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let (pid, mut exit) = spawned;
            match tokio::time::timeout(timeout, &mut exit).await {
                Ok(Ok(status)) if status.exit_code() == 0 => Ok(()),
                Ok(Ok(status)) => Err(format!("command exited with {}", status.exit_code())),
                Ok(Err(_)) => Err("command vanished".into()),
                Err(_) => {
                    process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                    let _ = exit.await;
                    Err(format!("command timed out after {timeout:?}"))
                }
            }
        }
        Handler::Tcp { host, port } => {
            match tokio::time::timeout(
                timeout,
                tokio::net::TcpStream::connect((host.as_str(), *port)),
            )
            .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
                Err(_) => Err(format!("dial tcp {host}:{port}: timeout")),
            }
        }
        // Bounded like any hook: a preStop sleep longer than the grace period is cut short.
        Handler::Sleep(d) => {
            tokio::time::sleep((*d).min(timeout)).await;
            Ok(())
        }
        Handler::Grpc { port, service } => {
            let target = format!("127.0.0.1:{port}");
            match tokio::time::timeout(timeout, grpc_health(&target, service)).await {
                Ok(Ok(1)) => Ok(()),
                Ok(Ok(status)) => Err(format!(
                    "service unhealthy (responded with {:?})",
                    grpc_status_name(status)
                )),
                Ok(Err(e)) => Err(format!("rpc error on {target}: {e}")),
                Err(_) => Err(format!(
                    "timeout: health rpc did not complete within {timeout:?}"
                )),
            }
        }
        Handler::Http {
            host,
            port,
            path,
            headers,
            https,
        } => {
            let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/procnode\r\nAccept: */*\r\nConnection: close\r\n");
            for (k, v) in headers {
                req.push_str(&format!("{k}: {v}\r\n"));
            }
            req.push_str("\r\n");
            let attempt = async {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                if *https {
                    let name = rustls::pki_types::ServerName::try_from(host.clone())
                        .map_err(std::io::Error::other)?;
                    let tls = tokio_rustls::TlsConnector::from(insecure_tls())
                        .connect(name, tcp)
                        .await?;
                    status_line(tls, &req).await
                } else {
                    status_line(tcp, &req).await
                }
            };
            let scheme = if *https { "https" } else { "http" };
            let line = match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok(text)) => text,
                Ok(Err(e)) => return Err(format!("Get {scheme}://{host}:{port}{path}: {e}")),
                Err(_) => return Err(format!("Get {scheme}://{host}:{port}{path}: timeout")),
            };
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        }
    }
}

/// One `grpc.health.v1.Health/Check` call for `service` over plaintext HTTP/2 to `target`
/// (host:port): the status of the answer (1 = SERVING, 2 = NOT_SERVING, 3 = SERVICE_UNKNOWN).
/// The messages are protobuf with one field each, encoded here by hand.
async fn grpc_health(target: &str, service: &str) -> Result<u64, String> {
    let tcp = tokio::net::TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (client, connection) = h2::client::handshake(tcp)
        .await
        .map_err(|e| format!("HTTP/2: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let _end_driver = AbortOnDrop(driver);
    let mut client = client.ready().await.map_err(|e| format!("HTTP/2: {e}"))?;
    let request = http::Request::post(format!("http://{target}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "kube-probe/procnode")
        .body(())
        .map_err(|e| e.to_string())?;
    let (answer, mut body) = client
        .send_request(request, false)
        .map_err(|e| format!("HTTP/2: {e}"))?;
    // HealthCheckRequest { service = 1 }, in a gRPC frame (not compressed, 4-byte length).
    let mut message = Vec::new();
    if !service.is_empty() {
        message.push(0x0a);
        put_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    body.send_data(frame.into(), true)
        .map_err(|e| format!("HTTP/2: {e}"))?;
    let answer = answer.await.map_err(|e| format!("HTTP/2: {e}"))?;
    if answer.status() != 200 {
        return Err(format!("HTTP status {}", answer.status()));
    }
    let grpc_error = |headers: &http::HeaderMap| {
        let code = headers.get("grpc-status")?.to_str().ok()?;
        (code != "0").then(|| {
            let message = headers
                .get("grpc-message")
                .and_then(|m| m.to_str().ok())
                .unwrap_or("");
            format!("grpc-status {code} {message}")
                .trim_end()
                .to_string()
        })
    };
    if let Some(e) = grpc_error(answer.headers()) {
        return Err(e);
    }
    let mut body = answer.into_body();
    let mut received = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("HTTP/2: {e}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        received.extend_from_slice(&chunk);
        if received.len() > 64 * 1024 {
            return Err("answer too long".into());
        }
    }
    if let Ok(Some(trailers)) = body.trailers().await {
        if let Some(e) = grpc_error(&trailers) {
            return Err(e);
        }
    }
    // HealthCheckResponse { status = 1 (enum, varint) }; an absent field is 0 (UNKNOWN).
    let message = received.get(5..).ok_or("no answer message")?;
    let mut at = 0;
    let mut status = 0;
    while at < message.len() {
        let key = take_varint(message, &mut at).ok_or("bad answer message")?;
        match (key >> 3, key & 7) {
            (1, 0) => status = take_varint(message, &mut at).ok_or("bad answer message")?,
            (_, 0) => {
                take_varint(message, &mut at).ok_or("bad answer message")?;
            }
            (_, 2) => {
                let len = take_varint(message, &mut at).ok_or("bad answer message")? as usize;
                at = at.checked_add(len).ok_or("bad answer message")?;
            }
            _ => return Err("bad answer message".into()),
        }
    }
    Ok(status)
}

fn grpc_status_name(status: u64) -> &'static str {
    match status {
        0 => "UNKNOWN",
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "unknown status",
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Aborts a task when dropped (the HTTP/2 connection of a probe ends with the probe).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends `req` and returns the start of the answer (its status line).
async fn status_line<S>(mut s: S, req: &str) -> std::io::Result<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(req.as_bytes()).await?;
    let mut head = vec![0u8; 64];
    let n = s.read(&mut head).await?;
    Ok(String::from_utf8_lossy(&head[..n]).into_owned())
}

/// TLS for HTTPS probes: like the kubelet, no certificate verification (a probe checks that
/// the container answers, not who it is); handshake signatures are still checked.
fn insecure_tls() -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AnyCertificate(std::sync::Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    static CONFIG: std::sync::OnceLock<std::sync::Arc<rustls::ClientConfig>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("default TLS versions")
                .dangerous()
                .with_custom_certificate_verifier(std::sync::Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            std::sync::Arc::new(config)
        })
        .clone()
}

/// Runs the probes of container `idx` for one run. Returns only to ask for the run to be
/// stopped (a failed liveness or startup probe), with the reason; otherwise never.
pub async fn watch(entry: &PodEntry, idx: usize, ctx: ExecContext) -> String {
    let c = entry.container_spec(idx);
    let parse = |kind, p: &Option<Probe>| p.as_ref().map(|p| spec(kind, p, &c));
    let probes = [
        parse(Kind::Startup, &c.startup_probe),
        parse(Kind::Liveness, &c.liveness_probe),
        parse(Kind::Readiness, &c.readiness_probe),
    ];
    let mut specs = Vec::new();
    for p in probes.into_iter().flatten() {
        match p {
            Ok(s) => specs.push(s),
            Err(e) => return format!("invalid probe: {e}"),
        }
    }
    let get = |k: Kind| specs.iter().find(|s| s.kind == k).cloned();
    if let Some(startup) = get(Kind::Startup) {
        if let Some(reason) = run_until(&startup, entry, idx, &ctx).await {
            return reason;
        }
        entry.update_container(idx, |c| c.started = true);
    }
    let liveness = async {
        match get(Kind::Liveness) {
            Some(s) => run_until(&s, entry, idx, &ctx).await.unwrap_or_default(),
            None => std::future::pending().await,
        }
    };
    let readiness = async {
        if let Some(s) = get(Kind::Readiness) {
            run_until(&s, entry, idx, &ctx).await;
        }
        std::future::pending::<String>().await
    };
    tokio::select! {
        reason = liveness => reason,
        reason = readiness => reason,
    }
}

/// Probes periodically. Startup: returns `None` on the first success, the reason after
/// `failureThreshold` failures. Liveness: returns the reason after `failureThreshold` failures
/// in a row. Readiness: never returns; flips the container's `ready` by the thresholds.
async fn run_until(s: &Spec, entry: &PodEntry, idx: usize, ctx: &ExecContext) -> Option<String> {
    tokio::time::sleep(s.initial_delay).await;
    let (mut successes, mut failures) = (0u32, 0u32);
    loop {
        match check(&s.handler, s.timeout, ctx).await {
            Ok(()) => {
                successes += 1;
                failures = 0;
                match s.kind {
                    Kind::Startup => return None,
                    Kind::Readiness if successes >= s.success_threshold => {
                        entry.update_container(idx, |c| c.ready = true)
                    }
                    _ => {}
                }
            }
            Err(e) => {
                failures += 1;
                successes = 0;
                // Each failure is an event, as the kubelet records it (repeats are counted).
                entry.note(
                    idx,
                    Happening::ProbeFailed {
                        probe: s.kind,
                        message: e.to_string(),
                    },
                );
                if failures >= s.failure_threshold {
                    match s.kind {
                        Kind::Readiness => entry.update_container(idx, |c| c.ready = false),
                        _ => {
                            entry.note(idx, Happening::KilledByProbe { probe: s.kind });
                            return Some(format!("{} probe failed: {e}", s.kind.name()));
                        }
                    }
                }
            }
        }
        tokio::time::sleep(s.period).await;
    }
}

/// Whether the container has a probe of `kind`.
pub fn has(c: &Container, kind: Kind) -> bool {
    match kind {
        Kind::Startup => c.startup_probe.is_some(),
        Kind::Liveness => c.liveness_probe.is_some(),
        Kind::Readiness => c.readiness_probe.is_some(),
    }
}

/// A running hook: resolves to `Err(reason)` if it failed.
pub type HookRun = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// Which lifecycle hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    PostStart,
    PreStop,
}

/// Runs container `c`'s `hook`, if it has one, bounded by `limit`. `Err` says why it failed.
pub fn hook(c: &Container, which: Hook, ctx: ExecContext, limit: Duration) -> Option<HookRun> {
    let lifecycle = c.lifecycle.as_ref()?;
    let h = match which {
        Hook::PostStart => lifecycle.post_start.as_ref()?,
        Hook::PreStop => lifecycle.pre_stop.as_ref()?,
    };
    let name = match which {
        Hook::PostStart => "PostStartHook",
        Hook::PreStop => "PreStopHook",
    };
    let handler = handler(Handlers::of_hook(h), c);
    Some(Box::pin(async move {
        let handler = handler.map_err(|e| format!("{name} failed: {e}"))?;
        check(&handler, limit, &ctx)
            .await
            .map_err(|e| format!("{name} failed: {e}"))
    }))
}
