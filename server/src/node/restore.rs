//! Point-in-time restore (SPEC G2): bringing a database back to its state at a chosen
//! serial or timestamp, in place or into a new database of the same tenant, and the
//! restore operations a node runs (their progress, for `GET …/restores/{id}`).
//!
//! **Two methods**, chosen per request (or forced with `method`):
//! - `replay`: the newest snapshot at or before the point (or the empty database when
//!   the A log still starts at serial 1), plus the A log up to the point, replayed with
//!   [`txn::replay_entry`], the store function recovery uses. It rebuilds the store
//!   exactly as it was, so it costs the snapshot's records plus the updates since it.
//! - `undo`: from the current state, the before images of the B log, newest first,
//!   back to the point. Applying every before image newest first leaves each record
//!   changed after the point at the before image of its *oldest* change after it (or
//!   absent, when that change inserted it), so one forward pass over the A log finds each
//!   changed record's first change and reads only those before images from the B log
//!   (inserts have no before image: the A log names their key). It costs the updates
//!   after the point, so it wins for recent points.
//!
//! Reach: `replay` reaches back to the oldest snapshot the A log continues from (the A
//! log is pruned up to the older of the two newest snapshots); `undo` as far as both the
//! A log and the B log reach (B entries expire after `retention.b_secs`; the log store
//! remembers the last serial it pruned). A point before both is refused with
//! `outside-retention`, naming the oldest reachable serial and time; a point after the
//! last update, or a time in the future, with `point-in-future`.
//!
//! **How the result is applied, and why it is durable.** The restore does not swap in a
//! store behind the log's back (as a bootstrap's snapshot install does): it writes the
//! difference between the current contents and the contents at the point as ordinary
//! logged transactions (deletes, then upserts, at most [`TXN_OPS`] operations or
//! [`TXN_BYTES`] of records each) continuing the database's serials, all of them in one
//! atomic sled batch, flushed before the restored store becomes visible. So:
//! - a restart replays them like any other transaction and shows the restored state
//!   (a crash before the flush shows the state before the restore; never half of it);
//! - mirror and logical replicas of the database receive them through their links and
//!   follow the restore, where a swapped store would leave them silently diverged;
//! - the log stays one linear history: "the state at serial N" keeps its meaning, and a
//!   restore can itself be undone by restoring to a serial before it;
//! - the cost is writing the changed records to the log, which a snapshot install of the
//!   whole store would also pay (and more, for a recent point).
//!
//! The block layout after an in-place restore follows from applying those transactions
//! to the current blocks, not from the layout at the point (contents are identical;
//! block numbers may differ). A restore into a new database inserts the records in key
//! order, so its blocks depend only on the contents.
//!
//! **Concurrency.** An in-place restore refuses writes (`409 restore-in-progress`) from
//! the moment it starts until the restored store is installed, like PostgreSQL's or
//! Oracle's point-in-time recovery, which take the database out of service: a write
//! accepted meanwhile would be discarded by the restore. Readers go on throughout and
//! see the old contents until the final swap, which takes the writer lock only to
//! replace the store. All reading of the log, rebuilding and diffing runs on a blocking
//! thread over a frozen (copy-on-write) copy of the store, without the lock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::database::{Database, DatabaseSpec};
use super::error::{Error, Result};
use super::Node;
use crate::log::{LogKind, OpKind, TxnLog};
use crate::store::{block, encode_owned, Effect, FileId, RecordRef, Store};
use crate::txn::{self, Op, Sequencer};

/// Most operations in one of a restore's transactions.
pub const TXN_OPS: usize = 10_000;
/// Most record bytes in one of a restore's transactions (keeps each transaction far
/// below the replication frame limit).
pub const TXN_BYTES: usize = 4 << 20;
/// Restore operations a node remembers.
const KEPT_OPERATIONS: usize = 100;

/// Where to restore to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// The state right after the update with this serial (0: before any update).
    Serial(u64),
    /// The state with every update stamped at or before this time (microseconds since
    /// the Unix epoch, as the log stamps updates).
    TimestampUs(u64),
}

/// How the state at the point is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// A snapshot at or before the point plus the A log up to it.
    Replay,
    /// Before images from the B log, newest first, back to the point.
    Undo,
}

/// A restore as a client asks for it.
#[derive(Debug, Clone)]
pub struct Request {
    pub point: Point,
    /// Restore into a new database of this name instead of in place.
    pub into: Option<String>,
    /// Force a method; by default the cheaper reachable one.
    pub method: Option<Method>,
}

/// A serial with its timestamp, when the log still knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct PointView {
    pub serial: u64,
    pub timestamp_us: Option<u64>,
}

/// What a restore will do, decided before it reads the log.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Plan {
    pub database: String,
    pub into: Option<String>,
    pub method: Method,
    pub point: PointView,
    /// `replay`: the snapshot it starts from (`null`: the empty database).
    pub from_snapshot: Option<u64>,
    /// Updates to replay (`replay`) or undo (`undo`).
    pub updates: u64,
    /// The database's last serial when the restore started.
    pub last_serial: u64,
    /// The oldest point the retained log and snapshots reach.
    pub oldest: PointView,
}

/// How the restore changes the target database's records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Changes {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
}

/// What the retained log and snapshots reach, for a database at `last_serial`.
#[derive(Debug, Clone)]
struct Reach {
    last_serial: u64,
    /// First serial the A log holds (`last_serial + 1` when it holds none).
    a_oldest: u64,
    /// Last serial whose B entries retention may have dropped.
    b_pruned: u64,
    /// Serials `replay` can start from: stored snapshots, and 0 when the A log is whole.
    bases: Vec<u64>,
}

impl Reach {
    fn of(db: &Database, last_serial: u64) -> Result<Reach> {
        let log = db.log_store();
        let uid = db.def.uid;
        let a_oldest = log
            .oldest_serial(uid, LogKind::A)?
            .unwrap_or(last_serial + 1);
        let mut bases: Vec<u64> = log
            .snapshots(uid)?
            .iter()
            .map(|s| s.serial)
            .filter(|s| *s <= last_serial)
            .collect();
        if a_oldest <= 1 || last_serial == 0 {
            bases.push(0);
        }
        bases.sort_unstable();
        bases.dedup();
        Ok(Reach {
            last_serial,
            a_oldest,
            b_pruned: log.pruned_through(uid, LogKind::B)?,
            bases,
        })
    }

    /// The snapshot (or 0) `replay` starts from for `point`: the newest base at or
    /// before it that the A log continues from.
    fn replay_base(&self, point: u64) -> Option<u64> {
        self.bases
            .iter()
            .rev()
            .find(|b| **b <= point && (**b == point || self.a_oldest <= **b + 1))
            .copied()
    }

    fn replay_from(&self) -> u64 {
        self.bases
            .iter()
            .find(|b| **b == self.last_serial || self.a_oldest <= **b + 1)
            .copied()
            .unwrap_or(self.last_serial)
    }

    fn undo_from(&self) -> u64 {
        self.a_oldest
            .saturating_sub(1)
            .max(self.b_pruned)
            .min(self.last_serial)
    }

    fn oldest(&self) -> u64 {
        self.replay_from().min(self.undo_from())
    }
}

/// The timestamp of update `serial`, from whichever log still holds it; for a serial
/// only a snapshot remembers, a time at or after it (the snapshot's creation).
fn timestamp_of(db: &Database, serial: u64) -> Result<Option<u64>> {
    if serial == 0 {
        return Ok(None);
    }
    let log = db.log_store();
    for kind in [LogKind::A, LogKind::B, LogKind::T] {
        if let Some(ts) = log.timestamp_of(db.def.uid, kind, serial)? {
            return Ok(Some(ts));
        }
    }
    Ok(log
        .snapshots(db.def.uid)?
        .iter()
        .find(|s| s.serial == serial)
        .map(|s| (s.created_ms + 1) * 1000))
}

/// The oldest point a point-in-time restore of `db` reaches now, by either method
/// (`GET …/databases/{db}` shows it as `restore_reach`).
pub fn oldest_point(db: &Database) -> Result<PointView> {
    let reach = Reach::of(db, db.serials().0)?;
    point_view(db, reach.oldest())
}

fn point_view(db: &Database, serial: u64) -> Result<PointView> {
    Ok(PointView {
        serial,
        timestamp_us: timestamp_of(db, serial)?,
    })
}

fn outside(db: &Database, what: String, oldest: u64, by: &str) -> Result<Error> {
    let view = point_view(db, oldest)?;
    let time = view
        .timestamp_us
        .map_or(String::new(), |ts| format!(" (timestamp_us {ts})"));
    let retention = db.def.spec.retention.b_secs;
    Ok(Error::OutsideRetention {
        detail: format!(
            "{what} is outside what database '{}' retains{by}: the oldest point it can be \
             restored to is serial {oldest}{time}. B logs are kept {retention} s, the A \
             log from the older of the two newest snapshots",
            db.name()
        ),
        oldest_serial: oldest,
        oldest_timestamp_us: view.timestamp_us,
    })
}

/// The serial a point names, for a database at `reach.last_serial`.
fn resolve(db: &Database, reach: &Reach, point: Point) -> Result<u64> {
    let last = reach.last_serial;
    let serial = match point {
        Point::Serial(serial) if serial > last => {
            return Err(Error::PointInFuture(format!(
                "serial {serial} is after the last update of database '{}', serial {last}",
                db.name()
            )))
        }
        Point::Serial(serial) => serial,
        Point::TimestampUs(ts) => {
            let now = txn::clock::wall_us().max(txn::clock::last_us());
            if ts > now {
                return Err(Error::PointInFuture(format!(
                    "timestamp_us {ts} is in the future (now: {now})"
                )));
            }
            match db.log_store().around_time(db.def.uid, LogKind::A, ts)? {
                (Some((serial, _)), _) => serial.min(last),
                (None, _) if reach.a_oldest <= 1 => 0,
                (None, _) => {
                    // Before every retained A entry: the point is the serial before them
                    // if something shows that serial was stamped at or before `ts`.
                    let candidate = reach.a_oldest - 1;
                    match timestamp_of(db, candidate)? {
                        Some(known) if known <= ts => candidate,
                        _ => {
                            return Err(outside(
                                db,
                                format!("timestamp_us {ts}"),
                                reach.oldest(),
                                "",
                            )?)
                        }
                    }
                }
            }
        }
    };
    Ok(serial)
}

fn record_count(store: &Store) -> u64 {
    let schema = store.schema();
    (0..schema.files.len())
        .map(|index| {
            store.files()[schema.main_id(index) as usize]
                .blocks()
                .map(|(_, b)| b.count() as u64)
                .sum::<u64>()
        })
        .sum()
}

/// Decide the point and the method for restoring `db`, whose state `store` is at
/// `last_serial`.
fn plan(db: &Database, store: &Store, last_serial: u64, request: &Request) -> Result<Plan> {
    let reach = Reach::of(db, last_serial)?;
    let point = resolve(db, &reach, request.point)?;
    let what = match request.point {
        Point::Serial(serial) => format!("serial {serial}"),
        Point::TimestampUs(ts) => format!("timestamp_us {ts} (serial {point})"),
    };
    let replay = reach.replay_base(point);
    let undo = point >= reach.undo_from();
    // Cost in records touched: replay loads the snapshot and compares every record
    // with the current contents; undo reads an A and a B entry per update.
    let records = record_count(store);
    let replay_cost = |base: u64| (point - base).saturating_add(records.saturating_mul(2));
    let undo_cost = (last_serial - point).saturating_mul(2);
    let method = match (request.method, replay, undo) {
        (Some(Method::Replay), None, _) => {
            return Err(outside(db, what, reach.replay_from(), " by replay")?)
        }
        (Some(Method::Undo), _, false) => {
            return Err(outside(db, what, reach.undo_from(), " by undo")?)
        }
        (Some(method), _, _) => method,
        (None, None, false) => return Err(outside(db, what, reach.oldest(), "")?),
        (None, Some(_), false) => Method::Replay,
        (None, None, true) => Method::Undo,
        (None, Some(base), true) if replay_cost(base) < undo_cost => Method::Replay,
        (None, Some(_), true) => Method::Undo,
    };
    let (from_snapshot, updates) = match method {
        Method::Replay => {
            let base = replay.expect("checked above");
            let from_snapshot = db
                .log_store()
                .snapshots(db.def.uid)?
                .iter()
                .any(|s| s.serial == base)
                .then_some(base);
            (from_snapshot, point - base)
        }
        Method::Undo => (None, last_serial - point),
    };
    Ok(Plan {
        database: db.name().to_string(),
        into: request.into.clone(),
        method,
        point: point_view(db, point)?,
        from_snapshot,
        updates,
        last_serial,
        oldest: point_view(db, reach.oldest())?,
    })
}

/// Progress of a running restore, readable while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    phase: Mutex<&'static str>,
    done: AtomicU64,
    total: AtomicU64,
}

impl Progress {
    fn start(&self, phase: &'static str, total: u64) {
        *self.phase.lock() = phase;
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }

    fn step(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
}

/// Records by `(file, unique key)`, each with its content at the point (`None`: absent).
type ChangedRecords = BTreeMap<(FileId, Vec<u8>), Option<Vec<u8>>>;

/// The state of the database at the point.
enum Target {
    /// The whole store, rebuilt (`replay`).
    Store(Store),
    /// Every record changed after the point, with its content at the point (`undo`).
    Changed(ChangedRecords),
}

/// `replay`: the snapshot (or empty store) at `base`, then the A log up to `point`.
fn rebuild(
    db: &Database,
    base: Option<u64>,
    from: u64,
    point: u64,
    progress: &Progress,
) -> Result<Store> {
    let log = db.log_store();
    let uid = db.def.uid;
    let spec = &db.def.spec;
    let mut store = match base {
        Some(serial) => {
            let meta = log
                .snapshots(uid)?
                .into_iter()
                .find(|s| s.serial == serial)
                .ok_or_else(|| Error::Unavailable(format!("snapshot {serial} was removed")))?;
            let blocks = log.snapshot_block_list(uid, &meta)?;
            Store::from_snapshot_blocks(meta.layout, spec.memory_quota_bytes, blocks)
                .map_err(|e| Error::Unavailable(e.to_string()))?
        }
        None => Store::new(spec.schema(), spec.block_size, spec.memory_quota_bytes),
    };
    let mut last = from;
    let mut failure = None;
    if point > from {
        log.read(uid, LogKind::A, from + 1, |chunk| {
            for entry in &chunk.entries {
                let serial = entry.header.serial;
                if serial <= last {
                    continue;
                }
                if serial > point {
                    return false;
                }
                if serial != last + 1 {
                    failure = Some(format!("the A log misses serial {}", last + 1));
                    return false;
                }
                if let Err(e) = txn::replay_entry(&mut store, entry) {
                    failure = Some(format!("serial {serial} does not replay: {e}"));
                    return false;
                }
                last = serial;
            }
            progress.step(chunk.entries.len() as u64);
            last < point
        })?;
    }
    if let Some(failure) = failure {
        return Err(Error::Unavailable(failure));
    }
    if last != point {
        return Err(Error::Unavailable(format!(
            "the A log ends at serial {last}, before serial {point}"
        )));
    }
    Ok(store)
}

/// The store as it stood at serial `point`, rebuilt like `replay` does (the newest
/// snapshot at or before it, then the A log up to it), so block-identical to what the
/// log wrote: what a mirror replica keeps when it drops a diverged tail
/// (`transport::receiver`). None when the snapshots and the A log no longer reach it.
pub(crate) fn store_at(db: &Database, point: u64) -> Result<Option<Store>> {
    let reach = Reach::of(db, db.serials().0)?;
    let Some(base) = reach.replay_base(point) else {
        return Ok(None);
    };
    let snapshot = (base > 0).then_some(base);
    rebuild(db, snapshot, base, point, &Progress::default()).map(Some)
}

/// `undo`: each record changed in `(point, last]` with its content at `point`.
fn undo(db: &Database, point: u64, last: u64, progress: &Progress) -> Result<ChangedRecords> {
    let log = db.log_store();
    let uid = db.def.uid;
    let mut changed = ChangedRecords::new();
    // The serial of each record's oldest change after the point that had a before image.
    let mut wanted: BTreeMap<u64, (FileId, Vec<u8>)> = BTreeMap::new();
    let mut seen = point;
    let mut failure = None;
    if last > point {
        log.read(uid, LogKind::A, point + 1, |chunk| {
            for entry in &chunk.entries {
                let h = entry.header;
                if h.serial <= seen {
                    continue;
                }
                if h.serial > last {
                    return false;
                }
                if h.serial != seen + 1 {
                    failure = Some(format!("the A log misses serial {}", seen + 1));
                    return false;
                }
                seen = h.serial;
                let key = match h.effect {
                    Effect::Reorg => continue,
                    Effect::Delete => entry.key.map(<[u8]>::to_vec),
                    Effect::Insert | Effect::Update => {
                        entry.image.and_then(block::decode).map(|r| r.key.to_vec())
                    }
                };
                let Some(key) = key else {
                    failure = Some(format!("the A entry of serial {} has no key", h.serial));
                    return false;
                };
                let id = (h.file, key);
                if changed.contains_key(&id) {
                    continue;
                }
                if h.effect != Effect::Insert {
                    wanted.insert(h.serial, id.clone());
                }
                changed.insert(id, None);
            }
            progress.step(chunk.entries.len() as u64);
            seen < last
        })?;
    }
    if let Some(failure) = failure {
        return Err(Error::Unavailable(failure));
    }
    if seen != last {
        return Err(Error::Unavailable(format!(
            "the A log ends at serial {seen}, before serial {last}"
        )));
    }
    if let Some((&first, _)) = wanted.iter().next() {
        log.read(uid, LogKind::B, first, |chunk| {
            for entry in &chunk.entries {
                if let Some(id) = wanted.remove(&entry.header.serial) {
                    changed.insert(id, entry.image.map(<[u8]>::to_vec));
                }
            }
            !wanted.is_empty()
        })?;
    }
    if let Some((serial, _)) = wanted.iter().next() {
        return Err(Error::Unavailable(format!(
            "the B log no longer holds the before image of serial {serial}"
        )));
    }
    Ok(changed)
}

fn same(current: &RecordRef<'_>, wanted: &[u8]) -> bool {
    block::decode(wanted).is_some_and(|w| {
        w.key == current.key && w.data == current.data && w.alts().eq(current.alts())
    })
}

fn put(kind: OpKind, file: FileId, payload: Vec<u8>) -> Op {
    Op {
        kind,
        file,
        payload,
    }
}

/// The operations that turn `current` into the state at the point, deletes first (they
/// free room for the puts), and how they change the records.
fn diff(current: &Store, target: &Target) -> (Vec<Op>, Changes) {
    let mut deletes = Vec::new();
    let mut puts = Vec::new();
    let mut changes = Changes::default();
    match target {
        Target::Changed(changed) => {
            for ((file, key), wanted) in changed {
                match (current.get(*file, key), wanted) {
                    (None, None) => {}
                    (Some(_), None) => {
                        changes.deleted += 1;
                        deletes.push(put(OpKind::Delete, *file, key.clone()));
                    }
                    (None, Some(record)) => {
                        changes.inserted += 1;
                        puts.push(put(OpKind::Upsert, *file, record.clone()));
                    }
                    (Some((_, now)), Some(record)) => {
                        if !same(&now, record) {
                            changes.updated += 1;
                            puts.push(put(OpKind::Upsert, *file, record.clone()));
                        }
                    }
                }
            }
        }
        Target::Store(target) => {
            let schema = current.schema();
            for index in 0..schema.files.len() {
                let id = schema.main_id(index);
                target.files()[id as usize].scan(&[], None, |record| {
                    match current.get(id, record.key) {
                        None => {
                            changes.inserted += 1;
                            puts.push(put(OpKind::Upsert, id, encode_owned(&record)));
                        }
                        Some((_, now)) if !same_ref(&now, &record) => {
                            changes.updated += 1;
                            puts.push(put(OpKind::Upsert, id, encode_owned(&record)));
                        }
                        Some(_) => {}
                    }
                    true
                });
                current.files()[id as usize].scan(&[], None, |record| {
                    if target.get(id, record.key).is_none() {
                        changes.deleted += 1;
                        deletes.push(put(OpKind::Delete, id, record.key.to_vec()));
                    }
                    true
                });
            }
        }
    }
    deletes.append(&mut puts);
    (deletes, changes)
}

fn same_ref(a: &RecordRef<'_>, b: &RecordRef<'_>) -> bool {
    a.key == b.key && a.data == b.data && a.alts().eq(b.alts())
}

/// Every record of `store` as inserts, in key order (a restore into a new database).
fn all_records(store: &Store) -> (Vec<Op>, Changes) {
    let mut ops = Vec::new();
    let schema = store.schema();
    for index in 0..schema.files.len() {
        let id = schema.main_id(index);
        store.files()[id as usize].scan(&[], None, |record| {
            ops.push(put(OpKind::Insert, id, encode_owned(&record)));
            true
        });
    }
    let changes = Changes {
        inserted: ops.len() as u64,
        ..Changes::default()
    };
    (ops, changes)
}

/// Apply `ops` to `store` as transactions of at most [`TXN_OPS`] operations and
/// [`TXN_BYTES`] bytes, returning their logs. Each transaction takes its operations
/// over (no copy of their records).
fn apply_ops(
    store: &mut Store,
    seq: &mut Sequencer,
    ops: Vec<Op>,
    progress: &Progress,
) -> Result<Vec<TxnLog>> {
    let mut logs = Vec::new();
    let mut start = 0;
    let mut rest = ops.into_iter().peekable();
    while rest.peek().is_some() {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        while let Some(op) =
            rest.next_if(|_| chunk.len() < TXN_OPS && (chunk.is_empty() || bytes < TXN_BYTES))
        {
            bytes += op.payload.len();
            chunk.push(op);
        }
        let count = chunk.len();
        let txn = seq.next_txn();
        let log = txn::apply(store, seq, txn, chunk)
            .map_err(|refused| Error::Store(refused.error).at_op(start + refused.index))?;
        logs.push(log);
        progress.step(count as u64);
        start += count;
    }
    Ok(logs)
}

/// The state at the planned point, computed from `db`'s log and the frozen `current`.
fn target(db: &Database, current: &Store, plan: &Plan, progress: &Progress) -> Result<Target> {
    progress.start("reading-log", plan.updates);
    match plan.method {
        Method::Replay => {
            let base = plan.point.serial - plan.updates;
            Ok(Target::Store(rebuild(
                db,
                plan.from_snapshot,
                base,
                plan.point.serial,
                progress,
            )?))
        }
        Method::Undo => {
            let changed = undo(db, plan.point.serial, plan.last_serial, progress)?;
            if plan.into.is_none() {
                return Ok(Target::Changed(changed));
            }
            // A new database needs every record: the current ones with the changes.
            let mut store = current.freeze();
            for ((file, key), wanted) in &changed {
                let mutation = match wanted {
                    Some(record) => crate::store::Mutation::Put {
                        file: *file,
                        mode: crate::store::PutMode::Upsert,
                        record,
                    },
                    None => crate::store::Mutation::Delete { file: *file, key },
                };
                match store.apply_unchecked(mutation) {
                    Ok(_) | Err(crate::store::StoreError::NotFound) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(Target::Store(store))
        }
    }
}

/// The operations a restore writes into its target database.
fn operations(
    db: &Database,
    current: &Store,
    plan: &Plan,
    progress: &Progress,
) -> Result<(Vec<Op>, Changes)> {
    let target = target(db, current, plan, progress)?;
    progress.start("comparing", 0);
    Ok(match (&plan.into, &target) {
        (Some(_), Target::Store(store)) => all_records(store),
        _ => diff(current, &target),
    })
}

/// A restore's answer to a dry run.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Preview {
    pub dry_run: bool,
    #[serde(flatten)]
    pub plan: Plan,
    pub records: Changes,
}

fn check_into(node: &Node, tenant: &str, into: &str) -> Result<()> {
    super::check_name("database", into)?;
    match node.database(tenant, into) {
        Ok(_) => Err(Error::AlreadyExists(format!("database '{into}'"))),
        Err(Error::NotFound(what)) if what.starts_with("database") => Ok(()),
        Err(e) => Err(e),
    }
}

/// What a restore needs once it has been accepted.
pub struct Prepared {
    op: Arc<Operation>,
    source: Arc<Database>,
    /// The database written: the source itself, or the new one.
    target: Arc<Database>,
    /// The source's state, frozen when the restore started.
    current: Store,
    /// The target's store and sequencer to apply to.
    work: (Store, Sequencer),
}

impl Prepared {
    /// The operation, for the answer to the request.
    pub fn operation(&self) -> Arc<Operation> {
        self.op.clone()
    }

    /// The database the restore writes.
    pub fn target(&self) -> Arc<Database> {
        self.target.clone()
    }
}

/// Answer a dry run: the plan and how many records would change; nothing changes.
/// Blocking: it reads the log.
pub fn preview(node: &Node, tenant: &str, database: &str, request: &Request) -> Result<Preview> {
    let db = node.database(tenant, database)?;
    match &request.into {
        Some(into) => check_into(node, tenant, into)?,
        None => refuse_replica(&db)?,
    }
    let (current, seq) = db.frozen_state();
    let plan = plan(&db, &current, seq.last_serial, request)?;
    let (_, records) = operations(&db, &current, &plan, &Progress::default())?;
    Ok(Preview {
        dry_run: true,
        plan,
        records,
    })
}

fn refuse_replica(db: &Database) -> Result<()> {
    match db.replica_of() {
        Some(link) => Err(Error::ReadOnlyReplica(format!(
            "database '{}' is a replica (link {link}): its data comes through its link, so it \
             cannot be restored in place; restore its source, or restore into a new database",
            db.name()
        ))),
        None => Ok(()),
    }
}

/// Accept a restore: check it, plan it, stop writes to the database it changes (and
/// create the new database for `into`). Blocking: it reads the log. Run the result with
/// [`run`].
pub fn prepare(node: &Node, tenant: &str, database: &str, request: &Request) -> Result<Prepared> {
    let source = node.database(tenant, database)?;
    let id = node.restores.next_id();
    let (current, seq, began) = match &request.into {
        Some(into) => {
            check_into(node, tenant, into)?;
            let (store, seq) = source.frozen_state();
            (store, seq, false)
        }
        None => {
            let (store, seq) = source.begin_restore(id)?;
            (store, seq, true)
        }
    };
    let planned = plan(&source, &current, seq.last_serial, request);
    let plan = match planned {
        Ok(plan) => plan,
        Err(e) => {
            if began {
                source.end_restore(id);
            }
            return Err(e);
        }
    };
    let (target, work) = match &request.into {
        Some(into) => {
            let spec = DatabaseSpec {
                name: into.clone(),
                ..source.def.spec.clone()
            };
            let target = node.create_database(tenant, spec)?;
            let work = match target.begin_restore(id) {
                Ok(work) => work,
                Err(e) => {
                    let _ = node.delete_database(tenant, into);
                    return Err(e);
                }
            };
            (target, work)
        }
        None => (source.clone(), (current.freeze(), seq)),
    };
    let op = Arc::new(Operation {
        id,
        tenant: tenant.to_string(),
        database: database.to_string(),
        plan,
        started_ms: txn::clock::wall_us() / 1000,
        progress: Progress::default(),
        outcome: Mutex::new(Outcome::default()),
    });
    op.progress.start("queued", 0);
    node.restores.register(op.clone());
    Ok(Prepared {
        op,
        source,
        target,
        current,
        work,
    })
}

/// Carry out a prepared restore (blocking). On failure nothing changed: the target is
/// writable again, and a new database made for it is deleted.
pub fn run(node: &Node, prepared: Prepared) {
    let Prepared {
        op,
        source,
        target,
        current,
        work,
    } = prepared;
    let result = execute(&op, &source, &target, &current, work);
    let mut outcome = op.outcome.lock();
    outcome.finished_ms = Some(txn::clock::wall_us() / 1000);
    match result {
        Ok(done) => {
            *op.progress.phase.lock() = "finished";
            outcome.state = State::Succeeded;
            outcome.records = Some(done.0);
            outcome.restored = done.1;
        }
        Err(e) => {
            target.end_restore(op.id);
            if let Some(into) = &op.plan.into {
                if let Err(e) = node.delete_database(&op.tenant, into) {
                    tracing::warn!(database = %into, error = %e, "could not delete the database of a failed restore");
                }
            }
            tracing::warn!(restore = op.id, database = %op.database, error = %e, "restore failed");
            outcome.state = State::Failed;
            outcome.error = Some(e.to_string());
        }
    }
}

/// Mark a restore whose task died (a panic) as failed and give the database back.
pub fn abandon(node: &Node, op: &Operation, target: &Database) {
    target.end_restore(op.id);
    if let Some(into) = &op.plan.into {
        let _ = node.delete_database(&op.tenant, into);
    }
    let mut outcome = op.outcome.lock();
    outcome.state = State::Failed;
    outcome.error = Some("the restore stopped on an internal error".into());
    outcome.finished_ms = Some(txn::clock::wall_us() / 1000);
}

type Done = (Changes, Option<(u64, u64)>);

fn execute(
    op: &Operation,
    source: &Database,
    target: &Database,
    current: &Store,
    work: (Store, Sequencer),
) -> Result<Done> {
    let (mut store, mut seq) = work;
    let expected_last = seq.last_serial;
    let (ops, changes) = operations(source, current, &op.plan, &op.progress)?;
    op.outcome.lock().records = Some(changes);
    let count = ops.len();
    op.progress.start("applying", count as u64);
    let logs = apply_ops(&mut store, &mut seq, ops, &op.progress)?;
    op.progress.start("writing-log", logs.len() as u64);
    let log = target.log_store();
    log.append_txns(target.def.uid, &logs)?;
    log.flush_now(target.def.uid)?;
    op.progress.step(logs.len() as u64);
    target.finish_restore(op.id, expected_last, store, seq)?;
    let serials = logs
        .first()
        .and_then(TxnLog::first_serial)
        .zip(logs.last().and_then(TxnLog::last_serial));
    tracing::info!(
        restore = op.id,
        database = %op.database,
        into = ?op.plan.into,
        method = ?op.plan.method,
        point = op.plan.point.serial,
        updates = op.plan.updates,
        ops = count,
        "restore finished"
    );
    Ok((changes, serials))
}

/// How a restore operation stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    #[default]
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug, Default)]
struct Outcome {
    state: State,
    records: Option<Changes>,
    restored: Option<(u64, u64)>,
    error: Option<String>,
    finished_ms: Option<u64>,
}

/// One restore a node ran or runs.
#[derive(Debug)]
pub struct Operation {
    pub id: u64,
    pub tenant: String,
    pub database: String,
    pub plan: Plan,
    started_ms: u64,
    progress: Progress,
    outcome: Mutex<Outcome>,
}

/// A restore operation as the API shows it.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct OperationView {
    pub id: u64,
    pub state: State,
    pub phase: &'static str,
    pub done: u64,
    pub total: u64,
    #[serde(flatten)]
    pub plan: Plan,
    pub records: Option<Changes>,
    /// Serials of the restore's own updates in the target database.
    pub restored_serials: Option<RestoredSerials>,
    pub error: Option<String>,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct RestoredSerials {
    pub first: u64,
    pub last: u64,
}

impl Operation {
    pub fn view(&self) -> OperationView {
        let outcome = self.outcome.lock();
        OperationView {
            id: self.id,
            state: outcome.state,
            phase: *self.progress.phase.lock(),
            done: self.progress.done.load(Ordering::Relaxed),
            total: self.progress.total.load(Ordering::Relaxed),
            plan: self.plan.clone(),
            records: outcome.records,
            restored_serials: outcome
                .restored
                .map(|(first, last)| RestoredSerials { first, last }),
            error: outcome.error.clone(),
            started_ms: self.started_ms,
            finished_ms: outcome.finished_ms,
        }
    }
}

/// The restores a node ran since it started (the last [`KEPT_OPERATIONS`]).
#[derive(Debug)]
pub struct Restores {
    next: AtomicU64,
    ops: Mutex<VecDeque<Arc<Operation>>>,
}

impl Default for Restores {
    fn default() -> Self {
        Restores {
            // Ids grow across restarts too, so an old id never names a new restore.
            next: AtomicU64::new(txn::clock::wall_us()),
            ops: Mutex::new(VecDeque::new()),
        }
    }
}

impl Restores {
    fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn register(&self, op: Arc<Operation>) {
        let mut ops = self.ops.lock();
        if ops.len() == KEPT_OPERATIONS {
            ops.pop_front();
        }
        ops.push_back(op);
    }

    /// Restores of database `database` of `tenant`, oldest first.
    pub fn list(&self, tenant: &str, database: &str) -> Vec<Arc<Operation>> {
        self.ops
            .lock()
            .iter()
            .filter(|op| op.tenant == tenant && op.database == database)
            .cloned()
            .collect()
    }

    /// One restore of database `database` of `tenant`.
    pub fn get(&self, tenant: &str, database: &str, id: u64) -> Result<Arc<Operation>> {
        self.list(tenant, database)
            .into_iter()
            .find(|op| op.id == id)
            .ok_or_else(|| Error::NotFound(format!("restore {id} of database '{database}'")))
    }
}

#[cfg(test)]
#[path = "restore_tests.rs"]
mod tests;
