//! End-to-end checks of `/v1/openapi.json` against a real server process:
//! the document is OpenAPI 3.1, lists at least every route of the documented
//! contract, and every (path, method) it lists is actually routed by the
//! server (never the router's 404 `no-route` answer, never 405).

use std::collections::{BTreeMap, BTreeSet};

use doppel_tests::*;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

/// The contract's routes, with parameters written as `{}`.
const EXPECTED: &[(&str, &[&str])] = &[
    ("/v1/health", &["get"]),
    ("/v1/openapi.json", &["get"]),
    ("/v1/tenants", &["get", "post"]),
    ("/v1/tenants/{}/databases", &["get", "post"]),
    ("/v1/tenants/{}/databases/{}", &["get", "delete"]),
    (
        "/v1/tenants/{}/databases/{}/files/{}/records",
        &["get", "post"],
    ),
    (
        "/v1/tenants/{}/databases/{}/files/{}/records/{}",
        &["get", "put", "delete"],
    ),
    ("/v1/tenants/{}/databases/{}/files/{}/alt/{}/{}", &["get"]),
    ("/v1/tenants/{}/databases/{}/transactions", &["post"]),
    ("/v1/tenants/{}/databases/{}/txns", &["post"]),
    ("/v1/tenants/{}/databases/{}/txns/{}", &["get"]),
    ("/v1/tenants/{}/databases/{}/txns/{}/ops", &["post"]),
    ("/v1/tenants/{}/databases/{}/txns/{}/commit", &["post"]),
    ("/v1/tenants/{}/databases/{}/txns/{}/cancel", &["post"]),
    ("/v1/tenants/{}/databases/{}/snapshots", &["get", "post"]),
    ("/v1/tenants/{}/databases/{}/log", &["get"]),
    ("/v1/tenants/{}/databases/{}/checksums", &["get"]),
    ("/v1/tenants/{}/plugins", &["get"]),
    ("/v1/tenants/{}/plugins/{}/{}", &["get", "put", "delete"]),
    ("/v1/tenants/{}/plugins/{}/{}/dry-run", &["post"]),
    ("/v1/node", &["get"]),
    ("/v1/cluster", &["get"]),
    ("/metrics", &["get"]),
    ("/v1/tenants/{}/links", &["get", "post"]),
    ("/v1/tenants/{}/links/{}", &["get", "delete"]),
    ("/v1/tenants/{}/links/{}/pause", &["post"]),
    ("/v1/tenants/{}/links/{}/dead-letters", &["get"]),
    ("/v1/tenants/{}/links/{}/stages", &["put"]),
    ("/v1/tenants/{}/links/{}/dead-letters/{}", &["delete"]),
    ("/v1/tenants/{}/links/{}/resume", &["post"]),
    ("/v1/tenants/{}/replicas", &["get"]),
    ("/v1/tenants/{}/replicas/{}", &["put", "delete"]),
    ("/v1/tenants/{}/replicas/{}/suspend", &["post"]),
    ("/v1/tenants/{}/replicas/{}/release", &["post"]),
    ("/v1/tenants/{}/databases/{}/quorum", &["get", "put"]),
    ("/", &["get"]),
    ("/console/{}", &["get"]),
    ("/v1/whoami", &["get"]),
    ("/v1/tenants/{}/events", &["get"]),
    ("/v1/tenants/{}/databases/{}/restore", &["post"]),
    ("/v1/tenants/{}/databases/{}/replay", &["post"]),
    ("/v1/tenants/{}/databases/{}/restores", &["get"]),
    ("/v1/tenants/{}/databases/{}/restores/{}", &["get"]),
];

/// `/a/{x}/b/{y}` → `/a/{}/b/{}`.
fn normalise(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.starts_with('{') && seg.ends_with('}') {
                "{}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Documented operations: normalised path → methods.
fn documented(doc: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let paths = doc["paths"].as_object().expect("paths object");
    let mut out = BTreeMap::new();
    for (path, item) in paths {
        let methods: BTreeSet<String> = item
            .as_object()
            .unwrap_or_else(|| panic!("path item object for {path}"))
            .keys()
            .filter(|k| METHODS.contains(&k.as_str()))
            .cloned()
            .collect();
        out.insert(normalise(path), methods);
    }
    out
}

#[test]
fn document_is_openapi_3_1_and_lists_the_contract() {
    let node = Node::start();
    let r = node.get("/v1/openapi.json");
    let doc = r.ok();
    assert_eq!(r.media_type().as_deref(), Some("application/json"), "{r}");
    let version = doc["openapi"]
        .as_str()
        .unwrap_or_else(|| panic!("openapi version: {r}"));
    assert!(version.starts_with("3.1"), "OpenAPI 3.1, got {version}");
    assert!(doc["info"]["title"].is_string(), "info.title");
    assert!(doc["info"]["version"].is_string(), "info.version");

    let paths = doc["paths"].as_object().expect("paths object");
    for (path, item) in paths {
        assert!(path.starts_with('/'), "path {path}");
        assert!(
            !path.contains(':'),
            "path {path} uses {{param}} syntax, not :param"
        );
        let item = item.as_object().unwrap();
        for (key, operation) in item {
            if METHODS.contains(&key.to_ascii_lowercase().as_str()) {
                assert_eq!(
                    key,
                    &key.to_ascii_lowercase(),
                    "lowercase method key at {path}"
                );
                assert!(
                    operation["responses"].is_object(),
                    "{key} {path} documents its responses"
                );
            }
        }
    }

    let documented = documented(doc);
    let mut missing = Vec::new();
    for (path, methods) in EXPECTED {
        for method in *methods {
            if !documented.get(*path).is_some_and(|m| m.contains(*method)) {
                missing.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "routes missing from the OpenAPI document: {missing:#?}"
    );
}

/// Fills a documented path's parameters with values that exist on the
/// server, choosing by the literal segment that precedes each parameter.
fn fill(path: &str, txn: u64) -> String {
    let segs: Vec<&str> = path.split('/').collect();
    let mut out = Vec::with_capacity(segs.len());
    for (i, seg) in segs.iter().enumerate() {
        if !(seg.starts_with('{') && seg.ends_with('}')) {
            out.push(seg.to_string());
            continue;
        }
        let prev = if i > 0 { segs[i - 1] } else { "" };
        let value = match prev {
            "tenants" => "default".to_string(),
            "databases" => "api".to_string(),
            "files" => "orders".to_string(),
            "records" => "k1".to_string(),
            "alt" => "customer".to_string(),
            "txns" => txn.to_string(),
            "snapshots" => "1".to_string(),
            // The value after an alt key name.
            _ if i >= 2 && segs[i - 2] == "alt" => "ann".to_string(),
            _ => "x".to_string(),
        };
        out.push(value);
    }
    out.join("/")
}

#[test]
fn every_documented_route_is_served() {
    let node = Node::start();
    // Sanity check of what "not routed" looks like.
    node.get("/v1/no/such/route")
        .expect_problem(404, "no-route");

    let doc = node.get("/v1/openapi.json").ok().clone();
    let paths = doc["paths"].as_object().expect("paths object");
    let mut calls: Vec<(String, String)> = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            if METHODS.contains(&method.as_str()) && method != "head" && method != "options" {
                calls.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    // Deletes last and deepest first, so earlier calls still find what they
    // address (the database itself goes last).
    calls.sort_by_key(|(m, p)| {
        (
            m == "DELETE",
            std::cmp::Reverse(p.len()),
            p.clone(),
            m.clone(),
        )
    });
    assert!(!calls.is_empty(), "document lists operations");

    let db = node.create_db("default", shop_spec("api"));
    db.put("orders", "k1", json!({ "customer": "ann" }), json!(1))
        .ok();

    let mut problems = Vec::new();
    for (method, path) in &calls {
        // A fresh open transaction for every call, so commit/cancel/ops each
        // address a live one.
        let begun = node.post_empty(&db.path("/txns"));
        let txn = begun["txn"].as_u64().unwrap_or(1);
        let mut url_path = fill(path, txn);
        if path.ends_with("/events") {
            // The live stream runs until the client leaves; one snapshot is enough here.
            url_path.push_str("?limit=1");
        }
        let body = json!({});
        let r = match method.as_str() {
            "POST" | "PUT" | "PATCH" => node.request(method, &url_path, Body::Json(&body)),
            _ => node.request(method, &url_path, Body::Empty),
        };
        let _ = db.cancel(txn);
        let unrouted = (r.status == 404 && r.code() == Some("no-route")) || r.status == 405;
        let server_error = r.status >= 500 && r.status != 507;
        if unrouted || server_error {
            problems.push(format!("{method} {path}: {r}"));
        }
        if r.status >= 400 {
            assert_eq!(
                r.media_type().as_deref(),
                Some("application/problem+json"),
                "errors are problem+json: {method} {path}: {r}"
            );
        }
    }
    assert!(
        problems.is_empty(),
        "documented routes not served properly:\n{}",
        problems.join("\n")
    );
}

#[test]
fn document_is_served_without_a_token() {
    let node = Node::start();
    let anonymous = node.client().without_token();
    let r = anonymous.get("/v1/openapi.json");
    let doc = r.ok();
    assert_eq!(doc["openapi"], "3.1.0", "{r}");
    // The routes that hold data still need one.
    anonymous
        .get("/v1/tenants")
        .expect_problem(401, "missing-token");
}

/// Resolves a `$ref` into `components/schemas`.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("reference {r} into components/schemas"));
            let target = &doc["components"]["schemas"][name];
            assert!(target.is_object(), "{r} resolves");
            target
        }
        None => schema,
    }
}

#[test]
fn every_body_answer_and_parameter_is_typed() {
    let node = Node::start();
    let doc = node.get("/v1/openapi.json").ok().clone();
    let mut untyped = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let what = format!("{} {path}", method.to_uppercase());
            if let Some(content) = op["requestBody"]["content"].as_object() {
                for (media, m) in content {
                    if !m["schema"].is_object() {
                        untyped.push(format!("{what}: request {media} has no schema"));
                    }
                }
            } else if method == "post" || method == "put" {
                // A bodiless write says so by having no requestBody: fine.
            }
            let mut success = 0;
            for (status, response) in op["responses"].as_object().unwrap() {
                if !status.starts_with('2') {
                    continue;
                }
                success += 1;
                for (media, m) in response["content"].as_object().into_iter().flatten() {
                    if !m["schema"].is_object() {
                        untyped.push(format!("{what}: {status} {media} has no schema"));
                    }
                }
                if status != "204" && response["content"].as_object().is_none_or(|c| c.is_empty()) {
                    untyped.push(format!("{what}: {status} has no content"));
                }
            }
            if success == 0 {
                untyped.push(format!("{what}: no 2xx answer"));
            }
            if op["x-problem-codes"]
                .as_array()
                .is_none_or(|c| c.is_empty())
                && op["x-permission"] != "public"
            {
                untyped.push(format!("{what}: no problem codes"));
            }
            for p in op["parameters"].as_array().unwrap() {
                let name = p["name"].as_str().unwrap();
                let ty = &p["schema"]["type"];
                if !ty.is_string() {
                    untyped.push(format!("{what}: parameter {name} has no type"));
                }
                if matches!(name, "txn" | "id") && ty != "integer" {
                    untyped.push(format!("{what}: {name} is a number, typed {ty}"));
                }
            }
        }
    }
    assert!(untyped.is_empty(), "untyped:\n{}", untyped.join("\n"));

    // The schemas are the handlers' own types: enums as enums, the record body's key.
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["Mode"]["enum"],
        json!(["sync", "async"]),
        "{}",
        schemas["Mode"]
    );
    assert_eq!(schemas["Apply"]["enum"], json!(["mirror", "logical"]));
    assert_eq!(schemas["OnError"]["enum"], json!(["stop", "quarantine"]));
    let link = &doc["paths"]["/v1/tenants/{tenant}/links"]["post"];
    let body = resolve(
        &doc,
        &link["requestBody"]["content"]["application/json"]["schema"],
    );
    let required: Vec<&str> = body["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        required.contains(&"database") && required.contains(&"target"),
        "{body}"
    );
    let upload = &doc["paths"]["/v1/tenants/{tenant}/plugins/{name}/{version}"]["put"];
    assert!(
        upload["requestBody"]["content"]["application/wasm"].is_object(),
        "{upload}"
    );
    let events = &doc["paths"]["/v1/tenants/{tenant}/events"]["get"]["responses"]["200"];
    assert!(
        events["content"]["text/event-stream"].is_object(),
        "{events}"
    );
    let metrics = &doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"];
    assert!(
        metrics
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("text/plain")),
        "{metrics}"
    );
    let create = &doc["paths"]["/v1/tenants/{tenant}/databases"]["post"];
    let codes = create["x-problem-codes"].as_array().unwrap();
    assert!(codes.contains(&json!("already-exists")), "{codes:?}");
}

#[test]
fn links_chain_what_an_operation_creates_to_its_users() {
    let node = Node::start();
    let doc = node.get("/v1/openapi.json").ok().clone();
    let mut ids = BTreeSet::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            assert!(
                ids.insert(op["operationId"].as_str().unwrap().to_string()),
                "unique operationId {}",
                op["operationId"]
            );
        }
    }
    let links_of = |path: &str, method: &str, status: &str| -> Vec<String> {
        let links = &doc["paths"][path][method]["responses"][status]["links"];
        let links = links
            .as_object()
            .unwrap_or_else(|| panic!("links of {method} {path}"));
        links
            .values()
            .map(|l| {
                let id = l["operationId"].as_str().unwrap();
                assert!(ids.contains(id), "link to unknown operation {id}");
                id.to_string()
            })
            .collect()
    };
    let db = links_of("/v1/tenants/{tenant}/databases", "post", "201");
    for user in [
        "scan_records",
        "insert_record",
        "transaction",
        "take_snapshot",
    ] {
        assert!(db.contains(&user.to_string()), "database → {user}: {db:?}");
    }
    let plugin = links_of(
        "/v1/tenants/{tenant}/plugins/{name}/{version}",
        "put",
        "2XX",
    );
    assert!(
        plugin.contains(&"plugins_dry_run".to_string()),
        "{plugin:?}"
    );
    let link = links_of("/v1/tenants/{tenant}/links", "post", "2XX");
    for user in ["links_dead_letters", "links_verify"] {
        assert!(link.contains(&user.to_string()), "link → {user}: {link:?}");
    }

    // Following a link's parameters with a real answer reaches the created thing.
    let spec = shop_spec("linked");
    let created = node.post("/v1/tenants/default/databases", &spec);
    let created = created.expect(201);
    let param = &doc["paths"]["/v1/tenants/{tenant}/databases"]["post"]["responses"]["201"]
        ["links"]["Database"]["parameters"]["db"];
    let pointer = param
        .as_str()
        .and_then(|p| p.strip_prefix("$response.body#"))
        .expect("db from the response body");
    let name = created.pointer(pointer).and_then(Value::as_str).unwrap();
    node.get(&format!("/v1/tenants/default/databases/{name}"))
        .ok();
}

#[test]
fn every_problem_type_resolves_to_its_entry() {
    let node = Node::start();
    let problem = node.get("/v1/tenants/default/databases/nope");
    let problem = problem.expect_problem(404, "not-found");
    let kind = problem["type"].as_str().unwrap();
    let (page, entry) = kind.split_once('#').expect("type names an entry");
    assert_eq!(entry, "not-found");
    let anonymous = node.client().without_token();
    let r = anonymous.request("GET", page, Body::Empty);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.media_type().as_deref(), Some("text/html"), "{r}");
    let html = &r.text;
    // Every code the document says an operation can answer has its entry.
    let doc = anonymous.get("/v1/openapi.json").ok().clone();
    let mut codes = BTreeSet::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            for code in op["x-problem-codes"].as_array().into_iter().flatten() {
                codes.insert(code.as_str().unwrap().to_string());
            }
        }
    }
    assert!(codes.len() > 30, "{codes:?}");
    for code in codes {
        assert!(
            html.contains(&format!("id=\"{code}\"")),
            "no entry for {code} on {page}"
        );
    }
}

/// A request the document allows but the server refuses on meaning (a rule between two
/// fields, or what it names cannot take it) answers 422 `invalid-request`, not 400
/// `malformed-request` (kept for what does not parse); a promote of a database that is
/// not a replica is 409 `not-a-replica`. Nothing is written, and each operation lists
/// the code it answered.
#[test]
fn schema_valid_requests_refused_on_meaning_are_422_and_listed() {
    let node = Node::start();
    let client = node.client();
    let dbs = format!("/v1/tenants/{DEFAULT_TENANT}/databases");
    let tiny = json!({"name": "tiny", "files": [{"name": "f"}], "block_size": 4096,
        "memory_quota_bytes": 1024});
    let p = client
        .post(&dbs, &tiny)
        .expect_problem(422, "invalid-request")
        .clone();
    assert!(
        p["detail"].as_str().unwrap().contains("at least one block"),
        "{p}"
    );
    let twice = json!({"name": "twice", "files": [{"name": "f"}, {"name": "f"}]});
    client
        .post(&dbs, &twice)
        .expect_problem(422, "invalid-request");
    client
        .get(&format!("{dbs}/tiny"))
        .expect_problem(404, "not-found");

    let db = client.create_db(DEFAULT_TENANT, shop_spec("shop"));
    let unknown_alt = json!({"key": "k", "alt": {"colour": "red"}, "data": {}});
    let p = client
        .post(&db.path("/files/orders/records"), &unknown_alt)
        .expect_problem(422, "invalid-request")
        .clone();
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("no alternate key 'colour'"),
        "{p}"
    );
    client
        .put(
            &db.path("/files/orders/records/k"),
            &json!({"alt": {"colour": "red"}, "data": {}}),
        )
        .expect_problem(422, "invalid-request");
    client
        .get(&db.path("/files/orders/records/k"))
        .expect_problem(404, "not-found");

    // A replay while an interactive transaction is open would wait for its locks half
    // way: refused before anything is restored (409), and done once it is cancelled.
    client
        .put(&db.path("/files/lines/records/r"), &json!({"data": {}}))
        .ok();
    let txn = client.post_empty(&db.path("/txns")).expect(201)["txn"].clone();
    client
        .post(&db.path("/replay"), &json!({"from_serial": 0}))
        .expect_problem(409, "transactions-open");
    client
        .post(&db.path(&format!("/txns/{txn}/cancel")), &json!({}))
        .ok();
    client
        .post(&db.path("/replay"), &json!({"from_serial": 0}))
        .ok();
    // An interactive transaction takes at least one operation per request.
    let txn = client.post_empty(&db.path("/txns")).expect(201)["txn"].clone();
    client
        .post(&db.path(&format!("/txns/{txn}/ops")), &json!({"ops": []}))
        .expect_problem(400, "malformed-request");

    // A mutual database's versions file exists, and takes no writes of a client.
    let mut mutual = shop_spec("both");
    mutual["mutual"] = json!(true);
    let both = client.create_db(DEFAULT_TENANT, mutual);
    let p = client
        .put(
            &both.path("/files/__versions/records/k"),
            &json!({"data": {}}),
        )
        .expect_problem(422, "invalid-request")
        .clone();
    assert!(
        p["detail"].as_str().unwrap().contains("takes no writes"),
        "{p}"
    );
    client
        .delete(&both.path("/files/__versions/records/k"))
        .expect_problem(422, "invalid-request");

    let p = client
        .post(&db.path("/promote"), &json!({}))
        .expect_problem(409, "not-a-replica")
        .clone();
    assert!(
        p["detail"].as_str().unwrap().contains("not a replica"),
        "{p}"
    );

    let doc = client.get("/v1/openapi.json").ok().clone();
    let codes = |path: &str, method: &str| -> Vec<String> {
        doc["paths"][path][method]["x-problem-codes"]
            .as_array()
            .unwrap_or_else(|| panic!("{method} {path} lists its codes"))
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect()
    };
    let db_path = "/v1/tenants/{tenant}/databases/{db}";
    for (path, method, code) in [
        (
            "/v1/tenants/{tenant}/databases".to_string(),
            "post",
            "invalid-request",
        ),
        (
            format!("{db_path}/files/{{file}}/records"),
            "post",
            "invalid-request",
        ),
        (
            format!("{db_path}/files/{{file}}/records/{{key}}"),
            "put",
            "invalid-request",
        ),
        (format!("{db_path}/promote"), "post", "not-a-replica"),
        (
            format!("{db_path}/files/{{file}}/records/{{key}}"),
            "delete",
            "invalid-request",
        ),
        (format!("{db_path}/txns"), "post", "invalid-request"),
        (
            "/v1/tenants/{tenant}/links/{link}/verify".to_string(),
            "post",
            "invalid-request",
        ),
        (
            "/v1/tenants/{tenant}/links/{link}/dead-letters/{id}/redrive".to_string(),
            "post",
            "invalid-request",
        ),
    ] {
        assert!(
            codes(&path, method).iter().any(|c| c == code),
            "{method} {path} does not list {code}"
        );
    }
}
