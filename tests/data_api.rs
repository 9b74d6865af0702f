//! End-to-end tests of Doppel's data API against a real server process:
//! health, tenants and databases; record CRUD and upsert; key-ordered scans
//! with `from`/`to`/`limit` and `next` pagination; alt-key lookups; the log's
//! A/B/T images; block checksums; and every documented error a client can
//! provoke (404 not-found, 400 malformed-request / empty-key, 409
//! duplicate-key / already-exists, 413 record-too-large / payload-too-large,
//! 507 quota-exceeded), each as an `application/problem+json` body.

use doppel_tests::*;

fn ann() -> Value {
    json!({ "customer": "ann" })
}

fn customer(name: &str) -> Value {
    json!({ "customer": name })
}

#[test]
fn health_tenants_and_database_lifecycle() {
    let node = Node::start();

    let health = node.get("/v1/health");
    assert_eq!(health.ok()["status"], json!("ok"), "{health}");
    assert_eq!(health.media_type().as_deref(), Some("application/json"));

    let tenants = node.get("/v1/tenants");
    let names: Vec<&Value> = tenants
        .ok()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["name"])
        .collect();
    assert!(
        names.contains(&&json!("default")),
        "default tenant listed: {tenants}"
    );

    node.post("/v1/tenants", &json!({ "name": "acme" }))
        .expect(201);
    node.post("/v1/tenants", &json!({ "name": "acme" }))
        .expect_problem(409, "already-exists");
    let tenants = node.get("/v1/tenants");
    let names: Vec<&Value> = tenants
        .ok()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["name"])
        .collect();
    assert!(
        names.contains(&&json!("acme")) && names.contains(&&json!("default")),
        "{tenants}"
    );

    let spec = json!({
        "name": "shop",
        "files": [{ "name": "orders", "alt_keys": ["customer"] }, { "name": "lines" }],
        "block_size": 4096,
        "durability": "group",
        "memory_quota_bytes": 67108864,
        "retention": { "b_secs": 86400, "t_secs": 604800 }
    });
    let created = node.post("/v1/tenants/acme/databases", &spec);
    let info = created.expect(201);
    assert_eq!(info["name"], json!("shop"), "{created}");
    assert_eq!(info["block_size"], json!(4096), "{created}");
    assert_eq!(info["durability"], json!("group"), "{created}");
    assert_eq!(info["memory_quota_bytes"], json!(67108864), "{created}");
    for field in ["memory_bytes", "last_serial", "snapshot_serial"] {
        assert!(info[field].is_u64(), "info.{field} is a number: {created}");
    }
    let files = info["files"].as_array().expect("files array");
    assert_eq!(files.len(), 2, "{created}");
    assert_eq!(files[0]["name"], json!("orders"));
    assert_eq!(files[0]["alt_keys"], json!(["customer"]));
    assert_eq!(files[0]["records"], json!(0));
    assert_eq!(files[1]["name"], json!("lines"));
    assert_eq!(files[1]["alt_keys"], json!([]));

    node.post("/v1/tenants/acme/databases", &spec)
        .expect_problem(409, "already-exists");
    // Same name in another tenant is a different database.
    node.create_db("default", shop_spec("shop"));

    let list = node.get("/v1/tenants/acme/databases");
    let dbs = list.ok().as_array().expect("array");
    assert_eq!(dbs.len(), 1, "{list}");
    assert_eq!(dbs[0]["name"], json!("shop"));

    let db = node.db("acme", "shop");
    db.put("orders", "o1", ann(), json!(1)).ok();
    let info = db.info();
    assert_eq!(info.ok()["files"][0]["records"], json!(1), "{info}");

    let deleted = node.delete("/v1/tenants/acme/databases/shop");
    deleted.expect(204);
    node.get("/v1/tenants/acme/databases/shop")
        .expect_problem(404, "not-found");
    db.get("orders", "o1").expect_problem(404, "not-found");
    let list = node.get("/v1/tenants/acme/databases");
    assert_eq!(list.ok(), &json!([]), "{list}");
    // The other tenant's database is untouched.
    node.get("/v1/tenants/default/databases/shop").ok();
    // The name can be reused.
    node.create_db("acme", shop_spec("shop"));
    assert_eq!(node.db("acme", "shop").data("orders", "o1"), None);
}

#[test]
fn crud_round_trip_and_upsert_created_flag() {
    let node = Node::start();
    let db = node.create_db("default", shop_spec("shop"));

    let r = db.put(
        "orders",
        "o1",
        ann(),
        json!({ "total": 12.5, "items": ["a", "b"] }),
    );
    let put1 = r.ok().clone();
    assert_eq!(put1["created"], json!(true), "{r}");
    assert!(put1["txn"].is_u64() && put1["serial"].is_u64(), "{r}");

    let r = db.get("orders", "o1");
    let rec = r.ok();
    assert_eq!(rec["key"], json!("o1"));
    assert_eq!(rec["alt"], ann());
    assert_eq!(rec["data"], json!({ "total": 12.5, "items": ["a", "b"] }));
    assert!(rec["block"].is_u64() && rec["offset"].is_u64(), "{r}");
    assert_eq!(r.media_type().as_deref(), Some("application/json"));

    let r = db.put("orders", "o1", customer("bob"), json!("second"));
    let put2 = r.ok().clone();
    assert_eq!(put2["created"], json!(false), "{r}");
    assert!(
        put2["serial"].as_u64() > put1["serial"].as_u64(),
        "serials grow: {r}"
    );
    assert!(
        put2["txn"].as_u64() > put1["txn"].as_u64(),
        "txns grow: {r}"
    );
    let r = db.get("orders", "o1");
    assert_eq!(r.ok()["data"], json!("second"));
    assert_eq!(r["alt"], customer("bob"));

    let r = db.insert("orders", "o2", ann(), json!(null));
    let ins = r.expect(201);
    assert!(ins["txn"].is_u64() && ins["serial"].is_u64(), "{r}");
    db.insert("orders", "o2", customer("zed"), json!("dup"))
        .expect_problem(409, "duplicate-key");
    assert_eq!(db.data("orders", "o2"), Some(json!(null)));
    assert_eq!(
        db.get("orders", "o2")["alt"],
        ann(),
        "alt unchanged by refused insert"
    );

    // A file without alt keys.
    db.put("lines", "l1", json!({}), json!([1, 2, 3])).ok();
    assert_eq!(db.data("lines", "l1"), Some(json!([1, 2, 3])));
    assert_eq!(db.record_count("orders"), 2);
    assert_eq!(db.record_count("lines"), 1);

    let r = db.delete("orders", "o1");
    let del = r.ok();
    assert!(del["txn"].is_u64(), "{r}");
    assert!(del["serial"].as_u64() > put2["serial"].as_u64(), "{r}");
    db.get("orders", "o1").expect_problem(404, "not-found");
    db.delete("orders", "o1").expect_problem(404, "not-found");
    assert_eq!(db.record_count("orders"), 1);

    // Re-creating a deleted key is a create again.
    let r = db.put("orders", "o1", ann(), json!(3));
    assert_eq!(r.ok()["created"], json!(true), "{r}");

    // Keys with characters that need escaping round-trip.
    let odd = "a b/c?d#é";
    db.put("orders", odd, ann(), json!("odd")).ok();
    let r = db.get("orders", odd);
    assert_eq!(r.ok()["key"], json!(odd), "{r}");
}

#[test]
fn scan_orders_by_key_with_from_to_limit_and_next() {
    let node = Node::start();
    let db = node.create_db("default", shop_spec("shop"));

    // Insert in a scrambled order.
    let mut keys: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
    let order: Vec<usize> = (0..25).map(|i| (i * 7) % 25).collect();
    for &i in &order {
        db.put("lines", &keys[i], json!({}), json!({ "i": i })).ok();
    }
    keys.sort();

    let all = db.scan("lines", None, None, None);
    assert_eq!(keys_of(&all.ok()["records"]), keys, "{all}");
    assert_eq!(all["next"], Value::Null, "{all}");
    let first = &all["records"][0];
    assert_eq!(first["data"], json!({ "i": 0 }));
    assert!(first["block"].is_u64() && first["offset"].is_u64(), "{all}");

    // Inclusive bounds.
    let r = db.scan("lines", Some("k05"), Some("k09"), None);
    assert_eq!(keys_of(&r.ok()["records"]), keys[5..=9].to_vec(), "{r}");
    // Bounds that are not keys.
    let r = db.scan("lines", Some("k05x"), Some("k10a"), None);
    assert_eq!(keys_of(&r.ok()["records"]), keys[6..=10].to_vec(), "{r}");
    let r = db.scan("lines", Some("k20"), None, None);
    assert_eq!(keys_of(&r.ok()["records"]), keys[20..].to_vec(), "{r}");
    let r = db.scan("lines", None, Some("k02"), None);
    assert_eq!(keys_of(&r.ok()["records"]), keys[..=2].to_vec(), "{r}");
    let r = db.scan("lines", Some("z"), None, None);
    assert_eq!(r.ok()["records"], json!([]), "{r}");
    assert_eq!(r["next"], Value::Null, "{r}");

    // Pagination: 10 + 10 + 5, following next.
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= 5, "pagination does not end");
        let r = db.scan("lines", from.as_deref(), None, Some(10));
        let page = keys_of(&r.ok()["records"]);
        assert!(page.len() <= 10, "limit respected: {r}");
        seen.extend(page.clone());
        match &r["next"] {
            Value::Null => {
                assert!(page.len() < 10, "a full page must offer next: {r}");
                break;
            }
            Value::String(next) => {
                assert_eq!(page.len(), 10, "a short page must not offer next: {r}");
                assert!(
                    next.as_str() > page.last().unwrap().as_str(),
                    "next after page: {r}"
                );
                from = Some(next.clone());
            }
            other => panic!("next must be a key or null, got {other}: {r}"),
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, keys, "every key exactly once, in order");

    // Pagination within a `to` bound.
    let r = db.scan("lines", Some("k03"), Some("k08"), Some(4));
    assert_eq!(keys_of(&r.ok()["records"]), keys[3..7].to_vec(), "{r}");
    let next = r["next"].as_str().expect("next").to_string();
    let r = db.scan("lines", Some(&next), Some("k08"), Some(4));
    assert_eq!(keys_of(&r.ok()["records"]), keys[7..=8].to_vec(), "{r}");
    assert_eq!(r["next"], Value::Null, "{r}");

    // Deleted records disappear from scans.
    db.delete("lines", "k03").ok();
    let r = db.scan("lines", Some("k02"), Some("k04"), None);
    assert_eq!(keys_of(&r.ok()["records"]), vec!["k02", "k04"], "{r}");

    // Bad query parameters.
    let base = db.path("/files/lines/records");
    node.get(&format!("{base}?limit=abc"))
        .expect_problem(400, "malformed-request");
    node.get(&format!("{base}?limit=-1"))
        .expect_problem(400, "malformed-request");
}

#[test]
fn alt_lookup_returns_all_matches_and_follows_changes() {
    let node = Node::start();
    let db = node.create_db("default", shop_spec("shop"));

    db.put("orders", "o4", ann(), json!(4)).ok();
    db.put("orders", "o2", customer("bob"), json!(2)).ok();
    db.put("orders", "o1", ann(), json!(1)).ok();
    db.insert("orders", "o3", ann(), json!(3)).expect(201);

    let r = db.alt("orders", "customer", "ann");
    let recs = r.ok()["records"].as_array().unwrap();
    assert_eq!(keys_of(&r["records"]), vec!["o1", "o3", "o4"], "{r}");
    assert_eq!(recs[0]["data"], json!(1), "{r}");
    assert_eq!(recs[0]["alt"], ann(), "{r}");
    assert!(
        recs[0]["block"].is_u64() && recs[0]["offset"].is_u64(),
        "full records: {r}"
    );
    assert_eq!(db.alt_keys("orders", "customer", "bob"), vec!["o2"]);

    // An update moves a record between alt values.
    db.put("orders", "o3", customer("bob"), json!("3b")).ok();
    assert_eq!(db.alt_keys("orders", "customer", "ann"), vec!["o1", "o4"]);
    assert_eq!(db.alt_keys("orders", "customer", "bob"), vec!["o2", "o3"]);
    let r = db.alt("orders", "customer", "bob");
    assert_eq!(r.ok()["records"][1]["data"], json!("3b"), "{r}");

    // Updates through a transaction too.
    db.batch(json!([op::update_alt(
        "orders",
        "o4",
        customer("cy"),
        json!(44)
    )]))
    .ok();
    assert_eq!(db.alt_keys("orders", "customer", "ann"), vec!["o1"]);
    assert_eq!(db.alt_keys("orders", "customer", "cy"), vec!["o4"]);

    // Deletes remove matches.
    db.delete("orders", "o1").ok();
    assert_eq!(
        db.alt_keys("orders", "customer", "ann"),
        Vec::<String>::new()
    );
    db.delete("orders", "o2").ok();
    assert_eq!(db.alt_keys("orders", "customer", "bob"), vec!["o3"]);

    // A value nobody has is an empty answer; an unknown alt key is 404.
    assert_eq!(
        db.alt_keys("orders", "customer", "nobody"),
        Vec::<String>::new()
    );
    db.alt("orders", "region", "ann")
        .expect_problem(404, "not-found");
    db.alt("lines", "customer", "ann")
        .expect_problem(404, "not-found");
}

/// Fields every log entry carries.
#[track_caller]
fn assert_entry_shape(e: &Value) {
    for field in ["serial", "txn", "block", "offset", "timestamp_us"] {
        assert!(e[field].is_u64(), "entry.{field} is a number: {e}");
    }
    assert!(e["kind"].is_string(), "entry.kind: {e}");
    assert!(e["file"].is_string(), "entry.file: {e}");
    assert!(e["undo"].is_boolean(), "entry.undo: {e}");
    for image in ["a", "b", "t"] {
        assert!(
            e.get(image).is_some_and(|v| v.is_null() || v.is_object()),
            "entry.{image} is an object or null: {e}"
        );
    }
}

#[test]
fn log_shows_after_before_and_client_images() {
    let node = Node::start();
    let db = node.create_db("default", shop_spec("shop"));

    let ins = db.batch(json!([op::insert_alt(
        "orders",
        "o1",
        ann(),
        json!({ "n": 1 })
    )]));
    let ins = ins.ok().clone();
    let upd = db.batch(json!([op::update_alt(
        "orders",
        "o1",
        customer("bob"),
        json!({ "n": 2 })
    )]));
    let upd = upd.ok().clone();
    let del = db.batch(json!([op::delete("orders", "o1")]));
    let del = del.ok().clone();
    for r in [&ins, &upd, &del] {
        assert_eq!(r["count"], json!(1), "{r}");
        assert!(
            r["first_serial"].as_u64() <= r["last_serial"].as_u64(),
            "{r}"
        );
    }

    let entries = db.log_from(0);
    let mut last_serial: Option<u64> = None;
    let mut last_ts = 0;
    for e in &entries {
        assert_entry_shape(e);
        let serial = e["serial"].as_u64().unwrap();
        assert!(last_serial < Some(serial), "serials increase: {entries:#?}");
        last_serial = Some(serial);
        let ts = e["timestamp_us"].as_u64().unwrap();
        assert!(ts >= last_ts, "timestamps do not go back: {e}");
        last_ts = ts;
        if e["kind"] != json!("reorg") {
            assert!(!e["a"].is_null(), "every update has an A image: {e}");
        }
    }
    let of_o1: Vec<&Value> = entries
        .iter()
        .filter(|e| e["file"] == json!("orders") && e["kind"] != json!("reorg"))
        .collect();
    assert_eq!(
        of_o1.len(),
        3,
        "three client updates on orders: {entries:#?}"
    );

    let image = |alt: Value, data: Value| json!({ "key": "o1", "alt": alt, "data": data });
    let (e_ins, e_upd, e_del) = (of_o1[0], of_o1[1], of_o1[2]);

    assert_eq!(e_ins["kind"], json!("insert"), "{e_ins}");
    assert_eq!(e_ins["txn"], ins["txn"], "{e_ins}");
    assert_eq!(e_ins["serial"], ins["first_serial"], "{e_ins}");
    assert_eq!(e_ins["undo"], json!(false));
    assert_eq!(e_ins["a"], image(ann(), json!({ "n": 1 })), "{e_ins}");
    assert_eq!(
        e_ins["b"],
        Value::Null,
        "insert has no before image: {e_ins}"
    );
    assert_eq!(e_ins["t"]["op"], json!("insert"), "{e_ins}");
    assert_eq!(e_ins["t"]["key"], json!("o1"), "{e_ins}");
    assert_eq!(e_ins["t"]["data"], json!({ "n": 1 }), "{e_ins}");

    assert_eq!(e_upd["kind"], json!("update"), "{e_upd}");
    assert_eq!(e_upd["txn"], upd["txn"], "{e_upd}");
    assert_eq!(e_upd["serial"], upd["first_serial"], "{e_upd}");
    assert_eq!(e_upd["undo"], json!(false));
    assert_eq!(
        e_upd["a"],
        image(customer("bob"), json!({ "n": 2 })),
        "{e_upd}"
    );
    assert_eq!(e_upd["b"], image(ann(), json!({ "n": 1 })), "{e_upd}");
    assert_eq!(e_upd["t"]["op"], json!("update"), "{e_upd}");
    assert_eq!(e_upd["t"]["key"], json!("o1"), "{e_upd}");
    assert_eq!(e_upd["t"]["alt"], customer("bob"), "{e_upd}");
    assert_eq!(e_upd["t"]["data"], json!({ "n": 2 }), "{e_upd}");

    assert_eq!(e_del["kind"], json!("delete"), "{e_del}");
    assert_eq!(e_del["txn"], del["txn"], "{e_del}");
    assert_eq!(e_del["serial"], del["first_serial"], "{e_del}");
    assert_eq!(e_del["undo"], json!(false));
    assert_eq!(e_del["a"]["key"], json!("o1"), "{e_del}");
    assert_eq!(
        e_del["b"],
        image(customer("bob"), json!({ "n": 2 })),
        "{e_del}"
    );
    assert_eq!(e_del["t"]["op"], json!("delete"), "{e_del}");
    assert_eq!(e_del["t"]["key"], json!("o1"), "{e_del}");

    // `from` is inclusive and `limit` bounds the page.
    let s = e_upd["serial"].as_u64().unwrap();
    let r = db.log(s, 1);
    let page = r.ok()["entries"].as_array().unwrap();
    assert_eq!(page.len(), 1, "{r}");
    assert_eq!(page[0]["serial"], json!(s), "{r}");
    let last_serial = last_serial.expect("log has entries");
    let r = db.log(last_serial + 1, 10);
    assert_eq!(r.ok()["entries"], json!([]), "{r}");

    let info = db.info();
    assert_eq!(info.ok()["last_serial"], json!(last_serial), "{info}");

    node.get(&db.path("/log?from=abc"))
        .expect_problem(400, "malformed-request");
}

#[test]
fn checksums_cover_every_file_and_alt_index() {
    let node = Node::start();
    let db = node.create_db("default", shop_spec("shop"));
    for i in 0..20 {
        db.put(
            "orders",
            &format!("o{i:02}"),
            customer(&format!("c{}", i % 3)),
            json!({ "i": i }),
        )
        .ok();
        db.put(
            "lines",
            &format!("l{i:02}"),
            json!({}),
            json!("x".repeat(100)),
        )
        .ok();
    }

    let r = db.checksums();
    let files = r.ok()["files"].as_array().expect("files array").clone();
    let names: Vec<&str> = files.iter().map(|f| f["name"].as_str().unwrap()).collect();
    for expected in ["orders", "orders#customer", "lines"] {
        assert!(names.contains(&expected), "{expected} in {r}");
    }
    for f in &files {
        let blocks = f["blocks"]
            .as_array()
            .unwrap_or_else(|| panic!("blocks array: {r}"));
        if f["name"] != json!("orders") && f["name"] != json!("lines") {
            continue;
        }
        assert!(!blocks.is_empty(), "a file with records has blocks: {f}");
        for b in blocks {
            assert!(b["block"].is_u64(), "{b}");
            let sum = b["checksum"]
                .as_str()
                .unwrap_or_else(|| panic!("checksum string: {b}"));
            assert_eq!(sum.len(), 16, "16 hex digits: {b}");
            assert!(sum.chars().all(|c| c.is_ascii_hexdigit()), "hex: {b}");
        }
    }

    // Stable while nothing changes; changes when a record changes.
    let again = db.checksums();
    assert_eq!(again.ok(), r.ok(), "checksums are deterministic");
    db.put("lines", "l05", json!({}), json!("y".repeat(100)))
        .ok();
    let after = db.checksums();
    let lines_before = files.iter().find(|f| f["name"] == json!("lines")).unwrap();
    let lines_after = after.ok()["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == json!("lines"))
        .unwrap();
    assert_ne!(
        lines_before, lines_after,
        "a write changes the file's checksums"
    );
}

#[test]
fn unknown_names_are_404_not_found() {
    let node = Node::start();
    let db = node.create_db("default", shop_spec("shop"));
    db.put("orders", "o1", ann(), json!(1)).ok();

    // Unknown tenant.
    node.get("/v1/tenants/nope/databases")
        .expect_problem(404, "not-found");
    node.post("/v1/tenants/nope/databases", &shop_spec("x"))
        .expect_problem(404, "not-found");
    node.get("/v1/tenants/nope/databases/shop/files/orders/records/o1")
        .expect_problem(404, "not-found");
    // Unknown database.
    node.get("/v1/tenants/default/databases/nope")
        .expect_problem(404, "not-found");
    node.delete("/v1/tenants/default/databases/nope")
        .expect_problem(404, "not-found");
    let other = node.db("default", "nope");
    other.get("orders", "o1").expect_problem(404, "not-found");
    other
        .put("orders", "o1", ann(), json!(1))
        .expect_problem(404, "not-found");
    other
        .batch(json!([op::insert("orders", "x", json!(1))]))
        .expect_problem(404, "not-found");
    other.log(0, 10).expect_problem(404, "not-found");
    other.checksums().expect_problem(404, "not-found");
    other.snapshot().expect_problem(404, "not-found");
    // Unknown file.
    db.get("nope", "o1").expect_problem(404, "not-found");
    db.put("nope", "o1", json!({}), json!(1))
        .expect_problem(404, "not-found");
    db.insert("nope", "o1", json!({}), json!(1))
        .expect_problem(404, "not-found");
    db.scan("nope", None, None, None)
        .expect_problem(404, "not-found");
    db.alt("nope", "customer", "ann")
        .expect_problem(404, "not-found");
    // Unknown record.
    db.get("orders", "o2").expect_problem(404, "not-found");
    db.delete("orders", "o2").expect_problem(404, "not-found");
    db.get("lines", "o1").expect_problem(404, "not-found");
    // Unknown alt key name.
    db.alt("orders", "nope", "ann")
        .expect_problem(404, "not-found");
    // Unknown transaction.
    db.txn(987_654).expect_problem(404, "not-found");
    db.commit(987_654).expect_problem(404, "not-found");
    db.cancel(987_654).expect_problem(404, "not-found");
    db.ops(987_654, json!([op::insert("orders", "x", json!(1))]))
        .expect_problem(404, "not-found");

    // Nothing above changed anything.
    assert_eq!(db.record_count("orders"), 1);
    assert_eq!(db.data("orders", "o1"), Some(json!(1)));
}

#[test]
fn malformed_requests_are_400_problems() {
    let node = Node::start();
    let db = node.create_db("default", shop_spec("shop"));

    let cases: Vec<(&str, String, &str)> = vec![
        ("POST", "/v1/tenants".into(), "{not json"),
        ("POST", "/v1/tenants".into(), r#"{"name": 5}"#),
        ("POST", "/v1/tenants/default/databases".into(), "[1,2"),
        (
            "POST",
            "/v1/tenants/default/databases".into(),
            r#"{"name":"x","files":"orders"}"#,
        ),
        (
            "POST",
            "/v1/tenants/default/databases".into(),
            r#"{"name":"x","files":[{"name":"f"}],"durability":"maybe"}"#,
        ),
        (
            "POST",
            "/v1/tenants/default/databases".into(),
            r#"{"name":"x","files":[{"name":"f"}],"block_size":100}"#,
        ),
        (
            "POST",
            "/v1/tenants/default/databases".into(),
            r#"{"name":"x","files":[{"name":"f"}],"block_size":65536}"#,
        ),
        (
            "PUT",
            db.record_path("orders", "o1"),
            r#"{"alt": 5, "data": 1"#,
        ),
        (
            "PUT",
            db.record_path("orders", "o1"),
            r#"{"alt": 5, "data": 1}"#,
        ),
        (
            "POST",
            db.path("/files/orders/records"),
            r#"{"key": 7, "data": 1}"#,
        ),
        ("POST", db.path("/transactions"), r#"{"ops": {}}"#),
        (
            "POST",
            db.path("/transactions"),
            r#"{"ops": [{"op": "frobnicate", "file": "orders", "key": "k"}]}"#,
        ),
        ("POST", db.path("/transactions"), "ops=1"),
    ];
    for (method, path, body) in &cases {
        let r = node.send_raw(method, path, body);
        r.expect_problem(400, "malformed-request");
    }
    // None of them created anything.
    assert_eq!(db.record_count("orders"), 0);
    let dbs = node.get("/v1/tenants/default/databases");
    assert_eq!(dbs.ok().as_array().unwrap().len(), 1, "{dbs}");
    node.get("/v1/tenants/default/databases/x")
        .expect_problem(404, "not-found");
}

#[test]
fn empty_key_is_400_empty_key() {
    let node = Node::start();
    let db = node.create_db("default", shop_spec("shop"));

    db.insert("orders", "", ann(), json!(1))
        .expect_problem(400, "empty-key");
    db.insert("lines", "", json!({}), json!(1))
        .expect_problem(400, "empty-key");
    let r = db.batch(json!([
        op::insert("lines", "ok", json!(1)),
        op::insert("lines", "", json!(2)),
    ]));
    let p = r.expect_problem(400, "empty-key");
    assert_eq!(p["op_index"], json!(1), "{r}");
    assert_eq!(db.data("lines", "ok"), None, "batch refused as a whole");
    assert_eq!(db.record_count("lines"), 0);
    assert_eq!(db.record_count("orders"), 0);
}

#[test]
fn record_larger_than_a_block_is_413_and_not_written() {
    let node = Node::start();
    let db = node.create_db(
        "default",
        json!({ "name": "tiny", "files": [{ "name": "f", "alt_keys": ["tag"] }], "block_size": 512 }),
    );
    db.put("f", "small", json!({ "tag": "t" }), json!("fits"))
        .ok();
    let before = db.info().ok()["last_serial"].as_u64().unwrap();

    let big = json!("x".repeat(1000));
    db.put("f", "big", json!({ "tag": "t" }), big.clone())
        .expect_problem(413, "record-too-large");
    db.insert("f", "big", json!({ "tag": "t" }), big.clone())
        .expect_problem(413, "record-too-large");
    // Growing an existing record past the block is refused too.
    db.put("f", "small", json!({ "tag": "t" }), big.clone())
        .expect_problem(413, "record-too-large");
    let info = db.info();
    assert_eq!(
        info.ok()["last_serial"],
        json!(before),
        "refused writes are not logged: {info}"
    );

    let r = db.batch(json!([
        op::insert_alt("f", "also", json!({ "tag": "t" }), json!(1)),
        op::insert_alt("f", "big", json!({ "tag": "t" }), big),
    ]));
    assert_eq!(
        r.expect_problem(413, "record-too-large")["op_index"],
        json!(1),
        "{r}"
    );

    assert_eq!(db.data("f", "big"), None);
    assert_eq!(db.data("f", "also"), None);
    assert_eq!(db.data("f", "small"), Some(json!("fits")));
    assert_eq!(db.alt_keys("f", "tag", "t"), vec!["small"]);
    assert_eq!(db.record_count("f"), 1);
    // The refused batch may have logged applied ops, but then each one is
    // followed by its undo.
    let tail = db.log_from(before + 1);
    let done = tail.iter().filter(|e| e["undo"] == json!(false)).count();
    let undone = tail.iter().filter(|e| e["undo"] == json!(true)).count();
    assert_eq!(
        done, undone,
        "every logged op of a refused batch is undone: {tail:#?}"
    );
}

#[test]
fn body_over_16_mib_is_413_payload_too_large() {
    let node = Node::start();
    let db = node.create_db("default", shop_spec("shop"));

    let mut body = b"{\"alt\":{},\"data\":\"".to_vec();
    body.resize(BODY_LIMIT + 1024 * 1024, b'x');
    body.extend_from_slice(b"\"}");
    let r = node.send_streaming(
        "PUT",
        &db.record_path("lines", "huge"),
        "application/json",
        body,
    );
    r.expect_problem(413, "payload-too-large");

    // The server is fine afterwards and nothing was written.
    node.get("/v1/health").ok();
    assert_eq!(db.data("lines", "huge"), None);
    db.put("lines", "small", json!({}), json!(1)).ok();
}

#[test]
fn memory_quota_exceeded_is_507_and_deletes_still_work() {
    let node = Node::start();
    let quota = 8192u64;
    let db = node.create_db(
        "default",
        json!({ "name": "cramped", "files": [{ "name": "f" }], "block_size": 512, "memory_quota_bytes": quota }),
    );
    let roomy = node.create_db("default", shop_spec("roomy"));

    let payload = json!("p".repeat(200));
    let mut stored = Vec::new();
    let mut refused = None;
    for i in 0..1000 {
        let key = format!("r{i:04}");
        let r = db.put("f", &key, json!({}), payload.clone());
        match r.status {
            200 => stored.push(key),
            _ => {
                r.expect_problem(507, "quota-exceeded");
                refused = Some(key);
                break;
            }
        }
    }
    let refused = refused.expect("a small quota is exhausted by 200 KB of records");
    assert!(!stored.is_empty(), "some records fit under the quota");
    assert_eq!(db.data("f", &refused), None, "refused write is absent");

    let info = db.info();
    let mem = info.ok()["memory_bytes"].as_u64().expect("memory_bytes");
    assert!(
        mem <= quota,
        "memory_bytes {mem} within quota {quota}: {info}"
    );
    assert_eq!(db.record_count("f"), stored.len() as u64);

    // Still refused (not a one-off), batches included.
    db.put("f", "again", json!({}), payload.clone())
        .expect_problem(507, "quota-exceeded");
    let r = db.batch(json!([op::insert("f", "b1", payload.clone())]));
    r.expect_problem(507, "quota-exceeded");

    // Reads and deletes keep working.
    assert_eq!(db.data("f", &stored[0]), Some(payload.clone()));
    for key in stored.iter().take(5) {
        db.delete("f", key).ok();
        assert_eq!(db.data("f", key), None);
    }
    assert_eq!(db.record_count("f"), stored.len() as u64 - 5);

    // Other databases are unaffected.
    for i in 0..50 {
        roomy
            .put("lines", &format!("l{i}"), json!({}), payload.clone())
            .ok();
    }
    assert_eq!(roomy.record_count("lines"), 50);
}
