//! Unit tests of [`LogStore`] on real segment and snapshot files in a temporary
//! directory.
//!
//! Covers: append + replay of A entries in serial order (including a transaction split
//! into several chunks and a cancelled transaction with its undo), replaying into an
//! empty store rebuilds identical blocks, replay from a later serial, replay stopping at
//! a gap in serials; `read` of B and T chunks from a serial; retention pruning
//! (`prune_older_than`) of B and T and `prune_through` of A, each touching only its own
//! kind and database; snapshots saved, listed, loaded and deleted; `delete_database`;
//! group commit (`request_flush` + `wait_durable`); reopening the directory; and a
//! shard an earlier build kept in sled, moved into files when it opens.
//!
//! Transaction logs are produced by `txn::apply` on a real `Store`, so every chunk holds
//! realistic records, before images and operations.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::log::{OpKind, Outcome};
use crate::store::{encode_record, Effect, FileId, FileSchema, Schema, Store};
use crate::txn::{self, Op, Sequencer};

const UID: u64 = 1;
const OTHER_UID: u64 = 2;
/// Main file ids of the test schema: `orders` (with alt table 1) and `lines`.
const ORDERS: FileId = 0;
const LINES: FileId = 2;
const BLOCK_SIZE: usize = 4096;
const QUOTA: u64 = 1 << 30;

/// A log store in a temporary directory.
struct Fixture {
    dir: tempfile::TempDir,
    log: Arc<LogStore>,
}

/// A chunk's key in a shard's `log` tree, where the log was kept before segment files.
fn log_key(uid: u64, kind: LogKind, serial: u64) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[..8].copy_from_slice(&uid.to_be_bytes());
    key[8] = kind as u8;
    key[9..].copy_from_slice(&serial.to_be_bytes());
    key
}

/// A snapshot's key in a `snapshots` tree, where earlier builds kept them.
fn snapshot_key(uid: u64, serial: u64, part: u32) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..8].copy_from_slice(&uid.to_be_bytes());
    key[8..16].copy_from_slice(&serial.to_be_bytes());
    key[16..].copy_from_slice(&part.to_be_bytes());
    key
}

fn open_at(path: &std::path::Path) -> Arc<LogStore> {
    LogStore::open(path, 32 << 20).expect("open log store")
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = open_at(&dir.path().join("logs"));
        Fixture { dir, log }
    }

    /// Lets go of the store without a shutdown (as a crash would, after the last
    /// flush) and opens the same directory again.
    fn crash_reopen(self) -> Fixture {
        let Fixture { dir, log } = self;
        for uid in log.shards.read().keys() {
            log.shards.read()[uid].flusher.stop();
        }
        Fixture { dir, log }.release_and_open()
    }

    /// Closes everything and opens the same directory again.
    fn reopen(self) -> Fixture {
        self.log.shutdown().expect("shutdown flushes");
        self.release_and_open()
    }

    /// Closes everything, writes into database `uid`'s shard a sled instance as an
    /// earlier build kept it there (`write` gets its `log` and `snapshots` trees), and
    /// opens the directory again, which moves it out.
    fn with_sled_instance(self, uid: u64, write: impl FnOnce(&sled::Tree, &sled::Tree)) -> Fixture {
        let path = self.log.shard(uid).unwrap().path.clone();
        self.log.shutdown().expect("shutdown flushes");
        let dir = self.release();
        {
            let db = sled_config(&path, 1 << 20).open().unwrap();
            write(
                &db.open_tree("log").unwrap(),
                &db.open_tree("snapshots").unwrap(),
            );
            db.flush().unwrap();
        }
        assert!(super::sled_migration::instance_in(&path));
        let log = open_at(&dir.path().join("logs"));
        Fixture { dir, log }
    }

    fn release_and_open(self) -> Fixture {
        let dir = self.release();
        let log = open_at(&dir.path().join("logs"));
        Fixture { dir, log }
    }

    /// Lets go of the store and waits until nothing holds it.
    fn release(self) -> tempfile::TempDir {
        let Fixture { dir, log } = self;
        let weak = Arc::downgrade(&log);
        drop(log);
        // The flusher thread may hold the store for a moment after the last user lets
        // go.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while weak.strong_count() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the log store was not released within 10 s of shutdown"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        dir
    }
}

fn schema() -> Schema {
    Schema {
        files: vec![
            FileSchema {
                name: "orders".into(),
                alt_keys: vec!["customer".into()],
            },
            FileSchema {
                name: "lines".into(),
                alt_keys: vec![],
            },
        ],
    }
}

/// One database's writer: a store and its sequencer, as a node keeps them.
struct Writer {
    store: Store,
    seq: Sequencer,
}

impl Writer {
    fn new() -> Writer {
        Writer {
            store: Store::new(schema(), BLOCK_SIZE, QUOTA),
            seq: Sequencer::new(0, 1),
        }
    }

    /// Applies `ops` as one committed transaction and returns its log.
    #[track_caller]
    fn commit(&mut self, ops: &[Op]) -> TxnLog {
        let txn = self.seq.next_txn();
        txn::apply(&mut self.store, &mut self.seq, txn, ops.to_vec()).expect("transaction applies")
    }

    /// Applies `ops`, which must be refused, and returns the cancelled attempt's log.
    #[track_caller]
    fn refuse(&mut self, ops: &[Op]) -> TxnLog {
        let txn = self.seq.next_txn();
        txn::apply(&mut self.store, &mut self.seq, txn, ops.to_vec())
            .expect_err("transaction is refused")
            .log
    }
}

fn record(key: &str, customer: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    match customer {
        Some(c) => encode_record(&mut payload, key.as_bytes(), &[(0, c.as_bytes())], data),
        None => encode_record(&mut payload, key.as_bytes(), &[], data),
    }
    payload
}

fn put(kind: OpKind, file: FileId, key: &str, data: &[u8]) -> Op {
    let customer = (file == ORDERS).then_some("ann");
    Op {
        kind,
        file,
        payload: record(key, customer, data),
    }
}

fn insert(file: FileId, key: &str, data: &[u8]) -> Op {
    put(OpKind::Insert, file, key, data)
}

fn update(file: FileId, key: &str, data: &[u8]) -> Op {
    put(OpKind::Update, file, key, data)
}

fn delete(file: FileId, key: &str) -> Op {
    Op {
        kind: OpKind::Delete,
        file,
        payload: key.as_bytes().to_vec(),
    }
}

/// Inserts `count` orders `{prefix}{i:04}` with `bytes` bytes of data each.
fn inserts(prefix: &str, count: usize, bytes: usize) -> Vec<Op> {
    (0..count)
        .map(|i| insert(ORDERS, &format!("{prefix}{i:04}"), &vec![b'd'; bytes]))
        .collect()
}

/// Sets every update's timestamp (retention works on chunk timestamps).
fn stamped(mut log: TxnLog, timestamp_us: u64) -> TxnLog {
    for update in &mut log.updates {
        update.header.timestamp_us = timestamp_us;
    }
    log
}

/// Shifts every serial of `log` by `by` (to fake a log with a gap in it).
fn shifted(mut log: TxnLog, by: u64) -> TxnLog {
    for update in &mut log.updates {
        update.header.serial += by;
    }
    log
}

/// A replayed A entry, owned: serial, txn, effect, undo, after image, deleted key.
type Replayed = (u64, u64, Effect, bool, Option<Vec<u8>>, Option<Vec<u8>>);

fn owned(chunk: &ChunkRef<'_>) -> Vec<Replayed> {
    chunk
        .entries
        .iter()
        .map(|e| {
            (
                e.header.serial,
                e.header.txn,
                e.header.effect,
                e.header.undo,
                e.image.map(<[u8]>::to_vec),
                e.key.map(<[u8]>::to_vec),
            )
        })
        .collect()
}

/// What replaying `logs` must yield, derived from the updates themselves.
fn expected(logs: &[&TxnLog]) -> Vec<Replayed> {
    logs.iter()
        .flat_map(|log| log.updates.iter())
        .map(|u| {
            let deleted_key = match (u.header.effect, &u.before) {
                (Effect::Delete, Some(before)) => {
                    crate::store::block::decode(before).map(|r| r.key.to_vec())
                }
                _ => None,
            };
            (
                u.header.serial,
                u.header.txn,
                u.header.effect,
                u.header.undo,
                u.after.clone(),
                deleted_key,
            )
        })
        .collect()
}

/// Replays `uid` after `after`: the entries visited, the chunks seen, the last serial.
fn replay_all(log: &LogStore, uid: u64, after: u64) -> (Vec<Replayed>, usize, u64) {
    let mut entries = Vec::new();
    let mut chunks = 0;
    let last = log
        .replay(uid, after, |chunk| {
            assert_eq!(chunk.kind, LogKind::A, "replay visits A chunks only");
            entries.extend(owned(chunk));
            chunks += 1;
            Ok(())
        })
        .expect("replay");
    (entries, chunks, last)
}

/// Entries of `kind` with serial >= `from`, as (serial, image, op).
fn read_kind(
    log: &LogStore,
    uid: u64,
    kind: LogKind,
    from: u64,
) -> Vec<(u64, Option<Vec<u8>>, Option<OpKind>)> {
    let mut out = Vec::new();
    log.read(uid, kind, from, |chunk| {
        assert_eq!(chunk.kind, kind);
        assert!(chunk.last_serial >= from, "chunk ends before {from}");
        out.extend(
            chunk
                .entries
                .iter()
                .filter(|e| e.header.serial >= from)
                .map(|e| (e.header.serial, e.image.map(<[u8]>::to_vec), e.op)),
        );
        true
    })
    .expect("read");
    out
}

fn serials<T>(entries: &[(u64, T, Option<OpKind>)]) -> Vec<u64> {
    entries.iter().map(|e| e.0).collect()
}

/// A store rebuilt from nothing by replaying the A log of `uid`.
fn rebuilt(log: &LogStore, uid: u64) -> Store {
    let mut store = Store::new(schema(), BLOCK_SIZE, QUOTA);
    log.replay(uid, 0, |chunk| {
        for entry in &chunk.entries {
            txn::replay_entry(&mut store, entry).expect("replayed entry applies");
        }
        Ok(())
    })
    .expect("replay");
    store
}

fn save_snapshot(log: &LogStore, uid: u64, writer: &Writer) -> SnapshotMeta {
    let frozen = writer.store.freeze();
    let (layout, blocks) = frozen.snapshot_parts();
    let meta = SnapshotMeta {
        serial: writer.seq.last_serial,
        next_txn: writer.seq.next_txn,
        created_ms: 1_700_000_000_000,
        parts: 0,
        size_bytes: 0,
        layout,
    };
    log.save_snapshot(uid, meta, &blocks)
        .expect("save snapshot")
}

fn load_snapshot(log: &LogStore, uid: u64, meta: &SnapshotMeta) -> Store {
    let blocks = log.snapshot_block_list(uid, meta).expect("snapshot blocks");
    Store::from_snapshot_blocks(meta.layout.clone(), QUOTA, blocks).expect("snapshot decodes")
}

#[test]
fn append_then_replay_yields_every_a_entry_in_serial_order() {
    let f = Fixture::new();
    let mut w = Writer::new();
    let first = w.commit(&inserts("o", 20, 30));
    let second = w.commit(&[
        update(ORDERS, "o0003", b"changed"),
        delete(ORDERS, "o0004"),
        insert(LINES, "o0003/1", b"line"),
        put(OpKind::Upsert, ORDERS, "o0005", b"upserted"),
    ]);
    // Large enough to be written as several A chunks.
    let big = w.commit(&inserts("big", 300, 400));
    assert!(
        codec::encode(&big, LogKind::A).len() >= 3,
        "the big transaction spans several chunks"
    );
    // A refused transaction is logged too: its updates, then their undo.
    let refused = w.refuse(&[
        insert(ORDERS, "new", b"n"),
        update(ORDERS, "o0006", b"x"),
        insert(ORDERS, "o0007", b"duplicate"),
    ]);
    assert_eq!(refused.outcome, Outcome::Cancelled);
    assert!(refused.updates.iter().any(|u| u.header.undo));
    let last = w.commit(&[delete(LINES, "o0003/1")]);
    for log in [&first, &second, &big, &refused, &last] {
        f.log.append(UID, log).expect("append");
    }

    let (entries, chunks, last_serial) = replay_all(&f.log, UID, 0);
    let want = expected(&[&first, &second, &big, &refused, &last]);
    assert_eq!(last_serial, w.seq.last_serial);
    assert_eq!(
        entries.iter().map(|e| e.0).collect::<Vec<_>>(),
        (1..=w.seq.last_serial).collect::<Vec<_>>(),
        "every serial once, in order"
    );
    assert_eq!(entries, want, "entries carry their txn, effect and images");
    assert!(
        chunks >= 7,
        "one chunk per small transaction, several for the big one"
    );

    // Replaying the A log into an empty store rebuilds identical blocks.
    let store = rebuilt(&f.log, UID);
    assert_eq!(store.checksums(), w.store.checksums());
    assert!(
        store.get(ORDERS, b"new").is_none(),
        "the refused insert was undone"
    );
    assert_eq!(store.get(ORDERS, b"o0003").unwrap().1.data, b"changed");
    assert!(store.get(ORDERS, b"o0004").is_none());
    assert!(store.get(ORDERS, b"big0299").is_some());
}

#[test]
fn empty_transactions_write_nothing() {
    let f = Fixture::new();
    let empty = TxnLog {
        txn: 1,
        outcome: Outcome::Committed,
        updates: Vec::new(),
    };
    f.log.append(UID, &empty).expect("append");
    assert_eq!(replay_all(&f.log, UID, 0), (Vec::new(), 0, 0));
    for kind in [LogKind::A, LogKind::B, LogKind::T] {
        assert_eq!(f.log.oldest_serial(UID, kind).unwrap(), None);
    }
}

#[test]
fn replay_from_a_later_serial_returns_only_the_entries_after_it() {
    let f = Fixture::new();
    let mut w = Writer::new();
    let first = w.commit(&inserts("a", 5, 10));
    let big = w.commit(&inserts("b", 300, 400));
    let third = w.commit(&[update(ORDERS, "a0001", b"new"), delete(ORDERS, "a0002")]);
    for log in [&first, &big, &third] {
        f.log.append(UID, log).unwrap();
    }
    let end = w.seq.last_serial;

    // From the end of a transaction, as recovery does after a snapshot.
    let after = first.last_serial().unwrap();
    let (entries, _, last) = replay_all(&f.log, UID, after);
    assert_eq!(last, end);
    assert_eq!(entries, expected(&[&big, &third]));

    // From a chunk boundary inside the big transaction.
    let chunks = codec::encode(&big, LogKind::A);
    let second_chunk_first = chunks[1].0;
    let (entries, _, last) = replay_all(&f.log, UID, second_chunk_first - 1);
    assert_eq!(last, end);
    assert_eq!(entries.first().map(|e| e.0), Some(second_chunk_first));
    assert_eq!(
        entries.len() as u64,
        end - second_chunk_first + 1,
        "everything after the boundary"
    );

    // From inside a chunk: only the entries after the serial.
    let inside = second_chunk_first + 2;
    let (entries, _, last) = replay_all(&f.log, UID, inside);
    assert_eq!(last, end);
    assert_eq!(entries.first().map(|e| e.0), Some(inside + 1));
    assert_eq!(entries.len() as u64, end - inside);

    // From the last serial: nothing to replay, the last serial is kept.
    assert_eq!(replay_all(&f.log, UID, end), (Vec::new(), 0, end));
    // Another database's log is empty.
    assert_eq!(replay_all(&f.log, OTHER_UID, 0), (Vec::new(), 0, 0));
}

#[test]
fn replay_stops_at_a_gap_in_serials_and_resumes_once_it_is_filled() {
    let f = Fixture::new();
    let mut w = Writer::new();
    let first = w.commit(&inserts("a", 5, 10)); // serials 1..=5
    let missing = w.commit(&inserts("b", 2, 10)); // serials 6..=7
    let after_gap = w.commit(&inserts("c", 3, 10)); // serials 8..=10
    assert_eq!(
        (missing.first_serial(), after_gap.first_serial()),
        (Some(6), Some(8))
    );
    f.log.append(UID, &first).unwrap();
    f.log.append(UID, &after_gap).unwrap();

    let (entries, chunks, last) = replay_all(&f.log, UID, 0);
    assert_eq!(last, 5, "replay stops before the gap");
    assert_eq!(chunks, 1);
    assert_eq!(entries, expected(&[&first]));

    // Chunks after a gap are also ignored when the gap is farther on.
    let beyond = shifted(w.commit(&inserts("d", 2, 10)), 100); // serials 111..=112
    f.log.append(UID, &beyond).unwrap();
    f.log.append(UID, &missing).unwrap();
    let (entries, _, last) = replay_all(&f.log, UID, 0);
    assert_eq!(
        last, 10,
        "the filled gap is replayed, the next gap stops it"
    );
    assert_eq!(entries, expected(&[&first, &missing, &after_gap]));
}

#[test]
fn read_returns_b_and_t_entries_from_a_serial() {
    let f = Fixture::new();
    let mut w = Writer::new();
    let first = w.commit(&inserts("k", 5, 10)); // 1..=5: inserts, no before images
    let second = w.commit(&[
        update(ORDERS, "k0001", b"v2"),             // 6
        delete(ORDERS, "k0002"),                    // 7
        put(OpKind::Upsert, LINES, "l1", b"l1"),    // 8: new, no before image
        put(OpKind::Upsert, ORDERS, "k0003", b"u"), // 9: replaces
    ]);
    let refused = w.refuse(&[
        update(ORDERS, "k0004", b"x"),
        insert(ORDERS, "k0000", b"dup"),
    ]);
    for log in [&first, &second, &refused] {
        f.log.append(UID, log).unwrap();
    }
    let before_of = |log: &TxnLog, serial: u64| {
        log.updates
            .iter()
            .find(|u| u.header.serial == serial)
            .and_then(|u| u.before.clone())
    };

    // B: only updates with a before image, each carrying it.
    let b = read_kind(&f.log, UID, LogKind::B, 1);
    let undo_serials: Vec<u64> = refused
        .updates
        .iter()
        .filter(|u| u.before.is_some())
        .map(|u| u.header.serial)
        .collect();
    let mut want_serials = vec![6, 7, 9];
    want_serials.extend(&undo_serials);
    assert_eq!(serials(&b), want_serials);
    assert_eq!(b[0].1, before_of(&second, 6));
    assert_eq!(
        b[0].1.as_deref(),
        Some(&record("k0001", Some("ann"), b"dddddddddd")[..]),
        "the before image is the record as it was"
    );
    assert_eq!(b[1].1, before_of(&second, 7));
    assert!(b.iter().all(|e| e.2.is_none()), "B entries carry no op");

    // T: the client's operations only (no undo), from a serial inside a chunk.
    let t = read_kind(&f.log, UID, LogKind::T, 3);
    let mut want_t: Vec<u64> = (3..=9).collect();
    want_t.push(refused.updates[0].header.serial);
    assert_eq!(serials(&t), want_t);
    let op_of = |serial: u64| t.iter().find(|e| e.0 == serial).map(|e| e.2);
    assert_eq!(op_of(3), Some(Some(OpKind::Insert)));
    assert_eq!(op_of(6), Some(Some(OpKind::Update)));
    assert_eq!(op_of(7), Some(Some(OpKind::Delete)));
    assert_eq!(op_of(8), Some(Some(OpKind::Upsert)));
    let delete_payload = t.iter().find(|e| e.0 == 7).unwrap().1.clone();
    assert_eq!(
        delete_payload.as_deref(),
        Some(&b"k0002"[..]),
        "a delete's T payload is its key"
    );
    let upsert_payload = t.iter().find(|e| e.0 == 8).unwrap().1.clone();
    assert_eq!(
        upsert_payload.as_deref(),
        Some(&record("l1", None, b"l1")[..])
    );

    // Reading from past the end gives nothing; a visitor can stop early.
    assert!(read_kind(&f.log, UID, LogKind::B, w.seq.last_serial + 1).is_empty());
    let mut visited = 0;
    f.log
        .read(UID, LogKind::A, 1, |_| {
            visited += 1;
            false
        })
        .unwrap();
    assert_eq!(visited, 1, "read stops when the visitor returns false");
    // Other databases and kinds are separate.
    assert!(read_kind(&f.log, OTHER_UID, LogKind::T, 0).is_empty());
}

#[test]
fn prune_older_than_removes_only_old_chunks_of_that_kind_and_database() {
    let f = Fixture::new();
    let mut w = Writer::new();
    let mut logs = vec![stamped(w.commit(&inserts("k", 4, 10)), 500)];
    for (round, ts) in [(1u8, 1_000), (2, 2_000), (3, 3_000)] {
        let ops = [
            update(ORDERS, "k0000", &[round]),
            update(ORDERS, "k0001", &[round]),
        ];
        logs.push(stamped(w.commit(&ops), ts));
    }
    for log in &logs {
        f.log.append(UID, log).unwrap();
    }
    // Another database with an old B chunk.
    let mut other = Writer::new();
    f.log
        .append(OTHER_UID, &stamped(other.commit(&inserts("x", 2, 5)), 100))
        .unwrap();
    f.log
        .append(
            OTHER_UID,
            &stamped(other.commit(&[update(ORDERS, "x0000", b"y")]), 100),
        )
        .unwrap();
    let a_before = replay_all(&f.log, UID, 0);

    // B chunks exist for the three update rounds only; two are older than 2500.
    assert_eq!(f.log.prune_older_than(UID, LogKind::B, 2_500).unwrap(), 2);
    assert_eq!(serials(&read_kind(&f.log, UID, LogKind::B, 0)), vec![9, 10]);
    // Pruning again finds nothing more to remove.
    assert_eq!(f.log.prune_older_than(UID, LogKind::B, 2_500).unwrap(), 0);

    // T: 500 and 1000 are older than 2000; the chunk at exactly 2000 stays.
    assert_eq!(f.log.prune_older_than(UID, LogKind::T, 2_000).unwrap(), 2);
    assert_eq!(
        serials(&read_kind(&f.log, UID, LogKind::T, 0)),
        vec![7, 8, 9, 10]
    );
    assert_eq!(f.log.oldest_serial(UID, LogKind::T).unwrap(), Some(7));

    // The A log and the other database are untouched.
    assert_eq!(replay_all(&f.log, UID, 0), a_before);
    assert_eq!(f.log.oldest_serial(UID, LogKind::A).unwrap(), Some(1));
    assert_eq!(
        serials(&read_kind(&f.log, OTHER_UID, LogKind::B, 0)),
        vec![3]
    );
    assert_eq!(
        serials(&read_kind(&f.log, OTHER_UID, LogKind::T, 0)),
        vec![1, 2, 3]
    );

    // A cutoff after everything empties the kind.
    assert_eq!(
        f.log.prune_older_than(UID, LogKind::B, u64::MAX).unwrap(),
        1
    );
    assert_eq!(f.log.oldest_serial(UID, LogKind::B).unwrap(), None);
}

#[test]
fn prune_through_removes_a_chunks_wholly_at_or_below_a_serial() {
    let f = Fixture::new();
    let mut w = Writer::new();
    let logs: Vec<TxnLog> = ["a", "b", "c"]
        .iter()
        .map(|p| w.commit(&inserts(p, 3, 10)))
        .collect(); // serials 1..=3, 4..=6, 7..=9
    for log in &logs {
        f.log.append(UID, log).unwrap();
    }

    assert_eq!(f.log.prune_through(UID, LogKind::A, 6).unwrap(), 2);
    assert_eq!(f.log.oldest_serial(UID, LogKind::A).unwrap(), Some(7));
    let (entries, _, last) = replay_all(&f.log, UID, 6);
    assert_eq!((entries, last), (expected(&[&logs[2]]), 9));
    // A chunk that also holds a later serial is kept whole.
    assert_eq!(f.log.prune_through(UID, LogKind::A, 8).unwrap(), 0);
    assert_eq!(f.log.oldest_serial(UID, LogKind::A).unwrap(), Some(7));
    // The T log is untouched.
    assert_eq!(f.log.oldest_serial(UID, LogKind::T).unwrap(), Some(1));
    assert_eq!(read_kind(&f.log, UID, LogKind::T, 0).len(), 9);

    assert_eq!(f.log.prune_through(UID, LogKind::A, 9).unwrap(), 1);
    assert_eq!(f.log.oldest_serial(UID, LogKind::A).unwrap(), None);
}

#[test]
fn snapshots_save_list_load_and_delete() {
    let f = Fixture::new();
    let mut w = Writer::new();
    // An empty store snapshots and loads too.
    let empty = save_snapshot(&f.log, OTHER_UID, &w);
    assert_eq!(
        load_snapshot(&f.log, OTHER_UID, &empty).checksums(),
        w.store.checksums()
    );

    w.commit(&inserts("k", 2000, 200));
    let first = save_snapshot(&f.log, UID, &w);
    let blocks = w.store.freeze().snapshot_parts().1.len() as u64;
    assert_eq!(first.serial, w.seq.last_serial);
    assert_eq!(first.next_txn, w.seq.next_txn);
    assert_eq!(first.size_bytes, blocks * BLOCK_SIZE as u64);
    assert!(first.parts >= 2, "{blocks} blocks fill several parts");
    let loaded = load_snapshot(&f.log, UID, &first);
    assert_eq!(loaded.checksums(), w.store.checksums());
    assert_eq!(
        loaded.get(ORDERS, b"k1999").map(|(_, r)| r.data.to_vec()),
        Some(vec![b'd'; 200])
    );
    assert_eq!(loaded.lookup_alt(0, 0, b"ann", 5000).len(), 2000);
    let at_first = w.store.checksums();

    w.commit(&[delete(ORDERS, "k0000"), insert(LINES, "l", b"1")]);
    let second = save_snapshot(&f.log, UID, &w);
    assert_eq!(
        f.log.snapshots(UID).unwrap(),
        vec![first.clone(), second.clone()]
    );
    assert_eq!(f.log.snapshots(OTHER_UID).unwrap(), vec![empty.clone()]);
    assert_eq!(
        load_snapshot(&f.log, UID, &second).checksums(),
        w.store.checksums()
    );
    assert_eq!(load_snapshot(&f.log, UID, &first).checksums(), at_first);

    let shard_path = f.log.shard(UID).unwrap().path.clone();
    let first_file = super::snapshot_files::file(&shard_path, first.serial);
    assert!(first_file.is_file(), "a snapshot is a file of its own");
    f.log.delete_snapshot(UID, &first).unwrap();
    assert!(
        !first_file.exists(),
        "a deleted snapshot's space comes back at once"
    );
    assert_eq!(f.log.snapshots(UID).unwrap(), vec![second.clone()]);
    assert!(matches!(
        f.log.snapshot_block_list(UID, &first),
        Err(LogError::Damaged(_))
    ));
    assert_eq!(
        load_snapshot(&f.log, UID, &second).checksums(),
        w.store.checksums()
    );
    assert_eq!(f.log.snapshots(OTHER_UID).unwrap(), vec![empty]);
}

#[test]
fn delete_database_removes_only_that_databases_log_and_snapshots() {
    let f = Fixture::new();
    // Three databases; uid 256 differs from uid 1 only in the low bytes of the key prefix.
    let uids = [UID, OTHER_UID, 256];
    let mut writers: Vec<Writer> = Vec::new();
    for uid in uids {
        let mut w = Writer::new();
        let a = w.commit(&inserts("k", 5, 10));
        let b = w.commit(&[update(ORDERS, "k0001", b"x"), delete(ORDERS, "k0002")]);
        f.log.append(uid, &a).unwrap();
        f.log.append(uid, &b).unwrap();
        save_snapshot(&f.log, uid, &w);
        writers.push(w);
    }

    let dir = f.dir.path().join("logs").join(shard_dir_name(UID, 0));
    assert!(dir.is_dir(), "each database has a directory of its own");
    f.log.delete_database(UID).unwrap();
    // Its space comes back at once: the whole directory goes.
    assert!(!dir.exists(), "a deleted database's directory is removed");
    // A late call for it is refused, and does not bring the directory back.
    let late = f
        .log
        .snapshots(UID)
        .expect_err("a deleted database has no log");
    assert!(late.to_string().contains("deleted"), "{late}");
    assert!(!dir.exists());

    for (uid, w) in uids.iter().zip(&writers).skip(1) {
        let (_, _, last) = replay_all(&f.log, *uid, 0);
        assert_eq!(last, w.seq.last_serial, "database {uid} keeps its log");
        assert_eq!(rebuilt(&f.log, *uid).checksums(), w.store.checksums());
        assert_eq!(serials(&read_kind(&f.log, *uid, LogKind::B, 0)), vec![6, 7]);
        let snaps = f.log.snapshots(*uid).unwrap();
        assert_eq!(snaps.len(), 1, "database {uid} keeps its snapshot");
        assert_eq!(
            load_snapshot(&f.log, *uid, &snaps[0]).checksums(),
            w.store.checksums()
        );
    }
}

#[tokio::test]
async fn request_flush_then_wait_durable_completes() {
    let f = Fixture::new();
    let limit = Duration::from_secs(20);
    let mut w = Writer::new();
    let first = w.commit(&inserts("k", 10, 10));
    f.log.append(UID, &first).unwrap();
    let ticket = f.log.request_flush(UID).unwrap();
    tokio::time::timeout(limit, f.log.wait_durable(&ticket))
        .await
        .expect("the flush finishes in time")
        .expect("the flush succeeds");

    // Concurrent writers each get their own ticket, and every wait completes.
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let log = f.log.clone();
        let txn = w.commit(&inserts(&format!("t{i}-"), 3, 10));
        tasks.push(tokio::spawn(async move {
            log.append(UID, &txn).unwrap();
            let ticket = log.request_flush(UID).unwrap();
            log.wait_durable(&ticket).await.map(|()| ticket.number)
        }));
    }
    let mut tickets = Vec::new();
    for task in tasks {
        let ticket = tokio::time::timeout(limit, task)
            .await
            .expect("a wait finishes in time")
            .expect("the task runs")
            .expect("the flush succeeds");
        tickets.push(ticket);
    }
    tickets.sort_unstable();
    tickets.dedup();
    assert_eq!(tickets.len(), 8, "each request gets its own ticket");
    assert!(tickets[0] > ticket.number);

    // A ticket already covered is done at once.
    tokio::time::timeout(limit, f.log.wait_durable(&ticket))
        .await
        .expect("an old ticket is done")
        .unwrap();
    assert_eq!(replay_all(&f.log, UID, 0).2, w.seq.last_serial);
}

#[test]
fn reopening_the_directory_sees_the_same_log_and_snapshots() {
    let f = Fixture::new();
    let mut w = Writer::new();
    let first = w.commit(&inserts("k", 50, 100));
    f.log.append(UID, &first).unwrap();
    let snapshot = save_snapshot(&f.log, UID, &w);
    let big = w.commit(&inserts("big", 300, 400));
    let last = w.commit(&[update(ORDERS, "k0001", b"x"), delete(ORDERS, "k0002")]);
    f.log.append(UID, &big).unwrap();
    f.log.append(UID, &last).unwrap();
    let a_log = replay_all(&f.log, UID, 0);
    let b_log = read_kind(&f.log, UID, LogKind::B, 0);
    let t_log = read_kind(&f.log, UID, LogKind::T, 0);
    f.log.flush_now(UID).unwrap();

    let f = f.reopen();
    assert_eq!(replay_all(&f.log, UID, 0), a_log);
    assert_eq!(read_kind(&f.log, UID, LogKind::B, 0), b_log);
    assert_eq!(read_kind(&f.log, UID, LogKind::T, 0), t_log);
    assert_eq!(f.log.snapshots(UID).unwrap(), vec![snapshot.clone()]);

    // Recovery as a node does it: the snapshot, then the A log after it.
    let mut store = load_snapshot(&f.log, UID, &snapshot);
    let last_serial = f
        .log
        .replay(UID, snapshot.serial, |chunk| {
            for entry in &chunk.entries {
                txn::replay_entry(&mut store, entry).unwrap();
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(last_serial, w.seq.last_serial);
    assert_eq!(store.checksums(), w.store.checksums());

    // The reopened store keeps working.
    let more = w.commit(&[insert(LINES, "after-reopen", b"1")]);
    f.log.append(UID, &more).unwrap();
    assert_eq!(replay_all(&f.log, UID, 0).2, w.seq.last_serial);
}

#[test]
fn a_transaction_cut_before_its_a_chunk_leaves_nothing_once_the_tail_is_dropped() {
    let f = Fixture::new();
    let mut w = Writer::new();
    let first = w.commit(&inserts("k", 3, 10));
    f.log.append(UID, &first).unwrap();
    let b_before = read_kind(&f.log, UID, LogKind::B, 0);
    let t_before = read_kind(&f.log, UID, LogKind::T, 0);
    // A crash after the B and T chunks of an update reached sled, before its A chunk
    // (the order an earlier build wrote a small transaction in).
    let torn = w.commit(&[update(ORDERS, "k0001", b"new"), delete(ORDERS, "k0002")]);
    let f = f.with_sled_instance(UID, |log_tree, _| {
        for kind in [LogKind::B, LogKind::T] {
            for (first, bytes) in codec::encode(&torn, kind) {
                log_tree.insert(log_key(UID, kind, first), bytes).unwrap();
            }
        }
    });
    assert_eq!(replay_all(&f.log, UID, 0).2, first.updates.len() as u64);
    let recovered = first.updates.len() as u64;
    assert_eq!(
        f.log.drop_torn_tail(UID, recovered).unwrap(),
        2,
        "a B and a T chunk"
    );
    assert_eq!(
        f.log.drop_torn_tail(UID, recovered).unwrap(),
        0,
        "nothing more"
    );
    assert_eq!(read_kind(&f.log, UID, LogKind::B, 0), b_before);
    assert_eq!(read_kind(&f.log, UID, LogKind::T, 0), t_before);

    // The recovered node reuses the torn serials: nothing of the torn transaction is
    // attributed to the new one (an insert has no before image).
    let mut again = Writer::new();
    again.commit(&inserts("k", 3, 10));
    let next = again.commit(&[insert(LINES, "fresh", b"1")]);
    f.log.append(UID, &next).unwrap();
    let b_after = read_kind(&f.log, UID, LogKind::B, 0);
    assert_eq!(b_after, b_before, "no before image for the new insert");
    assert_eq!(replay_all(&f.log, UID, 0).2, again.seq.last_serial);
}

#[test]
fn b_and_t_chunks_below_the_recovered_serial_stay_when_the_a_log_was_pruned() {
    // After a snapshot the A log may be pruned while B and T chunks are kept longer:
    // they are history, not a torn transaction.
    let f = Fixture::new();
    let mut w = Writer::new();
    f.log.append(UID, &w.commit(&inserts("k", 2, 10))).unwrap();
    f.log
        .append(UID, &w.commit(&[update(ORDERS, "k0001", b"x")]))
        .unwrap();
    let b_log = read_kind(&f.log, UID, LogKind::B, 0);
    assert!(!b_log.is_empty());
    f.log
        .prune_through(UID, LogKind::A, w.seq.last_serial)
        .unwrap();
    assert_eq!(replay_all(&f.log, UID, 0).1, 0, "no A chunk left");
    assert_eq!(f.log.drop_torn_tail(UID, w.seq.last_serial).unwrap(), 0);
    assert_eq!(read_kind(&f.log, UID, LogKind::B, 0), b_log);
}

#[test]
fn a_small_transaction_is_stored_whole_and_a_large_one_too() {
    // Small transactions take the insert path (A last), large ones the atomic batch:
    // both read back exactly, with their B and T chunks.
    let f = Fixture::new();
    let mut w = Writer::new();
    let small = w.commit(&[insert(ORDERS, "s", b"1")]);
    let large = w.commit(&inserts("big", 300, 400));
    assert!(
        codec::encode(&large, LogKind::A).len() > 1,
        "several A chunks"
    );
    let change = w.commit(&[update(ORDERS, "s", b"2")]);
    for t in [&small, &large, &change] {
        f.log.append(UID, t).unwrap();
    }
    assert_eq!(
        replay_all(&f.log, UID, 0).0,
        expected(&[&small, &large, &change])
    );
    assert_eq!(f.log.drop_torn_tail(UID, 0).unwrap(), 0);
    assert_eq!(
        serials(&read_kind(&f.log, UID, LogKind::B, 0)),
        vec![w.seq.last_serial]
    );
}

/// A commit of another database, and its group flush, while a snapshot of `UID` stands
/// half-written (SPEC G1): the snapshot holds no lock that other writers wait for.
#[test]
fn another_databases_commit_completes_while_a_snapshot_is_written() {
    let f = Fixture::new();
    let mut big = Writer::new();
    big.commit(&inserts("k", 3000, 200));
    let (reached, at_part) = std::sync::mpsc::channel();
    let (release, go_on) = std::sync::mpsc::channel::<()>();
    *f.log.after_snapshot_part.lock() = Some(Box::new(move |part| {
        if part == 1 {
            reached.send(()).ok();
            go_on.recv_timeout(Duration::from_secs(30)).ok();
        }
    }));
    let log = &f.log;
    std::thread::scope(|s| {
        let saving = s.spawn(|| save_snapshot(log, UID, &big));
        at_part
            .recv_timeout(Duration::from_secs(30))
            .expect("the snapshot writes its parts");
        let (done, committed) = std::sync::mpsc::channel();
        s.spawn(move || {
            let mut other = Writer::new();
            let t = other.commit(&inserts("q", 1, 10));
            log.append(OTHER_UID, &t).expect("append");
            let ticket = log.request_flush(OTHER_UID).expect("ticket");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            runtime
                .block_on(log.wait_durable(&ticket))
                .expect("durable");
            done.send(()).ok();
        });
        let finished = committed.recv_timeout(Duration::from_secs(10));
        // Until its metadata is written the snapshot does not exist for readers.
        let listed = log.snapshots(UID).unwrap();
        release.send(()).ok();
        finished.expect("another database's commit completes while a snapshot is written");
        assert!(listed.is_empty(), "{listed:?}");
        let meta = saving.join().expect("the snapshot is saved");
        assert_eq!(log.snapshots(UID).unwrap(), vec![meta.clone()]);
        assert_eq!(
            load_snapshot(log, UID, &meta).checksums(),
            big.store.checksums()
        );
    });
    assert_eq!(replay_all(&f.log, OTHER_UID, 0).1, 1);
}

/// Parts without metadata (a save a crash interrupted) are removed; a finished
/// snapshot and other databases' snapshots stay whole.
#[test]
fn unfinished_snapshots_are_dropped_and_finished_ones_kept() {
    let f = Fixture::new();
    let mut w = Writer::new();
    w.commit(&inserts("k", 600, 200));
    let kept = save_snapshot(&f.log, UID, &w);
    let other = save_snapshot(&f.log, OTHER_UID, &w);
    // What a crash leaves of a save: a `.tmp` file (and stray directories).
    let shard_path = f.log.shard(UID).unwrap().path.clone();
    let folder = super::snapshot_files::folder(&shard_path);
    std::fs::write(
        folder.join(format!("{}.snap.tmp", kept.serial + 6)),
        b"dpsnap",
    )
    .unwrap();
    for name in [
        format!("{}.tmp", kept.serial + 7),
        (kept.serial + 9).to_string(),
    ] {
        std::fs::create_dir_all(folder.join(name)).unwrap();
    }
    assert_eq!(f.log.drop_unfinished_snapshots(UID).unwrap(), 3);
    let left: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, vec![format!("{}.snap", kept.serial)]);
    assert_eq!(f.log.drop_unfinished_snapshots(UID).unwrap(), 0);
    assert_eq!(f.log.drop_unfinished_snapshots(OTHER_UID).unwrap(), 0);
    assert_eq!(f.log.snapshots(UID).unwrap(), vec![kept.clone()]);
    assert_eq!(
        load_snapshot(&f.log, UID, &kept).checksums(),
        w.store.checksums()
    );
    assert_eq!(
        load_snapshot(&f.log, OTHER_UID, &other).checksums(),
        w.store.checksums()
    );
    // A file under a finished name is finished (the rename is the commit point): a bad
    // one is damage for recovery to set aside, not an unfinished save.
    std::fs::write(folder.join(format!("{}.snap", kept.serial + 8)), b"dpsnap").unwrap();
    assert_eq!(f.log.drop_unfinished_snapshots(UID).unwrap(), 0);
    let listed = f.log.snapshot_list(UID).unwrap();
    assert_eq!(listed.len(), 2);
    let err = listed[1].1.as_ref().map(|_| ()).unwrap_err().to_string();
    assert!(
        err.contains(&format!("snapshot {}", kept.serial + 8)),
        "{err}"
    );
    assert!(f.log.snapshots(UID).is_err());
    let aside = f
        .log
        .set_aside_snapshot(UID, kept.serial + 8)
        .unwrap()
        .unwrap();
    assert!(aside.is_file());
    assert_eq!(f.log.snapshots(UID).unwrap(), vec![kept]);
}

/// Turn snapshot `serial`'s file into what an earlier build wrote: its parts after the
/// old magic, no trailer. Returns its metadata as that build kept it in sled.
fn strip_trailer(shard: &std::path::Path, serial: u64) -> Vec<u8> {
    let path = super::snapshot_files::file(shard, serial);
    let bytes = std::fs::read(&path).unwrap();
    let (rest, end) = bytes.split_at(bytes.len() - 12);
    assert_eq!(&end[4..], b"dpsnmeta");
    let len = u32::from_le_bytes(end[..4].try_into().unwrap()) as usize;
    let (parts, meta) = rest.split_at(rest.len() - len);
    let mut old = super::snapshot_files::FILE_MAGIC_V1.to_vec();
    old.extend_from_slice(&parts[8..]);
    std::fs::write(&path, old).unwrap();
    meta.to_vec()
}

/// The parts of an earlier build's snapshot file (see [`strip_trailer`]).
fn framed_parts(path: &std::path::Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let mut at = 8;
    let mut parts = Vec::new();
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        parts.push(bytes[at + 4..at + 4 + len].to_vec());
        at += 4 + len;
    }
    parts
}

/// Every layout earlier builds kept snapshots in, in one shard's sled instance:
/// metadata in the `snapshots` tree with the blocks in a file without a trailer, in a
/// sled instance of the snapshot's own, or as parts in the tree; one already moved
/// (a crash after its move); and what crashes left without metadata. Opening the shard
/// moves each into a file of today's layout, byte for byte, and the instance goes.
#[test]
fn a_shard_an_earlier_build_kept_in_sled_is_moved_into_files_when_it_opens() {
    let f = Fixture::new();
    let mut w = Writer::new();
    let mut saved = Vec::new();
    for round in 0..4 {
        let txn = w.commit(&inserts(&format!("r{round}-"), 300, 150));
        f.log.append(UID, &txn).unwrap();
        saved.push((save_snapshot(&f.log, UID, &w), w.store.checksums()));
    }
    let a_log = replay_all(&f.log, UID, 0);
    let shard = f.log.shard(UID).unwrap().path.clone();
    let metas: Vec<_> = saved.iter().map(|(m, _)| m.clone()).collect();
    let stored: Vec<Vec<u8>> = metas
        .iter()
        .take(3)
        .map(|m| strip_trailer(&shard, m.serial))
        .collect();
    let file = |serial| super::snapshot_files::file(&shard, serial);
    let parts_in_tree = framed_parts(&file(metas[0].serial));
    std::fs::remove_file(file(metas[0].serial)).unwrap();
    let instance_parts = framed_parts(&file(metas[1].serial));
    std::fs::remove_file(file(metas[1].serial)).unwrap();
    let folder = super::snapshot_files::folder(&shard);
    {
        let db = sled_config(&folder.join(metas[1].serial.to_string()), 1 << 20)
            .open()
            .unwrap();
        for (n, part) in instance_parts.iter().enumerate() {
            db.insert((n as u32).to_be_bytes(), part.clone()).unwrap();
        }
        db.flush().unwrap();
    }
    // Without metadata: an earlier build's file and instance a crash left.
    std::fs::copy(file(metas[2].serial), folder.join("9001.snap")).unwrap();
    std::fs::create_dir_all(folder.join("9002")).unwrap();
    let today = super::snapshot_files::read_meta(&shard, metas[3].serial).unwrap();
    let f = f.with_sled_instance(UID, |_, tree| {
        for (meta, value) in metas.iter().zip(&stored) {
            tree.insert(snapshot_key(UID, meta.serial, u32::MAX), value.clone())
                .unwrap();
        }
        for (n, part) in parts_in_tree.iter().enumerate() {
            tree.insert(snapshot_key(UID, metas[0].serial, n as u32), part.clone())
                .unwrap();
        }
        // Moved before a crash: its metadata still in the tree.
        let moved = super::snapshot_files::encode_meta(&today, &[1, 2]).unwrap();
        tree.insert(snapshot_key(UID, metas[3].serial, u32::MAX), moved)
            .unwrap();
        // Parts without metadata.
        tree.insert(snapshot_key(UID, 9003, 0), vec![7u8; 10])
            .unwrap();
    });

    // The shard opens (and moves its instance out) when the database is first used.
    assert_eq!(f.log.snapshots(UID).unwrap(), metas);
    assert!(
        !super::sled_migration::instance_in(&shard),
        "the shard's sled instance is gone"
    );
    let mut left: Vec<_> = std::fs::read_dir(&shard)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, vec!["segments", "snapshots"]);
    let mut files: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    let mut expected: Vec<_> = metas.iter().map(|m| format!("{}.snap", m.serial)).collect();
    expected.sort();
    assert_eq!(
        files, expected,
        "one file per snapshot with metadata, nothing else"
    );
    assert_eq!(f.log.snapshots(UID).unwrap(), metas);
    for (meta, checksums) in &saved {
        assert_eq!(&load_snapshot(&f.log, UID, meta).checksums(), checksums);
    }
    assert_eq!(replay_all(&f.log, UID, 0), a_log);
    assert_eq!(f.log.drop_unfinished_snapshots(UID).unwrap(), 0);
    // Counted from the files, the same after another start.
    let stored_bytes = f.log.stored_bytes(UID).unwrap();
    let f = f.reopen();
    assert_eq!(f.log.stored_bytes(UID).unwrap(), stored_bytes);
    assert_eq!(f.log.snapshots(UID).unwrap(), metas);
}

/// Metadata damaged in sled stays damaged in its file: recovery names it and sets it
/// aside as before, and the snapshots beside it are moved whole.
#[test]
fn damaged_metadata_in_sled_is_moved_as_it_is_and_named() {
    let f = Fixture::new();
    let mut w = Writer::new();
    w.commit(&inserts("k", 300, 150));
    let good = save_snapshot(&f.log, UID, &w);
    w.commit(&inserts("m", 10, 150));
    let bad = save_snapshot(&f.log, UID, &w);
    let shard = f.log.shard(UID).unwrap().path.clone();
    let good_meta = strip_trailer(&shard, good.serial);
    let mut bad_meta = strip_trailer(&shard, bad.serial);
    bad_meta[3] ^= 0x40;
    let f = f.with_sled_instance(UID, |_, tree| {
        tree.insert(snapshot_key(UID, good.serial, u32::MAX), good_meta)
            .unwrap();
        tree.insert(snapshot_key(UID, bad.serial, u32::MAX), bad_meta)
            .unwrap();
    });
    let listed = f.log.snapshot_list(UID).unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].1.as_ref().unwrap(), &good);
    let err = listed[1].1.as_ref().map(|_| ()).unwrap_err().to_string();
    assert!(
        err.contains(&format!("snapshot {}", bad.serial)) && err.contains("checksum"),
        "{err}"
    );
}

/// Retention's size bound: the oldest chunks of one kind go until what is left fits;
/// the count stays true through appends and prunes; the A log, the other kind and
/// other databases are untouched; what was pruned is remembered.
#[test]
fn prune_to_bytes_keeps_the_newest_chunks_that_fit_the_bound() {
    let f = Fixture::new();
    let mut w = Writer::new();
    f.log.append(UID, &w.commit(&inserts("k", 4, 10))).unwrap();
    // Counted from a scan once, then kept up to date by every append.
    let empty_b = f.log.kind_bytes(UID, LogKind::B).unwrap();
    assert_eq!(empty_b, 0);
    for round in 1..=20u8 {
        let ops = [update(ORDERS, "k0000", &[round; 100])];
        f.log.append(UID, &w.commit(&ops)).unwrap();
    }
    let mut other = Writer::new();
    f.log
        .append(OTHER_UID, &other.commit(&inserts("x", 2, 5)))
        .unwrap();
    f.log
        .append(OTHER_UID, &other.commit(&[update(ORDERS, "x0000", b"y")]))
        .unwrap();
    let chunk_sizes = |kind| -> Vec<u64> {
        let mut sizes = Vec::new();
        let shard = f.log.shard(UID).unwrap();
        shard
            .segments
            .scan(kind, 0, |_, bytes| {
                sizes.push(bytes.len() as u64);
                Ok(true)
            })
            .unwrap();
        sizes
    };
    let scanned = |kind| -> u64 { chunk_sizes(kind).iter().sum() };
    assert_eq!(
        f.log.kind_bytes(UID, LogKind::B).unwrap(),
        scanned(LogKind::B)
    );
    // The bytes of the newest five B chunks: the bound that keeps exactly them.
    let sizes = chunk_sizes(LogKind::B);
    assert_eq!(sizes.len(), 20);
    let bound: u64 = sizes[15..].iter().sum();
    let t_before = read_kind(&f.log, UID, LogKind::T, 0);
    let a_before = replay_all(&f.log, UID, 0);

    // Room for five chunks: the newest five stay.
    let removed = f.log.prune_to_bytes(UID, LogKind::B, bound).unwrap();
    assert_eq!(removed, 15);
    assert_eq!(
        serials(&read_kind(&f.log, UID, LogKind::B, 0)),
        (20..=24).collect::<Vec<_>>()
    );
    assert_eq!(
        f.log.kind_bytes(UID, LogKind::B).unwrap(),
        scanned(LogKind::B)
    );
    assert_eq!(f.log.kind_bytes(UID, LogKind::B).unwrap(), bound);
    assert_eq!(f.log.pruned_through(UID, LogKind::B).unwrap(), 19);
    // Within the bound: nothing more goes.
    assert_eq!(f.log.prune_to_bytes(UID, LogKind::B, bound).unwrap(), 0);

    assert_eq!(read_kind(&f.log, UID, LogKind::T, 0), t_before);
    assert_eq!(replay_all(&f.log, UID, 0), a_before);
    assert_eq!(
        serials(&read_kind(&f.log, OTHER_UID, LogKind::B, 0)),
        vec![3]
    );
}

#[test]
fn a_reset_starts_a_new_generation_and_removes_the_old_one() {
    let f = Fixture::new();
    let logs = f.dir.path().join("logs");
    let mut w = Writer::new();
    f.log
        .append(UID, &w.commit(&inserts("k", 50, 100)))
        .unwrap();
    save_snapshot(&f.log, UID, &w);
    f.log.reset_database(UID).unwrap();
    // A replica about to install a snapshot: its old log and snapshots are gone, from
    // the API and from the disk.
    assert!(!logs.join(shard_dir_name(UID, 0)).exists());
    assert!(logs.join(shard_dir_name(UID, 1)).is_dir());
    assert_eq!(replay_all(&f.log, UID, 0), (Vec::new(), 0, 0));
    assert!(f.log.snapshots(UID).unwrap().is_empty());
    assert_eq!(f.log.stored_bytes(UID).unwrap(), 0);

    let mut fresh = Writer::new();
    let txn = fresh.commit(&inserts("n", 3, 10));
    f.log.append(UID, &txn).unwrap();
    f.log.flush_now(UID).unwrap();
    let f = f.reopen();
    assert_eq!(replay_all(&f.log, UID, 0).2, fresh.seq.last_serial);
}

#[test]
fn opening_keeps_each_databases_newest_generation_and_drops_the_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    {
        let log = open_at(&logs);
        let mut w = Writer::new();
        log.append(UID, &w.commit(&inserts("k", 5, 10))).unwrap();
        log.append(OTHER_UID, &w.commit(&inserts("o", 5, 10)))
            .unwrap();
        log.shutdown().unwrap();
    }
    // What a crash in the middle of a reset leaves: an older generation beside the new.
    std::fs::create_dir_all(logs.join(shard_dir_name(UID, 3))).unwrap();
    let log = open_at(&logs);
    assert!(!logs.join(shard_dir_name(UID, 0)).exists());
    assert!(logs.join(shard_dir_name(UID, 3)).is_dir());
    assert_eq!(
        replay_all(&log, UID, 0).2,
        0,
        "the newest generation is the live one"
    );
    // A database the node no longer defines (deleted before a crash) loses its files.
    let live = [UID].into_iter().collect();
    assert_eq!(log.remove_other_databases(&live).unwrap(), 1);
    assert!(!logs.join(shard_dir_name(OTHER_UID, 0)).exists());
}

#[test]
fn a_node_that_kept_every_log_in_one_instance_has_them_moved_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let node = sled::Config::new()
        .path(dir.path().join("sled"))
        .open()
        .unwrap();
    // The layout before shards: every database's chunks and snapshot parts in the
    // node's own `log` and `snapshots` trees, under the same keys.
    let mut w = Writer::new();
    let txn = w.commit(&inserts("k", 20, 50));
    let old_log = node.open_tree("log").unwrap();
    for kind in [LogKind::A, LogKind::B, LogKind::T] {
        for (first, bytes) in codec::encode(&txn, kind) {
            old_log.insert(log_key(UID, kind, first), bytes).unwrap();
        }
    }
    let scratch = Fixture::new();
    let meta = save_snapshot(&scratch.log, UID, &w);
    let shard_path = scratch.log.shard(UID).unwrap().path.clone();
    let stored = strip_trailer(&shard_path, meta.serial);
    let old_snapshots = node.open_tree("snapshots").unwrap();
    old_snapshots
        .insert(snapshot_key(UID, meta.serial, u32::MAX), stored)
        .unwrap();
    // Parts sat in the tree too, beside their metadata.
    let file = super::snapshot_files::file(&shard_path, meta.serial);
    for (n, part) in framed_parts(&file).into_iter().enumerate() {
        old_snapshots
            .insert(snapshot_key(UID, meta.serial, n as u32), part)
            .unwrap();
    }
    drop((old_log, old_snapshots));

    let log = open_at(&dir.path().join("logs"));
    let moved = log.adopt_shared_trees(&node).unwrap();
    assert!(moved > 0);
    assert_eq!(log.drop_unfinished_snapshots(UID).unwrap(), 0);
    assert_eq!(replay_all(&log, UID, 0).2, w.seq.last_serial);
    assert_eq!(log.snapshots(UID).unwrap(), vec![meta.clone()]);
    assert_eq!(
        load_snapshot(&log, UID, &meta).checksums(),
        w.store.checksums()
    );
    assert!(
        !node.tree_names().iter().any(|t| t.as_ref() == b"log"),
        "the old trees are dropped"
    );
    // A second start finds nothing left to move.
    assert_eq!(log.adopt_shared_trees(&node).unwrap(), 0);
}

#[tokio::test]
async fn a_backlog_over_the_bound_is_flushed_before_the_next_write_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogStore::open(&dir.path().join("logs"), 64 << 10).unwrap();
    let mut w = Writer::new();
    log.append(UID, &w.commit(&inserts("k", 10, 100))).unwrap();
    assert!(log.backlog(UID).unwrap() > 0);
    assert!(
        log.over_backlog(UID).unwrap().is_none(),
        "under the bound nothing waits"
    );
    for i in 0..20 {
        log.append(UID, &w.commit(&inserts(&format!("b{i}-"), 20, 400)))
            .unwrap();
    }
    let backlog = log.backlog(UID).unwrap();
    assert!(backlog > 64 << 10, "{backlog}");
    let ticket = log
        .over_backlog(UID)
        .unwrap()
        .expect("over the bound: a flush to wait for");
    tokio::time::timeout(Duration::from_secs(20), log.wait_durable(&ticket))
        .await
        .expect("the flush finishes in time")
        .unwrap();
    assert_eq!(log.backlog(UID).unwrap(), 0);
    assert!(log.over_backlog(UID).unwrap().is_none());

    // Writes nobody waits for (durability `none`) become durable in the background.
    log.append(UID, &w.commit(&inserts("n", 5, 100))).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while log.backlog(UID).unwrap() > 0 {
        assert!(std::time::Instant::now() < deadline, "no background flush");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One transaction as a sender reads it: txn, first and last serial, chunk bytes.
type ReadTxn = (u64, u64, u64, Vec<Vec<u8>>);

/// What a sender reads: the transactions after every serial, with each set of extra
/// kinds, at a few frame sizes.
fn every_read(log: &LogStore, uid: u64, last: u64) -> Vec<Vec<ReadTxn>> {
    let mut out = Vec::new();
    for after in 0..=last {
        for also in [&[][..], &[LogKind::B][..], &[LogKind::B, LogKind::T][..]] {
            for max in [1, 4 << 10, 1 << 20] {
                let txns = log.read_txns(uid, after, max, also).unwrap();
                out.push(
                    txns.iter()
                        .map(|t| {
                            let chunks = t.chunks.iter().map(|c| c.bytes.to_vec()).collect();
                            (t.txn, t.first_serial, t.last_serial, chunks)
                        })
                        .collect(),
                );
            }
        }
    }
    out
}

#[test]
fn the_in_memory_tail_answers_a_sender_exactly_as_the_segments_do() {
    let f = Fixture::new();
    let mut w = Writer::new();
    // Something reads the log before the writes: the tail keeps them from then on.
    assert!(f.log.read_txns(UID, 0, 1 << 20, &[]).unwrap().is_empty());
    let logs = [
        w.commit(&inserts("o", 20, 30)),
        w.commit(&[update(ORDERS, "o0003", b"changed"), delete(ORDERS, "o0004")]),
        w.commit(&inserts("big", 300, 400)),
        w.refuse(&[insert(ORDERS, "new", b"n"), insert(ORDERS, "o0007", b"dup")]),
        w.commit(&[delete(ORDERS, "o0005")]),
    ];
    for log in &logs {
        f.log.append(UID, log).unwrap();
    }
    let last = w.seq.last_serial;
    let from_tail = every_read(&f.log, UID, last);
    let answered_by_tail = {
        let shard = f.log.shard(UID).unwrap();
        let tail = shard.tail.lock();
        tail.read(0, 1 << 20, &[]).map(|t| t.len())
    };
    assert_eq!(
        answered_by_tail,
        Some(logs.len()),
        "the tail holds every transaction"
    );
    // A reopened store has an empty tail: every answer comes from the segment files.
    let f = f.reopen();
    assert_eq!(every_read(&f.log, UID, last), from_tail);
}

#[test]
fn the_tail_keeps_only_the_newest_transactions_and_the_segments_serve_the_rest() {
    let f = Fixture::new();
    let mut w = Writer::new();
    f.log.read_txns(UID, 0, 1, &[]).unwrap();
    // About 40 KiB of A chunk per transaction: 200 of them are twice the bound.
    for i in 0..200 {
        f.log
            .append(UID, &w.commit(&inserts(&format!("t{i}-"), 10, 4000)))
            .unwrap();
    }
    let shard = f.log.shard(UID).unwrap();
    let oldest = {
        let tail = shard.tail.lock();
        assert!(
            tail.read(0, 1, &[]).is_none(),
            "the first writes left the tail"
        );
        (1..=w.seq.last_serial)
            .find(|s| tail.read(*s - 1, 1, &[]).is_some())
            .expect("the newest writes are in the tail")
    };
    assert!(oldest > 1);
    // Before the tail, the segment files answer, continuing into what the tail holds.
    let txns = f.log.read_txns(UID, 0, 64 << 20, &[]).unwrap();
    assert_eq!(txns.len(), 200);
    assert_eq!(txns.last().unwrap().last_serial, w.seq.last_serial);
    // A restore's batch is written around the tail: the tail is emptied.
    f.log
        .append_txns(UID, &[w.commit(&inserts("r", 2, 10))])
        .unwrap();
    assert!(shard
        .tail
        .lock()
        .read(w.seq.last_serial - 1, 1, &[])
        .is_none());
}

/// Byte counts come from the segment index and the snapshot files: the same after
/// a clean restart and after a crash, with nothing saved in between.
#[test]
fn byte_counts_are_the_same_after_a_clean_restart_and_after_a_crash() {
    let f = Fixture::new();
    let mut w = Writer::new();
    f.log
        .append(UID, &w.commit(&inserts("k", 300, 100)))
        .unwrap();
    f.log
        .append(
            UID,
            &w.commit(&[update(ORDERS, "k0001", b"x"), delete(ORDERS, "k0002")]),
        )
        .unwrap();
    let meta = save_snapshot(&f.log, UID, &w);
    let stored = f.log.stored_bytes(UID).unwrap();
    let b = f.log.kind_bytes(UID, LogKind::B).unwrap();
    assert!(
        stored > b + meta.size_bytes && b > 0,
        "stored {stored}, B {b}"
    );

    let f = f.reopen();
    assert_eq!(f.log.stored_bytes(UID).unwrap(), stored);
    assert_eq!(f.log.kind_bytes(UID, LogKind::B).unwrap(), b);

    // A crash: the next start counts the same from the log.
    let Fixture { dir, log } = f;
    log.append(UID, &w.commit(&inserts("n", 10, 100))).unwrap();
    log.flush_now(UID).unwrap();
    let grown = log.stored_bytes(UID).unwrap();
    assert!(grown > stored);
    let uncounted = Fixture { dir, log }.crash_reopen();
    assert_eq!(uncounted.log.stored_bytes(UID).unwrap(), grown);
    assert_eq!(uncounted.log.kind_bytes(UID, LogKind::B).unwrap(), b);
}

/// Two readers of one snapshot at once (two restores from it): both get its blocks.
#[test]
fn two_readers_of_one_snapshot_both_get_it() {
    let f = Fixture::new();
    let mut w = Writer::new();
    w.commit(&inserts("k", 2000, 200));
    let meta = save_snapshot(&f.log, UID, &w);
    let log = &f.log;
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..2)
            .map(|_| s.spawn(|| load_snapshot(log, UID, &meta).checksums()))
            .collect();
        for reader in readers {
            assert_eq!(reader.join().unwrap(), w.store.checksums());
        }
    });
}

/// A snapshot asked for twice at one serial (no write between), even at once, is
/// stored once and stays readable: the second save does not rewrite the first's files.
#[test]
fn two_saves_at_one_serial_store_one_snapshot() {
    let f = Fixture::new();
    let mut w = Writer::new();
    w.commit(&inserts("k", 2000, 200));
    let first = save_snapshot(&f.log, UID, &w);
    let again = save_snapshot(&f.log, UID, &w);
    assert_eq!(again, first);
    let log = &f.log;
    std::thread::scope(|s| {
        let saves: Vec<_> = (0..2)
            .map(|_| s.spawn(|| save_snapshot(log, UID, &w)))
            .collect();
        for save in saves {
            assert_eq!(save.join().unwrap(), first);
        }
    });
    assert_eq!(f.log.snapshots(UID).unwrap(), vec![first.clone()]);
    assert_eq!(
        load_snapshot(&f.log, UID, &first).checksums(),
        w.store.checksums()
    );
}
