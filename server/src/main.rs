//! The `doppel` binary: see [`doppel_server::cli`].

fn main() -> std::process::ExitCode {
    doppel_server::cli::tune_allocator();
    doppel_server::cli::main()
}
