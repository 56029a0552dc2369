//! Kernel speed by on-CPU time (Linux `CLOCK_THREAD_CPUTIME_ID`), single thread: a check
//! that stays meaningful on a loaded machine, where wall-clock benchmarks (gemv.rs, gemm.rs)
//! mostly measure the other processes. Prints, per weight type, shape and level, the GEMV
//! weight-streaming rate (GB/s per core, cold weights) and the GEMM rate (GOPS per core).
//!
//! Run: `cargo bench -p tinygptv-kernels --bench cpu_time [-- FILTER]`; environment:
//! `TINYGPTV_BENCH_HOT=1` keeps the weights in cache (the kernels' compute limit),
//! `TINYGPTV_BENCH_M=N` sets the GEMM's activation rows (default 128). Q4_0 / Q8_0 also get a
//! line for the ×16 repacked layout (`q4_0x16`) where the level has kernels for it.

mod common;

use std::time::Instant;

use common::*;
use kernels::repack::{RepackLayout, RepackedMatrix};
use kernels::simd::{kernels_for, CpuKernels, Level};
use kernels::GgmlType;

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    // from the C library std already links on Linux
    fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
}

/// Nanoseconds this thread has run on a CPU (`CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu_ns() -> u64 {
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// On-CPU and wall seconds per call of `f(i)`: the minimum over `reps` samples, each a batch
/// of calls lasting at least 20 ms (the on-CPU clock advances in scheduler steps).
fn time(reps: usize, mut f: impl FnMut(usize)) -> (f64, f64) {
    let t0 = Instant::now();
    f(0);
    let once = t0.elapsed().as_secs_f64();
    let batch = ((0.02 / once.max(1e-6)).ceil() as usize).clamp(1, 10_000);
    let (mut best_cpu, mut best_wall) = (f64::MAX, f64::MAX);
    let mut i = 1;
    for _ in 0..reps {
        let (c0, t0) = (thread_cpu_ns(), Instant::now());
        for _ in 0..batch {
            f(i);
            i += 1;
        }
        let wall = t0.elapsed().as_secs_f64() / batch as f64;
        let cpu = (thread_cpu_ns() - c0) as f64 * 1e-9 / batch as f64;
        best_cpu = best_cpu.min(cpu);
        best_wall = best_wall.min(wall);
    }
    (best_cpu, best_wall)
}

fn gemv(kern: &CpuKernels, ty: GgmlType, k: usize, n: usize, set: &[Vec<u8>]) -> (f64, f64) {
    let act = activations(kern, ty, k, 1);
    let mut out = vec![0f32; n];
    let bytes = set[0].len() as f64;
    let (cpu, wall) = time(10, |i| {
        kern.gemm(ty, k, &set[i % set.len()], n, &act, 1, &mut out)
            .unwrap()
    });
    (bytes / cpu * 1e-9, bytes / wall * 1e-9)
}

fn gemm(kern: &CpuKernels, ty: GgmlType, k: usize, n: usize, w: &[u8], m: usize) -> (f64, f64) {
    let act = activations(kern, ty, k, m);
    let mut out = vec![0f32; m * n];
    let ops = 2.0 * (m * n * k) as f64;
    let (cpu, wall) = time(3, |_| kern.gemm(ty, k, w, n, &act, m, &mut out).unwrap());
    (ops / cpu * 1e-9, ops / wall * 1e-9)
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let types = [
        GgmlType::Q4_0,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q5_0,
        GgmlType::Q4_1,
        GgmlType::Q5_1,
        GgmlType::F16,
    ];
    // reference: a plain streaming read (sum of u64 words) over the same kind of cold set
    {
        let set: Vec<Vec<u64>> = (0..16).map(|i| vec![i as u64; 2 << 20]).collect();
        let (cpu, wall) = time(10, |i| {
            let s: u64 = set[i % set.len()]
                .iter()
                .fold(0u64, |a, &v| a.wrapping_add(v));
            std::hint::black_box(s);
        });
        let bytes = (16u64 << 20) as f64;
        println!(
            "streaming read, 1 thread: {:.2} / {:.2} GB/s (cpu / wall)",
            bytes / cpu * 1e-9,
            bytes / wall * 1e-9
        );
    }
    // TINYGPTV_BENCH_M=N: activation rows of the GEMM column (default 128; the scalar level
    // always uses 8)
    let gemm_rows = std::env::var("TINYGPTV_BENCH_M")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&m| m > 0)
        .unwrap_or(128);
    println!("GEMM with {gemm_rows} activation rows");
    println!("type   shape        level   GEMV GB/s (cpu / wall)   GEMM GOPS (cpu / wall)");
    for ty in types {
        for (k, n) in [(2560, 2560), (10240, 2560)] {
            let name = format!("{}/{k}x{n}", ty.name());
            let lower = name.to_ascii_lowercase();
            if !filter.is_empty()
                && !filter
                    .iter()
                    .any(|f| lower.contains(&f.to_ascii_lowercase()))
            {
                continue;
            }
            let w = weights(ty, n, k);
            // TINYGPTV_BENCH_HOT=1: one copy (weights stay in cache): the kernels' compute limit
            let hot = std::env::var_os("TINYGPTV_BENCH_HOT").is_some();
            let copies = if hot {
                1
            } else {
                (128usize << 20).div_ceil(w.len()).max(2)
            };
            let set: Vec<Vec<u8>> = (0..copies).map(|_| w.clone()).collect();
            for level in Level::ALL {
                let Some(kern) = kernels_for(level) else {
                    continue;
                };
                let (gv_cpu, gv_wall) = gemv(kern, ty, k, n, &set);
                let m = if level == Level::Scalar { 8 } else { gemm_rows };
                let (gm_cpu, gm_wall) = gemm(kern, ty, k, n, &w, m);
                println!(
                    "{:<6} {:<12} {:<7} {:>6.2} / {:>6.2}          {:>7.1} / {:>7.1}",
                    ty.name(),
                    format!("{k}x{n}"),
                    level.name(),
                    gv_cpu,
                    gv_wall,
                    gm_cpu,
                    gm_wall
                );
                // the same weights repacked at load time (×16 layout), where the level has
                // kernels for it
                if RepackLayout::for_type(ty).is_some_and(|l| kern.has_repacked_gemm(l)) {
                    let rset: Vec<RepackedMatrix> = set
                        .iter()
                        .map(|w| RepackedMatrix::new(ty, w, n, k).unwrap())
                        .collect();
                    let (rv_cpu, rv_wall) = gemv_repacked(kern, ty, k, n, &rset);
                    let (rm_cpu, rm_wall) = gemm_repacked(kern, ty, k, n, &rset[0], m);
                    println!(
                        "{:<6} {:<12} {:<7} {:>6.2} / {:>6.2}          {:>7.1} / {:>7.1}",
                        format!("{}x16", ty.name()),
                        format!("{k}x{n}"),
                        level.name(),
                        rv_cpu,
                        rv_wall,
                        rm_cpu,
                        rm_wall
                    );
                }
            }
        }
    }
}

fn gemv_repacked(
    kern: &CpuKernels,
    ty: GgmlType,
    k: usize,
    n: usize,
    set: &[RepackedMatrix],
) -> (f64, f64) {
    let act = activations(kern, ty, k, 1);
    let mut out = vec![0f32; n];
    let bytes = set[0].bytes().len() as f64;
    let (cpu, wall) = time(10, |i| {
        kern.gemm_repacked(&set[i % set.len()], 0, n, &act, 1, &mut out)
            .unwrap()
    });
    (bytes / cpu * 1e-9, bytes / wall * 1e-9)
}

fn gemm_repacked(
    kern: &CpuKernels,
    ty: GgmlType,
    k: usize,
    n: usize,
    w: &RepackedMatrix,
    m: usize,
) -> (f64, f64) {
    let act = activations(kern, ty, k, m);
    let mut out = vec![0f32; m * n];
    let ops = 2.0 * (m * n * k) as f64;
    let (cpu, wall) = time(3, |_| {
        kern.gemm_repacked(w, 0, n, &act, m, &mut out).unwrap()
    });
    (ops / cpu * 1e-9, ops / wall * 1e-9)
}
