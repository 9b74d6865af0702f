//! Store benchmarks (issue "Foundation"): inserts, point gets, and memory of 100-byte
//! records in the RAM block store, in-process, single writer.
//! Run: `cargo bench -p doppel-server --bench store`.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use doppel_server::store::{encode_record, FileSchema, Mutation, PutMode, Schema, Store};

const RECORDS: usize = 100_000;
const DATA: [u8; 100] = [42u8; 100];

fn schema() -> Schema {
    Schema {
        files: vec![FileSchema {
            name: "bench".into(),
            alt_keys: vec![],
        }],
    }
}

fn key(i: usize) -> [u8; 8] {
    (i as u64).to_be_bytes()
}

fn fill(store: &mut Store, keys: impl Iterator<Item = usize>) {
    let mut record = Vec::with_capacity(128);
    for i in keys {
        encode_record(&mut record, &key(i), &[], &DATA);
        let applied = store
            .apply(Mutation::Put {
                file: 0,
                mode: PutMode::Insert,
                record: &record,
            })
            .expect("insert");
        if let Some((file, block)) = applied.reorg {
            store.apply(Mutation::Reorg { file, block }).expect("reorg");
        }
    }
}

fn scrambled(i: usize) -> usize {
    (i.wrapping_mul(2_654_435_761)) % (1 << 40)
}

fn inserts(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.sample_size(20);
    group.bench_function("insert_sequential_100B", |b| {
        b.iter_batched(
            || Store::new(schema(), 4096, u64::MAX),
            |mut store| fill(&mut store, 0..RECORDS),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("insert_random_100B", |b| {
        b.iter_batched(
            || Store::new(schema(), 4096, u64::MAX),
            |mut store| fill(&mut store, (0..RECORDS).map(scrambled)),
            BatchSize::LargeInput,
        )
    });
    let mut store = Store::new(schema(), 4096, u64::MAX);
    fill(&mut store, (0..RECORDS).map(scrambled));
    group.bench_function("get_random_100B", |b| {
        b.iter(|| {
            for i in 0..RECORDS {
                let k = key(scrambled((i * 7919) % RECORDS));
                black_box(store.get(0, &k).map(|(_, r)| r.data.len()));
            }
        })
    });
    group.bench_function("get_random_100B_2_readers", |b| {
        b.iter(|| {
            std::thread::scope(|scope| {
                for reader in 0..2 {
                    let store = &store;
                    scope.spawn(move || {
                        for i in (reader..RECORDS).step_by(2) {
                            let k = key(scrambled((i * 7919) % RECORDS));
                            black_box(store.get(0, &k).map(|(_, r)| r.data.len()));
                        }
                    });
                }
            })
        })
    });
    group.bench_function("get_sequential_100B", |b| {
        let mut sorted: Vec<usize> = (0..RECORDS).map(scrambled).collect();
        sorted.sort_unstable();
        b.iter(|| {
            for i in &sorted {
                black_box(store.get(0, &key(*i)).map(|(_, r)| r.data.len()));
            }
        })
    });
    group.finish();
}

/// Memory for 1,000,000 records of 100 bytes against the raw key + data bytes.
fn memory(c: &mut Criterion) {
    let raw = 1_000_000 * (8 + 100) as u64;
    for (name, order) in [("sequential", false), ("random", true)] {
        let mut store = Store::new(schema(), 4096, u64::MAX);
        if order {
            fill(&mut store, (0..1_000_000).map(scrambled));
        } else {
            fill(&mut store, 0..1_000_000);
        }
        println!(
            "memory/{name}: {} bytes of blocks for {raw} raw bytes = {:.3}x",
            store.memory_bytes(),
            store.memory_bytes() as f64 / raw as f64
        );
    }
    let _ = c;
}

criterion_group!(benches, inserts, memory);
criterion_main!(benches);
