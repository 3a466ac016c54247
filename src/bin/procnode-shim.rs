//! `procnode-shim`: the per-container supervisor and the `exec-as` helper alone, without the
//! API, the async runtime, TLS or the cluster client. One runs beside every container, so what
//! each costs in memory is what this executable costs: procnode starts it instead of itself
//! when it is installed beside procnode (see `Config::shim_exe`).
//!
//!     procnode-shim shim NAME      the supervisor of one container run
//!     procnode-shim exec-as SPEC   switch user and exec

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let code = match (args.get(1).map(String::as_str), args.get(2), args.len()) {
        (Some("shim"), Some(name), 3) => procnode::runtime::shim::main(name),
        (Some("exec-as"), Some(spec), 3) => procnode::runtime::process::exec_as_main(spec),
        _ => {
            eprintln!(
                "usage: procnode-shim shim NAME | procnode-shim exec-as SPEC (started by procnode)"
            );
            2
        }
    };
    std::process::ExitCode::from(code as u8)
}
