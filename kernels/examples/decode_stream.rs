//! Decode's weight streaming without the rest of the model: one activation row against every
//! quantized matrix of a GGUF file, in file order, on the thread pool, in row blocks as
//! `runtime::linear` splits decode. Prints the weights' GB/s (best and median of the passes).
//! With `HOT=1`: one thread, 128 rows of the first 2560-wide matrix again and again (in L2),
//! which is the kernel's compute limit instead. On a file written by `tinygptv repack`, the ×16
//! matrices are read in place from the map (with `repack` 1: copied into memory first).
//!
//! Run: `cargo run --release -p tinygptv-kernels --example decode_stream -- FILE.gguf
//! [repack: 0|1] [passes]` (`RAYON_NUM_THREADS` sets the threads).

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use kernels::gguf::GgufFile;
use kernels::repack::{RepackedMatrix, GROUP_ROWS};
use kernels::simd::{activation_row_bytes, kernels, PreparedActivations, TILE_ROWS};
use kernels::GgmlType;
use rayon::prelude::*;

struct Matrix<'a> {
    ty: GgmlType,
    k: usize,
    n: usize,
    data: &'a [u8],
    repacked: Option<RepackedMatrix>,
}

/// Rows `r0..r1` of `m` against `prep` into `out` (those rows' outputs).
fn rows(m: &Matrix, prep: &PreparedActivations, r0: usize, r1: usize, out: &mut [f32]) {
    let kern = kernels();
    match &m.repacked {
        Some(rp) => kern.gemm_repacked_prepared(rp, r0, r1 - r0, prep, out),
        None => {
            let rb = m.data.len() / m.n;
            kern.gemm_prepared(&m.data[r0 * rb..r1 * rb], r1 - r0, prep, out)
        }
    }
    .expect("decode_stream: product");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: decode_stream FILE.gguf [repack: 0|1] [passes]");
        std::process::exit(2);
    };
    let repack = args.get(2).is_some_and(|s| s == "1");
    let passes: usize = args
        .get(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
        .max(1);
    let file = GgufFile::open(Path::new(path)).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1);
    });
    let kern = kernels();
    let mut mats = Vec::new();
    for info in file.tensors() {
        let quantized = !matches!(info.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
        if info.dims.len() != 2 || info.dims[1] == 1 || !quantized {
            continue;
        }
        let (k, n) = (info.dims[0] as usize, info.dims[1] as usize);
        let data = file.tensor_data(info);
        let repacked = if info.layout.is_some() {
            // a `tinygptv repack` file: the ×16 layout in place, or copied into memory with
            // `repack`, as the runtime does
            let m = RepackedMatrix::from_gguf(&file, info).expect("decode_stream: ×16 tensor");
            Some(if repack {
                m.to_memory().expect("decode_stream: copy")
            } else {
                m
            })
        } else if repack {
            RepackedMatrix::new(info.ty, data, n, k).ok()
        } else {
            None
        };
        mats.push(Matrix {
            ty: info.ty,
            k,
            n,
            data,
            repacked,
        });
    }
    // one quantized activation row per (type, row length)
    let mut acts: HashMap<(GgmlType, usize), Vec<u8>> = HashMap::new();
    for m in &mats {
        acts.entry((m.ty, m.k)).or_insert_with(|| {
            let x: Vec<f32> = (0..m.k)
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            let mut q = vec![0u8; activation_row_bytes(m.ty, m.k).expect("row length")];
            kern.quantize_activations(m.ty, &x, m.k, &mut q)
                .expect("quantize");
            q
        });
    }

    if std::env::var_os("HOT").is_some() {
        let Some(m) = mats.iter().find(|m| m.k == 2560 && m.n >= 128) else {
            eprintln!("no 2560-wide matrix of 128 rows or more");
            std::process::exit(1);
        };
        let prep = kern
            .prepare_activations(m.ty, m.k, &acts[&(m.ty, m.k)], 1)
            .unwrap();
        let (n, iters) = (128, 20_000);
        let mut out = vec![0f32; n];
        let bytes = m.data.len() / m.n * n * iters;
        let mut best = 0f64;
        for _ in 0..passes.min(5) {
            let t = Instant::now();
            for _ in 0..iters {
                rows(m, &prep, 0, n, &mut out);
            }
            best = best.max(bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
        }
        println!("{} hot, repack={repack}: {best:.1} GB/s per core", m.ty);
        return;
    }

    let total: usize = mats.iter().map(|m| m.data.len()).sum();
    let mut outs: Vec<Vec<f32>> = mats.iter().map(|m| vec![0f32; m.n]).collect();
    let mut times = Vec::new();
    for _ in 0..passes {
        let t = Instant::now();
        for (m, out) in mats.iter().zip(outs.iter_mut()) {
            let prep = kern
                .prepare_activations(m.ty, m.k, &acts[&(m.ty, m.k)], 1)
                .unwrap();
            let tile = if m.repacked.is_some() {
                GROUP_ROWS
            } else {
                TILE_ROWS
            };
            // as runtime::linear: about 8 blocks per thread, 16..256 rows, whole tiles
            let threads = rayon::current_num_threads().max(1);
            let block = (m.n / (threads * 8)).clamp(16, 256).next_multiple_of(tile);
            out.par_chunks_mut(block).enumerate().for_each(|(b, o)| {
                let r0 = b * block;
                rows(m, &prep, r0, r0 + o.len(), o);
            });
        }
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let gb = total as f64 / 1e9;
    println!(
        "{path}: {gb:.2} GB, repack={repack}, {} threads: best {:.2} GB/s, median {:.2} GB/s",
        rayon::current_num_threads(),
        gb / times[0],
        gb / times[times.len() / 2]
    );
}
