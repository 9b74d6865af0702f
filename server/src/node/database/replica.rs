//! The replica side of a database: everything that writes into it from a link instead
//! of from a client.
//!
//! Four forms apply what a link brings, one per kind of link, all under the state lock
//! like a local write:
//! - [`Database::apply_replicated`] (mirror, SPEC C2): the source's log chunks go in
//!   unchanged, with the source's serials. The replica's last serial *is* its position:
//!   a chunk applies only if it starts right after it, so serials are applied in order
//!   exactly once ([`ReplicaApply::Gap`] and [`ReplicaApply::Duplicate`] otherwise).
//! - [`Database::apply_logical`] (logical, SPEC C4): the link's operations become a
//!   transaction of this database, with serials of its own; how far the replica got in
//!   each source stream is a separate *position*, stored in the same sled batch as the
//!   transaction, so a restart resumes exactly after the last applied one.
//! - [`Database::apply_mutual`] (mutual, SPEC F4): like logical, after comparing each
//!   write's version with the one held here and deciding conflicts.
//! - [`Database::apply_redriven`]: a logical transaction that moves no position (dead
//!   letters re-driven, the records of a logical bootstrap).
//!
//! Positions only move forward, one transaction at a time; the one exception is the end
//! of a logical bootstrap ([`Database::set_position`]), which puts the replica wherever
//! the snapshot stood. A mirror's bootstrap replaces the whole store
//! ([`Database::install_snapshot`]).
//!
//! A replica refuses client writes (`replica_of`, in the parent module); a mutual
//! database takes both.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Database, State};
use crate::log::durable::{RawChunk, SnapshotMeta};
use crate::log::{codec, LogKind, LogStore};
use crate::node::error::{Error, Result};
use crate::node::versions;
use crate::store::snapshot::SnapshotLayout;
use crate::store::Store;
use crate::txn::clock::wall_ms;
use crate::txn::{self, Op, Sequencer};

/// One write a mutual link brings, resolved against this database's schema.
#[derive(Debug, Clone)]
pub struct MutualWrite {
    /// The upsert or delete.
    pub op: Op,
    pub table: usize,
    pub key: Vec<u8>,
    /// The written data (empty for a delete).
    pub data: Vec<u8>,
    pub stamp: versions::Stamp,
    /// The record's data before the write where it was made, when known (a
    /// resolver's base).
    pub base_data: Option<Vec<u8>>,
}

/// Two concurrent versions of one record, to be decided.
pub struct Conflict<'a> {
    pub file: &'a str,
    pub key: &'a [u8],
    pub local: versions::Stamp,
    /// The local data; None when the local version is a delete.
    pub local_data: Option<&'a [u8]>,
    pub remote: &'a MutualWrite,
}

/// What a conflict's decision keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Local,
    Remote,
    /// A merge of both (data), stored with the later of the two versions.
    Merged(Vec<u8>),
}

/// A conflict met and how it was decided, for the conflict log.
#[derive(Debug, Clone)]
pub struct ConflictSeen {
    pub file: String,
    pub key: Vec<u8>,
    pub local: versions::Stamp,
    pub local_data: Option<Vec<u8>>,
    pub remote: versions::Stamp,
    pub remote_data: Option<Vec<u8>>,
    pub decision: Decision,
}

/// What a replica did with a replicated transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaApply {
    /// Applied; the replica is now at this serial.
    Applied(u64),
    /// Already applied before (a duplicate); nothing changed.
    Duplicate,
    /// A transaction is missing before it: the replica expects this serial next.
    Gap(u64),
}

/// A bootstrap snapshot installed in memory, still to be stored in sled.
pub struct SnapshotSave {
    log: Arc<LogStore>,
    uid: u64,
    serial: u64,
    next_txn: u64,
    frozen: Store,
}

impl SnapshotSave {
    /// Store the snapshot (blocking: it writes every block and flushes).
    pub fn save(self) -> Result<()> {
        let (layout, blocks) = self.frozen.snapshot_parts();
        let meta = SnapshotMeta {
            serial: self.serial,
            next_txn: self.next_txn,
            created_ms: wall_ms(),
            parts: 0,
            size_bytes: 0,
            layout,
        };
        self.log.save_snapshot(self.uid, meta, &blocks)?;
        Ok(())
    }
}

impl Database {
    /// Apply a transaction replicated from a mirror source: its A entries through the
    /// same store function as every write, and its chunks, unchanged, into this
    /// database's log in one atomic batch. The log then says how far the replica got,
    /// so a restart resumes exactly after the last applied transaction.
    pub fn apply_replicated(&self, chunks: &[RawChunk]) -> Result<ReplicaApply> {
        let a_chunks = || chunks.iter().filter(|c| c.head.kind == LogKind::A);
        let (Some(first), Some(last)) = (a_chunks().next(), a_chunks().next_back()) else {
            return Err(Error::Malformed(
                "a replicated transaction has no A log".into(),
            ));
        };
        let (first_serial, last_serial, txn) = (
            first.head.first_serial,
            last.head.last_serial,
            first.head.txn,
        );
        let _cpu = self.usage.charge_cpu();
        let mut state = self.state.write();
        let expected = state.seq.last_serial + 1;
        if last_serial < expected {
            return Ok(ReplicaApply::Duplicate);
        }
        if first_serial != expected {
            return Ok(ReplicaApply::Gap(expected));
        }
        // The updates apply in serial order, each exactly once: the chunks of one
        // transaction follow each other with no gap, as the source's sequencer made them.
        let mut next = first_serial;
        for chunk in a_chunks() {
            debug_assert_eq!(
                chunk.head.first_serial, next,
                "A chunks out of serial order"
            );
            let decoded = codec::decode(&chunk.bytes).map_err(|e| {
                Error::Unavailable(format!("replicated chunk of transaction {txn}: {e}"))
            })?;
            for entry in &decoded.entries {
                debug_assert_eq!(entry.header.serial, next, "replicated update out of order");
                next += 1;
                txn::replay_entry(&mut state.store, entry).map_err(|e| {
                    Error::Unavailable(format!(
                        "replicated update {} does not apply: {e}",
                        entry.header.serial
                    ))
                })?;
            }
        }
        debug_assert_eq!(next, last_serial + 1, "replicated transaction incomplete");
        state.seq.last_serial = last_serial;
        state.seq.next_txn = state.seq.next_txn.max(txn + 1);
        self.append_or_reload(&mut state, || self.log.append_raw(self.def.uid, chunks))?;
        self.appended.send_replace(last_serial);
        Ok(ReplicaApply::Applied(last_serial))
    }

    /// A logical replica's position in source stream `stream`: the last source serial it
    /// applied from it (0: none).
    pub fn position(&self, stream: u64) -> u64 {
        self.state
            .read()
            .positions
            .get(&stream)
            .copied()
            .unwrap_or(0)
    }

    /// Apply a transaction of a logical link (SPEC C4) from source stream `stream`: its
    /// operations, already through the link's stages, as a transaction of this database
    /// (serials of its own), with the source's `first..=last` serials recorded as the
    /// stream's position in the same sled batch. Several streams may feed one database
    /// (many-to-one), each with its own position. Puts are upserts and deletes of absent
    /// records are skipped, so the apply is idempotent by key; a transaction with no
    /// operations only moves the position.
    pub fn apply_logical(
        &self,
        stream: u64,
        first: u64,
        last: u64,
        ops: Vec<Op>,
    ) -> Result<ReplicaApply> {
        let _cpu = self.usage.charge_cpu();
        let mut state = self.state.write();
        let position = state.positions.get(&stream).copied().unwrap_or(0);
        if last <= position {
            return Ok(ReplicaApply::Duplicate);
        }
        if first != position + 1 {
            return Ok(ReplicaApply::Gap(position + 1));
        }
        self.apply_logical_locked(&mut state, Some((stream, last)), ops)?;
        Ok(ReplicaApply::Applied(last))
    }

    /// Apply writes of a mutual link (SPEC F4) from stream `stream` (`position`: the
    /// source serials `first..=last` it covers; None for a bootstrap's records), under
    /// the writer lock: each write is compared with the version this database holds of
    /// its record.
    /// * The same version: already here (a retransmission, a bootstrap) — skipped.
    /// * The write was made on the version held here: it follows it — applied.
    /// * Otherwise the two are concurrent: `decide` picks local, remote or a merge,
    ///   and the conflict is returned for the conflict log.
    ///
    /// Every remote version raises this node's clock past it, so a later local write of
    /// the record is stamped after it (the hybrid logical clock).
    pub fn apply_mutual(
        &self,
        stream: u64,
        position: Option<(u64, u64)>,
        writes: Vec<MutualWrite>,
        decide: &mut dyn FnMut(&Conflict<'_>) -> Decision,
    ) -> Result<(ReplicaApply, Vec<ConflictSeen>)> {
        use versions::{self as v, Stamp, Version};
        let _cpu = self.usage.charge_cpu();
        let mut state = self.state.write();
        if let Some((first, last)) = position {
            let at = state.positions.get(&stream).copied().unwrap_or(0);
            if last <= at {
                return Ok((ReplicaApply::Duplicate, Vec::new()));
            }
            if first != at + 1 {
                return Ok((ReplicaApply::Gap(at + 1), Vec::new()));
            }
        }
        let schema = state.store.schema().clone();
        let versions = v::versions_id(&schema).ok_or_else(|| {
            Error::Invalid(format!(
                "database '{}' keeps no record versions: a mutual link needs a database \
                 created with \"mutual\": true",
                self.name()
            ))
        })?;
        let mut ops = Vec::with_capacity(writes.len() * 2);
        let mut conflicts = Vec::new();
        // Versions given by earlier writes of this transaction.
        type Held = (Stamp, Option<Vec<u8>>);
        let mut within: HashMap<(usize, Vec<u8>), Held> = HashMap::new();
        for w in &writes {
            txn::clock::observe(w.stamp.t);
            let name = &schema.files[w.table].name;
            let (local, local_record) = match within.get(&(w.table, w.key.clone())) {
                Some((s, r)) => (*s, r.clone()),
                None => {
                    let stamp =
                        v::current(&state.store, versions, name, &w.key).unwrap_or_default();
                    let record = state
                        .store
                        .get(schema.main_id(w.table), &w.key)
                        .map(|(_, r)| crate::store::encode_owned(&r));
                    (stamp, record)
                }
            };
            if local.version() == w.stamp.version() {
                continue;
            }
            let decision = if local.version() == w.stamp.base()
                || local.version() == Version::default()
            {
                Decision::Remote
            } else {
                let local_data = local_record
                    .as_deref()
                    .and_then(crate::store::block::decode)
                    .map(|r| r.data.to_vec());
                let conflict = Conflict {
                    file: name,
                    key: &w.key,
                    local,
                    local_data: local_data.as_deref(),
                    remote: w,
                };
                let decision = decide(&conflict);
                conflicts.push(ConflictSeen {
                    file: name.clone(),
                    key: w.key.clone(),
                    local,
                    local_data,
                    remote: w.stamp,
                    remote_data: (w.op.kind != crate::log::OpKind::Delete).then(|| w.data.clone()),
                    decision: decision.clone(),
                });
                decision
            };
            let (op, stamp) = match decision {
                Decision::Local => continue,
                Decision::Remote => (w.op.clone(), w.stamp),
                Decision::Merged(data) => {
                    // The merge carries the later version, so both sites store it alike;
                    // its alternate keys are that version's.
                    let remote_record = (w.op.kind != crate::log::OpKind::Delete)
                        .then_some(w.op.payload.as_slice());
                    let (later, other) = if w.stamp.version() > local.version() {
                        (remote_record, local_record.as_deref())
                    } else {
                        (local_record.as_deref(), remote_record)
                    };
                    let record = later.or(other).and_then(crate::store::block::decode);
                    let alts: Vec<(u8, Vec<u8>)> = record
                        .map(|r| r.alts().map(|(i, v)| (i, v.to_vec())).collect())
                        .unwrap_or_default();
                    let alts: Vec<(u8, &[u8])> =
                        alts.iter().map(|(i, v)| (*i, v.as_slice())).collect();
                    let mut payload = Vec::new();
                    crate::store::encode_record(&mut payload, &w.key, &alts, &data);
                    let winner = w.stamp.version().max(local.version());
                    let op = Op {
                        kind: crate::log::OpKind::Upsert,
                        file: schema.main_id(w.table),
                        payload,
                    };
                    let stamp = Stamp {
                        t: winner.t,
                        o: winner.o,
                        bt: w.stamp.bt,
                        bo: w.stamp.bo,
                        del: false,
                    };
                    (op, stamp)
                }
            };
            let record = (op.kind != crate::log::OpKind::Delete).then(|| op.payload.clone());
            ops.push(op);
            ops.push(v::stamp_op(versions, name, &w.key, &stamp)?);
            within.insert((w.table, w.key.clone()), (stamp, record));
        }
        let at = position.map(|(_, last)| (stream, last));
        self.apply_logical_locked(&mut state, at, ops)?;
        let applied = position.map_or(0, |(_, last)| last);
        Ok((ReplicaApply::Applied(applied), conflicts))
    }

    /// End a logical bootstrap from stream `stream`: the replica now stands at `serial`
    /// of it (the records came through [`Self::apply_redriven`]).
    pub fn set_position(&self, stream: u64, serial: u64) -> Result<()> {
        let mut state = self.state.write();
        self.apply_logical_locked(&mut state, Some((stream, serial)), Vec::new())
    }

    /// Apply operations a link re-drove from its dead letters (a logical replica): a
    /// transaction of this database like [`Self::apply_logical`]'s, which moves no
    /// stream's position.
    pub fn apply_redriven(&self, ops: Vec<Op>) -> Result<()> {
        let _cpu = self.usage.charge_cpu();
        let mut state = self.state.write();
        self.apply_logical_locked(&mut state, None, ops)
    }

    /// Apply `ops` as one transaction and store `(stream, position)` with it. Deletes of
    /// absent records are skipped (idempotent by key).
    fn apply_logical_locked(
        &self,
        state: &mut State,
        position: Option<(u64, u64)>,
        mut ops: Vec<Op>,
    ) -> Result<()> {
        ops.retain(|op| {
            op.kind != crate::log::OpKind::Delete || state.store.get(op.file, &op.payload).is_some()
        });
        let txn = state.seq.next_txn();
        let State { store, seq, .. } = &mut *state;
        let carries_ops = !ops.is_empty();
        let log = match txn::apply(store, seq, txn, ops) {
            Ok(log) => log,
            Err(refused) => {
                // The refused attempt is logged; the position stays.
                self.append_or_reload(state, || self.log.append(self.def.uid, &refused.log))?;
                return Err(Error::Store(refused.error).at_op(refused.index));
            }
        };
        match position {
            Some((stream, at)) => {
                // A transaction moves its stream forward only (its callers checked it
                // follows the position); only the end of a bootstrap, which carries no
                // operations, may put the stream anywhere.
                debug_assert!(
                    !carries_ops || state.positions.get(&stream).is_none_or(|p| at > *p),
                    "stream {stream} moved back to {at}"
                );
                self.append_or_reload(state, || {
                    self.log
                        .append_with_position(self.def.uid, &log, stream, at)
                })?;
                state.positions.insert(stream, at);
            }
            None => self.append_or_reload(state, || self.log.append(self.def.uid, &log))?,
        }
        if let Some(serial) = log.last_serial() {
            self.appended.send_replace(serial);
        }
        Ok(())
    }

    /// Replace this database's contents with a snapshot streamed from its source
    /// (bootstrap, SPEC C5): the old log and snapshots go, and the replica continues
    /// from `serial` at once. The returned [`SnapshotSave`] stores the snapshot so a
    /// restart recovers from it; until it has run, a crash recovers an empty database
    /// (the log after `serial` has no snapshot to start from), which the source then
    /// bootstraps again, so confirm nothing past `serial` before it ran.
    pub fn install_snapshot(
        &self,
        layout: SnapshotLayout,
        blocks: Vec<crate::store::block::Block>,
        serial: u64,
        next_txn: u64,
    ) -> Result<SnapshotSave> {
        if layout.schema.files != self.def.spec.files
            || layout.block_size as usize != self.def.spec.block_size
        {
            return Err(Error::Malformed(format!(
                "the snapshot's files or block size differ from database '{}'",
                self.name()
            )));
        }
        let store = Store::from_snapshot_blocks(layout, self.def.spec.memory_quota_bytes, blocks)
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        let mut state = self.state.write();
        self.log.reset_database(self.def.uid)?;
        let frozen = store.freeze();
        state.store = store;
        state.seq = Sequencer::new(serial, next_txn);
        state.snapshot_serial = serial;
        self.appended.send_replace(serial);
        Ok(SnapshotSave {
            log: self.log.clone(),
            uid: self.def.uid,
            serial,
            next_txn,
            frozen,
        })
    }
}
