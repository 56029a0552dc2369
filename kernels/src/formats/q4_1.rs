//! Q4_1 (ggml type 3): blocks of 32 4-bit values with an f16 scale and an f16 offset,
//! `x = q·d + m`.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::q8_1::Q8_1Block;
use super::rounding::{c_float_to_int, fp16_to_fp32, fp32_to_fp16};
use crate::types::QK;

/// Nibble order as Q4_0: `qs[j]` = element `j` (low) and element `j + 16` (high).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct Q4_1Block {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<Q4_1Block>() == 20);

/// The block's minimum and maximum with C's comparison semantics (start at ±FLT_MAX).
#[inline]
pub(crate) fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// ggml's `quantize_row_q4_1_ref`: `d = (max − min)/15`, `m = min`,
/// `q = min(15, (int8)((x − min)·(1/d) + 0.5))`.
///
/// # Panics
/// If `src.len() != 32 * dst.len()`.
pub fn quantize_row_q4_1_ref(src: &[f32], dst: &mut [Q4_1Block]) {
    assert_eq!(
        src.len(),
        dst.len() * QK,
        "quantize_row_q4_1_ref: length mismatch"
    );
    for (x, y) in src.chunks_exact(QK).zip(dst.iter_mut()) {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = fp32_to_fp16(d);
        y.m = fp32_to_fp16(min);
        for j in 0..QK / 2 {
            let q0 = (c_float_to_int((x[j] - min) * id + 0.5) as i8 as i32).min(15) as u8;
            let q1 = (c_float_to_int((x[j + QK / 2] - min) * id + 0.5) as i8 as i32).min(15) as u8;
            y.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// ggml's `dequantize_row_q4_1`: `x = q·d + m`.
///
/// # Panics
/// If `dst.len() != 32 * src.len()`.
pub fn dequantize_row_q4_1(src: &[Q4_1Block], dst: &mut [f32]) {
    assert_eq!(
        dst.len(),
        src.len() * QK,
        "dequantize_row_q4_1: length mismatch"
    );
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = fp16_to_fp32(b.d);
        let m = fp16_to_fp32(b.m);
        for j in 0..QK / 2 {
            y[j] = (b.qs[j] & 0x0f) as f32 * d + m;
            y[j + QK / 2] = (b.qs[j] >> 4) as f32 * d + m;
        }
    }
}

/// ggml's `ggml_vec_dot_q4_1_q8_1_generic`:
/// `sum += (d_w·d_a)·sumi + m_w·s_a` per block.
///
/// # Panics
/// If the rows differ in block count.
pub fn vec_dot_q4_1_q8_1(w: &[Q4_1Block], a: &[Q8_1Block]) -> f32 {
    assert_eq!(w.len(), a.len(), "vec_dot_q4_1_q8_1: block count mismatch");
    let mut sumf = 0f32;
    for (x, y) in w.iter().zip(a) {
        let (mut sumi0, mut sumi1) = (0i32, 0i32);
        for j in 0..QK / 2 {
            sumi0 += (x.qs[j] & 0x0f) as i32 * y.qs[j] as i32;
            sumi1 += (x.qs[j] >> 4) as i32 * y.qs[j + QK / 2] as i32;
        }
        let sumi = sumi0 + sumi1;
        sumf += (fp16_to_fp32(x.d) * fp16_to_fp32(y.d)) * sumi as f32
            + fp16_to_fp32(x.m) * fp16_to_fp32(y.s);
    }
    sumf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::q8_1::{dequantize_row_q8_1, quantize_row_q8_1_ref};
    use crate::formats::test_util::{abs_dot_f64, dot_f64, test_data};

    fn quantize(x: &[f32]) -> Vec<Q4_1Block> {
        let mut q = vec![Q4_1Block::zeroed(); x.len() / QK];
        quantize_row_q4_1_ref(x, &mut q);
        q
    }

    fn dequantize(q: &[Q4_1Block]) -> Vec<f32> {
        let mut y = vec![0f32; q.len() * QK];
        dequantize_row_q4_1(q, &mut y);
        y
    }

    #[test]
    fn layout_and_ties() {
        let mut x = [0f32; QK];
        x[1] = 15.0; // min 0, max 15: d = 1
        x[2] = 2.5; // tie: trunc(2.5 + 0.5) = 3
        x[16] = 14.49;
        let q = quantize(&x);
        let bytes = bytemuck::bytes_of(&q[0]);
        assert_eq!(bytes.len(), 20);
        assert_eq!(&bytes[..4], &[0x00, 0x3c, 0x00, 0x00]);
        assert_eq!(bytes[4], 0xe0); // element 0 -> 0, element 16 -> 14
        assert_eq!(bytes[5], 0x0f);
        assert_eq!(bytes[6], 0x03);
        // constant block: d = 0, every q = 0, value = m
        let c = quantize(&[-1.25; QK]);
        assert_eq!(c[0].d.to_f32(), 0.0);
        assert_eq!(dequantize(&c), vec![-1.25; QK]);
    }

    #[test]
    fn round_trip_error_bound() {
        let x = test_data(QK * 64, QK, 21);
        let y = dequantize(&quantize(&x));
        for (xb, yb) in x.chunks(QK).zip(y.chunks(QK)) {
            let (min, max) = min_max(xb);
            let step = (max - min) / 15.0;
            for (a, b) in xb.iter().zip(yb) {
                // half a step, plus f16 rounding of d (15 steps) and of m
                let tol = step * (0.5 + 15.0 / 2048.0) + min.abs() / 2048.0;
                assert!((a - b).abs() <= tol * 1.0001 + 1e-30, "{a} {b}");
            }
        }
    }

    #[test]
    fn dot_matches_dequantized() {
        let w = quantize(&test_data(QK * 16, QK, 22));
        let mut a = vec![Q8_1Block::zeroed(); 16];
        quantize_row_q8_1_ref(&test_data(QK * 16, 8, 23), &mut a);
        let mut ad = vec![0f32; QK * 16];
        dequantize_row_q8_1(&a, &mut ad);
        let wd = dequantize(&w);
        let got = vec_dot_q4_1_q8_1(&w, &a) as f64;
        // the m·s term uses s = f16(d·Σq): allow its f16 rounding
        let tol = 1e-5 * abs_dot_f64(&wd, &ad)
            + w.iter()
                .zip(&a)
                .map(|(x, y)| (x.m.to_f64() * y.s.to_f64()).abs())
                .sum::<f64>()
                / 1024.0;
        assert!((got - dot_f64(&wd, &ad)).abs() <= tol);
    }
}
