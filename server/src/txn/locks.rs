//! Record locks with bounded waits and deadlock detection (SPEC B1).
//!
//! A record is named by (file id, unique key). A lock belongs to one open transaction
//! until it commits or is cancelled. A transaction that finds a record locked waits,
//! at most until its deadline. Each waiting transaction waits for exactly one holder,
//! so the wait-for graph is a set of chains: a new wait closes a cycle exactly when
//! following the chain from the holder leads back to the waiter. The waiter that would
//! close the cycle is the victim; it is told so at once and its caller cancels it.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::store::FileId;

/// A lockable record.
pub type RecordId = (FileId, Vec<u8>);

/// Why a lock was not granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    #[error("timed out after {waited_ms} ms waiting for a record locked by transaction {holder}")]
    Timeout { holder: u64, waited_ms: u64 },
    #[error("deadlock: transaction {victim} waits for {holder}, which waits for it; {victim} is cancelled")]
    Deadlock { victim: u64, holder: u64 },
    /// Across the sites of a parallel database (`transport::parallel`).
    #[error("deadlock across sites: {0}")]
    SiteDeadlock(String),
    #[error("timed out waiting for a record another site holds: {0}")]
    SiteTimeout(String),
}

#[derive(Default)]
struct LockTable {
    holders: HashMap<RecordId, u64>,
    held_by: HashMap<u64, Vec<RecordId>>,
    waits_for: HashMap<u64, u64>,
}

impl LockTable {
    /// Whether `from` reaches `to` through the waits-for chain.
    fn reaches(&self, mut from: u64, to: u64) -> bool {
        let mut steps = 0;
        while let Some(next) = self.waits_for.get(&from) {
            if *next == to {
                return true;
            }
            from = *next;
            steps += 1;
            if steps > self.waits_for.len() {
                return false;
            }
        }
        false
    }
}

/// The record locks of one database.
#[derive(Default)]
pub struct LockManager {
    table: Mutex<LockTable>,
    released: Notify,
}

impl LockManager {
    /// Whether no transaction holds any lock (lets batches skip lock checks).
    pub fn is_idle(&self) -> bool {
        self.table.lock().holders.is_empty()
    }

    /// The holder of `record`'s lock, if another transaction than `txn` holds it.
    pub fn blocker(&self, txn: u64, record: &RecordId) -> Option<u64> {
        self.table
            .lock()
            .holders
            .get(record)
            .copied()
            .filter(|h| *h != txn)
    }

    /// The first holder (other than `txn`) among `records`.
    pub fn first_blocker<'a>(
        &self,
        txn: u64,
        records: impl IntoIterator<Item = &'a RecordId>,
    ) -> Option<(RecordId, u64)> {
        let table = self.table.lock();
        if table.holders.is_empty() {
            return None;
        }
        records.into_iter().find_map(|r| {
            table
                .holders
                .get(r)
                .filter(|h| **h != txn)
                .map(|h| (r.clone(), *h))
        })
    }

    /// Lock `record` for `txn`, waiting until `deadline` at most.
    pub async fn lock(
        &self,
        txn: u64,
        record: &RecordId,
        deadline: Instant,
    ) -> Result<(), LockError> {
        let started = Instant::now();
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let holder = {
                let mut table = self.table.lock();
                match table.holders.get(record).copied() {
                    None => {
                        table.holders.insert(record.clone(), txn);
                        table.held_by.entry(txn).or_default().push(record.clone());
                        table.waits_for.remove(&txn);
                        return Ok(());
                    }
                    Some(holder) if holder == txn => {
                        table.waits_for.remove(&txn);
                        return Ok(());
                    }
                    Some(holder) => {
                        if holder == txn || table.reaches(holder, txn) {
                            table.waits_for.remove(&txn);
                            return Err(LockError::Deadlock {
                                victim: txn,
                                holder,
                            });
                        }
                        table.waits_for.insert(txn, holder);
                        holder
                    }
                }
            };
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                self.table.lock().waits_for.remove(&txn);
                return Err(LockError::Timeout {
                    holder,
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
        }
    }

    /// Wait until `holder` releases its locks or `deadline` passes (for transactions
    /// that hold no locks themselves, such as batches).
    pub async fn wait_release(&self, holder: u64, deadline: Instant) -> Result<(), LockError> {
        let started = Instant::now();
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.table.lock().held_by.contains_key(&holder) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                return Err(LockError::Timeout {
                    holder,
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
        }
    }

    /// Release every lock of `txn` and wake the waiters.
    pub fn release_all(&self, txn: u64) {
        let mut table = self.table.lock();
        table.waits_for.remove(&txn);
        if let Some(records) = table.held_by.remove(&txn) {
            for record in records {
                table.holders.remove(&record);
            }
        }
        drop(table);
        self.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn rec(key: &str) -> RecordId {
        (0, key.as_bytes().to_vec())
    }

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn a_waiter_gets_the_lock_when_the_holder_releases() {
        let locks = Arc::new(LockManager::default());
        locks.lock(1, &rec("a"), soon(1000)).await.unwrap();
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.lock(2, &rec("a"), soon(5000)).await })
        };
        // The waiter is blocked until the holder lets go.
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        locks.release_all(1);
        waiter.await.unwrap().unwrap();
        assert_eq!(locks.blocker(1, &rec("a")), Some(2));
    }

    #[tokio::test]
    async fn a_wait_times_out() {
        let locks = LockManager::default();
        locks.lock(1, &rec("a"), soon(1000)).await.unwrap();
        let err = locks.lock(2, &rec("a"), soon(50)).await.unwrap_err();
        assert!(matches!(err, LockError::Timeout { holder: 1, .. }));
    }

    #[tokio::test]
    async fn a_cycle_is_detected_and_the_closer_is_the_victim() {
        let locks = Arc::new(LockManager::default());
        locks.lock(1, &rec("a"), soon(1000)).await.unwrap();
        locks.lock(2, &rec("b"), soon(1000)).await.unwrap();
        let first = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.lock(1, &rec("b"), soon(5000)).await })
        };
        // Let transaction 1 register its wait on 2.
        while !locks.table.lock().waits_for.contains_key(&1) {
            tokio::task::yield_now().await;
        }
        let err = locks.lock(2, &rec("a"), soon(5000)).await.unwrap_err();
        assert_eq!(
            err,
            LockError::Deadlock {
                victim: 2,
                holder: 1
            }
        );
        locks.release_all(2);
        first.await.unwrap().unwrap();
    }
}
