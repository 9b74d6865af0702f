//! PostgreSQL as a replication target (SPEC G9), against a real PostgreSQL server
//! (`doppel_tests::postgres`) and real `doppel` processes: rows through the built-in
//! `json-columns` row mapping, upserts, deletes and cancelled transactions, created
//! tables and added columns, type clashes and refused rows in dead letters and
//! re-driven, the password never shown, a wrong password on the link; exactly once
//! across a kill -9 of the source node (which is the process applying into PostgreSQL)
//! and a PostgreSQL restart with writers running; the bootstrap seam; interrelated
//! orders and lines applied in their order.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use doppel_server::plugins::registry::BUILTIN_VERSION;
use doppel_tests::postgres::{Postgres, PASSWORD};
use doppel_tests::*;

const CATCH_UP: Duration = Duration::from_secs(90);

fn links() -> String {
    format!("/v1/tenants/{DEFAULT_TENANT}/links")
}

/// The json-columns stage for `orders` (and `lines` when asked).
fn mapping(files: Value) -> Value {
    json!([{"plugin": "json-columns@1.0.0", "config": {"files": files}}])
}

fn pg_link(pg: &Postgres, database: &str, pg_database: &str, stages: Value) -> Value {
    json!({"database": database,
           "target": {"postgres": pg.url(pg_database), "schema": "public"},
           "mode": "async", "apply": "logical", "on_error": "quarantine",
           "stages": stages, "create_tables": true})
}

/// Waits until link `id` applied everything its source holds now.
fn caught_up(node: &Client, db: &Db, id: &str) {
    let last = db.info()["last_serial"].as_u64().unwrap();
    let done = wait_until(deadline_in(CATCH_UP), || {
        link_status(node, id)["status"]["acked_serial"].as_u64() >= Some(last)
    });
    assert!(
        done,
        "the link did not catch up with serial {last}: {}",
        link_status(node, id)
    );
}

#[test]
fn a_postgres_target_upserts_deletes_skips_cancelled_and_quarantines_what_it_cannot_apply() {
    let pg = Postgres::start();
    pg.create_database("shop");
    let a = Node::start();
    let src = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    src.put(
        "orders",
        "o-1",
        json!({"customer": "ann"}),
        json!({"total": 12.5, "customer": "ann", "note": "rush"}),
    )
    .ok();
    let orders = json!({"orders": {"table": "orders", "key": "id",
        "columns": {"total": "double", "customer": "text"}, "rest": "extra"}});

    // Bad requests are refused precisely.
    let mut no_stage = pg_link(&pg, "shop", "shop", json!([]));
    a.post(&links(), &no_stage)
        .expect_problem(422, "invalid-request");
    no_stage["stages"] = mapping(orders.clone());
    no_stage["apply"] = json!("mirror");
    let r = a.post(&links(), &no_stage);
    assert!(r["detail"].as_str().unwrap().contains("logical"), "{r}");

    // The built-in row mapping is `json-columns@1.0.0`, the name users are given (its
    // own version, not the server's); the registry lists it so.
    let plugins = a
        .get(&format!("/v1/tenants/{DEFAULT_TENANT}/plugins"))
        .ok()
        .clone();
    let listed = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "json-columns")
        .cloned();
    assert_eq!(
        listed.map(|p| (p["version"].clone(), p["builtin"].clone())),
        Some((json!("1.0.0"), json!(true))),
        "{plugins}"
    );
    let mut old_name = pg_link(&pg, "shop", "shop", mapping(orders.clone()));
    old_name["stages"][0]["plugin"] = json!("json-columns@0.1.0");
    let r = a.post(&links(), &old_name);
    assert!(
        r.to_string()
            .contains("the built-in 'json-columns' is version 1.0.0"),
        "{r}"
    );

    let created = a.post(
        &links(),
        &pg_link(&pg, "shop", "shop", mapping(orders.clone())),
    );
    let id = created.expect(201)["id"].as_str().unwrap().to_string();
    assert!(!created.to_string().contains(PASSWORD), "{created}");
    assert_eq!(
        created["target"],
        json!({"postgres": format!("postgresql://doppel:***@127.0.0.1:{}/shop", pg.port), "schema": "public"})
    );
    caught_up(&a, &src, &id);
    assert_eq!(
        pg.query("shop", "SELECT id, total, customer, extra FROM orders"),
        r#"o-1|12.5|ann|{"note": "rush"}"#
    );

    // An update is an upsert, a delete a delete; a cancelled transaction never arrives.
    src.put(
        "orders",
        "o-1",
        json!({}),
        json!({"total": 20, "customer": "ann"}),
    )
    .ok();
    src.put(
        "orders",
        "o-2",
        json!({}),
        json!({"total": 5, "customer": "bob"}),
    )
    .ok();
    src.put("orders", "o-3", json!({}), json!({"total": 6}))
        .ok();
    src.delete("orders", "o-2").ok();
    src.batch(json!([
        op::upsert("orders", "o-1", json!({"total": 999})),
        op::upsert("orders", "o-9", json!({"total": 9})),
        op::insert("orders", "o-3", json!("dup")),
    ]))
    .expect_problem(409, "duplicate-key");
    src.put("lines", "l-1", json!({}), json!({"sku": "A"})).ok();
    caught_up(&a, &src, &id);
    assert_eq!(
        pg.query(
            "shop",
            "SELECT id, total, customer, extra FROM orders ORDER BY id"
        ),
        "o-1|20|ann|{}\no-3|6||{}"
    );
    // A file with no entry is not shipped.
    assert_eq!(
        pg.query(
            "shop",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'lines'"
        ),
        "0"
    );

    // A type clash is a stage error naming the column: a dead letter; the rest lands.
    src.batch(json!([
        op::upsert("orders", "o-4", json!({"total": "lots"})),
        op::upsert("orders", "o-5", json!({"total": 5})),
    ]))
    .ok();
    // A row PostgreSQL refuses goes to dead letters with its text; its batch lands.
    pg.query(
        "shop",
        "ALTER TABLE orders ADD CONSTRAINT total_positive CHECK (total >= 0)",
    );
    src.batch(json!([
        op::upsert("orders", "o-6", json!({"total": -1})),
        op::upsert("orders", "o-7", json!({"total": 7})),
    ]))
    .ok();
    caught_up(&a, &src, &id);
    assert_eq!(
        pg.query("shop", "SELECT id FROM orders ORDER BY id"),
        "o-1\no-3\no-5\no-7"
    );
    let dead = format!("{}/{id}/dead-letters", links());
    let letters = a.get(&dead).ok().clone();
    let letters = letters.as_array().unwrap_or_else(|| panic!("{letters}"));
    assert_eq!(letters.len(), 2, "{letters:?}");
    let clash = letters
        .iter()
        .find(|l| l["record"]["key"] == "o-4")
        .unwrap();
    assert!(
        clash["error"].as_str().unwrap().contains("column 'total'"),
        "{clash}"
    );
    let refused = letters
        .iter()
        .find(|l| l["record"]["key"] == "o-6")
        .unwrap();
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("violates check constraint \"total_positive\""),
        "{refused}"
    );
    assert_eq!(link_status(&a, &id)["status"]["quarantined"], 2);

    // Re-driven: the edited clash lands in PostgreSQL; the refused row, still negative,
    // is refused again with PostgreSQL's text.
    let mut edited = clash["record"].clone();
    edited["data"] = json!({"total": 4.5});
    a.post(
        &format!("{dead}/{}/redrive", clash["id"]),
        &json!({"record": edited}),
    )
    .ok();
    let again = a.post(&format!("{dead}/{}/redrive", refused["id"]), &json!({}));
    let problem = again.expect_problem(422, "redrive-rejected");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("total_positive"),
        "{problem}"
    );
    assert_eq!(
        pg.query("shop", "SELECT total FROM orders WHERE id = 'o-4'"),
        "4.5"
    );

    // A new column in the mapping is added to the table; nothing is dropped.
    let mut more = orders.clone();
    more["orders"]["columns"]["status"] = json!("text");
    a.put(&format!("{}/{id}/stages", links()), &mapping(more))
        .ok();
    src.put(
        "orders",
        "o-8",
        json!({}),
        json!({"total": 8, "status": "paid"}),
    )
    .ok();
    caught_up(&a, &src, &id);
    assert_eq!(
        pg.query(
            "shop",
            "SELECT id, status FROM orders WHERE status IS NOT NULL"
        ),
        "o-8|paid"
    );
    // The position is written with the rows.
    let last = src.info()["last_serial"].as_u64().unwrap();
    assert_eq!(
        pg.query(
            "shop",
            &format!("SELECT serial FROM doppel_positions WHERE link = '{id}'")
        ),
        last.to_string()
    );

    // A mapping that clashes with the table's column type names the column.
    let mut clashing = orders.clone();
    clashing["orders"]["columns"]["status"] = json!("bigint");
    a.put(&format!("{}/{id}/stages", links()), &mapping(clashing))
        .ok();
    src.put(
        "orders",
        "o-10",
        json!({}),
        json!({"total": 1, "status": 3}),
    )
    .ok();
    caught_up(&a, &src, &id);
    let letters = a.get(&dead).ok().clone();
    let retyped = letters
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["record"]["key"] == "o-10")
        .unwrap_or_else(|| panic!("{letters}"))
        .clone();
    assert!(
        retyped["error"]
            .as_str()
            .unwrap()
            .contains("column 'status' of table public.orders is text"),
        "{retyped}"
    );

    // Under `on_error: stop` a row PostgreSQL refuses stops the link with its text.
    pg.create_database("halt");
    pg.query(
        "halt",
        "CREATE TABLE orders (id text PRIMARY KEY, customer text, \
         CONSTRAINT no_ann CHECK (customer <> 'ann'))",
    );
    let mut halting = pg_link(
        &pg,
        "shop",
        "halt",
        mapping(
            json!({"orders": {"table": "orders", "key": "id", "columns": {"customer": "text"}}}),
        ),
    );
    halting["on_error"] = json!("stop");
    let halt = a.post(&links(), &halting).expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let stopped = wait_until(deadline_in(CATCH_UP), || {
        let s = link_status(&a, &halt)["status"].clone();
        s["state"] == "stopped"
            && s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("record 'o-1'") && e.contains("no_ann"))
    });
    assert!(stopped, "{}", link_status(&a, &halt));
    // Nothing of that group of transactions landed.
    assert_eq!(pg.query("halt", "SELECT count(*) FROM orders"), "0");

    // A wrong password: the link says so, and retries.
    let mut wrong = pg_link(&pg, "shop", "shop", mapping(orders));
    wrong["target"]["postgres"] = json!(format!(
        "postgresql://doppel:not-the-password@127.0.0.1:{}/shop",
        pg.port
    ));
    let bad = a.post(&links(), &wrong).expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let said = wait_until(deadline_in(CATCH_UP), || {
        let s = link_status(&a, &bad);
        s["status"]["state"] == "retrying"
            && s["status"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("password authentication failed for user \"doppel\""))
    });
    assert!(said, "{}", link_status(&a, &bad));
    let shown = a.get(&links()).ok().to_string();
    assert!(!shown.contains("not-the-password"), "{shown}");

    // The password never shows: not in the API's answers, not in the node's log.
    for answer in [
        a.get(&links()).ok().to_string(),
        link_status(&a, &id).to_string(),
        a.get(&dead).ok().to_string(),
    ] {
        assert!(!answer.contains(PASSWORD), "{answer}");
    }
    assert!(!a.stderr_tail().contains(PASSWORD));
    assert!(!a.stderr_tail().contains("not-the-password"));
}

/// The PostgreSQL side of the counter proof: a row's `n` only ever grows. A transaction
/// applied twice would write the same `n` again, one skipped would leave a row behind
/// the source; each is caught (the trigger records it, the final comparison fails).
const NEVER_TWICE: &str = "
CREATE TABLE orders (id text PRIMARY KEY, n bigint);
CREATE TABLE twice (id text, old bigint, new bigint);
CREATE FUNCTION n_grows() RETURNS trigger AS $$
BEGIN
  IF NEW.n <= OLD.n THEN INSERT INTO twice VALUES (NEW.id, OLD.n, NEW.n); END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER n_grows BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION n_grows();";

/// Writers each counting up their own records (`n` is the number of writes to it), until
/// told to stop or a write fails (the node went away).
fn writers(
    db: &Db,
    threads: usize,
    keys: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..threads)
        .map(|t| {
            let db = db.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                // Where each record stands on the source now.
                let mut n: Vec<u64> = (0..keys)
                    .map(|k| {
                        db.data("orders", &format!("w{t}-{k}"))
                            .and_then(|d| d["n"].as_u64())
                            .unwrap_or(0)
                    })
                    .collect();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let k = i % keys;
                    let next = n[k] + 1;
                    let r = db.client().try_request(
                        "PUT",
                        &db.record_path("orders", &format!("w{t}-{k}")),
                        Body::Json(&json!({"alt": {}, "data": {"n": next}})),
                    );
                    match r {
                        Ok(r) if r.status < 300 => n[k] = next,
                        _ => return,
                    }
                    i += 1;
                }
            })
        })
        .collect()
}

fn source_counts(db: &Db) -> BTreeMap<String, u64> {
    db.contents("orders")
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_string(),
                r["data"]["n"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn target_counts(pg: &Postgres) -> BTreeMap<String, u64> {
    pg.query("shop", "SELECT id, n FROM orders")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (id, n) = l.split_once('|').unwrap();
            (id.to_string(), n.parse().unwrap())
        })
        .collect()
}

#[test]
fn exactly_once_across_a_kill_9_of_the_applying_source_node_and_a_postgres_restart() {
    let mut pg = Postgres::start();
    pg.create_database("shop");
    pg.query("shop", NEVER_TWICE);
    let mut a = Node::start();
    let src = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    let stages =
        mapping(json!({"orders": {"table": "orders", "key": "id", "columns": {"n": "bigint"}}}));
    let id = a
        .post(&links(), &pg_link(&pg, "shop", "shop", stages))
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Writers run; the source node (the process applying into PostgreSQL) is killed
    // with -9 while the link is behind.
    let stop = Arc::new(AtomicBool::new(false));
    let running = writers(&src, 4, 25, &stop);
    let behind = wait_until(deadline_in(CATCH_UP), || {
        let s = link_status(&a, &id)["status"].clone();
        s["acked_serial"].as_u64() > Some(200) && s["lag_entries"].as_u64() > Some(0)
    });
    assert!(behind, "{}", link_status(&a, &id));
    a.kill9();
    for w in running {
        w.join().unwrap();
    }
    a.restart();
    let src = a.db(DEFAULT_TENANT, "shop");

    // Writers again; PostgreSQL stops (connections cut) and starts while they write.
    let running = writers(&src, 4, 25, &stop);
    let moving = wait_until(deadline_in(CATCH_UP), || {
        link_status(&a, &id)["status"]["acked_serial"].as_u64()
            > src.info()["last_serial"].as_u64().map(|s| s / 2)
    });
    assert!(moving, "{}", link_status(&a, &id));
    pg.stop();
    let noticed = wait_until(deadline_in(CATCH_UP), || {
        let s = link_status(&a, &id)["status"].clone();
        s["state"] == "retrying" && s["lag_entries"].as_u64() > Some(0)
    });
    assert!(noticed, "{}", link_status(&a, &id));
    pg.start_again();
    let resumed = wait_until(deadline_in(CATCH_UP), || {
        link_status(&a, &id)["status"]["state"] == "streaming"
    });
    assert!(resumed, "{}", link_status(&a, &id));
    stop.store(true, Ordering::SeqCst);
    for w in running {
        w.join().unwrap();
    }

    caught_up(&a, &src, &id);
    let (source, target) = (source_counts(&src), target_counts(&pg));
    assert_eq!(source.len(), 100);
    assert_eq!(source, target);
    assert_eq!(pg.query("shop", "SELECT count(*) FROM twice"), "0");
    let link = link_status(&a, &id);
    assert!(link["status"]["connections"].as_u64() >= Some(2), "{link}");
}

#[test]
fn a_bootstrap_meets_the_stream_without_gap_or_duplicate_and_interrelated_lines_wait_for_their_orders(
) {
    use doppel_server::plugins::builtin;
    let pg = Postgres::start();
    let a = Node::start();

    // The seam: 300 records whose log the snapshots pruned, writers running while the
    // link starts from a copy of the source and then streams.
    pg.create_database("seam");
    pg.query("seam", NEVER_TWICE);
    let src = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    for t in 0..3 {
        let ops: Vec<Value> = (0..100)
            .map(|k| op::upsert("orders", &format!("w{t}-{k}"), json!({"n": 1})))
            .collect();
        src.batch(json!(ops)).ok();
        src.snapshot().expect(201);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let running = writers(&src, 3, 100, &stop);
    let stages =
        mapping(json!({"orders": {"table": "orders", "key": "id", "columns": {"n": "bigint"}}}));
    let id = a
        .post(&links(), &pg_link(&pg, "shop", "seam", stages))
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let streaming = wait_until(deadline_in(CATCH_UP), || {
        let s = link_status(&a, &id)["status"].clone();
        s["bootstraps"] == 1 && s["state"] == "streaming" && s["acked_serial"].as_u64() > Some(0)
    });
    assert!(streaming, "{}", link_status(&a, &id));
    // Writes go on past the seam, then stop.
    let seam = link_status(&a, &id)["status"]["acked_serial"]
        .as_u64()
        .unwrap();
    let past = wait_until(deadline_in(CATCH_UP), || {
        src.info()["last_serial"].as_u64() > Some(seam + 300)
    });
    assert!(past);
    stop.store(true, Ordering::SeqCst);
    for w in running {
        w.join().unwrap();
    }
    caught_up(&a, &src, &id);
    let target: BTreeMap<String, u64> = pg
        .query("seam", "SELECT id, n FROM orders")
        .lines()
        .map(|l| {
            let (id, n) = l.split_once('|').unwrap();
            (id.to_string(), n.parse().unwrap())
        })
        .collect();
    assert_eq!(source_counts(&src), target);
    assert_eq!(pg.query("seam", "SELECT count(*) FROM twice"), "0");
    assert_eq!(link_status(&a, &id)["status"]["bootstraps"], 1);
    // Done with it: its file `orders` would make the rule below ambiguous.
    a.delete(&format!("{}/{id}", links())).expect(204);
    a.delete(&format!("/v1/tenants/{DEFAULT_TENANT}/databases/shop"))
        .expect(204);

    // Interrelated databases (SPEC D): a line is applied after its order, even when
    // the orders' link is behind. The foreign key would refuse a line that came first.
    pg.create_database("sales");
    pg.query(
        "sales",
        "CREATE TABLE orders (id text PRIMARY KEY, total double precision);
         CREATE TABLE lines (id text PRIMARY KEY, order_id text NOT NULL REFERENCES orders (id));",
    );
    let orders = a.create_db(
        DEFAULT_TENANT,
        json!({"name": "orders", "files": [{"name": "orders"}]}),
    );
    let lines = a.create_db(
        DEFAULT_TENANT,
        json!({"name": "lines", "files": [{"name": "lines"}]}),
    );
    let orders_link = a
        .post(
            &links(),
            &pg_link(
                &pg,
                "orders",
                "sales",
                mapping(json!({"orders": {"table": "orders", "key": "id", "columns": {"total": "double"}}})),
            ),
        )
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut stages =
        mapping(json!({"lines": {"table": "lines", "key": "id", "columns": {"order_id": "text"}}}));
    stages.as_array_mut().unwrap().insert(
        0,
        json!({"plugin": format!("parent-rule@{BUILTIN_VERSION}"), "config": {"rules": [
            {"file": "lines", "parent_file": "orders", "parent_key_field": "order_id"}]}}),
    );
    let lines_link = a
        .post(&links(), &pg_link(&pg, "lines", "sales", stages))
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(builtin::BUILTIN_PLUGINS
        .iter()
        .any(|p| p.0 == "parent-rule"));
    orders
        .put("orders", "o-0", json!({}), json!({"total": 1}))
        .ok();
    caught_up(&a, &orders, &orders_link);
    // The orders' link stands still; an order and its line are written.
    a.post_empty(&format!("{}/{orders_link}/pause", links()))
        .ok();
    orders
        .put("orders", "o-1", json!({}), json!({"total": 2}))
        .ok();
    lines
        .put("lines", "l-1", json!({}), json!({"order_id": "o-1"}))
        .ok();
    // The lines' link has read the line and knows what it depends on: it holds it.
    let held = wait_until(deadline_in(CATCH_UP), || {
        link_status(&a, &lines_link)["status"]["interrelated"].as_u64() >= Some(1)
    });
    assert!(held, "{}", link_status(&a, &lines_link));
    assert_eq!(pg.query("sales", "SELECT count(*) FROM lines"), "0");
    a.post_empty(&format!("{}/{orders_link}/resume", links()))
        .ok();
    caught_up(&a, &orders, &orders_link);
    caught_up(&a, &lines, &lines_link);
    assert_eq!(
        pg.query("sales", "SELECT id, order_id FROM lines"),
        "l-1|o-1"
    );
    assert_eq!(link_status(&a, &lines_link)["status"]["quarantined"], 0);
    let letters = a
        .get(&format!("{}/{lines_link}/dead-letters", links()))
        .ok()
        .clone();
    assert_eq!(letters, json!([]));
}

/// The rows of `orders` in PostgreSQL database `shop`, `id|total` per line.
fn pg_orders(pg: &Postgres) -> String {
    pg.query("shop", "SELECT id, total FROM orders ORDER BY id")
}

/// Waits until PostgreSQL's `orders` read `want`.
fn wait_pg_orders(pg: &Postgres, want: &str) {
    let done = wait_until(deadline_in(CATCH_UP), || {
        pg.try_query("shop", "SELECT id, total FROM orders ORDER BY id")
            .is_ok_and(|rows| rows == want)
    });
    assert!(
        done,
        "PostgreSQL's orders never read {want:?}: {:?}",
        pg_orders(pg)
    );
}

#[test]
fn a_topology_document_declares_a_postgres_target_keeps_its_password_and_a_failover_re_points_its_source(
) {
    let pg = Postgres::start();
    pg.create_database("shop");
    let (mut a, b, c) = (Node::start(), Node::start(), Node::start());
    let primary = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    primary
        .put("orders", "o-1", json!({}), json!({"total": 1}))
        .ok();
    let topologies = format!("/v1/tenants/{DEFAULT_TENANT}/topologies");
    let nodes = json!({"a": {"url": a.base()}, "b": {"url": b.base()}, "c": {"url": c.base()}});
    let into_pg = |conn: String| {
        json!({"from": {"node": "a", "database": "shop"},
               "to": {"postgres": conn, "schema": "public"},
               "apply": "logical", "on_error": "quarantine", "create_tables": true,
               "stages": mapping(json!({"orders": {"table": "orders", "key": "id",
                                                   "columns": {"total": "bigint"}}}))})
    };
    let replica = json!({"from": {"node": "a", "database": "shop"},
                         "to": {"node": "b", "database": "shop"}, "mode": "sync"});

    // A document is refused at the PostgreSQL link's part when the source would refuse it.
    let mut mirror = into_pg(pg.url("shop"));
    mirror["apply"] = json!("mirror");
    let refused = c
        .post(
            &topologies,
            &json!({"name": "pg", "nodes": nodes, "links": [replica, mirror]}),
        )
        .expect_problem(422, "topology-invalid")
        .clone();
    assert_eq!(refused["errors"][0]["path"], "links[1].to", "{refused}");
    assert!(
        refused["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("\"apply\": \"logical\""),
        "{refused}"
    );
    let mut both = into_pg(pg.url("shop"));
    both["to"]["node"] = json!("b");
    let r = c.post(
        &topologies,
        &json!({"name": "pg", "nodes": nodes, "links": [both]}),
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.to_string().contains("or to PostgreSQL"), "{r:?}");

    // Applied: the PostgreSQL link is made on its source node and applies there.
    let doc = json!({"name": "pg", "nodes": nodes, "links": [replica, into_pg(pg.url("shop"))]});
    let applied = c.post(&topologies, &doc).ok().clone();
    let label = format!(
        "a/shop -> postgresql://doppel:***@127.0.0.1:{}/shop (public)",
        pg.port
    );
    assert_eq!(
        applied["plan"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["action"].as_str().unwrap(), s["link"].as_str().unwrap()))
            .collect::<Vec<_>>(),
        vec![("create", "a/shop -> b/shop"), ("create", label.as_str())],
        "{applied}"
    );
    primary
        .put("orders", "o-2", json!({}), json!({"total": 2}))
        .ok();
    wait_pg_orders(&pg, "o-1|1\no-2|2");

    // Shown with its password masked, in the document and the links, with its status.
    let shown = c.get(&format!("{topologies}/pg")).ok().clone();
    assert!(!shown.to_string().contains(PASSWORD), "{shown}");
    assert_eq!(
        shown["document"]["links"][1]["to"]["postgres"],
        format!("postgresql://doppel:***@127.0.0.1:{}/shop", pg.port)
    );
    let entry = &shown["links"][1];
    assert_eq!(entry["link"], label.as_str());
    assert_eq!(entry["status"]["state"], "streaming", "{shown}");
    let pg_link_id = entry["id"].as_str().unwrap().to_string();

    // The document sent back as shown keeps the password: nothing changes, the link applies on.
    let again = c.post(&topologies, &shown["document"]).ok().clone();
    let kept: Vec<&str> = again["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert_eq!(kept, vec!["keep", "keep"], "{again}");
    primary
        .put("orders", "o-3", json!({}), json!({"total": 3}))
        .ok();
    wait_pg_orders(&pg, "o-1|1\no-2|2\no-3|3");
    // A wrong password is a new connection: the link is replaced, and says why it fails.
    let mut wrong = doc.clone();
    wrong["links"][1]["to"]["postgres"] =
        json!(pg.url("shop").replace(PASSWORD, "not-the-password"));
    let replaced = c.post(&topologies, &wrong).ok().clone();
    assert_eq!(replaced["plan"][1]["action"], "replace", "{replaced}");
    assert_eq!(
        replaced["plan"][1]["reason"],
        "the PostgreSQL connection changed"
    );
    let failing = wait_until(deadline_in(CATCH_UP), || {
        c.get(&format!("{topologies}/pg")).ok()["links"][1]["status"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("password authentication failed"))
    });
    assert!(failing, "{}", c.get(&format!("{topologies}/pg")).ok());
    let back = c.post(&topologies, &doc).ok().clone();
    assert_eq!(back["plan"][1]["action"], "replace", "{back}");
    assert_ne!(back["plan"][1]["id"], json!(pg_link_id));

    // The primary dies; the failover promotes b and re-points the PostgreSQL link: it now
    // comes from b, takes over the old link's position (b's log holds the same entries up
    // to it), and b's writes land in PostgreSQL. A trigger notes every row PostgreSQL
    // writes from here on: o-1 to o-3 must not be applied again.
    wait_pg_orders(&pg, "o-1|1\no-2|2\no-3|3");
    let taken: u64 = pg
        .query("shop", "SELECT min(serial) FROM doppel_positions")
        .parse()
        .unwrap();
    pg.query(
        "shop",
        "CREATE TABLE writes (id text); \
         CREATE FUNCTION noted() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN INSERT INTO writes VALUES (NEW.id); RETURN NEW; END $$; \
         CREATE TRIGGER noted AFTER INSERT OR UPDATE ON orders FOR EACH ROW \
         EXECUTE FUNCTION noted()",
    );
    a.kill9();
    let failover = c
        .post(
            &format!("{topologies}/pg/failover"),
            &json!({"node": "b", "database": "shop"}),
        )
        .ok()
        .clone();
    assert!(!failover.to_string().contains(PASSWORD), "{failover}");
    let shown = c.get(&format!("{topologies}/pg")).ok().clone();
    let moved = shown["document"]["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["to"]["postgres"].is_string())
        .cloned()
        .unwrap();
    assert_eq!(
        moved["from"],
        json!({"node": "b", "database": "shop"}),
        "{shown}"
    );
    let on_b: Vec<Value> = b
        .get(&links())
        .ok()
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["target"]["postgres"].is_string())
        .cloned()
        .collect();
    assert_eq!(on_b.len(), 1, "{on_b:?}");
    let new_primary = b.db(DEFAULT_TENANT, "shop");
    new_primary
        .put("orders", "o-4", json!({}), json!({"total": 4}))
        .ok();
    new_primary.delete("orders", "o-1").ok();
    wait_pg_orders(&pg, "o-2|2\no-3|3\no-4|4");
    assert_eq!(
        pg.query("shop", "SELECT id FROM writes ORDER BY id"),
        "o-4",
        "the re-pointed link applied again rows the old one had applied"
    );
    let moved = b
        .get(&format!("{}/{}", links(), on_b[0]["id"].as_str().unwrap()))
        .ok()
        .clone();
    let status = &moved["status"];
    assert_eq!(status["resumed_by_serial"], 1, "{moved}");
    assert_eq!(status["started_at"], taken, "{moved}");
    assert_eq!(status["bootstraps"], 0, "{moved}");
    for node in [&b, &c] {
        assert!(!node.stderr_tail().contains(PASSWORD));
    }
}

#[test]
fn new_keys_land_by_copy_and_a_key_postgres_already_holds_falls_back_to_the_upsert() {
    let pg = Postgres::start();
    pg.create_database("shop");
    // Statements in PostgreSQL's log: which way the rows went.
    pg.query("shop", "ALTER SYSTEM SET log_statement = 'all'");
    pg.query("shop", "SELECT pg_reload_conf()");
    // A row written before the link: an insert at the source is not new here.
    pg.query(
        "shop",
        "CREATE TABLE orders (id text PRIMARY KEY, total double precision, extra jsonb); \
         INSERT INTO orders VALUES ('o-0050', -1, '{\"old\": true}')",
    );
    let a = Node::start();
    let src = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    let batch = |from: usize, to: usize, total: f64| {
        let ops: Vec<Value> = (from..to)
            .map(|i| {
                op::upsert(
                    "orders",
                    &format!("o-{i:04}"),
                    json!({"total": total, "note": format!("n{i}")}),
                )
            })
            .collect();
        src.batch(Value::Array(ops)).ok();
    };
    batch(0, 200, 1.0);
    let orders = json!({"orders": {"table": "orders", "key": "id",
        "columns": {"total": "double"}, "rest": "extra"}});
    let id = a
        .post(&links(), &pg_link(&pg, "shop", "shop", mapping(orders)))
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    caught_up(&a, &src, &id);
    // The COPY of the 200 met o-0050 and gave way to the upsert: every row is the source's.
    assert_eq!(
        pg.query(
            "shop",
            "SELECT count(*), sum(total), count(*) FILTER (WHERE extra ? 'note') FROM orders"
        ),
        "200|200|200"
    );
    assert_eq!(
        pg.query(
            "shop",
            "SELECT total, extra FROM orders WHERE id = 'o-0050'"
        ),
        r#"1|{"note": "n50"}"#
    );
    let log = pg.log();
    assert!(
        log.contains("duplicate key value violates unique constraint \"orders_pkey\""),
        "{log}"
    );

    // New keys in one transaction: a COPY that lands; then updates of them: upserts.
    batch(200, 300, 2.0);
    caught_up(&a, &src, &id);
    let copies = |log: &str| {
        log.lines()
            .filter(|l| {
                l.contains("LOG:")
                    && l.contains(
                        "COPY \"public\".\"orders\" (\"id\", \"total\", \"extra\") FROM STDIN BINARY",
                    )
            })
            .count()
    };
    assert_eq!(copies(&pg.log()), 2, "{}", pg.log());
    batch(100, 300, 3.0);
    caught_up(&a, &src, &id);
    assert_eq!(copies(&pg.log()), 2, "updates are upserts");
    assert_eq!(
        pg.query(
            "shop",
            "SELECT count(*), sum(total), count(*) FILTER (WHERE extra->>'note' = 'n' || substr(id, 3)::int) FROM orders"
        ),
        "300|700|300"
    );
    assert_eq!(
        link_status(&a, &id)["status"]["quarantined"],
        0,
        "{}",
        link_status(&a, &id)
    );
}
