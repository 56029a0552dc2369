//! GEMV (decode: one activation row) throughput in weight bytes per second, at Phi-2 shapes,
//! for each instruction-set level this CPU runs, with 1 and 2 threads.
//!
//! Weights are cycled through a set of copies larger than the last-level cache, so each call
//! streams its weights from DRAM as decode does (the whole model never fits in cache).
//! Run: `cargo bench -p tinygptv-kernels --bench gemv` (filter with a substring, e.g. `q4_0`).

mod common;

use std::cell::Cell;
use std::time::Duration;

use common::*;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kernels::simd::{kernels_for, Level};
use kernels::GgmlType;

/// (k, n): input features × output rows.
const SHAPES: [(usize, usize); 3] = [(2560, 2560), (2560, 10240), (10240, 2560)];
/// Bytes of weights cycled through (beyond a 32 MiB L3 several times over).
const COLD_BYTES: usize = 192 << 20;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemv");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500));
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::F16,
    ] {
        for (k, n) in SHAPES {
            let w = weights(ty, n, k);
            let copies = COLD_BYTES.div_ceil(w.len()).max(2);
            let set: Vec<Vec<u8>> = (0..copies).map(|_| w.clone()).collect();
            g.throughput(Throughput::Bytes(w.len() as u64));
            for level in Level::ALL {
                let Some(kern) = kernels_for(level) else {
                    continue;
                };
                let act = activations(kern, ty, k, 1);
                for threads in [1, 2] {
                    let pool = pool(threads);
                    let chunks = row_chunks(n, threads);
                    let mut outs = chunk_outputs(&chunks, 1);
                    let next = Cell::new(0usize);
                    let id = BenchmarkId::new(
                        format!("{}/{k}x{n}", ty.name()),
                        format!("{level}/t{threads}"),
                    );
                    g.bench_function(id, |b| {
                        b.iter(|| {
                            let i = next.get();
                            next.set((i + 1) % copies);
                            pool.install(|| {
                                par_gemm(kern, ty, k, &set[i], &act, 1, &chunks, &mut outs)
                            });
                        })
                    });
                }
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
