//! AVX2 products on the Q4_0x16, Q8_0x16, Q4_Kx16, Q5_Kx16 and Q6_Kx16 repacked layouts of
//! [`crate::repack`], for CPUs without AVX-512 (most laptops). Every kernel also runs on a
//! matrix in the GGUF layout, one 16-row group at a time written into a scratch ([`Groups`]):
//! the prompt GEMMs of machines that keep the mmap path (under 12 GiB) use that.
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
//!
//! Q4_Kx16 ([`gemm_q4_k`]) and Q5_Kx16 ([`gemm_q5_k`]; see [`k4_values`] for its 5th bits): a
//! record chunk `(c, l)` holds, per row lane, the 4 class-`l` values of sub-blocks `2c` (low
//! nibbles) and `2c + 1` (high nibbles). Each half's `maddubs`
//! with the activation's matching 4 bytes gives two pair sums (at most ±3840) in the row's lane;
//! the 8 chunks of a sub-block add up in i16 (at most ±30720) before one `madd` with the
//! sub-block's scale in both i16 halves of the lane gives `sc·dot` in i32. That is the
//! super-block's integer dot (exact in any order) at 2 `maddubs` + 2 `add` per chunk and one
//! `madd` per sub-block; the f32 steps follow the reference's order as `repacked::k4_direct`
//! does. Q6_Kx16 ([`gemm_q6_k`]): see [`q6k_cols`]. Q8_0x16 ([`gemm_q8_0`]): the signed values
//! meet the activation as `|w| × sign(a, w)`, as in the file layout's tile, and each `maddubs`
//! is widened by its own `madd` (a pair sum reaches ±32512).
//!
//! Decode reads each record once, both 8-row halves back to back, with its prefetches spread
//! over the chunk loop; a prompt's GEMM unpacks a Q5_K/Q6_K group's values once for all its
//! passes. A prompt's Q4_0/Q8_0 pass over a full group takes both halves at once
//! ([`panel_cols_both`]), so that each activation broadcast (and each panel line) serves 16
//! rows: half the loads per `maddubs` (+7.5–18 % on Zen 3, `bench/REPORT.md`).

use core::arch::x86_64::*;

use super::legacy;
use super::repacked::{
    prefetch_block_ahead, prepare_q8k, values, Q8KPrepared, Repacked, PREFETCH_BYTES, Q8K_BYTES,
};
use super::{packed, store_rows};
use crate::repack::{write_group, RepackLayout, GROUP_ROWS, Q4K_RECORD};
use crate::simd::{prepared_or, GemmArgs, Line64};

/// Activation rows per pass over a group's blocks (each block half is unpacked once per pass).
const COLS: usize = 4;

/// Where a GEMM's 16-row groups come from: a repacked matrix (`t.w` the first group,
/// `t.w_stride` the group stride), or a matrix in the GGUF layout (`t.w` the first row,
/// `t.w_stride` the row stride) whose groups are written one at a time into a scratch, in the
/// layout a [`crate::repack::RepackedMatrix`] holds. The second lets machines that do not
/// repack at load time (under 12 GiB, the mmap path) run prompts on the ×16 kernels.
pub(crate) struct Groups {
    file: Option<RepackLayout>,
    scratch: Vec<u8>,
}

impl Groups {
    /// Groups of a repacked matrix.
    pub(crate) fn repacked() -> Self {
        Groups {
            file: None,
            scratch: Vec::new(),
        }
    }

    /// Groups written per call from the GGUF rows of a matrix whose type has `layout`.
    pub(crate) fn file(layout: RepackLayout) -> Self {
        Groups {
            file: Some(layout),
            scratch: Vec::new(),
        }
    }

    /// Group `gi` (rows `r0..r0+nr`, `r0 = 16·gi`). With the file layout, the previous
    /// group's pointer is no longer valid.
    #[inline(always)]
    unsafe fn get(&mut self, t: &GemmArgs, gi: usize, r0: usize, nr: usize) -> *const u8 {
        let Some(layout) = self.file else {
            return t.w.add(gi * t.w_stride);
        };
        let row_bytes = t.nb * layout.ty().type_size();
        self.scratch.resize(layout.group_bytes(t.nb), 0);
        // rows past the matrix repeat its last row, as in a repacked matrix
        let row = |r: usize| {
            // SAFETY: rows r0..r0+nr exist, `t.w_stride` apart, each `row_bytes` long
            unsafe {
                core::slice::from_raw_parts(t.w.add((r0 + r.min(nr - 1)) * t.w_stride), row_bytes)
            }
        };
        write_group(layout, t.nb, row, &mut self.scratch);
        self.scratch.as_ptr()
    }
}

/// A 32-element format with a ×16 layout and an AVX2 kernel on it: how the 8 rows of a block
/// half meet `NC` activation rows.
pub(crate) trait Legacy16: Repacked {
    /// `start[c] + Σ_g w_g·a_c,g` for `NC` activation blocks (`a[c]` = their 32 values)
    /// against half `h` of the block whose values are at `qs`; lane `r` = row `r`. Each chunk
    /// is loaded and unpacked once and meets every activation row before the next one, so
    /// that few vectors stay live (AVX2 has 16 registers).
    unsafe fn dots<const NC: usize>(
        qs: *const u8,
        h: usize,
        a: &[*const u8; NC],
        start: [i32; NC],
    ) -> [__m256i; NC];
    /// [`Legacy16::dots`] for both halves of the block (rows 0..8, then 8..16) against the
    /// [`COLS`] rows of one activation panel block (`blk`).
    #[inline(always)]
    unsafe fn dots_both(qs: *const u8, blk: *const u8) -> ([__m256i; COLS], [__m256i; COLS]) {
        let a: [*const u8; COLS] = core::array::from_fn(|c| blk.add(PANEL_VALUES + 32 * c));
        let start = panel_starts(blk);
        (
            Self::dots::<COLS>(qs, 0, &a, start),
            Self::dots::<COLS>(qs, 1, &a, start),
        )
    }
    /// `acc` plus the block's term, in the reference's order.
    unsafe fn update8(acc: __m256, sumi: __m256i, dw: __m256, da: __m256) -> __m256;
}

impl Legacy16 for legacy::Q4_0 {
    #[inline(always)]
    unsafe fn dots<const NC: usize>(
        qs: *const u8,
        h: usize,
        a: &[*const u8; NC],
        start: [i32; NC],
    ) -> [__m256i; NC] {
        // chunk c: low nibbles = values 4c..4c+4, high = 16+4c..; pair sums within ±3840, so
        // a block's 8 groups add up in i16 before one `madd`
        let mask = _mm256_set1_epi8(0x0f);
        let mut pairs = [_mm256_setzero_si256(); NC];
        for ch in 0..4 {
            let q = _mm256_loadu_si256(qs.add(64 * ch + 32 * h) as *const __m256i);
            let lo = _mm256_and_si256(q, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), mask);
            for (c, p) in pairs.iter_mut().enumerate() {
                let al = _mm256_set1_epi32((a[c].add(4 * ch) as *const i32).read_unaligned());
                let ah = _mm256_set1_epi32((a[c].add(16 + 4 * ch) as *const i32).read_unaligned());
                let pl = _mm256_maddubs_epi16(lo, al);
                let ph = _mm256_maddubs_epi16(hi, ah);
                *p = _mm256_add_epi16(*p, _mm256_add_epi16(pl, ph));
            }
        }
        let ones = _mm256_set1_epi16(1);
        core::array::from_fn(|c| {
            let sums = _mm256_madd_epi16(pairs[c], ones);
            _mm256_add_epi32(_mm256_set1_epi32(start[c]), sums)
        })
    }

    #[inline(always)]
    unsafe fn dots_both(qs: *const u8, blk: *const u8) -> ([__m256i; COLS], [__m256i; COLS]) {
        let (p0, p1) = q4_0_pairs_both(qs, blk);
        // the i16 pair sums to i32, plus the starts (no closure for the two halves: a closure
        // does not inherit the target features)
        let ones = _mm256_set1_epi16(1);
        let start = panel_starts(blk);
        let mut s0 = [_mm256_setzero_si256(); COLS];
        let mut s1 = [_mm256_setzero_si256(); COLS];
        for c in 0..COLS {
            let st = _mm256_set1_epi32(start[c]);
            s0[c] = _mm256_add_epi32(st, _mm256_madd_epi16(p0[c], ones));
            s1[c] = _mm256_add_epi32(st, _mm256_madd_epi16(p1[c], ones));
        }
        (s0, s1)
    }

    #[inline(always)]
    unsafe fn update8(acc: __m256, sumi: __m256i, dw: __m256, da: __m256) -> __m256 {
        // sumf += sumi·d_w·d_a  (left to right, as `legacy::Q4_0::update`)
        let s = _mm256_mul_ps(_mm256_cvtepi32_ps(sumi), dw);
        _mm256_add_ps(acc, _mm256_mul_ps(s, da))
    }
}

impl Legacy16 for legacy::Q8_0 {
    #[inline(always)]
    unsafe fn dots<const NC: usize>(
        qs: *const u8,
        h: usize,
        a: &[*const u8; NC],
        _start: [i32; NC],
    ) -> [__m256i; NC] {
        // the layout holds q + 128: back to the signed values, which meet the activation as
        // `|w| × sign(a, w)` (as the file layout's AVX2 tile); a pair sum reaches ±32512, so
        // each `maddubs` is widened by its own `madd`. No start: no offset to remove.
        let flip = _mm256_set1_epi8(-128);
        let ones = _mm256_set1_epi16(1);
        let mut sums = [_mm256_setzero_si256(); NC];
        for g in 0..8 {
            let w = _mm256_xor_si256(
                _mm256_loadu_si256(qs.add(64 * g + 32 * h) as *const __m256i),
                flip,
            );
            let mag = _mm256_sign_epi8(w, w);
            for (c, s) in sums.iter_mut().enumerate() {
                let av = _mm256_set1_epi32((a[c].add(4 * g) as *const i32).read_unaligned());
                let pairs = _mm256_maddubs_epi16(mag, _mm256_sign_epi8(av, w));
                *s = _mm256_add_epi32(*s, _mm256_madd_epi16(pairs, ones));
            }
        }
        sums
    }

    #[inline(always)]
    unsafe fn dots_both(qs: *const u8, blk: *const u8) -> ([__m256i; COLS], [__m256i; COLS]) {
        // as `dots`, each activation broadcast kept for the second half
        let flip = _mm256_set1_epi8(-128);
        let ones = _mm256_set1_epi16(1);
        let mut s0 = [_mm256_setzero_si256(); COLS];
        let mut s1 = [_mm256_setzero_si256(); COLS];
        for g in 0..8 {
            let av: [__m256i; COLS] = core::array::from_fn(|c| {
                let p = blk.add(PANEL_VALUES + 32 * c + 4 * g);
                _mm256_set1_epi32((p as *const i32).read_unaligned())
            });
            let w0 = _mm256_loadu_si256(qs.add(64 * g) as *const __m256i);
            let w0 = _mm256_xor_si256(w0, flip);
            let mag0 = _mm256_sign_epi8(w0, w0);
            for c in 0..COLS {
                let pairs = _mm256_maddubs_epi16(mag0, _mm256_sign_epi8(av[c], w0));
                s0[c] = _mm256_add_epi32(s0[c], _mm256_madd_epi16(pairs, ones));
            }
            let w1 = _mm256_loadu_si256(qs.add(64 * g + 32) as *const __m256i);
            let w1 = _mm256_xor_si256(w1, flip);
            let mag1 = _mm256_sign_epi8(w1, w1);
            for c in 0..COLS {
                let pairs = _mm256_maddubs_epi16(mag1, _mm256_sign_epi8(av[c], w1));
                s1[c] = _mm256_add_epi32(s1[c], _mm256_madd_epi16(pairs, ones));
            }
        }
        (s0, s1)
    }

    #[inline(always)]
    unsafe fn update8(acc: __m256, sumi: __m256i, dw: __m256, da: __m256) -> __m256 {
        // sumf += sumi·(d_w·d_a)  (as `legacy::Q8_0::update`)
        let dd = _mm256_mul_ps(dw, da);
        _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(sumi), dd))
    }
}

/// The accumulator starts of a panel block's [`COLS`] rows.
#[inline(always)]
unsafe fn panel_starts(blk: *const u8) -> [i32; COLS] {
    core::array::from_fn(|c| (blk.add(4 * c) as *const i32).read_unaligned())
}

/// A Q4_0x16 block's i16 pair sums against a panel block (`blk`): half 0 (rows 0..8) and half
/// 1 (rows 8..16) for each of the [`COLS`] activation rows, each of the 8 sums within ±30720.
///
/// In assembly because LLVM spilled the 8 sums inside the block (they, the two unpacked
/// weight vectors, the mask and a broadcast fill the 16 registers). Each activation broadcast
/// meets both halves, so one per two `maddubs` instead of one (`bench/REPORT.md`, eighteenth
/// and nineteenth sessions: the loop is bound by its count of vector operations).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_0_pairs_both(qs: *const u8, blk: *const u8) -> ([__m256i; COLS], [__m256i; COLS]) {
    let (a0, a1, a2, a3, b0, b1, b2, b3);
    // SAFETY (caller): `qs` holds the block's 256 value bytes and `blk` a panel block; the
    // assembly reads only those and writes only the named registers.
    core::arch::asm!(
        "vpxor ymm0, ymm0, ymm0",
        "vpxor ymm1, ymm1, ymm1",
        "vpxor ymm2, ymm2, ymm2",
        "vpxor ymm3, ymm3, ymm3",
        "vpxor ymm10, ymm10, ymm10",
        "vpxor ymm11, ymm11, ymm11",
        "vpxor ymm12, ymm12, ymm12",
        "vpxor ymm13, ymm13, ymm13",
        ".irp g,0,1,2,3",
        // chunk g: its two halves' 32 bytes, low nibbles (values 4g..4g+4) first
        "vmovdqu ymm14, ymmword ptr [{q} + 64*\\g]",
        "vmovdqu ymm15, ymmword ptr [{q} + 64*\\g + 32]",
        "vpand ymm4, ymm14, ymm8",
        "vpand ymm5, ymm15, ymm8",
        ".irp c,0,1,2,3",
        "vpbroadcastd ymm6, dword ptr [{a} + {values} + 32*\\c + 4*\\g]",
        "vpmaddubsw ymm7, ymm4, ymm6",
        "vpmaddubsw ymm9, ymm5, ymm6",
        "vpaddw ymm\\c, ymm\\c, ymm7",
        "vpaddw ymm1\\c, ymm1\\c, ymm9",
        ".endr",
        // then the high nibbles (values 16+4g..)
        "vpsrlw ymm14, ymm14, 4",
        "vpsrlw ymm15, ymm15, 4",
        "vpand ymm4, ymm14, ymm8",
        "vpand ymm5, ymm15, ymm8",
        ".irp c,0,1,2,3",
        "vpbroadcastd ymm6, dword ptr [{a} + {values} + 32*\\c + 16 + 4*\\g]",
        "vpmaddubsw ymm7, ymm4, ymm6",
        "vpmaddubsw ymm9, ymm5, ymm6",
        "vpaddw ymm\\c, ymm\\c, ymm7",
        "vpaddw ymm1\\c, ymm1\\c, ymm9",
        ".endr",
        ".endr",
        q = in(reg) qs,
        a = in(reg) blk,
        values = const PANEL_VALUES,
        in("ymm8") _mm256_set1_epi8(0x0f),
        out("ymm0") a0, out("ymm1") a1, out("ymm2") a2, out("ymm3") a3,
        out("ymm10") b0, out("ymm11") b1, out("ymm12") b2, out("ymm13") b3,
        out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _, out("ymm9") _,
        out("ymm14") _, out("ymm15") _,
        options(nostack, readonly, preserves_flags),
    );
    ([a0, a1, a2, a3], [b0, b1, b2, b3])
}

/// The whole product on a Q4_0x16 matrix, or on a Q4_0 one in the file layout (`groups`).
#[inline(always)]
pub(crate) unsafe fn gemm_q4_0(t: &GemmArgs, groups: Groups) -> bool {
    gemm_legacy::<legacy::Q4_0>(t, groups)
}

/// The whole product on a Q8_0x16 matrix, or on a Q8_0 one in the file layout (`groups`).
#[inline(always)]
pub(crate) unsafe fn gemm_q8_0(t: &GemmArgs, groups: Groups) -> bool {
    gemm_legacy::<legacy::Q8_0>(t, groups)
}

// ---------------------------------------------------------------------------------------------
// Activation panels for the AVX2 kernels
// ---------------------------------------------------------------------------------------------

/// Bytes of one block of an AVX2 activation panel ([`COLS`] rows): their accumulator starts
/// `−o·Σa` (i32) at 0, their scales (f32) at [`PANEL_SCALES`], and their 32 values each at
/// [`PANEL_VALUES`]` + 32·c`.
const PANEL_BLOCK: usize = PANEL_VALUES + 32 * COLS;
const PANEL_SCALES: usize = 16;
const PANEL_VALUES: usize = 32;
const _: () = assert!(COLS == 4);

/// Builds the panels of `t`'s activations for format `F` (the [`crate::simd::PrepareFn`] of
/// the AVX2 table): per [`COLS`] rows and block, all that a pass reads in [`PANEL_BLOCK`]
/// consecutive bytes, so that one pointer walks it. With a pointer, a start and a scale index
/// per row, the pass needed more general registers than x86-64 has, and LLVM spilled them
/// (and one accumulator) inside the block loop. Bytes of a last panel's missing rows stay
/// uninitialized: nothing reads them.
#[inline(always)]
pub(crate) unsafe fn prepare_panels<F: Legacy16>(
    t: &GemmArgs,
) -> Box<[core::mem::MaybeUninit<Line64>]> {
    let layout = packed::PanelLayout {
        rows: COLS,
        block: PANEL_BLOCK,
        starts: 0,
        scales: PANEL_SCALES,
        values: PANEL_VALUES,
    };
    packed::build_panels::<F>(t, layout)
}

// a prepared layout of fewer rows than a pass is `packed::prepare_block_sums`' (decode)
const _: () = assert!(crate::simd::SUMS_MAX_ROWS < COLS);

#[inline(always)]
unsafe fn gemm_legacy<F: Legacy16>(t: &GemmArgs, mut groups: Groups) -> bool {
    let full = t.m / COLS * COLS;
    // full passes read panels (prepared once per matmul, or built here); the other rows
    // (decode, a prompt's last m mod 4) per-row starts and scales
    let mut owned = None;
    let panels: *const u8 = if full == 0 {
        core::ptr::null()
    } else if t.prepared.is_null() {
        owned.insert(prepare_panels::<F>(t)).as_ptr() as *const u8
    } else {
        t.prepared
    };
    let mut owned = Default::default();
    let (start, ad): (&[i32], &[f32]) = if full == 0 {
        // decode: every row's starts and scales, prepared once per matmul (or computed here)
        packed::block_sums::<F>(t, &mut owned)
    } else if full < t.m {
        // the starts and scales of the rows after the full passes only (row `c0 + c` at
        // index `c·nb + b`)
        let tail = GemmArgs {
            a: t.a.add(full * t.a_stride),
            m: t.m - full,
            ..*t
        };
        owned = packed::activation_block_sums::<F>(&tail);
        (&owned.0, &owned.1)
    } else {
        (&[], &[])
    };
    let panel_bytes = t.nb * PANEL_BLOCK;
    for (gi, r0) in (0..t.n).step_by(GROUP_ROWS).enumerate() {
        let nr = (t.n - r0).min(GROUP_ROWS);
        let group = groups.get(t, gi, r0, nr);
        for c0 in (0..full).step_by(COLS) {
            let panel = panels.add(c0 / COLS * panel_bytes);
            if nr > 8 {
                panel_cols_both::<F>(t, group, panel, c0, r0, nr);
            } else {
                panel_cols::<F>(t, group, panel, c0, r0, nr);
            }
        }
        let c0 = full;
        match t.m - c0 {
            0 => {}
            1 => group_cols::<F, 1>(t, group, start, ad, c0, r0, nr),
            2 => group_cols::<F, 2>(t, group, start, ad, c0, r0, nr),
            _ => group_cols::<F, 3>(t, group, start, ad, c0, r0, nr),
        }
    }
    true
}

/// A panel's [`COLS`] activation rows (from `c0`) against one group (rows `r0..r0+nr`), each
/// 8-row half over all blocks in turn, so that only that half's accumulators stay live.
#[inline(always)]
unsafe fn panel_cols<F: Legacy16>(
    t: &GemmArgs,
    group: *const u8,
    panel: *const u8,
    c0: usize,
    r0: usize,
    nr: usize,
) {
    let nb = t.nb;
    for h in 0..nr.div_ceil(8) {
        let mut acc = [_mm256_setzero_ps(); COLS];
        for b in 0..nb {
            let qs = values::<F>(group, nb, b);
            if c0 == 0 && h == 0 {
                // the first pass brings the group in from memory
                prefetch_block_ahead(group, b, qs, F::QS_BYTES);
            }
            let blk = panel.add(b * PANEL_BLOCK);
            let a: [*const u8; COLS] = core::array::from_fn(|c| blk.add(PANEL_VALUES + 32 * c));
            let sumi = F::dots::<COLS>(qs, h, &a, panel_starts(blk));
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(group.add(b * 32 + 16 * h) as *const _));
            for (c, acc_c) in acc.iter_mut().enumerate() {
                let da = (blk.add(PANEL_SCALES + 4 * c) as *const f32).read_unaligned();
                *acc_c = F::update8(*acc_c, sumi[c], dw, _mm256_set1_ps(da));
            }
        }
        for (c, acc_c) in acc.iter().enumerate() {
            store_rows(t.out.add((c0 + c) * t.ldo + r0 + 8 * h), *acc_c, nr - 8 * h);
        }
    }
}

/// [`panel_cols`] for a group of more than 8 rows: both halves in one pass over the blocks, so
/// that each activation broadcast (and each panel line) serves 16 rows.
#[inline(always)]
unsafe fn panel_cols_both<F: Legacy16>(
    t: &GemmArgs,
    group: *const u8,
    panel: *const u8,
    c0: usize,
    r0: usize,
    nr: usize,
) {
    let nb = t.nb;
    let mut acc0 = [_mm256_setzero_ps(); COLS];
    let mut acc1 = [_mm256_setzero_ps(); COLS];
    for b in 0..nb {
        let qs = values::<F>(group, nb, b);
        if c0 == 0 {
            // the first pass brings the group in from memory
            prefetch_block_ahead(group, b, qs, F::QS_BYTES);
        }
        let blk = panel.add(b * PANEL_BLOCK);
        let (sumi0, sumi1) = F::dots_both(qs, blk);
        let dw0 = _mm256_cvtph_ps(_mm_loadu_si128(group.add(b * 32) as *const _));
        let dw1 = _mm256_cvtph_ps(_mm_loadu_si128(group.add(b * 32 + 16) as *const _));
        for c in 0..COLS {
            let da = _mm256_set1_ps((blk.add(PANEL_SCALES + 4 * c) as *const f32).read_unaligned());
            acc0[c] = F::update8(acc0[c], sumi0[c], dw0, da);
            acc1[c] = F::update8(acc1[c], sumi1[c], dw1, da);
        }
    }
    for c in 0..COLS {
        let out = t.out.add((c0 + c) * t.ldo + r0);
        store_rows(out, acc0[c], 8);
        store_rows(out.add(8), acc1[c], nr - 8);
    }
}

/// Block `b` of half `h` of a group against `NC` activation rows (`a`: their values; `start`,
/// `ad`: their starts and scales, row `c` at `c·nb + b`) into `acc`. (A function, not a
/// closure: a closure does not inherit the caller's target features, and LLVM left it
/// outlined with every intrinsic a call.)
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn half_block<F: Legacy16, const NC: usize>(
    acc: &mut [__m256; NC],
    t: &GemmArgs,
    group: *const u8,
    h: usize,
    b: usize,
    a: &[*const u8; NC],
    start: &[i32],
    ad: &[f32],
) {
    let nb = t.nb;
    let qs = values::<F>(group, nb, b);
    let ab: [*const u8; NC] = core::array::from_fn(|c| a[c].add(b * F::A_BYTES));
    let starts = core::array::from_fn(|c| start[c * nb + b]);
    let sumi = F::dots::<NC>(qs, h, &ab, starts);
    let dw = _mm256_cvtph_ps(_mm_loadu_si128(group.add(b * 32 + 16 * h) as *const _));
    for (c, acc_c) in acc.iter_mut().enumerate() {
        *acc_c = F::update8(*acc_c, sumi[c], dw, _mm256_set1_ps(ad[c * nb + b]));
    }
}

/// Fewer than [`COLS`] activation rows from `c0` (decode, a prompt's last rows) against one
/// group (rows `r0..r0+nr`): both 8-row halves block by block, so that each block's lines
/// are read once while they stream in.
#[inline(always)]
unsafe fn group_cols<F: Legacy16, const NC: usize>(
    t: &GemmArgs,
    group: *const u8,
    start: &[i32],
    ad: &[f32],
    c0: usize,
    r0: usize,
    nr: usize,
) {
    let nb = t.nb;
    // rows 8..16 exist only when the group has more than 8 (the layout repeats the last row
    // past the end, so computing them would be safe, but it is wasted work)
    let halves = nr.div_ceil(8);
    let a: [*const u8; NC] = core::array::from_fn(|c| t.a.add((c0 + c) * t.a_stride + F::A_QS));
    // accumulators in named arrays: indexed by a run-time half they lived on the stack, and
    // every block's update went through a store and a reload
    let mut acc0 = [_mm256_setzero_ps(); NC];
    let mut acc1 = [_mm256_setzero_ps(); NC];
    for b in 0..nb {
        prefetch_block_ahead(group, b, values::<F>(group, nb, b), F::QS_BYTES);
        half_block::<F, NC>(&mut acc0, t, group, 0, b, &a, start, ad);
        if halves == 2 {
            half_block::<F, NC>(&mut acc1, t, group, 1, b, &a, start, ad);
        }
    }
    for (h, acc) in [acc0, acc1].iter().enumerate().take(halves) {
        for (c, acc_c) in acc.iter().enumerate() {
            store_rows(t.out.add((c0 + c) * t.ldo + r0 + 8 * h), *acc_c, nr - 8 * h);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Q4_Kx16 / Q5_Kx16 × Q8_K
// ---------------------------------------------------------------------------------------------

/// The whole product on a Q4_Kx16 matrix, or on one in the file layout (`groups`).
#[inline(always)]
pub(crate) unsafe fn gemm_q4_k(t: &GemmArgs, groups: Groups) -> bool {
    gemm_k4::<false>(t, groups)
}

/// The whole product on a Q5_Kx16 matrix, or on one in the file layout (`groups`).
#[inline(always)]
pub(crate) unsafe fn gemm_q5_k(t: &GemmArgs, groups: Groups) -> bool {
    gemm_k4::<true>(t, groups)
}

#[inline(always)]
unsafe fn gemm_k4<const FIVE: bool>(t: &GemmArgs, mut groups: Groups) -> bool {
    let mut owned = Vec::new();
    let a = prepared_or(t, &mut owned, |t| prepare_q8k(t));
    // Q5_K with several passes per group: its values unpacked once per group
    let pre = FIVE && t.m > K4_COLS;
    let mut unpacked = Vec::new();
    for (gi, r0) in (0..t.n).step_by(GROUP_ROWS).enumerate() {
        let nr = (t.n - r0).min(GROUP_ROWS);
        let group = groups.get(t, gi, r0, nr);
        if pre {
            unpack_group(group, t.nb, &mut unpacked);
        }
        let u = pre.then_some(unpacked.as_slice());
        let mut c0 = 0;
        while c0 + K4_COLS <= t.m {
            k4_cols::<K4_COLS, FIVE>(t, group, a, c0, r0, nr, u);
            c0 += K4_COLS;
        }
        match t.m - c0 {
            0 => {}
            1 => k4_cols::<1, FIVE>(t, group, a, c0, r0, nr, u),
            _ => k4_cols::<2, FIVE>(t, group, a, c0, r0, nr, u),
        }
    }
    true
}

/// Activation rows per pass of [`k4_cols`] (each record chunk is unpacked once per pass).
const K4_COLS: usize = 3;

/// Constants of [`k4_values`].
#[derive(Clone, Copy)]
struct K4Consts {
    mask: __m256i,
    b16: __m256i,
    bit_lo: __m256i,
    bit_hi: __m256i,
    /// byte `k` of every dword to all its 4 bytes (`vpshufb` indexes within 128-bit lanes)
    spread_idx: [__m256i; 4],
}

impl K4Consts {
    #[inline(always)]
    unsafe fn new() -> Self {
        let dwords = _mm256_set_epi32(
            0x0c0c_0c0c,
            0x0808_0808,
            0x0404_0404,
            0,
            0x0c0c_0c0c,
            0x0808_0808,
            0x0404_0404,
            0,
        );
        let mut spread_idx = [dwords; 4];
        for (k, x) in spread_idx.iter_mut().enumerate() {
            *x = _mm256_add_epi8(dwords, _mm256_set1_epi8(k as i8));
        }
        K4Consts {
            mask: _mm256_set1_epi8(0x0f),
            b16: _mm256_set1_epi8(0x10),
            bit_lo: _mm256_set1_epi32(0x0804_0201),
            bit_hi: _mm256_set1_epi32(0x8040_2010_u32 as i32),
            spread_idx,
        }
    }
}

/// The values of record chunk `(c, l)`, rows `8h..8h+8`: sub-block `2c` (low nibbles) and
/// `2c + 1` (high nibbles), with `FIVE` their 5th bits from the record's bit section (byte
/// `l % 4` of each row's dword, spread to the dword's 4 bytes, then bit `t` / `4 + t` of byte
/// `t` tested).
#[inline(always)]
unsafe fn k4_values<const FIVE: bool>(
    rec: *const u8,
    c: usize,
    l: usize,
    h: usize,
    k: &K4Consts,
) -> (__m256i, __m256i) {
    use crate::repack::Q5K_HIGH_BITS;
    let q = _mm256_loadu_si256(rec.add(320 + (c * 8 + l) * 64 + 32 * h) as *const _);
    let mut lo = _mm256_and_si256(q, k.mask);
    let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), k.mask);
    if FIVE {
        let at = Q5K_HIGH_BITS + (2 * c + l / 4) * 64 + 32 * h;
        let bits = _mm256_loadu_si256(rec.add(at) as *const __m256i);
        let spread = _mm256_shuffle_epi8(bits, k.spread_idx[l % 4]);
        let set_lo = _mm256_cmpeq_epi8(_mm256_and_si256(spread, k.bit_lo), k.bit_lo);
        let set_hi = _mm256_cmpeq_epi8(_mm256_and_si256(spread, k.bit_hi), k.bit_hi);
        lo = _mm256_or_si256(lo, _mm256_and_si256(set_lo, k.b16));
        hi = _mm256_or_si256(hi, _mm256_and_si256(set_hi, k.b16));
    }
    (lo, hi)
}

/// Bytes of one record's values after [`unpack_group`]: per chunk `(c, l)` and half `h`, the
/// 32 low-nibble values then the 32 high-nibble ones.
const UNPACKED_RECORD: usize = 32 * 2 * 64;

/// Unpacks the values of a Q5_Kx16 group's `nb` records once (the 5th bits cost as much as
/// the products), for the passes of [`k4_cols`] over its activation rows.
#[inline(always)]
unsafe fn unpack_group(group: *const u8, nb: usize, out: &mut Vec<__m256i>) {
    use crate::repack::Q5K_RECORD;
    let k = K4Consts::new();
    out.clear();
    out.reserve(nb * UNPACKED_RECORD / 32);
    for b in 0..nb {
        let rec = group.add(b * Q5K_RECORD);
        for c in 0..4 {
            for l in 0..8 {
                for h in 0..2 {
                    let (lo, hi) = k4_values::<true>(rec, c, l, h, &k);
                    out.push(lo);
                    out.push(hi);
                }
            }
        }
    }
}

/// Activation rows `c0..c0+NC` against one Q4_Kx16 group (with `FIVE`, Q5_Kx16; rows
/// `r0..r0+nr`, 8 per half): per row `sum += (d·d_a)·isum` and `mins −= (dmin·d_a)·Σ m·B`,
/// then `mins + sum`.
///
/// Q5_K's values reach 31, so a pair sum reaches ±7936 and only 4 chunks add up in i16 (at
/// most ±31744) before each `madd`. Its values come from [`k4_values`], or from `unpacked`
/// ([`unpack_group`]) when several passes share the group.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn k4_cols<const NC: usize, const FIVE: bool>(
    t: &GemmArgs,
    group: *const u8,
    a: &[Q8KPrepared],
    c0: usize,
    r0: usize,
    nr: usize,
    unpacked: Option<&[__m256i]>,
) {
    use crate::repack::Q5K_RECORD;
    let record = if FIVE { Q5K_RECORD } else { Q4K_RECORD };
    let nb = t.nb;
    let k4 = K4Consts::new();
    // per i32 lane (sc_lo, sc_hi) as i16 → (sc_lo, sc_lo) and (sc_hi, sc_hi)
    let dup = |lo: i8| {
        let (a, b) = (lo, lo + 1);
        let t = _mm_setr_epi8(
            a,
            b,
            a,
            b,
            a + 4,
            b + 4,
            a + 4,
            b + 4,
            a + 8,
            b + 8,
            a + 8,
            b + 8,
            a + 12,
            b + 12,
            a + 12,
            b + 12,
        );
        _mm256_set_m128i(t, t)
    };
    let (dup_lo, dup_hi) = (dup(0), dup(2));
    let halves = nr.div_ceil(8);
    let mut sum = [[_mm256_setzero_ps(); NC]; 2];
    let mut mins = [[_mm256_setzero_ps(); NC]; 2];
    for b in 0..nb {
        let rec = group.add(b * record);
        let ab: [&Q8KPrepared; NC] = core::array::from_fn(|c| &a[(c0 + c) * nb + b]);
        // both halves of a record back to back: it is read from memory once
        for h in 0..halves {
            let (sum, mins) = (&mut sum[h], &mut mins[h]);
            // this half's share of the record 16 KiB ahead, into L2 (see `repacked.rs`),
            // spread over the chunk loop: a burst of prefetches at the start of each record
            // leaves the memory idle for the rest of it
            let ahead = rec.wrapping_add(PREFETCH_BYTES + record / 2 * h);
            let mut s_lo = [_mm256_setzero_si256(); 4];
            let mut s_hi = [_mm256_setzero_si256(); 4];
            for c in 0..4 {
                let sc = _mm_loadu_si128(rec.add(64 + 32 * c + 16 * h) as *const __m128i);
                let sc = _mm256_cvtepu8_epi16(sc);
                s_lo[c] = _mm256_shuffle_epi8(sc, dup_lo);
                s_hi[c] = _mm256_shuffle_epi8(sc, dup_hi);
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(rec.add(16 * h) as *const __m128i));
            let dmin = _mm256_cvtph_ps(_mm_loadu_si128(rec.add(32 + 16 * h) as *const __m128i));
            let dd: [__m256; NC] =
                core::array::from_fn(|c| _mm256_mul_ps(d, _mm256_set1_ps(ab[c].d)));
            let mut isum = [_mm256_setzero_si256(); NC];
            for c in 0..4 {
                // the i16 pair sums of sub-blocks 2c (lo) and 2c + 1 (hi), per activation row
                let mut p_lo = [_mm256_setzero_si256(); NC];
                let mut p_hi = [_mm256_setzero_si256(); NC];
                for l in 0..8 {
                    if 8 * c + l < record / 128 + 2 {
                        let line = ahead.wrapping_add(64 * (8 * c + l));
                        _mm_prefetch::<_MM_HINT_T1>(line as *const i8);
                    }
                    let (lo, hi) = match unpacked {
                        Some(u) => {
                            let i = ((b * 32 + c * 8 + l) * 2 + h) * 2;
                            (u[i], u[i + 1])
                        }
                        None => k4_values::<FIVE>(rec, c, l, h, &k4),
                    };
                    for (x, p) in ab.iter().enumerate() {
                        let dl = _mm256_maddubs_epi16(lo, _mm256_set1_epi32(p.qs[16 * c + l]));
                        let dh = _mm256_maddubs_epi16(hi, _mm256_set1_epi32(p.qs[16 * c + 8 + l]));
                        p_lo[x] = _mm256_add_epi16(p_lo[x], dl);
                        p_hi[x] = _mm256_add_epi16(p_hi[x], dh);
                    }
                    // Q4_K: all 8 chunks in i16; Q5_K: every 4
                    if l == 7 || (FIVE && l == 3) {
                        for x in 0..NC {
                            let both = _mm256_add_epi32(
                                _mm256_madd_epi16(p_lo[x], s_lo[c]),
                                _mm256_madd_epi16(p_hi[x], s_hi[c]),
                            );
                            isum[x] = _mm256_add_epi32(isum[x], both);
                            p_lo[x] = _mm256_setzero_si256();
                            p_hi[x] = _mm256_setzero_si256();
                        }
                    }
                }
            }
            for c in 0..NC {
                sum[c] = _mm256_add_ps(sum[c], _mm256_mul_ps(dd[c], _mm256_cvtepi32_ps(isum[c])));
            }
            for c in 0..NC {
                let mut summ = _mm256_setzero_si256();
                for j in 0..8 {
                    let m = _mm_loadl_epi64(rec.add(192 + 16 * j + 8 * h) as *const __m128i);
                    let m = _mm256_mullo_epi32(
                        _mm256_cvtepu8_epi32(m),
                        _mm256_set1_epi32(ab[c].bsum[j]),
                    );
                    summ = _mm256_add_epi32(summ, m);
                }
                let dm = _mm256_mul_ps(dmin, _mm256_set1_ps(ab[c].d));
                mins[c] = _mm256_sub_ps(mins[c], _mm256_mul_ps(dm, _mm256_cvtepi32_ps(summ)));
            }
        }
    }
    for (h, (sum, mins)) in sum.iter().zip(&mins).enumerate().take(halves) {
        for c in 0..NC {
            let v = _mm256_add_ps(mins[c], sum[c]);
            store_rows(t.out.add((c0 + c) * t.ldo + r0 + 8 * h), v, nr - 8 * h);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Q6_Kx16 × Q8_K
// ---------------------------------------------------------------------------------------------

/// One activation super-block for [`q6k_cols`]: [`Q8KPrepared`] (values in the records' chunk
/// order) and, per 32-value group `s`, the i16 pair `(A_2s, A_2s+1)`: the sums of the 16-value
/// sub-blocks' activations, taken from the values (the reference never reads `bsums`).
#[derive(Clone, Copy)]
struct Q8KPreparedQ6 {
    base: Q8KPrepared,
    sub_sums: [i32; 8],
}

#[inline(always)]
unsafe fn prepare_q8k_q6(t: &GemmArgs) -> Vec<Q8KPreparedQ6> {
    let mut out: Vec<Q8KPreparedQ6> = prepare_q8k(t)
        .into_iter()
        .map(|base| Q8KPreparedQ6 {
            base,
            sub_sums: [0; 8],
        })
        .collect();
    for c in 0..t.m {
        for b in 0..t.nb {
            let qs = t.a.add(c * t.a_stride + b * Q8K_BYTES + 4) as *const i8;
            let p = &mut out[c * t.nb + b];
            for s in 0..8 {
                let sum = |j: usize| (0..16).map(|i| *qs.add(16 * j + i) as i32).sum::<i32>();
                let (lo, hi) = (sum(2 * s), sum(2 * s + 1));
                p.sub_sums[s] = (lo as i16 as u16 as u32 | (hi as u32) << 16) as i32;
            }
        }
    }
    out
}

/// Activation rows from which the AVX2 table's file-layout Q4_K GEMM runs this file's kernels
/// (`avx2::packed_q4_k`), which then read prepared records too.
pub(crate) const FILE_Q4_K_MIN_ROWS: usize = 16;

/// The AVX2 Q4_K/Q5_K activation layout ([`Q8KPrepared`] records), once per matmul (each row
/// block rebuilt it): for decode, and from [`FILE_Q4_K_MIN_ROWS`] rows, where the file
/// layout's Q4_K GEMM reads it too. Between, only ×16 matrices would read it and the file
/// layout's tiles not, so the kernels build their own.
pub(crate) unsafe fn prepare_q4_k(t: &GemmArgs) -> Option<Box<[core::mem::MaybeUninit<Line64>]>> {
    (t.m <= crate::simd::SUMS_MAX_ROWS || t.m >= FILE_Q4_K_MIN_ROWS)
        .then(|| crate::simd::to_lines(&prepare_q8k(t)))
}

/// The AVX2 Q6_K activation layout ([`Q8KPreparedQ6`] records), once per matmul for decode
/// (Q6_K prompts on the file layout run the tiles, which would not read it).
pub(crate) unsafe fn prepare_q6_k(t: &GemmArgs) -> Option<Box<[core::mem::MaybeUninit<Line64>]>> {
    (t.m <= crate::simd::SUMS_MAX_ROWS).then(|| crate::simd::to_lines(&prepare_q8k_q6(t)))
}

/// The whole product on a Q6_Kx16 matrix, or on one in the file layout (`groups`).
#[inline(always)]
pub(crate) unsafe fn gemm_q6_k(t: &GemmArgs, mut groups: Groups) -> bool {
    let mut owned = Vec::new();
    let a = prepared_or(t, &mut owned, |t| prepare_q8k_q6(t));
    // several passes per group: its values unpacked once per group
    let pre = t.m > Q6K_COLS;
    let mut unpacked = Vec::new();
    for (gi, r0) in (0..t.n).step_by(GROUP_ROWS).enumerate() {
        let nr = (t.n - r0).min(GROUP_ROWS);
        let group = groups.get(t, gi, r0, nr);
        if t.m == 1 {
            q6k_gemv(t, group, a, r0, nr);
            continue;
        }
        if pre {
            unpacked.clear();
            unpacked.reserve(t.nb * 128);
            for b in 0..t.nb {
                let rec = group.add(b * crate::repack::Q6K_RECORD);
                for x in 0..64 {
                    for h in 0..2 {
                        unpacked.push(q6k_value(rec, x, h));
                    }
                }
            }
        }
        let u = pre.then_some(unpacked.as_slice());
        for h in 0..nr.div_ceil(8) {
            let mut c0 = 0;
            while c0 + Q6K_COLS <= t.m {
                q6k_cols::<Q6K_COLS>(t, group, a, c0, r0, nr, h, u);
                c0 += Q6K_COLS;
            }
            match t.m - c0 {
                0 => {}
                1 => q6k_cols::<1>(t, group, a, c0, r0, nr, h, u),
                _ => q6k_cols::<2>(t, group, a, c0, r0, nr, h, u),
            }
        }
    }
    true
}

/// Activation rows per pass of [`q6k_cols`].
const Q6K_COLS: usize = 3;

/// The values `q + 32` of record chunk `x = u + 16k`, rows `8h..8h+8`: the low 4 bits from
/// vector `x % 32` (high nibbles from 32 on), the 2 high bits `2k, 2k+1` of vector `u` moved to
/// bits 4, 5.
#[inline(always)]
unsafe fn q6k_value(rec: *const u8, x: usize, h: usize) -> __m256i {
    let (u, k) = (x % 16, x / 16);
    let lv = _mm256_loadu_si256(rec.add(288 + 64 * (x % 32) + 32 * h) as *const _);
    let hb = _mm256_loadu_si256(rec.add(2336 + 64 * u + 32 * h) as *const _);
    let (lo, hi) = match k {
        0 => (lv, _mm256_slli_epi16::<4>(hb)),
        1 => (lv, _mm256_slli_epi16::<2>(hb)),
        2 => (_mm256_srli_epi16::<4>(lv), hb),
        _ => (_mm256_srli_epi16::<4>(lv), _mm256_srli_epi16::<2>(hb)),
    };
    _mm256_or_si256(
        _mm256_and_si256(lo, _mm256_set1_epi8(0x0f)),
        _mm256_and_si256(hi, _mm256_set1_epi8(0x30)),
    )
}

/// Activation rows `c0..c0+NC` against rows `8h..8h+8` of one Q6_Kx16 group (rows
/// `r0..r0+nr`): per row `sum += (d·d_a)·isum`, then `0 + sum` (the reference's order).
///
/// Record chunk `x = 8s + l` (see `repack::Q6K_RECORD`) holds, per row lane, the values
/// `q + 32` (0..64, unsigned) of elements `32s + l + {0, 8}` (sub-block `2s`) and
/// `32s + l + {16, 24}` (sub-block `2s + 1`), so `maddubs` with the activation's matching 4 bytes
/// leaves one pair sum of each sub-block in the lane's i16 halves (at most ±16128: two chunks
/// add up in i16), and one `madd` with the lane's scale pair `(sc_2s, sc_2s+1)` scales both.
/// The offset: `isum = Σ sc·Σ q·a − 32·Σ sc·A`, `A` the sub-blocks' activation sums, one more
/// `madd` per group `s`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn q6k_cols<const NC: usize>(
    t: &GemmArgs,
    group: *const u8,
    a: &[Q8KPreparedQ6],
    c0: usize,
    r0: usize,
    nr: usize,
    h: usize,
    unpacked: Option<&[__m256i]>,
) {
    use crate::repack::Q6K_RECORD;
    let nb = t.nb;
    let mut sum = [_mm256_setzero_ps(); NC];
    for b in 0..nb {
        let rec = group.add(b * Q6K_RECORD);
        let ahead = rec.wrapping_add(PREFETCH_BYTES);
        for line in 0..Q6K_RECORD.div_ceil(64) {
            _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(64 * line) as *const i8);
        }
        let ab: [&Q8KPreparedQ6; NC] = core::array::from_fn(|c| &a[(c0 + c) * nb + b]);
        let mut isum = [_mm256_setzero_si256(); NC];
        let mut offs = [_mm256_setzero_si256(); NC];
        for k in 0..4 {
            for half in 0..2 {
                // group s = 2k + half: chunks x = u + 16k, u = 8·half + l
                let s = 2 * k + half;
                let sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(
                    rec.add(32 + 32 * s + 16 * h) as *const __m128i
                ));
                for (o, p) in offs.iter_mut().zip(&ab) {
                    let pair = _mm256_set1_epi32(p.sub_sums[s]);
                    *o = _mm256_add_epi32(*o, _mm256_madd_epi16(sc, pair));
                }
                let mut pairs = [_mm256_setzero_si256(); NC];
                for l in 0..8 {
                    let x = 8 * half + l + 16 * k;
                    let q = match unpacked {
                        Some(u) => u[(b * 64 + x) * 2 + h],
                        None => q6k_value(rec, x, h),
                    };
                    for (pr, p) in pairs.iter_mut().zip(&ab) {
                        let av = _mm256_set1_epi32(p.base.qs[x]);
                        *pr = _mm256_add_epi16(*pr, _mm256_maddubs_epi16(q, av));
                    }
                    if l % 2 == 1 {
                        for (i, pr) in isum.iter_mut().zip(pairs.iter_mut()) {
                            *i = _mm256_add_epi32(*i, _mm256_madd_epi16(*pr, sc));
                            *pr = _mm256_setzero_si256();
                        }
                    }
                }
            }
        }
        let d = _mm256_cvtph_ps(_mm_loadu_si128(rec.add(16 * h) as *const __m128i));
        for c in 0..NC {
            let isum_c = _mm256_sub_epi32(isum[c], _mm256_slli_epi32::<5>(offs[c]));
            let dd = _mm256_mul_ps(d, _mm256_set1_ps(ab[c].base.d));
            sum[c] = _mm256_add_ps(sum[c], _mm256_mul_ps(dd, _mm256_cvtepi32_ps(isum_c)));
        }
    }
    for c in 0..NC {
        let v = _mm256_add_ps(_mm256_setzero_ps(), sum[c]);
        store_rows(t.out.add((c0 + c) * t.ldo + r0 + 8 * h), v, nr - 8 * h);
    }
}

/// One activation row against one Q6_Kx16 group (rows `r0..r0+nr`), both 8-row halves of a
/// record before the next (a record is read from memory once; [`q6k_cols`] passes over a
/// group once per half), in [`q6k_cols`]'s order.
#[inline(always)]
unsafe fn q6k_gemv(t: &GemmArgs, group: *const u8, a: &[Q8KPreparedQ6], r0: usize, nr: usize) {
    use crate::repack::Q6K_RECORD;
    let halves = nr.div_ceil(8);
    let mut sum = [_mm256_setzero_ps(); 2];
    for (b, ab) in a.iter().enumerate().take(t.nb) {
        let rec = group.add(b * Q6K_RECORD);
        for (h, sum_h) in sum.iter_mut().enumerate().take(halves) {
            let mut offs = _mm256_setzero_si256();
            for s in 0..8 {
                let sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(
                    rec.add(32 + 32 * s + 16 * h) as *const __m128i
                ));
                let pair = _mm256_set1_epi32(ab.sub_sums[s]);
                offs = _mm256_add_epi32(offs, _mm256_madd_epi16(sc, pair));
            }
            let isum = _mm256_sub_epi32(q6k_one(rec, h, &ab.base), _mm256_slli_epi32::<5>(offs));
            let d = _mm256_cvtph_ps(_mm_loadu_si128(rec.add(16 * h) as *const __m128i));
            let dd = _mm256_mul_ps(d, _mm256_set1_ps(ab.base.d));
            *sum_h = _mm256_add_ps(*sum_h, _mm256_mul_ps(dd, _mm256_cvtepi32_ps(isum)));
        }
    }
    for (h, sum_h) in sum.iter().enumerate().take(halves) {
        let v = _mm256_add_ps(_mm256_setzero_ps(), *sum_h);
        store_rows(t.out.add(r0 + 8 * h), v, nr - 8 * h);
    }
}

/// `Σ sc·Σ q·a` of one activation row against rows `8h..8h+8` of a Q6_Kx16 record: per `u`,
/// the high-bit vector `u` and the low-bit vectors `u` and `u + 16` give the 4 chunks
/// `x = u + 16k` (groups `s = 2k + u/8`), so every vector is loaded once; one i16 sum per `k`
/// takes two `u` before its `madd`.
#[inline(always)]
unsafe fn q6k_one(rec: *const u8, h: usize, a: &Q8KPrepared) -> __m256i {
    let nib = _mm256_set1_epi8(0x0f);
    let top = _mm256_set1_epi8(0x30);
    let mut isum = _mm256_setzero_si256();
    let mut pairs = [_mm256_setzero_si256(); 4];
    let ahead = rec.wrapping_add(PREFETCH_BYTES + 1680 * h);
    for u in 0..16 {
        // the record's half (27 lines) `PREFETCH_BYTES` ahead, spread over the loop
        for line in 2 * u..(2 * u + 2).min(27) {
            _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(64 * line) as *const i8);
        }
        let hb = _mm256_loadu_si256(rec.add(2336 + 64 * u + 32 * h) as *const _);
        let lv_a = _mm256_loadu_si256(rec.add(288 + 64 * u + 32 * h) as *const _);
        let lv_b = _mm256_loadu_si256(rec.add(288 + 64 * (u + 16) + 32 * h) as *const _);
        let q = [
            _mm256_or_si256(
                _mm256_and_si256(lv_a, nib),
                _mm256_and_si256(_mm256_slli_epi16::<4>(hb), top),
            ),
            _mm256_or_si256(
                _mm256_and_si256(lv_b, nib),
                _mm256_and_si256(_mm256_slli_epi16::<2>(hb), top),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(lv_a), nib),
                _mm256_and_si256(hb, top),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(lv_b), nib),
                _mm256_and_si256(_mm256_srli_epi16::<2>(hb), top),
            ),
        ];
        for k in 0..4 {
            let av = _mm256_set1_epi32(a.qs[u + 16 * k]);
            pairs[k] = _mm256_add_epi16(pairs[k], _mm256_maddubs_epi16(q[k], av));
        }
        if u % 2 == 1 {
            for (k, p) in pairs.iter_mut().enumerate() {
                let s = 2 * k + u / 8;
                let sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(
                    rec.add(32 + 32 * s + 16 * h) as *const __m128i
                ));
                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(*p, sc));
                *p = _mm256_setzero_si256();
            }
        }
    }
    isum
}
