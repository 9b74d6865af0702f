//! The durable log and snapshots in sled, with group commit (SPEC B4, B5, G1).
//!
//! Every database keeps its log and snapshots in a sled instance of its own, a
//! [`Shard`] in `<data dir>/logs/<uid>.<generation>`, with its own flusher. One instance
//! for the node made every database's `group` flush write out whatever any other
//! database had appended (a flood at durability `none` put its megabytes ahead of a
//! quiet tenant's commit), and sled's write lock serialised them all. Apart, a
//! database's flush waits only for its own writes, a deleted database's space comes back
//! at once (its directory goes), and a replica rebuilt from a snapshot starts a new
//! generation instead of leaving its old log's pages for sled to reuse some day. A node
//! that kept everything in its one instance (before this layout) has it moved at start
//! ([`LogStore::adopt_shared_trees`]).
//!
//! Trees of a shard:
//! - `log`: key `db uid (8, BE) | kind (1) | first serial (8, BE)` → encoded chunk.
//!   Kind byte 0 holds a database's markers: a logical replica's position (serial
//!   `u64::MAX`) and, per log kind, the last serial retention pruned (`u64::MAX - kind`).
//! - `snapshots`: key `db uid | serial | u32::MAX (4, BE)` → a snapshot's metadata.
//!   Its block bytes are in an instance of their own ([`snapshot_files`]); a node from
//!   before that layout kept them here under part numbers, and recovery moves them.
//! - `counts`: the byte counts a clean shutdown left ([`Shard::load_counts`]).
//!
//! A transaction's chunks are inserted while its database's writer lock is held, so
//! sled receives them in serial order and a crash keeps a prefix of the log.
//!
//! All of a transaction's chunks or none survive a crash. sled's atomic batch gives that,
//! but each batch seals sled's IO buffer and writes it out with a `sync_file_range` of
//! its own, which cost a single-record commit 35–110 µs. So a transaction with one A
//! chunk (every small one) is written as plain inserts, its B and T chunks first and the
//! A chunk last: sled recovers a prefix of its writes (it never recovers a later segment
//! without its predecessors), so the A chunk is the commit point. A crash between leaves
//! B or T chunks above the last A serial; [`LogStore::drop_torn_tail`] removes them when
//! the database is recovered. Bigger transactions, and a logical replica's apply with
//! its position, still use one batch.
//!
//! A snapshot writes its parts into its own instance, never holding the shard's sled
//! (SPEC G1: a snapshot pauses writers only to freeze the location tables); its
//! metadata, written into the shard once the parts are durable, is the commit point. A
//! crash before leaves an instance without metadata, which no listing shows and
//! [`LogStore::drop_unfinished_snapshots`] removes when the database is recovered.
//! Deleting a snapshot makes the removal of its metadata durable before its instance
//! goes.
//!
//! Making them durable is separate: [`LogStore::wait_durable`] waits for a flush that
//! started after the insert. One flusher thread runs flushes back to back while anyone
//! waits, so one fsync covers every transaction that arrived during the previous one
//! (group commit).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::codec::{self, ChunkRef};
use super::snapshot_files;
use super::tail::Tail;
use super::{LogKind, TxnLog};
use crate::store::snapshot::SnapshotLayout;

/// Bytes of snapshot parts a snapshot writes between two flushes of its own (one sled
/// segment), so the data it leaves for the kernel to write stays small ahead of other
/// databases' fsyncs on the same disk. Measured when parts still went into the shard's
/// own instance, on a 230 MB snapshot: the other writers' worst put 31–101 ms at 8 MiB,
/// 9–17 ms at 2 MiB, 9–15 ms at 1 MiB (docs/BENCHMARKS.md); not measured again since.
const SNAPSHOT_PACE_BYTES: u64 = 2 << 20;
/// Bytes of packed blocks per snapshot part: small enough that sled keeps parts inline
/// rather than as blob files (from a quarter segment, 512 KiB), big enough that sled's
/// rewrites of a leaf cost little. Writing 100 MiB into an instance took 192 MB of disk
/// in 48 KiB parts, 156 MB in 120 KiB, 152 MB in 256 KiB, 293 MB in 1 MiB (blobs).
const SNAPSHOT_PART_BYTES: usize = 256 * 1024;
const META_PART: u32 = u32::MAX;

/// A failure of the durable log. The message is safe to show to clients.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    #[error("the log store failed: {0}")]
    Sled(String),
    #[error("the log flush failed: {0}")]
    Flush(String),
    #[error("a stored log chunk or snapshot is damaged: {0}")]
    Damaged(String),
}

impl From<sled::Error> for LogError {
    fn from(err: sled::Error) -> Self {
        LogError::Sled(err.to_string())
    }
}

/// Metadata of a stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub serial: u64,
    pub next_txn: u64,
    pub created_ms: u64,
    pub parts: u32,
    pub size_bytes: u64,
    pub layout: SnapshotLayout,
}

/// One stored chunk, as bytes, with its fixed fields.
#[derive(Debug, Clone)]
pub struct RawChunk {
    pub head: codec::ChunkHead,
    pub bytes: sled::IVec,
}

/// One transaction's stored chunks (A first, then B and T), for replication.
#[derive(Debug, Clone)]
pub struct RawTxn {
    pub txn: u64,
    pub outcome: super::Outcome,
    pub first_serial: u64,
    pub last_serial: u64,
    pub last_timestamp_us: u64,
    pub chunks: Vec<RawChunk>,
}

/// Whether A chunk `head`, next in serial order, starts a transaction after the last of
/// `txns` rather than continuing it.
fn starts_txn(txns: &[RawTxn], head: &codec::ChunkHead) -> bool {
    !txns
        .last()
        .is_some_and(|t| t.txn == head.txn && t.last_serial + 1 == head.first_serial)
}

/// Add the next A chunk (in serial order) to the transaction it continues, or as a new
/// one.
pub(super) fn add_a_chunk(txns: &mut Vec<RawTxn>, chunk: RawChunk) {
    let head = chunk.head;
    if starts_txn(txns, &head) {
        txns.push(RawTxn {
            txn: head.txn,
            outcome: head.outcome,
            first_serial: head.first_serial,
            last_serial: head.last_serial,
            last_timestamp_us: head.last_timestamp_us,
            chunks: Vec::new(),
        });
    }
    let txn = txns.last_mut().expect("pushed above");
    txn.last_serial = head.last_serial;
    txn.last_timestamp_us = head.last_timestamp_us;
    txn.chunks.push(chunk);
}

#[derive(Default)]
struct FlushState {
    requested: u64,
    shutdown: bool,
}

/// A serial with its timestamp.
pub type Stamped = (u64, u64);

/// Flush progress: flushes completed (by ticket number) and the last error.
type Flushed = (u64, Option<Arc<str>>);

/// The durable log of every database of a node: one [`Shard`] per database, opened the
/// first time the database is used.
pub struct LogStore {
    /// `<data dir>/logs`.
    dir: PathBuf,
    /// sled's page cache for each shard.
    cache_bytes: u64,
    /// The most bytes a database may have written and not flushed before its writers
    /// wait for a flush ([`Self::over_backlog`]).
    backlog_bytes: u64,
    shards: RwLock<HashMap<u64, Arc<Shard>>>,
    /// Databases deleted since the store opened (uids are never reused): a late call
    /// for one is refused rather than creating its directory again.
    deleted: Mutex<std::collections::HashSet<u64>>,
    /// Called after each snapshot part is stored (tests stop a snapshot half-written).
    #[cfg(test)]
    after_snapshot_part: Mutex<Option<PartHook>>,
}

/// One database's sled instance: its log and snapshot trees and its group-commit
/// flusher. Dropped when its database is deleted or starts a new generation; the last
/// holder's drop stops the flusher, closes sled, and then (if doomed) removes the
/// directory, so no sled thread writes into a directory that is going or reused.
struct Shard {
    trees: Option<Trees>,
    path: PathBuf,
    flusher: Arc<Flusher>,
    flusher_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Bytes of log chunks and snapshot parts, counted from a scan the first time they
    /// are asked for and kept up to date by every write and prune.
    stored: Mutex<Option<u64>>,
    /// The same per log kind (retention's size bound), keyed by the kind's byte.
    kind_stored: Mutex<HashMap<u8, u64>>,
    /// Remove the directory when the last holder lets go (the database was deleted).
    doomed: std::sync::atomic::AtomicBool,
    /// The newest transactions, for the links' senders.
    tail: Mutex<Tail>,
    /// Held while a snapshot's instance is open for reading: sled locks an instance's
    /// files, so two restores reading the same snapshot take turns.
    snapshot_reads: Mutex<()>,
    /// Held while a snapshot is saved: two saves at one serial (a snapshot asked for
    /// twice with no write between) must not write one instance at once.
    snapshot_writes: Mutex<()>,
}

struct Trees {
    log: sled::Tree,
    snapshots: sled::Tree,
    /// The byte counts a clean shutdown left (see [`Shard::load_counts`]).
    counts: sled::Tree,
}

/// Keys of the `counts` tree: all stored bytes, and a log kind's (followed by its byte).
const STORED_COUNT: &[u8] = b"stored";
const KIND_COUNT: u8 = b'k';

/// See [`LogStore::after_snapshot_part`].
#[cfg(test)]
type PartHook = Box<dyn FnMut(u32) + Send>;

/// What the log store shares with its flusher thread. The thread holds only this, so
/// dropping the [`LogStore`] stops it at once.
struct Flusher {
    /// Taken when the shard drops, so sled is closed before its directory may go.
    db: Mutex<Option<sled::Db>>,
    state: Mutex<FlushState>,
    wake: Condvar,
    flushed: watch::Sender<Flushed>,
    /// Bytes written into the shard since it opened (chunks, snapshot parts).
    appended: AtomicU64,
    /// Of those, the bytes a completed flush made durable: the rest is the backlog.
    durable: AtomicU64,
    /// Tests hold the flusher back, as a disk that cannot keep up would.
    #[cfg(test)]
    stalled: std::sync::atomic::AtomicBool,
}

fn log_key(uid: u64, kind: LogKind, serial: u64) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[..8].copy_from_slice(&uid.to_be_bytes());
    key[8] = kind as u8;
    key[9..].copy_from_slice(&serial.to_be_bytes());
    key
}

/// Where a logical replica stands in one source's stream (a replica may follow several:
/// many-to-one), kept in the `log` tree next to the database's chunks: `uid | 0 |
/// u64::MAX | stream` (kind byte 0 sorts before every log kind).
fn position_key(uid: u64, stream: u64) -> [u8; 25] {
    let mut key = [0u8; 25];
    key[..8].copy_from_slice(&uid.to_be_bytes());
    key[9..17].copy_from_slice(&u64::MAX.to_be_bytes());
    key[17..].copy_from_slice(&stream.to_be_bytes());
    key
}

fn positions_prefix(uid: u64) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[..8].copy_from_slice(&uid.to_be_bytes());
    key[9..17].copy_from_slice(&u64::MAX.to_be_bytes());
    key
}

/// The last serial whose `kind` chunks retention pruned, kept next to the chunks: what
/// point-in-time restore by before images can still reach (B chunks exist only for
/// updates that had a before image, so the oldest chunk alone does not say it).
fn pruned_key(uid: u64, kind: LogKind) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[..8].copy_from_slice(&uid.to_be_bytes());
    key[9..].copy_from_slice(&(u64::MAX - kind as u64).to_be_bytes());
    key
}

fn log_prefix(uid: u64, kind: LogKind) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[..8].copy_from_slice(&uid.to_be_bytes());
    key[8] = kind as u8;
    key
}

fn snapshot_key(uid: u64, serial: u64, part: u32) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..8].copy_from_slice(&uid.to_be_bytes());
    key[8..16].copy_from_slice(&serial.to_be_bytes());
    key[16..].copy_from_slice(&part.to_be_bytes());
    key
}

/// sled as Doppel configures it, for a shard and for the node's own instance.
pub fn sled_config(path: &Path, cache_bytes: u64) -> sled::Config {
    sled::Config::new()
        .path(path)
        .cache_capacity(cache_bytes)
        .flush_every_ms(Some(500))
        // sled writes any page over a quarter segment as a file of its own; with the
        // default 512 KiB segments, leaves holding a few log chunks became files,
        // created and unlinked per flush. 2 MiB segments: 40% less kernel time and
        // 220k -> 320k records/s on the batched path (docs/BENCHMARKS.md).
        .segment_size(SLED_SEGMENT_BYTES)
}

/// How often a shard's flusher makes a backlog nobody waits for durable (durability
/// `none`). sled's own periodic flush is off in shards: this one also knows what it
/// made durable, which is what [`LogStore::over_backlog`] needs.
const BACKGROUND_FLUSH: Duration = Duration::from_millis(500);

/// sled's segment size (see [`sled_config`]). Fixed when a sled directory is created.
const SLED_SEGMENT_BYTES: usize = 2 << 20;

/// Hand what this thread deferred to sled's epoch collector, and let it free what no
/// thread can still see.
///
/// sled frees a replaced page, an evicted one, and each 2 MiB IO buffer it sealed only
/// once every thread has left the epoch, through crossbeam-epoch's deferred functions;
/// those wait in the deferring thread's own bag until it holds 64 of them. A flusher
/// seals one buffer per flush, so its bag held up to 64 buffers: 128 MB of a node's RSS
/// after a load (heaptrack, docs/BENCHMARKS.md). Call it after a flush and after a big
/// write, not per small commit (it also tries to advance the epoch over every thread).
fn release_deferred() {
    crossbeam_epoch::pin().flush();
}

/// Written bytes from which a transaction's append also calls [`release_deferred`].
const RELEASE_AFTER_BYTES: usize = 64 << 10;

/// A shard's directory name: `<uid>.<generation>`, both in decimal.
fn shard_dir_name(uid: u64, generation: u64) -> String {
    format!("{uid}.{generation}")
}

fn parse_shard_dir_name(name: &str) -> Option<(u64, u64)> {
    let (uid, generation) = name.split_once('.')?;
    Some((uid.parse().ok()?, generation.parse().ok()?))
}

impl LogStore {
    /// Open the log store in `dir` (`<data dir>/logs`). Of each database's shard
    /// directories the newest generation is the live one; older ones are what a crash
    /// left of a reset ([`Self::reset_database`]) and are removed.
    pub fn open(
        dir: &Path,
        cache_bytes: u64,
        backlog_bytes: u64,
    ) -> Result<Arc<LogStore>, LogError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| LogError::Sled(format!("cannot create {}: {e}", dir.display())))?;
        let store = Arc::new(LogStore {
            dir: dir.to_path_buf(),
            cache_bytes,
            backlog_bytes,
            shards: RwLock::new(HashMap::new()),
            deleted: Mutex::new(std::collections::HashSet::new()),
            #[cfg(test)]
            after_snapshot_part: Mutex::new(None),
        });
        let mut newest: HashMap<u64, u64> = HashMap::new();
        for (uid, generation) in store.shard_dirs()? {
            let keep = newest.entry(uid).or_insert(generation);
            let stale = if generation > *keep {
                std::mem::replace(keep, generation)
            } else if generation < *keep {
                generation
            } else {
                continue;
            };
            store.remove_dir(uid, stale)?;
        }
        Ok(store)
    }

    /// Every shard directory as `(uid, generation)`.
    fn shard_dirs(&self) -> Result<Vec<(u64, u64)>, LogError> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| LogError::Sled(format!("cannot list {}: {e}", self.dir.display())))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| LogError::Sled(e.to_string()))?;
            if let Some(found) = entry.file_name().to_str().and_then(parse_shard_dir_name) {
                out.push(found);
            }
        }
        Ok(out)
    }

    fn remove_dir(&self, uid: u64, generation: u64) -> Result<(), LogError> {
        let path = self.dir.join(shard_dir_name(uid, generation));
        tracing::info!(path = %path.display(), "removing a database log directory no longer used");
        std::fs::remove_dir_all(&path)
            .map_err(|e| LogError::Sled(format!("cannot remove {}: {e}", path.display())))
    }

    /// Remove the shards of databases not in `live` (deleted while the node was down, or
    /// by a crash between a delete and its removal). Call it before any database is used.
    pub fn remove_other_databases(
        &self,
        live: &std::collections::HashSet<u64>,
    ) -> Result<usize, LogError> {
        let mut removed = 0;
        for (uid, generation) in self.shard_dirs()? {
            if !live.contains(&uid) {
                self.remove_dir(uid, generation)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Database `uid`'s shard, opened (or created) on first use.
    fn shard(&self, uid: u64) -> Result<Arc<Shard>, LogError> {
        if let Some(shard) = self.shards.read().get(&uid) {
            return Ok(shard.clone());
        }
        let mut shards = self.shards.write();
        if let Some(shard) = shards.get(&uid) {
            return Ok(shard.clone());
        }
        if self.deleted.lock().contains(&uid) {
            return Err(LogError::Sled(format!("database {uid} was deleted")));
        }
        let generation = self
            .shard_dirs()?
            .into_iter()
            .filter(|(u, _)| *u == uid)
            .map(|(_, g)| g)
            .max()
            .unwrap_or(0);
        let shard = Arc::new(Shard::open(
            &self.dir.join(shard_dir_name(uid, generation)),
            self.cache_bytes,
        )?);
        shards.insert(uid, shard.clone());
        Ok(shard)
    }

    /// Move every database's log and snapshots out of the node's own sled instance,
    /// where a node kept them before each database had a shard, into the shards; then
    /// drop those trees. Returns the entries moved. Idempotent: a crash part way leaves
    /// entries that the next start moves again (inserts of the same bytes).
    pub fn adopt_shared_trees(&self, node: &sled::Db) -> Result<u64, LogError> {
        let mut moved = 0u64;
        for name in ["log", "snapshots"] {
            if !node
                .tree_names()
                .iter()
                .any(|t| t.as_ref() == name.as_bytes())
            {
                continue;
            }
            let tree = node.open_tree(name)?;
            let mut touched = std::collections::HashSet::new();
            for item in tree.iter() {
                let (key, value) = item?;
                let Some(uid) = key
                    .get(..8)
                    .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
                else {
                    continue;
                };
                let shard = self.shard(uid)?;
                let trees = shard.trees();
                let target = if name == "log" {
                    &trees.log
                } else {
                    &trees.snapshots
                };
                target.insert(key, value)?;
                touched.insert(uid);
                moved += 1;
            }
            for uid in touched {
                self.flush_now(uid)?;
            }
            drop(tree);
            node.drop_tree(name)?;
            node.flush()?;
        }
        if moved > 0 {
            tracing::info!(
                entries = moved,
                "moved the node's log into one sled instance per database"
            );
        }
        Ok(moved)
    }

    /// Write a transaction's A, B and T chunks in one atomic batch. Call it under the
    /// database's writer lock so chunks reach sled in serial order.
    pub fn append(&self, uid: u64, txn: &TxnLog) -> Result<(), LogError> {
        if txn.updates.is_empty() {
            return Ok(());
        }
        self.append_batch(uid, txn, None)
    }

    /// Write a transaction's chunks like [`Self::append`], and in the same atomic batch
    /// the source serial a logical replica has now applied in `stream` (SPEC C4: the
    /// position is durable together with the apply). `txn` may have no updates (all
    /// filtered out).
    pub fn append_with_position(
        &self,
        uid: u64,
        txn: &TxnLog,
        stream: u64,
        position: u64,
    ) -> Result<(), LogError> {
        self.append_batch(uid, txn, Some((stream, position)))
    }

    fn append_batch(
        &self,
        uid: u64,
        txn: &TxnLog,
        position: Option<(u64, u64)>,
    ) -> Result<(), LogError> {
        let mut chunks = Vec::new();
        for kind in [LogKind::A, LogKind::B, LogKind::T] {
            for (first, bytes) in codec::encode(txn, kind) {
                chunks.push((log_key(uid, kind, first), sled::IVec::from(bytes)));
            }
        }
        let position = position.map(|(stream, serial)| (position_key(uid, stream), serial));
        Self::insert_txn(&*self.shard(uid)?, chunks, position)
    }

    /// Store one transaction's chunks (keys from [`log_key`]) and, for a logical replica,
    /// its position, so that a crash keeps all of them or none (see the module doc).
    fn insert_txn(
        shard: &Shard,
        chunks: Vec<([u8; 17], sled::IVec)>,
        position: Option<([u8; 25], u64)>,
    ) -> Result<(), LogError> {
        let t = shard.trees();
        // Counted first: a failed write means sled failed, and the node with it.
        for (key, bytes) in &chunks {
            shard.account_chunk(key, bytes.len() as i64);
        }
        let wanted = shard.tail.lock().wanted();
        let kept = wanted.then(|| {
            chunks
                .iter()
                .filter(|(key, _)| key[8] != 0)
                .map(|(_, bytes)| {
                    let head = codec::peek(bytes).map_err(|e| LogError::Damaged(e.to_string()))?;
                    Ok(RawChunk {
                        head,
                        bytes: bytes.clone(),
                    })
                })
                .collect::<Result<Vec<_>, LogError>>()
        });
        let big = chunks.iter().map(|(_, b)| b.len()).sum::<usize>() >= RELEASE_AFTER_BYTES;
        let is_a = |key: &[u8; 17]| key[8] == LogKind::A as u8;
        if position.is_none() && chunks.iter().filter(|(key, _)| is_a(key)).count() == 1 {
            // The A chunk last: it is the commit point.
            let (a, others): (Vec<_>, Vec<_>) = chunks.into_iter().partition(|(k, _)| is_a(k));
            for (key, bytes) in others.into_iter().chain(a) {
                t.log.insert(key, bytes)?;
            }
        } else {
            let mut batch = sled::Batch::default();
            for (key, bytes) in chunks {
                batch.insert(&key[..], bytes);
            }
            if let Some((key, serial)) = position {
                batch.insert(&key[..], &serial.to_be_bytes()[..]);
            }
            t.log.apply_batch(batch)?;
        }
        if let Some(kept) = kept {
            shard.tail.lock().push(&kept?);
        }
        if big {
            release_deferred();
        }
        Ok(())
    }

    /// Remove what a crash left of a transaction that did not commit: B and T chunks
    /// above both the last A serial of database `uid` and `recovered` (the serial its
    /// recovery reached: its snapshot's when the A log after it is empty). See the module
    /// doc. Call it before the database takes writes. Returns the chunks removed.
    pub fn drop_torn_tail(&self, uid: u64, recovered: u64) -> Result<usize, LogError> {
        let shard = self.shard(uid)?;
        let t = shard.trees();
        let last_a = match t.log.scan_prefix(log_prefix(uid, LogKind::A)).next_back() {
            Some(item) => {
                codec::peek(&item?.1)
                    .map_err(|e| LogError::Damaged(e.to_string()))?
                    .last_serial
            }
            None => 0,
        }
        .max(recovered);
        let mut removed = 0;
        for kind in [LogKind::B, LogKind::T] {
            let from = log_key(uid, kind, last_a.saturating_add(1));
            let torn: Vec<sled::IVec> = t
                .log
                .range(from..=log_key(uid, kind, u64::MAX))
                .keys()
                .collect::<Result<_, _>>()?;
            for key in torn {
                if let Some(bytes) = t.log.remove(&key)? {
                    shard.account_chunk(&key, -(bytes.len() as i64));
                }
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::warn!(
                uid,
                removed,
                last_serial = last_a,
                "removed the chunks of a transaction a crash interrupted"
            );
        }
        Ok(removed)
    }

    /// The source serial a logical replica has applied, per source stream.
    pub fn positions(&self, uid: u64) -> Result<BTreeMap<u64, u64>, LogError> {
        let shard = self.shard(uid)?;
        let t = shard.trees();
        let mut out = BTreeMap::new();
        for item in t.log.scan_prefix(positions_prefix(uid)) {
            let (key, value) = item?;
            let (Some(stream), Ok(position)) = (
                key.get(17..25)
                    .map(|s| u64::from_be_bytes(s.try_into().expect("8 bytes"))),
                <[u8; 8]>::try_from(value.as_ref()).map(u64::from_be_bytes),
            ) else {
                continue;
            };
            out.insert(stream, position);
        }
        Ok(out)
    }

    /// Write several transactions' chunks in one atomic batch (a point-in-time restore's
    /// transactions: all of them or none survive a crash). Call it while no other writer
    /// can append to database `uid`.
    pub fn append_txns(&self, uid: u64, txns: &[TxnLog]) -> Result<(), LogError> {
        let shard = self.shard(uid)?;
        let t = shard.trees();
        let mut batch = sled::Batch::default();
        let mut written = Vec::new();
        for txn in txns {
            for kind in [LogKind::A, LogKind::B, LogKind::T] {
                for (first, bytes) in codec::encode(txn, kind) {
                    let key = log_key(uid, kind, first);
                    written.push((key, bytes.len() as i64));
                    batch.insert(&key[..], bytes);
                }
            }
        }
        t.log.apply_batch(batch)?;
        for (key, len) in written {
            shard.account_chunk(&key, len);
        }
        shard.tail.lock().clear();
        Ok(())
    }

    /// Write chunks exactly as another node encoded them (a mirror replica's copy of its
    /// source's log), all of them or none (see the module doc). Call it under the
    /// database's writer lock.
    pub fn append_raw(&self, uid: u64, chunks: &[RawChunk]) -> Result<(), LogError> {
        let chunks = chunks
            .iter()
            .map(|c| {
                let key = log_key(uid, c.head.kind, c.head.first_serial);
                (key, c.bytes.clone())
            })
            .collect();
        Self::insert_txn(&*self.shard(uid)?, chunks, None)
    }

    /// Whole transactions of database `uid` whose first serial is above `after`, in
    /// serial order, as their stored chunks: every A chunk, and the chunks of the `also`
    /// kinds (B, T). Stops after `max_bytes` (at least one transaction) or at a gap.
    pub fn read_txns(
        &self,
        uid: u64,
        after: u64,
        max_bytes: usize,
        also: &[LogKind],
    ) -> Result<Vec<RawTxn>, LogError> {
        let shard = self.shard(uid)?;
        {
            let mut tail = shard.tail.lock();
            if let Some(txns) = tail.read(after, max_bytes, also) {
                return Ok(txns);
            }
            tail.want();
        }
        let t = shard.trees();
        let mut out: Vec<RawTxn> = Vec::new();
        let mut bytes = 0;
        let mut expected = after + 1;
        let start = log_key(uid, LogKind::A, expected);
        let end = log_key(uid, LogKind::A, u64::MAX);
        for item in t.log.range(start..=end) {
            let (_, value) = item?;
            let head = codec::peek(&value).map_err(|e| LogError::Damaged(e.to_string()))?;
            if head.first_serial != expected {
                break;
            }
            if starts_txn(&out, &head) && bytes >= max_bytes {
                break;
            }
            bytes += value.len();
            add_a_chunk(&mut out, RawChunk { head, bytes: value });
            expected = head.last_serial + 1;
        }
        // A transaction's A chunks may continue past what the scan saw only if the
        // scan stopped at a gap, which cannot split a transaction (one atomic batch).
        for txn in &mut out {
            for kind in also {
                let range =
                    log_key(uid, *kind, txn.first_serial)..=log_key(uid, *kind, txn.last_serial);
                for item in t.log.range(range) {
                    let (_, value) = item?;
                    let head = codec::peek(&value).map_err(|e| LogError::Damaged(e.to_string()))?;
                    txn.chunks.push(RawChunk { head, bytes: value });
                }
            }
        }
        Ok(out)
    }

    /// Bytes of log and snapshots stored for database `uid` (its share of the sled
    /// files, before sled's own overhead).
    pub fn stored_bytes(&self, uid: u64) -> Result<u64, LogError> {
        let shard = self.shard(uid)?;
        if let Some(bytes) = *shard.stored.lock() {
            return Ok(bytes);
        }
        let t = shard.trees();
        let mut total = 0u64;
        for item in t.log.scan_prefix(uid.to_be_bytes()) {
            total += item?.1.len() as u64;
        }
        // Metadata, and the parts of snapshots not yet moved into instances; the
        // instances' parts as their metadata counts them, without reading them.
        for item in t.snapshots.scan_prefix(uid.to_be_bytes()) {
            let (key, value) = item?;
            total += value.len() as u64;
            if key[16..20] == META_PART.to_be_bytes() {
                let meta: SnapshotMeta =
                    postcard::from_bytes(&value).map_err(|e| LogError::Damaged(e.to_string()))?;
                total += meta.size_bytes;
            }
        }
        let counted = *shard.stored.lock().get_or_insert(total);
        Ok(counted)
    }

    /// Bytes of the `kind` chunks of database `uid`.
    pub fn kind_bytes(&self, uid: u64, kind: LogKind) -> Result<u64, LogError> {
        let shard = self.shard(uid)?;
        if let Some(bytes) = shard.kind_stored.lock().get(&(kind as u8)) {
            return Ok(*bytes);
        }
        let mut total = 0u64;
        for item in shard.trees().log.scan_prefix(log_prefix(uid, kind)) {
            total += item?.1.len() as u64;
        }
        let counted = *shard.kind_stored.lock().entry(kind as u8).or_insert(total);
        Ok(counted)
    }

    /// Bytes database `uid`'s shard takes on disk: its sled files, overhead included
    /// (what `du` shows of its directory).
    pub fn disk_bytes(&self, uid: u64) -> Result<u64, LogError> {
        Ok(crate::node::footprint::dir_bytes(&self.shard(uid)?.path))
    }

    /// A ticket for the next flush of database `uid`'s log, to pass to
    /// [`Self::wait_durable`]. Take it after [`Self::append`].
    pub fn request_flush(&self, uid: u64) -> Result<FlushTicket, LogError> {
        self.shard(uid)?.flusher.ticket()
    }

    /// Wait until the flush for `ticket` is done.
    pub async fn wait_durable(&self, ticket: &FlushTicket) -> Result<(), LogError> {
        let mut rx = ticket.flushed.clone();
        let seen = rx
            .wait_for(|(done, err)| *done >= ticket.number || err.is_some())
            .await
            .map_err(|_| LogError::Flush("the flusher stopped".into()))?;
        match &seen.1 {
            Some(err) if seen.0 < ticket.number => Err(LogError::Flush(err.to_string())),
            _ => Ok(()),
        }
    }

    /// Flush database `uid`'s log now, on this thread (durability `sync`, snapshots).
    pub fn flush_now(&self, uid: u64) -> Result<(), LogError> {
        self.shard(uid)?.flusher.flush()
    }

    /// Bytes written to database `uid`'s log that no flush has made durable yet.
    pub fn backlog(&self, uid: u64) -> Result<u64, LogError> {
        Ok(self.shard(uid)?.flusher.backlog())
    }

    /// When database `uid`'s backlog is over the bound, a flush to wait for before the
    /// next write is admitted (`Database::admit_past_backlog`).
    pub fn over_backlog(&self, uid: u64) -> Result<Option<FlushTicket>, LogError> {
        let flusher = &self.shard(uid)?.flusher;
        if flusher.backlog() <= self.backlog_bytes {
            return Ok(None);
        }
        flusher.ticket().map(Some)
    }

    /// Visit the A entries of database `uid` with serial above `after`, in order, as
    /// decoded chunks. Stops at the first gap in serials, returning the last serial seen.
    pub fn replay(
        &self,
        uid: u64,
        after: u64,
        mut visit: impl FnMut(&ChunkRef<'_>) -> Result<(), LogError>,
    ) -> Result<u64, LogError> {
        let shard = self.shard(uid)?;
        let t = shard.trees();
        let mut last = after;
        // Start at the chunk holding `after + 1`, which may begin before it.
        let wanted = log_key(uid, LogKind::A, after.saturating_add(1));
        let start = t
            .log
            .range(log_key(uid, LogKind::A, 0)..=wanted)
            .next_back()
            .transpose()?
            .map_or(wanted.to_vec(), |(key, _)| key.to_vec());
        let end = log_key(uid, LogKind::A, u64::MAX);
        for item in t.log.range(start..=end.to_vec()) {
            let (_, value) = item?;
            let mut chunk = codec::decode(&value).map_err(|e| LogError::Damaged(e.to_string()))?;
            if chunk.last_serial <= last {
                continue;
            }
            if chunk.first_serial <= last {
                chunk.entries.retain(|e| e.header.serial > last);
                chunk.first_serial = last + 1;
            }
            if chunk.first_serial != last + 1 {
                tracing::error!(
                    uid,
                    expected = last + 1,
                    found = chunk.first_serial,
                    "gap in the log; replay stops here"
                );
                break;
            }
            visit(&chunk)?;
            last = chunk.last_serial;
        }
        Ok(last)
    }

    /// The chunks of `kind` for database `uid` that hold serials from `from` on, in order,
    /// until `visit` returns false.
    pub fn read(
        &self,
        uid: u64,
        kind: LogKind,
        from: u64,
        mut visit: impl FnMut(&ChunkRef<'_>) -> bool,
    ) -> Result<(), LogError> {
        let shard = self.shard(uid)?;
        let t = shard.trees();
        let prefix = log_prefix(uid, kind);
        // The chunk holding `from` starts at or before it.
        let start = t
            .log
            .range(log_key(uid, kind, 0)..=log_key(uid, kind, from))
            .next_back()
            .transpose()?
            .map(|(key, _)| key.to_vec())
            .unwrap_or_else(|| log_key(uid, kind, from).to_vec());
        for item in t.log.range(start..) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            let chunk = codec::decode(&value).map_err(|e| LogError::Damaged(e.to_string()))?;
            if chunk.last_serial < from {
                continue;
            }
            if !visit(&chunk) {
                break;
            }
        }
        Ok(())
    }

    /// Delete chunks of `kind` whose newest entry is older than `cutoff_us`, oldest
    /// first; returns how many were deleted.
    pub fn prune_older_than(
        &self,
        uid: u64,
        kind: LogKind,
        cutoff_us: u64,
    ) -> Result<usize, LogError> {
        self.prune_oldest(uid, kind, |chunk| {
            codec::last_timestamp_us(chunk).is_some_and(|ts| ts < cutoff_us)
        })
    }

    /// Remove the oldest `kind` chunks of `uid` until at most `max_bytes` of them remain:
    /// retention's size bound, beside its time bound. Returns the chunks removed.
    pub fn prune_to_bytes(
        &self,
        uid: u64,
        kind: LogKind,
        max_bytes: u64,
    ) -> Result<usize, LogError> {
        let mut over = self.kind_bytes(uid, kind)?.saturating_sub(max_bytes);
        self.prune_oldest(uid, kind, |chunk| {
            let go = over > 0;
            over = over.saturating_sub(chunk.len() as u64);
            go
        })
    }

    /// Remove `kind` chunks of `uid` oldest first while `remove` says so of the next
    /// one, and remember the last serial removed ([`Self::pruned_through`]).
    fn prune_oldest(
        &self,
        uid: u64,
        kind: LogKind,
        mut remove: impl FnMut(&[u8]) -> bool,
    ) -> Result<usize, LogError> {
        let shard = self.shard(uid)?;
        let t = shard.trees();
        let mut removed = 0;
        let mut pruned = None;
        for item in t.log.scan_prefix(log_prefix(uid, kind)) {
            let (key, value) = item?;
            if !remove(&value) {
                break;
            }
            let head = codec::peek(&value).map_err(|e| LogError::Damaged(e.to_string()))?;
            pruned = Some(head.last_serial);
            t.log.remove(&key)?;
            shard.account_chunk(&key, -(value.len() as i64));
            removed += 1;
        }
        if let Some(serial) = pruned {
            let through = self.pruned_through(uid, kind)?.max(serial);
            t.log
                .insert(pruned_key(uid, kind), &through.to_be_bytes()[..])?;
        }
        Ok(removed)
    }

    /// The last serial whose `kind` entries retention may have dropped (0: none): every
    /// entry of a later serial is still held.
    pub fn pruned_through(&self, uid: u64, kind: LogKind) -> Result<u64, LogError> {
        let shard = self.shard(uid)?;
        let t = shard.trees();
        Ok(t.log
            .get(pruned_key(uid, kind))?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    /// Around `timestamp_us` in the `kind` log of `uid`: the last entry stamped at or
    /// before it and the first one stamped after it, each as `(serial, timestamp_us)`.
    /// Timestamps grow with serials, so only the chunk where they cross is decoded.
    pub fn around_time(
        &self,
        uid: u64,
        kind: LogKind,
        timestamp_us: u64,
    ) -> Result<(Option<Stamped>, Option<Stamped>), LogError> {
        let shard = self.shard(uid)?;
        let t = shard.trees();
        let mut at_or_before = None;
        for item in t.log.scan_prefix(log_prefix(uid, kind)) {
            let (_, value) = item?;
            let head = codec::peek(&value).map_err(|e| LogError::Damaged(e.to_string()))?;
            if head.last_timestamp_us <= timestamp_us {
                at_or_before = Some((head.last_serial, head.last_timestamp_us));
                continue;
            }
            let chunk = codec::decode(&value).map_err(|e| LogError::Damaged(e.to_string()))?;
            for entry in &chunk.entries {
                let found = (entry.header.serial, entry.header.timestamp_us);
                if entry.header.timestamp_us > timestamp_us {
                    return Ok((at_or_before, Some(found)));
                }
                at_or_before = Some(found);
            }
        }
        Ok((at_or_before, None))
    }

    /// The timestamp of the update with `serial`, from its `kind` entry if retained.
    pub fn timestamp_of(
        &self,
        uid: u64,
        kind: LogKind,
        serial: u64,
    ) -> Result<Option<u64>, LogError> {
        let mut found = None;
        self.read(uid, kind, serial, |chunk| {
            found = chunk
                .entries
                .iter()
                .find(|e| e.header.serial == serial)
                .map(|e| e.header.timestamp_us);
            false
        })?;
        Ok(found)
    }

    /// Delete chunks of `kind` whose entries all have serials at or below `serial`.
    pub fn prune_through(&self, uid: u64, kind: LogKind, serial: u64) -> Result<usize, LogError> {
        let shard = self.shard(uid)?;
        let t = shard.trees();
        let mut removed = 0;
        for item in t
            .log
            .range(log_key(uid, kind, 0)..=log_key(uid, kind, serial))
        {
            let (key, value) = item?;
            let chunk = codec::decode(&value).map_err(|e| LogError::Damaged(e.to_string()))?;
            if chunk.last_serial > serial {
                break;
            }
            t.log.remove(&key)?;
            shard.account_chunk(&key, -(value.len() as i64));
            removed += 1;
        }
        Ok(removed)
    }

    /// Oldest serial still held in the log of `kind`, if any.
    pub fn oldest_serial(&self, uid: u64, kind: LogKind) -> Result<Option<u64>, LogError> {
        let shard = self.shard(uid)?;
        let t = shard.trees();
        Ok(t.log
            .scan_prefix(log_prefix(uid, kind))
            .next()
            .transpose()?
            .map(|(key, _)| u64::from_be_bytes(key[9..17].try_into().expect("8 bytes"))))
    }

    /// Store a snapshot: its block bytes in parts in an instance of its own
    /// ([`snapshot_files`]), then its metadata in the shard (the commit point), then
    /// flush. Other databases keep appending and flushing meanwhile (see the module doc).
    /// Call it off the async runtime: it writes the whole snapshot.
    pub fn save_snapshot(
        &self,
        uid: u64,
        mut meta: SnapshotMeta,
        blocks: &[&crate::store::Block],
    ) -> Result<SnapshotMeta, LogError> {
        let shard = self.shard(uid)?;
        let _saving = shard.snapshot_writes.lock();
        if let Some(stored) =
            shard
                .trees()
                .snapshots
                .get(snapshot_key(uid, meta.serial, META_PART))?
        {
            // The same serial is the same state: the snapshot is already stored.
            return snapshot_files::decode_meta(meta.serial, &stored).map(|(meta, _)| meta);
        }
        let mut writer = snapshot_files::Writer::create(&shard.path, meta.serial)?;
        let mut part = Vec::with_capacity(SNAPSHOT_PART_BYTES);
        let mut size = 0u64;
        let mut unflushed = 0u64;
        let mut store = |part: Vec<u8>| -> Result<(), LogError> {
            let len = part.len() as u64;
            let _number = writer.push(part)?;
            #[cfg(test)]
            if let Some(hook) = self.after_snapshot_part.lock().as_mut() {
                hook(_number);
            }
            size += len;
            unflushed += len;
            if unflushed >= SNAPSHOT_PACE_BYTES {
                writer.flush()?;
                unflushed = 0;
            }
            Ok(())
        };
        for block in blocks {
            part.extend_from_slice(block.as_bytes());
            if part.len() >= SNAPSHOT_PART_BYTES {
                store(std::mem::take(&mut part))?;
            }
        }
        if !part.is_empty() {
            store(part)?;
        }
        let sums = writer.finish()?;
        release_deferred();
        meta.parts = sums.len() as u32;
        meta.size_bytes = size;
        let encoded = snapshot_files::encode_meta(&meta, &sums)?;
        let meta_bytes = encoded.len() as u64;
        shard
            .trees()
            .snapshots
            .insert(&snapshot_key(uid, meta.serial, META_PART)[..], encoded)?;
        shard.account(meta_bytes as i64);
        shard.account_stored(size as i64);
        self.flush_now(uid)?;
        Ok(meta)
    }

    /// Make the shard's snapshots whole before the database is used: remove what a crash
    /// left of a save or a delete (instances without metadata, `.tmp` ones, parts
    /// without metadata), and move the parts a node kept in the shard's `snapshots`
    /// tree before snapshots had instances into an instance each. Returns the parts
    /// and instances removed.
    pub fn drop_unfinished_snapshots(&self, uid: u64) -> Result<usize, LogError> {
        let shard = self.shard(uid)?;
        let t = shard.trees();
        // Every snapshot with metadata, a damaged one too: recovery decides about it.
        let finished: std::collections::HashSet<u64> = self
            .snapshot_list(uid)?
            .iter()
            .map(|(serial, _)| *serial)
            .collect();
        let mut removed = 0;
        let mut in_tree: BTreeMap<u64, Vec<sled::IVec>> = BTreeMap::new();
        for item in t.snapshots.scan_prefix(uid.to_be_bytes()) {
            let (key, _) = item?;
            if key[16..20] != META_PART.to_be_bytes() {
                let serial = u64::from_be_bytes(key[8..16].try_into().expect("8 bytes"));
                in_tree.entry(serial).or_default().push(key);
            }
        }
        let changed = !in_tree.is_empty();
        for (serial, keys) in in_tree {
            if finished.contains(&serial) && !snapshot_files::exists(&shard.path, serial) {
                let moved = self.move_parts_to_instance(&shard, uid, serial, keys.len())?;
                shard.account_stored(moved as i64);
            } else if !finished.contains(&serial) {
                removed += keys.len();
            }
            for key in keys {
                if let Some(bytes) = t.snapshots.remove(&key)? {
                    shard.account_stored(-(bytes.len() as i64));
                }
            }
        }
        if changed {
            self.flush_now(uid)?;
        }
        removed += snapshot_files::remove_others(&shard.path, &finished)?;
        if removed > 0 {
            tracing::warn!(
                uid,
                removed,
                "removed the parts of a snapshot a crash interrupted"
            );
        }
        Ok(removed)
    }

    /// Copy snapshot `serial`'s `parts` parts from the shard's `snapshots` tree (the
    /// layout before instances) into an instance of its own. Returns the bytes moved.
    fn move_parts_to_instance(
        &self,
        shard: &Shard,
        uid: u64,
        serial: u64,
        parts: usize,
    ) -> Result<u64, LogError> {
        let mut writer = snapshot_files::Writer::create(&shard.path, serial)?;
        let mut moved = 0;
        for part in 0..parts as u32 {
            let bytes = shard
                .trees()
                .snapshots
                .get(snapshot_key(uid, serial, part))?
                .ok_or_else(|| {
                    LogError::Damaged(format!("snapshot {serial} misses part {part}"))
                })?;
            moved += bytes.len() as u64;
            writer.push(bytes.to_vec())?;
        }
        let _sums = writer.finish()?;
        tracing::info!(
            uid,
            serial,
            parts,
            "moved a snapshot into an instance of its own"
        );
        Ok(moved)
    }

    /// Metadata of every stored snapshot of `uid`, oldest first (an error if one is
    /// damaged: see [`LogStore::snapshot_list`]).
    pub fn snapshots(&self, uid: u64) -> Result<Vec<SnapshotMeta>, LogError> {
        self.snapshot_list(uid)?
            .into_iter()
            .map(|(_, meta)| meta)
            .collect()
    }

    /// The serial of every stored snapshot of `uid`, oldest first, each with its
    /// metadata or why that is damaged (checked against its checksum).
    #[allow(clippy::type_complexity)]
    pub fn snapshot_list(
        &self,
        uid: u64,
    ) -> Result<Vec<(u64, Result<SnapshotMeta, LogError>)>, LogError> {
        let shard = self.shard(uid)?;
        let t = shard.trees();
        let mut out = Vec::new();
        for item in t.snapshots.scan_prefix(uid.to_be_bytes()) {
            let (key, value) = item?;
            if key[16..20] == META_PART.to_be_bytes() {
                let serial = u64::from_be_bytes(key[8..16].try_into().expect("8 bytes"));
                let meta = snapshot_files::decode_meta(serial, &value).map(|(meta, _)| meta);
                out.push((serial, meta));
            }
        }
        Ok(out)
    }

    /// Take damaged snapshot `serial` out of the listing (its metadata goes, durably)
    /// and keep its files for inspection under the shard's `damaged-snapshots` folder.
    /// Returns where they went.
    pub fn set_aside_snapshot(&self, uid: u64, serial: u64) -> Result<Option<PathBuf>, LogError> {
        let shard = self.shard(uid)?;
        if let Some(v) = shard
            .trees()
            .snapshots
            .remove(snapshot_key(uid, serial, META_PART))?
        {
            shard.account(-(v.len() as i64));
        }
        self.flush_now(uid)?;
        let moved = snapshot_files::set_aside(&shard.path, serial)?;
        // Its size was in its (damaged) metadata: count again when next asked.
        *shard.stored.lock() = None;
        Ok(moved)
    }

    /// A snapshot's blocks, cut out of each part as it is read (a part holds whole
    /// blocks), so recovery never holds the packed snapshot and its blocks at once.
    pub fn snapshot_block_list(
        &self,
        uid: u64,
        meta: &SnapshotMeta,
    ) -> Result<Vec<crate::store::Block>, LogError> {
        let size = (meta.layout.block_size as usize).max(1);
        let mut blocks = Vec::with_capacity(meta.layout.block_count());
        let shard = self.shard(uid)?;
        let stored = shard
            .trees()
            .snapshots
            .get(snapshot_key(uid, meta.serial, META_PART))?
            .ok_or_else(|| LogError::Damaged(format!("snapshot {} is gone", meta.serial)))?;
        let (_, sums) = snapshot_files::decode_meta(meta.serial, &stored)?;
        let _reading = shard.snapshot_reads.lock();
        snapshot_files::read(
            &shard.path,
            meta.serial,
            meta.parts,
            sums.as_deref(),
            |part| {
                if part.len() % size != 0 {
                    return Err(LogError::Damaged(format!(
                        "snapshot {}: a part of {} bytes for blocks of {size}",
                        meta.serial,
                        part.len()
                    )));
                }
                for bytes in part.chunks_exact(size) {
                    blocks.push(crate::store::Block::from_bytes(bytes).ok_or_else(|| {
                        LogError::Damaged(format!(
                            "snapshot {}: block {} has a bad header",
                            meta.serial,
                            blocks.len()
                        ))
                    })?);
                }
                Ok(())
            },
        )?;
        release_deferred();
        Ok(blocks)
    }

    /// Delete a stored snapshot: its metadata first, made durable before its instance
    /// goes, so a crash part way never lists a snapshot without its blocks.
    pub fn delete_snapshot(&self, uid: u64, meta: &SnapshotMeta) -> Result<(), LogError> {
        let shard = self.shard(uid)?;
        if let Some(v) =
            shard
                .trees()
                .snapshots
                .remove(snapshot_key(uid, meta.serial, META_PART))?
        {
            shard.account(-(v.len() as i64));
            shard.account_stored(-(meta.size_bytes as i64));
        }
        self.flush_now(uid)?;
        snapshot_files::remove(&shard.path, meta.serial)
    }

    /// Delete every log chunk and snapshot of a database: its shard leaves the store,
    /// and its directory goes once the last call still using it returns.
    pub fn delete_database(&self, uid: u64) -> Result<(), LogError> {
        let shard = self.shard(uid)?;
        self.deleted.lock().insert(uid);
        self.shards.write().remove(&uid);
        shard
            .doomed
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Start database `uid` over with an empty log in a new generation of its shard (a
    /// replica about to install a snapshot): the old generation's directory goes as in
    /// [`Self::delete_database`]. A crash in between leaves both; [`Self::open`] keeps
    /// the new one.
    pub fn reset_database(&self, uid: u64) -> Result<(), LogError> {
        let old = self.shard(uid)?;
        let generation = old
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_shard_dir_name)
            .map_or(0, |(_, g)| g);
        let fresh = Arc::new(Shard::open(
            &self.dir.join(shard_dir_name(uid, generation + 1)),
            self.cache_bytes,
        )?);
        self.shards.write().insert(uid, fresh);
        old.doomed.store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Hold database `uid`'s background flusher back (or let it go), as a disk that
    /// cannot keep up would.
    #[cfg(test)]
    pub fn stall_flushes(&self, uid: u64, stalled: bool) {
        let shard = self.shard(uid).expect("shard");
        shard.flusher.stalled.store(stalled, Ordering::Release);
        let _state = shard.flusher.state.lock();
        shard.flusher.wake.notify_all();
    }

    /// Flush every shard and stop their flushers; the shards close as their last
    /// holders let go.
    pub fn shutdown(&self) -> Result<(), LogError> {
        let shards: Vec<Arc<Shard>> = self.shards.write().drain().map(|(_, s)| s).collect();
        let mut first_error = None;
        for shard in shards {
            shard.flusher.stop();
            if let Err(e) = shard.save_counts().and_then(|()| shard.flusher.flush()) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// A flush of one database's log that [`LogStore::wait_durable`] waits for.
pub struct FlushTicket {
    flushed: watch::Receiver<Flushed>,
    number: u64,
}

impl Shard {
    /// Open (or create) the sled instance at `path` and start its flusher.
    fn open(path: &Path, cache_bytes: u64) -> Result<Shard, LogError> {
        let db = sled_config(path, cache_bytes)
            .flush_every_ms(None)
            .open()
            .map_err(|e| {
                LogError::Sled(format!("cannot open the log at {}: {e}", path.display()))
            })?;
        let flusher = Arc::new(Flusher {
            db: Mutex::new(Some(db.clone())),
            state: Mutex::new(FlushState::default()),
            wake: Condvar::new(),
            flushed: watch::channel((0, None)).0,
            appended: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            #[cfg(test)]
            stalled: std::sync::atomic::AtomicBool::new(false),
        });
        let thread = {
            let flusher = flusher.clone();
            std::thread::Builder::new()
                .name("doppel-log-flusher".into())
                .spawn(move || flush_loop(flusher))
                .map_err(|e| LogError::Flush(e.to_string()))?
        };
        let shard = Shard {
            trees: Some(Trees {
                log: db.open_tree("log")?,
                snapshots: db.open_tree("snapshots")?,
                counts: db.open_tree("counts")?,
            }),
            path: path.to_path_buf(),
            flusher,
            flusher_thread: Mutex::new(Some(thread)),
            stored: Mutex::new(None),
            kind_stored: Mutex::new(HashMap::new()),
            doomed: std::sync::atomic::AtomicBool::new(false),
            tail: Mutex::new(Tail::default()),
            snapshot_reads: Mutex::new(()),
            snapshot_writes: Mutex::new(()),
        };
        shard.load_counts()?;
        Ok(shard)
    }

    fn trees(&self) -> &Trees {
        self.trees
            .as_ref()
            .expect("a shard's trees live until it drops")
    }

    /// Add (or with a negative `delta`, remove) bytes to the count, if counted yet, and
    /// written ones to what the flusher has to make durable.
    fn account(&self, delta: i64) {
        if delta > 0 {
            self.flusher
                .appended
                .fetch_add(delta as u64, Ordering::Relaxed);
        }
        self.account_stored(delta);
    }

    /// Add bytes to the stored count only: a snapshot's parts are in an instance of
    /// their own, not the shard's to flush.
    fn account_stored(&self, delta: i64) {
        if let Some(bytes) = self.stored.lock().as_mut() {
            *bytes = bytes.saturating_add_signed(delta);
        }
    }

    /// Take the counts a clean shutdown left ([`Self::save_counts`]) and remove them,
    /// so a crash from now on makes the next start count again. sled recovers a prefix
    /// of its writes, so no write after this removal can survive a crash without it.
    fn load_counts(&self) -> Result<(), LogError> {
        let counts = &self.trees().counts;
        let read = |value: sled::IVec| <[u8; 8]>::try_from(value.as_ref()).map(u64::from_be_bytes);
        for item in counts.iter() {
            let (key, value) = item?;
            match (key.as_ref(), read(value)) {
                (STORED_COUNT, Ok(bytes)) => *self.stored.lock() = Some(bytes),
                ([KIND_COUNT, kind], Ok(bytes)) => {
                    self.kind_stored.lock().insert(*kind, bytes);
                }
                _ => {}
            }
            counts.remove(key)?;
        }
        Ok(())
    }

    /// Write the byte counts known now, for the next start to take instead of reading
    /// every chunk ([`Self::load_counts`]). Call it when no write can follow (the node
    /// stops), then flush.
    fn save_counts(&self) -> Result<(), LogError> {
        let counts = &self.trees().counts;
        if let Some(bytes) = *self.stored.lock() {
            counts.insert(STORED_COUNT, &bytes.to_be_bytes())?;
        }
        for (kind, bytes) in self.kind_stored.lock().iter() {
            counts.insert([KIND_COUNT, *kind], &bytes.to_be_bytes())?;
        }
        Ok(())
    }

    /// [`Self::account`] for the log chunk at `key`, and its kind's count too.
    fn account_chunk(&self, key: &[u8], delta: i64) {
        self.account(delta);
        if let Some(bytes) = self.kind_stored.lock().get_mut(&key[8]) {
            *bytes = bytes.saturating_add_signed(delta);
        }
    }
}

impl Drop for Shard {
    /// Stops the flusher and waits for it, closes sled, then removes the directory of a
    /// deleted database or an old generation.
    fn drop(&mut self) {
        self.flusher.stop();
        if let Some(thread) = self.flusher_thread.lock().take() {
            let _ = thread.join();
        }
        // Nothing else holds sled now: the thread is gone, and flushes run under a
        // holder of the shard.
        drop(self.trees.take());
        drop(self.flusher.db.lock().take());
        if self.doomed.load(std::sync::atomic::Ordering::Acquire) {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "could not remove a deleted database's log directory");
            }
        }
    }
}

impl Flusher {
    /// Ask for a flush; the ticket to wait for it with.
    fn ticket(&self) -> Result<FlushTicket, LogError> {
        let mut state = self.state.lock();
        if state.shutdown {
            // Its flusher is gone (the database was deleted or the node stops).
            return Err(LogError::Flush("the database's log is closed".into()));
        }
        state.requested += 1;
        let number = state.requested;
        self.wake.notify_one();
        Ok(FlushTicket {
            flushed: self.flushed.subscribe(),
            number,
        })
    }

    fn backlog(&self) -> u64 {
        let appended = self.appended.load(Ordering::Acquire);
        appended.saturating_sub(self.durable.load(Ordering::Acquire))
    }

    /// Flush on this thread; what was appended before it is durable after it.
    fn flush(&self) -> Result<(), LogError> {
        let upto = self.appended.load(Ordering::Acquire);
        let db = self.db.lock().clone();
        db.ok_or_else(|| LogError::Flush("the database's log is closed".into()))?
            .flush()?;
        self.durable.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }

    fn stop(&self) {
        self.state.lock().shutdown = true;
        self.wake.notify_one();
    }
}

/// Flush back to back while flushes are requested, and every [`BACKGROUND_FLUSH`] while
/// a backlog is left (durability `none` writes nobody waits for); exit when stopped.
fn flush_loop(flusher: Arc<Flusher>) {
    loop {
        let target = {
            let mut state = flusher.state.lock();
            loop {
                let done = flusher.flushed.borrow().0;
                if state.requested != done {
                    break state.requested;
                }
                if state.shutdown {
                    return;
                }
                let idle = flusher.wake.wait_for(&mut state, BACKGROUND_FLUSH);
                if idle.timed_out() && flusher.backlog() > 0 {
                    // No ticket waits; `done` stays where it is.
                    break flusher.flushed.borrow().0.max(state.requested);
                }
            }
        };
        #[cfg(test)]
        {
            let mut state = flusher.state.lock();
            while flusher.stalled.load(Ordering::Acquire) && !state.shutdown {
                flusher.wake.wait(&mut state);
            }
        }
        let result = flusher.flush();
        release_deferred();
        flusher.flushed.send_modify(|(done, err)| match result {
            Ok(()) => {
                *done = (*done).max(target);
                *err = None;
            }
            Err(e) => {
                tracing::error!(error = %e, "log flush failed");
                *err = Some(e.to_string().into());
            }
        });
        if flusher.flushed.borrow().1.is_some() {
            // Do not spin on a failing disk.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
#[path = "durable_tests.rs"]
mod tests;
