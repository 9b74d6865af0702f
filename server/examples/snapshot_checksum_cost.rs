//! What the snapshot checksums cost (issue 16 §3): a node with a database of about
//! 100 MB saves a snapshot and recovers from it, timed, beside the time xxh3 takes over
//! the same bytes in parts of the size snapshots use (the only work the checksums add:
//! one xxh3 per part when written and when read, and one over the metadata).
//!
//! `cargo run -p doppel-server --example snapshot_checksum_cost [--release] [MB]`

use std::time::{Duration, Instant};

use doppel_server::log::OpKind;
use doppel_server::node::database::{DatabaseSpec, Durability, Retention};
use doppel_server::node::{Node, NodeSettings, DEFAULT_TENANT};
use doppel_server::store::{encode_record, FileSchema};
use doppel_server::txn::Op;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mb: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(dir.path(), NodeSettings::default()).unwrap();
    let spec = DatabaseSpec {
        name: "big".into(),
        files: vec![FileSchema {
            name: "rows".into(),
            alt_keys: vec![],
        }],
        block_size: 8192,
        durability: Durability::None,
        memory_quota_bytes: 4 << 30,
        retention: Retention::default(),
        mutual: false,
    };
    let db = node.create_database(DEFAULT_TENANT, spec).unwrap();
    let value = vec![b'x'; 1000];
    let records = mb * 1000;
    for batch in 0..records / 500 {
        let ops: Vec<Op> = (0..500)
            .map(|i| {
                let mut payload = Vec::new();
                let key = format!("k{:09}", batch * 500 + i);
                let mut data = b"\"".to_vec();
                data.extend_from_slice(&value);
                data.push(b'"');
                encode_record(&mut payload, key.as_bytes(), &[], &data);
                Op {
                    kind: OpKind::Upsert,
                    file: 0,
                    payload,
                }
            })
            .collect();
        db.execute(ops, Duration::from_secs(10)).await.unwrap();
    }
    let started = Instant::now();
    let meta = db.snapshot().await.unwrap();
    let save = started.elapsed();
    drop(db);
    node.shutdown().unwrap();
    drop(node);
    let started = Instant::now();
    let node = loop {
        if let Ok(node) = Node::open(dir.path(), NodeSettings::default()) {
            break node;
        }
    };
    let read = started.elapsed();
    drop(node);
    // The checksums' own work over the same number of bytes, in 256 KiB parts.
    let bytes = vec![0xa5u8; meta.size_bytes as usize];
    let started = Instant::now();
    let mut sums = 0u64;
    for part in bytes.chunks(256 * 1024) {
        sums ^= xxhash_rust::xxh3::xxh3_64(part);
    }
    let hash = started.elapsed();
    println!(
        "snapshot of {:.1} MB in {} parts: save {:.3} s, recovery (open + read) {:.3} s; \
         xxh3 over the same bytes {:.4} s ({:.1} GB/s; {:.2}% of the save, {:.2}% of the read) [{sums:x}]",
        meta.size_bytes as f64 / 1e6,
        meta.parts,
        save.as_secs_f64(),
        read.as_secs_f64(),
        hash.as_secs_f64(),
        meta.size_bytes as f64 / hash.as_secs_f64() / 1e9,
        100.0 * hash.as_secs_f64() / save.as_secs_f64(),
        100.0 * hash.as_secs_f64() / read.as_secs_f64(),
    );
}
