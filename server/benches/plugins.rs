//! Plugins (issue 3), all figures from one run so that ratios are comparable on a noisy
//! machine:
//!
//! - the prefix filter and the field-mask transform as wasm (limits on) against the same
//!   functions native, at batch 1/16/256/4096;
//! - filter → transform chains (prefix filter → namespace, prefix filter → field mask);
//! - instantiation from a cached template, with and without `configure`;
//! - compile time on upload of each built-in (printed);
//! - what the limits cost: the prefix filter and the field mask at batch 256 on engines
//!   with no interruption, epoch interruption, fuel, and both.
//!
//! `cargo bench -p doppel-server --bench plugins`; results in docs/BENCHMARKS.md.

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use doppel_sdk::abi::{BatchBuilder, Op, OwnedRecord};
use doppel_server::plugins::runtime::Template;
use doppel_server::plugins::{builtin, Chain, Limits, Role, Runtime};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Store};

const PREFIX_CFG: &str = r#"{"files": ["orders"], "prefixes": ["eu-"]}"#;
const MASK_CFG: &str = r#"{"paths": ["email"]}"#;
const NAMESPACE_CFG: &str = r#"{"default": {"key_prefix": "site-1/"}}"#;
const BATCHES: [usize; 4] = [1, 16, 256, 4096];

/// `n` order updates, half of them `eu-` keys (kept by the prefix filter).
fn batch(n: usize) -> BatchBuilder {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        let key = if i % 2 == 0 {
            format!("eu-{i}")
        } else {
            format!("us-{i}")
        };
        let mut r = OwnedRecord::new(
            Op::Update,
            "orders",
            &key,
            r#"{"total":42.5,"email":"ann@example.com","items":3}"#,
        );
        r.alt = vec![("customer".into(), "ann".into())];
        b.push(&r);
    }
    b
}

struct Plugins {
    filter: Template,
    mask: Template,
    namespace: Template,
}

fn compile(rt: &std::sync::Arc<Runtime>, name: &str, role: Role, wasm: &[u8]) -> Template {
    let comp = rt.compile(name, role, wasm).expect("compile");
    rt.template(name, role, &comp).expect("template")
}

/// Compile time on upload (validation + cranelift) of every built-in: best of 3.
fn compile_times(rt: &std::sync::Arc<Runtime>) {
    for (name, role, _, wasm) in builtin::BUILTIN_PLUGINS {
        let role = Role::parse(role).expect("role");
        let best = (0..3)
            .map(|_| {
                let started = Instant::now();
                black_box(compile(rt, name, role, wasm));
                started.elapsed()
            })
            .min()
            .unwrap_or_default();
        println!(
            "compile {name} ({role}): {} bytes, {:.1} ms",
            wasm.len(),
            best.as_secs_f64() * 1e3
        );
    }
}

fn wasm_vs_native(c: &mut Criterion, p: &Plugins) {
    let filter_cfg: doppel_plugin_prefix_filter::Config =
        doppel_sdk::load_config(PREFIX_CFG).expect("config");
    let mask_cfg: doppel_plugin_field_mask::Config =
        doppel_sdk::load_config(MASK_CFG).expect("config");

    let mut g = c.benchmark_group("filter prefix");
    for n in BATCHES {
        let input = batch(n);
        g.throughput(Throughput::Elements(n as u64));
        let mut stage = p.filter.stage(PREFIX_CFG).expect("stage");
        g.bench_with_input(BenchmarkId::new("wasm", n), &input, |b, input| {
            b.iter(|| black_box(stage.call(input.as_batch(), None).expect("call")))
        });
        g.bench_with_input(BenchmarkId::new("native", n), &input, |b, input| {
            b.iter(|| {
                black_box(doppel_sdk::run::filter(
                    input.as_batch(),
                    &filter_cfg,
                    doppel_plugin_prefix_filter::keep,
                ))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("transform field-mask");
    for n in BATCHES {
        let input = batch(n);
        g.throughput(Throughput::Elements(n as u64));
        let mut stage = p.mask.stage(MASK_CFG).expect("stage");
        g.bench_with_input(BenchmarkId::new("wasm", n), &input, |b, input| {
            b.iter(|| black_box(stage.call(input.as_batch(), None).expect("call")))
        });
        g.bench_with_input(BenchmarkId::new("native", n), &input, |b, input| {
            b.iter(|| {
                black_box(doppel_sdk::run::transform(
                    input.as_batch(),
                    &mask_cfg,
                    doppel_plugin_field_mask::redact,
                ))
            })
        });
    }
    g.finish();
}

fn chains(c: &mut Criterion, p: &Plugins) {
    let mut g = c.benchmark_group("chain");
    for n in [256usize, 4096] {
        let input = batch(n);
        g.throughput(Throughput::Elements(n as u64));
        for (name, second, cfg) in [
            ("filter->namespace", &p.namespace, NAMESPACE_CFG),
            ("filter->mask", &p.mask, MASK_CFG),
        ] {
            let mut chain = Chain {
                stages: vec![
                    p.filter.stage(PREFIX_CFG).expect("stage"),
                    second.stage(cfg).expect("stage"),
                ],
            };
            g.bench_with_input(BenchmarkId::new(name, n), &input, |b, input| {
                b.iter(|| black_box(chain.run(input.clone()).expect("run")))
            });
        }
    }
    g.finish();
}

fn instantiation(c: &mut Criterion, p: &Plugins) {
    let mut g = c.benchmark_group("instantiate from template");
    g.bench_function("instantiate + contract-version", |b| {
        b.iter(|| p.filter.check().expect("check"))
    });
    g.bench_function("instantiate + configure (a ready stage)", |b| {
        b.iter(|| black_box(p.filter.stage(PREFIX_CFG).expect("stage")))
    });
    g.finish();
}

mod raw {
    pub mod filter {
        wasmtime::component::bindgen!({ path: "../sdk/wit", world: "filter" });
    }
    pub mod transform {
        wasmtime::component::bindgen!({ path: "../sdk/wit", world: "transform" });
    }
}

/// The same two plugins on bare engines, one limit switched on at a time: what epoch
/// interruption and fuel each cost.
fn limit_costs(c: &mut Criterion) {
    let input = batch(256);
    let mut g = c.benchmark_group("limits, batch 256");
    g.throughput(Throughput::Elements(256));
    for (label, epoch, fuel) in [
        ("none", false, false),
        ("epoch", true, false),
        ("fuel", false, true),
        ("epoch+fuel", true, true),
    ] {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(epoch)
            .consume_fuel(fuel);
        let engine = Engine::new(&config).expect("engine");
        let linker = Linker::<()>::new(&engine);
        let arm = |store: &mut Store<()>| {
            if epoch {
                store.set_epoch_deadline(u64::MAX / 2);
            }
            if fuel {
                store.set_fuel(u64::MAX / 2).expect("fuel");
            }
        };

        let comp = Component::new(&engine, builtin::PREFIX_FILTER).expect("compile");
        let pre = raw::filter::FilterPre::new(linker.instantiate_pre(&comp).expect("pre"))
            .expect("typed");
        let mut store = Store::new(&engine, ());
        arm(&mut store);
        let inst = pre.instantiate(&mut store).expect("instantiate");
        inst.call_configure(&mut store, PREFIX_CFG)
            .expect("call")
            .expect("config");
        let arg = raw::filter::Batch {
            arena: input.arena.clone(),
            offsets: input.offsets.clone(),
        };
        g.bench_function(BenchmarkId::new("filter prefix", label), |b| {
            b.iter(|| {
                arm(&mut store);
                black_box(inst.call_filter(&mut store, &arg).expect("call"))
            })
        });

        let comp = Component::new(&engine, builtin::FIELD_MASK).expect("compile");
        let pre = raw::transform::TransformPre::new(linker.instantiate_pre(&comp).expect("pre"))
            .expect("typed");
        let mut store = Store::new(&engine, ());
        arm(&mut store);
        let inst = pre.instantiate(&mut store).expect("instantiate");
        inst.call_configure(&mut store, MASK_CFG)
            .expect("call")
            .expect("config");
        let arg = raw::transform::Batch {
            arena: input.arena.clone(),
            offsets: input.offsets.clone(),
        };
        g.bench_function(BenchmarkId::new("transform field-mask", label), |b| {
            b.iter(|| {
                arm(&mut store);
                black_box(inst.call_transform(&mut store, &arg).expect("call"))
            })
        });
    }
    g.finish();
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new(Limits::default()).expect("runtime");
    compile_times(&rt);
    let plugins = Plugins {
        filter: compile(&rt, "prefix", Role::Filter, builtin::PREFIX_FILTER),
        mask: compile(&rt, "mask", Role::Transform, builtin::FIELD_MASK),
        namespace: compile(&rt, "namespace", Role::Transform, builtin::NAMESPACE),
    };
    wasm_vs_native(c, &plugins);
    chains(c, &plugins);
    instantiation(c, &plugins);
    limit_costs(c);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = bench
}
criterion_main!(benches);
