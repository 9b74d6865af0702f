//! End-to-end tests of per-tenant quotas, usage and the audit log:
//!
//! * a request-rate quota answers 429 `rate-limited` once the bucket is empty, while
//!   another tenant carries on;
//! * an operation-rate quota counts each operation of a batch, not the request: a batch
//!   that empties the bucket passes, the next write is refused with 429 and
//!   `Retry-After` and nothing of it is written, while another tenant carries on;
//! * with `concurrent_writes`, a tenant's writes take turns: one waiting for a record
//!   lock holds the turn, the tenant's next write waits (usage counts it) while another
//!   tenant writes at once, and the interactive transaction holding the lock still
//!   commits (it takes no turn), which lets both writes through;
//! * a memory quota (bytes of blocks over the tenant's databases) answers 507
//!   `quota-exceeded` to writes once reached, while reads and other tenants carry on;
//!   `GET /v1/tenants/{tenant}/usage` shows usage against the limits; deletes pass;
//! * a storage quota (bytes of log and snapshots in sled) does the same for writes and
//!   snapshots, and deleting a database frees its share;
//! * plugin count and size quotas refuse new plugin versions with 507, not re-uploads,
//!   and not other tenants; a plugin CPU-time quota refuses dry-runs with 429;
//! * admin and operator actions, allowed or refused, are in the tenant's audit log with
//!   who, what, when and the result; only the tenant's admin reads it; no token in it;
//! * usage shows what each tenant's databases did and hold: operations written (total
//!   and last second), CPU time, log backlog and disk, per tenant and in `/metrics`;
//!   a neighbour's writes are not counted to it;
//! * each database's log is a directory of its own: deleting the database removes it,
//!   so its disk comes back at once;
//! * the node's memory and disk (`GET /v1/node`, `/metrics`) are the node
//!   administrator's to see, not a tenant's: they add up every tenant's data.

use doppel_tests::*;

#[test]
fn request_rate_quota_refuses_with_429_and_other_tenants_carry_on() {
    let node = Node::start();
    node.create_tenant("busy");
    node.create_tenant("calm");
    node.create_db("busy", shop_spec("shop"));
    node.create_db("calm", shop_spec("shop"));
    node.put(
        "/v1/tenants/busy/quotas",
        &json!({"requests_per_sec": 1, "burst": 3}),
    )
    .ok();
    // Only the node administrator sets quotas.
    node.with_token(&token("busy", Role::Admin))
        .put(
            "/v1/tenants/busy/quotas",
            &json!({"requests_per_sec": 1000}),
        )
        .expect_problem(403, "forbidden");

    let busy = node.with_token(&token("busy", Role::Reader));
    let mut refused = None;
    for _ in 0..50 {
        let r = busy.db("busy", "shop").info();
        if r.status != 200 {
            refused = Some(r);
            break;
        }
    }
    let refused = refused.expect("the rate quota is reached within 50 requests");
    refused.expect_problem(429, "rate-limited");
    let retry: u64 = refused
        .retry_after
        .as_deref()
        .and_then(|v| v.parse().ok())
        .expect("a 429 says when to retry in whole seconds");
    assert!(
        (1..=2).contains(&retry),
        "one request a second: retry in ~1 s, got {retry}"
    );
    let calm = node.with_token(&token("calm", Role::Reader));
    for _ in 0..20 {
        calm.db("calm", "shop").info().ok();
    }
    let usage = node.get("/v1/tenants/busy/usage");
    assert_eq!(usage.ok()["requests"]["per_sec"], json!(1), "{usage}");
}

#[test]
fn an_operation_quota_counts_every_operation_of_a_batch_and_other_tenants_carry_on() {
    let node = Node::start();
    node.create_tenant("bulk");
    node.create_tenant("calm");
    node.create_db("bulk", shop_spec("shop"));
    node.create_db("calm", shop_spec("shop"));
    node.put(
        "/v1/tenants/bulk/quotas",
        &json!({"operations_per_sec": 10, "operations_burst": 100}),
    )
    .ok();
    let ops = |prefix: &str, n: usize| -> Value {
        (0..n)
            .map(|i| op::upsert("orders", &format!("{prefix}-{i}"), json!(i)))
            .collect()
    };
    let bulk = node.with_token(&token("bulk", Role::Writer));
    let shop = bulk.db("bulk", "shop");
    // One request of 100 operations takes the whole burst (a request rate would count 1).
    shop.batch(ops("a", 100)).ok();
    // So the next write, a batch of 5 or a single record, is refused and writes nothing.
    let refused = shop.batch(ops("b", 5));
    refused.expect_problem(429, "rate-limited");
    let retry: u64 = refused
        .retry_after
        .as_deref()
        .and_then(|v| v.parse().ok())
        .expect("a 429 says when to retry in whole seconds");
    assert!(
        (1..=2).contains(&retry),
        "5 operations at 10 a second: retry in ~1 s, got {retry}"
    );
    shop.put("orders", "single", json!({}), json!(1))
        .expect_problem(429, "rate-limited");
    assert_eq!(shop.data("orders", "b-0"), None);
    assert_eq!(shop.data("orders", "single"), None);
    assert_eq!(shop.record_count("orders"), 100);
    // Another tenant writes as much as it likes.
    let calm = node.with_token(&token("calm", Role::Writer));
    calm.db("calm", "shop").batch(ops("c", 500)).ok();
    calm.db("calm", "shop").batch(ops("d", 500)).ok();
    let usage = node.get("/v1/tenants/bulk/usage");
    let operations = &usage.ok()["operations"];
    assert_eq!(operations["per_sec"], json!(10), "{usage}");
    assert!(operations["available"].as_i64().unwrap() < 100, "{usage}");
}

#[test]
fn a_byte_quota_counts_the_bytes_a_write_carries_and_other_tenants_carry_on() {
    let node = Node::start();
    node.create_tenant("big");
    node.create_tenant("calm");
    node.create_db("big", shop_spec("shop"));
    node.create_db("calm", shop_spec("shop"));
    node.put(
        "/v1/tenants/big/quotas",
        &json!({"bytes_per_sec": 1000, "bytes_burst": 4000}),
    )
    .ok();
    // Few operations, many bytes: an operation quota would not notice them.
    let large = |key: &str| op::upsert("orders", key, json!("x".repeat(1_500)));
    let big = node.with_token(&token("big", Role::Writer));
    let shop = big.db("big", "shop");
    shop.batch(json!([large("a"), large("b")])).ok();
    let refused = shop.batch(json!([large("c"), large("d")]));
    let problem = refused.expect_problem(429, "rate-limited");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("byte rate"), "{detail}");
    let retry: u64 = refused
        .retry_after
        .as_deref()
        .and_then(|v| v.parse().ok())
        .expect("a 429 says when to retry in whole seconds");
    assert!((1..=4).contains(&retry), "{retry}");
    assert_eq!(
        shop.data("orders", "c"),
        None,
        "a refused batch writes nothing"
    );
    assert_eq!(shop.record_count("orders"), 2);
    // Small writes still fit what is left of the burst.
    shop.put("orders", "small", json!({}), json!(1)).ok();
    let usage = node.get("/v1/tenants/big/usage");
    let bytes = &usage.ok()["bytes"];
    assert_eq!(bytes["per_sec"], json!(1000), "{usage}");
    assert!(bytes["available"].as_i64().unwrap() < 1_100, "{usage}");
    // Another tenant writes as much as it likes.
    let calm = node
        .with_token(&token("calm", Role::Writer))
        .db("calm", "shop");
    for key in ["a", "b", "c", "d", "e"] {
        calm.batch(json!([large(key)])).ok();
    }
    assert_eq!(calm.record_count("orders"), 5);
}

#[test]
fn a_tenants_writes_take_turns_and_another_tenant_does_not_wait_for_them() {
    let node = Node::start();
    node.create_tenant("loud");
    node.create_tenant("calm");
    node.create_db("loud", shop_spec("shop"));
    node.create_db("calm", shop_spec("shop"));
    node.put("/v1/tenants/loud/quotas", &json!({"concurrent_writes": 1}))
        .ok();
    let loud = node
        .with_token(&token("loud", Role::Writer))
        .db("loud", "shop");
    let waiting = || {
        node.get("/v1/tenants/loud/usage").ok()["concurrent_writes"]["waiting"]
            .as_u64()
            .unwrap()
    };
    // An interactive transaction holds o-1; a batch writing o-1 waits for that lock,
    // holding the tenant's only turn.
    let txn = loud.begin();
    loud.ops(txn, json!([op::upsert("orders", "o-1", json!(1))]))
        .ok();
    let locked = {
        let db = loud.clone();
        std::thread::spawn(move || db.batch(json!([op::upsert("orders", "o-1", json!(2))])))
    };
    // Another write of the tenant then waits for a turn. (Until the batch above holds
    // the turn, a write may still pass before it: send another until one waits.)
    let mut passed = Vec::new();
    let queued = loop {
        let db = loud.clone();
        let key = format!("o-2-{}", passed.len());
        let write =
            std::thread::spawn(move || db.batch(json!([op::upsert("orders", &key, json!(3))])));
        let deadline = deadline_in(std::time::Duration::from_secs(10));
        assert!(wait_until(deadline, || waiting() == 1 || write.is_finished()));
        if waiting() == 1 {
            break write;
        }
        passed.push(write.join().unwrap());
        assert!(passed.len() < 20, "no write of loud ever waited for a turn");
    };
    // Another tenant does not wait for loud's turns.
    let calm = node
        .with_token(&token("calm", Role::Writer))
        .db("calm", "shop");
    calm.batch(json!([op::upsert("orders", "c-1", json!(1))]))
        .ok();
    assert_eq!(waiting(), 1, "loud's write still waits");
    assert!(!queued.is_finished());
    // The lock holder commits (interactive calls take no turn), and both writes run.
    loud.commit(txn).ok();
    locked.join().unwrap().ok();
    queued.join().unwrap().ok();
    assert_eq!(waiting(), 0);
    assert_eq!(loud.data("orders", "o-1"), Some(json!(2)));
}

#[test]
fn memory_quota_refuses_writes_with_507_and_reads_and_other_tenants_carry_on() {
    let node = Node::start();
    node.create_tenant("full");
    node.create_tenant("roomy");
    let spec = |name: &str| json!({"name": name, "files": [{"name": "f"}], "block_size": 1024});
    let full = node.create_db("full", spec("a"));
    let roomy = node.create_db("roomy", spec("a"));
    node.put("/v1/tenants/full/quotas", &json!({"memory_bytes": 8192}))
        .ok();
    let big = "x".repeat(600);
    let mut refused = None;
    for i in 0..200 {
        let r = full.put("f", &format!("k{i:04}"), json!({}), json!(big));
        if r.status != 200 {
            refused = Some(r);
            break;
        }
    }
    let refused = refused.expect("the memory quota is reached within 200 writes");
    refused.expect_problem(507, "quota-exceeded");
    full.batch(json!([op::upsert("f", "more", json!(1))]))
        .expect_problem(507, "quota-exceeded");
    // Reads go on, and deletes pass so the tenant can free space.
    assert!(full.data("f", "k0000").is_some());
    let usage = node.get("/v1/tenants/full/usage");
    let used = usage.ok()["memory_bytes"]["used"].as_u64().unwrap();
    assert!(used >= 8192, "{usage}");
    assert_eq!(usage["memory_bytes"]["limit"], json!(8192));
    full.delete("f", "k0001").ok();
    assert!(full.data("f", "k0001").is_none());

    // The other tenant writes as much as before.
    for i in 0..30 {
        roomy
            .put("f", &format!("k{i:04}"), json!({}), json!(big))
            .ok();
    }
    // Raising the quota lets writes through again.
    node.put("/v1/tenants/full/quotas", &json!({"memory_bytes": null}))
        .ok();
    full.put("f", "after", json!({}), json!(1)).ok();
}

#[test]
fn storage_quota_refuses_writes_and_snapshots_with_507_and_other_tenants_carry_on() {
    let node = Node::start();
    node.create_tenant("hoarder");
    node.create_tenant("tidy");
    let spec = |name: &str| json!({"name": name, "files": [{"name": "f"}]});
    let hoarder = node.create_db("hoarder", spec("a"));
    let tidy = node.create_db("tidy", spec("a"));
    node.put(
        "/v1/tenants/hoarder/quotas",
        &json!({"storage_bytes": 20000}),
    )
    .ok();
    let text = "y".repeat(500);
    let mut refused = None;
    for i in 0..200 {
        let r = hoarder.put("f", &format!("k{i:04}"), json!({}), json!(text));
        if r.status != 200 {
            refused = Some(r);
            break;
        }
    }
    let refused = refused.expect("the storage quota is reached within 200 writes");
    let problem = refused.expect_problem(507, "quota-exceeded");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("storage quota of 20000"),
        "{problem}"
    );
    // A snapshot would store more: refused as well. Reads and deletes go on.
    node.post_empty("/v1/tenants/hoarder/databases/a/snapshots")
        .expect_problem(507, "quota-exceeded");
    assert!(hoarder.data("f", "k0000").is_some());
    hoarder.delete("f", "k0000").ok();
    let usage = node.get("/v1/tenants/hoarder/usage");
    let used = usage.ok()["storage_bytes"]["used"].as_u64().unwrap();
    assert!(used >= 20000, "{usage}");
    assert_eq!(usage["storage_bytes"]["limit"], json!(20000));
    // The other tenant is unaffected.
    for i in 0..60 {
        tidy.put("f", &format!("k{i:04}"), json!({}), json!(text))
            .ok();
    }
    // Deleting the database frees its storage: writes pass again in a new one.
    node.delete("/v1/tenants/hoarder/databases/a").expect(204);
    let usage = node.get("/v1/tenants/hoarder/usage");
    assert_eq!(usage.ok()["storage_bytes"]["used"], json!(0), "{usage}");
    let again = node.create_db("hoarder", spec("b"));
    again.put("f", "k", json!({}), json!(1)).ok();
}

#[test]
fn admin_and_operator_actions_are_audited_and_only_the_admin_reads_them() {
    let node = Node::start();
    node.create_tenant("acme");
    node.create_tenant("other");
    let admin_token = token("acme", Role::Admin);
    let admin = node.with_token(&admin_token);
    admin.create_db("acme", shop_spec("shop"));
    let operator = node.with_token(&token("acme", Role::Operator));
    operator.db("acme", "shop").snapshot().expect(201);
    let reader = node.with_token(&token("acme", Role::Reader));
    reader
        .db("acme", "shop")
        .snapshot()
        .expect_problem(403, "forbidden");
    let writer = node.with_token(&token("acme", Role::Writer));
    writer
        .db("acme", "shop")
        .put("orders", "o1", json!({}), json!(1))
        .ok();

    let log = admin.get("/v1/tenants/acme/audit");
    let entries = log.ok()["entries"].as_array().expect("entries").clone();
    let summary: Vec<(String, String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["role"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
                e["result"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let snapshot = "POST /v1/tenants/{tenant}/databases/{db}/snapshots".to_string();
    assert_eq!(
        summary,
        vec![
            (
                "admin".into(),
                "POST /v1/tenants/{tenant}/databases".into(),
                "ok".into()
            ),
            ("operator".into(), snapshot.clone(), "ok".into()),
            ("reader".into(), snapshot, "refused".into()),
        ],
        "{log}"
    );
    assert!(entries
        .iter()
        .all(|e| e["at_ms"].as_u64() > Some(0) && e["who"].is_string() && e["status"].is_u64()));
    assert!(
        !log.text.contains(&admin_token),
        "no token in the audit log"
    );
    // Paging.
    let first = entries[0]["id"].as_u64().unwrap();
    let page = admin.get(&format!("/v1/tenants/acme/audit?after={first}&limit=1"));
    assert_eq!(page.ok()["entries"].as_array().unwrap().len(), 1);
    // Only acme's admin reads acme's audit log.
    operator
        .get("/v1/tenants/acme/audit")
        .expect_problem(403, "forbidden");
    node.with_token(&token("other", Role::Admin))
        .get("/v1/tenants/acme/audit")
        .expect_problem(404, "not-found");
}

#[test]
fn plugin_quotas_refuse_new_versions_with_507_and_other_tenants_carry_on() {
    use doppel_server::plugins::builtin;
    let node = Node::start();
    node.create_tenant("plug");
    node.create_tenant("other");
    node.put("/v1/tenants/plug/quotas", &json!({"plugins": 1}))
        .ok();
    let upload = |tenant: &str, name: &str, wasm: &[u8]| {
        node.request(
            "PUT",
            &format!("/v1/tenants/{tenant}/plugins/{name}/1?role=filter"),
            Body::Raw("application/wasm", wasm),
        )
    };
    upload("plug", "a", builtin::PREFIX_FILTER).expect(201);
    let refused = upload("plug", "b", builtin::DROP_READS);
    let problem = refused.expect_problem(507, "quota-exceeded");
    assert!(
        problem["detail"].as_str().unwrap().contains("quota of 1"),
        "{problem}"
    );
    // The same version again is not a new one; other tenants are not limited.
    upload("plug", "a", builtin::PREFIX_FILTER).expect(200);
    upload("other", "b", builtin::DROP_READS).expect(201);
    let usage = node.get("/v1/tenants/plug/usage").ok().clone();
    assert_eq!(usage["plugins"]["used"], 1, "{usage}");
    assert_eq!(usage["plugins"]["limit"], 1, "{usage}");
    // A size quota counts the bytes already held.
    let size = builtin::PREFIX_FILTER.len() as u64;
    node.put(
        "/v1/tenants/plug/quotas",
        &json!({"plugins": 10, "plugin_bytes": size + 10}),
    )
    .ok();
    upload("plug", "b", builtin::DROP_READS).expect_problem(507, "quota-exceeded");
    // Deleting frees the room.
    node.delete("/v1/tenants/plug/plugins/a/1").ok();
    upload("plug", "b", builtin::DROP_READS).expect(201);
}

#[test]
fn a_plugin_cpu_quota_refuses_dry_runs_with_429_and_other_tenants_carry_on() {
    use doppel_server::plugins::builtin;
    let node = Node::start();
    node.create_tenant("cpu");
    node.create_tenant("other");
    for tenant in ["cpu", "other"] {
        node.request(
            "PUT",
            &format!("/v1/tenants/{tenant}/plugins/f/1?role=filter"),
            Body::Raw("application/wasm", builtin::PREFIX_FILTER),
        )
        .expect(201);
    }
    node.put(
        "/v1/tenants/cpu/quotas",
        &json!({"plugin_cpu_ms_per_sec": 1}),
    )
    .ok();
    let records: Vec<Value> = (0..2000)
        .map(|i| json!({"op": "insert", "file": "orders", "key": format!("eu-{i}"), "data": {"i": i}}))
        .collect();
    let body = json!({"config": {"prefixes": ["eu-"]}, "records": records});
    let dry = |tenant: &str| node.post(&format!("/v1/tenants/{tenant}/plugins/f/1/dry-run"), &body);
    // Each dry run spends plugin time; the 1 ms/s budget runs out and stays out.
    let mut refused = None;
    assert!(wait_until(
        deadline_in(std::time::Duration::from_secs(60)),
        || {
            let r = dry("cpu");
            if r.status == 429 {
                refused = Some(r);
                return true;
            }
            assert_eq!(r.status, 200, "{r}");
            false
        }
    ));
    let refused = refused.unwrap();
    let problem = refused.expect_problem(429, "quota-exceeded");
    assert!(
        problem["detail"].as_str().unwrap().contains("plugin CPU"),
        "{problem}"
    );
    // Another tenant's plugins run as before.
    dry("other").ok();
    let usage = node.get("/v1/tenants/cpu/usage").ok().clone();
    assert_eq!(usage["plugin_cpu_ms_per_sec"]["limit"], 1, "{usage}");
}

#[test]
fn the_node_administrator_sees_the_nodes_memory_and_disk_and_a_tenant_does_not() {
    let node = Node::start();
    let db = node.create_db(DEFAULT_TENANT, shop_spec("shop"));
    let ops: Vec<Value> = (0..500)
        .map(|i| {
            op::upsert(
                "orders",
                &format!("o-{i:04}"),
                json!({"note": "x".repeat(100)}),
            )
        })
        .collect();
    db.batch(json!(ops)).ok();
    let info = node.get("/v1/node").ok().clone();
    let field = |name: &str| {
        info[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no {name}: {info}"))
    };
    let (rss, blocks) = (field("rss_bytes"), field("blocks_bytes"));
    assert!(rss > blocks && blocks > 500 * 100, "{info}");
    assert!(field("data_dir_bytes") > 0, "{info}");
    // The parts of the memory the node can name: indexes beside the blocks, and the
    // most sled's cache may hold (the node's one instance: databases keep their logs
    // and snapshots in files).
    assert!(
        field("index_bytes") > 0 && field("index_bytes") < blocks,
        "{info}"
    );
    assert_eq!(field("sled_cache_limit_bytes"), 16 << 20, "{info}");
    assert!(info["log_backlog_bytes"].is_u64(), "{info}");
    // The allocator's own count: what is allocated holds at least the blocks.
    let in_use = field("heap_in_use_bytes");
    assert!(
        in_use > blocks && info["heap_free_bytes"].is_u64(),
        "{info}"
    );
    let metrics = node.get("/metrics");
    for name in [
        "doppel_node_rss_bytes",
        "doppel_node_data_dir_bytes",
        "doppel_node_blocks_bytes",
        "doppel_node_index_bytes",
        "doppel_node_sled_cache_limit_bytes",
        "doppel_node_heap_in_use_bytes",
        "doppel_node_heap_free_bytes",
    ] {
        let value: f64 = metrics
            .text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name}:\n{}", metrics.text))
            .parse()
            .unwrap();
        assert!(value > 0.0, "{name} {value}");
    }
    // A tenant's admin sees the node's identity, not what its neighbours hold.
    let tenant = node.with_token(&token(DEFAULT_TENANT, Role::Admin));
    let info = tenant.get("/v1/node").ok().clone();
    assert!(info["id"].is_string(), "{info}");
    for name in ["rss_bytes", "data_dir_bytes", "blocks_bytes", "index_bytes"] {
        assert!(info.get(name).is_none(), "{info}");
    }
    assert!(!tenant.get("/metrics").text.contains("doppel_node_"));
    assert!(info.get("worker_threads").is_none(), "{info}");
}

#[test]
fn a_node_runs_on_the_worker_threads_its_config_gives() {
    // The default: one per core (at least one), shown to the node administrator.
    let node = Node::start();
    let workers = node.get("/v1/node").ok()["worker_threads"].as_u64();
    assert!(workers.is_some_and(|n| n >= 1), "{workers:?}");
    drop(node);
    let node = Node::start_configured("[node]\nworker_threads = 1\n");
    let info = node.get("/v1/node").ok().clone();
    assert_eq!(info["worker_threads"], 1, "{info}");
    // One thread carries everything: writes, reads and a snapshot.
    let db = node.create_db(DEFAULT_TENANT, shop_spec("shop"));
    let ops: Vec<Value> = (0..200)
        .map(|i| op::upsert("orders", &format!("o-{i:04}"), json!({"n": i})))
        .collect();
    db.batch(json!(ops)).ok();
    assert_eq!(db.data("orders", "o-0199"), Some(json!({"n": 199})));
    let snapshot = db.snapshot().expect(201).clone();
    assert_eq!(snapshot["serial"], 200, "{snapshot}");
}

#[test]
fn usage_shows_each_tenants_operations_cpu_backlog_and_disk() {
    let node = Node::start();
    node.create_tenant("busy");
    node.create_tenant("calm");
    node.create_db("busy", shop_spec("shop"));
    node.create_db("calm", shop_spec("shop"));
    let shop = node.with_token(&token("busy", Role::Writer));
    let shop = shop.db("busy", "shop");
    for b in 0..3 {
        let ops: Value = (0..200)
            .map(|i| op::upsert("orders", &format!("k{b}-{i}"), json!({"n": i})))
            .collect();
        shop.batch(ops).ok();
    }
    shop.put("orders", "one", json!({}), json!(1)).ok();
    let usage = node.get("/v1/tenants/busy/usage");
    let u = usage.ok();
    assert_eq!(u["operations"]["total"], json!(601), "{usage}");
    assert!(u["cpu_ms"]["total"].as_f64().unwrap() > 0.0, "{usage}");
    assert!(u["disk_bytes"].as_u64().unwrap() > 0, "{usage}");
    assert!(u["log_backlog_bytes"].as_u64().is_some(), "{usage}");
    assert!(u["operations"]["last_second"].as_u64().is_some(), "{usage}");
    // The neighbour wrote nothing, and is charged nothing.
    let calm = node.get("/v1/tenants/calm/usage");
    assert_eq!(calm.ok()["operations"]["total"], json!(0), "{calm}");
    assert_eq!(calm.ok()["cpu_ms"]["total"], json!(0.0), "{calm}");
    let metrics = node.get("/metrics").text;
    assert!(
        metrics.contains("doppel_database_operations_total{tenant=\"busy\",database=\"shop\"} 601"),
        "{metrics}"
    );
    assert!(metrics.contains("doppel_database_disk_bytes{tenant=\"busy\""));
}

#[test]
fn deleting_a_database_removes_its_log_directory() {
    let node = Node::start();
    node.create_db("default", shop_spec("big"));
    node.create_db("default", shop_spec("kept"));
    let big = node.db("default", "big");
    for b in 0..5 {
        let ops: Value = (0..500)
            .map(|i| op::upsert("orders", &format!("k{b}-{i}"), json!("x".repeat(200))))
            .collect();
        big.batch(ops).ok();
    }
    node.db("default", "kept")
        .put("orders", "k", json!({}), json!(1))
        .ok();
    let logs = node.data_dir().join("logs");
    let dirs = || -> usize { std::fs::read_dir(&logs).map(|d| d.count()).unwrap_or(0) };
    assert_eq!(dirs(), 2, "a directory per database");
    let before = dir_size(&logs);
    node.delete("/v1/tenants/default/databases/big").expect(204);
    assert_eq!(dirs(), 1, "the deleted database's directory is gone");
    let after = dir_size(&logs);
    assert!(
        after + 400_000 < before,
        "its disk came back: {before} -> {after} bytes"
    );
    assert_eq!(
        node.db("default", "kept").data("orders", "k"),
        Some(json!(1))
    );
}

fn dir_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
