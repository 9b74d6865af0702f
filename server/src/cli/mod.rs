//! The `doppel` command line: `serve` runs a node; the other subcommands are a client
//! of a running node's REST API (`plugin` and `link` among them: a plugin author's
//! commands, some of which run locally), plus `bench` which measures one.

mod bench;
mod bench_link;
mod bench_postgres;
mod bench_tenants;
mod client;
mod demo;
mod link;
mod plugin;
mod plugin_new;
mod progress;
mod restore;
mod serve;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Doppel: replication for in-memory block-store databases.
#[derive(Parser, Debug)]
#[command(name = "doppel", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node (defaults: data in ./doppel-data, API on 127.0.0.1:7070).
    Serve(serve::ServeArgs),
    /// Mint a token for a tenant and role with the node's key (offline).
    Token(token::TokenArgs),
    /// Measure a node: batched writes and point reads, replication, neighbours, footprint.
    Bench(bench::BenchArgs),
    /// Write, build, test and upload plugins: new, build, test, upload, list, dry-run, delete.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Restore a database to a serial or a time (in place or --into a new one), following it.
    Restore(restore::RestoreArgs),
    /// Links from this node's databases: create, stages, show, list.
    #[command(subcommand)]
    Link(link::LinkCommand),
    #[command(flatten)]
    Client(client::ClientCommand),
}

/// Entry point of the `doppel` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Token(args) => token::run(args),
        Command::Plugin(command) => plugin::run(command),
        Command::Link(command) => link::run(command),
        Command::Restore(args) => restore::run(args),
        Command::Client(command) => client::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("doppel: {message}");
            ExitCode::FAILURE
        }
    }
}
