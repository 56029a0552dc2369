//! Packed GEMM for many activation rows (prompt processing, the vision tower) with AVX-512 VNNI,
//! for the 32-element formats whose block term is `scale · Σ(q − o)·a` (Q4_0, Q5_0, Q8_0).
//!
//! The tiles of `legacy.rs` unpack each weight block again for every 4 activation rows and
//! reduce eight row vectors horizontally per block. Here a tile of 16 weight rows is unpacked
//! once into a scratch buffer, transposed so that i32 lane `r` of group vector `g` holds row
//! `r`'s values `4g..4g+4` of a block (unsigned, as `vpdpbusd` wants them). Then, for every
//! activation row, a block is 8 `vpdpbusd` of a group vector with the activation's 4 bytes
//! broadcast: lane `r` ends up with row `r`'s integer dot, with no horizontal reduction, and
//! the f32 scale arithmetic runs lane-wise in the reference's order, so every output is still
//! bit-identical to the scalar `vec_dot`. Eight activation rows share each group-vector load.
//!
//! The offset `o` (8 for Q4_0, 16 for Q5_0; 128 for Q8_0, whose signed values are moved to
//! unsigned by `+128`) is removed through the accumulator's start value `−o·Σa` per block,
//! computed once per activation block.

use core::arch::x86_64::*;

use super::legacy::{self, Legacy};
use crate::simd::GemmArgs;

/// Weight rows per packed tile (one i32 / f32 lane each).
const ROWS: usize = 16;
/// Activation rows that share one pass over a packed block.
pub(crate) const COLS: usize = 8;

/// A format for the packed path: the legacy layout plus its lane-wise block update.
pub(crate) trait Packed: Legacy {
    /// `acc` plus this block's term for 16 rows, in the reference's operation order.
    unsafe fn update16(acc: __m512, sumi: __m512i, dw: __m512, da: __m512) -> __m512;
}

impl Packed for legacy::Q4_0 {
    #[inline(always)]
    unsafe fn update16(acc: __m512, sumi: __m512i, dw: __m512, da: __m512) -> __m512 {
        // sumf += sumi·d_w·d_a  (left to right)
        let t = _mm512_mul_ps(_mm512_cvtepi32_ps(sumi), dw);
        _mm512_add_ps(acc, _mm512_mul_ps(t, da))
    }
}

impl Packed for legacy::Q5_0 {
    #[inline(always)]
    unsafe fn update16(acc: __m512, sumi: __m512i, dw: __m512, da: __m512) -> __m512 {
        // sumf += (d_w·d_a)·sumi
        let dd = _mm512_mul_ps(dw, da);
        _mm512_add_ps(acc, _mm512_mul_ps(dd, _mm512_cvtepi32_ps(sumi)))
    }
}

impl Packed for legacy::Q8_0 {
    #[inline(always)]
    unsafe fn update16(acc: __m512, sumi: __m512i, dw: __m512, da: __m512) -> __m512 {
        // sumf += sumi·(d_w·d_a)
        let dd = _mm512_mul_ps(dw, da);
        _mm512_add_ps(acc, _mm512_mul_ps(_mm512_cvtepi32_ps(sumi), dd))
    }
}

/// Transposes 8 vectors of 8 i32 lanes: lane `r` of output `g` is lane `g` of input `r`.
#[inline(always)]
pub(crate) unsafe fn transpose8(v: [__m256i; 8]) -> [__m256i; 8] {
    let t0 = _mm256_unpacklo_epi32(v[0], v[1]);
    let t1 = _mm256_unpackhi_epi32(v[0], v[1]);
    let t2 = _mm256_unpacklo_epi32(v[2], v[3]);
    let t3 = _mm256_unpackhi_epi32(v[2], v[3]);
    let t4 = _mm256_unpacklo_epi32(v[4], v[5]);
    let t5 = _mm256_unpackhi_epi32(v[4], v[5]);
    let t6 = _mm256_unpacklo_epi32(v[6], v[7]);
    let t7 = _mm256_unpackhi_epi32(v[6], v[7]);
    // per 128-bit half: u0 = lanes (0 | 4) of rows 0..4, u1 = (1 | 5), u2 = (2 | 6), u3 = (3 | 7)
    let u0 = _mm256_unpacklo_epi64(t0, t2);
    let u1 = _mm256_unpackhi_epi64(t0, t2);
    let u2 = _mm256_unpacklo_epi64(t1, t3);
    let u3 = _mm256_unpackhi_epi64(t1, t3);
    let u4 = _mm256_unpacklo_epi64(t4, t6);
    let u5 = _mm256_unpackhi_epi64(t4, t6);
    let u6 = _mm256_unpacklo_epi64(t5, t7);
    let u7 = _mm256_unpackhi_epi64(t5, t7);
    [
        _mm256_permute2x128_si256::<0x20>(u0, u4),
        _mm256_permute2x128_si256::<0x20>(u1, u5),
        _mm256_permute2x128_si256::<0x20>(u2, u6),
        _mm256_permute2x128_si256::<0x20>(u3, u7),
        _mm256_permute2x128_si256::<0x31>(u0, u4),
        _mm256_permute2x128_si256::<0x31>(u1, u5),
        _mm256_permute2x128_si256::<0x31>(u2, u6),
        _mm256_permute2x128_si256::<0x31>(u3, u7),
    ]
}

/// The 32 unsigned values of a weight block (Q8_0: `q + 128`).
#[inline(always)]
unsafe fn unsigned_values<F: Legacy>(blk: *const u8) -> __m256i {
    let v = F::values(blk);
    if F::SIGNED {
        _mm256_xor_si256(v, _mm256_set1_epi8(-128))
    } else {
        v
    }
}

/// The offset removed through the accumulator start.
pub(crate) const fn offset<F: Legacy>() -> i32 {
    if F::SIGNED {
        128
    } else {
        F::OFFSET
    }
}

/// Unpacks rows `r0..r0+nr` (rows past `nr` repeat the last one) into `wq` (`nb × 8` group
/// vectors) and `wd` (`nb` vectors of the rows' scales as f32).
#[inline(always)]
pub(crate) unsafe fn pack_tile<F: Legacy>(
    t: &GemmArgs,
    r0: usize,
    nr: usize,
    wq: &mut [__m512i],
    wd: &mut [__m512],
) {
    let mut rows = [t.w; ROWS];
    for (r, row) in rows.iter_mut().enumerate() {
        *row = t.w.add((r0 + r.min(nr - 1)) * t.w_stride);
    }
    for b in 0..t.nb {
        let off = b * F::W_BYTES;
        let mut lo = [_mm256_setzero_si256(); 8];
        let mut hi = [_mm256_setzero_si256(); 8];
        let mut d = [0u16; ROWS];
        for r in 0..8 {
            lo[r] = unsigned_values::<F>(rows[r].add(off));
            hi[r] = unsigned_values::<F>(rows[r + 8].add(off));
        }
        for (r, dr) in d.iter_mut().enumerate() {
            *dr = (rows[r].add(off) as *const u16).read_unaligned();
        }
        let lo = transpose8(lo);
        let hi = transpose8(hi);
        for g in 0..8 {
            wq[b * 8 + g] = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo[g]), hi[g]);
        }
        wd[b] = _mm512_cvtph_ps(_mm256_loadu_si256(d.as_ptr() as *const __m256i));
    }
}

/// `NC` activation rows starting at `c0` against one packed tile; stores lanes `0..nr`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile_cols<F: Packed, const NC: usize>(
    t: &GemmArgs,
    wq: &[__m512i],
    wd: &[__m512],
    start: &[i32],
    ad: &[f32],
    c0: usize,
    r0: usize,
    nr: usize,
) {
    let mut acc = [_mm512_setzero_ps(); NC];
    let mut a = [t.a; NC];
    for (c, ac) in a.iter_mut().enumerate() {
        *ac = t.a.add((c0 + c) * t.a_stride + F::A_QS);
    }
    for b in 0..t.nb {
        let mut sumi = [_mm512_setzero_si512(); NC];
        for c in 0..NC {
            sumi[c] = _mm512_set1_epi32(start[(c0 + c) * t.nb + b]);
        }
        let ab = b * F::A_BYTES;
        for g in 0..8 {
            let w = wq[b * 8 + g];
            for c in 0..NC {
                let av = (a[c].add(ab + 4 * g) as *const i32).read_unaligned();
                sumi[c] = _mm512_dpbusd_epi32(sumi[c], w, _mm512_set1_epi32(av));
            }
        }
        let dw = wd[b];
        for c in 0..NC {
            let da = _mm512_set1_ps(ad[(c0 + c) * t.nb + b]);
            acc[c] = F::update16(acc[c], sumi[c], dw, da);
        }
    }
    let mask: __mmask16 = if nr >= ROWS { 0xffff } else { (1u16 << nr) - 1 };
    for (c, acc_c) in acc.iter().enumerate() {
        _mm512_mask_storeu_ps(t.out.add((c0 + c) * t.ldo + r0), mask, *acc_c);
    }
}

/// Per activation row and block: the integer accumulator's start `−o·Σa` (which removes the
/// weights' offset) and the scale as f32, `m × nb` each. Kept in memory, the start is a
/// broadcast load in the tile loop instead of a multiply and a register broadcast.
#[inline(always)]
pub(crate) unsafe fn activation_block_sums<F: Legacy>(t: &GemmArgs) -> (Vec<i32>, Vec<f32>) {
    let nb = t.nb;
    let o = offset::<F>();
    let mut start = vec![0i32; t.m * nb];
    let mut ad = vec![0f32; t.m * nb];
    for c in 0..t.m {
        let row = t.a.add(c * t.a_stride);
        for b in 0..nb {
            let blk = row.add(b * F::A_BYTES);
            let v = _mm256_loadu_si256(blk.add(F::A_QS) as *const __m256i);
            start[c * nb + b] = -o * super::hsum_i8(v);
            ad[c * nb + b] = super::load_f16(blk);
        }
    }
    (start, ad)
}

/// Every activation row against one packed tile (rows `r0..r0+nr`), [`COLS`] at a time.
#[inline(always)]
pub(crate) unsafe fn tile_all_cols<F: Packed>(
    t: &GemmArgs,
    wq: &[__m512i],
    wd: &[__m512],
    start: &[i32],
    ad: &[f32],
    r0: usize,
    nr: usize,
) {
    let mut c0 = 0;
    while c0 + COLS <= t.m {
        tile_cols::<F, COLS>(t, wq, wd, start, ad, c0, r0, nr);
        c0 += COLS;
    }
    match t.m - c0 {
        0 => {}
        1 => tile_cols::<F, 1>(t, wq, wd, start, ad, c0, r0, nr),
        2 => tile_cols::<F, 2>(t, wq, wd, start, ad, c0, r0, nr),
        3 => tile_cols::<F, 3>(t, wq, wd, start, ad, c0, r0, nr),
        4 => tile_cols::<F, 4>(t, wq, wd, start, ad, c0, r0, nr),
        5 => tile_cols::<F, 5>(t, wq, wd, start, ad, c0, r0, nr),
        6 => tile_cols::<F, 6>(t, wq, wd, start, ad, c0, r0, nr),
        _ => tile_cols::<F, 7>(t, wq, wd, start, ad, c0, r0, nr),
    }
}

/// The whole `n × m` product (see [`GemmArgs`]); never declines.
#[inline(always)]
pub(crate) unsafe fn gemm<F: Packed>(t: &GemmArgs) -> bool {
    let (start, ad) = activation_block_sums::<F>(t);
    let mut wq = vec![_mm512_setzero_si512(); t.nb * 8];
    let mut wd = vec![_mm512_setzero_ps(); t.nb];
    for r0 in (0..t.n).step_by(ROWS) {
        let nr = (t.n - r0).min(ROWS);
        pack_tile::<F>(t, r0, nr, &mut wq, &mut wd);
        tile_all_cols::<F>(t, &wq, &wd, &start, &ad, r0, nr);
    }
    true
}
