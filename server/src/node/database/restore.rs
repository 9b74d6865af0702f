//! The database's side of a point-in-time restore ([`crate::node::restore`]).
//!
//! A restore works on a frozen copy of the store, off the writer, and installs its
//! result at the end. In between, the database must not change: [`Database::begin_restore`]
//! sets the `restoring` flag under the state lock, and every write checks it under the
//! same lock (`check_not_restoring`), so no write lands after the copy was taken and
//! none is lost when the restored store replaces the live one. [`Database::finish_restore`]
//! installs the result only if the database is still at the serial the restore started
//! from; [`Database::end_restore`] gives up without changing anything.

use std::sync::atomic::Ordering;

use super::Database;
use crate::node::error::{Error, Result};
use crate::store::Store;
use crate::txn::Sequencer;

impl Database {
    /// Start a point-in-time restore in place (or into this new database): from now on
    /// every write is refused, so the returned frozen store and sequencer stay the
    /// database's state until [`Self::finish_restore`] or [`Self::end_restore`].
    pub(crate) fn begin_restore(&self, id: u64) -> Result<(Store, Sequencer)> {
        let state = self.state.write();
        self.check_not_restoring()?;
        if let Some(link) = &*self.replica_of.read() {
            return Err(Error::ReadOnlyReplica(format!(
                "database '{}' is a replica (link {link}): its data comes through its link, \
                 so it cannot be restored in place; restore its source, or restore into a \
                 new database",
                self.name()
            )));
        }
        self.restoring.store(id, Ordering::SeqCst);
        Ok((state.store.freeze(), state.seq.clone()))
    }

    /// A consistent copy of the store and sequencer, for reading (dry runs, restores into
    /// another database): every update up to the sequencer's serial is in the log.
    pub(crate) fn frozen_state(&self) -> (Store, Sequencer) {
        let state = self.state.read();
        (state.store.freeze(), state.seq.clone())
    }

    /// End restore `id`: install the restored store, whose transactions the log already
    /// holds durably, with the sequencer after them. Writes are taken again.
    pub(crate) fn finish_restore(
        &self,
        id: u64,
        expected_last: u64,
        store: Store,
        seq: Sequencer,
    ) -> Result<()> {
        let mut state = self.state.write();
        if self.restoring.load(Ordering::SeqCst) != id || state.seq.last_serial != expected_last {
            return Err(Error::Unavailable(format!(
                "database '{}' changed during restore {id}",
                self.name()
            )));
        }
        let last = seq.last_serial;
        state.store = store;
        state.seq = seq;
        self.restoring.store(0, Ordering::SeqCst);
        self.appended.send_replace(last);
        Ok(())
    }

    /// Give up restore `id` without changing anything.
    pub(crate) fn end_restore(&self, id: u64) {
        let _ = self
            .restoring
            .compare_exchange(id, 0, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// The restore in progress, if any.
    pub fn restoring(&self) -> Option<u64> {
        Some(self.restoring.load(Ordering::SeqCst)).filter(|id| *id != 0)
    }
}
