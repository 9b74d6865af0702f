//! Unit tests of point-in-time restore: both methods rebuild exactly the recorded
//! contents, the reach of each after snapshots and B pruning, timestamps to serials.

use std::time::Duration;

use super::*;
use crate::log::LogStore;
use crate::node::database::{DatabaseDef, DatabaseSpec, Durability, Retention};
use crate::store::{encode_record, FileSchema};

struct Fixture {
    _dir: tempfile::TempDir,
    db: Arc<Database>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let log = LogStore::open(dir.path(), 32 << 20).unwrap();
    let def = DatabaseDef {
        uid: 7,
        tenant: "default".into(),
        spec: DatabaseSpec {
            name: "shop".into(),
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
            block_size: 512,
            durability: Durability::None,
            memory_quota_bytes: 1 << 30,
            retention: Retention::default(),
            mutual: false,
        },
        created_ms: 0,
    };
    Fixture {
        _dir: dir,
        db: Arc::new(Database::create(def, log)),
    }
}

/// A record; those of `orders` (file 0) have the alternate key `customer` = "c".
fn record(file: FileId, key: &str, data: &str) -> Vec<u8> {
    let alts: &[(u8, &[u8])] = if file == 0 { &[(0, b"c")] } else { &[] };
    let mut out = Vec::new();
    encode_record(&mut out, key.as_bytes(), alts, data.as_bytes());
    out
}

fn upsert(file: FileId, key: &str, data: &str) -> Op {
    put(OpKind::Upsert, file, record(file, key, data))
}

fn delete(file: FileId, key: &str) -> Op {
    put(OpKind::Delete, file, key.as_bytes().to_vec())
}

async fn write(db: &Database, ops: Vec<Op>) -> u64 {
    db.execute(ops, Duration::from_secs(1))
        .await
        .unwrap()
        .last_serial
}

/// Every record of every main file, as bytes.
fn contents(store: &Store) -> Vec<(FileId, Vec<u8>)> {
    let mut out = Vec::new();
    for index in 0..store.schema().files.len() {
        let id = store.schema().main_id(index);
        store.files()[id as usize].scan(&[], None, |r| {
            out.push((id, encode_owned(&r)));
            true
        });
    }
    out
}

/// A history: 300 inserts in both files, then updates, deletes and re-inserts, with
/// enough records to split blocks and reorganise chains.
async fn history(db: &Database, orders: FileId, lines: FileId) -> u64 {
    for batch in 0..3 {
        let ops = (0..100)
            .map(|i| upsert(orders, &format!("o{:03}", batch * 100 + i), "first version"))
            .chain((0..20).map(|i| upsert(lines, &format!("l{batch}-{i}"), "line")))
            .collect();
        write(db, ops).await;
    }
    write(
        db,
        (0..50)
            .map(|i| delete(orders, &format!("o{:03}", i * 3)))
            .collect(),
    )
    .await
}

async fn later(db: &Database, orders: FileId, lines: FileId) -> u64 {
    write(
        db,
        (0..80)
            .map(|i| upsert(orders, &format!("o{:03}", i * 2), "second version, longer"))
            .collect(),
    )
    .await;
    write(
        db,
        (0..40)
            .map(|i| delete(orders, &format!("o{:03}", 200 + i)))
            .collect(),
    )
    .await;
    write(db, vec![upsert(orders, "new", "x"), delete(lines, "l0-3")]).await;
    write(
        db,
        vec![upsert(lines, "l0-3", "back"), upsert(orders, "zz", "y")],
    )
    .await
}

fn ids(db: &Database) -> (FileId, FileId) {
    let schema = db.schema();
    (schema.main_id(0), schema.main_id(1))
}

fn request(point: Point, method: Option<Method>) -> Request {
    Request {
        point,
        into: None,
        method,
    }
}

/// Plan and compute the restore, apply it to a copy of the current store: the result.
fn restored(db: &Database, request: &Request) -> (Plan, Changes, Store) {
    let (current, seq) = db.frozen_state();
    let plan = plan(db, &current, seq.last_serial, request).unwrap();
    let (ops, changes) = operations(db, &current, &plan, &Progress::default()).unwrap();
    let mut store = current.freeze();
    let mut seq = seq.clone();
    apply_ops(&mut store, &mut seq, ops, &Progress::default()).unwrap();
    (plan, changes, store)
}

#[tokio::test]
async fn both_methods_restore_exactly_the_contents_at_the_point() {
    let f = fixture();
    let (orders, lines) = ids(&f.db);
    let point = history(&f.db, orders, lines).await;
    let (at_point, _) = f.db.frozen_state();
    let last = later(&f.db, orders, lines).await;
    let (now, _) = f.db.frozen_state();

    for method in [Method::Replay, Method::Undo] {
        let (plan, changes, store) = restored(&f.db, &request(Point::Serial(point), Some(method)));
        assert_eq!(plan.method, method);
        assert_eq!(contents(&store), contents(&at_point), "{method:?}");
        assert_eq!(
            store.lookup_alt(0, 0, b"c", 1000).len(),
            at_point.lookup_alt(0, 0, b"c", 1000).len(),
            "alternate keys follow ({method:?})"
        );
        match method {
            Method::Replay => assert_eq!(plan.updates, point, "replayed from the empty database"),
            Method::Undo => assert_eq!(plan.updates, last - point),
        }
        // Later: 80 upserts, 25 of them recreating deleted records; 40 deletes; 2 new
        // keys; a line deleted and written again with other data. Undone: 40 records
        // come back, 55 + 1 return to their old data, 25 + 2 go.
        assert_eq!(
            changes,
            Changes {
                inserted: 40,
                updated: 56,
                deleted: 27,
            },
            "{method:?}"
        );
    }
    // Replay rebuilds the very blocks of the point.
    let (current, seq) = f.db.frozen_state();
    let plan = plan(
        &f.db,
        &current,
        seq.last_serial,
        &request(Point::Serial(point), Some(Method::Replay)),
    )
    .unwrap();
    let rebuilt = rebuild(&f.db, plan.from_snapshot, 0, point, &Progress::default()).unwrap();
    assert_eq!(rebuilt.checksums(), at_point.checksums());
    // Restoring to the last serial changes nothing, and to 0 empties the database.
    let (_, changes, store) = restored(&f.db, &request(Point::Serial(last), None));
    assert_eq!(changes, Changes::default());
    assert_eq!(contents(&store), contents(&now));
    let (_, _, store) = restored(&f.db, &request(Point::Serial(0), None));
    assert!(contents(&store).is_empty());
}

#[tokio::test]
async fn the_cheaper_method_is_chosen() {
    let f = fixture();
    let (orders, lines) = ids(&f.db);
    let early = history(&f.db, orders, lines).await;
    let last = later(&f.db, orders, lines).await;
    // Three updates back: undo reads 6 entries, replay would read the whole history.
    let (plan, _, _) = restored(&f.db, &request(Point::Serial(last - 3), None));
    assert_eq!(plan.method, Method::Undo);
    // Right after the start, with a snapshot near it: replay.
    let (plan, _, _) = restored(&f.db, &request(Point::Serial(3), None));
    assert_eq!(plan.method, Method::Replay);
    assert!(early > 3);
}

#[tokio::test]
async fn points_outside_retention_are_refused_naming_the_oldest_reachable() {
    let f = fixture();
    let (orders, lines) = ids(&f.db);
    let early = history(&f.db, orders, lines).await;
    let first_snapshot = f.db.snapshot().await.unwrap().serial;
    later(&f.db, orders, lines).await;
    let second_snapshot = f.db.snapshot().await.unwrap().serial;
    write(&f.db, vec![upsert(orders, "zz", "changed")]).await;
    assert!(second_snapshot > first_snapshot && first_snapshot == early);

    // Two snapshots: the A log starts after the older one.
    let (current, seq) = f.db.frozen_state();
    let last = seq.last_serial;
    let refused = plan(
        &f.db,
        &current,
        last,
        &request(Point::Serial(early - 1), None),
    );
    match refused {
        Err(Error::OutsideRetention { oldest_serial, .. }) => assert_eq!(oldest_serial, early),
        other => panic!("expected outside-retention, got {other:?}"),
    }
    let at = plan(
        &f.db,
        &current,
        last,
        &request(Point::Serial(early), Some(Method::Replay)),
    )
    .unwrap();
    assert_eq!(at.from_snapshot, Some(first_snapshot));
    assert_eq!(at.updates, 0);

    // B entries pruned by retention: undo no longer reaches, replay still does.
    f.db.log_store()
        .prune_older_than(f.db.def.uid, LogKind::B, u64::MAX)
        .unwrap();
    let point = Point::Serial(last - 1);
    match plan(&f.db, &current, last, &request(point, Some(Method::Undo))) {
        Err(Error::OutsideRetention { oldest_serial, .. }) => assert_eq!(oldest_serial, last),
        other => panic!("expected outside-retention, got {other:?}"),
    }
    let chosen = plan(&f.db, &current, last, &request(point, None)).unwrap();
    assert_eq!(chosen.method, Method::Replay);
    assert_eq!(chosen.from_snapshot, Some(second_snapshot));

    // Beyond the last serial.
    assert!(matches!(
        plan(
            &f.db,
            &current,
            last,
            &request(Point::Serial(last + 1), None)
        ),
        Err(Error::PointInFuture(_))
    ));
}

#[tokio::test]
async fn timestamps_name_the_last_update_stamped_at_or_before_them() {
    let f = fixture();
    let (orders, _) = ids(&f.db);
    let mut serials = Vec::new();
    for i in 0..5 {
        serials.push(write(&f.db, vec![upsert(orders, &format!("k{i}"), "v")]).await);
    }
    let log = f.db.log_store();
    let stamps: Vec<u64> = serials
        .iter()
        .map(|s| {
            log.timestamp_of(f.db.def.uid, LogKind::A, *s)
                .unwrap()
                .unwrap()
        })
        .collect();
    let reach = Reach::of(&f.db, serials[4]).unwrap();
    let at = |ts| resolve(&f.db, &reach, Point::TimestampUs(ts));
    assert_eq!(at(stamps[2]).unwrap(), serials[2]);
    assert_eq!(at(stamps[2] - 1).unwrap(), serials[1]);
    assert_eq!(
        at(stamps[0] - 1).unwrap(),
        0,
        "before the first update: empty"
    );
    assert_eq!(at(stamps[4] + 1).unwrap(), serials[4]);
    assert!(matches!(at(u64::MAX), Err(Error::PointInFuture(_))));
}

#[tokio::test]
async fn writes_are_refused_while_a_restore_runs_and_readers_go_on() {
    let f = fixture();
    let (orders, _) = ids(&f.db);
    write(&f.db, vec![upsert(orders, "a", "1")]).await;
    let open = f.db.begin().unwrap();
    f.db.add(open, vec![upsert(orders, "b", "2")], Duration::from_secs(1))
        .await
        .unwrap();
    let (store, seq) = f.db.begin_restore(42).unwrap();
    assert!(matches!(
        f.db.begin_restore(43),
        Err(Error::RestoreInProgress(_))
    ));
    let refused =
        f.db.execute(vec![upsert(orders, "c", "3")], Duration::from_secs(1))
            .await;
    assert!(
        matches!(refused, Err(Error::RestoreInProgress(_))),
        "{refused:?}"
    );
    // A transaction opened before the restore cannot commit during it either.
    assert!(matches!(
        f.db.commit(open).await,
        Err(Error::RestoreInProgress(_))
    ));
    assert!(f.db.get("orders", "a").is_ok(), "readers go on");
    assert_eq!(f.db.restoring(), Some(42));
    // Installing the restored store gives writes back, continuing the serials.
    f.db.finish_restore(42, seq.last_serial, store, seq.clone())
        .unwrap();
    assert_eq!(f.db.restoring(), None);
    assert_eq!(
        write(&f.db, vec![upsert(orders, "c", "3")]).await,
        seq.last_serial + 1
    );
}
