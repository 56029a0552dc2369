//! F16: IEEE binary16 elements (ggml type 1), stored little-endian.

use half::f16;

use super::rounding::{fp16_to_fp32, fp32_to_fp16};

/// f32 → f16, round to nearest even (overflow → ±inf), as ggml's `GGML_FP32_TO_FP16`.
///
/// # Panics
/// If `src` and `dst` differ in length.
pub fn quantize_row_f16(src: &[f32], dst: &mut [f16]) {
    assert_eq!(src.len(), dst.len(), "quantize_row_f16: length mismatch");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = fp32_to_fp16(s);
    }
}

/// f16 → f32 (exact).
///
/// # Panics
/// If `src` and `dst` differ in length.
pub fn dequantize_row_f16(src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "dequantize_row_f16: length mismatch");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = fp16_to_fp32(s);
    }
}

/// Dot product of an f16 weight row with f32 activations: each product in f32 (exact, since
/// f16 → f32 is exact and the product is rounded once), summed in f64, rounded once to f32.
///
/// (ggml pairs F16 weights with F16 activations; tinygptv keeps activations in f32.)
///
/// # Panics
/// If the rows differ in length.
pub fn vec_dot_f16_f32(w: &[f16], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len(), "vec_dot_f16_f32: length mismatch");
    let mut sum = 0f64;
    for (&a, &b) in w.iter().zip(x) {
        sum += (fp16_to_fp32(a) * b) as f64;
    }
    sum as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_round_trip() {
        assert_eq!(std::mem::size_of::<f16>(), 2);
        let x: Vec<f32> = (0..512)
            .map(|i| ((i as f32) * 0.731).sin() * 100.0)
            .collect();
        let mut h = vec![f16::ZERO; x.len()];
        quantize_row_f16(&x, &mut h);
        let mut y = vec![0f32; x.len()];
        dequantize_row_f16(&h, &mut y);
        for (a, b) in x.iter().zip(&y) {
            // half an ulp of f16: 2^-11 relative
            assert!((a - b).abs() <= a.abs() * (1.0 / 2048.0) + 1e-7, "{a} {b}");
        }
        // ties to even, overflow, exact values
        assert_eq!(fp32_to_fp16(1.0 + 1.0 / 2048.0).to_bits(), 0x3c00);
        assert_eq!(fp32_to_fp16(1.0 + 3.0 / 2048.0).to_bits(), 0x3c02);
        assert_eq!(fp32_to_fp16(65520.0).to_bits(), 0x7c00);
        assert_eq!(fp32_to_fp16(65519.0).to_bits(), 0x7bff);
        assert_eq!(fp32_to_fp16(-2.0).to_bits(), 0xc000);
    }

    #[test]
    fn dot_matches_f64_of_dequantized() {
        let x: Vec<f32> = (0..300).map(|i| ((i as f32) * 0.37).cos()).collect();
        let w: Vec<f16> = (0..300)
            .map(|i| f16::from_f32(((i as f32) * 0.11).sin()))
            .collect();
        let want: f64 = w.iter().zip(&x).map(|(a, b)| a.to_f64() * *b as f64).sum();
        let got = vec_dot_f16_f32(&w, &x) as f64;
        assert!(
            (got - want).abs() <= 1e-6 * want.abs().max(1.0),
            "{got} {want}"
        );
    }
}
