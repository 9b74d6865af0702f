//! End-to-end: a snapshot damaged on disk while the node is stopped (a byte flipped in
//! its part files, as bit rot or a bad sector would) is detected at the next start. The
//! node names it in its log and recovers from the older snapshot plus the log when the
//! log still reaches back; otherwise it refuses that database with the reason (503)
//! and keeps serving the others. It never serves what the damaged snapshot held.

use std::path::{Path, PathBuf};

use doppel_tests::*;
use serde_json::{json, Value};

/// Written only between the first and second snapshot: its bytes are in the part files
/// of every later snapshot and in no earlier one.
const MARKER: &str = "bitrot-target-7f3a";

fn put_range(db: &Db, prefix: &str, count: usize, value: &str) {
    for i in 0..count {
        db.put(
            "orders",
            &format!("{prefix}{i:03}"),
            json!({}),
            json!({ "v": value, "i": i }),
        )
        .ok();
    }
}

fn snapshot(db: &Db) -> u64 {
    let r = db.snapshot();
    r.expect(201)["serial"]
        .as_u64()
        .unwrap_or_else(|| panic!("serial: {r}"))
}

/// The file of snapshot `serial` (the data directory holds one database with
/// snapshots).
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

/// Flip a byte in every copy of [`MARKER`] in snapshot `serial`'s file; returns how
/// many were flipped.
fn flip_marker(data: &Path, serial: u64) -> usize {
    let file = snapshot_file(data, serial);
    let mut bytes = std::fs::read(&file).unwrap();
    let mut flipped = 0;
    let mut at = 0;
    while let Some(found) = bytes[at..]
        .windows(MARKER.len())
        .position(|w| w == MARKER.as_bytes())
    {
        bytes[at + found + 3] ^= 0x20;
        at += found + MARKER.len();
        flipped += 1;
    }
    std::fs::write(&file, bytes).unwrap();
    flipped
}

fn serials(list: &Resp) -> Vec<u64> {
    list.ok()["snapshots"]
        .as_array()
        .or_else(|| list.ok().as_array())
        .unwrap_or_else(|| panic!("a list of snapshots: {list}"))
        .iter()
        .map(|s| s["serial"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_damaged_newest_snapshot_is_replaced_by_the_older_one_and_the_log() {
    let mut node = Node::start();
    let db = node.create_db(
        "default",
        json!({ "name": "shop", "files": [{ "name": "orders" }], "durability": "group" }),
    );
    put_range(&db, "a", 30, "first");
    let older = snapshot(&db);
    put_range(&db, "m", 30, MARKER);
    let newest = snapshot(&db);
    put_range(&db, "z", 10, "after");
    let before: Vec<Value> = db.contents("orders");
    let last = db.info().ok()["last_serial"].clone();
    node.terminate();
    assert!(
        flip_marker(node.data_dir(), newest) > 0,
        "the marker is in snapshot {newest}"
    );

    node.restart();
    let db = node.db("default", "shop");
    assert_eq!(db.contents("orders"), before, "every record as it was");
    assert_eq!(db.info().ok()["last_serial"], last);
    assert_eq!(
        db.data("orders", "m007"),
        Some(json!({ "v": MARKER, "i": 7 }))
    );
    assert_eq!(
        serials(&db.snapshots()),
        vec![older],
        "the damaged one left the list"
    );
    let stderr = node.stderr_tail();
    assert!(
        stderr.contains("a snapshot is damaged") && stderr.contains(&format!("snapshot={newest}")),
        "the node's log names the damaged snapshot\n{stderr}"
    );
    // It goes on: writes, a new snapshot, and a restart from that.
    db.put("orders", "after-recovery", json!({}), json!({ "ok": true }))
        .ok();
    snapshot(&db);
    node.restart();
    let db = node.db("default", "shop");
    assert_eq!(
        db.data("orders", "after-recovery"),
        Some(json!({ "ok": true }))
    );
    assert_eq!(
        db.data("orders", "m029"),
        Some(json!({ "v": MARKER, "i": 29 }))
    );
}

#[test]
fn a_damaged_snapshot_the_log_cannot_replace_refuses_its_database_with_the_reason() {
    let mut node = Node::start();
    let db = node.create_db(
        "default",
        json!({ "name": "shop", "files": [{ "name": "orders" }], "durability": "group" }),
    );
    let other = node.create_db(
        "default",
        json!({ "name": "other", "files": [{ "name": "orders" }], "durability": "group" }),
    );
    other
        .put("orders", "kept", json!({}), json!({ "k": 1 }))
        .ok();
    put_range(&db, "a", 20, "first");
    snapshot(&db);
    put_range(&db, "m", 20, MARKER);
    let older = snapshot(&db);
    put_range(&db, "z", 20, "third");
    // The third snapshot drops the first, and the log up to the second.
    let newest = snapshot(&db);
    node.terminate();
    assert!(flip_marker(node.data_dir(), newest) > 0);
    assert!(flip_marker(node.data_dir(), older) > 0);

    node.restart();
    let db = node.db("default", "shop");
    let r = db.info();
    let problem = r.expect_problem(503, "unavailable");
    let detail = problem["detail"].as_str().unwrap_or_default().to_string();
    for needle in [
        "'shop' was not started".to_string(),
        format!("snapshot {newest} is damaged"),
        format!("snapshot {older}"),
        "reaches only serial".to_string(),
    ] {
        assert!(detail.contains(&needle), "{needle:?} in {detail}");
    }
    // Reads are refused too: nothing the damaged snapshots held is served.
    db.get("orders", "a001").expect_problem(503, "unavailable");
    let stderr = node.stderr_tail();
    assert!(
        stderr.contains("database not started"),
        "the node's log says why\n{stderr}"
    );
    // The node serves its other databases.
    let other = node.db("default", "other");
    assert_eq!(other.data("orders", "kept"), Some(json!({ "k": 1 })));
    // The node administrator sees which database did not start, and why.
    let answer = node.get("/v1/node");
    let info = answer.ok();
    let refused = info["refused_databases"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(refused.len(), 1, "{info}");
    assert_eq!(refused[0]["tenant"], "default");
    assert_eq!(refused[0]["database"], "shop");
    let reason = refused[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("snapshot {newest} is damaged")),
        "{reason}"
    );
}
