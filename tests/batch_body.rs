//! End-to-end tests of the binary batch body (`application/vnd.doppel.batch`) of the
//! transaction routes against a real server process: a binary batch writes what the
//! same JSON batch writes (read back through the JSON API); every way a batch can be
//! broken is a precise problem (the operation's index and the byte it stopped at) and
//! writes nothing; what a JSON batch is refused for after it parsed, a binary batch is
//! refused for in the same words; and the node goes on taking batches afterwards.

use doppel_server::api::batch::{Writer, MEDIA_TYPE};
use doppel_server::node::records::OpName;
use doppel_tests::*;

/// One operation, as both bodies carry it.
struct Op {
    op: OpName,
    file: &'static str,
    key: String,
    alt: Vec<(&'static str, &'static str)>,
    data: Option<Value>,
}

fn op(op: OpName, file: &'static str, key: &str, data: Option<Value>) -> Op {
    Op {
        op,
        file,
        key: key.to_string(),
        alt: Vec::new(),
        data,
    }
}

fn json_ops(ops: &[Op]) -> Value {
    let ops: Vec<Value> = ops
        .iter()
        .map(|o| {
            let name = serde_json::to_value(o.op).unwrap();
            let mut v = json!({"op": name, "file": o.file, "key": o.key});
            if !o.alt.is_empty() {
                let alt: serde_json::Map<String, Value> = o
                    .alt
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect();
                v["alt"] = Value::Object(alt);
            }
            if let Some(data) = &o.data {
                v["data"] = data.clone();
            }
            v
        })
        .collect();
    json!(ops)
}

fn binary(ops: &[Op]) -> Vec<u8> {
    let mut w = Writer::new();
    for o in ops {
        let data = o.data.as_ref().map(Value::to_string);
        w.push(o.op, o.file, &o.key, &o.alt, data.as_deref());
    }
    w.finish()
}

fn send(db: &Db, rest: &str, bytes: &[u8]) -> Resp {
    db.client()
        .request("POST", &db.path(rest), Body::Raw(MEDIA_TYPE, bytes))
}

/// Everything a client reads back: both files' records and an alternate-key lookup.
fn everything(db: &Db) -> (Vec<Value>, Vec<Value>, Vec<String>, Vec<String>) {
    (
        db.contents("orders"),
        db.contents("lines"),
        db.alt_keys("orders", "customer", "ann"),
        db.alt_keys("orders", "customer", "bob"),
    )
}

#[test]
fn a_binary_batch_writes_what_the_same_json_batch_writes() {
    let node = Node::start();
    let by_json = node.create_db("default", shop_spec("by_json"));
    let by_binary = node.create_db("default", shop_spec("by_binary"));

    let mut first = Vec::new();
    for i in 0..50 {
        let mut o = op(
            OpName::Insert,
            "orders",
            &format!("o{i:03}"),
            Some(json!({"i": i, "note": "ünïcödé \"quoted\" \\ tab\t"})),
        );
        o.alt = vec![("customer", if i % 2 == 0 { "ann" } else { "bob" })];
        first.push(o);
        first.push(op(
            OpName::Upsert,
            "lines",
            &format!("l{i:03}"),
            Some(json!(i)),
        ));
    }
    first.push(op(OpName::Upsert, "lines", "no-data", None));
    first.push(op(
        OpName::Upsert,
        "lines",
        "string",
        Some(json!("x".repeat(98))),
    ));
    first.push(op(
        OpName::Upsert,
        "lines",
        "ключ/with space",
        Some(json!([1, null, true])),
    ));
    let second = vec![
        op(OpName::Update, "orders", "o000", Some(json!("changed"))),
        op(OpName::Delete, "orders", "o001", None),
        op(OpName::Delete, "lines", "l002", None),
        op(
            OpName::Upsert,
            "lines",
            "l003",
            Some(json!({"nested": {"a": [1.5, -2]}})),
        ),
    ];

    for ops in [&first, &second] {
        let j = by_json.batch(json_ops(ops));
        let b = send(&by_binary, "/transactions", &binary(ops));
        assert_eq!(b.ok()["count"], j.ok()["count"], "{b}");
    }
    let (json_side, binary_side) = (everything(&by_json), everything(&by_binary));
    assert_eq!(binary_side, json_side);
    assert_eq!(binary_side.0.len(), 49);
    assert_eq!(by_binary.data("orders", "o000"), Some(json!("changed")));
    assert_eq!(by_binary.data("lines", "no-data"), Some(Value::Null));
    assert_eq!(
        by_binary.data("orders", "o004"),
        Some(json!({"i": 4, "note": "ünïcödé \"quoted\" \\ tab\t"}))
    );
    assert_eq!(
        by_binary.data("lines", "ключ/with space"),
        Some(json!([1, null, true]))
    );

    // An interactive transaction takes binary operations too.
    let txn = by_binary.begin();
    let more = [op(OpName::Insert, "lines", "in-txn", Some(json!(7)))];
    let added = send(&by_binary, &format!("/txns/{txn}/ops"), &binary(&more));
    assert_eq!(added.ok()["pending"], json!(1), "{added}");
    assert_eq!(by_binary.data("lines", "in-txn"), None);
    by_binary.commit(txn).ok();
    assert_eq!(by_binary.data("lines", "in-txn"), Some(json!(7)));
}

/// A good one-operation batch to break: insert `lines/k` with data `1` (25 bytes:
/// header 0..8, kind 8, file 9..16, key 16..19, no alternate keys 19, data 20..25).
fn good() -> Vec<u8> {
    binary(&[op(OpName::Insert, "lines", "k", Some(json!(1)))])
}

#[test]
fn broken_batches_are_precise_problems_and_the_node_carries_on() {
    let node = Node::start();
    let db = node.create_db("default", shop_spec("shop"));
    let g = good();
    assert_eq!(g.len(), 25);

    let with = |at: usize, byte: u8| {
        let mut b = g.clone();
        b[at] = byte;
        b
    };
    let mut trailing = g.clone();
    trailing.extend_from_slice(b"??");
    let mut over = b"DPB1".to_vec();
    over.extend_from_slice(&100_001u32.to_le_bytes());
    let malformed: Vec<(Vec<u8>, &str, Option<u64>)> = vec![
        (
            b"{\"ops\": []}".to_vec(),
            "a binary batch (application/vnd.doppel.batch) starts with the 4 bytes \"DPB1\" and a u32 count of operations",
            None,
        ),
        (b"DPB1\0\0\0\0".to_vec(), "ops: give at least one operation", None),
        (over, "a request holds at most 100000 operations", None),
        (
            g[..23].to_vec(),
            "op 0 (byte 20): the body ends inside its data's length (4 bytes announced, 3 left)",
            Some(0),
        ),
        (
            g[..24].to_vec(),
            "op 0 (byte 24): the body ends inside its data (1 byte announced, 0 left)",
            Some(0),
        ),
        (
            trailing,
            "2 bytes after op 0, the last of the 1 the batch announces (byte 25)",
            None,
        ),
        (
            with(8, 0),
            "op 0 (byte 8): unknown operation 0 (1 insert, 2 update, 3 upsert, 4 delete)",
            Some(0),
        ),
        (
            with(18, 0xc3),
            "op 0 (byte 18): its key is not UTF-8 (at its byte 0)",
            Some(0),
        ),
        (
            with(24, b'}'),
            "op 0 (byte 24): its data is not one JSON value: expected value at line 1 column 1",
            Some(0),
        ),
    ];
    for (bytes, detail, index) in &malformed {
        let r = send(&db, "/transactions", bytes);
        let p = r.expect_problem(400, "malformed-request");
        assert_eq!(p["detail"], json!(detail), "{r}");
        assert_eq!(p["op_index"].as_u64(), *index, "{r}");
    }
    let twice = Op {
        alt: vec![("customer", "ann"), ("customer", "bob")],
        ..op(OpName::Insert, "orders", "k", None)
    };
    let r = send(&db, "/transactions", &binary(&[twice]));
    assert_eq!(
        r.expect_problem(400, "malformed-request")["detail"],
        json!("op 0 (byte 36): alternate key 'customer' is given twice")
    );

    // Refused after it parsed: the same answer as the same JSON batch.
    let long = "k".repeat(1025);
    let mut unknown_alt = op(OpName::Insert, "orders", "k", None);
    unknown_alt.alt = vec![("colour", "red")];
    let cases: Vec<(Vec<Op>, u16, &str)> = vec![
        (
            vec![op(OpName::Insert, "nofile", "k", None)],
            404,
            "not-found",
        ),
        (
            vec![
                op(OpName::Insert, "lines", "a", None),
                op(OpName::Insert, "lines", "", None),
            ],
            400,
            "empty-key",
        ),
        (
            vec![op(OpName::Insert, "lines", &long, None)],
            400,
            "key-too-long",
        ),
        (vec![unknown_alt], 422, "invalid-request"),
        (
            vec![op(OpName::Update, "lines", "absent", Some(json!(1)))],
            404,
            "not-found",
        ),
    ];
    for (ops, status, code) in &cases {
        let j = db.batch(json_ops(ops));
        let b = send(&db, "/transactions", &binary(ops));
        let (jp, bp) = (
            j.expect_problem(*status, code),
            b.expect_problem(*status, code),
        );
        assert_eq!(
            (&bp["detail"], &bp["op_index"]),
            (&jp["detail"], &jp["op_index"]),
            "{b}\n{j}"
        );
    }

    // Another media type, or none: 415, naming both the route takes.
    for ct in ["application/octet-stream", "text/plain"] {
        let r = db
            .client()
            .request("POST", &db.path("/transactions"), Body::Raw(ct, &g));
        let p = r.expect_problem(415, "unsupported-media-type");
        assert_eq!(
            p["detail"],
            json!(format!("the operations are JSON (Content-Type: application/json) or a binary batch (Content-Type: {MEDIA_TYPE}), not '{ct}'"))
        );
    }
    // Over the body limit: 413, as for JSON.
    let mut huge = Writer::new();
    let data = format!("\"{}\"", "x".repeat(1 << 20));
    for i in 0..17 {
        huge.push(OpName::Upsert, "lines", &format!("h{i}"), &[], Some(&data));
    }
    let r =
        db.client()
            .send_streaming("POST", &db.path("/transactions"), MEDIA_TYPE, huge.finish());
    r.expect_problem(413, "payload-too-large");

    // Nothing above wrote anything, and the node goes on.
    assert_eq!(db.record_count("lines"), 0);
    assert_eq!(db.record_count("orders"), 0);
    let r = send(&db, "/transactions", &g);
    assert_eq!(r.ok()["count"], json!(1), "{r}");
    assert_eq!(db.data("lines", "k"), Some(json!(1)));
}
