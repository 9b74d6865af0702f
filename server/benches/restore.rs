//! Point-in-time restore benchmark (issue 5, "Benchmarks"): the time to restore a
//! database with 1,000,000 logged updates to a point in the middle of its history.
//! Run: `cargo bench -p doppel-server --bench restore`.
//!
//! The history: 200,000 records inserted, then 800,000 updates of existing records in
//! scattered order (100-byte data), written through `Database::execute` in transactions
//! of 1000 like a node's writers. The point is serial 500,000. Timed: the whole restore
//! as `POST …/restore` runs it (plan, read the log, compute the changes, apply them,
//! write and flush their log, install), by each method, into a new database
//! (repeatable, measured by criterion) and then once in place.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use doppel_server::log::OpKind;
use doppel_server::node::database::{DatabaseSpec, Durability, Retention};
use doppel_server::node::restore::{self, Method, Point, Request, State};
use doppel_server::node::{Node, NodeSettings};
use doppel_server::store::{encode_record, FileSchema};
use doppel_server::txn::Op;

const RECORDS: u64 = 200_000;
const UPDATES: u64 = 1_000_000;
const BATCH: u64 = 1000;
const POINT: u64 = 500_000;

fn spec() -> DatabaseSpec {
    DatabaseSpec {
        name: "bench".into(),
        files: vec![FileSchema {
            name: "bench".into(),
            alt_keys: vec![],
        }],
        block_size: 4096,
        durability: Durability::None,
        memory_quota_bytes: u64::MAX,
        retention: Retention::default(),
        mutual: false,
    }
}

fn op(key: u64, version: u64) -> Op {
    let mut payload = Vec::new();
    let data = format!("{version:0>100}");
    encode_record(
        &mut payload,
        format!("k{key:012}").as_bytes(),
        &[],
        data.as_bytes(),
    );
    Op {
        kind: OpKind::Upsert,
        file: 0,
        payload,
    }
}

/// Restore `database` to [`POINT`] and wait for it; returns the time taken and what
/// the restore reported.
fn restore_once(
    node: &Node,
    database: &str,
    into: Option<String>,
    method: Method,
) -> (Duration, restore::OperationView) {
    let request = Request {
        point: Point::Serial(POINT),
        into,
        method: Some(method),
    };
    let started = Instant::now();
    let prepared = restore::prepare(node, "default", database, &request).expect("prepare");
    let op = prepared.operation();
    restore::run(node, prepared);
    let elapsed = started.elapsed();
    let view = op.view();
    assert_eq!(view.state, State::Succeeded, "{:?}", view.error);
    (elapsed, view)
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = NodeSettings {
        snapshot_every_entries: u64::MAX,
        ..NodeSettings::default()
    };
    let node = Node::open(dir.path(), settings).expect("node");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // The same history twice: `bench` for the restores into new databases and in place
    // by undo, `bench2` in place by replay.
    for name in ["bench", "bench2"] {
        history(&node, &rt, name);
    }

    let mut group = c.benchmark_group("restore");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(20));
    let mut copies = 0u32;
    for method in [Method::Replay, Method::Undo] {
        group.bench_function(
            format!("1M_updates_to_serial_500k_into_new_{method:?}"),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        copies += 1;
                        let name = format!("copy{copies}");
                        total += restore_once(&node, "bench", Some(name.clone()), method).0;
                        node.delete_database("default", &name).expect("delete");
                    }
                    total
                })
            },
        );
    }
    group.finish();

    // In place, once per method, each on its own copy of the history.
    for (database, method) in [("bench", Method::Undo), ("bench2", Method::Replay)] {
        let (took, view) = restore_once(&node, database, None, method);
        println!(
            "in place, {method:?}, to serial {POINT} of {}: {:.2} s ({} updates read; records {:?})",
            view.plan.last_serial,
            took.as_secs_f64(),
            view.plan.updates,
            view.records
        );
    }
}

fn history(node: &Node, rt: &tokio::runtime::Runtime, name: &str) {
    let db = node
        .create_database(
            "default",
            DatabaseSpec {
                name: name.into(),
                ..spec()
            },
        )
        .expect("database");
    let written = Instant::now();
    for batch in 0..UPDATES / BATCH {
        let ops: Vec<Op> = (0..BATCH)
            .map(|i| {
                let n = batch * BATCH + i;
                let key = if n < RECORDS {
                    n
                } else {
                    n.wrapping_mul(2_654_435_761) % RECORDS
                };
                op(key, n)
            })
            .collect();
        rt.block_on(db.execute(ops, Duration::from_secs(10)))
            .expect("write");
    }
    // Chains that grow past their limit add logged reorganisations.
    let logged = db.serials().0;
    assert!(logged >= UPDATES);
    println!(
        "history: {UPDATES} client updates of {RECORDS} records ({logged} logged updates \
         with reorganisations) written in {:.1} s",
        written.elapsed().as_secs_f64()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
