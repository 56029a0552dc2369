//! Shared helpers of the kernel benchmarks: weight / activation generation and a row-parallel
//! `gemm` over rayon (as `runtime::linear` splits work).

#![allow(dead_code)]

use kernels::formats::{self, row_bytes};
use kernels::simd::{CpuKernels, TILE_ROWS};
use kernels::GgmlType;
use rayon::prelude::*;

/// Deterministic noise in [-1, 1) with a scale that changes every 32 values.
pub fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut scale = 1.0f32;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            if i % 32 == 0 {
                scale = 0.1 + (s >> 60) as f32 * 0.2;
            }
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// `n` rows of `k` weights of type `ty`, quantized with the reference quantizers. K-quant
/// quantization is slow, so one 64-row matrix is quantized and repeated.
pub fn weights(ty: GgmlType, n: usize, k: usize) -> Vec<u8> {
    let proto_rows = n.min(64);
    let x = noise(proto_rows * k, 5);
    let rb = row_bytes(ty, k).unwrap();
    let mut proto = vec![0u8; proto_rows * rb];
    formats::quantize_row(ty, &x, &mut proto).unwrap();
    let mut w = Vec::with_capacity(n * rb);
    while w.len() < n * rb {
        let take = (n * rb - w.len()).min(proto.len());
        w.extend_from_slice(&proto[..take]);
    }
    w
}

/// `m` activation rows quantized for `ty` weights.
pub fn activations(kern: &CpuKernels, ty: GgmlType, k: usize, m: usize) -> Vec<u8> {
    let x = noise(m * k, 9);
    let rb = row_bytes(ty.vec_dot_type(), k).unwrap();
    let mut act = vec![0u8; m * rb];
    kern.quantize_activations(ty, &x, k, &mut act).unwrap();
    act
}

/// Row chunks (multiples of the tile height) for `threads` workers, about 4 chunks each.
pub fn row_chunks(n: usize, threads: usize) -> Vec<(usize, usize)> {
    let chunk = n.div_ceil(threads * 4).div_ceil(TILE_ROWS) * TILE_ROWS;
    (0..n)
        .step_by(chunk.max(TILE_ROWS))
        .map(|r0| (r0, (r0 + chunk).min(n)))
        .collect()
}

/// Output buffers, one per row chunk (`m × rows`).
pub fn chunk_outputs(chunks: &[(usize, usize)], m: usize) -> Vec<Vec<f32>> {
    chunks
        .iter()
        .map(|(a, b)| vec![0f32; m * (b - a)])
        .collect()
}

/// The product over row chunks in parallel on the current rayon pool.
#[allow(clippy::too_many_arguments)]
pub fn par_gemm(
    kern: &CpuKernels,
    ty: GgmlType,
    k: usize,
    w: &[u8],
    act: &[u8],
    m: usize,
    chunks: &[(usize, usize)],
    outs: &mut [Vec<f32>],
) {
    let rb = row_bytes(ty, k).unwrap();
    outs.par_iter_mut()
        .zip(chunks.par_iter())
        .for_each(|(out, &(r0, r1))| {
            kern.gemm(ty, k, &w[r0 * rb..r1 * rb], r1 - r0, act, m, out)
                .unwrap();
        });
}

/// A rayon pool with `threads` workers.
pub fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}
