//! End-to-end durability tests against real server processes: a restart on
//! the same data directory recovers tenants, databases, records, alt keys,
//! serials and the log; a snapshot followed by more writes recovers both;
//! kill -9 in the middle of a concurrent batch load (durability `group` and
//! `sync`) loses no acknowledged batch and leaves no batch half-applied; and
//! a graceful SIGTERM keeps everything, for every durability mode, even when it
//! arrives right after the node announces itself; and B and T logs expire each
//! after their own retention period; a record a crash cut short at the end of the
//! log is cut off, and a damaged one refuses its database, naming the file; a full
//! disk refuses writes with 507 `disk-full`, keeps reads, loses nothing acknowledged
//! and takes writes again once space returns.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use doppel_tests::*;

fn customer(name: &str) -> Value {
    json!({ "customer": name })
}

/// A record as a client sees its content (without its storage location).
fn content(record: &Value) -> Value {
    json!({ "key": record["key"], "alt": record["alt"], "data": record["data"] })
}

/// Everything a client can read from a database: its settings, serials,
/// per-file record counts and every record's content.
fn capture(db: &Db) -> Value {
    let r = db.info();
    let info = r.ok();
    let mut files = serde_json::Map::new();
    for f in info["files"].as_array().expect("files") {
        let name = f["name"].as_str().unwrap();
        let records: Vec<Value> = db.scan_all(name).iter().map(content).collect();
        files.insert(name.to_string(), json!(records));
    }
    json!({
        "name": info["name"],
        "files": info["files"],
        "block_size": info["block_size"],
        "durability": info["durability"],
        "memory_quota_bytes": info["memory_quota_bytes"],
        "last_serial": info["last_serial"],
        "snapshot_serial": info["snapshot_serial"],
        "records": files,
    })
}

fn names(list: &Resp) -> BTreeSet<String> {
    list.ok()
        .as_array()
        .unwrap_or_else(|| panic!("array: {list}"))
        .iter()
        .map(|x| x["name"].as_str().expect("name").to_string())
        .collect()
}

/// Writes a mix of single-record calls, batches and an interactive
/// transaction into a shop database.
fn write_mix(db: &Db, tag: &str) {
    for i in 0..30 {
        db.put(
            "orders",
            &format!("{tag}-o{i:02}"),
            customer(&format!("c{}", i % 4)),
            json!({ "i": i, "tag": tag }),
        )
        .ok();
    }
    for i in 0..10 {
        db.put(
            "orders",
            &format!("{tag}-o{i:02}"),
            customer("vip"),
            json!({ "i": i, "updated": true }),
        )
        .ok();
    }
    for i in 20..25 {
        db.delete("orders", &format!("{tag}-o{i:02}")).ok();
    }
    let ops: Vec<Value> = (0..15)
        .map(|i| op::insert("lines", &format!("{tag}-l{i:02}"), json!([tag, i])))
        .collect();
    db.batch(json!(ops)).ok();
    let txn = db.begin();
    db.ops(
        txn,
        json!([
            op::update_alt(
                "orders",
                &format!("{tag}-o10"),
                customer("txn"),
                json!("via txn")
            ),
            op::delete("lines", &format!("{tag}-l00")),
        ]),
    )
    .ok();
    db.commit(txn).ok();
}

#[test]
fn restart_after_kill9_recovers_data_serials_and_log() {
    let mut node = Node::start();
    node.create_tenant("acme");
    let shop = node.create_db(
        "default",
        json!({
            "name": "shop",
            "files": [{ "name": "orders", "alt_keys": ["customer"] }, { "name": "lines" }],
            "durability": "group",
        }),
    );
    let books = node.create_db(
        "acme",
        json!({
            "name": "books",
            "files": [{ "name": "orders", "alt_keys": ["customer"] }, { "name": "lines" }],
            "durability": "sync",
            "block_size": 1024,
            "memory_quota_bytes": 33554432,
        }),
    );
    let temp = node.create_db("default", shop_spec("temp"));
    write_mix(&shop, "s");
    write_mix(&books, "b");
    temp.put("lines", "t", json!({}), json!(1)).ok();
    node.delete(&temp.path("")).expect(204);

    // An open transaction's pending ops must not survive.
    let open = shop.begin();
    shop.ops(
        open,
        json!([
            op::insert("lines", "pending", json!(1)),
            op::delete("orders", "s-o01")
        ]),
    )
    .ok();

    let tenants = names(&node.get("/v1/tenants"));
    let default_dbs = names(&node.get("/v1/tenants/default/databases"));
    let acme_dbs = names(&node.get("/v1/tenants/acme/databases"));
    let shop_state = capture(&shop);
    let books_state = capture(&books);
    let shop_log = shop.log_from(0);
    let books_log = books.log_from(0);
    let last_txn = shop_log
        .iter()
        .filter_map(|e| e["txn"].as_u64())
        .max()
        .unwrap();

    node.kill9();
    node.restart();
    let shop = node.db("default", "shop");
    let books = node.db("acme", "books");

    assert_eq!(names(&node.get("/v1/tenants")), tenants);
    assert_eq!(
        names(&node.get("/v1/tenants/default/databases")),
        default_dbs
    );
    assert_eq!(names(&node.get("/v1/tenants/acme/databases")), acme_dbs);
    node.get(&temp.path("")).expect_problem(404, "not-found");
    assert_eq!(capture(&shop), shop_state, "shop recovered");
    assert_eq!(capture(&books), books_state, "books recovered");
    assert_eq!(shop.log_from(0), shop_log, "shop log recovered");
    assert_eq!(books.log_from(0), books_log, "books log recovered");

    assert_eq!(shop.data("lines", "pending"), None);
    assert!(shop.data("orders", "s-o01").is_some());
    let r = shop.txn(open);
    assert!(
        r.status == 404 || r["state"] != json!("open"),
        "open txn did not survive: {r}"
    );
    assert_eq!(shop.alt_keys("orders", "customer", "txn"), vec!["s-o10"]);
    assert_eq!(shop.alt_keys("orders", "customer", "vip").len(), 10);

    // New work continues the serial and transaction sequences.
    let r = shop.put("orders", "after", customer("new"), json!("after"));
    let res = r.ok();
    assert!(
        res["serial"].as_u64() > shop_state["last_serial"].as_u64(),
        "serials continue: {r}"
    );
    assert!(res["txn"].as_u64() > Some(last_txn), "txns continue: {r}");
    // Recovered records are writable and lockable.
    let txn = shop.begin();
    shop.ops_with_timeout(
        txn,
        json!([op::update("orders", "s-o02", json!("post"))]),
        1000,
    )
    .ok();
    shop.commit(txn).ok();
    assert_eq!(shop.data("orders", "s-o02"), Some(json!("post")));
}

#[test]
fn snapshot_then_more_writes_then_restart_recovers_both() {
    let mut node = Node::start();
    let db = node.create_db(
        "default",
        json!({ "name": "snap", "files": [{ "name": "orders", "alt_keys": ["customer"] }, { "name": "lines" }], "durability": "group" }),
    );
    for i in 0..20 {
        db.put(
            "orders",
            &format!("o{i:02}"),
            customer(&format!("c{}", i % 3)),
            json!({ "i": i }),
        )
        .ok();
    }
    let last_before = db.info().ok()["last_serial"].as_u64().unwrap();

    let r = db.snapshot();
    let snap = r.expect(201).clone();
    let serial = snap["serial"]
        .as_u64()
        .unwrap_or_else(|| panic!("serial: {r}"));
    assert_eq!(
        serial, last_before,
        "snapshot taken at the last serial: {r}"
    );
    for field in ["size_bytes", "blocks", "created_ms"] {
        assert!(snap[field].is_u64(), "snapshot.{field}: {r}");
    }
    assert!(snap["blocks"].as_u64() > Some(0), "{r}");
    let info = db.info();
    assert_eq!(info.ok()["snapshot_serial"], json!(serial), "{info}");
    let list = db.snapshots();
    assert!(
        list.ok()
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["serial"] == json!(serial)),
        "snapshot listed: {list}"
    );

    // More writes after the snapshot: updates, deletes, inserts, a batch.
    for i in 0..5 {
        db.put(
            "orders",
            &format!("o{i:02}"),
            customer("late"),
            json!({ "i": i, "v": 2 }),
        )
        .ok();
    }
    for i in 5..10 {
        db.delete("orders", &format!("o{i:02}")).ok();
    }
    let ops: Vec<Value> = (0..10)
        .map(|i| {
            op::insert_alt(
                "orders",
                &format!("n{i:02}"),
                customer("late"),
                json!({ "n": i }),
            )
        })
        .collect();
    db.batch(json!(ops)).ok();
    db.put("lines", "l", json!({}), json!("l")).ok();

    let state = capture(&db);
    let tail = db.log_from(serial + 1);
    assert!(
        tail.len() >= 21,
        "post-snapshot writes are in the log: {tail:#?}"
    );
    let snapshots = db.snapshots().ok().clone();

    node.kill9();
    node.restart();
    let db = node.db("default", "snap");

    assert_eq!(capture(&db), state, "snapshot + log recovered");
    assert_eq!(db.log_from(serial + 1), tail, "post-snapshot log recovered");
    assert_eq!(db.snapshots().ok(), &snapshots, "snapshot list recovered");
    assert_eq!(db.alt_keys("orders", "customer", "late").len(), 15);
    assert_eq!(db.data("orders", "o07"), None);
    assert_eq!(db.data("orders", "o12"), Some(json!({ "i": 12 })));

    // A second snapshot after recovery covers everything.
    let r = db.snapshot();
    assert_eq!(r.expect(201)["serial"], state["last_serial"], "{r}");
    node.kill9();
    node.restart();
    assert_eq!(
        capture(&node.db("default", "snap"))["records"],
        state["records"]
    );
}

const WRITERS: usize = 2;
const BATCH_SIZE: usize = 10;
const ACKED_BEFORE_KILL: usize = 100;
const MAX_BATCHES_PER_WRITER: usize = 5000;

#[derive(Default)]
struct WriterLog {
    attempted: Vec<String>,
    acked: Vec<String>,
    refused: Vec<String>,
}

/// Sends batches until told to stop or the server goes away; records which
/// batches were acknowledged (200).
fn run_writer(db: Db, writer: usize, stop: &AtomicBool, acked: &AtomicUsize) -> WriterLog {
    let mut log = WriterLog::default();
    for i in 0..MAX_BATCHES_PER_WRITER {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let id = format!("w{writer}-b{i:05}");
        let ops: Vec<Value> = (0..BATCH_SIZE)
            .map(|j| {
                op::insert_alt(
                    "events",
                    &format!("{id}-r{j}"),
                    json!({ "batch": id }),
                    json!({ "batch": id, "j": j, "pad": "p".repeat(64) }),
                )
            })
            .collect();
        log.attempted.push(id.clone());
        match db.try_batch(json!(ops)) {
            Ok(r) if r.status == 200 => {
                log.acked.push(id);
                acked.fetch_add(1, Ordering::SeqCst);
            }
            Ok(r) => {
                log.refused.push(r.to_string());
                break;
            }
            // The server was killed.
            Err(_) => break,
        }
    }
    log
}

fn kill9_under_load(durability: &str) {
    let mut node = Node::start();
    let spec = json!({
        "name": "load",
        "files": [{ "name": "events", "alt_keys": ["batch"] }],
        "durability": durability,
        "memory_quota_bytes": 268435456,
    });
    let db = node.create_db("default", spec);

    let stop = AtomicBool::new(false);
    let acked_count = AtomicUsize::new(0);
    let logs: Vec<WriterLog> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let db = db.clone();
                let (stop, acked_count) = (&stop, &acked_count);
                s.spawn(move || run_writer(db, w, stop, acked_count))
            })
            .collect();
        let reached = wait_until(deadline_in(Duration::from_secs(60)), || {
            acked_count.load(Ordering::SeqCst) >= ACKED_BEFORE_KILL
                || handles.iter().all(|h| h.is_finished())
        });
        // Kill while the writers are still sending.
        node.kill9();
        stop.store(true, Ordering::SeqCst);
        let logs: Vec<WriterLog> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(
            reached && acked_count.load(Ordering::SeqCst) >= ACKED_BEFORE_KILL,
            "writers reached {} acknowledged batches",
            acked_count.load(Ordering::SeqCst)
        );
        logs
    });
    for log in &logs {
        assert!(
            log.refused.is_empty(),
            "batches refused under load: {:?}",
            log.refused
        );
    }
    let attempted: BTreeSet<&String> = logs.iter().flat_map(|l| &l.attempted).collect();
    let acked: BTreeSet<&String> = logs.iter().flat_map(|l| &l.acked).collect();

    node.restart();
    let db = node.db("default", "load");

    let mut present: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for rec in db.scan_all("events") {
        let batch = rec["data"]["batch"]
            .as_str()
            .expect("batch id in data")
            .to_string();
        let j = rec["data"]["j"].as_u64().expect("j");
        assert_eq!(rec["key"], json!(format!("{batch}-r{j}")), "{rec}");
        assert_eq!(rec["alt"], json!({ "batch": batch }), "{rec}");
        assert!(
            present.entry(batch).or_default().insert(j),
            "{rec} seen twice"
        );
    }
    println!(
        "{durability}: {} batches attempted, {} acknowledged, {} recovered",
        attempted.len(),
        acked.len(),
        present.len()
    );
    let full: BTreeSet<u64> = (0..BATCH_SIZE as u64).collect();
    for (batch, js) in &present {
        assert!(attempted.contains(batch), "unknown batch {batch} recovered");
        assert_eq!(js, &full, "batch {batch} is partially present");
    }
    for batch in &acked {
        assert!(
            present.contains_key(*batch),
            "acknowledged batch {batch} lost ({durability})"
        );
    }
    // Alt lookups agree with the scan for the batches around the kill.
    for batch in logs.iter().flat_map(|l| l.attempted.iter().rev().take(2)) {
        let expected = if present.contains_key(batch) {
            BATCH_SIZE
        } else {
            0
        };
        assert_eq!(
            db.alt_keys("events", "batch", batch).len(),
            expected,
            "alt lookup for {batch}"
        );
    }
    let info = db.info();
    assert_eq!(
        info.ok()["files"][0]["records"],
        json!(present.len() * BATCH_SIZE),
        "{info}"
    );

    // The recovered database takes new work.
    let ops: Vec<Value> = (0..BATCH_SIZE)
        .map(|j| {
            op::insert_alt(
                "events",
                &format!("after-r{j}"),
                json!({ "batch": "after" }),
                json!(j),
            )
        })
        .collect();
    db.batch(json!(ops)).ok();
    assert_eq!(db.alt_keys("events", "batch", "after").len(), BATCH_SIZE);
}

#[test]
fn kill9_under_load_keeps_acknowledged_batches_group() {
    kill9_under_load("group");
}

#[test]
fn kill9_under_load_keeps_acknowledged_batches_sync() {
    kill9_under_load("sync");
}

#[test]
fn graceful_sigterm_then_restart_keeps_everything() {
    let mut node = Node::start();
    let mut dbs = Vec::new();
    for durability in ["none", "group", "sync"] {
        let db = node.create_db(
            "default",
            json!({
                "name": format!("d-{durability}"),
                "files": [{ "name": "orders", "alt_keys": ["customer"] }, { "name": "lines" }],
                "durability": durability,
            }),
        );
        write_mix(&db, durability);
        dbs.push(db);
    }
    dbs[1].snapshot().expect(201);
    dbs[1]
        .put("lines", "after-snapshot", json!({}), json!(1))
        .ok();
    let open = dbs[2].begin();
    dbs[2]
        .ops(open, json!([op::insert("lines", "pending", json!(1))]))
        .ok();

    let states: Vec<Value> = dbs.iter().map(capture).collect();
    let logs: Vec<Vec<Value>> = dbs.iter().map(|db| db.log_from(0)).collect();

    let status = node.terminate();
    assert!(status.success(), "SIGTERM exits cleanly, got {status}");
    node.restart();

    for (i, durability) in ["none", "group", "sync"].iter().enumerate() {
        let db = node.db("default", &format!("d-{durability}"));
        assert_eq!(
            capture(&db),
            states[i],
            "database with durability {durability} kept"
        );
        assert_eq!(db.log_from(0), logs[i], "log of {durability} kept");
    }
    assert_eq!(node.db("default", "d-sync").data("lines", "pending"), None);

    // And a second graceful cycle with no writes in between changes nothing.
    let status = node.terminate();
    assert!(
        status.success(),
        "second SIGTERM exits cleanly, got {status}"
    );
    node.restart();
    for (i, durability) in ["none", "group", "sync"].iter().enumerate() {
        assert_eq!(
            capture(&node.db("default", &format!("d-{durability}"))),
            states[i]
        );
    }
}

#[test]
fn sigterm_right_after_the_ready_line_still_shuts_down_cleanly() {
    // The signal handlers are installed before the node announces itself, so a
    // supervisor that stops a node as soon as it is ready gets a clean exit.
    for _ in 0..5 {
        let mut node = Node::start();
        let status = node.terminate();
        assert!(status.success(), "SIGTERM exits cleanly, got {status}");
    }
}

#[test]
fn b_and_t_logs_expire_each_after_their_own_retention() {
    let node = Node::start();
    let db = node.create_db(
        "default",
        json!({
            "name": "kept",
            "files": [{ "name": "orders" }],
            "retention": { "b_secs": 1, "t_secs": 3600 },
        }),
    );
    db.put("orders", "o1", json!({}), json!("v1")).ok();
    db.put("orders", "o1", json!({}), json!("v2")).ok();
    let update = |entries: &[Value]| entries.iter().find(|e| e["serial"] == json!(2)).cloned();
    let before = update(&db.log_from(1)).expect("the update is logged");
    assert_eq!(before["b"]["data"], json!("v1"), "{before}");
    assert_eq!(before["t"]["data"], json!("v2"), "{before}");

    // The node's upkeep drops B entries older than a second; T entries stay.
    let expired = wait_until(deadline_in(Duration::from_secs(30)), || {
        update(&db.log_from(1)).is_some_and(|e| e["b"].is_null())
    });
    let after = update(&db.log_from(1)).expect("the update is still listed");
    assert!(expired, "B entry still present after 30 s: {after}");
    assert_eq!(
        after["t"]["data"],
        json!("v2"),
        "T is kept for an hour: {after}"
    );
    assert_eq!(
        after["a"]["data"],
        json!("v2"),
        "A is kept until a snapshot: {after}"
    );
    // The records themselves are untouched.
    assert_eq!(db.data("orders", "o1"), Some(json!("v2")));
}

/// The log segment files under a node's data directory.
fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(dir.join("logs")).expect("logs dir") {
        let segments = shard.expect("entry").path().join("segments");
        for file in std::fs::read_dir(&segments).into_iter().flatten() {
            let path = file.expect("entry").path();
            if path.extension().is_some_and(|e| e == "seg") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_damaged_log_segment_refuses_its_database_and_a_torn_end_is_cut_off() {
    let mut node = Node::start();
    let db = node.create_db(
        "default",
        json!({ "name": "seg", "files": [{ "name": "orders" }], "durability": "group" }),
    );
    for i in 0..40 {
        db.put("orders", &format!("k{i:02}"), json!({}), json!({ "n": i }))
            .ok();
    }
    let written = capture(&db);
    assert!(node.terminate().success());
    let files = segment_files(node.data_dir());
    assert_eq!(files.len(), 1, "one database, one segment: {files:?}");
    let segment = &files[0];

    // A crash in the middle of writing a record: its header promises more bytes than
    // reached the file. The node starts, and everything before it is there.
    let whole = std::fs::read(segment).unwrap();
    let mut torn = whole.clone();
    torn.extend_from_slice(&500u32.to_le_bytes());
    torn.extend_from_slice(&[0xab; 40]);
    std::fs::write(segment, &torn).unwrap();
    node.restart();
    let db = node.db("default", "seg");
    assert_eq!(capture(&db), written);
    assert_eq!(
        std::fs::read(segment).unwrap(),
        whole,
        "the torn record is cut off"
    );
    let other = node.create_db(
        "default",
        json!({ "name": "other", "files": [{ "name": "orders" }] }),
    );
    other.put("orders", "kept", json!({}), json!(1)).ok();
    assert!(node.terminate().success());

    // A flipped byte in the middle of the log, with valid records after it: the
    // database is refused rather than served with a hole in its log, with the file
    // named; the node serves its other databases.
    let mut damaged = whole.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x5a;
    std::fs::write(segment, &damaged).unwrap();
    node.restart();
    let refused = node.db("default", "seg");
    let info = refused.info();
    let detail = info.expect_problem(503, "unavailable")["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let name = segment.file_name().unwrap().to_str().unwrap();
    assert!(
        detail.contains("checksum") && detail.contains(name),
        "the refusal names the damage and the file: {detail}"
    );
    refused
        .get("orders", "k01")
        .expect_problem(503, "unavailable");
    assert_eq!(
        node.db("default", "other").data("orders", "kept"),
        Some(json!(1))
    );

    // Put back as it was, the database starts and serves everything again.
    assert!(node.terminate().success());
    std::fs::write(segment, &whole).unwrap();
    node.restart();
    assert_eq!(capture(&node.db("default", "seg")), written);
}

/// A small tmpfs mounted for one test (the tests run as root), unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::Builder::new()
            .prefix("doppel-disk-")
            .tempdir()
            .expect("mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a tmpfs at {:?}", dir.path());
        SmallDisk { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fill what is left of the disk with a file, which [`SmallDisk::free`] removes.
    fn fill(&self) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.path().join("filler")).expect("filler");
        let block = vec![0u8; 64 << 10];
        while file.write_all(&block).is_ok() {}
        // The last few bytes of the disk.
        while file.write_all(&[0]).is_ok() {}
    }

    fn free(&self) {
        std::fs::remove_file(self.path().join("filler")).expect("remove the filler");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_disk_refuses_writes_with_507_keeps_reads_and_takes_writes_once_space_returns() {
    let disk = SmallDisk::mount("64m");
    let mut node = Node::start_in(&disk.path().join("data"));
    let db = node.create_db(
        "default",
        json!({ "name": "full", "files": [{ "name": "orders" }], "durability": "group" }),
    );
    for i in 0..20 {
        db.put(
            "orders",
            &format!("before{i:02}"),
            json!({}),
            json!({ "n": i }),
        )
        .ok();
    }

    disk.fill();
    // Writes go on while the log's last page has room; then the disk is full.
    let mut acknowledged = Vec::new();
    let refused = (0..5000)
        .map(|i| format!("during{i:04}"))
        .find(|key| {
            let answer = db.put("orders", key, json!({}), json!({ "pad": "x".repeat(200) }));
            if answer.status == 507 {
                answer.expect_problem(507, "disk-full");
                return true;
            }
            answer.ok();
            acknowledged.push(key.clone());
            false
        })
        .expect("the full disk refuses a write");
    // Nothing of the refused write is in memory; reads go on.
    assert_eq!(db.data("orders", &refused), None);
    assert_eq!(
        db.record_count("orders"),
        20 + acknowledged.len() as u64,
        "every acknowledged write and nothing else"
    );
    assert_eq!(db.data("orders", "before07"), Some(json!({ "n": 7 })));
    // Still full: the same write is still refused, and the node carries on.
    db.put(
        "orders",
        &refused,
        json!({}),
        json!({ "pad": "x".repeat(200) }),
    )
    .expect_problem(507, "disk-full");

    // Space returns: writes succeed again, in serial order with the earlier ones.
    disk.free();
    db.put("orders", &refused, json!({}), json!({ "late": true }))
        .ok();
    db.put("orders", "after", json!({}), json!(1)).ok();
    let state = capture(&db);
    let log = db.log_from(0);

    node.kill9();
    node.restart();
    let db = node.db("default", "full");
    assert_eq!(
        capture(&db),
        state,
        "everything acknowledged survives a kill -9"
    );
    assert_eq!(
        db.log_from(0),
        log,
        "the log has no gap where the refused write was"
    );
    assert_eq!(db.data("orders", &refused), Some(json!({ "late": true })));
}
