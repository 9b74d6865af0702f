//! One live database: its store, its writer, its open transactions and its log.
//!
//! The database is its own single writer: a write takes the state lock, applies a whole
//! transaction through [`txn::apply`], appends its log chunks to sled in serial order,
//! and lets go. Durability is awaited after the lock is released, so one flush covers
//! many transactions (group commit). Readers take the state lock shared and never see a
//! transaction half-applied.
//!
//! Interactive transactions buffer their operations, holding record locks from the
//! moment an operation is added until commit or cancel; nothing reaches the store before
//! commit, so cancel restores every before image by construction. A batch transaction
//! (`POST …/transactions`) takes no locks of its own: it runs entirely under the state
//! lock, after waiting for any interactive transaction that holds one of its records.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::quorum::Quorum;
use super::records::{self, RecordView};
use crate::log::durable::{RawChunk, SnapshotMeta};
use crate::log::{codec, LogKind, LogStore, TxnLog};
use crate::store::snapshot::SnapshotLayout;
use crate::store::{FileSchema, Schema, Store};
use crate::txn::clock::wall_ms;
use crate::txn::locks::{LockManager, RecordId};
use crate::txn::{self, Op, Sequencer};

/// When a write is acknowledged (SPEC B5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acknowledged from RAM; the log is written in the background and a crash may lose
    /// the last writes (like PostgreSQL's `synchronous_commit = off`).
    None,
    /// Acknowledged after the group flush that covers it.
    #[default]
    Group,
    /// Acknowledged after a flush of its own.
    Sync,
}

/// Retention of B and T logs, each on its own (SPEC B4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    #[serde(default = "Retention::default_b_secs")]
    pub b_secs: u64,
    #[serde(default = "Retention::default_t_secs")]
    pub t_secs: u64,
}

impl Retention {
    fn default_b_secs() -> u64 {
        24 * 3600
    }
    fn default_t_secs() -> u64 {
        7 * 24 * 3600
    }
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            b_secs: Self::default_b_secs(),
            t_secs: Self::default_t_secs(),
        }
    }
}

/// What a client declares when creating a database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSpec {
    pub name: String,
    pub files: Vec<FileSchema>,
    #[serde(default = "DatabaseSpec::default_block_size")]
    pub block_size: usize,
    #[serde(default)]
    pub durability: Durability,
    #[serde(default = "DatabaseSpec::default_quota")]
    pub memory_quota_bytes: u64,
    #[serde(default)]
    pub retention: Retention,
    /// Keep a version per record (`node::versions`), so the database can take part in
    /// mutual replication (SPEC F4): every site accepts writes and concurrent ones are
    /// resolved alike everywhere.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mutual: bool,
}

impl DatabaseSpec {
    /// The store's schema: the declared files, and the versions file of a mutual
    /// database.
    pub fn schema(&self) -> Schema {
        super::versions::schema(&self.files, self.mutual)
    }

    fn default_block_size() -> usize {
        4096
    }
    fn default_quota() -> u64 {
        1 << 30
    }
}

/// A database's persisted definition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseDef {
    pub uid: u64,
    pub tenant: String,
    pub spec: DatabaseSpec,
    pub created_ms: u64,
}

/// Summary of a committed transaction.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Committed {
    pub txn: u64,
    pub first_serial: u64,
    pub last_serial: u64,
    pub count: usize,
}

/// The lock owner a batch checks against: no transaction has number 0, so every
/// holder blocks a batch.
const BATCH_TXN: u64 = 0;

/// Most interactive transactions open at once in one database.
pub const MAX_OPEN_TXNS: usize = 1024;
/// Most operations one interactive transaction may buffer.
pub const MAX_TXN_OPS: usize = 100_000;

struct State {
    store: Store,
    seq: Sequencer,
    snapshot_serial: u64,
    /// A logical replica's position in each source stream it follows.
    positions: BTreeMap<u64, u64>,
}

struct OpenTxn {
    ops: Vec<Op>,
    last_used: Instant,
}

/// A live database.
pub struct Database {
    pub def: DatabaseDef,
    state: RwLock<State>,
    locks: LockManager,
    open: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<OpenTxn>>>>,
    log: Arc<LogStore>,
    /// Serial of the last update in the log (sent once its chunks are in sled, before
    /// they are durable): link senders follow it.
    appended: tokio::sync::watch::Sender<u64>,
    /// The link this database is the replica of; client writes are then refused.
    replica_of: RwLock<Option<String>>,
    /// The gate of this database's synchronous links.
    pub quorum: Quorum,
    /// The point-in-time restore in progress (its id; 0: none): writes are refused until
    /// it ends (`node::restore`).
    restoring: AtomicU64,
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

/// One write a mutual link brings, resolved against this database's schema.
#[derive(Debug, Clone)]
pub struct MutualWrite {
    /// The upsert or delete.
    pub op: Op,
    pub table: usize,
    pub key: Vec<u8>,
    /// The written data (empty for a delete).
    pub data: Vec<u8>,
    pub stamp: super::versions::Stamp,
    /// The record's data before the write where it was made, when known (a
    /// resolver's base).
    pub base_data: Option<Vec<u8>>,
}

/// Two concurrent versions of one record, to be decided.
pub struct Conflict<'a> {
    pub file: &'a str,
    pub key: &'a [u8],
    pub local: super::versions::Stamp,
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
    pub local: super::versions::Stamp,
    pub local_data: Option<Vec<u8>>,
    pub remote: super::versions::Stamp,
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

impl Database {
    /// A new, empty database.
    pub fn create(def: DatabaseDef, log: Arc<LogStore>) -> Database {
        let store = Store::new(
            def.spec.schema(),
            def.spec.block_size,
            def.spec.memory_quota_bytes,
        );
        Self::with_state(def, log, store, Sequencer::new(0, 1), 0)
    }

    fn with_state(
        def: DatabaseDef,
        log: Arc<LogStore>,
        store: Store,
        seq: Sequencer,
        snapshot_serial: u64,
    ) -> Database {
        let last = seq.last_serial;
        let positions = log.positions(def.uid).unwrap_or_default();
        Database {
            def,
            state: RwLock::new(State {
                store,
                seq,
                snapshot_serial,
                positions,
            }),
            locks: LockManager::default(),
            open: Mutex::new(HashMap::new()),
            log,
            appended: tokio::sync::watch::channel(last).0,
            replica_of: RwLock::new(None),
            quorum: Quorum::default(),
            restoring: AtomicU64::new(0),
        }
    }

    /// Rebuild a database from its latest snapshot plus the log after it (SPEC B5).
    /// Returns it with the number of log entries replayed.
    pub fn recover(def: DatabaseDef, log: Arc<LogStore>) -> Result<(Database, u64)> {
        let snapshot = log.snapshots(def.uid)?.pop();
        let (mut store, mut seq, snapshot_serial) = match &snapshot {
            Some(meta) => {
                let packed = log.snapshot_blocks(def.uid, meta)?;
                let store =
                    Store::from_snapshot(meta.layout.clone(), def.spec.memory_quota_bytes, &packed)
                        .map_err(|e| Error::Unavailable(e.to_string()))?;
                (
                    store,
                    Sequencer::new(meta.serial, meta.next_txn),
                    meta.serial,
                )
            }
            None => (
                Store::new(
                    def.spec.schema(),
                    def.spec.block_size,
                    def.spec.memory_quota_bytes,
                ),
                Sequencer::new(0, 1),
                0,
            ),
        };
        let mut replayed = 0u64;
        let mut max_txn = 0;
        let last = log.replay(def.uid, seq.last_serial, |chunk| {
            max_txn = max_txn.max(chunk.txn);
            for entry in &chunk.entries {
                txn::replay_entry(&mut store, entry).map_err(|e| {
                    crate::log::LogError::Damaged(format!("serial {}: {e}", entry.header.serial))
                })?;
            }
            replayed += chunk.entries.len() as u64;
            if let Some(entry) = chunk.entries.last() {
                txn::clock::observe(entry.header.timestamp_us);
            }
            Ok(())
        })?;
        log.drop_torn_tail(def.uid, last)?;
        seq = Sequencer::new(last, seq.next_txn.max(max_txn + 1));
        Ok((
            Self::with_state(def, log, store, seq, snapshot_serial),
            replayed,
        ))
    }

    pub fn name(&self) -> &str {
        &self.def.spec.name
    }

    fn schema_file(&self, store: &Store, name: &str) -> Result<(usize, FileSchema)> {
        let index = store
            .schema()
            .file_index(name)
            .ok_or_else(|| Error::NotFound(format!("file '{name}'")))?;
        Ok((index, store.schema().files[index].clone()))
    }

    /// Read a record by unique key.
    pub fn get(&self, file: &str, key: &str) -> Result<RecordView> {
        let state = self.state.read();
        let (index, schema) = self.schema_file(&state.store, file)?;
        let id = state.store.schema().main_id(index);
        let (placement, record) = state
            .store
            .get(id, key.as_bytes())
            .ok_or_else(|| Error::NotFound(format!("record '{key}'")))?;
        Ok(records::placed_view(&schema, placement, &record))
    }

    /// Records with `from <= key <= to`, in order, at most `limit`; and the next key.
    pub fn scan(
        &self,
        file: &str,
        from: &str,
        to: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<RecordView>, Option<String>)> {
        let state = self.state.read();
        let (index, schema) = self.schema_file(&state.store, file)?;
        let id = state.store.schema().main_id(index);
        let mut out = Vec::new();
        let mut next = None;
        state.store.files()[id as usize].scan_placed(
            from.as_bytes(),
            to.map(str::as_bytes),
            |placement, record| {
                if out.len() == limit {
                    next = Some(String::from_utf8_lossy(record.key).into_owned());
                    return false;
                }
                out.push(records::placed_view(&schema, placement, &record));
                true
            },
        );
        Ok((out, next))
    }

    /// Records whose alternate key `alt` equals `value`.
    pub fn lookup_alt(
        &self,
        file: &str,
        alt: &str,
        value: &str,
        limit: usize,
    ) -> Result<Vec<RecordView>> {
        let state = self.state.read();
        let (index, schema) = self.schema_file(&state.store, file)?;
        let alt_index = schema
            .alt_keys
            .iter()
            .position(|a| a == alt)
            .ok_or_else(|| Error::NotFound(format!("alternate key '{alt}' of file '{file}'")))?;
        Ok(state
            .store
            .lookup_alt(index, alt_index, value.as_bytes(), limit)
            .iter()
            .map(|(placement, r)| records::placed_view(&schema, *placement, r))
            .collect())
    }

    /// Resolve client operations against this database's schema.
    pub fn resolve(&self, inputs: &[records::OpInput]) -> Result<Vec<Op>> {
        let state = self.state.read();
        inputs
            .iter()
            .enumerate()
            .map(|(i, input)| records::resolve(state.store.schema(), input).map_err(|e| e.at_op(i)))
            .collect()
    }

    /// Run `ops` as one atomic transaction (the batched fast path).
    pub async fn execute(&self, ops: &[Op], lock_timeout: Duration) -> Result<Committed> {
        if ops.is_empty() {
            return Err(Error::Malformed(
                "a transaction needs at least one operation".into(),
            ));
        }
        self.check_writable()?;
        if self.quorum.is_active() {
            return self.execute_sync(ops, lock_timeout).await;
        }
        let deadline = Instant::now() + lock_timeout;
        loop {
            // Wait for interactive transactions holding any of these records.
            let records: Vec<RecordId> = if self.locks.is_idle() {
                Vec::new()
            } else {
                ops.iter().map(|op| (op.file, op.key().to_vec())).collect()
            };
            let outcome = {
                let mut state = self.state.write();
                match self.locks.first_blocker(BATCH_TXN, records.iter()) {
                    Some((_, holder)) => Err(holder),
                    None => {
                        let txn = state.seq.next_txn();
                        Ok(self.write_locked(&mut state, txn, ops))
                    }
                }
            };
            match outcome {
                Ok(result) => {
                    let committed = result?;
                    self.await_durable().await?;
                    return Ok(committed);
                }
                Err(holder) => self.locks.wait_release(holder, deadline).await?,
            }
        }
    }

    /// A batch on a database with synchronous links: its records stay locked until the
    /// quorum of replicas confirmed it (SPEC C1), so a second writer of one of them
    /// waits while writers of other records go on.
    async fn execute_sync(&self, ops: &[Op], lock_timeout: Duration) -> Result<Committed> {
        let deadline = Instant::now() + lock_timeout;
        let txn = self.state.write().seq.next_txn();
        let mut records: Vec<RecordId> =
            ops.iter().map(|op| (op.file, op.key().to_vec())).collect();
        // One order for every batch, so two batches never deadlock on each other.
        records.sort();
        records.dedup();
        for record in &records {
            if let Err(err) = self.locks.lock(txn, record, deadline).await {
                self.locks.release_all(txn);
                return Err(err.into());
            }
        }
        let result = {
            let mut state = self.state.write();
            self.write_locked(&mut state, txn, ops)
        };
        let result = match result {
            Ok(committed) => self.await_committed(committed).await,
            Err(e) => Err(e),
        };
        self.locks.release_all(txn);
        result
    }

    /// Wait for local durability and, with synchronous links, for the quorum.
    async fn await_committed(&self, committed: Committed) -> Result<Committed> {
        let (durable, replicated) = tokio::join!(
            self.await_durable(),
            self.quorum.wait(committed.last_serial)
        );
        durable?;
        replicated.map_err(|t| {
            Error::ReplicationTimeout(format!(
                "transaction {} is committed on this node, but only {} of the {} synchronous \
                 replicas needed confirmed it within {} ms; it will reach them when they \
                 reconnect",
                committed.txn, t.confirmed, t.needed, t.waited_ms
            ))
        })?;
        Ok(committed)
    }

    /// Client writes are refused on a replica: its data comes through its link; and
    /// during a point-in-time restore, which would discard them.
    fn check_writable(&self) -> Result<()> {
        self.check_not_restoring()?;
        match &*self.replica_of.read() {
            Some(link) => Err(Error::ReadOnlyReplica(format!(
                "database '{}' is a replica (link {link}): it takes writes only through its \
                 link; write to its source",
                self.name()
            ))),
            None => Ok(()),
        }
    }

    fn check_not_restoring(&self) -> Result<()> {
        match self.restoring.load(Ordering::SeqCst) {
            0 => Ok(()),
            id => Err(Error::RestoreInProgress(format!(
                "database '{}' is being restored to an earlier point (restore {id}): writes \
                 are refused until the restore ends",
                self.name()
            ))),
        }
    }

    /// Apply a transaction and append its log, under the state lock.
    fn write_locked(&self, state: &mut State, txn: u64, ops: &[Op]) -> Result<Committed> {
        // Checked under the state lock that `begin_restore` takes to set the flag, so no
        // write lands after a restore captured the store.
        self.check_not_restoring()?;
        let State { store, seq, .. } = state;
        // A mutual database writes each record's new version with it: one more
        // operation after each of the client's.
        let stamped = if self.def.spec.mutual {
            Some(super::versions::stamp(store, ops)?)
        } else {
            None
        };
        let per_op = if stamped.is_some() { 2 } else { 1 };
        match txn::apply(store, seq, txn, stamped.as_deref().unwrap_or(ops)) {
            Ok(log) => {
                self.append(&log)?;
                Ok(Committed {
                    txn,
                    first_serial: log.first_serial().unwrap_or(seq.last_serial),
                    last_serial: log.last_serial().unwrap_or(seq.last_serial),
                    count: ops.len(),
                })
            }
            Err(refused) => {
                self.append(&refused.log)?;
                Err(Error::Store(refused.error).at_op(refused.index / per_op))
            }
        }
    }

    fn append(&self, log: &TxnLog) -> Result<()> {
        self.log.append(self.def.uid, log).map_err(|e| {
            tracing::error!(database = %self.name(), error = %e, "log append failed");
            Error::from(e)
        })?;
        if let Some(last) = log.last_serial() {
            self.appended.send_replace(last);
        }
        Ok(())
    }

    /// Follow the serial of the last update in the log.
    pub fn subscribe_appended(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// The link this database is a replica of, if any.
    pub fn replica_of(&self) -> Option<String> {
        self.replica_of.read().clone()
    }

    /// Make this database the replica of `link` (refusing client writes), or writable
    /// again (`None`: detached or promoted).
    pub fn set_replica_of(&self, link: Option<String>) {
        *self.replica_of.write() = link;
    }

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
        let mut state = self.state.write();
        let expected = state.seq.last_serial + 1;
        if last_serial < expected {
            return Ok(ReplicaApply::Duplicate);
        }
        if first_serial != expected {
            return Ok(ReplicaApply::Gap(expected));
        }
        for chunk in a_chunks() {
            let decoded = codec::decode(&chunk.bytes).map_err(|e| {
                Error::Unavailable(format!("replicated chunk of transaction {txn}: {e}"))
            })?;
            for entry in &decoded.entries {
                txn::replay_entry(&mut state.store, entry).map_err(|e| {
                    Error::Unavailable(format!(
                        "replicated update {} does not apply: {e}",
                        entry.header.serial
                    ))
                })?;
            }
        }
        state.seq.last_serial = last_serial;
        state.seq.next_txn = state.seq.next_txn.max(txn + 1);
        self.log.append_raw(self.def.uid, chunks)?;
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
        use super::versions::{self as v, Stamp, Version};
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
            Error::Malformed(format!(
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
        let log = match txn::apply(store, seq, txn, &ops) {
            Ok(log) => log,
            Err(refused) => {
                // The refused attempt is logged; the position stays.
                self.log.append(self.def.uid, &refused.log)?;
                return Err(Error::Store(refused.error).at_op(refused.index));
            }
        };
        match position {
            Some((stream, at)) => {
                self.log
                    .append_with_position(self.def.uid, &log, stream, at)?;
                state.positions.insert(stream, at);
            }
            None => self.log.append(self.def.uid, &log)?,
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
        self.log.delete_database(self.def.uid)?;
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

    /// A frozen copy of the store with its serial and next transaction number (for
    /// streaming a bootstrap snapshot without holding the writer).
    pub fn freeze(&self) -> (Store, u64, u64) {
        let state = self.state.read();
        (
            state.store.freeze(),
            state.seq.last_serial,
            state.seq.next_txn,
        )
    }

    /// Repair block file `file` (a name from the checksums) from its source's copy; see
    /// [`Store::repair_file`]. The repaired state is then stored as a snapshot, so a
    /// restart keeps it. Returns how many blocks were replaced.
    pub async fn repair_blocks(
        self: &Arc<Self>,
        file: &str,
        layout: crate::store::file::FileLayout,
        used: &[u32],
        blocks: Vec<(u32, crate::store::block::Block)>,
    ) -> Result<usize> {
        let replaced = {
            let mut state = self.state.write();
            let index = block_file_index(&state.store, file)?;
            state
                .store
                .repair_file(index, layout, used, blocks)
                .map_err(Error::Malformed)?
        };
        self.snapshot().await?;
        Ok(replaced)
    }

    /// Flip a byte of a block (fault injection for tests of verify and repair).
    #[cfg(feature = "fault-injection")]
    pub fn corrupt_block(&self, file: &str, number: u32) -> Result<()> {
        let mut state = self.state.write();
        let index = block_file_index(&state.store, file)?;
        let block = state
            .store
            .file_mut(index as crate::store::FileId)
            .and_then(|f| f.block_mut(number))
            .ok_or_else(|| Error::NotFound(format!("block {number} of '{file}'")))?;
        let bytes = block.bytes_mut();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x5A;
        Ok(())
    }

    /// Wait for the durability this database promises.
    pub async fn await_durable(&self) -> Result<()> {
        match self.def.spec.durability {
            Durability::None => Ok(()),
            Durability::Group => {
                let ticket = self.log.request_flush();
                Ok(self.log.wait_durable(ticket).await?)
            }
            Durability::Sync => {
                let log = self.log.clone();
                tokio::task::spawn_blocking(move || log.flush_now())
                    .await
                    .map_err(|e| Error::Unavailable(e.to_string()))??;
                Ok(())
            }
        }
    }

    /// Open an interactive transaction.
    pub fn begin(&self) -> Result<u64> {
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
            return Err(Error::Malformed(format!(
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
        let open = handle.lock().await;
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
            self.write_locked(&mut state, txn, &open.ops)
        };
        if self.quorum.is_active() {
            // Synchronous links: the locks are held until the quorum confirmed.
            let result = match result {
                Ok(c) if c.count > 0 => self.await_committed(c).await,
                other => other,
            };
            self.locks.release_all(txn);
            return result;
        }
        self.locks.release_all(txn);
        let committed = result?;
        if committed.count > 0 {
            self.await_durable().await?;
        }
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

    /// Take a compact snapshot (SPEC G1): freeze under the lock, write without it.
    pub async fn snapshot(self: &Arc<Self>) -> Result<SnapshotMeta> {
        let (frozen, serial, next_txn) = {
            let state = self.state.read();
            (
                state.store.freeze(),
                state.seq.last_serial,
                state.seq.next_txn,
            )
        };
        let db = self.clone();
        let meta = tokio::task::spawn_blocking(move || -> Result<SnapshotMeta> {
            let (layout, blocks) = frozen.snapshot_parts();
            let meta = SnapshotMeta {
                serial,
                next_txn,
                created_ms: wall_ms(),
                parts: 0,
                size_bytes: 0,
                layout,
            };
            let meta = db.log.save_snapshot(db.def.uid, meta, &blocks)?;
            db.compact_after_snapshot()?;
            Ok(meta)
        })
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))??;
        let mut state = self.state.write();
        state.snapshot_serial = state.snapshot_serial.max(meta.serial);
        Ok(meta)
    }

    /// Keep the two newest snapshots and the A log from the older of them on.
    fn compact_after_snapshot(&self) -> Result<()> {
        let snapshots = self.log.snapshots(self.def.uid)?;
        if snapshots.len() > 2 {
            for old in &snapshots[..snapshots.len() - 2] {
                self.log.delete_snapshot(self.def.uid, old)?;
            }
        }
        if let Some(keep_from) = snapshots.iter().rev().nth(1) {
            self.log
                .prune_through(self.def.uid, LogKind::A, keep_from.serial)?;
        }
        Ok(())
    }

    /// Stored snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<SnapshotMeta>> {
        Ok(self.log.snapshots(self.def.uid)?)
    }

    /// Drop B and T log chunks past their retention.
    pub fn enforce_retention(&self) -> Result<usize> {
        let now_us = wall_ms() * 1000;
        let retention = self.def.spec.retention;
        let b = self.log.prune_older_than(
            self.def.uid,
            LogKind::B,
            now_us.saturating_sub(retention.b_secs * 1_000_000),
        )?;
        let t = self.log.prune_older_than(
            self.def.uid,
            LogKind::T,
            now_us.saturating_sub(retention.t_secs * 1_000_000),
        )?;
        Ok(b + t)
    }

    /// Serial of the last applied update and of the last snapshot.
    pub fn serials(&self) -> (u64, u64) {
        let state = self.state.read();
        (state.seq.last_serial, state.snapshot_serial)
    }

    /// A point of this database's history for interrelation (SPEC D): `(serial, us)`
    /// such that every update stamped at or before `us` has a serial at or below
    /// `serial`, and every later update is stamped after `us`. Read under the writer
    /// lock, so no commit is half done.
    pub fn stable_point(&self) -> (u64, u64) {
        let state = self.state.read();
        (state.seq.last_serial, txn::clock::last_us())
    }

    /// Bytes of blocks in RAM (cheap: no walk over the blocks).
    pub fn memory_bytes(&self) -> u64 {
        self.state.read().store.memory_bytes()
    }

    /// Bytes of log and snapshots this database keeps in sled (counted once when the
    /// database opens, then kept up to date by every write and prune).
    pub fn stored_bytes(&self) -> Result<u64> {
        Ok(self.log.stored_bytes(self.def.uid)?)
    }

    /// Figures for the database info: per-file record counts and memory in use.
    pub fn info(&self) -> DatabaseInfo {
        let state = self.state.read();
        let schema = state.store.schema();
        let files = schema
            .files
            .iter()
            .enumerate()
            .map(|(index, file)| {
                let id = schema.main_id(index);
                let records = state.store.files()[id as usize]
                    .blocks()
                    .map(|(_, b)| b.count() as u64)
                    .sum();
                FileInfo {
                    name: file.name.clone(),
                    alt_keys: file.alt_keys.clone(),
                    records,
                }
            })
            .collect();
        DatabaseInfo {
            name: self.def.spec.name.clone(),
            files,
            block_size: self.def.spec.block_size,
            durability: self.def.spec.durability,
            memory_quota_bytes: self.def.spec.memory_quota_bytes,
            memory_bytes: state.store.memory_bytes(),
            retention: self.def.spec.retention,
            last_serial: state.seq.last_serial,
            snapshot_serial: state.snapshot_serial,
            created_ms: self.def.created_ms,
        }
    }

    /// Per-block checksums, file by file.
    pub fn checksums(&self) -> Vec<(String, Vec<(u32, u64)>)> {
        self.state.read().store.checksums()
    }

    /// The schema (for log views).
    pub fn schema(&self) -> Schema {
        self.state.read().store.schema().clone()
    }

    pub fn log_store(&self) -> &LogStore {
        &self.log
    }
}

/// A database as the API shows it.
#[derive(Debug, Serialize)]
pub struct DatabaseInfo {
    pub name: String,
    pub files: Vec<FileInfo>,
    pub block_size: usize,
    pub durability: Durability,
    pub memory_quota_bytes: u64,
    pub memory_bytes: u64,
    pub retention: Retention,
    pub last_serial: u64,
    pub snapshot_serial: u64,
    pub created_ms: u64,
}

/// A file as the API shows it.
#[derive(Debug, Serialize)]
pub struct FileInfo {
    pub name: String,
    pub alt_keys: Vec<String>,
    pub records: u64,
}

/// The index of block file `file` (`table` or `table#alt`) in a store.
fn block_file_index(store: &Store, file: &str) -> Result<usize> {
    store
        .schema()
        .block_file_names()
        .iter()
        .position(|n| n == file)
        .ok_or_else(|| Error::NotFound(format!("block file '{file}'")))
}
