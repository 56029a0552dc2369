//! BF16: the upper 16 bits of an f32 (ggml type 30), stored little-endian.

use half::bf16;

pub use super::rounding::{bf16_to_fp32, fp32_to_bf16};

/// f32 → bf16: round to nearest even, NaN forced quiet (ggml's `ggml_compute_fp32_to_bf16`).
///
/// # Panics
/// If `src` and `dst` differ in length.
pub fn quantize_row_bf16(src: &[f32], dst: &mut [bf16]) {
    assert_eq!(src.len(), dst.len(), "quantize_row_bf16: length mismatch");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = fp32_to_bf16(s);
    }
}

/// bf16 → f32 (exact).
///
/// # Panics
/// If `src` and `dst` differ in length.
pub fn dequantize_row_bf16(src: &[bf16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "dequantize_row_bf16: length mismatch");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16_to_fp32(s);
    }
}

/// Dot product of a bf16 weight row with f32 activations: products in f32, summed in f64,
/// rounded once to f32.
///
/// # Panics
/// If the rows differ in length.
pub fn vec_dot_bf16_f32(w: &[bf16], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len(), "vec_dot_bf16_f32: length mismatch");
    let mut sum = 0f64;
    for (&a, &b) in w.iter().zip(x) {
        sum += (bf16_to_fp32(a) * b) as f64;
    }
    sum as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_error() {
        let x: Vec<f32> = (0..512).map(|i| ((i as f32) * 0.731).sin() * 1e4).collect();
        let mut h = vec![bf16::ZERO; x.len()];
        quantize_row_bf16(&x, &mut h);
        let mut y = vec![0f32; x.len()];
        dequantize_row_bf16(&h, &mut y);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= a.abs() / 256.0, "{a} {b}");
        }
    }

    #[test]
    fn dot_matches_f64_of_dequantized() {
        let x: Vec<f32> = (0..300).map(|i| ((i as f32) * 0.37).cos()).collect();
        let w: Vec<bf16> = (0..300)
            .map(|i| fp32_to_bf16(((i as f32) * 0.11).sin()))
            .collect();
        let want: f64 = w.iter().zip(&x).map(|(a, b)| a.to_f64() * *b as f64).sum();
        let got = vec_dot_bf16_f32(&w, &x) as f64;
        assert!(
            (got - want).abs() <= 1e-6 * want.abs().max(1.0),
            "{got} {want}"
        );
    }
}
