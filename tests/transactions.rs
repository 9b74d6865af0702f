//! End-to-end tests of Doppel transactions against a real server process:
//! atomic batch transactions (all ops or none, with the failing `op_index`);
//! interactive transactions (ops invisible until commit, cancel restores
//! before images, record locks held until commit/cancel); lock-wait timeouts
//! (409 lock-timeout); deadlock detection (409 deadlock for the victim while
//! the survivor proceeds); and batches waiting on an interactive lock.

use std::time::Duration;

use doppel_tests::*;

fn ann() -> Value {
    json!({ "customer": "ann" })
}

fn customer(name: &str) -> Value {
    json!({ "customer": name })
}

#[test]
fn batch_applies_every_op_atomically() {
    let node = Node::start();
    let db = node.create_db("default", shop_spec("shop"));
    db.put("orders", "old", ann(), json!("old")).ok();
    db.put("lines", "gone", json!({}), json!("gone")).ok();

    let mut ops = vec![];
    for i in 0..10 {
        ops.push(op::insert_alt(
            "orders",
            &format!("o{i}"),
            customer("bob"),
            json!({ "i": i }),
        ));
        ops.push(op::upsert("lines", &format!("l{i}"), json!(i)));
    }
    ops.push(op::update_alt(
        "orders",
        "old",
        customer("bob"),
        json!("new"),
    ));
    ops.push(op::delete("lines", "gone"));
    let r = db.batch(json!(ops));
    let res = r.ok().clone();
    assert_eq!(res["count"], json!(22), "{r}");
    let txn = res["txn"].as_u64().expect("txn");
    let first = res["first_serial"].as_u64().expect("first_serial");
    let last = res["last_serial"].as_u64().expect("last_serial");
    assert!(last >= first + 21, "one serial per op at least: {r}");

    for i in 0..10 {
        assert_eq!(db.data("orders", &format!("o{i}")), Some(json!({ "i": i })));
        assert_eq!(db.data("lines", &format!("l{i}")), Some(json!(i)));
    }
    assert_eq!(db.data("orders", "old"), Some(json!("new")));
    assert_eq!(db.data("lines", "gone"), None);
    assert_eq!(db.alt_keys("orders", "customer", "bob").len(), 11);
    assert_eq!(
        db.alt_keys("orders", "customer", "ann"),
        Vec::<String>::new()
    );

    // The log holds the batch as one transaction within [first, last].
    let entries = db.log_from(first);
    let ours: Vec<&Value> = entries.iter().filter(|e| e["txn"] == json!(txn)).collect();
    assert!(ours.len() >= 22, "batch entries in the log: {entries:#?}");
    for e in &ours {
        let s = e["serial"].as_u64().unwrap();
        assert!(
            (first..=last).contains(&s),
            "entry within the batch serials: {e}"
        );
    }
    let info = db.info();
    assert_eq!(info.ok()["last_serial"], json!(last), "{info}");

    // A later batch gets a later transaction and later serials.
    let r = db.batch(json!([op::insert("lines", "later", json!(1))]));
    assert!(r.ok()["txn"].as_u64() > Some(txn), "{r}");
    assert!(r["first_serial"].as_u64() > Some(last), "{r}");
}

#[test]
fn batch_refused_at_op_5_leaves_nothing_visible() {
    let node = Node::start();
    let db = node.create_db("default", shop_spec("shop"));
    db.put("orders", "p1", ann(), json!("p1 v1")).ok();
    db.put("orders", "p2", ann(), json!("p2 v1")).ok();
    db.put("orders", "p3", customer("bob"), json!("p3 v1")).ok();
    db.put("orders", "dup", ann(), json!("dup v1")).ok();
    let before = db.info().ok().clone();
    // Contents, not placement: undo restores before images, and may leave records at
    // other offsets (the log replays to the same layout on any copy).
    let before_scan = db.contents("orders");

    let r = db.batch(json!([
        op::update_alt("orders", "p1", customer("bob"), json!("p1 v2")), // 0
        op::delete("orders", "p2"),                                      // 1
        op::insert_alt("orders", "n1", ann(), json!("n1")),              // 2
        op::upsert_alt("orders", "p3", ann(), json!("p3 v2")),           // 3
        op::insert("lines", "l1", json!("l1")),                          // 4
        op::insert_alt("orders", "dup", ann(), json!("dup v2")),         // 5: duplicate
        op::insert("lines", "l2", json!("l2")),                          // 6
    ]));
    let p = r.expect_problem(409, "duplicate-key");
    assert_eq!(p["op_index"], json!(5), "{r}");

    // Every record is back at its before image, and nothing new exists.
    assert_eq!(db.contents("orders"), before_scan, "orders unchanged");
    assert_eq!(db.data("orders", "p1"), Some(json!("p1 v1")));
    assert_eq!(db.data("orders", "p2"), Some(json!("p2 v1")));
    assert_eq!(db.data("orders", "p3"), Some(json!("p3 v1")));
    assert_eq!(db.data("orders", "dup"), Some(json!("dup v1")));
    assert_eq!(db.data("orders", "n1"), None);
    assert_eq!(db.data("lines", "l1"), None);
    assert_eq!(db.data("lines", "l2"), None);
    assert_eq!(
        db.alt_keys("orders", "customer", "ann"),
        vec!["dup", "p1", "p2"]
    );
    assert_eq!(db.alt_keys("orders", "customer", "bob"), vec!["p3"]);
    let after = db.info();
    assert_eq!(
        after.ok()["files"],
        before["files"],
        "record counts unchanged: {after}"
    );

    // Other refusals report their op too.
    let r = db.batch(json!([
        op::insert("lines", "a", json!(1)),
        op::update("lines", "missing", json!(2)),
    ]));
    assert_eq!(
        r.expect_problem(404, "not-found")["op_index"],
        json!(1),
        "{r}"
    );
    let r = db.batch(json!([
        op::insert("lines", "a", json!(1)),
        op::insert("lines", "b", json!(1)),
        op::delete("lines", "missing"),
    ]));
    assert_eq!(
        r.expect_problem(404, "not-found")["op_index"],
        json!(2),
        "{r}"
    );
    let r = db.batch(json!([
        op::insert("lines", "a", json!(1)),
        op::insert("nofile", "b", json!(1)),
    ]));
    assert_eq!(
        r.expect_problem(404, "not-found")["op_index"],
        json!(1),
        "{r}"
    );
    // A key inserted twice in one batch is a duplicate at the second insert.
    let r = db.batch(json!([
        op::insert("lines", "twice", json!(1)),
        op::insert("lines", "twice", json!(2)),
    ]));
    assert_eq!(
        r.expect_problem(409, "duplicate-key")["op_index"],
        json!(1),
        "{r}"
    );
    assert_eq!(db.data("lines", "a"), None);
    assert_eq!(db.data("lines", "twice"), None);
    assert_eq!(db.record_count("lines"), 0);

    // And the database still takes the corrected batch.
    db.batch(json!([
        op::update_alt("orders", "p1", customer("bob"), json!("p1 v2")),
        op::insert("lines", "l1", json!("l1")),
    ]))
    .ok();
    assert_eq!(db.data("orders", "p1"), Some(json!("p1 v2")));
}

#[test]
fn interactive_ops_are_invisible_until_commit() {
    let node = Node::start();
    let db = node.create_db("default", shop_spec("shop"));
    db.put("orders", "e1", ann(), json!("e1 v1")).ok();
    db.put("orders", "e2", ann(), json!("e2 v1")).ok();
    let serial_before = db.info().ok()["last_serial"].clone();

    let txn = db.begin();
    let r = db.ops(
        txn,
        json!([
            op::insert_alt("orders", "i1", ann(), json!("i1")),
            op::update_alt("orders", "e1", customer("bob"), json!("e1 v2")),
            op::delete("orders", "e2"),
        ]),
    );
    assert_eq!(r.ok()["txn"], json!(txn), "{r}");
    assert_eq!(r["pending"], json!(3), "{r}");
    let r = db.ops(txn, json!([op::insert("lines", "l1", json!("l1"))]));
    assert_eq!(r.ok()["pending"], json!(4), "pending accumulates: {r}");

    let r = db.txn(txn);
    let state = r.ok();
    assert_eq!(state["txn"], json!(txn), "{r}");
    assert_eq!(state["pending"], json!(4), "{r}");
    assert_eq!(state["state"], json!("open"), "{r}");

    // Readers (record reads, scans, alt lookups, info, log) see the old state
    // and are not blocked by the transaction's locks.
    assert_eq!(db.data("orders", "i1"), None);
    assert_eq!(db.data("orders", "e1"), Some(json!("e1 v1")));
    assert_eq!(db.data("orders", "e2"), Some(json!("e2 v1")));
    assert_eq!(db.data("lines", "l1"), None);
    assert_eq!(
        keys_of(&db.scan("orders", None, None, None).ok()["records"]),
        vec!["e1", "e2"]
    );
    assert_eq!(db.alt_keys("orders", "customer", "ann"), vec!["e1", "e2"]);
    assert_eq!(
        db.alt_keys("orders", "customer", "bob"),
        Vec::<String>::new()
    );
    assert_eq!(db.info().ok()["last_serial"], serial_before);
    assert_eq!(db.record_count("orders"), 2);

    let r = db.commit(txn);
    let done = r.ok().clone();
    assert_eq!(done["txn"], json!(txn), "{r}");
    assert_eq!(done["count"], json!(4), "{r}");
    assert!(
        done["first_serial"].as_u64() > serial_before.as_u64(),
        "{r}"
    );
    assert!(
        done["last_serial"].as_u64() >= done["first_serial"].as_u64(),
        "{r}"
    );

    assert_eq!(db.data("orders", "i1"), Some(json!("i1")));
    assert_eq!(db.data("orders", "e1"), Some(json!("e1 v2")));
    assert_eq!(db.data("orders", "e2"), None);
    assert_eq!(db.data("lines", "l1"), Some(json!("l1")));
    assert_eq!(db.alt_keys("orders", "customer", "ann"), vec!["i1"]);
    assert_eq!(db.alt_keys("orders", "customer", "bob"), vec!["e1"]);
    assert_eq!(db.info().ok()["last_serial"], done["last_serial"]);

    // A committed transaction is no longer open.
    let r = db.txn(txn);
    assert!(r.status == 404 || r["state"] != json!("open"), "{r}");
    let r = db.ops(txn, json!([op::insert("lines", "late", json!(1))]));
    assert_ne!(r.status, 200, "ops after commit are refused: {r}");
    assert_eq!(db.data("lines", "late"), None);
}

#[test]
fn interactive_refused_op_applies_nothing() {
    let node = Node::start();
    let db = node.create_db("default", shop_spec("shop"));
    db.put("lines", "x", json!({}), json!("x")).ok();

    // Malformed ops are refused by the ops call itself.
    let t0 = db.begin();
    let r = db.ops(t0, json!([op::insert("lines", "", json!(1))]));
    assert_eq!(
        r.expect_problem(400, "empty-key")["op_index"],
        json!(0),
        "{r}"
    );
    let _ = db.cancel(t0);

    // A duplicate insert is refused either when the op is added or at commit
    // (the contract allows ops to be checked when applied); either way no op
    // of the transaction takes effect.
    let txn = db.begin();
    db.ops(txn, json!([op::insert("lines", "a", json!("a"))]))
        .ok();
    let r = db.ops(
        txn,
        json!([
            op::insert("lines", "b", json!("b")),
            op::insert("lines", "x", json!("x2")),
        ]),
    );
    if r.status == 200 {
        assert_eq!(r["pending"], json!(3), "{r}");
        let c = db.commit(txn);
        assert_eq!(
            c.expect_problem(409, "duplicate-key")["op_index"],
            json!(2),
            "{c}"
        );
    } else {
        assert_eq!(
            r.expect_problem(409, "duplicate-key")["op_index"],
            json!(1),
            "{r}"
        );
        let _ = db.cancel(txn);
    }
    assert_eq!(db.data("lines", "a"), None);
    assert_eq!(db.data("lines", "b"), None);
    assert_eq!(db.data("lines", "x"), Some(json!("x")));
    assert_eq!(db.record_count("lines"), 1);
    let r = db.txn(txn);
    assert!(r.status == 404 || r["state"] != json!("open"), "{r}");

    // Its locks are released: the keys are free again.
    let t2 = db.begin();
    db.ops_with_timeout(
        t2,
        json!([
            op::insert("lines", "a", json!("t2")),
            op::update("lines", "x", json!("t2"))
        ]),
        200,
    )
    .ok();
    db.commit(t2).ok();
    assert_eq!(db.data("lines", "a"), Some(json!("t2")));
    assert_eq!(db.data("lines", "x"), Some(json!("t2")));
}

#[test]
fn cancel_restores_every_before_image_and_releases_locks() {
    let node = Node::start();
    let db = node.create_db("default", shop_spec("shop"));
    for i in 1..=3 {
        db.put("orders", &format!("r{i}"), ann(), json!({ "v": i }))
            .ok();
    }
    let before = db.scan_all("orders");
    let before_info = db.info().ok().clone();

    let txn = db.begin();
    db.ops(
        txn,
        json!([
            op::update_alt("orders", "r1", customer("bob"), json!({ "v": 10 })),
            op::delete("orders", "r2"),
        ]),
    )
    .ok();
    db.ops(
        txn,
        json!([
            op::insert_alt("orders", "r4", ann(), json!({ "v": 4 })),
            op::upsert_alt("orders", "r3", customer("cy"), json!({ "v": 30 })),
            op::update("orders", "r1", json!({ "v": 11 })),
        ]),
    )
    .ok();

    let r = db.cancel(txn);
    assert_eq!(r.ok()["txn"], json!(txn), "{r}");
    assert_eq!(r["cancelled"], json!(true), "{r}");

    assert_eq!(
        db.scan_all("orders"),
        before,
        "every record at its before image"
    );
    assert_eq!(db.data("orders", "r4"), None);
    assert_eq!(
        db.alt_keys("orders", "customer", "ann"),
        vec!["r1", "r2", "r3"]
    );
    assert_eq!(
        db.alt_keys("orders", "customer", "bob"),
        Vec::<String>::new()
    );
    assert_eq!(
        db.alt_keys("orders", "customer", "cy"),
        Vec::<String>::new()
    );
    let info = db.info();
    assert_eq!(info.ok()["files"], before_info["files"], "{info}");
    assert_eq!(
        info["last_serial"], before_info["last_serial"],
        "cancel publishes nothing: {info}"
    );

    let r = db.txn(txn);
    assert!(r.status == 404 || r["state"] != json!("open"), "{r}");
    assert_ne!(
        db.commit(txn).status,
        200,
        "a cancelled transaction cannot commit"
    );

    // The locks are gone: another transaction takes the same records at once.
    let t2 = db.begin();
    db.ops_with_timeout(
        t2,
        json!([
            op::update("orders", "r1", json!("t2")),
            op::delete("orders", "r2"),
            op::insert("orders", "r4", json!("t2"))
        ]),
        200,
    )
    .ok();
    db.commit(t2).ok();
    assert_eq!(db.data("orders", "r1"), Some(json!("t2")));
    assert_eq!(db.data("orders", "r2"), None);
    assert_eq!(db.data("orders", "r4"), Some(json!("t2")));
}

#[test]
fn lock_wait_times_out_with_409_lock_timeout() {
    let node = Node::start();
    let db = node.create_db("default", shop_spec("shop"));
    db.put("lines", "k", json!({}), json!("original")).ok();

    let a = db.begin();
    db.ops(a, json!([op::update("lines", "k", json!("A"))]))
        .ok();

    let b = db.begin();
    let r = db.ops_with_timeout(b, json!([op::update("lines", "k", json!("B"))]), 200);
    r.expect_problem(409, "lock-timeout");
    // Deleting and inserting over a locked key wait the same way.
    let c = db.begin();
    let r = db.ops_with_timeout(c, json!([op::delete("lines", "k")]), 100);
    r.expect_problem(409, "lock-timeout");
    let _ = db.cancel(c);
    let _ = db.cancel(b);

    // Unlocked records are not affected by A's lock.
    let d = db.begin();
    db.ops_with_timeout(d, json!([op::insert("lines", "other", json!("D"))]), 200)
        .ok();
    db.commit(d).ok();

    assert_eq!(db.data("lines", "k"), Some(json!("original")));
    db.commit(a).ok();
    assert_eq!(db.data("lines", "k"), Some(json!("A")));
    assert_eq!(db.data("lines", "other"), Some(json!("D")));

    // After A's commit the record is free again.
    let e = db.begin();
    db.ops_with_timeout(e, json!([op::update("lines", "k", json!("E"))]), 200)
        .ok();
    db.commit(e).ok();
    assert_eq!(db.data("lines", "k"), Some(json!("E")));
}

#[test]
fn deadlock_victim_gets_409_and_survivor_commits() {
    let node = Node::start();
    let db = node.create_db("default", shop_spec("shop"));
    db.put("lines", "x", json!({}), json!("x0")).ok();
    db.put("lines", "y", json!({}), json!("y0")).ok();

    let a = db.begin();
    let b = db.begin();
    db.ops(a, json!([op::update("lines", "x", json!({ "by": "A" }))]))
        .ok();
    db.ops(b, json!([op::update("lines", "y", json!({ "by": "B" }))]))
        .ok();

    // A wants y (held by B) while B wants x (held by A): whichever order the
    // server sees the requests in, the waits form a cycle.
    let (ra, rb) = std::thread::scope(|s| {
        let db_a = db.clone();
        let ha =
            s.spawn(move || db_a.ops(a, json!([op::update("lines", "y", json!({ "by": "A" }))])));
        let db_b = db.clone();
        let hb =
            s.spawn(move || db_b.ops(b, json!([op::update("lines", "x", json!({ "by": "B" }))])));
        (ha.join().unwrap(), hb.join().unwrap())
    });

    let (survivor, victim, name, survivor_resp, victim_resp) = match (ra.status, rb.status) {
        (200, _) => (a, b, "A", &ra, &rb),
        (_, 200) => (b, a, "B", &rb, &ra),
        _ => panic!("one side must proceed:\nA: {ra}\nB: {rb}"),
    };
    victim_resp.expect_problem(409, "deadlock");
    assert_eq!(survivor_resp["pending"], json!(2), "{survivor_resp}");

    // The victim was cancelled: its transaction is gone and cannot commit.
    let r = db.txn(victim);
    assert!(
        r.status == 404 || r["state"] != json!("open"),
        "victim is not open: {r}"
    );
    assert_ne!(db.commit(victim).status, 200, "victim cannot commit");

    db.commit(survivor).ok();
    assert_eq!(db.data("lines", "x"), Some(json!({ "by": name })));
    assert_eq!(db.data("lines", "y"), Some(json!({ "by": name })));
}

#[test]
fn batch_waits_for_an_interactive_lock_and_proceeds_after_commit() {
    let node = Node::start();
    let db = node.create_db("default", shop_spec("shop"));
    db.put("lines", "k", json!({}), json!("original")).ok();

    let a = db.begin();
    let r = db.ops(a, json!([op::update("lines", "k", json!("A"))]));
    r.ok();

    std::thread::scope(|s| {
        let db_batch = db.clone();
        let batch = s.spawn(move || {
            db_batch.batch(json!([
                op::insert("lines", "free", json!("batch")),
                op::update("lines", "k", json!("batch")),
            ]))
        });

        // While A holds the lock, the batch cannot have taken effect, and
        // readers are not blocked. (A short observation window, not a timing
        // assertion: on a slow machine it only checks less.)
        let window = deadline_in(Duration::from_millis(300));
        wait_until(window, || {
            assert_eq!(db.data("lines", "k"), Some(json!("original")));
            assert_eq!(db.data("lines", "free"), None, "batch is all-or-nothing");
            false
        });
        assert!(
            !batch.is_finished(),
            "the batch waits for A's lock (default 5 s)"
        );

        let committed = db.commit(a);
        committed.ok();
        let r = batch.join().unwrap();
        let res = r.ok();
        assert!(
            res["first_serial"].as_u64() > committed["last_serial"].as_u64(),
            "batch is serialised after A: {r} vs {committed}"
        );
    });
    assert_eq!(db.data("lines", "k"), Some(json!("batch")));
    assert_eq!(db.data("lines", "free"), Some(json!("batch")));
}
