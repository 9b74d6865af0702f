//! Doppel: a replication server for in-memory block-store databases.
//!
//! Dependencies point one way (a module uses only those to its right):
//!
//! ```text
//! cli → api → cluster → topology, replay → transport → plugins, tenancy → node → txn → log → store
//! ```
//!
//! `remote` (the HTTP client for other nodes' APIs) stands apart: it uses none of them,
//! and `cli`, `topology` and `transport` use it. `docs/ARCHITECTURE.md` draws the same map
//! with what each module owns.

pub mod alloc;
pub mod api;
pub mod cli;
pub mod cluster;
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

/// mimalloc for small blocks, the system allocator for large ones ([`alloc`]); the
/// system allocator alone with the `system-alloc` feature (for heap profilers).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOCATOR: alloc::SplitAlloc = alloc::SplitAlloc;
