//! AVX2 products on the Q4_0x16 repacked layout of [`crate::repack`], for CPUs without
//! AVX-512 (most laptops).
//!
//! In the layout, i32 lane `r` of a block's 64-byte chunk holds row `r`'s 4 values, so each
//! 32-byte half of a chunk is 8 rows, one per i32 lane of a `ymm`. `maddubs` of a half with the
//! activation's 4 bytes broadcast leaves each row's two pair sums in that row's own lane: unlike
//! the file layout's tiles (`legacy.rs`), nothing has to be summed across lanes, which was about
//! a third of their work. Q4_0's pair sums stay within ±3840 (values 0..=15, activation bytes
//! −128..=127), so a block's 8 groups add up in i16 (at most ±30720) before one `madd` widens
//! them to i32: 8 `maddubs`, 8 `add` and one `madd` per block, 8 rows and activation row.
//!
//! The offset 8 is removed through the accumulator's start (`−8·Σa`, per activation block) and
//! the scale update is the reference's (`sumi·d_w` then `·d_a`, no FMA), so every output is
//! bit-identical to the scalar `vec_dot`.

use core::arch::x86_64::*;

use super::legacy::{self, Legacy};
use super::{packed, store_rows};
use crate::repack::GROUP_ROWS;
use crate::simd::GemmArgs;

/// Activation rows per pass over a group's blocks (each block half is unpacked once per pass).
const COLS: usize = 4;

/// Bytes of a block's values for the 16 rows (4 chunks of 64).
const QS_BYTES: usize = 256;

/// How far ahead the weights are prefetched into L2, as in the AVX-512 kernel (`repacked.rs`).
const PREFETCH_BYTES: usize = 16 << 10;

/// The whole product on a Q4_0x16 matrix (see [`GemmArgs`]; `t.w` is the first group).
#[inline(always)]
pub(crate) unsafe fn gemm_q4_0(t: &GemmArgs) -> bool {
    let (start, ad) = packed::activation_block_sums::<legacy::Q4_0>(t);
    for (gi, r0) in (0..t.n).step_by(GROUP_ROWS).enumerate() {
        let nr = (t.n - r0).min(GROUP_ROWS);
        let group = t.w.add(gi * t.w_stride);
        let mut c0 = 0;
        while c0 + COLS <= t.m {
            group_cols::<COLS>(t, group, &start, &ad, c0, r0, nr);
            c0 += COLS;
        }
        match t.m - c0 {
            0 => {}
            1 => group_cols::<1>(t, group, &start, &ad, c0, r0, nr),
            2 => group_cols::<2>(t, group, &start, &ad, c0, r0, nr),
            _ => group_cols::<3>(t, group, &start, &ad, c0, r0, nr),
        }
    }
    true
}

/// Activation rows `c0..c0+NC` against one group (rows `r0..r0+nr`): both 8-row halves, block
/// by block.
#[inline(always)]
unsafe fn group_cols<const NC: usize>(
    t: &GemmArgs,
    group: *const u8,
    start: &[i32],
    ad: &[f32],
    c0: usize,
    r0: usize,
    nr: usize,
) {
    let nb = t.nb;
    let mask = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    // rows 8..16 exist only when the group has more than 8 (the layout repeats the last row
    // past the end, so computing them would be safe, but it is wasted work)
    let halves = nr.div_ceil(8);
    let mut acc = [[_mm256_setzero_ps(); NC]; 2];
    let a: [*const u8; NC] =
        core::array::from_fn(|c| t.a.add((c0 + c) * t.a_stride + legacy::Q4_0::A_QS));
    for b in 0..nb {
        let qs = group.add(nb * 32 + b * QS_BYTES);
        // the same lines of the block 16 KiB ahead, into L2 (see `repacked.rs`)
        let ahead = qs.wrapping_add(PREFETCH_BYTES);
        for line in 0..QS_BYTES / 64 {
            _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(64 * line) as *const i8);
        }
        if b % 2 == 0 {
            let s_ahead = group.wrapping_add((b + PREFETCH_BYTES / QS_BYTES) * 32);
            _mm_prefetch::<_MM_HINT_T1>(s_ahead as *const i8);
        }
        for (h, acc_h) in acc.iter_mut().enumerate().take(halves) {
            // group g = values 4g..4g+4 of the half's 8 rows: low nibbles of chunk g, then
            // the high ones
            let mut w = [_mm256_setzero_si256(); 8];
            for c in 0..4 {
                let q = _mm256_loadu_si256(qs.add(64 * c + 32 * h) as *const __m256i);
                w[c] = _mm256_and_si256(q, mask);
                w[c + 4] = _mm256_and_si256(_mm256_srli_epi16::<4>(q), mask);
            }
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(group.add(b * 32 + 16 * h) as *const _));
            for (c, acc_c) in acc_h.iter_mut().enumerate() {
                let ab = a[c].add(b * legacy::Q4_0::A_BYTES);
                let mut pairs = _mm256_setzero_si256();
                for (g, wg) in w.iter().enumerate() {
                    let av = _mm256_set1_epi32((ab.add(4 * g) as *const i32).read_unaligned());
                    pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(*wg, av));
                }
                let i = (c0 + c) * nb + b;
                let sumi =
                    _mm256_add_epi32(_mm256_set1_epi32(start[i]), _mm256_madd_epi16(pairs, ones));
                // sumf += sumi·d_w·d_a  (left to right, as `legacy::Q4_0::update`)
                let s = _mm256_mul_ps(_mm256_cvtepi32_ps(sumi), dw);
                *acc_c = _mm256_add_ps(*acc_c, _mm256_mul_ps(s, _mm256_set1_ps(ad[i])));
            }
        }
    }
    for (h, acc_h) in acc.iter().enumerate().take(halves) {
        for (c, acc_c) in acc_h.iter().enumerate() {
            store_rows(t.out.add((c0 + c) * t.ldo + r0 + 8 * h), *acc_c, nr - 8 * h);
        }
    }
}
