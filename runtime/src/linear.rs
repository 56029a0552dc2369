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
use kernels::simd::{self, Level, PreparedActivations, TILE_ROWS};
use kernels::GgmlType;

pub use crate::ops::Activation;
use crate::pool::SharedPtr;

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

/// Whether models repack their Q4_0 / Q8_0 / Q4_K / Q5_K / Q6_K matrices at load time
/// (`kernels::repack`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepackPolicy {
    /// Repack Q4_0, Q8_0, Q4_K, Q5_K and Q6_K when this CPU has kernels for their layouts (at
    /// an x86 level: NEON only reads ×16 files in place) and the machine has at least
    /// [`AUTO_REPACK_MIN_RAM`] of memory: smaller (8 GB) devices keep
    /// the weights in the file map, where the OS can drop and re-read them under memory
    /// pressure. The vision tower repacks only where the level has no packed GEMM for the
    /// type (`VisionTower::repack_vit`). Matrices that a `tinygptv repack` file holds in a ×16
    /// layout are copied into memory under the same rule (else read in place).
    Auto,
    /// Repack every matrix whose layout has kernels on this CPU (the vision tower's too).
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
    let kern = simd::kernels();
    repacks(
        repack_policy(),
        kern.has_repacked_gemm(layout),
        kern.level(),
        installed_memory(),
    )
}

/// The policy's decision for a layout with (or without) kernels at `level`, on a machine with
/// `memory` installed.
fn repacks(policy: RepackPolicy, has_kernels: bool, level: Level, memory: Option<u64>) -> bool {
    has_kernels
        && match policy {
            RepackPolicy::On => true,
            RepackPolicy::Off => false,
            // Every layout decodes faster repacked (Q8_0: 1.09–1.17× on the Cascade Lake VM,
            // in 2 MiB pages and from a GEMV that computes 2.4× faster than the file layout's
            // tile), and the prompt GEMMs lose nothing. It costs one pass over the weights at
            // load time (Phi-2 Q8_0: 1–2 s). NEON's ×16 kernels read `tinygptv repack` files
            // in place; repacking at load time there is not measured on Arm hardware yet, so it
            // is done only on request.
            RepackPolicy::Auto => {
                level != Level::Neon && memory.is_some_and(|m| m >= AUTO_REPACK_MIN_RAM)
            }
        }
}

/// Activation rows per quantization task when there are many rows.
const QUANT_ROWS_PER_TASK: usize = 16;

/// `y[t][j] = Σ_k x[t][k]·W[j][k] (+ bias[j])` for `m` activation rows of `w.cols` elements.
/// `y` has `m × w.rows` elements.
pub fn matmul(w: &Weight, bias: Option<&[f32]>, x: &[f32], m: usize, y: &mut [f32]) {
    matmul_act(w, bias, Activation::Identity, x, m, y);
}

/// [`matmul`] followed by `act` on every output (e.g. an MLP's up projection and its GELU):
/// the same bits as `act` applied afterwards, but applied to each block of outputs inside the
/// parallel loop, while it is still in cache.
pub fn matmul_act(
    w: &Weight,
    bias: Option<&[f32]>,
    act: Activation,
    x: &[f32],
    m: usize,
    y: &mut [f32],
) {
    matmul_many(
        &mut [MatmulPart {
            w: *w,
            bias,
            act,
            out: y,
        }],
        x,
        m,
    );
}

/// One product of [`matmul_many`]: `out = act(x·wᵀ + bias)`.
pub struct MatmulPart<'w, 'o> {
    pub w: Weight<'w>,
    pub bias: Option<&'w [f32]>,
    pub act: Activation,
    pub out: &'o mut [f32],
}

impl<'w, 'o> MatmulPart<'w, 'o> {
    /// `out = x·wᵀ + bias`, no activation.
    pub fn new(w: Weight<'w>, bias: Option<&'w [f32]>, out: &'o mut [f32]) -> Self {
        MatmulPart {
            w,
            bias,
            act: Activation::Identity,
            out,
        }
    }
}

/// Several products of the same activations, e.g. separate Q, K and V matrices, or Phi-2's
/// QKV and MLP-up projections of one normalized input: each part as [`matmul_act`]. Matrices
/// of one activation type and row length share one activation quantization and one parallel
/// loop over all their row blocks (one fork-join instead of one per matrix); the results are
/// those of separate [`matmul_act`] calls.
pub fn matmul_many(parts: &mut [MatmulPart], x: &[f32], m: usize) {
    for p in parts.iter() {
        assert_eq!(x.len(), m * p.w.cols, "matmul: activation shape");
        assert_eq!(p.out.len(), m * p.w.rows, "matmul: output shape");
        if let Some(b) = p.bias {
            assert_eq!(b.len(), p.w.rows, "matmul: bias length");
        }
    }
    let Some(first) = parts.first().map(|p| p.w) else {
        return;
    };
    let same = parts
        .iter()
        .all(|p| p.w.ty.vec_dot_type() == first.ty.vec_dot_type() && p.w.cols == first.cols);
    if !same {
        for part in parts.iter_mut() {
            matmul_many(std::slice::from_mut(part), x, m);
        }
        return;
    }
    if m == 0 {
        return;
    }
    let qx = quantize_activations(&first, x, m);
    // the layout some kernels regroup the activations into, built once per weight type here
    // instead of once per row block
    let kern = simd::kernels();
    let mut prepared: Vec<PreparedActivations> = Vec::new();
    for p in parts.iter() {
        if !prepared.iter().any(|q| q.ty() == p.w.ty) {
            prepared.push(
                kern.prepare_activations(p.w.ty, p.w.cols, &qx, m)
                    .expect("matmul: activation shape"),
            );
        }
    }
    let prep_of: Vec<usize> = parts
        .iter()
        .map(|p| prepared.iter().position(|q| q.ty() == p.w.ty).unwrap_or(0))
        .collect();

    // Blocks of weight rows (whole tiles) of every matrix; each block computes all m outputs
    // for its rows.
    let jobs: Vec<(usize, usize, usize)> = parts
        .iter()
        .enumerate()
        .flat_map(|(i, p)| row_blocks(&p.w, m).map(move |(r0, r1)| (i, r0, r1)))
        .collect();
    let outs: Vec<_> = parts
        .iter_mut()
        .map(|p| (p.w, p.bias, p.act, SharedPtr(p.out.as_mut_ptr())))
        .collect();
    crate::pool::for_each_index(jobs.len(), |j| {
        let (i, r0, r1) = jobs[j];
        let (w, bias, act, out) = &outs[i];
        // SAFETY: blocks of one matrix have disjoint row ranges, and every matrix writes only
        // its own output (checked to hold m × rows elements above).
        unsafe { row_block(w, *bias, *act, &prepared[prep_of[i]], r0, r1, *out) };
    });
}

/// `m` rows of `x` quantized for `w`'s kernels (row groups in parallel when there are many).
fn quantize_activations(w: &Weight, x: &[f32], m: usize) -> Vec<u8> {
    let kern = simd::kernels();
    let k = w.cols;
    let arb = simd::activation_row_bytes(w.ty, k).expect("matmul: weight row length");
    let mut act = vec![0u8; m * arb];
    let quantize = |xs: &[f32], dst: &mut [u8]| {
        kern.quantize_activations(w.ty, xs, k, dst)
            .expect("matmul: activation quantization")
    };
    if m >= 2 * QUANT_ROWS_PER_TASK && k > 0 {
        crate::pool::for_each_chunk_mut(&mut act, arb * QUANT_ROWS_PER_TASK, |i, dst| {
            let rows = dst.len() / arb;
            let x0 = i * QUANT_ROWS_PER_TASK * k;
            quantize(&x[x0..x0 + rows * k], dst)
        });
    } else {
        quantize(x, &mut act);
    }
    act
}

/// The row blocks `(r0, r1)` of `w` for `m` activation rows: whole tiles, enough blocks for
/// load balance, each small enough that its weights stay in cache while all rows pass.
fn row_blocks(w: &Weight, m: usize) -> impl Iterator<Item = (usize, usize)> {
    let n = w.rows;
    let tile_rows = if repacked_here(w).is_some() {
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
    (0..n.div_ceil(block)).map(move |b| (b * block, ((b + 1) * block).min(n)))
}

/// `w`'s repacked copy if this CPU has kernels for its layout.
fn repacked_here<'a>(w: &Weight<'a>) -> Option<&'a RepackedMatrix> {
    w.repacked
        .filter(|r| simd::kernels().has_repacked_gemm(r.layout()))
}

/// Rows `r0..r1` of `y = act(x·Wᵀ + bias)` from the quantized activations.
///
/// # Safety
/// `out` must point at `m × w.rows` floats, and no other thread may write rows `r0..r1` of
/// them meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn row_block(
    w: &Weight,
    bias: Option<&[f32]>,
    act: Activation,
    qx: &PreparedActivations,
    r0: usize,
    r1: usize,
    out: SharedPtr<f32>,
) {
    thread_local! {
        // each thread's output tile, kept between calls: a fresh one would be zeroed (and at
        // first touched) on every block only to be overwritten by the kernel
        static TILE: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let kern = simd::kernels();
    let n = w.rows;
    let m = qx.rows();
    let rows = r1 - r0;
    let wrb = w.row_bytes();
    let mut tile = TILE.take();
    if tile.len() < m * rows {
        tile.resize(m * rows, 0.0);
    }
    let local = &mut tile[..m * rows];
    match repacked_here(w) {
        Some(rp) => kern.gemm_repacked_prepared(rp, r0, rows, qx, local),
        None => kern.gemm_prepared(&w.data[r0 * wrb..r1 * wrb], rows, qx, local),
    }
    .expect("matmul: weight shape");
    let bias = bias.map(|b| &b[r0..r1]);
    for (t, vals) in local.chunks_exact(rows).enumerate() {
        // SAFETY: t·n + r0 + rows ≤ m·n, and rows r0..r1 are this call's alone (the caller's
        // contract).
        let dst = unsafe { std::slice::from_raw_parts_mut(out.get().add(t * n + r0), rows) };
        act.apply_into(vals, bias, dst);
    }
    TILE.set(tile);
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
    fn repack_policy_decisions() {
        use RepackPolicy::*;
        let big = Some(AUTO_REPACK_MIN_RAM);
        let small = Some(8 << 30);
        // auto: machines with enough memory, where the level has kernels for the layout
        for level in [Level::Avx2, Level::Avx512, Level::Amx] {
            assert!(repacks(Auto, true, level, big));
            assert!(!repacks(Auto, true, level, small));
            assert!(!repacks(Auto, true, level, None));
            assert!(!repacks(Auto, false, level, big));
        }
        // NEON: only on request (its ×16 kernels serve `tinygptv repack` files)
        assert!(!repacks(Auto, true, Level::Neon, big));
        assert!(repacks(On, true, Level::Neon, small));
        // forced either way, still only with kernels
        assert!(repacks(On, true, Level::Avx512, small));
        assert!(!repacks(On, false, Level::Scalar, big));
        assert!(!repacks(Off, true, Level::Avx512, big));
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

    #[test]
    fn matmul_many_equals_separate_matmuls() {
        // Q/K/V-like shapes (one narrower matrix), a mixed set that cannot share the
        // activation quantization (Q4_K's Q8_K vs Q8_0's Q8_0), and the repacked layouts
        let k = 256;
        let data = |len: usize, seed: u32| -> Vec<f32> {
            (0..len)
                .map(|i| {
                    (((i as u32).wrapping_mul(2_246_822_519) ^ seed) % 1999) as f32 / 997.0 - 1.0
                })
                .collect()
        };
        let specs = [
            (GgmlType::Q4_0, 48),
            (GgmlType::Q4_0, 16),
            (GgmlType::Q8_0, 33),
            (GgmlType::Q4_K, 40),
            (GgmlType::F16, 9),
        ];
        let bytes: Vec<Vec<u8>> = specs
            .iter()
            .enumerate()
            .map(|(i, &(ty, n))| {
                let mut wq = vec![0u8; formats::row_bytes(ty, n * k).unwrap()];
                formats::quantize_row(ty, &data(n * k, 11 + i as u32), &mut wq).unwrap();
                wq
            })
            .collect();
        let packed: Vec<Option<RepackedMatrix>> = specs
            .iter()
            .zip(&bytes)
            .map(|(&(ty, n), wq)| RepackedMatrix::new(ty, wq, n, k).ok())
            .collect();
        let biases: Vec<Vec<f32>> = specs.iter().map(|&(_, n)| data(n, 5)).collect();
        for use_repacked in [false, true] {
            let weights: Vec<Weight> = specs
                .iter()
                .zip(&bytes)
                .zip(&packed)
                .map(|((&(ty, n), wq), rp)| Weight {
                    ty,
                    data: wq,
                    rows: n,
                    cols: k,
                    repacked: rp.as_ref().filter(|_| use_repacked),
                })
                .collect();
            for (set, m) in [
                (&[0usize, 1, 2][..], 1),
                (&[0, 1, 2][..], 20),
                (&[3, 2, 4][..], 5),
            ] {
                let x = data(m * k, 9);
                let mut want: Vec<Vec<f32>> = Vec::new();
                for &i in set {
                    let mut y = vec![0f32; m * specs[i].1];
                    let b = (i % 2 == 0).then_some(&biases[i][..]);
                    matmul(&weights[i], b, &x, m, &mut y);
                    want.push(y);
                }
                let mut got: Vec<Vec<f32>> = set
                    .iter()
                    .map(|&i| vec![f32::NAN; m * specs[i].1])
                    .collect();
                let mut parts: Vec<MatmulPart> = set
                    .iter()
                    .zip(got.iter_mut())
                    .map(|(&i, y)| {
                        let b = (i % 2 == 0).then_some(&biases[i][..]);
                        MatmulPart::new(weights[i], b, &mut y[..])
                    })
                    .collect();
                matmul_many(&mut parts, &x, m);
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(
                        g.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        w.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "set {set:?} m={m} repacked={use_repacked}"
                    );
                }
            }
        }
    }

    #[test]
    fn matmul_act_equals_matmul_then_activation() {
        // the activation inside the parallel loop gives the bits of the separate passes, for
        // one row (decode), many rows (packed GEMMs), several row blocks, with and without bias
        let (k, n) = (256, 300);
        let data = |len: usize, seed: u32| -> Vec<f32> {
            (0..len)
                .map(|i| {
                    (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 4001) as f32 / 1000.0 - 2.0
                })
                .collect()
        };
        for ty in [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::F32] {
            let mut wq = vec![0u8; formats::row_bytes(ty, n * k).unwrap()];
            formats::quantize_row(ty, &data(n * k, 3), &mut wq).unwrap();
            let w = Weight {
                ty,
                data: &wq,
                rows: n,
                cols: k,
                repacked: None,
            };
            let bias = data(n, 8);
            for m in [1, 37] {
                let x = data(m * k, 21);
                for b in [None, Some(&bias[..])] {
                    for (act, f) in [
                        (
                            Activation::GeluTanh,
                            crate::ops::gelu_tanh as fn(&mut [f32]),
                        ),
                        (Activation::GeluErf, crate::ops::gelu_erf),
                    ] {
                        let mut want = vec![0f32; m * n];
                        matmul(&w, b, &x, m, &mut want);
                        // the outputs span both GELU branches and its tail
                        assert!(want.iter().any(|&v| v < -3.0) && want.iter().any(|&v| v > 3.0));
                        f(&mut want);
                        let mut got = vec![f32::NAN; m * n];
                        matmul_act(&w, b, act, &x, m, &mut got);
                        assert_eq!(
                            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            "{ty} m={m} bias={} {act:?}",
                            b.is_some()
                        );
                    }
                }
            }
        }
    }
}
