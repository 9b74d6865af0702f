//! Seed inputs for the fuzz targets, made by the node's own encoders from a small store
//! with real transactions: frames of every message type, A/B/T chunks, a spooled
//! transaction, snapshots in both layouts, one body per REST route, tokens, a plugin.

use std::collections::BTreeMap;

use crate::log::durable::{RawChunk, SnapshotMeta};
use crate::log::{codec, LogKind, TxnLog};
use crate::node::records::{self, OpInput};
use crate::node::versions::Stamp;
use crate::store::Store;
use crate::transport::wire::{Dependency, FrameWriter, Hello, Msg, PROTOCOL_VERSION};
use crate::txn::{self, Sequencer};

/// A store after three transactions (inserts with alternate keys, an update, a delete)
/// and their logs.
fn history() -> (Store, Vec<TxnLog>) {
    let schema = super::schema();
    let mut store = Store::new(schema.clone(), 512, 1 << 20);
    let mut seq = Sequencer::new(0, 1);
    let bodies = [
        r#"[{"op":"insert","file":"items","key":"apple","alt":{"sku":"A-1"},"data":{"n":1}},
            {"op":"insert","file":"items","key":"pear","alt":{"sku":"P-2","colour":"green"},"data":{"n":2,"tags":["x","y"]}},
            {"op":"insert","file":"orders","key":"o-1","data":{"item":"apple","qty":3}}]"#,
        r#"[{"op":"update","file":"items","key":"apple","alt":{"sku":"A-9"},"data":{"n":10}},
            {"op":"upsert","file":"orders","key":"o-2","data":null}]"#,
        r#"[{"op":"delete","file":"items","key":"pear"}]"#,
    ];
    let mut logs = Vec::new();
    for body in bodies {
        let inputs: Vec<OpInput> = serde_json::from_str(body).expect("seed operations");
        let ops: Vec<_> = inputs
            .iter()
            .map(|op| records::resolve(&schema, &op.as_ref()).expect("seed operation"))
            .collect();
        let txn = seq.next_txn();
        logs.push(txn::apply(&mut store, &mut seq, txn, ops).expect("seed transaction"));
    }
    // Enough records to split blocks and chain overflow blocks.
    let mut ops = Vec::new();
    for i in 0..40 {
        let input: OpInput = serde_json::from_value(serde_json::json!({
            "op": "insert", "file": "orders", "key": format!("bulk-{i:03}"),
            "data": {"i": i, "pad": "x".repeat(i % 7 * 10)}
        }))
        .expect("seed operation");
        ops.push(records::resolve(&schema, &input.as_ref()).expect("seed operation"));
    }
    let txn = seq.next_txn();
    logs.push(txn::apply(&mut store, &mut seq, txn, ops).expect("seed transaction"));
    // A fixed clock, so the same seeds come out of every run (file names are their hash).
    for update in logs.iter_mut().flat_map(|l| l.updates.iter_mut()) {
        update.header.timestamp_us = 1_780_000_000_000_000 + update.header.serial;
    }
    (store, logs)
}

fn chunks(logs: &[TxnLog], kind: LogKind, encode: codec::Encoder) -> Vec<Vec<u8>> {
    logs.iter()
        .flat_map(|l| encode(l, kind))
        .map(|(_, bytes)| bytes)
        .collect()
}

fn frame(msgs: &[Msg<'_>]) -> Vec<u8> {
    let mut w = FrameWriter::new();
    for m in msgs {
        w.push(m);
    }
    w.finish()
}

/// `flavour | len u32 | layout | packed`, the `snapshot` target's input.
fn snapshot_input(flavour: u8, layout: &[u8], packed: &[u8]) -> Vec<u8> {
    let mut out = vec![flavour];
    out.extend_from_slice(&(layout.len() as u32).to_le_bytes());
    out.extend_from_slice(layout);
    out.extend_from_slice(packed);
    out
}

pub(super) fn all() -> BTreeMap<&'static str, Vec<Vec<u8>>> {
    let (store, logs) = history();
    let a = chunks(&logs, LogKind::A, codec::encode);
    let b = chunks(&logs, LogKind::B, codec::encode);
    // As builds before the T log was folded into the A log wrote them.
    let a_v1 = chunks(&logs, LogKind::A, codec::encode_v1);
    let t_v1 = chunks(&logs, LogKind::T, codec::encode_v1);
    let mut out: BTreeMap<&'static str, Vec<Vec<u8>>> = BTreeMap::new();

    // log chunks
    out.insert(
        "log_chunk",
        a.iter()
            .take(4)
            .chain(b.iter().take(2))
            .chain(a_v1.iter().take(2))
            .chain(t_v1.iter().take(2))
            .cloned()
            .collect(),
    );

    // a log segment: its opening checkpoint, then each transaction's record (the first
    // as a build before the folded T log wrote it, the last with a logical replica's
    // position)
    let mut segment = crate::log::segments::checkpoint_record(&BTreeMap::from([(7, 3)]), [0, 1, 2]);
    for (i, log) in logs.iter().enumerate() {
        let (encode, kinds): (codec::Encoder, &[LogKind]) = match i {
            0 => (codec::encode_v1, &[LogKind::A, LogKind::B, LogKind::T]),
            _ => (codec::encode, &[LogKind::A, LogKind::B]),
        };
        let encoded: Vec<Vec<u8>> = kinds
            .iter()
            .flat_map(|kind| encode(log, *kind))
            .map(|(_, bytes)| bytes)
            .collect();
        let chunks: Vec<_> = encoded
            .iter()
            .map(|bytes| (codec::peek(bytes).expect("a head"), bytes.as_slice()))
            .collect();
        let position = (i + 1 == logs.len()).then_some((7, 9));
        segment.extend(crate::log::segments::txn_record(&chunks, position).0);
    }
    let torn = segment[..segment.len() - 3].to_vec();
    out.insert("segment", vec![segment, torn]);

    // snapshots
    let (layout, blocks) = store.snapshot_parts();
    let packed: Vec<u8> = blocks.iter().flat_map(|b| b.as_bytes().to_vec()).collect();
    let layout_bytes = postcard::to_allocvec(&layout).expect("layout");
    let meta = SnapshotMeta {
        serial: 50,
        next_txn: 5,
        created_ms: 1_700_000_000_000,
        parts: 1,
        size_bytes: packed.len() as u64,
        layout: layout.clone(),
    };
    let meta_bytes = postcard::to_allocvec(&meta).expect("meta");
    let empty = Store::new(super::schema(), 512, 1 << 20).snapshot_parts().0;
    out.insert(
        "snapshot",
        vec![
            snapshot_input(0, &meta_bytes, &packed),
            snapshot_input(1, &layout_bytes, &packed),
            snapshot_input(1, &postcard::to_allocvec(&empty).expect("layout"), &[]),
        ],
    );

    // spool
    let raw: Vec<RawChunk> = a
        .iter()
        .take(2)
        .map(|bytes| RawChunk {
            head: codec::peek(bytes).expect("seed chunk"),
            bytes: bytes.as_slice().into(),
        })
        .collect();
    let deps = vec![Dependency {
        database: "orders".into(),
        serial: 41,
        before_us: 1_700_000_000_000_000,
    }];
    out.insert(
        "spool",
        vec![
            crate::transport::spool::encode(&raw[..1], &[]),
            crate::transport::spool::encode(&raw, &deps),
        ],
    );

    // wire frames: every message type, chunks and layouts as the node makes them
    let mut batch = doppel_sdk::abi::BatchBuilder::new();
    for (op, key, data) in [
        (doppel_sdk::abi::Op::Insert, "apple", r#"{"n":1}"#),
        (doppel_sdk::abi::Op::Delete, "pear", "null"),
    ] {
        batch.push(&doppel_sdk::abi::OwnedRecord::new(op, "items", key, data));
    }
    let ops = crate::transport::logical::ops_bytes(&batch).expect("seed ops");
    let handshake = frame(&[Msg::Hello(Hello {
        version: PROTOCOL_VERSION,
        link: "l-1".into(),
        credential: "c".into(),
        source_node: "n1".into(),
        tenant: "default".into(),
        database: "shop".into(),
        stream: 42,
        history: vec![(1, 1), (2, 120)],
    })]);
    let replies = frame(&[
        Msg::Welcome {
            last_serial: 7,
            stream: 42,
            suspended: false,
            history: vec![(1, 1)],
        },
        Msg::Follow { serial: 7 },
        Msg::Refused {
            code: "bad-credential".into(),
            reason: "no".into(),
        },
        Msg::BackupCompleted { serial: 9 },
        Msg::Retransmit { from: 10 },
        Msg::NeedBootstrap {
            reason: "diverged".into(),
        },
    ]);
    let stream = frame(&[
        Msg::Depends {
            txn: 1,
            deps: deps.clone(),
        },
        Msg::Versions {
            txn: 1,
            stamps: vec![(1, Stamp::default())],
        },
        Msg::TxnStart {
            txn: 1,
            first_serial: 1,
        },
        Msg::Updates {
            txn: 1,
            chunk: &a[0],
        },
        Msg::Updates {
            txn: 1,
            chunk: &t_v1[0],
        },
        Msg::TxnCompleted {
            txn: 1,
            last_serial: 3,
        },
        Msg::Cancel {
            txn: 2,
            last_serial: 5,
            b_chunks: vec![&b[0]],
        },
        Msg::Watermark {
            serial: 5,
            timestamp_us: 99,
        },
        Msg::Suspend,
        Msg::Release,
        Msg::Heartbeat,
    ]);
    let logical = frame(&[
        Msg::Logical {
            txn: 3,
            first_serial: 6,
            last_serial: 7,
            ops: &ops,
        },
        Msg::LogicalSnapshot {
            serial: 7,
            last: true,
            ops: &ops,
        },
    ]);
    let bootstrap = frame(&[
        Msg::SnapshotBegin {
            serial: 50,
            next_txn: 5,
            layout: &layout_bytes,
            size_bytes: packed.len() as u64,
        },
        Msg::SnapshotPart {
            bytes: &packed[..512],
        },
        Msg::SnapshotEnd { checksum: 7 },
    ]);
    out.insert("wire", vec![handshake, replies, stream, logical, bootstrap]);

    // REST bodies: the first byte is the route (see `rest_body`)
    let bodies: &[(u8, &str)] = &[
        (
            0,
            r#"{"ops":[{"op":"insert","file":"items","key":"k","alt":{"sku":"s"},"data":{"a":[1,2]}},{"op":"delete","file":"orders","key":"o"}]}"#,
        ),
        (1, r#"{"alt":{"colour":"red"},"data":{"x":"y"}}"#),
        (2, r#"{"key":"k2","data":[1,{"b":null}]}"#),
        (
            3,
            r#"{"name":"t","nodes":{"a":{"url":"http://127.0.0.1:1"},"b":{"url":"http://127.0.0.1:2","replication":"127.0.0.1:3"}},"links":[{"from":{"node":"a","database":"d"},"to":{"node":"b","database":"d"},"mode":"sync"},{"from":{"node":"b","database":"d"},"to":{"node":"a","database":"e"},"apply":"logical","stages":[{"plugin":"f@1","config":{}}]}]}"#,
        ),
        (
            4,
            r#"{"database":"d","target":{"node":"http://127.0.0.1:1","database":"d","token":"t"},"mode":"async","apply":"mirror","b_log":false,"conflicts":{"strategy":"priority","priority":["n1"]}}"#,
        ),
        (
            5,
            r#"{"database":"d","spec":{"name":"d","files":[{"name":"f","alt_keys":["a"]}]},"credential":"c","source_node":"n","apply":"mirror"}"#,
        ),
        (
            6,
            r#"{"name":"shop","files":[{"name":"items","alt_keys":["sku"]},{"name":"orders"}],"block_size":1024,"durability":"group","memory_quota_bytes":1048576,"mutual":true}"#,
        ),
        (
            7,
            r#"{"requests_per_sec":10,"burst":2,"operations_per_sec":5,"concurrent_writes":1,"plugin_cpu_ms_per_sec":3,"memory_bytes":1000}"#,
        ),
        (8, r#"{"name":"acme"}"#),
        (
            9,
            r#"[{"plugin":"prefix-filter@1.0.0","config":{"prefix":"a"}}]"#,
        ),
        (10, r#"{"k":1,"timeout_ms":500}"#),
        (11, r#"{"holder":[1,2],"keys":["items/a"],"timeout_ms":10}"#),
        (12, r#"{"force":true}"#),
        (
            13,
            r#"{"record":{"op":"insert","file":"items","key":"k","data":{}}}"#,
        ),
        (14, r#"{"credential":"c","ops":"AAAA"}"#),
        (
            15,
            r#"{"credential":"c","file":"items","layout":"AAAA","used":[0],"blocks":[[0,"AAAA"]]}"#,
        ),
        (16, r#"{"serial":5,"dry_run":true}"#),
        (17, r#"{"from_serial":1,"to_serial":9,"dry_run":true}"#),
        (18, r#"{"node":"b","database":"d","force":false}"#),
        (
            19,
            r#"{"config":{"prefix":"a"},"records":[{"op":"insert","file":"items","key":"a1","data":{"v":1}}]}"#,
        ),
    ];
    let mut rest: Vec<Vec<u8>> = bodies
        .iter()
        .map(|(route, body)| {
            let mut v = vec![*route];
            v.extend_from_slice(body.as_bytes());
            v
        })
        .collect();
    // Route 20: a binary batch (`api::batch`), every kind, alternate keys and no data.
    use crate::node::records::OpName;
    let mut batch = crate::api::batch::Writer::new();
    batch.push(
        OpName::Insert,
        "items",
        "k",
        &[("sku", "s")],
        Some(r#"{"a":[1,2]}"#),
    );
    batch.push(OpName::Update, "items", "k", &[], Some("2"));
    batch.push(OpName::Upsert, "orders", "o", &[], None);
    batch.push(OpName::Delete, "orders", "o", &[], None);
    let mut v = vec![20u8];
    v.extend_from_slice(&batch.finish());
    rest.push(v);
    out.insert("rest", rest);

    // tokens: one signed with the target's key, and header\0claims to be signed
    let claims = crate::tenancy::auth::Claims {
        sub: "ann".into(),
        tenant: "acme".into(),
        role: crate::tenancy::roles::Role::Writer,
        iss: "doppel".into(),
        aud: "doppel".into(),
        exp: u64::MAX / 2,
        nbf: 0,
        iat: 0,
    };
    let token = super::keyring().sign("k1", &claims).expect("seed token");
    let mut signed = vec![1u8];
    signed.extend_from_slice(br#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#);
    signed.push(0);
    signed.extend_from_slice(&serde_json::to_vec(&claims).expect("claims"));
    let mut raw = vec![0u8];
    raw.extend_from_slice(token.as_bytes());
    out.insert("jwt", vec![raw, signed]);

    // plugins: the smallest built-in component with its role, and a core module
    let (_, role, _, wasm) = crate::plugins::builtin::BUILTIN_PLUGINS
        .iter()
        .min_by_key(|(_, _, _, wasm)| wasm.len())
        .expect("a built-in plugin");
    let role = ["filter", "transform", "rule", "resolver"]
        .iter()
        .position(|r| r == role)
        .expect("a known role") as u8;
    let mut plugin = vec![role];
    plugin.extend_from_slice(wasm);
    out.insert("plugin", vec![plugin, b"\x00\0asm\x01\0\0\0".to_vec()]);
    out
}
