//! The history of a database's log, so a replica re-pointed after a failover is
//! continued by serial instead of being rebuilt (SPEC G4, G5).
//!
//! Serials alone do not say whether two logs hold the same entries: after a promotion
//! the new primary writes serial `n + 1` on its own, and a follower that got serial
//! `n + 1` from the old primary holds another entry under the same number. So every
//! log carries its history, a list of epochs `(epoch, first serial)` in serial order,
//! like PostgreSQL's timeline history: epoch `e` wrote the serials from its first one
//! up to the next epoch's first one. A promotion opens a new epoch at its next serial
//! ([`Replication::open_epoch`]); a primary that was never a replica has one epoch,
//! its stream, from serial 1. One epoch is one primary writing one linear log, so two
//! logs that name the same epoch for serial `s` hold the same entries up to `s` (Raft's
//! log matching).
//!
//! The source sends its history in the handshake's `Hello`, the replica its own in the
//! `Welcome`; [`common`] gives the last serial they share, and the sender decides
//! (`sender::must_bootstrap`): continue from there (the replica discards any tail past
//! it first, `wire::Msg::Follow`), or send a snapshot when the replica's history is
//! unknown or the log no longer reaches back. The replica stores its source's history
//! once it follows it (after `Follow` or a snapshot). Histories live in the node's sled
//! `config` tree (`history/{database uid}`).

use super::Replication;
use crate::node::{Database, Error, Result};

const HISTORY_PREFIX: &str = "history/";

/// One epoch of a log: who wrote it (an id unique per promotion, or the stream of a
/// primary that was never a replica) and its first serial.
pub type Epoch = (u64, u64);

/// The epoch that wrote serial `s` in `history` (None: before the first one).
pub fn epoch_at(history: &[Epoch], s: u64) -> Option<u64> {
    history
        .iter()
        .take_while(|(_, first)| *first <= s)
        .last()
        .map(|(e, _)| *e)
}

/// The last serial two logs share: `ours` holding serials up to `ours_last`, `theirs`
/// up to `theirs_last`. None when either history is unknown (empty) while its log is
/// not.
pub fn common(ours: &[Epoch], ours_last: u64, theirs: &[Epoch], theirs_last: u64) -> Option<u64> {
    let reach = ours_last.min(theirs_last);
    if reach == 0 {
        return Some(0);
    }
    if ours.is_empty() || theirs.is_empty() {
        return None;
    }
    // Both histories are constant between their epochs' first serials: comparing at
    // each of those (and at 1) finds the first serial where they differ.
    let mut points: Vec<u64> = ours
        .iter()
        .chain(theirs)
        .map(|(_, first)| *first)
        .chain([1])
        .filter(|s| *s <= reach)
        .collect();
    points.sort_unstable();
    points.dedup();
    for s in points {
        if epoch_at(ours, s) != epoch_at(theirs, s) {
            return Some(s - 1);
        }
    }
    Some(reach)
}

/// `history` as it stands after a promotion at `serial`: the epochs that wrote up to it,
/// then `epoch` from the next serial.
pub fn promoted(history: &[Epoch], serial: u64, epoch: u64) -> Vec<Epoch> {
    let mut out: Vec<Epoch> = history
        .iter()
        .copied()
        .filter(|(_, first)| *first <= serial)
        .collect();
    out.push((epoch, serial + 1));
    out
}

impl Replication {
    fn history_key(db: &Database) -> String {
        format!("{HISTORY_PREFIX}{}", db.def.uid)
    }

    /// The stored history of `db`'s log (empty: none stored).
    pub(crate) fn stored_history(&self, db: &Database) -> Result<Vec<Epoch>> {
        match self.node.config_value(&Self::history_key(db))? {
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| Error::Unavailable(e.to_string()))
            }
            None => Ok(Vec::new()),
        }
    }

    /// Keep `history` as `db`'s.
    pub(crate) fn save_history(&self, db: &Database, history: &[Epoch]) -> Result<()> {
        let bytes = serde_json::to_vec(history).map_err(|e| Error::Unavailable(e.to_string()))?;
        self.node.set_config_value(&Self::history_key(db), &bytes)
    }

    /// The history of `db`'s log: the stored one; for a database that follows no link
    /// and has none stored, it is the origin of its own stream, which is stored then
    /// (so it stays known once the database becomes a replica); empty (unknown) for a
    /// replica whose source never said.
    pub fn history(&self, db: &Database) -> Result<Vec<Epoch>> {
        let stored = self.stored_history(db)?;
        if !stored.is_empty() || db.replica_of().is_some() {
            return Ok(stored);
        }
        let origin = vec![(self.stream_id(db), 1)];
        self.save_history(db, &origin)?;
        Ok(origin)
    }

    /// A promotion: `db` writes from its next serial on as a new epoch. Returns it.
    pub(crate) fn open_epoch(&self, db: &Database) -> Result<u64> {
        let history = self.stored_history(db)?;
        let serial = db.serials().0;
        let epoch = xxhash_rust::xxh3::xxh3_64(
            format!(
                "{}/{}/{serial}/{}",
                self.node_id,
                db.def.uid,
                crate::txn::clock::wall_us()
            )
            .as_bytes(),
        )
        .max(1);
        self.save_history(db, &promoted(&history, serial, epoch))?;
        Ok(epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_of_the_same_epochs_is_a_prefix_and_a_diverged_tail_is_found() {
        let a = vec![(7, 1)];
        // b was promoted at 100: epoch 9 from 101.
        let b = promoted(&a, 100, 9);
        assert_eq!(b, vec![(7, 1), (9, 101)]);
        // c followed a up to 97: all of it is b's.
        assert_eq!(common(&a, 97, &b, 150), Some(97));
        // The old primary a got to 104 before it died: 101..=104 are not b's.
        assert_eq!(common(&a, 104, &b, 150), Some(100));
        // b has not written beyond the promotion yet: a is ahead, shares 100.
        assert_eq!(common(&a, 104, &b, 100), Some(100));
        // A second promotion of c at 120 (after following b).
        let c = promoted(&b, 120, 11);
        assert_eq!(common(&b, 130, &c, 125), Some(120));
        assert_eq!(common(&a, 104, &c, 125), Some(100));
    }

    #[test]
    fn an_unknown_history_shares_nothing_unless_a_log_is_empty() {
        assert_eq!(common(&[], 5, &[(7, 1)], 10), None);
        assert_eq!(common(&[], 0, &[(7, 1)], 10), Some(0));
        assert_eq!(common(&[(3, 1)], 5, &[(7, 1)], 10), Some(0));
    }
}
