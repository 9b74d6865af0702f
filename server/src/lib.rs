//! Doppel: a replication server for in-memory block-store databases.
//!
//! Dependencies point one way: `api` → `node` → `txn` → `store` / `log`.

pub mod log;
pub mod store;
pub mod txn;
