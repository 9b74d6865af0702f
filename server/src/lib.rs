//! Doppel: a replication server for in-memory block-store databases.
//!
//! Dependencies point one way (a module uses only those to its right):
//!
//! ```text
//! cli → api → topology, replay → transport → plugins, tenancy → node → txn → log → store
//! ```
//!
//! `remote` (the HTTP client for other nodes' APIs) stands apart: it uses none of them,
//! and `cli`, `topology` and `transport` use it. `docs/ARCHITECTURE.md` draws the same map
//! with what each module owns.

pub mod api;
pub mod cli;
pub mod fuzzing;
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
