//! The browser console (issue 7) in a real browser: each test starts real `doppel`
//! nodes, runs one flow of `tests/browser/*.mjs` (playwright-core driving Debian's
//! headless Chromium) against them, asserts on what the page showed (the flow's JSON)
//! and then on the server's state through the API.
//!
//! Needs `/usr/bin/chromium` and `tests/browser/node_modules` (`bash .ci/run` installs
//! both); without them the tests fail and say so. `DOPPEL_SCREENSHOTS=docs/console`
//! makes the flows save the screenshots the README shows.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use doppel_server::tenancy::auth::{now_secs, Claims};
use doppel_tests::*;

/// The longest one flow may run.
const FLOW_TIMEOUT: Duration = Duration::from_secs(120);
const CHROMIUM: &str = "/usr/bin/chromium";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Runs `tests/browser/{flow}.mjs` with `vars` and returns the JSON line it printed.
fn run_flow(flow: &str, vars: &[(&str, String)]) -> Value {
    // One browser at a time: the machine has two cores and the nodes need them too.
    static ONE_BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = browser_dir();
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium package (bash .ci/run does)"
    );
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "tests/browser/node_modules is missing: run `npm ci` in tests/browser (bash .ci/run does)"
    );
    let mut cmd = Command::new("node");
    cmd.arg(dir.join(format!("{flow}.mjs")))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    if let Ok(shots) = std::env::var("DOPPEL_SCREENSHOTS") {
        let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(shots);
        cmd.env("DOPPEL_SCREENSHOTS", shots);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node (is Node.js installed?): {e}"));
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + FLOW_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let status =
        status.unwrap_or_else(|| panic!("flow {flow} ran past {FLOW_TIMEOUT:?}\n{out}\n{err}"));
    assert!(
        status.success(),
        "flow {flow} failed ({status}):\nstdout:\n{out}\nstderr:\n{err}"
    );
    let line = out.lines().last().unwrap_or_default();
    let result: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("flow {flow} printed no JSON ({e}):\n{out}\n{err}"));
    assert!(
        result.get("page_errors").is_none(),
        "flow {flow}: the page logged errors: {}",
        result["page_errors"]
    );
    result
}

fn seeded_shop(node: &Node) -> Db {
    let db = node.create_db(DEFAULT_TENANT, shop_spec("shop"));
    db.put(
        "orders",
        "o-1",
        json!({"customer": "ann"}),
        json!({"total": 1}),
    )
    .ok();
    db.put(
        "orders",
        "o-2",
        json!({"customer": "bob"}),
        json!({"total": 2}),
    )
    .ok();
    db.put(
        "orders",
        "o-1",
        json!({"customer": "ann"}),
        json!({"total": 3}),
    )
    .ok();
    db
}

#[test]
fn login_refuses_bad_and_expired_tokens_then_browses_data() {
    let node = Node::start();
    seeded_shop(&node);
    let now = now_secs();
    let expired = keyring()
        .sign(
            HS_KID,
            &Claims {
                sub: "late".into(),
                tenant: DEFAULT_TENANT.into(),
                role: Role::Operator,
                iss: "doppel".into(),
                aud: "doppel".into(),
                exp: now - 3600,
                nbf: now - 7200,
                iat: now - 7200,
            },
        )
        .expect("sign");
    let out = run_flow(
        "login",
        &[
            ("DOPPEL_BASE", node.base().to_string()),
            ("DOPPEL_TOKEN", token(DEFAULT_TENANT, Role::Operator)),
            ("DOPPEL_EXPIRED_TOKEN", expired.clone()),
        ],
    );
    assert_eq!(out["bad_code"], "invalid-token", "{out}");
    assert_eq!(out["bad_visible_login"], true, "{out}");
    assert_eq!(out["expired_code"], "token-expired", "{out}");
    assert_eq!(out["expired_title"], "The token has expired", "{out}");
    assert_eq!(out["role"], "operator", "{out}");
    assert_eq!(out["tenants"], json!(["default"]), "{out}");
    assert_eq!(out["databases"], "1", "{out}");
    assert_eq!(out["live"], "live", "{out}");
    assert_eq!(out["scanned"], json!(["o-1", "o-2"]), "{out}");
    assert_eq!(out["by_alt"], json!(["o-1"]), "{out}");
    assert_eq!(out["history_kinds"], json!(["update", "insert"]), "{out}");
    for when in out["history_when"].as_array().unwrap() {
        let when = when.as_str().unwrap();
        // 2026-12-06 04:46:01.999
        let shape: String = when
            .chars()
            .map(|c| if c.is_ascii_digit() { '9' } else { c })
            .collect();
        assert_eq!(shape, "9999-99-99 99:99:99.999", "{out}");
    }
    assert_eq!(out["missing_note"], "key o-404", "{out}");
    assert_eq!(out["missing_code"], "not-found", "{out}");
    // The server agrees: the expired token is refused, the good one reads the same keys.
    node.with_token(&expired)
        .get("/v1/whoami")
        .expect_problem(401, "token-expired");
    let who = node.with_token(&token(DEFAULT_TENANT, Role::Operator));
    let who = who.get("/v1/whoami");
    assert_eq!(who.ok()["may"]["operate"], true);
    assert_eq!(who.ok()["may"]["write"], false);
}

fn two_nodes_with_link(extra: Value) -> (Node, Node, String) {
    let a = Node::start();
    let b = Node::start();
    seeded_shop(&a);
    let id = create_link(&a.client(), "shop", &b, "shop", extra);
    wait_link_state(&a.client(), &id, "streaming", Duration::from_secs(30));
    (a, b, id)
}

#[test]
fn overview_shows_the_lag_change_live() {
    let (a, b, id) = two_nodes_with_link(json!({}));
    let out = run_flow(
        "overview",
        &[
            ("DOPPEL_BASE", a.base().to_string()),
            ("DOPPEL_TOKEN", token(DEFAULT_TENANT, Role::Admin)),
            ("DOPPEL_LINK", id.clone()),
        ],
    );
    assert_eq!(out["lag_before"], "0", "{out}");
    let paused: u64 = out["lag_paused"]
        .as_str()
        .unwrap()
        .replace(',', "")
        .parse()
        .unwrap();
    assert!(paused >= 25, "{out}");
    // The lag in time told the truth while paused: it passed a second and kept growing,
    // and the API and the metrics say as much.
    let ms = |k: &str| out[k].as_u64().unwrap_or_else(|| panic!("{k}: {out}"));
    assert!(ms("lag_ms_paused") >= 1000, "{out}");
    assert!(ms("lag_ms_later") > ms("lag_ms_paused"), "{out}");
    assert!(ms("api_lag_ms") >= ms("lag_ms_paused"), "{out}");
    assert!(ms("metrics_lag_ms") >= ms("lag_ms_paused"), "{out}");
    assert_eq!(out["lag_resumed"], "0", "{out}");
    assert_eq!(out["lag_ms_resumed"], 0, "{out}");
    assert_eq!(
        out["reloads"], 0,
        "the figures changed without a reload: {out}"
    );
    assert_eq!(
        out["phone_overflow"], false,
        "no sideways scrolling at phone width: {out}"
    );
    // The server: resumed, caught up, the replica holds the writes made while paused.
    let status = link_status(&a.client(), &id);
    assert_eq!(status["paused"], false, "{status}");
    wait_identical(
        &a.db(DEFAULT_TENANT, "shop"),
        &b.db(DEFAULT_TENANT, "shop"),
        Duration::from_secs(30),
    );
    assert!(b
        .db(DEFAULT_TENANT, "shop")
        .data("orders", "p-24")
        .is_some());
}

#[test]
fn a_two_node_link_built_in_the_console_streams() {
    let a = Node::start();
    let b = Node::start();
    seeded_shop(&a);
    let out = run_flow(
        "create-link",
        &[
            ("DOPPEL_BASE", a.base().to_string()),
            ("DOPPEL_TOKEN", token(DEFAULT_TENANT, Role::Operator)),
            ("DOPPEL_TARGET", b.base().to_string()),
        ],
    );
    let id = out["id"].as_str().expect("the link's id").to_string();
    assert_eq!(out["state"], "streaming", "{out}");
    assert_eq!(out["charts"], 3, "{out}");
    assert_eq!(out["hash"], format!("#/links?id={id}"), "{out}");
    let link = link_status(&a.client(), &id);
    assert_eq!(link["status"]["state"], "streaming", "{link}");
    assert_eq!(link["target"]["url"], b.base(), "{link}");
    assert_eq!(link["target"]["database"], "shop-copy", "{link}");
    assert_eq!(link["mode"], "async", "{link}");
    assert_eq!(link["apply"], "mirror", "{link}");
    wait_identical(
        &a.db(DEFAULT_TENANT, "shop"),
        &b.db(DEFAULT_TENANT, "shop-copy"),
        Duration::from_secs(30),
    );
}

#[test]
fn a_plugin_is_uploaded_dry_run_and_swapped_onto_a_logical_link() {
    let (a, b, id) = two_nodes_with_link(json!({"apply": "logical"}));
    let wasm = tempfile::Builder::new()
        .suffix(".wasm")
        .tempfile()
        .expect("temp file");
    std::fs::write(wasm.path(), doppel_server::plugins::builtin::PREFIX_FILTER).expect("write");
    let resolver = tempfile::Builder::new()
        .suffix(".wasm")
        .tempfile()
        .expect("temp file");
    std::fs::write(
        resolver.path(),
        doppel_server::plugins::builtin::LWW_RESOLVER,
    )
    .expect("write");
    let out = run_flow(
        "plugins",
        &[
            ("DOPPEL_BASE", a.base().to_string()),
            ("DOPPEL_TOKEN", token(DEFAULT_TENANT, Role::Operator)),
            ("DOPPEL_LINK", id.clone()),
            ("DOPPEL_WASM", wasm.path().display().to_string()),
            (
                "DOPPEL_RESOLVER_WASM",
                resolver.path().display().to_string(),
            ),
        ],
    );
    assert!(
        out["title"].as_str().unwrap().starts_with("eu-only@1.0.0"),
        "{out}"
    );
    assert!(
        out["exports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().contains("filter")),
        "{out}"
    );
    assert_eq!(
        out["fields"],
        json!(["files:array-string", "prefixes:array-string"]),
        "{out}"
    );
    assert_eq!(out["config"], r#"{"prefixes":["eu-"]}"#, "{out}");
    let sampled: Vec<String> = a
        .db(DEFAULT_TENANT, "shop")
        .contents("orders")
        .iter()
        .take(10)
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(out["sampled"], json!(sampled), "{out}");
    assert_eq!(out["kept"], json!(["kept", "dropped", "kept"]), "{out}");
    assert!(
        out["summary"].as_str().unwrap().starts_with("2 of 3 kept"),
        "{out}"
    );
    assert!(
        out["toast"].as_str().unwrap().contains("eu-only@1.0.0"),
        "{out}"
    );
    // The resolver tester's sample, merged: u1's fields come from the side that changed
    // each (against its base); u2 has no base and both changed tier, so the later
    // writer (local, at 30) keeps its version.
    assert_eq!(
        out["resolved"],
        json!([
            ["decision-merged", r#"{"city":"Bergen","name":"Anna"}"#],
            ["decision-local", r#"{"tier":1}"#]
        ]),
        "{out}"
    );
    assert!(
        out["resolved_summary"]
            .as_str()
            .unwrap()
            .starts_with("2 conflicts, 1 merged · 0 errors"),
        "{out}"
    );
    // A resolver is no chain stage: the tester offers no swap onto a link.
    assert_eq!(out["resolver_swap"], false, "{out}");
    // The server: the plugin is registered and the link runs it.
    let plugin = a.get("/v1/tenants/default/plugins/eu-only/1.0.0");
    assert_eq!(plugin.ok()["role"], "filter");
    let link = link_status(&a.client(), &id);
    assert_eq!(
        link["stages"],
        json!([{"plugin": "eu-only@1.0.0", "config": {"prefixes": ["eu-"]}}]),
        "{link}"
    );
    // And it filters: us-9 (written first) never arrives, eu-9 does.
    let source = a.db(DEFAULT_TENANT, "shop");
    source
        .put("orders", "us-9", json!({"customer": "cy"}), json!(9))
        .ok();
    source
        .put("orders", "eu-9", json!({"customer": "di"}), json!(9))
        .ok();
    let replica = b.db(DEFAULT_TENANT, "shop");
    assert!(
        wait_until(deadline_in(Duration::from_secs(30)), || replica
            .data("orders", "eu-9")
            .is_some()),
        "eu-9 reached the replica: {}",
        link_status(&a.client(), &id)
    );
    assert!(replica.data("orders", "us-9").is_none());
}

#[test]
fn a_built_in_filter_is_found_dry_run_and_put_on_a_live_link_without_an_upload() {
    let (a, b, id) = two_nodes_with_link(json!({"apply": "logical"}));
    let version = env!("CARGO_PKG_VERSION");
    let out = run_flow(
        "builtin-plugins",
        &[
            ("DOPPEL_BASE", a.base().to_string()),
            ("DOPPEL_TOKEN", token(DEFAULT_TENANT, Role::Operator)),
            ("DOPPEL_LINK", id.clone()),
            ("DOPPEL_VERSION", version.to_string()),
        ],
    );
    let mut expected: Vec<String> = doppel_server::plugins::builtin::BUILTIN_PLUGINS
        .iter()
        .map(|(name, ..)| {
            let version = doppel_server::plugins::registry::builtin_version(name).unwrap();
            format!("{name}@{version}")
        })
        .collect();
    expected.sort();
    assert_eq!(out["builtin"], json!(expected), "{out}");
    assert!(
        out["title"]
            .as_str()
            .unwrap()
            .contains(&format!("prefix-filter@{version}")),
        "{out}"
    );
    assert!(
        out["note"].as_str().unwrap().contains("without an upload"),
        "{out}"
    );
    assert_eq!(out["kept"], json!(["kept", "dropped", "kept"]), "{out}");
    assert!(
        out["summary"].as_str().unwrap().starts_with("2 of 3 kept"),
        "{out}"
    );
    // The server: nothing was uploaded, and the link runs the built-in.
    let link = link_status(&a.client(), &id);
    assert_eq!(
        link["stages"],
        json!([{"plugin": format!("prefix-filter@{version}"), "config": {"prefixes": ["eu-"]}}]),
        "{link}"
    );
    let usage = a.get("/v1/tenants/default/usage");
    assert_eq!(usage.ok()["plugins"]["used"], 0, "{}", usage.ok());
    // And it filters: us-9 (written first) never arrives, eu-9 does.
    let source = a.db(DEFAULT_TENANT, "shop");
    source
        .put("orders", "us-9", json!({"customer": "cy"}), json!(9))
        .ok();
    source
        .put("orders", "eu-9", json!({"customer": "di"}), json!(9))
        .ok();
    let replica = b.db(DEFAULT_TENANT, "shop");
    assert!(
        wait_until(deadline_in(Duration::from_secs(30)), || replica
            .data("orders", "eu-9")
            .is_some()),
        "eu-9 reached the replica: {}",
        link_status(&a.client(), &id)
    );
    assert!(replica.data("orders", "us-9").is_none());
    // What the filter dropped is not lag: the link catches up, in entries and in time.
    assert!(
        wait_until(deadline_in(Duration::from_secs(30)), || {
            let s = link_status(&a.client(), &id);
            s["status"]["lag_entries"] == 0 && s["status"]["lag_ms"] == 0
        }),
        "the link caught up: {}",
        link_status(&a.client(), &id)
    );
}

#[test]
fn a_reader_sees_no_action_it_may_not_take() {
    let (a, _b, id) = two_nodes_with_link(json!({}));
    let reader = token(DEFAULT_TENANT, Role::Reader);
    let out = run_flow(
        "reader",
        &[
            ("DOPPEL_BASE", a.base().to_string()),
            ("DOPPEL_TOKEN", reader.clone()),
            ("DOPPEL_LINK", id.clone()),
        ],
    );
    assert_eq!(out["role"], "reader", "{out}");
    assert_eq!(out["link_rows"], 1, "{out}");
    assert_eq!(out["action_buttons"], json!([]), "{out}");
    assert_eq!(out["create_form"], 0, "{out}");
    assert_eq!(out["upload_form"], 0, "{out}");
    assert_eq!(out["verify"], 0, "no verify or repair for a reader: {out}");
    // The server refuses the hidden actions anyway.
    let r = a.with_token(&reader);
    r.post_empty(&format!("/v1/tenants/default/links/{id}/pause"))
        .expect_problem(403, "forbidden");
    r.delete(&format!("/v1/tenants/default/links/{id}"))
        .expect_problem(403, "forbidden");
    r.post_empty(&format!("/v1/tenants/default/links/{id}/verify"))
        .expect_problem(403, "forbidden");
    r.post(
        &format!("/v1/tenants/default/links/{id}/repair"),
        &json!({}),
    )
    .expect_problem(403, "forbidden");
    assert_eq!(link_status(&a.client(), &id)["paused"], false);
}

fn topologies() -> String {
    format!("/v1/tenants/{DEFAULT_TENANT}/topologies")
}

#[test]
fn a_two_node_link_built_in_the_topology_view_streams() {
    let a = Node::start();
    let b = Node::start();
    let source = seeded_shop(&a);
    let out = run_flow(
        "topology-build",
        &[
            ("DOPPEL_BASE", a.base().to_string()),
            ("DOPPEL_TOKEN", token(DEFAULT_TENANT, Role::Operator)),
            ("DOPPEL_TARGET", b.base().to_string()),
        ],
    );
    // The page: the graph drawn from the editor, the plan before Apply, then the link
    // streaming in the graph and the live table.
    assert_eq!(out["nodes"], json!(["a", "b"]), "{out}");
    assert_eq!(out["legend"], "a/shop -> b/shop", "{out}");
    assert_eq!(out["apply_before_preview"], false, "{out}");
    assert_eq!(
        out["plan"],
        json!([["create", "a/shop -> b/shop"]]),
        "{out}"
    );
    assert_eq!(out["apply_after_preview"], true, "{out}");
    assert_eq!(
        out["applied"],
        json!([["create", "a/shop -> b/shop"]]),
        "{out}"
    );
    assert_eq!(out["title"], "Topology pair", "{out}");
    assert_eq!(out["hash"], "#/topology?name=pair", "{out}");
    assert!(
        out["link_class"].as_str().unwrap().contains("st-streaming"),
        "{out}"
    );
    assert_eq!(out["live_state"], "streaming", "{out}");
    assert_eq!(
        out["failover_buttons"],
        json!(["Fail over to b/shop"]),
        "{out}"
    );
    // The server: the document as entered, its link streaming, the replica identical.
    let shown = a.get(&format!("{}/pair", topologies())).ok().clone();
    assert_eq!(
        shown["document"]["nodes"],
        json!({"a": {"url": a.base()}, "b": {"url": b.base()}}),
        "{shown}"
    );
    assert_eq!(shown["document"]["links"][0]["mode"], "async", "{shown}");
    assert_eq!(shown["document"]["links"][0]["apply"], "mirror", "{shown}");
    assert_eq!(shown["links"][0]["status"]["state"], "streaming", "{shown}");
    // The snapshot taken from Operations is stored.
    let serial: u64 = out["snapshot_serial"].as_str().unwrap().parse().unwrap();
    let snapshots = source.snapshots().ok().clone();
    assert!(
        snapshots
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["serial"] == serial),
        "{snapshots}"
    );
    // The fail over from the page: b was promoted at the serial it showed, the plan
    // re-pointed the link, and a follows b now, identical to it.
    let promoted = b.db(DEFAULT_TENANT, "shop");
    let last = promoted.info().ok()["last_serial"].clone();
    assert_eq!(out["failover_serial"], format!("serial {last}"), "{out}");
    assert!(
        out["failover_took"].as_str().unwrap().ends_with(" µs"),
        "{out}"
    );
    assert_eq!(
        out["failover_plan"],
        json!([
            ["delete", "a/shop -> b/shop"],
            ["create", "b/shop -> a/shop"]
        ]),
        "{out}"
    );
    assert!(
        out["after_failover"][0]
            .as_str()
            .unwrap()
            .starts_with("link b/shop -> a/shop"),
        "{out}"
    );
    // The page shows the failover record: the promotion's serial, and the old primary
    // as a follower (its log a prefix of b's: nothing to discard).
    assert_eq!(out["record_serial"], last.to_string(), "{out}");
    assert_eq!(out["record_discarded"], "0", "{out}");
    let shown = a.get(&format!("{}/pair", topologies())).ok().clone();
    assert_eq!(
        shown["document"]["links"][0]["from"]["node"], "b",
        "{shown}"
    );
    promoted
        .put("orders", "after", json!({}), json!({"total": 9}))
        .ok();
    wait_identical(&promoted, &source, Duration::from_secs(30));
    source
        .put("orders", "x", json!({}), json!(1))
        .expect_problem(409, "read-only-replica");
}

#[test]
fn the_live_tables_follow_an_apply_that_replaces_a_link_without_a_reload() {
    let a = Node::start();
    let b = Node::start();
    seeded_shop(&a);
    let admin = a.client();
    admin
        .post(
            &topologies(),
            &json!({"name": "pair", "nodes": {"a": {"url": a.base()}, "b": {"url": b.base()}},
                    "links": [{"from": {"node": "a", "database": "shop"}, "to": {"node": "b", "database": "shop"}}]}),
        )
        .expect(200);
    let out = run_flow(
        "topology-replace",
        &[
            ("DOPPEL_BASE", a.base().to_string()),
            ("DOPPEL_TOKEN", token(DEFAULT_TENANT, Role::Operator)),
            ("DOPPEL_TARGET", b.base().to_string()),
        ],
    );
    let id = |k: &str| {
        out[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k}: {out}"))
            .to_string()
    };
    assert_eq!(out["first_mode"], "async · mirror", "{out}");
    assert_eq!(out["plan"], json!(["replace"]), "{out}");
    // The topology's table shows the new link, once, in its new mode.
    assert_ne!(id("second_id"), id("first_id"), "{out}");
    assert_eq!(out["second_id_cell"], id("second_id"), "{out}");
    assert_eq!(out["second_mode"], "sync · mirror", "{out}");
    assert_eq!(out["topology_rows"], 1, "{out}");
    // The Links page followed the API's Apply: only the newest link, async again.
    assert_eq!(out["links_before"], json!([id("second_id")]), "{out}");
    assert_eq!(out["api_plan"], json!(["replace"]), "{out}");
    let last = out["links_after"][0].as_str().unwrap().to_string();
    assert_ne!(last, id("second_id"), "{out}");
    assert_eq!(out["links_after_mode"], "async · mirror", "{out}");
    assert_eq!(out["reloads"], 0, "{out}");
    // The server agrees: one link, the last one, async and streaming.
    let links = admin.get("/v1/tenants/default/links");
    let links = links.ok().as_array().unwrap().clone();
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(links[0]["id"], last.as_str());
    assert_eq!(links[0]["mode"], "async");
}

#[test]
fn names_replace_ids_and_the_console_fits_a_phone() {
    let a = Node::start();
    let b = Node::start();
    let c = Node::start();
    seeded_shop(&a);
    let admin = a.client();
    admin
        .post(
            &topologies(),
            &json!({"name": "pair",
                    "nodes": {"a": {"url": a.base()}, "b": {"url": b.base()}, "c": {"url": c.base()}},
                    "links": [
                        {"from": {"node": "a", "database": "shop"}, "to": {"node": "b", "database": "shop"}},
                        {"from": {"node": "a", "database": "shop"}, "to": {"node": "c", "database": "shop"}}]}),
        )
        .expect(200);
    let shown = admin.get(&format!("{}/pair", topologies()));
    let link = shown.ok()["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["link"] == "a/shop -> b/shop")
        .and_then(|l| l["id"].as_str())
        .expect("the link's id")
        .to_string();
    let out = run_flow(
        "names-phone",
        &[
            ("DOPPEL_BASE", a.base().to_string()),
            ("DOPPEL_TOKEN", token(DEFAULT_TENANT, Role::Operator)),
            ("DOPPEL_LINK", link.clone()),
        ],
    );
    // Names, as the topology gives them.
    assert_eq!(out["self"], "a", "{out}");
    assert_eq!(out["peers"], json!(["b", "c"]), "{out}");
    assert_eq!(out["label"], "a/shop → b/shop", "{out}");
    assert_eq!(out["managed"], "topology pair", "{out}");
    let warning = out["delete_warning"].as_str().unwrap();
    assert!(
        warning.contains("a/shop → b/shop") && warning.contains("belongs to topology pair"),
        "{out}"
    );
    assert!(
        out["detail_managed"].as_str().unwrap().contains("pair"),
        "{out}"
    );
    // The usage card: a write rate, and the memory and disk the tenant uses (non-zero:
    // the shop database holds records).
    let usage = &out["usage"];
    assert!(
        usage["ops"].as_str().unwrap().parse::<f64>().is_ok(),
        "{out}"
    );
    for k in ["memory", "disk"] {
        let v = usage[k].as_str().unwrap();
        assert!(v.ends_with('B') && !v.starts_with("0 "), "{k}: {out}");
    }
    // CPU as a share of a core, and the log's backlog in bytes (0 B once flushed).
    assert!(usage["cpu"].as_str().unwrap().ends_with('%'), "{out}");
    assert!(usage["backlog"].as_str().unwrap().ends_with('B'), "{out}");
    assert!(
        out["detail_title"]
            .as_str()
            .unwrap()
            .contains("a/shop → b/shop"),
        "{out}"
    );
    // At 390 px: a folded header, state and lag in view, the graph's three nodes inside
    // the screen, the topologies' Delete reachable, nothing scrolling sideways.
    let phone = &out["phone"];
    assert!(phone["header_px"].as_u64().unwrap() <= 844 / 8, "{out}");
    assert_eq!(phone["nav_visible"], false, "{out}");
    assert_eq!(
        phone["state_lag_in_view"],
        json!([true, true, true]),
        "{out}"
    );
    assert_eq!(phone["overflow"], false, "{out}");
    assert_eq!(phone["menu_opens"], true, "{out}");
    assert_eq!(phone["delete_in_view"], true, "{out}");
    assert_eq!(phone["graph_nodes"], json!(["a", "b", "c"]), "{out}");
    assert_eq!(
        phone["graph_nodes_in_view"],
        json!([true, true, true]),
        "{out}"
    );
    assert_eq!(phone["live_state_in_view"], json!([true, true]), "{out}");
    assert_eq!(phone["topology_overflow"], false, "{out}");
    // The warning was heeded: the link is still there.
    link_status(&admin, &link);
}

#[test]
fn a_refused_topology_shows_each_error_on_the_link_it_concerns() {
    let a = Node::start();
    let b = Node::start();
    seeded_shop(&a);
    let out = run_flow(
        "topology-invalid",
        &[
            ("DOPPEL_BASE", a.base().to_string()),
            ("DOPPEL_TOKEN", token(DEFAULT_TENANT, Role::Operator)),
            ("DOPPEL_TARGET", b.base().to_string()),
        ],
    );
    // The server's own answer to the document the page built.
    let end = |n: &str| json!({"node": n, "database": "shop"});
    let link = |f: &str, t: &str| {
        json!({"from": end(f), "to": end(t), "mode": "async", "apply": "mirror",
               "stages": [], "on_error": "stop", "b_log": true})
    };
    let doc = json!({"name": "bad",
        "nodes": {"a": {"url": a.base()}, "b": {"url": b.base()}},
        "links": [link("a", "b"), link("b", "a"), link("a", "gone")]});
    let refused = a
        .post(&format!("{}?dry_run=true", topologies()), &doc)
        .expect_problem(422, "topology-invalid")
        .clone();
    let errors = refused["errors"].as_array().unwrap();
    let at = |path: &str| -> String {
        let e = errors
            .iter()
            .find(|e| e["path"] == path)
            .unwrap_or_else(|| panic!("no error at {path}: {refused}"));
        format!("⚠ {path} {}", e["message"].as_str().unwrap())
    };
    assert_eq!(out["code"], "topology-invalid", "{out}");
    assert_eq!(
        out["summary"],
        json!(["links[2].to.node", "links[1]"]),
        "{out}"
    );
    assert_eq!(out["row0"], json!([]), "{out}");
    assert_eq!(out["row1"], json!([["links[1]", at("links[1]")]]), "{out}");
    assert_eq!(
        out["row2"],
        json!([["links[2].to.node", at("links[2].to.node")]]),
        "{out}"
    );
    assert!(at("links[1]").contains("cycle"), "{refused}");
    assert!(
        at("links[2].to.node").contains("unknown node 'gone'"),
        "{refused}"
    );
    assert_eq!(out["invalid_rows"], json!(["1", "2"]), "{out}");
    assert_eq!(out["invalid_fields"], json!(["2:to.node"]), "{out}");
    assert_eq!(out["invalid_arrows"], json!(["1", "2"]), "{out}");
    assert!(
        out["arrow_titles"][0].as_str().unwrap().contains("cycle"),
        "{out}"
    );
    assert_eq!(out["unknown_nodes"], json!(["gone"]), "{out}");
    assert_eq!(out["apply_visible"], false, "{out}");
    // Nothing changed anywhere.
    assert_eq!(a.get(&topologies()).ok(), &json!([]));
    for node in [&a, &b] {
        assert_eq!(
            node.get(&format!("/v1/tenants/{DEFAULT_TENANT}/links"))
                .ok(),
            &json!([])
        );
    }
}

/// Nodes a and b with topology `q`: a logical link a/shop → b/shop whose `rename` stage
/// (as `nest@1`) quarantines the record `bad` (`{"a": 1, "s": "x"}`: "s" is not an
/// object); `good` went through. Answers the link's id.
fn quarantining_topology() -> (Node, Node, String) {
    let a = Node::start();
    let b = Node::start();
    upload_plugin(
        &a,
        "nest",
        "transform",
        doppel_server::plugins::builtin::RENAME,
    );
    let source = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    let doc = json!({"name": "q", "nodes": {"a": {"url": a.base()}, "b": {"url": b.base()}},
        "links": [{"from": {"node": "a", "database": "shop"}, "to": {"node": "b", "database": "shop"},
                   "apply": "logical", "on_error": "quarantine",
                   "stages": [{"plugin": "nest@1", "config": {"default": {"orders": {"fields": {"a": "s.a"}}}}}]}]});
    a.post(&topologies(), &doc).ok();
    let id = a.get(&format!("{}/q", topologies())).ok()["links"][0]["id"]
        .as_str()
        .expect("the link's id")
        .to_string();
    source
        .put(
            "orders",
            "bad",
            json!({"customer": "ann"}),
            json!({"a": 1, "s": "x"}),
        )
        .ok();
    source
        .put("orders", "good", json!({}), json!({"a": 2}))
        .ok();
    let replica = b.db(DEFAULT_TENANT, "shop");
    assert!(
        wait_until(deadline_in(Duration::from_secs(30)), || replica
            .data("orders", "good")
            .is_some()),
        "good reached the replica: {}",
        link_status(&a.client(), &id)
    );
    assert_eq!(dead_letters(&a, &id).len(), 1);
    (a, b, id)
}

fn dead_letters(node: &Node, link: &str) -> Vec<Value> {
    node.get(&format!(
        "/v1/tenants/{DEFAULT_TENANT}/links/{link}/dead-letters"
    ))
    .ok()
    .as_array()
    .unwrap()
    .clone()
}

#[test]
fn a_dead_letter_edited_in_the_console_is_re_driven_to_the_replica() {
    let (a, b, id) = quarantining_topology();
    let out = run_flow(
        "redrive",
        &[
            ("DOPPEL_BASE", a.base().to_string()),
            ("DOPPEL_TOKEN", token(DEFAULT_TENANT, Role::Operator)),
            ("DOPPEL_LINK", id.clone()),
        ],
    );
    assert!(
        out["error"].as_str().unwrap().contains("not an object"),
        "{out}"
    );
    // As stored: refused again, on its row, which stays.
    assert_eq!(out["rejected_code"], "redrive-rejected", "{out}");
    assert!(
        out["rejected_detail"].as_str().unwrap().contains("nest"),
        "{out}"
    );
    assert_eq!(out["rows_after_rejection"], 1, "{out}");
    // The editor refuses what the server would.
    assert!(
        out["broken_message"]
            .as_str()
            .unwrap()
            .starts_with("Not re-drivable: not JSON"),
        "{out}"
    );
    assert_eq!(out["broken_send_disabled"], true, "{out}");
    assert!(
        out["bad_op_message"].as_str().unwrap().contains("\"op\""),
        "{out}"
    );
    assert_eq!(out["edited_send_disabled"], false, "{out}");
    assert_eq!(out["outcome"], "applied", "{out}");
    assert!(
        out["outcome_text"]
            .as_str()
            .unwrap()
            .contains("orders/bad is on the replica"),
        "{out}"
    );
    assert_eq!(out["rows_after"], 0, "{out}");
    // The server: the replica holds the transformed edit, the dead letter is gone.
    let replica = b.db(DEFAULT_TENANT, "shop");
    assert_eq!(replica.data("orders", "bad"), Some(json!({"s": {"a": 7}})));
    assert_eq!(
        replica.alt_keys("orders", "customer", "ann"),
        vec!["bad".to_string()]
    );
    assert!(dead_letters(&a, &id).is_empty());
    assert_eq!(link_status(&a.client(), &id)["status"]["quarantined"], 0);
}

#[test]
fn a_reader_sees_no_topology_apply_fail_over_or_re_drive() {
    let (a, _b, id) = quarantining_topology();
    let reader = token(DEFAULT_TENANT, Role::Reader);
    let out = run_flow(
        "reader-topology",
        &[
            ("DOPPEL_BASE", a.base().to_string()),
            ("DOPPEL_TOKEN", reader.clone()),
            ("DOPPEL_LINK", id.clone()),
        ],
    );
    assert_eq!(out["role"], "reader", "{out}");
    assert_eq!(out["graph_links"], 1, "{out}");
    assert_eq!(out["live_rows"], 1, "{out}");
    for (sel, n) in out["topology_buttons"].as_object().unwrap() {
        assert_eq!(n, 0, "a reader sees {sel}: {out}");
    }
    assert_eq!(out["dead_letters"], 1, "{out}");
    assert_eq!(out["dead_letter_buttons"], 0, "{out}");
    assert_eq!(out["ops_buttons"], json!(["Snapshots"]), "{out}");
    assert_eq!(out["restore"], 0, "no restore for a reader: {out}");
    // The server refuses those actions anyway, and nothing changed.
    let r = a.with_token(&reader);
    let shown = a.get(&format!("{}/q", topologies())).ok().clone();
    r.post(&topologies(), &shown["document"])
        .expect_problem(403, "forbidden");
    r.post(
        &format!("{}?dry_run=true", topologies()),
        &shown["document"],
    )
    .expect_problem(403, "forbidden");
    r.post(
        &format!("{}/q/failover", topologies()),
        &json!({"node": "b", "database": "shop"}),
    )
    .expect_problem(403, "forbidden");
    let letter = dead_letters(&a, &id)[0]["id"].clone();
    r.post(
        &format!("/v1/tenants/{DEFAULT_TENANT}/links/{id}/dead-letters/{letter}/redrive"),
        &json!({}),
    )
    .expect_problem(403, "forbidden");
    r.post_empty(&format!(
        "/v1/tenants/{DEFAULT_TENANT}/databases/shop/snapshots"
    ))
    .expect_problem(403, "forbidden");
    r.post(
        &format!("/v1/tenants/{DEFAULT_TENANT}/databases/shop/restore"),
        &json!({"serial": 0, "dry_run": true}),
    )
    .expect_problem(403, "forbidden");
    assert_eq!(dead_letters(&a, &id).len(), 1);
    assert_eq!(
        link_status(&a.client(), &id)["status"]["state"],
        "streaming"
    );
}

fn shop_contents(db: &Db) -> Value {
    json!({"orders": db.contents("orders"), "lines": db.contents("lines")})
}

fn last_serial(db: &Db) -> u64 {
    db.info().ok()["last_serial"].as_u64().expect("last_serial")
}

/// The figure a page showed, as a number ("1,234" → 1234).
fn shown(v: &Value) -> u64 {
    v.as_str()
        .unwrap_or_else(|| panic!("not a shown figure: {v}"))
        .replace(',', "")
        .parse()
        .unwrap_or_else(|e| panic!("not a number: {v}: {e}"))
}

#[test]
fn a_point_in_time_restore_from_operations_brings_back_the_earlier_contents() {
    let node = Node::start();
    let db = seeded_shop(&node);
    // Before the retained log: two snapshots keep the A log from the older one on.
    let early = last_serial(&db);
    let orders: Vec<Value> = (10..40)
        .map(|i| {
            op::upsert_alt(
                "orders",
                &format!("o-{i}"),
                json!({"customer": format!("c{}", i % 3)}),
                json!({"total": i}),
            )
        })
        .chain((0..6).map(|i| op::upsert("lines", &format!("l-{i}"), json!({"n": i}))))
        .collect();
    db.batch(json!(orders)).ok();
    let point = db.snapshot().expect(201)["serial"].as_u64().unwrap();
    assert_eq!(point, last_serial(&db));
    let at_point = shop_contents(&db);
    // Afterwards: 10 orders and a line updated, 5 orders deleted, 3 inserted.
    let mut later: Vec<Value> = (10..20)
        .map(|i| {
            op::upsert_alt(
                "orders",
                &format!("o-{i}"),
                json!({"customer": "zed"}),
                json!("v2"),
            )
        })
        .collect();
    later.extend((20..25).map(|i| op::delete("orders", &format!("o-{i}"))));
    later.extend((1..4).map(|i| op::upsert("orders", &format!("n-{i}"), json!(i))));
    later.push(op::upsert("lines", "l-0", json!("changed")));
    db.batch(json!(later)).ok();
    db.snapshot().expect(201);
    db.put("orders", "o-30", json!({"customer": "amy"}), json!("last"))
        .ok();
    let before = last_serial(&db);
    assert_ne!(shop_contents(&db), at_point);
    // What the server previews for that point (a dry run changes nothing).
    let restore = db.path("/restore");
    let preview = db
        .client()
        .post(&restore, &json!({"serial": point, "dry_run": true}))
        .ok()
        .clone();
    assert_eq!(
        preview["records"],
        json!({"inserted": 5, "updated": 12, "deleted": 3}),
        "{preview}"
    );

    let out = run_flow(
        "restore",
        &[
            ("DOPPEL_BASE", node.base().to_string()),
            ("DOPPEL_TOKEN", token(DEFAULT_TENANT, Role::Operator)),
            ("DOPPEL_EARLY", early.to_string()),
        ],
    );
    // The recent updates, newest first; picking the newest (by serial, then by its
    // time) previews a restore that changes nothing.
    assert_eq!(out["focused"], "restore-serial", "{out}");
    let recent: Vec<u64> = out["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    assert_eq!(recent[0], before, "{out}");
    assert!(recent.windows(2).all(|w| w[0] > w[1]), "{out}");
    assert_eq!(out["picked_serial"], before.to_string(), "{out}");
    assert!(!out["picked_time"].as_str().unwrap().is_empty(), "{out}");
    let nothing = json!({"inserted": "0", "updated": "0", "deleted": "0"});
    assert_eq!(
        out["newest_preview"]["serial"],
        format!("serial {before}"),
        "{out}"
    );
    assert_eq!(out["newest_preview"]["updates"], "0", "{out}");
    assert_eq!(out["newest_preview"]["records"], nothing, "{out}");
    assert_eq!(out["preview_gone_on_change"], true, "{out}");
    assert_eq!(out["time_visible"], true, "{out}");
    assert_eq!(
        out["time_preview_serial"],
        format!("serial {before}"),
        "{out}"
    );
    // Outside retention: the oldest reachable point is named and offered.
    assert_eq!(out["outside_code"], "outside-retention", "{out}");
    assert_eq!(out["oldest"], format!("serial {point}"), "{out}");
    assert_eq!(out["use_oldest"], format!("Use serial {point}"), "{out}");
    assert_eq!(out["serial_after_use"], point.to_string(), "{out}");
    assert_eq!(out["outside_gone"], true, "{out}");
    db.client()
        .post(&restore, &json!({"serial": early, "dry_run": true}))
        .expect_problem(422, "outside-retention");
    // The preview showed the server's own numbers and method.
    assert_eq!(out["preview"]["serial"], format!("serial {point}"), "{out}");
    assert_eq!(out["preview"]["method"], preview["method"], "{out}");
    assert_eq!(
        shown(&out["preview"]["updates"]),
        preview["updates"],
        "{out}"
    );
    assert_eq!(
        out["preview"]["records"],
        json!({"inserted": "5", "updated": "12", "deleted": "3"}),
        "{out}"
    );
    assert_eq!(out["restore_disabled_before_confirm"], true, "{out}");
    assert_eq!(out["restore_disabled_after_confirm"], false, "{out}");
    // The operation, followed to its end.
    assert_eq!(out["state"], "succeeded", "{out}");
    assert_eq!(out["phase"], "finished", "{out}");
    assert_eq!(out["done"], out["total"], "{out}");
    assert_eq!(
        out["changed"],
        json!({"inserted": "5", "updated": "12", "deleted": "3"}),
        "{out}"
    );
    assert_eq!(out["history"], json!(["succeeded"]), "{out}");
    // The server: exactly the contents at the point, the restore logged after `before`.
    assert_eq!(shop_contents(&db), at_point);
    let after = last_serial(&db);
    assert!(after > before, "the restore is logged: {after} > {before}");
    assert_eq!(
        out["written"],
        format!("serials {}–{after}", before + 1),
        "{out}"
    );
    let ops = db.client().get(&db.path("/restores")).ok()["restores"].clone();
    assert_eq!(ops.as_array().unwrap().len(), 1, "{ops}");
    assert_eq!(ops[0]["state"], "succeeded", "{ops}");
    assert_eq!(ops[0]["point"]["serial"], point, "{ops}");
    assert_eq!(ops[0]["into"], Value::Null, "{ops}");
    // Writable again.
    db.put("orders", "after", json!({"customer": "ann"}), json!(1))
        .ok();
}

#[test]
fn verify_in_the_console_finds_corrupted_blocks_and_repair_makes_the_replica_identical() {
    let a = Node::start();
    let b = Node::start();
    let source = a.create_db(DEFAULT_TENANT, shop_spec("shop"));
    let orders: Vec<Value> = (0..400)
        .map(|i| {
            op::upsert_alt(
                "orders",
                &format!("o-{i:04}"),
                json!({"customer": format!("c{}", i % 11)}),
                json!({"total": i, "note": "x".repeat(60)}),
            )
        })
        .collect();
    source.batch(json!(orders)).ok();
    source
        .put("lines", "l-1", json!({}), json!({"order": 1}))
        .ok();
    let id = create_link(&a.client(), "shop", &b, "shop", json!({}));
    wait_link_state(&a.client(), &id, "streaming", Duration::from_secs(30));
    let replica = b.db(DEFAULT_TENANT, "shop");
    wait_identical(&source, &replica, Duration::from_secs(30));
    let link = format!("/v1/tenants/{DEFAULT_TENANT}/links/{id}");
    let clean = a.post_empty(&format!("{link}/verify")).ok().clone();
    assert_eq!(clean["identical"], true, "{clean}");
    // Two blocks of orders corrupted on the replica (the test build's fault route).
    for block in [0, 2] {
        b.post(
            &format!("/v1/tenants/{DEFAULT_TENANT}/databases/shop/faults/corrupt-block"),
            &json!({"file": "orders", "block": block}),
        )
        .expect(204);
    }
    assert_ne!(replica.contents("orders"), source.contents("orders"));

    let out = run_flow(
        "verify",
        &[
            ("DOPPEL_BASE", a.base().to_string()),
            ("DOPPEL_TOKEN", token(DEFAULT_TENANT, Role::Operator)),
            ("DOPPEL_LINK", id.clone()),
        ],
    );
    assert_eq!(out["identical"], "false", "{out}");
    assert_eq!(out["count"], "2", "{out}");
    assert_eq!(out["found"], json!([["orders", [0, 2]]]), "{out}");
    assert_eq!(out["repair_all_button"], 1, "{out}");
    // One block: before both, after only block 0, which the page then shows.
    assert_eq!(out["repaired_one"], json!(["orders", 2]), "{out}");
    assert_eq!(out["one"]["repaired"], "1", "{out}");
    assert_eq!(out["one"]["before"], json!([["orders", [0, 2]]]), "{out}");
    assert_eq!(out["one"]["after"], json!([["orders", [0]]]), "{out}");
    assert_eq!(out["one"]["shown"], json!([["orders", [0]]]), "{out}");
    // The file: the last one, and the replica identical.
    assert_eq!(out["file"]["repaired"], "1", "{out}");
    assert_eq!(out["file"]["before"], json!([["orders", [0]]]), "{out}");
    assert_eq!(out["file"]["after_identical"], "true", "{out}");
    assert_eq!(out["again"], "true", "{out}");
    assert_eq!(out["repair_result_cleared"], true, "{out}");
    // The server: verify finds them identical, the replica holds the source's contents.
    let verified = a.post_empty(&format!("{link}/verify")).ok().clone();
    assert_eq!(verified["identical"], true, "{verified}");
    assert_eq!(replica.contents("orders"), source.contents("orders"));
    assert_eq!(replica.contents("lines"), source.contents("lines"));
    assert_eq!(
        replica.alt_keys("orders", "customer", "c3"),
        source.alt_keys("orders", "customer", "c3")
    );
}

#[test]
fn a_replica_is_suspended_released_and_promoted_from_operations() {
    let (a, b, id) = two_nodes_with_link(json!({}));
    let out = run_flow(
        "replica-ops",
        &[
            ("DOPPEL_BASE", b.base().to_string()),
            ("DOPPEL_SOURCE", a.base().to_string()),
            ("DOPPEL_TOKEN", token(DEFAULT_TENANT, Role::Operator)),
            ("DOPPEL_WRITE_TOKEN", token(DEFAULT_TENANT, Role::Admin)),
            ("DOPPEL_LINK", id.clone()),
        ],
    );
    assert_eq!(out["release_visible_before"], false, "{out}");
    let label = out["label"].as_str().unwrap();
    assert!(
        label.ends_with("/shop → this node/shop") && label.contains('…'),
        "{out}"
    );
    // Suspended: the page and the server say so, and a write to the source was stored,
    // not applied.
    assert_eq!(out["suspended_text"], "Replica shop suspended", "{out}");
    assert_eq!(out["server_suspended"], true, "{out}");
    assert_eq!(out["release_visible"], true, "{out}");
    assert_eq!(out["suspend_visible"], false, "{out}");
    assert!(shown(&out["spooled"]) >= 1, "{out}");
    assert_eq!(out["frozen_status"], 404, "{out}");
    // Released: it applied what it stored.
    assert_eq!(out["released_text"], "Replica shop released", "{out}");
    assert_eq!(out["server_suspended_after"], false, "{out}");
    assert_eq!(out["applied_status"], 200, "{out}");
    // Promoted: a primary now.
    assert!(
        out["promoted"]
            .as_str()
            .unwrap()
            .starts_with("shop is a primary"),
        "{out}"
    );
    assert_eq!(out["role_after"], "primary", "{out}");
    assert_eq!(out["promote_buttons_after"], 0, "{out}");
    // The server: no replica left on b, and b's shop takes writes, holding the source's
    // records including the one written while it was suspended.
    let replicas = b
        .get(&format!("/v1/tenants/{DEFAULT_TENANT}/replicas"))
        .ok()
        .clone();
    assert_eq!(replicas, json!([]), "{replicas}");
    let promoted = b.db(DEFAULT_TENANT, "shop");
    assert_eq!(
        promoted.data("orders", "while-suspended"),
        Some(json!({"total": 5}))
    );
    promoted
        .put("orders", "on-b", json!({"customer": "bo"}), json!(1))
        .ok();
    assert_eq!(promoted.data("orders", "on-b"), Some(json!(1)));
    assert_eq!(
        promoted.contents("orders").len(),
        a.db(DEFAULT_TENANT, "shop").contents("orders").len() + 1
    );
}

/// The live stream, over plain HTTP: snapshots of links and databases as SSE, precise
/// errors for bad parameters, tenant isolation, and an open stream does not hold up a
/// graceful shutdown.
#[test]
fn the_event_stream_sends_snapshots_and_ends_on_shutdown() {
    use std::io::{BufRead, BufReader, Write};

    let mut node = Node::start();
    seeded_shop(&node);
    let path = "/v1/tenants/default/events?interval_ms=250&limit=2";
    let r = node.get(path);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.media_type().as_deref(), Some("text/event-stream"), "{r}");
    let snapshots: Vec<Value> = r
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).expect("snapshot JSON"))
        .collect();
    assert_eq!(snapshots.len(), 2, "{}", r.text);
    assert_eq!(r.text.matches("event: snapshot").count(), 2, "{}", r.text);
    let first = &snapshots[0];
    assert_eq!(first["tenant"], "default");
    assert_eq!(first["databases"][0]["name"], "shop");
    assert_eq!(first["databases"][0]["files"][0]["records"], 2);
    assert_eq!(first["links"], json!([]));
    assert!(snapshots[1]["at_ms"].as_u64() >= first["at_ms"].as_u64());

    node.get("/v1/tenants/default/events?interval_ms=5")
        .expect_problem(400, "malformed-request");
    node.get("/v1/tenants/default/events?limit=0")
        .expect_problem(400, "malformed-request");
    node.get("/v1/tenants/default/events?token=x")
        .expect_problem(400, "malformed-request");
    node.get("/v1/tenants/nope/events?limit=1")
        .expect_problem(404, "not-found");
    node.with_token(&token("other", Role::Admin))
        .get("/v1/tenants/default/events?limit=1")
        .expect_problem(404, "not-found");
    node.without_token()
        .get("/v1/tenants/default/events?limit=1")
        .expect_problem(401, "missing-token");
    let reader = node.with_token(&token(DEFAULT_TENANT, Role::Reader));
    assert_eq!(reader.get("/v1/tenants/default/events?limit=1").status, 200);

    // An open, endless stream: SIGTERM still shuts the node down cleanly.
    let addr = node.base().trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET /v1/tenants/default/events HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\r\n",
        admin_token()
    )
    .expect("send");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut seen = false;
    while reader.read_line(&mut line).expect("read the stream") > 0 {
        if line.starts_with("event: snapshot") {
            seen = true;
            break;
        }
        line.clear();
    }
    assert!(seen, "the stream sent a snapshot");
    let status = node.terminate();
    assert!(
        status.success(),
        "graceful exit with a stream open: {status}"
    );
}

#[test]
fn the_api_reference_opens_from_the_console() {
    let node = Node::start();
    let out = run_flow(
        "api-reference",
        &[
            ("DOPPEL_BASE", node.base().to_string()),
            ("DOPPEL_TOKEN", token(DEFAULT_TENANT, Role::Reader)),
        ],
    );
    assert_eq!(out["link"], "/docs", "{out}");
    assert!(
        out["title"].as_str().unwrap_or("").starts_with("Doppel"),
        "{out}"
    );
    let documented = node.get("/v1/openapi.json").ok()["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum::<usize>();
    assert_eq!(
        out["operations"],
        json!(documented),
        "every operation listed: {out}"
    );
    let body = out["body_schema"].as_str().unwrap_or("");
    assert!(
        body.contains("DatabaseSpec") || body.contains("block_size"),
        "the request body is typed: {body}"
    );
    assert_eq!(
        out["outside"],
        json!([]),
        "nothing fetched from elsewhere: {out}"
    );
    assert!(out["page_errors"].is_null(), "{out}");
}

#[test]
fn a_postgres_link_built_in_the_console_applies_rows_and_never_shows_its_password() {
    use doppel_tests::postgres::{Postgres, PASSWORD, USER};
    let pg = Postgres::start();
    pg.create_database("shop");
    let a = Node::start();
    seeded_shop(&a);
    let out = run_flow(
        "postgres-link",
        &[
            ("DOPPEL_BASE", a.base().to_string()),
            ("DOPPEL_TOKEN", token(DEFAULT_TENANT, Role::Operator)),
            (
                "DOPPEL_PG_URL",
                format!("postgresql://{USER}@127.0.0.1:{}/shop", pg.port),
            ),
            ("DOPPEL_PG_PASSWORD", PASSWORD.to_string()),
        ],
    );
    let id = out["id"].as_str().expect("the link's id").to_string();
    assert_eq!(out["node_fields_hidden"], true, "{out}");
    assert_eq!(out["offered"], "json-columns@1.0.0", "{out}");
    assert_eq!(out["state"], "streaming", "{out}");
    let masked = format!("postgresql://{USER}:***@127.0.0.1:{}/shop", pg.port);
    let target = out["target"].as_str().unwrap();
    assert!(
        target.contains(&masked) && target.contains("public"),
        "{out}"
    );
    assert!(
        out["row"]
            .as_str()
            .unwrap()
            .contains("PostgreSQL 127.0.0.1"),
        "{out}"
    );
    assert_eq!(out["fields_left"], json!(["", ""]), "{out}");
    assert_eq!(out["password_shown"], false, "{out}");
    // The server: the link as the form built it, applying the rows.
    let link = link_status(&a.client(), &id);
    assert_eq!(link["target"]["postgres"], masked.as_str(), "{link}");
    assert_eq!(
        (&link["mode"], &link["apply"], &link["on_error"]),
        (&json!("async"), &json!("logical"), &json!("quarantine")),
        "{link}"
    );
    assert_eq!(link["create_tables"], true, "{link}");
    let done = wait_until(deadline_in(Duration::from_secs(30)), || {
        pg.try_query("shop", "SELECT id, total FROM orders ORDER BY id")
            .is_ok_and(|rows| rows == "o-1|3\no-2|2")
    });
    assert!(done, "{:?}", pg.try_query("shop", "SELECT * FROM orders"));
}

#[test]
fn a_topology_with_a_postgres_target_is_drawn_and_previewed_without_its_password() {
    use doppel_tests::postgres::{Postgres, PASSWORD};
    let pg = Postgres::start();
    pg.create_database("shop");
    let a = Node::start();
    let b = Node::start();
    seeded_shop(&a);
    a.client()
        .post(
            &topologies(),
            &json!({"name": "pg", "nodes": {"a": {"url": a.base()}, "b": {"url": b.base()}},
                    "links": [
                        {"from": {"node": "a", "database": "shop"}, "to": {"node": "b", "database": "shop"}},
                        {"from": {"node": "a", "database": "shop"},
                         "to": {"postgres": pg.url("shop"), "schema": "public"},
                         "apply": "logical", "create_tables": true,
                         "stages": [{"plugin": "json-columns@1.0.0", "config": {"files": {
                             "orders": {"table": "orders", "key": "id", "columns": {"total": "bigint"}}}}}]}]}),
        )
        .expect(200);
    let out = run_flow(
        "topology-postgres",
        &[
            ("DOPPEL_BASE", a.base().to_string()),
            ("DOPPEL_TOKEN", token(DEFAULT_TENANT, Role::Operator)),
            ("DOPPEL_PG_PASSWORD", PASSWORD.to_string()),
        ],
    );
    let text = |k: &str| out[k].as_str().unwrap_or_else(|| panic!("{k}: {out}"));
    let masked = format!("postgresql://doppel:***@127.0.0.1:{}/shop", pg.port);
    assert!(
        text("pg_box").starts_with(&format!("node PostgreSQL 127.0.0.1:{}/shop", pg.port)),
        "{out}"
    );
    assert!(text("pg_box").contains(&masked), "{out}");
    assert_eq!(out["pg_rows"], json!(["▪ public"]), "{out}");
    assert!(
        text("pg_link").contains(&format!("a/shop -> {masked} (public)"))
            && text("pg_link").contains("streaming"),
        "{out}"
    );
    assert_eq!(out["editor_conn"], masked.as_str(), "{out}");
    assert_eq!(out["editor_schema"], "public", "{out}");
    // Only the node replica can be failed over to.
    assert_eq!(out["failover_buttons"], 1, "{out}");
    assert_eq!(out["plan"], json!(["keep", "keep"]), "{out}");
    assert_eq!(out["password_shown"], false, "{out}");
}
