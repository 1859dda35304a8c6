//! Forward + backward of the attention-KL, fused vs slow reference.
//!
//! `cargo bench -p distillery-kernels --bench attention_kl -- --quick`
//!
//! Throughput is reported in "elements" = floating-point operations (see
//! `AttnShape::fwd_bwd_flops`), so criterion's `Gelem/s` reads as GFLOP/s.
#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use distillery_kernels::bench_support::{AttnImpl, AttnInputs, AttnShape};
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention_kl_fwd_bwd");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let shapes = [
        AttnShape::new(8, 12, 128, 32),
        AttnShape::new(8, 12, 512, 32),
        AttnShape::new(4, 12, 2048, 32),
    ];
    for shape in shapes {
        let inputs = AttnInputs::random(shape).unwrap();
        group.throughput(Throughput::Elements(shape.fwd_bwd_flops() as u64));
        let id = format!(
            "{}x{}x{}x{}",
            shape.batch, shape.heads, shape.seq, shape.d_s
        );
        group.bench_with_input(BenchmarkId::new("fused", &id), &inputs, |b, x| {
            b.iter(|| x.fwd_bwd(AttnImpl::Fused).unwrap())
        });
        // The slow reference materialises [b, h, l, l] several times: skip the long sequence.
        if shape.seq <= 512 {
            group.bench_with_input(BenchmarkId::new("slow", &id), &inputs, |b, x| {
                b.iter(|| x.fwd_bwd(AttnImpl::Slow).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
