//! The durable log and snapshots of every database, with group commit (SPEC B4, B5, G1).
//!
//! Every database keeps its log and snapshots in a directory of its own, a [`Shard`] in
//! `<data dir>/logs/<uid>.<generation>`, with its own flusher. One instance
//! for the node made every database's `group` flush write out whatever any other
//! database had appended (a flood at durability `none` put its megabytes ahead of a
//! quiet tenant's commit), and sled's write lock serialised them all. Apart, a
//! database's flush waits only for its own writes, a deleted database's space comes back
//! at once (its directory goes), and a replica rebuilt from a snapshot starts a new
//! generation instead of leaving its old log's files behind.
//!
//! A shard holds:
//! - `segments/`: the A, B and T logs, a logical replica's positions and retention's
//!   marks, in append-only files with a checksum per record ([`super::segments`]). A
//!   transaction is one record, so a crash keeps all of its chunks or none. Its A chunks
//!   carry its T log ([`codec`]'s version 2): the record's bytes are kept once.
//! - `snapshots/<serial>.snap`: each snapshot, its blocks and its metadata in one file
//!   ([`snapshot_files`]); the folder is the list of snapshots.
//!
//! No sled instance: what earlier builds kept in one per shard (the log before segment
//! files, snapshot metadata before it went into the snapshot's file) is moved out when
//! the shard opens ([`sled_migration`]), and a node that kept everything in its own
//! instance has it moved at start ([`LogStore::adopt_shared_trees`]).
//!
//! A transaction's record is written while its database's writer lock is held, so the
//! segments receive them in serial order. [`LogStore::drop_torn_tail`] still removes B
//! or T chunks above the last A serial, which only a log moved out of sled can hold
//! (sled wrote a small transaction's chunks one at a time, its A chunk last).
//!
//! A snapshot writes its parts and then its metadata into a file of its own, never
//! holding the database's log (SPEC G1: a snapshot pauses writers only to freeze the
//! location tables); the file's rename to its final name is the commit point. A crash
//! before leaves a `.tmp` file, which no listing shows and
//! [`LogStore::drop_unfinished_snapshots`] removes when the database is recovered.
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
use super::sled_migration;
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

/// One database's log and snapshots, and its group-commit flusher. Dropped when its
/// database is deleted or starts a new generation; the last holder's drop stops the
/// flusher and then (if doomed) removes the directory, so no thread writes into a
/// directory that is going or reused.
struct Shard {
    path: PathBuf,
    flusher: Arc<Flusher>,
    flusher_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The A, B and T logs.
    segments: Arc<Segments>,
    /// Bytes of the snapshot files, counted the first time they are asked for and kept
    /// up to date by every save and delete.
    snapshot_bytes: Mutex<Option<u64>>,
    /// Remove the directory when the last holder lets go (the database was deleted).
    doomed: std::sync::atomic::AtomicBool,
    /// The newest transactions, for the links' senders.
    tail: Mutex<Tail>,
    /// Held while a snapshot is saved: two saves at one serial (a snapshot asked for
    /// twice with no write between) must not write one file at once.
    snapshot_writes: Mutex<()>,
}

/// See [`LogStore::after_snapshot_part`].
#[cfg(test)]
type PartHook = Box<dyn FnMut(u32) + Send>;

/// What the log store shares with its flusher thread. The thread holds only this, so
/// dropping the [`LogStore`] stops it at once.
struct Flusher {
    segments: Arc<Segments>,
    state: Mutex<FlushState>,
    wake: Condvar,
    flushed: watch::Sender<Flushed>,
    /// Bytes written into the shard's log since it opened.
    appended: AtomicU64,
    /// Of those, the bytes a completed flush made durable: the rest is the backlog.
    durable: AtomicU64,
    /// Tests hold the flusher back, as a disk that cannot keep up would.
    #[cfg(test)]
    stalled: std::sync::atomic::AtomicBool,
}

/// sled as Doppel configures it: the node's own instance (config, plugins, audit), and
/// an earlier build's shard instance while [`sled_migration`] moves it out.
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
/// `none`). It knows what it made durable, which is what [`LogStore::over_backlog`]
/// needs.
const BACKGROUND_FLUSH: Duration = Duration::from_millis(500);

/// sled's segment size (see [`sled_config`]). Fixed when a sled directory is created.
const SLED_SEGMENT_BYTES: usize = 2 << 20;

/// A shard's directory name: `<uid>.<generation>`, both in decimal.
fn shard_dir_name(uid: u64, generation: u64) -> String {
    format!("{uid}.{generation}")
}

fn parse_shard_dir_name(name: &str) -> Option<(u64, u64)> {
    let (uid, generation) = name.split_once('.')?;
    Some((uid.parse().ok()?, generation.parse().ok()?))
}

impl LogStore {
    /// Call `hook` after each snapshot part is stored, with the part's number (tests
    /// hold a snapshot half-written).
    #[cfg(test)]
    pub(crate) fn set_after_snapshot_part(&self, hook: impl FnMut(u32) + Send + 'static) {
        *self.after_snapshot_part.lock() = Some(Box::new(hook));
    }

    /// Open the log store in `dir` (`<data dir>/logs`). Of each database's shard
    /// directories the newest generation is the live one; older ones are what a crash
    /// left of a reset ([`Self::reset_database`]) and are removed.
    pub fn open(dir: &Path, backlog_bytes: u64) -> Result<Arc<LogStore>, LogError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| LogError::Sled(format!("cannot create {}: {e}", dir.display())))?;
        let store = Arc::new(LogStore {
            dir: dir.to_path_buf(),
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
        )?);
        shards.insert(uid, shard.clone());
        Ok(shard)
    }

    /// Move every database's log and snapshots out of the node's own sled instance,
    /// where a node kept them before each database had a shard, into the shards; then
    /// drop those trees. Returns the entries moved. Idempotent: a crash part way leaves
    /// entries that the next start moves again ([`sled_migration`]).
    pub fn adopt_shared_trees(&self, node: &sled::Db) -> Result<u64, LogError> {
        let log = sled_migration::existing_tree(node, "log")?;
        let snapshots = sled_migration::existing_tree(node, "snapshots")?;
        let mut uids = std::collections::BTreeSet::new();
        for tree in log.iter().chain(snapshots.iter()) {
            for item in tree.iter() {
                let (key, _) = item?;
                if let Some(uid) = key.get(..8) {
                    uids.insert(u64::from_be_bytes(uid.try_into().expect("8 bytes")));
                }
            }
        }
        let mut moved = 0u64;
        for uid in uids {
            let shard = self.shard(uid)?;
            moved += sled_migration::move_trees(
                log.as_ref(),
                snapshots.as_ref(),
                &uid.to_be_bytes(),
                &shard.path,
                &shard.segments,
            )?;
            *shard.snapshot_bytes.lock() = None;
        }
        for (tree, name) in [(log, "log"), (snapshots, "snapshots")] {
            if tree.is_some() {
                drop(tree);
                node.drop_tree(name)?;
            }
        }
        node.flush()?;
        if moved > 0 {
            tracing::info!(
                entries = moved,
                "moved the node's log into one directory per database"
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

    /// Bytes database `uid`'s shard takes on disk: its segment and snapshot files
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

    /// Make database `uid`'s log durable now, on this thread (durability `sync`).
    pub fn sync_log(&self, uid: u64) -> Result<(), LogError> {
        self.shard(uid)?.flusher.flush()
    }

    /// Flush database `uid`'s log now, on this thread.
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

    /// Store a snapshot: its block bytes in parts, then its metadata, in a file of its
    /// own ([`snapshot_files`]), made durable under its final name (the commit point).
    /// Other databases keep appending and flushing meanwhile (see the module doc).
    /// Call it off the async runtime: it writes the whole snapshot.
    pub fn save_snapshot(
        &self,
        uid: u64,
        meta: SnapshotMeta,
        blocks: &[&crate::store::Block],
    ) -> Result<SnapshotMeta, LogError> {
        let shard = self.shard(uid)?;
        let _saving = shard.snapshot_writes.lock();
        if snapshot_files::file(&shard.path, meta.serial).is_file() {
            // The same serial is the same state: the snapshot is already stored.
            return snapshot_files::read_meta(&shard.path, meta.serial);
        }
        let mut writer = snapshot_files::Writer::create(&shard.path, meta.serial)?;
        let mut part = Vec::with_capacity(SNAPSHOT_PART_BYTES);
        let mut unflushed = 0u64;
        let mut store = |writer: &mut snapshot_files::Writer, part: &[u8]| {
            let _number = writer.push(part)?;
            // Out of its slot while it runs: a hook that holds one database's snapshot
            // does not hold another's. (Taken in a statement of its own: the guard of an
            // `if let` scrutinee lives through its body, and the put back would
            // deadlock on it.)
            #[cfg(test)]
            {
                let taken = self.after_snapshot_part.lock().take();
                if let Some(mut hook) = taken {
                    hook(_number);
                    self.after_snapshot_part.lock().get_or_insert(hook);
                }
            }
            unflushed += part.len() as u64;
            if unflushed >= SNAPSHOT_PACE_BYTES {
                writer.flush()?;
                unflushed = 0;
            }
            Ok::<(), LogError>(())
        };
        for block in blocks {
            part.extend_from_slice(block.as_bytes());
            if part.len() >= SNAPSHOT_PART_BYTES {
                store(&mut writer, &part)?;
                part.clear();
            }
        }
        if !part.is_empty() {
            store(&mut writer, &part)?;
        }
        let (meta, bytes) = writer.finish(meta)?;
        shard.account_snapshot(bytes as i64);
        Ok(meta)
    }

    /// Make the shard's snapshots whole before the database is used: remove what a crash
    /// left of a save (`.tmp` files). Returns the files removed.
    pub fn drop_unfinished_snapshots(&self, uid: u64) -> Result<usize, LogError> {
        let shard = self.shard(uid)?;
        let removed = snapshot_files::remove_others(&shard.path)?;
        if removed > 0 {
            tracing::warn!(uid, removed, "removed a snapshot a crash interrupted");
        }
        Ok(removed)
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
        snapshot_files::list(&shard.path)
    }

    /// Take damaged snapshot `serial` out of the listing, durably, and keep its file for
    /// inspection under the shard's `damaged-snapshots` folder. Returns where it went.
    pub fn set_aside_snapshot(&self, uid: u64, serial: u64) -> Result<Option<PathBuf>, LogError> {
        let shard = self.shard(uid)?;
        let moved = snapshot_files::set_aside(&shard.path, serial)?;
        // Count again when next asked.
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
        snapshot_files::read(&shard.path, meta.serial, |part| {
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
        })?;
        Ok(blocks)
    }

    /// Delete a stored snapshot: its file goes, durably.
    pub fn delete_snapshot(&self, uid: u64, meta: &SnapshotMeta) -> Result<(), LogError> {
        let shard = self.shard(uid)?;
        let bytes = snapshot_files::remove(&shard.path, meta.serial)?;
        shard.account_snapshot(-(bytes as i64));
        Ok(())
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
            if let Err(e) = shard.flusher.flush() {
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
    /// Open (or create) the shard at `path`: its segment files, with what an earlier
    /// build kept in sled moved into them and into snapshot files; start its flusher.
    fn open(path: &Path) -> Result<Shard, LogError> {
        let segments = Arc::new(Segments::open(&path.join("segments"))?);
        if sled_migration::instance_in(path) {
            sled_migration::migrate_shard(path, &segments)?;
        }
        let flusher = Arc::new(Flusher {
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
        Ok(Shard {
            path: path.to_path_buf(),
            flusher,
            flusher_thread: Mutex::new(Some(thread)),
            segments,
            snapshot_bytes: Mutex::new(None),
            doomed: std::sync::atomic::AtomicBool::new(false),
            tail: Mutex::new(Tail::default()),
            snapshot_writes: Mutex::new(()),
        })
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

    /// Bytes of the snapshot files, counted once and then kept up to date.
    fn snapshot_bytes(&self) -> Result<u64, LogError> {
        if let Some(bytes) = *self.snapshot_bytes.lock() {
            return Ok(bytes);
        }
        let total = snapshot_files::total_bytes(&self.path)?;
        Ok(*self.snapshot_bytes.lock().get_or_insert(total))
    }
}

impl Drop for Shard {
    /// Stops the flusher and waits for it, then removes the directory of a deleted
    /// database or an old generation.
    fn drop(&mut self) {
        self.flusher.stop();
        if let Some(thread) = self.flusher_thread.lock().take() {
            let _ = thread.join();
        }
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
        self.segments.sync()?;
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
