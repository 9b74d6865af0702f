//! JavaScript plugins end to end, with real nodes and real components built by
//! componentize-js (`sdk/js/build.mjs`, every WASI feature off; `.ci/run` installs
//! `sdk/js/node_modules` with `npm ci`):
//!
//! * the two JavaScript examples (`sdk/js/examples`: a prefix filter and a field mask)
//!   are uploaded with `doppel plugin upload` (the server's validator takes them: no
//!   imports) and run as the two stages of a live logical link;
//! * the limits hold for JavaScript as for Rust, on the node's dry-run: an endless loop
//!   is stopped by the time limit, endless allocation by the memory limit, an exception
//!   thrown out of an export is a trap, each named; an exception in the record function
//!   is that record's error;
//! * `doppel plugin new --lang js` makes a project whose tests pass in Node and which
//!   `doppel plugin build` and `doppel plugin test` build and run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
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

fn js_sdk() -> PathBuf {
    let dir = repo().join("sdk/js");
    assert!(
        dir.join("node_modules/@bytecodealliance/componentize-js")
            .is_dir(),
        "componentize-js is not installed: run `npm ci` in {} (bash .ci/run does)",
        dir.display()
    );
    dir
}

/// Builds a JavaScript plugin source into a component at `out`.
fn build_js(source: &Path, role: &str, out: &Path) {
    let run = Command::new("node")
        .arg(js_sdk().join("build.mjs"))
        .args(["--role", role])
        .arg(source)
        .arg("-o")
        .arg(out)
        .output()
        .expect("running node");
    assert!(
        run.status.success(),
        "{}",
        cli::show(&format!("build.mjs {}", source.display()), &run)
    );
}

/// `doppel ARGS` in `dir` ([`cli::doppel_in`]).
fn doppel_in(dir: &Path, args: &[&str]) -> Output {
    cli::doppel_in(dir, args, &[])
}

#[track_caller]
fn ok_json(dir: &Path, args: &[&str]) -> Value {
    cli::ok_json(dir, args, &[])
}

#[track_caller]
fn fails(dir: &Path, args: &[&str]) -> String {
    cli::fails(dir, args, &[])
}

/// `doppel plugin upload --wasm FILE --name NAME --plugin-version 0.1.0 --role ROLE`.
fn upload(dir: &Path, url: &str, wasm: &Path, name: &str, role: &str) -> Value {
    let wasm = wasm.to_str().expect("UTF-8 path");
    ok_json(
        dir,
        &[
            "plugin",
            "upload",
            "--wasm",
            wasm,
            "--name",
            name,
            "--plugin-version",
            "0.1.0",
            "--role",
            role,
            "--url",
            url,
        ],
    )
}

#[test]
fn js_filter_and_transform_on_a_live_link_and_their_limits() {
    let work = tempfile::tempdir().expect("temp dir");
    let dir = work.path();
    let examples = repo().join("sdk/js/examples");
    let builds = [
        (examples.join("prefix-filter.js"), "filter", "pf.wasm"),
        (examples.join("field-mask.js"), "transform", "fm.wasm"),
        (repo().join("tests/js/limits.js"), "filter", "limits.wasm"),
    ];
    for (source, role, out) in &builds {
        build_js(source, role, &dir.join(out));
    }

    let source = Node::start();
    let replica = Node::start();
    let url = source.base().to_owned();
    upload(
        dir,
        &url,
        &dir.join("pf.wasm"),
        "js-prefix-filter",
        "filter",
    );
    upload(
        dir,
        &url,
        &dir.join("fm.wasm"),
        "js-field-mask",
        "transform",
    );
    upload(dir, &url, &dir.join("limits.wasm"), "js-limits", "filter");

    let shop = source.client().create_db(
        DEFAULT_TENANT,
        json!({"name": "shop", "files": [{"name": "orders"}, {"name": "users"}]}),
    );
    let link = ok_json(
        dir,
        &[
            "link",
            "create",
            "shop",
            "--to",
            replica.base(),
            "--stage",
            r#"js-prefix-filter@0.1.0={"files":["orders"],"prefixes":["eu-"]}"#,
            "--stage",
            r#"js-field-mask@0.1.0={"paths":["email"]}"#,
            "--on-error",
            "quarantine",
            "--wait",
            "--url",
            &url,
        ],
    );
    let id = link["id"].as_str().expect("link id").to_owned();
    shop.put("orders", "eu-1", json!({}), json!({"email": "a@x", "n": 1}))
        .ok();
    shop.put("orders", "us-1", json!({}), json!({"email": "b@x", "n": 2}))
        .ok();
    shop.put("users", "u-1", json!({}), json!({"email": "c@x"}))
        .ok();
    shop.put("orders", "eu-2", json!({}), json!({"n": 3})).ok();
    let copy = replica.client().db(DEFAULT_TENANT, "shop");
    assert!(
        wait_until(deadline_in(REPLICATION_TIMEOUT), || copy
            .data("orders", "eu-2")
            .is_some()),
        "eu-2 never reached the replica: {}",
        link_status(&source.client(), &id)
    );
    assert_eq!(
        copy.data("orders", "eu-1"),
        Some(json!({"email": "***", "n": 1}))
    );
    assert_eq!(copy.data("orders", "us-1"), None, "the JS filter let it by");
    // The filter's `files` lists the files it keeps (as the built-in prefix-filter).
    assert_eq!(copy.data("users", "u-1"), None);

    // The limits, on the node's dry-run.
    let dry = |key: &str| {
        let file = dir.join(format!("{key}.json"));
        let body = json!({"records": [{"op": "insert", "file": "t", "key": key, "data": {}}]});
        std::fs::write(&file, body.to_string()).unwrap();
        let file = file.to_str().unwrap().to_owned();
        let args = [
            "plugin",
            "dry-run",
            "js-limits@0.1.0",
            "--records",
            &file,
            "--url",
            &url,
        ];
        let out = doppel_in(dir, &args);
        (out.status.success(), out)
    };
    let (ok, out) = dry("spin");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !ok && stderr
            .contains("plugin 'js-limits@0.1.0' stopped: time limit exceeded (1000 ms per call)"),
        "{}",
        cli::show("dry-run spin", &out)
    );
    let (ok, out) = dry("grow");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !ok && stderr.contains("stopped: memory limit exceeded (max 67108864 bytes)"),
        "{}",
        cli::show("dry-run grow", &out)
    );
    let (ok, out) = dry("throw");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !ok && stderr.contains("a JavaScript exception thrown out of an export"),
        "{}",
        cli::show("dry-run throw", &out)
    );
    let (ok, out) = dry("bad");
    assert!(ok, "{}", cli::show("dry-run bad", &out));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        answer["errors"],
        json!([{"index": 0, "message": "bad is a bad key"}])
    );
    // The stopped calls did not break the plugin: a good record passes next.
    let (ok, out) = dry("fine");
    assert!(ok, "{}", cli::show("dry-run fine", &out));
}

#[test]
fn a_generated_js_project_tests_builds_and_runs() {
    let work = tempfile::tempdir().expect("temp dir");
    let sdk = repo().join("sdk");
    js_sdk();
    let created = ok_json(
        work.path(),
        &[
            "plugin",
            "new",
            "mask-js",
            "--role",
            "transform",
            "--lang",
            "js",
            "--sdk",
            sdk.to_str().unwrap(),
        ],
    );
    assert_eq!(created["lang"], "js");
    let project = work.path().join("mask-js");
    let npm = |args: &[&str]| {
        let out = Command::new("npm")
            .args(args)
            .current_dir(&project)
            .output()
            .expect("running npm");
        assert!(
            out.status.success(),
            "{}",
            cli::show(&format!("npm {}", args.join(" ")), &out)
        );
        out
    };
    npm(&["install", "--no-audit", "--no-fund", "--offline"]);
    let tested = npm(&["test"]);
    let text = String::from_utf8_lossy(&tested.stdout);
    assert!(
        text.contains("# pass 2") && text.contains("# fail 0"),
        "{text}"
    );

    let built = ok_json(&project, &["plugin", "build"]);
    assert_eq!(built["plugin"], "mask-js@0.1.0");
    assert!(project.join("dist/mask-js.wasm").is_file());
    let out = ok_json(&project, &["plugin", "test"]);
    assert_eq!(out["records"][0]["data"]["email"], "***", "{out}");
    assert_eq!(out["errors"], json!([]));
    let refused = fails(
        &project,
        &["plugin", "test", "--config", r#"{"field":"a..b"}"#],
    );
    assert!(refused.contains("is not a dotted field path"), "{refused}");
}
