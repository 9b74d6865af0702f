//! The fuzz targets: one function per decoder that faces bytes from outside the node,
//! each taking arbitrary bytes and returning nothing. A panic, a hang or a runaway
//! allocation in one of them is a bug in the decoder it drives.
//!
//! The libFuzzer targets in `fuzz/` (nightly, `cargo fuzz`) call these, and so does the
//! stable test `server/tests/fuzz_corpus.rs`, which replays the committed corpus and every
//! past crash input (`fuzz/regressions/<target>/`) so a regression fails CI without
//! nightly. [`TARGETS`] names them all; `docs/RELIABILITY.md` has the figures.
//!
//! Each target goes as far as the node goes with the bytes before they meet other
//! state: the wire decoder also decodes what a message carries (log chunks, a snapshot
//! layout, a logical link's operations) and checks that every decoded message encodes
//! back to itself; a log chunk's A entries are applied to a store, as recovery and a
//! mirror replica do; a log segment is indexed as opening a database indexes it; a
//! snapshot becomes a store that is then read; a REST body goes
//! through the route's own deserialiser (`axum::Json`) and the checks the route runs
//! next; a plugin goes through the upload steps (compile, link, instantiate).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures_util::FutureExt;

use crate::log::{codec, LogKind};
use crate::store::snapshot::SnapshotLayout;
use crate::store::{FileSchema, Schema, Store};
use crate::transport::wire::{self, FrameWriter, Msg};

/// A fuzz target: bytes in, nothing out.
pub type Target = fn(&[u8]);

/// Every target by name, as the fuzz crate's binaries and corpus folders are named.
pub const TARGETS: &[(&str, Target)] = &[
    ("wire", wire_frame),
    ("log_chunk", log_chunk),
    ("spool", spool_value),
    ("snapshot", snapshot),
    ("rest", rest_body),
    ("jwt", jwt),
    ("plugin", plugin),
    ("segment", segment),
];

/// The schema the targets decode records against: two files, one with alternate keys.
pub fn schema() -> Schema {
    Schema {
        files: vec![
            FileSchema {
                name: "items".into(),
                alt_keys: vec!["sku".into(), "colour".into()],
            },
            FileSchema {
                name: "orders".into(),
                alt_keys: Vec::new(),
            },
        ],
    }
}

/// A small store for applying decoded entries to (blocks of 512 bytes, 1 MiB quota).
fn small_store() -> Store {
    Store::new(schema(), 512, 1 << 20)
}

// ---- replication wire ----

/// A replication frame as a peer sends it: the length-prefixed read (`read_frame`), then
/// every message of the payload, then what each message carries.
pub fn wire_frame(data: &[u8]) {
    let mut reader = data;
    if let Some(Ok(payload)) = wire::read_frame(&mut reader).now_or_never() {
        messages(&payload);
    }
    messages(data);
}

fn messages(payload: &[u8]) {
    let mut r = wire::FrameReader::new(payload);
    while let Ok(Some(msg)) = r.next_msg() {
        // What goes in comes out: a decoded message encodes to bytes that decode to it.
        let mut w = FrameWriter::new();
        w.push(&msg);
        let frame = w.finish();
        assert_eq!(
            wire::messages(&frame[4..]).as_deref(),
            Ok(std::slice::from_ref(&msg)),
            "a message does not survive encoding"
        );
        carried(&msg);
    }
}

/// Decode what a message carries, as the receiver does.
fn carried(msg: &Msg<'_>) {
    match msg {
        Msg::Updates { chunk, .. } => log_chunk(chunk),
        Msg::Cancel { b_chunks, .. } => b_chunks.iter().for_each(|c| log_chunk(c)),
        Msg::Logical { ops, .. } | Msg::LogicalSnapshot { ops, .. } => {
            let _ = crate::transport::logical::decode_ops(&schema(), ops);
        }
        Msg::SnapshotBegin { layout, .. } => {
            if let Ok(layout) = postcard::from_bytes::<SnapshotLayout>(layout) {
                let _ = Store::from_snapshot(layout, 1 << 20, &[]);
            }
        }
        _ => {}
    }
}

// ---- what recovery reads from sled ----

/// A stored log chunk: its head, its entries, and (A chunks) the entries applied to a
/// store as restart replay and a mirror replica apply them.
pub fn log_chunk(data: &[u8]) {
    let head = codec::peek(data);
    let _ = codec::last_timestamp_us(data);
    let Ok(chunk) = codec::decode(data) else {
        return;
    };
    let head = head.expect("a chunk that decodes has a head");
    assert_eq!(
        (head.kind, head.txn, head.first_serial, head.last_serial),
        (chunk.kind, chunk.txn, chunk.first_serial, chunk.last_serial)
    );
    if chunk.kind != LogKind::A {
        for entry in &chunk.entries {
            if let Some(image) = entry.image {
                let _ = crate::store::block::decode(image);
            }
        }
        return;
    }
    let mut store = small_store();
    for entry in &chunk.entries {
        if let Ok(mutation) = crate::txn::replay_mutation(entry) {
            let _ = store.apply_unchecked(mutation);
        }
    }
    read_all(&store);
}

/// A log segment file as opening a database reads it: its records, checksums, and the
/// index built from them (see `log::segments::check_scan`).
pub fn segment(data: &[u8]) {
    crate::log::segments::check_scan(data);
}

/// A suspended replica's spooled transaction (sled tree `spool`).
pub fn spool_value(data: &[u8]) {
    if let Ok((chunks, _deps)) = crate::transport::spool::decode(data) {
        let _ = crate::transport::spool::last_serial(&chunks);
        for c in &chunks {
            let _ = codec::decode(&c.bytes);
        }
    }
}

/// A snapshot: `len u32 LE | postcard layout | packed blocks`, the layout as the
/// snapshot metadata stores it (`SnapshotMeta`, first byte even) or as a bootstrap's
/// `SnapshotBegin` carries it (`SnapshotLayout`, first byte odd). A store that comes out
/// is read end to end.
pub fn snapshot(data: &[u8]) {
    let Some((&flavour, rest)) = data.split_first() else {
        return;
    };
    let Some(len) = rest.get(..4) else {
        return;
    };
    let len = u32::from_le_bytes(len.try_into().expect("4")) as usize;
    let Some(layout) = rest.get(4..4usize.saturating_add(len)) else {
        return;
    };
    let packed = &rest[4 + len..];
    let layout = if flavour % 2 == 0 {
        match postcard::from_bytes::<crate::log::durable::SnapshotMeta>(layout) {
            Ok(meta) => meta.layout,
            Err(_) => return,
        }
    } else {
        match postcard::from_bytes::<SnapshotLayout>(layout) {
            Ok(layout) => layout,
            Err(_) => return,
        }
    };
    if let Ok(store) = Store::from_snapshot(layout, 1 << 20, packed) {
        read_all(&store);
    }
}

/// Read every record of every file, look each one up, and take the checksums.
fn read_all(store: &Store) {
    let _ = store.checksums();
    for (id, file) in store.files().iter().enumerate() {
        let mut keys = Vec::new();
        file.scan(b"", None, |r| {
            keys.push(r.key.to_vec());
            keys.len() < 10_000
        });
        for key in keys.iter().take(64) {
            let _ = store.get(id as crate::store::FileId, key);
        }
    }
}

// ---- REST bodies ----

/// The bodies of the routes that take JSON, each through the route's own deserialiser
/// (`api::error::parse_json`, what `api::error::Body` runs) and then the checks the
/// route runs before it touches a database (route 0 also checks that reading the
/// transaction body in place, `api::batch::json_in_place`, gives what the parser
/// gives); and the transaction routes' binary batch (`api::batch::decode`, route 20).
/// The first byte picks the route.
pub fn rest_body(data: &[u8]) {
    use crate::api;
    use crate::node::records;
    let Some((&route, body)) = data.split_first() else {
        return;
    };
    let bytes = axum::body::Bytes::copy_from_slice(body);
    fn parse<T: serde::de::DeserializeOwned>(bytes: &axum::body::Bytes) -> Option<T> {
        crate::api::error::parse_json(bytes).ok()
    }
    let schema = schema();
    match route % 21 {
        0 => {
            let parsed = parse::<api::routes::OpsBody>(&bytes);
            // Read in place, a body gives what the route's own parser gives.
            if let Some(in_place) = api::batch::json_in_place(&bytes) {
                let parsed = parsed
                    .as_ref()
                    .expect("a body read in place is one the route's parser takes");
                let by_parser: Vec<_> = parsed.ops.iter().map(|op| op.as_ref()).collect();
                let in_place = match &in_place {
                    api::batch::InPlace::Borrowed(ops) => ops.clone(),
                    api::batch::InPlace::Copied(ops) => ops.iter().map(|op| op.as_ref()).collect(),
                };
                assert_eq!(in_place, by_parser);
            }
            if let Some(b) = parsed {
                for op in &b.ops {
                    let _ = records::resolve(&schema, &op.as_ref());
                }
            }
        }
        // A record route's body, as the route resolves it: an operation on the file.
        1 => {
            if let Some(b) = parse::<api::routes::RecordBody>(&bytes) {
                let op = records::OpInput {
                    op: records::OpName::Upsert,
                    file: schema.files[0].name.clone(),
                    key: "k".into(),
                    alt: b.alt,
                    data: b.data,
                };
                let _ = records::resolve(&schema, &op.as_ref());
            }
        }
        2 => {
            if let Some(b) = parse::<api::routes::NewRecord>(&bytes) {
                let op = records::OpInput {
                    op: records::OpName::Insert,
                    file: schema.files[0].name.clone(),
                    key: b.key,
                    alt: b.alt,
                    data: b.data,
                };
                let _ = records::resolve(&schema, &op.as_ref());
            }
        }
        3 => {
            if let Some(doc) = parse::<crate::topology::Topology>(&bytes) {
                let _ = crate::topology::validate(&doc);
            }
        }
        4 => {
            let _ = parse::<crate::transport::links::LinkSpec>(&bytes);
        }
        5 => {
            if let Some(req) = parse::<crate::transport::links::ReplicaRequest>(&bytes) {
                database_spec(&req.spec);
            }
        }
        6 => {
            if let Some(spec) = parse::<crate::node::database::DatabaseSpec>(&bytes) {
                database_spec(&spec);
            }
        }
        7 => {
            if let Some(limits) = parse::<crate::tenancy::quota::Limits>(&bytes) {
                quotas(limits, body.len());
            }
        }
        8 => {
            if let Some(t) = parse::<api::routes::NewTenant>(&bytes) {
                let _ = crate::node::check_name("tenant", &t.name);
            }
        }
        9 => {
            let _ = parse::<Vec<crate::transport::links::StageSpec>>(&bytes);
        }
        10 => {
            let _ = parse::<api::links::QuorumBody>(&bytes);
        }
        11 => {
            let _ = parse::<api::links::LockRequest>(&bytes);
        }
        12 => {
            let _ = parse::<api::links::PromoteBody>(&bytes);
        }
        13 => {
            let _ = parse::<api::links::RedriveBody>(&bytes);
        }
        14 => {
            let _ = parse::<crate::transport::redrive::RedriveRequest>(&bytes);
        }
        15 => {
            let _ = parse::<crate::transport::verify::RepairScope>(&bytes);
            let _ = parse::<crate::transport::verify::RepairRequest>(&bytes);
        }
        16 => {
            let _ = parse::<api::restore::RestoreBody>(&bytes);
        }
        17 => {
            let _ = parse::<crate::replay::ReplayRequest>(&bytes);
        }
        18 => {
            let _ = parse::<api::topologies::FailoverBody>(&bytes);
        }
        20 => {
            if let Ok(ops) = api::batch::decode(&bytes) {
                for op in &ops {
                    let _ = records::resolve(&schema, op);
                }
            }
        }
        _ => {
            let _ = parse::<api::plugins::DryRun>(&bytes);
        }
    }
}

/// A database definition: the node's checks, then (if they pass) its schema and an
/// empty store of it, as `create_database` builds.
fn database_spec(spec: &crate::node::database::DatabaseSpec) {
    if crate::node::Node::check_spec(spec).is_ok() {
        let schema = spec.schema();
        let store = Store::new(schema, spec.block_size, spec.memory_quota_bytes);
        read_all(&store);
    }
}

/// A tenant's limits in force: every quota decision they drive, for `n` operations.
fn quotas(limits: crate::tenancy::quota::Limits, n: usize) {
    let q = crate::tenancy::quota::Quotas::new(limits);
    let _ = q.take_request("t");
    let _ = q.take_request("t");
    let _ = q.take_operations("t", n);
    let _ = q.take_operations("t", usize::MAX);
    let _ = q.take_write("t", n, n as u64 * 100);
    let _ = q.take_write("t", 1, u64::MAX);
    let _ = q.available_bytes("t");
    let _ = q.plugin_cpu_available("t");
    q.charge_plugin_cpu("t", std::time::Duration::from_secs(n as u64));
    let _ = q.plugin_cpu_available("t");
    let _ = q.available_operations("t");
    let _ = q.available_requests("t");
    let _ = q.write_turn("t").now_or_never();
}

// ---- JWT ----

/// The test key of the `jwt` target (32 bytes, HS256).
const JWT_SECRET: &[u8; 32] = b"fuzzing-key-not-a-secret-32bytes";

fn keyring() -> &'static crate::tenancy::auth::Keyring {
    static RING: OnceLock<crate::tenancy::auth::Keyring> = OnceLock::new();
    RING.get_or_init(|| {
        use base64::engine::general_purpose::STANDARD;
        let config = crate::tenancy::auth::AuthConfig {
            keys: vec![crate::tenancy::auth::KeyConfig {
                kid: "k1".into(),
                alg: "HS256".into(),
                secret: Some(STANDARD.encode(JWT_SECRET)),
                public_key_pem: None,
                private_key_pem: None,
            }],
            ..Default::default()
        };
        crate::tenancy::auth::Keyring::new(&config).expect("the fuzzing key")
    })
}

/// A bearer token. First byte even: the rest is the token as sent. Odd: the rest is
/// `header JSON \0 claims JSON`, signed with the node's key, so the claims reach the
/// checks that come after a good signature.
pub fn jwt(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(token) = std::str::from_utf8(rest) {
            let _ = keyring().verify(token);
        }
        return;
    }
    let (header, claims) = match rest.iter().position(|b| *b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (&br#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#[..], rest),
    };
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET);
    if let Ok(signature) =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
    {
        let _ = keyring().verify(&format!("{message}.{signature}"));
    }
}

// ---- plugins ----

fn runtime() -> &'static Arc<crate::plugins::runtime::Runtime> {
    static RUNTIME: OnceLock<Arc<crate::plugins::runtime::Runtime>> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        crate::plugins::runtime::Runtime::new(Default::default()).expect("the plugin runtime")
    })
}

/// A plugin upload: the first byte picks the role, the rest is the module. The upload
/// steps of `Registry::put` without the storage: validate and compile, link against
/// the role's world, instantiate once (the contract version check).
pub fn plugin(data: &[u8]) {
    use crate::plugins::runtime::Role;
    let Some((&role, wasm)) = data.split_first() else {
        return;
    };
    let role = [Role::Filter, Role::Transform, Role::Rule, Role::Resolver][role as usize % 4];
    let rt = runtime();
    let Ok(component) = rt.compile("fuzz@1", role, wasm) else {
        return;
    };
    if let Ok(template) = rt.template("fuzz@1", role, &component) {
        let _ = template.check();
    }
}

/// Seed inputs for every target, made by the node's own encoders (the fuzzers start
/// from them; `cargo run -p doppel-server --example fuzz_seeds` writes them out).
pub fn seeds() -> BTreeMap<&'static str, Vec<Vec<u8>>> {
    seeds::all()
}

mod seeds;
