//! AVX-512 (F/BW/VL) + VNNI entry points: VNNI's `vpdpbusd` for the integer dots of the
//! 32-element formats, 16-lane FMA for the float weights; the rest as AVX2, compiled for these
//! features.

use core::arch::x86_64::*;

use super::{
    float::FloatW, kquant, legacy, packed, packed_float, packed_kquant, quant, repacked,
    repacked_avx2, Isa,
};
use crate::simd::{CpuKernels, GemmArgs, Level, Line64, TileArgs};

/// `vpdpbusd`: u8 × i8 summed in i32 directly.
pub(crate) struct Avx512;

impl Isa for Avx512 {
    #[inline(always)]
    unsafe fn dot_u8i8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, u, s)
    }
    const WIDE_U8: bool = true;
}

macro_rules! entry {
    ($name:ident, $args:ident, $body:expr) => {
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn $name($args: &TileArgs) {
            $body
        }
    };
}

macro_rules! quant_entry {
    ($name:ident, $body:path) => {
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn $name(x: *const f32, nb: usize, y: *mut u8) {
            $body(x, nb, y)
        }
    };
}

/// 16 float weights at `p` as f32.
trait FloatW16: FloatW {
    unsafe fn load16(p: *const u8) -> __m512;
}

impl FloatW16 for super::float::F32 {
    #[inline(always)]
    unsafe fn load16(p: *const u8) -> __m512 {
        _mm512_loadu_ps(p as *const f32)
    }
}

impl FloatW16 for super::float::F16 {
    #[inline(always)]
    unsafe fn load16(p: *const u8) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
}

impl FloatW16 for super::float::BF16 {
    #[inline(always)]
    unsafe fn load16(p: *const u8) -> __m512 {
        let h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(h))
    }
}

/// As `float::tile_nc` with 16 lanes.
#[inline(always)]
unsafe fn float_tile_nc<W: FloatW16, const NC: usize, const RB: usize>(t: &TileArgs) {
    let k = t.nb;
    let k16 = k & !15;
    for r0 in (0..t.nr).step_by(RB) {
        let mut rows = [t.w; RB];
        for (i, row) in rows.iter_mut().enumerate() {
            *row = t.w.add((r0 + i).min(t.nr - 1) * t.w_stride);
        }
        let mut acc = [[_mm512_setzero_ps(); NC]; RB];
        let mut i = 0;
        while i < k16 {
            let mut w = [_mm512_setzero_ps(); RB];
            for (wr, row) in w.iter_mut().zip(&rows) {
                if (i * W::BYTES) % 64 == 0 {
                    // the next row group, one line per row and 64 bytes (never accessed)
                    let ahead = row.wrapping_add(i * W::BYTES + RB * t.w_stride);
                    _mm_prefetch::<_MM_HINT_T1>(ahead as *const i8);
                }
                *wr = W::load16(row.add(i * W::BYTES));
            }
            for c in 0..NC {
                let a = _mm512_loadu_ps((t.a.add(c * t.a_stride) as *const f32).add(i));
                for rb in 0..RB {
                    acc[rb][c] = _mm512_fmadd_ps(w[rb], a, acc[rb][c]);
                }
            }
            i += 16;
        }
        for rb in 0..RB.min(t.nr - r0) {
            for c in 0..NC {
                let ap = t.a.add(c * t.a_stride) as *const f32;
                let mut s = _mm512_reduce_add_ps(acc[rb][c]);
                for j in k16..k {
                    s += W::load1(rows[rb].add(j * W::BYTES)) * ap.add(j).read_unaligned();
                }
                *t.out.add(c * t.ldo + r0 + rb) = s;
            }
        }
    }
}

#[inline(always)]
unsafe fn float_tile<W: FloatW16>(t: &TileArgs) {
    match t.nc {
        1 => float_tile_nc::<W, 1, 4>(t),
        2 => float_tile_nc::<W, 2, 4>(t),
        3 => float_tile_nc::<W, 3, 4>(t),
        _ => float_tile_nc::<W, 4, 4>(t),
    }
}

quant_entry!(quant_q8_0, quant::quantize_q8_0);
quant_entry!(quant_q8_1, quant::quantize_q8_1);
quant_entry!(quant_q8_k, quant::quantize_q8_k);
entry!(tile_q4_0, t, legacy::tile::<Avx512, legacy::Q4_0>(t));
entry!(tile_q4_1, t, legacy::tile::<Avx512, legacy::Q4_1>(t));
entry!(tile_q5_0, t, legacy::tile::<Avx512, legacy::Q5_0>(t));
entry!(tile_q5_1, t, legacy::tile::<Avx512, legacy::Q5_1>(t));
entry!(tile_q8_0, t, legacy::tile::<Avx512, legacy::Q8_0>(t));
entry!(tile_q4_k, t, kquant::tile_q4_k::<Avx512>(t));
entry!(tile_q5_k, t, kquant::tile_q5_k::<Avx512>(t));
entry!(tile_q6_k, t, kquant::tile_q6_k::<Avx512>(t));
entry!(tile_f32, t, float_tile::<super::float::F32>(t));
entry!(tile_f16, t, float_tile::<super::float::F16>(t));
entry!(tile_bf16, t, float_tile::<super::float::BF16>(t));

macro_rules! packed_entry {
    ($name:ident, $format:ty) => {
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn $name(t: &GemmArgs) -> bool {
            packed::gemm::<$format>(t)
        }
    };
}

packed_entry!(packed_q4_0, legacy::Q4_0);
packed_entry!(packed_q5_0, legacy::Q5_0);
packed_entry!(packed_q8_0, legacy::Q8_0);

macro_rules! packed_float_entry {
    ($name:ident, $format:ty) => {
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn $name(t: &GemmArgs) -> bool {
            packed_float::gemm::<$format>(t)
        }
    };
}

packed_float_entry!(packed_f32, super::float::F32);
packed_float_entry!(packed_f16, super::float::F16);
packed_float_entry!(packed_bf16, super::float::BF16);

macro_rules! packed_kquant_entry {
    ($name:ident, $format:ty) => {
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn $name(t: &GemmArgs) -> bool {
            packed_kquant::gemm::<$format>(t)
        }
    };
}

packed_kquant_entry!(packed_q4_k, packed_kquant::Q4K);
packed_kquant_entry!(packed_q5_k, packed_kquant::Q5K);
packed_kquant_entry!(packed_q6_k, packed_kquant::Q6K);

macro_rules! repacked_entry {
    ($name:ident, $format:ty) => {
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn $name(t: &GemmArgs) -> bool {
            repacked::gemm::<$format>(t)
        }
    };
}

macro_rules! prepare_entry {
    ($name:ident, $format:ty) => {
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn $name(t: &GemmArgs) -> Option<Box<[core::mem::MaybeUninit<Line64>]>> {
            packed::prepare_legacy::<$format>(t, |t| packed::prepare_panels::<$format>(t))
        }
    };
}

prepare_entry!(prepare_q4_0, legacy::Q4_0);
prepare_entry!(prepare_q5_0, legacy::Q5_0);
prepare_entry!(prepare_q8_0, legacy::Q8_0);

/// The K-quant decode records, once per matmul (see `repacked::prepare_q4_k`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn prepare_q4_k(t: &GemmArgs) -> Option<Box<[core::mem::MaybeUninit<Line64>]>> {
    repacked::prepare_q4_k(t)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn prepare_q6_k(t: &GemmArgs) -> Option<Box<[core::mem::MaybeUninit<Line64>]>> {
    repacked::prepare_q6_k(t)
}

repacked_entry!(repacked_q4_0, legacy::Q4_0);
repacked_entry!(repacked_q8_0, legacy::Q8_0);

/// Decode (fewer than 4 activation rows) runs the AVX2 kernel: its ymm halves of a record
/// stream from memory faster here (cold GEMV per core 29–32 GB/s against 23.5 for
/// `repacked::k4_direct`, which computes at 68 GB/s from cache but waits on memory).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn repacked_q4_k(t: &GemmArgs) -> bool {
    if t.m < 4 {
        repacked_avx2::gemm_q4_k(t, repacked_avx2::Groups::repacked())
    } else {
        repacked::gemm_q4_k(t)
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn repacked_q5_k(t: &GemmArgs) -> bool {
    repacked::gemm_q5_k(t)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn repacked_q6_k(t: &GemmArgs) -> bool {
    repacked::gemm_q6_k(t)
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
    k.packed_q5_0 = Some(packed_q5_0);
    k.packed_q8_0 = Some(packed_q8_0);
    k.packed_f32 = Some(packed_f32);
    k.packed_f16 = Some(packed_f16);
    k.packed_bf16 = Some(packed_bf16);
    k.packed_q4_k = Some(packed_q4_k);
    k.packed_q5_k = Some(packed_q5_k);
    k.packed_q6_k = Some(packed_q6_k);
    k.repacked_q4_0 = Some(repacked_q4_0);
    k.repacked_q8_0 = Some(repacked_q8_0);
    k.repacked_q4_k = Some(repacked_q4_k);
    k.repacked_q5_k = Some(repacked_q5_k);
    k.repacked_q6_k = Some(repacked_q6_k);
    k.prepare_q4_0 = Some(prepare_q4_0);
    k.prepare_q5_0 = Some(prepare_q5_0);
    k.prepare_q8_0 = Some(prepare_q8_0);
    // Q4_K's decode runs the AVX2 ×16 kernel, which reads the same records
    k.prepare_q4_k = Some(prepare_q4_k);
    k.prepare_q5_k = Some(prepare_q4_k);
    k.prepare_q6_k = Some(prepare_q6_k);
    k
}
