//! AVX-512 VNNI products on the ×16 repacked layouts of [`crate::repack`] (Q4_0x16, Q8_0x16,
//! Q4_Kx16, Q5_Kx16, Q6_Kx16).
//!
//! The layout already holds what `packed.rs` builds per tile: i32 lane `r` of a 64-byte chunk is
//! row `r`'s 4 bytes, and a block's 16 scales are one 32-byte load. So a block costs 4 (Q4_0:
//! plus 8 mask/shift ops) or 8 loads, and 8 `vpdpbusd` per activation row with the activation's
//! 4 bytes broadcast; the lane-wise scale update is `packed::Packed::update16`, in the
//! reference's order, so results stay bit-identical to the scalar `vec_dot`.
//!
//! - Few activation rows (decode): [`direct`] unpacks each block in registers for up to 4 rows.
//! - Many (prompts, the vision tower): each 16-row group is unpacked once per chunk of blocks
//!   (`packed::k_chunks`) into a scratch of group vectors, then `packed::tile_all_cols` runs
//!   the activation panels over it (8 rows per pass), as the packed GEMM.
//! - K-quants: decode reads the records directly ([`k4_direct`] for Q4_K and Q5_K,
//!   [`q6k_direct`]); prompts run the file layout's packed GEMM (`packed_kquant`) on chunks
//!   taken from the records ([`k4_chunk`], [`q6k_chunk`]), which need neither its scale decoding nor its transposes.

use core::arch::x86_64::*;
use core::mem::MaybeUninit;

use super::legacy;
use super::packed::{self, Packed};
use super::packed_kquant;
use crate::repack::GROUP_ROWS;
use crate::simd::{prepared_or, GemmArgs, Line64};

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
pub(crate) const PREFETCH_BYTES: usize = 16 << 10;

/// Prefetches block `b + PREFETCH_BYTES / qs_bytes` of a 32-element group into L2: every line of
/// its values (`qs`: block `b`'s values, `qs_bytes` per block) and, every other block, its
/// scales. The hardware prefetchers alone keep too few lines in flight for one stream per core.
#[inline(always)]
pub(crate) unsafe fn prefetch_block_ahead(
    group: *const u8,
    b: usize,
    qs: *const u8,
    qs_bytes: usize,
) {
    let ahead_blocks = PREFETCH_BYTES / qs_bytes;
    let ahead = qs.wrapping_add(ahead_blocks * qs_bytes);
    for line in 0..qs_bytes / 64 {
        _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(64 * line) as *const i8);
    }
    if b.is_multiple_of(2) {
        let s_ahead = group.wrapping_add((b + ahead_blocks) * 32);
        _mm_prefetch::<_MM_HINT_T1>(s_ahead as *const i8);
    }
}

/// Block `b`'s scales of a group as f32.
#[inline(always)]
pub(crate) unsafe fn scales(group: *const u8, b: usize) -> __m512 {
    _mm512_cvtph_ps(_mm256_loadu_si256(group.add(b * 32) as *const __m256i))
}

/// Block `b`'s values of a group.
#[inline(always)]
pub(crate) unsafe fn values<F: Repacked>(group: *const u8, nb: usize, b: usize) -> *const u8 {
    group.add(nb * 32 + b * F::QS_BYTES)
}

/// `NC ≤ 4` activation rows from `c0` against one group (rows `r0..r0+nr`), unpacking each
/// block in registers.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn direct<F: Repacked, const NC: usize>(
    t: &GemmArgs,
    group: *const u8,
    start: &[i32],
    ad: &[f32],
    c0: usize,
    r0: usize,
    nr: usize,
) {
    let nb = t.nb;
    let mut acc = [_mm512_setzero_ps(); NC];
    let mut a = [t.a; NC];
    for (c, ac) in a.iter_mut().enumerate() {
        *ac = t.a.add((c0 + c) * t.a_stride + F::A_QS);
    }
    for b in 0..nb {
        let qs = values::<F>(group, nb, b);
        prefetch_block_ahead(group, b, qs, F::QS_BYTES);
        let w = F::groups(qs);
        let mut sumi = [_mm512_setzero_si512(); NC];
        for c in 0..NC {
            sumi[c] = _mm512_set1_epi32(start[(c0 + c) * nb + b]);
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
    if t.m >= packed::COLS {
        let mut owned = None;
        let panels = packed::panels::<F>(t, &mut owned);
        let chunk = packed::k_chunk_max(nb);
        let mut wq = vec![_mm512_setzero_si512(); chunk * 8];
        let mut wd = vec![_mm512_setzero_ps(); chunk];
        for kc in packed::k_chunks(nb) {
            for (gi, r0) in (0..t.n).step_by(GROUP_ROWS).enumerate() {
                let nr = (t.n - r0).min(GROUP_ROWS);
                let group = t.w.add(gi * t.w_stride);
                for b in 0..kc.nb {
                    let g = F::groups(values::<F>(group, nb, kc.b0 + b));
                    wq[b * 8..b * 8 + 8].copy_from_slice(&g);
                    wd[b] = scales(group, kc.b0 + b);
                }
                packed::tile_all_cols::<F>(t, &wq, &wd, &panels, r0, nr, kc);
            }
        }
        return true;
    }
    let mut owned = Default::default();
    let (start, ad) = packed::block_sums::<F>(t, &mut owned);
    for (gi, r0) in (0..t.n).step_by(GROUP_ROWS).enumerate() {
        let nr = (t.n - r0).min(GROUP_ROWS);
        let group = t.w.add(gi * t.w_stride);
        let mut c0 = 0;
        while c0 + 4 <= t.m {
            direct::<F, 4>(t, group, start, ad, c0, r0, nr);
            c0 += 4;
        }
        match t.m - c0 {
            0 => {}
            1 => direct::<F, 1>(t, group, start, ad, c0, r0, nr),
            2 => direct::<F, 2>(t, group, start, ad, c0, r0, nr),
            _ => direct::<F, 3>(t, group, start, ad, c0, r0, nr),
        }
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Q4_Kx16 (`repack::Q4K_RECORD` per super-block and 16 rows) × Q8_K
// ---------------------------------------------------------------------------------------------

/// Bytes of a Q8_K block: `d` (f32) at 0, `qs` at 4, `bsums` (16 × i16) at 260.
pub(crate) const Q8K_BYTES: usize = 292;

/// One activation super-block prepared for the Q4_Kx16 kernel: the values in mod-8 class order
/// per sub-block (dword `8j + l` = elements `32j + l + {0, 8, 16, 24}`), the 8 sub-block sums
/// `B_j = bsums[2j] + bsums[2j+1]` (i32) and `d`.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(crate) struct Q8KPrepared {
    pub(crate) qs: [i32; 64],
    pub(crate) bsum: [i32; 8],
    pub(crate) d: f32,
}

/// The Q6_Kx16 decode kernel's activation super-block: [`Q8KPrepared`] plus, per dword
/// `8s + l` with bytes `(a₀, a₁, a₂, a₃)` (two elements of sub-block `2s`, then two of
/// `2s + 1`), the i16 pair `neg32` = `(−32·(a₀ + a₁), −32·(a₂ + a₃))` (Q6_K's offset 32).
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Q8KPrepared6 {
    base: Q8KPrepared,
    neg32: [i32; 64],
}

/// Every activation row's super-blocks, prepared (uses AVX2 only).
#[inline(always)]
pub(crate) unsafe fn prepare_q8k(t: &GemmArgs) -> Vec<Q8KPrepared> {
    let empty = Q8KPrepared {
        qs: [0; 64],
        bsum: [0; 8],
        d: 0.0,
    };
    let mut out = vec![empty; t.m * t.nb];
    for c in 0..t.m {
        for b in 0..t.nb {
            let blk = t.a.add(c * t.a_stride + b * Q8K_BYTES);
            let p = &mut out[c * t.nb + b];
            for j in 0..8 {
                let v = _mm256_loadu_si256(blk.add(4 + 32 * j) as *const __m256i);
                _mm256_storeu_si256(
                    p.qs.as_mut_ptr().add(8 * j) as *mut __m256i,
                    super::mod8_order(v),
                );
            }
            let sums = _mm256_madd_epi16(
                _mm256_loadu_si256(blk.add(260) as *const __m256i),
                _mm256_set1_epi16(1),
            );
            _mm256_storeu_si256(p.bsum.as_mut_ptr() as *mut __m256i, sums);
            p.d = (blk as *const f32).read_unaligned();
        }
    }
    out
}

#[inline(always)]
unsafe fn prepare_q8k6(t: &GemmArgs) -> Vec<Q8KPrepared6> {
    let pair = |lo: i32, hi: i32| ((lo as i16 as u16 as u32) | ((hi as u32) << 16)) as i32;
    prepare_q8k(t)
        .into_iter()
        .map(|base| {
            let mut p = Q8KPrepared6 {
                base,
                neg32: [0; 64],
            };
            for x in 0..64 {
                let b = base.qs[x].to_le_bytes().map(|v| v as i8 as i32);
                p.neg32[x] = pair(-32 * (b[0] + b[1]), -32 * (b[2] + b[3]));
            }
            p
        })
        .collect()
}

/// The AVX-512 Q4_K/Q5_K activation layout, once per matmul: [`Q8KPrepared`] records for
/// decode (up to `SUMS_MAX_ROWS` rows; each row block rebuilt them); none for more rows, whose
/// chunked GEMM reads the Q8_K rows as they are.
pub(crate) unsafe fn prepare_q4_k(t: &GemmArgs) -> Option<Box<[MaybeUninit<Line64>]>> {
    (t.m <= crate::simd::SUMS_MAX_ROWS).then(|| crate::simd::to_lines(&prepare_q8k(t)))
}

/// The AVX-512 Q6_K activation layout: as [`prepare_q4_k`], with [`Q8KPrepared6`] records.
pub(crate) unsafe fn prepare_q6_k(t: &GemmArgs) -> Option<Box<[MaybeUninit<Line64>]>> {
    (t.m <= crate::simd::SUMS_MAX_ROWS).then(|| crate::simd::to_lines(&prepare_q8k6(t)))
}

// the prepared records exist only for rows that take the decode paths below (m < 4)
const _: () = assert!(crate::simd::SUMS_MAX_ROWS < 4);

/// The end of the reference K-quant dot for 16 rows: `mins + sum`, stored for activation row
/// `c` and weight rows `r0..r0+nr`.
#[inline(always)]
unsafe fn store_k_sums(t: &GemmArgs, mins: __m512, sum: __m512, c: usize, r0: usize, nr: usize) {
    let sumf = _mm512_add_ps(mins, sum);
    let keep: __mmask16 = if nr >= GROUP_ROWS {
        0xffff
    } else {
        (1u16 << nr) - 1
    };
    _mm512_mask_storeu_ps(t.out.add(c * t.ldo + r0), keep, sumf);
}

/// The values of chunk `(c, l)` of a Q4_Kx16 / Q5_Kx16 record (see `repack::Q4K_RECORD`,
/// `repack::Q5K_RECORD`): lane `r` holds row `r`'s 4 class-`l` values of sub-block `2c` (the
/// low result) and of sub-block `2c + 1` (the high one), as unsigned bytes (0..16, or 0..32
/// with `FIVE`: the 5th bits from the record's bit section).
#[inline(always)]
unsafe fn k4_chunk_values<const FIVE: bool>(
    rec: *const u8,
    c: usize,
    l: usize,
) -> (__m512i, __m512i) {
    use crate::repack::Q5K_HIGH_BITS;
    let mask = _mm512_set1_epi8(0x0f);
    let q = _mm512_loadu_si512(rec.add(320 + (c * 8 + l) * 64) as *const _);
    let mut lo = _mm512_and_si512(q, mask);
    let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(q), mask);
    if FIVE {
        // byte l % 4 of every lane's dword: the 8 bits of this chunk, spread to its 4 bytes
        let bits = _mm512_loadu_si512(rec.add(Q5K_HIGH_BITS + (2 * c + l / 4) * 64) as *const _);
        let k = (l % 4) as i8;
        // vpshufb indexes within each 128-bit lane: byte k of dwords 0..4 is at k + 4j
        let idx = _mm512_add_epi8(
            _mm512_set1_epi8(k),
            _mm512_set4_epi32(0x0c0c_0c0c, 0x0808_0808, 0x0404_0404, 0),
        );
        let spread = _mm512_shuffle_epi8(bits, idx);
        let b16 = _mm512_set1_epi8(0x10);
        let lo_set = _mm512_test_epi8_mask(spread, _mm512_set1_epi32(0x0804_0201));
        let hi_set = _mm512_test_epi8_mask(spread, _mm512_set1_epi32(0x8040_2010_u32 as i32));
        lo = _mm512_mask_add_epi8(lo, lo_set, lo, b16);
        hi = _mm512_mask_add_epi8(hi, hi_set, hi, b16);
    }
    (lo, hi)
}

/// One activation row against one Q4_Kx16 (or, with `FIVE`, Q5_Kx16) group (rows
/// `r0..r0+nr`), in the reference's order: per row `sum += (d·d_a)·isum` and
/// `mins −= (dmin·d_a)·Σ m·B`, then `mins + sum`. Per record chunk `(c, l)`, two `vpdpbusd` add
/// the class-`l` parts of sub-blocks `2c` and `2c + 1` to their dots (i32: a sub-block's dot
/// reaches 32·31·128); each dot is scaled once, with `vpmulld`.
#[inline(always)]
unsafe fn k4_direct<const FIVE: bool>(
    t: &GemmArgs,
    group: *const u8,
    a: &[Q8KPrepared],
    c0: usize,
    r0: usize,
    nr: usize,
) {
    use crate::repack::{Q4K_RECORD, Q5K_RECORD};
    let record = if FIVE { Q5K_RECORD } else { Q4K_RECORD };
    let mut sum = _mm512_setzero_ps();
    let mut mins = _mm512_setzero_ps();
    for (b, ab) in a.iter().enumerate() {
        let rec = group.add(b * record);
        let ahead = rec.wrapping_add(PREFETCH_BYTES);
        for line in 0..5 {
            _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(64 * line) as *const i8);
        }
        if FIVE {
            for line in 0..8 {
                let bits = ahead.wrapping_add(crate::repack::Q5K_HIGH_BITS + 64 * line);
                _mm_prefetch::<_MM_HINT_T1>(bits as *const i8);
            }
        }
        let mut isum = _mm512_setzero_si512();
        for c in 0..4 {
            // lane r: (sc[2c], sc[2c+1]) of row r as two i16
            let sc =
                _mm512_cvtepu8_epi16(_mm256_loadu_si256(rec.add(64 + 32 * c) as *const __m256i));
            let mut d_lo = _mm512_setzero_si512();
            let mut d_hi = _mm512_setzero_si512();
            for l in 0..8 {
                let chunk = rec.add(320 + (c * 8 + l) * 64);
                _mm_prefetch::<_MM_HINT_T1>(chunk.wrapping_add(PREFETCH_BYTES) as *const i8);
                let (lo, hi) = k4_chunk_values::<FIVE>(rec, c, l);
                d_lo = _mm512_dpbusd_epi32(d_lo, lo, _mm512_set1_epi32(ab.qs[16 * c + l]));
                d_hi = _mm512_dpbusd_epi32(d_hi, hi, _mm512_set1_epi32(ab.qs[16 * c + 8 + l]));
            }
            let sc_lo = _mm512_and_si512(sc, _mm512_set1_epi32(0xffff));
            let sc_hi = _mm512_srli_epi32::<16>(sc);
            isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(d_lo, sc_lo));
            isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(d_hi, sc_hi));
        }
        let mut summ = _mm512_setzero_si512();
        for j in 0..8 {
            let m = _mm512_cvtepu8_epi32(_mm_loadu_si128(rec.add(192 + 16 * j) as *const __m128i));
            summ = _mm512_add_epi32(summ, _mm512_mullo_epi32(m, _mm512_set1_epi32(ab.bsum[j])));
        }
        let da = _mm512_set1_ps(ab.d);
        let dd = _mm512_mul_ps(
            _mm512_cvtph_ps(_mm256_loadu_si256(rec as *const __m256i)),
            da,
        );
        let dm = _mm512_mul_ps(
            _mm512_cvtph_ps(_mm256_loadu_si256(rec.add(32) as *const __m256i)),
            da,
        );
        sum = _mm512_add_ps(sum, _mm512_mul_ps(dd, _mm512_cvtepi32_ps(isum)));
        mins = _mm512_sub_ps(mins, _mm512_mul_ps(dm, _mm512_cvtepi32_ps(summ)));
    }
    store_k_sums(t, mins, sum, c0, r0, nr);
}

/// Super-blocks `b0..b0 + nbc` of a Q4_Kx16 group as a chunk of the file layout's packed GEMM
/// (`packed_kquant`, Q4_K): a record chunk `(c, l)` already holds, per lane, the class-`l`
/// values of sub-blocks `2c` (low nibbles) and `2c + 1` (high nibbles), which are the packed
/// vectors `16c + l` and `16c + 8 + l`; the scales are the record's as i32 lanes; then the min
/// pairs `(m_2k, m_2k+1)` and `d`, `dmin` as f32.
/// With `FIVE`: the same for a Q5_Kx16 group and the packed GEMM's Q5_K chunks (the same
/// vectors, with values 0..32).
#[inline(always)]
unsafe fn k4_chunk<const FIVE: bool>(
    group: *const u8,
    b0: usize,
    nbc: usize,
    ch: &packed_kquant::Chunk,
) {
    use crate::repack::{Q4K_RECORD, Q5K_RECORD};
    use packed_kquant::KQuant;
    const { assert!(packed_kquant::Q4K::W_VECS == packed_kquant::Q5K::W_VECS) };
    let record = if FIVE { Q5K_RECORD } else { Q4K_RECORD };
    for b in 0..nbc {
        let rec = group.add((b0 + b) * record);
        let w = ch.w.add(b * packed_kquant::Q4K::W_VECS);
        for c in 0..4 {
            for l in 0..8 {
                let (lo, hi) = k4_chunk_values::<FIVE>(rec, c, l);
                w.add(16 * c + l).write(lo);
                w.add(16 * c + 8 + l).write(hi);
            }
            // lane r: (sc[2c], sc[2c+1]) as two i16 → each as i32
            let sc =
                _mm512_cvtepu8_epi16(_mm256_loadu_si256(rec.add(64 + 32 * c) as *const __m256i));
            w.add(64 + 2 * c)
                .write(_mm512_and_si512(sc, _mm512_set1_epi32(0xffff)));
            w.add(64 + 2 * c + 1).write(_mm512_srli_epi32::<16>(sc));
        }
        for k in 0..4 {
            let m = |j: usize| {
                _mm512_cvtepu8_epi32(_mm_loadu_si128(rec.add(192 + 16 * j) as *const __m128i))
            };
            let pair = _mm512_or_si512(m(2 * k), _mm512_slli_epi32::<16>(m(2 * k + 1)));
            ch.mins.add(4 * b + k).write(pair);
        }
        ch.d.add(b)
            .write(_mm512_cvtph_ps(_mm256_loadu_si256(rec as *const __m256i)));
        ch.dmin.add(b).write(_mm512_cvtph_ps(_mm256_loadu_si256(
            rec.add(32) as *const __m256i
        )));
    }
}

/// The whole product on a Q4_Kx16 matrix (`t.a`: Q8_K rows); never declines. From a few
/// activation rows on, the file layout's packed GEMM runs on chunks taken from the records
/// ([`k4_chunk`]); activations whose `bsums` pairs leave i16 (never written by the quantizer)
/// and decode run [`k4_direct`].
#[inline(always)]
pub(crate) unsafe fn gemm_q4_k(t: &GemmArgs) -> bool {
    gemm_k4::<packed_kquant::Q4K, false>(t)
}

/// [`gemm_q4_k`] for a Q5_Kx16 matrix.
#[inline(always)]
pub(crate) unsafe fn gemm_q5_k(t: &GemmArgs) -> bool {
    gemm_k4::<packed_kquant::Q5K, true>(t)
}

#[inline(always)]
unsafe fn gemm_k4<K: packed_kquant::KQuant, const FIVE: bool>(t: &GemmArgs) -> bool {
    if t.m >= 4 && packed_kquant::bsums_fit(t) {
        packed_kquant::gemm_chunks::<K>(t, |r0, _nr, b0, nbc, ch| {
            k4_chunk::<FIVE>(t.w.add(r0 / GROUP_ROWS * t.w_stride), b0, nbc, ch)
        });
        return true;
    }
    let mut owned = Vec::new();
    let a = prepared_or(t, &mut owned, |t| prepare_q8k(t));
    each_group_and_row(t, |group, c, r0, nr| {
        k4_direct::<FIVE>(t, group, &a[c * t.nb..(c + 1) * t.nb], c, r0, nr)
    });
    true
}

/// `dot(group, c, r0, nr)` for every 16-row group (rows `r0..r0 + nr`) and activation row `c`:
/// the K-quant decode paths, one activation row at a time.
#[inline(always)]
unsafe fn each_group_and_row(t: &GemmArgs, mut dot: impl FnMut(*const u8, usize, usize, usize)) {
    for (gi, r0) in (0..t.n).step_by(GROUP_ROWS).enumerate() {
        let nr = (t.n - r0).min(GROUP_ROWS);
        let group = t.w.add(gi * t.w_stride);
        for c in 0..t.m {
            dot(group, c, r0, nr);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Q6_Kx16 (`repack::Q6K_RECORD` per super-block and 16 rows) × Q8_K
// ---------------------------------------------------------------------------------------------

/// Chunk `x = u + 16k` of a record as 6-bit values (`h`: the record's high-bit vector `u`).
#[inline(always)]
unsafe fn q6k_values(
    rec: *const u8,
    h: __m512i,
    u: usize,
    k: usize,
    nib: __m512i,
    two: __m512i,
) -> __m512i {
    let x = u + 16 * k;
    let lv = _mm512_loadu_si512(rec.add(288 + 64 * (x % 32)) as *const _);
    let lo = if k < 2 {
        _mm512_and_si512(lv, nib)
    } else {
        _mm512_and_si512(_mm512_srli_epi16::<4>(lv), nib)
    };
    let hb = match k {
        0 => h,
        1 => _mm512_srli_epi16::<2>(h),
        2 => _mm512_srli_epi16::<4>(h),
        _ => _mm512_srli_epi16::<6>(h),
    };
    _mm512_or_si512(lo, _mm512_slli_epi16::<4>(_mm512_and_si512(hb, two)))
}

/// Super-blocks `b0..b0 + nbc` of a Q6_Kx16 group as a chunk of the file layout's packed GEMM
/// (`packed_kquant`, Q6_K): vector `4S + j` = the values of elements `16S + {j, j+8, j+4, j+12}`
/// of 16-value sub-block `S`, lane `r` = row `r`; the scales as i32 and as i16 pairs; and the
/// rows' `d` as f32. A record chunk `x = 8s + l` holds, per lane, the class-`l` values
/// `(t₀, t₁)` of sub-block `2s` and `(t₂, t₃)` of `2s + 1`, so chunks `j` and `j + 4` give both
/// sub-blocks' vectors `j` with one blend of i16 halves each.
#[inline(always)]
unsafe fn q6k_chunk(group: *const u8, b0: usize, nbc: usize, ch: &packed_kquant::Chunk) {
    use crate::repack::Q6K_RECORD;
    use packed_kquant::KQuant;
    let nib = _mm512_set1_epi8(0x0f);
    let two = _mm512_set1_epi8(0x03);
    // the high i16 half of every dword
    let odd: __mmask32 = 0xaaaa_aaaa;
    let chunk = |rec: *const u8, x: usize| {
        let (u, k) = (x % 16, x / 16);
        let h = _mm512_loadu_si512(rec.add(2336 + 64 * u) as *const _);
        q6k_values(rec, h, u, k, nib, two)
    };
    for b in 0..nbc {
        let rec = group.add((b0 + b) * Q6K_RECORD);
        let w = ch.w.add(b * packed_kquant::Q6K::W_VECS);
        for s in 0..8 {
            for j in 0..4 {
                let (a, c) = (chunk(rec, 8 * s + j), chunk(rec, 8 * s + j + 4));
                let lo = _mm512_mask_blend_epi16(odd, a, _mm512_slli_epi32::<16>(c));
                let hi = _mm512_mask_blend_epi16(odd, _mm512_srli_epi32::<16>(a), c);
                w.add(4 * (2 * s) + j).write(lo);
                w.add(4 * (2 * s + 1) + j).write(hi);
            }
            // lane r: (sc[2s], sc[2s+1]) as two i16, and each as i32
            let pair =
                _mm512_cvtepi8_epi16(_mm256_loadu_si256(rec.add(32 + 32 * s) as *const __m256i));
            w.add(64 + 2 * s)
                .write(_mm512_srai_epi32::<16>(_mm512_slli_epi32::<16>(pair)));
            w.add(64 + 2 * s + 1).write(_mm512_srai_epi32::<16>(pair));
            w.add(80 + s).write(pair);
        }
        ch.d.add(b)
            .write(_mm512_cvtph_ps(_mm256_loadu_si256(rec as *const __m256i)));
    }
}

/// One activation row against one Q6_Kx16 group, in the reference's order (one f32 sum per
/// row). Per chunk: the 6-bit values from a nibble and two high bits,
/// `vpmaddubsw` (u8 × i8 pairs; |sum| ≤ 2·63·128 cannot saturate) gives each sub-block's pair
/// sum in an i16 half, and two `vpdpwssd` with the lane's scale pair add `sc·(Σq·a − 32·Σa)`.
#[inline(always)]
unsafe fn q6k_direct(
    t: &GemmArgs,
    group: *const u8,
    a: &[Q8KPrepared6],
    c0: usize,
    r0: usize,
    nr: usize,
) {
    use crate::repack::Q6K_RECORD;
    let nib = _mm512_set1_epi8(0x0f);
    let two = _mm512_set1_epi8(0x03);
    let mut sum = _mm512_setzero_ps();
    for (b, ab) in a.iter().enumerate() {
        let rec = group.add(b * Q6K_RECORD);
        let ahead = rec.wrapping_add(PREFETCH_BYTES);
        let mut sc = [_mm512_setzero_si512(); 8];
        for (s, v) in sc.iter_mut().enumerate() {
            *v = _mm512_cvtepi8_epi16(_mm256_loadu_si256(rec.add(32 + 32 * s) as *const __m256i));
        }
        // two integer sums (even and odd classes): shorter dependency chains
        let mut aux = [_mm512_setzero_si512(); 2];
        for u in 0..16 {
            // the record's 53 lines ahead, spread over the loop
            for line in 4 * u..4 * u + 4 {
                _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(64 * line) as *const i8);
            }
            let h = _mm512_loadu_si512(rec.add(2336 + 64 * u) as *const _);
            for k in 0..4 {
                let x = u + 16 * k;
                let (s, l) = (x / 8, x % 8);
                let q = q6k_values(rec, h, u, k, nib, two);
                let p = _mm512_maddubs_epi16(q, _mm512_set1_epi32(ab.base.qs[x]));
                let acc = &mut aux[l % 2];
                *acc = _mm512_dpwssd_epi32(*acc, p, sc[s]);
                *acc = _mm512_dpwssd_epi32(*acc, _mm512_set1_epi32(ab.neg32[x]), sc[s]);
            }
        }
        let dd = _mm512_mul_ps(
            _mm512_cvtph_ps(_mm256_loadu_si256(rec as *const __m256i)),
            _mm512_set1_ps(ab.base.d),
        );
        let isum = _mm512_add_epi32(aux[0], aux[1]);
        sum = _mm512_add_ps(sum, _mm512_mul_ps(dd, _mm512_cvtepi32_ps(isum)));
    }
    store_k_sums(t, _mm512_setzero_ps(), sum, c0, r0, nr);
}

/// The whole product on a Q6_Kx16 matrix (`t.a`: Q8_K rows); never declines. From a few
/// activation rows on, the file layout's packed GEMM runs on chunks unpacked from the records
/// ([`q6k_chunk`]), so prompts run as fast as on the file layout.
#[inline(always)]
pub(crate) unsafe fn gemm_q6_k(t: &GemmArgs) -> bool {
    if t.m >= 4 {
        packed_kquant::gemm_chunks::<packed_kquant::Q6K>(t, |r0, _nr, b0, nbc, ch| {
            q6k_chunk(t.w.add(r0 / GROUP_ROWS * t.w_stride), b0, nbc, ch)
        });
        return true;
    }
    let mut owned = Vec::new();
    let a = prepared_or(t, &mut owned, |t| prepare_q8k6(t));
    each_group_and_row(t, |group, c, r0, nr| {
        q6k_direct(t, group, &a[c * t.nb..(c + 1) * t.nb], c, r0, nr)
    });
    true
}
