//! Warm per-request overhead of each handler on in-memory ports, under criterion:
//! `cargo bench -p paykey-bench`.

use criterion::{criterion_group, criterion_main, Criterion};

fn handlers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (app, cases) = rt.block_on(paykey_bench::warm::setup());
    let mut group = c.benchmark_group("handler");
    for (name, event) in &cases {
        group.bench_function(*name, |b| b.to_async(&rt).iter(|| paykey_bench::warm::call(&app, name, event)));
    }
    group.finish();
}

criterion_group!(benches, handlers);
criterion_main!(benches);
