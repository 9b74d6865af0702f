//! Recovery with damaged snapshots, through a whole node: a snapshot that fails its
//! checksum is named and replaced by the older snapshot plus the log, or the database
//! is refused with the reason when the log does not reach back (issue 16 §3).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::log::OpKind;
use crate::node::gate::testing::spec;
use crate::node::{Database, Error, Node, NodeSettings, DEFAULT_TENANT};
use crate::store::encode_record;
use crate::txn::Op;

async fn put(db: &Database, key: &str, value: &str) {
    let mut payload = Vec::new();
    encode_record(&mut payload, key.as_bytes(), &[], value.as_bytes());
    let op = Op {
        kind: OpKind::Upsert,
        file: 0,
        payload,
    };
    db.execute(vec![op], Duration::from_secs(5)).await.unwrap();
}

pub(super) async fn put_many(db: &Database, prefix: &str, count: usize) {
    for i in 0..count {
        put(db, &format!("{prefix}{i:03}"), &format!("{{\"n\":{i}}}")).await;
    }
}

/// Close the node as a stop does.
fn stop(node: Node) {
    node.shutdown().unwrap();
    drop(node);
}

/// Open the node's directory again (sled's locks are free once the last sled thread
/// let go: retried until then, at most 10 s).
fn start(dir: &Path) -> Node {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Node::open(dir, NodeSettings::default()) {
            Ok(node) => return node,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::yield_now();
            }
            Err(e) => panic!("the node did not open again: {e}"),
        }
    }
}

/// Snapshot `serial`'s file (the only database with snapshots).
fn snapshot_file(data: &Path, serial: u64) -> PathBuf {
    let logs = data.join("logs");
    std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .join("snapshots")
                .join(format!("{serial}.snap"))
        })
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no file of snapshot {serial} under {}", logs.display()))
}

/// Flip one byte in the middle of part 0 of snapshot `serial`, past its length (so
/// the file still reads part by part and only the snapshot's checksum can tell).
fn flip_part(data: &Path, serial: u64) {
    let path = snapshot_file(data, serial);
    let mut bytes = std::fs::read(&path).unwrap();
    let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    bytes[12 + len / 2] ^= 0x5a;
    std::fs::write(&path, bytes).unwrap();
}

fn value(db: &Database, key: &str) -> String {
    db.get("orders", key).unwrap().data.get().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_newest_snapshot_is_replaced_by_the_older_one_and_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(dir.path(), NodeSettings::default()).unwrap();
    let db = node.create_database(DEFAULT_TENANT, spec("shop")).unwrap();
    put_many(&db, "a", 40).await;
    let older = db.snapshot().await.unwrap();
    put_many(&db, "b", 40).await;
    let newest = db.snapshot().await.unwrap();
    put(&db, "a000", "{\"changed\":true}").await;
    let last = db.serials().0;
    drop(db);
    stop(node);
    flip_part(dir.path(), newest.serial);

    let node = start(dir.path());
    let db = node.database(DEFAULT_TENANT, "shop").unwrap();
    assert_eq!(db.serials().0, last, "every update is back");
    assert_eq!(value(&db, "a000"), "{\"changed\":true}");
    assert_eq!(value(&db, "b039"), "{\"n\":39}");
    let listed: Vec<u64> = db.snapshots().unwrap().iter().map(|m| m.serial).collect();
    assert_eq!(
        listed,
        vec![older.serial],
        "the damaged one left the listing"
    );
    let kept = snapshot_file(dir.path(), older.serial)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("damaged-snapshots")
        .join(format!("{}.snap", newest.serial));
    assert!(kept.is_file(), "its file is kept at {}", kept.display());
    // The database goes on: a new snapshot, and a restart from it.
    put(&db, "c", "{}").await;
    db.snapshot().await.unwrap();
    drop(db);
    stop(node);
    let node = start(dir.path());
    let db = node.database(DEFAULT_TENANT, "shop").unwrap();
    assert_eq!(value(&db, "c"), "{}");
    assert_eq!(db.serials().0, last + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_the_log_cannot_replace_refuses_the_database_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(dir.path(), NodeSettings::default()).unwrap();
    let db = node.create_database(DEFAULT_TENANT, spec("shop")).unwrap();
    let other = node.create_database(DEFAULT_TENANT, spec("other")).unwrap();
    put(&other, "kept", "{}").await;
    put_many(&db, "a", 20).await;
    db.snapshot().await.unwrap();
    put_many(&db, "b", 20).await;
    let older = db.snapshot().await.unwrap();
    put_many(&db, "c", 20).await;
    // The third snapshot drops the first and the log up to the second.
    let newest = db.snapshot().await.unwrap();
    drop((db, other));
    stop(node);
    flip_part(dir.path(), newest.serial);
    flip_part(dir.path(), older.serial);

    let node = start(dir.path());
    let err = match node.database(DEFAULT_TENANT, "shop") {
        Err(e) => e,
        Ok(_) => panic!("a database whose snapshots are damaged was served"),
    };
    let message = err.to_string();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    for needle in [
        "was not started".to_string(),
        format!("snapshot {} is damaged", newest.serial),
        "fails its checksum".to_string(),
    ] {
        assert!(message.contains(&needle), "{needle:?} in {message}");
    }
    // Nothing was moved or removed: the operator can still look at every file.
    assert!(snapshot_file(dir.path(), newest.serial).is_file());
    // The node serves its other databases, and the refused one cannot be recreated
    // over its files, only deleted.
    let other: Arc<Database> = node.database(DEFAULT_TENANT, "other").unwrap();
    assert_eq!(value(&other, "kept"), "{}");
    assert!(matches!(
        node.create_database(DEFAULT_TENANT, spec("shop")),
        Err(Error::AlreadyExists(_))
    ));
    node.delete_database(DEFAULT_TENANT, "shop").unwrap();
    assert!(matches!(
        node.database(DEFAULT_TENANT, "shop"),
        Err(Error::NotFound(_))
    ));
}
