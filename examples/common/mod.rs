//! What the benchmark and the chaos run share: each re-runs its own executable as procnode
//! (`EXE --serve FLAGS`), and that procnode starts the same executable again as the
//! supervisor of each container (`EXE shim NAME`) and to switch users (`EXE exec-as SPEC`).

/// Runs this process as one of those roles when its arguments name one, and exits; returns
/// for the program's own run.
pub fn run_as_procnode_if_asked(args: &[String]) {
    if args.len() == 3 && args[1] == "shim" {
        std::process::exit(procnode::runtime::shim::main(&args[2]));
    }
    if args.len() == 3 && args[1] == "exec-as" {
        std::process::exit(procnode::runtime::process::exec_as_main(&args[2]));
    }
    if args.get(1).map(String::as_str) == Some("--serve") {
        serve(&args[2..]);
        std::process::exit(0);
    }
}

/// procnode itself, as `main.rs` runs it, on an ephemeral port it prints as `LISTEN ADDR`,
/// until SIGTERM.
fn serve(args: &[String]) {
    procnode::runtime::process::become_subreaper().expect("subreaper");
    let mut all = vec!["procnode".to_string()];
    all.extend_from_slice(args);
    let config = procnode::Config::parse_from_env_free(all);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            println!("LISTEN {}", listener.local_addr().unwrap());
            let shutdown = async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .unwrap();
                term.recv().await;
            };
            procnode::run(listener, config, shutdown).await.unwrap();
        });
}

/// Starts this executable as procnode (`--serve ARGS`, stdout piped, stderr dropped) and reads
/// the address it listens on: the child and `http://ADDR`.
pub fn spawn_serving(
    args: &[&std::ffi::OsStr],
    env: &[(&str, &str)],
) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--serve")
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("LISTEN ")
        .expect("LISTEN line")
        .to_string();
    (child, format!("http://{addr}"))
}
