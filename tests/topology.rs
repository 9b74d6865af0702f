//! Topology documents applied to real nodes on loopback (SPEC F6, F3): a chain of four
//! nodes that ends identical to its head, reconciling a changed document (only the
//! differences change, a dry run changes nothing), the live state of every link, and
//! documents refused at the part that is wrong.

use std::time::Duration;

use doppel_tests::*;

const CATCH_UP: Duration = Duration::from_secs(60);

fn topologies() -> String {
    format!("/v1/tenants/{DEFAULT_TENANT}/topologies")
}

fn links_of(node: &Node) -> Vec<Value> {
    node.get(&format!("/v1/tenants/{DEFAULT_TENANT}/links"))
        .ok()
        .as_array()
        .unwrap()
        .clone()
}

fn nodes_json(nodes: &[(&str, &Node)]) -> Value {
    let mut out = serde_json::Map::new();
    for (name, node) in nodes {
        out.insert(name.to_string(), json!({"url": node.base()}));
    }
    Value::Object(out)
}

fn link(from: (&str, &str), to: (&str, &str)) -> Value {
    json!({"from": {"node": from.0, "database": from.1}, "to": {"node": to.0, "database": to.1}})
}

/// A chaos proxy in front of `node`'s replication listener that drops, duplicates,
/// reorders and delays what links send it.
fn faulty_proxy_to(node: &Node) -> doppel_tests::chaos::ChaosProxy {
    use doppel_tests::chaos::{ChaosProxy, Direction, Faults};
    let addr = node.get("/v1/node").ok()["replication"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let proxy = ChaosProxy::start(addr).expect("chaos proxy");
    let faults = Faults {
        drop: 0.05,
        duplicate: 0.05,
        reorder: 0.1,
        jitter: Duration::from_millis(3),
        ..Faults::default()
    };
    proxy.set_faults(Direction::ToUpstream, faults);
    proxy
}

fn actions(answer: &Value) -> Vec<(String, String)> {
    answer["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["action"].as_str().unwrap().to_string(),
                s["link"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_chain_of_four_nodes_ends_identical_to_its_head_and_a_changed_document_changes_only_the_differences(
) {
    let (a, b, c, d) = (Node::start(), Node::start(), Node::start(), Node::start());
    let head = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    for i in 0..200 {
        head.put(
            "orders",
            &format!("o-{i:04}"),
            json!({"customer": format!("c{}", i % 7)}),
            json!({"total": i}),
        )
        .ok();
    }
    // The middle hop goes through a chaos proxy that drops, duplicates and reorders.
    let c_addr = c.get("/v1/node").ok()["replication"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let proxy = doppel_tests::chaos::ChaosProxy::start(c_addr).expect("chaos proxy");
    proxy.set_faults(
        doppel_tests::chaos::Direction::ToUpstream,
        doppel_tests::chaos::Faults {
            drop: 0.05,
            duplicate: 0.05,
            reorder: 0.1,
            jitter: Duration::from_millis(2),
            ..Default::default()
        },
    );
    let mut nodes = nodes_json(&[("a", &a), ("b", &b), ("c", &c), ("d", &d)]);
    nodes["c"]["replication"] = json!(proxy.addr().to_string());
    let v1 = json!({"name": "chain", "nodes": nodes, "links": [
        link(("a", "shop"), ("b", "shop")),
        link(("b", "shop"), ("c", "shop")),
        link(("c", "shop"), ("d", "shop")),
    ]});
    let applied = a.post(&topologies(), &v1).ok().clone();
    assert_eq!(
        actions(&applied),
        vec![
            ("create".into(), "a/shop -> b/shop".into()),
            ("create".into(), "b/shop -> c/shop".into()),
            ("create".into(), "c/shop -> d/shop".into()),
        ]
    );
    // Two writers go on at the head while the chain fills, through the faults; once they
    // heal the tail ends block-identical.
    let writers: Vec<_> = [200, 300]
        .into_iter()
        .map(|from| {
            let head = head.clone();
            std::thread::spawn(move || {
                for i in from..from + 100 {
                    head.put(
                        "orders",
                        &format!("o-{i:04}"),
                        json!({}),
                        json!({"total": i}),
                    )
                    .ok();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    head.delete("orders", "o-0007").ok();
    let tail = d.db(DEFAULT_TENANT, "shop");
    // Write on until the faults have hit the stream.
    let mut extra = 0;
    let faulted = wait_until(deadline_in(CATCH_UP), || {
        extra += 1;
        head.put(
            "orders",
            &format!("x-{extra:05}"),
            json!({}),
            json!({"n": extra}),
        )
        .ok();
        let up = proxy.stats().to_upstream;
        up.dropped > 0 && up.reordered > 0
    });
    assert!(faulted, "no fault hit the chain: {:?}", proxy.stats());
    proxy.heal();
    wait_identical(&head, &tail, CATCH_UP);
    assert_eq!(tail.contents("orders"), head.contents("orders"));
    assert_eq!(
        c.db(DEFAULT_TENANT, "shop").record_count("orders"),
        head.record_count("orders")
    );

    // The document as stored, with every link's live state.
    let shown = a.get(&format!("{}/chain", topologies())).ok().clone();
    // Stored normalised: every default spelled out.
    assert_eq!(shown["document"]["nodes"], v1["nodes"]);
    assert_eq!(shown["document"]["links"][2]["to"], v1["links"][2]["to"]);
    assert_eq!(shown["document"]["links"][2]["mode"], "async");
    for l in shown["links"].as_array().unwrap() {
        assert_eq!(l["status"]["state"], "streaming", "{shown}");
    }
    let listed = a.get(&topologies()).ok().clone();
    assert_eq!(listed[0]["name"], "chain");
    assert_eq!(listed[0]["links"], 3);

    // A changed document: b -> c becomes sync (a new link), c -> d goes, a -> d/copy
    // comes; a -> b stays as it is. The dry run shows that and changes nothing.
    let kept = links_of(&a)[0].clone();
    let v2 = json!({"name": "chain", "nodes": nodes, "links": [
        link(("a", "shop"), ("b", "shop")),
        {"from": {"node": "b", "database": "shop"}, "to": {"node": "c", "database": "shop"}, "mode": "sync"},
        link(("a", "shop"), ("d", "copy")),
    ]});
    let plan = a
        .post(&format!("{}?dry_run=true", topologies()), &v2)
        .ok()
        .clone();
    // Deletes first, then head to tail.
    let want = vec![
        ("delete".to_string(), "c/shop -> d/shop".to_string()),
        ("keep".into(), "a/shop -> b/shop".into()),
        ("create".into(), "a/shop -> d/copy".into()),
        ("replace".into(), "b/shop -> c/shop".into()),
    ];
    assert_eq!(actions(&plan), want);
    assert_eq!(plan["plan"][3]["reason"], "mode changed");
    assert_eq!(links_of(&c).len(), 1, "the dry run deleted a link");
    assert_eq!(links_of(&a).len(), 1, "the dry run created a link");
    assert_eq!(actions(&a.post(&topologies(), &v2).ok().clone()), want);
    let a_links = links_of(&a);
    assert_eq!(a_links.len(), 2);
    let still = a_links
        .iter()
        .find(|l| l["id"] == kept["id"])
        .expect("kept");
    assert_eq!(
        still["status"]["connections"], kept["status"]["connections"],
        "the kept link was not reconnected"
    );
    assert!(links_of(&c).is_empty());
    let b_links = links_of(&b);
    assert_eq!(b_links.len(), 1);
    assert_eq!(b_links[0]["mode"], "sync");
    head.put("orders", "after", json!({}), json!({"total": 1}))
        .ok();
    wait_identical(&head, &d.db(DEFAULT_TENANT, "copy"), CATCH_UP);
    wait_identical(&head, &c.db(DEFAULT_TENANT, "shop"), CATCH_UP);
    // The new b -> c link took the replica over and continued its stream.
    let b_link = &links_of(&b)[0];
    assert_eq!(b_link["status"]["bootstraps"], 0, "{b_link}");

    // Deleting the topology deletes its links.
    a.delete(&format!("{}/chain", topologies())).expect(204);
    assert!(links_of(&a).is_empty() && links_of(&b).is_empty());
    a.get(&format!("{}/chain", topologies()))
        .expect_problem(404, "not-found");
}

#[test]
fn a_wrong_document_is_refused_at_the_part_it_concerns_and_nothing_changes() {
    let (a, b) = (Node::start(), Node::start());
    a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    let nodes = nodes_json(&[("a", &a), ("b", &b)]);
    let refused = |doc: Value| {
        a.post(&topologies(), &doc)
            .expect_problem(422, "topology-invalid")
            .clone()
    };
    let errors = |p: &Value| -> Vec<(String, String)> {
        p["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["path"].as_str().unwrap().to_string(),
                    e["message"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    // A cycle, an unknown node and a duplicate target, all at once.
    let p = refused(json!({"name": "t", "nodes": nodes, "links": [
        link(("a", "shop"), ("b", "shop")),
        link(("b", "shop"), ("a", "shop")),
        link(("a", "shop"), ("z", "shop")),
        link(("a", "other"), ("b", "shop")),
    ]}));
    let e = errors(&p);
    assert_eq!(
        e.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        vec!["links[2].to.node", "links[3].to", "links[1]"],
        "{p}"
    );
    assert!(e[0].1.contains("unknown node 'z'"), "{p}");
    assert!(e[2].1.contains("cycle"), "{p}");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .starts_with("links[2].to.node"),
        "{p}"
    );
    // A stage that does not exist, a filter on a mirror and a missing source database,
    // each reported by the source node at the link.
    let p = refused(json!({"name": "t", "nodes": nodes, "links": [
        {"from": {"node": "a", "database": "shop"}, "to": {"node": "b", "database": "shop"},
         "apply": "logical", "stages": [{"plugin": "nope@1"}]},
        link(("a", "missing"), ("b", "m")),
    ]}));
    let e = errors(&p);
    assert_eq!(e[0].0, "links[0]");
    assert!(
        e[0].1.contains("node 'a' refuses it") && e[0].1.contains("nope"),
        "{p}"
    );
    assert_eq!(e[1].0, "links[1]");
    assert!(e[1].1.contains("missing"), "{p}");
    // A node that does not answer.
    let p = refused(json!({"name": "t",
        "nodes": {"a": {"url": a.base()}, "gone": {"url": "http://127.0.0.1:9"}},
        "links": [link(("a", "shop"), ("gone", "shop"))]}));
    let e = errors(&p);
    assert_eq!(e[0].0, "nodes.gone", "{p}");
    // A malformed document is a 400 like any body.
    a.post(
        &topologies(),
        &json!({"name": "t", "nodes": {}, "extra": 1}),
    )
    .expect_problem(400, "malformed-request");
    assert!(links_of(&a).is_empty());
    assert!(a.get(&topologies()).ok().as_array().unwrap().is_empty());
    // Only an operator applies a topology.
    a.client()
        .with_token(&token(DEFAULT_TENANT, Role::Reader))
        .post(
            &topologies(),
            &json!({"name": "t", "nodes": nodes, "links": []}),
        )
        .expect_problem(403, "forbidden");
}

#[test]
fn failover_keeps_every_acknowledged_sync_write_re_points_the_replicas_and_the_old_primary_rejoins()
{
    let mut a = Node::start_sticky();
    let (b, c) = (Node::start(), Node::start());
    let primary = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    let nodes = nodes_json(&[("a", &a), ("b", &b), ("c", &c)]);
    let doc = json!({"name": "ha", "nodes": nodes, "links": [
        {"from": {"node": "a", "database": "shop"}, "to": {"node": "b", "database": "shop"},
         "mode": "sync"},
        link(("a", "shop"), ("c", "shop")),
    ]});
    // The topology lives on c, a node that outlives the primary.
    c.post(&topologies(), &doc).ok();
    for l in links_of(&a) {
        wait_link_state(&a, l["id"].as_str().unwrap(), "streaming", CATCH_UP);
    }
    // Acknowledged sync commits, then the primary dies at once.
    let mut acked = Vec::new();
    for i in 0..150 {
        let key = format!("o-{i:04}");
        if primary
            .put("orders", &key, json!({"customer": "ann"}), json!({"n": i}))
            .status
            == 200
        {
            acked.push(key);
        }
    }
    assert_eq!(acked.len(), 150);
    a.kill9();

    // A replica that is not one cannot be promoted; b can.
    let failover = format!("{}/ha/failover", topologies());
    c.post(&failover, &json!({"node": "a", "database": "shop"}))
        .expect_problem(422, "topology-invalid");
    let out = c
        .post(&failover, &json!({"node": "b", "database": "shop"}))
        .ok()
        .clone();
    assert_eq!(out["old_primary"], json!({"node": "a", "database": "shop"}));
    assert!(out["promoted"]["took_us"].as_u64().is_some(), "{out}");
    let new_primary = b.db(DEFAULT_TENANT, "shop");
    for key in &acked {
        assert!(
            new_primary.data("orders", key).is_some(),
            "acknowledged {key} lost"
        );
    }
    // The new primary takes writes at once, and the other replica follows it.
    new_primary
        .put("orders", "after", json!({}), json!({"n": -1}))
        .ok();
    let other = c.db(DEFAULT_TENANT, "shop");
    wait_identical(&new_primary, &other, CATCH_UP);
    other
        .put("orders", "x", json!({}), json!(1))
        .expect_problem(409, "read-only-replica");
    let shown = c.get(&format!("{}/ha", topologies())).ok().clone();
    assert_eq!(
        shown["stale"].as_array().map(Vec::len),
        Some(2),
        "the old primary's links wait to be deleted: {shown}"
    );

    // The old primary comes back and rejoins as a replica of the new one, resynced.
    a.restart();
    let old = a.db(DEFAULT_TENANT, "shop");
    new_primary
        .put("orders", "later", json!({}), json!({"n": -2}))
        .ok();
    wait_identical(&new_primary, &old, CATCH_UP);
    old.put("orders", "x", json!({}), json!(1))
        .expect_problem(409, "read-only-replica");
    // Applying the topology again deletes the old primary's links.
    let again = c.post(&topologies(), &shown["document"]).ok().clone();
    let deleted = again["plan"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["action"] == "delete")
        .count();
    assert_eq!(deleted, 2, "{again}");
    assert!(links_of(&a).is_empty());
    assert_eq!(
        c.get(&format!("{}/ha", topologies())).ok()["stale"],
        json!([])
    );
}

/// The link on `source` whose target is `target`'s node (its id and live status).
fn link_to(source: &Node, target: &Node) -> Value {
    links_of(source)
        .into_iter()
        .find(|l| l["target"]["url"] == target.base())
        .unwrap_or_else(|| panic!("no link to {}: {:?}", target.base(), links_of(source)))
}

/// Waits until the link from `source` to `target` is streaming and its replica has
/// confirmed everything the source holds; returns its status.
fn wait_caught_up(source: &Node, target: &Node) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(deadline_in(CATCH_UP), || {
        last = link_to(source, target);
        let s = &last["status"];
        s["state"] == "streaming" && s["acked_serial"] == s["source_serial"]
    });
    assert!(ok, "the link never caught up: {last}");
    last["status"].clone()
}

#[test]
fn a_failover_continues_the_current_replica_and_the_returning_old_primary_by_serial_without_a_snapshot(
) {
    let mut a = Node::start_sticky();
    let (b, c) = (Node::start(), Node::start());
    let primary = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    let nodes = nodes_json(&[("a", &a), ("b", &b), ("c", &c)]);
    let sync = |to: &str| {
        json!({"from": {"node": "a", "database": "shop"}, "to": {"node": to, "database": "shop"},
               "mode": "sync"})
    };
    let doc = json!({"name": "ha", "nodes": nodes, "links": [sync("b"), sync("c")]});
    c.post(&topologies(), &doc).ok();
    for i in 0..300 {
        primary
            .put(
                "orders",
                &format!("o-{i:04}"),
                json!({"customer": "ann"}),
                json!({"n": i}),
            )
            .ok();
    }
    // Both replicas hold the whole log: c is current, not ahead of b.
    wait_caught_up(&a, &b);
    let before = wait_caught_up(&a, &c);
    let c_serial = before["acked_serial"].as_u64().unwrap();
    assert!(c_serial >= 300, "{before}");
    a.kill9();

    let out = c
        .post(
            &format!("{}/ha/failover", topologies()),
            &json!({"node": "b", "database": "shop"}),
        )
        .ok()
        .clone();
    assert!(out["promoted"]["epoch"].as_u64().is_some(), "{out}");
    let new_primary = b.db(DEFAULT_TENANT, "shop");
    new_primary
        .put("orders", "after", json!({}), json!({"n": -1}))
        .ok();
    // c keeps its store: the new primary's link continues it from its own serial.
    let status = wait_caught_up(&b, &c);
    assert_eq!(
        status["bootstraps"], 0,
        "c was rebuilt from a snapshot: {status}"
    );
    assert_eq!(status["resumed_by_serial"], 1, "{status}");
    assert_eq!(status["started_at"], c_serial, "{status}");
    assert_eq!(status["discarded_entries"], 0, "{status}");
    let other = c.db(DEFAULT_TENANT, "shop");
    wait_identical(&new_primary, &other, CATCH_UP);
    assert_eq!(other.data("orders", "after"), Some(json!({"n": -1})));

    // The old primary comes back: its log is a prefix of the new primary's as well.
    a.restart();
    new_primary
        .put("orders", "later", json!({}), json!({"n": -2}))
        .ok();
    let status = wait_caught_up(&b, &a);
    assert_eq!(
        status["bootstraps"], 0,
        "a was rebuilt from a snapshot: {status}"
    );
    assert_eq!(status["resumed_by_serial"], 1, "{status}");
    assert_eq!(status["started_at"], c_serial, "{status}");
    wait_identical(&new_primary, &a.db(DEFAULT_TENANT, "shop"), CATCH_UP);
}

#[test]
fn the_quorum_travels_with_the_topology_and_no_write_is_acknowledged_before_it_is_in_place() {
    let mut a = Node::start_sticky();
    let (b, c, d) = (Node::start(), Node::start(), Node::start());
    let primary = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    let nodes = nodes_json(&[("a", &a), ("b", &b), ("c", &c), ("d", &d)]);
    let sync = |to: &str| {
        json!({"from": {"node": "a", "database": "shop"}, "to": {"node": to, "database": "shop"},
               "mode": "sync"})
    };
    let quorum = |node: &str, k: u64| json!([{"node": node, "database": "shop", "k": k, "timeout_ms": 7000}]);
    let doc = json!({"name": "ha", "nodes": nodes, "links": [sync("b"), sync("c"), sync("d")]});
    // A quorum is checked against the document: more than the primary's sync links, a
    // node it does not declare.
    let mut wrong = doc.clone();
    wrong["quorum"] = quorum("a", 4);
    let refused = c
        .post(&topologies(), &wrong)
        .expect_problem(422, "topology-invalid")
        .clone();
    assert_eq!(refused["errors"][0]["path"], "quorum[0].k", "{refused}");
    wrong["quorum"] = json!([{"node": "z", "database": "shop", "k": 1}]);
    let refused = c
        .post(&topologies(), &wrong)
        .expect_problem(422, "topology-invalid")
        .clone();
    assert_eq!(refused["errors"][0]["path"], "quorum[0].node", "{refused}");

    let mut doc = doc;
    doc["quorum"] = quorum("a", 2);
    c.post(&topologies(), &doc).ok();
    let quorum_of = |node: &Node| {
        node.get(&format!(
            "/v1/tenants/{DEFAULT_TENANT}/databases/shop/quorum"
        ))
        .ok()
        .clone()
    };
    let q = quorum_of(&a);
    assert_eq!(
        (q["k"].as_u64(), q["timeout_ms"].as_u64()),
        (Some(2), Some(7000)),
        "{q}"
    );
    for i in 0..50 {
        primary
            .put("orders", &format!("o-{i:04}"), json!({}), json!({"n": i}))
            .ok();
    }
    for to in [&b, &c, &d] {
        wait_caught_up(&a, to);
    }
    a.kill9();

    // Writers aim at b throughout: refused while it is a replica, then each write it
    // acknowledges must already be on both remaining sync replicas (k = 2 of 2).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (b, c, d) = (
                b.db(DEFAULT_TENANT, "shop"),
                c.db(DEFAULT_TENANT, "shop"),
                d.db(DEFAULT_TENANT, "shop"),
            );
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut acked, mut missing) = (0, Vec::new());
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let key = format!("w{w}-{i:05}");
                    i += 1;
                    if b.put("orders", &key, json!({}), json!({"n": i})).status != 200 {
                        continue;
                    }
                    acked += 1;
                    for replica in [&c, &d] {
                        if replica.data("orders", &key) != Some(json!({"n": i})) {
                            missing.push(key.clone());
                        }
                    }
                }
                (acked, missing)
            })
        })
        .collect();
    let out = c
        .post(
            &format!("{}/ha/failover", topologies()),
            &json!({"node": "b", "database": "shop"}),
        )
        .ok()
        .clone();
    // The promoted database took the quorum before its first write.
    assert_eq!(out["promoted"]["quorum"]["k"], 2, "{out}");
    assert_eq!(out["promoted"]["quorum"]["timeout_ms"], 7000, "{out}");
    let new_primary = b.db(DEFAULT_TENANT, "shop");
    let enough = wait_until(deadline_in(CATCH_UP), || {
        new_primary.record_count("orders") >= 50 + 300
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut acked, mut missing) = (0, Vec::new());
    for w in writers {
        let (n, m) = w.join().unwrap();
        acked += n;
        missing.extend(m);
    }
    assert!(enough && acked >= 300, "only {acked} writes acknowledged");
    assert!(
        missing.is_empty(),
        "acknowledged but not on the sync replicas: {missing:?}"
    );
    let q = quorum_of(&b);
    assert_eq!(
        (q["k"].as_u64(), q["timeout_ms"].as_u64()),
        (Some(2), Some(7000)),
        "{q}"
    );
    let shown = c.get(&format!("{}/ha", topologies())).ok().clone();
    assert_eq!(shown["document"]["quorum"], quorum("b", 2), "{shown}");
    assert_eq!(
        shown["failover"]["promoted"],
        json!({"node": "b", "database": "shop"})
    );
    assert_eq!(quorum_of(&b)["expected_links"], 2);
    // A document that takes b's sync links away takes their wait away too.
    let mut doc = shown["document"].clone();
    doc["quorum"] = json!([]);
    for l in doc["links"].as_array_mut().unwrap() {
        l["mode"] = json!("async");
    }
    c.post(&topologies(), &doc).ok();
    assert_eq!(quorum_of(&b)["expected_links"], 0);
    new_primary.put("orders", "alone", json!({}), json!(1)).ok();
}

#[test]
fn a_follower_and_the_old_primary_drop_only_the_tail_the_new_primary_never_had() {
    let mut a = Node::start_sticky();
    let (b, c) = (Node::start(), Node::start());
    let primary = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    let nodes = nodes_json(&[("a", &a), ("b", &b), ("c", &c)]);
    // Both async: c may get what b does not.
    let doc = json!({"name": "ha", "nodes": nodes, "links": [
        link(("a", "shop"), ("b", "shop")),
        link(("a", "shop"), ("c", "shop")),
    ]});
    c.post(&topologies(), &doc).ok();
    for i in 0..200 {
        primary
            .put("orders", &format!("o-{i:04}"), json!({}), json!({"n": i}))
            .ok();
    }
    wait_caught_up(&a, &b);
    let shared = wait_caught_up(&a, &c)["acked_serial"].as_u64().unwrap();
    // b stops following; a and c go on: 30 transactions only they hold.
    let to_b = link_to(&a, &b)["id"].as_str().unwrap().to_string();
    a.post_empty(&format!("/v1/tenants/{DEFAULT_TENANT}/links/{to_b}/pause"));
    wait_link_state(&a, &to_b, "paused", CATCH_UP);
    for i in 0..30 {
        primary
            .put(
                "orders",
                &format!("lost-{i:02}"),
                json!({}),
                json!({"n": i}),
            )
            .ok();
    }
    let tail = wait_caught_up(&a, &c)["acked_serial"].as_u64().unwrap() - shared;
    assert!(tail >= 30, "{tail}");
    a.kill9();

    c.post(
        &format!("{}/ha/failover", topologies()),
        &json!({"node": "b", "database": "shop", "force": true}),
    )
    .ok();
    let new_primary = b.db(DEFAULT_TENANT, "shop");
    new_primary
        .put("orders", "after", json!({}), json!({"n": -1}))
        .ok();
    // c drops exactly the tail b never had, keeps the rest, and follows b.
    let status = wait_caught_up(&b, &c);
    assert_eq!(status["discarded_entries"], tail, "{status}");
    assert_eq!(status["bootstraps"], 0, "{status}");
    assert_eq!(status["started_at"], shared, "{status}");
    let other = c.db(DEFAULT_TENANT, "shop");
    wait_identical(&new_primary, &other, CATCH_UP);
    assert_eq!(other.data("orders", "lost-00"), None);
    assert_eq!(other.data("orders", "o-0199"), Some(json!({"n": 199})));

    // The old primary returns with the same unreplicated tail: it drops it too.
    a.restart();
    let status = wait_caught_up(&b, &a);
    assert_eq!(status["discarded_entries"], tail, "{status}");
    assert_eq!(status["bootstraps"], 0, "{status}");
    let old = a.db(DEFAULT_TENANT, "shop");
    wait_identical(&new_primary, &old, CATCH_UP);
    assert_eq!(old.data("orders", "lost-29"), None);
    // The failover record says so, per follower.
    let shown = c.get(&format!("{}/ha", topologies())).ok().clone();
    let record = &shown["failover"];
    assert_eq!(record["serial"], shared, "{shown}");
    assert!(record["epoch"].as_u64().is_some(), "{shown}");
    for to in ["a", "c"] {
        let f = record["followers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["to"]["node"] == to)
            .unwrap_or_else(|| panic!("no follower {to}: {shown}"));
        assert_eq!(f["discarded_entries"], tail, "{shown}");
        assert_eq!(f["bootstraps"], 0, "{shown}");
    }
}

#[test]
fn many_to_one_consolidates_two_sources_under_concurrent_writes_and_faults_kept_apart_by_namespaces(
) {
    use doppel_server::plugins::builtin;
    let (a, b, c) = (Node::start(), Node::start(), Node::start());
    for n in [&a, &b] {
        upload_plugin(n, "ns", "transform", builtin::NAMESPACE);
    }
    let (sa, sb) = (
        a.create_db(DEFAULT_TENANT, shop_spec("shop")),
        b.create_db(DEFAULT_TENANT, shop_spec("shop")),
    );
    // Both links reach c through one chaos proxy.
    let proxy = faulty_proxy_to(&c);
    let mut nodes = nodes_json(&[("a", &a), ("b", &b), ("c", &c)]);
    nodes["c"]["replication"] = json!(proxy.addr().to_string());
    let from = |node: &str, prefix: &str| {
        json!({"from": {"node": node, "database": "shop"}, "to": {"node": "c", "database": "all"},
               "apply": "logical",
               "stages": [{"plugin": "ns@1", "config": {"default": {"key_prefix": prefix}}}]})
    };
    let doc = json!({"name": "merge", "nodes": nodes, "links": [from("a", "a/"), from("b", "b/")]});
    c.post(&topologies(), &doc).ok();

    // Both sources write the same keys at the same time.
    let writer = |db: Db, tag: &'static str| {
        std::thread::spawn(move || {
            for i in 0..150 {
                let key = format!("o-{:03}", i % 60);
                db.put(
                    "orders",
                    &key,
                    json!({"customer": tag}),
                    json!({"n": i, "by": tag}),
                )
                .ok();
                if i % 7 == 0 {
                    let r = db.delete("orders", &format!("o-{:03}", (i + 3) % 60));
                    assert!(r.status == 200 || r.status == 404, "{r}");
                }
            }
        })
    };
    let (wa, wb) = (writer(sa.clone(), "a"), writer(sb.clone(), "b"));
    wa.join().unwrap();
    wb.join().unwrap();
    proxy.heal();
    // The consolidated database holds each source's records under its prefix.
    let expected = |src: &Db, prefix: &str| -> Vec<(String, Value)> {
        src.contents("orders")
            .into_iter()
            .map(|r| {
                (
                    format!("{prefix}{}", r["key"].as_str().unwrap()),
                    r["data"].clone(),
                )
            })
            .collect()
    };
    let mut want = expected(&sa, "a/");
    want.extend(expected(&sb, "b/"));
    want.sort_by(|x, y| x.0.cmp(&y.0));
    let all = c.db(DEFAULT_TENANT, "all");
    let got = || -> Vec<(String, Value)> {
        all.contents("orders")
            .into_iter()
            .map(|r| (r["key"].as_str().unwrap().to_string(), r["data"].clone()))
            .collect()
    };
    assert!(
        wait_until(deadline_in(CATCH_UP), || got() == want),
        "consolidated {:?}\nexpected {:?}",
        got().len(),
        want.len()
    );
    assert!(proxy.stats().to_upstream.dropped > 0, "{:?}", proxy.stats());
    assert_eq!(
        all.alt_keys("orders", "customer", "a").len(),
        expected(&sa, "a/").len()
    );
    all.put("orders", "x", json!({}), json!(1))
        .expect_problem(409, "read-only-replica");
    // A mirror cannot join a consolidated database.
    let refused = c
        .post(
            &topologies(),
            &json!({"name": "bad", "nodes": nodes, "links": [
                from("a", "a/"),
                link(("b", "shop"), ("c", "all"))]}),
        )
        .expect_problem(422, "topology-invalid")
        .clone();
    assert_eq!(refused["errors"][0]["path"], "links[1].to", "{refused}");
}

fn mutual_spec(name: &str) -> Value {
    let mut spec = shop_spec(name);
    spec["mutual"] = json!(true);
    spec
}

/// Both ways between `a` and `b`, mutual, for database `db`.
fn mutual_pair(db: &str, conflicts: Value) -> Vec<Value> {
    ["a", "b"]
        .iter()
        .map(|from| {
            let to = if *from == "a" { "b" } else { "a" };
            json!({"from": {"node": from, "database": db}, "to": {"node": to, "database": db},
                   "apply": "logical", "conflicts": conflicts})
        })
        .collect()
}

fn conflicts_of(db: &Db) -> Value {
    db.client().get(&db.path("/conflicts")).ok().clone()
}

/// `verb` (pause, resume) every link whose source is `node`.
fn every_link(node: &Node, verb: &str) {
    for l in links_of(node) {
        let id = l["id"].as_str().unwrap();
        node.post_empty(&format!("/v1/tenants/{DEFAULT_TENANT}/links/{id}/{verb}"))
            .ok();
    }
}

fn last_serial(db: &Db) -> u64 {
    db.info().ok()["last_serial"].as_u64().unwrap()
}

/// Every link of `node` has sent and had confirmed all its source holds.
fn caught_up(node: &Node) -> bool {
    links_of(node).iter().all(|l| {
        let s = &l["status"];
        s["state"] == "streaming" && s["acked_serial"] == s["source_serial"]
    })
}

#[test]
fn mutual_sites_writing_the_same_keys_through_faults_converge_and_no_update_returns_to_its_origin()
{
    let (a, b) = (Node::start(), Node::start());
    let (da, db) = (
        a.create_db(DEFAULT_TENANT, mutual_spec("shop")),
        b.create_db(DEFAULT_TENANT, mutual_spec("shop")),
    );
    // a -> b goes through a faulty proxy.
    let proxy = faulty_proxy_to(&b);
    let mut nodes = nodes_json(&[("a", &a), ("b", &b)]);
    nodes["b"]["replication"] = json!(proxy.addr().to_string());
    let doc = json!({"name": "mutual", "nodes": nodes,
                     "links": mutual_pair("shop", json!({"strategy": "lww"}))});
    a.post(&topologies(), &doc).ok();

    // Both sites write the same keys at the same time; each remembers what it wrote
    // last to each key (None: deleted).
    let writer = |db: Db, tag: &'static str| {
        std::thread::spawn(move || {
            let mut last = std::collections::BTreeMap::new();
            for i in 0..200 {
                let key = format!("o-{:03}", i % 40);
                let data = json!({"n": i, "by": tag});
                db.put("orders", &key, json!({"customer": tag}), data.clone())
                    .ok();
                last.insert(key, Some(data));
                if i % 9 == 0 {
                    let gone = format!("o-{:03}", (i + 5) % 40);
                    let r = db.delete("orders", &gone);
                    assert!(r.status == 200 || r.status == 404, "{r}");
                    last.insert(gone, None);
                }
            }
            last
        })
    };
    let (wa, wb) = (writer(da.clone(), "a"), writer(db.clone(), "b"));
    let (last_a, last_b) = (wa.join().unwrap(), wb.join().unwrap());
    proxy.heal();
    let same = || caught_up(&a) && caught_up(&b) && da.contents("orders") == db.contents("orders");
    assert!(
        wait_until(deadline_in(CATCH_UP), same),
        "the sites did not converge: a has {}, b has {} records; links a {:?} b {:?}",
        da.contents("orders").len(),
        db.contents("orders").len(),
        links_of(&a),
        links_of(&b)
    );
    assert!(proxy.stats().to_upstream.dropped > 0, "{:?}", proxy.stats());
    // The versions are identical too, and each record is the last write of one site.
    assert_eq!(da.contents("__versions"), db.contents("__versions"));
    let finals: std::collections::BTreeMap<String, Value> = da
        .contents("orders")
        .into_iter()
        .map(|r| (r["key"].as_str().unwrap().to_string(), r["data"].clone()))
        .collect();
    for key in last_a.keys().chain(last_b.keys()) {
        let got = finals.get(key).cloned();
        assert!(
            got == last_a.get(key).cloned().flatten() || got == last_b.get(key).cloned().flatten(),
            "{key}: {got:?} is neither site's last write ({:?}, {:?})",
            last_a.get(key),
            last_b.get(key)
        );
    }
    // Concurrent writes of one key were detected, counted and logged with both sides.
    let (ca, cb) = (conflicts_of(&da), conflicts_of(&db));
    let count = ca["count"].as_u64().unwrap() + cb["count"].as_u64().unwrap();
    assert!(count > 0, "no conflict detected: {ca} {cb}");
    let entry = [&ca, &cb]
        .iter()
        .find_map(|c| c["conflicts"].as_array().unwrap().first().cloned())
        .unwrap();
    assert_eq!(entry["strategy"], "lww", "{entry}");
    assert!(
        ["local", "remote"].contains(&entry["decision"].as_str().unwrap()),
        "{entry}"
    );
    let (l, r) = (&entry["local"], &entry["remote"]);
    let later_is_remote = (r["timestamp_us"].as_u64(), r["origin"].as_u64())
        > (l["timestamp_us"].as_u64(), l["origin"].as_u64());
    assert_eq!(entry["decision"] == "remote", later_is_remote, "{entry}");

    // No update returns to its origin: one more transaction on a (large enough to
    // span several log chunks) is the last change of a, after b applied it and both
    // links are idle.
    let ops: Vec<Value> = (0..600)
        .map(|i| {
            json!({"op": "upsert", "file": "orders", "key": format!("echo-{i:03}"),
                        "data": {"pad": "x".repeat(100)}})
        })
        .collect();
    let committed = da.batch(json!(ops)).ok()["last_serial"].clone();
    assert!(wait_until(deadline_in(CATCH_UP), || {
        db.data("orders", "echo-599").is_some() && caught_up(&a) && caught_up(&b)
    }));
    assert_eq!(json!(last_serial(&da)), committed);
    for node in [&a, &b] {
        let replicas = node
            .get(&format!("/v1/tenants/{DEFAULT_TENANT}/replicas"))
            .ok()
            .clone();
        let counts = &replicas[0]["mutual"];
        assert!(counts["writes"].as_u64().unwrap() > 0, "{replicas}");
        assert_eq!(
            counts["returned"], 0,
            "an update came back to its origin: {replicas}"
        );
    }
    // A mutual database takes no ordinary logical link in, and a cycle of ordinary
    // links is still refused.
    let mut plain = mutual_pair("shop", json!({"strategy": "lww"}));
    plain[1].as_object_mut().unwrap().remove("conflicts");
    let refused = a
        .post(
            &topologies(),
            &json!({"name": "bad", "nodes": nodes, "links": plain}),
        )
        .expect_problem(422, "topology-invalid")
        .clone();
    let text = refused["errors"].to_string();
    assert!(text.contains("must be mutual too"), "{refused}");
    assert!(text.contains("needs its way back"), "{refused}");
}

#[test]
fn site_priority_and_a_resolver_plugin_decide_a_conflict_alike_on_both_sites() {
    use doppel_server::plugins::builtin;
    let (a, mut b) = (Node::start(), Node::start_sticky());
    for n in [&a, &b] {
        upload_plugin(n, "lww", "resolver", builtin::LWW_RESOLVER);
    }
    let a_id = a.get("/v1/node").ok()["id"].as_str().unwrap().to_string();
    let mut links = mutual_pair("p", json!({"strategy": "priority", "priority": [a_id]}));
    links.extend(mutual_pair(
        "r",
        json!({"strategy": "resolver",
               "resolver": {"plugin": "lww@1", "config": {"strategy": "max", "field": "v"}}}),
    ));
    let sites: Vec<(Db, Db)> = ["p", "r"]
        .iter()
        .map(|name| {
            (
                a.create_db(DEFAULT_TENANT, mutual_spec(name)),
                b.create_db(DEFAULT_TENANT, mutual_spec(name)),
            )
        })
        .collect();
    let doc =
        json!({"name": "rules", "nodes": nodes_json(&[("a", &a), ("b", &b)]), "links": links});
    a.post(&topologies(), &doc).ok();
    // Both sites write one key while the links are paused: a first, b later, so the
    // last writer would be b.
    every_link(&a, "pause");
    every_link(&b, "pause");
    for (da, db) in &sites {
        da.put("orders", "k", json!({}), json!({"by": "a", "v": 9}))
            .ok();
        db.put("orders", "k", json!({}), json!({"by": "b", "v": 3}))
            .ok();
    }
    every_link(&a, "resume");
    every_link(&b, "resume");
    for (da, db) in &sites {
        assert!(
            wait_until(deadline_in(CATCH_UP), || {
                caught_up(&a)
                    && caught_up(&b)
                    && conflicts_of(da)["count"] == 1
                    && conflicts_of(db)["count"] == 1
            }),
            "{} {}",
            conflicts_of(da),
            conflicts_of(db)
        );
        // Priority to a, and the larger "v": a's write wins on both sites.
        for site in [da, db] {
            assert_eq!(site.data("orders", "k"), Some(json!({"by": "a", "v": 9})));
        }
        let on_b = &conflicts_of(db)["conflicts"][0];
        assert_eq!(on_b["decision"], "remote", "{on_b}");
        assert_eq!(on_b["local"]["data"], json!({"by": "b", "v": 3}), "{on_b}");
        assert_eq!(on_b["remote"]["data"], json!({"by": "a", "v": 9}), "{on_b}");
        let on_a = &conflicts_of(da)["conflicts"][0];
        assert_eq!(on_a["decision"], "local", "{on_a}");
        assert_eq!(
            on_a["remote"]["node"],
            b.get("/v1/node").ok()["id"],
            "{on_a}"
        );
    }
    // A site killed and restarted keeps its record versions and its conflict log, and
    // the pair goes on: b's next write follows the version it holds, so it is no
    // conflict, and it wins on a.
    b.kill9();
    b.restart();
    let (pa, pb) = &sites[0];
    pa.put("orders", "after", json!({}), json!({"by": "a"}))
        .ok();
    pb.put("orders", "k", json!({}), json!({"by": "b", "v": 4}))
        .ok();
    assert!(
        wait_until(deadline_in(CATCH_UP), || {
            pb.data("orders", "after").is_some()
                && pa.data("orders", "k") == Some(json!({"by": "b", "v": 4}))
                && caught_up(&a)
                && caught_up(&b)
        }),
        "{:?} {:?}",
        links_of(&a),
        links_of(&b)
    );
    assert_eq!(conflicts_of(pa)["count"], 1);
    assert_eq!(conflicts_of(pb)["count"], 1);
}

#[test]
fn a_sync_mutual_pair_has_every_acknowledged_write_on_the_other_site_at_once() {
    let (a, b) = (Node::start(), Node::start());
    let (da, db) = (
        a.create_db(DEFAULT_TENANT, mutual_spec("shop")),
        b.create_db(DEFAULT_TENANT, mutual_spec("shop")),
    );
    let mut links = mutual_pair("shop", json!({"strategy": "lww"}));
    for l in &mut links {
        l["mode"] = json!("sync");
    }
    let doc = json!({"name": "sync", "nodes": nodes_json(&[("a", &a), ("b", &b)]), "links": links});
    a.post(&topologies(), &doc).ok();
    assert!(wait_until(deadline_in(CATCH_UP), || caught_up(&a) && caught_up(&b)));
    for i in 0..20 {
        let (here, there) = if i % 2 == 0 { (&da, &db) } else { (&db, &da) };
        let data = json!({"n": i});
        here.put("orders", "k", json!({}), data.clone()).ok();
        // Acknowledged means applied on the other site: no waiting.
        assert_eq!(there.data("orders", "k"), Some(data), "write {i}");
    }
    assert_eq!(conflicts_of(&da)["count"], 0);
    assert_eq!(conflicts_of(&db)["count"], 0);
}

#[test]
fn parallel_sites_write_a_record_one_at_a_time_across_sites_and_a_cross_site_deadlock_cancels_one_side(
) {
    let (a, b) = (Node::start(), Node::start());
    let (da, db) = (
        a.create_db(DEFAULT_TENANT, mutual_spec("shop")),
        b.create_db(DEFAULT_TENANT, mutual_spec("shop")),
    );
    let mut links = mutual_pair("shop", json!({"strategy": "lww", "exclusive": true}));
    for l in &mut links {
        l["mode"] = json!("sync");
    }
    // a -> b goes through a faulty proxy.
    let proxy = faulty_proxy_to(&b);
    let mut nodes = nodes_json(&[("a", &a), ("b", &b)]);
    nodes["b"]["replication"] = json!(proxy.addr().to_string());
    let doc = json!({"name": "par", "nodes": nodes, "links": links});
    a.post(&topologies(), &doc).ok();
    assert!(wait_until(deadline_in(CATCH_UP), || caught_up(&a) && caught_up(&b)));

    // Both sites write the same records at once, two per transaction in opposite order
    // (the classic cross-site deadlock). Each attempt commits or is cancelled with 409.
    let writer = |db: Db, tag: &'static str| {
        std::thread::spawn(move || {
            let (mut done, mut cancelled) = (0, 0);
            for i in 0..60 {
                let (x, y) = (format!("o-{}", i % 4), format!("o-{}", (i + 1) % 4));
                let keys = if tag == "a" { [x, y] } else { [y, x] };
                let ops: Vec<Value> = keys
                    .iter()
                    .map(|k| json!({"op": "upsert", "file": "orders", "key": k, "data": {"by": tag, "i": i}}))
                    .collect();
                let r = db.batch(json!(ops));
                match r.status {
                    200 => done += 1,
                    409 => {
                        assert!(
                            ["deadlock", "lock-timeout"].contains(&r.code().unwrap()),
                            "{r}"
                        );
                        cancelled += 1;
                    }
                    _ => panic!("{r}"),
                }
            }
            (done, cancelled)
        })
    };
    let (wa, wb) = (writer(da.clone(), "a"), writer(db.clone(), "b"));
    let ((done_a, _), (done_b, _)) = (wa.join().unwrap(), wb.join().unwrap());
    assert!(done_a > 0 && done_b > 0, "{done_a} {done_b}");
    // One writer per record at a time: the sites never wrote a record concurrently,
    // so there was nothing to resolve, and each acknowledged write is everywhere.
    assert!(wait_until(deadline_in(CATCH_UP), || caught_up(&a) && caught_up(&b)));
    assert_eq!(da.contents("orders"), db.contents("orders"));
    let faults = proxy.stats().to_upstream;
    assert!(
        faults.dropped + faults.duplicated + faults.reordered > 0,
        "{faults:?}"
    );
    assert_eq!(conflicts_of(&da)["count"], 0, "site a resolved conflicts");
    assert_eq!(conflicts_of(&db)["count"], 0, "site b resolved conflicts");

    // Wait-die, deterministically: a record b holds for an older transaction of another
    // site refuses a's write at once; one held for a younger one makes it wait, here
    // past its lock timeout.
    let locks = db.path("/locks");
    b.post(&locks, &json!({"holder": [1, 1], "keys": ["orders/held"]}))
        .ok();
    da.put("orders", "held", json!({}), json!(1))
        .expect_problem(409, "deadlock");
    b.delete(&db.path("/locks/1.1"));
    da.put("orders", "held", json!({}), json!(2)).ok();
    assert_eq!(db.data("orders", "held"), Some(json!(2)));
    b.post(
        &locks,
        &json!({"holder": [u64::MAX, 1], "keys": ["orders/young"]}),
    )
    .ok();
    let ops = json!({"ops": [{"op": "upsert", "file": "orders", "key": "young", "data": 1}]});
    da.client()
        .post(&da.path("/transactions?lock_timeout_ms=300"), &ops)
        .expect_problem(409, "lock-timeout");
    assert_eq!(
        da.data("orders", "young"),
        None,
        "a refused write is not applied"
    );
    // Interactive transactions would hold other sites' locks across requests: the
    // request is well formed, the database cannot take it (422).
    a.post(&da.path("/txns"), &json!({}))
        .expect_problem(422, "invalid-request");
}

#[test]
fn a_resolver_plugin_merges_concurrent_changes_of_different_fields_alike_on_both_sites() {
    use doppel_server::plugins::builtin;
    let (a, b) = (Node::start(), Node::start());
    for n in [&a, &b] {
        upload_plugin(n, "lww", "resolver", builtin::LWW_RESOLVER);
    }
    let (da, db) = (
        a.create_db(DEFAULT_TENANT, mutual_spec("m")),
        b.create_db(DEFAULT_TENANT, mutual_spec("m")),
    );
    let links = mutual_pair(
        "m",
        json!({"strategy": "resolver",
               "resolver": {"plugin": "lww@1", "config": {"strategy": "merge"}}}),
    );
    let doc =
        json!({"name": "merge", "nodes": nodes_json(&[("a", &a), ("b", &b)]), "links": links});
    a.post(&topologies(), &doc).ok();
    let base = json!({"name": "ann", "city": "Oslo", "tier": 1});
    da.put("orders", "c1", json!({}), base.clone()).ok();
    assert!(wait_until(deadline_in(CATCH_UP), || db
        .data("orders", "c1")
        == Some(base.clone())));
    every_link(&a, "pause");
    every_link(&b, "pause");
    // Concurrently: a moves the customer, b raises the tier.
    da.put(
        "orders",
        "c1",
        json!({}),
        json!({"name": "ann", "city": "Bergen", "tier": 1}),
    )
    .ok();
    db.put(
        "orders",
        "c1",
        json!({}),
        json!({"name": "ann", "city": "Oslo", "tier": 2}),
    )
    .ok();
    every_link(&a, "resume");
    every_link(&b, "resume");
    let merged = json!({"name": "ann", "city": "Bergen", "tier": 2});
    assert!(
        wait_until(deadline_in(CATCH_UP), || {
            caught_up(&a)
                && caught_up(&b)
                && da.data("orders", "c1") == Some(merged.clone())
                && db.data("orders", "c1") == Some(merged.clone())
        }),
        "{:?} {:?} {} {}",
        da.data("orders", "c1"),
        db.data("orders", "c1"),
        conflicts_of(&da),
        conflicts_of(&db)
    );
    for site in [&da, &db] {
        let c = conflicts_of(site);
        assert_eq!(c["count"], 1, "{c}");
        assert_eq!(c["conflicts"][0]["decision"], "merged", "{c}");
        assert_eq!(c["conflicts"][0]["merged"], merged, "{c}");
    }
    // The two sites store the same version of the merge.
    assert_eq!(da.contents("__versions"), db.contents("__versions"));
}
