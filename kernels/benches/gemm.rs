//! GEMM (prompt processing / vision tower: many activation rows) throughput in GOPS
//! (2·m·n·k operations per call), for each instruction-set level, with 2 threads.
//!
//! SIMD levels run 512 activation rows; the scalar reference runs 32 (its per-operation speed
//! does not depend on the row count, and 512 would take seconds per call).
//! Run: `cargo bench -p tinygptv-kernels --bench gemm`.

mod common;

use std::time::Duration;

use common::*;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kernels::simd::{kernels_for, Level};
use kernels::GgmlType;

const SHAPES: [(usize, usize); 2] = [(2560, 2560), (2560, 10240)];

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    let pool = pool(2);
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q5_0,
        GgmlType::F16,
    ] {
        for (k, n) in SHAPES {
            let w = weights(ty, n, k);
            for level in Level::ALL {
                let Some(kern) = kernels_for(level) else {
                    continue;
                };
                let m = if level == Level::Scalar { 32 } else { 512 };
                let act = activations(kern, ty, k, m);
                let chunks = row_chunks(n, 2);
                let mut outs = chunk_outputs(&chunks, m);
                // "elements" = operations: criterion then reports Gelem/s = GOPS
                g.throughput(Throughput::Elements((2 * m * n * k) as u64));
                let id =
                    BenchmarkId::new(format!("{}/{k}x{n}", ty.name()), format!("{level}/m{m}"));
                g.bench_function(id, |b| {
                    b.iter(|| {
                        pool.install(|| par_gemm(kern, ty, k, &w, &act, m, &chunks, &mut outs))
                    })
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
