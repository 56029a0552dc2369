//! Reference matrix multiply built on the per-format dot products.
//!
//! This is the interface later SIMD / CUDA kernels drop into: same arguments, and results equal
//! to (or, for kernels that sum in another order, within rounding of) these.

use crate::formats::{quantize_activation_row, row_bytes, supports_vec_dot, vec_dot, FormatError};
use crate::types::GgmlType;

/// `y[m][n] = Σ_k x[m][k]·W[n][k]`; `W` is `n` rows of `k` elements of type `ty` (GGUF row-major,
/// ne0 = k). Each activation row is converted once to `ty.vec_dot_type()` (Q8_0 / Q8_1 / Q8_K, or
/// kept f32 for F32 / F16 / BF16 weights), then dotted with every weight row.
///
/// # Panics
/// On mismatched sizes or an unsupported weight type; [`try_matmul_ref`] reports them instead.
pub fn matmul_ref(ty: GgmlType, w: &[u8], n: usize, k: usize, x: &[f32], m: usize, y: &mut [f32]) {
    if let Err(e) = try_matmul_ref(ty, w, n, k, x, m, y) {
        panic!("matmul_ref: {e}");
    }
}

/// [`matmul_ref`] with its argument checks returned as errors.
pub fn try_matmul_ref(
    ty: GgmlType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    y: &mut [f32],
) -> Result<(), FormatError> {
    if !supports_vec_dot(ty) {
        return Err(FormatError::Unsupported { ty, op: "matmul" });
    }
    let w_row = row_bytes(ty, k)?;
    row_bytes(ty.vec_dot_type(), k)?;
    let too_big = |what| FormatError::Overflow { what };
    let w_len = w_row
        .checked_mul(n)
        .ok_or(too_big("matmul weight bytes (n·row bytes)"))?;
    if w.len() != w_len {
        return Err(FormatError::ByteLength {
            ty,
            n: n.saturating_mul(k),
            expected: w_len,
            actual: w.len(),
        });
    }
    let x_len = m
        .checked_mul(k)
        .ok_or(too_big("matmul activations (m·k)"))?;
    if x.len() != x_len {
        return Err(FormatError::Length {
            what: "activations x (m·k)",
            expected: x_len,
            actual: x.len(),
        });
    }
    let y_len = m.checked_mul(n).ok_or(too_big("matmul output (m·n)"))?;
    if y.len() != y_len {
        return Err(FormatError::Length {
            what: "output y (m·n)",
            expected: y_len,
            actual: y.len(),
        });
    }
    if k == 0 {
        y.fill(0.0);
        return Ok(());
    }
    let mut act = Vec::new();
    for (x_row, y_row) in x.chunks_exact(k).zip(y.chunks_exact_mut(n.max(1))) {
        quantize_activation_row(ty, x_row, &mut act);
        for (out, w_row) in y_row.iter_mut().zip(w.chunks_exact(w_row)) {
            *out = vec_dot(ty, k, w_row, &act);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::{dequantize_row, quantize_row};

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    #[test]
    fn matches_naive_f64_of_dequantized() {
        let (n, k, m) = (5, 512, 3);
        let w32 = data(n * k, 7);
        let x = data(m * k, 11);
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            let mut w = vec![0u8; row_bytes(ty, n * k).unwrap()];
            quantize_row(ty, &w32, &mut w).unwrap();
            let mut wd = vec![0f32; n * k];
            dequantize_row(ty, &w, &mut wd).unwrap();
            // the activations go through vec_dot_type too: compare with their dequantized values
            let at = ty.vec_dot_type();
            let mut xq = vec![0u8; row_bytes(at, m * k).unwrap()];
            quantize_row(at, &x, &mut xq).unwrap();
            let mut xd = vec![0f32; m * k];
            dequantize_row(at, &xq, &mut xd).unwrap();
            let mut y = vec![0f32; m * n];
            matmul_ref(ty, &w, n, k, &x, m, &mut y);
            for i in 0..m {
                for j in 0..n {
                    let (wr, xr) = (&wd[j * k..(j + 1) * k], &xd[i * k..(i + 1) * k]);
                    let want: f64 = wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
                    let scale: f64 = wr
                        .iter()
                        .zip(xr)
                        .map(|(a, b)| (*a as f64 * *b as f64).abs())
                        .sum();
                    // Q4_1/Q5_1 fold the offset through Q8_1's f16 `s`
                    let tol = if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
                        2e-3
                    } else {
                        1e-5
                    };
                    let got = y[i * n + j] as f64;
                    assert!(
                        (got - want).abs() <= tol * scale,
                        "{ty} [{i}][{j}]: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn reports_bad_shapes() {
        let w = vec![0u8; 2 * 18];
        let x = vec![0f32; 32];
        let mut y = vec![0f32; 2];
        assert!(try_matmul_ref(GgmlType::Q4_0, &w, 2, 32, &x, 1, &mut y).is_ok());
        assert!(matches!(
            try_matmul_ref(GgmlType::Q4_0, &w, 3, 32, &x, 1, &mut y),
            Err(FormatError::ByteLength { .. })
        ));
        assert!(matches!(
            try_matmul_ref(GgmlType::Q4_0, &w, 2, 32, &x, 2, &mut y),
            Err(FormatError::Length { .. })
        ));
        assert!(matches!(
            try_matmul_ref(GgmlType::Q4_0, &w, 2, 33, &x, 1, &mut y),
            Err(FormatError::NotWholeBlocks { .. })
        ));
        assert!(matches!(
            try_matmul_ref(GgmlType::Q8_K, &w, 2, 32, &x, 1, &mut y),
            Err(FormatError::Unsupported { .. })
        ));
        assert!(matches!(
            try_matmul_ref(GgmlType::Q4_0, &w, usize::MAX, 32, &x, 1, &mut y),
            Err(FormatError::Overflow { .. })
        ));
    }
}
