//! Transactions (SPEC B1–B3, local part): numbering, applying a transaction's
//! operations to the store as its database's single writer, and cancel.
//!
//! [`apply`] runs a transaction's operations in order through [`Store::apply`] and
//! turns each change into an [`Update`] with the next serial number. If an operation is
//! refused halfway (a duplicate key, a full quota...), the updates already made are
//! undone from their before images, newest first, and those undo updates are logged
//! too: the log then replays to exactly the same blocks (SPEC A3) and says what happened
//! (SPEC B3). Record locks for interactive transactions live in [`locks`].

pub mod clock;
pub mod locks;

use crate::log::{Header, OpKind, Outcome, TxnLog, Update};
use crate::store::{block, Applied, Effect, FileId, Mutation, PutMode, Store, StoreError};

/// One operation of a transaction, resolved against the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub kind: OpKind,
    pub file: FileId,
    /// The encoded record for puts; the unique key for deletes.
    pub payload: Vec<u8>,
}

impl Op {
    /// The unique key this operation touches.
    pub fn key(&self) -> &[u8] {
        match self.kind {
            OpKind::Delete => &self.payload,
            _ => block::decode(&self.payload).map_or(&[][..], |r| r.key),
        }
    }
}

/// Serial numbers, transaction numbers and timestamps of one database.
#[derive(Debug, Clone, Default)]
pub struct Sequencer {
    /// Serial of the last update applied.
    pub last_serial: u64,
    /// Next transaction number to hand out.
    pub next_txn: u64,
}

impl Sequencer {
    pub fn new(last_serial: u64, next_txn: u64) -> Sequencer {
        Sequencer {
            last_serial,
            next_txn: next_txn.max(1),
        }
    }

    pub fn next_txn(&mut self) -> u64 {
        let txn = self.next_txn;
        self.next_txn += 1;
        txn
    }

    fn update(
        &mut self,
        txn: u64,
        file: FileId,
        applied: Applied,
        after: Option<Vec<u8>>,
        op: Option<OpKind>,
        undo: bool,
    ) -> Update {
        self.last_serial += 1;
        Update {
            header: Header {
                serial: self.last_serial,
                txn,
                effect: applied.effect,
                file,
                block: applied.placement.block,
                offset: applied.placement.offset,
                timestamp_us: clock::next_us(),
                undo,
            },
            after,
            before: applied.before,
            op,
        }
    }
}

/// A transaction refused at operation `index`; its partial effects were undone.
#[derive(Debug)]
pub struct Refused {
    pub index: usize,
    pub error: StoreError,
    /// The log of what was applied and undone (empty updates if nothing was applied).
    pub log: TxnLog,
}

/// Apply `ops` as transaction `txn`. On success, the log of a committed transaction; on
/// refusal, nothing remains changed and the log of the cancelled attempt.
pub fn apply(
    store: &mut Store,
    seq: &mut Sequencer,
    txn: u64,
    ops: Vec<Op>,
) -> Result<TxnLog, Refused> {
    store.begin(txn);
    let mut updates = Vec::with_capacity(ops.len());
    for (index, op) in ops.into_iter().enumerate() {
        let mutation = match op.kind.put_mode() {
            Some(mode) => Mutation::Put {
                file: op.file,
                mode,
                record: &op.payload,
            },
            None => Mutation::Delete {
                file: op.file,
                key: &op.payload,
            },
        };
        match store.apply(mutation) {
            Ok(applied) => {
                let reorg = applied.reorg;
                // The record becomes the after image as it is: no copy.
                let after = (op.kind != OpKind::Delete).then_some(op.payload);
                updates.push(seq.update(txn, op.file, applied, after, Some(op.kind), false));
                reorganise(store, seq, txn, reorg, false, &mut updates);
            }
            Err(error) => {
                undo(store, seq, txn, &mut updates);
                return Err(Refused {
                    index,
                    error,
                    log: TxnLog {
                        txn,
                        outcome: Outcome::Cancelled,
                        updates,
                    },
                });
            }
        }
    }
    Ok(TxnLog {
        txn,
        outcome: Outcome::Committed,
        updates,
    })
}

/// Apply and log the reorganisation a put asked for.
fn reorganise(
    store: &mut Store,
    seq: &mut Sequencer,
    txn: u64,
    reorg: Option<(FileId, u32)>,
    undo: bool,
    updates: &mut Vec<Update>,
) {
    if let Some((file, block)) = reorg {
        let applied = store
            .apply(Mutation::Reorg { file, block })
            .expect("a chain the store reported can be reorganised");
        updates.push(seq.update(txn, file, applied, None, None, undo));
    }
}

/// Restore the before images of `updates`, newest first, logging each restore.
fn undo(store: &mut Store, seq: &mut Sequencer, txn: u64, updates: &mut Vec<Update>) {
    for index in (0..updates.len()).rev() {
        let forward = &updates[index];
        if forward.header.undo || forward.header.effect == Effect::Reorg {
            continue;
        }
        let (file, effect) = (forward.header.file, forward.header.effect);
        let (before, after) = (forward.before.clone(), forward.after.clone());
        let result = match (effect, before) {
            (Effect::Insert, _) => {
                let after = after.expect("an insert has an after image");
                let key = block::decode(&after)
                    .expect("logged records decode")
                    .key
                    .to_vec();
                let applied = store.apply_unchecked(Mutation::Delete { file, key: &key });
                applied.map(|a| (a, None))
            }
            (_, Some(before)) => store
                .apply_unchecked(Mutation::Put {
                    file,
                    mode: PutMode::Upsert,
                    record: &before,
                })
                .map(|a| (a, Some(before))),
            (_, None) => continue,
        };
        let (applied, after) = result.expect("restoring a before image cannot be refused");
        let reorg = applied.reorg;
        updates.push(seq.update(txn, file, applied, after, None, true));
        reorganise(store, seq, txn, reorg, true, updates);
    }
}

/// Apply the A entries of a logged transaction during replay (restart, and later
/// replicas). Uses the same store function as every other write.
pub fn replay_entry(store: &mut Store, entry: &crate::log::EntryRef<'_>) -> Result<(), StoreError> {
    store.begin(entry.header.txn);
    let applied = store.apply_unchecked(replay_mutation(entry)?)?;
    // SPEC A5: replay is deterministic, so a record lands exactly where the log says it
    // landed when it was written. A different place means the blocks have diverged
    // from the ones the log describes (a mirror would no longer be block-identical).
    debug_assert!(
        !matches!(entry.header.effect, Effect::Insert | Effect::Update)
            || (applied.placement.block, applied.placement.offset)
                == (entry.header.block, entry.header.offset),
        "replay of serial {} placed the record at {:?}, the log says block {} offset {}",
        entry.header.serial,
        applied.placement,
        entry.header.block,
        entry.header.offset
    );
    Ok(())
}

/// The store mutation an A entry stands for (what [`replay_entry`] applies).
pub fn replay_mutation<'a>(entry: &crate::log::EntryRef<'a>) -> Result<Mutation<'a>, StoreError> {
    let file = entry.header.file;
    Ok(match entry.header.effect {
        Effect::Insert | Effect::Update => Mutation::Put {
            file,
            mode: PutMode::Upsert,
            record: entry.image.ok_or(StoreError::Malformed)?,
        },
        Effect::Delete => Mutation::Delete {
            file,
            key: entry.key.ok_or(StoreError::Malformed)?,
        },
        Effect::Reorg => Mutation::Reorg {
            file,
            block: entry.header.block,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::codec;
    use crate::log::LogKind;
    use crate::store::{encode_record, FileSchema, Schema};

    fn store(quota: u64) -> Store {
        let schema = Schema {
            files: vec![FileSchema {
                name: "t".into(),
                alt_keys: vec!["a".into()],
            }],
        };
        Store::new(schema, 512, quota)
    }

    fn put(kind: OpKind, key: &str, data: &[u8]) -> Op {
        let mut payload = Vec::new();
        encode_record(&mut payload, key.as_bytes(), &[(0, b"alt")], data);
        Op {
            kind,
            file: 0,
            payload,
        }
    }

    fn replay(log: &TxnLog, into: &mut Store) {
        for (_, bytes) in codec::encode(log, LogKind::A) {
            for entry in codec::decode(&bytes).unwrap().entries {
                replay_entry(into, &entry).unwrap();
            }
        }
    }

    #[test]
    fn committed_updates_carry_every_b2_field() {
        let mut s = store(1 << 20);
        let mut seq = Sequencer::new(0, 1);
        let txn = seq.next_txn();
        let log = apply(
            &mut s,
            &mut seq,
            txn,
            vec![
                put(OpKind::Insert, "k", b"1"),
                put(OpKind::Update, "k", b"2"),
            ],
        )
        .unwrap();
        assert_eq!(log.outcome, Outcome::Committed);
        let [first, second] = &log.updates[..] else {
            panic!("two updates")
        };
        assert_eq!((first.header.serial, second.header.serial), (1, 2));
        assert_eq!(first.header.effect, Effect::Insert);
        assert_eq!(second.header.effect, Effect::Update);
        assert!(second.before.is_some() && first.before.is_none());
        assert!(second.header.timestamp_us >= first.header.timestamp_us);
        assert_eq!(s.get(0, b"k").unwrap().0.block, second.header.block);
        assert_eq!(s.get(0, b"k").unwrap().0.offset, second.header.offset);
    }

    #[test]
    fn a_refused_operation_restores_every_before_image_and_replays_identically() {
        let mut s = store(1 << 20);
        let mut seq = Sequencer::new(0, 1);
        let setup = apply(
            &mut s,
            &mut seq,
            1,
            vec![
                put(OpKind::Insert, "a", b"old-a"),
                put(OpKind::Insert, "b", b"old-b"),
            ],
        )
        .unwrap();
        let mut ops: Vec<Op> = (0..50)
            .map(|i| put(OpKind::Insert, &format!("n{i:03}"), &[1; 40]))
            .collect();
        ops.push(put(OpKind::Update, "a", b"new-a"));
        ops.push(Op {
            kind: OpKind::Delete,
            file: 0,
            payload: b"b".to_vec(),
        });
        ops.push(put(OpKind::Insert, "a", b"dup"));
        let refused = apply(&mut s, &mut seq, 2, ops).unwrap_err();
        assert_eq!(refused.index, 52);
        assert_eq!(refused.error, StoreError::DuplicateKey);
        assert_eq!(refused.log.outcome, Outcome::Cancelled);
        assert_eq!(s.get(0, b"a").unwrap().1.data, b"old-a");
        assert_eq!(s.get(0, b"b").unwrap().1.data, b"old-b");
        assert!(s.get(0, b"n001").is_none());
        assert_eq!(s.lookup_alt(0, 0, b"alt", 100).len(), 2);
        // A replica replaying both logs ends byte-identical to the primary.
        let mut replica = store(1 << 20);
        replay(&setup, &mut replica);
        replay(&refused.log, &mut replica);
        assert_eq!(replica.checksums(), s.checksums());
    }

    /// Batches of consecutive keys committed slightly out of order, as concurrent
    /// loaders commit them: each lands below keys already there.
    fn load_out_of_order(s: &mut Store, seq: &mut Sequencer, logs: &mut Vec<TxnLog>) {
        let batch = |b: usize| -> Vec<Op> {
            (b * 100..(b + 1) * 100)
                .map(|i| put(OpKind::Upsert, &format!("k{i:06}"), &[b'x'; 100]))
                .collect()
        };
        for pair in (0..40).step_by(2) {
            for b in [pair + 1, pair] {
                let txn = seq.next_txn();
                logs.push(apply(s, seq, txn, batch(b)).unwrap());
            }
        }
    }

    #[test]
    fn ascending_runs_into_the_middle_fill_their_blocks_and_replay_identically() {
        let mut s = store(1 << 30);
        let mut seq = Sequencer::new(0, 1);
        let mut logs = Vec::new();
        load_out_of_order(&mut s, &mut seq, &mut logs);

        // The same records in key order: the fill an out-of-order load should get near.
        let mut in_order = store(1 << 30);
        let mut seq2 = Sequencer::new(0, 1);
        for b in 0..40 {
            let ops: Vec<Op> = (b * 100..(b + 1) * 100)
                .map(|i| put(OpKind::Upsert, &format!("k{i:06}"), &[b'x'; 100]))
                .collect();
            let txn = seq2.next_txn();
            apply(&mut in_order, &mut seq2, txn, ops).unwrap();
        }
        let blocks = |s: &Store| s.files()[0].blocks().count();
        assert!(
            blocks(&s) * 100 <= blocks(&in_order) * 105,
            "{} blocks out of order, {} in order",
            blocks(&s),
            blocks(&in_order)
        );

        // A replica replaying the log lands every record where the log says
        // (`replay_entry` checks each placement) and ends byte-identical.
        let mut replica = store(1 << 30);
        for log in &logs {
            replay(log, &mut replica);
        }
        assert_eq!(replica.checksums(), s.checksums());

        // So does a recovery from a snapshot taken between two transactions of a run,
        // then the log after it, while the writer goes on.
        let half = logs.len() / 2;
        let mut before = store(1 << 30);
        for log in &logs[..half] {
            replay(log, &mut before);
        }
        let frozen = before.freeze();
        let (layout, parts) = frozen.snapshot_parts();
        let packed: Vec<u8> = parts.iter().flat_map(|b| b.as_bytes().to_vec()).collect();
        let mut recovered = Store::from_snapshot(layout, 1 << 30, &packed).unwrap();
        for log in &logs[half..] {
            replay(log, &mut recovered);
        }
        assert_eq!(recovered.checksums(), s.checksums());
    }
}
