//! Interactive transactions: operations sent over several requests and committed, or
//! cancelled, as one.
//!
//! An open transaction buffers its operations and holds a record lock on each, from the
//! moment the operation is added until commit or cancel. Nothing reaches the store before
//! commit, so cancel restores every before image by construction, and a reader never
//! sees a transaction half done. Deadlocks between open transactions are detected when a
//! lock is requested ([`crate::txn::locks`]); the transaction that would close the cycle
//! is cancelled. A batch (`Database::execute`) waits for every open transaction holding
//! one of its records.
//!
//! With synchronous links the locks stay held until the quorum confirmed the commit, so
//! a second writer of one of its records waits for that confirmation.
//!
//! Bounds: at most [`MAX_OPEN_TXNS`] open at once per database, [`MAX_TXN_OPS`]
//! operations each; transactions idle too long are cancelled by the node's upkeep
//! ([`Database::cancel_idle`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Committed, Database};
use crate::node::error::{Error, Result};
use crate::txn::Op;

/// Most interactive transactions open at once in one database.
pub const MAX_OPEN_TXNS: usize = 1024;
/// Most operations one interactive transaction may buffer.
pub const MAX_TXN_OPS: usize = 100_000;

pub(super) struct OpenTxn {
    ops: Vec<Op>,
    last_used: Instant,
}

impl Database {
    /// How many interactive transactions are open.
    pub fn open_transactions(&self) -> usize {
        self.open.lock().len()
    }

    /// Open an interactive transaction. Refused on a database the write gate guards (a
    /// parallel one, SPEC F5): the transaction would hold the gate across requests.
    pub fn begin(&self) -> Result<u64> {
        if self.guarding_gate().is_some() {
            return Err(Error::Invalid(format!(
                "database '{}' is parallel: it takes batch and single-record writes, whose \
                 records are locked on every site for the length of one request (an \
                 interactive transaction would hold other sites' locks across requests)",
                self.name()
            )));
        }
        self.check_fence()?;
        self.check_writable()?;
        let mut open = self.open.lock();
        if open.len() >= MAX_OPEN_TXNS {
            return Err(Error::Unavailable(format!(
                "database '{}' already has {MAX_OPEN_TXNS} open transactions",
                self.name()
            )));
        }
        let txn = self.state.write().seq.next_txn();
        open.insert(
            txn,
            Arc::new(tokio::sync::Mutex::new(OpenTxn {
                ops: Vec::new(),
                last_used: Instant::now(),
            })),
        );
        Ok(txn)
    }

    fn open_txn(&self, txn: u64) -> Result<Arc<tokio::sync::Mutex<OpenTxn>>> {
        self.open
            .lock()
            .get(&txn)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("open transaction {txn}")))
    }

    /// Add operations to an open transaction, locking their records. On deadlock the
    /// transaction is cancelled.
    pub async fn add(&self, txn: u64, ops: Vec<Op>, lock_timeout: Duration) -> Result<usize> {
        let handle = self.open_txn(txn)?;
        let mut open = handle.lock().await;
        if !self.open.lock().contains_key(&txn) {
            return Err(Error::NotFound(format!("open transaction {txn}")));
        }
        if open.ops.len() + ops.len() > MAX_TXN_OPS {
            return Err(Error::Invalid(format!(
                "a transaction holds at most {MAX_TXN_OPS} operations"
            )));
        }
        let deadline = Instant::now() + lock_timeout;
        for op in &ops {
            let record = (op.file, op.key().to_vec());
            if let Err(err) = self.locks.lock(txn, &record, deadline).await {
                if matches!(err, crate::txn::locks::LockError::Deadlock { .. }) {
                    self.open.lock().remove(&txn);
                    self.locks.release_all(txn);
                }
                return Err(err.into());
            }
        }
        open.ops.extend(ops);
        open.last_used = Instant::now();
        Ok(open.ops.len())
    }

    /// Number of buffered operations of an open transaction.
    pub async fn pending(&self, txn: u64) -> Result<usize> {
        Ok(self.open_txn(txn)?.lock().await.ops.len())
    }

    /// Commit an open transaction.
    pub async fn commit(&self, txn: u64) -> Result<Committed> {
        let handle = self.open_txn(txn)?;
        let mut open = handle.lock().await;
        if self.open.lock().remove(&txn).is_none() {
            return Err(Error::NotFound(format!("open transaction {txn}")));
        }
        let result = if open.ops.is_empty() {
            let last = self.state.read().seq.last_serial;
            Ok(Committed {
                txn,
                first_serial: last,
                last_serial: last,
                count: 0,
            })
        } else {
            let mut state = self.state.write();
            // Removed from the open transactions above: its operations are written now.
            self.write_locked(&mut state, txn, std::mem::take(&mut open.ops))
        };
        if self.quorum.is_active() {
            // Synchronous links: the locks are held until the quorum confirmed.
            let result = match result {
                Ok(c) if c.count > 0 => self.await_committed(c).await,
                other => other,
            };
            self.locks.release_all(txn);
            return result.and_then(|c| self.check_fence().map(|_| c));
        }
        self.locks.release_all(txn);
        let committed = result?;
        if committed.count > 0 {
            self.await_durable().await?;
        }
        self.check_fence()?;
        Ok(committed)
    }

    /// Cancel an open transaction: drop its operations and release its locks.
    pub fn cancel(&self, txn: u64) -> Result<()> {
        self.open
            .lock()
            .remove(&txn)
            .ok_or_else(|| Error::NotFound(format!("open transaction {txn}")))?;
        self.locks.release_all(txn);
        Ok(())
    }

    /// Cancel transactions idle longer than `idle`; returns how many.
    pub fn cancel_idle(&self, idle: Duration) -> usize {
        let stale: Vec<u64> = self
            .open
            .lock()
            .iter()
            .filter(|(_, t)| t.try_lock().is_ok_and(|t| t.last_used.elapsed() > idle))
            .map(|(txn, _)| *txn)
            .collect();
        stale
            .iter()
            .filter(|txn| self.cancel(**txn).is_ok())
            .count()
    }
}
