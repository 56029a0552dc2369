//! AVX2 + FMA + F16C entry points: the generic kernel bodies compiled for these features.

use core::arch::x86_64::*;

use super::repacked_avx2::Groups;
use super::{float, kquant, legacy, packed, quant, repacked_avx2, Isa};
use crate::repack::RepackLayout;
use crate::simd::{CpuKernels, GemmArgs, Level, Line64, TileArgs};

/// `maddubs` (u8 × i8 → i16 pair sums) then `madd` with ones (→ i32).
pub(crate) struct Avx2;

impl Isa for Avx2 {
    #[inline(always)]
    unsafe fn dot_u8i8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        let pairs = _mm256_maddubs_epi16(u, s);
        _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }
    const WIDE_U8: bool = false;
}

macro_rules! entry {
    ($name:ident, $args:ident, $body:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name($args: &TileArgs) {
            $body
        }
    };
}

macro_rules! quant_entry {
    ($name:ident, $body:path) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name(x: *const f32, nb: usize, y: *mut u8) {
            $body(x, nb, y)
        }
    };
}

quant_entry!(quant_q8_0, quant::quantize_q8_0);
quant_entry!(quant_q8_1, quant::quantize_q8_1);
quant_entry!(quant_q8_k, quant::quantize_q8_k);
entry!(tile_q4_0, t, legacy::tile::<Avx2, legacy::Q4_0>(t));
entry!(tile_q4_1, t, legacy::tile::<Avx2, legacy::Q4_1>(t));
entry!(tile_q5_0, t, legacy::tile::<Avx2, legacy::Q5_0>(t));
entry!(tile_q5_1, t, legacy::tile::<Avx2, legacy::Q5_1>(t));
entry!(tile_q8_0, t, legacy::tile::<Avx2, legacy::Q8_0>(t));
entry!(tile_q4_k, t, kquant::tile_q4_k::<Avx2>(t));
entry!(tile_q5_k, t, kquant::tile_q5_k::<Avx2>(t));
entry!(tile_q6_k, t, kquant::tile_q6_k::<Avx2>(t));
entry!(tile_f32, t, float::tile::<float::F32>(t));
entry!(tile_f16, t, float::tile::<float::F16>(t));
entry!(tile_bf16, t, float::tile::<float::BF16>(t));

/// The activation panels of the ×16 kernels' prompt passes, built once per matmul.
macro_rules! prepare_entries {
    ($($name:ident, $format:ty;)*) => {
        $(
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn $name(t: &GemmArgs) -> Option<Box<[core::mem::MaybeUninit<Line64>]>> {
                packed::prepare_legacy::<$format>(t, |t| repacked_avx2::prepare_panels::<$format>(t))
            }
        )*
    };
}

prepare_entries! {
    prepare_q4_0, legacy::Q4_0;
    prepare_q8_0, legacy::Q8_0;
}

/// The K-quant records of `repacked_avx2`'s kernels, once per matmul.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn prepare_q4_k(t: &GemmArgs) -> Option<Box<[core::mem::MaybeUninit<Line64>]>> {
    repacked_avx2::prepare_q4_k(t)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn prepare_q6_k(t: &GemmArgs) -> Option<Box<[core::mem::MaybeUninit<Line64>]>> {
    repacked_avx2::prepare_q6_k(t)
}

/// The ×16 kernels of `repacked_avx2` on repacked matrices.
macro_rules! repacked_entries {
    ($($name:ident, $gemm:ident;)*) => {
        $(
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn $name(t: &GemmArgs) -> bool {
                repacked_avx2::$gemm(t, Groups::repacked())
            }
        )*
    };
}

repacked_entries! {
    repacked_q4_0, gemm_q4_0;
    repacked_q8_0, gemm_q8_0;
    repacked_q4_k, gemm_q4_k;
    repacked_q5_k, gemm_q5_k;
    repacked_q6_k, gemm_q6_k;
}

/// The same kernels on the file layout, each 16-row group packed per call, from `$min`
/// activation rows (fewer decline to the tiles). The minimum is where the packing (scalar
/// byte moves, more of them for the K-quant records) is paid back: per core on a Cascade
/// Lake VM (`cpu_time`, 128 rows, best of four), Q4_0 36 → 63 GOPS, Q4_K 46 → 65, Q5_K
/// 42 → 53 (its records cost the most to write: at 64 rows 41 → 48).
/// Q6_K (the tile 42, ×16 40) and Q8_0 keep their tiles: Q8_0's ×16 kernel has to widen
/// every `maddubs` as the tile does, and a Phi-2 prompt did not run faster with it (6.9 t/s
/// against 7.3).
macro_rules! file_entries {
    ($($name:ident, $gemm:ident, $layout:ident, $min:expr;)*) => {
        $(
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn $name(t: &GemmArgs) -> bool {
                t.m >= $min && repacked_avx2::$gemm(t, Groups::file(RepackLayout::$layout))
            }
        )*
    };
}

file_entries! {
    packed_q4_0, gemm_q4_0, Q4_0x16, 16;
    packed_q4_k, gemm_q4_k, Q4_Kx16, repacked_avx2::FILE_Q4_K_MIN_ROWS;
    packed_q5_k, gemm_q5_k, Q5_Kx16, 64;
}

pub(super) fn table(level: Level) -> CpuKernels {
    let mut k = CpuKernels::scalar(level);
    k.quant_q8_0 = Some(quant_q8_0);
    k.quant_q8_1 = Some(quant_q8_1);
    k.quant_q8_k = Some(quant_q8_k);
    k.tile_q4_0 = Some(tile_q4_0);
    k.tile_q4_1 = Some(tile_q4_1);
    k.tile_q5_0 = Some(tile_q5_0);
    k.tile_q5_1 = Some(tile_q5_1);
    k.tile_q8_0 = Some(tile_q8_0);
    k.tile_q4_k = Some(tile_q4_k);
    k.tile_q5_k = Some(tile_q5_k);
    k.tile_q6_k = Some(tile_q6_k);
    k.tile_f32 = Some(tile_f32);
    k.tile_f16 = Some(tile_f16);
    k.tile_bf16 = Some(tile_bf16);
    k.packed_q4_0 = Some(packed_q4_0);
    k.packed_q4_k = Some(packed_q4_k);
    k.packed_q5_k = Some(packed_q5_k);
    k.repacked_q4_0 = Some(repacked_q4_0);
    k.repacked_q8_0 = Some(repacked_q8_0);
    k.repacked_q4_k = Some(repacked_q4_k);
    k.repacked_q5_k = Some(repacked_q5_k);
    k.repacked_q6_k = Some(repacked_q6_k);
    k.prepare_q4_0 = Some(prepare_q4_0);
    k.prepare_q8_0 = Some(prepare_q8_0);
    k.prepare_q4_k = Some(prepare_q4_k);
    k.prepare_q5_k = Some(prepare_q4_k);
    k.prepare_q6_k = Some(prepare_q6_k);
    k
}
