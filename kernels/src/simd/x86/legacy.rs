//! Tiles for the 32-element formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 × Q8_0 / Q8_1).
//!
//! Eight weight rows per tile, one f32 lane per row: per block, the eight rows' integer dots
//! with an activation block are reduced to one vector (lane r = row r), then the scale
//! arithmetic runs lane-wise in exactly the order of the reference `vec_dot_*` (no FMA), so every
//! output is bit-identical to it. Each weight block is unpacked once and used for all (≤ 4)
//! activation rows of the tile.
//!
//! Unsigned weights (4/5-bit values stored with an offset) go straight into `u8 × i8` dots and
//! the offset is removed through the accumulator: every row's dot starts from `−o·a` summed per
//! 4-byte group, computed once per activation block (`Σ(q − o)·a = −Σo·a + Σq·a`). Q8_0 weights
//! are signed: AVX2 moves their sign onto the activation (`|w| × sign(a, w)`), VNNI adds 128 and
//! starts from `−128·a`.

use core::arch::x86_64::*;

use super::{f16_hi_to_f32, f16_lo_to_f32, reduce8, store_rows, Isa};
use crate::simd::{TileArgs, TILE_ROWS};

/// One 32-element weight format.
pub(crate) trait Legacy {
    /// Bytes of a weight block.
    const W_BYTES: usize;
    /// Bytes of an activation block (Q8_0: 34, Q8_1: 36) and the offset of its 32 values.
    const A_BYTES: usize;
    const A_QS: usize;
    /// The offset `o` of the stored values (`x ∝ q − o`); 0 for the formats with a min.
    const OFFSET: i32;
    /// Whether the values are signed bytes (Q8_0).
    const SIGNED: bool;
    /// The 32 values in element order (unsigned with offset, or signed).
    unsafe fn values(blk: *const u8) -> __m256i;
    /// `acc` plus this block's term, lane-wise for 8 rows, in the reference's operation order.
    /// `sumi`: integer dots; `head`: each row's first 4 block bytes (f16 `d`, then f16 `m` or
    /// data); `a_blk`: the activation block.
    unsafe fn update(acc: __m256, sumi: __m256i, head: __m256i, a_blk: *const u8) -> __m256;
}

/// 16 bytes of nibbles → the 16 low nibbles, then the 16 high nibbles.
#[inline(always)]
unsafe fn nibbles(qs: *const u8) -> __m256i {
    // both halves hold the 16 bytes; the high half is shifted right by 4 (bits that cross
    // into a byte from its neighbour land in the masked-off high nibble)
    let x = _mm256_broadcastsi128_si256(_mm_loadu_si128(qs as *const __m128i));
    let both = _mm256_srlv_epi64(x, _mm256_setr_epi64x(0, 0, 4, 4));
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// Bit j of the little-endian u32 at `qh` → 0x10 in byte j.
#[inline(always)]
unsafe fn fifth_bits(qh: *const u8) -> __m256i {
    let bits = _mm256_set1_epi32((qh as *const i32).read_unaligned());
    let spread = _mm256_shuffle_epi8(
        bits,
        _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        ),
    );
    let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, mask), mask);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Activation block scale `d` (f16 at offset 0), broadcast.
#[inline(always)]
unsafe fn act_d(a_blk: *const u8) -> __m256 {
    let h = (a_blk as *const i16).read_unaligned();
    _mm256_cvtph_ps(_mm_set1_epi16(h))
}

pub(crate) struct Q4_0;
pub(crate) struct Q4_1;
pub(crate) struct Q5_0;
pub(crate) struct Q5_1;
pub(crate) struct Q8_0;

impl Legacy for Q4_0 {
    const W_BYTES: usize = 18;
    const A_BYTES: usize = 34;
    const A_QS: usize = 2;
    const OFFSET: i32 = 8;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn values(blk: *const u8) -> __m256i {
        nibbles(blk.add(2))
    }
    #[inline(always)]
    unsafe fn update(acc: __m256, sumi: __m256i, head: __m256i, a_blk: *const u8) -> __m256 {
        // sumf += sumi·d_w·d_a  (left to right)
        let t = _mm256_mul_ps(_mm256_cvtepi32_ps(sumi), f16_lo_to_f32(head));
        _mm256_add_ps(acc, _mm256_mul_ps(t, act_d(a_blk)))
    }
}

impl Legacy for Q5_0 {
    const W_BYTES: usize = 22;
    const A_BYTES: usize = 34;
    const A_QS: usize = 2;
    const OFFSET: i32 = 16;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn values(blk: *const u8) -> __m256i {
        _mm256_or_si256(nibbles(blk.add(6)), fifth_bits(blk.add(2)))
    }
    #[inline(always)]
    unsafe fn update(acc: __m256, sumi: __m256i, head: __m256i, a_blk: *const u8) -> __m256 {
        // sumf += (d_w·d_a)·sumi
        let dd = _mm256_mul_ps(f16_lo_to_f32(head), act_d(a_blk));
        _mm256_add_ps(acc, _mm256_mul_ps(dd, _mm256_cvtepi32_ps(sumi)))
    }
}

impl Legacy for Q8_0 {
    const W_BYTES: usize = 34;
    const A_BYTES: usize = 34;
    const A_QS: usize = 2;
    const OFFSET: i32 = 0;
    const SIGNED: bool = true;
    #[inline(always)]
    unsafe fn values(blk: *const u8) -> __m256i {
        _mm256_loadu_si256(blk.add(2) as *const __m256i)
    }
    #[inline(always)]
    unsafe fn update(acc: __m256, sumi: __m256i, head: __m256i, a_blk: *const u8) -> __m256 {
        // sumf += sumi·(d_w·d_a)
        let dd = _mm256_mul_ps(f16_lo_to_f32(head), act_d(a_blk));
        _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(sumi), dd))
    }
}

/// `sumf += (d_w·d_a)·sumi + m_w·s_a` (Q4_1 and Q5_1 × Q8_1).
#[inline(always)]
unsafe fn update_with_min(acc: __m256, sumi: __m256i, head: __m256i, a_blk: *const u8) -> __m256 {
    let dd = _mm256_mul_ps(f16_lo_to_f32(head), act_d(a_blk));
    let s = (a_blk.add(2) as *const i16).read_unaligned();
    let ms = _mm256_mul_ps(f16_hi_to_f32(head), _mm256_cvtph_ps(_mm_set1_epi16(s)));
    let term = _mm256_add_ps(_mm256_mul_ps(dd, _mm256_cvtepi32_ps(sumi)), ms);
    _mm256_add_ps(acc, term)
}

impl Legacy for Q4_1 {
    const W_BYTES: usize = 20;
    const A_BYTES: usize = 36;
    const A_QS: usize = 4;
    const OFFSET: i32 = 0;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn values(blk: *const u8) -> __m256i {
        nibbles(blk.add(4))
    }
    #[inline(always)]
    unsafe fn update(acc: __m256, sumi: __m256i, head: __m256i, a_blk: *const u8) -> __m256 {
        update_with_min(acc, sumi, head, a_blk)
    }
}

impl Legacy for Q5_1 {
    const W_BYTES: usize = 24;
    const A_BYTES: usize = 36;
    const A_QS: usize = 4;
    const OFFSET: i32 = 0;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn values(blk: *const u8) -> __m256i {
        _mm256_or_si256(nibbles(blk.add(8)), fifth_bits(blk.add(4)))
    }
    #[inline(always)]
    unsafe fn update(acc: __m256, sumi: __m256i, head: __m256i, a_blk: *const u8) -> __m256 {
        update_with_min(acc, sumi, head, a_blk)
    }
}

#[inline(always)]
unsafe fn tile_nc<I: Isa, F: Legacy, const NC: usize>(t: &TileArgs) {
    // rows past nr repeat the last row; their lanes are not stored
    let mut rows = [t.w; 8];
    for (r, row) in rows.iter_mut().enumerate() {
        *row = t.w.add(r.min(t.nr - 1) * t.w_stride);
    }
    // Q8_0 under VNNI: w + 128 is unsigned, remove 128·a
    let offset = if F::SIGNED {
        if I::WIDE_U8 {
            128
        } else {
            0
        }
    } else {
        F::OFFSET
    };
    let zero = _mm256_setzero_si256();
    let offset_bytes = _mm256_set1_epi8(offset as u8 as i8);
    let mut acc = [_mm256_setzero_ps(); NC];
    for b in 0..t.nb {
        let boff = b * F::W_BYTES;
        // each row's first 4 block bytes (scales); plain loads beat a gather on Zen 4
        let rd = |r: usize| (rows[r].add(boff) as *const i32).read_unaligned();
        let head = _mm256_setr_epi32(rd(0), rd(1), rd(2), rd(3), rd(4), rd(5), rd(6), rd(7));
        let mut wq = [zero; 8];
        for r in 0..8 {
            // the same block of the next tile's row: rows of a few KiB give the hardware
            // prefetcher little time per stream (an address past the end is never accessed)
            let ahead = rows[r].wrapping_add(boff + TILE_ROWS * t.w_stride);
            _mm_prefetch::<_MM_HINT_T1>(ahead as *const i8);
            wq[r] = F::values(rows[r].add(boff));
            if F::SIGNED && I::WIDE_U8 {
                wq[r] = _mm256_xor_si256(wq[r], _mm256_set1_epi8(-128));
            }
        }
        for (c, acc_c) in acc.iter_mut().enumerate() {
            let ab = t.a.add(c * t.a_stride + b * F::A_BYTES);
            let av = _mm256_loadu_si256(ab.add(F::A_QS) as *const __m256i);
            // every row's dot starts from −o·a (per 4-byte group), which removes the offset
            let init = if offset != 0 {
                _mm256_sub_epi32(zero, I::dot_u8i8(zero, offset_bytes, av))
            } else {
                zero
            };
            let mut p = [zero; 8];
            for r in 0..8 {
                p[r] = if F::SIGNED && !I::WIDE_U8 {
                    let mag = _mm256_sign_epi8(wq[r], wq[r]);
                    I::dot_u8i8(init, mag, _mm256_sign_epi8(av, wq[r]))
                } else {
                    I::dot_u8i8(init, wq[r], av)
                };
            }
            *acc_c = F::update(*acc_c, reduce8(&p), head, ab);
        }
    }
    for (c, acc_c) in acc.iter().enumerate() {
        store_rows(t.out.add(c * t.ldo), *acc_c, t.nr);
    }
}

/// The tile for any `nc` in 1..=4.
#[inline(always)]
pub(crate) unsafe fn tile<I: Isa, F: Legacy>(t: &TileArgs) {
    match t.nc {
        1 => tile_nc::<I, F, 1>(t),
        2 => tile_nc::<I, F, 2>(t),
        3 => tile_nc::<I, F, 3>(t),
        _ => tile_nc::<I, F, 4>(t),
    }
}
