//! The cluster on etcd (issue 15), with real etcd and real nodes on loopback: membership
//! and `GET /v1/cluster`, topology documents stored in etcd with compare-and-set and
//! carried out by each member for its own links (also by a member that was down while
//! the document changed), writes sent to a replica pointed at the primary, and the
//! automatic failover when the primary is killed under concurrent synchronous writes
//! (no acknowledged write lost, the old primary back as a replica, identical contents);
//! a document with a PostgreSQL target carried out by its source member, its password
//! masked on every member and kept when the document comes back masked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use doppel_tests::etcd::Etcd;
use doppel_tests::postgres::{Postgres, PASSWORD};
use doppel_tests::*;

const WITHIN: Duration = Duration::from_secs(60);

fn topologies() -> String {
    format!("/v1/tenants/{DEFAULT_TENANT}/topologies")
}

fn nodes_json(nodes: &[(&str, &Node)]) -> Value {
    let mut out = serde_json::Map::new();
    for (name, node) in nodes {
        out.insert(name.to_string(), json!({"url": node.base()}));
    }
    Value::Object(out)
}

fn sync_link(from: &str, to: &str, db: &str) -> Value {
    json!({"from": {"node": from, "database": db}, "to": {"node": to, "database": db},
           "mode": "sync"})
}

/// Three members a, b, c of cluster `t` on `etcd`, with leases of `ttl_ms`.
fn members(etcd: &Etcd, ttl_ms: u64) -> (Node, Node, Node) {
    let start = |id: &str| Node::start_configured(&etcd.cluster_toml("t", id, ttl_ms));
    (start("a"), start("b"), start("c"))
}

/// The primary of `database` as `node` sees it in `GET /v1/cluster`.
fn primary_seen_by(node: &Node, database: &str) -> Option<String> {
    let c = node.get("/v1/cluster");
    if c.status != 200 {
        return None;
    }
    c["primaries"]
        .as_array()?
        .iter()
        .find(|p| p["database"] == database && p["tenant"] == DEFAULT_TENANT)
        .and_then(|p| p["node"].as_str().map(str::to_string))
}

/// `GET /v1/cluster` on `node` once it shows a failover.
fn cluster_with_failover(node: &Node) -> Value {
    let mut c = Value::Null;
    let ok = wait_until(deadline_in(WITHIN), || {
        c = node.get("/v1/cluster").ok().clone();
        c["failovers"].as_array().is_some_and(|f| !f.is_empty())
    });
    assert!(ok, "no failover recorded: {c}");
    c
}

fn wait_primary(node: &Node, database: &str, want: &str) {
    let mut seen = None;
    let ok = wait_until(deadline_in(WITHIN), || {
        seen = primary_seen_by(node, database);
        seen.as_deref() == Some(want)
    });
    assert!(
        ok,
        "{want} never became the primary of {database}: {seen:?}"
    );
}

/// Until `db` on `node` holds `key` with `n`.
fn wait_record(db: &Db, key: &str, n: i64) {
    let ok = wait_until(deadline_in(WITHIN), || {
        db.data("orders", key) == Some(json!({"n": n}))
    });
    assert!(ok, "{key} = {n} never arrived");
}

#[test]
fn members_share_documents_in_etcd_with_compare_and_set_and_each_carries_out_its_own_links() {
    let etcd = Etcd::start(1);
    // Long leases: a restarted primary must not lose its key by waiting (below).
    let (mut a, mut b, c) = members(&etcd, 10_000);
    let mut cluster = Value::Null;
    let all_up = wait_until(deadline_in(WITHIN), || {
        cluster = a.get("/v1/cluster").ok().clone();
        let up: Vec<&str> = cluster["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["state"] == "up")
            .filter_map(|m| m["node"].as_str())
            .collect();
        up == ["a", "b", "c"]
    });
    assert!(all_up, "{cluster}");
    assert_eq!(cluster["name"], "t", "{cluster}");
    assert_eq!(cluster["members"][0]["url"], a.base(), "{cluster}");

    a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    b.create_db(DEFAULT_TENANT, shop_spec("cat"));
    let nodes = nodes_json(&[("a", &a), ("b", &b), ("c", &c)]);
    let doc = json!({"name": "ha", "nodes": nodes,
                     "links": [sync_link("a", "b", "shop"), sync_link("a", "c", "shop")]});
    // Two callers post a first version at once: one wins, the other is told it is stale.
    let posts: Vec<Resp> = std::thread::scope(|s| {
        let first = s.spawn(|| b.post(&format!("{}?revision=0", topologies()), &doc));
        let second = s.spawn(|| c.post(&format!("{}?revision=0", topologies()), &doc));
        vec![first.join().unwrap(), second.join().unwrap()]
    });
    let mut statuses: Vec<u16> = posts.iter().map(|r| r.status).collect();
    statuses.sort();
    assert_eq!(statuses, vec![200, 409], "{posts:?}");
    let lost = posts.iter().find(|r| r.status == 409).unwrap();
    lost.expect_problem(409, "revision-conflict");
    let revision = posts.iter().find(|r| r.status == 200).unwrap()["revision"]
        .as_i64()
        .unwrap();
    assert_eq!(lost["revision"], revision, "{lost:?}");
    // Every member shows it.
    for node in [&a, &b, &c] {
        let shown = node.get(&format!("{}/ha", topologies())).ok().clone();
        assert_eq!(shown["revision"], revision, "{shown}");
        assert_eq!(shown["document"]["links"].as_array().unwrap().len(), 2);
    }
    // a carried out its links: writes acknowledged on a reach b and c.
    wait_primary(&c, "shop", "a");
    // A caller of another tenant sees the members, not this tenant's databases.
    let stranger = c.client().with_token(&token("other", Role::Reader));
    let seen = stranger.get("/v1/cluster").ok().clone();
    assert_eq!(seen["primaries"], json!([]), "{seen}");
    assert_eq!(seen["members"].as_array().unwrap().len(), 3, "{seen}");
    let primary = a.db(DEFAULT_TENANT, "shop");
    primary
        .put("orders", "o-1", json!({}), json!({"n": 1}))
        .ok();
    wait_record(&b.db(DEFAULT_TENANT, "shop"), "o-1", 1);
    wait_record(&c.db(DEFAULT_TENANT, "shop"), "o-1", 1);
    // A write sent to a replica is pointed at the primary.
    let refused = b
        .db(DEFAULT_TENANT, "shop")
        .put("orders", "x", json!({}), json!({}));
    let problem = refused.expect_problem(421, "misdirected-write");
    assert_eq!(problem["primary"], a.base(), "{problem}");

    // b is down while the document changes (a link of its own): back, it reconciles.
    b.terminate();
    let mut v2 = doc.clone();
    v2["links"]
        .as_array_mut()
        .unwrap()
        .push(json!({"from": {"node": "b", "database": "cat"},
                     "to": {"node": "c", "database": "cat"}}));
    let stale = a.post(&format!("{}?revision={}", topologies(), revision - 1), &v2);
    stale.expect_problem(409, "revision-conflict");
    a.post(&format!("{}?revision={revision}", topologies()), &v2)
        .ok();
    b.restart();
    wait_primary(&b, "cat", "b");
    b.db(DEFAULT_TENANT, "cat")
        .put("orders", "c-1", json!({}), json!({"n": 7}))
        .ok();
    wait_record(&c.db(DEFAULT_TENANT, "cat"), "c-1", 7);
    let shown = b.get(&format!("{}/ha", topologies())).ok().clone();
    // Every link of the document, with id and status where this member made it.
    let own: Vec<&str> = shown["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["id"].is_string() && l["status"].is_object())
        .map(|l| l["link"].as_str().unwrap())
        .collect();
    assert_eq!(own, vec!["b/cat -> c/cat"], "{shown}");
    assert_eq!(shown["links"].as_array().unwrap().len(), 3, "{shown}");

    // The primary restarts: it moves its leader key to its new lease (the key keeps
    // when it was taken) and takes writes again, with no failover.
    let leader = |node: &Node| {
        node.get("/v1/cluster").ok()["primaries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["database"] == "shop")
            .cloned()
    };
    let before = leader(&c).unwrap();
    a.restart();
    let db = a.db(DEFAULT_TENANT, "shop");
    assert!(wait_until(deadline_in(WITHIN), || {
        db.put("orders", "o-2", json!({}), json!({"n": 2})).status == 200
    }));
    assert_eq!(leader(&c).unwrap(), before);
    assert_eq!(c.get("/v1/cluster").ok()["failovers"], json!([]));
    wait_record(&b.db(DEFAULT_TENANT, "shop"), "o-2", 2);
}

/// kill -9 of the primary under concurrent synchronous writes, three times in CI
/// (`DOPPEL_KILL_RUNS` for more; the timed bench is tests/bench/cluster_failover.py).
#[test]
fn killing_the_primary_under_sync_writes_elects_a_standby_and_loses_no_acknowledged_write() {
    let runs: usize = std::env::var("DOPPEL_KILL_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for _ in 0..runs {
        kill_run();
    }
}

fn kill_run() {
    let etcd = Etcd::start(1);
    let (mut a, b, c) = members(&etcd, 2000);
    a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    let nodes = nodes_json(&[("a", &a), ("b", &b), ("c", &c)]);
    let doc = json!({"name": "ha", "nodes": nodes,
                     "links": [sync_link("a", "b", "shop"), sync_link("a", "c", "shop")]});
    c.post(&topologies(), &doc).ok();
    wait_primary(&b, "shop", "a");
    let primary = a.db(DEFAULT_TENANT, "shop");
    primary
        .put("orders", "first", json!({}), json!({"n": 0}))
        .ok();
    wait_record(&b.db(DEFAULT_TENANT, "shop"), "first", 0);
    wait_record(&c.db(DEFAULT_TENANT, "shop"), "first", 0);

    // Four writers; each keeps the keys a 200 acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(parking_lot::Mutex::new(Vec::<(String, i64)>::new()));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (db, stop, acked) = (a.db(DEFAULT_TENANT, "shop"), stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let mut i = 0i64;
                while !stop.load(Ordering::SeqCst) {
                    let key = format!("w{w}-{i:05}");
                    if let Ok(r) = db.client().try_request(
                        "PUT",
                        &db.record_path("orders", &key),
                        Body::Json(&json!({"alt": {}, "data": {"n": i}})),
                    ) {
                        if r.status == 200 {
                            acked.lock().push((key, i));
                        }
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let ok = wait_until(deadline_in(WITHIN), || acked.lock().len() >= 200);
    assert!(
        ok,
        "the writers got {} acknowledgements",
        acked.lock().len()
    );
    a.kill9();
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }

    // A standby takes over and takes writes.
    let mut new = None;
    let elected = wait_until(deadline_in(WITHIN), || {
        new = primary_seen_by(&b, "shop").filter(|p| p != "a");
        new.is_some()
    });
    assert!(elected, "no standby took over");
    let new = new.unwrap();
    let (winner, other) = if new == "b" { (&b, &c) } else { (&c, &b) };
    let winner_db = winner.db(DEFAULT_TENANT, "shop");
    let ok = wait_until(deadline_in(WITHIN), || {
        winner_db
            .put("orders", "after", json!({}), json!({"n": -1}))
            .status
            == 200
    });
    assert!(ok, "the new primary takes no writes");
    let acked = acked.lock().clone();
    for (key, n) in &acked {
        assert_eq!(
            winner_db.data("orders", key),
            Some(json!({"n": n})),
            "acknowledged write {key} lost"
        );
    }
    let cluster = cluster_with_failover(winner);
    let failover = &cluster["failovers"][0];
    assert_eq!(
        (failover["from"].as_str(), failover["to"].as_str()),
        (Some("a"), Some(new.as_str())),
        "{cluster}"
    );
    assert_eq!(failover["database"], "shop", "{cluster}");
    assert!(failover["took_ms"].as_u64().is_some(), "{cluster}");
    // The other standby follows the new primary.
    let other_db = other.db(DEFAULT_TENANT, "shop");
    wait_record(&other_db, "after", -1);
    // The old primary returns as a replica, refusing writes, and ends identical.
    a.restart();
    let old = a.db(DEFAULT_TENANT, "shop");
    wait_record(&old, "after", -1);
    let mut last = None;
    let pointed = wait_until(deadline_in(WITHIN), || {
        let r = old.put("orders", "x", json!({}), json!({}));
        let done = r.code() == Some("misdirected-write") && r["primary"] == winner.base();
        last = Some(r);
        done
    });
    assert!(
        pointed,
        "the old primary never pointed at the new one: {last:?}"
    );
    wait_identical(&winner_db, &old, WITHIN);
    wait_identical(&winner_db, &other_db, WITHIN);
}

/// The index of the member etcd elected leader (asked of each member).
fn etcd_leader(etcd: &Etcd) -> Option<usize> {
    let endpoints = etcd.endpoints();
    for e in &endpoints {
        let status: Value = ureq::post(&format!("{e}/v3/maintenance/status"))
            .send_json(json!({}))
            .ok()?
            .into_json()
            .ok()?;
        let leader = status["leader"].as_str()?.to_string();
        let me = status["header"]["member_id"].as_str()?.to_string();
        if leader == me {
            return endpoints.iter().position(|x| x == e);
        }
    }
    None
}

#[test]
fn a_three_member_etcd_losing_one_changes_nothing_and_an_etcd_outage_fences_the_primary_until_it_returns(
) {
    let mut etcd = Etcd::start(3);
    let start = |id: &str| Node::start_configured(&etcd.cluster_toml("t", id, 2000));
    let (a, b) = (start("a"), start("b"));
    a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    let nodes = nodes_json(&[("a", &a), ("b", &b)]);
    let doc = json!({"name": "ha", "nodes": nodes, "links": [sync_link("a", "b", "shop")]});
    a.post(&topologies(), &doc).ok();
    wait_primary(&b, "shop", "a");
    let primary = a.db(DEFAULT_TENANT, "shop");
    let mut acked = Vec::new();
    let mut write = |n: i64| {
        let r = primary.put("orders", &format!("o-{n:05}"), json!({}), json!({"n": n}));
        if r.status == 200 {
            acked.push(n);
        }
        r
    };
    for n in 0..20 {
        write(n).ok();
    }
    // One member of three goes (a follower: the first endpoint when it is one, so the
    // nodes also move to another endpoint): every write is still acknowledged.
    let leader = {
        let mut l = None;
        assert!(wait_until(deadline_in(WITHIN), || {
            l = etcd_leader(&etcd);
            l.is_some()
        }));
        l.unwrap()
    };
    etcd.kill(if leader == 0 { 1 } else { 0 });
    for n in 20..120 {
        write(n).ok();
    }
    assert_eq!(primary_seen_by(&b, "shop").as_deref(), Some("a"));

    // etcd unreachable: writes go on while the lease holds, then the primary fences
    // itself (503 not-primary) instead of acknowledging.
    etcd.pause();
    write(1000).ok();
    let mut fenced = None;
    let mut n = 1001;
    let ok = wait_until(deadline_in(WITHIN), || {
        let r = write(n);
        n += 1;
        if r.status == 503 {
            fenced = Some(r);
            return true;
        }
        false
    });
    assert!(
        ok,
        "the primary never fenced itself while etcd was unreachable"
    );
    fenced.unwrap().expect_problem(503, "not-primary");
    let refused = write(n);
    refused.expect_problem(503, "not-primary");
    // etcd back: a primary takes writes again (the same one, or the standby when the
    // lease ran out meanwhile), with every acknowledged write.
    etcd.resume();
    let mut now = None;
    let ok = wait_until(deadline_in(WITHIN), || {
        now = primary_seen_by(&b, "shop");
        let Some(p) = now.as_deref() else {
            return false;
        };
        let node = if p == "a" { &a } else { &b };
        node.db(DEFAULT_TENANT, "shop")
            .put("orders", "back", json!({}), json!({"n": -1}))
            .status
            == 200
    });
    assert!(ok, "writes never resumed: primary {now:?}");
    let node = if now.as_deref() == Some("a") { &a } else { &b };
    let db = node.db(DEFAULT_TENANT, "shop");
    for n in &acked {
        assert_eq!(
            db.data("orders", &format!("o-{n:05}")),
            Some(json!({"n": n}))
        );
    }
}

/// One partition run (see the test); the number of writes the old primary acknowledged
/// that the new primary does not hold (split-brain acknowledgements).
fn partition_run() -> usize {
    use doppel_tests::netns::Net;
    let net = Net::new(4);
    let etcd = Etcd::start_on_host(&net, 0);
    let start =
        |i: usize, id: &str| Node::start_on_host(&net, i, &etcd.cluster_toml("t", id, 2000));
    let (a, b, c) = (start(1, "a"), start(2, "b"), start(3, "c"));
    a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    let nodes = nodes_json(&[("a", &a), ("b", &b), ("c", &c)]);
    let doc = json!({"name": "ha", "nodes": nodes,
                     "links": [sync_link("a", "b", "shop"), sync_link("a", "c", "shop")]});
    c.post(&topologies(), &doc).ok();
    wait_primary(&b, "shop", "a");
    a.db(DEFAULT_TENANT, "shop")
        .put("orders", "first", json!({}), json!({"n": 0}))
        .ok();
    wait_record(&c.db(DEFAULT_TENANT, "shop"), "first", 0);

    // Clients on a's side of the partition keep writing to it.
    let stop = Arc::new(AtomicBool::new(false));
    let cut = Arc::new(AtomicBool::new(false));
    // (key, n, status, sent after the cut)
    let answers = Arc::new(parking_lot::Mutex::new(
        Vec::<(String, i64, u16, bool)>::new(),
    ));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let db = a.db(DEFAULT_TENANT, "shop");
            let (stop, cut, answers) = (stop.clone(), cut.clone(), answers.clone());
            std::thread::spawn(move || {
                let mut i = 0i64;
                while !stop.load(Ordering::SeqCst) {
                    let key = format!("w{w}-{i:05}");
                    let after = cut.load(Ordering::SeqCst);
                    let status = db
                        .client()
                        .try_request(
                            "PUT",
                            &db.record_path("orders", &key),
                            Body::Json(&json!({"alt": {}, "data": {"n": i}})),
                        )
                        .map_or(0, |r| r.status);
                    answers.lock().push((key, i, status, after));
                    i += 1;
                }
            })
        })
        .collect();
    let acked =
        |answers: &[(String, i64, u16, bool)]| answers.iter().filter(|a| a.2 == 200).count();
    assert!(wait_until(deadline_in(WITHIN), || acked(&answers.lock()) >= 50));
    cut.store(true, Ordering::SeqCst);
    net.cut(1);

    // The other side elects a standby, which takes writes.
    let mut new = None;
    let elected = wait_until(deadline_in(WITHIN), || {
        new = primary_seen_by(&b, "shop").filter(|p| p != "a");
        new.is_some()
    });
    assert!(elected, "no standby took over from the cut-off primary");
    let new = new.unwrap();
    let (winner, other) = if new == "b" { (&b, &c) } else { (&c, &b) };
    let winner_db = winner.db(DEFAULT_TENANT, "shop");
    assert!(wait_until(deadline_in(WITHIN), || {
        winner_db
            .put("orders", "after", json!({}), json!({"n": -1}))
            .status
            == 200
    }));
    // a's clients go on until each has had an answer sent after the election.
    let seen = answers.lock().len();
    assert!(wait_until(deadline_in(WITHIN), || answers.lock().len() >= seen + 4));
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    let answers = answers.lock().clone();
    // After the cut a acknowledged nothing once it had refused (its fence), and every
    // write it acknowledged is on the new primary.
    let first_refusal = answers
        .iter()
        .position(|a| a.3 && a.2 != 200)
        .expect("a refused writes after the cut");
    assert!(
        answers[first_refusal..].iter().all(|a| a.2 != 200),
        "the cut-off primary acknowledged a write after refusing one"
    );
    assert!(
        answers[first_refusal..].iter().any(|a| a.2 == 503),
        "the cut-off primary never fenced itself (503 not-primary)"
    );
    let split_brain = answers
        .iter()
        .filter(|a| a.2 == 200)
        .filter(|a| winner_db.data("orders", &a.0) != Some(json!({"n": a.1})))
        .count();

    // Healed, the old primary rejoins as a replica, and every node holds the same.
    net.heal(1);
    let old = a.db(DEFAULT_TENANT, "shop");
    wait_record(&old, "after", -1);
    // Once it has read the cluster again, it points writers at the new primary.
    let mut last = None;
    let pointed = wait_until(deadline_in(WITHIN), || {
        let r = old.put("orders", "x", json!({}), json!({}));
        let done = r.code() == Some("misdirected-write") && r["primary"] == winner.base();
        last = Some(r);
        done
    });
    assert!(pointed, "{last:?}");
    wait_identical(&winner_db, &old, WITHIN);
    wait_identical(&winner_db, &other.db(DEFAULT_TENANT, "shop"), WITHIN);
    split_brain
}

/// The primary is cut off from etcd and its replicas (network namespaces) while clients
/// on its side keep writing: none of their writes is acknowledged after its fence, a
/// standby takes over, and after healing the old primary is a replica with identical
/// contents. `DOPPEL_PARTITION_RUNS=20` repeats it (the bench, docs/BENCHMARKS.md).
#[test]
fn a_partitioned_primary_acknowledges_nothing_after_its_fence_and_rejoins_as_a_replica() {
    let runs: usize = std::env::var("DOPPEL_PARTITION_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut split_brain = 0;
    for run in 0..runs {
        let n = partition_run();
        eprintln!(
            "partition run {}: split-brain acknowledgements {n}",
            run + 1
        );
        split_brain += n;
    }
    eprintln!("partition runs {runs}: split-brain acknowledgements {split_brain}");
    assert_eq!(split_brain, 0);
}

/// With `"failover": "async-allowed"` asynchronous replicas may be promoted: the most
/// advanced live one takes over, and the record says which policy allowed it and how
/// many entries it knew it lacked.
#[test]
fn an_async_allowed_topology_promotes_the_most_advanced_async_replica() {
    let etcd = Etcd::start(1);
    let (mut a, b, c) = members(&etcd, 2000);
    a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    let nodes = nodes_json(&[("a", &a), ("b", &b), ("c", &c)]);
    let async_link = |to: &str| json!({"from": {"node": "a", "database": "shop"}, "to": {"node": to, "database": "shop"}});
    let doc = json!({"name": "ha", "nodes": nodes, "failover": "async-allowed",
                     "links": [async_link("b"), async_link("c")]});
    c.post(&topologies(), &doc).ok();
    assert_eq!(
        c.get(&format!("{}/ha", topologies())).ok()["document"]["failover"],
        "async-allowed"
    );
    wait_primary(&b, "shop", "a");
    let primary = a.db(DEFAULT_TENANT, "shop");
    for i in 0..20 {
        primary
            .put("orders", &format!("o-{i:03}"), json!({}), json!({"n": i}))
            .ok();
    }
    wait_record(&b.db(DEFAULT_TENANT, "shop"), "o-019", 19);
    wait_record(&c.db(DEFAULT_TENANT, "shop"), "o-019", 19);
    a.kill9();
    let mut new = None;
    let elected = wait_until(deadline_in(WITHIN), || {
        new = primary_seen_by(&c, "shop").filter(|p| p != "a");
        new.is_some()
    });
    assert!(elected, "no async replica took over");
    let winner = if new.as_deref() == Some("b") { &b } else { &c };
    let db = winner.db(DEFAULT_TENANT, "shop");
    assert!(wait_until(deadline_in(WITHIN), || {
        db.put("orders", "after", json!({}), json!({"n": -1}))
            .status
            == 200
    }));
    assert_eq!(db.data("orders", "o-019"), Some(json!({"n": 19})));
    let cluster = cluster_with_failover(winner);
    let f = &cluster["failovers"][0];
    assert_eq!(f["policy"], "async-allowed", "{cluster}");
    assert_eq!(f["lost_entries"], 0, "{cluster}");
}

/// Until PostgreSQL's `orders` read `want`.
fn wait_pg(pg: &Postgres, want: &str) {
    let mut seen = Err(String::new());
    let ok = wait_until(deadline_in(WITHIN), || {
        seen = pg.try_query("shop", "SELECT id, n FROM orders ORDER BY id");
        seen.as_deref() == Ok(want)
    });
    assert!(ok, "PostgreSQL's orders never read {want:?}: {seen:?}");
}

/// The ids of the PostgreSQL links on `node`.
fn pg_links(node: &Node) -> Vec<String> {
    node.get(&format!("/v1/tenants/{DEFAULT_TENANT}/links"))
        .ok()
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["target"]["postgres"].is_string())
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_document_in_etcd_with_a_postgres_target_is_carried_out_by_its_source_member_and_keeps_its_password(
) {
    let etcd = Etcd::start(1);
    let pg = Postgres::start();
    pg.create_database("shop");
    let (a, b, c) = members(&etcd, 10_000);
    let primary = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    primary
        .put("orders", "o-1", json!({}), json!({"n": 1}))
        .ok();
    let nodes = nodes_json(&[("a", &a), ("b", &b), ("c", &c)]);
    let doc = json!({"name": "pg", "nodes": nodes, "links": [
        {"from": {"node": "a", "database": "shop"},
         "to": {"postgres": pg.url("shop"), "schema": "public"},
         "apply": "logical", "on_error": "quarantine", "create_tables": true,
         "stages": [{"plugin": "json-columns@1.0.0", "config": {"files": {
             "orders": {"table": "orders", "key": "id", "columns": {"n": "bigint"}}}}}]}]});
    // Posted on b: stored in etcd, and a, the source, makes the link and applies.
    let revision = b.post(&format!("{}?revision=0", topologies()), &doc).ok()["revision"]
        .as_i64()
        .unwrap();
    wait_pg(&pg, "o-1|1");
    let made = pg_links(&a);
    assert_eq!(made.len(), 1, "{made:?}");
    assert!(pg_links(&b).is_empty() && pg_links(&c).is_empty());

    // Every member shows the document with the password masked.
    let masked = format!("postgresql://doppel:***@127.0.0.1:{}/shop", pg.port);
    let mut shown = Value::Null;
    for node in [&a, &b, &c] {
        shown = node.get(&format!("{}/pg", topologies())).ok().clone();
        assert!(!shown.to_string().contains(PASSWORD), "{shown}");
        assert_eq!(shown["document"]["links"][0]["to"]["postgres"], masked);
    }
    // Sent back as shown (masked) with its revision: the stored password is kept, the
    // link is the same one and applies on.
    c.post(
        &format!("{}?revision={revision}", topologies()),
        &shown["document"],
    )
    .ok();
    primary
        .put("orders", "o-2", json!({}), json!({"n": 2}))
        .ok();
    wait_pg(&pg, "o-1|1\no-2|2");
    assert_eq!(pg_links(&a), made);
    let status = a
        .get(&format!("/v1/tenants/{DEFAULT_TENANT}/links/{}", made[0]))
        .ok()
        .clone();
    assert_eq!(status["status"]["state"], "streaming", "{status}");
    assert_eq!(status["status"]["last_error"], Value::Null, "{status}");
    for node in [&a, &b, &c] {
        assert!(!node.stderr_tail().contains(PASSWORD));
    }
}
