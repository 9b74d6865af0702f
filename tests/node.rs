//! `doppel-node`: the real Doppel server binary, built from this workspace's
//! `doppel-server` library, that the end-to-end tests spawn as a child process.

fn main() -> std::process::ExitCode {
    doppel_server::cli::main()
}
