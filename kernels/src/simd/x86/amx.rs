//! AMX-INT8 GEMM for many activation rows (prompts, the vision tower) with the 32-element formats
//! of `packed.rs` (Q4_0, Q5_0, Q8_0), on the file layout and on the ×16 repacked layout.
//!
//! **What a tile computes.** One `tdpbssd` multiplies 16 activation rows × one block (tile A:
//! 16 rows of 32 signed bytes, loaded straight from the Q8_0 activation rows with their row
//! stride) by one block of 16 weight rows in the group-vector layout that `packed.rs` builds
//! (tile B: 8 rows of 64 bytes, row `g` = every weight row's values `4g..4g+4`). Tile C then
//! holds the 16 × 16 exact integer block dots, one activation row per tile row, one weight row
//! per i32 lane. The dots must stay per block (every block has its own scales), so C is stored
//! and the f32 update runs on AVX-512 exactly as in `packed::tile_cols` (`Packed::update16`, lane
//! = weight row, one accumulator per activation row): every output is bit-identical to the
//! scalar `vec_dot`. Weights are made signed (value − offset) once per 16-row stripe, so the
//! dots need no offset correction.
//!
//! **Tiles** (palette 1): tmm0/tmm1 C (16 × 16 i32), tmm2/tmm3 A (16 × 32 bytes), tmm4/tmm5 B
//! (8 × 64 bytes), two blocks in flight; tmm6/tmm7 C/A with `m mod 16` rows for the last
//! activation rows. The configuration is per thread, so every call loads it and releases the
//! tiles at the end.
//!
//! **Testing without AMX.** The tile unit sits behind [`TileUnit`]: [`Amx`] issues the
//! instructions (inline asm; Rust has no stable AMX intrinsics) and [`TileEmulator`] computes
//! the same instructions in scalar code, checking the shape rules under which the CPU would
//! raise #UD. The emulated table runs the whole exactness suite on any AVX-512 machine; CPUs
//! with AMX run the real unit in the same tests.
//!
//! The OS must grant the process the tile data state first (`arch_prctl(ARCH_REQ_XCOMP_PERM,
//! XFEATURE_XTILEDATA)`, Linux ≥ 5.16); without it the first tile instruction faults, so
//! [`usable`] asks before the level is reported as supported.

use core::arch::asm;
use core::arch::x86_64::*;
use std::sync::OnceLock;

use super::legacy::{self, Legacy};
use super::packed::{self, Packed};
use super::repacked::{self, Repacked};
use crate::repack::GROUP_ROWS;
use crate::simd::{CpuKernels, GemmArgs, Level};

/// Activation rows per A / C tile.
const TILE_M: usize = 16;
/// Weight rows per stripe (i32 lanes of a C row).
const STRIPE_ROWS: usize = 16;
/// Bytes of one block's B tile (8 rows of 64 bytes).
const B_BYTES: usize = 512;

// ---------------------------------------------------------------------------------------------
// Detection and permission
// ---------------------------------------------------------------------------------------------

/// Whether this CPU has AMX-TILE and AMX-INT8 with palette 1 as this module uses it, and the OS
/// granted the tile data state to this process (asked once).
///
/// The grant is process-wide and makes every signal frame carry the 8 KiB of tile data: the
/// request fails (ENOSPC, and the AVX-512 level runs) if a thread already has a smaller
/// alternate signal stack, and afterwards `sigaltstack` refuses stacks below that size. Rust's
/// own alternate stacks are sized from `AT_MINSIGSTKSZ`, which includes the tile state.
pub(super) fn usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| cpu_has_amx_int8() && request_tile_permission())
}

fn cpu_has_amx_int8() -> bool {
    // cpuid exists on every x86-64 CPU; leaves above the maximum are not queried
    if __cpuid(0).eax < 0x1d {
        return false;
    }
    let l7 = __cpuid_count(7, 0);
    let tile = l7.edx >> 24 & 1 == 1;
    let int8 = l7.edx >> 25 & 1 == 1;
    if !(tile && int8) || __cpuid_count(0x1d, 0).eax < 1 {
        return false;
    }
    // palette 1: 1 KiB tiles of at most 16 rows × 64 bytes, at least 8 of them
    let p = __cpuid_count(0x1d, 1);
    let bytes_per_tile = p.eax >> 16;
    let bytes_per_row = p.ebx & 0xffff;
    let names = p.ebx >> 16;
    let max_rows = p.ecx & 0xffff;
    bytes_per_tile == 1024 && bytes_per_row == 64 && names >= 8 && max_rows >= 16
}

#[cfg(target_os = "linux")]
fn request_tile_permission() -> bool {
    extern "C" {
        fn syscall(number: i64, ...) -> i64;
    }
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_GET_XCOMP_PERM: i64 = 0x1022;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    // SAFETY: arch_prctl with these codes only reads its integer argument / writes one u64.
    unsafe {
        if syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0 {
            return false;
        }
        let mut granted = 0u64;
        syscall(
            SYS_ARCH_PRCTL,
            ARCH_GET_XCOMP_PERM,
            &mut granted as *mut u64,
        ) == 0
            && granted >> XFEATURE_XTILEDATA & 1 == 1
    }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_permission() -> bool {
    // other systems: not wired up (the AVX-512 level runs)
    false
}

// ---------------------------------------------------------------------------------------------
// The tile unit: configuration, the instruction sequences, and the emulator
// ---------------------------------------------------------------------------------------------

/// The 64-byte operand of `ldtilecfg` (palette 1).
#[repr(C, align(64))]
pub(crate) struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<TileConfig>() == 64);

impl TileConfig {
    /// The tiles of the module notes, with `tail` (0..16) rows in tmm6/tmm7 (unused when 0).
    fn new(tail: usize) -> TileConfig {
        debug_assert!(tail < TILE_M);
        let mut c = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        let mut set = |t: usize, rows: usize, colsb: u16| {
            c.rows[t] = rows as u8;
            c.colsb[t] = colsb;
        };
        set(0, TILE_M, 64);
        set(1, TILE_M, 64);
        set(2, TILE_M, 32);
        set(3, TILE_M, 32);
        set(4, 8, 64);
        set(5, 8, 64);
        if tail > 0 {
            set(6, tail, 64);
            set(7, tail, 32);
        }
        c
    }
}

/// A C tile as stored: row `i` (activation row) = 16 i32 (weight rows).
#[repr(C, align(64))]
struct CTile([i32; TILE_M * 16]);

/// The tile operations the kernel uses. `a*` point at the first A row's 32 bytes (rows `sa`
/// bytes apart), `b*` at a block's 512-byte B tile, `c*` at a [`CTile`].
pub(crate) trait TileUnit {
    /// `ldtilecfg`.
    unsafe fn configure(&mut self, cfg: &TileConfig);
    /// Two blocks: `c0 = A(a0)·B(b0)` on tmm0/2/4 and `c1 = A(a1)·B(b1)` on tmm1/3/5.
    #[allow(clippy::too_many_arguments)]
    unsafe fn dot2(
        &mut self,
        a0: *const u8,
        a1: *const u8,
        sa: usize,
        b0: *const u8,
        b1: *const u8,
        c0: *mut i32,
        c1: *mut i32,
    );
    /// One block on tmm0/2/4.
    unsafe fn dot1(&mut self, a: *const u8, sa: usize, b: *const u8, c: *mut i32);
    /// One block of the tail rows on tmm6/7/4.
    unsafe fn dot1_tail(&mut self, a: *const u8, sa: usize, b: *const u8, c: *mut i32);
    /// `tilerelease`.
    unsafe fn release(&mut self);
}

/// One block on C = tmm`$c`, A = tmm`$a` (rows `$sa` bytes apart) and B = tmm4.
macro_rules! dot1_asm {
    ($c:literal, $a:literal, $ap:expr, $sa:expr, $bp:expr, $cp:expr) => {
        asm!(
            concat!("tilezero tmm", $c),
            concat!("tileloadd tmm", $a, ", [{a} + {sa}*1]"),
            "tileloadd tmm4, [{b} + {s64}*1]",
            concat!("tdpbssd tmm", $c, ", tmm", $a, ", tmm4"),
            concat!("tilestored [{c} + {s64}*1], tmm", $c),
            a = in(reg) $ap,
            sa = in(reg) $sa,
            b = in(reg) $bp,
            c = in(reg) $cp,
            s64 = in(reg) 64usize,
            options(nostack, preserves_flags),
        )
    };
}

/// The real tile unit.
#[derive(Default)]
pub(crate) struct Amx;

impl TileUnit for Amx {
    #[inline(always)]
    unsafe fn configure(&mut self, cfg: &TileConfig) {
        asm!("ldtilecfg [{}]", in(reg) cfg as *const TileConfig, options(nostack, readonly));
    }

    #[inline(always)]
    unsafe fn dot2(
        &mut self,
        a0: *const u8,
        a1: *const u8,
        sa: usize,
        b0: *const u8,
        b1: *const u8,
        c0: *mut i32,
        c1: *mut i32,
    ) {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tileloadd tmm2, [{a0} + {sa}*1]",
            "tileloadd tmm4, [{b0} + {s64}*1]",
            "tdpbssd tmm0, tmm2, tmm4",
            "tileloadd tmm3, [{a1} + {sa}*1]",
            "tileloadd tmm5, [{b1} + {s64}*1]",
            "tdpbssd tmm1, tmm3, tmm5",
            "tilestored [{c0} + {s64}*1], tmm0",
            "tilestored [{c1} + {s64}*1], tmm1",
            a0 = in(reg) a0,
            a1 = in(reg) a1,
            sa = in(reg) sa,
            b0 = in(reg) b0,
            b1 = in(reg) b1,
            c0 = in(reg) c0,
            c1 = in(reg) c1,
            s64 = in(reg) 64usize,
            options(nostack, preserves_flags),
        );
    }

    #[inline(always)]
    unsafe fn dot1(&mut self, a: *const u8, sa: usize, b: *const u8, c: *mut i32) {
        dot1_asm!("0", "2", a, sa, b, c);
    }

    #[inline(always)]
    unsafe fn dot1_tail(&mut self, a: *const u8, sa: usize, b: *const u8, c: *mut i32) {
        dot1_asm!("6", "7", a, sa, b, c);
    }

    #[inline(always)]
    unsafe fn release(&mut self) {
        asm!("tilerelease", options(nostack, nomem, preserves_flags));
    }
}

/// The tile unit in scalar code: 8 tiles of 16 rows × 64 bytes and their configuration, with
/// the instructions' semantics (Intel SDM: `TILELOADD`, `TILEZERO`, `TDPBSSD`, `TILESTORED`).
/// It panics where the CPU would raise #UD (tiles used unconfigured, shapes that do not match).
pub(crate) struct TileEmulator {
    tiles: [[u8; 1024]; 8],
    rows: [usize; 8],
    colsb: [usize; 8],
    configured: bool,
}

impl Default for TileEmulator {
    fn default() -> Self {
        TileEmulator {
            tiles: [[0; 1024]; 8],
            rows: [0; 8],
            colsb: [0; 8],
            configured: false,
        }
    }
}

impl TileEmulator {
    fn check(&self, t: usize) {
        assert!(self.configured, "tile instruction before ldtilecfg");
        assert!(
            self.rows[t] > 0 && self.colsb[t] > 0,
            "tmm{t} is not configured"
        );
    }

    fn zero(&mut self, t: usize) {
        self.check(t);
        self.tiles[t] = [0; 1024];
    }

    /// `tileloadd`: the configured rows and bytes from `p + i·stride`; the rest of the tile is
    /// zeroed.
    unsafe fn load(&mut self, t: usize, p: *const u8, stride: usize) {
        self.check(t);
        self.tiles[t] = [0; 1024];
        for i in 0..self.rows[t] {
            let src = std::slice::from_raw_parts(p.add(i * stride), self.colsb[t]);
            self.tiles[t][i * 64..i * 64 + self.colsb[t]].copy_from_slice(src);
        }
    }

    unsafe fn store(&self, t: usize, p: *mut u8, stride: usize) {
        self.check(t);
        for i in 0..self.rows[t] {
            let dst = std::slice::from_raw_parts_mut(p.add(i * stride), self.colsb[t]);
            dst.copy_from_slice(&self.tiles[t][i * 64..i * 64 + self.colsb[t]]);
        }
    }

    /// The sequence of `dot1_asm!` on C = tmm`ct`, A = tmm`at`, B = tmm4.
    unsafe fn dot1_on(
        &mut self,
        ct: usize,
        at: usize,
        a: *const u8,
        sa: usize,
        b: *const u8,
        c: *mut i32,
    ) {
        self.zero(ct);
        self.load(at, a, sa);
        self.load(4, b, 64);
        self.dpbssd(ct, at, 4);
        self.store(ct, c as *mut u8, 64);
    }

    /// `tdpbssd c, a, b`: `C[m][n] += Σ_k Σ_i A[m][4k+i]·B[k][4n+i]`, signed bytes, i32 sums.
    fn dpbssd(&mut self, c: usize, a: usize, b: usize) {
        for t in [c, a, b] {
            self.check(t);
        }
        assert!(
            self.rows[c] == self.rows[a]
                && self.colsb[a] == 4 * self.rows[b]
                && self.colsb[c] == self.colsb[b]
                && c != a
                && c != b
                && a != b,
            "tdpbssd tmm{c}, tmm{a}, tmm{b}: shapes do not match"
        );
        let (ta, tb) = (self.tiles[a], self.tiles[b]);
        let byte = |t: &[u8; 1024], row: usize, col: usize| t[row * 64 + col] as i8 as i32;
        let tc = &mut self.tiles[c];
        for m in 0..self.rows[c] {
            for n in 0..self.colsb[c] / 4 {
                let at = m * 64 + 4 * n;
                let mut sum = i32::from_le_bytes(tc[at..at + 4].try_into().unwrap());
                for k in 0..self.colsb[a] / 4 {
                    for i in 0..4 {
                        sum = sum.wrapping_add(byte(&ta, m, 4 * k + i) * byte(&tb, k, 4 * n + i));
                    }
                }
                tc[at..at + 4].copy_from_slice(&sum.to_le_bytes());
            }
        }
    }
}

impl TileUnit for TileEmulator {
    unsafe fn configure(&mut self, cfg: &TileConfig) {
        assert_eq!(cfg.palette, 1, "palette");
        assert_eq!(cfg.start_row, 0, "start_row");
        for t in 0..8 {
            assert!(cfg.rows[t] <= 16 && cfg.colsb[t] <= 64, "tmm{t} too large");
            self.rows[t] = cfg.rows[t] as usize;
            self.colsb[t] = cfg.colsb[t] as usize;
        }
        self.tiles = [[0; 1024]; 8];
        self.configured = true;
    }

    unsafe fn dot2(
        &mut self,
        a0: *const u8,
        a1: *const u8,
        sa: usize,
        b0: *const u8,
        b1: *const u8,
        c0: *mut i32,
        c1: *mut i32,
    ) {
        // the same sequence as `Amx::dot2`
        self.zero(0);
        self.zero(1);
        self.load(2, a0, sa);
        self.load(4, b0, 64);
        self.dpbssd(0, 2, 4);
        self.load(3, a1, sa);
        self.load(5, b1, 64);
        self.dpbssd(1, 3, 5);
        self.store(0, c0 as *mut u8, 64);
        self.store(1, c1 as *mut u8, 64);
    }

    unsafe fn dot1(&mut self, a: *const u8, sa: usize, b: *const u8, c: *mut i32) {
        self.dot1_on(0, 2, a, sa, b, c);
    }

    unsafe fn dot1_tail(&mut self, a: *const u8, sa: usize, b: *const u8, c: *mut i32) {
        self.dot1_on(6, 7, a, sa, b, c);
    }

    unsafe fn release(&mut self) {
        self.configured = false;
    }
}

// ---------------------------------------------------------------------------------------------
// The GEMM
// ---------------------------------------------------------------------------------------------

/// Group vectors (unsigned, as `packed.rs` and the ×16 layouts give them) → signed values.
#[inline(always)]
unsafe fn make_signed<F: Legacy>(wq: &mut [__m512i]) {
    // Q8_0: value + 128 − 128 (mod 256); Q4_0 / Q5_0: value − 8 / − 16
    let o = _mm512_set1_epi8(packed::offset::<F>() as u8 as i8);
    for v in wq.iter_mut() {
        *v = _mm512_sub_epi8(*v, o);
    }
}

/// `acc[i] += block b's term` for activation rows `c0 + i`, `i < nc`, from a stored C tile.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn update<F: Packed>(
    acc: &mut [__m512; TILE_M],
    c: &CTile,
    nc: usize,
    dw: __m512,
    ad: &[f32],
    nb: usize,
    c0: usize,
    b: usize,
) {
    for (i, acc_i) in acc.iter_mut().enumerate().take(nc) {
        let sumi = _mm512_load_si512(c.0.as_ptr().add(16 * i) as *const _);
        let da = _mm512_set1_ps(ad[(c0 + i) * nb + b]);
        *acc_i = F::update16(*acc_i, sumi, dw, da);
    }
}

/// Activation rows `c0..c0 + nc` (`nc = 16`, or the tail when `TAIL`) against one signed stripe
/// (weight rows `r0..r0 + nr`); stores lanes `0..nr` of each output row.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn stripe_cols<F: Packed, U: TileUnit, const TAIL: bool>(
    unit: &mut U,
    t: &GemmArgs,
    wq: &[__m512i],
    wd: &[__m512],
    ad: &[f32],
    c0: usize,
    nc: usize,
    r0: usize,
    nr: usize,
) {
    let nb = t.nb;
    let mut acc = [_mm512_setzero_ps(); TILE_M];
    let mut ct = [CTile([0; TILE_M * 16]), CTile([0; TILE_M * 16])];
    let a = t.a.add(c0 * t.a_stride + F::A_QS);
    let a_blk = |b: usize| a.add(b * F::A_BYTES);
    let b_blk = |b: usize| (wq.as_ptr() as *const u8).add(b * B_BYTES);
    let [ct0, ct1] = &mut ct;
    if TAIL {
        for b in 0..nb {
            unit.dot1_tail(a_blk(b), t.a_stride, b_blk(b), ct0.0.as_mut_ptr());
            update::<F>(&mut acc, ct0, nc, wd[b], ad, nb, c0, b);
        }
    } else {
        let mut b = 0;
        while b + 2 <= nb {
            unit.dot2(
                a_blk(b),
                a_blk(b + 1),
                t.a_stride,
                b_blk(b),
                b_blk(b + 1),
                ct0.0.as_mut_ptr(),
                ct1.0.as_mut_ptr(),
            );
            // blocks in order, as the reference sums them
            update::<F>(&mut acc, ct0, TILE_M, wd[b], ad, nb, c0, b);
            update::<F>(&mut acc, ct1, TILE_M, wd[b + 1], ad, nb, c0, b + 1);
            b += 2;
        }
        if b < nb {
            unit.dot1(a_blk(b), t.a_stride, b_blk(b), ct0.0.as_mut_ptr());
            update::<F>(&mut acc, ct0, TILE_M, wd[b], ad, nb, c0, b);
        }
    }
    let mask: __mmask16 = if nr >= STRIPE_ROWS {
        0xffff
    } else {
        (1u16 << nr) - 1
    };
    for (i, acc_i) in acc.iter().enumerate().take(nc) {
        _mm512_mask_storeu_ps(t.out.add((c0 + i) * t.ldo + r0), mask, *acc_i);
    }
}

/// Every activation row against one signed stripe.
#[inline(always)]
unsafe fn stripe<F: Packed, U: TileUnit>(
    unit: &mut U,
    t: &GemmArgs,
    wq: &[__m512i],
    wd: &[__m512],
    ad: &[f32],
    r0: usize,
    nr: usize,
) {
    let mut c0 = 0;
    while c0 + TILE_M <= t.m {
        stripe_cols::<F, U, false>(unit, t, wq, wd, ad, c0, TILE_M, r0, nr);
        c0 += TILE_M;
    }
    if c0 < t.m {
        stripe_cols::<F, U, true>(unit, t, wq, wd, ad, c0, t.m - c0, r0, nr);
    }
}

/// The whole product on the file layout (as `packed::gemm`); never declines.
#[inline(always)]
unsafe fn packed_gemm<F: Packed, U: TileUnit + Default>(t: &GemmArgs) -> bool {
    let mut unit = U::default();
    let (_, ad) = packed::activation_block_sums::<F>(t);
    let mut wq = vec![_mm512_setzero_si512(); t.nb * 8];
    let mut wd = vec![_mm512_setzero_ps(); t.nb];
    unit.configure(&TileConfig::new(t.m % TILE_M));
    for r0 in (0..t.n).step_by(STRIPE_ROWS) {
        let nr = (t.n - r0).min(STRIPE_ROWS);
        packed::pack_tile::<F>(
            t,
            r0,
            nr,
            packed::KChunk { b0: 0, nb: t.nb },
            &mut wq,
            &mut wd,
        );
        make_signed::<F>(&mut wq);
        stripe::<F, U>(&mut unit, t, &wq, &wd, &ad, r0, nr);
    }
    unit.release();
    true
}

/// The whole product on a ×16 matrix (as `repacked::gemm`): few activation rows run its direct
/// VNNI path, from [`packed::COLS`] on the tiles run. Never declines.
#[inline(always)]
unsafe fn repacked_gemm<F: Repacked, U: TileUnit + Default>(t: &GemmArgs) -> bool {
    if t.m < packed::COLS {
        return repacked::gemm::<F>(t);
    }
    let mut unit = U::default();
    let nb = t.nb;
    let (_, ad) = packed::activation_block_sums::<F>(t);
    let mut wq = vec![_mm512_setzero_si512(); nb * 8];
    let mut wd = vec![_mm512_setzero_ps(); nb];
    unit.configure(&TileConfig::new(t.m % TILE_M));
    for (gi, r0) in (0..t.n).step_by(GROUP_ROWS).enumerate() {
        let nr = (t.n - r0).min(GROUP_ROWS);
        let group = t.w.add(gi * t.w_stride);
        for b in 0..nb {
            let g = F::groups(repacked::values::<F>(group, nb, b));
            wq[b * 8..b * 8 + 8].copy_from_slice(&g);
            wd[b] = repacked::scales(group, b);
        }
        make_signed::<F>(&mut wq);
        stripe::<F, U>(&mut unit, t, &wq, &wd, &ad, r0, nr);
    }
    unit.release();
    true
}

macro_rules! entry {
    ($name:ident, $gemm:ident, $bound:path) => {
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn $name<F: $bound, U: TileUnit + Default>(t: &GemmArgs) -> bool {
            $gemm::<F, U>(t)
        }
    };
}

entry!(packed_entry, packed_gemm, Packed);
entry!(repacked_entry, repacked_gemm, Repacked);

/// The AVX-512 table with the tile GEMMs of unit `U` for Q4_0, Q5_0 and Q8_0 (file layout) and
/// Q4_0x16 / Q8_0x16.
fn table_with<U: TileUnit + Default>() -> CpuKernels {
    let mut k = super::avx512_table();
    k.level = Level::Amx;
    k.packed_q4_0 = Some(packed_entry::<legacy::Q4_0, U>);
    k.packed_q5_0 = Some(packed_entry::<legacy::Q5_0, U>);
    k.packed_q8_0 = Some(packed_entry::<legacy::Q8_0, U>);
    k.repacked_q4_0 = Some(repacked_entry::<legacy::Q4_0, U>);
    k.repacked_q8_0 = Some(repacked_entry::<legacy::Q8_0, U>);
    // the tile kernels read the activation rows as they are
    k.prepare_q4_0 = None;
    k.prepare_q5_0 = None;
    k.prepare_q8_0 = None;
    k
}

/// The table of [`Level::Amx`] (only built where [`usable`]).
pub(super) fn table() -> CpuKernels {
    table_with::<Amx>()
}

/// The same table with the tile instructions emulated ([`TileEmulator`]): for tests on CPUs
/// without AMX (needs AVX-512 VNNI).
pub(super) fn emulated_table() -> CpuKernels {
    let mut k = table_with::<TileEmulator>();
    k.emulated = true;
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_bytes_follow_the_ldtilecfg_layout() {
        let c = TileConfig::new(5);
        // SAFETY: TileConfig is 64 plain bytes (repr(C), no padding: 1 + 1 + 14 + 32 + 16)
        let bytes: &[u8; 64] = unsafe { &*(&c as *const TileConfig as *const [u8; 64]) };
        assert_eq!(bytes[0], 1);
        // colsb of tmm0..tmm7 as little-endian u16 from byte 16, rows from byte 48
        let colsb: Vec<u16> = (0..8)
            .map(|t| u16::from_le_bytes([bytes[16 + 2 * t], bytes[17 + 2 * t]]))
            .collect();
        assert_eq!(colsb, [64, 64, 32, 32, 64, 64, 64, 32]);
        assert_eq!(&bytes[48..56], &[16, 16, 16, 16, 8, 8, 5, 5]);
        assert!(bytes[56..].iter().all(|&b| b == 0));
        assert_eq!(&TileConfig::new(0).rows[6..8], &[0, 0]);
    }

    #[test]
    fn emulated_dpbssd_is_a_signed_byte_matrix_product() {
        // A: 2 rows × 8 bytes, B: 2 rows × 8 bytes (2 dwords), C: 2 × 2 i32
        let mut e = TileEmulator::default();
        let mut cfg = TileConfig::new(0);
        cfg.rows[0..3].copy_from_slice(&[2, 2, 2]);
        cfg.colsb[0..3].copy_from_slice(&[8, 8, 8]);
        let a: [i8; 16] = [1, -2, 3, -4, 5, 6, 7, 8, -128, 127, 0, 1, 2, 3, 4, 5];
        let b: [i8; 16] = [-1, 1, -1, 1, 2, 2, 2, 2, 127, -128, 3, 4, 1, 0, 0, 0];
        let mut c = [0i32; 4];
        // SAFETY: the slices hold the configured rows (stride 8 bytes)
        unsafe {
            e.configure(&cfg);
            e.load(1, a.as_ptr() as *const u8, 8);
            e.load(2, b.as_ptr() as *const u8, 8);
            e.zero(0);
            e.dpbssd(0, 1, 2);
            e.store(0, c.as_mut_ptr() as *mut u8, 8);
        }
        // C[m][n] = Σ_k Σ_i A[m][4k+i]·B[k][4n+i]
        let mut want = [0i32; 4];
        for m in 0..2 {
            for n in 0..2 {
                for k in 0..2 {
                    for i in 0..4 {
                        want[m * 2 + n] +=
                            a[m * 8 + 4 * k + i] as i32 * b[k * 8 + 4 * n + i] as i32;
                    }
                }
            }
        }
        assert_eq!(c, want);
        // by hand: row 0 · column 0 = (−1 − 2·1 − 3 − 4) + (5·127 − 6·128 + 7·3 + 8·4)
        assert_eq!(c[0], -1 - 2 - 3 - 4 + 635 - 768 + 21 + 32);
    }

    #[test]
    #[should_panic(expected = "shapes do not match")]
    fn emulator_rejects_what_the_cpu_would_fault_on() {
        let mut e = TileEmulator::default();
        // SAFETY: no memory is touched before the shape check fails
        unsafe {
            e.configure(&TileConfig::new(3));
            // tail C (3 rows) with a full A (16 rows)
            e.dpbssd(6, 2, 4);
        }
    }
}
