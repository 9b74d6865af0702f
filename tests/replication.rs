//! Replication links between real nodes on loopback: async and sync mirrors, bootstrap
//! under load, resume after a replica restart, re-bootstrap after the source's log was
//! truncated, cancel propagation, replicas refusing client writes, quorum k of N, and
//! refused peers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use doppel_server::transport::wire::{self, FrameWriter, Hello, Msg};
use doppel_tests::chaos::{ChaosProxy, Direction, Faults};
use doppel_tests::*;

const CATCH_UP: Duration = Duration::from_secs(60);

fn orders(db: &Db, from: u64, to: u64) {
    let ops: Vec<Value> = (from..to)
        .map(|i| {
            op::upsert_alt(
                "orders",
                &format!("o-{i:06}"),
                json!({"customer": format!("c{}", i % 17)}),
                json!({"total": i, "note": "x".repeat((i % 50) as usize)}),
            )
        })
        .collect();
    db.batch(json!(ops)).ok();
}

#[test]
fn async_mirror_follows_a_live_write_load_and_ends_block_identical() {
    let a = Node::start();
    let b = Node::start();
    let src = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    orders(&src, 0, 1_000);
    src.snapshot().expect(201);
    orders(&src, 1_000, 2_000);
    // A second snapshot prunes the log before the first: the replica must start from
    // a snapshot, streamed while the writers below keep going.
    src.snapshot().expect(201);
    let id = create_link(&a, "shop", &b, "copy", json!({"mode": "async"}));
    // Writers keep going while the replica is bootstrapped and streams.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (src, stop) = (src.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 2_000;
            while !stop.load(Ordering::SeqCst) && i < 12_000 {
                orders(&src, i, i + 200);
                src.delete("orders", &format!("o-{:06}", i - 1_000)).ok();
                i += 200;
            }
            i
        })
    };
    let replica = b.db(DEFAULT_TENANT, "copy");
    assert!(wait_until(deadline_in(CATCH_UP), || replica.info().status
        == 200
        && replica.info()["last_serial"].as_u64() > Some(5_000)));
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    wait_identical(&src, &replica, CATCH_UP);
    assert_eq!(replica.contents("orders"), src.contents("orders"));
    assert_eq!(
        replica.alt_keys("orders", "customer", "c3"),
        src.alt_keys("orders", "customer", "c3")
    );
    let link = link_status(&a, &id);
    assert_eq!(link["status"]["state"], "streaming", "{link}");
    assert_eq!(link["status"]["lag_entries"], 0, "{link}");
    assert_eq!(link["status"]["bootstraps"], 1, "{link}");
    assert_eq!(link["mode"], "async");
    assert!(link.to_string().find("credential").is_none(), "{link}");
    // Prometheus metrics show the link's lag, to tokens of its tenant only.
    let metrics = a.get("/metrics");
    assert_eq!(metrics.status, 200);
    let line = metrics
        .text
        .lines()
        .find(|l| l.starts_with("doppel_link_lag_entries{") && l.contains(&id))
        .unwrap_or_else(|| panic!("no lag line for {id}:\n{}", metrics.text));
    assert!(line.ends_with(" 0"), "{line}");
    a.create_tenant("other");
    let other = a
        .client()
        .with_token(&token("other", Role::Admin))
        .get("/metrics");
    assert_eq!(other.status, 200);
    assert!(!other.text.contains(&id), "{}", other.text);
    // The replica serves reads and refuses client writes with a clear error.
    let refused = replica.put("orders", "o-x", json!({}), json!(1));
    let problem = refused.expect_problem(409, "read-only-replica");
    assert!(
        problem["detail"].as_str().unwrap().contains("replica"),
        "{problem}"
    );
    let begin = replica.client().post_empty(&replica.path("/txns"));
    begin.expect_problem(409, "read-only-replica");
}

#[test]
fn a_restarted_replica_resumes_from_its_serial_without_a_new_snapshot() {
    let a = Node::start();
    let mut b = Node::start_sticky();
    let src = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    orders(&src, 0, 500);
    let id = create_link(&a, "shop", &b, "shop", json!({}));
    let replica = b.db(DEFAULT_TENANT, "shop");
    wait_identical(&src, &replica, CATCH_UP);
    let before = link_status(&a, &id)["status"]["bootstraps"]
        .as_u64()
        .unwrap();
    b.kill9();
    orders(&src, 500, 1_500);
    // The link reports the broken connection and keeps retrying.
    wait_link_state(&a, &id, "retrying", CATCH_UP);
    b.restart();
    let replica = b.db(DEFAULT_TENANT, "shop");
    wait_identical(&src, &replica, CATCH_UP);
    let link = link_status(&a, &id);
    assert_eq!(
        link["status"]["bootstraps"].as_u64().unwrap(),
        before,
        "{link}"
    );
    assert!(
        link["status"]["connections"].as_u64().unwrap() >= 2,
        "{link}"
    );
    // After a restart the replica still refuses client writes.
    replica
        .put("orders", "o-x", json!({}), json!(1))
        .expect_problem(409, "read-only-replica");
}

#[test]
fn a_replica_behind_a_truncated_log_is_bootstrapped_again() {
    let a = Node::start();
    let b = Node::start();
    let src = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    orders(&src, 0, 300);
    let id = create_link(&a, "shop", &b, "shop", json!({}));
    let replica = b.db(DEFAULT_TENANT, "shop");
    wait_identical(&src, &replica, CATCH_UP);
    a.post_empty(&format!("/v1/tenants/{DEFAULT_TENANT}/links/{id}/pause"))
        .ok();
    wait_link_state(&a, &id, "paused", CATCH_UP);
    // Two snapshots prune the A log up to the older one: the replica's position is gone.
    orders(&src, 300, 800);
    src.snapshot().expect(201);
    orders(&src, 800, 1_200);
    src.snapshot().expect(201);
    orders(&src, 1_200, 1_300);
    let bootstraps = link_status(&a, &id)["status"]["bootstraps"]
        .as_u64()
        .unwrap();
    a.post_empty(&format!("/v1/tenants/{DEFAULT_TENANT}/links/{id}/resume"))
        .ok();
    wait_identical(&src, &replica, CATCH_UP);
    let link = link_status(&a, &id);
    assert_eq!(
        link["status"]["bootstraps"].as_u64().unwrap(),
        bootstraps + 1,
        "{link}"
    );
    assert_eq!(replica.contents("orders"), src.contents("orders"));
}

#[test]
fn a_cancelled_transaction_rolls_back_on_the_replica_too() {
    let a = Node::start();
    let b = Node::start();
    let src = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    orders(&src, 0, 10);
    let _id = create_link(&a, "shop", &b, "shop", json!({"mode": "sync"}));
    let replica = b.db(DEFAULT_TENANT, "shop");
    wait_identical(&src, &replica, CATCH_UP);
    // Refused at op 3 (duplicate key): ops 0-2 were applied, then undone.
    let refused = src.batch(json!([
        op::upsert("orders", "o-000001", json!({"changed": true})),
        op::delete("orders", "o-000002"),
        op::insert("lines", "l-1", json!(1)),
        op::insert("orders", "o-000003", json!("dup")),
    ]));
    refused.expect_problem(409, "duplicate-key");
    wait_identical(&src, &replica, CATCH_UP);
    assert_eq!(
        replica.data("orders", "o-000001"),
        src.data("orders", "o-000001")
    );
    assert!(replica.data("orders", "o-000002").is_some());
    assert!(replica.data("lines", "l-1").is_none());
    // The replica's log holds the cancelled attempt with its undo.
    let log = replica.log_from(1);
    assert!(
        log.iter()
            .any(|e| e.to_string().contains("cancel") || e["undo"] == true),
        "{log:?}"
    );
}

#[test]
fn sync_commits_survive_kill_9_of_the_source() {
    let mut a = Node::start();
    let b = Node::start();
    let src = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    let id = create_link(&a, "shop", &b, "shop", json!({"mode": "sync"}));
    wait_link_state(&a, &id, "streaming", CATCH_UP);
    let acked = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (src, acked) = (src.clone(), acked.clone());
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..100_000u64 {
                    let key = format!("w{w}-{i:06}");
                    match src.try_batch(json!([op::upsert("orders", &key, json!({"i": i}))])) {
                        Ok(r) if r.status == 200 => {
                            mine.push(key);
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => break,
                    }
                }
                mine
            })
        })
        .collect();
    assert!(wait_until(deadline_in(CATCH_UP), || acked
        .load(Ordering::SeqCst)
        >= 300));
    a.kill9();
    let acknowledged: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(acknowledged.len() >= 300);
    let replica = b.db(DEFAULT_TENANT, "shop");
    let have: std::collections::BTreeSet<String> = keys_of(&json!(replica.scan_all("orders")))
        .into_iter()
        .collect();
    let missing: Vec<&String> = acknowledged.iter().filter(|k| !have.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged commits missing on the replica, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

#[test]
fn k_of_n_quorum_completes_with_one_replica_down_and_times_out_clearly_when_k_cannot_be_met() {
    let a = Node::start();
    let b = Node::start();
    let mut c = Node::start();
    let src = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    let l1 = create_link(&a, "shop", &b, "shop", json!({"mode": "sync"}));
    let l2 = create_link(&a, "shop", &c, "shop", json!({"mode": "sync"}));
    for id in [&l1, &l2] {
        wait_link_state(&a, id, "streaming", CATCH_UP);
    }
    let quorum = src.path("/quorum");
    let q = a.put(&quorum, &json!({"k": 1, "timeout_ms": 2000}));
    assert_eq!(q.ok()["sync_links"], 2, "{q}");
    src.put("orders", "both", json!({}), json!(1)).ok();
    c.kill9();
    // k = 1: commits complete with one replica down.
    for i in 0..20 {
        src.put("orders", &format!("k1-{i}"), json!({}), json!(i))
            .ok();
    }
    // k = 2: the commit waits, then says clearly that it is committed but not confirmed.
    a.put(&quorum, &json!({"k": 2, "timeout_ms": 300})).ok();
    let late = src.put("orders", "k2", json!({}), json!(2));
    let problem = late.expect_problem(504, "replication-timeout");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("1 of the 2"), "{detail}");
    assert!(detail.contains("committed"), "{detail}");
    // It is committed on the source and on the live replica.
    assert!(src.data("orders", "k2").is_some());
    let replica = b.db(DEFAULT_TENANT, "shop");
    assert!(wait_until(deadline_in(CATCH_UP), || replica
        .data("orders", "k2")
        .is_some()));
    // Quorum settings are checked.
    a.put(&quorum, &json!({"k": 0}))
        .expect_problem(400, "malformed-request");
}

#[test]
fn unknown_or_badly_authenticated_peers_are_refused() {
    let a = Node::start();
    let b = Node::start();
    let src = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    let id = create_link(&a, "shop", &b, "shop", json!({}));
    wait_identical(&src, &b.db(DEFAULT_TENANT, "shop"), CATCH_UP);
    let addr = b.get("/v1/node").ok()["replication"]
        .as_str()
        .unwrap()
        .to_string();
    let hello = |link: &str, credential: &str, version: u16| -> Vec<Msg<'static>> {
        let mut sock = TcpStream::connect(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut w = FrameWriter::new();
        w.push(&Msg::Hello(Hello {
            version,
            link: link.into(),
            credential: credential.into(),
            source_node: "intruder".into(),
            tenant: DEFAULT_TENANT.into(),
            database: "shop".into(),
            stream: 1,
            history: Vec::new(),
        }));
        sock.write_all(&w.finish()).unwrap();
        let mut len = [0u8; 4];
        sock.read_exact(&mut len).unwrap();
        let mut payload = vec![0; u32::from_le_bytes(len) as usize];
        sock.read_exact(&mut payload).unwrap();
        let msgs: Vec<Msg<'static>> =
            wire::messages(Box::leak(payload.into_boxed_slice())).unwrap();
        // The connection is closed after a refusal.
        let mut rest = [0u8; 1];
        assert_eq!(sock.read(&mut rest).unwrap_or(0), 0);
        msgs
    };
    let refused = |msgs: &[Msg<'_>], code: &str| {
        assert!(
            matches!(&msgs[0], Msg::Refused { code: c, .. } if c == code),
            "{msgs:?}"
        );
    };
    refused(
        &hello("no-such-link", "x", wire::PROTOCOL_VERSION),
        "unknown-link",
    );
    refused(
        &hello(&id, "wrong-credential", wire::PROTOCOL_VERSION),
        "unknown-link",
    );
    refused(&hello(&id, "x", 99), "version");
    // Garbage instead of a handshake is refused too, and the node carries on.
    let mut sock = TcpStream::connect(&addr).unwrap();
    sock.write_all(&[5, 0, 0, 0, 1, 2, 3, 4, 5]).unwrap();
    orders(&src, 0, 50);
    wait_identical(&src, &b.db(DEFAULT_TENANT, "shop"), CATCH_UP);
    // The REST registration needs an operator token of the tenant.
    let reader = b.client().with_token(&token(DEFAULT_TENANT, Role::Reader));
    reader
        .put(
            &format!("/v1/tenants/{DEFAULT_TENANT}/replicas/l-x"),
            &json!({"database": "x", "spec": shop_spec("x"), "credential": "c", "source_node": "n", "apply": "mirror"}),
        )
        .expect_problem(403, "forbidden");
}

#[test]
fn link_creation_refuses_bad_requests_precisely() {
    let a = Node::start();
    let b = Node::start();
    a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    let links = format!("/v1/tenants/{DEFAULT_TENANT}/links");
    let target = json!({"url": b.base(), "database": "shop"});
    a.post(&links, &json!({"database": "nope", "target": target}))
        .expect_problem(404, "not-found");
    a.post(
        &links,
        &json!({"database": "shop", "target": target, "mode": "eventually"}),
    )
    .expect_problem(400, "malformed-request");
    a.post(
        &links,
        &json!({"database": "shop", "target": {"url": "ftp://x", "database": "shop"}}),
    )
    .expect_problem(400, "malformed-request");
    a.post(
        &links,
        &json!({"database": "shop", "target": target, "stages": [{"plugin": "prefix-filter@1"}]}),
    )
    .expect_problem(404, "not-found");
    let id = create_link(&a, "shop", &b, "shop", json!({}));
    a.post(&links, &json!({"database": "shop", "target": target}))
        .expect_problem(409, "already-exists");
    // A target database that exists with another schema is refused, and the link says so.
    let c = Node::start();
    c.create_db(
        DEFAULT_TENANT,
        json!({"name": "shop", "files": [{"name": "other"}]}),
    );
    let bad = create_link(&a, "shop", &c, "shop", json!({}));
    assert!(wait_until(deadline_in(CATCH_UP), || {
        let s = link_status(&a, &bad);
        s["status"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("other files"))
    }));
    // A target database with data of its own is never overwritten by a bootstrap.
    let d = Node::start();
    let own = d.create_db(DEFAULT_TENANT, shop_spec("shop"));
    own.put("orders", "mine", json!({}), json!(1)).ok();
    let keep = create_link(&a, "shop", &d, "shop", json!({}));
    assert!(wait_until(deadline_in(CATCH_UP), || {
        let s = link_status(&a, &keep);
        s["status"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("data of its own"))
    }));
    assert_eq!(own.data("orders", "mine"), Some(json!(1)));
    own.put("orders", "still-writable", json!({}), json!(2))
        .ok();
    a.delete(&format!("{links}/{keep}")).expect(204);
    assert_eq!(a.get(&links).ok().as_array().unwrap().len(), 2);
    a.delete(&format!("{links}/{bad}")).expect(204);
    a.get(&format!("{links}/{bad}"))
        .expect_problem(404, "not-found");
    assert_eq!(link_status(&a, &id)["database"], "shop");
}

/// The proxy in front of `target`'s replication listener.
/// Two nodes and a link from `shop` on the first to `shop` on the second, through a
/// chaos proxy in front of the second's replication listener.
struct Proxied {
    a: Node,
    b: Node,
    proxy: ChaosProxy,
    src: Db,
    id: String,
}

fn proxied_link(mode: &str) -> Proxied {
    let a = Node::start();
    let b = Node::start();
    let addr = b.get("/v1/node").ok()["replication"]
        .as_str()
        .expect("a replication address")
        .parse()
        .expect("an address");
    let proxy = ChaosProxy::start(addr).expect("start the chaos proxy");
    let src = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    let via = proxy.addr().to_string();
    let id = create_link(
        &a,
        "shop",
        &b,
        "shop",
        json!({"mode": mode, "target": {"replication": via}}),
    );
    Proxied {
        a,
        b,
        proxy,
        src,
        id,
    }
}

#[test]
fn async_mirror_under_drops_duplicates_reordering_and_cuts_heals_to_identical_blocks() {
    let Proxied {
        a,
        b,
        proxy,
        src,
        id,
    } = proxied_link("async");
    let replica = b.db(DEFAULT_TENANT, "shop");
    wait_identical(&src, &replica, CATCH_UP);
    let faults = Faults {
        drop: 0.05,
        duplicate: 0.05,
        reorder: 0.1,
        delay: Duration::from_millis(1),
        jitter: Duration::from_millis(3),
        ..Faults::default()
    };
    proxy.set_faults(Direction::ToUpstream, faults);
    proxy.set_faults(Direction::ToClient, faults);
    // Write until every kind of fault has hit the stream, cutting the connection now
    // and then as well.
    let mut round = 0u64;
    let faulted = wait_until(deadline_in(CATCH_UP), || {
        orders(&src, round * 100, round * 100 + 100);
        src.delete("orders", &format!("o-{:06}", round * 50)).ok();
        round += 1;
        if round.is_multiple_of(25) {
            proxy.cut();
        }
        let s = proxy.stats();
        let up = &s.to_upstream;
        up.dropped > 0 && up.duplicated > 0 && up.reordered > 0 && s.accepted >= 2
    });
    assert!(
        faulted,
        "the proxy did not inject every fault: {:?}",
        proxy.stats()
    );
    proxy.heal();
    wait_identical(&src, &replica, CATCH_UP);
    assert_eq!(replica.contents("orders"), src.contents("orders"));
    assert!(
        link_status(&a, &id)["status"]["connections"]
            .as_u64()
            .unwrap()
            >= 2
    );
}

#[test]
fn a_sync_commit_holds_its_record_until_the_replica_confirms_while_other_records_go_on() {
    let Proxied {
        a,
        b,
        proxy,
        src,
        id,
    } = proxied_link("sync");
    wait_link_state(&a, &id, "streaming", CATCH_UP);
    a.put(&src.path("/quorum"), &json!({"k": 1, "timeout_ms": 60000}))
        .ok();
    src.put("orders", "k", json!({}), json!(0)).ok();
    // The replica's confirmations are held back from here on.
    proxy.hold(Direction::ToClient);
    let put = |key: &'static str, v: i64| {
        let src = src.clone();
        std::thread::spawn(move || src.put("orders", key, json!({}), json!(v)).status)
    };
    let first = put("k", 1);
    assert!(wait_until(deadline_in(CATCH_UP), || src
        .data("orders", "k")
        == Some(json!(1))));
    let second = put("k", 2);
    let other = put("other", 3);
    // The writer of another record is applied though "k" is still locked ...
    assert!(wait_until(deadline_in(CATCH_UP), || src
        .data("orders", "other")
        == Some(json!(3))));
    // ... while the second writer of "k" waits for the lock: nothing of it is applied.
    assert_eq!(src.data("orders", "k"), Some(json!(1)));
    assert!(!first.is_finished() && !second.is_finished());
    proxy.release(Direction::ToClient);
    assert_eq!(first.join().unwrap(), 200);
    assert_eq!(second.join().unwrap(), 200);
    assert_eq!(other.join().unwrap(), 200);
    assert_eq!(src.data("orders", "k"), Some(json!(2)));
    wait_identical(&src, &b.db(DEFAULT_TENANT, "shop"), CATCH_UP);
}

#[test]
fn a_suspended_replica_keeps_a_frozen_state_then_catches_up_on_release() {
    let a = Node::start();
    let mut b = Node::start_sticky();
    let src = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    orders(&src, 0, 100);
    let id = create_link(&a, "shop", &b, "shop", json!({"mode": "sync"}));
    let replica = b.db(DEFAULT_TENANT, "shop");
    wait_identical(&src, &replica, CATCH_UP);
    let replicas = format!("/v1/tenants/{DEFAULT_TENANT}/replicas/{id}");
    b.post_empty(&format!("{replicas}/suspend")).ok();
    wait_link_state(&a, &id, "suspended", CATCH_UP);
    let frozen = replica.contents("orders");
    let frozen_sums = replica.checksums().body.clone();
    // Sync commits do not wait on the detached replica.
    a.put(&src.path("/quorum"), &json!({"k": 1, "timeout_ms": 1000}))
        .ok();
    orders(&src, 100, 400);
    src.put("orders", "late", json!({}), json!(1)).ok();
    src.delete("orders", "o-000001").ok();
    // The replica stored them but shows the frozen state, also across a restart.
    let listed = b
        .get(&format!("/v1/tenants/{DEFAULT_TENANT}/replicas"))
        .ok()
        .clone();
    assert!(
        wait_until(deadline_in(CATCH_UP), || b
            .get(&format!("/v1/tenants/{DEFAULT_TENANT}/replicas"))
            .ok()[0]["spooled"]
            .as_u64()
            >= Some(3)),
        "{listed}"
    );
    assert_eq!(replica.contents("orders"), frozen);
    // What the replica confirmed is on disk: once the source has every serial
    // confirmed, a kill -9 keeps every spooled transaction.
    let last = src.info()["last_serial"].as_u64().unwrap();
    assert!(wait_until(deadline_in(CATCH_UP), || link_status(&a, &id)
        ["status"]["acked_serial"]
        .as_u64()
        >= Some(last)));
    let spooled = |b: &Node| {
        b.get(&format!("/v1/tenants/{DEFAULT_TENANT}/replicas"))
            .ok()[0]["spooled"]
            .as_u64()
    };
    let before = spooled(&b);
    b.kill9();
    b.restart();
    assert_eq!(spooled(&b), before);
    let replica = b.db(DEFAULT_TENANT, "shop");
    assert_eq!(replica.checksums().body, frozen_sums);
    assert_eq!(replica.data("orders", "late"), None);
    b.post_empty(&format!("{replicas}/release")).ok();
    wait_identical(&src, &replica, CATCH_UP);
    assert_eq!(replica.data("orders", "late"), Some(json!(1)));
    assert_eq!(replica.data("orders", "o-000001"), None);
    wait_link_state(&a, &id, "streaming", CATCH_UP);
}

#[test]
fn a_logical_link_ships_exactly_the_filtered_and_transformed_records() {
    use doppel_server::plugins::builtin;
    let a = Node::start();
    let b = Node::start();
    upload_plugin(&a, "eu", "filter", builtin::PREFIX_FILTER);
    upload_plugin(&a, "mask", "transform", builtin::FIELD_MASK);
    let src = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    let id = create_link(
        &a,
        "shop",
        &b,
        "shop",
        json!({"apply": "logical", "stages": [
            {"plugin": "eu@1", "config": {"files": ["orders"], "prefixes": ["eu-"]}},
            {"plugin": "mask@1", "config": {"paths": ["card"]}}
        ]}),
    );
    src.put(
        "orders",
        "eu-1",
        json!({"customer": "ann"}),
        json!({"card": "4111", "total": 1}),
    )
    .ok();
    src.put(
        "orders",
        "eu-2",
        json!({}),
        json!({"card": "5500", "total": 2}),
    )
    .ok();
    src.put(
        "orders",
        "us-1",
        json!({}),
        json!({"card": "3400", "total": 3}),
    )
    .ok();
    src.put("lines", "eu-1/1", json!({}), json!({"sku": "A"}))
        .ok();
    src.put(
        "orders",
        "eu-1",
        json!({"customer": "ann"}),
        json!({"card": "4111", "total": 10}),
    )
    .ok();
    src.delete("orders", "eu-2").ok();
    let last = src.info()["last_serial"].as_u64().unwrap();
    assert!(wait_until(deadline_in(CATCH_UP), || link_status(&a, &id)
        ["status"]["acked_serial"]
        .as_u64()
        >= Some(last)));
    let replica = b.db(DEFAULT_TENANT, "shop");
    let orders = replica.contents("orders");
    assert_eq!(
        keys_of(&json!(orders)),
        vec!["eu-1".to_string()],
        "{orders:?}"
    );
    assert_eq!(
        replica.data("orders", "eu-1"),
        Some(json!({"card": "***", "total": 10}))
    );
    assert_eq!(
        replica.alt_keys("orders", "customer", "ann"),
        vec!["eu-1".to_string()]
    );
    assert!(replica.contents("lines").is_empty());
    // The replica's blocks are its own (a logical copy), and it still refuses writes.
    replica
        .put("orders", "x", json!({}), json!(1))
        .expect_problem(409, "read-only-replica");
    let link = link_status(&a, &id);
    assert_eq!(link["apply"], "logical");
    assert!(
        link["status"]["plugin_seconds"].as_f64().unwrap() > 0.0,
        "{link}"
    );
    // Swap the transform's config on the live link: later records get the new stages.
    let stages = format!("/v1/tenants/{DEFAULT_TENANT}/links/{id}/stages");
    a.put(&stages, &json!([{"plugin": "nope@9"}]))
        .expect_problem(404, "not-found");
    a.put(
        &stages,
        &json!([
            {"plugin": "eu@1", "config": {"files": ["orders"], "prefixes": ["eu-"]}},
            {"plugin": "mask@1", "config": {"paths": ["total"]}}
        ]),
    )
    .ok();
    src.put(
        "orders",
        "eu-3",
        json!({}),
        json!({"card": "6011", "total": 3}),
    )
    .ok();
    assert!(wait_until(deadline_in(CATCH_UP), || replica
        .data("orders", "eu-3")
        == Some(json!({"card": "6011", "total": "***"}))));
    assert_eq!(
        replica.data("orders", "eu-1"),
        Some(json!({"card": "***", "total": 10}))
    );
    assert_eq!(
        link_status(&a, &id)["stages"][1]["config"]["paths"],
        json!(["total"])
    );
}

#[test]
fn a_hostile_stage_quarantines_records_and_the_link_goes_on_or_stops_as_its_policy_says() {
    let mut a = Node::start();
    let b = Node::start();
    upload_plugin(&a, "trap", "filter", &trapping_filter());
    let src = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    let stages = json!([{"plugin": "trap@1"}]);
    let quarantine = create_link(
        &a,
        "shop",
        &b,
        "q",
        json!({"apply": "logical", "stages": stages, "on_error": "quarantine"}),
    );
    let stop = create_link(
        &a,
        "shop",
        &b,
        "s",
        json!({"apply": "logical", "stages": stages, "on_error": "stop"}),
    );
    for i in 0..3 {
        src.put("orders", &format!("o-{i}"), json!({}), json!({"i": i}))
            .ok();
    }
    let last = src.info()["last_serial"].as_u64().unwrap();
    let dead = format!("/v1/tenants/{DEFAULT_TENANT}/links/{quarantine}/dead-letters");
    // Quarantine: every record is a dead letter with the plugin and the reason, and the
    // link keeps streaming up to the source's last serial.
    assert!(wait_until(deadline_in(CATCH_UP), || a
        .get(&dead)
        .ok()
        .as_array()
        .unwrap()
        .len()
        == 3));
    let letters = a.get(&dead).ok().clone();
    assert_eq!(letters[0]["record"]["key"], "o-0", "{letters}");
    assert!(
        letters[0]["plugin"].as_str().unwrap().contains("trap"),
        "{letters}"
    );
    assert!(
        letters[0]["error"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{letters}"
    );
    assert!(wait_until(deadline_in(CATCH_UP), || link_status(
        &a,
        &quarantine
    )["status"]["acked_serial"]
        .as_u64()
        >= Some(last)));
    let q = link_status(&a, &quarantine);
    assert_eq!(q["status"]["state"], "streaming", "{q}");
    assert_eq!(q["status"]["quarantined"], 3, "{q}");
    // A dead letter can be dropped.
    let first = letters[0]["id"].as_u64().unwrap();
    a.delete(&format!("{dead}/{first}")).expect(204);
    assert_eq!(a.get(&dead).ok().as_array().unwrap().len(), 2);
    a.delete(&format!("{dead}/{first}"))
        .expect_problem(404, "not-found");
    // Stop: the link stops with the error shown, and nothing reached its replica.
    wait_link_state(&a, &stop, "stopped", CATCH_UP);
    let s = link_status(&a, &stop);
    let error = s["status"]["last_error"].as_str().unwrap();
    assert!(
        error.contains("trap") && error.contains("stopped by its error policy"),
        "{s}"
    );
    assert!(b.db(DEFAULT_TENANT, "s").contents("orders").is_empty());
    // The node and the other links carry on.
    src.put("orders", "after", json!({}), json!(1)).ok();
    assert!(wait_until(deadline_in(CATCH_UP), || a
        .get(&dead)
        .ok()
        .as_array()
        .unwrap()
        .len()
        == 3));
    // A dead letter is on disk before the link moves past its record: once it has,
    // a kill -9 loses none of them (nothing would bring them back).
    let last = src.info()["last_serial"].as_u64().unwrap();
    assert!(wait_until(deadline_in(CATCH_UP), || link_status(
        &a,
        &quarantine
    )["status"]["acked_serial"]
        .as_u64()
        >= Some(last)));
    a.kill9();
    a.restart();
    let after = a.get(&dead).ok().clone();
    assert_eq!(after.as_array().unwrap().len(), 3, "{after}");
    assert_eq!(after[2]["record"]["key"], "after", "{after}");
}

/// Orders and their lines in two databases of one source, each mirrored to a second
/// node by its own link; the lines link carries the built-in parent rule, and the
/// orders link goes through a chaos proxy.
struct Interrelated {
    a: Node,
    b: Node,
    proxy: ChaosProxy,
    orders: Db,
    lines: Db,
    lines_link: String,
}

fn interrelated(on_error: &str, apply: &str, parent_file: &str) -> Interrelated {
    use doppel_server::plugins::builtin;
    let a = Node::start();
    let b = Node::start();
    upload_plugin(&a, "parent", "rule", builtin::PARENT_RULE);
    let orders = a.create_db(
        DEFAULT_TENANT,
        json!({"name": "orders", "files": [{"name": "orders"}]}),
    );
    let lines = a.create_db(
        DEFAULT_TENANT,
        json!({"name": "lines", "files": [{"name": "lines"}]}),
    );
    let addr = b.get("/v1/node").ok()["replication"]
        .as_str()
        .expect("a replication address")
        .parse()
        .expect("an address");
    let proxy = ChaosProxy::start(addr).expect("start the chaos proxy");
    create_link(
        &a,
        "orders",
        &b,
        "orders",
        json!({"target": {"replication": proxy.addr().to_string()}}),
    );
    let lines_link = create_link(
        &a,
        "lines",
        &b,
        "lines",
        json!({"on_error": on_error, "apply": apply, "stages": [{"plugin": "parent@1", "config": {"rules": [
            {"file": "lines", "parent_file": parent_file, "parent_key_field": "order"}]}}]}),
    );
    Interrelated {
        a,
        b,
        proxy,
        orders,
        lines,
        lines_link,
    }
}

/// The entry of `link` in `node`'s list of replicas (null if it has none).
fn replica_entry(node: &Node, link: &str) -> Value {
    node.get(&format!("/v1/tenants/{DEFAULT_TENANT}/replicas"))
        .ok()
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["link"] == link)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Writes order `o-0` and its line `l-0` and waits until both are on `b`. Returns the
/// replicas of orders and lines.
fn first_order_replicated(b: &Node, orders: &Db, lines: &Db) -> (Db, Db) {
    let (r_orders, r_lines) = (
        b.db(DEFAULT_TENANT, "orders"),
        b.db(DEFAULT_TENANT, "lines"),
    );
    orders.put("orders", "o-0", json!({}), json!({"n": 0})).ok();
    lines
        .put("lines", "l-0", json!({}), json!({"order": "o-0"}))
        .ok();
    wait_identical(orders, &r_orders, CATCH_UP);
    wait_identical(lines, &r_lines, CATCH_UP);
    (r_orders, r_lines)
}

/// Every line on `replica_lines` whose order is not on `replica_orders`, reading the
/// lines first (orders only ever grow in these tests).
fn orphan_lines(replica_lines: &Db, replica_orders: &Db) -> Vec<String> {
    let lines = replica_lines.contents("lines");
    let orders: std::collections::BTreeSet<String> =
        keys_of(&json!(replica_orders.contents("orders")))
            .into_iter()
            .collect();
    lines
        .iter()
        .filter(|l| !orders.contains(l["data"]["order"].as_str().unwrap_or("")))
        .map(|l| l["key"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn an_interrelated_bootstrap_is_installed_only_once_the_orders_it_needs_are_there() {
    use doppel_server::plugins::builtin;
    let a = Node::start();
    let b = Node::start();
    upload_plugin(&a, "parent", "rule", builtin::PARENT_RULE);
    let orders = a.create_db(
        DEFAULT_TENANT,
        json!({"name": "orders", "files": [{"name": "orders"}]}),
    );
    let lines = a.create_db(
        DEFAULT_TENANT,
        json!({"name": "lines", "files": [{"name": "lines"}]}),
    );
    let addr = b.get("/v1/node").ok()["replication"]
        .as_str()
        .expect("a replication address")
        .parse()
        .expect("an address");
    let proxy = ChaosProxy::start(addr).expect("start the chaos proxy");
    create_link(
        &a,
        "orders",
        &b,
        "orders",
        json!({"target": {"replication": proxy.addr().to_string()}}),
    );
    orders.put("orders", "o-0", json!({}), json!({"n": 0})).ok();
    let r_orders = b.db(DEFAULT_TENANT, "orders");
    wait_identical(&orders, &r_orders, CATCH_UP);

    // The orders stream stops on its way; then lines of a new order are written, with
    // snapshots that prune the log of `lines`, and only then is `lines` linked: its
    // replica must start from a snapshot, which holds those lines.
    proxy.hold(Direction::ToUpstream);
    orders.put("orders", "o-1", json!({}), json!({"n": 1})).ok();
    for line in ["l-1", "l-2"] {
        lines
            .put("lines", line, json!({}), json!({"order": "o-1"}))
            .ok();
        lines.snapshot().expect(201);
    }
    let lines_link = create_link(
        &a,
        "lines",
        &b,
        "lines",
        json!({"stages": [{"plugin": "parent@1", "config": {"rules": [
            {"file": "lines", "parent_file": "orders", "parent_key_field": "order"}]}}]}),
    );
    let waiting = || replica_entry(&b, &lines_link)["waiting_for"].clone();
    assert!(
        wait_until(deadline_in(CATCH_UP), || waiting().is_string()),
        "the snapshot was never held: {}",
        b.get(&format!("/v1/tenants/{DEFAULT_TENANT}/replicas"))
    );
    assert!(
        waiting().as_str().unwrap().contains("'orders'"),
        "{}",
        waiting()
    );
    let r_lines = b.db(DEFAULT_TENANT, "lines");
    let shown = r_lines.get("lines", "l-1");
    assert_ne!(shown.status, 200, "a line without its order: {shown}");
    assert_eq!(r_orders.data("orders", "o-1"), None);

    // The orders arrive: the snapshot is installed, with the line.
    proxy.release(Direction::ToUpstream);
    wait_identical(&lines, &r_lines, CATCH_UP);
    assert!(r_orders.data("orders", "o-1").is_some());
    assert_eq!(waiting(), Value::Null);
    assert_eq!(link_status(&a, &lines_link)["status"]["bootstraps"], 1);
}

#[test]
fn interrelation_never_shows_an_order_line_without_its_order_when_the_orders_stream_lags() {
    let Interrelated {
        a,
        b,
        proxy,
        orders,
        lines,
        lines_link,
    } = interrelated("stop", "mirror", "orders");
    let (r_orders, r_lines) = first_order_replicated(&b, &orders, &lines);

    // The orders stream stops on its way: a new line waits on the replica, visibly,
    // for the order it depends on, and is applied once the order arrives.
    proxy.hold(Direction::ToUpstream);
    orders.put("orders", "o-1", json!({}), json!({"n": 1})).ok();
    lines
        .put("lines", "l-1", json!({}), json!({"order": "o-1"}))
        .ok();
    let replicas = format!("/v1/tenants/{DEFAULT_TENANT}/replicas");
    let waiting = || replica_entry(&b, &lines_link)["waiting_for"].clone();
    assert!(
        wait_until(deadline_in(CATCH_UP), || waiting().is_string()),
        "the line was never held: {}",
        b.get(&replicas)
    );
    assert!(
        waiting().as_str().unwrap().contains("'orders'"),
        "{}",
        waiting()
    );
    assert_eq!(
        r_lines.data("lines", "l-1"),
        None,
        "a line without its order"
    );
    assert_eq!(r_orders.data("orders", "o-1"), None);
    proxy.release(Direction::ToUpstream);
    assert!(wait_until(deadline_in(CATCH_UP), || r_lines
        .data("lines", "l-1")
        .is_some()));
    assert!(r_orders.data("orders", "o-1").is_some());
    assert_eq!(waiting(), Value::Null);

    // Under a steady delay on the orders stream, a reader of the replica never sees a
    // line before its order, while orders and lines are written one after the other.
    proxy.set_faults(
        Direction::ToUpstream,
        Faults {
            delay: Duration::from_millis(20),
            jitter: Duration::from_millis(30),
            ..Faults::default()
        },
    );
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (done, r_orders, r_lines) = (done.clone(), r_orders.clone(), r_lines.clone());
        std::thread::spawn(move || {
            let (mut reads, mut orphans) = (0u64, Vec::new());
            while !done.load(Ordering::SeqCst) && reads < 5_000 {
                orphans.extend(orphan_lines(&r_lines, &r_orders));
                reads += 1;
            }
            (reads, orphans)
        })
    };
    for i in 2..62 {
        let o = format!("o-{i}");
        orders.put("orders", &o, json!({}), json!({"n": i})).ok();
        for j in 0..2 {
            lines
                .put(
                    "lines",
                    &format!("l-{i}-{j}"),
                    json!({}),
                    json!({"order": o}),
                )
                .ok();
        }
    }
    wait_identical(&lines, &r_lines, CATCH_UP);
    done.store(true, Ordering::SeqCst);
    let (reads, orphans) = reader.join().unwrap();
    assert!(reads > 0);
    let orphans: std::collections::BTreeSet<String> = orphans.into_iter().collect();
    assert!(
        orphans.is_empty(),
        "{} lines seen without their orders, among them {:?}",
        orphans.len(),
        orphans.iter().take(5).collect::<Vec<_>>()
    );
    wait_identical(&orders, &r_orders, CATCH_UP);
    let link = link_status(&a, &lines_link);
    assert!(
        link["status"]["interrelated"].as_u64().unwrap() >= 121,
        "{link}"
    );
}

#[test]
fn a_released_replica_applies_its_spooled_lines_only_once_their_orders_arrived() {
    let Interrelated {
        a: _a,
        b,
        proxy,
        orders,
        lines,
        lines_link,
    } = interrelated("stop", "mirror", "orders");
    let (r_orders, r_lines) = first_order_replicated(&b, &orders, &lines);

    // The lines replica is detached and spools a line whose order is held on its way.
    let replicas = format!("/v1/tenants/{DEFAULT_TENANT}/replicas");
    b.post_empty(&format!("{replicas}/{lines_link}/suspend"))
        .ok();
    proxy.hold(Direction::ToUpstream);
    orders.put("orders", "o-1", json!({}), json!({"n": 1})).ok();
    lines
        .put("lines", "l-1", json!({}), json!({"order": "o-1"}))
        .ok();
    let replica = || replica_entry(&b, &lines_link);
    assert!(
        wait_until(deadline_in(CATCH_UP), || replica()["spooled"].as_u64()
            >= Some(1)),
        "the line was not spooled: {}",
        replica()
    );

    // Released, the spooled line still waits for its order.
    b.post_empty(&format!("{replicas}/{lines_link}/release"))
        .ok();
    assert!(
        wait_until(deadline_in(CATCH_UP), || replica()["waiting_for"]
            .is_string()),
        "the released line was not held for its order: {}",
        replica()
    );
    assert_eq!(
        r_lines.data("lines", "l-1"),
        None,
        "a line without its order"
    );
    assert_eq!(r_orders.data("orders", "o-1"), None);
    proxy.release(Direction::ToUpstream);
    wait_identical(&orders, &r_orders, CATCH_UP);
    wait_identical(&lines, &r_lines, CATCH_UP);
    assert_eq!(replica()["waiting_for"], Value::Null);
    assert_eq!(replica()["spooled"].as_u64(), Some(0), "{}", replica());
}

#[test]
fn an_interrelation_rule_naming_an_unknown_file_stops_the_link_or_quarantines_as_its_policy_says() {
    let stop = interrelated("stop", "mirror", "nowhere");
    stop.lines
        .put("lines", "l-1", json!({}), json!({"order": "o-1"}))
        .ok();
    wait_link_state(&stop.a, &stop.lines_link, "stopped", CATCH_UP);
    let s = link_status(&stop.a, &stop.lines_link);
    let error = s["status"]["last_error"].as_str().unwrap();
    assert!(
        error.contains("depends on file 'nowhere'") && error.contains("record 'l-1'"),
        "{s}"
    );

    // Under quarantine the line ships without that dependency and the dead letter says
    // so; the link goes on (a logical link here: rules run before its other stages).
    let q = interrelated("quarantine", "logical", "nowhere");
    q.lines
        .put("lines", "l-1", json!({}), json!({"order": "o-1"}))
        .ok();
    let r_lines = q.b.db(DEFAULT_TENANT, "lines");
    assert!(wait_until(deadline_in(CATCH_UP), || r_lines
        .data("lines", "l-1")
        .is_some()));
    let dead = format!(
        "/v1/tenants/{DEFAULT_TENANT}/links/{}/dead-letters",
        q.lines_link
    );
    let letters = q.a.get(&dead).ok().clone();
    assert_eq!(letters.as_array().map(Vec::len), Some(1), "{letters}");
    assert_eq!(letters[0]["record"]["key"], "l-1");
    assert!(
        letters[0]["outcome"]
            .as_str()
            .unwrap()
            .contains("without this record's interrelation"),
        "{letters}"
    );
    // A filter on a mirror is still refused; a rule is what a mirror may carry.
    upload_plugin(
        &q.a,
        "eu",
        "filter",
        doppel_server::plugins::builtin::PREFIX_FILTER,
    );
    let refused =
        q.a.post(
            &format!("/v1/tenants/{DEFAULT_TENANT}/links"),
            &json!({"database": "orders", "target": {"url": q.b.base(), "database": "o2"},
                "stages": [{"plugin": "parent@1", "config": {"rules": [
                    {"file": "lines", "parent_file": "orders", "parent_key_field": "order"}]}},
                   {"plugin": "eu@1", "config": {"files": ["orders"], "prefixes": ["eu-"]}}]}),
        )
        .expect_problem(422, "invalid-request")
        .clone();
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("filter and transform stages"),
        "{refused}"
    );
}

#[test]
fn a_dead_letter_edited_and_re_driven_reaches_the_replica_through_the_stages() {
    use doppel_server::plugins::builtin;
    let a = Node::start();
    let b = Node::start();
    upload_plugin(&a, "nest", "transform", builtin::RENAME);
    let src = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    // Moves field "a" under "s": a record whose "s" is not an object is a record error.
    let id = create_link(
        &a,
        "shop",
        &b,
        "shop",
        json!({"apply": "logical", "on_error": "quarantine", "stages": [
            {"plugin": "nest@1", "config": {"default": {"orders": {"fields": {"a": "s.a"}}}}}]}),
    );
    src.put(
        "orders",
        "bad",
        json!({"customer": "ann"}),
        json!({"a": 1, "s": "x"}),
    )
    .ok();
    src.put("orders", "good", json!({}), json!({"a": 2})).ok();
    let replica = b.db(DEFAULT_TENANT, "shop");
    assert!(wait_until(deadline_in(CATCH_UP), || replica
        .data("orders", "good")
        .is_some()));
    let dead = format!("/v1/tenants/{DEFAULT_TENANT}/links/{id}/dead-letters");
    let letters = a.get(&dead).ok().clone();
    assert_eq!(letters.as_array().map(Vec::len), Some(1), "{letters}");
    let letter = letters[0].clone();
    let redrive = format!("{dead}/{}/redrive", letter["id"]);
    // As it was, the stage rejects it again, and it stays a dead letter.
    let again = a
        .post(&redrive, &json!({}))
        .expect_problem(422, "redrive-rejected")
        .clone();
    assert!(
        again["detail"].as_str().unwrap().contains("nest"),
        "{again}"
    );
    assert_eq!(a.get(&dead).ok().as_array().map(Vec::len), Some(1));
    // A malformed edit is refused precisely.
    a.post(
        &redrive,
        &json!({"record": {"op": "insert", "key": "bad", "data": {}}}),
    )
    .expect_problem(400, "malformed-request");
    // Edited, it passes the stage and is applied on the replica.
    let mut edited = letter["record"].clone();
    edited["data"] = json!({"a": 7});
    let done = a.post(&redrive, &json!({"record": edited})).ok().clone();
    assert_eq!(done["outcome"], "applied", "{done}");
    assert_eq!(replica.data("orders", "bad"), Some(json!({"s": {"a": 7}})));
    assert_eq!(
        replica.alt_keys("orders", "customer", "ann"),
        vec!["bad".to_string()]
    );
    assert_eq!(a.get(&dead).ok().as_array().map(Vec::len), Some(0));
    assert_eq!(link_status(&a, &id)["status"]["quarantined"], 0);
    a.post(&redrive, &json!({}))
        .expect_problem(404, "not-found");
    // The link goes on from where it was.
    src.put("orders", "after", json!({}), json!({"a": 3})).ok();
    assert!(wait_until(deadline_in(CATCH_UP), || replica
        .data("orders", "after")
        == Some(json!({"s": {"a": 3}}))));
    // The target's re-drive route wants the link's credential.
    b.post(
        &format!("/v1/tenants/{DEFAULT_TENANT}/replicas/{id}/redrive"),
        &json!({"credential": "guess", "ops": ""}),
    )
    .expect_problem(404, "not-found");
}

#[test]
fn a_logical_link_on_a_source_whose_log_was_pruned_starts_from_its_records_through_the_stages() {
    use doppel_server::plugins::builtin;
    let a = Node::start();
    let b = Node::start();
    upload_plugin(&a, "eu", "filter", builtin::PREFIX_FILTER);
    upload_plugin(&a, "ns", "transform", builtin::NAMESPACE);
    let src = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    // 2,000 orders; two snapshots prune the A log, so it no longer starts at serial 1.
    for (from, to) in [(0, 1_000), (1_000, 2_000)] {
        let ops: Vec<Value> = (from..to)
            .map(|i| {
                let key = if i % 2 == 0 {
                    format!("eu-{i:05}")
                } else {
                    format!("us-{i:05}")
                };
                op::upsert_alt(
                    "orders",
                    &key,
                    json!({"customer": format!("c{}", i % 9)}),
                    json!({"n": i}),
                )
            })
            .collect();
        src.batch(json!(ops)).ok();
        src.snapshot().expect(201);
    }
    let id = create_link(
        &a,
        "shop",
        &b,
        "shop",
        json!({"apply": "logical", "stages": [
            {"plugin": "eu@1", "config": {"files": ["orders"], "prefixes": ["eu-"]}},
            {"plugin": "ns@1", "config": {"default": {"key_prefix": "a/"}}}]}),
    );
    let replica = b.db(DEFAULT_TENANT, "shop");
    let expected = |src: &Db| -> Vec<(String, Value)> {
        src.contents("orders")
            .into_iter()
            .filter(|r| r["key"].as_str().unwrap().starts_with("eu-"))
            .map(|r| {
                (
                    format!("a/{}", r["key"].as_str().unwrap()),
                    r["data"].clone(),
                )
            })
            .collect()
    };
    let got = |replica: &Db| -> Vec<(String, Value)> {
        if replica.info().status != 200 {
            return Vec::new(); // not registered yet
        }
        replica
            .contents("orders")
            .into_iter()
            .map(|r| (r["key"].as_str().unwrap().to_string(), r["data"].clone()))
            .collect()
    };
    assert!(
        wait_until(deadline_in(CATCH_UP), || got(&replica) == expected(&src)),
        "{} records on the replica, {} expected; link {}",
        got(&replica).len(),
        expected(&src).len(),
        link_status(&a, &id)
    );
    assert_eq!(got(&replica).len(), 1_000);
    assert_eq!(link_status(&a, &id)["status"]["bootstraps"], 1);
    assert_eq!(
        replica.alt_keys("orders", "customer", "c0").len(),
        expected(&src)
            .iter()
            .filter(|(k, _)| {
                let n: u64 = k[5..].parse().unwrap();
                n.is_multiple_of(9)
            })
            .count()
    );
    // Then it streams from the snapshot's serial on.
    src.put("orders", "eu-later", json!({}), json!({"n": -1}))
        .ok();
    src.delete("orders", "eu-00000").ok();
    assert!(wait_until(deadline_in(CATCH_UP), || got(&replica) == expected(&src)));
    assert_eq!(link_status(&a, &id)["status"]["bootstraps"], 1);
}
