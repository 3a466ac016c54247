use procnode::config::{Config, ConfigError, ListenAddr, LogFormat};
use procnode::tls::ClientCerts;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    // `procnode shim NAME`: the per-container supervisor, plain blocking code.
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1] == "shim" {
        let code = procnode::runtime::shim::main(&args[2]);
        return std::process::ExitCode::from(code as u8);
    }
    // `procnode exec-as SPEC`: switch user and exec (for processes procnode starts itself).
    if args.len() == 3 && args[1] == "exec-as" {
        let code = procnode::runtime::process::exec_as_main(&args[2]);
        return std::process::ExitCode::from(code as u8);
    }
    procnode::runtime::process::close_inherited_fds_on_exec();
    // `procnode help`: what `--help` prints.
    if args.len() == 2 && args[1] == "help" {
        let mut flags = args;
        flags[1] = "--help".into();
        return load_config(flags)
            .err()
            .unwrap_or(std::process::ExitCode::SUCCESS);
    }
    // `procnode run FILE [FLAGS]`: run one Pod or Job manifest here and exit with its result.
    if args.get(1).is_some_and(|a| a == "run") {
        const USAGE: &str = "usage: procnode run FILE [FLAGS]\n\
            Runs the Pod or Job manifest FILE (YAML or JSON) on this host and exits with its \
            result; the flags are those of `procnode --help`.";
        return match args.get(2).map(String::as_str) {
            Some("-h" | "--help") => {
                println!("{USAGE}");
                std::process::ExitCode::SUCCESS
            }
            Some(file) if !file.starts_with('-') => run_manifest(file, &args[3..]),
            _ => {
                eprintln!("{USAGE}");
                std::process::ExitCode::from(2)
            }
        };
    }
    // `procnode health [FLAGS]`: exit 0 if the procnode these settings describe answers
    // GET /healthz (for exec probes and container health checks).
    if args.len() >= 2 && args[1] == "health" {
        let mut flags = args;
        flags.remove(1);
        return match load_config(flags) {
            Ok(config) => health(&config),
            Err(code) => code,
        };
    }
    // `procnode node [FLAGS]`: join a Kubernetes cluster as a node (no broker).
    if args.len() >= 2 && args[1] == "node" {
        let mut flags = args;
        flags.remove(1);
        return match load_config(flags) {
            Ok(config) => node(config),
            Err(code) => code,
        };
    }
    // `procnode serve [FLAGS]` is the default: `procnode [FLAGS]` means the same.
    let mut flags = args;
    if flags.get(1).is_some_and(|a| a == "serve") {
        flags.remove(1);
    }
    let config = match load_config(flags) {
        Ok(c) => c,
        Err(code) => return code,
    };
    serve(config)
}

/// The configuration from flags, environment and config file; on error, one line and exit 2.
fn load_config(args: Vec<String>) -> Result<Config, std::process::ExitCode> {
    match Config::load(args) {
        Ok(loaded) if loaded.config.print_config => {
            print!("{}", loaded.render());
            Err(std::process::ExitCode::SUCCESS)
        }
        Ok(loaded) => Ok(loaded.config),
        Err(ConfigError::Exit(e)) => e.exit(),
        Err(ConfigError::Invalid(msg)) => {
            eprintln!("procnode: {msg}");
            Err(std::process::ExitCode::from(2))
        }
    }
}

#[tokio::main]
async fn run_manifest(file: &str, flags: &[String]) -> std::process::ExitCode {
    // A fresh directory of its own (mkdtemp: a new name, mode 0700, never one planted before).
    let template = std::env::temp_dir().join("procnode-run-XXXXXX");
    let made = nix::unistd::mkdtemp(&template).and_then(|dir| {
        // Pods running as other users go through it to their own directories.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
        Ok(dir)
    });
    let state_dir = match made {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!(
                "procnode run: cannot make a private directory in {}: {e}",
                std::env::temp_dir().display()
            );
            return std::process::ExitCode::from(2);
        }
    };
    let mut all = vec!["procnode".to_string()];
    all.extend_from_slice(flags);
    // A private, throw-away state directory: nothing outlives this run. (Containers still run
    // under supervisors: that is where a user switch happens safely, in a single-threaded
    // process.)
    all.extend(["--state-dir".to_string(), state_dir.display().to_string()]);
    let config = match load_config(all) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let _ = procnode::runtime::process::become_subreaper();
    match procnode::batch::run(std::path::Path::new(file), config).await {
        Ok(code) => std::process::ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("procnode run: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

#[tokio::main]
async fn node(config: Config) -> std::process::ExitCode {
    init_logging(&config);
    if let Err(e) = procnode::runtime::process::become_subreaper() {
        tracing::warn!(error = %e, "cannot become a child subreaper; orphaned pod processes go to PID 1");
    }
    match procnode::cluster::run(config, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("procnode node: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_env("PROCNODE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt.json().init(),
    }
}

#[tokio::main]
async fn serve(config: Config) -> std::process::ExitCode {
    init_logging(&config);
    if let Err(e) = procnode::runtime::process::become_subreaper() {
        tracing::warn!(error = %e, "cannot become a child subreaper; orphaned pod processes go to PID 1");
    }
    let served = serve_on(config.listen_addr(), config).await;
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("procnode: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Asks the procnode at `config`'s listen address for `GET /healthz` (plain HTTP; with TLS only
/// the TCP connection is checked).
fn health(config: &Config) -> std::process::ExitCode {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(5);
    fn exchange(mut s: impl Read + Write, plain_http: bool) -> std::io::Result<Option<String>> {
        if !plain_http {
            return Ok(None);
        }
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut answer = String::new();
        s.take(4096).read_to_string(&mut answer)?;
        Ok(Some(answer.lines().next().unwrap_or("").to_string()))
    }
    let addr = config.listen_addr();
    let plain_http = config.tls_cert.is_none();
    let answer = match &addr {
        ListenAddr::Tcp(a) => {
            let mut a = *a;
            if a.ip().is_unspecified() {
                a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            std::net::TcpStream::connect_timeout(&a, timeout).and_then(|s| {
                s.set_read_timeout(Some(timeout))?;
                exchange(s, plain_http)
            })
        }
        ListenAddr::Unix(p) => std::os::unix::net::UnixStream::connect(p).and_then(|s| {
            s.set_read_timeout(Some(timeout))?;
            exchange(s, plain_http)
        }),
    };
    match answer {
        Ok(None) => std::process::ExitCode::SUCCESS,
        Ok(Some(status)) if status.split(' ').nth(1) == Some("200") => {
            std::process::ExitCode::SUCCESS
        }
        Ok(Some(status)) => {
            eprintln!("procnode health: {addr} answered {status:?}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("procnode health: {addr}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Binds `addr` (TCP, TCP with TLS, or a unix socket) and serves until a shutdown signal.
async fn serve_on(addr: ListenAddr, config: Config) -> std::io::Result<()> {
    let cannot =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"));
    match &addr {
        ListenAddr::Tcp(a) => {
            let tcp = tokio::net::TcpListener::bind(a).await.map_err(cannot)?;
            match (&config.tls_cert, &config.tls_key) {
                (Some(cert), Some(key)) => {
                    let clients = ClientCerts::required_by(config.tls_client_ca.as_deref());
                    let tls = clients
                        .and_then(|clients| procnode::tls::server_config(cert, key, clients))
                        .map_err(|e| std::io::Error::other(e.to_string()))?;
                    let listener = procnode::tls::TlsListener::new(tcp, tls)?;
                    procnode::run(listener, config, shutdown_signal()).await
                }
                _ => procnode::run(tcp, config, shutdown_signal()).await,
            }
        }
        ListenAddr::Unix(_) if config.tls_cert.is_some() => Err(std::io::Error::other(
            "TLS is for TCP listeners; a unix socket is protected by its file mode",
        )),
        ListenAddr::Unix(path) => {
            let listener = bind_unix(path).map_err(cannot)?;
            procnode::run(listener, config, shutdown_signal()).await
        }
    }
}

/// A unix socket only procnode's own user can connect to (a stale socket file is replaced).
fn bind_unix(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::symlink_metadata(path)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
    {
        std::fs::remove_file(path)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
