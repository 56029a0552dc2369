//! x86-64 kernels. The kernel bodies are generic over [`Isa`] (the one primitive that differs
//! between AVX2 and AVX-512 VNNI) and `#[inline(always)]`; `avx2.rs` / `avx512.rs` instantiate
//! them inside `#[target_feature]` entry points, so each level is compiled for its own features.

// the tiles index several arrays (rows, columns, groups) with the same loop counter
#![allow(clippy::needless_range_loop)]

use core::arch::x86_64::*;

use super::{CpuKernels, Level};

#[clippy::msrv = "1.89"]
mod amx;
mod avx2;
#[clippy::msrv = "1.89"] // AVX-512 intrinsics and target features are stable since Rust 1.89
mod avx512;
mod float;
mod kquant;
mod legacy;
#[clippy::msrv = "1.89"]
mod packed;
#[clippy::msrv = "1.89"]
mod packed_float;
#[clippy::msrv = "1.89"]
mod packed_kquant;
mod quant;
#[clippy::msrv = "1.89"]
mod repacked;
mod repacked_avx2;

pub(super) fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

#[clippy::msrv = "1.89"]
pub(super) fn has_avx512() -> bool {
    has_avx2()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

/// AVX-512 VNNI plus usable AMX-INT8 (CPU support and the OS's permission, asked once).
pub(super) fn has_amx() -> bool {
    has_avx512() && amx::usable()
}

pub(super) fn avx2_table() -> CpuKernels {
    avx2::table(Level::Avx2)
}

pub(super) fn avx512_table() -> CpuKernels {
    avx512::table(Level::Avx512)
}

pub(super) fn amx_table() -> CpuKernels {
    amx::table()
}

pub(super) fn amx_emulated_table() -> CpuKernels {
    amx::emulated_table()
}

/// The integer dot primitive that differs between levels.
pub(crate) trait Isa {
    /// `acc + Σ u·s` over each group of 4 bytes into the i32 lanes: unsigned bytes `u` times
    /// signed bytes `s`. Through AVX2's i16 pair sums, so `|u₀s₀ + u₁s₁|` must stay below 2¹⁵.
    unsafe fn dot_u8i8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i;
    /// Whether `dot_u8i8` sums in i32 directly (VNNI), which allows `u` up to 255 with any `s`.
    const WIDE_U8: bool;
}

/// Sums the 8 i32 lanes of each of the 8 vectors: lane `r` of the result is `Σ p[r]`.
#[inline(always)]
pub(crate) unsafe fn reduce8(p: &[__m256i; 8]) -> __m256i {
    let pair = |a: __m256i, b: __m256i| {
        _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b))
    };
    let quad = |a: __m256i, b: __m256i| {
        _mm256_add_epi32(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b))
    };
    // per 128-bit half: [p0, p1, p2, p3] partial sums, then the same for p4..p7
    let lo = quad(pair(p[0], p[1]), pair(p[2], p[3]));
    let hi = quad(pair(p[4], p[5]), pair(p[6], p[7]));
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(lo, hi),
        _mm256_permute2x128_si256::<0x31>(lo, hi),
    )
}

/// Sum of the 32 signed bytes of `v`.
#[inline(always)]
pub(crate) unsafe fn hsum_i8(v: __m256i) -> i32 {
    // bias to unsigned, sum groups of 8 with SAD, remove the bias (32·128)
    let s = _mm256_sad_epu8(
        _mm256_xor_si256(v, _mm256_set1_epi8(-128)),
        _mm256_setzero_si256(),
    );
    let s = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
    let s = _mm_add_epi64(s, _mm_unpackhi_epi64(s, s));
    _mm_cvtsi128_si32(s) - 4096
}

/// Reorders 32 bytes so that i32 lane `j` holds bytes `j, j+8, j+16, j+24`: every lane then
/// collects the elements `≡ j (mod 8)`: the class order of the K-quants' packed chunks.
#[inline(always)]
pub(crate) unsafe fn mod8_order(v: __m256i) -> __m256i {
    let v = _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
    let t = _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm256_shuffle_epi8(v, _mm256_set_m128i(t, t))
}

/// The low 16 bits of each i32 lane as 8 f16 → f32.
#[inline(always)]
pub(crate) unsafe fn f16_lo_to_f32(v: __m256i) -> __m256 {
    let t = _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1);
    let packed = _mm256_shuffle_epi8(v, _mm256_set_m128i(t, t));
    let packed = _mm256_permute4x64_epi64::<0b1000>(packed);
    _mm256_cvtph_ps(_mm256_castsi256_si128(packed))
}

/// The high 16 bits of each i32 lane as 8 f16 → f32.
#[inline(always)]
pub(crate) unsafe fn f16_hi_to_f32(v: __m256i) -> __m256 {
    f16_lo_to_f32(_mm256_srli_epi32::<16>(v))
}

/// One f16 (little-endian bytes at `p`) → f32.
#[inline(always)]
pub(crate) unsafe fn load_f16(p: *const u8) -> f32 {
    let h = u16::from_le_bytes([*p, *p.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

/// The eight i32 lanes as an array.
#[inline(always)]
pub(crate) unsafe fn lanes_ps(v: __m256) -> [f32; 8] {
    let mut out = [0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), v);
    out
}

/// Stores `lanes[r]` at `out[r]` for `r < nr`.
#[inline(always)]
pub(crate) unsafe fn store_rows(out: *mut f32, v: __m256, nr: usize) {
    let l = lanes_ps(v);
    for (r, &x) in l.iter().enumerate().take(nr) {
        *out.add(r) = x;
    }
}
