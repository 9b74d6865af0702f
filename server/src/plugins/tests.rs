//! Plugins through the real host: the built-in plugins, limits, and the hostile corpus
//! (each hostile module is a few lines of WAT wrapped into a component here).

use std::sync::Arc;
use std::time::Duration;

use doppel_sdk::abi::{BatchBuilder, Op, OwnedRecord};

use super::builtin;
use super::runtime::{Chain, Limits, PluginError, Resolution, Role, Runtime, Template};

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

fn no_bases(records: &[OwnedRecord]) -> BatchBuilder {
    let mut b = BatchBuilder::new();
    for r in records {
        b.push(&doppel_sdk::abi::no_base(&r.file, &r.key));
    }
    b
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
    let none = no_bases(&a);
    let mut lww = t.stage("{}").unwrap();
    let here = lww
        .resolve(batch(&a).as_batch(), batch(&b).as_batch(), none.as_batch())
        .unwrap();
    let there = lww
        .resolve(batch(&b).as_batch(), batch(&a).as_batch(), none.as_batch())
        .unwrap();
    // Remote wins records 0 and 1 here (later, then higher node id), and loses them there.
    use Resolution::{Local, Remote};
    assert_eq!(here.decisions, [Remote, Remote, Local]);
    assert_eq!(there.decisions, [Local, Local, Remote]);
    assert!(here.errors.is_empty() && there.errors.is_empty());
    let mut max = t
        .stage(r#"{"strategy": "max", "field": "version"}"#)
        .unwrap();
    let out = max
        .resolve(
            batch(&a[2..]).as_batch(),
            batch(&b[2..]).as_batch(),
            no_bases(&a[2..]).as_batch(),
        )
        .unwrap();
    assert_eq!(
        out.decisions,
        [Remote],
        "version 3 beats version 2 despite being older"
    );
    let err = t.stage(r#"{"strategy": "max"}"#).err().unwrap().to_string();
    assert!(err.contains("needs a field"), "{err}");
}

#[test]
fn lww_resolver_merges_fields_against_the_base_through_the_host() {
    let rt = runtime();
    let t = template(&rt, "lww", Role::Resolver, builtin::LWW_RESOLVER);
    let v = |ts: u64, origin: u64, data: &str| {
        rec(Op::Update, "users", "u1", data)
            .with_timestamp(ts)
            .with_origin(origin)
    };
    let base = [
        v(5, 3, r#"{"name":"Ann","city":"Oslo"}"#),
        v(5, 3, r#"{"name":"Bo"}"#),
        v(5, 3, r#"{"n":1}"#),
    ];
    let local = [
        v(10, 1, r#"{"name":"Anna","city":"Oslo"}"#),
        v(10, 1, r#"{"name":"Bob"}"#),
        v(10, 1, "[not json"),
    ];
    let remote = [
        v(20, 2, r#"{"name":"Ann","city":"Bergen"}"#),
        v(20, 2, r#"{"name":"Bo","age":3}"#),
        v(20, 2, r#"{"n":2}"#),
    ];
    let mut stage = t.stage(r#"{"strategy": "merge"}"#).unwrap();
    let here = stage
        .resolve(
            batch(&local).as_batch(),
            batch(&remote).as_batch(),
            batch(&base).as_batch(),
        )
        .unwrap();
    let there = stage
        .resolve(
            batch(&remote).as_batch(),
            batch(&local).as_batch(),
            batch(&base).as_batch(),
        )
        .unwrap();
    let json = |r: &Resolution| match r {
        Resolution::Merged(d) => serde_json::from_slice::<serde_json::Value>(d).unwrap(),
        other => panic!("expected a merge, got {other:?}"),
    };
    assert_eq!(
        json(&here.decisions[0]),
        serde_json::json!({"name":"Anna","city":"Bergen"})
    );
    assert_eq!(
        json(&here.decisions[1]),
        serde_json::json!({"name":"Bob","age":3})
    );
    assert_eq!(
        here.decisions[..2],
        there.decisions[..2],
        "both sites merge alike"
    );
    // A record the plugin cannot decide keeps its local version and names the reason.
    assert_eq!(here.decisions[2], Resolution::Local);
    assert_eq!(here.errors.len(), 1);
    assert_eq!(here.errors[0].index, 2);
    assert!(
        here.errors[0].message.contains("not JSON"),
        "{:?}",
        here.errors
    );
}

#[test]
fn a_resolver_is_called_through_resolve_and_its_batches_must_pair_up() {
    let rt = runtime();
    let lww = template(&rt, "lww@1", Role::Resolver, builtin::LWW_RESOLVER);
    let mut stage = lww.stage("{}").unwrap();
    let two = batch(&[
        rec(Op::Insert, "f", "a", "{}"),
        rec(Op::Insert, "f", "b", "{}"),
    ]);
    let one = batch(&[rec(Op::Insert, "f", "a", "{}")]);
    let err = stage
        .resolve(two.as_batch(), two.as_batch(), one.as_batch())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("lww@1") && err.contains("2 local, 2 remote and 1 base"),
        "{err}"
    );
    let err = stage.call(two.as_batch(), None).err().unwrap().to_string();
    assert!(err.contains("Stage::resolve"), "{err}");
    // The stage still works after both refusals.
    let out = stage
        .resolve(
            one.as_batch(),
            one.as_batch(),
            no_bases(&[rec(Op::Insert, "f", "a", "")]).as_batch(),
        )
        .unwrap();
    assert_eq!(out.decisions, [Resolution::Local]);
    // And a filter is not a resolver.
    let filter = template(&rt, "drop-reads", Role::Filter, builtin::DROP_READS);
    let err = filter
        .stage("{}")
        .unwrap()
        .resolve(one.as_batch(), one.as_batch(), one.as_batch())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a resolver"), "{err}");
}

// ---- the hostile corpus ----

/// A core module for `world` whose role export runs `body` first. It follows the
/// canonical ABI by hand: a bump allocator, results returned through memory.
fn hostile(world: &str, export: &str, params: usize, body: &str, extra: &str) -> Vec<u8> {
    // Filters, transforms and rules of contract version 1 still load; resolvers need 2.
    let version = if world == "resolver" { 2 } else { 1 };
    hostile_at(version, world, export, params, body, extra)
}

/// [`hostile`], answering `version` from `contract-version`.
fn hostile_at(
    version: u32,
    world: &str,
    export: &str,
    params: usize,
    body: &str,
    extra: &str,
) -> Vec<u8> {
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
  (func (export "contract-version") (result i32) (i32.const {version}))
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
    let module = wat::parse_str(&wat).unwrap();
    super::wrap::wrap_module(module, world).unwrap()
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

/// A hostile resolver (three batches: 12 flat parameters). Its answer is laid out at 64:
/// decisions (ptr, len) at 64, merged arena at 72, merged offsets at 80, errors at 88,
/// log at 96.
fn hostile_resolver(body: &str, extra: &str) -> Vec<u8> {
    hostile("resolver", "resolve", 12, body, extra)
}

/// Runs a hostile resolver on one conflict: the error it stops with.
fn run_hostile_resolver(wasm: &[u8]) -> PluginError {
    let rt = runtime();
    let t = template(&rt, "hostile@1", Role::Resolver, wasm);
    let mut stage = t.stage("{}").unwrap();
    let one = [rec(Op::Update, "f", "k", "{}")];
    let (local, base) = (batch(&one), no_bases(&one));
    let err = stage
        .resolve(local.as_batch(), local.as_batch(), base.as_batch())
        .err()
        .unwrap();
    assert_eq!(err.plugin(), "hostile@1");
    // The same runtime still runs a well-behaved resolver.
    let good = template(&rt, "lww", Role::Resolver, builtin::LWW_RESOLVER);
    let out = good
        .stage("{}")
        .unwrap()
        .resolve(local.as_batch(), local.as_batch(), base.as_batch())
        .unwrap();
    assert_eq!(out.decisions, [Resolution::Local]);
    err
}

/// A record in the arena layout (op update, file "f", key "k") with this data, as a WAT
/// data string.
fn wat_record(data: &str) -> String {
    let mut b = BatchBuilder::new();
    b.push(&rec(Op::Update, "f", "k", data));
    let bytes: String = b.arena.iter().map(|x| format!("\\{x:02x}")).collect();
    format!("(data (i32.const 300) \"{bytes}\")")
}

const ONE_MERGE: &str = "(i32.store8 (i32.const 200) (i32.const 2))
     (i32.store (i32.const 64) (i32.const 200)) (i32.store (i32.const 68) (i32.const 1))";

#[test]
fn a_well_behaved_hand_written_resolver_passes() {
    // The harness itself is sound: one merge with JSON data is accepted.
    let extra = wat_record(r#"{"merged":true}"#);
    let wasm = hostile_resolver(
        &format!(
            "{ONE_MERGE}
             (i32.store (i32.const 72) (i32.const 300)) (i32.store (i32.const 76) (i32.const {}))
             (i32.store (i32.const 80) (i32.const 400)) (i32.store (i32.const 84) (i32.const 1))",
            wat_len(r#"{"merged":true}"#)
        ),
        &extra,
    );
    let rt = runtime();
    let t = template(&rt, "merger", Role::Resolver, &wasm);
    let one = [rec(Op::Update, "f", "k", "{}")];
    let out = t
        .stage("{}")
        .unwrap()
        .resolve(
            batch(&one).as_batch(),
            batch(&one).as_batch(),
            no_bases(&one).as_batch(),
        )
        .unwrap();
    assert_eq!(
        out.decisions,
        [Resolution::Merged(br#"{"merged":true}"#.to_vec())]
    );
}

/// The arena length of [`wat_record`]'s record.
fn wat_len(data: &str) -> usize {
    let mut b = BatchBuilder::new();
    b.push(&rec(Op::Update, "f", "k", data));
    b.arena.len()
}

#[test]
fn hostile_resolver_with_the_wrong_decision_count_is_stopped() {
    // No decisions at all for a batch of one.
    let err = run_hostile_resolver(&hostile_resolver("", ""));
    assert_stopped(&err, "returned 0 decisions for a batch of 1 records");
}

#[test]
fn hostile_resolver_with_an_unknown_decision_is_stopped() {
    let err = run_hostile_resolver(&hostile_resolver(
        "(i32.store8 (i32.const 200) (i32.const 7))
         (i32.store (i32.const 64) (i32.const 200)) (i32.store (i32.const 68) (i32.const 1))",
        "",
    ));
    assert_stopped(&err, "decision 7 for record 0");
}

#[test]
fn hostile_resolver_merging_without_a_merged_record_is_stopped() {
    let err = run_hostile_resolver(&hostile_resolver(ONE_MERGE, ""));
    assert_stopped(&err, "0 merged records for 1 decisions to merge");
}

#[test]
fn hostile_resolver_whose_merged_data_is_not_json_is_stopped() {
    let wasm = hostile_resolver(
        &format!(
            "{ONE_MERGE}
             (i32.store (i32.const 72) (i32.const 300)) (i32.store (i32.const 76) (i32.const {}))
             (i32.store (i32.const 80) (i32.const 400)) (i32.store (i32.const 84) (i32.const 1))",
            wat_len("{not json")
        ),
        &wat_record("{not json"),
    );
    let err = run_hostile_resolver(&wasm);
    assert_stopped(&err, "merged data for record 0 is not JSON");
}

#[test]
fn hostile_resolver_whose_merged_offsets_are_out_of_range_is_stopped() {
    // The offset table points past the (empty) merged arena.
    let err = run_hostile_resolver(&hostile_resolver(
        &format!(
            "{ONE_MERGE}
             (i32.store (i32.const 400) (i32.const 1000))
             (i32.store (i32.const 80) (i32.const 400)) (i32.store (i32.const 84) (i32.const 1))"
        ),
        "",
    ));
    assert_stopped(&err, "merged record for record 0: malformed record");
}

#[test]
fn hostile_resolver_error_index_out_of_range_is_refused() {
    let err = run_hostile_resolver(&hostile_resolver(
        "(i32.store (i32.const 64) (i32.const 200)) (i32.store (i32.const 68) (i32.const 1))
         (i32.store (i32.const 208) (i32.const 5))
         (i32.store (i32.const 88) (i32.const 208)) (i32.store (i32.const 92) (i32.const 1))",
        "",
    ));
    assert_stopped(&err, "record 5 of a batch of 1");
}

#[test]
fn hostile_resolver_oversized_output_is_refused() {
    // 4 MB of decisions; the limit is 1 MiB.
    let err = run_hostile_resolver(&hostile_resolver(
        "(drop (memory.grow (i32.const 64)))
         (i32.store (i32.const 68) (i32.const 4000000))",
        "",
    ));
    assert_stopped(&err, "output too large");
}

#[test]
fn hostile_resolver_infinite_loop_runs_out_of_fuel() {
    let rt = Runtime::new(Limits {
        deadline_ticks: 100_000,
        ..limits()
    })
    .unwrap();
    let t = template(
        &rt,
        "loop@1",
        Role::Resolver,
        &hostile_resolver("(loop $l (br $l))", ""),
    );
    let one = [rec(Op::Update, "f", "k", "{}")];
    let err = t
        .stage("{}")
        .unwrap()
        .resolve(
            batch(&one).as_batch(),
            batch(&one).as_batch(),
            no_bases(&one).as_batch(),
        )
        .err()
        .unwrap();
    assert_stopped(&err, "fuel exhausted");
}

#[test]
fn a_resolver_of_contract_version_1_is_rejected_on_upload_with_the_reason() {
    // The version 1 resolver world: resolve(local, remote) -> a remote-wins bitmap.
    let wit = r#"package doppel:plugin@1.0.0;
world resolver {
  record batch { arena: list<u8>, offsets: list<u32> }
  record record-error { index: u32, message: string }
  record resolve-result { remote-wins: list<u8>, errors: list<record-error>, log: list<string> }
  export contract-version: func() -> u32;
  export config-schema: func() -> string;
  export configure: func(config: string) -> result<_, string>;
  export resolve: func(local: batch, remote: batch) -> resolve-result;
}"#;
    let module = wat::parse_str(
        r#"(module
  (memory (export "memory") 1)
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
  (func (export "contract-version") (result i32) (i32.const 1))
  (func (export "config-schema") (result i32) (i32.const 32))
  (func (export "configure") (param i32 i32) (result i32) (i32.const 48))
  (func (export "resolve") (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32) (i32.const 64)))"#,
    )
    .unwrap();
    let wasm = super::wrap::wrap_module_with(module, wit, "resolver").unwrap();
    let text = rejected(Role::Resolver, &wasm);
    assert!(
        text.contains("a resolver of contract version 1") && text.contains("rebuild the plugin"),
        "{text}"
    );
    // A resolver of the new shape that still answers contract version 1 is refused too.
    let rt = runtime();
    let t = template(
        &rt,
        "v1@1",
        Role::Resolver,
        &hostile_at(1, "resolver", "resolve", 12, "", ""),
    );
    let err = t.check().err().unwrap().to_string();
    assert!(err.contains("a resolver of contract version 1"), "{err}");
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
    // A module whose contract-version answers 3 (this node speaks 1 and 2 for filters).
    let module = wat::parse_str(
        r#"(module
  (memory (export "memory") 1)
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
  (func (export "contract-version") (result i32) (i32.const 3))
  (func (export "config-schema") (result i32) (i32.const 32))
  (func (export "configure") (param i32 i32) (result i32) (i32.const 48))
  (func (export "filter") (param i32 i32 i32 i32) (result i32) (i32.const 64)))"#,
    )
    .unwrap();
    let wasm = super::wrap::wrap_module(module, "filter").unwrap();
    let rt = runtime();
    let t = template(&rt, "v3@1", Role::Filter, &wasm);
    let err = t.check().err().unwrap().to_string();
    assert!(
        err.contains("contract version 3") && err.contains("filters of contract version 1 to 2"),
        "{err}"
    );
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
