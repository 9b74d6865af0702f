//! Verify and repair (SPEC G3) between real nodes: a mirror verified while writes go on,
//! replica blocks corrupted on purpose (the test build's fault-injection route), verify
//! finding exactly those blocks, and repair fixing one block, then one file, then the
//! rest, against the source's own contents.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use doppel_tests::*;

const CATCH_UP: Duration = Duration::from_secs(60);

fn fill(db: &Db, from: u64, to: u64) {
    let ops: Vec<Value> = (from..to)
        .map(|i| {
            op::upsert_alt(
                "orders",
                &format!("o-{i:05}"),
                json!({"customer": format!("c{}", i % 13)}),
                json!({"total": i, "note": "x".repeat((i % 40) as usize)}),
            )
        })
        .collect();
    db.batch(json!(ops)).ok();
    for i in (from..to).step_by(10) {
        db.put(
            "lines",
            &format!("l-{i:05}"),
            json!({}),
            json!({"order": i}),
        )
        .ok();
    }
}

/// The differing blocks a verify or repair report lists, per file.
fn differing(report: &Value) -> Vec<(String, Vec<u64>)> {
    report["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| !f["differing"].as_array().unwrap().is_empty())
        .map(|f| {
            (
                f["file"].as_str().unwrap().to_string(),
                f["differing"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_u64().unwrap())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn verify_finds_exactly_the_corrupted_blocks_and_repair_fixes_them_by_block_file_and_database() {
    let a = Node::start();
    let b = Node::start();
    let src = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    fill(&src, 0, 2_000);
    let id = create_link(&a, "shop", &b, "shop", json!({}));
    let replica = b.db(DEFAULT_TENANT, "shop");
    wait_identical(&src, &replica, CATCH_UP);
    let link = format!("/v1/tenants/{DEFAULT_TENANT}/links/{id}");

    // Verified while a writer goes on: both sides are compared at one serial.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (src, stop) = (src.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 2_000;
            while !stop.load(Ordering::SeqCst) && i < 20_000 {
                fill(&src, i, i + 20);
                i += 20;
            }
        })
    };
    let clean = a.post_empty(&format!("{link}/verify")).ok().clone();
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert_eq!(clean["identical"], true, "{clean}");
    assert!(clean["serial"].as_u64().unwrap() > 0);
    let orders = clean["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file"] == "orders")
        .unwrap()
        .clone();
    assert!(orders["blocks"].as_u64().unwrap() >= 3, "{orders}");
    wait_identical(&src, &replica, CATCH_UP);

    // Corrupt two blocks of orders and one of lines on the replica.
    let corrupt = |file: &str, block: u64| {
        b.post(
            &format!("/v1/tenants/{DEFAULT_TENANT}/databases/shop/faults/corrupt-block"),
            &json!({"file": file, "block": block}),
        )
        .expect(204);
    };
    corrupt("orders", 0);
    corrupt("orders", 2);
    corrupt("lines", 0);
    let found = a.post_empty(&format!("{link}/verify")).ok().clone();
    assert_eq!(found["identical"], false);
    assert_eq!(
        differing(&found),
        vec![("lines".into(), vec![0]), ("orders".into(), vec![0, 2])],
        "{found}"
    );

    // One block, then one file, then the whole database.
    let one = a
        .post(
            &format!("{link}/repair"),
            &json!({"file": "orders", "blocks": [2]}),
        )
        .ok()
        .clone();
    assert_eq!(one["repaired_blocks"], 1, "{one}");
    assert_eq!(
        differing(&one["after"]),
        vec![("lines".into(), vec![0]), ("orders".into(), vec![0])]
    );
    let file = a
        .post(&format!("{link}/repair"), &json!({"file": "orders"}))
        .ok()
        .clone();
    assert_eq!(differing(&file["after"]), vec![("lines".into(), vec![0])]);
    let all = a.post(&format!("{link}/repair"), &json!({})).ok().clone();
    assert_eq!(all["after"]["identical"], true, "{all}");
    assert_eq!(replica.contents("orders"), src.contents("orders"));
    assert_eq!(replica.contents("lines"), src.contents("lines"));
    assert_eq!(
        replica.alt_keys("orders", "customer", "c3"),
        src.alt_keys("orders", "customer", "c3")
    );
    // The repaired replica follows on.
    fill(&src, 30_000, 30_500);
    wait_identical(&src, &replica, CATCH_UP);
    assert_eq!(
        a.post_empty(&format!("{link}/verify")).ok()["identical"],
        true
    );

    // Bad requests: blocks without their file, and a logical link, parse but are
    // refused on meaning (422).
    a.post(&format!("{link}/repair"), &json!({"blocks": [1]}))
        .expect_problem(422, "invalid-request");
    b.post(
        &format!("/v1/tenants/{DEFAULT_TENANT}/replicas/{id}/repair"),
        &json!({"credential": "guess", "file": "orders", "layout": "", "used": [], "blocks": []}),
    )
    .expect_problem(404, "not-found");
    let logical = create_link(&a, "shop", &b, "copy", json!({"apply": "logical"}));
    a.post_empty(&format!(
        "/v1/tenants/{DEFAULT_TENANT}/links/{logical}/verify"
    ))
    .expect_problem(422, "invalid-request");
    // A paused link does not bring its replica to a serial: refused at once (409), and
    // verified again once resumed.
    a.post_empty(&format!("{link}/pause")).ok();
    let p = a
        .post_empty(&format!("{link}/verify"))
        .expect_problem(409, "link-not-streaming")
        .clone();
    assert!(p["detail"].as_str().unwrap().contains("Paused"), "{p}");
    a.post_empty(&format!("{link}/resume")).ok();
    assert_eq!(
        a.post_empty(&format!("{link}/verify")).ok()["identical"],
        true
    );
}
