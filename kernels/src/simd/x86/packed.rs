//! Packed GEMM for many activation rows (prompt processing, the vision tower) with AVX-512 VNNI,
//! for the 32-element formats whose block term is `scale · Σ(q − o)·a` (Q4_0, Q5_0, Q8_0).
//!
//! The tiles of `legacy.rs` unpack each weight block again for every 4 activation rows and
//! reduce eight row vectors horizontally per block. Here a tile of 16 weight rows is unpacked
//! once into a scratch buffer, transposed so that i32 lane `r` of group vector `g` holds row
//! `r`'s values `4g..4g+4` of a block (unsigned, as `vpdpbusd` wants them). Then, for every
//! activation row, a block is 8 `vpdpbusd` of a group vector with the activation's 4 bytes
//! broadcast: lane `r` ends up with row `r`'s integer dot, with no horizontal reduction, and
//! the f32 scale arithmetic runs lane-wise in the reference's order, so every output is still
//! bit-identical to the scalar `vec_dot`. Eight activation rows share each group-vector load.
//!
//! The offset `o` (8 for Q4_0, 16 for Q5_0; 128 for Q8_0, whose signed values are moved to
//! unsigned by `+128`) is removed through the accumulator's start value `−o·Σa` per block,
//! computed once per activation block.
//!
//! Long rows run in chunks of blocks ([`k_chunks`]): every tile of the product passes over one
//! chunk of the panels before the next chunk starts from the sums stored in the output (the same
//! f32 operations in the same order), so that a tile's scratch and the panels' chunk stay in
//! cache.
//!
//! The activations are regrouped once per matmul into panels ([`prepare_panels`]: per 8 rows
//! and block, their starts, scales and values side by side), and a full panel's block loop is
//! assembly ([`panel_loop!`]): the dot products group by group, so that the 8 accumulator
//! chains interleave, and the scale updates of one block between the next block's dot
//! products. The last, partial panel runs the same loop in intrinsics ([`tile_cols`]).

use core::arch::x86_64::*;
use core::mem::MaybeUninit;

use super::legacy::{self, Legacy};
use crate::simd::{GemmArgs, Line64};

/// Weight rows per packed tile (one i32 / f32 lane each).
const ROWS: usize = 16;
/// Activation rows that share one pass over a packed block.
pub(crate) const COLS: usize = 8;

/// A format for the packed path: the legacy layout plus its lane-wise block update.
pub(crate) trait Packed: Legacy {
    /// `acc` plus this block's term for 16 rows, in the reference's operation order.
    unsafe fn update16(acc: __m512, sumi: __m512i, dw: __m512, da: __m512) -> __m512;

    /// [`COLS`] activation rows of a panel against a packed tile, all `nb` blocks: the block
    /// loop of [`tile_cols`] in one piece of assembly (see [`panel_loop!`]).
    unsafe fn panel_blocks(acc: &mut [__m512; COLS], loop_args: PanelLoop);
}

impl Packed for legacy::Q4_0 {
    #[inline(always)]
    unsafe fn update16(acc: __m512, sumi: __m512i, dw: __m512, da: __m512) -> __m512 {
        // sumf += sumi·d_w·d_a  (left to right)
        let t = _mm512_mul_ps(_mm512_cvtepi32_ps(sumi), dw);
        _mm512_add_ps(acc, _mm512_mul_ps(t, da))
    }

    #[inline(always)]
    unsafe fn panel_blocks(acc: &mut [__m512; COLS], loop_args: PanelLoop) {
        panel_loop_dw_first(acc, loop_args)
    }
}

impl Packed for legacy::Q5_0 {
    #[inline(always)]
    unsafe fn update16(acc: __m512, sumi: __m512i, dw: __m512, da: __m512) -> __m512 {
        // sumf += (d_w·d_a)·sumi
        let dd = _mm512_mul_ps(dw, da);
        _mm512_add_ps(acc, _mm512_mul_ps(dd, _mm512_cvtepi32_ps(sumi)))
    }

    #[inline(always)]
    unsafe fn panel_blocks(acc: &mut [__m512; COLS], loop_args: PanelLoop) {
        panel_loop_dd_first(acc, loop_args)
    }
}

impl Packed for legacy::Q8_0 {
    #[inline(always)]
    unsafe fn update16(acc: __m512, sumi: __m512i, dw: __m512, da: __m512) -> __m512 {
        // sumf += sumi·(d_w·d_a)
        let dd = _mm512_mul_ps(dw, da);
        _mm512_add_ps(acc, _mm512_mul_ps(_mm512_cvtepi32_ps(sumi), dd))
    }

    #[inline(always)]
    unsafe fn panel_blocks(acc: &mut [__m512; COLS], loop_args: PanelLoop) {
        panel_loop_dd_first(acc, loop_args)
    }
}

/// Transposes 8 vectors of 8 i32 lanes: lane `r` of output `g` is lane `g` of input `r`.
#[inline(always)]
pub(crate) unsafe fn transpose8(v: [__m256i; 8]) -> [__m256i; 8] {
    let t0 = _mm256_unpacklo_epi32(v[0], v[1]);
    let t1 = _mm256_unpackhi_epi32(v[0], v[1]);
    let t2 = _mm256_unpacklo_epi32(v[2], v[3]);
    let t3 = _mm256_unpackhi_epi32(v[2], v[3]);
    let t4 = _mm256_unpacklo_epi32(v[4], v[5]);
    let t5 = _mm256_unpackhi_epi32(v[4], v[5]);
    let t6 = _mm256_unpacklo_epi32(v[6], v[7]);
    let t7 = _mm256_unpackhi_epi32(v[6], v[7]);
    // per 128-bit half: u0 = lanes (0 | 4) of rows 0..4, u1 = (1 | 5), u2 = (2 | 6), u3 = (3 | 7)
    let u0 = _mm256_unpacklo_epi64(t0, t2);
    let u1 = _mm256_unpackhi_epi64(t0, t2);
    let u2 = _mm256_unpacklo_epi64(t1, t3);
    let u3 = _mm256_unpackhi_epi64(t1, t3);
    let u4 = _mm256_unpacklo_epi64(t4, t6);
    let u5 = _mm256_unpackhi_epi64(t4, t6);
    let u6 = _mm256_unpacklo_epi64(t5, t7);
    let u7 = _mm256_unpackhi_epi64(t5, t7);
    [
        _mm256_permute2x128_si256::<0x20>(u0, u4),
        _mm256_permute2x128_si256::<0x20>(u1, u5),
        _mm256_permute2x128_si256::<0x20>(u2, u6),
        _mm256_permute2x128_si256::<0x20>(u3, u7),
        _mm256_permute2x128_si256::<0x31>(u0, u4),
        _mm256_permute2x128_si256::<0x31>(u1, u5),
        _mm256_permute2x128_si256::<0x31>(u2, u6),
        _mm256_permute2x128_si256::<0x31>(u3, u7),
    ]
}

/// The 32 unsigned values of a weight block (Q8_0: `q + 128`).
#[inline(always)]
unsafe fn unsigned_values<F: Legacy>(blk: *const u8) -> __m256i {
    let v = F::values(blk);
    if F::SIGNED {
        _mm256_xor_si256(v, _mm256_set1_epi8(-128))
    } else {
        v
    }
}

/// The offset removed through the accumulator start.
pub(crate) const fn offset<F: Legacy>() -> i32 {
    if F::SIGNED {
        128
    } else {
        F::OFFSET
    }
}

/// Unpacks the blocks of `kc` of rows `r0..r0+nr` (rows past `nr` repeat the last one) into
/// `wq` (`kc.nb × 8` group vectors) and `wd` (`kc.nb` vectors of the rows' scales as f32).
#[inline(always)]
pub(crate) unsafe fn pack_tile<F: Legacy>(
    t: &GemmArgs,
    r0: usize,
    nr: usize,
    kc: KChunk,
    wq: &mut [__m512i],
    wd: &mut [__m512],
) {
    let mut rows = [t.w; ROWS];
    for (r, row) in rows.iter_mut().enumerate() {
        *row = t.w.add((r0 + r.min(nr - 1)) * t.w_stride);
    }
    for b in 0..kc.nb {
        let off = (kc.b0 + b) * F::W_BYTES;
        let mut lo = [_mm256_setzero_si256(); 8];
        let mut hi = [_mm256_setzero_si256(); 8];
        let mut d = [0u16; ROWS];
        for r in 0..8 {
            lo[r] = unsigned_values::<F>(rows[r].add(off));
            hi[r] = unsigned_values::<F>(rows[r + 8].add(off));
        }
        for (r, dr) in d.iter_mut().enumerate() {
            *dr = (rows[r].add(off) as *const u16).read_unaligned();
        }
        let lo = transpose8(lo);
        let hi = transpose8(hi);
        for g in 0..8 {
            wq[b * 8 + g] = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo[g]), hi[g]);
        }
        wd[b] = _mm512_cvtph_ps(_mm256_loadu_si256(d.as_ptr() as *const __m256i));
    }
}

// ---------------------------------------------------------------------------------------------
// Activation panels
// ---------------------------------------------------------------------------------------------

/// Bytes of one block of a panel: the [`COLS`] rows' accumulator starts `−o·Σa` (i32) at
/// [`PANEL_STARTS`], their scales (f32) at [`PANEL_SCALES`] and their 32 values each at
/// [`PANEL_VALUES`]` + 32·c`.
pub(crate) const PANEL_BLOCK: usize = 64 + 32 * COLS;
const PANEL_STARTS: usize = 0;
const PANEL_SCALES: usize = 32;
const PANEL_VALUES: usize = 64;
const _: () = assert!(COLS == 8 && PANEL_BLOCK.is_multiple_of(64));

/// The activations regrouped for the tile loop: per [`COLS`] rows (one panel) and block, all
/// that the block needs in [`PANEL_BLOCK`] consecutive bytes, so that one pointer walks the
/// loop (eight row pointers, their start and scale indices cost more registers than x86-64
/// has, and LLVM spilled them inside the loop). Built once per product, or once per matmul
/// ([`prepare_panels`], `GemmArgs::prepared`).
#[derive(Clone, Copy)]
pub(crate) struct ActivationPanels {
    base: *const u8,
    panel_bytes: usize,
}

impl ActivationPanels {
    /// The panels at `base` (from [`prepare_panels`] for these activations).
    #[inline(always)]
    fn at(base: *const u8, t: &GemmArgs) -> Self {
        ActivationPanels {
            base,
            panel_bytes: t.nb * PANEL_BLOCK,
        }
    }

    /// Panel `p` (activation rows `p·COLS..`).
    #[inline(always)]
    fn panel(&self, p: usize) -> *const u8 {
        self.base.wrapping_add(p * self.panel_bytes)
    }
}

/// Where a panel layout puts things: per `rows` activation rows and block, `block` bytes with
/// row `c`'s accumulator start `−o·Σa` (i32) at `starts + 4c`, its scale (f32) at `scales +
/// 4c` and its 32 values at `values + 32c`.
pub(crate) struct PanelLayout {
    pub rows: usize,
    pub block: usize,
    pub starts: usize,
    pub scales: usize,
    pub values: usize,
}

/// Builds `t`'s activations for format `F` in the panel layout `l` (this file's, or the AVX2
/// kernels' of `repacked_avx2.rs`). Bytes of a last panel's missing rows stay uninitialized:
/// nothing reads them.
#[inline(always)]
pub(crate) unsafe fn build_panels<F: Legacy>(
    t: &GemmArgs,
    l: PanelLayout,
) -> Box<[MaybeUninit<Line64>]> {
    let panel_bytes = t.nb * l.block;
    let mut buf = Box::new_uninit_slice((t.m.div_ceil(l.rows) * panel_bytes).div_ceil(64));
    let base = buf.as_mut_ptr() as *mut u8;
    let o = offset::<F>();
    for c in 0..t.m {
        let row = t.a.add(c * t.a_stride);
        let (panel, lane) = (c / l.rows, c % l.rows);
        for b in 0..t.nb {
            let src = row.add(b * F::A_BYTES);
            let dst = base.add(panel * panel_bytes + b * l.block);
            let v = _mm256_loadu_si256(src.add(F::A_QS) as *const __m256i);
            let start = -o * super::hsum_i8(v);
            (dst.add(l.starts + 4 * lane) as *mut i32).write_unaligned(start);
            (dst.add(l.scales + 4 * lane) as *mut f32).write_unaligned(super::load_f16(src));
            _mm256_storeu_si256(dst.add(l.values + 32 * lane) as *mut __m256i, v);
        }
    }
    buf
}

/// Builds the panels of `t`'s activations for format `F` (the [`crate::simd::PrepareFn`] of
/// the AVX-512 table).
#[inline(always)]
pub(crate) unsafe fn prepare_panels<F: Legacy>(t: &GemmArgs) -> Box<[MaybeUninit<Line64>]> {
    let layout = PanelLayout {
        rows: COLS,
        block: PANEL_BLOCK,
        starts: PANEL_STARTS,
        scales: PANEL_SCALES,
        values: PANEL_VALUES,
    };
    build_panels::<F>(t, layout)
}

/// The panels of `t`'s activations: the prepared ones, or built into `owned`.
#[inline(always)]
pub(crate) unsafe fn panels<F: Legacy>(
    t: &GemmArgs,
    owned: &mut Option<Box<[MaybeUninit<Line64>]>>,
) -> ActivationPanels {
    if t.prepared.is_null() {
        let buf = owned.insert(prepare_panels::<F>(t));
        ActivationPanels::at(buf.as_ptr() as *const u8, t)
    } else {
        ActivationPanels::at(t.prepared, t)
    }
}

/// What the block loop of a full panel reads: the panel, the packed tile's group vectors
/// (`8·nb`) and scales (`nb`), and `nb ≥ 1`.
#[derive(Clone, Copy)]
pub(crate) struct PanelLoop {
    panel: *const u8,
    wq: *const __m512i,
    wd: *const __m512,
    nb: usize,
}

/// Defines the block loop of a full panel for one order of the scale update: `$a2, $a3` are
/// the two multiplies between the conversion `zmm\c = f32(sumi_c)` and `acc_c (zmm2\c) +=
/// zmm\c` for the register set A (`zmm0..7`), `$b2, $b3` the same for set B (`zmm10..17`);
/// `zmm9` holds the block's weight scales `d_w`, and its activation scales lie at
/// `[{p} - {back} + 4c]` (the panel pointer has moved on by then).
///
/// In assembly because LLVM schedules the intrinsic version row by row (each row's 8
/// dependent `vpdpbusd` back to back) and spills the loop's pointers: on Cascade Lake, whose
/// two 512-bit pipes each take a `vpdpbusd` per cycle at a latency of 5, that ran at
/// 1.0–1.2 `vpdpbusd` per ns from L1 (`bench/REPORT.md`, eleventh session). Per block: the 8
/// starts, then for each group vector its 8 `vpdpbusd` (one per row, the activation's 4 bytes
/// broadcast from the panel). The blocks alternate between the two register sets, and the
/// scale updates of the previous block (one row per group vector) run between the current
/// block's dot products, so that the float work overlaps the integer chains (+15 % in a
/// microbenchmark against updating after each block).
macro_rules! panel_loop {
    ($name:ident, $a2:literal, $a3:literal, $b2:literal, $b3:literal) => {
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn $name(acc: &mut [__m512; COLS], l: PanelLoop) {
            // SAFETY (caller): `l` describes `nb ≥ 1` blocks of readable panel, group vectors
            // and scales; the assembly reads only those and writes only the named registers.
            core::arch::asm!(
                // block 0 into set A
                panel_block!(""),
                "jz 3f",
                "2:",
                // a block into set B; set A's updates
                panel_block!("1", panel_update!("", $a2, $a3)),
                "jz 4f",
                // a block into set A; set B's updates
                panel_block!("", panel_update!("1", $b2, $b3)),
                "jnz 2b",
                // the last block's updates: set A
                "3:",
                ".irp c,0,1,2,3,4,5,6,7",
                panel_update!("", $a2, $a3),
                ".endr",
                "jmp 5f",
                // or set B
                "4:",
                ".irp c,0,1,2,3,4,5,6,7",
                panel_update!("1", $b2, $b3),
                ".endr",
                "5:",
                p = inout(reg) l.panel => _,
                w = inout(reg) l.wq => _,
                d = inout(reg) l.wd => _,
                n = inout(reg) l.nb => _,
                starts = const PANEL_STARTS,
                values = const PANEL_VALUES,
                block = const PANEL_BLOCK,
                back = const PANEL_BLOCK - PANEL_SCALES,
                inout("zmm20") acc[0],
                inout("zmm21") acc[1],
                inout("zmm22") acc[2],
                inout("zmm23") acc[3],
                inout("zmm24") acc[4],
                inout("zmm25") acc[5],
                inout("zmm26") acc[6],
                inout("zmm27") acc[7],
                out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
                out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
                out("zmm8") _, out("zmm9") _,
                out("zmm10") _, out("zmm11") _, out("zmm12") _, out("zmm13") _,
                out("zmm14") _, out("zmm15") _, out("zmm16") _, out("zmm17") _,
                out("zmm18") _,
                options(nostack, readonly),
            );
        }
    };
}

/// One block of [`panel_loop!`] into register set `$set` (`""`: `zmm0..7`, `"1"`:
/// `zmm10..17`): the starts, then per group vector `\c` its 8 `vpdpbusd` and the lines
/// `$between` (the other set's update of row `\c`); then the next block's scales into `zmm9`,
/// the pointers moved on and the block count decremented (the flags for the caller's jump).
#[rustfmt::skip]
macro_rules! panel_block {
    ($set:literal $(, $between:expr)?) => {
        concat!(
            ".irp k,0,1,2,3,4,5,6,7\n",
            "vpbroadcastd zmm", $set, "\\k, dword ptr [{p} + {starts} + 4*\\k]\n",
            ".endr\n",
            ".irp c,0,1,2,3,4,5,6,7\n",
            "vmovdqu64 zmm8, zmmword ptr [{w} + 64*\\c]\n",
            ".irp k,0,1,2,3,4,5,6,7\n",
            "vpdpbusd zmm", $set, "\\k, zmm8, dword ptr [{p} + {values} + 32*\\k + 4*\\c]{{1to16}}\n",
            ".endr\n",
            $($between, "\n",)?
            ".endr\n",
            "vmovups zmm9, zmmword ptr [{d}]\n",
            "add {p}, {block}\n",
            "add {w}, 512\n",
            "add {d}, 64\n",
            "dec {n}",
        )
    };
}

/// Row `\c`'s scale update in register set `$set`: `acc_c += (the two multiplies of
/// f32(sumi_c))`, the multiplies being the format's (see [`panel_loop!`]).
#[rustfmt::skip]
macro_rules! panel_update {
    ($set:literal, $m2:literal, $m3:literal) => {
        concat!(
            "vcvtdq2ps zmm", $set, "\\c, zmm", $set, "\\c\n",
            $m2, "\n",
            $m3, "\n",
            "vaddps zmm2\\c, zmm2\\c, zmm", $set, "\\c",
        )
    };
}

// Q4_0: sumf += sumi·d_w·d_a (left to right)
panel_loop!(
    panel_loop_dw_first,
    "vmulps zmm\\c, zmm\\c, zmm9",
    "vmulps zmm\\c, zmm\\c, dword ptr [{p} - {back} + 4*\\c]{{1to16}}",
    "vmulps zmm1\\c, zmm1\\c, zmm9",
    "vmulps zmm1\\c, zmm1\\c, dword ptr [{p} - {back} + 4*\\c]{{1to16}}"
);
// Q5_0, Q8_0: sumf += (d_w·d_a)·sumi
panel_loop!(
    panel_loop_dd_first,
    "vmulps zmm18, zmm9, dword ptr [{p} - {back} + 4*\\c]{{1to16}}",
    "vmulps zmm\\c, zmm\\c, zmm18",
    "vmulps zmm18, zmm9, dword ptr [{p} - {back} + 4*\\c]{{1to16}}",
    "vmulps zmm1\\c, zmm1\\c, zmm18"
);

/// A range of weight blocks (`b0..b0 + nb`, `nb ≥ 1`) that one pass of the tile loop covers:
/// the prompt GEMMs split long rows into such chunks, so that the activation panels' share of
/// one chunk stays in L2 while every weight tile of a row block passes over it (see
/// [`k_chunks`]). A chunk after the first continues the sums the previous one stored.
#[derive(Clone, Copy)]
pub(crate) struct KChunk {
    pub b0: usize,
    pub nb: usize,
}

/// Blocks per [`KChunk`] at most: 2560 elements (Phi-2's hidden size). A 16-row tile of a
/// chunk unpacks to 40 KiB. Unchunked, the MLP down projection's 10240-element rows unpacked to
/// 160 KiB per tile, and each tile streamed all 6.5 MB of a 512-row prompt's panels; in chunks
/// that product ran 9 % (Q4_0) and 16 % (Q8_0) faster on the Cascade Lake VM, while chunks of
/// 40 or 20 blocks slowed the 2560-element rows (`bench/REPORT.md`, seventeenth session).
pub(crate) const K_CHUNK_BLOCKS: usize = 80;

/// The chunks of `nb ≥ 1` blocks: near-equal parts of at most [`K_CHUNK_BLOCKS`], in order.
pub(crate) fn k_chunks(nb: usize) -> impl Iterator<Item = KChunk> {
    let size = k_chunk_max(nb);
    (0..nb).step_by(size).map(move |b0| KChunk {
        b0,
        nb: size.min(nb - b0),
    })
}

/// The largest chunk of [`k_chunks`]`(nb)`: the size of a tile's scratch.
pub(crate) fn k_chunk_max(nb: usize) -> usize {
    nb.div_ceil(nb.div_ceil(K_CHUNK_BLOCKS)).max(1)
}

/// `NC ≤ COLS` activation rows of a panel (rows `c0..`) against one packed tile over the
/// blocks of `kc` (`wq`, `wd`: that chunk's group vectors and scales); stores lanes `0..nr`.
/// A full panel runs [`Packed::panel_blocks`]; the last, partial one the same loop in
/// intrinsics. A chunk after the first starts from the sums in the output.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile_cols<F: Packed, const NC: usize>(
    t: &GemmArgs,
    wq: &[__m512i],
    wd: &[__m512],
    panel: *const u8,
    c0: usize,
    r0: usize,
    nr: usize,
    kc: KChunk,
) {
    debug_assert!(wq.len() >= kc.nb * 8 && wd.len() >= kc.nb && kc.nb >= 1);
    let mask: __mmask16 = if nr >= ROWS { 0xffff } else { (1u16 << nr) - 1 };
    let mut acc = [_mm512_setzero_ps(); NC];
    if kc.b0 > 0 {
        for (c, acc_c) in acc.iter_mut().enumerate() {
            *acc_c = _mm512_maskz_loadu_ps(mask, t.out.add((c0 + c) * t.ldo + r0));
        }
    }
    let panel = panel.add(kc.b0 * PANEL_BLOCK);
    if NC == COLS {
        let l = PanelLoop {
            panel,
            wq: wq.as_ptr(),
            wd: wd.as_ptr(),
            nb: kc.nb,
        };
        F::panel_blocks(&mut *(acc.as_mut_ptr() as *mut [__m512; COLS]), l);
    } else {
        for b in 0..kc.nb {
            let blk = panel.add(b * PANEL_BLOCK);
            let mut sumi = [_mm512_setzero_si512(); NC];
            for (c, s) in sumi.iter_mut().enumerate() {
                *s = _mm512_set1_epi32((blk.add(PANEL_STARTS) as *const i32).add(c).read());
            }
            for g in 0..8 {
                let w = wq[b * 8 + g];
                for (c, s) in sumi.iter_mut().enumerate() {
                    let av = (blk.add(PANEL_VALUES + 32 * c + 4 * g) as *const i32).read();
                    *s = _mm512_dpbusd_epi32(*s, w, _mm512_set1_epi32(av));
                }
            }
            let dw = wd[b];
            for c in 0..NC {
                let da = _mm512_set1_ps((blk.add(PANEL_SCALES) as *const f32).add(c).read());
                acc[c] = F::update16(acc[c], sumi[c], dw, da);
            }
        }
    }
    for (c, acc_c) in acc.iter().enumerate() {
        _mm512_mask_storeu_ps(t.out.add((c0 + c) * t.ldo + r0), mask, *acc_c);
    }
}

/// Per activation row and block: the integer accumulator's start `−o·Σa` (which removes the
/// weights' offset) and the scale as f32, `m × nb` each (for the kernels that do not use
/// panels).
#[inline(always)]
pub(crate) unsafe fn activation_block_sums<F: Legacy>(t: &GemmArgs) -> (Vec<i32>, Vec<f32>) {
    let n = t.m * t.nb;
    let mut start = vec![0i32; n];
    let mut ad = vec![0f32; n];
    write_block_sums::<F>(t, start.as_mut_ptr(), ad.as_mut_ptr());
    (start, ad)
}

/// [`activation_block_sums`] into `start` and `ad` (`m × nb` each, row `c` at `c·nb`).
#[inline(always)]
unsafe fn write_block_sums<F: Legacy>(t: &GemmArgs, start: *mut i32, ad: *mut f32) {
    let nb = t.nb;
    let o = offset::<F>();
    for c in 0..t.m {
        let row = t.a.add(c * t.a_stride);
        for b in 0..nb {
            let blk = row.add(b * F::A_BYTES);
            let v = _mm256_loadu_si256(blk.add(F::A_QS) as *const __m256i);
            start.add(c * nb + b).write(-o * super::hsum_i8(v));
            ad.add(c * nb + b).write(super::load_f16(blk));
        }
    }
}

/// Byte offset of the scales in a [`prepare_block_sums`] layout (after the starts, on a line).
fn block_sums_scales(t: &GemmArgs) -> usize {
    (t.m * t.nb * 4).next_multiple_of(64)
}

/// The decode layout of a matmul's few activation rows (`crate::simd::SUMS_MAX_ROWS`): the
/// starts of [`activation_block_sums`] (i32, `m × nb`), then on the next line its scales (f32).
#[inline(always)]
pub(crate) unsafe fn prepare_block_sums<F: Legacy>(t: &GemmArgs) -> Box<[MaybeUninit<Line64>]> {
    let scales = block_sums_scales(t);
    let mut buf = Box::new_uninit_slice((scales + t.m * t.nb * 4).div_ceil(64).max(1));
    let base = buf.as_mut_ptr() as *mut u8;
    write_block_sums::<F>(t, base as *mut i32, base.add(scales) as *mut f32);
    buf
}

/// The starts and scales of [`activation_block_sums`] for `t`'s rows: those prepared once per
/// matmul ([`prepare_block_sums`], when `t.prepared` is set at `m <` [`COLS`]), or computed
/// into `owned`.
#[inline(always)]
pub(crate) unsafe fn block_sums<'a, F: Legacy>(
    t: &'a GemmArgs,
    owned: &'a mut (Vec<i32>, Vec<f32>),
) -> (&'a [i32], &'a [f32]) {
    debug_assert!(t.m < COLS);
    let n = t.m * t.nb;
    if t.prepared.is_null() {
        *owned = activation_block_sums::<F>(t);
        (&owned.0, &owned.1)
    } else {
        // SAFETY (caller): a prepared layout at m < COLS is `prepare_block_sums`' for t's rows
        let start = core::slice::from_raw_parts(t.prepared as *const i32, n);
        let ad = core::slice::from_raw_parts(t.prepared.add(block_sums_scales(t)) as *const f32, n);
        (start, ad)
    }
}

/// The x86 [`crate::simd::PrepareFn`] for a legacy format: panels (`panels`) for the packed
/// GEMMs from [`crate::simd::PACKED_MIN_ROWS`] rows, [`prepare_block_sums`] below.
#[inline(always)]
pub(crate) unsafe fn prepare_legacy<F: Legacy>(
    t: &GemmArgs,
    panels: unsafe fn(&GemmArgs) -> Box<[MaybeUninit<Line64>]>,
) -> Option<Box<[MaybeUninit<Line64>]>> {
    if t.m >= crate::simd::PACKED_MIN_ROWS {
        Some(panels(t))
    } else if t.m <= crate::simd::SUMS_MAX_ROWS {
        Some(prepare_block_sums::<F>(t))
    } else {
        None
    }
}

// the AVX-512 ×16 kernels read panels exactly from PACKED_MIN_ROWS rows on
const _: () = assert!(COLS == crate::simd::PACKED_MIN_ROWS);

/// Every activation row against one packed tile (rows `r0..r0+nr`) over the blocks of `kc`,
/// a panel at a time.
#[inline(always)]
pub(crate) unsafe fn tile_all_cols<F: Packed>(
    t: &GemmArgs,
    wq: &[__m512i],
    wd: &[__m512],
    panels: &ActivationPanels,
    r0: usize,
    nr: usize,
    kc: KChunk,
) {
    for (p, c0) in (0..t.m).step_by(COLS).enumerate() {
        let panel = panels.panel(p);
        match t.m - c0 {
            1 => tile_cols::<F, 1>(t, wq, wd, panel, c0, r0, nr, kc),
            2 => tile_cols::<F, 2>(t, wq, wd, panel, c0, r0, nr, kc),
            3 => tile_cols::<F, 3>(t, wq, wd, panel, c0, r0, nr, kc),
            4 => tile_cols::<F, 4>(t, wq, wd, panel, c0, r0, nr, kc),
            5 => tile_cols::<F, 5>(t, wq, wd, panel, c0, r0, nr, kc),
            6 => tile_cols::<F, 6>(t, wq, wd, panel, c0, r0, nr, kc),
            7 => tile_cols::<F, 7>(t, wq, wd, panel, c0, r0, nr, kc),
            _ => tile_cols::<F, COLS>(t, wq, wd, panel, c0, r0, nr, kc),
        }
    }
}

/// The whole `n × m` product (see [`GemmArgs`]); never declines.
#[inline(always)]
pub(crate) unsafe fn gemm<F: Packed>(t: &GemmArgs) -> bool {
    let mut owned = None;
    let panels = panels::<F>(t, &mut owned);
    let chunk = k_chunk_max(t.nb);
    let mut wq = vec![_mm512_setzero_si512(); chunk * 8];
    let mut wd = vec![_mm512_setzero_ps(); chunk];
    for kc in k_chunks(t.nb) {
        for r0 in (0..t.n).step_by(ROWS) {
            let nr = (t.n - r0).min(ROWS);
            pack_tile::<F>(t, r0, nr, kc, &mut wq, &mut wd);
            tile_all_cols::<F>(t, &wq, &wd, &panels, r0, nr, kc);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_chunks_cover_the_blocks_in_order() {
        for nb in 1..1000 {
            let chunks: Vec<KChunk> = k_chunks(nb).collect();
            let mut next = 0;
            for kc in &chunks {
                assert_eq!(kc.b0, next, "nb {nb}");
                assert!(kc.nb >= 1 && kc.nb <= K_CHUNK_BLOCKS, "nb {nb}");
                next += kc.nb;
            }
            assert_eq!(next, nb);
            assert_eq!(chunks.len(), nb.div_ceil(K_CHUNK_BLOCKS), "nb {nb}");
            let max = chunks.iter().map(|kc| kc.nb).max().unwrap();
            assert_eq!(k_chunk_max(nb), max, "nb {nb}");
        }
    }
}
