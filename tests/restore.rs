//! End-to-end tests of point-in-time restore (SPEC G2) against real server processes:
//! a database written, updated and deleted from returns exactly to its contents at a
//! serial or a timestamp, checked against an independent record of what they were; in
//! place (keeping its name, continuing its serials, surviving a restart, followed by its
//! mirror replica) or into a new database (leaving the original untouched); dry runs
//! preview exact numbers and change nothing; points outside retention, in the future,
//! and bad requests get precise problems.

use std::collections::BTreeMap;
use std::time::Duration;

use doppel_tests::*;

const FINISH: Duration = Duration::from_secs(60);

/// An independent record of a shop database's contents: orders (key → customer, data)
/// and lines (key → data).
#[derive(Clone, Default, PartialEq, Debug)]
struct Model {
    orders: BTreeMap<String, (String, Value)>,
    lines: BTreeMap<String, Value>,
}

impl Model {
    /// The contents as `Db::contents` shows them, file by file.
    fn expected(&self) -> Value {
        let orders: Vec<Value> = self
            .orders
            .iter()
            .map(|(k, (c, d))| json!({"key": k, "alt": {"customer": c}, "data": d}))
            .collect();
        let lines: Vec<Value> = self
            .lines
            .iter()
            .map(|(k, d)| json!({"key": k, "alt": {}, "data": d}))
            .collect();
        json!({"orders": orders, "lines": lines})
    }

    /// Upsert orders `from..to` for `customer` with `tag`, and a line per order.
    fn orders(&mut self, db: &Db, from: u32, to: u32, tag: &str) {
        let mut ops = Vec::new();
        for i in from..to {
            let (key, customer) = (format!("o-{i:05}"), format!("c{}", i % 7));
            let data = json!({"n": i, "tag": tag, "pad": "x".repeat((i % 40) as usize)});
            ops.push(op::upsert_alt(
                "orders",
                &key,
                json!({"customer": customer}),
                data.clone(),
            ));
            self.orders.insert(key.clone(), (customer, data));
            ops.push(op::upsert("lines", &format!("l-{i:05}"), json!(tag)));
            self.lines.insert(format!("l-{i:05}"), json!(tag));
        }
        db.batch(json!(ops)).ok();
    }

    /// Delete every `step`-th order in `from..to` that exists, and its line.
    fn delete(&mut self, db: &Db, from: u32, to: u32, step: usize) {
        let mut ops = Vec::new();
        for i in (from..to).step_by(step) {
            if !self.orders.contains_key(&format!("o-{i:05}")) {
                continue;
            }
            ops.push(op::delete("orders", &format!("o-{i:05}")));
            ops.push(op::delete("lines", &format!("l-{i:05}")));
            self.orders.remove(&format!("o-{i:05}"));
            self.lines.remove(&format!("l-{i:05}"));
        }
        db.batch(json!(ops)).ok();
    }
}

/// What a client reads from the database: every record of both files.
fn contents(db: &Db) -> Value {
    json!({"orders": db.contents("orders"), "lines": db.contents("lines")})
}

fn last_serial(db: &Db) -> u64 {
    db.info().ok()["last_serial"].as_u64().expect("last_serial")
}

/// A first history: 600 orders, some deleted, some rewritten.
fn first_history(db: &Db, model: &mut Model) {
    model.orders(db, 0, 400, "v1");
    model.delete(db, 0, 400, 9);
    model.orders(db, 400, 600, "v1");
    model.orders(db, 100, 150, "v2");
}

/// What happens after the point: updates, deletes, new records, re-inserts.
fn later_history(db: &Db, model: &mut Model) {
    model.orders(db, 0, 300, "v3");
    model.delete(db, 200, 600, 2);
    model.orders(db, 600, 700, "v3");
    db.put(
        "orders",
        "o-00001",
        json!({"customer": "zed"}),
        json!("last"),
    )
    .ok();
    model
        .orders
        .insert("o-00001".into(), ("zed".into(), json!("last")));
}

fn restore_path(db: &Db) -> String {
    db.path("/restore")
}

/// Start a restore, wait for it to finish, and return the finished operation.
#[track_caller]
fn restore(db: &Db, body: Value) -> Value {
    let r = db.client().post(&restore_path(db), &body);
    let started = r.expect(202).clone();
    assert_eq!(started["state"], "running", "{r}");
    let id = started["id"].as_u64().expect("an id");
    let path = db.path(&format!("/restores/{id}"));
    let mut last = Value::Null;
    let finished = wait_until(deadline_in(FINISH), || {
        last = db.client().get(&path).ok().clone();
        last["state"] != "running"
    });
    assert!(finished, "restore did not finish: {last}");
    assert_eq!(last["state"], "succeeded", "{last}");
    assert_eq!(last["phase"], "finished", "{last}");
    assert_eq!(last["done"], last["total"], "{last}");
    last
}

#[test]
fn in_place_restore_returns_exactly_to_a_serial_and_survives_a_restart() {
    let mut node = Node::start();
    let db = node.create_db("default", shop_spec("shop"));
    let mut model = Model::default();
    first_history(&db, &mut model);
    let point = last_serial(&db);
    let at_point = model.clone();
    assert_eq!(contents(&db), at_point.expected());
    let customers_at_point = db.alt_keys("orders", "customer", "c3");
    later_history(&db, &mut model);
    let before_restore = last_serial(&db);
    assert_ne!(contents(&db), at_point.expected());

    let done = restore(&db, json!({"serial": point}));
    assert_eq!(done["point"]["serial"], point, "{done}");
    assert_eq!(done["last_serial"], before_restore, "{done}");
    assert_eq!(done["into"], Value::Null);
    // Exactly the earlier contents, alternate keys included.
    assert_eq!(contents(&db), at_point.expected());
    assert_eq!(db.alt_keys("orders", "customer", "c3"), customers_at_point);
    assert_eq!(
        db.alt_keys("orders", "customer", "zed"),
        Vec::<String>::new()
    );
    // The restore continued the serials, and writes continue after it.
    let restored = &done["restored_serials"];
    assert_eq!(restored["first"], before_restore + 1, "{done}");
    let after_restore = last_serial(&db);
    assert_eq!(restored["last"], after_restore, "{done}");
    let w = db.put("orders", "after", json!({"customer": "amy"}), json!(1));
    assert_eq!(w.ok()["serial"], after_restore + 1, "{w}");
    let mut expected = at_point.clone();
    expected
        .orders
        .insert("after".into(), ("amy".into(), json!(1)));
    // The log shows the restore as ordinary updates after the old ones.
    let entry = db.log(before_restore + 1, 1);
    assert_eq!(entry.ok()["entries"][0]["serial"], before_restore + 1);

    // A restart recovers the restored state (not the one before), then takes writes.
    let status = node.terminate();
    assert!(status.success(), "SIGTERM exits cleanly, got {status}");
    node.restart();
    let db = node.db("default", "shop");
    assert_eq!(contents(&db), expected.expected());
    assert_eq!(last_serial(&db), after_restore + 1);
    expected.orders(&db, 900, 910, "v4");
    assert_eq!(contents(&db), expected.expected());
    assert_eq!(last_serial(&db), after_restore + 21);
    // And kill -9 too: the restore is in the log, durably.
    node.kill9();
    node.restart();
    assert_eq!(contents(&node.db("default", "shop")), expected.expected());
}

#[test]
fn restore_into_a_new_database_leaves_the_original_untouched() {
    let node = Node::start();
    let spec = json!({
        "name": "shop",
        "files": [{ "name": "orders", "alt_keys": ["customer"] }, { "name": "lines" }],
        "block_size": 1024,
        "retention": { "b_secs": 7200, "t_secs": 3600 },
    });
    let db = node.create_db("default", spec);
    let mut model = Model::default();
    first_history(&db, &mut model);
    let point = last_serial(&db);
    let at_point = model.clone();
    later_history(&db, &mut model);
    let (now, now_serial, now_sums) =
        (contents(&db), last_serial(&db), db.checksums().ok().clone());

    // Once by each method: the same contents, and the same blocks (records are
    // inserted in key order into an empty database).
    for (name, method) in [("by-replay", "replay"), ("by-undo", "undo")] {
        let done = restore(
            &db,
            json!({"serial": point, "into": name, "method": method}),
        );
        assert_eq!(done["method"], method, "{done}");
        assert_eq!(done["into"], name, "{done}");
        let copy = node.db("default", name);
        assert_eq!(contents(&copy), at_point.expected(), "{method}");
        let info = copy.info().ok().clone();
        assert_eq!(info["block_size"], 1024);
        assert_eq!(info["files"][0]["alt_keys"], json!(["customer"]));
        assert_eq!(info["retention"], json!({ "b_secs": 7200, "t_secs": 3600 }));
        // Its records are written into its own log, from serial 1.
        assert_eq!(done["restored_serials"]["first"], 1, "{done}");
    }
    let (a, b) = (
        node.db("default", "by-replay"),
        node.db("default", "by-undo"),
    );
    assert_eq!(a.checksums().ok(), b.checksums().ok());
    // The original has not changed at all.
    assert_eq!(contents(&db), now);
    assert_eq!(last_serial(&db), now_serial);
    assert_eq!(db.checksums().ok(), &now_sums);
    // The new database is an ordinary one: it takes writes.
    a.put("orders", "new", json!({"customer": "c1"}), json!(2))
        .ok();
    assert_eq!(a.data("orders", "new"), Some(json!(2)));
    assert_eq!(db.data("orders", "new"), None);
    // Both restores are listed under the source database.
    let listed = db.client().get(&db.path("/restores"));
    assert_eq!(
        listed.ok()["restores"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
}

#[test]
fn restore_by_timestamp_finds_the_last_update_stamped_at_or_before_it() {
    let node = Node::start();
    let db = node.create_db("default", shop_spec("shop"));
    let mut model = Model::default();
    first_history(&db, &mut model);
    let point = last_serial(&db);
    let at_point = model.clone();
    later_history(&db, &mut model);
    let stamp = |serial: u64| {
        let r = db.log(serial, 1);
        let entry = &r.ok()["entries"][0];
        assert_eq!(entry["serial"], serial, "{r}");
        entry["timestamp_us"].as_u64().expect("timestamp_us")
    };
    let (at, next) = (stamp(point), stamp(point + 1));
    assert!(next > at);

    // Any time from the point's update until just before the next one names it.
    for ts in [at, next - 1] {
        let preview = db.client().post(
            &restore_path(&db),
            &json!({"timestamp_us": ts, "dry_run": true}),
        );
        assert_eq!(preview.ok()["point"]["serial"], point, "{preview}");
        assert_eq!(preview.ok()["point"]["timestamp_us"], at, "{preview}");
    }
    let done = restore(&db, json!({"timestamp_us": next - 1}));
    assert_eq!(done["point"]["serial"], point, "{done}");
    assert_eq!(contents(&db), at_point.expected());
}

#[test]
fn a_dry_run_previews_exact_numbers_and_changes_nothing() {
    let node = Node::start();
    let db = node.create_db("default", shop_spec("shop"));
    let mut model = Model::default();
    first_history(&db, &mut model);
    let point = last_serial(&db);
    let at_point = model.clone();
    later_history(&db, &mut model);
    let last = last_serial(&db);
    let (now, sums) = (contents(&db), db.checksums().ok().clone());

    // What the restore must change, from the independent record.
    let records = |m: &Model| -> BTreeMap<String, Value> {
        let mut all = BTreeMap::new();
        for (k, (c, d)) in &m.orders {
            all.insert(format!("orders/{k}"), json!([c, d]));
        }
        for (k, d) in &m.lines {
            all.insert(format!("lines/{k}"), d.clone());
        }
        all
    };
    let (then, current) = (records(&at_point), records(&model));
    let inserted = then.keys().filter(|k| !current.contains_key(*k)).count();
    let deleted = current.keys().filter(|k| !then.contains_key(*k)).count();
    let updated = then
        .iter()
        .filter(|(k, v)| current.get(*k).is_some_and(|c| c != *v))
        .count();
    assert!(inserted > 0 && deleted > 0 && updated > 0);

    for method in ["undo", "replay"] {
        let r = db.client().post(
            &restore_path(&db),
            &json!({"serial": point, "dry_run": true, "method": method}),
        );
        let preview = r.expect(200);
        assert_eq!(preview["dry_run"], true, "{r}");
        assert_eq!(preview["method"], method, "{r}");
        assert_eq!(preview["point"]["serial"], point, "{r}");
        assert_eq!(preview["last_serial"], last, "{r}");
        let updates = if method == "undo" {
            last - point
        } else {
            point
        };
        assert_eq!(preview["updates"], updates, "{r}");
        assert_eq!(
            preview["records"],
            json!({"inserted": inserted, "updated": updated, "deleted": deleted}),
            "{r}"
        );
    }
    // Without a method the cheaper one is chosen: the point is far back from the
    // current state compared with the whole history, but either is correct; it is
    // reported.
    let auto = db.client().post(
        &restore_path(&db),
        &json!({"serial": last - 1, "dry_run": true}),
    );
    assert_eq!(
        auto.ok()["method"],
        "undo",
        "one update back is undone: {auto}"
    );
    assert_eq!(auto.ok()["updates"], 1, "{auto}");
    // Into a new database: every record of the point is inserted.
    let into = db.client().post(
        &restore_path(&db),
        &json!({"serial": point, "dry_run": true, "into": "copy"}),
    );
    assert_eq!(
        into.ok()["records"],
        json!({"inserted": then.len(), "updated": 0, "deleted": 0}),
        "{into}"
    );

    // Nothing changed, nothing was created, no restore ran.
    assert_eq!(contents(&db), now);
    assert_eq!(last_serial(&db), last);
    assert_eq!(db.checksums().ok(), &sums);
    node.db("default", "copy")
        .info()
        .expect_problem(404, "not-found");
    let listed = db.client().get(&db.path("/restores"));
    assert_eq!(listed.ok()["restores"], json!([]), "{listed}");
}

#[test]
fn points_outside_retention_are_refused_naming_the_oldest_reachable_one() {
    let node = Node::start();
    // Two snapshots: the A log is pruned up to the older one.
    let db = node.create_db("default", shop_spec("shop"));
    let mut model = Model::default();
    model.orders(&db, 0, 100, "v1");
    let early = last_serial(&db);
    model.orders(&db, 0, 100, "v2");
    let first = db.snapshot().expect(201)["serial"].as_u64().unwrap();
    model.orders(&db, 0, 100, "v3");
    db.snapshot().expect(201);
    model.orders(&db, 50, 60, "v4");
    let r = db
        .client()
        .post(&restore_path(&db), &json!({"serial": early}));
    let problem = r.expect_problem(422, "outside-retention");
    assert_eq!(problem["oldest_serial"], first, "{r}");
    assert!(problem["oldest_timestamp_us"].is_u64(), "{r}");
    // The database says how far back it reaches before anyone asks for a restore.
    let info = db.info();
    let reach = &info.ok()["restore_reach"];
    assert_eq!(reach["oldest_serial"], first, "{info}");
    assert_eq!(
        reach["oldest_timestamp_us"], problem["oldest_timestamp_us"],
        "{info}"
    );
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("serial {early}")) && detail.contains(&format!("serial {first}")),
        "{r}"
    );
    // By time, too: a time before the oldest reachable point.
    let ts = db.log(early, 1).ok()["entries"][0]["timestamp_us"].as_u64();
    let r = db
        .client()
        .post(&restore_path(&db), &json!({"timestamp_us": ts}));
    assert_eq!(
        r.expect_problem(422, "outside-retention")["oldest_serial"],
        first,
        "{r}"
    );
    // The oldest reachable point itself restores (from the older snapshot).
    let at_first = db.client().post(
        &restore_path(&db),
        &json!({"serial": first, "dry_run": true}),
    );
    assert_eq!(at_first.ok()["from_snapshot"], first, "{at_first}");
    // Nothing changed.
    assert_eq!(contents(&db), model.expected());

    // B logs with a retention of one second: undo no longer reaches back, replay (the
    // A log is whole) still does.
    let short = node.create_db(
        "default",
        json!({
            "name": "short",
            "files": [{ "name": "orders", "alt_keys": ["customer"] }, { "name": "lines" }],
            "retention": { "b_secs": 1, "t_secs": 3600 },
        }),
    );
    let mut model = Model::default();
    model.orders(&short, 0, 50, "v1");
    let point = last_serial(&short);
    let at_point = model.clone();
    model.orders(&short, 0, 50, "v2");
    let last = last_serial(&short);
    let expired = wait_until(deadline_in(Duration::from_secs(30)), || {
        short.log(last, 1).ok()["entries"][0]["b"].is_null()
    });
    assert!(expired, "B entries still present after 30 s");
    let r = short.client().post(
        &restore_path(&short),
        &json!({"serial": point, "method": "undo"}),
    );
    assert_eq!(
        r.expect_problem(422, "outside-retention")["oldest_serial"],
        last,
        "{r}"
    );
    let done = restore(&short, json!({"serial": point}));
    assert_eq!(done["method"], "replay", "{done}");
    assert_eq!(contents(&short), at_point.expected());
}

#[test]
fn bad_requests_get_precise_problems() {
    let node = Node::start();
    let db = node.create_db("default", shop_spec("shop"));
    let mut model = Model::default();
    model.orders(&db, 0, 10, "v1");
    let last = last_serial(&db);
    node.create_db("default", shop_spec("taken"));
    let post = |body: Value| db.client().post(&restore_path(&db), &body);

    post(json!({"serial": 1, "timestamp_us": 5})).expect_problem(400, "malformed-request");
    post(json!({})).expect_problem(400, "malformed-request");
    post(json!({"serial": 1, "colour": "red"})).expect_problem(400, "malformed-request");
    post(json!({"serial": 1, "method": "magic"})).expect_problem(400, "malformed-request");
    post(json!({"serial": -1})).expect_problem(400, "malformed-request");
    let r = post(json!({"serial": last + 1}));
    let detail = r.expect_problem(422, "point-in-future")["detail"]
        .as_str()
        .unwrap();
    assert!(detail.contains(&format!("serial {last}")), "{r}");
    post(json!({"timestamp_us": u64::MAX})).expect_problem(422, "point-in-future");
    post(json!({"serial": 1, "into": "taken"})).expect_problem(409, "already-exists");
    post(json!({"serial": 1, "into": "bad name"})).expect_problem(400, "malformed-request");
    node.client()
        .post(
            &node.db("default", "nope").path("/restore"),
            &json!({"serial": 1}),
        )
        .expect_problem(404, "not-found");
    node.client()
        .get(&db.path("/restores/12345"))
        .expect_problem(404, "not-found");
    // Operators may restore; readers and writers may not.
    for role in [Role::Reader, Role::Writer] {
        db.client()
            .with_token(&token("default", role))
            .post(&restore_path(&db), &json!({"serial": 1, "dry_run": true}))
            .expect_problem(403, "forbidden");
    }
    let operator = db.client().with_token(&token("default", Role::Operator));
    operator
        .post(&restore_path(&db), &json!({"serial": 1, "dry_run": true}))
        .expect(200);
    // None of it changed anything.
    assert_eq!(contents(&db), model.expected());
    assert_eq!(last_serial(&db), last);
}

#[test]
fn a_mirror_replica_follows_an_in_place_restore_and_cannot_be_restored_in_place() {
    let a = Node::start();
    let b = Node::start();
    let src = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    let mut model = Model::default();
    first_history(&src, &mut model);
    let point = last_serial(&src);
    let at_point = model.clone();
    later_history(&src, &mut model);
    create_link(&a, "shop", &b, "copy", json!({"mode": "async"}));
    let replica = b.db(DEFAULT_TENANT, "copy");
    wait_identical(&src, &replica, FINISH);

    // The replica takes its data from its link: no in-place restore, not even a dry run.
    for body in [
        json!({"serial": point}),
        json!({"serial": point, "dry_run": true}),
    ] {
        let r = replica.client().post(&restore_path(&replica), &body);
        let problem = r.expect_problem(409, "read-only-replica");
        assert!(
            problem["detail"].as_str().unwrap().contains("new database"),
            "{r}"
        );
    }
    // Into a new database on the replica's node is fine.
    restore(&replica, json!({"serial": point, "into": "copy-then"}));
    assert_eq!(
        contents(&b.db(DEFAULT_TENANT, "copy-then")),
        at_point.expected()
    );

    // The source restores in place; its restore travels the link like any update.
    restore(&src, json!({"serial": point}));
    wait_identical(&src, &replica, FINISH);
    assert_eq!(contents(&replica), at_point.expected());
}

#[test]
fn replay_with_corrected_logic_rolls_back_a_faulty_change_and_replays_it_through_a_fixed_transform()
{
    use doppel_server::plugins::builtin;
    let node = Node::start();
    let db = node.create_db(DEFAULT_TENANT, shop_spec("shop"));
    for i in 1..=5 {
        db.put(
            "orders",
            &format!("o-{i}"),
            json!({"customer": "ann"}),
            json!({"amount": i}),
        )
        .ok();
    }
    let point = last_serial(&db);
    // The faulty change: a client wrote "amout" for "amount" (and one record carries a
    // scalar "s" that a first, wrong fix trips over).
    for i in 6..=8 {
        let data = if i == 7 {
            json!({"amout": i, "s": "x"})
        } else {
            json!({"amout": i})
        };
        db.put(
            "orders",
            &format!("o-{i}"),
            json!({"customer": "bob"}),
            data,
        )
        .ok();
    }
    db.put(
        "orders",
        "o-1",
        json!({"customer": "ann"}),
        json!({"amout": 100}),
    )
    .ok();
    db.delete("orders", "o-2").ok();
    let before = contents(&db);
    for name in ["wrong", "fix"] {
        upload_plugin(&node, name, "transform", builtin::RENAME);
    }
    let replay = db.path("/replay");
    let body = |plugin: &str, config: Value, dry_run: bool| json!({"from_serial": point, "transform": {"plugin": plugin, "config": config}, "dry_run": dry_run});
    let fix = json!({"default": {"orders": {"fields": {"amout": "amount"}}}});
    // A dry run says what would be replayed and changes nothing.
    let preview = node
        .post(&replay, &body("fix@1", fix.clone(), true))
        .ok()
        .clone();
    assert_eq!(preview["transactions"], 5, "{preview}");
    assert_eq!(preview["operations"], 5);
    assert_eq!(contents(&db), before);
    // A transform that rejects a record refuses the replay before anything changes.
    let wrong = json!({"default": {"orders": {"fields": {"amout": "s.amout"}}}});
    let refused = node
        .post(&replay, &body("wrong@1", wrong, false))
        .expect_problem(422, "replay-rejected")
        .clone();
    assert!(
        refused["detail"].as_str().unwrap().contains("record 'o-7'"),
        "{refused}"
    );
    assert_eq!(contents(&db), before);
    // The corrected transform: back to the point, then forward through the fix.
    let done = node.post(&replay, &body("fix@1", fix, false)).ok().clone();
    assert_eq!(done["transactions"], 5, "{done}");
    let orders: BTreeMap<String, Value> = db
        .contents("orders")
        .into_iter()
        .map(|r| (r["key"].as_str().unwrap().to_string(), r["data"].clone()))
        .collect();
    let want: BTreeMap<String, Value> = [
        ("o-1", json!({"amount": 100})),
        ("o-3", json!({"amount": 3})),
        ("o-4", json!({"amount": 4})),
        ("o-5", json!({"amount": 5})),
        ("o-6", json!({"amount": 6})),
        ("o-7", json!({"amount": 7, "s": "x"})),
        ("o-8", json!({"amount": 8})),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(orders, want);
    assert_eq!(db.alt_keys("orders", "customer", "bob").len(), 3);
    // Writes go on after it; bad requests are refused precisely.
    db.put("orders", "o-9", json!({}), json!({"amount": 9}))
        .ok();
    node.post(&replay, &json!({"from_serial": 10_000_000}))
        .expect_problem(422, "invalid-request");
    node.post(
        &replay,
        &json!({"from_serial": 1, "transform": {"plugin": "nope@1"}}),
    )
    .expect_problem(404, "not-found");
}
