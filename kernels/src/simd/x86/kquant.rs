//! Tiles for the K-quants (Q4_K, Q5_K, Q6_K × Q8_K).
//!
//! ggml's generic K-quant dot keeps eight i32 lane sums per super-block, lane `l` collecting the
//! elements `≡ l (mod 8)`, and turns them into f32 with one multiply per lane. To give the same
//! f32 results, weights and activations are reordered with [`mod8_order`] (i32 lane `j` holds
//! bytes `j, j+8, j+16, j+24` of each 32-element group), so `maddubs` pairs and `madd` quads stay
//! inside one lane class and within one scale group; the lane-wise f32 updates and the final
//! sums then run in the reference's order. Activations are reordered once per tile and super-
//! block and reused by every weight row of the tile.

use core::arch::x86_64::*;

use super::{hsum_i32, lanes_ps, load_f16, mod8_order, Isa};
use crate::simd::{TileArgs, TILE_COLS, TILE_ROWS};

const A_BYTES: usize = 292;

/// Prefetches (to L2) the super-block at `wb` of the next tile's row: rows of a few KiB give the
/// hardware prefetcher little time per stream. The address is only prefetched, never accessed,
/// so it may lie past the end.
#[inline(always)]
unsafe fn prefetch_next_tile(t: &TileArgs, wb: *const u8, bytes: usize) {
    let ahead = wb.wrapping_add(TILE_ROWS * t.w_stride);
    for line in (0..bytes).step_by(64) {
        _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(line) as *const i8);
    }
}

/// Per-tile activation state of one super-block.
struct Acts<const NC: usize> {
    d: [f32; NC],
    /// 8 groups of 32 values, reordered.
    q: [[__m256i; 8]; NC],
    bsums: [__m256i; NC],
}

#[inline(always)]
unsafe fn load_acts<const NC: usize>(t: &TileArgs, b: usize) -> Acts<NC> {
    let zero = _mm256_setzero_si256();
    let mut acts = Acts {
        d: [0.0; NC],
        q: [[zero; 8]; NC],
        bsums: [zero; NC],
    };
    for c in 0..NC {
        let ab = t.a.add(c * t.a_stride + b * A_BYTES);
        acts.d[c] = (ab as *const f32).read_unaligned();
        for g in 0..8 {
            acts.q[c][g] = mod8_order(_mm256_loadu_si256(ab.add(4 + 32 * g) as *const __m256i));
        }
        acts.bsums[c] = _mm256_loadu_si256(ab.add(260) as *const __m256i);
    }
    acts
}

/// Accumulators of the reference's `KDotAccumulator`, per row and activation.
struct Accs<const NC: usize> {
    sums: [[__m256; NC]; TILE_ROWS],
    mins: [[f32; NC]; TILE_ROWS],
}

impl<const NC: usize> Accs<NC> {
    #[inline(always)]
    unsafe fn new() -> Self {
        Accs {
            sums: [[_mm256_setzero_ps(); NC]; TILE_ROWS],
            mins: [[0.0; NC]; TILE_ROWS],
        }
    }

    /// `sumf` (the min terms) plus the eight lane sums, left to right.
    #[inline(always)]
    unsafe fn store(&self, t: &TileArgs) {
        for r in 0..t.nr {
            for c in 0..NC {
                let mut s = self.mins[r][c];
                for l in lanes_ps(self.sums[r][c]) {
                    s += l;
                }
                *t.out.add(c * t.ldo + r) = s;
            }
        }
    }
}

/// `Σ_g madd(maddubs(q_g, a_g), scale_g)` with the i16 scale pairs broadcast from dword g of
/// `scales` (`sub` optionally removes a per-pair i16 term before scaling).
#[inline(always)]
unsafe fn scaled_dot(
    q: &[__m256i; 8],
    a: &[__m256i; 8],
    sub: Option<&[__m256i; 8]>,
    scales: __m256i,
) -> __m256i {
    let mut aux = _mm256_setzero_si256();
    for g in 0..8 {
        let mut p = _mm256_maddubs_epi16(q[g], a[g]);
        if let Some(s) = sub {
            p = _mm256_sub_epi16(p, s[g]);
        }
        let sc = _mm256_permutevar8x32_epi32(scales, _mm256_set1_epi32(g as i32));
        aux = _mm256_add_epi32(aux, _mm256_madd_epi16(p, sc));
    }
    aux
}

/// The 12 packed bytes of Q4_K/Q5_K scales as i16 vectors `[s0,s0,s1,s1,…,s7,s7]` for the
/// scales and the mins.
#[inline(always)]
unsafe fn scales_mins_k4(p: *const u8) -> (__m256i, __m256i) {
    let w0 = (p as *const u32).read_unaligned();
    let w1 = (p.add(4) as *const u32).read_unaligned();
    let w2 = (p.add(8) as *const u32).read_unaligned();
    let sc_lo = w0 & 0x3f3f_3f3f;
    let m_lo = w1 & 0x3f3f_3f3f;
    let sc_hi = (w2 & 0x0f0f_0f0f) | (((w0 >> 6) & 0x0303_0303) << 4);
    let m_hi = ((w2 >> 4) & 0x0f0f_0f0f) | (((w1 >> 6) & 0x0303_0303) << 4);
    let dup = |lo: u32, hi: u32| {
        let v = _mm_cvtsi64_si128(((hi as u64) << 32 | lo as u64) as i64);
        _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(v, v))
    };
    (dup(sc_lo, sc_hi), dup(m_lo, m_hi))
}

/// The four 32-byte `qs` chunks of Q4_K/Q5_K (at `qs`) as 8 groups of low/high nibbles,
/// reordered.
#[inline(always)]
unsafe fn nibble_groups(qs: *const u8) -> [__m256i; 8] {
    let m4 = _mm256_set1_epi8(0x0f);
    let mut q = [_mm256_setzero_si256(); 8];
    for ch in 0..4 {
        let raw = mod8_order(_mm256_loadu_si256(qs.add(32 * ch) as *const __m256i));
        q[2 * ch] = _mm256_and_si256(raw, m4);
        q[2 * ch + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), m4);
    }
    q
}

#[inline(always)]
unsafe fn tile_q4_k_nc<const NC: usize>(t: &TileArgs, five_bits: bool) {
    let w_bytes = if five_bits { 176 } else { 144 };
    let mut accs = Accs::<NC>::new();
    for b in 0..t.nb {
        let acts = load_acts::<NC>(t, b);
        for r in 0..t.nr {
            let wb = t.w.add(r * t.w_stride + b * w_bytes);
            prefetch_next_tile(t, wb, w_bytes);
            let d = load_f16(wb);
            let dmin = load_f16(wb.add(2));
            let (sc, mins) = scales_mins_k4(wb.add(4));
            let mut q;
            if five_bits {
                q = nibble_groups(wb.add(48));
                let qh = mod8_order(_mm256_loadu_si256(wb.add(16) as *const __m256i));
                for (g, qg) in q.iter_mut().enumerate() {
                    // 5th bit of group g = bit g of qh
                    let bit = _mm256_set1_epi8((1u8 << g) as i8);
                    let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
                    *qg = _mm256_or_si256(*qg, _mm256_and_si256(set, _mm256_set1_epi8(0x10)));
                }
            } else {
                q = nibble_groups(wb.add(16));
            }
            for c in 0..NC {
                let aux = scaled_dot(&q, &acts.q[c], None, sc);
                let dd = _mm256_set1_ps(d * acts.d[c]);
                accs.sums[r][c] =
                    _mm256_add_ps(accs.sums[r][c], _mm256_mul_ps(dd, _mm256_cvtepi32_ps(aux)));
                let sumi = hsum_i32(_mm256_madd_epi16(acts.bsums[c], mins));
                accs.mins[r][c] -= (dmin * acts.d[c]) * sumi as f32;
            }
        }
    }
    accs.store(t);
}

#[inline(always)]
unsafe fn tile_q6_k_nc<const NC: usize>(t: &TileArgs) {
    let mut accs = Accs::<NC>::new();
    let m4 = _mm256_set1_epi8(0x0f);
    let zero = _mm256_setzero_si256();
    for b in 0..t.nb {
        let acts = load_acts::<NC>(t, b);
        // (q − 32)·a = q·a − 32·a, the second term per activation
        let mut a32 = [[zero; 8]; NC];
        for c in 0..NC {
            for g in 0..8 {
                a32[c][g] = _mm256_maddubs_epi16(_mm256_set1_epi8(32), acts.q[c][g]);
            }
        }
        for r in 0..t.nr {
            let wb = t.w.add(r * t.w_stride + b * 210);
            prefetch_next_tile(t, wb, 210);
            let d = load_f16(wb.add(208));
            // dword g = (scale 2g, scale 2g+1): the two 16-element sub-blocks of group g
            let sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(wb.add(192) as *const __m128i));
            let mut q = [zero; 8];
            for h in 0..2 {
                let ld = |p: *const u8| mod8_order(_mm256_loadu_si256(p as *const __m256i));
                let ql0 = ld(wb.add(64 * h));
                let ql1 = ld(wb.add(64 * h + 32));
                let qh = ld(wb.add(128 + 32 * h));
                let hb = |m: i8| _mm256_and_si256(qh, _mm256_set1_epi8(m));
                q[4 * h] =
                    _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16::<4>(hb(0x03)));
                q[4 * h + 1] =
                    _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_slli_epi16::<2>(hb(0x0c)));
                q[4 * h + 2] =
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4), hb(0x30));
                q[4 * h + 3] = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                    _mm256_srli_epi16::<2>(hb(-0x40)),
                );
            }
            for c in 0..NC {
                let aux = scaled_dot(&q, &acts.q[c], Some(&a32[c]), sc);
                let dd = _mm256_set1_ps(d * acts.d[c]);
                accs.sums[r][c] =
                    _mm256_add_ps(accs.sums[r][c], _mm256_mul_ps(dd, _mm256_cvtepi32_ps(aux)));
            }
        }
    }
    accs.store(t);
}

const _: () = assert!(TILE_COLS == 4);

#[inline(always)]
pub(crate) unsafe fn tile_q4_k<I: Isa>(t: &TileArgs) {
    match t.nc {
        1 => tile_q4_k_nc::<1>(t, false),
        2 => tile_q4_k_nc::<2>(t, false),
        3 => tile_q4_k_nc::<3>(t, false),
        _ => tile_q4_k_nc::<4>(t, false),
    }
}

#[inline(always)]
pub(crate) unsafe fn tile_q5_k<I: Isa>(t: &TileArgs) {
    match t.nc {
        1 => tile_q4_k_nc::<1>(t, true),
        2 => tile_q4_k_nc::<2>(t, true),
        3 => tile_q4_k_nc::<3>(t, true),
        _ => tile_q4_k_nc::<4>(t, true),
    }
}

#[inline(always)]
pub(crate) unsafe fn tile_q6_k<I: Isa>(t: &TileArgs) {
    match t.nc {
        1 => tile_q6_k_nc::<1>(t),
        2 => tile_q6_k_nc::<2>(t),
        3 => tile_q6_k_nc::<3>(t),
        _ => tile_q6_k_nc::<4>(t),
    }
}
