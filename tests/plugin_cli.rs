//! End-to-end tests of a plugin author's commands, run as the real binary against real
//! nodes: `doppel plugin new` generates a crate that builds and whose example tests
//! pass as generated; `doppel plugin build` makes a component (no wasm-tools);
//! `doppel plugin test` runs it locally under the server's limits (a refused config and
//! an endless loop are stopped and named); `doppel plugin upload|list|dry-run|delete`
//! talk to a node's registry; `doppel link create|stages|show` put the plugin on a live
//! logical link, swap its config while it runs, and take it off again.
//!
//! The generated crate's SDK is this repository's `sdk/` (`--sdk`), and its cargo
//! builds share `target/wasm-guest-build`, where the server's build script already
//! built the SDK's dependencies for wasm32: the builds reuse them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use doppel_tests::*;
use serde_json::{json, Value};

const REPLICATION_TIMEOUT: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The target dir the generated crates build in (shared with the built-in plugins).
fn guest_target() -> PathBuf {
    repo().join("target").join("wasm-guest-build")
}

#[track_caller]
fn ok_json(dir: &Path, args: &[&str]) -> Value {
    cli::ok_json(dir, args, &[("CARGO_TARGET_DIR", &guest_target())])
}

#[track_caller]
fn fails(dir: &Path, args: &[&str]) -> String {
    cli::fails(dir, args, &[("CARGO_TARGET_DIR", &guest_target())])
}

fn sdk() -> String {
    repo().join("sdk").display().to_string()
}

/// `doppel plugin new` into `parent/name`; answers the project's folder.
fn new_project(parent: &Path, name: &str, role: &str) -> PathBuf {
    let created = ok_json(
        parent,
        &["plugin", "new", name, "--role", role, "--sdk", &sdk()],
    );
    assert_eq!(created["role"], role);
    parent.join(name)
}

#[test]
fn new_build_test_upload_and_run_on_a_live_link() {
    let work = tempfile::tempdir().expect("temp dir");
    let project = new_project(work.path(), "eu-filter", "filter");
    for file in ["Cargo.toml", "src/lib.rs", "records.json", "README.md"] {
        assert!(project.join(file).is_file(), "{file} was not generated");
    }
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    assert!(
        !manifest.contains("../doppel"),
        "the SDK path assumes a sibling checkout: {manifest}"
    );

    // The two example tests pass as generated.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tested = Command::new(&cargo)
        .args(["test", "--quiet"])
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", guest_target())
        .output()
        .expect("cargo test");
    let text = String::from_utf8_lossy(&tested.stdout);
    assert!(
        tested.status.success() && text.contains("2 passed"),
        "{}",
        cli::show("cargo test", &tested)
    );

    // Built to a component the node takes, without wasm-tools.
    let built = ok_json(&project, &["plugin", "build"]);
    let wasm = project.join("dist/eu-filter.wasm");
    let bytes = std::fs::read(&wasm).expect("dist/eu-filter.wasm");
    assert_eq!(built["bytes"], bytes.len());
    assert_eq!(built["plugin"], "eu-filter@0.1.0");
    assert_eq!(
        &bytes[..8],
        b"\0asm\x0d\x00\x01\x00",
        "not a component's preamble"
    );

    // Tested locally on the sample records, under the server's runtime.
    let local = ok_json(&project, &["plugin", "test"]);
    assert_eq!(local["kept"], json!([true, false, true]), "{local}");
    let measured = ok_json(&project, &["plugin", "test", "--bench"]);
    for figure in [
        "instantiate_us",
        "call_batch_1_us",
        "records_per_s_batch_256",
    ] {
        assert!(
            measured["bench"][figure].as_f64().is_some_and(|v| v > 0.0),
            "{figure}: {measured}"
        );
    }
    let refused = fails(
        &project,
        &["plugin", "test", "--config", r#"{"prefixes":[]}"#],
    );
    assert!(
        refused.contains("rejected its config") && refused.contains("prefixes: give at least one"),
        "{refused}"
    );

    // Uploaded, listed, dry-run on the node.
    let source = Node::start();
    let replica = Node::start();
    let url = source.base().to_owned();
    let up = ok_json(&project, &["plugin", "upload", "--url", &url]);
    assert_eq!(up["name"], "eu-filter", "{up}");
    assert_eq!(up["version"], "0.1.0", "{up}");
    let list = ok_json(&project, &["plugin", "list", "--url", &url]);
    assert!(
        list.to_string().contains("\"eu-filter\""),
        "the upload is not listed: {list}"
    );
    let dry = ok_json(
        &project,
        &["plugin", "dry-run", "eu-filter@0.1.0", "--url", &url],
    );
    assert_eq!(dry["kept"], json!([true, false, true]), "{dry}");
    let short = fails(&project, &["plugin", "dry-run", "eu-filter", "--url", &url]);
    assert!(short.contains("NAME@VERSION"), "{short}");

    // On a live logical link.
    let shop = source.client().create_db(
        DEFAULT_TENANT,
        json!({"name": "shop", "files": [{"name": "orders"}]}),
    );
    shop.put("orders", "eu-0", json!({}), json!({"n": 0})).ok();
    let link = ok_json(
        &project,
        &[
            "link",
            "create",
            "shop",
            "--to",
            replica.base(),
            "--stage",
            r#"eu-filter@0.1.0={"prefixes":["eu-"],"files":["orders"]}"#,
            "--on-error",
            "quarantine",
            "--wait",
            "--url",
            &url,
        ],
    );
    assert_eq!(link["status"]["state"], "streaming", "{link}");
    let id = link["id"].as_str().expect("link id").to_owned();
    let copy = replica.client().db(DEFAULT_TENANT, "shop");
    assert_eq!(copy.data("orders", "eu-0"), Some(json!({"n": 0})));

    // The filter keeps eu- keys: us-1 written between eu-1 and eu-2 never arrives.
    for key in ["eu-1", "us-1", "eu-2"] {
        shop.put("orders", key, json!({}), json!({"k": key})).ok();
    }
    assert!(
        wait_until(deadline_in(REPLICATION_TIMEOUT), || copy
            .data("orders", "eu-2")
            .is_some()),
        "eu-2 never reached the replica: {}",
        link_status(&source.client(), &id)
    );
    assert_eq!(copy.data("orders", "eu-1"), Some(json!({"k": "eu-1"})));
    assert_eq!(copy.data("orders", "us-1"), None);

    // Swapped while it runs: now us- keys pass and eu- keys do not.
    let swapped = ok_json(
        &project,
        &[
            "link",
            "stages",
            &id,
            "--stage",
            r#"eu-filter@0.1.0={"prefixes":["us-"],"files":["orders"]}"#,
            "--url",
            &url,
        ],
    );
    assert!(swapped.to_string().contains("us-"), "{swapped}");
    let shown = ok_json(&project, &["link", "show", &id, "--url", &url]);
    assert!(shown.to_string().contains("eu-filter@0.1.0"), "{shown}");
    for key in ["eu-3", "us-3"] {
        shop.put("orders", key, json!({}), json!({"k": key})).ok();
    }
    assert!(
        wait_until(deadline_in(REPLICATION_TIMEOUT), || copy
            .data("orders", "us-3")
            .is_some()),
        "us-3 never reached the replica after the swap: {}",
        link_status(&source.client(), &id)
    );
    assert_eq!(copy.data("orders", "eu-3"), None);

    // Off the link, then deleted from the registry.
    ok_json(&project, &["link", "stages", &id, "--none", "--url", &url]);
    let gone = ok_json(
        &project,
        &["plugin", "delete", "eu-filter@0.1.0", "--url", &url],
    );
    assert_eq!(gone["deleted"], "eu-filter@0.1.0");
    let list = ok_json(&project, &["plugin", "list", "--url", &url]);
    assert!(!list.to_string().contains("\"eu-filter\""), "{list}");
}

/// `doppel plugin test` runs under the server's limits: an endless loop is stopped by
/// the call's time limit and named.
#[test]
fn plugin_test_stops_an_endless_loop() {
    let work = tempfile::tempdir().expect("temp dir");
    let project = new_project(work.path(), "spin", "filter");
    let lib = project.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    let endless = source.replace(
        "pub fn keep(r: &Record, cfg: &Config) -> bool {",
        "pub fn keep(r: &Record, cfg: &Config) -> bool {\n    loop { std::hint::black_box(&r.key); }\n    #[allow(unreachable_code)]",
    );
    assert_ne!(source, endless, "the generated filter changed shape");
    std::fs::write(&lib, endless).unwrap();
    ok_json(&project, &["plugin", "build"]);
    let stopped = fails(&project, &["plugin", "test"]);
    assert!(
        stopped.contains("plugin 'spin@0.1.0' stopped: time limit exceeded (1000 ms per call)"),
        "{stopped}"
    );
}
