//! Row-wise f32 operations shared by the language model and the vision tower.
//!
//! Everything here is the plain, readable reference: norms, activations, softmax and RoPE over
//! f32 rows. Residual streams and norms always stay in f32 (spec §13).

/// Elements below which the row-wise operations stay on the calling thread: a fork-join costs
/// a few µs, more than a decode step's few thousand values take.
const PAR_MIN_ELEMENTS: usize = 1 << 14;

/// Elements a parallel task of the row-wise operations gets at least.
const PAR_MIN_TASK: usize = 1 << 12;

/// `f(first_row, piece)` over pieces of whole `dim`-sized rows of `x`: in parallel when `x` is
/// large (prompts, the vision tower), about four pieces per thread; else one call on this
/// thread. The operations given here are row-wise, so the split never changes their bits.
fn par_rows(x: &mut [f32], dim: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    let rows = x.len().checked_div(dim).unwrap_or(0);
    if x.len() < PAR_MIN_ELEMENTS || rows < 2 {
        f(0, x);
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let per_task = rows
        .div_ceil(4 * threads)
        .max(PAR_MIN_TASK.div_ceil(dim))
        .min(rows);
    crate::pool::for_each_chunk_mut(x, per_task * dim, |i, piece| f(i * per_task, piece));
}

/// LayerNorm of each `dim`-sized row of `x` in place: `(x - mean) / sqrt(var + eps) * w + b`
/// (rows in parallel when there are many).
pub fn layer_norm(x: &mut [f32], dim: usize, weight: &[f32], bias: Option<&[f32]>, eps: f32) {
    par_rows(x, dim, |_, piece| {
        vectorized(
            #[inline(always)]
            || {
                for row in piece.chunks_exact_mut(dim) {
                    layer_norm_row(row, weight, bias, eps);
                }
            },
        )
    });
}

/// `dst = LayerNorm(src)` row by row (`dim`-sized rows, in parallel when there are many): the
/// same bits as copying `src` to `dst` and [`layer_norm`], in one pass per row.
pub fn layer_norm_into(
    src: &[f32],
    dst: &mut [f32],
    dim: usize,
    weight: &[f32],
    bias: Option<&[f32]>,
    eps: f32,
) {
    assert_eq!(src.len(), dst.len(), "layer_norm_into: lengths");
    par_rows(dst, dim, |r0, piece| {
        vectorized(
            #[inline(always)]
            || {
                for (i, row) in piece.chunks_exact_mut(dim).enumerate() {
                    row.copy_from_slice(&src[(r0 + i) * dim..][..dim]);
                    layer_norm_row(row, weight, bias, eps);
                }
            },
        )
    });
}

/// LayerNorm of one row; mean and variance are accumulated in f64 so eps = 1e-12 (Q-Former)
/// behaves like the float64 reference.
#[inline(always)]
pub fn layer_norm_row(row: &mut [f32], weight: &[f32], bias: Option<&[f32]>, eps: f32) {
    let n = row.len() as f64;
    let mean = sum_f64(row, |v| v) / n;
    let var = sum_f64(row, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps as f64).sqrt();
    match bias {
        Some(b) => {
            for ((v, &w), &b) in row.iter_mut().zip(weight).zip(b) {
                *v = ((*v as f64 - mean) * inv) as f32 * w + b;
            }
        }
        None => {
            for (v, &w) in row.iter_mut().zip(weight) {
                *v = ((*v as f64 - mean) * inv) as f32 * w;
            }
        }
    }
}

/// `x[i] += a[i]` (in parallel when long): a residual connection.
pub fn add_assign(x: &mut [f32], a: &[f32]) {
    assert_eq!(x.len(), a.len(), "add_assign: lengths");
    par_rows(x, 1, |i0, piece| {
        vectorized(
            #[inline(always)]
            || {
                for (v, &av) in piece.iter_mut().zip(&a[i0..]) {
                    *v += av;
                }
            },
        )
    });
}

/// `x[i] += a[i] + b[i]` (in parallel when long): Phi-2's parallel residual, in its order.
pub fn add_sum_assign(x: &mut [f32], a: &[f32], b: &[f32]) {
    assert!(
        x.len() == a.len() && x.len() == b.len(),
        "add_sum_assign: lengths"
    );
    par_rows(x, 1, |i0, piece| {
        vectorized(
            #[inline(always)]
            || {
                for ((v, &av), &bv) in piece.iter_mut().zip(&a[i0..]).zip(&b[i0..]) {
                    *v += av + bv;
                }
            },
        )
    });
}

/// `dst` row `i` (`dst_dim` wide) = `src[i·src_stride + off..][..dst_dim]`, rows in parallel
/// when there are many: a column range of a row-major buffer, e.g. Q out of a fused QKV.
pub fn copy_columns(src: &[f32], src_stride: usize, off: usize, dst: &mut [f32], dst_dim: usize) {
    par_rows(dst, dst_dim, |r0, piece| {
        for (i, row) in piece.chunks_exact_mut(dst_dim).enumerate() {
            row.copy_from_slice(&src[(r0 + i) * src_stride + off..][..dst_dim]);
        }
    });
}

/// `Σ f(x_i)` in f64 with eight independent partial sums (a single running sum is bound by the
/// latency of one f64 add per element; eight lanes also vectorize).
#[inline(always)]
pub fn sum_f64(x: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v as f64)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v as f64);
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// RMSNorm of each `dim`-sized row in place: `x / sqrt(mean(x²) + eps) * w` (LlamaRMSNorm),
/// rows in parallel when there are many.
pub fn rms_norm(x: &mut [f32], dim: usize, weight: &[f32], eps: f32) {
    par_rows(x, dim, |_, piece| {
        vectorized(
            #[inline(always)]
            || {
                for row in piece.chunks_exact_mut(dim) {
                    let ms = sum_f64(row, |v| v * v) / dim as f64;
                    let inv = (1.0 / (ms + eps as f64).sqrt()) as f32;
                    for (v, &w) in row.iter_mut().zip(weight) {
                        *v = *v * inv * w;
                    }
                }
            },
        )
    });
}

/// Elements per parallel task of the element-wise activations (large enough that rayon's
/// overhead is noise, small enough that a 257 × 6144 ViT MLP splits over many cores).
const ACTIVATION_CHUNK: usize = 1 << 14;

/// `gelu_new` / ggml_gelu: the tanh approximation (Phi-2's MLP), parallel over chunks.
pub fn gelu_tanh(x: &mut [f32]) {
    par_chunks(x, |xs| Activation::GeluTanh.apply(xs));
}

/// One value of [`gelu_tanh`]: `0.5·z·(1 + tanh(u)) = z·σ(2u) = z / (1 + e^(−2u))` with
/// `u = √(2/π)·(z + 0.044715·z³)`: one [`exp_f32`] and no cancellation in the negative tail
/// (relative error ~3e-7).
#[inline(always)]
pub fn gelu_tanh_value(z: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * (z + 0.044715 * z * z * z);
    z / (1.0 + exp_f32(-2.0 * u))
}

/// An element-wise function applied to a matmul's output (after its bias) while the output
/// tile is still in cache (`linear::matmul_act`), or on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Identity,
    /// [`gelu_tanh`] (Phi-2).
    GeluTanh,
    /// [`gelu_erf`] (ViT, Q-Former).
    GeluErf,
}

impl Activation {
    /// `x[i] = f(x[i])` on this thread, vectorized ([`map_f32`]); the same bits as the
    /// parallel [`gelu_tanh`] / [`gelu_erf`].
    #[inline]
    pub fn apply(self, x: &mut [f32]) {
        match self {
            Activation::Identity => {}
            Activation::GeluTanh => map_f32(x, gelu_tanh_value),
            Activation::GeluErf => map_f32(x, gelu_erf_value),
        }
    }

    /// `dst[i] = f(src[i] + bias[i])` (no bias: `f(src[i])`), vectorized: the same bits as
    /// adding the bias, then [`Self::apply`], in one pass over the values.
    #[inline]
    pub fn apply_into(self, src: &[f32], bias: Option<&[f32]>, dst: &mut [f32]) {
        assert_eq!(
            src.len(),
            dst.len(),
            "activation: source and destination lengths"
        );
        if let Some(b) = bias {
            assert_eq!(b.len(), dst.len(), "activation: bias length");
        }
        match self {
            Activation::Identity => map_into(src, bias, dst, |v| v),
            Activation::GeluTanh => map_into(src, bias, dst, gelu_tanh_value),
            Activation::GeluErf => map_into(src, bias, dst, gelu_erf_value),
        }
    }
}

/// `e^x` in f32 from plain arithmetic, so loops over it vectorize: `x = n·ln2 + r` with
/// `|r| ≤ ln2/2` (Cody–Waite split of ln2), `e^r` by its degree-7 Taylor polynomial (truncation
/// < 1e-8), `2^n` through the exponent bits. Relative error about 2e-7; inputs are clamped to
/// `[−87.3, 88.3]`, so large negative inputs give ~1e-38 instead of 0 and NaN stays NaN.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75; // ln 2 with its low 12 mantissa bits cleared
    const LN2_LO: f32 = 1.428_606_8e-6; // ln 2 − LN2_HI
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding and subtracting it rounds to an integer
    let x = x.clamp(-87.3, 88.3);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    // t's low mantissa bits hold n in two's complement (|n| < 2²²): reading them avoids
    // `n as i32`, whose saturating conversion does not vectorize
    let k = t.to_bits().wrapping_sub(ROUND.to_bits());
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    p * f32::from_bits(k.wrapping_add(127) << 23)
}

/// Runs `f` compiled for AVX-512 (or AVX2 + FMA) when the CPU has it, chosen at run time, so
/// that plain loops in `f` (and the `#[inline(always)]` helpers it calls, like [`exp_f32`] and
/// [`sum_f64`]) run 16 or 8 lanes wide. Every level gives the same bits: Rust never fuses
/// `a·b + c` on its own, and the loops' sums keep their lanes' order.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma,avx512f,avx512dq,avx512vl,avx512bw")]
        unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512bw")
        {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// `x[i] = f(x[i])`, [`vectorized`]: an `f` made of plain arithmetic (like [`exp_f32`]) runs
/// 16 lanes wide.
#[inline(always)]
pub fn map_f32(x: &mut [f32], f: impl Fn(f32) -> f32) {
    vectorized(
        #[inline(always)]
        || {
            for v in x {
                *v = f(*v);
            }
        },
    )
}

/// `dst[i] = f(src[i] + bias[i])`, [`vectorized`] (see [`map_f32`]).
#[inline(always)]
fn map_into(src: &[f32], bias: Option<&[f32]>, dst: &mut [f32], f: impl Fn(f32) -> f32) {
    vectorized(
        #[inline(always)]
        || match bias {
            Some(b) => {
                for ((d, &s), &b) in dst.iter_mut().zip(src).zip(b) {
                    *d = f(s + b);
                }
            }
            None => {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = f(s);
                }
            }
        },
    )
}

/// Exact GELU `x·Φ(x) = 0.5·x·erfc(−x/√2)` (ViT and Q-Former MLPs), parallel over chunks.
pub fn gelu_erf(x: &mut [f32]) {
    par_chunks(x, |xs| Activation::GeluErf.apply(xs));
}

/// The coefficients of `P(t)` in the fit `erfc(u) ≈ t·exp(−u² + P(t))`, `t = 1/(1 + u/2)`,
/// relative error below 1.2e-7 for u ≥ 0 (Numerical Recipes §6.2, Chebyshev-fitted).
/// (The published digits, which f32 rounds.)
#[allow(clippy::excessive_precision)]
const ERFC_FIT: [f32; 10] = [
    -1.265_512_23,
    1.000_023_68,
    0.374_091_96,
    0.096_784_18,
    -0.186_288_06,
    0.278_868_07,
    -1.135_203_98,
    1.488_515_87,
    -0.822_152_23,
    0.170_872_77,
];

/// One value of [`gelu_erf`]: relative error about 3e-7, in the negative tail too. The fit
/// [`ERFC_FIT`], `erfc(u) ≈ t·exp(−u² + P(t))`, evaluated mostly in f32 (16 lanes in
/// [`map_f32`]); only the exponent `−z²/2 + P(t)` and its range reduction run in f64: there it
/// reaches −87, where one f32 rounding would cost ~5e-6 of the result (`z²` is exact in f64).
#[inline(always)]
pub fn gelu_erf_value(z: f32) -> f32 {
    const C: [f32; 10] = ERFC_FIT;
    let t = 1.0 / (1.0 + z.abs() * (0.5 * std::f32::consts::FRAC_1_SQRT_2));
    // Estrin's scheme: a tree of depth 4 instead of Horner's chain of 9 multiply-adds
    let t2 = t * t;
    let t4 = t2 * t2;
    let t8 = t4 * t4;
    let pair = |i: usize| C[i] + t * C[i + 1];
    let p = ((pair(0) + t2 * pair(2)) + t4 * (pair(4) + t2 * pair(6))) + t8 * pair(8);
    let z64 = z as f64;
    let erfc = t * exp_f64_to_f32(p as f64 - 0.5 * (z64 * z64));
    // Φ(z) = 1 − erfc(z/√2)/2 for z ≥ 0, erfc(|z|/√2)/2 for z < 0
    let phi = if z >= 0.0 {
        1.0 - 0.5 * erfc
    } else {
        0.5 * erfc
    };
    z * phi
}

/// `e^x` as f32 for an f64 `x`: the range reduction `x = n·ln2 + r` in f64 (so a large `|x|`
/// loses nothing), `e^r` by the degree-7 Taylor polynomial of [`exp_f32`] in f32. Relative
/// error about 2e-7; `x` is clamped to `[−87.3, 88.3]` as in [`exp_f32`], NaN stays NaN.
#[inline(always)]
fn exp_f64_to_f32(x: f64) -> f32 {
    const ROUND: f64 = 6_755_399_441_055_744.0; // 1.5·2⁵²: adding it rounds to an integer
    let x = x.clamp(-87.3, 88.3);
    let t = x * std::f64::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    // |n| ≤ 128, so one product with ln 2 in f64 leaves r exact to ~1e-14
    let r = (x - n * std::f64::consts::LN_2) as f32;
    // t's low mantissa bits hold n in two's complement (as in `exp_f32`)
    let k = t.to_bits().wrapping_sub(ROUND.to_bits()) as u32;
    let r2 = r * r;
    let r4 = r2 * r2;
    let pair = |a: f32, b: f32| a + r * b;
    let p = (pair(1.0, 1.0) + r2 * pair(1.0 / 2.0, 1.0 / 6.0))
        + r4 * (pair(1.0 / 24.0, 1.0 / 120.0) + r2 * pair(1.0 / 720.0, 1.0 / 5040.0));
    p * f32::from_bits(k.wrapping_add(127) << 23)
}

/// Runs `f` over [`ACTIVATION_CHUNK`]-sized pieces of `x`, in parallel when there are several.
fn par_chunks(x: &mut [f32], f: impl Fn(&mut [f32]) + Sync + Send) {
    if x.len() <= ACTIVATION_CHUNK {
        f(x);
    } else {
        crate::pool::for_each_chunk_mut(x, ACTIVATION_CHUNK, |_, piece| f(piece));
    }
}

/// Softmax of one row in place (f32 with an f64 sum).
pub fn softmax(row: &mut [f32]) {
    // all three passes vectorized: outside `vectorized` the max and the scaling would run as
    // baseline x86-64 code
    vectorized(
        #[inline(always)]
        || {
            let max = max_f32(row);
            for v in row.iter_mut() {
                *v = exp_f32(*v - max);
            }
            let sum = sum_f64(row, |v| v);
            let inv = (1.0 / sum) as f32;
            for v in row.iter_mut() {
                *v *= inv;
            }
        },
    )
}

/// The largest value (NaN-ignoring, as `f32::max`), in 16 lanes so that it vectorizes.
#[inline(always)]
fn max_f32(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    lanes.iter().copied().fold(tail, f32::max)
}

/// Adds `bias` to every `bias.len()`-sized row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, &b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// Head outputs `heads[h]` (`[t, hd]` each) interleaved into `out` (`[t, heads·hd]`: row `i`
/// holds every head's row `i`), rows in parallel when there are many.
pub fn interleave_heads(heads: &[Vec<f32>], hd: usize, out: &mut [f32]) {
    let width = heads.len() * hd;
    par_rows(out, width, |r0, piece| {
        for (i, row) in piece.chunks_exact_mut(width).enumerate() {
            for (dst, head) in row.chunks_exact_mut(hd).zip(heads) {
                dst.copy_from_slice(&head[(r0 + i) * hd..][..hd]);
            }
        }
    });
}

/// Precomputed cos/sin for partial NeoX RoPE ("rotate half") over the first `n_rot` dims.
pub struct Rope {
    pub n_rot: usize,
    inv_freq: Vec<f64>,
}

impl Rope {
    pub fn new(n_rot: usize, theta: f32) -> Rope {
        let half = n_rot / 2;
        let inv_freq = (0..half)
            .map(|i| (theta as f64).powf(-(2.0 * i as f64) / n_rot as f64))
            .collect();
        Rope { n_rot, inv_freq }
    }

    /// Rotates one head vector at position `pos`: for j < n_rot/2,
    /// `y_j = x_j·c − x_{j+h}·s`, `y_{j+h} = x_{j+h}·c + x_j·s`; other dims pass through.
    pub fn apply(&self, head: &mut [f32], pos: usize) {
        self.apply_with(head, &self.cos_sin(pos));
    }

    /// Rotates every `head_dim`-sized head of each `width`-wide row of `x`, row `i` at position
    /// `pos0 + i`, then multiplies the heads by `scale` unless it is 1 (rows in parallel when
    /// there are many): the same bits as [`Rope::apply_with`] row by row.
    pub fn apply_rows(
        &self,
        x: &mut [f32],
        width: usize,
        head_dim: usize,
        pos0: usize,
        scale: f32,
    ) {
        par_rows(x, width, |r0, piece| {
            for (i, row) in piece.chunks_exact_mut(width).enumerate() {
                let cs = self.cos_sin(pos0 + r0 + i);
                for head in row.chunks_exact_mut(head_dim) {
                    self.apply_with(head, &cs);
                    if scale != 1.0 {
                        head.iter_mut().for_each(|v| *v *= scale);
                    }
                }
            }
        });
    }

    /// The `(cos, sin)` pairs of position `pos` (computed in f64, rounded to f32), to rotate
    /// every head of a position with [`Rope::apply_with`].
    pub fn cos_sin(&self, pos: usize) -> Vec<(f32, f32)> {
        self.inv_freq
            .iter()
            .map(|f| {
                let (s, c) = (pos as f64 * f).sin_cos();
                (c as f32, s as f32)
            })
            .collect()
    }

    /// [`Rope::apply`] with the pairs of [`Rope::cos_sin`].
    pub fn apply_with(&self, head: &mut [f32], cs: &[(f32, f32)]) {
        let half = self.n_rot / 2;
        for (j, &(c, s)) in cs.iter().enumerate().take(half) {
            let a = head[j];
            let b = head[j + half];
            head[j] = a * c - b * s;
            head[j + half] = b * c + a * s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf with ~1e-15 accuracy (W. J. Cody's rational approximations, as in libm).
    fn erf(x: f64) -> f64 {
        // Abramowitz-Stegun style series / continued fraction split at |x| = 2.
        let ax = x.abs();
        let r = if ax < 2.0 {
            // Maclaurin series: erf(x) = 2/√π Σ (-1)^n x^(2n+1) / (n! (2n+1))
            let x2 = ax * ax;
            let mut term = ax;
            let mut sum = ax;
            // converges in < 60 terms for |x| < 2; the cap also ends x = 0 (sum stays 0)
            for n in 1..100 {
                let n = n as f64;
                term *= -x2 / n;
                let add = term / (2.0 * n + 1.0);
                sum += add;
                if add.abs() <= 1e-17 * sum.abs() {
                    break;
                }
            }
            sum * std::f64::consts::FRAC_2_SQRT_PI
        } else {
            1.0 - erfc_cf(ax)
        };
        if x < 0.0 {
            -r
        } else {
            r
        }
    }

    /// erfc(x) for x ≥ 2 by its continued fraction (Lentz).
    fn erfc_cf(x: f64) -> f64 {
        // erfc(x) = exp(-x²)/√π · 1/(x + 1/2/(x + 1/(x + 3/2/(x + 2/(x + …)))))
        let tiny = 1e-300;
        let mut f = x;
        if f == 0.0 {
            f = tiny;
        }
        let mut c = f;
        let mut d = 0.0;
        for i in 1..200 {
            let a = i as f64 / 2.0;
            d = x + a * d;
            if d == 0.0 {
                d = tiny;
            }
            c = x + a / c;
            if c == 0.0 {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (-x * x).exp() / (f * std::f64::consts::PI.sqrt())
    }

    #[test]
    fn erf_matches_known_values() {
        // Values from standard tables.
        let cases = [
            (0.0, 0.0),
            (1e-300, 1.128_379_167_095_512_6e-300),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (3.0, 0.999_977_909_503_001_4),
            (-1.5, -0.966_105_146_475_310_7),
        ];
        for (x, want) in cases {
            assert!(
                (erf(x) - want).abs() < 1e-14,
                "erf({x}) = {} want {want}",
                erf(x)
            );
        }
    }

    /// GELU(z) in f64 from the reference series / continued fraction.
    fn gelu_erf_f64(z: f32) -> f64 {
        // Φ(z) = erfc(−z/√2)/2; the continued fraction avoids 1 − erf's cancellation
        let u = -z as f64 / std::f64::consts::SQRT_2;
        let erfc = if u < 2.0 { 1.0 - erf(u) } else { erfc_cf(u) };
        0.5 * z as f64 * erfc
    }

    #[test]
    fn gelu_erf_tracks_the_f64_reference() {
        // relative error, the negative tail included, down to where the result nears f32's
        // smallest normal numbers (z ≈ −13)
        let mut worst = (0f64, 0f32);
        for i in -130_000..=130_000 {
            let z = i as f32 * 1e-4;
            let want = gelu_erf_f64(z);
            let rel = (gelu_erf_value(z) as f64 - want).abs() / want.abs().max(1e-37);
            if rel > worst.0 {
                worst = (rel, z);
            }
        }
        assert!(
            worst.0 < 6e-7,
            "relative error {} at z = {}",
            worst.0,
            worst.1
        );
        assert_eq!(gelu_erf_value(0.0), 0.0);
        assert_eq!(gelu_erf_value(20.0), 20.0);
        assert!(gelu_erf_value(-20.0).abs() < 1e-36);
        assert!(gelu_erf_value(f32::NAN).is_nan());
        // over a large buffer (parallel path): the same bits as the element-wise function
        let mut big: Vec<f32> = (0..100_000).map(|i| (i as f32 - 50_000.0) * 1e-4).collect();
        let want: Vec<f32> = big.iter().map(|&z| gelu_erf_value(z)).collect();
        gelu_erf(&mut big);
        assert_eq!(big, want);
    }

    #[test]
    fn exp_f64_to_f32_tracks_libm() {
        let mut worst = 0f64;
        let mut x = -87.3f64;
        while x <= 88.3 {
            let want = x.exp();
            worst = worst.max((exp_f64_to_f32(x) as f64 - want).abs() / want);
            x += 0.000_731;
        }
        assert!(worst < 2.5e-7, "max relative error {worst}");
        assert_eq!(exp_f64_to_f32(0.0), 1.0);
        assert!(exp_f64_to_f32(f64::NAN).is_nan());
        // clamped like `exp_f32`: tiny (not zero) far below, finite far above
        assert!(exp_f64_to_f32(-1e6) > 0.0 && exp_f64_to_f32(-1e6) < 1e-37);
        assert!(exp_f64_to_f32(1e6).is_finite());
    }

    #[test]
    fn layer_norm_normalizes() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        layer_norm(&mut x, 4, &[1.0; 4], Some(&[0.5; 4]), 0.0);
        let mean: f32 = x.iter().sum::<f32>() / 4.0;
        assert!((mean - 0.5).abs() < 1e-6);
        assert!((x[0] - (0.5 - 1.341_640_8)).abs() < 1e-5);
    }

    #[test]
    fn rope_rotates_pairs_and_keeps_tail() {
        let rope = Rope::new(4, 10000.0);
        let mut h = vec![1.0, 0.0, 0.0, 1.0, 7.0];
        rope.apply(&mut h, 1);
        // pair (0, 2) at angle 1 rad, pair (1, 3) at angle 0.01 rad
        assert!((h[0] - 1f32.cos()).abs() < 1e-6);
        assert!((h[2] - 1f32.sin()).abs() < 1e-6);
        assert!((h[1] - -(0.01f32).sin()).abs() < 1e-6);
        assert!((h[3] - (0.01f32).cos()).abs() < 1e-6);
        assert_eq!(h[4], 7.0);
    }

    #[test]
    fn softmax_matches_f64_and_max_covers_every_lane() {
        for n in [1usize, 7, 16, 17, 257, 512] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.13)
                .collect();
            let want_max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max_f32(&x), want_max, "n={n}");
            let mut y = x.clone();
            softmax(&mut y);
            let m = want_max as f64;
            let z: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
            for (i, (&got, &v)) in y.iter().zip(&x).enumerate() {
                let want = (v as f64 - m).exp() / z;
                assert!(
                    (got as f64 - want).abs() <= 1e-6 * want + 1e-30,
                    "n={n} i={i}: {got} vs {want}"
                );
            }
        }
        // the maximum in the tail, or the lanes, and NaN ignored as by f32::max
        let mut x = vec![0.0f32; 35];
        x[34] = 3.0;
        assert_eq!(max_f32(&x), 3.0);
        x[5] = 4.0;
        x[6] = f32::NAN;
        assert_eq!(max_f32(&x), 4.0);
    }

    #[test]
    fn apply_into_equals_bias_then_apply() {
        let src: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.37).collect();
        let bias: Vec<f32> = (0..37).map(|i| (i % 5) as f32 * 0.25 - 0.5).collect();
        for act in [
            Activation::Identity,
            Activation::GeluTanh,
            Activation::GeluErf,
        ] {
            for b in [None, Some(&bias[..])] {
                let mut want: Vec<f32> = match b {
                    Some(b) => src.iter().zip(b).map(|(s, b)| s + b).collect(),
                    None => src.clone(),
                };
                act.apply(&mut want);
                let mut got = vec![f32::NAN; src.len()];
                act.apply_into(&src, b, &mut got);
                assert_eq!(got, want, "{act:?}, bias {}", b.is_some());
            }
        }
    }

    #[test]
    fn gelu_variants() {
        let mut a = vec![1.0f32, -2.0];
        gelu_erf(&mut a);
        assert!((a[0] - 0.841_344_7).abs() < 1e-6);
        assert!((a[1] - -0.045_500_26).abs() < 1e-6);
        let mut b = vec![1.0f32];
        gelu_tanh(&mut b);
        assert!((b[0] - 0.841_192).abs() < 1e-5);
    }

    #[test]
    fn exp_f32_and_gelu_tanh_track_f64() {
        let mut worst = 0f64;
        for i in -87_000..=88_000 {
            let x = i as f32 * 1e-3;
            let want = (x as f64).exp();
            worst = worst.max((exp_f32(x) as f64 - want).abs() / want);
        }
        assert!(worst < 3e-7, "exp_f32: relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1000.0) < 1e-37 && exp_f32(-1000.0) >= 0.0);
        assert!(exp_f32(f32::NAN).is_nan());

        let mut x: Vec<f32> = (0..200_000)
            .map(|i| (i as f32 - 100_000.0) * 1e-4)
            .collect();
        // (reference, relative tolerance): in the negative tail e^(−2u) is steep, so rounding
        // u to f32 alone costs about 2·|u|·2⁻²⁴ relative
        let want: Vec<(f64, f64)> = x
            .iter()
            .map(|&z| {
                let z = z as f64;
                let u = (2.0 / std::f64::consts::PI).sqrt() * (z + 0.044715 * z * z * z);
                // 0.5·z·(1 + tanh u) without the f64 cancellation of 1 + tanh in the tail
                (
                    z / (1.0 + (-2.0 * u).exp()),
                    5e-7 + 2.5e-7 * (2.0 * u).abs(),
                )
            })
            .collect();
        gelu_tanh(&mut x);
        for (a, (b, rel)) in x.iter().zip(&want) {
            assert!((*a as f64 - b).abs() <= rel * b.abs() + 1e-37, "{a} vs {b}");
        }
    }

    /// Deterministic values in about [−2, 2) (with a few large ones, so the norms' f64 sums
    /// matter).
    fn wavy(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|i| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let v = (state >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0;
                if i % 97 == 0 {
                    v * 300.0
                } else {
                    v
                }
            })
            .collect()
    }

    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn parallel_row_ops_equal_one_row_at_a_time() {
        // short (one piece, this thread) and long (parallel pieces, a last partial piece)
        for (rows, dim) in [(3, 40), (257, 1408), (70, 2560)] {
            let x = wavy(rows * dim, rows as u32);
            let (w, b) = (wavy(dim, 7), wavy(dim, 8));

            // layer_norm, layer_norm_into ≡ layer_norm_row per row
            let mut want = x.clone();
            for row in want.chunks_exact_mut(dim) {
                layer_norm_row(row, &w, Some(&b), 1e-6);
            }
            let mut got = x.clone();
            layer_norm(&mut got, dim, &w, Some(&b), 1e-6);
            assert_eq!(bits(&got), bits(&want), "layer_norm {rows}×{dim}");
            let mut into = vec![0.0; rows * dim];
            layer_norm_into(&x, &mut into, dim, &w, Some(&b), 1e-6);
            assert_eq!(bits(&into), bits(&want), "layer_norm_into {rows}×{dim}");

            // rms_norm ≡ its formula per row
            let mut want = x.clone();
            for row in want.chunks_exact_mut(dim) {
                let ms = sum_f64(row, |v| v * v) / dim as f64;
                let inv = (1.0 / (ms + 1e-5f32 as f64).sqrt()) as f32;
                for (v, &wv) in row.iter_mut().zip(&w) {
                    *v = *v * inv * wv;
                }
            }
            let mut got = x.clone();
            rms_norm(&mut got, dim, &w, 1e-5);
            assert_eq!(bits(&got), bits(&want), "rms_norm {rows}×{dim}");

            // residual sums in their order
            let (a, m) = (wavy(rows * dim, 11), wavy(rows * dim, 12));
            let mut got = x.clone();
            add_sum_assign(&mut got, &a, &m);
            let want: Vec<f32> = (0..x.len()).map(|i| x[i] + (a[i] + m[i])).collect();
            assert_eq!(bits(&got), bits(&want), "add_sum_assign {rows}×{dim}");
            let mut got = x.clone();
            add_assign(&mut got, &a);
            let want: Vec<f32> = (0..x.len()).map(|i| x[i] + a[i]).collect();
            assert_eq!(bits(&got), bits(&want), "add_assign {rows}×{dim}");

            // column ranges and head interleaving
            let half = dim / 2;
            let mut got = vec![0.0; rows * half];
            copy_columns(&x, dim, dim - half, &mut got, half);
            for i in 0..rows {
                assert_eq!(
                    got[i * half..(i + 1) * half],
                    x[i * dim + dim - half..(i + 1) * dim]
                );
            }
            let hd = 8;
            let heads: Vec<Vec<f32>> = (0..dim / hd)
                .map(|h| wavy(rows * hd, 100 + h as u32))
                .collect();
            let mut got = vec![0.0; rows * dim];
            interleave_heads(&heads, hd, &mut got);
            for (h, head) in heads.iter().enumerate() {
                for i in 0..rows {
                    assert_eq!(got[i * dim + h * hd..][..hd], head[i * hd..(i + 1) * hd]);
                }
            }

            // RoPE on whole rows ≡ apply_with head by head
            let rope = Rope::new(32, 10000.0);
            let (width, hd) = (dim / 80 * 80, 80);
            if width > 0 {
                let mut want = x[..rows * width].to_vec();
                for (i, row) in want.chunks_exact_mut(width).enumerate() {
                    let cs = rope.cos_sin(5 + i);
                    for head in row.chunks_exact_mut(hd) {
                        rope.apply_with(head, &cs);
                        head.iter_mut().for_each(|v| *v *= 0.125);
                    }
                }
                let mut got = x[..rows * width].to_vec();
                rope.apply_rows(&mut got, width, hd, 5, 0.125);
                assert_eq!(bits(&got), bits(&want), "apply_rows {rows}×{width}");
            }
        }
    }
}
