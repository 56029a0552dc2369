//! AVX-512 VNNI products on the ×16 repacked layouts of [`crate::repack`] (Q4_0x16, Q8_0x16).
//!
//! The layout already holds what `packed.rs` builds per tile: i32 lane `r` of a 64-byte chunk is
//! row `r`'s 4 bytes, and a block's 16 scales are one 32-byte load. So a block costs 4 (Q4_0:
//! plus 8 mask/shift ops) or 8 loads, and 8 `vpdpbusd` per activation row with the activation's
//! 4 bytes broadcast; the lane-wise scale update is `packed::Packed::update16`, in the
//! reference's order, so results stay bit-identical to the scalar `vec_dot`.
//!
//! - Few activation rows (decode): [`direct`] unpacks each block in registers for up to 4 rows.
//! - Many (prompts, the vision tower): each 16-row group is unpacked once into a scratch of
//!   group vectors, then `packed::tile_cols` runs 8 activation rows per pass, as the packed GEMM.

use core::arch::x86_64::*;

use super::legacy;
use super::packed::{self, Packed};
use crate::repack::GROUP_ROWS;
use crate::simd::GemmArgs;

/// A format with a ×16 layout: how a block's chunks become the 8 group vectors (group `g` =
/// values `4g..4g+4` of every row, unsigned).
pub(crate) trait Repacked: Packed {
    /// Bytes of one block's values for the 16 rows.
    const QS_BYTES: usize;
    unsafe fn groups(qs: *const u8) -> [__m512i; 8];
}

impl Repacked for legacy::Q4_0 {
    const QS_BYTES: usize = 256;
    #[inline(always)]
    unsafe fn groups(qs: *const u8) -> [__m512i; 8] {
        let mask = _mm512_set1_epi8(0x0f);
        let mut g = [_mm512_setzero_si512(); 8];
        for c in 0..4 {
            let q = _mm512_loadu_si512(qs.add(64 * c) as *const _);
            g[c] = _mm512_and_si512(q, mask);
            g[c + 4] = _mm512_and_si512(_mm512_srli_epi16::<4>(q), mask);
        }
        g
    }
}

impl Repacked for legacy::Q8_0 {
    const QS_BYTES: usize = 512;
    #[inline(always)]
    unsafe fn groups(qs: *const u8) -> [__m512i; 8] {
        let mut g = [_mm512_setzero_si512(); 8];
        for (c, gc) in g.iter_mut().enumerate() {
            *gc = _mm512_loadu_si512(qs.add(64 * c) as *const _);
        }
        g
    }
}

/// How far ahead [`direct`] prefetches, into L2 (bytes of values). On the 2-core Zen 4 VM,
/// decode with 2 threads: no prefetch 15.7 t/s, 4 KiB 18.0, 12–32 KiB 17.4–20.3 (run-to-run
/// noise of ±1.5), 128 KiB 17.7; into L1 (T0) 16.1.
const PREFETCH_BYTES: usize = 16 << 10;

/// Block `b`'s scales of a group as f32.
#[inline(always)]
unsafe fn scales(group: *const u8, b: usize) -> __m512 {
    _mm512_cvtph_ps(_mm256_loadu_si256(group.add(b * 32) as *const __m256i))
}

/// Block `b`'s values of a group.
#[inline(always)]
unsafe fn values<F: Repacked>(group: *const u8, nb: usize, b: usize) -> *const u8 {
    group.add(nb * 32 + b * F::QS_BYTES)
}

/// `NC ≤ 4` activation rows from `c0` against one group (rows `r0..r0+nr`), unpacking each
/// block in registers.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn direct<F: Repacked, const NC: usize>(
    t: &GemmArgs,
    group: *const u8,
    asum: &[i32],
    ad: &[f32],
    c0: usize,
    r0: usize,
    nr: usize,
) {
    let o = packed::offset::<F>();
    let nb = t.nb;
    let mut acc = [_mm512_setzero_ps(); NC];
    let mut a = [t.a; NC];
    for (c, ac) in a.iter_mut().enumerate() {
        *ac = t.a.add((c0 + c) * t.a_stride + F::A_QS);
    }
    for b in 0..nb {
        let qs = values::<F>(group, nb, b);
        // every line of a block 16 KiB ahead (values and scales), into L2: the hardware
        // prefetchers alone keep too few lines in flight for one stream per core
        let ahead_blocks = PREFETCH_BYTES / F::QS_BYTES;
        let ahead = qs.wrapping_add(ahead_blocks * F::QS_BYTES);
        for line in 0..F::QS_BYTES / 64 {
            _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(64 * line) as *const i8);
        }
        if b % 2 == 0 {
            let s_ahead = group.wrapping_add((b + ahead_blocks) * 32);
            _mm_prefetch::<_MM_HINT_T1>(s_ahead as *const i8);
        }
        let w = F::groups(qs);
        let mut sumi = [_mm512_setzero_si512(); NC];
        for c in 0..NC {
            sumi[c] = _mm512_set1_epi32(-o * asum[(c0 + c) * nb + b]);
        }
        let ab = b * F::A_BYTES;
        for (g, wg) in w.iter().enumerate() {
            for c in 0..NC {
                let av = (a[c].add(ab + 4 * g) as *const i32).read_unaligned();
                sumi[c] = _mm512_dpbusd_epi32(sumi[c], *wg, _mm512_set1_epi32(av));
            }
        }
        let dw = scales(group, b);
        for c in 0..NC {
            let da = _mm512_set1_ps(ad[(c0 + c) * nb + b]);
            acc[c] = F::update16(acc[c], sumi[c], dw, da);
        }
    }
    let mask: __mmask16 = if nr >= GROUP_ROWS {
        0xffff
    } else {
        (1u16 << nr) - 1
    };
    for (c, acc_c) in acc.iter().enumerate() {
        _mm512_mask_storeu_ps(t.out.add((c0 + c) * t.ldo + r0), mask, *acc_c);
    }
}

/// The whole product on a ×16 matrix: `t.w` is the first group, `t.w_stride` the group
/// stride, `t.n` the rows (the last group may be partial). Never declines.
#[inline(always)]
pub(crate) unsafe fn gemm<F: Repacked>(t: &GemmArgs) -> bool {
    let nb = t.nb;
    let (asum, ad) = packed::activation_block_sums::<F>(t);
    let mut scratch = if t.m >= packed::COLS {
        (
            vec![_mm512_setzero_si512(); nb * 8],
            vec![_mm512_setzero_ps(); nb],
        )
    } else {
        (Vec::new(), Vec::new())
    };
    for (gi, r0) in (0..t.n).step_by(GROUP_ROWS).enumerate() {
        let nr = (t.n - r0).min(GROUP_ROWS);
        let group = t.w.add(gi * t.w_stride);
        if t.m >= packed::COLS {
            let (wq, wd) = &mut scratch;
            for b in 0..nb {
                let g = F::groups(values::<F>(group, nb, b));
                wq[b * 8..b * 8 + 8].copy_from_slice(&g);
                wd[b] = scales(group, b);
            }
            packed::tile_all_cols::<F>(t, wq, wd, &asum, &ad, r0, nr);
            continue;
        }
        let mut c0 = 0;
        while c0 + 4 <= t.m {
            direct::<F, 4>(t, group, &asum, &ad, c0, r0, nr);
            c0 += 4;
        }
        match t.m - c0 {
            0 => {}
            1 => direct::<F, 1>(t, group, &asum, &ad, c0, r0, nr),
            2 => direct::<F, 2>(t, group, &asum, &ad, c0, r0, nr),
            _ => direct::<F, 3>(t, group, &asum, &ad, c0, r0, nr),
        }
    }
    true
}
