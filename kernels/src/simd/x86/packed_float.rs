//! Packed GEMM for float weights (F32, F16, BF16) × f32 activations with AVX-512, for many
//! activation rows: the vision tower's attention (f32 keys and values), F16 weight files, and
//! prompt attention over the f16 KV cache.
//!
//! The tiles of `avx512.rs` hold one accumulator per (weight row, activation row) with 16 k
//! values in its lanes, so every output ends in a horizontal sum, and the `k mod 16` tail runs
//! in scalar code (a third of the work at the ViT's head size 88). Here a tile of 16 weight
//! rows is converted to f32 and transposed, a chunk of [`KC`] values at a time, so that lane
//! `r` of packed vector `i` holds row `r`'s value `i`. Then each activation row is one FMA per
//! value, with the activation broadcast: lane `r` accumulates row `r`'s dot, with no
//! horizontal sum and no tail. [`COLS`] activation rows share each packed-vector load.
//!
//! Rounding: each chunk is summed in one f32 lane in order and the chunk sums are added to the
//! output, so the error stays within `(KC + k/KC)·2⁻²⁴·Σ|w·x|` of the exact dot.

use core::arch::x86_64::*;

use super::float::FloatW;
use super::packed::transpose8;
use crate::simd::GemmArgs;

/// Weight rows per packed tile (one f32 lane each).
const ROWS: usize = 16;
/// Activation rows that share one pass over a packed chunk.
const COLS: usize = 8;
/// Values per packed chunk: 16 rows × 64 values × 4 bytes = 4 KiB, in L1 while every
/// activation row passes over it (and a bound on the in-order f32 sums).
pub(crate) const KC: usize = 64;

/// Converts and transposes values `k0..k0 + kc` of rows `r0..r0 + nr` (rows past `nr` repeat
/// the last one) into `pack[i·16 + r]`.
#[inline(always)]
unsafe fn pack_chunk<W: FloatW>(
    t: &GemmArgs,
    r0: usize,
    nr: usize,
    k0: usize,
    kc: usize,
    pack: &mut [f32; KC * ROWS],
) {
    let mut rows = [t.w; ROWS];
    for (r, row) in rows.iter_mut().enumerate() {
        *row = t.w.add((r0 + r.min(nr - 1)) * t.w_stride + k0 * W::BYTES);
    }
    let kc8 = kc & !7;
    for i in (0..kc8).step_by(8) {
        for half in 0..2 {
            let mut v = [_mm256_setzero_si256(); 8];
            for (j, vj) in v.iter_mut().enumerate() {
                *vj = _mm256_castps_si256(W::load8(rows[8 * half + j].add(i * W::BYTES)));
            }
            // vector j: the 8 rows' value i + j
            for (j, vj) in transpose8(v).iter().enumerate() {
                let dst = pack.as_mut_ptr().add((i + j) * ROWS + 8 * half);
                _mm256_storeu_ps(dst, _mm256_castsi256_ps(*vj));
            }
        }
    }
    for i in kc8..kc {
        for (r, row) in rows.iter().enumerate() {
            pack[i * ROWS + r] = W::load1(row.add(i * W::BYTES));
        }
    }
}

/// `NC` activation rows from `c0` against a packed chunk (values `k0..k0 + kc`): the chunk's
/// sums are stored (`first`) or added to the outputs, lanes `0..nr`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn chunk_cols<const NC: usize>(
    t: &GemmArgs,
    pack: &[f32; KC * ROWS],
    k0: usize,
    kc: usize,
    c0: usize,
    r0: usize,
    nr: usize,
    first: bool,
) {
    let mut acc = [_mm512_setzero_ps(); NC];
    let mut a = [core::ptr::null::<f32>(); NC];
    for (c, ac) in a.iter_mut().enumerate() {
        *ac = (t.a.add((c0 + c) * t.a_stride) as *const f32).add(k0);
    }
    for i in 0..kc {
        let w = _mm512_loadu_ps(pack.as_ptr().add(i * ROWS));
        for c in 0..NC {
            acc[c] = _mm512_fmadd_ps(w, _mm512_set1_ps(a[c].add(i).read_unaligned()), acc[c]);
        }
    }
    let mask: __mmask16 = if nr >= ROWS { 0xffff } else { (1u16 << nr) - 1 };
    for (c, acc_c) in acc.iter().enumerate() {
        let o = t.out.add((c0 + c) * t.ldo + r0);
        let v = if first {
            *acc_c
        } else {
            _mm512_add_ps(_mm512_maskz_loadu_ps(mask, o), *acc_c)
        };
        _mm512_mask_storeu_ps(o, mask, v);
    }
}

/// The whole `n × m` product (see [`GemmArgs`]; `nb` is `k` ≥ 1, activations are f32 rows).
#[inline(always)]
pub(crate) unsafe fn gemm<W: FloatW>(t: &GemmArgs) -> bool {
    let k = t.nb;
    let mut pack = [0f32; KC * ROWS];
    for r0 in (0..t.n).step_by(ROWS) {
        let nr = (t.n - r0).min(ROWS);
        for k0 in (0..k).step_by(KC) {
            let kc = (k - k0).min(KC);
            pack_chunk::<W>(t, r0, nr, k0, kc, &mut pack);
            let first = k0 == 0;
            let mut c0 = 0;
            while c0 + COLS <= t.m {
                chunk_cols::<COLS>(t, &pack, k0, kc, c0, r0, nr, first);
                c0 += COLS;
            }
            match t.m - c0 {
                0 => {}
                1 => chunk_cols::<1>(t, &pack, k0, kc, c0, r0, nr, first),
                2 => chunk_cols::<2>(t, &pack, k0, kc, c0, r0, nr, first),
                3 => chunk_cols::<3>(t, &pack, k0, kc, c0, r0, nr, first),
                4 => chunk_cols::<4>(t, &pack, k0, kc, c0, r0, nr, first),
                5 => chunk_cols::<5>(t, &pack, k0, kc, c0, r0, nr, first),
                6 => chunk_cols::<6>(t, &pack, k0, kc, c0, r0, nr, first),
                _ => chunk_cols::<7>(t, &pack, k0, kc, c0, r0, nr, first),
            }
        }
    }
    true
}
