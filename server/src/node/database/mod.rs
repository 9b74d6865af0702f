//! One live database: its store, its writer, its log, and how it is read and written.
//!
//! The database is its own single writer: a write takes the state lock, applies a whole
//! transaction through [`txn::apply`], appends its log chunks to sled in serial order,
//! and lets go. Durability is awaited after the lock is released, so one flush covers
//! many transactions (group commit). Readers take the state lock shared and never see a
//! transaction half-applied.
//!
//! A batch transaction ([`Database::execute`], `POST …/transactions` and every
//! single-record call) takes no locks of its own: it runs entirely under the state lock,
//! after waiting for any interactive transaction that holds one of its records. With
//! synchronous links it locks its records until the quorum confirmed it.
//!
//! Every write checks, under the state lock, that the database takes client writes: not
//! a replica (its data comes only through its link) and not being restored.
//!
//! The rest of a database lives in child modules, each extending [`Database`]:
//! - `interactive`: interactive transactions, which hold record locks across requests;
//! - `replica`: what links write into a replica (mirror, logical, mutual) and its
//!   positions in its sources' streams;
//! - `restore`: the hooks a point-in-time restore freezes and replaces the store with;
//! - `repair`: blocks repaired in place from a source's copy.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::gate::WriteGate;
use super::quorum::Quorum;
use super::records::{self, RecordView};
use crate::log::durable::SnapshotMeta;
use crate::log::{LogKind, LogStore};
use crate::store::{FileSchema, Schema, Store};
use crate::txn::clock::wall_ms;
use crate::txn::locks::{LockManager, RecordId};
use crate::txn::{self, Op, Sequencer};

mod interactive;
mod repair;
mod replica;
mod restore;

use interactive::OpenTxn;
pub use interactive::{MAX_OPEN_TXNS, MAX_TXN_OPS};
pub use replica::{Conflict, ConflictSeen, Decision, MutualWrite, ReplicaApply, SnapshotSave};

/// When a write is acknowledged (SPEC B5).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
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

/// Retention of B and T logs, each on its own (SPEC B4): a chunk goes once it is older
/// than its kind's period, or once the kind holds more bytes than its bound, oldest
/// first (like Kafka's `retention.ms` and `retention.bytes`). Without a size bound the
/// logs of a database that keeps updating the same records grow without end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Retention {
    #[serde(default = "Retention::default_b_secs")]
    pub b_secs: u64,
    #[serde(default = "Retention::default_t_secs")]
    pub t_secs: u64,
    /// Most bytes of B log kept (default: [`Retention::default_bytes`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b_bytes: Option<u64>,
    /// Most bytes of T log kept (default: [`Retention::default_bytes`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t_bytes: Option<u64>,
}

/// The floor of the default size bound of a B or T log.
pub const MIN_DEFAULT_LOG_BYTES: u64 = 64 << 20;

/// See [`Database::wants_snapshot`].
fn snapshot_due(entries_since: u64, every_entries: u64, a_bytes: u64, memory_bytes: u64) -> bool {
    entries_since > 0
        && (entries_since >= every_entries
            || a_bytes >= Retention::default_bytes(memory_bytes).saturating_mul(2))
}

impl Retention {
    /// The size bound of a B or T log when none is set: the database's blocks in RAM,
    /// at least [`MIN_DEFAULT_LOG_BYTES`]. So each of the two logs holds at most about
    /// as much as the live data (plus the time bound's reach, whichever is shorter), and
    /// point-in-time restore by B log reaches back over roughly one rewrite of the data.
    pub fn default_bytes(memory_bytes: u64) -> u64 {
        memory_bytes.max(MIN_DEFAULT_LOG_BYTES)
    }

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
            b_bytes: None,
            t_bytes: None,
        }
    }
}

/// What a client declares when creating a database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSpec {
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub name: String,
    #[schemars(length(min = 1))]
    pub files: Vec<FileSchema>,
    #[serde(default = "DatabaseSpec::default_block_size")]
    #[schemars(range(min = 512, max = 32768))]
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
#[derive(Debug, Clone, Copy, Serialize, schemars::JsonSchema)]
pub struct Committed {
    pub txn: u64,
    pub first_serial: u64,
    pub last_serial: u64,
    pub count: usize,
}

/// The lock owner a batch checks against: no transaction has number 0, so every
/// holder blocks a batch.
const BATCH_TXN: u64 = 0;

/// How long a client write waits for a flush to bring the log's backlog under the
/// bound before it is refused ([`Database::admit_past_backlog`]).
const BACKLOG_WAIT: Duration = Duration::from_secs(2);

struct State {
    store: Store,
    seq: Sequencer,
    snapshot_serial: u64,
    /// A logical replica's position in each source stream it follows.
    positions: BTreeMap<u64, u64>,
}

/// What [`Database::load`] rebuilt from a snapshot and the log.
struct Loaded {
    store: Store,
    seq: Sequencer,
    snapshot_serial: u64,
    replayed: u64,
    /// Snapshots that failed their checksums or could not be read: (serial, reason).
    damaged: Vec<(u64, String)>,
}

impl Loaded {
    /// The refusal when snapshots were damaged and the log did not reach the newest of
    /// them: anything less would serve older data than was acknowledged.
    fn short_of_damaged(&self, name: &str) -> Option<Error> {
        let (newest, _) = self.damaged.first()?;
        let last = self.seq.last_serial;
        if last >= *newest {
            return None;
        }
        let from = match self.snapshot_serial {
            0 => "the log alone (no older snapshot reads)".to_string(),
            s => format!("the older snapshot at serial {s} with the log after it"),
        };
        let reasons: Vec<String> = self
            .damaged
            .iter()
            .map(|(serial, reason)| format!("snapshot {serial} is damaged ({reason})"))
            .collect();
        Some(Error::Unavailable(format!(
            "database '{name}' cannot be recovered without losing updates: {}; \
             {from} reaches only serial {last}, short of serial {newest}",
            reasons.join("; ")
        )))
    }
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
    /// The rule client writes pass before they commit ([`super::gate`]).
    gate: RwLock<Option<Arc<dyn WriteGate>>>,
    /// In a cluster: whether this node may acknowledge writes now ([`super::fence`]).
    fence: RwLock<Option<Arc<dyn super::fence::Fence>>>,
    /// CPU time and operations, for the tenant's usage ([`super::usage`]).
    pub usage: super::usage::Usage,
    /// The origin this node's writes carry in a mutual database's versions, set by the
    /// node ([`super::Node::set_origin`]).
    origin: AtomicU64,
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
            gate: RwLock::new(None),
            fence: RwLock::new(None),
            usage: super::usage::Usage::default(),
            origin: AtomicU64::new(0),
        }
    }

    /// Rebuild a database from its latest snapshot plus the log after it (SPEC B5).
    /// Returns it with the number of log entries replayed.
    ///
    /// A snapshot that fails its checksums (or cannot be read at all) is named in an
    /// error in the node's log, and recovery tries the next older one (or none) with the
    /// log after it. That is only good if the replay then reaches every damaged
    /// snapshot's serial: anything less would serve older data than was acknowledged, so
    /// the database is refused instead, with the reason. Once recovered, the damaged
    /// snapshots leave the listing and their files are kept in the shard's
    /// `damaged-snapshots` folder.
    pub fn recover(def: DatabaseDef, log: Arc<LogStore>) -> Result<(Database, u64)> {
        // A snapshot a crash interrupted has parts and no metadata: space only.
        log.drop_unfinished_snapshots(def.uid)?;
        let name = def.spec.name.clone();
        let loaded = Self::load(&def, &log)?;
        let last = loaded.seq.last_serial;
        if let Some(refusal) = loaded.short_of_damaged(&name) {
            return Err(refusal);
        }
        log.drop_torn_tail(def.uid, last)?;
        for (serial, _) in &loaded.damaged {
            let kept = log.set_aside_snapshot(def.uid, *serial)?;
            tracing::warn!(
                tenant = %def.tenant,
                database = %name,
                snapshot = serial,
                recovered_from = loaded.snapshot_serial,
                serial = last,
                kept_at = ?kept,
                "recovered without a damaged snapshot; its files are kept for inspection"
            );
        }
        Ok((
            Self::with_state(def, log, loaded.store, loaded.seq, loaded.snapshot_serial),
            loaded.replayed,
        ))
    }

    /// The store and sequencer as database `def`'s newest readable snapshot and the log
    /// after it hold them (see [`Self::recover`] for damaged snapshots).
    fn load(def: &DatabaseDef, log: &LogStore) -> Result<Loaded> {
        let name = &def.spec.name;
        let mut damaged: Vec<(u64, String)> = Vec::new();
        let mut base = None;
        for (serial, meta) in log.snapshot_list(def.uid)?.into_iter().rev() {
            let loaded = meta.map_err(Error::from).and_then(|meta| {
                let blocks = log.snapshot_block_list(def.uid, &meta)?;
                let store = Store::from_snapshot_blocks(
                    meta.layout.clone(),
                    def.spec.memory_quota_bytes,
                    blocks,
                )
                .map_err(|e| Error::Unavailable(format!("snapshot {serial}: {e}")))?;
                Ok((store, meta))
            });
            match loaded {
                Ok(loaded) => {
                    base = Some(loaded);
                    break;
                }
                Err(e) => {
                    tracing::error!(
                        tenant = %def.tenant,
                        database = %name,
                        snapshot = serial,
                        error = %e,
                        "a snapshot is damaged; recovering from the older snapshot and the log"
                    );
                    damaged.push((serial, e.to_string()));
                }
            }
        }
        let (mut store, seq, snapshot_serial) = match base {
            Some((store, meta)) => (
                store,
                Sequencer::new(meta.serial, meta.next_txn),
                meta.serial,
            ),
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
        Ok(Loaded {
            store,
            seq: Sequencer::new(last, seq.next_txn.max(max_txn + 1)),
            snapshot_serial,
            replayed,
            damaged,
        })
    }

    /// Run `append`, which writes to the log what was just applied to `state`'s store.
    /// When it fails (a full disk), the store holds what the log does not: it is rebuilt
    /// from the snapshot and the log, so memory is never ahead of the log and the next
    /// transaction takes the serials the failed one did not keep.
    fn append_or_reload(
        &self,
        state: &mut State,
        append: impl FnOnce() -> std::result::Result<(), crate::log::LogError>,
    ) -> Result<()> {
        let Err(failed) = append() else {
            return Ok(());
        };
        tracing::error!(database = %self.name(), error = %failed,
            "log append failed; rebuilding the database from its snapshot and log");
        let rebuilt = Self::load(&self.def, &self.log).and_then(|loaded| {
            match loaded.short_of_damaged(self.name()) {
                Some(refusal) => Err(refusal),
                None => Ok(loaded),
            }
        });
        match rebuilt {
            Ok(loaded) => {
                state.store = loaded.store;
                state.seq = loaded.seq;
                state.snapshot_serial = loaded.snapshot_serial;
            }
            Err(e) => tracing::error!(database = %self.name(), error = %e,
                "the database could not be rebuilt from its log; restart the node"),
        }
        Err(failed.into())
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
    /// A big batch's (see [`super::usage::big_work`]) runs off the async worker at a
    /// lower priority.
    pub fn resolve(&self, inputs: &[records::OpRef<'_>]) -> Result<Vec<Op>> {
        super::usage::big_work(inputs.len() >= super::usage::BIG_OPS, || {
            self.resolve_here(inputs)
        })
    }

    fn resolve_here(&self, inputs: &[records::OpRef<'_>]) -> Result<Vec<Op>> {
        let state = self.state.read();
        inputs
            .iter()
            .enumerate()
            .map(|(i, input)| records::resolve(state.store.schema(), input).map_err(|e| e.at_op(i)))
            .collect()
    }

    /// Run `ops` as one atomic transaction (the batched fast path), through the write
    /// gate when one guards this database ([`super::gate`]).
    pub async fn execute(&self, ops: Vec<Op>, lock_timeout: Duration) -> Result<Committed> {
        if ops.is_empty() {
            return Err(Error::Malformed(
                "a transaction needs at least one operation".into(),
            ));
        }
        self.check_fence()?;
        self.check_writable()?;
        self.admit_past_backlog().await?;
        let Some(gate) = self.guarding_gate() else {
            let result = self.execute_batch(ops, lock_timeout).await;
            return result.and_then(|c| self.check_fence().map(|_| c));
        };
        let guard = gate.lock(self, &ops, lock_timeout).await?;
        let result = self.execute_batch(ops, lock_timeout).await;
        if let Some(guard) = guard {
            guard.release().await;
        }
        // Acknowledged only if the node may still do so (a fenced primary's write stays
        // unacknowledged, a tail the next primary's history discards).
        result.and_then(|c| self.check_fence().map(|_| c))
    }

    /// The cluster's fence, when one is installed ([`super::fence`]).
    pub fn check_fence(&self) -> Result<()> {
        match &*self.fence.read() {
            Some(f) => f.admit(&self.def.tenant, self.name()),
            None => Ok(()),
        }
    }

    /// Set the origin this node's writes carry (the node does so on every database).
    pub fn set_origin(&self, origin: u64) {
        self.origin.store(origin, Ordering::Relaxed);
    }

    /// The origin this node's writes carry in a mutual database's versions.
    pub fn origin(&self) -> u64 {
        self.origin.load(Ordering::Relaxed)
    }

    /// Install the cluster's fence (the node does so on every database).
    pub fn set_fence(&self, fence: Option<Arc<dyn super::fence::Fence>>) {
        *self.fence.write() = fence;
    }

    /// Hold a client write while the database's log is more than the node's
    /// `log_backlog_bytes` ahead of the disk, until a flush catches up; refuse it, with
    /// nothing written, if that takes longer than [`BACKLOG_WAIT`]. A tenant writing
    /// faster than its disk takes it (durability `none`) is held to the disk's pace,
    /// and does not pile up gigabytes that every other database's flush waits behind.
    async fn admit_past_backlog(&self) -> Result<()> {
        let Some(ticket) = self.log.over_backlog(self.def.uid)? else {
            return Ok(());
        };
        match tokio::time::timeout(BACKLOG_WAIT, self.log.wait_durable(&ticket)).await {
            Ok(flushed) => Ok(flushed?),
            Err(_) => Err(Error::LogBacklog {
                detail: format!(
                    "database '{}' has {} bytes logged and not yet on disk, over the node's \
                     bound, and a flush did not catch up within {} ms; nothing was written",
                    self.name(),
                    self.log_backlog(),
                    BACKLOG_WAIT.as_millis()
                ),
                retry_after_secs: 1,
            }),
        }
    }

    /// The write gate, if one is installed and guards this database.
    fn guarding_gate(&self) -> Option<Arc<dyn WriteGate>> {
        self.gate.read().clone().filter(|g| g.guards(self))
    }

    /// Install (or remove) the rule client writes pass before they commit. The node
    /// installs its gate on every database ([`super::Node::set_write_gate`]).
    pub fn set_write_gate(&self, gate: Option<Arc<dyn WriteGate>>) {
        *self.gate.write() = gate;
    }

    /// A batch past the checks and the gate: wait for the records, write, await.
    async fn execute_batch(&self, ops: Vec<Op>, lock_timeout: Duration) -> Result<Committed> {
        if self.quorum.is_active() {
            return self.execute_sync(ops, lock_timeout).await;
        }
        let deadline = Instant::now() + lock_timeout;
        let big = ops.len() >= super::usage::BIG_OPS;
        // Handed to the write that finds no record held (it keeps the records).
        let mut ops = Some(ops);
        loop {
            // Wait for interactive transactions holding any of these records.
            let records: Vec<RecordId> = match &ops {
                Some(ops) if !self.locks.is_idle() => {
                    ops.iter().map(|op| (op.file, op.key().to_vec())).collect()
                }
                _ => Vec::new(),
            };
            let write = || {
                let mut state = self.state.write();
                match self.locks.first_blocker(BATCH_TXN, records.iter()) {
                    Some((_, holder)) => Err(holder),
                    None => {
                        let txn = state.seq.next_txn();
                        let ops = ops.take().expect("a batch is written once");
                        Ok(self.write_locked(&mut state, txn, ops))
                    }
                }
            };
            // Milliseconds of CPU for a big batch: off the async worker and at a lower
            // priority, so a neighbour's small request goes first.
            let outcome = super::usage::big_work(big, write);
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
    async fn execute_sync(&self, ops: Vec<Op>, lock_timeout: Duration) -> Result<Committed> {
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
    fn write_locked(&self, state: &mut State, txn: u64, ops: Vec<Op>) -> Result<Committed> {
        // Checked under the state lock that `begin_restore` takes to set the flag, so no
        // write lands after a restore captured the store.
        self.check_not_restoring()?;
        let _cpu = self.usage.charge_cpu();
        let count = ops.len();
        self.usage.operations.add(count as u64);
        let State { store, seq, .. } = state;
        // A mutual database writes each record's new version with it: one more
        // operation after each of the client's.
        let (ops, per_op) = if self.def.spec.mutual {
            (super::versions::stamp(store, ops, self.origin())?, 2)
        } else {
            (ops, 1)
        };
        let result = txn::apply(store, seq, txn, ops);
        let log = match &result {
            Ok(log) => log,
            Err(refused) => &refused.log,
        };
        self.append_or_reload(state, || self.log.append(self.def.uid, log))?;
        if let Some(last) = log.last_serial() {
            self.appended.send_replace(last);
        }
        match result {
            Ok(log) => Ok(Committed {
                txn,
                first_serial: log.first_serial().unwrap_or(state.seq.last_serial),
                last_serial: log.last_serial().unwrap_or(state.seq.last_serial),
                count,
            }),
            Err(refused) => Err(Error::Store(refused.error).at_op(refused.index / per_op)),
        }
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

    /// A frozen copy of the store with its serial and next transaction number (for
    /// streaming a bootstrap snapshot without holding the writer). Copying the location
    /// tables takes milliseconds for millions of records, so it runs off the async
    /// worker ([`super::usage::off_worker`]): a bootstrap or a verify does not hold up
    /// other databases' requests queued behind it.
    pub fn freeze(&self) -> (Store, u64, u64) {
        super::usage::off_worker(|| {
            let state = self.state.read();
            (
                state.store.freeze(),
                state.seq.last_serial,
                state.seq.next_txn,
            )
        })
    }

    /// Bytes logged and not yet flushed (0 if the log cannot say).
    pub fn log_backlog(&self) -> u64 {
        self.log.backlog(self.def.uid).unwrap_or(0)
    }

    /// Bytes its log and snapshots take on disk (what `du` shows of its directory).
    pub fn disk_bytes(&self) -> u64 {
        self.log.disk_bytes(self.def.uid).unwrap_or(0)
    }

    /// Wait for the durability this database promises.
    pub async fn await_durable(&self) -> Result<()> {
        match self.def.spec.durability {
            Durability::None => Ok(()),
            Durability::Group => {
                let ticket = self.log.request_flush(self.def.uid)?;
                Ok(self.log.wait_durable(&ticket).await?)
            }
            Durability::Sync => {
                let (log, uid) = (self.log.clone(), self.def.uid);
                tokio::task::spawn_blocking(move || log.sync_log(uid))
                    .await
                    .map_err(|e| Error::Unavailable(e.to_string()))??;
                Ok(())
            }
        }
    }

    /// Take a compact snapshot (SPEC G1): freeze under the lock, write without it,
    /// both on a blocking thread.
    pub async fn snapshot(self: &Arc<Self>) -> Result<SnapshotMeta> {
        let db = self.clone();
        let meta = tokio::task::spawn_blocking(move || -> Result<SnapshotMeta> {
            let (frozen, serial, next_txn) = db.freeze();
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
        let default_bytes = Retention::default_bytes(self.memory_bytes());
        let mut removed = 0;
        for (kind, secs, bytes) in [
            (LogKind::B, retention.b_secs, retention.b_bytes),
            (LogKind::T, retention.t_secs, retention.t_bytes),
        ] {
            let cutoff = now_us.saturating_sub(secs.saturating_mul(1_000_000));
            removed += self.log.prune_older_than(self.def.uid, kind, cutoff)?;
            removed +=
                self.log
                    .prune_to_bytes(self.def.uid, kind, bytes.unwrap_or(default_bytes))?;
        }
        Ok(removed)
    }

    /// Whether the upkeep should snapshot now: `every_entries` updates since the last
    /// snapshot, or an A log of more than twice the database's blocks (at least
    /// [`MIN_DEFAULT_LOG_BYTES`] each time). The A log is kept from the older of the two
    /// newest snapshots, so after a snapshot it holds about one such interval and grows
    /// to two: bounded by the data's size, not only by a count of entries that grows
    /// without bound in bytes when records are big, and that with small records kept
    /// several times the data (issue 24's 15-minute run).
    pub fn wants_snapshot(&self, every_entries: u64) -> bool {
        let (last, snapshot) = self.serials();
        let a_bytes = self.log.kind_bytes(self.def.uid, LogKind::A).unwrap_or(0);
        snapshot_due(last - snapshot, every_entries, a_bytes, self.memory_bytes())
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

    /// Bytes of RAM its location tables and directories take besides the blocks (walks
    /// the directories: for an occasional look).
    pub fn index_bytes(&self) -> u64 {
        self.state.read().store.index_bytes()
    }

    /// Bytes of log and snapshots this database keeps (counted once when the
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
#[derive(Debug, Serialize, schemars::JsonSchema)]
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
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct FileInfo {
    pub name: String,
    pub alt_keys: Vec<String>,
    pub records: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::OpKind;
    use crate::store::{encode_record, FileSchema};

    fn upserts(prefix: &str, n: usize) -> Vec<Op> {
        (0..n)
            .map(|i| {
                let mut payload = Vec::new();
                let key = format!("{prefix}{i:04}");
                encode_record(&mut payload, key.as_bytes(), &[], &[b'x'; 200]);
                Op {
                    kind: OpKind::Upsert,
                    file: 0,
                    payload,
                }
            })
            .collect()
    }

    #[tokio::test]
    async fn a_write_past_the_log_backlog_waits_for_the_disk_and_is_refused_if_it_stalls() {
        let dir = tempfile::tempdir().unwrap();
        // A bound of 4 KiB: one batch of 50 records of 200 B passes it.
        let log = LogStore::open(dir.path(), 4 << 10).unwrap();
        let def = DatabaseDef {
            uid: 9,
            tenant: "default".into(),
            spec: DatabaseSpec {
                name: "flood".into(),
                files: vec![FileSchema {
                    name: "bench".into(),
                    alt_keys: vec![],
                }],
                block_size: 4096,
                durability: Durability::None,
                memory_quota_bytes: 1 << 30,
                retention: Retention::default(),
                mutual: false,
            },
            created_ms: 0,
        };
        let db = Database::create(def, log.clone());
        let wait = Duration::from_secs(1);
        // The disk stops keeping up: what is written stays in the backlog.
        log.stall_flushes(9, true);
        db.execute(upserts("a", 50), wait)
            .await
            .expect("under the bound");
        assert!(db.log_backlog() > 4 << 10);
        let refused = db
            .execute(upserts("b", 5), wait)
            .await
            .expect_err("over the bound, with a disk that does not catch up");
        let Error::LogBacklog {
            retry_after_secs, ..
        } = &refused
        else {
            panic!("{refused:?}");
        };
        assert_eq!(*retry_after_secs, 1);
        assert!(
            refused.to_string().contains("nothing was written"),
            "{refused}"
        );
        assert!(
            db.get("bench", "b0000").is_err(),
            "a refused write wrote nothing"
        );
        // The disk catches up: the same write is held for the flush, then admitted.
        log.stall_flushes(9, false);
        db.execute(upserts("b", 5), wait)
            .await
            .expect("admitted after the flush");
        assert!(db.get("bench", "b0000").is_ok());
    }

    #[test]
    fn a_snapshot_is_due_after_enough_entries_or_an_a_log_twice_the_data() {
        let mib = 1 << 20;
        // By count, as configured.
        assert!(snapshot_due(1_000, 1_000, 0, 0));
        assert!(!snapshot_due(999, 1_000, 0, 0));
        // By size: twice the blocks, the blocks counted as at least 64 MiB.
        assert!(!snapshot_due(10, u64::MAX, 127 * mib, 10 * mib));
        assert!(snapshot_due(10, u64::MAX, 128 * mib, 10 * mib));
        assert!(!snapshot_due(10, u64::MAX, 399 * mib, 200 * mib));
        assert!(snapshot_due(10, u64::MAX, 400 * mib, 200 * mib));
        // Nothing new since the last snapshot: never, however big the kept log.
        assert!(!snapshot_due(0, 0, u64::MAX, 0));
    }
}
