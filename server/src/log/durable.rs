//! The durable log and snapshots of every database, with group commit (SPEC B4, B5, G1).
//!
//! Every database keeps its log and snapshots in a directory of its own, a [`Shard`] in
//! `<data dir>/logs/<uid>.<generation>`, with its own flusher. One instance
//! for the node made every database's `group` flush write out whatever any other
//! database had appended (a flood at durability `none` put its megabytes ahead of a
//! quiet tenant's commit), and sled's write lock serialised them all. Apart, a
//! database's flush waits only for its own writes, a deleted database's space comes back
//! at once (its directory goes), and a replica rebuilt from a snapshot starts a new
//! generation instead of leaving its old log's pages for sled to reuse some day. A node
//! that kept everything in its one instance (before this layout) has it moved at start
//! ([`LogStore::adopt_shared_trees`]).
//!
//! A shard holds:
//! - `segments/`: the A, B and T logs, a logical replica's positions and retention's
//!   marks, in append-only files with a checksum per record ([`super::segments`]). A
//!   transaction is one record, so a crash keeps all of its chunks or none. Its A chunks
//!   carry its T log ([`codec`]'s version 2): the record's bytes are kept once.
//! - a sled instance with the `snapshots` tree: key `db uid | serial | u32::MAX (4, BE)`
//!   → a snapshot's metadata. Its block bytes are in a file of their own,
//!   `snapshots/<serial>.snap` ([`snapshot_files`]); a node from before that layout kept
//!   them here under part numbers, and recovery moves them into a file. The instance's
//!   `log` tree is where the log was kept before segment files (key `db uid | kind | first serial`, markers under kind
//!   byte 0); opening a shard moves what it holds into segments and empties it.
//!
//! A transaction's record is written while its database's writer lock is held, so the
//! segments receive them in serial order. [`LogStore::drop_torn_tail`] still removes B
//! or T chunks above the last A serial, which only a log moved out of sled can hold
//! (sled wrote a small transaction's chunks one at a time, its A chunk last).
//!
//! A snapshot writes its parts into its own file, never holding the shard's sled
//! (SPEC G1: a snapshot pauses writers only to freeze the location tables); its
//! metadata, written into the shard once the parts are durable, is the commit point. A
//! crash before leaves a file without metadata, which no listing shows and
//! [`LogStore::drop_unfinished_snapshots`] removes when the database is recovered.
//! Deleting a snapshot makes the removal of its metadata durable before its file
//! goes.
//!
//! Making them durable is separate: [`LogStore::wait_durable`] waits for a flush that
//! started after the append. One flusher thread runs flushes (an `fdatasync` of the
//! segment written) back to back while anyone waits, so one sync covers every
//! transaction that arrived during the previous one (group commit).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::codec::{self, ChunkRef};
use super::segments::{Entry, Segments};
use super::snapshot_files;
use super::tail::Tail;
use super::{LogKind, TxnLog};
use crate::store::snapshot::SnapshotLayout;

/// Bytes of snapshot parts a snapshot writes between two syncs of its file, so the data
/// it leaves for the kernel to write stays small ahead of other databases' fsyncs on the
/// same disk. Measured when parts still went into sled, on a 230 MB snapshot: the other
/// writers' worst put 31–101 ms at 8 MiB, 9–17 ms at 2 MiB, 9–15 ms at 1 MiB
/// (docs/BENCHMARKS.md).
const SNAPSHOT_PACE_BYTES: u64 = 2 << 20;
/// Bytes of packed blocks per snapshot part: the unit of a snapshot file's checksums
/// (`snapshot_files`), and the buffer a save and a load hold.
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
    /// The disk (or the user's disk quota) is full: nothing was written.
    #[error("the disk is full: {0}")]
    NoSpace(String),
}

impl LogError {
    /// An IO failure doing `what`: [`LogError::NoSpace`] when the disk is full.
    pub fn io(what: String, err: &std::io::Error) -> LogError {
        match err.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => LogError::NoSpace(format!("{what}: {err}")),
            _ => LogError::Sled(format!("{what}: {err}")),
        }
    }
}

impl From<sled::Error> for LogError {
    fn from(err: sled::Error) -> Self {
        if let sled::Error::Io(io) = &err {
            return LogError::io("sled".into(), io);
        }
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

/// One transaction's stored chunks (A first, then B and T), for replication. A chunks of
/// version 2 are its T chunks too (`head.holds(LogKind::T)`); separate T chunks come
/// only from logs written by earlier builds.
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
    /// The A, B and T logs.
    segments: Arc<Segments>,
    /// Bytes of snapshot metadata and parts, counted from the metadata the first time
    /// they are asked for and kept up to date by every save and delete.
    snapshot_bytes: Mutex<Option<u64>>,
    /// Remove the directory when the last holder lets go (the database was deleted).
    doomed: std::sync::atomic::AtomicBool,
    /// The newest transactions, for the links' senders.
    tail: Mutex<Tail>,
    /// Held while a snapshot is read: sled locks the files of a snapshot an earlier
    /// build wrote as an instance, so two restores reading the same snapshot take turns.
    snapshot_reads: Mutex<()>,
    /// Held while a snapshot is saved: two saves at one serial (a snapshot asked for
    /// twice with no write between) must not write one file at once.
    snapshot_writes: Mutex<()>,
}

struct Trees {
    /// Where the log was kept before it had segment files: emptied into them at open
    /// ([`Shard::migrate_sled_log`]).
    log: sled::Tree,
    snapshots: sled::Tree,
}

/// See [`LogStore::after_snapshot_part`].
#[cfg(test)]
type PartHook = Box<dyn FnMut(u32) + Send>;

/// What the log store shares with its flusher thread. The thread holds only this, so
/// dropping the [`LogStore`] stops it at once.
struct Flusher {
    /// Taken when the shard drops, so sled is closed before its directory may go.
    db: Mutex<Option<sled::Db>>,
    segments: Arc<Segments>,
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
                let shard = self.shard(uid)?;
                shard.migrate_sled_log()?;
                shard.flusher.flush_all()?;
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

    /// Write a transaction's A chunks (which carry its T log) and B chunks in one atomic batch. Call it under the
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
        for kind in [LogKind::A, LogKind::B] {
            for (_, bytes) in codec::encode(txn, kind) {
                chunks.push(sled::IVec::from(bytes));
            }
        }
        Self::insert_txn(&*self.shard(uid)?, chunks, position)
    }

    /// Store one transaction's chunks and, for a logical replica, its position, so that
    /// a crash keeps all of them or none: one record of the segment log.
    fn insert_txn(
        shard: &Shard,
        chunks: Vec<sled::IVec>,
        position: Option<(u64, u64)>,
    ) -> Result<(), LogError> {
        let chunks = chunks
            .into_iter()
            .map(|bytes| {
                let head = codec::peek(&bytes).map_err(|e| LogError::Damaged(e.to_string()))?;
                Ok(RawChunk { head, bytes })
            })
            .collect::<Result<Vec<_>, LogError>>()?;
        let refs: Vec<_> = chunks.iter().map(|c| (c.head, &c.bytes[..])).collect();
        let written = shard.segments.append(&refs, position)?;
        shard.account(written);
        let mut tail = shard.tail.lock();
        if tail.wanted() {
            tail.push(&chunks);
        }
        Ok(())
    }

    /// Remove what a crash left of a transaction that did not commit: B and T chunks
    /// above both the last A serial of database `uid` and `recovered` (the serial its
    /// recovery reached: its snapshot's when the A log after it is empty). See the module
    /// doc. Call it before the database takes writes. Returns the chunks removed.
    pub fn drop_torn_tail(&self, uid: u64, recovered: u64) -> Result<usize, LogError> {
        let shard = self.shard(uid)?;
        let last_a = shard
            .segments
            .bounds(LogKind::A)
            .1
            .map_or(0, |e| e.last)
            .max(recovered);
        let mut removed = 0;
        for kind in [LogKind::B, LogKind::T] {
            removed += shard.segments.truncate_above(kind, last_a)?.0;
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
        Ok(self.shard(uid)?.segments.positions())
    }

    /// Write several transactions' chunks in one atomic batch (a point-in-time restore's
    /// transactions: all of them or none survive a crash). Call it while no other writer
    /// can append to database `uid`.
    pub fn append_txns(&self, uid: u64, txns: &[TxnLog]) -> Result<(), LogError> {
        let shard = self.shard(uid)?;
        let encoded: Vec<Vec<u8>> = txns
            .iter()
            .flat_map(|txn| {
                [LogKind::A, LogKind::B]
                    .into_iter()
                    .flat_map(move |kind| codec::encode(txn, kind))
            })
            .map(|(_, bytes)| bytes)
            .collect();
        let chunks = encoded
            .iter()
            .map(|bytes| {
                let head = codec::peek(bytes).map_err(|e| LogError::Damaged(e.to_string()))?;
                Ok((head, bytes.as_slice()))
            })
            .collect::<Result<Vec<_>, LogError>>()?;
        let written = shard.segments.append(&chunks, None)?;
        shard.account(written);
        shard.tail.lock().clear();
        Ok(())
    }

    /// Write chunks exactly as another node encoded them (a mirror replica's copy of its
    /// source's log), all of them or none. Call it under the database's writer lock.
    pub fn append_raw(&self, uid: u64, chunks: &[RawChunk]) -> Result<(), LogError> {
        let chunks = chunks.iter().map(|c| c.bytes.clone()).collect();
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
        let segments = &shard.segments;
        let mut out: Vec<RawTxn> = Vec::new();
        let mut bytes = 0;
        let mut expected = after + 1;
        segments.scan(LogKind::A, expected, |_, value| {
            let head = codec::peek(&value).map_err(|e| LogError::Damaged(e.to_string()))?;
            if head.first_serial != expected || (starts_txn(&out, &head) && bytes >= max_bytes) {
                return Ok(false);
            }
            bytes += value.len();
            add_a_chunk(&mut out, RawChunk { head, bytes: value });
            expected = head.last_serial + 1;
            Ok(true)
        })?;
        // A transaction's A chunks may continue past what the scan saw only if the
        // scan stopped at a gap, which cannot split a transaction (one record).
        if let (Some(first), Some(last)) = (out.first(), out.last()) {
            let range = first.first_serial..=last.last_serial;
            for kind in also {
                let mut entries = segments.entries_in(*kind, range.clone(), usize::MAX);
                // A chunks that carry the T log are in `out` already.
                entries.retain(|e| !e.shared);
                let mut at = 0;
                segments.read(&entries, |_, value| {
                    let head = codec::peek(&value).map_err(|e| LogError::Damaged(e.to_string()))?;
                    while out[at].last_serial < head.first_serial {
                        at += 1;
                    }
                    out[at].chunks.push(RawChunk { head, bytes: value });
                    Ok(true)
                })?;
            }
        }
        Ok(out)
    }

    /// Bytes of log and snapshots stored for database `uid`: its chunks, and its
    /// snapshots' metadata and parts.
    pub fn stored_bytes(&self, uid: u64) -> Result<u64, LogError> {
        let shard = self.shard(uid)?;
        Ok(shard.segments.chunk_bytes() + shard.snapshot_bytes()?)
    }

    /// Bytes of the `kind` chunks of database `uid`.
    pub fn kind_bytes(&self, uid: u64, kind: LogKind) -> Result<u64, LogError> {
        Ok(self.shard(uid)?.segments.kind_bytes(kind))
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

    /// Make database `uid`'s log durable now, on this thread (durability `sync`): its
    /// segment files only, not the snapshot metadata beside them.
    pub fn sync_log(&self, uid: u64) -> Result<(), LogError> {
        self.shard(uid)?.flusher.flush()
    }

    /// Flush database `uid`'s log and snapshot metadata now, on this thread.
    pub fn flush_now(&self, uid: u64) -> Result<(), LogError> {
        self.shard(uid)?.flusher.flush_all()
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
        let mut last = after;
        // Start at the chunk holding `after + 1`, which may begin before it.
        let start = shard.segments.holding(LogKind::A, after.saturating_add(1));
        shard.segments.scan(LogKind::A, start, |_, value| {
            let mut chunk = codec::decode(&value).map_err(|e| LogError::Damaged(e.to_string()))?;
            if chunk.last_serial <= last {
                return Ok(true);
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
                return Ok(false);
            }
            visit(&chunk)?;
            last = chunk.last_serial;
            Ok(true)
        })?;
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
        // The chunk holding `from` starts at or before it.
        let start = shard.segments.holding(kind, from);
        shard.segments.scan(kind, start, |_, value| {
            let chunk =
                codec::decode_as(&value, kind).map_err(|e| LogError::Damaged(e.to_string()))?;
            Ok(chunk.last_serial < from || visit(&chunk))
        })
    }

    /// Delete chunks of `kind` whose newest entry is older than `cutoff_us`, oldest
    /// first; returns how many were deleted.
    pub fn prune_older_than(
        &self,
        uid: u64,
        kind: LogKind,
        cutoff_us: u64,
    ) -> Result<usize, LogError> {
        self.prune_oldest(uid, kind, |chunk| chunk.last_ts < cutoff_us)
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
            over = over.saturating_sub(chunk.len as u64);
            go
        })
    }

    /// Remove `kind` chunks of `uid` oldest first while `remove` says so of the next
    /// one, and remember the last serial removed ([`Self::pruned_through`]).
    fn prune_oldest(
        &self,
        uid: u64,
        kind: LogKind,
        remove: impl FnMut(&Entry) -> bool,
    ) -> Result<usize, LogError> {
        let shard = self.shard(uid)?;
        let (removed, _) = shard.segments.prune_oldest(kind, remove)?;
        Ok(removed)
    }

    /// The last serial whose `kind` entries retention may have dropped (0: none): every
    /// entry of a later serial is still held.
    pub fn pruned_through(&self, uid: u64, kind: LogKind) -> Result<u64, LogError> {
        Ok(self.shard(uid)?.segments.pruned_through(kind))
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
        let mut at_or_before = None;
        let mut after = None;
        shard.segments.scan(kind, 0, |entry, value| {
            if entry.last_ts <= timestamp_us {
                at_or_before = Some((entry.last, entry.last_ts));
                return Ok(true);
            }
            let chunk =
                codec::decode_as(&value, kind).map_err(|e| LogError::Damaged(e.to_string()))?;
            for e in &chunk.entries {
                let found = (e.header.serial, e.header.timestamp_us);
                if e.header.timestamp_us > timestamp_us {
                    after = Some(found);
                    return Ok(false);
                }
                at_or_before = Some(found);
            }
            Ok(true)
        })?;
        Ok((at_or_before, after))
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
        self.prune_oldest(uid, kind, |chunk| chunk.last <= serial)
    }

    /// Oldest serial still held in the log of `kind`, if any.
    pub fn oldest_serial(&self, uid: u64, kind: LogKind) -> Result<Option<u64>, LogError> {
        Ok(self.shard(uid)?.segments.bounds(kind).0.map(|e| e.first))
    }

    /// Store a snapshot: its block bytes in parts in a file of its own
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
        let mut store = |part: &[u8]| -> Result<(), LogError> {
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
                store(&part)?;
                part.clear();
            }
        }
        if !part.is_empty() {
            store(&part)?;
        }
        let sums = writer.finish()?;
        meta.parts = sums.len() as u32;
        meta.size_bytes = size;
        let encoded = snapshot_files::encode_meta(&meta, &sums)?;
        let meta_bytes = encoded.len() as u64;
        shard
            .trees()
            .snapshots
            .insert(&snapshot_key(uid, meta.serial, META_PART)[..], encoded)?;
        shard.account(meta_bytes);
        shard.account_snapshot((meta_bytes + size) as i64);
        self.flush_now(uid)?;
        Ok(meta)
    }

    /// Make the shard's snapshots whole before the database is used: remove what a crash
    /// left of a save or a delete (files or instances without metadata, `.tmp` ones,
    /// parts without metadata), and move the parts a node kept in the shard's
    /// `snapshots` tree before snapshots had files into a file each. Returns the parts,
    /// files and instances removed.
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
                let moved = self.move_parts_to_file(&shard, uid, serial, keys.len())?;
                shard.account_snapshot(moved as i64);
            } else if !finished.contains(&serial) {
                removed += keys.len();
            }
            for key in keys {
                if let Some(bytes) = t.snapshots.remove(&key)? {
                    shard.account_snapshot(-(bytes.len() as i64));
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
    /// layout before snapshot files) into a file of its own. Returns the bytes moved.
    fn move_parts_to_file(
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
            writer.push(&bytes)?;
        }
        let _sums = writer.finish()?;
        tracing::info!(
            uid,
            serial,
            parts,
            "moved a snapshot into a file of its own"
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
        shard
            .trees()
            .snapshots
            .remove(snapshot_key(uid, serial, META_PART))?;
        self.flush_now(uid)?;
        let moved = snapshot_files::set_aside(&shard.path, serial)?;
        // Its size was in its (damaged) metadata: count again when next asked.
        *shard.snapshot_bytes.lock() = None;
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

    /// Delete a stored snapshot: its metadata first, made durable before its file
    /// goes, so a crash part way never lists a snapshot without its blocks.
    pub fn delete_snapshot(&self, uid: u64, meta: &SnapshotMeta) -> Result<(), LogError> {
        let shard = self.shard(uid)?;
        if let Some(v) =
            shard
                .trees()
                .snapshots
                .remove(snapshot_key(uid, meta.serial, META_PART))?
        {
            shard.account_snapshot(-((v.len() as u64 + meta.size_bytes) as i64));
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
            if let Err(e) = shard.flusher.flush_all() {
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
    /// Open (or create) the sled instance at `path` and its segment files, move a log
    /// still kept in sled into them, and start its flusher.
    fn open(path: &Path, cache_bytes: u64) -> Result<Shard, LogError> {
        let db = sled_config(path, cache_bytes)
            .flush_every_ms(None)
            .open()
            .map_err(|e| {
                LogError::Sled(format!("cannot open the log at {}: {e}", path.display()))
            })?;
        let segments = Arc::new(Segments::open(&path.join("segments"))?);
        let flusher = Arc::new(Flusher {
            db: Mutex::new(Some(db.clone())),
            segments: segments.clone(),
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
        // Byte counts a clean shutdown of an older build left: the segment index
        // counts its own bytes now.
        if db.tree_names().iter().any(|t| t.as_ref() == b"counts") {
            db.drop_tree("counts")?;
        }
        let shard = Shard {
            trees: Some(Trees {
                log: db.open_tree("log")?,
                snapshots: db.open_tree("snapshots")?,
            }),
            path: path.to_path_buf(),
            flusher,
            flusher_thread: Mutex::new(Some(thread)),
            segments,
            snapshot_bytes: Mutex::new(None),
            doomed: std::sync::atomic::AtomicBool::new(false),
            tail: Mutex::new(Tail::default()),
            snapshot_reads: Mutex::new(()),
            snapshot_writes: Mutex::new(()),
        };
        shard.migrate_sled_log()?;
        Ok(shard)
    }

    fn trees(&self) -> &Trees {
        self.trees
            .as_ref()
            .expect("a shard's trees live until it drops")
    }

    /// Count bytes written, for the flusher to make durable.
    fn account(&self, written: u64) {
        self.flusher.appended.fetch_add(written, Ordering::Relaxed);
    }

    /// Add (or with a negative `delta`, remove) snapshot bytes to their count, if
    /// counted yet.
    fn account_snapshot(&self, delta: i64) {
        if let Some(bytes) = self.snapshot_bytes.lock().as_mut() {
            *bytes = bytes.saturating_add_signed(delta);
        }
    }

    /// Bytes of snapshot metadata and parts (the parts as their metadata counts them,
    /// without reading them), counted once and then kept up to date.
    fn snapshot_bytes(&self) -> Result<u64, LogError> {
        if let Some(bytes) = *self.snapshot_bytes.lock() {
            return Ok(bytes);
        }
        let mut total = 0u64;
        for item in self.trees().snapshots.iter() {
            let (key, value) = item?;
            total += value.len() as u64;
            if key.get(16..20) == Some(&META_PART.to_be_bytes()[..]) {
                let serial = u64::from_be_bytes(key[8..16].try_into().expect("8 bytes"));
                // A damaged snapshot counts its metadata only (recovery sets it aside).
                if let Ok((meta, _)) = snapshot_files::decode_meta(serial, &value) {
                    total += meta.size_bytes;
                }
            }
        }
        Ok(*self.snapshot_bytes.lock().get_or_insert(total))
    }

    /// Move a log kept in sled's `log` tree (by a node from before segment files, or
    /// adopted from the node's own instance) into the segment files, then empty the
    /// tree. A crash part way moves it again at the next open: a chunk stored twice
    /// replaces itself in the index. Returns the entries moved.
    fn migrate_sled_log(&self) -> Result<u64, LogError> {
        let tree = &self.trees().log;
        if tree.is_empty() {
            return Ok(0);
        }
        let mut moved = 0u64;
        for item in tree.iter() {
            let (key, value) = item?;
            moved += 1;
            if key.get(8) != Some(&0) {
                let head = codec::peek(&value).map_err(|e| LogError::Damaged(e.to_string()))?;
                self.segments.append(&[(head, &value[..])], None)?;
                continue;
            }
            let number = |at: usize| {
                key.get(at..at + 8)
                    .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
            };
            let value = <[u8; 8]>::try_from(value.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| LogError::Damaged("a log marker is not 8 bytes".into()))?;
            match (key.len(), number(9)) {
                // A logical replica's position in a stream.
                (25, Some(u64::MAX)) => {
                    let stream = number(17).expect("25 bytes");
                    self.segments.append(&[], Some((stream, value)))?;
                }
                // The last serial retention pruned of a kind.
                (17, Some(marker)) => {
                    if let Some(kind) = [LogKind::A, LogKind::B, LogKind::T]
                        .into_iter()
                        .find(|k| u64::MAX - *k as u64 == marker)
                    {
                        self.segments.mark_pruned(kind, value)?;
                    }
                }
                _ => {}
            }
        }
        self.segments.sync()?;
        tree.clear()?;
        self.flusher.flush_all()?;
        tracing::info!(
            path = %self.path.display(),
            entries = moved,
            "moved the log out of sled into segment files"
        );
        Ok(moved)
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

    /// Make the log durable on this thread: what was appended before it is durable
    /// after it (group commit's flush).
    fn flush(&self) -> Result<(), LogError> {
        let upto = self.appended.load(Ordering::Acquire);
        if self.db.lock().is_none() {
            return Err(LogError::Flush("the database's log is closed".into()));
        }
        self.segments.sync()?;
        self.durable.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }

    /// [`Self::flush`], and sled's snapshot metadata and markers too.
    fn flush_all(&self) -> Result<(), LogError> {
        let db = self.db.lock().clone();
        db.ok_or_else(|| LogError::Flush("the database's log is closed".into()))?
            .flush()?;
        self.flush()
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
