//! Tiles for the K-quants (Q4_K, Q5_K, Q6_K × Q8_K).
//!
//! The reference (`formats::q4_k`'s `KDotAccumulator`) needs one exact integer dot per super-block
//! and weight/activation pair, so the bytes stay in file order: `maddubs` pairs and `madd` quads
//! never cross a 32-element scale group, and the eight i32 lanes of a pair's sum are reduced
//! together with those of the tile's other activation rows (one `hadd` tree per weight row and
//! super-block, [`hsum4`]). The f32 steps then run four activation rows wide, in the reference's
//! order. Activations are loaded once per tile and super-block and reused by every weight row.

use core::arch::x86_64::*;

use super::{load_f16, Isa};
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
    /// `d` of each activation row (zero past `NC`).
    d: __m128,
    /// 8 groups of 32 values.
    q: [[__m256i; 8]; NC],
    bsums: [__m256i; NC],
}

#[inline(always)]
unsafe fn load_acts<const NC: usize>(t: &TileArgs, b: usize) -> Acts<NC> {
    let zero = _mm256_setzero_si256();
    let mut d = [0f32; 4];
    let mut acts = Acts {
        d: _mm_setzero_ps(),
        q: [[zero; 8]; NC],
        bsums: [zero; NC],
    };
    for c in 0..NC {
        let ab = t.a.add(c * t.a_stride + b * A_BYTES);
        d[c] = (ab as *const f32).read_unaligned();
        for g in 0..8 {
            acts.q[c][g] = _mm256_loadu_si256(ab.add(4 + 32 * g) as *const __m256i);
        }
        acts.bsums[c] = _mm256_loadu_si256(ab.add(260) as *const __m256i);
    }
    acts.d = _mm_loadu_ps(d.as_ptr());
    acts
}

/// The lane sums of up to four vectors (`v[c]` → lane `c`; missing ones count as zero).
#[inline(always)]
unsafe fn hsum4<const NC: usize>(v: &[__m256i; NC]) -> __m128i {
    let mut x = [_mm256_setzero_si256(); 4];
    x[..NC].copy_from_slice(v);
    let t = _mm256_hadd_epi32(_mm256_hadd_epi32(x[0], x[1]), _mm256_hadd_epi32(x[2], x[3]));
    _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256::<1>(t))
}

/// The reference's `KDotAccumulator` per weight row, lane `c` for activation row `c`.
struct Accs {
    sums: [__m128; TILE_ROWS],
    mins: [__m128; TILE_ROWS],
}

impl Accs {
    #[inline(always)]
    unsafe fn new() -> Self {
        Accs {
            sums: [_mm_setzero_ps(); TILE_ROWS],
            mins: [_mm_setzero_ps(); TILE_ROWS],
        }
    }

    /// `sum += (d·d_a)·isum` for weight row `r`.
    #[inline(always)]
    unsafe fn add(&mut self, r: usize, dd: __m128, isum: __m128i) {
        self.sums[r] = _mm_add_ps(self.sums[r], _mm_mul_ps(dd, _mm_cvtepi32_ps(isum)));
    }

    /// `mins + sum`.
    #[inline(always)]
    unsafe fn store(&self, t: &TileArgs, nc: usize) {
        for r in 0..t.nr {
            let mut v = [0f32; 4];
            _mm_storeu_ps(v.as_mut_ptr(), _mm_add_ps(self.mins[r], self.sums[r]));
            for (c, &x) in v.iter().enumerate().take(nc) {
                *t.out.add(c * t.ldo + r) = x;
            }
        }
    }
}

/// `Σ_g madd(maddubs(q_g, a_g), sc_g)`, `sc_g` the i16 scale of each pair of group `g` (`sub`
/// optionally removes a per-pair i16 term before scaling).
#[inline(always)]
unsafe fn scaled_dot<S: GroupScales>(
    q: &[__m256i; 8],
    a: &[__m256i; 8],
    sub: Option<&[__m256i; 8]>,
    sc: &S,
) -> __m256i {
    let mut aux = _mm256_setzero_si256();
    for g in 0..8 {
        let mut p = _mm256_maddubs_epi16(q[g], a[g]);
        if let Some(s) = sub {
            p = _mm256_sub_epi16(p, s[g]);
        }
        aux = _mm256_add_epi32(aux, _mm256_madd_epi16(p, sc.group(g)));
    }
    aux
}

/// The i16 scales of a super-block's 8 groups of 32 values.
trait GroupScales {
    /// The scale of every pair of group `g`.
    unsafe fn group(&self, g: usize) -> __m256i;
}

/// Q4_K / Q5_K: group `g` is sub-block `g`. Broadcast once per weight row and super-block (the
/// tile's activation rows share them).
struct K4Scales([__m256i; 8]);

impl K4Scales {
    /// From the i16 vector `[s0, s0, s1, s1, …, s7, s7]`.
    #[inline(always)]
    unsafe fn new(scales: __m256i) -> Self {
        let mut sc = [scales; 8];
        for (g, v) in sc.iter_mut().enumerate() {
            *v = _mm256_permutevar8x32_epi32(scales, _mm256_set1_epi32(g as i32));
        }
        K4Scales(sc)
    }
}

impl GroupScales for K4Scales {
    #[inline(always)]
    unsafe fn group(&self, g: usize) -> __m256i {
        self.0[g]
    }
}

/// Q6_K: group `g` is sub-blocks `2g` (its low 16 bytes, the low 128-bit half) and `2g + 1`
/// (the high half); dword `k` of the two vectors holds scale `k` (0..16) twice. Permuted per use:
/// 8 more live vectors would spill in the Q6_K tile (16 `ymm` registers).
struct Q6Scales([__m256i; 2]);

impl Q6Scales {
    /// From the 16 i8 scales at `p`.
    #[inline(always)]
    unsafe fn new(p: *const u8) -> Self {
        let s = _mm256_cvtepi8_epi16(_mm_loadu_si128(p as *const __m128i));
        // dwords (s_k, s_k): lo = [s0..s3 | s8..s11], hi = [s4..s7 | s12..s15]
        let lo = _mm256_unpacklo_epi16(s, s);
        let hi = _mm256_unpackhi_epi16(s, s);
        Q6Scales([
            _mm256_permute2x128_si256::<0x20>(lo, hi),
            _mm256_permute2x128_si256::<0x31>(lo, hi),
        ])
    }
}

impl GroupScales for Q6Scales {
    #[inline(always)]
    unsafe fn group(&self, g: usize) -> __m256i {
        let k = (2 * g % 8) as i32;
        let idx = _mm256_setr_epi32(k, k, k, k, k + 1, k + 1, k + 1, k + 1);
        _mm256_permutevar8x32_epi32(self.0[g / 4], idx)
    }
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

/// The four 32-byte `qs` chunks of Q4_K/Q5_K (at `qs`) as 8 groups of low/high nibbles.
#[inline(always)]
unsafe fn nibble_groups(qs: *const u8) -> [__m256i; 8] {
    let m4 = _mm256_set1_epi8(0x0f);
    let mut q = [_mm256_setzero_si256(); 8];
    for ch in 0..4 {
        let raw = _mm256_loadu_si256(qs.add(32 * ch) as *const __m256i);
        q[2 * ch] = _mm256_and_si256(raw, m4);
        q[2 * ch + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), m4);
    }
    q
}

#[inline(always)]
unsafe fn tile_q4_k_nc<const NC: usize>(t: &TileArgs, five_bits: bool) {
    let w_bytes = if five_bits { 176 } else { 144 };
    let mut accs = Accs::new();
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
                let qh = _mm256_loadu_si256(wb.add(16) as *const __m256i);
                for (g, qg) in q.iter_mut().enumerate() {
                    // 5th bit of group g = bit g of qh
                    let bit = _mm256_set1_epi8((1u8 << g) as i8);
                    let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
                    *qg = _mm256_or_si256(*qg, _mm256_and_si256(set, _mm256_set1_epi8(0x10)));
                }
            } else {
                q = nibble_groups(wb.add(16));
            }
            let sc = K4Scales::new(sc);
            let mut aux = [_mm256_setzero_si256(); NC];
            let mut msum = [_mm256_setzero_si256(); NC];
            for c in 0..NC {
                aux[c] = scaled_dot(&q, &acts.q[c], None, &sc);
                msum[c] = _mm256_madd_epi16(acts.bsums[c], mins);
            }
            let dd = _mm_mul_ps(_mm_set1_ps(d), acts.d);
            accs.add(r, dd, hsum4(&aux));
            let dm = _mm_mul_ps(_mm_set1_ps(dmin), acts.d);
            accs.mins[r] = _mm_sub_ps(accs.mins[r], _mm_mul_ps(dm, _mm_cvtepi32_ps(hsum4(&msum))));
        }
    }
    accs.store(t, NC);
}

#[inline(always)]
unsafe fn tile_q6_k_nc<const NC: usize>(t: &TileArgs) {
    let mut accs = Accs::new();
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
            let sc = Q6Scales::new(wb.add(192));
            let mut q = [zero; 8];
            for h in 0..2 {
                let ld = |p: *const u8| _mm256_loadu_si256(p as *const __m256i);
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
            let mut aux = [_mm256_setzero_si256(); NC];
            for c in 0..NC {
                aux[c] = scaled_dot(&q, &acts.q[c], Some(&a32[c]), &sc);
            }
            accs.add(r, _mm_mul_ps(_mm_set1_ps(d), acts.d), hsum4(&aux));
        }
    }
    accs.store(t, NC);
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
