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
//!
//! The process uses the system allocator (glibc malloc), on purpose. mimalloc was the
//! allocator until the log and snapshots left sled; since then glibc keeps a node's RSS
//! at 1.6× the raw bytes after a 1M-record load, where mimalloc kept 3.3× (memory the
//! write path had freed). Bulk loads and single-connection commits measured within the
//! noise of mimalloc; 64 concurrent sync clients may be slower with glibc, which three
//! interleaved rounds on an idle machine have still to settle (docs/BENCHMARKS.md,
//! issue 24, fourth part). [`memory`] tunes it. Heap profilers that hook malloc
//! (heaptrack) see every allocation.

pub mod api;
pub mod cli;
pub mod cluster;
pub mod fuzzing;
pub mod log;
pub mod memory;
pub mod node;
pub mod plugins;
pub mod remote;
pub mod replay;
pub mod store;
pub mod tenancy;
pub mod topology;
pub mod transport;
pub mod txn;
