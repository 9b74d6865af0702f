//! End-to-end checks of the plugin registry and dry-run over HTTP against a real node:
//! upload (content-addressed), list, show, dry-run, delete, rejections and roles.

use doppel_server::plugins::builtin;
use doppel_tests::*;
use serde_json::json;

const PLUGINS: &str = "/v1/tenants/default/plugins";

fn upload(client: &Client, name: &str, version: &str, role: &str, wasm: &[u8]) -> Resp {
    client.request(
        "PUT",
        &format!("{PLUGINS}/{name}/{version}?role={role}"),
        Body::Raw("application/wasm", wasm),
    )
}

/// The tenant's own plugins in `GET …/plugins` (the list starts with the built-ins).
fn uploads(client: &Client) -> Vec<Value> {
    let list = client.get(PLUGINS);
    let list = list.ok().as_array().expect("a list");
    list.iter()
        .filter(|p| p["builtin"] == false)
        .cloned()
        .collect()
}

#[test]
fn a_plugin_is_uploaded_listed_shown_dry_run_and_deleted() {
    let node = Node::start();
    let client = node.client();

    let first = upload(
        &client,
        "eu-only",
        "1.0.0",
        "filter",
        builtin::PREFIX_FILTER,
    );
    let info = first.expect(201).clone();
    assert_eq!(info["role"], "filter");
    assert_eq!(info["size"], builtin::PREFIX_FILTER.len());
    // The same bytes again are the same plugin.
    let again = upload(
        &client,
        "eu-only",
        "1.0.0",
        "filter",
        builtin::PREFIX_FILTER,
    );
    assert_eq!(again.expect(200)["sha256"], info["sha256"]);
    // Other bytes under that version are refused: versions are immutable.
    upload(&client, "eu-only", "1.0.0", "filter", builtin::DROP_READS)
        .expect_problem(409, "already-exists");

    let list = uploads(&client);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "eu-only");

    let shown = client.get(&format!("{PLUGINS}/eu-only/1.0.0"));
    assert_eq!(
        shown.ok()["config_schema"]["properties"]["prefixes"]["type"],
        "array"
    );

    let run = client.post(
        &format!("{PLUGINS}/eu-only/1.0.0/dry-run"),
        &json!({
            "config": {"files": ["orders"], "prefixes": ["eu-"]},
            "records": [
                {"op": "insert", "file": "orders", "key": "eu-1", "alt": {"customer": "ann"}, "data": {"total": 3}},
                {"op": "insert", "file": "orders", "key": "us-1", "data": {"total": 4}},
                {"op": "delete", "file": "orders", "key": "eu-2"}
            ]
        }),
    );
    let run = run.ok();
    assert_eq!(run["kept"], json!([true, false, true]));
    assert_eq!(run["records"][0]["alt"]["customer"], "ann");
    assert_eq!(run["records"][0]["data"]["total"], 3);
    assert_eq!(run["errors"], json!([]));

    let bad = client.post(
        &format!("{PLUGINS}/eu-only/1.0.0/dry-run"),
        &json!({"config": {"files": [""]}, "records": []}),
    );
    let problem = bad.expect_problem(422, "plugin-config-rejected");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("eu-only@1.0.0") && detail.contains("file name is empty"),
        "{detail}"
    );

    client
        .delete(&format!("{PLUGINS}/eu-only/1.0.0"))
        .expect(200);
    client
        .get(&format!("{PLUGINS}/eu-only/1.0.0"))
        .expect_problem(404, "not-found");
    assert_eq!(uploads(&client), Vec::<Value>::new());
}

#[test]
fn a_transform_dry_run_returns_the_rewritten_records() {
    let node = Node::start();
    let client = node.client();
    upload(&client, "mask", "1", "transform", builtin::FIELD_MASK).expect(201);
    let run = client.post(
        &format!("{PLUGINS}/mask/1/dry-run"),
        &json!({
            "config": {"paths": ["email"]},
            "records": [
                {"op": "update", "file": "users", "key": "u1", "data": {"email": "a@b", "n": 1}, "before": {"email": "x@y"}},
                {"op": "insert", "file": "users", "key": "u2", "data": "plain text"}
            ]
        }),
    );
    let run = run.ok();
    assert_eq!(run["records"][0]["data"], json!({"email": "***", "n": 1}));
    assert_eq!(run["records"][0]["before"], json!({"email": "***"}));
    // "plain text" is valid JSON (a string): no field to mask, forwarded unchanged.
    assert_eq!(run["records"][1]["data"], "plain text");
}

#[test]
fn a_resolver_dry_run_answers_each_records_decision_and_merged_data() {
    let node = Node::start();
    let client = node.client();
    upload(&client, "lww", "1", "resolver", builtin::LWW_RESOLVER).expect(201);
    let url = format!("{PLUGINS}/lww/1/dry-run");
    let v = |ts: u64, origin: u64, data: serde_json::Value| json!({"op": "update", "file": "users", "key": "u1", "timestamp": ts, "origin": origin, "data": data});
    let run = client.post(
        &url,
        &json!({
            "config": {"strategy": "merge"},
            "records": [
                v(10, 1, json!({"name": "Anna", "city": "Oslo"})),
                v(10, 1, json!({"a": 1})),
                v(30, 1, json!({"n": 1})),
                v(10, 1, json!("not an object"))
            ],
            "remote": [
                v(20, 2, json!({"name": "Ann", "city": "Bergen"})),
                v(20, 2, json!({"b": 2})),
                {"op": "delete", "file": "users", "key": "u1", "timestamp": 20, "origin": 2},
                v(20, 2, json!({"n": 2}))
            ],
            "base": [v(5, 3, json!({"name": "Ann", "city": "Oslo"})), null, null, null]
        }),
    );
    let run = run.ok();
    assert_eq!(run["role"], "resolver");
    assert_eq!(
        run["decisions"],
        json!([
            {"decision": "merged", "op": "update", "data": {"name": "Anna", "city": "Bergen"}},
            {"decision": "merged", "op": "update", "data": {"a": 1, "b": 2}},
            {"decision": "local", "op": "update", "data": {"n": 1}},
            {"decision": "remote", "op": "update", "data": {"n": 2}}
        ])
    );
    assert_eq!(run["errors"], json!([]));

    // Without a base, lww: the later timestamp wins; an unorderable max field is that
    // record's error, and the record keeps its local version.
    let run = client.post(
        &url,
        &json!({
            "config": {"strategy": "max", "field": "v"},
            "records": [v(10, 1, json!({"v": 1})), v(10, 1, json!({"v": 1}))],
            "remote": [v(5, 2, json!({"v": 2})), v(5, 2, json!({"v": "2"}))]
        }),
    );
    let run = run.ok();
    assert_eq!(run["decisions"][0]["decision"], "remote");
    assert_eq!(run["decisions"][1]["decision"], "local");
    assert_eq!(run["errors"][0]["index"], 1);
    assert!(
        run["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("cannot be ordered"),
        "{run}"
    );

    // Sides that do not pair up, or a resolver without its remote side, are refused.
    let one = [v(1, 1, json!({}))];
    let problem = client
        .post(&url, &json!({"records": one, "remote": []}))
        .expect_problem(422, "invalid-request")
        .clone();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("1 records and 0 remote"),
        "{problem}"
    );
    let problem = client
        .post(
            &url,
            &json!({"records": one, "remote": one, "base": [null, null]}),
        )
        .expect_problem(422, "invalid-request")
        .clone();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("1 records and 2 base"),
        "{problem}"
    );
    let problem = client
        .post(&url, &json!({"records": one}))
        .expect_problem(422, "invalid-request")
        .clone();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("is a resolver: give remote"),
        "{problem}"
    );
    // And a filter takes no remote side.
    upload(&client, "reads", "1", "filter", builtin::DROP_READS).expect(201);
    let problem = client
        .post(
            &format!("{PLUGINS}/reads/1/dry-run"),
            &json!({"records": one, "remote": one}),
        )
        .expect_problem(422, "invalid-request")
        .clone();
    assert!(
        problem["detail"].as_str().unwrap().contains("is a filter"),
        "{problem}"
    );
}

#[test]
fn hostile_uploads_are_rejected_with_the_plugin_named_and_the_node_keeps_serving() {
    let node = Node::start();
    let client = node.client();
    let not_wasm = upload(&client, "evil", "1", "filter", b"MZ\x90\x00 not wasm");
    let detail = not_wasm.expect_problem(422, "plugin-rejected")["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        detail.contains("evil@1") && detail.contains("not a WebAssembly binary"),
        "{detail}"
    );

    let wrong_role = upload(&client, "evil", "2", "transform", builtin::PREFIX_FILTER);
    let detail = wrong_role.expect_problem(422, "plugin-rejected")["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(detail.contains("missing export 'transform'"), "{detail}");

    upload(&client, "evil", "3", "sorcerer", builtin::PREFIX_FILTER)
        .expect_problem(400, "malformed-request");
    // Nothing was stored, and the node still serves.
    assert_eq!(uploads(&client), Vec::<Value>::new());
    upload(&client, "good", "1", "filter", builtin::DROP_READS).expect(201);
    client.get("/v1/health").expect(200);
}

#[test]
fn readers_list_plugins_but_only_operators_upload_and_run_them() {
    let node = Node::start();
    let admin = node.client();
    upload(&admin, "p", "1", "filter", builtin::DROP_READS).expect(201);
    let reader = admin.with_token(&token("default", Role::Reader));
    reader.get(PLUGINS).expect(200);
    upload(&reader, "p", "2", "filter", builtin::DROP_READS).expect_problem(403, "forbidden");
    let operator = admin.with_token(&token("default", Role::Operator));
    upload(&operator, "p", "2", "filter", builtin::DROP_READS).expect(201);
    // Another tenant's token sees no such tenant.
    let other = admin.with_token(&token("other", Role::Admin));
    other.get(PLUGINS).expect_problem(404, "not-found");
}

#[test]
fn the_built_in_plugins_are_in_every_tenants_registry_ready_to_run_and_reserved() {
    let node = Node::start();
    let client = node.client();
    let version = env!("CARGO_PKG_VERSION");
    client.create_tenant("acme");
    // Every built-in, in every tenant, without an upload, at the server's version.
    for tenant in ["default", "acme"] {
        let list = client.get(&format!("/v1/tenants/{tenant}/plugins"));
        let list = list.ok().as_array().unwrap().clone();
        for (name, role, _, wasm) in builtin::BUILTIN_PLUGINS {
            let p = list
                .iter()
                .find(|p| p["name"] == *name)
                .unwrap_or_else(|| panic!("{name} missing in {tenant}'s list: {list:?}"));
            assert_eq!(p["builtin"], true, "{p}");
            // Its crate's own version where it has one (json-columns), else the server's.
            let own = doppel_server::plugins::registry::builtin_version(name).unwrap();
            assert_eq!(p["version"], own, "{p}");
            assert_eq!(p["role"], *role, "{p}");
            assert_eq!(p["size"], wasm.len(), "{p}");
            assert!(
                p["description"].as_str().is_some_and(|d| !d.is_empty()),
                "{p}"
            );
        }
    }
    // Shown with its schema, and dry-run as is.
    let at = format!("{PLUGINS}/prefix-filter/{version}");
    let shown = client.get(&at);
    assert!(shown.ok()["config_schema"]["properties"]["prefixes"].is_object());
    let run = client.post(
        &format!("{at}/dry-run"),
        &json!({"config": {"prefixes": ["eu-"]}, "records": [
            {"op": "insert", "file": "orders", "key": "eu-1", "data": {"total": 1}},
            {"op": "insert", "file": "orders", "key": "us-1", "data": {"total": 2}}]}),
    );
    assert_eq!(run.ok()["kept"], json!([true, false]), "{}", run.ok());
    // Another version of a built-in names the one there is.
    let missing = client.get(&format!("{PLUGINS}/prefix-filter/9.9.9"));
    let detail = missing.expect_problem(404, "not-found")["detail"].clone();
    assert!(detail.as_str().unwrap().contains(version), "{detail}");
    // Reserved: no upload under its name (any version), no delete.
    let refused = upload(&client, "prefix-filter", "9", "filter", builtin::DROP_READS);
    let detail = refused.expect_problem(409, "builtin-plugin")["detail"].clone();
    assert!(detail.as_str().unwrap().contains("built-in"), "{detail}");
    client.delete(&at).expect_problem(409, "builtin-plugin");
    client.get(&at).expect(200);
    // The built-ins count against no quota.
    let usage = client.get("/v1/tenants/default/usage");
    assert_eq!(usage.ok()["plugins"]["used"], 0, "{}", usage.ok());
    // The component files the build leaves where a user looks are valid uploads.
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/plugins/prefix-filter.wasm");
    let wasm = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    upload(&client, "my-filter", "1", "filter", &wasm).expect(201);
}
