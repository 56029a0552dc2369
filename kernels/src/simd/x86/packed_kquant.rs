//! Packed GEMM for many activation rows with AVX-512 VNNI for the K-quants (Q4_K, Q5_K, Q6_K ×
//! Q8_K), bit-identical to the scalar `vec_dot` (see `formats::q4_k`).
//!
//! The reference takes, per super-block, one exact integer dot `isum = Σ sc(i)·q(i)·a(i)`
//! (`sc(i)` the scale of `i`'s sub-block), adds `(d·d_a)·isum` to one f32 sum, subtracts the min
//! term `(dmin·d_a)·Σ bsums·m` (Q4_K, Q5_K) from another, and adds the two at the end. Here a
//! tile of 16 weight rows is unpacked once per chunk of a few super-blocks and transposed so that
//! i32 lane `r` of every packed vector belongs to row `r`; each activation row is copied once per
//! call into the matching order. Then a few VNNI instructions per class of 4 values (elements
//! `≡ l (mod 8)`, the order the ×16 layouts of `repack.rs` share) and sub-block, with the
//! activation's bytes broadcast, add row `r`'s part of `isum` to lane `r` of an accumulator — no
//! horizontal sums — and the f32 steps run lane-wise in the reference's order, so the results
//! are the reference's bits (the integer sums are exact in any order).
//!
//! - **Q4_K, Q5_K** (32-value sub-blocks, unsigned values): a lane holds 4 values of one class
//!   and one sub-block. `vpdpbusd` adds them to the sub-block's dot, which one `vpmulld` with
//!   the lane's scale scales (see [`k4_dots`]): 2 multiply instructions per 8 values and lane,
//!   2 more per sub-block pair.
//! - **Q6_K** (16-value sub-blocks, a class has only 2 values in each): the products
//!   `sc·(q − 32)` as i16 pairs of one class and sub-block; one `vpdpwssd` per pair.
//!
//! The min term: `Σ_j m_j·B_j` with `B_j` the sum of sub-block `j`'s activations (from
//! `bsums`), 4 `vpdpwssd` of `(m_2k, m_2k+1)` lane pairs with `(B_2k, B_2k+1)`.
//!
//! Memory: a chunk of 16 rows × `KC` super-blocks (9–16 KiB) stays in L1 while every activation
//! row of a group passes over it; the running f32 sums of each activation row (2 vectors) wait
//! in a scratch buffer between chunks. Activation rows go in groups whose copies take at most
//! [`GROUP_BYTES`] (in L2/L3 while all tiles pass); the chunks are packed again per group. The
//! scratch (about `GROUP_BYTES` plus 40 KiB) is kept per thread between calls.

use core::arch::x86_64::*;
use std::cell::RefCell;

use super::mod8_order;
use crate::simd::GemmArgs;

/// Weight rows per packed tile (one i32 / f32 lane each).
const ROWS: usize = 16;
/// Bytes of a Q8_K block; its `d` at 0, `qs` at 4, `bsums` at 260.
const A_BYTES: usize = 292;
/// Running state per activation row: the sum and the min term.
const STATE: usize = 2;
/// Bytes of activation records per group of activation rows.
const GROUP_BYTES: usize = 4 << 20;

/// One row's super-block after [`KQuant::unpack`]: its f16 scales, the sub-block scales (Q4_K,
/// Q5_K: 8 six-bit ones; Q6_K: 16 signed bytes) and (Q4_K, Q5_K) the 6-bit mins.
pub(crate) struct RowBlock {
    d: u16,
    dmin: u16,
    sc: [u8; 16],
    mins: [u8; 8],
}

/// A K-quant weight format for the packed path.
pub(crate) trait KQuant {
    /// Bytes per super-block.
    const W_BYTES: usize;
    /// Whether the format has sub-block mins (the `dmin` term).
    const MINS: bool;
    /// Vectors per row and super-block that [`Self::unpack`] writes (16 i32 each); after the
    /// transpose, `16·ROW_VECS` vectors of one dword per row.
    const ROW_VECS: usize;
    /// Vectors per packed super-block: the transposed ones, then [`Self::scale_vectors`].
    const W_VECS: usize;
    /// Vectors of one activation super-block from [`Self::activations`].
    const A_VECS: usize;
    /// Super-blocks per packed chunk (its vectors stay in L1 while all activation rows pass).
    const KC: usize;
    /// Activation rows that share one pass over a packed chunk (2 or 3).
    const COLS: usize;
    /// Unpacks the super-block at `blk` into `ROW_VECS` vectors at `out`.
    unsafe fn unpack(blk: *const u8, out: *mut __m512i) -> RowBlock;
    /// Writes the vectors that follow the transposed ones (from the 16 rows' scales).
    unsafe fn scale_vectors(sc: &[[u8; 16]; ROWS], out: *mut __m512i);
    /// Writes the `A_VECS` vectors of the Q8_K values at `qs`.
    unsafe fn activations(qs: *const u8, out: *mut __m512i);
    /// `isum[c]`: lane `r` = the reference's integer dot (scaled by the sub-block scales) of
    /// weight row `r` and activation `c`, from a packed super-block `w` and activation vectors
    /// `a[c]`.
    unsafe fn dots<const NC: usize>(w: *const __m512i, a: &[*const i32; NC]) -> [__m512i; NC];
}

pub(crate) struct Q4K;
pub(crate) struct Q5K;
pub(crate) struct Q6K;

/// The 8 six-bit scales and mins of Q4_K / Q5_K (ggml's `get_scale_min_k4` for j = 0..8).
#[inline(always)]
unsafe fn scales_mins_k4(p: *const u8) -> ([u8; 16], [u8; 8]) {
    let w0 = (p as *const u32).read_unaligned();
    let w1 = (p.add(4) as *const u32).read_unaligned();
    let w2 = (p.add(8) as *const u32).read_unaligned();
    let sc_lo = w0 & 0x3f3f_3f3f;
    let m_lo = w1 & 0x3f3f_3f3f;
    let sc_hi = (w2 & 0x0f0f_0f0f) | (((w0 >> 6) & 0x0303_0303) << 4);
    let m_hi = ((w2 >> 4) & 0x0f0f_0f0f) | (((w1 >> 6) & 0x0303_0303) << 4);
    let join = |lo: u32, hi: u32| ((hi as u64) << 32 | lo as u64).to_le_bytes();
    let mut sc = [0u8; 16];
    sc[..8].copy_from_slice(&join(sc_lo, sc_hi));
    (sc, join(m_lo, m_hi))
}

/// Q4_K / Q5_K values (0..32) of sub-block `j` (`qs` chunk `j / 2`, low or high nibble, plus
/// the 5th bit `j` of `qh` when given), in [`mod8_order`].
#[inline(always)]
unsafe fn k4_values(qs: *const u8, qh: Option<__m256i>, j: usize) -> __m256i {
    let m4 = _mm256_set1_epi8(0x0f);
    let raw = mod8_order(_mm256_loadu_si256(qs.add(32 * (j / 2)) as *const __m256i));
    let mut q = if j.is_multiple_of(2) {
        _mm256_and_si256(raw, m4)
    } else {
        _mm256_and_si256(_mm256_srli_epi16::<4>(raw), m4)
    };
    if let Some(qh) = qh {
        let bit = _mm256_set1_epi8((1u8 << j) as i8);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
        q = _mm256_or_si256(q, _mm256_and_si256(set, _mm256_set1_epi8(0x10)));
    }
    q
}

/// Q4_K / Q5_K layout: packed vector `16p + 8h + l` holds, in lane `r`, row `r`'s 4 values of
/// class `l` in sub-block `j = 2p + h` (unsigned bytes); vector `64 + j` the rows' scales
/// `sc_j` (i32 lanes). Activations: the same dwords of the signed values (each 32 in
/// [`mod8_order`]).
#[inline(always)]
unsafe fn k4_scale_vectors(sc: &[[u8; 16]; ROWS], out: *mut __m512i) {
    let mut v = [[0i32; ROWS]; 8];
    for (r, s) in sc.iter().enumerate() {
        for j in 0..8 {
            v[j][r] = s[j] as i32;
        }
    }
    for (j, vj) in v.iter().enumerate() {
        out.add(j)
            .write(_mm512_loadu_si512(vj.as_ptr() as *const _));
    }
}

#[inline(always)]
unsafe fn k4_activations(qs: *const u8, out: *mut __m512i) {
    for p in 0..4 {
        let lo = mod8_order(_mm256_loadu_si256(qs.add(64 * p) as *const __m256i));
        let hi = mod8_order(_mm256_loadu_si256(qs.add(64 * p + 32) as *const __m256i));
        out.add(p)
            .write(_mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi));
    }
}

/// The Q4_K / Q5_K integer dots. Per sub-block pair `(2p, 2p + 1)`, `vpdpbusd` adds each
/// class's 4 values of a sub-block to that sub-block's dot (at most 32·31·128, i32), and one
/// `vpmulld` per sub-block scales it: 2 multiplies per 8 values and 2 per sub-block.
#[inline(always)]
unsafe fn k4_dots<const NC: usize>(w: *const __m512i, a: &[*const i32; NC]) -> [__m512i; NC] {
    if NC == 2 {
        let [i0, i1] = k4_dots_2(w, a[0], a[1]);
        let mut out = [_mm512_setzero_si512(); NC];
        out[0] = i0;
        out[1] = i1;
        return out;
    }
    let zero = _mm512_setzero_si512();
    let mut isum = [zero; NC];
    // an opaque trip count keeps LLVM from unrolling the four pairs: fully unrolled, its
    // schedule runs out of registers
    for p in 0..core::hint::black_box(4) {
        // per activation: sub-block 2p's dot in d[0] + d[1], 2p + 1's in d[2] + d[3] (two sums
        // each, even and odd classes: shorter dependency chains)
        let mut d = [[zero; 4]; NC];
        for l in 0..8 {
            let w_lo = w.add(16 * p + l).read();
            let w_hi = w.add(16 * p + 8 + l).read();
            for c in 0..NC {
                let a_lo = _mm512_set1_epi32(a[c].add(16 * p + l).read());
                let a_hi = _mm512_set1_epi32(a[c].add(16 * p + 8 + l).read());
                d[c][l % 2] = _mm512_dpbusd_epi32(d[c][l % 2], w_lo, a_lo);
                d[c][2 + l % 2] = _mm512_dpbusd_epi32(d[c][2 + l % 2], w_hi, a_hi);
            }
        }
        let sc_lo = w.add(64 + 2 * p).read();
        let sc_hi = w.add(64 + 2 * p + 1).read();
        for c in 0..NC {
            let [d0, d1, d2, d3] = d[c];
            let lo = _mm512_mullo_epi32(_mm512_add_epi32(d0, d1), sc_lo);
            let hi = _mm512_mullo_epi32(_mm512_add_epi32(d2, d3), sc_hi);
            isum[c] = _mm512_add_epi32(isum[c], _mm512_add_epi32(lo, hi));
        }
    }
    isum
}

/// Sub-block pair `\p`'s dot products into register set `$set` (`""`: `zmm0..7`, `"1"`:
/// `zmm10..17`; register `4c + 2h + (l mod 2)` of the set holds row `c`'s chain of sub-block
/// `2p + h` and the classes `l` of that parity), with the lines `$between` after the first
/// two classes of each half (the other set's reduction).
#[rustfmt::skip]
macro_rules! k4_pair_dots {
    ($set:literal $(, $between:expr)?) => {
        concat!(
            ".irp r,0,1,2,3,4,5,6,7\n",
            "vpxord zmm", $set, "\\r, zmm", $set, "\\r, zmm", $set, "\\r\n",
            ".endr\n",
            ".irp l,0,2,4,6\n",
            k4_class!($set, "0", "0", "2", "4", "6"), "\n",
            k4_class!($set, "1", "1", "3", "5", "7"), "\n",
            $(".if \\l == 2\n", $between, "\n", ".endif\n",)?
            ".endr",
        )
    };
}

/// Class `\l + $o` of sub-block pair `\p`: its two weight vectors (sub-blocks `2p`, `2p + 1`)
/// against both rows' activations, into set `$set`'s registers `$r0_lo` … `$r1_hi`.
#[rustfmt::skip]
macro_rules! k4_class {
    ($set:literal, $o:literal, $r0_lo:literal, $r0_hi:literal, $r1_lo:literal, $r1_hi:literal) => {
        concat!(
            "vmovdqu64 zmm8, zmmword ptr [{w} + 64*(16*\\p + \\l + ", $o, ")]\n",
            "vmovdqu64 zmm9, zmmword ptr [{w} + 64*(16*\\p + 8 + \\l + ", $o, ")]\n",
            "vpdpbusd zmm", $set, $r0_lo, ", zmm8, dword ptr [{a0} + 4*(16*\\p + \\l + ", $o, ")]{{1to16}}\n",
            "vpdpbusd zmm", $set, $r0_hi, ", zmm9, dword ptr [{a0} + 4*(16*\\p + 8 + \\l + ", $o, ")]{{1to16}}\n",
            "vpdpbusd zmm", $set, $r1_lo, ", zmm8, dword ptr [{a1} + 4*(16*\\p + \\l + ", $o, ")]{{1to16}}\n",
            "vpdpbusd zmm", $set, $r1_hi, ", zmm9, dword ptr [{a1} + 4*(16*\\p + 8 + \\l + ", $o, ")]{{1to16}}",
        )
    };
}

/// Sub-block pair `\p − 1`'s chains in register set `$set`, summed per sub-block, scaled by
/// the rows' scales and added to the rows' sums.
#[rustfmt::skip]
macro_rules! k4_pair_reduce {
    ($set:literal) => {
        concat!(
            "vpaddd zmm", $set, "0, zmm", $set, "0, zmm", $set, "1\n",
            "vpaddd zmm", $set, "2, zmm", $set, "2, zmm", $set, "3\n",
            "vpaddd zmm", $set, "4, zmm", $set, "4, zmm", $set, "5\n",
            "vpaddd zmm", $set, "6, zmm", $set, "6, zmm", $set, "7\n",
            "vpmulld zmm", $set, "0, zmm", $set, "0, zmmword ptr [{w} + 64*(64 + 2*\\p - 2)]\n",
            "vpmulld zmm", $set, "2, zmm", $set, "2, zmmword ptr [{w} + 64*(64 + 2*\\p - 1)]\n",
            "vpmulld zmm", $set, "4, zmm", $set, "4, zmmword ptr [{w} + 64*(64 + 2*\\p - 2)]\n",
            "vpmulld zmm", $set, "6, zmm", $set, "6, zmmword ptr [{w} + 64*(64 + 2*\\p - 1)]\n",
            "vpaddd {i0}, {i0}, zmm", $set, "0\n",
            "vpaddd {i0}, {i0}, zmm", $set, "2\n",
            "vpaddd {i1}, {i1}, zmm", $set, "4\n",
            "vpaddd {i1}, {i1}, zmm", $set, "6",
        )
    };
}

/// [`k4_dots`] for 2 activation rows in assembly, the schedule that LLVM did not find: the
/// dot products of sub-block pair `p` (8 chains: 2 rows × 2 sub-blocks × even/odd classes)
/// go to one register set while the previous pair's chains, in the other set, are summed and
/// scaled by `vpmulld` (integer sums: exact in any order).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn k4_dots_2(w: *const __m512i, a0: *const i32, a1: *const i32) -> [__m512i; 2] {
    let (mut i0, mut i1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
    // SAFETY (caller): `w` holds a packed super-block (72 vectors), `a0`/`a1` an activation
    // record's 64 dwords each; the assembly reads only those.
    core::arch::asm!(
        // pair 0 into set A (zmm0..7)
        ".irp p,0",
        k4_pair_dots!(""),
        ".endr",
        // pairs 1 and 3 into set B (zmm10..17) while set A (pairs 0 and 2) is reduced; pair 2
        // into set A while set B (pair 1) is reduced
        ".irp p,1,2,3",
        ".if \\p % 2",
        k4_pair_dots!("1", k4_pair_reduce!("")),
        ".else",
        k4_pair_dots!("", k4_pair_reduce!("1")),
        ".endif",
        ".endr",
        // set B: pair 3 (the scales of pair p − 1 = 3)
        ".irp p,4",
        k4_pair_reduce!("1"),
        ".endr",
        w = in(reg) w,
        a0 = in(reg) a0,
        a1 = in(reg) a1,
        i0 = inout(zmm_reg) i0,
        i1 = inout(zmm_reg) i1,
        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
        out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
        out("zmm8") _, out("zmm9") _,
        out("zmm10") _, out("zmm11") _, out("zmm12") _, out("zmm13") _,
        out("zmm14") _, out("zmm15") _, out("zmm16") _, out("zmm17") _,
        options(nostack, readonly, preserves_flags),
    );
    [i0, i1]
}

/// A Q4_K (`FIVE = false`) or Q5_K super-block's 256 values, unsigned, as 4 vectors of
/// sub-block pairs, and its scales.
#[inline(always)]
unsafe fn k4_unpack<const FIVE: bool>(blk: *const u8, out: *mut __m512i) -> RowBlock {
    let (sc, mins) = scales_mins_k4(blk.add(4));
    // Q5_K: 32 bytes of 5th bits come before the low nibbles
    let (qh, qs) = if FIVE {
        let qh = mod8_order(_mm256_loadu_si256(blk.add(16) as *const __m256i));
        (Some(qh), blk.add(48))
    } else {
        (None, blk.add(16))
    };
    for p in 0..4 {
        let lo = k4_values(qs, qh, 2 * p);
        let hi = k4_values(qs, qh, 2 * p + 1);
        out.add(p)
            .write(_mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi));
    }
    RowBlock {
        d: (blk as *const u16).read_unaligned(),
        dmin: (blk.add(2) as *const u16).read_unaligned(),
        sc,
        mins,
    }
}

/// Q4_K and Q5_K differ only in the block size and the 5th bits.
macro_rules! k4_kquant {
    ($format:ty, $bytes:expr, $five:expr) => {
        impl KQuant for $format {
            const W_BYTES: usize = $bytes;
            const MINS: bool = true;
            const ROW_VECS: usize = 4;
            const W_VECS: usize = 72;
            const A_VECS: usize = 4;
            const KC: usize = 4;
            const COLS: usize = 2;

            #[inline(always)]
            unsafe fn unpack(blk: *const u8, out: *mut __m512i) -> RowBlock {
                k4_unpack::<$five>(blk, out)
            }

            #[inline(always)]
            unsafe fn scale_vectors(sc: &[[u8; 16]; ROWS], out: *mut __m512i) {
                k4_scale_vectors(sc, out)
            }

            #[inline(always)]
            unsafe fn activations(qs: *const u8, out: *mut __m512i) {
                k4_activations(qs, out)
            }

            #[inline(always)]
            unsafe fn dots<const NC: usize>(
                w: *const __m512i,
                a: &[*const i32; NC],
            ) -> [__m512i; NC] {
                k4_dots::<NC>(w, a)
            }
        }
    };
}

k4_kquant!(Q4K, 144, false);
k4_kquant!(Q5K, 176, true);

/// Q6_K layout: dword `4S + j` of a super-block holds the values `q + 32` (0..64, unsigned) of
/// elements `16S + {j, j + 8, j + 4, j + 12}` of 16-value sub-block `S` (the order in which
/// the ×16 records' class chunks `j` and `j + 4` combine, see `repacked::q6k_chunk`); packed
/// vector `4S + j` holds row `r`'s in lane `r`. Then vector `64 + S` the rows' scales `sc_S`
/// (i32 lanes) and vector `80 + k` the i16 pairs `(sc_2k, sc_2k+1)`. Activations: the same
/// dwords of the signed values, then one vector of the i16 pairs `(A_2k, A_2k+1)`, `A_S` the
/// sum of sub-block `S`'s 16 activations (from the values; the reference never reads `bsums`).
///
/// Per sub-block, 4 `vpdpbusd` give `Σ q·a` and one `vpmulld` scales it; the offset 32 comes
/// off at the end as `32·Σ sc·A` (8 `vpdpwssd`): 88 multiplies per super-block and activation,
/// where the products `sc·(q − 32)` as i16 pairs took 128.
impl KQuant for Q6K {
    const W_BYTES: usize = 210;
    const MINS: bool = false;
    const ROW_VECS: usize = 4;
    const W_VECS: usize = 88;
    const A_VECS: usize = 5;
    const KC: usize = 3;
    const COLS: usize = 3;

    #[inline(always)]
    unsafe fn unpack(blk: *const u8, out: *mut __m512i) -> RowBlock {
        let m4 = _mm256_set1_epi8(0x0f);
        let mut sc = [0u8; 16];
        core::ptr::copy_nonoverlapping(blk.add(192), sc.as_mut_ptr(), 16);
        for h in 0..2 {
            let ld = |p: *const u8| _mm256_loadu_si256(p as *const __m256i);
            let ql0 = ld(blk.add(64 * h));
            let ql1 = ld(blk.add(64 * h + 32));
            let qh = ld(blk.add(128 + 32 * h));
            let hb = |m: i8| _mm256_and_si256(qh, _mm256_set1_epi8(m));
            // group 4h + k: elements 128h + 32k + i (see `formats::q6_k`)
            let q = [
                _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16::<4>(hb(0x03))),
                _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_slli_epi16::<2>(hb(0x0c))),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4), hb(0x30)),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                    _mm256_srli_epi16::<2>(hb(-0x40)),
                ),
            ];
            for k in 0..2 {
                let v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q[2 * k]), q[2 * k + 1]);
                out.add(2 * h + k).write(q6k_dword_order(v));
            }
        }
        RowBlock {
            d: (blk.add(208) as *const u16).read_unaligned(),
            dmin: 0,
            sc,
            mins: [0; 8],
        }
    }

    #[inline(always)]
    unsafe fn scale_vectors(sc: &[[u8; 16]; ROWS], out: *mut __m512i) {
        let mut single = [[0i32; ROWS]; 16];
        let mut pairs = [[0i32; ROWS]; 8];
        for (r, s) in sc.iter().enumerate() {
            for k in 0..16 {
                single[k][r] = s[k] as i8 as i32;
            }
            for k in 0..8 {
                let (lo, hi) = (
                    s[2 * k] as i8 as i16 as u16,
                    s[2 * k + 1] as i8 as i16 as u16,
                );
                pairs[k][r] = (lo as u32 | (hi as u32) << 16) as i32;
            }
        }
        for (k, v) in single.iter().chain(&pairs).enumerate() {
            out.add(k).write(_mm512_loadu_si512(v.as_ptr() as *const _));
        }
    }

    #[inline(always)]
    unsafe fn activations(qs: *const u8, out: *mut __m512i) {
        for v in 0..4 {
            let x = _mm512_loadu_si512(qs.add(64 * v) as *const _);
            out.add(v).write(q6k_dword_order(x));
        }
        let mut pairs = [0i32; 16];
        for k in 0..8 {
            let sum = |s: usize| {
                (0..16)
                    .map(|i| *qs.add(16 * s + i) as i8 as i32)
                    .sum::<i32>()
            };
            let (lo, hi) = (sum(2 * k) as i16 as u16, sum(2 * k + 1) as i16 as u16);
            pairs[k] = (lo as u32 | (hi as u32) << 16) as i32;
        }
        out.add(4)
            .write(_mm512_loadu_si512(pairs.as_ptr() as *const _));
    }

    #[inline(always)]
    unsafe fn dots<const NC: usize>(w: *const __m512i, a: &[*const i32; NC]) -> [__m512i; NC] {
        let zero = _mm512_setzero_si512();
        let mut isum = [zero; NC];
        for s in 0..16 {
            let mut d = [[zero; 2]; NC];
            for j in 0..4 {
                let wv = w.add(4 * s + j).read();
                for c in 0..NC {
                    let av = _mm512_set1_epi32(a[c].add(4 * s + j).read());
                    d[c][j % 2] = _mm512_dpbusd_epi32(d[c][j % 2], wv, av);
                }
            }
            let sc = w.add(64 + s).read();
            for c in 0..NC {
                let dot = _mm512_add_epi32(d[c][0], d[c][1]);
                isum[c] = _mm512_add_epi32(isum[c], _mm512_mullo_epi32(dot, sc));
            }
        }
        for c in 0..NC {
            // Σ sc·(q − 32)·a = Σ sc·q·a − 32·Σ sc·A
            let mut off = zero;
            for k in 0..8 {
                let pair = _mm512_set1_epi32(a[c].add(64 + k).read());
                off = _mm512_dpwssd_epi32(off, w.add(80 + k).read(), pair);
            }
            isum[c] = _mm512_sub_epi32(isum[c], _mm512_slli_epi32::<5>(off));
        }
        isum
    }
}

/// Every 16 bytes (a Q6_K sub-block) in the order `0, 8, 4, 12, 1, 9, 5, 13, …` (see [`Q6K`]).
#[inline(always)]
pub(crate) unsafe fn q6k_dword_order(v: __m512i) -> __m512i {
    let t = _mm_setr_epi8(0, 8, 4, 12, 1, 9, 5, 13, 2, 10, 6, 14, 3, 11, 7, 15);
    _mm512_shuffle_epi8(v, _mm512_broadcast_i32x4(t))
}

/// Transposes 16 vectors of 16 i32 lanes: lane `r` of output `i` is lane `i` of input `r`.
#[inline(always)]
unsafe fn transpose16(v: &[__m512i; 16]) -> [__m512i; 16] {
    let z = _mm512_setzero_si512();
    let mut a = [z; 16];
    for k in 0..8 {
        a[2 * k] = _mm512_unpacklo_epi32(v[2 * k], v[2 * k + 1]);
        a[2 * k + 1] = _mm512_unpackhi_epi32(v[2 * k], v[2 * k + 1]);
    }
    // b[4k + j], 128-bit lane q: column 4q + j of rows 4k..4k + 4
    let mut b = [z; 16];
    for k in 0..4 {
        b[4 * k] = _mm512_unpacklo_epi64(a[4 * k], a[4 * k + 2]);
        b[4 * k + 1] = _mm512_unpackhi_epi64(a[4 * k], a[4 * k + 2]);
        b[4 * k + 2] = _mm512_unpacklo_epi64(a[4 * k + 1], a[4 * k + 3]);
        b[4 * k + 3] = _mm512_unpackhi_epi64(a[4 * k + 1], a[4 * k + 3]);
    }
    // a 4 × 4 transpose of 128-bit lanes for each j
    let mut out = [z; 16];
    for j in 0..4 {
        let c0 = _mm512_shuffle_i32x4::<0x88>(b[j], b[4 + j]);
        let c1 = _mm512_shuffle_i32x4::<0xdd>(b[j], b[4 + j]);
        let c2 = _mm512_shuffle_i32x4::<0x88>(b[8 + j], b[12 + j]);
        let c3 = _mm512_shuffle_i32x4::<0xdd>(b[8 + j], b[12 + j]);
        out[j] = _mm512_shuffle_i32x4::<0x88>(c0, c2);
        out[4 + j] = _mm512_shuffle_i32x4::<0x88>(c1, c3);
        out[8 + j] = _mm512_shuffle_i32x4::<0xdd>(c0, c2);
        out[12 + j] = _mm512_shuffle_i32x4::<0xdd>(c1, c3);
    }
    out
}

/// One packed chunk: per super-block `W_VECS` weight vectors, 4 min vectors (lane `r` =
/// `(m_2k, m_2k+1)` of row `r`), and the rows' `d` and `dmin` as f32.
pub(crate) struct Chunk {
    pub(crate) w: *mut __m512i,
    pub(crate) mins: *mut __m512i,
    pub(crate) d: *mut __m512,
    pub(crate) dmin: *mut __m512,
    /// 16 rows × `ROW_VECS` of one super-block, before the transpose.
    rows: *mut __m512i,
}

/// Most vectors per row and super-block before the transpose.
const MAX_ROW_VECS: usize = 8;

/// Packs super-blocks `b0..b0 + nbc` of the 16 rows starting at `rows`.
#[inline(always)]
unsafe fn pack_chunk<F: KQuant>(rows: &[*const u8; ROWS], b0: usize, nbc: usize, ch: &Chunk) {
    for b in 0..nbc {
        let mut d = [0u16; ROWS];
        let mut dmin = [0u16; ROWS];
        let mut sc = [[0u8; 16]; ROWS];
        let mut mins = [[0u32; ROWS]; 4];
        for (r, row) in rows.iter().enumerate() {
            let rb = F::unpack(row.add((b0 + b) * F::W_BYTES), ch.rows.add(F::ROW_VECS * r));
            d[r] = rb.d;
            dmin[r] = rb.dmin;
            sc[r] = rb.sc;
            for k in 0..4 {
                mins[k][r] = rb.mins[2 * k] as u32 | (rb.mins[2 * k + 1] as u32) << 16;
            }
        }
        let w = ch.w.add(b * F::W_VECS);
        for g in 0..F::ROW_VECS {
            let mut v = [_mm512_setzero_si512(); ROWS];
            for (r, vr) in v.iter_mut().enumerate() {
                *vr = ch.rows.add(F::ROW_VECS * r + g).read();
            }
            let u = transpose16(&v);
            for (i, ui) in u.iter().enumerate() {
                w.add(16 * g + i).write(*ui);
            }
        }
        F::scale_vectors(&sc, w.add(16 * F::ROW_VECS));
        ch.d.add(b).write(_mm512_cvtph_ps(_mm256_loadu_si256(
            d.as_ptr() as *const __m256i
        )));
        if F::MINS {
            ch.dmin.add(b).write(_mm512_cvtph_ps(_mm256_loadu_si256(
                dmin.as_ptr() as *const __m256i
            )));
            for (k, mk) in mins.iter().enumerate() {
                ch.mins
                    .add(4 * b + k)
                    .write(_mm512_loadu_si512(mk.as_ptr() as *const _));
            }
        }
    }
}

/// Vectors per activation record: the format's vectors, then one with `d` in dword 0 and the
/// i16 pairs `(B_2k, B_2k+1)` in dwords 8..12, `B_j = bsums[2j] + bsums[2j+1]` (the sum of
/// sub-block `j`'s 32 values; see [`bsums_fit`]).
const fn rec<F: KQuant>() -> usize {
    F::A_VECS + 1
}

/// Copies activation rows `g0..g0 + gm` (Q8_K) into records of [`rec`] vectors per
/// super-block. The records of chunk `b0..b0 + nbc` lie together, activation row after
/// activation row (`b0·gm + c·nbc + b − b0`), so a pass over a chunk reads one stream.
#[inline(always)]
unsafe fn activation_records<F: KQuant>(t: &GemmArgs, g0: usize, gm: usize, out: *mut __m512i) {
    for b0 in (0..t.nb).step_by(F::KC) {
        let nbc = (t.nb - b0).min(F::KC);
        for c in 0..gm {
            for b in b0..b0 + nbc {
                let blk = t.a.add((g0 + c) * t.a_stride + b * A_BYTES);
                let rec = out.add((b0 * gm + c * nbc + b - b0) * rec::<F>());
                F::activations(blk.add(4), rec);
                let d = _mm256_castps_si256(_mm256_set1_ps((blk as *const f32).read_unaligned()));
                let bsums = _mm256_loadu_si256(blk.add(260) as *const __m256i);
                let sub_sums =
                    _mm256_cvtepi32_epi16(_mm256_madd_epi16(bsums, _mm256_set1_epi16(1)));
                let hi = _mm256_castsi128_si256(sub_sums);
                rec.add(F::A_VECS)
                    .write(_mm512_inserti64x4::<1>(_mm512_castsi256_si512(d), hi));
            }
        }
    }
}

/// One group of activation rows: their records ([`activation_records`]) and running sums.
struct Group {
    /// First activation row and row count.
    g0: usize,
    gm: usize,
    records: *const __m512i,
    state: *mut __m512,
}

/// Activation rows `c0..c0 + NC` (of group `gr`) against super-blocks `b0..b0 + nbc` of one
/// packed tile. The running sums come from the group's state (zero on the first chunk) and go
/// back to it, or, after the last chunk, are summed in the reference's order into lanes
/// `0..nr` of the output.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn chunk_cols<F: KQuant, const NC: usize>(
    t: &GemmArgs,
    ch: &Chunk,
    gr: &Group,
    c0: usize,
    b0: usize,
    nbc: usize,
    r0: usize,
    nr: usize,
) {
    let zf = _mm512_setzero_ps();
    let mut sums = [zf; NC];
    let mut mins = [zf; NC];
    let ci = c0 - gr.g0;
    if b0 > 0 {
        for c in 0..NC {
            let s = gr.state.add((ci + c) * STATE);
            sums[c] = s.read();
            mins[c] = s.add(1).read();
        }
    }
    for b in 0..nbc {
        let mut ap = [gr.records as *const i32; NC];
        for c in 0..NC {
            ap[c] = gr
                .records
                .add((b0 * gr.gm + (ci + c) * nbc + b) * rec::<F>())
                as *const i32;
        }
        let aux = F::dots::<NC>(ch.w.add(b * F::W_VECS), &ap);
        // the record's last vector: d in dword 0, the (B_2k, B_2k+1) pairs in dwords 8..12
        let ex = F::A_VECS * 16;
        let dw = ch.d.add(b).read();
        for c in 0..NC {
            let da = _mm512_set1_ps((ap[c].add(ex) as *const f32).read());
            if F::MINS {
                // sumf −= (dmin·d_a)·Σ bsums[k]·m[k/2], as Σ_j B_j·m_j
                let mut sumi = _mm512_setzero_si512();
                for k in 0..4 {
                    let bs = ap[c].add(ex + 8 + k).read();
                    let mv = ch.mins.add(4 * b + k).read();
                    sumi = _mm512_dpwssd_epi32(sumi, mv, _mm512_set1_epi32(bs));
                }
                let dm = _mm512_mul_ps(ch.dmin.add(b).read(), da);
                mins[c] = _mm512_sub_ps(mins[c], _mm512_mul_ps(dm, _mm512_cvtepi32_ps(sumi)));
            }
            // sum += (d·d_a)·isum
            let dd = _mm512_mul_ps(dw, da);
            sums[c] = _mm512_add_ps(sums[c], _mm512_mul_ps(dd, _mm512_cvtepi32_ps(aux[c])));
        }
    }
    if b0 + nbc < t.nb {
        for c in 0..NC {
            let s = gr.state.add((ci + c) * STATE);
            s.write(sums[c]);
            s.add(1).write(mins[c]);
        }
    } else {
        let mask: __mmask16 = if nr >= ROWS { 0xffff } else { (1u16 << nr) - 1 };
        for c in 0..NC {
            let total = _mm512_add_ps(mins[c], sums[c]);
            _mm512_mask_storeu_ps(t.out.add((c0 + c) * t.ldo + r0), mask, total);
        }
    }
}

thread_local! {
    /// Per-thread scratch (activation records, running sums, one packed chunk), kept between
    /// calls: a prompt's many products reuse it without new allocations.
    static SCRATCH: RefCell<Vec<__m512i>> = const { RefCell::new(Vec::new()) };
}

/// Whether every sub-block sum `bsums[2j] + bsums[2j+1]` of the `m` Q8_K rows fits in i16.
/// Always true for the quantizers' output (|bsums| ≤ 16·127); hand-made bytes may not be.
#[inline(always)]
pub(crate) unsafe fn bsums_fit(t: &GemmArgs) -> bool {
    let mut lo = _mm256_setzero_si256();
    let mut hi = _mm256_setzero_si256();
    for c in 0..t.m {
        for b in 0..t.nb {
            let p = t.a.add(c * t.a_stride + b * A_BYTES + 260);
            let sums = _mm256_madd_epi16(
                _mm256_loadu_si256(p as *const __m256i),
                _mm256_set1_epi16(1),
            );
            lo = _mm256_min_epi32(lo, sums);
            hi = _mm256_max_epi32(hi, sums);
        }
    }
    let out = _mm256_or_si256(
        _mm256_cmpgt_epi32(_mm256_set1_epi32(i16::MIN as i32), lo),
        _mm256_cmpgt_epi32(hi, _mm256_set1_epi32(i16::MAX as i32)),
    );
    _mm256_testz_si256(out, out) == 1
}

/// The whole `n × m` product (see [`GemmArgs`]); `t.a` holds Q8_K rows. Declines (returns
/// false, writes nothing) for Q4_K / Q5_K when [`bsums_fit`] fails.
#[inline(always)]
pub(crate) unsafe fn gemm<F: KQuant>(t: &GemmArgs) -> bool {
    if F::MINS && !bsums_fit(t) {
        return false;
    }
    gemm_chunks::<F>(t, |r0, nr, b0, nbc, ch| {
        let mut rows = [t.w; ROWS];
        for (r, row) in rows.iter_mut().enumerate() {
            // rows past the end repeat the last one (their lanes are not stored)
            *row = t.w.add((r0 + r.min(nr - 1)) * t.w_stride);
        }
        pack_chunk::<F>(&rows, b0, nbc, ch);
    });
    true
}

/// The product with the packed chunks from `pack(r0, nr, b0, nbc, chunk)`: super-blocks
/// `b0..b0 + nbc` of weight rows `r0..r0 + nr` (≤ 16) in the [`Chunk`] layout. The file layout
/// packs them from its rows ([`gemm`]); the ×16 layouts of `repacked.rs` from their records.
#[inline(always)]
pub(crate) unsafe fn gemm_chunks<F: KQuant>(
    t: &GemmArgs,
    pack: impl Fn(usize, usize, usize, usize, &Chunk),
) {
    let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    // activation rows per group: their records stay in cache while every tile passes over them
    let gm_max = (GROUP_BYTES / (t.nb * rec::<F>() * 64))
        .max(F::COLS)
        .min(t.m);
    let n_records = gm_max * t.nb * rec::<F>();
    let n_state = gm_max * STATE;
    let kc = F::KC;
    let n_chunk = kc * (F::W_VECS + 4 + 2) + ROWS * MAX_ROW_VECS;
    let need = n_records + n_state + n_chunk;
    if buf.len() < need {
        buf.resize(need, _mm512_setzero_si512());
    }
    let base = buf.as_mut_ptr();
    let cb = base.add(n_records + n_state);
    let ch = Chunk {
        w: cb,
        mins: cb.add(kc * F::W_VECS),
        d: cb.add(kc * (F::W_VECS + 4)) as *mut __m512,
        dmin: cb.add(kc * (F::W_VECS + 4) + kc) as *mut __m512,
        rows: cb.add(kc * (F::W_VECS + 6)),
    };
    for g0 in (0..t.m).step_by(gm_max) {
        let gm = (t.m - g0).min(gm_max);
        activation_records::<F>(t, g0, gm, base);
        let gr = Group {
            g0,
            gm,
            records: base,
            state: base.add(n_records) as *mut __m512,
        };
        for r0 in (0..t.n).step_by(ROWS) {
            let nr = (t.n - r0).min(ROWS);
            for b0 in (0..t.nb).step_by(kc) {
                let nbc = (t.nb - b0).min(kc);
                pack(r0, nr, b0, nbc, &ch);
                let mut c0 = g0;
                while c0 + F::COLS <= g0 + gm {
                    if F::COLS == 3 {
                        chunk_cols::<F, 3>(t, &ch, &gr, c0, b0, nbc, r0, nr);
                    } else {
                        chunk_cols::<F, 2>(t, &ch, &gr, c0, b0, nbc, r0, nr);
                    }
                    c0 += F::COLS;
                }
                for c in c0..g0 + gm {
                    chunk_cols::<F, 1>(t, &ch, &gr, c, b0, nbc, r0, nr);
                }
            }
        }
    }
    SCRATCH.with(|s| *s.borrow_mut() = buf);
}
