//! The systematic isolation test: every route of the OpenAPI document, tried with the
//! tokens of tenant B (every role) against tenant A's real resources, is refused exactly
//! as the same request against a tenant that does not exist: same status, same code,
//! same body but for the name in the path. Nothing of A changes, and B's tenant list
//! does not show A.

use doppel_tests::*;

const A: &str = "tenant-a";
const GHOST: &str = "tenant-z";

fn fill(template: &str, tenant: &str, txn: u64) -> String {
    template
        .split('/')
        .map(|seg| match seg {
            "{tenant}" => tenant.to_string(),
            "{db}" => "shop".into(),
            "{file}" => "orders".into(),
            "{key}" => "o1".into(),
            "{alt}" => "customer".into(),
            "{value}" => "ann".into(),
            "{txn}" => txn.to_string(),
            "{name}" => "p".into(),
            "{version}" => "1".into(),
            "{link}" => "l1".into(),
            "{id}" => "1".into(),
            "{holder}" => "1.1".into(),
            other if other.starts_with('{') => {
                panic!("route parameter {other} of {template}: teach this test a value")
            }
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn send(client: &Client, method: &str, path: &str) -> Resp {
    let body = json!({});
    match method {
        "get" => client.get(path),
        "delete" => client.delete(path),
        "post" => client.post(path, &body),
        "put" => client.put(path, &body),
        other => panic!("method {other}"),
    }
}

#[test]
fn no_route_lets_tenant_b_touch_or_see_tenant_a() {
    let node = Node::start();
    node.create_tenant(A);
    node.create_tenant("tenant-b");
    let shop = node.create_db(A, shop_spec("shop"));
    shop.put("orders", "o1", json!({"customer": "ann"}), json!({"n": 1}))
        .ok();
    let txn = shop.begin();
    shop.ops(txn, json!([op::upsert("lines", "l1", json!(1))]))
        .ok();
    shop.snapshot().expect(201);
    // A plugin of A's, so that plugin routes are tried against a real resource.
    node.request(
        "PUT",
        &format!("/v1/tenants/{A}/plugins/p/1?role=filter"),
        Body::Raw(
            "application/wasm",
            doppel_server::plugins::builtin::DROP_READS,
        ),
    )
    .expect(201);
    let before = (shop.info(), shop.contents("orders"), shop.snapshots());

    let doc = node.get("/v1/openapi.json");
    let paths = doc.ok()["paths"].as_object().expect("paths").clone();
    let mut tried = 0;
    for role in Role::ALL {
        let b = node.with_token(&token("tenant-b", role));
        for (template, item) in &paths {
            for method in item.as_object().expect("path item").keys() {
                if !template.contains("{tenant}") {
                    continue;
                }
                let on_a = send(&b, method, &fill(template, A, txn));
                let on_ghost = send(&b, method, &fill(template, GHOST, txn));
                on_a.expect_problem(404, "not-found");
                assert_eq!(
                    on_a.text.replace(A, "T"),
                    on_ghost.text.replace(GHOST, "T"),
                    "{role:?} {method} {template}: A's answer differs from an absent tenant's"
                );
                tried += 1;
            }
        }
        // Routes without a tenant: the list does not show A, and creating A is refused
        // exactly as creating any other tenant.
        let list = b.get("/v1/tenants");
        assert!(!list.text.contains(A), "{role:?}: {list}");
        let create_a = b.post("/v1/tenants", &json!({"name": A}));
        let create_new = b.post("/v1/tenants", &json!({"name": GHOST}));
        assert_eq!(create_a.status, 403, "{create_a}");
        assert_eq!(
            create_a.text.replace(A, "T"),
            create_new.text.replace(GHOST, "T")
        );
    }
    assert!(tried >= 4 * 20, "every tenant route was tried ({tried})");

    // Nothing of A changed: data, snapshots, the open transaction.
    let after = (shop.info(), shop.contents("orders"), shop.snapshots());
    assert_eq!(before.0.body, after.0.body);
    assert_eq!(before.1, after.1);
    assert_eq!(before.2.body, after.2.body);
    shop.txn(txn).ok();
    assert_eq!(shop.commit(txn).ok()["txn"], json!(txn));
}
