//! Doppel: a replication server for in-memory block-store databases.
//!
//! Dependencies point one way: `cli` → `api` → `node` → `txn` → `store` / `log`.

pub mod api;
pub mod cli;
pub mod log;
pub mod node;
pub mod store;
pub mod txn;
