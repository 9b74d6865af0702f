//! Restart replay benchmark (issue "Foundation"): how fast a node rebuilds a database
//! from its sled log, in log entries per second.
//! Run: `cargo bench -p doppel-server --bench replay`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use doppel_server::log::LogStore;
use doppel_server::node::database::{Database, DatabaseDef, DatabaseSpec, Durability, Retention};
use doppel_server::store::{encode_record, FileSchema, Schema, Store};
use doppel_server::txn::{self, Op, Sequencer};

const ENTRIES: usize = 1_000_000;
const BATCH: usize = 1000;

fn spec() -> DatabaseSpec {
    DatabaseSpec {
        name: "bench".into(),
        files: vec![FileSchema {
            name: "bench".into(),
            alt_keys: vec![],
        }],
        block_size: 4096,
        durability: Durability::Group,
        memory_quota_bytes: u64::MAX,
        retention: Retention::default(),
        mutual: false,
    }
}

fn replay(c: &mut Criterion) {
    replay_log(c, "sequential_keys", |i| i);
    replay_log(c, "random_keys", |i| {
        i.wrapping_mul(2_654_435_761) % (1 << 40)
    });
}

/// Write a log of 1,000,000 upserts whose keys come from `key_of`, then time recovery.
fn replay_log(c: &mut Criterion, name: &str, key_of: fn(usize) -> usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = LogStore::open(dir.path(), u64::MAX).expect("log");
    let def = DatabaseDef {
        uid: 1,
        tenant: "default".into(),
        spec: spec(),
        created_ms: 0,
    };
    // Write the log the way a node does: one chunk set per transaction.
    let schema = Schema {
        files: def.spec.files.clone(),
    };
    let mut store = Store::new(schema, 4096, u64::MAX);
    let mut seq = Sequencer::new(0, 1);
    let data = [b'x'; 100];
    for batch in 0..ENTRIES / BATCH {
        let ops: Vec<Op> = (0..BATCH)
            .map(|i| {
                let mut payload = Vec::new();
                let key = format!("k{:012}", key_of(batch * BATCH + i));
                encode_record(&mut payload, key.as_bytes(), &[], &data);
                Op {
                    kind: doppel_server::log::OpKind::Upsert,
                    file: 0,
                    payload,
                }
            })
            .collect();
        let txn = seq.next_txn();
        let entry = txn::apply(&mut store, &mut seq, txn, ops).expect("apply");
        log.append(def.uid, &entry).expect("append");
    }
    log.flush_now(def.uid).expect("flush");
    let expected = store.checksums();
    // Recovery starts from an empty process in real life: free the writer's blocks.
    drop(store);

    let started = Instant::now();
    let mut read = 0usize;
    log.replay(def.uid, 0, |chunk| {
        read += chunk.entries.len();
        Ok(())
    })
    .expect("read");
    println!(
        "log read and decode only ({name}): {:.0} entries/s",
        read as f64 / started.elapsed().as_secs_f64()
    );
    let mut group = c.benchmark_group("replay");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(60));
    group.bench_function(format!("recover_1M_entries_{name}"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let (db, replayed) = Database::recover(def.clone(), log.clone()).expect("recover");
                total += started.elapsed();
                assert!(replayed >= ENTRIES as u64);
                assert_eq!(db.checksums(), expected, "replay rebuilds the same blocks");
            }
            println!(
                "replay ({name}): {:.0} entries/s",
                ENTRIES as f64 * iters as f64 / total.as_secs_f64()
            );
            total
        })
    });
    group.finish();
}

criterion_group!(benches, replay);
criterion_main!(benches);
