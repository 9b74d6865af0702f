//! Doppel: a replication server for in-memory block-store databases.
//!
//! Dependencies point one way: `cli` → `api` → `topology` / `transport` → `node` → `txn` →
//! `store` / `log`.

pub mod api;
pub mod cli;
pub mod log;
pub mod node;
pub mod plugins;
pub mod remote;
pub mod replay;
pub mod store;
pub mod tenancy;
pub mod topology;
pub mod transport;
pub mod txn;

/// mimalloc: the write path allocates per record (JSON parsing, record encoding, log
/// chunks) from several threads, where glibc malloc spent a quarter of the CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
