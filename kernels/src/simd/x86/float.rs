//! Tiles for float weights (F32, F16, BF16) × f32 activations, 8 f32 lanes per vector.
//!
//! Products are summed with FMA in f32 lanes (the reference sums exact f32 products in f64),
//! then the lanes are added; the `k mod 8` tail is added in scalar code.

use core::arch::x86_64::*;

use crate::simd::TileArgs;

/// One float weight type.
pub(crate) trait FloatW {
    const BYTES: usize;
    /// 8 weights at `p` as f32.
    unsafe fn load8(p: *const u8) -> __m256;
    /// The weight at `p` as f32.
    unsafe fn load1(p: *const u8) -> f32;
}

pub(crate) struct F32;
pub(crate) struct F16;
pub(crate) struct BF16;

impl FloatW for F32 {
    const BYTES: usize = 4;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_loadu_ps(p as *const f32)
    }
    #[inline(always)]
    unsafe fn load1(p: *const u8) -> f32 {
        (p as *const f32).read_unaligned()
    }
}

impl FloatW for F16 {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    #[inline(always)]
    unsafe fn load1(p: *const u8) -> f32 {
        super::load_f16(p)
    }
}

impl FloatW for BF16 {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
    }
    #[inline(always)]
    unsafe fn load1(p: *const u8) -> f32 {
        f32::from_bits(((p as *const u16).read_unaligned() as u32) << 16)
    }
}

#[inline(always)]
pub(crate) unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// `RB` weight rows at a time against `NC` activation rows.
#[inline(always)]
unsafe fn tile_nc<W: FloatW, const NC: usize, const RB: usize>(t: &TileArgs) {
    let k = t.nb;
    let k8 = k & !7;
    for r0 in (0..t.nr).step_by(RB) {
        let mut rows = [t.w; RB];
        for (i, row) in rows.iter_mut().enumerate() {
            *row = t.w.add((r0 + i).min(t.nr - 1) * t.w_stride);
        }
        let mut acc = [[_mm256_setzero_ps(); NC]; RB];
        let mut i = 0;
        while i < k8 {
            let mut w = [_mm256_setzero_ps(); RB];
            for (wr, row) in w.iter_mut().zip(&rows) {
                if (i * W::BYTES) % 64 == 0 {
                    // the next row group, one line per row and 64 bytes (never accessed)
                    let ahead = row.wrapping_add(i * W::BYTES + RB * t.w_stride);
                    _mm_prefetch::<_MM_HINT_T1>(ahead as *const i8);
                }
                *wr = W::load8(row.add(i * W::BYTES));
            }
            for c in 0..NC {
                let a = _mm256_loadu_ps((t.a.add(c * t.a_stride) as *const f32).add(i));
                for rb in 0..RB {
                    acc[rb][c] = _mm256_fmadd_ps(w[rb], a, acc[rb][c]);
                }
            }
            i += 8;
        }
        for rb in 0..RB.min(t.nr - r0) {
            for c in 0..NC {
                let ap = t.a.add(c * t.a_stride) as *const f32;
                let mut s = hsum_ps(acc[rb][c]);
                for j in k8..k {
                    s += W::load1(rows[rb].add(j * W::BYTES)) * ap.add(j).read_unaligned();
                }
                *t.out.add(c * t.ldo + r0 + rb) = s;
            }
        }
    }
}

#[inline(always)]
pub(crate) unsafe fn tile<W: FloatW>(t: &TileArgs) {
    match t.nc {
        1 => tile_nc::<W, 1, 4>(t),
        2 => tile_nc::<W, 2, 4>(t),
        3 => tile_nc::<W, 3, 2>(t),
        _ => tile_nc::<W, 4, 2>(t),
    }
}
