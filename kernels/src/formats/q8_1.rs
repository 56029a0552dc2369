//! Q8_1 (ggml type 9): Q8_0 plus `s = d·Σq`; only produced for activations, as the partner of
//! Q4_1 / Q5_1 weights (the `s` term folds the weights' offset `m` into one multiply).

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::rounding::{c_float_to_int, fp16_to_fp32, fp32_to_fp16, roundf};
use crate::types::QK;

/// 32 values `x = d·q`, plus `s = d·Σq` (both f16).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct Q8_1Block {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<Q8_1Block>() == 36);

/// ggml's `quantize_row_q8_1_ref`: as Q8_0, and `s = f16(Σq · d)` with the f32 `d`.
///
/// # Panics
/// If `src.len() != 32 * dst.len()`.
pub fn quantize_row_q8_1_ref(src: &[f32], dst: &mut [Q8_1Block]) {
    assert_eq!(
        src.len(),
        dst.len() * QK,
        "quantize_row_q8_1_ref: length mismatch"
    );
    for (x, y) in src.chunks_exact(QK).zip(dst.iter_mut()) {
        let amax = x
            .iter()
            .fold(0f32, |m, &v| if m > v.abs() { m } else { v.abs() });
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = fp32_to_fp16(d);
        let mut sum = 0i32;
        for (q, &v) in y.qs.iter_mut().zip(x) {
            *q = c_float_to_int(roundf(v * id)) as i8;
            sum += *q as i32;
        }
        y.s = fp32_to_fp16(sum as f32 * d);
    }
}

/// `x = q·d` (ggml has no Q8_1 dequantizer; this is the value the dot products assume).
///
/// # Panics
/// If `dst.len() != 32 * src.len()`.
pub fn dequantize_row_q8_1(src: &[Q8_1Block], dst: &mut [f32]) {
    assert_eq!(
        dst.len(),
        src.len() * QK,
        "dequantize_row_q8_1: length mismatch"
    );
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = fp16_to_fp32(b.d);
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::q8_0::{quantize_row_q8_0_ref, Q8_0Block};
    use crate::formats::test_util::test_data;

    #[test]
    fn matches_q8_0_and_sum() {
        let x = test_data(QK * 32, 16, 5);
        let mut q1 = vec![Q8_1Block::zeroed(); 32];
        let mut q0 = vec![Q8_0Block::zeroed(); 32];
        quantize_row_q8_1_ref(&x, &mut q1);
        quantize_row_q8_0_ref(&x, &mut q0);
        for (a, b) in q1.iter().zip(&q0) {
            assert_eq!(a.d, b.d);
            assert_eq!(a.qs, b.qs);
            let sum: i32 = a.qs.iter().map(|&q| q as i32).sum();
            let want = sum as f32 * a.d.to_f32();
            assert!((a.s.to_f32() - want).abs() <= want.abs() / 1024.0 + 1e-6);
        }
        let bytes = bytemuck::bytes_of(&q1[0]);
        assert_eq!(&bytes[2..4], &q1[0].s.to_bits().to_le_bytes());
        assert_eq!(bytes[4] as i8, q1[0].qs[0]);
    }
}
