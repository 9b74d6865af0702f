//! Plugins (issue 3): the prefix filter as wasm (limits on) vs the same function native,
//! at batch 1/16/256/4096; a filter → transform chain; instantiation from a template;
//! compile time per built-in. `cargo bench -p doppel-server --bench plugins`.

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use doppel_sdk::abi::{BatchBuilder, Op, OwnedRecord};
use doppel_server::plugins::{builtin, Chain, Limits, Role, Runtime};

const PREFIX_CFG: &str = r#"{"files": ["orders"], "prefixes": ["eu-"]}"#;

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

fn bench(c: &mut Criterion) {
    let rt = Runtime::new(Limits::default()).expect("runtime");
    let compile = |name: &str, role, wasm: &[u8]| {
        let comp = rt.compile(name, role, wasm).expect("compile");
        rt.template(name, role, &comp).expect("template")
    };
    for (name, role, wasm) in builtin::BUILTIN_PLUGINS {
        let role = Role::parse(role).expect("role");
        let started = Instant::now();
        let _ = compile(name, role, wasm);
        println!(
            "compile {name}: {} bytes, {:.1} ms",
            wasm.len(),
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    let filter = compile("prefix", Role::Filter, builtin::PREFIX_FILTER);
    let mask = compile("mask", Role::Transform, builtin::FIELD_MASK);
    let native_cfg: doppel_plugin_prefix_filter::Config =
        doppel_sdk::load_config(PREFIX_CFG).expect("config");

    let mut g = c.benchmark_group("prefix-filter");
    for n in [1usize, 16, 256, 4096] {
        let input = batch(n);
        g.throughput(Throughput::Elements(n as u64));
        let mut stage = filter.stage(PREFIX_CFG).expect("stage");
        g.bench_with_input(BenchmarkId::new("wasm", n), &input, |b, input| {
            b.iter(|| black_box(stage.call(input.as_batch(), None).expect("call")))
        });
        g.bench_with_input(BenchmarkId::new("native", n), &input, |b, input| {
            b.iter(|| {
                black_box(doppel_sdk::run::filter(
                    input.as_batch(),
                    &native_cfg,
                    doppel_plugin_prefix_filter::keep,
                ))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("chain filter->mask");
    for n in [256usize, 4096] {
        let input = batch(n);
        g.throughput(Throughput::Elements(n as u64));
        let mut chain = Chain {
            stages: vec![
                filter.stage(PREFIX_CFG).expect("stage"),
                mask.stage(r#"{"paths": ["email"]}"#).expect("stage"),
            ],
        };
        g.bench_with_input(BenchmarkId::new("wasm", n), &input, |b, input| {
            b.iter(|| black_box(chain.run(input.clone()).expect("run")))
        });
    }
    g.finish();

    c.bench_function("instantiate+configure prefix filter from template", |b| {
        b.iter(|| black_box(filter.stage(PREFIX_CFG).expect("stage")))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20);
    targets = bench
}
criterion_main!(benches);
