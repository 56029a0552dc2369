//! F32: plain little-endian `f32` elements (ggml type 0).

/// "Quantize" to F32: a copy.
///
/// # Panics
/// If `src` and `dst` differ in length.
pub fn quantize_row_f32(src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "quantize_row_f32: length mismatch");
    dst.copy_from_slice(src);
}

/// "Dequantize" F32: a copy.
///
/// # Panics
/// If `src` and `dst` differ in length.
pub fn dequantize_row_f32(src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "dequantize_row_f32: length mismatch");
    dst.copy_from_slice(src);
}

/// Dot product of two f32 rows: products in f32, summed in f64 (like ggml's scalar
/// `ggml_vec_dot_f32`, which accumulates in `ggml_float` = double), rounded once to f32.
///
/// # Panics
/// If the rows differ in length.
pub fn vec_dot_f32_f32(w: &[f32], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len(), "vec_dot_f32_f32: length mismatch");
    let mut sum = 0f64;
    for (&a, &b) in w.iter().zip(x) {
        sum += (a * b) as f64;
    }
    sum as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_and_dot() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) * 0.25).collect();
        let mut y = vec![0f32; 64];
        quantize_row_f32(&x, &mut y);
        assert_eq!(x, y);
        let mut z = vec![0f32; 64];
        dequantize_row_f32(&y, &mut z);
        assert_eq!(x, z);
        let want: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
        assert_eq!(vec_dot_f32_f32(&x, &x) as f64, want);
        // f64 accumulation keeps the 1 that an f32 sum would lose
        assert_eq!(vec_dot_f32_f32(&[1e10, 1.0, -1e10], &[1.0, 1.0, 1.0]), 1.0);
    }
}
