//! Q8_0 (ggml type 8): blocks of 32 signed 8-bit values with one f16 scale; also the activation
//! type that Q4_0 / Q5_0 / Q8_0 weights are multiplied with.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::rounding::{c_float_to_int, fp16_to_fp32, fp32_to_fp16, roundf};
use crate::types::QK;

/// 32 values `x = d·q`, q ∈ [−127, 127].
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct Q8_0Block {
    pub d: f16,
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<Q8_0Block>() == 34);

/// ggml's `quantize_row_q8_0_ref`: `d = amax/127`, `q = roundf(x·(1/d))` (ties away from zero,
/// inverse taken from the f32 `d`, not the stored f16).
///
/// # Panics
/// If `src.len() != 32 * dst.len()`.
pub fn quantize_row_q8_0_ref(src: &[f32], dst: &mut [Q8_0Block]) {
    assert_eq!(
        src.len(),
        dst.len() * QK,
        "quantize_row_q8_0_ref: length mismatch"
    );
    for (x, y) in src.chunks_exact(QK).zip(dst.iter_mut()) {
        // C's MAX(amax, fabsf(v)), NaN handling included
        let amax = x
            .iter()
            .fold(0f32, |m, &v| if m > v.abs() { m } else { v.abs() });
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = fp32_to_fp16(d);
        for (q, &v) in y.qs.iter_mut().zip(x) {
            *q = c_float_to_int(roundf(v * id)) as i8;
        }
    }
}

/// ggml's `dequantize_row_q8_0`: `x = q·d`.
///
/// # Panics
/// If `dst.len() != 32 * src.len()`.
pub fn dequantize_row_q8_0(src: &[Q8_0Block], dst: &mut [f32]) {
    assert_eq!(
        dst.len(),
        src.len() * QK,
        "dequantize_row_q8_0: length mismatch"
    );
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = fp16_to_fp32(b.d);
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

/// ggml's `ggml_vec_dot_q8_0_q8_0_generic`: per block an integer dot, then
/// `sum += sumi·(d_w·d_a)`.
///
/// # Panics
/// If the rows differ in block count.
pub fn vec_dot_q8_0_q8_0(w: &[Q8_0Block], a: &[Q8_0Block]) -> f32 {
    assert_eq!(w.len(), a.len(), "vec_dot_q8_0_q8_0: block count mismatch");
    let mut sumf = 0f32;
    for (x, y) in w.iter().zip(a) {
        let sumi: i32 =
            x.qs.iter()
                .zip(&y.qs)
                .map(|(&p, &q)| p as i32 * q as i32)
                .sum();
        sumf += sumi as f32 * (fp16_to_fp32(x.d) * fp16_to_fp32(y.d));
    }
    sumf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::test_util::{abs_dot_f64, dot_f64, test_data};

    fn quantize(x: &[f32]) -> Vec<Q8_0Block> {
        let mut q = vec![Q8_0Block::zeroed(); x.len() / QK];
        quantize_row_q8_0_ref(x, &mut q);
        q
    }

    fn dequantize(q: &[Q8_0Block]) -> Vec<f32> {
        let mut y = vec![0f32; q.len() * QK];
        dequantize_row_q8_0(q, &mut y);
        y
    }

    #[test]
    fn layout() {
        let b = Q8_0Block {
            d: f16::from_bits(0x1234),
            qs: [-2; QK],
        };
        let bytes = bytemuck::bytes_of(&b);
        assert_eq!(&bytes[..3], &[0x34, 0x12, 0xfe]);
    }

    #[test]
    fn round_trip_error_bound() {
        let x = test_data(QK * 64, QK, 1);
        let y = dequantize(&quantize(&x));
        for (xb, yb) in x.chunks(QK).zip(y.chunks(QK)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in xb.iter().zip(yb) {
                // half a step plus the f16 rounding of d (2^-11 relative, times up to 127 steps)
                assert!((a - b).abs() <= amax / 127.0 * (0.5 + 127.0 / 2048.0) + 1e-30);
            }
        }
    }

    #[test]
    fn ties_round_away_from_zero() {
        let mut x = [0f32; QK];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = -0.5;
        let q = quantize(&x);
        assert_eq!(q[0].d.to_f32(), 1.0);
        assert_eq!(&q[0].qs[..4], &[127, 3, -3, -1]);
        let zero = quantize(&[0.0; QK]);
        assert_eq!(zero[0].d.to_bits(), 0);
        assert_eq!(zero[0].qs, [0; QK]);
    }

    #[test]
    fn dot_matches_dequantized() {
        let w = quantize(&test_data(QK * 16, QK, 2));
        let a = quantize(&test_data(QK * 16, 64, 3));
        let (wd, ad) = (dequantize(&w), dequantize(&a));
        let got = vec_dot_q8_0_q8_0(&w, &a) as f64;
        assert!((got - dot_f64(&wd, &ad)).abs() <= 1e-5 * abs_dot_f64(&wd, &ad));
    }
}
