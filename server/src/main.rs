//! The `doppel` binary: see [`doppel_server::cli`].

fn main() -> std::process::ExitCode {
    doppel_server::memory::tune();
    doppel_server::cli::main()
}
