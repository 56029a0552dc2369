//! Matrix multiply of f32 activations with GGUF weights, multi-threaded with rayon.
//!
//! This is the single entry point every model uses (`matmul`), so faster kernels (SIMD, AMX,
//! CUDA) drop in here without touching model code. Activations are quantized once per matmul
//! to the weight type's activation partner (`GgmlType::vec_dot_type`), then the weight rows are
//! multiplied with all activation rows by the CPU kernels of `kernels::simd` (AVX2 / AVX-512 /
//! AMX / NEON, chosen at run time; `TINYGPTV_CPU=scalar|avx2|avx512|amx` forces a lower level).
//! Work is split over blocks of weight rows so each weight row is read from memory once per
//! matmul, whatever the number of tokens.

use std::sync::atomic::{AtomicU8, Ordering};

use kernels::formats;
use kernels::repack::{RepackLayout, RepackedMatrix, GROUP_ROWS};
use kernels::simd::{self, TILE_ROWS};
use kernels::GgmlType;
use rayon::prelude::*;

/// A weight matrix in a GGUF tensor: `rows` output features of `cols` input elements each.
#[derive(Clone, Copy)]
pub struct Weight<'a> {
    pub ty: GgmlType,
    pub data: &'a [u8],
    pub rows: usize,
    pub cols: usize,
    /// The same matrix repacked at load time (`kernels::repack`), used instead of `data` where
    /// this CPU has kernels for its layout.
    pub repacked: Option<&'a RepackedMatrix>,
}

impl Weight<'_> {
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_size() * self.ty.type_size()
    }

    pub fn row(&self, i: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data[i * rb..(i + 1) * rb]
    }

    /// Dequantized row `i` (embedding lookup).
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) {
        formats::dequantize_row(self.ty, self.row(i), out).expect("row length checked at load");
    }
}

// ---------------------------------------------------------------------------------------------
// Load-time repacking policy
// ---------------------------------------------------------------------------------------------

/// Whether models repack their Q4_0 / Q4_K / Q6_K (and Q8_0) matrices at load time
/// (`kernels::repack`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepackPolicy {
    /// Repack Q4_0, Q4_K and Q6_K when this CPU has kernels for their layouts and the machine
    /// has at least [`AUTO_REPACK_MIN_RAM`] of memory: smaller (8 GB) devices keep the weights
    /// in the file map, where the OS can drop and re-read them under memory pressure. Q8_0
    /// only with `On`: it gains nothing measurable.
    Auto,
    On,
    Off,
}

/// Installed memory from which [`RepackPolicy::Auto`] repacks.
pub const AUTO_REPACK_MIN_RAM: u64 = 12 << 30;

static REPACK_POLICY: AtomicU8 = AtomicU8::new(0);

/// Sets the policy for models loaded from now on (the default comes from `TINYGPTV_REPACK`:
/// `auto` (default), `1`/`on`, `0`/`off`). Device backends turn it off: their weights are
/// uploaded from the file.
pub fn set_repack_policy(p: RepackPolicy) {
    let v = match p {
        RepackPolicy::Auto => 1,
        RepackPolicy::On => 2,
        RepackPolicy::Off => 3,
    };
    REPACK_POLICY.store(v, Ordering::Relaxed);
}

/// The policy in force: the last [`set_repack_policy`], else `TINYGPTV_REPACK`, else auto.
pub fn repack_policy() -> RepackPolicy {
    match REPACK_POLICY.load(Ordering::Relaxed) {
        1 => RepackPolicy::Auto,
        2 => RepackPolicy::On,
        3 => RepackPolicy::Off,
        _ => parse_repack_env(std::env::var("TINYGPTV_REPACK").ok().as_deref()),
    }
}

/// A `TINYGPTV_REPACK` value: `1`/`on`, `0`/`off`; anything else (or unset) is auto.
fn parse_repack_env(v: Option<&str>) -> RepackPolicy {
    match v.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Some("1") | Some("on") => RepackPolicy::On,
        Some("0") | Some("off") => RepackPolicy::Off,
        _ => RepackPolicy::Auto,
    }
}

/// Installed memory (`MemTotal` of `/proc/meminfo`), if known.
fn installed_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Whether a matrix of type `ty` should be repacked at load time under the current policy.
pub fn should_repack(ty: GgmlType) -> bool {
    let Some(layout) = RepackLayout::for_type(ty) else {
        return false;
    };
    if !simd::kernels().has_repacked_gemm(layout) {
        return false;
    }
    match repack_policy() {
        RepackPolicy::On => true,
        RepackPolicy::Off => false,
        // Q8_0 decodes as fast from the file layout (its GEMV is not compute-bound) and
        // repacking it costs seconds of load time. The K-quant layouts decode faster and their
        // prompt GEMMs run the file layout's packed driver, so prompts lose nothing.
        RepackPolicy::Auto => {
            matches!(
                layout,
                RepackLayout::Q4_0x16 | RepackLayout::Q4_Kx16 | RepackLayout::Q6_Kx16
            ) && installed_memory().is_some_and(|m| m >= AUTO_REPACK_MIN_RAM)
        }
    }
}

/// Raw pointer that may be shared between rayon tasks writing disjoint elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper, not the field).
    fn ptr(&self) -> *mut f32 {
        self.0
    }
}

/// Activation rows per quantization task when there are many rows.
const QUANT_ROWS_PER_TASK: usize = 16;

/// `y[t][j] = Σ_k x[t][k]·W[j][k] (+ bias[j])` for `m` activation rows of `w.cols` elements.
/// `y` has `m × w.rows` elements.
pub fn matmul(w: &Weight, bias: Option<&[f32]>, x: &[f32], m: usize, y: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    assert_eq!(x.len(), m * k, "matmul: activation shape");
    assert_eq!(y.len(), m * n, "matmul: output shape");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "matmul: bias length");
    }
    if m == 0 || n == 0 {
        return;
    }
    let kern = simd::kernels();

    // 1. Quantize activations once (row groups in parallel when there are many rows).
    let arb = simd::activation_row_bytes(w.ty, k).expect("matmul: weight row length");
    let mut act = vec![0u8; m * arb];
    let quantize = |xs: &[f32], dst: &mut [u8]| {
        kern.quantize_activations(w.ty, xs, k, dst)
            .expect("matmul: activation quantization")
    };
    if m >= 2 * QUANT_ROWS_PER_TASK && k > 0 {
        act.par_chunks_mut(arb * QUANT_ROWS_PER_TASK)
            .zip(x.par_chunks(k * QUANT_ROWS_PER_TASK))
            .for_each(|(dst, xs)| quantize(xs, dst));
    } else {
        quantize(x, &mut act);
    }

    // 2. Blocks of weight rows (whole tiles); each block computes all m outputs for its rows.
    let repacked = w.repacked.filter(|r| kern.has_repacked_gemm(r.layout()));
    let tile_rows = if repacked.is_some() {
        GROUP_ROWS
    } else {
        TILE_ROWS
    };
    let threads = rayon::current_num_threads().max(1);
    let block = if m == 1 {
        // decode: enough blocks for load balance, big enough to amortize task overhead
        (n / (threads * 8)).clamp(16, 256)
    } else {
        // prompt: about 4 blocks per thread, so each block's weights stay in cache while all
        // activation rows pass over them
        (n / (threads * 4)).clamp(16, 128)
    }
    .next_multiple_of(tile_rows);
    let wrb = w.row_bytes();
    let out = SharedOut(y.as_mut_ptr());
    (0..n.div_ceil(block)).into_par_iter().for_each(|b| {
        let r0 = b * block;
        let r1 = (r0 + block).min(n);
        let rows = r1 - r0;
        let mut local = vec![0f32; m * rows];
        match repacked {
            Some(rp) => kern.gemm_repacked(rp, r0, rows, &act, m, &mut local),
            None => kern.gemm(
                w.ty,
                k,
                &w.data[r0 * wrb..r1 * wrb],
                rows,
                &act,
                m,
                &mut local,
            ),
        }
        .expect("matmul: weight shape");
        for (t, vals) in local.chunks_exact(rows).enumerate() {
            for (j, &v) in (r0..r1).zip(vals) {
                let v = v + bias.map_or(0.0, |b| b[j]);
                // SAFETY: (t, j) pairs are disjoint across tasks (j ranges do not overlap)
                // and t * n + j < m * n = y.len().
                unsafe { *out.ptr().add(t * n + j) = v };
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repack_env_values() {
        assert_eq!(parse_repack_env(Some(" ON ")), RepackPolicy::On);
        assert_eq!(parse_repack_env(Some("1")), RepackPolicy::On);
        assert_eq!(parse_repack_env(Some("off")), RepackPolicy::Off);
        assert_eq!(parse_repack_env(Some("0")), RepackPolicy::Off);
        assert_eq!(parse_repack_env(Some("auto")), RepackPolicy::Auto);
        assert_eq!(parse_repack_env(None), RepackPolicy::Auto);
    }

    #[test]
    fn f32_matmul_with_bias() {
        // W = [[1,2],[3,4],[5,6]] (3 rows of 2), x = [[1,1],[2,-1]]
        let w: Vec<f32> = vec![1., 2., 3., 4., 5., 6.];
        let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let wt = Weight {
            ty: GgmlType::F32,
            data: &bytes,
            rows: 3,
            cols: 2,
            repacked: None,
        };
        let x = vec![1., 1., 2., -1.];
        let mut y = vec![0.0; 6];
        matmul(&wt, Some(&[0.5, 0.0, -1.0]), &x, 2, &mut y);
        assert_eq!(y, vec![3.5, 7.0, 10.0, 0.5, 2.0, 3.0]);
    }

    #[test]
    fn quantized_matmul_equals_reference() {
        // every quantized type through the SIMD kernels equals the scalar reference matmul
        // bit for bit (bias added after the dot, as before)
        let (n, k, m) = (37, 512, 6);
        let data = |len: usize, seed: u32| -> Vec<f32> {
            (0..len)
                .map(|i| {
                    (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0
                })
                .collect()
        };
        let w32 = data(n * k, 3);
        let bias = data(n, 7);
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            let mut wq = vec![0u8; formats::row_bytes(ty, n * k).unwrap()];
            formats::quantize_row(ty, &w32, &mut wq).unwrap();
            let rp = RepackedMatrix::new(ty, &wq, n, k).ok();
            for repacked in [None, rp.as_ref()] {
                let wt = Weight {
                    ty,
                    data: &wq,
                    rows: n,
                    cols: k,
                    repacked,
                };
                for mm in [1, 3, m, 17] {
                    let x = data(mm * k, 5);
                    let mut want = vec![0f32; mm * n];
                    kernels::matmul::matmul_ref(ty, &wq, n, k, &x[..mm * k], mm, &mut want);
                    let mut got = vec![0f32; mm * n];
                    matmul(&wt, Some(&bias), &x[..mm * k], mm, &mut got);
                    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                        let e = e + bias[i % n];
                        assert_eq!(
                            g.to_bits(),
                            e.to_bits(),
                            "{ty} m={mm} repacked={} [{i}]: {g} vs {e}",
                            repacked.is_some()
                        );
                    }
                }
            }
        }
    }
}
