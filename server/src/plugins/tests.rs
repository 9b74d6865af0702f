//! Plugins through the real host: the built-in plugins, limits, and the hostile corpus
//! (each hostile module is a few lines of WAT wrapped into a component here).

use std::sync::Arc;
use std::time::Duration;

use doppel_sdk::abi::{BatchBuilder, Op, OwnedRecord};

use super::builtin;
use super::runtime::{Chain, Limits, PluginError, Role, Runtime, Template};

fn limits() -> Limits {
    Limits {
        max_memory_bytes: 16 << 20,
        max_output_bytes: 1 << 20,
        max_stack_bytes: 256 << 10,
        tick: Duration::from_millis(10),
        deadline_ticks: 20,
        fuel: 50_000_000,
        ..Limits::default()
    }
}

fn runtime() -> Arc<Runtime> {
    Runtime::new(limits()).unwrap()
}

fn template(rt: &Arc<Runtime>, name: &str, role: Role, wasm: &[u8]) -> Template {
    let component = rt.compile(name, role, wasm).unwrap();
    rt.template(name, role, &component).unwrap()
}

fn batch(records: &[OwnedRecord]) -> BatchBuilder {
    let mut b = BatchBuilder::new();
    for r in records {
        b.push(r);
    }
    b
}

fn rec(op: Op, file: &str, key: &str, data: &str) -> OwnedRecord {
    OwnedRecord::new(op, file, key, data)
}

fn keys(b: &BatchBuilder) -> Vec<String> {
    b.as_batch()
        .iter()
        .map(|r| r.unwrap().key.to_owned())
        .collect()
}

#[test]
fn prefix_filter_keeps_matching_records_through_the_host() {
    let rt = runtime();
    let t = template(&rt, "prefix", Role::Filter, builtin::PREFIX_FILTER);
    let config = r#"{"files": ["orders"], "prefixes": ["eu-"]}"#;
    let mut stage = t.stage(config).unwrap();
    let mut chain = Chain {
        stages: vec![t.stage(config).unwrap()],
    };
    let input = batch(&[
        rec(Op::Insert, "orders", "eu-1", "{}"),
        rec(Op::Insert, "orders", "us-1", "{}"),
        rec(Op::Update, "lines", "eu-1", "{}"),
        rec(Op::Delete, "orders", "eu-2", ""),
    ]);
    let out = stage.call(input.as_batch(), None).unwrap();
    assert_eq!(out.bitmap, vec![0b1001]);
    assert!(out.errors.is_empty());
    let out = chain.run(input).unwrap();
    assert_eq!(keys(&out.batch), ["eu-1", "eu-2"]);
    assert!(stage.config_schema().unwrap().contains("prefixes"));
}

#[test]
fn a_config_the_plugin_refuses_is_rejected_at_load_naming_the_plugin() {
    let rt = runtime();
    let t = template(&rt, "prefix@1", Role::Filter, builtin::PREFIX_FILTER);
    let err = t.stage(r#"{"files": [""]}"#).err().unwrap();
    assert!(matches!(err, PluginError::Config { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("prefix@1") && text.contains("file name is empty"),
        "{text}"
    );
    let err = t.stage(r#"{"prefix": "x"}"#).err().unwrap().to_string();
    assert!(err.contains("unknown field"), "{err}");
}

#[test]
fn a_filter_and_a_transform_chain_over_one_batch() {
    let rt = runtime();
    let filter = template(&rt, "drop-reads", Role::Filter, builtin::DROP_READS);
    let mask = template(&rt, "mask", Role::Transform, builtin::FIELD_MASK);
    let mut chain = Chain {
        stages: vec![
            filter.stage("{}").unwrap(),
            mask.stage(r#"{"paths": ["card.number", "email"]}"#)
                .unwrap(),
        ],
    };
    let out = chain
        .run(batch(&[
            rec(Op::Read, "users", "u1", r#"{"email":"a@b"}"#),
            rec(
                Op::Insert,
                "users",
                "u2",
                r#"{"email":"c@d","card":{"number":"4111","exp":"12/30"},"name":"Ann"}"#,
            ),
            rec(Op::Delete, "users", "u3", ""),
            rec(Op::Insert, "users", "u4", "not json"),
        ]))
        .unwrap();
    assert_eq!(keys(&out.batch), ["u2", "u3"]);
    let u2 = out.batch.as_batch().get(0).unwrap().json().unwrap();
    assert_eq!(
        u2,
        serde_json::json!({"email":"***","card":{"number":"***","exp":"12/30"},"name":"Ann"})
    );
    assert_eq!(out.errors.len(), 1);
    assert_eq!(out.errors[0].plugin, "mask");
    assert!(out.errors[0].message.contains("not JSON"));
}

#[test]
fn rename_maps_tokyos_table1_to_table2_through_the_host() {
    let rt = runtime();
    let t = template(&rt, "rename", Role::Transform, builtin::RENAME);
    let config = r#"{"nodes": {"tokyo": 1},
        "sources": {"tokyo": {"table1": {"file": "table2", "fields": {"recode1": "recode2"}}}}}"#;
    let mut stage = t.stage(config).unwrap();
    let input = batch(&[
        rec(Op::Update, "table1", "key1", r#"{"recode1":"x"}"#).with_origin(1),
        rec(Op::Update, "table1", "key1", r#"{"recode1":"x"}"#).with_origin(2),
        rec(Op::Update, "table9", "key2", r#"{"recode1":"y"}"#).with_origin(1),
    ]);
    let out = stage.call(input.as_batch(), None).unwrap();
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let got: Vec<_> = out
        .batch
        .as_batch()
        .iter()
        .map(|r| {
            let r = r.unwrap();
            (r.file.to_owned(), r.json().unwrap())
        })
        .collect();
    assert_eq!(
        got,
        [
            ("table2".to_owned(), serde_json::json!({"recode2": "x"})),
            ("table1".to_owned(), serde_json::json!({"recode1": "x"})),
            ("table9".to_owned(), serde_json::json!({"recode1": "y"})),
        ]
    );
    // An unknown source name is refused when the stage loads, naming the plugin.
    let err = t
        .stage(r#"{"sources": {"kyoto": {"t": {"file": "u"}}}}"#)
        .err()
        .unwrap();
    assert!(matches!(err, PluginError::Config { .. }), "{err}");
    assert!(err.to_string().contains("rename") && err.to_string().contains("'kyoto'"));
}

#[test]
fn namespace_keeps_two_sources_apart_through_the_host() {
    let rt = runtime();
    let t = template(&rt, "ns", Role::Transform, builtin::NAMESPACE);
    let config = r#"{"nodes": {"tokyo": 1, "osaka": 2},
        "sources": {"tokyo": {"key_prefix": "tokyo/"}, "osaka": {"key_prefix": "osaka/", "file_prefix": "jp_"}}}"#;
    let mut chain = Chain {
        stages: vec![t.stage(config).unwrap()],
    };
    let out = chain
        .run(batch(&[
            rec(Op::Insert, "orders", "o-1", "{}").with_origin(1),
            rec(Op::Insert, "orders", "o-1", "{}").with_origin(2),
            rec(Op::Delete, "orders", "o-1", "").with_origin(7),
        ]))
        .unwrap();
    let got: Vec<_> = out
        .batch
        .as_batch()
        .iter()
        .map(|r| {
            let r = r.unwrap();
            format!("{}:{}", r.file, r.key)
        })
        .collect();
    assert_eq!(
        got,
        ["orders:tokyo/o-1", "jp_orders:osaka/o-1", "orders:o-1"]
    );
}

#[test]
fn parent_rule_names_each_lines_order_through_the_host() {
    let rt = runtime();
    let t = template(&rt, "parents", Role::Rule, builtin::PARENT_RULE);
    let config = r#"{"rules": [
        {"file": "lines", "parent_file": "orders", "parent_key_field": "order.id"},
        {"file": "notes", "parent_file": "orders", "key_separator": "/"}]}"#;
    let mut stage = t.stage(config).unwrap();
    let input = batch(&[
        rec(Op::Insert, "orders", "o-1", "{}"),
        rec(Op::Insert, "lines", "l-1", r#"{"order":{"id":"o-1"}}"#),
        rec(Op::Insert, "notes", "o-1/n-1", "{}"),
        rec(Op::Insert, "lines", "l-2", r#"{"order":{"id":[]}}"#),
    ]);
    let out = stage.call(input.as_batch(), None).unwrap();
    assert_eq!(
        out.depends,
        [
            (1, "orders".to_owned(), "o-1".to_owned()),
            (2, "orders".to_owned(), "o-1".to_owned())
        ]
    );
    assert_eq!(out.errors.len(), 1);
    assert_eq!(out.errors[0].index, 3);
    assert!(out.errors[0].message.contains("is an array"));
    let err = t.stage(r#"{"rules": []}"#).err().unwrap().to_string();
    assert!(
        err.contains("parents") && err.contains("at least one rule"),
        "{err}"
    );
}

#[test]
fn lww_resolver_picks_the_same_winner_at_both_sites_through_the_host() {
    let rt = runtime();
    let t = template(&rt, "lww", Role::Resolver, builtin::LWW_RESOLVER);
    let v = |ts: u64, origin: u64, data: &str| {
        rec(Op::Update, "f", "k", data)
            .with_timestamp(ts)
            .with_origin(origin)
    };
    let a = [v(10, 1, "{}"), v(10, 1, "{}"), v(30, 1, r#"{"version":2}"#)];
    let b = [v(20, 2, "{}"), v(10, 2, "{}"), v(5, 2, r#"{"version":3}"#)];
    let mut lww = t.stage("{}").unwrap();
    let here = lww
        .call(batch(&a).as_batch(), Some(batch(&b).as_batch()))
        .unwrap();
    let there = lww
        .call(batch(&b).as_batch(), Some(batch(&a).as_batch()))
        .unwrap();
    // Remote wins pairs 0 and 1 here (later, then higher node id), and loses them there.
    assert_eq!(here.bitmap, vec![0b011]);
    assert_eq!(there.bitmap, vec![0b100]);
    let mut max = t
        .stage(r#"{"strategy": "max", "field": "version"}"#)
        .unwrap();
    let out = max
        .call(batch(&a[2..]).as_batch(), Some(batch(&b[2..]).as_batch()))
        .unwrap();
    assert_eq!(
        out.bitmap,
        vec![1],
        "version 3 beats version 2 despite being older"
    );
    let err = t.stage(r#"{"strategy": "max"}"#).err().unwrap().to_string();
    assert!(err.contains("needs a field"), "{err}");
}

// ---- the hostile corpus ----

/// A core module for `world` whose role export runs `body` first. It follows the
/// canonical ABI by hand: a bump allocator, results returned through memory.
fn hostile(world: &str, export: &str, params: usize, body: &str, extra: &str) -> Vec<u8> {
    let params = "(param i32)".repeat(params);
    let wat = format!(
        r#"(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (block $ok
      (br_if $ok (i32.le_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
      (drop (memory.grow (i32.add (i32.shr_u (global.get $heap) (i32.const 16)) (i32.const 1)))))
    (local.get $p))
  (func (export "contract-version") (result i32) (i32.const 1))
  (data (i32.const 16) "{{}}")
  (func (export "config-schema") (result i32)
    (i32.store (i32.const 32) (i32.const 16))
    (i32.store (i32.const 36) (i32.const 2))
    (i32.const 32))
  (func (export "configure") (param i32 i32) (result i32)
    (i32.store8 (i32.const 48) (i32.const 0))
    (i32.const 48))
  {extra}
  (func (export "{export}") {params} (result i32)
    {body}
    (i32.const 64))
)"#
    );
    let mut module = wat::parse_str(&wat).unwrap();
    let mut resolve = wit_parser::Resolve::default();
    let (pkg, _) = resolve
        .push_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk/wit"))
        .unwrap();
    let world = resolve.select_world(&[pkg], Some(world)).unwrap();
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
        false,
    )
    .unwrap();
    wit_component::ComponentEncoder::default()
        .module(&module)
        .unwrap()
        .validate(true)
        .encode()
        .unwrap()
}

fn hostile_filter(body: &str, extra: &str) -> Vec<u8> {
    hostile("filter", "filter", 4, body, extra)
}

/// Runs a hostile filter on a small batch: the error it stops with.
fn run_hostile(wasm: &[u8]) -> PluginError {
    let rt = runtime();
    let t = template(&rt, "hostile@1", Role::Filter, wasm);
    let mut stage = t.stage("{}").unwrap();
    let input = batch(&[rec(Op::Insert, "f", "k", "{}")]);
    let err = stage.call(input.as_batch(), None).err().unwrap();
    assert_eq!(err.plugin(), "hostile@1");
    // The same runtime still runs a well-behaved plugin.
    let good = template(&rt, "prefix", Role::Filter, builtin::PREFIX_FILTER);
    let out = good
        .stage("{}")
        .unwrap()
        .call(input.as_batch(), None)
        .unwrap();
    assert_eq!(out.bitmap, vec![1]);
    // And the hostile stage can be called again: it starts from a fresh instance.
    assert!(stage.call(input.as_batch(), None).is_err());
    err
}

fn assert_stopped(err: &PluginError, reason: &str) {
    assert!(matches!(err, PluginError::Stopped { .. }), "{err}");
    assert!(err.to_string().contains(reason), "{err}");
}

#[test]
fn a_well_behaved_hand_written_module_passes() {
    // The harness itself is sound: an empty body keeps nothing and reports nothing.
    let rt = runtime();
    let t = template(&rt, "empty", Role::Filter, &hostile_filter("", ""));
    let out = t
        .stage("{}")
        .unwrap()
        .call(batch(&[rec(Op::Insert, "f", "k", "")]).as_batch(), None)
        .unwrap();
    assert!(out.bitmap.is_empty() && out.errors.is_empty());
}

#[test]
fn hostile_infinite_loop_is_stopped_by_the_time_limit() {
    let err = run_hostile(&hostile_filter("(loop $l (br $l))", ""));
    assert_stopped(&err, "time limit exceeded");
}

#[test]
fn hostile_infinite_loop_in_a_deterministic_role_runs_out_of_fuel() {
    let rt = Runtime::new(Limits {
        deadline_ticks: 100_000,
        ..limits()
    })
    .unwrap();
    let wasm = hostile("rule", "depends", 4, "(loop $l (br $l))", "");
    let t = template(&rt, "rule@1", Role::Rule, &wasm);
    let mut stage = t.stage("{}").unwrap();
    let err = stage
        .call(batch(&[rec(Op::Insert, "f", "k", "")]).as_batch(), None)
        .err()
        .unwrap();
    assert_stopped(&err, "fuel exhausted");
}

#[test]
fn hostile_memory_growth_is_stopped_by_the_memory_limit() {
    let err = run_hostile(&hostile_filter(
        "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))",
        "",
    ));
    assert_stopped(&err, "memory limit exceeded");
}

#[test]
fn hostile_deep_recursion_is_stopped_by_the_stack_limit() {
    let err = run_hostile(&hostile_filter(
        "(drop (call $rec (i32.const 0)))",
        "(func $rec (param i32) (result i32) (i32.add (call $rec (local.get 0)) (i32.const 1)))",
    ));
    assert_stopped(&err, "stack overflow");
}

#[test]
fn hostile_oversized_output_is_refused() {
    // Grows memory to 4 MiB and claims a 4 MB bitmap; the limit is 1 MiB.
    let err = run_hostile(&hostile_filter(
        "(drop (memory.grow (i32.const 64)))
         (i32.store (i32.const 64) (i32.const 0))
         (i32.store (i32.const 68) (i32.const 4000000))",
        "",
    ));
    assert_stopped(&err, "output too large");
}

#[test]
fn hostile_trap_is_reported_as_a_panic() {
    let err = run_hostile(&hostile_filter("unreachable", ""));
    assert_stopped(&err, "unreachable");
}

#[test]
fn hostile_error_index_out_of_range_is_refused() {
    let err = run_hostile(&hostile_filter(
        "(i32.store (i32.const 200) (i32.const 99))
         (i32.store (i32.const 72) (i32.const 200))
         (i32.store (i32.const 76) (i32.const 1))",
        "",
    ));
    assert_stopped(&err, "record 99 of a batch of 1");
}

fn rejected(role: Role, wasm: &[u8]) -> String {
    let err = runtime().compile("bad@1", role, wasm).err().unwrap();
    assert!(matches!(err, PluginError::Invalid { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("bad@1"), "{text}");
    text
}

#[test]
fn hostile_forbidden_import_is_rejected_on_upload() {
    let wasm = wat::parse_str(
        r#"(component
             (import "wasi:filesystem/types@0.2.0" (instance))
           )"#,
    )
    .unwrap();
    let text = rejected(Role::Filter, &wasm);
    assert!(
        text.contains("forbidden import 'wasi:filesystem/types@0.2.0'"),
        "{text}"
    );
}

#[test]
fn hostile_not_wasm_is_rejected_on_upload() {
    let text = rejected(Role::Filter, b"#!/bin/sh\nrm -rf /\n");
    assert!(text.contains("not a WebAssembly binary"), "{text}");
    let text = rejected(Role::Filter, b"\0asm\x0d\0\x01\0garbage");
    assert!(text.contains("not a valid component"), "{text}");
    let core = wat::parse_str("(module)").unwrap();
    assert!(rejected(Role::Filter, &core).contains("not a component"));
}

#[test]
fn hostile_missing_exports_are_rejected_on_upload() {
    let wasm = wat::parse_str("(component)").unwrap();
    let text = rejected(Role::Filter, &wasm);
    assert!(text.contains("missing export 'contract-version'"), "{text}");
    // A filter uploaded as a transform lacks `transform`.
    let text = rejected(Role::Transform, builtin::PREFIX_FILTER);
    assert!(text.contains("missing export 'transform'"), "{text}");
}

#[test]
fn an_oversized_module_is_rejected_on_upload() {
    let rt = Runtime::new(Limits {
        max_module_bytes: 1000,
        ..limits()
    })
    .unwrap();
    let err = rt
        .compile("big@1", Role::Filter, builtin::PREFIX_FILTER)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("big@1") && err.contains("more than the 1000 allowed"),
        "{err}"
    );
}

#[test]
fn a_wrong_contract_version_is_rejected() {
    // A module whose contract-version answers 2.
    let mut module = wat::parse_str(
        r#"(module
  (memory (export "memory") 1)
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
  (func (export "contract-version") (result i32) (i32.const 2))
  (func (export "config-schema") (result i32) (i32.const 32))
  (func (export "configure") (param i32 i32) (result i32) (i32.const 48))
  (func (export "filter") (param i32 i32 i32 i32) (result i32) (i32.const 64)))"#,
    )
    .unwrap();
    let mut resolve = wit_parser::Resolve::default();
    let (pkg, _) = resolve
        .push_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk/wit"))
        .unwrap();
    let world = resolve.select_world(&[pkg], Some("filter")).unwrap();
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
        false,
    )
    .unwrap();
    let wasm = wit_component::ComponentEncoder::default()
        .module(&module)
        .unwrap()
        .encode()
        .unwrap();
    let rt = runtime();
    let t = template(&rt, "v2@1", Role::Filter, &wasm);
    let err = t.check().err().unwrap().to_string();
    assert!(err.contains("contract version 2"), "{err}");
}

// ---- the registry ----

#[test]
fn the_registry_is_content_addressed_and_reuses_its_compiled_artefact_after_a_restart() {
    use super::registry::Registry;
    use crate::node::{Node, NodeSettings};

    let dir = tempfile::tempdir().unwrap();
    let sha = {
        let node = Node::open(dir.path(), NodeSettings::default()).unwrap();
        let reg = Registry::open(&node, runtime()).unwrap();
        let (a, created) = reg
            .put("t", "a", "1", Role::Filter, builtin::PREFIX_FILTER)
            .unwrap();
        assert!(created);
        let (b, _) = reg
            .put("t", "b", "1", Role::Filter, builtin::PREFIX_FILTER)
            .unwrap();
        assert_eq!(a.sha256, b.sha256);
        // Deleting one name keeps the bytes the other still names.
        reg.delete("t", "a", "1").unwrap();
        assert!(reg.template("t", "b", "1").is_ok());
        node.shutdown().unwrap();
        b.sha256
    };
    let node = Node::open(dir.path(), NodeSettings::default()).unwrap();
    // Without the wasm bytes, only the cached artefact can serve the plugin.
    node.tree("plugin-blobs")
        .unwrap()
        .remove(sha.as_bytes())
        .unwrap();
    let reg = Registry::open(&node, runtime()).unwrap();
    let t = reg.template("t", "b", "1").unwrap();
    let out = t
        .stage(r#"{"prefixes": ["x"]}"#)
        .unwrap()
        .call(batch(&[rec(Op::Insert, "f", "x1", "")]).as_batch(), None)
        .unwrap();
    assert_eq!(out.bitmap, vec![1]);
    assert_eq!(reg.list("t").unwrap().len(), 1);
}

#[test]
fn an_error_after_a_transform_still_names_the_chains_input_record_by_its_serial() {
    let rt = runtime();
    let drop_reads = template(&rt, "drop-reads", Role::Filter, builtin::DROP_READS);
    let ns = template(&rt, "ns", Role::Transform, builtin::NAMESPACE);
    let mask = template(&rt, "mask", Role::Transform, builtin::FIELD_MASK);
    let mut chain = Chain {
        stages: vec![
            drop_reads.stage("{}").unwrap(),
            ns.stage(r#"{"default": {"key_prefix": "x/"}}"#).unwrap(),
            mask.stage(r#"{"paths": ["email"]}"#).unwrap(),
        ],
    };
    let records: Vec<OwnedRecord> = [
        (Op::Read, "u1", r#"{"email":"a@b"}"#),
        (Op::Insert, "u2", r#"{"email":"c@d"}"#),
        (Op::Insert, "u3", "not json"),
        (Op::Insert, "u4", r#"{"email":"e@f"}"#),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (op, key, data))| {
        let mut r = rec(op, "users", key, data);
        r.serial = 10 + i as u64;
        r
    })
    .collect();
    let out = chain.run(batch(&records)).unwrap();
    assert_eq!(keys(&out.batch), ["x/u2", "x/u4"]);
    assert_eq!(out.errors.len(), 1);
    assert_eq!(out.errors[0].plugin, "mask");
    assert_eq!(out.errors[0].index, Some(2), "{:?}", out.errors);
    // Records that serials cannot tell apart lose the correspondence, as before.
    let same: Vec<OwnedRecord> = records
        .iter()
        .cloned()
        .map(|mut r| {
            r.serial = 0;
            r
        })
        .collect();
    let out = chain.run(batch(&same)).unwrap();
    assert_eq!(out.errors[0].index, None);
}
