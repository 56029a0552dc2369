//! Activation quantizers (Q8_0, Q8_1, Q8_K) with 256-bit vectors, byte-identical to the
//! reference quantizers of [`crate::formats`] for every input without NaN.
//!
//! - The abs-max is a lane-wise `max(m, |x|)` (the reference's `m > |x| ? m : |x|`) then a
//!   horizontal max: the same value whenever no NaN is present.
//! - Q8_0 / Q8_1 round `x·(1/d)` half away from zero (C's `roundf`): truncate, then add ±1
//!   where the (exact) fraction is at least one half.
//! - Q8_K rounds half to even (`cvtps2dq` in the default rounding mode), which equals ggml's
//!   `nearest_int` on its valid range; beyond it (only ±inf / NaN products, from a subnormal
//!   abs-max) both give the byte 0.
//! - Packing to bytes truncates (keeps the low byte) like the reference's `as i8` casts: the
//!   "integer indefinite" `i32::MIN` of an infinite or NaN product becomes 0, as in the reference.

use core::arch::x86_64::*;

use half::f16;

/// fp32 → fp16 bits as the reference (`formats::rounding::fp32_to_fp16`): round to nearest
/// even, every NaN → the quiet NaN with the input's sign.
#[inline(always)]
fn fp32_to_fp16_bits(f: f32) -> u16 {
    if f.is_nan() {
        return (((f.to_bits() >> 16) & 0x8000) | 0x7e00) as u16;
    }
    f16::from_f32(f).to_bits()
}

#[inline(always)]
unsafe fn abs_ps(v: __m256) -> __m256 {
    _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff)))
}

#[inline(always)]
unsafe fn hmax_ps(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    _mm_cvtss_f32(m)
}

/// C's `roundf` (half away from zero) of each lane, as an i32.
#[inline(always)]
unsafe fn round_away_epi32(x: __m256) -> __m256i {
    let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(x);
    let frac = abs_ps(_mm256_sub_ps(x, t));
    let half = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
    let sign_one = _mm256_or_ps(
        _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN))),
        _mm256_set1_ps(1.0),
    );
    _mm256_cvtps_epi32(_mm256_add_ps(t, _mm256_and_ps(half, sign_one)))
}

/// The low bytes of 4 × 8 i32 lanes, in order (truncating, like `as i8`).
#[inline(always)]
unsafe fn pack_low_bytes(q: [__m256i; 4]) -> __m256i {
    let m = _mm256_set1_epi32(0xff);
    let ab = _mm256_packus_epi32(_mm256_and_si256(q[0], m), _mm256_and_si256(q[1], m));
    let cd = _mm256_packus_epi32(_mm256_and_si256(q[2], m), _mm256_and_si256(q[3], m));
    let bytes = _mm256_packus_epi16(ab, cd);
    _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

#[inline(always)]
unsafe fn load4(x: *const f32) -> [__m256; 4] {
    [
        _mm256_loadu_ps(x),
        _mm256_loadu_ps(x.add(8)),
        _mm256_loadu_ps(x.add(16)),
        _mm256_loadu_ps(x.add(24)),
    ]
}

/// Q8_0 / Q8_1 block body: the rounded bytes and the f32 scale `d`.
#[inline(always)]
unsafe fn q8_block(x: *const f32) -> (__m256i, f32) {
    let v = load4(x);
    let mut m = _mm256_setzero_ps();
    for vi in v {
        m = _mm256_max_ps(m, abs_ps(vi));
    }
    let amax = hmax_ps(m);
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let idv = _mm256_set1_ps(id);
    let q = [
        round_away_epi32(_mm256_mul_ps(v[0], idv)),
        round_away_epi32(_mm256_mul_ps(v[1], idv)),
        round_away_epi32(_mm256_mul_ps(v[2], idv)),
        round_away_epi32(_mm256_mul_ps(v[3], idv)),
    ];
    (pack_low_bytes(q), d)
}

/// `quantize_row_q8_0_ref` on `nb` blocks (34 bytes each at `y`).
#[inline(always)]
pub(crate) unsafe fn quantize_q8_0(x: *const f32, nb: usize, y: *mut u8) {
    for b in 0..nb {
        let (q, d) = q8_block(x.add(32 * b));
        let yb = y.add(34 * b);
        (yb as *mut u16).write_unaligned(fp32_to_fp16_bits(d).to_le());
        _mm256_storeu_si256(yb.add(2) as *mut __m256i, q);
    }
}

/// `quantize_row_q8_1_ref` on `nb` blocks (36 bytes each at `y`).
#[inline(always)]
pub(crate) unsafe fn quantize_q8_1(x: *const f32, nb: usize, y: *mut u8) {
    for b in 0..nb {
        let (q, d) = q8_block(x.add(32 * b));
        let sum = super::hsum_i8(q);
        let yb = y.add(36 * b);
        (yb as *mut u16).write_unaligned(fp32_to_fp16_bits(d).to_le());
        (yb.add(2) as *mut u16).write_unaligned(fp32_to_fp16_bits(sum as f32 * d).to_le());
        _mm256_storeu_si256(yb.add(4) as *mut __m256i, q);
    }
}

/// `quantize_row_q8_K_ref` on `nb` super-blocks (292 bytes each at `y`).
#[inline(always)]
pub(crate) unsafe fn quantize_q8_k(x: *const f32, nb: usize, y: *mut u8) {
    for b in 0..nb {
        let xb = x.add(256 * b);
        let yb = y.add(292 * b);
        let mut m = _mm256_setzero_ps();
        for i in 0..32 {
            m = _mm256_max_ps(m, abs_ps(_mm256_loadu_ps(xb.add(8 * i))));
        }
        let amax = hmax_ps(m);
        if amax == 0.0 {
            core::ptr::write_bytes(yb, 0, 292);
            continue;
        }
        // the first element of largest magnitude keeps its sign (the reference's strict `>`)
        let amax_v = _mm256_set1_ps(amax);
        let mut max = 0f32;
        for i in 0..32 {
            let v = _mm256_loadu_ps(xb.add(8 * i));
            let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(abs_ps(v), amax_v));
            if hit != 0 {
                max = *xb.add(8 * i + hit.trailing_zeros() as usize);
                break;
            }
        }
        let iscale = -127.0 / max;
        let isv = _mm256_set1_ps(iscale);
        let lim = _mm256_set1_epi32(127);
        for g in 0..8 {
            let v = load4(xb.add(32 * g));
            let mut q = [_mm256_setzero_si256(); 4];
            for (qi, vi) in q.iter_mut().zip(v) {
                *qi = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(vi, isv)), lim);
            }
            let bytes = pack_low_bytes(q);
            _mm256_storeu_si256(yb.add(4 + 32 * g) as *mut __m256i, bytes);
            // sums of 16 bytes: SAD of the biased bytes per 8, minus the bias 16·128
            let s = _mm256_sad_epu8(
                _mm256_xor_si256(bytes, _mm256_set1_epi8(-128)),
                _mm256_setzero_si256(),
            );
            let mut l = [0i64; 4];
            _mm256_storeu_si256(l.as_mut_ptr() as *mut __m256i, s);
            let s0 = (l[0] + l[1] - 2048) as i16;
            let s1 = (l[2] + l[3] - 2048) as i16;
            (yb.add(260 + 4 * g) as *mut i16).write_unaligned(s0.to_le());
            (yb.add(262 + 4 * g) as *mut i16).write_unaligned(s1.to_le());
        }
        (yb as *mut f32).write_unaligned(1.0 / iscale);
    }
}
