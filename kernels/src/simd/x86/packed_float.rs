//! Packed GEMM for float weights (F32, F16, BF16) × f32 activations with AVX-512, for many
//! activation rows: the vision tower's attention (f32 keys and values), F16 weight files, and
//! prompt attention over the f16 KV cache.
//!
//! The tiles of `avx512.rs` hold one accumulator per (weight row, activation row) with 16 k
//! values in its lanes, so every output ends in a horizontal sum, and the `k mod 16` tail runs
//! in scalar code (a third of the work at the ViT's head size 88). Here a tile of 16 or 32 weight
//! rows is converted to f32 and transposed, a chunk of [`KC`] values at a time, so that lane
//! `r` of packed vector `i` holds row `r`'s value `i`. Then each activation row is one FMA per
//! value, with the activation broadcast: lane `r` accumulates row `r`'s dot, with no
//! horizontal sum and no tail. [`COLS`] activation rows share each packed-vector load, and
//! tiles of 32 rows (two vectors) share each activation broadcast.
//!
//! Rounding: each chunk is summed in one f32 lane in order and the chunk sums are added to the
//! output, so the error stays within `(KC + k/KC)·2⁻²⁴·Σ|w·x|` of the exact dot.

use core::arch::x86_64::*;

use super::float::FloatW;
use super::packed::transpose8;
use crate::simd::GemmArgs;

/// Weight rows per packed vector (one f32 lane each); a tile holds `RT` ≤ 2 vectors per value.
const LANES: usize = 16;
/// Activation rows that share one pass over a packed chunk.
const COLS: usize = 8;
/// Values per packed chunk: 32 rows × 64 values × 4 bytes = 8 KiB, in L1 while every
/// activation row passes over it (and a bound on the in-order f32 sums).
pub(crate) const KC: usize = 64;

/// A packed chunk: value `i`, vector `v` of a tile at `(i·RT + v)·16`.
type Pack = [f32; KC * 2 * LANES];

/// Converts and transposes values `k0..k0 + kc` of rows `r0..r0 + nr` (`nr ≤ 16·RT`; rows past
/// `nr` repeat the last one) into `pack[(i·RT + v)·16 + r]` for row `16v + r`.
#[inline(always)]
unsafe fn pack_chunk<W: FloatW, const RT: usize>(
    t: &GemmArgs,
    r0: usize,
    nr: usize,
    k0: usize,
    kc: usize,
    pack: &mut Pack,
) {
    let mut rows = [t.w; 2 * LANES];
    for (r, row) in rows.iter_mut().enumerate().take(RT * LANES) {
        *row = t.w.add((r0 + r.min(nr - 1)) * t.w_stride + k0 * W::BYTES);
    }
    let kc8 = kc & !7;
    for i in (0..kc8).step_by(8) {
        for eighth in 0..2 * RT {
            let mut v = [_mm256_setzero_si256(); 8];
            for (j, vj) in v.iter_mut().enumerate() {
                *vj = _mm256_castps_si256(W::load8(rows[8 * eighth + j].add(i * W::BYTES)));
            }
            // vector j: the 8 rows' value i + j
            for (j, vj) in transpose8(v).iter().enumerate() {
                let dst = pack.as_mut_ptr().add((i + j) * RT * LANES + 8 * eighth);
                _mm256_storeu_ps(dst, _mm256_castsi256_ps(*vj));
            }
        }
    }
    for i in kc8..kc {
        for (r, row) in rows.iter().enumerate().take(RT * LANES) {
            pack[i * RT * LANES + r] = W::load1(row.add(i * W::BYTES));
        }
    }
}

/// `NC` activation rows from `c0` against a packed chunk of `RT` vectors per value (values
/// `k0..k0 + kc`): the chunk's sums are stored (`first`) or added to the outputs, rows
/// `0..nr`. Two vectors per value (32 rows) let each activation broadcast feed two FMAs: one
/// vector needs a load per FMA, more than the two load ports give.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn chunk_cols<const RT: usize, const NC: usize>(
    t: &GemmArgs,
    pack: &Pack,
    k0: usize,
    kc: usize,
    c0: usize,
    r0: usize,
    nr: usize,
    first: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); RT]; NC];
    let mut a = [core::ptr::null::<f32>(); NC];
    for (c, ac) in a.iter_mut().enumerate() {
        *ac = (t.a.add((c0 + c) * t.a_stride) as *const f32).add(k0);
    }
    for i in 0..kc {
        let mut w = [_mm512_setzero_ps(); RT];
        for (v, wv) in w.iter_mut().enumerate() {
            *wv = _mm512_loadu_ps(pack.as_ptr().add((i * RT + v) * LANES));
        }
        for c in 0..NC {
            let x = _mm512_set1_ps(a[c].add(i).read_unaligned());
            for v in 0..RT {
                acc[c][v] = _mm512_fmadd_ps(w[v], x, acc[c][v]);
            }
        }
    }
    for v in 0..RT {
        let lanes = nr.saturating_sub(v * LANES).min(LANES);
        let mask: __mmask16 = if lanes >= LANES {
            0xffff
        } else {
            (1u16 << lanes) - 1
        };
        for (c, acc_c) in acc.iter().enumerate() {
            let o = t.out.add((c0 + c) * t.ldo + r0 + v * LANES);
            let s = if first {
                acc_c[v]
            } else {
                _mm512_add_ps(_mm512_maskz_loadu_ps(mask, o), acc_c[v])
            };
            _mm512_mask_storeu_ps(o, mask, s);
        }
    }
}

/// Rows `r0..r0 + nr` (`nr ≤ 16·RT`) against every activation row.
#[inline(always)]
unsafe fn tile<W: FloatW, const RT: usize>(t: &GemmArgs, r0: usize, nr: usize, pack: &mut Pack) {
    let k = t.nb;
    for k0 in (0..k).step_by(KC) {
        let kc = (k - k0).min(KC);
        pack_chunk::<W, RT>(t, r0, nr, k0, kc, pack);
        let first = k0 == 0;
        let mut c0 = 0;
        while c0 + COLS <= t.m {
            chunk_cols::<RT, COLS>(t, pack, k0, kc, c0, r0, nr, first);
            c0 += COLS;
        }
        match t.m - c0 {
            0 => {}
            1 => chunk_cols::<RT, 1>(t, pack, k0, kc, c0, r0, nr, first),
            2 => chunk_cols::<RT, 2>(t, pack, k0, kc, c0, r0, nr, first),
            3 => chunk_cols::<RT, 3>(t, pack, k0, kc, c0, r0, nr, first),
            4 => chunk_cols::<RT, 4>(t, pack, k0, kc, c0, r0, nr, first),
            5 => chunk_cols::<RT, 5>(t, pack, k0, kc, c0, r0, nr, first),
            6 => chunk_cols::<RT, 6>(t, pack, k0, kc, c0, r0, nr, first),
            _ => chunk_cols::<RT, 7>(t, pack, k0, kc, c0, r0, nr, first),
        }
    }
}

/// The whole `n × m` product (see [`GemmArgs`]; `nb` is `k` ≥ 1, activations are f32 rows):
/// tiles of 32 rows, and one of 16 for a remainder that fits in one vector.
#[inline(always)]
pub(crate) unsafe fn gemm<W: FloatW>(t: &GemmArgs) -> bool {
    let mut pack: Pack = [0f32; KC * 2 * LANES];
    let mut r0 = 0;
    while r0 < t.n {
        let nr = (t.n - r0).min(2 * LANES);
        if nr > LANES {
            tile::<W, 2>(t, r0, nr, &mut pack);
        } else {
            tile::<W, 1>(t, r0, nr, &mut pack);
        }
        r0 += nr;
    }
    true
}
