//! The rounding and conversion primitives of ggml's reference quantizers (gguf.md §5.3),
//! reproduced operation for operation so our quantizers are bit-identical to ggml's.

use half::{bf16, f16};

/// Sub-blocks whose largest magnitude is below this are treated as all zero (`GROUP_MAX_EPS`).
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: round to nearest, ties to even, through the "add 1.5·2²³" trick.
///
/// Written literally (not as `round_ties_even`) so that even outside its valid range
/// (|f| > 4 194 303, only reached for degenerate inputs) it returns exactly what ggml's
/// release builds return.
#[inline]
pub(crate) fn nearest_int(f: f32) -> i32 {
    let val = f + 12_582_912.0;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// C's float → int conversion as x86 performs it (`cvttss2si`): truncate toward zero, and
/// `i32::MIN` ("integer indefinite") for NaN and out-of-range values.
///
/// ggml's legacy quantizers cast floats straight to `int8_t`/`uint8_t`; for the degenerate
/// inputs where that overflows (tiny subnormal scales make `1/d` infinite) this reproduces the
/// bytes x86 builds of ggml (and gguf-py) produce. Callers then truncate to 8 bits with `as`.
#[inline]
pub(crate) fn c_float_to_int(f: f32) -> i32 {
    if (-2_147_483_648.0..2_147_483_648.0).contains(&f) {
        f as i32
    } else {
        i32::MIN
    }
}

/// C's `roundf`: round half away from zero (Q8_0 / Q8_1 reference quantizers).
#[inline]
pub(crate) fn roundf(f: f32) -> f32 {
    f.round()
}

/// fp32 → fp16 as ggml's `GGML_FP32_TO_FP16` (its portable converter, used by ggml-base for
/// all quantization): IEEE round to nearest even, overflow → ±inf, and every NaN → the quiet
/// NaN `0x7E00` with the input's sign (`half` would keep payload bits instead).
#[inline]
pub(crate) fn fp32_to_fp16(f: f32) -> f16 {
    if f.is_nan() {
        return f16::from_bits((((f.to_bits() >> 16) & 0x8000) | 0x7e00) as u16);
    }
    f16::from_f32(f)
}

/// fp16 → fp32 (exact).
#[inline]
pub(crate) fn fp16_to_fp32(h: f16) -> f32 {
    h.to_f32()
}

/// fp32 → bf16 as ggml's `ggml_compute_fp32_to_bf16`: NaN keeps its sign and upper payload and
/// is forced quiet; everything else rounds to nearest even (`+ 0x7FFF + lsb`, then truncate).
#[inline]
pub fn fp32_to_bf16(f: f32) -> bf16 {
    let bits = f.to_bits();
    if bits & 0x7fff_ffff > 0x7f80_0000 {
        return bf16::from_bits(((bits >> 16) | 0x40) as u16);
    }
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    bf16::from_bits((rounded >> 16) as u16)
}

/// bf16 → fp32 (exact: the upper half of the f32).
#[inline]
pub fn bf16_to_fp32(h: bf16) -> f32 {
    f32::from_bits((h.to_bits() as u32) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_ties_to_even() {
        let cases = [
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (-2.5, -2),
            (2.4999998, 2),
            (7.0, 7),
            (-31.5, -32),
            (4_194_303.0, 4_194_303),
            (-4_194_303.0, -4_194_303),
        ];
        for (f, want) in cases {
            assert_eq!(nearest_int(f), want, "nearest_int({f})");
        }
        for i in -100_000..100_000 {
            let f = i as f32 * 0.37;
            assert_eq!(nearest_int(f), f.round_ties_even() as i32, "{f}");
        }
    }

    #[test]
    fn roundf_rounds_ties_away() {
        assert_eq!(roundf(2.5), 3.0);
        assert_eq!(roundf(-2.5), -3.0);
        assert_eq!(roundf(0.5), 1.0);
        assert_eq!(roundf(-0.49999997), -0.0);
    }

    #[test]
    fn c_float_to_int_matches_x86() {
        assert_eq!(c_float_to_int(16.9), 16);
        assert_eq!(c_float_to_int(-0.9), 0);
        assert_eq!(c_float_to_int(f32::NAN), i32::MIN);
        assert_eq!(c_float_to_int(f32::INFINITY), i32::MIN);
        assert_eq!(c_float_to_int(-3e9), i32::MIN);
        assert_eq!(c_float_to_int(2_147_483_520.0), 2_147_483_520);
    }

    #[test]
    fn fp16_nan_is_canonical() {
        assert_eq!(fp32_to_fp16(f32::from_bits(0x7f80_0001)).to_bits(), 0x7e00);
        assert_eq!(fp32_to_fp16(f32::from_bits(0xff81_2345)).to_bits(), 0xfe00);
        assert_eq!(fp32_to_fp16(f32::from_bits(0x7fbf_ffff)).to_bits(), 0x7e00);
        assert_eq!(fp32_to_fp16(f32::INFINITY).to_bits(), 0x7c00);
    }

    #[test]
    fn bf16_rounding_and_nan() {
        // ties go to even, above-half rounds up
        assert_eq!(fp32_to_bf16(f32::from_bits(0x3f80_8000)).to_bits(), 0x3f80);
        assert_eq!(fp32_to_bf16(f32::from_bits(0x3f81_8000)).to_bits(), 0x3f82);
        assert_eq!(fp32_to_bf16(f32::from_bits(0x3f80_8001)).to_bits(), 0x3f81);
        // largest finite rounds to infinity, infinity stays
        assert_eq!(fp32_to_bf16(f32::MAX).to_bits(), 0x7f80);
        assert_eq!(fp32_to_bf16(f32::NEG_INFINITY).to_bits(), 0xff80);
        // signalling NaN with a low payload becomes quiet, never infinity
        assert_eq!(fp32_to_bf16(f32::from_bits(0x7f80_0001)).to_bits(), 0x7fc0);
        assert_eq!(fp32_to_bf16(f32::from_bits(0xff81_2345)).to_bits(), 0xffc1);
        // agrees with `half` on a sweep of bit patterns (half implements the same rule)
        let mut bits = 0u32;
        while bits < u32::MAX - 40_000 {
            let f = f32::from_bits(bits);
            assert_eq!(
                fp32_to_bf16(f).to_bits(),
                bf16::from_f32(f).to_bits(),
                "{bits:#x}"
            );
            assert_eq!(
                bf16_to_fp32(fp32_to_bf16(f)).to_bits() >> 16,
                fp32_to_bf16(f).to_bits() as u32
            );
            bits += 39_997;
        }
    }
}
