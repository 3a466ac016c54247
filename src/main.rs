use clap::Parser;
use procnode::config::{Config, ListenAddr, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    // `procnode shim NAME`: the per-container supervisor, plain blocking code.
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1] == "shim" {
        let code = procnode::runtime::shim::main(&args[2]);
        return std::process::ExitCode::from(code as u8);
    }
    procnode::runtime::process::close_inherited_fds_on_exec();
    serve()
}

#[tokio::main]
async fn serve() -> std::process::ExitCode {
    let config = Config::parse();
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
    if let Err(e) = procnode::runtime::process::become_subreaper() {
        tracing::warn!(error = %e, "cannot become a child subreaper; orphaned pod processes go to PID 1");
    }
    let addr = config.listen_addr();
    let served = match &addr {
        ListenAddr::Tcp(a) => match tokio::net::TcpListener::bind(a).await {
            Ok(l) => procnode::run(l, config, shutdown_signal()).await,
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!("cannot listen on {addr}: {e}"),
            )),
        },
        ListenAddr::Unix(path) => match bind_unix(path) {
            Ok(l) => procnode::run(l, config, shutdown_signal()).await,
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!("cannot listen on {addr}: {e}"),
            )),
        },
    };
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("procnode: {e}");
            std::process::ExitCode::FAILURE
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
